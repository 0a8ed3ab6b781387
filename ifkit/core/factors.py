"""Layer-wise structure of gradients in networks of ``nn.Linear`` layers: inner products without (n, p) gradients.

For a Linear layer y = W x + b applied once per example, the gradient of any scalar f of one example with respect
to W is the outer product e x^T, with e = df/dy (the signal backpropagated to the layer's output), and with
respect to b it is e. So inner products of two such gradients factor per layer (Novak et al. 2022's "structured"
NTK; the same fact K-FAC rests on):

    < grad_i, grad_j >  =  sum_l  (x_il . x_jl + [bias_l]) (e_il . e_jl)

One forward and one backward pass per scalar output give every x and e; Gram matrices of Jacobians then cost
O(n^2 (d_in + d_out)) per layer instead of O(n^2 p), and no (n, p) per-sample gradient is ever formed.

``Taps`` collects x and e for a ``Problem`` whose differentiated parameters are all weights/biases of Linear layers
each called exactly once per forward pass (an MLP, the heads of a CNN with ``params=``); ``supported`` says
whether that holds, so callers fall back to the generic path otherwise. VM/FVM's low-rank validation curvature
uses it (ifkit/curvature/val_inverse.py): on the detection MLP a VM score took 4.8 s instead of 14.8 s (the rest is
now the r x r triangular solves), and the gain grows with the width of the layers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .func import Problem, chunks


@dataclass
class Layer:
    """One Linear layer's share of the differentiated parameters."""

    module: nn.Module
    name: str  # the module's name in the model (parameters are NAME.weight, NAME.bias)
    weight: bool  # is the weight differentiated?
    bias: bool  # is the bias differentiated?


def _layers(prob: Problem) -> list[Layer] | None:
    """The Linear layers that own every differentiated parameter, or None if some parameter is elsewhere."""
    owners: dict[str, Layer] = {}
    modules = dict(prob.model.named_modules())
    for name in prob.names:
        mod_name, _, leaf = name.rpartition(".")
        module = modules.get(mod_name)
        if type(module) is not nn.Linear or leaf not in ("weight", "bias"):
            return None
        layer = owners.setdefault(mod_name, Layer(module, mod_name, False, False))
        setattr(layer, leaf, True)
    return list(owners.values())


def supported(prob: Problem, X: Tensor) -> bool:
    """True when every differentiated parameter is a Linear weight/bias, each such layer runs once per forward
    pass on ``X[:1]`` (checked with hooks; a shared or recurrent layer would break the factorisation) and its
    output reaches the model's output (a computed-then-discarded layer has no factors: vmap handles it)."""
    layers = _layers(prob)
    if not layers:
        return False
    counts = {id(L.module): 0 for L in layers}
    flat, outs = [], []

    def hook(module, args, out):
        counts[id(module)] += 1
        flat.append(args[0].dim() == 2)  # (batch, features): one input vector per example (not per token)
        outs.append(out)

    handles = [L.module.register_forward_hook(hook) for L in layers]
    try:
        with torch.enable_grad():
            theta = prob.theta.detach().requires_grad_(True)  # only so that autograd records a graph
            out = prob.forward(theta, X[:1])
    finally:
        for h in handles:
            h.remove()
    if not (all(c == 1 for c in counts.values()) and all(flat)):
        return False
    leaves = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, Tensor) and t.requires_grad]
    if not leaves:
        return False
    reached = torch.autograd.grad(sum(t.float().sum() for t in leaves), outs, allow_unused=True)
    return all(g is not None for g in reached)


@dataclass
class Taps:
    """Per-layer inputs x (n, d_in) and backpropagated signals e (n, m, d_out) for m scalars per example."""

    layers: list[Layer]
    x: list[Tensor]
    e: list[Tensor]

    def gram(self, other: Taps) -> Tensor:
        """(n, m, n', m') inner products <grad f_ia, grad f'_jb> over the differentiated parameters."""
        out = None
        for L, x, e, x2, e2 in zip(self.layers, self.x, self.e, other.x, other.e):
            xx = torch.zeros(len(x), len(x2), dtype=x.dtype, device=x.device)  # (n, n')
            if L.weight:
                xx = xx + x @ x2.T
            if L.bias:
                xx = xx + 1.0
            ee = torch.einsum("iad,jbd->iajb", e, e2)  # (n, m, n', m')
            term = ee * xx[:, None, :, None]
            out = term if out is None else out + term
        return out

    def sq_norms(self) -> Tensor:
        """(n, m) squared norms ||grad f_ia||^2."""
        out = 0.0
        for L, x, e in zip(self.layers, self.x, self.e):
            xx = (x * x).sum(1) * float(L.weight) + float(L.bias)  # (n,)
            out = out + xx[:, None] * (e * e).sum(-1)  # (n, m)
        return out


