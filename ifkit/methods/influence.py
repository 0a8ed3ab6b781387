"""Classic influence, one function per inverse-curvature solver, and self-influence.

    score_i     = -g_val^T (H_tr + damping I)^-1 g_i        (Koh & Liang 2017; docs/PAPER.md, Eq. 4)
    pairwise_qi = -g_q^T   (H_tr + damping I)^-1 g_i        (docs/PAPER.md, Eq. 6)

One inverse-curvature product for the right-hand side(s) -- g_val (H symmetric), or the Q query gradients in
one batch -- then one gradient pass for the dot products. The methods differ only in the solver
(curvature/inverse.py); ``curvature=`` swaps it under any of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..core.func import mean_grad
from ..core.grads import GradEngine
from ..curvature import kfac
from ..curvature.forms import fits_dense
from ..curvature.inverse import KRONECKER, CurvatureOptions, inverse, training_curvature


@dataclass(frozen=True)
class InfluenceOptions(CurvatureOptions):
    """Options of classic influence and self-influence (if-exact, if-cg, if-lissa, datainf, ekfac, self-if).

    The curvature options (``curvature``, ``iters``, ``tol``, LiSSA's ``scale``, ``lissa_batch`` and
    ``lissa_products``) are curvature/inverse.py's ``CurvatureOptions``; ``curvature=None`` is each method's own
    choice: "exact" (if-exact), "ggn-cg" (if-cg), "ekfac" (ekfac), the Gauss-Newton by size for self-if
    (``self_if_kind``).
    """


def influence_score(eng: GradEngine, kind: str) -> Tensor:
    """score_i = -g_val^T (H_tr + damping I)^-1 g_i with the solver ``kind``. Cost: one solve + one pass."""
    g_val = mean_grad(eng.prob, eng.Xv, eng.yv)  # (p,)
    v = inverse(eng, g_val, kind)  # (p,) = (H + lam I)^-1 g_val
    return -eng.dots(v)


def influence_pairwise(eng: GradEngine, kind: str) -> Tensor:
    """pairwise[q, i] = -g_q^T (H_tr + damping I)^-1 g_i; one batched solve for all Q queries + one pass."""
    Gq = eng.query_grads()  # (Q, p)
    V = inverse(eng, Gq.T.contiguous(), kind)  # (p, Q)
    return -eng.dots(V).T  # (Q, n)


def if_exact_score(eng: GradEngine) -> Tensor:
    """Classic influence with the exact Hessian (Cholesky): the oracle (docs/PAPER.md, Eq. 2-4, both steps exact in
    step 1). Cost O(p^3) + p HVPs for H + one gradient pass."""
    return influence_score(eng, eng.opt.curvature or "exact")


def if_exact_pairwise(eng: GradEngine) -> Tensor:
    """pairwise[q, i] = -g_q^T (H_tr + damping I)^-1 g_i, exact Hessian. Cost O(p^3) + one pass."""
    return influence_pairwise(eng, eng.opt.curvature or "exact")


def if_cg_score(eng: GradEngine) -> Tensor:
    """Classic influence with conjugate gradient: ``iters`` curvature products + one gradient pass.

    CG needs a positive-definite operator, so the default curvature is the Gauss-Newton matrix (PSD; equal to
    the Hessian for linear models such as logistic regression). ``curvature="cg"`` uses the true Hessian, which
    is indefinite away from a minimum of a network's loss.
    """
    return influence_score(eng, eng.opt.curvature or "ggn-cg")


def if_cg_pairwise(eng: GradEngine) -> Tensor:
    """pairwise[q, i] by CG, all Q right-hand sides in one batched solve: ``iters`` batched products + one pass."""
    return influence_pairwise(eng, eng.opt.curvature or "ggn-cg")


def if_lissa_score(eng: GradEngine) -> Tensor:
    """Classic influence with LiSSA (Agarwal et al. 2017): ``iters`` curvature products + one gradient pass.

    score_i = -g_val^T h,  h = LiSSA estimate of (H_tr + damping I)^-1 g_val (Gauss-Newton products by default;
    ``lissa_products="hessian"`` for Hessian products, as in Koh & Liang 2017).
    """
    return influence_score(eng, "lissa")


def if_lissa_pairwise(eng: GradEngine) -> Tensor:
    """pairwise[q, i] by LiSSA over the Q query gradients at once: ``iters`` batched products + one pass."""
    return influence_pairwise(eng, "lissa")


def datainf_score(eng: GradEngine) -> Tensor:
    """DataInf (Kwon et al. 2024): score_i = -g_i^T (DataInf inverse) g_val. Cost: three gradient passes, no HVP."""
    return influence_score(eng, "datainf")


def datainf_pairwise(eng: GradEngine) -> Tensor:
    """pairwise[q, i] = -g_q^T (DataInf inverse) g_i; the paper's generation baseline. Cost: three passes."""
    return influence_pairwise(eng, "datainf")


