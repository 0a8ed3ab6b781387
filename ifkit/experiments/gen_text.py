"""Influential-data identification for a generative text model (DataInf's protocol; paper Sec. 5, text half).

The measured numbers, the designs that did not work and the run time are in RESULTS.md, "Generation (text)".

Two procedurally generated task families (``ifkit.data.text``), 10 classes each, 100 examples per class (90 train,
10 validation): ``sentence`` (transformations of a 5-word sentence) and ``math`` (word problems with 10 question
types and a worked answer). As in DataInf, the 100 contents are drawn once per seed and reused in every class;
only the prompt's class prefix differs. Each example is ``<bos> PREFIX CONTENT <sep>`` then the answer and
``<eos>``. Benchmarks (``VARIANTS``): a prefix, the loss of the fine-tuning and that of the attribution gradient
(``train_loss``, ``grad_loss``: which tokens' cross-entropy; ``ifkit.data.text.grad_targets``):

* ``protocol`` (DataInf's, as DataInf's code runs it): DataInf's prompt word for word ("NAME is a chatbot that
  performs a specific transformation on sentences : TITLE . for example :", 20 tokens; math: a chatbot name, ":"
  and the question); DataInf tokenises the WHOLE text (prompt + answer) and passes those ids as the labels, for
  the fine-tuning and for the gradients alike: here ``train_loss = grad_loss = "full"``;
* ``protocol-init``: its control, the same gradients at the untouched LoRA initialisation (no fine-tuning): what
  the class prefix alone gives; the gap to ``protocol`` is what the fine-tuning earns;
* ``harder``: one class token (math: no question), fine-tuning and gradients on the ANSWER loss
  (``harder-init``, its control, runs on request: ``Config(variants=...)``).

Model: ``TinyLM`` (word-level, d_model 64, 2 layers) pretrained on the same formats with a generic ``<any>``
prefix, once per seed (a seed includes the pretraining; cached in ``OUT/.cache/gen-text``); then LoRA adapters
(rank 8, alpha 32 on every attention q and v map: DataInf's setting) fine-tuned on the 900 training examples.
Influence over the adapters only (``params=lora_names(model)``). VM/FVM's theta~ is fine-tuned on a third split,
10 contents per class disjoint from training and queries (``make_task(..., n_flat_per_class=...)``).

Attribution: for each validation query q, ``ifkit.pairwise(method, model, train, queries)[q]`` ranks the training
points, most helpful (most negative) first; ground truth: the training points of q's class; per query, then
averaged (``ifkit.metrics.ranking_metrics``): ROC AUC, recall among the top k = 90 by the signed score (most
helpful first) and by |IF| (``recall_abs``: DataInf's code ranks by the absolute influence), precision among the
top 5. ``generation_results.paired_differences`` gives the per-seed paired differences between methods. Methods: graddot, gradcos, tracin (the fine-tuning's checkpoints), datainf, if-lissa (mini-batch
Gauss-Newton products: full-batch LiSSA is far beyond a CPU budget here), vm and fvm (``method_options`` says how).

Writes ``results/generation.csv`` (tasks sentence and math; shared with gen-image through
``ifkit.experiments.generation_results``) and ``results/generation_text_examples.csv`` (for a few queries: the
query and its top-5 training examples per method and variant).
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

import ifkit
from ifkit.data.text import (
    EOS,
    LAYOUTS,
    N_WORDS,
    TASKS,
    TaskData,
    classes,
    decode,
    encode,
    make_task,
    pretraining_batch,
    source_words,
    vocabulary,
)
from ifkit.experiments import generation_results, register
from ifkit.experiments.cache import Cache, key_of
from ifkit.metrics import ranking_metrics
from ifkit.models import TinyLM, add_lora, lora_names
from ifkit.optim.generative import fit_steps
from ifkit.optim.train import train
from ifkit.results import ResultsTable

EXAMPLES = "generation_text_examples.csv"


@dataclass(frozen=True)
class Variant:
    """One benchmark: how the prompt names the class, and which tokens the attribution gradient sees."""

    prefix: str  # ifkit.data.text.PREFIXES: "name" (DataInf's prompt: chatbot name, template, title) or "cue"
    grad_loss: str  # ifkit.data.text.GRAD_LOSSES: "full" (DataInf: prompt + answer), "answer" or "prompt"
    train_loss: str = "answer"  # the fine-tuning's loss, same choices (DataInf: "full")
    finetuned: bool = True  # False: the control, at the untouched LoRA initialisation


# "protocol": DataInf's (easy: the gradient carries the class prefix); "-init": without fine-tuning; "harder":
# where methods differ
VARIANTS = {"protocol": Variant("name", "full", "full"), "protocol-init": Variant("name", "full", "full", False),
            "harder": Variant("cue", "answer"), "harder-init": Variant("cue", "answer", "answer", False)}
# ------------------------------------------------------------------------------------------------ model
@dataclass(frozen=True)
class Config:
    """Sizes of one run (``FAST`` for CI, ``FULL`` for the reported numbers)."""

    per_class: int = 100
    n_val_per_class: int = 10
    n_flat_per_class: int = 10  # VM/FVM's theta~ split, disjoint from training and queries
    d_model: int = 64
    n_layers: int = 2
    d_ff: int = 128
    pretrain_steps: tuple[int, int] = (2500, 1500)  # (sentence, math) Adam steps on the cue-less formats
    pretrain_batch: int = 64
    pretrain_lr: float = 3e-3
    pretrain_pool: int = 20_000  # distinct random examples the pretraining batches are drawn from
    lora_targets: tuple[str, ...] = ("blocks.*.attn.q", "blocks.*.attn.v")
    lora_rank: int = 8
    lora_alpha: float = 32.0  # DataInf: rank 8, alpha 32 on q, v
    epochs: int = 10
    lr: float = 4e-3  # 2e-3: exact match 80% on sentence (seed 0), 4e-3: 90%
    batch_size: int = 32
    n_checkpoints: int = 5  # TracIn
    methods: tuple[str, ...] = ("graddot", "gradcos", "tracin", "datainf", "if-lissa", "vm", "fvm")
    variants: tuple[str, ...] = ("protocol", "protocol-init", "harder")
    lissa_iters: int = 30
    lissa_batch: int = 8
    lissa_scale_iters: int = 20  # power steps per mini-batch for LiSSA's scale (_lissa_scale)
    damping: float = 1e-3
    flat_steps: int = 100
    n_examples: int = 3  # queries per task written to the examples file


FULL = Config()
# FAST: LiSSA at 4 iterations (10 took 42 of the 99 s of `--fast` on one core, three benchmarks x two tasks) and its
# scale from 5 power steps per batch (20 took 19 of sentence's 67 s with --jobs 2; the LiSSA AUCs moved <= 0.008)
FAST = replace(FULL, per_class=30, n_val_per_class=3, n_flat_per_class=3, pretrain_steps=(300, 200), epochs=10,
               n_checkpoints=3, lissa_iters=4, lissa_scale_iters=5, flat_steps=30)


def pretrained_state(task: str, cfg: Config = FULL, progress: bool = False, seed: int = 0,
                     cache: Cache | None = None) -> dict[str, Tensor]:
    """Pretrain the base model of ``task`` (TinyLM on the cue-less formats) for ``seed``; return its state_dict.

    A seed includes the pretraining: initialisation, pool and batch order all follow ``seed`` (seed 0 is the one
    base model of earlier releases). Deterministic; ``cache`` (``OUT/.cache/gen-text``) keeps each base, keyed by
    the task, seed and pretraining sizes. Cost: ``pretrain_steps`` Adam steps (~70 s sentence on one quiet core).
    """
    key = key_of(kind="pretrained", task=task, seed=seed, d_model=cfg.d_model, n_layers=cfg.n_layers,
                 d_ff=cfg.d_ff, steps=cfg.pretrain_steps[TASKS.index(task)], batch=cfg.pretrain_batch,
                 lr=cfg.pretrain_lr, pool=cfg.pretrain_pool)
    found = cache.load(key) if cache is not None else None
    if found is not None:
        return found
    torch.manual_seed(1234 + seed)
    model = TinyLM(len(vocabulary(task)), d_model=cfg.d_model, n_layers=cfg.n_layers, d_ff=cfg.d_ff,
                   max_len=LAYOUTS[task].seq_len)
    Xp, yp = pretraining_batch(task, np.random.default_rng(4321 + seed), cfg.pretrain_pool)  # encoded once
    fit_steps(model, Xp, yp, steps=cfg.pretrain_steps[TASKS.index(task)], batch_size=cfg.pretrain_batch,
              lr=cfg.pretrain_lr, seed=4321 + seed, desc=f"pretrain {task} seed {seed}", progress=progress)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if cache is not None:
        cache.save(key, state)
    return state


def pretrained(task: str, cfg: Config = FULL, progress: bool = False, state: dict[str, Tensor] | None = None,
               seed: int = 0) -> TinyLM:
    """The base model of ``task`` for ``seed``: TinyLM pretrained on the cue-less formats, in eval mode.

    ``state``: a ``pretrained_state`` of the same task, cfg and seed to load (None: pretrain now).
    """
    state = pretrained_state(task, cfg, progress, seed) if state is None else state
    model = TinyLM(len(vocabulary(task)), d_model=cfg.d_model, n_layers=cfg.n_layers, d_ff=cfg.d_ff,
                   max_len=LAYOUTS[task].seq_len)
    model.load_state_dict(state)
    return model.eval()


def lora_init(base: TinyLM, cfg: Config, seed: int) -> TinyLM:
    """A copy of ``base`` with fresh LoRA adapters (seeded; B = 0, so it computes what ``base`` does), in eval mode:
    the starting point of ``finetune`` and the model of the "-init" controls."""
    model = copy.deepcopy(base)
    torch.manual_seed(seed)  # adapter initialisation
    add_lora(model, cfg.lora_targets, rank=cfg.lora_rank, alpha=cfg.lora_alpha)
    return model.eval()


def finetune(base: TinyLM, data: TaskData, cfg: Config, seed: int, progress: bool = False,
             train_loss: str = "answer"):
    """Add LoRA adapters to a copy of ``base`` and train only them on ``data.train``; returns the TrainResult.

    ``train_loss``: the tokens whose loss is minimised ("answer"; "full": prompt + answer, DataInf's)."""
    res = train(lora_init(base, cfg, seed), data.targets(*data.train, train_loss), epochs=cfg.epochs, lr=cfg.lr,
                batch_size=cfg.batch_size, seed=seed, n_checkpoints=cfg.n_checkpoints, progress=progress)
    res.model.eval()
    return res


@torch.no_grad()
def exact_match(model: TinyLM, data: TaskData, generic: bool = False) -> np.ndarray:
    """(n_val,) bool: greedy generation from each validation prompt reproduces the answer exactly (to <eos>).

    ``generic``: with the class prefix replaced by <any> (what the base model was pretrained on).
    """
    lay = LAYOUTS[data.task]
    X = data.generic_val() if generic else data.X_val
    out = model.generate(X[:, : lay.prompt_len], lay.answer_len - 1)[:, lay.prompt_len:]  # (n, A - 1)
    hits = []
    for ids, ans in zip(out.tolist(), data.answers_val):
        toks = decode(data.task, ids) + [EOS]
        hits.append(toks[: toks.index(EOS)] == ans)
    return np.array(hits)


def method_options(method: str, cfg: Config, data: TaskData, model, grad_loss: str = "answer",
                   cache: ifkit.GradCache | None = None, train_loss: str = "answer") -> dict:
    """The options of ``ifkit.pairwise`` for ``method`` in this experiment (TracIn: see ``pairwise``).

    ``cache``: a GradCache shared by the methods scored at the same model (else one per call). VM/FVM: theta~ is
    fine-tuned on ``data.flat(train_loss)`` (the split disjoint from training and queries; without one, on the
    queries themselves, as before that split existed)."""
    # cache_grads: the (n_train, p) LoRA gradients (900 x 4,096 floats) fit easily, and one vmap pass is ~20x
    # faster here than forward-mode dots with 100 query tangents (measured: graddot 3 s against 68 s)
    # budget_s=None: the experiment's costs are declared and measured (register); the library's refusal of long
    # calls is for interactive use, and its estimate scales with the machine's load
    opts: dict = {"params": lora_names(model), "cache_grads": True if cache is None else cache, "budget_s": None}
    if method == "if-lissa":
        opts.update(damping=cfg.damping, iters=cfg.lissa_iters, lissa_batch=cfg.lissa_batch,
                    scale=_lissa_scale(model, data, cfg, grad_loss))
    elif method in ("vm", "fvm"):
        # DataInf's closed form of the VALIDATION curvature at theta~ (ifkit/curvature/val_inverse.py): the exact
        # Gauss-Newton over 100 sequences needs one product per LoRA parameter, measured at 240 s for a rank-1
        # (512-parameter) adapter here -- beyond the budget. Kwon et al.'s damping, as for "datainf". theta~ is
        # fine-tuned on the model's own objective (train_loss); the curvature is that of the loss the gradients
        # are of (grad_loss), as DataInf's is.
        split = data.flat if data.X_flat is not None else (lambda g: data.attribution(g)[1])
        opts.update(flat_val=split(train_loss), flat_steps=cfg.flat_steps, curvature="datainf",
                    curvature_val=split(grad_loss))
    elif method == "if-cg":
        opts.update(damping=cfg.damping)
    return opts


def _lissa_scale(model, data: TaskData, cfg: Config, grad_loss: str) -> float:
    """LiSSA needs scale > the top eigenvalue of every mini-batch curvature it sees: 3 x the top eigenvalue of
    the Gauss-Newton matrix on a few mini-batches (the default, 1.5 x the full-batch one from 30 power steps,
    diverged here: mini-batch curvature is spikier). ``cfg.lissa_scale_iters`` power steps on each of 4 batches:
    4 x that many Gauss-Newton products, most of LiSSA's cost at small sizes."""
    from ifkit.core.func import ggn_vp_fn, make_problem
    from ifkit.curvature.solvers import top_eigenvalue

    prob = make_problem(model, lora_names(model))
    gen = torch.Generator().manual_seed(0)
    lam = 0.0
    X, y = data.attribution(grad_loss)[0]
    for _ in range(4):
        idx = torch.randint(0, len(X), (cfg.lissa_batch,), generator=gen)
        mv = ggn_vp_fn(prob, X[idx], y[idx])
        lam = max(lam, abs(top_eigenvalue(mv, prob.p, iters=cfg.lissa_scale_iters, seed=0)))
    return 3 * (lam + cfg.damping)


def pairwise(method: str, model, data: TaskData, cfg: Config, checkpoints=(), grad_loss: str = "answer",
             cache: ifkit.GradCache | None = None, train_loss: str = "answer", **options) -> Tensor:
    """(n_queries, n_train) ``ifkit.pairwise`` of ``method`` over the LoRA parameters, queries = validation set.

    ``grad_loss`` picks the tokens whose loss the attribution gradients see (``ifkit.data.text.grad_targets``):
    the train and query targets passed to ``ifkit.pairwise``; the model was fine-tuned on the answer loss.
    ``cache``: an ``ifkit.GradCache`` shared across calls at the same model (graddot, gradcos, DataInf, LiSSA's
    last pass and TracIn's last checkpoint read the same training gradients).

    ``options``: more ``ifkit.pairwise`` options, over this experiment's (e.g. VM's ``checkpoint="sum"``).

    TracIn is sum_c lr_c * pairwise("tracin", model at checkpoint c): exactly what ``checkpoints=`` computes,
    but one call per checkpoint lets each use the cached per-sample gradients (tested equal). Without
    checkpoints (the "-init" controls) it is the gradient dot product at the model.
    """
    train_g, val_g = data.attribution(grad_loss)
    if method != "tracin" or not checkpoints:
        return ifkit.pairwise(method, model, train_g, val_g,
                              **{**method_options(method, cfg, data, model, grad_loss, cache, train_loss), **options})
    total = torch.zeros(len(data.X_val), len(data.X_train))
    at = copy.deepcopy(model)
    for state, lr in checkpoints:
        at.load_state_dict(state)
        total += lr * ifkit.pairwise("tracin", at, train_g, val_g,
                                     **method_options(method, cfg, data, at, grad_loss, cache, train_loss))
    return total


# ----------------------------------------------------------------------------------------------- runner
def measure(cfg: Config, seeds: Iterable[int], out: str | Path, tasks: Sequence[str] = TASKS,
            progress: bool = True, mode: str | None = None) -> pd.DataFrame:
    """Run (or resume) the experiment; rows already in ``out/generation.csv`` for (task, seed, method) are kept.

    Returns the rows of ``tasks`` and ``seeds``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a busy 2-core machine: one thread is fastest (measured)
    try:
        return _measure(cfg, list(seeds), Path(out), tasks, progress, mode or ("fast" if cfg == FAST else "full"))
    finally:
        torch.set_num_threads(threads)


def _measure(cfg: Config, seeds: list[int], out: Path, tasks: Sequence[str], progress: bool, mode: str
             ) -> pd.DataFrame:
    table = generation_results.table(out, TASKS)
    cache = Cache(out, "gen-text")  # the pretrained base of each (task, seed)
    ex_table = ResultsTable(out / EXAMPLES, ["task", "variant", "seed", "query", "method", "rank"], required=["text"])
    for task in tasks:
        for seed in seeds:
            base = None  # pretrained once per (task, seed), and only when something is left to measure
            for vname in cfg.variants:
                todo = [m for m in cfg.methods if not generation_results.done(
                    table, mode, task=task, variant=vname, seed=seed, method=m)]
                if not todo:
                    continue
                t0 = time.perf_counter()
                if base is None:
                    base = pretrained(task, cfg, state=pretrained_state(task, cfg, progress, seed, cache))
                rows = _measure_variant(cfg, task, vname, seed, todo, base, mode, progress, t0)
                for row, examples in rows:
                    ex_table.add(examples)
                    table.add([row])
    df = table.frame
    if df.empty:
        return df
    return df[df["task"].isin(tasks) & df["seed"].isin(seeds)].reset_index(drop=True)


def _measure_variant(cfg: Config, task: str, vname: str, seed: int, todo: list[str], base: TinyLM, mode: str,
                     progress: bool, t0: float):
    """Yield (row, example rows) for each method of ``todo`` on one (task, variant, seed)."""
    var = VARIANTS[vname]
    data = make_task(task, seed, cfg.per_class, cfg.n_val_per_class, prefix=var.prefix,
                     n_flat_per_class=cfg.n_flat_per_class)
    em_base = float(exact_match(base, data, generic=True).mean())
    if var.finetuned:
        res = finetune(base, data, cfg, seed, progress, var.train_loss)
        model, checkpoints = res.model, res.checkpoints
    else:
        model, checkpoints = lora_init(base, cfg, seed), []
    em = exact_match(model, data)
    base_row = {"task": task, "variant": vname, "seed": seed, "mode": mode, "prefix": var.prefix,
                "grad_loss": var.grad_loss, "train_loss": var.train_loss, "finetuned": var.finetuned,
                "exact_match": float(em.mean()), "exact_match_base": em_base,
                "n_train": len(data.X_train), "n_queries": len(data.X_val),
                "n_lora_params": sum(model.get_parameter(n).numel() for n in lora_names(model)),
                "setup_seconds": time.perf_counter() - t0,
                "words": source_words(N_WORDS)[1] if task == "sentence" else "-"}
    q_show = _example_queries(data, cfg.n_examples)
    cache = ifkit.GradCache()  # the training gradients at this model, computed once for all methods
    bar = tqdm(todo, desc=f"gen-text {task} {vname} seed {seed}", disable=not progress, leave=False)
    for method in bar:
        bar.set_postfix_str(method)
        t1 = time.perf_counter()
        P = pairwise(method, model, data, cfg, checkpoints, var.grad_loss, cache, var.train_loss)  # (Q, n)
        auc, recall, prec5 = ranking_metrics(P, data.cls_train, data.cls_val)
        recall_abs = ranking_metrics(-P.abs(), data.cls_train, data.cls_val)[1]  # ranked by |IF| (DataInf's code)
        row = {**base_row, "method": method, "auc": auc, "recall": recall, "recall_abs": recall_abs,
               "precision5": prec5, "seconds": time.perf_counter() - t1}
        yield row, _example_rows(task, vname, seed, method, data, P, q_show)


def _example_queries(data: TaskData, n: int) -> list[int]:
    """The first validation query of ``n`` evenly spaced classes."""
    ks = np.unique(data.cls_val)
    picks = ks[np.linspace(0, len(ks) - 1, n).round().astype(int)] if n else []
    return [int(np.flatnonzero(data.cls_val == k)[0]) for k in picks]


def _example_rows(task, variant, seed, method, data: TaskData, P: Tensor, queries: list[int], top: int = 5
                  ) -> list[dict]:
    rows = []
    for q in queries:
        order = torch.argsort(P[q], stable=True)[:top].tolist()  # most negative = most helpful first
        rows.append({"task": task, "variant": variant, "seed": seed, "query": q, "method": method, "rank": 0,
                     "text": data.text_val[q], "same_class": True, "influence": float("nan")})
        for r, i in enumerate(order, 1):
            rows.append({"task": task, "variant": variant, "seed": seed, "query": q, "method": method, "rank": r,
                         "text": data.text_train[i], "same_class": bool(data.cls_train[i] == data.cls_val[q]),
                         "influence": float(P[q, i])})
    return rows


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Mean (and std over seeds) of AUC, recall (signed and |IF|) and precision@5 per task, variant and method, in
    percent."""
    if "recall_abs" not in df.columns:  # rows from before the |IF| recall
        df = df.assign(recall_abs=float("nan"))
    g = df.groupby(["task", "variant", "method"], sort=False)
    out = g.agg(auc=("auc", "mean"), auc_sd=("auc", "std"), recall=("recall", "mean"),
                recall_sd=("recall", "std"), recall_abs=("recall_abs", "mean"), precision5=("precision5", "mean"),
                precision5_sd=("precision5", "std"), exact_match=("exact_match", "mean"),
                seconds=("seconds", "mean"), seeds=("seed", "nunique"))
    for c in ("auc", "auc_sd", "recall", "recall_sd", "recall_abs", "precision5", "precision5_sd", "exact_match"):
        out[c] = 100 * out[c]
    return out.reset_index()


def seed_list(seeds: int | Sequence[int]) -> list[int]:
    """``ifkit reproduce --seeds``: a count N (seeds 0..N-1) or the seeds themselves."""
    return list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]


