"""``ifkit.clean``: the recommended way to clean a labelled dataset at a flat validation minimum, in one call.

The pipeline (each step is a public call you can also make yourself):

1. **Pick the model.** Among the saved training ``checkpoints=``, the one of lowest mean loss on the clean
   validation set S_val (early stopping by validation loss; ``checkpoint="best-val"`` of ``ifkit.score``).
   A network trained until it memorises its noisy labels gives VM a theta* far from any validation minimum:
   on Fashion-MNIST (2,000 points, 20-40% noise, RESULTS.md) VM from the memorising model reached AUC 0.82-0.90,
   from this checkpoint 0.91-0.98, ahead of cleanlab's 0.66-0.97 on all four noise settings and every seed.
2. **Diagnose.** ``ifkit.diagnose`` at that model: fine-tunes a copy on S_val to theta~, scores every training
   point there and says whether the scores can be trusted (``Cleaning.diagnosis``).
3. **Flag.** The ``k`` highest scores of ``score=``. The default is the training loss at theta~ (the point VM
   fine-tunes to anyway); VM, g~_z^T (H~_val + damping I)^-1 g~_z (docs/PAPER.md, Eq. 13), is ``score="vm"``.
4. **Relabel.** For each flagged (x, y): the class c whose candidate (x, c) scores lowest at the same theta~ (the
   paper's relabeling, docs/PAPER.md, Eq. 17). For the loss that is theta~'s most probable class. For VM it
   is too on all but 0-2.8% (mean 1.0%) of the flagged points of each run of benchmarks/choose_score.py, and
   relabel accuracy stayed within 0.008 of theta~'s argmax (mean difference 0.000), while VM's candidates took
   4-43% of the call (mean 25%). VM's candidates are scored except those a lower bound proves cannot beat the
   argmax (``_lower_bounds``: a quarter of them; the relabel step took 21% / 52% less time on the digits MLP /
   CNN, 6% more on the Fashion MLP; the labels are the full argmin's). At the chosen
   checkpoint VM's relabels reached 0.817 / 0.849 on Fashion-MNIST (symmetric / asymmetric 40%), level with a
   network trained on the CLEAN labels of the other points (0.827 / 0.845, ``ifkit.experiments.relabel``).

**Which score, by evidence.** ``benchmarks/choose_score.py`` runs this call on settings nobody tuned the kit on
(8x8 digits: MLP and CNN; Fashion-MNIST 28x28, a few thousand images: MLP and 2-conv SmallCNN; symmetric and
asymmetric 30% noise; 3 seeds each: 24 runs; ``results/choose_score.csv``). Rule: the default is the score of
highest mean AUC over the eight settings that is also the best (ties included) on at least 80% of the runs;
otherwise VM. The loss at theta~ won, plainly: best on 24 of 24 runs, mean AUC 0.979 against VM's 0.964 (FVM
0.964, gradient norm at theta~ 0.956, loss at theta 0.924); per setting it led VM by 0.003-0.043 (most on digits
MLP with asymmetric noise) and every other score by at least 0.0025. Notebook 04 shows where the two part.

Cost: ``diagnose`` (one fine-tuning and a second on 80% of S_val, the VM scores and controls, two power
iterations: 1-3 s on the 2,000-point detection setting, one core) + one forward pass on S_val per checkpoint;
``score="vm"`` adds the candidates (4-43% of the call in the benchmark).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import html
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from . import api
from . import validation as checks
from .core.func import chunks
from .core.grads import GradEngine
from .core.inputs import as_tensors, check_model_mode
from .curvature.val_inverse import LowRankGGN, StructuredGGN
from .diagnosis import Diagnosis, report
from .methods.flat import flat_point
from .optim.train import best_val_checkpoint, checkpoint_state, labelled_tensors

# What ranks the training points (``score=``), each read off the trust report's one fine-tuning (diagnosis.py):
SCORES = {
    "loss": "the training loss at theta~",
    "vm": "VM, g~^T (H~_val + damping I)^-1 g~ at theta~",
    "fvm": "FVM, VM at a flat theta~ (LPF-SGD)",
    "gradnorm": "the per-sample gradient norm at theta~",
    "loss-checkpoint": "the training loss at theta (the chosen checkpoint)",
}
DEFAULT_SCORE = "loss"  # chosen by the rule in the module docstring (results/choose_score.csv)


def choose_score(method: str | None, score: str | None) -> tuple[str, str]:
    """(fine-tuning method, ranking score) of a ``clean`` call; refuses unknown names with the closest one.

    ``method`` says how theta~ is reached ("vm": SGD, "fvm": LPF-SGD on S_val); ``score`` what ranks the points.
    Given alone, ``method`` also ranks (``clean(m, tr, va, "fvm")`` ranks by FVM, as it always did).
    """
    if method is not None and method not in ("vm", "fvm"):
        close = difflib.get_close_matches(str(method), ("vm", "fvm"), n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"ifkit.clean fine-tunes with the flat-validation-minimum recipes: method must be 'vm' or "
                         f"'fvm', got {method!r} ({hint}other methods: ifkit.score, then torch.topk; to rank by "
                         f"another score pass score=, one of {', '.join(SCORES)})")
    if score is None:
        score = method or DEFAULT_SCORE
    if score not in SCORES:
        close = difflib.get_close_matches(str(score), SCORES, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown score={score!r}{hint}: ifkit.clean ranks by one of {', '.join(SCORES)}")
    if method is not None and score in ("vm", "fvm") and score != method:
        raise ValueError(f"method={method!r} fine-tunes theta~ for {method.upper()} but score={score!r} ranks by "
                         f"{score.upper()}: pass one of them")
    return method or (score if score in ("vm", "fvm") else "vm"), score


def ranking(d: Diagnosis, score: str) -> Tensor:
    """(n,) the chosen score of every training point, off the report's fine-tuning; higher = more suspicious."""
    return {"loss": d.loss_tilde, "gradnorm": d.grad_norm_tilde, "loss-checkpoint": d.loss_theta}.get(score, d.scores)


