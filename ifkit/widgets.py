"""Pure plotting functions for the notebooks and their ``ipywidgets.interact`` dashboards.

Every function takes plain tensors / arrays (or dicts of them), returns a new ``matplotlib.figure.Figure`` and
touches no global state: figures are built with ``Figure()`` rather than ``pyplot`` (nothing is registered with
pyplot, so a figure shows exactly once when it is a cell's value or an ``interact`` result), and the seaborn
style is applied inside a ``with`` block. Interactive use::

    from ipywidgets import interact, fixed, FloatLogSlider
    interact(ifkit.widgets.plot_damping_effect, H=fixed(H), g_train=fixed(G), g_val=fixed(g_val),
             actual=fixed(loo), eps=fixed(-1 / n_train), damping=FloatLogSlider(value=1e-2, min=-5, max=1))

Colours come from ``ifkit.viz.palette`` so a method looks the same in every figure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import seaborn as sns
import torch
from matplotlib.figure import Figure
from torch import Tensor

from .viz.palette import (
    CLEAN_COLOUR,
    FLAT_COLOURS,  # noqa: F401  (ifkit.widgets.FLAT_COLOURS)
    FLIPPED_COLOUR,
    SPLIT_COLOURS,
    detection_colour,
    is_control,
    method_colour,
    palette,
)

STYLE = "whitegrid"

ArrayLike = Tensor | np.ndarray | Sequence[float]


def _np(x: ArrayLike) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _sign_agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((np.sign(a) == np.sign(b)).mean())


def _grid(n: int, ncols: int) -> tuple[int, int]:
    ncols = max(1, min(ncols, n))
    return math.ceil(n / ncols), ncols


def _facets(n: int, ncols: int, width: float, height: float) -> tuple[Figure, np.ndarray]:
    """A styled figure with one panel per item, ``ncols`` per row; panels are ``width`` x ``height`` inches."""
    rows, cols = _grid(n, ncols)
    with sns.axes_style(STYLE):
        fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
        axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    return fig, axes


def plot_suspicious(
    images: ArrayLike,
    given: ArrayLike,
    true: ArrayLike,
    scores: ArrayLike,
    k: int = 16,
    classes: Sequence[str] | None = None,
    ncols: int = 8,
    title: str | None = None,
) -> Figure:
    """The ``k`` highest-scoring (most suspicious) training images, with their given and true labels.

    A panel's title is red when the given label is wrong (given != true), grey when the label was clean, so the
    grid shows at a glance how many of the top-k suspects really are mislabelled.

    Args:
        images: (n, H, W) or (n, 1, H, W) grey images.
        given: (n,) labels the model was trained on (noisy).
        true: (n,) clean labels.
        scores: (n,) harmfulness scores (higher = more suspicious).
        k: how many to show (at most n).
        classes: class names (default: the label numbers).
        ncols: panels per row.
        title: figure title (default: a count of the mislabelled ones among the top k).

    Returns:
        A Figure with exactly ``min(k, n)`` axes, most suspicious first.
    """
    imgs, given_, true_, s = _np(images), _np(given).astype(int), _np(true).astype(int), _np(scores)
    if imgs.ndim == 4:
        imgs = imgs[:, 0]  # (n, H, W)
    if not (len(imgs) == len(given_) == len(true_) == len(s)):
        raise ValueError(f"images, given, true and scores must have the same length, got "
                         f"{len(imgs)}, {len(given_)}, {len(true_)}, {len(s)}")
    k = min(k, len(s))
    top = np.argsort(-s, kind="stable")[:k]  # (k,) most suspicious first
    name = (lambda c: classes[c]) if classes is not None else str
    rows, cols = _grid(k, ncols)
    fig = Figure(figsize=(1.3 * cols, 1.55 * rows + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, i in zip(axes, top):
        wrong = given_[i] != true_[i]
        ax.imshow(imgs[i], cmap="gray_r")
        ax.set_title(f"#{i} given {name(given_[i])}\ntrue {name(true_[i])}", fontsize=8,
                     color=FLIPPED_COLOUR if wrong else CLEAN_COLOUR)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[k:]:
        fig.delaxes(ax)
    n_wrong = int((given_[top] != true_[top]).sum())
    fig.suptitle(title or f"Top {k} suspects: {n_wrong} mislabelled (red title = given label is wrong)")
    return fig


def plot_score_distributions(
    scores: Mapping[str, ArrayLike], flipped: ArrayLike, ncols: int = 4, bins: int = 30
) -> Figure:
    """Histograms of each method's scores, flipped vs clean training points, with the detection AUC.

    A method separates mislabelled points when the red (flipped) mass sits to the right of the grey (clean) one.

    Args:
        scores: {method: (n,) scores}, higher = more harmful.
        flipped: (n,) bool, True where the training label was corrupted.
        ncols: panels per row.
        bins: histogram bins.

    Returns:
        A Figure with one axis per method.
    """
    from sklearn.metrics import roc_auc_score

    f = _np(flipped).astype(bool)
    fig, axes = _facets(len(scores), ncols, 3.4, 2.7)
    for ax, (method, s) in zip(axes, scores.items()):
        s = _np(s).astype(float)
        if s.shape != f.shape:
            raise ValueError(f"scores[{method!r}] has shape {s.shape} but flipped has shape {f.shape}")
        edges = np.histogram_bin_edges(s, bins=bins)
        sns.histplot(s[~f], bins=edges, ax=ax, color=CLEAN_COLOUR, label="clean", stat="density", alpha=0.5)
        sns.histplot(s[f], bins=edges, ax=ax, color=FLIPPED_COLOUR, label="flipped", stat="density", alpha=0.5)
        auc = roc_auc_score(f, s) if 0 < f.sum() < len(f) else float("nan")
        ax.set_title(f"{method}  (AUC {auc:.2f})")
        ax.set_xlabel("score (higher = more harmful)")
        ax.set_ylabel("density")
        ax.legend(fontsize=8)
    for ax in axes[len(scores):]:
        fig.delaxes(ax)
    fig.suptitle("Score distributions: flipped vs clean training points")
    return fig


def plot_agreement(
    predicted: Mapping[str, ArrayLike],
    actual: ArrayLike,
    ncols: int = 3,
    xlabel: str = "actual change of val loss (leave-one-out)",
    ylabel: str = "predicted change",
) -> Figure:
    """Predicted vs actual effect of removing each training point, one scatter panel per method.

    Each panel's title gives the Pearson correlation and the share of points with the right SIGN (the paper's
    error measure). The dashed diagonal is y = x: points on it are predicted exactly, scale included; methods
    without an inverse Hessian (TracIn, gradient dot product) are only expected to correlate.

    Args:
        predicted: {method: (m,) predicted changes} for the same m training points as ``actual``.
        actual: (m,) measured changes (e.g. ``ifkit.theory.upweight_val_change``).
        ncols: panels per row.

    Returns:
        A Figure with one axis per method, each holding one scatter of m points.
    """
    a = _np(actual).astype(float)
    colours = palette(predicted)
    fig, axes = _facets(len(predicted), ncols, 3.6, 3.4)
    for ax, (method, p) in zip(axes, predicted.items()):
        p = _np(p).astype(float)
        if p.shape != a.shape:
            raise ValueError(f"predicted[{method!r}] has shape {p.shape} but actual has shape {a.shape}")
        sns.scatterplot(x=a, y=p, ax=ax, color=colours[method], s=22, edgecolor="none")
        lo, hi = float(min(a.min(), p.min())), float(max(a.max(), p.max()))
        ax.plot([lo, hi], [lo, hi], ls="--", lw=1, color="k", alpha=0.5)
        ax.axhline(0, lw=0.6, color="k", alpha=0.3)
        ax.axvline(0, lw=0.6, color="k", alpha=0.3)
        ax.set_title(f"{method}: r = {_pearson(a, p):.3f}, sign {100 * _sign_agreement(a, p):.0f}%")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    for ax in axes[len(predicted):]:
        fig.delaxes(ax)
    fig.suptitle("Influence estimates vs the truth")
    return fig


def plot_damping_effect(
    H: ArrayLike,
    g_train: ArrayLike,
    g_val: ArrayLike,
    actual: ArrayLike,
    eps: float,
    damping: float = 1e-2,
    weight_decay: float | None = None,
    grid: ArrayLike | None = None,
) -> Figure:
    """How the damping of (H + damping I)^-1 changes the agreement of influence with the truth.

    predicted_i = eps * score_i = -eps * g_i^T (H + damping I)^-1 g_val, for every damping on ``grid`` at once
    from one eigendecomposition H = Q diag(lam) Q^T. Left: predicted vs actual at ``damping``. Right: Pearson r
    and sign agreement over the grid; when the model was trained with an L2 penalty ``weight_decay``, the exact
    Hessian of its objective is H + weight_decay I, so agreement should peak there.

    Args:
        H: (p, p) Hessian of the mean training loss (without the L2 term).
        g_train: (m, p) gradients of the m training points being compared.
        g_val: (p,) mean validation gradient.
        actual: (m,) measured change of the validation loss.
        eps: the up-weighting behind ``actual`` (leave-one-out: -1 / n_train).
        damping: the damping of the left panel (> 0).
        weight_decay: marked on the right panel when given.
        grid: dampings of the right panel (default: 25 log-spaced values from 1e-5 to 10).

    Returns:
        A Figure with two axes.
    """
    if not (damping > 0 and math.isfinite(damping)):
        raise ValueError(f"damping must be a finite number > 0, got {damping!r}")
    H_, G, gv = (torch.as_tensor(_np(t), dtype=torch.float64) for t in (H, g_train, g_val))
    a = _np(actual).astype(float)
    if H_.dim() != 2 or H_.shape[0] != H_.shape[1] or G.shape[1:] != H_.shape[:1] or gv.shape != H_.shape[:1]:
        raise ValueError(f"shapes do not fit: H {tuple(H_.shape)}, g_train {tuple(G.shape)}, g_val {tuple(gv.shape)};"
                         " expected (p, p), (m, p), (p,)")
    if len(G) != len(a):
        raise ValueError(f"g_train has {len(G)} rows but actual has {len(a)} entries")
    lams = np.logspace(-5, 1, 25) if grid is None else _np(grid).astype(float)
    lams = np.unique(np.append(lams, damping))  # (d,), sorted, includes the slider's value
    evals, Q = torch.linalg.eigh((H_ + H_.T) / 2)  # (p,), (p, p)
    a_g, a_v = G @ Q, Q.T @ gv  # (m, p), (p,): both sides in H's eigenbasis
    d = torch.as_tensor(lams, dtype=torch.float64)
    preds = (-eps * (a_g * a_v) @ (1 / (evals[:, None] + d[None, :]))).numpy()  # (m, d) = eps * score
    r = np.array([_pearson(a, preds[:, j]) for j in range(len(lams))])
    sign = np.array([_sign_agreement(a, preds[:, j]) for j in range(len(lams))])
    cur = preds[:, int(np.searchsorted(lams, damping))]  # (m,)

    with sns.axes_style(STYLE):
        fig = Figure(figsize=(10, 3.9), layout="constrained")
        ax_s, ax_r = fig.subplots(1, 2)
    sns.scatterplot(x=a, y=cur, ax=ax_s, color=palette(["if-exact"])["if-exact"], s=22, edgecolor="none")
    lo, hi = float(min(a.min(), cur.min())), float(max(a.max(), cur.max()))
    ax_s.plot([lo, hi], [lo, hi], ls="--", lw=1, color="k", alpha=0.5)
    ax_s.set_title(f"damping = {damping:.2g}: r = {_pearson(a, cur):.3f}, sign {100 * _sign_agreement(a, cur):.0f}%")
    ax_s.set_xlabel("actual change of val loss (leave-one-out)")
    ax_s.set_ylabel("predicted change")

    ax_r.plot(lams, r, marker="o", ms=3, label="Pearson r")
    ax_r.plot(lams, sign, marker="s", ms=3, label="sign agreement")
    ax_r.axvline(damping, color="k", lw=1, label=f"damping = {damping:.2g}")
    if weight_decay is not None:
        ax_r.axvline(weight_decay, color="#d62728", ls=":", lw=1.5, label=f"weight decay = {weight_decay:.2g}")
    ax_r.set_xscale("log")
    ax_r.set_xlabel("damping")
    ax_r.set_ylabel("agreement with leave-one-out")
    ax_r.set_title("Agreement over damping")
    ax_r.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    return fig


__all__ = ["plot_agreement", "plot_damping_effect", "plot_score_distributions", "plot_suspicious"]


# --------------------------------------------------------------------------- notebook 03: sharpness and the bound
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

    Measured: projected gradient ascent (``ifkit.theory.sharpness``) and SAM's one step. Second-order models
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
    g, a, o = (_np(t).astype(float) for t in (gammas, ascent, one_step))
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

    from .theory import sign_error_bound

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


__all__ += ["plot_bound", "plot_sharpness_vs_radius"]


# ------------------------------------------------ notebooks 02 and 04: the error split, flat validation minima
_colour = method_colour
_is_control = is_control


def plot_parameter_change(dtheta_pred: ArrayLike, dtheta_true: ArrayLike, flipped: ArrayLike | None = None) -> Figure:
    """Step 1 of influence: the predicted parameter change against the true one, one point per training point.

    Left: the lengths ||d theta_pred|| against ||d theta_true|| (log-log; on the dashed diagonal the length is
    exact). Right: a histogram of cos(d theta_pred, d theta_true): 1 = the direction is exact.

    Args:
        dtheta_pred: (m, p) predicted changes, e.g. the Newton step -eps H^-1 g_i.
        dtheta_true: (m, p) measured changes theta_eps - theta* (retraining).
        flipped: optional (m,) bool; flipped points are drawn in red.

    Returns:
        A Figure with two axes; the right title gives the median cosine and the median length ratio.
    """
    P, T = _np(dtheta_pred).astype(float), _np(dtheta_true).astype(float)
    if P.ndim != 2 or P.shape != T.shape:
        raise ValueError(f"dtheta_pred and dtheta_true must both be (m, p), got {P.shape} and {T.shape}")
    n_pred, n_true = np.linalg.norm(P, axis=1), np.linalg.norm(T, axis=1)  # (m,)
    if (n_true == 0).any() or (n_pred == 0).any():
        raise ValueError("every parameter change must be nonzero (a zero row has no direction)")
    cos = (P * T).sum(1) / (n_pred * n_true)  # (m,)
    f = np.zeros(len(P), bool) if flipped is None else _np(flipped).astype(bool)
    if f.shape != (len(P),):
        raise ValueError(f"flipped has shape {f.shape}, expected ({len(P)},)")
    with sns.axes_style(STYLE):
        fig = Figure(figsize=(9.5, 3.8), layout="constrained")
        ax_n, ax_c = fig.subplots(1, 2)
    for mask, colour, label in ((~f, CLEAN_COLOUR, "clean"), (f, FLIPPED_COLOUR, "flipped")):
        if mask.any():
            ax_n.scatter(n_true[mask], n_pred[mask], s=18, color=colour, label=label, alpha=0.8)
    lo, hi = float(min(n_true.min(), n_pred.min())), float(max(n_true.max(), n_pred.max()))
    ax_n.plot([lo, hi], [lo, hi], ls="--", lw=1, color="k", alpha=0.5)
    ax_n.set_xscale("log")
    ax_n.set_yscale("log")
    ax_n.set_xlabel(r"$\|\Delta\theta_{true}\|$ (retraining)")
    ax_n.set_ylabel(r"$\|\Delta\theta_{IF}\|$ (Newton step)")
    ax_n.set_title(f"length: median ratio predicted/true {np.median(n_pred / n_true):.2f}")
    if f.any():
        ax_n.legend(fontsize=8)
    # cosines are <= 1; a fixed range keeps the histogram defined when they are all (nearly) equal
    sns.histplot(cos, bins=20, binrange=(min(float(cos.min()), 1 - 1e-3), 1.0), ax=ax_c, color=SPLIT_COLOURS[0])
    ax_c.set_xlabel(r"$\cos(\Delta\theta_{IF}, \Delta\theta_{true})$")
    ax_c.set_title(f"direction: median cosine {np.median(cos):.4f} (min {cos.min():.3f})")
    fig.suptitle("Step 1: the parameter change")
    return fig


def plot_loss_change_split(
    true: ArrayLike, estimates: Mapping[str, ArrayLike], flipped: ArrayLike | None = None, ncols: int = 3
) -> Figure:
    """Estimates of a validation-loss change against the true change, one scatter panel per estimate.

    Meant for notebook 02's error split, e.g. {"(a) classic IF": ..., "(b) exact dtheta, 1st order": ...,
    "(c) exact dtheta, 2nd order": ...}; panels are coloured in order by ``SPLIT_COLOURS``. Each title gives the
    sign error (share of points whose estimate has the wrong sign: the paper's error measure), the Pearson r and
    the relative error ||est - true|| / ||true||.

    Args:
        true: (m,) measured changes of the mean validation loss.
        estimates: {label: (m,) estimated changes}.
        flipped: optional (m,) bool; flipped points are drawn with a red edge.
        ncols: panels per row.

    Returns:
        A Figure with one axis per estimate.
    """
    d = _np(true).astype(float)
    if d.ndim != 1 or not len(estimates):
        raise ValueError("true must be 1-D and estimates must hold at least one (m,) array")
    f = np.zeros(len(d), bool) if flipped is None else _np(flipped).astype(bool)
    if f.shape != d.shape:
        raise ValueError(f"flipped has shape {f.shape} but true has shape {d.shape}")
    fig, axes = _facets(len(estimates), ncols, 3.7, 3.5)
    for k, (ax, (label, est)) in enumerate(zip(axes, estimates.items())):
        e = _np(est).astype(float)
        if e.shape != d.shape:
            raise ValueError(f"estimates[{label!r}] has shape {e.shape} but true has shape {d.shape}")
        colour = SPLIT_COLOURS[k % len(SPLIT_COLOURS)]
        ax.scatter(d[~f], e[~f], s=18, color=colour, alpha=0.8, label="clean")
        if f.any():
            ax.scatter(d[f], e[f], s=18, color=colour, edgecolor=FLIPPED_COLOUR, linewidth=1.2, label="flipped")
        lo, hi = float(min(d.min(), e.min())), float(max(d.max(), e.max()))
        ax.plot([lo, hi], [lo, hi], ls="--", lw=1, color="k", alpha=0.5)
        ax.axhline(0, lw=0.6, color="k", alpha=0.3)
        ax.axvline(0, lw=0.6, color="k", alpha=0.3)
        rel = np.linalg.norm(e - d) / max(np.linalg.norm(d), 1e-300)
        ax.set_title(f"{label}\nsign error {100 * (1 - _sign_agreement(e, d)):.1f}%, r = {_pearson(d, e):.3f}, "
                     f"rel. error {rel:.2f}", fontsize=9)
        ax.set_xlabel(r"true $\Delta L_{val}$ (retraining)")
        ax.set_ylabel("estimate")
    if f.any():
        axes[0].legend(fontsize=8)
    for ax in axes[len(estimates):]:
        fig.delaxes(ax)
    fig.suptitle("Step 2: the change of the validation loss")
    return fig


def plot_taylor_terms(terms: Mapping[str, tuple[ArrayLike, ArrayLike]], flipped: ArrayLike | None = None,
                      ncols: int = 3) -> Figure:
    """Slope against curvature: |first-order term| vs |second-order term| of each point's loss change.

    For a parameter move d theta the validation loss changes by g_val^T d theta + 1/2 d theta^T H_val d theta
    + ... Above the diagonal the curvature term is the larger one, and the first-order estimate can have the
    wrong sign; the shaded band (ratio within 10x of it) is where curvature is no longer negligible. One panel
    per entry of ``terms`` (e.g. one model, or one place theta where the terms are evaluated).

    Args:
        terms: {label: ((m,) first-order terms, (m,) second-order terms)}.
        flipped: optional (m,) bool, the same for every panel; flipped points are red.
        ncols: panels per row.

    Returns:
        A Figure with one axis per entry; each title gives the median ratio |second| / |first| and the share of
        points above the diagonal.
    """
    if not len(terms):
        raise ValueError("terms must hold at least one (first, second) pair")
    fig, axes = _facets(len(terms), ncols, 4.0, 3.7)
    for ax, (label, pair) in zip(axes, terms.items()):
        first, second = (np.abs(_np(t).astype(float)) for t in pair)
        if first.ndim != 1 or first.shape != second.shape:
            raise ValueError(f"terms[{label!r}]: first and second must be 1-D of one length, got "
                             f"{first.shape} and {second.shape}")
        f = np.zeros(len(first), bool) if flipped is None else _np(flipped).astype(bool)
        if f.shape != first.shape:
            raise ValueError(f"flipped has shape {f.shape} but terms[{label!r}] has length {len(first)}")
        tiny = np.finfo(float).tiny
        x, y = np.maximum(first, tiny), np.maximum(second, tiny)
        lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
        line = np.geomspace(lo, hi, 50)
        ax.fill_between(line, line / 10, line, color="#ff7f0e", alpha=0.12, lw=0)
        ax.plot(line, line, ls="--", lw=1, color="k", alpha=0.6)
        for mask, colour, name in ((~f, CLEAN_COLOUR, "clean"), (f, FLIPPED_COLOUR, "flipped")):
            if mask.any():
                ax.scatter(x[mask], y[mask], s=16, color=colour, alpha=0.8, label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ratio = y / x
        ax.set_title(f"{label}\nmedian ratio {np.median(ratio):.3f}, above diagonal {100 * (ratio > 1).mean():.0f}%",
                     fontsize=9)
        ax.set_xlabel(r"|first order| $|g_{val}^\top\Delta\theta|$")
        ax.set_ylabel(r"|second order| $\frac{1}{2}|\Delta\theta^\top H_{val}\Delta\theta|$")
        if f.any():
            ax.legend(fontsize=8)
    for ax in axes[len(terms):]:
        fig.delaxes(ax)
    return fig


def plot_flat_trajectories(
    trajectories: Mapping[str, object], columns: Sequence[str] = ("val_loss", "sharpness", "grad_norm")
) -> Figure:
    """Flat fine-tuning on S_val: one panel per logged quantity, one line per optimiser.

    Args:
        trajectories: {name: DataFrame} with a ``step`` column and the ``columns`` (the ``trajectory`` of
            ``ifkit.flat.flat_finetune``); names "sgd", "lpf", "sam" (or method names) pick their colours.
        columns: the quantities to plot; "sharpness" and "grad_norm" are drawn on a log axis.

    Returns:
        A Figure with one axis per column.
    """
    if not len(trajectories) or not len(columns):
        raise ValueError("give at least one trajectory and one column")
    labels = {"val_loss": "validation loss", "val_acc": "validation accuracy",
              "sharpness": "one-step sharpness (SAM, radius rho)", "grad_norm": r"$\|\nabla R_{val}\|$"}
    with sns.axes_style(STYLE):
        fig = Figure(figsize=(3.7 * len(columns), 3.4), layout="constrained")
        axes = np.atleast_1d(fig.subplots(1, len(columns))).ravel()
    for name, df in trajectories.items():
        missing = {"step", *columns} - set(df.columns)  # type: ignore[attr-defined]
        if missing:
            raise ValueError(f"trajectories[{name!r}] lacks the columns {sorted(missing)}")
        for ax, col in zip(axes, columns):
            ax.plot(df["step"], df[col], marker="o", ms=3, color=_colour(name), label=name)  # type: ignore[index]
    for ax, col in zip(axes, columns):
        ax.set_xlabel("fine-tuning step on $S_{val}$")
        ax.set_ylabel(labels.get(col, col))
        if col in ("sharpness", "grad_norm"):
            ax.set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle("Fine-tuning on the validation set")
    return fig


def plot_influence_along_finetuning(curves, reference_step: int | None = None) -> Figure:
    """The paper's Fig. 3: influence computed at each snapshot of the fine-tuning on S_val.

    Left: detection AUC per method against the fine-tuning step. Right: the mean |score| of CLEAN training points,
    relative to its value at the first step (log axis): classic influence shrinks with the validation gradient.
    VM/FVM are drawn on top; controls (names with "@", e.g. "loss@snapshot") are dashed.

    Args:
        curves: a DataFrame with columns ``step``, ``method``, ``auc`` and ``clean_abs`` (mean |score| over the
            clean training points), one row per (step, method).
        reference_step: a step to mark with a vertical line (e.g. the slider of an ``interact``).

    Returns:
        A Figure with two axes.
    """
    missing = {"step", "method", "auc", "clean_abs"} - set(curves.columns)
    if missing:
        raise ValueError(f"curves lacks the columns {sorted(missing)}")
    with sns.axes_style(STYLE):
        fig = Figure(figsize=(10, 3.8), layout="constrained")
        ax_a, ax_s = fig.subplots(1, 2)
    for method, df in curves.groupby("method", sort=False):
        df = df.sort_values("step")
        rel = df["clean_abs"].to_numpy(float) / float(df["clean_abs"].iloc[0])
        name = str(method)
        style = dict(marker="o", ms=3, color=_colour(name), label=name, ls="--" if _is_control(name) else "-",
                     zorder=3 if name.lower().startswith(("vm", "fvm")) else 2)  # the paper's methods on top
        ax_a.plot(df["step"], df["auc"], **style)
        ax_s.plot(df["step"], rel, **style)
    for ax in (ax_a, ax_s):
        ax.set_xlabel("fine-tuning step on $S_{val}$")
        if reference_step is not None:
            ax.axvline(reference_step, color="k", lw=1, alpha=0.6)
    ax_a.set_ylabel("detection AUC")
    ax_a.set_title("finding the flipped labels")
    ax_a.legend(fontsize=8)
    ax_s.set_yscale("log")
    ax_s.set_ylabel("mean |score| of clean points / step 0")
    ax_s.set_title("clean-sample influence")
    return fig


def plot_method_aucs(table, x: str = "method", y: str = "auc", title: str | None = None) -> Figure:
    """Detection AUC per method as bars (mean over rows, e.g. seeds, with the spread as error bars).

    Args:
        table: a DataFrame with one row per (method, seed) measurement and columns ``x`` and ``y``.
        x: the column naming the method; bars keep the order of first appearance.
        y: the value column.
        title: figure title (default: none).

    Controls (names with "@", e.g. "loss@theta~") are hatched.

    Returns:
        A Figure with one axis; its y-range starts at 0.5 (chance).
    """
    missing = {x, y} - set(table.columns)
    if missing:
        raise ValueError(f"table lacks the columns {sorted(missing)}")
    order = list(dict.fromkeys(table[x]))
    with sns.axes_style(STYLE):
        fig = Figure(figsize=(max(4.0, 0.7 * len(order) + 1.5), 3.8), layout="constrained")
        ax = fig.subplots()
    sns.barplot(data=table, x=x, y=y, hue=x, order=order, hue_order=order, palette={m: _colour(m) for m in order},
                errorbar=("pi", 100) if table.groupby(x)[y].size().max() > 1 else None, saturation=1,
                legend=False, ax=ax)
    for patch, m in zip(ax.patches, order):
        if _is_control(m):
            patch.set_hatch("//")
            patch.set_edgecolor("white")
    means = table.groupby(x, sort=False)[y].mean()
    for i, m in enumerate(order):
        ax.text(i, float(means[m]) + 0.005, f"{means[m]:.3f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0.5, 1.02)
    ax.set_xlabel("")
    ax.set_ylabel("detection AUC" if y == "auc" else y)
    ax.tick_params(axis="x", rotation=45)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
    if title:
        ax.set_title(title)
    return fig


def plot_snapshot_scores(scores_by_step: Mapping[int, Mapping[str, ArrayLike]], flipped: ArrayLike, step: int,
                         bins: int = 30) -> Figure:
    """Score histograms (flipped vs clean) of each method at one snapshot of the fine-tuning on S_val.

    A thin selector over ``plot_score_distributions`` for an ``interact`` over the snapshot step.

    Args:
        scores_by_step: {step: {method: (n,) scores}} computed at each snapshot.
        flipped: (n,) bool mask of corrupted labels.
        step: which snapshot to show (a key of ``scores_by_step``).
        bins: histogram bins.

    Returns:
        A Figure with one axis per method.
    """
    if step not in scores_by_step:
        raise ValueError(f"no scores at step {step}; available steps: {sorted(scores_by_step)}")
    fig = plot_score_distributions(scores_by_step[step], flipped, ncols=len(scores_by_step[step]), bins=bins)
    fig.suptitle(f"Scores at fine-tuning step {step}: flipped (red) vs clean (grey)")
    return fig


__all__ += ["plot_flat_trajectories", "plot_influence_along_finetuning", "plot_loss_change_split",
            "plot_method_aucs", "plot_parameter_change", "plot_snapshot_scores", "plot_taylor_terms"]


def plot_top_examples(pairwise: Mapping[str, ArrayLike] | ArrayLike, query_texts: Sequence[str],
                      train_texts: Sequence[str], cls_train: ArrayLike, cls_query: ArrayLike, query: int = 0,
                      method: str | None = None, k: int = 5) -> Figure:
    """The ``k`` most helpful training examples of one query (most negative ``pairwise``), as a text figure.

    Green lines share the query's class (the protocol's hits), red ones do not.

    Args:
        pairwise: (n_queries, n_train) influence matrix, or {method: matrix} (then ``method`` picks one).
        query_texts: (n_queries,) readable queries; train_texts: (n_train,) readable training examples.
        cls_train, cls_query: class ids of the training points and of the queries.
        query: which query to show.
        method: key of ``pairwise`` when it is a dict (default: its first key).
        k: how many training examples to list.

    Returns:
        A Figure with one axis of text: the query, then its top-k training examples with their influence.
    """
    if isinstance(pairwise, Mapping):
        if not pairwise:
            raise ValueError("pairwise is an empty dict: pass {method: (n_queries, n_train) matrix}")
        method = method if method is not None else next(iter(pairwise))
        if method not in pairwise:
            raise ValueError(f"no pairwise scores for method {method!r}; available: {list(pairwise)}")
        P = _np(pairwise[method])
    else:
        P = _np(pairwise)
    ct, cq = _np(cls_train), _np(cls_query)
    if P.ndim != 2 or P.shape != (len(query_texts), len(train_texts)) or len(ct) != P.shape[1] or len(cq) != P.shape[0]:
        raise ValueError(f"pairwise must be (n_queries, n_train) = ({len(query_texts)}, {len(train_texts)}) with "
                         f"matching class arrays, got {P.shape}, cls_train {len(ct)}, cls_query {len(cq)}")
    if not 0 <= query < len(P):
        raise ValueError(f"query={query} is out of range [0, {len(P)})")
    top = np.argsort(P[query], kind="stable")[: min(k, P.shape[1])]  # most negative = most helpful first
    hits = int((ct[top] == cq[query]).sum())
    fig = Figure(figsize=(9, 0.32 * (len(top) + 2) + 0.3), layout="constrained")
    ax = fig.subplots()
    ax.axis("off")
    n = len(top) + 2
    ax.text(0, 1, f"query {query}: {query_texts[query]}", va="top", fontsize=9, weight="bold", family="monospace")
    for r, i in enumerate(top, 1):
        same = ct[i] == cq[query]
        ax.text(0.02, 1 - (r + 0.6) / n, f"{r}. {train_texts[i]}   ({P[query, i]:+.3g})", va="top", fontsize=8,
                family="monospace", color="#2ca02c" if same else FLIPPED_COLOUR)
    fig.suptitle(f"{method or 'influence'}: top {len(top)} most helpful training examples, {hits} of the "
                 "query's class", fontsize=10)
    return fig


__all__ += ["plot_top_examples"]


def plot_top_images(
    query_images: ArrayLike,
    train_images: ArrayLike,
    pairwise,
    train_style: ArrayLike,
    query_style: ArrayLike,
    query: int = 0,
    method: str | None = None,
    k: int = 5,
    style_names: Sequence[str] | None = None,
) -> Figure:
    """A query image and its k most helpful training images (most negative pairwise influence first).

    Each training image is framed green when it has the query's style (the ground truth of the image generation
    experiment), red otherwise; titles give the style and the influence.

    Args:
        query_images: (n_queries, 1, H, W) or (n_queries, H, W) images.
        train_images: (n_train, 1, H, W) or (n_train, H, W) images.
        pairwise: (n_queries, n_train) influences, or a dict {method: such a matrix} (then ``method`` picks one;
            default the first).
        train_style, query_style: style id of every training image / query.
        query: which query to show.
        method: the method's name (title; the key when ``pairwise`` is a dict).
        k: how many training images.
        style_names: names of the style ids (default: the ids).
    """
    if isinstance(pairwise, Mapping):
        if not pairwise:
            raise ValueError("pairwise is an empty dict: pass {method: (n_queries, n_train) matrix}")
        method = method if method is not None else next(iter(pairwise))
        if method not in pairwise:
            raise ValueError(f"no pairwise scores for method {method!r}; available: {list(pairwise)}")
        pairwise = pairwise[method]
    P, Q, T = _np(pairwise), _np(query_images), _np(train_images)
    st, sq = _np(train_style), _np(query_style)
    if P.ndim != 2 or P.shape != (len(Q), len(T)) or len(st) != len(T) or len(sq) != len(Q):
        raise ValueError(f"pairwise must be (n_queries, n_train) = ({len(Q)}, {len(T)}) with one style per image, "
                         f"got {P.shape}, {len(st)} train styles, {len(sq)} query styles")
    if not 0 <= query < len(P):
        raise ValueError(f"query={query} is out of range [0, {len(P)})")
    name = (lambda s: style_names[int(s)]) if style_names is not None else (lambda s: str(int(s)))  # noqa: E731
    top = np.argsort(P[query], kind="stable")[: min(k, P.shape[1])]  # most negative = most helpful first
    fig = Figure(figsize=(1.5 * (len(top) + 1), 2.0), layout="constrained")
    axes = fig.subplots(1, len(top) + 1, squeeze=False)[0]
    panels = [(Q[query], f"query\n{name(sq[query])}", "black")]
    panels += [(T[i], f"#{r} {name(st[i])}\n{P[query, i]:+.2g}", "#2ca02c" if st[i] == sq[query] else FLIPPED_COLOUR)
               for r, i in enumerate(top, 1)]
    for ax, (img, title, colour) in zip(axes, panels):
        ax.imshow(np.asarray(img).reshape(img.shape[-2], img.shape[-1]), cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        for side in ax.spines.values():
            side.set_color(colour)
            side.set_linewidth(3)
        ax.set_title(title, fontsize=8, color=colour)
    hits = int((st[top] == sq[query]).sum())
    fig.suptitle(f"{method or 'influence'}: top {len(top)} most helpful training images, {hits} of the query's style",
                 fontsize=9)
    return fig


__all__ += ["plot_top_images"]


# ------------------------------------------------------------------ notebooks 05 and 06: detection, relabeling
_detection_colour = detection_colour


def plot_roc(scores_by_method: Mapping[str, ArrayLike], flipped: ArrayLike, ax=None, title: str | None = None) -> Figure:
    """ROC curves of several detectors of the flipped labels (scores: higher = more suspicious).

    Args:
        scores_by_method: {method: (n,) scores}; the legend gives each method's AUC, best first.
        flipped: (n,) bool, True where the training label was corrupted.
        ax: draw on this axis (its figure is returned) instead of a new figure.
        title: axis title (default: "ROC of the flipped labels").

    Returns:
        The Figure holding the axis; one line per method plus the dashed chance diagonal.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    f = _np(flipped).astype(bool)
    if not 0 < f.sum() < len(f):
        raise ValueError(f"flipped must mark some but not all points, got {int(f.sum())} of {len(f)}")
    curves = {}
    for method, s in scores_by_method.items():
        s = _np(s).astype(float)
        if s.shape != f.shape:
            raise ValueError(f"scores_by_method[{method!r}] has shape {s.shape} but flipped has shape {f.shape}")
        fpr, tpr, _ = roc_curve(f, s)
        curves[method] = (fpr, tpr, roc_auc_score(f, s))
    if ax is None:
        with sns.axes_style(STYLE):
            fig = Figure(figsize=(4.6, 4.2), layout="constrained")
            ax = fig.subplots()
    for method, (fpr, tpr, auc) in sorted(curves.items(), key=lambda kv: -kv[1][2]):
        ax.plot(fpr, tpr, color=_detection_colour(method), lw=2.2 if method.lower().startswith(("vm", "fvm")) else 1.4,
                ls="--" if _is_control(method) else "-", label=f"{method} ({auc:.3f})")
    ax.plot([0, 1], [0, 1], ls=":", color="k", lw=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate (clean points flagged)")
    ax.set_ylabel("true positive rate (flips found)")
    ax.legend(fontsize=7, title="method (AUC)", title_fontsize=7, loc="lower right")
    ax.set_title(title or "ROC of the flipped labels")
    return ax.figure


def plot_noise_models(y_clean: ArrayLike, noisy: Mapping[str, ArrayLike], classes: Sequence[str] | None = None) -> Figure:
    """How each noise model moves labels: P(given label | clean label) as a heatmap per model, in percent.

    Args:
        y_clean: (n,) clean labels.
        noisy: {noise model: (n,) noisy labels of the same points}.
        classes: class names for the axes (default: the label numbers).

    Returns:
        A Figure with one heatmap per noise model; the title gives the share of labels changed.
    """
    y = _np(y_clean).astype(int)
    C = int(max(y.max(), *(int(_np(v).max()) for v in noisy.values()))) + 1
    names = list(classes) if classes is not None else [str(c) for c in range(C)]
    fig = Figure(figsize=(3.9 * len(noisy), 3.7), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(noisy)))
    for ax, (kind, given) in zip(axes, noisy.items()):
        g = _np(given).astype(int)
        if g.shape != y.shape:
            raise ValueError(f"noisy[{kind!r}] has shape {g.shape} but y_clean has shape {y.shape}")
        counts = np.zeros((C, C))
        np.add.at(counts, (y, g), 1)
        T = 100 * counts / np.maximum(counts.sum(1, keepdims=True), 1)  # (C, C) rows: clean, columns: given
        sns.heatmap(T, ax=ax, cmap="Reds", vmin=0, vmax=100, annot=C <= 10, fmt=".0f", cbar=ax is axes[-1],
                    annot_kws={"fontsize": 6}, xticklabels=names, yticklabels=names, square=True)
        ax.set_xlabel("given (noisy) label")
        ax.set_ylabel("clean label")
        ax.tick_params(labelsize=7)
        ax.set_title(f"{kind}: {100 * (g != y).mean():.0f}% flipped", fontsize=10)
    fig.suptitle("P(given label | clean label), %")
    return fig


