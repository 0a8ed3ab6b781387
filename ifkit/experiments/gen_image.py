"""Influential-data identification for an image generator: which training images taught it a query's style?

DataInf's protocol (Kwon et al. 2024, Sec. 4.3; the paper's generation experiment), scaled to a CPU:

1. A small generator is pretrained on PLAIN images: a conditional VAE (``ifkit.models.ConditionalVAE``, Linear
   layers only) on Fashion-MNIST downsampled to 16x16 (FAST: scikit-learn's 8x8 digits). The condition plays the
   prompt: "a <class>", or "a <class> in style <s>" with a style token (token 0 = plain).
2. LoRA adapters (rank 2, on every Linear layer, only the adapters trainable) are fine-tuned on a mixture of 6
   styles (FAST: 4), ``n_train_per_style`` training and ``n_val_per_style`` validation images per style
   (100 + 25; the paper: 200 + 50). Two variants (``CONFIGS[mode][variant]``):

   * "protocol" (``OVERLAYS``): a fixed pattern drawn over every image of the style (frame, dots, grid lines, a
     corner stamp, hatching, a paper texture), and the prompt names the style. A style's images share pixels, as
     the images of an artistic style share a texture or palette, and DataInf's style prompts name the style.
   * "harder" (``TRANSFORMS``): a transformation of each image's content (inverted, outlined, blurred, striped,
     checker, flipped) and no style token: no pixel is the same across a style's images.
3. For every validation image (the query), ``ifkit.pairwise`` ranks the training images over the DECODER's
   adapters (``attributed``); most helpful = most negative first. Ground truth: a training image is relevant when
   it has the query's style. Per query: ROC AUC (score = -pairwise, same style = positive), the recall of
   same-style images among the top k (k = the number of same-style training images) and the share of same-style
   images among the top 5 (precision5); all averaged over queries.

The per-sample loss is the VAE's negative ELBO per pixel at the posterior mean (eps = 0), a deterministic function
of the adapters; DataInf fixes its diffusion noise instead, and a fixed random eps here adds a random term to each
example's gradient that buries the style (``attribution_sets(noise=True)``). Training draws fresh noise every step.

Why the decoder's adapters, and what carries the signal (FULL protocol, seed 0, graddot AUC; a sweep, each
line changing one thing): a gradient dot product finds a style when the style's images share a component of their
gradients -- a residual the adapters have not fit away and that every image of the style has, such as the
pattern's pixels. The encoder's adapters take the pixels as their input, so their gradients compare content: at
lr 1e-2 and 60 epochs, over all adapters 0.82, over the decoder's 0.93 (LoRA on the decoder only: 0.67 -- the
frozen encoder cannot pass the style on). The style token is not what the gradient sees: without it the same
overlays give 0.985 (with: 0.93), and the content transformations with a token 0.59 (without: 0.71); with a
token the adapters learn the style from the token, and less of it stays in the residual. The signal shrinks as
the adapters fit better: 30 / 60 / 100 epochs 0.92 / 0.93 / 0.82, rank 4 0.77, rank 1 0.76, 200 images per style
0.71; lr 3e-3 with 60 epochs (used) 0.957. The settings were picked on seed 0 from this sweep; the numbers below
are 3 seeds. The adapters do not learn every style (``style_check``: gridded and speckle are hardly recognised in
samples); at rank 2 for 6 styles they cannot.

Measured (FULL, 3 seeds, per-query means; mean +- sd over seeds; ``results/generation.csv``):

    AUC          graddot  gradcos  tracin  datainf  if-lissa   vm     fvm
    protocol      0.938    0.942   0.963    0.948    0.970    0.975  0.975   (sd 0.005-0.026; seed 2 is lowest)
    harder        0.716    0.730   0.745    0.728    0.753    0.753  0.753   (sd 0.009-0.021)
    precision5 protocol 0.945-0.986 for every method; harder graddot 0.76, tracin 0.77, datainf 0.83, if-lissa /
    vm / fvm 0.86, gradcos 0.91.

The protocol target of AUC >= 0.95 for the gradient methods is met by TracIn, DataInf, LiSSA, VM and FVM but not
by the plain gradient dot product or cosine (0.938 / 0.942: seeds 0 and 1 give 0.948-0.958, seed 2 0.91). On the
harder variant the second-order methods (LiSSA, VM, FVM: equal) lead; they beat graddot in every seed (by
0.02-0.05) but TracIn only on average (0.753 vs 0.745, within a seed's spread). VM = FVM to 1e-4: the flat
fine-tuning barely moves theta~ here. Seed 2, the lowest protocol AUC for graddot, also has the best-fit adapters
(validation negative ELBO 0.446 vs 0.470 / 0.464), as the residual reading above expects. Run time
(``attribution_loss``, ``cache_grads``, TracIn per checkpoint, a vectorised AUC; the same numbers to 7e-7 as
before them): 50 s on one core beside gen-text on the other (``ifkit reproduce gen-text,gen-image --jobs 2``,
quiet 2-core machine), down from 114 s (median of 2 runs each: LiSSA 14 s, VM 11, FVM 11, pretraining 6, LoRA
5.5, style check 2; the other four methods 1 s together); --fast 4 s.

Closer to DataInf, measured on all 3 seeds after the settings were fixed (mean AUC graddot / gradcos / tracin /
datainf / if-lissa / vm / fvm): 200 + 50 images per style (DataInf's counts) 0.876 / 0.884 / 0.952 / 0.912 /
0.941 / 0.957 / 0.957; 3 styles x (200 + 50) (DataInf's 3 styles and 600 + 150 images; the first three overlays)
0.735 / 0.742 / 0.826 / 0.740 / 0.774 / 0.774 / 0.774; influence over all adapters (DataInf: every LoRA of the
UNet) 0.776 / 0.792 / 0.800 / 0.803 / 0.927 / 0.973 / 0.973. None lifts the gradient methods: more images per
style fit the styles better, all adapters add the encoder's content gradients. What sets graddot's AUC is the
share of a style's training gradients its mean carries: per (seed, style), ||mean g||^2 / mean ||g - mean g||^2
correlates with graddot's per-style AUC at r = 0.83 (18 pairs); seed 2 has the lowest mean ratio (0.38 vs 0.62 /
0.55), and "framed", the best-learned style, the lowest in every seed (0.13-0.22; AUC 0.80-0.87). DataInf's own
Stable-Diffusion style notebook (ykwon0407/DataInf, notebooks/Influential_Data_Identification-
Stable_Diffusion-Style_Transfer.ipynb) prints AUC 0.612 for the gradient dot product and 0.599 for DataInf.

Curvature for VM/FVM: the targets are images, not class ids, so ``ifkit.curvature.val_inverse.ValInverse`` cannot use
its low-rank (Woodbury) Gauss-Newton path (that needs one class id per example, and r = n_val x 272 outputs
would exceed p anyway). We pass ``curvature="ggn"``: the dense Gauss-Newton matrix of the validation loss over
the p attributed adapter parameters, PSD because the negative ELBO is convex in the model's outputs (pixel
logits, mu, logvar), and exact, since p is small (~800). The Hessian itself ("exact") can be indefinite here.

Outputs (``out/``):

* ``generation.csv``: task="style", variant, seed, method, auc, recall, precision5 + n_train, n_queries, seconds,
  mode, n_params, n_styles, style_prompt (key: task, variant, seed, method; the text generation experiment
  writes its own tasks into the same file).
* ``generation_image_examples.csv``: for a few queries per variant and seed, the top-5 training indices of each
  method, with what is needed to rebuild the images (``build_data(CONFIGS[mode][variant], seed)``).
* ``generation_image_styles.csv``: did the generator learn the styles? Per variant, seed and style: the validation
  negative ELBO before and after LoRA, and how often a small style classifier trained on real styled images
  recognises the style in the model's reconstructions (before/after) and in prior samples.
"""

