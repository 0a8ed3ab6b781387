"""Inverse-curvature products (H + damping I)^-1 v, and spectral summaries of H.

Solvers, from exact to cheap:

* ``solve_cholesky``   exact, O(p^3) once, for the oracle and small models.
* ``conjugate_gradient`` matrix-free, one HVP per iteration per right-hand side, batched over right-hand sides.
* ``lissa``            Agarwal et al. 2017's stochastic Neumann series, with divergence detection.

Spectral tools on HVPs: ``top_eigenvalue`` (power iteration / Lanczos) and ``hutchinson_trace``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor

MatVec = Callable[[Tensor], Tensor]  # (p,) or (p, k) -> same shape


class ConvergenceError(RuntimeError):
    """A solver failed to converge or diverged; the message says what to change."""


def check_damping(damping: float) -> float:
    if not (isinstance(damping, (int, float)) and damping >= 0 and damping == damping):
        raise ValueError(f"damping must be a finite number >= 0, got {damping!r}")
    return float(damping)


def solve_cholesky(H: Tensor, V: Tensor, damping: float = 0.0) -> Tensor:
    """Exact (H + damping I)^-1 V by a Cholesky factorisation.

    Args:
        H: (p, p) symmetric matrix.
        V: (p,) or (p, k) right-hand sides.
        damping: added to the diagonal.

    Raises:
        ValueError: if H + damping I is not positive definite; the message gives its smallest eigenvalue and the
            damping that would make it positive definite.
    """
    damping = check_damping(damping)
    A = H + damping * torch.eye(H.shape[0], dtype=H.dtype, device=H.device)  # (p, p)
    L, info = torch.linalg.cholesky_ex(A)
    if info.item() != 0:
        lam_min = torch.linalg.eigvalsh(H)[0].item()
        raise ValueError(
            f"H + damping I is not positive definite (smallest eigenvalue of H = {lam_min:.3g}, damping = {damping:g}):"
            f" use damping > {-lam_min:.3g}, or the Gauss-Newton curvature (curvature='ggn'), which is PSD"
        )
    rhs = V if V.dim() == 2 else V.unsqueeze(1)
    out = torch.cholesky_solve(rhs, L)  # (p, k)
    return out if V.dim() == 2 else out.squeeze(1)


def conjugate_gradient(
    matvec: MatVec, B: Tensor, damping: float = 0.0, iters: int = 100, tol: float = 1e-8, strict: bool = False
) -> Tensor:
    """Solve (A + damping I) X = B by conjugate gradient, for all columns of B at once.

    Each column runs its own CG recurrence; the columns share one batched matvec per iteration, so k right-hand
    sides cost ``iters`` batched HVPs rather than k * iters separate ones. Stops when every column's relative
    residual is below ``tol``.

    Args:
        matvec: v -> A v for (p,) or (p, k) inputs; A symmetric positive (semi-)definite.
        B: (p,) or (p, k) right-hand sides.
        strict: raise ``ConvergenceError`` instead of warning when ``iters`` is reached first.
    """
    damping = check_damping(damping)
    squeeze = B.dim() == 1
    B = B.unsqueeze(1) if squeeze else B  # (p, k)
    A = lambda v: matvec(v) + damping * v  # noqa: E731
    X = torch.zeros_like(B)
    R = B.clone()
    P = R.clone()
    rs = (R * R).sum(0)  # (k,)
    b_norm = B.norm(dim=0).clamp_min(torch.finfo(B.dtype).tiny)  # (k,)
    for _ in range(iters):
        if bool((rs.sqrt() / b_norm <= tol).all()):
            break
        AP = A(P)  # (p, k)
        pAp = (P * AP).sum(0)
        if bool((pAp <= 0).any()):
            raise ConvergenceError(
                "conjugate gradient met a direction of non-positive curvature (the Hessian is indefinite here): "
                "increase damping or use curvature='ggn'"
            )
        alpha = rs / pAp
        X += alpha * P
        R -= alpha * AP
        rs_new = (R * R).sum(0)
        P = R + (rs_new / rs.clamp_min(torch.finfo(B.dtype).tiny)) * P
        rs = rs_new
    rel = (rs.sqrt() / b_norm).max().item()
    if rel > tol * 10:
        msg = f"conjugate gradient stopped after {iters} iterations with relative residual {rel:.2e} (tol {tol:.0e}): raise iters= or damping="
        if strict:
            raise ConvergenceError(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
    return X.squeeze(1) if squeeze else X


def lissa(
    matvec: MatVec | None,
    v: Tensor,
    damping: float = 0.0,
    scale: float = 10.0,
    iters: int = 1000,
    tol: float = 1e-10,
    batch_matvecs: Callable[[int], MatVec] | None = None,
) -> Tensor:
    """LiSSA (Agarwal et al. 2017; Koh & Liang 2017): (H + damping I)^-1 v by a Neumann series.

    Recurrence:  h_0 = v,   h_{t+1} = v + (1 - damping/scale) h_t - (H h_t)/scale,   result = h_T / scale.
    Converges iff the eigenvalues of (H + damping I)/scale lie in (0, 2); ``scale`` must exceed the top
    eigenvalue of H. Growth of ||h_t|| beyond the fixed point's size is detected and raised, with a suggestion.

    Args:
        matvec: v -> H v (full-data; unused, may be None, when ``batch_matvecs(t)`` re-samples it per iteration for
            the stochastic form).
        v: (p,) or (p, k) right-hand side(s).
        scale: the Neumann scaling; larger is safer and slower.
        iters: recursion depth.
    """
    damping = check_damping(damping)
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    h = v.clone()
    min_step = float("inf")
    for t in range(iters):
        Hh = (batch_matvecs(t) if batch_matvecs is not None else matvec)(h)
        h_new = v + (1 - damping / scale) * h - Hh / scale
        # The step is (I - A/scale)^t v: for a convergent series its norm never grows (A symmetric), so a step
        # 100x larger than the smallest one seen means an eigenvalue of A/scale is outside (0, 2).
        step = (h_new - h).norm().item()
        h = h_new
        min_step = min(min_step, step)
        if not torch.isfinite(h).all() or step > 100 * min_step:
            raise ConvergenceError(
                f"LiSSA diverged at iteration {t} (step norm grew from {min_step:.3g} to {step:.3g}): scale={scale:g} "
                "is below the top eigenvalue of H + damping I. Use a larger scale, e.g. scale="
                f"{4 * scale:g}, or set it to ~1.5x ifkit.curvature.solvers.top_eigenvalue(...); or increase damping"
            )
        if step <= tol * max(h.norm().item(), 1e-30):
            break
    return h / scale


def top_eigenvalue(
    matvec: MatVec, p: int, iters: int = 50, tol: float = 1e-6, seed: int = 0, dtype=torch.float32, device=None
) -> float:
    """Largest-magnitude eigenvalue of a symmetric operator by power iteration on HVPs.

    A Rayleigh quotient per iteration; stops when it changes by less than ``tol`` relatively.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn(p, generator=gen, dtype=dtype).to(device)
    v /= v.norm()
    lam = 0.0
    for _ in range(iters):
        w = matvec(v)
        lam_new = torch.dot(v, w).item()
        nw = w.norm()
        if nw == 0:
            return 0.0
        v = w / nw
        if abs(lam_new - lam) <= tol * max(abs(lam_new), 1e-30):
            lam = lam_new
            break
        lam = lam_new
    return lam


def hutchinson_trace(matvec: MatVec, p: int, samples: int = 50, seed: int = 0, dtype=torch.float32, device=None) -> float:
    """Hutchinson's estimator tr(H) ~= mean_s z_s^T H z_s with Rademacher z_s (unbiased; batched matvec)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    Z = (torch.randint(0, 2, (p, samples), generator=gen) * 2 - 1).to(dtype=dtype, device=device)  # (p, s)
    return (Z * matvec(Z)).sum(0).mean().item()