def taps(prob: Problem, X: Tensor, scalars: Callable[[Tensor], Tensor]) -> Taps:
    """x and e for the scalars ``scalars(outputs) -> (n, m)`` of every example (e.g. the logits, m = K, or the
    per-sample losses, m = 1). Examples must not interact (no BatchNorm in training mode): then the gradient of
    the column sum with respect to a layer's outputs is, row by row, each example's own signal."""
    layers = _layers(prob)
    assert layers is not None, "call supported() first"
    xs: dict[int, Tensor] = {}
    ys: dict[int, Tensor] = {}

    def hook(module, args, out):
        # Hand the rest of the network a copy: an in-place op downstream (ReLU(inplace=True)) would otherwise
        # overwrite the very tensors we differentiate against and read.
        xs[id(module)] = args[0].detach().clone()
        ys[id(module)] = out
        return out.clone()

    handles = [L.module.register_forward_hook(hook) for L in layers]
    try:
        with torch.enable_grad():
            theta = prob.theta.detach().requires_grad_(True)  # only so that autograd records a graph
            params = prob.unflatten(theta)
            out = torch.func.functional_call(prob.model, {**prob.frozen, **params}, (X,))
            S = scalars(out)  # (n, m)
            outs = [ys[id(L.module)] for L in layers]
            cols = []
            for a in range(S.shape[1]):
                grads = torch.autograd.grad(S[:, a].sum(), outs, retain_graph=a + 1 < S.shape[1],
                                            allow_unused=True)
                lost = [L.name for L, g in zip(layers, grads) if g is None]
                if lost:  # zeros would be silently wrong gradients: say why instead
                    raise RuntimeError(
                        f"the output of layer(s) {lost} does not reach the loss through autograd, so their per-layer "
                        "factors are undefined. A torch.compile'd model hides hooked outputs from autograd (measured: "
                        "all-zero gradients): pass the uncompiled module (model._orig_mod)")
                cols.append(list(grads))
    finally:
        for h in handles:
            h.remove()
    x = [xs[id(L.module)].reshape(len(X), -1) for L in layers]  # (n, d_in)
    e = [torch.stack([c[k].reshape(len(X), -1) for c in cols], dim=1).detach() for k in range(len(layers))]
    return Taps(layers, x, e)


def outer_product_grads(prob: Problem, X: Tensor, y: Tensor) -> Tensor:
    """(n, p) per-sample loss gradients in ``prob.names`` order, as outer products e_i x_i^T per layer.

    One batched forward and one backward pass, then the outer products: the same numbers as
    ``func.per_sample_grads`` (vmap of grad), without vmap's per-example graph. Only for ``supported`` problems.
    """
    return factored_grads(prob, X, y, chunk_size=max(len(X), 1)).dense()


# Intermediate (rows, min(d_in, d_out), k) products of FactoredGrads are built this many entries at a time
_WORK_ENTRIES = 1 << 24  # 64 MB of float32


