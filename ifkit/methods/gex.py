"""GEX (Kim et al. 2023): self-influence as the spread of a point's loss over a geometric ensemble.

GEX reads influence as the covariance of loss deviations under parameters sampled around theta* (the Laplace
view of -g^T H^-1 g', without linearising the loss), and samples with a geometric ensemble: members fine-tuned
from theta* on the training set. The paper's baseline (docs/PAPER.md, Sec. 7: the paper's GEX used an ensemble
of 32; Kim et al.'s released configuration uses 8 members and a cosine schedule, our default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.grads import GradEngine
from ..core.options import Options


@dataclass(frozen=True)
class GexOptions(Options):
    """Options of GEX: the ensemble and how each member is fine-tuned from theta* on the training set.

    Attributes:
        ensemble_size: K members (Kim et al.'s released configuration uses 8).
        gex_steps: mini-batch SGD steps per member.
        gex_lr: initial learning rate of the cosine schedule.
        gex_batch: mini-batch size.
    """

    ensemble_size: int = 8
    gex_steps: int = 100
    gex_lr: float = 0.05
    gex_batch: int = 64


def ensemble(eng: GradEngine) -> list[Tensor]:
    """(K,) parameter vectors theta_k: ``gex_steps`` mini-batch SGD steps each from theta* on the training set,
    cosine learning-rate schedule from ``gex_lr``, member k seeded by (seed, k). Cost: K x gex_steps steps."""
    prob, opt = eng.prob, eng.opt
    members = []
    for k in range(opt.ensemble_size):
        gen = torch.Generator().manual_seed(opt.seed * 1000 + k)
        theta = prob.theta.clone()
        for t in range(opt.gex_steps):
            idx = torch.randint(0, eng.n, (min(opt.gex_batch, eng.n),), generator=gen)
            lr = opt.gex_lr * 0.5 * (1 + math.cos(math.pi * t / opt.gex_steps))
            g = torch.func.grad(lambda th: prob.mean_loss(th, eng.X[idx], eng.y[idx]))(theta)
            theta = theta - lr * g
        members.append(theta.detach())
    return members


def loss_deviations(eng: GradEngine, members: list[Tensor], X: Tensor, y: Tensor) -> Tensor:
    """(K, n) loss deviations l(z, theta_k) - l(z, theta*) over the ensemble."""
    with torch.no_grad():
        base = eng.prob.losses(eng.prob.theta, X, y)  # (n,)
        return torch.stack([eng.prob.losses(th, X, y) - base for th in members])  # (K, n)


def gex_score(eng: GradEngine) -> Tensor:
    """score_i = E_k[(l(z_i, theta_k) - l(z_i, theta*))^2] over the ensemble; higher = more harmful.

    Cost: ensemble_size x gex_steps mini-batch steps + ensemble_size forward passes.
    """
    dev = loss_deviations(eng, ensemble(eng), eng.Xs, eng.ys)  # (K, n)
    return (dev**2).mean(0)


def gex_pairwise(eng: GradEngine) -> Tensor:
    """pairwise[q, i] = -E_k[dl(z_q) dl(z_i)]: co-moving losses mean i helps q (negative = helpful)."""
    members = ensemble(eng)
    Dq = loss_deviations(eng, members, eng.Xv, eng.yv)  # (K, Q)
    Dn = loss_deviations(eng, members, eng.Xs, eng.ys)  # (K, n)
    return -(Dq.T @ Dn) / len(members)  # (Q, n)


__all__ = ["GexOptions", "ensemble", "gex_pairwise", "gex_score", "loss_deviations"]
