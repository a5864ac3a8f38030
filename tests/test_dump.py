"""`graphtap dump`: values, streaming statistics and TensorBoard summaries of a tapped
model's outputs, checked against direct signature calls and numpy."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import child_env
from loaders import run_tf2, write_examples

import graphtap
from graphtap import errors
from graphtap.run import dumping
from graphtap.run.stats import RunningStats

IMAGES = np.random.default_rng(11).standard_normal((37, 16, 16, 3)).astype("float32")


@pytest.fixture(scope="module")
def tapped_cnn(keras_cnn, tmp_path_factory):
    path, _ = keras_cnn
    root = tmp_path_factory.mktemp("dump")
    out = str(root / "tapped")
    report = graphtap.tap(path, out, ops=["Relu"])
    np.save(root / "images.npy", IMAGES)
    return path, out, [r.key for r in report.taps], root


@pytest.fixture(scope="module")
def direct(tapped_cnn):
    """Every output of the tapped signature, by one call on all the images."""
    _, out, _, _ = tapped_cnn
    return run_tf2(out, "serving_default", {"image": IMAGES})


def test_npz_holds_what_direct_calls_return(tapped_cnn, direct, tmp_path):
    _, out, taps, root = tapped_cnn
    images = graphtap.NpyFile(str(root / "images.npy"))
    stats = graphtap.dump(out, {"image": images}, str(tmp_path / "acts"), batch_size=8,
                          save="npz", progress=False)
    assert set(stats) == set(direct) and {k for k, s in stats.items() if s["is_tap"]} == set(taps)
    signature = tf.saved_model.load(out).signatures["serving_default"]
    batches = [signature(image=tf.constant(IMAGES[i:i + 8])) for i in range(0, len(IMAGES), 8)]
    for key in direct:
        expected = np.concatenate([batch[key].numpy() for batch in batches])
        with np.load(tmp_path / "acts" / f"{key}.npz") as archive:
            assert archive.files == [key]
            assert archive[key].dtype == expected.dtype and archive[key].shape == expected.shape
            assert archive[key].tobytes() == expected.tobytes()
    saved = json.loads((tmp_path / "acts" / "stats.json").read_text())
    assert saved["outputs"] == json.loads(json.dumps(stats))


def test_streamed_statistics_equal_numpy_over_everything(tapped_cnn, direct, tmp_path):
    _, out, _, _ = tapped_cnn
    stats = graphtap.dump(out, {"image": IMAGES}, str(tmp_path / "acts"), batch_size=5,
                          progress=False)
    for key, values in direct.items():
        s = stats[key]
        values = values.astype(np.float64)
        assert s["count"] == values.size
        np.testing.assert_allclose(s["mean"], values.mean(), rtol=1e-6)
        np.testing.assert_allclose(s["std"], values.std(), rtol=1e-5)
        np.testing.assert_allclose([s["min"], s["max"]], [values.min(), values.max()], rtol=1e-5)
        np.testing.assert_allclose(s["zero_fraction"], np.count_nonzero(values == 0) / values.size,
                                   atol=1e-3)  # batching may round a value across zero
        channels = values.reshape(-1, values.shape[-1])
        np.testing.assert_allclose(s["channel_mean"], channels.mean(axis=0), rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(s["channel_zero_fraction"], (channels == 0).mean(axis=0))
        assert s["nan_count"] == s["inf_count"] == 0


def _held_bytes(obj, seen=None):
    """Bytes reachable from `obj` through instance attributes, containers and arrays (a view
    counts the data it shows): whatever a RunningStats keeps, and wherever it keeps it. A
    number counts 8 bytes, its value, not the size of Python's representation (which grows
    with the count's digits, not with what is held)."""
    if isinstance(obj, (int, float, np.number)):
        return 8
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, np.ndarray):
        return size if obj.flags.owndata else size + obj.nbytes
    if isinstance(obj, dict):
        children = [*obj.keys(), *obj.values()]
    elif isinstance(obj, (list, tuple, set, frozenset)):
        children = obj
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        children = vars(obj).values()
    else:
        children = ()
    return size + sum(_held_bytes(child, seen) for child in children)


class _KeepsBatches(RunningStats):
    """What the test must catch: statistics that hold on to what passed through them."""

    def add(self, batch):
        super().add(batch)
        self.kept = getattr(self, "kept", []) + [batch]


