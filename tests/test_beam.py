"""`graphtap dump --runner=...`: the Beam pipeline (graphtap/run/beam.py) against the
in-process dump, ActivationStats merged in any order, and bad input. Needs apache-beam
(the `beam` extra)."""

import glob
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

beam_module = pytest.importorskip("apache_beam")

import tensorflow as tf  # noqa: E402
from conftest import child_env  # noqa: E402
from loaders import run_tf2  # noqa: E402

import graphtap  # noqa: E402
from graphtap.run import beam  # noqa: E402
from graphtap.run.stats import RunningStats  # noqa: E402

EXAMPLES = 2000
TF_STARTUP = re.compile(r"WARNING: All log messages before absl::InitializeLog|[IWE]\d{4} ")
IMAGES = np.random.default_rng(19).standard_normal((EXAMPLES, 16, 16, 3)).astype("float32")


@pytest.fixture(scope="module")
def tapped(keras_cnn, tmp_path_factory):
    path, _ = keras_cnn
    root = tmp_path_factory.mktemp("beam")
    out = str(root / "tapped")
    graphtap.tap(path, out, ops=["Relu"])
    shards = []
    for number, part in enumerate(np.array_split(IMAGES, 4)):
        shard = str(root / f"images-{number:05d}-of-00004.tfrecord")
        with tf.io.TFRecordWriter(shard) as writer:
            for image in part:
                feature = tf.train.Feature(float_list=tf.train.FloatList(value=image.ravel()))
                example = tf.train.Example(features=tf.train.Features(feature={"pixels": feature}))
                writer.write(example.SerializeToString())
        shards.append(shard)
    return out, root


def _examples(count, seed):
    rng = np.random.default_rng(seed)
    values = 1e3 + rng.standard_normal((count, 6, 5))
    values[rng.random(values.shape) < 0.05] = 0
    values[3, 1, 1] = np.nan
    return [{"a": v.astype("float32"), "b": (v[:, 0] > 1e3).astype("int32"),
             "c": np.array(b"x")} for v in values]


def _combine(fn, examples, rng):
    """Splits `examples` into shuffled, uneven bundles (some empty), adds each into its own
    accumulator and merges those in a random tree."""
    order = rng.permutation(len(examples))
    cuts = np.sort(rng.integers(0, len(examples) + 1, size=7))
    accumulators = []
    for bundle in np.split(order, cuts):
        accumulator = fn.create_accumulator()
        for i in bundle:
            accumulator = fn.add_input(accumulator, examples[i])
        accumulators.append(accumulator)
    accumulators.append(fn.create_accumulator())
    while len(accumulators) > 1:
        rng.shuffle(accumulators)
        size = int(rng.integers(2, len(accumulators) + 1))
        accumulators = [fn.merge_accumulators(accumulators[:size]), *accumulators[size:]]
    return fn.extract_output(accumulators[0])


def test_activation_stats_merge_in_any_order_to_the_same_result():
    examples = _examples(101, seed=4)
    fn = beam.ActivationStats()
    results = [_combine(fn, examples, np.random.default_rng(seed)) for seed in range(6)]
    expected = {key: RunningStats.of_values(np.stack([e[key] for e in examples])).summary()
                for key in examples[0]}
    assert fn.extract_output(fn.merge_accumulators([])) == {}
    for result in results:
        assert sorted(result) == ["a", "b", "c"]
        for key, stats in result.items():
            for name, value in expected[key].items():
                if isinstance(value, float) or name == "channel_mean":
                    np.testing.assert_allclose(stats[name], value, rtol=1e-12, err_msg=name)
                else:
                    assert stats[name] == value, (key, name)
    assert results[0]["a"]["nan_count"] == 1 and results[0]["c"]["count"] == 101
    a = np.stack([e["a"] for e in examples]).astype(np.float64)
    np.testing.assert_allclose(results[0]["a"]["std"], np.nanstd(a), rtol=1e-9)


