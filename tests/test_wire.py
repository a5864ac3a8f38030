"""graphtap.rewrite.wire: a tap writes saved_model.pb by copying the input's bytes wherever the
rewrite left them alone, and what it writes is exactly the rewritten model.

(Every tap of the suite also checks its spliced file against the whole rewritten
message: conftest sets GRAPHTAP_VERIFY_SPLICE.)
"""

import shutil

import pytest

import graphtap
from graphtap import errors
from graphtap.rewrite import model_io, plumbing, protos, wire


def _read(model_dir):
    with open(f"{model_dir}/saved_model.pb", "rb") as f:
        return f.read()


def _canonical(data, message_class=protos.SavedModel):
    return message_class.FromString(data).SerializeToString(deterministic=True)


def _variant(source, path, meta_graph):
    """A copy of SavedModel directory `source` at `path` (returned as a str) whose
    saved_model.pb holds the bytes `meta_graph` as its one meta graph, however they are
    laid out."""
    shutil.copytree(source, path)
    (path / "saved_model.pb").write_bytes(
        protos.SavedModel(saved_model_schema_version=1).SerializeToString()
        + wire.length_delimited(2, meta_graph))
    return str(path)


def _refuse_whole_serialization(monkeypatch):
    def refuse(message):
        raise AssertionError("saved_model.pb was serialized whole, not spliced")

    monkeypatch.setattr(model_io, "_serialize", refuse)


@pytest.mark.parametrize("fixture, selectors", [
    ("keras_cnn", {"ops": ["Relu"]}),
    ("nested_module", {"ops": ["Relu"]}),
    ("tf1_builder", {"ops": ["Relu"]}),
    ("while_module", {"ops": ["Relu"], "loop": "stack"}),
    ("keras_cnn", {"ops": ["Relu"], "mode": "add"}),
])
def test_spliced_file_is_the_deterministic_serialization(request, tmp_path, monkeypatch,
                                                        fixture, selectors):
    source, _ = request.getfixturevalue(fixture)
    assert _canonical(_read(source)) == _read(source)  # as TensorFlow writes it
    _refuse_whole_serialization(monkeypatch)

    report = graphtap.tap(source, str(tmp_path / "out"), **selectors)

    assert report.taps
    written = _read(tmp_path / "out")
    assert written != _read(source)
    assert written == _canonical(written)


def test_unchanged_functions_are_copied_byte_for_byte(keras_cnn, tmp_path):
    source, _ = keras_cnn
    graphtap.tap(source, str(tmp_path / "out"), ops=["Relu"])

    def functions(data):
        layout = wire.layout(data, 0, 1)
        graph = protos.SavedModel.FromString(data).meta_graphs[0].graph_def
        names = [f.signature.name for f in graph.library.function]
        return {name: data[start:end] for name, (start, end) in zip(names, layout.function_spans())}

    before, after = functions(_read(source)), functions(_read(tmp_path / "out"))
    kept = [name for name in before if after.get(name) == before[name]]
    assert set(before) <= set(after)
    assert 0 < len(kept) < len(before)  # the tapped path changed; save, restore, ... did not


def test_a_layout_it_does_not_follow_is_serialized_whole(keras_cnn, tmp_path):
    """A meta graph whose graph_def comes in two records (protobuf merges them) is valid;
    the splice declines it and the model is written whole, with the same result."""
    source, _ = keras_cnn
    saved_model = protos.SavedModel.FromString(_read(source))
    meta_graph = saved_model.meta_graphs[0].SerializeToString(deterministic=True)
    odd = _variant(source, tmp_path / "odd", meta_graph + wire.length_delimited(2, b""))
    assert wire.layout(_read(odd), 0, 1) is None

    graphtap.tap(odd, str(tmp_path / "from_odd"), ops=["Relu"])
    graphtap.tap(source, str(tmp_path / "from_source"), ops=["Relu"])

    # The same model; functions in another order: the spliced write keeps a cloned
    # function's bytes and puts the edited copy in its place, the whole one appends it.
    assert _by_function_name(tmp_path / "from_odd") == _by_function_name(tmp_path / "from_source")


def _by_function_name(model_dir):
    """The SavedModel at `model_dir` as (itself without its functions, {name: function})."""
    saved_model = protos.SavedModel.FromString(_read(model_dir))
    library = saved_model.meta_graphs[0].graph_def.library
    functions = {f.signature.name: f.SerializeToString(deterministic=True)
                 for f in library.function}
    library.ClearField("function")
    return saved_model, functions