from __future__ import annotations

import copy
import fnmatch
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.stats import rankdata
from torch import Tensor
from tqdm.auto import tqdm

import ifkit
from ifkit.data import balanced_indices, load_digits, load_fashion_mnist
from ifkit.experiments import register
from ifkit.models import MLP, ConditionalVAE, add_lora, lora_names
from ifkit.results import ResultsTable

TASK = "style"
FILENAME = "generation.csv"
EXAMPLES_FILENAME = "generation_image_examples.csv"
STYLES_FILENAME = "generation_image_styles.csv"
KEY = ["task", "variant", "seed", "method"]  # shared with gen-text (tasks sentence, math) in the same file
REQUIRED = ["auc", "recall"]  # every row written here has precision5; text rows from before it may lack it
TOP = 5  # training images kept per query and method for the figure


# ------------------------------------------------------------------------------------------------ styles
def _invert(x: Tensor) -> Tensor:
    return 1 - x


def _outline(x: Tensor) -> Tensor:
    """Morphological gradient (3x3 dilation - erosion): the edges of the shape, rescaled to a maximum of 1."""
    edge = F.max_pool2d(x, 3, 1, 1) + F.max_pool2d(-x, 3, 1, 1)  # dilation - erosion, (n, 1, H, W)
    return edge / edge.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)


def _blur(x: Tensor) -> Tensor:
    """Two passes of the 3x3 binomial filter (edges replicated)."""
    k = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype)
    k = (k[:, None] * k[None, :] / 16).view(1, 1, 3, 3)
    for _ in range(2):
        x = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k)
    return x


def _stripes(x: Tensor) -> Tensor:
    """Every other row dimmed to 20%."""
    rows = torch.arange(x.shape[-2]) % 2 == 0
    return x * torch.where(rows, 1.0, 0.2).to(x.dtype).view(1, 1, -1, 1)


