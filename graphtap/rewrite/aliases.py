"""Which tensor a signature output really is, and which signatures run one function.

A signature output names an outer-graph tensor, usually the output of a call node; what
it holds is a tensor deep inside the functions that node calls, reached through each
function's `ret` and the Identity nodes savers put before it (tf_keras names the serving
output after the model's output layer, so `--tap_layer=predictions` selects the very
tensor that the output `predictions` already is).
"""

from graphtap.rewrite.index import Call, node_of, output_number
from graphtap.rewrite.op_kinds import CALL_OPS

_PASS_THROUGH = frozenset({"Identity", "StopGradient", "Snapshot"})


def output_tensors(index, signature_def):
    """{(call path, function, tensor ref): output key}: for each output of the signature,
    the tensor it holds, followed through call nodes, `ret`s and Identity nodes. `tensor
    ref` is how the tensor's body refers to it (`node:arg:i` in a function, `node` or
    `node:k` in the outer graph), `call path` a tuple of index.Call as Candidate.calls."""
    found = {}
    for key, info in signature_def.outputs.items():
        resolved = _follow(index, (), None, info.name)
        if resolved is not None:
            found[resolved] = key
    return found


def candidate_ref(candidate):
    """The output_tensors key of an index.Candidate."""
    if candidate.function is None:
        ref = candidate.name
    else:
        ref = f"{candidate.node}:{candidate.arg}:{candidate.arg_index}"
    return (tuple(candidate.calls), candidate.function, ref)


def _follow(index, calls, function, ref, depth=0):
    if depth > 200:  # a chain this long is no saver's: give up rather than loop
        return None
    body = index.body(function)
    node_name = node_of(ref)
    position = body.position.get(node_name)
    if position is None:  # a function argument, or a name the check will report
        return calls, function, ref
    node = body.nodes[position]
    if node.op in _PASS_THROUGH and node.input:
        return _follow(index, calls, function, node.input[0], depth + 1)
    if node.op in CALL_OPS:
        output = _output_position(ref, function)
        callee = node.attr["f"].func.name
        target = index.functions.get(callee)
        if output is not None and target is not None and output < len(target.signature.output_arg):
            arg = target.signature.output_arg[output].name
            inner = target.ret.get(arg)
            if inner is not None:
                return _follow(index, calls + (Call(function, node.name, callee),), callee,
                               inner, depth + 1)
    return calls, function, _canonical(ref, function)


def _output_position(ref, function):
    """Which output of a call node `ref` names: `node:k` in a graph, `node:output:k` in a
    function (a call op's only output arg is `output`)."""
    parts = ref.split(":")
    if function is None:
        return output_number(parts[1]) if len(parts) == 2 else 0
    return output_number(parts[2]) if len(parts) == 3 and parts[1] == "output" else None


def _canonical(ref, function):
    if function is None and ref.endswith(":0"):
        return ref[:-2]
    return ref


def same_function(index, signature_defs, default, signatures):
    """{signature: default} for each other signature that runs the same function as
    `default`: its outputs come, through wrapper functions, from a call of a function
    that the default's outputs come from too (Keras 3 `export` writes `serve` and
    `serving_default`, each a wrapper calling one `__call__` function)."""
    wanted = _functions_of(index, signature_defs[default])
    if not wanted:
        return {}
    return {key: default for key in signatures
            if key != default and wanted & _functions_of(index, signature_defs[key])}


def _functions_of(index, signature_def):
    """The functions that every output of the signature comes from: the function of
    the one call node all outputs read, then the function of the one call node all of
    its `ret`s read (through Identity nodes), and so on."""
    found = set()
    function, refs = None, [info.name for info in signature_def.outputs.values()]
    while refs and len(found) < 100:
        body = index.body(function)
        nodes = {id(node): node for node in
                 (_through_identities(body, node_of(ref)) for ref in refs)}
        if len(nodes) != 1:
            break
        (node,) = nodes.values()
        if node is None or node.op not in CALL_OPS:
            break
        function = node.attr["f"].func.name
        if function in found or function not in index.functions:
            break
        found.add(function)
        refs = list(index.functions[function].ret.values())
    return found


def _through_identities(body, name):
    for _ in range(100):
        position = body.position.get(name)
        if position is None:
            return None
        node = body.nodes[position]
        if node.op not in _PASS_THROUGH or not node.input:
            return node
        name = node_of(node.input[0])
    return None
