import pytest
import torch
from tolerances import CG, EXACT, HUTCHINSON_REL, LISSA

from ifkit.curvature import solvers as C


def _spd(p=12, cond=20.0, seed=0):
    """A symmetric positive-definite matrix with eigenvalues spread over [1, cond]."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(p, p, generator=g, dtype=torch.float64))
    evals = torch.linspace(1.0, cond, p, dtype=torch.float64)
    return Q @ torch.diag(evals) @ Q.T


def test_cholesky_solves():
    H = _spd()
    V = torch.randn(12, 3, dtype=torch.float64)
    X = C.solve_cholesky(H, V, damping=0.1)
    torch.testing.assert_close((H + 0.1 * torch.eye(12, dtype=torch.float64)) @ X, V, **EXACT)
    torch.testing.assert_close(C.solve_cholesky(H, V[:, 0], 0.1), X[:, 0], **EXACT)


def test_cholesky_not_positive_definite_names_smallest_eigenvalue():
    H = _spd() - 5 * torch.eye(12, dtype=torch.float64)  # smallest eigenvalue -4
    with pytest.raises(ValueError, match=r"smallest eigenvalue of H = -4.*damping > 4"):
        C.solve_cholesky(H, torch.ones(12, dtype=torch.float64), damping=0.0)


def test_cg_batched_agrees_with_cholesky():
    H = _spd()
    V = torch.randn(12, 4, dtype=torch.float64)
    exact = C.solve_cholesky(H, V, 0.1)
    torch.testing.assert_close(
        C.conjugate_gradient(lambda v: H @ v, V, 0.1, iters=100, tol=1e-12), exact, **CG
    )
    single = C.conjugate_gradient(lambda v: H @ v, V[:, 1], 0.1, iters=100, tol=1e-12)
    torch.testing.assert_close(single, exact[:, 1], **CG)


def test_cg_not_converged_warns_or_raises_with_residual():
    H = _spd(p=30, cond=1e4)
    v = torch.ones(30, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="relative residual"):
        C.conjugate_gradient(lambda x: H @ x, v, iters=2)
    with pytest.raises(C.ConvergenceError, match="raise iters"):
        C.conjugate_gradient(lambda x: H @ x, v, iters=2, strict=True)


def test_lissa_agrees_with_cholesky():
    H = _spd(cond=5.0)
    v = torch.randn(12, dtype=torch.float64)
    exact = C.solve_cholesky(H, v, 0.1)
    torch.testing.assert_close(
        C.lissa(lambda x: H @ x, v, 0.1, scale=8.0, iters=5000, tol=1e-14), exact, **LISSA
    )


def test_lissa_divergence_is_detected_with_a_scale_hint():
    H = _spd(cond=20.0)
    with pytest.raises(C.ConvergenceError, match="scale=20"):
        C.lissa(lambda x: H @ x, torch.ones(12, dtype=torch.float64), 0.0, scale=5.0, iters=1000)


def test_negative_damping_refused():
    with pytest.raises(ValueError, match="damping"):
        C.solve_cholesky(_spd(), torch.ones(12, dtype=torch.float64), damping=-1.0)


def test_datainf_equals_naive_formula():
    g = torch.Generator().manual_seed(0)
    G = torch.randn(9, 6, generator=g, dtype=torch.float64)
    v = torch.randn(6, generator=g, dtype=torch.float64)
    lam = 0.3
    naive = (
        sum(torch.linalg.inv(torch.outer(gi, gi) + lam * torch.eye(6, dtype=torch.float64)) @ v for gi in G)
        / 9
    )
    torch.testing.assert_close(C.datainf_inverse(G, v, lam), naive, **EXACT)


def test_top_eigenvalue_and_trace():
    H = _spd(cond=20.0)
    assert C.top_eigenvalue(lambda v: H @ v, 12, iters=500, tol=1e-12, dtype=torch.float64) == pytest.approx(
        20.0, rel=1e-6
    )
    tr = C.hutchinson_trace(lambda v: H @ v, 12, samples=2000, dtype=torch.float64)
    assert tr == pytest.approx(torch.trace(H).item(), rel=HUTCHINSON_REL)
