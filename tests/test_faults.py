"""Faults from outside: crafted model and data files, signals to `ifkit reproduce --jobs 2`, a full disk.

* No code runs from a loaded file: each loading path gets a pickle whose ``__reduce__`` would write a marker
  file; the marker is never written and the error names --trust-pickle.
* Workers die with their parent: SIGTERM, SIGINT or SIGKILL to the parent of `ifkit reproduce --jobs 2` leaves
  no worker running or writing within a few seconds; SIGINT/SIGTERM end with one line and 128 + signal.
* A full disk (OSError ENOSPC while writing a result) ends with one line and leaves no temp file.
"""

from __future__ import annotations

import ast
import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import ifkit
from ifkit import cli, experiments
from ifkit.modelfile import UntrustedFileError, load_model, load_tensors, save_model
from ifkit.models import MLP
from ifkit.results import ResultsTable

ROOT = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling this runs a shell command that creates ``marker`` (what a crafted model.pt would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _data() -> dict:
    g = torch.Generator().manual_seed(0)
    X, Xv = torch.randn(12, 4, generator=g), torch.randn(5, 4, generator=g)
    return {"X_train": X, "y_train": torch.arange(12) % 2, "X_val": Xv, "y_val": torch.arange(5) % 2}


@pytest.fixture
def files(tmp_path):
    """A good model and data file, the same with a payload inside, and the marker the payload would write."""
    torch.manual_seed(0)
    model = MLP(4, (3,), 2).double().eval()
    marker = tmp_path / "pwned"
    save_model(model, tmp_path / "model.pt", args=(4, (3,), 2))
    torch.save(_data(), tmp_path / "data.pt")
    torch.save(Payload(marker), tmp_path / "evil_model.pt")  # a "whole model" that is a payload
    torch.save({**_data(), "X_train": Payload(marker)}, tmp_path / "evil_data.pt")
    # plain data naming a function to call instead of a model class: weights_only loads it, the loader refuses it
    torch.save({"format": "ifkit.model/1", "module": "os:system", "args": [f"touch {marker}"], "kwargs": {},
                "state_dict": {}}, tmp_path / "evil_spec.pt")
    torch.save({"format": "ifkit.model/1", "module": "subprocess:Popen", "args": [["touch", str(marker)]],
                "kwargs": {}, "state_dict": {}}, tmp_path / "evil_class.pt")
    return model, tmp_path, marker


@pytest.mark.parametrize("load, name", [(load_model, "evil_model.pt"), (load_tensors, "evil_model.pt"),
                                        (load_tensors, "evil_data.pt"), (ifkit.load_model, "evil_model.pt")])
def test_a_pickle_payload_never_runs(files, load, name):
    _, folder, marker = files
    with pytest.raises(UntrustedFileError, match="--trust-pickle") as exc:
        load(folder / name)
    assert "posix.system" in str(exc.value) and not marker.exists()


@pytest.mark.parametrize("name, why", [("evil_spec.pt", "os:system, which is not a torch.nn.Module class"),
                                       ("evil_class.pt", "subprocess:Popen, which is not a torch.nn.Module")])
def test_a_model_file_naming_a_function_is_refused(files, name, why):
    _, folder, marker = files
    with pytest.raises(UntrustedFileError, match=why):
        load_model(folder / name)
    assert not marker.exists()


@pytest.mark.parametrize("flag", ["--model", "--data"])
def test_score_shards_refuses_a_payload_and_names_the_flag(files, flag, capsys):
    _, folder, marker = files
    paths = {"--model": folder / "model.pt", "--data": folder / "data.pt", flag: folder / f"evil_{flag[2:]}.pt"}
    with pytest.raises(SystemExit) as exc:
        cli.main(["score-shards", "--model", str(paths["--model"]), "--data", str(paths["--data"]),
                  "--method", "graddot", "--out", str(folder / "s.csv")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--trust-pickle" in err and "runs arbitrary code" in err
    assert not marker.exists() and not (folder / "s.csv").exists()


def test_trust_pickle_loads_a_whole_model_and_means_running_its_code(files, capsys):
    model, folder, marker = files
    torch.save(model, folder / "whole.pt")  # the old way: a pickled module
    args = ["score-shards", "--model", str(folder / "whole.pt"), "--data", str(folder / "data.pt"),
            "--method", "graddot", "--out", str(folder / "s.pt")]
    with pytest.raises(SystemExit):
        cli.main(args)  # refused without the flag
    assert cli.main([*args, "--trust-pickle"]) == 0
    d = _data()
    torch.testing.assert_close(torch.load(folder / "s.pt", weights_only=True),
                               ifkit.score("graddot", model, (d["X_train"], d["y_train"]), (d["X_val"], d["y_val"])))
    load_tensors(folder / "evil_model.pt", trust_pickle=True)  # what the flag's help warns about
    assert marker.exists()
    helptext = " ".join(cli.build_parser()._subparsers._group_actions[0].choices["score-shards"].format_help().split())
    assert "--trust-pickle" in helptext and "RUNS ARBITRARY CODE" in helptext


def test_save_model_round_trip_keeps_dtype_and_outputs(files):
    model, folder, _ = files
    back = load_model(folder / "model.pt")
    assert type(back) is MLP and next(back.parameters()).dtype == torch.float64 and not back.training
    x = torch.randn(3, 4, dtype=torch.float64)
    torch.testing.assert_close(back(x), model(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="does not match the saved parameters"):
        save_model(model, folder / "wrong.pt", args=(4, (5,), 2))
    assert not list(folder.glob("*wrong*"))

    class Local(torch.nn.Linear):
        pass

    with pytest.raises(ValueError, match="move the class into an importable module"):
        save_model(Local(2, 2), folder / "local.pt", args=(2, 2))


def test_every_torch_load_in_the_library_is_weights_only():
    """grep, by syntax tree: weights_only=True, or (one place) weights_only=False behind trust_pickle."""
    found = []
    for path in sorted((ROOT / "ifkit").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("torch.load", "torch.jit.load"):
                kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
                found.append((path.relative_to(ROOT).as_posix(), kw.get("weights_only")))
    unsafe = [f for f in found if f[1] != "True"]
    assert unsafe == [("ifkit/modelfile.py", "False")], found
    source = (ROOT / "ifkit" / "modelfile.py").read_text()
    assert "if trust_pickle:\n        return torch.load(path, weights_only=False" in source


# ------------------------------------------------------------------------------------------- one process
@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setattr(experiments, "EXPERIMENTS", {})
    monkeypatch.setattr(experiments, "PARTS", {})
    monkeypatch.setattr(experiments, "discover", lambda: experiments.EXPERIMENTS)
    monkeypatch.delenv("IFKIT_FAST", raising=False)
    return experiments.register


def test_a_full_disk_is_one_line_and_no_temp_file(registry, tmp_path, monkeypatch, capsys):
    to_csv = pd.DataFrame.to_csv

    @registry("writes")
    def writes(fast: bool, seeds: int, out: Path) -> None:
        table = ResultsTable(out / "t.csv", ["seed"], required=["auc"])
        table.add([{"seed": 0, "auc": 0.5}])

        def full(self, path=None, **kw):  # half a file, then ENOSPC
            if path is None:
                return to_csv(self, **kw)
            Path(path).write_text("seed,au")
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(pd.DataFrame, "to_csv", full)
        table.add([{"seed": 1, "auc": 0.6}])

    assert cli.main(["reproduce", "writes", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no space left on the device while writing" in err[0] and "t.csv" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"]  # no temp file
    assert (tmp_path / "t.csv").read_text() == "seed,auc\n0,0.5\n"  # the previous, complete table


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 64 KiB tmpfs (needs root and mount); the test is skipped where it cannot be made."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a real full disk needs root to mount a small tmpfs")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()[:200]}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_a_real_full_disk_is_one_line_and_no_temp_file(registry, tiny_disk, capsys):
    """The same contract on a disk that really fills up: 64 KiB, a table that outgrows it."""
    @registry("fills")
    def fills(fast: bool, seeds: int, out: Path) -> None:
        table = ResultsTable(out / "t.csv", ["seed"], required=["auc"])
        for start in range(0, 100_000, 500):  # ~15 bytes a row: the disk is full long before the loop ends
            table.add([{"seed": i, "auc": 0.5} for i in range(start, start + 500)])

    assert cli.main(["reproduce", "fills", "--out", str(tiny_disk)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no space left on the device while writing" in err[0] and "t.csv" in err[0], err
    left = sorted(p.name for p in tiny_disk.iterdir() if not p.name.startswith("."))
    assert left == ["t.csv"], left  # no temp file
    df = pd.read_csv(tiny_disk / "t.csv")  # the last complete table, readable
    assert len(df) % 500 == 0 and len(df) > 0 and df["seed"].tolist() == list(range(len(df)))


@pytest.mark.parametrize("how, code", [("ctrl-c", 130), ("sigterm", 143)])
def test_an_interrupt_in_one_process_is_one_line(registry, tmp_path, capsys, how, code):
    @registry("interrupted")
    def interrupted(fast: bool, seeds: int, out: Path) -> None:
        if how == "ctrl-c":
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends

    assert cli.main(["reproduce", "interrupted", "--out", str(tmp_path)]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stopped by SIG" in err[0] and "run the same command again" in err[0], err


# ------------------------------------------------------------------------------------ workers die with parent
SITE = '''
import os, time
from pathlib import Path
from ifkit import experiments

experiments.discover = lambda: experiments.EXPERIMENTS  # only the two below: workers start in ~1 s


def _slow(name):
    def run(fast, seeds, out):
        from ifkit.results import ResultsTable

        table = ResultsTable(Path(out) / f"{name}.csv", ["step"], required=["value"])
        Path(out, f"{name}.pid").write_text(str(os.getpid()))
        for step in range(100000):  # writes a row every 20 ms until stopped
            table.add([{"step": step, "value": float(step)}])
            time.sleep(0.02)
    return run


for _name in ("slow-a", "slow-b"):
    experiments.register(_name)(_slow(_name))
'''


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie is dead, only not yet reaped by its new parent


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc to see which workers are alive")
@pytest.mark.timeout(120)
@pytest.mark.slow  # three fresh interpreters (the command and its two workers) per signal
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=lambda s: s.name)
def test_no_worker_survives_its_parent(tmp_path, sig):
    site, out = tmp_path / "site", tmp_path / "out"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(SITE))
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1"}
    parent = subprocess.Popen([sys.executable, "-m", "ifkit.cli", "reproduce", "slow-a,slow-b", "--jobs", "2",
                               "--out", str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    pids = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not all((out / f"{n}.csv").is_file() for n in ("slow-a", "slow-b")):
            assert parent.poll() is None, parent.communicate()
            time.sleep(0.05)
        pids = [int((out / f"{n}.pid").read_text()) for n in ("slow-a", "slow-b")]
        assert all(map(_alive, pids))  # both running and writing
        parent.send_signal(sig)
        stdout, stderr = parent.communicate(timeout=30)
        stopped = time.monotonic()
        while any(map(_alive, pids)) and time.monotonic() - stopped < 5:
            time.sleep(0.05)
        assert not any(map(_alive, pids)), f"workers still running 5 s after the parent ended: {pids}"
        sizes = [(out / f"{n}.csv").stat().st_size for n in ("slow-a", "slow-b")]
        time.sleep(0.3)
        assert sizes == [(out / f"{n}.csv").stat().st_size for n in ("slow-a", "slow-b")]  # nobody writes
        assert not list(out.glob(".*.tmp"))  # stopped between writes or cleaned up
        if sig != signal.SIGKILL:
            lines = stderr.strip().splitlines()
            assert parent.returncode == 128 + sig and len(lines) == 1 and f"stopped by {sig.name}" in lines[0], stderr
    finally:
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()
