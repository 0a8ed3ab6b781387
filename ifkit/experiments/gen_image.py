"""Influential-data identification for an image generator: which training images taught it a query's style?

DataInf's protocol (Kwon et al. 2024, Sec. 4.3; the paper's generation experiment), scaled to a CPU. The measured
numbers, the sweep that picked these settings and the run time are in RESULTS.md, "Generation (image)".

1. A small generator is pretrained on PLAIN images: a conditional VAE (``ifkit.models.ConditionalVAE``, Linear
   layers only) on Fashion-MNIST downsampled to 16x16 (FAST: scikit-learn's 8x8 digits). The condition plays the
   prompt: "a <class>", or "a <class> in style <s>" with a style token (token 0 = plain).
2. LoRA adapters (rank 2, on every Linear layer, only the adapters trainable) are fine-tuned on a mixture of 6
   styles (FAST: 4) from ``ifkit.data.styles``, ``n_train_per_style`` training and ``n_val_per_style`` validation
   images per style (100 + 25). Two variants (``CONFIGS[mode][variant]``): "protocol" (``OVERLAYS``: a pattern
   drawn over every image of the style, and the prompt names the style) and "harder" (``TRANSFORMS``: a
   transformation of each image's content, no style token).
3. For every validation image (the query), ``ifkit.pairwise`` ranks the training images over the DECODER's
   adapters (``attributed``); most helpful = most negative first. Ground truth: a training image is relevant when
   it has the query's style. Per query, then averaged (``ifkit.metrics.ranking_metrics``): ROC AUC, recall of the
   k same-style images among the top k, and the share of same-style images among the top 5 (precision5).

The per-sample loss is the VAE's negative ELBO per pixel at the posterior mean (eps = 0), a deterministic function
of the adapters (a fixed random eps, as DataInf fixes its diffusion noise, buries the style: RESULTS.md); training
draws fresh noise every step. VM/FVM use ``curvature="ggn"``, the dense Gauss-Newton matrix over the ~800
attributed adapter parameters: PSD (the negative ELBO is convex in the outputs), exact since p is small, and the
low-rank Woodbury form of the validation curvature (``ifkit.curvature.val_inverse.LowRankGGN``) needs class-id
targets; the Hessian itself can be indefinite here.

Outputs (``out/``): ``generation.csv`` (task "style"; shared with gen-text through
``ifkit.experiments.generation_results``), ``generation_image_examples.csv`` (the top-5 training indices of a few
queries per method; ``build_data(CONFIGS[mode][variant], seed)`` rebuilds the images) and
``generation_image_styles.csv`` (did LoRA learn the styles: ``style_check``).
"""

from __future__ import annotations

import copy
import fnmatch
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

import ifkit
from ifkit.data.styles import OVERLAYS, STYLES, TRANSFORMS, StyleData, style_data, stylize
from ifkit.experiments import generation_results, register
from ifkit.metrics import ranking_metrics
from ifkit.models import MLP, ConditionalVAE, add_lora, lora_names
from ifkit.optim.generative import fit_classifier, fit_conditional_vae
from ifkit.results import ResultsTable

TASK = "style"
EXAMPLES_FILENAME = "generation_image_examples.csv"
STYLES_FILENAME = "generation_image_styles.csv"
TOP = 5  # training images kept per query and method for the figure


# ------------------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class Config:
    """Sizes of one run (``CONFIGS[mode][variant]``: mode "fast" for CI, "full" for the reported numbers)."""

    dataset: str  # "fashion" (downsampled to image_size) or "digits" (8x8)
    image_size: int
    styles: tuple[str, ...]
    n_train_per_style: int
    n_val_per_style: int
    n_pretrain: int  # plain images for pretraining
    pretrain_epochs: int
    lora_epochs: int
    lora_rank: int = 2
    lora_lr: float = 3e-3
    lora_targets: tuple[str, ...] = ("*",)  # adapters on every Linear layer (encoder and decoder)
    attribute: tuple[str, ...] = ("dec.*",)  # the adapters influence is computed over: the decoder's (docstring)
    hidden: int = 64
    latent: int = 8
    n_checkpoints: int = 5  # TracIn checkpoints along the LoRA fine-tuning
    methods: tuple[str, ...] = ("graddot", "gradcos", "tracin", "datainf", "if-lissa", "vm", "fvm")
    lissa_iters: int = 30  # as gen-text; 100 took a third of the full run and moved AUC by < 0.005
    lissa_batch: int = 32  # mini-batch curvature products: full-batch LiSSA over all queries was ~25x slower
    n_examples: int = 2  # queries per style kept in the examples file (for the figure)
    n_samples: int = 50  # prior samples per style classified for the style check
    style_prompt: bool = True  # the condition names the style ("a <class> in style <s>"), as trigger words do
    variant: str = "protocol"  # the label written to generation.csv

    @property
    def n_train(self) -> int:
        return len(self.styles) * self.n_train_per_style

    @property
    def n_val(self) -> int:
        return len(self.styles) * self.n_val_per_style


