"""Notebook 05's exercises: mislabel detection (docs/PAPER.md, Eq. 18) and the cheapest score, the loss.

Every case is a small seeded problem: logits and labels for the per-sample loss (oracle: torch's cross-entropy,
what ``ifkit.score("loss")`` computes), and a score vector with a flip mask in which the flipped points score
higher on average (oracles: ``ifkit.metrics.auc`` and ``ifkit.metrics.recall_at``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ifkit import metrics
from ifkit.exercises.checking import Case, Exercise, labels, randn, register, seeded


# ------------------------------------------------------------------------------------ 5.1 the loss as a score
def _loss_cases() -> list[Case]:
    cases = []
    for seed, (n, K, scale, label) in enumerate([(6, 3, 1.0, "6 points, 3 classes"),
                                                 (5, 10, 3.0, "5 points, 10 classes"),
                                                 (4, 4, 500.0, "very confident logits (exp overflows)")]):
        g = seeded(70 + seed)
        logits, y = scale * randn(g, n, K), labels(n, K, g)  # (n, K), (n,)
        expected = F.cross_entropy(logits, y, reduction="none")  # (n,)
        p_y = logits.softmax(-1)[torch.arange(n), y]  # (n,)
        wrong = {"the batch's mean loss, not one loss per point (reduction='none')": expected.mean(),
                 "-logit of the given label without the log-sum-exp term; the loss is -log_softmax(logits)[i, y_i]":
                     -logits[torch.arange(n), y],
                 "the probability of the given label p_y: a confidence (higher = LESS suspicious), not -log p_y": p_y,
                 "log p_y: the sign is flipped (the loss is -log p_y, higher = more suspicious)": -expected,
                 "the loss of the predicted class (argmax), not of the given label y":
                     F.cross_entropy(logits, logits.argmax(1), reduction="none")}
        cases.append(Case(label, (logits, y), expected, wrong))
    return cases


register(Exercise(
    name="loss_scores",
    notebook="05",
    task="loss_scores(logits, y) -> (n,): each training point's cross-entropy loss -log softmax(logits[i])[y[i]] "
         "under its GIVEN label, the cheapest suspicion score (the 'loss' method; higher = more suspicious).",
    hint="F.cross_entropy(logits, y, reduction='none'), or -logits.log_softmax(1)[torch.arange(n), y]; exp() of "
         "large logits overflows, log_softmax does not.",
    cases=_loss_cases,
))


# ----------------------------------------------------------------------------------------- shared score vectors
def _scores_and_mask(seed: int, n: int, n_flipped: int, shift: float) -> tuple[Tensor, Tensor]:
    """(n,) scores in which the ``n_flipped`` flipped points score ``shift`` higher on average, and the (n,) mask."""
    g = seeded(seed)
    flipped = torch.zeros(n, dtype=torch.bool)
    flipped[torch.randperm(n, generator=g)[:n_flipped]] = True
    return randn(g, n) + shift * flipped, flipped


# ------------------------------------------------------------------------------------------------ 5.2 ROC AUC
def _auc_cases() -> list[Case]:
    cases = []
    for seed, (n, n_flipped, shift) in enumerate([(40, 12, 1.0), (60, 9, 1.5), (25, 10, 0.5)]):
        scores, flipped = _scores_and_mask(80 + seed, n, n_flipped, shift)
        expected = metrics.auc(scores, flipped)
        wrong = {"1 - AUC: the sign of the scores is flipped (rank by the scores themselves: higher = more "
                 "suspicious)": 1 - expected,
                 "the flip mask passed as the scores too (a perfect 1.0 says nothing about the method)": 1.0,
                 "the share of points whose score is above 0, not an area under the ROC curve":
                     (scores > 0).double().mean().item()}
        cases.append(Case(f"{n} points, {n_flipped} flipped", (scores, flipped), expected, wrong))
    return cases


register(Exercise(
    name="flip_auc",
    notebook="05",
    task="flip_auc(scores, flipped) -> float: the ROC AUC of detecting the flipped labels by ranking on the scores "
         "(docs/PAPER.md, Eq. 18): 1 = every flipped point above every clean one, 0.5 = chance.",
    hint="sklearn.metrics.roc_auc_score(y_true, y_score): the 0/1 truth first (flipped), the scores second; "
         "convert tensors with .numpy().",
    cases=_auc_cases,
))


# ------------------------------------------------------------------------------------------ 5.3 recall at k
def _recall_cases() -> list[Case]:
    cases = []
    for seed, (n, n_flipped, k, shift) in enumerate([(50, 12, 10, 1.5), (40, 6, 10, 2.0), (30, 9, 3, 1.0)]):
        scores, flipped = _scores_and_mask(90 + seed, n, n_flipped, shift)
        expected = metrics.recall_at(scores, flipped, frac=k / n)
        top, bottom = torch.topk(scores, k).indices, torch.topk(-scores, k).indices  # (k,), (k,)
        hits = int(flipped[top].sum())
        wrong = {"the k LOWEST scores: flag the k highest (torch.topk), higher = more suspicious":
                     flipped[bottom].sum().item() / n_flipped,
                 "divided by k: that is the precision of the flags; recall divides by the number of flipped points":
                     hits / k,
                 "divided by the number of points n; recall divides by the number of flipped points": hits / n,
                 "the number of flipped points found, not yet divided by the number flipped": float(hits)}
        cases.append(Case(f"{n} points, {n_flipped} flipped, k={k}", (scores, flipped, k), expected, wrong))
    return cases


register(Exercise(
    name="flip_recall_at_k",
    notebook="05",
    task="flip_recall_at_k(scores, flipped, k) -> float: flag the k highest-scoring points, and return the share of "
         "ALL flipped points among them (docs/PAPER.md, Eq. 18; ifkit.metrics.recall_at with frac = k / n).",
    hint="flags = torch.topk(scores, k).indices; flipped[flags].sum() / flipped.sum(); return a float (.item()).",
    cases=_recall_cases,
))
