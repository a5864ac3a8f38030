"""Tools that consume SavedModels keep the taps, with the right values.

Each test converts or loads a tapped Keras CNN with another consumer and compares every
output against a direct call of the tapped signature (itself checked against Keras in
test_tap_tf2.py), and the original output against the original model.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from loaders import assert_bit_identical, assert_close, run_tf1, run_tf2

import graphtap

IMAGES = {"image": np.random.default_rng(11).standard_normal((2, 16, 16, 3)).astype("float32")}


@pytest.fixture(scope="module")
def tapped(keras_cnn, tmp_path_factory):
    path, _ = keras_cnn
    out = str(tmp_path_factory.mktemp("consumers") / "tapped")
    graphtap.tap(path, out, names=["cnn_1/dense_1/Relu=hidden", "cnn_1/relu_1/Relu=aaa_relu"])
    return path, out, run_tf2(out, "serving_default", IMAGES)


@pytest.mark.compat("tf.lite.TFLiteConverter.from_saved_model",
                    "tf.lite.Interpreter (signature runner)")
def test_tflite_converter_keeps_taps_as_signature_outputs(tapped):
    """Every tap and the original output, run by the TFLite interpreter, equal TensorFlow's
    run of the tapped SavedModel (largest difference seen: 1e-6 absolute, on the Relu
    tap)."""
    _, out, expected = tapped
    converter = tf.lite.TFLiteConverter.from_saved_model(out, signature_keys=["serving_default"])
    interpreter = tf.lite.Interpreter(model_content=converter.convert())
    runner = interpreter.get_signature_runner("serving_default")
    for i in range(2):  # the converted model takes a batch of one
        outputs = runner(image=IMAGES["image"][i:i + 1])
        assert sorted(outputs) == ["aaa_relu", "hidden", "output_0"]
        for key in outputs:
            assert_close(outputs[key][0], expected[key][i], rtol=1e-5, atol=1e-5)


@pytest.mark.compat("convert_variables_to_constants_v2")
def test_convert_variables_to_constants_v2_keeps_taps(tapped):
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    _, out, expected = tapped
    loaded = tf.saved_model.load(out)
    frozen = convert_variables_to_constants_v2(loaded.signatures["serving_default"])
    graph_def = frozen.graph.as_graph_def()
    assert not any(node.op in ("ReadVariableOp", "VarHandleOp") for node in graph_def.node)
    # Outputs come back flattened in sorted-key order.
    values = frozen(image=tf.constant(IMAGES["image"]))
    for key, value in zip(sorted(expected), values):
        assert_close(value.numpy(), expected[key])


@pytest.mark.compat("keras.layers.TFSMLayer")
def test_keras_tfsmlayer_returns_taps(tapped):
    _, out, expected = tapped
    layer = keras.layers.TFSMLayer(out, call_endpoint="serving_default")
    outputs = layer(IMAGES["image"])
    assert sorted(outputs) == ["aaa_relu", "hidden", "output_0"]
    for key, value in outputs.items():
        np.testing.assert_array_equal(np.asarray(value), expected[key])


def test_tf1_session_path_matches_tf2_path(tapped):
    path, out, expected = tapped
    by_session = run_tf1(out, "serving_default", IMAGES)
    for key, value in by_session.items():
        assert_close(value, expected[key])
    assert_bit_identical(by_session, run_tf1(path, "serving_default", IMAGES), ["output_0"])


@pytest.mark.compat("While loop outputs (Keras LSTM)")
def test_loop_output_of_keras_lstm(keras_lstm, tmp_path):
    """The While loop's own outputs are tappable: the LSTM layer's output, a slice of them."""
    path, model = keras_lstm
    out = str(tmp_path / "tapped")
    graphtap.tap(path, out, names=["rnn_1/lstm_1/strided_slice_3=lstm", "rnn_1/lstm_1/while:4"])
    sequences = np.random.default_rng(2).standard_normal((3, 5, 3)).astype("float32")
    reference = keras.Model(model.inputs, model.get_layer("lstm").output)([sequences])
    original = run_tf2(path, "serving_default", {"sequence": sequences})
    for run in (run_tf2, run_tf1):
        outputs = run(out, "serving_default", {"sequence": sequences})
        assert_bit_identical(outputs, original, ["output_0"])
        assert_close(outputs["lstm"], np.asarray(reference))
        assert outputs["rnn_1_lstm_1_while_4"].shape == (3, 4)


@pytest.mark.compat("If / Case outputs (tf.cond, tf.switch_case)")
def test_conditional_outputs(branchy, tmp_path):
    path, out = branchy[0], str(tmp_path / "tapped")
    report = graphtap.tap(path, out, names=["cond=chosen", "case/indexed_case=cased"])
    assert {r.op for r in report.taps} == {"StatelessIf", "StatelessCase"}
    x = np.random.default_rng(6).standard_normal((2, 4)).astype("float32")
    for sign in (1, -1):
        for k in range(3):
            inputs = {"x": sign * np.abs(x), "k": np.int32(k)}
            xs = inputs["x"]
            chosen = xs * 2 if xs.sum() > 0 else xs - 1
            cased = [xs + 1, xs * xs, -xs][k]
            original = run_tf2(path, "serving_default", inputs)
            for run in (run_tf2, run_tf1):
                outputs = run(out, "serving_default", inputs)
                assert_bit_identical(outputs, original, ["output_0"])
                assert_close(outputs["chosen"], chosen)
                assert_close(outputs["cased"], cased)
