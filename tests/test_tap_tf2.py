"""End to end on TF2 SavedModels: Keras 3 exports and a tf.Module with nested functions.

Every test taps a real model, loads the result with `tf.saved_model.load` and in a TF1
Session, and checks tap values against an independent reference and the original outputs
bit for bit.
"""

import gc
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from loaders import assert_bit_identical, assert_close, run_tf1, run_tf2, submodel_outputs

import graphtap
from graphtap import errors
from graphtap.rewrite import protos
from graphtap.rewrite.index import call_target

RNG = np.random.default_rng(7)
IMAGES = {"image": RNG.standard_normal((3, 16, 16, 3)).astype("float32")}
VECTORS = {"x": RNG.standard_normal((5, 4)).astype("float32")}


def _meta_graph(model_dir):
    with open(os.path.join(model_dir, "saved_model.pb"), "rb") as f:
        return protos.SavedModel.FromString(f.read()).meta_graphs[0]


def _function_closure(meta_graph, root):
    """{name: serialized FunctionDef} for `root` and every function it calls."""
    functions = {f.signature.name: f for f in meta_graph.graph_def.library.function}
    found, stack = {}, [root]
    while stack:
        name = stack.pop()
        if name in found:
            continue
        found[name] = functions[name].SerializeToString(deterministic=True)
        stack.extend(filter(None, (call_target(n, functions) for n in functions[name].node_def)))
    return found


def _signature_function(meta_graph, key):
    call = meta_graph.signature_def[key].outputs
    node_name = next(iter(call.values())).name.split(":")[0]
    node = next(n for n in meta_graph.graph_def.node if n.name == node_name)
    return node.attr["f"].func.name


def assert_signature_untouched(original_dir, tapped_dir, key):
    before, after = _meta_graph(original_dir), _meta_graph(tapped_dir)
    assert before.signature_def[key].SerializeToString(deterministic=True) == \
        after.signature_def[key].SerializeToString(deterministic=True)
    root = _signature_function(before, key)
    assert _signature_function(after, key) == root
    assert _function_closure(before, root) == _function_closure(after, root)


@pytest.fixture(scope="module")
def cnn_tapped(keras_cnn, tmp_path_factory):
    path, model = keras_cnn
    out = str(tmp_path_factory.mktemp("cnn") / "tapped")
    report = graphtap.tap(path, out, names=["cnn_1/relu_1/Relu=relu", ".*/conv_res_1/Relu",
                                            "cnn_1/bn_1/batchnorm/add_1"], ops=["Softmax"],
                          signatures="serving_default")  # `serve` is left untouched
    return path, model, out, report


@pytest.mark.compat("tf.saved_model.load", "TF1 Session (TF Serving's path)")
def test_keras_cnn_taps_equal_keras_submodel_on_both_load_paths(cnn_tapped):
    path, model, out, report = cnn_tapped
    keys = {r.node: r.key for r in report.taps}
    assert keys["cnn_1/relu_1/Relu"] == "relu"
    reference = submodel_outputs(model, ["relu", "conv_res", "bn", "probs"], IMAGES["image"])
    original = run_tf2(path, "serving_default", IMAGES)
    for run in (run_tf2, run_tf1):
        tapped = run(out, "serving_default", IMAGES)
        assert sorted(tapped) == sorted(["output_0", *keys.values()])
        assert_bit_identical(tapped, original, ["output_0"])
        assert_close(tapped["relu"], reference["relu"])
        assert_close(tapped[keys["cnn_1/conv_res_1/Relu"]], reference["conv_res"])
        assert_close(tapped[keys["cnn_1/bn_1/batchnorm/add_1"]], reference["bn"])
        assert_close(tapped[keys["cnn_1/probs_1/Softmax"]], reference["probs"])


