"""Bad input is refused before any work, with a message that names the problem and the fix.

The public calls (``ifkit.score`` / ``ifkit.pairwise`` / ``ifkit.diagnose`` / ``ifkit.clean`` and the ``ifkit``
command) run these checks first. Each is a pure function of explicit arguments that raises ``ValueError`` (a
value out of range) or ``TypeError`` (a value of the wrong kind) and otherwise returns the value to use (e.g.
int32 class labels cast to int64). The contract -- every refused input and its message -- is pinned by
tests/test_bad_inputs.py; the numerical checks on the data (NaN/inf rows, labels out of range, devices) run
next, in ``ifkit.api.validate``.

Cost: the option checks are O(1); ``check_state_dicts`` reads every checkpoint once (keys, shapes, one finite
check per tensor); ``check_model_inputs`` runs the model on ONE example -- all before the first gradient.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ifkit.folders import check_writable_file, check_writable_folder  # re-exported: stdlib-only checks

SEED_LIMIT = 2**32  # seeds in [0, 2**32), as numpy's; offsets such as seed * 1000 + k stay far from int64's limit
SOFT_LABEL_ATOL = 1e-4  # |row sum - 1| tolerated in class-probability targets (float32 softmax: ~1e-7)


# ------------------------------------------------------------------------------------------------ options ---


def as_count(name: str, value: Any, *, minimum: int = 1, default: str = "None") -> int | None:
    """``value`` as an int >= ``minimum``; None passes (the method's default). Bools and floats are refused:
    ``iters=True`` or ``iters=1e3`` are typos, not counts."""
    if value is None:
        return None
    if isinstance(value, bool) or not _is_int(value):
        raise TypeError(f"{name}= takes an integer >= {minimum}, got {value!r} ({type(value).__name__}): pass e.g. "
                        f"{name}={max(minimum, 1) * 100 if name == 'iters' else max(minimum, 1)}, or {name}={default} "
                        "for the default")
    value = operator.index(value)
    if value < minimum:
        hint = " (0 does not mean 'the default')" if value == 0 and minimum > 0 else ""
        raise ValueError(f"{name}={value} is below {minimum}{hint}: pass an integer >= {minimum}, or {name}={default} "
                         "for the default")
    return value


def check_damping(damping: Any) -> float | str | None:
    """damping: a finite number >= 0, or None / "auto" (the method's own choice, e.g. DataInf's per layer)."""
    if damping is None or (isinstance(damping, str) and damping == "auto"):
        return damping
    if isinstance(damping, bool) or not isinstance(damping, (int, float)):
        raise TypeError(f"damping= takes a Python number >= 0 (e.g. damping=0.01), got {damping!r} "
                        f"({type(damping).__name__}): pass float(damping)")
    d = float(damping)
    if not math.isfinite(d) or d < 0:
        raise ValueError(f"damping={damping!r}: damping must be a finite number >= 0 -- lam in (H + lam I)^-1 "
                         "(docs/PAPER.md, Eq. 3); the L2 strength the model was trained with is the principled "
                         "choice, 0.01 the default")
    return d


def check_seed(seed: Any) -> int:
    """seed: an integer in [0, 2**32) (every stochastic method draws from its own generator seeded with it)."""
    if isinstance(seed, bool) or not _is_int(seed):
        raise TypeError(f"seed= takes an integer in [0, 2**32), got {seed!r} ({type(seed).__name__}): pass e.g. "
                        "seed=0")
    seed = operator.index(seed)
    if not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"seed={seed} is outside [0, 2**32): pass a non-negative integer below 4294967296, e.g. "
                         "seed=0")
    return seed


def check_device(device: Any) -> torch.device | None:
    """device: None (where the model is), or a torch.device / string naming a device this process can use."""
    if device is None:
        return None
    if isinstance(device, bool) or not isinstance(device, (str, torch.device)) and not _is_int(device):
        raise TypeError(f"device= takes a torch.device or a string such as 'cpu' or 'cuda:0', got {device!r} "
                        f"({type(device).__name__})")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError) as e:
        raise ValueError(f"device={device!r} is not a device name ({_first_line(e)}): use 'cpu', 'cuda', 'cuda:1', "
                         "'mps', or device=None to score where the model is") from e
    try:
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError, ValueError) as e:
        where = ("this torch build has no CUDA support" if dev.type == "cuda" and not torch.cuda.is_available()
                 else f"it cannot be used here ({_first_line(e)})")
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        raise ValueError(f"device={device!r}: {where}; CUDA devices visible: {gpus}. Pass device='cpu' (or a "
                         "visible device), or device=None to score where the model is") from e
    return dev


def check_budget_s(budget_s: Any) -> float | None:
    """budget_s: seconds a call may be estimated to take before it is refused; None: no limit."""
    if budget_s is None:
        return None
    if isinstance(budget_s, bool) or not _is_real(budget_s) or not float(budget_s) > 0:
        raise ValueError(f"budget_s={budget_s!r}: give a number of seconds > 0, or budget_s=None to run whatever "
                         "the estimate")
    return float(budget_s)


def check_options(*, damping: Any = None, seed: Any = 0, device: Any = None, budget_s: Any = None,
                  counts: Mapping[str, Any] | None = None, nonnegative: Mapping[str, Any] | None = None
                  ) -> dict[str, Any]:
    """Every scalar option at once: damping, seed, device, budget_s; ``counts`` (name -> value) must be ints >= 1
    (iters, chunk_size, ensemble sizes), ``nonnegative`` ints >= 0 (flat_steps: 0 = score at the model given).

    Returns the values to use, by name: Python ints for numpy / 0-d tensor integers, a torch.device, floats.
    """
    out = dict(damping=check_damping(damping), seed=check_seed(seed), budget_s=check_budget_s(budget_s))
    out.update({name: as_count(name, value, minimum=1) for name, value in (counts or {}).items()})
    out.update({name: as_count(name, value, minimum=0) for name, value in (nonnegative or {}).items()})
    out["device"] = check_device(device)
    return out


# ---------------------------------------------------------------------------------------------- checkpoints ---


CHECKPOINT_FORMS = ("a list of state_dicts [model.state_dict(), ...], a list of (state_dict, lr) pairs, a dict "
                    "{epoch: state_dict} (read in the order of its keys), or a list of nn.Modules of the model's "
                    "architecture")


def check_checkpoints(model: nn.Module, checkpoints: Any, lrs: Any = None, name: str = "checkpoints",
                      none_means: str = "use the model as given (TracIn then reduces to graddot)") -> list | None:
    """checkpoints=: None, or one of the forms of ``CHECKPOINT_FORMS``, all of ``model``'s architecture; ``lrs``
    (one learning rate per checkpoint) when given must match in length. One form per call: a mixture is refused.

    Returns the checkpoints as a list of state_dicts, or of (state_dict, lr) pairs (None stays None): a dict is
    read in the order of its sorted keys, a module gives its ``state_dict()`` (no copy: it is only read).
    """
    if checkpoints is None:
        return None
    if isinstance(checkpoints, Mapping):
        if checkpoints and all(isinstance(v, Tensor) for v in checkpoints.values()):
            raise TypeError(f"{name}= takes several checkpoints -- {CHECKPOINT_FORMS} -- but got one state_dict: "
                            f"wrap a single one as {name}=[model.state_dict()]")
        try:
            keys = sorted(checkpoints)
        except TypeError as e:
            raise TypeError(f"{name}= is a dict whose keys cannot be sorted ({_first_line(e)}): key it by epoch or "
                            f"step number, {{epoch: state_dict}}, or pass a list -- {CHECKPOINT_FORMS}") from e
        items = [checkpoints[k] for k in keys]
    elif isinstance(checkpoints, (str, bytes, nn.Module)) or not isinstance(checkpoints, Sequence):
        raise TypeError(f"{name}= takes {CHECKPOINT_FORMS}; got {type(checkpoints).__name__}: wrap a single one as "
                        f"{name}=[model.state_dict()]")
    else:
        items = list(checkpoints)
    if len(items) == 0:
        raise ValueError(f"{name}=[] holds no checkpoint: pass the saved state_dicts (ifkit.optim.train.train(..., "
                         f"n_checkpoints=k) saves them), or {name}=None to {none_means}")
    kinds = [_checkpoint_kind(c) for c in items]
    for j, (c, kind) in enumerate(zip(items, kinds)):
        if kind is None:
            raise TypeError(f"{name}[{j}] is a {type(c).__name__}, not a state_dict: give {CHECKPOINT_FORMS} "
                            "(save checkpoints with copy.deepcopy(model.state_dict()))")
        if kind == "pair" and (isinstance(c[1], bool) or not _is_real(c[1]) or not math.isfinite(float(c[1]))):
            raise TypeError(f"{name}[{j}] is a (state_dict, lr) pair whose lr is {c[1]!r}: give a finite number")
    if len(set(kinds)) > 1:
        first = {k: kinds.index(k) for k in dict.fromkeys(kinds)}
        mixed = ", ".join(f"{_KIND_NAMES[k]} ({name}[{j}])" for k, j in first.items())
        raise TypeError(f"{name}= mixes {mixed}: give one form for all of them -- {CHECKPOINT_FORMS}")
    out = [c.state_dict() if kinds[0] == "module" else c for c in items]
    if lrs is not None:
        if isinstance(lrs, (str, bytes)) or not isinstance(lrs, Sequence) or len(lrs) != len(out):
            got = len(lrs) if isinstance(lrs, Sequence) else type(lrs).__name__
            raise ValueError(f"lrs= must give one learning rate per checkpoint: {len(out)} checkpoints, lrs "
                             f"{got}")
    check_state_dicts(model, [c[0] if kinds[0] == "pair" else c for c in out], name)
    return out


_KIND_NAMES = {"state_dict": "state_dicts", "pair": "(state_dict, lr) pairs", "module": "nn.Modules"}


def _checkpoint_kind(c: Any) -> str | None:
    """"state_dict", "pair" ((state_dict, lr)), "module", or None for anything else."""
    if isinstance(c, nn.Module):
        return "module"
    if isinstance(c, Mapping):
        return "state_dict"
    if isinstance(c, tuple) and len(c) == 2 and isinstance(c[0], Mapping):
        return "pair"
    return None


def check_checkpoint(model: nn.Module, checkpoint: Any) -> None:
    """checkpoint= (VM/FVM's starting point): None, "best-val", "sum", or one state_dict of ``model``'s
    architecture."""
    if checkpoint is None or (isinstance(checkpoint, str) and checkpoint in ("best-val", "sum")):
        return
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"checkpoint={checkpoint!r}: give a state_dict, 'best-val' (among checkpoints=), 'sum' "
                         "(over checkpoints=) or None")
    check_state_dicts(model, [checkpoint], "checkpoint")


def check_state_dicts(model: nn.Module, states: Sequence[Mapping], name: str) -> None:
    """Every state has the model's keys, with tensors of the same shapes, and finite floating entries."""
    want = model.state_dict()
    for j, s in enumerate(states):
        where = f"{name}[{j}]" if name != "checkpoint" else name
        missing = [k for k in want if k not in s]
        extra = [k for k in s if k not in want]
        if missing or extra:
            raise ValueError(f"{where} does not fit the model: missing keys {_show(missing)}, unexpected keys "
                             f"{_show(extra)}. Save checkpoints from this architecture with "
                             "copy.deepcopy(model.state_dict()) (a wrapped model, e.g. DDP's 'module.' prefix, "
                             "needs the prefix stripped)")
        for k, t in want.items():
            v = s[k]
            if not isinstance(v, Tensor) or v.shape != t.shape:
                got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
                raise ValueError(f"{where}[{k!r}] has shape {got} but the model's has {tuple(t.shape)}: the "
                                 "checkpoint comes from a different architecture (layer sizes); save it from this one")
            if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                raise ValueError(f"{where}[{k!r}] holds NaN/inf: training had diverged when it was saved; drop "
                                 "that checkpoint")


# ------------------------------------------------------------------------------------------------ the data ---


def check_inputs(sets: Mapping[str, tuple[Tensor, Tensor]], loss: Any) -> dict[str, tuple[Tensor, Tensor]]:
    """Inputs of every set have the first set's per-example shape and kind; cross-entropy class labels of any
    integer dtype are cast to int64 (what the loss wants: int32 / uint8 labels are legitimate)."""
    first, (X0, _) = next(iter(sets.items()))
    cross_entropy = isinstance(loss, str) and loss == "cross_entropy"
    out = {}
    for name, (X, y) in sets.items():
        if X.shape[1:] != X0.shape[1:]:
            raise ValueError(f"{name} inputs are {tuple(X.shape[1:])} per example but {first} inputs are "
                             f"{tuple(X0.shape[1:])}: every set must have the same features (shape {tuple(X.shape)} "
                             f"vs {tuple(X0.shape)}); preprocess them the same way")
        if X.is_floating_point() != X0.is_floating_point():
            raise TypeError(f"{name} inputs are {X.dtype} but {first} inputs are {X0.dtype}: convert both the same "
                            "way (e.g. X.float() / 255 for 0-255 images)")
        if cross_entropy and not y.is_floating_point() and not y.is_complex() and y.dtype != torch.bool:
            y = y.long()
        out[name] = (X, y)
    return out


def check_model_inputs(model: nn.Module, sets: Mapping[str, tuple[Tensor, Tensor]], loss: Any) -> None:
    """Run the model on ONE example of the first set; refuse inputs it cannot take and targets whose shape the
    loss cannot pair with its outputs (class labels shaped (n, 1), soft labels that are not distributions).
    Sets on another device than the model are left to ``ifkit.api.validate`` (its device message)."""
    first, (X0, _) = next(iter(sets.items()))
    cross_entropy = isinstance(loss, str) and loss == "cross_entropy"
    p0 = next(model.parameters(), None)
    if p0 is None or any(t.device != p0.device for X, y in sets.values() for t in (X, y)):
        return
    try:
        with torch.no_grad():
            out = model(X0[:1])
    except Exception as e:  # noqa: BLE001 -- whatever torch raises, the user gets the input's shape and dtype
        raise _input_error(model, X0, first, e) from e
    if not isinstance(out, Tensor) or out.dim() < 2:
        return
    for name, (_, y) in sets.items():
        if cross_entropy:
            _check_target_shape(y, out, name)
        elif callable(loss):
            _try_loss(loss, out, y[:1], name)


def _input_error(model: nn.Module, X: Tensor, name: str, e: Exception) -> Exception:
    p0 = next(model.parameters())
    if not X.is_floating_point() and p0.is_floating_point():
        return TypeError(f"{name} inputs are {X.dtype} but the model computes in {p0.dtype} and fails on them "
                         f"({_first_line(e)}): convert them, e.g. X.to({p0.dtype}) / 255 for 0-255 images (whatever "
                         "scaling the model was trained with); integer inputs suit models that embed token ids")
    first = next((m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))), None)
    wants = ""
    if isinstance(first, nn.Linear):
        wants = f"; its first Linear layer takes {first.in_features} features"
    elif first is not None:
        wants = f"; its first {type(first).__name__} layer takes {first.in_channels} channels"
    return ValueError(f"the model cannot run on one {name} input of shape {tuple(X.shape[1:])} ({_first_line(e)})"
                      f"{wants}: give inputs shaped as the model was trained on (X has shape {tuple(X.shape)}: the "
                      "first axis is the examples)")


