"""The paper's headline claim at test scale: on a network that memorises noisy labels, influence at a flat
validation minimum (FVM, and VM) detects the flipped labels better than every classic estimator."""

import pytest
import torch

import ifkit
from ifkit import data, metrics, models
from ifkit.optim import train

CLASSIC = ["if-lissa", "if-cg", "tracin", "datainf"]


@pytest.fixture(scope="module")
def memorised():
    split = data.make_split("digits", n_train=600, n_val=200, noise="symmetric", rate=0.3, seed=0)
    torch.manual_seed(0)
    run = train.train(models.MLP(64, hidden=(64,), n_classes=10), split.train, epochs=150, lr=1e-2,
                      batch_size=128, seed=0, n_checkpoints=3, progress=False)
    return split, run


def test_the_network_memorises_the_noise(memorised):
    split, run = memorised
    with torch.no_grad():
        fits_flipped = (run.model(split.X_train[split.flipped]).argmax(1) == split.y_train[split.flipped]).float().mean()
    assert fits_flipped > 0.9  # the regime where classic influence fails


def test_fvm_and_vm_beat_every_classic_method(memorised):
    split, run = memorised
    aucs = {}
    for method in CLASSIC + ["vm", "fvm"]:
        opts = {"checkpoints": run.checkpoints} if method == "tracin" else {}
        aucs[method] = metrics.auc(ifkit.score(method, run.model, split.train, split.val, **opts), split.flipped)
    best_classic = max(aucs[m] for m in CLASSIC)
    assert aucs["fvm"] > best_classic, aucs
    assert aucs["vm"] > best_classic, aucs
    assert aucs["fvm"] > 0.95, aucs
