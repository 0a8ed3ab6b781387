"""Methods without curvature: the training loss, gradient dot product and cosine, TracIn.

Each replaces H^-1 in the classic influence -g_val^T H^-1 g_i by the identity (docs/PAPER.md, Eq. 4: TracIn and
the gradient dot product replace H by the identity), or needs no gradient at all (the loss).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..core.func import Problem, make_problem, mean_grad
from ..core.grads import GradEngine
from ..core.options import Options
from ..optim.train import checkpoint_state


@dataclass(frozen=True)
class GradientOptions(Options):
    """Options of the methods without curvature (loss, graddot, gradcos, tracin).

    Attributes:
        checkpoints: TracIn: state_dicts or (state_dict, lr) pairs along training; None: the final model only.
        lrs: TracIn: the learning rate of each checkpoint (default: the pair's lr, else 1.0).
    """

    checkpoints: Sequence[Any] | None = None
    lrs: Sequence[float] | None = None


def loss_score(eng: GradEngine) -> Tensor:
    """score_i = l(z_i, theta*): the training loss, the simplest self-influence baseline.

    Cost: one forward pass. Paper: the reference every detector must beat.
    """
    with torch.no_grad():
        return torch.cat([eng.prob.losses(eng.prob.theta, eng.Xs[r], eng.ys[r]) for r in eng.row_blocks()])  # (n,)


def graddot_score(eng: GradEngine) -> Tensor:
    """score_i = -g_val^T g_i  (H replaced by I). Cost: one gradient pass (G never formed)."""
    g_val = mean_grad(eng.prob, eng.Xv, eng.yv)  # (p,)
    return -eng.dots(g_val)


def graddot_pairwise(eng: GradEngine) -> Tensor:
    """pairwise[q, i] = -g_q^T g_i. Cost: Q query gradients + one pass with Q columns."""
    Gq = eng.query_grads()  # (Q, p)
    return -eng.dots(Gq.T).T  # (Q, n)


def gradcos_score(eng: GradEngine) -> Tensor:
    """score_i = -cos(g_val, g_i): insensitive to gradient scale. Cost: one gradient pass."""
    g_val = mean_grad(eng.prob, eng.Xv, eng.yv)  # (p,)
    g_val = g_val / g_val.norm().clamp_min(1e-30)
    return eng.apply_sets(lambda gs: -gs.dots(g_val) / gs.sq_norms().sqrt().clamp_min(1e-30))


def gradcos_pairwise(eng: GradEngine) -> Tensor:
    """pairwise[q, i] = -cos(g_q, g_i). Cost: Q query gradients + one pass."""
    Gq = eng.query_grads()
    Gq = Gq / Gq.norm(dim=1, keepdim=True).clamp_min(1e-30)  # (Q, p)
    return eng.apply_sets(lambda gs: -gs.dots(Gq.T) / gs.sq_norms().sqrt().clamp_min(1e-30)[:, None]).T


def tracin_score(eng: GradEngine) -> Tensor:
    """TracIn-CP (Pruthi et al. 2020): score_i = -sum_c lr_c g_val(theta_c)^T g_i(theta_c).

    Cost: one gradient pass per checkpoint. Without ``checkpoints=`` only the final model is used (= graddot).
    """
    total = torch.zeros(eng.n_scored, dtype=eng.prob.theta.dtype, device=eng.prob.theta.device)
    for prob, lr in checkpoint_problems(eng):
        g_val = mean_grad(prob, eng.Xv, eng.yv)  # (p,)
        total -= lr * eng.dots(g_val, prob)
    return total


def tracin_pairwise(eng: GradEngine) -> Tensor:
    """pairwise[q, i] = -sum_c lr_c g_q(theta_c)^T g_i(theta_c). Cost: one pass per checkpoint."""
    total = torch.zeros(len(eng.Xv), eng.n_scored, dtype=eng.prob.theta.dtype, device=eng.prob.theta.device)
    for prob, lr in checkpoint_problems(eng):
        Gq = eng.query_grads(prob)  # (Q, p)
        total -= lr * eng.dots(Gq.T, prob).T
    return total


def checkpoint_problems(eng: GradEngine) -> Iterator[tuple[Problem, float]]:
    """(Problem at checkpoint c, lr_c) for TracIn; the final model with lr 1 when no checkpoints are given."""
    cps = eng.opt.checkpoints
    if not cps:
        yield eng.prob, 1.0
        return
    lrs = eng.opt.lrs
    if lrs is not None and len(lrs) != len(cps):
        raise ValueError(f"lrs has {len(lrs)} entries but checkpoints has {len(cps)}; give one learning rate each")
    model = copy.deepcopy(eng.model)
    for j, cp in enumerate(cps):
        state, lr = checkpoint_state(cp)
        lr = lrs[j] if lrs is not None else (1.0 if lr is None else lr)
        model.load_state_dict(state)
        yield make_problem(model, eng.opt.params, eng.opt.loss), float(lr)


__all__ = ["GradientOptions", "checkpoint_problems", "gradcos_pairwise", "gradcos_score", "graddot_pairwise", "graddot_score",
           "loss_score", "tracin_pairwise", "tracin_score"]
