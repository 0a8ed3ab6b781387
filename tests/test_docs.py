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
