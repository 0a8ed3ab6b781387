"""How long a call will take, estimated before any work: requests that would run for many minutes are refused
(``budget_s``, the time twin of ``budget_mb``) with the estimate, what dominates it, and how to allow or avoid it.

The estimate counts three kinds of work and prices them with two timings taken on the spot:

    c0 + b t1  seconds of one forward + backward pass over b examples (the model itself, b = 8 and 256)
    t_mac      seconds of one multiply-add of a large matmul (this machine, this dtype; measured once)

    G(m)       = m/chunk c0 + m (t1 + p t_mac)   per-sample gradients of m examples (each written out: p entries)
    P(m, c)    = 3 (c0 + c m t1)                 one batched product of the curvature (HVP / Gauss-Newton) over
                                                 m examples with c vectors (forward, backward, and one more)
    D(a, b)    = 16 a b p t_mac                  a x b gradient dot products (through per-layer factors or
                                                 chunks: measured 5-20x a plain matmul per multiply-add)
    dense p x p curvature: p products + 10 p^3 t_mac (eigendecomposition; Cholesky is cheaper)

and writes each method's cost in those terms, following the method's own choice of solver (the defaults of
ifkit/methods/ and ifkit/curvature/: CG depth 100, LiSSA depth 500, VM/FVM's low-rank curvature while it fits
budget_mb). CG and LiSSA may stop early (``tol``), so the estimate is an upper bound for them; elsewhere it is
meant to be right within a factor of about 3 -- enough to tell seconds from hours. The two timings cost
~0.1 s on a 1M-parameter model. Measured against the run (MLPs of 2k-200k parameters, 1-3k points, every
method): tests/test_bad_inputs.py pins the refusals, the calibration is in the commit that added this module. Under torch.distributed the estimate is that of one process doing everything.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

WARN_S = 120.0  # a call estimated above this (but within budget_s) warns, with the estimate
CG_DEPTH, LISSA_DEPTH, LISSA_FULL_MAX, LISSA_BATCH = 100, 500, 4096, 512  # as in ifkit/curvature/inverse.py
FLAT_STEPS = 100  # ifkit/methods/flat.py VM_DEFAULTS / FVM_DEFAULTS
PRODUCT, DOTS, FACTOR = 3.0, 16.0, 10.0  # the constants of the module docstring's cost model
_MAC_SECONDS: dict[tuple[torch.dtype, str], float] = {}  # measured once per dtype, device and process


def seconds_per_mac(dtype: torch.dtype, device: torch.device | str = "cpu") -> float:
    """Seconds per multiply-add of a (256, 1024) @ (1024, 256) matmul: this device's dense speed (cached)."""
    key = (dtype, str(device))
    if key not in _MAC_SECONDS:
        a = torch.randn(256, 1024, dtype=dtype, device=device)
        b = torch.randn(1024, 256, dtype=dtype, device=device)
        best = math.inf
        for _ in range(3):
            t0 = time.perf_counter()
            a @ b
            _sync(a)
            best = min(best, time.perf_counter() - t0)
        _MAC_SECONDS[key] = max(best, 1e-9) / (256 * 1024 * 256)
    return _MAC_SECONDS[key]


def _sync(t: Tensor) -> None:
    """Wait for the device (GPU kernels run asynchronously: a timing without this measures only the launch)."""
    if t.device.type == "cuda":
        torch.cuda.synchronize(t.device)


def forward_backward_cost(loss_at: Callable[[Tensor, int], Tensor], theta: Tensor, n: int, p: int, t_mac: float,
                          sizes: tuple[int, ...] = (8, 256), repeats: int = 3) -> tuple[float, float]:
    """(c0, t1): one forward + backward pass over b examples takes about c0 + b t1 seconds, from batches of
    ``sizes`` (``loss_at(theta, b)`` -> (b,) losses), the best of ``repeats`` (the first call pays for
    allocation). With one size, c0 = 0 and t1 = time / b: an upper bound (the overhead counted per example).
    t1 is at least 3 p t_mac: a forward and a backward pass cost no less than three p-sized products."""
    sizes = tuple(sorted({min(n, b) for b in sizes}))
    times = []
    for b in sizes:
        best = math.inf
        for _ in range(repeats):
            th = theta.detach().requires_grad_(True)
            t0 = time.perf_counter()
            _sync(torch.autograd.grad(loss_at(th, b).sum(), th)[0])
            best = min(best, time.perf_counter() - t0)
        times.append(best)
    if len(sizes) == 1:
        return 0.0, max(times[0] / sizes[0], 3 * p * t_mac)
    # The slope between the two batches; on a loaded machine timing noise can make it tiny or negative, so it is
    # kept above a quarter of the larger batch's time per example
    slope = (times[-1] - times[0]) / (sizes[-1] - sizes[0])
    t1 = max(slope, times[-1] / sizes[-1] / 4, 3 * p * t_mac)
    return max(times[0] - sizes[0] * t1, 0.0), t1


