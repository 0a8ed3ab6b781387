"""benchmarks/compare_libraries.py: ifkit against captum and dattri.

The first half needs neither library (the project's own environment does not install them): the pure helpers,
the CSV schema, and the driver's "not installed" path. The second half is skipped unless captum / dattri are
importable (``make bench-compare`` builds .venv-compare with both) and then genuinely compares scores on a
small problem: the same formula must give the same numbers.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tolerances import EXTREME_EIG_ABS, LIBRARY_FLOAT32_EIG, LIBRARY_SAME, LIBRARY_SOLVE

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "compare_libraries.py"
CSV = ROOT / "results" / "bench_compare.csv"


def _load():
    spec = importlib.util.spec_from_file_location("compare_libraries", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["compare_libraries"] = mod  # dataclasses resolve their module by name
    spec.loader.exec_module(mod)
    return mod


cl = _load()


# ---------------------------------------------------------------------------------------------------------------
# Pure helpers: no captum / dattri needed
# ---------------------------------------------------------------------------------------------------------------


def test_sign_alignment_negates_and_puts_training_last():
    # a library's (n_train=3, n_test=2) "proponent" scores: positive = helpful
    raw = torch.tensor([[1.0, 2.0], [-3.0, 0.5], [0.0, -1.0]])
    out = cl.to_ifkit_convention(raw, train_axis=0)
    assert out.shape == (2, 3)  # (n_queries, n_train), like ifkit.pairwise
    assert torch.equal(out, -raw.T.double())  # positive = harmful, ifkit's convention
    # captum's aggregate = SUM over 4 test points, one row: / n_val gives the mean-gradient score
    agg = torch.tensor([[4.0, -8.0, 2.0]])
    score = cl.to_ifkit_convention(agg, train_axis=1, scale=1 / 4, score=True)
    assert score.shape == (3,) and torch.allclose(score, torch.tensor([-1.0, 2.0, -0.5], dtype=torch.float64))
    with pytest.raises(ValueError, match="one query row"):
        cl.to_ifkit_convention(raw, train_axis=0, score=True)


def test_within_repeat_ratio_is_the_median_of_paired_ratios():
    # repeat 2 ran during a slow spell for both sides: its ratio is still 2
    assert cl.within_repeat_ratio([2.0, 20.0, 3.0], [1.0, 10.0, 1.0]) == 2.0
    # not the ratio of the medians (3 / 1 = 3 here)
    assert cl.within_repeat_ratio([3.0, 1.0, 8.0], [1.0, 1.0, 2.0]) == 3.0
    assert cl.within_repeat_ratio([1.0, 3.0], [1.0, 1.0]) == 2.0  # even count: mean of the middle two
    with pytest.raises(ValueError):
        cl.within_repeat_ratio([1.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        cl.within_repeat_ratio([], [])


def test_agreement():
    a = torch.arange(10.0)
    assert cl.agreement(a, 3 * a + 1) == pytest.approx((1.0, 1.0))
    p, s = cl.agreement(a, a**3)  # monotone but not linear: Spearman 1, Pearson below
    assert s == pytest.approx(1.0) and p < 0.95
    assert cl.agreement(a, -a) == pytest.approx((-1.0, -1.0))
    assert all(math.isnan(v) for v in cl.agreement(a, torch.ones(10)))  # constant: undefined
    assert all(math.isnan(v) for v in cl.agreement(a, a.clone().index_fill_(0, torch.tensor([3]), float("nan"))))
    assert cl.agreement(np.eye(3), np.eye(3))[0] == pytest.approx(1.0)  # matrices are flattened
    with pytest.raises(ValueError):
        cl.agreement(a, a[:5])


def test_extreme_eigenvalues_and_hessian_damping():
    d = torch.linspace(-1.5, 12.0, 200)
    lo, hi = cl.extreme_eigenvalues(lambda v: d * v, 200, steps=60)
    assert lo == pytest.approx(-1.5, abs=EXTREME_EIG_ABS) and hi == pytest.approx(12.0, abs=EXTREME_EIG_ABS)
    assert cl.hessian_damping(-1.35) == 3  # 2 x 1.35 = 2.7, rounded up to one significant figure
    assert cl.hessian_damping(-0.04) == pytest.approx(0.08)
    assert cl.hessian_damping(0.5) == cl.DAMPING  # positive definite already: the usual damping
    assert cl.hessian_damping(-1.35) + (-1.35) > 0


def test_bias_layout_round_trip():
    # one Linear(3 -> 2) with bias, one Linear(2 -> 4) without: [flat W, b] <-> [W_o | b_o] rows
    shapes = [(torch.Size([2, 3]), True), (torch.Size([4, 2]), False)]
    W, b, W2 = torch.arange(6.0).reshape(2, 3), torch.tensor([10.0, 11.0]), torch.arange(8.0)
    flat = torch.cat([W.flatten(), b, W2]).unsqueeze(0)
    rows = cl._layout(flat, shapes, to_rows=True)
    assert rows[0, :8].tolist() == [0, 1, 2, 10, 3, 4, 5, 11]  # row o is W[o] followed by b[o]
    assert torch.equal(rows[0, 8:], W2)  # no bias: unchanged
    assert torch.equal(cl._layout(rows, shapes, to_rows=False), flat)


def test_pairs_are_unique_and_documented():
    ps = cl.pairs()
    assert len({p.key for p in ps}) == len(ps)
    assert {p.library for p in ps} == set(cl.LIBRARIES) and {p.mode for p in ps} == {"score", "pairwise"}
    for p in ps:
        assert p.max_n is None or p.skip_reason  # a skipped size says why
    # every library runner that maps a formula documents the mapping
    for fn in (cl._captum_tracin, cl._captum_naive_if, cl._dattri_tracin, cl._dattri_if, cl._dattri_ekfac,
               cl._pydvl_if):
        assert "->" in (fn.__doc__ or "")


def test_driver_without_the_libraries_writes_skip_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(cl, "installed", lambda library: False)
    out = tmp_path / "cmp.csv"
    assert cl.main(out, sizes=(64,), progress=False) == 0
    df = pd.read_csv(out)
    assert list(df.columns) == cl.COLUMNS
    assert len(df) == len(cl.pairs()) and df["seconds"].isna().all()
    assert df["note"].str.endswith("is not installed").all()


def test_workloads_keep_each_others_rows(tmp_path):
    """The fmnist4k workload is the peers' scale; rewriting one workload's rows keeps the other's."""
    cfg = cl.config(False, "fmnist4k")
    assert cfg["sizes"] == (4_000,) and cfg["n_val"] == 500 and cfg["data"] == "fashion-mnist"
    assert 784 * 64 + 64 + 64 * 10 + 10 == 50_890  # the 784-64-10 MLP of that workload
    out = tmp_path / "cmp.csv"
    bench_row = dict(library="dattri", method="m", ifkit_method="graddot", mode="score", n_train=8, note="")
    new_row = dict(bench_row, n_train=4000, note="machine load 1.0 -> 1.0")
    cl._write([bench_row, *cl._tagged([new_row], "fmnist4k")], out)
    kept = cl._other_workloads(out, "fmnist4k")
    assert [r["n_train"] for r in kept] == [8]
    assert [r["n_train"] for r in cl._other_workloads(out, "bench")] == [4000]
    assert pd.read_csv(out)["note"].fillna("").iloc[1] == "workload fmnist4k; machine load 1.0 -> 1.0"


