"""benchmarks/compile_trial.py in a tiny configuration: the row schema, and compiled outputs equal eager ones."""

import importlib.util
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compile_trial.py"


def _load():
    spec = importlib.util.spec_from_file_location("compile_trial", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def trial():
    """The script as a module (loading it compiles nothing)."""
    return _load()


def _skip_unless_the_platform_compiles():
    """Skip when this platform cannot run torch.compile at all (inductor needs a C++ compiler on CPU; some
    Python/torch builds do not support dynamo): then a failed trial says nothing about ifkit's kernels."""
    try:
        torch._dynamo.reset()
        torch.compile(lambda x: (x.sin() + 1).sum())(torch.randn(4))
    except Exception as e:  # noqa: BLE001 - any failure of the probe means the platform cannot compile
        pytest.skip(f"torch.compile unavailable on this platform: {type(e).__name__}: {str(e)[:200]}")
    finally:
        torch._dynamo.reset()


@pytest.mark.slow  # torch.compile's own start-up and C++ build; already the smallest kernel
def test_tiny_trial_rows_and_correctness(trial):
    if not any(shutil.which(cc) for cc in ("g++", "c++", "clang++", "gcc", "cc")):
        pytest.skip("torch.compile unavailable: no C/C++ compiler on PATH for inductor's CPU kernels")
    rows = trial.run_trial(models=("mlp",), n=64, kernels=("jvp-dots",), ks=(1,), repeats=1, hidden=(16,),
                           progress=False, startup=False)
    assert len(rows) == 1
    row = rows[0]
    if row["status"] == "failed":  # probe the platform only then: a second compile costs as much as the trial
        _skip_unless_the_platform_compiles()
    assert set(row) == set(trial.COLUMNS)
    assert (row["kernel"], row["model"], row["n"], row["k"]) == ("jvp-dots", "mlp", 64, 1)
    assert row["status"] == "ok", row["note"]
    assert row["max_abs_diff"] < 1e-5  # compiled dot products equal eager ones up to float32 rounding
    for col in ("eager_s", "compiled_s", "speedup"):
        assert math.isfinite(row[col]) and row[col] > 0, col
    assert row["compile_s"] >= 0
    assert "amortised=" in row["note"] and "recompile_warm_s=" in row["note"]


def test_kernels_call_ifkit_as_ifkit_does(trial):
    """The eager kernel is ifkit's own function: one pass of jvp-dots gives func.grad_dots' numbers."""
    from ifkit.core import func

    (kernel,) = trial.build_kernels("mlp", 64, ["jvp-dots"], ks=(1,), hidden=(16,))
    got = torch.cat([kernel.finish(kernel.fn(*args)) for args in kernel.calls])
    V, X, y = kernel.calls[0][0], *trial._data(64, 0)
    torch.manual_seed(0)
    prob = func.make_problem(trial._model("mlp", (16,)))
    torch.testing.assert_close(got, func.grad_dots(prob, X, y, V))
