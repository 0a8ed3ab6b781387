"""Detection and relabeling experiments: schema, resume, every method's scores, and the relabel protocol."""

from dataclasses import replace

import pandas as pd
import pytest
import torch

from ifkit import metrics
from ifkit.experiments import detection as D
from ifkit.experiments import relabel as R

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = replace(D.FAST, n_train=200, n_val=60, epochs=40, n_checkpoints=2, cv_folds=2, dynamics_every=20,
               flat_grid=(0, 20), progress=False)


@pytest.fixture(scope="module")
def setting():
    return D.prepare(TINY, "symmetric", 0.3, seed=0)


def test_prepare_trains_and_picks_the_early_stop(setting):
    s = setting
    assert s.train[0].shape == (200, 1, 8, 8) and int(s.flipped.sum()) == 60
    assert s.early_epoch in D.checkpoint_epochs(TINY.epochs, len(s.run.checkpoints))
    best = s.run.history.set_index("epoch").loc[D.checkpoint_epochs(TINY.epochs, len(s.run.checkpoints)), "val_acc"]
    assert best.loc[s.early_epoch] == best.max()


@pytest.mark.parametrize("method", D.INFLUENCE + D.REFERENCE)
def test_every_method_scores_every_training_point(setting, method):
    scores = D.score_method(method, setting, 0, {})
    assert scores.shape == (200,) and torch.isfinite(scores).all()
    assert metrics.auc(scores, setting.flipped) > 0.5, method  # every method sees some of the noise


def test_measure_writes_the_schema_and_resumes(tmp_path):
    path = tmp_path / "detection.csv"
    methods = ("loss", "vm")
    df = D.measure(TINY, [0], path, methods=methods)
    assert set(D.KEY + D.REQUIRED + ["seconds", "fit_flipped", "test_acc"]) <= set(df.columns)
    assert sorted(df.method) == sorted(methods) and len(df) == 2
    before = path.read_text()
    again = D.measure(TINY, [0], path, methods=methods)  # nothing left to do
    assert path.read_text() == before
    pd.testing.assert_frame_equal(df, again)


def test_relabel_new_labels_and_rows(setting, tmp_path):
    s = setting
    idx = torch.nonzero(s.flipped).flatten()[:10]
    new = R.new_labels("vm", s, idx, seed=0)
    assert new.shape == (10,) and ((new >= 0) & (new < 10)).all()
    cfg = R.Config(TINY, settings=(("symmetric", 0.3),), methods=("vm", "pred@theta~", "noisy"), progress=False)
    df = R.measure(cfg, [0], tmp_path / "relabel.csv")
    assert set(df.method) == {"vm", "pred@theta~", "noisy"}
    assert df.retrain_test_acc.between(0, 1).all()
    vm = df[df.method == "vm"].iloc[0]
    assert 0 <= vm.relabel_acc <= 1 and 0 <= vm.agree_theta_tilde <= 1
