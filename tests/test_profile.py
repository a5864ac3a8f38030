"""Profiler traces as a selector: `graphtap profile` writes a standard trace, and
`--tap_profile` maps its op events back onto the signature's nodes and taps the costliest."""

import os
import subprocess
import sys

import pytest
from conftest import child_env
from loaders import run_tf2

import graphtap
from graphtap import errors
from graphtap.rewrite import traces


@pytest.fixture(scope="module")
def profiles(keras_cnn, mobilenet_v2, nested_module, tmp_path_factory):
    root = tmp_path_factory.mktemp("profiles")
    made = {}
    for name, (path, _) in (("cnn", keras_cnn), ("mobilenet", mobilenet_v2),
                            ("nested", nested_module)):
        logdir = str(root / name)
        made[name] = (path, logdir, graphtap.profile(path, logdir, runs=4, batch_size=2))
    return made


@pytest.mark.parametrize("name", ["cnn", "mobilenet"])
def test_profile_then_tap_the_top_five(profiles, name, tmp_path):
    path, logdir, traced = profiles[name]
    [trace] = traced.files
    assert trace.startswith(os.path.join(logdir, "plugins", "profile"))
    assert trace.endswith(".xplane.pb")
    assert traced.times and all(t.picoseconds > 0 and t.events >= 1 for t in traced.times)
    assert sum(t.picoseconds for t in traced.times) <= traced.wall_picoseconds
    assert sum(traced.unmapped.values()) < 0.1 * traced.op_events
    report = graphtap.tap(path, str(tmp_path / "tapped"), profile=logdir, top_k=5)
    top = [t.candidate.name for t in traced.times if not t.candidate.blocked][:5]
    assert sorted(r.node for r in report.taps) == sorted(top)
    names = {c.name for c in graphtap.list_targets(path)}
    assert set(top) <= names
    outputs = run_tf2(str(tmp_path / "tapped"), "serving_default", _inputs(path))
    assert all(r.key in outputs for r in report.taps)


def _inputs(path):
    import numpy as np

    from graphtap.run.dumping import Runner

    specs = Runner(path, None).specs
    return {name: np.ones([2] + [d or 1 for d in spec.shape.as_list()[1:]], "float32")
            for name, spec in specs.items()}


def test_one_node_name_in_two_call_paths_maps_to_each_exactly(profiles):
    """`inner` runs twice per call, through two call nodes: its `act` is two tensors, and
    each gets exactly the events of its own path, one per run."""
    _, _, traced = profiles["nested"]
    acts = [t for t in traced.times if t.candidate.node == "act"]
    assert len(acts) == 2
    assert {tuple(c.node for c in t.candidate.calls) for t in acts} == {
        ("StatefulPartitionedCall_1", "StatefulPartitionedCall", "StatefulPartitionedCall",
         "StatefulPartitionedCall"),
        ("StatefulPartitionedCall_1", "StatefulPartitionedCall", "StatefulPartitionedCall",
         "StatefulPartitionedCall_1")}
    assert [t.events for t in acts] == [4, 4]
    matmuls = [t for t in traced.times if t.candidate.node == "MatMul"]
    assert len(matmuls) == 2 and [t.events for t in matmuls] == [4, 4]  # one node, two paths


def test_names_pick_among_traced_nodes(profiles, tmp_path):
    path, logdir, traced = profiles["cnn"]
    report = graphtap.tap(path, str(tmp_path / "tapped"), profile=logdir, names=[".*/Relu"])
    traced_relus = {t.candidate.name for t in traced.times if t.candidate.name.endswith("/Relu")}
    assert {r.node for r in report.taps} == traced_relus and traced_relus


def test_profile_of_another_model_and_missing_profile_are_errors(profiles, tmp_path):
    path, _, _ = profiles["cnn"]
    _, other_logdir, _ = profiles["mobilenet"]
    with pytest.raises(errors.NoMatch, match="was the profile taken of this model"):
        graphtap.tap(path, str(tmp_path / "a"), profile=other_logdir, top_k=5)
    with pytest.raises(errors.InputNotFound, match="no profile: expected plugins/profile"):
        graphtap.tap(path, str(tmp_path / "b"), profile=str(tmp_path))
    broken = tmp_path / "broken" / "plugins" / "profile" / "run"
    broken.mkdir(parents=True)
    (broken / "host.xplane.pb").write_bytes(b"\xff\xff not a proto")
    with pytest.raises(errors.CorruptModel, match="not an XSpace profile"):
        traces.match_trace([], traces.trace_files(str(tmp_path / "broken")))
    assert sorted(os.listdir(tmp_path)) == ["broken"]


def test_cli_profile_prints_top_ops_and_tap_profile_errors(keras_cnn, profiles, tmp_path):
    path, _ = keras_cnn

    def graphtap_cli(*args):
        return subprocess.run([sys.executable, "-m", "graphtap", *args], capture_output=True,
                              text=True, env=child_env(), timeout=300)

    done = graphtap_cli("profile", f"--input={path}", f"--logdir={tmp_path / 'prof'}",
                        "--runs=2", "--top_k=3")
    assert done.returncode == 0, done.stderr
    rows = done.stdout.splitlines()
    assert rows[0].split() == ["name", "op", "events", "total", "ms", "share"]
    assert len(rows) >= 5 and rows[1].split()[2] == "2"
    _, other_logdir, _ = profiles["mobilenet"]
    for logdir, message in ((other_logdir, "was the profile taken of this model"),
                            (tmp_path / "empty", "no profile: expected")):
        failed = graphtap_cli("tap", f"--input={path}", f"--output={tmp_path / 'out'}",
                              f"--tap_profile={logdir}")
        assert failed.returncode == 2 and message in failed.stderr
        assert len(failed.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def tagged_only_custom(tmp_path_factory):
    """A SavedModel whose only meta graph is tagged `custom`, not `serve`."""
    import tensorflow as tf

    from graphtap.rewrite import protos

    class Scale(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x):
            return {"y": tf.nn.relu(x * 3.0, name="act")}

    path = str(tmp_path_factory.mktemp("tagged") / "model")
    module = Scale()
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    pb = os.path.join(path, "saved_model.pb")
    with open(pb, "rb") as f:
        saved_model = protos.SavedModel.FromString(f.read())
    (meta_graph,) = saved_model.meta_graphs
    meta_graph.meta_info_def.ClearField("tags")
    meta_graph.meta_info_def.tags.append("custom")
    with open(pb, "wb") as f:
        f.write(saved_model.SerializeToString())
    return path


def test_profile_runs_the_meta_graph_of_the_tag_set(tagged_only_custom, tmp_path):
    traced = graphtap.profile(tagged_only_custom, str(tmp_path / "prof"), runs=2,
                              tag_set="custom")
    assert "act" in {t.candidate.node for t in traced.times}
    with pytest.raises(errors.GraphtapError, match="serve"):
        graphtap.profile(tagged_only_custom, str(tmp_path / "other"), runs=1)


def test_cli_profile_takes_tag_set(tagged_only_custom, tmp_path):
    done = subprocess.run([sys.executable, "-m", "graphtap", "profile",
                           f"--input={tagged_only_custom}", f"--logdir={tmp_path / 'prof'}",
                           "--runs=1", "--tag_set=custom"],
                          capture_output=True, text=True, env=child_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    assert "act" in done.stdout