def _check_target_shape(y: Tensor, out: Tensor, name: str) -> None:
    """Cross-entropy: class indices shaped out.shape[:-1] per example, or class probabilities shaped like out."""
    per_example = tuple(out.shape[1:-1])  # () for (n, K) outputs, (T,) for (n, T, V) sequences
    if y.is_floating_point():
        if tuple(y.shape[1:]) == tuple(out.shape[1:]):
            _check_soft_labels(y, name)
        return  # other float targets: ifkit.api.validate says to use y.long() or a custom loss=
    if tuple(y.shape[1:]) != per_example:
        fix = "y.view(-1)" if not per_example and y[0].numel() == 1 else "targets of one class index per output"
        raise ValueError(f"{name} targets have shape {tuple(y.shape)} but the model gives {tuple(out.shape[1:])} "
                         f"outputs per example, so cross-entropy wants {(len(y), *per_example)} class indices: pass "
                         f"{name}=(X, {fix})")


def _check_soft_labels(y: Tensor, name: str) -> None:
    """Class probabilities: every entry >= 0 and every row summing to 1 (else the 'loss' is no cross-entropy)."""
    neg = (y < 0).reshape(len(y), -1).any(1)
    sums = y.sum(-1).reshape(len(y), -1)  # (n, ...) one sum per distribution
    off = ((sums - 1).abs() > SOFT_LABEL_ATOL).any(1)
    for bad, what in ((neg, "negative entries"), (off, "rows that do not sum to 1")):
        if bool(bad.any()):
            rows = bad.nonzero().flatten().tolist()
            raise ValueError(f"{name} targets are class probabilities with {what} (rows {_show(rows)}): soft labels "
                             "must be distributions; pass logits through y.softmax(-1), normalise with "
                             "y / y.sum(-1, keepdim=True), or give integer class indices")


