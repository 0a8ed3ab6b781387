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


class ConditionalVAE(nn.Module):
    """A tiny conditional VAE for (n, 1, H, W) images in [0, 1], from Linear layers only (so LoRA applies).

        encoder  q(z | x, c):  [x | c] -> Linear -> act -> Linear -> [mu | logvar]       (n, 2 * latent)
        decoder  p(x | z, c):  [z | c] -> Linear -> act -> Linear -> pixel logits      (n, H * W)
        z = mu + exp(logvar / 2) * eps,   eps ~ N(0, I)
        c = [onehot(class) | onehot(style)]     (the style part only when n_styles > 0)

    The condition c plays the part of a text-to-image model's prompt: "a <class>" or, with style tokens,
    "a <class> in style <s>" (style 0 can stand for "plain", the pretraining images). The noise eps is an INPUT:
    ``forward`` takes packed rows X = [x | c | eps] (``pack``) and returns [pixel logits | mu | logvar], so with
    eps fixed per example the per-sample negative ELBO (``ConditionalVAE.negative_elbo(outputs, x.flatten(1))``)
    is a deterministic function of the parameters -- what per-sample gradients and influence need. Pass it as
    ``loss=`` to ``ifkit.score``/``ifkit.pairwise``.

    Parameter names: ``enc.0``, ``enc.2``, ``dec.0``, ``dec.2`` (all Linear; ``add_lora`` wraps every one).

    Args:
        image_size: side of the square grey images (8 for digits, 16 for downsampled Fashion-MNIST).
        n_classes: number of class labels.
        latent: dimension of z.
        hidden: width of the hidden layer of encoder and decoder.
        activation: as for ``MLP`` (default "tanh": smooth, so second-order influence is well defined).
        n_styles: number of style tokens in the condition (0: class only).
    """

    def __init__(self, image_size: int = 16, n_classes: int = 10, latent: int = 8, hidden: int = 128,
                 activation: str = "tanh", n_styles: int = 0) -> None:
        super().__init__()
        self.image_size, self.n_classes, self.n_styles, self.latent = image_size, n_classes, n_styles, latent
        self.n_pixels = image_size * image_size
        n_cond = n_classes + n_styles
        self.enc = nn.Sequential(nn.Linear(self.n_pixels + n_cond, hidden), _activation(activation),
                                 nn.Linear(hidden, 2 * latent))
        self.dec = nn.Sequential(nn.Linear(latent + n_cond, hidden), _activation(activation),
                                 nn.Linear(hidden, self.n_pixels))

    def condition(self, labels: Tensor, styles: Tensor | None = None) -> Tensor:
        """The condition c = [onehot(class) | onehot(style)], (n, n_classes + n_styles); styles default to 0."""
        c = nn.functional.one_hot(labels.long(), self.n_classes)
        if self.n_styles:
            styles = torch.zeros_like(labels) if styles is None else styles
            c = torch.cat([c, nn.functional.one_hot(styles.long(), self.n_styles)], dim=1)
        return c.float()

    def pack(self, images: Tensor, labels: Tensor, eps: Tensor | None = None, styles: Tensor | None = None) -> Tensor:
        """Rows [x | c | eps] of shape (n, H*W + n_cond + latent); eps = 0 (the posterior mean) when None."""
        x = images.reshape(len(images), -1)  # (n, H*W)
        if x.shape[1] != self.n_pixels:
            raise ValueError(f"ConditionalVAE was built for {self.image_size}x{self.image_size} images but got "
                             f"{tuple(images.shape[1:])}: pass image_size= when building it")
        c = self.condition(labels, styles).to(x)
        eps = torch.zeros(len(x), self.latent, dtype=x.dtype, device=x.device) if eps is None else eps
        return torch.cat([x, c, eps.to(x)], dim=1)

    def forward(self, X: Tensor) -> Tensor:
        D, C = self.n_pixels, self.n_classes + self.n_styles
        x, c, eps = X[:, :D], X[:, D : D + C], X[:, D + C :]
        mu, logvar = self.enc(torch.cat([x, c], dim=1)).chunk(2, dim=1)  # (n, latent) each
        z = mu + torch.exp(0.5 * logvar) * eps  # reparameterisation with the given noise
        logits = self.dec(torch.cat([z, c], dim=1))  # (n, H*W)
        return torch.cat([logits, mu, logvar], dim=1)  # (n, H*W + 2 latent)

    @staticmethod
    def negative_elbo(outputs: Tensor, targets: Tensor) -> Tensor:
        """(n,) negative ELBO per pixel: [Bernoulli cross-entropy of the pixels + KL(q(z|x,c) || N(0, I))] / (H*W).

        Args:
            outputs: (n, H*W + 2 latent) from ``forward``.
            targets: (n, H*W) the images, flattened, in [0, 1].
        """
        D = targets.shape[1]
        logits, mu, logvar = outputs[:, :D], *outputs[:, D:].chunk(2, dim=1)
        recon = nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(1)  # (n,)
        kl = 0.5 * (mu**2 + logvar.exp() - logvar - 1).sum(1)  # (n,)
        return (recon + kl) / D

    def decode(self, z: Tensor, labels: Tensor, styles: Tensor | None = None) -> Tensor:
        """Images (n, 1, H, W): pixel probabilities of p(x | z, c)."""
        logits = self.dec(torch.cat([z, self.condition(labels, styles).to(z)], dim=1))
        return torch.sigmoid(logits).view(len(z), 1, self.image_size, self.image_size)

    @torch.no_grad()
    def sample(self, labels: Tensor, styles: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Generate one image per condition: z ~ N(0, I), then the decoder's pixel probabilities (n, 1, H, W)."""
        p = next(self.parameters())
        z = torch.randn(len(labels), self.latent, generator=generator).to(p)
        return self.decode(z, labels.to(p.device), None if styles is None else styles.to(p.device))

    @torch.no_grad()
    def reconstruct(self, images: Tensor, labels: Tensor, styles: Tensor | None = None) -> Tensor:
        """Decode the posterior mean of each image: (n, 1, H, W)."""
        mu = self(self.pack(images, labels, styles=styles))[:, self.n_pixels : self.n_pixels + self.latent]
        return self.decode(mu, labels, styles)


class TinyLM(nn.Module):
    """A tiny decoder-only transformer language model (GPT-style, pre-LayerNorm), for the generation tasks.

        tokens (n, T) -> embed + position -> [LN -> causal attention -> + ; LN -> MLP -> +] * n_layers
                      -> LN -> head -> logits (n, T, vocab_size)

    Built only from Embedding, Linear and LayerNorm (per token, so per-sample gradients under ``vmap`` stay
    exact), with no dropout. Attention is written out (scores, causal mask, softmax) rather than calling a fused
    kernel, so ``torch.func`` transforms (vmap, jvp, grad) go through it. Each attention layer has four separate
    Linear maps ``blocks.{i}.attn.{q,k,v,o}`` and each MLP ``blocks.{i}.mlp.{fc1,fc2}``: ``add_lora`` targets
    them by name, e.g. ``add_lora(model, ("blocks.*.attn.q", "blocks.*.attn.v"), rank=2)``.

    With vocabulary 200 and the other defaults (d_model 64, 2 layers, d_ff 256, 32 positions) that is about 146k
    parameters. Initialisation is PyTorch's default, so ``torch.manual_seed(s)`` before construction fixes it.

    Args:
        vocab_size: number of token ids.
        d_model: width of the residual stream.
        n_layers: number of transformer blocks.
        n_heads: attention heads (must divide d_model).
        d_ff: hidden width of the MLPs.
        max_len: the longest sequence (learned position embeddings).
    """

    def __init__(self, vocab_size: int, d_model: int = 64, n_layers: int = 2, n_heads: int = 4, d_ff: int = 256,
                 max_len: int = 32) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"n_heads={n_heads} must divide d_model={d_model}")
        self.max_len = max_len
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        self.blocks = nn.ModuleList(_Block(d_model, n_heads, d_ff) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, x: Tensor) -> Tensor:
        T = x.shape[-1]
        if T > self.max_len:
            raise ValueError(f"sequence of {T} tokens is longer than max_len={self.max_len}: build TinyLM with a "
                             "larger max_len")
        h = self.tok(x) + self.pos(torch.arange(T, device=x.device))  # (n, T, d)
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln_f(h))  # (n, T, vocab)

    @torch.no_grad()
    def generate(self, prompt: Tensor, steps: int) -> Tensor:
        """Greedy decoding: append ``steps`` argmax tokens to each prompt (n, P); returns (n, P + steps)."""
        out = prompt
        for _ in range(steps):
            nxt = self(out[:, -self.max_len:])[:, -1].argmax(-1, keepdim=True)  # (n, 1)
            out = torch.cat([out, nxt], 1)
        return out


