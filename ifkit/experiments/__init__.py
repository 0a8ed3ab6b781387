"""Experiment registry: ``ifkit reproduce NAME`` runs ``EXPERIMENTS[NAME](fast=..., seeds=..., out=...)``.

Add an experiment by dropping a module into this package; everything the command needs to know about it is
declared where it is registered::

    # ifkit/experiments/detection.py
    from ifkit.experiments import register

    @register("detection", seconds=(169, 7))   # measured wall time, full and --fast (`ifkit reproduce --help`)
    def run(fast: bool, seeds: int, out: Path, runs: dict | None = None) -> pd.DataFrame:
        ...   # write out / "detection.csv" atomically, return the tidy DataFrame

``discover()`` imports every module of the package, so registering needs no edit here or in the CLI.

* ``parts``: independent parts (gen-text: one task each), ``fn(..., part=PART)``: ``ifkit reproduce gen-text:math``
  runs one part, and ``--jobs`` spreads the parts over its workers (they share the results file: ``ResultsTable``
  merges under a lock).
* ``shares``: objects the runner keeps for the length of one worker process and passes as keyword arguments
  (``shares=("runs",)``: ``fn(..., runs=<one dict per worker>)``): detection's trained networks, which relabel and
  the ablation then reuse instead of retraining. An experiment called without them computes what it needs, with
  the same rows; sharing only saves time.
* ``after``: experiments that this one should follow in the same worker (relabel after detection, to reuse its
  networks through ``shares``); ``--jobs`` keeps such a group in one worker, in order.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Experiment = Callable[..., Any]  # (fast: bool, seeds: int, out: Path) -> pandas.DataFrame | None


@dataclass(frozen=True)
class Meta:
    """What ``ifkit reproduce`` knows about an experiment, declared by ``register``.

    Attributes:
        parts: independent parts, each run alone by ``fn(fast, seeds, out, part=PART)`` (``NAME:PART``).
        seconds: measured wall-clock seconds (full size, --fast) on 2 CPU cores, for ``ifkit reproduce --help``;
            the full time also balances ``--jobs`` workers.
        part_seconds: full-size seconds of each part on one core (a part without an entry: an equal share).
        note: a short remark shown beside the times.
        shares: keyword arguments the runner passes from its per-worker store (see the module docstring).
        after: experiments this one follows in the same worker when both run.
        seed_lists: ``fn`` also takes a list of seeds (``ifkit reproduce NAME --seeds 0 1 2 3 4``), not only a
            count.
        in_all: ``ifkit reproduce all`` (``make reproduce``) runs it; False: only by name (a long study whose
            committed rows come from its own run).
    """

    parts: tuple[str, ...] = ()
    seconds: tuple[float, float] = (300.0, 30.0)
    part_seconds: Mapping[str, float] = field(default_factory=dict)
    note: str = ""
    shares: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    seed_lists: bool = False
    in_all: bool = True


EXPERIMENTS: dict[str, Experiment] = {}
META: dict[str, Meta] = {}
PARTS: dict[str, tuple[str, ...]] = {}  # name -> the parts ``fn(..., part=...)`` accepts (none: runs whole)


def register(name: str, parts: tuple[str, ...] = (), *, seconds: tuple[float, float] | None = None,
             part_seconds: Mapping[str, float] | None = None, note: str = "", shares: tuple[str, ...] = (),
             after: tuple[str, ...] = (), seed_lists: bool = False, in_all: bool = True
             ) -> Callable[[Experiment], Experiment]:
    """Decorator that adds ``fn(fast: bool, seeds: int, out: Path)`` to ``EXPERIMENTS`` under ``name``, with its
    ``Meta`` (the arguments after ``name``; see ``Meta``) in ``META``.

    Raises:
        ValueError: if the name is "all" or already taken by a different function, or a part time names no part.
    """
    meta = Meta(tuple(parts), seconds or Meta.seconds, dict(part_seconds or {}), note, tuple(shares), tuple(after),
                seed_lists, in_all)
    unknown = set(meta.part_seconds) - set(meta.parts)
    if unknown:
        raise ValueError(f"experiment {name!r}: part_seconds names {sorted(unknown)}, not among its parts {parts}")

    def deco(fn: Experiment) -> Experiment:
        if name == "all":
            raise ValueError("'all' is reserved: it runs every registered experiment")
        known = EXPERIMENTS.get(name)
        # Re-registering the same function (a module re-imported in a notebook) is harmless; a clash is not.
        if known is not None and getattr(known, "__qualname__", None) != getattr(fn, "__qualname__", None):
            raise ValueError(f"experiment {name!r} is already registered by {known.__module__}")
        EXPERIMENTS[name] = fn
        META[name] = meta
        PARTS[name] = meta.parts
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


def full_seconds(name: str, meta: Mapping[str, Meta] | None = None, fast: bool = False) -> float:
    """Full-size seconds of an experiment or one part (``NAME:PART``), from its ``Meta`` in ``meta`` (default:
    ``META``; unknown names: 300); ``fast``: its --fast seconds instead (a part: an equal share)."""
    base, part = split_part(name)
    meta = (META if meta is None else meta).get(base, Meta())
    if part is None or fast:
        return meta.seconds[int(fast)] / (max(1, len(meta.parts)) if part else 1)
    return meta.part_seconds.get(part, meta.seconds[0] / max(1, len(meta.parts)))


def run(name: str, fast: bool, seeds: int, out: Path, store: dict[str, Any] | None = None) -> Any:
    """Run one registered experiment, or one part of it (``NAME:PART``), by name (after ``discover()``).

    ``store``: the runner's per-worker store; each name in the experiment's ``shares`` is passed as a keyword
    argument, created empty on first use (None: nothing shared, the experiment computes everything itself).
    """
    base, part = split_part(name)
    shared = {k: store.setdefault(k, {}) for k in META.get(base, Meta()).shares} if store is not None else {}
    if part is not None:
        shared["part"] = part
    return EXPERIMENTS[base](fast, seeds, out, **shared)  # positional: the documented order is the contract
