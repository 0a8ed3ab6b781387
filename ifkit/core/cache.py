"""Training gradients kept across ``ifkit.score`` / ``ifkit.pairwise`` calls, keyed by model, parameters and data.

Most influence methods start from the same per-sample training gradients g_i at the same theta: graddot, gradcos,
TracIn's last checkpoint, the final pass of CG / LiSSA / EK-FAC, DataInf's three passes, self-influence. Scoring
one model with several methods -- what every comparison, notebook and experiment does -- recomputes them each
time. A ``GradCache`` passed as ``cache_grads=`` computes them once::

    cache = ifkit.GradCache(budget_mb=2048)
    for method in ("graddot", "gradcos", "if-cg", "datainf"):
        scores[method] = ifkit.score(method, model, train, val, cache_grads=cache)
    cache.stats  # {'hits': 3, 'misses': 1, 'entries': 1, 'mb': 133.4, ...}

What is kept:

* networks of Linear layers (``factors.supported``): the per-layer factors (x_i, e_i) of every g_i
  (``factors.FactoredGrads``) -- n * sum_l (d_in + d_out) floats, 1% of G for a 784-128-10 MLP, so 32k
  examples take 134 MB and every operation reads the factors directly;
* any other model: the dense (n, p) matrix G (``DenseGrads``), when it fits the budget; otherwise nothing is
  kept (``stats['skipped']`` counts it) and the methods stream gradients as without a cache.

The key is (model object, its class and repr, parameter names, a digest of theta and of every frozen parameter
and buffer, the loss, the digest of X and y): changing a weight in place, loading a checkpoint, fine-tuning or
passing other data is a miss, never a stale hit. Digests are BLAKE2b over the tensors' bytes (~0.1 s for 100 MB
of data), remembered per live tensor object and its autograd version counter so a repeated call does not
rehash unchanged data. Entries beyond ``budget_mb`` are evicted least recently used first.
"""

from __future__ import annotations

import hashlib
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from . import factors
from .func import Problem, iter_grads


class GradSet(Protocol):
    """What the methods need from per-sample gradients g_i (rows) split in blocks (one per module)."""

    n: int
    nbytes: int

    def rows(self, r: slice) -> GradSet: ...
    def dots(self, V: Tensor) -> Tensor: ...  # (n,) / (n, k)
    def block_dots(self, V: Tensor) -> Tensor: ...  # (n, L, k)
    def sq_norms(self) -> Tensor: ...  # (n,)
    def block_sq_norms(self) -> Tensor: ...  # (n, L)
    def tmatmul_blocks(self, C: Tensor) -> Tensor: ...  # (p, k)
    def dense(self) -> Tensor: ...  # (n, p)


def module_blocks(prob: Problem) -> list[slice]:
    """Parameter blocks = modules (a Linear's weight and bias together), as DataInf treats layers."""
    groups: dict[str, list[slice]] = {}
    for name, s in prob.slices().items():
        groups.setdefault(name.rsplit(".", 1)[0] if "." in name else "", []).append(s)
    return [slice(g[0].start, g[-1].stop) for g in groups.values()]  # contiguous: names are in module order


@dataclass
class DenseGrads:
    """Per-sample gradients as a dense (n, p) matrix, with the GradSet operations (blocks = modules)."""

    G: Tensor  # (n, p)
    blocks: list[slice]

    @property
    def n(self) -> int:
        return len(self.G)

    @property
    def nbytes(self) -> int:
        return self.G.numel() * self.G.element_size()

    def rows(self, r: slice) -> DenseGrads:
        return DenseGrads(self.G[r], self.blocks)

    def dots(self, V: Tensor) -> Tensor:
        return self.G @ V

    def block_dots(self, V: Tensor) -> Tensor:
        return torch.stack([self.G[:, b] @ V[b] for b in self.blocks], dim=1)  # (n, L, k)

    def sq_norms(self) -> Tensor:
        return (self.G * self.G).sum(1)

    def block_sq_norms(self) -> Tensor:
        return torch.stack([(self.G[:, b] ** 2).sum(1) for b in self.blocks], dim=1)  # (n, L)

    def tmatmul_blocks(self, C: Tensor) -> Tensor:
        out = torch.empty(self.G.shape[1], C.shape[2], dtype=C.dtype, device=C.device)  # (p, k)
        for j, b in enumerate(self.blocks):
            out[b] = self.G[:, b].T @ C[:, j]
        return out

    def dense(self) -> Tensor:
        return self.G


