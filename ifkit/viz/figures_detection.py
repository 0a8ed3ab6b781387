"""Figures of mislabel detection (results/detection.csv, detection_dynamics.csv): the paper's Table 1 as a
heatmap and forest plot, Fig. 2 (AUC along training) and Fig. 3 (influence along the flat fine-tuning)."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from .common import note_figure, one_run, with_settings
from .figures import register
from .palette import PAPER_METHODS, REFERENCE_COLOUR, REFERENCE_METHODS, detection_order, detection_palette


def _style_method_labels(labels) -> None:
    """Tick labels: the paper's methods bold in their colour, non-influence references italic."""
    for label in labels:
        m = label.get_text()
        if m in PAPER_METHODS:
            label.set_color(detection_palette([m])[m])
            label.set_fontweight("bold")
        elif m in REFERENCE_METHODS:
            label.set_fontstyle("italic")
            label.set_color(REFERENCE_COLOUR)


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

    df = one_run(detection).dropna(subset=["auc"])
    if df.empty:
        return note_figure("Mislabel detection", "no rows with an AUC in detection.csv yet")
    df, settings = with_settings(df)
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
        ax_p.plot([], [], markers[j % len(markers)], color=REFERENCE_COLOUR, label=s)
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
    df = one_run(dynamics)
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
        return note_figure("Fig. 2: AUC vs validation accuracy", "no training-checkpoint rows in "
                            "detection_dynamics.csv yet")
    df, settings = with_settings(df)
    methods = detection_order(df["method"])
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
    median is not recorded) -- the SCALE of each method's scores, which shrinks for every method as theta_t
    nears the validation minimum, so by itself it shows no collapse. Right: median |score| of the clean points
    over that of the flipped points -- below 1, and falling, the clean points' scores collapse towards 0
    relative to the flipped ones (docs/PAPER.md, Sec. 4). Means over seeds; x axes symlog.
    """
    import seaborn as sns

    df = _dynamics_rows(dynamics, "flat")
    if df.empty:
        return note_figure("Fig. 3: flat fine-tuning", "no flat fine-tuning rows in detection_dynamics.csv yet")
    df, settings = with_settings(df)
    methods = detection_order(df["method"])
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
        ax_s.set_title("clean points' median |score| vs step 0: shrinks for every method", fontsize=9)
        ax_r.set_ylabel("median |score|: clean / flipped")
        ax_r.set_title("clean vs flipped median |score|: the clean scores collapse towards 0", fontsize=9)
    fig.suptitle("Fig. 3: classic influence at the fine-tuned model vs VM/FVM along the fine-tuning on $S_{val}$",
                 fontsize=11)
    return fig



__all__ = ["detection_table", "fig2_auc_vs_val_acc", "fig3_flat_finetuning"]
