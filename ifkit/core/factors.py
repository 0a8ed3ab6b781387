"""Layer-wise structure of gradients in networks of Linear and Conv1d/Conv2d layers: inner products without (n, p) gradients.

For a Linear layer y = W x + b applied once per example, the gradient of any scalar f of one example with respect
to W is the outer product e x^T, with e = df/dy (the signal backpropagated to the layer's output), and with
respect to b it is e. So inner products of two such gradients factor per layer (Novak et al. 2022's "structured"
NTK; the same fact K-FAC rests on):

    < grad_i, grad_j >  =  sum_l  (x_il . x_jl + [bias_l]) (e_il . e_jl)

One forward and one backward pass per scalar output give every x and e; Gram matrices of Jacobians then cost
O(n^2 (d_in + d_out)) per layer instead of O(n^2 p), and no (n, p) per-sample gradient is ever formed.

``Taps`` collects x and e for a ``Problem`` whose differentiated parameters are all weights/biases of Linear or
Conv1d/Conv2d layers each called exactly once per forward pass (an MLP, a CNN); ``supported`` says whether that holds,
so callers fall back to the generic path otherwise. A conv layer's gradient is a sum of outer products over its
output positions, not one (core/conv.py): its per-sample block is held densely, C_out (C_in kh kw + 1) numbers,
beside the factors of the Linear layers (``LayerGrads``). On a 2-conv CNN with a 800 -> 10 head (12,810
parameters), that is 4,810 + 810 numbers per example instead of 12,810, and no vmap over examples. VM/FVM's low-rank validation curvature
uses it (ifkit/curvature/val_inverse.py): on the detection MLP a VM score took 4.8 s instead of 14.8 s (the rest is
now the r x r triangular solves), and the gain grows with the width of the layers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .conv import conv_params, conv_rows, conv_supported
from .func import Problem, chunks


@dataclass
class Layer:
    """One Linear layer's share of the differentiated parameters."""

    module: nn.Module
    name: str  # the module's name in the model (parameters are NAME.weight, NAME.bias)
    weight: bool  # is the weight differentiated?
    bias: bool  # is the bias differentiated?

    @property
    def dense(self) -> bool:
        """A conv layer: its per-sample gradient [weight | bias] is held densely (module docstring)."""
        return type(self.module) is not nn.Linear

    @property
    def width(self) -> int:
        """Numbers per example: d_in + d_out (Linear factors) or the conv layer's dense block."""
        if self.dense:
            return conv_params(self.module, self.weight, self.bias)
        return self.module.in_features + self.module.out_features


def _layers(prob: Problem) -> list[Layer] | None:
    """The Linear / Conv1d / Conv2d layers that own every differentiated parameter, or None if some parameter is elsewhere."""
    owners: dict[str, Layer] = {}
    modules = dict(prob.model.named_modules())
    for name in prob.names:
        mod_name, _, leaf = name.rpartition(".")
        module = modules.get(mod_name)
        if not (type(module) is nn.Linear or conv_supported(module)) or leaf not in ("weight", "bias"):
            return None
        layer = owners.setdefault(mod_name, Layer(module, mod_name, False, False))
        setattr(layer, leaf, True)
    return list(owners.values())


def supported(prob: Problem, X: Tensor) -> bool:
    """True when every differentiated parameter is a Linear, Conv1d or Conv2d weight/bias (core/conv.py's
    ``conv_supported``), each such layer runs once per forward pass on ``X[:1]`` (checked with hooks; a shared
    or recurrent layer would break the factorisation) and its output reaches the model's output (a
    computed-then-discarded layer has no factors: vmap handles it)."""
    layers = _layers(prob)
    if not layers:
        return False
    counts = {id(L.module): 0 for L in layers}
    flat, outs = [], []

    def hook(module, args, out):
        counts[id(module)] += 1
        # (batch, features) for Linear: one input vector per example (not per token); (batch, C, H, W) for
        # Conv2d, (batch, C, L) for Conv1d: the input has as many axes as the weight
        flat.append(args[0].dim() == module.weight.dim())
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
    """Per-layer inputs x (n, d_in) and backpropagated signals e (n, m, d_out) for m scalars per example; for a
    conv layer (``Layer.dense``) x is None and e holds the per-sample gradient rows themselves, (n, m, p_l)."""

    layers: list[Layer]
    x: list[Tensor | None]
    e: list[Tensor]

    def gram(self, other: Taps) -> Tensor:
        """(n, m, n', m') inner products <grad f_ia, grad f'_jb> over the differentiated parameters."""
        out = None
        for L, x, e, x2, e2 in zip(self.layers, self.x, self.e, other.x, other.e):
            if L.dense:  # the rows themselves: one matrix product
                term = (e.flatten(0, 1) @ e2.flatten(0, 1).T).view(*e.shape[:2], *e2.shape[:2])  # (n, m, n', m')
            else:
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
            if L.dense:
                out = out + (e * e).sum(-1)  # (n, m)
                continue
            xx = (x * x).sum(1) * float(L.weight) + float(L.bias)  # (n,)
            out = out + xx[:, None] * (e * e).sum(-1)  # (n, m)
        return out


