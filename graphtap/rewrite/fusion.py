"""Which taps stop a fusion that Grappler's CPU remapper would make.

The remapper fuses a contraction (MatMul, Conv2D, ...) with the bias add and activation
that follow it into one kernel, but only when each intermediate result has a single
consumer. A tap on the contraction or the bias add adds a consumer, so the chain runs
unfused: correct, but slower. Tapping the chain's last op costs nothing.
"""

import collections

from graphtap.rewrite.index import node_of

CONTRACTIONS = frozenset({"MatMul", "BatchMatMulV2", "Conv2D", "Conv3D",
                          "DepthwiseConv2dNative"})
BIAS_ADDS = frozenset({"BiasAdd", "Add", "AddV2"})
ACTIVATIONS = frozenset({"Relu", "Relu6", "Elu", "LeakyRelu", "Sigmoid", "Tanh"})


def fusion_warnings(index, taps):
    """One message per tap that sits inside a fusable chain."""
    bodies = {}
    warnings = []
    for tap in taps:
        c = tap.candidate
        if c.output != 0 or c.op not in CONTRACTIONS | BIAS_ADDS:
            continue
        if c.function not in bodies:
            bodies[c.function] = _consumers(index.body_nodes(c.function))
        nodes, consumers = bodies[c.function]
        chain = _fused_chain(nodes[c.node], nodes, consumers)
        if chain:
            warnings.append(
                f"tap '{tap.key}' is inside a {'+'.join(n.op for n in chain)} chain that "
                f"Grappler fuses on CPU; the tap stops the fusion (tapping '{chain[-1].name}' "
                "instead keeps it)"
            )
    return warnings


def _consumers(body_nodes):
    nodes = {node.name: node for node in body_nodes}
    consumers = collections.defaultdict(list)
    for node in body_nodes:
        for ref in node.input:
            if not ref.startswith("^"):
                consumers[node_of(ref)].append(node)
    return nodes, consumers


def _fused_chain(node, nodes, consumers):
    """The contraction, bias add (and activation) chain that `node` is inside, unless
    `node` ends it; else an empty list."""

    def only_consumer(n):
        following = consumers[n.name]
        return following[0] if len(following) == 1 else None

    head = node
    if node.op in BIAS_ADDS:
        head = nodes.get(node_of(node.input[0])) if node.input else None
    if head is None or head.op not in CONTRACTIONS:
        return []
    bias = only_consumer(head)
    if bias is None or bias.op not in BIAS_ADDS:
        return []
    chain = [head, bias]
    activation = only_consumer(bias)
    if activation is not None and activation.op in ACTIVATIONS:
        chain.append(activation)
    return chain if chain[-1].name != node.name else []
