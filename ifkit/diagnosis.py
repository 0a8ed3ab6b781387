"""``ifkit.diagnose``: the trust report to read before cleaning a dataset with VM / FVM scores.

VM/FVM score a training point z at a validation minimum theta~ reached by fine-tuning a copy of the model on the
clean validation set S_val (docs/PAPER.md, Eq. 10 and 13):

    score(z) = g~_z^T (H~_val + damping I)^-1 g~_z            higher = more likely mislabelled

The derivation assumes three things this module MEASURES rather than guesses:

1. theta~ is a validation minimum (the first-order term g~_val^T d theta vanishes): the mean validation gradient
   and loss must fall during the fine-tuning;
2. the validation risk is flat around theta~ (the paper's Theorem 3.2, docs/PAPER.md, Eq. 8): one-step SAM
   sharpness and the top Gauss-Newton eigenvalue on S_val, judged as ratios theta~ / theta (scale-free);
3. the model generalises: ``acc_gap`` = train accuracy (GIVEN labels) - validation accuracy at theta, and
   ``fitted_share`` = share of training points with loss below ``FIT_RATIO`` x the mean validation loss; on
   Fashion-MNIST memorisation cost VM 7 AUC points against the early-stopped checkpoint.

And two things about the scores themselves, on a HOLDOUT slice of S_val that a second fine-tuning (theta~_h)
did not see: its accuracy there, and how well the loss at theta~_h tells each held-out point's true label from a
wrong one (``heldout_auc_hard``: the most likely wrong label) -- the detection AUC measured where the truth is
known. And how much the scores add over the cheapest controls (Spearman with the training loss and gradient norm
at theta~; the top-k overlap with the loss, a note when they flag different points).

The memorisation cut points were measured on the detection experiment (memorising model vs early-stopped
checkpoint; acc_gap +0.29 / -0.16 on digits, +0.45 / -0.14 on Fashion-MNIST) and checked on its four
Fashion-MNIST settings x 3 seeds: the memorising model was never trusted (12/12), the best-val checkpoint in 11/12.
The earlier absolute limits (top eigenvalue 8, SAM sharpness 0.03) said "caution" on every small CNN
(eigenvalues 37-119) and 8x8 MLP (8.5-9) whatever their AUC; the ratios and the held-out AUC replace them, and
tests/test_diagnose_trust.py checks that, within each setting, trusted runs detect at least as well as cautioned ones.
"""

from __future__ import annotations

import dataclasses
import html
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from scipy.stats import spearmanr
from torch import Tensor, nn

from . import api
from .core.func import chunks, make_problem
from .core.grads import GradEngine, stream_grads
from .core.options import Options
from .methods.flat import FlatPoint, flat_point
from .metrics import auc
from .optim.flat_finetune import flat_finetune
from .optim.sam import sam_sharpness
from .optim.train import evaluate
from .sharpness import top_hessian_eigenvalue

