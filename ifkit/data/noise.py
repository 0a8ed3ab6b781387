"""Label-noise models, injected into the TRAINING labels only (the validation and test sets stay clean).

Three noise models, each flipping exactly ``round(rate * n)`` labels and returning the flip mask (the ground
truth for mislabel detection):

- ``symmetric``: a uniformly chosen other class;
- ``asymmetric``: a fixed confusable partner class (T-shirt -> Shirt, 3 -> 8, ...);
- ``hard``: the most likely WRONG class of a model, applied preferentially to the samples that model finds
  ambiguous -- a stand-in for human label noise (CIFAR-10N style), which concentrates on hard images.
  ``logistic_probs`` gives that model's out-of-fold probabilities.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .synthetic import MIXTURE_PAIRS

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
        named = {"fashion": FASHION_PAIRS, "digits": DIGITS_PAIRS, "mixture": MIXTURE_PAIRS}
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
            "digits" (``DIGITS_PAIRS``), "mixture" (``MIXTURE_PAIRS``), or None for the cyclic map c -> (c + 1) mod C.

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


