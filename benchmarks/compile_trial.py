"""Does ``torch.compile`` make ifkit's hot kernels faster on CPU?  A measured trial, not a change to ifkit.

What: each of ifkit's hot kernels is run as ifkit runs it (same functions, same chunk sizes) twice, eagerly and
through ``torch.compile`` (default inductor backend), on the 784-128-10 tanh MLP and ``SmallCNN`` of
``ifkit bench`` with Fashion-MNIST-shaped synthetic data (10,000 examples; ``--fast``: 2,000):

=====================  ===================================================================  ==================
kernel                 what is compiled (one call) / one timed pass                          typical ifkit call
=====================  ===================================================================  ==================
batched-backward       ``cross_entropy(model(X_b), y_b)`` + ``.backward()``, batches of 256  1 pass (an epoch)
per-sample-vmap        ``func.per_sample_grads`` on one chunk of 256 (vmap(grad), =          1 pass (a score)
                       ``func.iter_grads``); pass = all chunks
per-sample-layerwise   ``layerwise.per_sample_grads`` on one chunk of 256 (outer products)   1 pass
jvp-dots               ``func.grad_dots`` on one chunk (2048 // k rows), V (p,) or (p, k)    1 pass
ggn-vp / hvp           ``func.ggn_vp_fn`` / ``func.hvp_fn`` over 2,000 points, v (p,) or     100 products
                       (p, k); pass = one product (one CG iteration)                         (CG's iters)
=====================  ===================================================================  ==================

Why: to decide where (if anywhere) ifkit should wrap a kernel in ``torch.compile``. A speed-up only pays if it
wins back the compile time within a typical call, and the answer must be correct to float rounding.

How it measures (one process, one heavy thing at a time): per kernel, ``torch._dynamo.reset()``; an eager
warm-up pass; a first compiled pass run call by call next to eager, which gives the correctness figure
(``max_abs_diff`` over every call's output: G blocks, dot products, products, or the parameter gradients of the
backward) and the compile cost; for passes under 1 s one more warm-up pass of each; then ``repeats`` (>= 5)
round-robin repeats, eager and compiled alternating (the order flips each repeat), each sample running the pass
``number`` times so that it lasts >= 0.3 s. If the default ``torch.compile(fn)`` raises, the variants
``dynamic=False``, ``mode="reduce-overhead"`` and ``backend="aot_eager"`` are tried in turn (the note lists every
error). Inductor's on-disk cache is a fresh temporary folder (``--cache-dir`` to choose one), so compile times
are cold-cache ones.

How to read results/compile_trial.csv (one row per kernel x model x k):

* ``eager_s``, ``compiled_s``: median seconds of one pass (see table above), after warm-up.
* ``speedup``: eager / compiled, the median of the within-repeat ratios (> 1: compile is faster). The machine is
  shared, so trust ratios more than absolute seconds; differences under ~10 % are within noise.
* ``compile_s``: the first compiled pass minus a warm compiled pass: tracing + inductor + C++ build, including any
  recompilation the pass triggers (e.g. a dynamic-shape recompile for the last, shorter chunk). The one-off cost
  of starting inductor in a fresh process is the separate row ``kernel=compile-startup``; it comes on top, once.
* ``max_abs_diff``: largest |compiled - eager| over all outputs of the first pass (float32; the note gives it
  relative to max |eager|).
* ``status``: ok | graph-break (compiled, but dynamo split the function; the note gives the reasons) | fallback
  (the default failed, a variant worked) | mismatch (relative difference > 1e-3) | failed (nothing compiled).
* ``note``: the variant used, graph breaks, ``recompile_warm_s`` (compiling the same function again after
  ``torch._dynamo.reset()`` with inductor's cache warm: what a later ifkit call in the same session would pay,
  since each call builds new closures), the typical number of passes T per ifkit call, and
  ``amortised`` = T * eager / (T * compiled + compile_s), the speed-up of one typical call that compiles cold.

Run: ``.venv/bin/python benchmarks/compile_trial.py [--fast] [--out results/compile_trial.csv]``
(``--only jvp-dots,hvp`` to select kernels; ``--repeats``).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ifkit.bench import _data, _model  # noqa: E402  (the exact model and data ``ifkit bench`` times)
from ifkit.core import factors as layerwise  # noqa: E402
from ifkit.core import func

COLUMNS = ["kernel", "model", "n", "k", "eager_s", "compiled_s", "compile_s", "speedup", "max_abs_diff", "status",
           "note"]
KERNELS = ("batched-backward", "per-sample-vmap", "per-sample-layerwise", "jvp-dots", "ggn-vp", "hvp")
CNN_KERNELS = ("batched-backward", "per-sample-vmap", "jvp-dots")  # the brief's small-CNN subset
BATCH = 256  # ifkit bench's batches, = func.DEFAULT_CHUNK_SIZE (score streams per-sample gradients in these)
DOTS_CHUNK = 2048  # func.grad_dots' default chunk_size; it takes 2048 // k rows per call for k tangents
CURV_N = 2_000  # points of the curvature products
CG_ITERS = 100  # ifkit's default CG iterations: products per inverse-HVP solve
ONE_CHUNK = 2**31  # chunk_size that makes an ifkit function process its whole argument as one chunk
MIN_SAMPLE_S = 0.3  # each timed sample repeats the pass until it lasts about this long
RELATIVE_TOL = 1e-3  # above this |compiled - eager| / max|eager|, the row is a "mismatch"
VARIANTS: tuple[dict[str, Any], ...] = ({}, {"dynamic": False}, {"mode": "reduce-overhead"}, {"backend": "aot_eager"})


@dataclass
class Kernel:
    """One kernel: ``fn`` is what gets compiled; a pass calls it on every tuple of ``calls``.

    ``finish`` runs outside the compiled region on each output and returns the tensor that is compared (identity,
    or the backward pass of the batched yardstick, returning the parameter gradients).
    """

    name: str
    model: str
    n: int
    k: int | None
    fn: Callable[..., Any]
    calls: list[tuple[Any, ...]]
    typical_passes: int
    finish: Callable[[Any], Tensor] = field(default=lambda out: out)
    what: str = ""


def build_kernels(model_name: str, n: int, kernels: Sequence[str], ks: Sequence[int] = (1, 8),
                  hidden: tuple[int, ...] = (128,), curv_n: int = CURV_N, seed: int = 0) -> list[Kernel]:
    """The kernels of ``kernels`` for one model, on ``n`` synthetic examples (curvature: ``min(curv_n, n)``)."""
    torch.manual_seed(seed)
    model = _model(model_name, hidden)
    X, y = _data(n, seed)
    prob = func.make_problem(model)
    gen = torch.Generator().manual_seed(seed + 1)
    vecs = {k: torch.randn(prob.p, generator=gen) if k == 1 else torch.randn(prob.p, k, generator=gen) for k in ks}
    out: list[Kernel] = []

    def rows(step: int, m: int = n) -> list[slice]:
        return list(func.chunks(m, step))

    for name in kernels:
        if name == "batched-backward":
            def mean_loss(Xb: Tensor, yb: Tensor) -> Tensor:
                return torch.nn.functional.cross_entropy(model(Xb), yb)

            def backward(loss: Tensor) -> Tensor:
                model.zero_grad(set_to_none=True)
                loss.backward()
                return torch.cat([p.grad.reshape(-1) for p in model.parameters()])

            out.append(Kernel(name, model_name, n, None, mean_loss, [(X[r], y[r]) for r in rows(BATCH)], 1,
                              backward, f"forward+backward of the mean loss, batches of {BATCH}"))
        elif name == "per-sample-vmap":
            def psg(Xc: Tensor, yc: Tensor) -> Tensor:
                return func.per_sample_grads(prob, Xc, yc, chunk_size=ONE_CHUNK)  # = one iter_grads chunk

            out.append(Kernel(name, model_name, n, None, psg, [(X[r], y[r]) for r in rows(BATCH)], 1,
                              what=f"func.per_sample_grads (vmap(grad)), chunks of {BATCH}"))
        elif name == "per-sample-layerwise":
            if not layerwise.supported(prob, X):
                continue  # outer products need a network of Linear layers (not the CNN)

            def lw(Xc: Tensor, yc: Tensor) -> Tensor:
                return layerwise.outer_product_grads(prob, Xc, yc)

            out.append(Kernel(name, model_name, n, None, lw, [(X[r], y[r]) for r in rows(BATCH)], 1,
                              what=f"layerwise.per_sample_grads (outer products), chunks of {BATCH}"))
        elif name == "jvp-dots":
            for k in ks:
                def dots(V: Tensor, Xc: Tensor, yc: Tensor) -> Tensor:
                    return func.grad_dots(prob, Xc, yc, V, chunk_size=ONE_CHUNK)

                step = max(1, DOTS_CHUNK // k)
                out.append(Kernel(name, model_name, n, k, dots, [(vecs[k], X[r], y[r]) for r in rows(step)], 1,
                                  what=f"func.grad_dots, chunks of {step}"))
        elif name in ("ggn-vp", "hvp"):
            m = min(curv_n, n)
            make = func.ggn_vp_fn if name == "ggn-vp" else func.hvp_fn
            for k in ks:
                mv = make(prob, X[:m], y[:m])  # one closure per k, as each CG solve builds its own
                out.append(Kernel(name, model_name, m, k, mv, [(vecs[k],)], CG_ITERS,
                                  what=f"one {'func.ggn_vp_fn' if name == 'ggn-vp' else 'func.hvp_fn'} product"))
        else:
            raise ValueError(f"unknown kernel {name!r}: choose from {KERNELS}")
    return out


def _run_pass(fn: Callable[..., Any], kernel: Kernel, number: int = 1) -> float:
    """Seconds of ``number`` passes of ``fn`` over the kernel's calls, divided by ``number``."""
    t0 = time.perf_counter()
    for _ in range(number):
        for args in kernel.calls:
            kernel.finish(fn(*args))
    return (time.perf_counter() - t0) / number


