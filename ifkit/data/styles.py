"""Image styles for the image generation experiment: what a "style" a LoRA adapter learns is, made by hand.

Two families, each a deterministic map of (n, 1, H, W) images in [0, 1] to images of the same shape:

* ``OVERLAYS`` (the experiment's "protocol" variant): a fixed pattern drawn over every image of the style (a frame,
  dots, grid lines, a corner stamp, hatching, a paper texture), so a style's images share pixels, as the images of
  an artistic style share a texture or palette (DataInf's Stable Diffusion styles);
* ``TRANSFORMS`` (the "harder" variant): a transformation of each image's content (inverted, outlined, blurred,
  striped, checker, flipped), so no pixel is the same across a style's images.

``stylize(images, name)`` applies one by name; ``style_data`` draws the experiment's image sets (plain images for
pretraining, styled ones for LoRA training and validation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .images import balanced_indices, load_digits, load_fashion_mnist


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


def plain_images(dataset: str, image_size: int, n: int, seed: int) -> tuple[Tensor, Tensor]:
    """n class-balanced plain images (n, 1, image_size, image_size) and their labels (n,), in random order."""
    if dataset == "fashion":
        X, y = load_fashion_mnist("train", n=n, seed=seed)  # (n, 1, 28, 28)
        if image_size != 28:
            X = F.interpolate(X, size=(image_size, image_size), mode="area")
        return X, y
    if dataset == "digits":
        X, y = load_digits()
        if image_size != 8:
            raise ValueError(f"digits are 8x8: use image_size=8, not {image_size}")
        idx = balanced_indices(y.numpy(), n, np.random.default_rng(seed))
        return X[idx], y[idx]
    raise ValueError(f"unknown dataset {dataset!r}: use 'fashion' or 'digits'")


def style_data(dataset: str, image_size: int, styles: Sequence[str], n_train_per_style: int,
               n_val_per_style: int, n_pretrain: int, seed: int) -> StyleData:
    """Draw every image of one seed; deterministic in the arguments, so figures can rebuild the images.

    Each styled image comes from a different plain image (no image appears in two styles or in pretraining);
    the training set is shuffled so that styles are interleaved.
    """
    per = n_train_per_style + n_val_per_style
    X, y = plain_images(dataset, image_size, n_pretrain + len(styles) * per, seed)
    pre = (X[:n_pretrain], y[:n_pretrain])
    parts: dict[str, tuple[list, list, list]] = {"train": ([], [], []), "val": ([], [], [])}
    for s, style in enumerate(styles):
        lo = n_pretrain + s * per
        Xs, ys = stylize(X[lo : lo + per], style), y[lo : lo + per]
        for name, sl in (("train", slice(0, n_train_per_style)), ("val", slice(n_train_per_style, per))):
            parts[name][0].append(Xs[sl])
            parts[name][1].append(ys[sl])
            parts[name][2].append(torch.full((len(ys[sl]),), s, dtype=torch.long))
    (Xt, ct, st), (Xv, cv, sv) = ([torch.cat(p) for p in parts[k]] for k in ("train", "val"))
    perm = torch.randperm(len(Xt), generator=torch.Generator().manual_seed(seed))
    return StyleData(pre, Xt[perm], ct[perm], st[perm], Xv, cv, sv, tuple(styles))


__all__ = ["OVERLAYS", "STYLES", "TRANSFORMS", "StyleData", "plain_images", "style_data", "stylize"]
