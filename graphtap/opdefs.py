"""Op definitions: which outputs a node has, what they are called, and their dtypes.

Definitions come from the model's own `meta_info_def.stripped_op_list` and function
library (a function's signature is the OpDef of ops that call it by name). Only an op
found in neither is looked up in TensorFlow's registry, which imports TensorFlow.
"""

import collections

from absl import logging

from graphtap import errors, protos

CALL_OPS = frozenset({"PartitionedCall", "StatefulPartitionedCall"})

# One output tensor of a node: `arg` and `index` name it inside a function body
# (`node:arg:index`); its position in the node's flat output list names it in a graph.
Output = collections.namedtuple("Output", "arg index dtype")


class OpRegistry:
    """Looks up OpDefs for the ops of one meta graph (or GraphDef) and its library."""

    def __init__(self, stripped_op_list=(), functions=None):
        self._op_defs = {op_def.name: op_def for op_def in stripped_op_list}
        self._functions = functions or {}

    def op_def(self, op_type):
        function = self._functions.get(op_type)
        if function is not None:
            return function.signature
        op_def = self._op_defs.get(op_type)
        if op_def is None:
            op_def = self._op_defs[op_type] = _registered_op_def(op_type)
        return op_def

    def outputs(self, node):
        """The node's outputs, in TensorFlow's flat order."""
        op_def = self.op_def(node.op)
        outputs = []
        for arg in op_def.output_arg:
            if arg.number_attr:
                dtype = arg.type or _attr(node, op_def, arg.type_attr).type
                count = _attr(node, op_def, arg.number_attr).i
                outputs.extend(Output(arg.name, i, dtype) for i in range(count))
            elif arg.type_list_attr:
                dtypes = _attr(node, op_def, arg.type_list_attr).list.type
                outputs.extend(Output(arg.name, i, dtype) for i, dtype in enumerate(dtypes))
            else:
                dtype = arg.type or _attr(node, op_def, arg.type_attr).type
                outputs.append(Output(arg.name, 0, dtype))
        return outputs


def _attr(node, op_def, name):
    """A node's attr, or the OpDef's default when the saver stripped it."""
    if name in node.attr:
        return node.attr[name]
    for attr in op_def.attr:
        if attr.name == name and attr.HasField("default_value"):
            return attr.default_value
    raise errors.CorruptModel(f"node '{node.name}' ({node.op}) lacks attr '{name}'")


def _registered_op_def(op_type):
    logging.debug("graphtap: op %s is not in the model; asking TensorFlow's registry", op_type)
    try:
        import tensorflow  # noqa: F401  (loads the kernels that register ops)
        from tensorflow.python.framework import op_def_registry
    except ImportError:
        op_def = None
    else:
        op_def = op_def_registry.get(op_type)
    if op_def is None:
        raise errors.UnknownOp(f"op '{op_type}' is defined neither in the model nor in TensorFlow")
    return protos.OpDef.FromString(op_def.SerializeToString())