@dataclass
class Cleaning:
    """What ``clean`` found. Indices refer to the training set as given.

    Attributes:
        method: "vm" or "fvm": how theta~ was reached (SGD or LPF-SGD on S_val).
        score: what ranked the points (``SCORES``): "loss" (at theta~), "vm", "fvm", "gradnorm", "loss-checkpoint".
        flagged: (k,) training indices, most likely mislabelled first.
        new_labels: (k,) the proposed label of each flagged point (its given label when the scores prefer it).
        labels: (n_train,) the given labels with the proposals applied.
        given: (n_train,) the labels as given.
        checkpoint: index of the chosen state in ``checkpoints=`` (a dict: in key order; None: the model as given).
        checkpoint_val_loss: mean S_val loss of each checkpoint (empty without checkpoints).
        diagnosis: ``ifkit.diagnose`` of that model: verdict, reasons, theta~ (``diagnosis.model_tilde``).
        seconds: wall time of the call.
        scores: (n_train,) the chosen score at the chosen model; higher = more likely mislabelled.
        relabel_path: how the proposals were made: "candidates" (every class scored), "argmax" (the model's most
            probable class: the candidate of lowest loss), "bound" (VM/FVM where the candidate bound proves the
            argmax wins, candidates scored elsewhere) or "" (no relabelling).
        model: the chosen model (a copy; theta, before the fine-tuning on S_val).
    """

    method: str
    score: str
    flagged: Tensor
    new_labels: Tensor
    labels: Tensor
    given: Tensor = field(repr=False)
    checkpoint: int | None
    checkpoint_val_loss: list[float]
    diagnosis: Diagnosis
    seconds: float
    scores: Tensor = field(repr=False)
    model: nn.Module = field(repr=False)
    relabel_path: str = ""

    @property
    def verdict(self) -> str:
        """The trust report's verdict: "trust", "caution" or "do not trust"."""
        return self.diagnosis.verdict

    @property
    def changed(self) -> Tensor:
        """(m,) flagged indices whose proposed label differs from the given one."""
        return self.flagged[self.new_labels != self.given[self.flagged]]

    def frame(self) -> pd.DataFrame:
        """One row per flagged point: index, score, given label, proposed label (most suspicious first)."""
        return pd.DataFrame({"index": self.flagged.tolist(), "score": self.scores[self.flagged].tolist(),
                             "given": self.given[self.flagged].tolist(), "proposed": self.new_labels.tolist()})

    def __str__(self) -> str:
        cp = "the model as given" if self.checkpoint is None else (
            f"checkpoint {self.checkpoint} of {len(self.checkpoint_val_loss)} (S_val loss "
            f"{self.checkpoint_val_loss[self.checkpoint]:.3f})")
        tuned = "" if self.score in ("vm", "fvm") else f", theta~ of {self.method}"
        return (f"ifkit.clean(score={self.score!r}{tuned}) at {cp}: ranked by {SCORES[self.score]}; "
                f"flagged {len(self.flagged)} of {len(self.scores)} points, "
                f"proposed a new label for {len(self.changed)}; diagnose: {self.verdict.upper()} "
                f"({self.seconds:.1f} s)")

    def _repr_html_(self) -> str:
        return f"<p>{html.escape(str(self))}</p>{self.diagnosis._repr_html_()}"


