"""Plots of notebooks 07 and 08 (influential-data identification for generation): a query and its most helpful
training examples, as text or as images."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from .common import ArrayLike, as_numpy
from .palette import FLIPPED_COLOUR, HIT_COLOUR


def select_method(pairwise, method: str | None) -> tuple[np.ndarray, str | None]:
    """The (n_queries, n_train) array to draw: ``pairwise`` itself, or ``pairwise[method]`` from a dict of
    methods (default: its first entry); a clear error for an empty dict or a missing method."""
    if not isinstance(pairwise, Mapping):
        return as_numpy(pairwise), method
    if not pairwise:
        raise ValueError("pairwise is an empty dict: pass {method: (n_queries, n_train) matrix}")
    method = method if method is not None else next(iter(pairwise))
    if method not in pairwise:
        raise ValueError(f"no pairwise scores for method {method!r}; available: {list(pairwise)}")
    return as_numpy(pairwise[method]), method

TEXT_WIDTH = 9.0  # inches: the text figure's width; lines wrap to fit it


def _wrapped(text: str, width: int, indent: str) -> str:
    """``text`` wrapped at ``width`` characters, continuation lines indented (long prompts stay readable)."""
    return "\n".join(textwrap.wrap(text, width=width, subsequent_indent=indent, break_on_hyphens=False)) or " "


def plot_top_examples(pairwise: Mapping[str, ArrayLike] | ArrayLike, query_texts: Sequence[str],
                      train_texts: Sequence[str], cls_train: ArrayLike, cls_query: ArrayLike, query: int = 0,
                      method: str | None = None, k: int = 5, width: int = 100) -> Figure:
    """The ``k`` most helpful training examples of one query (most negative ``pairwise``), as a text figure.

    Green lines share the query's class (the protocol's hits), red ones do not. Every text is wrapped at
    ``width`` characters and the figure's height follows the number of lines, so nothing is clipped however
    long the prompts are (DataInf's protocol prompt is about 170 characters).

    Args:
        pairwise: (n_queries, n_train) influence matrix, or {method: matrix} (then ``method`` picks one).
        query_texts: (n_queries,) readable queries; train_texts: (n_train,) readable training examples.
        cls_train, cls_query: class ids of the training points and of the queries.
        query: which query to show.
        method: key of ``pairwise`` when it is a dict (default: its first key).
        k: how many training examples to list.
        width: characters per line before wrapping (100 fits the 9-inch figure in 8-9 pt monospace).

    Returns:
        A Figure with one axis of text (one text per entry): the query, then its top-k training examples with
        their influence; the figure's title says how many share the query's class.
    """
    P, method = select_method(pairwise, method)
    ct, cq = as_numpy(cls_train), as_numpy(cls_query)
    if P.ndim != 2 or P.shape != (len(query_texts), len(train_texts)) or len(ct) != P.shape[1] or len(cq) != P.shape[0]:
        raise ValueError(f"pairwise must be (n_queries, n_train) = ({len(query_texts)}, {len(train_texts)}) with "
                         f"matching class arrays, got {P.shape}, cls_train {len(ct)}, cls_query {len(cq)}")
    if not 0 <= query < len(P):
        raise ValueError(f"query={query} is out of range [0, {len(P)})")
    top = np.argsort(P[query], kind="stable")[: min(k, P.shape[1])]  # most negative = most helpful first
    hits = int((ct[top] == cq[query]).sum())
    entries = [(_wrapped(f"query {query}: {query_texts[query]}", width - 10, "    "),
                dict(fontsize=9, weight="bold", color="black"))]
    entries += [(_wrapped(f"{r}. {train_texts[i]}   ({P[query, i]:+.3g})", width, "   "),
                 dict(fontsize=8, color=HIT_COLOUR if ct[i] == cq[query] else FLIPPED_COLOUR))
                for r, i in enumerate(top, 1)]
    # inches each entry takes: its lines at matplotlib's 1.2 line spacing, plus a gap (a wider one after the query)
    tall = [(text.count("\n") + 1) * 1.2 * style["fontsize"] / 72 + (0.14 if r == 0 else 0.05)
            for r, (text, style) in enumerate(entries)]
    title_h = 0.45
    height = title_h + sum(tall) + 0.15
    # no constrained layout: a text-only axis collapses under it (its warning) and long lines get cut; one axis
    # spans the figure and every text is placed in inches from the top
    fig = Figure(figsize=(TEXT_WIDTH, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.axis("off")
    y = title_h
    for (text, style), h in zip(entries, tall):
        ax.text(0.02, 1 - y / height, text, va="top", family="monospace", **style)
        y += h
    fig.suptitle(f"{method or 'influence'}: top {len(top)} most helpful training examples, {hits} of the "
                 "query's class (green)", fontsize=10, y=1 - 0.1 / height, va="top")
    return fig


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
    P, method = select_method(pairwise, method)
    Q, T = as_numpy(query_images), as_numpy(train_images)
    st, sq = as_numpy(train_style), as_numpy(query_style)
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
    panels += [(T[i], f"#{r} {name(st[i])}\n{P[query, i]:+.2g}", HIT_COLOUR if st[i] == sq[query] else FLIPPED_COLOUR)
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


__all__ = ["plot_top_examples", "plot_top_images", "select_method"]
