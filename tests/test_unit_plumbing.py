"""Unit layer: the plumbing policies of the rewrite (which functions are cloned rather than
edited in place, the order of a signature function's outputs) and the profile lookup, on
protobufs with no TensorFlow runtime (`pytest -m unit`)."""

import pathlib
import shutil
import sys

import pytest

import graphtap
from graphtap.rewrite import index, plumbing, protos, traces

pytestmark = pytest.mark.unit

FIELD = pathlib.Path(__file__).resolve().parents[1] / "testdata" / "field"
SEQUENTIAL = FIELD / "tfk_sequential_tf"
# serving_default: outer StatefulPartitionedCall -> WRAPPER (the signature's own object,
# node 53) -> StatefulPartitionedCall -> WRAPPED (also object node 11's function).
WRAPPER = "__inference_signature_wrapper_3759"
WRAPPED = "__inference__wrapped_model_3581"
RELU = "sequential/hidden/Relu"


def _read(path):
    return protos.SavedModel.FromString((pathlib.Path(path) / "saved_model.pb").read_bytes())


def _functions(meta_graph):
    return {f.signature.name: f for f in meta_graph.graph_def.library.function}


def _outer(meta_graph, name):
    return next(n for n in meta_graph.graph_def.node if n.name == name)


def _tap_relu(tmp_path, key, source=SEQUENTIAL):
    out = tmp_path / "out"
    report = graphtap.tap(str(source), str(out), names={RELU: key},
                          signatures="serving_default")
    return report, _read(out).meta_graphs[0]


# -- clone planning ------------------------------------------------------------------------


def test_a_body_an_object_also_refers_to_is_cloned_and_the_signatures_own_is_edited(tmp_path):
    """WRAPPED is also a bare concrete function of the object graph: cloned, the original
    left byte-identical. WRAPPER is referred to only by the signature's own object and
    the tapped call node: edited in place, keeping its name, now calling the clone."""
    before = _read(SEQUENTIAL).meta_graphs[0]
    report, after = _tap_relu(tmp_path, "z_tap")
    functions = _functions(after)
    clone = f"{WRAPPED}_graphtap"
    assert [r.function for r in report.taps] == [clone]
    assert functions[WRAPPED] == _functions(before)[WRAPPED]
    assert f"graphtap/{RELU}" in {n.name for n in functions[clone].node_def}
    assert f"{WRAPPER}_graphtap" not in functions
    calls = [n.attr["f"].func.name for n in functions[WRAPPER].node_def
             if n.op == "StatefulPartitionedCall"]
    assert calls == [clone]
    assert len(functions[WRAPPER].signature.output_arg) == 2
    objects = after.object_graph_def.nodes
    assert objects[11].bare_concrete_function.concrete_function_name == WRAPPED
    assert objects[53].bare_concrete_function.concrete_function_name == WRAPPER


def test_a_body_called_from_off_the_path_is_cloned_and_that_caller_keeps_the_original(
        tmp_path):
    """A second outer node calls WRAPPER: the tapped path gets a clone, the other caller
    still calls the untouched original, and the signature's object points at the clone."""
    model = tmp_path / "model"
    shutil.copytree(SEQUENTIAL, model)
    saved_model = _read(model)
    graph = saved_model.meta_graphs[0].graph_def
    other = graph.node.add()
    other.CopyFrom(_outer(saved_model.meta_graphs[0], "StatefulPartitionedCall"))
    other.name = "other_call"
    (model / "saved_model.pb").write_bytes(saved_model.SerializeToString())
    before = _functions(saved_model.meta_graphs[0])

    _, after = _tap_relu(tmp_path, "z_tap", source=model)
    functions = _functions(after)
    clone = f"{WRAPPER}_graphtap"
    assert _outer(after, "other_call").attr["f"].func.name == WRAPPER
    assert len(_outer(after, "other_call").attr["Tout"].list.type) == 1
    assert functions[WRAPPER] == before[WRAPPER]
    tapped_call = _outer(after, "StatefulPartitionedCall")
    assert tapped_call.attr["f"].func.name == clone
    assert len(tapped_call.attr["Tout"].list.type) == 2
    objects = after.object_graph_def
    assert objects.nodes[53].bare_concrete_function.concrete_function_name == clone
    assert clone in objects.concrete_functions


