"""Small models for the kit: logistic regression, a tanh MLP and a small CNN.

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

import itertools
from collections.abc import Sequence

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


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters (only those with ``requires_grad`` when ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


__all__ = ["MLP", "LogisticRegression", "SmallCNN", "count_params"]