def _try_loss(loss: Any, out: Tensor, y: Tensor, name: str) -> None:
    try:
        lo = loss(out, y)
    except Exception as e:  # noqa: BLE001 -- a custom loss: name it and the shapes it got
        raise ValueError(f"loss= fails on one {name} example: outputs {tuple(out.shape)}, targets {tuple(y.shape)} "
                         f"{y.dtype} ({_first_line(e)}): make loss(outputs, targets) return (n,) per-sample "
                         "losses for these shapes") from e
    if not isinstance(lo, Tensor) or lo.shape[:1] != (1,):
        got = tuple(lo.shape) if isinstance(lo, Tensor) else type(lo).__name__
        raise ValueError(f"loss= must return one loss per example, shape (n,); on one {name} example it returned "
                         f"{got}: use reduction='none' (e.g. F.cross_entropy(out, y, reduction='none'))")


# ------------------------------------------------------------------------------------------- ifkit.clean ---


def check_k(k: Any, n: int) -> int | float | None:
    """clean's k: None (estimate), a count in [0, n], or a fraction in (0, 1). Checked before any work."""
    if k is None:
        return None
    if isinstance(k, bool) or not (_is_int(k) or _is_real(k)):
        raise TypeError(f"k={k!r} ({type(k).__name__}): give a count (an int, e.g. k=10), a fraction of the "
                        "training set in (0, 1) (e.g. k=0.2), or k=None to flag the points theta~ misclassifies")
    if _is_int(k):
        k = operator.index(k)
        if not 0 <= k <= n:
            raise ValueError(f"k={k}: flag between 0 and n_train={n} points (or a fraction in (0, 1))")
        return k
    k = float(k)
    if not 0 < k < 1:
        raise ValueError(f"k={k}: a fraction must lie in (0, 1); give an int for a count (k={round(k)})")
    return k