# --- thresholds (module docstring: how they were measured) -----------------------------------------------------
# acc_gap above GAP_CAUTION: the model fits training labels beyond what it generalises (memorising +0.29 / +0.45,
# early-stopped -0.16 / -0.14; a model fit on clean data sits near 0 to +0.05).
GAP_CAUTION = 0.15  # 0.10 before: at +0.10 (digits MLP, 30% asymmetric) the best-val checkpoint lost 0.016 AUC
# acc_gap above GAP_DISTRUST: memorising so much that VM at theta~ lost 7 AUC points to the early-stopped
# checkpoint (Fashion, +0.45); at +0.29 (digits) it lost nothing, hence caution below this line.
GAP_DISTRUST = 0.35
FIT_RATIO = 0.1  # fitted_share: training loss below a tenth of the mean validation loss
# theta~ must be flatter than theta on the same S_val: each measure at theta~ over the same at theta, a ratio that
# does not depend on the model's scale (the fixed top-eigenvalue limit of 8 it replaces said "caution" on every
# small CNN, eigenvalues 37-119, whatever its AUC). On the runs of tests/test_diagnose_trust.py (digits MLP and
# CNN, Fashion MLP; short vs long training) and the early-stopped digits MLPs of notebook 04 and the detection
# experiment, the top-eigenvalue ratio was 0.26-0.85 for every model that had learnt its task and 0.96-21 for
# every briefly trained one (VM AUC 0.01-0.06 below the same setting trained longer); SAM sharpness 0.04-0.28 vs
# 0.30-2.2. The cuts sit between (judgement, set on those runs; the margins are thin: 0.85 vs 0.96).
SHARP_RATIO_MAX = 0.5  # one-step SAM sharpness (radius rho) theta~ / theta
EIG_RATIO_MAX = 0.9  # top GGN eigenvalue of R_val, theta~ / theta
SHARPNESS_MAX, TOP_EIG_MAX = 0.03, 8.0  # the superseded absolute limits, for code that imports them (unused)
# Share of S_val held out of a second fine-tuning from theta, so that theta~'s accuracy is measured on points it
# never saw (its accuracy on the S_val it was fine-tuned on flatters it).
HOLDOUT = 0.2
# heldout_auc_hard: on the held-out slice, each point with its true label against the same point with the wrong
# label theta~_h finds most likely; the AUC of theta~_h's loss separating the two. The detection AUC of the loss at
# theta~ measured where the truth is known, on points it did not see, with the hardest wrong labels (an
# estimate: training points were also seen by theta). Below this: many clean points look mislabelled to theta~.
AUC_MIN = 0.9
# Top-k overlap of the ranking score and the training loss at theta~ (k = the points theta~ disagrees with):
# below this the cheap score and the curvature flag different points (a note: which to prefer, notebook 04).
OVERLAP_MIN = 0.8
# ||g_val(theta~)|| / ||g_val(theta)||: VM's second-order derivation needs g~_val ~ 0. Measured 0.02-0.2 with the
# default 100 steps; above 0.5 the fine-tuning has not reached a validation minimum.
GRAD_RATIO_MAX = 0.5
# Spearman(score, training loss at theta~) above this: the scores rank the points like that loss (a note only:
# it was 0.96-0.99 in every measured run, where VM detected noise as well as the loss at theta~ did).
CONTROL_SPEARMAN = 0.95
# Validation accuracy below CHANCE_FACTOR / n_classes: the model barely knows the classes (a judgement).
CHANCE_FACTOR = 2.0

LEVELS = ("trust", "caution", "do not trust")  # worst reason decides; "note" reasons do not change the verdict


