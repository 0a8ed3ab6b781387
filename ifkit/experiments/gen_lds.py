"""Counterfactual ground truth for the text benchmarks: linear datamodeling score (LDS) and removal refits.

gen-text scores a method by class AUC: does it rank the query's own class first? That is a PROXY: nothing checks
that the top-ranked examples are the ones the query's loss depends on. Two tests retrain and look (TRAK, Park et
al. 2023; kronfluence and dattri report the first):

* **LDS**: ``n_subsets`` random halves (alpha = 50%) of the training set, LoRA fine-tuned on each with gen-text's
  recipe and seed (``gen_text.finetune``: same base, adapters, epochs, lr, batch); every query's loss is measured
  on each. Per query, the Spearman correlation over the subsets between the measured loss and the method's
  prediction (the sum of its pairwise scores over the subset, ``ifkit.metrics.lds``); mean over queries, with a
  95% bootstrap interval over queries and subsets.
* **Removal**: for a few queries, remove the query's top k training examples by a method (k = 10, 30) and refit;
  the query's loss increase is compared with removing k random examples of the query's class (same refit). A
  method whose top k matter more than any same-class examples beats random (excess > 0).

The measured loss is the loss the attribution differentiates (the variant's ``grad_loss`` tokens,
``TaskData.attribution``), so a method is judged on the quantity it claims to predict. Benchmarks, tasks, base
model, methods and scores are gen-text's (``gen_text.VARIANTS``, ``gen_text.pairwise``); the results are in
RESULTS.md, "Generation (text): counterfactual tests".

Writes ``results/generation_lds.csv``: per task, variant, seed and method one "lds" row (k = 0) with the LDS
and its interval (value, low, high) beside the class AUC and recall of the same scores, and one "removal" row
per k (value = mean excess loss increase over random same-class removal, with interval over the queries); the
"lds" rows also hold each method's LDS minus TracIn's and DataInf's on the same refits, with paired intervals.
Every refit (its query losses and adapters), the fine-tuned model and the score tables are cached under
``OUT/.cache/gen-lds`` (``ifkit.experiments.cache``): an interrupted run resumes where it stopped.
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

from ifkit.core.func import cross_entropy
from ifkit.data.text import TASKS, TaskData
from ifkit.experiments import counterfactual as CF
from ifkit.experiments import gen_text as G
from ifkit.experiments import register
from ifkit.experiments.cache import Cache, cached, key_of, pack_run, unpack_run
from ifkit.experiments.counterfactual import REFERENCES, subset_masks
from ifkit.models import add_lora, lora_names
from ifkit.results import ResultsTable

FILENAME = "generation_lds.csv"
KEY = ["task", "variant", "seed", "method", "measure", "k"]
REQUIRED = ["value", "low", "high"]


@dataclass(frozen=True)
class Config:
    """Sizes of one run: gen-text's ``text`` config plus the counterfactual tests' own."""

    text: G.Config = G.FULL
    n_subsets: int = 50  # M, random training subsets refit for the LDS (TRAK: >= 50)
    alpha: float = 0.5  # share of the training set each subset keeps
    ks: tuple[int, ...] = (10, 30)  # removal sizes
    removal_queries: int = 1  # queries per task and variant for the removal test (each: 2 + 2 x methods refits)
    n_boot: int = 1000  # bootstrap resamples of the intervals
    variants: tuple[str, ...] = ("harder", "protocol")  # gen-text's benchmarks, in the order run (harder first)


FULL = Config()
# CI: tiny task and model, four methods, 5 subsets, k = 3 of the 8 same-class examples
FAST = Config(text=replace(G.FAST, per_class=10, n_val_per_class=2, d_model=32, d_ff=64, pretrain_steps=(30, 20),
                           pretrain_pool=500, epochs=4, n_checkpoints=2, lissa_iters=5, flat_steps=10,
                           methods=("graddot", "tracin", "datainf", "vm")),
              n_subsets=5, ks=(3,), n_boot=200)


# ------------------------------------------------------------------------------------------------ refits
def train_subset(data: TaskData, keep: np.ndarray) -> TaskData:
    """``data`` with only the training points ``keep`` (indices or a bool mask); the queries are unchanged."""
    idx = np.flatnonzero(keep) if np.asarray(keep).dtype == bool else np.asarray(keep)
    t = torch.as_tensor(idx, dtype=torch.long)
    return replace(data, X_train=data.X_train[t], y_train=data.y_train[t], cls_train=data.cls_train[idx],
                   text_train=[data.text_train[i] for i in idx])


@torch.no_grad()
def query_losses(model: torch.nn.Module, data: TaskData, grad_loss: str) -> Tensor:
    """(Q,) every query's mean token loss on the ``grad_loss`` targets (what the attribution differentiates)."""
    X, y = data.attribution(grad_loss)[1]
    return cross_entropy(model.eval()(X), y)  # (Q,)


