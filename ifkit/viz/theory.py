"""Plots of notebook 03: the validation sharpness against the radius, and Theorem 3.2's bound at one radius."""

from __future__ import annotations

import math

import numpy as np
import seaborn as sns
from matplotlib.figure import Figure

from .common import STYLE, ArrayLike, as_numpy
from .palette import palette


def plot_sharpness_vs_radius(
    gammas: ArrayLike,
    ascent: ArrayLike,
    one_step: ArrayLike,
    grad_norm: float | None = None,
    top_eig: float | None = None,
    trace: float | None = None,
    p: int | None = None,
    gamma: float | None = None,
) -> Figure:
    """Four views of the validation sharpness R_val^gamma(theta) - R_val(theta) as the radius grows.

    Measured: projected gradient ascent (``ifkit.sharpness.sharpness``) and SAM's one step. Second-order models
    from the curvature: the worst direction, gamma ||g|| + gamma^2/2 lambda_max (when ``grad_norm`` and
    ``top_eig`` are given), and a random direction on the sphere, gamma^2/2 tr(H)/p (when ``trace`` and ``p``
    are given): the gap between the last two is how much "worst case" differs from "typical".

    Args:
        gammas: (k,) radii.
        ascent, one_step: (k,) measured sharpness at each radius.
        grad_norm: ||grad R_val(theta)||.
        top_eig: largest Hessian eigenvalue of R_val at theta.
        trace: tr of that Hessian; p: number of parameters.
        gamma: a radius to mark (the slider of an ``interact``).

    Returns:
        A Figure with one axis.
    """
    g, a, o = (as_numpy(t).astype(float) for t in (gammas, ascent, one_step))
    if not (g.shape == a.shape == o.shape) or g.ndim != 1:
        raise ValueError(f"gammas, ascent and one_step must be 1-D of one length, got {g.shape}, {a.shape}, {o.shape}")
    fine = np.linspace(0, g.max(), 200)  # (200,) for the smooth model curves
    with sns.axes_style(STYLE):
        fig = Figure(figsize=(6.2, 4.2), layout="constrained")
        ax = fig.subplots()
    ax.plot(g, a, marker="o", color="#d62728", label="projected gradient ascent")
    ax.plot(g, o, marker="s", color="#1f77b4", label="SAM one step")
    if grad_norm is not None and top_eig is not None:
        ax.plot(fine, grad_norm * fine + 0.5 * top_eig * fine**2, ls="--", color="k",
                label=r"$\gamma\|g\| + \frac{\gamma^2}{2}\lambda_{max}$")
    if trace is not None and p:
        ax.plot(fine, 0.5 * trace / p * fine**2, ls=":", color="#7f7f7f",
                label=r"random direction $\frac{\gamma^2}{2}\,\mathrm{tr}(H)/p$")
    if gamma is not None:
        ax.axvline(gamma, color="k", lw=1, alpha=0.6)
        ax.set_title(rf"$\gamma$ = {gamma:.3g}: ascent {np.interp(gamma, g, a):.3f}, one step {np.interp(gamma, g, o):.3f}")
    ax.set_xlabel(r"radius $\gamma$")
    ax.set_ylabel(r"sharpness $R_{val}^{\gamma}(\theta) - R_{val}(\theta)$")
    ax.legend(fontsize=8)
    return fig


def plot_bound(table, gamma: float, mu: float | None = None) -> Figure:
    """Theorem 3.2 at one radius: measured sign error against the bound exp(-2 mu^2 / R_val^gamma(theta)^2).

    Left: one point per row of ``table`` at the radius nearest ``gamma`` (colour = method, marker =
    trajectory); below the dashed y = x line the bound holds; the title gives Spearman's rank correlation.
    Right: the bound as a function of R for this mu, with the rows' R_val^gamma marked on it.

    Args:
        table: a DataFrame with the columns of ``results/theory.csv`` (at least trajectory, gamma, method,
            R_gamma, sign_error, mu), e.g. from ``ifkit.experiments.theory.measure``.
        gamma: the radius to show (the nearest one in the table is used).
        mu: the margin; default: the table's own ``mu`` (the median |I_true| of its reference model).

    Returns:
        A Figure with two axes.
    """
    from scipy.stats import spearmanr

    from ifkit.sharpness import sign_error_bound

    missing = {"trajectory", "gamma", "method", "R_gamma", "sign_error", "mu"} - set(table.columns)
    if missing:
        raise ValueError(f"table lacks the columns {sorted(missing)} (use the rows of results/theory.csv)")
    radii = np.sort(table["gamma"].unique())
    g = float(radii[np.abs(radii - gamma).argmin()])  # nearest measured radius
    rows = table[table["gamma"] == g]
    m = float(rows["mu"].median()) if mu is None else float(mu)
    if not (m >= 0 and math.isfinite(m)):
        raise ValueError(f"mu must be a finite margin >= 0, got {mu!r}")
    bound = sign_error_bound(m, rows["R_gamma"].to_numpy(float))  # (k,)
    err = rows["sign_error"].to_numpy(float)
    ok = len(err) >= 3 and np.ptp(bound) > 0 and np.ptp(err) > 0
    rho = float(spearmanr(bound, err)[0]) if ok else float("nan")
    with sns.axes_style(STYLE):
        fig = Figure(figsize=(10.5, 4.2), layout="constrained")
        ax_s, ax_b = fig.subplots(1, 2)
    sns.scatterplot(x=bound, y=err, hue=rows["method"].to_numpy(), style=rows["trajectory"].to_numpy(),
                    palette=palette(rows["method"].unique()), ax=ax_s, s=45)
    ax_s.plot([0, 1], [0, 1], ls="--", lw=1, color="k", alpha=0.5)
    ax_s.set_xlim(0, 1.02)
    ax_s.set_xlabel(r"bound $\exp(-2\mu^2/R_{val}^{\gamma}(\theta)^2)$")
    ax_s.set_ylabel("measured sign error")
    ax_s.set_title(rf"$\gamma$ = {g:g}, $\mu$ = {m:.3g}: Spearman {rho:+.2f}, "
                   f"{int((err <= bound).sum())}/{len(err)} under the bound", fontsize=10)
    R = np.linspace(1e-3, max(1.0, 1.2 * float(rows["R_gamma"].max())), 300)
    ax_b.plot(R, sign_error_bound(m, R), color="k")
    ax_b.scatter(rows["R_gamma"], bound, c=[palette([x])[x] for x in rows["method"]], s=25, zorder=3)
    ax_b.set_xlabel(r"$R_{val}^{\gamma}(\theta)$")
    ax_b.set_ylabel("bound")
    ax_b.set_ylim(0, 1.02)
    ax_b.set_title(r"the bound rises with the worst validation risk in the ball", fontsize=10)
    return fig



__all__ = ["plot_bound", "plot_sharpness_vs_radius"]
