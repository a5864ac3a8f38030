"""Adding nodes to a body (a FunctionDef's, or the outer graph's): unique names, tensor
references in the body's own notation, and small constant tensors."""

import typing

from graphtap.rewrite import protos
from graphtap.rewrite.index import tensor_ref
from graphtap.rewrite.keys import unique_name

INT32 = protos.dtype_enum("DT_INT32")


class NewOutput(typing.NamedTuple):
    """One output a body gains to bring a tap out: `source` says what it carries,
    ("local", node, output) for a tap of the body's own node or ("call", node, output) for
    an output of a node that calls a function; `ref` is how the body names the tensor
    (None until known: a call by name names it after the callee's output arg)."""

    source: tuple
    dtype: int
    shape: object  # TensorShapeProto, or None when unknown
    ref: str = None


def fresh_name(name, names):
    """`name` made unique among `names`, to which it is added."""
    name = unique_name(name, names)
    names.add(name)
    return name


def add_node(nodes, name, op, names, inputs):
    """Appends a node named like `name` (made unique) to `nodes`."""
    node = nodes.add()
    node.name = fresh_name(name, names)
    node.op = op
    node.input.extend(inputs)
    return node


def add_const(nodes, name, tensor, names):
    """Appends a Const of `tensor` (a TensorProto); returns its name."""
    node = add_node(nodes, name, "Const", names, [])
    node.attr["dtype"].type = tensor.dtype
    node.attr["value"].tensor.CopyFrom(tensor)
    return node.name


def output_ref(function, node_name, arg):
    """How the body of `function` (None: a graph) names a node's only output `arg`."""
    return tensor_ref(function, node_name, 0, arg, 0)


def shape_tensor(shape):
    """An int32 tensor of a shape: its dims (-1 unknown), or -1 for an unknown rank."""
    tensor = _tensor(INT32)
    if shape is None or shape.unknown_rank:
        tensor.int_val.append(-1)
        return tensor
    tensor.tensor_shape.dim.add().size = len(shape.dim)
    tensor.int_val.extend(dim.size if dim.size >= 0 else -1 for dim in shape.dim)
    return tensor


def int32_scalar(value):
    tensor = _tensor(INT32)
    tensor.int_val.append(value)
    return tensor


def scalar_zero(dtype):
    """A scalar of `dtype` with no value given: TensorFlow reads it as zero (or "")."""
    return _tensor(dtype)


def empty_tensor(dtype):
    """A tensor of `dtype` and shape [0]: no elements."""
    tensor = _tensor(dtype)
    tensor.tensor_shape.dim.add().size = 0
    return tensor


def _tensor(dtype):
    tensor = protos.AttrValue().tensor
    tensor.dtype = dtype
    return tensor
