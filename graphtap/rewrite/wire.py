"""Just enough of protobuf's wire format to write a rewritten SavedModel or GraphDef by
copying the input's bytes for every part the rewrite left alone.

Serializing a SavedModel costs about as much as parsing it, and serializing a frozen
GraphDef, whose weights are constants, costs several times as much, while a tap edits a
few of its functions and outer-graph nodes. `splice_saved_model` and `splice_graph_def`
re-serialize those (and the small parts of the tapped meta graph) and copy every other
function, node and meta graph from the input. Records stay in the input's order, so when
the input was written deterministically (as TensorFlow writes it) the result is byte for
byte what `SerializeToString(deterministic=True)` of the edited message gives.

The same spans let a SavedModel be read without parsing the functions a tap never reaches
(`_traced_save` and `_traced_restore` are half of a Keras export): `stubbed` gives the
bytes to parse, with each function cut down to its name, and `fill_stub` parses one
function into its stub when it is first looked up (index.FunctionLibrary).
"""

import dataclasses

from google.protobuf.message import DecodeError

try:
    from google.protobuf import unknown_fields
except ImportError:
    unknown_fields = None

from graphtap import errors
from graphtap.rewrite import protos

_LENGTH_DELIMITED = 2

# Field numbers, from tensorflow/core/protobuf/{saved_model,meta_graph}.proto and
# tensorflow/core/framework/{graph,function}.proto.
_SAVED_MODEL_META_GRAPHS = 2
_META_GRAPH_GRAPH_DEF = 2
_GRAPH_NODE = 1
_GRAPH_LIBRARY = 2
_LIBRARY_FUNCTION = 1
_FUNCTION_SIGNATURE = 1
_OP_DEF_NAME = 1


@dataclasses.dataclass(frozen=True)
class Edits:
    """What a rewrite changed in one meta graph, beyond its small parts (signatures,
    object graph, ...), which are always re-serialized.

    functions: names of the functions, at the input's positions, whose FunctionDef changed:
      edited in place, or taken to become a clone (index.FunctionLibrary.take).
    nodes: positions of the input's outer-graph nodes that changed.
    Functions and nodes the rewrite appended are always serialized.
    """

    functions: frozenset
    nodes: frozenset


class Layout:
    """Where the parts of one graph lie in the bytes of a saved_model.pb or GraphDef file."""

    def __init__(self, data, graph_start, graph_end, meta_graph_position=None, meta_graph=None,
                 graph=None):
        """The graph is data[graph_start:graph_end]; in a SavedModel, it is the graph of
        meta graph `meta_graph_position`, whose record is `meta_graph`, in record `graph`
        of it. Raises ValueError if the graph is laid out in a way this does not follow (a
        field given twice, which protobuf merges); the message then is serialized whole."""
        self.data = data
        self.meta_graph_position = meta_graph_position
        self.meta_graph = meta_graph
        self.graph = graph
        # {name: (start, end) of its bytes} of the functions the parsed message holds as
        # stubs (see `stubbed`); fill_stub removes each one it parses.
        self.stubs = {}
        self.graph_records = records(data, graph_start, graph_end)
        self.node_count = sum(r[0] == _GRAPH_NODE for r in self.graph_records)
        libraries = [r for r in self.graph_records if r[0] == _GRAPH_LIBRARY]
        if len(libraries) > 1:
            raise ValueError("the function library is not one record")
        self.library = libraries[0] if libraries else None  # the library's record
        self.library_records = records(data, *self.library[3:]) if libraries else []
        self.function_records = [r for r in self.library_records if r[0] == _LIBRARY_FUNCTION]

    def function_spans(self):
        """[(start, end)] of each function's bytes in `data`, in library order."""
        return [(r[3], r[4]) for r in self.function_records]

    def node_spans(self):
        """[(start, end)] of each outer-graph node's record in `data`, in graph order."""
        return [(r[2], r[4]) for r in self.graph_records if r[0] == _GRAPH_NODE]


