"""Plausible wrong answers to notebook 07's exercises, each with a phrase its checker's message must contain."""

import torch
from sklearn.metrics import roc_auc_score


def _auc_plus(row, same):
    return roc_auc_score(same.numpy(), row.numpy())


def _auc_one_minus(row, same):
    return 1 - roc_auc_score(same.numpy(), (-row).numpy())


def _auc_abs(row, same):
    return roc_auc_score(same.numpy(), row.abs().numpy())


def _recall_plus(row, same, k):
    top = torch.argsort(row, descending=True)[:k]
    return same[top].sum().item() / same.sum().item()


def _recall_over_k(row, same, k):
    top = torch.argsort(row)[:k]
    return same[top].sum().item() / k


def _recall_abs(row, same, k):
    top = torch.argsort(row.abs(), descending=True)[:k]
    return same[top].sum().item() / same.sum().item()


def _cos_dot(Gq, Gt):
    return -Gq @ Gt.T


def _cos_sign(Gq, Gt):
    return (Gq / Gq.norm(dim=1, keepdim=True)) @ (Gt / Gt.norm(dim=1, keepdim=True)).T


def _cos_query_only(Gq, Gt):
    return -(Gq / Gq.norm(dim=1, keepdim=True)) @ Gt.T


def _cos_train_only(Gq, Gt):
    return -Gq @ (Gt / Gt.norm(dim=1, keepdim=True)).T


def _cos_axis0(Gq, Gt):
    return -(Gq / Gq.norm(dim=0, keepdim=True)) @ (Gt / Gt.norm(dim=0, keepdim=True)).T


WRONG = {
    "query_auc": [
        (_auc_plus, "ranked by +I"),
        (_auc_one_minus, "1 - AUC"),
        (_auc_abs, "ranked by |I"),
    ],
    "recall_at_k": [
        (_recall_plus, "the top k by +I"),
        (_recall_over_k, "precision@k"),
        (_recall_abs, "the top k by |I"),
    ],
    "cosine_pairwise": [
        (_cos_dot, "not normalised"),
        (_cos_sign, "sign is missing"),
        (_cos_query_only, "only the query gradients are normalised"),
        (_cos_train_only, "only the training gradients are normalised"),
        (_cos_axis0, "wrong axis"),
    ],
}
