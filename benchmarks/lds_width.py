"""How many refits would the LDS interval target need? Where the width of gen-lds's interval comes from.

``ifkit.metrics.lds`` reports a 95% percentile bootstrap that resamples the queries AND the subsets. Its width
has two sources: the M random subsets (every query shares them) and the Q queries. This script reads the refits
that ``ifkit reproduce gen-lds`` cached (OUT/.cache/gen-lds; nothing is refit when the cache is complete), and per
task, benchmark, seed and method measures

    width_both     the reported interval's width (queries and subsets resampled)
    width_subsets  subsets resampled, queries fixed
    width_queries  queries resampled, subsets fixed
    width_half     the reported width on the first M/2 subsets only (checks the 1/sqrt(M) scaling)

and extrapolates the M that the width target needs, assuming the two variances add and the subsets' part falls
as 1/M:  width(M)^2 ~ width_subsets^2 * M0 / M + width_queries^2.  "inf" when the queries' part alone is wider
than the target (more queries, not more refits, would be needed).

Run (seconds when the cache is complete; the cache is keyed by the library's source, so run it with the same
ifkit that ran gen-lds):

    python benchmarks/lds_width.py [--out results] [--seeds 0 1] [--target 0.06] [--fast]

Writes ``OUT/lds_width.csv``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from ifkit.experiments import gen_lds as L
from ifkit.experiments.cache import Cache
from ifkit.metrics import _column_spearman, lds


def widths(P: np.ndarray, masks: np.ndarray, losses: np.ndarray, n_boot: int, seed: int) -> dict[str, float]:
    """The bootstrap widths of one method's LDS, resampling both, the subsets only or the queries only."""
    pred = masks.astype(float) @ P.T  # (M, Q)
    M, Q = pred.shape
    rng = np.random.default_rng(seed)
    out = {}
    for name, (rs_m, rs_q) in {"both": (True, True), "subsets": (True, False), "queries": (False, True)}.items():
        boot = []
        for _ in range(n_boot):
            m = rng.integers(M, size=M) if rs_m else np.arange(M)
            q = rng.integers(Q, size=Q) if rs_q else np.arange(Q)
            boot.append(np.nanmean(_column_spearman(pred[np.ix_(m, q)], losses[np.ix_(m, q)])))
        lo, hi = np.nanpercentile(boot, [2.5, 97.5])
        out[f"width_{name}"] = float(hi - lo)
    return out


def needed_subsets(w_sub: float, w_q: float, m0: int, target: float) -> float:
    """M with width_subsets^2 m0 / M + width_queries^2 = target^2 (inf if the queries alone exceed it)."""
    room = target**2 - w_q**2
    return float(np.ceil(w_sub**2 * m0 / room)) if room > 0 else float("inf")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--target", type=float, default=0.06)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--fast", action="store_true")
    args = ap.parse_args()
    cfg = L.FAST if args.fast else L.FULL
    cache = Cache(args.out, "gen-lds")
    rows = []
    for task in ("sentence", "math"):
        for variant in cfg.variants:
            for seed in args.seeds:
                s = L.prepare(task, variant, seed, cfg.text, cache)
                masks, losses = L.lds_losses(s, cfg, seed, cache)
                M = len(masks)
                for method, P in s.tables.items():
                    P = P.numpy() if hasattr(P, "numpy") else np.asarray(P)
                    w = widths(P, masks, losses, args.n_boot, seed)
                    half = lds(P, masks[: M // 2], losses[: M // 2], args.n_boot, seed) if M >= 6 else None
                    full = lds(P, masks, losses, args.n_boot, seed)
                    rows.append({"task": task, "variant": variant, "seed": seed, "method": method, "n_subsets": M,
                                 "n_queries": losses.shape[1], "lds": full.lds, **w,
                                 "width_half": half.high - half.low if half else float("nan"),
                                 "subsets_needed": needed_subsets(w["width_subsets"], w["width_queries"], M,
                                                                  args.target)})
                print(f"{task} {variant} seed {seed}: cache hits {cache.hits}, misses {cache.misses}", flush=True)
    df = pd.DataFrame(rows)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    df.to_csv(Path(args.out) / "lds_width.csv", index=False)
    with pd.option_context("display.width", 200):
        print(df.round(3).to_string(index=False))


if __name__ == "__main__":
    main()
