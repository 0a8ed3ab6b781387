"""Plotting functions of notebooks 05 (mislabel detection) and 06 (relabeling) in ifkit/widgets.py."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from ifkit import widgets
from ifkit.figures import METHOD_PALETTE

pytestmark = pytest.mark.usefixtures("one_thread")


def _renders(fig: Figure) -> bool:
    fig.savefig(io.BytesIO(), format="png", dpi=30)
    return True


@pytest.fixture
def detection():
    gen = torch.Generator().manual_seed(0)
    n = 60
    flipped = torch.zeros(n, dtype=torch.bool)
    flipped[:15] = True
    clean = torch.arange(n) % 10
    given = torch.where(flipped, (clean + 3) % 10, clean)
    scores = {"vm": torch.randn(n, generator=gen) + 3 * flipped, "if-cg": torch.randn(n, generator=gen) + flipped,
              "loss@theta~": torch.randn(n, generator=gen) + 2 * flipped}
    images = torch.rand(n, 1, 8, 8, generator=gen)
    return images, given, clean, scores, flipped


# ------------------------------------------------------------------------------------------------ ROC
def test_plot_roc_one_curve_per_method_best_first(detection):
    *_, scores, flipped = detection
    fig = widgets.plot_roc(scores, flipped)
    assert isinstance(fig, Figure) and _renders(fig)
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert len(lines) == len(scores) + 1  # + the chance diagonal
    labels = [ln.get_label() for ln in lines[:-1]]
    assert labels[0].startswith("vm") and labels[-1].startswith("if-cg")  # sorted by AUC: vm >> loss@ > if-cg
    assert lines[0].get_color() == METHOD_PALETTE["vm"]
    assert [ln.get_linestyle() for ln in lines[:-1]][1] == "--"  # the control at theta~ is dashed
    x, y = lines[0].get_data()
    assert x[0] == 0 and y[-1] == 1 and np.all(np.diff(x) >= 0)


def test_plot_roc_draws_on_a_given_axis(detection):
    *_, scores, flipped = detection
    fig = Figure()
    ax = fig.subplots()
    assert widgets.plot_roc({"vm": scores["vm"]}, flipped, ax=ax) is fig
    assert len(ax.get_lines()) == 2


def test_plot_roc_rejects_bad_input(detection):
    *_, scores, flipped = detection
    with pytest.raises(ValueError, match="shape"):
        widgets.plot_roc({"vm": scores["vm"][:-1]}, flipped)
    with pytest.raises(ValueError, match="some but not all"):
        widgets.plot_roc(scores, torch.zeros_like(flipped))


# ------------------------------------------------------------------------------------------------ noise models
def test_plot_noise_models_row_normalised_transitions():
    y = torch.arange(100) % 10
    noisy = {"none": y, "shift": (y + 1) % 10}
    fig = widgets.plot_noise_models(y, noisy, classes=[f"c{i}" for i in range(10)])
    assert _renders(fig)
    heat = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(heat) == 2
    assert heat[1].get_title().startswith("shift: 100%")
    annotated = [float(t.get_text()) for t in heat[0].texts]
    assert sorted(annotated)[-10:] == [100.0] * 10  # identity: every row all on its diagonal
    with pytest.raises(ValueError, match="shape"):
        widgets.plot_noise_models(y, {"bad": y[:-1]})


# ------------------------------------------------------------------------------------------------ suggestions
@pytest.mark.parametrize("n, shape", [(16, (1, 8, 8)), (5, (8, 8)), (3, (64,))])
def test_plot_suggested_labels_panels_and_colours(detection, n, shape):
    images, given, clean, _, flipped = detection
    idx = torch.arange(20)  # 15 flipped, then 5 clean points flagged by mistake
    suggested = clean[idx].clone()
    suggested[:4] = (suggested[:4] + 1) % 10  # four wrong suggestions
    imgs = images[idx].reshape(len(idx), *shape)
    fig = widgets.plot_suggested_labels(imgs, given[idx], suggested, clean[idx], n=n, ncols=8)
    assert _renders(fig) and len(fig.axes) == min(n, 20)
    colours = [ax.title.get_color() for ax in fig.axes]
    assert colours[:min(n, 4)] == [widgets.FLIPPED_COLOUR] * min(n, 4)
    assert all(c == "#2ca02c" for c in colours[4:])
    if n > 15:  # the false alarms get a grey frame
        assert fig.axes[15].spines["top"].get_edgecolor()[:3] == matplotlib.colors.to_rgb(widgets.CLEAN_COLOUR)


def test_plot_suggested_labels_rejects_mismatched_lengths(detection):
    images, given, clean, *_ = detection
    with pytest.raises(ValueError, match="same non-zero length"):
        widgets.plot_suggested_labels(images, given, given[:-1], clean)


# ------------------------------------------------------------------------------------------------ pairwise
def test_plot_hurt_queries_most_harmed_first(detection):
    images, given, clean, *_ = detection
    infl = torch.linspace(-1, 1, 30)  # query 29 hurt most
    fig = widgets.plot_hurt_queries(images[0], images[:30], infl, clean[:30], given=int(given[0]),
                                    clean=int(clean[0]), k=4)
    assert _renders(fig) and len(fig.axes) == 5
    assert fig.axes[1].get_title().startswith(f"val {int(clean[29])}")
    assert "+1" in fig.axes[1].get_title()
    with pytest.raises(ValueError, match="same length"):
        widgets.plot_hurt_queries(images[0], images[:30], infl[:-1], clean[:30], given=0)


# ------------------------------------------------------------------------------------------------ dashboard
def test_plot_detection_dashboard_tiny_run():
    fig = widgets.plot_detection_dashboard(n_train=100, n_val=40, epochs=20, method="loss-early", k=4)
    assert _renders(fig)
    image_axes = [ax for ax in fig.axes if ax.images]
    assert len(image_axes) == 4
    roc = [ax for ax in fig.axes if ax.get_xlabel().startswith("false positive")]
    assert len(roc) == 1 and len(roc[0].get_lines()) == 3  # loss-early, loss, chance


def test_plot_detection_dashboard_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown method"):
        widgets.plot_detection_dashboard(method="nope")
    with pytest.raises(ValueError, match="unknown dataset"):
        widgets.plot_detection_dashboard(dataset="cifar")
