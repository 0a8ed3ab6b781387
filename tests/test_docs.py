"""The README and RESULTS.md quote results/*.csv: their Fashion-MNIST detection tables must match the CSV, and
their relative links must point at files that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = [("symmetric", 0.2), ("symmetric", 0.4), ("asymmetric", 0.4), ("hard", 0.4)]  # the tables' order
# A row's label (up to its first parenthesis) -> the results/detection.csv methods of its " / "-separated cells.
ROWS = {
    "loss": ["loss"], "graddot": ["graddot"], "tracin": ["tracin"], "datainf": ["datainf"],
    "if-cg / if-lissa": ["if-cg", "if-lissa"], "if-lissa": ["if-lissa"], "ekfac": ["ekfac"],
    "self-if": ["self-if"], "gex": ["gex"], "VM": ["vm"], "FVM": ["fvm"], "FVM / FVM": ["fvm", "fvm-sam"],
    "controls at theta~: loss / gradient norm": ["loss@theta~", "gradnorm@theta~"],
    "references: loss of the early-stopped model": ["loss-early"], "cleanlab": ["cleanlab"],
    "VM computed from the early-stopped model": ["vm-early"],
    "ifkit.clean": ["vm-best-val"], "ifkit.clean / with FVM": ["vm-best-val", "fvm-best-val"],
}


def _detection_table(text: str) -> dict[str, list[str]]:
    """The markdown table whose header starts '| method | sym 20% |': {row label: [cell, ...]}."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| method | sym 20% | sym 40% |"))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        label = re.sub(r"\([^)]*\)", "", cells[0]).replace("*", "")
        rows[" ".join(label.split())] = cells[1:5]
    return rows


@pytest.fixture(scope="module")
def aucs() -> pd.Series:
    df = pd.read_csv(ROOT / "results" / "detection.csv")
    return df[df.dataset == "fashion"].groupby(["method", "noise", "rate"]).auc.mean()


@pytest.mark.parametrize("page", ["README.md", "RESULTS.md"])
def test_detection_table_matches_results_csv(page, aucs):
    table = _detection_table((ROOT / page).read_text())
    assert len(table) >= 6, table
    for label, cells in table.items():
        assert label in ROWS, f"{page}: row {label!r} is not mapped to results/detection.csv methods"
        for (noise, rate), cell in zip(COLUMNS, cells):
            quoted = [float(v.replace("*", "")) for v in cell.split("/")]
            measured = [round(aucs[(m, noise, rate)], 3) for m in ROWS[label]]
            assert quoted == pytest.approx(measured, abs=5e-4), (page, label, noise, rate)


@pytest.mark.parametrize("page", ["README.md", "RESULTS.md", "docs/LIBRARY.md"])
def test_relative_links_resolve(page):
    path = ROOT / page
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", path.read_text()):
        if "://" not in target:
            assert (path.parent / target).exists(), f"{page} links to {target}, which does not exist"


# ---------------------------------------------------------------------------------- docs/PAPER.md's equations
PAPER = ROOT / "docs" / "PAPER.md"
N_EQUATIONS = 19  # fixed: notebooks, docstrings and exercises cite "docs/PAPER.md, Eq. N"
EQ_DEFINITION = re.compile(r"^\*\*\(Eq\. (\d+)\)\*\*", re.M)  # the line that opens equation N's block
# "Eq. 4", "Eq. 1-4", "Eqs. 2, 3 and 5"
EQ_CITATION = re.compile(r"\bEqs?\.\s*(\d+(?:\s*(?:[-\u2013,]|and)\s*\d+)*)")


def _cited(text: str) -> set[int]:
    """Every equation number an "Eq. N" / "Eq. N-M" / "Eqs. N, M and K" citation in ``text`` names."""
    out: set[int] = set()
    for m in EQ_CITATION.finditer(text):
        for part in re.split(r"\s*(?:,|and)\s*", m.group(1)):
            span = re.fullmatch(r"(\d+)\s*[-\u2013]\s*(\d+)", part)
            out.update(range(int(span[1]), int(span[2]) + 1) if span else {int(part)})
    return out


def _source_text(path: Path) -> str:
    """A notebook's cell sources (not its outputs), or a file's text."""
    if path.suffix == ".ipynb":
        import json

        return "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"])
    return path.read_text()