@dataclass
class FactoredGrads:
    """Per-sample loss gradients g_i of a Linear-layer network, held as their per-layer factors (x_i, e_i).

    g_i restricted to layer l is the outer product e_il x_il^T (weight) and e_il (bias): n * sum_l (d_in + d_out)
    numbers instead of n * p (1,042 instead of 101,770 per example for a 784-128-10 MLP). They cost ONE batched
    forward and backward pass -- the same work as a training step -- and every operation influence methods
    need reads them directly, layer by layer (one "block" per layer, DataInf's blocks):

        dots(V)          G V                         (n, k)   cost n * min(d_in, d_out) * (d_in + d_out) * k
        block_dots(V)    g_il^T v_l per layer        (n, L, k)
        sq_norms()       ||g_i||^2 = sum_l (||x_il||^2 + 1) ||e_il||^2           (n,)
        tmatmul_blocks   sum_i g_il c_il per layer   (p, k)
        dense()          G itself                    (n, p)   the only operation that writes n * p floats
    """

    layers: list[Layer]
    x: list[Tensor]  # per layer (n, d_in)
    e: list[Tensor]  # per layer (n, d_out)
    where: dict[str, slice]  # parameter name -> slice of the flat vector (Problem.slices())
    p: int

    @property
    def n(self) -> int:
        return len(self.x[0])

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.x, *self.e))

    def rows(self, r: slice) -> FactoredGrads:
        return FactoredGrads(self.layers, [x[r] for x in self.x], [e[r] for e in self.e], self.where, self.p)

    def _slices(self, L: Layer) -> tuple[slice | None, slice | None]:
        prefix = f"{L.name}." if L.name else ""  # a bare nn.Linear model has parameters "weight", "bias"
        return (self.where[f"{prefix}weight"] if L.weight else None, self.where[f"{prefix}bias"] if L.bias else None)

    def _steps(self, width: int) -> list[slice]:
        step = max(1, _WORK_ENTRIES // max(width, 1))
        return [slice(s, min(s + step, self.n)) for s in range(0, self.n, step)]

    def block_dots(self, V: Tensor) -> Tensor:
        """(n, L, k) per-layer inner products g_il^T v_l for V (p, k)."""
        k = V.shape[1]
        out = torch.zeros(self.n, len(self.layers), k, dtype=V.dtype, device=V.device)  # (n, L, k)
        for j, (L, x, e) in enumerate(zip(self.layers, self.x, self.e)):
            w, b = self._slices(L)
            d_out, d_in = e.shape[1], x.shape[1]
            if w is not None:
                Vw = V[w].view(d_out, d_in, k)  # (d_out, d_in, k)
                for r in self._steps(min(d_in, d_out) * k):
                    if d_in >= d_out:  # contract the wide side first: (rows, d_out, k), then with e
                        T = (x[r] @ Vw.permute(1, 0, 2).reshape(d_in, d_out * k)).view(-1, d_out, k)
                        out[r, j] += (T * e[r, :, None]).sum(1)
                    else:  # (rows, d_in, k), then with x
                        T = (e[r] @ Vw.reshape(d_out, d_in * k)).view(-1, d_in, k)
                        out[r, j] += (T * x[r, :, None]).sum(1)
            if b is not None:
                out[:, j] += e @ V[b]  # (n, k)
        return out

    def dots(self, V: Tensor) -> Tensor:
        """G V: (n,) for V (p,), (n, k) for V (p, k)."""
        out = self.block_dots(V if V.dim() == 2 else V[:, None]).sum(1)  # (n, k)
        return out if V.dim() == 2 else out[:, 0]

    def block_sq_norms(self) -> Tensor:
        """(n, L) squared norms of each layer's share of g_i: (||x||^2 [weight] + [bias]) ||e||^2."""
        cols = []
        for L, x, e in zip(self.layers, self.x, self.e):
            xx = (x * x).sum(1) * float(L.weight) + float(L.bias)  # (n,)
            cols.append(xx * (e * e).sum(1))
        return torch.stack(cols, dim=1)

    def sq_norms(self) -> Tensor:
        """(n,) squared gradient norms ||g_i||^2."""
        return self.block_sq_norms().sum(1)

    def tmatmul_blocks(self, C: Tensor) -> Tensor:
        """(p, k) with layer l's rows = sum_i g_il C[i, l, :] for C (n, L, k): G^T C, one coefficient per block."""
        k = C.shape[2]
        out = torch.zeros(self.p, k, dtype=C.dtype, device=C.device)  # (p, k)
        for j, (L, x, e) in enumerate(zip(self.layers, self.x, self.e)):
            w, b = self._slices(L)
            d_out, d_in = e.shape[1], x.shape[1]
            if w is not None:
                acc = torch.zeros(d_out * k, d_in, dtype=C.dtype, device=C.device)
                for r in self._steps(d_out * k):
                    ec = (e[r, :, None] * C[r, j, None, :]).reshape(-1, d_out * k)  # (rows, d_out * k)
                    acc += ec.T @ x[r]  # (d_out * k, d_in)
                out[w] = acc.view(d_out, k, d_in).permute(0, 2, 1).reshape(d_out * d_in, k)
            if b is not None:
                out[b] = e.T @ C[:, j]  # (d_out, k)
        return out

    def dense(self) -> Tensor:
        """(n, p) the gradients themselves, written in place as outer products."""
        G = torch.empty(self.n, self.p, dtype=self.x[0].dtype, device=self.x[0].device)  # (n, p)
        for L, x, e in zip(self.layers, self.x, self.e):
            w, b = self._slices(L)
            if w is not None:
                block = G[:, w].view(self.n, e.shape[1], x.shape[1])  # (n, d_out, d_in)
                torch.mul(e[:, :, None], x[:, None, :], out=block)  # the outer products, straight into G
            if b is not None:
                G[:, b] = e
        return G

    def as_taps(self) -> Taps:
        """The same factors as ``Taps`` with one scalar (the loss) per example, for ``Taps.gram``."""
        return Taps(self.layers, self.x, [e[:, None, :] for e in self.e])


def factor_bytes_per_row(prob: Problem) -> int:
    """Bytes FactoredGrads holds per example (sum over layers of d_in + d_out floats); supported problems only."""
    layers = _layers(prob)
    assert layers is not None
    return sum(L.module.in_features + L.module.out_features for L in layers) * prob.theta.element_size()


def factored_grads(prob: Problem, X: Tensor, y: Tensor, chunk_size: int = 4096) -> FactoredGrads:
    """Per-sample loss gradients of ``supported`` problems as factors: one forward + backward per chunk."""
    parts = [taps(prob, X[r], lambda out: prob.loss(out, y[r]).unsqueeze(1)) for r in chunks(max(len(X), 1), chunk_size)]
    if len(parts) == 1:  # one chunk (the usual case: GradEngine asks for FACTOR_CHUNK rows): no copies
        return FactoredGrads(parts[0].layers, parts[0].x, [e[:, 0] for e in parts[0].e], prob.slices(), prob.p)
    x = [torch.cat([t.x[j] for t in parts]) for j in range(len(parts[0].layers))]  # (n, d_in) per layer
    e = [torch.cat([t.e[j][:, 0] for t in parts]) for j in range(len(parts[0].layers))]  # (n, d_out) per layer
    return FactoredGrads(parts[0].layers, x, e, prob.slices(), prob.p)


__all__ = ["FactoredGrads", "Layer", "Taps", "factor_bytes_per_row", "factored_grads", "outer_product_grads",
           "supported", "taps"]
