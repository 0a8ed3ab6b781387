"""Output Jacobians of Linear / Conv1d / Conv2d networks from their per-layer factors: J V, J^T U, Gauss-Newton products.

``factors.taps(prob, X, outputs)`` holds, for every example i and output a, the factors of grad f_ia (x_il and
e_ial per Linear layer, the dense rows per conv layer). Products with the stacked Jacobian J (n K, p) then need
no further pass through the network:

    J V     (n, K, k)   per Linear layer e_ia^T V_l x_i: contract x first, (n, d_in) x (d_in, d_out k)
    J^T U   (p, k)      per Linear layer sum_i (sum_a e_ia U_iak) x_i^T

and the Gauss-Newton product G v = 1/n J^T H_out J v (H_out: each example's loss Hessian in output space) is
two of them around a batch of K x K products.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .factors import Taps, dense_parts, factor_bytes_per_row, layer_slices, supported, taps
from .func import Problem

# ggn_vp holds the factors of n K output Jacobians; above this, products go through the network each time
GGN_VP_MAX_MB = 256.0


def jacobian_vp(t: Taps, where: dict[str, slice], V: Tensor) -> Tensor:
    """(n, m, k) J V: the directional derivatives of every example's m scalars along the columns of V (p, k)."""
    n, m, k = len(t.e[0]), t.e[0].shape[1], V.shape[1]
    out = torch.zeros(n, m, k, dtype=V.dtype, device=V.device)  # (n, m, k)
    for L, x, e in zip(t.layers, t.x, t.e):
        if L.dense:
            for part, cols in dense_parts(L, where):
                out += (e[:, :, cols].flatten(0, 1) @ V[part]).view(n, m, k)
            continue
        w, b = layer_slices(L, where)
        d_out, d_in = e.shape[2], x.shape[1]
        if w is not None:
            xV = (x @ V[w].view(d_out, d_in, k).permute(1, 0, 2).reshape(d_in, d_out * k)).view(n, d_out, k)
            out += torch.einsum("nad,ndk->nak", e, xV)  # e_ia^T V_w x_i
        if b is not None:
            out += torch.einsum("nad,dk->nak", e, V[b])
    return out


def jacobian_tvp(t: Taps, where: dict[str, slice], U: Tensor, p: int) -> Tensor:
    """(p, k) J^T U = sum_ia grad f_ia U[i, a, :] for U (n, m, k)."""
    k = U.shape[2]
    out = torch.zeros(p, k, dtype=U.dtype, device=U.device)  # (p, k)
    for L, x, e in zip(t.layers, t.x, t.e):
        if L.dense:
            for part, cols in dense_parts(L, where):
                out[part] = e[:, :, cols].flatten(0, 1).T @ U.flatten(0, 1)  # (p_part, k)
            continue
        w, b = layer_slices(L, where)
        eU = torch.einsum("nad,nak->ndk", e, U)  # (n, d_out, k): sum_a e_ia U_iak
        if w is not None:
            out[w] = torch.einsum("ndk,ni->dik", eU, x).reshape(-1, k)  # (d_out d_in, k), row-major weight
        if b is not None:
            out[b] = eU.sum(0)
    return out


def ggn_vp_fits(prob: Problem, X: Tensor, budget_mb: float = GGN_VP_MAX_MB) -> bool:
    """Whether ``ggn_vp`` applies to (prob, X): a ``supported`` network whose n K Jacobian factors fit budget_mb."""
    if not supported(prob, X):
        return False
    K = prob.forward(prob.theta, X[:1]).numel()
    return len(X) * K * factor_bytes_per_row(prob) <= budget_mb * 2**20


def ggn_vp(prob: Problem, X: Tensor, y: Tensor) -> Callable[[Tensor], Tensor]:
    """v -> G v for the Gauss-Newton matrix G = 1/n sum_i J_i^T H_out,i J_i of the mean loss over (X, y), from
    the per-layer factors of the output Jacobians J_i (``taps`` of the outputs, K per example).

    The same operator as ``func.ggn_vp_fn`` (tests/test_conv_grads.py), built with one forward and K backward
    passes; each product is then matrix products only, O(n K sum_l width_l) -- where ``ggn_vp_fn`` runs the
    network forward-mode and backward for every product (slow through conv layers on CPU: a power iteration of
    25 products on 300 Fashion-MNIST images took 4 s that way, under 1 s this way). Holds n K sum_l width_l
    numbers: meant for a small set such as S_val. v: (p,) or (p, k); ``supported`` problems only.
    """
    t = taps(prob, X, lambda out: out.reshape(len(X), -1))  # (n, K) outputs per example
    z = prob.forward(prob.theta, X).detach().reshape(len(X), -1)  # (n, K)
    Hout = torch.func.vmap(torch.func.hessian(
        lambda o, t_: prob.loss(o.unsqueeze(0), t_.unsqueeze(0)).squeeze(0)))(z, y)  # (n, K, K)
    where, n = prob.slices(), len(X)

    def mv(v: Tensor) -> Tensor:
        V = v if v.dim() == 2 else v[:, None]  # (p, k)
        HJv = torch.einsum("nab,nbk->nak", Hout, jacobian_vp(t, where, V))  # (n, K, k)
        out = jacobian_tvp(t, where, HJv, prob.p) / n  # (p, k)
        return out if v.dim() == 2 else out[:, 0]

    return mv


__all__ = ["GGN_VP_MAX_MB", "ggn_vp", "ggn_vp_fits", "jacobian_tvp", "jacobian_vp"]