def plot_suggested_labels(
    images: ArrayLike,
    given: ArrayLike,
    suggested: ArrayLike,
    clean: ArrayLike,
    classes: Sequence[str] | None = None,
    n: int = 16,
    ncols: int = 8,
    title: str | None = None,
) -> Figure:
    """Flagged training images (in the order given, most suspicious first) with their given and suggested labels.

    Title of each panel: "given -> suggested" and the clean label; green when the suggestion equals the clean
    label, red when it does not. Panels whose given label was already clean (a false alarm) are framed grey.

    Args:
        images: (m, H, W) or (m, 1, H, W) images of the flagged points (m >= 1).
        given: (m,) labels the model was trained on; suggested: (m,) proposed labels; clean: (m,) true labels.
        classes: class names (default: the label numbers).
        n: how many panels (at most m).
        ncols: panels per row.
        title: figure title (default: how many suggestions are right).

    Returns:
        A Figure with ``min(n, m)`` image axes.
    """
    imgs, g, s, c = _np(images), _np(given).astype(int), _np(suggested).astype(int), _np(clean).astype(int)
    if imgs.ndim == 4:
        imgs = imgs[:, 0]
    if imgs.ndim == 2:  # flattened square images, e.g. (m, 64) digits
        side = int(round(math.sqrt(imgs.shape[1])))
        imgs = imgs.reshape(len(imgs), side, side)
    if not (len(imgs) == len(g) == len(s) == len(c)) or len(g) == 0:
        raise ValueError(f"images, given, suggested and clean must have the same non-zero length, got "
                         f"{len(imgs)}, {len(g)}, {len(s)}, {len(c)}")
    m = min(n, len(g))
    name = (lambda k: classes[k]) if classes is not None else str
    rows, cols = _grid(m, ncols)
    fig = Figure(figsize=(1.45 * cols, 1.7 * rows + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for i, ax in enumerate(axes[:m]):
        ax.imshow(imgs[i], cmap="gray_r")
        right = s[i] == c[i]
        ax.set_title(f"{name(g[i])} -> {name(s[i])}\nclean: {name(c[i])}", fontsize=7,
                     color="#2ca02c" if right else FLIPPED_COLOUR)
        ax.set_xticks([])
        ax.set_yticks([])
        if g[i] == c[i]:  # flagged, but the given label was right
            for side in ax.spines.values():
                side.set_color(CLEAN_COLOUR)
                side.set_linewidth(3)
    for ax in axes[m:]:
        fig.delaxes(ax)
    ok = int((s[:m] == c[:m]).sum())
    fig.suptitle(title or f"given -> suggested label: {ok} of {m} suggestions are the clean label (green); "
                 "grey frame: the given label was right", fontsize=9)
    return fig


def plot_hurt_queries(
    train_image: ArrayLike,
    query_images: ArrayLike,
    influence: ArrayLike,
    query_labels: ArrayLike,
    given: int,
    clean: int | None = None,
    classes: Sequence[str] | None = None,
    k: int = 6,
    title: str | None = None,
) -> Figure:
    """One training point and the ``k`` queries whose loss it raises most (largest positive ``pairwise``).

    What a pairwise influence adds to a harmfulness score: *whom* a suspicious training point hurts. A flipped
    image typically hurts the validation images of its true class (it pulls them towards its wrong label).

    Args:
        train_image: (H, W) or (1, H, W) image of the training point.
        query_images: (n_queries, ...) images of the queries (e.g. S_val).
        influence: (n_queries,) ``ifkit.pairwise(...)[:, i]``: positive = the point raises that query's loss.
        query_labels: (n_queries,) labels of the queries.
        given: the training point's given label; clean: its clean label when known (frames matching queries green).
        classes: class names (default: the label numbers).
        k: how many queries.
        title: figure title.

    Returns:
        A Figure with ``1 + min(k, n_queries)`` image axes.
    """
    Q, infl, ql = _np(query_images), _np(influence).astype(float), _np(query_labels).astype(int)
    if not (len(Q) == len(infl) == len(ql)):
        raise ValueError(f"query_images, influence and query_labels must have the same length, got "
                         f"{len(Q)}, {len(infl)}, {len(ql)}")
    name = (lambda c: classes[c]) if classes is not None else str
    top = np.argsort(-infl, kind="stable")[: min(k, len(infl))]  # most harmed first
    img = _np(train_image)
    side = int(round(math.sqrt(img.size)))
    fig = Figure(figsize=(1.5 * (len(top) + 1), 2.1), layout="constrained")
    axes = fig.subplots(1, len(top) + 1, squeeze=False)[0]
    label = f"train: given {name(given)}" + (f"\nclean {name(clean)}" if clean is not None else "")
    panels = [(img.reshape(side, side), label, FLIPPED_COLOUR if clean is not None and clean != given else "k")]
    for i in top:
        colour = "#2ca02c" if clean is not None and ql[i] == clean else "k"
        panels.append((Q[i].reshape(side, side), f"val {name(ql[i])}\n{infl[i]:+.3g}", colour))
    for ax, (im, text, colour) in zip(axes, panels):
        ax.imshow(im, cmap="gray_r")
        ax.set_title(text, fontsize=7, color=colour)
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_color(colour)
            s.set_linewidth(2)
    fig.suptitle(title or f"the {len(top)} validation points this training point hurts most (green: its clean class)",
                 fontsize=9)
    return fig


def plot_detection_dashboard(
    dataset: str = "digits",
    noise: str = "symmetric",
    rate: float = 0.3,
    method: str = "vm",
    seed: int = 0,
    n_train: int = 400,
    n_val: int = 150,
    epochs: int = 300,
    k: int = 8,
) -> Figure:
    """One detection setting end to end, for an ``interact`` over dataset / noise / rate / method.

    Builds the split and the memorising MLP with ``ifkit.experiments.detection`` (digits: ``D.FAST`` resized;
    fashion: 14x14 Fashion-MNIST), scores every training point with ``method`` and shows: the score histograms of
    flipped vs clean points, the ROC of ``method`` against the training loss at theta* (the simplest reference),
    and the ``k`` most suspicious images. Training runs are cached by ``detection.prepare`` per (config, noise,
    rate, seed): a notebook that prepared the same setting before pays only for the scores.

    Returns:
        A Figure: two axes on top, ``k`` image axes below.
    """
    from dataclasses import replace

    from ifkit.experiments import detection as D

    methods = D.INFLUENCE + D.REFERENCE
    if method not in methods:
        raise ValueError(f"unknown method {method!r}; choose from {methods}")
    cfg = replace(D.FAST, n_train=n_train, n_val=n_val, epochs=epochs, progress=False)
    if dataset == "fashion":
        cfg = replace(cfg, dataset="fashion", image_size=14, n_test=1000)
    elif dataset != "digits":
        raise ValueError(f"unknown dataset {dataset!r}; use 'digits' or 'fashion'")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # models this small run fastest on one thread (and a busy machine hurts 2 less)
    try:
        s = D.prepare(cfg, noise, float(rate), seed)
        scores = {method: D.score_method(method, s, seed, {})}
        if method != "loss":
            scores["loss"] = D.score_method("loss", s, seed, {})
        state = D.model_state(s)
    finally:
        torch.set_num_threads(threads)
    flipped = s.flipped
    fig = Figure(figsize=(11, 6.2), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[3, 1.5])
    with sns.axes_style(STYLE):
        ax_h, ax_r = top.subplots(1, 2)
    sc = _np(scores[method]).astype(float)
    f = _np(flipped).astype(bool)
    edges = np.histogram_bin_edges(sc, bins=30)
    sns.histplot(sc[~f], bins=edges, ax=ax_h, color=CLEAN_COLOUR, label="clean", stat="density", alpha=0.5)
    sns.histplot(sc[f], bins=edges, ax=ax_h, color=FLIPPED_COLOUR, label="flipped", stat="density", alpha=0.5)
    ax_h.set_xlabel(f"{method} score (higher = more suspicious)")
    ax_h.legend(fontsize=8)
    ax_h.set_title(f"{dataset}, {noise} {rate:.0%}: network fits {state['fit_flipped']:.0%} of the flips, "
                   f"test acc {state['test_acc']:.2f}", fontsize=9)
    plot_roc(scores, flipped, ax=ax_r, title=f"{method} vs the training loss at theta*")
    order = np.argsort(-sc, kind="stable")[:k]  # (k,) most suspicious first
    axes = np.atleast_1d(bottom.subplots(1, k))
    X = _np(s.train[0])
    names = s.split.classes
    given, clean = _np(s.train[1]).astype(int), _np(s.split.y_train_clean).astype(int)
    for ax, i in zip(axes, order):
        ax.imshow(X[i].reshape(X.shape[-2], X.shape[-1]), cmap="gray_r")
        ax.set_title(f"given {names[given[i]]}\nclean {names[clean[i]]}", fontsize=7,
                     color=FLIPPED_COLOUR if given[i] != clean[i] else CLEAN_COLOUR)
        ax.set_xticks([])
        ax.set_yticks([])
    bottom.suptitle(f"top {k} suspects of {method}: {int(f[order].sum())} mislabelled (red)", fontsize=9)
    return fig


__all__ += ["plot_detection_dashboard", "plot_hurt_queries", "plot_noise_models", "plot_roc", "plot_suggested_labels"]
