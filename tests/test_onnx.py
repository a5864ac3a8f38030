"""tf2onnx converts a tapped SavedModel with its taps, and onnxruntime computes them as
TensorFlow does (the tapped signature, itself checked against Keras in test_tap_tf2.py).

tf2onnx 1.17 has no Python entry point for a SavedModel (tf2onnx.convert offers from_keras,
from_function, from_graph_def and from_tflite), so these run its command line, as users do.
"""

import subprocess
import sys

import numpy as np
import pytest
from loaders import assert_close, run_tf2

import graphtap

pytest.importorskip("tf2onnx")
onnxruntime = pytest.importorskip("onnxruntime")

IMAGES = {"image": np.random.default_rng(11).standard_normal((2, 16, 16, 3)).astype("float32")}
TAPS = ["cnn_1/dense_1/Relu=hidden", "cnn_1/relu_1/Relu=aaa_relu"]


def tf2onnx_convert(model_dir, output, *args):
    result = subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--saved-model",
                             str(model_dir), "--output", str(output), *args],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def run_onnx(path, inputs):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(None, inputs)))


@pytest.fixture(scope="module")
def tapped(keras_cnn, tmp_path_factory):
    path, _ = keras_cnn
    out = str(tmp_path_factory.mktemp("onnx") / "tapped")
    graphtap.tap(path, out, names=TAPS)
    return out


@pytest.mark.compat("tf2onnx + onnxruntime")
def test_tf2onnx_signature_def_keeps_taps_with_tensorflows_values(tapped, tmp_path):
    """Largest difference seen: 1e-6 absolute, on the Relu tap."""
    tf2onnx_convert(tapped, tmp_path / "model.onnx", "--signature_def", "serving_default")
    expected = run_tf2(tapped, "serving_default", IMAGES)
    got = run_onnx(tmp_path / "model.onnx", IMAGES)
    assert sorted(got) == sorted(expected) == ["aaa_relu", "hidden", "output_0"]
    for key, value in got.items():
        assert value.shape == expected[key].shape, key
        assert_close(value, expected[key], rtol=1e-4, atol=1e-4)


@pytest.mark.compat("tf2onnx + onnxruntime")
def test_tf2onnx_without_signature_def_converts_serve_which_is_tapped_too(
        keras_cnn, tapped, tmp_path):
    """docs/compatibility.md, "Which signature a consumer reads": plain
    `tf2onnx.convert --saved-model` takes the first signature, `serve` on a Keras 3 export;
    the taps are there because `tap` taps `serve` too by default, and not when told to tap
    `serving_default` alone."""
    result = tf2onnx_convert(tapped, tmp_path / "serve.onnx")
    assert "using first signature: serve" in result.stderr
    expected = run_tf2(tapped, "serve", IMAGES)
    got = run_onnx(tmp_path / "serve.onnx", IMAGES)
    assert sorted(got) == sorted(expected) == ["aaa_relu", "hidden", "output_0"]
    for key, value in got.items():
        assert_close(value, expected[key], rtol=1e-4, atol=1e-4)

    only_default = str(tmp_path / "only_default")
    graphtap.tap(keras_cnn[0], only_default, names=TAPS, signatures=["serving_default"])
    tf2onnx_convert(only_default, tmp_path / "untapped_serve.onnx")
    assert sorted(run_onnx(tmp_path / "untapped_serve.onnx", IMAGES)) == ["output_0"]
