"""Influential-data identification for a generative text model (DataInf's protocol; paper Sec. 5, text half).

The measured numbers, the designs that did not work and the run time are in RESULTS.md, "Generation (text)".

Two procedurally generated task families (``ifkit.data.text``), 10 classes each, 100 examples per class (90 train,
10 validation): ``sentence`` (transformations of a 5-word sentence) and ``math`` (word problems with 10 question
types and a worked answer). As in DataInf, the 100 contents are drawn once per seed and reused in every class;
only the prompt's class prefix differs. Each example is ``<bos> PREFIX CONTENT <sep>`` then the answer and
``<eos>``. Two benchmarks (``VARIANTS``), each a prefix and a ``grad_loss`` (the tokens whose cross-entropy the
attribution gradient sees; ``ifkit.data.text.grad_targets``):

* ``protocol`` (DataInf's): DataInf's prompt word for word ("NAME is a chatbot that performs a specific
  transformation on sentences : TITLE . for example :", 20 tokens; math: a chatbot name, ":" and the question),
  gradients of the loss on the PROMPT tokens (DataInf: labels = the prompt's input ids), over the prompt only
  (``TaskData.attribution``: causal attention makes cutting the answer off exact);
* ``harder``: one class token (math: no question), gradients of the ANSWER loss.

Model: ``TinyLM`` (word-level, d_model 64, 2 layers) pretrained on the same formats with a generic ``<any>``
prefix, shared by both variants and all seeds like one public checkpoint; then LoRA adapters (rank 8, alpha 32 on
every attention q and v map: DataInf's setting) fine-tuned on the 900 training examples' answer loss (as is VM/FVM's
theta~ on the validation set). Influence over the adapters only (``params=lora_names(model)``).

Attribution: for each validation query q, ``ifkit.pairwise(method, model, train, queries)[q]`` ranks the training
points, most helpful (most negative) first; ground truth: the training points of q's class; per query, then
averaged (``ifkit.metrics.ranking_metrics``): ROC AUC, recall among the top k = 90 (DataInf's recall) and precision
among the top 5. Methods: graddot, gradcos, tracin (the fine-tuning's checkpoints), datainf, if-lissa (mini-batch
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
    grad_loss: str  # ifkit.data.text.GRAD_LOSSES: "prompt" (DataInf), "full" or "answer" (the fine-tuning loss)


# "protocol": DataInf's (easy: the prompt gradient carries the class prefix); "harder": where methods differ
VARIANTS = {"protocol": Variant("name", "prompt"), "harder": Variant("cue", "answer")}
# ------------------------------------------------------------------------------------------------ model
@dataclass(frozen=True)
class Config:
    """Sizes of one run (``FAST`` for CI, ``FULL`` for the reported numbers)."""

    per_class: int = 100
    n_val_per_class: int = 10
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
    variants: tuple[str, ...] = tuple(VARIANTS)
    lissa_iters: int = 30
    lissa_batch: int = 8
    damping: float = 1e-3
    flat_steps: int = 100
    n_examples: int = 3  # queries per task written to the examples file


FULL = Config()
FAST = replace(FULL, per_class=30, n_val_per_class=3, pretrain_steps=(300, 200), epochs=10, n_checkpoints=3,
               lissa_iters=10, flat_steps=30)


def pretrained_state(task: str, cfg: Config = FULL, progress: bool = False) -> dict[str, Tensor]:
    """Pretrain the base model of ``task`` (TinyLM on the cue-less formats) and return its state_dict.

    Deterministic (fixed seeds): every call gives the same state. ``measure`` pretrains once per task and passes
    the state on (``pretrained(..., state=...)``); nothing is cached between calls.
    """
    torch.manual_seed(1234)  # the base model is shared by all seeds, like one public checkpoint
    model = TinyLM(len(vocabulary(task)), d_model=cfg.d_model, n_layers=cfg.n_layers, d_ff=cfg.d_ff,
                   max_len=LAYOUTS[task].seq_len)
    Xp, yp = pretraining_batch(task, np.random.default_rng(4321), cfg.pretrain_pool)  # fresh examples, encoded once
    fit_steps(model, Xp, yp, steps=cfg.pretrain_steps[TASKS.index(task)], batch_size=cfg.pretrain_batch,
              lr=cfg.pretrain_lr, seed=4321, desc=f"pretrain {task}", progress=progress)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def pretrained(task: str, cfg: Config = FULL, progress: bool = False, state: dict[str, Tensor] | None = None
               ) -> TinyLM:
    """The base model of ``task``: TinyLM pretrained on the cue-less formats, in eval mode.

    ``state``: a ``pretrained_state`` of the same task and cfg to load (None: pretrain now).
    """
    state = pretrained_state(task, cfg, progress) if state is None else state
    model = TinyLM(len(vocabulary(task)), d_model=cfg.d_model, n_layers=cfg.n_layers, d_ff=cfg.d_ff,
                   max_len=LAYOUTS[task].seq_len)
    model.load_state_dict(state)
    return model.eval()


def finetune(base: TinyLM, data: TaskData, cfg: Config, seed: int, progress: bool = False):
    """Add LoRA adapters to a copy of ``base`` and train only them on ``data.train``; returns the TrainResult."""
    model = copy.deepcopy(base)
    torch.manual_seed(seed)  # adapter initialisation
    add_lora(model, cfg.lora_targets, rank=cfg.lora_rank, alpha=cfg.lora_alpha)
    res = train(model, data.train, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=seed,
                n_checkpoints=cfg.n_checkpoints, progress=progress)
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
                   cache: ifkit.GradCache | None = None) -> dict:
    """The options of ``ifkit.pairwise`` for ``method`` in this experiment (TracIn: see ``pairwise``).

    ``cache``: a GradCache shared by the methods scored at the same model (else one per call)."""
    # cache_grads: the (n_train, p) LoRA gradients (900 x 4,096 floats) fit easily, and one vmap pass is ~20x
    # faster here than forward-mode dots with 100 query tangents (measured: graddot 3 s against 68 s)
    opts: dict = {"params": lora_names(model), "cache_grads": True if cache is None else cache}
    if method == "if-lissa":
        opts.update(damping=cfg.damping, iters=cfg.lissa_iters, lissa_batch=cfg.lissa_batch,
                    scale=_lissa_scale(model, data, cfg, grad_loss))
    elif method in ("vm", "fvm"):
        # DataInf's closed form of the VALIDATION curvature at theta~ (ifkit/curvature/val_inverse.py): the exact
        # Gauss-Newton over 100 sequences needs one product per LoRA parameter, measured at 240 s for a rank-1
        # (512-parameter) adapter here -- beyond the budget. Kwon et al.'s damping, as for "datainf". theta~ is
        # fine-tuned on the validation set's ANSWER loss (the model's own objective) whatever grad_loss is; the
        # curvature is that of the loss the gradients are of (grad_loss), as DataInf's is. Measured (protocol,
        # sentence, FAST sizes, seed 0): the answer loss's curvature left VM at AUC 0.89, below graddot's 0.95;
        # the prompt loss's gave 1.00 (DataInf 1.00).
        opts.update(flat_val=data.val, flat_steps=cfg.flat_steps, curvature="datainf",
                    curvature_val=data.attribution(grad_loss)[1])
    elif method == "if-cg":
        opts.update(damping=cfg.damping)
    return opts


def _lissa_scale(model, data: TaskData, cfg: Config, grad_loss: str) -> float:
    """LiSSA needs scale > the top eigenvalue of every mini-batch curvature it sees: 3 x the top eigenvalue of
    the Gauss-Newton matrix on a few mini-batches (the default, 1.5 x the full-batch one from 30 power steps,
    diverged here: mini-batch curvature is spikier)."""
    from ifkit.core.func import ggn_vp_fn, make_problem
    from ifkit.curvature.solvers import top_eigenvalue

    prob = make_problem(model, lora_names(model))
    gen = torch.Generator().manual_seed(0)
    lam = 0.0
    X, y = data.attribution(grad_loss)[0]
    for _ in range(4):
        idx = torch.randint(0, len(X), (cfg.lissa_batch,), generator=gen)
        mv = ggn_vp_fn(prob, X[idx], y[idx])
        lam = max(lam, abs(top_eigenvalue(mv, prob.p, iters=20, seed=0)))
    return 3 * (lam + cfg.damping)


def pairwise(method: str, model, data: TaskData, cfg: Config, checkpoints=(), grad_loss: str = "answer",
             cache: ifkit.GradCache | None = None) -> Tensor:
    """(n_queries, n_train) ``ifkit.pairwise`` of ``method`` over the LoRA parameters, queries = validation set.

    ``grad_loss`` picks the tokens whose loss the attribution gradients see (``ifkit.data.text.grad_targets``):
    the train and query targets passed to ``ifkit.pairwise``; the model was fine-tuned on the answer loss.
    ``cache``: an ``ifkit.GradCache`` shared across calls at the same model (graddot, gradcos, DataInf, LiSSA's
    last pass and TracIn's last checkpoint read the same training gradients).

    TracIn is sum_c lr_c * pairwise("tracin", model at checkpoint c): exactly what ``checkpoints=`` computes,
    but one call per checkpoint lets each use the cached per-sample gradients (tested equal).
    """
    train_g, val_g = data.attribution(grad_loss)
    if method != "tracin" or not checkpoints:
        return ifkit.pairwise(method, model, train_g, val_g,
                              **method_options(method, cfg, data, model, grad_loss, cache))
    total = torch.zeros(len(data.X_val), len(data.X_train))
    at = copy.deepcopy(model)
    for state, lr in checkpoints:
        at.load_state_dict(state)
        total += lr * ifkit.pairwise("tracin", at, train_g, val_g,
                                     **method_options(method, cfg, data, at, grad_loss, cache))
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
    base_states: dict[str, dict[str, Tensor]] = {}  # the pretrained base model of each task
    ex_table = ResultsTable(out / EXAMPLES, ["task", "variant", "seed", "query", "method", "rank"], required=["text"])
    for task in tasks:
        for vname in cfg.variants:
            var = VARIANTS[vname]
            for seed in seeds:
                todo = [m for m in cfg.methods if not generation_results.done(
                    table, mode, task=task, variant=vname, seed=seed, method=m)]
                if not todo:
                    continue
                t0 = time.perf_counter()
                data = make_task(task, seed, cfg.per_class, cfg.n_val_per_class, prefix=var.prefix)
                if task not in base_states:  # once per task, and only when something is left to measure
                    base_states[task] = pretrained_state(task, cfg, progress)
                base = pretrained(task, cfg, state=base_states[task])
                em_base = float(exact_match(base, data, generic=True).mean())
                res = finetune(base, data, cfg, seed, progress)
                model = res.model
                em = exact_match(model, data)
                setup_s = time.perf_counter() - t0
                base_row = {"task": task, "variant": vname, "seed": seed, "mode": mode, "prefix": var.prefix,
                            "grad_loss": var.grad_loss, "exact_match": float(em.mean()), "exact_match_base": em_base,
                            "n_train": len(data.X_train), "n_queries": len(data.X_val),
                            "n_lora_params": sum(model.get_parameter(n).numel() for n in lora_names(model)),
                            "setup_seconds": setup_s, "words": source_words(N_WORDS)[1] if task == "sentence" else "-"}
                q_show = _example_queries(data, cfg.n_examples)
                cache = ifkit.GradCache()  # the training gradients at this model, computed once for all methods
                bar = tqdm(todo, desc=f"gen-text {task} {vname} seed {seed}", disable=not progress, leave=False)
                for method in bar:
                    bar.set_postfix_str(method)
                    t1 = time.perf_counter()
                    P = pairwise(method, model, data, cfg, res.checkpoints, var.grad_loss, cache)  # (Q, n)
                    auc, recall, prec5 = ranking_metrics(P, data.cls_train, data.cls_val)
                    ex_table.add(_example_rows(task, vname, seed, method, data, P, q_show))
                    table.add([{**base_row, "method": method, "auc": auc, "recall": recall, "precision5": prec5,
                                "seconds": time.perf_counter() - t1}])
    df = table.frame
    if df.empty:
        return df
    return df[df["task"].isin(tasks) & df["seed"].isin(seeds)].reset_index(drop=True)


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
    """Mean (and std over seeds) of AUC, recall and precision@5 per task, variant and method, in percent."""
    g = df.groupby(["task", "variant", "method"], sort=False)
    out = g.agg(auc=("auc", "mean"), auc_sd=("auc", "std"), recall=("recall", "mean"),
                recall_sd=("recall", "std"), precision5=("precision5", "mean"), precision5_sd=("precision5", "std"),
                exact_match=("exact_match", "mean"), seconds=("seconds", "mean"), seeds=("seed", "nunique"))
    for c in ("auc", "auc_sd", "recall", "recall_sd", "precision5", "precision5_sd", "exact_match"):
        out[c] = 100 * out[c]
    return out.reset_index()


@register("gen-text", parts=TASKS, seconds=(541, 43), part_seconds={"sentence": 306, "math": 234},
          note="one core; with --jobs 2 its two tasks run side by side: ~5 min")
def run(fast: bool, seeds: int, out: Path, part: str | None = None) -> pd.DataFrame:
    """``ifkit reproduce gen-text``: write ``out/generation.csv`` (tasks sentence, math) and the examples file.

    ``part``: one task only (``ifkit reproduce gen-text:math``; ``--jobs 2`` runs the two tasks side by side)."""
    cfg = FAST if fast else FULL
    df = measure(cfg, range(seeds), out, tasks=(part,) if part else TASKS)
    with pd.option_context("display.width", 140):
        print(f"Influential-data identification, text ({'fast' if fast else 'full'}, seeds={seeds}): AUC and "
              "recall@90 in % (mean over queries, then seeds)")
        print(summary(df).to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    return df


__all__ = ["FAST", "FULL", "VARIANTS", "Config", "TaskData", "Variant", "classes", "encode", "exact_match", "finetune", "make_task",
           "measure", "pretrained", "pretrained_state", "ranking_metrics", "run", "source_words", "summary", "vocabulary"]
