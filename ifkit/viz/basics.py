"""Plots of notebooks 00 and 01: suspicious images, score distributions, influence vs the truth, damping.

Every plot function in ``ifkit.viz`` takes plain tensors / arrays (or dicts of them), returns a new
``matplotlib.figure.Figure`` and touches no global state: figures are built with ``Figure()`` rather than
``pyplot`` (nothing is registered with pyplot, so a figure shows exactly once when it is a cell's value or an
``interact`` result), and the seaborn style is applied inside a ``with`` block. Interactive use::

    from ipywidgets import interact, fixed, FloatLogSlider
    interact(ifkit.viz.plot_damping_effect, H=fixed(H), g_train=fixed(G), g_val=fixed(g_val),
             actual=fixed(loo), eps=fixed(-1 / n_train), damping=FloatLogSlider(value=1e-2, min=-5, max=1))

Colours come from ``ifkit.viz.palette`` so a method looks the same in every figure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import seaborn as sns
import torch
from matplotlib.figure import Figure

from .common import STYLE, ArrayLike, as_numpy, facets, grid_shape, pearson, readable_ticks, sign_agreement
from .palette import CLEAN_COLOUR, FLIPPED_COLOUR, palette


def plot_suspicious(
    images: ArrayLike,
    given: ArrayLike,
    true: ArrayLike,
    scores: ArrayLike,
    k: int = 16,
    classes: Sequence[str] | None = None,
    ncols: int = 8,
    title: str | None = None,
) -> Figure:
    """The ``k`` highest-scoring (most suspicious) training images, with their given and true labels.

    A panel's title is red when the given label is wrong (given != true), grey when the label was clean, so the
    grid shows at a glance how many of the top-k suspects really are mislabelled.

    Args:
        images: (n, H, W) or (n, 1, H, W) grey images.
        given: (n,) labels the model was trained on (noisy).
        true: (n,) clean labels.
        scores: (n,) harmfulness scores (higher = more suspicious).
        k: how many to show (at most n).
        classes: class names (default: the label numbers).
        ncols: panels per row.
        title: figure title (default: a count of the mislabelled ones among the top k).

    Returns:
        A Figure with exactly ``min(k, n)`` axes, most suspicious first.
    """
    imgs, given_, true_, s = as_numpy(images), as_numpy(given).astype(int), as_numpy(true).astype(int), as_numpy(scores)
    if imgs.ndim == 4:
        imgs = imgs[:, 0]  # (n, H, W)
    if not (len(imgs) == len(given_) == len(true_) == len(s)):
        raise ValueError(f"images, given, true and scores must have the same length, got "
                         f"{len(imgs)}, {len(given_)}, {len(true_)}, {len(s)}")
    k = min(k, len(s))
    top = np.argsort(-s, kind="stable")[:k]  # (k,) most suspicious first
    name = (lambda c: classes[c]) if classes is not None else str
    rows, cols = grid_shape(k, ncols)
    fig = Figure(figsize=(1.3 * cols, 1.55 * rows + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, i in zip(axes, top):
        wrong = given_[i] != true_[i]
        ax.imshow(imgs[i], cmap="gray_r")
        ax.set_title(f"#{i} given {name(given_[i])}\ntrue {name(true_[i])}", fontsize=8,
                     color=FLIPPED_COLOUR if wrong else CLEAN_COLOUR)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[k:]:
        fig.delaxes(ax)
    n_wrong = int((given_[top] != true_[top]).sum())
    fig.suptitle(title or f"Top {k} suspects: {n_wrong} mislabelled (red title = given label is wrong)")
    return fig


def plot_score_distributions(
    scores: Mapping[str, ArrayLike], flipped: ArrayLike, ncols: int = 4, bins: int = 30
) -> Figure:
    """Histograms of each method's scores, flipped vs clean training points, with the detection AUC.

    A method separates mislabelled points when the red (flipped) mass sits to the right of the grey (clean) one.

    Args:
        scores: {method: (n,) scores}, higher = more harmful.
        flipped: (n,) bool, True where the training label was corrupted.
        ncols: panels per row.
        bins: histogram bins.

    Returns:
        A Figure with one axis per method.
    """
    from sklearn.metrics import roc_auc_score

    f = as_numpy(flipped).astype(bool)
    fig, axes = facets(len(scores), ncols, 3.4, 2.7)
    for ax, (method, s) in zip(axes, scores.items()):
        s = as_numpy(s).astype(float)
        if s.shape != f.shape:
            raise ValueError(f"scores[{method!r}] has shape {s.shape} but flipped has shape {f.shape}")
        edges = np.histogram_bin_edges(s, bins=bins)
        sns.histplot(s[~f], bins=edges, ax=ax, color=CLEAN_COLOUR, label="clean", stat="density", alpha=0.5)
        sns.histplot(s[f], bins=edges, ax=ax, color=FLIPPED_COLOUR, label="flipped", stat="density", alpha=0.5)
        auc = roc_auc_score(f, s) if 0 < f.sum() < len(f) else float("nan")
        ax.set_title(f"{method}  (AUC {auc:.2f})")
        ax.set_xlabel("score (higher = more harmful)")
        ax.set_ylabel("density")
        ax.legend(fontsize=8)
        readable_ticks(ax, "x")  # the scores; densities stack vertically and never clash
    for ax in axes[len(scores):]:
        fig.delaxes(ax)
    fig.suptitle("Score distributions: flipped vs clean training points")
    return fig


def plot_agreement(
    predicted: Mapping[str, ArrayLike],
    actual: ArrayLike,
    ncols: int = 3,
    xlabel: str = "actual change of val loss (leave-one-out)",
    ylabel: str = "predicted change",
) -> Figure:
    """Predicted vs actual effect of removing each training point, one scatter panel per method.

    Each panel's title gives the Pearson correlation and the share of points with the right SIGN (the paper's
    error measure). The dashed diagonal is y = x: points on it are predicted exactly, scale included; methods
    without an inverse Hessian (TracIn, gradient dot product) are only expected to correlate.

    Args:
        predicted: {method: (m,) predicted changes} for the same m training points as ``actual``.
        actual: (m,) measured changes (e.g. ``ifkit.optim.fullbatch.upweight_val_change``).
        ncols: panels per row.

    Returns:
        A Figure with one axis per method, each holding one scatter of m points.
    """
    a = as_numpy(actual).astype(float)
    colours = palette(predicted)
    fig, axes = facets(len(predicted), ncols, 3.6, 3.4)
    for ax, (method, p) in zip(axes, predicted.items()):
        p = as_numpy(p).astype(float)
        if p.shape != a.shape:
            raise ValueError(f"predicted[{method!r}] has shape {p.shape} but actual has shape {a.shape}")
        sns.scatterplot(x=a, y=p, ax=ax, color=colours[method], s=22, edgecolor="none")
        lo, hi = float(min(a.min(), p.min())), float(max(a.max(), p.max()))
        ax.plot([lo, hi], [lo, hi], ls="--", lw=1, color="k", alpha=0.5)
        ax.axhline(0, lw=0.6, color="k", alpha=0.3)
        ax.axvline(0, lw=0.6, color="k", alpha=0.3)
        ax.set_title(f"{method}: r = {pearson(a, p):.3f}, sign {100 * sign_agreement(a, p):.0f}%")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    for ax in axes[len(predicted):]:
        fig.delaxes(ax)
    fig.suptitle("Influence estimates vs the truth")
    return fig


def plot_damping_effect(
    H: ArrayLike,
    g_train: ArrayLike,
    g_val: ArrayLike,
    actual: ArrayLike,
    eps: float,
    damping: float = 1e-2,
    weight_decay: float | None = None,
    grid: ArrayLike | None = None,
) -> Figure:
    """How the damping of (H + damping I)^-1 changes the agreement of influence with the truth.

    predicted_i = eps * score_i = -eps * g_i^T (H + damping I)^-1 g_val, for every damping on ``grid`` at once
    from one eigendecomposition H = Q diag(lam) Q^T. Left: predicted vs actual at ``damping``. Right: Pearson r
    and sign agreement over the grid; when the model was trained with an L2 penalty ``weight_decay``, the exact
    Hessian of its objective is H + weight_decay I, so agreement should peak there.

    Args:
        H: (p, p) Hessian of the mean training loss (without the L2 term).
        g_train: (m, p) gradients of the m training points being compared.
        g_val: (p,) mean validation gradient.
        actual: (m,) measured change of the validation loss.
        eps: the up-weighting behind ``actual`` (leave-one-out: -1 / n_train).
        damping: the damping of the left panel (> 0).
        weight_decay: marked on the right panel when given.
        grid: dampings of the right panel (default: 25 log-spaced values from 1e-5 to 10).

    Returns:
        A Figure with two axes.
    """
    if not (damping > 0 and math.isfinite(damping)):
        raise ValueError(f"damping must be a finite number > 0, got {damping!r}")
    H_, G, gv = (torch.as_tensor(as_numpy(t), dtype=torch.float64) for t in (H, g_train, g_val))
    a = as_numpy(actual).astype(float)
    if H_.dim() != 2 or H_.shape[0] != H_.shape[1] or G.shape[1:] != H_.shape[:1] or gv.shape != H_.shape[:1]:
        raise ValueError(f"shapes do not fit: H {tuple(H_.shape)}, g_train {tuple(G.shape)}, g_val {tuple(gv.shape)};"
                         " expected (p, p), (m, p), (p,)")
    if len(G) != len(a):
        raise ValueError(f"g_train has {len(G)} rows but actual has {len(a)} entries")
    lams = np.logspace(-5, 1, 25) if grid is None else as_numpy(grid).astype(float)
    lams = np.unique(np.append(lams, damping))  # (d,), sorted, includes the slider's value
    evals, Q = torch.linalg.eigh((H_ + H_.T) / 2)  # (p,), (p, p)
    a_g, a_v = G @ Q, Q.T @ gv  # (m, p), (p,): both sides in H's eigenbasis
    d = torch.as_tensor(lams, dtype=torch.float64)
    preds = (-eps * (a_g * a_v) @ (1 / (evals[:, None] + d[None, :]))).numpy()  # (m, d) = eps * score
    r = np.array([pearson(a, preds[:, j]) for j in range(len(lams))])
    sign = np.array([sign_agreement(a, preds[:, j]) for j in range(len(lams))])
    cur = preds[:, int(np.searchsorted(lams, damping))]  # (m,)

    with sns.axes_style(STYLE):
        fig = Figure(figsize=(10, 3.9), layout="constrained")
        ax_s, ax_r = fig.subplots(1, 2)
    sns.scatterplot(x=a, y=cur, ax=ax_s, color=palette(["if-exact"])["if-exact"], s=22, edgecolor="none")
    lo, hi = float(min(a.min(), cur.min())), float(max(a.max(), cur.max()))
    ax_s.plot([lo, hi], [lo, hi], ls="--", lw=1, color="k", alpha=0.5)
    ax_s.set_title(f"damping = {damping:.2g}: r = {pearson(a, cur):.3f}, sign {100 * sign_agreement(a, cur):.0f}%")
    ax_s.set_xlabel("actual change of val loss (leave-one-out)")
    ax_s.set_ylabel("predicted change")

    ax_r.plot(lams, r, marker="o", ms=3, label="Pearson r")
    ax_r.plot(lams, sign, marker="s", ms=3, label="sign agreement")
    ax_r.axvline(damping, color="k", lw=1, label=f"damping = {damping:.2g}")
    if weight_decay is not None:
        ax_r.axvline(weight_decay, color="#d62728", ls=":", lw=1.5, label=f"weight decay = {weight_decay:.2g}")
    ax_r.set_xscale("log")
    ax_r.set_xlabel("damping")
    ax_r.set_ylabel("agreement with leave-one-out")
    ax_r.set_title("Agreement over damping")
    ax_r.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    return fig



__all__ = ["plot_agreement", "plot_damping_effect", "plot_score_distributions", "plot_suspicious"]
