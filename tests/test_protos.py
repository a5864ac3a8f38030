"""Byte-exactness: what the rewrite does not touch is written back byte for byte."""

import os

import graphtap
from graphtap.rewrite import model_io, protos
from graphtap.rewrite.tapping import MANIFEST
from graphtap.rewrite.index import GraphIndex
from graphtap.rewrite.plumbing import SignatureObjects, TapRewrite


def _read_pb(model_dir):
    with open(os.path.join(model_dir, "saved_model.pb"), "rb") as f:
        return f.read()


def test_no_op_rewrite_reproduces_saved_model_pb(keras_cnn, nested_module, tf1_builder,
                                                 mobilenet_v2, tmp_path):
    for i, (path, _) in enumerate((keras_cnn, nested_module, tf1_builder, mobilenet_v2)):
        model = model_io.read(path)
        for meta_graph in model.proto.meta_graphs:
            objects = SignatureObjects(meta_graph.object_graph_def)
            index = GraphIndex(meta_graph.graph_def, meta_graph.meta_info_def.stripped_op_list.op)
            TapRewrite(index, meta_graph.signature_def, objects).apply([])
        out = str(tmp_path / str(i))
        model_io.write_saved_model(model.proto, path, out, {}, overwrite=False)
        assert _read_pb(out) == _read_pb(path)
        assert sorted(os.listdir(out)) == sorted(set(os.listdir(path)) - {"fingerprint.pb"})


def _functions(model_dir):
    saved_model = protos.SavedModel.FromString(_read_pb(model_dir))
    library = saved_model.meta_graphs[0].graph_def.library.function
    return {f.signature.name: f.SerializeToString(deterministic=True) for f in library}


def test_only_the_tapped_signature_function_changes_in_place(mobilenet_v2, tmp_path):
    path, _ = mobilenet_v2
    out = str(tmp_path / "tapped")
    report = graphtap.tap(path, out, ops=["Relu6"], signatures="serving_default")
    before, after = _functions(path), _functions(out)
    changed = {name for name in before if before[name] != after.get(name)}
    # The serving_default wrapper is edited in place; the model function it calls is
    # shared with `serve` and the tf.function object, so it is cloned, not edited.
    assert len(changed) == 1 and changed.pop().startswith("__inference_signature_wrapper")
    clones = set(after) - set(before)
    assert clones == {r.function for r in report.taps}
    with open(os.path.join(out, MANIFEST)) as f:
        assert f.read().count('"key"') == len(report.taps)
