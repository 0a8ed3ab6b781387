"""The work cache of ``ifkit reproduce``: trained networks and leave-one-out refits kept between runs.

Results are resumed row by row (``ifkit.results.ResultsTable``), but a row needs the work under it: the
memorising network of its setting, its checkpoints, the leave-one-out refits of the theory experiment. Without
this cache an interrupted run that had finished half of its rows retrains all of that before the other half.

Layout: ``OUT/.cache/<experiment>/<key>.pt``, one file per unit of work, where ``key`` is the SHA-256 of
everything that produced it (``key_of``: the configuration as JSON -- dataset, noise, rate, seed, sizes, epochs,
model -- plus the torch version and a hash of the library's source, ``code_version``). Clear it with ``rm -rf OUT/.cache`` or skip it
with ``ifkit reproduce --no-cache`` (``IFKIT_CACHE=0``).

Safety: a file is written atomically (temp file + ``os.replace``) and read ONLY with
``torch.load(..., weights_only=True)``, so it holds tensors, numbers, strings, lists and dicts and can run no code.
Each file stores its key and a checksum of its payload (bytes, dtype and shape of every tensor); a file that does
not load, or whose key or checksum does not match, is moved aside (``.bad``) with a warning and the work is
recomputed. Results are bit-identical with and without the cache (``tests/test_resume_cache.py``).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

FORMAT = 1  # bump when the layout of a cache file changes: older files then miss (a new key) and are recomputed
ENV = "IFKIT_CACHE"  # "0": neither read nor write (what `ifkit reproduce --no-cache` sets)


def cache_enabled() -> bool:
    """Whether ``ifkit reproduce`` uses the cache (``IFKIT_CACHE=0`` turns it off)."""
    return os.environ.get(ENV, "1") != "0"


def _plain(obj: Any) -> Any:
    """A JSON-able copy of a configuration: dataclasses as dicts, tuples as lists, floats exactly (repr)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, float):
        return repr(obj)  # 0.1 and 0.1000000001 must not share a key
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    raise TypeError(f"cache key: {type(obj).__name__} is not a configuration value; pass numbers, strings, "
                    "tuples, dicts or dataclasses of them")


# Code that cannot change what the cached work contains (plots, widgets, the command line, the exercises)
NOT_WORK = ("viz", "widgets.py", "cli.py", "bench.py", "workers.py", "exercises")


@functools.cache
def code_version() -> str:
    """SHA-256 of the library's source (``ifkit/**/*.py`` but ``NOT_WORK``): editing the code that trains or
    refits a model gives every unit of work a new key, so a stale file is never used. Cost: one read of ~100 files."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] not in NOT_WORK:
            h.update(str(rel).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def key_of(**config: Any) -> str:
    """SHA-256 (hex) of the configuration that produced a unit of work, plus the format, the torch version and
    ``code_version()``."""
    text = json.dumps({"format": FORMAT, "torch": torch.__version__, "code": code_version(), **_plain(config)},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def checksum(payload: Any) -> str:
    """SHA-256 over a payload's structure and values: every tensor's dtype, shape and bytes, every other leaf's
    repr (dict keys sorted). Cost: one pass over the bytes."""
    h = hashlib.sha256()

    def walk(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(x, dict):
            h.update(f"D{len(x)}".encode())
            for k in sorted(x, key=str):
                h.update(f"K{k!r}".encode())
                walk(x[k])
        elif isinstance(x, (list, tuple)):
            h.update(f"L{len(x)}".encode())
            for v in x:
                walk(v)
        else:
            h.update(f"V{x!r}".encode())

    walk(payload)
    return h.hexdigest()


class Cache:
    """One experiment's folder of cached work, ``OUT/.cache/<experiment>/``.

    Usage::

        cache = Cache(out, "theory")
        key = key_of(seed=seed, weight_decay=wd, ...)
        found = cache.load(key)             # the payload dict, or None (missing, damaged, or cache off)
        if found is None:
            found = compute(...)
            cache.save(key, found)          # tensors, numbers, strings, lists, dicts only
    """

    def __init__(self, out: str | Path, experiment: str, enabled: bool | None = None) -> None:
        self.root = Path(out) / ".cache" / experiment
        self.enabled = cache_enabled() if enabled is None else enabled
        self.hits = self.misses = 0

    def sibling(self, experiment: str) -> Cache:
        """Another experiment's folder in the same ``OUT/.cache`` (relabel reads detection's networks)."""
        return Cache(self.root.parent.parent, experiment, self.enabled)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.pt"

    def load(self, key: str) -> dict | None:
        """The payload stored under ``key``, verified (key and checksum); None when absent, off or damaged."""
        path = self.path(key)
        if not self.enabled or not path.exists():
            self.misses += self.enabled
            return None
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            problem = ("not a cache file" if not isinstance(stored, dict) or stored.get("format") != FORMAT
                       else "its key does not match" if stored.get("key") != key
                       else "its checksum does not match" if stored.get("checksum") != checksum(stored.get("payload"))
                       else None)
        except Exception as err:  # noqa: BLE001 - a truncated or foreign file: any load error means "recompute"
            problem = f"it does not load ({type(err).__name__}: {str(err).splitlines()[0][:120]})"
        if problem is not None:
            bad = path.with_suffix(".bad")
            os.replace(path, bad)
            warnings.warn(f"ignoring the cache file {path}: {problem}; moved to {bad.name}, recomputing",
                          RuntimeWarning, stacklevel=2)
            self.misses += 1
            return None
        self.hits += 1
        return stored["payload"]

    def save(self, key: str, payload: dict) -> None:
        """Write ``payload`` under ``key`` atomically (temp file in the same folder, then ``os.replace``)."""
        if not self.enabled:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{key[:16]}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save({"format": FORMAT, "key": key, "checksum": checksum(payload), "payload": payload}, f)
            os.replace(tmp, self.path(key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def cached(cache: Cache | None, key: str, compute: Callable[[], Any], pack: Callable[[Any], dict] = lambda x: x,
           unpack: Callable[[dict], Any] = lambda p: p) -> Any:
    """``unpack(cache.load(key))`` when the cache holds ``key``, else ``compute()``, stored as ``pack(value)``."""
    found = cache.load(key) if cache is not None else None
    if found is not None:
        return unpack(found)
    value = compute()
    if cache is not None:
        cache.save(key, pack(value))
    return value


def pack_run(run: Any) -> dict:
    """A ``TrainResult`` (``ifkit.optim.train``) as a cache payload: the final state_dict, every checkpoint's
    state_dict and learning rate, and the history as lists."""
    return {"state": run.model.state_dict(), "checkpoints": [{"state": s, "lr": lr} for s, lr in run.checkpoints],
            "history": {c: run.history[c].tolist() for c in run.history.columns}}


def unpack_run(payload: dict, model: torch.nn.Module) -> Any:
    """The ``TrainResult`` of ``pack_run``, with ``model`` (the untrained architecture) given its final weights."""
    import pandas as pd

    from ifkit.optim.train import TrainResult

    model.load_state_dict(payload["state"])
    return TrainResult(model, [(c["state"], c["lr"]) for c in payload["checkpoints"]], pd.DataFrame(payload["history"]))


__all__ = ["Cache", "cache_enabled", "cached", "checksum", "key_of", "pack_run", "unpack_run"]
