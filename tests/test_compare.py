"""`graphtap compare`: where a converted or changed model starts to disagree, checked
against TensorFlow runs of both sides and numpy's norms."""

import importlib.util
import json
import logging
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import _load_make_testdata, child_env
from loaders import run_tf2, write_examples

import graphtap
from graphtap import errors

IMAGES = np.random.default_rng(3).standard_normal((24, 16, 16, 3)).astype("float32")
LAYERS = ["conv", "bn", "relu", "conv_res", "add", "pool", "dense", "probs"]
KEYS = LAYERS[:-1] + ["output_0"]  # probs's output is output_0 already: not tapped


def small_cnn(weights=None):
    """The keras_cnn architecture (every layer named, so two builds share their names)."""
    model = _load_make_testdata().cnn_architecture()
    if weights is not None:
        model.set_weights(weights)
    return model


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(tapped model, tapped model with conv_res's kernel x 1.01, that one untapped, root)."""
    root = tmp_path_factory.mktemp("compare")
    keras.utils.set_random_seed(5)
    first = small_cnn()
    weights = first.get_weights()
    bn = first.get_layer("bn")
    bn.moving_variance.assign(np.linspace(0.5, 2.0, 8).astype("float32"))
    weights = first.get_weights()
    second = small_cnn(weights)
    kernel = second.get_layer("conv_res").kernel
    kernel.assign(kernel.numpy() * 1.01)
    first.export(str(root / "a"), verbose=False)
    second.export(str(root / "b"), verbose=False)
    for name in ("a", "b"):
        graphtap.tap(str(root / name), str(root / f"{name}_tapped"), layers=LAYERS)
    return str(root / "a_tapped"), str(root / "b_tapped"), str(root / "b"), root


def rel_l2(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(a)


@pytest.mark.parametrize("other", [1, 2], ids=["tapped", "untapped"])
def test_scaled_kernel_diverges_first_at_its_layer(pair, other, tmp_path):
    """The layer whose kernel changed is the first divergence; every tap before it is
    bit-identical; the figures are numpy's on TensorFlow's values of both models. An
    untapped other model is tapped with the same tensor names first."""
    model, against = pair[0], pair[other]
    result = graphtap.compare(model, against, {"image": IMAGES}, str(tmp_path / "out"),
                              batch_size=5)
    assert result.first_divergence == "conv_res"
    keys = [t.key for t in result.taps]
    assert keys == KEYS  # graph order: the model's layer order
    assert result.missing == [] and result.examples == len(IMAGES)
    for tap in result.taps[:keys.index("conv_res")]:
        assert tap.max_abs == 0 and tap.within_tolerance, tap.key
    ours = run_tf2(model, "serving_default", {"image": IMAGES})
    theirs = run_tf2(pair[1], "serving_default", {"image": IMAGES})
    for tap in result.taps:
        a, b = ours[tap.key].astype(np.float64), theirs[tap.key].astype(np.float64)
        # float32 sums of each chunk (compare._Sums): within 1e-6 of float64's
        assert tap.rel_l2 == pytest.approx(rel_l2(a, b), rel=1e-6, abs=1e-15), tap.key
        assert tap.max_abs == pytest.approx(np.abs(a - b).max(), rel=1e-7), tap.key
        assert tap.mean_abs == pytest.approx(np.abs(a - b).mean(), rel=1e-6), tap.key
        cosine = (a.ravel() @ b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b))
        assert tap.cosine == pytest.approx(cosine, rel=1e-6), tap.key
    assert 1e-3 < result.taps[keys.index("conv_res")].rel_l2 < 0.02
    written = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert written["first_divergence"] == "conv_res"
    assert written["examples"] == len(IMAGES) and written["missing"] == []
    assert [t["key"] for t in written["taps"]] == keys
    assert [t["position"] for t in written["taps"]] == list(range(len(keys)))
    assert written["taps"][0]["sqnr_db"] is None  # infinite: identical
    assert set(written["taps"][0]) >= {"key", "position", "max_abs", "mean_abs", "rel_l2",
                                       "cosine", "sqnr_db", "within_tolerance"}


def test_tflite_float_agrees_with_every_tap(keras_cnn, tmp_path):
    tapped = str(tmp_path / "tapped")
    graphtap.tap(keras_cnn[0], tapped, ops=["Relu", "Conv2D", "BiasAdd", "AddV2"])
    result = graphtap.compare(tapped, "tflite", {"image": IMAGES}, batch_size=7)
    assert result.first_divergence is None and result.missing == []
    assert len(result.taps) == 13 and all(t.within_tolerance for t in result.taps)
    assert max(t.rel_l2 for t in result.taps) < 1e-5


def test_tflite_file_of_another_model_is_refused(keras_cnn, tmp_path):
    """The .tflite of a model that lacks the taps: one error, not a table of misses."""
    import tensorflow as tf

    tapped = str(tmp_path / "tapped")
    graphtap.tap(keras_cnn[0], tapped, ops=["Relu"])
    converter = tf.lite.TFLiteConverter.from_saved_model(keras_cnn[0])
    (tmp_path / "other.tflite").write_bytes(converter.convert())
    with pytest.raises(errors.BadArgument, match="none of the model's taps"):
        graphtap.compare(tapped, str(tmp_path / "other.tflite"), {"image": IMAGES})


def test_progress_is_logged_as_dump_logs_it(pair, caplog):
    """Away from a terminal, progress is a log line (a bar on a terminal, as dump)."""
    with caplog.at_level(logging.INFO, logger="absl"):
        graphtap.compare(pair[0], pair[1], {"image": IMAGES}, batch_size=10)
    assert any(re.fullmatch(r"graphtap compare: 24 examples in [0-9.]+ s", r.getMessage())
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="absl"):
        graphtap.compare(pair[0], pair[1], {"image": IMAGES}, progress=False)
    assert not any("graphtap compare" in r.getMessage() for r in caplog.records)


def test_partly_tapped_other_model_is_tapped_for_the_rest(pair, tmp_path):
    model, _, untapped, _ = pair
    partial = str(tmp_path / "partial")
    graphtap.tap(untapped, partial, layers=["conv", "relu"])
    result = graphtap.compare(model, partial, {"image": IMAGES})
    assert result.missing == [] and [t.key for t in result.taps] == KEYS
    assert result.first_divergence == "conv_res"


def test_taps_missing_in_a_converted_file_are_listed(pair, tmp_path):
    """A .tflite converted from the model tapped at fewer layers: the others are
    listed as missing, the rest compared."""
    import tensorflow as tf

    fewer = str(tmp_path / "fewer")
    graphtap.tap(pair[2], fewer, layers=["conv", "relu"])
    converter = tf.lite.TFLiteConverter.from_saved_model(fewer)
    (tmp_path / "fewer.tflite").write_bytes(converter.convert())
    result = graphtap.compare(pair[0], str(tmp_path / "fewer.tflite"), {"image": IMAGES})
    assert result.missing == sorted(set(LAYERS[:-1]) - {"conv", "relu"})
    assert [t.key for t in result.taps] == ["conv", "relu", "output_0"]
    assert result.taps[0].within_tolerance and result.taps[1].within_tolerance
    assert not result.taps[2].within_tolerance  # b's output: conv_res's kernel differs
    assert result.first_divergence == "output_0"


def cli(*args):
    return subprocess.run([sys.executable, "-m", "graphtap", "compare", *args],
                          capture_output=True, text=True, env=child_env(), timeout=300)


def test_cli_writes_compare_json_and_exits_1_on_divergence(pair, tmp_path):
    np.save(tmp_path / "images.npy", IMAGES)
    out = tmp_path / "out"
    result = cli(f"--model={pair[0]}", f"--against={pair[1]}",
                 f"--inputs=image={tmp_path / 'images.npy'}", f"--out={out}", "--batch_size=10")
    assert result.returncode == 1, result.stderr
    assert "first divergence: conv_res" in result.stdout
    assert json.loads((out / "compare.json").read_text())["first_divergence"] == "conv_res"
    # The plot is written where matplotlib is installed (CI installs the plot extra).
    has_matplotlib = importlib.util.find_spec("matplotlib") is not None
    assert (out / "compare.png").is_file() == has_matplotlib
    if has_matplotlib:
        assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("case", ["not_a_model", "another_model", "wrong_shape",
                                  "out_inside_model"])
def test_cli_bad_input_is_one_line_and_writes_nothing(pair, tmp_path, case):
    import tensorflow as tf

    np.save(tmp_path / "images.npy", IMAGES)
    np.save(tmp_path / "small.npy", IMAGES[:, :8, :8])
    (tmp_path / "junk.tflite").write_bytes(b"not a model at all")
    against, data, out = pair[1], tmp_path / "images.npy", tmp_path / "out"
    if case == "not_a_model":
        against = tmp_path / "junk.tflite"
    elif case == "another_model":  # converted from the untapped model: none of the taps
        against = tmp_path / "untapped.tflite"
        against.write_bytes(tf.lite.TFLiteConverter.from_saved_model(pair[2]).convert())
    elif case == "wrong_shape":
        data = tmp_path / "small.npy"
    else:
        out = os.path.join(pair[0], "cmp")
    result = cli(f"--model={pair[0]}", f"--against={against}", f"--inputs=image={data}",
                 f"--out={out}")
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("graphtap: error: ")
    assert {"not_a_model": "not a SavedModel directory, .tflite or .onnx model",
            "another_model": "has none of the model's taps",
            "wrong_shape": "has shape (8, 8, 3) per example",
            "out_inside_model": "output is the input or lies inside it"}[case] in last
    assert not os.path.exists(out)


def test_wrong_shape_is_bad_input_in_python(pair):
    with pytest.raises(errors.BadInput, match="shape"):
        graphtap.compare(pair[0], pair[1], {"image": IMAGES[:, :8]})


@pytest.mark.compat("tf2onnx + onnxruntime")
def test_onnx_agrees_within_1e_4(pair):
    pytest.importorskip("tf2onnx")
    pytest.importorskip("onnxruntime")
    result = graphtap.compare(pair[0], "onnx", {"image": IMAGES}, batch_size=8)
    assert [t.key for t in result.taps] == KEYS and result.missing == []
    assert result.first_divergence is None
    assert max(t.rel_l2 for t in result.taps) < 1e-4


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory):
    """(MobileNetV2 (weights=None, 96x96, alpha 0.35) with every Relu6 tapped, its
    input's name, 16 images)."""
    root = tmp_path_factory.mktemp("mobilenet")
    # In a child: a Keras application built here would take the layer names that the
    # session's mobilenet_v2 fixture expects (Keras numbers repeated names).
    subprocess.run([sys.executable, "-c", "import sys, keras; keras.applications.MobileNetV2("
                    "weights=None, input_shape=(96, 96, 3), alpha=0.35).export(sys.argv[1], "
                    "verbose=False)", str(root / "mobilenet")],
                   check=True, capture_output=True, env=child_env(), timeout=300)
    tapped = str(root / "tapped")
    graphtap.tap(str(root / "mobilenet"), tapped, ops=["Relu6"])
    (name,) = run_tf2_input_names(tapped)
    images = np.random.default_rng(4).uniform(-1, 1, (16, 96, 96, 3)).astype("float32")
    return tapped, name, images


