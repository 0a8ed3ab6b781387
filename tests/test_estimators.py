import copy

import pytest
import torch
from conftest import auc_floor
from tolerances import CG, EXACT, LISSA, LOGREG_AUC, LOO_PEARSON, LOO_SIGN_AGREEMENT, TINY_MLP_AUC

import ifkit
from ifkit import metrics
from ifkit.optim import fullbatch

PAIRWISE = ["graddot", "gradcos", "tracin", "if-exact", "if-cg", "if-lissa", "datainf", "gex"]
# Methods whose score is the (linear) mean of their pairwise table over the validation queries.
LINEAR = ["graddot", "tracin", "if-exact", "if-cg", "datainf"]


def test_methods_listed():
    for m in [
        "loss",
        "graddot",
        "gradcos",
        "tracin",
        "if-exact",
        "if-cg",
        "if-lissa",
        "datainf",
        "self-if",
        "gex",
    ]:
        assert m in ifkit.METHODS


def test_if_exact_predicts_leave_one_out(logreg):
    model, train, val, _, wd = logreg
    n = len(train[0])
    every = list(range(0, n, 10))  # 30 refits (6 of them flipped points) instead of 300: same bar, 10x faster
    predicted = -ifkit.score("if-exact", model, train, val, damping=wd)[every] / n  # eps = -1/n
    actual = fullbatch.upweight_val_change(model, train, val, indices=every, weight_decay=wd)
    assert metrics.correlation(predicted, actual)["pearson"] >= LOO_PEARSON  # measured 0.9986
    assert metrics.sign_agreement(predicted, actual) >= LOO_SIGN_AGREEMENT  # measured 1.0


@pytest.mark.parametrize("method,tol", [("if-cg", CG), ("if-lissa", LISSA)])
def test_fast_solvers_match_exact(logreg, method, tol):
    model, train, val, _, _ = logreg
    opts = dict(damping=0.1, tol=1e-10, iters=3000)  # well-conditioned: damping 0.1
    exact = ifkit.score("if-exact", model, train, val, damping=0.1)
    scale = exact.abs().max()
    torch.testing.assert_close(ifkit.score(method, model, train, val, **opts) / scale, exact / scale, **tol)


@pytest.mark.parametrize("method", ["if-cg", "if-lissa"])
def test_fast_solvers_pairwise_match_exact(logreg, method):
    model, train, val, _, _ = logreg
    queries = (val[0][:4], val[1][:4])
    exact = ifkit.pairwise("if-exact", model, train, queries, damping=0.1)
    fast = ifkit.pairwise(method, model, train, queries, damping=0.1, tol=1e-10, iters=3000)
    torch.testing.assert_close(fast / exact.abs().max(), exact / exact.abs().max(), **LISSA)


@pytest.mark.parametrize("method", LINEAR)
def test_score_is_mean_of_pairwise_over_validation(logreg, method):
    model, train, (Xv, yv), _, wd = logreg
    val = (Xv[:30], yv[:30])  # linearity holds for any query set; 30 queries keep CG's batch of columns small
    s = ifkit.score(method, model, train, val, damping=wd, tol=1e-13)
    P = ifkit.pairwise(method, model, train, val, damping=wd, tol=1e-13)
    torch.testing.assert_close(P.mean(0), s, **(CG if method == "if-cg" else EXACT))


@pytest.mark.parametrize("method", sorted(ifkit.METHODS))
def test_sign_convention_flipped_points_score_higher(logreg, method):
    model, train, val, flipped, wd = logreg
    if method in ("vm", "fvm"):
        pytest.skip("VM/FVM are tested on a network in test_flat_influence.py")
    s = ifkit.score(method, model, train, val, damping=wd)
    assert s.shape == (len(train[0]),)
    assert s[flipped].mean() > s[~flipped].mean()
    loss = ifkit.score("loss", model, train, val)
    assert metrics.auc(s, flipped) >= auc_floor(LOGREG_AUC[method], loss, flipped)