def clean(
    model: nn.Module,
    train,
    val,
    method: str | None = None,
    *,
    score: str | None = None,
    checkpoints: Sequence | None = None,
    k: int | float | None = None,
    relabel: bool = True,
    **options: Any,
) -> Cleaning:
    """Flag and relabel the likely mislabelled training points at a flat validation minimum (module docstring).

    The default score, the training loss at theta~, was chosen by a stated rule: highest mean AUC over the eight
    settings of benchmarks/choose_score.py AND best on >= 80% of its 24 runs. It won all 24, mean AUC 0.979
    against VM's 0.964 (+0.003 to +0.043 per setting).
    VM is ``score="vm"``; the report (``str(result)``) names the score that ranked.

    Args:
        model: the trained classifier (its architecture; with ``checkpoints=`` its weights are replaced).
        train: (X, y) training set with possibly noisy labels: tensors, numpy arrays, a Dataset or a DataLoader,
            as for ``ifkit.score``.
        val: (X_val, y_val) the clean validation set S_val, in any of the same forms (read once).
        method: how theta~ is reached: "vm" (SGD on S_val; the default) or "fvm" (LPF-SGD). Given without
            ``score=`` it also ranks (the calls of earlier releases keep their meaning).
        score: what ranks the points (``SCORES``; default ``DEFAULT_SCORE``, chosen by the rule below): "loss"
            (training loss at theta~), "vm", "fvm", "gradnorm" (at theta~) or "loss-checkpoint" (at theta).
        checkpoints: a list of state_dicts, of (state_dict, lr) pairs (as ``ifkit.optim.train.train(...,
            n_checkpoints=)`` saves them) or of modules, or a {epoch: state_dict} dict; the one of lowest S_val
            loss is used. None: ``model`` as given.
        k: how many points to flag: a count, or a fraction of n_train in (0, 1). None: the points whose given
            label theta~ does not predict -- an estimate of the noise that overshoots by about theta~'s
            validation error (pass the noise rate when you know it).
        relabel: propose new labels for the flagged points (k x n_classes candidate scores).
        **options: ``ifkit.score`` / ``ifkit.diagnose`` options (seed, damping, flat_steps, ...).

    Returns:
        ``Cleaning``: scores, flagged indices, proposed labels, the chosen checkpoint and the trust report.

    Raises:
        ValueError: a method other than "vm"/"fvm", an unknown score (with the closest name), a k out of range,
            or inputs ``ifkit.score`` refuses.
    """
    t0 = time.perf_counter()
    method, score = choose_score(method, score)
    for bad in ("checkpoint", "candidates", "at"):
        if options.get(bad) is not None:
            raise ValueError(f"ifkit.clean chooses the model and the candidates itself: drop {bad}= (give "
                             "checkpoints=[state_dict, ...] to choose among)")
    opt = api.resolve(method, options)  # typed options; unknown names refused before any work
    check_model_mode(model)
    X, y = labelled_tensors(train, "train", opt.loss)
    val = as_tensors(val, "val")  # read once (a DataLoader too), used below and by api.prepare
    # -- refused before any work (ifkit/validation.py) --
    k = checks.check_k(k, len(X))
    checkpoints = checks.check_checkpoints(model, checkpoints, none_means="clean with the model as given")
    # --
    chosen, val_losses = None, []
    start = copy.deepcopy(model)
    if checkpoints is not None:
        chosen, val_losses = best_val_checkpoint(model, checkpoints, val, opt.loss)
        start.load_state_dict(checkpoint_state(checkpoints[chosen])[0])

    # One input check, one fine-tuning to theta~, one validation curvature there (cached on the point): the
    # report's scores and every candidate label's below use them all
    eng = api.prepare(start, (X, y), val, opt, "val")
    point = flat_point(eng)
    d = report(eng, point, method, t0=t0)
    scores = ranking(d, score)  # (n,) e.g. VM: ifkit.score(method, start, train, val, **options)
    n = len(scores)
    if k is None:
        with torch.no_grad():
            k = int((d.model_tilde(X).argmax(-1) != y).sum())  # theta~ disagrees with the given label
    elif isinstance(k, float):
        if not 0 < k < 1:
            raise ValueError(f"k={k}: a fraction must lie in (0, 1); give an int for a count")
        k = round(k * n)
    if not 0 <= k <= n:
        raise ValueError(f"k={k}: flag between 0 and n_train={n} points")
    flagged = torch.topk(scores, k).indices  # (k,) most suspicious first
    new, path = y[flagged].clone(), ""  # (k,)
    if relabel and k:
        new, path = _relabel(eng, point, d, method, score, flagged)
    labels = y.clone()
    labels[flagged] = new
    return Cleaning(method=method, score=score, flagged=flagged, new_labels=new, labels=labels, given=y,
                    checkpoint=chosen, checkpoint_val_loss=val_losses, diagnosis=d,
                    seconds=time.perf_counter() - t0, scores=scores, model=start, relabel_path=path)


