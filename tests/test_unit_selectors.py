"""Unit layer: selectors behind one interface, with no TensorFlow runtime."""

import pytest

from graphtap import errors
from graphtap.options import TapOptions
from graphtap.rewrite import protos
from graphtap.rewrite.index import Candidate
from graphtap.rewrite.selectors import (LayerSelector, NameSelector, OpSelector, Prefilter,
                                        ProfileSelector, Selector, select, selectors_from)

pytestmark = pytest.mark.unit

FLOAT, INT32 = protos.dtype_enum("DT_FLOAT"), protos.dtype_enum("DT_INT32")


def candidate(node, op="Relu", dtype=FLOAT, blocked=None):
    return Candidate((), None, node, op, 0, "y", 0, dtype, None, blocked=blocked)


class DtypeSelector(Selector):
    """A toy selector: every tensor of one dtype, keyed by nothing."""

    def __init__(self, dtype):
        self.dtype = dtype

    def pick(self, candidates, context):
        picked = [(c, None) for c in candidates if c.dtype == self.dtype]
        if not picked:
            raise errors.NoMatch(f"no tensor of dtype {protos.dtype_name(self.dtype)}")
        return picked


GRAPH = [candidate("a/Relu"), candidate("b/Cast", "Cast", INT32), candidate("c/Shape", "Shape",
                                                                            INT32)]


def test_a_new_selector_is_one_class():
    chosen = select(GRAPH, [DtypeSelector(INT32)], exclude=["c/.*"])
    assert [c.node for c, _ in chosen] == ["b/Cast"]
    with pytest.raises(errors.NoMatch, match="dtype float64"):
        select(GRAPH, [DtypeSelector(protos.dtype_enum("DT_DOUBLE"))])


def test_selectors_make_a_union_in_candidate_order_with_keys():
    chosen = select(GRAPH, [DtypeSelector(INT32), NameSelector([("a/Relu", "first")])])
    assert [(c.node, key) for c, key in chosen] == [("a/Relu", "first"), ("b/Cast", None),
                                                    ("c/Shape", None)]


def test_two_keys_for_one_tensor_are_refused():
    with pytest.raises(errors.BadKey, match="two keys given for one tensor: 'x' and 'y'"):
        select(GRAPH, [NameSelector([("a/Relu", "x")]), NameSelector([("a/.*", "y")])])


def test_a_key_on_a_selector_of_several_tensors_is_refused():
    with pytest.raises(errors.BadKey, match="matches 2 tensors"):
        select(GRAPH, [NameSelector([("[bc]/.*", "k")])])


def test_op_selectors_name_the_closest_ops():
    with pytest.raises(errors.NoMatch, match="op selector 'Relu6' .*closest: Relu"):
        select(GRAPH, [OpSelector(["Relu6"])])


def test_no_selector_and_a_blocked_pick_are_refused():
    with pytest.raises(errors.NoMatch, match="no selector given"):
        select(GRAPH, [])
    blocked = [candidate("w/x", blocked="inside a loop")]
    with pytest.raises(errors.NotTappable, match="inside a loop"):
        select(blocked, [DtypeSelector(FLOAT)])


def test_the_prefilter_is_the_union_of_hints_or_none():
    keep = Prefilter.of([NameSelector([("a/.*", None)]), OpSelector(["Cast"])])
    assert keep.ops == {"Cast"} and keep.regexes.patterns == ("a/.*",)
    assert Prefilter.of([NameSelector([("a/.*", None)]), DtypeSelector(INT32)]) is None


def test_selectors_from_options_in_merge_order(tmp_path):
    run = tmp_path / "plugins" / "profile" / "run"
    run.mkdir(parents=True)
    (run / "host.xplane.pb").write_bytes(b"")
    options = TapOptions(names=["a=k"], ops=["Relu"], layers=["dense"], profile=str(tmp_path))
    found = selectors_from(options)
    assert [type(s) for s in found] == [LayerSelector, ProfileSelector, OpSelector]
    assert found[1].names == (("a", "k"),)  # a profile takes the name selectors
    found = selectors_from(TapOptions(names=["a"], ops=["Relu"]))
    assert [type(s) for s in found] == [NameSelector, OpSelector]


# The op definitions a tiny hand-built GraphDef needs, in place of TensorFlow's registry.
_OP_DEFS = {name: protos.OpDef(name=name, output_arg=[{"name": arg, "type_attr": attr}],
                               attr=[{"name": attr, "type": "type"}])
            for name, arg, attr in [("Placeholder", "output", "dtype"),
                                    ("Relu", "activations", "T"), ("Identity", "output", "T")]}


def _tiny_graph_def(path):
    graph_def = protos.GraphDef()
    x = graph_def.node.add(name="x", op="Placeholder")
    x.attr["dtype"].type = FLOAT
    relu = graph_def.node.add(name="relu", op="Relu", input=["x"])
    relu.attr["T"].type = FLOAT
    path.write_bytes(graph_def.SerializeToString())
    return path


def test_a_graph_def_goes_through_the_output_check(tmp_path, monkeypatch):
    from graphtap.rewrite import check, opdefs, tapping

    monkeypatch.setattr(opdefs, "_registered_op_defs", lambda: (_OP_DEFS, None))
    checked = []
    real_check = check.check_output

    def recording_check(meta_graph, objects, keys, *args, **kwargs):
        checked.append({key: {k: (info.name, info.dtype)
                              for k, info in meta_graph.signature_def[key].outputs.items()}
                        for key in keys})
        return real_check(meta_graph, objects, keys, *args, **kwargs)

    monkeypatch.setattr(check, "check_output", recording_check)
    report = tapping.tap(str(_tiny_graph_def(tmp_path / "g.pb")), str(tmp_path / "out.pb"),
                         ops=["Relu"])
    (record,) = report.taps
    assert checked == [{None: {record.key: (record.tensor, FLOAT)}}]
    written = protos.GraphDef.FromString((tmp_path / "out.pb").read_bytes())
    assert [n.name for n in written.node][:2] == ["x", "relu"]
    assert report.output_names == [record.tensor.rsplit(":", 1)[0]]


def test_the_graph_def_output_check_refuses_a_broken_rewrite(tmp_path, monkeypatch):
    from graphtap.rewrite import opdefs, plumbing, tapping

    monkeypatch.setattr(opdefs, "_registered_op_defs", lambda: (_OP_DEFS, None))
    apply = plumbing.TapRewrite.apply

    def dropping_the_identity(self, taps):
        result = apply(self, taps)
        del self.graph_def.node[-1]  # a bug: the tap's Identity is gone
        return result

    monkeypatch.setattr(plumbing.TapRewrite, "apply", dropping_the_identity)
    with pytest.raises(errors.InternalError, match="names missing node"):
        tapping.tap(str(_tiny_graph_def(tmp_path / "g.pb")), str(tmp_path / "out.pb"),
                    ops=["Relu"])
    assert not (tmp_path / "out.pb").exists()
