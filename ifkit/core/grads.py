"""The gradient engine every method runs on: per-sample training gradients streamed, cached or sharded.

A method needs the problem at theta (``Problem``), the training set, the other side of the comparison (the
validation set for ``score``, the queries for ``pairwise``) and three operations over the per-sample training
gradients G (n, p), none of which has to form G:

* ``dots(V)``        G @ V                       -- every linear score (graddot, TracIn, CG, LiSSA, DataInf, EK-FAC)
* ``apply(fn)``      fn(G_chunk), concatenated   -- scores that need the rows themselves (self-influence, VM/FVM)
* ``sets()``         chunks as ``GradSet``       -- per-layer views (DataInf's block norms, factored quadratic forms)

Where the gradients come from is decided here, once, for all methods: a ``GradCache`` when given
(core/cache.py), per-layer factors for networks of Linear and Conv2d layers (core/factors.py, core/conv.py),
forward-mode JVPs or vmapped per-sample gradients otherwise (core/func.py); under torch.distributed each rank works on its shard of
the points scored (core/distributed.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from . import distributed, factors
from .cache import DenseGrads, GradCache, GradSet, module_blocks
from .func import DEFAULT_CHUNK_SIZE, Problem, chunks, grad_dots, iter_grads, make_problem
from .options import Options

# Rows per chunk of per-layer factors: they are small (n * sum(d_in + d_out)), so chunks can be large
FACTOR_CHUNK = 4096


def grad_chunk_rows(p: int, dtype: torch.dtype, budget_mb: float) -> int:
    """Rows per streamed chunk of per-sample gradients: DEFAULT_CHUNK_SIZE (256; larger chunks measured no
    faster on CPU), fewer when a (rows, p) block would exceed budget_mb / 4 -- so a 10M-parameter model streams
    6 rows at a time within the default 1 GB instead of allocating 10 GB."""
    per_row = p * torch.finfo(dtype).bits // 8 if dtype.is_floating_point else p * 4
    return max(1, min(DEFAULT_CHUNK_SIZE, int(budget_mb * 2**20 / 4 // max(per_row, 1))))


def stream_grads(prob: Problem, X: Tensor, y: Tensor, chunk_size: int) -> Iterator[tuple[slice, Tensor]]:
    """Yield ``(rows, G)`` blocks of dense per-sample gradients (len(rows), p): from per-layer factors for
    networks of Linear and Conv2d layers (one batched backward, ``factors.outer_product_grads``), else vmap of
    grad (``func.iter_grads``). The same numbers either way; the check is made once."""
    if not factors.supported(prob, X):
        yield from iter_grads(prob, X, y, chunk_size)
        return
    for rows in chunks(len(X), chunk_size):
        yield rows, factors.outer_product_grads(prob, X[rows], y[rows])


@dataclass
class GradEngine:
    """The inputs of one ``score`` / ``pairwise`` call and the gradient operations over them.

    ``X, y``: the training set (the curvature's n); ``Xv, yv``: S_val for ``score``, the queries for ``pairwise``;
    ``Xs, ys``: the points scored -- the training set, or the ``candidates=`` option; ``opt``: the call's typed
    options (core/options.py, extended per method family); ``prob``: the problem at theta.
    """

    model: torch.nn.Module
    X: Tensor
    y: Tensor
    Xv: Tensor
    yv: Tensor
    opt: Options
    prob: Problem = field(init=False)
    world: distributed.World | None = field(default=None, init=False)
    Xs: Tensor = field(init=False)
    ys: Tensor = field(init=False)
    cache: GradCache | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.prob = make_problem(self.model, self.opt.params, self.opt.loss)
        self.Xs, self.ys = self.opt.candidates if self.opt.candidates is not None else (self.X, self.y)
        c = self.opt.cache_grads
        self.cache = c if isinstance(c, GradCache) else (GradCache(budget_mb=math.inf) if c else None)
        # The one distributed hook: dots/apply (every method's final per-training-point pass) run on this
        # rank's shard and gather; everything else, curvature over the training set included, stays whole.
        self.world = distributed.world(self.opt.distributed, self.X, self.y)

    def with_other(self, Xv: Tensor, yv: Tensor) -> GradEngine:
        """The same training side and options with another validation / query set."""
        return GradEngine(self.model, self.X, self.y, Xv, yv, self.opt)

    @property
    def n(self) -> int:
        """Number of training points (the curvature's n)."""
        return len(self.X)

    @property
    def n_scored(self) -> int:
        """Number of points scored: n, or the number of candidates."""
        return len(self.Xs)

    def row_blocks(self, size: int = 4096) -> list[slice]:
        """Slices over the points scored, ``size`` rows each (for forward-only passes)."""
        return list(chunks(self.n_scored, size))

    def sets(self, prob: Problem | None = None, scored: bool = False, rows: slice = slice(None),
             dense: bool = False, desc: str = "gradients") -> Iterator[GradSet]:
        """Stream the per-sample gradients of the training set (``scored``: of the points scored) at ``prob``
        (default theta) over ``rows``, in chunks: per-layer factors for Linear / Conv2d networks
        (``factors.LayerGrads``, up to FACTOR_CHUNK rows a chunk), else dense blocks of ``chunk_size`` rows
        (``dense=True``: always chunk_size rows, e.g. for methods that will form G). From the cache when given."""
        prob = prob or self.prob
        X, y = (self.Xs, self.ys) if scored else (self.X, self.y)
        full = None
        if self.cache is not None and prob.model is self.model:  # not TracIn's checkpoint copies
            full = self.cache.get(prob, X, y, self.opt.chunk_size)
        factored = isinstance(full, factors.LayerGrads) if full is not None else factors.supported(prob, X)
        step = self.opt.chunk_size if dense or not factored else factors.chunk_rows(prob, self.opt.budget_mb,
                                                                                     FACTOR_CHUNK)
        if full is not None:
            full = full.rows(rows)
            yield from (full.rows(r) for r in chunks(full.n, step))
            return
        X, y = X[rows], y[rows]
        if factored:
            it = (factors.factored_grads(prob, X[r], y[r], chunk_size=step) for r in chunks(len(X), step))
        else:
            blocks = module_blocks(prob)
            it = (DenseGrads(G, blocks) for _, G in iter_grads(prob, X, y, step))
        yield from tqdm(it, total=math.ceil(len(X) / step), desc=desc, disable=not self.opt.progress, leave=False)

    def grads(self, prob: Problem | None = None, rows: slice = slice(None), scored: bool = False) -> Iterator[Tensor]:
        """Stream dense (chunk_size, p) blocks of per-sample gradients (``sets`` with ``dense=True``)."""
        for gs in self.sets(prob, scored=scored, rows=rows, dense=True):
            yield gs.dense()

    def dots(self, V: Tensor, prob: Problem | None = None) -> Tensor:
        """G @ V over the points scored, (n,) or (n, k), never forming G: from cached gradients when there are,
        from per-layer factors for Linear / Conv2d networks, else by forward-mode JVPs."""
        if (self.cache is not None and (prob is None or prob.model is self.model)
                or factors.supported(prob or self.prob, self.Xs)):
            # 10k examples, 784-128-10 MLP, time / batched backward: factors + G v 1.43x, JVPs 1.29x on a quiet
            # machine (0.74x vs 1.22x on a busy one); factors also serve k columns and the cache in one pass
            return self.apply_sets(lambda gs: gs.dots(V), prob)
        if self.has_conv:
            # Forward-mode through conv layers is slow on CPU: measured on SmallCNN (2k examples), JVP dots
            # took 3.2x a batched backward vs 1.6x for streaming per-sample gradients (MLP: 1.3x vs 76x).
            # (Conv layers factors.supported cannot take: grouped, "same"-padded, Conv1d/3d.)
            return self.apply(lambda G: G @ V, prob)
        return distributed.map_rows(lambda r: grad_dots(prob or self.prob, self.Xs[r], self.ys[r], V),
                                    self.n_scored, self.world)

    @property
    def has_conv(self) -> bool:
        return any(isinstance(m, torch.nn.modules.conv._ConvNd) for m in self.model.modules())

    def apply(self, fn: Callable[[Tensor], Tensor], prob: Problem | None = None) -> Tensor:
        """Concatenate fn(G_chunk) over the points scored (the training set unless candidates=): (n, ...)."""
        return distributed.map_rows(lambda r: torch.cat([fn(G) for G in self.grads(prob, rows=r, scored=True)]),
                                    self.n_scored, self.world)

    def apply_sets(self, fn: Callable[[GradSet], Tensor], prob: Problem | None = None) -> Tensor:
        """Concatenate fn(GradSet chunk) over the points scored: (n, ...), gradients formed only if fn does."""
        return distributed.map_rows(lambda r: torch.cat([fn(gs) for gs in self.sets(prob, scored=True, rows=r)]),
                                    self.n_scored, self.world)

    def query_grads(self, prob: Problem | None = None) -> Tensor:
        """(Q, p) gradients of each validation point's / query's own loss at ``prob`` (default theta)."""
        prob = prob or self.prob
        return torch.cat([G for _, G in stream_grads(prob, self.Xv, self.yv, self.opt.chunk_size)])


__all__ = ["FACTOR_CHUNK", "GradEngine", "grad_chunk_rows", "stream_grads"]
