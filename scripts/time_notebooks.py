#!/usr/bin/env python3
"""Time every tutorial notebook as CI runs it, and keep results/notebook_times.csv the one source of the run
times that README.md and notebooks/README.md show.

    .venv/bin/python scripts/time_notebooks.py               # every notebook in FAST mode, then update the docs
    .venv/bin/python scripts/time_notebooks.py 00 05         # only these notebooks (the other rows are kept)
    .venv/bin/python scripts/time_notebooks.py --full        # full size (IFKIT_FAST=0): slow, a row per mode
    .venv/bin/python scripts/time_notebooks.py --docs-only   # rewrite the docs' generated columns, measure nothing

Each notebook runs alone, in a fresh process, under nbval exactly as `make test-notebooks` runs it
(`IFKIT_FAST=1 MPLBACKEND=Agg python -m pytest -q --nbval-lax --nbval-current-env notebooks/NN_x.ipynb`), so a
time includes the kernel's start and every assert; a notebook that fails gets no row and the script exits 1.
The CSV (notebook, mode, seconds, cores, date, load_avg) records the machine's 1-minute load average when each
notebook finished: on a busy machine the times are upper bounds, and the docs say so.

In the docs, every markdown table with a "FAST run time" column gets that cell rewritten on each row naming a
notebook, and the line after `<!-- notebook-times -->` is rewritten with how and when the times were measured.
A "FAST / full size" column gets what FAST changes in that notebook, read from its first code cell (run once with
IFKIT_FAST=1 and once with IFKIT_FAST=0). tests/test_docs.py fails when the docs, the CSV and the notebooks
disagree. Standard library only (pytest + nbval come from the interpreter that runs this script: the .venv).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CSV_PATH = ROOT / "results" / "notebook_times.csv"
DOCS = (ROOT / "README.md", ROOT / "notebooks" / "README.md")
COLUMNS = ("notebook", "mode", "seconds", "cores", "date", "load_avg")
TIME_HEADER = "FAST run time"  # the docs' table column these times fill
SIZES_HEADER = "FAST / full size"  # the docs' table column of what FAST changes
MARKER = "<!-- notebook-times -->"  # the caption line after it is generated
NOTEBOOK = re.compile(r"\d\d_[a-z0-9_]+\.ipynb")


def notebooks() -> list[Path]:
    """The tutorials, in reading order (solved copies and other notebooks are not tutorials)."""
    return sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def cores() -> int:
    """CPU cores this process may use (what the notebooks get), not the machine's total."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def time_one(path: Path, fast: bool) -> float | None:
    """Wall-clock seconds of one notebook under nbval, or None when it fails (its output is printed)."""
    env = dict(os.environ, IFKIT_FAST="1" if fast else "0", MPLBACKEND="Agg", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env",
           str(path.relative_to(ROOT))]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        print(done.stdout[-4000:], done.stderr[-2000:], sep="\n", file=sys.stderr)
        return None
    return seconds


def read_rows(path: Path = CSV_PATH) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def write_rows(rows: list[dict[str, str]], path: Path = CSV_PATH) -> None:
    """Atomically, sorted by notebook then mode, so a rerun of one notebook gives a small diff."""
    rows = sorted(rows, key=lambda r: (r["notebook"], r["mode"]))
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: r[k] for k in COLUMNS} for r in rows)
    tmp.replace(path)


def measure(paths: list[Path], fast: bool) -> tuple[list[dict[str, str]], list[str]]:
    """One row per notebook that passed, and the names of those that failed."""
    mode = "fast" if fast else "full"
    rows, failed = [], []
    for path in paths:
        print(f"{path.name} ({mode}) ...", end=" ", flush=True)
        seconds = time_one(path, fast)
        if seconds is None:
            print("FAILED")
            failed.append(path.name)
            continue
        load = os.getloadavg()[0]
        print(f"{seconds:.1f} s (load average {load:.1f} on {cores()} cores)")
        rows.append({"notebook": path.name, "mode": mode, "seconds": f"{seconds:.1f}", "cores": str(cores()),
                     "date": dt.date.today().isoformat(), "load_avg": f"{load:.1f}"})
    return rows, failed


def merge(old: list[dict[str, str]], new: list[dict[str, str]]) -> list[dict[str, str]]:
    """The new rows replace the old ones of the same (notebook, mode)."""
    keys = {(r["notebook"], r["mode"]) for r in new}
    return [r for r in old if (r["notebook"], r["mode"]) not in keys] + new


# ------------------------------------------------------------------------------------------------ the docs

def duration(seconds: float) -> str:
    """How the docs print a run time: '42 s' under 100 s, else minutes to one decimal ('2.5 min')."""
    return f"{seconds:.0f} s" if seconds < 100 else f"{seconds / 60:.1f} min"


