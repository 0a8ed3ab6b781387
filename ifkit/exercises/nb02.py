"""Notebook 02's exercises: the classic influence function's two steps, each against the truth (docs/PAPER.md, Eq. 2-5).

2.1 ``true_val_change``: the truth, R_val(theta_eps) - R_val(theta*) after re-fitting with one point up-weighted
    (eps = -1/n is leave-one-out, Eq. 5); oracle: ``ifkit.optim.fullbatch.upweight_val_change`` on a tiny convex
    model, where the re-fit has one answer.
2.2 ``parameter_change``: step 1, the Newton step -eps H_R^-1 g_i for every row (Eq. 2); oracle: a dense solve.
2.3 ``second_order_loss_change``: step 2 with its curvature term, g_val^T dtheta + 1/2 dtheta^T H_val dtheta
    (Eq. 3 plus the second-order term of Eq. 12); oracle: a for-loop over the rows.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from ifkit.core.func import make_problem
from ifkit.exercises.checking import Case, Exercise, labels, randn, register, seeded
from ifkit.models import LogisticRegression
from ifkit.optim.fullbatch import fit_full_batch, upweight_val_change


# --------------------------------------------------------------------- Exercise 2.1: the truth, by re-fitting
def _convex(seed: int, n: int, D: int, K: int, weight_decay: float):
    """A tiny float64 logistic regression at its unique optimum theta*: (model, X, y, Xv, yv)."""
    g = seeded(seed)
    X, y, Xv, yv = randn(g, n, D), labels(n, K, g), randn(g, 2 * n, D), labels(2 * n, K, g)
    torch.manual_seed(seed)  # the starting point of the fit; the optimum does not depend on it
    return fit_full_batch(LogisticRegression(D, K).double(), (X, y), weight_decay), X, y, Xv, yv


def _refit_change(theta_star: Tensor, K: int, X: Tensor, y: Tensor, Xv: Tensor, yv: Tensor, w: Tensor,
                  weight_decay: float) -> Tensor:
    """R_val(theta_w) - R_val(theta*) for softmax regression, theta_w = argmin sum_j w_j l_j + wd/2 ||theta||^2.

    Newton's method from theta* with the exact (p, p) Hessian each step (p is tiny), on the closed-form loss:
    a few milliseconds, where going through the model costs ten times more.
    """
    D = X.shape[1]

    def losses(th: Tensor, X: Tensor, y: Tensor) -> Tensor:
        W, b = th[: K * D].view(K, D), th[K * D :]
        return torch.nn.functional.cross_entropy(X @ W.T + b, y, reduction="none")  # (n,)

    theta = theta_star.clone()
    for _ in range(30):
        th = theta.detach().requires_grad_(True)
        objective = (w * losses(th, X, y)).sum() + 0.5 * weight_decay * th.pow(2).sum()
        (g,) = torch.autograd.grad(objective, th, create_graph=True)  # (p,)
        if g.abs().max() <= 1e-12:
            break
        H = torch.stack([torch.autograd.grad(g[j], th, retain_graph=True)[0] for j in range(len(g))])  # (p, p)
        theta = theta - torch.linalg.solve(H, g.detach())
    with torch.no_grad():
        return losses(theta, Xv, yv).mean() - losses(theta_star, Xv, yv).mean()


@functools.lru_cache(maxsize=1)
def _true_val_change_data() -> tuple:
    """The fits, the truths and the wrong answers, computed once per session (a check re-runs only your code)."""
    out = []
    for seed, (n, D, K, wd, points) in enumerate([(12, 3, 3, 0.1, [(4, None), (9, 0.5)]), (15, 4, 3, 0.05, [(0, None)])]):
        model, X, y, Xv, yv = _convex(30 + seed, n, D, K, wd)
        theta = make_problem(model).theta  # (p,) theta*
        for i, eps in points:
            eps = -1.0 / n if eps is None else eps
            expected = upweight_val_change(model, (X, y), (Xv, yv), indices=[i], eps=eps, weight_decay=wd)[0]
            w = torch.full((n,), 1.0 / n, dtype=torch.float64)  # (n,) the eps = 0 weights
            w_up, w_down = w.clone(), w.clone()
            w_up[i] += eps
            w_down[i] -= eps
            with torch.no_grad():
                R_star = float(model(Xv).log_softmax(1).gather(1, yv[:, None]).neg().mean())
            wrong = {"the sign is flipped: R_val(theta*) - R_val(theta_eps), not R_val(theta_eps) - R_val(theta*)":
                         -expected,
                     "the weights are renormalised to sum to 1 (for leave-one-out: a mean over the n-1 other "
                     "points), which strengthens the L2 term relative to the data; keep 1/n and add eps to point "
                     "i's weight": _refit_change(theta, K, X, y, Xv, yv, w_up / w_up.sum(), wd),
                     "eps is subtracted from point i's weight: up-weighting by eps adds it (leave-one-out is "
                     "eps = -1/n)": _refit_change(theta, K, X, y, Xv, yv, w_down, wd),
                     "the validation loss at the re-fitted parameters, not its change": expected + R_star}
            out.append((model.state_dict(), D, K, X, y, Xv, yv, i, eps, wd, expected, wrong))
    return tuple(out)


def _true_val_change_cases() -> list[Case]:
    cases = []
    for state, D, K, X, y, Xv, yv, i, eps, wd, expected, wrong in _true_val_change_data():
        model = LogisticRegression(D, K).double()
        model.load_state_dict({k: v.clone() for k, v in state.items()})  # a fresh theta* for every check
        what = "left out, eps = -1/n" if eps < 0 else f"up-weighted by eps = {eps}"
        cases.append(Case(f"logistic regression, n={len(X)}, point {i} {what}, weight_decay={wd}",
                          (make_problem(model), X, y, Xv, yv, i, eps, wd), expected, dict(wrong)))
    return cases


register(Exercise(
    name="true_val_change",
    notebook="02",
    task="true_val_change(prob, X, y, Xv, yv, i, eps, weight_decay) -> scalar: R_val(theta_eps) - R_val(theta*), "
         "theta_eps = argmin sum_j w_j loss(z_j, theta) + weight_decay/2 ||theta||^2 with w_j = 1/n, plus eps for "
         "point i (docs/PAPER.md, Eq. 5 for eps = -1/n); prob.theta is theta*.",
    hint="w = torch.full((n,), 1 / n, dtype=torch.float64); w[i] += eps; theta_eps = fullbatch.minimise(prob, X, y, "
         "weight_decay, weights=w); then prob.mean_loss(theta_eps, Xv, yv) - prob.mean_loss(prob.theta, Xv, yv).",
    cases=_true_val_change_cases,
    rtol=1e-5, atol=1e-9,
))


# ------------------------------------------------------------------- Exercise 2.2: step 1, the parameter change
def _spd(g: torch.Generator, p: int) -> Tensor:
    M = randn(g, p, p)
    return M @ M.T / p + 0.1 * torch.eye(p, dtype=torch.float64)  # (p, p) positive definite


def _parameter_change_cases() -> list[Case]:
    cases = []
    for seed, (m, p, n) in enumerate([(4, 6, 150), (5, 3, 20), (1, 5, 300)]):
        g = seeded(40 + seed)
        H_R, G, eps = _spd(g, p), randn(g, m, p), 1.0 / n
        expected = torch.stack([-eps * torch.linalg.solve(H_R, G[k]) for k in range(m)])  # (m, p) row by row
        wrong = {"the sign is flipped (Eq. 2 has a minus: the optimum moves against the point's gradient)": -expected,
                 "H_R is multiplied, not inverted (use torch.linalg.solve)": -eps * G @ H_R,
                 "eps is missing (the Newton step is -eps H_R^-1 g_i)": expected / eps,
                 "the gradient step -eps g_i, without the inverse Hessian (Eq. 2 is a Newton step)": -eps * G}
        cases.append(Case(f"m={m} points, p={p}, eps=1/{n}", (G, H_R, eps), expected, wrong))
    return cases


register(Exercise(
    name="parameter_change",
    notebook="02",
    task="parameter_change(g_train, H_R, eps) -> (m, p): row i is -eps H_R^-1 g_train[i] (docs/PAPER.md, Eq. 2), "
         "g_train (m, p), H_R (p, p) symmetric positive definite.",
    hint="solve for all rows at once: torch.linalg.solve(H_R, g_train.T) is (p, m), one column per point; "
         "transpose it back and scale by -eps.",
    cases=_parameter_change_cases,
))


# -------------------------------------------------------------- Exercise 2.3: step 2, with its curvature term
def _loss_change_cases() -> list[Case]:
    cases = []
    for seed, (m, p, scale) in enumerate([(5, 4, 0.3), (3, 7, 1.0), (6, 6, 0.05)]):
        g = seeded(50 + seed)
        dtheta, g_val = scale * randn(g, m, p), randn(g, p)
        M = randn(g, p, p)
        H_val = (M + M.T) / 2  # (p, p) symmetric, indefinite like the notebook's H_val
        first = torch.stack([g_val @ d for d in dtheta])  # (m,)
        second = torch.stack([0.5 * d @ H_val @ d for d in dtheta])  # (m,)
        wrong = {"only the first-order term g_val^T dtheta (Eq. 3): the curvature term is missing": first,
                 "the 1/2 in front of dtheta^T H_val dtheta is missing": first + 2 * second,
                 "the curvature term has the wrong sign (+1/2 dtheta^T H_val dtheta, not minus)": first - second,
                 "the (m, m) matrix dtheta H_val dtheta^T: each point needs only its own diagonal entry":
                     first[:, None] + 0.5 * dtheta @ H_val @ dtheta.T}
        cases.append(Case(f"m={m} moves, p={p}, |dtheta| ~ {scale}", (dtheta, g_val, H_val), first + second, wrong))
    return cases


register(Exercise(
    name="second_order_loss_change",
    notebook="02",
    task="second_order_loss_change(dtheta, g_val, H_val) -> (m,): g_val^T dtheta_i + 1/2 dtheta_i^T H_val dtheta_i "
         "for every row dtheta_i of dtheta (m, p); g_val (p,), H_val (p, p).",
    hint="the first-order term is dtheta @ g_val (m,); the quadratic form of every row at once is "
         "((dtheta @ H_val) * dtheta).sum(1), with the 1/2 in front.",
    cases=_loss_change_cases,
))
