"""Notebook 01's exercises: influence from scratch (docs/PAPER.md, Eq. 1-4).

Every case is a tiny float64 softmax regression, written as ``loss_one(theta, x, t)``: the loss of ONE example
as a pure function of the flat parameter vector ``theta`` (p,) -- the form the notebook builds by hand.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import grad, vmap

from ifkit.exercises.checking import Case, Exercise, labels, randn, register, seeded


def softmax_regression(n_features: int, n_classes: int):
    """``loss_one(theta, x, t)`` for softmax regression with theta = (vec(W), b), p = K*D + K."""
    K, D = n_classes, n_features

    def loss_one(theta: Tensor, x: Tensor, t: Tensor) -> Tensor:
        W, b = theta[: K * D].view(K, D), theta[K * D :]
        return torch.nn.functional.cross_entropy(W @ x.reshape(-1) + b, t)

    return loss_one


def _problem(seed: int, n: int, D: int, K: int):
    g = seeded(seed)
    theta = 0.5 * randn(g, K * D + K)  # (p,)
    return softmax_regression(D, K), theta, randn(g, n, D), labels(n, K, g)


def _per_sample_grads_cases() -> list[Case]:
    cases = []
    for seed, (n, D, K) in enumerate([(5, 3, 2), (7, 4, 3), (1, 6, 4)]):
        loss_one, theta, X, y = _problem(seed, n, D, K)
        G = torch.stack([grad(loss_one)(theta, X[i], y[i]) for i in range(n)])  # (n, p): the for-loop oracle
        wrong = {"the gradient of the batch's mean loss repeated for every example (vmap over grad, not grad "
                 "of a mean)": G.mean(0).expand_as(G),
                 "the sign is flipped (gradient of -loss)": -G}
        if n > 1:
            wrong["the gradient of the summed loss, not one gradient per example"] = G.sum(0)
        cases.append(Case(f"n={n} examples, {D} features, {K} classes", (loss_one, theta, X, y), G, wrong))
    return cases


register(Exercise(
    name="per_sample_grads",
    notebook="01",
    task="per_sample_grads(loss_one, theta, X, y) -> (n, p): row i is the gradient of loss_one(theta, X[i], y[i]) "
         "with respect to theta.",
    hint="grad(loss_one) differentiates one example's loss; vmap(..., in_dims=(None, 0, 0)) maps it over the "
         "rows of X and y while sharing theta.",
    cases=_per_sample_grads_cases,
))


def per_sample_grads_reference(loss_one, theta: Tensor, X: Tensor, y: Tensor) -> Tensor:
    """The library-side answer, for tests: vmap over grad."""
    return vmap(grad(loss_one), in_dims=(None, 0, 0))(theta, X, y)  # (n, p)