@register("gen-text", parts=TASKS, seconds=(1587, 58), part_seconds={"sentence": 928, "math": 659},
          note="3 seeds; with --jobs 2 its two tasks run side by side: 15.5 min (full: measured from scratch, "
               "--no-cache, quiet machine; --fast measured with --jobs 2)", seed_lists=True)
def run(fast: bool, seeds: int | Sequence[int], out: Path, part: str | None = None) -> pd.DataFrame:
    """``ifkit reproduce gen-text``: write ``out/generation.csv`` (tasks sentence, math) and the examples file.

    ``seeds``: a count or a list (``--seeds 0 1 2 3 4``). ``part``: one task only (``ifkit reproduce
    gen-text:math``; ``--jobs 2`` runs the two tasks side by side)."""
    cfg = FAST if fast else FULL
    seeds = seed_list(seeds)
    df = measure(cfg, seeds, out, tasks=(part,) if part else TASKS)
    with pd.option_context("display.width", 160):
        print(f"Influential-data identification, text ({'fast' if fast else 'full'}, seeds={seeds}): AUC and "
              "recall@90 (signed, |IF|) in % (mean over queries, then seeds)")
        print(summary(df).to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    return df


__all__ = ["FAST", "FULL", "VARIANTS", "Config", "TaskData", "Variant", "classes", "encode", "exact_match", "finetune", "lora_init", "make_task",
           "measure", "pretrained", "pretrained_state", "ranking_metrics", "run", "seed_list", "source_words", "summary", "vocabulary"]