def caption(rows: list[dict[str, str]]) -> str:
    """One line: what the times are, when and how they were measured, and how busy the machine was."""
    fast = [r for r in rows if r["mode"] == "fast"]
    if not fast:
        return "No FAST run times measured yet: run `.venv/bin/python scripts/time_notebooks.py`."
    total = sum(float(r["seconds"]) for r in fast)
    dates = sorted({r["date"] for r in fast})
    n_cores = sorted({int(r["cores"]) for r in fast})
    loads = [float(r["load_avg"]) for r in fast]
    busy = max(loads) > max(n_cores)
    when = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
    how = (f"while the machine ran other jobs (1-minute load average {min(loads):.1f}-{max(loads):.1f}), so a "
           "quiet machine is faster" if busy else f"on a quiet machine (load average up to {max(loads):.1f})")
    cores_text = "/".join(map(str, n_cores))
    return (f"Run times: each notebook alone under nbval with `IFKIT_FAST=1`, as CI runs it (kernel start "
            f"included), {duration(total)} for all {len(fast)}; measured on {cores_text} cores on {when} {how}. "
            "They come from `results/notebook_times.csv`; `.venv/bin/python scripts/time_notebooks.py` measures "
            "them again and rewrites this table.")


def first_cell(path: Path) -> str:
    nb = json.loads(path.read_text())
    return "".join(next(c for c in nb["cells"] if c["cell_type"] == "code")["source"])


def first_cell_constants(path: Path, fast: bool) -> dict[str, object]:
    """The upper-case constants the notebook's first code cell sets, with IFKIT_FAST on or off (its prints hidden)."""
    source = first_cell(path)
    namespace: dict[str, object] = {}
    saved = os.environ.get("IFKIT_FAST")
    os.environ["IFKIT_FAST"] = "1" if fast else "0"
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(source, str(path), "exec"), namespace)
    finally:
        if saved is None:
            os.environ.pop("IFKIT_FAST")
        else:
            os.environ["IFKIT_FAST"] = saved
    return {k: v for k, v in namespace.items() if k.isupper() and k != "FAST"}


def _value(v: object) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, tuple, list)):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    return "(" + ", ".join(_value(x) for x in v) + ")"


def fast_changes(path: Path) -> str:
    """What FAST changes in one notebook, e.g. "`N_TRAIN` 300 / 1,000; `EPOCHS` 80 / 200" (FAST / full size)."""
    fast, full = first_cell_constants(path, True), first_cell_constants(path, False)
    # A constant whose line explains both modes in a "# FAST: ..." comment (a mode name, say) carries it along.
    notes = dict(re.findall(r"^(\w+) *=.*# *(FAST:.*)$", first_cell(path), flags=re.M))
    changed = [f"`{k}` {_value(fast[k])} / {_value(full[k])}" + (f" ({notes[k].strip()})" if k in notes else "")
               for k in fast if fast[k] != full.get(k)]
    return "; ".join(changed) or "nothing"


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def update_text(text: str, rows: list[dict[str, str]]) -> str:
    """``text`` with every generated table cell and the caption after MARKER regenerated from ``rows`` and the
    notebooks' first code cells."""
    fast = {r["notebook"]: float(r["seconds"]) for r in rows if r["mode"] == "fast"}
    lines = text.split("\n")
    columns: dict[str, int] = {}  # generated column -> its index, inside the current table
    for i, line in enumerate(lines):
        if not line.startswith("|"):
            columns = {}
            if i > 0 and lines[i - 1].strip() == MARKER:
                lines[i] = caption(rows)
            continue
        cells = _cells(line)
        if TIME_HEADER in cells or SIZES_HEADER in cells:
            columns = {h: cells.index(h) for h in (TIME_HEADER, SIZES_HEADER) if h in cells}
            continue
        found = NOTEBOOK.search(cells[0]) if columns else None
        if found:
            name = found.group(0)
            if TIME_HEADER in columns:
                cells[columns[TIME_HEADER]] = duration(fast[name]) if name in fast else "not measured"
            if SIZES_HEADER in columns:
                path = ROOT / "notebooks" / name
                cells[columns[SIZES_HEADER]] = fast_changes(path) if path.is_file() else "no such notebook"
            lines[i] = "| " + " | ".join(cells) + " |"
    return "\n".join(lines)


def update_docs(rows: list[dict[str, str]], docs: tuple[Path, ...] = DOCS) -> list[Path]:
    """Rewrite the docs that changed; returns them."""
    changed = []
    for doc in docs:
        text = doc.read_text()
        new = update_text(text, rows)
        if new != text:
            doc.write_text(new)
            changed.append(doc)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("only", nargs="*", help="notebook numbers or names to time (default: every tutorial)")
    parser.add_argument("--full", action="store_true", help="time at full size (IFKIT_FAST=0) instead of FAST")
    parser.add_argument("--docs-only", action="store_true", help="measure nothing; rewrite the docs from the CSV")
    args = parser.parse_args(argv)

    failed: list[str] = []
    if not args.docs_only:
        paths = [p for p in notebooks() if not args.only or any(p.name.startswith(o) for o in args.only)]
        if not paths:
            parser.error(f"no notebook matches {args.only}; the tutorials are notebooks/NN_*.ipynb")
        new, failed = measure(paths, fast=not args.full)
        write_rows(merge(read_rows(), new))
        print(f"wrote {CSV_PATH.relative_to(ROOT)}")
    for doc in update_docs(read_rows()):
        print(f"updated {doc.relative_to(ROOT)}")
    if failed:
        print(f"failed (no row written): {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
