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


# -- a loop tapped end to end ---------------------------------------------------------------

OP_DEFS = [  # the OpDefs of the model's ops and of those the rewrite adds, as a model lists them
    'name: "Placeholder" output_arg { name: "output" type_attr: "dtype" }'
    ' attr { name: "dtype" type: "type" } attr { name: "shape" type: "shape" }',
    'name: "Const" output_arg { name: "output" type_attr: "dtype" }'
    ' attr { name: "value" type: "tensor" } attr { name: "dtype" type: "type" }',
    'name: "StatefulPartitionedCall" input_arg { name: "args" type_list_attr: "Tin" }'
    ' output_arg { name: "output" type_list_attr: "Tout" } attr { name: "Tin" type: "list(type)" }'
    ' attr { name: "Tout" type: "list(type)" } attr { name: "f" type: "func" } is_stateful: true',
    'name: "StatelessWhile" input_arg { name: "input" type_list_attr: "T" }'
    ' output_arg { name: "output" type_list_attr: "T" } attr { name: "T" type: "list(type)" }'
    ' attr { name: "cond" type: "func" } attr { name: "body" type: "func" }'
    ' attr { name: "output_shapes" type: "list(shape)" default_value { list { } } }',
    'name: "AddV2" input_arg { name: "x" type_attr: "T" } input_arg { name: "y" type_attr: "T" }'
    ' output_arg { name: "z" type_attr: "T" } attr { name: "T" type: "type" }',
    'name: "Less" input_arg { name: "x" type_attr: "T" } input_arg { name: "y" type_attr: "T" }'
    ' output_arg { name: "z" type: DT_BOOL } attr { name: "T" type: "type" }',
    'name: "Relu" input_arg { name: "features" type_attr: "T" }'
    ' output_arg { name: "activations" type_attr: "T" } attr { name: "T" type: "type" }',
    'name: "Identity" input_arg { name: "input" type_attr: "T" }'
    ' output_arg { name: "output" type_attr: "T" } attr { name: "T" type: "type" }',
    'name: "EmptyTensorList" input_arg { name: "element_shape" type_attr: "shape_type" }'
    ' input_arg { name: "max_num_elements" type: DT_INT32 }'
    ' output_arg { name: "handle" type: DT_VARIANT } attr { name: "element_dtype" type: "type" }'
    ' attr { name: "shape_type" type: "type" }',
    'name: "TensorListPushBack" input_arg { name: "input_handle" type: DT_VARIANT }'
    ' input_arg { name: "tensor" type_attr: "element_dtype" }'
    ' output_arg { name: "output_handle" type: DT_VARIANT }'
    ' attr { name: "element_dtype" type: "type" }',
    'name: "TensorListStack" input_arg { name: "input_handle" type: DT_VARIANT }'
    ' input_arg { name: "element_shape" type: DT_INT32 }'
    ' output_arg { name: "tensor" type_attr: "element_dtype" }'
    ' attr { name: "element_dtype" type: "type" } attr { name: "num_elements" type: "int" }',
]

LOOP_MODEL = """
meta_graphs {
  meta_info_def { tags: "serve" }
  signature_def { key: "serving_default" value {
    inputs { key: "x" value { name: "x:0" dtype: DT_FLOAT tensor_shape { dim { size: 2 } } } }
    outputs { key: "y" value { name: "call:0" dtype: DT_FLOAT } }
    method_name: "tensorflow/serving/predict" } }
  graph_def {
    node { name: "x" op: "Placeholder" attr { key: "dtype" value { type: DT_FLOAT } }
           attr { key: "shape" value { shape { dim { size: 2 } } } } }
    node { name: "call" op: "StatefulPartitionedCall" input: "x"
           attr { key: "Tin" value { list { type: DT_FLOAT } } }
           attr { key: "Tout" value { list { type: DT_FLOAT } } }
           attr { key: "f" value { func { name: "outer_fn" } } }
           attr { key: "_output_shapes" value { list { shape { dim { size: 2 } } } } } }
    library {
      function {
        signature { name: "outer_fn" input_arg { name: "a" type: DT_FLOAT }
                    output_arg { name: "y" type: DT_FLOAT } }
        node_def { name: "zero" op: "Const" attr { key: "dtype" value { type: DT_INT32 } }
                   attr { key: "value" value { tensor { dtype: DT_INT32 int_val: 0 } } } }
        node_def { name: "loop" op: "StatelessWhile" input: "zero:output:0" input: "a"
                   attr { key: "T" value { list { type: DT_INT32 type: DT_FLOAT } } }
                   attr { key: "cond" value { func { name: "cond_fn" } } }
                   attr { key: "body" value { func { name: "body_fn" } } } }
        ret { key: "y" value: "loop:output:1" }
      }
      function {
        signature { name: "cond_fn" input_arg { name: "i" type: DT_INT32 }
                    input_arg { name: "v" type: DT_FLOAT } output_arg { name: "go" type: DT_BOOL } }
        node_def { name: "three" op: "Const" attr { key: "dtype" value { type: DT_INT32 } }
                   attr { key: "value" value { tensor { dtype: DT_INT32 int_val: 3 } } } }
        node_def { name: "less" op: "Less" input: "i" input: "three:output:0"
                   attr { key: "T" value { type: DT_INT32 } } }
        ret { key: "go" value: "less:z:0" }
      }
      function {
        signature { name: "body_fn" input_arg { name: "i" type: DT_INT32 }
                    input_arg { name: "v" type: DT_FLOAT }
                    output_arg { name: "i_next" type: DT_INT32 }
                    output_arg { name: "v_next" type: DT_FLOAT } }
        node_def { name: "one" op: "Const" attr { key: "dtype" value { type: DT_INT32 } }
                   attr { key: "value" value { tensor { dtype: DT_INT32 int_val: 1 } } } }
        node_def { name: "next" op: "AddV2" input: "i" input: "one:output:0"
                   attr { key: "T" value { type: DT_INT32 } } }
        node_def { name: "relu" op: "Relu" input: "v" attr { key: "T" value { type: DT_FLOAT } }
                   attr { key: "_output_shapes" value { list { shape { dim { size: 2 } } } } } }
        ret { key: "i_next" value: "next:z:0" }
        ret { key: "v_next" value: "relu:activations:0" }
      }
    }
  }
}
"""


