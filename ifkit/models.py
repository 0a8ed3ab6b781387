"""Small models for the kit: logistic regression, a tanh MLP, a small CNN, and LoRA adapters for Linear layers.

All three are plain ``nn.Module``s built only from Linear / Conv2d / pooling and elementwise activations:
no BatchNorm (its batch statistics couple the examples of a batch, so per-sample gradients would not be
per-sample) and no Dropout (randomness inside ``vmap`` needs special care and would make influence scores
noisy). That keeps ``torch.func.vmap(grad(...))`` per-sample gradients exact, and keeps the loss a smooth
function of theta where the activation is smooth (tanh/softplus/gelu), which second-order influence
(Hessians, Newton steps) prefers.

Every model flattens what it needs itself, so the same tensors of images (n, 1, H, W) feed all of them.
Initialisation is PyTorch's default, so ``torch.manual_seed(s)`` before construction fixes the weights.
"""

from __future__ import annotations

import fnmatch
import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
    "sigmoid": nn.Sigmoid,
}


def _activation(name: str) -> nn.Module:
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}: choose one of {sorted(_ACTIVATIONS)}") from None


class LogisticRegression(nn.Module):
    """Multinomial logistic regression: logits = W x + b on the flattened input.

    With an L2 penalty the training objective is strictly convex, so leave-one-out retraining has a unique
    answer and the classic influence function of Koh & Liang (2017) is exact to first order: the kit's
    ground-truth oracle lives on this model.

    Args:
        in_features: number of input features after flattening (64 for 8x8 digits, 784 for 28x28 images).
        n_classes: number of classes.
        bias: whether to learn an intercept b.
    """

    def __init__(self, in_features: int, n_classes: int, bias: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, n_classes, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.flatten(1))  # (n, n_classes)


