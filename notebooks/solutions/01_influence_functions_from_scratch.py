"""Reference answers for notebook 01's exercises (CI fills them into the notebook and runs it)."""

import torch
from torch.func import grad, jvp, vmap


def per_sample_grads(loss_one, theta, X, y):
    return vmap(grad(loss_one), in_dims=(None, 0, 0))(theta, X, y)  # (n, p)


def hessian_vector_product(loss_fn, theta, v):
    return jvp(grad(loss_fn), (theta,), (v,))[1]  # (p,) = H v, forward-over-reverse


def influence_exact(g_train, g_val, H, damping):
    eye = torch.eye(H.shape[0], dtype=H.dtype)
    return -(g_train @ torch.linalg.solve(H + damping * eye, g_val))  # (n,) docs/PAPER.md, Eq. 4
