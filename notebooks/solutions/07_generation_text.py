"""Reference answers for notebook 07's exercises (CI fills them into the notebook and runs it)."""

import torch
from sklearn.metrics import roc_auc_score


def query_auc(pairwise_row, same_class):
    return roc_auc_score(same_class.numpy(), (-pairwise_row).numpy())  # rank by -I: most helpful first (Eq. 19)


def recall_at_k(pairwise_row, same_class, k):
    top = torch.argsort(pairwise_row)[:k]  # (k,) the k most helpful: most negative influence first
    return same_class[top].sum().item() / same_class.sum().item()


def cosine_pairwise(G_query, G_train):
    unit_q = G_query / G_query.norm(dim=1, keepdim=True)  # (Q, p)
    unit_t = G_train / G_train.norm(dim=1, keepdim=True)  # (n, p)
    return -unit_q @ unit_t.T  # (Q, n) = -cos(g_q, g_i)
