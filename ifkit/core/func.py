"""The functional core: parameters as a flat vector, per-sample losses and gradients, HVPs and GGN products.

Everything influence needs reduces to three primitives over a parameter vector theta of length p:

* per-sample gradients  g_i = grad_theta loss(z_i, theta)            -> ``iter_grads`` / ``per_sample_grads``
* the mean gradient     g   = 1/n sum_i g_i                          -> ``mean_grad``
* curvature products    H v and G v (Hessian, Gauss-Newton)          -> ``hvp_fn`` / ``ggn_vp_fn``

All of them are built on ``torch.func.functional_call`` so the user's module is never touched: we read its
parameters once (``Problem``), differentiate a pure function of a flat vector, and give vectors back.
Per-sample gradients are streamed in chunks of ``chunk_size`` rows, so memory stays bounded by
``chunk_size * p`` floats whatever ``n`` is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import functional_call, grad, jvp, vmap

from .inputs import as_tensors  # noqa: F401 -- pairs of tensors / arrays, Datasets, DataLoaders (core/inputs.py)

LossFn = Callable[[Tensor, Tensor], Tensor]  # (outputs, targets) -> per-sample losses (n,)
Data = tuple[Tensor, Tensor]

DEFAULT_CHUNK_SIZE = 256


def cross_entropy(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-sample cross-entropy; sequence outputs (n, T, V) give the mean token loss per sequence.

    Token targets equal to -100 (cross_entropy's ignore_index: padding, or the prompt of a prompt/answer pair)
    are left out of the mean, so a sequence's loss is the mean over the tokens it is trained on.
    """
    if outputs.dim() == 3:  # language model: (n, T, V) logits, (n, T) token ids
        tok = torch.nn.functional.cross_entropy(outputs.transpose(1, 2), targets, reduction="none")  # (n, T)
        counted = (targets != -100).sum(dim=1).clamp(min=1)  # (n,) tokens that carry a loss
        return tok.sum(dim=1) / counted
    return torch.nn.functional.cross_entropy(outputs, targets, reduction="none")  # (n,)


def resolve_loss(loss: str | LossFn) -> LossFn:
    """Turn the ``loss=`` option into a per-sample loss function."""
    if callable(loss):
        return loss
    if loss == "cross_entropy":
        return cross_entropy
    raise ValueError(f"unknown loss {loss!r}: use 'cross_entropy' or a callable (outputs, targets) -> (n,) losses")


@dataclass
class Problem:
    """A model frozen at theta, viewed as a function of a flat parameter vector.

    Attributes:
        model: the user's module (only read, never modified).
        names: names of the parameters we differentiate (``params=`` subset or all trainable ones).
        theta: (p,) flat copy of those parameters.
        frozen: the remaining parameters and all buffers, passed to ``functional_call`` unchanged.
        loss: per-sample loss function.
    """

    model: torch.nn.Module
    names: list[str]
    shapes: list[torch.Size]
    theta: Tensor
    frozen: dict[str, Tensor]
    loss: LossFn

    @property
    def p(self) -> int:
        return self.theta.numel()

    def unflatten(self, vec: Tensor) -> dict[str, Tensor]:
        """(p,) vector -> {name: tensor} in the shapes of the model's parameters."""
        out, i = {}, 0
        for name, shape in zip(self.names, self.shapes):
            k = math.prod(shape)
            out[name] = vec[i : i + k].view(shape)
            i += k
        return out

    def slices(self) -> dict[str, slice]:
        """Where each named parameter lives in the flat vector (block structure for DataInf, K-FAC)."""
        out, i = {}, 0
        for name, shape in zip(self.names, self.shapes):
            k = math.prod(shape)
            out[name] = slice(i, i + k)
            i += k
        return out

    def forward(self, theta: Tensor, X: Tensor) -> Tensor:
        return functional_call(self.model, {**self.frozen, **self.unflatten(theta)}, (X,))

    def losses(self, theta: Tensor, X: Tensor, y: Tensor) -> Tensor:
        """(n,) per-sample losses at theta."""
        return self.loss(self.forward(theta, X), y)

    def mean_loss(self, theta: Tensor, X: Tensor, y: Tensor) -> Tensor:
        return self.losses(theta, X, y).mean()

    def with_theta(self, theta: Tensor) -> Problem:
        return Problem(self.model, self.names, self.shapes, theta.detach(), self.frozen, self.loss)


