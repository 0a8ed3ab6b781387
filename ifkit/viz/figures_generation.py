"""Figures of the generation experiments (results/generation*.csv): influential-data identification on text
(sentence, math) and images (style), with the most helpful training examples of a few queries."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd
from matplotlib.figure import Figure

from .figures import register
from .palette import FLIPPED_COLOUR, HIT_COLOUR, METHOD_PALETTE, TASK_ORDER, method_order, palette

PAPER_GENERATION = {  # docs/PAPER.md, Sec. 6.3: (task, method) -> (AUC %, recall %), Llama-2-13B + LoRA
    ("sentence", "vm"): (99.97, 99.1), ("sentence", "datainf"): (99.6, 96.2), ("sentence", "tracin"): (95.0, 71.0),
    ("math", "fvm"): (99.99, 99.4), ("math", "datainf"): (99.9, 97.4), ("math", "tracin"): (78.5, 26.6),
}
VARIANT_ORDER = ("protocol", "harder")  # results/generation.csv "variant": DataInf's protocol, the harder benchmark


def _generation_rows(generation: pd.DataFrame) -> pd.DataFrame:
    """Per task, the full-mode rows when there are any (a --fast run may share the file with a full one)."""
    if "mode" not in generation:
        return generation
    keep = [part[part["mode"] == "full"] if (part["mode"] == "full").any() else part
            for _, part in generation.groupby("task", sort=False)]
    return pd.concat(keep, ignore_index=True) if keep else generation


def _setting_order(df: pd.DataFrame) -> list[str]:
    tasks = [t for t in TASK_ORDER if t in set(df["task"])] + sorted(set(df["task"]) - set(TASK_ORDER))
    variants = [v for v in VARIANT_ORDER if v in set(df["variant"])] + sorted(set(df["variant"]) - set(VARIANT_ORDER))
    have = set(df["setting"])
    return [f"{t}\n{v}" for t in tasks for v in variants if f"{t}\n{v}" in have]


@register("generation_auc", inputs=("generation.csv",))
def generation_auc(generation: pd.DataFrame) -> Figure:
    """Influential-data identification: ROC AUC, recall of same-class training points in the top k (DataInf's
    recall) and precision among the top 5, per task x variant ("protocol": DataInf's; "harder") and method; bars
    are means over seeds, whiskers their standard deviation. Black ticks: the paper's numbers on DataInf's
    protocol where public summaries give them (Llama-2-13B + LoRA; ``PAPER_GENERATION``).

    Handles every task in the file (text: sentence, math; image: style); rows without a variant count as
    "protocol".
    """
    import seaborn as sns

    df = _generation_rows(generation).copy()
    if "variant" not in df:
        df["variant"] = "protocol"
    df["variant"] = df["variant"].fillna("protocol").astype(str)
    df["setting"] = df["task"].astype(str) + "\n" + df["variant"]
    cols = [c for c in ("auc", "recall", "precision5") if c in df]
    for c in cols:
        df[c] = 100 * df[c]
    settings = _setting_order(df)
    methods = method_order(df["method"])
    labels = {"auc": "ROC AUC (%)", "recall": "recall of same class in top k (%)",
              "precision5": "same class among the top 5 (%)"}
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(max(9.0, 0.16 * len(settings) * len(methods) * len(cols) + 3), 4.4),
                     layout="constrained")
        axes = list(fig.subplots(1, len(cols), squeeze=False)[0])
    for ax, col in zip(axes, cols):
        sns.barplot(df, x="setting", y=col, hue="method", order=settings, hue_order=methods, palette=palette(methods),
                    errorbar="sd", ax=ax, legend=ax is axes[-1], saturation=1)
        width = 0.8 / len(methods)
        for (task, method), ref in PAPER_GENERATION.items():
            setting = f"{task}\nprotocol"
            if col != "precision5" and setting in settings and method in methods:
                x = settings.index(setting) - 0.4 + width * (methods.index(method) + 0.5)
                ax.plot([x - width / 2, x + width / 2], [ref[col == "recall"]] * 2, color="k", lw=2)
        ax.set_ylim(40 if col == "auc" else 0, 101)
        ax.set_xlabel("")
        ax.set_ylabel(labels[col])
        ax.tick_params(axis="x", labelsize=8)
    if axes[-1].get_legend() is not None:
        sns.move_legend(axes[-1], "upper left", bbox_to_anchor=(1.0, 1.0), fontsize=9, title="method")
    seeds = ", ".join(f"{task} {n}" for task, n in df.groupby("task")["seed"].nunique().items())
    fig.suptitle("Which training examples help a query? Same-class training points ranked first "
                 f"(seeds per task: {seeds}; black ticks: the paper)", fontsize=10)
    return fig


@register("generation_text_examples", inputs=("generation_text_examples.csv",))
def generation_text_examples(examples: pd.DataFrame, methods: Iterable[str] = ("tracin", "datainf", "vm", "fvm"),
                             k: int = 5, variant: str = "harder") -> Figure:
    """One validation query per text task and its ``k`` most helpful training examples for a few methods.

    Green: the training example has the query's class (what the protocol counts as a hit); red: it does not.
    Reads ``results/generation_text_examples.csv`` (rank 0 = the query itself; the first query of the lowest
    seed of each task is shown, from ``variant`` when the file has that column).
    """
    ex = examples
    if "variant" in ex and (ex["variant"] == variant).any():
        ex = ex[ex["variant"] == variant]
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
                        color=HIT_COLOUR if bool(row["same_class"]) else FLIPPED_COLOUR)
    shown_variant = f" ({variant} variant)" if "variant" in examples and (examples["variant"] == variant).any() else ""
    fig.suptitle(f"Most helpful training examples{shown_variant} (green: same class as the query, red: another "
                 "class)", fontsize=10)
    return fig


# ------------------------------------------------------------------------------------------ generation (image)
@register("generation_image_examples", inputs=("generation_image_examples.csv",))
def generation_image_examples(examples: pd.DataFrame, max_queries: int = 3, variant: str = "protocol") -> Figure:
    """Image generation: a few queries (one per style) and their top-5 most helpful training images per method.

    The images are not stored: ``ifkit.experiments.gen_image.build_data`` redraws them from the seed, the run's
    mode and the variant (deterministic). Frames: green = the training image has the query's style, red = another.
    """
    import numpy as np

    from ifkit.experiments import gen_image

    if "variant" not in examples:
        examples = examples.assign(variant="protocol")
    examples = examples[examples["variant"] == variant]
    if examples.empty:
        raise ValueError(f"no example rows for variant {variant!r}")
    seed = int(examples["seed"].min())
    df = examples[examples["seed"] == seed]
    mode = str(df["mode"].iloc[0])
    data = gen_image.build_data(gen_image.CONFIGS[mode][variant], seed)
    queries = df.drop_duplicates("query_style")["query"].tolist()[:max_queries]  # one query per style
    methods = method_order(df["method"])
    top = int(df["rank"].max())
    fig = Figure(figsize=(1.1 * (top + 1) * len(queries), 1.25 * len(methods) + 0.6), layout="constrained")
    axes = fig.subplots(len(methods), (top + 1) * len(queries), squeeze=False)
    for j, q in enumerate(queries):
        q_style = df.loc[df["query"] == q, "query_style"].iloc[0]
        for r, method in enumerate(methods):
            rows = df[(df["query"] == q) & (df["method"] == method)].sort_values("rank")
            cells = [(data.X_val[q], "black")] + [
                (data.X_train[int(i)], HIT_COLOUR if s == q_style else FLIPPED_COLOUR)
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
    fig.suptitle(f"Image generation, {variant} variant ({mode}, seed {seed}): each query and its top-{top} most "
                 "helpful training "
                 "images (green: same style, red: another style)", fontsize=10)
    return fig


@register("generation_image_examples_harder", inputs=("generation_image_examples.csv",))
def generation_image_examples_harder(examples: pd.DataFrame, max_queries: int = 3) -> Figure:
    """``generation_image_examples`` for the harder variant (styles that transform content, not in the prompt)."""
    return generation_image_examples(examples, max_queries, variant="harder")


__all__ = ["PAPER_GENERATION", "VARIANT_ORDER", "generation_auc", "generation_image_examples",
           "generation_image_examples_harder", "generation_text_examples"]
