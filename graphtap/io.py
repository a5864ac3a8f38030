"""Reading models and writing them atomically.

The input is only ever read. Output is assembled in a hidden temporary directory (or
file) beside its destination and renamed into place once complete, so an interrupted
run leaves either the whole output or nothing under the output's name.
"""

import contextlib
import dataclasses
import os
import secrets
import shutil
import tempfile

from google.protobuf import message, text_format

from graphtap import errors, protos, wire

SAVED_MODEL_PB = "saved_model.pb"
SAVED_MODEL_PBTXT = "saved_model.pbtxt"
FINGERPRINT_PB = "fingerprint.pb"
VARIABLES_INDEX = os.path.join("variables", "variables.index")
TEXT_SUFFIXES = (".pbtxt", ".txt")
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
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as error:
        raise errors.NotAModel(f"cannot read: {error.strerror}", path) from None
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


def check_output(input_path, output_path, overwrite):
    """Refuses outputs that would overwrite, or lie inside, or contain the input."""
    source = os.path.realpath(input_path)
    target = os.path.realpath(output_path)
    if target == source or target.startswith(source.rstrip(os.sep) + os.sep):
        raise errors.OutputInsideInput("output is the input or lies inside it", output_path)
    if source.startswith(target.rstrip(os.sep) + os.sep):
        raise errors.OutputInsideInput("output contains the input", output_path)
    if os.path.lexists(output_path) and not overwrite:
        raise errors.OutputExists("output exists; pass --overwrite to replace it", output_path)


def write_saved_model(saved_model, input_dir, output_dir, extra_files, overwrite,
                      layout=None, edits=None):
    """Writes `saved_model` with the input's other files (variables, assets: hard-linked
    where the filesystem allows) and `extra_files` ({relative path: bytes}).

    layout, edits: the wire.Layout of the bytes `saved_model` was parsed from, and a
      wire.Edits of what has changed since; the unchanged parts are then copied from
      those bytes, not serialized again.

    `fingerprint.pb` is not carried over: it holds checksums of the old protobuf.
    """
    chunks = _chunks(saved_model, wire.splice_saved_model, layout, edits)
    check_output(input_dir, output_dir, overwrite)
    with staged_directory(output_dir, overwrite) as staging:
        skip = {SAVED_MODEL_PB, SAVED_MODEL_PBTXT, FINGERPRINT_PB}
        for name in sorted(os.listdir(input_dir)):
            if name in skip:
                continue
            source, target = os.path.join(input_dir, name), os.path.join(staging, name)
            if os.path.isdir(source):
                shutil.copytree(source, target, copy_function=_link_or_copy)
            else:
                _link_or_copy(source, target)
        _write_file(os.path.join(staging, SAVED_MODEL_PB), *chunks)
        for relative, data in extra_files.items():
            path = os.path.join(staging, relative)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if os.path.exists(path):
                os.unlink(path)  # may be a hard link to the input's file
            _write_file(path, data)