# "protocol" (DataInf's: every image of a style shares the style's look, and the prompt names the style) and
# "harder" (a style is a transformation of each image's content, and the prompt does not name it).
_FULL = Config(dataset="fashion", image_size=16, styles=tuple(OVERLAYS), n_train_per_style=100,
               n_val_per_style=25, n_pretrain=4000, pretrain_epochs=15, lora_epochs=60)
_FAST = Config(dataset="digits", image_size=8, styles=tuple(OVERLAYS)[:4], n_train_per_style=40,
               n_val_per_style=10, n_pretrain=1000, pretrain_epochs=20, lora_epochs=40, hidden=32)


def _harder(cfg: Config, n_styles: int) -> Config:
    return replace(cfg, styles=tuple(TRANSFORMS)[:n_styles], style_prompt=False, variant="harder")


CONFIGS = {"full": {"protocol": _FULL, "harder": _harder(_FULL, 6)},
           "fast": {"protocol": _FAST, "harder": _harder(_FAST, 4)}}
FULL, FAST = CONFIGS["full"]["protocol"], CONFIGS["fast"]["protocol"]
VARIANTS = tuple(CONFIGS["full"])


# ------------------------------------------------------------------------------------------------ data
def build_data(cfg: Config, seed: int) -> StyleData:
    """Every image of one seed at ``cfg``'s sizes (``ifkit.data.styles.style_data``); deterministic in (cfg, seed),
    so figures can rebuild the images."""
    return style_data(cfg.dataset, cfg.image_size, cfg.styles, cfg.n_train_per_style, cfg.n_val_per_style,
                      cfg.n_pretrain, seed)


# ------------------------------------------------------------------------------------------------ training
loss_fn = ConditionalVAE.negative_elbo  # (outputs, flattened images) -> (n,) negative ELBO per pixel


def attribution_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    """``loss_fn`` for the influence methods: the same (n,) values, bit for bit, ~2.3x faster under torch.func.

    The Bernoulli cross-entropy is written as (1 - x) * logits - logsigmoid(logits), the formula of torch's own
    kernel (equal values). torch's fused ``binary_cross_entropy_with_logits`` runs slowly under the methods'
    vmapped JVPs (tangents = columns; 29 s of the full run's 94 s of attribution inside that one op, profiled):
    seed 0's seven methods took 19.1 s with it, 8.2 s with this (same rankings; scores equal to 1e-6 relative).
    Training keeps ``loss_fn`` (its backward differs from this one's in the last bit).
    """
    D = targets.shape[1]
    logits, mu, logvar = outputs[:, :D], *outputs[:, D:].chunk(2, dim=1)
    recon = ((1 - targets) * logits - F.logsigmoid(logits)).sum(1)  # (n,)
    kl = 0.5 * (mu**2 + logvar.exp() - logvar - 1).sum(1)  # (n,)
    return (recon + kl) / D


def _tokens(model: ConditionalVAE, styles: Tensor | None) -> Tensor | None:
    """Style ids 0..S-1 -> the model's style tokens 1..S (token 0 = "plain"); None without style tokens."""
    return None if styles is None or not model.n_styles else styles + 1


def pretrain(cfg: Config, data: StyleData, seed: int, progress: bool = True) -> ConditionalVAE:
    """The base generator: a conditional VAE trained on plain images."""
    torch.manual_seed(seed)
    n_classes = int(data.pretrain[1].max()) + 1
    model = ConditionalVAE(cfg.image_size, max(n_classes, 10), latent=cfg.latent, hidden=cfg.hidden,
                           n_styles=len(cfg.styles) + 1 if cfg.style_prompt else 0)
    fit_conditional_vae(model, *data.pretrain, loss=loss_fn, epochs=cfg.pretrain_epochs, lr=2e-3, seed=seed,
                        batch_size=128, desc="pretrain", progress=progress)
    return model