def _relabel(eng: GradEngine, point, d: Diagnosis, method: str, score: str, flagged: Tensor) -> tuple[Tensor, str]:
    """((k,) proposed labels, path): the candidate label of lowest score for each flagged point.

    Loss scores: the candidate (x, c) of lowest cross-entropy is the model's most probable class, so the argmax
    IS the argmin over candidates (theta~'s; theta's for "loss-checkpoint"); "gradnorm" takes theta~'s argmax
    too. VM/FVM: the candidates at theta~ with the curvature of the scores (docs/PAPER.md, Eq. 17), skipping
    those ``_lower_bounds`` proves cannot beat theta~'s argmax (the same labels, up to exact ties).
    """
    X = eng.X[flagged]
    if score not in ("vm", "fvm"):
        net = point.start if score == "loss-checkpoint" else point.model
        with torch.no_grad():
            return torch.cat([net(X[r]).argmax(-1) for r in chunks(len(X), eng.opt.chunk_size)]), "argmax"
    k = len(flagged)
    bounds = _lower_bounds(eng, point, X)  # (k, C) or None

    def cand(Xc: Tensor, yc: Tensor) -> Tensor:  # = ifkit.score(method, ..., at=point, candidates=(Xc, yc))
        opt = dataclasses.replace(eng.opt, candidates=(Xc, yc), at=point)
        return api.run(method, GradEngine(eng.model, eng.X, eng.y, eng.Xv, eng.yv, opt))

    if bounds is None:
        with torch.no_grad():
            C = int(point.model(X[:1]).shape[-1])
        full = cand(X.repeat_interleave(C, dim=0), torch.arange(C, device=eng.y.device).repeat(k))  # (k*C,)
        return full.view(k, C).argmin(dim=1), "candidates"  # (k,) the label whose candidate is least harmful
    low, top = bounds
    s_top = cand(X, top)  # (k,) exact score of theta~'s argmax candidate
    need = low < s_top[:, None]  # (k, C) candidates the bound cannot rule out
    need[torch.arange(k), top] = False
    full = torch.full_like(low, math.inf)
    full[torch.arange(k), top] = s_top
    rows, cols = need.nonzero(as_tuple=True)
    if len(rows):
        full[rows, cols] = cand(X[rows], cols)
    return full.argmin(dim=1), "bound" if len(rows) < k * (low.shape[1] - 1) else "candidates"


