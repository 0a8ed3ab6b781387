"""Scale-out on ``torch.distributed``: shard the per-training-point pass, gather the scores in order.

Every method has the shape "query-side vectors, then one pass over the training points":

    graddot/gradcos/tracin   v = g_val                                   then  -g_i^T v        per point
    if-cg/if-lissa/ekfac     v = (H_tr + damping I)^-1 g_val             then  -g_i^T v        per point
    datainf                  v = DataInf inverse (training grads) g_val  then  -g_i^T v        per point
    self-if                  (H_tr + damping I) factorised / CG          then  g_i^T H^-1 g_i  per point
    vm/fvm                   theta~ and H~_val from S_val                then  g~_i^T H~^-1 g~_i per point

The query side of if-cg, if-lissa, datainf, ekfac and self-if uses the WHOLE training set (its Hessian,
Gauss-Newton matrix, gradients or K-FAC factors). We keep that side exactly as a single process computes it --
redundantly on every rank, with the full training set -- and shard ONLY the final per-training-point pass
(``GradEngine.dots`` / ``GradEngine.apply`` in ``ifkit/core/grads.py``, through ``map_rows`` below):

1. rank r of W takes the contiguous rows [r n / W, (r + 1) n / W): sizes differ by at most one, so any n_train
   works (n_train = 101 on 2 ranks: 50 + 51 rows) and no point is scored twice (unlike DistributedSampler's
   padding by repetition);
2. each rank runs the same per-point code on its rows;
3. the shards are all-gathered (padded to the largest shard, padding stripped) and concatenated in rank
   order, which IS the original order; every rank returns the full (n_train,) / (n_queries, n_train) tensor.

Why this and not all-reducing the training-set curvature products across ranks: it is exact by construction.
The query side runs the same operations on the same data as a single process, so it is bitwise identical
across ranks (same machine, same thread count) and no reduction order changes; only the chunk boundaries of the
final pass move, which changes nothing in exact arithmetic and leaves float64 scores equal to ~1e-15 relative
(``tests/test_distributed.py`` asserts rtol=1e-10). The price is Amdahl's law: the speed-up is bounded by the
share of the run spent in the per-point pass. That share is large for graddot, gradcos, tracin, datainf,
ekfac, self-if with CG (one solve per training chunk) and vm/fvm with many training points, and small for
if-cg / if-lissa, whose ``iters`` full-training-set curvature products are replicated (README "Scaling out"
has the measurement). "loss" and "gex" do not use that pass (forward passes only; GEX's cost is its
ensemble): every rank computes them whole, which is correct but not faster. With ``cache_grads=True`` every
rank builds the full gradient cache.

Why redundant and not "rank 0 computes the query side, then broadcasts it": the other ranks would wait for
rank 0 anyway, so broadcasting can only add the broadcast time to the wall clock; it would save CPU-seconds,
not seconds. ``benchmarks/distributed_speedup.py`` measures both: FVM on 8,000 Fashion-MNIST points, 2 gloo
ranks, a 3.4 s query side vs. 0.23 s to broadcast its products (theta~ and the (1000, 25450) low-rank factor)
from rank 0 -- which would come on top of the 3.4 s, not instead of them.

Contract under a process group: every rank calls ``ifkit.score`` / ``ifkit.pairwise`` with the SAME model,
data and options (SPMD, as torchrun launches them). ``world`` checks that the training sets agree (length and
checksums) and raises otherwise; pass ``distributed=False`` to score per-rank data independently, or when
only some ranks call ifkit (e.g. evaluation on rank 0 of a DDP job). In auto mode such a call waits at the
JOIN -- the first collective, where every rank checks the others hold the same data -- for at most
``join_timeout_s`` (default JOIN_TIMEOUT_S = 300 s, or the environment variable IFKIT_JOIN_TIMEOUT_S), then
raises, saying how long it waited and how to change it; not the process group's timeout (30 min by default).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

JOIN_TIMEOUT_S = 300.0  # seconds a rank waits at the join for the others (IFKIT_JOIN_TIMEOUT_S overrides)


def join_timeout(seconds: float | None = None) -> float:
    """The join's timeout: ``seconds`` when given, else IFKIT_JOIN_TIMEOUT_S from the environment, else 300 s."""
    raw = seconds if seconds is not None else os.environ.get("IFKIT_JOIN_TIMEOUT_S", JOIN_TIMEOUT_S)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"the join timeout must be a finite number of seconds > 0, got {raw!r} (set "
                         "IFKIT_JOIN_TIMEOUT_S=600, say, or leave it unset for 300 s)")
    return value


@dataclass(frozen=True)
class World:
    """This process's place in the process group."""

    rank: int
    size: int


