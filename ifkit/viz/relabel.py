"""The plot of notebook 06's relabel widget: one flagged training point, the score of every candidate label, and
the label the rule picks (docs/PAPER.md, Eq. 17: y_new = argmin_c I((x, c), S_val))."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from .common import ArrayLike, as_numpy
from .palette import CLEAN_COLOUR, FLIPPED_COLOUR, HIT_COLOUR

OTHER_COLOUR = "#c7c7c7"  # bars of the candidates the rule did not pick
LOG_RATIO = 100.0  # positive scores spanning more than this factor are drawn on a log axis


def _square(image: np.ndarray) -> np.ndarray:
    """(H, W) from (1, H, W), (H, W) or a flattened square (H*W,) image."""
    img = np.asarray(image, dtype=float)
    if img.ndim == 3:
        img = img[0]
    if img.ndim == 1:
        side = int(round(math.sqrt(img.size)))
        if side * side != img.size:
            raise ValueError(f"a flat image must have a square number of pixels, got {img.size}")
        img = img.reshape(side, side)
    if img.ndim != 2:
        raise ValueError(f"an image must be (H, W), (1, H, W) or (H*W,), got shape {np.shape(image)}")
    return img


def plot_relabel_candidates(images: ArrayLike, candidate_scores: ArrayLike, given: ArrayLike, clean: ArrayLike,
                            index: int = 0, classes: Sequence[str] | None = None, method: str = "vm") -> Figure:
    """Flagged point ``index``: its image, its given and clean label, and the score of each candidate label.

    The new label is the argmin over candidates c of the score of (x, c) (higher = more harmful; Eq. 17). Its bar
    is green when it is the clean label, red when it is not; the other bars are grey. Under the bars, the given
    label is marked "given" and the clean one "clean"; positive scores spanning more than a factor LOG_RATIO (VM's,
    Eq. 13, often do) are drawn on a log axis. The image's title is red for a flipped point (given !=
    clean) and grey for a false alarm (the given label was already right, so keeping it is the right answer).

    Args:
        images: (k, H, W), (k, 1, H, W) or (k, H*W) images of the flagged points.
        candidate_scores: (k, C) the method's score of every flagged point with every candidate label.
        given: (k,) the labels trained on; clean: (k,) the true labels.
        index: which flagged point to show (0 = the most suspicious, when the flags are sorted).
        classes: C class names (default: the label numbers).
        method: the scoring method's name (titles).

    Returns:
        A Figure with two axes: the image, and the bar chart of the C candidate scores.
    """
    imgs, S = as_numpy(images), as_numpy(candidate_scores).astype(float)
    g, c = as_numpy(given).astype(int), as_numpy(clean).astype(int)
    if S.ndim != 2 or not (len(imgs) == len(S) == len(g) == len(c)) or len(S) == 0:
        raise ValueError(f"candidate_scores must be (k, n_classes) with k images, given and clean labels, got "
                         f"scores {S.shape}, {len(imgs)} images, {len(g)} given, {len(c)} clean")
    k, C = S.shape
    if not 0 <= index < k:
        raise ValueError(f"index={index} is out of range [0, {k}): there are {k} flagged points")
    if classes is not None and len(classes) != C:
        raise ValueError(f"classes has {len(classes)} names for {C} candidate labels")
    if not np.isfinite(S[index]).all():
        raise ValueError(f"the scores of flagged point {index} are not all finite: {S[index]}")
    name = (lambda j: str(classes[j])) if classes is not None else str  # noqa: E731
    y_given, y_clean = int(g[index]), int(c[index])
    new = int(S[index].argmin())  # the rule (Eq. 17): the least harmful candidate
    right = new == y_clean

    fig = Figure(figsize=(8.5, 3.0), layout="constrained")
    ax_img, ax_bar = fig.subplots(1, 2, width_ratios=[1, 2.6])
    ax_img.imshow(_square(imgs[index]), cmap="gray_r")
    ax_img.set_xticks([])
    ax_img.set_yticks([])
    flipped = y_given != y_clean
    ax_img.set_title(f"flag {index}: given {name(y_given)}, clean {name(y_clean)}\n"
                     + ("flipped label" if flipped else "false alarm: given is right"), fontsize=9,
                     color=FLIPPED_COLOUR if flipped else CLEAN_COLOUR)

    colours = [OTHER_COLOUR] * C
    colours[new] = HIT_COLOUR if right else FLIPPED_COLOUR
    ax_bar.bar(np.arange(C), S[index], color=colours, edgecolor="black", linewidth=0.4)
    row = S[index]
    log = bool((row > 0).all() and row.max() > LOG_RATIO * row.min())
    if log:  # VM's scores are positive and span decades: on a linear axis the chosen bar would be invisible
        ax_bar.set_yscale("log")
        ax_bar.set_ylim(bottom=row.min() / 3)  # the lowest bar, the chosen one, stays visible
    else:
        ax_bar.axhline(0, color="black", linewidth=0.6)
    marks = {j: [] for j in range(C)}
    marks[y_given].append("given")
    marks[y_clean].append("clean")
    ax_bar.set_xticks(np.arange(C), [name(j) + "".join(f"\n{m}" for m in marks[j]) for j in range(C)], fontsize=8)
    for j in (y_given, y_clean):
        ax_bar.get_xticklabels()[j].set_weight("bold")
    ax_bar.set_ylabel(f"{method} score of (x, c)\n(higher = more harmful{', log scale' if log else ''})",
                      fontsize=8)
    ax_bar.set_title(f"new label = argmin = {name(new)}: " + ("the clean label" if right else
                     f"wrong (clean: {name(y_clean)})"), fontsize=9, color=HIT_COLOUR if right else FLIPPED_COLOUR)
    return fig


__all__ = ["plot_relabel_candidates"]
