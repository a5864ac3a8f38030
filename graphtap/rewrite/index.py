"""An index over one graph: its bodies (outer graph and functions), who calls whom, and
every tensor a signature computes, each named the way `--tap_name` matches it.

Tensor references differ by body. In the outer graph (and in frozen GraphDefs) a node's
k-th output is `node:k` (`node` for k = 0). Inside a FunctionDef it is `node:arg:i`,
with `arg` the OpDef's output-arg name; function inputs are bare arg names.
"""

import bisect
import collections
import dataclasses
import functools
import re

from graphtap import errors
from graphtap.rewrite import protos, wire
from graphtap.rewrite.op_kinds import called_function, kind_of_op
from graphtap.rewrite.opdefs import OpRegistry, UndefinedOp

TAP_PREFIX = "graphtap/"  # names of the Identity nodes graphtap adds

# Handles, not values: no client can receive them as a signature output.
_HANDLE_DTYPES = frozenset(map(protos.dtype_enum, ("DT_RESOURCE", "DT_VARIANT")))

# One call on a path from the outer graph: node `node` in `caller` (None: outer graph)
# calls function `callee`.
Call = collections.namedtuple("Call", "caller node callee")


@dataclasses.dataclass(eq=False, slots=True)  # identity: one object per tensor and path
class Candidate:
    """One tensor a signature computes, reached through one call path."""

    calls: tuple  # Call, from the outer graph down to `function`
    function: str  # function holding the node; None for the outer graph
    node: str
    op: str
    output: int  # flat output index
    arg: str  # OpDef output-arg name and index in it, for in-function references
    arg_index: int
    dtype: int
    shape: object  # TensorShapeProto, or None when the model does not say
    blocked: str = None  # why it cannot be exposed, if it cannot
    tapped_by: str = None  # graphtap Identity already reading it
    layer: str = None  # the Keras layer it belongs to, where asked (layers.LayerMap)
    layer_output: bool = False  # whether it is that layer's output
    loop: str = None  # inside a While body: how it is tapped (options.LOOP_MODES)
    in_branch: bool = False  # inside an If/Case branch, and allowed
    unknown_op: bool = False  # its op is defined nowhere: outputs unknown, never tappable

    @property
    def name(self):
        """The name a name selector matches: `node` for output 0, else `node:k`."""
        return self.node if self.output == 0 else f"{self.node}:{self.output}"

    @property
    def dims(self):
        """Static shape as a list (see shape_dims)."""
        return shape_dims(self.shape)

    @property
    def tensor_key(self):
        """Identifies the tensor in its body, the same for every call path to it."""
        return (self.function, self.node, self.output)


def shape_dims(shape):
    """A TensorShapeProto as a list, -1 for unknown dimensions; None for unknown rank."""
    return None if shape is None or shape.unknown_rank else [dim.size for dim in shape.dim]


def node_of(tensor_ref):
    """`'^a'`, `'a'`, `'a:1'`, `'a:out:0'` -> `'a'`."""
    return tensor_ref.lstrip("^").split(":", 1)[0]


def output_number(text):
    """The output `text` numbers (the `3` of `node:3`), or None unless it is one to ten
    ASCII digits: int() also takes Unicode digits, signs, spaces and underscores, which
    TensorFlow does not, and refuses numbers of thousands of digits."""
    if 0 < len(text) <= 10 and text.isascii() and text.isdigit():
        return int(text)
    return None


def tensor_ref(function, node, output, arg, arg_index):
    """How the body of `function` (None: a graph) refers to one output of `node`."""
    if function is not None:
        return f"{node}:{arg}:{arg_index}"
    return node if output == 0 else f"{node}:{output}"


def argument_names(function):
    """The names of a FunctionDef's input and output arguments."""
    names = {arg.name for arg in function.signature.input_arg}
    names.update(arg.name for arg in function.signature.output_arg)
    return names


def call_target(node, functions):
    """The function a call node runs (None if `node` is not a call)."""
    return called_function(node, functions)


def function_attrs(node):
    """Every (attr name, function name) a node refers to: each attr whose value is a
    `func` or a `list(func)` (a call node's `f`, a While's `body` and `cond`, ...). Read
    from the values, not the OpDef: a model lists no OpDef for ops used only in control
    flow (see opdefs)."""
    for attr_name, value in node.attr.items():
        kind = value.WhichOneof("value")
        if kind == "func":
            yield attr_name, value.func.name
        elif kind == "list":
            for func in value.list.func:
                yield attr_name, func.name


