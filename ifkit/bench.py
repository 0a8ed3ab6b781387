"""``ifkit bench``: time and memory of per-sample gradients, of every scoring method, and of ``ifkit.clean``.

Four parts, one tidy CSV (results/bench.csv, one row per measurement):

* part "throughput": the ways to get the n training dot products G @ v that every linear score needs, timed
  round-robin in one process (median of ``repeats``, at least 3): "per-sample-grad" (``core.grads.stream_grads``:
  materialised (256, p) blocks -- from per-layer factors for Linear / Conv2d networks, else vmap(grad) -- each
  times v), "factored-grads" (every g_i layer by layer from one forward+backward, ``core.factors.factored_grads``,
  then G v from them; what ``score`` uses for Linear / Conv2d networks),
  "jvp-dots" (``func.grad_dots``: one forward-mode JVP per chunk of 2048, no gradient is formed; the path for
  other models without convolutions) and "batched-backward" (a plain forward+backward of the mean loss on
  batches of 256: the cost of one training epoch, the yardstick), and "score-graddot": the whole public call
  ``ifkit.score("graddot", ...)`` against S_val (N_VAL points) -- input checks, engine set-up, the mean validation
  gradient and the dots -- so that the API's overhead is measured next to the compute. ``ratio`` = the method's
  seconds / batched seconds, the median over repeats of the ratio within each repeat (batched-backward's own
  ratio is 1; score-graddot's goal is <= 2, i.e. at least half the throughput of a batched forward+backward).
  Models: a 784-128-10 MLP (101,770 parameters) and ``ifkit.models.SmallCNN`` (20,490), 10,000 examples (FAST: 2,000).
* part "methods": seconds and peak memory of ``ifkit.score(method, ...)`` for each method at n_train =
  2k, 8k, 32k (FAST: 500, 1k, 2k), on Fashion-MNIST-shaped synthetic data (1x28x28 in [0, 1], 10 classes)
  with the untrained 784-128-10 tanh MLP, a fixed S_val of 100 points, and each method's default options
  (TracIn: 3 checkpoints). Each (method, n_train) runs in a fresh subprocess, so ``peak_mb`` (ru_maxrss) is its
  own; ``base_mb`` is the process's peak before scoring (Python + torch + data), ``extra_mb`` the difference.
* part "cache": a sequence of methods (CACHE_SEQUENCE) scored on one model, without ("no-cache") and with one
  shared ``ifkit.GradCache`` ("grad-cache", fresh each repeat), round-robin; ``ratio`` = cached / uncached
  seconds, and the note gives the largest relative difference between the two runs' scores.
* part "clean": ``ifkit.clean(model, train, val, checkpoints=...)`` against cleanlab's usual 5-fold out-of-fold
  run (5 refits of the same model with the same recipe, StratifiedKFold, then
  ``cleanlab.filter.find_label_issues``) on real Fashion-MNIST (28x28, 40% symmetric noise, CLEAN_VAL clean
  validation points), round-robin; "train" is the one training run whose checkpoints ``clean`` picks from.
  ``ratio`` = seconds / cleanlab's within each repeat; the note gives what each flagged (precision, recall).

Columns: part, model, method, n_train, n_params, seconds (median wall), peak_mb, base_mb, extra_mb, repeats,
seconds_min, seconds_max, examples_per_s, ratio, fast, note, cpu_seconds (median process CPU time). A rerun keeps
the rows already in the CSV (delete it to measure again); the file is rewritten atomically after each measurement.

``IFKIT_BENCH_THREADS=1`` pins every worker to one torch thread (noted in each row): on a 2-core machine shared
with another busy process, two threads per op wait for a descheduled partner and ran 10-40x slower than alone.

Run: ``IFKIT_FAST=1 ifkit bench`` (~10 min on 2 free cores) or ``ifkit bench`` (about an hour: 3 repeats of every
method at 32k, and of ifkit.clean and cleanlab's 5 refits on 4,000 images).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

METHODS = ("loss", "graddot", "tracin", "if-cg", "if-lissa", "datainf", "ekfac", "vm", "fvm")
COLUMNS = ["part", "model", "method", "n_train", "n_params", "seconds", "peak_mb", "base_mb", "extra_mb", "repeats",
           "seconds_min", "seconds_max", "examples_per_s", "ratio", "fast", "note", "cpu_seconds"]
N_VAL = 100  # S_val size; VM/FVM's exact low-rank GGN needs n_val * 10 * p < budget (~130 points at p = 100k)
BATCH = 256
THROUGHPUT_METHODS = {"per-sample-grad": "per_sample", "factored-grads": "factored", "jvp-dots": "jvp_dots",
                      "batched-backward": "batched", "score-graddot": "score_graddot"}
# Scoring one model with several methods, as a comparison does: timed with and without one shared GradCache.
# The CNN runs the gradient-pass methods only: its if-cg / ekfac / vm / fvm took 18-33 s each at 300 points
# (curvature-bound, nothing for a gradient cache to save) and would make the run an hour.
CACHE_SEQUENCE = {"mlp": ("graddot", "gradcos", "tracin", "if-cg", "datainf", "ekfac", "vm", "fvm"),
                  "cnn": ("graddot", "gradcos", "tracin", "datainf")}
# part "clean": one training recipe for the model ifkit.clean gets and for each of cleanlab's refits (Adam)
CLEAN_RECIPE = dict(epochs=10, lr=1e-3, batch_size=128)
CLEAN_VAL = 300  # clean validation points (S_val): ifkit.clean fine-tunes and builds its curvature on them
CLEAN_FOLDS = 5


def fast_from_env() -> bool:
    return os.environ.get("IFKIT_FAST", "0") not in ("", "0")


def config(fast: bool) -> dict[str, Any]:
    """Sizes of the two parts; FAST is what CI runs."""
    return dict(
        sizes=(500, 1_000, 2_000) if fast else (2_000, 8_000, 32_000),
        throughput_n=2_000 if fast else 10_000,
        cache_n={"mlp": 1_000, "cnn": 300} if fast else {"mlp": 8_000, "cnn": 2_000},
        clean_n=1_000 if fast else 4_000,
        clean_epochs=3 if fast else CLEAN_RECIPE["epochs"],
        repeats=3,  # the throughput part always takes at least 3 (ratios are medians)
        timeout_s=600 if fast else 3_600,
    )


# ---------------------------------------------------------------------------------------------------------------
# Workers: run in a fresh interpreter (python -m ifkit.bench JSON) and print one JSON line
# ---------------------------------------------------------------------------------------------------------------


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _model(name: str, hidden: tuple[int, ...]):
    from ifkit.models import MLP, SmallCNN

    return MLP(784, hidden, 10) if name == "mlp" else SmallCNN()


def _data(n: int, seed: int):
    import torch

    gen = torch.Generator().manual_seed(seed)
    X = torch.rand(n, 1, 28, 28, generator=gen)  # (n, 1, 28, 28): Fashion-MNIST's shape and range
    y = torch.randint(0, 10, (n,), generator=gen)
    return X, y


def _throughput(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    import ifkit
    from ifkit.core import factors, func
    from ifkit.core.grads import stream_grads

    torch.manual_seed(0)
    model = _model(job["model"], tuple(job["hidden"]))
    X, y = _data(job["n"], 0)
    Xv, yv = _data(N_VAL, 2)
    prob = func.make_problem(model)
    v = torch.randn(prob.p)
    base = _peak_mb()

    def per_sample() -> None:
        for _, G in stream_grads(prob, X, y, BATCH):  # what ifkit.score streams
            G @ v  # (chunk,): every score reduces each chunk like this

    def factored() -> None:
        F = factors.factored_grads(prob, X, y)  # every g_i as per-layer factors: one forward + backward
        F.dots(v)  # (n,) from the factors

    def jvp_dots() -> None:
        func.grad_dots(prob, X, y, v)  # (n,): the same numbers as per_sample's, no (chunk, p) block

    def batched() -> None:
        for rows in func.chunks(len(X), BATCH):
            model.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(X[rows]), y[rows]).backward()

    def score_graddot() -> None:
        ifkit.score("graddot", model, (X, y), (Xv, yv))  # (n,): end to end, through the public API

    fns = dict(per_sample=per_sample, jvp_dots=jvp_dots, batched=batched, score_graddot=score_graddot)
    if factors.supported(prob, X[:1]):  # Linear / Conv2d networks (both models here)
        fns["factored"] = factored
    for fn in fns.values():
        fn()  # warm-up (vmap tracing, allocator)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(max(3, job["repeats"])):  # round-robin: a slow spell of the machine hits every method alike
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    model.zero_grad(set_to_none=True)
    return dict(n_params=prob.p, **times, base_mb=base, peak_mb=_peak_mb())


def _method(job: dict[str, Any]) -> dict[str, Any]:
    import warnings

    import torch

    import ifkit

    torch.manual_seed(0)
    model = _model("mlp", tuple(job["hidden"]))
    X, y = _data(job["n"], 1)
    Xv, yv = _data(job["n_val"], 2)
    opts: dict[str, Any] = {"budget_s": None}  # a benchmark measures whatever it takes (its own timeout bounds it)
    if job["method"] == "tracin":
        opts["checkpoints"] = _tracin_checkpoints(model)
    base = _peak_mb()
    times = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # CG's "iters reached" on an untrained model: we time the default budget
        for _ in range(job["repeats"]):
            t0 = time.perf_counter()
            s = ifkit.score(job["method"], model, (X, y), (Xv, yv), **opts)
            times.append(time.perf_counter() - t0)
    assert s.shape == (job["n"],)
    return dict(n_params=sum(p.numel() for p in model.parameters()), times=times, base_mb=base, peak_mb=_peak_mb())


def _tracin_checkpoints(model) -> list:
    """Three nearby state_dicts (TracIn's checkpoints), the same for every run."""
    import copy

    import torch

    cps, m = [], copy.deepcopy(model)
    for _ in range(3):
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.01 * torch.randn_like(p))
        cps.append(copy.deepcopy(m.state_dict()))
    return cps


