"""The ``ifkit`` command.

    ifkit reproduce EXPERIMENT [--fast] [--seeds N | --seeds S1 S2 ...] [--out results/]   # a name, or "all"
    ifkit figures [--results results/] [--out figures/]
    ifkit bench [--out results/bench.csv]
    torchrun --nproc-per-node N -m ifkit.cli score-shards --model m.pt --data d.pt --method fvm --out s.csv

``IFKIT_FAST=1`` in the environment has the same effect as ``--fast`` (CI sets it).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import os
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path

from ifkit.experiments import Meta, full_seconds, split_part
from ifkit.folders import check_writable_file, check_writable_folder

DEFAULT_SEEDS = {True: 1, False: 3}  # without --seeds: one quick seed for CI, several for the reported numbers

def expected_all_seconds(meta: Mapping[str, Meta]) -> tuple[float, float]:
    """`reproduce all --jobs 2` (`make reproduce`), full and --fast: the busier worker's sum of declared times."""
    workers = plan_jobs([n for n, m in meta.items() if m.in_all], 2, meta)
    return tuple(max(sum(full_seconds(n, meta, fast) for n in w) for w in workers) for fast in (False, True))


class _LazyEpilogParser(argparse.ArgumentParser):
    """An ArgumentParser whose epilog is made when its help is shown (``epilog_fn``): ``ifkit reproduce --help``
    imports the experiments to read the times they declare, and no other command pays for that import."""

    def __init__(self, *args, epilog_fn: Callable[[], str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.epilog_fn = epilog_fn

    def format_help(self) -> str:
        if self.epilog_fn is not None:
            self.epilog = self.epilog_fn()
        return super().format_help()


def fast_from_env() -> bool:
    """True when the IFKIT_FAST environment variable is set to anything but "" or "0"."""
    return os.environ.get("IFKIT_FAST", "0") not in ("", "0")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ifkit",
        description="Influence functions with flat validation minima: reproduce the experiments and figures.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_LazyEpilogParser)

    rep = sub.add_parser("reproduce", help="run an experiment and write its tidy CSV to --out",
                         epilog_fn=experiments_epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    rep.add_argument("experiment", metavar="EXPERIMENT",
                     help='a registered experiment name, several separated by commas, or "all"')
    rep.add_argument("--fast", action="store_true", help="small CI sizes; 8x8 digits, not Fashion-MNIST (also IFKIT_FAST=1)")
    rep.add_argument("--seeds", type=int, nargs="+", default=None, metavar="N", help="one number: how many seeds "
                     "(0..N-1; default: 1 fast, 3 full); several: the seeds, e.g. --seeds 0 1 2 3 4 (gen-text)")
    rep.add_argument("--out", type=Path, default=Path("results"), help="results folder (default: results/)")
    rep.add_argument("--no-cache", action="store_true",
                     help="ignore the work cache (trained networks, leave-one-out refits) kept in OUT/.cache/ so "
                          "that a rerun resumes its work, not only its rows; clear it with rm -rf OUT/.cache "
                          "(also IFKIT_CACHE=0)")
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
                    help="a model saved with ifkit.save_model(model, path, args=...): its class name, constructor "
                    "arguments and state_dict, loaded with weights_only=True (nothing in the file runs)")
    sh.add_argument("--data", type=Path, required=True,
                    help="a torch.save'd dict of tensors with keys " + ", ".join(DATA_KEYS))
    sh.add_argument("--trust-pickle", action="store_true",
                    help="also accept a whole pickled model (torch.save(model, path)) or data with Python objects: "
                    "unpickling RUNS ARBITRARY CODE from the files, so use it only for files you made yourself")
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
    """The experiments and their measured run times (``register(..., seconds=...)``), for ``ifkit reproduce --help``."""
    from ifkit.experiments import META, discover

    discover()
    width = max(map(len, META), default=3)
    lines = ["experiments (measured wall time on 2 CPU cores; full size / --fast):"]
    for name, meta in META.items():
        full, fast = meta.seconds
        note = f"  ({meta.note})" if meta.note else ""
        lines.append(f"  {name:<{width}}  {_duration(full):>8} / {_duration(fast):>5}{note}")
    full, fast = expected_all_seconds(META)
    lines.append(f"  {'all':<{width}}  {_duration(full):>8} / {_duration(fast):>5}  (with --jobs 2, as in `make "
                 f"reproduce`: the busier worker's sum; not in all: {', '.join(n for n, m in META.items() if not m.in_all)})")
    lines.append("")
    lines.append("examples: ifkit reproduce detection --fast;  ifkit reproduce all --jobs 2;  "
                 "ifkit reproduce theory,ablation")
    return "\n".join(lines)


def _groups(names: Sequence[str], meta: Mapping[str, Meta]) -> list[list[str]]:
    """``names`` as units that stay in one worker: an experiment joins the group of one it runs ``after``
    (``register(..., after=...)``) when both are asked for, behind it; the rest are units of their own."""
    present = set(names)
    lead = {n: next((a for a in meta.get(split_part(n)[0], Meta()).after if a in present and a != n), None)
            for n in names}
    groups: dict[str, list[str]] = {n: [n] for n in names if lead[n] is None}
    for n in names:
        root, seen = n, {n}
        while lead.get(root) is not None and lead[root] not in seen:
            root = lead[root]
            seen.add(root)
        if root != n:
            groups.setdefault(root, [root]).append(n)
    return list(groups.values())


def plan_jobs(names: Sequence[str], jobs: int, meta: Mapping[str, Meta] | None = None) -> list[list[str]]:
    """Split experiments over ``jobs`` worker processes, from what each declares in ``register`` (``meta``,
    default: every discovered experiment's): with ``jobs > 1`` an experiment with parts becomes one unit per part
    (``NAME:PART``); an experiment that runs ``after`` another stays in its worker, right behind it; then the
    longest units first (full-size seconds) onto the least loaded worker. Order inside a worker follows ``names``."""
    if meta is None:
        from ifkit.experiments import META, discover

        discover()
        meta = META
    if jobs > 1:  # an experiment's parts are units of their own
        names = [u for n in names for u in ([f"{n}:{p}" for p in meta[n].parts] if n in meta and meta[n].parts
                                            else [n])]
    units = _groups(names, meta)
    units.sort(key=lambda u: -sum(full_seconds(n, meta) for n in u))
    workers: list[list[list[str]]] = [[] for _ in range(max(1, min(jobs, len(units))))]
    for unit in units:
        min(workers, key=lambda w: sum(full_seconds(n, meta) for u in w for n in u)).append(unit)
    return [[n for u in sorted(w, key=lambda u: list(names).index(u[0])) for n in u] for w in workers if w]


@contextlib.contextmanager
def warnings_above_progress_bars():
    """While active, every warning is printed with ``tqdm.write``: on a line of its own above the progress bars
    (a plain ``warnings.warn`` writes into the middle of the bar's line), and the bars are redrawn below it."""
    from tqdm.auto import tqdm

    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        text = warnings.formatwarning(message, category, filename, lineno, line)
        tqdm.write(text.rstrip("\n"), file=file or sys.stderr)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


def _reproduce(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from ifkit.experiments import META, PARTS, discover, run, split_part

    registry = discover()
    available = sorted(registry)
    wanted = [n for n in registry if META[n].in_all] if args.experiment == "all" else args.experiment.split(",")
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
    given = _seeds(parser, args.seeds, wanted, META)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    _refuse(parser, check_writable_folder(args.out, "--out"))  # no torch: a --jobs parent only coordinates
    fast = args.fast or fast_from_env()
    seeds = given if given is not None else DEFAULT_SEEDS[fast]
    names = wanted
    if not names:
        print("no experiments are registered yet: nothing to reproduce", file=sys.stderr)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    if args.no_cache:  # read by ifkit.experiments.cache here and, inherited, in the --jobs workers
        os.environ["IFKIT_CACHE"] = "0"
    plan = plan_jobs(names, args.jobs, META)
    if len(plan) > 1:
        return _reproduce_parallel(plan, fast, seeds, args.out)
    store: dict = {}  # what the experiments of this worker share (register(..., shares=...)): detection's networks
    with warnings_above_progress_bars():
        for name in plan[0]:  # names, an `after` group in one piece
            print(f"== {name} (fast={fast}, seeds={seeds}, out={args.out})", flush=True)
            start = time.perf_counter()
            run(name, fast, seeds, args.out, store)
            print(f"== {name} done in {time.perf_counter() - start:.1f} s", flush=True)
    return 0


def _seeds(parser: argparse.ArgumentParser, given: list[int] | None, names: Sequence[str],
           meta: Mapping[str, Meta]) -> int | tuple[int, ...] | None:
    """--seeds: None, one number (a count >= 1), or the seeds (distinct, >= 0; ``register(..., seed_lists=True)``)."""
    if not given:
        return None
    if len(given) == 1:
        if given[0] < 1:
            parser.error(f"--seeds must be >= 1, got {given[0]} (one number is a count; list several seeds to "
                         "pick them)")
        return given[0]
    if min(given) < 0 or len(set(given)) != len(given):
        parser.error(f"--seeds {' '.join(map(str, given))}: the seeds must be distinct and >= 0")
    refuse = [n for n in names if not meta.get(split_part(n)[0], Meta()).seed_lists]
    if refuse:
        parser.error(f"{', '.join(refuse)} take(s) a count of seeds (--seeds N), not a list; a list of seeds "
                     "works for: " + ", ".join(k for k, m in meta.items() if m.seed_lists))
    return tuple(given)


def _reproduce_parallel(plan: list[list[str]], fast: bool, seeds: int | tuple[int, ...], out: Path) -> int:
    """One ``ifkit reproduce a,b`` subprocess per worker (each single-threaded inside); fail if any fails. The
    workers die with this process, however it ends (ifkit/workers.py)."""
    from ifkit.workers import run_workers

    start = time.perf_counter()
    cmds = []
    for names in plan:
        seed_args = [str(s) for s in (seeds if isinstance(seeds, tuple) else (seeds,))]
        cmds.append([sys.executable, "-m", "ifkit.cli", "reproduce", ",".join(names), "--seeds", *seed_args,
                     "--out", str(out), "--jobs", "1"] + (["--fast"] if fast else []))
        print(f"== worker {len(cmds)}: {', '.join(names)}", flush=True)
    failed = [(names, rc) for names, rc in zip(plan, run_workers(cmds)) if rc != 0]
    print(f"== all workers done in {time.perf_counter() - start:.1f} s", flush=True)
    for names, rc in failed:
        print(f"worker running {', '.join(names)} failed with exit code {rc}; rerun it alone with "
              f"`ifkit reproduce {','.join(names)}` (finished rows are kept)", file=sys.stderr)
    return 1 if failed else 0


def _figures(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from ifkit.viz.figures import save_all

    _refuse(parser, check_writable_folder(args.out, "--out"))

    written = save_all(args.results, args.out)
    print(f"{len(written)} figure(s) written to {args.out}")
    return 0


def _bench(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if importlib.util.find_spec("ifkit.bench") is None:
        parser.exit(2, "ifkit bench: benchmarks are not available yet (no module ifkit.bench)\n")
    bench = importlib.import_module("ifkit.bench")
    _refuse(parser, check_writable_file(args.out, "--out"))
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
    model, data = _load_inputs(parser, args)
    missing = [k for k in DATA_KEYS if not isinstance(data, dict) or k not in data]
    if missing:
        parser.error(f"--data {args.data} must hold a dict with keys {', '.join(DATA_KEYS)}; "
                     f"missing: {', '.join(missing)}")
    options = {k: v for k, v in dict(damping=args.damping, iters=args.iters, tol=args.tol, curvature=args.curvature,
               flat_steps=args.flat_steps, chunk_size=args.chunk_size, seed=args.seed, params=params).items()
               if v is not None}  # unset: the method's own default
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
            start = time.perf_counter()
            scores = ifkit.score(args.method, model, train=(data["X_train"], data["y_train"]),
                                 val=(data["X_val"], data["y_val"]), **options).cpu()
            rank, size = (dist.get_rank(), dist.get_world_size()) if launched else (0, 1)
            if rank == 0:
                _write_scores(scores, args.out)
                print(f"{args.method}: {len(scores)} scores on {size} rank(s) in "
                      f"{time.perf_counter() - start:.1f} s -> {args.out}", flush=True)
            if launched:  # no rank tears down its gloo pairs while another is still on its way out
                dist.barrier()
        finally:
            if launched:
                dist.destroy_process_group()

    run()
    return 0


def _load_inputs(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple:
    """(model, data) of score-shards, read as plain data unless --trust-pickle; a refused file is a usage error."""
    from ifkit.modelfile import load_model, load_tensors

    loaded = []
    for flag, path, load in (("--model", args.model, load_model), ("--data", args.data, load_tensors)):
        try:
            loaded.append(load(path, trust_pickle=args.trust_pickle))
        except (OSError, ValueError, TypeError) as err:
            parser.error(str(err))
        except Exception as err:  # noqa: BLE001 -- a damaged or foreign file: say which, and how to write one
            first = (str(err).strip() or type(err).__name__).splitlines()[0][:200]
            parser.error(f"{flag} {path} cannot be read by torch.load ({first}): save models with "
                         "ifkit.save_model(model, path, args=...) and data with torch.save({name: tensor}, path)")
    return tuple(loaded)


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
    try:
        if out.suffix == ".pt":
            import torch

            torch.save(scores, tmp)
        else:
            rows = "".join(f"{i},{s!r}\n" for i, s in enumerate(scores.tolist()))  # repr: round-trips exactly
            tmp.write_text("index,score\n" + rows)
        os.replace(tmp, out)
    except BaseException:  # a full disk or a signal: no half-written temp file left behind
        tmp.unlink(missing_ok=True)
        raise


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
        from ifkit.workers import guarded

        return guarded(lambda: _reproduce(args.subparser, args), "ifkit reproduce")
    if args.command == "figures":
        return _figures(args.subparser, args)
    if args.command == "score-shards":
        return _score_shards(args.subparser, args)
    return _bench(args.subparser, args)


if __name__ == "__main__":
    sys.exit(main())
