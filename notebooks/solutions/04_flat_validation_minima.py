"""Reference answers for notebook 04's exercises (CI fills them into the notebook and runs it)."""

import torch


def lpf_noise(W, z, sigma):
    return sigma * W.norm(dim=1, keepdim=True) * z  # (d_out, d_in): one standard deviation per filter (row)


def loss_change_at_minimum(g_train, H_val, eps):
    dtheta = -eps * torch.linalg.solve(H_val, g_train.T).T  # (n, p) Eq. 11, one row per training point
    return 0.5 * ((dtheta @ H_val) * dtheta).sum(1)  # (n,) Eq. 12


def vm_score(g_train, H_val, damping):
    p = H_val.shape[0]
    U = torch.linalg.solve(H_val + damping * torch.eye(p, dtype=H_val.dtype), g_train.T).T  # (n, p)
    return (g_train * U).sum(1)  # (n,) Eq. 13
