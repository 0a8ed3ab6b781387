"""VM and FVM: influence at a (flat) validation minimum theta~ (the paper's Sec. 3-4 estimator).

Classic influence differentiates the validation loss to FIRST order at theta*. Fine-tuning a copy of the model
on S_val to a minimum theta~ removes the first-order term (g~_val = 0), so the paper re-derives both steps there:

    parameter change:  d theta ~= -eps H~_val^-1 g~_z                 (H~_val: curvature of R_val at theta~)
    loss change:       d R_val ~= 1/2 d theta^T H~_val d theta = eps^2/2 g~_z^T H~_val^-1 g~_z
    score:             I(z, S_val) = g~_z^T (H~_val + damping I)^-1 g~_z       >= 0, higher = more harmful

VM reaches theta~ with plain SGD on S_val, FVM with a flat-minimum optimiser (LPF-SGD by default, or SAM).

Per-query form (``pairwise``). For one query z_q the gradient g~_q is NOT zero at theta~, so the first-order
term survives and dominates:

    d l_q / d eps  ~=  -g~_q^T u_i,        u_i = (H~_val + damping I)^-1 g~_i

i.e. classic influence evaluated at theta~ with the VALIDATION curvature. Its O(eps^2) correction is
eps * (g~_q^T w_i + 1/2 u_i^T H~_q u_i), where the second-order parameter change w_i = H^-1 (H_i u_i - 1/2 T[u_i, u_i])
needs the training point's own Hessian H_i and the third derivative T of R_val. We measured (logistic
regression, exact retraining, tests/test_flat_influence.py) that adding only the cheap query-curvature half
of that correction makes the prediction WORSE (error norm 1.27 -> 1.63 at eps = 1e-3), because the two halves
cancel in part; so the pairwise form stops at first order, which agrees with retraining to Pearson r > 0.99.
Averaged over S_val the first-order term vanishes at the minimum: that is why the VM score is second order.

Where to start the fine-tuning (``checkpoint=``): a network trained until it memorises its noisy labels gives
VM/FVM a theta* far from any validation minimum; started from the early-stopped checkpoint instead, VM beat
cleanlab on all 4 Fashion-MNIST settings (RESULTS.md; ``ifkit.clean``). ``checkpoint=state_dict`` starts there,
``checkpoint="best-val"`` picks the lowest-S_val-loss state among ``checkpoints=``.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor

from ..core.func import Problem, make_problem
from ..core.grads import GradEngine
from ..curvature.val_inverse import ValInverse
from ..optim.flat_finetune import flat_finetune
from ..optim.train import best_val_checkpoint

# Defaults chosen by measurement: digits, 600 training points with 30% symmetric noise, 200 validation points,
# a 64-64-10 tanh MLP that fits 99% of the noisy labels; detection AUC, mean of seeds 0 and 1 (VM / FVM):
#   flat_steps   0: 0.875 / 0.875    20: 0.973 / 0.972    100: 0.991 / 0.991    300: 0.994 / 0.994
#   damping 1e-3 / 1e-2 / 1e-1 at 100 steps: 0.990 / 0.991 / 0.991 (insensitive; the default is 0.01)
# Most of the gain comes from the first few dozen steps on S_val; 100 steps take ~0.3 s here.
VM_DEFAULTS = dict(flat_optimizer="sgd", flat_steps=100, flat_lr=0.01)
FVM_DEFAULTS = dict(flat_optimizer="lpf", flat_steps=100, flat_lr=0.01, sigma=0.005, rho=0.05)


def start_model(eng: GradEngine) -> torch.nn.Module:
    """The model VM/FVM fine-tune from: the given one, or the ``checkpoint=`` option's (module docstring).

    "best-val" picks, among ``checkpoints=`` (state_dicts or (state_dict, lr) pairs), the lowest mean loss on
    S_val -- early stopping by validation loss, the model at which VM beat cleanlab in the detection experiment.
    """
    cp = eng.opt["checkpoint"]
    if cp is None:
        return eng.model
    if isinstance(cp, str):
        if cp != "best-val":
            raise ValueError(f"checkpoint={cp!r}: give a state_dict, 'best-val' or None")
        states = [c[0] if isinstance(c, tuple) else c for c in (eng.opt["checkpoints"] or [])]
        if not states:
            raise ValueError("checkpoint='best-val' picks among checkpoints=[state_dict, ...]; none were given "
                             "(ifkit.optim.train.train(..., n_checkpoints=k) saves them)")
        cp = states[best_val_checkpoint(eng.model, states, (eng.Xv, eng.yv), eng.opt["loss"])[0]]
    model = copy.deepcopy(eng.model)
    model.load_state_dict(cp)
    return model


def flat_point(eng: GradEngine, defaults: dict[str, Any]) -> Problem:
    """Fine-tune a copy of the model (or of ``checkpoint=``) on S_val (eng.Xv, eng.yv); the problem at theta~."""
    o = {k: (eng.opt[k] if eng.opt[k] is not None else v) for k, v in defaults.items()}
    res = flat_finetune(
        start_model(eng), (eng.Xv, eng.yv), flat_optimizer=o["flat_optimizer"], flat_steps=o["flat_steps"],
        flat_lr=o["flat_lr"], rho=o.get("rho", eng.opt["rho"] or 0.05), sigma=o.get("sigma", eng.opt["sigma"] or 0.005),
        params=eng.opt["params"], loss=eng.opt["loss"], seed=eng.opt["seed"], progress=eng.opt["progress"],
    )
    tuned = make_problem(res.model, eng.opt["params"], eng.opt["loss"])
    # The same function of theta~, on the caller's model object (the tuned copy differs only in its numbers), so
    # that a GradCache recognises the model across calls (core/cache.py keys on the model object)
    return Problem(eng.model, tuned.names, tuned.shapes, tuned.theta, tuned.frozen, tuned.loss)


def _flat_score(eng: GradEngine, defaults: dict[str, Any]) -> Tensor:
    """score_i = g~_i^T (H~_val + damping I)^-1 g~_i at theta~ (paper Sec. 3).

    Cost: flat_steps full-batch steps on S_val, one curvature factorisation on S_val (or CG), one gradient pass.
    """
    prob = flat_point(eng, defaults)
    inv = ValInverse(prob, eng.Xv, eng.yv, eng.opt, structured=True)  # only the quadratic forms are needed here
    if inv.structured:  # Linear-layer networks: per-layer factors, no per-sample gradients (same numbers, faster)
        return eng.apply_sets(inv.quad_factored, prob)  # supported problems stream FactoredGrads
    return eng.apply(inv.quad, prob)


def _flat_pairwise(eng: GradEngine, defaults: dict[str, Any]) -> Tensor:
    """pairwise[q, i] = -g~_q^T (H~_val + damping I)^-1 g~_i at theta~ (first order; module docstring).

    The queries (eng.Xv) double as S_val for the fine-tuning and the curvature, unless ``flat_val=(X, y)``
    names the validation set separately (e.g. when the queries are generated outputs); ``curvature_val=(X, y)``
    names the set of the curvature alone (e.g. S_val with the targets of the queries' loss, not the fine-tuning's).
    Cost: the fine-tuning, one curvature factorisation on S_val, one solve per training point, one pass.
    """
    val = eng.opt["flat_val"]
    Xval, yval = val if val is not None else (eng.Xv, eng.yv)
    prob = flat_point(eng.with_other(Xval, yval), defaults)
    Xc, yc = eng.opt["curvature_val"] if eng.opt["curvature_val"] is not None else (Xval, yval)
    inv = ValInverse(prob, Xc, yc, eng.opt)  # solve() needs the explicit A: not the structured form
    Gq = eng.query_grads(prob)  # (Q, p)
    return eng.apply(lambda G: -(inv.solve(G) @ Gq.T), prob).T  # (Q, n)


def vm_score(eng: GradEngine) -> Tensor:
    """VM (paper Sec. 3): score_i = g~_i^T (H~_val + damping I)^-1 g~_i at theta~ reached by plain SGD on S_val.

    Cost: flat_steps full-batch steps on S_val, one validation-curvature factorisation, one gradient pass.
    Defaults in VM_DEFAULTS.
    """
    return _flat_score(eng, VM_DEFAULTS)


def fvm_score(eng: GradEngine) -> Tensor:
    """FVM (paper Sec. 3-4): the VM score at a FLAT validation minimum theta~ (LPF-SGD; SAM: flat_optimizer="sam").

    Cost: as VM, with one noisy (LPF) or two (SAM) gradient evaluations per fine-tuning step. FVM_DEFAULTS.
    """
    return _flat_score(eng, FVM_DEFAULTS)


def vm_pairwise(eng: GradEngine) -> Tensor:
    """pairwise[q, i] = -g~_q^T (H~_val + damping I)^-1 g~_i at VM's theta~ (first order; module docstring)."""
    return _flat_pairwise(eng, VM_DEFAULTS)


def fvm_pairwise(eng: GradEngine) -> Tensor:
    """pairwise[q, i] = -g~_q^T (H~_val + damping I)^-1 g~_i at FVM's flat theta~."""
    return _flat_pairwise(eng, FVM_DEFAULTS)


__all__ = ["FVM_DEFAULTS", "VM_DEFAULTS", "flat_point", "start_model", "fvm_pairwise", "fvm_score", "vm_pairwise", "vm_score"]
