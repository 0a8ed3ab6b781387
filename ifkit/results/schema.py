"""What a results table may hold, and the check every read and write goes through.

A ``Schema`` names a table's key and required columns and gives each known column a ``Col``: its type and,
for keys, the values it may take. ``check_text`` reads CSV text field by field (not through pandas, which
silently pads a short row with NaN and accepts ``0.76`` cut from ``0.7601``) and sorts its records into good
rows and damaged ones, each with the reason, or reports a problem that makes the whole file unusable.

A record is damaged when it

* has more or fewer fields than the header (a line cut short, or two lines run together);
* is the last one and the file does not end with a line break (an interrupted write: ``0.7601`` may be the
  first digits of ``0.76010390625``, so the value cannot be trusted);
* leaves a key or required column empty, holds a control character, or has a value its column does not take
  (``auc`` = "abc", ``seed`` = "O", ``method`` = "fvn", ``rate`` = 4);
* repeats the key of another record (every copy is damaged: which one is right cannot be known).

The whole file is unusable when it is not UTF-8 text or its header lacks a key or required column.
Cost: each distinct value of a column is checked once: ~60 ms for the largest committed table (2,520 rows x 12
columns; pandas.read_csv alone: 3 ms).
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

# What pandas reads as NaN (its default na_values): to the check they are empty fields.
EMPTY = frozenset({"", "nan", "NaN", "-nan", "-NaN", "NA", "N/A", "n/a", "<NA>", "NULL", "null", "None", "#N/A",
                   "#NA", "-1.#IND", "1.#IND", "-1.#QNAN", "1.#QNAN", "#N/A N/A"})
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Col:
    """One column: ``dtype`` is "str", "float", "int" (a whole number, also written 3.0), "bool" (True/False) or
    "any"; a str column may be limited to ``values`` or to a ``pattern`` (matched in full); numbers to
    [``lo``, ``hi``]."""

    dtype: str = "any"
    values: tuple[str, ...] | None = None
    pattern: str | None = None
    lo: float | None = None
    hi: float | None = None

    def problem(self, text: str) -> str | None:
        """Why ``text`` (one non-empty CSV field) is not a value of this column, or None when it is."""
        if self.dtype in ("float", "int"):
            try:
                x = float(text)
            except ValueError:
                return f"{text!r} is not a number"
            if self.dtype == "int" and not (math.isfinite(x) and x.is_integer()):
                return f"{text!r} is not a whole number"
            if (self.lo is not None and not x >= self.lo) or (self.hi is not None and not x <= self.hi):
                return f"{text} is outside [{self.lo}, {self.hi}]"
            return None
        if self.dtype == "bool":
            return None if text in ("True", "False") else f"{text!r} is not True or False"
        if self.values is not None and text not in self.values:
            return f"{text!r} is not one of {', '.join(self.values)}"
        if self.pattern is not None and not re.fullmatch(self.pattern, text):
            return f"{text!r} is not a valid value"
        return None


@dataclass(frozen=True)
class Schema:
    """A table: its ``key`` (unique per row), ``required`` value columns (never empty) and known ``columns``.
    Columns not listed are accepted unchecked (extra columns are welcome) if their names are identifiers."""

    key: tuple[str, ...]
    required: tuple[str, ...] = ()
    columns: Mapping[str, Col] = field(default_factory=dict)

    def for_table(self, key: Sequence[str], required: Sequence[str]) -> Schema:
        """This schema as a ResultsTable opened with ``key`` and ``required`` uses it: unique on that key, and
        every column either names (or this schema names) never empty."""
        filled = [c for c in (*self.key, *self.required, *required) if c not in key]
        return Schema(tuple(key), tuple(dict.fromkeys(filled)), self.columns)

    @property
    def needed(self) -> tuple[str, ...]:
        """Columns every row fills: the key, then the required values."""
        return tuple(dict.fromkeys([*self.key, *self.required]))


@dataclass
class Checked:
    """The outcome of ``check_text``: a file-level ``problem`` (then nothing else is set), or the header and
    the records sorted into ``good`` and ``bad`` = (line number, record, why)."""

    problem: str | None = None
    header: list[str] = field(default_factory=list)
    good: list[list[str]] = field(default_factory=list)
    bad: list[tuple[int, list[str], str]] = field(default_factory=list)


def decode(raw: bytes) -> tuple[str | None, str | None]:
    """(text, None) for UTF-8 bytes, else (None, why): random bytes or a binary file are a whole-file problem."""
    try:
        return raw.decode("utf-8-sig"), None  # -sig: a byte-order mark (a spreadsheet's export) is not a column
    except UnicodeDecodeError as err:
        return None, f"is not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}: binary or garbled data)"


def check_text(text: str, schema: Schema, norm: Callable[[str], object] = str) -> Checked:
    """Sort the records of CSV ``text`` by ``schema``; ``norm`` maps a key field to what makes keys equal."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return Checked(header=[])
    problem = _header_problem(header, schema)
    if problem:
        return Checked(problem=problem)
    out, index, width = Checked(header=header), {c: i for i, c in enumerate(header)}, len(header)
    records: list[tuple[int, list[str]]] = []
    try:
        for rec in reader:
            records.append((reader.line_num, rec))
    except csv.Error as err:  # e.g. a field larger than csv's limit: garbage, not a table
        return Checked(problem=f"cannot be parsed as CSV (line {reader.line_num}: {err})")
    # Column by column, each distinct value once (keys and settings repeat); rows then only look up the
    # columns that hold a bad value at all -- usually none.
    control = _CONTROL.search(text) is not None  # rare: only then is every field searched
    flagged = []
    columns = list(zip(*(rec for _, rec in records if len(rec) == width))) or [()] * width
    for i, (name, values) in enumerate(zip(header, columns)):
        col, filled = schema.columns.get(name, Col()), name in schema.needed
        bad = {t: why for t in set(values) if (why := _field_problem(t, name, col, filled, control))}
        if bad:
            flagged.append((i, bad))
    good: list[tuple[int, list[str]]] = []
    for n, (line, rec) in enumerate(records):
        if len(rec) != width:
            why = f"has {len(rec)} fields where the header has {width} (a line cut short or run together)"
        else:
            why = next((bad[rec[i]] for i, bad in flagged if rec[i] in bad), None) if flagged else None
        if why is None and n == len(records) - 1 and not text.endswith(("\n", "\r")):
            why = "the file ends inside this line (an interrupted write): its last value may be cut short"
        if why is None:
            good.append((line, rec))
        elif rec:  # a blank line is not a row
            out.bad.append((line, rec, why))
    good_columns, parts = list(zip(*(rec for _, rec in good))), []
    for k in schema.key if good else ():
        values = good_columns[index[k]]
        parts.append(map({t: norm(t) for t in set(values)}.__getitem__, values))  # norm once per distinct value
    keys = list(zip(*parts)) if parts else [()] * len(good)
    copies = Counter(keys)
    for (line, rec), k in zip(good, keys):
        if copies[k] == 1:
            out.good.append(rec)
        else:
            out.bad.append((line, rec, f"repeats the key {dict(zip(schema.key, (rec[index[c]] for c in schema.key)))}"))
    out.bad.sort(key=lambda b: b[0])
    return out


def _header_problem(header: list[str], schema: Schema) -> str | None:
    missing = [c for c in schema.needed if c not in header]
    if missing:
        return f"lacks the column(s) {missing} (an older layout, or a garbled header)"
    odd = [c for c in header if not _NAME.fullmatch(c)]
    if odd:
        return f"has garbled column name(s) {odd[:3]}"
    if len(set(header)) < len(header):
        return f"repeats column name(s) in its header {header}"
    return None


def _field_problem(text: str, name: str, col: Col, filled: bool, control: bool) -> str | None:
    if control and _CONTROL.search(text):
        return f"{name} holds control characters"
    if text in EMPTY:
        return f"{name} is empty" if filled else None
    why = col.problem(text)
    return f"{name}: {why}" if why else None


def write_rows(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """CSV text of ``header`` and ``rows`` (fields written back as read, so numbers keep every digit)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


__all__ = ["Checked", "Col", "EMPTY", "Schema", "check_text", "decode", "write_rows"]