def taps(prob: Problem, X: Tensor, scalars: Callable[[Tensor], Tensor]) -> Taps:
    """x and e for the scalars ``scalars(outputs) -> (n, m)`` of every example (e.g. the logits, m = K, or the
    per-sample losses, m = 1): one forward pass and m backward passes, each of the column sum of one scalar.
    Examples must not interact (no BatchNorm in training mode): then the gradient of the column sum with respect
    to a layer's outputs is, row by row, each example's own signal. Conv layers' rows: ``conv.conv_rows``."""
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
    n, x, e = len(X), [], []
    for k, L in enumerate(layers):
        signal = (torch.stack([c[k] for c in cols], dim=1) if len(cols) > 1 else cols[0][k].unsqueeze(1)).detach()
        if L.dense:
            x.append(None)
            e.append(conv_rows(L.module, xs[id(L.module)], signal, L.weight, L.bias))  # (n, m, p_l)
        else:
            x.append(xs[id(L.module)].reshape(n, -1))  # (n, d_in)
            e.append(signal.reshape(n, S.shape[1], -1))  # (n, m, d_out)
    return Taps(layers, x, e)


def layer_slices(L: Layer, where: dict[str, slice]) -> tuple[slice | None, slice | None]:
    """Where layer L's weight and bias live in the flat theta (None: not differentiated)."""
    prefix = f"{L.name}." if L.name else ""  # a bare nn.Linear model has parameters "weight", "bias"
    return (where[f"{prefix}weight"] if L.weight else None, where[f"{prefix}bias"] if L.bias else None)


def dense_parts(L: Layer, where: dict[str, slice]) -> list[tuple[slice, slice]]:
    """A dense (conv) layer's (slice of theta, columns of its block [weight | bias]) for the weight and the bias."""
    w, b = layer_slices(L, where)
    pw = L.module.weight.numel() if w is not None else 0
    return ([(w, slice(0, pw))] if w is not None else []) + ([(b, slice(pw, None))] if b is not None else [])


def outer_product_grads(prob: Problem, X: Tensor, y: Tensor) -> Tensor:
    """(n, p) per-sample loss gradients in ``prob.names`` order, as outer products e_i x_i^T per layer.

    One batched forward and one backward pass, then the outer products: the same numbers as
    ``func.per_sample_grads`` (vmap of grad), without vmap's per-example graph. Only for ``supported`` problems.
    """
    return factored_grads(prob, X, y, chunk_size=max(len(X), 1)).dense()


# Intermediate (rows, min(d_in, d_out), k) products of LayerGrads are built this many entries at a time
_WORK_ENTRIES = 1 << 24  # 64 MB of float32