class MLP(nn.Module):
    """Fully connected network: flatten -> [Linear -> activation] * len(hidden) -> Linear.

    Args:
        in_features: number of input features after flattening.
        hidden: widths of the hidden layers; ``()`` gives logistic regression.
        n_classes: number of output logits.
        activation: "tanh" (default: smooth, so the Hessian is well defined everywhere), "relu", "gelu",
            "softplus" or "sigmoid".

    Parameter names are ``net.0.weight, net.0.bias, net.2.weight, ...``; the last layer is ``net.{2k}``
    where k = len(hidden), also reachable as ``model.head``.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = (64,),
        n_classes: int = 10,
        activation: str = "tanh",
    ) -> None:
        super().__init__()
        widths = [in_features, *hidden]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(widths):
            layers += [nn.Linear(a, b), _activation(activation)]
        layers.append(nn.Linear(widths[-1], n_classes))
        self.net = nn.Sequential(*layers)

    @property
    def head(self) -> nn.Linear:
        """The output layer (its parameters are the usual ``params=`` choice for last-layer influence)."""
        return self.net[-1]  # type: ignore[return-value]

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1))  # (n, n_classes)


class SmallCNN(nn.Module):
    """Two conv blocks and a linear head, for (n, C, H, W) images.

        conv3x3(C -> w) -> act -> maxpool2 -> conv3x3(w -> 2w) -> act -> maxpool2 -> flatten -> Linear

    With the defaults (1 channel, width 16, 28x28 images) that is 160 + 4,640 + 15,690 = 20,490 parameters.
    Max-pooling is piecewise linear, like ReLU; per-sample gradients through it are exact under ``vmap``.

    Args:
        in_channels: image channels.
        n_classes: number of output logits.
        width: channels of the first conv layer (the second has twice as many).
        image_size: side of the (square) input images; fixes the size of the linear head.
        activation: as for ``MLP`` (default "relu", the usual choice for CNNs).
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 10,
        width: int = 16,
        image_size: int = 28,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if image_size < 4:
            raise ValueError(f"image_size={image_size} is too small: two 2x2 poolings need at least 4 pixels")
        self.image_size = image_size
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            _activation(activation),
            nn.MaxPool2d(2),  # H -> H // 2
            nn.Conv2d(width, 2 * width, 3, padding=1),
            _activation(activation),
            nn.MaxPool2d(2),  # H // 2 -> H // 4
        )
        side = image_size // 2 // 2
        self.head = nn.Linear(2 * width * side * side, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 3:  # (n, H, W) grey images: add the channel axis
            x = x.unsqueeze(1)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise ValueError(
                f"SmallCNN was built for {self.image_size}x{self.image_size} images but got "
                f"{tuple(x.shape[-2:])}: pass image_size={x.shape[-1]} when building it"
            )
        return self.head(self.features(x).flatten(1))  # (n, n_classes)


class LoRALinear(nn.Module):
    """A frozen Linear layer plus a trainable low-rank update (Hu et al., 2021, "LoRA").

        y = base(x) + (alpha / rank) * x A^T B^T          A: (rank, in_features), B: (out_features, rank)

    B starts at zero, so wrapping does not change the model's outputs; A starts like a Linear weight (uniform
    with fan-in scaling). Only ``lora_A`` and ``lora_B`` are trainable: influence over ``params=lora_names(model)``
    (or the default, all trainable parameters) is influence over the adapters, as in DataInf and the paper's
    generation experiments. The cost is rank * (in + out) parameters instead of in * out.

    Note: with B = 0 the gradient with respect to A is zero, so compute influence after fine-tuning the adapters.

    Args:
        base: the Linear layer to adapt (kept as ``self.base``, its parameters frozen).
        rank: the rank r of the update.
        alpha: scale numerator (default: ``rank``, i.e. a scale of 1).
    """

    def __init__(self, base: nn.Linear, rank: int = 4, alpha: float | None = None) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.rank = rank
        self.scale = (alpha if alpha is not None else rank) / rank
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initialises its weight

    def forward(self, x: Tensor) -> Tensor:
        update = (x @ self.lora_A.T) @ self.lora_B.T  # (..., rank) -> (..., out_features)
        return self.base(x) + self.scale * update

    def merged_weight(self) -> Tensor:
        """W + scale * B A: the plain Linear weight with the adapter folded in."""
        return self.base.weight + self.scale * self.lora_B @ self.lora_A  # (out, in)


def add_lora(model: nn.Module, targets: Sequence[str] = ("*",), rank: int = 4, alpha: float | None = None) -> list[str]:
    """Wrap the Linear layers of ``model`` whose module names match ``targets`` with ``LoRALinear``, in place.

    Every other parameter of the model is frozen (``requires_grad=False``), so training and influence see only
    the adapters.

    Args:
        model: the module to adapt (modified in place; ``copy.deepcopy`` it first to keep the original).
        targets: shell-style patterns over module names (``named_modules``), e.g. ``("blocks.*.attn.*",)``.
        rank, alpha: as for ``LoRALinear``.

    Returns:
        The names of the adapter parameters (pass them as ``params=`` to ``ifkit.score``/``pairwise``).

    Raises:
        ValueError: if no Linear layer matches ``targets`` (the message lists the Linear layers there are).
    """
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear) and name]
    chosen = [(name, m) for name, m in linears if any(fnmatch.fnmatch(name, pat) for pat in targets)]
    if not chosen:
        raise ValueError(f"no Linear layer matches targets={list(targets)}; the Linear layers are "
                         f"{[n for n, _ in linears]}")
    for p in model.parameters():
        p.requires_grad_(False)
    for name, layer in chosen:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, LoRALinear(layer, rank=rank, alpha=alpha))
    return lora_names(model)


def lora_names(model: nn.Module) -> list[str]:
    """Names of the LoRA adapter parameters of ``model`` (``...lora_A``, ``...lora_B``), in model order."""
    return [n for n, _ in model.named_parameters() if n.endswith((".lora_A", ".lora_B"))]


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters (only those with ``requires_grad`` when ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


__all__ = ["MLP", "LoRALinear", "LogisticRegression", "SmallCNN", "add_lora", "count_params", "lora_names"]
