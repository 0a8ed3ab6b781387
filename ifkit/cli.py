"""The ``ifkit`` command.

    ifkit reproduce EXPERIMENT [--fast] [--seeds N] [--out results/]   # a registered name, or "all"
    ifkit figures [--results results/] [--out figures/]
    ifkit bench [--out results/bench.csv]
    torchrun --nproc-per-node N -m ifkit.cli score-shards --model m.pt --data d.pt --method fvm --out s.csv

``IFKIT_FAST=1`` in the environment has the same effect as ``--fast`` (CI sets it).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path

# Seeds when --seeds is not given: one quick seed for CI, several for the reported numbers.
DEFAULT_SEEDS = {True: 1, False: 3}

# Measured wall-clock seconds per experiment on 2 CPU cores, (full, --fast), shown by `ifkit reproduce --help`:
# the `make reproduce` runs quoted in RESULTS.md (`ifkit reproduce all --jobs 2`, and the same with --fast, on a
# quiet machine: two workers, one core each, default seeds; worker 1 detection, relabel, ablation, gen-image,
# theory; worker 2 gen-text's two tasks, sentence then math). relabel runs after detection, on its networks.
# tests/test_cli.py checks that every registered experiment has a row.
EXPECTED_SECONDS = {
    "detection": (169, 7),
    "relabel": (206, 10),
    "ablation": (74, 1),
    "theory": (53, 7),
    "gen-text": (541, 43),
    "gen-image": (54, 3),
}
EXPECTED_NOTES = {
    "detection": "full includes the paper's Fig. 2/3 training dynamics",
    "relabel": "full: after detection in the same worker, reusing its networks",
    "gen-text": "one core; with --jobs 2 its two tasks run side by side: ~5 min",
}
# `ifkit reproduce all --jobs 2` (what `make reproduce` runs), full and --fast, without the figures (`ifkit
# figures`: ~15 s more).
EXPECTED_ALL_SECONDS = (558, 46)


def fast_from_env() -> bool:
    """True when the IFKIT_FAST environment variable is set to anything but "" or "0"."""
    return os.environ.get("IFKIT_FAST", "0") not in ("", "0")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ifkit",
        description="Influence functions with flat validation minima: reproduce the experiments and figures.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    rep = sub.add_parser("reproduce", help="run an experiment and write its tidy CSV to --out",
                         epilog=experiments_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    rep.add_argument("experiment", metavar="EXPERIMENT",
                     help='a registered experiment name, several separated by commas, or "all"')
    rep.add_argument("--fast", action="store_true", help="small sizes for CI (also set by IFKIT_FAST=1)")
    rep.add_argument("--seeds", type=int, default=None, help="number of seeds (default: 1 fast, 3 full)")
    rep.add_argument("--out", type=Path, default=Path("results"), help="results folder (default: results/)")
    rep.add_argument("--jobs", type=int, default=1,
                     help="worker processes for several experiments (make reproduce uses 2: one per core)")
    rep.set_defaults(subparser=rep)  # so usage errors print this subcommand's usage

    fig = sub.add_parser("figures", help="draw every figure whose results exist")
    fig.add_argument(
        "--results", type=Path, default=Path("results"), help="results folder (default: results/)"
    )
    fig.add_argument("--out", type=Path, default=Path("figures"), help="figures folder (default: figures/)")
    fig.set_defaults(subparser=fig)

    bench = sub.add_parser("bench", help="time and memory of each method versus problem size")
    bench.add_argument("--out", type=Path, default=Path("results/bench.csv"), help="CSV to write")
    bench.set_defaults(subparser=bench)

    sh = sub.add_parser(
        "score-shards",
        help="score a saved model's training set, sharded over torchrun ranks",
        description="Run ifkit.score on a saved model and data set. Under torchrun each rank scores a shard of the "
        "training set and rank 0 writes the scores in the original order; without torchrun it runs in one "
        "process. Example: torchrun --nproc-per-node 2 -m ifkit.cli score-shards --model model.pt "
        "--data data.pt --method fvm --out scores.csv",
    )
    sh.add_argument("--model", type=Path, required=True,
                    help="a whole module saved with torch.save(model) (unpickled: load trusted files only)")
    sh.add_argument("--data", type=Path, required=True,
                    help="a torch.save'd dict of tensors with keys " + ", ".join(DATA_KEYS))
    sh.add_argument("--method", required=True, help="an ifkit method, e.g. fvm, if-cg, graddot, datainf")
    sh.add_argument("--out", type=Path, required=True,
                    help="scores file: .pt (a float tensor of shape (n_train,)) or .csv (columns index,score)")
    sh.add_argument("--damping", type=float, default=None, help="damping (default: the method's)")
    sh.add_argument("--iters", type=int, default=None, help="CG iterations / LiSSA depth")
    sh.add_argument("--tol", type=float, default=None, help="CG / LiSSA relative tolerance")
    sh.add_argument("--curvature", default=None, help='e.g. "exact", "ggn", "cg", "ggn-cg"')
    sh.add_argument("--params", default=None, help="comma-separated parameter names to differentiate")
    sh.add_argument("--flat-steps", type=int, default=None, help="VM/FVM fine-tuning steps on S_val")
    sh.add_argument("--chunk-size", type=int, default=None, help="training rows per gradient chunk")
    sh.add_argument("--seed", type=int, default=None, help="seed of the stochastic methods")
    sh.add_argument("--backend", choices=("auto", "gloo", "nccl"), default="auto",
                    help="process-group backend (auto: nccl when CUDA is available, else gloo)")
    sh.add_argument("--timeout", type=float, default=600.0,
                    help="seconds a rank waits in a collective before failing (default 600)")
    sh.set_defaults(subparser=sh)
    return parser


DATA_KEYS = ("X_train", "y_train", "X_val", "y_val")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 100 else f"{seconds / 60:.1f} min"


def experiments_epilog() -> str:
    """The experiments and their measured run times, for ``ifkit reproduce --help`` (imports no experiment)."""
    width = max(map(len, EXPECTED_SECONDS))
    lines = ["experiments (measured wall time on 2 CPU cores; full size / --fast):"]
    for name, (full, fast) in EXPECTED_SECONDS.items():
        note = f"  ({EXPECTED_NOTES[name]})" if name in EXPECTED_NOTES else ""
        lines.append(f"  {name:<{width}}  {_duration(full):>8} / {_duration(fast):>5}{note}")
    full, fast = EXPECTED_ALL_SECONDS
    lines.append(f"  {'all':<{width}}  {_duration(full):>8} / {_duration(fast):>5}  (with --jobs 2, as in "
                 "`make reproduce`)")
    lines.append("")
    lines.append("examples: ifkit reproduce detection --fast;  ifkit reproduce all --jobs 2;  "
                 "ifkit reproduce theory,ablation")
    return "\n".join(lines)


# Experiments that share one process: relabel reuses detection's trained networks (an in-process cache; the
# ablation would too, but balancing the two workers saves more time than its six trainings cost). gen-text and
# gen-image may run side by side: both write results/generation.csv, and ResultsTable merges under a lock.
TOGETHER = (("detection", "relabel"),)
# Rough full-mode minutes on one core, to balance --jobs workers (a part: its own entry, else its experiment's
# share); unknown names: 5.
MINUTES = {"detection": 2.8, "relabel": 3.4, "ablation": 1.6, "theory": 0.9, "gen-text": 9, "gen-text:sentence": 5.1,
           "gen-text:math": 3.9, "gen-image": 0.85}


def _minutes(name: str, parts: Mapping[str, Sequence[str]]) -> float:
    """MINUTES of an experiment or part; a part without an entry of its own: its experiment's share."""
    if name in MINUTES:
        return MINUTES[name]
    base, _, part = name.partition(":")
    return MINUTES.get(base, 5) / max(1, len(parts.get(base, ()))) if part else 5