def _first_pass(kernel: Kernel, compiled: Callable[..., Any]) -> tuple[float, float, float]:
    """Compile by running the first compiled pass call by call next to eager.

    Returns (seconds of the compiled calls, max |compiled - eager|, max |eager|).
    """
    secs, diff, scale = 0.0, 0.0, 0.0
    for args in kernel.calls:
        ref = kernel.finish(kernel.fn(*args)).detach().clone()
        t0 = time.perf_counter()
        got = kernel.finish(compiled(*args)).detach()
        secs += time.perf_counter() - t0
        diff = max(diff, (got - ref).abs().max().item())
        scale = max(scale, ref.abs().max().item())
    return secs, diff, scale


def _counters() -> tuple[dict[str, int], int]:
    """Dynamo's graph-break reasons (first line of each) and its count of compiled graphs so far."""
    from torch._dynamo.utils import counters

    breaks: dict[str, int] = {}
    for reason, count in counters["graph_break"].items():
        line = str(reason).strip().splitlines()[0][:120]
        breaks[line] = breaks.get(line, 0) + count
    return breaks, int(counters["stats"]["unique_graphs"])


def _variant_name(v: dict[str, Any]) -> str:
    return "torch.compile(fn" + "".join(f", {a}={b!r}" for a, b in v.items()) + ")"


