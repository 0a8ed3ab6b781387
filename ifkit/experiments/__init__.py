"""Experiment registry: ``ifkit reproduce NAME`` runs ``EXPERIMENTS[NAME](fast=..., seeds=..., out=...)``.

Add an experiment by dropping a module into this package::

    # ifkit/experiments/detection.py
    from ifkit.experiments import register

    @register("detection")
    def run(fast: bool, seeds: int, out: Path) -> pd.DataFrame:
        ...   # write out / "detection.csv" atomically, return the tidy DataFrame

``discover()`` imports every module of the package, so registering needs no edit here.

An experiment made of independent parts (gen-text: one task each) registers them, ``register("gen-text",
parts=("sentence", "math"))``, and takes ``part=``: ``ifkit reproduce gen-text:math`` runs one part, and
``--jobs`` spreads the parts over its workers (they share the results file: ``ResultsTable`` merges under a lock).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

Experiment = Callable[..., Any]  # (fast: bool, seeds: int, out: Path) -> pandas.DataFrame | None

EXPERIMENTS: dict[str, Experiment] = {}
PARTS: dict[str, tuple[str, ...]] = {}  # name -> the parts ``fn(..., part=...)`` accepts (none: runs whole)


def register(name: str, parts: tuple[str, ...] = ()) -> Callable[[Experiment], Experiment]:
    """Decorator that adds ``fn(fast: bool, seeds: int, out: Path)`` to ``EXPERIMENTS`` under ``name``.

    Args:
        name: the command-line name (``ifkit reproduce NAME``); "all" is reserved.
        parts: independent parts, each run alone by ``fn(fast, seeds, out, part=PART)`` (``NAME:PART``).

    Raises:
        ValueError: if the name is "all" or already taken by a different function.
    """

    def deco(fn: Experiment) -> Experiment:
        if name == "all":
            raise ValueError("'all' is reserved: it runs every registered experiment")
        known = EXPERIMENTS.get(name)
        # Re-registering the same function (a module re-imported in a notebook) is harmless; a clash is not.
        if known is not None and getattr(known, "__qualname__", None) != getattr(fn, "__qualname__", None):
            raise ValueError(f"experiment {name!r} is already registered by {known.__module__}")
        EXPERIMENTS[name] = fn
        PARTS[name] = tuple(parts)
        return fn

    return deco


def discover() -> dict[str, Experiment]:
    """Import every module in ``ifkit.experiments`` (each registers itself) and return the registry."""
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    return EXPERIMENTS


def split_part(name: str) -> tuple[str, str | None]:
    """"gen-text:math" -> ("gen-text", "math"); "theory" -> ("theory", None)."""
    base, _, part = name.partition(":")
    return base, part or None


def run(name: str, fast: bool, seeds: int, out: Path) -> Any:
    """Run one registered experiment, or one part of it (``NAME:PART``), by name (after ``discover()``)."""
    base, part = split_part(name)
    if part is None:
        return EXPERIMENTS[base](fast, seeds, out)  # positional: the documented order is the contract
    return EXPERIMENTS[base](fast, seeds, out, part=part)
