"""`graphtap compare` against a hostile user: files that are not what they claim (a FIFO
as the other model, inside a model or as data), arguments out of range, representative
data that does not fit, NaN data, models with int and string outputs, existing outputs,
Ctrl-C. Each bad input is one line and status 2 with nothing written at --out; nothing
hangs; compare.json stays valid JSON."""

import json
import os
import shutil
import signal
import subprocess
import sys
import warnings

import numpy as np
import pytest
from conftest import child_env

import graphtap
from graphtap import errors

IMAGES = np.random.default_rng(7).standard_normal((6, 16, 16, 3)).astype("float32")
TIMEOUT = 120  # a hang fails the test instead of the run


@pytest.fixture(scope="module")
def models(keras_cnn, tmp_path_factory):
    """{name: path}: the CNN tapped, untapped; a tf.Module with a float, an int and a
    string output, tapped; the same with two signatures; data files."""
    import tensorflow as tf

    root = tmp_path_factory.mktemp("hostile")
    tapped = str(root / "cnn_tapped")
    graphtap.tap(keras_cnn[0], tapped, layers=["conv", "relu", "dense"])

    class Mixed(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(tf.ones((4, 4)))

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def f(self, x):
            h = tf.nn.relu(tf.matmul(x, self.w), name="hid")
            total = tf.reduce_sum(h, 1)
            return {"y": h * 2.0, "n": tf.cast(total, tf.int32),
                    "s": tf.strings.as_string(total)}

    module = Mixed()
    tf.saved_model.save(module, str(root / "mixed"), signatures={"serving_default": module.f})
    tf.saved_model.save(module, str(root / "two"), signatures={"a": module.f, "b": module.f})
    graphtap.tap(str(root / "mixed"), str(root / "mixed_tapped"), ops=["Relu"])
    graphtap.tap(str(root / "two"), str(root / "two_tapped"), ops=["Relu"],
                 signatures=["a", "b"])
    np.save(root / "images.npy", IMAGES)
    with_nan = IMAGES.copy()
    with_nan[0, 0, 0, 0], with_nan[1, 1, 1, 1] = np.nan, np.inf
    np.save(root / "nan.npy", with_nan)
    np.save(root / "x.npy", np.random.default_rng(8).standard_normal((5, 4)).astype("float32"))
    converted = tf.lite.TFLiteConverter.from_saved_model(tapped).convert()
    (root / "half.tflite").write_bytes(converted[:len(converted) // 2])
    (root / "empty.tflite").write_bytes(b"")
    (root / "junk.onnx").write_bytes(np.random.default_rng(9).bytes(3000))
    os.mkdir(root / "not_a_model")
    (root / "not_a_model" / "README").write_text("hello")
    os.mkfifo(root / "fifo.tflite")
    os.mkfifo(root / "fifo.npy")
    holding = root / "holding_fifo"  # a tapped model whose variables' data is a FIFO
    shutil.copytree(tapped, holding)
    (data,) = (holding / "variables").glob("variables.data-*")
    data.unlink()
    os.mkfifo(data)
    return {"tapped": tapped, "untapped": keras_cnn[0], "mixed": str(root / "mixed"),
            "mixed_tapped": str(root / "mixed_tapped"), "two_tapped": str(root / "two_tapped"),
            "root": root}


def cli(*args):
    return subprocess.run([sys.executable, "-m", "graphtap", "compare", *args],
                          capture_output=True, text=True, env=child_env(), timeout=TIMEOUT)


# Cases that hung or named the wrong cause: run as the command, with a timeout.
CLI_CASES = {
    "against_fifo": (["--against={root}/fifo.tflite"], "not a regular file", "fifo.tflite"),
    "against_holds_fifo": (["--against={root}/holding_fifo"], "not a regular file",
                           "variables.data-"),
    "model_holds_fifo": (["--model={root}/holding_fifo", "--against=tflite"],
                         "not a regular file", "variables.data-"),
    "inputs_fifo": (["--against=tflite", "--inputs=image={root}/fifo.npy"],
                    "not a regular file", "fifo.npy"),
    "representative_fifo": (["--against=tflite_int8",
                             "--representative=image={root}/fifo.npy"],
                            "not a regular file", "fifo.npy"),
    "rtol_nan": (["--against=tflite", "--rtol=nan"], "rtol must be a finite number", ""),
    "representative_wrong_shape": (["--against=tflite_int8",
                                    "--representative=image={root}/x.npy"],
                                   "representative data: input 'image' has shape (4,)",
                                   "x.npy"),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_bad_input_is_one_line_exit_2_nothing_written(models, case):
    flags, message, where = CLI_CASES[case]
    root = models["root"]
    out = root / f"out_{case}"
    flags = [flag.format(root=root) for flag in flags]
    given = {flag.split("=")[0] for flag in flags}
    defaults = [f"--model={models['tapped']}", f"--inputs=image={root}/images.npy"]
    args = [flag for flag in defaults if flag.split("=")[0] not in given] + flags
    result = cli(*args, f"--out={out}")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("graphtap: error: ") and message in last and where in last, last
    assert not out.exists()
    assert not list(root.glob(".graphtap-*"))


def api_case(models, case):
    """(model, against, data, keyword arguments) of a Python API case."""
    root, tapped, images = models["root"], models["tapped"], {"image": IMAGES}
    return {
        "not_a_saved_model": (tapped, str(root / "not_a_model"), images, {}),
        "empty_file": (tapped, str(root / "empty.tflite"), images, {}),
        "junk_onnx": (tapped, str(root / "junk.onnx"), images, {}),
        "truncated_tflite": (tapped, str(root / "half.tflite"), images, {}),
        "untapped_model": (models["untapped"], "tflite", images, {}),
        "two_signatures": (models["two_tapped"], "tflite", {"x": np.ones((2, 4), "f")}, {}),
        "batch_size_0": (tapped, "tflite", images, {"batch_size": 0}),
        "batch_size_negative": (tapped, "tflite", images, {"batch_size": -2}),
        "batch_size_fraction": (tapped, "tflite", images, {"batch_size": 2.5}),
        "max_examples_0": (tapped, "tflite", images, {"max_examples": 0}),
        "max_examples_negative": (tapped, "tflite", images, {"max_examples": -1}),
        "rtol_negative": (tapped, "tflite", images, {"rtol": -1.0}),
        "rtol_nan": (tapped, "tflite", images, {"rtol": float("nan")}),
        "rtol_inf": (tapped, "tflite", images, {"rtol": float("inf")}),
        "rtol_string": (tapped, "tflite", images, {"rtol": "0.1"}),
        "max_rel_l2_nan": (tapped, "tflite_dynamic", images, {"max_rel_l2": float("nan")}),
        "representative_not_int8": (tapped, "tflite", images, {"representative": images}),
        "representative_unknown_input": (tapped, "tflite_int8", images,
                                         {"representative": {"nope": IMAGES}}),
        "representative_wrong_shape": (tapped, "tflite_int8", images,
                                       {"representative": {"image": IMAGES[:, :8]}}),
        "representative_empty": (tapped, "tflite_int8", images,
                                 {"representative": {"image": IMAGES[:0]}}),
        "out_is_against": (tapped, models["untapped"], images,
                           {"out_dir": models["untapped"]}),
        "out_inside_against": (tapped, models["untapped"], images,
                               {"out_dir": os.path.join(models["untapped"], "cmp")}),
    }[case]


API_ERRORS = {
    "not_a_saved_model": (errors.NotAModel, "no saved_model.pb"),
    "empty_file": (errors.NotAModel, "not a SavedModel directory, .tflite or .onnx"),
    "junk_onnx": (errors.NotAModel, "onnxruntime cannot load it"),
    "truncated_tflite": (errors.NotAModel, "TFLite cannot run it"),
    "untapped_model": (errors.BadArgument, "the model has no taps"),
    "two_signatures": (errors.UnknownSignature, "choose a signature"),
    "batch_size_0": (errors.BadArgument, "batch_size must be a whole number >= 1"),
    "batch_size_negative": (errors.BadArgument, "batch_size must be a whole number >= 1"),
    "batch_size_fraction": (errors.BadArgument, "batch_size must be a whole number >= 1"),
    "max_examples_0": (errors.BadArgument, "max_examples must be a whole number >= 1"),
    "max_examples_negative": (errors.BadArgument, "max_examples must be a whole number >= 1"),
    "rtol_negative": (errors.BadArgument, "rtol must be a finite number >= 0"),
    "rtol_nan": (errors.BadArgument, "rtol must be a finite number >= 0"),
    "rtol_inf": (errors.BadArgument, "rtol must be a finite number >= 0"),
    "rtol_string": (errors.BadArgument, "rtol must be a finite number >= 0"),
    "max_rel_l2_nan": (errors.BadArgument, "max_rel_l2 must be a finite number >= 0"),
    "representative_not_int8": (errors.BadArgument, "calibrates tflite_int8 only"),
    "representative_unknown_input": (errors.BadInput,
                                     "representative data: signature 'serving_default' "
                                     "has no input 'nope'"),
    "representative_wrong_shape": (errors.BadInput,
                                   "representative data: input 'image' has shape (8, 16, 3)"),
    "representative_empty": (errors.BadInput, "representative data: no examples"),
    "out_is_against": (errors.OutputInsideInput, "output is the input"),
    "out_inside_against": (errors.OutputInsideInput, "output is the input or lies inside"),
}


@pytest.mark.parametrize("case", sorted(API_ERRORS))
def test_api_bad_input_is_a_graphtap_error_and_writes_nothing(models, case, tmp_path):
    model, against, data, options = api_case(models, case)
    out = options.pop("out_dir", str(tmp_path / "out"))
    existed = os.path.exists(out)
    kind, message = API_ERRORS[case]
    with pytest.raises(kind, match=message.replace("(", r"\(").replace(")", r"\)")):
        graphtap.compare(model, against, data, out, progress=False, **options)
    assert os.path.exists(out) == existed
    assert not os.path.exists(os.path.join(out, "compare.json"))


def strict_json(path):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    with open(path, encoding="utf-8") as f:
        return json.load(f, parse_constant=refuse)


def test_against_itself_is_all_zero(models, tmp_path):
    result = graphtap.compare(models["tapped"], models["tapped"], {"image": IMAGES},
                              str(tmp_path / "out"), progress=False)
    assert result.first_divergence is None and result.missing == []
    assert all(t.max_abs == 0 and t.rel_l2 == 0 for t in result.taps)
    assert [t.cosine for t in result.taps] == pytest.approx([1.0] * len(result.taps))
    written = strict_json(tmp_path / "out" / "compare.json")
    assert all(t["sqnr_db"] is None for t in written["taps"])  # infinite: identical


def test_nan_and_inf_data_give_a_problem_valid_json_and_a_plot(models, tmp_path):
    """NaN in the data: no made-up figures (a cosine of -1, a max_abs of 0), a problem
    named instead; compare.json stays JSON; the plot is drawn without a warning."""
    out = tmp_path / "out"
    result = cli(f"--model={models['tapped']}", "--against=tflite",
                 f"--inputs=image={models['root']}/nan.npy", f"--out={out}")
    assert result.returncode == 1, result.stderr
    assert "Warning" not in result.stderr, result.stderr
    written = strict_json(out / "compare.json")
    assert written["first_divergence"] == written["taps"][0]["key"]
    for tap in written["taps"]:
        assert tap["problem"] == "NaN or infinite values", tap
        assert tap["cosine"] is None and tap["max_abs"] is None and not tap["within_tolerance"]
    if (out / "compare.png").exists():
        assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"


def test_values_beyond_float32_squares_are_summed_in_float64():
    """Activations near 1e20 overflow a float32 dot product: the chunk is summed again in
    float64, not reported as infinite."""
    from graphtap.run.compare import _Sums

    a = np.full(1000, 1e20, np.float32)
    b = a * np.float32(1.001)
    sums = _Sums()
    sums.add(a, b)
    tap = sums.difference("big", 0, True, 1e-4)
    assert tap.problem is None
    assert tap.rel_l2 == pytest.approx(1e-3, rel=1e-3)
    assert tap.cosine == pytest.approx(1.0)


def test_complex_values_are_compared_as_pairs_of_reals():
    """Complex outputs (an FFT): compared as (real, imaginary) pairs, not cast to real
    (which dropped the imaginary part, with a ComplexWarning on stderr)."""
    from graphtap.run.compare import _Sums

    a = (np.arange(1, 5) + 1j * np.arange(1, 5)).astype(np.complex64)
    sums = _Sums()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sums.add(a, a * 1j)
    tap = sums.difference("fft", 0, True, 1e-4)
    assert tap.rel_l2 == pytest.approx(np.linalg.norm(a - a * 1j) / np.linalg.norm(a))
    assert tap.cosine == pytest.approx(0.0, abs=1e-7)  # a and ia are orthogonal as reals


def test_int_outputs_are_compared_and_string_outputs_skipped(models, tmp_path):
    result = graphtap.compare(models["mixed_tapped"], models["mixed"],
                              {"x": np.load(models["root"] / "x.npy")},
                              str(tmp_path / "out"), progress=False)
    assert {t.key for t in result.taps} == {"hid", "y", "n"}
    assert all(t.max_abs == 0 for t in result.taps)
    assert result.not_measured == ["s"]  # the string output: named, not dropped
    assert strict_json(tmp_path / "out" / "compare.json")["not_measured"] == ["s"]


def test_existing_outputs(models, tmp_path):
    """An existing compare output: refused without overwrite, replaced with it; a file or
    a directory graphtap did not write: refused even with overwrite."""
    run = dict(data={"image": IMAGES}, progress=False)
    out = str(tmp_path / "out")
    graphtap.compare(models["tapped"], models["tapped"], out_dir=out, **run)
    with pytest.raises(errors.OutputExists, match="output exists"):
        graphtap.compare(models["tapped"], models["tapped"], out_dir=out, **run)
    before = os.stat(os.path.join(out, "compare.json")).st_ino
    graphtap.compare(models["tapped"], models["tapped"], out_dir=out, overwrite=True, **run)
    assert os.stat(os.path.join(out, "compare.json")).st_ino != before
    (tmp_path / "file").write_text("mine")
    (tmp_path / "theirs").mkdir()
    for other in ("file", "theirs"):
        with pytest.raises(errors.OutputExists, match="will not replace"):
            graphtap.compare(models["tapped"], models["tapped"],
                             out_dir=str(tmp_path / other), overwrite=True, **run)
    assert (tmp_path / "file").read_text() == "mine"
    assert list((tmp_path / "theirs").iterdir()) == []


@pytest.mark.parametrize("how", ["missing", "broken"])
def test_tf2onnx_missing_or_broken_is_one_line(models, tmp_path, how):
    """Not installed (an ImportError), or installed but failing on import (a version
    mismatch raising AttributeError): one line naming it, not an internal error."""
    fake = tmp_path / "fake" / "tf2onnx"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise AttributeError('np.cast was removed')\n")
    hide = ("sys.modules['tf2onnx'] = None" if how == "missing"
            else f"sys.path.insert(0, {str(fake.parent)!r})")
    code = (f"import sys, runpy; {hide}; sys.argv = ['graphtap', "
            "*sys.argv[1:]]; runpy.run_module('graphtap', run_name='__main__')")
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-c", code, "compare",
                             f"--model={models['tapped']}", "--against=onnx",
                             f"--inputs=image={models['root']}/images.npy", f"--out={out}"],
                            capture_output=True, text=True, env=child_env(), timeout=TIMEOUT)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("graphtap: error: comparing with ONNX needs tf2onnx"), last
    assert how == "missing" or "AttributeError: np.cast was removed" in last, last
    assert not out.exists()


def test_ctrl_c_while_running_batches_leaves_nothing(models, tmp_path):
    """SIGINT once the other side runs its first batch: status 130, one line, no output
    and no staging directory."""
    np.save(tmp_path / "many.npy", np.repeat(IMAGES, 500, axis=0))
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "graphtap", "compare", f"--model={models['tapped']}",
         "--against=tflite", f"--inputs=image={tmp_path / 'many.npy'}", "--batch_size=1",
         f"--out={out}"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        env=child_env(), preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in process.stderr:  # TFLite says so when it first runs
            if "TensorFlow Lite" in line:
                break
        process.send_signal(signal.SIGINT)
        rest = process.stderr.read()
        process.wait(timeout=TIMEOUT)
    finally:
        process.kill()
    assert process.returncode == 130, rest
    assert rest.strip().splitlines()[-1] == "graphtap: interrupted"
    assert not out.exists()
    assert not list(tmp_path.glob(".graphtap-*"))
