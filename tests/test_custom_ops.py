"""Running a model with custom ops: `custom_ops` / `--custom_ops` load the library that
defines them before verify, dump and activations load the model.

The model is testdata/field/tf_text (tensorflow_text ops inside tf.cond and tf.map_fn);
its reference values are in tf_text.npz (tools/make_field_models.py). It is run untapped
(tapping it is tests/test_custom_ops_tap.py's): verify gets a copy marked as graphtap's
output with no taps, and compares every original output.

A check that the ops are missing runs in a child process: once this process imports
tensorflow_text, TensorFlow knows its ops for good.
"""

import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import child_env

import graphtap
from graphtap.rewrite.tapping import MANIFEST

# CI installs it with `pip install --no-deps tensorflow-text` (its metadata wants the full
# `tensorflow` wheel); found, not imported: importing registers its ops in this process.
TEXT = importlib.util.find_spec("tensorflow_text")
if TEXT is None:
    pytest.skip("tensorflow_text is not installed", allow_module_level=True)

FIELD = pathlib.Path(__file__).resolve().parents[1] / "testdata" / "field"
MODEL = str(FIELD / "tf_text")
OPS_DIR = pathlib.Path(TEXT.origin).parent / "python" / "ops"
# The model's two ops: NormalizeUTF8 and TFText>WhitespaceTokenizeWithOffsetsV2.
LIBRARIES = [str(OPS_DIR / "_normalize_ops.so"), str(OPS_DIR / "_whitespace_tokenizer_v2.so")]
TF_START_UP = ("WARNING: All log messages before absl::InitializeLog()", "I0000 ")


def _reference():
    """(inputs, outputs) of the model's reference .npz."""
    with np.load(FIELD / "tf_text.npz", allow_pickle=True) as data:  # string outputs
        def part(prefix):
            return {k[len(prefix):]: data[k] for k in data.files if k.startswith(prefix)}
        return part("input/"), part("output/")


def _marked_copy(tmp_path):
    """The model, copied and marked as a tapped model with no taps: verify's `tapped`."""
    copy = tmp_path / "marked"
    shutil.copytree(MODEL, copy)
    (copy / MANIFEST).parent.mkdir(exist_ok=True)
    (copy / MANIFEST).write_text(json.dumps({"taps": []}))
    return str(copy)


def _cli(*args):
    result = subprocess.run([sys.executable, "-m", "graphtap", *args], capture_output=True,
                            text=True, env=child_env(), timeout=300)
    # TensorFlow 2.21 prints these at import whatever TF_CPP_MIN_LOG_LEVEL says
    stderr = [line for line in result.stderr.splitlines() if not line.startswith(TF_START_UP)]
    return result.returncode, result.stdout, stderr


def _assert_equal(got, want):
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key].dtype == want[key].dtype or want[key].dtype == object, key
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def _run_args(command, tmp_path, inputs):
    np.savez(tmp_path / "inputs.npz", **inputs)
    if command == "verify":
        return ["verify", f"--original={MODEL}", f"--tapped={_marked_copy(tmp_path)}",
                f"--inputs_npz={tmp_path / 'inputs.npz'}"]
    return ["dump", f"--model={MODEL}", f"--inputs_npz={tmp_path / 'inputs.npz'}",
            f"--out={tmp_path / 'dump'}"]


@pytest.mark.parametrize("command", ["verify", "dump"])
def test_without_the_library_the_error_names_the_op_and_the_flag(command, tmp_path):
    inputs, _ = _reference()
    status, stdout, stderr = _cli(*_run_args(command, tmp_path, inputs))
    assert status == 2 and stdout == ""
    assert len(stderr) == 1, stderr
    assert stderr[0].startswith("graphtap: error: op '")
    assert ("'NormalizeUTF8' is not registered" in stderr[0]
            or "'TFText>WhitespaceTokenizeWithOffsetsV2' is not registered" in stderr[0])
    assert "load the library that defines it" in stderr[0] and "--custom_ops=" in stderr[0]
    assert not os.path.exists(tmp_path / "dump")