@dataclass
class Diagnosis:
    """What ``diagnose`` measured. Numbers at theta (the given model) and theta~ (its fine-tuned copy).

    Attributes:
        method: "vm" or "fvm".
        verdict: one of ``LEVELS``: "trust", "caution", "do not trust".
        reasons: sentences, worst first; each carries its level in ``levels``.
        levels: "do not trust" / "caution" / "note" / "trust", one per reason.
        scores: (n_train,) the method's scores, equal to ``ifkit.score(method, model, train, val, **options)``.
        loss_tilde, grad_norm_tilde, loss_theta: (n_train,) the controls: per-sample training loss and gradient
            norm at theta~, training loss at theta.
        model_tilde: the fine-tuned copy (theta~), e.g. to score it with other methods (``flat_steps=0``).
        point: theta~ as a value (``ifkit.flat_point``): ``ifkit.score(method, ..., at=d.point)`` scores there
            without fine-tuning again, with the validation curvature these scores used.
        seconds: wall time of the call.
    """

    method: str
    verdict: str
    reasons: list[str]
    levels: list[str]
    train_acc: float
    train_loss: float
    val_acc: float
    val_loss: float
    val_acc_tilde: float
    val_loss_tilde: float
    acc_gap: float
    fitted_share: float
    rho: float
    sam_sharpness: float
    sam_sharpness_tilde: float
    top_eig: float
    top_eig_tilde: float
    curvature: str
    val_grad_norm: float
    val_grad_norm_tilde: float
    rel_move: float
    spearman_loss_tilde: float
    spearman_grad_norm_tilde: float
    spearman_loss: float
    sharp_ratio: float
    eig_ratio: float
    val_acc_heldout: float
    val_acc_heldout_theta: float
    n_heldout: int
    disagree_share: float
    heldout_auc: float
    heldout_auc_hard: float
    topk_overlap: float
    seconds: float
    scores: Tensor = field(repr=False)
    loss_tilde: Tensor = field(repr=False)
    grad_norm_tilde: Tensor = field(repr=False)
    loss_theta: Tensor = field(repr=False)
    model_tilde: nn.Module = field(repr=False)
    point: FlatPoint = field(repr=False)

    def as_dict(self) -> dict[str, Any]:
        """The numbers, verdict and reasons (no tensors, no model): one row of a results table."""
        skip = {"scores", "loss_tilde", "grad_norm_tilde", "loss_theta", "model_tilde", "point"}
        return {k: v for k, v in self.__dict__.items() if k not in skip}

    def rows(self) -> list[tuple[str, str, str]]:
        """(quantity, at theta, at theta~) rows of the report table."""
        f = "{:.3f}".format
        return [
            ("validation accuracy", f(self.val_acc), f(self.val_acc_tilde)),
            (f"  on {self.n_heldout} held-out S_val points (theta~ fine-tuned without them)",
             f(self.val_acc_heldout_theta), f(self.val_acc_heldout)),
            ("validation loss", f(self.val_loss), f(self.val_loss_tilde)),
            ("||mean validation gradient||", f(self.val_grad_norm), f(self.val_grad_norm_tilde)),
            (f"SAM sharpness on S_val (rho={self.rho:g})", f(self.sam_sharpness), f(self.sam_sharpness_tilde)),
            (f"top {self.curvature.upper()} eigenvalue on S_val", f"{self.top_eig:.2f}", f"{self.top_eig_tilde:.2f}"),
            ("theta~ / theta: SAM sharpness, top eigenvalue", "", f"{self.sharp_ratio:.2f}, {self.eig_ratio:.2f}"),
            ("share of training labels theta~ disagrees with", "", f(self.disagree_share)),
            ("held-out AUC of the loss, random / hardest wrong labels", "",
             f"{self.heldout_auc:.3f} / {self.heldout_auc_hard:.3f}"),
            ("training accuracy / loss", f"{self.train_acc:.3f} / {self.train_loss:.3f}", ""),
            ("train acc - val acc", f"{self.acc_gap:+.3f}", ""),
            (f"share fitted below {FIT_RATIO:g} x val loss", f(self.fitted_share), ""),
            ("||theta~ - theta|| / ||theta||", "", f"{self.rel_move:.4f}"),
            (f"Spearman({self.method}, training loss)", f(self.spearman_loss), f(self.spearman_loss_tilde)),
            (f"Spearman({self.method}, gradient norm)", "", f(self.spearman_grad_norm_tilde)),
            (f"top-k overlap({self.method}, training loss)", "", f(self.topk_overlap)),
        ]

    def __str__(self) -> str:
        rows = [("", "theta", "theta~"), *self.rows()]
        w = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [f"ifkit.diagnose({self.method}): {self.verdict.upper()}   ({self.seconds:.1f} s)"]
        lines += [f"  {a:<{w[0]}}  {b:>{w[1]}}  {c:>{w[2]}}" for a, b, c in rows]
        lines += [f"  - [{lv}] {r}" for lv, r in zip(self.levels, self.reasons)]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        e = html.escape
        colour = {"trust": "#1a7f37", "caution": "#9a6700", "do not trust": "#cf222e"}[self.verdict]
        body = "".join(f"<tr><td style='text-align:left'>{e(a)}</td><td>{e(b)}</td><td>{e(c)}</td></tr>"
                       for a, b, c in self.rows())
        items = "".join(f"<li><b>{e(lv)}</b>: {e(r)}</li>" for lv, r in zip(self.levels, self.reasons))
        return (f"<div><p><b>ifkit.diagnose({e(self.method)})</b>: <b style='color:{colour}'>{e(self.verdict)}</b>"
                f" ({self.seconds:.1f} s)</p><table><tr><th></th><th>theta</th><th>theta~</th></tr>{body}</table>"
                f"<ul>{items}</ul></div>")


