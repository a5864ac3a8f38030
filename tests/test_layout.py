"""The architecture, checked by reading the code: what never runs TensorFlow, no import
cycles, and a unit layer that is fast and imports no TensorFlow runtime."""

import ast
import re
import subprocess
import sys

import pytest
from conftest import ROOT, child_env

PACKAGE = ROOT / "graphtap"
# What runs models: imports numpy or TensorFlow. Reached from the rest only through
# graphtap.__init__'s lazy names and the command's run verbs (importlib, by name).
RUN_LAYER = {"dumping", "verification", "profiling", "runtime", "stats", "hook", "run_commands"}
FORBIDDEN = ("tensorflow", "numpy", "keras")


def _imports(module):
    """{graphtap module or outside top-level package} that `module` imports anywhere,
    inside functions too, and by importlib.import_module("graphtap.X")."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            if node.module == "graphtap":
                found.update(f"graphtap.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if re.fullmatch(r"graphtap\.\w+", node.value):
                found.add(node.value)
    return {name if not name.startswith("graphtap.") else name.split(".")[1]
            for name in found} - {"graphtap"}


def _graph():
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    return {m: {i for i in _imports(m) if i in modules} for m in modules}, modules


@pytest.mark.unit
def test_the_rewrite_layer_imports_neither_tensorflow_nor_numpy():
    graph, modules = _graph()
    for module in sorted(modules - RUN_LAYER):
        outside = {i.split(".")[0] for i in _imports(module)} & set(FORBIDDEN)
        assert not outside, f"graphtap/{module}.py imports {outside}"
        assert not (graph[module] & RUN_LAYER) or module in ("__init__", "cli"), \
            f"graphtap/{module}.py imports the run layer: {graph[module] & RUN_LAYER}"


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
