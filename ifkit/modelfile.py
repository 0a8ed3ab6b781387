"""Model and data files that run no code when loaded: ``save_model`` / ``load_model`` / ``load_tensors``.

``torch.save(model, path)`` pickles the module, and unpickling a file can run any command it names (a crafted
``model.pt`` whose ``__reduce__`` returns ``os.system``). So the kit's files hold only plain data, read back
with ``torch.load(..., weights_only=True)`` (tensors, numbers, strings, lists, tuples and dicts; anything else
is refused before it runs):

    {"format": "ifkit.model/1", "module": "ifkit.models:MLP", "args": [64, [16], 10], "kwargs": {},
     "state_dict": {...}, "training": False}

``load_model`` imports the named class (it must be installed code and a ``torch.nn.Module`` subclass: a file
naming ``os:system`` is refused before anything is called), builds it from ``args``/``kwargs`` and loads the
state_dict with ``assign=True`` (the saved dtypes and devices are kept: a float64 model stays float64).

A whole pickled model or a data file with Python objects in it loads only with ``trust_pickle=True``
(``ifkit score-shards --trust-pickle``): that unpickles the file, which runs whatever code it contains, so it is
for files you made yourself. Cost: one torch.load plus building the module.
"""

from __future__ import annotations

import importlib
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMAT = "ifkit.model/1"
_SPEC = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


class UntrustedFileError(ValueError):
    """A file needs full unpickling (which runs code from it) and trust was not given."""


def save_model(model: nn.Module, path: str | Path, args: Sequence[Any] = (),
               kwargs: Mapping[str, Any] | None = None) -> None:
    """Save ``model`` as its class, constructor arguments and state_dict (plain data, no pickled code).

    Args:
        model: an instance of a class importable by name (defined in a module, not in ``__main__``/a notebook).
        path: the file to write (through a temp file + rename).
        args, kwargs: what rebuilds the module: ``type(model)(*args, **kwargs)`` must have the same parameters.

    Raises:
        ValueError: when the class cannot be imported by name, or ``args``/``kwargs`` build a module whose
            parameters differ from ``model``'s (checked here, by loading the file back).
    """
    cls = type(model)
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        raise ValueError(f"{cls.__qualname__} is defined in {cls.__module__} (a script, notebook or function): "
                         "move the class into an importable module so that a loader can find it by name")
    path = Path(path)
    blob = {"format": FORMAT, "module": f"{cls.__module__}:{cls.__qualname__}", "args": list(args),
            "kwargs": dict(kwargs or {}), "state_dict": model.state_dict(), "training": model.training}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(blob, tmp)
        load_model(tmp)  # the check a loader will make, done now: plain data, and the same parameters
        os.replace(tmp, path)
    except UntrustedFileError:
        tmp.unlink(missing_ok=True)
        raise ValueError("args and kwargs of save_model must be plain data (numbers, strings, lists, tuples, "
                         "dicts, tensors): a loader would have to run code to rebuild anything else") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_tensors(path: str | Path, trust_pickle: bool = False, map_location: Any = "cpu") -> Any:
    """``torch.load(path)`` of plain data only (weights_only=True); ``trust_pickle=True`` unpickles anything.

    Raises:
        UntrustedFileError: the file holds pickled Python objects (a whole model, a custom class, or a crafted
            payload) and ``trust_pickle`` is False; nothing from it has run.
    """
    if trust_pickle:
        return torch.load(path, weights_only=False, map_location=map_location)  # runs code from the file
    try:
        return torch.load(path, weights_only=True, map_location=map_location)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)|safe_globals\(\[([^\]]+)\]\)", str(err))
        if found is None:
            raise ValueError(f"{path} cannot be read by torch.load: not a file torch.save wrote, or damaged "
                             f"({str(err).strip().splitlines()[-1][:120]})") from None
        raise UntrustedFileError(
            f"{path} holds pickled Python objects ({found.group(1) or found.group(2)}), which torch.load would run "
            "code to rebuild; nothing from it was loaded. Save models with ifkit.save_model(model, path, "
            "args=..., kwargs=...) and data as a dict of tensors; if you made this file yourself and trust it, "
            "pass --trust-pickle (trust_pickle=True), which runs arbitrary code from the file") from None
    except (RuntimeError, EOFError) as err:  # a cut or garbled zip archive
        raise ValueError(f"{path} cannot be read by torch.load: damaged or not a torch.save file "
                         f"({str(err).strip().splitlines()[0][:120]})") from None


def load_model(path: str | Path, trust_pickle: bool = False, map_location: Any = "cpu") -> nn.Module:
    """The module saved by ``save_model`` (no code from the file runs); with ``trust_pickle=True`` also a whole
    pickled module (``torch.save(model, path)``), which runs code from the file."""
    blob = load_tensors(path, trust_pickle, map_location)
    if isinstance(blob, nn.Module) and trust_pickle:
        return blob
    if not (isinstance(blob, Mapping) and blob.get("format") == FORMAT):
        raise ValueError(f"{path} is not a model saved by ifkit.save_model (it holds a {type(blob).__name__}"
                         f"{' without format ' + repr(FORMAT) if isinstance(blob, Mapping) else ''}): save it "
                         "with ifkit.save_model(model, path, args=..., kwargs=...)")
    cls = _module_class(str(blob.get("module")), path)
    args, kwargs = blob.get("args", []), blob.get("kwargs", {})
    if not isinstance(args, (list, tuple)) or not isinstance(kwargs, Mapping):
        raise ValueError(f"{path}: args must be a list and kwargs a dict")
    model = cls(*args, **kwargs)
    try:
        model.load_state_dict(blob["state_dict"], strict=True, assign=True)
    except (RuntimeError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: {blob['module']}(*{list(args)}, **{dict(kwargs)}) does not match the saved "
                         f"parameters ({first}): pass the constructor arguments the model was built with") from None
    return model.train(bool(blob.get("training", False)))


def _module_class(spec: str, path: str | Path) -> type[nn.Module]:
    """The class named "package.module:Class", refused unless it is a torch.nn.Module subclass."""
    if not _SPEC.fullmatch(spec):
        raise ValueError(f"{path}: {spec!r} is not a class name of the form 'package.module:Class'")
    module, _, qualname = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"{path} names the model class {spec}, which cannot be imported here ({err}): install "
                         "the package that defines it") from None
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise UntrustedFileError(f"{path} names {spec}, which is not a torch.nn.Module class: refused (a model "
                                 "file names the class to build, never a function to call)")
    return obj


__all__ = ["FORMAT", "UntrustedFileError", "load_model", "load_tensors", "save_model"]