def mobilenet_taps(mobilenet, against):
    tapped, name, images = mobilenet
    result = graphtap.compare(tapped, against, {name: images}, batch_size=8)
    taps = [t for t in result.taps if t.is_tap]
    assert len(taps) == 35 and result.missing == [] and result.examples == 16
    return result, taps


def thirds(taps):
    """Mean rel_l2 of the first and of the last third of the taps in graph order."""
    third = len(taps) // 3
    return (np.mean([t.rel_l2 for t in taps[:third]]),
            np.mean([t.rel_l2 for t in taps[-third:]]))


def test_mobilenet_against_float_tflite_agrees_at_every_tap(mobilenet):
    result, taps = mobilenet_taps(mobilenet, "tflite")
    assert result.first_divergence is None
    assert all(t.within_tolerance and t.rel_l2 < 1e-5 for t in result.taps)


@pytest.mark.compat("tf2onnx + onnxruntime")
def test_mobilenet_against_onnx_agrees_within_1e_4(mobilenet):
    pytest.importorskip("tf2onnx")
    pytest.importorskip("onnxruntime")
    result, taps = mobilenet_taps(mobilenet, "onnx")
    assert result.first_divergence is None
    assert max(t.rel_l2 for t in result.taps) < 1e-4


def test_mobilenet_dynamic_range_quantization_differs_where_weights_are_quantized(mobilenet):
    """Dynamic range quantization stores large kernels in int8 (small ones stay float):
    the early small convolutions agree to float rounding, the later ones differ by
    quantization error, which grows with depth, all within the quantized tolerance."""
    result, taps = mobilenet_taps(mobilenet, "tflite_dynamic")
    assert result.first_divergence is None and result.tolerance == 0.1
    assert taps[0].rel_l2 < 1e-5
    assert sum(t.rel_l2 > 1e-3 for t in taps) >= len(taps) // 2
    first, last = thirds(taps)
    assert last > first


