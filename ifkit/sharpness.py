"""Validation sharpness and the paper's sign-error bound (Theorem 3.2).

    P[ sign(I_est(z)) != sign(I_true(z)) ]  <=  exp( -2 mu^2 / R_val^gamma(theta)^2 ),
    R_val^gamma(theta) = max_{||Delta|| <= gamma} R_val(theta + Delta)            (SAM's objective on S_val)

``sharpness`` estimates R_val^gamma, ``top_hessian_eigenvalue`` / ``hessian_trace`` are the curvature views of
the same flatness, and ``sign_error_bound`` evaluates the right-hand side.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .core.func import (
    LossFn,
    Problem,
    as_tensors,
    chunks,
    ggn_vp_fn,
    hvp_fn,
    make_problem,
    mean_grad,
)
from .core.jacobians import ggn_vp, ggn_vp_fits
from .curvature.solvers import hutchinson_trace, top_eigenvalue


def _val_problem(model: torch.nn.Module, data, params, loss, name: str = "val") -> tuple[Problem, Tensor, Tensor]:
    """(Problem at theta, X, y) with X cast to the model's dtype; an eval() copy when the mode would matter."""
    import copy

    X, y = as_tensors(data, name)
    if model.training and any(isinstance(m, (torch.nn.Dropout, torch.nn.modules.batchnorm._BatchNorm))
                              for m in model.modules()):
        model = copy.deepcopy(model).eval()  # never flip the caller's mode; score a deterministic copy
    prob = make_problem(model, params, loss)
    X = X.to(device=prob.theta.device, dtype=prob.theta.dtype) if X.is_floating_point() else X.to(prob.theta.device)
    return prob, X, y.to(prob.theta.device)


def _mean_loss(prob: Problem, theta: Tensor, X: Tensor, y: Tensor, chunk_size: int = 4096) -> float:
    with torch.no_grad():
        total = sum(prob.losses(theta, X[r], y[r]).sum() for r in chunks(len(X), chunk_size))
    return float(total) / len(X)


