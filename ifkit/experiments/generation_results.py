"""``generation.csv``: the one results file both generation experiments write, and its only owner.

gen-text writes the tasks "sentence" and "math", gen-image the task "style"; one row per (task, variant, seed,
method). Both open it with ``table(out, tasks)`` and ask ``done(table, mode, **key)`` before measuring, so the key,
the required columns, the migration of old files and the resume rule live here once. Writing goes through the
returned ``ifkit.results.ResultsTable`` (atomic, merged under a folder lock: the two experiments may run in
separate ``--jobs`` workers).
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pandas as pd
from scipy import stats

from ifkit.results import ResultsTable, write_atomic

FILENAME = "generation.csv"
KEY = ["task", "variant", "seed", "method"]
REQUIRED = ["auc", "recall"]  # every row written now has precision5 too; rows from before it may lack it


def migrate(path: Path, tasks: Collection[str]) -> None:
    """Bring a generation.csv from before the variant column up to the current key, in place (atomically).

    The rows of ``tasks`` (the experiment about to run) are dropped: they come from another setup and are rerun.
    The other tasks' rows are kept as variant "protocol", so the file parses under the new key. The file as it
    was is kept beside it (``generation.csv.pre-variant``) and a warning names it. A file that has the variant
    column, no file, or a file that does not parse as a CSV with a task column is left alone: opening it with
    ``ResultsTable`` then checks it against its schema and moves damaged rows or files aside with a warning.
    """
    if not path.is_file():
        return
    try:
        df = pd.read_csv(path, encoding="utf-8")
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError, ValueError):
        return
    if "variant" in df.columns or "task" not in df.columns:
        return
    backup = path.with_name(path.name + ".pre-variant")
    shutil.copy2(path, backup)
    warnings.warn(f"{path}: a table from before the variant column; rows of {sorted(tasks)} are dropped to be "
                  f"rerun, the others kept as variant 'protocol'. The file as it was: {backup}", stacklevel=2)
    write_atomic(df[~df["task"].isin(list(tasks))].assign(variant="protocol"), path)


def table(out: str | Path, tasks: Collection[str]) -> ResultsTable:
    """``out/generation.csv`` as a ResultsTable, for an experiment that writes the rows of ``tasks`` (migrated
    first: ``migrate``)."""
    path = Path(out) / FILENAME
    migrate(path, tasks)
    return ResultsTable(path, KEY, required=REQUIRED)


def _matches(column: pd.Series, value: Any) -> pd.Series:
    """column == value after a CSV round trip (seed 0 may read back as 0 or 0.0)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return pd.to_numeric(column, errors="coerce") == float(value)
    return column.astype(str) == str(value)


def done(table: ResultsTable, mode: str, **key: Any) -> bool:
    """True when the row ``key`` (task, variant, seed, method) is in the table AND was measured in ``mode``.

    The key has no mode, so a --fast row ("fast") and a full one ("full") share it: a run in the other mode
    replaces the row instead of resuming from it. Rows from before the mode column count as done.
    """
    if not table.has(**key):
        return False
    f = table.frame
    if "mode" not in f.columns:
        return True
    sel = pd.Series(True, index=f.index)
    for col, value in key.items():
        sel &= _matches(f[col], value)
    return str(f.loc[sel, "mode"].iloc[0]) == mode


def paired_differences(df: pd.DataFrame, metric: str = "auc", versus: Collection[str] | None = None,
                       level: float = 0.95) -> pd.DataFrame:
    """Per (task, variant), each method against each of ``versus`` (default: every method), paired by seed.

    For the n seeds both have, d_s = metric(method, s) - metric(other, s) and

        diff = mean_s d_s,   interval = diff -+ t_{(1 + level)/2, n-1} * sd(d_s) / sqrt(n)

    (Student's t over seeds: the seed, which draws the pretraining, the data and the fine-tuning, is the unit;
    pairing removes what a seed does to both methods alike). An interval that excludes 0 says the gap holds
    across seeds. Rows with n < 2 get NaN bounds. Returns task, variant, method, versus, metric, diff, lo, hi, n.
    """
    rows = []
    for (task, variant), g in df.groupby(["task", "variant"], sort=False):
        wide = g.pivot_table(index="seed", columns="method", values=metric, aggfunc="mean")
        for a in wide.columns:
            for b in (versus if versus is not None else wide.columns):
                if b == a or b not in wide.columns:
                    continue
                d = (wide[a] - wide[b]).dropna()
                n = len(d)
                half = (stats.t.ppf((1 + level) / 2, n - 1) * d.std(ddof=1) / n ** 0.5) if n > 1 else float("nan")
                rows.append({"task": task, "variant": variant, "method": a, "versus": b, "metric": metric,
                             "diff": d.mean(), "lo": d.mean() - half, "hi": d.mean() + half, "n": n})
    return pd.DataFrame(rows, columns=["task", "variant", "method", "versus", "metric", "diff", "lo", "hi", "n"])


__all__ = ["FILENAME", "KEY", "REQUIRED", "done", "migrate", "paired_differences", "table"]
