"""Flat-minimum optimisers: SAM (Foret et al. 2021) and LPF-SGD (Bisla et al. 2022), and SAM's sharpness.

The paper's Theorem 3.2 bounds the probability that an influence estimate has the wrong sign by
exp(-2 mu^2 / R_val^gamma(theta)^2), where

    R_val^gamma(theta) = max_{||Delta|| <= gamma} R_val(theta + Delta)          (the SAM objective on S_val)

SAM descends R^gamma directly with a one-step approximation of the inner max; LPF-SGD descends the
Gaussian-smoothed risk E_eps R(theta + eps). ``sam_sharpness`` is SAM's own first-order estimate of the inner max:

    sharpness(theta) = R(theta + rho * g / ||g||) - R(theta),   g = grad R(theta),

a lower bound on R^rho(theta) - R(theta) (the ascent point lies in the ball), tight when R is close to linear
over the ball -- ``ifkit.sharpness`` has the more careful estimates. Near a minimum it is
~ rho ||g|| + rho^2/2 * (curvature along g), so it falls with the gradient too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from ..core.func import LossFn, resolve_loss
from .train import labelled_tensors

Closure = Callable[[], Tensor]


# ----------------------------------------------------------------------------------------------------- SAM
class SAM(torch.optim.Optimizer):
    """Sharpness-Aware Minimisation (Foret et al., ICLR 2021), wrapping a base optimiser.

    SAM minimises R^rho(theta) = max_{||e|| <= rho} R(theta + e). Linearising R inside the ball gives the
    worst perturbation e(theta) = rho * g / ||g|| (the global Euclidean norm over every parameter of every
    group), and SAM descends with the gradient taken there:

        e      = rho * g(theta) / ||g(theta)||                    (first_step: theta -> theta + e)
        g_sam  = grad R(theta + e)                                 (the closure, called at theta + e)
        theta  <- base_step(theta, g_sam)                          (second_step: restore theta, then step)

    With ``adaptive=True`` this is ASAM (Kwon et al., ICML 2021): e = rho * T^2 g / ||T g|| with T = |theta|
    elementwise, which makes the radius scale-invariant.

    Args:
        params: parameters (or parameter groups) to optimise.
        base_optimizer_cls: the optimiser that takes the final step (default ``torch.optim.SGD``).
        rho: radius of the neighbourhood (rho = 0 gives exactly the base optimiser).
        adaptive: ASAM's scale-invariant perturbation.
        **base_kwargs: passed to the base optimiser (``lr``, ``momentum``, ``weight_decay``, ...).

    Example::

        opt = SAM(model.parameters(), rho=0.05, lr=0.1, momentum=0.9)
        def closure():
            loss = F.cross_entropy(model(X), y)
            loss.backward()
            return loss
        opt.step(closure)           # two forward/backward passes: at theta and at theta + e
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        base_optimizer_cls: type[torch.optim.Optimizer] = torch.optim.SGD,
        rho: float = 0.05,
        adaptive: bool = False,
        **base_kwargs,
    ) -> None:
        if not rho >= 0:
            raise ValueError(f"rho={rho}: the SAM radius must be >= 0")
        super().__init__(params, {"rho": rho, "adaptive": adaptive, **base_kwargs})
        # The base optimiser shares our parameter groups, so lr changes by a scheduler reach both.
        self.base_optimizer = base_optimizer_cls(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)

    def _grad_norm(self) -> Tensor:
        norms = [
            ((p.abs() if group["adaptive"] else 1.0) * p.grad).norm(2)
            for group in self.param_groups
            for p in group["params"]
            if p.grad is not None
        ]
        if not norms:
            raise RuntimeError("SAM.first_step: no parameter has a gradient; call loss.backward() first")
        return torch.stack(norms).norm(2)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Move to theta + e, e = rho * g / ||g||, remembering theta (the gradient must be in ``.grad``)."""
        grad_norm = self._grad_norm()
        for group in self.param_groups:
            # A zero gradient means we are at a stationary point: no ascent direction, no perturbation.
            scale = group["rho"] / grad_norm if grad_norm > 0 else torch.zeros_like(grad_norm)
            for p in group["params"]:
                if p.grad is None:
                    continue
                self.state[p]["old_p"] = p.detach().clone()
                e = (p * p if group["adaptive"] else 1.0) * p.grad * scale.to(p)  # (p.shape) ascent step
                p.add_(e)
        if zero_grad:
            self.zero_grad(set_to_none=True)

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Restore theta exactly and take the base optimiser's step with the gradient found at theta + e."""
        for group in self.param_groups:
            for p in group["params"]:
                if "old_p" in self.state[p]:
                    p.copy_(self.state[p].pop("old_p"))  # copy, not p - e: no rounding drift
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad(set_to_none=True)

    def step(self, closure: Closure | None = None) -> Tensor:  # type: ignore[override]
        """One SAM step. ``closure`` must compute the loss and call ``backward()``; it is called twice.

        Gradients are zeroed before each call, so the closure need not do it. Returns the loss at theta.
        """
        if closure is None:
            raise ValueError("SAM.step needs a closure that recomputes the loss and calls backward()")
        closure = torch.enable_grad()(closure)
        self.zero_grad(set_to_none=True)
        loss = closure()  # gradient at theta
        self.first_step(zero_grad=True)
        closure()  # gradient at theta + e
        self.second_step()
        return loss


