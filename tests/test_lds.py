"""Counterfactual tests: ifkit.metrics.lds on cases with a known answer, and the gen-lds experiment (refits with
gen-text's recipe, removal sets, the resumable runner and its table)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr
from tolerances import EXACT

from ifkit.experiments import EXPERIMENTS, META, discover
from ifkit.experiments import gen_lds as L
from ifkit.experiments import gen_text as G
from ifkit.experiments.cache import Cache
from ifkit.metrics import lds, lds_difference, mean_interval
from ifkit.results import SCHEMAS

# ---------------------------------------------------------------------------------------------- the metric


def _additive(n=40, q=6, m=60, noise=0.0, seed=0):
    """A datamodel that is exactly linear: loss[m, q] = sum_{i in S_m} w[q, i] (+ noise)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(q, n))  # (Q, n)
    S = L.subset_masks(n, m, 0.5, seed)  # (M, n)
    return w, S, S @ w.T + noise * rng.normal(size=(m, q))  # (M, Q)


def test_lds_is_one_for_the_true_linear_scores_zero_for_random_minus_one_reversed():
    w, S, losses = _additive()
    exact = lds(w, S, losses, n_boot=200)
    assert exact.lds == pytest.approx(1.0) and exact.low == pytest.approx(1.0)
    assert lds(-w, S, losses, n_boot=0).lds == pytest.approx(-1.0)
    rand = lds(np.random.default_rng(1).normal(size=w.shape), S, losses, n_boot=200)
    assert abs(rand.lds) < 0.15 and rand.low < 0 < rand.high, rand


def test_lds_per_query_is_scipys_spearman_and_the_interval_covers_it():
    w, S, losses = _additive(noise=3.0)
    r = lds(w, S, losses, n_boot=300, seed=2)
    pred = S @ w.T
    by_scipy = [spearmanr(pred[:, q], losses[:, q])[0] for q in range(len(w))]
    np.testing.assert_allclose(r.per_query, by_scipy, **EXACT)
    assert r.low < r.lds < r.high and 0.3 < r.lds < 0.95, r
    wide = lds(w, S[:15], losses[:15], n_boot=300, seed=2)  # fewer subsets: a wider interval
    assert wide.high - wide.low > r.high - r.low


def test_lds_of_exact_influence_on_ridge_regression_is_near_one():
    """A real model: ridge regression refit in closed form on each subset; the exact influence of up-weighting
    z_i on the query loss, -g_q^T H^-1 g_i (docs/PAPER.md, Eq. 6; the kit's sign: negative = helpful), predicts
    the refits' query losses (LDS ~1); the opposite sign gives ~-1."""
    rng = np.random.default_rng(0)
    n, d, lam = 60, 5, 1e-1
    X, Xq = rng.normal(size=(n, d)), rng.normal(size=(8, d))
    beta = rng.normal(size=d)
    y, yq = X @ beta + rng.normal(size=n), Xq @ beta + rng.normal(size=8)

    def fit(keep):  # argmin 1/|S| sum_S (x^T b - y)^2 / 2 + lam |b|^2 / 2
        Xs, ys = X[keep], y[keep]
        return np.linalg.solve(Xs.T @ Xs / len(ys) + lam * np.eye(d), Xs.T @ ys / len(ys))

    b = fit(np.ones(n, bool))
    H = X.T @ X / n + lam * np.eye(d)
    g_train, g_query = X * (X @ b - y)[:, None], Xq * (Xq @ b - yq)[:, None]  # (n, d), (Q, d)
    P = -g_query @ np.linalg.solve(H, g_train.T)  # (Q, n)
    S = L.subset_masks(n, 60, 0.5, 0)
    losses = np.stack([(Xq @ fit(keep) - yq) ** 2 / 2 for keep in S])  # (M, Q)
    assert lds(P, S, losses, n_boot=100).lds > 0.8
    assert lds(-P, S, losses, n_boot=0).lds < -0.8


