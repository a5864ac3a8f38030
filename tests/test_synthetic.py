"""tools/make_synthetic.py: the benchmark's scaling models are real SavedModels that
graphtap taps correctly."""

import importlib.util

import graphtap
from graphtap.rewrite import protos

from conftest import ROOT


def _make_synthetic():
    script = ROOT / "tools" / "make_synthetic.py"
    spec = importlib.util.spec_from_file_location("make_synthetic", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_synthetic_model_has_its_size_and_taps_verify(tmp_path):
    source, out = str(tmp_path / "synthetic"), str(tmp_path / "tapped")
    activations = _make_synthetic().build(source, nodes=1000, fanout=3)

    with open(f"{source}/saved_model.pb", "rb") as f:
        graph = protos.SavedModel.FromString(f.read()).meta_graphs[0].graph_def
    nodes = len(graph.node) + sum(len(f.node_def) for f in graph.library.function)
    assert 800 <= nodes <= 1500, nodes
    report = graphtap.tap(source, out, ops=["Relu"])
    assert len(report.taps) == activations
    # signature wrapper, the signature lambda, top, middle and leaf function
    assert {len(r.call_path) for r in report.taps} == {5}

    result = graphtap.verify(source, out)
    assert result.ok, [c for c in result.checks if c.status != "match"]
    assert sum(c.is_tap for c in result.checks) == 2 * activations  # both load paths
