"""Offline datasets and label-noise models.

Nothing here downloads anything. Two image datasets ship with the machine:

- Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (idx files under
  ``/usr/share/datasets/fashion-mnist``; ``make setup`` installs the package when it is missing);
- scikit-learn's bundled 8x8 digits, for tiny tests.

Label noise is injected into the TRAINING labels only; the validation and test sets stay clean (the paper's
setting: a noisy S_tr and a small clean S_val). Three noise models, each flipping exactly
``round(rate * n)`` labels and returning the flip mask (the ground truth for mislabel detection):

- ``symmetric``: a uniformly chosen other class;
- ``asymmetric``: a fixed confusable partner class (T-shirt -> Shirt, 3 -> 8, ...);
- ``hard``: the most likely WRONG class of a model, applied preferentially to the samples that model finds
  ambiguous -- a stand-in for human label noise (CIFAR-10N style), which concentrates on hard images.

Shapes: images are ``(n, 1, H, W)`` float32 in [0, 1]; labels are ``(n,)`` int64.
"""

from __future__ import annotations

import functools
import gzip
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES: list[str] = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
DIGITS_CLASSES: list[str] = [str(d) for d in range(10)]

# Asymmetric noise: every class is flipped to ONE confusable partner (a map, not always a pairing).
# Fashion-MNIST: the confusions a small CNN makes most often -- tops among themselves, footwear among
# themselves. Trouser has no close look-alike; Dress is the nearest long garment. Bag is most often
# mistaken for a top (Shirt).
FASHION_PAIRS: dict[int, int] = {
    0: 6,  # T-shirt/top -> Shirt
    6: 0,  # Shirt       -> T-shirt/top
    2: 4,  # Pullover    -> Coat
    4: 2,  # Coat        -> Pullover
    1: 3,  # Trouser     -> Dress
    3: 0,  # Dress       -> T-shirt/top
    8: 6,  # Bag         -> Shirt
    5: 7,  # Sandal      -> Sneaker
    7: 9,  # Sneaker     -> Ankle boot
    9: 7,  # Ankle boot  -> Sneaker
}
# Digits: the classic MNIST asymmetric map (Patrini et al. 2017: 2->7, 3->8, 5<->6, 7->1), completed so that
# every digit has a look-alike target.
DIGITS_PAIRS: dict[int, int] = {0: 6, 1: 7, 2: 7, 3: 8, 4: 9, 5: 6, 6: 5, 7: 1, 8: 3, 9: 4}

NOISE_KINDS = ("none", "symmetric", "asymmetric", "hard")


class Noisy(NamedTuple):
    """Noisy labels and the ground truth of which ones were flipped.

    Attributes:
        y_noisy: (n,) int64 labels after corruption.
        flipped: (n,) bool, True where ``y_noisy != y`` (always exactly where the label changed).
    """

    y_noisy: Tensor
    flipped: Tensor


# ----------------------------------------------------------------------------------------------- loading


def _fashion_root(root: str | os.PathLike | None) -> Path:
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
def _fashion_arrays(root: str, split: str) -> tuple[np.ndarray, np.ndarray]:
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
    images, labels = _fashion_arrays(str(_fashion_root(root)), split)
    if n is None:
        idx = np.arange(len(labels))
    else:
        if not 0 < n <= len(labels):
            raise ValueError(f"n must be in 1..{len(labels)} for the {split} split, got {n}")
        idx = balanced_indices(labels, n, np.random.default_rng(seed))
    return _fashion_take(images, labels, idx)


def _fashion_take(images: np.ndarray, labels: np.ndarray, idx: np.ndarray) -> tuple[Tensor, Tensor]:
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


def _check_labels(y: Tensor | np.ndarray, rate: float, n_classes: int) -> np.ndarray:
    y = np.asarray(y.cpu() if isinstance(y, Tensor) else y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"labels must be a 1-D integer tensor/array, got shape {y.shape} dtype {y.dtype}")
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"labels must lie in 0..{n_classes - 1}, found {y.min()}..{y.max()}")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    return y.astype(np.int64)


def _result(y: np.ndarray, y_noisy: np.ndarray) -> Noisy:
    return Noisy(torch.from_numpy(y_noisy), torch.from_numpy(y_noisy != y))


