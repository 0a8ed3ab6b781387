"""Notebook 01's exercises: influence from scratch (docs/PAPER.md, Eq. 1-4).

1.1 ``per_sample_grads``: the rows g_z of Eq. 1, by vmap over grad (oracle: a for-loop of grads).
1.2 ``hessian_vector_product``: H v by forward-over-reverse (oracle: the full Hessian, times v).
1.3 ``influence_exact``: Eq. 4, -g_train (H + damping I)^-1 g_val (oracle: a dense solve).

The cases are tiny float64 problems written as pure functions of a flat parameter vector ``theta`` (p,), the form
the notebook builds by hand: ``loss_one(theta, x, t)`` for one example, ``loss_fn(theta)`` for a mean loss.
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


# ----------------------------------------------------------------------------- Exercise 1.2: a Hessian-vector product
def _quadratic(seed: int, p: int):
    """f(theta) = 1/2 theta^T A theta + b^T theta with A symmetric and indefinite: its Hessian is A exactly."""
    g = seeded(seed)
    M = randn(g, p, p)
    A, b = (M + M.T) / 2, randn(g, p)  # (p, p), (p,)
    return (lambda theta: 0.5 * theta @ A @ theta + b @ theta), randn(g, p), randn(g, p), A


def _mean_loss(seed: int, n: int, D: int, K: int):
    loss_one, theta, X, y = _problem(seed, n, D, K)
    return (lambda th: vmap(loss_one, in_dims=(None, 0, 0))(th, X, y).mean()), theta, randn(seeded(seed + 50), theta.numel())


def _tanh_net(seed: int, n: int, D: int, h: int):
    """A non-convex scalar loss: a one-hidden-layer tanh net's mean squared error, theta = (vec(W1), w2)."""
    g = seeded(seed)
    X, t = randn(g, n, D), randn(g, n)

    def loss(theta: Tensor) -> Tensor:
        W1, w2 = theta[: h * D].view(h, D), theta[h * D :]
        return ((torch.tanh(X @ W1.T) @ w2 - t) ** 2).mean()

    return loss, randn(g, h * D + h), randn(g, h * D + h)


def _hvp_cases() -> list[Case]:
    quad, th_q, v_q, A = _quadratic(3, 5)
    problems = [("quadratic 1/2 theta^T A theta + b^T theta, p=5 (H = A)", quad, th_q, v_q),
                ("softmax regression mean loss, p=15", *_mean_loss(4, 6, 4, 3)),
                ("tanh network (non-convex), p=12", *_tanh_net(5, 8, 3, 3))]
    cases = []
    for label, f, theta, v in problems:
        H = torch.autograd.functional.hessian(f, theta)  # (p, p): the oracle forms the whole matrix
        g = grad(f)(theta)  # (p,)
        wrong = {"the gradient of the loss, not the Hessian times v (a jvp of grad is needed, not grad alone)": g,
                 "the sign is flipped": -(H @ v),
                 "the directional derivative g^T v of the loss (a jvp of loss_fn, not of grad(loss_fn))": g @ v,
                 "only the Hessian's diagonal times v (diag(H) * v)": H.diagonal() * v,
                 "the gradient times v entry by entry (g * v)": g * v}
        cases.append(Case(label, (f, theta, v), H @ v, wrong))
    return cases


register(Exercise(
    name="hessian_vector_product",
    notebook="01",
    task="hessian_vector_product(loss_fn, theta, v) -> (p,): H v, where H (p, p) is the Hessian of the scalar "
         "loss_fn at theta (p,), without forming H.",
    hint="H v is the directional derivative of the gradient along v: jvp(grad(loss_fn), (theta,), (v,)) returns "
         "(gradient, H v); take the second.",
    cases=_hvp_cases,
))


# ------------------------------------------------------------------------------ Exercise 1.3: the influence function
def _spd(g: torch.Generator, p: int, rank: int | None = None) -> Tensor:
    M = randn(g, p, rank or p)
    return M @ M.T / p + (0.0 if rank else 0.1) * torch.eye(p, dtype=torch.float64)  # (p, p) PSD


def _influence_cases() -> list[Case]:
    cases = []
    for seed, (n, p, rank, damping) in enumerate([(5, 4, None, 0.1), (7, 6, 3, 0.5), (3, 8, None, 1e-2)]):
        g = seeded(20 + seed)
        H, g_train, g_val = _spd(g, p, rank), randn(g, n, p), randn(g, p)
        eye = torch.eye(p, dtype=torch.float64)
        expected = -g_train @ torch.linalg.solve(H + damping * eye, g_val)  # (n,) docs/PAPER.md, Eq. 4
        wrong = {"the sign is flipped (Eq. 4 has a minus: up-weighting a helpful point lowers the validation "
                 "loss)": -expected,
                 "H is multiplied, not inverted (use torch.linalg.solve)": -g_train @ ((H + damping * eye) @ g_val),
                 "the damping is added to every entry of H (H + damping), not to its diagonal "
                 "(H + damping * I)": -g_train @ torch.linalg.solve(H + damping, g_val),
                 "the Hessian is left out (a gradient dot product)": -g_train @ g_val}
        if rank is None:  # H alone is invertible only in full rank
            wrong["the damping is missing: (H + damping I)^-1, not H^-1"] = -g_train @ torch.linalg.solve(H, g_val)
        what = f"H of rank {rank} (singular: damping needed)" if rank else "H positive definite"
        cases.append(Case(f"n={n}, p={p}, {what}, damping={damping}", (g_train, g_val, H, damping), expected, wrong))
    return cases


register(Exercise(
    name="influence_exact",
    notebook="01",
    task="influence_exact(g_train, g_val, H, damping) -> (n,): score_i = -g_train[i]^T (H + damping I)^-1 g_val "
         "(docs/PAPER.md, Eq. 4), g_train (n, p), g_val (p,), H (p, p) symmetric.",
    hint="one linear solve, v = torch.linalg.solve(H + damping * torch.eye(p, dtype=H.dtype), g_val), then one "
         "matrix-vector product: -(g_train @ v).",
    cases=_influence_cases,
))