def _references(**by_function):
    """{function: [(kind, where, node)]} from {function: ["node:caller:node" | "gradient" |
    "object:<id>"]}; caller "-" is the outer graph."""
    references = {}
    for function, refs in by_function.items():
        references[function] = []
        for ref in refs:
            kind, _, rest = ref.partition(":")
            if kind == "node":
                caller, node = rest.split(":")
                references[function].append(("node", None if caller == "-" else caller, node))
            elif kind == "object":
                references[function].append(("object", int(rest), None))
            else:
                references[function].append((kind, None, None))
    return references


# The tapped path: outer node `c` -> A; A's node `b` -> B.
PATH = {(None, "c"): "A", ("A", "b"): "B"}


@pytest.mark.parametrize("extra, own, cloned", [
    ({}, {}, set()),  # referred to only by the path: edited in place
    ({"B": ["node:X:x"]}, {}, {"B"}),  # a second caller off the path
    ({"A": ["node:-:d"]}, {}, {"A", "B"}),  # A copied: B, called from a copy, too
    ({"B": ["gradient"]}, {}, {"B"}),  # the gradient registry refers to it
    ({"A": ["object:7"]}, {"A": {7}}, set()),  # the signature's own object
    ({"A": ["object:7"]}, {"A": {8}}, {"A", "B"}),  # another object
], ids=["path_only", "other_caller", "cloned_caller", "gradient", "own_object",
        "other_object"])
def test_must_clone_copies_what_is_referred_to_from_off_the_path(extra, own, cloned):
    refs = {"A": ["node:-:c"] + extra.get("A", []), "B": ["node:A:b"] + extra.get("B", [])}
    references = _references(**refs)
    own_objects = {name: own.get(name, set()) for name in refs}
    decided = {}
    found = {f for f in ("B", "A")
             if plumbing._must_clone(references, PATH, own_objects, decided, f)}
    assert found == cloned


def test_must_clone_follows_call_chains_deeper_than_the_recursion_limit():
    depth = sys.getrecursionlimit() + 100
    names = [f"f{i}" for i in range(depth)]
    path = {(None, "c"): names[0]}
    refs = {names[0]: ["node:-:c", "node:-:elsewhere"]}  # the top is shared: all copied
    for caller, callee in zip(names, names[1:]):
        path[(caller, "call")] = callee
        refs[callee] = [f"node:{caller}:call"]
    assert plumbing._must_clone(_references(**refs), path, {n: set() for n in names}, {},
                                names[-1])


def test_callees_come_before_their_callers():
    path = {(None, "c1"): "A", (None, "c2"): "D", ("A", "x"): "B", ("A", "y"): "C",
            ("B", "z"): "C", ("D", "w"): "C"}
    order = plumbing._callees_first(path)
    assert sorted(order) == ["A", "B", "C", "D"]
    for (caller, _), callee in path.items():
        if caller is not None:
            assert order.index(callee) < order.index(caller)


def test_callees_first_takes_chains_deeper_than_the_recursion_limit():
    depth = sys.getrecursionlimit() + 100
    path = {(None, "c"): "f0"}
    path.update({(f"f{i}", "call"): f"f{i + 1}" for i in range(depth)})
    assert plumbing._callees_first(path) == [f"f{i}" for i in reversed(range(depth + 1))]