def test_streaming_holds_one_batch_whatever_the_data_size(tapped_cnn):
    """Batches come in at batch size, and the statistics hold as much after 8 batches of
    data as after one: nothing grows with the data set. Everything the statistics objects
    reach is counted (not only the arrays they make on the first batch), and statistics
    that keep their batches are seen to grow."""
    _, out, _, _ = tapped_cnn
    stats, keeping = {}, {}
    held, held_keeping, seen_bytes = [], [], 0
    for outputs in graphtap.activations(out, {"image": IMAGES}, batch_size=5):
        assert {len(v) for v in outputs.values()} <= {5, len(IMAGES) % 5}
        for key, values in outputs.items():
            stats.setdefault(key, RunningStats()).add(values)
            keeping.setdefault(key, _KeepsBatches()).add(values)
            seen_bytes += values.nbytes
        held.append(_held_bytes(stats))
        held_keeping.append(_held_bytes(keeping))
    assert len(held) == 8 and len(set(held)) == 1
    assert held_keeping[-1] - held_keeping[0] > seen_bytes / 2  # the measure sees retention


def test_zero_fraction_finds_a_dead_layer(tmp_path):
    import keras

    inputs = keras.Input(shape=(4,), name="x")
    dead = keras.layers.Dense(3, activation="relu", name="dead")(inputs)
    alive = keras.layers.Dense(2, activation="relu", name="alive", bias_initializer="ones")(inputs)
    model = keras.Model(inputs, keras.layers.Concatenate()([dead, alive]))
    model.get_layer("dead").bias.assign(np.full(3, -1000.0, "float32"))
    model.export(str(tmp_path / "model"), verbose=False)
    graphtap.tap(str(tmp_path / "model"), str(tmp_path / "tapped"), ops=["Relu"])
    x = np.random.default_rng(2).uniform(-1, 1, (20, 4)).astype("float32")
    stats = graphtap.dump(str(tmp_path / "tapped"), {"x": x}, str(tmp_path / "acts"),
                          batch_size=6, progress=False)
    by_layer = {("dead" if "dead" in key else "alive"): s
                for key, s in stats.items() if s["is_tap"]}
    assert by_layer["dead"]["zero_fraction"] == 1.0
    assert by_layer["dead"]["channel_zero_fraction"] == [1.0, 1.0, 1.0]
    assert by_layer["alive"]["zero_fraction"] < 0.5


def test_nan_counts_find_an_injected_nan(tapped_cnn, tmp_path):
    _, out, taps, _ = tapped_cnn
    images = IMAGES[:9].copy()
    images[4, 8, 8, 1] = np.nan
    expected = run_tf2(out, "serving_default", {"image": images})
    stats = graphtap.dump(out, {"image": images}, str(tmp_path / "acts"), batch_size=4,
                          progress=False)
    for key, values in expected.items():
        assert stats[key]["nan_count"] == np.count_nonzero(np.isnan(values))
    # Whether Relu(NaN) is NaN depends on the CPU's kernel: the NaN surely reaches the first
    # Relu (after a Conv2D), not necessarily those after it.
    assert stats[taps[0]]["nan_count"] > 0
    finite = expected["output_0"][np.isfinite(expected["output_0"])]
    np.testing.assert_allclose(stats["output_0"]["mean"], finite.mean(), rtol=1e-6)


def test_tensorboard_has_one_histogram_per_output(tapped_cnn, tmp_path):
    _, out, _, _ = tapped_cnn
    logdir = tmp_path / "tb"
    graphtap.dump(out, {"image": IMAGES}, str(tmp_path / "acts"), batch_size=10,
                  tensorboard=str(logdir), progress=False)
    histograms, scalars = {}, set()
    for name in os.listdir(logdir):
        for event in tf.compat.v1.train.summary_iterator(str(logdir / name)):
            for value in event.summary.value:
                plugin = value.metadata.plugin_data.plugin_name
                if plugin == "histograms":
                    buckets = tf.make_ndarray(value.tensor)
                    assert buckets.shape[1] == 3 and buckets[:, 2].sum() > 0
                    histograms.setdefault(value.tag, []).append(event.step)
                elif plugin == "scalars":
                    scalars.add(value.tag)
    keys = set(run_tf2(out, "serving_default", {"image": IMAGES[:1]}))
    assert set(histograms) == keys
    assert all(sorted(steps) == [0, 1, 2, 3] for steps in histograms.values())
    assert {f"{key}/zero_fraction" for key in keys} <= scalars


