"""Relabeling the flagged training points (the paper's relabeling table), with the baselines a reviewer asks for.

``ifkit reproduce relabel`` writes ``results/relabel.csv``: one row per dataset, model, noise, rate, seed, method with
relabel_acc (share of the flagged, truly flipped points whose new label is the clean one -- the paper's "top-1
accuracy" as we read it), relabel_acc_flagged (over every flagged point: for a clean point the right answer is
its given label), agree_theta_tilde (share of new labels equal to theta~'s own prediction;
agree_pipeline_theta_tilde: to the prediction of the theta~ fine-tuned from the checkpoint ``ifkit.clean`` picks) and
retrain_test_acc (test accuracy of the same network retrained from scratch on the relabelled set for 100 epochs,
early-stopped on S_val among 10 checkpoints -- the same protocol for every variant).

Protocol (same settings and memorising model as ``detection``):

1. Each influence method flags its top-k training points, k = the number of flipped labels (the budget a user
   with a known noise rate would spend).
2. New label of a flagged (x, y): the class c minimising the method's own score of (x, c) --
   ``ifkit.score(method, model, train, val, candidates=(x repeated, 0..C-1))``, so every training-set quantity
   (curvature, checkpoints, ensemble) still comes from the real training set.
3. The recommended pipeline, ``ifkit.clean`` (``vm-best-val`` / ``fvm-best-val``): flags and relabels with VM /
   FVM at the saved checkpoint of lowest S_val loss instead of the memorising model; ``refit`` goes one step
   further on vm-best-val's flags: remove them, retrain REFIT_MODELS networks on the rest (early-stopped on S_val
   loss) and give each flagged point the ensemble's predicted class (flag, remove, refit, relabel).
4. Baselines on FVM's flags: the trained model's prediction (``pred``) and the predictions of VM's and FVM's
   fine-tuned models theta~ (``pred@theta~``, ``pred@fvm-theta~``); and two data-cleaning references: train on the noisy set as it is
   (``noisy``), or drop FVM's flagged points (``remove``); ``clean`` retrains on the true labels (the ceiling).

Off the benchmark (``MORE``: every setting of ``detection.MORE``, full size only) only ``vm-best-val`` (with its
clean bound) and ``noisy`` are run; ``bound_table`` / ``bound_markdown`` summarise them for RESULTS.md.

The bound on the same points (``clean_bound`` in every relabelling row): the test of a relabeller is how often
it recovers the true label of a flagged point it has never seen with that label. The same network trained on the
CLEAN labels of every point the method did not flag (early-stopped on S_val loss) and asked for the flagged,
truly flipped points gives the accuracy that clean data would reach on exactly those points (~0.83-0.87 on
Fashion-MNIST 40% noise; its test accuracy, 0.80-0.81, matches the clean retraining's).

Why GEX keeps the given label (measured, 40% symmetric, seed 0): GEX's candidate score is the spread of the
loss of (x, c) over an ensemble fine-tuned from the memorising theta* on the training set, which CONTAINS the
noisy (x, y). Every member keeps fitting it (mean loss 0.06), so its loss barely moves and the given label is
the argmin for 95% of the flagged points (``changed`` 0.01-0.06 in the rows); argmin GEX equals argmin loss at
theta* for 95% of them. A squared loss deviation is small wherever the loss is small: GEX ranks candidates by
how well the model already fits them, and the memorising model fits the noisy label. Started from the
early-stopped checkpoint, GEX relabels 38% of the flipped points correctly (VM there: 82%).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

import ifkit
from ifkit import metrics
from ifkit.experiments import baselines, detection, register
from ifkit.experiments.cache import Cache, checksum, key_of
from ifkit.methods.flat import FVM_DEFAULTS, VM_DEFAULTS
from ifkit.optim.flat_finetune import flat_finetune
from ifkit.optim.train import evaluate, train
from ifkit.results import ResultsTable

FILENAME = "relabel.csv"
KEY = ["dataset", "model", "noise", "rate", "seed", "method"]
REQUIRED = ["retrain_test_acc"]

INFLUENCE = ("if-lissa", "tracin", "gex", "vm", "fvm")  # the paper's relabeling comparison
PIPELINE = ("vm-best-val", "fvm-best-val", "refit")  # ifkit.clean (module docstring)
BASELINES = ("pred", "pred@theta~", "pred@fvm-theta~")  # relabel FVM's flags with a model's prediction
CLEANING = ("noisy", "remove", "clean")  # retrain references


@dataclass(frozen=True)
class Config:
    detection: detection.Config
    settings: tuple[tuple[str, float], ...]
    methods: tuple[str, ...] = INFLUENCE + PIPELINE + BASELINES + CLEANING
    progress: bool = True


FAST = Config(detection.FAST, settings=(("symmetric", 0.3),))
FULL = Config(detection.FULL, settings=(("symmetric", 0.4), ("asymmetric", 0.4)))
# Every setting of ``detection.MORE`` (full size only): the pipeline's relabels with their clean-model bound, and the
# noisy retraining as the reference (the other variants would retrain a CNN a dozen times per seed).
MORE = tuple(Config(c, settings=c.settings, methods=("vm-best-val", "noisy")) for c in detection.MORE)


def new_labels(method: str, s: detection.Setting, idx: Tensor, seed: int) -> Tensor:
    """argmin_c score_method((x_i, c)) for the training points ``idx``: (k,) labels."""
    C = 10
    X = s.train[0][idx]
    Xc = X.repeat_interleave(C, dim=0)  # (k*C, ...) every flagged point once per class
    yc = torch.arange(C).repeat(len(idx))  # (k*C,)
    model, tr, va = s.run.model, s.train, s.val
    opts = {"checkpoints": detection.tracin_checkpoints(s)} if method == "tracin" else {}
    if method in ("gex", "if-lissa", "fvm", "vm"):
        opts["seed"] = seed
    scores = ifkit.score(method, model, tr, va, candidates=(Xc, yc), **opts)  # (k*C,)
    return scores.view(len(idx), C).argmin(dim=1)  # (k,)


def fit_early(s: detection.Setting, X: Tensor, y: Tensor, seed: int, epochs: int = 60) -> torch.nn.Module:
    """The architecture trained on (X, y) for ``epochs`` (at most the setting's own), back at its checkpoint of
    lowest S_val loss (of 12).

    60 epochs: the noisy and cleaned runs of this setting reach their lowest validation loss by epoch 10-30.
    """
    cfg = s.cfg
    epochs = min(epochs, cfg.epochs)
    run = train(detection.build_model(cfg, seed), (X, y), epochs=epochs, lr=cfg.lr, batch_size=cfg.batch_size,
                seed=seed, n_checkpoints=min(12, epochs), progress=False)
    losses = []
    for state, _ in run.checkpoints:
        run.model.load_state_dict(state)
        losses.append(evaluate(run.model, *s.val)[0])
    run.model.load_state_dict(run.checkpoints[int(torch.tensor(losses).argmin())][0])
    return run.model


REFIT_MODELS = 5  # refit's ensemble: 5 networks relabelled 0.5-2.5 points more of 100 than one (seed 0, measured)


def refit_labels(s: detection.Setting, idx: Tensor, seed: int) -> Tensor:
    """(k,) the predicted class of the flagged points ``idx`` by REFIT_MODELS networks trained without them."""
    X, y = s.train
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[idx] = False
    probs = 0.0
    for j in range(REFIT_MODELS):
        model = fit_early(s, X[keep], y[keep], seed + 100 * j)
        with torch.no_grad():
            probs = probs + torch.softmax(model(X[idx]), dim=1)  # (k, C)
    return probs.argmax(dim=1)


def clean_bound(s: detection.Setting, idx: Tensor, seed: int) -> float:
    """Accuracy on the flagged, truly flipped points of a network trained on the CLEAN labels of the others."""
    X, clean = s.train[0], s.split.y_train_clean
    keep = torch.ones(len(clean), dtype=torch.bool)
    keep[idx] = False
    hit = idx[s.flipped[idx]]
    if not len(hit):
        return float("nan")
    model = fit_early(s, X[keep], clean[keep], seed)
    with torch.no_grad():
        return float((model(X[hit]).argmax(1) == clean[hit]).float().mean())


RETRAIN_EPOCHS = 100  # the noisy runs peak on S_val by epoch ~25 (measured); 100 leaves cleaned sets room


def retrain_accuracy(s: detection.Setting, X: Tensor, y: Tensor, seed: int, epochs: int = RETRAIN_EPOCHS) -> float:
    """Test accuracy of the architecture retrained on (X, y) for ``epochs`` epochs, early-stopped on S_val among
    10 evenly spaced checkpoints (the same protocol for every variant, the noisy set included)."""
    cfg = s.cfg
    epochs = min(epochs, cfg.epochs)
    run = train(detection.build_model(cfg, seed), (X, y), epochs=epochs, lr=cfg.lr, batch_size=cfg.batch_size,
                seed=seed, n_checkpoints=min(10, epochs), progress=False)
    best, best_acc = None, -1.0
    model = run.model
    for state, _ in run.checkpoints:
        model.load_state_dict(state)
        acc = evaluate(model, *s.val)[1]
        if acc > best_acc:
            best, best_acc = {k: v.clone() for k, v in state.items()}, acc
    model.load_state_dict(best)
    return evaluate(model, *s.test)[1]


def _relabel_row(method: str, s: detection.Setting, seed: int, flags: dict[str, Tensor], work: dict) -> dict:
    X, y = s.train
    clean, flipped = s.split.y_train_clean, s.flipped
    k = int(flipped.sum())
    start = time.perf_counter()
    if method in CLEANING:
        if method == "noisy":
            Xr, yr = X, y
        elif method == "clean":
            Xr, yr = X, clean
        else:
            keep = torch.ones(len(y), dtype=torch.bool)
            keep[flags["fvm"]] = False
            Xr, yr = X[keep], y[keep]
        acc = retrain_accuracy(s, Xr, yr, seed)
        return {"method": method, "retrain_test_acc": acc, "seconds": time.perf_counter() - start, "k": k}
    source = method if method in INFLUENCE + PIPELINE[:2] else "vm-best-val" if method == "refit" else "fvm"
    idx = flags[source]
    if method in PIPELINE[:2]:
        new = work[method].new_labels
    elif method == "refit":
        new = refit_labels(s, idx, seed)
    elif method == "pred":
        with torch.no_grad():
            new = s.run.model(X[idx]).argmax(1)
    elif method == "pred@theta~":
        new = work["tilde_pred"][idx]
    elif method == "pred@fvm-theta~":
        new = work["fvm_tilde_pred"][idx]
    else:
        new = new_labels(method, s, idx, seed)
    seconds = work[method].seconds if method in PIPELINE[:2] else time.perf_counter() - start  # clean: the whole call
    if ("bound", source) not in work:
        work[("bound", source)] = clean_bound(s, idx, seed)
    yr = y.clone()
    yr[idx] = new
    hit = flipped[idx]  # flagged points that really were flipped
    return {
        "method": method,
        "flagged_by": source,
        "k": k,
        "precision": float(hit.float().mean()),
        "relabel_acc": metrics.relabel_accuracy(new[hit], clean[idx][hit]) if hit.any() else float("nan"),
        "relabel_acc_flagged": metrics.relabel_accuracy(new, clean[idx]),
        "agree_theta_tilde": float((new == work["tilde_pred"][idx]).float().mean()),
        "agree_fvm_theta_tilde": float((new == work["fvm_tilde_pred"][idx]).float().mean()),
        "agree_pipeline_theta_tilde": float((new == work["pipeline_tilde_pred"][idx]).float().mean()),
        "changed": float((new != y[idx]).float().mean()),
        "seconds": seconds,
        "retrain_test_acc": retrain_accuracy(s, X, yr, seed),
        "clean_bound": work[("bound", source)],
    }


def setup(s: detection.Setting, noise: str, rate: float, seed: int, todo: Iterable[str], cache: Cache | None
          ) -> tuple[dict, dict[str, Tensor], Callable[[], None]]:
    """What the rows of one setting share, from ``cache`` when it holds it (else computed and stored): the
    predictions of VM's and FVM's theta~, the pipeline's flags and new labels, every method's top-k flags (k = the
    number of flips) and, as the rows compute them, the clean bounds.

    Returns (work, flags, keep): ``work`` as ``_relabel_row`` reads it, ``flags[method]`` (k,) indices, and
    ``keep()``, which stores what the rows added since."""
    k = int(s.flipped.sum())
    key = key_of(setup="relabel", run=detection.run_key(s.cfg, noise, rate, seed), n_val=s.cfg.n_val, k=k)
    saved = (cache.load(key) if cache is not None else None) or {"clean": {}, "flags": {}, "bound": {}}
    before = checksum(saved)  # keep() writes only when something was added
    if "pipeline_tilde_pred" not in saved:  # theta~ from the checkpoint of lowest S_val loss (ifkit.clean's)
        tilde = flat_finetune(baselines.chosen_checkpoint(s), s.val, seed=seed, progress=False, **VM_DEFAULTS).model
        with torch.no_grad():
            saved["pipeline_tilde_pred"] = tilde(s.train[0]).argmax(1)  # (n,)
    if "tilde_pred" not in saved:
        tilde = detection.theta_tilde(s, seed)
        fvm_tilde = flat_finetune(s.run.model, s.val, seed=seed, progress=False, **FVM_DEFAULTS).model
        with torch.no_grad():
            saved["tilde_pred"] = tilde(s.train[0]).argmax(1)  # (n,) VM's theta~
            saved["fvm_tilde_pred"] = fvm_tilde(s.train[0]).argmax(1)  # (n,) FVM's (LPF-SGD) theta~
    for m in ("vm-best-val", "fvm-best-val"):  # the recommended pipeline, as a user calls it
        if (m in todo or (m == "vm-best-val" and "refit" in todo)) and m not in saved["clean"]:
            done = ifkit.clean(s.run.model, s.train, s.val, m.split("-")[0], k=k, seed=seed,
                               checkpoints=s.run.checkpoints)
            saved["clean"][m] = {"flagged": done.flagged, "new_labels": done.new_labels, "seconds": done.seconds}
    for m in sorted({m if m in INFLUENCE else "fvm" for m in todo if m not in PIPELINE} - set(saved["flags"])):
        saved["flags"][m] = torch.topk(detection.score_method(m, s, seed, {}), k).indices  # (k,) most harmful first
    work = {"tilde_pred": saved["tilde_pred"], "fvm_tilde_pred": saved["fvm_tilde_pred"],
            "pipeline_tilde_pred": saved["pipeline_tilde_pred"],
            **{m: SimpleNamespace(**c) for m, c in saved["clean"].items()},
            **{("bound", source): b for source, b in saved["bound"].items()}}
    flags = {**saved["flags"], **{m: c["flagged"] for m, c in saved["clean"].items()}}

    last = [before]

    def keep() -> None:
        saved["bound"] = {name[1]: b for name, b in work.items() if isinstance(name, tuple)}
        if cache is not None and checksum(saved) != last[0]:
            cache.save(key, saved)
            last[0] = checksum(saved)

    keep()
    return work, flags, keep


def measure(cfg: Config, seeds: Iterable[int], path: str | Path, runs: detection.Runs | None = None,
            cache: Cache | None = None) -> pd.DataFrame:
    """Run (or resume) relabeling for every setting x seed x method; returns this configuration's rows.

    ``runs``: detection's trained models to reuse and add to (``detection.Runs``); None trains them here.
    ``cache``: relabel's work on disk (``setup``; ``OUT/.cache/relabel/``), its sibling ``detection`` the networks."""
    dc = cfg.detection
    table = ResultsTable(path, KEY, required=REQUIRED)
    seeds = list(seeds)
    plan = [(noise, rate, seed) for noise, rate in cfg.settings for seed in seeds]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for noise, rate, seed in tqdm(plan, desc="relabel", disable=not cfg.progress):
            key = dict(dataset=dc.dataset, model=dc.model, noise=noise, rate=rate, seed=seed)
            todo = [m for m in cfg.methods if not table.has(**key, method=m)]
            if not todo:
                continue
            s = detection.prepare(dc, noise, rate, seed, runs=runs, cache=cache and cache.sibling("detection"))
            work, flags, keep = setup(s, noise, rate, seed, todo, cache)
            for method in tqdm(todo, desc=f"{noise} {rate} seed {seed}", leave=False, disable=not cfg.progress):
                row = _relabel_row(method, s, seed, flags, work)
                table.add([{**key, **row, "n_train": dc.n_train}])
                keep()  # the bounds the row computed
    finally:
        torch.set_num_threads(threads)
    df = table.frame
    if df.empty:
        return df
    return df[(df.dataset == dc.dataset) & (df.model == dc.model) & df.seed.isin(seeds)].reset_index(drop=True)


def bound_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per setting (dataset, model, noise, rate): ``ifkit.clean``'s relabel accuracy (``vm-best-val``) against the
    clean-model bound on the same points (``gap`` = accuracy - bound, its worst seed ``worst_gap``), how often its
    relabels equal the argmax of the theta~ fine-tuned from its checkpoint (``agree_pipeline_theta_tilde``), and
    the retrained test accuracy beside the noisy set's. Means over seeds."""
    rows = df[df.method == "vm-best-val"].assign(gap=lambda d: d.relabel_acc - d.clean_bound)
    by = ["dataset", "model", "noise", "rate"]
    out = rows.groupby(by, sort=False).agg(
        seeds=("seed", "nunique"), precision=("precision", "mean"), relabel_acc=("relabel_acc", "mean"),
        clean_bound=("clean_bound", "mean"), gap=("gap", "mean"), worst_gap=("gap", "min"),
        agree_pipeline_theta_tilde=("agree_pipeline_theta_tilde", "mean"),
        retrain_test_acc=("retrain_test_acc", "mean"))
    noisy = df[df.method == "noisy"].groupby(by, sort=False).retrain_test_acc.mean().rename("noisy_test_acc")
    return out.join(noisy)


def bound_markdown(df: pd.DataFrame) -> str:
    """``bound_table`` as the markdown table RESULTS.md shows (between ``BOUND_BEGIN`` and ``BOUND_END``)."""
    t = bound_table(df).dropna(subset=["agree_pipeline_theta_tilde"])
    lines = [BOUND_BEGIN, "", "| setting | seeds | flag precision | relabel accuracy | clean-model bound | accuracy - bound "
             "(worst seed) | = theta~'s argmax | retrained / noisy test acc |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for (dataset, model, noise, rate), r in t.iterrows():
        lines.append(f"| {dataset} {model} {noise} {rate:.0%} | {int(r.seeds)} | {r.precision:.3f} | {r.relabel_acc:.3f} | "
                     f"{r.clean_bound:.3f} | {r.gap:+.3f} ({r.worst_gap:+.3f}) | {r.agree_pipeline_theta_tilde:.3f} | "
                     f"{r.retrain_test_acc:.3f} / {r.noisy_test_acc:.3f} |")
    return "\n".join([*lines, "", BOUND_END]) + "\n"


BOUND_BEGIN = "<!-- relabel bound: generated by python -m ifkit.experiments.evidence -->"
BOUND_END = "<!-- relabel bound: end -->"


# Full: 206 s for the Fashion-MNIST MLP, plus CPU seconds measured for the settings of ``MORE`` (one core each, on a
# loaded machine): digits MLP 28, mixture MLP 26, digits CNN 91, Fashion-MNIST CNN 174.
@register("relabel", seconds=(525, 10), note="full: after detection in the same worker, reusing its networks",
          shares=("runs",), after=("detection",))
def run(fast: bool, seeds: int, out: Path, runs: detection.Runs | None = None) -> pd.DataFrame:
    """``ifkit reproduce relabel`` (``runs``: detection's trained models, when it ran first in this worker)."""
    configs = (FAST,) if fast else (FULL, *MORE)
    df = pd.concat([measure(c, range(seeds), Path(out) / FILENAME, runs=runs, cache=Cache(out, "relabel"))
                    for c in configs], ignore_index=True)
    cols = ["relabel_acc", "clean_bound", "agree_theta_tilde", "retrain_test_acc"]
    with pd.option_context("display.width", 140, "display.max_rows", 200):
        print(df.groupby(["dataset", "model", "noise", "rate", "method"])[cols].mean().to_string(
            float_format=lambda v: f"{v:.3f}"))
    return df


__all__ = ["BOUND_BEGIN", "BOUND_END", "FAST", "FULL", "MORE", "PIPELINE", "Config", "bound_markdown", "bound_table", "clean_bound", "fit_early", "measure", "new_labels", "refit_labels",
           "retrain_accuracy", "run"]
