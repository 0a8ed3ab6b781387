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
import dataclasses
import difflib
import warnings
from typing import Any

import torch
from torch import Tensor

from . import estimate
from . import validation as checks
from .core.cache import GradCache
from .core.func import chunks, param_names, resolve_loss
from .core.grads import GradEngine, grad_chunk_rows
from .core.inputs import as_tensors, check_model_mode, match_dtype
from .core.options import Options
from .curvature.inverse import LEGACY_LISSA_PRODUCTS
from .curvature.solvers import check_damping
from .methods import REGISTRY
from .methods.flat import FINETUNE, FlatPoint
from .methods.flat import flat_point as point_of
from .methods.influence import self_if_kind

# Every option any method understands, with its default (the first family's where presets differ: VM's
# flat_optimizer "sgd", FVM's "lpf"). The options of a call are its method's own frozen type (REGISTRY[m].Options,
# declared beside the method's code); the names of every family are accepted by every method, as they always
# were, and unknown names are refused with a suggestion.
OPTION_ORDER = {k: i for i, k in enumerate((
    "damping", "iters", "tol", "scale", "lissa_batch", "lissa_products", "checkpoints", "lrs", "curvature",
    "ensemble_size", "gex_steps", "gex_lr", "gex_batch", "budget_mb", "budget_s", "cache_grads", "params", "loss", "chunk_size",
    "seed", "device", "progress", "flat_optimizer", "flat_steps", "flat_lr", "rho", "sigma", "flat_val",
    "curvature_val", "checkpoint", "at", "distributed", "candidates"))}
FAMILIES: tuple[type[Options], ...] = tuple(dict.fromkeys(m.Options for m in REGISTRY.values()))
DEFAULTS: dict[str, Any] = {f.name: f.default for cls in FAMILIES for f in dataclasses.fields(cls)
                            if f.name != "given"}
DEFAULTS = {k: DEFAULTS[k] for k in sorted(DEFAULTS, key=lambda k: OPTION_ORDER.get(k, len(OPTION_ORDER)))}


def resolve(method: str, options: dict[str, Any]) -> Options:
    """Parse ``ifkit.score`` keyword arguments into the method's frozen options type (REGISTRY[method].Options).

    Refuses unknown methods and options (naming the closest ones), and options that cannot apply, before any
    work; ``given`` records the names passed explicitly.
    """
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
    if options.get("checkpoint") is not None and method not in ("vm", "fvm"):
        raise TypeError(f"checkpoint= chooses where VM/FVM fine-tune on S_val; {method!r} does not use it (TracIn's "
                        "checkpoints go in checkpoints=)")
    damping = options.get("damping", DEFAULTS["damping"])
    if damping is not None and damping != "auto":
        check_damping(damping)
    if options.get("at") is not None:
        _check_at(method, options)
    options = _renamed(method, options)
    options = _checked_scalars(options)
    cls = REGISTRY[method].Options
    own = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in options.items() if k in own}, given=frozenset(options))


def _checked_scalars(options: dict[str, Any]) -> dict[str, Any]:
    """Scalar options refused before any work, naming the fix (ifkit/validation.py); the values given, cleaned
    (numpy / 0-d tensor integers as Python ints, a device as torch.device)."""
    merged = {**DEFAULTS, **options}
    cleaned = checks.check_options(
        damping=merged["damping"], seed=merged["seed"], device=merged["device"], budget_s=merged["budget_s"],
        counts={k: merged[k] for k in ("iters", "chunk_size", "ensemble_size", "gex_steps", "gex_batch")},
        nonnegative={"flat_steps": merged["flat_steps"]})
    return {**options, **{k: v for k, v in cleaned.items() if k in options}}


def _check_at(method: str, options: dict[str, Any]) -> None:
    """``at=`` is a theta~ of the same method, and replaces the fine-tuning: its options cannot be given too."""
    at = options["at"]
    if method not in ("vm", "fvm"):
        raise TypeError(f"at= is the fine-tuned theta~ VM/FVM score at; {method!r} does not use it")
    if not isinstance(at, FlatPoint):
        raise TypeError(f"at= takes the FlatPoint that ifkit.flat_point(...) returns, got {type(at).__name__}")
    if type(at.options) is not REGISTRY[method].Options:
        raise ValueError(f"at= was fine-tuned for {type(at.options).__name__[:-7].lower()!r}, not {method!r}: "
                         f"call ifkit.flat_point({method!r}, ...) for this method's theta~")
    again = [k for k in (*FINETUNE, "checkpoint", "flat_val") if options.get(k) is not None]
    if again:
        raise TypeError(f"at= is already fine-tuned: drop {', '.join(f'{k}=' for k in again)} (they were given to "
                        "ifkit.flat_point)")


