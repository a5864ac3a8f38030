"""The pass: expose selected tensors as signature outputs.

For each tapped tensor, an `Identity` named `graphtap/<node>` is added beside it, in the
function that holds it; the Identity becomes an output of that function, and each call
node on the way up gets one more output (`Tout`, `_output_shapes`) that its caller
re-exports, until the outer graph's call node carries it and the SignatureDef names it.

Functions are copy-on-write: one that is referred to from anywhere off the tapped paths
(another signature, a tf.function object in the SavedObjectGraph, a caller that is itself
copied) is cloned under a new name and only the tapped path is re-pointed at the clone,
so everything else stays byte-identical.

TF2 loaders flatten a signature's outputs in sorted-key order and pair them with the
signature function's outputs by position, so the signature function's outputs are kept
in sorted-key order; SignatureDef tensor names are updated to match.
"""

import collections
import dataclasses
import types
import typing

from graphtap import errors
from graphtap.rewrite import control_flow, protos, wire
from graphtap.rewrite.index import (
    TAP_PREFIX,
    argument_names,
    node_of,
    output_number,
    tensor_ref,
    unknown_shape,
)
from graphtap.rewrite.keys import fresh_names, sanitize, unique_name
from graphtap.rewrite.nodes import NewOutput
from graphtap.rewrite.op_kinds import CALL_OPS, kind_of

_LIST_SHAPE_FIELD = (protos.AttrValue.DESCRIPTOR.nested_types_by_name["ListValue"]
                     .fields_by_name["shape"].number)


@dataclasses.dataclass(frozen=True)
class Tap:
    """One tensor exposed under one key of one signature (signature None: a GraphDef).
    The rewrite's result holds a copy of each with the last three fields filled in."""

    signature: str
    key: str
    candidate: object  # index.Candidate
    tensor: str = None  # graph tensor the signature output names
    identity: str = None  # the Identity node added
    function: str = None  # function holding the Identity after the rewrite (None: graph)

    @property
    def shape(self):
        """The output's static shape: the tensor's, or a loop tap's (control_flow.tap_shape)."""
        if self.candidate.loop or self.candidate.in_branch:
            return control_flow.tap_shape(self.candidate)
        return self.candidate.shape


class SignatureObjects:
    """The SavedObjectGraph side of TF2 signatures: which bare concrete function each
    signature key points at, and that function's declared outputs."""

    def __init__(self, object_graph):
        self.graph = object_graph
        self._signatures_node = None
        for child in object_graph.nodes[0].children if object_graph.nodes else ():
            if child.local_name == "signatures":
                self._signatures_node = object_graph.nodes[child.node_id]

    def _child(self, key):
        for child in self._signatures_node.children if self._signatures_node else ():
            if child.local_name == key:
                return child
        return None

    def node_id(self, key):
        child = self._child(key)
        return None if child is None else child.node_id

    def function_name(self, key):
        node_id = self.node_id(key)
        return self.graph.nodes[node_id].bare_concrete_function.concrete_function_name

    def add_signature(self, key, like):
        """Adds signature `key` pointing at the same function as signature `like`."""
        node = self.graph.nodes.add()
        node.CopyFrom(self.graph.nodes[self.node_id(like)])
        child = self._signatures_node.children.add()
        child.node_id = len(self.graph.nodes) - 1
        child.local_name = key

    def point_at(self, key, function_name):
        """Points signature `key` at `function_name`, declared like the function it replaces."""
        child = self._child(key)
        old_name = self.function_name(key)
        shared = sum(c.node_id == child.node_id for n in self.graph.nodes for c in n.children)
        if shared > 1:  # the node also serves another key: give `key` a node of its own
            node = self.graph.nodes.add()
            node.CopyFrom(self.graph.nodes[child.node_id])
            child.node_id = len(self.graph.nodes) - 1
        function = self.graph.nodes[child.node_id].bare_concrete_function
        function.concrete_function_name = function_name
        self.graph.concrete_functions[function_name].CopyFrom(
            self.graph.concrete_functions[old_name]
        )

    def add_outputs(self, key, taps):
        """Declares each tap as an output of signature `key`'s function."""
        spec = self.graph.concrete_functions[self.function_name(key)].output_signature
        for tap in taps:
            tensor_spec = spec.dict_value.fields[tap.key].tensor_spec_value
            tensor_spec.name = tap.key
            tensor_spec.dtype = tap.candidate.dtype
            tensor_spec.shape.CopyFrom(tap.shape or unknown_shape())

    def object_references(self):
        """{function name: [node ids]} of every function the object graph refers to."""
        references = collections.defaultdict(list)
        for node_id, node in enumerate(self.graph.nodes):
            kind = node.WhichOneof("kind")
            if kind == "function":
                for name in node.function.concrete_functions:
                    references[name].append(node_id)
            elif kind == "bare_concrete_function":
                references[node.bare_concrete_function.concrete_function_name].append(node_id)
        return references


