#!/usr/bin/env python3
"""Strip outputs, execution counts and volatile metadata from Jupyter notebooks, in place.

    python3 scripts/strip_notebooks.py                 # every notebooks/*.ipynb
    python3 scripts/strip_notebooks.py a.ipynb b.ipynb
    python3 scripts/strip_notebooks.py --check         # exit 1 if any notebook would change (for CI/hooks)

Standard library only, so it runs before `make setup`. Writes the same JSON layout as nbformat
(indent=1, sorted keys, trailing newline), so stripping a clean notebook changes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Per-cell metadata that records a run (timings, scroll/collapse state), not content.
VOLATILE_CELL_METADATA = ("execution", "collapsed", "scrolled", "ExecuteTime")
# Notebook metadata of the same kind: saved ipywidgets state can be megabytes.
VOLATILE_NB_METADATA = ("widgets",)


def strip(nb: dict) -> dict:
    """Return the notebook dict with code outputs, execution counts and volatile metadata removed."""
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        meta = cell.get("metadata", {})
        for key in VOLATILE_CELL_METADATA:
            meta.pop(key, None)
    for key in VOLATILE_NB_METADATA:
        nb.get("metadata", {}).pop(key, None)
    return nb


def dumps(nb: dict) -> str:
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks (default: notebooks/*.ipynb)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if any would change")
    args = parser.parse_args(argv)
    paths = args.paths or sorted(Path("notebooks").glob("*.ipynb"))
    dirty = []
    for path in paths:
        text = path.read_text(encoding="utf-8")
        clean = dumps(strip(json.loads(text)))
        if clean != text:
            dirty.append(path)
            if not args.check:
                path.write_text(clean, encoding="utf-8")
    verb = "would strip" if args.check else "stripped"
    for path in dirty:
        print(f"{verb} {path}")
    print(f"{len(paths)} notebook(s) checked, {len(dirty)} {verb}")
    return 1 if args.check and dirty else 0


if __name__ == "__main__":
    sys.exit(main())
