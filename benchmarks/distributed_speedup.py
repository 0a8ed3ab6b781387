"""Measure the speed-up of ``ifkit.score`` on 2 torch.distributed ranks versus 1 process.

    .venv/bin/python benchmarks/distributed_speedup.py [--n-train 8000] [--reps 3] [--methods fvm,if-cg]

Workload: Fashion-MNIST, n_train training points with 30% symmetric noise, 100 validation points, a 784-32-10
tanh MLP (25k parameters) after 100 full-batch Adam steps. Each repetition starts torchrun once per setting
(settings interleaved, so a change in the machine's load hits all of them alike); inside, a warm-up call on 64
training points, then one timed call per method (a barrier before it; a call takes as long as its slowest
rank). The median over ``--reps`` repetitions is reported. Settings:

    1 rank x 1 thread     the per-core baseline (scaling efficiency)
    1 rank x 2 threads    what a plain single process gets on this 2-core machine (torch's intra-op threads)
    2 ranks x 1 thread    ifkit's sharded per-training-point pass (ifkit/core/distributed.py)

It also times, on 2 ranks, fvm's query side (fine-tuning on S_val + the validation curvature) against a gloo
broadcast of what that side produces (theta~ and the (r, p) low-rank factor), the alternative to computing it
redundantly on every rank.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SETTINGS = [(1, 1), (1, 2), (2, 1)]  # (ranks, threads per rank)
OPTIONS = {"fvm": {}, "if-cg": dict(damping=0.01, iters=100)}


def make_problem(n_train: int, path: Path) -> None:
    import ifkit.data
    from ifkit.models import MLP

    split = ifkit.data.make_split("fashion", n_train=n_train, n_val=100, n_test=100, noise="symmetric", rate=0.3,
                                  seed=0)
    torch.manual_seed(0)
    model = MLP(784, (32,), 10)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(100):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(split.X_train), split.y_train).backward()
        opt.step()
    torch.save((model.eval(), split.train, split.val), path)


def worker(args: argparse.Namespace) -> None:
    """Runs under torchrun: time each method; rank 0 prints one JSON line."""
    import torch.distributed as dist

    import ifkit
    from ifkit.core import distributed as D

    dist.init_process_group("gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    model, train, val = torch.load(args.problem, weights_only=False)
    result: dict[str, object] = {"ranks": size, "threads": torch.get_num_threads()}

    def timed(fn) -> float:
        dist.barrier()
        start = time.perf_counter()
        fn()
        t = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)  # a call ends when its slowest rank does
        return t.item()

    for method in args.methods.split(","):
        opts = OPTIONS.get(method, {})
        ifkit.score(method, model, (train[0][:64], train[1][:64]), val, **opts)  # warm-up: lazy inits
        result[method] = timed(lambda: ifkit.score(method, model, train, val, **opts))

    if size > 1:  # fvm's query side vs broadcasting its products from rank 0
        from ifkit.core.grads import GradEngine
        from ifkit.methods.flat import FVMOptions, flat_point

        ctx = GradEngine(model, *train, *val, FVMOptions())
        box = {}

        def query():  # theta~ and the validation curvature there (LowRankGGN: its (r, p) matrix A)
            point = flat_point(ctx)
            prob = point.problem(ctx)
            box.update(inv=point.curvature(prob, *val, ctx.opt, structured=False), prob=prob)
        result["fvm_query_side"] = timed(query)
        result["broadcast_query_side"] = timed(
            lambda: (D.broadcast(box["prob"].theta.clone(), ctx.world), D.broadcast(box["inv"].A.clone(), ctx.world)))
        result["fvm_A_shape"] = list(box["inv"].A.shape)
    if rank == 0:
        print("RESULT " + json.dumps(result), flush=True)
    dist.destroy_process_group()


def launch(ranks: int, threads: int, problem: Path, args: argparse.Namespace) -> dict:
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nnodes", "1", "--nproc-per-node", str(ranks), "--master-addr", "127.0.0.1",
           "--master-port", str(29500 + os.getpid() % 1000), __file__, "--worker", "--problem", str(problem),
           "--methods", args.methods]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-train", type=int, default=8000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--methods", default="fvm,if-cg")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--problem", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    with tempfile.TemporaryDirectory() as tmp:
        problem = Path(tmp) / "problem.pt"
        make_problem(args.n_train, problem)
        runs = [[launch(r, t, problem, args) for r, t in SETTINGS] for _ in range(args.reps)]  # [rep][setting]
    med = lambda i, key: statistics.median(run[i][key] for run in runs)  # noqa: E731
    print(f"Fashion-MNIST n_train={args.n_train}, 784-32-10 MLP, median of {args.reps} (seconds; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the end):")
    print(f"{'method':8s}" + "".join(f"{f'{r} rank x {t} thr':>18s}" for r, t in SETTINGS)
          + f"{'vs 1x1':>9s}{'vs 1x2':>9s}")
    for method in args.methods.split(","):
        m = [med(i, method) for i in range(len(SETTINGS))]
        print(f"{method:8s}" + "".join(f"{t:18.2f}" for t in m) + f"{m[0] / m[2]:8.2f}x{m[1] / m[2]:8.2f}x")
        print(f"{'':8s}" + "".join(f"{' '.join(f'{run[i][method]:.1f}' for run in runs):>18s}"
                                   for i in range(len(SETTINGS))) + "   (each run)")
    two = len(SETTINGS) - 1  # the 2-rank setting
    print(f"fvm query side (fine-tuning + curvature) {med(two, 'fvm_query_side'):.3f} s per rank; broadcasting its "
          f"products (theta~ and A {runs[0][two]['fvm_A_shape']}) from rank 0 instead: "
          f"{med(two, 'broadcast_query_side'):.3f} s")


if __name__ == "__main__":
    main()