def _loop_model(path):
    from google.protobuf import text_format

    saved_model = text_format.Parse(LOOP_MODEL, protos.SavedModel())
    for text in OP_DEFS:
        text_format.Parse(text, saved_model.meta_graphs[0].meta_info_def.stripped_op_list.op.add())
    path.mkdir()
    (path / "saved_model.pb").write_bytes(saved_model.SerializeToString())
    return str(path)


def _read(path):
    return protos.SavedModel.FromString((path / "saved_model.pb").read_bytes()).meta_graphs[0]


def test_a_loop_tap_is_refused_without_a_mode(tmp_path):
    import graphtap
    from graphtap import errors

    source = _loop_model(tmp_path / "model")
    (relu,) = [c for c in graphtap.list_targets(source) if c.node == "relu"]
    assert relu.function == "body_fn" and relu.blocked
    with pytest.raises(errors.NotTappable, match="loop 'stack' or 'last'"):
        graphtap.tap(source, str(tmp_path / "out"), names=["relu"])


@pytest.mark.parametrize("mode, dims, carried", [("stack", [-1, 2], "DT_VARIANT"),
                                                 ("last", None, "DT_FLOAT")])
def test_a_loop_tap_carries_a_stack_or_the_last_value(mode, dims, carried, tmp_path):
    """`stack`: a TensorList loop variable, stacked after the loop, declared [-1, 2];
    `last`: the value itself as a loop variable, declared of unknown shape. The loop's own
    variables keep their positions; the condition is a copy that takes the new one."""
    import graphtap

    source = _loop_model(tmp_path / "model")
    report = graphtap.tap(source, str(tmp_path / "out"), names={"relu": "r"}, loop=mode)
    (record,) = report.taps
    assert (record.loop, record.shape, record.function) == (mode, dims, "body_fn")
    after = _read(tmp_path / "out")
    output = after.signature_def["serving_default"].outputs["r"]
    assert index.shape_dims(output.tensor_shape) == dims
    assert after.signature_def["serving_default"].outputs["y"].name == "call:0"
    call = next(n for n in after.graph_def.node if n.name == "call")
    declared = [index.shape_dims(s) for s in call.attr["_output_shapes"].list.shape]
    assert declared == [[2], dims]  # the call node declares what the signature does
    functions = {f.signature.name: f for f in after.graph_def.library.function}
    loop = next(n for n in functions["outer_fn"].node_def if n.name == "loop")
    assert list(loop.attr["T"].list.type) == [protos.dtype_enum(t) for t in
                                              ("DT_INT32", "DT_FLOAT", carried)]
    assert loop.input[:2] == ["zero:output:0", "a"] and len(loop.input) == 3
    body = functions["body_fn"].signature
    assert [a.type for a in body.input_arg][2:] == [protos.dtype_enum(carried)]
    pushes = [n.op for n in functions["body_fn"].node_def if n.op == "TensorListPushBack"]
    assert len(pushes) == (mode == "stack")
    cond = functions[loop.attr["cond"].func.name]
    assert cond.signature.name != "cond_fn" and len(cond.signature.input_arg) == 3
    assert len(functions["cond_fn"].signature.input_arg) == 2  # the original is untouched