def refit(base: torch.nn.Module, data: TaskData, keep: np.ndarray, cfg: G.Config, seed: int, grad_loss: str,
          cache: Cache | None = None, tag: str = "", train_loss: str = "answer") -> Tensor:
    """(Q,) query losses of the model LoRA fine-tuned on the training points ``keep`` (bool mask), gen-text's
    recipe, seed and training loss (``gen_text.finetune``: one refit of n/2 points costs ~5 s at full size on one
    core; ``train_loss``: the variant's, "full" for DataInf's protocol).

    Cached by everything that makes it (task, prefix, seed, config, the points left out) with the adapters."""
    removed = np.flatnonzero(~keep).tolist()
    key = key_of(kind="refit", task=data.task, tag=tag, grad_loss=grad_loss, train_loss=train_loss, seed=seed, cfg=cfg,
                 removed=removed,
                 n=len(keep))

    def compute() -> dict:
        model = G.finetune(base, train_subset(data, keep), replace(cfg, n_checkpoints=0), seed, False, train_loss).model
        return {"losses": query_losses(model, data, grad_loss),
                "lora": {n: model.get_parameter(n).detach().clone() for n in lora_names(model)}}

    return cached(cache, key, compute)["losses"]


def removal_sets(tables: dict[str, Tensor], data: TaskData, query: int, k: int, seed: int
                 ) -> dict[str, np.ndarray]:
    """method -> the k training indices it ranks most helpful for ``query`` (most negative first), and "random":
    k random training points of the query's class (seeded by seed, query and k; ``counterfactual.removal_sets``)."""
    return CF.removal_sets(tables, data.cls_train, data.cls_val, query, k, seed)


def removal(base: torch.nn.Module, data: TaskData, tables: dict[str, Tensor], cfg: G.Config, seed: int,
            queries: Sequence[int], ks: Sequence[int], grad_loss: str, cache: Cache | None = None, tag: str = "",
            progress: bool = False, train_loss: str = "answer") -> pd.DataFrame:
    """One row per query, k and method (and "random"): the removed points, the share of them in the query's
    class, the query's loss before (all data) and after the refit without them, and the increase
    (``counterfactual.removal`` with gen-text's ``refit``).

    Identical removal sets (two methods agreeing on the top k) share one refit. Cost: up to
    len(queries) x len(ks) x (len(tables) + 1) refits of n - k points, plus one of all n."""
    def one(keep: np.ndarray) -> Tensor:
        return refit(base, data, keep, cfg, seed, grad_loss, cache, tag, train_loss)

    return CF.removal(one, len(data.X_train), tables, data.cls_train, data.cls_val, queries, ks, seed,
                      desc=f"removal {data.task} {tag}", progress=progress)


def removal_queries(data: TaskData, n: int) -> list[int]:
    """The first validation query of ``n`` evenly spaced classes (gen-text's example queries)."""
    return CF.removal_queries(data.cls_val, n)


