"""ResultsTable: atomic writes, resume by key, corrupt or partial files detected and rebuilt (never mixed in)."""

from __future__ import annotations

import pandas as pd
import pytest

from ifkit.results import CorruptResultsWarning, ResultsTable, write_atomic

KEY = ["dataset", "rate", "seed", "method"]


def _row(seed: int, method: str, auc: float = 0.9) -> dict:
    return {"dataset": "digits", "rate": 0.3, "seed": seed, "method": method, "auc": auc}


def test_add_then_resume_sees_the_rows(tmp_path):
    path = tmp_path / "t.csv"
    table = ResultsTable(path, KEY, required=["auc"])
    assert len(table) == 0 and not table.has(dataset="digits", rate=0.3, seed=0, method="vm")
    table.add([_row(0, "vm"), _row(0, "fvm")])
    again = ResultsTable(path, KEY, required=["auc"])  # a rerun
    assert len(again) == 2
    # keys compare after the CSV round trip: 0.3 == "0.3", 0 == 0.0
    assert again.has(dataset="digits", rate="0.3", seed=0.0, method="vm")
    todo = again.missing([_row(0, "vm"), _row(1, "vm"), _row(0, "tracin")])
    assert [(r["seed"], r["method"]) for r in todo] == [(1, "vm"), (0, "tracin")]


def test_add_replaces_a_row_with_the_same_key(tmp_path):
    table = ResultsTable(tmp_path / "t.csv", KEY, required=["auc"])
    table.add([_row(0, "vm", 0.5)])
    table.add([_row(0, "vm", 0.7)])
    df = pd.read_csv(tmp_path / "t.csv")
    assert len(df) == 1 and df["auc"].item() == 0.7


def test_a_row_without_a_required_value_is_refused(tmp_path):
    table = ResultsTable(tmp_path / "t.csv", KEY, required=["auc"])
    with pytest.raises(ValueError, match="no value for 'auc'"):
        table.add([_row(0, "vm", float("nan"))])
    assert not (tmp_path / "t.csv").exists()


def test_atomic_write_leaves_no_temp_file(tmp_path):
    write_atomic(pd.DataFrame({"a": [1, 2]}), tmp_path / "sub" / "x.csv")
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.csv"]


@pytest.mark.parametrize(
    "text, why",
    [
        ("dataset,rate,seed,method,auc\ndigits,0.3,0,vm,0.9\ndigits,0.3,1,v", "empty"),  # killed mid-line
        ("dataset,rate,seed,method,auc\ndigits,0.3,0,vm,0.9\ndigits,0.3,0,vm,0.8\n", "repeats"),
        ("dataset,seed,method,auc\ndigits,0,vm,0.9\n", "lacks"),  # an older schema
        ('dataset,rate,seed,method,auc\n"digits,0.3,0,vm,0.9\n', "parsed"),  # unbalanced quote
    ],
)
def test_a_corrupt_file_is_moved_aside_and_rebuilt(tmp_path, text, why):
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.warns(CorruptResultsWarning, match=why):
        table = ResultsTable(path, KEY, required=["auc"])
    assert len(table) == 0 and not path.exists()
    aside = list(tmp_path.glob("t.csv.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text() == text  # kept for the user to inspect
    table.add([_row(0, "vm")])
    assert len(pd.read_csv(path)) == 1


def test_an_empty_file_is_just_nothing_done(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("")
    assert len(ResultsTable(path, KEY)) == 0


def _writer(path: str, name: str, n: int) -> None:
    table = ResultsTable(path, KEY, required=["auc"])  # loaded once, as an experiment does
    for seed in range(n):
        table.add([_row(seed, name)])


def test_concurrent_writers_keep_each_others_rows(tmp_path):
    """Two processes adding rows one at a time to one table (ifkit reproduce --jobs 2): none is lost."""
    import multiprocessing as mp

    path = tmp_path / "t.csv"
    ResultsTable(path, KEY, required=["auc"]).add([_row(99, "before")])
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(path), name, 40)) for name in ("vm", "fvm")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    df = pd.read_csv(path)
    assert len(df) == 81 and not df.duplicated(subset=KEY).any()
    assert sorted(df.groupby("method").size().to_dict().items()) == [("before", 1), ("fvm", 40), ("vm", 40)]


def test_a_stale_table_does_not_resurrect_replaced_rows(tmp_path):
    path = tmp_path / "t.csv"
    first = ResultsTable(path, KEY, required=["auc"])
    first.add([_row(0, "vm", 0.5)])
    second = ResultsTable(path, KEY, required=["auc"])
    second.add([_row(0, "vm", 0.7)])  # replaces the row
    first.add([_row(1, "vm", 0.6)])  # first still holds 0.5 in memory: the file's 0.7 wins
    df = pd.read_csv(path).set_index("seed")["auc"]
    assert df.to_dict() == {0: 0.7, 1: 0.6} and first.has(dataset="digits", rate=0.3, seed=1, method="vm")
