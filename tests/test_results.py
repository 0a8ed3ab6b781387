"""ResultsTable: atomic writes, resume by key, every read checked against the table's schema; damaged rows or
unreadable files moved aside under the folder's lock (never mixed in, never a raw decode or type error)."""

from __future__ import annotations

import errno
import multiprocessing as mp
import random
import shutil
import warnings
from pathlib import Path

import pandas as pd
import pytest

import ifkit
from ifkit.results import SCHEMAS, CorruptResultsWarning, ResultsTable, write_atomic
from ifkit.results.tables import METHOD_NAMES, STYLES

ROOT = Path(__file__).resolve().parents[1]
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


def test_a_full_disk_leaves_the_old_table_and_no_temp_file(tmp_path, monkeypatch):
    table = ResultsTable(tmp_path / "t.csv", KEY, required=["auc"])
    table.add([_row(0, "vm")])
    before = (tmp_path / "t.csv").read_bytes()

    to_csv = pd.DataFrame.to_csv

    def full(self, path=None, **kw):  # half a file written, then the disk is full
        if path is None:
            return to_csv(self, **kw)
        Path(path).write_text("dataset,ra")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    with pytest.raises(OSError) as exc:
        table.add([_row(1, "vm")])
    assert exc.value.errno == errno.ENOSPC and exc.value.filename == str(tmp_path / "t.csv")
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"] and (tmp_path / "t.csv").read_bytes() == before


