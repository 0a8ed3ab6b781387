"""Ground truth by retraining: what influence functions try to predict, computed the slow, obvious way.

For a model trained on the weighted objective

    R_eps(theta) = 1/n sum_j l(z_j, theta) + eps * l(z_i, theta) + weight_decay/2 ||theta||^2

the true effect of up-weighting z_i is  L_val(theta_eps) - L_val(theta*).  Leave-one-out is eps = -1/n: the
point's term cancels and the regulariser keeps its strength, so it is exactly the quantity the influence
function linearises (score_i * eps to first order). For convex models (logistic regression with
weight_decay > 0) the minimiser is unique, and we solve to a gradient norm of ``tol`` from a warm start at theta*.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .func import Problem, as_tensors, hessian_exact, make_problem


def minimise(
    prob: Problem,
    X: Tensor,
    y: Tensor,
    weight_decay: float,
    weights: Tensor | None = None,
    init: Tensor | None = None,
    tol: float = 1e-10,
    max_iter: int = 200,
    hessian: Tensor | None = None,
) -> Tensor:
    """argmin_theta  sum_j w_j l(z_j, theta) + weight_decay/2 ||theta||^2.

    ``weights`` default to 1/n. With ``hessian`` (the (p, p) Hessian of the objective near the answer, e.g. at
    theta*) we take chord-Newton steps theta <- theta - hessian^-1 grad, re-using one Cholesky factor: a warm-started
    leave-one-out retraining then converges in a handful of gradient evaluations. Otherwise L-BFGS (strong Wolfe).
    Raises if the gradient's max-norm stays above ``tol``.
    """
    w = torch.full((len(X),), 1.0 / len(X), dtype=prob.theta.dtype) if weights is None else weights  # (n,)
    theta = (prob.theta if init is None else init).clone()

    def objective(th: Tensor) -> Tensor:
        return (w * prob.losses(th, X, y)).sum() + 0.5 * weight_decay * th.pow(2).sum()

    grad_f = torch.func.grad(objective)
    if hessian is not None:
        L = torch.linalg.cholesky(hessian)
        for _ in range(max_iter):
            g = grad_f(theta)  # (p,)
            if g.abs().max().item() <= tol:
                return theta.detach()
            theta = theta - torch.cholesky_solve(g.unsqueeze(1), L).squeeze(1)
    theta.requires_grad_(True)
    opt = torch.optim.LBFGS([theta], lr=1, max_iter=max_iter, tolerance_grad=tol, tolerance_change=0,
                            history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        f = objective(theta)
        f.backward()
        return f

    for _ in range(5):  # L-BFGS may stop on its own iteration cap; restart from where it is
        opt.step(closure)
        closure()
        if theta.grad.abs().max().item() <= tol:
            break
    gnorm = theta.grad.abs().max().item()
    if gnorm > 100 * tol:
        raise RuntimeError(f"retraining did not converge (max |grad| = {gnorm:.2e} > {tol:.0e}); use float64 and "
                           "weight_decay > 0 (a convex, strongly convex objective)")
    return theta.detach()


def objective_hessian(prob: Problem, X: Tensor, y: Tensor, weight_decay: float, weights: Tensor | None = None) -> Tensor:
    """(p, p) Hessian of sum_j w_j l(z_j, theta) + weight_decay/2 ||theta||^2 at prob.theta (w_j = 1/n default)."""
    eye = weight_decay * torch.eye(prob.p, dtype=prob.theta.dtype, device=prob.theta.device)
    if weights is None:
        return hessian_exact(prob, X, y) + eye
    f = lambda th: (weights * prob.losses(th, X, y)).sum()  # noqa: E731
    return torch.func.jacrev(torch.func.grad(f))(prob.theta) + eye


def upweight_val_change(
    model: torch.nn.Module,
    train,
    val,
    indices: Sequence[int] | None = None,
    eps: float | None = None,
    weight_decay: float = 1e-2,
    params: Sequence[str] | None = None,
    tol: float = 1e-10,
    progress: bool = False,
) -> Tensor:
    """True change of the mean validation loss when each training point in ``indices`` is up-weighted by eps.

    ``eps=None`` means leave-one-out (eps = -1/n). ``model`` must sit at the minimiser of the eps = 0 objective
    (train it with ``fit_convex`` first); it is not modified. Returns (len(indices),).
    """
    X, y = as_tensors(train, "train")
    Xv, yv = as_tensors(val, "val")
    prob = make_problem(model, params)
    n = len(X)
    eps = -1.0 / n if eps is None else eps
    idx = range(n) if indices is None else indices
    with torch.no_grad():
        base = prob.mean_loss(prob.theta, Xv, yv)
    H = objective_hessian(prob, X, y, weight_decay) if prob.p <= 4096 else None
    out = []
    for i in tqdm(idx, desc="retraining", disable=not progress, leave=False):
        w = torch.full((n,), 1.0 / n, dtype=prob.theta.dtype)
        w[i] += eps
        theta_i = minimise(prob, X, y, weight_decay, weights=w, tol=tol, hessian=H)
        with torch.no_grad():
            out.append(prob.mean_loss(theta_i, Xv, yv) - base)
    return torch.stack(out)


def fit_convex(model: torch.nn.Module, train, weight_decay: float, params: Sequence[str] | None = None,
               tol: float = 1e-10) -> torch.nn.Module:
    """A copy of ``model`` moved to the exact minimiser of mean loss + weight_decay/2 ||theta||^2."""
    import copy

    X, y = as_tensors(train, "train")
    model = copy.deepcopy(model)
    prob = make_problem(model, params)
    theta = minimise(prob, X, y, weight_decay, tol=1e-6)  # L-BFGS to near the optimum, then exact Newton
    if prob.p <= 4096:
        for _ in range(3):
            prob = prob.with_theta(theta)
            theta = minimise(prob, X, y, weight_decay, tol=tol, hessian=objective_hessian(prob, X, y, weight_decay))
    else:
        theta = minimise(prob, X, y, weight_decay, init=theta, tol=tol)
    with torch.no_grad():
        for name, t in prob.unflatten(theta).items():
            model.get_parameter(name).copy_(t)
    return model
