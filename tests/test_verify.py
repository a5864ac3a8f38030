"""`graphtap verify`: passes on good rewrites, fails clearly on a broken one."""

import os
import subprocess
import sys

import pytest

from conftest import child_env

import graphtap
from graphtap.rewrite import protos


@pytest.fixture(scope="module")
def tapped_models(keras_cnn, nested_module, tf1_builder, mobilenet_v2, tmp_path_factory):
    root = tmp_path_factory.mktemp("verify")
    made = {}
    for name, (path, _), options in (
        ("cnn", keras_cnn, dict(ops=["Relu", "Softmax"])),
        ("cnn_add", keras_cnn, dict(names=["cnn_1/dense_1/Relu=aaa"], mode="add")),
        ("nested", nested_module,
         dict(names=["act", "mix"], signatures=["serving_default", "hidden"])),
        ("tf1", tf1_builder, dict(names=["hidden/Relu", "top:1"])),
        ("mobilenet", mobilenet_v2, dict(ops=["Relu6"])),
    ):
        out = str(root / name)
        report = graphtap.tap(path, out, **options)
        records = report.taps + report.same_function_taps
        made[name] = (path, out, {(record.signature, record.key) for record in records})
    return made


@pytest.mark.parametrize("name", ["cnn", "cnn_add", "nested", "tf1", "mobilenet"])
@pytest.mark.compat("graphtap verify")
def test_verify_passes_on_good_rewrites(tapped_models, name):
    original, tapped, taps = tapped_models[name]
    result = graphtap.verify(original, tapped)
    assert result.ok, result.failures
    # Every model here, the TF1 one too, loads on both paths, and each path checks every
    # tap the report names and at least one original output.
    for path in ("tf2", "tf1"):
        checks = [c for c in result.checks if c.path == path]
        assert {(c.signature, c.key) for c in checks if c.is_tap} == taps, path
        assert any(not c.is_tap for c in checks), path
    assert {c.path for c in result.checks} == {"tf2", "tf1"}


def _break(tapped_dir):
    """Points the original output `probs` at another tensor and a tap at an int tensor."""
    path = os.path.join(tapped_dir, "saved_model.pb")
    with open(path, "rb") as f:
        saved_model = protos.SavedModel.FromString(f.read())
    outputs = saved_model.meta_graphs[0].signature_def["serving_default"].outputs
    outputs["probs"].name = "logits:0"
    outputs["hidden_Relu"].name = "top:1"
    outputs["hidden_Relu"].dtype = protos.dtype_enum("DT_INT32")
    outputs["hidden_Relu"].tensor_shape.CopyFrom(outputs["top_indices"].tensor_shape)
    with open(path, "wb") as f:
        f.write(saved_model.SerializeToString())


def test_verify_fails_on_a_broken_model(tapped_models, tmp_path):
    original, tapped, _ = tapped_models["tf1"]
    broken = str(tmp_path / "broken")
    subprocess.run(["cp", "-r", tapped, broken], check=True)
    _break(broken)
    result = graphtap.verify(original, broken)
    assert not result.ok
    assert {(c.key, c.path) for c in result.failures} == {
        ("probs", "tf1"), ("hidden_Relu", "tf1"), ("probs", "tf2"), ("hidden_Relu", "tf2")}
    status = {(c.key, c.path): c.status for c in result.checks}
    assert status[("probs", "tf1")] == "diff"
    assert status[("hidden_Relu", "tf1")] == "dtype int32 != manifest float32"
    assert status[("top_indices", "tf1")] == "match"
    diff = next(c for c in result.checks if c.key == "probs")
    assert diff.max_abs_diff > 0

    cli = subprocess.run([sys.executable, "-m", "graphtap", "verify", f"--original={original}",
                          f"--tapped={broken}", "--runs=3"], capture_output=True, text=True,
                         env=child_env(), timeout=300)
    assert cli.returncode == 1
    lines = cli.stdout.splitlines()
    assert lines[0].split()[:3] == ["path", "signature", "key"]
    assert any(line.split()[:3] == ["tf1", "serving_default", "probs"] and "diff" in line
               for line in lines)
    assert any(line.startswith("latency serving_default: original") for line in lines)
    assert lines[-1].endswith("checks match") and not lines[-1].startswith("0 of")
