"""Resumable, atomic, validated result tables: what ``ifkit reproduce`` writes, and how a rerun resumes.

Every experiment keeps one tidy CSV (one row per measurement) through a ``ResultsTable``:

    table = ResultsTable(out / "detection.csv", key=["dataset", "noise", "rate", "seed", "method", "n_val"],
                         required=["auc", "ap"])
    if not table.has(dataset="digits", noise="symmetric", rate=0.3, seed=0, method="vm", n_val=200):
        table.add([{...one row...}])          # rewritten atomically: temp file + os.replace

Guarantees (tested in tests/test_results.py):

* **Atomic**: the file on disk is always a complete table (a kill during a write leaves the previous version;
  a failed write, e.g. a full disk, leaves no temp file behind).
* **Shared**: several processes may write one table (``ifkit reproduce --jobs``: gen-text and gen-image both
  write ``generation.csv``). ``add`` holds an exclusive lock on the folder (``fcntl.flock``, POSIX) while it
  re-reads the file and merges, so no writer loses another's rows.
* **Resumable**: ``has``/``missing`` say which keys are done, so a rerun computes only what is missing.
* **Checked on every read and write** against the table's schema (``SCHEMAS`` in ifkit/results/tables.py: its
  columns, their types, the values a key may take; ifkit/results/schema.py says what counts as damage). A
  damaged row (cut short, a value cut mid-digits at the end of an interrupted write, a garbled key, a
  non-numeric number, a repeated key) is moved to ``NAME.corrupt-<time>-<unique>`` and the other rows are kept;
  an unreadable file (not UTF-8, no key column) is moved there whole. Both happen under the folder's lock, so
  of many processes opening one damaged table exactly one moves it, and a ``CorruptResultsWarning`` names the
  file and each row. The run then recomputes what was moved. ``add`` refuses a row its schema does not take.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .schema import Checked, Schema, check_text, decode, write_rows
from .tables import SCHEMAS, schema_for


class CorruptResultsWarning(UserWarning):
    """A results file, or some of its rows, failed its check and was moved aside (the run recomputes them)."""


def write_atomic(df: pd.DataFrame, path: str | Path) -> None:
    """Write ``df`` as CSV through a temporary file in the same folder and ``os.replace`` (atomic on POSIX)."""
    _replace(Path(path), lambda tmp: df.to_csv(tmp, index=False))


def _replace(path: Path, write: Callable[[Path], None]) -> None:
    """write(tmp), then rename tmp over ``path``. On any failure (a full disk: OSError ENOSPC; a signal) the temp
    file is removed and ``path`` keeps its previous content; the error names ``path``, not the temp file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(err, OSError) and err.errno is not None and err.filename != str(path):
            raise OSError(err.errno, os.strerror(err.errno), str(path)) from err
        raise