def signature_call_node(signature_def):
    """The outer call node that computes every output of a TF2 signature, or None."""
    nodes = {node_of(info.name) for info in signature_def.outputs.values()}
    return nodes.pop() if len(nodes) == 1 else None


def add_signature(graph_def, signature_defs, objects, source, new):
    """`add` mode: signature `new`, a copy of `source` computed by its own call node, so
    that `source` and everything it uses stay untouched by the taps added to `new`."""
    signature = signature_defs[new]
    signature.CopyFrom(signature_defs[source])
    if objects is None or objects.node_id(source) is None:
        return  # a flat TF1 signature names graph tensors directly
    call_name = signature_call_node(signature)
    call = graph_def.node.add()
    call.CopyFrom(next(n for n in graph_def.node if n.name == call_name))
    # A signature name may hold any character; a node name only TensorFlow's few.
    call.name = unique_name(TAP_PREFIX + sanitize(new), {n.name for n in graph_def.node})
    for info in signature.outputs.values():
        info.name = call.name + info.name[len(call_name):]
    objects.add_signature(new, like=source)


@dataclasses.dataclass(frozen=True)
class RewriteResult:
    """What TapRewrite.apply did to the graph."""

    taps: tuple  # Tap, each with where it ended up
    edited_in_place: frozenset  # functions of the input whose own body changed
    origins: typing.Mapping  # {clone: the function of the input it copies}
    edited_nodes: frozenset  # positions of the input's outer-graph nodes that changed

    @property
    def edits(self):
        """The wire.Edits of the input's records that changed: the functions edited in
        place, those taken to become a clone (index.FunctionLibrary.take), and the nodes."""
        return wire.Edits(functions=frozenset(self.edited_in_place | self.origins.keys()),
                          nodes=self.edited_nodes)


class _CallSite(typing.NamedTuple):
    """A node on a tapped path that runs `callee`, in the body of `function` (None: the
    outer graph), whose nodes are `nodes` and node names `names` (which grows)."""

    function: str
    nodes: object  # the repeated NodeDef field of the body
    node: object  # NodeDef
    callee: str  # as in the input
    callee_name: str  # what the rewrite edited: the callee or its clone
    names: set


