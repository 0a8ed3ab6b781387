"""Committed notebooks are stripped, numbered, and start with the FAST/SEED cell (see STYLE.md)."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
NAME = re.compile(r"^\d{2}_[a-z0-9]+(?:_[a-z0-9]+)*\.ipynb$")  # 00_quickstart.ipynb


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _first_cell_problems(source: str) -> list[str]:
    # IPython magics and shell escapes are not Python: blank them out before parsing.
    code = "\n".join("" if ln.lstrip().startswith(("%", "!")) else ln for ln in source.splitlines())
    try:
        tree = ast.parse(code)
    except SyntaxError as err:
        return [f"first code cell does not parse: {err}"]
    assigned = {}
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Name) and node.value is not None:
                    assigned[t.id] = ast.unparse(node.value)
    problems = []
    if "IFKIT_FAST" not in assigned.get("FAST", ""):
        problems.append(
            "first code cell must set FAST from the IFKIT_FAST env var (FAST = os.environ.get(...))"
        )
    if "SEED" not in assigned:
        problems.append("first code cell must set SEED")
    return problems


def notebook_problems(nb: dict, filename: str) -> list[str]:
    """Everything wrong with one notebook (an empty list when it is fine)."""
    problems = []
    if not NAME.match(filename):
        problems.append(f"{filename}: name must look like NN_snake_case.ipynb")
    code_cells = [c for c in nb.get("cells", []) if c.get("cell_type") == "code"]
    for i, cell in enumerate(code_cells):
        if cell.get("outputs"):
            problems.append(f"{filename}: code cell {i} has outputs (run `make clean-notebooks`)")
        if cell.get("execution_count") is not None:
            problems.append(f"{filename}: code cell {i} has an execution_count (run `make clean-notebooks`)")
    if not code_cells:
        problems.append(f"{filename}: no code cells")
    else:
        problems += [f"{filename}: {p}" for p in _first_cell_problems(_source(code_cells[0]))]
    return problems


# --------------------------------------------------------------------------- the checker itself is tested

GOOD_FIRST_CELL = (
    'import os\nFAST = os.environ.get("IFKIT_FAST", "0") != "0"\nSEED = 0\nN_TRAIN = 300 if FAST else 8_000\n'
)


def _nb(*cells: dict) -> dict:
    return {"cells": list(cells), "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def _code(source: str, outputs=(), count=None) -> dict:
    return {
        "cell_type": "code",
        "source": source,
        "outputs": list(outputs),
        "execution_count": count,
        "metadata": {},
    }


def _md(source: str) -> dict:
    return {"cell_type": "markdown", "source": source, "metadata": {}}


def test_checker_accepts_a_clean_notebook():
    nb = _nb(_md("# Title"), _code("%matplotlib inline\n" + GOOD_FIRST_CELL), _code("print(N_TRAIN)"))
    assert notebook_problems(nb, "03_flat_minima.ipynb") == []


def test_checker_flags_a_dirty_notebook():
    out = {"output_type": "stream", "name": "stdout", "text": "300\n"}
    nb = _nb(_code(GOOD_FIRST_CELL, count=1), _code("print(N_TRAIN)", outputs=[out], count=2))
    problems = notebook_problems(nb, "03_flat_minima.ipynb")
    assert len(problems) == 3  # two execution counts, one output
    assert any("has outputs" in p for p in problems)


@pytest.mark.parametrize(
    "first_cell, expected",
    [
        ("FAST = True\nSEED = 0\n", "IFKIT_FAST"),
        ('import os\nFAST = os.environ.get("IFKIT_FAST", "0") != "0"\n', "SEED"),
        ("def broken(:\n", "does not parse"),
    ],
)
def test_checker_flags_a_bad_first_cell(first_cell, expected):
    problems = notebook_problems(_nb(_code(first_cell)), "00_quickstart.ipynb")
    assert len(problems) == 1 and expected in problems[0]


@pytest.mark.parametrize("name", ["quickstart.ipynb", "1_intro.ipynb", "01-intro.ipynb", "01_Intro.ipynb"])
def test_checker_flags_bad_names(name):
    nb = _nb(_code(GOOD_FIRST_CELL))
    assert notebook_problems(nb, name) == [f"{name}: name must look like NN_snake_case.ipynb"]


def test_strip_script_makes_a_dirty_notebook_clean(tmp_path):
    spec = importlib.util.spec_from_file_location("strip_notebooks", ROOT / "scripts" / "strip_notebooks.py")
    strip_notebooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(strip_notebooks)

    out = {"output_type": "stream", "name": "stdout", "text": "300\n"}
    dirty = _nb(_code(GOOD_FIRST_CELL, outputs=[out], count=7))
    dirty["cells"][0]["metadata"]["execution"] = {"iopub.status.busy": "2025-01-01T00:00:00"}
    dirty["metadata"]["widgets"] = {"state": {}}
    path = tmp_path / "05_dirty.ipynb"
    path.write_text(json.dumps(dirty))

    assert strip_notebooks.main(["--check", str(path)]) == 1
    assert strip_notebooks.main([str(path)]) == 0
    clean = json.loads(path.read_text())
    assert notebook_problems(clean, path.name) == []
    assert clean["cells"][0]["metadata"] == {} and "widgets" not in clean["metadata"]
    assert strip_notebooks.main(["--check", str(path)]) == 0  # stripping is idempotent


# ------------------------------------------------------------------------------ the committed notebooks


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_committed_notebook_is_clean(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    assert notebook_problems(nb, path.name) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_committed_notebook_is_valid_nbformat(path):
    nbformat = pytest.importorskip("nbformat")
    nbformat.validate(nbformat.read(path, as_version=4))


def test_notebook_numbers_are_unique():
    numbers = [p.name[:2] for p in NOTEBOOKS]
    assert len(numbers) == len(set(numbers)), f"two notebooks share a number: {numbers}"
