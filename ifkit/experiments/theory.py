"""Theorem 3.2 measured: does the worst validation risk R_val^gamma(theta) order the sign errors of influence?

    P[ sign(I_est) != sign(I_true) ]  <=  exp( -2 mu^2 / R_val^gamma(theta)^2 )          (paper, Theorem 3.2)

``ifkit reproduce theory`` writes ``results/theory.csv``: one row per (seed, checkpoint, radius gamma, method)
with the measured sign error, R_val^gamma, the sharpness R_val^gamma - R_val and the bound.

Setting (chosen so that the truth is exact and cheap): L2-regularised multinomial logistic regression (650
parameters, float64) on scikit-learn's 8x8 digits with 30% symmetric label noise in S_tr and a clean S_val. The
objective is strictly convex, so leave-one-out retraining has one answer (``ifkit.optim.fullbatch.upweight_val_change``:
warm-started Newton to a gradient of 1e-10), computed for a random subset of ``n_loo`` training points.

Influences are in score units, I = dR_val/d eps (the change of the mean validation loss per unit up-weighting;
removing a point is eps = -1/n_train, so the true I = -n_train * (leave-one-out change)). The estimate at a
checkpoint theta is ``ifkit.score(method, model_theta, train, val, damping=weight_decay)`` (damping = the L2
strength makes "if-exact" the exact inverse Hessian of the objective at the optimum).

theta varies along two trajectories, and they answer different questions:

* ``training``: full-batch gradient descent on the objective with the kit's default L2 strength (1e-2), from
  the random initialisation of the seed; checkpoints after 0, 1, 3, 10, 30, 100, 300 steps (300 is converged
  to ~1e-3 in parameter distance). The truth is that of the trained model (leave-one-out at the optimum): the
  practitioner's situation when influence is computed at a checkpoint (the paper's Fig. 2: influence quality
  tracks the validation performance of the model where it is computed).
* ``l2-path``: the exact optima for L2 strengths from 1e-3 (memorises the noise) to 1 (under-fits), each with
  its own leave-one-out truth. Every point is a legitimate place to compute classic influence, so this asks
  whether R_val^gamma tells the better-behaved optima from the worse ones.

mu (the margin of the theorem) is fixed per seed: the median |I_true| over the ``n_loo`` points of the reference
model (the optimum at the default L2 strength, shared by both trajectories). The rows also carry the sign error
among the points whose |I_true| >= mu (the ones the theorem speaks about), and the assumption checks: the
range of the estimation error (assumption: <= R_val^gamma) and the median leave-one-out parameter shift
||theta_-i - theta*|| (assumption: <= gamma), with the sharpness R_val^gamma - R_val at exactly that radius
(``sharpness_at_shift``: the part of the picture that a fixed gamma misses when the moves change size).

Writes are atomic (temp file + ``os.replace``) after every checkpoint, and a rerun skips every row already
present for (seed, n_train, checkpoint, gamma, method); the optima and their leave-one-out truths are kept in
``OUT/.cache/theory/`` (``ifkit.experiments.cache``), so a rerun computes the missing rows without refitting them.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

import ifkit
from ifkit import metrics
from ifkit import sharpness as theory
from ifkit.core.func import Problem, make_problem, per_sample_grads
from ifkit.data import make_split
from ifkit.experiments import register
from ifkit.experiments.cache import Cache, cached, key_of
from ifkit.models import LogisticRegression
from ifkit.optim import fullbatch
from ifkit.results import ResultsTable

KEY = ["seed", "n_train", "checkpoint", "gamma", "method"]
FILENAME = "theory.csv"


@dataclass(frozen=True)
class Config:
    """Sizes and grids of one run (``FAST`` for CI, ``FULL`` for the reported numbers)."""

    n_train: int
    n_val: int
    n_loo: int  # training points whose leave-one-out truth is computed (a random subset, fixed per seed)
    train_steps: tuple[int, ...]  # gradient-descent checkpoints of the "training" trajectory
    l2_path: tuple[float, ...]  # L2 strengths of the "l2-path" trajectory (exact optima)
    gammas: tuple[float, ...]
    # "if-lissa" works too, but at ~6 s a checkpoint (500 curvature products) it would double the run time
    methods: tuple[str, ...] = ("if-exact", "datainf", "graddot")
    noise_rate: float = 0.3
    weight_decay: float = 1e-2  # the reference model: L2 of the training trajectory, and mu's source
    lr: float = 1.0  # gradient descent step (the objective's smoothness is ~1.3 here, so 1.0 is stable)
    ascent_steps: int = 20  # projected gradient-ascent steps of ``theory.sharpness``
    eig_iters: int = 100
    trace_samples: int = 50


FAST = Config(n_train=150, n_val=100, n_loo=50, train_steps=(0, 3, 10, 30, 100), l2_path=(1e-3, 1e-2, 1e-1, 1.0),
              gammas=(0.0, 0.3, 1.0), methods=("if-exact", "graddot"), ascent_steps=10)
FULL = Config(n_train=300, n_val=200, n_loo=120, train_steps=(0, 1, 3, 10, 30, 100, 300),
              l2_path=(1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 1.0), gammas=(0.0, 0.1, 0.3, 1.0, 3.0))


@dataclass
class Truth:
    """Leave-one-out ground truth of one optimum, in score units, on the subset ``idx``."""

    model: torch.nn.Module  # the optimum
    weight_decay: float
    I_true: Tensor  # (n_loo,) -n_train * (change of the mean validation loss when the point is left out)
    loo_shift: float  # median ||theta_-i - theta*|| (Newton step, exact to first order)


def _set_theta(template: torch.nn.Module, prob: Problem, theta: Tensor) -> torch.nn.Module:
    model = copy.deepcopy(template)
    with torch.no_grad():
        for name, t in prob.unflatten(theta).items():
            model.get_parameter(name).copy_(t)
    return model


def _truth(model0: torch.nn.Module, train, val, weight_decay: float, idx: list[int]) -> Truth:
    """Fit the optimum at ``weight_decay`` and retrain without each point of ``idx``."""
    model = fullbatch.fit_full_batch(model0, train, weight_decay)
    delta = fullbatch.upweight_val_change(model, train, val, indices=idx, weight_decay=weight_decay)  # (n_loo,)
    n = len(train[0])
    prob = make_problem(model)
    H = fullbatch.objective_hessian(prob, *train, weight_decay)  # (p, p)
    G = per_sample_grads(prob, train[0][idx], train[1][idx])  # (n_loo, p)
    shift = torch.linalg.solve(H, G.T).norm(dim=0) / n  # (n_loo,) ||H^-1 g_i|| / n = leave-one-out move
    return Truth(model, weight_decay, -n * delta, float(shift.median()))


def _pack_truth(t: Truth) -> dict:
    return {"state": t.model.state_dict(), "weight_decay": t.weight_decay, "I_true": t.I_true,
            "loo_shift": t.loo_shift}


def _unpack_truth(payload: dict, model0: torch.nn.Module) -> Truth:
    model = copy.deepcopy(model0)
    model.load_state_dict(payload["state"])
    return Truth(model, payload["weight_decay"], payload["I_true"], payload["loo_shift"])


def _curvature(model: torch.nn.Module, val, cfg: Config, seed: int) -> dict[str, float]:
    return {
        "top_eig": theory.top_hessian_eigenvalue(model, val, iters=cfg.eig_iters, tol=1e-8, seed=seed),
        "trace": theory.hessian_trace(model, val, samples=cfg.trace_samples, seed=seed),
    }


def _rows_at(model, truth: Truth, train, val, idx, mu: float, cfg: Config, seed: int, base: dict,
             todo: set[tuple[float, str]]) -> list[dict]:
    """All (gamma, method) rows in ``todo`` at one checkpoint."""
    started = time.perf_counter()
    I_true = truth.I_true
    above = I_true.abs() >= mu  # (n_loo,) the points the theorem speaks about
    est = {}
    for method in sorted({m for _, m in todo}):
        opts = {"damping": truth.weight_decay} if method != "graddot" else {}
        est[method] = ifkit.score(method, model, train, val, **opts)[idx]  # (n_loo,)
    curv = _curvature(model, val, cfg, seed)
    # Sharpness at the radius the leave-one-out moves actually have (assumption 1 of the bound with gamma = shift)
    at_shift = theory.sharpness(model, val, truth.loo_shift, steps=cfg.ascent_steps)["sharpness"]
    sharp = {}
    for gamma in sorted({g for g, _ in todo}):
        s = theory.sharpness(model, val, gamma, steps=cfg.ascent_steps)
        one = theory.sharpness(model, val, gamma, one_step=True)
        sharp[gamma] = (s, one)
    seconds = time.perf_counter() - started
    rows = []
    for gamma, method in sorted(todo):
        s, one = sharp[gamma]
        err = est[method] - I_true  # (n_loo,) estimation error in score units
        rows.append({
            **base,
            "seed": seed,
            "gamma": gamma,
            "method": method,
            "val_loss": s["R_val"],
            "R_gamma": s["R_gamma"],
            "sharpness": s["sharpness"],
            "sharpness_one_step": one["sharpness"],
            "perturbation_norm": s["perturbation_norm"],
            "grad_norm": s["grad_norm"],
            **curv,
            "mu": mu,
            "bound": theory.sign_error_bound(mu, s["R_gamma"]),
            "sign_error": metrics.sign_error(est[method], I_true),
            "sign_error_above_mu": metrics.sign_error(est[method][above], I_true[above]) if above.any() else math.nan,
            "n_above_mu": int(above.sum()),
            "pearson": metrics.correlation(est[method], I_true)["pearson"],
            "err_range": float(err.max() - err.min()),
            "loo_shift": truth.loo_shift,
            "sharpness_at_shift": at_shift,
            "weight_decay": truth.weight_decay,
            "seconds": seconds,
        })
    return rows


def measure(cfg: Config, seeds: Iterable[int], path: str | Path, progress: bool = True, cache: Cache | None = None
            ) -> pd.DataFrame:
    """Run (or resume) the experiment for ``seeds`` and return the rows of this configuration.

    Args:
        cfg: sizes and grids.
        seeds: seed numbers (each: its own split, label noise, initialisation and leave-one-out subset).
        path: the CSV; rows already there for (seed, n_train, checkpoint, gamma, method) are kept and skipped.
        progress: tqdm bars over checkpoints.
        cache: the optima and their leave-one-out truths on disk (``ifkit.experiments.cache``), read before refitting.
    """
    path = Path(path)
    threads = torch.get_num_threads()
    # Models this small run fastest on one thread: on a busy 2-core machine two threads were 20x slower (measured).
    torch.set_num_threads(1)
    try:
        return _measure(cfg, list(seeds), path, progress, cache)
    finally:
        torch.set_num_threads(threads)


def _measure(cfg: Config, seeds: list[int], path: Path, progress: bool, cache: Cache | None) -> pd.DataFrame:
    table = ResultsTable(path, KEY, required=["sign_error", "bound", "val_loss"])
    for seed in seeds:
        plan = [("training", f"train-step-{t:04d}", t, cfg.weight_decay) for t in cfg.train_steps]
        plan += [("l2-path", f"l2-{wd:.0e}", -1, wd) for wd in cfg.l2_path]
        todo = {}
        for _, label, _, _ in plan:
            missing = {(g, m) for g in cfg.gammas for m in cfg.methods
                       if not table.has(seed=seed, n_train=cfg.n_train, checkpoint=label, gamma=g, method=m)}
            if missing:
                todo[label] = missing
        if not todo:
            continue
        split = make_split("digits", n_train=cfg.n_train, n_val=cfg.n_val, noise="symmetric",
                           rate=cfg.noise_rate, seed=seed)
        train = (split.X_train.double(), split.y_train)
        val = (split.X_val.double(), split.y_val)
        idx = torch.randperm(cfg.n_train, generator=torch.Generator().manual_seed(seed))[: cfg.n_loo].tolist()
        torch.manual_seed(seed)
        model0 = LogisticRegression(64, 10).double()  # the seed's random initialisation
        truths: dict[float, Truth] = {}

        def truth(wd: float) -> Truth:
            if wd not in truths:  # what the truth depends on: the split, the seed's init and subset, the L2 strength
                key = key_of(truth="fit_full_batch + upweight_val_change", dataset="digits", seed=seed,
                             weight_decay=wd, n_train=cfg.n_train, n_val=cfg.n_val, n_loo=cfg.n_loo,
                             noise="symmetric", rate=cfg.noise_rate, model="LogisticRegression(64, 10) float64")
                truths[wd] = cached(cache, key, lambda: _truth(model0, train, val, wd, idx), _pack_truth,
                                    lambda payload: _unpack_truth(payload, model0))
            return truths[wd]

        mu = float(truth(cfg.weight_decay).I_true.abs().median())  # the margin, fixed for the seed
        prob0 = make_problem(model0)
        objective = lambda th: prob0.mean_loss(th, *train) + 0.5 * cfg.weight_decay * th.pow(2).sum()  # noqa: E731
        grad_obj = torch.func.grad(objective)
        theta, step_now = prob0.theta.clone(), 0
        bar = tqdm(plan, desc=f"theory seed {seed}", disable=not progress, leave=False)
        for traj, label, step, wd in bar:
            if label not in todo:
                continue
            bar.set_postfix_str(label)
            if traj == "training":
                while step_now < step:  # full-batch gradient descent on the L2-regularised objective
                    theta = theta - cfg.lr * grad_obj(theta)
                    step_now += 1
                model = _set_theta(model0, prob0, theta)
            else:
                model = truth(wd).model
            base = {"trajectory": traj, "checkpoint": label, "step": step, "n_train": cfg.n_train,
                    "n_val": cfg.n_val, "n_loo": cfg.n_loo, "noise_rate": cfg.noise_rate}
            rows = _rows_at(model, truth(wd if traj == "l2-path" else cfg.weight_decay), train, val, idx, mu, cfg,
                            seed, base, todo[label])
            table.add(rows)
    df = table.frame
    if df.empty:
        return df
    mine = df[(df["n_train"] == cfg.n_train) & df["seed"].isin(seeds)]
    return mine.reset_index(drop=True)


def rank_correlations(df: pd.DataFrame, x: str = "bound", y: str = "sign_error",
                      by: Sequence[str] = ("trajectory", "method")) -> pd.DataFrame:
    """Spearman rank correlation between ``x`` and ``y``: over all rows, and within each group of ``by``.

    Returns a DataFrame with columns group, n, spearman (NaN when either side is constant).
    """
    from scipy.stats import spearmanr

    def rho(part: pd.DataFrame) -> float:
        if len(part) < 3 or part[x].nunique() < 2 or part[y].nunique() < 2:
            return math.nan
        return float(spearmanr(part[x], part[y])[0])

    out = [{"group": "all rows", "n": len(df), "spearman": rho(df)}]
    for col in by:
        for value, part in df.groupby(col, sort=True):
            out.append({"group": f"{col}={value}", "n": len(part), "spearman": rho(part)})
    keys = list(by)
    if len(keys) > 1:
        for values, part in df.groupby(keys, sort=True):
            label = ", ".join(f"{k}={v}" for k, v in zip(keys, values))
            out.append({"group": label, "n": len(part), "spearman": rho(part)})
    return pd.DataFrame(out)


@register("theory", seconds=(53, 7))
def run(fast: bool, seeds: int, out: Path) -> pd.DataFrame:
    """``ifkit reproduce theory``: write ``out/theory.csv`` and print the rank correlations."""
    cfg = FAST if fast else FULL
    df = measure(cfg, range(seeds), Path(out) / FILENAME, cache=Cache(out, "theory"))
    corr = rank_correlations(df)
    with pd.option_context("display.width", 120, "display.max_rows", 100):
        print(f"Spearman rank correlation between measured sign error and the Theorem-3.2 bound "
              f"(n_train={cfg.n_train}, seeds={seeds}, rows={len(df)}):")
        print(corr.to_string(index=False, float_format=lambda v: f"{v:+.3f}"))
        print("Spearman between sign error and the sharpness at the leave-one-out radius (sharpness_at_shift):")
        at_shift = rank_correlations(df, x="sharpness_at_shift")
        print(at_shift.to_string(index=False, float_format=lambda v: f"{v:+.3f}"))
        summary = (df.groupby(["trajectory", "checkpoint", "method"], sort=False)
                   .agg(val_loss=("val_loss", "mean"), sign_error=("sign_error", "mean"), mu=("mu", "mean"))
                   .reset_index())
        print(summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return df


__all__ = ["FAST", "FULL", "Config", "measure", "rank_correlations", "run"]
