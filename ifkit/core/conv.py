"""Per-sample gradients of ``nn.Conv1d`` / ``nn.Conv2d`` layers by unfolding: one batched backward, no
per-example graph.

A convolution applies the same weight at every output position t. Unfold the input into its patches
(``torch.nn.functional.unfold``: x_it, one column of C_in kh kw numbers per position) and the layer is a Linear
layer shared over positions, y_it = W x_it + b. So the gradient of any scalar f of one example is a SUM of outer
products (Grosse & Martens 2016, the fact K-FAC for convolutions rests on):

    dW_i = sum_t e_it x_it^T      (C_out, C_in kh kw)        db_i = sum_t e_it      (C_out,)

with e_it = df/dy_it, the signal backpropagated to the layer's output, which ONE batched backward of the column
sum gives for every example (examples do not interact). Unlike a Linear layer the sum does not stay rank one,
so a conv layer's per-sample gradient is held densely: C_out (C_in kh kw + 1) numbers per example, few for
the small kernels of a CNN (4,640 for a 16 -> 32 channel 3x3 layer). Cost: one batched matrix product
(n, C_out, T) x (n, T, C_in kh kw), T output positions -- about the cost of the layer's own backward pass.

On Fashion-MNIST's 28x28 images (a 2-conv CNN, 4,000 examples) this replaces ``torch.func.vmap(grad(...))``,
whose batched per-example graph ran every convolution once per example (core/factors.py uses it). A Conv1d
layer is unfolded as a Conv2d over (length, 1) images: kernel (k, 1), padding (p, 0), the same patches.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

# The unfolded patches (rows, C_in kh kw, T) are built this many entries at a time
_WORK_ENTRIES = 1 << 24  # 64 MB of float32


def conv_supported(module: nn.Module) -> bool:
    """True for an ``nn.Conv1d`` / ``nn.Conv2d`` whose per-sample gradients unfolding gives exactly: one group,
    zero padding given as numbers (not "same"/"valid" strings, not reflect/replicate/circular padding)."""
    return (type(module) in (nn.Conv1d, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros"
            and not isinstance(module.padding, str))


def unfold(module: nn.Conv1d | nn.Conv2d, x: Tensor) -> Tensor:
    """(n, C_in k, T) the input patches of a conv layer, ordered (C_in, kernel) as its weight is."""
    if type(module) is nn.Conv1d:  # (n, C_in, L) as (n, C_in, L, 1) images
        return F.unfold(x.unsqueeze(-1), (module.kernel_size[0], 1), dilation=(module.dilation[0], 1),
                        padding=(module.padding[0], 0), stride=(module.stride[0], 1))
    return F.unfold(x, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride)


def conv_params(module: nn.Conv1d | nn.Conv2d, weight: bool, bias: bool) -> int:
    """Numbers per example in a conv layer's dense per-sample block [weight | bias]."""
    return module.weight.numel() * int(weight) + module.out_channels * int(bias)


def conv_rows(module: nn.Conv1d | nn.Conv2d, x: Tensor, e: Tensor, weight: bool, bias: bool) -> Tensor:
    """Per-sample gradient blocks of a conv layer for m scalars per example.

    Args:
        module: the layer (its kernel size, stride, padding and dilation).
        x: (n, C_in, H, W) the layer's inputs ((n, C_in, L) for a Conv1d).
        e: (n, m, C_out, H', W') ((n, m, C_out, L') for a Conv1d) the backpropagated signals: gradients of each example's m scalars with respect
            to the layer's outputs.
        weight, bias: which of the two are differentiated.

    Returns:
        (n, m, p_l) rows [dW flattened as ``module.weight`` is (row-major) | db], p_l = ``conv_params``.
    """
    n, m, c_out = e.shape[:3]
    e = e.reshape(n, m * c_out, -1)  # (n, m C_out, T)
    parts = []
    if weight:
        patch = module.weight[0].numel()  # C_in kh kw
        dW = torch.empty(n, m * c_out, patch, dtype=e.dtype, device=e.device)  # (n, m C_out, C_in kh kw)
        step = max(1, _WORK_ENTRIES // max(patch * e.shape[2], 1))
        for s in range(0, n, step):
            cols = unfold(module, x[s : s + step])  # (rows, C_in kh kw, T): ordered (C_in, kh, kw) as W is
            torch.bmm(e[s : s + step], cols.transpose(1, 2), out=dW[s : s + step])  # sum_t e_it x_it^T
        parts.append(dW.view(n, m, -1))  # (n, m, C_out C_in kh kw)
    if bias:
        parts.append(e.sum(2).view(n, m, c_out))  # (n, m, C_out): sum_t e_it
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)


__all__ = ["conv_params", "conv_rows", "conv_supported", "unfold"]
