"""Models from the field, checked in under testdata/field/ by tools/make_field_models.py
(tf_keras, keras-hub, tensorflow_text are not installed here): each tap is compared with
the value Keras itself computed when the model was made, and the original outputs with
the untapped model's, bit for bit."""

import json
import os
import pathlib

import numpy as np
import pytest
import tensorflow as tf
from loaders import assert_bit_identical, assert_close, run_tf1, run_tf2

import graphtap

FIELD = pathlib.Path(__file__).resolve().parents[1] / "testdata" / "field"


def _reference(name):
    """(inputs, original outputs, Keras' values) from the model's reference .npz."""
    with np.load(FIELD / f"{name}.npz") as data:
        arrays = {key: data[key] for key in data.files}

    def part(prefix):
        return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}

    return part("input/"), part("output/"), part("tap/"), arrays


def _model(name):
    return str(FIELD / name)


TF_KERAS = ["tfk_functional_keras", "tfk_functional_tf", "tfk_sequential_keras",
            "tfk_sequential_tf"]
OUTPUT_LAYER = {"tfk_functional": "predictions", "tfk_sequential": "logits"}


@pytest.mark.compat("tf_keras (model.save(save_format='tf'), tf.saved_model.save)")
@pytest.mark.parametrize("name", TF_KERAS)
def test_tf_keras_layers_equal_the_keras_submodel(name, tmp_path):
    """Every layer, the output layer included (ResNet50's `predictions` clash: the serving
    output is keyed after the layer); values equal tf_keras.Model(inputs, layer.output)."""
    inputs, outputs, reference, _ = _reference(name)
    output_layer = OUTPUT_LAYER[name.rsplit("_", 1)[0]]
    layers = list(reference)
    out = str(tmp_path / "tapped")
    report = graphtap.tap(_model(name), out, layers=layers)
    assert report.already_outputs == (("serving_default", output_layer, output_layer),)
    assert sorted(r.key for r in report.taps) == sorted(set(layers) - {output_layer})
    original = run_tf2(_model(name), "serving_default", inputs)
    assert_close(original[output_layer], outputs[output_layer])
    for run in (run_tf2, run_tf1):
        got = run(out, "serving_default", inputs)
        assert_bit_identical(got, original, [output_layer])
        for layer in layers:
            assert_close(got[layer], reference[layer], rtol=1e-5, atol=1e-6)


@pytest.mark.compat("tf.lite.TFLiteConverter.from_saved_model",
                    "tf.lite.Interpreter (signature runner)")
def test_tflite_interpreter_runs_the_layer_taps_of_a_tf_keras_model(tmp_path):
    """The tf_keras functional model tapped at every layer, converted to TFLite: the
    interpreter gives each tap and the output as TensorFlow's run of the tapped model does,
    and as Keras did (largest difference seen: 1e-6 absolute)."""
    inputs, _, reference, _ = _reference("tfk_functional_keras")
    out = str(tmp_path / "tapped")
    graphtap.tap(_model("tfk_functional_keras"), out, layers=list(reference))
    expected = run_tf2(out, "serving_default", inputs)
    converter = tf.lite.TFLiteConverter.from_saved_model(out, signature_keys=["serving_default"])
    interpreter = tf.lite.Interpreter(model_content=converter.convert())
    got = interpreter.get_signature_runner("serving_default")(**inputs)  # resizes the batch
    assert sorted(got) == sorted(expected) == sorted(reference)  # 6 taps and `predictions`
    for key, value in got.items():
        assert value.shape == expected[key].shape, key
        assert_close(value, expected[key], rtol=1e-5, atol=1e-5)
        assert_close(value, reference[key], rtol=1e-5, atol=1e-5)


def test_tf_keras_output_layer_alone_is_nothing_to_tap(tmp_path):
    with pytest.raises(graphtap.errors.NothingToTap, match="an output of the signature"):
        graphtap.tap(_model("tfk_functional_keras"), str(tmp_path / "out"),
                     layers=["predictions"])
    assert not os.path.exists(tmp_path / "out")


def test_layer_key_clashing_with_another_tensors_output_gets_a_suffix(tmp_path):
    """A tapped model whose output `conv2_add` is another tensor (conv1_relu): the layer
    conv2_add is tapped again under conv2_add_1."""
    inputs, _, reference, _ = _reference("tfk_functional_keras")
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    graphtap.tap(_model("tfk_functional_keras"), first,
                 names=["resnet_like/conv1_relu/Relu=conv2_add"])
    report = graphtap.tap(first, second, layers=["conv2_add"])
    assert [r.key for r in report.taps] == ["conv2_add_1"]
    got = run_tf2(second, "serving_default", inputs)
    assert_close(got["conv2_add"], reference["conv1_relu"])
    assert_close(got["conv2_add_1"], reference["conv2_add"])


