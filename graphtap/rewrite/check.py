"""Consistency checks on the parts of a meta graph a loader reads together.

Each part must agree with the others (the internals doc lists what fails silently when one
is skipped). The check runs on the input, where a failure means a broken model, and on the
rewritten model before anything is written, where it means a graphtap bug.
"""

import collections
import dataclasses

from graphtap import errors
from graphtap.rewrite.index import node_of, output_number
from graphtap.rewrite.op_kinds import called_function, kind_of
from graphtap.rewrite.opdefs import OpRegistry
from graphtap.rewrite.plumbing import signature_call_node


@dataclasses.dataclass(frozen=True)
class SignatureGraph:
    """What the checks read of a meta graph: its graph and {key: SignatureDef}. A frozen
    GraphDef is checked as one with one unnamed signature (key None) holding its taps."""

    graph_def: object
    signature_def: object


class _Inconsistent(Exception):
    """Raised with (what, where) by a failed check; the callers decide whose fault it is."""


def check_input(meta_graph, objects, signature_keys, path, index=None):
    """Raises CorruptModel if what `signature_keys` use is inconsistent in the input.
    `index`, a GraphIndex of it, lends the node names and calls it reads."""
    try:
        _check(meta_graph, objects, signature_keys, _Known(index, {}, ()))
    except _Inconsistent as error:
        what, where = error.args
        raise errors.CorruptModel(f"inconsistent model: {what} ({where})", path) from None


def check_output(meta_graph, objects, signature_keys, index=None, origins=None, unchanged=()):
    """Raises InternalError if the rewrite left what `signature_keys` use inconsistent.

    meta_graph: the rewritten MetaGraphDef, or for a GraphDef a SignatureGraph whose one
      signature (key None) has the taps as outputs.
    index: the GraphIndex of the input, whose names stay true of every body the rewrite
      edited, because the rewrite only appends nodes; only the appended ones are read.
    origins: {copy: function it was copied from} for the functions the rewrite cloned.
    unchanged: functions that check_input passed and the rewrite left as they were
      (their bodies are not read again; the calls to them still are checked).
    """
    try:
        _check(meta_graph, objects, signature_keys, _Known(index, origins or {}, unchanged))
    except _Inconsistent as error:
        what, where = error.args
        raise errors.InternalError(f"graphtap bug, please report: {what}", where) from None


class _Known:
    """What a check may take as already read: an index of the input, the origins of
    cloned functions, and functions whose bodies need no check."""

    def __init__(self, index, origins, trusted):
        self.index, self.origins, self.trusted = index, origins, trusted

    def functions(self, graph_def):
        """{name: FunctionDef} of the graph's library: through the index, which parses the
        functions the reader left as stubs, and, past it, those added since."""
        library = {f.signature.name: f for f in graph_def.library.function}
        return library if self.index is None else collections.ChainMap(self.index.functions,
                                                                        library)

    def registry(self, meta_graph, functions):
        """The OpRegistry to read outputs with: the index's own, over `functions`, so that
        an op it has looked up (in TensorFlow's registry, for a GraphDef) is not looked up
        again; without an index, one from the meta graph's own op list."""
        if self.index is not None:
            return self.index.registry.over(functions)
        return OpRegistry(meta_graph.meta_info_def.stripped_op_list.op, functions)

    def body(self, name, nodes):
        """The index's _Body that `nodes` (the body of function `name`, None: the outer
        graph) extends by appended nodes only, or None."""
        origin = self.origins.get(name, name)
        if self.index is None or (origin is not None and origin not in self.index.functions):
            return None
        body = self.index.body(origin)
        return body if len(nodes) >= len(body.names) else None


def _check(meta_graph, objects, signature_keys, known):
    """Checks the functions, call nodes and signatures that `signature_keys` use."""
    graph_def = meta_graph.graph_def
    functions = known.functions(graph_def)
    registry = known.registry(meta_graph, functions)
    named = {node_of(info.name) for key in signature_keys
             for info in meta_graph.signature_def[key].outputs.values()}
    outer = _outer_nodes(graph_def.node, named, known.body(None, graph_def.node))
    outputs_of = {}  # node name -> its outputs, resolved once however many signature outputs
    calls = _CallChecker(functions, known)
    for key in signature_keys:
        signature = meta_graph.signature_def[key]
        for output_key, info in signature.outputs.items():
            node_name, colon, number = info.name.rpartition(":")
            position = output_number(number)
            if not colon or position is None:
                _fail(f"signature '{key}' output '{output_key}' is no tensor name", info.name)
            node = outer.get(node_name)
            if node is None:
                _fail(f"signature '{key}' output '{output_key}' names missing node", info.name)
            if node_name not in outputs_of:
                outputs_of[node_name] = registry.outputs(node)
            outputs = outputs_of[node_name]
            if position >= len(outputs) or outputs[position].dtype != info.dtype:
                _fail(f"signature '{key}' output '{output_key}' has no such tensor", info.name)
        for node_name in sorted({node_of(info.name) for info in signature.outputs.values()}):
            calls.check(outer[node_name])
        if objects is not None and objects.node_id(key) is not None:
            _check_object_signature(key, signature, objects, functions)


