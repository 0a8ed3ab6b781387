"""Which score should ``ifkit.clean`` rank by? Measured on settings nobody tuned the kit on, with its public API.

Run (about 25 min on one loaded core; ``--fast`` for a smoke test of a few seconds):

    python benchmarks/choose_score.py [--fast] [--settings digits-mlp,fashion-cnn] [--out results/choose_score.csv]

Settings (data offline only: scikit-learn's bundled 8x8 digits, Fashion-MNIST from the Debian package through
``ifkit.data``); each with symmetric and asymmetric (the dataset's confusable pairs) noise at 30%, seeds 0-2:

    setting       data                                    model                               training
    digits-mlp    digits 1,000 train / 300 S_val          MLP 64-64-64-10 tanh                Adam 1e-3, 60 epochs
    digits-cnn    digits 1,000 train / 150 S_val          SmallCNN(width 8, 8x8)              Adam 2e-3, 40 epochs
                  (150: with 300, r = 3,000 > p = 1,898 and the dense p x p curvature was estimated at 13 min)
    fashion-mlp   Fashion 3,000 train / 400 S_val (28x28) MLP 784-64-10 tanh                  Adam 1e-3, 25 epochs
                  (budget_mb=2048: at the default 1,024 ifkit.score refuses the rank-4,000 validation curvature,
                  0.8 GB, with an estimate of 17 min by CG)
    fashion-cnn   Fashion 2,000 train / 400 S_val (28x28) SmallCNN(width 8), 2 conv layers    Adam 2e-3, 15 epochs

Each run trains with 6 checkpoints (the last one memorises part of the noise), then calls
``ifkit.clean(model, train, val, checkpoints=..., score="vm", k=n_flipped)`` once: its report holds, at the
chosen checkpoint's theta~, VM and the controls every score of ``ifkit.clean(score=...)`` reads (the training
loss and gradient norm at theta~, the loss at theta: ``ifkit.cleaning.ranking``), and its relabels score
every candidate label. A second call ranks by FVM (``score="fvm"``, its own theta~). The table holds one row
per (setting, noise, seed, score) with the AUC of separating flipped from clean labels; the "vm" row also
carries what relabelling cost and how often VM's candidate choice differs from theta~'s argmax.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import ifkit
from ifkit import metrics
from ifkit.data.splits import make_split
from ifkit.models import MLP, SmallCNN
from ifkit.optim.train import train
from ifkit.results import ResultsTable

KEY = ("setting", "noise", "seed", "score")
SCORES = ("vm", "fvm", "loss", "gradnorm", "loss-checkpoint")
SETTINGS = {
    "digits-mlp": dict(dataset="digits", n_train=1000, n_val=300, epochs=60, lr=1e-3,
                       model=lambda: MLP(64, (64, 64, 64), 10)),
    "digits-cnn": dict(dataset="digits", n_train=1000, n_val=150, epochs=40, lr=2e-3,
                       model=lambda: SmallCNN(1, 10, width=8, image_size=8)),
    "fashion-mlp": dict(dataset="fashion", n_train=3000, n_val=400, epochs=25, lr=1e-3,
                        model=lambda: MLP(784, (64,), 10), options=dict(budget_mb=2048)),
    "fashion-cnn": dict(dataset="fashion", n_train=2000, n_val=400, epochs=15, lr=2e-3,
                        model=lambda: SmallCNN(1, 10, width=8, image_size=28)),
}
FAST = dict(n_train=300, n_val=100, epochs=6)


def run(name: str, noise: str, seed: int, fast: bool) -> list[dict]:
    cfg = {**SETTINGS[name], **(FAST if fast else {})}
    split = make_split(cfg["dataset"], n_train=cfg["n_train"], n_val=cfg["n_val"], n_test=10, noise=noise,
                       rate=0.3, seed=seed)
    torch.manual_seed(seed)
    fit = train(cfg["model"](), split.train, epochs=cfg["epochs"], lr=cfg["lr"], batch_size=64, seed=seed,
                n_checkpoints=6, progress=False)
    flipped, k = split.flipped, int(split.flipped.sum())
    t = time.perf_counter()
    opts = dict(cfg.get("options", {}), seed=seed)
    c = ifkit.clean(fit.model, split.train, split.val, score="vm", checkpoints=fit.checkpoints, k=k, **opts)
    vm_s = time.perf_counter() - t
    d = c.diagnosis
    f = ifkit.clean(fit.model, split.train, split.val, score="fvm", checkpoints=fit.checkpoints, k=k, **opts,
                    relabel=False)
    # relabelling: VM's candidate argmin vs theta~'s argmax on the flagged points, and what the candidates cost
    X, y = split.train
    with torch.no_grad():
        argmax = d.model_tilde(X[c.flagged]).argmax(1)  # (k,)
    C = 10
    Xc, yc = X[c.flagged].repeat_interleave(C, 0), torch.arange(C).repeat(k)
    t = time.perf_counter()
    ifkit.score("vm", c.model, split.train, split.val, at=d.point, candidates=(Xc, yc), **opts)
    cand_s = time.perf_counter() - t
    hit = flipped[c.flagged]
    truth = split.y_train_clean[c.flagged]
    base = dict(setting=name, noise=noise, seed=seed, dataset=cfg["dataset"], n_train=cfg["n_train"],
                n_val=cfg["n_val"], checkpoint=c.checkpoint, val_acc=d.val_acc)
    ranked = {"vm": c.scores, "fvm": f.scores, "loss": d.loss_tilde, "gradnorm": d.grad_norm_tilde,
              "loss-checkpoint": d.loss_theta}
    rows = [{**base, "score": s, "auc": metrics.auc(v, flipped)} for s, v in ranked.items()]
    rows[0].update(relabel_differs=float((c.new_labels != argmax).float().mean()),
                   relabel_acc_vm=metrics.relabel_accuracy(c.new_labels[hit], truth[hit]),
                   relabel_acc_argmax=metrics.relabel_accuracy(argmax[hit], truth[hit]),
                   candidates_seconds=cand_s, clean_seconds=vm_s)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fast", action="store_true")
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", default="results/choose_score.csv")
    a = ap.parse_args(argv)
    table = ResultsTable(Path(a.out), key=KEY, required=("auc",))
    for name in a.settings.split(","):
        for noise in ("symmetric", "asymmetric"):
            for seed in map(int, a.seeds.split(",")):
                if table.has(setting=name, noise=noise, seed=seed, score="vm"):
                    continue
                t = time.perf_counter()
                rows = run(name, noise, seed, a.fast)
                table.add(rows)
                print(f"{name} {noise} seed {seed}: " + " ".join(f"{r['score']} {r['auc']:.3f}" for r in rows)
                      + f"  ({time.perf_counter() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
