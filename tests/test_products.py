"""Retained-graph curvature products (ifkit/core/products.py) against the forward-over-reverse ones and the
dense Hessian / Gauss-Newton matrix, in float64."""

import pytest
import torch
from tolerances import CG, EXACT

import ifkit
from ifkit.core import func
from ifkit.core.products import curvature_vp_fn
from ifkit.curvature.inverse import dense_curvature

OLD = {"hessian": func.hvp_fn, "ggn": func.ggn_vp_fn}


@pytest.mark.parametrize("kind", ["hessian", "ggn"])
def test_products_match_forward_over_reverse_and_dense(kind, tiny_mlp):
    model, (X, y), _, _ = tiny_mlp
    prob = func.make_problem(model)
    V = torch.randn(prob.p, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    new = curvature_vp_fn(prob, X, y, kind, chunk_size=64)  # 200 points: 4 chunks, all kept
    torch.testing.assert_close(new(V), OLD[kind](prob, X, y)(V), **EXACT)
    torch.testing.assert_close(new(V[:, 0]), OLD[kind](prob, X, y)(V[:, 0]), **EXACT)
    M = func.hessian_exact(prob, X, y) if kind == "hessian" else dense_curvature(OLD[kind](prob, X, y), prob, 1e3)
    torch.testing.assert_close(new(V), M @ V, **EXACT)


@pytest.mark.parametrize("kind", ["hessian", "ggn"])
def test_chunks_over_the_memory_budget_are_rebuilt_with_the_same_numbers(kind, tiny_mlp):
    model, (X, y), _, _ = tiny_mlp
    prob = func.make_problem(model)
    v = torch.randn(prob.p, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    kept = curvature_vp_fn(prob, X, y, kind, chunk_size=50)
    rebuilt = curvature_vp_fn(prob, X, y, kind, chunk_size=50, keep_mb=0.0)  # only the first chunk is kept
    torch.testing.assert_close(rebuilt(v), kept(v), **EXACT)
    torch.testing.assert_close(rebuilt(v), kept(v), **EXACT)  # graphs survive repeated use


def test_a_loss_linear_in_theta_has_zero_hessian():
    model = torch.nn.Linear(3, 1, bias=False).double()
    prob = func.make_problem(model, loss=lambda out, t: (out[:, 0] * t))  # linear in the weights
    X, t = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    assert torch.equal(curvature_vp_fn(prob, X, t, "hessian")(torch.ones(3, dtype=torch.float64)),
                       torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize("curvature", [None, "cg"])
def test_if_cg_matches_the_exact_solve(curvature, tiny_mlp):
    """if-cg through the retained-graph products: the dense Cholesky solve of the same (damped) matrix."""
    model, train, val, _ = tiny_mlp
    damping = 0.5  # makes the Hessian of this memorising MLP positive definite
    exact = ifkit.score("if-exact", model, train, val, damping=damping, curvature="ggn" if curvature is None else "exact")
    fast = ifkit.score("if-cg", model, train, val, damping=damping, curvature=curvature, iters=200, tol=1e-12)
    torch.testing.assert_close(fast, exact, **CG)
