"""Peak memory of streaming per-sample gradients: 10,000 examples through a ~100k-parameter MLP.

Run: .venv/bin/python benchmarks/grad_memory.py [--n 10000] [--chunk-size 256]
Prints the baseline RSS (model + data loaded), the peak RSS while streaming all gradients (each chunk reduced to
a dot product, as every score does), and the extra memory. The gradients themselves would need n * p * 4 bytes
(~4 GB here) if held at once; streaming keeps only chunk_size of them alive.
"""

import argparse
import resource
import time

import torch

from ifkit.core import func


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--chunk-size", type=int, default=func.DEFAULT_CHUNK_SIZE)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 128), torch.nn.Tanh(), torch.nn.Linear(128, 10))
    X, y = torch.rand(args.n, 1, 28, 28), torch.randint(0, 10, (args.n,))
    prob = func.make_problem(model)
    v = torch.randn(prob.p)
    base = rss_mb()
    t0 = time.perf_counter()
    out = torch.cat([G @ v for _, G in func.iter_grads(prob, X, y, args.chunk_size)])  # (n,)
    secs = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"p={prob.p:,} n={args.n:,} chunk_size={args.chunk_size} scores={tuple(out.shape)}")
    print(f"seconds={secs:.2f} baseline_rss_mb={base:.0f} peak_rss_mb={peak:.0f} extra_mb={peak - base:.0f} "
          f"(all gradients at once would be {args.n * prob.p * 4 / 2**20:,.0f} MB)")


if __name__ == "__main__":
    main()
