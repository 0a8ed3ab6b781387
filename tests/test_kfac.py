"""K-FAC / EK-FAC (ifkit.curvature.kfac) against the exact Gauss-Newton matrix, and the "ekfac" method."""

import copy

import pytest
import torch
from conftest import auc_floor
from tolerances import EXACT, SOLVE, TINY_MLP_AUC

import ifkit
from ifkit import metrics
from ifkit.core import func
from ifkit.curvature import kfac
from ifkit.models import SmallCNN

f64 = torch.float64


def exact_ggn(prob, X, y):
    G = func.ggn_vp_fn(prob, X, y)(torch.eye(prob.p, dtype=f64))  # (p, p)
    return (G + G.T) / 2


def block_diagonal(M, curv):
    """Keep only the within-layer blocks of M (what any block-diagonal approximation can match)."""
    out = torch.zeros_like(M)
    for L in curv.layers:
        s = [t for t in (L.weight, L.bias) if t is not None]
        b = slice(s[0].start, s[-1].stop)
        out[b, b] = M[b, b]
    return out


def test_kfac_is_exact_for_one_linear_layer_and_one_example():
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3).double()
    X, y = torch.randn(1, 5, dtype=f64), torch.tensor([1])
    prob = func.make_problem(model)
    curv = kfac.fit(prob, X, y, kind="kfac")
    G = exact_ggn(prob, X, y)
    torch.testing.assert_close(curv.dense(), G, **EXACT)
    # and it is the Hessian too (logistic regression: GGN = Hessian)
    torch.testing.assert_close(curv.dense(), func.hessian_exact(prob, X, y), **EXACT)
    a = torch.cat([X[0], torch.ones(1, dtype=f64)])
    torch.testing.assert_close(curv.layers[0].A, torch.outer(a, a), **EXACT)  # A = a a^T with the bias' 1


def test_kfac_is_exact_when_all_inputs_are_equal():
    # E[a a^T] (x) E[ds ds^T] = E[(a a^T) (x) (ds ds^T)] when a is constant: the factorisation is exact.
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3).double()
    X, y = torch.randn(1, 4, dtype=f64).repeat(30, 1), torch.randint(0, 3, (30,))
    prob = func.make_problem(model)
    torch.testing.assert_close(kfac.fit(prob, X, y, kind="kfac").dense(), exact_ggn(prob, X, y), **EXACT)
    torch.testing.assert_close(kfac.fit(prob, X, y, kind="ekfac").dense(), exact_ggn(prob, X, y), **EXACT)


@pytest.mark.parametrize("net", ["mlp", "cnn"])
def test_ekfac_is_closer_to_the_ggn_than_kfac(tiny_mlp, net):
    if net == "mlp":
        model, (X, y), _, _ = tiny_mlp
    else:
        torch.manual_seed(0)
        model = SmallCNN(width=2, image_size=8, activation="tanh").double()
        X, y = torch.randn(20, 1, 8, 8, dtype=f64), torch.randint(0, 10, (20,))
    prob = func.make_problem(model)
    G = exact_ggn(prob, X, y)
    K = kfac.fit(prob, X, y, kind="kfac")
    E = kfac.fit(prob, X, y, kind="ekfac")
    err_k, err_e = (K.dense() - G).norm(), (E.dense() - G).norm()
    assert err_e <= err_k
    # EK-FAC's eigenvalues are the exact diagonal of each layer's block in the Kronecker eigenbasis, so it
    # reproduces the block traces; it is never further from the block-diagonal GGN than K-FAC.
    Gb = block_diagonal(G, E)
    torch.testing.assert_close(torch.trace(E.dense()), torch.trace(G), **EXACT)
    assert (E.dense() - Gb).norm() <= (K.dense() - Gb).norm() < Gb.norm()