# -- output order --------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["a_tap", "z_tap"])
def test_signature_function_outputs_are_in_sorted_key_order(key, tmp_path):
    """TF2 loaders pair a signature's sorted keys with its function's outputs by position:
    output n of the wrapper, of the call node and of the SignatureDef is the nth key."""
    report, after = _tap_relu(tmp_path, key)
    outputs = after.signature_def["serving_default"].outputs
    keys = sorted(["logits", key])
    assert [outputs[k].name for k in keys] == ["StatefulPartitionedCall:0",
                                               "StatefulPartitionedCall:1"]
    assert [r.tensor for r in report.taps] == [outputs[key].name]
    wrapper = _functions(after)[WRAPPER]
    returned = [wrapper.ret[arg.name] for arg in wrapper.signature.output_arg]
    from_tap = [ref.startswith("StatefulPartitionedCall:") for ref in returned]
    assert from_tap == [k == key for k in keys]  # the tap is re-exported from the call
    shapes = _outer(after, "StatefulPartitionedCall").attr["_output_shapes"].list.shape
    dims = {"logits": [-1, 3], key: [-1, 8]}
    assert [index.shape_dims(s) for s in shapes] == [dims[k] for k in keys]


def test_permute_reorders_scalars_and_messages():
    value = protos.AttrValue()
    value.list.type.extend([1, 2, 3, 9])
    for size in (1, 2, 3, 9):
        value.list.shape.add().dim.add().size = size
    plumbing._permute(value.list, "type", [0, 3, 1, 2])
    plumbing._permute(value.list, "shape", [0, 3, 1, 2])
    assert list(value.list.type) == [1, 9, 2, 3]
    assert [s.dim[0].size for s in value.list.shape] == [1, 9, 2, 3]
    plumbing._permute(value.list, "type", [0, 1, 2, 3])
    assert list(value.list.type) == [1, 9, 2, 3]


# -- profile lookup ------------------------------------------------------------------------


def _xspace(path, events, line_name="tf_Compute/0"):
    """An XSpace whose one CPU line holds `events`: [(name, offset ps, duration ps)]."""
    space = protos.XSpace()
    plane = space.planes.add(name="/host:CPU")
    line = plane.lines.add(name=line_name, timestamp_ns=1)
    for i, (name, offset, duration) in enumerate(events, 1):
        plane.event_metadata[i].name = name
        line.events.add(metadata_id=i, offset_ps=offset, duration_ps=duration)
    path.write_bytes(space.SerializeToString())
    return str(path)


def test_trace_events_map_to_nodes_inside_function_bodies(tmp_path):
    candidates = graphtap.list_targets(str(SEQUENTIAL), signatures="serving_default")
    trace = _xspace(tmp_path / "host.xplane.pb", [
        # behind the call node into WRAPPED (the outer call node runs as the signature)
        ("StatefulPartitionedCall/sequential/hidden/Relu:_FusedMatMul", 0, 10),
        # the TF1 Session path names the outer call node too
        ("StatefulPartitionedCall/StatefulPartitionedCall/sequential/hidden/Relu:Relu", 10, 5),
        # a node Grappler added: its last component is dropped
        ("StatefulPartitionedCall/sequential/hidden_2/Tanh/grappler:Tanh", 20, 7),
        # "Identity" in two bodies: each path names one
        ("StatefulPartitionedCall/Identity:Identity", 30, 2),
        ("Identity:Identity", 40, 1),
        ("nowhere/Thing:Op", 50, 3),
        ("tensorflow::Runtime:Scope", 60, 100),  # the runtime's own scope: no op event
    ])
    match = traces.match_trace(candidates, [trace])
    times = {(t.candidate.function, t.candidate.node): (t.picoseconds, t.events)
             for t in match.times}
    assert times == {
        (WRAPPED, RELU): (15, 2),
        (WRAPPED, "sequential/hidden_2/Tanh"): (7, 1),
        (WRAPPED, "Identity"): (2, 1),
        (WRAPPER, "Identity"): (1, 1),
    }
    assert match.times[0].candidate.node == RELU  # most expensive first
    assert dict(match.unmapped) == {"nowhere/Thing": 1}
    assert match.op_events == 6 and match.wall_picoseconds == 53


