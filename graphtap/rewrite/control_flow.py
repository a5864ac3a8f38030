"""Taps inside control flow: `While` loop bodies (every iteration's value, or the last
one) and `If`/`Case` branches.

An op in a loop body runs once per iteration, so its value cannot simply leave the body.
As TensorFlow's own gradient code does for intermediates, the loop gets one more loop
variable per tap:

- `stack`: a TensorList, created empty before the loop (EmptyTensorList); the body
  appends the tapped value each iteration (TensorListPushBack), and after the loop
  TensorListStack turns it into one tensor with the iterations on a new leading axis.
- `last`: a value holder, a scalar zero of the tap's dtype before the loop, which the
  body replaces with the tapped value each iteration; after the loop it holds the last
  iteration's value (still the scalar zero if the loop ran no iteration). It costs no
  memory per iteration, which is why it is not taken from the stack.

The loop's existing variables keep their positions; the new ones come after them, in the
While node's inputs, outputs, `T` and `output_shapes`, in the body's inputs and outputs,
and in the inputs of a copy of the condition (which ignores them). What comes out after
the loop is then an ordinary tensor of the loop's caller, exposed like any other tap.

An op in an If/Case branch runs only when its branch is taken: the node gets one more
output, which the branch returns, and every other branch (copied) returns an empty tensor
of the same dtype in its place. Nested control flow is refused.
"""

from graphtap.rewrite import protos
from graphtap.rewrite.index import argument_names, unknown_shape
from graphtap.rewrite.keys import fresh_names, unique_name
from graphtap.rewrite.nodes import (
    INT32,
    NewOutput,
    add_const,
    add_node,
    empty_tensor,
    fresh_name,
    int32_scalar,
    output_ref,
    scalar_zero,
    shape_tensor,
)
from graphtap.rewrite.op_kinds import kind_of

_VARIANT = protos.dtype_enum("DT_VARIANT")


def edge_kinds(index, candidate):
    """For each call on the candidate's path: "call", "body" (a While's body), or
    "other" (a While's condition, an If/Case branch, any other function attr)."""
    kinds = []
    for call in candidate.calls:
        body = index.body(call.caller)
        node = body.nodes[body.position[call.node]]
        kind = kind_of(node).edge(node, call.callee)
        # Control flow in the outer graph (a frozen GraphDef's) is not rewritten.
        kinds.append("other" if kind != "call" and call.caller is None else kind)
    return kinds


def allow_control_flow_taps(index, candidates, mode):
    """Lets candidates inside one If/Case branch be tapped, and with a loop `mode`, those
    inside one level of While body; the others stay refused, saying why."""
    for candidate in candidates:
        if not candidate.blocked or candidate.unknown_op:
            continue
        kinds = edge_kinds(index, candidate)
        inner = [kind for kind in kinds if kind != "call"]
        if inner == ["branch"]:
            candidate.blocked = None
            candidate.in_branch = True
        elif inner == ["body"] and mode:
            candidate.blocked = None
            candidate.loop = mode
        elif mode and set(inner) <= {"body", "branch"} and len(inner) > 1:
            candidate.blocked = ("inside nested control flow (a loop or branch within a loop "
                                 "or branch), which graphtap does not tap")


def tap_shape(candidate):
    """What a control-flow tap declares: for `stack`, a stack of the tensor's shape; for
    `last`, an unknown shape (a scalar zero until the first iteration); for a branch, an
    unknown shape (empty when the other branch ran)."""
    if candidate.loop == "stack":
        return stacked_shape(candidate.shape)
    return unknown_shape()


def stacked_shape(shape):
    """The shape of a stack of tensors of `shape`: one more, unknown, leading dimension."""
    stacked = protos.TensorShapeProto()
    if shape is None or shape.unknown_rank:
        stacked.unknown_rank = True
        return stacked
    stacked.dim.add().size = -1
    stacked.dim.extend(shape.dim)
    return stacked


def add_body_outputs(body, outputs, mode, names):
    """Adds to a loop body, for each nodes.NewOutput, a loop
    variable: an input argument, and an output argument returning the accumulated list
    (stack) or the value (last). `names`: the body's node names (grows)."""
    arg_names = argument_names(body)
    new_names = fresh_names("graphtap_loop", arg_names)
    for _, dtype, _, ref in outputs:
        name = next(new_names)
        carried = body.signature.input_arg.add()
        carried.name = name
        carried.type = _VARIANT if mode == "stack" else dtype
        _declare_input_shape(body, carried.type)
        if mode == "stack":
            push = add_node(body.node_def, f"graphtap/{name}/push", "TensorListPushBack",
                            names, [name, ref])
            push.attr["element_dtype"].type = dtype
            ref = f"{push.name}:output_handle:0"
        returned = body.signature.output_arg.add()
        returned.name = unique_name(f"{name}_out", arg_names)
        arg_names.add(returned.name)
        returned.type = carried.type
        body.ret[returned.name] = ref