def symmetric_noise(y: Tensor, rate: float, n_classes: int, seed: int = 0) -> Noisy:
    """Flip exactly ``round(rate * n)`` uniformly chosen labels, each to a uniformly chosen OTHER class.

    Args:
        y: (n,) clean labels.
        rate: fraction of labels to flip.
        n_classes: number of classes C.
        seed: seed of the numpy Generator (same seed, same flips).

    Returns:
        Noisy(y_noisy, flipped).
    """
    y = _check_labels(y, rate, n_classes)
    rng = np.random.default_rng(seed)
    k = round(rate * len(y))
    idx = rng.choice(len(y), k, replace=False)
    y_noisy = y.copy()
    # Adding an offset in 1..C-1 modulo C is uniform over the other classes and never returns the original.
    y_noisy[idx] = (y[idx] + rng.integers(1, n_classes, size=k)) % n_classes
    return _result(y, y_noisy)


def _resolve_pairs(pairs: Mapping[int, int] | Sequence[int] | str | None, n_classes: int) -> np.ndarray:
    if pairs is None:
        # Generic default: "pair flipping" c -> c+1 (Han et al. 2018, Co-teaching).
        target = np.roll(np.arange(n_classes), -1)
    elif isinstance(pairs, str):
        named = {"fashion": FASHION_PAIRS, "digits": DIGITS_PAIRS}
        if pairs not in named:
            raise ValueError(
                f"unknown pairs {pairs!r}; use one of {sorted(named)} or a dict {{class: partner}}"
            )
        target = np.array([named[pairs][c] for c in range(n_classes)])
    elif isinstance(pairs, Mapping):
        missing = [c for c in range(n_classes) if c not in pairs]
        if missing:
            raise ValueError(f"pairs must give a partner for every class; missing {missing}")
        target = np.array([pairs[c] for c in range(n_classes)])
    else:
        target = np.asarray(pairs)
    if target.shape != (n_classes,) or (target == np.arange(n_classes)).any():
        raise ValueError(f"pairs must map each of the {n_classes} classes to a different class, got {target}")
    if target.min() < 0 or target.max() >= n_classes:
        raise ValueError(f"pairs must map into 0..{n_classes - 1}, got {target}")
    return target.astype(np.int64)


def asymmetric_noise(
    y: Tensor,
    rate: float,
    n_classes: int,
    seed: int = 0,
    pairs: Mapping[int, int] | Sequence[int] | str | None = None,
) -> Noisy:
    """Flip exactly ``round(rate * n)`` uniformly chosen labels, each to its class's confusable partner.

    Args:
        y: (n,) clean labels.
        rate: fraction of labels to flip (over the whole set, not per class).
        n_classes: number of classes C.
        seed: seed of the numpy Generator.
        pairs: the class -> partner map: a dict, a length-C sequence, "fashion" (``FASHION_PAIRS``),
            "digits" (``DIGITS_PAIRS``), or None for the cyclic map c -> (c + 1) mod C.

    Returns:
        Noisy(y_noisy, flipped); every flipped label equals ``pairs[y]``.
    """
    y = _check_labels(y, rate, n_classes)
    target = _resolve_pairs(pairs, n_classes)  # (C,)
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(y), round(rate * len(y)), replace=False)
    y_noisy = y.copy()
    y_noisy[idx] = target[y[idx]]
    return _result(y, y_noisy)


def hard_noise(y: Tensor, probs: Tensor | np.ndarray, rate: float, seed: int = 0) -> Noisy:
    """Flip labels to a model's most likely WRONG class, preferring the samples the model finds ambiguous.

    A stand-in for human label noise: annotators err on ambiguous images, and towards a plausible class.

    - target of sample i: ``argmax_{c != y_i} probs[i, c]``;
    - which samples: exactly ``k = round(rate * n)``, drawn at random WITHOUT replacement with probability
      proportional to ``probs[i, target_i]`` (+1e-6 so every sample can be drawn). Ambiguous samples are
      therefore flipped more often, but not deterministically -- the noise is still random given ``seed``.

    Args:
        y: (n,) clean labels.
        probs: (n, C) class probabilities of some model (e.g. out-of-fold predictions of a quick classifier).
        rate: fraction of labels to flip.
        seed: seed of the numpy Generator.

    Returns:
        Noisy(y_noisy, flipped).
    """
    probs = np.asarray(probs.detach().cpu() if isinstance(probs, Tensor) else probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != len(y):
        raise ValueError(f"probs must have shape (n, C) = ({len(y)}, C), got {probs.shape}")
    y = _check_labels(y, rate, probs.shape[1])
    rows = np.arange(len(y))
    wrong = probs.copy()
    wrong[rows, y] = -np.inf  # mask the true class so argmax picks the most likely WRONG one
    target = wrong.argmax(axis=1)  # (n,)
    weight = np.clip(probs[rows, target], 0.0, None) + 1e-6  # (n,)
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(y), round(rate * len(y)), replace=False, p=weight / weight.sum())
    y_noisy = y.copy()
    y_noisy[idx] = target[idx]
    return _result(y, y_noisy)