class _Body:
    """One body's node names, ops and function references, read from the protobuf once:
    reading a field of a protobuf message costs far more than reading a Python list."""

    def __init__(self, function, nodes, functions, registry):
        self.function = function
        # A list, not the repeated field: it keeps one Python object per node alive,
        # where the container would make a new one on every access.
        self.nodes = list(nodes)
        # Not the index itself: a reference back would be a cycle, which keeps every node
        # alive until the next garbage collection.
        self._functions = functions
        self._registry = registry

    @functools.cached_property
    def ops(self):
        return [node.op for node in self.nodes]

    @functools.cached_property
    def names(self):
        """Node names; checked unique, as every reference to a name given twice is ambiguous."""
        names = [node.name for node in self.nodes]
        if len(set(names)) != len(names):
            where = f"function '{self.function}'" if self.function else "the graph"
            _unique_names(self.nodes, where)  # raises, naming the duplicate
        return names

    @functools.cached_property
    def position(self):
        """{node name: position in the body}."""
        return {name: i for i, name in enumerate(self.names)}

    @functools.cached_property
    def references(self):
        """{node position: [(attr name, function name, is a call)]} for every node that
        refers to a function: by a call op's `f`, by running it as its op type (attr name
        None), or through another func attr (a While's `body`, an If's branches, ...)."""
        functions, may_refer = self._functions, self._registry.may_refer_to_functions
        found = {}
        for i, (node, op) in enumerate(zip(self.nodes, self.ops)):
            kind = kind_of_op(op)
            call_attrs = kind.call_attrs if kind is not None else ()
            refs = ([(attr, name, attr in call_attrs) for attr, name in function_attrs(node)]
                    if may_refer(op) else [])
            if op in functions:
                refs.append((None, op, True))
            if refs:
                found[i] = refs
        return found

    @functools.cached_property
    def tapped(self):
        """{tensor ref: graphtap Identity reading it}."""
        return {
            self.nodes[i].input[0]: name
            for i, name in enumerate(self.names)
            if name.startswith(TAP_PREFIX) and self.ops[i] == "Identity" and self.nodes[i].input
        }


class FunctionLibrary(dict):
    """{name: FunctionDef} of a graph's library. A function the reader left as a stub
    (wire.stubbed) is parsed when it is first looked up, by `[]`, get, values or items.
    `in` and iteration read names only; a copy (dict(...)) would hold stubs."""

    def __init__(self, graph_def, layout=None):
        functions = graph_def.library.function
        super().__init__((f.signature.name, f) for f in functions)
        self._library = graph_def.library
        self._layout = layout
        # {name: (start, end)} of each function's bytes in the input; empty without a
        # layout, or with one the library does not match (names given twice).
        self.spans = {}
        if layout is not None and len(layout.function_records) == len(functions) == len(self):
            self.spans = dict(zip(self, layout.function_spans()))

    def __getitem__(self, name):
        function = dict.__getitem__(self, name)
        if self._layout is not None:
            wire.fill_stub(self._layout, function)
        return function

    def get(self, name, default=None):
        return self[name] if name in self else default

    def values(self):
        return [self[name] for name in self]

    def items(self):
        return [(name, self[name]) for name in self]

    def take(self, name):
        """The function `name`, for the caller to rename and edit as a copy of it; in its
        place, a stub appended to the library stands for the function as it was read,
        and the writer copies its bytes from the input. None when there are none to copy
        (the caller must then copy the function)."""
        span = self.spans.get(name)
        if span is None:
            return None
        function = self[name]
        stub = self._library.function.add()
        stub.signature.name = name
        self._layout.stubs[name] = span
        dict.__setitem__(self, name, stub)
        return function