@pytest.mark.parametrize("method", PAIRWISE)
def test_duplicated_clean_point_helps_its_twin(logreg, method):
    model, (X, y), _, flipped, wd = logreg
    clean = (~flipped).nonzero()[:5, 0]  # five clean training points, each queried by its own copy
    P = ifkit.pairwise(method, model, (X, y), (X[clean], y[clean]), damping=wd)
    assert P.shape == (5, len(X))
    assert (P[torch.arange(5), clean] < 0).all()


def test_tracin_sums_checkpoints_weighted_by_learning_rate(logreg):
    model, train, val, _, wd = logreg
    cps = []
    m = copy.deepcopy(model)
    for lr in (0.5, 0.1):
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.01 * torch.randn_like(p))
        cps.append((copy.deepcopy(m.state_dict()), lr))
    expected = sum(lr * ifkit.score("graddot", _load(model, sd), train, val) for sd, lr in cps)
    torch.testing.assert_close(ifkit.score("tracin", model, train, val, checkpoints=cps), expected, **EXACT)
    lrs_given = ifkit.score("tracin", model, train, val, checkpoints=[sd for sd, _ in cps], lrs=[0.5, 0.1])
    torch.testing.assert_close(lrs_given, expected, **EXACT)


def _load(model, sd):
    m = copy.deepcopy(model)
    m.load_state_dict(sd)
    return m


def test_self_if_exact_equals_cg(logreg):
    model, (X, y), val, _, wd = logreg
    train = (X[:30], y[:30])  # one CG column per training point: 30 columns, not 300 (same solve, 15x faster)
    a = ifkit.score("self-if", model, train, val, damping=wd)
    b = ifkit.score("self-if", model, train, val, damping=wd, curvature="cg", iters=500, tol=1e-12)
    torch.testing.assert_close(b / a.max(), a / a.max(), **CG)
    assert (a > 0).all()


def test_datainf_default_damping_follows_kwon_et_al(logreg):
    model, train, val, _, _ = logreg
    auto = ifkit.score("datainf", model, train, val)
    fixed = ifkit.score("datainf", model, train, val, damping=0.5)
    assert not torch.allclose(auto, fixed)


def test_gex_is_deterministic_and_seeded(logreg):
    model, train, val, _, _ = logreg
    a = ifkit.score("gex", model, train, val, seed=1, ensemble_size=3, gex_steps=20)
    b = ifkit.score("gex", model, train, val, seed=1, ensemble_size=3, gex_steps=20)
    c = ifkit.score("gex", model, train, val, seed=2, ensemble_size=3, gex_steps=20)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a >= 0).all()


@pytest.mark.parametrize("method", ["loss", "graddot", "if-cg", "datainf", "gex", "tracin"])
def test_model_is_never_modified(tiny_mlp, method):
    model, train, val, _ = tiny_mlp
    model.train()
    before = copy.deepcopy(model.state_dict())
    flags = [p.requires_grad for p in model.parameters()]
    ifkit.score(method, model, train, val, gex_steps=5, ensemble_size=2)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert flags == [p.requires_grad for p in model.parameters()] and model.training


def test_networks_work_with_param_subset(tiny_mlp):
    model, train, val, flipped = tiny_mlp
    s = ifkit.score("if-exact", model, train, val, params=["2.weight", "2.bias"], damping=1e-3)
    loss = ifkit.score("loss", model, train, val)
    assert metrics.auc(s, flipped) >= auc_floor(TINY_MLP_AUC["if-exact last layer"], loss, flipped)


def test_bad_inputs_are_named():
    model = torch.nn.Linear(3, 2)
    X, y = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match="did you mean 'if-cg'"):
        ifkit.score("if_cg", model, (X, y), (X, y))
    with pytest.raises(TypeError, match="did you mean 'damping'"):
        ifkit.score("if-cg", model, (X, y), (X, y), dampnig=0.1)
    with pytest.raises(ValueError, match="damping"):
        ifkit.score("if-cg", model, (X, y), (X, y), damping=-1)
    with pytest.raises(ValueError, match="4 rows but targets have 3"):
        ifkit.score("graddot", model, (X, y[:3]), (X, y))
    with pytest.raises(ValueError, match="no pairwise form"):
        ifkit.pairwise("loss", model, (X, y), (X, y))


