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

Summed over checkpoints (``checkpoint="sum"``: docs/PAPER.md, Eq. 14 at each checkpoint, TracIn's weights): one theta~_c per saved
training checkpoint c, each fine-tuned from c, and the scores summed with TracIn's learning-rate weights,

    pairwise_sum[q, i] = sum_c lr_c * ( -g~_q(c)^T (H~_val(c) + damping I)^-1 g~_i(c) ),

lr_c from ``(state_dict, lr)`` pairs or ``lrs=`` (1.0 for a bare state_dict). With one bare checkpoint it is
VM started there (tested). Cost: C times one VM call. On the generation benchmark (RESULTS.md) this, not the
flatness of theta~, is what lifted VM's class AUC.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from ..core.func import Problem, make_problem
from ..core.grads import GradEngine
from ..curvature.forms import Curvature
from ..curvature.inverse import CurvatureOptions, validation_curvature
from ..optim.flat_finetune import flat_finetune
from ..optim.train import best_val_checkpoint, checkpoint_state

# the fine-tuning options for which an explicit None means the method's default (as the api has always read them)
FINETUNE = ("flat_optimizer", "flat_steps", "flat_lr", "rho", "sigma")
CHECKPOINT_CHOICES = ("best-val", "sum")  # the named values of checkpoint= (else None or a state_dict)


@dataclass(frozen=True)
class FlatOptions(CurvatureOptions):
    """Options of VM and FVM: the fine-tuning on S_val to theta~, then the validation curvature there.

    Defaults chosen by measurement: digits, 600 training points with 30% symmetric noise, 200 validation points,
    a 64-64-10 tanh MLP that fits 99% of the noisy labels; detection AUC, mean of seeds 0 and 1 (VM / FVM):
      flat_steps   0: 0.875 / 0.875    20: 0.973 / 0.972    100: 0.991 / 0.991    300: 0.994 / 0.994
      damping 1e-3 / 1e-2 / 1e-1 at 100 steps: 0.990 / 0.991 / 0.991 (insensitive; the default is 0.01)
    Most of the gain comes from the first few dozen steps on S_val; 100 steps take ~0.3 s here.

    Attributes:
        flat_optimizer: "sgd" (VM), "lpf" (FVM's default: LPF-SGD) or "sam"; "adam" also runs.
        flat_steps, flat_lr: full-batch steps on S_val and their learning rate.
        rho: SAM radius (also the radius of the logged sharpness); sigma: LPF-SGD noise scale.
        checkpoint: where the fine-tuning starts: None (the model given), a state_dict, "best-val" (of
            ``checkpoints``, the lowest mean S_val loss) or "sum" (from EACH of ``checkpoints``, the scores summed
            with TracIn's weights lr_c: module docstring).
        checkpoints: the states "best-val" / "sum" use (state_dicts or (state_dict, lr) pairs).
        lrs: "sum": the weight lr_c of each checkpoint (default: the pair's lr, else 1.0).
        flat_val: pairwise: the validation set to fine-tune on, when the queries are not S_val.
        curvature_val: pairwise: the (X, y) whose curvature at theta~ is inverted, when not flat_val (e.g. S_val
            with the targets of the attribution loss while theta~ is fine-tuned on the model's own loss).
        at: a ``FlatPoint`` (theta~ of an earlier call): score there instead of fine-tuning again.
        curvature (CurvatureOptions): None picks "ggn" (exact, low rank) or "ggn-cg" by size
            (curvature/val_inverse.py).
    """

    flat_optimizer: str = "sgd"
    flat_steps: int = 100
    flat_lr: float = 0.01
    rho: float = 0.05
    sigma: float = 0.005
    checkpoint: Any = None
    checkpoints: Sequence[Any] | None = None
    lrs: Sequence[float] | None = None
    flat_val: Any = None
    curvature_val: Any = None
    at: FlatPoint | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name in FINETUNE and getattr(self, f.name) is None:
                object.__setattr__(self, f.name, f.default)
        if isinstance(self.checkpoint, str):
            if self.checkpoint not in CHECKPOINT_CHOICES:
                raise ValueError(f"checkpoint={self.checkpoint!r}: give a state_dict, one of {CHECKPOINT_CHOICES} "
                                 "or None")
            if not self.checkpoints:
                raise ValueError(f"checkpoint={self.checkpoint!r} uses checkpoints=[state_dict, ...]; none were "
                                 "given (ifkit.optim.train.train(..., n_checkpoints=k) saves them)")
        if self.lrs is not None and len(self.lrs) != len(self.checkpoints or ()):
            raise ValueError(f"lrs has {len(self.lrs)} entries but checkpoints has {len(self.checkpoints or ())}; "
                             "give one learning rate per checkpoint")

    def finetune_kwargs(self) -> dict[str, Any]:
        """The ``flat_finetune`` arguments of this call (optim/flat_finetune.py)."""
        return dict(flat_optimizer=self.flat_optimizer, flat_steps=self.flat_steps, flat_lr=self.flat_lr,
                    rho=self.rho, sigma=self.sigma, params=self.params, loss=self.loss, seed=self.seed,
                    progress=self.progress)


@dataclass(frozen=True)
class VMOptions(FlatOptions):
    """VM: theta~ reached by plain (momentum) SGD on S_val."""


@dataclass(frozen=True)
class FVMOptions(FlatOptions):
    """FVM: theta~ reached by a flat-minimum optimiser, LPF-SGD by default."""

    flat_optimizer: str = "lpf"


# The fine-tuning of each method as flat_finetune keyword arguments (the experiments fine-tune with them directly)
VM_DEFAULTS = {k: getattr(VMOptions(), k) for k in ("flat_optimizer", "flat_steps", "flat_lr")}
FVM_DEFAULTS = {k: getattr(FVMOptions(), k) for k in ("flat_optimizer", "flat_steps", "flat_lr", "sigma", "rho")}


def start_model(eng: GradEngine) -> torch.nn.Module:
    """The model VM/FVM fine-tune from: the given one, or the ``checkpoint=`` option's (module docstring).

    "best-val" picks, among ``checkpoints=`` (state_dicts or (state_dict, lr) pairs), the lowest mean loss on
    S_val -- early stopping by validation loss, the model at which VM beat cleanlab in the detection experiment.
    """
    cp = eng.opt.checkpoint
    if cp is None:
        return eng.model
    if isinstance(cp, str):
        if cp != "best-val":
            raise ValueError(f"checkpoint={cp!r} has one theta~ per checkpoint: score with ifkit.score / "
                             "ifkit.pairwise, or pass checkpoint=state_dict for one of them")
        states = [checkpoint_state(c)[0] for c in (eng.opt.checkpoints or [])]
        if not states:
            raise ValueError("checkpoint='best-val' picks among checkpoints=[state_dict, ...]; none were given "
                             "(ifkit.optim.train.train(..., n_checkpoints=k) saves them)")
        cp = states[best_val_checkpoint(eng.model, states, (eng.Xv, eng.yv), eng.opt.loss)[0]]
    model = copy.deepcopy(eng.model)
    model.load_state_dict(cp)
    return model


@dataclass(eq=False)
class FlatPoint:
    """theta~ as a value: the fine-tuned point of one VM/FVM call and what scoring there needs.

    ``ifkit.flat_point(...)`` returns it; ``ifkit.score(method, model, train, val, at=point)``,
    ``ifkit.pairwise(..., at=point)`` and ``ifkit.diagnose(..., at=point)`` score at it without fine-tuning again,
    and every call with the same validation set and curvature options reuses the one validation curvature built
    at theta~ (``curvature``): ``ifkit.clean`` scores the training points and every candidate label with one.

    Attributes:
        start: theta, where the fine-tuning started (the model given, or its ``checkpoint=``).
        model: theta~, the fine-tuned copy.
        trajectory: ``flat_finetune``'s log (step, val_loss, val_acc, sharpness, grad_norm).
        val: (X, y) the validation set it was fine-tuned on (on the model's device and dtype).
        options: the options of the call that made it (its type says the method: VMOptions or FVMOptions).
    """

    start: torch.nn.Module
    model: torch.nn.Module
    trajectory: pd.DataFrame = field(repr=False)
    val: tuple[Tensor, Tensor] = field(repr=False)
    options: FlatOptions = field(repr=False)
    tuned: Problem = field(repr=False)
    _curvatures: dict = field(default_factory=dict, repr=False)

    def problem(self, eng: GradEngine) -> Problem:
        """The problem at theta~ on the caller's model object (the tuned copy differs only in its numbers), so
        that a GradCache recognises the model across calls (core/cache.py keys on the model object)."""
        if (eng.prob.names, eng.prob.shapes) != (self.tuned.names, self.tuned.shapes):
            raise ValueError(f"at=: this theta~ differentiates {len(self.tuned.names)} parameter tensors "
                             f"{self.tuned.names[:3]}..., the call {eng.prob.names[:3]}...: pass the model and "
                             "params= it was fine-tuned with")
        return Problem(eng.model, self.tuned.names, self.tuned.shapes, self.tuned.theta, self.tuned.frozen,
                       eng.prob.loss)

    def curvature(self, prob: Problem, X: Tensor, y: Tensor, opt: FlatOptions, structured: bool) -> Curvature:
        """(H~_val + damping I)^-1 over (X, y) at theta~ for ``opt``'s curvature options, built once per set."""
        key = (structured, X.data_ptr(), tuple(X.shape), y.data_ptr(), tuple(y.shape), opt.loss, opt.curvature,
               opt.damping, opt.gave("damping"), opt.iters, opt.tol, opt.budget_mb, opt.chunk_size, opt.seed)
        if key not in self._curvatures:
            self._curvatures[key] = validation_curvature(prob, X, y, opt, structured=structured)
        return self._curvatures[key]


def flat_point(eng: GradEngine) -> FlatPoint:
    """Fine-tune a copy of the model (or of ``checkpoint=``) on S_val (eng.Xv, eng.yv) to theta~."""
    start = start_model(eng)
    res = flat_finetune(start, (eng.Xv, eng.yv), **eng.opt.finetune_kwargs())
    tuned = make_problem(res.model, eng.opt.params, eng.opt.loss)
    return FlatPoint(start, res.model, res.trajectory, (eng.Xv, eng.yv), eng.opt, tuned)


def summed_over_checkpoints(eng: GradEngine, fn) -> Tensor:
    """sum_c lr_c * fn(the call started at checkpoint c) for ``checkpoint="sum"`` (module docstring).

    Each term is an engine on the same model object, data and options but ``checkpoint=`` the c-th state, so a
    shared GradCache still recognises the model. Cost: len(checkpoints) times ``fn``.
    """
    total = None
    for j, c in enumerate(eng.opt.checkpoints):
        state, lr = checkpoint_state(c)
        w = eng.opt.lrs[j] if eng.opt.lrs is not None else (1.0 if lr is None else lr)
        one = GradEngine(eng.model, eng.X, eng.y, eng.Xv, eng.yv, replace(eng.opt, checkpoint=state))
        term = w * fn(one)
        total = term if total is None else total + term
    return total


def _flat_score(eng: GradEngine) -> Tensor:
    """score_i = g~_i^T (H~_val + damping I)^-1 g~_i at theta~ (paper Sec. 3), theta~ = ``at=`` or fine-tuned here.

    Cost: flat_steps full-batch steps on S_val, one curvature factorisation on S_val (or CG), one gradient pass.
    """
    if eng.opt.checkpoint == "sum":
        return summed_over_checkpoints(eng, _flat_score)
    point = eng.opt.at or flat_point(eng)
    prob = point.problem(eng)
    curv = point.curvature(prob, eng.Xv, eng.yv, eng.opt, structured=True)  # quadratic forms only
    if curv.factored:  # Linear-layer networks: per-layer factors, no per-sample gradients (same numbers, faster)
        return eng.apply_sets(curv.quad_sets, prob)  # supported problems stream FactoredGrads
    return eng.apply(curv.quad, prob)


def _flat_pairwise(eng: GradEngine) -> Tensor:
    """pairwise[q, i] = -g~_q^T (H~_val + damping I)^-1 g~_i at theta~ (first order; module docstring).

    The queries (eng.Xv) double as S_val for the fine-tuning and the curvature, unless ``flat_val=(X, y)``
    names the validation set separately (e.g. when the queries are generated outputs), or ``at=`` gives theta~
    (fine-tuned on its own ``val``); ``curvature_val=(X, y)`` names the set of the curvature alone (e.g. S_val
    with the targets of the queries' loss, not the fine-tuning's).
    Cost: the fine-tuning, one curvature factorisation on S_val, one solve per training point, one pass.
    """
    if eng.opt.checkpoint == "sum":
        return summed_over_checkpoints(eng, _flat_pairwise)
    if eng.opt.at is not None:
        point = eng.opt.at
    else:
        val = eng.opt.flat_val
        point = flat_point(eng.with_other(*val) if val is not None else eng)
    prob = point.problem(eng)
    Xc, yc = eng.opt.curvature_val if eng.opt.curvature_val is not None else point.val
    curv = point.curvature(prob, Xc, yc, eng.opt, structured=False)  # solves need the explicit A
    Gq = eng.query_grads(prob)  # (Q, p)
    return eng.apply(lambda G: -(curv.solve_rows(G) @ Gq.T), prob).T  # (Q, n)


def vm_score(eng: GradEngine) -> Tensor:
    """VM (paper Sec. 3): score_i = g~_i^T (H~_val + damping I)^-1 g~_i at theta~ reached by plain SGD on S_val.

    Cost: flat_steps full-batch steps on S_val, one validation-curvature factorisation, one gradient pass.
    Options: VMOptions.
    """
    return _flat_score(eng)


def fvm_score(eng: GradEngine) -> Tensor:
    """FVM (paper Sec. 3-4): the VM score at a FLAT validation minimum theta~ (LPF-SGD; SAM: flat_optimizer="sam").

    Cost: as VM, with one noisy (LPF) or two (SAM) gradient evaluations per fine-tuning step. Options: FVMOptions.
    """
    return _flat_score(eng)


def vm_pairwise(eng: GradEngine) -> Tensor:
    """pairwise[q, i] = -g~_q^T (H~_val + damping I)^-1 g~_i at VM's theta~ (first order; module docstring)."""
    return _flat_pairwise(eng)


def fvm_pairwise(eng: GradEngine) -> Tensor:
    """pairwise[q, i] = -g~_q^T (H~_val + damping I)^-1 g~_i at FVM's flat theta~."""
    return _flat_pairwise(eng)


__all__ = ["CHECKPOINT_CHOICES", "FVMOptions", "FVM_DEFAULTS", "FINETUNE", "FlatOptions", "FlatPoint", "VMOptions", "VM_DEFAULTS", "flat_point",
           "fvm_pairwise", "fvm_score", "start_model", "summed_over_checkpoints", "vm_pairwise", "vm_score"]
