"""--tap_layer and the layer column of `list`: Keras layer names mapped to the tensors of
Keras 3 exports, checked against Keras sub-models of the same models."""

import numpy as np
import pytest
from loaders import assert_bit_identical, assert_close, run_tf1, run_tf2, submodel_outputs

import graphtap
from graphtap import errors
from graphtap.rewrite import protos

RNG = np.random.default_rng(21)
IMAGES = RNG.standard_normal((3, 16, 16, 3)).astype("float32")
SMALL_IMAGES = RNG.standard_normal((2, 32, 32, 3)).astype("float32")
SEQUENCES = RNG.standard_normal((3, 5, 3)).astype("float32")


def _input_name(model_dir):
    """The only input of the serving signature (Keras names it after its graph tensor)."""
    with open(f"{model_dir}/saved_model.pb", "rb") as f:
        meta_graph = protos.SavedModel.FromString(f.read()).meta_graphs[0]
    (name,) = meta_graph.signature_def["serving_default"].inputs
    return name


def _layer_value(outputs, report, layer):
    """A tapped layer's value; a layer whose output already is the signature's output
    is not tapped again (report.already_outputs names that output)."""
    already = {name: key for signature, name, key in report.already_outputs
               if signature == "serving_default"}
    return outputs[already.get(layer, layer)]


def _layer_names(model):
    return [layer.name for layer in model.layers if layer.__class__.__name__ != "InputLayer"]


@pytest.mark.parametrize("fixture", ["keras_cnn", "mobilenet_v2", "keras_lstm"])
def test_list_shows_every_layers_output(fixture, request):
    path, model = request.getfixturevalue(fixture)
    targets = graphtap.list_targets(path)
    outputs = {}
    for c in targets:
        if c.layer_output:
            outputs.setdefault(c.layer, []).append(c.name)
    assert set(outputs) == set(_layer_names(model))
    assert all(len(names) == 1 for names in outputs.values()), outputs
    assert {c.layer for c in targets if c.layer} == set(outputs)


def test_keras_cnn_layers_equal_keras_submodel_on_both_load_paths(keras_cnn, tmp_path):
    path, model = keras_cnn
    layers = _layer_names(model)
    out = str(tmp_path / "tapped")
    report = graphtap.tap(path, out, layers=layers)
    assert report.already_outputs == (("serving_default", "probs", "output_0"),
                                      ("serve", "probs", "output_0"))
    assert sorted(r.key for r in report.taps) == sorted(set(layers) - {"probs"})
    reference = submodel_outputs(model, layers, IMAGES)
    original = run_tf2(path, "serving_default", {"image": IMAGES})
    for run in (run_tf2, run_tf1):
        outputs = run(out, "serving_default", {"image": IMAGES})
        assert_bit_identical(outputs, original, ["output_0"])
        for layer in layers:
            assert_close(_layer_value(outputs, report, layer), reference[layer], rtol=1e-5,
                         atol=1e-5)


def test_mobilenet_v2_layers_equal_keras_submodel(mobilenet_v2, tmp_path):
    path, model = mobilenet_v2
    layers = ["Conv1", "bn_Conv1", "Conv1_relu", "block_1_pad", "block_2_add",
              "block_6_depthwise_BN", "out_relu", "global_average_pooling2d", "predictions"]
    assert set(layers) <= set(_layer_names(model))
    out = str(tmp_path / "tapped")
    report = graphtap.tap(path, out, layers=layers)
    outputs = run_tf2(out, "serving_default", {_input_name(path): SMALL_IMAGES})
    reference = submodel_outputs(model, layers, SMALL_IMAGES)
    for layer in layers:
        assert_close(_layer_value(outputs, report, layer), reference[layer], rtol=1e-4,
                     atol=1e-5)


def test_lstm_layer_output_is_the_last_step(keras_lstm, tmp_path):
    path, model = keras_lstm
    out = str(tmp_path / "tapped")
    report = graphtap.tap(path, out, layers=["lstm", "head"])
    outputs = run_tf2(out, "serving_default", {"sequence": SEQUENCES})
    reference = submodel_outputs(model, ["lstm", "head"], SEQUENCES)
    assert_close(outputs["lstm"], reference["lstm"])
    assert_close(_layer_value(outputs, report, "head"), reference["head"])


def test_layers_combine_with_names_and_exclude(keras_cnn, tmp_path):
    path, _ = keras_cnn
    report = graphtap.tap(path, str(tmp_path / "tapped"), layers=["dense", "bn"],
                          names=["cnn_1/relu_1/Relu"], exclude=[".*/dense_1/.*"])
    assert sorted(r.key for r in report.taps) == ["bn", "cnn_1_relu_1_Relu"]


def test_unknown_layer_error_lists_the_layers(keras_cnn, tmp_path):
    path, _ = keras_cnn
    with pytest.raises(errors.NoMatch) as raised:
        graphtap.tap(path, str(tmp_path / "tapped"), layers=["dense", "densse"])
    message = str(raised.value)
    assert "no Keras layer 'densse'" in message and path in message
    assert "add, bn, conv, conv_res, dense, pool, probs, relu" in message
    assert not (tmp_path / "tapped").exists()


def test_a_model_without_keras_layers_has_none(branchy, tmp_path):
    """tf.cond's `cond/mul/y` has three name components but no Keras layer scope."""
    path, _ = branchy
    assert not any(c.layer for c in graphtap.list_targets(path))
    with pytest.raises(errors.NoMatch, match=r"the layers are: none \(no Keras layer scopes"):
        graphtap.tap(path, str(tmp_path / "out"), layers=["mul"])


def test_keras_model_saved_with_tf_saved_model_save(tmp_path):
    """Keras 3 models saved by tf.saved_model.save (not model.export) name scopes alike."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(3)
    inputs = keras.Input((6,), name="x")
    hidden = keras.layers.Dense(5, activation="relu", name="hidden")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="logits")(hidden), name="mlp")
    path, out = str(tmp_path / "model"), str(tmp_path / "tapped")
    tf.saved_model.save(model, path)
    report = graphtap.tap(path, out, layers=["hidden", "logits"])
    x = RNG.standard_normal((4, 6)).astype("float32")
    reference = submodel_outputs(model, ["hidden", "logits"], x)
    # TF2 path only: a TF1 Session cannot restore this model's variables even untapped
    # (FailedPrecondition "Could not find variable logits/bias", tensorflow 2.21).
    original = run_tf2(path, "serving_default", {_input_name(path): x})
    outputs = run_tf2(out, "serving_default", {_input_name(path): x})
    assert_bit_identical(outputs, original, list(original))
    assert_close(outputs["hidden"], reference["hidden"])
    assert_close(_layer_value(outputs, report, "logits"), reference["logits"])
