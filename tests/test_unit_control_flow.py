"""Unit layer: which taps inside loops and branches are allowed, and the shapes they
declare (graphtap/rewrite/control_flow.py), on protobufs with no TensorFlow runtime."""

import pytest

from graphtap.rewrite import control_flow, index, plumbing, protos

pytestmark = pytest.mark.unit

FLOAT = protos.dtype_enum("DT_FLOAT")


def _node(nodes, name, op, **funcs):
    node = nodes.add(name=name, op=op)
    for attr, value in funcs.items():
        if isinstance(value, list):
            node.attr[attr].list.func.add().name = value[0]
            for name in value[1:]:
                node.attr[attr].list.func.add().name = name
        else:
            node.attr[attr].func.name = value
    return node


def _graph():
    """Outer graph: `call` -> outer_fn, and a While `top_loop` (a frozen graph's) over
    body_fn. outer_fn: While `loop` (cond_fn, body_fn), If `if` (then_fn, else_fn), Case
    `case` (then_fn, else_fn). body_fn: If `inner_if` (then_fn, else_fn)."""
    graph = protos.GraphDef()
    _node(graph.node, "call", "StatefulPartitionedCall", f="outer_fn")
    _node(graph.node, "top_loop", "While", cond="cond_fn", body="body_fn")
    functions = {}
    for name in ("outer_fn", "body_fn", "cond_fn", "then_fn", "else_fn"):
        functions[name] = graph.library.function.add()
        functions[name].signature.name = name
        functions[name].node_def.add(name="x", op="Relu")
    outer = functions["outer_fn"].node_def
    _node(outer, "loop", "StatelessWhile", cond="cond_fn", body="body_fn")
    _node(outer, "if", "If", then_branch="then_fn", else_branch="else_fn")
    _node(outer, "case", "Case", branches=["then_fn", "else_fn"])
    _node(functions["body_fn"].node_def, "inner_if", "StatelessIf", then_branch="then_fn",
          else_branch="else_fn")
    return index.GraphIndex(graph)


CALL = index.Call(None, "call", "outer_fn")
PATHS = {
    "call": (CALL,),
    "loop_body": (CALL, index.Call("outer_fn", "loop", "body_fn")),
    "loop_cond": (CALL, index.Call("outer_fn", "loop", "cond_fn")),
    "then": (CALL, index.Call("outer_fn", "if", "then_fn")),
    "case": (CALL, index.Call("outer_fn", "case", "else_fn")),
    "nested": (CALL, index.Call("outer_fn", "loop", "body_fn"),
               index.Call("body_fn", "inner_if", "then_fn")),
    "outer_loop": (index.Call(None, "top_loop", "body_fn"),),
}


def _candidate(path, blocked="inside control flow", shape=None, unknown_op=False):
    calls = PATHS[path]
    return index.Candidate(calls, calls[-1].callee, "x", "Relu", 0, "activations", 0, FLOAT,
                           shape, blocked=blocked, unknown_op=unknown_op)


@pytest.mark.parametrize("path, kinds", [
    ("call", ["call"]),
    ("loop_body", ["call", "body"]),
    ("loop_cond", ["call", "other"]),
    ("then", ["call", "branch"]),
    ("case", ["call", "branch"]),
    ("nested", ["call", "body", "branch"]),
    ("outer_loop", ["other"]),  # control flow in the outer graph is not rewritten
])
def test_edge_kinds_classify_each_call_on_the_path(path, kinds):
    assert control_flow.edge_kinds(_graph(), _candidate(path)) == kinds


@pytest.mark.parametrize("path, mode, loop, in_branch, blocked", [
    ("loop_body", None, None, False, "inside control flow"),  # loops need a mode
    ("loop_body", "stack", "stack", False, None),
    ("loop_body", "last", "last", False, None),
    ("then", None, None, True, None),  # branches need none
    ("case", "stack", None, True, None),
    ("loop_cond", "stack", None, False, "inside control flow"),
    ("outer_loop", "stack", None, False, "inside control flow"),
    ("nested", None, None, False, "inside control flow"),
    ("nested", "last", None, False, "inside nested control flow"),
])
def test_control_flow_taps_allowed(path, mode, loop, in_branch, blocked):
    candidate = _candidate(path)
    control_flow.allow_control_flow_taps(_graph(), [candidate], mode)
    assert (candidate.loop, candidate.in_branch) == (loop, in_branch)
    if blocked is None:
        assert candidate.blocked is None
    else:
        assert candidate.blocked.startswith(blocked)


def test_unblocked_and_unknown_op_candidates_are_left_alone():
    free = _candidate("loop_body", blocked=None)
    unknown = _candidate("then", blocked="op 'Mystery' is defined nowhere", unknown_op=True)
    control_flow.allow_control_flow_taps(_graph(), [free, unknown], "stack")
    assert (free.blocked, free.loop) == (None, None)
    assert unknown.blocked == "op 'Mystery' is defined nowhere" and not unknown.in_branch


def _shape(*dims):
    shape = protos.TensorShapeProto()
    for size in dims:
        shape.dim.add().size = size
    return shape


@pytest.mark.parametrize("dims, stacked", [((2, 3), [-1, 2, 3]), ((), [-1]),
                                          ((-1, 4), [-1, -1, 4])])
def test_a_stack_has_one_more_unknown_leading_dimension(dims, stacked):
    assert index.shape_dims(control_flow.stacked_shape(_shape(*dims))) == stacked


def test_a_stack_of_an_unknown_rank_is_of_unknown_rank():
    unknown = protos.TensorShapeProto(unknown_rank=True)
    assert control_flow.stacked_shape(unknown).unknown_rank
    assert control_flow.stacked_shape(None).unknown_rank


@pytest.mark.parametrize("path, mode, dims", [
    ("loop_body", "stack", [-1, 2, 3]),
    ("loop_body", "last", None),  # a scalar zero before the first iteration
    ("then", None, None),  # empty when another branch ran
    ("call", None, [2, 3]),  # no control flow: the tensor's own shape
])
def test_a_tap_declares_the_shape_of_what_comes_out(path, mode, dims):
    candidate = _candidate(path, shape=_shape(2, 3))
    control_flow.allow_control_flow_taps(_graph(), [candidate], mode)
    assert index.shape_dims(plumbing.Tap("s", "k", candidate).shape) == dims
