"""Counterfactual ground truth for the image benchmark: linear datamodeling score (LDS) and removal refits.

gen-image scores a method by style AUC: does it rank the training images of the query's style first? That is a
PROXY: nothing checks that the top-ranked images are the ones the query's loss depends on. The same two tests as
gen-lds runs on the text tasks (``ifkit.experiments.counterfactual``; TRAK, Park et al. 2023) retrain and look,
which is affordable here (a LoRA fine-tuning of the conditional VAE takes ~5 s at full size on one core):

* **LDS**: ``n_subsets`` random halves (alpha = 50%) of the training images, LoRA fine-tuned on each with
  gen-image's recipe and seed (``gen_image.finetune_lora``: same pretrained base, adapters, epochs, lr); every
  query's loss is measured on each. Per query, the Spearman correlation over the subsets between the measured loss
  and the method's prediction (the sum of its pairwise scores over the subset, ``ifkit.metrics.lds``); mean over
  queries, with a 95% bootstrap interval over queries and subsets, and paired differences with TracIn and DataInf.
* **Removal**: for a few queries (the first of evenly spaced styles), remove the query's top k training images
  by a method (k = 10, 30) and refit; the query's loss increase is compared with removing k random images of the
  query's style (same refit). Excess > 0: the method's top k matter more than as many same-style images.

The measured loss is the one the methods differentiate (``gen_image.attribution_loss``: the negative ELBO per
pixel at the posterior mean, eps = 0), so a method is judged on the quantity it claims to predict. Data, base,
fine-tuned model, methods and score tables are gen-image's (``gen_image.CONFIGS``, ``gen_image.pairwise``).

Writes ``results/generation_lds_image.csv`` (task "style"; the columns of gen-lds's ``generation_lds.csv``): per
variant, seed and method one "lds" row (k = 0) with the LDS and its interval beside the style AUC and recall of
the same scores, and one "removal" row per k (value = mean excess over random same-style removal, with an
interval over the queries). Pretrained and fine-tuned models, score tables and every refit are cached under
``OUT/.cache/gen-lds-image`` (``ifkit.experiments.cache``): an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ifkit.data.styles import StyleData
from ifkit.experiments import counterfactual as CF
from ifkit.experiments import gen_image as G
from ifkit.experiments import register
from ifkit.experiments.cache import Cache, cached, key_of
from ifkit.models import ConditionalVAE, add_lora, lora_names
from ifkit.results import ResultsTable

FILENAME = "generation_lds_image.csv"
KEY = ["task", "variant", "seed", "method", "measure", "k"]
REQUIRED = ["value", "low", "high"]
FAST_METHODS = ("graddot", "tracin", "datainf", "vm")  # CI: LiSSA and FVM cost as much as every refit together


@dataclass(frozen=True)
class Config:
    """Sizes of one run: gen-image's configs (one per variant, run in this order) plus the tests' own."""

    images: tuple[G.Config, ...] = tuple(G.CONFIGS["full"].values())
    n_subsets: int = 50  # M, random training subsets refit for the LDS (TRAK: >= 50)
    alpha: float = 0.5  # share of the training images each subset keeps
    ks: tuple[int, ...] = (10, 30)  # removal sizes (of 100 images per style)
    removal_queries: int = 3  # queries per variant for the removal test (each: ~2 x (methods + 1) refits)
    n_boot: int = 1000  # bootstrap resamples of the intervals

    def variant(self, name: str) -> G.Config:
        """The image config of variant ``name``."""
        found = [c for c in self.images if c.variant == name]
        if not found:
            raise ValueError(f"variant {name!r} is not in this config; it has {[c.variant for c in self.images]}")
        return found[0]


FULL = Config()
# CI: gen-image's FAST sizes (digits 8x8, 4 styles x 40), four methods, 8 subsets, k = 10 of the 40 same-style images
FAST = Config(images=tuple(replace(c, methods=FAST_METHODS) for c in G.CONFIGS["fast"].values()), n_subsets=8,
              ks=(10,), removal_queries=1, n_boot=200)


def _models(cfg: G.Config) -> G.Config:
    """``cfg`` without what does not change the trained models (the methods): the key of cached networks."""
    return replace(cfg, methods=())


# ------------------------------------------------------------------------------------------------ refits
def train_subset(data: StyleData, keep: np.ndarray) -> StyleData:
    """``data`` with only the training images ``keep`` (indices or a bool mask); queries and pretraining unchanged."""
    idx = np.flatnonzero(keep) if np.asarray(keep).dtype == bool else np.asarray(keep)
    t = torch.as_tensor(idx, dtype=torch.long)
    return replace(data, X_train=data.X_train[t], c_train=data.c_train[t], s_train=data.s_train[t])


@torch.no_grad()
def query_losses(model: ConditionalVAE, data: StyleData, seed: int) -> Tensor:
    """(Q,) every query's (validation image's) attribution loss: the negative ELBO per pixel at the posterior
    mean (``gen_image.attribution_loss`` on ``gen_image.attribution_sets``), what the methods differentiate."""
    _, (X, target) = G.attribution_sets(model, data, seed)
    return G.attribution_loss(model.eval()(X), target)  # (Q,)


def refit(cfg: G.Config, base: ConditionalVAE, data: StyleData, keep: np.ndarray, seed: int,
          cache: Cache | None = None) -> Tensor:
    """(Q,) query losses of ``base`` LoRA fine-tuned on the training images ``keep`` (bool mask) with gen-image's
    recipe and seed (``gen_image.finetune_lora``; keep = all: gen-image's fine-tuned model, bit for bit). Cost: one
    fine-tuning of keep.sum() images (~2.5 s for 300 at full size on one core).

    Cached by everything that makes it (config, seed, the images left out) with the adapters."""
    key = key_of(kind="refit", cfg=_models(cfg), seed=seed, removed=np.flatnonzero(~keep).tolist(), n=len(keep))

    def compute() -> dict:
        model, _ = G.finetune_lora(replace(cfg, n_checkpoints=0), base, train_subset(data, keep), seed, False)
        return {"losses": query_losses(model, data, seed),
                "lora": {n: model.get_parameter(n).detach().clone() for n in lora_names(model)}}

    return cached(cache, key, compute)["losses"]


def lds_losses(cfg: G.Config, base: ConditionalVAE, data: StyleData, masks: np.ndarray, seed: int,
               cache: Cache | None = None, progress: bool = False) -> np.ndarray:
    """(M, Q) every query's loss after refitting on each subset of ``masks`` (M, n)."""
    bar = tqdm(masks, desc=f"LDS refits {cfg.variant}", disable=not progress, leave=False)
    return np.stack([refit(cfg, base, data, keep, seed, cache).numpy() for keep in bar])


# ------------------------------------------------------------------------------------------------ setting
@dataclass
class Setting:
    """One variant x seed: gen-image's data, pretrained base, fine-tuned model, checkpoints and (Q, n) tables."""

    cfg: G.Config
    data: StyleData
    base: ConditionalVAE
    tuned: ConditionalVAE
    checkpoints: list
    tables: dict[str, Tensor]


def prepare(cfg: G.Config, seed: int, cache: Cache | None = None) -> Setting:
    """Build (or load from ``cache``) gen-image's setting: the same images, pretraining, LoRA fine-tuning and
    score tables (``gen_image.pairwise``) as ``ifkit reproduce gen-image``."""
    data = G.build_data(cfg, seed)
    key = key_of(kind="pretrained", cfg=_models(cfg), seed=seed)
    base = G.pretrain(replace(cfg, pretrain_epochs=0), data, seed, progress=False)  # the architecture
    base.load_state_dict(cached(cache, key, lambda: G.pretrain(cfg, data, seed, progress=False).state_dict()))

    def tune() -> dict:
        model, cps = G.finetune_lora(cfg, base, data, seed, progress=False)
        return {"state": model.state_dict(), "checkpoints": [{"state": s, "lr": lr} for s, lr in cps]}

    found = cached(cache, key_of(kind="finetune", cfg=_models(cfg), seed=seed), tune)
    tuned = copy.deepcopy(base)
    add_lora(tuned, cfg.lora_targets, rank=cfg.lora_rank)
    tuned.load_state_dict(found["state"])
    checkpoints = [(c["state"], c["lr"]) for c in found["checkpoints"]]
    train, val = G.attribution_sets(tuned, data, seed)
    tables = {m: cached(cache, key_of(kind="scores", cfg=_models(cfg), seed=seed, method=m),
                        lambda m=m: {"P": G.pairwise(m, cfg, tuned, train, val, checkpoints, seed)})["P"]
              for m in cfg.methods}  # (Q, n) each
    return Setting(cfg, data, base, tuned.eval(), checkpoints, tables)


def removal(s: Setting, seed: int, queries: Sequence[int], ks: Sequence[int], cache: Cache | None = None,
            baseline: str = "same", progress: bool = False) -> pd.DataFrame:
    """``counterfactual.removal`` with this setting's refits: one row per query, k and method (and "random": k
    random images of the query's style, or of the other styles with ``baseline="other"``)."""
    def one(keep: np.ndarray) -> Tensor:
        return refit(s.cfg, s.base, s.data, keep, seed, cache)

    return CF.removal(one, len(s.data.X_train), s.tables, s.data.s_train, s.data.s_val, queries, ks, seed, baseline,
                      desc=f"removal {s.cfg.variant}", progress=progress)


# ----------------------------------------------------------------------------------------------- runner
def measure(cfg: Config, seeds: Iterable[int], out: str | Path, variants: Sequence[str] | None = None,
            progress: bool = True, mode: str | None = None, cache: Cache | None = None) -> pd.DataFrame:
    """Run (or resume) the tests of ``variants`` (default: every config's) for ``seeds``; rows already in
    ``out/generation_lds_image.csv`` are skipped. Returns the rows of those variants and seeds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # models this small run fastest on one thread (gen-image measured it)
    mode = mode or ("fast" if cfg == FAST else "full" if cfg == FULL else "custom")
    variants = list(variants or [c.variant for c in cfg.images])
    table = ResultsTable(Path(out) / FILENAME, KEY, required=REQUIRED)
    seeds = list(seeds)
    try:
        for variant in variants:
            for seed in seeds:
                _measure_setting(cfg, cfg.variant(variant), seed, table, mode, cache, progress)
    finally:
        torch.set_num_threads(threads)
    df = table.frame
    return df[df["variant"].isin(variants) & df["seed"].isin(seeds)].reset_index(drop=True) if not df.empty else df


def _measure_setting(cfg: Config, icfg: G.Config, seed: int, table: ResultsTable, mode: str, cache: Cache | None,
                     progress: bool) -> None:
    """Add the "lds" rows, then the "removal" rows, of one variant and seed to ``table`` unless already there."""
    def done(measure: str, ks: Sequence[int]) -> bool:
        return all(table.has(task=G.TASK, variant=icfg.variant, seed=seed, method=m, measure=measure, k=k)
                   for m in icfg.methods for k in ks)

    if done("lds", [0]) and done("removal", cfg.ks):
        return
    t0 = time.perf_counter()
    s = prepare(icfg, seed, cache)
    common = {"task": G.TASK, "variant": icfg.variant, "seed": seed, "mode": mode, "alpha": cfg.alpha}
    if not done("lds", [0]):
        masks = CF.subset_masks(len(s.data.X_train), cfg.n_subsets, cfg.alpha, seed)  # (M, n)
        losses = lds_losses(icfg, s.base, s.data, masks, seed, cache, progress)  # (M, Q)
        rows = CF.lds_rows(s.tables, masks, losses, s.data.s_train, s.data.s_val, cfg.n_boot, seed)
        table.add([{**common, **r, "seconds": time.perf_counter() - t0} for r in rows])
    if not done("removal", cfg.ks):
        t1 = time.perf_counter()
        queries = CF.removal_queries(s.data.s_val, cfg.removal_queries)
        removed = removal(s, seed, queries, cfg.ks, cache, progress=progress)
        rows = [r for m in s.tables for r in CF.removal_rows(m, removed, cfg.ks, cfg.n_boot, seed)]
        table.add([{**common, **r, "seconds": time.perf_counter() - t1} for r in rows])


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """LDS (with interval), style AUC and the removal excess per k, one row per variant and method (means over
    seeds; AUC in %)."""
    return CF.summary(df, ("variant", "method"))


# Full: seed 0 on a quiet machine, one core (131 / 130 s per variant); seeds 1-2 took 684 s beside other work. Per
# seed: --seeds N multiplies it (the committed rows: --seeds 3). Fast: 12.6 s.
@register("gen-lds-image", parts=G.VARIANTS, seconds=(261, 13), part_seconds={"protocol": 131, "harder": 130},
          note="per seed (--seeds 3 for the committed rows); --jobs 2 runs its two variants side by side",
          in_all=False)
def run(fast: bool, seeds: int, out: Path, part: str | None = None) -> pd.DataFrame:
    """``ifkit reproduce gen-lds-image``: write ``out/generation_lds_image.csv`` (``part``: one variant)."""
    cfg = FAST if fast else FULL
    df = measure(cfg, range(seeds), out, variants=(part,) if part else None, cache=Cache(out, "gen-lds-image"))
    with pd.option_context("display.width", 160):
        print(f"Counterfactual tests, images ({'fast' if fast else 'full'}, seeds={seeds}, M={cfg.n_subsets} "
              "subsets): LDS [95% interval], style AUC in %, removal: query loss increase over random same-style removal")
        print(summary(df).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return df


__all__ = ["FAST", "FAST_METHODS", "FULL", "Config", "Setting", "lds_losses", "measure", "prepare", "query_losses",
           "refit", "removal", "run", "summary", "train_subset"]
