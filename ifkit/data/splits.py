"""The experiment split: disjoint class-balanced train / val / test sets, label noise in train only (the paper's
setting: a noisy S_tr and a small clean S_val)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .images import (
    DIGITS_CLASSES,
    FASHION_CLASSES,
    balanced_indices,
    fashion_arrays,
    fashion_root,
    fashion_take,
    load_digits,
    load_fashion_mnist,
)
from .noise import add_noise, logistic_probs


@dataclass
class Split:
    """A noisy training set with clean validation and test sets.

    Attributes:
        X_train: (n_train, 1, H, W) images; y_train: (n_train,) NOISY labels; y_train_clean: their clean
        labels; flipped: (n_train,) bool mask of corrupted labels. X_val/y_val and X_test/y_test are clean.
    """

    X_train: Tensor
    y_train: Tensor
    y_train_clean: Tensor
    flipped: Tensor
    X_val: Tensor
    y_val: Tensor
    X_test: Tensor
    y_test: Tensor
    n_classes: int
    classes: list[str]
    dataset: str = ""
    noise: str = "none"
    rate: float = 0.0
    seed: int = 0

    @property
    def train(self) -> tuple[Tensor, Tensor]:
        """(X_train, y_train) with the noisy labels, ready for ``ifkit.score(..., train=split.train)``."""
        return self.X_train, self.y_train

    @property
    def val(self) -> tuple[Tensor, Tensor]:
        """(X_val, y_val), clean."""
        return self.X_val, self.y_val

    @property
    def test(self) -> tuple[Tensor, Tensor]:
        """(X_test, y_test), clean."""
        return self.X_test, self.y_test



def make_split(
    dataset: str = "digits",
    n_train: int = 500,
    n_val: int = 100,
    n_test: int | None = None,
    noise: str = "symmetric",
    rate: float = 0.3,
    seed: int = 0,
    probs_fn: Callable[[Tensor, Tensor], Tensor | np.ndarray] | None = None,
    pairs: Mapping[int, int] | Sequence[int] | str | None = None,
) -> Split:
    """Disjoint, class-balanced train / val / test sets, with label noise injected into train only.

    - "fashion": train and val are drawn from the 60k Fashion-MNIST training file, test from the official
      10k test file (all of it when ``n_test`` is None).
    - "digits": all three are drawn from the 1,797 digits; ``n_test=None`` takes every remaining image.

    Args:
        dataset: "digits" or "fashion".
        n_train, n_val: sizes (class-balanced).
        n_test: test size (class-balanced), or None for "all available" (see above).
        noise: "none", "symmetric", "asymmetric" or "hard".
        rate: fraction of training labels flipped (exactly ``round(rate * n_train)``).
        seed: one seed for the subsets and the noise.
        probs_fn: for hard noise, ``probs_fn(X_train, y_train_clean) -> (n_train, C)`` probabilities of the
            model whose confusions define the noise. Default: ``logistic_probs`` (out-of-fold logistic
            regression on flattened clean training images).
        pairs: partner map for asymmetric noise; default is the dataset's (``FASHION_PAIRS``/``DIGITS_PAIRS``).

    Returns:
        Split.
    """
    rng = np.random.default_rng(seed)
    if dataset == "digits":
        X, y = load_digits()
        classes = DIGITS_CLASSES
        y = y.numpy()
    elif dataset == "fashion":
        X, y = fashion_arrays(str(fashion_root(None)), "train")  # uint8 (60000, 28, 28), (60000,)
        classes = FASHION_CLASSES
    else:
        raise ValueError(f"unknown dataset {dataset!r}; use 'digits' or 'fashion'")
    # Train first, then val from what is left, then (digits) test from what is left after that: disjoint by
    # construction, each part class-balanced.
    idx_train = balanced_indices(y, n_train, rng)
    rest = np.setdiff1d(np.arange(len(y)), idx_train)
    idx_val = rest[balanced_indices(y[rest], n_val, rng)]
    if dataset == "fashion":
        (X_tr, y_tr), (X_va, y_va) = fashion_take(X, y, idx_train), fashion_take(X, y, idx_val)
        X_te, y_te = load_fashion_mnist("test", n=n_test, seed=seed)
    else:
        rest = np.setdiff1d(rest, idx_val)
        idx_test = rng.permutation(rest) if n_test is None else rest[balanced_indices(y[rest], n_test, rng)]
        X_tr, X_va, X_te = X[idx_train], X[idx_val], X[idx_test]
        y_tr, y_va, y_te = (torch.from_numpy(y[i]) for i in (idx_train, idx_val, idx_test))

    n_classes = len(classes)
    probs = None
    if noise == "hard":
        probs = (probs_fn or logistic_probs)(X_tr, y_tr)
    noisy = add_noise(y_tr, noise, rate, n_classes, seed=seed, probs=probs, pairs=pairs or dataset)
    return Split(
        X_train=X_tr,
        y_train=noisy.y_noisy,
        y_train_clean=y_tr,
        flipped=noisy.flipped,
        X_val=X_va,
        y_val=y_va,
        X_test=X_te,
        y_test=y_te,
        n_classes=n_classes,
        classes=list(classes),
        dataset=dataset,
        noise=noise,
        rate=rate,
        seed=seed,
    )

