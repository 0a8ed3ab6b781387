"""Mislabel detection on real images (docs/PAPER.md, Sec. 6.1), with the baselines a practitioner tries first.

``ifkit reproduce detection`` writes ``results/detection.csv`` (one row per dataset, noise, rate, seed, method:
auc, ap, recall_at_10pct, seconds, plus the state of the model) and ``results/detection_dynamics.csv`` (the
paper's Fig. 2 and Fig. 3: AUC over training checkpoints and over flat fine-tuning steps). The trained networks and
their checkpoints are kept in ``OUT/.cache/detection/`` (``ifkit.experiments.cache``; relabel and the ablation read
them too), so a rerun after an interruption computes its missing rows without retraining.

Protocol (per noise model, rate and seed):

1. A class-balanced Fashion-MNIST subset (``Config``), images average-pooled to ``image_size``; labels of the
   training set flipped (symmetric, asymmetric between confusable classes, or hard = the most likely wrong class
   of an out-of-fold logistic regression); a clean validation set S_val and the official test images.
2. A tanh MLP trained with Adam long enough to memorise most flipped labels (``fit_flipped`` in the rows): the
   regime where classic influence fails (docs/PAPER.md, Sec. 3).
3. Every method scores every training point, higher = more likely mislabelled (``ifkit.score``), and we measure
   ROC AUC / AP / recall of the flips among the top 10% with sklearn (``ifkit.metrics``).

Besides the influence family (loss, graddot, tracin, if-lissa, if-cg, datainf, self-if, gex) and the paper's
methods (vm; fvm with LPF-SGD; fvm-sam with SAM), three kinds of reference rows keep the table honest:

* ``loss-early``: the training loss under the early-stopped model (the epoch of best validation accuracy), and
  ``vm-early``: VM computed from that model instead of the memorising one;
* ``vm-best-val`` / ``fvm-best-val``: ``ifkit.clean`` -- VM / FVM from the saved checkpoint of lowest S_val LOSS
  (``vm-early`` picks by validation accuracy, on the same checkpoints every ``dynamics_every`` epochs);
* ``cleanlab``: confident learning (cleanlab's label-quality score; score = 1 - quality) on K-fold out-of-fold
  probabilities of the same architecture trained for the early-stopping number of epochs;
* ``loss@theta~`` and ``gradnorm@theta~``: the training loss and the gradient norm at VM's fine-tuned model
  theta~ (no Hessian) -- what the curvature in VM adds is the gap between these and ``vm``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

import ifkit
from ifkit import metrics
from ifkit.core.func import make_problem, per_sample_grads
from ifkit.data import Split, make_split
from ifkit.experiments import register
from ifkit.experiments.cache import Cache, cached, key_of, pack_run, unpack_run
from ifkit.methods.flat import VM_DEFAULTS
from ifkit.models import MLP
from ifkit.optim.flat_finetune import flat_finetune
from ifkit.optim.train import TrainResult, evaluate, train
from ifkit.results import ResultsTable

FILENAME = "detection.csv"
DYNAMICS = "detection_dynamics.csv"
KEY = ["dataset", "noise", "rate", "seed", "method", "n_val"]
REQUIRED = ["auc", "ap", "recall_at_10pct"]

INFLUENCE = ("loss", "graddot", "tracin", "if-lissa", "if-cg", "ekfac", "datainf", "self-if", "gex", "vm", "fvm",
             "fvm-sam")
PIPELINE = ("vm-best-val", "fvm-best-val")  # ifkit.clean: the recommended way (its module docstring)
REFERENCE = ("loss-early", "vm-early", *PIPELINE, "cleanlab", "loss@theta~", "gradnorm@theta~")


@dataclass(frozen=True)
class Config:
    """Sizes, model and grids of one run (``FAST`` for CI, ``FULL`` for the reported numbers)."""

    dataset: str
    n_train: int
    n_val: int
    n_test: int | None
    image_size: int  # images are average-pooled to this side (28 = full Fashion-MNIST; digits are 8)
    hidden: tuple[int, ...]
    epochs: int
    lr: float
    settings: tuple[tuple[str, float], ...]  # (noise, rate)
    methods: tuple[str, ...] = INFLUENCE + REFERENCE
    batch_size: int = 128
    n_checkpoints: int = 5  # TracIn checkpoints (evenly spaced over training)
    cv_folds: int = 5  # cleanlab's out-of-fold probabilities
    dynamics_every: int = 0  # epochs between Fig. 2 checkpoints (0: no dynamics)
    flat_grid: tuple[int, ...] = ()  # Fig. 3: fine-tuning steps at which to score
    progress: bool = True


FAST = Config("digits", n_train=600, n_val=200, n_test=None, image_size=8, hidden=(64,), epochs=150, lr=1e-2,
              settings=(("symmetric", 0.3),), n_checkpoints=3, cv_folds=3, dynamics_every=30,
              flat_grid=(0, 20, 100))
# Measured (40% symmetric, seed 0): this 196-64-10 tanh MLP (13,258 parameters) fits 99.4% of the flipped labels
# after 300 epochs (test accuracy 0.52, down from 0.69 at its best epoch), and one seed of every method takes
# about a minute on one core. A 196-256-10 MLP trained for 200 epochs at lr 2e-3 fitted only 48% of them.
FULL = Config("fashion", n_train=2000, n_val=300, n_test=2000, image_size=14, hidden=(64,), epochs=300, lr=1e-2,
              settings=(("symmetric", 0.2), ("symmetric", 0.4), ("asymmetric", 0.4), ("hard", 0.4)),
              dynamics_every=25, flat_grid=(0, 5, 20, 50, 100, 200))


# ----------------------------------------------------------------------------------------------- the setting
@dataclass
class Setting:
    """One (dataset, noise, rate, seed): the split, preprocessed tensors, and the memorising model."""

    cfg: Config
    split: Split
    train: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    run: TrainResult
    early: nn.Module  # the checkpoint of best validation accuracy
    early_epoch: int

    @property
    def flipped(self) -> Tensor:
        return self.split.flipped


def pool(X: Tensor, side: int) -> Tensor:
    """(n, 1, H, W) images average-pooled to (n, 1, side, side); digits (n, 64) pass through unchanged."""
    if X.dim() != 4 or X.shape[-1] == side:
        return X
    return F.adaptive_avg_pool2d(X, side)  # (n, 1, side, side)


def n_features(cfg: Config) -> int:
    return 64 if cfg.dataset == "digits" else cfg.image_size**2


def build_model(cfg: Config, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return MLP(n_features(cfg), cfg.hidden, 10)


# Trained memorising models by ``run_key``: a dict the CALLER owns and passes as ``runs=`` (``prepare``, ``measure``,
# ``dynamics``, ``run``, and relabel's and the ablation's ``measure``); ``ifkit reproduce`` hands one dict to every
# experiment of a worker that declares ``shares=("runs",)``, so relabel after detection reuses its networks (a run
# is ~1 MB of checkpoints). Without it each caller trains its own: the same model bit for bit (seeded, one thread).
Runs = dict[tuple, TrainResult]


def run_key(cfg: Config, noise: str, rate: float, seed: int) -> tuple:
    """What a trained run depends on. Not n_val: make_split draws the training indices (and their noise) first,
    so the training set and the run are the same for every validation size; the validation accuracies are
    computed per split."""
    return (replace(cfg, progress=True, settings=(), methods=(), n_val=0), noise, rate, seed)


def prepare(cfg: Config, noise: str, rate: float, seed: int, n_val: int | None = None, runs: Runs | None = None,
            cache: Cache | None = None) -> Setting:
    """Draw the split, train the memorising model (checkpoints for TracIn and Fig. 2), pick the early stop.

    ``runs``: trained models to reuse, and to add this one to (see ``Runs``); None trains afresh. ``cache``: the
    trained models on disk (``ifkit.experiments.cache``, ``OUT/.cache/detection/``), read before training.
    """
    split = make_split(cfg.dataset, n_train=cfg.n_train, n_val=n_val or cfg.n_val, n_test=cfg.n_test,
                       noise=noise, rate=rate, seed=seed)
    tr = (pool(split.X_train, cfg.image_size), split.y_train)
    va = (pool(split.X_val, cfg.image_size), split.y_val)
    te = (pool(split.X_test, cfg.image_size), split.y_test)
    every = cfg.dynamics_every or cfg.epochs // max(cfg.n_checkpoints, 1)
    n_ckpt = max(cfg.epochs // every, cfg.n_checkpoints)
    key = run_key(cfg, noise, rate, seed)
    run = runs.get(key) if runs is not None else None
    if run is None:
        run = cached(cache, key_of(run=key, n_checkpoints=n_ckpt, model="MLP", loop="optim.train"),
                     lambda: train(build_model(cfg, seed), tr, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size,
                                   seed=seed, n_checkpoints=n_ckpt, progress=False),
                     pack_run, lambda payload: unpack_run(payload, build_model(cfg, seed)))
        if runs is not None:
            runs[key] = run
    # Early stopping among the saved checkpoints (what a practitioner keeps): best validation ACCURACY. The
    # pipeline (ifkit.clean, optim.train.best_val_checkpoint) picks by validation LOSS instead; both are kept on
    # purpose: the committed rows of loss-early / vm-early / cleanlab (its epoch count) are defined by accuracy,
    # and vm-best-val / fvm-best-val by loss (module docstring).
    epochs = checkpoint_epochs(cfg.epochs, len(run.checkpoints))
    early = copy.deepcopy(run.model)
    accs = []
    for state, _ in run.checkpoints:
        early.load_state_dict(state)
        accs.append(evaluate(early, *va)[1])
    best = int(np.argmax(accs))
    early.load_state_dict(run.checkpoints[best][0])
    return Setting(cfg, split, tr, va, te, run, early, epochs[best])


def checkpoint_epochs(epochs: int, n: int) -> list[int]:
    """The epochs at which ``ifkit.optim.train.train`` saved its ``n`` checkpoints (evenly spaced, last = final)."""
    from ifkit.optim.train import checkpoint_epochs

    return sorted(checkpoint_epochs(epochs, n))


def tracin_checkpoints(s: Setting) -> list:
    """The last ``n_checkpoints`` of the run, evenly spread (TracIn sums over checkpoints along training)."""
    ck = s.run.checkpoints
    k = s.cfg.n_checkpoints
    idx = np.unique(np.linspace(0, len(ck) - 1, k).round().astype(int))
    return [ck[i] for i in idx]


# ----------------------------------------------------------------------------------------------- scores
def cleanlab_scores(s: Setting, seed: int) -> Tensor:
    """1 - cleanlab's label quality on K-fold out-of-fold probabilities (same architecture, early-stop epochs)."""
    from cleanlab.rank import get_label_quality_scores
    from sklearn.model_selection import StratifiedKFold

    X, y = s.train
    probs = np.zeros((len(y), 10))
    folds = StratifiedKFold(n_splits=s.cfg.cv_folds, shuffle=True, random_state=seed)
    for k, (fit, held) in enumerate(folds.split(np.zeros(len(y)), y.numpy())):
        fit, held = torch.from_numpy(fit), torch.from_numpy(held)
        run = train(build_model(s.cfg, seed + 1000 * (k + 1)), (X[fit], y[fit]), epochs=s.early_epoch,
                    lr=s.cfg.lr, batch_size=s.cfg.batch_size, seed=seed + k, progress=False)
        with torch.no_grad():
            probs[held.numpy()] = torch.softmax(run.model(X[held]), dim=1).numpy()
    quality = get_label_quality_scores(y.numpy(), probs)  # (n,) in [0, 1], low = likely mislabelled
    return torch.from_numpy(1.0 - quality)


