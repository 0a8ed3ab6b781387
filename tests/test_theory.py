"""Theorem 3.2's ingredients (ifkit/sharpness.py) and the theory experiment (ifkit/experiments/theory.py).

Sharpness R_val^gamma is checked against closed forms (a quadratic loss) and brute force (a 3-parameter logistic
model, whose convex loss peaks on the sphere); the curvature summaries against the exact Hessian.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
from tolerances import (
    ASCENT_DIAGONAL_REL,
    ASCENT_GENERAL_REL,
    ASCENT_RADIUS_REL,
    HUTCHINSON_REL,
    POWER_ITERATION_NET_REL,
    SCALAR_REL,
    SCALAR_ROUTE_LOOSE_REL,
    SPHERE_GRID_ABS,
)

from ifkit import sharpness
from ifkit.core.func import ggn_vp_fn, hessian_exact, make_problem
from ifkit.experiments import discover
from ifkit.experiments import theory as exp_theory
from ifkit.optim import fullbatch
from ifkit.optim.sam import sam_sharpness


@pytest.fixture(scope="module")
def small_logreg():
    """Logistic regression on 100 digits (float64, 650 parameters) at its optimum (L2 0.1: fits in < 1 s)."""
    from conftest import digits

    Xtr, ytr, Xv, yv, _ = digits(100, 80, 20, seed=3)
    torch.manual_seed(0)
    model = fullbatch.fit_full_batch(torch.nn.Linear(64, 10).double(), (Xtr, ytr), 1e-1)
    return model, (Xv, yv)


# ------------------------------------------------------------------------------------------------ sharpness
@pytest.mark.parametrize("gamma", [0.05, 0.5, 2.0])
def test_sharpness_properties(small_logreg, gamma):
    model, val = small_logreg
    before = copy.deepcopy(model.state_dict())
    ascent = sharpness.sharpness(model, val, gamma, steps=10)
    one = sharpness.sharpness(model, val, gamma, one_step=True)
    assert ascent["R_gamma"] >= ascent["R_val"]
    assert ascent["sharpness"] == pytest.approx(ascent["R_gamma"] - ascent["R_val"])
    assert ascent["R_gamma"] >= one["R_gamma"] - 1e-12  # the ascent starts from SAM's step and keeps the best
    assert ascent["R_val"] == one["R_val"]
    assert 0 < ascent["perturbation_norm"] <= gamma * (1 + 1e-12)
    assert one["perturbation_norm"] == pytest.approx(gamma)
    for k, v in before.items():  # never modified
        assert torch.equal(model.state_dict()[k], v)


def test_sharpness_at_zero_radius_is_the_validation_loss(small_logreg):
    model, (Xv, yv) = small_logreg
    out = sharpness.sharpness(model, (Xv, yv), 0.0)
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(Xv), yv).item()
    assert out["R_val"] == pytest.approx(loss, rel=SCALAR_REL)
    assert out["R_gamma"] == out["R_val"] and out["sharpness"] == 0.0 and out["perturbation_norm"] == 0.0


def test_one_step_matches_sam_sharpness(small_logreg):
    model, val = small_logreg
    one = sharpness.sharpness(model, val, 0.3, one_step=True)
    sam = sam_sharpness(model, val, rho=0.3)
    assert one["sharpness"] == pytest.approx(sam["sharpness"], rel=SCALAR_ROUTE_LOOSE_REL)
    assert one["grad_norm"] == pytest.approx(sam["grad_norm"], rel=SCALAR_ROUTE_LOOSE_REL)


def test_more_ascent_steps_never_lower(small_logreg):
    model, val = small_logreg
    values = [sharpness.sharpness(model, val, 1.0, steps=s)["R_gamma"] for s in (1, 3, 10)]
    assert values == sorted(values)


class Quadratic(torch.nn.Module):
    """R(x) = 1/2 x^T A x + b^T x for every sample (a loss with a closed-form worst case over a ball)."""

    def __init__(self, A: torch.Tensor, b: torch.Tensor, x0: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("A", A)
        self.register_buffer("b", b)
        self.x = torch.nn.Parameter(x0.clone())

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        value = 0.5 * self.x @ self.A @ self.x + self.b @ self.x
        return value.expand(len(X), 1)  # (n, 1), one "output" per sample


def _quadratic_loss(out, target):
    return out[:, 0]


def _worst_case_quadratic(A: torch.Tensor, c: torch.Tensor, gamma: float) -> float:
    """max_{||d|| <= gamma} c^T d + 1/2 d^T A d: d = (nu I - A)^-1 c with nu > lambda_max and ||d|| = gamma."""
    lam, Q = torch.linalg.eigh(A)
    a = Q.T @ c  # c in A's eigenbasis
    norm = lambda nu: torch.sqrt((a**2 / (nu - lam) ** 2).sum()).item()  # noqa: E731  decreasing in nu
    lo, hi = lam.max().item() + 1e-12, lam.max().item() + c.norm().item() / gamma + 1.0
    for _ in range(200):  # bisection on the secular equation ||d(nu)|| = gamma
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if norm(mid) > gamma else (lo, mid)
    d = Q @ (a / (0.5 * (lo + hi) - lam))
    return (c @ d + 0.5 * d @ A @ d).item()


def test_sharpness_of_a_quadratic_at_its_minimum_is_half_lambda_max_gamma_squared():
    A = torch.diag(torch.tensor([3.0, 1.0, 0.5, 0.2], dtype=torch.float64))
    model = Quadratic(A, torch.zeros(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64))
    data = (torch.zeros(5, 1, dtype=torch.float64), torch.zeros(5))
    gamma = 0.7
    out = sharpness.sharpness(model, data, gamma, steps=200, loss=_quadratic_loss)  # g = 0: random start
    assert out["grad_norm"] == 0.0
    assert out["sharpness"] == pytest.approx(0.5 * 3.0 * gamma**2, rel=ASCENT_DIAGONAL_REL)
    assert sharpness.sharpness(model, data, gamma, one_step=True, loss=_quadratic_loss)["sharpness"] == 0.0


@pytest.mark.parametrize("gamma", [0.1, 1.0, 3.0])
def test_sharpness_of_a_quadratic_matches_the_trust_region_solution(gamma):
    gen = torch.Generator().manual_seed(0)
    M = torch.randn(5, 5, generator=gen, dtype=torch.float64)
    A = M @ M.T / 5 + 0.1 * torch.eye(5, dtype=torch.float64)  # positive definite
    b = torch.randn(5, generator=gen, dtype=torch.float64)
    x0 = torch.randn(5, generator=gen, dtype=torch.float64)
    model = Quadratic(A, b, x0)
    data = (torch.zeros(3, 1, dtype=torch.float64), torch.zeros(3))
    out = sharpness.sharpness(model, data, gamma, steps=300, loss=_quadratic_loss)
    expected = _worst_case_quadratic(A, A @ x0 + b, gamma)  # the gradient at x0 is A x0 + b
    assert out["sharpness"] == pytest.approx(expected, rel=ASCENT_GENERAL_REL)
    assert out["perturbation_norm"] == pytest.approx(gamma, rel=ASCENT_RADIUS_REL)


def test_sharpness_of_logistic_regression_matches_brute_force_on_the_sphere():
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(40, 1, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=gen)
    model = torch.nn.Linear(1, 3, bias=False).double()  # p = 3
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.5], [-0.3], [0.1]]))
    gamma = 0.8
    out = sharpness.sharpness(model, (X, y), gamma, steps=100)
    # The loss is convex in the weights, so its maximum over the ball lies on the sphere: a Fibonacci grid.
    k = 200_000
    i = torch.arange(k, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / k
    phi = math.pi * (1 + 5**0.5) * i
    r = torch.sqrt(1 - z**2)
    U = torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], dim=1)  # (k, 3) unit vectors
    W = model.weight.detach().view(1, 3) + gamma * U  # (k, 3)
    logits = W[:, None, :] * X[None, :, :]  # (k, n, 3)
    losses = torch.nn.functional.cross_entropy(logits.reshape(-1, 3), y.repeat(k), reduction="none")
    brute = losses.view(k, -1).mean(1).max().item()
    assert out["R_gamma"] == pytest.approx(brute, abs=SPHERE_GRID_ABS)
    assert out["R_gamma"] >= brute - SPHERE_GRID_ABS


@pytest.mark.parametrize("kwargs, match", [({"gamma": -0.1}, "gamma"), ({"gamma": float("nan")}, "gamma"),
                                           ({"gamma": 0.1, "steps": 0}, "steps")])
def test_sharpness_refuses_bad_arguments(small_logreg, kwargs, match):
    model, val = small_logreg
    with pytest.raises(ValueError, match=match):
        sharpness.sharpness(model, val, **kwargs)


# ------------------------------------------------------------------------------------ curvature summaries
@pytest.fixture(scope="module")
def tiny_tanh():
    """A tanh MLP with 67 parameters (float64) and a batch: an indefinite Hessian away from a minimum."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 7)).double()
    gen = torch.Generator().manual_seed(2)
    X = torch.randn(30, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 7, (30,), generator=gen)
    prob = make_problem(model)
    return model, (X, y), hessian_exact(prob, X, y)