class TapRewrite:
    """Applies taps to one graph in place, and says what it did (RewriteResult).
    `signature_defs` and `objects` are None for a GraphDef; `objects` is None for TF1
    SavedModels."""

    def __init__(self, index, signature_defs=None, objects=None, loop=None):
        self.index = index
        self.graph_def = index.graph_def
        self.signature_defs = signature_defs
        self.objects = objects
        self.functions = index.functions
        self._bodies = collections.ChainMap({}, self.functions)  # and the clones, once made
        self._output_counts = {}  # of the functions on the paths, before `apply` adds any
        self._edited_nodes = set()  # positions of the outer-graph nodes `apply` changed
        self._new_outputs = {}  # {function: [NewOutput]} of the bodies edited so far
        self._clones = {}
        self.loop = loop  # options.LOOP_MODES: how taps inside While bodies come out
        self._shape_records = {}
        self._loop_bodies = set()

    def apply(self, taps):
        """Rewrites the graph so that every tap is an output; returns a RewriteResult,
        whose taps are copies of `taps` with their names filled in."""
        calls_on_path = {}
        for tap in taps:
            for call in tap.candidate.calls:
                if calls_on_path.setdefault((call.caller, call.node), call.callee) != call.callee:
                    raise errors.NotTappable(
                        f"taps in two functions run by node '{call.node}' (two branches of an "
                        "If/Case, or a While's body and condition): tap them in two runs")
        local = collections.defaultdict(dict)
        for tap in taps:
            c = tap.candidate
            local[c.function][(c.node, c.output)] = c

        self._calls_by_caller = collections.defaultdict(list)
        for (caller, node_name), callee in calls_on_path.items():
            self._calls_by_caller[caller].append((node_name, callee))
        self._loop_bodies = {
            callee for (caller, node_name), callee in calls_on_path.items()
            if kind_of(self._node(caller, node_name)).edge(self._node(caller, node_name),
                                                          callee) == "body"
        }
        self._output_counts = {function: len(self.functions[function].signature.output_arg)
                               for function in set(calls_on_path.values())}
        clones = self._plan_clones(calls_on_path, taps)
        order = _callees_first(calls_on_path)
        self._clones = clones
        out_index = {}
        identities = {}
        for function in order + [None]:
            body = self._body(function, clones)
            outputs, identities[function] = self._edit_body(
                function, body, local[function], calls_on_path, clones
            )
            self._new_outputs[function] = outputs
            base = self._output_counts[function] if function else 0
            out_index[function] = {output.source: base + i for i, output in enumerate(outputs)}

        outer_names = {n.name for n in self.graph_def.node} if self.signature_defs is None else None
        placed = []
        for tap in taps:
            c = tap.candidate
            identity = identities[c.function][(c.node, c.output)]
            if not c.calls:
                tensor = f"{identity}:0"
            else:
                index = out_index[c.function][("local", c.node, c.output)]
                for call in reversed(c.calls[1:]):
                    index = out_index[call.caller][("call", call.node, index)]
                tensor = f"{c.calls[0].node}:{index}"
                if self.signature_defs is None:  # a GraphDef: give the tap a node of its own
                    tensor = self._outer_identity(tap, tensor, outer_names)
            # Built directly: dataclasses.replace inspects the fields on every call, which
            # shows on thousands of taps.
            placed.append(Tap(tap.signature, tap.key, c, tensor, identity,
                              clones.get(c.function, c.function)))
        if self.signature_defs is not None:
            placed = self._update_signatures(placed, clones)
        return RewriteResult(
            taps=tuple(placed),
            edited_in_place=frozenset(f for f in order if f not in clones),
            origins=types.MappingProxyType({clone: f for f, clone in clones.items()}),
            edited_nodes=frozenset(self._edited_nodes),
        )

    def _node(self, function, node_name):
        """A node of the input, by body and name."""
        body = self.index.body(function)
        return body.nodes[body.position[node_name]]

    def _outer_identity(self, tap, tensor, outer_names):
        """An outer-graph Identity of a tap's `tensor`, which a call node brings out of a
        function, so that a converter's output_arrays can name it. Adds its name to
        `outer_names`."""
        identity = self.graph_def.node.add()
        identity.name = unique_name(TAP_PREFIX + tap.key, outer_names)
        outer_names.add(identity.name)
        identity.op = "Identity"
        identity.input.append(tensor)
        outer = self.index.body(None)
        identity.device = outer.nodes[outer.position[tap.candidate.calls[0].node]].device
        identity.attr["T"].type = tap.candidate.dtype
        return f"{identity.name}:0"

    def _body(self, function, clones):
        if function is None:
            return None
        if function in clones:
            # Taken: the function itself becomes the copy, which spares copying it.
            clone = self.functions.take(function)
            if clone is None:
                clone = self.graph_def.library.function.add()
                clone.CopyFrom(self.functions[function])
            clone.signature.name = clones[function]
            self._bodies[clone.signature.name] = clone
            return clone
        return self.functions[function]

    def _plan_clones(self, calls_on_path, taps):
        """{function: clone name} for every function on a path that must be copied."""
        on_path = set(calls_on_path.values())
        own_objects = collections.defaultdict(set)
        if self.objects is not None:
            node_ids = {key: self.objects.node_id(key) for key in {tap.signature for tap in taps}}
            for tap in taps:
                if tap.candidate.calls and node_ids[tap.signature] is not None:
                    own_objects[tap.candidate.calls[0].callee].add(node_ids[tap.signature])
        references = self._references(on_path)
        decided = {}
        taken = set(self.functions)
        clones = {}
        for function in sorted(on_path):
            if _must_clone(references, calls_on_path, own_objects, decided, function):
                clones[function] = unique_name(f"{function}_graphtap", taken)
                taken.add(clones[function])
        return clones

    def _references(self, names):
        """{function: [(kind, where, node)]} for every reference to the named functions."""
        references = {
            name: [("node", body, node) for body, node in nodes]
            for name, nodes in self.index.references(names).items()
        }
        for gradient in self.graph_def.library.gradient:
            for name in (gradient.function_name, gradient.gradient_func):
                if name in references:
                    references[name].append(("gradient", None, None))
        if self.objects is not None:
            for name, node_ids in self.objects.object_references().items():
                if name in references:
                    references[name].extend(("object", node_id, None) for node_id in node_ids)
        return references

    def _edit_body(self, function, body, targets, calls_on_path, clones):
        """Adds the Identities and re-exports for one body; returns its new outputs
        [NewOutput] and {(node, output): Identity name}."""
        nodes = body.node_def if body is not None else self.graph_def.node
        indexed = self.index.body(function)  # a clone's nodes are in its original's order
        names = set(indexed.names)
        outputs, identities = [], {}
        for (node_name, output), candidate in sorted(targets.items()):
            identity = nodes.add()
            identity.name = unique_name(TAP_PREFIX + candidate.name.replace(":", "_"), names)
            names.add(identity.name)
            identity.op = "Identity"
            identity.input.append(
                tensor_ref(function, node_name, output, candidate.arg, candidate.arg_index)
            )
            # Placed with its input: a TF1 graph pinned to devices keeps the tensor there.
            identity.device = indexed.nodes[indexed.position[node_name]].device
            identity.attr["T"].type = candidate.dtype
            if candidate.shape is not None:
                identity.attr["_output_shapes"].list.shape.add().CopyFrom(candidate.shape)
            identities[(node_name, output)] = identity.name
            if function is not None:
                outputs.append(NewOutput(("local", node_name, output), candidate.dtype,
                                         candidate.shape, f"{identity.name}:output:0"))
        calls_here = sorted(
            (indexed.position[node_name], callee)
            for node_name, callee in self._calls_by_caller[function]
        )
        for position, callee in calls_here:
            node = nodes[position]
            if function is None:
                self._edited_nodes.add(position)
            site = _CallSite(function, nodes, node, callee, clones.get(callee, callee), names)
            outputs += kind_of(node).rewire(self, site)
        if function is not None:
            outputs = self._with_refs(outputs, clones, calls_on_path, function)
            if function in self._loop_bodies:
                control_flow.add_body_outputs(body, outputs, self.loop, names)
            else:
                self._add_function_outputs(body, outputs)
        return outputs, identities

    def rewire_call(self, site):
        """A call node (by a call op, or by name) calls the callee's copy, if it was copied,
        and has its new outputs (op_kinds.CallerKind.rewire)."""
        node, callee = site.node, site.callee
        new_outputs = self._new_outputs[callee]
        is_call_op = node.op in CALL_OPS
        if is_call_op:
            node.attr["f"].func.name = site.callee_name
            node.attr["Tout"].list.type.extend(output.dtype for output in new_outputs)
        else:
            node.op = site.callee_name
        if "_output_shapes" in node.attr:
            unknown = unknown_shape()
            node.attr["_output_shapes"].list.MergeFromString(b"".join(
                self._shape_record(output.shape or unknown) for output in new_outputs))
        return [NewOutput(("call", node.name, i), output.dtype, output.shape,
                          f"{node.name}:output:{i}" if is_call_op else None)
                for i, output in enumerate(new_outputs, self._output_counts[callee])]

    def rewire_branch(self, site):
        """An If/Case node runs the taken branch's copy and a copy of each other branch
        that returns empty tensors in place of the new outputs (control_flow.wire_branch)."""
        return control_flow.wire_branch(self.graph_def, self._bodies, site.node, site.callee,
                                        site.callee_name, self._new_outputs[site.callee],
                                        self._output_counts[site.callee])

    def rewire_loop(self, site):
        """Gives While `node` the loop variables that bring its body's new outputs out,
        pointing it at the (copied) body and at a copy of its condition that takes them."""
        node, body = site.node, site.callee
        node.attr["body"].func.name = site.callee_name
        exposed = control_flow.wire_loop(site.nodes, site.function, node,
                                         self._new_outputs[body], self._output_counts[body],
                                         self.loop, site.names)
        cond = self.graph_def.library.function.add()
        cond.CopyFrom(self._bodies[node.attr["cond"].func.name])
        cond.signature.name = unique_name(f"{node.attr['cond'].func.name}_graphtap", self._bodies)
        self._bodies[cond.signature.name] = cond
        carried = list(node.attr["T"].list.type)[len(cond.signature.input_arg):]
        control_flow.add_cond_inputs(cond, carried)
        node.attr["cond"].func.name = cond.signature.name
        return exposed

    def _with_refs(self, outputs, clones, calls_on_path, function):
        """`outputs` with every ref filled in: a call by op name names its outputs after
        the callee's output args."""
        filled = []
        for output in outputs:
            if output.ref is None:
                _, node_name, index = output.source
                callee = calls_on_path[(function, node_name)]
                callee_def = self._bodies[clones.get(callee, callee)]
                output = output._replace(
                    ref=f"{node_name}:{callee_def.signature.output_arg[index].name}:0")
            filled.append(output)
        return filled

    def _shape_record(self, shape):
        """A TensorShapeProto as a record of AttrValue.ListValue's `shape`, serialized once
        however many call nodes declare it: appending bytes costs less than a copy each."""
        cached = self._shape_records.get(id(shape))
        if cached is None:  # holding `shape` in the cache keeps its id its own
            record = wire.length_delimited(_LIST_SHAPE_FIELD, shape.SerializeToString())
            cached = self._shape_records[id(shape)] = (record, shape)
        return cached[0]

    def _add_function_outputs(self, body, outputs):
        new_names = fresh_names("graphtap_tap", argument_names(body))
        output_args, rets = body.signature.output_arg, body.ret
        for _, dtype, _, ref in outputs:
            name = next(new_names)
            output_args.add(name=name, type=dtype)
            rets[name] = ref

    def _update_signatures(self, taps, clones):
        """Names the taps in their signatures; returns the taps with the tensors that
        the signatures name in the end (sorting a TF2 signature's outputs moves them)."""
        by_signature = collections.defaultdict(list)
        for tap in taps:
            by_signature[tap.signature].append(tap)
        for key, signature_taps in by_signature.items():
            signature = self.signature_defs[key]
            for tap in signature_taps:
                info = signature.outputs[tap.key]
                info.name = tap.tensor
                info.dtype = tap.candidate.dtype
                info.tensor_shape.CopyFrom(tap.shape or unknown_shape())
            if self.objects is None or self.objects.node_id(key) is None:
                continue
            wrapper = self.objects.function_name(key)
            if wrapper in clones:
                self.objects.point_at(key, clones[wrapper])
            self.objects.add_outputs(key, signature_taps)
            self._sort_outputs(key)
        return [Tap(tap.signature, tap.key, tap.candidate,
                    self.signature_defs[tap.signature].outputs[tap.key].name, tap.identity,
                    tap.function) for tap in taps]

    def _sort_outputs(self, key):
        """Puts the signature function's outputs in sorted-key order (see module doc)."""
        signature = self.signature_defs[key]
        call_name = signature_call_node(signature)
        if call_name is None:
            raise errors.CorruptModel(f"outputs of TF2 signature '{key}' come from several nodes")
        position = {}
        for output_key, info in signature.outputs.items():
            position[output_number(info.name.rsplit(":", 1)[1])] = output_key
        wrapper = self._bodies[self.objects.function_name(key)]
        count = len(wrapper.signature.output_arg)
        if sorted(position) != list(range(count)):
            raise errors.CorruptModel(
                f"signature '{key}' does not name every output of its function")
        order = sorted(range(count), key=position.get)
        if order == list(range(count)):
            return
        new_position = {old: new for new, old in enumerate(order)}
        _permute(wrapper.signature, "output_arg", order)
        nodes = self.graph_def.node
        for position in self.index.outer_nodes_mentioning(call_name):
            node = nodes[position]
            if node.name == call_name:
                self._edited_nodes.add(position)
                _permute(node.attr["Tout"].list, "type", order)
                if "_output_shapes" in node.attr:
                    _permute(node.attr["_output_shapes"].list, "shape", order)
            for i, ref in enumerate(node.input):
                if node_of(ref) == call_name and not ref.startswith("^"):
                    self._edited_nodes.add(position)
                    old = output_number(ref.split(":")[1]) if ":" in ref else 0
                    if old not in new_position:
                        raise errors.CorruptModel(f"node '{node.name}' reads no output of "
                                                  f"'{call_name}'", ref)
                    node.input[i] = f"{call_name}:{new_position[old]}"
        for signature in self.signature_defs.values():
            for info in signature.outputs.values():
                if node_of(info.name) == call_name:
                    old = output_number(info.name.rsplit(":", 1)[1])
                    info.name = f"{call_name}:{new_position[old]}"