def test_keras_cnn_other_signature_and_objects_untouched(cnn_tapped):
    path, _, out, _ = cnn_tapped
    assert_signature_untouched(path, out, "serve")
    loaded = tf.saved_model.load(out)
    # The `serve` tf.function object still returns the model's single output.
    served = loaded.serve(tf.constant(IMAGES["image"]))
    expected = run_tf2(path, "serving_default", IMAGES)["output_0"]
    np.testing.assert_array_equal(served.numpy(), expected)


def test_signature_outputs_carry_dtype_and_static_shape(cnn_tapped):
    _, _, out, report = cnn_tapped
    outputs = _meta_graph(out).signature_def["serving_default"].outputs
    info = outputs["relu"]
    assert info.dtype == protos.dtype_enum("DT_FLOAT")
    assert [d.size for d in info.tensor_shape.dim] == [-1, 16, 16, 8]
    assert next(r for r in report.taps if r.key == "relu").shape == [-1, 16, 16, 8]


def test_manifest_lists_taps_and_fingerprint_is_not_stale(cnn_tapped):
    path, _, out, report = cnn_tapped
    with open(os.path.join(out, "assets.extra", "graphtap.json")) as f:
        manifest = json.load(f)["taps"]
    assert [t["key"] for t in manifest] == [r.key for r in report.taps]
    entry = next(t for t in manifest if t["key"] == "relu")
    assert entry["node"] == "cnn_1/relu_1/Relu" and entry["op"] == "Relu"
    assert entry["dtype"] == "float32" and entry["signature"] == "serving_default"
    assert os.path.exists(os.path.join(path, "fingerprint.pb"))
    assert not os.path.exists(os.path.join(out, "fingerprint.pb"))
    # Variables are carried over intact (hard-linked on this filesystem).
    for name in os.listdir(os.path.join(path, "variables")):
        a, b = os.path.join(path, "variables", name), os.path.join(out, "variables", name)
        with open(a, "rb") as fa, open(b, "rb") as fb:
            assert fa.read() == fb.read()


def test_tap_key_sorting_first_keeps_values_under_their_keys(keras_cnn, tmp_path):
    path, model = keras_cnn
    out = str(tmp_path / "tapped")
    graphtap.tap(path, out, names={"cnn_1/dense_1/Relu": "aaa_tap", "cnn_1/pool_1/Mean": "zzz"})
    reference = submodel_outputs(model, ["dense", "pool"], IMAGES["image"])
    original = run_tf2(path, "serving_default", IMAGES)
    signature = _meta_graph(out).signature_def["serving_default"]
    # output_0 moved from position 0 to 1 so that sorted keys match positions.
    assert signature.outputs["output_0"].name.endswith(":1")
    for run in (run_tf2, run_tf1):
        tapped = run(out, "serving_default", IMAGES)
        assert_bit_identical(tapped, original, ["output_0"])
        assert_close(tapped["aaa_tap"], reference["dense"])
        assert_close(tapped["zzz"], reference["pool"])


def test_add_mode_leaves_signatures_untouched(keras_cnn, tmp_path):
    path, model = keras_cnn
    out = str(tmp_path / "tapped")
    report = graphtap.tap(path, out, names=["cnn_1/dense_1/Relu=dense"], mode="add")
    assert {r.signature for r in report.taps} == {"serving_default_tapped"}
    for key in ("serving_default", "serve"):
        assert_signature_untouched(path, out, key)
    original = run_tf2(path, "serving_default", IMAGES)
    reference = submodel_outputs(model, ["dense"], IMAGES["image"])
    for run in (run_tf2, run_tf1):
        assert_bit_identical(run(out, "serving_default", IMAGES), original, ["output_0"])
        tapped = run(out, "serving_default_tapped", IMAGES)
        assert sorted(tapped) == ["dense", "output_0"]
        assert_bit_identical(tapped, original, ["output_0"])
        assert_close(tapped["dense"], reference["dense"])


