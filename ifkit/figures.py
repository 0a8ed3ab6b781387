"""Figure producers: one function per figure, from tidy result CSVs to a matplotlib Figure.

``ifkit figures`` calls ``save_all(results_dir, out_dir)``, which runs every producer in ``FIGURES`` whose input
CSVs exist and saves ``out_dir/NAME.png``. Notebooks call the same producers on their own DataFrames.

Add a producer with the decorator; it receives one DataFrame per input file, in order::

    @register("detection_auc", inputs=("detection.csv",))
    def detection_auc(detection: pd.DataFrame) -> Figure:
        ...
        sns.barplot(..., hue="method", palette=palette(methods))

Colours and method orders come from ``ifkit.viz.palette`` (``METHOD_PALETTE``, ``palette()``, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from .viz.palette import (
    DETECTION_PALETTE,
    METHOD_ORDER,
    METHOD_PALETTE,
    NOISE_ORDER,
    PAPER_METHODS,
    REFERENCE_METHODS,
    detection_palette,
    palette,
)

DPI = 150

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
            how = "ifkit bench" if missing == ["bench.csv"] else "ifkit reproduce"
            print(f"skip {name}: {', '.join(missing)} not in {results_dir} (run `{how}` first)")
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
    the throughput of G @ v (per-sample gradients, per-layer factors, forward-mode JVP dots) against a batched
    backward pass, and a sequence of methods on one model with and without a shared ``GradCache``.

    Dotted grey lines of slope 1 through each panel's first point show what linear cost would look like.
    """
    import seaborn as sns

    df = bench[bench["seconds"].notna()]
    meth = df[df["part"] == "methods"]
    thr = df[df["part"] == "throughput"]
    cache = df[df["part"] == "cache"]
    methods = [m for m in METHOD_ORDER if m in set(meth["method"])] + sorted(set(meth["method"]) - set(METHOD_ORDER))
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(20, 4.4), layout="constrained")
        ax_t, ax_m, ax_r, ax_c = fig.subplots(1, 4, width_ratios=(1, 1, 1, 0.7))
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
        colours = {"per-sample-grad": "#1f77b4", "factored-grads": "#ff7f0e", "jvp-dots": "#2ca02c",
                   "batched-backward": "#c7c7c7"}
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
    if len(cache):
        order = [m for m in ("no-cache", "grad-cache") if m in set(cache["method"])]
        sns.barplot(cache, x="model", y="seconds", hue="method", hue_order=order, ax=ax_c,
                    palette=["#c7c7c7", "#9467bd"][: len(order)])
        ratio = cache[cache["method"] == "grad-cache"].groupby("model")["ratio"].median()
        sizes = cache.groupby("model")["n_train"].first()
        ax_c.set_title("several methods on one model, seconds\n" + ", ".join(
            f"{m} (n={sizes[m]:,}): {r:.2g}x with GradCache" for m, r in ratio.items()), fontsize=9)
        ax_c.set_ylabel("seconds (median)")
    else:
        ax_c.set_axis_off()
    return fig


# ------------------------------------------------------------------------ generation (text and image)
PAPER_GENERATION = {  # paper/NOTES.md Sec. 4: (task, method) -> (AUC %, recall %), Llama-2-13B + LoRA
    ("sentence", "vm"): (99.97, 99.1), ("sentence", "datainf"): (99.6, 96.2), ("sentence", "tracin"): (95.0, 71.0),
    ("math", "fvm"): (99.99, 99.4), ("math", "datainf"): (99.9, 97.4), ("math", "tracin"): (78.5, 26.6),
}


def _generation_rows(generation: pd.DataFrame) -> pd.DataFrame:
    """Per task, the full-mode rows when there are any (a --fast run may share the file with a full one)."""
    if "mode" not in generation:
        return generation
    keep = [part[part["mode"] == "full"] if (part["mode"] == "full").any() else part
            for _, part in generation.groupby("task", sort=False)]
    return pd.concat(keep, ignore_index=True) if keep else generation