def test_an_empty_file_is_just_nothing_done(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("")
    assert len(ResultsTable(path, KEY)) == 0


# ---------------------------------------------------------------------------------------- damage, row by row
DET = SCHEMAS["detection.csv"]
HEADER, *LINES = (ROOT / "results" / "detection.csv").read_text().splitlines()[:5]  # 4 real rows


def _cut_after_required(lines):  # a row cut after its key and required columns (pandas pads it with NaN)
    return lines[:1] + [",".join(lines[1].split(",")[:9])] + lines[2:], 2


def _cut_mid_digits(lines):  # the last value cut mid-digits and no line end (an interrupted write)
    return lines[:-1] + [lines[-1][:-2]], 4


def _garbled_key(lines):
    return lines[:1] + [lines[1].replace(",graddot,", ",gradbot,")] + lines[2:], 2


def _garbled_seed(lines):
    return lines[:1] + [lines[1].replace("0.2,0,300", "0.2,O,300")] + lines[2:], 2


def _text_auc(lines):  # a number where a word got in: every rerun used to fail with a raw TypeError
    fields = lines[1].split(",")
    fields[6] = "abc"
    return lines[:1] + [",".join(fields)] + lines[2:], 2


def _control_bytes(lines):
    return lines[:2] + [lines[2].replace("tracin", "tra\x00in")] + lines[3:], 3


DAMAGE = {  # name: (make, what the warning says about the row)
    "row cut after the required columns": (_cut_after_required, "has 9 fields where the header has 18"),
    "number cut mid-digits": (_cut_mid_digits, "the file ends inside this line"),
    "garbled method": (_garbled_key, "method: 'gradbot' is not a valid value"),
    "garbled seed": (_garbled_seed, "seed: 'O' is not a number"),
    "non-numeric auc": (_text_auc, "auc: 'abc' is not a number"),
    "control characters": (_control_bytes, "method holds control characters"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_row_is_moved_aside_and_the_rest_kept(tmp_path, damage):
    make, why = DAMAGE[damage]
    lines, bad = make(LINES)  # bad: 1-based row number among the data rows
    text = "\n".join([HEADER, *lines]) + ("" if damage == "number cut mid-digits" else "\n")
    path = tmp_path / "detection.csv"
    path.write_text(text)
    with pytest.warns(CorruptResultsWarning) as rec:
        table = ResultsTable(path, DET.key, required=DET.required)
    message = str(rec[0].message)
    assert str(path) in message and f"line {bad + 1}: {why}" in message, message  # names the file and the row
    assert len(table) == 3 and table.frame["auc"].dtype == float and table.frame["seed"].dtype == int
    aside = list(tmp_path.glob("detection.csv.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text() == f"{HEADER}\n{lines[bad - 1]}\n"
    kept = [line for i, line in enumerate(lines, 1) if i != bad]
    assert path.read_text() == "\n".join([HEADER, *kept]) + "\n"  # the good rows byte for byte
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = ResultsTable(path, DET.key, required=DET.required)  # a rerun: clean now
    assert len(again) == 3 and again.frame["auc"].mean() > 0  # numbers are numbers (no TypeError)
    fields = dict(zip(HEADER.split(","), LINES[bad - 1].split(",")))
    assert not again.has(**{k: fields[k] for k in DET.key})  # the moved row is recomputed


def test_a_repeated_key_moves_every_copy(tmp_path):
    path = tmp_path / "detection.csv"
    path.write_text("\n".join([HEADER, *LINES, LINES[1].replace(",0.715", ",0.716")]) + "\n")
    with pytest.warns(CorruptResultsWarning, match=r"line 3: repeats the key .*line 6: repeats the key"):
        table = ResultsTable(path, DET.key, required=DET.required)
    assert len(table) == 3 and not table.has(dataset="fashion", model="mlp", noise="symmetric", rate=0.2, seed=0,
                                             method="graddot", n_val=300)


@pytest.mark.parametrize("text, why", [
    (f"{HEADER.replace('rate,', '')}\nfashion,symmetric,0,300,loss,0.7,0.3,0.2\n", "lacks the column"),  # older
    (f"{HEADER.replace('method', 'met?od')}\n" + "\n".join(LINES) + "\n", "lacks the column"),  # garbled header
    (f"{HEADER.replace('seconds', 'sec%nds')}\n" + "\n".join(LINES) + "\n", "garbled column name"),
])
def test_an_unusable_header_moves_the_whole_file(tmp_path, text, why):
    path = tmp_path / "detection.csv"
    path.write_text(text)
    with pytest.warns(CorruptResultsWarning, match=why):
        table = ResultsTable(path, DET.key, required=DET.required)
    assert len(table) == 0 and not path.exists()
    aside = list(tmp_path.glob("detection.csv.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text() == text  # kept for the user to inspect


def _random_bytes(seed: int) -> bytes:
    data = random.Random(seed).randbytes(4000)
    return data if b"\xff" in data else data + b"\xff"  # never valid UTF-8


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes_are_moved_aside_not_a_decode_error(tmp_path, seed):
    path = tmp_path / "detection.csv"
    path.write_bytes(_random_bytes(seed))
    with pytest.warns(CorruptResultsWarning, match="is not UTF-8 text"):
        table = ResultsTable(path, DET.key, required=DET.required)
    assert len(table) == 0 and not path.exists()
    table.add([dict(zip(HEADER.split(","), LINES[0].split(",")))])  # the run goes on
    assert len(ResultsTable(path, DET.key, required=DET.required)) == 1


def test_two_corruptions_in_one_second_keep_both_copies(tmp_path):
    path = tmp_path / "t.csv"
    for text in ("dataset,seed\nx,0\n", "method,auc\nvm,1\n"):  # lack the key column: moved whole
        path.write_text(text)
        with pytest.warns(CorruptResultsWarning):
            ResultsTable(path, KEY, required=["auc"])
    aside = sorted(p.read_text() for p in tmp_path.glob("t.csv.corrupt-*"))
    assert aside == ["dataset,seed\nx,0\n", "method,auc\nvm,1\n"]


def _open(path: str, barrier) -> None:
    barrier.wait()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CorruptResultsWarning)
        ResultsTable(path, DET.key, required=DET.required)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("damage", ["random bytes", "non-numeric auc"])
def test_twenty_processes_opening_one_damaged_table(tmp_path, damage):
    """They all start together: exactly one moves the damage aside, none crashes, the good rows stay."""
    path = tmp_path / "detection.csv"
    if damage == "random bytes":
        path.write_bytes(_random_bytes(0))
    else:
        path.write_text("\n".join([HEADER, *_text_auc(LINES)[0]]) + "\n")
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(20)
    procs = [ctx.Process(target=_open, args=(str(path), barrier)) for _ in range(20)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0] * 20
    assert len(list(tmp_path.glob("detection.csv.corrupt-*"))) == 1
    assert len(ResultsTable(path, DET.key, required=DET.required)) == (0 if damage == "random bytes" else 3)


# ------------------------------------------------------------------------------------------ writes are checked


@pytest.mark.parametrize("change, why", [
    ({"auc": "abc"}, "auc: 'abc' is not a number"),
    ({"method": "fvn"}, "method: 'fvn' is not a valid value"),
    ({"auc": 1.5}, r"auc: 1.5 is outside \[0.0, 1.0\]"),
])
def test_add_refuses_a_row_its_schema_does_not_take(tmp_path, change, why):
    table = ResultsTable(tmp_path / "detection.csv", DET.key, required=DET.required)
    row = dict(zip(HEADER.split(","), LINES[0].split(",")))
    with pytest.raises(ValueError, match=why):
        table.add([{**row, **change}])
    assert not (tmp_path / "detection.csv").exists()
    with pytest.raises(ValueError, match="repeats the key"):
        table.add([row, row])


# ----------------------------------------------------------------------------- the kit's tables and schemas


@pytest.mark.parametrize("name", sorted(n for n in SCHEMAS if (ROOT / "results" / n).is_file()))
def test_every_committed_table_passes_its_schema(tmp_path, name):
    shutil.copy(ROOT / "results" / name, tmp_path / name)  # a copy: a failing check moves files
    schema = SCHEMAS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = ResultsTable(tmp_path / name, schema.key, required=schema.required)
    assert len(table) == len(pd.read_csv(ROOT / "results" / name)) > 0


def test_generation_csv_reads_through_the_public_api(tmp_path):
    from ifkit.experiments import gen_image, gen_text, generation_results

    shutil.copy(ROOT / "results" / "generation.csv", tmp_path / "generation.csv")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no committed row may be moved aside
        table = generation_results.table(tmp_path, (*gen_text.TASKS, gen_image.TASK))
    assert table.has(task="style", variant="protocol", seed=0, method="fvm")
    assert table.has(task="sentence", variant="harder", seed=1, method="graddot")
    assert table.has(task="sentence", variant="protocol-init", seed=0, method="datainf")  # the control


def test_the_experiments_keys_and_values_are_in_the_schemas():
    from ifkit.data.noise import NOISE_KINDS
    from ifkit.experiments import (
        ablation,
        detection,
        gen_image,
        gen_text,
        generation_results,
        relabel,
        theory,
    )

    for mod, file in ((detection, "detection.csv"), (relabel, "relabel.csv"), (ablation, "ablation.csv"),
                      (theory, "theory.csv"), (generation_results, "generation.csv")):
        assert getattr(mod, "FILENAME", file) == file
        assert tuple(mod.KEY) == SCHEMAS[file].key, file
        assert set(getattr(mod, "REQUIRED", ())) <= set(SCHEMAS[file].required), file
    assert tuple(detection.DYN_KEY) == SCHEMAS[detection.DYNAMICS].key
    method = SCHEMAS["detection.csv"].columns["method"]
    names = {*ifkit.METHODS, *detection.INFLUENCE, *detection.REFERENCE, *relabel.Config.methods, *gen_text.FULL.methods,
             *theory.FULL.methods, *(m for f in ablation.FULL.factors + ablation.FAST.factors for m in f.methods)}
    assert set(ifkit.METHODS) <= set(METHOD_NAMES)
    assert [m for m in names if method.problem(m)] == []
    factor = SCHEMAS["ablation.csv"].columns["factor"]
    assert [f.factor for f in ablation.FULL.factors if factor.problem(f.factor)] == []
    assert set(NOISE_KINDS) <= set(SCHEMAS["detection.csv"].columns["noise"].values)
    assert set(gen_text.VARIANTS) | set(gen_image.VARIANTS) <= set(SCHEMAS["generation.csv"].columns["variant"].values)
    assert set(gen_text.TASKS) | {gen_image.TASK} <= set(SCHEMAS["generation.csv"].columns["task"].values)
    assert set(gen_image.STYLES) <= set(STYLES)
    label = SCHEMAS["theory.csv"].columns["checkpoint"]
    assert not label.problem("train-step-0030") and not label.problem(f"l2-{1.0:.0e}") and label.problem("l2-x")


# ------------------------------------------------------------------------------------------ several writers


def _writer(path: str, name: str, n: int) -> None:
    table = ResultsTable(path, KEY, required=["auc"])  # loaded once, as an experiment does
    for seed in range(n):
        table.add([_row(seed, name)])


def test_concurrent_writers_keep_each_others_rows(tmp_path):
    """Two processes adding rows one at a time to one table (ifkit reproduce --jobs 2): none is lost."""
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