def _per_sample(model: nn.Module, X: Tensor, y: Tensor, opt: Options, with_grads: bool):
    """(n,) training losses and, with_grads, (n,) per-sample gradient norms (streamed in chunks)."""
    prob = make_problem(model, opt.params, opt.loss)
    with torch.no_grad():
        losses = torch.cat([prob.losses(prob.theta, X[r], y[r]) for r in chunks(len(X), opt.chunk_size)])
    if not with_grads:
        return losses, None
    norms = torch.cat([G.norm(dim=1) for _, G in stream_grads(prob, X, y, opt.chunk_size)])  # (n,)
    return losses, norms


def _flat(model: nn.Module, names: list[str]) -> Tensor:
    return torch.cat([model.get_parameter(n).detach().flatten() for n in names])  # (p,)


def _rank_corr(a: Tensor, b: Tensor) -> float:
    r = spearmanr(a.detach().cpu().double().numpy(), b.detach().cpu().double().numpy())[0]
    return float(r)


def diagnose(
    model: nn.Module,
    train,
    val,
    method: str = "fvm",
    *,
    at: FlatPoint | None = None,
    curvature_sharpness: str = "ggn",
    eig_iters: int = 100,
    **options: Any,
) -> Diagnosis:
    """Measure whether VM / FVM scores of ``model`` can be trusted for cleaning ``train``; return a Diagnosis.

    One call fine-tunes a copy of the model on S_val to theta~ (exactly as ``ifkit.score(method, ...)`` does),
    scores every training point there, and measures at theta and theta~: accuracy and loss, the one-step SAM
    sharpness sam_sharpness(model, val, rho) and the top eigenvalue of the validation Gauss-Newton (or Hessian),
    ||theta~ - theta|| / ||theta||, memorisation (train acc - val acc; the share of training points fitted far
    below the validation loss) and the Spearman correlations of the scores with the controls (training loss at
    theta~ and theta, per-sample gradient norm at theta~). Thresholds: module constants, measured as the module
    docstring says. Cost: the method's own cost plus two power iterations on S_val and one gradient pass
    (1.6-2.3 s on the 2,000-point Fashion-MNIST detection setting, one core).

    Args:
        model: the trained classifier at theta; never modified.
        train: (X, y) training set with possibly noisy labels: tensors, numpy arrays, a Dataset or a DataLoader,
            as for ``ifkit.score``.
        val: (X_val, y_val) the clean validation set S_val, in any of the same forms.
        method: "fvm" (FVMOptions: LPF-SGD) or "vm" (VMOptions: plain SGD).
        at: theta~ already fine-tuned for this method (``ifkit.flat_point``): report there, without fine-tuning
            again (theta is then ``at.start``, where that fine-tuning started).
        curvature_sharpness: "ggn" (PSD, the default: its top eigenvalue is the sharpest direction even away
            from a minimum) or "hessian", for the top eigenvalue on S_val.
        eig_iters: power-iteration budget for the top eigenvalue.
        **options: any ``ifkit.score`` option (damping, flat_steps, flat_lr, rho, sigma, seed, params, ...);
            ``rho`` (default 0.05) is also the radius of the SAM sharpness.

    Returns:
        ``Diagnosis``: the numbers, ``verdict``, ``reasons``, the scores and controls; print it or show it in a
        notebook for a table, ``as_dict()`` for a row.

    Raises:
        ValueError / TypeError: a method other than "vm"/"fvm", unknown options, or inputs ``ifkit.score`` refuses
        (NaN data, labels out of range, ...), before any work.
    """
    t0 = time.perf_counter()
    if method not in ("vm", "fvm"):
        raise ValueError(f"diagnose reports on the flat-validation-minimum scores: method must be 'vm' or 'fvm', "
                         f"got {method!r} (for other methods call ifkit.score directly)")
    if curvature_sharpness not in ("ggn", "hessian"):
        raise ValueError(f"curvature_sharpness must be 'ggn' or 'hessian', got {curvature_sharpness!r}")
    if options.get("candidates") is not None:
        raise ValueError("diagnose reports on the training points themselves: drop candidates= (score candidate "
                         "labels with ifkit.score(method, model, train, val, at=d.point, candidates=...))")
    if at is not None:
        options = {**options, "at": at}  # checked by the api: the same method, no fine-tuning options beside it
    eng = api.prepare(model, train, val, api.resolve(method, options), "val")  # every check of ifkit.score
    return report(eng, eng.opt.at or flat_point(eng), method, curvature_sharpness, eig_iters, t0)


