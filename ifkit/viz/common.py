"""Small helpers shared by the plot modules and the figure producers of ``ifkit.viz``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator
from torch import Tensor

from .palette import NOISE_ORDER

STYLE = "whitegrid"  # seaborn style of the notebook plots, applied inside ``with sns.axes_style(STYLE)``

ArrayLike = Tensor | np.ndarray | Sequence[float]


def as_numpy(x: ArrayLike) -> np.ndarray:
    """A tensor (any device) or array-like as a NumPy array."""
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; NaN when either side is constant."""
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def sign_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of entries where ``a`` and ``b`` have the same sign."""
    return float((np.sign(a) == np.sign(b)).mean())


def grid_shape(n: int, ncols: int) -> tuple[int, int]:
    """(rows, columns) of a grid of ``n`` panels with at most ``ncols`` per row."""
    ncols = max(1, min(ncols, n))
    return math.ceil(n / ncols), ncols


def facets(n: int, ncols: int, width: float, height: float) -> tuple[Figure, np.ndarray]:
    """A styled figure with one panel per item, ``ncols`` per row; panels are ``width`` x ``height`` inches."""
    rows, cols = grid_shape(n, ncols)
    with sns.axes_style(STYLE):
        fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
        axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    return fig, axes


def readable_ticks(ax, which: str = "both", max_ticks: int = 5) -> None:
    """Short tick labels on ``ax``'s x, y or both axes, so that narrow panels never run them into each other.

    At most ``max_ticks`` ticks per axis; when the axis reaches 10^4 or more (or stays below 10^-3), the ticks are
    written in units of that power of ten and the axis label says so ("-1 -0.5 0 0.5 1" and "score (x10^5)")
    instead of "-100000 -50000 ...": DataInf's scores on notebook 05's digits span +-1e5, and six-digit labels
    overlapped in a quarter-width histogram panel (matplotlib's own offset text, "1e5" under the last tick, ran
    into the axis label there). Call it after the plot is drawn and labelled: it reads the axis limits.
    """
    if which not in ("x", "y", "both"):
        raise ValueError(f"which={which!r}: use 'x', 'y' or 'both'")
    for name, axis, limits in (("x", ax.xaxis, ax.get_xlim()), ("y", ax.yaxis, ax.get_ylim())):
        if which not in (name, "both"):
            continue
        axis.set_major_locator(MaxNLocator(nbins=max_ticks))
        big = max(abs(limits[0]), abs(limits[1]))
        power = math.floor(math.log10(big)) if big > 0 and math.isfinite(big) else 0
        if not -3 < power < 4:
            unit = 10.0**power
            axis.set_major_formatter(FuncFormatter(lambda v, _, unit=unit: f"{v / unit + 0.0:.6g}".replace("-", "\u2212")))
            label = axis.get_label_text()
            axis.set_label_text(f"{label} ($\\times 10^{{{power}}}$)" if label else f"$\\times 10^{{{power}}}$")


def note_figure(title: str, note: str) -> Figure:
    """What a figure producer returns when its rows are not there yet (a partial results file)."""
    fig = Figure(figsize=(6, 2), layout="constrained")
    ax = fig.subplots()
    ax.axis("off")
    ax.text(0.5, 0.5, note, ha="center", va="center", fontsize=10, wrap=True)
    fig.suptitle(title)
    return fig


def one_run(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of one run: Fashion-MNIST when present (a --fast digits run may share the file), with the MLP
    when there are several models, then the most common validation size (ablations may add others)."""
    if "dataset" in df and df["dataset"].nunique() > 1:
        datasets = set(df["dataset"])
        df = df[df["dataset"] == ("fashion" if "fashion" in datasets else df["dataset"].value_counts().idxmax())]
    if "model" in df and df["model"].nunique() > 1:
        df = df[df["model"] == ("mlp" if "mlp" in set(df["model"]) else df["model"].value_counts().idxmax())]
    if "n_val" in df and df["n_val"].nunique() > 1:
        df = df[df["n_val"] == df["n_val"].value_counts().idxmax()]
    return df


def with_settings(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Add a readable ``setting`` column ("symmetric 40%") and return it with the settings in reading order."""
    df = df.assign(setting=[f"{n} {r:.0%}" for n, r in zip(df["noise"], df["rate"])])
    first = df.drop_duplicates("setting")
    rank = {n: i for i, n in enumerate(NOISE_ORDER)}
    first = first.assign(_k=first["noise"].map(lambda n: rank.get(n, len(rank)))).sort_values(["_k", "rate"])
    return df, list(first["setting"])


__all__ = ["STYLE", "ArrayLike", "as_numpy", "facets", "grid_shape", "note_figure", "one_run", "pearson",
           "readable_ticks", "sign_agreement", "with_settings"]