def test_committed_results_schema():
    if not CSV.is_file():
        pytest.skip("results/bench_compare.csv not generated (make bench-compare)")
    df = pd.read_csv(CSV)
    assert list(df.columns) == cl.COLUMNS
    assert set(df["library"]) <= set(cl.LIBRARIES) and set(df["mode"]) <= {"score", "pairwise"}
    done = df[df["seconds"].notna()]
    assert len(done) > 0
    assert (done["seconds"] > 0).all() and (done["ifkit_seconds"] > 0).all() and (done["ratio"] > 0).all()
    assert done["pearson"].between(-1, 1).all() and done["spearman"].between(-1, 1).all()
    assert (df.loc[df["seconds"].isna(), "note"].str.len() > 0).all()  # an unmeasured row says why
    # the gradient-dot-product pairs compute the identical formula: they must agree
    exact = done[done["ifkit_method"].isin(["graddot", "tracin"]) & ~done["method"].str.contains("projection")]
    assert len(exact) > 0 and (exact["pearson"] > 0.9999).all()


# ---------------------------------------------------------------------------------------------------------------
# Real comparisons: only where captum / dattri are installed
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A 784-16-10 MLP trained for 3 epochs on 96 of bench's points, 12 validation points."""
    if not (importlib.util.find_spec("captum") or importlib.util.find_spec("dattri")):
        pytest.skip("neither captum nor dattri is installed")
    tmp = tmp_path_factory.mktemp("cmp")
    return cl.load_setup(cl.prepare(96, tmp, n_val=12, hidden=(16,), epochs=3))


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float) -> bool:
    return bool(((a - b).norm() / a.norm()) < rtol)


CAPTUM = ["captum:TracInCP (1 ckpt):graddot:score", "captum:TracInCP (3 ckpts):tracin:score",
          "captum:TracInCP (1 ckpt):graddot:pairwise", "captum:TracInCP (3 ckpts):tracin:pairwise"]


@pytest.mark.parametrize("key", CAPTUM)
def test_captum_tracin_matches_ifkit(small, key):
    pytest.importorskip("captum")
    pair = cl.pair_by_key(key)
    a, b = pair.run_ifkit(small), pair.run_library(small)
    assert a.shape == b.shape
    assert _close(a, b, LIBRARY_SAME)  # same numbers: the sign and the sum-over-queries scaling are right