def _outer_nodes(nodes, wanted, known):
    """{name: node} of the outer-graph nodes named in `wanted`."""
    found = {}
    if known is not None:
        for name in wanted:
            position = known.position.get(name)
            if position is not None and nodes[position].name == name:
                found[name] = nodes[position]
    if len(found) < len(wanted):
        found = {node.name: node for node in nodes if node.name in wanted}
    return found


class _CallChecker:
    """Checks call nodes and, once each, the functions they call."""

    def __init__(self, functions, known):
        self.functions = functions
        self.known = known
        self.checked = set(known.trusted)  # functions whose bodies need no (further) check
        self._output_types = {}

    def check(self, node):
        """The call node's Tout agrees with its callee, whose rets are well-formed; and so
        on through the calls in the callee, depth first (with a stack of its own: call
        chains may be deeper than Python's recursion limit)."""
        pending = [node]
        while pending:
            pending.extend(reversed(self._check_call(pending.pop())))

    def _check_call(self, node):
        """Checks one call node (and, the first time, its callee); returns the callee's
        call nodes to check next."""
        kind = kind_of(node)
        callee_name = kind.called(node) if kind is not None else None
        callee = self.functions.get(callee_name)
        if callee is None:
            return ()
        if callee_name not in self._output_types:
            self._output_types[callee_name] = [arg.type for arg in callee.signature.output_arg]
        output_types = self._output_types[callee_name]
        if kind.outputs_attr and list(node.attr[kind.outputs_attr].list.type) != output_types:
            _fail(f"{kind.outputs_attr} of call node '{node.name}' disagrees with "
                  f"'{callee_name}'", callee_name)
        if "_output_shapes" in node.attr and len(node.attr["_output_shapes"].list.shape) != len(
            output_types
        ):
            _fail(f"_output_shapes of call node '{node.name}' has the wrong length", callee_name)
        if callee_name in self.checked:
            return ()
        self.checked.add(callee_name)
        names = [arg.name for arg in callee.signature.output_arg]
        if sorted(names) != sorted(callee.ret):
            _fail("output args and ret disagree", callee_name)
        body, calls = self._names_and_calls(callee_name, callee)
        inputs = None  # read only if a ret names no node: a function may have hundreds
        for ref in callee.ret.values():
            if node_of(ref) not in body:
                inputs = inputs or {arg.name for arg in callee.signature.input_arg}
                if ref not in inputs:
                    _fail(f"ret names missing tensor '{ref}'", callee_name)
        return calls

    def _names_and_calls(self, name, function):
        """The body's node names, and its nodes that call a function."""
        nodes = function.node_def
        names, calls, start = set(), [], 0
        body = self.known.body(name, nodes)
        if body is not None:
            names.update(body.names)
            calls = [nodes[i] for i, refs in body.references.items()
                     if any(is_call for _, _, is_call in refs)]
            start = len(body.names)
        for inner in nodes[start:]:
            names.add(inner.name)
            if called_function(inner, self.functions) is not None:
                calls.append(inner)
        return names, calls


def _check_object_signature(key, signature, objects, functions):
    """The TF2 loader pairs sorted output keys with the function's outputs by position."""
    function_name = objects.function_name(key)
    if function_name not in functions:
        _fail(f"signature '{key}' points at missing function", function_name)
    spec = objects.graph.concrete_functions[function_name].output_signature
    declared = sorted(spec.dict_value.fields)
    if declared != sorted(signature.outputs):
        _fail(f"object graph declares outputs {declared} for signature '{key}'", function_name)
    call_name = signature_call_node(signature)
    for position, output_key in enumerate(declared):
        if signature.outputs[output_key].name != f"{call_name}:{position}":
            _fail(f"output '{output_key}' of '{key}' is not at sorted position {position}",
                  signature.outputs[output_key].name)


def _fail(what, where):
    raise _Inconsistent(what, where)