def _error(e: BaseException) -> str:
    lines = [s.strip() for s in str(e).strip().splitlines() if s.strip()]
    return f"{type(e).__name__}: {lines[0][:160] if lines else ''}"


def measure(kernel: Kernel, repeats: int = 5) -> dict[str, Any]:
    """Time ``kernel`` eagerly and compiled; one CSV row (see the module docstring for the columns)."""
    from torch._dynamo.utils import counters

    row: dict[str, Any] = dict(kernel=kernel.name, model=kernel.model, n=kernel.n, k=kernel.k)
    torch._dynamo.reset()
    counters.clear()
    eager_once = _run_pass(kernel.fn, kernel)  # warm-up (vmap tracing, allocator); sizes ``number``
    errors: list[str] = []
    for variant in VARIANTS:
        torch._dynamo.reset()
        counters.clear()
        compiled = torch.compile(kernel.fn, **variant)
        try:
            first_s, diff, scale = _first_pass(kernel, compiled)
            break
        except Exception as e:  # noqa: BLE001 - any compile failure is a result to record
            errors.append(f"{_variant_name(variant)} -> {_error(e)}")
    else:
        torch._dynamo.reset()
        return dict(row, status="failed", note=f"{kernel.what}; " + " | ".join(errors))
    breaks, graphs = _counters()

    if eager_once < 1.0:  # a short pass: one more warm-up of each (a long one is warm after the first pass)
        eager_once = _run_pass(kernel.fn, kernel)
        _run_pass(compiled, kernel)
    number = max(1, math.ceil(MIN_SAMPLE_S / max(eager_once, 1e-6)))
    te: list[float] = []
    tc: list[float] = []
    for i in range(repeats):  # round-robin, order flipped every repeat
        for which in ((0, 1) if i % 2 == 0 else (1, 0)):
            (te if which == 0 else tc).append(_run_pass(kernel.fn if which == 0 else compiled, kernel, number))
    _, graphs_after = _counters()
    eager_s, compiled_s = statistics.median(te), statistics.median(tc)
    compile_s = max(0.0, first_s - compiled_s)

    torch._dynamo.reset()  # what a later call with new closures pays: dynamo again, inductor's cache warm
    again = torch.compile(kernel.fn, **variant)
    t0 = time.perf_counter()
    _run_pass(again, kernel)
    recompile_warm_s = max(0.0, time.perf_counter() - t0 - compiled_s)
    torch._dynamo.reset()

    T = kernel.typical_passes
    amortised = T * eager_s / (T * compiled_s + compile_s)
    rel = diff / scale if scale > 0 else diff
    if rel > RELATIVE_TOL:
        status = "mismatch"
    elif errors:
        status = "fallback"
    elif breaks:
        status = "graph-break"
    else:
        status = "ok"
    notes = [kernel.what, f"variant {_variant_name(variant)}", f"graphs={graphs}"]
    if breaks:
        notes.append(f"{sum(breaks.values())} graph breaks: " + "; ".join(f"{r} (x{c})" for r, c in breaks.items()))
    if graphs_after > graphs:
        notes.append(f"recompiled during timing ({graphs_after - graphs} more graphs)")
    notes += [f"rel_diff={rel:.1e}", f"recompile_warm_s={recompile_warm_s:.2f}", f"T={T} passes per typical call",
              f"amortised={amortised:.2f}", f"repeats={repeats} x {number} passes"]
    notes += [f"failed first: {e}" for e in errors]
    return dict(row, eager_s=eager_s, compiled_s=compiled_s, compile_s=compile_s,
                speedup=statistics.median(e / c for e, c in zip(te, tc)), max_abs_diff=diff, status=status,
                note="; ".join(notes))


