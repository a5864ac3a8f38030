"""Grappler prunes what no output needs: taps must be outputs to survive, and they do,
under the default and an aggressive optimizer configuration."""

import numpy as np
import pytest
import tensorflow as tf
from loaders import assert_close, run_tf2
from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2

import graphtap
from graphtap.rewrite import model_io, protos
from graphtap.rewrite.index import TAP_PREFIX

X = np.random.default_rng(9).standard_normal((3, 4)).astype("float32")


class DeadBranch(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def __call__(self, x):
        tf.math.square(x, name="side")  # computed by nothing any output needs
        return {"output_0": tf.nn.relu(x, name="act")}


@pytest.fixture(scope="module")
def dead_branch(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("grappler") / "model")
    tf.saved_model.save(DeadBranch(), path)
    return path


def _aggressive_session_config():
    rewrite = rewriter_config_pb2.RewriterConfig(min_graph_nodes=-1)
    on = rewriter_config_pb2.RewriterConfig.ON
    for field in rewrite.DESCRIPTOR.fields:
        if field.enum_type is not None and field.enum_type.name == "Toggle":
            if "mixed_precision" not in field.name:  # those change numerics on purpose
                setattr(rewrite, field.name, on)
    return config_pb2.ConfigProto(graph_options=config_pb2.GraphOptions(rewrite_options=rewrite))


def _session_run(model_dir, keys, config=None):
    """Runs serving_default in a Session; returns outputs and the executed graphs' nodes."""
    graph = tf.Graph()
    with tf.compat.v1.Session(graph=graph, config=config) as session:
        meta_graph = tf.compat.v1.saved_model.load(session, ["serve"], model_dir)
        signature = meta_graph.signature_def["serving_default"]
        metadata = config_pb2.RunMetadata()
        values = session.run([signature.outputs[k].name for k in keys],
                             {signature.inputs["x"].name: X},
                             options=config_pb2.RunOptions(output_partition_graphs=True),
                             run_metadata=metadata)
    nodes = [n.name for g in metadata.partition_graphs for n in g.node]
    return dict(zip(keys, values)), nodes


def _ran(nodes, name):
    return any(n.split("/")[-1] == name for n in nodes)


@pytest.mark.compat("Grappler pruning (taps are outputs, so they stay)")
def test_an_identity_that_is_no_output_is_pruned(dead_branch, tmp_path):
    # Add an Identity of `side` the way a naive tool would: in the function, no output.
    model = model_io.read(dead_branch)
    meta_graph = model.proto.meta_graphs[0]
    function = next(f for f in meta_graph.graph_def.library.function
                    if any(n.name == "side" for n in f.node_def))
    identity = function.node_def.add()
    identity.name, identity.op = TAP_PREFIX + "side", "Identity"
    identity.input.append("side:y:0")
    identity.attr["T"].type = protos.dtype_enum("DT_FLOAT")
    naive = str(tmp_path / "naive")
    model_io.write_saved_model(model.proto, dead_branch, naive, {}, overwrite=False)
    _, nodes = _session_run(naive, ["output_0"])
    assert _ran(nodes, "act") and not _ran(nodes, "side")

    tapped = str(tmp_path / "tapped")
    graphtap.tap(dead_branch, tapped, names=["side"])
    outputs, nodes = _session_run(tapped, ["output_0", "side"])
    assert _ran(nodes, "side")
    assert_close(outputs["side"], X * X)


@pytest.mark.compat("Grappler, every optimizer on (TF2 and Session)")
def test_taps_survive_an_aggressive_optimizer(keras_cnn, tmp_path):
    path, model = keras_cnn
    out = str(tmp_path / "tapped")
    graphtap.tap(path, out, names=["cnn_1/dense_1/Relu=dense", "cnn_1/bn_1/batchnorm/add_1=bn"])
    images = {"image": np.random.default_rng(1).standard_normal((2, 16, 16, 3)).astype("float32")}
    reference = run_tf2(out, "serving_default", images)

    graph = tf.Graph()
    with tf.compat.v1.Session(graph=graph, config=_aggressive_session_config()) as session:
        meta_graph = tf.compat.v1.saved_model.load(session, ["serve"], out)
        signature = meta_graph.signature_def["serving_default"]
        keys = sorted(signature.outputs)
        values = session.run([signature.outputs[k].name for k in keys],
                             {signature.inputs["image"].name: images["image"]})
    for key, value in zip(keys, values):
        assert_close(value, reference[key], rtol=1e-4, atol=1e-5)

    options = tf.config.optimizer.get_experimental_options()
    names = ["layout_optimizer", "constant_folding", "shape_optimization", "remapping",
             "arithmetic_optimization", "dependency_optimization", "loop_optimization",
             "function_optimization", "debug_stripper", "scoped_allocator_optimization",
             "pin_to_host_optimization", "implementation_selector"]
    try:
        tf.config.optimizer.set_experimental_options(
            {**{name: True for name in names}, "disable_model_pruning": False,
             "min_graph_nodes": -1})
        aggressive = run_tf2(out, "serving_default", images)
    finally:
        tf.config.optimizer.set_experimental_options(options)
    assert sorted(aggressive) == ["bn", "dense", "output_0"]
    for key in aggressive:
        assert_close(aggressive[key], reference[key], rtol=1e-4, atol=1e-5)
