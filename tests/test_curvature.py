import pytest
import torch
from tolerances import CG, EXACT, HUTCHINSON_REL, LISSA, POWER_ITERATION_REL

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
    """DataInf's inverse (curvature/forms.py, the one implementation) on two layer blocks: per block,
    1/n sum_i (g_il g_il^T + lam I)^-1 v_l; streamed in two chunks; Kwon et al.'s damping when none is given."""
    from ifkit.core.cache import DenseGrads
    from ifkit.curvature.forms import DataInf

    g = torch.Generator().manual_seed(0)
    G = torch.randn(9, 6, generator=g, dtype=torch.float64)
    V = torch.randn(6, 2, generator=g, dtype=torch.float64)
    blocks = [slice(0, 4), slice(4, 6)]
    chunks = lambda: [DenseGrads(G[:5], blocks), DenseGrads(G[5:], blocks)]  # noqa: E731

    def naive(lams):
        out = torch.empty_like(V)
        for b, lam in zip(blocks, lams):
            eye = lam * torch.eye(b.stop - b.start, dtype=torch.float64)
            out[b] = sum(torch.linalg.inv(torch.outer(gi[b], gi[b]) + eye) @ V[b] for gi in G) / 9
        return out

    given = DataInf(chunks, 9, blocks, 0.3, torch.float64, G.device)
    torch.testing.assert_close(given.solve(V), naive([0.3, 0.3]), **EXACT)
    torch.testing.assert_close(given.solve(V[:, 0]), naive([0.3, 0.3])[:, 0], **EXACT)
    auto = DataInf(chunks, 9, blocks, None, torch.float64, G.device)
    kwon = [0.1 * (G[:, b] ** 2).sum(1).mean() / (b.stop - b.start) for b in blocks]
    torch.testing.assert_close(auto.solve(V), naive(kwon), **EXACT)


def test_top_eigenvalue_and_trace():
    H = _spd(cond=20.0)
    assert C.top_eigenvalue(lambda v: H @ v, 12, iters=500, tol=1e-12, dtype=torch.float64) == pytest.approx(
        20.0, rel=POWER_ITERATION_REL
    )
    tr = C.hutchinson_trace(lambda v: H @ v, 12, samples=2000, dtype=torch.float64)
    assert tr == pytest.approx(torch.trace(H).item(), rel=HUTCHINSON_REL)


# Modules whose comparisons with these strings mean something else: the product type of core/products.py
# ("hessian" | "ggn"), the curvature whose top eigenvalue sharpness.py / diagnosis.py measure, and K-FAC's own two
# variants and Fisher type inside curvature/kfac.py (the form the factory builds for "ekfac"/"kfac").
# estimate.py prices a call by the curvature it will use (a cost model for budget_s): it builds none, so the
# name is read there, never dispatched to code that computes.
OTHER_MEANINGS = {"core/products.py", "sharpness.py", "diagnosis.py", "curvature/kfac.py", "estimate.py"}


def _curvature_name_comparisons(path, kinds) -> list[str]:
    import ast

    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            parts = [c for side in [node.left, *node.comparators] for c in ast.walk(side)]
            if any(isinstance(c, ast.Constant) and c.value in kinds for c in parts):
                out.append(f"line {node.lineno}: {ast.unparse(node)}")
    return out


def test_each_curvature_name_is_dispatched_in_one_place():
    """Only the factory (curvature/inverse.py) turns a curvature name into an inverse: no other module of the
    library compares anything with "exact", "ggn", "cg", "ggn-cg", "lissa", "datainf", "ekfac" or "kfac"."""
    from pathlib import Path

    import ifkit
    from ifkit.curvature.inverse import KINDS

    root = Path(ifkit.__file__).parent
    found = {p.relative_to(root).as_posix(): _curvature_name_comparisons(p, KINDS) for p in root.rglob("*.py")}
    found = {k: v for k, v in found.items() if v and k not in OTHER_MEANINGS}
    assert set(found) == {"curvature/inverse.py"}, found
    assert len(found["curvature/inverse.py"]) >= len(KINDS)  # the check sees the factory's own dispatch
