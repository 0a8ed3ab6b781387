"""Offline image datasets: Fashion-MNIST from the Debian package, scikit-learn's bundled 8x8 digits.

Nothing here downloads anything:

- Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (idx files under
  ``/usr/share/datasets/fashion-mnist``; ``make setup`` installs the package when it is missing);
- scikit-learn's bundled 8x8 digits, for tiny tests.

Shapes: images are ``(n, 1, H, W)`` float32 in [0, 1]; labels are ``(n,)`` int64.
"""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES: list[str] = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
DIGITS_CLASSES: list[str] = [str(d) for d in range(10)]


def fashion_root(root: str | os.PathLike | None) -> Path:
    if root is not None:
        return Path(root)
    return Path(os.environ.get("IFKIT_FASHION_MNIST", FASHION_MNIST_ROOT))


def _read_idx(path: Path) -> np.ndarray:
    """Decode one gzip'd idx file (the MNIST format: magic, big-endian dims, then uint8 data)."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic = int.from_bytes(raw[:4], "big")
    if magic >> 8 != 0x08:  # third byte 0x08 = unsigned byte data; fourth byte = number of dims
        raise ValueError(f"{path} is not a uint8 idx file (magic {magic:#x})")
    ndim = magic & 0xFF
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: header says {dims}, found {data.size} values")
    return data.reshape(dims)


@functools.lru_cache(maxsize=4)
def fashion_arrays(root: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    # Cached per process: decoding the 60k training images takes ~0.5 s, and notebooks/tests call this often.
    # The arrays are marked read-only so no caller can corrupt the cache in place.
    prefix = "train" if split == "train" else "t10k"
    paths = [Path(root) / f"{prefix}-images-idx3-ubyte.gz", Path(root) / f"{prefix}-labels-idx1-ubyte.gz"]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(
                f"Fashion-MNIST file {p} is missing. ifkit reads Fashion-MNIST offline from the Debian package "
                "'dataset-fashion-mnist': install it with `sudo apt-get install dataset-fashion-mnist` "
                "(or run `make setup`, which does it when run as root), or point the IFKIT_FASHION_MNIST "
                "environment variable (or root=) at a folder holding the four *-ubyte.gz files."
            )
    images, labels = (_read_idx(p) for p in paths)
    if len(images) != len(labels):
        raise ValueError(f"{root}: {len(images)} images but {len(labels)} labels")
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def balanced_indices(y: np.ndarray | Tensor, n: int, rng: np.random.Generator) -> np.ndarray:
    """A class-balanced random subset of indices, in random order.

    Each class gets ``n // C`` samples; the ``n % C`` leftover slots go to randomly chosen classes, so class
    counts differ by at most one.

    Args:
        y: (N,) integer labels of the pool.
        n: subset size.
        rng: numpy Generator (the only source of randomness, so the subset is reproducible).

    Returns:
        (n,) int64 indices into ``y``.

    Raises:
        ValueError: if some class has fewer samples than its share.
    """
    y = np.asarray(y)
    classes = np.unique(y)
    per_class = np.full(len(classes), n // len(classes))
    per_class[rng.choice(len(classes), n % len(classes), replace=False)] += 1
    picked = []
    for c, k in zip(classes, per_class):
        pool = np.flatnonzero(y == c)
        if k > len(pool):
            raise ValueError(
                f"a class-balanced subset of {n} needs {k} samples of class {c}, but only {len(pool)} are left;"
                " ask for fewer samples"
            )
        picked.append(rng.choice(pool, k, replace=False))
    idx = np.concatenate(picked)
    return rng.permutation(idx).astype(np.int64)


def load_fashion_mnist(
    split: str = "train", n: int | None = None, seed: int = 0, root: str | os.PathLike | None = None
) -> tuple[Tensor, Tensor]:
    """Fashion-MNIST from the Debian package, as tensors.

    Args:
        split: "train" (60,000 images) or "test" (10,000).
        n: if given, a class-balanced random subset of this size (reproducible from ``seed``); else all
            images in file order.
        seed: seed for the subset.
        root: folder with the idx ``.gz`` files; default ``$IFKIT_FASHION_MNIST`` or
            ``/usr/share/datasets/fashion-mnist``.

    Returns:
        X: (n, 1, 28, 28) float32 in [0, 1]; y: (n,) int64 in 0..9 (names in ``FASHION_CLASSES``).

    Raises:
        FileNotFoundError: when the files are missing (the message says how to install them).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    images, labels = fashion_arrays(str(fashion_root(root)), split)
    if n is None:
        idx = np.arange(len(labels))
    else:
        if not 0 < n <= len(labels):
            raise ValueError(f"n must be in 1..{len(labels)} for the {split} split, got {n}")
        idx = balanced_indices(labels, n, np.random.default_rng(seed))
    return fashion_take(images, labels, idx)


def fashion_take(images: np.ndarray, labels: np.ndarray, idx: np.ndarray) -> tuple[Tensor, Tensor]:
    # Index the uint8 arrays before converting, so only the chosen images are ever held as float32.
    X = torch.from_numpy(images[idx].astype(np.float32) / 255.0).unsqueeze(1)  # (n, 1, 28, 28)
    y = torch.from_numpy(labels[idx].astype(np.int64))  # (n,)
    return X, y


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    images = (bunch.images / 16.0).astype(np.float32)  # pixel values are 0..16
    labels = bunch.target.astype(np.int64)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def load_digits() -> tuple[Tensor, Tensor]:
    """scikit-learn's bundled 8x8 digits (1,797 images), as tensors.

    Returns:
        X: (1797, 1, 8, 8) float32 in [0, 1]; y: (1797,) int64 in 0..9.
    """
    images, labels = _digits_arrays()
    return torch.tensor(images).unsqueeze(1), torch.tensor(labels)


# ------------------------------------------------------------------------------------------------- noise