class _Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.q, self.k, self.v, self.o = (nn.Linear(d_model, d_model) for _ in range(4))

    def forward(self, h: Tensor) -> Tensor:
        *lead, T, d = h.shape
        dh = d // self.n_heads
        split = lambda t: t.reshape(*lead, T, self.n_heads, dh).transpose(-3, -2)  # noqa: E731  (..., H, T, dh)
        q, k, v = split(self.q(h)), split(self.k(h)), split(self.v(h))
        scores = q @ k.transpose(-1, -2) / math.sqrt(dh)  # (..., H, T, T)
        causal = torch.ones(T, T, dtype=torch.bool, device=h.device).tril()
        att = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        return self.o((att @ v).transpose(-3, -2).reshape(*lead, T, d))  # (..., T, d)


class _MLP(nn.Module):
    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ff)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(d_ff, d_model)

    def forward(self, h: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(h)))


class _Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_ff: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = _Attention(d_model, n_heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = _MLP(d_model, d_ff)

    def forward(self, h: Tensor) -> Tensor:
        h = h + self.attn(self.ln1(h))
        return h + self.mlp(self.ln2(h))


__all__ = ["MLP", "ConditionalVAE", "LoRALinear", "LogisticRegression", "SmallCNN", "TinyLM", "add_lora",
           "count_params", "lora_names"]