def test_only_compute_lines_are_op_events(tmp_path):
    trace = _xspace(tmp_path / "host.xplane.pb", [("Identity:Identity", 0, 1)],
                    line_name="tf_threadpool")
    match = traces.match_trace([], [trace])
    assert match.op_events == 0 and not match.unmapped and match.wall_picoseconds == 0


def test_lookup_prefers_the_whole_path_then_drops_leading_calls():
    by_path = {"a/b": "ab", "b": "b", "x/y": "xy"}
    assert traces._lookup("a/b", by_path) == "ab"
    assert traces._lookup("q/a/b", by_path) == "ab"
    assert traces._lookup("q/b", by_path) == "b"
    assert traces._lookup("x/y/extra", by_path) == "xy"
    assert traces._lookup("x/y/extra/more", by_path) is None  # only one component dropped
    assert traces._lookup("y/x", by_path) is None


def test_a_node_is_timed_as_its_output_0(tmp_path):
    """A trace names nodes, not tensors: a node's time goes to its output 0, the tensor
    `--tap_name node` names, whichever of its outputs is listed first."""
    call = index.Call(None, "StatefulPartitionedCall", "f")
    split = [index.Candidate((call,), "f", "split", "Split", output, "output", output, 1, None)
             for output in (1, 0)]
    trace = _xspace(tmp_path / "host.xplane.pb", [("split:Split", 0, 4)])
    (time,) = traces.match_trace(split, [trace]).times
    assert time.candidate is split[1] and time.candidate.name == "split"


def test_a_body_the_gradient_registry_names_is_cloned(tmp_path):
    """A library `gradient` entry refers to WRAPPER by name: WRAPPER is copied, and the
    entry still names the untouched original."""
    model = tmp_path / "model"
    shutil.copytree(SEQUENTIAL, model)
    saved_model = _read(model)
    gradient = saved_model.meta_graphs[0].graph_def.library.gradient.add()
    gradient.function_name, gradient.gradient_func = WRAPPER, "__inference__traced_save_3903"
    (model / "saved_model.pb").write_bytes(saved_model.SerializeToString())

    _, after = _tap_relu(tmp_path, "z_tap", source=model)
    assert _outer(after, "StatefulPartitionedCall").attr["f"].func.name == f"{WRAPPER}_graphtap"
    assert [g.function_name for g in after.graph_def.library.gradient] == [WRAPPER]
    assert _functions(after)[WRAPPER] == _functions(saved_model.meta_graphs[0])[WRAPPER]


def test_whatever_reads_a_permuted_output_follows_it(tmp_path):
    """An outer node and another signature reading `logits` (output 0 before the tap
    sorts in front of it) read output 1 after; a control input stays as it was."""
    model = tmp_path / "model"
    shutil.copytree(SEQUENTIAL, model)
    saved_model = _read(model)
    meta_graph = saved_model.meta_graphs[0]
    reader = meta_graph.graph_def.node.add(name="reader", op="Identity")
    reader.input.extend(["StatefulPartitionedCall", "^StatefulPartitionedCall"])
    reader.attr["T"].type = protos.dtype_enum("DT_FLOAT")
    meta_graph.signature_def["other"].CopyFrom(meta_graph.signature_def["serving_default"])
    (model / "saved_model.pb").write_bytes(saved_model.SerializeToString())

    _, after = _tap_relu(tmp_path, "a_tap", source=model)
    assert list(_outer(after, "reader").input) == ["StatefulPartitionedCall:1",
                                                   "^StatefulPartitionedCall"]
    assert {k: v.name for k, v in after.signature_def["other"].outputs.items()} == {
        "logits": "StatefulPartitionedCall:1"}