def layout(data, meta_graph_position, meta_graph_count):
    """The Layout of the graph of one meta graph in the bytes of a SavedModel, or None if it
    cannot be followed."""
    try:
        meta_graphs = [r for r in records(data) if r[0] == _SAVED_MODEL_META_GRAPHS]
        if len(meta_graphs) != meta_graph_count:
            raise ValueError("meta graphs are not one record each")
        meta_graph = meta_graphs[meta_graph_position]
        graphs = [r for r in records(data, *meta_graph[3:]) if r[0] == _META_GRAPH_GRAPH_DEF]
        if len(graphs) != 1:
            raise ValueError("the graph is not one record")
        return Layout(data, *graphs[0][3:], meta_graph_position, meta_graph, graphs[0])
    except (ValueError, IndexError):
        return None


def stubbed(data):
    """(bytes, Layout) for a SavedModel with one meta graph: the bytes of `data` with each
    function of the graph's library cut down to a stub holding only its name, to parse in
    place of `data`, and the Layout of `data`, whose `stubs` say where each function's
    bytes are. None if the model has several meta graphs, no functions, or a function
    whose name cannot be read from its bytes."""
    found = layout(data, 0, 1)  # None unless there is exactly one meta graph
    if found is None or not found.function_records:
        return None
    try:
        return _stubbed(data, found)
    except (ValueError, IndexError):  # not a valid protobuf: parsing it will say so
        return None


def _stubbed(data, found):
    """stubbed, given the Layout `found` of `data`."""
    stubs, library = {}, _Chunks(data)
    for r in found.library_records:
        if r[0] != _LIBRARY_FUNCTION:
            library.copy(r[2], r[4])
            continue
        name = _function_name(data, r[3], r[4])
        if name is None or name in stubs:
            return None
        stubs[name] = (r[3], r[4])
        library.add(length_delimited(_LIBRARY_FUNCTION, _stub(name)))
    graph = _replacing(data, *found.graph[3:], found.library, library)
    meta_graph = _replacing(data, *found.meta_graph[3:], found.graph, graph)
    saved_model = _replacing(data, 0, len(data), found.meta_graph, meta_graph)
    found.stubs = stubs
    return b"".join(saved_model.chunks), found


def _function_name(data, start, end):
    """The name of the FunctionDef in data[start:end] as protobuf parses it: its signature
    may come in several records, which protobuf merges, and the name's last occurrence
    wins. None if a name or signature record is not length-delimited (protobuf would not
    read it as one), or the name is not UTF-8."""
    name = None
    for number, wire_type, _, value_start, value_end in records(data, start, end):
        if number != _FUNCTION_SIGNATURE:
            continue
        if wire_type != _LENGTH_DELIMITED:
            return None
        for field, field_type, _, name_start, name_end in records(data, value_start, value_end):
            if field == _OP_DEF_NAME:
                if field_type != _LENGTH_DELIMITED:
                    return None
                name = (name_start, name_end)
    if not name:
        return None
    try:
        return data[name[0]:name[1]].decode("utf-8")
    except UnicodeDecodeError:
        return None


def fill_stub(layout, function):
    """Parses the bytes of `function`, if it is one of the layout's stubs, into it."""
    span = layout.stubs.pop(function.signature.name, None)
    if span is None:
        return
    try:
        function.MergeFromString(layout.data[span[0]:span[1]])
    except DecodeError as error:
        raise errors.CorruptModel(
            f"function '{function.signature.name}' is not a valid FunctionDef: {error}"
        ) from None


def fill_stubs(layout, model):
    """Parses every stub left in `model` (the SavedModel or GraphDef of `layout`)."""
    if not layout.stubs:
        return
    graph_def = (model.meta_graphs[layout.meta_graph_position].graph_def
                 if layout.meta_graph is not None else model)
    for function in graph_def.library.function:
        fill_stub(layout, function)


