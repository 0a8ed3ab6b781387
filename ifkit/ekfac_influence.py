"""The "ekfac" method: classic influence with (E)K-FAC curvature (Grosse et al. 2023; kronfluence).

    score_i     = -g_val^T (F + damping I)^-1 g_i
    pairwise_qi = -g_q^T   (F + damping I)^-1 g_i

F is the block-diagonal EK-FAC approximation of the training set's Gauss-Newton matrix (``ifkit.kfac``);
``curvature="kfac"`` uses plain K-FAC eigenvalues instead. All differentiated parameters must belong to
nn.Linear / nn.Conv2d layers (restrict with ``params=`` otherwise).
Cost: two factor passes over the training set (a forward and K backward passes each), one gradient pass.
"""

from __future__ import annotations

from torch import Tensor

from . import kfac
from .estimators import Ctx, _query_grads, register
from .func import mean_grad


def _curvature(ctx: Ctx) -> kfac.KroneckerCurvature:
    kind = ctx.opt["curvature"] or "ekfac"
    if kind not in kfac.KINDS:
        raise ValueError(f"method 'ekfac' takes curvature='ekfac' (default) or 'kfac', got {kind!r}")
    return kfac.fit(ctx.prob, ctx.X, ctx.y, kind=kind, chunk_size=ctx.opt["chunk_size"], seed=ctx.opt["seed"],
                    progress=ctx.opt["progress"])


def ekfac_score(ctx: Ctx) -> Tensor:
    """score_i = -g_val^T (F_ekfac + damping I)^-1 g_i; higher = more harmful."""
    F = _curvature(ctx)
    v = F.solve(mean_grad(ctx.prob, ctx.Xv, ctx.yv), ctx.damping())  # (p,)
    return -ctx.dots(v)


def ekfac_pairwise(ctx: Ctx) -> Tensor:
    """pairwise[q, i] = -g_q^T (F_ekfac + damping I)^-1 g_i; negative = helpful."""
    F = _curvature(ctx)
    V = F.solve(_query_grads(ctx).T, ctx.damping())  # (p, Q)
    return -ctx.dots(V).T  # (Q, n)


register("ekfac", ekfac_score, ekfac_pairwise)
