"""Figures of Theorem 3.2 (``ifkit reproduce theory`` -> results/theory.csv): the bound against the measured sign
error, and both along each trajectory."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from .figures import register
from .palette import METHOD_PALETTE, TRAJECTORY_ORDER, method_order, palette


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
    methods = method_order(df["method"])
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
    trajs = [t for t in TRAJECTORY_ORDER if t in set(df["trajectory"])]
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



__all__ = ["theory_bound", "theory_trajectories"]