def add_cond_inputs(cond, dtypes):
    """The loop condition takes (and ignores) the new loop variables."""
    names = fresh_names("graphtap_loop", argument_names(cond))
    for dtype in dtypes:
        arg = cond.signature.input_arg.add()
        arg.name = next(names)
        arg.type = dtype
        _declare_input_shape(cond, dtype)


def _declare_input_shape(function, dtype):
    """Functions that list their inputs' shapes (`_input_shapes`) must list every one:
    a TensorList handle is a scalar; a held value's shape may change, so it is unknown."""
    if "_input_shapes" in function.attr:
        shape = function.attr["_input_shapes"].list.shape.add()
        if dtype != _VARIANT:
            shape.unknown_rank = True


def wire_loop(nodes, function, node, new_outputs, base, mode, names):
    """In the loop's caller: gives While `node` one loop variable per new body output
    (a nodes.NewOutput), starting at output `base`. Returns a NewOutput of the caller per
    new output, naming the tensor to expose: the stack or the last value."""
    exposed = []
    for i, (_, dtype, shape, _) in enumerate(new_outputs):
        position = base + i
        prefix = fresh_name(f"graphtap/{node.name}/loop_{position}", names)
        if mode == "stack":
            element_shape = add_const(nodes, f"{prefix}/element_shape", shape_tensor(shape), names)
            element_shape = output_ref(function, element_shape, "output")
            limit = add_const(nodes, f"{prefix}/max_num_elements", int32_scalar(-1), names)
            empty = add_node(nodes, f"{prefix}/empty", "EmptyTensorList", names,
                             [element_shape, output_ref(function, limit, "output")])
            empty.attr["element_dtype"].type = dtype
            empty.attr["shape_type"].type = INT32
            init_ref = output_ref(function, empty.name, "handle")
            carried_type, carried_shape = _VARIANT, protos.TensorShapeProto()
        else:
            init = add_const(nodes, f"{prefix}/initial", scalar_zero(dtype), names)
            init_ref = output_ref(function, init, "output")
            carried_type, carried_shape = dtype, unknown_shape()
        node.input.insert(_data_input_count(node), init_ref)
        node.attr["T"].list.type.append(carried_type)
        for shapes_attr in ("output_shapes", "_output_shapes"):
            if shapes_attr in node.attr:
                node.attr[shapes_attr].list.shape.add().CopyFrom(carried_shape)
        loop_out = (f"{node.name}:output:{position}" if function is not None
                    else f"{node.name}:{position}")
        if mode == "stack":
            stack = add_node(nodes, f"{prefix}/stack", "TensorListStack", names,
                             [loop_out, element_shape])
            stack.attr["element_dtype"].type = dtype
            stack.attr["num_elements"].i = -1
            exposed.append(NewOutput(("call", node.name, position), dtype, stacked_shape(shape),
                                     output_ref(function, stack.name, "tensor")))
        else:
            # Declared unknown, as in the While: before the first iteration it is a scalar.
            exposed.append(NewOutput(("call", node.name, position), dtype, unknown_shape(),
                                     loop_out))
    return exposed


def wire_branch(graph_def, bodies, node, taken, renamed, new_outputs, base):
    """Gives If/Case `node` the outputs that its branch `taken` gained (computed by
    `renamed`, the function the rewrite edited): every other branch is copied, returning
    an empty tensor ([0] elements) of each new output's dtype. Returns a nodes.NewOutput
    of the node's caller per new output."""
    dtypes = [output.dtype for output in new_outputs]
    for attr in kind_of(node).function_attrs:
        value = node.attr[attr]
        funcs = [value.func] if value.HasField("func") else list(value.list.func)
        for func in funcs:
            if func.name == taken:
                func.name = renamed
            else:
                func.name = _with_empty_outputs(graph_def, bodies, func.name, dtypes)
    node.attr["Tout"].list.type.extend(dtypes)
    for shapes_attr in ("output_shapes", "_output_shapes"):
        if shapes_attr in node.attr:
            node.attr[shapes_attr].list.shape.extend(unknown_shape() for _ in dtypes)
    return [NewOutput(("call", node.name, base + i), dtype, unknown_shape(),
                      f"{node.name}:output:{base + i}")
            for i, dtype in enumerate(dtypes)]


def _with_empty_outputs(graph_def, bodies, name, dtypes):
    """A copy of branch function `name` that also returns an empty tensor of each dtype."""
    branch = graph_def.library.function.add()
    branch.CopyFrom(bodies[name])
    branch.signature.name = unique_name(f"{name}_graphtap", bodies)
    bodies[branch.signature.name] = branch
    names = {node.name for node in branch.node_def}
    arg_names = fresh_names("graphtap_tap", argument_names(branch))
    for dtype in dtypes:
        empty = add_const(branch.node_def, "graphtap/empty", empty_tensor(dtype), names)
        arg = branch.signature.output_arg.add()
        arg.name = next(arg_names)
        arg.type = dtype
        branch.ret[arg.name] = output_ref(branch.signature.name, empty, "output")
    return branch.signature.name


def _data_input_count(node):
    """Where new data inputs go: before the control inputs (`^name`)."""
    return sum(1 for ref in node.input if not ref.startswith("^"))
