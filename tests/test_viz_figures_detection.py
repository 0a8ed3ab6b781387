"""Figure producers of the detection, relabel and ablation results (ifkit/viz/figures_detection.py, figures_relabel.py), on small synthetic frames.

The frames have the schemas of results/detection.csv, detection_dynamics.csv, ablation.csv and relabel.csv; no
training happens here. Every producer must also draw a partial file (missing methods, settings or kinds).
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from ifkit.experiments.ablation import paired_gap
from ifkit.viz import figures, figures_detection, figures_relabel, palette

DET_METHODS = ("loss", "graddot", "tracin", "if-lissa", "if-cg", "ekfac", "datainf", "self-if", "gex", "vm", "fvm",
               "fvm-sam", "loss-early", "vm-early", "cleanlab", "loss@theta~", "gradnorm@theta~")
SETTINGS = (("symmetric", 0.2), ("symmetric", 0.4), ("asymmetric", 0.4), ("hard", 0.4))
STATE = dict(fit_flipped=0.99, train_acc=1.0, val_acc=0.7, test_acc=0.68, early_epoch=25, early_test_acc=0.78)


def detection_frame(seeds=2, methods=DET_METHODS, settings=SETTINGS, dataset="fashion", n_val=300) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for noise, rate in settings:
        for seed in range(seeds):
            for i, m in enumerate(methods):
                auc = 0.6 + 0.38 * i / len(methods) + 0.01 * rng.standard_normal()
                rows.append(dict(dataset=dataset, noise=noise, rate=rate, seed=seed, method=m, n_val=n_val, auc=auc,
                                 ap=auc - 0.2, recall_at_10pct=auc - 0.3, seconds=1.0, n_train=2000, **STATE))
    return pd.DataFrame(rows)


def dynamics_frame(seeds=1, kinds=("training", "flat")) -> pd.DataFrame:
    rows = []
    key = dict(dataset="fashion", noise="symmetric", rate=0.4)
    for seed in range(seeds):
        if "training" in kinds:
            for j, epoch in enumerate((25, 50, 100, 200, 300)):
                for m in ("loss", "if-cg", "vm"):
                    rows.append(dict(**key, seed=seed, kind="training", step=epoch, method=m, auc=0.9 - 0.05 * j,
                                     val_acc=0.8 - 0.03 * j, fit_flipped=0.2 * j, clean_std=1.0, clean_abs_median=0.5,
                                     noisy_abs_median=1.0))
        if "flat" in kinds:
            for j, step in enumerate((0, 5, 20, 50, 100, 200)):
                for m in ("if-cg", "vm", "fvm"):
                    good = m != "if-cg"
                    rows.append(dict(**key, seed=seed, kind="flat", step=step, method=m,
                                     auc=0.7 + (0.04 if good else -0.02) * j, val_acc=0.7 + 0.02 * j,
                                     fit_flipped=np.nan, clean_std=2.0 ** -j, clean_abs_median=0.5 / (j + 1),
                                     noisy_abs_median=1.0))
    return pd.DataFrame(rows)


FACTORS = {"n_val": ((60, 120, 300), ("vm", "fvm", "loss@theta~", "if-cg")), "flat_steps": ((0, 20, 100, 400), ("vm", "fvm")),
           "damping": ((1e-3, 1e-2, 1e-1), ("vm", "fvm")), "hidden": ((16, 32, 64), ("vm", "fvm", "if-cg", "tracin"))}


def ablation_frame(seeds=3, factors=tuple(FACTORS)) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for f in factors:
        values, methods = FACTORS[f]
        for seed in range(seeds):
            for value in values:
                for m in methods:
                    auc = 0.85 + (0.02 if m == "fvm" else 0.0) + 0.01 * rng.standard_normal()
                    rows.append(dict(dataset="fashion", noise="asymmetric" if f == "n_val" else "symmetric", rate=0.4,
                                     seed=seed, factor=f, value=value, method=m, auc=auc, ap=auc - 0.2,
                                     recall_at_10pct=auc - 0.3, seconds=1.0, fit_flipped=0.99))
    return pd.DataFrame(rows)


RELABEL = ("if-lissa", "tracin", "gex", "vm", "fvm", "pred", "pred@theta~")


def relabel_frame(seeds=2, methods=RELABEL + ("noisy", "remove", "clean"),
                  settings=(("symmetric", 0.4), ("asymmetric", 0.4))) -> pd.DataFrame:
    rows = []
    for noise, rate in settings:
        for seed in range(seeds):
            for i, m in enumerate(methods):
                row = dict(dataset="fashion", noise=noise, rate=rate, seed=seed, method=m, k=800, seconds=1.0,
                           retrain_test_acc=0.7 + 0.01 * i + 0.005 * seed)
                if m in RELABEL:
                    row.update(flagged_by=m if m not in ("pred", "pred@theta~") else "fvm", precision=0.8,
                               relabel_acc=0.1 * i, relabel_acc_flagged=0.1 * i, agree_theta_tilde=0.5 + 0.05 * i,
                               changed=0.9, clean_bound=0.85 + 0.01 * seed)
                rows.append(row)
    return pd.DataFrame(rows)


def _renders(fig: Figure) -> bool:
    fig.savefig(io.BytesIO(), format="png", dpi=30)  # mathtext and layout are only resolved when drawn
    return True


def _data_axes(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


# ------------------------------------------------------------------------------------------------ registry
@pytest.mark.parametrize("name, inputs", [
    ("detection_table", ("detection.csv",)), ("fig2_auc_vs_val_acc", ("detection_dynamics.csv",)),
    ("fig3_flat_finetuning", ("detection_dynamics.csv",)), ("ablation", ("ablation.csv",)),
    ("relabel", ("relabel.csv",)),
])
def test_producers_are_registered_with_their_inputs(name, inputs):
    assert figures.FIGURES[name].inputs == inputs


def test_save_all_writes_the_detection_figures(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    detection_frame(seeds=1, settings=SETTINGS[:1]).to_csv(res / "detection.csv", index=False)
    dynamics_frame().to_csv(res / "detection_dynamics.csv", index=False)
    # one figure per input file is enough here: tests/test_reproduce_fast.py saves every figure from real results
    names = ["detection_table", "fig3_flat_finetuning", "ablation", "relabel"]
    written = figures.save_all(res, tmp_path / "figs", names=names)
    assert sorted(p.stem for p in written) == sorted(names[:2])  # ablation.csv / relabel.csv are not there yet
    assert all(p.stat().st_size > 0 for p in written)


# ------------------------------------------------------------------------------------------------ detection
def test_detection_table_orders_methods_by_mean_auc():
    df = detection_frame()
    fig = figures_detection.detection_table(df)
    assert isinstance(fig, Figure) and _renders(fig)
    heat = fig.axes[0]
    labels = [t.get_text() for t in heat.get_yticklabels()]
    expected = df.groupby("method")["auc"].mean().sort_values(ascending=False).index.tolist()
    assert labels == expected
    assert [t.get_text() for t in heat.get_xticklabels()] == ["symmetric 20%", "symmetric 40%", "asymmetric 40%",
                                                             "hard 40%"]
    bold = {t.get_text() for t in heat.get_yticklabels() if t.get_fontweight() == "bold"}
    assert bold == {"vm", "fvm", "fvm-sam"}
    annotations = [t.get_text() for t in heat.texts]
    assert len(annotations) == len(DET_METHODS) * len(SETTINGS) and all("±" in a for a in annotations)


def test_detection_table_handles_missing_cells_and_mixed_runs():
    full = detection_frame(seeds=1)
    partial = full[~((full["method"] == "cleanlab") & (full["noise"] == "hard"))]  # a run still in progress
    fast = detection_frame(seeds=1, methods=("loss", "vm"), settings=(("symmetric", 0.3),), dataset="digits", n_val=200)
    other_nval = detection_frame(seeds=1, methods=("vm",), settings=(("asymmetric", 0.4),), n_val=60).head(1)
    fig = figures_detection.detection_table(pd.concat([partial, fast, other_nval, full.head(0)]))
    assert _renders(fig)
    heat = fig.axes[0]
    assert "symmetric 30%" not in [t.get_text() for t in heat.get_xticklabels()]  # the digits run is left out
    texts = [t.get_text() for t in heat.texts]
    assert len(texts) == len(DET_METHODS) * len(SETTINGS) - 1  # the missing cell stays blank
    assert not any("±" in t for t in texts)  # one seed: no std


def test_detection_table_on_empty_rows():
    fig = figures_detection.detection_table(detection_frame().iloc[:0])
    assert isinstance(fig, Figure) and _renders(fig)


def test_detection_palette_keeps_vm_and_fvm_colours():
    pal = palette.detection_palette(["vm", "fvm", "cleanlab", "vm-early", "something-new"])
    assert pal["vm"] == palette.METHOD_PALETTE["vm"] and pal["fvm"] == palette.METHOD_PALETTE["fvm"]
    assert len(set(pal.values())) == len(pal)


# ------------------------------------------------------------------------------------------------ Fig. 2 / 3
def test_fig2_one_line_per_method_and_fit_flipped_colourbar():
    fig = figures_detection.fig2_auc_vs_val_acc(dynamics_frame(seeds=2))
    assert _renders(fig)
    ax_v = fig.axes[0]
    assert {ln.get_label() for ln in ax_v.get_lines()} == {"loss", "if-cg", "vm"}
    assert any(ax.get_label() == "<colorbar>" for ax in fig.axes)
    x, _ = ax_v.get_lines()[0].get_data()
    assert len(x) == 5  # one point per checkpoint, averaged over the two seeds


def test_fig3_auc_and_shrinking_clean_spread():
    fig = figures_detection.fig3_flat_finetuning(dynamics_frame())
    assert _renders(fig)
    ax_a, ax_s, ax_r = fig.axes[0], fig.axes[1], fig.axes[2]
    assert {ln.get_label() for ln in ax_a.get_lines()} == {r"if-cg at $\theta_t$", "vm", "fvm"}
    for ln in ax_s.get_lines():
        y = ln.get_ydata()
        assert y[0] == pytest.approx(1.0) and y[-1] < y[0]  # relative to step 0, and shrinking
    assert len(ax_r.get_lines()) == 3 + 1  # three methods and the y = 1 line


@pytest.mark.parametrize("kinds", [("training",), ("flat",), ()])
def test_dynamics_figures_with_one_kind_missing(kinds):
    df = dynamics_frame(kinds=kinds) if kinds else dynamics_frame().iloc[:0]
    for producer in (figures_detection.fig2_auc_vs_val_acc, figures_detection.fig3_flat_finetuning):
        fig = producer(df)
        assert isinstance(fig, Figure) and _renders(fig)


@pytest.mark.parametrize("dropped", [["clean_std", "clean_abs_median", "noisy_abs_median"], ["clean_abs_median"]])
def test_fig3_without_some_spread_columns(dropped):
    df = dynamics_frame(kinds=("flat",)).drop(columns=dropped)
    fig = figures_detection.fig3_flat_finetuning(df)
    assert _renders(fig)
    assert len(fig.axes[1].get_lines()) == (3 if "clean_std" in df else 0)  # falls back to clean_std


# ------------------------------------------------------------------------------------------------ ablation
def test_ablation_one_panel_per_factor_and_the_paired_gap():
    df = ablation_frame()
    fig = figures_relabel.ablation(df)
    assert _renders(fig)
    axes = _data_axes(fig)
    assert len(axes) == len(FACTORS) + 1
    gap_ax = axes[-1]
    heights = [p.get_height() for p in gap_ax.patches]
    expected = paired_gap(df)["mean"].tolist()
    np.testing.assert_allclose(heights, expected)
    labels = [t.get_text() for t in gap_ax.texts]
    assert labels == [f"{w}/3" for w in paired_gap(df)["wins"]]


def test_ablation_partial():
    df = ablation_frame(seeds=1, factors=("flat_steps",))  # no n_val rows yet: no gap panel
    fig = figures_relabel.ablation(df)
    assert _renders(fig) and len(_data_axes(fig)) == 1
    only_vm = ablation_frame(seeds=2, factors=("n_val",))
    only_vm = only_vm[only_vm["method"] != "fvm"]
    fig = figures_relabel.ablation(only_vm)
    assert _renders(fig) and len(_data_axes(fig)) == 1
    assert _renders(figures_relabel.ablation(ablation_frame().iloc[:0]))


# ------------------------------------------------------------------------------------------------ relabel
def test_relabel_three_panels_and_reference_lines():
    df = relabel_frame()
    fig = figures_relabel.relabel(df)
    assert _renders(fig)
    ax_r, ax_t, ax_a = fig.axes[:3]
    assert len(ax_r.containers) == len(RELABEL)  # one bar group per relabelling method
    refs = [c for c in ax_t.collections if c.get_label() in ("noisy", "remove", "clean")]
    assert sorted(c.get_label() for c in refs) == ["clean", "noisy", "remove"]
    hatched = [p for c in ax_r.containers if c.get_label() == "pred@theta~" for p in c]
    assert hatched and all(p.get_hatch() == "//" for p in hatched)
    ticks = [c for c in ax_r.collections if c.get_segments()]  # the clean-label bound: one tick per bar
    assert sum(len(c.get_segments()) for c in ticks) == len(RELABEL) * 2
    assert all(seg[0][1] == pytest.approx(0.855) for c in ticks for seg in c.get_segments())  # mean over 2 seeds
    assert "clean-label bound" in [t.get_text() for t in fig.legends[0].get_texts()]


def test_relabel_partial():
    only_refs = relabel_frame(methods=("noisy", "clean"), settings=(("symmetric", 0.4),))
    assert _renders(figures_relabel.relabel(only_refs))
    some = relabel_frame(methods=("fvm", "pred@theta~"), seeds=1)
    assert _renders(figures_relabel.relabel(some))
    assert _renders(figures_relabel.relabel(relabel_frame().iloc[:0]))
