"""The package's layers import only downward, and no module reaches into another's private names.

Each module of ifkit/ belongs to a layer (LAYERS below, lowest first). A module may import modules of a lower
layer, and modules of its own layer only inside its own package (core may use core, but optim may not use
curvature). Checked twice: statically, on every import statement (including the ones inside functions), and
at run time, by importing each layer alone in a fresh interpreter and listing what got loaded.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import ifkit

ROOT = Path(ifkit.__file__).parent

# (rank, prefixes): a module's layer is the entry whose prefix matches its dotted name (longest prefix wins)
LAYERS: dict[str, int] = {
    "ifkit.core": 0,
    "ifkit.curvature": 1,
    "ifkit.optim": 1,
    "ifkit.data": 1,
    "ifkit.models": 1,
    "ifkit.metrics": 1,
    "ifkit.results": 1,
    "ifkit.modelfile": 1,  # save_model / load_model: files that run no code when loaded
    "ifkit.folders": 1,  # output folders checked before any work (stdlib only: a --jobs parent imports no torch)
    "ifkit.methods": 2,
    "ifkit.sharpness": 2,
    "ifkit.validation": 2,  # pure checks of options and data, refused with the fix before any work
    "ifkit.estimate": 2,  # the time a call would take, estimated before any work (budget_s)
    "ifkit.api": 3,
    "ifkit.diagnosis": 4,  # the trust report: scores through the api, plus sharpness and controls
    "ifkit.cleaning": 5,  # ifkit.clean: checkpoint choice + the trust report + flags + relabels
    "ifkit": 5,  # the package's __init__: lazy re-exports of the api, the trust report and clean
    "ifkit.experiments": 6,  # each returns a tidy DataFrame: no plotting
    "ifkit.exercises": 6,  # the tutorials' checked exercises: oracles from the library, answers in words
    "ifkit.viz": 7,  # figures read results and the experiments' constants
    "ifkit.widgets": 8,
    "ifkit.workers": 8,  # the command's worker processes and signals (stdlib only)
    "ifkit.bench": 9,
    "ifkit.cli": 9,
}


def layer_of(module: str) -> tuple[str, int]:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return best, LAYERS[best]


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names, line) for every import in the file, relative imports resolved."""
    mod = module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("ifkit")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("ifkit"):
                names = [a.name for a in node.names]
                # `from ifkit.x import y` where y is a submodule imports ifkit.x.y
                subs = [n for n in names if (ROOT.parent / (target + "." + n).replace(".", "/")).with_suffix(".py").exists()
                        or (ROOT.parent / (target + "." + n).replace(".", "/") / "__init__.py").exists()]
                out += [(target + "." + n, [], node.lineno) for n in subs]
                rest = [n for n in names if n not in subs]
                if rest:
                    out.append((target, rest, node.lineno))
    return out


FILES = sorted(ROOT.rglob("*.py"))


def test_every_module_has_a_layer():
    for path in FILES:
        name = module_name(path)
        assert any(name == p or name.startswith(p + ".") for p in LAYERS), f"{name} has no layer in LAYERS"


@pytest.mark.parametrize("path", FILES, ids=lambda p: module_name(p))
def test_imports_go_down(path: Path):
    me = module_name(path)
    my_layer, my_rank = layer_of(me)
    for target, names, line in imports_of(path):
        if target == "ifkit" and not names:
            continue  # `import ifkit`: the lazy front door, resolved on attribute access
        layer, rank = layer_of(target)
        if target == "ifkit" and set(names) <= {"__version__"}:
            continue
        ok = rank < my_rank or (rank == my_rank and layer == my_layer)
        if me == "ifkit":  # the package's __init__ re-exports the api layer and diagnose (lazily)
            ok = rank <= LAYERS["ifkit"]
        if target == "ifkit":  # `from ifkit import score`: the api layer
            ok = my_rank > LAYERS["ifkit"] or me == "ifkit"
        assert ok, (f"{me} (layer {my_layer}, rank {my_rank}) imports {target} {names} at line {line} "
                    f"(layer {layer}, rank {rank}): lower layers must not import higher ones")


@pytest.mark.parametrize("path", FILES, ids=lambda p: module_name(p))
def test_no_private_names_across_modules(path: Path):
    me = module_name(path)
    for target, names, line in imports_of(path):
        private = [n for n in names if n.startswith("_") and n != "__version__"]
        assert not private or target == me, f"{me} imports private {private} from {target} (line {line})"


RUNTIME_LAYERS = ["ifkit.core", "ifkit.curvature", "ifkit.optim", "ifkit.data", "ifkit.methods", "ifkit.api",
                  "ifkit.diagnosis", "ifkit.cleaning"]

