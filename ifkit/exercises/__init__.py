"""Checked exercises for the tutorials: ``check(fn)`` runs your function on small cases and says what is wrong.

In a notebook::

    from ifkit.exercises import check

    def per_sample_grads(loss_one, theta, X, y):
        raise NotImplementedError      # your code here

    check(per_sample_grads)            # "not attempted yet", "✓ ... all 3 cases match" or what differs, in words

Each tutorial's exercises live in a module of their own (``nb01`` for notebook 01, ...); importing this package
registers them all. Reference answers are in ``notebooks/solutions/``, one file per notebook.
"""

from __future__ import annotations

import importlib
import pkgutil

from ifkit.exercises.checking import REGISTRY, Case, Exercise, Result, check, exercises_in

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name.startswith("nb")):
    importlib.import_module(f"{__name__}.{_mod}")

__all__ = ["REGISTRY", "Case", "Exercise", "Result", "check", "exercises_in"]
