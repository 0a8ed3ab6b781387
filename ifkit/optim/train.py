"""Training loops: minibatch Adam/SGD with checkpoints (for TracIn), and full-batch L-BFGS (for the oracle).

Both loops train a deep copy and return it: the model you pass in is never modified, so one trained model
can be fine-tuned, perturbed and retrained many times in a notebook without surprises.

The objective of both loops is the paper's training risk plus an optional L2 penalty,

    R_tr(theta) = 1/n sum_i loss(z_i, theta)  +  weight_decay / 2 * ||theta||^2,

so that a model trained here is (approximately) a stationary point of exactly the function whose Hessian the
influence estimators invert. (``weight_decay`` is the coupled L2 of ``torch.optim.SGD/Adam``, not AdamW's
decoupled decay, for the same reason.)
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..core.func import LossFn, as_tensors, resolve_loss


@dataclass
class TrainResult:
    """What ``train`` returns.

    Attributes:
        model: the trained model (a deep copy of the input; the input is untouched).
        checkpoints: ``(state_dict, lr)`` pairs saved at evenly spaced epochs, the last one at the final
            epoch; ``lr`` is the learning rate used by the steps that led to the checkpoint (TracIn weights
            each checkpoint's gradient dot products by it).
        history: one row per epoch: epoch, train_loss, train_acc (and val_loss, val_acc when ``val`` was
            given), measured on the full sets at the end of the epoch. Losses exclude the L2 penalty.
    """

    model: nn.Module
    checkpoints: list[tuple[dict[str, Tensor], float]] = field(default_factory=list)
    history: pd.DataFrame = field(default_factory=pd.DataFrame)


def labelled_tensors(data, name: str, loss: str | LossFn = "cross_entropy") -> tuple[Tensor, Tensor]:
    """``func.as_tensors`` plus a target check: cross-entropy needs integer class ids (cast to int64).

    Float targets are refused rather than passed on: ``F.cross_entropy`` would read them as class
    probabilities (or fail deep inside torch with a shape error).
    """
    X, y = as_tensors(data, name)
    if isinstance(loss, str) and loss == "cross_entropy":
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise TypeError(
                f"{name}: cross-entropy targets must be integer class ids, got dtype {y.dtype}; "
                "pass y.long() (or a callable loss= for other targets)"
            )
        y = y.long()
    return X, y


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters(), None)
    if p is None:
        raise ValueError("the model has no parameters to train")
    return p.device, p.dtype


def to_model(X: Tensor, y: Tensor, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    # Floating inputs follow the model's dtype, so a float64 model (the oracle) can take float32 data.
    X = X.to(device=device, dtype=dtype if X.is_floating_point() else X.dtype)
    return X, y.to(device)


def state_copy(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def checkpoint_epochs(epochs: int, n_checkpoints: int) -> set[int]:
    """Evenly spaced epochs 1..epochs, always including the last (round(epochs * j / k) for j = 1..k)."""
    if n_checkpoints > epochs:
        raise ValueError(f"n_checkpoints={n_checkpoints} > epochs={epochs}: at most one checkpoint per epoch")
    return {round(epochs * j / n_checkpoints) for j in range(1, n_checkpoints + 1)}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    X: Tensor,
    y: Tensor,
    *,
    loss: str | LossFn = "cross_entropy",
    batch_size: int = 4096,
) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` on (X, y), in eval mode (the model's mode is restored after).

    Accuracy compares ``outputs.argmax(-1)`` with the targets, so it is token accuracy for (n, T, V) outputs.

    Returns:
        (mean loss, accuracy in [0, 1]).
    """
    loss_fn = resolve_loss(loss)
    device, dtype = model_device_dtype(model)
    was_training = model.training
    model.eval()
    total_loss, correct, count = 0.0, 0.0, 0
    try:
        for start in range(0, len(X), batch_size):
            xb, yb = to_model(X[start : start + batch_size], y[start : start + batch_size], device, dtype)
            out = model(xb)
            total_loss += loss_fn(out, yb).sum().item()
            hits = (out.argmax(-1) == yb).float()  # (n,) or (n, T) for sequences
            correct += (hits.flatten(1).mean(1) if hits.dim() > 1 else hits).sum().item()
            count += len(xb)
    finally:
        model.train(was_training)
    return total_loss / count, correct / count


def train(
    model: nn.Module,
    train: tuple[Tensor, Tensor] | torch.utils.data.Dataset,
    *,
    epochs: int,
    lr: float,
    batch_size: int = 128,
    optimizer: str = "adam",
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    seed: int = 0,
    n_checkpoints: int = 0,
    val: tuple[Tensor, Tensor] | torch.utils.data.Dataset | None = None,
    loss: str | LossFn = "cross_entropy",
    device: str | torch.device | None = None,
    progress: bool = True,
) -> TrainResult:
    """Minibatch training of a copy of ``model`` on ``train`` with Adam or SGD.

    Minimises 1/n sum_i loss(z_i, theta) + weight_decay/2 ||theta||^2 by reshuffled minibatches (the shuffling
    uses a ``torch.Generator`` seeded with ``seed``, so two calls with the same seed give bit-identical
    parameters on CPU). The learning rate is constant, so every checkpoint carries ``lr``.

    Args:
        model: the model to start from (deep-copied; never modified).
        train: ``(X, y)`` tensors or a Dataset of pairs.
        epochs: passes over the training set.
        lr: learning rate.
        batch_size: minibatch size (the last batch of an epoch may be smaller).
        optimizer: "adam" or "sgd".
        momentum: SGD momentum (ignored by Adam).
        weight_decay: coefficient of the L2 penalty weight_decay/2 ||theta||^2 (coupled, as in torch.optim).
        seed: seeds the minibatch order.
        n_checkpoints: number of ``(state_dict, lr)`` checkpoints for TracIn, evenly spaced over the epochs
            and ending at the last one (0: none).
        val: optional ``(Xv, yv)``; adds val_loss/val_acc to the history.
        loss: "cross_entropy" or a callable ``(outputs, targets) -> (n,)`` per-sample losses.
        device: where to train (default: where the model's parameters are).
        progress: show a tqdm bar over epochs.

    Returns:
        ``TrainResult(model, checkpoints, history)``.
    """
    if epochs < 1:
        raise ValueError(f"epochs={epochs}: train for at least one epoch")
    if lr <= 0 or not math.isfinite(lr):
        raise ValueError(f"lr={lr}: the learning rate must be a positive finite number")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    if n_checkpoints < 0:
        raise ValueError(f"n_checkpoints={n_checkpoints} must be >= 0")
    X, y = labelled_tensors(train, "train", loss)
    val_t = labelled_tensors(val, "val", loss) if val is not None else None
    loss_fn = resolve_loss(loss)
    model = copy.deepcopy(model)
    if device is not None:
        model = model.to(device)
    dev, dtype = model_device_dtype(model)
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    else:
        raise ValueError(f"optimizer={optimizer!r}: use 'adam' or 'sgd'")

    save_at = checkpoint_epochs(epochs, n_checkpoints) if n_checkpoints else set()
    gen = torch.Generator().manual_seed(seed)  # CPU generator: the order is the same on every device
    n = len(X)
    checkpoints: list[tuple[dict[str, Tensor], float]] = []
    rows = []
    bar = tqdm(range(1, epochs + 1), desc="train", disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        order = torch.randperm(n, generator=gen)  # (n,)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            xb, yb = to_model(X[idx], y[idx], dev, dtype)
            opt.zero_grad(set_to_none=True)
            loss_fn(model(xb), yb).mean().backward()
            opt.step()
        row = {"epoch": epoch}
        row["train_loss"], row["train_acc"] = evaluate(model, X, y, loss=loss_fn)
        if val_t is not None:
            row["val_loss"], row["val_acc"] = evaluate(model, *val_t, loss=loss_fn)
        rows.append(row)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", acc=f"{row['train_acc']:.3f}")
        if epoch in save_at:
            checkpoints.append((state_copy(model), opt.param_groups[0]["lr"]))
    return TrainResult(model=model, checkpoints=checkpoints, history=pd.DataFrame(rows))


def checkpoint_state(checkpoint) -> tuple[dict[str, Tensor], float | None]:
    """(state_dict, lr or None) of a saved checkpoint: a state_dict, or a (state_dict, lr) pair as ``train``
    saves them (the learning rate in force when it was saved)."""
    return checkpoint if isinstance(checkpoint, tuple) else (checkpoint, None)


def best_val_checkpoint(model: nn.Module, checkpoints, val, loss: str | LossFn = "cross_entropy"
                        ) -> tuple[int, list[float]]:
    """(index of the lowest mean loss on ``val``, every checkpoint's mean loss) among ``checkpoints``.

    Early stopping by validation loss over the states ``train(..., n_checkpoints=k)`` saved (state_dicts or
    (state_dict, lr) pairs; ties go to the earliest). ``model`` gives the architecture and is not modified.
    """
    Xv, yv = labelled_tensors(val, "val", loss)
    probe = copy.deepcopy(model)
    losses = []
    for c in checkpoints:
        probe.load_state_dict(checkpoint_state(c)[0])
        losses.append(evaluate(probe, Xv, yv, loss=loss)[0])
    return int(torch.tensor(losses).argmin()), losses


__all__ = ["TrainResult", "best_val_checkpoint", "checkpoint_epochs", "checkpoint_state", "evaluate", "labelled_tensors",
           "model_device_dtype", "to_model", "train"]
