"""Hostile inputs that used to hang graphtap or crash it (issue #15): each now gets a clear
graphtap error naming what is at fault, or is tapped as TensorFlow would load it."""

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from conftest import child_env
from loaders import run_tf2

import graphtap
from graphtap import errors
from graphtap.rewrite import protos, wire

MANIFEST = os.path.join("assets.extra", "graphtap.json")

# Python's re backtracks on this for ever on a name with no Z (every Keras name).
CATASTROPHIC = "([a-z_0-9/]+)+Z"

MANIFESTS = {
    "taps_a_string": '{"taps": "abc"}',
    "null": "null",
    "a_list": "[]",
    "taps_not_objects": '{"taps": [1, "x"]}',
    "a_list_of_numbers": "[1, 2]",
    "a_tap_without_key": '{"taps": [{"signature": "serving_default"}]}',
    "deep": "[" * 100000,
}


@pytest.fixture
def cnn_copy(keras_cnn, tmp_path):
    """A copy of the Keras CNN, to spoil."""
    copy = tmp_path / "model"
    shutil.copytree(keras_cnn[0], copy)
    return copy


def _with_manifest(model_dir, text):
    path = model_dir / MANIFEST
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return str(path)


# Item 14: a malformed manifest in the input.
@pytest.mark.parametrize("case", sorted(MANIFESTS))
def test_malformed_manifest_is_a_corrupt_model_naming_it(cnn_copy, tmp_path, case):
    from graphtap.run.verification import verify

    path = _with_manifest(cnn_copy, MANIFESTS[case])
    with pytest.raises(errors.CorruptModel, match="manifest") as tapping:
        graphtap.tap(str(cnn_copy), str(tmp_path / "out"), ops=["Relu"])
    with pytest.raises(errors.CorruptModel, match="manifest") as verifying:
        verify(str(cnn_copy), str(cnn_copy))
    assert tapping.value.where == verifying.value.where == path
    assert not os.path.exists(tmp_path / "out")


def test_dump_refuses_a_malformed_manifest(cnn_copy, tmp_path):
    path = _with_manifest(cnn_copy, MANIFESTS["deep"])
    images = np.zeros((2, 16, 16, 3), "float32")
    with pytest.raises(errors.CorruptModel, match="manifest") as dumping:
        graphtap.dump(str(cnn_copy), {"image": images}, str(tmp_path / "acts"), progress=False)
    assert dumping.value.where == path


def test_a_manifest_graphtap_wrote_is_read_back_and_extended(keras_cnn, tmp_path):
    from graphtap.rewrite import manifest

    once, twice = tmp_path / "once", tmp_path / "twice"
    graphtap.tap(keras_cnn[0], str(once), ops=["Softmax"])
    graphtap.tap(str(once), str(twice), names=[".*/dense_1/Relu"])
    taps = manifest.read(str(twice))
    assert [t["op"] for t in taps if t["signature"] == "serving_default"] == ["Softmax", "Relu"]
    assert manifest.read(str(keras_cnn[0])) is None


def graphtap_cli(*args):
    """The command line, given a minute: what hung before has no more."""
    return subprocess.run([sys.executable, "-m", "graphtap", *args], capture_output=True,
                          text=True, env=child_env(), timeout=60)


def _one_line_error(result, message):
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("graphtap: error: ") and len(result.stderr.splitlines()) == 1
    assert message in result.stderr, result.stderr


# Item 9: selector regexes are matched in linear time (RE2), with full-match semantics.
def test_a_catastrophic_regex_is_matched_at_once(keras_cnn, tmp_path):
    path, _ = keras_cnn
    out = str(tmp_path / "out")
    named = graphtap_cli("tap", f"--input={path}", f"--output={out}", f"--tap_name={CATASTROPHIC}")
    _one_line_error(named, f"name selector '{CATASTROPHIC}' matches no tappable tensor")
    excluded = graphtap_cli("tap", f"--input={path}", f"--output={out}", "--tap_op=Relu",
                            f"--exclude={CATASTROPHIC}")
    assert excluded.returncode == 0, excluded.stderr
    # 3 Relus, in serving_default and serve
    assert excluded.stdout.splitlines()[-1] == f"tapped 6 tensor(s) -> {out}"
    listed = graphtap_cli("list", f"--input={path}", f"--filter={CATASTROPHIC}")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == ["name", "op", "dtype", "shape", "layer", "function",
                                     "tappable"]


@pytest.mark.parametrize("pattern", ["(?=cnn_1/dense_1).*", "(?<!x)cnn_1/dense_1/Relu",
                                     r"(c)\1?nn_1/dense_1/Relu"])
def test_lookaround_and_backreferences_are_refused_naming_the_selector(keras_cnn, tmp_path,
                                                                       pattern):
    path, _ = keras_cnn
    for selectors in ({"names": [pattern]}, {"ops": ["Relu"], "exclude": [pattern]}):
        with pytest.raises(errors.NoMatch, match="invalid regex.*RE2") as refused:
            graphtap.tap(path, str(tmp_path / "out"), **selectors)
        assert refused.value.where == pattern
    listed = graphtap_cli("list", f"--input={path}", f"--filter={pattern}")
    _one_line_error(listed, "--filter: invalid regex")
    assert not os.path.exists(tmp_path / "out")