@contextlib.contextmanager
def _folder_lock(folder: Path):
    """An exclusive ``flock`` on ``folder`` for the duration (released when its descriptor closes). Without
    ``fcntl`` (not POSIX) there is no lock: run one writer per table there (``--jobs 1``)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _norm(value: Any) -> Any:
    """Key values compare after a CSV round trip (3, 3.0 and "3" are one key): numbers as float, the rest as str."""
    if isinstance(value, bool):
        return str(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


class ResultsTable:
    """A CSV of result rows identified by ``key`` columns, checked against its schema and rewritten atomically.

    Args:
        path: the CSV file (created on the first ``add``). Its name picks the schema (``SCHEMAS``); a file
            without one is checked for its ``key`` and ``required`` columns only.
        key: columns that identify a row (setting, seed, method, ...); each combination appears at most once.
        required: value columns that every row must have, non-empty (a truncated row lacks them).
    """

    def __init__(self, path: str | Path, key: Sequence[str], required: Sequence[str] = ()) -> None:
        self.path = Path(path)
        self.key = list(key)
        self.required = list(required)
        self.schema: Schema = schema_for(self.path.name, tuple(self.key), tuple(self.required))
        self.frame = self._load()
        self._done = self._keys(self.frame)

    # ------------------------------------------------------------------ loading
    def _load(self, locked: bool = False) -> pd.DataFrame:
        """The checked table on disk. Damage found without the folder's lock is re-read under it (another
        process may have dealt with it meanwhile) and only then moved aside."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return pd.DataFrame()
        if not raw:
            return pd.DataFrame()  # an empty file is just "nothing done yet"
        text, problem = decode(raw)
        checked = Checked(problem=problem) if problem else check_text(text, self.schema, _norm)
        if checked.problem is None and not checked.bad:
            frame = self._frame(text)
            if isinstance(frame, pd.DataFrame):
                return frame
            checked = Checked(problem=frame)
        if not locked:
            with _folder_lock(self.path.parent):
                return self._load(locked=True)
        return self._move_aside(checked)

    def _frame(self, text: str) -> pd.DataFrame | str:
        """The rows as pandas reads them (the types experiments rely on), or why pandas cannot."""
        try:
            return pd.read_csv(io.StringIO(text))
        except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as err:
            return f"cannot be parsed ({type(err).__name__}: {str(err).strip()[:120]})"

    def _move_aside(self, checked: Checked) -> pd.DataFrame:
        """Under the folder's lock: move the damaged rows (or the whole file) to a new ``.corrupt`` file and
        keep the rest; warn naming the file and the rows."""
        fd, name = tempfile.mkstemp(prefix=f"{self.path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-",
                                    dir=self.path.parent)
        os.close(fd)
        aside = Path(name)
        if checked.problem is not None:
            os.replace(self.path, aside)
            self._warn(f"{self.path} {checked.problem}; moved it to {aside.name} and starting the table again")
            return pd.DataFrame()
        aside.write_text(write_rows(checked.header, [rec for _, rec, _ in checked.bad]))
        kept = write_rows(checked.header, checked.good)
        _replace(self.path, lambda tmp: tmp.write_text(kept))
        rows = "; ".join(f"line {line}: {why}" for line, _, why in checked.bad[:5])
        more = f"; and {len(checked.bad) - 5} more" if len(checked.bad) > 5 else ""
        self._warn(f"{self.path}: {len(checked.bad)} damaged row(s) moved to {aside.name} ({rows}{more}); "
                   f"its {len(checked.good)} other row(s) are kept and the run recomputes the moved ones")
        frame = self._frame(kept)
        return frame if isinstance(frame, pd.DataFrame) else pd.DataFrame()

    @staticmethod
    def _warn(message: str) -> None:
        warnings.warn(message + " (look at the .corrupt file, then delete it)", CorruptResultsWarning, stacklevel=4)

    # ------------------------------------------------------------------ queries
    def _key_of(self, values: Mapping[str, Any]) -> tuple:
        try:
            return tuple(_norm(values[k]) for k in self.key)
        except KeyError as err:
            raise KeyError(f"a row of {self.path.name} needs the key column {err.args[0]!r} (key: {self.key})") from None

    def _keys(self, df: pd.DataFrame) -> set:
        return {self._key_of(r) for r in df[self.key].to_dict("records")} if len(df) else set()

    def has(self, **key: Any) -> bool:
        """True when a row with exactly these key values is already in the table."""
        return self._key_of(key) in self._done

    def missing(self, keys: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The subset of ``keys`` (dicts of key values) not yet in the table, in the given order."""
        return [dict(k) for k in keys if self._key_of(k) not in self._done]

    def __len__(self) -> int:
        return len(self.frame)

    # ------------------------------------------------------------------ writing
    def add(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Append ``rows`` (replacing any row with the same key) and rewrite the file atomically.

        Under the folder's lock the file is read again first: rows another process wrote since this table was
        loaded are kept (for a key both have, the file's row wins over this table's older copy).

        Raises:
            ValueError: if a row lacks a required value (NaN or None), so a half-computed row is never saved,
                or has a value its schema does not take (so what is written always reads back).
        """
        if not rows:
            return
        for row in rows:
            for col in self.required:
                v = row.get(col)
                if v is None or (isinstance(v, float) and math.isnan(v)):
                    raise ValueError(f"row {self._key_of(row)} for {self.path.name} has no value for {col!r}")
        new = pd.DataFrame([dict(r) for r in rows])
        self._refuse_bad(new)
        keys = {self._key_of(r) for r in rows}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _folder_lock(self.path.parent):
            disk = self._load(locked=True)  # other writers' rows included
            parts = [self._without(disk, keys), self._without(self.frame, keys | self._keys(disk)), new]
            self.frame = pd.concat([p for p in parts if len(p)], ignore_index=True)
            write_atomic(self.frame, self.path)
        self._done = self._keys(self.frame)

    def _refuse_bad(self, new: pd.DataFrame) -> None:
        """Check the new rows exactly as they will be written and read back."""
        checked = check_text(new.to_csv(index=False), self.schema, _norm)
        if checked.problem is not None:
            raise ValueError(f"rows for {self.path.name}: {checked.problem}")
        if checked.bad:
            _, rec, why = checked.bad[0]
            key = {k: v for k, v in zip(checked.header, rec) if k in self.key}
            raise ValueError(f"row {key} for {self.path.name}: {why} (the "
                             f"schema of {self.path.name} is in ifkit/results/tables.py: add a new value there)")

    def _without(self, df: pd.DataFrame, keys: set) -> pd.DataFrame:
        """The rows of ``df`` whose key is not in ``keys``."""
        if not len(df):
            return df
        return df[[self._key_of(r) not in keys for r in df[self.key].to_dict("records")]]


__all__ = ["SCHEMAS", "CorruptResultsWarning", "ResultsTable", "Schema", "write_atomic"]