@register("generation_auc", inputs=("generation.csv",))
def generation_auc(generation: pd.DataFrame) -> Figure:
    """Influential-data identification (DataInf's protocol): ROC AUC and recall of same-class training points
    in the top k, per task and method; bars are means over seeds, whiskers their standard deviation. Black
    ticks: the paper's numbers where public summaries give them (Llama-2-13B + LoRA; ``PAPER_GENERATION``).

    Handles every task in the file (text: sentence, math; image: style).
    """
    import seaborn as sns

    df = _generation_rows(generation).copy()
    df["auc"], df["recall"] = 100 * df["auc"], 100 * df["recall"]
    tasks = [t for t in ("sentence", "math", "style") if t in set(df["task"])]
    tasks += sorted(set(df["task"]) - set(tasks))
    methods = [m for m in METHOD_ORDER if m in set(df["method"])] + sorted(set(df["method"]) - set(METHOD_ORDER))
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(max(7.0, 1.2 * len(tasks) * len(methods) / 2 + 3), 4.2), layout="constrained")
        axes = fig.subplots(1, 2)
    for ax, col, label in ((axes[0], "auc", "ROC AUC (%)"), (axes[1], "recall", "recall of same class in top k (%)")):
        sns.barplot(df, x="task", y=col, hue="method", order=tasks, hue_order=methods, palette=palette(methods),
                    errorbar="sd", ax=ax, legend=ax is axes[1], saturation=1)
        width = 0.8 / len(methods)
        for (task, method), ref in PAPER_GENERATION.items():
            if task in tasks and method in methods:
                x = tasks.index(task) - 0.4 + width * (methods.index(method) + 0.5)
                ax.plot([x - width / 2, x + width / 2], [ref[col == "recall"]] * 2, color="k", lw=2)
        ax.set_ylim(0 if col == "recall" else 40, 101)
        ax.set_xlabel("")
        ax.set_ylabel(label)
    if axes[1].get_legend() is not None:
        sns.move_legend(axes[1], "upper left", bbox_to_anchor=(1.0, 1.0), fontsize=9, title="method")
    seeds = df.groupby("task")["seed"].nunique().to_dict()
    fig.suptitle("Which training examples help a query? Same-class training points ranked first "
                 f"(seeds per task: {seeds}; black ticks: the paper)", fontsize=10)
    return fig


@register("generation_text_examples", inputs=("generation_text_examples.csv",))
def generation_text_examples(examples: pd.DataFrame, methods: Iterable[str] = ("tracin", "datainf", "vm", "fvm"),
                             k: int = 5) -> Figure:
    """One validation query per text task and its ``k`` most helpful training examples for a few methods.

    Green: the training example has the query's class (what the protocol counts as a hit); red: it does not.
    Reads ``results/generation_text_examples.csv`` (rank 0 = the query itself; the first query of the lowest
    seed of each task is shown).
    """
    ex = examples
    tasks = [t for t in ("sentence", "math") if t in set(ex["task"])] + sorted(set(ex["task"]) - {"sentence", "math"})
    shown = [m for m in methods if m in set(ex["method"])] or sorted(set(ex["method"]))[:4]
    lines_per_task = 2 + len(shown) * (k + 1)
    fig = Figure(figsize=(11, 0.2 * lines_per_task * len(tasks) + 0.4), layout="constrained")
    axes = fig.subplots(len(tasks), 1, squeeze=False)[:, 0]
    for ax, task in zip(axes, tasks):
        part = ex[(ex["task"] == task) & (ex["seed"] == ex.loc[ex["task"] == task, "seed"].min())]
        q = part["query"].iloc[0]
        part = part[part["query"] == q]
        query = part.loc[part["rank"] == 0, "text"].iloc[0]
        ax.axis("off")
        y, dy = 1.0, 1.0 / lines_per_task
        ax.text(0, y, f"{task} query: {query}", fontsize=9, weight="bold", va="top", family="monospace")
        for m in shown:
            y -= 1.5 * dy
            ax.text(0, y, m, fontsize=9, va="top", color=METHOD_PALETTE.get(m, "k"), weight="bold")
            top = part[(part["method"] == m) & (part["rank"] >= 1)].sort_values("rank").head(k)
            for _, row in top.iterrows():
                y -= dy
                ax.text(0.02, y, f"{int(row['rank'])}. {row['text']}", fontsize=8, va="top", family="monospace",
                        color="#2ca02c" if bool(row["same_class"]) else "#d62728")
    fig.suptitle("Most helpful training examples (green: same class as the query, red: another class)", fontsize=10)
    return fig


