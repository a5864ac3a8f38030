"""An index over one graph: its bodies (outer graph and functions), who calls whom, and
every tensor a signature computes, each named the way `--tap_name` matches it.

Tensor references differ by body. In the outer graph (and in frozen GraphDefs) a node's
k-th output is `node:k` (`node` for k = 0). Inside a FunctionDef it is `node:arg:i`,
with `arg` the OpDef's output-arg name; function inputs are bare arg names.
"""

import collections
import dataclasses

from graphtap import errors, protos
from graphtap.opdefs import CALL_OPS, OpRegistry

TAP_PREFIX = "graphtap/"  # names of the Identity nodes graphtap adds

# Handles, not values: no client can receive them as a signature output.
_HANDLE_DTYPES = frozenset(map(protos.dtype_enum, ("DT_RESOURCE", "DT_VARIANT")))

# One call on a path from the outer graph: node `node` in `caller` (None: outer graph)
# calls function `callee`.
Call = collections.namedtuple("Call", "caller node callee")


@dataclasses.dataclass(frozen=True, eq=False)  # identity: one object per tensor and path
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

    @property
    def name(self):
        """The name `--tap_name` matches: `node` for output 0, else `node:k`."""
        return self.node if self.output == 0 else f"{self.node}:{self.output}"

    @property
    def dims(self):
        """Static shape as a list, -1 for unknown dimensions; None for unknown rank."""
        if self.shape is None or self.shape.unknown_rank:
            return None
        return [dim.size for dim in self.shape.dim]

    @property
    def tensor_key(self):
        """Identifies the tensor in its body, the same for every call path to it."""
        return (self.function, self.node, self.output)


def node_of(tensor_ref):
    """`'^a'`, `'a'`, `'a:1'`, `'a:out:0'` -> `'a'`."""
    return tensor_ref.lstrip("^").split(":", 1)[0]


def tensor_ref(function, node, output, arg, arg_index):
    """How the body of `function` (None: a graph) refers to one output of `node`."""
    if function is not None:
        return f"{node}:{arg}:{arg_index}"
    return node if output == 0 else f"{node}:{output}"


def call_target(node, functions):
    """The function a call node runs (None if `node` is not a call)."""
    if node.op in CALL_OPS:
        return node.attr["f"].func.name
    if node.op in functions:
        return node.op
    return None


def function_attrs(node, registry):
    """Every (attr name, function name) a node refers to through attrs its OpDef types
    `func` or `list(func)` (a call node's `f`, a While's `body` and `cond`, ...)."""
    for attr_name in registry.function_attr_names(node.op):
        if attr_name not in node.attr:
            continue
        value = node.attr[attr_name]
        if value.HasField("func"):
            yield attr_name, value.func.name
        for func in value.list.func:
            yield attr_name, func.name


class GraphIndex:
    """The outer graph and function library of one meta graph or GraphDef."""

    def __init__(self, graph_def, stripped_op_list=()):
        self.graph_def = graph_def
        self.functions = {f.signature.name: f for f in graph_def.library.function}
        self.registry = OpRegistry(stripped_op_list, self.functions)
        self.outer_nodes = _unique_names(graph_def.node, "the graph")
        self._tapped_cache = {}

    def body_nodes(self, function):
        """The nodes of a function's body, or of the outer graph for None."""
        if function is None:
            return self.graph_def.node
        return self.functions[function].node_def

    def references(self, names):
        """{function: [(body, node name)]}: every node that refers to a named function,
        by calling it or through an attr; body None is the outer graph."""
        references = {name: [] for name in names}
        bodies = [(None, self.graph_def.node)]
        bodies += [(name, f.node_def) for name, f in self.functions.items()]
        for body, nodes in bodies:
            for node in nodes:
                targets = {name for _, name in function_attrs(node, self.registry)}
                targets.add(call_target(node, self.functions))
                for target in targets & references.keys():
                    references[target].append((body, node.name))
        return references

    def candidates_from(self, root_nodes, outer_tensors=True):
        """Every tensor computed to produce `root_nodes` (outer-graph node names).

        `outer_tensors=False` leaves out the outer graph's own tensors: in a TF2 signature
        those are only its inputs and the call node's outputs, and the TF2 loader takes a
        signature's outputs from its function alone.
        """
        cone = self._outer_cone(root_nodes)
        found = []
        self._collect(None, (), None, frozenset(), found, only=cone, tensors=outer_tensors)
        return found

    def all_candidates(self):
        """Every tensor of the graph (for frozen GraphDefs, which have no signatures)."""
        found = []
        self._collect(None, (), None, frozenset(), found)
        return found

    def _outer_cone(self, root_nodes):
        seen, stack = set(), list(root_nodes)
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            node = self.outer_nodes.get(name)
            if node is None:
                raise errors.CorruptModel(f"graph has no node '{name}'")
            seen.add(name)
            stack.extend(node_of(ref) for ref in node.input)
        return seen

    def _collect(self, function, calls, blocked, active, found, only=None, tensors=True):
        if function is None:
            nodes = self.graph_def.node
        else:
            if function in active:
                raise errors.CorruptModel(f"function library has a call cycle through '{function}'")
            if function not in self.functions:
                raise errors.CorruptModel(f"call to missing function '{function}'")
            nodes = self.functions[function].node_def
            active = active | {function}
        tapped = self._tapped(function)
        for node in nodes:
            if only is not None and node.name not in only:
                continue
            if tensors and not node.name.startswith(TAP_PREFIX):
                self._add_outputs(function, calls, blocked, node, tapped, found)
            callee = call_target(node, self.functions)
            if callee is not None:
                call = Call(function, node.name, callee)
                self._collect(callee, calls + (call,), blocked, active, found)
            for attr_name, name in function_attrs(node, self.registry):
                if callee is not None and attr_name == "f":
                    continue
                where = f"function '{function}'" if function else "the graph"
                reason = blocked or (
                    f"inside '{name}', the '{attr_name}' of {node.op} node '{node.name}' in "
                    f"{where}; tap the outputs of '{node.name}' instead, or leave it out with "
                    "--exclude"
                )
                call = Call(function, node.name, name)
                self._collect(name, calls + (call,), reason, active, found)

    def _tapped(self, function):
        """{tensor ref: graphtap Identity reading it} in one body, computed once per body
        however many call paths reach it (which is also when its names are checked)."""
        if function not in self._tapped_cache:
            nodes = self.body_nodes(function)
            if function is not None:
                _unique_names(nodes, f"function '{function}'")
            self._tapped_cache[function] = {
                node.input[0]: node.name for node in nodes
                if node.name.startswith(TAP_PREFIX) and node.op == "Identity" and node.input
            }
        return self._tapped_cache[function]

    def _add_outputs(self, function, calls, blocked, node, tapped, found):
        shapes = node.attr["_output_shapes"].list.shape if "_output_shapes" in node.attr else ()
        for output, (arg, arg_index, dtype) in enumerate(self.registry.outputs(node)):
            if dtype in _HANDLE_DTYPES:
                continue
            ref = tensor_ref(function, node.name, output, arg, arg_index)
            found.append(
                Candidate(
                    calls=calls,
                    function=function,
                    node=node.name,
                    op=node.op,
                    output=output,
                    arg=arg,
                    arg_index=arg_index,
                    dtype=dtype,
                    shape=shapes[output] if output < len(shapes) else None,
                    blocked=blocked,
                    tapped_by=tapped.get(ref),
                )
            )


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
