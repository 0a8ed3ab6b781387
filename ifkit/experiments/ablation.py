"""Ablations that explain the detection result: validation-set size, fine-tuning steps, damping, model size.

``ifkit reproduce ablation`` writes ``results/ablation.csv``: one row per (dataset, noise, rate, seed, factor,
value, method) with auc, ap, recall_at_10pct. The model, data and protocol are those of ``detection`` (same
memorising runs: a worker that ran detection first passes them on); one factor varies at a time from the detection defaults.

* ``n_val`` (asymmetric 40% noise, 6 seeds, paired by seed): where is flatness needed most? An independent check
  found FVM (LPF-SGD) ahead of VM by 2-3 AUC points only with 60-120 clean validation points under asymmetric
  noise, and level with VM at 300-500.
* ``flat_steps`` (symmetric 40%): the score after 0, 20, 100, 400 fine-tuning steps on S_val.
* ``damping`` (symmetric 40%): 1e-3, 1e-2, 1e-1 for VM's (H~_val + damping I).
* ``hidden`` (symmetric 40%): the width of the MLP (retrained for each width).

The degree of memorisation is the other axis of Fig. 2 (``detection_dynamics.csv``: AUC at every training
checkpoint beside the share of flipped labels the network fits there).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

import ifkit
from ifkit import metrics
from ifkit.experiments import detection, register
from ifkit.experiments.cache import Cache
from ifkit.results import ResultsTable

FILENAME = "ablation.csv"
KEY = ["dataset", "noise", "rate", "seed", "factor", "value", "method"]
REQUIRED = ["auc"]


@dataclass(frozen=True)
class Factor:
    """One ablation: ``factor`` takes each of ``values`` in the setting (noise, rate) for ``seeds`` seeds."""

    factor: str
    values: tuple
    noise: str
    rate: float
    methods: tuple[str, ...]
    seeds: int


@dataclass(frozen=True)
class Config:
    detection: detection.Config
    factors: tuple[Factor, ...]
    progress: bool = True


FULL = Config(detection.FULL, factors=(
    Factor("n_val", (60, 120, 300), "asymmetric", 0.4, ("vm", "fvm", "loss@theta~"), seeds=6),
    Factor("flat_steps", (0, 20, 100, 400), "symmetric", 0.4, ("vm", "fvm"), seeds=3),
    Factor("damping", (1e-3, 1e-2, 1e-1), "symmetric", 0.4, ("vm",), seeds=3),
    Factor("hidden", (16, 32, 64), "symmetric", 0.4, ("vm", "if-cg"), seeds=3),
))
FAST = Config(detection.FAST, factors=(
    Factor("n_val", (60, 200), "symmetric", 0.3, ("vm", "fvm"), seeds=2),
    Factor("flat_steps", (0, 100), "symmetric", 0.3, ("vm",), seeds=1),
))


def _scores(method: str, s: detection.Setting, seed: int, factor: str, value) -> torch.Tensor:
    if factor in ("flat_steps", "damping") and method in ("vm", "fvm"):
        opt = {"flat_steps": int(value)} if factor == "flat_steps" else {"damping": float(value)}
        return ifkit.score(method, s.run.model, s.train, s.val, seed=seed, **opt)
    return detection.score_method(method, s, seed, {})


def measure(cfg: Config, seeds: int | None, path: str | Path, factors: Iterable[Factor] | None = None,
            runs: detection.Runs | None = None, cache: Cache | None = None) -> pd.DataFrame:
    """Run (or resume) every factor; ``seeds`` caps each factor's own seed count (None: as configured).

    ``runs``: detection's trained models to reuse and add to (``detection.Runs``); None trains them here.
    ``cache``: trained networks on disk (``detection.prepare``)."""
    table = ResultsTable(path, KEY, required=REQUIRED)
    dc = cfg.detection
    plan = []
    for f in factors or cfg.factors:
        for seed in range(min(f.seeds, seeds) if seeds else f.seeds):
            for value in f.values:
                plan.append((f, seed, value))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for f, seed, value in tqdm(plan, desc="ablation", disable=not cfg.progress):
            key = dict(dataset=dc.dataset, noise=f.noise, rate=f.rate, seed=seed, factor=f.factor, value=value)
            todo = [m for m in f.methods if not table.has(**key, method=m)]
            if not todo:
                continue
            this = replace(dc, hidden=(int(value),)) if f.factor == "hidden" else dc
            s = detection.prepare(this, f.noise, f.rate, seed, n_val=int(value) if f.factor == "n_val" else None,
                                  runs=runs, cache=cache)
            with torch.no_grad():
                fit = float((s.run.model(s.train[0]).argmax(1) == s.train[1])[s.flipped].float().mean())
            rows = []
            for m in todo:
                start = time.perf_counter()
                sc = _scores(m, s, seed, f.factor, value)
                rows.append({**key, "method": m, **metrics.detection_report(sc, s.flipped),
                             "seconds": time.perf_counter() - start, "fit_flipped": fit})
            table.add(rows)
    finally:
        torch.set_num_threads(threads)
    return table.frame


def paired_gap(df: pd.DataFrame, factor: str = "n_val", a: str = "fvm", b: str = "vm") -> pd.DataFrame:
    """Per value of ``factor``: mean and std over seeds of AUC(a) - AUC(b), paired by seed, and how many seeds
    favour ``a``."""
    part = df[df.factor == factor].pivot_table(index=["value", "seed"], columns="method", values="auc")
    gap = (part[a] - part[b]).rename("gap").reset_index()
    return gap.groupby("value").gap.agg(mean="mean", std="std", n="count",
                                        wins=lambda g: int((g > 0).sum())).reset_index()


@register("ablation", seconds=(74, 1), shares=("runs",))
def run(fast: bool, seeds: int, out: Path, runs: detection.Runs | None = None) -> pd.DataFrame:
    """``ifkit reproduce ablation`` (each factor runs its own seed count; --seeds caps it in fast mode; ``runs``:
    detection's trained models, when it ran before in this worker)."""
    cfg = FAST if fast else FULL
    df = measure(cfg, seeds if fast else None, Path(out) / FILENAME, runs=runs, cache=Cache(out, "detection"))
    with pd.option_context("display.width", 140, "display.max_rows", 200):
        print(df.groupby(["factor", "value", "method"]).auc.agg(["mean", "std", "count"])
              .to_string(float_format=lambda v: f"{v:.3f}"))
        print("FVM - VM, paired by seed, by validation size:")
        print(paired_gap(df).to_string(index=False, float_format=lambda v: f"{v:+.3f}"))
    return df


__all__ = ["FAST", "FULL", "Config", "Factor", "measure", "paired_gap", "run"]
