"""The public entry points ``score`` and ``pairwise``: options, input checks, then one method from the registry.

Sign convention (the same for every method):

* ``score(...)[i]``  = predicted INCREASE of the mean validation loss when training point i is up-weighted, or
  for self-influence methods ("loss", "self-if", "gex", "vm", "fvm") the method's own harmfulness measure.
  HIGHER = MORE HARMFUL = more likely mislabelled.
* ``pairwise(...)[q, i]`` = predicted change of query q's loss when training point i is up-weighted:
  negative = helpful ("proponent"), positive = harmful ("opponent").

Up-weighting z_i by eps moves the optimum by d theta / d eps = -H^-1 g_i (Koh & Liang 2017), so the first-order
change of a loss with gradient g is  d L / d eps = -g^T H^-1 g_i.  Removing the point is eps = -1/n_train.
"""

from __future__ import annotations

import copy
import difflib
import warnings
from typing import Any

import torch
from torch import Tensor

from . import estimate
from . import validation as checks
from .core.cache import GradCache
from .core.func import DEFAULT_CHUNK_SIZE, as_tensors, chunks, param_names, resolve_loss
from .core.grads import GradEngine, grad_chunk_rows
from .curvature.solvers import check_damping
from .methods import REGISTRY

# Every option any method understands, with its default. Unknown names are refused with a suggestion.
DEFAULTS: dict[str, Any] = dict(
    damping=0.01,  # lam in (H + lam I)^-1; the L2 strength the model was trained with is the principled choice
    iters=None,  # CG iterations (100) / LiSSA depth (500)
    tol=1e-8,
    scale=None,  # LiSSA scale; None: 1.5 x (top eigenvalue of H + damping), measured by power iteration
    # None: full-batch HVPs up to LISSA_FULL_MAX training points, mini-batches of LISSA_AUTO_BATCH above;
    # an int: stochastic mini-batch HVPs of that size; "full": always full batch. Seeded either way.
    lissa_batch=None,
    checkpoints=None,  # TracIn: list of state_dicts or (state_dict, lr) pairs
    lrs=None,  # TracIn: learning rate of each checkpoint (default 1.0)
    curvature=None,  # "exact" | "ggn" | "cg" | "ggn-cg"; None picks per method and size
    ensemble_size=8,  # GEX
    gex_steps=100,
    gex_lr=0.05,
    gex_batch=64,
    budget_mb=1024.0,  # memory budget for the exact Hessian
    budget_s=600.0,  # a call estimated to take longer is refused, the estimate in the message; None: no limit
    # False: stream training gradients, recomputed per pass; True: keep them for this call; a GradCache: keep
    # them across every call given that cache (core/cache.py; keyed by model, parameters and data)
    cache_grads=False,
    params=None,
    loss="cross_entropy",
    chunk_size=DEFAULT_CHUNK_SIZE,  # unless given: fewer rows when (rows, p) would exceed budget_mb / 4
    seed=0,
    device=None,
    progress=False,
    # flat validation minima (VM / FVM)
    flat_optimizer=None,
    flat_steps=None,
    flat_lr=None,
    rho=None,
    sigma=None,
    flat_val=None,  # pairwise VM/FVM: the validation set to fine-tune on, when the queries are not S_val
    # pairwise VM/FVM: the (X, y) whose curvature at theta~ is inverted, when not flat_val: e.g. the validation
    # inputs with the targets of the attribution loss while theta~ is fine-tuned on the model's own loss
    curvature_val=None,
    # VM/FVM: where the fine-tuning on S_val starts. None: the model given; a state_dict: that checkpoint (e.g.
    # the early-stopped one); "best-val": of checkpoints=, the one with the lowest mean S_val loss
    checkpoint=None,
    # None: under an initialised torch.distributed process group, each rank does the per-training-point pass
    # on its shard and the results are gathered (core/distributed.py); False: always the whole set here
    distributed=None,
    # (X, y) points to score INSTEAD of the training points, with every training-set quantity (curvature,
    # TracIn checkpoints, GEX ensemble, DataInf's damping) still from train=: e.g. each flagged point under
    # every candidate label, for relabeling. None: score the training points.
    candidates=None,
)