def test_direct_runner_two_workers_equals_the_single_process_dump(tapped, tmp_path):
    out, root = tapped
    stats = beam.dump(out, str(root / "images-*.tfrecord"), {"image": "pixels"},
                      str(tmp_path / "beam"), runner="DirectRunner", batch_size=64, save="npz",
                      pipeline_args=["--direct_num_workers=2",
                                     "--direct_running_mode=multi_processing"])
    single = graphtap.dump(out, {"image": IMAGES}, str(tmp_path / "single"), batch_size=64,
                           progress=False)
    assert sorted(stats) == sorted(single)
    for key, expected in single.items():
        got = stats[key]
        assert got["count"] == expected["count"] and got["is_tap"] == expected["is_tap"]
        assert [got[n] for n in ("nan_count", "inf_count", "example_shape")] == \
            [expected[n] for n in ("nan_count", "inf_count", "example_shape")]
        for name in ("mean", "std", "min", "max", "zero_fraction", "channel_mean",
                     "channel_zero_fraction"):
            if name in expected:
                np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-7,
                                           err_msg=f"{key} {name}")
    saved = json.loads((tmp_path / "beam" / "stats.json").read_text())
    assert saved["outputs"] == json.loads(json.dumps(stats))
    direct = run_tf2(out, "serving_default", {"image": IMAGES})
    ids, values = [], {key: [] for key in direct}
    for name in sorted(glob.glob(str(tmp_path / "beam" / "values-*.npz"))):
        with np.load(name) as archive:
            ids.extend(archive["example_id"].tolist())
            for key in direct:
                values[key].append(archive[key])
    names = os.listdir(tmp_path / "beam")
    assert [n for n in names if not n.startswith("values-")] == ["stats.json"]  # no leftovers
    expected_ids = [f"images-{s:05d}-of-00004.tfrecord:{i}"
                    for s, part in enumerate(np.array_split(np.arange(EXAMPLES), 4))
                    for i in range(len(part))]
    assert sorted(ids) == sorted(expected_ids)  # every example exactly once
    row = {example_id: n for n, example_id in enumerate(expected_ids)}
    order = [row[example_id] for example_id in ids]
    for key, parts in values.items():
        np.testing.assert_allclose(np.concatenate(parts), direct[key][order], rtol=1e-5,
                                   atol=1e-6)


def test_bad_input_is_one_line_and_writes_nothing(tapped, tmp_path):
    out, root = tapped
    (tmp_path / "not.tfrecord").write_bytes(b"this is not a TFRecord file at all" * 10)

    def graphtap_dump(pattern, feature="image=pixels"):
        return subprocess.run(
            [sys.executable, "-m", "graphtap", "dump", f"--model={out}", "--runner=DirectRunner",
             f"--tfrecord={pattern}", f"--feature={feature}", f"--out={tmp_path / 'acts'}",
             "--direct_num_workers=1"],
            capture_output=True, text=True, env=child_env(), timeout=300)

    for pattern, feature, message in (
        (str(tmp_path / "nothing-*.tfrecord"), "image=pixels", "no file matches"),
        (str(root / "images-*.tfrecord"), "image=missing", "cannot read tf.Examples"),
        (str(tmp_path / "not.tfrecord"), "image=pixels", "not a TFRecord file"),
    ):
        failed = graphtap_dump(pattern, feature)
        assert failed.returncode == 2, failed.stderr
        # TensorFlow 2.21 prints its C++ start-up lines (oneDNN) whatever TF_CPP_MIN_LOG_LEVEL
        lines = [line for line in failed.stderr.strip().splitlines()
                 if not TF_STARTUP.match(line)]
        assert len(lines) == 1 and lines[0].startswith("graphtap: error: "), failed.stderr
        assert message in lines[0] and "function_node" not in lines[0]
        assert not (tmp_path / "acts").exists()
