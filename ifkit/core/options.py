"""The options every method understands, as one frozen, typed value.

``ifkit.score(method, ..., **options)`` parses its keyword arguments once (ifkit/api.py) into the options type of
the method's family: ``Options`` below, extended beside each family's code (``CurvatureOptions`` in
curvature/inverse.py; ``GradientOptions``, ``InfluenceOptions``, ``GexOptions``, ``VMOptions``/``FVMOptions`` in
methods/). Below the api nothing takes a dict of options: code reads typed fields (``opt.damping``), and every
default is written once, on its field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .func import DEFAULT_CHUNK_SIZE, LossFn


@dataclass(frozen=True)
class Options:
    """Options shared by every method.

    Attributes:
        damping: lam in (H + lam I)^-1; the L2 strength the model was trained with is the principled choice.
            DataInf: None or "auto" (or not given) picks Kwon et al.'s per-layer damping.
        seed: seeds every random choice (LiSSA batches, power iterations, LPF noise, GEX members).
        params: names of the parameters to differentiate (None: every trainable one).
        loss: "cross_entropy" or a callable ``(outputs, targets) -> (n,)`` per-sample losses.
        budget_mb: memory budget for dense curvature matrices and gradient chunks.
        budget_s: a call estimated (ifkit/estimate.py) to take longer is refused before any work, with the
            estimate in the message; None: no limit.
        chunk_size: rows of per-sample gradients per streamed chunk; unless given, fewer when a (rows, p)
            block would exceed budget_mb / 4 (ifkit/api.py sets it).
        device: where to score (a copy of the model and data is moved there); None: where they are.
        progress: show progress bars on long steps.
        cache_grads: False: stream training gradients, recomputed per pass; True: keep them for this call; a
            ``GradCache``: keep them across every call given that cache (core/cache.py).
        distributed: None: under an initialised torch.distributed process group each rank does the
            per-training-point pass on its shard (core/distributed.py); False: always the whole set here.
        candidates: (X, y) points to score INSTEAD of the training points, with every training-set quantity
            still from train= (e.g. each flagged point under every candidate label, for relabeling).
        given: the names of the options the caller passed explicitly (e.g. DataInf's automatic damping applies
            only when ``damping`` was not given).
    """

    damping: float | str | None = 0.01
    seed: int = 0
    params: Sequence[str] | None = None
    loss: str | LossFn = "cross_entropy"
    budget_mb: float = 1024.0
    budget_s: float | None = 600.0
    chunk_size: int = DEFAULT_CHUNK_SIZE
    device: str | torch.device | None = None
    progress: bool = False
    cache_grads: Any = False
    distributed: bool | None = None
    candidates: Any = None
    given: frozenset[str] = frozenset()

    def gave(self, name: str) -> bool:
        """Whether the caller passed the option ``name`` explicitly."""
        return name in self.given


__all__ = ["Options"]