def test_untapped_model_and_added_signature(keras_cnn, tapped_cnn, tmp_path):
    path, _ = keras_cnn
    stats = graphtap.dump(path, {"image": IMAGES}, str(tmp_path / "plain"), progress=False)
    assert list(stats) == ["output_0"] and not stats["output_0"]["is_tap"]
    graphtap.tap(path, str(tmp_path / "added"), names=["cnn_1/dense_1/Relu=dense"], mode="add")
    stats = graphtap.dump(str(tmp_path / "added"), {"image": IMAGES}, str(tmp_path / "acts"),
                          signature="serving_default_tapped", progress=False)
    assert sorted(stats) == ["dense", "output_0"] and stats["dense"]["is_tap"]


def test_tfrecord_of_examples_gives_the_npy_statistics(tapped_cnn, tmp_path):
    _, out, _, _ = tapped_cnn
    record = str(tmp_path / "images.tfrecord")
    write_examples(record, IMAGES)
    from_records = graphtap.dump(out, graphtap.TFRecord(record, {"image": "pixels"}),
                                 str(tmp_path / "a"), batch_size=8, progress=False)
    from_arrays = graphtap.dump(out, {"image": IMAGES}, str(tmp_path / "b"), batch_size=8,
                                progress=False)
    assert from_records == from_arrays


def test_max_examples_stops_early(tapped_cnn, tmp_path):
    _, out, _, _ = tapped_cnn
    stats = graphtap.dump(out, {"image": IMAGES}, str(tmp_path / "acts"), batch_size=8,
                          max_examples=10, save="npz", progress=False)
    assert stats["output_0"]["count"] == 10 * 4
    with np.load(tmp_path / "acts" / "output_0.npz") as archive:
        assert archive["output_0"].shape == (10, 4)


@pytest.mark.parametrize("data, message", [
    ({"images": IMAGES}, "has no input 'images'; its inputs: image"),
    ({"image": IMAGES[..., :2]}, "has shape (16, 16, 2) per example"),
    ({"image": IMAGES.astype("complex64")}, "is complex64; the signature takes float32"),
])
def test_bad_data_is_one_error_and_leaves_no_output(tapped_cnn, tmp_path, data, message):
    _, out, _, _ = tapped_cnn
    with pytest.raises(errors.BadInput, match=message.replace("(", r"\(").replace(")", r"\)")):
        graphtap.dump(out, data, str(tmp_path / "acts"), progress=False)
    assert os.listdir(tmp_path) == []


def test_cli_dump_end_to_end_and_its_errors(tapped_cnn, tmp_path):
    _, out, taps, root = tapped_cnn

    def graphtap_dump(*args):
        return subprocess.run([sys.executable, "-m", "graphtap", "dump", f"--model={out}", *args],
                              capture_output=True, text=True, env=child_env(), timeout=300)

    done = graphtap_dump(f"--inputs=image={root / 'images.npy'}", f"--out={tmp_path / 'acts'}",
                         "--save=npz", "--batch_size=16")
    assert done.returncode == 0, done.stderr
    assert all(key in done.stdout for key in taps)
    assert sorted(os.listdir(tmp_path / "acts")) == sorted(
        [f"{key}.npz" for key in taps] + ["output_0.npz", "stats.json"])
    for args, message in (
        ([f"--inputs=image={tmp_path / 'missing.npy'}"], "no such input file"),
        ([f"--inputs=image={root / 'images.npy'}", f"--tfrecord={root / 'x'}"], "one way"),
        ([f"--inputs=image={root / 'images.npy'}", f"--values_out={tmp_path / 'v'}"],
         "--values_out is where --runner writes values"),
    ):
        failed = graphtap_dump(*args, f"--out={tmp_path / 'failed'}")
        assert failed.returncode == 2 and message in failed.stderr
        assert len(failed.stderr.strip().splitlines()) == 1, failed.stderr
    assert not (tmp_path / "failed").exists() and not (tmp_path / "v").exists()
    with pytest.raises(errors.InputNotFound):
        graphtap.dump(str(tmp_path / "nowhere"), {"image": IMAGES}, str(tmp_path / "x"))


