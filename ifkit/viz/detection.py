"""Plots of notebooks 05 (mislabel detection) and 06 (relabeling): ROC curves, noise models, suggested labels,
the queries a training point hurts, and one detection setting at a glance (``plot_detection_setting``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import seaborn as sns
from matplotlib.figure import Figure

from .common import STYLE, ArrayLike, as_numpy, grid_shape, readable_ticks
from .palette import CLEAN_COLOUR, FLIPPED_COLOUR, HIT_COLOUR, detection_colour, is_control


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

    f = as_numpy(flipped).astype(bool)
    if not 0 < f.sum() < len(f):
        raise ValueError(f"flipped must mark some but not all points, got {int(f.sum())} of {len(f)}")
    curves = {}
    for method, s in scores_by_method.items():
        s = as_numpy(s).astype(float)
        if s.shape != f.shape:
            raise ValueError(f"scores_by_method[{method!r}] has shape {s.shape} but flipped has shape {f.shape}")
        fpr, tpr, _ = roc_curve(f, s)
        curves[method] = (fpr, tpr, roc_auc_score(f, s))
    if ax is None:
        with sns.axes_style(STYLE):
            fig = Figure(figsize=(4.6, 4.2), layout="constrained")
            ax = fig.subplots()
    for method, (fpr, tpr, auc) in sorted(curves.items(), key=lambda kv: -kv[1][2]):
        ax.plot(fpr, tpr, color=detection_colour(method), lw=2.2 if method.lower().startswith(("vm", "fvm")) else 1.4,
                ls="--" if is_control(method) else "-", label=f"{method} ({auc:.3f})")
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
    y = as_numpy(y_clean).astype(int)
    C = int(max(y.max(), *(int(as_numpy(v).max()) for v in noisy.values()))) + 1
    names = list(classes) if classes is not None else [str(c) for c in range(C)]
    fig = Figure(figsize=(3.9 * len(noisy), 3.7), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(noisy)))
    for ax, (kind, given) in zip(axes, noisy.items()):
        g = as_numpy(given).astype(int)
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
    imgs, g, s, c = as_numpy(images), as_numpy(given).astype(int), as_numpy(suggested).astype(int), as_numpy(clean).astype(int)
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
    rows, cols = grid_shape(m, ncols)
    fig = Figure(figsize=(1.45 * cols, 1.7 * rows + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for i, ax in enumerate(axes[:m]):
        ax.imshow(imgs[i], cmap="gray_r")
        right = s[i] == c[i]
        ax.set_title(f"{name(g[i])} -> {name(s[i])}\nclean: {name(c[i])}", fontsize=7,
                     color=HIT_COLOUR if right else FLIPPED_COLOUR)
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
    Q, infl, ql = as_numpy(query_images), as_numpy(influence).astype(float), as_numpy(query_labels).astype(int)
    if not (len(Q) == len(infl) == len(ql)):
        raise ValueError(f"query_images, influence and query_labels must have the same length, got "
                         f"{len(Q)}, {len(infl)}, {len(ql)}")
    name = (lambda c: classes[c]) if classes is not None else str
    top = np.argsort(-infl, kind="stable")[: min(k, len(infl))]  # most harmed first
    img = as_numpy(train_image)
    side = int(round(math.sqrt(img.size)))
    fig = Figure(figsize=(1.5 * (len(top) + 1), 2.1), layout="constrained")
    axes = fig.subplots(1, len(top) + 1, squeeze=False)[0]
    label = f"train: given {name(given)}" + (f"\nclean {name(clean)}" if clean is not None else "")
    panels = [(img.reshape(side, side), label, FLIPPED_COLOUR if clean is not None and clean != given else "k")]
    for i in top:
        colour = HIT_COLOUR if clean is not None and ql[i] == clean else "k"
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



REFERENCE_NAMES = {"loss": "the training loss at theta*"}  # what the dashboard's reference curve is


def roc_title(method: str, scores: Mapping[str, ArrayLike]) -> str:
    """The dashboard ROC's title, e.g. "ROC of vm against loss (the training loss at theta*)": the method, then
    every other curve drawn, each reference explained -- no comparison when the method is the only curve (the
    loss itself), so the title never reads "loss vs the training loss"."""
    name = lambda m: f"{m} ({REFERENCE_NAMES[m]})" if m in REFERENCE_NAMES else m  # noqa: E731
    others = [name(m) for m in scores if m != method]
    return f"ROC of {name(method)}" + (f" against {', '.join(others)}" if others else "")


def plot_detection_setting(result: Mapping, k: int = 8) -> Figure:
    """One detection setting at a glance, drawn from ``ifkit.experiments.detection.explore``'s result.

    Top: the histograms of ``result["method"]``'s scores for flipped vs clean training points, and its ROC
    against every other score in ``result["scores"]`` (``explore`` adds the training loss at theta*, the simplest
    reference; the title names them, ``roc_title``). Bottom: the ``k`` most suspicious training images with their
    given and clean labels.

    Args:
        result: a dict with ``dataset``, ``noise``, ``rate``, ``method``, ``scores`` ({method: (n,) scores},
            including ``method``), ``flipped`` ((n,) bool), ``state`` (at least ``fit_flipped`` and
            ``test_acc``), ``images`` ((n, ...) square images), ``given`` and ``clean`` ((n,) labels) and
            ``classes`` (class names).
        k: how many suspects to show.

    Returns:
        A Figure: two axes on top, ``k`` image axes below.
    """
    missing = {"dataset", "noise", "rate", "method", "scores", "flipped", "state", "images", "given", "clean",
               "classes"} - set(result)
    if missing:
        raise ValueError(f"result lacks the keys {sorted(missing)} (use ifkit.experiments.detection.explore)")
    method, state, flipped, scores = result["method"], result["state"], result["flipped"], result["scores"]
    fig = Figure(figsize=(11, 6.2), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[3, 1.5])
    with sns.axes_style(STYLE):
        ax_h, ax_r = top.subplots(1, 2)
    sc = as_numpy(scores[method]).astype(float)
    f = as_numpy(flipped).astype(bool)
    edges = np.histogram_bin_edges(sc, bins=30)
    sns.histplot(sc[~f], bins=edges, ax=ax_h, color=CLEAN_COLOUR, label="clean", stat="density", alpha=0.5)
    sns.histplot(sc[f], bins=edges, ax=ax_h, color=FLIPPED_COLOUR, label="flipped", stat="density", alpha=0.5)
    ax_h.set_xlabel(f"{method} score (higher = more suspicious)")
    ax_h.legend(fontsize=8)
    readable_ticks(ax_h, "x")  # the scores; densities stack vertically and never clash
    ax_h.set_title(f"{result['dataset']}, {result['noise']} {result['rate']:.0%}: network fits "
                   f"{state['fit_flipped']:.0%} of the flips, test acc {state['test_acc']:.2f}", fontsize=9)
    plot_roc(scores, flipped, ax=ax_r, title=roc_title(method, scores))
    order = np.argsort(-sc, kind="stable")[:k]  # (k,) most suspicious first
    axes = np.atleast_1d(bottom.subplots(1, k))
    X = as_numpy(result["images"])
    names = result["classes"]
    given, clean = as_numpy(result["given"]).astype(int), as_numpy(result["clean"]).astype(int)
    for ax, i in zip(axes, order):
        ax.imshow(X[i].reshape(X.shape[-2], X.shape[-1]), cmap="gray_r")
        ax.set_title(f"given {names[given[i]]}\nclean {names[clean[i]]}", fontsize=7,
                     color=FLIPPED_COLOUR if given[i] != clean[i] else CLEAN_COLOUR)
        ax.set_xticks([])
        ax.set_yticks([])
    bottom.suptitle(f"top {k} suspects of {method}: {int(f[order].sum())} mislabelled (red)", fontsize=9)
    return fig


__all__ = ["plot_detection_setting", "plot_hurt_queries", "plot_noise_models", "plot_roc", "plot_suggested_labels",
           "roc_title"]
