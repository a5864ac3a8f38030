"""Mutation fuzzing: damaged models give a GraphtapError, never another exception, never
touch the input, and never leave output behind.

GRAPHTAP_FUZZ_CASES sets the number of mutations (default 400, a few seconds).
"""

import os
import random
import shutil

import pytest
from conftest import tree_digest

import graphtap
from graphtap import errors
from graphtap.rewrite import protos

CASES = int(os.environ.get("GRAPHTAP_FUZZ_CASES", "400"))


def _pick(rng, repeated):
    return repeated[rng.randrange(len(repeated))] if len(repeated) else None


def _mutate_structure(rng, saved_model):
    """One structural change a broken exporter or a bad merge could make."""
    meta_graph = saved_model.meta_graphs[0]
    graph = meta_graph.graph_def
    function = _pick(rng, graph.library.function)
    node = _pick(rng, function.node_def) if function is not None else None
    kind = rng.randrange(9)
    if kind == 0 and len(graph.node):
        del graph.node[rng.randrange(len(graph.node))]
    elif kind == 1 and function is not None:
        graph.library.function.remove(function)
    elif kind == 2 and node is not None:
        node.name = _pick(rng, function.node_def).name  # duplicate node names
    elif kind == 3 and function is not None and function.ret:
        function.ret[next(iter(function.ret))] = "missing:output:0"
    elif kind == 4 and node is not None and node.input:
        node.input[0] = "nope:output:0"
    elif kind == 5:
        del meta_graph.meta_info_def.stripped_op_list.op[:]
    elif kind == 6 and node is not None:
        for name in list(node.attr):
            if rng.random() < 0.5:
                del node.attr[name]
    elif kind == 7:
        for signature in meta_graph.signature_def.values():
            for info in signature.outputs.values():
                info.name = "gone:0"
    elif kind == 8 and node is not None and len(graph.library.function) > 1:
        node.op = "StatefulPartitionedCall"  # a call cycle, or a call to the wrong function
        node.attr["f"].func.name = function.signature.name


def _mutate_bytes(rng, data):
    data = bytearray(data)
    if rng.random() < 0.3:
        return bytes(data[: rng.randrange(len(data))])
    for _ in range(rng.randint(1, 8)):
        data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


@pytest.mark.fuzz
def test_mutated_models_fail_cleanly(keras_cnn, tf1_builder, nested_module, keras_lstm, tmp_path):
    rng = random.Random(20261125)
    sources = [keras_cnn[0], tf1_builder[0], nested_module[0], keras_lstm[0]]
    originals = {s: open(os.path.join(s, "saved_model.pb"), "rb").read() for s in sources}
    outcomes = {"tapped": 0, "refused": 0}
    for case in range(CASES):
        source = rng.choice(sources)
        model = tmp_path / "in"
        shutil.rmtree(model, ignore_errors=True)
        shutil.copytree(source, model)
        if rng.random() < 0.7:
            saved_model = protos.SavedModel.FromString(originals[source])
            _mutate_structure(rng, saved_model)
            data = saved_model.SerializeToString()
        else:
            data = _mutate_bytes(rng, originals[source])
        (model / "saved_model.pb").write_bytes(data)
        before = tree_digest(model)
        out = tmp_path / "out" / "tapped"
        try:
            graphtap.list_targets(str(model))
            graphtap.tap(str(model), str(out), ops=["Relu", "MatMul", "BiasAdd"])
            outcomes["tapped"] += 1
            shutil.rmtree(out)
        except errors.GraphtapError:
            outcomes["refused"] += 1
        assert tree_digest(model) == before, f"case {case} modified its input"
        assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == [], case
    assert outcomes["refused"] > CASES // 10 and outcomes["tapped"] > CASES // 10, outcomes


@pytest.mark.fuzz
def test_mutated_graph_defs_fail_cleanly(frozen_graph, tmp_path):
    """The same for frozen GraphDefs, whose output is spliced from the input's bytes (and
    checked against the whole message: conftest sets GRAPHTAP_VERIFY_SPLICE)."""
    rng = random.Random(20261126)
    with open(frozen_graph[0], "rb") as f:
        original = f.read()
    outcomes = {"tapped": 0, "refused": 0}
    model, out = tmp_path / "frozen.pb", tmp_path / "out" / "tapped.pb"
    for case in range(CASES // 2):
        if rng.random() < 0.3:
            graph_def = protos.GraphDef.FromString(original)
            node = _pick(rng, graph_def.node)
            if rng.random() < 0.5:
                graph_def.node.remove(node)
            else:
                node.name = _pick(rng, graph_def.node).name
            data = graph_def.SerializeToString()
        else:
            data = _mutate_bytes(rng, original)
        model.write_bytes(data)
        try:
            graphtap.tap(str(model), str(out), ops=["Relu", "MatMul", "BiasAdd"])
            outcomes["tapped"] += 1
            out.unlink()
        except errors.GraphtapError:
            outcomes["refused"] += 1
        assert model.read_bytes() == data, f"case {case} modified its input"
        assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == [], case
    assert outcomes["refused"] > CASES // 20 and outcomes["tapped"] > CASES // 20, outcomes