def test_values_beyond_the_shard_size_go_to_numbered_shards(tapped_cnn, direct, tmp_path,
                                                            monkeypatch):
    _, out, _, _ = tapped_cnn
    monkeypatch.setattr(dumping, "SHARD_BYTES", 10 * 4 * 4)  # ten rows of output_0 (4 floats)
    graphtap.dump(out, {"image": IMAGES}, str(tmp_path / "acts"), batch_size=5, save="npz",
                  progress=False)
    shards = sorted(n for n in os.listdir(tmp_path / "acts") if n.startswith("output_0"))
    assert shards == [f"output_0-{i:05d}.npz" for i in range(4)]  # 37 rows: 10, 10, 10, 7
    parts = []
    for name in shards:
        with np.load(tmp_path / "acts" / name) as archive:
            parts.append(archive["output_0"])
    assert [len(p) for p in parts] == [10, 10, 10, 7]
    np.testing.assert_allclose(np.concatenate(parts), direct["output_0"], rtol=1e-5, atol=1e-7)


def test_tf1_builder_model_with_two_meta_graphs(tf1_builder, tmp_path):
    from loaders import run_tf1

    path, _ = tf1_builder
    x = np.random.default_rng(5).standard_normal((10, 5)).astype("float32")
    stats = graphtap.dump(path, {"x": x}, str(tmp_path / "acts"), batch_size=4, progress=False)
    expected = run_tf1(path, "serving_default", {"x": x})
    for key, values in expected.items():
        assert stats[key]["count"] == values.size
        np.testing.assert_allclose(stats[key]["mean"], values.astype(np.float64).mean(), rtol=1e-6)
    with pytest.raises(errors.CorruptModel, match="tags 'nope' could not be found"):
        graphtap.dump(path, {"x": x}, str(tmp_path / "other"), tag_set="nope")


@pytest.fixture(scope="module")
def mixed_outputs_model(tmp_path_factory):
    """A SavedModel whose outputs are float32 around 1e4 with a spread of 0.01 (where a
    float32 sum of squares loses every digit of the variance), that with NaNs and
    infinities, integers, booleans, a rank-1 output and strings."""

    class Mixed(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 50, 4], tf.float32, name="x")])
        def serve(self, x):
            wide = 1e4 + x * 0.01
            holes = tf.where(x > 2.5, np.nan, tf.where(x < -2.5, -np.inf, x))
            return {"wide": wide, "holes": holes, "ints": tf.cast(x * 100, tf.int32),
                    "flags": x > 0, "rows": tf.reduce_sum(wide, axis=[1, 2]),
                    "text": tf.strings.as_string(x[:, 0, 0])}

    module = Mixed()
    path = str(tmp_path_factory.mktemp("mixed") / "model")
    tf.saved_model.save(module, path, signatures=module.serve)
    return path


def test_in_graph_statistics_equal_float64_numpy_on_a_wide_dynamic_range(mixed_outputs_model,
                                                                          tmp_path):
    x = np.random.default_rng(3).standard_normal((203, 50, 4)).astype("float32")
    stats = graphtap.dump(mixed_outputs_model, {"x": x}, str(tmp_path / "acts"), batch_size=32,
                          progress=False)
    expected = run_tf2(mixed_outputs_model, "serving_default", {"x": x})
    wide = expected["wide"].astype(np.float64)
    naive = np.float32(np.mean(np.square(expected["wide"], dtype=np.float32), dtype=np.float32)
                       - np.square(np.mean(expected["wide"], dtype=np.float32)))
    assert not np.isclose(np.sqrt(max(naive, 0)), wide.std(), rtol=0.1)  # the trap is real
    for key, values in expected.items():
        s = stats[key]
        assert s["count"] == values.size and s["example_shape"] == list(values.shape[1:])
        if key == "text":
            assert s["mean"] is None and s["zero_fraction"] is None
            continue
        values = values.astype(np.float64)
        finite = values[np.isfinite(values)]
        np.testing.assert_allclose([s["mean"], s["std"]], [finite.mean(), finite.std()],
                                   rtol=1e-9)
        assert [s["min"], s["max"]] == [finite.min(), finite.max()]
        assert s["zero_fraction"] == np.count_nonzero(values == 0) / values.size
        assert [s["nan_count"], s["inf_count"]] == [np.isnan(values).sum(), np.isinf(values).sum()]
        if values.ndim >= 2:
            channels = values.reshape(-1, values.shape[-1])
            mask = np.isfinite(channels)
            np.testing.assert_allclose(
                s["channel_mean"], np.where(mask, channels, 0).sum(0) / mask.sum(0), rtol=1e-9)
            assert s["channel_zero_fraction"] == (channels == 0).mean(axis=0).tolist()
        else:
            assert "channel_mean" not in s
    assert stats["holes"]["nan_count"] > 0 and stats["holes"]["inf_count"] > 0
    # Only the batch with NaNs and infinities comes to the host as values.
    parts, values = dumping.Runner(mixed_outputs_model, None).run_partials({"x": x[:32]})
    assert sorted(parts) == sorted(expected) and list(values) == ["holes"]


