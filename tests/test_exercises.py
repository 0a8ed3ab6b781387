"""Every exercise's checker accepts its reference answer and rejects plausible wrong answers, in words.

Reference answers: notebooks/solutions/NN_name.py (the files CI fills into the notebooks). Wrong answers:
tests/wrong_answers/nbNN.py, each with a phrase the checker's message must contain (the named difference).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from ifkit import exercises
from ifkit.exercises import REGISTRY, check

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = ROOT / "notebooks" / "solutions"


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"solutions_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _notebook(number: str) -> Path:
    (nb,) = sorted((ROOT / "notebooks").glob(f"{number}_*.ipynb"))
    return nb


def _reference(name: str):
    nb = _notebook(REGISTRY[name].notebook)
    return getattr(_load(SOLUTIONS / (nb.stem + ".py")), name)


def _wrong_answers() -> list[tuple[str, object, str]]:
    out = []
    for path in sorted((ROOT / "tests" / "wrong_answers").glob("nb*.py")):
        for name, answers in _load(path).WRONG.items():
            out += [(name, fn, phrase) for fn, phrase in answers]
    return out


def test_there_are_exercises_in_every_tutorial_01_to_07():
    per_nb = {n: len(exercises.exercises_in(n)) for n in ["01", "02", "03", "04", "05", "06", "07"]}
    assert all(2 <= k <= 4 for k in per_nb.values()), per_nb
    assert sum(per_nb.values()) >= 18


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_reference_answer_passes(name):
    result = check(_reference(name))
    assert result.passed, result.message
    assert result.message.startswith("✓")


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_stub_is_not_attempted(name):
    def stub(*args):
        raise NotImplementedError
    result = check(stub, name=name)
    assert result.status == "not attempted" and "not attempted yet" in result.message
    assert REGISTRY[name].task in result.message


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_an_exception_is_reported_in_words(name):
    def broken(*args):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (3x4 and 5x6)")
    result = check(broken, name=name)
    assert not result and "case 1 of" in result.message and "RuntimeError: mat1 and mat2" in result.message
    assert "Traceback" not in result.message and "Hint:" in result.message


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_exercise_has_at_least_two_wrong_answers(name):
    assert sum(n == name for n, _, _ in _wrong_answers()) >= 2


@pytest.mark.parametrize("name,fn,phrase", _wrong_answers(), ids=lambda x: x if isinstance(x, str) else "")
def test_wrong_answer_is_rejected_with_the_difference_named(name, fn, phrase):
    result = check(fn, name=name)
    assert not result.passed
    assert phrase in result.message, result.message


def test_strict_mode_raises(monkeypatch):
    monkeypatch.setenv("IFKIT_EXERCISES_STRICT", "1")
    name = sorted(REGISTRY)[0]

    def stub(*args):
        raise NotImplementedError
    with pytest.raises(AssertionError, match="not attempted yet"):
        check(stub, name=name)


def test_unknown_name_names_the_fix():
    with pytest.raises(ValueError, match="pass name="):
        check(lambda x: x)


def _exercise_cells(nb: Path) -> list[str]:
    cells = json.loads(nb.read_text())["cells"]
    return ["".join(c["source"]) for c in cells
            if c["cell_type"] == "code" and "exercise" in c.get("metadata", {}).get("tags", [])]


@pytest.mark.parametrize("number", ["01", "02", "03", "04", "05", "06", "07"])
def test_notebook_ships_stubs_for_its_exercises_and_checks_them(number):
    nb = _notebook(number)
    stubs = _exercise_cells(nb)
    names = {e.name for e in exercises.exercises_in(number)}
    text = nb.read_text()
    shipped = set()
    for src in stubs:
        assert "raise NotImplementedError" in src, src
        shipped |= {line.split("def ", 1)[1].split("(", 1)[0] for line in src.splitlines() if line.startswith("def ")}
    assert shipped == names, (shipped, names)
    for name in names:
        assert f"check({name}" in text, f"notebook {number} never calls check({name})"


def test_fill_solutions_replaces_every_stub(tmp_path, monkeypatch):
    fill = _load(ROOT / "scripts" / "fill_solutions.py")
    for number in ["01", "02", "03", "04", "05", "06", "07"]:
        out = fill.fill(_notebook(number))
        assert out is not None, number
        nb, names = out
        srcs = ["".join(c["source"]) for c in nb["cells"] if "exercise" in c.get("metadata", {}).get("tags", [])]
        assert srcs and not any("NotImplementedError" in s for s in srcs)


def test_result_renders_in_jupyter_with_the_same_words():
    name = sorted(REGISTRY)[0]

    def stub(*args):
        raise NotImplementedError
    result = check(stub, name=name)
    html = result._repr_html_()
    assert "not attempted yet" in html and html.startswith("<pre") and "#6e7781" in html
    assert "&lt;" not in repr(result)  # plain text stays plain
