"""The architecture, checked by reading the code: what never runs TensorFlow, no import
cycles, and a unit layer that is fast and imports no TensorFlow runtime."""

import ast
import re
import subprocess
import sys

import pytest
from conftest import ROOT, child_env

PACKAGE = ROOT / "graphtap"
FORBIDDEN = ("tensorflow", "numpy", "keras")
# Modules outside graphtap.run that reach it, by name and on first use only: the package's
# lazy attributes, and the command's run verbs.
RUN_DOORS = {"graphtap", "graphtap.cli"}


def _modules():
    """{dotted name: path} of graphtap's modules (a package by its own name)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path, modules):
    """What the module at `path` imports anywhere, inside functions too, and by
    importlib name ("graphtap.run.commands"): graphtap modules by dotted name, others by
    their top-level package."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names = [f"graphtap.{node.value}"] if node.value.startswith("run.") else []
            names += [node.value] if re.fullmatch(r"graphtap(\.\w+)+", node.value) else []
        for name in names:
            found.add(name if name in modules else name.split(".")[0])
    return found - {"graphtap"} if path.name != "__init__.py" else found


def _graph():
    modules = _modules()
    return {m: {i for i in _imports(p, modules) if i in modules and i != m}
            for m, p in modules.items()}, modules


@pytest.mark.unit
def test_the_rewrite_layer_imports_neither_tensorflow_nor_numpy():
    graph, modules = _graph()
    for module, path in sorted(modules.items()):
        if module.startswith("graphtap.run"):
            continue
        outside = _imports(path, modules) & set(FORBIDDEN)
        assert not outside, f"{module} imports {outside}"
        run = {m for m in graph[module] if m.startswith("graphtap.run")}
        assert not run or module in RUN_DOORS, f"{module} imports the run layer: {run}"
    assert any(m.startswith("graphtap.run.") for m in graph["graphtap"])  # the check can fail


@pytest.mark.unit
def test_no_import_cycles():
    graph, _ = _graph()
    state = {}

    def visit(module, path):
        state[module] = "open"
        for other in sorted(graph[module]):
            assert state.get(other) != "open", " -> ".join([*path, module, other])
            if other not in state:
                visit(other, [*path, module])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_the_unit_layer_is_fast_and_imports_no_tensorflow_runtime():
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "pytest", "-m", "unit",
                             "-q", "-p", "no:cacheprovider", str(ROOT / "tests")],
                            capture_output=True, text=True, env=child_env(), cwd=ROOT,
                            timeout=120)
    assert result.returncode == 0, result.stdout[-2000:]
    passed = int(re.search(r"(\d+) passed", result.stdout)[1])
    seconds = float(re.search(r"passed.* in ([\d.]+)s", result.stdout)[1])
    assert passed >= 60 and seconds < 30, result.stdout.splitlines()[-1]
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert not {m for m in imported if m.startswith(("tensorflow.python", "keras"))}
