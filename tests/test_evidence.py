"""The recommended score is chosen by a rule over results/detection.csv: the rule on a table whose answer is known,
and RESULTS.md's generated section equal to what the rule says about the committed CSV."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from ifkit.experiments import evidence as E

ROOT = Path(__file__).resolve().parents[1]


def _table(aucs: dict[tuple, dict[str, list[float]]]) -> pd.DataFrame:
    """Rows of detection.csv from {setting: {method: [auc per seed]}}."""
    rows = []
    for (dataset, model, noise, rate), methods in aucs.items():
        for method, values in methods.items():
            rows += [dict(dataset=dataset, model=model, noise=noise, rate=rate, seed=seed, method=method, auc=v)
                     for seed, v in enumerate(values)]
    return pd.DataFrame(rows)


A, B = ("digits", "mlp", "symmetric", 0.3), ("mixture", "cnn", "asymmetric", 0.3)
SCORES = ("x", "y", "z")


def test_the_rule_picks_the_score_ahead_everywhere_with_its_worst_margin():
    df = _table({A: {"x": [0.9, 0.92, 0.94], "y": [0.88, 0.9, 0.91], "z": [0.5, 0.5, 0.5]},
                 B: {"x": [0.8, 0.8, 0.8], "y": [0.81, 0.75, 0.75], "z": [0.7, 0.7, 0.7]}})
    best, margin, worst = E.winner(df, SCORES)
    # x - y: A 0.92 - 0.8967 = 0.0233, B 0.8 - 0.77 = 0.03 -> worst margin 0.0233
    assert best == "x" and margin == pytest.approx(0.92 - (0.88 + 0.9 + 0.91) / 3)
    assert worst["z"] < worst["y"] < 0
    pairs = E.paired(df, "x", ("y", "z"), SCORES)
    assert pairs.loc[(*B, "y"), "wins"] == pytest.approx(2 / 3)  # seed 0: y ahead by 0.01
    assert pairs.loc[(*A, "y"), "diff"] == pytest.approx((0.02 + 0.02 + 0.03) / 3)
    assert pairs.loc[(*A, "z"), "wins"] == 1.0 and pairs.loc[(*A, "y"), "seeds"] == 3


def test_no_score_ahead_everywhere_is_said_and_settings_missing_a_score_are_left_out():
    df = _table({A: {"x": [0.9, 0.9], "y": [0.8, 0.8], "z": [0.5, 0.5]},
                 B: {"x": [0.7, 0.7], "y": [0.8, 0.8], "z": [0.5, 0.5]},
                 ("fashion", "mlp", "hard", 0.4): {"x": [0.1], "y": [0.9]}})  # no z: not compared
    best, margin, _ = E.winner(df, SCORES)
    assert best in ("x", "y") and margin == pytest.approx(-0.1)
    assert len(E.mean_table(df, SCORES)) == 2


def test_results_md_section_is_generated_from_the_committed_csv():
    text = (ROOT / "RESULTS.md").read_text()
    assert E.BEGIN in text and E.END in text, "RESULTS.md lost its generated evidence section"
    section = text[text.index(E.BEGIN):text.index(E.END) + len(E.END)] + "\n"
    expected = E.markdown(pd.read_csv(ROOT / "results" / "detection.csv"))
    assert section == expected, "RESULTS.md is stale: run `python -m ifkit.experiments.evidence`"
    best, margin, _ = E.winner(pd.read_csv(ROOT / "results" / "detection.csv"))
    assert f"**{best}" in section and f"{abs(margin):.3f}" in section


def test_readme_evidence_sentences_match_the_csv():
    """README's 'Which score, by evidence' paragraph: every number recomputed from results/detection.csv."""
    import re

    df = pd.read_csv(ROOT / "results" / "detection.csv")
    text = " ".join((ROOT / "README.md").read_text().split())
    best, margin, _ = E.winner(df)
    o = E.overall(E.paired(df))

    def ov(rival):
        return (f"{o.loc[rival, 'diff']:+.3f}", str(int(o.loc[rival, "ahead"])), str(int(o.loc[rival, "seeds"])))

    claims = {
        r"Over all (\d+) settings the score with the best worst-case margin is \*\*(\S+)\*\*":
            (str(len(E.mean_table(df, E.CANDIDATES))), best),
        r"(ahead of every other score in every setting by at least|trails the best score by at most) ([\d.]+) AUC":
            ("ahead of every other score in every setting by at least" if margin > 0 else
             "trails the best score by at most", f"{abs(margin):.3f}"),
        r'ahead of VM at the same checkpoint \(`ifkit.clean\(score="vm"\)`\) by' r" ([+-][\d.]+) on average, on (\d+) of (\d+)":
            ov("vm-best-val"),
        r"of cleanlab given S_val by ([+-][\d.]+) on average, on (\d+) of (\d+)": ov("cleanlab-sval"),
        r"of the S_val-only model by ([+-][\d.]+) on average, on (\d+) of (\d+)": ov("loss-sval"),
    }
    for pattern, expected in claims.items():
        match = re.search(pattern, text)
        assert match, f"README lost the sentence {pattern!r} (reworded? update this test)"
        assert match.groups() == expected, f"README: {match.group(0)!r} should read {expected}"


def test_paper_md_counts_the_settings_where_the_loss_at_theta_tilde_beats_vm():
    df = pd.read_csv(ROOT / "results" / "detection.csv")
    means = E.mean_table(df, E.CANDIDATES)
    wins, n = int((means["loss-best-val@theta~"] > means["vm-best-val"]).sum()), len(means)
    text = " ".join((ROOT / "docs" / "PAPER.md").read_text().split())
    assert f"better still on {wins} of the {n} settings" in text, (wins, n)