def theta_tilde(s: Setting, seed: int) -> nn.Module:
    """VM's fine-tuned model theta~ (same defaults as ``ifkit.score("vm", ...)``)."""
    return flat_finetune(s.run.model, s.val, seed=seed, progress=False, **VM_DEFAULTS).model


def score_method(method: str, s: Setting, seed: int, cache: dict) -> Tensor:
    """Higher = more likely mislabelled, for every name in ``INFLUENCE + REFERENCE``."""
    model, tr, va = s.run.model, s.train, s.val
    if method == "tracin":
        return ifkit.score("tracin", model, tr, va, checkpoints=tracin_checkpoints(s))
    if method == "fvm-sam":
        return ifkit.score("fvm", model, tr, va, flat_optimizer="sam", seed=seed)
    if method in ("gex", "if-lissa", "fvm", "vm"):
        return ifkit.score(method, model, tr, va, seed=seed)
    if method == "self-if":
        # the Hessian of a memorising network is indefinite (CG meets negative curvature) and a dense
        # Gauss-Newton is p x p: EK-FAC factors once and costs O(p) per point
        return ifkit.score("self-if", model, tr, va, curvature="ekfac")
    if method in INFLUENCE:
        return ifkit.score(method, model, tr, va)
    if method == "loss-early":
        return ifkit.score("loss", s.early, tr, va)
    if method == "vm-early":  # VM from the early-stopped model instead of the memorising one
        return ifkit.score("vm", s.early, tr, va, seed=seed)
    if method in PIPELINE:  # the recommended pipeline, as a user calls it
        return ifkit.clean(s.run.model, tr, va, method.split("-")[0], checkpoints=s.run.checkpoints, seed=seed,
                           k=0, relabel=False).scores
    if method == "cleanlab":
        return cleanlab_scores(s, seed)
    if "tilde" not in cache:
        cache["tilde"] = theta_tilde(s, seed)
    if method == "loss@theta~":
        return ifkit.score("loss", cache["tilde"], tr, va)
    if method == "gradnorm@theta~":
        return per_sample_grads(make_problem(cache["tilde"]), *tr).norm(dim=1)  # (n,) ||g~_z||
    raise ValueError(f"unknown detection method {method!r}: choose from {INFLUENCE + REFERENCE}")


