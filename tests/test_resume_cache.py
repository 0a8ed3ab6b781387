"""The work cache of ``ifkit reproduce`` (ifkit/experiments/cache.py): a rerun resumes its work, not only its rows.

A run writes its rows and caches its trained networks / leave-one-out refits; we then delete half of the rows
and rerun from the cache alone (a fresh process would see the same: no in-memory ``runs``). The recomputed rows
must equal the first run's exactly (every column but the timings), and the rerun must not train again.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import pandas as pd
import pytest
import torch

from ifkit.experiments import cache as C
from ifkit.experiments import detection as D
from ifkit.experiments import relabel as R
from ifkit.experiments import theory as T

pytestmark = pytest.mark.usefixtures("one_thread")

TIMING = ["seconds"]


def drop_half(path) -> None:
    """Delete every other row of a results CSV (an interrupted run that finished half of its work)."""
    df = pd.read_csv(path)
    df.iloc[::2].to_csv(path, index=False)


def assert_rows_equal(a: pd.DataFrame, b: pd.DataFrame, key: list[str]) -> None:
    a = a.drop(columns=TIMING).sort_values(key).reset_index(drop=True)
    b = b.drop(columns=TIMING).sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_exact=True)


# ------------------------------------------------------------------------------------------- the cache file
def test_round_trip_keys_and_checksum(tmp_path):
    cache = C.Cache(tmp_path, "x", enabled=True)
    payload = {"w": torch.randn(3, 2), "ids": torch.arange(4), "lr": 0.1, "name": "a", "list": [1, {"b": 2.5}]}
    key = C.key_of(seed=0, rate=0.3, sizes=(3, 2))
    assert cache.load(key) is None
    cache.save(key, payload)
    assert (tmp_path / ".cache" / "x" / f"{key}.pt").exists()
    got = cache.load(key)
    assert C.checksum(got) == C.checksum(payload) and torch.equal(got["w"], payload["w"]) and got["list"][1]["b"] == 2.5
    assert not list((tmp_path / ".cache" / "x").glob("*.tmp"))  # the temp file was renamed, not left behind
    # every configuration value is part of the key, floats exactly
    assert len({key, C.key_of(seed=1, rate=0.3, sizes=(3, 2)), C.key_of(seed=0, rate=0.30000001, sizes=(3, 2)),
                C.key_of(seed=0, rate=0.3, sizes=(2, 3))}) == 4
    assert C.checksum({"w": torch.zeros(2)}) != C.checksum({"w": torch.zeros(2, dtype=torch.float64)})
    with pytest.raises(TypeError, match="not a configuration value"):
        C.key_of(model=torch.nn.Linear(2, 2))


@pytest.mark.parametrize("damage", ["truncated", "other key", "checksum", "pickled object"])
def test_a_damaged_file_is_moved_aside_and_recomputed(tmp_path, damage):
    cache = C.Cache(tmp_path, "x", enabled=True)
    key = C.key_of(seed=0)
    cache.save(key, {"w": torch.ones(5)})
    path = cache.path(key)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:40])
    elif damage == "other key":
        cache.save(C.key_of(seed=1), {"w": torch.ones(5)})
        cache.path(C.key_of(seed=1)).replace(path)  # a file stored under the wrong name
    elif damage == "checksum":
        stored = torch.load(path, weights_only=True)
        stored["payload"]["w"][0] = 2.0  # the data changed after the checksum was taken
        torch.save(stored, path)
    else:  # a file that would run code when unpickled: weights_only refuses it
        torch.save({"format": C.FORMAT, "key": key, "checksum": "", "payload": {"w": warnings.WarningMessage}}, path)
    with pytest.warns(RuntimeWarning, match="ignoring the cache file"):
        assert cache.load(key) is None
    assert not path.exists() and path.with_suffix(".bad").exists()
    computed = C.cached(cache, key, lambda: {"w": torch.full((5,), 3.0)})  # recomputed and stored again
    assert torch.equal(cache.load(key)["w"], computed["w"])


def test_off_reads_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(C.ENV, "0")
    cache = C.Cache(tmp_path, "x")
    calls = []
    for _ in range(2):
        C.cached(cache, "k", lambda: calls.append(1) or {"w": torch.ones(1)})
    assert len(calls) == 2 and not (tmp_path / ".cache").exists()


# ------------------------------------------------------------------------------------------- the experiments
TINY_DET = replace(D.FAST, n_train=200, n_val=60, epochs=40, n_checkpoints=2, cv_folds=2, dynamics_every=20,
                   flat_grid=(0, 20), progress=False)
DET_METHODS = ("loss", "graddot", "tracin", "if-cg", "vm", "loss-early", "vm-early", "vm-best-val")


def test_detection_resumed_from_the_cache_is_bit_identical(tmp_path, monkeypatch):
    path = tmp_path / "detection.csv"
    first = D.measure(TINY_DET, [0], path, methods=DET_METHODS, cache=C.Cache(tmp_path, "detection", enabled=True))
    drop_half(path)
    monkeypatch.setattr(D, "train", lambda *a, **k: pytest.fail("the rerun trained a network the cache holds"))
    cache = C.Cache(tmp_path, "detection", enabled=True)
    again = D.measure(TINY_DET, [0], path, methods=DET_METHODS, cache=cache)  # no runs dict: from disk
    assert cache.hits == 1 and cache.misses == 0
    assert_rows_equal(first, again, D.KEY)


def test_relabel_resumed_from_the_cache_is_bit_identical(tmp_path, monkeypatch):
    cfg = R.Config(TINY_DET, settings=(("symmetric", 0.3),), methods=("vm", "vm-best-val", "pred", "pred@theta~"))
    path = tmp_path / "relabel.csv"
    first = R.measure(cfg, [0], path, cache=C.Cache(tmp_path, "relabel", enabled=True))
    drop_half(path)
    for name in ("theta_tilde", "score_method"):
        monkeypatch.setattr(D, name, lambda *a, **k: pytest.fail("the rerun recomputed what the cache holds"))
    monkeypatch.setattr(R.ifkit, "clean", lambda *a, **k: pytest.fail("the rerun ran ifkit.clean again"))
    monkeypatch.setattr(R, "clean_bound", lambda *a, **k: pytest.fail("the rerun refitted a clean bound"))
    cache = C.Cache(tmp_path, "relabel", enabled=True)
    again = R.measure(cfg, [0], path, cache=cache)
    assert cache.hits == 1
    assert_rows_equal(first, again, R.KEY)


TINY_THEORY = T.Config(n_train=60, n_val=40, n_loo=4, train_steps=(0, 5), l2_path=(1e-1,), gammas=(0.0, 0.5),
                       methods=("if-exact", "graddot"), ascent_steps=3, eig_iters=20, trace_samples=5)


def test_theory_resumed_from_the_cache_is_bit_identical(tmp_path, monkeypatch):
    path = tmp_path / "theory.csv"
    first = T.measure(TINY_THEORY, [0], path, progress=False, cache=C.Cache(tmp_path, "theory", enabled=True))
    assert len(list((tmp_path / ".cache" / "theory").glob("*.pt"))) == 2  # the two optima and their refits
    drop_half(path)
    monkeypatch.setattr(T, "_truth", lambda *a, **k: pytest.fail("the rerun refitted a leave-one-out truth"))
    cache = C.Cache(tmp_path, "theory", enabled=True)
    again = T.measure(TINY_THEORY, [0], path, progress=False, cache=cache)
    assert cache.hits == 2 and cache.misses == 0
    assert_rows_equal(first, again, T.KEY)


def test_reproduce_help_says_where_the_cache_lives(capsys):
    from ifkit import cli  # the help text is the claim; tests/test_cli.py runs the command in a fresh process

    with pytest.raises(SystemExit) as exc:
        cli.main(["reproduce", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--no-cache" in out and ".cache" in out


@pytest.mark.parametrize("flag, expected", [([], True), (["--no-cache"], False)])
def test_no_cache_turns_the_cache_off_for_the_experiments(tmp_path, monkeypatch, flag, expected):
    from ifkit import cli
    from ifkit.experiments import EXPERIMENTS, META, Meta, discover

    discover()
    seen = []
    monkeypatch.setenv(C.ENV, "1")  # restored after the test: --no-cache sets it for the workers it starts
    monkeypatch.setitem(EXPERIMENTS, "probe", lambda fast, seeds, out: seen.append(C.Cache(out, "probe").enabled))
    monkeypatch.setitem(META, "probe", Meta())
    assert cli.main(["reproduce", "probe", "--fast", "--out", str(tmp_path), *flag]) == 0
    assert seen == [expected]
