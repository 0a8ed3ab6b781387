"""Reference answers for notebook 02's exercises (CI fills them into the notebook and runs it)."""

import torch

from ifkit.optim import fullbatch


def true_val_change(prob, X, y, Xv, yv, i, eps, weight_decay):
    n = len(X)
    w = torch.full((n,), 1 / n, dtype=prob.theta.dtype)  # (n,) the mean's weights ...
    w[i] += eps                                           # ... with point i up-weighted (eps = -1/n: removed)
    theta_eps = fullbatch.minimise(prob, X, y, weight_decay, weights=w)  # (p,)
    with torch.no_grad():
        return prob.mean_loss(theta_eps, Xv, yv) - prob.mean_loss(prob.theta, Xv, yv)


def parameter_change(g_train, H_R, eps):
    return -eps * torch.linalg.solve(H_R, g_train.T).T  # (m, p) one Newton step per point


def second_order_loss_change(dtheta, g_val, H_val):
    return dtheta @ g_val + 0.5 * ((dtheta @ H_val) * dtheta).sum(1)  # (m,)
