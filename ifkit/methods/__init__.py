"""Every influence method, one short function each, in one static table.

``REGISTRY[name] = Method(score, pairwise or None, Options)``; each function takes the ``GradEngine`` of one call
(core/grads.py), whose ``opt`` is an instance of the method's ``Options`` type (its family's frozen dataclass,
declared beside its code; ifkit/api.py parses the keyword arguments into it), and returns (n,) scores or an
(n_queries, n) table. ``ifkit.METHODS`` is ``tuple(REGISTRY)``.

    module       methods
    gradient     loss, graddot, gradcos, tracin            H replaced by the identity (or no gradient at all)
    influence    if-exact, if-cg, if-lissa, datainf,      -g_val^T (H_tr + damping I)^-1 g_i, one solver each
                 ekfac, self-if
    gex          gex                                      loss spread over a geometric ensemble
    flat         vm, fvm                                  the paper's g~^T (H~_val + damping I)^-1 g~ at theta~
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from torch import Tensor

from ..core.grads import GradEngine
from ..core.options import Options
from . import flat, gex, gradient, influence
from .flat import FVMOptions, VMOptions
from .gex import GexOptions
from .gradient import GradientOptions
from .influence import InfluenceOptions

Fn = Callable[[GradEngine], Tensor]


class Method(NamedTuple):
    """One method: its score function, its pairwise function (None for self-influence scores) and the frozen
    options type its functions read (``eng.opt``)."""

    score: Fn
    pairwise: Fn | None
    Options: type[Options]


G, I = GradientOptions, InfluenceOptions  # noqa: E741
# the order is the order of ifkit.METHODS
REGISTRY: dict[str, Method] = {
    "loss": Method(gradient.loss_score, None, G),
    "graddot": Method(gradient.graddot_score, gradient.graddot_pairwise, G),
    "gradcos": Method(gradient.gradcos_score, gradient.gradcos_pairwise, G),
    "tracin": Method(gradient.tracin_score, gradient.tracin_pairwise, G),
    "if-exact": Method(influence.if_exact_score, influence.if_exact_pairwise, I),
    "if-cg": Method(influence.if_cg_score, influence.if_cg_pairwise, I),
    "if-lissa": Method(influence.if_lissa_score, influence.if_lissa_pairwise, I),
    "datainf": Method(influence.datainf_score, influence.datainf_pairwise, I),
    "self-if": Method(influence.self_if_score, None, I),
    "gex": Method(gex.gex_score, gex.gex_pairwise, GexOptions),
    "ekfac": Method(influence.ekfac_score, influence.ekfac_pairwise, I),
    "vm": Method(flat.vm_score, flat.vm_pairwise, VMOptions),
    "fvm": Method(flat.fvm_score, flat.fvm_pairwise, FVMOptions),
}

__all__ = ["REGISTRY", "Method"]