def estimate_call(method: str, loss_at: Callable[[Tensor, int], Tensor], theta: Tensor, **sizes) -> tuple[float, str]:
    """(seconds, what dominates) of a call: a first bound from ONE timed pass over 256 examples (a few ms for a
    small model), refined by ``forward_backward_cost``'s fit only when that bound exceeds WARN_S -- so small
    calls pay almost nothing for their estimate. ``sizes``: the keyword arguments of ``estimate_seconds``."""
    p, t_mac = theta.numel(), seconds_per_mac(theta.dtype, theta.device)
    c0, t1 = forward_backward_cost(loss_at, theta, sizes["n_train"], p, t_mac, sizes=(256,), repeats=1)
    seconds, dominant = estimate_seconds(method, p=p, c0=c0, t1=t1, t_mac=t_mac, **sizes)
    if seconds > WARN_S:
        c0, t1 = forward_backward_cost(loss_at, theta, sizes["n_train"], p, t_mac)
        seconds, dominant = estimate_seconds(method, p=p, c0=c0, t1=t1, t_mac=t_mac, **sizes)
    return seconds, dominant


def estimate_seconds(method: str, *, pairwise: bool, p: int, n_train: int, n_scored: int, n_other: int,
                     n_out: int, c0: float, t1: float, t_mac: float, budget_mb: float, chunk: int = 256,
                     bytes_per_entry: int = 4,
                     iters: int | None = None, curvature: str | None = None, n_checkpoints: int = 0,
                     flat_steps: int | None = None, ensemble_size: int = 8, gex_steps: int = 100,
                     gex_batch: int = 64, lissa_batch: int | str | None = None) -> tuple[float, str]:
    """(seconds, what dominates) for ``ifkit.score`` (``pairwise=False``) or ``ifkit.pairwise`` of ``method``.

    Args: the sizes (p parameters; n_train points in the curvature, n_scored scored, n_other validation points
    or queries; n_out outputs per example), the two timings of the module docstring, and the options that set
    the amount of work (None: the method's default).
    """
    G = lambda m: math.ceil(m / chunk) * c0 + m * (t1 + p * t_mac)  # noqa: E731
    P = lambda m, c: PRODUCT * (c0 + c * m * t1)  # noqa: E731
    per_chunk = math.ceil(n_scored / chunk)  # CG solves one chunk of training gradients at a time
    D = lambda a, b: DOTS * a * b * p * t_mac  # noqa: E731
    q = n_other if pairwise else 1  # right-hand sides: the mean validation gradient, or every query
    grads = G(n_scored) + G(n_other) + D(q, n_scored)
    budget = budget_mb * 2**20 / bytes_per_entry  # entries
    dense_fits = p * p <= budget / 4
    table = f" and the {q:,} x {n_scored:,} table ({q * n_scored * bytes_per_entry / 2**30:.1f} GB)" if pairwise else ""
    terms: dict[str, float] = {f"gradients of {n_scored:,} + {n_other:,} points{table}": grads}
    if method == "loss":
        terms = {"one forward pass": c0 + n_scored * t1 / 3}
    elif method == "tracin":
        terms = {f"{max(1, n_checkpoints)} checkpoint(s) x gradient passes": max(1, n_checkpoints) * grads}
    elif method in ("if-exact", "if-cg", "if-lissa", "datainf", "ekfac"):
        kind = curvature or {"if-exact": "exact", "if-cg": "ggn-cg", "if-lissa": "lissa", "datainf": "datainf",
                             "ekfac": "ekfac"}[method]
        if method == "if-lissa":
            depth = iters or LISSA_DEPTH
            b = n_train if lissa_batch == "full" or (lissa_batch is None and n_train <= LISSA_FULL_MAX) else (
                lissa_batch if isinstance(lissa_batch, int) else LISSA_BATCH)
            terms[f"LiSSA: {depth} products over {b:,} points x {q} right-hand side(s)"] = P(b, q) * depth + P(b, 30)
        elif kind in ("exact", "ggn"):
            terms[f"dense {p:,} x {p:,} curvature: {p:,} products + factorisation"] = P(n_train, p) + FACTOR * p**3 * t_mac
        elif kind in ("cg", "ggn-cg"):
            depth = iters or CG_DEPTH
            terms[f"CG: {depth} products over {n_train:,} points x {q} right-hand side(s)"] = P(n_train, q) * depth
        else:  # datainf, ekfac, kfac: two more passes over the training set
            terms["curvature: two more gradient passes"] = 2 * G(n_train)
    elif method == "self-if":
        kind = curvature or ("exact" if dense_fits else "cg")
        if kind in ("exact", "ggn"):
            terms[f"dense {p:,} x {p:,} curvature + one solve per point"] = (
                P(n_train, p) + FACTOR * p**3 * t_mac + n_scored * p * p * t_mac)
        elif kind in ("cg", "ggn-cg"):
            depth = iters or CG_DEPTH
            terms[f"CG per training point: {n_scored:,} x {depth} products over {n_train:,} points"] = (
                per_chunk * P(n_train, min(chunk, n_scored)) * depth)
        else:
            terms["curvature: two more gradient passes"] = 2 * G(n_train)
    elif method == "gex":
        terms = {f"GEX: {ensemble_size} x {gex_steps} steps + {ensemble_size} forward passes":
                 ensemble_size * (gex_steps * (c0 + gex_batch * t1) + n_scored * t1 / 3)}
    elif method in ("vm", "fvm"):
        steps = FLAT_STEPS if flat_steps is None else flat_steps
        terms[f"fine-tuning on S_val: {steps} steps over {n_other:,} points"] = (
            steps * (c0 + n_other * t1) * (1 if method == "vm" else 2))
        r = n_other * n_out  # rank of the validation Gauss-Newton matrix
        kind = curvature or ("ggn" if (r < p and r * p <= budget / 2) or dense_fits else "ggn-cg")
        if kind == "ggn" and r < p and r * p <= budget / 2:
            terms[f"low-rank validation curvature (rank {r:,}) and one product per point"] = (
                n_out * (c0 + n_other * t1) + r * r * p * t_mac + n_scored * r * p * t_mac)
        elif kind in ("ggn", "exact"):
            terms[f"dense {p:,} x {p:,} validation curvature"] = P(n_other, p) + FACTOR * p**3 * t_mac + n_scored * p * p * t_mac
        elif kind in ("cg", "ggn-cg"):
            depth = iters or CG_DEPTH
            terms[f"CG per training point (the rank-{r:,} validation curvature takes {r * p * bytes_per_entry / 2**30:.1f} "
                  f"GB, over budget_mb/2): {n_scored:,} x {depth} products over {n_other:,} points"] = (
                per_chunk * P(n_other, min(chunk, n_scored)) * depth)
    total = sum(terms.values())
    return total, max(terms, key=terms.get)