# ------------------------------------------------------------------------------------------ generation (image)
@register("generation_image_examples", inputs=("generation_image_examples.csv",))
def generation_image_examples(examples: pd.DataFrame, max_queries: int = 3) -> Figure:
    """Image generation: a few queries (one per style) and their top-5 most helpful training images per method.

    The images are not stored: ``ifkit.experiments.gen_image.build_data`` redraws them from the seed and the
    run's mode (deterministic). Frames: green = the training image has the query's style, red = another style.
    """
    import numpy as np

    from ifkit.experiments import gen_image

    seed = int(examples["seed"].min())
    df = examples[examples["seed"] == seed]
    mode = str(df["mode"].iloc[0])
    data = gen_image.build_data(gen_image.CONFIGS[mode], seed)
    queries = df.drop_duplicates("query_style")["query"].tolist()[:max_queries]  # one query per style
    methods = [m for m in METHOD_ORDER if m in set(df["method"])] + sorted(set(df["method"]) - set(METHOD_ORDER))
    top = int(df["rank"].max())
    fig = Figure(figsize=(1.1 * (top + 1) * len(queries), 1.25 * len(methods) + 0.6), layout="constrained")
    axes = fig.subplots(len(methods), (top + 1) * len(queries), squeeze=False)
    for j, q in enumerate(queries):
        q_style = df.loc[df["query"] == q, "query_style"].iloc[0]
        for r, method in enumerate(methods):
            rows = df[(df["query"] == q) & (df["method"] == method)].sort_values("rank")
            cells = [(data.X_val[q], "black")] + [
                (data.X_train[int(i)], "#2ca02c" if s == q_style else "#d62728")
                for i, s in zip(rows["train_index"], rows["train_style"])]
            for c, (img, colour) in enumerate(cells):
                ax = axes[r, j * (top + 1) + c]
                ax.imshow(np.asarray(img).squeeze(), cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
                for side in ax.spines.values():
                    side.set_color(colour)
                    side.set_linewidth(2)
                if r == 0:
                    ax.set_title(f"query: {q_style}" if c == 0 else f"#{c}", fontsize=8)
                if c == 0 and j == 0:
                    ax.set_ylabel(method, fontsize=9, color=METHOD_PALETTE.get(method, "k"))
            for c in range(len(cells), top + 1):
                axes[r, j * (top + 1) + c].axis("off")
    fig.suptitle(f"Image generation ({mode}, seed {seed}): each query and its top-{top} most helpful training "
                 "images (green: same style, red: another style)", fontsize=10)
    return fig


# ------------------------------------------------------------------------ mislabel detection and relabeling
def _one_run(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of one run: Fashion-MNIST when present (a --fast digits run may share the file), then the most
    common validation size (ablations may add others)."""
    if "dataset" in df and df["dataset"].nunique() > 1:
        datasets = set(df["dataset"])
        df = df[df["dataset"] == ("fashion" if "fashion" in datasets else df["dataset"].value_counts().idxmax())]
    if "n_val" in df and df["n_val"].nunique() > 1:
        df = df[df["n_val"] == df["n_val"].value_counts().idxmax()]
    return df


def _settings(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Add a readable ``setting`` column ("symmetric 40%") and return it with the settings in reading order."""
    df = df.assign(setting=[f"{n} {r:.0%}" for n, r in zip(df["noise"], df["rate"])])
    first = df.drop_duplicates("setting")
    rank = {n: i for i, n in enumerate(NOISE_ORDER)}
    first = first.assign(_k=first["noise"].map(lambda n: rank.get(n, len(rank)))).sort_values(["_k", "rate"])
    return df, list(first["setting"])


def _ordered(methods: Iterable[str]) -> list[str]:
    known = [*METHOD_ORDER, *DETECTION_PALETTE]
    present = set(methods)
    return [m for m in dict.fromkeys(known) if m in present] + sorted(present - set(known))


def _note_figure(title: str, note: str) -> Figure:
    """What a producer returns when its rows are not there yet (a partial results file)."""
    fig = Figure(figsize=(6, 2), layout="constrained")
    ax = fig.subplots()
    ax.axis("off")
    ax.text(0.5, 0.5, note, ha="center", va="center", fontsize=10, wrap=True)
    fig.suptitle(title)
    return fig


def _style_method_labels(labels) -> None:
    """Tick labels: the paper's methods bold in their colour, non-influence references italic."""
    for label in labels:
        m = label.get_text()
        if m in PAPER_METHODS:
            label.set_color(detection_palette([m])[m])
            label.set_fontweight("bold")
        elif m in REFERENCE_METHODS:
            label.set_fontstyle("italic")
            label.set_color("#525252")


@register("detection_table", inputs=("detection.csv",))
def detection_table(detection: pd.DataFrame) -> Figure:
    """Mislabel detection ROC AUC of every method in every (noise, rate) setting (the paper's Table 1, CPU-sized).

    Left: a heatmap of the mean AUC over seeds (annotated mean and standard deviation), methods ordered by their
    mean over the settings, best on top. Right: the same numbers as points with whiskers of +-1 std over seeds,
    one marker per setting, in each method's colour, so the gaps between the paper's methods (bold), classic
    influence and the non-influence references (italic: cleanlab, early-stopped loss, controls at theta~,
    vm-early) can be read at a glance. Missing (method, setting) cells stay blank.
    """
    import numpy as np
    import seaborn as sns

    df = _one_run(detection).dropna(subset=["auc"])
    if df.empty:
        return _note_figure("Mislabel detection", "no rows with an AUC in detection.csv yet")
    df, settings = _settings(df)
    stats = df.groupby(["method", "setting"])["auc"].agg(["mean", "std", "count"])
    mean = stats["mean"].unstack("setting").reindex(columns=settings)  # (methods, settings)
    std = stats["std"].unstack("setting").reindex(columns=settings)
    common = mean.dropna(axis=1)  # settings every method has (a run in progress lacks some cells)
    key = common.mean(axis=1) if common.shape[1] else mean.mean(axis=1)
    order = key.sort_values(ascending=False).index.tolist()
    mean, std = mean.loc[order], std.loc[order]
    annot = np.where(mean.isna(), "",
                     mean.map(lambda v: f"{v:.3f}").astype(str)
                     + std.map(lambda v: "" if pd.isna(v) else f"\n±{v:.3f}").astype(str))
    n_m, n_s = len(order), len(settings)
    with sns.axes_style("white"):
        fig = Figure(figsize=(3.0 + 1.35 * n_s + 4.5, 1.2 + 0.42 * n_m), layout="constrained")
        ax_h, ax_p = fig.subplots(1, 2, width_ratios=[1.35 * n_s + 1.2, 4.5])
    sns.heatmap(mean, annot=annot, fmt="", cmap="RdYlGn", vmin=0.5, vmax=1.0, ax=ax_h, annot_kws={"fontsize": 7},
                linewidths=0.5, linecolor="white", cbar_kws={"label": "ROC AUC (mean over seeds)", "shrink": 0.6})
    ax_h.set_xlabel("")
    ax_h.set_ylabel("")
    ax_h.tick_params(axis="y", rotation=0)
    ax_h.tick_params(axis="x", rotation=0, labelsize=8)
    _style_method_labels(ax_h.get_yticklabels())
    # forest plot on the heatmap's rows (row i spans y in [i, i+1], top to bottom)
    markers = "osD^vPX*"
    colours = detection_palette(order)
    for j, s in enumerate(settings):
        dy = (j - (n_s - 1) / 2) * min(0.18, 0.8 / max(n_s, 1))
        for i, m in enumerate(order):
            if pd.isna(mean.loc[m, s]):
                continue
            ax_p.errorbar(mean.loc[m, s], i + 0.5 + dy, xerr=0 if pd.isna(std.loc[m, s]) else std.loc[m, s],
                          fmt=markers[j % len(markers)], color=colours[m], ms=5, capsize=2, lw=1)
        ax_p.plot([], [], markers[j % len(markers)], color="#525252", label=s)
    ax_p.set_ylim(n_m, 0)
    ax_p.set_yticks([i + 0.5 for i in range(n_m)], [""] * n_m)
    ax_p.axvline(0.5, color="k", lw=0.8, ls=":")
    for i in range(1, n_m):
        ax_p.axhline(i, color="#eeeeee", lw=0.6, zorder=0)
    lo = float(np.nanmin((mean - std.fillna(0)).to_numpy()))
    ax_p.set_xlim(min(0.5, lo) - 0.02, 1.005)
    ax_p.set_xlabel("ROC AUC (whiskers: ±1 std over seeds)")
    ax_p.legend(fontsize=7, loc="upper left", title="setting", title_fontsize=7)  # the best (top) sit right
    ax_p.grid(axis="x", alpha=0.3)
    seeds = df.groupby(["method", "setting"])["seed"].nunique()
    n_train = f"n_train={int(df['n_train'].max())}, " if "n_train" in df else ""
    n_val = f"n_val={int(df['n_val'].iloc[0])}, " if "n_val" in df else ""
    n_seeds = f"{seeds.min()}" if seeds.min() == seeds.max() else f"{seeds.min()}-{seeds.max()}"
    fig.suptitle(f"Mislabel detection on {df['dataset'].iloc[0]} ({n_train}{n_val}seeds per cell: {n_seeds}); "
                 "bold: the paper's methods, italic: non-influence references", fontsize=10)
    return fig


def _dynamics_rows(dynamics: pd.DataFrame, kind: str) -> pd.DataFrame:
    df = _one_run(dynamics)
    return df[df["kind"] == kind].dropna(subset=["auc"]) if "kind" in df else df.iloc[:0]


@register("fig2_auc_vs_val_acc", inputs=("detection_dynamics.csv",))
def fig2_auc_vs_val_acc(dynamics: pd.DataFrame) -> Figure:
    """The paper's Fig. 2: detection AUC of influence computed at each training checkpoint, against the validation
    accuracy of that checkpoint (``kind == "training"`` rows of detection_dynamics.csv).

    Left: one line per method through its checkpoints in training order (first epoch marked with a larger
    outline); the marker fill is the share of flipped labels the network fits there (``fit_flipped``). Right: the
    same AUCs against the epoch, with the validation accuracy and ``fit_flipped`` on the right axis. Means over
    seeds; one row of panels per (noise, rate) setting.
    """
    import seaborn as sns
    from matplotlib import cm, colors

    df = _dynamics_rows(dynamics, "training")
    if df.empty:
        return _note_figure("Fig. 2: AUC vs validation accuracy", "no training-checkpoint rows in "
                            "detection_dynamics.csv yet")
    df, settings = _settings(df)
    methods = _ordered(df["method"])
    colours = detection_palette(methods)
    norm, cmap = colors.Normalize(0, 1), cm.viridis
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(11.5, 4.0 * len(settings)), layout="constrained")
        axes = fig.subplots(len(settings), 2, squeeze=False)
    for (ax_v, ax_e), s in zip(axes, settings):
        part = df[df["setting"] == s]
        g = part.groupby(["method", "step"]).agg(auc=("auc", "mean"), val_acc=("val_acc", "mean"),
                                                 fit=("fit_flipped", "mean")).reset_index()
        for m in methods:
            c = g[g["method"] == m].sort_values("step")
            if c.empty:
                continue
            ax_v.plot(c["val_acc"], c["auc"], "-", color=colours[m], lw=1.5, label=m, zorder=2)
            ax_v.scatter(c["val_acc"], c["auc"], c=cmap(norm(c["fit"].fillna(0).to_numpy())), s=55,
                         edgecolors=colours[m], linewidths=1.5, zorder=3)
            ax_v.scatter(c["val_acc"].iloc[:1], c["auc"].iloc[:1], s=130, facecolors="none", edgecolors=colours[m],
                         linewidths=1, zorder=3)
            ax_e.plot(c["step"], c["auc"], "o-", color=colours[m], ms=4, label=m)
        state = g.groupby("step")[["val_acc", "fit"]].mean()
        twin = ax_e.twinx()
        twin.plot(state.index, state["val_acc"], ":", color="k", lw=1.2, label="val accuracy")
        twin.plot(state.index, state["fit"], "--", color="#6a3d9a", lw=1.2, label="flipped labels fitted")
        twin.set_ylim(0, 1.02)
        twin.set_ylabel("val accuracy / share of flipped labels fitted")
        twin.grid(False)
        twin.legend(fontsize=7, loc="lower right")
        fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax_v, label="share of flipped labels fitted")
        ax_v.set_xlabel("validation accuracy of the checkpoint")
        ax_v.set_ylabel("detection AUC")
        ax_v.set_title(f"{s}: AUC tracks the model's validation accuracy (big ring: first checkpoint)", fontsize=9)
        ax_v.legend(fontsize=8, loc="best")
        ax_e.set_xlabel("training epoch of the checkpoint")
        ax_e.set_ylabel("detection AUC")
        ax_e.set_title(f"{s}: along training ({part['seed'].nunique()} seed(s))", fontsize=9)
    fig.suptitle("Fig. 2: influence computed at each training checkpoint", fontsize=11)
    return fig


