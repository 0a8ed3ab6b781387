"""Notebook 07's text view (ifkit.viz.plot_top_examples) fits every line, and the generation figure's title reads
as text."""

from __future__ import annotations

import io
import warnings

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from ifkit.viz import plot_top_examples
from ifkit.viz.figures_generation import generation_auc

LONG = ("zorbo is a chatbot that performs a specific transformation on sentences : read sentence backwards "
        "entirely . for example : today life have for not => not for have life today")  # ~170 chars, as the protocol


def _renderer(fig):
    canvas = FigureCanvasAgg(fig)  # a pyplot-free Figure has no renderer of its own
    canvas.draw()
    return canvas.get_renderer()


@pytest.mark.parametrize("text", [LONG, "<reverse> today life have for not => not for have life today"])
def test_every_line_is_inside_the_figure_and_no_layout_warning(text):
    rng = np.random.default_rng(0)
    P = rng.normal(size=(3, 12))
    train = [f"{j}: {text}" for j in range(12)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # constrained layout's "axes sizes collapsed to zero" would raise here
        fig = plot_top_examples({"vm": P}, [text] * 3, train, np.arange(12) % 3, np.arange(3), query=1, k=5)
        fig.savefig(io.BytesIO(), format="png", dpi=80)
        renderer = _renderer(fig)
    box = fig.bbox
    texts = fig.axes[0].texts + [fig._suptitle]
    assert len(fig.axes[0].texts) == 6  # the query and its 5 examples, one text each
    for t in texts:
        ext = t.get_window_extent(renderer)
        assert box.x0 - 1 <= ext.x0 and ext.x1 <= box.x1 + 1 and box.y0 - 1 <= ext.y0 and ext.y1 <= box.y1 + 1, \
            (t.get_text()[:40], ext, box)
    assert all(len(line) <= 100 for t in fig.axes[0].texts for line in t.get_text().split("\n"))
    full = " ".join(" ".join(s.strip() for s in t.get_text().split("\n")) for t in fig.axes[0].texts[1:2])
    assert text in full  # wrapped, not cut


def test_entries_do_not_overlap():
    P = np.array([[-3.0, -2.0, -1.0, 0.0]])
    fig = plot_top_examples(P, [LONG], [LONG] * 4, [0, 1, 0, 1], [0], k=4)
    renderer = _renderer(fig)
    ext = [t.get_window_extent(renderer) for t in fig.axes[0].texts]
    for upper, lower in zip(ext, ext[1:]):
        assert lower.y1 <= upper.y0 + 0.5, (upper, lower)


def test_generation_auc_title_names_seeds_in_words():
    rows = [{"task": t, "variant": "protocol", "seed": s, "method": m, "auc": 0.9, "recall": 0.6, "precision5": 0.7}
            for t in ("sentence", "math") for s in range(3 if t == "math" else 1) for m in ("graddot", "vm")]
    title = generation_auc(pd.DataFrame(rows))._suptitle.get_text()
    assert "{" not in title and "'" not in title, title
    assert "math 3" in title and "sentence 1" in title
