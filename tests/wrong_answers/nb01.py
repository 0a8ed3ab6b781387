"""Plausible wrong answers to notebook 01's exercises, each with a phrase its checker's message must contain."""

from torch.func import grad, vmap


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
