"""Fine-tuning on S_val to the validation minimum theta~ that gives VM and FVM their name (paper Sec. 4).

VM/FVM compute influence at theta~ ~= argmin R_val^gamma, reached by fine-tuning a copy of the trained model on
the clean validation set:

* VM  -- plain (momentum) SGD on R_val;
* FVM -- a flat-minima optimiser (optim/sam.py): SAM, which descends R_val^gamma directly, or LPF-SGD, which
  descends the Gaussian-smoothed risk. Public summaries say the paper used LPF-SGD; the kit offers both.

``flat_finetune`` logs, along the way, the one-step SAM sharpness of the validation risk (``sam_sharpness``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..core.func import LossFn, param_names, resolve_loss
from .sam import LPFSGD, SAM, sam_sharpness
from .train import labelled_tensors

FLAT_OPTIMIZERS = ("sgd", "sam", "lpf", "adam")


@dataclass
class FlatResult:
    """What ``flat_finetune`` returns.

    Attributes:
        model: the fine-tuned deep copy (theta~); the input model is untouched.
        trajectory: one row per logged step: step, val_loss, val_acc, sharpness (one-step SAM estimate with
            radius rho), grad_norm (of the mean validation loss w.r.t. the tuned parameters).
        snapshots: state dicts at the logged steps when ``keep_snapshots=True`` (else empty).
    """

    model: nn.Module
    trajectory: pd.DataFrame
    snapshots: list[dict[str, Tensor]] = field(default_factory=list)


def make_optimizer(
    name: str, params: list[Tensor], lr: float, momentum: float, rho: float, sigma: float, seed: int
) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    if name == "sam":
        return SAM(params, torch.optim.SGD, rho=rho, lr=lr, momentum=momentum)
    if name == "lpf":
        return LPFSGD(params, lr=lr, sigma=sigma, M=1, momentum=momentum, seed=seed)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise ValueError(
        f"flat_optimizer={name!r}: choose one of {FLAT_OPTIMIZERS} ('sgd' = VM, 'sam'/'lpf' = FVM)"
    )


def flat_finetune(
    model: nn.Module,
    val: tuple[Tensor, Tensor] | torch.utils.data.Dataset,
    *,
    flat_optimizer: str = "sgd",
    flat_steps: int = 100,
    flat_lr: float = 0.01,
    rho: float = 0.05,
    sigma: float = 0.005,
    momentum: float = 0.9,
    batch_size: int | None = None,
    params: Sequence[str] | None = None,
    loss: str | LossFn = "cross_entropy",
    seed: int = 0,
    log_every: int = 10,
    keep_snapshots: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> FlatResult:
    """Fine-tune a copy of ``model`` on the validation set towards a (flat) validation minimum theta~.

        theta~ ~= argmin_theta R_val(theta)           flat_optimizer="sgd"  (VM; "adam" also available)
        theta~ ~= argmin_theta R_val^rho(theta)       flat_optimizer="sam"  (FVM, Foret et al. 2021)
        theta~ ~= argmin_theta E R_val(theta + eps)   flat_optimizer="lpf"  (FVM, Bisla et al. 2022)

    starting from the trained theta (the paper's VM/FVM, as we read it). R_val is the mean validation loss; the
    steps are full-batch on S_val by default (it is small), or minibatches of ``batch_size`` drawn by a
    generator seeded with ``seed``.

    Defaults (flat_lr=0.01, momentum 0.9, 100 full-batch steps), as measured: the validation loss falls
    steadily, without overshoot, on every model we tried -- a digits tanh MLP 64-128-10 trained to memorise
    30% noise (300 validation points): 0.85 -> 0.023; an under-fitting 64-32-10 one: 0.64 -> 0.15; a
    Fashion-MNIST 784-8-10 one (40% noise, 300 validation points): 2.17 -> 0.75, still falling, where
    flat_lr=0.03 reaches 0.44. Watch ``trajectory.val_loss``.

    Args:
        model: the trained model (deep-copied; its parameters, ``requires_grad`` flags and train/eval mode
            are left exactly as they were).
        val: ``(Xv, yv)`` tensors or a Dataset of pairs: the clean validation set S_val.
        flat_optimizer: "sgd" (VM), "sam" or "lpf" (FVM), or "adam".
        flat_steps: number of optimiser steps.
        flat_lr: learning rate.
        rho: SAM radius; also the radius of the logged one-step sharpness, for every optimiser.
        sigma: LPF-SGD relative noise scale (one noise sample per step).
        momentum: momentum of the SGD-based optimisers (ignored by Adam).
        batch_size: minibatch size; None = full batch on S_val.
        params: names of the parameters to tune (e.g. the last layer); the others stay frozen. Default: every
            parameter that requires grad in ``model``.
        loss: "cross_entropy" or a callable ``(outputs, targets) -> (n,)`` per-sample losses.
        seed: seeds the minibatch order and the LPF-SGD noise.
        log_every: log the trajectory every this many steps (plus step 0 and the last step).
        keep_snapshots: also keep a state dict at each logged step (for Fig. 3-style curves).
        device: where to fine-tune (default: where the model's parameters are).
        progress: show a tqdm bar over steps.

    Returns:
        ``FlatResult(model, trajectory, snapshots)``.
    """
    if flat_steps < 0:
        raise ValueError(f"flat_steps={flat_steps} must be >= 0")
    if not (flat_lr > 0 and math.isfinite(flat_lr)):
        raise ValueError(f"flat_lr={flat_lr}: the learning rate must be a positive finite number")
    if log_every < 1:
        raise ValueError(f"log_every={log_every} must be >= 1")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1 (or None for full batch)")
    Xv, yv = labelled_tensors(val, "val", loss)
    loss_fn = resolve_loss(loss)

    tuned_model = copy.deepcopy(model)
    if device is not None:
        tuned_model = tuned_model.to(device)
    named = dict(tuned_model.named_parameters())
    names = param_names(tuned_model, params)
    for n, p in named.items():  # only on the copy: the caller's flags are untouched
        p.requires_grad_(n in names)
        p.grad = None
    tuned = [named[n] for n in names]
    p0 = tuned[0]
    Xv = Xv.to(device=p0.device, dtype=p0.dtype if Xv.is_floating_point() else Xv.dtype)
    yv = yv.to(p0.device)

    opt = make_optimizer(flat_optimizer, tuned, flat_lr, momentum, rho, sigma, seed)
    gen = torch.Generator().manual_seed(seed)
    n_val = len(Xv)
    order, cursor = torch.randperm(n_val, generator=gen), 0

    def next_batch() -> tuple[Tensor, Tensor]:
        nonlocal order, cursor
        if batch_size is None or batch_size >= n_val:
            return Xv, yv
        if cursor + batch_size > n_val:  # reshuffle once the epoch runs out
            order, cursor = torch.randperm(n_val, generator=gen), 0
        idx = order[cursor : cursor + batch_size]
        cursor += batch_size
        return Xv[idx], yv[idx]

    rows, snapshots = [], []

    def log(step: int) -> None:
        stats = sam_sharpness(tuned_model, (Xv, yv), rho, loss=loss_fn, params=names)
        rows.append(
            {
                "step": step,
                "val_loss": stats["loss"],
                "val_acc": stats["acc"],
                "sharpness": stats["sharpness"],
                "grad_norm": stats["grad_norm"],
            }
        )
        if keep_snapshots:
            snapshots.append({k: v.detach().clone() for k, v in tuned_model.state_dict().items()})

    log(0)
    bar = tqdm(range(1, flat_steps + 1), desc=f"flat-{flat_optimizer}", disable=not progress, leave=False)
    for step in bar:
        xb, yb = next_batch()

        def closure(xb: Tensor = xb, yb: Tensor = yb) -> Tensor:
            opt.zero_grad(set_to_none=True)
            batch_loss = loss_fn(tuned_model(xb), yb).mean()
            batch_loss.backward()
            return batch_loss

        if flat_optimizer in ("sam", "lpf"):
            opt.step(closure)
        else:
            closure()
            opt.step()
        if step % log_every == 0 or step == flat_steps:
            log(step)
            bar.set_postfix(val_loss=f"{rows[-1]['val_loss']:.4f}")

    for n, p in named.items():  # hand back a model with the caller's requires_grad flags
        p.requires_grad_(model.get_parameter(n).requires_grad)
        p.grad = None
    return FlatResult(model=tuned_model, trajectory=pd.DataFrame(rows), snapshots=snapshots)


__all__ = ["FLAT_OPTIMIZERS", "FlatResult", "flat_finetune", "make_optimizer"]
