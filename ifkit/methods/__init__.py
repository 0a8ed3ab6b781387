"""Every influence method, one short function each, in one static table.

``REGISTRY[name] = (score_fn, pairwise_fn or None)``; each function takes the ``GradEngine`` of one call
(core/grads.py) and returns (n,) scores or an (n_queries, n) table. ``ifkit.METHODS`` is ``tuple(REGISTRY)``.

    module       methods
    gradient     loss, graddot, gradcos, tracin            H replaced by the identity (or no gradient at all)
    influence    if-exact, if-cg, if-lissa, datainf,      -g_val^T (H_tr + damping I)^-1 g_i, one solver each
                 ekfac, self-if
    gex          gex                                      loss spread over a geometric ensemble
    flat         vm, fvm                                  the paper's g~^T (H~_val + damping I)^-1 g~ at theta~
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from ..core.grads import GradEngine
from . import flat, gex, gradient, influence

Method = Callable[[GradEngine], Tensor]

# name -> (score function, pairwise function or None); the order is the order of ifkit.METHODS
REGISTRY: dict[str, tuple[Method, Method | None]] = {
    "loss": (gradient.loss_score, None),
    "graddot": (gradient.graddot_score, gradient.graddot_pairwise),
    "gradcos": (gradient.gradcos_score, gradient.gradcos_pairwise),
    "tracin": (gradient.tracin_score, gradient.tracin_pairwise),
    "if-exact": (influence.if_exact_score, influence.if_exact_pairwise),
    "if-cg": (influence.if_cg_score, influence.if_cg_pairwise),
    "if-lissa": (influence.if_lissa_score, influence.if_lissa_pairwise),
    "datainf": (influence.datainf_score, influence.datainf_pairwise),
    "self-if": (influence.self_if_score, None),
    "gex": (gex.gex_score, gex.gex_pairwise),
    "ekfac": (influence.ekfac_score, influence.ekfac_pairwise),
    "vm": (flat.vm_score, flat.vm_pairwise),
    "fvm": (flat.fvm_score, flat.fvm_pairwise),
}

__all__ = ["REGISTRY", "Method"]