def model_state(s: Setting) -> dict:
    """What the rows record about the model where influence is computed (memorisation, accuracy)."""
    m, X, y = s.run.model, *s.train
    with torch.no_grad():
        pred = m(X).argmax(1)
    flipped = s.flipped
    return {
        "fit_flipped": float((pred[flipped] == y[flipped]).float().mean()),
        "train_acc": float((pred == y).float().mean()),
        "val_acc": evaluate(m, *s.val)[1],
        "test_acc": evaluate(m, *s.test)[1],
        "early_epoch": s.early_epoch,
        "early_test_acc": evaluate(s.early, *s.test)[1],
    }


# ----------------------------------------------------------------------------------------------- measuring
def measure(cfg: Config, seeds: Iterable[int], path: str | Path, methods: Iterable[str] | None = None,
            n_val: int | None = None, settings: Iterable[tuple[str, float]] | None = None, runs: Runs | None = None,
            cache: Cache | None = None) -> pd.DataFrame:
    """Run (or resume) detection for every setting x seed x method; returns this configuration's rows.

    ``runs``: trained models to reuse and add to (``Runs``); ``cache``: the same on disk (``prepare``)."""
    methods = tuple(methods or cfg.methods)
    n_val = n_val or cfg.n_val
    table = ResultsTable(path, KEY, required=REQUIRED)
    plan = [(noise, rate, seed) for noise, rate in (settings or cfg.settings) for seed in seeds]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small models: one thread is fastest on a shared 2-core machine (measured)
    try:
        for noise, rate, seed in tqdm(plan, desc="detection", disable=not cfg.progress):
            key = dict(dataset=cfg.dataset, noise=noise, rate=rate, seed=seed, n_val=n_val)
            todo = [m for m in methods if not table.has(**key, method=m)]
            if not todo:
                continue
            s = prepare(cfg, noise, rate, seed, n_val=n_val, runs=runs, cache=cache)
            state, tilde, rows = model_state(s), {}, []
            for method in tqdm(todo, desc=f"{noise} {rate} seed {seed}", leave=False, disable=not cfg.progress):
                start = time.perf_counter()
                scores = score_method(method, s, seed, tilde)
                seconds = time.perf_counter() - start
                rows.append({**key, "method": method, **metrics.detection_report(scores, s.flipped),
                             "seconds": seconds, "n_train": cfg.n_train, **state})
                table.add(rows[-1:])  # one atomic write per finished method: an interrupted run loses little
    finally:
        torch.set_num_threads(threads)
    df = table.frame
    if df.empty:
        return df
    mine = df[(df.dataset == cfg.dataset) & (df.n_val == n_val) & df.seed.isin(list(seeds))
              & df.method.isin(methods)]
    return mine.reset_index(drop=True)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Mean +- std over seeds of AUC per (noise, rate) x method, methods ordered by mean AUC."""
    g = df.groupby(["noise", "rate", "method"]).auc.agg(["mean", "std", "count"]).reset_index()
    return g.sort_values(["noise", "rate", "mean"], ascending=[True, True, False])


# ----------------------------------------------------------------------------------------------- Fig. 2 / 3
DYN_KEY = ["dataset", "noise", "rate", "seed", "kind", "step", "method"]
DYN_METHODS = ("loss", "if-cg", "vm")  # along training (Fig. 2)
FLAT_METHODS = ("if-cg", "vm", "fvm")  # along flat fine-tuning (Fig. 3)


def _clean_spread(scores: Tensor, flipped: Tensor) -> dict[str, float]:
    """How spread out the scores of CLEAN points are, relative to all scores (Fig. 3's shrinking distribution)."""
    clean = scores[~flipped]
    return {"clean_std": float(clean.std()), "clean_abs_median": float(clean.abs().median()),
            "noisy_abs_median": float(scores[flipped].abs().median())}


def dynamics(cfg: Config, noise: str, rate: float, seed: int, table: ResultsTable, runs: Runs | None = None,
             cache: Cache | None = None) -> None:
    """Rows of Fig. 2 (AUC over training checkpoints vs validation accuracy) and Fig. 3 (AUC along flat
    fine-tuning steps on S_val: classic IF at theta_t, VM/FVM with t steps) for one setting and seed."""
    key = dict(dataset=cfg.dataset, noise=noise, rate=rate, seed=seed)
    s = prepare(cfg, noise, rate, seed, runs=runs, cache=cache)
    X, y = s.train
    epochs = checkpoint_epochs(cfg.epochs, len(s.run.checkpoints))
    model = copy.deepcopy(s.run.model)
    for epoch, (state, _) in zip(epochs, s.run.checkpoints):
        todo = [m for m in DYN_METHODS if not table.has(**key, kind="training", step=epoch, method=m)]
        if not todo:
            continue
        model.load_state_dict(state)
        with torch.no_grad():
            pred = model(X).argmax(1)
        state_row = {"val_acc": evaluate(model, *s.val)[1], "fit_flipped": float((pred == y)[s.flipped].float().mean())}
        rows = []
        for m in todo:
            sc = ifkit.score(m, model, s.train, s.val, **({"seed": seed} if m == "vm" else {}))
            rows.append({**key, "kind": "training", "step": epoch, "method": m, "auc": metrics.auc(sc, s.flipped),
                         **state_row, **_clean_spread(sc, s.flipped)})
        table.add(rows)
    for t in cfg.flat_grid:
        todo = [m for m in FLAT_METHODS if not table.has(**key, kind="flat", step=t, method=m)]
        if not todo:
            continue
        tuned = flat_finetune(s.run.model, s.val, flat_steps=t, seed=seed, progress=False,
                              **{k: v for k, v in VM_DEFAULTS.items() if k != "flat_steps"}).model
        state_row = {"val_acc": evaluate(tuned, *s.val)[1]}
        rows = []
        for m in todo:
            if m == "if-cg":  # classic influence at theta_t (training curvature, mean validation gradient)
                sc = ifkit.score("if-cg", tuned, s.train, s.val)
            else:  # VM / FVM with t fine-tuning steps
                sc = ifkit.score(m, s.run.model, s.train, s.val, flat_steps=t, seed=seed)
            rows.append({**key, "kind": "flat", "step": t, "method": m, "auc": metrics.auc(sc, s.flipped),
                         **state_row, **_clean_spread(sc, s.flipped)})
        table.add(rows)


@register("detection", seconds=(169, 7), note="full includes the paper's Fig. 2/3 training dynamics",
          shares=("runs",))
def run(fast: bool, seeds: int, out: Path, runs: Runs | None = None) -> pd.DataFrame:
    """``ifkit reproduce detection``: the table, then the dynamics of Fig. 2 / Fig. 3 (on the same trained runs).

    ``runs``: trained models to reuse and to leave for the next experiment (relabel, ablation; ``Runs``)."""
    cfg = FAST if fast else FULL
    runs, cache = {} if runs is None else runs, Cache(out, "detection")  # the networks: in memory, on disk
    df = measure(cfg, range(seeds), Path(out) / FILENAME, runs=runs, cache=cache)
    with pd.option_context("display.width", 140, "display.max_rows", 200):
        print(summary(df).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    # Fig. 2 / Fig. 3 on the first 40%-noise setting (the regime of the paper's figures), one seed in full mode
    # (an illustration; the per-seed tables above carry the error bars)
    noise, rate = next(((n, r) for n, r in cfg.settings if r >= 0.3), cfg.settings[0])
    table = ResultsTable(Path(out) / DYNAMICS, DYN_KEY, required=["auc"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for seed in tqdm(range(1 if not fast else seeds), desc="dynamics", disable=not cfg.progress):
            dynamics(cfg, noise, rate, seed, table, runs=runs, cache=cache)
    finally:
        torch.set_num_threads(threads)
    return df


__all__ = ["FAST", "FULL", "INFLUENCE", "PIPELINE", "REFERENCE", "Config", "Runs", "Setting", "dynamics", "measure",
           "prepare", "run", "run_key", "score_method", "summary"]


def __getattr__(name: str):
    """``detection.explore`` (the notebook dashboard's setting) lives in ``detection_explore``, which imports this
    module; it is looked up here on first use so the old name keeps working."""
    if name == "explore":
        from ifkit.experiments.detection_explore import explore

        return explore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
