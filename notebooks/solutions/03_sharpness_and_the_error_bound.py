"""Reference answers for notebook 03's exercises (CI fills them into the notebook and runs it)."""

import torch
from torch.func import grad


def one_step_sharpness(R_val, theta, gamma):
    g = grad(R_val)(theta)                                  # (p,)
    with torch.no_grad():
        return R_val(theta + gamma * g / g.norm()) - R_val(theta)


def sam_step(loss_fn, theta, rho, lr):
    g = grad(loss_fn)(theta)                                # (p,)
    e = rho * g / g.norm()                                  # (p,) the worst point of the linearised ball
    return theta - lr * grad(loss_fn)(theta + e)            # (p,) docs/PAPER.md, Eq. 15


def sign_error_bound(mu, R):
    return torch.exp(-2 * mu**2 / R**2)                     # docs/PAPER.md, Eq. 8
