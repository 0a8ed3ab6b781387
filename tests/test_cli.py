"""The `ifkit` command: parsing, experiment dispatch, figures, bench."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ifkit import cli, experiments
from ifkit.viz import figures, palette


@pytest.fixture
def registry(monkeypatch):
    """An isolated experiment registry holding one dummy experiment that records its calls."""
    calls = []
    monkeypatch.setattr(experiments, "EXPERIMENTS", {})
    monkeypatch.setattr(experiments, "PARTS", {})
    monkeypatch.setattr(experiments, "META", {})
    monkeypatch.setattr(experiments, "discover", lambda: experiments.EXPERIMENTS)

    @experiments.register("dummy")
    def dummy(fast: bool, seeds: int, out: Path) -> None:
        calls.append(("dummy", fast, seeds, out))

    @experiments.register("other")
    def other(fast: bool, seeds: int, out: Path) -> None:
        calls.append(("other", fast, seeds, out))

    monkeypatch.delenv("IFKIT_FAST", raising=False)
    return calls


def test_help(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "reproduce" in out and "figures" in out and "bench" in out


@pytest.fixture(scope="module")
def reproduce_help() -> subprocess.CompletedProcess:
    """`ifkit reproduce --help` through the installed entry point, as a user runs it (falls back to `python -m`
    outside a venv install), in a fresh interpreter: one start-up shared by the tests that read its text."""
    script = Path(sys.executable).with_name("ifkit")
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "ifkit.cli"]
    return subprocess.run([*cmd, "reproduce", "--help"], check=False, capture_output=True, text=True)


def test_console_script_help(reproduce_help):
    assert reproduce_help.returncode == 0, reproduce_help.stderr
    assert "--seeds" in reproduce_help.stdout


def test_unknown_experiment_lists_available(registry, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["reproduce", "nope"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown experiment 'nope'" in err and "dummy" in err and "other" in err and "all" in err
    assert registry == []


def test_dispatch_with_arguments(registry, tmp_path):
    assert cli.main(["reproduce", "dummy", "--fast", "--seeds", "4", "--out", str(tmp_path / "r")]) == 0
    assert registry == [("dummy", True, 4, tmp_path / "r")]
    assert (tmp_path / "r").is_dir()


def test_default_seeds_and_env_fast(registry, tmp_path, monkeypatch):
    cli.main(["reproduce", "dummy", "--out", str(tmp_path)])
    monkeypatch.setenv("IFKIT_FAST", "1")
    cli.main(["reproduce", "dummy", "--out", str(tmp_path)])
    assert registry == [
        ("dummy", False, cli.DEFAULT_SEEDS[False], tmp_path),
        ("dummy", True, cli.DEFAULT_SEEDS[True], tmp_path),
    ]


def test_all_runs_every_experiment(registry, tmp_path):
    assert cli.main(["reproduce", "all", "--seeds", "2", "--out", str(tmp_path)]) == 0
    assert registry == [("dummy", False, 2, tmp_path), ("other", False, 2, tmp_path)]


def test_bad_seeds(registry):
    with pytest.raises(SystemExit) as exc:
        cli.main(["reproduce", "dummy", "--seeds", "0"])
    assert exc.value.code == 2


def test_seeds_a_count_or_a_list(registry, tmp_path, capsys):
    """--seeds 3 stays a count; several numbers are the seeds themselves, for experiments that take a list."""
    @experiments.register("listed", seed_lists=True)
    def listed(fast: bool, seeds, out: Path) -> None:
        registry.append(("listed", fast, seeds, out))

    assert cli.main(["reproduce", "listed", "--seeds", "3", "--out", str(tmp_path)]) == 0
    assert cli.main(["reproduce", "listed", "--seeds", "0", "1", "2", "3", "4", "--out", str(tmp_path)]) == 0
    assert registry == [("listed", False, 3, tmp_path), ("listed", False, (0, 1, 2, 3, 4), tmp_path)]
    for bad in (["dummy", "--seeds", "0", "1"], ["listed", "--seeds", "1", "1"], ["listed", "--seeds", "-1", "2"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(["reproduce", *bad, "--out", str(tmp_path)])
        assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "take(s) a count of seeds" in err and "listed" in err and "distinct and >= 0" in err
    assert len(registry) == 2


def test_register_rejects_all_and_clashes(registry):
    with pytest.raises(ValueError, match="reserved"):
        experiments.register("all")(lambda fast, seeds, out: None)
    with pytest.raises(ValueError, match="already registered"):
        experiments.register("dummy")(lambda fast, seeds, out: None)


def test_bench_missing_module_is_a_clear_error(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "ifkit.bench" else real(name)
    )
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench"])
    assert exc.value.code == 2
    assert "not available yet" in capsys.readouterr().err


def test_figures_runs_producers_and_skips_missing_inputs(monkeypatch, tmp_path, capsys):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    monkeypatch.setattr(figures, "FIGURES", {})

    @figures.register("toy", inputs=("toy.csv",))
    def toy(df: pd.DataFrame):
        fig, ax = plt.subplots()
        ax.bar(df["method"], df["auc"], color=[palette.METHOD_PALETTE[m] for m in df["method"]])
        return fig

    @figures.register("later", inputs=("not_yet.csv",))
    def later(df: pd.DataFrame):  # pragma: no cover - never called
        raise AssertionError

    results = tmp_path / "results"
    results.mkdir()
    pd.DataFrame({"method": ["vm", "fvm"], "auc": [0.9, 0.95]}).to_csv(results / "toy.csv", index=False)
    assert cli.main(["figures", "--results", str(results), "--out", str(tmp_path / "figs")]) == 0
    assert (tmp_path / "figs" / "toy.png").is_file()
    assert not (tmp_path / "figs" / "later.png").exists()
    assert "skip later" in capsys.readouterr().out


def test_palette_covers_every_method_and_keeps_vm_fvm_distinct():
    names = ["loss", "graddot", "gradcos", "tracin", "if-exact", "if-cg", "if-lissa", "datainf", "ekfac"]
    names += ["self-if", "gex", "vm", "fvm"]
    assert set(names) <= set(palette.METHOD_PALETTE)
    colours = [palette.METHOD_PALETTE[m] for m in names]
    assert len(set(colours)) == len(colours)  # one colour per method
    assert palette.palette(["vm", "unknown"])["unknown"] not in (
        palette.METHOD_PALETTE["vm"],
        palette.METHOD_PALETTE["fvm"],
    )


def test_comma_separated_experiments_run_in_order(registry, tmp_path):
    assert cli.main(["reproduce", "other,dummy", "--out", str(tmp_path)]) == 0
    assert [c[0] for c in registry] == ["other", "dummy"]


def test_plan_jobs_keeps_shared_experiments_together_and_balances():
    names = ["ablation", "detection", "gen-image", "gen-text", "relabel", "theory"]
    plan = cli.plan_jobs(names, 2)  # the metadata the experiments declare in register(...)
    assert len(plan) == 2 and sorted(n.split(":")[0] for n in sum(plan, [])) == sorted(names + ["gen-text"])
    where = {n: i for i, w in enumerate(plan) for n in w}
    assert where["detection"] == where["relabel"]
    w = plan[where["detection"]]
    assert w.index("relabel") == w.index("detection") + 1  # relabel runs after detection: it reuses its networks
    # an experiment's parts are units of their own with --jobs > 1, and only then; gen-text and gen-image share
    # generation.csv but not a process: ResultsTable merges under a lock
    assert cli.plan_jobs(["gen-text", "gen-image"], 2) == [["gen-text:sentence"], ["gen-text:math", "gen-image"]]
    assert cli.plan_jobs(["gen-text", "gen-image"], 1) == [["gen-text", "gen-image"]]
    # balanced: the busier worker's load is the best any split of the units (detection + relabel one unit) gives
    import itertools

    t = experiments.full_seconds
    units = [["detection", "relabel"], *[[n] for n in sum(plan, []) if n not in ("detection", "relabel")]]
    best = min(max(sum(t(n) for u, a in zip(units, side) if a for n in u),
                   sum(t(n) for u, a in zip(units, side) if not a for n in u))
               for side in itertools.product((0, 1), repeat=len(units)))
    assert max(sum(t(n) for n in w) for w in plan) == best
    assert cli.plan_jobs(names, 1) == [["ablation", "detection", "relabel", "gen-image", "gen-text", "theory"]]
    assert cli.plan_jobs(["relabel", "theory", "detection"], 1) == [["theory", "detection", "relabel"]]
    assert cli.plan_jobs(["theory"], 4) == [["theory"]]


def test_plan_jobs_reads_only_the_declared_metadata():
    meta = {"a": experiments.Meta(seconds=(100, 1)), "b": experiments.Meta(seconds=(10, 1), after=("a",)),
            "c": experiments.Meta(seconds=(60, 1), parts=("x", "y"), part_seconds={"x": 50, "y": 10}),
            "d": experiments.Meta(seconds=(45, 1))}
    # units a+b 110 s, c:x 50, d 45, c:y 10: the longest first onto the least loaded worker
    assert cli.plan_jobs(["b", "c", "d", "a"], 2, meta) == [["a", "b"], ["c:x", "c:y", "d"]]
    assert cli.plan_jobs(["b", "c", "d", "a"], 1, meta) == [["c", "d", "a", "b"]]
    assert cli.plan_jobs(["b", "d"], 2, meta) == [["d"], ["b"]]  # "after" binds only when both run
    with pytest.raises(ValueError, match="part_seconds"):
        experiments.register("bad", parts=("x",), part_seconds={"z": 1})


def test_parallel_workers_run_as_subprocesses(tmp_path, monkeypatch):
    """--jobs 2 starts one `ifkit reproduce a,b` per worker; a failing worker fails the whole run."""
    started = []

    class FakePopen:
        def __init__(self, cmd, **kwargs):
            started.append(cmd)
            self.rc = 3 if "broken" in cmd[4] else 0

        def wait(self):
            return self.rc

    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    assert cli._reproduce_parallel([["theory"], ["detection", "relabel"]], True, 1, tmp_path) == 0
    assert [c[4] for c in started] == ["theory", "detection,relabel"] and all("--fast" in c for c in started)
    assert cli._reproduce_parallel([["broken"], ["theory"]], False, 2, tmp_path) == 1


def test_an_experiment_part_runs_alone_and_a_wrong_part_is_a_clear_error(registry, tmp_path, capsys):
    @experiments.register("split", parts=("a", "b"))
    def split(fast: bool, seeds: int, out: Path, part: str | None = None) -> None:
        registry.append(("split", part))

    assert cli.main(["reproduce", "split:b,dummy", "--out", str(tmp_path), "--fast"]) == 0
    assert registry == [("split", "b"), ("dummy", True, 1, tmp_path)]
    assert cli.main(["reproduce", "split", "--out", str(tmp_path), "--fast"]) == 0
    assert registry[-1] == ("split", None)
    for wrong, says in (("split:c", "the parts a, b"), ("dummy:a", "no parts")):
        with pytest.raises(SystemExit):
            cli.main(["reproduce", wrong, "--out", str(tmp_path)])
        assert says in capsys.readouterr().err


def test_figures_names_the_command_that_makes_a_missing_input(tmp_path, capsys):
    figures.save_all(tmp_path, tmp_path / "figs", names=["bench", "theory_bound"])
    out = capsys.readouterr().out
    assert "skip bench: bench.csv" in out and "`ifkit bench`" in out
    assert "skip theory_bound" in out and "`ifkit reproduce`" in out


def test_reproduce_help_lists_every_experiment_with_its_declared_times(reproduce_help):
    registered = set(experiments.discover())
    assert registered <= set(experiments.META)  # every experiment declares its times where it is registered
    done = reproduce_help  # a fresh process: the command discovers the experiments by itself
    assert done.returncode == 0, done.stderr
    table = done.stdout.split("experiments (measured")[1].split("examples:")[0]
    listed = {line.split()[0]: line for line in table.splitlines()[1:] if line.strip()}
    assert registered | {"all"} <= set(listed)
    for name in registered:
        full, fast = experiments.META[name].seconds
        assert (full, fast) != experiments.Meta.seconds, f"{name}: declare register(..., seconds=(full, fast))"
        assert cli._duration(full) in listed[name] and cli._duration(fast) in listed[name]
    assert "reusing its networks" in listed["relabel"]


def test_experiments_of_one_worker_share_what_they_declare(registry, tmp_path, monkeypatch):
    """relabel after detection gets the same runs dict; alone it gets a fresh one; nothing is module state."""
    seen = {}

    @experiments.register("first", shares=("runs",))
    def first(fast, seeds, out, runs=None):
        runs["model"] = "trained"
        seen["first"] = runs

    @experiments.register("second", shares=("runs",), after=("first",))
    def second(fast, seeds, out, runs=None):
        seen["second"] = dict(runs)

    assert cli.main(["reproduce", "second,first", "--out", str(tmp_path)]) == 0
    assert seen["second"] == {"model": "trained"}  # ran after first, in one piece, on first's runs
    assert cli.main(["reproduce", "second", "--out", str(tmp_path)]) == 0
    assert seen["second"] == {}  # alone: nothing left over from the previous command


NOISY = """
import sys, warnings
from tqdm.auto import tqdm
from ifkit import cli, experiments

experiments.discover = lambda: experiments.EXPERIMENTS  # only this experiment


@experiments.register("noisy")
def noisy(fast, seeds, out):
    for i in tqdm(range(3), desc="bar", mininterval=0):
        if i == 1:
            warnings.warn("conjugate gradient stopped after 100 iterations", RuntimeWarning)

sys.exit(cli.main(["reproduce", "noisy", "--out", sys.argv[1]]))
"""


def test_a_warning_during_reproduce_prints_on_its_own_line_above_the_bars(tmp_path):
    """A warning raised while a progress bar is drawn (the CG non-convergence warning, a corrupt results file)
    goes through tqdm.write: its line starts with the warning, not with the bar's text, and the bar goes on."""
    done = subprocess.run([sys.executable, "-c", NOISY, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    line = next(ln for ln in done.stderr.split("\n") if "conjugate gradient stopped" in ln)
    shown = line.split("\r")[-1]  # what the terminal shows on that line: the text after the last carriage return
    assert "RuntimeWarning" in shown and "bar:" not in shown, repr(line)
    assert "3/3" in done.stderr.split("conjugate gradient stopped")[1]  # the bar is redrawn below and finishes
