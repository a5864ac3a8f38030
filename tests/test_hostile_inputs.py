"""Hostile inputs that used to hang graphtap or crash it (issue #15): each now gets a clear
graphtap error naming what is at fault, or is tapped as TensorFlow would load it."""

import os
import shutil

import numpy as np
import pytest

import graphtap
from graphtap import errors, manifest

MANIFESTS = {
    "taps_a_string": '{"taps": "abc"}',
    "null": "null",
    "a_list": "[]",
    "taps_not_objects": '{"taps": [1, "x"]}',
    "a_list_of_numbers": "[1, 2]",
    "a_tap_without_key": '{"taps": [{"signature": "serving_default"}]}',
    "deep": "[" * 100000,
}


@pytest.fixture
def cnn_copy(keras_cnn, tmp_path):
    """A copy of the Keras CNN, to spoil."""
    copy = tmp_path / "model"
    shutil.copytree(keras_cnn[0], copy)
    return copy


def _with_manifest(model_dir, text):
    path = model_dir / manifest.PATH
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return str(path)


# Item 14: a malformed manifest in the input.
@pytest.mark.parametrize("case", sorted(MANIFESTS))
def test_malformed_manifest_is_a_corrupt_model_naming_it(cnn_copy, tmp_path, case):
    from graphtap.verification import verify

    path = _with_manifest(cnn_copy, MANIFESTS[case])
    with pytest.raises(errors.CorruptModel, match="manifest") as tapping:
        graphtap.tap(str(cnn_copy), str(tmp_path / "out"), ops=["Relu"])
    with pytest.raises(errors.CorruptModel, match="manifest") as verifying:
        verify(str(cnn_copy), str(cnn_copy))
    assert tapping.value.where == verifying.value.where == path
    assert not os.path.exists(tmp_path / "out")


def test_dump_refuses_a_malformed_manifest(cnn_copy, tmp_path):
    path = _with_manifest(cnn_copy, MANIFESTS["deep"])
    images = np.zeros((2, 16, 16, 3), "float32")
    with pytest.raises(errors.CorruptModel, match="manifest") as dumping:
        graphtap.dump(str(cnn_copy), {"image": images}, str(tmp_path / "acts"), progress=False)
    assert dumping.value.where == path


def test_a_manifest_graphtap_wrote_is_read_back_and_extended(keras_cnn, tmp_path):
    once, twice = tmp_path / "once", tmp_path / "twice"
    graphtap.tap(keras_cnn[0], str(once), ops=["Softmax"])
    graphtap.tap(str(once), str(twice), names=[".*/dense_1/Relu"])
    taps = manifest.read(str(twice))
    assert [t["op"] for t in taps] == ["Softmax", "Relu"]
    assert manifest.read(str(keras_cnn[0])) is None