def test_mobilenet_float16_weights_differ_by_float16_rounding(mobilenet):
    result, taps = mobilenet_taps(mobilenet, "tflite_float16")
    assert result.first_divergence is None
    # float16 keeps about 3 decimal digits: more than float32's rounding, far less than int8
    assert all(1e-5 < t.rel_l2 < 1e-2 for t in taps)


def test_mobilenet_int8_error_grows_with_depth(mobilenet):
    """Full-integer MobileNetV2: every tap differs, and more in the last third of the
    graph than in the first."""
    result, taps = mobilenet_taps(mobilenet, "tflite_int8")
    assert all(t.rel_l2 > 0 for t in taps)
    first, last = thirds(taps)
    assert last > first


def test_int8_calibrates_on_representative_data(pair, tmp_path):
    """int8 calibrated on data 100x smaller than what it runs on clips every activation:
    far larger errors than calibrating on the data itself. The CLI's --representative
    gives the same figures as the Python argument."""
    model = pair[0]
    own = graphtap.compare(model, "tflite_int8", {"image": IMAGES}, batch_size=8)
    shrunk = {"image": IMAGES * 0.01}
    skewed = graphtap.compare(model, "tflite_int8", {"image": IMAGES}, batch_size=8,
                              representative=shrunk)
    assert [t.key for t in own.taps] == [t.key for t in skewed.taps] == KEYS
    assert all(0 < t.rel_l2 for t in own.taps if t.is_tap)
    assert own.taps[-1].rel_l2 < 0.1  # calibrated on its own data: quantization error only
    assert skewed.taps[-1].rel_l2 > 3 * own.taps[-1].rel_l2
    np.save(tmp_path / "images.npy", IMAGES)
    np.save(tmp_path / "shrunk.npy", shrunk["image"])
    out = tmp_path / "out"
    result = cli(f"--model={model}", "--against=tflite_int8", f"--out={out}",
                 f"--inputs=image={tmp_path / 'images.npy'}", "--batch_size=8",
                 f"--representative=image={tmp_path / 'shrunk.npy'}")
    assert result.returncode in (0, 1), result.stderr
    written = json.loads((out / "compare.json").read_text())
    assert [t["rel_l2"] for t in written["taps"]] == pytest.approx(
        [t.rel_l2 for t in skewed.taps], rel=1e-6)


def test_tfrecord_data_gives_the_figures_of_the_same_arrays(pair, tmp_path):
    record = str(tmp_path / "images.tfrecord")
    write_examples(record, IMAGES)
    from_records = graphtap.compare(pair[0], pair[1], graphtap.TFRecord(record,
                                                                        {"image": "pixels"}),
                                    batch_size=10)
    from_arrays = graphtap.compare(pair[0], pair[1], {"image": IMAGES}, batch_size=10)
    assert from_records.examples == from_arrays.examples == len(IMAGES)
    assert from_records.first_divergence == "conv_res"
    assert [t.as_json() for t in from_records.taps] == [t.as_json() for t in from_arrays.taps]


def run_tf2_input_names(model_dir):
    import tensorflow as tf

    signature = tf.saved_model.load(model_dir).signatures["serving_default"]
    return list(signature.structured_input_signature[1])