def ekfac_kind(eng: GradEngine) -> str:
    kind = eng.opt.curvature or "ekfac"
    if kind not in KRONECKER:
        raise ValueError(f"method 'ekfac' takes curvature='ekfac' (default) or 'kfac', got {kind!r}")
    return kind


def ekfac_score(eng: GradEngine) -> Tensor:
    """Influence with (E)K-FAC curvature (Grosse et al. 2023): score_i = -g_val^T (F + damping I)^-1 g_i.

    F: block-diagonal EK-FAC Gauss-Newton of the training set (``curvature="kfac"``: plain K-FAC eigenvalues);
    Linear / Conv2d parameters only. Cost: two factor passes over the training set, one gradient pass.
    """
    return influence_score(eng, ekfac_kind(eng))


def ekfac_pairwise(eng: GradEngine) -> Tensor:
    """pairwise[q, i] = -g_q^T (F_ekfac + damping I)^-1 g_i; negative = helpful."""
    return influence_pairwise(eng, ekfac_kind(eng))


def self_if_kind(eng: GradEngine) -> str:
    """self-if's curvature: ``curvature=`` when given, else the Gauss-Newton matrix G (PSD, so the form is
    defined at any theta; the Hessian of a network away from a minimum is indefinite -- on a tiny CNN its
    smallest eigenvalue was -1.16 and "exact" refused) in the cheapest form that fits: dense ("ggn") when a
    p x p matrix fits a quarter of budget_mb; else EK-FAC's block-diagonal approximation of G ("ekfac") when
    every differentiated parameter is a Linear / Conv1d / Conv2d weight or bias (one factorisation, then O(p)
    per point: on a 2-conv CNN, 20,490 parameters, 300 28x28 images took 4-7 s where the former default, CG on
    the Hessian per point, was estimated at 3.3 h and refused); else CG on G ("ggn-cg"). For logistic regression
    G is the Hessian (Koh & Liang's formula); ``curvature="exact"`` asks for the Hessian anywhere."""
    if eng.opt.curvature:
        return eng.opt.curvature
    if fits_dense(eng.prob, eng.opt.budget_mb):
        return "ggn"
    return "ekfac" if kfac.supports(eng.prob) else "ggn-cg"


def self_if_score(eng: GradEngine) -> Tensor:
    """Self-influence: score_i = g_i^T (G_tr + damping I)^-1 g_i (Koh & Liang 2017, Sec. 5.4, with the Hessian).

    How much point i's own loss would drop if it were up-weighted: large for points the model can only fit by
    bending around them. The curvature is built once (curvature/inverse.py), then its quadratic form streams
    over the training points; the default curvature is ``self_if_kind``'s. Dense curvature: one
    eigendecomposition, then per chunk ||diag(1/sqrt(lam+d)) Q^T g||^2; with CG, one batched solve per chunk (cost ~ n/chunk * iters HVPs); with
    curvature="ekfac" (or "kfac"), one Kronecker factorisation and O(p) per point read from per-layer factors --
    the choice for models whose dense curvature is too big and whose Hessian is indefinite (memorising networks).
    """
    curv = training_curvature(eng, self_if_kind(eng))
    if curv.factored:  # Linear-layer networks stream per-layer factors; the form reads them directly
        return eng.apply_sets(curv.quad_sets)
    return eng.apply(curv.quad)


__all__ = ["InfluenceOptions", "datainf_pairwise", "datainf_score", "ekfac_pairwise", "ekfac_score", "if_cg_pairwise", "if_cg_score",
           "if_exact_pairwise", "if_exact_score", "if_lissa_pairwise", "if_lissa_score", "influence_pairwise",
           "influence_score", "self_if_kind", "self_if_score"]