def test_retapping_does_not_duplicate(keras_cnn, tmp_path):
    path, _ = keras_cnn
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    graphtap.tap(path, first, names=["cnn_1/dense_1/Relu"], signatures="serving_default")
    with pytest.raises(errors.NothingToTap):
        graphtap.tap(first, second, names=["cnn_1/dense_1/Relu"])
    assert not os.path.exists(second)
    report = graphtap.tap(first, second, ops=["Relu"], signatures="serving_default")
    assert "cnn_1/dense_1/Relu" in report.already_tapped
    assert {r.node for r in report.taps} == {"cnn_1/relu_1/Relu", "cnn_1/conv_res_1/Relu"}
    outputs = run_tf1(second, "serving_default", IMAGES)
    assert sorted(outputs) == ["cnn_1_conv_res_1_Relu", "cnn_1_dense_1_Relu",
                               "cnn_1_relu_1_Relu", "output_0"]
    with open(os.path.join(second, "assets.extra", "graphtap.json")) as f:
        assert len(json.load(f)["taps"]) == 3


def test_mobilenet_v2_every_relu6(mobilenet_v2, tmp_path):
    path, model = mobilenet_v2
    out = str(tmp_path / "tapped")
    report = graphtap.tap(path, out, ops=["Relu6"])
    assert len(report.taps) == 35  # every ReLU6 activation layer of MobileNetV2
    images = {"input_layer": RNG.standard_normal((2, 32, 32, 3)).astype("float32")}
    signature = _meta_graph(path).signature_def["serving_default"]
    images = {next(iter(signature.inputs)): images["input_layer"]}
    original = run_tf2(path, "serving_default", images)
    layers = ["Conv1_relu", "block_6_expand_relu", "out_relu"]
    reference = submodel_outputs(model, layers, next(iter(images.values())))
    by_layer = {layer: next(r.key for r in report.taps if f"/{layer}_1/" in r.node)
                for layer in layers}
    for run in (run_tf2, run_tf1):
        tapped = run(out, "serving_default", images)
        assert len(tapped) == 36
        assert_bit_identical(tapped, original, ["output_0"])
        for layer in layers:
            assert_close(tapped[by_layer[layer]], reference[layer], rtol=1e-4, atol=1e-5)


def _nested_reference(module, x):
    w1 = module.w1.numpy()
    first = np.maximum(x @ w1, 0)
    second = np.maximum((x * 2) @ w1, 0)
    return first, second, first + second


def test_function_called_twice_yields_one_tap_per_call_path(nested_module, tmp_path):
    path, module = nested_module
    out = str(tmp_path / "tapped")
    report = graphtap.tap(path, out, names=["act", "mix=aaa_mix"])
    keys = sorted(r.key for r in report.taps)
    assert keys == ["aaa_mix", "act__StatefulPartitionedCall", "act__StatefulPartitionedCall_1"]
    first, second, mix = _nested_reference(module, VECTORS["x"])
    original = run_tf2(path, "serving_default", VECTORS)
    for run in (run_tf2, run_tf1):
        tapped = run(out, "serving_default", VECTORS)
        assert_bit_identical(tapped, original, ["output_0", "logits"])
        assert_close(tapped["act__StatefulPartitionedCall"], first)
        assert_close(tapped["act__StatefulPartitionedCall_1"], second)
        assert_close(tapped["aaa_mix"], mix)
    # `hidden` shares `middle` and `inner` with the tapped signature: untouched.
    assert_signature_untouched(path, out, "hidden")
    loaded = tf.saved_model.load(out)
    assert_close(loaded.signatures["hidden"](x=tf.constant(VECTORS["x"]))["hidden"].numpy(), mix)
    assert_close(loaded.middle(tf.constant(VECTORS["x"])).numpy(), mix)


def test_tapping_two_signatures_that_share_functions(nested_module, tmp_path):
    path, module = nested_module
    out = str(tmp_path / "tapped")
    graphtap.tap(path, out, names=["mix"], signatures=["serving_default", "hidden"])
    _, _, mix = _nested_reference(module, VECTORS["x"])
    for run in (run_tf2, run_tf1):
        assert_close(run(out, "serving_default", VECTORS)["mix"], mix)
        hidden = run(out, "hidden", VECTORS)
        assert_close(hidden["mix"], mix)
        assert_close(hidden["hidden"], mix)