def _chunks(proto, splice, layout, edits):
    """The bytes of `proto` (a SavedModel or GraphDef), in chunks: spliced from the
    input's bytes by `splice` (wire.splice_saved_model or wire.splice_graph_def) given
    their wire.Layout and the wire.Edits, or serialized whole where that cannot be done."""
    chunks = None
    if layout is not None and edits is not None:
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
def staged_directory(output_dir, overwrite):
    """Yields a new directory beside `output_dir` to fill; renames it to `output_dir` when
    the block ends without an error, and removes it otherwise."""
    if os.path.lexists(output_dir) and not overwrite:
        raise errors.OutputExists("output exists; pass --overwrite to replace it", output_dir)
    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    _remove_abandoned(parent, os.path.basename(output_dir))
    staging = _create_staged(output_dir, _make_dir)
    try:
        yield staging
        _publish_dir(staging, output_dir, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_graph_def(graph_def, input_path, output_path, overwrite, layout=None, edits=None):
    """Writes a GraphDef, as text if `output_path` ends in .pbtxt or .txt. layout, edits:
    as for write_saved_model."""
    check_output(input_path, output_path, overwrite)
    if output_path.endswith(TEXT_SUFFIXES):
        chunks = [text_format.MessageToString(graph_def).encode("utf-8")]
    else:
        chunks = _chunks(graph_def, wire.splice_graph_def, layout, edits)
    parent = os.path.dirname(os.path.abspath(output_path))
    os.makedirs(parent, exist_ok=True)
    _remove_abandoned(parent, os.path.basename(output_path))
    fd, staging = _create_staged(output_path, _make_file)
    try:
        with os.fdopen(fd, "wb") as f:
            _write_all(f, chunks)
        if overwrite:
            os.replace(staging, output_path)
        else:
            _link_exclusive(staging, output_path)
    finally:
        if os.path.lexists(staging):
            os.unlink(staging)


def _create_staged(output_path, create):
    """`create(path)` for a new name beside `output_path` (see _staging_prefix). Unlike
    mkdtemp's 0700 and mkstemp's 0600, `create` asks for the usual modes and the kernel
    applies the umask, so other users can read the output as they could any new file."""
    parent = os.path.dirname(os.path.abspath(output_path))
    for _ in range(100):
        path = os.path.join(parent, _staging_prefix(output_path) + secrets.token_hex(6))
        try:
            return create(path)
        except FileExistsError:
            continue
    raise errors.OutputExists("no free name to stage the output beside it", output_path)


def _make_dir(path):
    os.mkdir(path, 0o777)
    return path


def _make_file(path):
    """(a descriptor open for writing, `path`)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    return os.open(path, flags, 0o666), path


def _staging_prefix(output_path):
    """Names what a write stages beside `output_path`: `.NAME.graphtap-PID-...`."""
    return f".{os.path.basename(output_path)}.graphtap-{os.getpid()}-"


def _remove_abandoned(parent, name):
    """Removes what writes of `name` staged in `parent` and left behind when their process
    was killed: the pid in each staged name tells whether its writer still runs."""
    prefix = f".{name}.graphtap-"
    for entry in os.listdir(parent) if os.path.isdir(parent) else ():
        pid = entry[len(prefix):].split("-", 1)[0] if entry.startswith(prefix) else ""
        if not pid.isdigit() or _running(int(pid)):
            continue
        path = os.path.join(parent, entry)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _running(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


def _serialize(proto):
    # Deterministic serialization reproduces TensorFlow's own files byte for byte.
    return proto.SerializeToString(deterministic=True)


def _write_file(path, *chunks):
    with open(path, "wb") as f:
        _write_all(f, chunks)


def _write_all(f, chunks):
    """Writes `chunks` to the open file `f` and waits until they are on disk."""
    f.writelines(chunks)
    f.flush()
    os.fsync(f.fileno())


def _link_or_copy(source, target):
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
    return target


def _link_exclusive(staging, output_path):
    try:
        os.link(staging, output_path)  # fails, atomically, if the output appeared meanwhile
    except FileExistsError:
        raise errors.OutputExists("output exists; pass --overwrite to replace it",
                                  output_path) from None


def _publish_dir(staging, output_dir, overwrite):
    if os.path.lexists(output_dir):
        if not overwrite:
            raise errors.OutputExists("output exists; pass --overwrite to replace it", output_dir)
        old = tempfile.mkdtemp(prefix=_staging_prefix(output_dir) + "old-",
                               dir=os.path.dirname(staging))
        os.rename(output_dir, os.path.join(old, "previous"))
        os.rename(staging, output_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        try:
            os.rename(staging, output_dir)
        except OSError:  # an empty directory appeared under the name meanwhile
            raise errors.OutputExists("output exists; pass --overwrite to replace it",
                                      output_dir) from None