@register("fig3_flat_finetuning", inputs=("detection_dynamics.csv",))
def fig3_flat_finetuning(dynamics: pd.DataFrame) -> Figure:
    """The paper's Fig. 3: influence along the fine-tuning on S_val (``kind == "flat"`` rows).

    Left: detection AUC of classic influence (``if-cg``) computed AT the fine-tuned model theta_t, and of VM/FVM
    with t fine-tuning steps, against t (the dotted line: validation accuracy of theta_t, right axis). Middle:
    the median |score| of the clean points relative to step 0 (``clean_abs_median``; ``clean_std`` when the
    median is not recorded) -- the clean scores' collapse towards 0. Right: median |score| of the clean points
    over that of the flipped points -- below 1, the clean points are squeezed towards 0 relative to the noisy
    ones. Means over seeds; x axes symlog.
    """
    import seaborn as sns

    df = _dynamics_rows(dynamics, "flat")
    if df.empty:
        return _note_figure("Fig. 3: flat fine-tuning", "no flat fine-tuning rows in detection_dynamics.csv yet")
    df, settings = _settings(df)
    methods = _ordered(df["method"])
    colours = detection_palette(methods)
    label = {"if-cg": r"if-cg at $\theta_t$"}
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(14, 3.9 * len(settings)), layout="constrained")
        axes = fig.subplots(len(settings), 3, squeeze=False)
    for (ax_a, ax_s, ax_r), s in zip(axes, settings):
        part = df[df["setting"] == s]
        g = part.groupby(["method", "step"]).mean(numeric_only=True).reset_index()
        for m in methods:
            c = g[g["method"] == m].sort_values("step")
            if c.empty:
                continue
            style = dict(color=colours[m], marker="o", ms=4, label=label.get(m, m),
                         ls="--" if m in label else "-", zorder=3 if m in PAPER_METHODS else 2)
            ax_a.plot(c["step"], c["auc"], **style)
            spread = next((col for col in ("clean_abs_median", "clean_std") if col in c and c[col].notna().any()),
                          None)
            if spread is not None:
                ax_s.plot(c["step"], c[spread] / c[spread].iloc[0], **style)
            if {"clean_abs_median", "noisy_abs_median"} <= set(c.columns):
                ax_r.plot(c["step"], c["clean_abs_median"] / c["noisy_abs_median"], **style)
        if "val_acc" in g:
            acc = g.groupby("step")["val_acc"].mean()
            twin = ax_a.twinx()
            twin.plot(acc.index, acc.to_numpy(), ":", color="k", lw=1, label=r"val accuracy of $\theta_t$")
            twin.set_ylabel(r"val accuracy of $\theta_t$", fontsize=8)
            twin.grid(False)
            twin.legend(fontsize=7, loc="lower right")
        steps = sorted(g["step"].unique())
        linthresh = max(1.0, float(min([t for t in steps if t > 0], default=1)))
        for ax in (ax_a, ax_s, ax_r):
            ax.set_xscale("symlog", linthresh=linthresh)
            ax.set_xticks(steps, [str(int(t)) for t in steps])
            ax.set_xlabel("fine-tuning steps t on $S_{val}$")
        ax_s.set_yscale("log")
        ax_r.set_yscale("log")
        ax_r.axhline(1, color="k", lw=0.8, ls=":")
        ax_a.set_ylabel("detection AUC")
        ax_a.set_title(f"{s}: finding the flipped labels ({part['seed'].nunique()} seed(s))", fontsize=9)
        ax_a.legend(fontsize=8, loc="center left")
        ax_s.set_ylabel("median |score| of clean points / step 0")
        ax_s.set_title("the clean points' scores collapse towards 0", fontsize=9)
        ax_r.set_ylabel("median |score|: clean / flipped")
        ax_r.set_title("clean scores relative to the noisy ones", fontsize=9)
    fig.suptitle("Fig. 3: classic influence at the fine-tuned model vs VM/FVM along the fine-tuning on $S_{val}$",
                 fontsize=11)
    return fig


