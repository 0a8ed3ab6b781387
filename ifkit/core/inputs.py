"""What users bring as data, turned into two stacked tensors (inputs X, targets y) in the order of the examples.

Accepted wherever ifkit takes a data set (``train=``, ``val=``, ``queries=``, ``candidates=``):

* a pair ``(X, y)`` of torch tensors or numpy arrays (mixed is fine), first axis the examples;
* a ``torch.utils.data.Dataset`` whose items are ``(x, y)`` pairs (a ``TensorDataset`` of two tensors is read
  without a Python loop);
* a ``torch.utils.data.DataLoader`` whose batches are ``(X, y)`` pairs. It is read ONCE, in the order of its
  dataset: a shuffling loader (``shuffle=True``) is read as if ``shuffle=False``, so the rows of every result
  follow ``loader.dataset`` (score i is example i), and ``drop_last`` drops nothing. A loader over an iterable
  dataset is read in the order it yields. Samplers that choose a subset or repeat examples (``SubsetRandomSampler``,
  ``WeightedRandomSampler``, a custom ``batch_sampler``) are refused: which example a row is would be unknown.

Cost: one pass over the data, copying it into memory once (ifkit works on in-memory tensors). Random transforms
inside a Dataset (augmentation) are applied once as read: turn them off for scoring.

Two checks on what comes with the data, run by every public call before any work: ``match_dtype`` casts
floating data of another dtype than the model's once, with one warning, and ``check_model_mode`` refuses a
model whose examples would interact (BatchNorm / Dropout in training mode) naming ``model.eval()``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import (
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    TensorDataset,
)

Data = tuple[Tensor, Tensor]

ACCEPTED = ("a pair (X, y) of tensors or numpy arrays, a torch Dataset of (x, y) pairs, or a DataLoader whose "
            "batches are (X, y) pairs")


def as_tensors(data: Any, name: str = "data") -> Data:
    """(X, y) stacked tensors for any accepted data (module docstring), rows in the order of the examples."""
    if isinstance(data, DataLoader):
        X, y = _drain(data, name)
    elif isinstance(data, (tuple, list)) and len(data) == 2 and all(_array_like(t) for t in data):
        X, y = (_tensor(t, name) for t in data)
    elif isinstance(data, TensorDataset) and len(data.tensors) == 2:
        X, y = data.tensors
    elif isinstance(data, Dataset) and not isinstance(data, IterableDataset):
        X, y = _stack([_pair(data[i], name, f"item {i}") for i in range(len(data))], name)  # type: ignore[arg-type]
    else:
        raise TypeError(f"{name} must be a pair (inputs, targets) of tensors or a torch Dataset -- {ACCEPTED} -- got "
                        f"{type(data).__name__}")
    if len(X) != len(y):
        raise ValueError(f"{name}: inputs have {len(X)} rows but targets have {len(y)}; they must match")
    if len(X) == 0:
        raise ValueError(f"{name} is empty: pass at least one example")
    return X, y


def _array_like(t: Any) -> bool:
    return isinstance(t, (Tensor, np.ndarray))


def _tensor(t: Any, name: str) -> Tensor:
    if isinstance(t, Tensor):
        return t
    if isinstance(t, np.ndarray) and t.dtype.kind not in "biuf":
        raise TypeError(f"{name} holds a numpy array of dtype {t.dtype}: give numbers (e.g. X.astype(np.float32), "
                        "y.astype(np.int64))")
    # a copy only for read-only arrays (torch warns on them); otherwise the tensor shares the array's memory
    return torch.as_tensor(t if not isinstance(t, np.ndarray) or t.flags.writeable else t.copy())


def _pair(item: Any, name: str, where: str) -> Data:
    if not (isinstance(item, (tuple, list)) and len(item) == 2):
        raise TypeError(f"{name}: {where} is a {type(item).__name__}, not an (inputs, targets) pair: make the "
                        f"Dataset return (x, y) -- {ACCEPTED}")
    try:
        return torch.as_tensor(item[0]), torch.as_tensor(item[1])
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"{name}: {where} holds a {type(item[0]).__name__} that is not a tensor ({e}): convert it in "
                        "the Dataset (e.g. torchvision.transforms.ToTensor())") from e


def _stack(pairs: list[Data], name: str) -> Data:
    if not pairs:
        raise ValueError(f"{name} is empty: pass at least one example")
    return torch.stack([x for x, _ in pairs]), torch.stack([t for _, t in pairs])


def _drain(loader: DataLoader, name: str) -> Data:
    """Every batch of ``loader`` once, concatenated; a shuffling loader is read in its dataset's order."""
    if not isinstance(loader.dataset, IterableDataset):
        sampler = loader.sampler
        plain_shuffle = (type(sampler) is RandomSampler and not sampler.replacement
                         and sampler.num_samples == len(loader.dataset))
        custom_batches = loader.batch_size is None and loader.batch_sampler is not None
        custom = custom_batches or not isinstance(sampler, (SequentialSampler, RandomSampler))
        if custom or (type(sampler) is RandomSampler and not plain_shuffle):
            raise ValueError(f"{name}: the DataLoader draws its examples with a {type(sampler).__name__}"
                             f"{' and a custom batch_sampler' if custom_batches else ''}, so which "
                             "example each row is would be unknown: pass the examples themselves, e.g. "
                             "torch.utils.data.Subset(dataset, indices), or DataLoader(dataset, batch_size=...)")
        if type(sampler) is not SequentialSampler or loader.drop_last:
            # the same loader in the dataset's order, every example kept: rows line up with loader.dataset
            loader = DataLoader(loader.dataset, batch_size=loader.batch_size, shuffle=False,
                                collate_fn=loader.collate_fn, num_workers=loader.num_workers)
    batches = [_pair(b, name, f"batch {j}") for j, b in enumerate(loader)]
    if not batches:
        raise ValueError(f"{name} is empty: the DataLoader gave no batch")
    if loader.batch_size is None:  # batching turned off: every "batch" is one example
        return _stack(batches, name)
    return torch.cat([x for x, _ in batches]), torch.cat([t for _, t in batches])