def test_library_error_names_the_op_without_cli_flags(tmp_path):
    """The Python API's message: the op, and no CLI flag (run in a child: see the top)."""
    script = ("import graphtap\n"
              "try:\n"
              f"    next(graphtap.activations({MODEL!r}, [{{}}]))\n"
              "except graphtap.errors.UnknownOp as error:\n"
              "    print(error)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=child_env(), timeout=300)
    assert result.returncode == 0, result.stderr
    assert "is not registered in TensorFlow: load the library" in result.stdout
    assert "--" not in result.stdout.replace(MODEL, "")


@pytest.mark.compat("tensorflow_text custom ops (verify, dump, activations with custom_ops)")
def test_tensorflow_text_module_runs_verify_dump_and_activations(tmp_path):
    inputs, outputs = _reference()
    batch = [inputs]  # `split` is a scalar: given as one ready batch, not sliced
    (got,) = graphtap.activations(MODEL, batch, custom_ops=["tensorflow_text"])
    _assert_equal(got, outputs)
    stats = graphtap.dump(MODEL, batch, str(tmp_path / "dump"), save="npz", progress=False,
                          custom_ops=["tensorflow_text"])
    assert sorted(stats) == sorted(outputs)
    for key in ("scaled", "counts"):  # string outputs get statistics, no .npz
        with np.load(tmp_path / "dump" / f"{key}.npz") as saved:
            np.testing.assert_array_equal(saved[key], outputs[key])
    from graphtap.run.verification import verify

    result = verify(MODEL, _marked_copy(tmp_path), inputs, custom_ops=["tensorflow_text"])
    assert result.ok, result.checks
    assert sorted((c.path, c.key) for c in result.checks) == sorted(
        (path, key) for path in ("tf1", "tf2") for key in outputs)


def test_verify_cli_with_the_module(tmp_path):
    inputs, _ = _reference()
    status, stdout, stderr = _cli(*_run_args("verify", tmp_path, inputs),
                                  "--custom_ops=tensorflow_text")
    assert status == 0, stderr
    assert stdout.splitlines()[-1] == "6 of 6 checks match"  # 3 outputs, 2 load paths


@pytest.mark.compat("custom op libraries by .so path (verify, activations with custom_ops)")
def test_so_files_instead_of_the_module(tmp_path):
    """Both libraries the model needs, by path; a child process that never imports
    tensorflow_text: verify through the CLI, the values through graphtap.activations."""
    inputs, outputs = _reference()
    libraries = [f"--custom_ops={path}" for path in LIBRARIES]
    status, stdout, stderr = _cli(*_run_args("verify", tmp_path, inputs), *libraries)
    assert status == 0, stderr
    assert stdout.splitlines()[-1] == "6 of 6 checks match"
    script = ("import sys, numpy as np, graphtap\n"
              "inputs = dict(np.load(sys.argv[1]))\n"
              f"(got,) = graphtap.activations({MODEL!r}, [inputs], custom_ops=sys.argv[3:])\n"
              "assert 'tensorflow_text' not in sys.modules\n"
              "np.savez(sys.argv[2], **got)\n")
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "inputs.npz"),
                             str(tmp_path / "got.npz"), *LIBRARIES],
                            capture_output=True, text=True, env=child_env(), timeout=300)
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "got.npz", allow_pickle=True) as got:
        _assert_equal({key: got[key] for key in got.files}, outputs)


def _not_a_library(tmp_path):
    path = tmp_path / "text.so"
    path.write_text("not a shared object")
    return str(path)


BAD_SPECS = {
    "no_such_module": (lambda tmp_path: "no_such_module",
                       "cannot import custom op module: No module named 'no_such_module'"),
    "missing_so": (lambda tmp_path: str(tmp_path / "missing.so"), "no such custom op library"),
    "not_a_library": (_not_a_library, "cannot load custom op library: "),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_spec_is_one_line_naming_it(case, tmp_path):
    make_spec, message = BAD_SPECS[case]
    spec = make_spec(tmp_path)
    inputs, _ = _reference()
    status, stdout, stderr = _cli(*_run_args("dump", tmp_path, inputs), f"--custom_ops={spec}")
    assert status == 2 and stdout == ""
    assert len(stderr) == 1, stderr
    assert stderr[0].startswith(f"graphtap: error: {message}")
    assert stderr[0].endswith(f"({spec})")
    assert not os.path.exists(tmp_path / "dump")
