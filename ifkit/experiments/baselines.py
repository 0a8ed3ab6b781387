"""The fair baselines of mislabel detection: every score a user with the same clean validation set could use instead.

The recommended pipeline (``ifkit.clean``) reads the clean S_val; a baseline that does not is not a fair
comparison. Beside cleanlab as it is usually run, the detection table therefore has (``detection.FAIR``):

* ``cleanlab-sval``: cleanlab with S_val as well -- S_val is FOLDED INTO EVERY FOLD: each of the K out-of-fold
  models trains on its (K-1)/K of the noisy training set plus all of S_val, and predicts its held-out training
  points (the clean labels never score themselves, and every training point is scored by a model that had them);
* ``loss-sval``: a model trained on S_val alone (same architecture, optimiser and epoch count as the main run;
  it memorises S_val as the main run memorises S_tr); score = its cross-entropy on each training example;
* ``loss-best-val`` / ``gradnorm-best-val``: the loss and the per-example gradient norm ||grad l(z)|| at the
  checkpoint ``ifkit.clean`` chooses (lowest S_val loss, ``ifkit.optim.train.best_val_checkpoint``), and the same
  at its theta~ (``...@theta~``: VM's flat fine-tuning on S_val from that checkpoint, ``VM_DEFAULTS``) -- the
  cheap scores beside VM at the same point (docs/PAPER.md, Eq. 15: VM is the loss change of z under
  theta~'s step, which the loss at theta~ approximates to first order);
* ``ifkit-clean-vm``: ``ifkit.clean(model, train, val, checkpoints=..., seed=seed, score="vm")``, every other
  option at its default (``relabel=False``: the row times detection only) -- the pipeline as a user calls it with
  the paper's score, trust report included. Its default score (the loss at theta~, chosen by this table) is the
  ``loss-best-val@theta~`` row, bit for bit (tests/test_detection.py).

Every score: higher = more likely mislabelled, one value per training point.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import Tensor, nn

import ifkit
from ifkit.core.func import make_problem, per_sample_grads
from ifkit.methods.flat import VM_DEFAULTS
from ifkit.optim.flat_finetune import flat_finetune
from ifkit.optim.train import best_val_checkpoint, checkpoint_state, train

FAIR = ("cleanlab-sval", "loss-sval", "loss-best-val", "gradnorm-best-val", "loss-best-val@theta~",
        "gradnorm-best-val@theta~", "ifkit-clean-vm")


def cleanlab_scores(s, build, seed: int, with_val: bool = False) -> Tensor:
    """1 - cleanlab's label quality on K-fold out-of-fold probabilities (``s.cfg.cv_folds`` folds, the
    architecture ``build(seed)``, trained for the early-stopping epoch count). ``with_val``: S_val joins every
    fold's training set (module docstring). Cost: K trainings on (K-1)/K of S_tr (+ S_val)."""
    from cleanlab.rank import get_label_quality_scores
    from sklearn.model_selection import StratifiedKFold

    X, y = s.train
    Xv, yv = s.val
    probs = np.zeros((len(y), 10))
    folds = StratifiedKFold(n_splits=s.cfg.cv_folds, shuffle=True, random_state=seed)
    for k, (fit, held) in enumerate(folds.split(np.zeros(len(y)), y.numpy())):
        fit, held = torch.from_numpy(fit), torch.from_numpy(held)
        data = (torch.cat([X[fit], Xv]), torch.cat([y[fit], yv])) if with_val else (X[fit], y[fit])
        run = train(build(seed + 1000 * (k + 1)), data, epochs=s.early_epoch, lr=s.cfg.lr,
                    batch_size=s.cfg.batch_size, seed=seed + k, progress=False)
        with torch.no_grad():
            probs[held.numpy()] = torch.softmax(run.model(X[held]), dim=1).numpy()
    quality = get_label_quality_scores(y.numpy(), probs)  # (n,) in [0, 1], low = likely mislabelled
    return torch.from_numpy(1.0 - quality)


def sval_only_loss(s, build, seed: int) -> Tensor:
    """(n,) the cross-entropy of every training example under a model trained on S_val alone
    (``s.cfg.epochs`` epochs, the main run's optimiser). Cost: one training on n_val points."""
    run = train(build(seed + 7), s.val, epochs=s.cfg.epochs, lr=s.cfg.lr, batch_size=s.cfg.batch_size, seed=seed,
                progress=False)
    return ifkit.score("loss", run.model, s.train, s.val)


def chosen_checkpoint(s) -> nn.Module:
    """The checkpoint of lowest S_val loss among the run's saved ones (what ``ifkit.clean`` picks), as a model."""
    best, _ = best_val_checkpoint(s.run.model, s.run.checkpoints, s.val)
    model = copy.deepcopy(s.run.model)
    model.load_state_dict(checkpoint_state(s.run.checkpoints[best])[0])
    return model


def grad_norms(model: nn.Module, train_set: tuple[Tensor, Tensor]) -> Tensor:
    """(n,) ||grad_theta l(z_i)||: the per-example gradient norm. Cost: one vmapped backward pass."""
    return per_sample_grads(make_problem(model), *train_set).norm(dim=1)  # (n,)


def fair_score(method: str, s, build, seed: int, work: dict) -> Tensor:
    """The score of one name in ``FAIR`` (``work``: the setting's shared models, filled on first use)."""
    tr, va = s.train, s.val
    if method == "cleanlab-sval":
        return cleanlab_scores(s, build, seed, with_val=True)
    if method == "loss-sval":
        return sval_only_loss(s, build, seed)
    if method == "ifkit-clean-vm":  # the call, trust report included, ranking by the paper's score
        return ifkit.clean(s.run.model, tr, va, checkpoints=s.run.checkpoints, seed=seed, relabel=False,
                           score="vm").scores
    if "best" not in work:
        work["best"] = chosen_checkpoint(s)
    model = work["best"]
    if method.endswith("@theta~"):
        if "best_tilde" not in work:
            work["best_tilde"] = flat_finetune(model, va, seed=seed, progress=False, **VM_DEFAULTS).model
        model = work["best_tilde"]
    if method.startswith("loss-"):
        return ifkit.score("loss", model, tr, va)
    if method.startswith("gradnorm-"):
        return grad_norms(model, tr)
    raise ValueError(f"unknown fair baseline {method!r}: choose from {FAIR}")


__all__ = ["FAIR", "chosen_checkpoint", "cleanlab_scores", "fair_score", "grad_norms", "sval_only_loss"]
