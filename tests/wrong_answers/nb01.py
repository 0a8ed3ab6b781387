"""Plausible wrong answers to notebook 01's exercises, each with a phrase its checker's message must contain."""

import torch
from torch.func import grad, jvp, vmap


def _psg_sign(loss_one, theta, X, y):
    return -vmap(grad(loss_one), in_dims=(None, 0, 0))(theta, X, y)


def _psg_transposed(loss_one, theta, X, y):
    return vmap(grad(loss_one), in_dims=(None, 0, 0))(theta, X, y).T


def _psg_mean(loss_one, theta, X, y):
    G = vmap(grad(loss_one), in_dims=(None, 0, 0))(theta, X, y)
    return G.mean(0).expand_as(G)


WRONG = {
    "per_sample_grads": [
        (_psg_sign, "sign is flipped"),
        (_psg_transposed, "transposed"),
        (_psg_mean, "mean loss repeated"),
    ],
}


def _hvp_grad(loss_fn, theta, v):
    return grad(loss_fn)(theta)


def _hvp_sign(loss_fn, theta, v):
    return -jvp(grad(loss_fn), (theta,), (v,))[1]


def _hvp_jvp_of_loss(loss_fn, theta, v):
    return jvp(loss_fn, (theta,), (v,))[1]


def _hvp_finite_step(loss_fn, theta, v):
    return grad(loss_fn)(theta + v) - grad(loss_fn)(theta)  # a finite difference with step 1: not H v


def _inf_sign(g_train, g_val, H, damping):
    return g_train @ torch.linalg.solve(H + damping * torch.eye(H.shape[0], dtype=H.dtype), g_val)


def _inf_no_damping(g_train, g_val, H, damping):
    return -g_train @ torch.linalg.solve(H, g_val)


def _inf_damping_everywhere(g_train, g_val, H, damping):
    return -g_train @ torch.linalg.solve(H + damping, g_val)


def _inf_multiplied(g_train, g_val, H, damping):
    return -g_train @ (H + damping * torch.eye(H.shape[0], dtype=H.dtype)) @ g_val


def _inf_mean(g_train, g_val, H, damping):
    return -(g_train @ torch.linalg.solve(H + damping * torch.eye(H.shape[0], dtype=H.dtype), g_val)).mean()


WRONG.update({
    "hessian_vector_product": [
        (_hvp_grad, "the gradient of the loss, not the Hessian times v"),
        (_hvp_sign, "sign is flipped"),
        (_hvp_jvp_of_loss, "directional derivative g^T v"),
        (_hvp_finite_step, "largest difference"),
    ],
    "influence_exact": [
        (_inf_sign, "sign is flipped"),
        (_inf_no_damping, "damping is missing"),
        (_inf_damping_everywhere, "added to every entry of H"),
        (_inf_multiplied, "multiplied, not inverted"),
        (_inf_mean, "expected shape (5,), got a scalar"),
    ],
})
