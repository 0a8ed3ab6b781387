"""Plausible wrong answers to notebook 04's exercises, each with a phrase its checker's message must contain."""

import torch


def _lpf_columns(W, z, sigma):
    return sigma * W.norm(dim=0, keepdim=True) * z


def _lpf_whole(W, z, sigma):
    return sigma * W.norm() * z


def _lpf_variance(W, z, sigma):
    return sigma**2 * W.norm(dim=1, keepdim=True) * z


def _lpf_plain(W, z, sigma):
    return sigma * z


def _dtheta(g_train, H_val, eps):
    return -eps * torch.linalg.solve(H_val, g_train.T).T


def _change_no_half(g_train, H_val, eps):
    d = _dtheta(g_train, H_val, eps)
    return ((d @ H_val) * d).sum(1)


def _change_eps(g_train, H_val, eps):
    return eps / 2 * (g_train * torch.linalg.solve(H_val, g_train.T).T).sum(1)


def _change_first_order(g_train, H_val, eps):
    return (g_train * _dtheta(g_train, H_val, eps)).sum(1)


def _change_h_not_inverse(g_train, H_val, eps):
    d = -eps * g_train @ H_val
    return 0.5 * ((d @ H_val) * d).sum(1)


def _damped(H_val, damping):
    return H_val + damping * torch.eye(H_val.shape[0], dtype=H_val.dtype)


def _vm_minus(g_train, H_val, damping):
    return -(g_train * torch.linalg.solve(_damped(H_val, damping), g_train.T).T).sum(1)


def _vm_no_inverse(g_train, H_val, damping):
    return (g_train * (g_train @ _damped(H_val, damping))).sum(1)


def _vm_norm(g_train, H_val, damping):
    return (g_train**2).sum(1)


def _vm_mean(g_train, H_val, damping):
    return (g_train * torch.linalg.solve(_damped(H_val, damping), g_train.T).T).sum(1).mean()


def _vm_matrix(g_train, H_val, damping):
    return g_train @ torch.linalg.solve(_damped(H_val, damping), g_train.T)


def _vm_no_damping(g_train, H_val, damping):
    return (g_train * torch.linalg.solve(H_val, g_train.T).T).sum(1)


WRONG = {
    "lpf_noise": [
        (_lpf_columns, "one norm per column"),
        (_lpf_whole, "the whole matrix"),
        (_lpf_variance, "sigma squared"),
        (_lpf_plain, "no filter norm"),
    ],
    "loss_change_at_minimum": [
        (_change_no_half, "no 1/2"),
        (_change_eps, "eps instead of eps^2"),
        (_change_first_order, "the first-order term"),
        (_change_h_not_inverse, "instead of its inverse"),
    ],
    "vm_score": [
        (_vm_minus, "a minus sign"),
        (_vm_no_inverse, "no inverse"),
        (_vm_norm, "the curvature is missing"),
        (_vm_mean, "not one score per training point"),
        (_vm_matrix, "the score is its diagonal"),
        (_vm_no_damping, "no damping"),
    ],
}