ABLATION_LABELS = {"n_val": "validation points $n_{val}$", "flat_steps": "fine-tuning steps on $S_{val}$",
                   "damping": r"damping $\lambda$", "hidden": "hidden units of the MLP"}


@register("ablation", inputs=("ablation.csv",))
def ablation(ablation: pd.DataFrame) -> Figure:
    """Detection AUC against each ablated factor (validation size, fine-tuning steps, damping, width), means over
    seeds with +-1 std bands; the last panel is FVM - VM paired by seed for each validation size (bars: mean,
    whiskers: std, dots: seeds; the label gives how many seeds favour FVM) --
    ``ifkit.experiments.ablation.paired_gap``.
    """
    import numpy as np
    import seaborn as sns

    from ifkit.experiments.ablation import paired_gap

    df = _one_run(ablation).dropna(subset=["auc"]) if "factor" in ablation else ablation.iloc[:0]
    if df.empty:
        return _note_figure("Ablations", "no rows with an AUC in ablation.csv yet")
    factors = [f for f in ABLATION_LABELS if f in set(df["factor"])] + sorted(set(df["factor"]) - set(ABLATION_LABELS))
    nv = df[df["factor"] == "n_val"]
    has_gap = {"vm", "fvm"} <= set(nv["method"])
    with sns.axes_style("whitegrid"):
        n = len(factors) + has_gap
        fig = Figure(figsize=(3.9 * n, 3.7), layout="constrained")
        axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, f in zip(axes, factors):
        part = df[df["factor"] == f].astype({"value": float})
        methods = _ordered(part["method"])
        sns.lineplot(part, x="value", y="auc", hue="method", hue_order=methods, palette=detection_palette(methods),
                     marker="o", errorbar="sd", ax=ax)
        values = sorted(part["value"].unique())
        if f == "damping":
            ax.set_xscale("log")
        elif f == "flat_steps":
            ax.set_xscale("symlog", linthresh=max(1.0, min([v for v in values if v > 0], default=1.0)))
        ax.set_xticks(values, [f"{v:g}" for v in values])
        ax.set_xlabel(ABLATION_LABELS.get(f, f))
        ax.set_ylabel("detection AUC")
        noise = part.iloc[0]
        ax.set_title(f"{f}: {noise['noise']} {noise['rate']:.0%}, {part['seed'].nunique()} seed(s)", fontsize=9)
        if ax.get_legend() is not None:
            ax.legend(fontsize=7)
    if has_gap:
        ax = axes[-1]
        gap = paired_gap(df)
        pos = np.arange(len(gap))
        ax.bar(pos, gap["mean"], yerr=gap["std"].fillna(0), color=detection_palette(["fvm"])["fvm"], alpha=0.8,
               capsize=3)
        part = nv.pivot_table(index=["value", "seed"], columns="method", values="auc")
        per_seed = (part["fvm"] - part["vm"]).dropna().reset_index(name="gap")
        for i, v in enumerate(gap["value"]):
            g = per_seed[per_seed["value"] == v]["gap"]
            ax.scatter(np.full(len(g), i) + np.linspace(-0.12, 0.12, len(g)), g, color="k", s=10, zorder=3)
            top = max(float(g.max()), float(gap["mean"].iloc[i] + np.nan_to_num(gap["std"].iloc[i])), 0.0)
            ax.annotate(f"{int(gap['wins'].iloc[i])}/{int(gap['n'].iloc[i])}", (i, top), xytext=(0, 4),
                        textcoords="offset points", ha="center", fontsize=8)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(pos, [f"{v:g}" for v in gap["value"]])
        ax.set_xlabel("validation points $n_{val}$")
        ax.set_ylabel("AUC(FVM) - AUC(VM), same seed")
        ax.set_title("FVM - VM paired by seed (label: seeds FVM wins)", fontsize=9)
    fig.suptitle(f"Ablations of the detection result ({df['dataset'].iloc[0]})", fontsize=11)
    return fig