@pytest.fixture(scope="module")
def scalar_input_model(tmp_path_factory):
    """A SavedModel whose signature takes a batch `x` and a scalar `scale`, and one whose
    only input is a scalar."""

    class Scaled(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x"),
                                      tf.TensorSpec([], tf.float32, name="scale")])
        def serve(self, x, scale):
            return {"y": tf.nn.relu(x * scale, name="act")}

        @tf.function(input_signature=[tf.TensorSpec([], tf.float32, name="scale")])
        def alone(self, scale):
            return {"y": scale * 2.0}

    root = tmp_path_factory.mktemp("scalar")
    module = Scaled()
    paths = {}
    for name, function in (("mixed", module.serve), ("alone", module.alone)):
        paths[name] = str(root / name)
        tf.saved_model.save(module, paths[name], signatures={"serving_default": function})
    return paths


def test_a_scalar_input_is_fed_whole_with_every_batch(scalar_input_model, tmp_path):
    x = np.random.default_rng(7).standard_normal((10, 4)).astype("float32")
    data = {"x": x, "scale": np.float32(3.0)}
    stats = graphtap.dump(scalar_input_model["mixed"], data, str(tmp_path / "acts"),
                          batch_size=4, max_examples=9, save="npz", progress=False)
    expected = np.maximum(x[:9] * 3.0, 0)
    assert stats["y"]["count"] == expected.size
    with np.load(tmp_path / "acts" / "y.npz") as archive:
        np.testing.assert_allclose(archive["y"], expected, rtol=1e-6)
    batches = list(graphtap.activations(scalar_input_model["mixed"], data, batch_size=4))
    assert [len(b["y"]) for b in batches] == [4, 4, 2]


def test_scalar_inputs_that_cannot_be_fed_are_bad_input_naming_them(scalar_input_model,
                                                                    tmp_path):
    x = np.zeros((6, 4), "float32")
    mixed, alone = scalar_input_model["mixed"], scalar_input_model["alone"]
    cases = [(mixed, {"x": np.float32(1), "scale": np.float32(2)}, "input 'x' is a scalar"),
             (mixed, {"x": x, "scale": np.ones(6, "float32")},
              "input 'scale' is a scalar in the signature"),
             (alone, {"scale": np.float32(2)}, "every input is a scalar: scale"),
             (mixed, graphtap.TFRecord(str(tmp_path / "empty.tfrecord"), ["x", "scale"]),
              "input 'scale' is a scalar in the signature.*no tf.Example feature")]
    (tmp_path / "empty.tfrecord").write_bytes(b"")
    for number, (model, data, message) in enumerate(cases):
        with pytest.raises(errors.BadInput, match=message):
            graphtap.dump(model, data, str(tmp_path / f"acts{number}"), progress=False)
        assert not (tmp_path / f"acts{number}").exists()


def test_cli_dump_of_a_scalar_input(scalar_input_model, tmp_path):
    np.savez(tmp_path / "data.npz", x=np.ones((5, 4), "float32"), scale=np.float32(2))
    np.savez(tmp_path / "alone.npz", scale=np.float32(2))

    def graphtap_cli(model, data, out):
        return subprocess.run([sys.executable, "-m", "graphtap", "dump", f"--model={model}",
                               f"--inputs_npz={data}", f"--out={out}"],
                              capture_output=True, text=True, env=child_env(), timeout=300)

    done = graphtap_cli(scalar_input_model["mixed"], tmp_path / "data.npz", tmp_path / "acts")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "acts" / "stats.json").read_text())["outputs"]["y"]["mean"] == 2
    failed = graphtap_cli(scalar_input_model["alone"], tmp_path / "alone.npz", tmp_path / "no")
    assert failed.returncode == 2
    lines = [line for line in failed.stderr.splitlines()  # less TensorFlow's start-up logs
             if not line.startswith(("WARNING: All log messages before absl", "I0000 "))]
    assert len(lines) == 1 and lines[0].startswith("graphtap: error: every input is a scalar: "
                                                   "scale"), failed.stderr
