"""Keras layers in an exported graph: which tensors belong to which layer, and which
tensor is each layer's output.

Keras 3 runs each layer's call in a name scope named after the layer, inside the model's
scope, so a node of layer `dense` in model `cnn` is named `cnn_1/dense_1/MatMul`: in the
functions that `model.export` and `tf.saved_model.save` write (Keras 3.15), every scope
carries TensorFlow's uniqueness suffix (`_1`; `_2` for a layer's second call). The layer's
name is the second path component without that suffix. Whether the suffix is there is
checked against the model's variables, whose names start with the layer's own name
(`dense/kernel`); a model whose scopes carry none is read as it is, and a model whose
scopes name none of its variables' layers has no Keras layers.

A layer's output is the node of its scope whose value leaves the scope: a node outside
the scope reads it, or the function returns it (variable reads and constants aside).

Keras 3 operations that are not layers (`x[:, 0]` in a functional model, a `GetItem`
named `get_item` in model.summary()) run in no scope of their own: their TensorFlow op
sits in the model's scope under TensorFlow's name (`bert_backbone_1/strided_slice`, with
its constants in the op's own scope `strided_slice/`, which has no `_N` suffix). Those
are named as Keras names them (_OPERATIONS): the n-th `strided_slice` of the model's
scope is the n-th `get_item`, as both count in call order.
"""

import collections
import re

from graphtap import errors
from graphtap.rewrite.index import node_of

_SUFFIX = re.compile(r"_\d+$")
_NOT_OUTPUTS = frozenset({"Const", "ReadVariableOp", "VarHandleOp", "NoOp"})
# TensorFlow's name of an op in a model's scope -> the Keras 3 operation that made it.
_OPERATIONS = {"strided_slice": "get_item"}
_NUMBERED = re.compile(r"^(?P<base>.+?)(?P<n>_\d+)?$")


class LayerMap:
    """Layer names and outputs of the candidates of one meta graph."""

    def __init__(self, index, candidates, variable_names=()):
        """Scopes are read from the functions that hold `candidates` (index.Candidate), so
        that functions no signature runs (`_traced_save`, ...) need not be parsed."""
        self.index = index
        functions = {c.function for c in candidates if c.function is not None}
        self._strip, self.found, self._suffixed = _read_scopes(index, functions,
                                                               variable_names)
        self._outputs = {}  # function -> {(node, output ref)} leaving their layer's scope

    def layer_of(self, candidate):
        """The layer the candidate's node belongs to, or None."""
        parts = candidate.node.split("/")
        if not self.found or len(parts) < 2:
            return None
        if len(parts) == 2 or (self._suffixed and not _SUFFIX.search(parts[1])):
            # a TensorFlow op, or its own scope, in the model's scope: not a layer's
            return _operation(parts[1])
        return _SUFFIX.sub("", parts[1]) if self._strip else parts[1]

    def is_output(self, candidate):
        """Whether the candidate is its layer's output (never one inside a loop body or
        a branch: those run in a function of their own, which returns into the layer)."""
        if candidate.blocked or self.layer_of(candidate) is None:
            return False
        ref = _ref(candidate)
        return (candidate.node, ref) in self._leaving(candidate.function)

    def select(self, candidates, layers):
        """[(candidate, key)] of the layers' outputs, a layer's only output keyed by the
        layer's name (None for a layer with several); raises for an unknown layer."""
        found = collections.defaultdict(list)
        known = set()
        for candidate in candidates:
            layer = self.layer_of(candidate)
            if layer is None:
                continue
            known.add(layer)
            if layer in layers and self.is_output(candidate):
                found[layer].append(candidate)
        unknown = [layer for layer in layers if layer not in found]
        if unknown:
            listed = ", ".join(sorted(known)) or "none (no Keras layer scopes in this signature)"
            raise errors.NoMatch(f"no Keras layer {', '.join(map(repr, unknown))}; "
                                 f"the layers are: {listed}")
        return [(candidate, layer if len(outputs) == 1 else None)
                for layer, outputs in found.items() for candidate in outputs]

    def _leaving(self, function):
        if function not in self._outputs:
            self._outputs[function] = _leaving_scope(self.index, function)
        return self._outputs[function]


def _operation(name):
    """The Keras operation name of a TensorFlow op name in a model's scope, or None."""
    match = _NUMBERED.match(name)
    keras_name = _OPERATIONS.get(match["base"])
    return keras_name and keras_name + (match["n"] or "")


def _ref(candidate):
    """How a consumer in the candidate's body refers to it."""
    if candidate.function is None:
        return candidate.name
    return f"{candidate.node}:{candidate.arg}:{candidate.arg_index}"


def _scope(name):
    """`model/layer` of `model/layer/...`; a node in the model's scope (`model/op`) is its
    own scope, as a Keras operation's op (see _operation)."""
    parts = name.split("/")
    return "/".join(parts[:2]) if len(parts) >= 2 else None


def _leaving_scope(index, function):
    """{(node, tensor ref)} of the body's layer-scope tensors read outside their scope."""
    body = index.body(function)
    ops = dict(zip(body.names, body.ops))
    leaving = set()

    def consider(ref, reader_scope):
        if ref.startswith("^"):
            return
        node = node_of(ref)
        scope = _scope(node)
        if scope is not None and scope != reader_scope and ops.get(node) not in _NOT_OUTPUTS:
            if function is None and ":" not in ref:
                ref = node
            leaving.add((node, _canonical(ref, function)))

    for node in body.nodes:
        reader = _scope(node.name)
        for ref in node.input:
            consider(ref, reader)
    if function is not None:
        for ref in index.functions[function].ret.values():
            consider(ref, None)
    return leaving


def _canonical(ref, function):
    """`node:0` and `node` name the same outer-graph tensor; keep `node`."""
    if function is None and ref.endswith(":0"):
        return ref[:-2]
    return ref


def _read_scopes(index, functions, variable_names):
    """(whether layer scopes may carry TensorFlow's `_N` suffix, whether there are Keras
    layer scopes at all, whether they must carry it: Keras 3), judged in `functions` by
    the layers that have variables: the second components of node names must name some
    of them, with or without the suffix."""
    layers_with_variables = {name.split("/")[0] for name in variable_names if "/" in name}
    scopes = set()
    for function in functions:
        for name in index.body(function).names:
            parts = name.split("/")
            if len(parts) >= 3:
                scopes.add(parts[1])
    exact = len(layers_with_variables & scopes)
    suffixed = len(layers_with_variables & {_SUFFIX.sub("", scope) for scope in scopes})
    return suffixed >= exact, max(exact, suffixed) > 0, suffixed > exact
