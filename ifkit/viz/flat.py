"""Plots of notebooks 02 (the error split of influence) and 04 (flat validation minima)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import seaborn as sns
from matplotlib.figure import Figure

from .basics import plot_score_distributions
from .common import STYLE, ArrayLike, as_numpy, facets, pearson, sign_agreement
from .palette import CLEAN_COLOUR, FLIPPED_COLOUR, SPLIT_COLOURS, is_control, method_colour


def plot_parameter_change(dtheta_pred: ArrayLike, dtheta_true: ArrayLike, flipped: ArrayLike | None = None) -> Figure:
    """Step 1 of influence: the predicted parameter change against the true one, one point per training point.

    Left: the lengths ||d theta_pred|| against ||d theta_true|| (log-log; on the dashed diagonal the length is
    exact). Right: a histogram of cos(d theta_pred, d theta_true): 1 = the direction is exact.

    Args:
        dtheta_pred: (m, p) predicted changes, e.g. the Newton step -eps H^-1 g_i.
        dtheta_true: (m, p) measured changes theta_eps - theta* (retraining).
        flipped: optional (m,) bool; flipped points are drawn in red.

    Returns:
        A Figure with two axes; the right title gives the median cosine and the median length ratio.
    """
    P, T = as_numpy(dtheta_pred).astype(float), as_numpy(dtheta_true).astype(float)
    if P.ndim != 2 or P.shape != T.shape:
        raise ValueError(f"dtheta_pred and dtheta_true must both be (m, p), got {P.shape} and {T.shape}")
    n_pred, n_true = np.linalg.norm(P, axis=1), np.linalg.norm(T, axis=1)  # (m,)
    if (n_true == 0).any() or (n_pred == 0).any():
        raise ValueError("every parameter change must be nonzero (a zero row has no direction)")
    cos = (P * T).sum(1) / (n_pred * n_true)  # (m,)
    f = np.zeros(len(P), bool) if flipped is None else as_numpy(flipped).astype(bool)
    if f.shape != (len(P),):
        raise ValueError(f"flipped has shape {f.shape}, expected ({len(P)},)")
    with sns.axes_style(STYLE):
        fig = Figure(figsize=(9.5, 3.8), layout="constrained")
        ax_n, ax_c = fig.subplots(1, 2)
    for mask, colour, label in ((~f, CLEAN_COLOUR, "clean"), (f, FLIPPED_COLOUR, "flipped")):
        if mask.any():
            ax_n.scatter(n_true[mask], n_pred[mask], s=18, color=colour, label=label, alpha=0.8)
    lo, hi = float(min(n_true.min(), n_pred.min())), float(max(n_true.max(), n_pred.max()))
    ax_n.plot([lo, hi], [lo, hi], ls="--", lw=1, color="k", alpha=0.5)
    ax_n.set_xscale("log")
    ax_n.set_yscale("log")
    ax_n.set_xlabel(r"$\|\Delta\theta_{true}\|$ (retraining)")
    ax_n.set_ylabel(r"$\|\Delta\theta_{IF}\|$ (Newton step)")
    ax_n.set_title(f"length: median ratio predicted/true {np.median(n_pred / n_true):.2f}")
    if f.any():
        ax_n.legend(fontsize=8)
    # cosines are <= 1; a fixed range keeps the histogram defined when they are all (nearly) equal
    sns.histplot(cos, bins=20, binrange=(min(float(cos.min()), 1 - 1e-3), 1.0), ax=ax_c, color=SPLIT_COLOURS[0])
    ax_c.set_xlabel(r"$\cos(\Delta\theta_{IF}, \Delta\theta_{true})$")
    ax_c.set_title(f"direction: median cosine {np.median(cos):.4f} (min {cos.min():.3f})")
    fig.suptitle("Step 1: the parameter change")
    return fig


def plot_loss_change_split(
    true: ArrayLike, estimates: Mapping[str, ArrayLike], flipped: ArrayLike | None = None, ncols: int = 3
) -> Figure:
    """Estimates of a validation-loss change against the true change, one scatter panel per estimate.

    Meant for notebook 02's error split, e.g. {"(a) classic IF": ..., "(b) exact dtheta, 1st order": ...,
    "(c) exact dtheta, 2nd order": ...}; panels are coloured in order by ``SPLIT_COLOURS``. Each title gives the
    sign error (share of points whose estimate has the wrong sign: the paper's error measure), the Pearson r and
    the relative error ||est - true|| / ||true||.

    Args:
        true: (m,) measured changes of the mean validation loss.
        estimates: {label: (m,) estimated changes}.
        flipped: optional (m,) bool; flipped points are drawn with a red edge.
        ncols: panels per row.

    Returns:
        A Figure with one axis per estimate.
    """
    d = as_numpy(true).astype(float)
    if d.ndim != 1 or not len(estimates):
        raise ValueError("true must be 1-D and estimates must hold at least one (m,) array")
    f = np.zeros(len(d), bool) if flipped is None else as_numpy(flipped).astype(bool)
    if f.shape != d.shape:
        raise ValueError(f"flipped has shape {f.shape} but true has shape {d.shape}")
    fig, axes = facets(len(estimates), ncols, 3.7, 3.5)
    for k, (ax, (label, est)) in enumerate(zip(axes, estimates.items())):
        e = as_numpy(est).astype(float)
        if e.shape != d.shape:
            raise ValueError(f"estimates[{label!r}] has shape {e.shape} but true has shape {d.shape}")
        colour = SPLIT_COLOURS[k % len(SPLIT_COLOURS)]
        ax.scatter(d[~f], e[~f], s=18, color=colour, alpha=0.8, label="clean")
        if f.any():
            ax.scatter(d[f], e[f], s=18, color=colour, edgecolor=FLIPPED_COLOUR, linewidth=1.2, label="flipped")
        lo, hi = float(min(d.min(), e.min())), float(max(d.max(), e.max()))
        ax.plot([lo, hi], [lo, hi], ls="--", lw=1, color="k", alpha=0.5)
        ax.axhline(0, lw=0.6, color="k", alpha=0.3)
        ax.axvline(0, lw=0.6, color="k", alpha=0.3)
        rel = np.linalg.norm(e - d) / max(np.linalg.norm(d), 1e-300)
        ax.set_title(f"{label}\nsign error {100 * (1 - sign_agreement(e, d)):.1f}%, r = {pearson(d, e):.3f}, "
                     f"rel. error {rel:.2f}", fontsize=9)
        ax.set_xlabel(r"true $\Delta L_{val}$ (retraining)")
        ax.set_ylabel("estimate")
    if f.any():
        axes[0].legend(fontsize=8)
    for ax in axes[len(estimates):]:
        fig.delaxes(ax)
    fig.suptitle("Step 2: the change of the validation loss")
    return fig


def plot_taylor_terms(terms: Mapping[str, tuple[ArrayLike, ArrayLike]], flipped: ArrayLike | None = None,
                      ncols: int = 3) -> Figure:
    """Slope against curvature: |first-order term| vs |second-order term| of each point's loss change.

    For a parameter move d theta the validation loss changes by g_val^T d theta + 1/2 d theta^T H_val d theta
    + ... Above the diagonal the curvature term is the larger one, and the first-order estimate can have the
    wrong sign; the shaded band (ratio within 10x of it) is where curvature is no longer negligible. One panel
    per entry of ``terms`` (e.g. one model, or one place theta where the terms are evaluated).

    Args:
        terms: {label: ((m,) first-order terms, (m,) second-order terms)}.
        flipped: optional (m,) bool, the same for every panel; flipped points are red.
        ncols: panels per row.

    Returns:
        A Figure with one axis per entry; each title gives the median ratio |second| / |first| and the share of
        points above the diagonal.
    """
    if not len(terms):
        raise ValueError("terms must hold at least one (first, second) pair")
    fig, axes = facets(len(terms), ncols, 4.0, 3.7)
    for ax, (label, pair) in zip(axes, terms.items()):
        first, second = (np.abs(as_numpy(t).astype(float)) for t in pair)
        if first.ndim != 1 or first.shape != second.shape:
            raise ValueError(f"terms[{label!r}]: first and second must be 1-D of one length, got "
                             f"{first.shape} and {second.shape}")
        f = np.zeros(len(first), bool) if flipped is None else as_numpy(flipped).astype(bool)
        if f.shape != first.shape:
            raise ValueError(f"flipped has shape {f.shape} but terms[{label!r}] has length {len(first)}")
        tiny = np.finfo(float).tiny
        x, y = np.maximum(first, tiny), np.maximum(second, tiny)
        lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
        line = np.geomspace(lo, hi, 50)
        ax.fill_between(line, line / 10, line, color="#ff7f0e", alpha=0.12, lw=0)
        ax.plot(line, line, ls="--", lw=1, color="k", alpha=0.6)
        for mask, colour, name in ((~f, CLEAN_COLOUR, "clean"), (f, FLIPPED_COLOUR, "flipped")):
            if mask.any():
                ax.scatter(x[mask], y[mask], s=16, color=colour, alpha=0.8, label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ratio = y / x
        ax.set_title(f"{label}\nmedian ratio {np.median(ratio):.3f}, above diagonal {100 * (ratio > 1).mean():.0f}%",
                     fontsize=9)
        ax.set_xlabel(r"|first order| $|g_{val}^\top\Delta\theta|$")
        ax.set_ylabel(r"|second order| $\frac{1}{2}|\Delta\theta^\top H_{val}\Delta\theta|$")
        if f.any():
            ax.legend(fontsize=8)
    for ax in axes[len(terms):]:
        fig.delaxes(ax)
    return fig


def plot_flat_trajectories(
    trajectories: Mapping[str, object], columns: Sequence[str] = ("val_loss", "sharpness", "grad_norm")
) -> Figure:
    """Flat fine-tuning on S_val: one panel per logged quantity, one line per optimiser.

    Args:
        trajectories: {name: DataFrame} with a ``step`` column and the ``columns`` (the ``trajectory`` of
            ``ifkit.optim.flat_finetune.flat_finetune``); names "sgd", "lpf", "sam" (or method names) pick their colours.
        columns: the quantities to plot; "sharpness" and "grad_norm" are drawn on a log axis.

    Returns:
        A Figure with one axis per column.
    """
    if not len(trajectories) or not len(columns):
        raise ValueError("give at least one trajectory and one column")
    labels = {"val_loss": "validation loss", "val_acc": "validation accuracy",
              "sharpness": "one-step sharpness (SAM, radius rho)", "grad_norm": r"$\|\nabla R_{val}\|$"}
    with sns.axes_style(STYLE):
        fig = Figure(figsize=(3.7 * len(columns), 3.4), layout="constrained")
        axes = np.atleast_1d(fig.subplots(1, len(columns))).ravel()
    for name, df in trajectories.items():
        missing = {"step", *columns} - set(df.columns)  # type: ignore[attr-defined]
        if missing:
            raise ValueError(f"trajectories[{name!r}] lacks the columns {sorted(missing)}")
        for ax, col in zip(axes, columns):
            ax.plot(df["step"], df[col], marker="o", ms=3, color=method_colour(name), label=name)  # type: ignore[index]
    for ax, col in zip(axes, columns):
        ax.set_xlabel("fine-tuning step on $S_{val}$")
        ax.set_ylabel(labels.get(col, col))
        if col in ("sharpness", "grad_norm"):
            ax.set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle("Fine-tuning on the validation set")
    return fig


def plot_influence_along_finetuning(curves, reference_step: int | None = None) -> Figure:
    """The paper's Fig. 3: influence computed at each snapshot of the fine-tuning on S_val.

    Left: detection AUC per method against the fine-tuning step. Right: the mean |score| of CLEAN training points,
    relative to its value at the first step (log axis): classic influence shrinks with the validation gradient.
    VM/FVM are drawn on top; controls (names with "@", e.g. "loss@snapshot") are dashed.

    Args:
        curves: a DataFrame with columns ``step``, ``method``, ``auc`` and ``clean_abs`` (mean |score| over the
            clean training points), one row per (step, method).
        reference_step: a step to mark with a vertical line (e.g. the slider of an ``interact``).

    Returns:
        A Figure with two axes.
    """
    missing = {"step", "method", "auc", "clean_abs"} - set(curves.columns)
    if missing:
        raise ValueError(f"curves lacks the columns {sorted(missing)}")
    with sns.axes_style(STYLE):
        fig = Figure(figsize=(10, 3.8), layout="constrained")
        ax_a, ax_s = fig.subplots(1, 2)
    for method, df in curves.groupby("method", sort=False):
        df = df.sort_values("step")
        rel = df["clean_abs"].to_numpy(float) / float(df["clean_abs"].iloc[0])
        name = str(method)
        style = dict(marker="o", ms=3, color=method_colour(name), label=name, ls="--" if is_control(name) else "-",
                     zorder=3 if name.lower().startswith(("vm", "fvm")) else 2)  # the paper's methods on top
        ax_a.plot(df["step"], df["auc"], **style)
        ax_s.plot(df["step"], rel, **style)
    for ax in (ax_a, ax_s):
        ax.set_xlabel("fine-tuning step on $S_{val}$")
        if reference_step is not None:
            ax.axvline(reference_step, color="k", lw=1, alpha=0.6)
    ax_a.set_ylabel("detection AUC")
    ax_a.set_title("finding the flipped labels")
    ax_a.legend(fontsize=8)
    ax_s.set_yscale("log")
    ax_s.set_ylabel("mean |score| of clean points / step 0")
    ax_s.set_title("clean-sample influence")
    return fig


def plot_method_aucs(table, x: str = "method", y: str = "auc", title: str | None = None) -> Figure:
    """Detection AUC per method as bars (mean over rows, e.g. seeds, with the spread as error bars).

    Args:
        table: a DataFrame with one row per (method, seed) measurement and columns ``x`` and ``y``.
        x: the column naming the method; bars keep the order of first appearance.
        y: the value column.
        title: figure title (default: none).

    Controls (names with "@", e.g. "loss@theta~") are hatched.

    Returns:
        A Figure with one axis; its y-range starts at 0.5 (chance).
    """
    missing = {x, y} - set(table.columns)
    if missing:
        raise ValueError(f"table lacks the columns {sorted(missing)}")
    order = list(dict.fromkeys(table[x]))
    with sns.axes_style(STYLE):
        fig = Figure(figsize=(max(4.0, 0.7 * len(order) + 1.5), 3.8), layout="constrained")
        ax = fig.subplots()
    sns.barplot(data=table, x=x, y=y, hue=x, order=order, hue_order=order, palette={m: method_colour(m) for m in order},
                errorbar=("pi", 100) if table.groupby(x)[y].size().max() > 1 else None, saturation=1,
                legend=False, ax=ax)
    for patch, m in zip(ax.patches, order):
        if is_control(m):
            patch.set_hatch("//")
            patch.set_edgecolor("white")
    means = table.groupby(x, sort=False)[y].mean()
    for i, m in enumerate(order):
        ax.text(i, float(means[m]) + 0.005, f"{means[m]:.3f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0.5, 1.02)
    ax.set_xlabel("")
    ax.set_ylabel("detection AUC" if y == "auc" else y)
    ax.tick_params(axis="x", rotation=45)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
    if title:
        ax.set_title(title)
    return fig


def plot_snapshot_scores(scores_by_step: Mapping[int, Mapping[str, ArrayLike]], flipped: ArrayLike, step: int,
                         bins: int = 30) -> Figure:
    """Score histograms (flipped vs clean) of each method at one snapshot of the fine-tuning on S_val.

    A thin selector over ``plot_score_distributions`` for an ``interact`` over the snapshot step.

    Args:
        scores_by_step: {step: {method: (n,) scores}} computed at each snapshot.
        flipped: (n,) bool mask of corrupted labels.
        step: which snapshot to show (a key of ``scores_by_step``).
        bins: histogram bins.

    Returns:
        A Figure with one axis per method.
    """
    if step not in scores_by_step:
        raise ValueError(f"no scores at step {step}; available steps: {sorted(scores_by_step)}")
    fig = plot_score_distributions(scores_by_step[step], flipped, ncols=len(scores_by_step[step]), bins=bins)
    fig.suptitle(f"Scores at fine-tuning step {step}: flipped (red) vs clean (grey)")
    return fig



__all__ = ["plot_flat_trajectories", "plot_influence_along_finetuning", "plot_loss_change_split",
           "plot_method_aucs", "plot_parameter_change", "plot_snapshot_scores", "plot_taylor_terms"]