def world(option: bool | None, X: Tensor | None = None, y: Tensor | None = None,
          join_timeout_s: float | None = None) -> World | None:
    """The World to shard over, or None to compute everything in this process.

    Args:
        option: the ``distributed=`` option. None (default): shard when a process group is initialised with
            more than one rank. False: never. True: require an initialised process group.
        X, y: the training set; when given and sharding, every rank checks that all ranks hold the same one.
        join_timeout_s: how long that check (the join) waits for the other ranks; None: ``join_timeout()``.
    """
    if option is not None and not isinstance(option, bool):
        raise TypeError(f"distributed= takes None (auto), True or False, got {option!r}")
    if option is False:
        return None
    ready = dist.is_available() and dist.is_initialized()
    if not ready:
        if option:
            raise ValueError("distributed=True but torch.distributed is not initialised: launch with torchrun and "
                             "call torch.distributed.init_process_group() first (or use `ifkit score-shards`), or "
                             "leave distributed=None to score in this process")
        return None
    w = World(dist.get_rank(), dist.get_world_size())
    if w.size == 1:
        return None
    if X is not None and y is not None:
        _check_same_data(X, y, w, join_timeout(join_timeout_s))
    return w


def shard(n: int, rank: int, size: int) -> slice:
    """Rows of rank ``rank`` out of ``size``: contiguous, sizes floor(n/size) or ceil(n/size), covering 0..n."""
    return slice(rank * n // size, (rank + 1) * n // size)


def map_rows(fn: Callable[[slice], Tensor], n: int, w: World | None) -> Tensor:
    """fn(rows) -> (len(rows), ...) computed on this rank's shard of range(n), gathered in order: (n, ...).

    Without a World (or with fewer rows than ranks, where some shards would be empty) fn runs on all rows here.
    """
    if w is None or n < w.size:
        return fn(slice(0, n))
    return gather_rows(fn(shard(n, w.rank, w.size)), n, w)


def gather_rows(local: Tensor, n: int, w: World) -> Tensor:
    """All-gather each rank's shard result (rows ``shard(n, r, W)``) into the full (n, ...) tensor on every rank.

    all_gather needs equal shapes, so shards are zero-padded to the largest one and the padding is dropped.
    """
    slices = [shard(n, r, w.size) for r in range(w.size)]
    rows = max(s.stop - s.start for s in slices)
    padded = local.new_zeros((rows, *local.shape[1:]))  # (max shard, ...)
    padded[: len(local)] = local
    bufs = [torch.empty_like(padded) for _ in range(w.size)]
    _collective("all_gather", dist.all_gather, w, bufs, padded)
    return torch.cat([b[: s.stop - s.start] for b, s in zip(bufs, slices)])  # (n, ...) in the original order


def broadcast(t: Tensor, w: World | None, src: int = 0) -> Tensor:
    """t as rank ``src`` holds it, on every rank (in place; returned for chaining). No-op without a World."""
    if w is not None:
        _collective("broadcast", dist.broadcast, w, t, src)
    return t


def _check_same_data(X: Tensor, y: Tensor, w: World, timeout_s: float = JOIN_TIMEOUT_S) -> None:
    # ifkit shards the training set itself; a rank that passed its own pre-sharded data would silently get
    # scores for rows it never saw. Length + two float64 checksums catch that for the cost of one tiny gather.
    mine = torch.tensor([len(X), X.double().sum().item(), y.double().sum().item()],
                        dtype=torch.float64, device=X.device)  # (3,)
    every = [torch.empty_like(mine) for _ in range(w.size)]
    try:
        dist.all_gather(every, mine, async_op=True).wait(timeout=timedelta(seconds=timeout_s))
    except RuntimeError as e:  # a timeout, or a peer that died: say how long we waited and what to change
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RuntimeError(
            f"ifkit distributed: all_gather failed on rank {w.rank} of {w.size} at the join (the first collective "
            f"of ifkit.score / ifkit.pairwise), after waiting up to {timeout_s:g} s ({first}). Another rank most "
            "likely raised or died before reaching it -- look for that rank's traceback -- or never called ifkit "
            "(call it on every rank with the same arguments, or pass distributed=False to a call made on some "
            "ranks only); when the other ranks are just slower to get there, allow more with "
            f"IFKIT_JOIN_TIMEOUT_S=<seconds> (now {timeout_s:g})") from e
    if any(not torch.equal(e, every[0]) for e in every):
        lengths = [int(e[0].item()) for e in every]
        raise ValueError(f"ranks passed different training sets (n_train per rank: {lengths}): under "
                         "torch.distributed ifkit shards the training set itself, so pass the same full (X, y) "
                         "on every rank, or distributed=False to score each rank's own data independently")


def _collective(name: str, op: Callable[..., object], w: World, *args: object) -> None:
    """Run a collective; on failure say which rank waited and why it probably failed (not a bare gloo error)."""
    try:
        op(*args)
    except RuntimeError as e:  # gloo/nccl timeouts and dead peers (DistBackendError is a RuntimeError)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RuntimeError(
            f"ifkit distributed: {name} failed on rank {w.rank} of {w.size} ({first}). Another rank most likely "
            "raised or died before reaching it -- look for that rank's traceback -- or never called ifkit (call "
            "it on every rank, or pass distributed=False to a call made on one rank only); the process group's "
            "timeout (init_process_group(timeout=...), `ifkit score-shards --timeout`) bounds this wait"
        ) from e
