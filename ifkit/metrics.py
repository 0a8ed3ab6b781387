"""Detection, agreement and ranking metrics, on top of scikit-learn.

The detection metrics take scores with the ifkit convention (higher = more harmful) and a boolean mask of truly
flipped labels; ``ranking_metrics`` takes a pairwise table (negative = helpful) and the group (class, style) of
every training point and query, as the generation experiments measure it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.stats import pearsonr, rankdata, spearmanr
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


class RankingMetrics(tuple):
    """``(auc, recall, precision)`` of ``ranking_metrics``: unpacks as a tuple and reads as a mapping.

    ``auc, recall, prec = m``, ``m[1]``, ``m["auc"]`` and ``{**m}`` all work; the mapping's keys are "auc", "recall"
    and f"precision{top}" (the columns of results/generation.csv, with top = 5).
    """

    def __new__(cls, auc: float, recall: float, precision: float, top: int = 5) -> RankingMetrics:
        self = super().__new__(cls, (auc, recall, precision))
        self.top = top
        return self

    auc = property(lambda self: tuple.__getitem__(self, 0), doc="mean ROC AUC over the queries")
    recall = property(lambda self: tuple.__getitem__(self, 1), doc="mean recall at k (k = the query's positives)")
    precision = property(lambda self: tuple.__getitem__(self, 2), doc="mean precision among the top ``top``")

    def keys(self) -> tuple[str, str, str]:
        return ("auc", "recall", f"precision{self.top}")

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(f"{key!r}: a RankingMetrics has the keys {self.keys()}")
            key = self.keys().index(key)
        return super().__getitem__(key)

    def as_dict(self) -> dict[str, float]:
        return dict(zip(self.keys(), self))


def ranking_metrics(table, train_group, query_group, top: int = 5) -> RankingMetrics:
    """How well each query's pairwise influences rank the training points of its own group first; mean over queries.

    For query q with n training points, k of them in q's group (the positives), and scores s = -table[q]
    (higher = more helpful):

        auc_q       = (sum of the positives' ranks of s  -  k (k + 1) / 2) / (k (n - k))    (Mann-Whitney U / k(n-k))
        recall_q    = share of the positives among the k most helpful training points           (DataInf's recall)
        precision_q = share of the positives among the ``top`` most helpful training points

    Ranks are average ranks, so a tie between a positive and a negative counts 1/2: the AUC is sklearn's
    ``roc_auc_score(positives, s)`` (tests/test_metrics.py checks it, ties included), computed for all queries at
    once and exactly (the sum of ranks is a sum of half-integers; sklearn's trapezoid rule can differ in the last
    bit). Per-query sklearn calls cost ~3 ms each, 20 s of the full gen-image run. The "most helpful" order is the
    most negative influence first, ties broken by training index. Cost: one sort of each row, O(Q n log n).

    Args:
        table: (n_queries, n_train) pairwise influences (negative = helpful), a Tensor or an array.
        train_group: (n_train,) group id (class, style) of every training point.
        query_group: (n_queries,) group id of every query.
        top: how many of the most helpful points the precision looks at.

    Returns:
        RankingMetrics (auc, recall, precision@top), each averaged over the queries.

    Raises:
        ValueError: if the table's shape does not match the groups, or a query's group has no training point (or
            every training point).
    """
    T = _np(table).astype(float)  # (Q, n); float64, so float32 tables rank exactly as before
    st, sq = _np(train_group).ravel(), _np(query_group).ravel()
    if T.shape != (len(sq), len(st)):
        raise ValueError(f"table has shape {T.shape} but there are {len(sq)} queries and {len(st)} training points; "
                         "pass table[query, train]")
    pos = st[None, :] == sq[:, None]  # (Q, n) same group
    k = pos.sum(1)  # (Q,)
    if (k == 0).any() or (k == len(st)).any():
        q = int(np.flatnonzero((k == 0) | (k == len(st)))[0])
        raise ValueError(f"query {q}: its group must have some, but not all, training points (it has {k[q]} of "
                         f"{len(st)}); a ranking metric needs both kinds")
    ranks = rankdata(-T, axis=1)  # (Q, n) average ranks of s = -T, ties shared
    aucs = ((ranks * pos).sum(1) - k * (k + 1) / 2) / (k * (len(st) - k))  # (Q,)
    order = np.argsort(T, axis=1, kind="stable")  # (Q, n) most negative = most helpful first
    hits = np.take_along_axis(pos, order, axis=1)  # (Q, n) positives in ranked order
    recalls = [hits[q, : k[q]].mean() for q in range(len(sq))]
    precisions = hits[:, :top].mean(1)  # (Q,)
    return RankingMetrics(float(np.mean(aucs)), float(np.mean(recalls)), float(np.mean(precisions)), top)


class LDS(tuple):
    """``(lds, low, high)`` of ``lds``: unpacks as a tuple; ``per_query`` holds each query's Spearman correlation."""

    def __new__(cls, lds: float, low: float, high: float, per_query: np.ndarray) -> LDS:
        self = super().__new__(cls, (lds, low, high))
        self.per_query = per_query
        return self

    lds = property(lambda self: self[0], doc="mean over queries of the Spearman correlation")
    low = property(lambda self: self[1], doc="2.5th percentile of the bootstrap")
    high = property(lambda self: self[2], doc="97.5th percentile of the bootstrap")


def _column_spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(Q,) Spearman correlation of a[:, q] with b[:, q] for every column: Pearson of average ranks (scipy's
    ``spearmanr``; NaN where a column is constant)."""
    ra, rb = rankdata(a, axis=0), rankdata(b, axis=0)  # (M, Q) each
    ra, rb = ra - ra.mean(0), rb - rb.mean(0)
    den = np.sqrt((ra**2).sum(0) * (rb**2).sum(0))  # (Q,)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(0) / np.where(den > 0, den, 1.0), np.nan)


def lds(scores, subsets, losses, n_boot: int = 1000, seed: int = 0) -> LDS:
    """Linear datamodeling score (TRAK, Park et al. 2023; dattri): do a method's pairwise scores predict what
    retraining on random subsets does to each query's loss?

    ``scores[q, i]`` is the kit's pairwise influence (docs/PAPER.md, Eq. 6): the predicted change of query q's
    loss when training point i is up-weighted, negative = helpful. A model trained on the subset S then has the
    predicted query loss  const + (1/n) sum_{i in S} scores[q, i]  (each kept point up-weighted relative to the
    removed ones), so for subset m and query q

        predicted[m, q] = sum_i subsets[m, i] scores[q, i]
        LDS            = mean_q  spearman_m(predicted[m, q], losses[m, q])

    +1: the scores rank the subsets exactly as retraining does; 0: no better than random scores. The 95%
    interval is a percentile bootstrap that resamples the queries AND the subsets (with replacement) and
    recomputes the mean (queries share the subsets, so resampling queries alone would be too narrow).
    Queries whose losses (or predictions) are constant over the subsets have no correlation and are left out.
    Cost: one (M, n) x (n, Q) product, then n_boot rank transforms of (M, Q) arrays.

    Args:
        scores: (Q, n) pairwise influences (negative = helpful), a Tensor or an array.
        subsets: (M, n) bool (or 0/1): which training points subset m kept.
        losses: (M, Q) each query's loss measured after retraining on each subset.
        n_boot: bootstrap resamples (0: no interval, low = high = the estimate).
        seed: seeds the bootstrap.

    Returns:
        LDS (lds, low, high), with ``per_query`` the (Q,) correlations.

    Raises:
        ValueError: if the shapes disagree, there are fewer than 3 subsets, or no query has a correlation.
    """
    S, Z, L = _np(scores).astype(float), _np(subsets).astype(float), _np(losses).astype(float)
    if S.ndim != 2 or Z.ndim != 2 or L.shape != (Z.shape[0], S.shape[0]) or Z.shape[1] != S.shape[1]:
        raise ValueError(f"scores {S.shape}, subsets {Z.shape} and losses {L.shape} must be (Q, n), (M, n) and "
                         "(M, Q): losses[m, q] is query q's loss after training on subset m")
    if len(Z) < 3:
        raise ValueError(f"{len(Z)} subsets: a rank correlation over subsets needs at least 3 (TRAK uses >= 50)")
    pred = Z @ S.T  # (M, Q) predicted loss up to a constant and the 1/n factor
    per_query = _column_spearman(pred, L)  # (Q,)
    if np.isnan(per_query).all():
        raise ValueError("every query's losses or predictions are constant over the subsets: no correlation")
    est = float(np.nanmean(per_query))
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(n_boot):
        m, q = rng.integers(len(Z), size=len(Z)), rng.integers(len(S), size=len(S))  # (M,), (Q,)
        r = _column_spearman(pred[np.ix_(m, q)], L[np.ix_(m, q)])  # (Q,)
        if not np.isnan(r).all():
            boot.append(np.nanmean(r))
    low, high = (np.percentile(boot, [2.5, 97.5]) if boot else (est, est))
    return LDS(est, float(low), float(high), per_query)


def mean_interval(values, n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean of ``values`` and its 95% percentile-bootstrap interval (one value: low = high).

    Used for the removal test (per query: loss increase after removing a method's top k minus that after removing
    k random same-class points). Cost: n_boot means of len(values) numbers."""
    v = _np(values).astype(float).ravel()
    if not len(v):
        raise ValueError("mean_interval needs at least one value")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(len(v), size=(n_boot, len(v)))].mean(1) if n_boot and len(v) > 1 else v[:1]
    low, high = np.percentile(means, [2.5, 97.5]) if len(v) > 1 else (v[0], v[0])
    return float(v.mean()), float(low), float(high)


def lds_difference(scores_a, scores_b, subsets, losses, n_boot: int = 1000, seed: int = 0
                   ) -> tuple[float, float, float]:
    """(LDS(a) - LDS(b), low, high): the difference of two methods' ``lds`` on the same refits, with a PAIRED 95%
    bootstrap interval (each resample draws the queries and subsets once and scores both methods on them; the
    shared subset noise cancels, so the interval is narrower than the two marginal ones suggest).
    Cost: twice that of ``lds``."""
    Z, L = _np(subsets).astype(float), _np(losses).astype(float)  # (M, n), (M, Q)
    pa, pb = Z @ _np(scores_a).astype(float).T, Z @ _np(scores_b).astype(float).T  # (M, Q) each
    if pa.shape != L.shape or pb.shape != L.shape:
        raise ValueError(f"predictions {pa.shape} / {pb.shape} and losses {L.shape} must all be (M, Q)")

    def diff(m: np.ndarray, q: np.ndarray) -> float:
        i = np.ix_(m, q)
        return float(np.nanmean(_column_spearman(pa[i], L[i])) - np.nanmean(_column_spearman(pb[i], L[i])))

    est = diff(np.arange(len(Z)), np.arange(L.shape[1]))
    rng = np.random.default_rng(seed)
    boot = [diff(rng.integers(len(Z), size=len(Z)), rng.integers(L.shape[1], size=L.shape[1]))
            for _ in range(n_boot)]
    low, high = np.nanpercentile(boot, [2.5, 97.5]) if boot else (est, est)
    return est, float(low), float(high)
