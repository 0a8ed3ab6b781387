"""Plotting functions of notebooks 02 (the error split) and 04 (flat validation minima) in ifkit/viz/flat.py."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from ifkit import viz
from ifkit.viz import palette
from ifkit.viz.palette import METHOD_PALETTE


def _points(ax) -> int:
    return sum(len(c.get_offsets()) for c in ax.collections if hasattr(c, "get_offsets"))


def _renders(fig: Figure) -> bool:
    """Draw the figure (mathtext in labels and titles is only parsed when drawn)."""
    fig.savefig(io.BytesIO(), format="png", dpi=30)
    return True


# ------------------------------------------------------------------------------------------- notebook 02


def test_plot_parameter_change_reports_cosine_and_length_ratio():
    gen = torch.Generator().manual_seed(0)
    true = torch.randn(12, 30, generator=gen, dtype=torch.float64)
    pred = 2 * true  # same direction, twice as long
    flipped = torch.arange(12) < 4
    fig = viz.plot_parameter_change(pred, true, flipped)
    assert isinstance(fig, Figure) and len(fig.axes) == 2 and _renders(fig)
    lengths, cosines = fig.axes
    assert _points(lengths) == 12
    assert "2.00" in lengths.get_title()  # median length ratio
    assert "1.0000" in cosines.get_title()  # median cosine
    assert lengths.get_xscale() == "log"


def test_plot_parameter_change_validates():
    T = np.ones((3, 4))
    with pytest.raises(ValueError, match=r"\(m, p\)"):
        viz.plot_parameter_change(T[:, :2], T)
    with pytest.raises(ValueError, match="nonzero"):
        viz.plot_parameter_change(np.zeros((3, 4)), T)
    with pytest.raises(ValueError, match="flipped"):
        viz.plot_parameter_change(T, T, flipped=[True])


def test_plot_loss_change_split_one_panel_per_estimate_with_sign_error():
    d = np.array([-2.0, -1.0, 0.5, 1.0, 3.0])
    estimates = {"(a) classic": d * 1.5, "(b) first order": np.array([-2.0, 1.0, 0.5, 1.0, 3.0]), "(c) second": d}
    flipped = np.array([False, False, True, False, True])
    fig = viz.plot_loss_change_split(d, estimates, flipped)
    assert isinstance(fig, Figure) and len(fig.axes) == 3 and _renders(fig)
    titles = [ax.get_title() for ax in fig.axes]
    assert "sign error 0.0%" in titles[0] and "sign error 20.0%" in titles[1]  # one of five signs is wrong
    assert "rel. error 0.00" in titles[2]
    assert all(_points(ax) == 5 for ax in fig.axes)
    with pytest.raises(ValueError, match="shape"):
        viz.plot_loss_change_split(d, {"bad": d[:3]})
    with pytest.raises(ValueError, match="at least one"):
        viz.plot_loss_change_split(d, {})


def test_plot_taylor_terms_counts_points_above_the_diagonal():
    first = np.array([1.0, 1.0, 1.0, 1.0])
    second = np.array([0.01, 0.1, 2.0, -3.0])  # magnitudes: two of four above the diagonal
    fig = viz.plot_taylor_terms({"theta*": (first, second), "theta~": (first / 1000, second)},
                                    flipped=[True, False, False, False])
    assert isinstance(fig, Figure) and len(fig.axes) == 2 and _renders(fig)
    assert "above diagonal 50%" in fig.axes[0].get_title()
    assert "above diagonal 100%" in fig.axes[1].get_title()
    assert fig.axes[0].get_xscale() == "log" and fig.axes[0].get_yscale() == "log"
    with pytest.raises(ValueError, match="one length"):
        viz.plot_taylor_terms({"x": (first, second[:2])})


# ------------------------------------------------------------------------------------------- notebook 04


def _trajectory(scale: float) -> pd.DataFrame:
    steps = np.arange(0, 101, 10)
    return pd.DataFrame({"step": steps, "val_loss": scale * np.exp(-steps / 30), "val_acc": 1 - np.exp(-steps / 30),
                         "sharpness": 0.05 * np.exp(-steps / 40), "grad_norm": np.exp(-steps / 50)})


def test_plot_flat_trajectories_one_line_per_optimiser_and_palette_colours():
    fig = viz.plot_flat_trajectories({"sgd": _trajectory(1.0), "lpf": _trajectory(0.9), "sam": _trajectory(0.8)})
    assert isinstance(fig, Figure) and len(fig.axes) == 3 and _renders(fig)
    for ax in fig.axes:
        assert len(ax.get_lines()) == 3
    colours = [line.get_color() for line in fig.axes[0].get_lines()]
    assert colours[0] == METHOD_PALETTE["vm"] and colours[1] == METHOD_PALETTE["fvm"]  # VM/FVM colours
    assert fig.axes[2].get_yscale() == "log"
    with pytest.raises(ValueError, match="columns"):
        viz.plot_flat_trajectories({"sgd": _trajectory(1.0).drop(columns="sharpness")})


def _curves() -> pd.DataFrame:
    rows = []
    for step in (0, 20, 40):
        rows.append({"step": step, "method": "if-cg", "auc": 0.8 - step / 400, "clean_abs": 1.0 / (1 + step)})
        rows.append({"step": step, "method": "vm", "auc": 0.85 + step / 400, "clean_abs": 2.0})
    return pd.DataFrame(rows)


def test_plot_influence_along_finetuning_normalises_clean_scores_to_step_zero():
    fig = viz.plot_influence_along_finetuning(_curves(), reference_step=20)
    assert isinstance(fig, Figure) and len(fig.axes) == 2 and _renders(fig)
    auc_ax, clean_ax = fig.axes
    assert len(auc_ax.get_lines()) == 3  # two methods + the reference line
    ifcg = clean_ax.get_lines()[0]
    np.testing.assert_allclose(ifcg.get_ydata(), [1.0, 1 / 21, 1 / 41])
    assert ifcg.get_color() == METHOD_PALETTE["if-cg"]
    assert clean_ax.get_yscale() == "log"
    curves = pd.concat([_curves(), _curves().query("method == 'vm'").assign(method="loss@snapshot")])
    lines = viz.plot_influence_along_finetuning(curves).axes[0].get_lines()
    styles = {line.get_label(): line.get_linestyle() for line in lines}
    assert styles == {"if-cg": "-", "vm": "-", "loss@snapshot": "--"}  # controls are dashed
    with pytest.raises(ValueError, match="clean_abs"):
        viz.plot_influence_along_finetuning(_curves().drop(columns="clean_abs"))


def test_plot_method_aucs_bars_in_order_with_colours():
    table = pd.DataFrame({"method": ["if-cg", "vm", "fvm (sam)", "vm", "loss@theta~"],
                          "auc": [0.8, 0.97, 0.975, 0.99, 0.97], "seed": [0, 0, 0, 1, 0]})
    fig = viz.plot_method_aucs(table, title="AUCs")
    assert isinstance(fig, Figure) and len(fig.axes) == 1 and _renders(fig)
    ax = fig.axes[0]
    bars = ax.patches
    assert len(bars) == 4
    np.testing.assert_allclose([b.get_height() for b in bars], [0.8, 0.98, 0.975, 0.97])  # vm: mean of two seeds
    assert matplotlib.colors.to_hex(bars[1].get_facecolor()) == METHOD_PALETTE["vm"]
    assert matplotlib.colors.to_hex(bars[2].get_facecolor()) == palette.FLAT_COLOURS["sam"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["if-cg", "vm", "fvm (sam)", "loss@theta~"]
    assert [b.get_hatch() for b in bars] == [None, None, None, "//"]  # the control is hatched
    with pytest.raises(ValueError, match="columns"):
        viz.plot_method_aucs(table.drop(columns="auc"))


def test_plot_snapshot_scores_selects_a_step():
    flipped = torch.arange(20) < 6
    gen = torch.Generator().manual_seed(0)
    scores = {s: {"if-cg": torch.randn(20, generator=gen), "vm": torch.randn(20, generator=gen) + flipped * s}
              for s in (0, 10)}
    fig = viz.plot_snapshot_scores(scores, flipped, step=10)
    assert isinstance(fig, Figure) and len(fig.axes) == 2 and _renders(fig)
    assert "step 10" in fig.get_suptitle()
    with pytest.raises(ValueError, match="available steps"):
        viz.plot_snapshot_scores(scores, flipped, step=5)


@pytest.mark.parametrize("name, expected", [("vm", "vm"), ("fvm", "fvm"), ("fvm (lpf)", "fvm"), ("if-cg", "if-cg"),
                                            ("if-lissa", "if-lissa"), ("loss@theta~", "loss"), ("tracin", "tracin")])
def test_colour_of_method_variants(name, expected):
    assert palette.method_colour(name) == METHOD_PALETTE[expected]
