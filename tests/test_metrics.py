"""ifkit.metrics.ranking_metrics: the generation experiments' one ranking metric, against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from ifkit.metrics import RankingMetrics, ranking_metrics


def _by_sklearn(T: np.ndarray, st: np.ndarray, sq: np.ndarray, top: int) -> tuple[float, float, float]:
    """The per-query definition, one sklearn call and one sort per query (the oracle)."""
    aucs, recalls, precs = [], [], []
    for q in range(len(sq)):
        pos = st == sq[q]
        order = np.argsort(T[q], kind="stable")  # most negative = most helpful first
        aucs.append(roc_auc_score(pos, -T[q]))
        recalls.append(pos[order[: pos.sum()]].mean())
        precs.append(pos[order[:top]].mean())
    return float(np.mean(aucs)), float(np.mean(recalls)), float(np.mean(precs))


@pytest.mark.parametrize("decimals", [None, 1, 0])  # None: no ties; 1, 0: more and more ties
@pytest.mark.parametrize("top", [1, 5])
def test_ranking_metrics_equal_sklearn_per_query(decimals, top):
    rng = np.random.default_rng(decimals or 7)
    st, sq = rng.integers(0, 4, 60), rng.integers(0, 4, 9)
    T = rng.normal(size=(9, 60)) - 0.8 * (st[None, :] == sq[:, None])  # same group: a little more helpful
    if decimals is not None:
        T = np.round(T, decimals)
    assert decimals is None or len(np.unique(T)) < T.size / 3  # the ties are really there
    got = ranking_metrics(torch.tensor(T, dtype=torch.float32), st, sq, top=top)
    want = _by_sklearn(T.astype(np.float32), st, sq, top)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert 0.5 < got.auc < 1  # not a degenerate case: better than chance, not perfect


def test_ranking_metrics_on_a_hand_made_case():
    train, query = np.array([0, 0, 1, 1]), np.array([0, 1])
    # query 0: both group-0 points most helpful (perfect); query 1: one group-1 point first, one last
    P = np.array([[-3.0, -2.0, 1.0, 2.0],
                  [-1.0, 0.5, -2.0, 3.0]])
    auc, recall, top1 = ranking_metrics(P, train, query, top=1)
    # query 1: -P = [1, -0.5, 2, -3]; positives {2: 2, 3: -3} vs negatives {0: 1, 1: -0.5}: 2 of 4 pairs won
    assert (auc, recall, top1) == ((1.0 + 0.5) / 2, (1.0 + 0.5) / 2, 1.0)
    assert ranking_metrics(P, train, query, top=3)[2] == pytest.approx((2 / 3 + 1 / 3) / 2)
    # a tie between a positive and a negative counts one half
    assert ranking_metrics(np.array([[0.0, 0.0, 1.0]]), [0, 1, 1], [0]).auc == 0.75


def test_the_result_unpacks_and_reads_as_a_mapping():
    m = RankingMetrics(0.9, 0.8, 0.7)
    auc, recall, prec = m
    assert (auc, recall, prec) == (0.9, 0.8, 0.7) and m[1] == 0.8 and m["precision5"] == 0.7
    assert {**m} == m.as_dict() == {"auc": 0.9, "recall": 0.8, "precision5": 0.7}
    assert RankingMetrics(0.9, 0.8, 0.7, top=3).keys() == ("auc", "recall", "precision3")
    with pytest.raises(KeyError, match="precision5"):
        m["precision"]


def test_bad_input_names_the_fix():
    with pytest.raises(ValueError, match=r"table\[query, train\]"):
        ranking_metrics(np.zeros((3, 2)), [0, 1, 1], [0, 1])  # transposed
    with pytest.raises(ValueError, match="some, but not all"):
        ranking_metrics(np.zeros((1, 3)), [0, 1, 1], [5])
    with pytest.raises(ValueError, match="some, but not all"):
        ranking_metrics(np.zeros((1, 2)), [1, 1], [1])