# Nodes whose record is larger are not checked by unrecorded_edits: measuring a message
# costs as much as serializing it, and such nodes are weights (a frozen GraphDef's Consts),
# which the pass never edits (it only appends nodes).
_LARGEST_NODE_CHECKED = 1 << 16


def unrecorded_edits(layout, model, edits):
    """Names of the functions and positions of the outer-graph nodes of the input that a
    splice with `edits` would copy as they were read although their message in `model`
    (the SavedModel or GraphDef of `layout`) no longer has the size of those bytes: an
    edit the rewrite did not record, whose old bytes the splice would write. Empty when
    every copy is faithful, as far as sizes tell: an edit that keeps a message's size
    (reordering, or renaming to a name as long) is not seen.

    Cheap: a stub is a few bytes; a parsed function or a node costs what serializing it
    would, and only those the rewrite did not edit are measured (nodes larger than
    _LARGEST_NODE_CHECKED are skipped). An input encoded other than canonically (fields
    out of order or repeated) also differs in size, and is reported the same way."""
    graph_def = (model.meta_graphs[layout.meta_graph_position].graph_def
                 if layout.meta_graph is not None else model)
    found = []
    functions = graph_def.library.function
    spans = layout.function_spans()
    for position, function in enumerate(functions):
        name = function.signature.name
        if position < len(spans) and name in edits.functions:
            continue
        if name in layout.stubs:  # copied as it was read, if still the stub it was made
            expected = len(_stub(name))
        elif position < len(spans):
            expected = spans[position][1] - spans[position][0]
        else:
            continue  # appended, so serialized
        if function.ByteSize() != expected:
            found.append(f"function '{name}'")
    node_records = [r for r in layout.graph_records if r[0] == _GRAPH_NODE]
    for position, (node, r) in enumerate(zip(graph_def.node, node_records)):
        size = r[4] - r[3]
        if position not in edits.nodes and size <= _LARGEST_NODE_CHECKED and \
                node.ByteSize() != size:
            found.append(f"node '{node.name}'")
    return found


def _stub(name):
    """The bytes of the stub `stubbed` puts in place of function `name` (without its
    library record's header)."""
    return length_delimited(_FUNCTION_SIGNATURE, length_delimited(_OP_DEF_NAME, name.encode()))


def graph_def_layout(data):
    """The Layout of the bytes of a GraphDef, or None if they cannot be followed."""
    try:
        return Layout(data, 0, len(data))
    except (ValueError, IndexError):
        return None


def records(data, start=0, end=None):
    """[(field number, wire type, record start, value start, value end)] of the fields of
    the message in data[start:end]."""
    end = len(data) if end is None else end
    found = []
    append = found.append
    position = start
    while position < end:  # the hot loop of a splice: one-byte varints read inline
        record_start = position
        tag = data[position]
        position += 1
        if tag > 0x7F:
            tag, position = _read_varint(data, record_start)
        wire_type = tag & 7
        if wire_type == _LENGTH_DELIMITED:
            length = data[position]
            if length < 0x80:
                position += 1
            elif data[position + 1] < 0x80:
                length = length & 0x7F | data[position + 1] << 7
                position += 2
            else:
                length, position = _read_varint(data, position)
            value_start, position = position, position + length
        elif wire_type == 0:
            value_start = position
            _, position = _read_varint(data, position)
        elif wire_type in (1, 5):
            value_start, position = position, position + (8 if wire_type == 1 else 4)
        else:  # groups (3, 4) do not occur in TensorFlow's protos
            raise ValueError(f"unsupported wire type {wire_type}")
        append((tag >> 3, wire_type, record_start, value_start, position))
    if position > end:
        raise ValueError("truncated message")
    return found