def test_dataset_inputs_are_accepted(logreg):
    model, (X, y), val, _, wd = logreg
    ds = torch.utils.data.TensorDataset(X, y)
    torch.testing.assert_close(
        ifkit.score("graddot", model, ds, val), ifkit.score("graddot", model, (X, y), val)
    )


def test_lissa_switches_to_seeded_minibatches_above_the_threshold(tiny_mlp, monkeypatch):
    """Above LISSA_FULL_MAX training points LiSSA uses mini-batch products (still bit-reproducible by seed) and
    its scores rank the points like the full-batch ones."""
    from scipy.stats import spearmanr

    from ifkit.curvature import inverse

    model, train, val, _ = tiny_mlp
    opts = dict(damping=0.1, iters=100)  # 100 Neumann terms, not 500: the ranking is settled (Spearman 0.99)
    full = ifkit.score("if-lissa", model, train, val, **opts)
    assert torch.equal(full, ifkit.score("if-lissa", model, train, val, lissa_batch="full", **opts))
    monkeypatch.setattr(inverse, "LISSA_FULL_MAX", 100)  # 200 training points are now "large"
    monkeypatch.setattr(inverse, "LISSA_AUTO_BATCH", 64)
    auto = ifkit.score("if-lissa", model, train, val, **opts)
    assert not torch.equal(auto, full)  # it did change path
    assert torch.equal(auto, ifkit.score("if-lissa", model, train, val, **opts))  # seeded: identical
    assert spearmanr(auto.numpy(), full.numpy())[0] > 0.95
    with pytest.raises(ValueError, match="lissa_batch"):
        ifkit.score("if-lissa", model, train, val, lissa_batch=-3)


def test_gradient_chunks_shrink_to_fit_the_memory_budget(tiny_mlp, monkeypatch):
    """Per-sample gradients stream in chunks of at most 256 rows, fewer when a (rows, p) block would exceed
    budget_mb / 4; the scores do not depend on the chunking."""
    from ifkit.core import grads

    assert grads.grad_chunk_rows(101_770, torch.float32, 1024.0) == 256
    assert grads.grad_chunk_rows(10_000_000, torch.float32, 1024.0) == 6
    assert grads.grad_chunk_rows(10**12, torch.float64, 1.0) == 1
    model, train, val, _ = tiny_mlp  # p = 1,210 float64 parameters
    seen = []
    real = grads.iter_grads
    # the dense path (models without per-layer factors, e.g. CNNs): Linear-layer networks stream factors instead
    monkeypatch.setattr(grads.factors, "supported", lambda *a: False)
    monkeypatch.setattr(grads, "iter_grads", lambda prob, X, y, c: seen.append(c) or real(prob, X, y, c))
    small = ifkit.score("gradcos", model, train, val, budget_mb=0.05)  # 0.05 MB / 4 / (1210 x 8 B) -> 1 row
    assert seen[-1] == 1
    default = ifkit.score("gradcos", model, train, val)
    assert seen[-1] == 256
    ifkit.score("gradcos", model, train, val, budget_mb=0.05, chunk_size=50)  # an explicit chunk_size wins
    assert seen[-1] == 50
    torch.testing.assert_close(small, default)


def test_lissa_products_have_their_own_option_and_the_old_spelling_warns(tiny_mlp):
    """if-lissa's product choice is lissa_products=; curvature="cg"/"exact" still works, with a warning naming it."""
    model, train, val, _ = tiny_mlp
    opts = dict(damping=0.1, iters=50)
    hessian = ifkit.score("if-lissa", model, train, val, lissa_products="hessian", **opts)
    with pytest.warns(DeprecationWarning, match="lissa_products='hessian'"):
        old = ifkit.score("if-lissa", model, train, val, curvature="cg", **opts)
    assert torch.equal(hessian, old)
    assert not torch.equal(hessian, ifkit.score("if-lissa", model, train, val, **opts))  # default: Gauss-Newton
    with pytest.raises(ValueError, match="lissa_products must be 'ggn' or 'hessian'"):
        ifkit.score("if-lissa", model, train, val, lissa_products="fisher", **opts)