def compute(prob: Problem, X: Tensor, y: Tensor, chunk_size: int) -> GradSet:
    """Every per-sample gradient of (X, y) at ``prob``: factors for Linear-layer networks, else dense G."""
    if factors.supported(prob, X):
        return factors.factored_grads(prob, X, y)
    return DenseGrads(torch.cat([G for _, G in iter_grads(prob, X, y, chunk_size)]), module_blocks(prob))


def estimated_bytes(prob: Problem, X: Tensor) -> int:
    """What ``compute`` would hold for (X, y), known before computing it."""
    if factors.supported(prob, X):
        return len(X) * factors.factor_bytes_per_row(prob)
    return len(X) * prob.p * prob.theta.element_size()


# ----------------------------------------------------------------------------------------------------------------
# Keys
# ----------------------------------------------------------------------------------------------------------------

_DIGESTS: dict[int, tuple[weakref.ref, int, str]] = {}  # id(tensor) -> (ref, version, digest)


def digest(t: Tensor) -> str:
    """BLAKE2b of the tensor's dtype, shape and bytes; remembered while the same tensor is alive and unmodified
    (its autograd version counter bumps on every in-place write)."""
    hit = _DIGESTS.get(id(t))
    if hit is not None and hit[0]() is t and hit[1] == t._version:
        return hit[2]
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    out = h.hexdigest()
    i = id(t)
    try:
        _DIGESTS[i] = (weakref.ref(t, lambda _: _DIGESTS.pop(i, None)), t._version, out)
    except TypeError:  # tensors that cannot be weakly referenced are simply rehashed next time
        pass
    return out


def key(prob: Problem, X: Tensor, y: Tensor) -> tuple:
    """Everything the per-sample gradients depend on (module docstring)."""
    model = prob.model
    frozen = tuple((k, digest(v)) for k, v in sorted(prob.frozen.items()))
    return (id(model), type(model).__qualname__, repr(model), tuple(prob.names), digest(prob.theta), frozen,
            prob.loss, model.training, digest(X), digest(y))


# ----------------------------------------------------------------------------------------------------------------
# The cache
# ----------------------------------------------------------------------------------------------------------------


class GradCache:
    """Per-sample training gradients shared by every call that is given this cache (``cache_grads=cache``).

    Args:
        budget_mb: the most memory the cache may hold; least recently used entries are evicted beyond it, and
            a set larger than the whole budget is not kept (the call streams its gradients instead).
    """

    def __init__(self, budget_mb: float = 2048.0) -> None:
        if not budget_mb > 0:
            raise ValueError(f"budget_mb must be positive, got {budget_mb!r}")
        self.budget_mb = float(budget_mb)
        self._entries: OrderedDict[tuple, GradSet] = OrderedDict()
        self._models: dict[int, weakref.ref] = {}
        self.hits = self.misses = self.skipped = 0

    def get(self, prob: Problem, X: Tensor, y: Tensor, chunk_size: int) -> GradSet | None:
        """The gradients of (X, y) at ``prob``, computed on the first request; None when they cannot fit."""
        self._drop_dead_models()
        k = key(prob, X, y)
        if k in self._entries:
            self.hits += 1
            self._entries.move_to_end(k)
            return self._entries[k]
        need = estimated_bytes(prob, X)
        if need > self.budget_mb * 2**20:
            self.skipped += 1
            return None
        self.misses += 1
        while self._entries and self.nbytes + need > self.budget_mb * 2**20:
            self._entries.popitem(last=False)  # least recently used
        gs = compute(prob, X, y, chunk_size)
        self._entries[k] = gs
        self._models[id(prob.model)] = weakref.ref(prob.model)
        return gs

    def _drop_dead_models(self) -> None:
        """Entries of garbage-collected models can never hit again (and their id may be reused): drop them."""
        dead = {i for i, r in self._models.items() if r() is None}
        if dead:
            for k in [k for k in self._entries if k[0] in dead]:
                del self._entries[k]
            for i in dead:
                del self._models[i]

    @property
    def nbytes(self) -> int:
        return sum(gs.nbytes for gs in self._entries.values())

    @property
    def stats(self) -> dict[str, Any]:
        return dict(hits=self.hits, misses=self.misses, skipped=self.skipped, entries=len(self._entries),
                    mb=round(self.nbytes / 2**20, 1), budget_mb=self.budget_mb)

    def clear(self) -> None:
        self._entries.clear()
        self._models.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        s = self.stats
        return (f"GradCache({s['entries']} entries, {s['mb']} MB of {s['budget_mb']:.0f}; "
                f"{s['hits']} hits, {s['misses']} misses, {s['skipped']} too big)")


__all__ = ["DenseGrads", "GradCache", "GradSet", "compute", "digest", "estimated_bytes", "key", "module_blocks"]