def splice_saved_model(layout, saved_model, edits):
    """The serialized `saved_model` (parsed from `layout.data`, then changed as `edits`
    says) as a list of chunks to write in order: spans of the input (memoryviews) where
    nothing changed, new bytes elsewhere. None if the message no longer fits the layout;
    then serialize it whole."""
    meta_graph = saved_model.meta_graphs[layout.meta_graph_position]
    if _unknown_field_count(meta_graph):
        return None  # _without_graph_def would drop them
    graph = _graph_chunks(layout, meta_graph.graph_def, edits)
    if graph is None:
        return None
    data = layout.data
    return _replacing(data, 0, len(data), layout.meta_graph,
                      _meta_graph_chunks(data, meta_graph, graph)).chunks


def splice_graph_def(layout, graph_def, edits):
    """splice_saved_model for a GraphDef file, whose Layout is `layout`."""
    graph = _graph_chunks(layout, graph_def, edits)
    return None if graph is None else graph.chunks


def _graph_chunks(layout, graph_def, edits):
    """The _Chunks of the GraphDef `graph_def`, or None if it no longer fits the layout
    or the rewrite edited a function it did not parse (which would be a graphtap bug)."""
    if edits.functions & layout.stubs.keys():
        return None
    # Elements are appended after the input's last of their field: there must be one.
    if (not layout.node_count or layout.node_count > len(graph_def.node)
            or len(layout.function_records) > len(graph_def.library.function)
            or (not layout.function_records and len(graph_def.library.function))):
        return None
    data = layout.data
    graph = _Chunks(data)
    library = _Chunks(data)
    functions = graph_def.library.function
    edited_functions = {position for position in range(len(layout.function_records))
                        if functions[position].signature.name in edits.functions}

    def write_function(out, number, function):
        span = layout.stubs.get(function.signature.name)
        if span is None:
            out.add_message(number, function)
        else:  # a function moved as it was read (index.FunctionLibrary.take)
            out.copy_as(number, *span)

    _add_records(library, layout.library_records, _LIBRARY_FUNCTION,
                 len(layout.function_records), functions, edited_functions,
                 lambda r: library.copy(r[2], r[4]),  # gradients
                 write_function)

    def other(r):  # versions, debug_info: never edited
        if r[0] == _GRAPH_LIBRARY:
            graph.nest(_GRAPH_LIBRARY, library)
        else:
            graph.copy(r[2], r[4])

    _add_records(graph, layout.graph_records, _GRAPH_NODE, layout.node_count, graph_def.node,
                 edits.nodes, other)
    return graph


def _replacing(data, start, end, record, inner):
    """The _Chunks of the message in data[start:end] with its record `record` (from
    `records`) holding the _Chunks `inner` instead of what it held."""
    out = _Chunks(data)
    out.copy(start, record[2])
    out.nest(record[0], inner)
    out.copy(record[4], end)
    return out


class _Chunks:
    """A serialized message under construction: spans of the input (adjacent ones merge
    into one) and new bytes. Nothing is joined: joining would copy megabytes."""

    def __init__(self, data):
        self.data = data
        self.parts = []  # bytes, or [start, end] of a span of `data`
        self.size = 0

    def copy(self, start, end):
        last = self.parts[-1] if self.parts else None
        if type(last) is list and last[1] == start:
            last[1] = end
        else:
            self.parts.append([start, end])
        self.size += end - start

    def add(self, payload):
        self.parts.append(payload)
        self.size += len(payload)

    def nest(self, number, inner):
        """Adds `inner` (a _Chunks of the same input) as length-delimited field `number`."""
        self.add(_header(number, inner.size))
        self.parts.extend(inner.parts)
        self.size += inner.size

    def copy_as(self, number, start, end):
        """Adds data[start:end] as length-delimited field `number`."""
        self.add(_header(number, end - start))
        self.copy(start, end)

    def add_message(self, number, message):
        self.add(length_delimited(number, message.SerializeToString(deterministic=True)))

    @property
    def chunks(self):
        """The message's bytes, in order, as bytes and memoryviews of the input."""
        view = memoryview(self.data)
        return [view[part[0]:part[1]] if type(part) is list else part for part in self.parts]


