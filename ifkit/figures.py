"""Figure producers: one function per figure, from tidy result CSVs to a matplotlib Figure.

``ifkit figures`` calls ``save_all(results_dir, out_dir)``, which runs every producer in ``FIGURES`` whose input
CSVs exist and saves ``out_dir/NAME.png``. Notebooks call the same producers on their own DataFrames.

Add a producer with the decorator; it receives one DataFrame per input file, in order::

    @register("detection_auc", inputs=("detection.csv",))
    def detection_auc(detection: pd.DataFrame) -> Figure:
        ...
        sns.barplot(..., hue="method", palette=palette(methods))

Colours: ``METHOD_PALETTE`` gives each method one colour used by every figure; VM and FVM (the paper's
methods) are the two warm colours, everything else is cool or grey.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

DPI = 150

METHOD_PALETTE: dict[str, str] = {
    # baselines without curvature: greys and greens
    "loss": "#7f7f7f",
    "graddot": "#bcbd22",
    "gradcos": "#dbdb8d",
    "tracin": "#2ca02c",
    # classic influence (inverse-Hessian family): blues
    "if-exact": "#1f77b4",
    "if-cg": "#4a90c8",
    "if-lissa": "#9ecae1",
    "datainf": "#9467bd",
    "ekfac": "#17becf",
    # self-influence and ensembles
    "self-if": "#8c564b",
    "gex": "#e377c2",
    # non-influence baseline (confident learning)
    "cleanlab": "#000000",
    # the paper's methods: the only warm colours, always these two
    "vm": "#ff7f0e",
    "fvm": "#d62728",
}
METHOD_ORDER: tuple[str, ...] = tuple(METHOD_PALETTE)
_FALLBACK = "#c7c7c7"


def palette(methods: Iterable[str]) -> dict[str, str]:
    """Colours for the given method names (unknown names get a neutral grey), for seaborn's ``palette=``."""
    return {m: METHOD_PALETTE.get(m, _FALLBACK) for m in methods}


@dataclass(frozen=True)
class Producer:
    """A registered figure: ``fn(*dataframes) -> Figure`` reading ``inputs`` from the results folder."""

    name: str
    fn: Callable[..., Figure]
    inputs: tuple[str, ...]


FIGURES: dict[str, Producer] = {}


def register(name: str, inputs: Iterable[str]) -> Callable[[Callable[..., Figure]], Callable[..., Figure]]:
    """Decorator adding a figure producer to ``FIGURES``.

    Args:
        name: file stem of the saved PNG (``figures/NAME.png``).
        inputs: CSV file names in the results folder, passed to the producer as DataFrames in this order.
    """

    def deco(fn: Callable[..., Figure]) -> Callable[..., Figure]:
        FIGURES[name] = Producer(name, fn, tuple(inputs))
        return fn

    return deco


def save_figure(fig: Figure, path: Path) -> Path:
    """Save a figure as PNG at ``DPI``, without timestamps/software metadata so reruns give identical files."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    tmp.replace(path)  # atomic: a reader never sees a half-written PNG
    plt.close(fig)
    return path


def save_all(results_dir: str | Path, out_dir: str | Path, names: Iterable[str] | None = None) -> list[Path]:
    """Run every registered producer whose inputs exist and save its PNG.

    Producers whose input CSV is missing are skipped with a printed note (their experiment has not been run).

    Args:
        results_dir: folder of tidy CSVs written by ``ifkit reproduce``.
        out_dir: folder for the PNGs (created if needed).
        names: only these producers (default: all).

    Returns:
        Paths of the PNGs written.
    """
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    written = []
    for name in names if names is not None else list(FIGURES):
        producer = FIGURES[name]
        missing = [f for f in producer.inputs if not (results_dir / f).is_file()]
        if missing:
            print(f"skip {name}: {', '.join(missing)} not in {results_dir} (run `ifkit reproduce` first)")
            continue
        frames = [pd.read_csv(results_dir / f) for f in producer.inputs]
        path = save_figure(producer.fn(*frames), out_dir / f"{name}.png")
        print(f"wrote {path}")
        written.append(path)
    return written