@dataclass
class LayerGrads:
    """Per-sample loss gradients g_i held layer by layer: factors (x_i, e_i) for Linear layers, the dense block
    for conv layers (``Layer.dense``: x is None, e is (n, p_l) = [weight | bias]).

    A Linear layer's share of g_i is the outer product e_il x_il^T (weight) and e_il (bias): n * (d_in + d_out)
    numbers instead of n * d_in * d_out (1,042 instead of 101,770 per example for a 784-128-10 MLP). They cost
    ONE batched forward and backward pass -- the same work as a training step -- and every operation influence
    methods need reads them directly, layer by layer (one "block" per layer, DataInf's blocks):

        dots(V)          G V                         (n, k)   cost n * min(d_in, d_out) * (d_in + d_out) * k
        block_dots(V)    g_il^T v_l per layer        (n, L, k)
        sq_norms()       ||g_i||^2 = sum_l (||x_il||^2 + 1) ||e_il||^2           (n,)
        tmatmul_blocks   sum_i g_il c_il per layer   (p, k)
        dense()          G itself                    (n, p)   the only operation that writes n * p floats
    """

    layers: list[Layer]
    x: list[Tensor | None]  # per layer (n, d_in); None for a dense (conv) layer
    e: list[Tensor]  # per layer (n, d_out); (n, p_l) for a dense layer
    where: dict[str, slice]  # parameter name -> slice of the flat vector (Problem.slices())
    p: int

    @property
    def n(self) -> int:
        return len(self.e[0])

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.x, *self.e) if t is not None)

    def rows(self, r: slice) -> LayerGrads:
        return type(self)(self.layers, [None if x is None else x[r] for x in self.x], [e[r] for e in self.e],
                          self.where, self.p)

    def _steps(self, width: int) -> list[slice]:
        step = max(1, _WORK_ENTRIES // max(width, 1))
        return [slice(s, min(s + step, self.n)) for s in range(0, self.n, step)]

    def block_dots(self, V: Tensor) -> Tensor:
        """(n, L, k) per-layer inner products g_il^T v_l for V (p, k)."""
        k = V.shape[1]
        out = torch.zeros(self.n, len(self.layers), k, dtype=V.dtype, device=V.device)  # (n, L, k)
        for j, (L, x, e) in enumerate(zip(self.layers, self.x, self.e)):
            if L.dense:
                for theta_part, cols in dense_parts(L, self.where):
                    out[:, j] += e[:, cols] @ V[theta_part]  # (n, k)
                continue
            w, b = layer_slices(L, self.where)
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
            xx = 1.0 if L.dense else (x * x).sum(1) * float(L.weight) + float(L.bias)  # (n,)
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
            if L.dense:
                for theta_part, cols in dense_parts(L, self.where):
                    out[theta_part] = e[:, cols].T @ C[:, j]  # (p_part, k)
                continue
            w, b = layer_slices(L, self.where)
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
        """(n, p) the gradients themselves, written in place as outer products (dense blocks copied)."""
        G = torch.empty(self.n, self.p, dtype=self.e[0].dtype, device=self.e[0].device)  # (n, p)
        for L, x, e in zip(self.layers, self.x, self.e):
            if L.dense:
                for theta_part, cols in dense_parts(L, self.where):
                    G[:, theta_part] = e[:, cols]
                continue
            w, b = layer_slices(L, self.where)
            if w is not None:
                block = G[:, w].view(self.n, e.shape[1], x.shape[1])  # (n, d_out, d_in)
                torch.mul(e[:, :, None], x[:, None, :], out=block)  # the outer products, straight into G
            if b is not None:
                G[:, b] = e
        return G

    def as_taps(self) -> Taps:
        """The same factors as ``Taps`` with one scalar (the loss) per example, for ``Taps.gram``."""
        return Taps(self.layers, self.x, [e[:, None, :] for e in self.e])


class FactoredGrads(LayerGrads):
    """``LayerGrads`` of a network of Linear layers only: every block is rank one, e_il x_il^T, which the
    Kronecker quadratic forms read directly (curvature/kfac.py ``quad_factored``)."""


def factor_bytes_per_row(prob: Problem) -> int:
    """Bytes ``factored_grads`` holds per example (sum over layers of ``Layer.width``); supported problems only."""
    layers = _layers(prob)
    assert layers is not None
    return sum(L.width for L in layers) * prob.theta.element_size()


# Rows per chunk for networks with conv layers: their activations hold C H W numbers per example, and 512 rows keep
# SmallCNN's largest (16 x 28 x 28) at 26 MB, under the 32 MB above which glibc maps fresh pages for every
# allocation (measured in one ifkit.clean on 4,000 images: 4,096-row chunks 6.1M page faults and 11.5 s of system
# time, 1,024 rows 3.2M and 5.2 s, 512 rows 2.1M and 3.2 s; user time unchanged)
CONV_CHUNK = 512


def chunk_rows(prob: Problem, budget_mb: float, most: int = 4096) -> int:
    """Rows per chunk of ``factored_grads``: ``most`` (CONV_CHUNK at most with conv layers), fewer when a chunk
    would take over a quarter of budget_mb (wide conv layers hold C_out C_in kh kw numbers per example)."""
    layers = _layers(prob)
    assert layers is not None
    most = min(most, CONV_CHUNK) if any(L.dense for L in layers) else most
    return max(1, min(most, int(budget_mb * 2**20 / 4 // max(factor_bytes_per_row(prob), 1))))


def _runs(X: Tensor) -> tuple[Tensor, Tensor]:
    """Runs of identical consecutive rows of X: the run of each row (n,) (0, 0, 0, 1, 1, 2, ...) and the first
    row of each run (u,)."""
    new = torch.ones(len(X), dtype=torch.bool, device=X.device)  # (n,) a row that differs from the one before
    new[1:] = (X[1:] != X[:-1]).flatten(1).any(1)
    return new.cumsum(0) - 1, new.nonzero().squeeze(1)


def _loss_factors(prob: Problem, X: Tensor, y: Tensor) -> tuple[list[Layer], list, list]:
    """(layers, x, e) of the per-sample loss gradients of one chunk.

    Rows that repeat an input -- the candidate labels of one image, as ``ifkit.clean`` scores them -- share its
    forward pass: by the chain rule g_j = J_x^T dl(z_x, y_j)/dz, so when the u distinct inputs number at most
    n / K (K outputs each; two more for the runs the chunk's ends cut), one forward and K backward passes over
    the u inputs (``taps`` of the outputs) give every row, where n rows cost n forward passes and n unfoldings
    (the backward work is the same). Same numbers to round-off.
    """
    run, first = _runs(X)
    u = len(first)
    K = prob.forward(prob.theta, X[:1]).detach().numel()
    if (u - 2) * K > len(X):  # the usual case (runs cut by the chunk's two ends aside): one forward and backward
        t = taps(prob, X, lambda out: prob.loss(out, y).unsqueeze(1))
        return t.layers, t.x, [e[:, 0] for e in t.e]
    seen = {}

    def outputs(out: Tensor) -> Tensor:
        seen["z"] = out.detach()
        return out.reshape(u, -1)  # (u, K)

    t = taps(prob, X[first], outputs)  # e: (u, K, d_out) per Linear layer, (u, K, p_l) per conv layer
    with torch.enable_grad():
        z = seen["z"][run].requires_grad_(True)  # (n, *output shape): each row's outputs
        dl = torch.autograd.grad(prob.loss(z, y).sum(), z)[0].reshape(len(X), 1, K)  # (n, 1, K) dl/dz per row
    x, e = [], []
    for xl, el in zip(t.x, t.e):
        x.append(None if xl is None else xl[run])  # (n, d_in)
        rows = torch.empty(len(X), el.shape[2], dtype=el.dtype, device=el.device)  # (n, d_out or p_l)
        step = max(1, _WORK_ENTRIES // (K * el.shape[2]))
        for s in range(0, len(X), step):  # gathered J rows, bounded: (step, K, width) at a time
            rows[s : s + step] = torch.bmm(dl[s : s + step], el[run[s : s + step]])[:, 0]
        e.append(rows)
    return t.layers, x, e


def factored_grads(prob: Problem, X: Tensor, y: Tensor, chunk_size: int = 4096) -> LayerGrads:
    """Per-sample loss gradients of ``supported`` problems, layer by layer: one forward + backward per chunk
    (repeated inputs: ``_loss_factors``). ``FactoredGrads`` when every layer is Linear."""
    parts = [_loss_factors(prob, X[r], y[r]) for r in chunks(max(len(X), 1), chunk_size)]
    layers = parts[0][0]
    kind = LayerGrads if any(L.dense for L in layers) else FactoredGrads
    if len(parts) == 1:  # one chunk (the usual case: GradEngine asks for FACTOR_CHUNK rows): no copies
        return kind(layers, parts[0][1], parts[0][2], prob.slices(), prob.p)
    x = [None if parts[0][1][j] is None else torch.cat([t[1][j] for t in parts]) for j in range(len(layers))]
    e = [torch.cat([t[2][j] for t in parts]) for j in range(len(layers))]  # (n, d_out) per layer
    return kind(layers, x, e, prob.slices(), prob.p)


__all__ = ["CONV_CHUNK", "FactoredGrads", "Layer", "LayerGrads", "Taps", "chunk_rows", "factor_bytes_per_row", "factored_grads",
           "dense_parts", "layer_slices", "outer_product_grads", "supported", "taps"]
