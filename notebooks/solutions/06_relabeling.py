"""Reference answers for notebook 06's exercises (CI fills them into the notebook and runs it)."""

import torch


def relabel(candidate_scores):
    return candidate_scores.argmin(dim=1)  # (n,): the least harmful candidate label (Eq. 17)


def flipped_relabel_accuracy(new_labels, flags, given, clean):
    hit = given[flags] != clean[flags]  # (k,) the flags that really were flipped
    return (new_labels[hit] == clean[flags][hit]).double().mean().item()


def vm_candidate_scores(G, H_val, damping):
    n, C, p = G.shape
    flat = G.reshape(n * C, p)  # (n*C, p) one row per candidate (x_i, c)
    V = torch.linalg.solve(H_val + damping * torch.eye(p, dtype=H_val.dtype), flat.T).T  # (n*C, p)
    return (flat * V).sum(1).view(n, C)  # (n, C) = g~^T (H~_val + damping I)^-1 g~ (Eq. 13)