def _equation_blocks() -> dict[int, str]:
    """{N: the text of PAPER.md from equation N's opening line to the next equation or section}, in order."""
    text = PAPER.read_text()
    starts = list(EQ_DEFINITION.finditer(text))
    blocks = {}
    for k, m in enumerate(starts):
        end = starts[k + 1].start() if k + 1 < len(starts) else len(text)
        section = text.find("\n## ", m.start())
        blocks[int(m.group(1))] = text[m.start(): end if section < 0 else min(end, section)]
    return blocks


def _resolve(dotted: str):
    """Import the longest module prefix of ``dotted`` and getattr the rest (AttributeError if it is missing)."""
    import importlib

    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is not None and not name.startswith(e.name):
                raise  # a real missing dependency inside an existing module, not a shorter prefix
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


def test_paper_equations_are_numbered_1_to_19_without_gaps():
    numbers = [int(m.group(1)) for m in EQ_DEFINITION.finditer(PAPER.read_text())]
    assert numbers == list(range(1, N_EQUATIONS + 1)), f"docs/PAPER.md defines equations {numbers}"
    for n, block in _equation_blocks().items():
        assert f"\\tag{{{n}}}" in block, f"docs/PAPER.md: equation {n}'s display math lacks \\tag{{{n}}}"


def test_every_cited_equation_exists_in_paper():
    defined = {int(m.group(1)) for m in EQ_DEFINITION.finditer(PAPER.read_text())}
    files = [*sorted((ROOT / "notebooks").glob("*.ipynb")), *sorted((ROOT / "ifkit").rglob("*.py")),
             *sorted((ROOT / "docs").glob("*.md"))]
    assert len(files) > 20
    missing = {f"{path.relative_to(ROOT)}: Eq. {n}" for path in files for n in _cited(_source_text(path)) - defined}
    assert not missing, f"cited but not in docs/PAPER.md: {sorted(missing)}"


def test_citation_parser_reads_ranges_and_lists():
    assert _cited("docs/PAPER.md, Eq. 1-4; Eqs. 11 and 13, Eq. 19") == {1, 2, 3, 4, 11, 13, 19}
    assert _cited("Eqs. 2, 3 and 5") == {2, 3, 5}
    assert _cited("Theorem 3.2 (Eq. 8)") == {8}


@pytest.mark.parametrize("n", range(1, N_EQUATIONS + 1))
def test_each_equation_names_its_notebook_and_function(n):
    block = _equation_blocks()[n]
    line = next((ln for ln in block.splitlines() if ln.startswith("Derived in:")), None)
    assert line is not None, f"docs/PAPER.md, Eq. {n}: no 'Derived in: ...; computed by: ...' line"
    derived, sep, computed = line.partition("computed by:")
    assert sep, f"docs/PAPER.md, Eq. {n}: the line names no 'computed by:'"
    notebooks = re.findall(r"\bnotebook (\d\d)\b", derived)
    assert notebooks, f"docs/PAPER.md, Eq. {n}: names no notebook"
    for nn in notebooks:
        assert list((ROOT / "notebooks").glob(f"{nn}_*.ipynb")), f"Eq. {n}: notebook {nn} does not exist"
    names = re.findall(r"`(ifkit(?:\.\w+)+)`", computed)
    assert names, f"docs/PAPER.md, Eq. {n}: names no ifkit function"
    for name in names:
        assert callable(_resolve(name)), f"docs/PAPER.md, Eq. {n}: {name} is not callable"


def test_no_file_outside_docs_names_the_private_notes():
    import subprocess

    needle = "NOTES" + ".md"  # spelled in two parts so that this file does not name it
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True)
    paths = ([ROOT / p for p in listed.stdout.splitlines()] if listed.returncode == 0 else
             [p for p in ROOT.rglob("*") if not any(part.startswith(".") for part in p.relative_to(ROOT).parts)])
    checked, offenders = 0, []
    for path in paths:
        rel = path.relative_to(ROOT)
        if rel.parts[0] == "docs" or not path.is_file() or path.is_symlink():
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue  # binary (figures)
        checked += 1
        if needle.encode() in data:
            offenders.append(str(rel))
    assert checked > 50
    assert not offenders, f"name {needle} (outside the repo; cite docs/PAPER.md instead): {offenders}"