def _cache(job: dict[str, Any]) -> dict[str, Any]:
    """The CACHE_SEQUENCE of methods on one model, without and with a shared GradCache (fresh each repeat),
    round-robin; also checks that both give the same scores."""
    import warnings

    import torch

    import ifkit

    torch.manual_seed(0)
    model = _model(job["model"], tuple(job["hidden"]))
    X, y = _data(job["n"], 1)
    Xv, yv = _data(job["n_val"], 2)
    cps = _tracin_checkpoints(model)
    base = _peak_mb()

    def sequence(cache) -> dict[str, torch.Tensor]:
        out = {}
        for m in job["methods"]:
            opts: dict[str, Any] = {"checkpoints": cps} if m == "tracin" else {}
            out[m] = ifkit.score(m, model, (X, y), (Xv, yv), cache_grads=cache, **opts)
        return out

    times: dict[str, list[float]] = {"no_cache": [], "cache": []}
    scores: dict[str, dict[str, torch.Tensor]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(job["repeats"]):
            for k in times:
                t0 = time.perf_counter()
                scores[k] = sequence(ifkit.GradCache() if k == "cache" else False)
                times[k].append(time.perf_counter() - t0)
    a, b = scores["cache"], scores["no_cache"]
    agree = max(float((a[m] - b[m]).abs().max() / b[m].abs().max().clamp_min(1e-30)) for m in b)
    return dict(n_params=sum(p.numel() for p in model.parameters()), **times, max_rel_diff=agree, base_mb=base,
                peak_mb=_peak_mb())


def _clean(job: dict[str, Any]) -> dict[str, Any]:
    """ifkit.clean vs cleanlab's K-fold out-of-fold run, round-robin, wall and CPU seconds; what each flagged."""
    import numpy as np
    import torch
    from cleanlab.filter import find_label_issues
    from sklearn.model_selection import StratifiedKFold

    import ifkit
    from ifkit.data.splits import make_split
    from ifkit.optim.train import train

    split = make_split("fashion", n_train=job["n"], n_val=job["n_val"], n_test=100, noise="symmetric", rate=0.4,
                       seed=0)
    (X, y), flipped = split.train, split.flipped
    torch.manual_seed(0)
    model = _model(job["model"], tuple(job["hidden"]))
    recipe = dict(CLEAN_RECIPE, epochs=job["epochs"])
    base = _peak_mb()

    def fit():
        return train(model, (X, y), **recipe, n_checkpoints=min(5, recipe["epochs"]), seed=0, progress=False)

    def clean() -> Any:
        c = ifkit.clean(model, (X, y), split.val, checkpoints=run.checkpoints, seed=0)
        return torch.zeros(len(y), dtype=torch.bool).index_fill_(0, c.flagged, True)

    def cleanlab() -> Any:
        probs = np.zeros((len(y), 10))
        folds = StratifiedKFold(n_splits=job["folds"], shuffle=True, random_state=0)
        for k, (fold, held) in enumerate(folds.split(np.zeros(len(y)), y.numpy())):
            fold, held = torch.from_numpy(fold), torch.from_numpy(held)
            refit = train(model, (X[fold], y[fold]), **recipe, seed=k + 1, progress=False)
            with torch.no_grad():
                probs[held.numpy()] = torch.softmax(refit.model(X[held]), dim=1).numpy()
        return torch.from_numpy(find_label_issues(y.numpy(), probs, n_jobs=1))

    def timed(fn) -> tuple[float, float, Any]:
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        return time.perf_counter() - w, time.process_time() - c, out

    wall, cpu, run = timed(fit)
    res: dict[str, Any] = {"train": ([wall], [cpu], None)}
    for _ in range(job["repeats"]):  # round-robin: a slow spell of the machine hits both alike
        for name, fn in (("ifkit-clean", clean), ("cleanlab-5fold", cleanlab)):
            w, c, flags = timed(fn)
            walls, cpus, _ = res.setdefault(name, ([], [], None))
            hit, k = int((flags & flipped).sum()), int(flags.sum())
            note = f"flagged {k}, precision {hit / max(k, 1):.3f}, recall {hit / max(int(flipped.sum()), 1):.3f}"
            res[name] = ([*walls, w], [*cpus, c], note)
    return dict(n_params=sum(p.numel() for p in model.parameters()), base_mb=base, peak_mb=_peak_mb(),
                runs={k: list(v) for k, v in res.items()})


def _worker(job: dict[str, Any]) -> dict[str, Any]:
    if job.get("threads"):
        import torch

        torch.set_num_threads(job["threads"])
    return {"throughput": _throughput, "cache": _cache, "clean": _clean}.get(job["part"], _method)(job)


def _run_isolated(job: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Run one job in a fresh interpreter; {'error': ...} if it fails or times out."""
    try:
        out = subprocess.run([sys.executable, "-m", "ifkit.bench", json.dumps(job)], capture_output=True, text=True,
                             timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return dict(error=f"timeout after {timeout_s:.0f} s")
    if out.returncode != 0:
        return dict(error=(out.stderr.strip().splitlines() or [f"exit code {out.returncode}"])[-1][:200])
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------------------


def _rows(job: dict[str, Any], res: dict[str, Any], fast: bool) -> list[dict[str, Any]]:
    common = dict(part=job["part"], n_train=job["n"], repeats=job["repeats"], fast=fast,
                  note=f"{job['threads']} torch thread(s)" if job.get("threads") else None)
    if "error" in res:
        name = job.get("method") or job["model"]
        return [dict(common, model=job.get("model", "mlp"), method=name, note=res["error"])]
    mem = dict(peak_mb=res["peak_mb"], base_mb=res["base_mb"], extra_mb=res["peak_mb"] - res["base_mb"],
               n_params=res["n_params"])
    if job["part"] == "cache":
        rows = []
        for method, key in (("no-cache", "no_cache"), ("grad-cache", "cache")):
            ts = res[key]
            med = statistics.median(ts)
            ratio = statistics.median(t / b for t, b in zip(ts, res["no_cache"]))  # within each repeat
            note = f"{' + '.join(job['methods'])}; max rel. difference of scores {res['max_rel_diff']:.1e}"
            note += f"; {job['threads']} torch thread(s)" if job.get("threads") else ""
            rows.append(dict(common | {"note": note}, **mem, model=job["model"], method=method, seconds=med, seconds_min=min(ts),
                             seconds_max=max(ts), examples_per_s=job["n"] * len(job["methods"]) / med, ratio=ratio,
                             repeats=len(ts), note=note))
        return rows
    if job["part"] == "clean":
        base_walls = res["runs"]["cleanlab-5fold"][0]
        rows = []
        for method, (walls, cpus, note) in res["runs"].items():
            ratio = None if method == "train" else statistics.median(w / b for w, b in zip(walls, base_walls))
            recipe = f"{job['epochs']} epochs of Adam lr {CLEAN_RECIPE['lr']:g}, batch {CLEAN_RECIPE['batch_size']}"
            note = "; ".join(x for x in (note, recipe, f"{job['n_val']} validation points", common["note"]) if x)
            rows.append(dict(common, **mem, model=job["model"], method=method, seconds=statistics.median(walls),
                             cpu_seconds=statistics.median(cpus), seconds_min=min(walls), seconds_max=max(walls),
                             examples_per_s=job["n"] / statistics.median(walls), ratio=ratio, repeats=len(walls),
                             note=note))
        return rows
    if job["part"] == "throughput":
        rows = []
        for method, key in THROUGHPUT_METHODS.items():
            if key not in res:
                continue
            ts = res[key]
            med = statistics.median(ts)
            ratio = statistics.median(t / b for t, b in zip(ts, res["batched"]))  # within each repeat
            rows.append(dict(common, **mem, model=job["model"], method=method, seconds=med, seconds_min=min(ts),
                             seconds_max=max(ts), examples_per_s=job["n"] / med, ratio=ratio, repeats=len(ts)))
        return rows
    ts = res["times"]
    med = statistics.median(ts)
    return [dict(common, **mem, model="mlp", method=job["method"], seconds=med, seconds_min=min(ts),
                 seconds_max=max(ts), examples_per_s=job["n"] / med)]


def _write(rows: list[dict[str, Any]], out: Path) -> None:
    df = pd.DataFrame(rows, columns=COLUMNS)
    tmp = out.with_suffix(".tmp.csv")
    df.to_csv(tmp, index=False)
    tmp.replace(out)  # atomic: a reader never sees a half-written file


def jobs(fast: bool, sizes=None, methods=METHODS, throughput_models=("mlp", "cnn"), throughput_n=None,
         repeats=None, hidden=(128,), n_val=N_VAL, cache_models=("mlp", "cnn"), cache_n=None,
         cache_methods=None, clean_models=("mlp", "cnn"), clean_n=None, clean_val=CLEAN_VAL, clean_epochs=None,
         clean_repeats=None) -> list[dict[str, Any]]:
    cfg = config(fast)
    r = repeats or cfg["repeats"]
    threads = int(os.environ.get("IFKIT_BENCH_THREADS", "0")) or None  # e.g. 1 on a machine shared with others
    out = [dict(part="throughput", model=m, n=throughput_n or cfg["throughput_n"], repeats=r, hidden=list(hidden))
           for m in throughput_models]
    out += [dict(part="cache", model=m, n=cache_n or cfg["cache_n"][m], repeats=r, hidden=list(hidden), n_val=n_val,
                 methods=list(cache_methods or CACHE_SEQUENCE[m])) for m in cache_models]
    out += [dict(part="methods", method=m, n=n, repeats=r, hidden=list(hidden), n_val=n_val)
            for n in (sizes or cfg["sizes"]) for m in methods]
    out += [dict(part="clean", model=m, n=clean_n or cfg["clean_n"], repeats=clean_repeats or r, hidden=list(hidden),
                 n_val=clean_val, epochs=clean_epochs or cfg["clean_epochs"], folds=CLEAN_FOLDS)
            for m in clean_models]
    return [dict(j, threads=threads) for j in out]


def main(out: str | Path = "results/bench.csv", fast: bool | None = None, resume: bool = True,
         progress: bool = True, **job_options: Any) -> int:
    """Run the benchmark and write the tidy CSV ``out``; returns 0, or 1 if any measurement failed.

    ``job_options`` (sizes, methods, throughput_models, throughput_n, repeats, hidden, n_val, clean_models,
    clean_n, clean_val, clean_epochs, clean_repeats, ...: ``jobs``' arguments) shrink the run, e.g. for tests.
    """
    from tqdm.auto import tqdm

    fast = fast_from_env() if fast is None else fast
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    if resume and out.is_file():
        old = pd.read_csv(out)
        rows = old[old["seconds"].notna()].to_dict("records")  # failed rows are retried
    by_model = ("throughput", "cache", "clean")  # parts whose job is one model (several rows), not one method
    done = {(r["part"], r["model"] if r["part"] in by_model else r["method"], r["n_train"]) for r in rows}
    todo = [j for j in jobs(fast, **job_options)
            if (j["part"], j["model"] if j["part"] in by_model else j["method"], j["n"]) not in done]
    failed = 0
    bar = tqdm(todo, desc="bench", disable=not progress)
    for job in bar:
        bar.set_postfix_str(f"{job.get('model') or job['method']} n={job['n']:,}")
        res = _run_isolated(job, config(fast)["timeout_s"])
        failed += "error" in res
        rows += _rows(job, res, fast)
        _write(rows, out)
    if not todo:
        _write(rows, out)
    summary = pd.DataFrame(rows, columns=COLUMNS)
    if progress and len(summary):
        print(summary[["part", "model", "method", "n_train", "seconds", "peak_mb", "ratio", "note"]]
              .to_string(index=False, float_format=lambda x: f"{x:,.3g}"))
    return int(failed > 0)


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1].startswith("{"):
        print(json.dumps(_worker(json.loads(sys.argv[1]))))
    else:
        sys.exit(main(*(sys.argv[1:2] or ["results/bench.csv"])))
