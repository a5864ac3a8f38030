"""End to end on TF1 SavedModels (SavedModelBuilder) and frozen GraphDefs.

References are session fetches of the tapped tensor in the original graph.
"""

import os

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from loaders import assert_bit_identical, run_tf1

import graphtap
from graphtap import errors

X = {"x": np.random.default_rng(3).standard_normal((4, 5)).astype("float32")}


def test_builder_model_taps_equal_original_tensors(tf1_builder, tmp_path):
    path, names = tf1_builder
    out = str(tmp_path / "tapped")
    report = graphtap.tap(path, out, names=["hidden/Relu", "top:1=top_index"], ops=["MatMul"])
    keys = {r.node if r.output == 0 else f"{r.node}:{r.output}": r.key for r in report.taps}
    assert keys["top:1"] == "top_index"
    original = run_tf1(path, "serving_default", X,
                       fetch_tensors=["hidden/Relu:0", "top:1", "MatMul:0", "logits:0"])
    tapped = run_tf1(out, "serving_default", X)
    assert_bit_identical(tapped, original, ["probs", "top_indices"])
    np.testing.assert_array_equal(tapped["top_index"], original["top:1"])
    np.testing.assert_array_equal(tapped[keys["hidden/Relu"]], original["hidden/Relu:0"])
    np.testing.assert_array_equal(tapped[keys["MatMul"]], original["MatMul:0"])
    np.testing.assert_array_equal(tapped[keys["logits"]], original["logits:0"])


def test_builder_model_other_meta_graph_by_tag_set(tf1_builder, tmp_path):
    path, _ = tf1_builder
    out = str(tmp_path / "tapped")
    graphtap.tap(path, out, names=["hidden/Relu=h"], tag_set="train")
    original = run_tf1(path, "train_probs", X, fetch_tensors=["hidden/Relu:0"], tags=["train"])
    tapped = run_tf1(out, "train_probs", X, tags=["train"])
    np.testing.assert_array_equal(tapped["h"], original["hidden/Relu:0"])
    # The `serve` meta graph was not the one asked for: it has no tap.
    assert "h" not in run_tf1(out, "serving_default", X)
    with pytest.raises(errors.UnknownSignature, match="no meta graph with tags gpu"):
        graphtap.tap(path, str(tmp_path / "other"), names=["hidden/Relu"], tag_set="gpu")


def test_builder_model_add_mode(tf1_builder, tmp_path):
    path, _ = tf1_builder
    out = str(tmp_path / "tapped")
    graphtap.tap(path, out, names=["hidden/Relu=h"], mode="add", tapped_signature="debug")
    original = run_tf1(path, "serving_default", X, fetch_tensors=["hidden/Relu:0"])
    assert sorted(run_tf1(out, "serving_default", X)) == ["probs", "top_indices"]
    debug = run_tf1(out, "debug", X)
    assert_bit_identical(debug, original, ["probs", "top_indices"])
    np.testing.assert_array_equal(debug["h"], original["hidden/Relu:0"])


def _run_graph_def(graph_def, fetches):
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as session:
        return session.run(fetches, {"x:0": X["x"]})


@pytest.mark.parametrize("suffix", [".pb", ".pbtxt"])
def test_frozen_graph_def(frozen_graph, tmp_path, suffix):
    path, _ = frozen_graph
    source = path if suffix == ".pb" else path + "txt"
    out = str(tmp_path / f"tapped{suffix}")
    report = graphtap.tap(source, out, names=["hidden/Relu", "top:1"])
    assert report.output_names == ["graphtap/hidden/Relu", "graphtap/top_1"]
    graph_def = tf.compat.v1.GraphDef()
    with open(out, "rb") as f:
        if suffix == ".pbtxt":
            text_format.Parse(f.read().decode(), graph_def)
        else:
            graph_def.ParseFromString(f.read())
    original = tf.compat.v1.GraphDef()
    with open(path, "rb") as f:
        original.ParseFromString(f.read())
    want = _run_graph_def(original, ["hidden/Relu:0", "top:1", "probs:0"])
    got = _run_graph_def(graph_def, [f"{name}:0" for name in report.output_names] + ["probs:0"])
    for a, b in zip(got, want):
        assert a.tobytes() == b.tobytes()
    # Only the Identity nodes were added; every original node is unchanged.
    assert len(graph_def.node) == len(original.node) + 2
    for before, after in zip(original.node, graph_def.node):
        assert before == after
    assert not os.path.exists(os.path.join(tmp_path, "tapped"))


def test_graph_def_with_function_library(tmp_path):
    """A GraphDef that keeps nested tf.functions as PartitionedCalls (not inlined)."""
    w = np.random.default_rng(4).standard_normal((5, 3)).astype("float32")

    @tf.function
    def inner(x):
        return tf.nn.relu(tf.matmul(x, w), name="act")

    @tf.function(input_signature=[tf.TensorSpec([None, 5], tf.float32, name="x")])
    def outer(x):
        return tf.identity(inner(x) * 2.0, name="result")

    graph_def = outer.get_concrete_function().graph.as_graph_def()
    assert len(graph_def.library.function) >= 1
    path = str(tmp_path / "graph.pb")
    with open(path, "wb") as f:
        f.write(graph_def.SerializeToString())
    out = str(tmp_path / "tapped.pb")
    report = graphtap.tap(path, out, names=["act"])
    assert report.output_names == ["graphtap/act"]
    tapped = tf.compat.v1.GraphDef()
    with open(out, "rb") as f:
        tapped.ParseFromString(f.read())
    act, result = _run_graph_def(tapped, ["graphtap/act:0", "result:0"])
    np.testing.assert_allclose(act, np.maximum(X["x"] @ w, 0), rtol=1e-5, atol=1e-6)
    (original,) = _run_graph_def(graph_def, ["result:0"])
    assert result.tobytes() == original.tobytes()


def test_taps_keep_their_tensors_device(tmp_path):
    """A TF1 graph pinned to devices: each Identity is placed where the tensor it reads is."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 5], name="x")
        with tf.device("/device:CPU:0"):
            hidden = tf.nn.relu(x * 3.0, name="hidden")
        tf.identity(hidden + 1.0, name="out")
    path, out = str(tmp_path / "pinned.pb"), str(tmp_path / "tapped.pb")
    with open(path, "wb") as f:
        f.write(graph.as_graph_def().SerializeToString())
    graphtap.tap(path, out, names=["hidden", "out"])
    tapped = tf.compat.v1.GraphDef()
    with open(out, "rb") as f:
        tapped.ParseFromString(f.read())
    devices = {node.name: node.device for node in tapped.node}
    assert devices["graphtap/hidden"] == devices["hidden"] == "/device:CPU:0"
    assert devices["graphtap/out"] == devices["out"] == ""
    (hidden_value,) = _run_graph_def(tapped, ["graphtap/hidden:0"])
    np.testing.assert_array_equal(hidden_value, np.maximum(X["x"] * 3.0, 0))