def _meta_graph_chunks(data, meta_graph, graph):
    """The meta graph's fields with the _Chunks `graph` as its graph_def: everything but
    the graph is small, so it is serialized and the graph put in its place."""
    rest = _without_graph_def(meta_graph).SerializeToString(deterministic=True)
    out, inserted = _Chunks(data), False
    for number, _, record_start, _, value_end in records(rest):
        if number > _META_GRAPH_GRAPH_DEF and not inserted:
            out.nest(_META_GRAPH_GRAPH_DEF, graph)
            inserted = True
        out.add(rest[record_start:value_end])
    if not inserted:
        out.nest(_META_GRAPH_GRAPH_DEF, graph)
    return out


def _unknown_field_count(message):
    """How many fields of `message` itself its message class does not know."""
    if unknown_fields is None:  # protobuf before 4.22
        return len(message.UnknownFields())
    return len(unknown_fields.UnknownFieldSet(message))


def _without_graph_def(meta_graph):
    """A MetaGraphDef with every field of `meta_graph` but its graph_def (copied field by
    field: copying the whole message would copy the graph). Every field of a MetaGraphDef
    is a message, a map or a repeated field, all of which merge."""
    shell = protos.MetaGraphDef()
    for field, value in meta_graph.ListFields():
        if field.number != _META_GRAPH_GRAPH_DEF:
            getattr(shell, field.name).MergeFrom(value)
    return shell


def _add_records(out, message_records, number, count, elements, edited, other,
                 write=_Chunks.add_message):
    """Adds the records of a message to `out`: the `count` of repeated field `number`
    (whose messages are `elements`) as spans of the input, or written by
    `write(out, number, element)` at the positions in `edited`, then, after the last, the
    elements appended past the input's; `other(record)` adds each record of another field."""
    if count and all(r[0] != number for r in message_records[count:]):
        # The usual layout, the field's `count` records first: visit only the edited ones.
        _add_leading_records(out, message_records[:count], number, elements, edited, write)
        for r in message_records[count:]:
            other(r)
        return
    position = 0
    span = None  # [start, end] of the unedited records not yet added
    for r in message_records:  # one pass over every node: kept to plain list work
        if r[0] == number and position not in edited:
            if span is None:
                span = [r[2], r[4]]
            else:
                span[1] = r[4]  # consecutive records are adjacent in the input
            position += 1
        else:
            if span is not None:
                out.copy(*span)
                span = None
            if r[0] != number:
                other(r)
                continue
            write(out, number, elements[position])
            position += 1
        if position == count:
            if span is not None:
                out.copy(*span)
                span = None
            for appended in range(count, len(elements)):
                write(out, number, elements[appended])
            position += 1  # past count: appended only once
    if span is not None:
        out.copy(*span)


def _add_leading_records(out, element_records, number, elements, edited, write):
    """_add_records for a message whose first records are all of field `number`."""
    start = 0  # the first record not yet added
    for position in sorted(p for p in edited if p < len(element_records)):
        if position > start:
            out.copy(element_records[start][2], element_records[position - 1][4])
        write(out, number, elements[position])
        start = position + 1
    if start < len(element_records):
        out.copy(element_records[start][2], element_records[-1][4])
    for appended in range(len(element_records), len(elements)):
        write(out, number, elements[appended])


def length_delimited(number, payload):
    """The record of field `number` holding `payload` (a message's or a string's bytes)."""
    return _header(number, len(payload)) + payload


def _header(number, size):
    """The tag and length that begin a length-delimited record of field `number`."""
    return _varint(number << 3 | _LENGTH_DELIMITED) + _varint(size)


_ONE_BYTE = [bytes((value,)) for value in range(0x80)]


def _varint(value):
    if value < 0x80:
        return _ONE_BYTE[value]
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data, position):
    result = shift = 0
    while True:
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, position
        shift += 7