def param_names(model: torch.nn.Module, params: Sequence[str] | None = None) -> list[str]:
    """The parameters to differentiate: ``params`` checked against the model, or all trainable ones.

    Raises:
        ValueError: for a name the model does not have (with the closest names) or an empty selection.
    """
    named = dict(model.named_parameters())
    if params is None:
        names = [n for n, t in named.items() if t.requires_grad]
    else:
        names = list(params)
        missing = [n for n in names if n not in named]
        if missing:
            import difflib

            hints = {n: difflib.get_close_matches(n, named, n=3) for n in missing}
            raise ValueError(
                f"params= names parameters the model does not have: {hints} "
                f"(suggestions in the lists; all names: {list(named)})"
            )
    if not names:
        raise ValueError("no parameters to differentiate: the model has no trainable parameters; pass params=[...]")
    return names


def make_problem(
    model: torch.nn.Module, params: Sequence[str] | None = None, loss: str | LossFn = "cross_entropy"
) -> Problem:
    """Read theta from ``model`` (optionally only the parameters named in ``params``).

    Raises:
        ValueError: if ``params`` names a parameter the model does not have (the message lists the close ones).
    """
    named = dict(model.named_parameters())
    names = param_names(model, params)
    theta = torch.cat([named[n].detach().reshape(-1) for n in names]).clone()  # (p,)
    frozen = {n: t.detach() for n, t in named.items() if n not in names}
    frozen.update({n: b.detach() for n, b in model.named_buffers()})
    return Problem(model, names, [named[n].shape for n in names], theta, frozen, resolve_loss(loss))


def chunks(n: int, chunk_size: int) -> Iterator[slice]:
    for start in range(0, n, chunk_size):
        yield slice(start, min(start + chunk_size, n))