def plan_jobs(names: Sequence[str], jobs: int, parts: Mapping[str, Sequence[str]] | None = None
              ) -> list[list[str]]:
    """Split experiments over ``jobs`` worker processes: an experiment with ``parts`` becomes one unit per part
    (``NAME:PART``), TOGETHER groups stay whole, then longest first onto the least loaded worker. Order inside a
    worker follows ``names``, a TOGETHER group kept in one piece."""
    parts = parts or {}
    if jobs > 1:  # an experiment's parts are units of their own
        names = [u for n in names for u in ([f"{n}:{p}" for p in parts[n]] if parts.get(n) else [n])]
    units, seen = [], set()
    for group in TOGETHER:
        members = [n for n in names if n in group]
        if members:
            units.append(members)
            seen.update(members)
    units += [[n] for n in names if n not in seen]
    units.sort(key=lambda u: -sum(_minutes(n, parts) for n in u))
    workers: list[list[list[str]]] = [[] for _ in range(max(1, min(jobs, len(units))))]
    for unit in units:
        min(workers, key=lambda w: sum(_minutes(n, parts) for u in w for n in u)).append(unit)
    # a TOGETHER group stays contiguous: relabel runs right after detection, on its networks
    return [[n for u in sorted(w, key=lambda u: list(names).index(u[0])) for n in u] for w in workers if w]


