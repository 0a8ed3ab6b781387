"""Notebook 06's relabel view: ifkit.viz.plot_relabel_candidates and its slider, ifkit.widgets.relabel_explorer."""

from __future__ import annotations

import io
import warnings

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.colors import to_hex
from tolerances import PLOTTED_FLOAT32

from ifkit import widgets
from ifkit.viz import plot_relabel_candidates
from ifkit.viz.palette import CLEAN_COLOUR, FLIPPED_COLOUR, HIT_COLOUR


@pytest.fixture
def flags():
    g = torch.Generator().manual_seed(0)
    k, C = 6, 10
    images = torch.rand(k, 1, 8, 8, generator=g)
    scores = torch.rand(k, C, generator=g) + 1.0  # (k, C) VM-like: positive
    clean = torch.tensor([0, 1, 2, 3, 4, 5])
    given = torch.tensor([7, 1, 9, 8, 4, 2])  # points 1 and 4 are false alarms
    scores[0, 0] = 0.1  # flag 0: the argmin is the clean label
    scores[2, 5] = 0.05  # flag 2: the argmin is a wrong label
    return images, scores, given, clean


def _bars(fig):
    return fig.axes[1].patches


def test_bars_are_the_scores_and_the_argmin_is_highlighted(flags):
    images, scores, given, clean = flags
    fig = plot_relabel_candidates(images, scores, given, clean, index=0)
    bars = _bars(fig)
    np.testing.assert_allclose([b.get_height() for b in bars], scores[0].numpy(), **PLOTTED_FLOAT32)
    colours = [to_hex(b.get_facecolor()) for b in bars]
    assert colours[0] == HIT_COLOUR and len(set(colours[1:])) == 1  # only the chosen bar stands out
    assert "the clean label" in fig.axes[1].get_title()
    ticks = [t.get_text() for t in fig.axes[1].get_xticklabels()]
    assert ticks[0] == "0\nclean" and ticks[7] == "7\ngiven"
    assert fig.axes[0].title.get_color() == FLIPPED_COLOUR


def test_a_wrong_choice_is_red_and_names_the_clean_label(flags):
    images, scores, given, clean = flags
    fig = plot_relabel_candidates(images, scores, given, clean, index=2, classes=[f"c{j}" for j in range(10)])
    colours = [to_hex(b.get_facecolor()) for b in _bars(fig)]
    assert colours[5] == FLIPPED_COLOUR and colours.count(FLIPPED_COLOUR) == 1
    assert "argmin = c5" in fig.axes[1].get_title() and "clean: c2" in fig.axes[1].get_title()


def test_a_false_alarm_is_grey_and_given_equals_clean(flags):
    images, scores, given, clean = flags
    fig = plot_relabel_candidates(images, scores, given, clean, index=1)
    assert fig.axes[0].title.get_color() == CLEAN_COLOUR and "false alarm" in fig.axes[0].get_title()
    assert [t.get_text() for t in fig.axes[1].get_xticklabels()][1] == "1\ngiven\nclean"


def test_flat_images_and_numpy_inputs_render_without_warnings(flags):
    images, scores, given, clean = flags
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = plot_relabel_candidates(images.reshape(6, 64).numpy(), scores.numpy(), given.numpy(), clean.numpy(),
                                      index=5, method="fvm")
        fig.savefig(io.BytesIO(), format="png", dpi=40)
    assert fig.axes[0].images[0].get_array().shape == (8, 8)
    assert "fvm score" in fig.axes[1].get_ylabel()


def test_bad_input_names_the_problem(flags):
    images, scores, given, clean = flags
    with pytest.raises(ValueError, match="out of range"):
        plot_relabel_candidates(images, scores, given, clean, index=6)
    with pytest.raises(ValueError, match=r"\(k, n_classes\)"):
        plot_relabel_candidates(images, scores[:5], given, clean)
    with pytest.raises(ValueError, match="names for 10"):
        plot_relabel_candidates(images, scores, given, clean, classes=["a", "b"])
    bad = scores.clone()
    bad[0, 3] = float("nan")
    with pytest.raises(ValueError, match="not all finite"):
        plot_relabel_candidates(images, bad, given, clean)


def test_relabel_explorer_slides_over_the_flags(flags):
    pytest.importorskip("ipywidgets")
    images, scores, given, clean = flags
    shown = widgets.relabel_explorer(images, scores, given, clean, index=2)
    (slider,) = [w for w in shown.widget.children if getattr(w, "description", "") == "flagged point"]
    assert (slider.min, slider.max, slider.value) == (0, 5, 2)
    with pytest.raises(ValueError, match="out of range"):
        widgets.relabel_explorer(images, scores, given, clean, index=9)


def test_positive_scores_spanning_decades_use_a_log_axis(flags):
    images, scores, given, clean = flags
    vm_like = torch.full((6, 10), 1.5e4)
    vm_like[0, 0] = 7.0  # as notebook 06 shows: the chosen label scores 7, the others ~10^4
    fig = plot_relabel_candidates(images, vm_like, given, clean)
    assert fig.axes[1].get_yscale() == "log" and "log scale" in fig.axes[1].get_ylabel()
    assert plot_relabel_candidates(images, scores - 1.5, given, clean).axes[1].get_yscale() == "linear"
