"""Detection and relabeling experiments: schema, resume, every method's scores, and the relabel protocol."""

from dataclasses import replace

import pandas as pd
import pytest
import torch
from conftest import auc_floor
from tolerances import DETECTION_AUC

from ifkit import metrics
from ifkit.experiments import detection as D
from ifkit.experiments import relabel as R
from ifkit.optim.train import evaluate

TINY = replace(D.FAST, n_train=200, n_val=60, epochs=40, n_checkpoints=2, cv_folds=2, dynamics_every=20,
               flat_grid=(0, 20), progress=False)


RUNS: D.Runs = {}  # the trained networks these tests share, passed explicitly as ifkit reproduce does


@pytest.fixture(scope="module")
def setting():
    return D.prepare(TINY, "symmetric", 0.3, seed=0, runs=RUNS)


def test_prepare_trains_and_picks_the_early_stop(setting):
    s = setting
    assert s.train[0].shape == (200, 1, 8, 8) and int(s.flipped.sum()) == 60
    epochs = D.checkpoint_epochs(TINY.epochs, len(s.run.checkpoints))
    assert s.early_epoch in epochs
    accs = []
    for state, _ in s.run.checkpoints:
        s.early.load_state_dict(state)
        accs.append(evaluate(s.early, *s.val)[1])
    s.early.load_state_dict(s.run.checkpoints[epochs.index(s.early_epoch)][0])
    assert accs[epochs.index(s.early_epoch)] == max(accs)
    assert D.prepare(TINY, "symmetric", 0.3, seed=0, n_val=30, runs=RUNS).run is s.run  # one run, any n_val


