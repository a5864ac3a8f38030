"""Broken, hostile and concurrent use: clear errors, untouched inputs, whole outputs.

Cases are generated from the test models (not hand-picked files), and each runs the real
command line.
"""

import os
import shutil
import stat
import subprocess
import sys

import pytest
import tensorflow as tf
from conftest import child_env, tree_digest
from loaders import run_tf2

import graphtap
from graphtap.rewrite import protos

def graphtap_process(*args):
    return subprocess.Popen([sys.executable, "-m", "graphtap", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=child_env())


def _edit_pb(model_dir, edit):
    path = os.path.join(model_dir, "saved_model.pb")
    with open(path, "rb") as f:
        saved_model = protos.SavedModel.FromString(f.read())
    edit(saved_model.meta_graphs[0])
    with open(path, "wb") as f:
        f.write(saved_model.SerializeToString())


def _inner_function(meta_graph):
    return next(f for f in meta_graph.graph_def.library.function
                if f.signature.name.startswith("__inference___call__"))


def _call_cycle(meta_graph):
    inner = _inner_function(meta_graph)
    call = inner.node_def.add()
    call.name, call.op = "again", "PartitionedCall"
    call.attr["f"].func.name = inner.signature.name
    call.attr["Tout"].list.type.extend(arg.type for arg in inner.signature.output_arg)


def _dangling_ret(meta_graph):
    """The serving signature's function returns a tensor that does not exist."""
    call_name = meta_graph.signature_def["serving_default"].outputs["output_0"].name
    call = next(n for n in meta_graph.graph_def.node if n.name == call_name.split(":")[0])
    function = next(f for f in meta_graph.graph_def.library.function
                    if f.signature.name == call.attr["f"].func.name)
    function.ret[function.signature.output_arg[0].name] = "gone:output:0"


def _duplicate_node(meta_graph):
    inner = _inner_function(meta_graph)
    inner.node_def.add().CopyFrom(inner.node_def[0])


CASES = {
    # name: (source model, how to damage a copy, expected words in the error)
    "truncated pb": ("keras_cnn", lambda d: _truncate(d), "not a valid SavedModel protobuf"),
    "invalid wire type": ("keras_cnn", lambda d: _first_byte(d, 0x0F), "not a valid SavedModel"),
    "empty pb": ("keras_cnn", lambda d: _truncate(d, 0), "SavedModel has no meta graph"),
    "no saved_model.pb": ("keras_cnn", lambda d: os.unlink(os.path.join(d, "saved_model.pb")),
                          "directory has no saved_model.pb"),
    "missing variables": ("tf1_builder", lambda d: shutil.rmtree(os.path.join(d, "variables")),
                          "model has variables but no variables/variables.index"),
    "signature names a missing node": (
        "keras_cnn",
        lambda d: _edit_pb(d, lambda mg: setattr(
            mg.signature_def["serving_default"].outputs["output_0"], "name", "gone:0")),
        "output 'output_0' names missing node (gone:0)"),
    "signature names no tensor": (
        "tf1_builder",
        lambda d: _edit_pb(d, lambda mg: setattr(
            mg.signature_def["serving_default"].outputs["probs"], "name", "probs")),
        "output 'probs' is no tensor name (probs)"),
    "call cycle": ("keras_cnn", lambda d: _edit_pb(d, _call_cycle), "call cycle"),
    "ret names a missing tensor": ("nested_module", lambda d: _edit_pb(d, _dangling_ret),
                                   "ret names missing tensor 'gone:output:0'"),
    "duplicate node names": ("keras_cnn", lambda d: _edit_pb(d, _duplicate_node),
                             "two nodes named"),
}


def _truncate(model_dir, size=None):
    path = os.path.join(model_dir, "saved_model.pb")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2 if size is None else size])


def _first_byte(model_dir, value):
    path = os.path.join(model_dir, "saved_model.pb")
    data = bytearray(open(path, "rb").read())
    data[0] = value
    open(path, "wb").write(bytes(data))


def _assert_clean_failure(process, out_dir, message):
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 2, stderr
    assert stdout == "" and len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith("graphtap: error: ") and "Traceback" not in stderr
    assert message in stderr, stderr
    assert os.listdir(out_dir) == []


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_savedmodel(case, keras_cnn, tf1_builder, nested_module, tmp_path):
    source_name, damage, message = CASES[case]
    sources = {"keras_cnn": keras_cnn, "tf1_builder": tf1_builder, "nested_module": nested_module}
    model = str(tmp_path / "model")
    shutil.copytree(sources[source_name][0], model)
    damage(model)
    before = tree_digest(model)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    process = graphtap_process("tap", f"--input={model}", f"--output={out_dir / 't'}",
                               "--tap_op=Relu")
    _assert_clean_failure(process, out_dir, message)
    assert tree_digest(model) == before