RELABEL_METHODS = ("if-lissa", "tracin", "gex", "vm", "fvm", "pred", "pred@theta~")
CLEANING_METHODS = ("noisy", "remove", "clean")


@register("relabel", inputs=("relabel.csv",))
def relabel(relabel: pd.DataFrame) -> Figure:
    """Relabeling the flagged training points: per setting and method, bars of means over seeds (whiskers: std).

    Left: relabel accuracy (share of the flagged, truly flipped points whose new label is the clean one).
    Middle: test accuracy after retraining on the relabelled set; horizontal lines give the retraining references
    (train on the noisy set as it is, drop FVM's flagged points, train on the clean labels). Right: how often the
    new label equals the prediction of VM's fine-tuned model theta~ -- near 1, influence relabeling adds nothing
    over theta~'s prediction. ``pred`` and ``pred@theta~`` relabel FVM's flags with a model's prediction.
    """
    import seaborn as sns

    df = _one_run(relabel)
    if df.empty or "method" not in df:
        return _note_figure("Relabeling", "no rows in relabel.csv yet")
    df, settings = _settings(df)
    methods = [m for m in _ordered(df["method"]) if m not in CLEANING_METHODS]
    refs = [m for m in CLEANING_METHODS if m in set(df["method"])]
    colours = detection_palette(methods + refs)
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(max(12.0, 3 * len(settings) * (1 + len(methods) / 6)), 4.0), layout="constrained")
        axes = fig.subplots(1, 3)
    panels = (("relabel_acc", "relabel accuracy (flipped & flagged)"),
              ("retrain_test_acc", "test accuracy after retraining"),
              ("agree_theta_tilde", r"new label = $\tilde\theta$'s prediction"))
    rel = df[df["method"].isin(methods)]
    for ax, (col, ylabel) in zip(axes, panels):
        data = rel.dropna(subset=[col]) if col in rel else rel.iloc[:0]
        if len(data):
            hue = [m for m in methods if m in set(data["method"])]
            sns.barplot(data, x="setting", y=col, hue="method", order=settings, hue_order=hue, palette=colours,
                        errorbar="sd", saturation=1, ax=ax, legend=ax is axes[0])
            for m, bars in zip(hue, ax.containers):  # one container per hue level, in order
                bars.set_label(m)
                if m == "pred@theta~":  # the control: theta~'s own prediction
                    for patch in bars:
                        patch.set_hatch("//")
                        patch.set_edgecolor("white")
        ax.set_xlabel("")
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 1.02)
    ax = axes[1]
    styles = {"noisy": ":", "remove": "--", "clean": "-"}
    for j, s in enumerate(settings):
        for m in refs:
            v = df[(df["setting"] == s) & (df["method"] == m)]["retrain_test_acc"].mean()
            if pd.notna(v):
                ax.hlines(v, j - 0.45, j + 0.45, color=colours[m], ls=styles[m], lw=1.8, label=m if j == 0 else None)
    if "retrain_test_acc" in df and df["retrain_test_acc"].notna().any():
        acc = df["retrain_test_acc"].dropna()
        ax.set_ylim(max(0.0, float(acc.min()) - 0.05), min(1.0, float(acc.max()) + 0.03))
    # one legend below the panels (the bars fill the axes): relabelling methods, then the retraining references
    handles, labels = [], []
    legend = axes[0].get_legend()
    if legend is not None:
        handles, labels = list(legend.legend_handles), [t.get_text() for t in legend.get_texts()]
        legend.remove()
    for h, lab in zip(*ax.get_legend_handles_labels()):
        if lab in refs:
            handles.append(h)
            labels.append(f"retrain on {lab}")
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8, frameon=False,
                   title="new label by (bars) / retraining references (lines)", title_fontsize=8)
    fig.suptitle(f"Relabeling the flagged points ({df['dataset'].iloc[0]}, seeds: {df['seed'].nunique()})",
                 fontsize=11)
    return fig
