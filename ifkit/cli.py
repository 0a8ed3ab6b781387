"""The ``ifkit`` command.

    ifkit reproduce EXPERIMENT [--fast] [--seeds N] [--out results/]   # a registered name, or "all"
    ifkit figures [--results results/] [--out figures/]
    ifkit bench [--out results/bench.csv]

``IFKIT_FAST=1`` in the environment has the same effect as ``--fast`` (CI sets it).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

# Seeds when --seeds is not given: one quick seed for CI, several for the reported numbers.
DEFAULT_SEEDS = {True: 1, False: 3}


def fast_from_env() -> bool:
    """True when the IFKIT_FAST environment variable is set to anything but "" or "0"."""
    return os.environ.get("IFKIT_FAST", "0") not in ("", "0")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ifkit",
        description="Influence functions with flat validation minima: reproduce the experiments and figures.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    rep = sub.add_parser("reproduce", help="run an experiment and write its tidy CSV to --out")
    rep.add_argument("experiment", metavar="EXPERIMENT", help='a registered experiment name, or "all"')
    rep.add_argument("--fast", action="store_true", help="small sizes for CI (also set by IFKIT_FAST=1)")
    rep.add_argument("--seeds", type=int, default=None, help="number of seeds (default: 1 fast, 3 full)")
    rep.add_argument("--out", type=Path, default=Path("results"), help="results folder (default: results/)")
    rep.set_defaults(subparser=rep)  # so usage errors print this subcommand's usage

    fig = sub.add_parser("figures", help="draw every figure whose results exist")
    fig.add_argument(
        "--results", type=Path, default=Path("results"), help="results folder (default: results/)"
    )
    fig.add_argument("--out", type=Path, default=Path("figures"), help="figures folder (default: figures/)")

    bench = sub.add_parser("bench", help="time and memory of each method versus problem size")
    bench.add_argument("--out", type=Path, default=Path("results/bench.csv"), help="CSV to write")
    bench.set_defaults(subparser=bench)
    return parser


def _reproduce(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from ifkit.experiments import discover, run

    registry = discover()
    available = sorted(registry)
    if args.experiment != "all" and args.experiment not in registry:
        parser.error(
            f"unknown experiment {args.experiment!r}; available: {', '.join(available + ['all'])}"
            if available
            else f"unknown experiment {args.experiment!r}; no experiments are registered yet"
        )
    if args.seeds is not None and args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    fast = args.fast or fast_from_env()
    seeds = args.seeds if args.seeds is not None else DEFAULT_SEEDS[fast]
    names = list(registry) if args.experiment == "all" else [args.experiment]
    if not names:
        print("no experiments are registered yet: nothing to reproduce", file=sys.stderr)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name in names:
        print(f"== {name} (fast={fast}, seeds={seeds}, out={args.out})", flush=True)
        start = time.perf_counter()
        run(name, fast, seeds, args.out)
        print(f"== {name} done in {time.perf_counter() - start:.1f} s", flush=True)
    return 0


def _figures(args: argparse.Namespace) -> int:
    from ifkit.figures import save_all

    written = save_all(args.results, args.out)
    print(f"{len(written)} figure(s) written to {args.out}")
    return 0


def _bench(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if importlib.util.find_spec("ifkit.bench") is None:
        parser.exit(2, "ifkit bench: benchmarks are not available yet (no module ifkit.bench)\n")
    bench = importlib.import_module("ifkit.bench")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = bench.main(args.out)
    return result if isinstance(result, int) else 0


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
        return _figures(args)
    return _bench(args.subparser, args)


if __name__ == "__main__":
    sys.exit(main())