def test_tf_keras_string_lookup_with_its_asset(tmp_path):
    """StringLookup reads its vocabulary from an asset file; a string layer is tapped too."""
    inputs, outputs, reference, _ = _reference("tfk_lookup")
    assert os.listdir(FIELD / "tfk_lookup" / "assets") == ["vocab.txt"]
    out = str(tmp_path / "tapped")
    graphtap.tap(_model("tfk_lookup"), out, layers=["lower", "lookup", "embedding", "pool"])
    assert os.path.isfile(os.path.join(out, "assets", "vocab.txt"))
    original = run_tf2(_model("tfk_lookup"), "serving_default", inputs)
    for run in (run_tf2, run_tf1):
        got = run(out, "serving_default", inputs)
        assert_bit_identical(got, original, ["score"])
        assert got["lower"].tolist() == reference["lower"].tolist()  # bytes, as Keras gave
        np.testing.assert_array_equal(got["lookup"], reference["lookup"])
        assert got["lookup"].tolist() == [[1, 3, 0], [4, 2, 1]]  # 0: out of vocabulary
        assert_close(got["pool"], reference["pool"])
    assert_close(original["score"], outputs["score"])


# Tensors inside the keras-hub transformer blocks, by name: the attention softmax (after
# its mask), both layer norms, the feed-forward layer's GELU. (BERT's feed-forward layer
# norm is its block's output, a layer tap already.)
NESTED = {
    "softmax": r"self_attention(_layer)?_1/softmax(_\d+)?_1/SelectV2_1",
    "self_attention_layer_norm": r"self_attention_layer_norm_1/add_2",
    "feedforward_layer_norm": r"feedforward_layer_norm_1/add_2",
    "feedforward_intermediate_dense": r"feedforward_intermediate_dense_1/Gelu/mul_3",
}
HUB = {"hub_bert": "bert_backbone_1", "hub_gpt2": "gpt2_backbone_1"}
ALREADY_OUTPUTS = {"hub_bert": {"transformer_layer_1", "pooled_dense"},  # sequence, pooled
                   "hub_gpt2": {"layer_norm"}}  # sequence_output


@pytest.mark.compat("keras-hub backbones (Keras 3 export)")
@pytest.mark.parametrize("name", list(HUB))
def test_keras_hub_layers_and_block_internals_equal_keras(name, tmp_path):
    inputs, outputs, reference, arrays = _reference(name)
    model = HUB[name]
    names, keys = {}, {}
    for block in (0, 1):
        for part, pattern in NESTED.items():
            if name == "hub_bert" and part == "feedforward_layer_norm":
                continue
            key = f"block{block}_{part}"
            names[f"{model}/transformer_layer_{block}_1/{pattern}"] = key
            keys[key] = f"transformer_layer_{block}/{part}"
    layers = [layer for layer in arrays["layers"].tolist() if layer != "embeddings_dropout"]
    out = str(tmp_path / "tapped")
    report = graphtap.tap(_model(name), out, layers=layers, names=names)
    already = {layer for _, layer, _ in report.already_outputs}
    assert already == ALREADY_OUTPUTS[name]
    original = run_tf2(_model(name), "serving_default", inputs)
    for key in outputs:
        assert_close(original[key], outputs[key], rtol=1e-5, atol=1e-5)
    for signature in ("serving_default", "serve"):
        got = run_tf2(out, signature, inputs)
        assert_bit_identical(got, original, list(original))
        for layer in set(layers) - already:
            assert_close(got[layer], reference[layer], rtol=1e-5, atol=1e-5)
        for key, ref in keys.items():
            assert_close(got[key], reference[ref], rtol=1e-5, atol=1e-5)
        if name == "hub_bert":
            assert_close(got["transformer_layer_0"],
                         reference["transformer_layer_0/feedforward_layer_norm"])
    got = run_tf1(out, "serving_default", inputs)
    assert_bit_identical(got, original, list(original))
    assert_close(got["block1_softmax"], reference["transformer_layer_1/softmax"])


def test_keras_hub_list_shows_the_layer_names_summary_prints():
    """BERT's `x[:, 0, :]` is the operation get_item in model.summary(); TensorFlow names
    its op strided_slice, with constants in a scope of that name."""
    _, _, _, arrays = _reference("hub_bert")
    summary = set(arrays["layers"].tolist())
    targets = graphtap.list_targets(_model("hub_bert"))
    listed = {c.layer for c in targets if c.layer}
    outputs = {c.layer: c.name for c in targets if c.layer_output}
    assert "strided_slice" not in listed
    assert listed <= summary
    # Dropout is the identity when serving: no op of its own.
    assert set(outputs) == summary - {"embeddings_dropout"}
    assert outputs["get_item"] == "bert_backbone_1/strided_slice"