def report(eng: GradEngine, point: FlatPoint, method: str, curvature_sharpness: str = "ggn", eig_iters: int = 100,
           t0: float | None = None) -> Diagnosis:
    """The trust report of ``diagnose`` for an engine ``api.prepare`` made (inputs checked, options typed) at
    theta~ = ``point``: no input check and no fine-tuning here (``ifkit.clean`` calls it with its own point)."""
    t0 = time.perf_counter() if t0 is None else t0
    opt = eng.opt  # typed (methods/flat.py FlatOptions), chunk_size fitted to the memory budget
    X, y, Xv, yv = eng.X, eng.y, eng.Xv, eng.yv  # stacked, on the model's device and dtype
    model, tilde = point.start, point.model  # theta (an eval() copy if Dropout/BatchNorm were training), theta~
    rho = float(point.options.rho)
    loss = opt.loss
    scores = api.run(method, GradEngine(eng.model, X, y, Xv, yv, dataclasses.replace(opt, at=point)))

    train_loss, train_acc = evaluate(model, X, y, loss=loss)
    val_loss, val_acc = evaluate(model, Xv, yv, loss=loss)
    val_loss_t, val_acc_t = evaluate(tilde, Xv, yv, loss=loss)
    first, last = point.trajectory.iloc[0], point.trajectory.iloc[-1]
    sam0, sam1 = _sam(model, (Xv, yv), rho, opt), _sam(tilde, (Xv, yv), rho, opt)
    eig = dict(params=opt.params, loss=loss, iters=eig_iters, tol=1e-4, seed=opt.seed,
               curvature=curvature_sharpness)
    e0 = top_hessian_eigenvalue(model, (Xv, yv), **eig)
    e1 = top_hessian_eigenvalue(tilde, (Xv, yv), **eig)

    names = make_problem(model, opt.params, loss).names
    theta, theta_t = _flat(model, names), _flat(tilde, names)
    rel_move = float((theta_t - theta).norm() / theta.norm().clamp_min(1e-30))

    loss_theta, _ = _per_sample(model, X, y, opt, with_grads=False)
    loss_tilde, gnorm_tilde = _per_sample(tilde, X, y, opt, with_grads=True)
    fitted = float((loss_theta < FIT_RATIO * val_loss).double().mean())
    with torch.no_grad():
        n_classes = int(model(X[:1]).shape[-1])
        disagree = tilde(X).argmax(-1) != y  # (n,) the flags ifkit.clean proposes by default
    held = _heldout_accuracy(point, opt)
    share = float(disagree.double().mean())
    k = int(disagree.sum())

    d = Diagnosis(
        method=method, verdict="trust", reasons=[], levels=[],
        train_acc=train_acc, train_loss=train_loss, val_acc=val_acc, val_loss=val_loss,
        val_acc_tilde=val_acc_t, val_loss_tilde=val_loss_t, acc_gap=train_acc - val_acc, fitted_share=fitted,
        rho=rho, sam_sharpness=sam0["sharpness"], sam_sharpness_tilde=sam1["sharpness"], top_eig=e0,
        top_eig_tilde=e1, curvature=curvature_sharpness, val_grad_norm=float(first["grad_norm"]),
        val_grad_norm_tilde=float(last["grad_norm"]), rel_move=rel_move,
        spearman_loss_tilde=_rank_corr(scores, loss_tilde), spearman_grad_norm_tilde=_rank_corr(scores, gnorm_tilde),
        spearman_loss=_rank_corr(scores, loss_theta), sharp_ratio=_ratio(sam1["sharpness"], sam0["sharpness"]),
        eig_ratio=_ratio(e1, e0), val_acc_heldout=held[1], val_acc_heldout_theta=held[0], n_heldout=held[2],
        disagree_share=share, heldout_auc=held[3], heldout_auc_hard=held[4],
        topk_overlap=topk_overlap(scores, loss_tilde, k), seconds=0.0, scores=scores, loss_tilde=loss_tilde,
        grad_norm_tilde=gnorm_tilde, loss_theta=loss_theta, model_tilde=tilde, point=point,
    )
    d.levels, d.reasons = _judge(d, n_classes)
    d.verdict = max((lv for lv in d.levels if lv in LEVELS), key=LEVELS.index, default="trust")
    d.seconds = time.perf_counter() - t0
    return d


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.inf