def test_top_hessian_eigenvalue_matches_the_exact_hessian(tiny_tanh):
    model, data, H = tiny_tanh
    evals = torch.linalg.eigvalsh(H)
    expected = evals[evals.abs().argmax()].item()  # power iteration finds the largest magnitude, with its sign
    got = sharpness.top_hessian_eigenvalue(model, data, iters=3000, tol=1e-13)
    assert got == pytest.approx(expected, rel=POWER_ITERATION_NET_REL)


def test_top_ggn_eigenvalue_matches_the_dense_ggn(tiny_tanh):
    model, (X, y), _ = tiny_tanh
    prob = make_problem(model)
    G = ggn_vp_fn(prob, X, y)(torch.eye(prob.p, dtype=torch.float64))  # (p, p)
    expected = torch.linalg.eigvalsh((G + G.T) / 2).max().item()  # PSD: largest = largest magnitude
    got = sharpness.top_hessian_eigenvalue(model, (X, y), iters=3000, tol=1e-13, curvature="ggn")
    assert got == pytest.approx(expected, rel=POWER_ITERATION_NET_REL)


def test_hessian_trace_matches_the_exact_trace(tiny_tanh):
    model, data, H = tiny_tanh
    est = sharpness.hessian_trace(model, data, samples=2000)
    assert est == pytest.approx(torch.trace(H).item(), rel=HUTCHINSON_REL)


