"""VM/FVM's sensitivity on the harder text benchmark: which part of the method moves its class AUC.

On gen-text's "harder" variant (one class token, answer loss; ``ifkit.experiments.gen_text``) VM and FVM sit with
DataInf, below TracIn. This experiment varies one thing at a time around the main table's VM (theta~ fine-tuned
100 SGD steps at lr 0.01 on the split disjoint from training and queries, DataInf's closed-form validation
curvature) and measures class AUC and recall on the same fine-tuned model:

* ``split``: theta~ fine-tuned on the queries themselves (the setup before the disjoint split);
* ``flat_steps`` 30 / 300, ``flat_lr`` 0.003 / 0.03: how far theta~ goes;
* ``sigma`` (FVM, LPF-SGD) 0.005 / 0.02 and ``sam`` (FVM with SAM) rho 0.05 / 0.2: flatness;
* ``start``: theta~ fine-tuned from the first TracIn checkpoint (``checkpoint=state_dict``);
* ``sum``: VM / FVM summed over TracIn's checkpoints (``checkpoint="sum"``: docs/PAPER.md, Eq. 14 at each
  checkpoint, TracIn's weights);
* ``reference``: DataInf, TracIn, and DataInf summed over the same checkpoints the same way (the fair comparison
  for the summed VM).

Sentence task; ``--seeds N`` runs the first min(N, ``MAX_SEEDS``) seeds, a list of seeds runs those. Writes ``results/generation_text_vm.csv``; RESULTS.md and notebook
07 read it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

import ifkit
from ifkit.experiments import gen_text as G
from ifkit.experiments import register
from ifkit.experiments.cache import Cache
from ifkit.metrics import ranking_metrics
from ifkit.results import ResultsTable

FILENAME = "generation_text_vm.csv"
KEY = ["task", "variant", "seed", "setting"]
MAX_SEEDS = 1  # a count of seeds is capped here (`make reproduce`); list seeds to run more
VARIANT = "harder"

# setting -> (factor, method, options over gen_text.method_options); "@..." options are filled in per run
SETTINGS: dict[str, tuple[str, str, dict]] = {
    "vm": ("reference", "vm", {}),
    "vm on the queries": ("split", "vm", {"flat_val": "@queries"}),
    "vm flat_steps=30": ("flat_steps", "vm", {"flat_steps": 30}),
    "vm flat_steps=300": ("flat_steps", "vm", {"flat_steps": 300}),
    "vm flat_lr=0.003": ("flat_lr", "vm", {"flat_lr": 0.003}),
    "vm flat_lr=0.03": ("flat_lr", "vm", {"flat_lr": 0.03}),
    "fvm lpf sigma=0.005": ("sigma", "fvm", {}),
    "fvm lpf sigma=0.02": ("sigma", "fvm", {"sigma": 0.02}),
    "fvm sam rho=0.05": ("sam", "fvm", {"flat_optimizer": "sam", "rho": 0.05}),
    "fvm sam rho=0.2": ("sam", "fvm", {"flat_optimizer": "sam", "rho": 0.2}),
    "vm from checkpoint 1": ("start", "vm", {"checkpoint": "@first"}),
    "vm summed over checkpoints": ("sum", "vm", {"checkpoint": "sum", "checkpoints": "@all"}),
    "fvm summed over checkpoints": ("sum", "fvm", {"checkpoint": "sum", "checkpoints": "@all"}),
    "datainf": ("reference", "datainf", {}),
    "tracin": ("reference", "tracin", {}),
    "datainf summed over checkpoints": ("reference", "datainf", {"sum": True}),
}


def _options(opts: dict, data: G.TaskData, checkpoints, var: G.Variant) -> dict:
    """``opts`` with its "@" placeholders filled from this run (the queries, the checkpoints)."""
    fill = {"@queries": data.attribution(var.train_loss)[1], "@first": checkpoints[0][0], "@all": checkpoints}
    out = {k: fill.get(v, v) if isinstance(v, str) else v for k, v in opts.items()}
    if opts.get("flat_val") == "@queries":  # the curvature on the queries too, as before the disjoint split
        out["curvature_val"] = data.attribution(var.grad_loss)[1]
    return out


def score(setting: str, model, data: G.TaskData, cfg: G.Config, checkpoints, cache: ifkit.GradCache) -> torch.Tensor:
    """(Q, n) pairwise influences of one ``SETTINGS`` entry on the harder variant."""
    _, method, opts = SETTINGS[setting]
    var = G.VARIANTS[VARIANT]
    if opts.get("sum"):  # sum_c lr_c * pairwise(method at checkpoint c), as TracIn (and checkpoint="sum") weigh
        at = G.copy.deepcopy(model)
        total = torch.zeros(len(data.X_val), len(data.X_train))
        for state, lr in checkpoints:
            at.load_state_dict(state)
            total += lr * G.pairwise(method, at, data, cfg, (), var.grad_loss, None, var.train_loss)
        return total
    if method == "tracin":
        return G.pairwise(method, model, data, cfg, checkpoints, var.grad_loss, cache, var.train_loss)
    train_g, val_g = data.attribution(var.grad_loss)
    return ifkit.pairwise(method, model, train_g, val_g,
                          **{**G.method_options(method, cfg, data, model, var.grad_loss, cache, var.train_loss),
                             **_options(opts, data, checkpoints, var)})


def measure(cfg: G.Config, seeds: Sequence[int], out: str | Path, task: str = "sentence", progress: bool = True,
            mode: str | None = None, settings: Sequence[str] = tuple(SETTINGS)) -> pd.DataFrame:
    """Run (or resume) every setting on ``task`` for ``seeds``; rows already in ``out`` are kept."""
    mode = mode or ("fast" if cfg == G.FAST else "full")
    out = Path(out)
    table = ResultsTable(out / FILENAME, KEY, required=["auc", "recall"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for seed in seeds:
            todo = [s for s in settings if not table.has(task=task, variant=VARIANT, seed=seed, setting=s)]
            if not todo:
                continue
            var = G.VARIANTS[VARIANT]
            base = G.pretrained(task, cfg, state=G.pretrained_state(task, cfg, progress, seed, Cache(out, "gen-text")))
            data = G.make_task(task, seed, cfg.per_class, cfg.n_val_per_class, prefix=var.prefix,
                               n_flat_per_class=cfg.n_flat_per_class)
            res = G.finetune(base, data, cfg, seed, progress, var.train_loss)
            cache = ifkit.GradCache()
            for setting in todo:
                t0 = time.perf_counter()
                P = score(setting, res.model, data, cfg, res.checkpoints, cache)
                auc, recall, prec5 = ranking_metrics(P, data.cls_train, data.cls_val)
                table.add([{"task": task, "variant": VARIANT, "seed": seed, "setting": setting,
                            "factor": SETTINGS[setting][0], "method": SETTINGS[setting][1], "mode": mode,
                            "auc": auc, "recall": recall,
                            "recall_abs": ranking_metrics(-P.abs(), data.cls_train, data.cls_val)[1],
                            "precision5": prec5, "seconds": time.perf_counter() - t0}])
    finally:
        torch.set_num_threads(threads)
    df = table.frame
    return df[df["seed"].isin(list(seeds)) & (df["task"] == task)].reset_index(drop=True)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds of AUC and recall (signed, |IF|) per setting, in percent, in ``SETTINGS`` order."""
    g = df.groupby("setting", sort=False).agg(factor=("factor", "first"), auc=("auc", "mean"),
                                              recall=("recall", "mean"), recall_abs=("recall_abs", "mean"),
                                              seconds=("seconds", "mean"), seeds=("seed", "nunique"))
    for c in ("auc", "recall", "recall_abs"):
        g[c] = 100 * g[c]
    order = [s for s in SETTINGS if s in g.index]
    return g.loc[order].reset_index()


@register("gen-text-vm", seconds=(150, 31), seed_lists=True,
          note="VM/FVM sensitivity, harder sentence benchmark, seed 0 (list seeds for more); full time estimated")
def run(fast: bool, seeds: int | Sequence[int], out: Path) -> pd.DataFrame:
    """``ifkit reproduce gen-text-vm``: write ``out/generation_text_vm.csv`` (a count: at most MAX_SEEDS seeds)."""
    cfg = G.FAST if fast else G.FULL
    seeds = G.seed_list(min(seeds, MAX_SEEDS) if isinstance(seeds, int) else seeds)
    df = measure(cfg, seeds, out)
    with pd.option_context("display.width", 160):
        print(f"VM/FVM sensitivity (harder, sentence; {'fast' if fast else 'full'}, seeds={seeds}): AUC, recall %")
        print(summary(df).to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    return df


__all__ = ["FILENAME", "KEY", "MAX_SEEDS", "SETTINGS", "measure", "run", "score", "summary"]