def test_export_hook_keras_and_module(keras_cnn, nested_module, tmp_path):
    _, model = keras_cnn
    report = graphtap.export(model, str(tmp_path / "keras"), names=["cnn_1/dense_1/Relu=dense"])
    assert [r.key for r in report.taps] == ["dense"]
    reference = submodel_outputs(model, ["dense"], IMAGES["image"])
    assert_close(run_tf2(str(tmp_path / "keras"), "serving_default", IMAGES)["dense"],
                 reference["dense"])
    _, module = nested_module
    graphtap.export(module, str(tmp_path / "module"), names=["mix"],
                    signatures={"serving_default": module.__call__})
    _, _, mix = _nested_reference(module, VECTORS["x"])
    assert_close(run_tf1(str(tmp_path / "module"), "serving_default", VECTORS)["mix"], mix)
    assert sorted(os.listdir(tmp_path)) == ["keras", "module"]  # no staging left behind


def test_tapping_every_tensor(keras_cnn, tmp_path):
    """`.*` selects every tensor the signature computes inside its functions (not the
    outer graph's inputs and call outputs, which the TF2 loader cannot return)."""
    path, model = keras_cnn
    out = str(tmp_path / "tapped")
    report = graphtap.tap(path, out, names=[".*"])
    assert len(report.taps) > 40
    assert all(r.call_path for r in report.taps)
    original = run_tf2(path, "serving_default", IMAGES)
    by_tf2 = run_tf2(out, "serving_default", IMAGES)
    by_tf1 = run_tf1(out, "serving_default", IMAGES)
    assert sorted(by_tf2) == sorted(by_tf1) == sorted(["output_0", *(r.key for r in report.taps)])
    assert_bit_identical(by_tf2, original, ["output_0"])
    assert_bit_identical(by_tf1, original, ["output_0"])
    dense = next(r.key for r in report.taps if r.node == "cnn_1/dense_1/Relu")
    assert_close(by_tf1[dense], submodel_outputs(model, ["dense"], IMAGES["image"])["dense"])


def test_fusion_warnings_name_taps_that_break_a_grappler_fusion(keras_cnn, tmp_path):
    path, _ = keras_cnn
    report = graphtap.tap(path, str(tmp_path / "middle"),
                          names=["cnn_1/conv_res_1/(convolution|BiasAdd|Relu)"])
    assert len(report.warnings) == 2
    assert report.warnings[0].startswith(
        "tap 'cnn_1_conv_res_1_convolution' is inside a Conv2D+BiasAdd+Relu chain")
    assert "'cnn_1_conv_res_1_BiasAdd'" in report.warnings[1]
    assert all("tapping 'cnn_1/conv_res_1/Relu' instead keeps it" in w for w in report.warnings)
    # The chains' last ops, and ops in no chain, cost nothing.
    report = graphtap.tap(path, str(tmp_path / "ends"), ops=["Relu", "Softmax", "AddV2"])
    assert report.warnings == ()


@pytest.mark.parametrize("model, options", [
    ("keras_cnn", {"ops": ["Relu"]}),
    ("nested_module", {"names": ["act", "mix"]}),  # clones functions
    ("while_module", {"names": ["while/step"], "loop": "stack"}),  # copies a loop's body
])
def test_a_tap_leaves_no_reference_cycles(request, model, options, tmp_path):
    """What a tap builds is freed when it returns. A cycle through the index would keep
    the whole parsed model alive until the next collection, which in a long-lived process
    (an export hook) walks everything else the process holds as well."""
    path, _ = request.getfixturevalue(model)
    graphtap.tap(path, str(tmp_path / "warm"), **options)  # first use makes what is cached
    gc.collect()
    gc.disable()
    try:
        graphtap.tap(path, str(tmp_path / "out"), **options)
        assert gc.collect() == 0
    finally:
        gc.enable()