def sharpness(
    model: torch.nn.Module,
    val,
    gamma: float,
    steps: int = 5,
    params: Sequence[str] | None = None,
    loss: str | LossFn = "cross_entropy",
    one_step: bool = False,
    seed: int = 0,
) -> dict[str, float]:
    """Worst validation risk in an L2 ball: R_val^gamma(theta) = max_{||Delta|| <= gamma} R_val(theta + Delta).

    The inner max of SAM, solved by projected, normalised gradient ascent on the flat parameter vector:

        Delta_1     = gamma * g(theta) / ||g(theta)||                         (SAM's one step, Foret et al. 2021)
        Delta_{k+1} = Proj_gamma( Delta_k + gamma * g_k / ||g_k|| ),  g_k = grad R_val(theta + Delta_k)

    where Proj_gamma rescales onto the ball. Its fixed points satisfy g parallel to Delta, the KKT condition of a
    maximum on the sphere. The best point seen is returned, so with ``steps >= 1`` the result is never below the
    one-step estimate, and every candidate lies in the ball, so it is never above the true R_val^gamma: a lower
    bound that rises with ``steps``. For a convex loss (logistic regression) the maximum lies on the sphere and the ascent
    finds it quickly; for a network it is a local search. When g(theta) = 0 (a stationary point, where SAM's
    step is undefined), the ascent starts from a random direction drawn with ``seed``.

    Args:
        model: the model at theta; never modified (everything goes through ``torch.func.functional_call``).
        val: (X_val, y_val) tensors or a Dataset of pairs.
        gamma: radius of the ball (>= 0), in the Euclidean norm over all differentiated parameters.
        steps: ascent steps (>= 1); ignored when ``one_step``.
        params: names of the parameters to perturb (default: all trainable ones).
        loss: "cross_entropy" or a callable ``(outputs, targets) -> (n,)`` per-sample losses.
        one_step: return SAM's single-step estimate theta + gamma g/||g|| instead.
        seed: seed of the random start at a stationary point.

    Returns:
        dict with ``R_val`` = R_val(theta), ``R_gamma`` = the estimate of R_val^gamma(theta) (>= R_val),
        ``sharpness`` = R_gamma - R_val, ``perturbation_norm`` = ||Delta*|| (<= gamma), ``grad_norm`` = ||g(theta)||
        and ``gamma``.

    Raises:
        ValueError: for gamma < 0 (or not finite) or steps < 1.
    """
    try:
        radius = float(gamma)
    except (TypeError, ValueError):
        radius = math.nan
    if not (math.isfinite(radius) and radius >= 0):
        raise ValueError(f"gamma must be a finite radius >= 0, got {gamma!r}")
    gamma = radius
    if not one_step and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be an integer >= 1 (or pass one_step=True), got {steps!r}")
    prob, X, y = _val_problem(model, val, params, loss)
    theta = prob.theta
    R0 = _mean_loss(prob, theta, X, y)
    g0 = mean_grad(prob, X, y)  # (p,)
    g0_norm = g0.norm().item()
    out = {"R_val": R0, "R_gamma": R0, "sharpness": 0.0, "perturbation_norm": 0.0, "grad_norm": g0_norm,
           "gamma": float(gamma)}
    if gamma == 0 or (one_step and g0_norm == 0):
        return out  # the ball is a point / SAM has no ascent direction
    if g0_norm > 0:
        delta = gamma * g0 / g0_norm  # (p,) SAM's step
    else:
        gen = torch.Generator().manual_seed(seed)
        z = torch.randn(prob.p, generator=gen, dtype=theta.dtype).to(theta.device)
        delta = gamma * z / z.norm()
    best_R, best_delta = _mean_loss(prob, theta + delta, X, y), delta
    for _ in range(0 if one_step else steps - 1):
        g = mean_grad(prob.with_theta(theta + delta), X, y)  # (p,)
        g_norm = g.norm()
        if g_norm == 0:
            break
        step = delta + gamma * g / g_norm
        delta = step * (gamma / step.norm()).clamp(max=1.0)  # projection onto the ball
        R = _mean_loss(prob, theta + delta, X, y)
        if R > best_R:
            best_R, best_delta = R, delta
    best_R = max(best_R, R0)  # Delta = 0 is in the ball too
    out.update(R_gamma=best_R, sharpness=best_R - R0,
               perturbation_norm=best_delta.norm().item() if best_R > R0 else 0.0)
    return out


def _curvature_op(model: torch.nn.Module, data, params, loss, curvature: str):
    prob, X, y = _val_problem(model, data, params, loss, "data")
    if curvature == "hessian":
        return prob, hvp_fn(prob, X, y)
    if curvature == "ggn":  # Linear/Conv2d networks on a small set: from Jacobian factors, no pass per product
        return prob, ggn_vp(prob, X, y) if ggn_vp_fits(prob, X) else ggn_vp_fn(prob, X, y)
    raise ValueError(f"unknown curvature {curvature!r}: use 'hessian' or 'ggn'")


def top_hessian_eigenvalue(
    model: torch.nn.Module,
    data,
    params: Sequence[str] | None = None,
    loss: str | LossFn = "cross_entropy",
    iters: int = 100,
    tol: float = 1e-6,
    seed: int = 0,
    curvature: str = "hessian",
) -> float:
    """Largest-magnitude eigenvalue of the Hessian of the mean loss on ``data`` at theta (power iteration on HVPs).

    The local, second-order view of sharpness: near a minimum (g = 0),
    R^gamma(theta) - R(theta) ~= gamma^2 / 2 * lambda_max(H). Thin wrapper on ``ifkit.curvature.solvers.top_eigenvalue``
    over ``ifkit.core.func.hvp_fn`` (``curvature="ggn"``: the PSD Gauss-Newton matrix instead).

    Args:
        model: the model at theta (not modified).
        data: (X, y) tensors or a Dataset of pairs, e.g. S_val.
        iters, tol: power-iteration budget and relative stopping tolerance on the Rayleigh quotient.
        seed: seed of the start vector.
    """
    prob, mv = _curvature_op(model, data, params, loss, curvature)
    return top_eigenvalue(mv, prob.p, iters=iters, tol=tol, seed=seed, dtype=prob.theta.dtype,
                            device=prob.theta.device)


