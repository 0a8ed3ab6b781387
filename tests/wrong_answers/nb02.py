"""Plausible wrong answers to notebook 02's exercises, each with a phrase its checker's message must contain."""

import torch

from ifkit.optim import fullbatch


def _refit(prob, X, y, Xv, yv, w, weight_decay):
    theta_eps = fullbatch.minimise(prob, X, y, weight_decay, weights=w)
    with torch.no_grad():
        return prob.mean_loss(theta_eps, Xv, yv) - prob.mean_loss(prob.theta, Xv, yv)


def _tvc_renormalised(prob, X, y, Xv, yv, i, eps, weight_decay):
    w = torch.full((len(X),), 1 / len(X), dtype=torch.float64)
    w[i] += eps
    return _refit(prob, X, y, Xv, yv, w / w.sum(), weight_decay)


def _tvc_sign(prob, X, y, Xv, yv, i, eps, weight_decay):
    w = torch.full((len(X),), 1 / len(X), dtype=torch.float64)
    w[i] += eps
    return -_refit(prob, X, y, Xv, yv, w, weight_decay)


def _tvc_subtracted(prob, X, y, Xv, yv, i, eps, weight_decay):
    w = torch.full((len(X),), 1 / len(X), dtype=torch.float64)
    w[i] -= eps
    return _refit(prob, X, y, Xv, yv, w, weight_decay)


def _tvc_drop_point(prob, X, y, Xv, yv, i, eps, weight_decay):
    keep = torch.arange(len(X)) != i  # always removes the point, whatever eps says; the mean over n-1 points
    theta = fullbatch.minimise(prob, X[keep], y[keep], weight_decay)
    with torch.no_grad():
        return prob.mean_loss(theta, Xv, yv) - prob.mean_loss(prob.theta, Xv, yv)


def _pc_sign(g_train, H_R, eps):
    return eps * torch.linalg.solve(H_R, g_train.T).T


def _pc_transposed(g_train, H_R, eps):
    return -eps * torch.linalg.solve(H_R, g_train.T)


def _pc_multiplied(g_train, H_R, eps):
    return -eps * g_train @ H_R


def _pc_no_eps(g_train, H_R, eps):
    return -torch.linalg.solve(H_R, g_train.T).T


def _slc_first(dtheta, g_val, H_val):
    return dtheta @ g_val


def _slc_no_half(dtheta, g_val, H_val):
    return dtheta @ g_val + ((dtheta @ H_val) * dtheta).sum(1)


def _slc_matrix(dtheta, g_val, H_val):
    return (dtheta @ g_val)[:, None] + 0.5 * dtheta @ H_val @ dtheta.T


WRONG = {
    "true_val_change": [
        (_tvc_renormalised, "renormalised"),
        (_tvc_sign, "sign is flipped"),
        (_tvc_subtracted, "eps is subtracted"),
        (_tvc_drop_point, "renormalised"),  # on the leave-one-out case this is the same mistake
    ],
    "parameter_change": [
        (_pc_sign, "sign is flipped"),
        (_pc_transposed, "transposed"),
        (_pc_multiplied, "multiplied, not inverted"),
        (_pc_no_eps, "eps is missing"),
    ],
    "second_order_loss_change": [
        (_slc_first, "curvature term is missing"),
        (_slc_no_half, "1/2"),
        (_slc_matrix, "(m, m) matrix"),
    ],
}