def test_selectors_still_full_match(keras_cnn):
    from graphtap.rewrite.selectors import RegexSet

    names = [c.name for c in graphtap.list_targets(keras_cnn[0])]
    patterns = ["cnn_1/dense_1/Relu", "cnn_1/dense_1", ".*Relu", "cnn_1/(conv|dense)_1/.*",
                ".*/Relu|StatefulPartitionedCall", "[^/]*", "cnn_1/dense_1/Rel", "(?i)CNN_1/.*"]
    found = RegexSet(patterns).matched([_Named(name) for name in names])
    for pattern, matched in zip(patterns, found):
        assert [c.name for c in matched] == [n for n in names if re.fullmatch(pattern, n)]
    assert [len(m) for m in found[:3]] == [1, 0, 3]


class _Named:
    def __init__(self, name):
        self.name = name


def test_ten_thousand_selectors_take_well_under_a_second(mobilenet_v2, tmp_path):
    path, _ = mobilenet_v2
    names = [c.name for c in graphtap.list_targets(path) if not c.blocked]
    patterns = [f"{re.escape(names[i % len(names)])}|unused_{i}" for i in range(10000)]
    start = time.perf_counter()
    report = graphtap.tap(path, str(tmp_path / "out"), names=patterns)
    seconds = time.perf_counter() - start
    assert len(report.taps) == len(names)
    assert seconds < 2.0  # 5.8 s with a Python regex per selector and name; 0.4 s with RE2


# Item 15: a text protobuf nested deeper than text_format recurses; a huge repetition.
def _nested_pbtxt(path, depth):
    """A GraphDef in text whose attr value nests functions `depth` deep (three messages
    each)."""
    path.write_text('node { name: "x" op: "Const" attr { key: "a" value { '
                    + 'func { name: "f" attr { key: "b" value { ' * depth
                    + "} } } " * depth + "} } }")
    return str(path)


def test_a_pbtxt_nested_too_deep_is_a_corrupt_model(tmp_path):
    shallow = _nested_pbtxt(tmp_path / "150.pbtxt", 150)  # too deep for Python's own limit
    listed = graphtap_cli("list", f"--input={shallow}")
    _one_line_error(listed, f"not a valid GraphDef protobuf: messages nested too deeply "
                            f"({shallow})")
    deep = _nested_pbtxt(tmp_path / "1000.pbtxt", 1000)  # and for TensorFlow's, here
    with pytest.raises(errors.CorruptModel, match="nested too deeply") as refused:
        graphtap.tap(deep, str(tmp_path / "out.pbtxt"), ops=["Const"])
    assert refused.value.where == deep


def test_a_huge_repetition_count_is_no_internal_error(keras_cnn, tmp_path):
    path, _ = keras_cnn
    result = graphtap_cli("tap", f"--input={path}", f"--output={tmp_path / 'out'}",
                          "--tap_name=a{99999999999}")
    _one_line_error(result, "name selector 'a{99999999999}' matches no tappable tensor")


class _Unstacks(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([2, 3], tf.float32, name="x")])
    def __call__(self, x):
        first, second = tf.unstack(x, num=2)
        return {"output_0": tf.nn.relu(first - second, name="act")}


def _limited_memory():
    """In the child: at most 4 GiB of address space, so that what used to allocate until
    memory ran out fails fast instead, and harms nothing else on the machine."""
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


# Item 10: an output count from an attr (an Unpack's `num`) is bounded.
@pytest.mark.parametrize("count", [2**40, (1 << 20) + 1, -1])
def test_an_absurd_output_count_is_a_corrupt_model_naming_the_node(tmp_path, count):
    model = str(tmp_path / "model")
    tf.saved_model.save(_Unstacks(), model)

    def claim(meta_graph):
        unpacks = [node for function in meta_graph.graph_def.library.function
                   for node in function.node_def if node.op == "Unpack"]
        assert len(unpacks) == 1
        unpacks[0].attr["num"].i = count
        return unpacks[0].name

    name = _edit_meta_graph(model, claim)
    for args in (("list",), ("tap", f"--output={tmp_path / 'out'}", "--tap_name=.*")):
        result = subprocess.run([sys.executable, "-m", "graphtap", *args, f"--input={model}"],
                                capture_output=True, text=True, env=child_env(), timeout=120,
                                preexec_fn=_limited_memory)
        _one_line_error(result, f"node '{name}' (Unpack) claims {count} outputs in attr 'num'")
    assert not os.path.exists(tmp_path / "out")


def _edit_meta_graph(model_dir, edit):
    """Applies `edit` to the meta graph of the SavedModel at `model_dir`; returns what it
    returns."""
    path = os.path.join(model_dir, "saved_model.pb")
    with open(path, "rb") as f:
        saved_model = protos.SavedModel.FromString(f.read())
    result = edit(saved_model.meta_graphs[0])
    with open(path, "wb") as f:
        f.write(saved_model.SerializeToString())
    return result


@tf.function
def _inner(x):
    return tf.nn.relu(x * 2.0, name="deepest")


