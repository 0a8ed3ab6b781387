"""Plausible wrong answers to notebook 03's exercises, each with a phrase its checker's message must contain."""

import torch
from torch.func import grad


def _oss_unnormalised(R_val, theta, gamma):
    g = grad(R_val)(theta)
    return R_val(theta + gamma * g) - R_val(theta)


def _oss_downhill(R_val, theta, gamma):
    g = grad(R_val)(theta)
    return R_val(theta - gamma * g / g.norm()) - R_val(theta)


def _oss_level(R_val, theta, gamma):
    g = grad(R_val)(theta)
    return R_val(theta + gamma * g / g.norm())


def _oss_linear(R_val, theta, gamma):
    return gamma * grad(R_val)(theta).norm()


def _sam_plain(loss_fn, theta, rho, lr):
    return theta - lr * grad(loss_fn)(theta)


def _sam_unnormalised(loss_fn, theta, rho, lr):
    g = grad(loss_fn)(theta)
    return theta - lr * grad(loss_fn)(theta + rho * g)


def _sam_downhill(loss_fn, theta, rho, lr):
    g = grad(loss_fn)(theta)
    return theta - lr * grad(loss_fn)(theta - rho * g / g.norm())


def _sam_no_restore(loss_fn, theta, rho, lr):
    g = grad(loss_fn)(theta)
    e = rho * g / g.norm()
    return theta + e - lr * grad(loss_fn)(theta + e)


def _seb_no_square(mu, R):
    return torch.exp(-2 * mu / R)


def _seb_no_two(mu, R):
    return torch.exp(-(mu**2) / R**2)


def _seb_R_not_squared(mu, R):
    return torch.exp(-2 * mu**2 / R)


def _seb_complement(mu, R):
    return 1 - torch.exp(-2 * mu**2 / R**2)


WRONG = {
    "one_step_sharpness": [
        (_oss_unnormalised, "not normalised"),
        (_oss_downhill, "down the gradient"),
        (_oss_level, "sharpness is its increase"),
        (_oss_linear, "linear model"),
    ],
    "sam_step": [
        (_sam_plain, "plain gradient descent"),
        (_sam_unnormalised, "not normalised"),
        (_sam_downhill, "points downhill"),
        (_sam_no_restore, "starts from the perturbed point"),
    ],
    "sign_error_bound": [
        (_seb_no_square, "not squared"),
        (_seb_no_two, "factor 2 is missing"),
        (_seb_R_not_squared, "R is not squared"),
        (_seb_complement, "1 minus the bound"),
    ],
}
