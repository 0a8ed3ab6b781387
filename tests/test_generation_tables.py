"""RESULTS.md's "Generation (text)" tables are generated from results/generation.csv and generation_lds.csv: the
generator on tables whose answer is known, and RESULTS.md equal to what it says about the committed CSVs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ifkit.experiments import generation_tables as T

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("graddot", "tracin", "datainf")


def _gen(aucs: dict[tuple[str, str], dict[str, list[float]]]) -> pd.DataFrame:
    """generation.csv rows from {(task, variant): {method: [auc per seed]}} (recall = auc / 2, the rest fixed),
    plus an image row and a --fast row that every table must leave out."""
    rows = [dict(task=task, variant=variant, seed=seed, mode="full", method=method, auc=v, recall=v / 2,
                 recall_abs=0.25, precision5=0.5, exact_match=0.75)
            for (task, variant), methods in aucs.items() for method, values in methods.items()
            for seed, v in enumerate(values)]
    rows += [dict(task="style", variant="harder", seed=0, mode="full", method="vm", auc=0.1, recall=0.1,
                  recall_abs=0.1, precision5=0.1, exact_match=np.nan),
             dict(task="sentence", variant="harder", seed=9, mode="fast", method="graddot", auc=0.0, recall=0.0,
                  recall_abs=0.0, precision5=0.0, exact_match=0.0)]
    return pd.DataFrame(rows)


SENTENCE = {"graddot": [0.70, 0.72, 0.74], "tracin": [0.86, 0.84, 0.80], "datainf": [0.71, 0.69, 0.82]}
GEN = _gen({("sentence", "harder"): SENTENCE, ("math", "harder"): {m: [0.6 + 0.1 * i] for i, m in enumerate(METHODS)},
            ("sentence", "protocol"): {m: [0.8, 0.7, 0.9] for m in METHODS},
            ("sentence", "protocol-init"): {m: [0.9, 0.9, 0.9] for m in METHODS}})


def test_seed_lists_are_read_from_the_rows():
    assert T.seed_list([0, 1, 2, 3, 4]) == "seeds 0-4"
    assert T.seed_list([3]) == "seed 3" and T.seed_list([0, 1, 3]) == "seeds 0, 1, 3"
    assert T.seed_list([1, 0, 1]) == "seeds 0, 1"
    rows = T.text_rows(GEN)
    assert set(rows.task) == {"sentence", "math"} and (rows["mode"] == "full").all()
    assert T.seeds_of(rows[rows.variant == "harder"]) == "sentence seeds 0-2, math seed 0"
    # a task whose benchmarks have different seeds is spelled out per benchmark
    mixed = rows[~((rows.variant == "protocol") & (rows.seed == 2))]
    assert "sentence protocol seeds 0, 1" in T.seeds_of(mixed) and "sentence harder seeds 0-2" in T.seeds_of(mixed)


def test_main_table_gives_mean_and_sd_over_the_seeds_it_names():
    text = T.main_table(GEN)
    assert text.startswith(T.begin("main")) and text.endswith(T.end("main") + "\n")
    # sentence / harder / tracin: AUC 0.86, 0.84, 0.80 -> mean 83.3, sd 3.1; recall half of it
    assert "| sentence | harder | tracin | 83.3 ± 3.1 | 41.7 ± 1.5 | 25.0 | 50.0 | 75 |" in text
    assert "| math | harder | datainf | 80.0 | 40.0 | 25.0 | 50.0 | 75 |" in text  # one seed: no spread
    assert "sentence seeds 0-2, math seed 0" in text
    assert "style" not in text and "| 0.0 |" not in text  # image rows and --fast rows left out
    order = [ln.split("|")[1:4] for ln in text.splitlines() if ln.startswith("| sentence")]
    assert [o[1].strip() for o in order[:3]] == ["protocol"] * 3 and order[0][2].strip() == "graddot"


def test_control_differences_pair_the_benchmarks_by_seed():
    d = T.control_differences(GEN).set_index(["task", "method"])
    row = d.loc[("sentence", "tracin")]
    diffs = np.array([0.8, 0.7, 0.9]) - 0.9
    half = stats.t.ppf(0.975, 2) * diffs.std(ddof=1) / np.sqrt(3)
    assert row["diff"] == pytest.approx(diffs.mean()) and row["hi"] == pytest.approx(diffs.mean() + half)
    assert row["n"] == 3 and ("math", "tracin") not in d.index  # math has no control rows here
    assert f"| sentence | {100 * diffs.mean():+.1f} [{100 * (diffs.mean() - half):+.1f}, " in T.control_table(GEN)
    unpaired = GEN[~((GEN.variant == "protocol-init") & (GEN.seed == 2))]
    assert "seeds both have: sentence seeds 0, 1;" in T.control_table(unpaired)


def test_paired_table_and_leader_on_the_harder_benchmark():
    w = T.leader(GEN, "sentence")
    assert w["best"] == "tracin" and w["second"] == "datainf" and w["first_on"] == 2 and w["n"] == 3
    assert [v for v, _ in w["versus"]] == ["datainf"]  # the runner-up is DataInf: no repeat
    diffs = np.array(SENTENCE["tracin"]) - np.array(SENTENCE["datainf"])
    assert w["versus"][0][1]["diff"] == pytest.approx(diffs.mean())
    text = T.paired_table(GEN)
    assert "sentence: **tracin** (AUC 83.3, first on 2 of 3 seeds)" in text
    assert "math: **datainf** (AUC 80.0, first on 1 of 1 seeds), +10.0 over tracin (second)" in text
    assert "| sentence | datainf | " in text and "| math | tracin | -10.0 | · | +10.0 |" in text


def test_resolved_names_the_intervals_that_exclude_zero():
    df = _gen({("sentence", "harder"): {"graddot": [0.60, 0.61, 0.62], "tracin": [0.80, 0.90, 0.85],
                                        "datainf": [0.70, 0.72, 0.71], "vm": [0.60, 0.80, 0.72]}})
    d = T.harder_differences(df).set_index(["task", "method", "versus"])
    assert T.resolved(d, "sentence", "datainf") == "sentence vs datainf: tracin ahead; graddot behind; vm not resolved"
    assert "sentence vs datainf: tracin ahead" in T.paired_table(df)
    one_seed = _gen({("math", "harder"): {m: [0.5] for m in METHODS}})
    assert T.resolved(T.harder_differences(one_seed).set_index(["task", "method", "versus"]), "math", "tracin") == ""


def _lds(second_seed: str | None) -> pd.DataFrame:
    """The committed generation_lds.csv, and a second seed: the same values ("same") or the LDS negated."""
    df = pd.read_csv(ROOT / "results" / "generation_lds.csv")
    df = df[df.seed == 0]
    if second_seed is None:
        return df
    other = df.assign(seed=1)
    if second_seed == "reversed":
        other = other.assign(value=-other.value, low=-other.high, high=-other.low)
    return pd.concat([df, other])


def test_lds_section_per_seed_agreement_and_widths():
    one = T.lds_section(_lds(None))
    assert "Per seed" not in one and "sentence seed 0, math seed 0" in one
    same = T.lds_section(_lds("same"))
    assert "sentence seeds 0, 1, math seeds 0, 1" in same and "seed 1: LDS [95% interval] (rank)" in same
    assert "Order of the methods by LDS: the same on every seed in sentence protocol, sentence harder, math protocol, math harder." in same
    assert "Best by LDS on the harder benchmark (seed 1, paired 95% intervals)" in same
    flipped = T.lds_agreement(_lds("reversed"))
    assert "math harder (first: tracin / vm; Spearman correlation between the seeds -1.00)" in flipped and "the same on every seed" not in flipped
    rows = T.lds_per_seed(_lds(None))
    assert f"harder {rows[rows.variant == 'harder'].width.min():.3f}-" in T.lds_agreement(_lds(None))


def test_a_hand_edited_table_is_caught_and_rewritten(tmp_path):
    page = tmp_path / "RESULTS.md"
    shutil.copy(ROOT / "RESULTS.md", page)
    assert T.stale(page, ROOT / "results") == []
    text = page.read_text()
    head, rest = text.split(T.begin("paired"))
    page.write_text(head + T.begin("paired") + rest.replace("·", "0.0", 1))
    assert T.stale(page, ROOT / "results") == ["paired"]
    T.update(page, ROOT / "results")
    assert page.read_text() == text
    page.write_text(text.replace(T.end("lds"), ""))
    with pytest.raises(ValueError, match="add the two lines"):
        T.update(page, ROOT / "results")


def test_results_md_generation_text_sections_are_the_csvs():
    assert T.stale(ROOT / "RESULTS.md", ROOT / "results") == [], \
        "RESULTS.md is stale: run `python -m ifkit.experiments.generation_tables`"