def test_curvature_refuses_unknown_curvature(tiny_tanh):
    model, data, _ = tiny_tanh
    with pytest.raises(ValueError, match="curvature"):
        sharpness.top_hessian_eigenvalue(model, data, curvature="fisher")
    with pytest.raises(ValueError, match="samples"):
        sharpness.hessian_trace(model, data, samples=0)


# ---------------------------------------------------------------------------------------------- the bound
def test_sign_error_bound_values():
    assert sharpness.sign_error_bound(1.0, 1.0) == pytest.approx(math.exp(-2))
    assert sharpness.sign_error_bound(0.5, 2.0) == pytest.approx(math.exp(-2 * 0.25 / 4))
    assert sharpness.sign_error_bound(0.0, 3.0) == 1.0  # no margin: vacuous
    assert sharpness.sign_error_bound(0.0, 0.0) == 1.0
    assert sharpness.sign_error_bound(0.3, 0.0) == 0.0  # the limit R -> 0
    assert isinstance(sharpness.sign_error_bound(1.0, 2.0), float)


def test_sign_error_bound_broadcasts_and_grows_with_R():
    R = np.array([0.5, 1.0, 2.0, 4.0])
    b = sharpness.sign_error_bound(0.7, R)
    assert b.shape == (4,) and np.all(np.diff(b) > 0) and np.all((b > 0) & (b < 1))
    np.testing.assert_allclose(sharpness.sign_error_bound(torch.tensor([0.7], dtype=torch.float64), torch.tensor(R)), b)