def topk_overlap(a: Tensor, b: Tensor, k: int) -> float:
    """|top-k(a) & top-k(b)| / k: the share of the k points flagged by one score that the other flags too."""
    if k <= 0:
        return math.nan
    return len(set(torch.topk(a, k).indices.tolist()) & set(torch.topk(b, k).indices.tolist())) / k


def _heldout_accuracy(point: FlatPoint, opt: Options) -> tuple[float, float, int, float, float]:
    """(accuracy at theta, at theta~_h, n, AUC random, AUC hardest) on a random HOLDOUT share of S_val, theta~_h
    fine-tuned as theta~ was but on the rest: how theta~ does on points it did not see. The AUCs: its loss on
    each held-out point's wrong label (random, or its most likely wrong class) against the true one (AUC_MIN).
    Cost: one more fine-tuning on 80% of S_val."""
    Xv, yv = point.val
    n = len(yv)
    m = int(round(HOLDOUT * n))
    if m < 2 or n - m < 1 or opt.loss != "cross_entropy" or yv.dim() != 1:
        return math.nan, math.nan, 0, math.nan, math.nan
    gen = torch.Generator().manual_seed(int(opt.seed or 0))
    perm = torch.randperm(n, generator=gen).to(yv.device)  # (n,)
    out, keep = perm[:m], perm[m:]
    kw = {**point.options.finetune_kwargs(), "progress": False}
    tuned = flat_finetune(point.start, (Xv[keep], yv[keep]), **kw).model
    acc = [evaluate(net, Xv[out], yv[out], loss=opt.loss)[1] for net in (point.start, tuned)]
    with torch.no_grad():
        nll = -torch.log_softmax(tuned(Xv[out]).double(), dim=1)  # (m, C) loss of every label
    y = yv[out]
    C = nll.shape[1]
    rand = (y + torch.randint(1, C, (m,), generator=gen).to(y.device)) % C  # (m,) a uniform wrong label
    hard = nll.scatter(1, y[:, None], math.inf).argmin(1)  # (m,) the most likely wrong label
    pick = lambda c: nll.gather(1, c[:, None]).squeeze(1)  # noqa: E731
    flags = torch.cat([torch.ones(m, dtype=torch.bool), torch.zeros(m, dtype=torch.bool)])
    aucs = [auc(torch.cat([pick(c), pick(y)]), flags) for c in (rand, hard)]
    return acc[0], acc[1], m, aucs[0], aucs[1]


def _sam(model: nn.Module, data, rho: float, opt: Options) -> dict[str, float]:
    return sam_sharpness(model, data, rho, loss=opt.loss, params=opt.params)


