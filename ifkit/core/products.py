"""Curvature products for iterative solvers: build the autograd graph once, reuse it for every product.

CG and LiSSA ask for H v (or G v) tens to hundreds of times at the same theta on the same data. ``func.hvp_fn``
(forward-over-reverse, ``jvp(grad(L))``) re-runs the forward and backward pass for every product. Here the
graph of the gradient (Hessian) or of the outputs and their Jacobian (Gauss-Newton) is built ONCE per chunk of
data and every product is a backward pass through it:

    H v = d/dtheta (g^T v),            g = grad_theta L built with create_graph=True     (Pearlmutter 1994)
    G v = J^T H_out J v:   J v = d/du (J^T u)^T v   (the "double-vjp" trick: J^T u is linear in u),
                           H_out w = d/dz (grad_z l)^T w,   J^T w = d/dtheta z^T w

Measured on the 784-64-10 MLP at 4,000 Fashion-MNIST points (one thread, load 4-5): H v 127-135 -> 35-42 ms,
G v 99-130 -> 44-55 ms, with the same numbers to float rounding (tests/test_products.py checks both against
func.hvp_fn / func.ggn_vp_fn and the dense matrices in float64).

Memory: a retained graph holds the chunk's activations (and the backward's intermediates). With several chunks,
each chunk's saved tensors are counted (``saved_tensors_hooks``) and chunks are kept while the total stays
within ``keep_mb`` (the first always: the old products held the same graph while they ran); the rest are rebuilt
on every product, still a plain double backward. A model whose ops have no double-backward formula falls back
to ``func.hvp_fn`` / ``func.ggn_vp_fn``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .func import Problem, chunks, ggn_vp_fn, hvp_fn

Product = Callable[[Tensor], Tensor]  # (p,) -> (p,), a product with one chunk's SUMMED-loss curvature


def _back(out: Tensor, inp: Tensor, v: Tensor) -> Tensor:
    """d(out^T v)/d inp through a retained graph; zeros where ``inp`` does not reach ``out``."""
    if not out.requires_grad:  # out does not depend on inp at all (e.g. a loss linear in theta has H = 0)
        return torch.zeros_like(inp)
    g = torch.autograd.grad(out, inp, v, retain_graph=True, allow_unused=True)[0]
    return torch.zeros_like(inp) if g is None else g


def _hessian_chunk(prob: Problem, X: Tensor, y: Tensor) -> Product:
    th = prob.theta.detach().requires_grad_(True)
    with torch.enable_grad():
        g = torch.autograd.grad(prob.losses(th, X, y).sum(), th, create_graph=True)[0]  # (p,), graph kept
    return lambda v: _back(g, th, v)


def _ggn_chunk(prob: Problem, X: Tensor, y: Tensor) -> Product:
    th = prob.theta.detach().requires_grad_(True)
    with torch.enable_grad():
        z = prob.forward(th, X)  # (c, ...) outputs, graph kept
        u = torch.zeros_like(z, requires_grad=True)  # a dummy cotangent: J^T u is linear in u
        Jt_u = torch.autograd.grad(z, th, u, create_graph=True)[0]  # (p,)
        zd = z.detach().requires_grad_(True)
        g_out = torch.autograd.grad(prob.loss(zd, y).sum(), zd, create_graph=True)[0]  # (c, ...) dl/dz

    def gv(v: Tensor) -> Tensor:
        Jv = _back(Jt_u, u, v)  # (c, ...) = J v
        HJv = _back(g_out, zd, Jv)  # (c, ...) = H_out J v
        return _back(z, th, HJv)  # (p,) = J^T H_out J v

    return gv


def _saved_bytes(build: Callable[[], Product]) -> tuple[Product, int]:
    """Build a chunk's product and count the bytes of the tensors its graph saved."""
    total = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        prod = build()
    return prod, total


def curvature_vp_fn(prob: Problem, X: Tensor, y: Tensor, kind: str = "hessian", chunk_size: int = 4096,
                    keep_mb: float = 256.0) -> Callable[[Tensor], Tensor]:
    """v -> H v (``kind="hessian"``) or G v (``"ggn"``) of the MEAN loss over (X, y) at theta, from retained graphs.

    The same products as ``func.hvp_fn`` / ``func.ggn_vp_fn`` (v of shape (p,) or (p, k)); build cost: one
    forward and backward per chunk, then each product costs one backward pass (H) or three (G) through the
    kept graphs. ``keep_mb``: memory for kept graphs (chunks beyond it are rebuilt per product).
    """
    if kind not in ("hessian", "ggn"):
        raise ValueError(f"kind must be 'hessian' or 'ggn', got {kind!r}")
    build = _hessian_chunk if kind == "hessian" else _ggn_chunk
    n = len(X)
    kept: list[Product] = []
    rest: list[slice] = []
    used = 0
    try:
        for rows in chunks(n, chunk_size):
            if rest:
                rest.append(rows)
                continue
            if n <= chunk_size:  # one chunk, always kept: no need to count (saves ~8% of a mini-batch product)
                kept.append(build(prob, X, y))
                break
            prod, nbytes = _saved_bytes(lambda r=rows: build(prob, X[r], y[r]))
            if kept and used + nbytes > keep_mb * 2**20:
                rest.append(rows)  # over budget: this chunk and the following ones are rebuilt per product
                continue
            kept.append(prod)
            used += nbytes
    except (RuntimeError, NotImplementedError):  # e.g. an op torch cannot differentiate with create_graph
        return (hvp_fn if kind == "hessian" else ggn_vp_fn)(prob, X, y, chunk_size)

    def one(v: Tensor) -> Tensor:
        out = torch.zeros_like(v)
        for prod in kept:
            out += prod(v)
        for rows in rest:
            out += build(prob, X[rows], y[rows])(v)
        return out / n

    def apply(v: Tensor) -> Tensor:
        # columns one after another: a batched backward (is_grads_batched) measured no faster per column
        return one(v) if v.dim() == 1 else torch.stack([one(c) for c in v.unbind(1)], dim=1)  # (p,) or (p, k)

    fallback: list[Callable[[Tensor], Tensor]] = []

    def guarded(v: Tensor) -> Tensor:
        if fallback:
            return fallback[0](v)
        try:
            return apply(v)
        except (RuntimeError, NotImplementedError):  # no double-backward formula for some op: forward-over-reverse
            fallback.append((hvp_fn if kind == "hessian" else ggn_vp_fn)(prob, X, y, chunk_size))
            return fallback[0](v)

    return guarded


__all__ = ["curvature_vp_fn"]
