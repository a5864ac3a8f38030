"""Rewriting models whose ops the SavedModel does not all define (issue #16, items 4, 5).

TensorFlow's saver lists in `stripped_op_list` only the ops of the outer graph and of the
functions it calls by a call op's `f` or by name (meta_graph.ops_used_by_graph_def), not
those of If/While branch and body functions. graphtap reads function references from attr
values and asks for an OpDef only where a node's outputs must be known: tensorflow_text
ops inside tf.cond and tf.map_fn no longer stop `list` and `tap`, and a model whose
tapped paths use only its listed ops starts no child process to read TensorFlow's
registry. Rewriting never needs tensorflow_text; loading the tapped model does.
"""

import importlib.util
import pathlib

import numpy as np
import pytest
import tensorflow as tf

import graphtap
from graphtap import errors
from graphtap.rewrite import opdefs

TEXT = importlib.util.find_spec("tensorflow_text")
needs_text = pytest.mark.skipif(TEXT is None, reason="tensorflow_text is not installed")

FIELD = pathlib.Path(__file__).resolve().parents[1] / "testdata" / "field"
MODEL = str(FIELD / "tf_text")
CUSTOM_OP = "TFText>WhitespaceTokenizeWithOffsetsV2"


@pytest.fixture
def no_registry(monkeypatch, tmp_path):
    """No cached registry, and a test failure if graphtap starts the child reading it."""
    monkeypatch.setenv("GRAPHTAP_CACHE_DIR", str(tmp_path / "cache"))

    def started():
        raise AssertionError("graphtap started the child reading TensorFlow's op registry")

    monkeypatch.setattr(opdefs, "_registered_op_defs", started)


def _reference():
    """(inputs, outputs, taps) of tf_text.npz."""
    with np.load(FIELD / "tf_text.npz", allow_pickle=True) as data:  # string outputs
        def part(prefix):
            return {k[len(prefix):]: data[k] for k in data.files if k.startswith(prefix)}
        return part("input/"), part("output/"), part("tap/")


def _serve(path, inputs):
    """{key: numpy value} of the model's serving_default signature."""
    signature = tf.saved_model.load(path).signatures["serving_default"]
    return {k: v.numpy() for k, v in signature(**{k: tf.constant(v)
                                                   for k, v in inputs.items()}).items()}


def _assert_identical(got, want):
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.tobytes() == want.tobytes() if got.dtype != object else list(got) == list(want)


@pytest.fixture(scope="module")
def text_ops():
    """Registers tensorflow_text's ops in this process, to load the models using them."""
    if TEXT is None:
        pytest.skip("tensorflow_text is not installed")
    import tensorflow_text
    return tensorflow_text


def test_list_marks_only_the_custom_op_nodes_not_tappable():
    candidates = graphtap.list_targets(MODEL)
    by_op = {}
    for candidate in candidates:
        by_op.setdefault(candidate.op, []).append(candidate)
    (tokenize,) = by_op[CUSTOM_OP]
    assert "no definition" in tokenize.blocked and CUSTOM_OP in tokenize.blocked
    (normalize,) = by_op["NormalizeUTF8"]
    assert "no definition" in normalize.blocked
    scaled = [c for c in candidates if c.node == "scaled"]
    assert len(scaled) == 1 and not scaled[0].blocked
    # the other nodes of the branch that runs the custom op are tappable, as before
    in_branch = [c for c in candidates if c.function and c.function.startswith("cond_true")]
    assert any(c.in_branch and not c.blocked for c in in_branch)


def test_tapping_a_custom_op_node_says_why_not(tmp_path):
    with pytest.raises(errors.NotTappable, match="no definition"):
        graphtap.tap(MODEL, str(tmp_path / "out"),
                     names=["cond/WhitespaceTokenize/TFText>WhitespaceTokenizeWithOffsetsV2"])


@needs_text
def test_tap_beside_custom_ops_in_control_flow_equals_the_reference(tmp_path, text_ops):
    out = str(tmp_path / "tapped")
    report = graphtap.tap(MODEL, out, names=["scaled=tap_scaled"])
    assert [t.key for t in report.taps] == ["tap_scaled"]
    inputs, outputs, taps = _reference()
    got = _serve(out, inputs)
    assert set(got) == set(outputs) | {"tap_scaled"}
    _assert_identical(got["tap_scaled"], taps["scaled"])
    untapped = _serve(MODEL, inputs)
    for key in outputs:
        _assert_identical(got[key], untapped[key])
        _assert_identical(got[key], outputs[key])


def _save_normalizer(path, text):
    """A tf.Module running tensorflow_text's NormalizeUTF8 outside control flow: the op is
    in its stripped_op_list."""

    class Normalizer(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def __call__(self, sentences):
            normalized = text.normalize_utf8(sentences, "NFKC")
            return {"length": tf.strings.length(normalized)}

    module = Normalizer()
    tf.saved_model.save(module, path, signatures={"serving_default": module.__call__})


@needs_text
def test_tap_a_custom_op_the_model_defines_without_the_registry(tmp_path, text_ops,
                                                                 no_registry):
    model, out = str(tmp_path / "model"), str(tmp_path / "tapped")
    _save_normalizer(model, text_ops)
    listed = [c for c in graphtap.list_targets(model) if c.op == "NormalizeUTF8"]
    assert len(listed) == 1 and not listed[0].blocked
    graphtap.tap(model, out, ops=["NormalizeUTF8"])
    inputs = {"sentences": np.array(["Ｆｕｌｌ width".encode(), b"a b"])}
    got, untapped = _serve(out, inputs), _serve(model, inputs)
    (key,) = set(got) - set(untapped)
    want = text_ops.normalize_utf8(tf.constant(inputs["sentences"]), "NFKC").numpy()
    assert list(got[key]) == list(want) and list(want) != list(inputs["sentences"])
    _assert_identical(got["length"], untapped["length"])


def _save_asserting(path):
    """A tf.function that asserts its input is positive: the Assert sits in the false
    branch of an If (the assert guard), so the stripped_op_list does not list it."""

    class Asserting(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def __call__(self, x):
            with tf.control_dependencies([tf.debugging.assert_positive(x)]):
                tripled = tf.identity(x * 3.0, name="tripled")
            return {"out": tf.sqrt(tripled)}

    module = Asserting()
    tf.saved_model.save(module, path, signatures={"serving_default": module.__call__})


def test_tap_beside_an_assert_guard_starts_no_registry_child(tmp_path, no_registry):
    model = str(tmp_path / "model")
    _save_asserting(model)
    graphtap.tap(model, str(tmp_path / "by_name"), names=["tripled=tripled"])
    graphtap.tap(model, str(tmp_path / "by_op"), ops=["Sqrt"])
    x = np.array([0.5, 2.0, 7.25], np.float32)
    untapped = _serve(model, {"x": x})
    by_name, by_op = _serve(str(tmp_path / "by_name"), {"x": x}), _serve(
        str(tmp_path / "by_op"), {"x": x})
    _assert_identical(by_name["tripled"], tf.identity(tf.constant(x) * 3.0).numpy())
    (sqrt_key,) = set(by_op) - {"out"}
    _assert_identical(by_op[sqrt_key], untapped["out"])
    for got in (by_name, by_op):
        _assert_identical(got["out"], untapped["out"])