def hessian_trace(
    model: torch.nn.Module,
    data,
    samples: int = 100,
    params: Sequence[str] | None = None,
    loss: str | LossFn = "cross_entropy",
    seed: int = 0,
    curvature: str = "hessian",
) -> float:
    """Hutchinson estimate of tr(H) of the mean loss on ``data`` at theta: mean_s z_s^T H z_s, z_s Rademacher.

    The average curvature over all directions, p times the mean eigenvalue (the Gaussian-smoothed view of
    sharpness: E R(theta + sigma z) - R(theta) ~= sigma^2 / 2 tr(H) for z ~ N(0, I)). Unbiased; relative
    standard error ~ sqrt(2 ||H||_F^2 / samples) / tr(H). Thin wrapper on ``ifkit.curvature.solvers.hutchinson_trace``.
    """
    if not (isinstance(samples, int) and samples >= 1):
        raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
    prob, mv = _curvature_op(model, data, params, loss, curvature)
    return hutchinson_trace(mv, prob.p, samples=samples, seed=seed, dtype=prob.theta.dtype,
                              device=prob.theta.device)


def sign_error_bound(mu, R):
    """The right-hand side of the paper's Theorem 3.2:  exp(-2 mu^2 / R^2),  R = R_val^gamma(theta).

    What we assume (the paper's exact assumptions are not available to us; these are the ones that make the
    bound a one-line Hoeffding inequality):

    1. (margin) the training point's true influence is separated from zero: |I_true(z)| >= mu > 0;
    2. (unbiased, bounded error) the estimate is the truth plus an error, I_est = I_true + xi, where xi is
       zero-mean (over the randomness of the estimate: which points were sampled, which parameters were
       reached) and lies in an interval of length at most R. The range R = R_val^gamma(theta) is motivated
       by a leave-one-out move of the parameters that stays in the gamma-ball (||theta_-z - theta|| <= gamma):
       losses are >= 0, so the validation loss after the move lies in [0, R_val^gamma(theta)], and any
       change of it, estimated or true, lies in an interval of that length.

    A sign flip needs xi to push I_est across zero, a deviation of at least |I_true| >= mu against the sign of
    I_true, and Hoeffding's inequality for one bounded zero-mean variable gives P[xi >= mu] <= exp(-2 mu^2/R^2).
    Hence a small validation risk in a flat region (small R) makes wrong signs rare, and mu = 0 (no margin) makes
    the bound vacuous (= 1).

    What mu is in *our* computation (``ifkit.experiments.theory``): influences are measured in score units,
    I = dR_val/d eps (change of the mean validation loss per unit up-weighting, what ``ifkit.score`` returns; a
    leave-one-out change is -I / n_train), and mu is one fixed margin per seed: the median |I_true| over the
    leave-one-out points of the reference model (the optimum at the default L2 strength 1e-2), so the bound
    speaks about the better-separated half of the points. Nothing puts mu (a score) and R (a loss) on one
    scale, so with mu fixed the bound is a monotone transform of R, to be checked against measured sign
    errors, not a certified probability.

    Args:
        mu: margin(s) >= 0 (float, array or tensor).
        R: R_val^gamma(theta) value(s) >= 0, broadcastable with mu.

    Returns:
        A float for scalar inputs, else a numpy array; R = 0 with mu > 0 gives 0 (the limit), mu = 0 gives 1.
    """
    import numpy as np

    m = np.asarray(mu.detach().cpu() if isinstance(mu, Tensor) else mu, dtype=float)
    r = np.asarray(R.detach().cpu() if isinstance(R, Tensor) else R, dtype=float)
    if not (np.isfinite(m).all() and np.isfinite(r).all()):
        raise ValueError("mu and R must be finite")
    if (m < 0).any() or (r < 0).any():
        raise ValueError(f"mu (a margin) and R (a risk) must be >= 0, got mu={mu!r}, R={R!r}")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(m == 0, 0.0, m**2 / r**2)  # mu = 0 -> bound 1 even at R = 0; R = 0 < mu -> inf -> 0
    out = np.exp(-2.0 * ratio)
    return float(out) if out.ndim == 0 else out