# ------------------------------------------------------------------------ the model's mode and dtype ---


def check_model_mode(model: nn.Module) -> None:
    """Refuse a model whose BatchNorm / Dropout layers would make one example's loss depend on the others or on
    chance: BatchNorm or Dropout (p > 0) in training mode, and BatchNorm without running statistics
    (``track_running_stats=False`` normalises with the batch's statistics even in eval mode).

    In eval mode BatchNorm's running mean and variance are buffers -- constants of the function scored -- so
    per-sample gradients are each example's own (tests/test_inputs.py checks them against a for-loop). O(#modules).
    """
    batch_norm = nn.modules.batchnorm._BatchNorm
    no_stats = [n for n, m in model.named_modules() if isinstance(m, batch_norm) and not m.track_running_stats]
    if no_stats:
        raise ValueError(f"BatchNorm layer(s) {_show(no_stats)} have track_running_stats=False: they normalise each "
                         "batch with its own statistics even after model.eval(), so one example's loss depends on "
                         "the others. Train with running statistics, or replace them (e.g. nn.GroupNorm)")
    training = [n or type(m).__name__ for n, m in model.named_modules() if m.training and (
        isinstance(m, batch_norm) or isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0)]
    if training:
        raise ValueError(f"the model is in training mode with BatchNorm/Dropout layer(s) {_show(training)}: their "
                         "outputs depend on the batch (BatchNorm) or on chance (Dropout), so influence is undefined. "
                         "Call model.eval() first: ifkit scores the eval-mode function, where BatchNorm's running "
                         "statistics are constants")


def match_dtype(sets: Mapping[str, tuple[Tensor, Tensor]], dtype: torch.dtype) -> dict[str, tuple[Tensor, Tensor]]:
    """Floating inputs (and floating targets: class probabilities, regression values) of another float dtype than
    the model's are cast ONCE to the model's dtype, with one warning naming the cast and how to avoid it (a
    float64 numpy array for a float32 model is the usual case; the model's dtype decides the arithmetic).
    Integer inputs (token ids) are left as they are. O(n) when a cast happens, else free."""
    cast, out = [], {}
    for name, (X, y) in sets.items():
        if X.is_floating_point() and X.dtype != dtype:
            cast.append(f"{name} inputs ({X.dtype})")
            X = X.to(dtype)
        if y.is_floating_point() and y.dtype != dtype:
            cast.append(f"{name} targets ({y.dtype})")
            y = y.to(dtype)
        out[name] = (X, y)
    if cast:
        warnings.warn(f"{', '.join(cast)} cast once to the model's {dtype}, which decides the arithmetic: convert "
                      f"them yourself (e.g. X.to({dtype}), np.asarray(X, np.{str(dtype)[6:]})) to silence this, or "
                      "convert the model (model.double()) to compute in float64", stacklevel=4)
    return out


def _show(items: list, at_most: int = 10) -> str:
    return f"[{', '.join(map(str, items[:at_most]))}{', ...' if len(items) > at_most else ''}]"


__all__ = ["ACCEPTED", "Data", "as_tensors", "check_model_mode", "match_dtype"]
