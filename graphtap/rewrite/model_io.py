"""Reading models and writing them atomically.

The input is only ever read. Output is assembled in a hidden temporary directory (or
file) beside its destination and renamed into place once complete, so an interrupted
run leaves either the whole output or nothing under the output's name.
"""

import contextlib
import dataclasses
import os

from absl import logging
from google.protobuf import message, text_format

from graphtap import errors
from graphtap.rewrite import manifest, paths, protos, source_files, staging, wire

SAVED_MODEL_PB = "saved_model.pb"
SAVED_MODEL_PBTXT = "saved_model.pbtxt"
FINGERPRINT_PB = "fingerprint.pb"
VARIABLES_INDEX = os.path.join("variables", "variables.index")
TEXT_SUFFIXES = (".pbtxt", ".txt")
# Every SavedModel graphtap writes holds its manifest: an existing output without one is
# not graphtap's, and is never replaced.
OUTPUT_MARK = manifest.PATH
# Set to 1, every spliced write is checked against the whole rewritten message (tests do).
VERIFY_SPLICE_ENV = "GRAPHTAP_VERIFY_SPLICE"


@dataclasses.dataclass
class Model:
    """A parsed input: a SavedModel directory or a GraphDef file."""

    path: str
    proto: object  # protos.SavedModel or protos.GraphDef
    is_saved_model: bool
    data: bytes = None  # the binary protobuf `proto` was parsed from (not kept for text)
    layout: object = None  # read with stubs: the wire.Layout of `data` that lists them


def read(path, stubs=False):
    """Parses the SavedModel directory or GraphDef file at `path`.

    stubs: where wire.stubbed can, leave each function of a SavedModel's library as a stub
      holding its name, for an index.FunctionLibrary to parse when it is looked up; the
      Model's layout then lists them. Only for a caller that reads functions through a
      GraphIndex given that layout (and, to write, writes with it).
    """
    if not os.path.lexists(path):
        raise errors.InputNotFound("no such file or directory", path)
    if os.path.isdir(path):
        return _read_saved_model(path, stubs)
    if os.path.basename(path) in (SAVED_MODEL_PB, SAVED_MODEL_PBTXT):
        return _read_saved_model(os.path.dirname(path) or ".", stubs)
    text = path.endswith(TEXT_SUFFIXES)
    graph_def, data, _ = _parse(path, protos.GraphDef, text)
    if not graph_def.node:
        raise errors.NotAModel("not a SavedModel directory nor a GraphDef with nodes", path)
    return Model(path, graph_def, False, None if text else data)


def _read_saved_model(directory, stubs):
    for name, text in ((SAVED_MODEL_PB, False), (SAVED_MODEL_PBTXT, True)):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            saved_model, data, layout = _parse(path, protos.SavedModel, text, stubs)
            if not saved_model.meta_graphs:
                raise errors.CorruptModel("SavedModel has no meta graph", path)
            if _has_variables(saved_model) and not os.path.isfile(
                    os.path.join(directory, VARIABLES_INDEX)):
                raise errors.CorruptModel(f"model has variables but no {VARIABLES_INDEX}",
                                          directory)
            return Model(directory, saved_model, True, None if text else data, layout)
    raise errors.NotAModel(f"directory has no {SAVED_MODEL_PB}", directory)


def _has_variables(saved_model):
    """Whether loading needs a checkpoint: TF2 variable objects, or TF1 variable ops."""
    for meta_graph in saved_model.meta_graphs:
        if any(node.HasField("variable") for node in meta_graph.object_graph_def.nodes):
            return True
        if any(node.op in _VARIABLE_OPS for node in meta_graph.graph_def.node):
            return True
    return False


_VARIABLE_OPS = frozenset({"VarHandleOp", "VariableV2", "Variable"})


def _parse(path, message_class, text, stubs=False):
    """(the message, the file's bytes, the wire.Layout listing its stubs or None)."""
    data = source_files.read_regular(path)
    try:
        if text:
            return text_format.Parse(data.decode("utf-8"), message_class()), data, None
        stubbed = wire.stubbed(data) if stubs else None
        if stubbed is not None:
            shell, layout = stubbed
            return message_class.FromString(shell), data, layout
        return message_class.FromString(data), data, None
    except (message.DecodeError, text_format.ParseError, UnicodeDecodeError) as error:
        kind = message_class.DESCRIPTOR.name
        raise errors.CorruptModel(f"not a valid {kind} protobuf: {error}", path) from None
    except RecursionError:  # text_format recurses once per level of nested messages
        kind = message_class.DESCRIPTOR.name
        raise errors.CorruptModel(f"not a valid {kind} protobuf: messages nested too deeply",
                                  path) from None


