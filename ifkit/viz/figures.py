"""The figures of ``ifkit figures``: a registry of producers, from tidy result CSVs to a matplotlib Figure.

``ifkit figures`` calls ``save_all(results_dir, out_dir)``, which runs every producer in ``FIGURES`` whose input
CSVs exist and saves ``out_dir/NAME.png``. Notebooks call the same producers on their own DataFrames. The
producers live by topic in ``figures_theory``, ``figures_bench``, ``figures_generation``, ``figures_detection``
and ``figures_relabel``; importing ``ifkit.viz`` (or any module in it) registers all of them.

Add a producer with the decorator; it receives one DataFrame per input file, in order::

    from ifkit.viz.figures import register
    from ifkit.viz.palette import palette

    @register("detection_auc", inputs=("detection.csv",))
    def detection_auc(detection: pd.DataFrame) -> Figure:
        ...
        sns.barplot(..., hue="method", palette=palette(methods))

Colours and orders come from ``ifkit.viz.palette``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

DPI = 150


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
            how = "ifkit bench" if missing == ["bench.csv"] else "ifkit reproduce"
            print(f"skip {name}: {', '.join(missing)} not in {results_dir} (run `{how}` first)")
            continue
        frames = [pd.read_csv(results_dir / f) for f in producer.inputs]
        path = save_figure(producer.fn(*frames), out_dir / f"{name}.png")
        print(f"wrote {path}")
        written.append(path)
    return written


__all__ = ["DPI", "FIGURES", "Producer", "register", "save_all", "save_figure"]
