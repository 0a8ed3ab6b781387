"""The figure of ``ifkit bench`` (results/bench.csv): cost curves, G @ v throughput, and the GradCache gain."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from .figures import register
from .palette import BENCH_COLOURS, CACHE_COLOURS, method_order, palette


@register("bench", inputs=("bench.csv",))
def bench(bench: pd.DataFrame) -> Figure:
    """Cost curves from results/bench.csv: seconds and peak memory of each method versus n_train (log-log), and
    the throughput of G @ v (per-sample gradients, per-layer factors, forward-mode JVP dots) against a batched
    backward pass, and a sequence of methods on one model with and without a shared ``GradCache``.

    Dotted grey lines of slope 1 through each panel's first point show what linear cost would look like.
    """
    import seaborn as sns

    df = bench[bench["seconds"].notna()]
    meth = df[df["part"] == "methods"]
    thr = df[df["part"] == "throughput"]
    cache = df[df["part"] == "cache"]
    methods = method_order(meth["method"])
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(20, 4.4), layout="constrained")
        ax_t, ax_m, ax_r, ax_c = fig.subplots(1, 4, width_ratios=(1, 1, 1.4, 0.8))
    for ax, col, label in ((ax_t, "seconds", "seconds (median)"), (ax_m, "peak_mb", "peak memory (MB, ru_maxrss)")):
        if len(meth):
            sns.lineplot(meth, x="n_train", y=col, hue="method", hue_order=methods, palette=palette(methods),
                         marker="o", ax=ax, legend=ax is ax_t)
            n0 = meth["n_train"].min()
            ns = sorted(meth["n_train"].unique())
            y0 = meth.loc[meth["n_train"] == n0, col].median()
            ax.plot(ns, [y0 * n / n0 for n in ns], ":", color="grey", lw=1, label="_linear")
        ax.set_xscale("log")
        ax.set_yscale("log")
        if len(meth):
            ax.set_xticks(ns, [f"{n:,}" for n in ns])
            ax.xaxis.set_minor_formatter(NullFormatter())  # log minor labels collide with the n_train ticks
        ax.set_xlabel("n_train")
        ax.set_ylabel(label)
    if ax_t.get_legend() is not None:
        sns.move_legend(ax_t, "upper left", bbox_to_anchor=(1.0, 1.0), fontsize=9, title="method")
    p = int(meth["n_params"].iloc[0]) if len(meth) else 0
    ax_t.set_title(f"ifkit.score time ({p:,}-parameter MLP)")
    ax_m.set_title("peak memory of a fresh process per method")
    if len(thr):
        # one bar group per (model, n_train): rows measured at different sizes are not averaged together
        thr = thr.assign(run=[f"{m}, n={n:,}" for m, n in zip(thr["model"], thr["n_train"])])
        runs = list(dict.fromkeys(thr.sort_values(["model", "n_train"], ascending=[True, False])["run"]))
        order = [m for m in BENCH_COLOURS if m in set(thr["method"])]
        sns.barplot(thr, x="run", y="examples_per_s", hue="method", order=runs, hue_order=order, ax=ax_r,
                    palette=[BENCH_COLOURS[m] for m in order])
        ax_r.set_yscale("log")
        ratio = thr.groupby(["run", "method"])["ratio"].median()  # one number per bar, even across runs
        ax_r.set_title("G @ v for every example, time / batched backward\n" + "\n".join(
            f"{r}: " + ", ".join(f"{k} {ratio[r, k]:.2g}x" for k in order
                                 if (r, k) in ratio.index and k != "batched-backward")
            for r in runs), fontsize=8)
        ax_r.set_xlabel("")
        ax_r.set_ylabel("examples / second")
    if len(cache):
        order = [m for m in CACHE_COLOURS if m in set(cache["method"])]
        sns.barplot(cache, x="model", y="seconds", hue="method", hue_order=order, ax=ax_c,
                    palette=list(CACHE_COLOURS.values())[: len(order)])
        ratio = cache[cache["method"] == "grad-cache"].groupby("model")["ratio"].median()
        sizes = cache.groupby("model")["n_train"].first()
        ax_c.set_title("several methods on one model, seconds\n" + "\n".join(
            f"{m} (n={sizes[m]:,}): {r:.2g}x with GradCache" for m, r in ratio.items()), fontsize=8)
        ax_c.set_ylabel("seconds (median)")
    else:
        ax_c.set_axis_off()
    return fig



__all__ = ["bench"]