class GraphIndex:
    """The outer graph and function library of one meta graph or GraphDef."""

    def __init__(self, graph_def, stripped_op_list=(), layout=None):
        """layout: the wire.Layout of the bytes `graph_def` was parsed from; with it, the
        index skips the nodes and functions whose bytes cannot mention a name it seeks,
        and parses the functions the layout says were left as stubs when it needs them."""
        self.graph_def = graph_def
        self.functions = FunctionLibrary(graph_def, layout)
        self.registry = OpRegistry(stripped_op_list, self.functions)
        self._bodies = {}
        self._layout = layout

    def body_nodes(self, function):
        """The nodes of a function's body, or of the outer graph for None."""
        if function is None:
            return self.graph_def.node
        return self.functions[function].node_def

    def body(self, function):
        """The _Body of a function (None: the outer graph), read once."""
        body = self._bodies.get(function)
        if body is None:
            body = self._bodies[function] = _Body(function, self.body_nodes(function),
                                                  self.functions, self.registry)
        return body

    def forget(self, function):
        """Drops what was read of a body (None: the outer graph) that has since changed."""
        self._bodies.pop(function, None)

    def references(self, names):
        """{function: [(body, node name)]}: every node that refers to a named function,
        by calling it or through an attr; body None is the outer graph."""
        references = {name: [] for name in names}
        mentioning = self._mentioning(references)
        for function in (None, *self.functions):
            if function is not None and function not in mentioning:
                continue
            body = self.body(function)
            for i, refs in body.references.items():
                for target in {name for _, name, _ in refs} & references.keys():
                    references[target].append((function, body.nodes[i].name))
        return references

    def _mentioning(self, names):
        """The functions whose bytes mention one of `names` (a function cannot refer to a
        name without holding its bytes); every function, without a layout."""
        spans = self.functions.spans
        if not spans:
            return self.functions
        if not names:
            return set()
        pattern = re.compile(b"|".join(re.escape(name.encode()) for name in names))
        data = self._layout.data
        return {name for name, (start, end) in spans.items() if pattern.search(data, start, end)}

    def outer_nodes_mentioning(self, name):
        """Positions of the outer-graph nodes that may refer to `name`: those whose bytes
        hold it, and those added since the graph was read; every node, without a layout."""
        count = len(self.graph_def.node)
        if self._layout is None:
            return range(count)
        starts, end = self._node_records
        if not starts or len(starts) > count:
            return range(count)
        pattern = re.compile(re.escape(name.encode()))
        found = {bisect.bisect_right(starts, match.start()) - 1
                 for match in pattern.finditer(self._layout.data, starts[0], end)}
        return sorted(found | set(range(len(starts), count)))

    @functools.cached_property
    def _node_records(self):
        """(where each outer-graph node's record starts in the input, where the last ends)."""
        spans = self._layout.node_spans()
        return [start for start, _ in spans], max((end for _, end in spans), default=0)

    def candidates_from(self, root_nodes, outer_tensors=True, keep=None):
        """Every tensor computed to produce `root_nodes` (outer-graph node names).

        `outer_tensors=False` leaves out the outer graph's own tensors and follows only the
        calls the root nodes themselves make: a TF2 signature's outputs are those of one
        call node, and the TF2 loader runs its function alone, not the graph around it.

        `keep`, a selectors.Prefilter, if given, says which nodes may be wanted: only their
        outputs become candidates, which spares resolving every node's outputs.
        """
        cone = self._outer_cone(root_nodes, follow_inputs=outer_tensors)
        return self._collect(cone, outer_tensors, keep)

    def all_candidates(self, keep=None):
        """Every tensor of the graph (for frozen GraphDefs, which have no signatures)."""
        return self._collect(None, True, keep)

    def _collect(self, only, tensors, keep):
        """The candidates of the outer graph's nodes in `only` (None: all), its own tensors
        if `tensors`, and everything the functions they call compute, in graph order, depth
        first. Iterative: call chains may be deeper than Python's recursion limit."""
        found = []
        frames = [self._visit(None, (), None, frozenset(), found, only, tensors, keep)]
        while frames:
            callee = next(frames[-1], None)
            if callee is None:
                frames.pop()
            else:
                frames.append(self._visit(*callee, found, None, True, keep))
        return found

    def _outer_cone(self, root_nodes, follow_inputs=True):
        """The names of the outer-graph nodes `root_nodes` and, following inputs, of every
        node they depend on."""
        body = self.body(None)
        seen, stack = set(), list(root_nodes)
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            position = body.position.get(name)
            if position is None:
                raise errors.CorruptModel(f"graph has no node '{name}'")
            seen.add(name)
            if follow_inputs:
                stack.extend(node_of(ref) for ref in body.nodes[position].input)
        return seen

    def _visit(self, function, calls, blocked, active, found, only, tensors, keep):
        """Adds the candidates of one body to `found`; yields (function, calls, blocked,
        active) for each function it calls, at the point where that function's candidates
        go (see _collect)."""
        if function is not None:
            if function in active:
                raise errors.CorruptModel(f"function library has a call cycle through '{function}'")
            if function not in self.functions:
                raise errors.CorruptModel(f"call to missing function '{function}'")
            active = active | {function}
        body = self.body(function)
        visit = set(body.references)
        if tensors:
            producers = self._producers(body, keep)
            visit.update(producers)
        for i in sorted(visit):
            name = body.names[i]
            if only is not None and name not in only:
                continue
            if tensors and i in producers:
                self._add_outputs(function, calls, blocked, body.nodes[i], body.tapped, found)
            for attr_name, callee, is_call in body.references.get(i, ()):
                reason = blocked
                if not is_call:
                    where = f"function '{function}'" if function else "the graph"
                    kind = kind_of_op(body.ops[i])
                    in_loop = kind is not None and attr_name == kind.loop_body_attr
                    loop_hint = ", tap with loop 'stack' or 'last' for its value at every (or " \
                        "the last) iteration" if in_loop else ""
                    reason = blocked or (
                        f"inside '{callee}', the '{attr_name}' of {body.ops[i]} node '{name}' in "
                        f"{where}; tap the outputs of '{name}' instead{loop_hint}, or leave it "
                        "out with exclude"
                    )
                yield callee, calls + (Call(function, name, callee),), reason, active

    def _producers(self, body, keep):
        """Positions of the body's nodes whose outputs may be candidates: not graphtap's
        own, and (with a Prefilter `keep`) possibly selected."""
        names, ops = body.names, body.ops
        if keep is None:
            return {i for i, name in enumerate(names) if not name.startswith(TAP_PREFIX)}
        wanted = keep.ops
        found = {i for i, op in enumerate(ops) if op in wanted}
        if keep.regexes:
            matches = keep.name_matches
            found.update(i for i, name in enumerate(names) if matches(name))
            found.update(self._other_outputs(body, keep))
        return {i for i in found if not names[i].startswith(TAP_PREFIX)}

    def _other_outputs(self, body, keep):
        """Positions of the body's nodes an output k > 0 of which (`node:k`) a name regex
        of `keep` full-matches. An op the model does not define (one used only in control
        flow) is looked up only for a node a regex may name that way: one with `:` in it,
        or matching `node:1`; the lookup may need TensorFlow's registry."""
        registry = self.registry
        fixed = {op: registry.fixed_output_count(op) for op in set(body.ops)
                 if registry.defines(op)}
        naming_outputs = any(":" in pattern for pattern in keep.regexes.patterns)
        matches = keep.name_matches
        for i, (name, op) in enumerate(zip(body.names, body.ops)):
            count = fixed.get(op, 0)
            if count == 1:
                continue
            if op not in fixed and not (naming_outputs or matches(f"{name}:1")):
                continue
            try:
                count = count or registry.output_count(body.nodes[i])
            except UndefinedOp:  # listed as such by _add_outputs, if selected
                continue
            if keep.output_name_matches(name, count):
                yield i

    def _add_outputs(self, function, calls, blocked, node, tapped, found):
        name, op = node.name, node.op
        try:
            outputs = self.registry.outputs(node)
        except UndefinedOp as error:
            found.append(Candidate(calls, function, name, op, 0, None, 0, 0, None,
                                   blocked=_unknown_op_reason(error), unknown_op=True))
            return
        shapes_attr = node.attr.get("_output_shapes")
        shapes = shapes_attr.list.shape if shapes_attr is not None else ()
        for output, (arg, arg_index, dtype) in enumerate(outputs):
            if dtype in _HANDLE_DTYPES:
                continue
            ref = tensor_ref(function, name, output, arg, arg_index)
            found.append(
                Candidate(
                    calls=calls,
                    function=function,
                    node=name,
                    op=op,
                    output=output,
                    arg=arg,
                    arg_index=arg_index,
                    dtype=dtype,
                    shape=shapes[output] if output < len(shapes) else None,
                    blocked=blocked,
                    tapped_by=tapped.get(ref),
                )
            )


def _unknown_op_reason(error):
    """Why a node of an op defined nowhere is not tappable: its outputs are unknown."""
    return (f"of an op with no definition at hand ({error.what}), so its outputs are "
            "unknown; a SavedModel lists none for ops it uses only inside control flow")


def _unique_names(nodes, where):
    """{name: node}; a name given twice makes every reference to it ambiguous."""
    by_name = {}
    for node in nodes:
        if node.name in by_name:
            raise errors.CorruptModel(f"two nodes named '{node.name}' in {where}")
        by_name[node.name] = node
    return by_name


def unknown_shape():
    shape = protos.TensorShapeProto()
    shape.unknown_rank = True
    return shape