def test_lds_rejects_mismatched_shapes_and_too_few_subsets():
    w, S, losses = _additive()
    with pytest.raises(ValueError, match=r"\(M, Q\)"):
        lds(w, S, losses.T)
    with pytest.raises(ValueError, match="at least 3"):
        lds(w, S[:2], losses[:2])


def test_mean_interval():
    assert mean_interval([0.5]) == (0.5, 0.5, 0.5)
    m, lo, hi = mean_interval(np.arange(10.0), n_boot=500)
    assert m == 4.5 and lo < m < hi and hi - lo < 6


def test_subset_masks_are_seeded_halves():
    S = L.subset_masks(11, 7, 0.5, 3)
    assert S.shape == (7, 11) and (S.sum(1) == 6).all()
    assert (S == L.subset_masks(11, 7, 0.5, 3)).all() and not (S == L.subset_masks(11, 7, 0.5, 4)).all()


# ------------------------------------------------------------------------------------------ the experiment
TINY = replace(G.FAST, per_class=6, n_val_per_class=2, d_model=16, d_ff=32, pretrain_steps=(3, 3), pretrain_pool=64,
               epochs=2, n_checkpoints=2, lora_rank=1, methods=("graddot", "vm"), flat_steps=3)
CFG = L.Config(text=TINY, n_subsets=4, ks=(2,), removal_queries=2, n_boot=50)


@pytest.fixture(scope="module")
def setting():
    return L.prepare("sentence", "harder", 0, TINY)


def test_a_refit_on_every_point_is_gen_texts_fine_tuned_model(setting):
    s = setting
    full = L.refit(s.base, s.data, np.ones(len(s.data.X_train), bool), TINY, 0, s.grad_loss)
    torch.testing.assert_close(full, L.query_losses(s.run.model, s.data, s.grad_loss), rtol=0, atol=0)
    half = L.refit(s.base, s.data, L.subset_masks(len(s.data.X_train), 1, 0.5, 0)[0], TINY, 0, s.grad_loss)
    assert not torch.equal(half, full)


def test_removal_sets_take_the_most_helpful_and_random_same_class(setting):
    s = setting
    sets = L.removal_sets(s.tables, s.data, 1, 3, 0)
    P = s.tables["graddot"][1]
    assert set(sets["graddot"]) == set(np.argsort(P.numpy(), kind="stable")[:3])
    assert (s.data.cls_train[sets["random"]] == s.data.cls_val[1]).all() and len(set(sets["random"])) == 3
    with pytest.raises(ValueError, match="pick k <="):
        L.removal_sets(s.tables, s.data, 1, 5, 0)


def test_gen_lds_writes_checked_rows_and_resumes_from_its_cache(tmp_path):
    cache = Cache(tmp_path, "gen-lds", enabled=True)
    df = L.measure(CFG, [0], tmp_path, tasks=("sentence",), progress=False, mode="test", cache=cache)
    assert len(df) == 2 * 2 * 2  # variants x methods x (lds, removal k=2)
    lds_rows = df[df.measure == "lds"]
    assert (lds_rows.n_subsets == 4).all() and lds_rows.value.between(-1, 1).all()
    assert (lds_rows.low <= lds_rows.value).all() and (lds_rows.value <= lds_rows.high).all()
    rem = df[df.measure == "removal"]
    assert (rem.n_queries == 2).all() and np.allclose(rem.value, rem.increase - rem.random_increase)
    assert set(df.columns) >= set(SCHEMAS[L.FILENAME].required) | {"auc", "alpha", "mode"}
    misses = cache.misses
    (tmp_path / L.FILENAME).unlink()  # the table is lost, the cached refits are not: same rows, no retraining
    cache2 = Cache(tmp_path, "gen-lds", enabled=True)
    again = L.measure(CFG, [0], tmp_path, tasks=("sentence",), progress=False, mode="test", cache=cache2)
    assert cache2.misses == 0 and cache2.hits >= misses
    cols = ["task", "variant", "method", "measure", "k", "value", "low", "high", "auc"]
    pd.testing.assert_frame_equal(again[cols], df[cols])
    assert not L.summary(df).empty