# --------------------------------------------------------------------------------------------- the command ---


def check_readable_file(path: Path, flag: str) -> str | None:
    """A message when ``path`` is not an existing file (None when it is)."""
    if not path.exists():
        return f"{flag} {path} does not exist: give the path of a file saved with torch.save"
    if not path.is_file():
        return f"{flag} {path} is a folder, not a file: give the path of a file saved with torch.save"
    return None


def check_param_names(text: str | None) -> list[str] | None:
    """--params "a,b": the names; None when not given. An empty list is refused (it would mean 'all')."""
    if text is None:
        return None
    names = [s.strip() for s in text.split(",")]
    if not text.strip() or any(not s for s in names):
        raise ValueError(f"--params {text!r} holds an empty name: give comma-separated parameter names (e.g. "
                         "--params fc.weight,fc.bias), or leave --params out to use every trainable parameter")
    return names


# ----------------------------------------------------------------------------------------------- helpers ---


def _is_int(x: Any) -> bool:
    try:
        operator.index(x)
    except TypeError:
        return False
    return not isinstance(x, Tensor) or x.dim() == 0


def _is_real(x: Any) -> bool:
    try:
        float(x)
    except (TypeError, ValueError):
        return False
    return not isinstance(x, (str, bytes)) and (not isinstance(x, Tensor) or x.dim() == 0)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _show(items: list, at_most: int = 10) -> str:
    head = ", ".join(map(str, items[:at_most]))
    return f"[{head}{', ...' if len(items) > at_most else ''}]"


__all__ = ["as_count", "check_budget_s", "check_checkpoint", "check_checkpoints", "check_damping", "check_device",
           "check_inputs", "check_k", "check_model_inputs", "check_options", "check_param_names",
           "check_readable_file", "check_seed", "check_state_dicts", "check_writable_file", "check_writable_folder"]
