"""``ifkit bench`` in a tiny mode: the CSV schema, one fresh process per measurement, and the figure."""

import json

import pandas as pd
import pytest
import torch

from ifkit import bench
from ifkit.viz import figures


@pytest.mark.slow  # one fresh interpreter (torch import) is the claim
def test_tiny_bench_writes_the_schema(tmp_path, monkeypatch):
    out = tmp_path / "bench.csv"
    tiny = dict(sizes=(64,), methods=("loss", "ekfac"), throughput_models=("mlp",), throughput_n=64, repeats=1,
                hidden=(8,), n_val=16, cache_models=("mlp",), cache_n=64, cache_methods=("graddot", "datainf"),
                clean_models=("mlp",), clean_n=150, clean_val=30, clean_epochs=1, clean_repeats=1)
    # Every job goes through _run_isolated; the first one really starts a fresh interpreter (`python -m ifkit.bench
    # JOB`), the other three run the same worker in this process (a fresh torch import each is ~10 s on a busy
    # machine, and their rows are what this test checks).
    real, jobs = bench._run_isolated, []

    def first_isolated(job, timeout_s):
        jobs.append(job)
        if len(jobs) == 1:
            return real(job, timeout_s)
        threads = torch.get_num_threads()
        try:
            return json.loads(json.dumps(bench._worker(job)))  # what the subprocess prints, parsed back
        finally:
            torch.set_num_threads(threads)

    monkeypatch.setattr(bench, "_run_isolated", first_isolated)
    code = bench.main(out, fast=True, progress=False, **tiny)
    assert code == 0
    assert len(jobs) >= 4 and len({json.dumps(j, sort_keys=True) for j in jobs}) == len(jobs)  # one run each
    df = pd.read_csv(out)
    assert {"method", "n_train", "n_params", "seconds", "peak_mb"} <= set(df.columns)
    assert list(df.columns) == bench.COLUMNS
    assert set(df["method"]) == {"per-sample-grad", "factored-grads", "jvp-dots", "batched-backward", "score-graddot",
                                 "loss", "ekfac", "no-cache", "grad-cache", "train", "ifkit-clean", "cleanlab-5fold"}
    assert df["seconds"].notna().all() and (df["seconds"] > 0).all() and (df["peak_mb"] > 0).all()
    assert (df.loc[df["part"] == "methods", "n_params"] == 784 * 8 + 8 + 8 * 10 + 10).all()
    thr = df[df["part"] == "throughput"]
    ratio = thr.set_index("method")["ratio"]  # each method's time over the batched backward's, within one run
    assert ratio["batched-backward"] == 1 and (ratio > 0).all()
    assert (thr["repeats"] >= 3).all()  # ratios are medians of at least 3 repeats
    cache = df[df["part"] == "cache"].set_index("method")
    assert cache.loc["no-cache", "ratio"] == 1 and cache.loc["grad-cache", "ratio"] > 0
    assert "graddot + datainf" in cache.loc["grad-cache", "note"]
    assert float(cache.loc["grad-cache", "note"].rsplit(" ", 1)[1]) < 1e-5  # the same scores either way
    clean = df[df["part"] == "clean"].set_index("method")  # ifkit.clean vs cleanlab's 5 refits, wall and CPU
    assert clean.loc["cleanlab-5fold", "ratio"] == 1 and clean.loc["ifkit-clean", "ratio"] > 0
    assert (clean["cpu_seconds"] > 0).all() and "precision" in clean.loc["ifkit-clean", "note"]
    # a rerun resumes: nothing left to measure, the file is unchanged
    assert bench.main(out, fast=True, progress=False, **tiny) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out), df)
    fig = figures.FIGURES["bench"].fn(df)
    assert len(fig.axes) >= 3