def finetune_lora(cfg: Config, base: ConditionalVAE, data: StyleData, seed: int,
                  progress: bool = True) -> tuple[ConditionalVAE, list[tuple[dict[str, Tensor], float]]]:
    """A copy of ``base`` with LoRA adapters on every Linear layer, only the adapters trained on the styles.

    Returns the tuned model and its checkpoints (for TracIn).
    """
    torch.manual_seed(seed)
    model = copy.deepcopy(base)
    add_lora(model, cfg.lora_targets, rank=cfg.lora_rank)
    cps = fit_conditional_vae(model, data.X_train, data.c_train, _tokens(model, data.s_train), loss=loss_fn,
                              epochs=cfg.lora_epochs, lr=cfg.lora_lr, seed=seed + 1, n_checkpoints=cfg.n_checkpoints,
                              desc="LoRA", progress=progress)
    return model, cps


def attribution_sets(model: ConditionalVAE, data: StyleData, seed: int, noise: bool = False
                     ) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """(X_packed, targets) for training and validation: the loss at the posterior mean (eps = 0).

    ``noise=True``: a FIXED random eps per example instead (from ``seed``), as DataInf fixes the diffusion noise.
    That noise is part of each example's gradient and buries the style (FULL protocol styles, LoRA lr 1e-2 for 30
    epochs, graddot over all adapters, seed 0: AUC 0.66 with noise, 0.79 at eps = 0), so the experiment uses eps = 0.
    """
    gen = torch.Generator().manual_seed(10_000 + seed)
    eps_t = torch.randn(len(data.X_train), model.latent, generator=gen) if noise else None
    eps_v = torch.randn(len(data.X_val), model.latent, generator=gen) if noise else None
    train = (model.pack(data.X_train, data.c_train, eps_t, _tokens(model, data.s_train)), data.X_train.flatten(1))
    val = (model.pack(data.X_val, data.c_val, eps_v, _tokens(model, data.s_val)), data.X_val.flatten(1))
    return train, val


@torch.no_grad()
def mean_negative_elbo(model: ConditionalVAE, images: Tensor, labels: Tensor, styles: Tensor | None = None) -> float:
    """Mean negative ELBO per pixel at the posterior mean (eps = 0): a deterministic fit measure.

    ``styles``: style ids 0..S-1 (None or -1 entries: plain images)."""
    return float(loss_fn(model(model.pack(images, labels, styles=_tokens(model, styles))), images.flatten(1)).mean())


# ------------------------------------------------------------------------------------------------ attribution
def attributed(model: ConditionalVAE, cfg: Config) -> list[str]:
    """Names of the adapter parameters that influence is computed over (``cfg.attribute`` patterns)."""
    return [n for n in lora_names(model) if any(fnmatch.fnmatch(n, pat) for pat in cfg.attribute)]


def method_options(method: str, cfg: Config, model: ConditionalVAE, checkpoints, val) -> dict:
    """The options each method gets here (all over the LoRA parameters, with the negative ELBO as loss)."""
    # cache_grads: the (600, ~800) per-sample training gradients take one vmap pass (~20 ms); without them every
    # method's final G @ V ran as forward-mode dots with one tangent per query, ~0.5 s a pass (same numbers to
    # float rounding)
    opts: dict = {"params": attributed(model, cfg), "loss": attribution_loss, "cache_grads": True}
    if method == "tracin":
        opts["checkpoints"] = list(checkpoints) or None  # none: the model as given (TracIn = graddot)
    if method == "if-lissa":
        opts.update(iters=cfg.lissa_iters, lissa_batch=cfg.lissa_batch)
    if method in ("vm", "fvm"):
        opts["flat_val"] = val
        opts["curvature"] = "ggn"  # dense Gauss-Newton over the adapters (module docstring)
    return opts


def pairwise(method: str, cfg: Config, model: ConditionalVAE, train, val, checkpoints, seed: int) -> Tensor:
    """(n_val, n_train) ``ifkit.pairwise`` of ``method`` with ``method_options`` (the queries: the validation set).

    TracIn is sum_c lr_c * pairwise("tracin", model at checkpoint c): what ``checkpoints=`` computes, but one
    call per checkpoint lets each use its cached per-sample gradients (``checkpoints=`` scores copies of the
    model, which the cache does not serve: forward-mode dots, 1.7 s against 0.1 s; equal to float rounding).
    """
    if method != "tracin" or not checkpoints:
        return ifkit.pairwise(method, model, train, val, seed=seed,
                              **method_options(method, cfg, model, checkpoints, val))
    total = torch.zeros(len(val[0]), len(train[0]))
    at = copy.deepcopy(model)
    for state, lr in checkpoints:
        at.load_state_dict(state)
        total += lr * ifkit.pairwise("tracin", at, train, val, seed=seed, **method_options(method, cfg, at, (), val))
    return total


