#!/usr/bin/env python3
"""Write copies of the tutorials with every exercise cell replaced by its reference answer.

    python3 scripts/fill_solutions.py            # notebooks/NN_name.ipynb -> notebooks/solved_NN_name.ipynb
    python3 scripts/fill_solutions.py --clean    # remove the solved_*.ipynb copies

An exercise cell is a code cell tagged ``exercise`` (cell metadata). Each function it defines is replaced by
the function of the same name in ``notebooks/solutions/NN_name.py``, after that file's imports. The copies sit
beside the originals (so ``../results`` still resolves) and are ignored by git; ``make test-solutions`` runs them
under nbval with IFKIT_EXERCISES_STRICT=1, so every check must pass. Standard library only.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
SOLUTIONS = NOTEBOOKS / "solutions"
PREFIX = "solved_"


def solution_parts(path: Path) -> tuple[str, dict[str, str]]:
    """(the file's import lines, {function name: its source})."""
    text = path.read_text()
    tree = ast.parse(text)
    imports = [ast.get_source_segment(text, n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    funcs = {n.name: ast.get_source_segment(text, n) for n in tree.body if isinstance(n, ast.FunctionDef)}
    return "\n".join(imports), funcs


def defined_functions(source: str) -> list[str]:
    # notebook cells may hold IPython magics; exercise cells should not, but be lenient
    clean = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
    return [n.name for n in ast.parse(clean).body if isinstance(n, ast.FunctionDef)]


def fill(nb_path: Path) -> tuple[dict, list[str]] | None:
    """The notebook with its exercise cells solved, and the exercise names; None if it has no exercise."""
    nb = json.loads(nb_path.read_text())
    cells = [c for c in nb["cells"] if c["cell_type"] == "code" and "exercise" in c.get("metadata", {}).get("tags", [])]
    if not cells:
        return None
    sol = SOLUTIONS / (nb_path.stem + ".py")
    if not sol.exists():
        sys.exit(f"{nb_path.name} has exercise cells but {sol.relative_to(ROOT)} does not exist")
    imports, funcs = solution_parts(sol)
    names = []
    for cell in cells:
        src = "".join(cell["source"])
        wanted = defined_functions(src)
        if not wanted:
            sys.exit(f"{nb_path.name}: an exercise cell defines no function:\n{src}")
        missing = [n for n in wanted if n not in funcs]
        if missing:
            sys.exit(f"{nb_path.name}: no reference answer for {missing} in {sol.relative_to(ROOT)}")
        body = "\n\n\n".join(funcs[n] for n in wanted)
        cell["source"] = (imports + "\n\n\n" + body + "\n").splitlines(keepends=True)
        names += wanted
    return nb, names


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clean", action="store_true", help="remove the solved copies and exit")
    args = ap.parse_args(argv)
    for old in NOTEBOOKS.glob(PREFIX + "*.ipynb"):
        old.unlink()
    if args.clean:
        return 0
    for nb_path in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        out = fill(nb_path)
        if out is None:
            continue
        nb, names = out
        (NOTEBOOKS / (PREFIX + nb_path.name)).write_text(json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
        print(f"{PREFIX + nb_path.name}: {len(names)} exercises solved ({', '.join(names)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
