"""Notebook 03's exercises: sharpness and the sign-error bound (docs/PAPER.md, Eq. 7-9 and 15).

3.1 ``one_step_sharpness``: SAM's one-step estimate of R_val^gamma - R_val (Eq. 9); oracle:
    ``ifkit.sharpness.sharpness(..., one_step=True)``.
3.2 ``sam_step``: one SAM update, theta - lr grad R(theta + rho g/||g||) (Eq. 15); oracle: one step of
    ``ifkit.optim.sam.SAM`` on the same model.
3.3 ``sign_error_bound``: exp(-2 mu^2 / R^2) (Eq. 8); oracle: ``ifkit.sharpness.sign_error_bound``.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from ifkit import sharpness as lib_sharpness
from ifkit.core.func import make_problem
from ifkit.exercises.checking import Case, Exercise, labels, randn, register, seeded
from ifkit.models import MLP, LogisticRegression
from ifkit.optim.sam import SAM


def _model(seed: int, n: int, D: int, K: int, hidden: tuple[int, ...]):
    """A tiny float64 model at random parameters (not a minimum: the gradient is far from zero) and its data."""
    torch.manual_seed(seed)
    model = (MLP(D, hidden=hidden, n_classes=K) if hidden else LogisticRegression(D, K)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)  # larger weights: a curved loss, so each mistake gives a clearly different number
    g = seeded(seed)
    return model, randn(g, n, D), labels(n, K, g)


PROBLEMS = [  # (seed, n, features, classes, hidden layers, radius or rho, lr)
    (60, 10, 3, 3, (), 0.5, 0.5),
    (61, 12, 4, 3, (5,), 1.0, 1.0),
    (62, 8, 3, 2, (), 2.0, 0.1),
]


# -------------------------------------------------------------- Exercise 3.1: SAM's one-step sharpness estimate
def _one_step_cases() -> list[Case]:
    cases = []
    for seed, n, D, K, hidden, gamma, _ in PROBLEMS:
        model, Xv, yv = _model(seed, n, D, K, hidden)
        prob = make_problem(model)
        R_val = lambda th, prob=prob, Xv=Xv, yv=yv: prob.mean_loss(th, Xv, yv)  # noqa: E731
        theta = prob.theta  # (p,)
        expected = lib_sharpness.sharpness(model, (Xv, yv), gamma, one_step=True)["sharpness"]
        g = torch.func.grad(R_val)(theta)  # (p,)
        with torch.no_grad():
            R0 = R_val(theta).item()
            wrong = {"the gradient is not normalised: the step is gamma * g / ||g||, a point on the sphere of "
                     "radius gamma": R_val(theta + gamma * g).item() - R0,
                     "the step goes down the gradient (theta - gamma g/||g||): the worst point is uphill":
                         R_val(theta - gamma * g / g.norm()).item() - R0,
                     "R_val(theta + Delta) itself (the estimate of R_val^gamma, Eq. 7): the sharpness is its increase "
                     "over R_val(theta)": R_val(theta + gamma * g / g.norm()).item(),
                     "the linear model gamma * ||g||: evaluate the loss at the perturbed point instead":
                         gamma * g.norm().item()}
        kind = f"MLP {D}-{'-'.join(map(str, hidden))}-{K}" if hidden else f"logistic regression {D}->{K}"
        cases.append(Case(f"{kind}, n={n}, gamma={gamma}", (R_val, theta, gamma), expected, wrong))
    return cases


register(Exercise(
    name="one_step_sharpness",
    notebook="03",
    task="one_step_sharpness(R_val, theta, gamma) -> scalar: R_val(theta + gamma g/||g||) - R_val(theta), "
         "g = grad R_val(theta) (docs/PAPER.md, Eq. 9); R_val maps theta (p,) to the mean validation loss.",
    hint="g = grad(R_val)(theta); the perturbed point is theta + gamma * g / g.norm(); subtract R_val(theta).",
    cases=_one_step_cases,
))


# --------------------------------------------------------------------------- Exercise 3.2: one SAM step (Eq. 15)
def _sam_reference(model: torch.nn.Module, X: Tensor, y: Tensor, rho: float, lr: float) -> Tensor:
    """theta after one step of ifkit.optim.sam.SAM (plain SGD base, no momentum) on a copy of ``model``."""
    m = copy.deepcopy(model)
    opt = SAM(m.parameters(), rho=rho, lr=lr)

    def closure():
        loss = torch.nn.functional.cross_entropy(m(X), y)
        loss.backward()
        return loss

    opt.step(closure)
    return make_problem(m).theta  # (p,) flattened in the same order as theta


def _sam_cases() -> list[Case]:
    cases = []
    for seed, n, D, K, hidden, rho, lr in PROBLEMS:
        model, X, y = _model(seed, n, D, K, hidden)
        prob = make_problem(model)
        loss_fn = lambda th, prob=prob, X=X, y=y: prob.mean_loss(th, X, y)  # noqa: E731
        theta = prob.theta  # (p,)
        grad = torch.func.grad(loss_fn)
        g = grad(theta)  # (p,)
        e = rho * g / g.norm()  # (p,) SAM's perturbation
        wrong = {"plain gradient descent: the gradient must be taken at the perturbed point theta + rho g/||g||":
                     theta - lr * g,
                 "the perturbation is not normalised (rho * g, not rho * g / ||g||)": theta - lr * grad(theta + rho * g),
                 "the perturbation points downhill (theta - rho g/||g||): SAM looks for the worst point, uphill":
                     theta - lr * grad(theta - e),
                 "the step starts from the perturbed point: go back to theta, then step with the gradient found "
                 "at theta + e": theta + e - lr * grad(theta + e),
                 "the step goes uphill (theta + lr * gradient)": theta + lr * grad(theta + e)}
        kind = f"MLP {D}-{'-'.join(map(str, hidden))}-{K}" if hidden else f"logistic regression {D}->{K}"
        cases.append(Case(f"{kind}, n={n}, rho={rho}, lr={lr}", (loss_fn, theta, rho, lr),
                          _sam_reference(model, X, y, rho, lr), wrong))
    return cases


register(Exercise(
    name="sam_step",
    notebook="03",
    task="sam_step(loss_fn, theta, rho, lr) -> (p,): theta - lr * grad loss_fn(theta + rho g/||g||), "
         "g = grad loss_fn(theta) (docs/PAPER.md, Eq. 15).",
    hint="two gradients: g at theta gives the perturbation e = rho * g / g.norm(); the step uses the gradient at "
         "theta + e, applied at theta itself.",
    cases=_sam_cases,
))


# ------------------------------------------------------------------------ Exercise 3.3: the bound of Eq. 8
def _bound_cases() -> list[Case]:
    g = seeded(70)
    problems = [("one margin, one risk", torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.8, dtype=torch.float64)),
                ("five margins (one of them 0), one risk", torch.tensor([0.0, 0.1, 0.25, 0.4, 0.9], dtype=torch.float64),
                 torch.tensor(0.6, dtype=torch.float64)),
                ("one margin, a risk per model", torch.tensor(0.5, dtype=torch.float64),
                 0.3 + 2 * torch.rand(6, generator=g, dtype=torch.float64))]
    cases = []
    for label, mu, R in problems:
        expected = torch.as_tensor(lib_sharpness.sign_error_bound(mu, R), dtype=torch.float64)
        wrong = {"mu and R are not squared: the exponent is -2 mu^2 / R^2, not -2 mu / R": torch.exp(-2 * mu / R),
                 "the factor 2 is missing: exp(-2 mu^2 / R^2)": torch.exp(-(mu**2) / R**2),
                 "R is not squared: the exponent is -2 mu^2 / R^2": torch.exp(-2 * mu**2 / R),
                 "the exponent has lost its minus sign: the bound exp(-2 mu^2 / R^2) is at most 1": torch.exp(2 * mu**2 / R**2),
                 "1 minus the bound: exp(-2 mu^2 / R^2) itself bounds the probability of a WRONG sign":
                     1 - torch.exp(-2 * mu**2 / R**2)}
        cases.append(Case(label, (mu, R), expected, wrong))
    return cases


register(Exercise(
    name="sign_error_bound",
    notebook="03",
    task="sign_error_bound(mu, R) -> exp(-2 mu^2 / R^2) (docs/PAPER.md, Eq. 8), elementwise for tensors mu >= 0 "
         "and R > 0 that broadcast.",
    hint="torch.exp(-2 * mu**2 / R**2): both the margin and the risk are squared.",
    cases=_bound_cases,
))