# ------------------------------------------------------------------------------------------------- LPF-SGD
def filter_norms(p: Tensor) -> Tensor:
    """Norm of each "filter" of ``p``, broadcast to ``p``'s shape (LPF-SGD's per-filter noise scale).

    A filter is a slice along the first (output) axis: a row of a Linear weight (out, in), one output filter
    (in, kh, kw) of a Conv weight (out, in, kh, kw). A 1-D tensor (a bias, a LayerNorm gain) has no filter
    structure, so the whole tensor's norm is used -- Bisla et al.'s released code does the same, adding
    1e-16 so that an all-zero bias still gets (tiny) noise rather than none. Scalars count as 1-D.
    """
    if p.dim() > 1:
        return p.flatten(1).norm(dim=1).view(-1, *([1] * (p.dim() - 1))).expand_as(p)  # (out, 1, ...) -> p
    return (p.norm() + 1e-16).expand_as(p)


class LPFSGD(torch.optim.Optimizer):
    """Low-pass filtering SGD (Bisla, Wang & Choromanska, AISTATS 2022).

    LPF-SGD descends the Gaussian-smoothed ("low-pass filtered") risk

        R_sigma(theta) = E_{eps ~ N(0, Sigma(theta))} R(theta + eps),

    whose minima are flat: a sharp valley is averaged away by the convolution. Its gradient is estimated by
    Monte Carlo with ``M`` samples, then an ordinary SGD step is taken:

        g = 1/M sum_{m=1..M} grad R(theta + eps_m),    theta <- SGD(theta, g).

    Sigma is diagonal with a per-filter std ``sigma * ||filter||`` (see ``filter_norms``), so the noise is
    relative to each filter's scale and invariant to rescaling a layer. Mind the size: a filter with k
    entries moves by ||eps|| ~ sigma * sqrt(k) * ||filter||, i.e. 14% of its norm for sigma = 0.005 and a
    784-input row. Bisla et al. also grow sigma during training; here sigma is fixed (set
    ``group["sigma"]`` between steps to schedule it).

    Args:
        params: parameters (or parameter groups) to optimise.
        lr: learning rate of the SGD step.
        sigma: relative noise scale (sigma = 0 gives exactly ``torch.optim.SGD``).
        M: Monte-Carlo samples per step (the paper's FVM uses one, as we read the summaries).
        momentum: SGD momentum.
        weight_decay: SGD's coupled L2 coefficient.
        generator: the random generator for the noise; by default a CPU generator seeded with ``seed``.
        seed: seed of the default generator (ignored when ``generator`` is given).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float,
        sigma: float = 0.005,
        M: int = 1,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        *,
        generator: torch.Generator | None = None,
        seed: int = 0,
    ) -> None:
        if not sigma >= 0:
            raise ValueError(f"sigma={sigma}: the LPF-SGD noise scale must be >= 0")
        if M < 1:
            raise ValueError(f"M={M}: use at least one noise sample per step")
        super().__init__(
            params, {"lr": lr, "sigma": sigma, "momentum": momentum, "weight_decay": weight_decay}
        )
        self.M = M
        self.generator = generator if generator is not None else torch.Generator().manual_seed(seed)
        # The SGD step is delegated to torch.optim.SGD (sharing our groups), so sigma = 0 is SGD bit for bit.
        self.base_optimizer = torch.optim.SGD(
            self.param_groups, lr=lr, momentum=momentum, weight_decay=weight_decay
        )
        self.param_groups = self.base_optimizer.param_groups

    def _params(self) -> list[tuple[Tensor, float]]:
        return [(p, g["sigma"]) for g in self.param_groups for p in g["params"] if p.requires_grad]

    @torch.no_grad()
    def _noise(self, p: Tensor, sigma: float) -> Tensor:
        z = torch.randn(p.shape, generator=self.generator, dtype=p.dtype, device=self.generator.device)
        return z.to(p.device) * (sigma * filter_norms(p))  # (p.shape): per-filter std sigma * ||filter||

    def step(self, closure: Closure | None = None) -> Tensor:  # type: ignore[override]
        """One LPF-SGD step. ``closure`` computes the loss and calls ``backward()``; it is called M times.

        Returns the mean of the M losses at the perturbed points.
        """
        if closure is None:
            raise ValueError("LPFSGD.step needs a closure that recomputes the loss and calls backward()")
        params = self._params()
        old = [p.detach().clone() for p, _ in params]
        grad_sum: list[Tensor | None] = [None] * len(params)
        losses = []
        for _ in range(self.M):
            with torch.no_grad():
                for p, sigma in params:
                    p.add_(self._noise(p, sigma))  # noise drawn from the filter norms at theta (not drifted)
            self.zero_grad(set_to_none=True)
            with torch.enable_grad():
                losses.append(closure().detach())
            with torch.no_grad():
                for i, ((p, _), p0) in enumerate(zip(params, old)):
                    if p.grad is not None:
                        grad_sum[i] = p.grad.clone() if grad_sum[i] is None else grad_sum[i] + p.grad
                    p.copy_(p0)  # restore theta exactly before the next sample / the step
        with torch.no_grad():
            for (p, _), g in zip(params, grad_sum):
                p.grad = None if g is None else g / self.M
        self.base_optimizer.step()
        return torch.stack(losses).mean()


def sam_sharpness(
    model: nn.Module,
    data: tuple[Tensor, Tensor],
    rho: float = 0.05,
    *,
    loss: str | LossFn = "cross_entropy",
    params: Sequence[str] | None = None,
) -> dict[str, float]:
    """One-step SAM estimate of the sharpness of the mean loss on ``data`` (full batch).

        sharpness = R(theta + rho * g / ||g||) - R(theta),    g = grad_theta R(theta)

    SAM's linearised inner max (Foret et al. 2021) with gamma = rho: a lower bound on R^rho(theta) - R(theta),
    since the ascent point lies in the ball. Only the parameters in ``params`` (default: all trainable ones) are
    perturbed. The model is not modified (the perturbed point is evaluated with ``functional_call``).

    Returns:
        dict with ``loss`` = R(theta), ``acc`` (NaN unless the targets are class ids), ``sharpness`` and ``grad_norm`` = ||g||.
    """
    X, y = labelled_tensors(data, "data", loss)
    loss_fn = resolve_loss(loss)
    named = dict(model.named_parameters())
    names = [n for n, p in named.items() if p.requires_grad] if params is None else list(params)
    missing = [n for n in names if n not in named]
    if missing or not names:
        raise ValueError(f"params= must name some of the model's parameters {list(named)}; got {list(names)}")
    p0 = named[names[0]]
    X = X.to(device=p0.device, dtype=p0.dtype if X.is_floating_point() else X.dtype)
    y = y.to(p0.device)
    # Work on detached copies through functional_call: the model's tensors are never written to.
    theta = {n: named[n].detach().clone().requires_grad_(True) for n in names}
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            out = torch.func.functional_call(model, theta, (X,))
            R = loss_fn(out, y).mean()
            grads = torch.autograd.grad(R, list(theta.values()), allow_unused=True)
        with torch.no_grad():
            grads = [torch.zeros_like(t) if g is None else g for t, g in zip(theta.values(), grads)]
            g_norm = torch.sqrt(sum((g * g).sum() for g in grads))
            scale = rho / g_norm if g_norm > 0 else 0.0  # at a stationary point there is no ascent direction
            theta_up = {n: t.detach() + scale * g for (n, t), g in zip(theta.items(), grads)}
            R_up = loss_fn(torch.func.functional_call(model, theta_up, (X,)), y).mean()
            # Accuracy only means something for class-id targets; a custom loss may take any targets
            # (e.g. images for a generator), where comparing shapes would fail.
            is_class = not y.is_floating_point() and y.shape == out.shape[:-1]
            acc = (out.argmax(-1) == y).float().mean().item() if is_class else math.nan
    finally:
        model.train(was_training)
    return {"loss": R.item(), "acc": acc, "sharpness": (R_up - R).item(), "grad_norm": g_norm.item()}


__all__ = ["LPFSGD", "SAM", "filter_norms", "sam_sharpness"]