def test_gen_lds_is_registered_with_its_times():
    discover()
    assert EXPERIMENTS["gen-lds"] is L.run
    assert META["gen-lds"].parts == ("sentence", "math") and META["gen-lds"].seconds[1] <= 60


def test_removal_view_shows_the_removed_examples_and_both_losses(setting):
    from ifkit.widgets import removal_view

    s = setting
    removed = L.removal(s.base, s.data, s.tables, TINY, 0, [1], [2], s.grad_loss)
    assert set(removed.method) == {"graddot", "vm", "random"}
    line, table = removal_view(removed, s.data.text_val, s.data.text_train, s.data.cls_train, s.data.cls_val,
                               s.tables, "vm", 2)
    vm = removed.set_index("method").loc["vm"]
    assert len(table) == 2 and list(table["training example"]) == [s.data.text_train[i] for i in vm["removed"]]
    assert f"{vm['loss_after']:.4f}" in line and s.data.text_val[1] in line
    with pytest.raises(ValueError, match="no removal refit"):
        removal_view(removed, s.data.text_val, s.data.text_train, s.data.cls_train, s.data.cls_val, s.tables,
                     "tracin", 2)


# ------------------------------------------------------------------------------ RESULTS.md quotes the table
def lds_markdown(df: pd.DataFrame) -> str:
    """RESULTS.md's LDS table from results/generation_lds.csv's full-size rows (the generator's own table)."""
    from ifkit.experiments.generation_tables import lds_mean_table

    return "\n".join(lds_mean_table(df[df["mode"] == "full"]))


def test_results_md_lds_table_is_the_csvs():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    df = pd.read_csv(root / "results" / L.FILENAME)
    lds_rows = df[(df["mode"] == "full") & (df.measure == "lds")]
    assert set(lds_rows.method) == set(L.FULL.text.methods) and set(lds_rows.variant) == {"protocol", "harder"}
    assert lds_markdown(df) in (root / "RESULTS.md").read_text()


def test_lds_difference_is_paired():
    w, S, losses = _additive(noise=3.0)
    noisy = w + np.random.default_rng(5).normal(size=w.shape)  # worse scores
    d, lo, hi = lds_difference(w, noisy, S, losses, n_boot=300)
    assert d == pytest.approx(lds(w, S, losses, n_boot=0).lds - lds(noisy, S, losses, n_boot=0).lds)
    assert 0 < lo < d < hi
    assert lds_difference(w, w, S, losses, n_boot=50) == (0.0, 0.0, 0.0)


def lds_headline(df: pd.DataFrame, variant: str = "harder") -> str:
    """RESULTS.md's sentence naming the best method by LDS on ``variant`` (seed 0, full-size rows), as the
    generator writes it."""
    from ifkit.experiments.generation_tables import lds_headline as headline

    return headline(df[df["mode"] == "full"], 0, variant)


def test_results_md_names_the_best_method_by_lds_from_the_csv():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    assert lds_headline(pd.read_csv(root / "results" / L.FILENAME)) in (root / "RESULTS.md").read_text()


def test_readme_lds_sentence_is_the_csvs():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    df = pd.read_csv(root / "results" / L.FILENAME)
    rows = df[(df["mode"] == "full") & (df.measure == "lds") & (df.variant == "harder") & (df.seed == 0)]
    best = {t: rows[rows.task == t].set_index("method")["value"] for t in ("sentence", "math")}
    assert all(v.idxmax() == "tracin" for v in best.values())
    flat = rows[rows.method.isin(["vm", "fvm"])]["value"]
    assert all((v.drop(["vm", "fvm"]) > v[["vm", "fvm"]].max()).all() for v in best.values())  # VM/FVM last
    text = " ".join((root / "README.md").read_text().split())
    assert (f"TracIn is also first by LDS ({best['sentence']['tracin']:.3f} sentence, {best['math']['tracin']:.3f} "
            f"math) and VM/FVM last ({flat.min():.3f}-{flat.max():.3f})") in text
