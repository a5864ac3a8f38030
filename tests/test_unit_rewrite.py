"""Unit layer: listing and tapping the checked-in models as protobufs, with no TensorFlow
runtime (`pytest -m unit`). Values are checked by the integration tests; these check what
the rewrite writes."""

import json
import os
import pathlib
import shutil

import pytest

import graphtap
from graphtap import errors
from graphtap.rewrite import model_io, protos, wire

pytestmark = pytest.mark.unit

FIELD = pathlib.Path(__file__).resolve().parents[1] / "testdata" / "field"
MODELS = ["tfk_functional_keras", "tfk_functional_tf", "tfk_sequential_keras",
          "tfk_sequential_tf", "hub_bert", "hub_gpt2", "tfk_lookup"]


def _saved_model(path):
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        return protos.SavedModel.FromString(f.read())


@pytest.mark.parametrize("name", MODELS)
def test_stubbed_reading_agrees_with_protobuf(name):
    """The byte-level reader's stubs, filled, give exactly protobuf's parse of the file."""
    data = (FIELD / name / "saved_model.pb").read_bytes()
    model = model_io.read(str(FIELD / name), stubs=True)
    if model.layout is not None:
        wire.fill_stubs(model.layout, model.proto)
    assert model.proto == protos.SavedModel.FromString(data)


@pytest.mark.parametrize("name", MODELS)
def test_list_finds_tappable_tensors(name):
    targets = graphtap.list_targets(str(FIELD / name))
    paths = {(c.name, tuple(call.node for call in c.calls)) for c in targets}
    assert targets and len(paths) == len(targets)  # a tensor once per call path
    assert any(not c.blocked for c in targets)


def test_list_names_tf_keras_layers_and_their_outputs():
    targets = graphtap.list_targets(str(FIELD / "tfk_functional_keras"))
    outputs = {c.layer for c in targets if c.layer_output}
    assert {"conv1_conv", "conv1_bn"} <= outputs


@pytest.mark.parametrize("name", ["tfk_functional_keras", "hub_bert"])
def test_tap_every_softmax_or_relu_writes_a_consistent_model(name, tmp_path):
    ops = [op for op in ("Relu", "Softmax")
           if any(c.op == op and not c.blocked for c in graphtap.list_targets(str(FIELD / name)))]
    out = tmp_path / "out"
    report = graphtap.tap(str(FIELD / name), str(out), ops=ops,
                          signatures="serving_default")
    tapped = _saved_model(out).meta_graphs[0]
    outputs = tapped.signature_def["serving_default"].outputs
    for record in report.taps:
        assert outputs[record.key].name == record.tensor
    original = _saved_model(FIELD / name).meta_graphs[0].signature_def["serving_default"]
    for key, info in original.outputs.items():  # the original outputs keep their tensors' types
        assert outputs[key].dtype == info.dtype
    with open(out / "assets.extra" / "graphtap.json") as f:
        assert [t["key"] for t in json.load(f)["taps"]] == [r.key for r in report.taps]
    identities = {n.name for f in tapped.graph_def.library.function for n in f.node_def
                  if n.op == "Identity" and n.name.startswith("graphtap/")}
    assert len(identities) == len({(r.function, r.node, r.output) for r in report.taps})


def test_a_tapped_model_is_tapped_again_without_repeats(tmp_path):
    source = str(FIELD / "tfk_sequential_keras")
    once, twice = tmp_path / "once", tmp_path / "twice"
    first = graphtap.tap(source, str(once), ops=["Relu"], signatures="serving_default")
    with pytest.raises(errors.NothingToTap):
        graphtap.tap(str(once), str(twice), ops=["Relu"], signatures="serving_default")
    assert first.taps and not twice.exists()


def test_the_untouched_functions_are_copied_byte_for_byte(tmp_path):
    source = FIELD / "hub_gpt2"
    out = tmp_path / "out"
    report = graphtap.tap(str(source), str(out), ops=["Softmax"], signatures="serving_default")
    before = {f.signature.name: f for f in _saved_model(source).meta_graphs[0].graph_def
              .library.function}
    after = {f.signature.name: f for f in _saved_model(out).meta_graphs[0].graph_def
             .library.function}
    touched = {r.function for r in report.taps}
    same = [n for n in before if n not in touched and n in after and after[n] == before[n]]
    assert len(same) > len(before) // 2


@pytest.mark.parametrize("position", ["²", "٠", "١", "9" * 5000, "1_0", "+0", " 0"],
                         ids=["superscript", "arabic_0", "arabic_1", "5000_digits", "underscore",
                              "sign", "space"])
def test_an_output_number_that_is_not_ascii_digits_is_a_corrupt_model(position, tmp_path):
    """Only ASCII digits name an output: not the Unicode digits str.isdigit takes (that
    int() rejects, or reads as a number TensorFlow would not), nor more digits than int()
    converts."""
    model = tmp_path / "model"
    shutil.copytree(FIELD / "tfk_sequential_tf", model)
    saved_model = _saved_model(model)
    info = saved_model.meta_graphs[0].signature_def["serving_default"].outputs["logits"]
    info.name = f"{info.name.rpartition(':')[0]}:{position}"
    (model / "saved_model.pb").write_bytes(saved_model.SerializeToString())
    with pytest.raises(errors.CorruptModel, match="output 'logits' is no tensor name"):
        graphtap.tap(str(model), str(tmp_path / "out"), ops=["Relu"])
    assert not (tmp_path / "out").exists()


def test_output_numbers_are_one_to_ten_ascii_digits():
    from graphtap.rewrite.index import output_number

    assert [output_number(t) for t in ("0", "12", "0123456789")] == [0, 12, 123456789]
    assert {output_number(t) for t in ("", "²", "١", "9" * 11, "1_0", "-1", "1 ")} == {None}
