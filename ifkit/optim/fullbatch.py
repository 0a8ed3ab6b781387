"""Full-batch fits and retraining: the ground truth influence functions try to predict, computed the slow way.

For a model trained on the weighted objective

    R_eps(theta) = 1/n sum_j l(z_j, theta) + eps * l(z_i, theta) + weight_decay/2 ||theta||^2

the true effect of up-weighting z_i is  L_val(theta_eps) - L_val(theta*).  Leave-one-out is eps = -1/n: the
point's term cancels and the regulariser keeps its strength, so it is exactly the quantity the influence
function linearises (score_i * eps to first order). For convex models (logistic regression with
weight_decay > 0) the minimiser is unique: ``fit_full_batch`` finds theta* of a model, ``minimise`` solves the
weighted objective on a flat parameter vector (warm-started leave-one-out retraining), ``upweight_val_change``
retrains once per point.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..core.func import LossFn, Problem, as_tensors, hessian_exact, make_problem, resolve_loss
from .train import labelled_tensors, model_device_dtype, to_model


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
    (train it with ``fit_full_batch`` first); it is not modified. Returns (len(indices),).
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


def full_batch_grad_norm(
    model: nn.Module,
    train: tuple[Tensor, Tensor],
    weight_decay: float,
    loss: str | LossFn = "cross_entropy",
) -> float:
    """Euclidean norm of the gradient of mean loss + weight_decay/2 ||theta||^2 (a convergence check)."""
    X, y = labelled_tensors(train, "train", loss)
    dev, dtype = model_device_dtype(model)
    X, y = to_model(X, y, dev, dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    obj = resolve_loss(loss)(model(X), y).mean() + 0.5 * weight_decay * sum((p * p).sum() for p in params)
    grads = torch.autograd.grad(obj, params)
    return torch.sqrt(sum((g * g).sum() for g in grads)).item()


def fit_full_batch(
    model: nn.Module,
    train: tuple[Tensor, Tensor] | torch.utils.data.Dataset,
    weight_decay: float,
    max_iter: int = 500,
    tol: float = 1e-10,
    *,
    init_state: dict[str, Tensor] | None = None,
    loss: str | LossFn = "cross_entropy",
    history_size: int = 50,
    newton_steps: int = 5,
    max_newton_params: int = 5000,
) -> nn.Module:
    """Minimise the full-batch objective with L-BFGS (strong-Wolfe line search) on a copy of ``model``.

        theta_hat = argmin_theta 1/n sum_i loss(z_i, theta) + weight_decay/2 ||theta||^2

    over ALL trainable parameters (biases included, unlike scikit-learn, which leaves the intercept
    unpenalised). For logistic regression with weight_decay > 0 this is strictly convex, so the minimiser is
    unique and leave-one-out retraining (the kit's ground truth for influence) is well defined;
    warm-starting each leave-one-out fit from the full-data optimum (``init_state``) makes it a few
    iterations. Use a float64 model (``model.double()``) to reach gradient norms near 1e-14.

    Why a Newton polish: near the optimum the objective changes by less than float64 resolution
    (Delta R ~ ||g||^2 / lambda_min ~ 1e-16 once ||g|| ~ 1e-8..1e-9), so L-BFGS's line search, which compares
    objective values, stalls there. When the gradient is still above ``tol`` and the model is small (at most
    ``max_newton_params`` parameters), up to ``newton_steps`` Newton steps theta <- theta - H^-1 g finish the
    job (H computed once, at the L-BFGS solution); they use gradients only, not objective values. A step is
    kept only if it shrinks the gradient norm, so a non-convex model is never made worse.

    Args:
        model: the model to start from (deep-copied; never modified).
        train: ``(X, y)`` tensors or a Dataset of pairs (full batch).
        weight_decay: L2 coefficient (> 0 for a unique optimum).
        max_iter: maximum number of L-BFGS iterations.
        tol: target for the Euclidean norm of the full gradient.
        init_state: optional state dict to start from (warm start) instead of the model's own parameters.
        loss: "cross_entropy" or a callable ``(outputs, targets) -> (n,)``.
        history_size: L-BFGS memory.
        newton_steps: maximum number of Newton polishing steps (0 disables them).
        max_newton_params: skip the polish for models with more parameters (the Hessian is p x p).

    Returns:
        The trained copy (``full_batch_grad_norm`` tells how close to stationary it is).
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay={weight_decay} must be >= 0")
    X, y = labelled_tensors(train, "train", loss)
    loss_fn = resolve_loss(loss)
    model = copy.deepcopy(model)
    if init_state is not None:
        model.load_state_dict(init_state)
    dev, dtype = model_device_dtype(model)
    X, y = to_model(X, y, dev, dtype)
    named = {k: p for k, p in model.named_parameters() if p.requires_grad}
    params = list(named.values())
    p_total = sum(p.numel() for p in params)
    opt = torch.optim.LBFGS(
        params,
        lr=1.0,
        max_iter=max_iter,
        max_eval=2 * max_iter,
        # torch stops on the max-norm of the gradient; max|g| <= tol/sqrt(p) guarantees ||g||_2 <= tol.
        tolerance_grad=tol / math.sqrt(p_total),
        # Stop once the objective stops moving in float64; the Newton polish below takes it from there.
        tolerance_change=1e-14,
        history_size=history_size,
        line_search_fn="strong_wolfe",
    )

    def objective(out: Tensor, theta_sq: Tensor) -> Tensor:
        return loss_fn(out, y).mean() + 0.5 * weight_decay * theta_sq

    def closure() -> Tensor:
        opt.zero_grad(set_to_none=True)
        obj = objective(model(X), sum((p * p).sum() for p in params))
        obj.backward()
        return obj

    was_training = model.training
    model.train()
    opt.step(closure)
    if newton_steps > 0 and p_total <= max_newton_params:

        def objective_of(th_dict: dict[str, Tensor], theta: Tensor) -> Tensor:
            return objective(torch.func.functional_call(model, th_dict, (X,)), (theta * theta).sum())

        newton_polish(named, objective_of, newton_steps, tol)
    model.train(was_training)
    for p in params:
        p.grad = None
    return model


@torch.no_grad()
def newton_polish(named: dict[str, Tensor], objective: Callable, steps: int, tol: float) -> None:
    """Up to ``steps`` Newton steps on the flat trainable parameters, each kept only if ||g|| shrinks."""
    names = list(named)
    shapes = [named[k].shape for k in names]
    sizes = [named[k].numel() for k in names]

    def f(theta: Tensor) -> Tensor:  # objective as a function of the flat (p,) vector
        th_dict = {k: t.view(s) for k, t, s in zip(names, theta.split(sizes), shapes)}
        return objective(th_dict, theta)

    theta = torch.cat([named[k].reshape(-1) for k in names])  # (p,)
    with torch.enable_grad():
        g = torch.func.grad(f)(theta)  # (p,)
    H_pinv = None
    for _ in range(steps):
        if g.norm() <= tol:
            break
        if H_pinv is None:
            # One Hessian for all steps (the chord method): we start within ~1e-8 of the optimum, where H
            # hardly changes, so convergence is still fast and the p x p Hessian is built only once.
            with torch.enable_grad():
                # reverse-over-reverse: faster than torch.func.hessian's forward-over-reverse at this size
                H = torch.func.jacrev(torch.func.grad(f))(theta)  # (p, p)
            H_pinv = torch.linalg.pinv(H, hermitian=True)  # (p, p); pinv: robust if H is singular
        candidate = theta - H_pinv @ g
        with torch.enable_grad():
            g_new = torch.func.grad(f)(candidate)
        if not torch.isfinite(g_new).all() or g_new.norm() >= g.norm():
            break
        theta, g = candidate, g_new
    for k, t, s in zip(names, theta.split(sizes), shapes):
        named[k].copy_(t.view(s))


__all__ = ["fit_full_batch", "full_batch_grad_norm", "minimise", "newton_polish", "objective_hessian",
           "upweight_val_change"]