def _permute(parent, field_name, order):
    """Reorders repeated field `field_name` of message `parent`: position i gets the item
    that was at `order[i]`. Items before the first that moves stay where they are."""
    repeated = getattr(parent, field_name)
    start = next((i for i, old in enumerate(order) if i != old), len(order))
    field = parent.DESCRIPTOR.fields_by_name[field_name]
    if field.message_type is None:
        items = list(repeated)
        del repeated[start:]
        repeated.extend(items[old] for old in order[start:])
        return
    # Messages move as bytes: parsing them back at once costs less than copying each.
    encoded = {old: repeated[old].SerializeToString(deterministic=True) for old in order[start:]}
    del repeated[start:]
    parent.MergeFromString(b"".join(
        wire.length_delimited(field.number, encoded[old]) for old in order[start:]))


def _must_clone(references, calls_on_path, own_objects, decided, function):
    """Whether `function` must be copied: something other than its callers on the paths,
    or the signature's own objects, refers to it, or it is called from a copy. Memoized in
    `decided`, for the callers too, which are judged first, with a stack of its own: call
    chains may be deeper than Python's recursion limit."""
    stack, entered = [function], set()
    while stack:
        current = stack[-1]
        if current in decided:
            stack.pop()
            continue
        callers = [where for kind, where, node in references[current]
                   if kind == "node" and (where, node) in calls_on_path and where is not None]
        if current not in entered:
            entered.add(current)
            pending = [caller for caller in callers
                       if caller not in decided and caller not in entered]  # cycles were
            if pending:  # refused by the index; one would count as no reason to copy
                stack.extend(pending)
                continue
        decided[current] = any(decided.get(caller, False) for caller in callers) or any(
            not (kind == "node" and (where, node) in calls_on_path)
            and not (kind == "object" and where in own_objects[current])
            for kind, where, node in references[current])
        stack.pop()
    return decided[function]


def _callees_first(calls_on_path):
    """Functions on the paths, each after every function it calls on a path (depth first,
    with a stack of its own: call chains may be deeper than Python's recursion limit)."""
    callees = collections.defaultdict(set)
    for (caller, _), callee in calls_on_path.items():
        callees[caller].add(callee)
    order, seen = [], set()
    for root in sorted(callees[None]):
        if root in seen:
            continue
        seen.add(root)
        stack = [(root, iter(sorted(callees[root])))]
        while stack:
            function, pending = stack[-1]
            callee = next(pending, None)
            if callee is None:
                stack.pop()
                order.append(function)
            elif callee not in seen:
                seen.add(callee)
                stack.append((callee, iter(sorted(callees[callee]))))
    return order
