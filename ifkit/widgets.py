"""Dashboards for the notebooks: ``ipywidgets.interact`` over an experiment, drawn with ``ifkit.viz``.

Each dashboard composes one experiment function (which trains and scores) with one pure plot of ``ifkit.viz``
(which draws from its result); the plots themselves live in ``ifkit.viz``. In a notebook::

    from ifkit.widgets import detection_dashboard
    detection_dashboard(noise="symmetric", rate=0.3, n_train=400, n_val=150, epochs=300)

``ipywidgets`` (the ``notebooks`` extra) is needed only by the ``*_dashboard`` builders, not by the plot
functions.
"""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.figure import Figure

from ifkit.viz.detection import plot_detection_setting


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

    ``ifkit.experiments.detection.explore`` builds the split and the memorising MLP (digits: ``detection.FAST`` resized;
    fashion: 14x14 Fashion-MNIST) and scores every training point with ``method`` and the training loss;
    ``ifkit.viz.plot_detection_setting`` shows the score histograms of flipped vs clean points, the ROC of
    ``method`` against the training loss at theta* (the simplest reference), and the ``k`` most suspicious
    images. Training runs are cached per (config, noise, rate, seed): a notebook that prepared the same setting
    before pays only for the scores.

    Returns:
        A Figure: two axes on top, ``k`` image axes below.
    """
    from ifkit.experiments import detection

    result = detection.explore(dataset, noise, rate, method, seed=seed, n_train=n_train, n_val=n_val, epochs=epochs)
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
    for the noise rate; the other arguments are fixed. The initial values (first dataset, ``noise``, ``rate``,
    ``method``) show the setting a notebook prepared before, so the first draw needs no retraining.

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
                    seed=fixed(seed), n_train=fixed(n_train), n_val=fixed(n_val), epochs=fixed(epochs), k=fixed(k))


__all__ = ["detection_dashboard", "plot_detection_dashboard"]