def _reproduce(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from ifkit.experiments import PARTS, discover, run, split_part

    registry = discover()
    available = sorted(registry)
    wanted = list(registry) if args.experiment == "all" else args.experiment.split(",")
    unknown = [n for n in wanted if split_part(n)[0] not in registry]
    for name in wanted:
        base, part = split_part(name)
        if base in registry and part is not None and part not in PARTS.get(base, ()):
            known = f"the parts {', '.join(PARTS[base])}" if PARTS.get(base) else "no parts"
            parser.error(f"{name!r}: {base} has {known}; `ifkit reproduce {base}` runs it whole")
    if unknown:
        parser.error(
            f"unknown experiment {unknown[0]!r}; available: {', '.join(available + ['all'])}"
            if available
            else f"unknown experiment {unknown[0]!r}; no experiments are registered yet"
        )
    if args.seeds is not None and args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    _refuse(parser, _checks().check_writable_folder(args.out, "--out"))
    fast = args.fast or fast_from_env()
    seeds = args.seeds if args.seeds is not None else DEFAULT_SEEDS[fast]
    names = wanted
    if not names:
        print("no experiments are registered yet: nothing to reproduce", file=sys.stderr)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    plan = plan_jobs(names, args.jobs, PARTS)
    if len(plan) > 1:
        return _reproduce_parallel(plan, fast, seeds, args.out)
    for name in plan[0]:  # names, a TOGETHER group in one piece
        print(f"== {name} (fast={fast}, seeds={seeds}, out={args.out})", flush=True)
        start = time.perf_counter()
        run(name, fast, seeds, args.out)
        print(f"== {name} done in {time.perf_counter() - start:.1f} s", flush=True)
    return 0


def _reproduce_parallel(plan: list[list[str]], fast: bool, seeds: int, out: Path) -> int:
    """One ``ifkit reproduce a,b`` subprocess per worker (each single-threaded inside); fail if any fails."""
    import subprocess

    start = time.perf_counter()
    procs = []
    for names in plan:
        cmd = [sys.executable, "-m", "ifkit.cli", "reproduce", ",".join(names), "--seeds", str(seeds),
               "--out", str(out), "--jobs", "1"] + (["--fast"] if fast else [])
        print(f"== worker {len(procs) + 1}: {', '.join(names)}", flush=True)
        procs.append((names, subprocess.Popen(cmd)))
    failed = [(names, p.wait()) for names, p in procs]
    failed = [(names, rc) for names, rc in failed if rc != 0]
    print(f"== all workers done in {time.perf_counter() - start:.1f} s", flush=True)
    for names, rc in failed:
        print(f"worker running {', '.join(names)} failed with exit code {rc}; rerun it alone with "
              f"`ifkit reproduce {','.join(names)}` (finished rows are kept)", file=sys.stderr)
    return 1 if failed else 0


def _figures(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from ifkit.viz.figures import save_all

    _refuse(parser, _checks().check_writable_folder(args.out, "--out"))

    written = save_all(args.results, args.out)
    print(f"{len(written)} figure(s) written to {args.out}")
    return 0


def _bench(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if importlib.util.find_spec("ifkit.bench") is None:
        parser.exit(2, "ifkit bench: benchmarks are not available yet (no module ifkit.bench)\n")
    bench = importlib.import_module("ifkit.bench")
    _refuse(parser, _checks().check_writable_file(args.out, "--out"))
    result = bench.main(args.out)
    return result if isinstance(result, int) else 0


def _score_shards(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """ifkit.score under torchrun (or in one process): rank 0 writes the gathered scores atomically."""
    import torch
    import torch.distributed as dist
    from torch.distributed.elastic.multiprocessing.errors import record

    import ifkit

    if args.method not in ifkit.METHODS:
        parser.error(f"unknown method {args.method!r}; available: {', '.join(ifkit.METHODS)}")
    if args.out.suffix not in (".pt", ".csv"):
        parser.error(f"--out must end in .pt or .csv, got {str(args.out)!r}")
    # -- refused before loading anything (ifkit/validation.py) --
    checks = _checks()
    for problem in (checks.check_readable_file(args.model, "--model"), checks.check_readable_file(args.data, "--data"),
                    checks.check_writable_file(args.out, "--out")):
        _refuse(parser, problem)
    try:
        params = checks.check_param_names(args.params)
    except ValueError as e:
        parser.error(str(e))
    try:
        data = torch.load(args.data, weights_only=True)
    except Exception as e:  # noqa: BLE001 -- not a torch.save file (or not tensors): say which and how to save it
        parser.error(f"--data {args.data} cannot be read by torch.load ({(str(e).strip() or type(e).__name__).splitlines()[0][:200]}): "
                     f"save it with torch.save({{{', '.join(repr(k) + ': tensor' for k in DATA_KEYS)}}}, path)")
    # --
    missing = [k for k in DATA_KEYS if not isinstance(data, dict) or k not in data]
    if missing:
        parser.error(f"--data {args.data} must hold a dict with keys {', '.join(DATA_KEYS)}; "
                     f"missing: {', '.join(missing)}")
    options = dict(damping=args.damping, iters=args.iters, tol=args.tol, curvature=args.curvature,
                   flat_steps=args.flat_steps, chunk_size=args.chunk_size, seed=args.seed,
                   params=params)
    options = {k: v for k, v in options.items() if v is not None}  # unset: the method's own default
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ  # set by torchrun
    backend = args.backend if args.backend != "auto" else ("nccl" if torch.cuda.is_available() else "gloo")

    # record(): under torchrun a failing rank's traceback is written where the launcher reports it as the
    # root cause, and the launcher stops the other ranks (the process-group timeout covers a rank that hangs).
    @record
    def run() -> None:
        if launched:
            if backend == "nccl":
                local = int(os.environ.get("LOCAL_RANK", "0"))
                torch.cuda.set_device(local)
                options["device"] = f"cuda:{local}"
            dist.init_process_group(backend, timeout=timedelta(seconds=args.timeout))
        try:
            model = torch.load(args.model, weights_only=False, map_location="cpu")
            if not isinstance(model, torch.nn.Module):
                raise TypeError(f"--model {args.model} holds a {type(model).__name__}, not a torch.nn.Module: save "
                                "the whole model with torch.save(model, path)")
            start = time.perf_counter()
            scores = ifkit.score(args.method, model, train=(data["X_train"], data["y_train"]),
                                 val=(data["X_val"], data["y_val"]), **options).cpu()
            rank, size = (dist.get_rank(), dist.get_world_size()) if launched else (0, 1)
            if rank == 0:
                _write_scores(scores, args.out)
                print(f"{args.method}: {len(scores)} scores on {size} rank(s) in "
                      f"{time.perf_counter() - start:.1f} s -> {args.out}", flush=True)
        finally:
            if launched:
                dist.destroy_process_group()

    run()
    return 0


def _checks():
    """ifkit.validation, imported when a command runs (it imports torch: `ifkit --help` stays instant)."""
    return importlib.import_module("ifkit.validation")


def _refuse(parser: argparse.ArgumentParser, problem: str | None) -> None:
    """A usage error (exit code 2) with ``problem`` as the message, when there is one."""
    if problem:
        parser.error(problem)


def _write_scores(scores, out: Path) -> None:
    """Write scores to out (.pt tensor or .csv index,score) through a temp file + rename: never half a file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    if out.suffix == ".pt":
        import torch

        torch.save(scores, tmp)
    else:
        rows = "".join(f"{i},{s!r}\n" for i, s in enumerate(scores.tolist()))  # repr: round-trips exactly
        tmp.write_text("index,score\n" + rows)
    os.replace(tmp, out)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ifkit`` console script.

    Args:
        argv: arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        Process exit code (argparse exits with 2 on usage errors).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "reproduce":
        return _reproduce(args.subparser, args)
    if args.command == "figures":
        return _figures(args.subparser, args)
    if args.command == "score-shards":
        return _score_shards(args.subparser, args)
    return _bench(args.subparser, args)


if __name__ == "__main__":
    sys.exit(main())