def startup_row() -> dict[str, Any]:
    """The one-off cost of the first ``torch.compile`` in a process (inductor import, CPU probe, C++ toolchain)."""
    torch._dynamo.reset()
    t0 = time.perf_counter()
    try:
        torch.compile(lambda x: (x.sin() + 1).sum())(torch.randn(8))
    except Exception as e:  # noqa: BLE001
        return dict(kernel="compile-startup", model="-", status="failed", note=_error(e))
    secs = time.perf_counter() - t0
    torch._dynamo.reset()
    return dict(kernel="compile-startup", model="-", compile_s=secs, status="ok",
                note="first torch.compile of a trivial function in the process (paid once per process, on top of "
                     "each kernel's compile_s)")


def run_trial(models: Sequence[str] = ("mlp", "cnn"), n: int = 10_000, kernels: Sequence[str] = KERNELS,
              cnn_kernels: Sequence[str] = CNN_KERNELS, ks: Sequence[int] = (1, 8), repeats: int = 5,
              hidden: tuple[int, ...] = (128,), curv_n: int = CURV_N, out: str | Path | None = None,
              progress: bool = True, startup: bool = True) -> list[dict[str, Any]]:
    """Measure every kernel (``cnn_kernels`` for the CNN) and return the rows; writes ``out`` after each one."""
    from tqdm.auto import tqdm

    rows: list[dict[str, Any]] = [startup_row()] if startup else []
    if out is not None:
        _write(rows, Path(out))
    todo = [(m, kern) for m in models for kern in kernels if m != "cnn" or kern in cnn_kernels]
    bar = tqdm(total=sum(len(ks) if kern in ("jvp-dots", "ggn-vp", "hvp") else 1 for _, kern in todo),
               desc="compile trial", disable=not progress)
    for m, kern in todo:
        for kernel in build_kernels(m, n, [kern], ks=ks, hidden=hidden, curv_n=curv_n):
            bar.set_postfix_str(f"{m} {kern} k={kernel.k}")
            rows.append(measure(kernel, repeats))
            bar.update()
            if out is not None:
                _write(rows, Path(out))
    bar.close()
    return rows


def _write(rows: list[dict[str, Any]], out: Path) -> None:
    import pandas as pd

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.csv")
    df = pd.DataFrame(rows, columns=COLUMNS).astype({"n": "Int64", "k": "Int64"})  # integers, blank when absent
    df.to_csv(tmp, index=False)
    tmp.replace(out)  # atomic


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fast", action="store_true", help="2,000 examples instead of 10,000")
    ap.add_argument("--out", default="results/compile_trial.csv", help="CSV to write (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=5, help="round-robin repeats (>= 5; default: %(default)s)")
    ap.add_argument("--only", default="", help=f"comma-separated subset of {','.join(KERNELS)}")
    ap.add_argument("--models", default="mlp,cnn", help="comma-separated subset of mlp,cnn")
    ap.add_argument("--cache-dir", default=None,
                    help="inductor cache folder (default: a fresh temporary one, so compile times are cold)")
    args = ap.parse_args(argv)
    if args.repeats < 5:
        ap.error("--repeats must be >= 5 (timings are medians on a shared machine)")
    kernels = [k for k in args.only.split(",") if k] or list(KERNELS)
    tmp = None
    if args.cache_dir is None:
        tmp = tempfile.mkdtemp(prefix="ifkit_compile_trial_")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = args.cache_dir or tmp  # read lazily by inductor: before any compile
    t0 = time.perf_counter()
    try:
        rows = run_trial(models=args.models.split(","), n=2_000 if args.fast else 10_000, kernels=kernels,
                         repeats=args.repeats, out=args.out)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    import pandas as pd

    df = pd.DataFrame(rows, columns=COLUMNS)
    with pd.option_context("display.width", 200, "display.max_colwidth", 40):
        print(df.drop(columns="note").to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    print(f"wall-clock {time.perf_counter() - t0:.0f} s; torch {torch.__version__}, {torch.get_num_threads()} threads;"
          f" wrote {args.out}")
    return int((df["status"] == "failed").any())


if __name__ == "__main__":
    sys.exit(main())
