"""The checking engine behind every exercise: run a learner's function on small cases, answer in plain words.

An exercise is a function the learner writes in a notebook (its cell starts as a stub that raises
``NotImplementedError``). ``check(fn)`` finds the exercise by the function's name, runs it on a few small random
cases, and compares each answer with the library's (or an exact oracle's). It never shows a traceback:

* the stub still raises ``NotImplementedError``  -> "not attempted yet";
* the function raises anything else              -> which case, the error's first line, a hint;
* the answer has the wrong shape                 -> expected vs got, and "transposed?" when it is;
* the answer matches a known mistake             -> that mistake, named (a sign flip, a missing damping term, ...);
* otherwise a wrong number                       -> the case, expected vs got at the worst entry, a hint.

Under ``IFKIT_EXERCISES_STRICT=1`` (the solutions run in CI) anything but a pass raises ``AssertionError``, so a
notebook filled with its reference answers fails loudly if an answer or a checker drifts.
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

STRICT_ENV = "IFKIT_EXERCISES_STRICT"


@dataclass
class Case:
    """One small problem: the arguments to call the learner's function with, and the right answer.

    ``wrong`` maps a plausible mistake, in words, to the answer that mistake would give on this case: when the
    learner's answer matches one of them, the message names it.
    """

    label: str
    args: tuple
    expected: Any
    wrong: dict[str, Any] = field(default_factory=dict)


@dataclass
class Exercise:
    """A checked exercise: its name (the function the learner writes), where it is, and how to check it."""

    name: str
    notebook: str
    task: str
    hint: str
    cases: Callable[[], list[Case]]
    rtol: float = 1e-5
    atol: float = 1e-7
    compare: Callable[[Any, Any, float, float], bool] | None = None  # default: same shape and allclose


@dataclass
class Result:
    """What ``check`` found. ``bool(result)`` is True only when every case passed."""

    exercise: str
    status: str  # "passed" | "not attempted" | "failed"
    message: str

    def __bool__(self) -> bool:
        return self.status == "passed"

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def attempted(self) -> bool:
        return self.status != "not attempted"

    def __repr__(self) -> str:
        return self.message

    def _repr_html_(self) -> str:
        """In Jupyter: the same words in a coloured box (green pass, grey not attempted, red wrong)."""
        colour = {"passed": "#1a7f37", "not attempted": "#6e7781", "failed": "#cf222e"}[self.status]
        text = html.escape(self.message)
        return (f'<pre style="border-left: 4px solid {colour}; padding: 4px 8px; margin: 0; '
                f'white-space: pre-wrap; color: {colour}">{text}</pre>')


REGISTRY: dict[str, Exercise] = {}


def register(exercise: Exercise) -> Exercise:
    if exercise.name in REGISTRY:
        raise ValueError(f"exercise {exercise.name!r} is registered twice")
    REGISTRY[exercise.name] = exercise
    return exercise


def _as_tensor(x: Any) -> Tensor | None:
    if isinstance(x, Tensor):
        return x.detach().to(torch.float64)
    if isinstance(x, bool):
        return torch.tensor(float(x), dtype=torch.float64)
    try:
        return torch.as_tensor(x, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        return None


def _shape(x: Tensor) -> str:
    return "a scalar" if x.dim() == 0 else f"shape {tuple(x.shape)}"


def same(got: Any, expected: Any, rtol: float, atol: float) -> bool:
    """True when ``got`` equals ``expected`` in shape and, within tolerance, in value."""
    g, e = _as_tensor(got), _as_tensor(expected)
    if g is None or e is None or g.shape != e.shape:
        return False
    return bool(torch.allclose(g, e, rtol=rtol, atol=atol, equal_nan=False))


def _short(x: Any) -> str:
    t = _as_tensor(x)
    if t is None:
        return f"a {type(x).__name__}"
    if t.dim() == 0:
        return f"{t.item():.6g}"
    return _shape(t)


def _explain(ex: Exercise, case: Case, got: Any, k: int, n: int) -> str:
    """Why ``got`` is not ``case.expected``: a known mistake, a shape, or the worst entry."""
    where = f"case {k} of {n} ({case.label})"
    cmp = ex.compare or same
    for mistake, answer in case.wrong.items():
        if cmp(got, answer, ex.rtol, ex.atol):
            return f"{where}: your answer matches a common mistake: {mistake}."
    g, e = _as_tensor(got), _as_tensor(case.expected)
    if g is None:
        return f"{where}: expected {_short(case.expected)}, got {_short(got)} ({type(got).__name__})."
    if e is not None and g.shape != e.shape:
        msg = f"{where}: expected {_shape(e)}, got {_shape(g)}."
        if g.dim() == 2 and g.T.shape == e.shape:
            msg += " It looks transposed: check which axis is which."
        elif g.numel() == e.numel():
            msg += " Same number of entries: check a reshape or a missing squeeze."
        return msg
    if e is None:
        return f"{where}: expected {_short(case.expected)}, got {_short(got)}."
    if not torch.isfinite(g).all():
        return f"{where}: your answer has NaN or inf entries."
    diff = (g - e).abs()
    i = int(diff.reshape(-1).argmax()) if diff.dim() else 0
    gi, ei = g.reshape(-1)[i].item(), e.reshape(-1)[i].item()
    at = "" if g.dim() == 0 else f" at entry {tuple(int(j) for j in torch.unravel_index(torch.tensor(i), g.shape))}"
    msg = f"{where}: expected {ei:.6g}, got {gi:.6g}{at} (largest difference {diff.max().item():.2g})."
    if abs(ei) > 0 and abs(gi) > 0 and e.norm() > 0:
        ratio = (g.reshape(-1) @ e.reshape(-1)) / (e.reshape(-1) @ e.reshape(-1))
        if torch.allclose(g, ratio * e, rtol=1e-4, atol=ex.atol) and abs(ratio.item() - 1) > 1e-3:
            msg += f" Your answer is the right one times {ratio.item():.4g}: a missing factor (a mean vs a sum?)."
    return msg


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def run(ex: Exercise, fn: Callable) -> Result:
    """Run ``fn`` on every case of ``ex``; a Result that says, in words, what happened."""
    try:
        cases = ex.cases()
    except Exception as e:  # a checker bug must not look like the learner's
        return Result(ex.name, "failed", f"{ex.name}: the checker itself failed to build its cases ({_first_line(e)}).")
    for k, case in enumerate(cases, start=1):
        args = tuple(a.clone() if isinstance(a, Tensor) else a for a in case.args)  # the learner may modify them
        try:
            got = fn(*args)
        except NotImplementedError:
            return Result(ex.name, "not attempted",
                          f"{ex.name}: not attempted yet. Replace `raise NotImplementedError` with your code, "
                          f"then run this cell again.\n  Task: {ex.task}")
        except Exception as e:
            return Result(ex.name, "failed", f"✗ {ex.name}, case {k} of {len(cases)} ({case.label}) raised "
                                              f"{_first_line(e)}\n  Hint: {ex.hint}")
        cmp = ex.compare or same
        if not cmp(got, case.expected, ex.rtol, ex.atol):
            return Result(ex.name, "failed", f"✗ {ex.name}, {_explain(ex, case, got, k, len(cases))}\n  Hint: {ex.hint}")
    return Result(ex.name, "passed", f"✓ {ex.name}: all {len(cases)} cases match ({'; '.join(c.label for c in cases)}).")


def check(fn: Callable, name: str | None = None) -> Result:
    """Check a learner's function against its exercise (found by the function's name, or by ``name=``).

    Prints nothing and never raises, except under ``IFKIT_EXERCISES_STRICT=1``, where anything but a pass is an
    ``AssertionError`` (used by CI's run of the notebooks with the reference solutions filled in).
    """
    key = name or getattr(fn, "__name__", "")
    if key not in REGISTRY:
        known = ", ".join(sorted(REGISTRY))
        raise ValueError(f"no exercise named {key!r}: pass name='...' (one of: {known})")
    result = run(REGISTRY[key], fn)
    if os.environ.get(STRICT_ENV, "0") != "0" and not result.passed:
        raise AssertionError(result.message)
    return result


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(g: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def labels(n: int, n_classes: int, g: torch.Generator) -> Tensor:
    return torch.randint(n_classes, (n,), generator=g)


def exercises_in(notebook: str) -> Sequence[Exercise]:
    return [ex for ex in REGISTRY.values() if ex.notebook == notebook]