class _Calls(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([3], tf.float32, name="x")])
    def __call__(self, x):
        return {"output_0": _inner(x) + 1.0}


def _nest(meta_graph, depth):
    """Puts `depth` functions between the signature's function and the one it calls, each
    calling the next by a PartitionedCall."""
    library = meta_graph.graph_def.library.function
    inner = next(f for f in library if f.signature.name.startswith("__inference__inner"))
    callers = [node for f in library for node in f.node_def
               if "Call" in node.op and node.attr["f"].func.name == inner.signature.name]
    callee = inner.signature.name
    for level in reversed(range(depth)):
        function = library.add()
        function.signature.CopyFrom(inner.signature)
        function.signature.name = f"graphtap_test_level_{level}"
        call = function.node_def.add(name="call", op="PartitionedCall",
                                     input=[inner.signature.input_arg[0].name])
        call.attr["f"].func.name = callee
        call.attr["Tin"].list.type.append(inner.signature.input_arg[0].type)
        call.attr["Tout"].list.type.append(inner.signature.output_arg[0].type)
        function.ret[inner.signature.output_arg[0].name] = "call:output:0"
        callee = function.signature.name
    for node in callers:
        node.attr["f"].func.name = callee


# Item 13: calls nested deeper than Python's recursion limit (1000 in the command line).
def test_a_tap_a_thousand_calls_deep_loads_and_is_right(tmp_path):
    model, out = str(tmp_path / "model"), str(tmp_path / "out")
    tf.saved_model.save(_Calls(), model)
    depth = 1000
    _edit_meta_graph(model, lambda meta_graph: _nest(meta_graph, depth))
    x = np.array([-1.0, 0.5, 2.0], "float32")
    assert np.array_equal(run_tf2(model, "serving_default", {"x": x})["output_0"],
                          np.maximum(x * 2, 0) + 1)  # TensorFlow runs it as it is

    listed = graphtap_cli("list", f"--input={model}", "--filter=deepest", "--format=json")
    tapped = graphtap_cli("tap", f"--input={model}", f"--output={out}",
                          "--tap_name=deepest=deepest")

    assert listed.returncode == 0, listed.stderr
    assert [row["name"] for row in json.loads(listed.stdout)] == ["deepest"]
    assert tapped.returncode == 0, tapped.stderr
    from graphtap.rewrite import manifest

    assert [len(t["call_path"]) for t in manifest.read(out)] == [depth + 3]
    outputs = run_tf2(out, "serving_default", {"x": x})
    assert np.array_equal(outputs["deepest"], np.maximum(x * 2, 0))
    assert np.array_equal(outputs["output_0"], np.maximum(x * 2, 0) + 1)


# Item 19: a FunctionDef whose signature comes in two records, which protobuf merges.
def test_a_function_whose_signature_comes_twice_is_read_as_protobuf_reads_it(keras_cnn,
                                                                             tmp_path):
    source, _ = keras_cnn
    with open(os.path.join(source, "saved_model.pb"), "rb") as f:
        saved_model = protos.SavedModel.FromString(f.read())
    meta_graph = saved_model.meta_graphs[0]
    graph = meta_graph.graph_def
    target = next(f for f in graph.library.function if any(n.op == "Relu" for n in f.node_def))
    rest = protos.FunctionDef()
    rest.CopyFrom(target)
    rest.ClearField("signature")
    split = (wire.length_delimited(1, protos.OpDef(name="decoy").SerializeToString())
             + rest.SerializeToString(deterministic=True)
             + wire.length_delimited(1, target.signature.SerializeToString(deterministic=True)))
    assert protos.FunctionDef.FromString(split) == target
    library = b"".join(wire.length_delimited(1, split if f is target else f.SerializeToString())
                       for f in graph.library.function)
    graph_bytes = (b"".join(wire.length_delimited(1, n.SerializeToString()) for n in graph.node)
                   + wire.length_delimited(2, library)
                   + wire.length_delimited(4, graph.versions.SerializeToString()))
    meta_graph.ClearField("graph_def")
    model = tmp_path / "model"
    shutil.copytree(source, model)
    (model / "saved_model.pb").write_bytes(
        protos.SavedModel(saved_model_schema_version=1).SerializeToString()
        + wire.length_delimited(2, meta_graph.SerializeToString() + wire.length_delimited(
            2, graph_bytes)))
    images = np.random.default_rng(0).random((2, 16, 16, 3), "float32")
    expected = run_tf2(source, "serving_default", {"image": images})["output_0"]
    assert np.array_equal(run_tf2(str(model), "serving_default", {"image": images})["output_0"],
                          expected)  # TensorFlow loads it

    listed = graphtap.list_targets(str(model))
    report = graphtap.tap(str(model), str(tmp_path / "out"), ops=["Relu"])

    assert [c.name for c in listed] == [c.name for c in graphtap.list_targets(source)]
    outputs = run_tf2(str(tmp_path / "out"), "serving_default", {"image": images})
    assert np.array_equal(outputs["output_0"], expected)
    assert sorted(outputs) == sorted(["output_0", *(t.key for t in report.taps)])