def _checker(x: Tensor) -> Tensor:
    """A checkerboard of 2x2 blocks, every other block dimmed to 20%."""
    i = torch.arange(x.shape[-2]).view(-1, 1) // 2
    j = torch.arange(x.shape[-1]).view(1, -1) // 2
    return x * torch.where((i + j) % 2 == 0, 1.0, 0.2).to(x.dtype)


def _flip(x: Tensor) -> Tensor:
    return x.flip(-2)  # upside down


def _pattern(size: int, kind: str) -> Tensor:
    """(size, size) fixed pattern in [0, 1], the same for every image of a style (a look the style shares)."""
    i, j = torch.arange(size).view(-1, 1), torch.arange(size).view(1, -1)
    if kind == "speckle":  # a fixed random paper texture
        return (torch.rand(size, size, generator=torch.Generator().manual_seed(7)) > 0.8).float() * 0.8
    masks = {"framed": (i == 0) | (j == 0) | (i == size - 1) | (j == size - 1),  # a one-pixel frame
             "dotted": (i % 4 == 1) & (j % 4 == 1),  # a grid of dots
             "gridded": (i % 5 == 2) | (j % 5 == 2),  # grid lines (70% bright)
             "stamped": (i < size // 4) & (j < size // 4),  # a square stamp in the corner, like a watermark
             "hatched": (i + j) % 6 == 0}  # diagonal hatching
    return masks[kind].float() * (0.7 if kind == "gridded" else 1.0)


def _overlay(kind: str) -> Callable[[Tensor], Tensor]:
    def apply(x: Tensor) -> Tensor:
        return torch.maximum(x, _pattern(x.shape[-1], kind).to(x))  # the pattern drawn over the image

    apply.__name__ = f"_overlay_{kind}"
    return apply


# Transformations of the content (the "harder" variant: no pixel is the same across a style's images) ...
TRANSFORMS: dict[str, Callable[[Tensor], Tensor]] = {
    "inverted": _invert,
    "outlined": _outline,
    "blurred": _blur,
    "striped": _stripes,
    "checker": _checker,
    "flipped": _flip,
}
# ... and overlays (the "protocol" variant: every image of a style shares its pattern's pixels).
OVERLAYS: dict[str, Callable[[Tensor], Tensor]] = {
    k: _overlay(k) for k in ("framed", "dotted", "gridded", "stamped", "hatched", "speckle")}
STYLES: dict[str, Callable[[Tensor], Tensor]] = {**TRANSFORMS, **OVERLAYS}


def stylize(images: Tensor, style: str) -> Tensor:
    """Apply one style to (n, 1, H, W) images in [0, 1]; deterministic, same shape, values in [0, 1]."""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; choose from {list(STYLES)}")
    return STYLES[style](images).clamp(0, 1)


# ------------------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class Config:
    """Sizes of one run (``CONFIGS[mode][variant]``: mode "fast" for CI, "full" for the reported numbers)."""

    dataset: str  # "fashion" (downsampled to image_size) or "digits" (8x8)
    image_size: int
    styles: tuple[str, ...]
    n_train_per_style: int
    n_val_per_style: int
    n_pretrain: int  # plain images for pretraining
    pretrain_epochs: int
    lora_epochs: int
    lora_rank: int = 2
    lora_lr: float = 3e-3
    lora_targets: tuple[str, ...] = ("*",)  # adapters on every Linear layer (encoder and decoder)
    attribute: tuple[str, ...] = ("dec.*",)  # the adapters influence is computed over: the decoder's (docstring)
    hidden: int = 64
    latent: int = 8
    n_checkpoints: int = 5  # TracIn checkpoints along the LoRA fine-tuning
    methods: tuple[str, ...] = ("graddot", "gradcos", "tracin", "datainf", "if-lissa", "vm", "fvm")
    lissa_iters: int = 30  # as gen-text; 100 took a third of the full run and moved AUC by < 0.005
    lissa_batch: int = 32  # mini-batch curvature products: full-batch LiSSA over all queries was ~25x slower
    n_examples: int = 2  # queries per style kept in the examples file (for the figure)
    n_samples: int = 50  # prior samples per style classified for the style check
    style_prompt: bool = True  # the condition names the style ("a <class> in style <s>"), as trigger words do
    variant: str = "protocol"  # the label written to generation.csv

    @property
    def n_train(self) -> int:
        return len(self.styles) * self.n_train_per_style

    @property
    def n_val(self) -> int:
        return len(self.styles) * self.n_val_per_style


# "protocol" (DataInf's: every image of a style shares the style's look, and the prompt names the style) and
# "harder" (a style is a transformation of each image's content, and the prompt does not name it).
_FULL = Config(dataset="fashion", image_size=16, styles=tuple(OVERLAYS), n_train_per_style=100,
               n_val_per_style=25, n_pretrain=4000, pretrain_epochs=15, lora_epochs=60)
_FAST = Config(dataset="digits", image_size=8, styles=tuple(OVERLAYS)[:4], n_train_per_style=40,
               n_val_per_style=10, n_pretrain=1000, pretrain_epochs=20, lora_epochs=40, hidden=32)


def _harder(cfg: Config, n_styles: int) -> Config:
    return replace(cfg, styles=tuple(TRANSFORMS)[:n_styles], style_prompt=False, variant="harder")


CONFIGS = {"full": {"protocol": _FULL, "harder": _harder(_FULL, 6)},
           "fast": {"protocol": _FAST, "harder": _harder(_FAST, 4)}}
FULL, FAST = CONFIGS["full"]["protocol"], CONFIGS["fast"]["protocol"]
VARIANTS = tuple(CONFIGS["full"])


# ------------------------------------------------------------------------------------------------ data
@dataclass
class StyleData:
    """Plain images for pretraining and the styled LoRA training / validation sets.

    Attributes:
        pretrain: (images (m, 1, H, W), class labels (m,)) plain images.
        X_train, c_train, s_train: styled training images, their class labels (the prompt) and style ids.
        X_val, c_val, s_val: the same for validation (the queries).
        styles: style names; ``s_*`` index into it.
    """

    pretrain: tuple[Tensor, Tensor]
    X_train: Tensor
    c_train: Tensor
    s_train: Tensor
    X_val: Tensor
    c_val: Tensor
    s_val: Tensor
    styles: tuple[str, ...]


def _raw_images(cfg: Config, n: int, seed: int) -> tuple[Tensor, Tensor]:
    """n class-balanced plain images at cfg.image_size, in random order."""
    if cfg.dataset == "fashion":
        X, y = load_fashion_mnist("train", n=n, seed=seed)  # (n, 1, 28, 28)
        if cfg.image_size != 28:
            X = F.interpolate(X, size=(cfg.image_size, cfg.image_size), mode="area")
        return X, y
    if cfg.dataset == "digits":
        X, y = load_digits()
        if cfg.image_size != 8:
            raise ValueError(f"digits are 8x8: use image_size=8, not {cfg.image_size}")
        idx = balanced_indices(y.numpy(), n, np.random.default_rng(seed))
        return X[idx], y[idx]
    raise ValueError(f"unknown dataset {cfg.dataset!r}: use 'fashion' or 'digits'")


def build_data(cfg: Config, seed: int) -> StyleData:
    """Draw every image of one seed; deterministic in (cfg, seed), so figures can rebuild the images.

    Each styled image comes from a different plain image (no image appears in two styles or in pretraining);
    the training set is shuffled so that styles are interleaved.
    """
    per = cfg.n_train_per_style + cfg.n_val_per_style
    X, y = _raw_images(cfg, cfg.n_pretrain + len(cfg.styles) * per, seed)
    pre = (X[: cfg.n_pretrain], y[: cfg.n_pretrain])
    parts = {"train": ([], [], []), "val": ([], [], [])}
    for s, style in enumerate(cfg.styles):
        lo = cfg.n_pretrain + s * per
        Xs, ys = stylize(X[lo : lo + per], style), y[lo : lo + per]
        for name, sl in (("train", slice(0, cfg.n_train_per_style)), ("val", slice(cfg.n_train_per_style, per))):
            parts[name][0].append(Xs[sl])
            parts[name][1].append(ys[sl])
            parts[name][2].append(torch.full((len(ys[sl]),), s, dtype=torch.long))
    (Xt, ct, st), (Xv, cv, sv) = ([torch.cat(p) for p in parts[k]] for k in ("train", "val"))
    perm = torch.randperm(len(Xt), generator=torch.Generator().manual_seed(seed))
    return StyleData(pre, Xt[perm], ct[perm], st[perm], Xv, cv, sv, tuple(cfg.styles))


# ------------------------------------------------------------------------------------------------ training
loss_fn = ConditionalVAE.negative_elbo  # (outputs, flattened images) -> (n,) negative ELBO per pixel


def attribution_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    """``loss_fn`` for the influence methods: the same (n,) values, bit for bit, ~2.3x faster under torch.func.

    The Bernoulli cross-entropy is written as (1 - x) * logits - logsigmoid(logits), the formula of torch's own
    kernel (equal values). torch's fused ``binary_cross_entropy_with_logits`` runs slowly under the methods'
    vmapped JVPs (tangents = columns; 29 s of the full run's 94 s of attribution inside that one op, profiled):
    seed 0's seven methods took 19.1 s with it, 8.2 s with this (same rankings; scores equal to 1e-6 relative).
    Training keeps ``loss_fn`` (its backward differs from this one's in the last bit).
    """
    D = targets.shape[1]
    logits, mu, logvar = outputs[:, :D], *outputs[:, D:].chunk(2, dim=1)
    recon = ((1 - targets) * logits - F.logsigmoid(logits)).sum(1)  # (n,)
    kl = 0.5 * (mu**2 + logvar.exp() - logvar - 1).sum(1)  # (n,)
    return (recon + kl) / D


def _tokens(model: ConditionalVAE, styles: Tensor | None) -> Tensor | None:
    """Style ids 0..S-1 -> the model's style tokens 1..S (token 0 = "plain"); None without style tokens."""
    return None if styles is None or not model.n_styles else styles + 1


def _fit(model: ConditionalVAE, images: Tensor, labels: Tensor, styles: Tensor | None = None, *, epochs: int,
         lr: float, seed: int,
         n_checkpoints: int = 0, batch_size: int = 64, desc: str = "train",
         progress: bool = True) -> list[tuple[dict[str, Tensor], float]]:
    """Adam on the mean negative ELBO over the trainable parameters, fresh noise eps every batch (in place).

    Returns ``n_checkpoints`` evenly spaced (state_dict, lr) pairs, the last one at the end (TracIn's input).
    """
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    targets = images.flatten(1)  # (n, H*W)
    save_at = {round(epochs * j / n_checkpoints) for j in range(1, n_checkpoints + 1)} if n_checkpoints else set()
    checkpoints = []
    for epoch in tqdm(range(1, epochs + 1), desc=desc, disable=not progress, leave=False):
        order = torch.randperm(len(images), generator=gen)
        for start in range(0, len(images), batch_size):
            idx = order[start : start + batch_size]
            eps = torch.randn(len(idx), model.latent, generator=gen)
            opt.zero_grad(set_to_none=True)
            st = None if styles is None else styles[idx]
            loss_fn(model(model.pack(images[idx], labels[idx], eps, st)), targets[idx]).mean().backward()
            opt.step()
        if epoch in save_at:
            checkpoints.append(({k: v.detach().clone() for k, v in model.state_dict().items()}, lr))
    return checkpoints


def pretrain(cfg: Config, data: StyleData, seed: int, progress: bool = True) -> ConditionalVAE:
    """The base generator: a conditional VAE trained on plain images."""
    torch.manual_seed(seed)
    n_classes = int(data.pretrain[1].max()) + 1
    model = ConditionalVAE(cfg.image_size, max(n_classes, 10), latent=cfg.latent, hidden=cfg.hidden,
                           n_styles=len(cfg.styles) + 1 if cfg.style_prompt else 0)
    _fit(model, *data.pretrain, epochs=cfg.pretrain_epochs, lr=2e-3, seed=seed, batch_size=128,
         desc="pretrain", progress=progress)
    return model


def finetune_lora(cfg: Config, base: ConditionalVAE, data: StyleData, seed: int,
                  progress: bool = True) -> tuple[ConditionalVAE, list[tuple[dict[str, Tensor], float]]]:
    """A copy of ``base`` with LoRA adapters on every Linear layer, only the adapters trained on the styles.

    Returns the tuned model and its checkpoints (for TracIn).
    """
    torch.manual_seed(seed)
    model = copy.deepcopy(base)
    add_lora(model, cfg.lora_targets, rank=cfg.lora_rank)
    cps = _fit(model, data.X_train, data.c_train, _tokens(model, data.s_train), epochs=cfg.lora_epochs, lr=cfg.lora_lr, seed=seed + 1,
               n_checkpoints=cfg.n_checkpoints, desc="LoRA", progress=progress)
    return model, cps


def attribution_sets(model: ConditionalVAE, data: StyleData, seed: int, noise: bool = False
                     ) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """(X_packed, targets) for training and validation: the loss at the posterior mean (eps = 0).

    ``noise=True``: a FIXED random eps per example instead (from ``seed``), as DataInf fixes the diffusion noise.
    That noise is part of each example's gradient and buries the style (FULL protocol styles, LoRA lr 1e-2 for 30
    epochs, graddot over all adapters, seed 0: AUC 0.66 with noise, 0.79 at eps = 0), so the experiment uses eps = 0.
    """
    gen = torch.Generator().manual_seed(10_000 + seed)
    eps_t = torch.randn(len(data.X_train), model.latent, generator=gen) if noise else None
    eps_v = torch.randn(len(data.X_val), model.latent, generator=gen) if noise else None
    train = (model.pack(data.X_train, data.c_train, eps_t, _tokens(model, data.s_train)), data.X_train.flatten(1))
    val = (model.pack(data.X_val, data.c_val, eps_v, _tokens(model, data.s_val)), data.X_val.flatten(1))
    return train, val


@torch.no_grad()
def mean_negative_elbo(model: ConditionalVAE, images: Tensor, labels: Tensor, styles: Tensor | None = None) -> float:
    """Mean negative ELBO per pixel at the posterior mean (eps = 0): a deterministic fit measure.

    ``styles``: style ids 0..S-1 (None or -1 entries: plain images)."""
    return float(loss_fn(model(model.pack(images, labels, styles=_tokens(model, styles))), images.flatten(1)).mean())


# ------------------------------------------------------------------------------------------------ attribution
def attributed(model: ConditionalVAE, cfg: Config) -> list[str]:
    """Names of the adapter parameters that influence is computed over (``cfg.attribute`` patterns)."""
    return [n for n in lora_names(model) if any(fnmatch.fnmatch(n, pat) for pat in cfg.attribute)]


def method_options(method: str, cfg: Config, model: ConditionalVAE, checkpoints, val) -> dict:
    """The options each method gets here (all over the LoRA parameters, with the negative ELBO as loss)."""
    # cache_grads: the (600, ~800) per-sample training gradients take one vmap pass (~20 ms); without them every
    # method's final G @ V ran as forward-mode dots with one tangent per query, ~0.5 s a pass (same numbers to
    # float rounding)
    opts: dict = {"params": attributed(model, cfg), "loss": attribution_loss, "cache_grads": True}
    if method == "tracin":
        opts["checkpoints"] = list(checkpoints) or None  # none: the model as given (TracIn = graddot)
    if method == "if-lissa":
        opts.update(iters=cfg.lissa_iters, lissa_batch=cfg.lissa_batch)
    if method in ("vm", "fvm"):
        opts["flat_val"] = val
        opts["curvature"] = "ggn"  # dense Gauss-Newton over the adapters (module docstring)
    return opts


def pairwise(method: str, cfg: Config, model: ConditionalVAE, train, val, checkpoints, seed: int) -> Tensor:
    """(n_val, n_train) ``ifkit.pairwise`` of ``method`` with ``method_options`` (the queries: the validation set).

    TracIn is sum_c lr_c * pairwise("tracin", model at checkpoint c): what ``checkpoints=`` computes, but one
    call per checkpoint lets each use its cached per-sample gradients (``checkpoints=`` scores copies of the
    model, which the cache does not serve: forward-mode dots, 1.7 s against 0.1 s; equal to float rounding).
    """
    if method != "tracin" or not checkpoints:
        return ifkit.pairwise(method, model, train, val, seed=seed,
                              **method_options(method, cfg, model, checkpoints, val))
    total = torch.zeros(len(val[0]), len(train[0]))
    at = copy.deepcopy(model)
    for state, lr in checkpoints:
        at.load_state_dict(state)
        total += lr * ifkit.pairwise("tracin", at, train, val, seed=seed, **method_options(method, cfg, at, (), val))
    return total


def ranking_metrics(table: Tensor | np.ndarray, train_style: Sequence[int] | Tensor,
                    query_style: Sequence[int] | Tensor) -> dict[str, float]:
    """Mean over queries of the ROC AUC, the top-k recall and the top-5 precision of same-style training points.

    Args:
        table: (n_queries, n_train) pairwise influences (negative = helpful).
        train_style, query_style: style id of each training point and each query.

    Returns:
        ``{"auc": ..., "recall": ..., "precision5": ...}``: AUC with score = -table[q] and positives = same
        style; recall = share of the k same-style training points among the k most helpful (k = number of
        same-style points); precision5 = share of same-style points among the 5 most helpful.
    """
    T = table.detach().cpu().numpy() if isinstance(table, Tensor) else np.asarray(table)
    st = np.asarray(train_style)
    sq = np.asarray(query_style)
    if T.shape != (len(sq), len(st)):
        raise ValueError(f"table has shape {T.shape} but there are {len(sq)} queries and {len(st)} training points")
    pos = st[None, :] == sq[:, None]  # (Q, n) same style
    k = pos.sum(1)  # (Q,)
    if (k == 0).any() or (k == len(st)).any():
        q = int(np.flatnonzero((k == 0) | (k == len(st)))[0])
        raise ValueError(f"query {q}: its style must have some, but not all, training points")
    # ROC AUC as the Mann-Whitney U of the scores -T (ties count 1/2, as in sklearn's roc_auc_score), all queries
    # at once: sklearn's per-query call cost 3 ms, 20 s of the full run.
    ranks = rankdata(-T, axis=1)  # (Q, n), average ranks of ties
    aucs = ((ranks * pos).sum(1) - k * (k + 1) / 2) / (k * (len(st) - k))
    order = np.argsort(T, axis=1, kind="stable")  # most negative = most helpful first
    hits = np.take_along_axis(pos, order, axis=1)  # (Q, n) same style, in ranked order
    recalls = [hits[q, : k[q]].mean() for q in range(len(sq))]
    prec5 = hits[:, :TOP].mean(1)
    return {"auc": float(np.mean(aucs)), "recall": float(np.mean(recalls)), "precision5": float(np.mean(prec5))}


def top_helpful(table: Tensor, k: int = TOP) -> Tensor:
    """(n_queries, k) indices of the k most helpful (most negative) training points of each query."""
    return torch.argsort(table, dim=1, stable=True)[:, :k]


# ------------------------------------------------------------------------------------------------ style check
def _style_classifier(data: StyleData, seed: int) -> MLP:
    """A small MLP telling the styles (and "plain", the last class) apart on real images."""
    torch.manual_seed(seed)
    S = len(data.styles)
    plain = data.pretrain[0][: len(data.X_train) // S]
    X = torch.cat([data.X_train, plain])
    y = torch.cat([data.s_train, torch.full((len(plain),), S, dtype=torch.long)])
    clf = MLP(X[0].numel(), (64,), S + 1)
    opt = torch.optim.Adam(clf.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    with torch.enable_grad():  # style_check runs under no_grad
        _train_classifier(clf, opt, X, y, gen)
    return clf.eval()


def _train_classifier(clf, opt, X, y, gen) -> None:
    for _ in range(60):
        order = torch.randperm(len(X), generator=gen)
        for start in range(0, len(X), 64):
            idx = order[start : start + 64]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(clf(X[idx]), y[idx]).backward()
            opt.step()


@torch.no_grad()
def style_check(cfg: Config, base: ConditionalVAE, tuned: ConditionalVAE, data: StyleData,
                seed: int) -> pd.DataFrame:
    """Did LoRA teach the styles? One row per style (and "plain"): validation negative ELBO and style recognition.

    A small style classifier is trained on real images (the styled training images and plain ones). Columns:
    nelbo_base / nelbo_lora (mean negative ELBO per pixel of the style's validation images at eps = 0),
    classifier_acc (the classifier on the real validation images: the ceiling), recon_acc_base / recon_acc_lora
    (share of reconstructions recognised as the style), sample_acc_base / sample_acc_lora (share of samples
    generated from the prior for "a <random class> in style <s>" recognised as style s; without style tokens,
    the share of unprompted samples classified as s).
    """
    clf = _style_classifier(data, seed)
    S = len(data.styles)
    gen = torch.Generator().manual_seed(20_000 + seed)
    labels = torch.randint(0, tuned.n_classes, (cfg.n_samples,), generator=gen)
    plain = data.pretrain[0][-cfg.n_val_per_style :], data.pretrain[1][-cfg.n_val_per_style :]
    rows = []
    for s, style in enumerate([*data.styles, "plain"]):
        X, c = (data.X_val[data.s_val == s], data.c_val[data.s_val == s]) if s < S else plain
        ids = torch.full((len(X),), s) if s < S else None  # plain: style token 0
        row = {"seed": seed, "style": style, "n": len(X),
               "classifier_acc": float((clf(X).argmax(1) == s).float().mean())}
        for name, model in (("base", base), ("lora", tuned)):
            row[f"nelbo_{name}"] = mean_negative_elbo(model, X, c, ids)
            recon = model.reconstruct(X, c, _tokens(model, ids))
            row[f"recon_acc_{name}"] = float((clf(recon).argmax(1) == s).float().mean())
            tok = _tokens(model, torch.full((len(labels),), s)) if s < S else None
            samples = model.sample(labels, tok, generator=torch.Generator().manual_seed(30_000 + seed))
            row[f"sample_acc_{name}"] = float((clf(samples).argmax(1) == s).float().mean())
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------ the run
def _mode(cfg: Config) -> str:
    for name, variants in CONFIGS.items():
        if variants.get(cfg.variant) == cfg:
            return name
    return "custom"


def _done(table: ResultsTable, cfg: Config, seed: int, method: str, mode: str) -> bool:
    """A row counts as done only when it was measured in the same mode (FAST and full rows share a key)."""
    if not table.has(task=TASK, variant=cfg.variant, seed=seed, method=method):
        return False
    f = table.frame
    row = f[(f["task"] == TASK) & (f["variant"] == cfg.variant) & (f["seed"] == seed) & (f["method"] == method)]
    return "mode" not in f.columns or str(row["mode"].iloc[0]) == mode


def _migrate(path: Path) -> None:
    """A generation.csv from before the variant column: its "style" rows are dropped (another setup, rerun); the
    other tasks' rows (gen-text) are kept as variant "protocol", so the file parses under the new key."""
    if not path.is_file():
        return
    df = pd.read_csv(path)
    if "variant" in df.columns:
        return
    from ifkit.results import write_atomic

    write_atomic(df[df["task"] != TASK].assign(variant="protocol"), path)


def measure(cfg: Config, seeds: Iterable[int], out: str | Path, progress: bool = True,
            mode: str | None = None) -> pd.DataFrame:
    """Run (or resume) one variant (``cfg.variant``) for ``seeds``; return its rows of ``out/generation.csv``.

    Args:
        cfg: sizes and the variant (``CONFIGS[mode][variant]``).
        seeds: each seed draws its own images, pretraining and LoRA fine-tuning.
        out: results folder (``generation.csv`` and the two companion files).
        progress: tqdm bars.
        mode: the label stored in the ``mode`` column (default: "full"/"fast" for those configs, else "custom").
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # models this small run fastest on one thread (and the machine is shared)
    try:
        return _measure(cfg, list(seeds), Path(out), progress, mode or _mode(cfg))
    finally:
        torch.set_num_threads(threads)


def _measure(cfg: Config, seeds: list[int], out: Path, progress: bool, mode: str) -> pd.DataFrame:
    _migrate(out / FILENAME)
    table = ResultsTable(out / FILENAME, KEY, required=REQUIRED)
    examples = ResultsTable(out / EXAMPLES_FILENAME, ["variant", "seed", "method", "query", "rank"],
                            required=["train_index"])
    styles_table = ResultsTable(out / STYLES_FILENAME, ["variant", "seed", "style"], required=["nelbo_lora"])
    v = cfg.variant
    for seed in seeds:
        todo = [m for m in cfg.methods if not _done(table, cfg, seed, m, mode)]
        if not todo:
            continue
        data = build_data(cfg, seed)
        base = pretrain(cfg, data, seed, progress)
        tuned, checkpoints = finetune_lora(cfg, base, data, seed, progress)
        check = style_check(cfg, base, tuned, data, seed)
        styles_table.add([{**r, "variant": v, "mode": mode} for r in check.to_dict("records")])
        train, val = attribution_sets(tuned, data, seed)
        # The queries kept for the figure: the first n_examples validation images of each style.
        shown = torch.cat([torch.nonzero(data.s_val == s).flatten()[: cfg.n_examples] for s in range(len(cfg.styles))])
        bar = tqdm(todo, desc=f"gen-image {v} seed {seed}", disable=not progress, leave=False)
        for method in bar:
            bar.set_postfix_str(method)
            start = time.perf_counter()
            tab = pairwise(method, cfg, tuned, train, val, checkpoints, seed)  # (n_val, n_train)
            seconds = time.perf_counter() - start
            m = ranking_metrics(tab, data.s_train, data.s_val)
            top = top_helpful(tab[shown])  # (len(shown), TOP)
            examples.add([
                {"variant": v, "seed": seed, "method": method, "query": int(q),
                 "query_style": cfg.styles[int(data.s_val[q])], "rank": r + 1, "train_index": int(top[j, r]),
                 "train_style": cfg.styles[int(data.s_train[top[j, r]])], "score": float(tab[q, top[j, r]]),
                 "mode": mode, "dataset": cfg.dataset, "image_size": cfg.image_size}
                for j, q in enumerate(shown.tolist()) for r in range(top.shape[1])
            ])
            table.add([{"task": TASK, "variant": v, "seed": seed, "method": method, **m, "n_train": cfg.n_train,
                        "n_queries": cfg.n_val, "seconds": round(seconds, 3), "mode": mode,
                        "n_params": sum(tuned.get_parameter(n).numel() for n in attributed(tuned, cfg)),
                        "n_styles": len(cfg.styles), "style_prompt": cfg.style_prompt}])
    df = table.frame
    if df.empty:
        return df
    return df[(df["task"] == TASK) & (df["variant"] == v) & df["seed"].isin(seeds)].reset_index(drop=True)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per variant and method: mean, standard deviation and range (max - min) over seeds of auc, recall and
    precision5."""
    g = df.groupby(["variant", "method"], sort=False)
    cols = {}
    for c in ("auc", "recall", "precision5"):
        cols[c], cols[f"{c}_sd"] = g[c].mean(), g[c].std()
        cols[f"{c}_range"] = g[c].max() - g[c].min()
    return pd.DataFrame({**cols, "seconds": g["seconds"].mean(), "seeds": g["seed"].nunique()}).reset_index()


@register("gen-image")
def run(fast: bool, seeds: int, out: Path) -> pd.DataFrame:
    """``ifkit reproduce gen-image``: both variants into ``out/generation.csv`` (task "style"); print the summary."""
    mode = "fast" if fast else "full"
    df = pd.concat([measure(cfg, range(seeds), out) for cfg in CONFIGS[mode].values()], ignore_index=True)
    styles = pd.read_csv(Path(out) / STYLES_FILENAME)
    styles = styles[styles["seed"].isin(range(seeds)) & (styles["mode"] == mode)]
    with pd.option_context("display.width", 160):
        cols = ["nelbo_base", "nelbo_lora", "classifier_acc", "recon_acc_base", "recon_acc_lora",
                "sample_acc_base", "sample_acc_lora"]
        for v, cfg in CONFIGS[mode].items():
            print(f"[{v}] did LoRA learn the styles? ({cfg.dataset} {cfg.image_size}x{cfg.image_size}, "
                  "mean over seeds)")
            part = styles[styles["variant"] == v]
            print(part.groupby("style", sort=False)[cols].mean().to_string(float_format=lambda x: f"{x:.3f}"))
        cfg = CONFIGS[mode]["protocol"]
        print(f"Influential-data identification, {len(cfg.styles)} styles x {cfg.n_train_per_style} training images "
              f"(per-query means, then mean, sd and range over {seeds} seed(s)):")
        print(summary(df).to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    return df


__all__ = ["CONFIGS", "FAST", "FULL", "OVERLAYS", "STYLES", "TRANSFORMS", "VARIANTS", "Config", "StyleData",
           "attributed", "attribution_sets", "build_data",
           "finetune_lora", "measure", "pairwise", "pretrain", "ranking_metrics", "run", "style_check", "stylize",
           "summary", "top_helpful"]
