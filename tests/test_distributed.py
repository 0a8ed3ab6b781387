"""Scale-out on torch.distributed: 2 gloo ranks on loopback give the single-process scores.

The query side runs whole on every rank and only the per-training-point pass is sharded (ifkit/core/distributed.py),
so in float64 the distributed scores equal the single-process ones up to the summation order inside the final
pass's chunks: tolerances.DISTRIBUTED, rtol 1e-10 (we see ~1e-15).  One spawn runs every distributed case (process start-up and
`import torch` dominate the cost), the tests below compare its saved results.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tolerances import DISTRIBUTED

import ifkit
from ifkit.core import distributed as D
from ifkit.data import make_split
from ifkit.models import MLP

WORLD = 2
N_TRAIN = 101  # odd: shards of 50 and 51 rows
METHODS = {  # fast settings; the curvature of if-cg and datainf still uses the whole training set
    "graddot": {},
    "if-cg": dict(damping=0.01, iters=30, tol=1e-6),
    "datainf": {},
    "fvm": dict(flat_steps=20),
}
PAIRWISE = {"if-cg": dict(damping=0.01, iters=30, tol=1e-6)}  # a (n_queries, n_train) table gathered along its columns


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _problem():
    """Digits with 30% symmetric noise and a float64 MLP after a few full-batch Adam steps (fixed seeds)."""
    split = make_split("digits", n_train=N_TRAIN, n_val=30, noise="symmetric", rate=0.3, seed=0)
    X, y = split.X_train.double(), split.y_train
    Xv, yv = split.X_val.double(), split.y_val
    torch.manual_seed(0)
    model = MLP(64, (16,), 10).double()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(50):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    return model.eval(), (X, y), (Xv, yv)


def _init(rank: int, port: int, timeout_s: float) -> None:
    torch.set_num_threads(1)  # 2 ranks on 2 cores
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=timeout_s))


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    """(model, train, val) built once here and saved: workers load it instead of paying for sklearn + training."""
    path = tmp_path_factory.mktemp("problem") / "problem.pt"
    made = _problem()
    ifkit.save_model(made[0], path.with_name("model.pt"), args=(64, (16,), 10))  # plain data, loaded weights_only
    torch.save(made[1:], path)
    return made, str(path)


def _load_problem(problem_path: str):
    """(model, train, val) from the files the fixture wrote, read as plain data (weights_only=True)."""
    train, val = torch.load(problem_path, weights_only=True)
    return ifkit.load_model(Path(problem_path).with_name("model.pt")), train, val


def _scores_worker(rank: int, port: int, folder: str, problem_path: str) -> None:
    _init(rank, port, 30)
    try:
        model, train, val = _load_problem(problem_path)
        out = {m: ifkit.score(m, model, train, val, **o) for m, o in METHODS.items()}
        out.update({f"pairwise/{m}": ifkit.pairwise(m, model, train, val, **o) for m, o in PAIRWISE.items()})
        out["opt-out"] = ifkit.score("graddot", model, train, val, distributed=False)
        try:  # a rank that passes its own subset: every rank must refuse, none may hang
            ifkit.score("graddot", model, (train[0][rank:], train[1][rank:]), val)
        except ValueError as e:
            out["mismatch"] = str(e)
        torch.save(out, Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, problem):
    """(single-process results, [rank 0 results, rank 1 results])."""
    folder = tmp_path_factory.mktemp("dist")
    (model, train, val), path = problem
    mp.spawn(_scores_worker, args=(_free_port(), str(folder), path), nprocs=WORLD, join=True)
    single = {m: ifkit.score(m, model, train, val, **o) for m, o in METHODS.items()}
    single.update({f"pairwise/{m}": ifkit.pairwise(m, model, train, val, **o) for m, o in PAIRWISE.items()})
    return single, [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.slow  # two gloo ranks in fresh processes (one spawn for every case)
@pytest.mark.timeout(120)
@pytest.mark.parametrize("key", [*METHODS, *(f"pairwise/{m}" for m in PAIRWISE)])
def test_distributed_equals_single_process(runs, key):
    single, ranks = runs
    for out in ranks:  # every rank returns the full result, in the original order
        assert out[key].shape == single[key].shape
        torch.testing.assert_close(out[key], single[key], **DISTRIBUTED)


@pytest.mark.slow  # shares the spawn above
@pytest.mark.timeout(120)
def test_opt_out_and_mismatch(runs):
    single, ranks = runs
    for out in ranks:
        torch.testing.assert_close(out["opt-out"], single["graddot"], **DISTRIBUTED)
        assert "ranks passed different training sets" in out["mismatch"] and "[101, 100]" in out["mismatch"]


@pytest.mark.parametrize("n", [0, 1, 2, 7, 100, 101])
@pytest.mark.parametrize("size", [1, 2, 3, 8])
def test_shards_cover_every_row_once(n, size):
    slices = [D.shard(n, r, size) for r in range(size)]
    assert [i for s in slices for i in range(n)[s]] == list(range(n))
    assert max(s.stop - s.start for s in slices) - min(s.stop - s.start for s in slices) <= 1


def test_no_process_group():
    assert D.world(None) is None and D.world(False) is None
    with pytest.raises(ValueError, match="torch.distributed is not initialised"):
        D.world(True)
    with pytest.raises(TypeError, match="distributed= takes"):
        D.world("yes")


# ----------------------------------------------------------------------------------------------------- failures


def _failing_worker(rank: int, port: int, folder: str, problem_path: str) -> None:
    """Rank 1 gets a NaN input and raises in validation; rank 0 goes on and waits for it in a collective."""
    try:
        _init(rank, port, 3)
        model, (X, y), val = _load_problem(problem_path)
        if rank == 1:
            X = X.clone()
            X[3] = float("nan")
        ifkit.score("graddot", model, (X, y), val)
    except Exception as e:
        (Path(folder) / f"rank{rank}.err").write_text(f"{type(e).__name__}: {e}")
        raise


@pytest.mark.timeout(60)
@pytest.mark.slow  # two fresh rank processes
def test_failing_rank_fails_the_run(tmp_path, problem):
    # Plain processes, not mp.spawn (which would SIGTERM rank 0 as soon as rank 1 dies): this checks that the
    # surviving rank ends by itself, through the process-group timeout or the closed connection, and says why.
    ctx = mp.get_context("spawn")
    port, start = _free_port(), time.perf_counter()
    procs = [ctx.Process(target=_failing_worker, args=(r, port, str(tmp_path), problem[1])) for r in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(45)
    assert all(p.exitcode not in (0, None) for p in procs), [p.exitcode for p in procs]  # both failed, none hung
    assert time.perf_counter() - start < 45
    err0, err1 = ((tmp_path / f"rank{r}.err").read_text() for r in range(WORLD))
    assert err1.startswith("ValueError: train inputs contain NaN/inf") and "indices [3]" in err1
    assert "all_gather failed on rank 0 of 2" in err0 and "Another rank most likely raised" in err0


# ------------------------------------------------------------------------------------------------ the command


@pytest.mark.slow  # torchrun and two fresh rank processes
@pytest.mark.timeout(120)
def test_score_shards_under_torchrun(tmp_path, problem):
    (model, (X, y), (Xv, yv)), _ = problem
    ifkit.save_model(model, tmp_path / "model.pt", args=(64, (16,), 10))  # plain data: no pickled code
    torch.save({"X_train": X, "y_train": y, "X_val": Xv, "y_val": yv}, tmp_path / "data.pt")
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nnodes", "1", "--nproc-per-node", str(WORLD), "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "-m", "ifkit.cli", "score-shards", "--model", str(tmp_path / "model.pt"),
           "--data", str(tmp_path / "data.pt"), "--method", "if-cg", "--damping", "0.01", "--iters", "30",
           "--tol", "1e-6", "--out", str(tmp_path / "scores.csv"), "--timeout", "30"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=100, env=env, check=False)
    # a rank that aborts ends its stderr with a long list of extension modules: show the lines that say why
    why = [line for line in done.stderr.splitlines() if any(w in line for w in ("Error", "error", "Fatal", "terminate"))]
    assert done.returncode == 0, "\n".join(why[-40:]) + "\n...\n" + done.stderr[-1500:]
    assert "101 scores on 2 rank(s)" in done.stdout
    lines = (tmp_path / "scores.csv").read_text().splitlines()
    assert lines[0] == "index,score" and len(lines) == 1 + N_TRAIN
    got = torch.tensor([float(line.split(",")[1]) for line in lines[1:]], dtype=torch.float64)
    want = ifkit.score("if-cg", model, (X, y), (Xv, yv), damping=0.01, iters=30, tol=1e-6)
    torch.testing.assert_close(got, want, **DISTRIBUTED)
    assert not list(tmp_path.glob(".*.tmp"))  # the temp file was renamed into place


def test_score_shards_in_one_process(tmp_path, problem, capsys):
    # Without torchrun the command scores in this process; .pt output; bad --data names the missing keys.
    from ifkit import cli

    (model, (X, y), (Xv, yv)), _ = problem
    ifkit.save_model(model, tmp_path / "model.pt", args=(64, (16,), 10))
    torch.save({"X_train": X, "y_train": y, "X_val": Xv, "y_val": yv}, tmp_path / "data.pt")
    args = ["score-shards", "--model", str(tmp_path / "model.pt"), "--data", str(tmp_path / "data.pt"),
            "--method", "graddot", "--out", str(tmp_path / "s.pt")]
    assert cli.main(args) == 0
    torch.testing.assert_close(torch.load(tmp_path / "s.pt", weights_only=True),
                               ifkit.score("graddot", model, (X, y), (Xv, yv)))
    torch.save({"X_train": X}, tmp_path / "bad.pt")
    with pytest.raises(SystemExit) as exc:
        cli.main([*args[:4], str(tmp_path / "bad.pt"), *args[5:]])
    assert exc.value.code == 2
    assert "missing: y_train, X_val, y_val" in capsys.readouterr().err
