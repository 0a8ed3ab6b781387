"""pyproject.toml is the one dependency list: environment.yml, constraints.txt and the Makefile follow it."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
# PyPI name -> conda-forge name, where they differ.
CONDA_NAME = {"torch": "pytorch-cpu"}


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def _requirement_name(req: str) -> str:
    """'scikit-learn>=1.3; python_version<"3.12"' -> 'scikit-learn' (also drops extras: 'a[b]' -> 'a')."""
    return _norm(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req).group(1))


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _environment() -> tuple[list[str], set[str], list[str]]:
    """(channels, conda package names, pip lines) from environment.yml.

    A small parser for the flat layout this file uses, so the test needs no YAML library.
    """
    channels, conda, pip = [], set(), []
    section = None
    for line in (ROOT / "environment.yml").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line.startswith(" "):
            section = line.split(":")[0].strip()
            continue
        item = line.strip().removeprefix("- ").strip()
        if section == "channels":
            channels.append(item)
        elif section == "dependencies":
            if line.startswith("      - "):  # nested under "- pip:"
                pip.append(item)
            elif item != "pip:":
                conda.add(_norm(re.split(r"[=<>!\s]", item)[0]))
    return channels, conda, pip


def test_every_dependency_is_in_environment_yml():
    project = _pyproject()["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    _, conda, _ = _environment()
    missing = sorted(
        {CONDA_NAME.get(_requirement_name(r), _requirement_name(r)) for r in reqs} - conda,
    )
    assert not missing, f"environment.yml lacks {missing}: add them (conda-forge names) to keep it in step"


def test_environment_yml_layout():
    channels, conda, pip = _environment()
    assert channels == ["conda-forge"]
    assert {"python", "pytorch-cpu", "pip"} <= conda
    assert "torch" not in conda and "pytorch" not in conda  # the CPU build only
    assert re.search(r"^\s*- python=3\.11\s*$", (ROOT / "environment.yml").read_text(), re.MULTILINE)
    assert pip == ["-e .[notebooks,dev]"]


def test_parser_sees_nested_pip_section():
    _, conda, pip = _environment()
    assert "-e" not in conda and pip  # the pip line is not mistaken for a conda package


def test_constraints_pin_cpu_torch():
    pins = [ln.split("#")[0].strip() for ln in (ROOT / "constraints.txt").read_text().splitlines()]
    assert "torch==2.13.0" in pins


def test_console_script_points_to_cli_main():
    scripts = _pyproject()["project"]["scripts"]
    assert scripts["ifkit"] == "ifkit.cli:main"
    module, func = scripts["ifkit"].split(":")
    assert callable(getattr(importlib.import_module(module), func))


def test_makefile_installs_with_constraints():
    makefile = (ROOT / "Makefile").read_text()
    assert '-c constraints.txt -e ".[notebooks,dev]"' in makefile
    assert re.search(r"^\$\(STAMP\): pyproject\.toml constraints\.txt", makefile, re.MULTILINE)