def _renamed(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """Old spellings still accepted, with a warning naming the new one."""
    if method == "if-lissa" and options.get("curvature") is not None:
        products = LEGACY_LISSA_PRODUCTS.get(options["curvature"], "ggn")
        warnings.warn(f"if-lissa: curvature={options['curvature']!r} chose LiSSA's products; that option is now "
                      f"lissa_products={products!r} (curvature= will be ignored by if-lissa in a later release)",
                      DeprecationWarning, stacklevel=4)
        options = {**{k: v for k, v in options.items() if k != "curvature"}, "lissa_products": products}
    return options


FLAT_SETS = ("flat_val", "curvature_val")  # VM/FVM pairwise's own validation sets


def prepare(model: torch.nn.Module, train, other, opt: Options, other_name: str) -> GradEngine:
    """The inputs of one call checked, converted and placed, before any work: data of any accepted kind (core/
    inputs.py) as tensors, checkpoints of any accepted form as a list (validation.py), floating data cast once
    to the model's dtype (one warning), a model in training mode with BatchNorm/Dropout refused."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_model_mode(model)
    X, y = as_tensors(train, "train")
    Xv, yv = as_tensors(other, other_name)
    # -- refused here, before any work, with the fix in the message (ifkit/validation.py) --
    cps = checks.check_checkpoints(model, getattr(opt, "checkpoints", None), getattr(opt, "lrs", None))
    if cps is not None:  # one canonical form: a list of state_dicts or of (state_dict, lr) pairs
        opt = dataclasses.replace(opt, checkpoints=cps)
    checks.check_checkpoint(model, getattr(opt, "checkpoint", None))
    sets = {"train": (X, y), other_name: (Xv, yv)}
    extra = [k for k in ("candidates", *FLAT_SETS) if getattr(opt, k, None) is not None]
    sets.update({k: as_tensors(getattr(opt, k), k) for k in extra})  # data given as options: the same forms
    # flat_val / curvature_val may hold other sequence lengths than train (VM pairwise on generated text)
    sets = {**sets, **checks.check_inputs({k: v for k, v in sets.items() if k not in FLAT_SETS}, opt.loss)}
    # --
    if opt.device is not None:
        model = copy.deepcopy(model).to(opt.device)
        sets = {k: (a.to(opt.device), b.to(opt.device)) for k, (a, b) in sets.items()}
    p0 = next(model.parameters(), None)
    if p0 is not None and p0.is_floating_point():
        sets = match_dtype(sets, p0.dtype)  # float64 data for a float32 model: cast once, one warning
    dtype = p0.dtype if p0 is not None else X.dtype
    (X, y), (Xv, yv) = sets["train"], sets[other_name]
    checks.check_model_inputs(model, {"train": (X, y), other_name: (Xv, yv)}, opt.loss)  # one example
    validate(model, (X, y), (Xv, yv), opt, other_name)  # below: raises early, naming the fix
    if not opt.gave("chunk_size"):  # a (chunk, p) gradient block takes at most a quarter of budget_mb
        p = sum(model.get_parameter(n).numel() for n in param_names(model, opt.params))
        opt = dataclasses.replace(opt, chunk_size=grad_chunk_rows(p, dtype, opt.budget_mb))
    for k in extra:
        Xk, yk = (t.to(X.device) for t in sets[k])
        if k == "candidates":
            validate(model, (X, y), (Xk, yk), opt, "candidates")
        opt = dataclasses.replace(opt, **{k: (Xk, yk)})
    return GradEngine(model, X, y, Xv, yv, opt)


def score(method: str, model: torch.nn.Module, train, val, **options: Any) -> Tensor:
    """Score every training point: (n_train,) predicted increase of the mean validation loss when the point is
    up-weighted (self-influence methods: their harmfulness measure). HIGHER = MORE HARMFUL.

    Args:
        method: one of ``ifkit.METHODS``.
        model: a torch.nn.Module at the trained parameters theta*, in eval mode if it has BatchNorm / Dropout
            (a training-mode one is refused: call model.eval()); never modified.
        train: (X, y) tensors or numpy arrays, a torch Dataset of (x, y) pairs, or a DataLoader of (X, y)
            batches (read once, in its dataset's order: shuffling does not change the result). Floating data of
            another dtype than the model's is cast once to it, with one warning (ifkit/core/inputs.py).
        val: the clean validation set S_val, in any of the same forms.
        **options: see ``ifkit.api.DEFAULTS`` (damping, iters, scale, checkpoints, params, ...). ``checkpoints=``
            (TracIn; VM/FVM's ``checkpoint="best-val"``) takes a list of state_dicts, a list of (state_dict, lr)
            pairs, a {epoch: state_dict} dict (key order) or a list of modules -- one form. Each method reads
            them as its family's frozen options type (``ifkit.methods.REGISTRY[method].Options``). VM/FVM:
            ``at=ifkit.flat_point(...)`` scores at that theta~ instead of fine-tuning again.

    Under an initialised torch.distributed process group (e.g. torchrun), call it on every rank with the same
    arguments: each rank scores a shard of the training set and every rank returns the full, identical result
    (``distributed=False`` opts out; ``ifkit/core/distributed.py`` has the details).
    """
    opt = resolve(method, options)
    eng = prepare(model, train, val, opt, "val")
    return run(method, eng)


def run(method: str, eng: GradEngine) -> Tensor:
    """``method``'s scores on a prepared engine (its inputs checked, its options typed): (n_scored,)."""
    check_time(method, eng, pairwise=False)
    return check_finite(REGISTRY[method].score(eng), method)


def flat_point(method: str, model: torch.nn.Module, train, val, **options: Any) -> FlatPoint:
    """theta~ as a value: fine-tune a copy of ``model`` on ``val`` exactly as ``ifkit.score(method, ...)`` does.

    Pass it on as ``at=`` to ``ifkit.score`` / ``ifkit.pairwise`` / ``ifkit.diagnose`` (same method, same
    validation set) to score there without fine-tuning again; calls with the same curvature options share one
    validation curvature at theta~. Takes every ``ifkit.score`` option and checks the inputs as it does.
    """
    if method not in ("vm", "fvm"):
        raise ValueError(f"flat_point fine-tunes for the flat-validation-minimum scores: method must be 'vm' or "
                         f"'fvm', got {method!r}")
    return point_of(prepare(model, train, val, resolve(method, options), "val"))


def pairwise(method: str, model: torch.nn.Module, train, queries, **options: Any) -> Tensor:
    """(n_queries, n_train) predicted change of each query's loss when each training point is up-weighted.

    Negative = helpful (proponent), positive = harmful (opponent). ``train`` and ``queries`` take every form
    ``ifkit.score`` takes (tensors, numpy arrays, Datasets, DataLoaders); row q is the q-th query in order.
    """
    opt = resolve(method, options)
    fn = REGISTRY[method].pairwise
    if fn is None:
        has = [m for m, entry in REGISTRY.items() if entry.pairwise is not None]
        raise ValueError(f"method {method!r} is a self-influence score and has no pairwise form; use one of {has}")
    eng = prepare(model, train, queries, opt, "queries")
    check_time(method, eng, pairwise=True)
    return check_finite(fn(eng), method)


def check_time(method: str, eng: GradEngine, pairwise: bool) -> None:
    """Refuse a call estimated to take longer than budget_s, before any work (ifkit/estimate.py)."""
    o, prob = eng.opt, eng.prob
    if o.budget_s is None:  # no limit: no estimate either
        return
    with torch.no_grad():
        n_out = prob.forward(prob.theta, eng.Xv[:1]).numel()
    priced = {k: getattr(o, k, DEFAULTS[k]) for k in (
        "iters", "curvature", "flat_steps", "ensemble_size", "gex_steps", "gex_batch", "lissa_batch")}
    if method == "self-if":  # its default depends on the network (EK-FAC for Linear/conv ones that are too big)
        priced["curvature"] = self_if_kind(eng)
    seconds, dominant = estimate.estimate_call(
        method, lambda th, b: prob.losses(th, eng.X[:b], eng.y[:b]), prob.theta, pairwise=pairwise, n_train=eng.n,
        n_scored=eng.n_scored, n_other=len(eng.Xv), n_out=n_out, budget_mb=o.budget_mb, chunk=o.chunk_size,
        bytes_per_entry=prob.theta.element_size(), **priced, n_checkpoints=len(getattr(o, "checkpoints", None) or ()))
    what = f"ifkit.{'pairwise' if pairwise else 'score'}({method!r})"
    estimate.check_time(seconds, dominant, o.budget_s, what, estimate.fix_for(method, dominant, pairwise))


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
             opt: Options, other_name: str) -> None:
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
    if opt.loss == "cross_entropy":
        for name, (_, y) in sets.items():
            _check_class_targets(y, out, name)
    _check_losses_finite(model, *train, opt, _loss_rows(out, opt))


def _loss_rows(out: Tensor, opt: Options) -> int:
    """Rows per forward pass of the loss check: up to 4,096 (one big batch costs less than 16 of 256: measured
    42 -> 12 ms for 4,000 points of a 784-64-10 MLP), as long as their outputs stay within budget_mb / 16."""
    per_row = max(out.numel() * out.element_size(), 1) if isinstance(out, Tensor) else 1
    return max(int(opt.chunk_size), min(4096, int(opt.budget_mb * 2**20 / 16 // per_row)))


def _check_params_option(opt: Options) -> None:
    params = opt.params
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


def _check_losses_finite(model: torch.nn.Module, X: Tensor, y: Tensor, opt: Options, step: int) -> None:
    """One forward pass over the training set, ``step`` rows at a time: per-sample losses at theta must be finite."""
    loss = resolve_loss(opt.loss)
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


__all__ = ["DEFAULTS", "FAMILIES", "check_finite", "flat_point", "methods", "pairwise", "prepare", "resolve", "run", "score",
           "validate"]
