"""Figure producers: one function per figure, from tidy result CSVs to a matplotlib Figure.

``ifkit figures`` calls ``save_all(results_dir, out_dir)``, which runs every producer in ``FIGURES`` whose input
CSVs exist and saves ``out_dir/NAME.png``. Notebooks call the same producers on their own DataFrames.

Add a producer with the decorator; it receives one DataFrame per input file, in order::

    @register("detection_auc", inputs=("detection.csv",))
    def detection_auc(detection: pd.DataFrame) -> Figure:
        ...
        sns.barplot(..., hue="method", palette=palette(methods))

Colours: ``METHOD_PALETTE`` gives each method one colour used by every figure; VM and FVM (the paper's
methods) are the two warm colours, everything else is cool or grey.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

DPI = 150

METHOD_PALETTE: dict[str, str] = {
    # baselines without curvature: greys and greens
    "loss": "#7f7f7f",
    "graddot": "#bcbd22",
    "gradcos": "#dbdb8d",
    "tracin": "#2ca02c",
    # classic influence (inverse-Hessian family): blues
    "if-exact": "#1f77b4",
    "if-cg": "#4a90c8",
    "if-lissa": "#9ecae1",
    "datainf": "#9467bd",
    "ekfac": "#17becf",
    # self-influence and ensembles
    "self-if": "#8c564b",
    "gex": "#e377c2",
    # non-influence baseline (confident learning)
    "cleanlab": "#000000",
    # the paper's methods: the only warm colours, always these two
    "vm": "#ff7f0e",
    "fvm": "#d62728",
}
METHOD_ORDER: tuple[str, ...] = tuple(METHOD_PALETTE)
_FALLBACK = "#c7c7c7"


def palette(methods: Iterable[str]) -> dict[str, str]:
    """Colours for the given method names (unknown names get a neutral grey), for seaborn's ``palette=``."""
    return {m: METHOD_PALETTE.get(m, _FALLBACK) for m in methods}


@dataclass(frozen=True)
class Producer:
    """A registered figure: ``fn(*dataframes) -> Figure`` reading ``inputs`` from the results folder."""

    name: str
    fn: Callable[..., Figure]
    inputs: tuple[str, ...]


FIGURES: dict[str, Producer] = {}


def register(name: str, inputs: Iterable[str]) -> Callable[[Callable[..., Figure]], Callable[..., Figure]]:
    """Decorator adding a figure producer to ``FIGURES``.

    Args:
        name: file stem of the saved PNG (``figures/NAME.png``).
        inputs: CSV file names in the results folder, passed to the producer as DataFrames in this order.
    """

    def deco(fn: Callable[..., Figure]) -> Callable[..., Figure]:
        FIGURES[name] = Producer(name, fn, tuple(inputs))
        return fn

    return deco