def test_pbtxt_syntax_error_and_symlink_loop(frozen_graph, tmp_path):
    text = tmp_path / "graph.pbtxt"
    text.write_text(open(frozen_graph[0] + "txt").read().replace("}", "", 1))
    loop = tmp_path / "loop"
    os.symlink(loop, loop)
    for source, message in ((text, "not a valid GraphDef protobuf"),
                            (loop, "cannot read: Too many levels of symbolic links")):
        out_dir = tmp_path / f"out_{source.name}"
        out_dir.mkdir()
        process = graphtap_process("tap", f"--input={source}", f"--output={out_dir / 't.pb'}",
                                   "--tap_op=Relu")
        _assert_clean_failure(process, out_dir, message)


class WritesWhenRun(tf.Module):
    def __init__(self, marker):
        super().__init__()
        self.marker = marker

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def __call__(self, x):
        tf.io.write_file(self.marker, "the model ran")
        return {"output_0": tf.nn.relu(x * 2.0, name="act")}


def test_tap_and_list_never_run_the_model(tmp_path):
    marker = str(tmp_path / "ran.txt")
    model, out = str(tmp_path / "model"), str(tmp_path / "tapped")
    tf.saved_model.save(WritesWhenRun(marker), model)
    for args in (("list", f"--input={model}"),
                 ("tap", f"--input={model}", f"--output={out}", "--tap_name=act")):
        process = graphtap_process(*args)
        process.communicate(timeout=300)
        assert process.returncode == 0
    assert not os.path.exists(marker)
    # Running the tapped model does write the file: the test above could have failed.
    assert sorted(run_tf2(out, "serving_default", {"x": [1.0, -1.0]})) == ["act", "output_0"]
    assert os.path.exists(marker)


def test_concurrent_taps(keras_cnn, tmp_path):
    path, _ = keras_cnn
    args = ("tap", f"--input={path}", "--tap_op=Relu")
    first = graphtap_process(*args, f"--output={tmp_path / 'a'}")
    second = graphtap_process(*args, f"--output={tmp_path / 'b'}")
    assert first.wait(timeout=300) == 0 and second.wait(timeout=300) == 0
    assert (tmp_path / "a" / "saved_model.pb").read_bytes() == \
        (tmp_path / "b" / "saved_model.pb").read_bytes()

    same = [graphtap_process(*args, f"--output={tmp_path / 'same'}") for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in same]
    assert sorted(code for code, _ in results) == [0, 2]
    assert "output exists" in next(err for code, err in results if code == 2)
    assert (tmp_path / "same" / "saved_model.pb").read_bytes() == \
        (tmp_path / "a" / "saved_model.pb").read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["a", "b", "same"]


def test_unreadable_file(keras_cnn, tmp_path, monkeypatch):
    """Root reads any file here, so the denial is simulated where graphtap opens the file."""
    import graphtap
    from graphtap import errors

    real_open = os.open

    def deny(path, *args, **kwargs):
        if str(path).endswith("saved_model.pb"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(errors.NotAModel) as caught:
        graphtap.tap(keras_cnn[0], str(tmp_path / "out"), ops=["Relu"])
    assert str(caught.value) == (
        f"cannot read: Permission denied ({os.path.join(keras_cnn[0], 'saved_model.pb')})")
    assert os.listdir(tmp_path) == []


def test_huge_attr_value_is_handled(keras_cnn, tmp_path):
    """A 64 MiB string attr (say, an embedded vocabulary) is carried over, not choked on."""
    model = str(tmp_path / "model")
    shutil.copytree(keras_cnn[0], model)
    blob = b"v" * (64 << 20)

    def add_blob(meta_graph):
        node = _inner_function(meta_graph).node_def[0]
        node.attr["_graphtap_test_blob"].s = blob

    _edit_pb(model, add_blob)
    out = tmp_path / "out"
    process = graphtap_process("tap", f"--input={model}", f"--output={out}", "--tap_op=Relu")
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    with open(out / "saved_model.pb", "rb") as f:
        tapped = protos.SavedModel.FromString(f.read())
    assert _inner_function(tapped.meta_graphs[0]).node_def[0].attr["_graphtap_test_blob"].s == blob


def test_outputs_are_readable_by_other_users(keras_cnn, frozen_graph, tmp_path):
    """Outputs get the modes the umask gives new files, not the 0700/0600 of the temporary
    names they are staged under: a server running as another user must read them."""
    umask = os.umask(0o022)
    try:
        graphtap.tap(keras_cnn[0], str(tmp_path / "out"), ops=["Relu"])
        graphtap.tap(frozen_graph[0], str(tmp_path / "frozen.pb"), ops=["Relu"])
    finally:
        os.umask(umask)

    def mode(path):
        return stat.S_IMODE(os.stat(path).st_mode)

    assert mode(tmp_path / "out") == 0o755
    assert mode(tmp_path / "out" / "saved_model.pb") == 0o644
    assert mode(tmp_path / "frozen.pb") == 0o644