# ------------------------------------------------------------------------------------------------ setting
@dataclass
class Setting:
    """One task x variant x seed: its data, base model, fine-tuned run and every method's (Q, n) scores."""

    data: TaskData
    base: torch.nn.Module
    run: object  # ifkit.optim.train.TrainResult
    tables: dict[str, Tensor]
    grad_loss: str
    tag: str  # the variant's name, part of every cache key
    train_loss: str = "answer"  # the fine-tuning's loss (the variant's; refits use it too)


def prepare(task: str, variant: str, seed: int, cfg: G.Config, cache: Cache | None = None,
            methods: Sequence[str] | None = None) -> Setting:
    """Build (or load from ``cache``) gen-text's setting: pretrained base, LoRA fine-tuned model, the score
    table of every method (``gen_text.pairwise``, TracIn over the fine-tuning's checkpoints)."""
    var = G.VARIANTS[variant]
    data = G.make_task(task, seed, cfg.per_class, cfg.n_val_per_class, prefix=var.prefix,
                       n_flat_per_class=cfg.n_flat_per_class)
    state = cached(cache, key_of(kind="pretrained", task=task, cfg=cfg, seed=seed),
                   lambda: G.pretrained_state(task, cfg, seed=seed))  # a seed includes the pretraining
    base = G.pretrained(task, cfg, state=state, seed=seed)

    def arch() -> torch.nn.Module:  # the untrained architecture a cached run is loaded into
        m = copy.deepcopy(base)
        add_lora(m, cfg.lora_targets, rank=cfg.lora_rank, alpha=cfg.lora_alpha)
        return m

    run = cached(cache, key_of(kind="finetune", task=task, variant=variant, seed=seed, cfg=cfg),
                 lambda: G.finetune(base, data, cfg, seed, False, var.train_loss), pack_run, lambda p: unpack_run(p, arch()))
    run.model.eval()
    tables = {}
    for m in methods or cfg.methods:
        key = key_of(kind="scores", task=task, variant=variant, seed=seed, cfg=cfg, method=m)
        tables[m] = cached(cache, key, lambda m=m: {"P": G.pairwise(m, run.model, data, cfg, run.checkpoints,
                                                                    var.grad_loss, train_loss=var.train_loss)})["P"]
    return Setting(data, base, run, tables, var.grad_loss, variant, var.train_loss)  # tables: (Q, n) each


def lds_losses(s: Setting, cfg: Config, seed: int, cache: Cache | None = None, progress: bool = False
               ) -> tuple[np.ndarray, np.ndarray]:
    """((M, n) subset masks, (M, Q) query losses after refitting on each subset)."""
    masks = subset_masks(len(s.data.X_train), cfg.n_subsets, cfg.alpha, seed)
    bar = tqdm(masks, desc=f"LDS refits {s.data.task} {s.tag}", disable=not progress, leave=False)
    losses = [refit(s.base, s.data, keep, cfg.text, seed, s.grad_loss, cache, s.tag, s.train_loss).numpy()
              for keep in bar]
    return masks, np.stack(losses)


def setting_rows(s: Setting, cfg: Config, seed: int, masks: np.ndarray, losses: np.ndarray,
                 removed: pd.DataFrame | None) -> list[dict]:
    """The table's rows of one setting: per method an "lds" row (k = 0) when ``removed`` is None, else a
    "removal" row per k (``counterfactual.lds_rows`` / ``removal_rows``)."""
    if removed is None:
        return CF.lds_rows(s.tables, masks, losses, s.data.cls_train, s.data.cls_val, cfg.n_boot, seed)
    return [r for m in s.tables for r in CF.removal_rows(m, removed, cfg.ks, cfg.n_boot, seed)]