def add_noise(
    y: Tensor,
    kind: str,
    rate: float,
    n_classes: int,
    seed: int = 0,
    probs: Tensor | np.ndarray | None = None,
    pairs: Mapping[int, int] | Sequence[int] | str | None = None,
) -> Noisy:
    """Dispatch to one noise model by name.

    Args:
        y: (n,) clean labels.
        kind: "none", "symmetric", "asymmetric" or "hard".
        rate: fraction of labels to flip.
        n_classes: number of classes C.
        seed: noise seed.
        probs: (n, C) model probabilities, required for "hard".
        pairs: class -> partner map for "asymmetric" (see ``asymmetric_noise``).

    Returns:
        Noisy(y_noisy, flipped).
    """
    if kind == "none":
        y = torch.as_tensor(_check_labels(y, 0.0, n_classes))
        return Noisy(y.clone(), torch.zeros(len(y), dtype=torch.bool))
    if kind == "symmetric":
        return symmetric_noise(y, rate, n_classes, seed)
    if kind == "asymmetric":
        return asymmetric_noise(y, rate, n_classes, seed, pairs=pairs)
    if kind == "hard":
        if probs is None:
            raise ValueError("hard noise needs probs=(n, C) model probabilities (see ifkit.data.hard_noise)")
        if np.shape(probs)[1] != n_classes:
            raise ValueError(f"probs has {np.shape(probs)[1]} columns but n_classes={n_classes}")
        return hard_noise(y, probs, rate, seed)
    raise ValueError(f"unknown noise kind {kind!r}; use one of {NOISE_KINDS}")


# ------------------------------------------------------------------------------------------------- split


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


def logistic_probs(X: Tensor, y: Tensor, seed: int = 0) -> np.ndarray:
    """Out-of-fold class probabilities of a quick logistic regression on flattened images.

    The default "annotator" for hard noise. Out-of-fold (3-fold stratified cross-validation) so that a sample's
    probabilities come from a model that did not see it -- in-sample probabilities of a high-dimensional
    linear model are near one-hot and would say little about which images are ambiguous.

    Args:
        X: (n, ...) images; y: (n,) clean labels.
        seed: seed of the fold assignment.

    Returns:
        (n, C) numpy array of probabilities.
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from threadpoolctl import threadpool_limits

    Xf = X.reshape(len(X), -1).numpy()  # (n, H*W)
    yn = y.numpy()
    clf = LogisticRegression(C=1.0, max_iter=100)
    # One BLAS thread: on a busy 2-core machine multi-threaded OpenBLAS was 10x slower (measured), and a
    # rough annotator needs neither full convergence nor parallelism.
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        folds = min(3, int(np.bincount(yn).min()))
        if folds < 2:  # too few samples per class for cross-validation: fall back to in-sample
            return clf.fit(Xf, yn).predict_proba(Xf)
        cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
        return cross_val_predict(clf, Xf, yn, cv=cv, method="predict_proba")


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
        X, y = _fashion_arrays(str(_fashion_root(None)), "train")  # uint8 (60000, 28, 28), (60000,)
        classes = FASHION_CLASSES
    else:
        raise ValueError(f"unknown dataset {dataset!r}; use 'digits' or 'fashion'")
    # Train first, then val from what is left, then (digits) test from what is left after that: disjoint by
    # construction, each part class-balanced.
    idx_train = balanced_indices(y, n_train, rng)
    rest = np.setdiff1d(np.arange(len(y)), idx_train)
    idx_val = rest[balanced_indices(y[rest], n_val, rng)]
    if dataset == "fashion":
        (X_tr, y_tr), (X_va, y_va) = _fashion_take(X, y, idx_train), _fashion_take(X, y, idx_val)
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
