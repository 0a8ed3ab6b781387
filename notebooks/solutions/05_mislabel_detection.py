"""Reference answers for notebook 05's exercises (CI fills them into the notebook and runs it)."""

import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score


def loss_scores(logits, y):
    return F.cross_entropy(logits, y, reduction="none")  # (n,) -log softmax(logits)[i, y_i]


def flip_auc(scores, flipped):
    return roc_auc_score(flipped.numpy(), scores.numpy())


def flip_recall_at_k(scores, flipped, k):
    flags = torch.topk(scores, k).indices  # (k,) the k most suspicious points
    return (flipped[flags].sum() / flipped.sum()).item()
