"""Detection and agreement metrics, on top of scikit-learn.

All take scores with the ifkit convention (higher = more harmful) and a boolean mask of truly flipped labels.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import average_precision_score, roc_auc_score


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _check(scores, flipped) -> tuple[np.ndarray, np.ndarray]:
    s, f = _np(scores).astype(float), _np(flipped).astype(bool)
    if s.shape != f.shape:
        raise ValueError(f"scores has shape {s.shape} but flipped has shape {f.shape}; they must match")
    if f.all() or not f.any():
        raise ValueError("flipped must contain both flipped and clean points for a detection metric")
    return s, f


def auc(scores, flipped) -> float:
    """ROC AUC of detecting flipped labels by ranking on the score (0.5 = chance)."""
    s, f = _check(scores, flipped)
    return float(roc_auc_score(f, s))


def average_precision(scores, flipped) -> float:
    """Average precision (area under the precision-recall curve) of detecting flipped labels."""
    s, f = _check(scores, flipped)
    return float(average_precision_score(f, s))


def recall_at(scores, flipped, frac: float = 0.1) -> float:
    """Share of all flipped labels found among the top ``frac`` highest-scoring training points."""
    s, f = _check(scores, flipped)
    k = max(1, int(round(frac * len(s))))
    top = np.argsort(-s, kind="stable")[:k]
    return float(f[top].sum() / f.sum())


def sign_agreement(a, b) -> float:
    """Share of points on which two score vectors have the same sign (zeros count as their own sign)."""
    a, b = _np(a), _np(b)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return float((np.sign(a) == np.sign(b)).mean())


def sign_error(estimated, true) -> float:
    """1 - sign_agreement: the paper's estimation error (share of wrong influence signs)."""
    return 1.0 - sign_agreement(estimated, true)


def correlation(a, b) -> dict[str, float]:
    """Pearson and Spearman correlation between two score vectors."""
    a, b = _np(a).ravel(), _np(b).ravel()
    return {"pearson": float(pearsonr(a, b)[0]), "spearman": float(spearmanr(a, b)[0])}


def relabel_accuracy(new_labels, clean_labels) -> float:
    """Share of relabelled points whose new label equals the clean label."""
    n, c = _np(new_labels), _np(clean_labels)
    return float((n == c).mean())


def detection_report(scores, flipped, frac: float = 0.1) -> dict[str, float]:
    """auc, ap and recall in the top ``frac``, as a dict (a row of results/detection.csv)."""
    return {"auc": auc(scores, flipped), "ap": average_precision(scores, flipped),
            f"recall_at_{int(frac * 100)}pct": recall_at(scores, flipped, frac)}