def test_fields_of_a_newer_tensorflow_survive(keras_cnn, tmp_path):
    """Fields this TensorFlow's protos do not know (a newer writer's) are kept: in the meta
    graph, which then is serialized whole, and in a function, which is copied as read."""
    source, _ = keras_cnn
    saved_model = protos.SavedModel.FromString(_read(source))
    meta_graph = saved_model.meta_graphs[0]
    newer_field = wire.length_delimited(999, b"from the future")
    untouched = next(f for f in meta_graph.graph_def.library.function
                     if "_traced_save" in f.signature.name)  # on no path from a signature
    untouched.MergeFromString(newer_field)
    newer = _variant(source, tmp_path / "newer", meta_graph.SerializeToString() + newer_field)

    graphtap.tap(newer, str(tmp_path / "out"), ops=["Relu"])

    written = _read(tmp_path / "out")
    assert written.count(newer_field) == 2
    assert untouched.SerializeToString(deterministic=True) in written


def test_a_graph_with_its_library_first_is_spliced_in_its_own_order(keras_cnn, tmp_path,
                                                                     monkeypatch):
    """Protobuf allows a message's fields in any order. A graph_def whose library comes
    before its nodes is still spliced, in that order, and means the same model."""
    source, _ = keras_cnn
    meta_graph = protos.SavedModel.FromString(_read(source)).meta_graphs[0]
    graph = meta_graph.graph_def
    graph_bytes = (wire.length_delimited(2, graph.library.SerializeToString())
                   + b"".join(wire.length_delimited(1, n.SerializeToString()) for n in graph.node)
                   + wire.length_delimited(4, graph.versions.SerializeToString()))
    meta_graph.ClearField("graph_def")
    reordered = _variant(source, tmp_path / "reordered",
                         meta_graph.SerializeToString(deterministic=True)
                         + wire.length_delimited(2, graph_bytes))
    graphtap.tap(source, str(tmp_path / "from_source"), ops=["Relu"], mode="add")
    _refuse_whole_serialization(monkeypatch)

    graphtap.tap(reordered, str(tmp_path / "from_reordered"), ops=["Relu"], mode="add")

    written = _read(tmp_path / "from_reordered")
    assert written != _read(tmp_path / "from_source")
    assert protos.SavedModel.FromString(written) == protos.SavedModel.FromString(
        _read(tmp_path / "from_source"))


def test_a_frozen_graph_def_is_spliced_too(frozen_graph, tmp_path, monkeypatch):
    """A frozen GraphDef holds its weights in its nodes, and serializing it costs several
    times as much as parsing it: its unchanged nodes are copied as they were read."""
    path, _ = frozen_graph
    with open(path, "rb") as f:
        canonical = _canonical(f.read(), protos.GraphDef)
    source, out = tmp_path / "frozen.pb", tmp_path / "tapped.pb"
    source.write_bytes(canonical)  # as TensorFlow writes it with deterministic=True
    _refuse_whole_serialization(monkeypatch)

    report = graphtap.tap(str(source), str(out), ops=["Relu"])

    written = out.read_bytes()
    assert report.taps
    assert written == _canonical(written, protos.GraphDef)
    nodes_end = wire.graph_def_layout(canonical).node_spans()[-1][1]
    assert written[:nodes_end] == canonical[:nodes_end]  # taps are appended after them
    assert len(written) > len(canonical)


def _with_unparseable_function(source, tmp_path, name_part):
    """A copy of SavedModel `source` in which the function whose name holds `name_part`
    has a description that is not UTF-8, which protobuf refuses to parse; its records and
    their lengths are intact."""
    saved_model = protos.SavedModel.FromString(_read(source))
    library = saved_model.meta_graphs[0].graph_def.library
    function = next(f for f in library.function if name_part in f.signature.name)
    marker = b"graphtap-test-marker"
    function.signature.description = marker.decode()
    data = saved_model.SerializeToString(deterministic=True)
    assert data.count(marker) == 1
    broken = tmp_path / "broken"
    shutil.copytree(source, broken)
    (broken / "saved_model.pb").write_bytes(data.replace(marker, b"\xff" * len(marker)))
    return str(broken), function.signature.name