def iter_grads(prob: Problem, X: Tensor, y: Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[tuple[slice, Tensor]]:
    """Stream per-sample gradients: yields ``(rows, G)`` with G of shape (len(rows), p).

    One ``vmap(grad(.))`` call per chunk: the per-example graph is batched, so a chunk costs about one batched
    backward pass, and at most ``chunk_size * p`` gradient entries are alive at once. We differentiate w.r.t.
    the parameter tensors (views of theta) and concatenate once: differentiating w.r.t. the flat theta would
    make every slice's backward zero-fill and add a whole (chunk, p) block, 3x slower for a 2-layer MLP.
    """
    parts = [t.view(s) for t, s in zip(prob.theta.split([math.prod(s) for s in prob.shapes]), prob.shapes)]

    def loss_one(parts: list[Tensor], x: Tensor, t: Tensor) -> Tensor:
        out = functional_call(prob.model, {**prob.frozen, **dict(zip(prob.names, parts))}, (x.unsqueeze(0),))
        return prob.loss(out, t.unsqueeze(0)).squeeze(0)

    g_one = vmap(grad(loss_one), in_dims=(None, 0, 0))
    for rows in chunks(len(X), chunk_size):
        gs = g_one(parts, X[rows], y[rows])  # one (chunk, *shape) tensor per parameter
        yield rows, torch.cat([g.detach().reshape(len(g), -1) for g in gs], 1)  # (chunk, p)


def grad_dots(prob: Problem, X: Tensor, y: Tensor, V: Tensor, chunk_size: int = 2048) -> Tensor:
    """G @ V without forming the per-sample gradients G: (n,) for V (p,), (n, k) for V (p, k).

    g_i^T v is the directional derivative d/dt l(z_i, theta + t v) at t = 0, so ONE forward-mode JVP of the
    vector of per-sample losses gives it for every example at once, at about the cost of a forward pass --
    no (chunk, p) gradient block is ever written. This is what every linear score (graddot, TracIn, CG, LiSSA,
    DataInf's last pass) needs; columns of V are vmapped.
    """

    def dot_one(v: Tensor, Xc: Tensor, yc: Tensor) -> Tensor:
        return jvp(lambda th: prob.losses(th, Xc, yc), (prob.theta,), (v,))[1]  # (c,)

    k = 1 if V.dim() == 1 else V.shape[1]
    step = max(1, chunk_size // k)  # activations grow with k tangents: keep chunk * k bounded
    fn = dot_one if V.dim() == 1 else vmap(dot_one, in_dims=(1, None, None), out_dims=1)
    return torch.cat([fn(V, X[rows], y[rows]).detach() for rows in chunks(len(X), step)])


def per_sample_grads(prob: Problem, X: Tensor, y: Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Tensor:
    """All per-sample gradients as one (n, p) matrix (holds n*p floats: use ``iter_grads`` for big n)."""
    return torch.cat([G for _, G in iter_grads(prob, X, y, chunk_size)])  # (n, p)


def mean_grad(prob: Problem, X: Tensor, y: Tensor, chunk_size: int = 4096) -> Tensor:
    """(p,) gradient of the mean loss over (X, y), accumulated over chunks."""
    total = torch.zeros_like(prob.theta)
    for rows in chunks(len(X), chunk_size):
        total += grad(lambda th: prob.losses(th, X[rows], y[rows]).sum())(prob.theta)
    return total / len(X)


def hvp_fn(prob: Problem, X: Tensor, y: Tensor, chunk_size: int = 4096) -> Callable[[Tensor], Tensor]:
    """v -> H v for the Hessian of the mean loss over (X, y) at theta (forward-over-reverse).

    ``jvp(grad(L), theta, v)`` costs about two backward passes and never forms H. Accepts v of shape (p,) or a
    batch (p, k) of right-hand sides (vmapped over the tangent), as batched CG needs.
    """
    n = len(X)

    def hv_one(v: Tensor) -> Tensor:
        out = torch.zeros_like(v)
        for rows in chunks(n, chunk_size):
            g = grad(lambda th: prob.losses(th, X[rows], y[rows]).sum())
            out += jvp(g, (prob.theta,), (v,))[1]
        return out / n

    return _batched(hv_one)


def ggn_vp_fn(prob: Problem, X: Tensor, y: Tensor, chunk_size: int = 4096) -> Callable[[Tensor], Tensor]:
    """v -> G v for the generalised Gauss-Newton G = 1/n sum_i J_i^T H_out,i J_i (positive semi-definite).

    J_i is the Jacobian of the outputs w.r.t. theta and H_out,i the Hessian of the loss w.r.t. the outputs.
    Computed as a JVP (J v), a Hessian-vector product in output space, and a VJP (J^T .).
    """
    n = len(X)

    def gv_one(v: Tensor) -> Tensor:
        out = torch.zeros_like(v)
        for rows in chunks(n, chunk_size):
            Xc, yc = X[rows], y[rows]
            f = lambda th: prob.forward(th, Xc)  # noqa: E731
            z, Jv = jvp(f, (prob.theta,), (v,))  # outputs and J v, both (c, k)
            gl = grad(lambda o: prob.loss(o, yc).sum())
            HJv = jvp(gl, (z.detach(),), (Jv,))[1]  # H_out J v, (c, k)
            _, vjp_f = torch.func.vjp(f, prob.theta)
            out += vjp_f(HJv)[0]
        return out / n

    return _batched(gv_one)


def _batched(mv: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """Let a (p,) -> (p,) product also take (p, k) blocks of right-hand sides, vmapped over the columns."""
    mv_cols = vmap(mv, in_dims=1, out_dims=1)

    def apply(v: Tensor) -> Tensor:
        return mv(v) if v.dim() == 1 else mv_cols(v)  # (p,) or (p, k)

    return apply


def hessian_exact(prob: Problem, X: Tensor, y: Tensor, budget_mb: float = 2048.0) -> Tensor:
    """The full (p, p) Hessian of the mean loss over (X, y) at theta: the oracle for every other solver.

    Built column by column from HVPs of the basis vectors (vmapped), so it is exact up to float rounding.

    Raises:
        MemoryError: before allocating, when p*p entries exceed ``budget_mb``; the message names the size and
            suggests the matrix-free methods.
    """
    need_mb = prob.p**2 * prob.theta.element_size() / 2**20
    if need_mb > budget_mb:
        raise MemoryError(
            f"the exact Hessian of {prob.p:,} parameters needs {need_mb:,.0f} MB (> budget {budget_mb:,.0f} MB): "
            "use method 'if-cg' (matrix-free conjugate gradient), 'if-lissa' or 'ekfac', restrict params=, "
            "or raise budget_mb"
        )
    n = len(X)
    H = torch.zeros(prob.p, prob.p, dtype=prob.theta.dtype, device=prob.theta.device)
    eye = torch.eye(prob.p, dtype=prob.theta.dtype, device=prob.theta.device)
    for rows in chunks(n, 4096):
        g = grad(lambda th: prob.losses(th, X[rows], y[rows]).sum())
        col = lambda v: jvp(g, (prob.theta,), (v,))[1]  # noqa: E731
        H += vmap(col)(eye)  # (p, p), symmetric
    H /= n
    return (H + H.T) / 2
