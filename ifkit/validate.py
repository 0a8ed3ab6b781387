"""Input checks run once before any method: each error names the problem and the fix.

``validate`` is called by ``ifkit.score`` / ``ifkit.pairwise`` (``estimators._prepare``) after the data are
stacked, moved to ``device=`` and cast to the model's dtype. It costs one forward pass over the training set
(to find non-finite per-sample losses) plus one forward pass on a single example (to read the number of outputs).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .func import chunks, resolve_loss

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
    if opt["loss"] == "cross_entropy":
        with torch.no_grad():
            out = model(train[0][:1])  # one example: the number of outputs (classes, or vocabulary size)
        for name, (_, y) in sets.items():
            _check_class_targets(y, out, name)
    _check_losses_finite(model, *train, opt)


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


def _check_losses_finite(model: torch.nn.Module, X: Tensor, y: Tensor, opt: dict[str, Any]) -> None:
    """One forward pass over the training set: per-sample losses at theta must be finite."""
    loss = resolve_loss(opt["loss"])
    bad = []
    with torch.no_grad():
        for rows in chunks(len(X), max(int(opt["chunk_size"]), 1)):
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