def test_functions_no_tap_reaches_are_copied_unparsed(keras_cnn, tmp_path, monkeypatch):
    """A tap parses only the functions it reads (the signature's, and those whose bytes
    mention a function on its path); the others, `_traced_save` among them, are copied
    as they were read, even when this protobuf could not parse them. `list` reads only
    the signature's functions too."""
    source, _ = keras_cnn
    broken, name = _with_unparseable_function(source, tmp_path, "_traced_save")
    listed = [(c.name, c.layer, c.layer_output) for c in graphtap.list_targets(broken)]
    assert listed == [(c.name, c.layer, c.layer_output) for c in graphtap.list_targets(source)]
    assert any(layer_output for _, _, layer_output in listed)
    monkeypatch.delenv(model_io.VERIFY_SPLICE_ENV)  # it parses the whole output

    report = graphtap.tap(broken, str(tmp_path / "out"), ops=["Relu"])

    assert report.taps
    _, layout = wire.stubbed(_read(broken))
    start, end = layout.stubs[name]
    assert _read(broken)[start:end] in _read(tmp_path / "out")


def test_an_unparseable_function_on_the_path_is_a_clean_error(keras_cnn, tmp_path):
    source, _ = keras_cnn
    broken, name = _with_unparseable_function(source, tmp_path, "__inference___call__")

    with pytest.raises(errors.CorruptModel, match=f"function '{name}' is not a valid "
                                                  "FunctionDef") as raised:
        graphtap.tap(broken, str(tmp_path / "out"), ops=["Relu"])

    assert raised.value.where == broken
    assert not (tmp_path / "out").exists()


def _meddle(kind):
    """A TapRewrite.apply that also changes one part of the model it does not record as
    edited: a function it never parsed, one it parsed but did not edit, or an outer-graph
    node; the part is returned through `meddled`."""
    original = plumbing.TapRewrite.apply
    meddled = []

    def apply(self, taps):
        result = original(self, taps)
        edited = result.edits
        if kind == "node":
            position = next(i for i in range(len(self.graph_def.node))
                            if i not in edited.nodes)
            message = self.graph_def.node[position]
        else:
            name = next(f.signature.name for f in self.graph_def.library.function
                        if "_traced_restore" in f.signature.name)
            assert name not in edited.functions
            # Through the library the function is parsed first; directly, it stays a stub.
            message = (self.functions[name] if kind == "parsed function" else
                       next(f for f in self.graph_def.library.function
                            if f.signature.name == name))
        message.attr["graphtap_test_unrecorded"].s = b"x"
        meddled.append(message.name if kind == "node" else message.signature.name)
        return result

    return apply, meddled


@pytest.mark.parametrize("kind", ["stub", "parsed function", "node"])
def test_an_edit_the_rewrite_did_not_record_is_written_not_the_stale_bytes(
        keras_cnn, tmp_path, monkeypatch, caplog, kind):
    """The splice copies the input's bytes for what the rewrite says it left alone; a part
    changed without being recorded (a bug) is caught by its size whatever the tests' env
    says, and the model is then serialized whole, changes included."""
    source, _ = keras_cnn
    monkeypatch.delenv(model_io.VERIFY_SPLICE_ENV, raising=False)
    apply, meddled = _meddle(kind)
    monkeypatch.setattr(plumbing.TapRewrite, "apply", apply)

    graphtap.tap(source, str(tmp_path / "out"), ops=["Relu"])

    written = _read(tmp_path / "out")
    assert written == _canonical(written)
    graph = protos.SavedModel.FromString(written).meta_graphs[0].graph_def
    parts = graph.node if kind == "node" else graph.library.function
    (part,) = [p for p in parts
               if (p.name if kind == "node" else p.signature.name) == meddled[0]]
    assert part.attr["graphtap_test_unrecorded"].s == b"x"
    assert "did not record" in caplog.text


def test_a_faithful_splice_passes_the_check(keras_cnn, tmp_path, monkeypatch):
    """Nothing the rewrite records is reported (so the splice runs), on every kind of tap."""
    source, _ = keras_cnn
    found = []
    unrecorded = wire.unrecorded_edits
    monkeypatch.setattr(wire, "unrecorded_edits",
                        lambda *args: found.extend(unrecorded(*args)) or [])

    graphtap.tap(source, str(tmp_path / "out"), ops=["Relu"])

    assert found == []