@pytest.mark.parametrize("kind", ["kfac", "ekfac"])
def test_inverse_product_equals_dense_solve(tiny_mlp, kind):
    model, (X, y), _, _ = tiny_mlp
    prob = func.make_problem(model)
    curv = kfac.fit(prob, X, y, kind=kind, chunk_size=64)  # several chunks
    D = curv.dense() + 0.1 * torch.eye(prob.p, dtype=f64)
    V = torch.randn(prob.p, 3, dtype=f64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(curv.solve(V, 0.1), torch.linalg.solve(D, V), **SOLVE)
    torch.testing.assert_close(curv.solve(V[:, 0], 0.1), torch.linalg.solve(D, V[:, 0]), **SOLVE)
    torch.testing.assert_close(kfac.inverse_product(prob, X, y, V, 0.1, kind=kind), curv.solve(V, 0.1), **EXACT)


def test_sampled_and_empirical_fishers_are_seeded():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()
    X, y = torch.randn(50, 4, dtype=f64), torch.randint(0, 3, (50,))
    prob = func.make_problem(model)
    a = kfac.fit(prob, X, y, fisher="sampled", seed=1).dense()
    torch.testing.assert_close(a, kfac.fit(prob, X, y, fisher="sampled", seed=1).dense(), **EXACT)
    assert not torch.allclose(a, kfac.fit(prob, X, y, fisher="sampled", seed=2).dense())
    assert torch.isfinite(kfac.fit(prob, X, y, fisher="empirical").dense()).all()


def test_ekfac_detects_flipped_labels(tiny_mlp):
    model, train, val, flipped = tiny_mlp
    s = ifkit.score("ekfac", model, train, val, damping=1e-3)
    assert s.shape == flipped.shape
    assert s[flipped].mean() > s[~flipped].mean()
    loss = ifkit.score("loss", model, train, val)
    assert metrics.auc(s, flipped) >= auc_floor(TINY_MLP_AUC["ekfac"], loss, flipped)
    P = ifkit.pairwise("ekfac", model, train, val, damping=1e-3)
    torch.testing.assert_close(P.mean(0), s, **SOLVE)  # score = mean of pairwise over S_val


def test_ekfac_method_matches_the_module(tiny_mlp):
    model, (X, y), (Xv, yv), _ = tiny_mlp
    prob = func.make_problem(model)
    v = kfac.fit(prob, X, y, kind="kfac").solve(func.mean_grad(prob, Xv, yv), 0.01)
    expected = -(func.per_sample_grads(prob, X, y) @ v)
    torch.testing.assert_close(ifkit.score("ekfac", model, (X, y), (Xv, yv), curvature="kfac"), expected, **EXACT)


def test_model_is_never_modified(tiny_mlp):
    model, train, val, _ = tiny_mlp
    before = copy.deepcopy(model.state_dict())
    flags = [p.requires_grad for p in model.parameters()]
    hooks = [len(m._forward_hooks) for m in model.modules()]
    ifkit.score("ekfac", model, train, val)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert flags == [p.requires_grad for p in model.parameters()]
    assert hooks == [len(m._forward_hooks) for m in model.modules()]


def test_unsupported_layers_are_named_with_a_fix():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2)).double()
    X, y = torch.randn(8, 3, dtype=f64), torch.randint(0, 2, (8,))
    with pytest.raises(ValueError, match=r"LayerNorm.*params=\['0.weight', '0.bias', '2.weight', '2.bias'\]"):
        ifkit.score("ekfac", model, (X, y), (X, y))
    s = ifkit.score("ekfac", model, (X, y), (X, y), params=["0.weight", "0.bias", "2.weight", "2.bias"])
    assert s.shape == (8,)
    with pytest.raises(ValueError, match="curvature='ekfac'"):
        ifkit.score("ekfac", model, (X, y), (X, y), curvature="cg", params=["2.weight"])


def test_vm_curvature_ekfac_uses_the_validation_factors(tiny_mlp):
    from ifkit.curvature.inverse import CurvatureOptions, validation_curvature

    model, (X, y), (Xv, yv), flipped = tiny_mlp
    prob = func.make_problem(model)
    inv = validation_curvature(prob, Xv, yv, CurvatureOptions(curvature="ekfac", damping=0.1))
    G = func.per_sample_grads(prob, X[:5], y[:5])  # (5, p)
    expected = kfac.fit(prob, Xv, yv).solve(G.T, 0.1).T
    torch.testing.assert_close(inv.solve_rows(G), expected, **EXACT)
    torch.testing.assert_close(inv.quad(G), (G * expected).sum(1), **EXACT)
    s = ifkit.score("vm", model, (X, y), (Xv, yv), curvature="ekfac", flat_steps=20)
    loss = ifkit.score("loss", model, (X, y), (Xv, yv))
    assert (s >= 0).all() and metrics.auc(s, flipped) >= auc_floor(TINY_MLP_AUC["vm ekfac"], loss, flipped)


def test_self_influence_with_ekfac_matches_its_dense_form():
    """self-if with curvature="ekfac" = g_i^T (F + damping I)^-1 g_i with F the dense EK-FAC matrix."""
    import ifkit
    from ifkit.core.func import make_problem, per_sample_grads
    from ifkit.curvature import kfac

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)).double()
    X, y = torch.randn(30, 5, dtype=torch.float64), torch.randint(0, 3, (30,))
    got = ifkit.score("self-if", model, (X, y), (X[:5], y[:5]), curvature="ekfac", damping=0.1)
    prob = make_problem(model)
    F = kfac.fit(prob, X, y, kind="ekfac").dense()  # (p, p)
    G = per_sample_grads(prob, X, y)  # (n, p)
    want = (G * torch.linalg.solve(F + 0.1 * torch.eye(prob.p, dtype=F.dtype), G.T).T).sum(1)
    torch.testing.assert_close(got, want, **SOLVE)