def _lower_bounds(eng: GradEngine, point, X: Tensor) -> tuple[Tensor, Tensor] | None:
    """((k, C) lower bounds of every candidate's VM score, (k,) theta~'s argmax), or None where not provable.

    score(x, c) = g_c^T (H~ + damping I)^-1 g_c >= ||g_c||^2 / lam_max, and lam_max <= trace(A A^T) + damping
    for the PSD Gauss-Newton H~ = A^T A (trace = ||L||_F^2 - r damping from the Cholesky factor L of the Woodbury
    kernel: free; 6x the top eigenvalue on digits, where ||A A^T||_F was 1.6x but cost more than it saved).
    Cross-entropy's gradient of the output layer z = W h + b is (p - e_c) (h, 1)^T, part of g_c, so
    ||g_c||^2 >= ||p - e_c||^2 (||h||^2 + 1). Applies when the curvature is the validation GGN in Woodbury form
    (``LowRankGGN``, ``StructuredGGN``), the loss cross-entropy on (n, C) logits, and the last Linear layer
    (weight and bias, differentiated) gives the model's output. Cost: a forward pass on the k points.
    """
    prob = point.problem(eng)
    curv = point.curvature(prob, eng.Xv, eng.yv, eng.opt, structured=True)  # cached: the scores built it
    linear = [(n, m) for n, m in point.model.named_modules() if isinstance(m, nn.Linear)]
    if (not isinstance(curv, (LowRankGGN, StructuredGGN)) or eng.opt.loss != "cross_entropy" or not linear
            or linear[-1][1].bias is None or {f"{linear[-1][0]}.weight", f"{linear[-1][0]}.bias"} - set(prob.names)):
        return None
    seen: list[Tensor] = []
    hook = linear[-1][1].register_forward_hook(lambda m, i, o: seen.append(i[0]))
    try:
        with torch.no_grad():
            z = point.model(X)  # (k, C)
    finally:
        hook.remove()
    h = seen[-1] if seen else None
    if h is None or z.dim() != 2 or h.shape[0] != len(X) or not torch.equal(linear[-1][1](h), z):
        return None  # something follows the last Linear layer
    r = curv.L.shape[0]  # L L^T = A A^T + damping I, the kernel the scores factorised
    lam_max = float((curv.L.double() ** 2).sum()) * (1 + 1e-3) - (r - 1) * curv.damping  # trace(A A^T) + damping
    p = torch.softmax(z.double(), dim=1)  # (k, C)
    dist = (p * p).sum(1, keepdim=True) - 2 * p + 1  # (k, C) ||p - e_c||^2
    low = dist * ((h.double().flatten(1) ** 2).sum(1, keepdim=True) + 1) / lam_max  # (k, C)
    return (low * (1 - 1e-4)).to(z.dtype), z.argmax(1)  # a margin for the float32 round-off of the scores


__all__ = ["Cleaning", "DEFAULT_SCORE", "SCORES", "best_val_checkpoint", "choose_score", "clean", "ranking"]
