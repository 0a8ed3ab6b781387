"""The notebooks' plotting functions (ifkit/viz/basics.py): each returns a Figure of the expected shape."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from tolerances import PLOTTED

from ifkit import viz
from ifkit.viz import palette


def _points(ax) -> int:
    """Number of scatter points drawn on an axis."""
    return sum(len(c.get_offsets()) for c in ax.collections)


@pytest.fixture
def detection():
    gen = torch.Generator().manual_seed(0)
    n = 40
    flipped = torch.zeros(n, dtype=torch.bool)
    flipped[:10] = True
    true = torch.arange(n) % 10
    given = torch.where(flipped, (true + 3) % 10, true)
    scores = torch.randn(n, generator=gen) + 2 * flipped  # flipped points score higher
    images = torch.rand(n, 1, 8, 8, generator=gen)
    return images, given, true, scores, flipped


@pytest.mark.parametrize("k, ncols", [(16, 8), (5, 8), (7, 3)])
def test_plot_suspicious_one_axis_per_suspect(detection, k, ncols):
    images, given, true, scores, _ = detection
    fig = viz.plot_suspicious(images, given, true, scores, k=k, ncols=ncols, classes=[str(c) for c in range(10)])
    assert isinstance(fig, Figure)
    assert len(fig.axes) == k
    # most suspicious first: the first panel shows the highest-scoring image
    top = int(scores.argmax())
    assert fig.axes[0].get_title().startswith(f"#{top} ")
    assert fig.get_suptitle()


def test_plot_suspicious_marks_mislabelled_in_red(detection):
    images, given, true, _, flipped = detection
    scores = flipped.double()  # the 10 flipped points are the top 10
    fig = viz.plot_suspicious(images[:, 0], given, true, scores, k=12)  # (n, H, W) images work too
    colours = [ax.title.get_color() for ax in fig.axes]
    assert colours.count(palette.FLIPPED_COLOUR) == 10
    assert "10 mislabelled" in fig.get_suptitle()


def test_plot_suspicious_rejects_mismatched_lengths(detection):
    images, given, true, scores, _ = detection
    with pytest.raises(ValueError, match="same length"):
        viz.plot_suspicious(images, given[:-1], true, scores)


def test_plot_score_distributions(detection):
    *_, scores, flipped = detection
    fig = viz.plot_score_distributions({"loss": scores, "graddot": -scores, "tracin": scores.numpy()}, flipped)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3
    assert "AUC" in fig.axes[0].get_title()
    assert fig.axes[0].get_xlabel() and fig.axes[0].get_ylabel()
    with pytest.raises(ValueError, match="shape"):
        viz.plot_score_distributions({"loss": scores[:5]}, flipped)


def test_plot_agreement_one_scatter_per_method():
    gen = torch.Generator().manual_seed(1)
    actual = torch.randn(25, generator=gen)
    predicted = {"if-exact": actual.clone(), "if-cg": actual + 0.01, "tracin": torch.randn(25, generator=gen),
                 "datainf": 2 * actual}
    fig = viz.plot_agreement(predicted, actual)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 4
    assert all(_points(ax) == 25 for ax in fig.axes)
    assert "r = 1.000" in fig.axes[0].get_title() and "sign 100%" in fig.axes[0].get_title()
    assert fig.axes[0].get_xlabel() and fig.axes[0].get_ylabel()


def _quadratic_problem(p: int = 6, m: int = 15, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(p, p, generator=gen, dtype=torch.float64)
    H = A @ A.T / p  # (p, p) PSD
    G = torch.randn(m, p, generator=gen, dtype=torch.float64)
    g_val = torch.randn(p, generator=gen, dtype=torch.float64)
    return H, G, g_val


def test_plot_damping_effect_matches_direct_solve():
    H, G, g_val = _quadratic_problem()
    damping, eps = 0.3, -1 / 50
    actual = -eps * G @ torch.linalg.solve(H + damping * torch.eye(len(H), dtype=H.dtype), g_val)  # = eps * score
    fig = viz.plot_damping_effect(H, G, g_val, actual, eps=eps, damping=damping, weight_decay=damping)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2
    scatter, curve = fig.axes
    assert _points(scatter) == len(G)
    np.testing.assert_allclose(scatter.collections[0].get_offsets()[:, 1], actual.numpy(), **PLOTTED)
    assert "r = 1.000" in scatter.get_title()
    assert curve.get_xscale() == "log" and len(curve.get_lines()) == 4  # r, sign, damping, weight decay


def test_plot_damping_effect_validates_input():
    H, G, g_val = _quadratic_problem()
    actual = torch.zeros(len(G))
    with pytest.raises(ValueError, match="damping"):
        viz.plot_damping_effect(H, G, g_val, actual, eps=-0.1, damping=0.0)
    with pytest.raises(ValueError, match="shapes"):
        viz.plot_damping_effect(H, G[:, :-1], g_val, actual, eps=-0.1)
    with pytest.raises(ValueError, match="rows"):
        viz.plot_damping_effect(H, G, g_val, actual[:-1], eps=-0.1)