def _judge(d: Diagnosis, n_classes: int) -> tuple[list[str], list[str]]:
    """(levels, reasons), worst first. Each rule: a measured number against a module constant."""
    out: list[tuple[str, str]] = []
    chance = 1.0 / n_classes
    if d.val_acc < CHANCE_FACTOR * chance:
        out.append(("do not trust", f"the model barely beats chance on S_val (val acc {d.val_acc:.2f}, chance "
                                    f"{chance:.2f}): its gradients say little about which labels are wrong; train "
                                    "a better model first"))
    if d.acc_gap > GAP_CAUTION:
        level = "do not trust" if d.acc_gap > GAP_DISTRUST else "caution"
        out.append((level, f"the model memorises the training set (train acc {d.train_acc:.2f} vs val "
                           f"{d.val_acc:.2f}; {d.fitted_share:.0%} of training points fitted below {FIT_RATIO:g} x "
                           "the validation loss): compute VM at an early-stopped checkpoint (ifkit.clean(..., "
                           "checkpoints=[...]) picks the one of lowest S_val loss)"))
    ratio = d.val_grad_norm_tilde / max(d.val_grad_norm, 1e-30)
    if ratio > GRAD_RATIO_MAX or d.val_loss_tilde >= d.val_loss:
        out.append(("caution", f"theta~ is not a validation minimum (||mean validation gradient|| "
                               f"{d.val_grad_norm:.3g} -> {d.val_grad_norm_tilde:.3g}, validation loss "
                               f"{d.val_loss:.3f} -> {d.val_loss_tilde:.3f}): VM's second-order score assumes "
                               "g~_val ~ 0; raise flat_steps or flat_lr"))
    if d.sharp_ratio > SHARP_RATIO_MAX or d.eig_ratio > EIG_RATIO_MAX:
        out.append(("caution", f"fine-tuning on S_val barely flattened it (theta~ / theta: SAM sharpness "
                               f"{d.sharp_ratio:.2f}, top {d.curvature.upper()} eigenvalue {d.eig_ratio:.2f}; limits "
                               f"{SHARP_RATIO_MAX:g}, {EIG_RATIO_MAX:g}): theta~ is not the flat minimum near theta "
                               "that VM assumes, as for a model that has not learnt the task yet; train longer, or "
                               "rank by score='loss' (no curvature)"))
    if d.heldout_auc_hard < AUC_MIN:
        out.append(("caution", f"on {d.n_heldout} held-out S_val points, the loss at theta~ tells their true "
                               f"label from the most likely wrong one with AUC {d.heldout_auc_hard:.2f} only (below {AUC_MIN:g}; "
                               f"random wrong labels {d.heldout_auc:.2f}, accuracy {d.val_acc_heldout:.2f}): many "
                               "clean points will look mislabelled; score a better model (checkpoints=, a larger "
                               "S_val) and check the flags by hand"))
    if d.val_acc_heldout < d.val_acc_heldout_theta:
        out.append(("note", f"fine-tuning on S_val lowered the accuracy on held-out S_val points "
                            f"({d.val_acc_heldout_theta:.3f} -> {d.val_acc_heldout:.3f}): theta~ fits S_val more than "
                            "it generalises; fewer flat_steps"))
    if d.topk_overlap < OVERLAP_MIN:
        out.append(("note", f"{d.method.upper()} and the training loss at theta~ disagree: of the top "
                            f"{d.disagree_share:.0%} of points by each, {d.topk_overlap:.0%} are shared (below "
                            f"{OVERLAP_MIN:.0%}): the curvature reorders the flags; compare "
                            "ifkit.clean(score='loss') with score='vm' on the points they do not share"))
    if not (math.isfinite(d.spearman_loss_tilde)):
        out.append(("caution", "the scores are constant (Spearman undefined): they rank nothing"))
    elif d.spearman_loss_tilde > CONTROL_SPEARMAN:
        out.append(("note", f"influence here mostly repeats the loss at theta~ (Spearman {d.spearman_loss_tilde:.2f}): "
                            "ranking by ifkit.clean(..., score='loss') flags the same points"))
    if not any(lv in ("caution", "do not trust") for lv, _ in out):
        out.insert(0, ("trust", f"the model generalises (train acc {d.train_acc:.2f} vs val {d.val_acc:.2f}), theta~ "
                                f"is flatter than theta (SAM sharpness x{d.sharp_ratio:.2f}, top eigenvalue "
                                f"x{d.eig_ratio:.2f}) and tells right from wrong labels on held-out S_val (AUC "
                                f"{d.heldout_auc_hard:.2f}, hardest wrong labels): the score's assumptions hold"))
    order = {"do not trust": 0, "caution": 1, "trust": 2, "note": 3}
    out.sort(key=lambda r: order[r[0]])
    return [lv for lv, _ in out], [r for _, r in out]


__all__ = ["CONTROL_SPEARMAN", "Diagnosis", "EIG_RATIO_MAX", "FIT_RATIO", "GAP_CAUTION", "GAP_DISTRUST",
           "GRAD_RATIO_MAX", "HOLDOUT", "OVERLAP_MIN", "AUC_MIN", "SHARPNESS_MAX", "SHARP_RATIO_MAX", "TOP_EIG_MAX",
           "diagnose", "report", "topk_overlap"]
