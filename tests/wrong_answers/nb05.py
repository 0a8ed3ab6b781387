"""Plausible wrong answers to notebook 05's exercises, each with a phrase its checker's message must contain."""

import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score


def _loss_mean(logits, y):
    return F.cross_entropy(logits, y)


def _loss_no_logsumexp(logits, y):
    return -logits[torch.arange(len(y)), y]


def _loss_probability(logits, y):
    return logits.softmax(1)[torch.arange(len(y)), y]


def _loss_naive_softmax(logits, y):
    p = logits.exp() / logits.exp().sum(1, keepdim=True)  # overflows for large logits
    return -p[torch.arange(len(y)), y].log()


def _auc_sign(scores, flipped):
    return roc_auc_score(flipped.numpy(), -scores.numpy())


def _auc_labels(scores, flipped):
    return roc_auc_score(flipped.numpy(), flipped.numpy())


def _auc_swapped(scores, flipped):
    return roc_auc_score(scores.numpy(), flipped.numpy())


def _recall_bottom(scores, flipped, k):
    return (flipped[torch.topk(-scores, k).indices].sum() / flipped.sum()).item()


def _recall_precision(scores, flipped, k):
    return (flipped[torch.topk(scores, k).indices].sum() / k).item()


def _recall_count(scores, flipped, k):
    return flipped[torch.topk(scores, k).indices].sum().item()


WRONG = {
    "loss_scores": [
        (_loss_mean, "mean loss"),
        (_loss_no_logsumexp, "without the log-sum-exp"),
        (_loss_probability, "a confidence"),
        (_loss_naive_softmax, "NaN or inf"),
    ],
    "flip_auc": [
        (_auc_sign, "1 - AUC"),
        (_auc_labels, "the flip mask passed as the scores"),
        (_auc_swapped, "continuous"),
    ],
    "flip_recall_at_k": [
        (_recall_bottom, "LOWEST scores"),
        (_recall_precision, "precision"),
        (_recall_count, "not yet divided"),
    ],
}
