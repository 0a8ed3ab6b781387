"""The README and RESULTS.md quote results/*.csv: their Fashion-MNIST detection tables must match the CSV, and
their relative links must point at files that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from tolerances import QUOTED_3DP_ABS

from ifkit.experiments.baselines import FAIR

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
    "ifkit.clean": ["loss-best-val@theta~"], "VM at the lowest-S_val-loss checkpoint": ["vm-best-val"],
    "ifkit.clean / with FVM": ["vm-best-val", "fvm-best-val"],
    "VM / FVM at the lowest-S_val-loss checkpoint": ["vm-best-val", "fvm-best-val"],
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
    return df[(df.dataset == "fashion") & (df.model == "mlp")].groupby(["method", "noise", "rate"]).auc.mean()


@pytest.mark.parametrize("page", ["README.md", "RESULTS.md"])
def test_detection_table_matches_results_csv(page, aucs):
    table = _detection_table((ROOT / page).read_text())
    assert len(table) >= 6, table
    for label, cells in table.items():
        assert label in ROWS, f"{page}: row {label!r} is not mapped to results/detection.csv methods"
        for (noise, rate), cell in zip(COLUMNS, cells):
            quoted = [float(v.replace("*", "")) for v in cell.split("/")]
            measured = [round(aucs[(m, noise, rate)], 3) for m in ROWS[label]]
            assert quoted == pytest.approx(measured, abs=QUOTED_3DP_ABS), (page, label, noise, rate)


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

# ------------------------------------------------------------------ notebook run times and what FAST changes

def _time_notebooks():
    """scripts/time_notebooks.py as a module (scripts/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("time_notebooks", ROOT / "scripts" / "time_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TUTORIALS = sorted(p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
TABLE_PAGES = ["README.md", "notebooks/README.md"]


def test_notebook_times_csv_is_well_formed():
    tn = _time_notebooks()
    df = pd.read_csv(ROOT / "results" / "notebook_times.csv")
    assert list(df.columns) == list(tn.COLUMNS)
    assert set(df["mode"]) <= {"fast", "full"} and not df.duplicated(["notebook", "mode"]).any()
    assert (df["seconds"] > 0).all() and (df["cores"] >= 1).all() and (df["load_avg"] >= 0).all()
    assert pd.to_datetime(df["date"], format="%Y-%m-%d").notna().all()
    missing = sorted(set(TUTORIALS) - set(df.loc[df["mode"] == "fast", "notebook"]))
    assert not missing, f"no FAST time for {missing}: run `.venv/bin/python scripts/time_notebooks.py {missing[0][:2]}`"


@pytest.mark.parametrize("page", TABLE_PAGES)
def test_notebook_tables_are_generated_from_csv_and_first_cells(page):
    """Run times come from results/notebook_times.csv, "FAST / full size" from each notebook's first code cell."""
    tn = _time_notebooks()
    text = (ROOT / page).read_text()
    rows = tn.read_rows()
    assert tn.update_text(text, rows) == text, (
        f"{page}'s notebook table is out of step with results/notebook_times.csv or the notebooks' first code cells: "
        "run `.venv/bin/python scripts/time_notebooks.py --docs-only` (or without --docs-only to measure again)")
    table_rows = [ln for ln in text.splitlines() if ln.startswith("| `") and tn.NOTEBOOK.search(ln.split("|")[1])]
    listed = [tn.NOTEBOOK.search(ln.split("|")[1]).group(0) for ln in table_rows]
    assert listed == TUTORIALS, f"{page} must list every tutorial once, in order"
    assert tn.TIME_HEADER in text and tn.MARKER in text
    assert not re.search(r"FAST ~ ?\d", text), f"{page} has a hand-copied FAST time; the table column is generated"


def test_notebook_table_generation_catches_a_stale_time():
    tn = _time_notebooks()
    rows = tn.read_rows()
    text = (ROOT / "README.md").read_text()
    row = next(ln for ln in text.splitlines() if ln.startswith("| `00_quickstart.ipynb`"))
    stale = text.replace(row, row.rsplit("|", 2)[0] + "| 999 s |")
    assert stale != text and tn.update_text(stale, rows) == text
    busy = [dict(r, load_avg="9.0", cores="2") for r in rows]
    assert "while the machine ran other jobs" in tn.caption(busy)
    quiet = [dict(r, load_avg="0.5", cores="2") for r in rows]
    assert "quiet machine" in tn.caption(quiet)
    assert tn.duration(42.4) == "42 s" and tn.duration(150) == "2.5 min"


def test_make_lab_passes_ifkit_fast_to_jupyter(tmp_path):
    """`IFKIT_FAST=1 make lab` and `make lab IFKIT_FAST=1`: Jupyter (hence its kernels) sees IFKIT_FAST=1."""
    import os
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    fake = tmp_path / "bin" / "jupyter"  # stands in for .venv/bin/jupyter: prints what it was given
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "jupyter $* IFKIT_FAST=${IFKIT_FAST-unset}"\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("IFKIT_FAST", "MAKEFLAGS", "MFLAGS")}
    make = ["make", "-s", "-C", str(ROOT), "-o", "setup", "lab", f"VENV={tmp_path}"]  # -o setup: install nothing
    for extra_env, extra_args, expected in [({"IFKIT_FAST": "1"}, [], "IFKIT_FAST=1"), ({}, ["IFKIT_FAST=1"], "IFKIT_FAST=1"),
                                            ({}, [], "IFKIT_FAST=unset")]:
        done = subprocess.run(make + extra_args, env={**env, **extra_env}, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "jupyter lab --ip=127.0.0.1" in done.stdout and expected in done.stdout, done.stdout
        assert ("notebooks run in FAST mode" in done.stdout) == (expected == "IFKIT_FAST=1"), done.stdout


# ------------------------------------------------------------- numbers in the detection and relabel sentences

SETTINGS_40 = [("symmetric", 0.4), ("asymmetric", 0.4)]
PAPER_CLASSIC = ["tracin", "if-lissa", "datainf"]  # the classic estimators the paper's detection table reports


@pytest.fixture(scope="module")
def detection() -> pd.DataFrame:
    df = pd.read_csv(ROOT / "results" / "detection.csv")
    return df[(df.dataset == "fashion") & (df.model == "mlp")]


def _printed(aucs: pd.Series, method: str, setting) -> float:
    return round(aucs[(method, *setting)], 3)  # the mean over seeds as the tables print it


def _lead_points(aucs, rivals: list[str]) -> list[float]:
    """VM's and FVM's lead over the best of ``rivals``, AUC points, from the printed means (as a reader would)."""
    return [round(100 * (_printed(aucs, m, s) - max(_printed(aucs, r, s) for r in rivals)), 1)
            for m in ("vm", "fvm") for s in SETTINGS_40]


def _claims(aucs, detection) -> dict[str, tuple[str, ...]]:
    """{regex with groups: the strings those groups must read}, each computed from results/*.csv."""
    paired = detection.pivot_table(index=["noise", "rate", "seed"], columns="method", values="auc")
    gap = (paired["vm-best-val"] - paired["cleanlab"])  # ifkit.clean minus cleanlab, paired by seed
    gap_mean = gap.groupby(level=["noise", "rate"]).mean()
    relabel = pd.read_csv(ROOT / "results" / "relabel.csv")
    relabel = relabel[(relabel.dataset == "fashion") & (relabel.model == "mlp")].groupby(["method", "noise", "rate"])[
        ["relabel_acc", "clean_bound"]].mean()
    # the networks of the main table's rows; the fair-baseline rows (added later) retrained them, equal up to the
    # early checkpoints but not bit for bit at the end of training (RESULTS.md)
    first = detection[~detection.method.isin(FAIR)]
    per_seed = first.groupby(["noise", "rate", "seed"])[["test_acc", "early_test_acc"]].first()
    per_setting = per_seed.groupby(level=["noise", "rate"]).mean()
    both = [_printed(aucs, m, s) for m in ("vm", "fvm") for s in COLUMNS]
    fvm_lead = [round(100 * (_printed(aucs, "fvm", s) - _printed(aucs, "vm", s)), 1) for s in COLUMNS]
    lead = _lead_points(aucs, PAPER_CLASSIC)
    lead_ekfac = _lead_points(aucs, ["ekfac"])
    span = lambda xs, fmt: (fmt.format(min(xs)), fmt.format(max(xs)))  # noqa: E731
    return {
        r"VM/FVM are\s+([\d.]+)-([\d.]+) AUC points above the best of\s+TracIn, LiSSA and DataInf": span(lead, "{:.1f}"),
        r"VM/FVM lead it by ([\d.]+)-([\d.]+) points": span(lead_ekfac, "{:.1f}"),
        r"FVM is ahead of VM by ([\d.]+)-([\d.]+) points": span(fvm_lead, "{:.1f}"),
        r"neither\s+VM nor FVM reaches the paper's (0\.95)[^(]*\(([\d.]+)-([\d.]+)\)":
            ("0.95", *span(both, "{:.3f}")) if max(both) < 0.95 else ("VM/FVM reach 0.95",),
        r"fits at least ([\d.]+)% of the\s+flipped labels": (f"{int(first.fit_flipped.min() * 1000) / 10:.1f}",),
        r"falls from ([\d.]+)-([\d.]+) at its best epoch to ([\d.]+)-([\d.]+)\)":
            (*span(per_setting.early_test_acc, "{:.2f}"), *span(per_setting.test_acc, "{:.2f}")),
        r"paired gap ([+-][\d.]+) / ([+-][\d.]+) / ([+-][\d.]+) / ([+-][\d.]+), smallest single seed ([+-][\d.]+)":
            (*(f"{gap_mean[s]:+.3f}" for s in COLUMNS), f"{gap.min():+.3f}"),
        r"relabels ([\d.]+) / ([\d.]+) of the flipped points it flags correctly \(40% symmetric / asymmetric; the "
        r"memorising model's\s+VM ([\d.]+) / ([\d.]+)\), level with the ([\d.]+) / ([\d.]+)":
            (*(f"{relabel.relabel_acc[('vm-best-val', *s)]:.3f}" for s in SETTINGS_40),
             *(f"{relabel.relabel_acc[('vm', *s)]:.2f}" for s in SETTINGS_40),
             *(f"{relabel.clean_bound[('vm-best-val', *s)]:.3f}" for s in SETTINGS_40)),
        r"([\d,]+) training images with\s+injected noise, (\d+) clean validation images":
            (f"{detection.n_train.unique().item():,}", f"{detection.n_val.unique().item()}"),
        r"ROC AUC, mean over (\d+) seeds": (str(detection.seed.nunique()),),
    }


def test_detection_sentences_match_results_csv(aucs, detection):
    """Every number in the detection/relabel sentences of README.md and RESULTS.md is recomputed from the CSVs."""
    claims = _claims(aucs, detection)
    found = set()
    for page in ["README.md", "RESULTS.md"]:
        text = (ROOT / page).read_text()
        for pattern, expected in claims.items():
            for match in re.finditer(pattern, text):
                found.add(pattern)
                assert match.groups() == expected, f"{page}: {match.group(0)!r} should read {expected}"
    missing = [p for p in claims if p not in found]
    assert not missing, f"sentences no longer found (reworded? update this test with them): {missing}"
    # The qualitative claims beside those numbers.
    assert all(_printed(aucs, "fvm", s) > _printed(aucs, "vm", s) for s in COLUMNS), "FVM ahead of VM everywhere"
    paired = detection.pivot_table(index=["noise", "rate", "seed"], columns="method", values="auc")
    assert (paired["vm-best-val"] > paired["cleanlab"]).all(), "ifkit.clean ahead of cleanlab on every seed"
    readme = (ROOT / "README.md").read_text()
    assert "FVM is ahead of VM on every setting" in readme and re.search(r"EK-FAC,\s+not in the paper's table", readme)


def test_readme_detection_table_has_ekfac(aucs):
    table = _detection_table((ROOT / "README.md").read_text())
    assert "ekfac" in table and ("ekfac", "symmetric", 0.4) in aucs.index


# ------------------------------------------------------------------------------------- the generation table

def test_readme_generation_table_matches_results_csv():
    """README's generation table: "AUC / recall" in percent, means over seeds, one decimal, from generation.csv."""
    gen = pd.read_csv(ROOT / "results" / "generation.csv")
    means = gen[gen["mode"] == "full"].groupby(["task", "variant", "method"])[["auc", "recall"]].mean() * 100
    lines = (ROOT / "README.md").read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| task | variant | graddot |"))
    methods = [c.replace("*", "").lower() for c in _cells_of(lines[start])[2:-1]]
    checked = 0
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        task, variant, *cells = _cells_of(line)
        for method, cell in zip(methods, cells):
            auc, recall = (float(v) for v in cell.split("/"))
            expected = means.loc[(task, variant, method)].round(1)
            assert (auc, recall) == (expected.auc, expected.recall), (task, variant, method, cell)
            checked += 1
    # protocol, its LoRA-initialisation control and harder for both text tasks, protocol and harder for images
    assert checked == 8 * 7, checked
    # "for text TracIn leads (AUC 86 sentence, 80 math; first on every one of 5 seeds, ahead of DataInf by 13.8
    # [10.7, 16.9] and 9.5 [3.9, 15.1] points, ...), ..., with DataInf, LiSSA, graddot and VM/FVM at 68-72"
    from ifkit.experiments import generation_tables as T

    text = " ".join(" ".join(lines).split())
    tracin = [f"{means.auc[(t, 'harder', 'tracin')]:.0f}" for t in ("sentence", "math")]
    leads = [T.leader(gen, t) for t in ("sentence", "math")]
    assert all(w["best"] == "tracin" and w["first_on"] == w["n"] for w in leads)
    margins = [dict(w["versus"])["datainf"] for w in leads]
    assert (f"TracIn leads (AUC {tracin[0]} sentence, {tracin[1]} math; first on every one of {leads[0]['n']} seeds, "
            "ahead of DataInf by " + " and ".join(f"{100 * m['diff']:.1f} [{100 * m['lo']:.1f}, {100 * m['hi']:.1f}]"
                                                  for m in margins) + " points") in text
    assert all(m["lo"] > 0 for m in margins) and leads[0]["n"] == leads[1]["n"]
    assert f"(text: {T.seeds_of(T.text_rows(gen))}, each with its own pretrained base" in text
    rest = [means.auc[(t, "harder", m)] for t in ("sentence", "math")
            for m in ("datainf", "if-lissa", "graddot", "vm", "fvm")]
    assert f"VM/FVM at {min(rest):.0f}-{max(rest):.0f}" in text
    # "without any fine-tuning (the LoRA-initialisation control) DataInf already reaches AUC 97 sentence, 95 math"
    init = [f"{means.auc[(t, 'protocol-init', 'datainf')]:.0f}" for t in ("sentence", "math")]
    assert f"DataInf already reaches AUC {init[0]} sentence, {init[1]} math" in text


def _cells_of(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_notebooks_readme_links_resolve():
    test_relative_links_resolve("notebooks/README.md")


def test_notebooks_quote_no_hand_copied_run_time():
    """Run times live in results/notebook_times.csv and the generated tables; a notebook points there."""
    for nb in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        text = nb.read_text()
        assert not re.search(r"Run time: about", text), f"{nb.name} quotes a hand-copied run time"
        assert not re.search(r"\d+ s (under nbval|in FAST mode)", text), f"{nb.name} quotes a hand-copied run time"
