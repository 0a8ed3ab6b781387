"""Dashboards for the notebooks: ``ipywidgets.interact`` over an experiment, drawn with ``ifkit.viz``.

Each dashboard composes one experiment function (which trains and scores) with one pure plot of ``ifkit.viz``
(which draws from its result); the plots themselves live in ``ifkit.viz``. In a notebook::

    from ifkit.widgets import detection_dashboard
    detection_dashboard(noise="symmetric", rate=0.3, n_train=400, n_val=150, epochs=300)

``relabel_explorer`` is the other kind: a slider over arrays the notebook already computed (no retraining).

``ipywidgets`` (the ``notebooks`` extra) is needed only by the ``*_dashboard`` builders, not by the plot
functions.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from matplotlib.figure import Figure

from ifkit.viz.detection import plot_detection_setting
from ifkit.viz.relabel import plot_relabel_candidates


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
    runs: dict | None = None,
) -> Figure:
    """One detection setting end to end, for an ``interact`` over dataset / noise / rate / method.

    ``ifkit.experiments.detection.explore`` builds the split and the memorising MLP (digits: ``detection.FAST`` resized;
    fashion: 14x14 Fashion-MNIST) and scores every training point with ``method`` and the training loss;
    ``ifkit.viz.plot_detection_setting`` shows the score histograms of flipped vs clean points, the ROC of
    ``method`` against the training loss at theta* (the simplest reference), and the ``k`` most suspicious
    images. ``runs``: trained networks to reuse and add to (``detection.Runs``): with one dict across calls, only a
    new setting (dataset, noise, rate) retrains; a new method pays only for its scores.

    Returns:
        A Figure: two axes on top, ``k`` image axes below.
    """
    from ifkit.experiments import detection

    result = detection.explore(dataset, noise, rate, method, seed=seed, n_train=n_train, n_val=n_val, epochs=epochs,
                               runs=runs)
    return plot_detection_setting(result, k=k)


def detection_dashboard(
    noise: str = "symmetric",
    rate: float = 0.3,
    method: str = "vm",
    seed: int = 0,
    n_train: int = 400,
    n_val: int = 150,
    epochs: int = 300,
    k: int = 8,
    methods: Sequence[str] | None = None,
    datasets: Sequence[str] = ("digits", "fashion"),
    noises: Sequence[str] = ("symmetric", "asymmetric", "hard"),
):
    """``interact(plot_detection_dashboard, ...)`` with a dropdown per dataset, noise model and method and a slider
    for the noise rate; the other arguments are fixed. The dashboard keeps the networks it trains (one ``runs``
    dict), so going back to a setting, or changing only the method, needs no retraining.

    Args:
        methods: the method dropdown (default: every method of ``ifkit.experiments.detection``).
        datasets, noises: the other dropdowns.

    Returns:
        What ``ipywidgets.interact`` returns (the decorated function, with its widget).
    """
    from ipywidgets import Dropdown, FloatSlider, fixed, interact

    from ifkit.experiments import detection

    options = list(methods) if methods is not None else list(detection.INFLUENCE + detection.REFERENCE)
    return interact(plot_detection_dashboard,
                    dataset=Dropdown(options=list(datasets), value=datasets[0]),
                    noise=Dropdown(options=list(noises), value=noise),
                    rate=FloatSlider(value=rate, min=0.1, max=0.5, step=0.1),
                    method=Dropdown(options=options, value=method),
                    seed=fixed(seed), n_train=fixed(n_train), n_val=fixed(n_val), epochs=fixed(epochs), k=fixed(k),
                    runs=fixed({}))


def relabel_explorer(images, candidate_scores, given, clean, classes: Sequence[str] | None = None,
                     method: str = "vm", index: int = 0):
    """``interact(ifkit.viz.plot_relabel_candidates, ...)`` with a slider over the flagged points: the image, its
    given and clean label, and the bar chart of its candidate scores with the chosen label (the argmin,
    docs/PAPER.md Eq. 17) highlighted. Everything is precomputed, so moving the slider only redraws.

    Args:
        images: (k, ...) images of the flagged points; candidate_scores: (k, C) the score of each with each label
            (e.g. ``ifkit.score(method, ..., candidates=...)`` reshaped to (k, C)); given, clean: (k,) labels.
        classes, method: names for the plot; index: the flagged point shown first.

    Returns:
        What ``ipywidgets.interact`` returns (the decorated function, with its widget).
    """
    from ipywidgets import IntSlider, fixed, interact

    k = len(candidate_scores)
    if not 0 <= index < k:
        raise ValueError(f"index={index} is out of range [0, {k}): there are {k} flagged points")
    return interact(plot_relabel_candidates, images=fixed(images), candidate_scores=fixed(candidate_scores),
                    given=fixed(given), clean=fixed(clean), classes=fixed(classes), method=fixed(method),
                    index=IntSlider(value=index, min=0, max=k - 1, description="flagged point"))


def checkpoint_diagnoses(model: torch.nn.Module, train, val, checkpoints: Sequence, method: str = "fvm",
                         **options: Any) -> Callable[[int], Any]:
    """index -> ``ifkit.diagnose`` of ``model`` with checkpoint ``index`` loaded (state_dicts or (state_dict, lr)
    pairs, as ``ifkit.optim.train.train`` saves them), computed once per index; ``model`` is never modified."""
    from ifkit.diagnosis import diagnose
    from ifkit.optim.train import checkpoint_state

    states = [checkpoint_state(c)[0] for c in checkpoints]
    if not states:
        raise ValueError("no checkpoints: train with ifkit.optim.train.train(..., n_checkpoints=k) to save some")
    reports: dict[int, Any] = {}

    def report(index: int):
        if index not in reports:
            at = copy.deepcopy(model)
            at.load_state_dict(states[index])
            reports[index] = diagnose(at, train, val, method, **options)
        return reports[index]

    return report


def checkpoint_report(model: torch.nn.Module, train, val, checkpoints: Sequence, method: str = "fvm",
                      **options: Any):
    """A slider over the saved training checkpoints showing ``ifkit.diagnose``'s trust report at each (its verdict,
    reasons and table): where along training the influence scores become trustworthy, and where memorisation
    starts. Starts at the last checkpoint; each new position costs one diagnosis (~0.5-2 s), then is cached.

    Returns:
        What ``ipywidgets.interact`` returns (the decorated function, with its widget).
    """
    from IPython.display import display
    from ipywidgets import IntSlider, interact

    report = checkpoint_diagnoses(model, train, val, checkpoints, method, **options)
    last = len(checkpoints) - 1
    return interact(lambda checkpoint: display(report(checkpoint)),
                    checkpoint=IntSlider(value=last, min=0, max=last, description="checkpoint"))


def removal_view(removed, text_val: Sequence[str], text_train: Sequence[str], cls_train, cls_val, tables,
                 method: str, k: int):
    """One query's removal test as a table (what ``removal_explorer`` shows): the ``k`` training examples
    ``method`` ranks most helpful (their text, whether they share the query's class, their influence), and the
    query's loss before, after refitting without them, and after refitting without ``k`` random same-class ones.

    Args:
        removed: the rows of ``ifkit.experiments.gen_lds.removal`` for ONE query (columns query, k, method,
            removed, loss_before, loss_after, increase).
        text_val, text_train, cls_train, cls_val: the task's texts and classes (``TaskData``).
        tables: method -> (Q, n) pairwise scores (negative = helpful).

    Returns:
        (summary line, DataFrame of the removed examples).
    """
    import pandas as pd

    rows = removed[(removed["k"] == k)].set_index("method")
    if method not in rows.index:
        raise ValueError(f"no removal refit for method={method!r}, k={k}; there are {sorted(rows.index)}")
    q = int(rows["query"].iloc[0])
    mine, rand = rows.loc[method], rows.loc["random"]
    idx = list(mine["removed"])
    table = pd.DataFrame({"rank": range(1, len(idx) + 1), "training example": [text_train[i] for i in idx],
                          "same class": [bool(cls_train[i] == cls_val[q]) for i in idx],
                          "influence": [float(tables[method][q, i]) for i in idx]})
    line = (f"query {q}: {text_val[q]}\nloss {mine['loss_before']:.4f} with every training example; without the top "
            f"{k} of {method}: {mine['loss_after']:.4f} ({mine['increase']:+.4f}); without {k} random examples "
            f"of its class: {rand['loss_after']:.4f} ({rand['increase']:+.4f})")
    return line, table


def removal_explorer(removed, text_val: Sequence[str], text_train: Sequence[str], cls_train, cls_val, tables,
                     method: str = "tracin"):
    """``interact`` over the method (and k) of a removal test already refit (``gen_lds.removal``): the query, the
    examples that method would remove, and the query's loss before and after removing them, beside removing as
    many random examples of the query's class. Nothing is refit when a dropdown moves.

    Returns:
        What ``ipywidgets.interact`` returns (the decorated function, with its widget).
    """
    from IPython.display import display
    from ipywidgets import Dropdown, interact

    methods = [m for m in dict.fromkeys(removed["method"]) if m != "random"]
    ks = sorted(set(int(k) for k in removed["k"]))

    def show(method: str, k: int) -> None:
        line, table = removal_view(removed, text_val, text_train, cls_train, cls_val, tables, method, k)
        print(line)
        display(table)

    return interact(show, method=Dropdown(options=methods, value=method if method in methods else methods[0]),
                    k=Dropdown(options=ks, value=ks[0]))


__all__ = ["checkpoint_diagnoses", "checkpoint_report", "detection_dashboard", "plot_detection_dashboard",
           "relabel_explorer", "removal_explorer", "removal_view"]