# One interpreter imports torch (most of the start-up cost, and no ifkit module), then forks one fresh child per
# layer: each child's sys.modules holds no ifkit module until it imports its layer, as in a new interpreter.
_FORKED = """
import json, os, sys, traceback
import torch  # noqa: F401
assert not any(m.startswith("ifkit") for m in sys.modules)
out = {}
for layer, mods in json.loads(sys.argv[1]).items():
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            for m in mods:
                __import__(m)
            os.write(w, json.dumps(sorted(m for m in sys.modules if m.startswith("ifkit"))).encode())
            os._exit(0)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
    os.close(w)
    with os.fdopen(r) as f:
        data = f.read()
    assert os.waitpid(pid, 0)[1] == 0, f"importing {layer} failed"
    out[layer] = json.loads(data)
print(json.dumps(out))
"""


def _layer_modules(layer: str) -> list[str]:
    pkg = ROOT.parent / layer.replace(".", "/")
    return [module_name(p) for p in sorted(pkg.rglob("*.py"))] if pkg.is_dir() else [layer]


@pytest.fixture(scope="module")
def loaded_by_layer() -> dict[str, list[str]]:
    """{layer: the ifkit modules loaded by importing every module of that layer in a fresh interpreter}."""
    mods = {layer: _layer_modules(layer) for layer in RUNTIME_LAYERS}
    if hasattr(os, "fork"):
        run = subprocess.run([sys.executable, "-c", _FORKED, json.dumps(mods)], capture_output=True, text=True,
                             check=True, cwd=ROOT.parent)
        return json.loads(run.stdout)
    out = {}  # no fork (Windows): one interpreter per layer
    for layer, names in mods.items():
        code = ("import json, sys\n" + "".join(f"import {m}\n" for m in names)
                + "print(json.dumps(sorted(m for m in sys.modules if m.startswith('ifkit'))))")
        out[layer] = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                               check=True, cwd=ROOT.parent).stdout)
    return out


@pytest.mark.slow  # a fresh interpreter per layer
@pytest.mark.parametrize("layer", RUNTIME_LAYERS)
def test_each_layer_imports_alone(layer: str, loaded_by_layer):
    """Importing every module of a layer in a fresh interpreter loads nothing from a higher layer."""
    loaded = loaded_by_layer[layer]
    assert set(_layer_modules(layer)) <= set(loaded)  # the layer itself was imported
    rank = LAYERS[layer]
    above = [m for m in loaded if m != "ifkit" and layer_of(m)[1] > rank]
    assert not above, f"importing {layer} loaded higher layers: {above}"


def test_public_api_unchanged():
    assert callable(ifkit.score) and callable(ifkit.pairwise)
    assert ifkit.METHODS == ("loss", "graddot", "gradcos", "tracin", "if-exact", "if-cg", "if-lissa", "datainf",
                             "self-if", "gex", "ekfac", "vm", "fvm")
    assert ifkit.GradCache.__name__ == "GradCache"
    assert callable(ifkit.diagnose) and callable(ifkit.clean)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ifkit.nope  # noqa: B018


def test_no_module_is_too_long():
    """One idea per module: no file of ifkit/ over 440 lines, experiments/ included."""
    long = {module_name(p): n for p in FILES if (n := len(p.read_text().splitlines())) > 440}
    assert not long, f"modules over 440 lines: {long}"


OPTION_DICTS = {"opt", "opts", "options", "o", "defaults"}  # names an options dict went by


def _options_lookups(path: Path) -> list[str]:
    """`opt[...]`, `options[...]`, `x.opt[...]` subscripts and `.get(` on such names, with their lines."""
    def named(node: ast.AST) -> bool:
        return (isinstance(node, ast.Name) and node.id in OPTION_DICTS
                or isinstance(node, ast.Attribute) and node.attr in OPTION_DICTS)
    bad = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Subscript) and named(node.value):
            bad.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
              and named(node.func.value)):
            bad.append(f"line {node.lineno}: {ast.unparse(node)}")
    return bad


BELOW_API = [p for p in FILES if layer_of(module_name(p))[1] < LAYERS["ifkit.api"]]


@pytest.mark.parametrize("path", BELOW_API, ids=lambda p: module_name(p))
def test_no_options_dict_below_the_api(path: Path):
    """Below ifkit/api.py options are typed (core/options.py and each family's type): no dict lookups."""
    bad = _options_lookups(path)
    assert not bad, f"{module_name(path)} reads an options dict: {bad}; read the typed field (opt.name) instead"


def test_the_options_check_can_fail(tmp_path: Path):
    f = tmp_path / "m.py"
    f.write_text("def f(eng, opt, options):\n    return eng.opt['damping'], opt['x'], options.get('y', 1)\n")
    assert len(_options_lookups(f)) == 3
