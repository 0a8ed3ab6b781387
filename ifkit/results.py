"""Resumable, atomic result tables: what ``ifkit reproduce`` writes, and how a rerun picks up where it stopped.

Every experiment keeps one tidy CSV (one row per measurement) through a ``ResultsTable``:

    table = ResultsTable(out / "detection.csv", key=["dataset", "noise", "rate", "seed", "method"],
                         required=["auc", "ap"])
    if not table.has(dataset="digits", noise="symmetric", rate=0.3, seed=0, method="vm"):
        table.add([{...one row...}])          # rewritten atomically: temp file + os.replace

Guarantees (tested in tests/test_results.py):

* **Atomic**: the file on disk is always a complete table (a kill during a write leaves the previous version).
* **Shared**: several processes may write one table (``ifkit reproduce --jobs``: gen-text and gen-image both
  write ``generation.csv``). ``add`` holds an exclusive lock on the folder (``fcntl.flock``, POSIX) while it
  re-reads the file and merges, so no writer loses another's rows.
* **Resumable**: ``has``/``missing`` say which keys are done, so a rerun computes only what is missing.
* **Never silently mixed**: a file that cannot be parsed, lacks a key or required column, has an empty key or
  required value (a truncated last line), or repeats a key is *corrupt*: it is moved aside to
  ``NAME.corrupt-<time>`` with a warning that says so, and the table is rebuilt from scratch.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd


class CorruptResultsWarning(UserWarning):
    """A results file was unreadable or inconsistent and has been moved aside (the run rebuilds it)."""


def write_atomic(df: pd.DataFrame, path: str | Path) -> None:
    """Write ``df`` as CSV through a temporary file in the same folder and ``os.replace`` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)


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
    """A CSV of result rows identified by ``key`` columns, loaded with validation and rewritten atomically.

    Args:
        path: the CSV file (created on the first ``add``).
        key: columns that identify a row (setting, seed, method, ...); each combination appears at most once.
        required: value columns that every row must have, non-empty (a truncated row lacks them).
    """

    def __init__(self, path: str | Path, key: Sequence[str], required: Sequence[str] = ()) -> None:
        self.path = Path(path)
        self.key = list(key)
        self.required = list(required)
        self.frame = self._load()
        self._done = {self._key_of(row) for row in self.frame[self.key].to_dict("records")} if len(self.frame) else set()

    # ------------------------------------------------------------------ loading
    def _load(self) -> pd.DataFrame:
        if not self.path.is_file():
            return pd.DataFrame()
        problem = None
        try:
            df = pd.read_csv(self.path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as err:
            if self.path.stat().st_size == 0:
                return pd.DataFrame()  # an empty file is just "nothing done yet"
            df, problem = None, f"cannot be parsed ({type(err).__name__}: {str(err).strip()[:120]})"
        if df is not None:
            problem = self._check(df)
        if problem is None:
            return df
        aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(self.path, aside)
        warnings.warn(
            f"{self.path} {problem}; moved it to {aside.name} and starting the table again "
            "(delete the .corrupt file once you have looked at it)",
            CorruptResultsWarning,
            stacklevel=3,
        )
        return pd.DataFrame()

    def _check(self, df: pd.DataFrame) -> str | None:
        missing = [c for c in self.key + self.required if c not in df.columns]
        if missing:
            return f"lacks the column(s) {missing}"
        for col in self.key + self.required:
            if df[col].isna().any():
                rows = df.index[df[col].isna()].tolist()[:5]
                return f"has empty {col!r} values (rows {rows}: a truncated or hand-edited file?)"
        dup = df.duplicated(subset=self.key)
        if dup.any():
            return f"repeats the key {self.key} in rows {df.index[dup].tolist()[:5]}"
        return None

    # ------------------------------------------------------------------ queries
    def _key_of(self, values: Mapping[str, Any]) -> tuple:
        try:
            return tuple(_norm(values[k]) for k in self.key)
        except KeyError as err:
            raise KeyError(f"a row of {self.path.name} needs the key column {err.args[0]!r} (key: {self.key})") from None

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
            ValueError: if a row lacks a required value (NaN or None), so a half-computed row is never saved.
        """
        if not rows:
            return
        for row in rows:
            for col in self.required:
                v = row.get(col)
                if v is None or (isinstance(v, float) and math.isnan(v)):
                    raise ValueError(f"row {self._key_of(row)} for {self.path.name} has no value for {col!r}")
        new = pd.DataFrame([dict(r) for r in rows])
        keys = {self._key_of(r) for r in rows}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _folder_lock(self.path.parent):
            disk = self._load()  # other writers' rows included
            on_disk = {self._key_of(r) for r in disk[self.key].to_dict("records")} if len(disk) else set()
            parts = [self._without(disk, keys), self._without(self.frame, keys | on_disk), new]
            self.frame = pd.concat([p for p in parts if len(p)], ignore_index=True)
            write_atomic(self.frame, self.path)
        self._done = {self._key_of(r) for r in self.frame[self.key].to_dict("records")}

    def _without(self, df: pd.DataFrame, keys: set) -> pd.DataFrame:
        """The rows of ``df`` whose key is not in ``keys``."""
        if not len(df):
            return df
        return df[[self._key_of(r) not in keys for r in df[self.key].to_dict("records")]]


__all__ = ["CorruptResultsWarning", "ResultsTable", "write_atomic"]