def test_keras_3_export_taps_serve_and_serving_default(tmp_path):
    """Keras 3 export writes `serve` and `serving_default`, one function: both get the taps
    (tf2onnx converts `serve` by default), and the manifest says why."""
    inputs, _, reference, _ = _reference("hub_bert")
    out = str(tmp_path / "tapped")
    report = graphtap.tap(_model("hub_bert"), out, layers=["get_item"])
    assert report.same_function == {"serve": "serving_default"}
    assert [(r.signature, r.key) for r in report.taps] == [("serving_default", "get_item")]
    assert [(r.signature, r.key, r.same_function_as) for r in report.same_function_taps] == [
        ("serve", "get_item", "serving_default")]
    with open(os.path.join(out, "assets.extra", "graphtap.json")) as f:
        manifest = json.load(f)["taps"]
    assert {(t["signature"], t["same_function_as"]) for t in manifest} == {
        ("serving_default", None), ("serve", "serving_default")}
    for signature in ("serve", "serving_default"):
        for run in (run_tf2, run_tf1):
            assert_close(run(out, signature, inputs)["get_item"], reference["get_item"])
    only = str(tmp_path / "only")
    report = graphtap.tap(_model("hub_bert"), only, layers=["get_item"],
                          signatures="serving_default")
    assert report.same_function == {} and not report.same_function_taps
    assert "get_item" not in run_tf2(only, "serve", inputs)


def test_verify_makes_valid_index_inputs_and_takes_an_npz(tmp_path):
    """BERT's segment embedding has 2 rows: generated integer inputs must index it."""
    inputs, _, _, _ = _reference("hub_bert")
    out = str(tmp_path / "tapped")
    graphtap.tap(_model("hub_bert"), out, layers=["get_item"])
    from graphtap.run.verification import verify

    result = verify(_model("hub_bert"), out)
    assert result.ok, [c for c in result.checks if c.status != "match"]
    assert {(c.signature, c.key) for c in result.checks if c.is_tap} == {
        ("serve", "get_item"), ("serving_default", "get_item")}
    np.savez(tmp_path / "inputs.npz", **inputs)
    from conftest import child_env
    import subprocess
    import sys

    cli = subprocess.run([sys.executable, "-m", "graphtap", "verify",
                          f"--original={_model('hub_bert')}", f"--tapped={out}",
                          f"--inputs_npz={tmp_path / 'inputs.npz'}"],
                         capture_output=True, text=True, env=child_env(), timeout=300)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    # 2 signatures, 2 load paths, 3 outputs
    assert cli.stdout.splitlines()[-1] == "12 of 12 checks match"


def test_verify_names_a_generated_input_the_model_rejects(tmp_path):
    import tensorflow as tf

    class Positive(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.int32, name="count")])
        def __call__(self, count):
            with tf.control_dependencies([tf.debugging.assert_positive(count)]):
                return {"double": tf.identity(count * 2, name="double")}

    module = Positive()
    path, out = str(tmp_path / "model"), str(tmp_path / "tapped")
    tf.saved_model.save(module, path, signatures=module.__call__)
    graphtap.tap(path, out, ops=["Mul"])
    from graphtap.run.verification import verify

    with pytest.raises(graphtap.errors.GraphtapError,
                       match=r"rejects the generated input\(s\) count .*give real ones") as raised:
        verify(path, out)
    assert "\n" not in str(raised.value) and "--" not in str(raised.value)  # names no flag
    from graphtap import cli  # the command adds the flags that answer it

    assert "with --inputs or --inputs_npz" in str(cli._with_flag_hint(raised.value))
    assert verify(path, out, inputs={"count": np.array([1, 2], "int32")}).ok


def test_string_taps_verify_as_bytes_and_dump_counts_them(tmp_path):
    inputs, _, reference, _ = _reference("tfk_lookup")
    out = str(tmp_path / "tapped")
    graphtap.tap(_model("tfk_lookup"), out, layers=["lower", "lookup"])
    from graphtap.run.verification import verify

    result = verify(_model("tfk_lookup"), out, inputs=inputs)
    assert result.ok, [c for c in result.checks if c.status != "match"]
    assert sum(c.is_tap and c.key == "lower" for c in result.checks) == 2  # both load paths
    stats = graphtap.dump(out, inputs, str(tmp_path / "acts"), save="npz", progress=False)
    assert stats["lower"]["count"] == reference["lower"].size == 6
    assert stats["lower"]["mean"] is None and stats["lower"]["zero_fraction"] is None
    assert stats["lookup"]["count"] == 6 and stats["lookup"]["zero_fraction"] == 1 / 6
    assert not os.path.exists(tmp_path / "acts" / "lower.npz")
    assert os.path.exists(tmp_path / "acts" / "lookup.npz")