def save_figure(fig: Figure, path: Path) -> Path:
    """Save a figure as PNG at ``DPI``, without timestamps/software metadata so reruns give identical files."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    tmp.replace(path)  # atomic: a reader never sees a half-written PNG
    plt.close(fig)
    return path


def save_all(results_dir: str | Path, out_dir: str | Path, names: Iterable[str] | None = None) -> list[Path]:
    """Run every registered producer whose inputs exist and save its PNG.

    Producers whose input CSV is missing are skipped with a printed note (their experiment has not been run).

    Args:
        results_dir: folder of tidy CSVs written by ``ifkit reproduce``.
        out_dir: folder for the PNGs (created if needed).
        names: only these producers (default: all).

    Returns:
        Paths of the PNGs written.
    """
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    written = []
    for name in names if names is not None else list(FIGURES):
        producer = FIGURES[name]
        missing = [f for f in producer.inputs if not (results_dir / f).is_file()]
        if missing:
            print(f"skip {name}: {', '.join(missing)} not in {results_dir} (run `ifkit reproduce` first)")
            continue
        frames = [pd.read_csv(results_dir / f) for f in producer.inputs]
        path = save_figure(producer.fn(*frames), out_dir / f"{name}.png")
        print(f"wrote {path}")
        written.append(path)
    return written


# ------------------------------------------------------------------------------------------ Theorem 3.2
def _theory_rows(theory: pd.DataFrame) -> pd.DataFrame:
    """The rows of the largest run in results/theory.csv (a --fast run may share the file with a full one)."""
    return theory[theory["n_train"] == theory["n_train"].max()] if "n_train" in theory else theory


def _spearman(x: pd.Series, y: pd.Series) -> float:
    from scipy.stats import spearmanr

    if len(x) < 3 or x.nunique() < 2 or y.nunique() < 2:
        return float("nan")
    return float(spearmanr(x, y)[0])


@register("theory_bound", inputs=("theory.csv",))
def theory_bound(theory: pd.DataFrame) -> Figure:
    """Measured sign error vs the Theorem-3.2 bound exp(-2 mu^2 / R_val^gamma^2), one panel per method.

    One point per (seed, checkpoint, gamma); colour = gamma, marker = trajectory (training checkpoints or the
    L2 path of optima). Points below the dashed y = x line respect the bound; the titles give Spearman's rank
    correlation between error and bound (all rows, then per trajectory), computed from the CSV.
    """
    import seaborn as sns

    df = _theory_rows(theory)
    methods = [m for m in METHOD_ORDER if m in set(df["method"])] + sorted(set(df["method"]) - set(METHOD_ORDER))
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(4.2 * len(methods), 4.2), layout="constrained")
        axes = fig.subplots(1, len(methods), squeeze=False, sharey=True)[0]
    for ax, method in zip(axes, methods):
        part = df[df["method"] == method]
        sns.scatterplot(data=part, x="bound", y="sign_error", hue="gamma", style="trajectory", palette="viridis",
                        ax=ax, s=40, legend=ax is axes[-1])
        ax.plot([0, 1], [0, 1], ls="--", lw=1, color="k", alpha=0.5)
        ax.set_xlim(0, 1.02)
        ax.set_ylim(-0.01, max(0.5, float(df["sign_error"].max()) + 0.02))
        per = ", ".join(f"{t}: {_spearman(p['bound'], p['sign_error']):+.2f}"
                        for t, p in part.groupby("trajectory", sort=True))
        ax.set_title(f"{method}\nSpearman {_spearman(part['bound'], part['sign_error']):+.2f} ({per})",
                     fontsize=9, color=METHOD_PALETTE.get(method, "k"))
        ax.set_xlabel(r"bound $\exp(-2\mu^2 / R_{val}^{\gamma}(\theta)^2)$")
        ax.set_ylabel("measured sign error (vs leave-one-out)")
    if axes[-1].get_legend() is not None:
        sns.move_legend(axes[-1], "upper left", bbox_to_anchor=(1.02, 1), fontsize=8)
    rho = _spearman(df["bound"], df["sign_error"])
    fig.suptitle(f"Theorem 3.2 on logistic regression (n_train={int(df['n_train'].max())}, "
                 f"{df['seed'].nunique()} seeds): Spearman(sign error, bound) over all rows = {rho:+.2f}")
    return fig


@register("theory_trajectories", inputs=("theory.csv",))
def theory_trajectories(theory: pd.DataFrame) -> Figure:
    """Along each trajectory: the sign error of each method (top) and R_val^gamma for each gamma (bottom).

    Means over seeds with their standard deviation as a band; the x axis is the checkpoint order (training
    steps, or L2 strength from weak to strong).
    """
    import seaborn as sns

    df = _theory_rows(theory)
    trajs = [t for t in ("training", "l2-path") if t in set(df["trajectory"])]
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(5.2 * len(trajs), 6.4), layout="constrained")
        axes = fig.subplots(2, len(trajs), squeeze=False)
    for j, traj in enumerate(trajs):
        part = df[df["trajectory"] == traj]
        by = "step" if traj == "training" else "weight_decay"  # training steps; L2 from weak to strong
        first = part.drop_duplicates("checkpoint")
        order = list((first.sort_values(by, kind="stable") if by in first else first)["checkpoint"])
        part = part.assign(pos=part["checkpoint"].map({c: i for i, c in enumerate(order)}))
        errs = part.drop_duplicates(["seed", "checkpoint", "method"])
        sns.lineplot(data=errs, x="pos", y="sign_error", hue="method", palette=palette(errs["method"].unique()),
                     marker="o", errorbar="sd", ax=axes[0, j])
        risk = part.drop_duplicates(["seed", "checkpoint", "gamma"])
        sns.lineplot(data=risk, x="pos", y="R_gamma", hue="gamma", palette="viridis", marker="o", errorbar="sd",
                     ax=axes[1, j])
        labels = [c.replace("train-step-", "step ").replace("l2-", "L2 ") for c in order]
        for ax in axes[:, j]:
            ax.set_xticks(range(len(order)), labels, rotation=30, fontsize=8)
            ax.set_xlabel("")
        axes[0, j].set_title(f"{traj}: sign error of each estimator")
        axes[0, j].set_ylabel("sign error (vs leave-one-out)")
        axes[1, j].set_title(r"$R_{val}^{\gamma}(\theta)$ by projected gradient ascent")
        axes[1, j].set_ylabel(r"$R_{val}^{\gamma}$ ($\gamma = 0$: the validation loss)")
    return fig


# ------------------------------------------------------------------------------------------ ifkit bench
@register("bench", inputs=("bench.csv",))
def bench(bench: pd.DataFrame) -> Figure:
    """Cost curves from results/bench.csv: seconds and peak memory of each method versus n_train (log-log), and
    the throughput of G @ v (per-sample gradients, and forward-mode JVP dots) against a batched backward pass.

    Dotted grey lines of slope 1 through each panel's first point show what linear cost would look like.
    """
    import seaborn as sns

    df = bench[bench["seconds"].notna()]
    meth = df[df["part"] == "methods"]
    thr = df[df["part"] == "throughput"]
    methods = [m for m in METHOD_ORDER if m in set(meth["method"])] + sorted(set(meth["method"]) - set(METHOD_ORDER))
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(15, 4.4), layout="constrained")
        ax_t, ax_m, ax_r = fig.subplots(1, 3)
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
        colours = {"per-sample-grad": "#1f77b4", "jvp-dots": "#2ca02c", "batched-backward": "#c7c7c7"}
        order = [m for m in colours if m in set(thr["method"])]
        sns.barplot(thr, x="model", y="examples_per_s", hue="method", hue_order=order, ax=ax_r,
                    palette=[colours[m] for m in order])
        ax_r.set_yscale("log")
        ratio = thr.groupby(["model", "method"])["ratio"].median()  # one number per bar, even across runs
        ax_r.set_title("G @ v for every example, time / batched backward\n" + "\n".join(
            f"{m}: " + ", ".join(f"{k} {ratio[m, k]:.2g}x" for k in order
                                 if (m, k) in ratio.index and k != "batched-backward")
            for m in thr["model"].unique()), fontsize=9)
        ax_r.set_ylabel("examples / second")
    return fig