def check_time(seconds: float, dominant: str, budget_s: float | None, what: str, fix: str = "") -> None:
    """Refuse (ValueError) when ``seconds`` exceeds ``budget_s``; warn when it exceeds WARN_S; else nothing."""
    said = f"{what} would take about {_duration(seconds)} (estimated before starting; most of it: {dominant})"
    if budget_s is not None and seconds > budget_s:
        allow = max(int(math.ceil(seconds * 3 / 60.0)) * 60, 60)
        raise ValueError(f"{said}, over budget_s={budget_s:g}: pass budget_s={allow} (or budget_s=None) to run it "
                         f"anyway{'; or ' + fix if fix else ''}")
    if seconds > WARN_S:
        warnings.warn(f"{said}; progress=True shows a progress bar", stacklevel=3)


def fix_for(method: str, dominant: str, pairwise: bool) -> str:
    """A way to make the call cheaper, for the message."""
    if dominant.startswith("CG per training point") and method in ("vm", "fvm"):
        return ("raise budget_mb so that the low-rank validation curvature fits (see the size above), or pass "
                "curvature='ekfac', or restrict influence to fewer parameters with params=[...] (e.g. the last layer)")
    if dominant.startswith("CG per training point"):
        return "pass curvature='ekfac' (one factorisation, then O(p) per point), or fewer parameters with params="
    if pairwise and dominant.startswith("gradients"):
        return "score fewer queries or training points per call, or fewer parameters with params=[...]"
    return "use fewer parameters (params=[...], e.g. the last layer), fewer points, or a cheaper method"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


__all__ = ["check_time", "estimate_call", "estimate_seconds", "fix_for", "forward_backward_cost", "seconds_per_mac"]