def resolve(method: str, options: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(method, str) or method not in REGISTRY:
        close = difflib.get_close_matches(str(method), REGISTRY, n=3)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown method {method!r}{hint}; available: {', '.join(REGISTRY)}")
    unknown = [k for k in options if k not in DEFAULTS]
    if "cache_grads" in options and not isinstance(options["cache_grads"], (bool, GradCache)):
        raise TypeError(f"cache_grads must be True, False or an ifkit.GradCache, got {options['cache_grads']!r}")
    if unknown:
        hints = {k: difflib.get_close_matches(k, DEFAULTS, n=1) for k in unknown}
        fix = "; ".join(f"{k!r} -> did you mean {v[0]!r}?" if v else f"{k!r} is not an option" for k, v in hints.items())
        raise TypeError(f"unknown option(s) for ifkit.{method}: {fix}. Options: {', '.join(DEFAULTS)}")
    opt = {**DEFAULTS, **options, "_given": frozenset(options)}
    if opt["checkpoint"] is not None and method not in ("vm", "fvm"):
        raise TypeError(f"checkpoint= chooses where VM/FVM fine-tune on S_val; {method!r} does not use it (TracIn's "
                        "checkpoints go in checkpoints=)")
    if opt["damping"] is not None and opt["damping"] != "auto":
        check_damping(opt["damping"])
    return opt


def prepare(model: torch.nn.Module, train, other, opt: dict[str, Any], other_name: str) -> GradEngine:
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    X, y = as_tensors(train, "train")
    Xv, yv = as_tensors(other, other_name)
    # -- refused here, before any work, with the fix in the message (ifkit/validation.py) --
    opt.update(checks.check_options(
        damping=opt["damping"], seed=opt["seed"], device=opt["device"], budget_s=opt["budget_s"],
        counts={k: opt[k] for k in ("iters", "chunk_size", "ensemble_size", "gex_steps", "gex_batch")},
        nonnegative={"flat_steps": opt["flat_steps"]}))
    checks.check_checkpoints(model, opt["checkpoints"], opt["lrs"])
    checks.check_checkpoint(model, opt["checkpoint"])
    (X, y), (Xv, yv) = checks.check_inputs({"train": (X, y), other_name: (Xv, yv)}, opt["loss"]).values()
    # --
    if opt["device"] is not None:
        model = copy.deepcopy(model).to(opt["device"])
        X, y, Xv, yv = (t.to(opt["device"]) for t in (X, y, Xv, yv))
    if model.training and any(isinstance(m, (torch.nn.Dropout, torch.nn.modules.batchnorm._BatchNorm))
                              for m in model.modules()):
        warnings.warn("model is in training mode with Dropout/BatchNorm: scoring an eval() copy (your model is "
                      "left as it is). Call model.eval() to silence this.", stacklevel=3)
        model = copy.deepcopy(model).eval()
    p0 = next(model.parameters(), None)
    dtype = p0.dtype if p0 is not None else X.dtype
    X = X.to(dtype) if X.is_floating_point() else X
    Xv = Xv.to(dtype) if Xv.is_floating_point() else Xv
    checks.check_model_inputs(model, {"train": (X, y), other_name: (Xv, yv)}, opt["loss"])  # one example
    validate(model, (X, y), (Xv, yv), opt, other_name)  # below: raises early, naming the fix
    if "chunk_size" not in opt["_given"]:  # a (chunk, p) gradient block takes at most a quarter of budget_mb
        p = sum(model.get_parameter(n).numel() for n in param_names(model, opt["params"]))
        opt["chunk_size"] = grad_chunk_rows(p, dtype, opt["budget_mb"])
    if opt["candidates"] is not None:
        Xc, yc = as_tensors(opt["candidates"], "candidates")
        _, (Xc, yc) = checks.check_inputs({"train": (X, y), "candidates": (Xc, yc)}, opt["loss"]).values()
        Xc = Xc.to(device=X.device, dtype=dtype) if Xc.is_floating_point() else Xc.to(X.device)
        validate(model, (X, y), (Xc, yc.to(X.device)), {**opt, "candidates": None}, "candidates")
        opt = {**opt, "candidates": (Xc, yc.to(X.device))}
    return GradEngine(model, X, y, Xv, yv, opt)


def score(method: str, model: torch.nn.Module, train, val, **options: Any) -> Tensor:
    """Score every training point: (n_train,) predicted increase of the mean validation loss when the point is
    up-weighted (self-influence methods: their harmfulness measure). HIGHER = MORE HARMFUL.

    Args:
        method: one of ``ifkit.METHODS``.
        model: a torch.nn.Module at the trained parameters theta*; never modified.
        train: (X, y) tensors or a Dataset of pairs.
        val: (X_val, y_val), the clean validation set S_val.
        **options: see ``ifkit.api.DEFAULTS`` (damping, iters, scale, checkpoints, params, ...).

    Under an initialised torch.distributed process group (e.g. torchrun), call it on every rank with the same
    arguments: each rank scores a shard of the training set and every rank returns the full, identical result
    (``distributed=False`` opts out; ``ifkit/core/distributed.py`` has the details).
    """
    opt = resolve(method, options)
    eng = prepare(model, train, val, opt, "val")
    check_time(method, eng, pairwise=False)
    out = REGISTRY[method][0](eng)
    return check_finite(out, method)


def pairwise(method: str, model: torch.nn.Module, train, queries, **options: Any) -> Tensor:
    """(n_queries, n_train) predicted change of each query's loss when each training point is up-weighted.

    Negative = helpful (proponent), positive = harmful (opponent).
    """
    opt = resolve(method, options)
    fn = REGISTRY[method][1]
    if fn is None:
        has = [m for m, (_, p) in REGISTRY.items() if p is not None]
        raise ValueError(f"method {method!r} is a self-influence score and has no pairwise form; use one of {has}")
    eng = prepare(model, train, queries, opt, "queries")
    check_time(method, eng, pairwise=True)
    return check_finite(fn(eng), method)


def check_time(method: str, eng: GradEngine, pairwise: bool) -> None:
    """Refuse a call estimated to take longer than budget_s, before any work (ifkit/estimate.py)."""
    o, prob = eng.opt, eng.prob
    if o["budget_s"] is None:  # no limit: no estimate either
        return
    with torch.no_grad():
        n_out = prob.forward(prob.theta, eng.Xv[:1]).numel()
    seconds, dominant = estimate.estimate_call(
        method, lambda th, b: prob.losses(th, eng.X[:b], eng.y[:b]), prob.theta, pairwise=pairwise, n_train=eng.n,
        n_scored=eng.n_scored, n_other=len(eng.Xv), n_out=n_out, budget_mb=o["budget_mb"], chunk=o["chunk_size"],
        bytes_per_entry=prob.theta.element_size(), iters=o["iters"], curvature=o["curvature"],
        n_checkpoints=len(o["checkpoints"] or ()), flat_steps=o["flat_steps"], ensemble_size=o["ensemble_size"],
        gex_steps=o["gex_steps"], gex_batch=o["gex_batch"], lissa_batch=o["lissa_batch"])
    what = f"ifkit.{'pairwise' if pairwise else 'score'}({method!r})"
    estimate.check_time(seconds, dominant, o["budget_s"], what, estimate.fix_for(method, dominant, pairwise))


def check_finite(out: Tensor, method: str) -> Tensor:
    bad = ~torch.isfinite(out)
    if bool(bad.any()):
        idx = bad.nonzero()[:, -1].unique()[:10].tolist()
        raise ValueError(f"{method} produced non-finite scores for training indices {idx}...: check the inputs and "
                         "loss for NaN/inf, or increase damping")
    return out.detach()


# ----------------------------------------------------------------------------------------------------------------
# Input checks run once before any method: each error names the problem and the fix. ``validate`` runs after the
# data are stacked, moved to ``device=`` and cast to the model's dtype. It costs one forward pass over the
# training set (to find non-finite per-sample losses) plus one on a single example (the number of outputs).
# ----------------------------------------------------------------------------------------------------------------

MAX_SHOWN = 10  # indices / names listed in a message


def validate(model: torch.nn.Module, train: tuple[Tensor, Tensor], other: tuple[Tensor, Tensor],
             opt: dict[str, Any], other_name: str) -> None:
    """Raise ValueError / TypeError for inputs no method can score meaningfully; return None otherwise."""
    sets = {"train": train, other_name: other}
    _check_params_option(opt)
    params = dict(model.named_parameters())
    if not params:
        raise ValueError("model has no parameters: influence is taken with respect to parameters; pass a trained "
                         "torch.nn.Module with at least one parameter")
    _check_devices(params, sets)
    _check_parameters_finite(model)
    for name, (X, y) in sets.items():
        _check_finite_rows(X, f"{name} inputs")
        if y.is_floating_point():
            _check_finite_rows(y, f"{name} targets")
    with torch.no_grad():
        out = model(train[0][:1])  # one example: the number of outputs (classes, or vocabulary size)
    if opt["loss"] == "cross_entropy":
        for name, (_, y) in sets.items():
            _check_class_targets(y, out, name)
    _check_losses_finite(model, *train, opt, _loss_rows(out, opt))


def _loss_rows(out: Tensor, opt: dict[str, Any]) -> int:
    """Rows per forward pass of the loss check: up to 4,096 (one big batch costs less than 16 of 256: measured
    42 -> 12 ms for 4,000 points of a 784-64-10 MLP), as long as their outputs stay within budget_mb / 16."""
    per_row = max(out.numel() * out.element_size(), 1) if isinstance(out, Tensor) else 1
    return max(int(opt["chunk_size"]), min(4096, int(opt["budget_mb"] * 2**20 / 16 // per_row)))


def _check_params_option(opt: dict[str, Any]) -> None:
    params = opt["params"]
    if params is None:
        return
    if isinstance(params, str):
        raise TypeError(f"params= takes a list of parameter names, got the string {params!r}: "
                        f"use params=[{params!r}]")
    if len(list(params)) == 0:
        raise ValueError("params= is an empty list: nothing to differentiate. Name at least one parameter "
                         "(see [n for n, _ in model.named_parameters()]) or leave params=None for all trainable ones")


def _check_devices(params: dict[str, Tensor], sets: dict[str, tuple[Tensor, Tensor]]) -> None:
    devices = {p.device for p in params.values()}
    if len(devices) > 1:
        raise ValueError(f"model parameters are spread over several devices {sorted(map(str, devices))}: "
                         "pass device='cuda' (or 'cpu') to score on one device, or move the model with model.to(...)")
    dev = devices.pop()
    for name, (X, y) in sets.items():
        for what, t in (("inputs", X), ("targets", y)):
            if t.device != dev:
                raise ValueError(f"device mismatch: model parameters are on {dev} but {name} {what} are on "
                                 f"{t.device}: pass device={str(dev)!r} to ifkit.score/pairwise (it moves a copy "
                                 f"of the model and the data), or move the tensors with .to({str(dev)!r})")


def _check_parameters_finite(model: torch.nn.Module) -> None:
    bad = [n for n, t in [*model.named_parameters(), *model.named_buffers()]
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise ValueError(f"model has non-finite (NaN/inf) parameters or buffers: {_show(list(map(repr, bad)))}: training diverged; "
                         "retrain (e.g. with a lower learning rate) or load an earlier checkpoint")


def _bad_rows(t: Tensor) -> Tensor:
    """Indices of rows of t that hold a NaN or inf anywhere."""
    finite = torch.isfinite(t).reshape(len(t), -1).all(1)
    return (~finite).nonzero().flatten()


def _check_finite_rows(t: Tensor, what: str) -> None:
    if not t.is_floating_point() and not t.is_complex():
        return
    # A finite sum means every entry is finite (NaN and inf propagate; overflow can only make a finite set's
    # sum infinite): one reduction, 10x cheaper than isfinite's boolean copy. Only then look for the rows.
    if bool(torch.isfinite(t.sum())):
        return
    rows = _bad_rows(t)
    if len(rows):
        raise ValueError(f"{what} contain NaN/inf in {len(rows)} row(s), indices {_show(rows.tolist())}: drop or "
                         "impute those rows before scoring")


def _check_class_targets(y: Tensor, out: Tensor, name: str) -> None:
    """The default cross-entropy wants integer class indices in [0, n_outputs) (or class probabilities)."""
    n_out = out.shape[-1]
    if y.is_floating_point():
        if y.dim() >= 2 and y.shape[1:] == out.shape[1:]:
            return  # class probabilities (soft labels), which cross-entropy accepts
        raise TypeError(f"{name} targets are {y.dtype} but the default loss='cross_entropy' expects integer class "
                        f"indices: pass {name}=(X, y.long()), or give a custom loss=(outputs, targets) -> (n,) "
                        "losses for regression or other float targets")
    if y.dtype == torch.bool or y.is_complex():
        raise TypeError(f"{name} targets are {y.dtype} but the default loss='cross_entropy' expects integer class "
                        f"indices: pass {name}=(X, y.long()), or give a custom loss=")
    ok = (y >= 0) & (y < n_out)
    if out.dim() == 3:
        ok |= y == -100  # token ids: cross_entropy's ignore_index (padding) is allowed
    if not bool(ok.all()):
        vals = y[~ok].unique().tolist()
        rows = _bad_rows(torch.where(ok, 0.0, float("nan")))
        raise ValueError(f"{name} targets hold class indices {_show(vals)} outside [0, {n_out}) -- the model has "
                         f"{n_out} outputs (rows {_show(rows.tolist())}): relabel to 0..{n_out - 1}, give the model "
                         "more outputs, or pass a custom loss=")


def _check_losses_finite(model: torch.nn.Module, X: Tensor, y: Tensor, opt: dict[str, Any], step: int) -> None:
    """One forward pass over the training set, ``step`` rows at a time: per-sample losses at theta must be finite."""
    loss = resolve_loss(opt["loss"])
    bad = []
    with torch.no_grad():
        for rows in chunks(len(X), max(step, 1)):
            lo = loss(model(X[rows]), y[rows])
            bad.append(_bad_rows(lo.reshape(len(lo), -1)) + rows.start)
    idx = torch.cat(bad)
    if len(idx):
        raise ValueError(f"per-sample training losses at theta are NaN/inf for {len(idx)} training point(s), indices "
                         f"{_show(idx.tolist())}: the model's outputs overflow or the loss is undefined there; check "
                         "the input scale, the model's dtype, or the loss= function")


def _show(items: list) -> str:
    """At most MAX_SHOWN items, with '...' when there are more."""
    head = ", ".join(map(str, items[:MAX_SHOWN]))
    return f"[{head}{', ...' if len(items) > MAX_SHOWN else ''}]"


def methods() -> tuple[str, ...]:
    """The names of every method, in registry order (``ifkit.METHODS``)."""
    return tuple(REGISTRY)


__all__ = ["DEFAULTS", "check_finite", "methods", "pairwise", "prepare", "resolve", "score", "validate"]