def top_helpful(table: Tensor, k: int = TOP) -> Tensor:
    """(n_queries, k) indices of the k most helpful (most negative) training points of each query."""
    return torch.argsort(table, dim=1, stable=True)[:, :k]


# ------------------------------------------------------------------------------------------------ style check
def _style_classifier(data: StyleData, seed: int) -> MLP:
    """A small MLP telling the styles (and "plain", the last class) apart on real images."""
    torch.manual_seed(seed)
    S = len(data.styles)
    plain = data.pretrain[0][: len(data.X_train) // S]
    X = torch.cat([data.X_train, plain])
    y = torch.cat([data.s_train, torch.full((len(plain),), S, dtype=torch.long)])
    clf = MLP(X[0].numel(), (64,), S + 1)
    return fit_classifier(clf, X, y, seed=seed).eval()


@torch.no_grad()
def style_check(cfg: Config, base: ConditionalVAE, tuned: ConditionalVAE, data: StyleData,
                seed: int) -> pd.DataFrame:
    """Did LoRA teach the styles? One row per style (and "plain"): validation negative ELBO and style recognition.

    A small style classifier is trained on real images (the styled training images and plain ones). Columns:
    nelbo_base / nelbo_lora (mean negative ELBO per pixel of the style's validation images at eps = 0),
    classifier_acc (the classifier on the real validation images: the ceiling), recon_acc_base / recon_acc_lora
    (share of reconstructions recognised as the style), sample_acc_base / sample_acc_lora (share of samples
    generated from the prior for "a <random class> in style <s>" recognised as style s; without style tokens,
    the share of unprompted samples classified as s).
    """
    clf = _style_classifier(data, seed)
    S = len(data.styles)
    gen = torch.Generator().manual_seed(20_000 + seed)
    labels = torch.randint(0, tuned.n_classes, (cfg.n_samples,), generator=gen)
    plain = data.pretrain[0][-cfg.n_val_per_style :], data.pretrain[1][-cfg.n_val_per_style :]
    rows = []
    for s, style in enumerate([*data.styles, "plain"]):
        X, c = (data.X_val[data.s_val == s], data.c_val[data.s_val == s]) if s < S else plain
        ids = torch.full((len(X),), s) if s < S else None  # plain: style token 0
        row = {"seed": seed, "style": style, "n": len(X),
               "classifier_acc": float((clf(X).argmax(1) == s).float().mean())}
        for name, model in (("base", base), ("lora", tuned)):
            row[f"nelbo_{name}"] = mean_negative_elbo(model, X, c, ids)
            recon = model.reconstruct(X, c, _tokens(model, ids))
            row[f"recon_acc_{name}"] = float((clf(recon).argmax(1) == s).float().mean())
            tok = _tokens(model, torch.full((len(labels),), s)) if s < S else None
            samples = model.sample(labels, tok, generator=torch.Generator().manual_seed(30_000 + seed))
            row[f"sample_acc_{name}"] = float((clf(samples).argmax(1) == s).float().mean())
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------ the run
def _mode(cfg: Config) -> str:
    for name, variants in CONFIGS.items():
        if variants.get(cfg.variant) == cfg:
            return name
    return "custom"


def measure(cfg: Config, seeds: Iterable[int], out: str | Path, progress: bool = True,
            mode: str | None = None) -> pd.DataFrame:
    """Run (or resume) one variant (``cfg.variant``) for ``seeds``; return its rows of ``out/generation.csv``.

    Args:
        cfg: sizes and the variant (``CONFIGS[mode][variant]``).
        seeds: each seed draws its own images, pretraining and LoRA fine-tuning.
        out: results folder (``generation.csv`` and the two companion files).
        progress: tqdm bars.
        mode: the label stored in the ``mode`` column (default: "full"/"fast" for those configs, else "custom").
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # models this small run fastest on one thread (and the machine is shared)
    try:
        return _measure(cfg, list(seeds), Path(out), progress, mode or _mode(cfg))
    finally:
        torch.set_num_threads(threads)


def _measure(cfg: Config, seeds: list[int], out: Path, progress: bool, mode: str) -> pd.DataFrame:
    table = generation_results.table(out, [TASK])
    examples = ResultsTable(out / EXAMPLES_FILENAME, ["variant", "seed", "method", "query", "rank"],
                            required=["train_index"])
    styles_table = ResultsTable(out / STYLES_FILENAME, ["variant", "seed", "style"], required=["nelbo_lora"])
    v = cfg.variant
    for seed in seeds:
        todo = [m for m in cfg.methods
                if not generation_results.done(table, mode, task=TASK, variant=v, seed=seed, method=m)]
        if not todo:
            continue
        data = build_data(cfg, seed)
        base = pretrain(cfg, data, seed, progress)
        tuned, checkpoints = finetune_lora(cfg, base, data, seed, progress)
        check = style_check(cfg, base, tuned, data, seed)
        styles_table.add([{**r, "variant": v, "mode": mode} for r in check.to_dict("records")])
        train, val = attribution_sets(tuned, data, seed)
        # The queries kept for the figure: the first n_examples validation images of each style.
        shown = torch.cat([torch.nonzero(data.s_val == s).flatten()[: cfg.n_examples] for s in range(len(cfg.styles))])
        bar = tqdm(todo, desc=f"gen-image {v} seed {seed}", disable=not progress, leave=False)
        for method in bar:
            bar.set_postfix_str(method)
            start = time.perf_counter()
            tab = pairwise(method, cfg, tuned, train, val, checkpoints, seed)  # (n_val, n_train)
            seconds = time.perf_counter() - start
            m = ranking_metrics(tab, data.s_train, data.s_val, top=TOP).as_dict()
            top = top_helpful(tab[shown])  # (len(shown), TOP)
            examples.add([
                {"variant": v, "seed": seed, "method": method, "query": int(q),
                 "query_style": cfg.styles[int(data.s_val[q])], "rank": r + 1, "train_index": int(top[j, r]),
                 "train_style": cfg.styles[int(data.s_train[top[j, r]])], "score": float(tab[q, top[j, r]]),
                 "mode": mode, "dataset": cfg.dataset, "image_size": cfg.image_size}
                for j, q in enumerate(shown.tolist()) for r in range(top.shape[1])
            ])
            table.add([{"task": TASK, "variant": v, "seed": seed, "method": method, **m, "n_train": cfg.n_train,
                        "n_queries": cfg.n_val, "seconds": round(seconds, 3), "mode": mode,
                        "n_params": sum(tuned.get_parameter(n).numel() for n in attributed(tuned, cfg)),
                        "n_styles": len(cfg.styles), "style_prompt": cfg.style_prompt}])
    df = table.frame
    if df.empty:
        return df
    return df[(df["task"] == TASK) & (df["variant"] == v) & df["seed"].isin(seeds)].reset_index(drop=True)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per variant and method: mean, standard deviation and range (max - min) over seeds of auc, recall and
    precision5."""
    g = df.groupby(["variant", "method"], sort=False)
    cols = {}
    for c in ("auc", "recall", "precision5"):
        cols[c], cols[f"{c}_sd"] = g[c].mean(), g[c].std()
        cols[f"{c}_range"] = g[c].max() - g[c].min()
    return pd.DataFrame({**cols, "seconds": g["seconds"].mean(), "seeds": g["seed"].nunique()}).reset_index()


@register("gen-image", seconds=(54, 3))
def run(fast: bool, seeds: int, out: Path) -> pd.DataFrame:
    """``ifkit reproduce gen-image``: both variants into ``out/generation.csv`` (task "style"); print the summary."""
    mode = "fast" if fast else "full"
    df = pd.concat([measure(cfg, range(seeds), out) for cfg in CONFIGS[mode].values()], ignore_index=True)
    styles = pd.read_csv(Path(out) / STYLES_FILENAME)
    styles = styles[styles["seed"].isin(range(seeds)) & (styles["mode"] == mode)]
    with pd.option_context("display.width", 160):
        cols = ["nelbo_base", "nelbo_lora", "classifier_acc", "recon_acc_base", "recon_acc_lora",
                "sample_acc_base", "sample_acc_lora"]
        for v, cfg in CONFIGS[mode].items():
            print(f"[{v}] did LoRA learn the styles? ({cfg.dataset} {cfg.image_size}x{cfg.image_size}, "
                  "mean over seeds)")
            part = styles[styles["variant"] == v]
            print(part.groupby("style", sort=False)[cols].mean().to_string(float_format=lambda x: f"{x:.3f}"))
        cfg = CONFIGS[mode]["protocol"]
        print(f"Influential-data identification, {len(cfg.styles)} styles x {cfg.n_train_per_style} training images "
              f"(per-query means, then mean, sd and range over {seeds} seed(s)):")
        print(summary(df).to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    return df


__all__ = ["CONFIGS", "FAST", "FULL", "OVERLAYS", "STYLES", "TRANSFORMS", "VARIANTS", "Config", "StyleData",
           "attributed", "attribution_sets", "build_data",
           "finetune_lora", "measure", "pairwise", "pretrain", "ranking_metrics", "run", "style_check", "stylize",
           "summary", "top_helpful"]
