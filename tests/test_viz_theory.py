"""Notebook 03's plotting functions (ifkit/viz/theory.py) and the theory figures (ifkit/viz/figures_theory.py)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from ifkit import sharpness, viz
from ifkit.viz import figures, figures_theory


@pytest.fixture
def table():
    """A small results/theory.csv look-alike: 2 trajectories x 3 checkpoints x 2 radii x 2 methods."""
    rows = []
    for traj in ("training", "l2-path"):
        for c, (loss, err) in enumerate([(2.0, 0.10), (1.4, 0.05), (1.0, 0.01)]):
            for gamma in (0.0, 0.5):
                R = loss + gamma
                for method, extra in (("if-exact", 0.0), ("graddot", 0.2)):
                    rows.append(dict(trajectory=traj, checkpoint=f"{traj}-{c}", seed=0, n_train=100, gamma=gamma,
                                     method=method, val_loss=loss, R_gamma=R, sharpness=gamma, mu=0.6,
                                     bound=sharpness.sign_error_bound(0.6, R), sign_error=err + extra))
    return pd.DataFrame(rows)


def test_plot_sharpness_vs_radius_draws_every_view():
    g = np.array([0.0, 0.5, 1.0])
    fig = viz.plot_sharpness_vs_radius(g, [0.0, 0.2, 0.7], [0.0, 0.18, 0.5], grad_norm=0.3, top_eig=1.2,
                                           trace=10.0, p=650, gamma=0.5)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    assert len(fig.axes[0].get_lines()) == 5  # ascent, one step, two model curves, the gamma marker
    assert "0.5" in fig.axes[0].get_title()


def test_plot_sharpness_vs_radius_minimal_and_bad_shapes():
    fig = viz.plot_sharpness_vs_radius([0.0, 1.0], [0.0, 1.0], [0.0, 0.5])
    assert len(fig.axes[0].get_lines()) == 2
    with pytest.raises(ValueError, match="one length"):
        viz.plot_sharpness_vs_radius([0.0, 1.0], [0.0], [0.0, 0.5])


@pytest.mark.parametrize("gamma, shown", [(0.0, "0"), (0.4, "0.5"), (9.0, "0.5")])
def test_plot_bound_picks_the_nearest_radius(table, gamma, shown):
    fig = viz.plot_bound(table, gamma=gamma)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    ax = fig.axes[0]
    assert sum(len(c.get_offsets()) for c in ax.collections) == 12  # rows at that radius
    assert f"= {shown}," in ax.get_title()


def test_plot_bound_uses_the_given_margin(table):
    title = viz.plot_bound(table, gamma=0.0, mu=0.0).axes[0].get_title()
    assert "12/12 under the bound" in title  # mu = 0: the bound is 1, vacuous
    with pytest.raises(ValueError, match="mu"):
        viz.plot_bound(table, gamma=0.0, mu=-1.0)
    with pytest.raises(ValueError, match="columns"):
        viz.plot_bound(table.drop(columns="R_gamma"), gamma=0.0)


@pytest.mark.parametrize("name, n_axes", [("theory_bound", 2), ("theory_trajectories", 4)])
def test_theory_figures(table, name, n_axes):
    fig = figures.FIGURES[name].fn(table)
    assert isinstance(fig, Figure)
    assert len([ax for ax in fig.axes if ax.get_visible()]) == n_axes
    assert figures.FIGURES[name].inputs == ("theory.csv",)


def test_theory_bound_title_reports_the_rank_correlation(table):
    fig = figures_theory.theory_bound(table)
    assert "Spearman" in fig._suptitle.get_text()
    small = table.assign(n_train=10)  # a --fast run in the same file is ignored
    both = pd.concat([table, small.assign(sign_error=0.9)])
    assert fig._suptitle.get_text() == figures_theory.theory_bound(both)._suptitle.get_text()