def test_a_run_trained_afresh_is_the_shared_one_bit_for_bit(setting):
    """Sharing runs (relabel after detection in one worker) only saves time: alone, the same network is trained."""
    fresh = D.prepare(TINY, "symmetric", 0.3, seed=0)  # no runs given: trains its own
    assert fresh.run is not setting.run and fresh.early_epoch == setting.early_epoch
    for (name, a), b in zip(fresh.run.model.state_dict().items(), setting.run.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert len(RUNS) == 1  # and it was not added to anyone's runs


@pytest.mark.parametrize("method", D.INFLUENCE + D.REFERENCE)
def test_every_method_scores_every_training_point(setting, method):
    scores = D.score_method(method, setting, 0, {})
    assert scores.shape == (200,) and torch.isfinite(scores).all()
    loss = D.score_method("loss", setting, 0, {})  # the loss at theta*: the baseline some methods must beat
    assert metrics.auc(scores, setting.flipped) >= auc_floor(DETECTION_AUC[method], loss, setting.flipped), method


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
    cfg = R.Config(TINY, settings=(("symmetric", 0.3),), methods=("vm", "pred@theta~", "pred@fvm-theta~", "noisy"), progress=False)
    df = R.measure(cfg, [0], tmp_path / "relabel.csv", runs=RUNS)
    assert set(df.method) == {"vm", "pred@theta~", "pred@fvm-theta~", "noisy"}
    assert df.retrain_test_acc.between(0, 1).all()
    vm = df[df.method == "vm"].iloc[0]
    assert 0 <= vm.relabel_acc <= 1 and 0 <= vm.agree_theta_tilde <= 1


def test_dynamics_rows_for_fig2_and_fig3(tmp_path):
    from ifkit.results import ResultsTable

    table = ResultsTable(tmp_path / "dyn.csv", D.DYN_KEY, required=["auc"])
    D.dynamics(TINY, "symmetric", 0.3, 0, table, runs=RUNS)
    df = table.frame
    train_rows, flat_rows = df[df.kind == "training"], df[df.kind == "flat"]
    assert sorted(train_rows.step.unique()) == D.checkpoint_epochs(TINY.epochs, 2)
    assert set(train_rows.method) == set(D.DYN_METHODS) and train_rows.fit_flipped.between(0, 1).all()
    assert sorted(flat_rows.step.unique()) == list(TINY.flat_grid) and set(flat_rows.method) == set(D.FLAT_METHODS)
    # at t = 0 steps VM is computed at theta* itself; with steps the validation accuracy rises
    acc = flat_rows.groupby("step").val_acc.first()
    assert acc.loc[20] >= acc.loc[0]
    n = len(df)
    D.dynamics(TINY, "symmetric", 0.3, 0, table)  # resumes: nothing new
    assert len(table.frame) == n


def test_ablation_rows_and_the_paired_gap(tmp_path):
    from ifkit.experiments import ablation as A

    factors = (A.Factor("n_val", (30, 60), "symmetric", 0.3, ("vm", "fvm"), seeds=2),
               A.Factor("damping", (1e-3, 1e-1), "symmetric", 0.3, ("vm",), seeds=1))
    cfg = A.Config(TINY, factors=factors, progress=False)
    df = A.measure(cfg, None, tmp_path / "ablation.csv", runs=RUNS)
    assert len(df) == 2 * 2 * 2 + 2 * 1
    gap = A.paired_gap(df)
    assert list(gap.value) == [30, 60] and (gap.n == 2).all() and gap.wins.between(0, 2).all()
    # the gap is FVM - VM paired by seed
    one = df[(df.factor == "n_val") & (df.value == 30)].pivot(index="seed", columns="method", values="auc")
    assert gap.loc[0, "mean"] == pytest.approx((one.fvm - one.vm).mean())
    assert len(A.measure(cfg, None, tmp_path / "ablation.csv")) == len(df)  # resumed, nothing recomputed


class _Killed(Exception):
    pass


def test_an_interrupted_run_keeps_finished_rows_and_resumes(tmp_path, monkeypatch):
    """A run killed after its first method keeps that row; the rerun computes only the missing method."""
    path = tmp_path / "detection.csv"
    calls, killed = [], []
    real = D.score_method

    def flaky(method, *args):
        calls.append(method)
        if method == "graddot" and not killed:
            killed.append(True)
            raise _Killed  # the run dies during the second method
        return real(method, *args)

    monkeypatch.setattr(D, "score_method", flaky)
    with pytest.raises(_Killed):
        D.measure(TINY, [0], path, methods=("loss", "graddot"))
    assert list(pd.read_csv(path).method) == ["loss"]
    calls.clear()
    df = D.measure(TINY, [0], path, methods=("loss", "graddot"))
    assert calls == ["graddot"] and sorted(df.method) == ["graddot", "loss"]


def test_pipeline_rows_are_ifkit_clean_scores_bit_for_bit(setting):
    """vm-best-val / fvm-best-val are what ifkit.clean ranks by (computed without its trust report, for speed)."""
    import ifkit

    for method in D.PIPELINE:
        done = ifkit.clean(setting.run.model, setting.train, setting.val, method.split("-")[0],
                           checkpoints=setting.run.checkpoints, seed=0, k=0, relabel=False)
        assert torch.equal(D.score_method(method, setting, 0, {}), done.scores), method


def test_ifkit_clean_default_is_the_loss_at_theta_tilde_row_bit_for_bit(setting):
    """ifkit.clean's default score (the loss at theta~ from the lowest-S_val-loss checkpoint) is the
    loss-best-val@theta~ row of the table, and ifkit-clean-vm is the call with score="vm"."""
    import ifkit
    from ifkit.experiments.baselines import fair_score

    done = ifkit.clean(setting.run.model, setting.train, setting.val, checkpoints=setting.run.checkpoints, seed=0,
                       k=0, relabel=False)
    assert torch.equal(fair_score("loss-best-val@theta~", setting, None, 0, {}), done.scores)
    assert torch.equal(fair_score("ifkit-clean-vm", setting, None, 0, {}),
                       D.score_method("vm-best-val", setting, 0, {}))


def test_the_settings_beyond_fashion_cover_two_datasets_and_cnns():
    kinds = {(c.dataset, c.model) for c in D.MORE}
    assert {("digits", "mlp"), ("mixture", "mlp"), ("digits", "cnn"), ("fashion", "cnn")} <= kinds
    for c in D.MORE:
        assert {n for n, _ in c.settings} == {"symmetric", "asymmetric"}, c
        assert set(D.CNN_COMPARED) <= set(c.methods) and set(c.methods) <= set(D.INFLUENCE + D.REFERENCE)
    fashion_cnn = next(c for c in D.MORE if (c.dataset, c.model) == ("fashion", "cnn"))
    assert fashion_cnn.image_size == 28 and fashion_cnn.n_train >= 1000


def test_a_cnn_setting_scores_and_writes_its_model(tmp_path):
    cfg = replace(next(c for c in D.MORE if (c.dataset, c.model) == ("digits", "cnn")), n_train=200, n_val=60,
                  epochs=4, n_checkpoints=2, cv_folds=2, settings=(("asymmetric", 0.3),), progress=False)
    methods = ("loss", "cleanlab", "cleanlab-sval", "loss-sval", "loss-best-val@theta~")
    df = D.measure(cfg, [0], tmp_path / "detection.csv", methods=methods)
    assert set(df.model) == {"cnn"} and sorted(df.method) == sorted(methods) and df.auc.between(0, 1).all()
    s = D.prepare(cfg, "asymmetric", 0.3, seed=0)
    assert type(s.run.model).__name__ == "SmallCNN"