# ----------------------------------------------------------------------------------------------- runner
def measure(cfg: Config, seeds: Iterable[int], out: str | Path, tasks: Sequence[str] = TASKS,
            progress: bool = True, mode: str | None = None, cache: Cache | None = None) -> pd.DataFrame:
    """Run (or resume) the tests; settings whose rows are all in ``out/generation_lds.csv`` are skipped.

    Returns the rows of ``tasks`` and ``seeds``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest (gen-text measured it)
    mode = mode or ("fast" if cfg == FAST else "full")
    table = ResultsTable(Path(out) / FILENAME, KEY, required=REQUIRED)
    seeds = list(seeds)
    try:
        for what in ("lds", "removal"):  # every LDS first: the removal refits reuse the cached settings
            for task in tasks:
                for variant in cfg.variants:
                    for seed in seeds:
                        _measure_setting(cfg, what, task, variant, seed, table, mode, cache, progress)
    finally:
        torch.set_num_threads(threads)
    df = table.frame
    return df[df["task"].isin(tasks) & df["seed"].isin(seeds)].reset_index(drop=True) if not df.empty else df


def _measure_setting(cfg: Config, what: str, task: str, variant: str, seed: int, table: ResultsTable, mode: str,
                     cache: Cache | None, progress: bool) -> None:
    """Add the ``what`` ("lds" or "removal") rows of one setting to ``table`` unless they are all there."""
    ks = [0] if what == "lds" else cfg.ks
    if all(table.has(task=task, variant=variant, seed=seed, method=m, measure=what, k=k)
           for m in cfg.text.methods for k in ks):
        return
    t0 = time.perf_counter()
    s = prepare(task, variant, seed, cfg.text, cache)
    masks, losses = lds_losses(s, cfg, seed, cache, progress)
    removed = None if what == "lds" else removal(
        s.base, s.data, s.tables, cfg.text, seed, removal_queries(s.data, cfg.removal_queries), cfg.ks,
        s.grad_loss, cache, s.tag, progress, s.train_loss)
    common = {"task": task, "variant": variant, "seed": seed, "mode": mode, "alpha": cfg.alpha,
              "grad_loss": s.grad_loss, "seconds": time.perf_counter() - t0}
    table.add([{**common, **r} for r in setting_rows(s, cfg, seed, masks, losses, removed)])


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """LDS (with interval), class AUC and the removal excess per k, one row per task, variant and method (means
    over seeds; AUC in %)."""
    return CF.summary(df, ("task", "variant", "method"))


# Full: CPU seconds of each task's one-core run, seed 0 (the machine was shared: 47 / 55 min of wall clock); the two
# tasks run side by side with --jobs 2. Per seed: --seeds N multiplies it.
@register("gen-lds", parts=TASKS, seconds=(1060, 25), part_seconds={"sentence": 1060, "math": 920},
          note="per seed (--seeds 2 for the committed rows: seeds 0, 1); --jobs 2 runs its two tasks side by side",
          in_all=False)
def run(fast: bool, seeds: int, out: Path, part: str | None = None) -> pd.DataFrame:
    """``ifkit reproduce gen-lds``: write ``out/generation_lds.csv`` (``part``: one task, ``gen-lds:math``)."""
    cfg = FAST if fast else FULL
    df = measure(cfg, range(seeds), out, tasks=(part,) if part else TASKS, cache=Cache(out, "gen-lds"))
    with pd.option_context("display.width", 160):
        print(f"Counterfactual tests, text ({'fast' if fast else 'full'}, seeds={seeds}, M={cfg.n_subsets} subsets): "
              "LDS [95% interval], class AUC in %, removal: query loss increase over random same-class removal")
        print(summary(df).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return df


__all__ = ["FAST", "FULL", "REFERENCES", "Config", "Setting", "lds_losses", "measure", "prepare", "query_losses", "refit",
           "removal", "removal_queries", "removal_sets", "run", "setting_rows", "subset_masks", "summary",
           "train_subset"]
