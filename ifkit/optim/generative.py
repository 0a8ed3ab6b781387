"""Training loops of the generation experiments' models, where ``train`` (minibatch epochs over fixed pairs, a
deep copy, an evaluation per epoch) does not fit:

* ``fit_conditional_vae``: a conditional VAE on the mean negative ELBO, with FRESH latent noise eps every batch
  (the inputs are re-packed per batch, so the (X, y) pairs of ``train`` do not exist up front);
* ``fit_steps``: a fixed number of Adam steps on random minibatches of a large pool, one-cycle learning rate (the
  text model's pretraining, where an epoch over the 20,000-example pool is not the unit);
* ``fit_classifier``: a small classifier in place, no per-epoch evaluation (the image style check's judge).

All three train the model IN PLACE (unlike ``train``) and are deterministic in ``seed`` on CPU: the experiments'
committed rows were produced by exactly these loops, step for step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..core.func import LossFn, cross_entropy
from .train import checkpoint_epochs, state_copy

Checkpoints = list[tuple[dict[str, Tensor], float]]


def fit_conditional_vae(model: nn.Module, images: Tensor, labels: Tensor, styles: Tensor | None = None, *,
                        loss: Callable[[Tensor, Tensor], Tensor], epochs: int, lr: float, seed: int,
                        n_checkpoints: int = 0, batch_size: int = 64, desc: str = "train",
                        progress: bool = True) -> Checkpoints:
    """Adam on the mean of ``loss`` over the trainable parameters, fresh noise eps ~ N(0, I) every batch.

    Per batch: inputs = ``model.pack(images, labels, eps, styles)`` (the conditional VAE's packed input, with
    ``model.latent`` noise dimensions), targets = the flattened images, minimise mean_i loss(model(inputs), targets).
    One ``torch.Generator`` seeded with ``seed`` draws both the batch order and the noise.

    Args:
        model: a conditional VAE (``ifkit.models.ConditionalVAE``: ``pack`` and ``latent``); trained in place, only
            its parameters with ``requires_grad`` (LoRA: the adapters).
        images: (n, 1, H, W) training images; labels: (n,) class ids; styles: (n,) style tokens or None.
        loss: (outputs, flattened images) -> (n,) per-sample loss (the negative ELBO per pixel).
        n_checkpoints: evenly spaced (state_dict, lr) checkpoints, the last at the final epoch (TracIn's input).

    Returns:
        The checkpoints (empty for n_checkpoints=0).
    """
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    targets = images.flatten(1)  # (n, H*W)
    save_at = checkpoint_epochs(epochs, n_checkpoints) if n_checkpoints else set()
    checkpoints: Checkpoints = []
    for epoch in tqdm(range(1, epochs + 1), desc=desc, disable=not progress, leave=False):
        order = torch.randperm(len(images), generator=gen)  # (n,)
        for start in range(0, len(images), batch_size):
            idx = order[start : start + batch_size]
            eps = torch.randn(len(idx), model.latent, generator=gen)  # (b, latent)
            opt.zero_grad(set_to_none=True)
            st = None if styles is None else styles[idx]
            loss(model(model.pack(images[idx], labels[idx], eps, st)), targets[idx]).mean().backward()
            opt.step()
        if epoch in save_at:
            checkpoints.append((state_copy(model), lr))
    return checkpoints


def fit_steps(model: nn.Module, X: Tensor, y: Tensor, *, steps: int, batch_size: int, lr: float, seed: int,
              loss: LossFn = cross_entropy, desc: str = "train", progress: bool = True) -> None:
    """``steps`` Adam steps in place, each on ``batch_size`` examples drawn with replacement from the pool (X, y).

    The learning rate follows a one-cycle schedule peaking at ``lr`` after 10% of the steps (warm-up, then cosine
    decay), so a short pretraining neither diverges at the start nor stops on a large step. The draws come from a
    ``torch.Generator`` seeded with ``seed``. Cost: ``steps`` forward/backward passes of one minibatch.
    """
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
        idx = torch.randint(0, len(X), (batch_size,), generator=gen)  # (batch_size,)
        opt.zero_grad(set_to_none=True)
        loss(model(X[idx]), y[idx]).mean().backward()
        opt.step()
        sched.step()


def fit_classifier(model: nn.Module, X: Tensor, y: Tensor, *, seed: int, epochs: int = 60, lr: float = 3e-3,
                   batch_size: int = 64) -> nn.Module:
    """Adam on the mean cross-entropy, reshuffled minibatches, in place (also under ``torch.no_grad``); returns
    ``model``. The batch order comes from a ``torch.Generator`` seeded with ``seed``."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    with torch.enable_grad():  # the style check calls it under no_grad
        for _ in range(epochs):
            order = torch.randperm(len(X), generator=gen)  # (n,)
            for start in range(0, len(X), batch_size):
                idx = order[start : start + batch_size]
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(X[idx]), y[idx]).backward()
                opt.step()
    return model


__all__ = ["fit_classifier", "fit_conditional_vae", "fit_steps"]
