"""Figures of the ablations (results/ablation.csv) and of relabeling the flagged points (results/relabel.csv)."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from .common import note_figure, one_run, with_settings
from .figures import register
from .palette import CLEANING_METHODS, detection_order, detection_palette

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

    df = one_run(ablation).dropna(subset=["auc"]) if "factor" in ablation else ablation.iloc[:0]
    if df.empty:
        return note_figure("Ablations", "no rows with an AUC in ablation.csv yet")
    factors = [f for f in ABLATION_LABELS if f in set(df["factor"])] + sorted(set(df["factor"]) - set(ABLATION_LABELS))
    nv = df[df["factor"] == "n_val"]
    has_gap = {"vm", "fvm"} <= set(nv["method"])
    with sns.axes_style("whitegrid"):
        n = len(factors) + has_gap
        fig = Figure(figsize=(3.9 * n, 3.7), layout="constrained")
        axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, f in zip(axes, factors):
        part = df[df["factor"] == f].astype({"value": float})
        methods = detection_order(part["method"])
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


@register("relabel", inputs=("relabel.csv",))
def relabel(relabel: pd.DataFrame) -> Figure:
    """Relabeling the flagged training points: per setting and method, bars of means over seeds (whiskers: std).

    Left: relabel accuracy (share of the flagged, truly flipped points whose new label is the clean one); the black
    tick on each bar is ``clean_bound``, what a network trained on the clean labels of the unflagged points gets on
    the same points. ``vm-best-val`` / ``fvm-best-val`` are ``ifkit.clean`` (the best-val checkpoint).
    Middle: test accuracy after retraining on the relabelled set; horizontal lines give the retraining references
    (train on the noisy set as it is, drop FVM's flagged points, train on the clean labels). Right: how often the
    new label equals the prediction of VM's fine-tuned model theta~ -- near 1, influence relabeling adds nothing
    over theta~'s prediction. ``pred`` and ``pred@theta~`` relabel FVM's flags with a model's prediction.
    """
    import seaborn as sns

    df = one_run(relabel)
    if df.empty or "method" not in df:
        return note_figure("Relabeling", "no rows in relabel.csv yet")
    df, settings = with_settings(df)
    methods = [m for m in detection_order(df["method"]) if m not in CLEANING_METHODS]
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
                if col == "relabel_acc" and "clean_bound" in data and len(bars) == len(settings):  # bound: a tick
                    bound = data[data["method"] == m].groupby("setting")["clean_bound"].mean()
                    for patch, setting in zip(bars, settings):
                        if pd.notna(bound.get(setting)):
                            x0 = patch.get_x()
                            ax.hlines(bound[setting], x0, x0 + patch.get_width(), color="black", lw=1.5,
                                      label="clean-label bound" if (m, setting) == (hue[0], settings[0]) else None)
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
    for h, lab in zip(*axes[0].get_legend_handles_labels()):
        if lab == "clean-label bound":
            handles.append(h)
            labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8, frameon=False,
                   title="new label by (bars) / retraining references (lines)", title_fontsize=8)
    fig.suptitle(f"Relabeling the flagged points ({df['dataset'].iloc[0]}, seeds: {df['seed'].nunique()})",
                 fontsize=11)
    return fig


__all__ = ["ABLATION_LABELS", "ablation", "relabel"]