@pytest.mark.parametrize("mu, R", [(-0.1, 1.0), (0.1, -1.0), (float("nan"), 1.0), (0.1, float("inf"))])
def test_sign_error_bound_refuses_bad_input(mu, R):
    with pytest.raises(ValueError):
        sharpness.sign_error_bound(mu, R)


# ------------------------------------------------------------------------------------------ the experiment
TINY = exp_theory.Config(n_train=60, n_val=40, n_loo=4, train_steps=(0, 5), l2_path=(1e-1,), gammas=(0.0, 0.5),
                         methods=("if-exact", "graddot"), ascent_steps=3, eig_iters=20, trace_samples=5)
SCHEMA = ["val_loss", "sharpness", "bound", "sign_error", "method"]  # DESIGN.md's results/theory.csv


def test_theory_experiment_is_registered():
    assert "theory" in discover()


@pytest.mark.slow  # the experiment end to end, leave-one-out refits included
def test_theory_experiment_writes_the_schema_and_resumes(tmp_path, monkeypatch):
    path = tmp_path / "theory.csv"
    df = exp_theory.measure(TINY, [0], path, progress=False)
    on_disk = pd.read_csv(path)
    assert set(SCHEMA + exp_theory.KEY + ["R_gamma", "trajectory", "mu"]) <= set(on_disk.columns)
    assert len(on_disk) == len(df) == 3 * 2 * 2  # checkpoints x gammas x methods
    assert not on_disk.duplicated(exp_theory.KEY).any()
    assert (on_disk["R_gamma"] >= on_disk["val_loss"]).all()
    assert on_disk["sign_error"].between(0, 1).all() and on_disk["bound"].between(0, 1).all()
    np.testing.assert_allclose(on_disk["bound"], sharpness.sign_error_bound(on_disk["mu"], on_disk["R_gamma"]))
    assert on_disk["mu"].nunique() == 1  # one margin per seed
    assert [p.name for p in tmp_path.iterdir()] == ["theory.csv"]  # no temporary file left behind

    def boom(*args, **kwargs):
        raise AssertionError("a complete result was recomputed")

    monkeypatch.setattr(exp_theory, "_truth", boom)
    again = exp_theory.measure(TINY, [0], path, progress=False)
    pd.testing.assert_frame_equal(again, df)
    monkeypatch.undo()

    # Lose some rows: a rerun recomputes exactly those, deterministically.
    on_disk.iloc[:-4].to_csv(path, index=False)
    resumed = exp_theory.measure(TINY, [0], path, progress=False)
    assert len(resumed) == len(df)
    key = exp_theory.KEY
    a, b = df.sort_values(key).reset_index(drop=True), resumed.sort_values(key).reset_index(drop=True)
    cols = ["R_gamma", "bound", "sign_error", "mu"]
    pd.testing.assert_frame_equal(a[key + cols], b[key + cols], check_dtype=False)


def test_rank_correlations_table():
    df = pd.DataFrame({"bound": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], "sign_error": [0.0, 0.1, 0.1, 0.3, 0.2, 0.4],
                       "trajectory": ["a"] * 3 + ["b"] * 3, "method": ["m"] * 6})
    out = exp_theory.rank_correlations(df).set_index("group")
    # Pearson correlation of the ranks (ties share their mean rank): 16 / sqrt(17.5 * 17)
    assert out.loc["all rows", "spearman"] == pytest.approx(16 / math.sqrt(17.5 * 17), rel=SCALAR_REL)
    assert out.loc["trajectory=a", "n"] == 3
    flat = df.assign(sign_error=0.1)
    assert math.isnan(exp_theory.rank_correlations(flat).loc[0, "spearman"])  # constant: undefined, not 0