def check_output(input_paths, output_path, overwrite, is_directory=True, mark=OUTPUT_MARK):
    """Refuses an output that is one of `input_paths`, lies inside one, or contains one
    (judged by device and inode, which bind mounts and symbolic links do not fool), and
    an existing output unless `overwrite` and staging.check_replaceable allow
    (`is_directory`, `mark`)."""
    for input_path in input_paths:
        paths.check_not_inside(input_path, output_path)
    if os.path.lexists(output_path):
        staging.check_replaceable(output_path, overwrite, is_directory, mark, input_paths)


def write_saved_model(saved_model, input_dir, output_dir, extra_files, overwrite,
                      layout=None, edits=None, link_variables=False):
    """Writes `saved_model` with copies of the input's other files (variables, assets)
    and `extra_files` ({relative path: bytes}).

    layout, edits: the wire.Layout of the bytes `saved_model` was parsed from, and a
      wire.Edits of what has changed since; the unchanged parts are then copied from
      those bytes, not serialized again.
    link_variables: hard-link the variables instead of copying them, where the
      filesystem allows: safe only if neither model is ever written to.

    `fingerprint.pb` is not carried over: it holds checksums of the old protobuf.
    """
    chunks = _chunks(saved_model, wire.splice_saved_model, layout, edits)
    check_output([input_dir], output_dir, overwrite)
    with staging.staged_output(output_dir, overwrite, mark=OUTPUT_MARK,
                               protect=[input_dir]) as staged:
        source_files.copy_tree(input_dir, staged.path, staged,
                            skip={SAVED_MODEL_PB, SAVED_MODEL_PBTXT, FINGERPRINT_PB},
                            link_dirs={"variables"} if link_variables else ())
        _write_file(staged, os.path.join(staged.path, SAVED_MODEL_PB), chunks)
        for relative, data in extra_files.items():
            path = os.path.join(staged.path, relative)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            _write_file(staged, path, [data])


def _chunks(proto, splice, layout, edits):
    """The bytes of `proto` (a SavedModel or GraphDef), in chunks: spliced from the
    input's bytes by `splice` (wire.splice_saved_model or wire.splice_graph_def) given
    their wire.Layout and the wire.Edits, or serialized whole where that cannot be done,
    or where a part the splice would copy from the input has changed since it was read
    (wire.unrecorded_edits)."""
    chunks = None
    if layout is not None and edits is not None:
        changed = wire.unrecorded_edits(layout, proto, edits)
        if changed:
            logging.warning("writing the whole model: %s changed since it was read but the "
                            "rewrite did not record it (a graphtap bug, or an input not "
                            "encoded canonically)", ", ".join(changed[:5]))
        else:
            chunks = splice(layout, proto, edits)
    if chunks is None:
        if layout is not None:
            wire.fill_stubs(layout, proto)
        return [_serialize(proto)]
    if os.environ.get(VERIFY_SPLICE_ENV) == "1":
        wire.fill_stubs(layout, proto)  # what the splice copied as read
        if type(proto).FromString(b"".join(chunks)) != proto:
            raise errors.GraphtapError(
                f"graphtap bug, please report: the spliced {type(proto).DESCRIPTOR.name} "
                "differs from the rewritten one")
    return chunks


@contextlib.contextmanager
def staged_directory(output_dir, overwrite, mark, protect=()):
    """Yields a new directory to fill, published at `output_dir` when the block ends
    without an error (staging.staged_output: `mark` names the file every such output
    holds, `protect` the inputs, each of which the caller has passed to check_output).
    Files written into it need no record: the block's caller owns them."""
    with staging.staged_output(output_dir, overwrite, mark=mark, protect=protect) as staged:
        yield staged.path


def write_graph_def(graph_def, input_path, output_path, overwrite, layout=None, edits=None):
    """Writes a GraphDef, as text if `output_path` ends in .pbtxt or .txt. layout, edits:
    as for write_saved_model."""
    check_output([input_path], output_path, overwrite, is_directory=False)
    if output_path.endswith(TEXT_SUFFIXES):
        chunks = [text_format.MessageToString(graph_def).encode("utf-8")]
    else:
        chunks = _chunks(graph_def, wire.splice_graph_def, layout, edits)
    with staging.staged_output(output_path, overwrite, is_directory=False,
                               protect=[input_path]) as staged:
        _write_file(staged, staged.path, chunks)


def _serialize(proto):
    # Deterministic serialization reproduces TensorFlow's own files byte for byte.
    return proto.SerializeToString(deterministic=True)


def _write_file(staged, path, chunks):
    """Writes `chunks` to the new file `path` in a staging.Staged (replacing a copy of the
    input's file there) and records it."""
    if os.path.lexists(path):
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    with os.fdopen(fd, "wb") as f:
        f.writelines(chunks)
        f.flush()
        staged.add(path, f.fileno())
