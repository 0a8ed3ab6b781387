"""ifkit against the established influence libraries captum, dattri and pyDVL, on the same work.

Run (none of them is an ifkit dependency; ``make bench-compare`` builds a separate .venv-compare):

    python benchmarks/compare_libraries.py [--fast] [--workload bench|fmnist4k] [--out results/bench_compare.csv]

Workloads. ``bench`` (the default, described next) is ifkit bench's model and data. ``fmnist4k`` is the peers'
own scale: real Fashion-MNIST (class-balanced 4,000 training points from the train split, S_val of 500 from
the test split), a 784-64-10 tanh MLP (50,890 parameters), the same training and hyperparameter rules; its rows
carry "workload fmnist4k" at the start of their note, and rewriting one workload keeps the other's rows.
pyDVL (CgInfluence, LissaInfluence; score mode only, with S_val as ONE test point, ``_Rows``) is measured on
it. kronfluence 1.0.1 installs beside the CPU torch (pulling torchvision 0.28, CPU) but has no CG or LiSSA:
its strategies are identity, diagonal, K-FAC and EK-FAC, so it has no row here yet (an EK-FAC pair would be
the one with the same formula).

What is compared. The model and data are ``ifkit bench``'s (``ifkit.bench._model`` / ``_data``: the 784-128-10
tanh MLP, 101,770 parameters, on Fashion-MNIST-shaped uniform noise with random labels, S_val of 100 points),
trained briefly (5 epochs of Adam, lr 1e-3, batches of 128, 3 TracIn checkpoints evenly spaced) so that the
scores are taken at a trained model rather than at initialisation. n_train = 2,000 and 8,000 (FAST: 500).
Each PAIR runs one formula twice, once through ``ifkit.score`` / ``ifkit.pairwise`` and once through the
library's documented API, with the same hyperparameters; the docstrings of the runners below say how each
library's formula maps onto ifkit's. Two modes:

* ``score``: one score per training point against the MEAN validation loss (what ``ifkit.score`` computes).
  captum's TracInCP does this with ``aggregate=True`` (sum over the test batch, so we divide by n_val);
  dattri has no aggregate option, so its test set is ONE example holding all of S_val and its target function
  is the mean loss over it (``_WholeSetAsOne``): one inverse-curvature solve, as ifkit does.
* ``pairwise``: the (n_val, n_train) matrix of per-query scores (what ``ifkit.pairwise`` computes and what
  both libraries compute natively); agreement is then over all n_val * n_train entries.

Sign convention: both libraries report g_test^T M g_train, positive = the training point HELPS the test point
(a proponent); ifkit reports the predicted INCREASE of the loss, -g_test^T M g_train, positive = harmful. Every
library output is negated (and rescaled where a library uses sum instead of mean losses) by
``to_ifkit_convention`` before the two are compared.

How it is measured. Per (pair, n_train) one fresh process times both sides round-robin (``repeats`` each,
alternating which side goes first; ``seconds`` / ``ifkit_seconds`` are medians, ``ratio`` is the median of the
within-repeat ratios library / ifkit, so a slow spell of the shared machine hits both sides alike) after one
untimed warm-up call of each, and computes the Pearson and Spearman correlation of the two outputs. The library
warms up first in that process, so its peak RSS right after that call is its own (``peak_mb``, ru_maxrss as in
``ifkit/bench.py``); a second fresh process runs ifkit once for ``ifkit_peak_mb``. Both processes import torch, ifkit and the library and build
the same data and model before anything is measured, so the baseline is the same and the difference is the
algorithm's. Diagnostic rows (which explain a discrepancy rather than measure speed) run one timed repeat and
no separate memory process. ``n_params`` is the number of parameters differentiated (1,290 for the
last-layer rows).

Hyperparameters shared by both sides: damping 0.01 (DataInf, EK-FAC, exact last-layer influence); for the
full-network Hessian methods (CG, LiSSA) a damping large enough to make H + damping I positive definite,
measured per training set by Lanczos (this briefly trained network's Hessian has eigenvalues down to -1 or -2;
at damping 0.01 ifkit's Hessian CG stops with a ConvergenceError, "non-positive curvature", while dattri's CG
silently returns numbers -- at 500 points they correlate 0.73 with ifkit's default Gauss-Newton CG);
30 CG iterations (ifkit's tol is set to 0 so that it also runs all 30: dattri ignores its own tol); LiSSA
with 100 recursions on mini-batches of 512 and one shared scale = 1.5 x (top eigenvalue + damping). Both
solvers have converged well within these budgets here (see CG_ITERS).

Columns: library, method, ifkit_method, mode, n_train, n_params, seconds, ifkit_seconds, ratio, peak_mb,
ifkit_peak_mb, pearson, spearman, fast, note (which also gives the machine's 1-minute load average before and
after the timing process: the machine is shared, and short calls suffer most from a busy one). The file is
rewritten atomically after every row.

Cost: ~45 min on 2 cores. Memory: dattri's IF attributors hold all n x p per-sample gradients (see
``_one_batch``): at 8,000 points its CG / LiSSA peak at ~13 GB and DataInf at ~18 GB, so run it with ~20 GB
free; everything else stays under 2 GB.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

COLUMNS = ["library", "method", "ifkit_method", "mode", "n_train", "n_params", "seconds", "ifkit_seconds",
           "ratio", "peak_mb", "ifkit_peak_mb", "pearson", "spearman", "fast", "note"]
LIBRARIES = ("captum", "dattri", "pydvl")
N_VAL = 100
HIDDEN = (128,)  # ifkit bench's MLP: 784-128-10 tanh
DAMPING = 0.01  # ifkit's default; DataInf / EK-FAC / exact last-layer influence
# CG and LiSSA budgets: both converge well within them on this problem (the damped Hessian's condition number is
# ~8: CG reaches float32 rounding in ~20 steps, the LiSSA series contracts by ~0.93 per step), so more would
# only repeat work -- and dattri's CG, which has no stopping test, turns to NaN once its residual underflows
# (measured: all-NaN scores at 100 iterations, n_train = 300)
CG_ITERS = 30
LISSA_DEPTH = 100
LISSA_BATCH = 512  # ifkit's mini-batch size above 4,096 points; used at every size here, by both sides
LIB_BATCH = 512  # training-set batch of the libraries' loaders where the result does not depend on it
HEAD = ("net.2.weight", "net.2.bias")  # the MLP's output layer: its Hessian (cross-entropy) is PSD
EPOCHS, LR, TRAIN_BATCH, N_CHECKPOINTS = 5, 1e-3, 128, 3


# Two workloads. "bench": ifkit bench's MLP and synthetic data (above). "fmnist4k": the peers' own scale --
# real Fashion-MNIST, 4,000 training points (class-balanced from the train split), S_val of 500 (from the test
# split), a 784-64-10 tanh MLP with 50,890 parameters.
WORKLOADS: dict[str, dict[str, Any]] = {
    "bench": dict(sizes=(2_000, 8_000), fast_sizes=(500,), n_val=N_VAL, hidden=HIDDEN, data="bench"),
    "fmnist4k": dict(sizes=(4_000,), fast_sizes=(500,), n_val=500, hidden=(64,), data="fashion-mnist"),
}


def config(fast: bool, workload: str = "bench") -> dict[str, Any]:
    """Sizes and budgets; FAST is a quick check (n_train = 500), not a measurement to quote."""
    w = WORKLOADS[workload]
    return dict(sizes=w["fast_sizes"] if fast else w["sizes"], n_val=w["n_val"], hidden=w["hidden"], data=w["data"],
                repeats=3, timeout_s=900 if fast else 3_600)


# ---------------------------------------------------------------------------------------------------------------
# Pure helpers (no captum / dattri needed; tests/test_compare_libraries.py checks them)
# ---------------------------------------------------------------------------------------------------------------


def to_ifkit_convention(raw: Tensor, *, train_axis: int, scale: float = 1.0, score: bool = False) -> Tensor:
    """A library's influence output in ifkit's convention.

    captum and dattri report g_test^T M g_train (positive = proponent: up-weighting the training point LOWERS
    the test loss); ifkit reports the predicted loss INCREASE, -g_test^T M g_train. So: negate, move the
    training axis last ((n_queries, n_train), as ``ifkit.pairwise``), multiply by ``scale`` (e.g. 1/n_val for
    captum's aggregate = SUM over the test batch, n_train for captum's Hessian of the SUMMED training loss) and,
    for ``score=True``, drop the single query axis so the result is (n_train,) like ``ifkit.score``.
    """
    out = -scale * raw.detach().to(torch.float64).movedim(train_axis, -1)
    if score:
        if out.dim() != 2 or out.shape[0] != 1:
            raise ValueError(f"a score needs exactly one query row, got shape {tuple(out.shape)}")
        out = out[0]
    return out


def within_repeat_ratio(library_s: Sequence[float], ifkit_s: Sequence[float]) -> float:
    """Median over repeats of library seconds / ifkit seconds measured in the same repeat (round-robin), so
    that a slow spell of a shared machine cancels out of each ratio."""
    if len(library_s) != len(ifkit_s) or not library_s:
        raise ValueError(f"need the same, non-zero number of repeats, got {len(library_s)} and {len(ifkit_s)}")
    return statistics.median(lib / ifk for lib, ifk in zip(library_s, ifkit_s))


def agreement(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> tuple[float, float]:
    """(Pearson, Spearman) correlation of two score vectors or matrices (flattened); NaN if either is constant
    or not finite."""
    from scipy.stats import spearmanr

    x = np.asarray(a.detach().cpu() if isinstance(a, Tensor) else a, dtype=np.float64).ravel()
    z = np.asarray(b.detach().cpu() if isinstance(b, Tensor) else b, dtype=np.float64).ravel()
    if x.shape != z.shape:
        raise ValueError(f"shapes differ: {x.shape} vs {z.shape}")
    if not (np.isfinite(x).all() and np.isfinite(z).all()) or x.std() == 0 or z.std() == 0:
        return float("nan"), float("nan")
    return float(np.corrcoef(x, z)[0, 1]), float(spearmanr(x, z).statistic)


def extreme_eigenvalues(matvec: Callable[[Tensor], Tensor], p: int, steps: int = 60, seed: int = 0,
                        dtype: torch.dtype = torch.float32) -> tuple[float, float]:
    """(smallest, largest) eigenvalue of a symmetric operator by Lanczos with full reorthogonalisation.

    Lanczos finds both ends of the spectrum in a few dozen products, where power iteration on a shifted
    operator needs hundreds for the most negative eigenvalue (a small gap to the next one).
    """
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(p, generator=gen, dtype=dtype)
    Q = [q / q.norm()]
    alphas: list[float] = []
    betas: list[float] = []
    for _ in range(min(steps, p)):
        w = matvec(Q[-1])
        alphas.append(float(w @ Q[-1]))
        B = torch.stack(Q)  # (j, p)
        w = w - B.T @ (B @ w)  # removes alpha q_j and beta q_{j-1} too, and any loss of orthogonality
        w = w - B.T @ (B @ w)
        beta = float(w.norm())
        if beta < 1e-8 * max(1.0, abs(alphas[-1])):
            break
        betas.append(beta)
        Q.append(w / beta)
    k = len(alphas)
    T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    off = torch.tensor(betas[: k - 1], dtype=torch.float64)
    T += torch.diag(off, 1) + torch.diag(off, -1)
    ev = torch.linalg.eigvalsh(T)
    return float(ev[0]), float(ev[-1])


def hessian_damping(min_eig: float, floor: float = DAMPING) -> float:
    """Damping for the full-network Hessian methods: twice the most negative eigenvalue's size, rounded up to
    one significant figure (so H + damping I is positive definite with a margin), at least ``floor``."""
    need = 2 * max(0.0, -min_eig)
    if need <= floor:
        return floor
    mag = 10 ** math.floor(math.log10(need))
    return math.ceil(need / mag) * mag


# ---------------------------------------------------------------------------------------------------------------
# The shared problem: bench's model and data, trained briefly, saved once and loaded by every worker
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Setup:
    """One training set: theta* (``model``), TracIn checkpoints, data, and the hyperparameters both sides use."""

    model: nn.Module
    checkpoints: list[tuple[dict[str, Tensor], float]]  # (state_dict, lr), the last one is theta*
    ckpt_paths: list[str]  # the same checkpoints on disk, for captum (which loads paths)
    final_path: str  # theta* on disk (captum's one-checkpoint rows)
    X: Tensor
    y: Tensor
    Xv: Tensor
    yv: Tensor
    hp: dict[str, float] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.X)


def _bench_problem(n: int, n_val: int, hidden: Sequence[int], data: str = "bench"
                   ) -> tuple[nn.Module, Tensor, Tensor, Tensor, Tensor]:
    """The untrained model and the data: ``ifkit bench``'s "methods" part (``data="bench"``), or class-balanced
    Fashion-MNIST subsets (``"fashion-mnist"``: train split for training, test split for S_val)."""
    from ifkit.bench import _data, _model

    torch.manual_seed(0)
    model = _model("mlp", tuple(hidden))
    if data == "fashion-mnist":
        from ifkit.data.images import load_fashion_mnist

        X, y = load_fashion_mnist("train", n, seed=0)
        Xv, yv = load_fashion_mnist("test", n_val, seed=1)
    else:
        X, y = _data(n, 1)
        Xv, yv = _data(n_val, 2)
    return model, X, y, Xv, yv


def prepare(n: int, workdir: Path, n_val: int = N_VAL, hidden: Sequence[int] = HIDDEN, epochs: int = EPOCHS,
            progress: bool = False, data: str = "bench") -> Path:
    """Train on bench's data, measure the Hessian's spectrum, save everything a worker needs; returns the file."""
    from ifkit.core import func
    from ifkit.optim.train import train

    model, X, y, Xv, yv = _bench_problem(n, n_val, hidden, data)
    res = train(model, (X, y), epochs=epochs, lr=LR, batch_size=TRAIN_BATCH, n_checkpoints=N_CHECKPOINTS,
                      seed=0, progress=False)
    theta = res.model.eval()
    prob = func.make_problem(theta)
    lo, hi = extreme_eigenvalues(func.hvp_fn(prob, X, y), prob.p)
    lam_h = hessian_damping(lo)
    hp = dict(damping=DAMPING, damping_hessian=lam_h, h_min=lo, h_max=hi, cg_iters=CG_ITERS,
              lissa_depth=LISSA_DEPTH, lissa_batch=min(LISSA_BATCH, n), lissa_scale=1.5 * (hi + lam_h),
              train_loss=float(res.history["train_loss"].iloc[-1]), train_acc=float(res.history["train_acc"].iloc[-1]))
    if progress:
        print(f"n={n:,}: train loss {hp['train_loss']:.3f} acc {hp['train_acc']:.3f}; Hessian eigenvalues "
              f"[{lo:.3g}, {hi:.3g}] -> Hessian damping {lam_h:g}, LiSSA scale {hp['lissa_scale']:.3g}", flush=True)
    paths = []
    for j, (state, lr) in enumerate(res.checkpoints):
        paths.append(str(workdir / f"ckpt_{n}_{j}.pt"))
        torch.save(dict(state=state, lr=lr), paths[-1])
    final = workdir / f"final_{n}.pt"
    torch.save(dict(state=theta.state_dict(), lr=1.0), final)
    out = workdir / f"setup_{n}.pt"
    torch.save(dict(n=n, n_val=n_val, hidden=list(hidden), data=data, state=theta.state_dict(), checkpoints=res.checkpoints,
                    ckpt_paths=paths, final_path=str(final), hp=hp), out)
    return out


def load_setup(path: str | Path) -> Setup:
    """Rebuild a ``Setup`` from ``prepare``'s file (the data are regenerated from bench's seeds)."""
    d = torch.load(path, weights_only=False)
    model, X, y, Xv, yv = _bench_problem(d["n"], d["n_val"], d["hidden"], d.get("data", "bench"))
    model.load_state_dict(d["state"])
    return Setup(model.eval(), d["checkpoints"], d["ckpt_paths"], d["final_path"], X, y, Xv, yv, d["hp"])


# ---------------------------------------------------------------------------------------------------------------
# ifkit's side
# ---------------------------------------------------------------------------------------------------------------


def _ifkit(method: str, mode: str, s: Setup, **options: Any) -> Tensor:
    import ifkit

    fn = ifkit.score if mode == "score" else ifkit.pairwise
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # CG with tol=0 always "reaches iters": that is what we asked for
        return fn(method, s.model, (s.X, s.y), (s.Xv, s.yv), **options).to(torch.float64)


def _ifkit_lissa(s: Setup, seed: int = 0) -> Tensor:
    """ifkit's LiSSA with dattri's settings: Hessian products on mini-batches, the shared scale and damping."""
    return _ifkit("if-lissa", "score", s, curvature="cg", damping=s.hp["damping_hessian"], scale=s.hp["lissa_scale"],
                  iters=int(s.hp["lissa_depth"]), lissa_batch=int(s.hp["lissa_batch"]), seed=seed)


def _ifkit_ekfac_empirical(s: Setup) -> Tensor:
    """ifkit's ``ekfac`` score with the EMPIRICAL Fisher (training labels) instead of the exact Gauss-Newton.

    ``ifkit.score("ekfac")`` always fits the Gauss-Newton / true Fisher (an exact expectation over labels);
    dattri's EK-FAC fits the empirical Fisher. ``ifkit.curvature.kfac.fit(fisher="empirical")`` is the same computation
    as ``ekfac_score`` with that one switch, so this isolates dattri's own differences.
    """
    from ifkit.core import func
    from ifkit.curvature import kfac

    prob = func.make_problem(s.model)
    curv = kfac.fit(prob, s.X, s.y, kind="ekfac", fisher="empirical")
    v = curv.solve(func.mean_grad(prob, s.Xv, s.yv), s.hp["damping"])
    return -func.grad_dots(prob, s.X, s.y, v).to(torch.float64)


# ---------------------------------------------------------------------------------------------------------------
# captum's side (captum.influence)
# ---------------------------------------------------------------------------------------------------------------


def _captum_load(model: nn.Module, path: str) -> float:
    """captum's checkpoints_load_func: load the state into ``model``, return the checkpoint's learning rate."""
    ck = torch.load(path, weights_only=False)
    model.load_state_dict(ck["state"])
    return float(ck["lr"])


def _captum_tracin(s: Setup, paths: list[str], mode: str) -> Tensor:
    """captum TracInCP: sum_c lr_c g_test(theta_c)^T g_i(theta_c)  ->  ifkit tracin / graddot.

    Per-sample gradients by captum's batched hooks (``sample_wise_grads_per_batch=True``, which needs a
    reduction="sum" loss). ``aggregate=True`` sums the influence over the test batch, i.e. uses
    sum_q g_q = n_val * g_val: divided by n_val it is ifkit.score's mean validation gradient.
    """
    from captum.influence import TracInCP

    tracin = TracInCP(copy.deepcopy(s.model), torch.utils.data.TensorDataset(s.X, s.y), paths,
                      checkpoints_load_func=_captum_load, loss_fn=nn.CrossEntropyLoss(reduction="sum"),
                      batch_size=LIB_BATCH, sample_wise_grads_per_batch=True)
    if mode == "score":
        raw = tracin.influence((s.Xv, s.yv), aggregate=True)  # (1, n_train)
        return to_ifkit_convention(raw, train_axis=1, scale=1 / len(s.Xv), score=True)
    return to_ifkit_convention(tracin.influence((s.Xv, s.yv)), train_axis=1)  # (n_val, n_train)


def _captum_naive_if(s: Setup, mode: str) -> Tensor:
    """captum NaiveInfluenceFunction on the output layer: g_test^T (H_sum + hessian_reg I)^+ g_i  ->  if-exact.

    captum forms the Hessian of the SUMMED training loss, H_sum = n H_mean, and pseudo-inverts it over the
    eigenvalues above ``hessian_inverse_tol`` (``projection_dim=None`` keeps them all). With hessian_reg =
    n * damping, (H_sum + n damping I)^-1 = (H_mean + damping I)^-1 / n, so ifkit = -n * captum. Restricted to
    the output layer, where the cross-entropy Hessian is positive semi-definite, no eigenvalue is dropped.
    """
    from captum.influence import NaiveInfluenceFunction

    n = s.n
    naive = NaiveInfluenceFunction(copy.deepcopy(s.model), torch.utils.data.TensorDataset(s.X, s.y),
                                   s.final_path, checkpoints_load_func=_captum_load, layers=["net.2"],
                                   loss_fn=nn.CrossEntropyLoss(reduction="sum"), batch_size=LIB_BATCH,
                                   sample_wise_grads_per_batch=True, projection_dim=None,
                                   hessian_reg=n * s.hp["damping"], hessian_inverse_tol=1e-12)
    out = to_ifkit_convention(naive.influence((s.Xv, s.yv)), train_axis=1, scale=n)  # (n_val, n_train)
    return out.mean(0) if mode == "score" else out


# ---------------------------------------------------------------------------------------------------------------
# dattri's side (dattri.algorithm)
# ---------------------------------------------------------------------------------------------------------------


class _WholeSetAsOne(torch.utils.data.Dataset):
    """A dataset of ONE item: the whole validation set. dattri's target function (``_dattri_loss``) reshapes its
    input to a batch and returns the mean loss, so that item's "per-example gradient" is the gradient of the mean
    validation loss: dattri then does one inverse-curvature solve against g_val, exactly the work of
    ``ifkit.score``, instead of n_val solves."""

    def __init__(self, X: Tensor, y: Tensor) -> None:
        self.X, self.y = X, y

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.X, self.y


def _dattri_loss(model: nn.Module, image_shape: Sequence[int]) -> Callable[[dict[str, Tensor], Any], Tensor]:
    """dattri's loss / target function: mean cross-entropy of whatever batch it gets.

    dattri calls it with one example (TracIn: vmapped over dim 0), a batch of one (the IF attributors unsqueeze
    and vmap over dim 1), a whole batch (Hessian, EK-FAC factors) or S_val as one item: reshaping to
    (-1, *image_shape) serves all of them. Labels are cast back to long because dattri's LiSSA collate_fn
    turns every data tensor into float.
    """

    def loss(params: dict[str, Tensor], data: tuple[Tensor, Tensor]) -> Tensor:
        x, t = data
        out = torch.func.functional_call(model, params, (x.reshape(-1, *image_shape),))
        return F.cross_entropy(out, t.reshape(-1).long())

    return loss


def _dattri_task(s: Setup, checkpoints: list[dict[str, Tensor]] | None = None):
    from dattri.task import AttributionTask

    model = copy.deepcopy(s.model)
    return AttributionTask(loss_func=_dattri_loss(model, s.X.shape[1:]), model=model,
                           checkpoints=checkpoints if checkpoints is not None else model.state_dict())


def _loader(X: Tensor, y: Tensor, batch: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=batch, shuffle=False)


def _dattri_queries(s: Setup, mode: str) -> torch.utils.data.DataLoader:
    if mode == "score":
        return torch.utils.data.DataLoader(_WholeSetAsOne(s.Xv, s.yv), batch_size=1, shuffle=False)
    return _loader(s.Xv, s.yv, len(s.Xv))


def _dattri_out(raw: Tensor, mode: str) -> Tensor:
    """dattri returns (n_train, n_test)."""
    return to_ifkit_convention(raw, train_axis=0, score=mode == "score")


def _dattri_tracin(s: Setup, mode: str, checkpoints: list[tuple[dict[str, Tensor], float]],
                   project: bool = False) -> Tensor:
    """dattri TracInAttributor: sum_c w_c g_i(theta_c)^T g_test(theta_c)  ->  ifkit tracin / graddot.

    weight_list = the checkpoints' learning rates (graddot: one checkpoint, theta*, weight 1). dattri 0.3.0
    projects both gradients to 512 random dimensions unless told otherwise (``DEFAULT_PROJECTOR_KWARGS``; a
    ``projector_kwargs=None`` argument still gets that default), so the exact formula needs
    ``attributor.projector_kwargs = None`` after construction; ``project=True`` keeps the default projection.
    """
    from dattri.algorithm import TracInAttributor

    task = _dattri_task(s, [state for state, _ in checkpoints])
    att = TracInAttributor(task=task, weight_list=torch.tensor([lr for _, lr in checkpoints]),
                           normalized_grad=False, projector_kwargs=None)
    if not project:
        att.projector_kwargs = None  # the exact gradient dot product (see the docstring)
    return _dattri_out(att.attribute(_loader(s.X, s.y, LIB_BATCH), _dattri_queries(s, mode)), mode)


def _one_batch(s: Setup) -> torch.utils.data.DataLoader:
    """The whole training set as ONE batch. dattri's IF attributors (a) apply their inverse-Hessian solve once
    per batch of ``cache``'s loader and SUM the results, which is (H + damping I)^-1 v only for a single batch,
    and (b) redo the solve for every batch of ``attribute``'s training loader; one batch gives one solve, as in
    ifkit, at the price of holding all n x p per-sample gradients at once (the peak_mb column shows it)."""
    return _loader(s.X, s.y, s.n)


def _dattri_if(s: Setup, mode: str, kind: str) -> Tensor:
    """dattri IFAttributor{Explicit, CG, LiSSA, DataInf}: g_i^T M g_test  ->  ifkit if-exact / if-cg / if-lissa /
    datainf (M symmetric).

    * Explicit, output layer only (``layer_name``): M = (H_mean + regularization I)^-1 by torch.linalg.solve.
    * CG: M = (H_mean + regularization I)^-1, max_iter CG steps from x0 = v (ifkit: from 0), no early stop.
    * LiSSA: h <- v + (1 - d) h - H_batch h / s, result h / s, i.e. (H + d s I)^-1 v: dattri's damping d is
      ifkit's damping / s. Both sides draw their own mini-batches, so agreement is limited by sampling noise.
    * DataInf: per layer, M v = (v - 1/n sum_i g_i (g_i^T v) / (r + |g_i|^2)) / r with one r for all layers;
      ifkit's ``datainf`` with an explicit damping uses the same r for every layer.
    """
    from dattri.algorithm import IFAttributorCG, IFAttributorDataInf, IFAttributorExplicit, IFAttributorLiSSA

    hp = s.hp
    if kind == "explicit":
        task = _dattri_task(s)
        att = IFAttributorExplicit(task=task, layer_name=list(HEAD), regularization=hp["damping"])
    elif kind == "cg":
        att = IFAttributorCG(task=_dattri_task(s), max_iter=int(hp["cg_iters"]), regularization=hp["damping_hessian"])
    elif kind == "lissa":
        scale = hp["lissa_scale"]
        att = IFAttributorLiSSA(task=_dattri_task(s), batch_size=int(hp["lissa_batch"]),
                                recursion_depth=int(hp["lissa_depth"]), damping=hp["damping_hessian"] / scale,
                                scaling=scale)
    elif kind == "datainf":
        att = IFAttributorDataInf(task=_dattri_task(s), regularization=hp["damping"])
    else:
        raise ValueError(kind)
    att.cache(_one_batch(s))
    return _dattri_out(att.attribute(_one_batch(s), _dattri_queries(s, mode)), mode)


def _patch_dattri_ekfac() -> Callable[[], None]:
    """Fix, for one call, the two defects we found in dattri 0.3.0's EK-FAC; returns the undo function.

    1. Eigenbasis: ``estimate_eigenvector`` keeps torch.linalg.eigh's Q (eigenvectors in COLUMNS), but
       ``_update_lambda`` and ``transform_test_rep`` project with ``q_s @ G @ q_a.T`` -- the rows. Returning
       Q^T from ``estimate_eigenvector`` makes both use Q_S^T G Q_A, the Kronecker eigenbasis.
    2. Bias layout: for a Linear layer with bias the per-layer matrix should be [W | b] row by row (the
       factor A gets a trailing 1), but ``transform_test_rep`` concatenates flat W and b and reshapes to
       (d_out, d_in + 1), which mixes rows. We reorder the vector to row layout before and back after.
    Together they make dattri agree with ifkit's empirical-Fisher EK-FAC to rounding (checked in float64 in
    tests/test_compare_libraries.py).
    """
    import dattri.func.fisher as fisher
    from dattri.algorithm import IFAttributorEKFAC

    orig_eig, orig_transform = fisher.estimate_eigenvector, IFAttributorEKFAC.transform_test_rep

    def eig(cov):
        return {k: (qa.T, qs.T) for k, (qa, qs) in orig_eig(cov).items()}

    def transform(self, ckpt_idx: int, test_rep: Tensor) -> Tensor:
        shapes = [(self.name_to_module[m].weight.shape, self.name_to_module[m].bias is not None)
                  for m in self.module_name]
        rows = _layout(test_rep, shapes, to_rows=True)
        return _layout(orig_transform(self, ckpt_idx, rows), shapes, to_rows=False)

    fisher.estimate_eigenvector, IFAttributorEKFAC.transform_test_rep = eig, transform

    def undo() -> None:
        fisher.estimate_eigenvector, IFAttributorEKFAC.transform_test_rep = orig_eig, orig_transform

    return undo


def _layout(V: Tensor, shapes: list[tuple[torch.Size, bool]], to_rows: bool) -> Tensor:
    """Reorder (k, p) vectors between [flat W, b] per layer (``to_rows=False``) and [W_o | b_o] rows (True)."""
    out, start = [], 0
    for (d_out, d_in), has_bias in shapes:
        size = d_out * (d_in + has_bias)
        block = V[:, start : start + size]
        if has_bias and to_rows:
            W, b = block[:, : d_out * d_in].reshape(-1, d_out, d_in), block[:, d_out * d_in :].reshape(-1, d_out, 1)
            block = torch.cat([W, b], 2).flatten(1)
        elif has_bias:
            M = block.reshape(-1, d_out, d_in + 1)
            block = torch.cat([M[:, :, :d_in].flatten(1), M[:, :, d_in]], 1)
        out.append(block)
        start += size
    return torch.cat(out, 1)


def _dattri_ekfac(s: Setup, mode: str, patched: bool = False) -> Tensor:
    """dattri IFAttributorEKFAC: g_i^T Q (Lambda + damping)^-1 Q^T g_test  ->  ifkit ekfac.

    dattri fits its factors on the EMPIRICAL Fisher (the loss at the training labels, batch by batch); ifkit's
    ``ekfac`` on the Gauss-Newton (true Fisher). ``patched=True`` applies ``_patch_dattri_ekfac``.
    """
    from dattri.algorithm import IFAttributorEKFAC

    undo = _patch_dattri_ekfac() if patched else (lambda: None)
    try:
        att = IFAttributorEKFAC(task=_dattri_task(s), damping=s.hp["damping"])
        att.cache(_loader(s.X, s.y, LIB_BATCH))
        return _dattri_out(att.attribute(_loader(s.X, s.y, LIB_BATCH), _dattri_queries(s, mode)), mode)
    finally:
        undo()


# ---------------------------------------------------------------------------------------------------------------
# pyDVL's side (pydvl.influence.torch)
# ---------------------------------------------------------------------------------------------------------------


class _Rows(nn.Module):
    """pyDVL's model wrapper: inputs (b, k, *image) -> outputs (b, k * classes), k examples per "point".

    pyDVL differentiates the loss of each test POINT separately; to give it ifkit.score's single right-hand side
    (the mean validation loss) the whole of S_val is passed as ONE point of k = n_val examples (as dattri's
    ``_WholeSetAsOne``). Training points are the same model on k = 1."""

    def __init__(self, model: nn.Module, image_shape: Sequence[int]) -> None:
        super().__init__()
        self.model, self.image_shape = model, tuple(image_shape)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x.reshape(-1, *self.image_shape)).reshape(len(x), -1)


def _pydvl_loss(out: Tensor, t: Tensor) -> Tensor:
    """Mean cross-entropy over every example in the batch (pyDVL's ``loss``: outputs, targets -> scalar)."""
    return F.cross_entropy(out.reshape(t.numel(), -1), t.reshape(-1).long())


def _pydvl_if(s: Setup, kind: str) -> Tensor:
    """pyDVL CgInfluence / LissaInfluence (``influences(mode="up")``: <(H + reg I)^-1 g_test, g_i>)  ->  ifkit
    if-cg / if-lissa with Hessian products, score mode.

    * CG: ``maxiter`` steps from x0 = b (ifkit: from 0); rtol = atol = 0 so it runs all of them, as ifkit with
      tol = 0. Its Hessian is the mean over the batches of the fitted loader: one batch of all n points.
    * LiSSA: h <- v + (1 - dampen) h - (H_batch + reg I) h / scale, result h / scale, on shuffled mini-batches
      of ``lissa_batch`` (ifkit: drawn with replacement); dampen = 0, the same scale and damping as ifkit's.
    """
    from pydvl.influence import InfluenceMode
    from pydvl.influence.torch import CgInfluence, LissaInfluence

    hp = s.hp
    model = _Rows(copy.deepcopy(s.model), s.X.shape[1:])
    if kind == "cg":
        inf = CgInfluence(model, _pydvl_loss, regularization=float(hp["damping_hessian"]), rtol=0.0, atol=0.0,
                          maxiter=int(hp["cg_iters"]), warn_on_max_iteration=False)
        inf = inf.fit(_loader(s.X[:, None], s.y[:, None], s.n))
    else:
        inf = LissaInfluence(model, _pydvl_loss, regularization=float(hp["damping_hessian"]), maxiter=int(hp["lissa_depth"]),
                             dampen=0.0, scale=hp["lissa_scale"], rtol=0.0, warn_on_max_iteration=False)
        inf = inf.fit(_loader(s.X[:, None], s.y[:, None], int(hp["lissa_batch"])))
    raw = inf.influences(s.Xv[None], s.yv[None], s.X[:, None], s.y[:, None], mode=InfluenceMode.Up)  # (1, n)
    return to_ifkit_convention(raw, train_axis=1, score=True)


# ---------------------------------------------------------------------------------------------------------------
# The pairs
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """One formula computed by ifkit and by a library. ``run_ifkit`` / ``run_library`` return ifkit's convention:
    (n_train,) in "score" mode, (n_val, n_train) in "pairwise" mode."""

    library: str
    method: str  # the library's class (and setting)
    ifkit_method: str  # ifkit's method name (and options that matter)
    mode: str  # "score" | "pairwise"
    run_ifkit: Callable[[Setup], Tensor]
    run_library: Callable[[Setup], Tensor]
    last_layer: bool = False  # only the output layer's parameters are differentiated
    note: str = ""
    max_n: int | None = None  # not measured above this n_train (``skip_reason`` says why)
    skip_reason: str = ""
    diagnostic: bool = False  # explains a discrepancy: one repeat, no ifkit memory process

    @property
    def key(self) -> str:
        return f"{self.library}:{self.method}:{self.ifkit_method}:{self.mode}"


def _final(s: Setup) -> list[tuple[dict[str, Tensor], float]]:
    return [(s.model.state_dict(), 1.0)]


def pairs() -> list[Pair]:
    """Every (ifkit, library) pairing; see the runners' docstrings for each formula mapping."""
    hess = dict(curvature="cg")  # ifkit: true-Hessian products (its own default for if-cg/if-lissa is the GGN)
    explicit_skip = ("dattri's torch.func.hessian pushes 1,290 tangents through the whole network: "
                     "~50 s per call at 2,000 points and growing with n")
    naive_skip = "captum's autograd.functional.hessian loops over the 1,290 rows, per training batch"
    out: list[Pair] = []
    # gradient dot products: both modes (cheap; the per-query matrix is what both libraries compute natively)
    for mode in ("score", "pairwise"):
        out += [
            Pair("captum", "TracInCP (1 ckpt)", "graddot", mode,
                 lambda s, m=mode: _ifkit("graddot", m, s),
                 lambda s, m=mode: _captum_tracin(s, [s.final_path], m)),
            Pair("captum", "TracInCP (3 ckpts)", "tracin", mode,
                 lambda s, m=mode: _ifkit("tracin", m, s, checkpoints=s.checkpoints),
                 lambda s, m=mode: _captum_tracin(s, s.ckpt_paths, m)),
            Pair("dattri", "TracInAttributor (1 ckpt)", "graddot", mode,
                 lambda s, m=mode: _ifkit("graddot", m, s),
                 lambda s, m=mode: _dattri_tracin(s, m, _final(s)), note="projection off"),
            Pair("dattri", "TracInAttributor (3 ckpts)", "tracin", mode,
                 lambda s, m=mode: _ifkit("tracin", m, s, checkpoints=s.checkpoints),
                 lambda s, m=mode: _dattri_tracin(s, m, s.checkpoints), note="projection off"),
        ]
    out += [
        Pair("dattri", "TracInAttributor (1 ckpt, default 512-d projection)", "graddot", "score",
             lambda s: _ifkit("graddot", "score", s),
             lambda s: _dattri_tracin(s, "score", _final(s), project=True),
             note="dattri 0.3.0 projects gradients to 512 random dimensions by default", diagnostic=True),
        # exact influence on the output layer: captum's native per-query form, dattri's one-solve score form
        Pair("captum", "NaiveInfluenceFunction (output layer)", "if-exact (output layer)", "pairwise",
             lambda s: _ifkit("if-exact", "pairwise", s, params=list(HEAD), damping=s.hp["damping"]),
             lambda s: _captum_naive_if(s, "pairwise"), last_layer=True,
             note="captum forms the summed-loss Hessian: hessian_reg = n * damping", max_n=2_000,
             skip_reason=naive_skip),
        Pair("dattri", "IFAttributorExplicit (output layer)", "if-exact (output layer)", "score",
             lambda s: _ifkit("if-exact", "score", s, params=list(HEAD), damping=s.hp["damping"]),
             lambda s: _dattri_if(s, "score", "explicit"), last_layer=True, max_n=2_000, skip_reason=explicit_skip),
        # inverse-curvature methods on the full network: score mode (one solve; n_val solves would take dattri
        # n_val times as long, as it vmaps one solver run per query)
        Pair("dattri", "IFAttributorCG", "if-cg (Hessian)", "score",
             lambda s: _ifkit("if-cg", "score", s, damping=s.hp["damping_hessian"], iters=int(s.hp["cg_iters"]),
                              tol=0.0, **hess),
             lambda s: _dattri_if(s, "score", "cg")),
        Pair("dattri", "IFAttributorLiSSA", "if-lissa (Hessian)", "score", _ifkit_lissa,
             lambda s: _dattri_if(s, "score", "lissa")),
        Pair("pydvl", "CgInfluence", "if-cg (Hessian)", "score",
             lambda s: _ifkit("if-cg", "score", s, damping=s.hp["damping_hessian"], iters=int(s.hp["cg_iters"]),
                              tol=0.0, **hess),
             lambda s: _pydvl_if(s, "cg")),
        Pair("pydvl", "LissaInfluence", "if-lissa (Hessian)", "score", _ifkit_lissa, lambda s: _pydvl_if(s, "lissa")),
        Pair("dattri", "IFAttributorDataInf", "datainf", "score",
             lambda s: _ifkit("datainf", "score", s, damping=s.hp["damping"]),
             lambda s: _dattri_if(s, "score", "datainf")),
        Pair("dattri", "IFAttributorEKFAC", "ekfac", "score",
             lambda s: _ifkit("ekfac", "score", s, damping=s.hp["damping"]),
             lambda s: _dattri_ekfac(s, "score"),
             note="ifkit fits the Gauss-Newton (true Fisher), dattri the empirical Fisher; and see the patched rows"),
        Pair("dattri", "IFAttributorEKFAC", "ekfac (fisher=empirical)", "score",
             _ifkit_ekfac_empirical, lambda s: _dattri_ekfac(s, "score"),
             note="same curvature as dattri (ifkit.curvature.kfac.fit(fisher='empirical'))", max_n=2_000,
             skip_reason="diagnostic row, measured at 2,000 points only", diagnostic=True),
        Pair("dattri", "IFAttributorEKFAC (patched: eigenbasis + bias layout)", "ekfac (fisher=empirical)", "score",
             _ifkit_ekfac_empirical, lambda s: _dattri_ekfac(s, "score", patched=True),
             note="dattri with the two fixes of _patch_dattri_ekfac", max_n=2_000,
             skip_reason="diagnostic row, measured at 2,000 points only", diagnostic=True),
        Pair("dattri", "IFAttributorEKFAC (patched: eigenbasis + bias layout)", "ekfac", "score",
             lambda s: _ifkit("ekfac", "score", s, damping=s.hp["damping"]),
             lambda s: _dattri_ekfac(s, "score", patched=True),
             note="what remains is the curvature: empirical Fisher (dattri) vs Gauss-Newton (ifkit)", max_n=2_000,
             skip_reason="diagnostic row, measured at 2,000 points only", diagnostic=True),
    ]
    return out


def pair_by_key(key: str) -> Pair:
    for p in pairs():
        if p.key == key:
            return p
    raise KeyError(key)


# ---------------------------------------------------------------------------------------------------------------
# Workers: one fresh interpreter per measurement (python compare_libraries.py --worker JSON)
# ---------------------------------------------------------------------------------------------------------------


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _n_params(s: Setup, pair: Pair) -> int:
    named = dict(s.model.named_parameters())
    return sum(named[k].numel() for k in (HEAD if pair.last_layer else named))


def _worker(job: dict[str, Any]) -> dict[str, Any]:
    pair = pair_by_key(job["pair"])
    importlib.import_module(pair.library)  # both sides' processes import the library: the same baseline
    s = load_setup(job["setup"])
    sides = dict(ifkit=pair.run_ifkit, library=pair.run_library)
    if job["kind"] == "memory":
        base = _peak_mb()
        sides[job["side"]](s)
        return dict(base_mb=base, peak_mb=_peak_mb())
    load_before = os.getloadavg()[0]
    times: dict[str, list[float]] = dict(ifkit=[], library=[])
    outs: dict[str, Tensor] = {}
    # One untimed warm-up call per side: first calls pay one-off costs (lazy imports, vmap tracing, the
    # allocator's first pages) that measured ~1 s for ifkit's 30-ms graddot at 2,000 points. The library goes
    # first, so the peak RSS after its warm-up is its own.
    sides["library"](s)
    library_peak = _peak_mb()
    sides["ifkit"](s)
    for r in range(job["repeats"]):
        for side in ("library", "ifkit") if r % 2 == 0 else ("ifkit", "library"):  # alternate who goes first
            t0 = time.perf_counter()
            outs[side] = sides[side](s)
            times[side].append(time.perf_counter() - t0)
    if outs["ifkit"].shape != outs["library"].shape:
        raise RuntimeError(f"shapes differ: ifkit {tuple(outs['ifkit'].shape)}, library {tuple(outs['library'].shape)}")
    pearson, spearman = agreement(outs["ifkit"], outs["library"])
    extra = ""
    if "lissa" in pair.ifkit_method:  # the noise floor of stochastic LiSSA: ifkit against itself, another seed
        other = _ifkit_lissa(s, seed=1)
        extra = f"ifkit seed 0 vs seed 1: pearson {agreement(outs['ifkit'], other)[0]:.4f}"
    scale = outs["library"].abs().max().item() / max(outs["ifkit"].abs().max().item(), 1e-300)
    return dict(times=times, pearson=pearson, spearman=spearman, n_params=_n_params(s, pair), extra=extra,
                max_abs_ratio=scale, peak_mb=library_peak, load=(load_before, os.getloadavg()[0]))


def _run_isolated(job: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Run one job in a fresh interpreter; {'error': ...} if it fails or times out."""
    try:
        out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True,
                             text=True, timeout=timeout_s, check=False,
                             env={**os.environ, "TQDM_DISABLE": "1"})  # the libraries' progress bars
    except subprocess.TimeoutExpired:
        return dict(error=f"timeout after {timeout_s:.0f} s")
    if out.returncode != 0:
        return dict(error=(out.stderr.strip().splitlines() or [f"exit code {out.returncode}"])[-1][:300])
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------------------


def installed(library: str) -> bool:
    return importlib.util.find_spec(library) is not None


def _row(pair: Pair, n: int, fast: bool, timed: dict[str, Any], mem: dict[str, dict[str, Any]],
         hp: dict[str, float]) -> dict[str, Any]:
    row: dict[str, Any] = dict(library=pair.library, method=pair.method, ifkit_method=pair.ifkit_method,
                               mode=pair.mode, n_train=n, fast=fast)
    notes = [pair.note] if pair.note else []
    if "Hessian" in pair.ifkit_method:
        notes.append(f"damping {hp['damping_hessian']:g} (Hessian eigenvalues {hp['h_min']:.3g}..{hp['h_max']:.3g})")
    if "error" in timed:
        notes.append(f"error: {timed['error']}")
    else:
        ts = timed["times"]
        row.update(seconds=statistics.median(ts["library"]), ifkit_seconds=statistics.median(ts["ifkit"]),
                   ratio=within_repeat_ratio(ts["library"], ts["ifkit"]), pearson=timed["pearson"],
                   spearman=timed["spearman"], n_params=timed["n_params"])
        if timed.get("extra"):
            notes.append(timed["extra"])
        if not 0.5 < timed["max_abs_ratio"] < 2:  # a scale mismatch the correlations cannot see
            notes.append(f"max|library| / max|ifkit| = {timed['max_abs_ratio']:.3g}")
        notes.append("machine load {:.1f} -> {:.1f}".format(*timed["load"]))
    for side, col in (("library", "peak_mb"), ("ifkit", "ifkit_peak_mb")):
        if side not in mem or "error" in mem[side]:
            continue  # a diagnostic row (no ifkit memory process), or the error is noted above / below
        row[col] = mem[side]["peak_mb"]
    if "error" in mem.get("ifkit", {}):
        notes.append(f"ifkit memory run: {mem['ifkit']['error']}")
    if pair.diagnostic:
        notes.append("diagnostic: one repeat")
    row["note"] = "; ".join(notes)
    return row


def _tagged(rows: list[dict[str, Any]], workload: str) -> list[dict[str, Any]]:
    """Rows of a workload other than "bench" say so first in their note ("workload fmnist4k; ...")."""
    if workload == "bench":
        return rows
    tag = f"workload {workload}"
    return [r if str(r.get("note") or "").startswith(tag) else
            {**r, "note": f"{tag}; {r['note']}" if r.get("note") else tag} for r in rows]


def _other_workloads(out: Path, workload: str) -> list[dict[str, Any]]:
    """The rows of ``out`` measured on other workloads (kept when this one is rewritten)."""
    import pandas as pd

    if not out.is_file():
        return []
    old = pd.read_csv(out)
    note = old["note"].fillna("").astype(str)
    mine = note.str.startswith(f"workload {workload}") if workload != "bench" else ~note.str.startswith("workload ")
    return old[~mine].to_dict("records")


def _write(rows: list[dict[str, Any]], out: Path) -> None:
    import pandas as pd

    tmp = out.with_suffix(".tmp.csv")
    pd.DataFrame(rows, columns=COLUMNS).to_csv(tmp, index=False)
    tmp.replace(out)  # atomic: a reader never sees a half-written file


def main(out: str | Path = "results/bench_compare.csv", fast: bool = False, sizes: Sequence[int] | None = None,
         libraries: Sequence[str] = LIBRARIES, only: Sequence[str] | None = None, repeats: int | None = None,
         epochs: int = EPOCHS, progress: bool = True, workload: str = "bench") -> int:
    """Measure every pair at every size and write the tidy CSV ``out``; returns 0, or 1 if a measurement failed.

    ``only`` keeps the pairs whose key contains any of its strings; a library that is not installed gives one
    row per pair saying so (nothing is measured). ``workload``: a key of WORKLOADS; an existing ``out`` keeps
    its rows of the other workloads (so one CSV holds both).
    """
    cfg = config(fast, workload)
    sizes, repeats = tuple(sizes or cfg["sizes"]), repeats or cfg["repeats"]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    todo = [p for p in pairs() if p.library in libraries and (not only or any(o in p.key for o in only))]
    rows: list[dict[str, Any]] = []
    kept = _other_workloads(out, workload)
    failed = 0
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ifkit-compare-") as tmp:
        for n in sizes:
            live = [p for p in todo if installed(p.library)]
            rows += [dict(library=p.library, method=p.method, ifkit_method=p.ifkit_method, mode=p.mode, n_train=n,
                          fast=fast, note=f"{p.library} is not installed") for p in todo if p not in live]
            if not live:
                continue
            setup = prepare(n, Path(tmp), n_val=cfg["n_val"], hidden=cfg["hidden"], epochs=epochs, progress=progress,
                            data=cfg["data"])
            hp = torch.load(setup, weights_only=False)["hp"]
            for pair in live:
                if pair.max_n is not None and n > pair.max_n:
                    rows.append(dict(library=pair.library, method=pair.method, ifkit_method=pair.ifkit_method,
                                     mode=pair.mode, n_train=n, fast=fast,
                                     note=f"not measured above {pair.max_n:,} points: {pair.skip_reason}"))
                    _write(kept + _tagged(rows, workload), out)
                    continue
                t0 = time.perf_counter()
                job = dict(pair=pair.key, setup=str(setup), repeats=1 if pair.diagnostic else repeats)
                timed = _run_isolated(dict(job, kind="time"), cfg["timeout_s"])
                mem = dict(library=timed)  # the timing process measured the library's peak (it ran first)
                if not pair.diagnostic:
                    mem["ifkit"] = _run_isolated(dict(job, kind="memory", side="ifkit"), cfg["timeout_s"])
                failed += any("error" in r for r in (timed, *mem.values()))
                rows.append(_row(pair, n, fast, timed, mem, hp))
                _write(kept + _tagged(rows, workload), out)
                if progress:
                    r = rows[-1]
                    print(f"n={n:>5,} {pair.key:<95} ratio {r.get('ratio', float('nan')):7.2f} "
                          f"pearson {r.get('pearson', float('nan')):.4f} ({time.perf_counter() - t0:.0f} s)"
                          + (f"  [{r['note']}]" if r["note"] else ""), flush=True)
    _write(kept + _tagged(rows, workload), out)
    if progress:
        print(f"wrote {out} ({len(rows)} rows) in {time.perf_counter() - t_start:.0f} s")
    return int(failed > 0)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(_worker(json.loads(sys.argv[2]))))
        sys.exit(0)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fast", action="store_true", help="n_train = 500 only (a quick check)")
    ap.add_argument("--out", default="results/bench_compare.csv")
    ap.add_argument("--sizes", type=int, nargs="+", help="override the n_train values")
    ap.add_argument("--only", nargs="+", help="keep the pairs whose key contains one of these strings")
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--workload", choices=tuple(WORKLOADS), default="bench",
                    help="bench: ifkit bench's 784-128-10 MLP on synthetic data; fmnist4k: Fashion-MNIST 4,000 / 500, "
                         "784-64-10 MLP")
    args = ap.parse_args()
    sys.exit(main(args.out, fast=args.fast, sizes=args.sizes, only=args.only, repeats=args.repeats,
                  workload=args.workload))