def test_captum_naive_influence_matches_ifkit_exact(small):
    pytest.importorskip("captum")
    pair = cl.pair_by_key("captum:NaiveInfluenceFunction (output layer):if-exact (output layer):pairwise")
    a, b = pair.run_ifkit(small), pair.run_library(small)
    assert a.shape == (12, 96) == b.shape
    assert _close(a, b, LIBRARY_FLOAT32_EIG)  # captum: float32 eigendecomposition of the summed-loss Hessian
    assert cl.agreement(a, b)[0] > 0.9999


DATTRI_EXACT = ["dattri:TracInAttributor (1 ckpt):graddot:score", "dattri:TracInAttributor (3 ckpts):tracin:score",
                "dattri:TracInAttributor (1 ckpt):graddot:pairwise",
                "dattri:TracInAttributor (3 ckpts):tracin:pairwise",
                "dattri:IFAttributorExplicit (output layer):if-exact (output layer):score",
                "dattri:IFAttributorCG:if-cg (Hessian):score", "dattri:IFAttributorDataInf:datainf:score"]


@pytest.mark.parametrize("key", DATTRI_EXACT)
def test_dattri_matches_ifkit(small, key):
    pytest.importorskip("dattri")
    pair = cl.pair_by_key(key)
    a, b = pair.run_ifkit(small), pair.run_library(small)
    assert a.shape == b.shape
    assert _close(a, b, LIBRARY_SOLVE)


def test_dattri_lissa_agrees_up_to_sampling(small):
    pytest.importorskip("dattri")
    pair = cl.pair_by_key("dattri:IFAttributorLiSSA:if-lissa (Hessian):score")
    a, b = pair.run_ifkit(small), pair.run_library(small)
    assert cl.agreement(a, b)[0] > 0.99  # both draw their own mini-batches (here: the whole set, 96 < 512)


def test_pydvl_cg_matches_ifkit(small):
    pytest.importorskip("pydvl")
    pair = cl.pair_by_key("pydvl:CgInfluence:if-cg (Hessian):score")
    a, b = pair.run_ifkit(small), pair.run_library(small)
    assert a.shape == b.shape
    assert _close(a, b, LIBRARY_SOLVE)  # S_val as one test point: the same single solve, sign and scale


def test_pydvl_lissa_agrees_up_to_sampling(small):
    pytest.importorskip("pydvl")
    pair = cl.pair_by_key("pydvl:LissaInfluence:if-lissa (Hessian):score")
    a, b = pair.run_ifkit(small), pair.run_library(small)
    assert cl.agreement(a, b)[0] > 0.99


def test_dattri_default_tracin_projects(small):
    pytest.importorskip("dattri")
    pair = cl.pair_by_key("dattri:TracInAttributor (1 ckpt, default 512-d projection):graddot:score")
    a, b = pair.run_ifkit(small), pair.run_library(small)
    r = cl.agreement(a, b)[0]
    assert 0.5 < r < 0.99999  # a random projection: close, not equal


def test_dattri_ekfac_defects_and_patch():
    """dattri 0.3.0's EK-FAC differs from EK-FAC by two defects; with _patch_dattri_ekfac it matches ifkit's
    empirical-Fisher EK-FAC to float64 rounding, with and without biases."""
    pytest.importorskip("dattri")
    from dattri.algorithm import IFAttributorEKFAC
    from dattri.task import AttributionTask

    from ifkit.core import func
    from ifkit.curvature import kfac

    for bias in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(5, 4, bias=bias), torch.nn.Tanh(),
                                    torch.nn.Linear(4, 3, bias=bias)).double()
        X, y = torch.randn(200, 5, dtype=torch.float64), torch.randint(0, 3, (200,))
        task = AttributionTask(loss_func=cl._dattri_loss(model, (5,)), model=model, checkpoints=model.state_dict())
        prob = func.make_problem(model)
        V = torch.randn(3, prob.p, dtype=torch.float64)
        ref = kfac.fit(prob, X, y, fisher="empirical").solve(V.T, 0.1).T

        def dattri_ifvp(patched: bool) -> torch.Tensor:
            undo = cl._patch_dattri_ekfac() if patched else (lambda: None)
            try:
                att = IFAttributorEKFAC(task=task, damping=0.1)
                att.cache(cl._loader(X, y, 200))
                return att.transform_test_rep(0, V)
            finally:
                undo()

        shipped, fixed = dattri_ifvp(False), dattri_ifvp(True)
        assert ((shipped - ref).norm() / ref.norm()) > 0.05  # the transposed eigenbasis (and bias layout)
        assert ((fixed - ref).norm() / ref.norm()) < 1e-10
    assert IFAttributorEKFAC.transform_test_rep.__qualname__.startswith("IFAttributorEKFAC")  # patch undone
