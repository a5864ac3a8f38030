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

from conftest import child_env  # noqa: E402
from loaders import run_tf2, write_examples  # noqa: E402

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
        write_examples(shard, part)
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
    """Splits `examples` into shuffled, uneven bundles (some empty), each into batches of
    random sizes; adds each batch's partials {key: RunningStats} into its bundle's
    accumulator and merges those in a random tree."""
    order = rng.permutation(len(examples))
    cuts = np.sort(rng.integers(0, len(examples) + 1, size=7))
    accumulators = []
    for bundle in np.split(order, cuts):
        accumulator = fn.create_accumulator()
        while len(bundle):
            batch, bundle = np.split(bundle, [int(rng.integers(1, 9))])
            partials = {key: RunningStats.of_values(np.stack([examples[i][key] for i in batch]))
                        for key in examples[0]}
            accumulator = fn.add_input(accumulator, partials)
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


def test_run_inference_with_the_handler_gives_each_example_its_outputs(tapped):
    """TappedModelHandler in RunInference, on DirectRunner: each serialized tf.Example's
    result is {output key: values of that example}, as dumping.Runner.run gives them."""
    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
    from apache_beam.testing.util import assert_that

    from graphtap.run import dumping

    out, root = tapped
    count = 5
    records = [(i, r) for i, (_, r) in
               enumerate(beam._records(str(root / "images-00000-of-00004.tfrecord")))][:count]
    expected = dumping.Runner(out, None).run({"image": IMAGES[:count]})

    def equal_to_the_runs(results):
        assert sorted(i for i, _ in results) == list(range(count))
        for i, outputs in results:
            assert sorted(outputs) == sorted(expected)
            for key, values in outputs.items():
                np.testing.assert_allclose(values, expected[key][i], rtol=1e-5, atol=1e-6)

    handler = beam.TappedModelHandler(out, features={"image": "pixels"}, max_batch_size=2)
    with beam_module.Pipeline(options=beam.PipelineOptions(
            ["--direct_running_mode=in_memory"])) as pipeline:
        results = (pipeline | beam_module.Create(records)
                   | RunInference(KeyedModelHandler(handler)))
        assert_that(results, equal_to_the_runs)


TWO_WORKERS = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
EXPECTED_IDS = [f"images-{s:05d}-of-00004.tfrecord:{i}"
                for s, part in enumerate(np.array_split(np.arange(EXAMPLES), 4))
                for i in range(len(part))]


def _opened_paths(monkeypatch):
    """The paths this process (the launcher) opens through Beam's FileSystems.open."""
    opened = []
    real_open = beam.FileSystems.open

    def recording_open(path, *args, **kwargs):
        opened.append(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(beam.FileSystems, "open", recording_open)
    return opened


def _check_values(directory, model):
    """Every example id exactly once over the values files in `directory`, each row equal
    to the model's outputs for that example; returns the files' names."""
    direct = run_tf2(model, "serving_default", {"image": IMAGES})
    names = sorted(glob.glob(os.path.join(directory, "values-*.npz")))
    ids, values = [], {key: [] for key in direct}
    for name in names:
        with np.load(name) as archive:
            ids.extend(archive["example_id"].tolist())
            for key in direct:
                values[key].append(archive[key])
    assert len(ids) == len(set(ids)) and sorted(ids) == sorted(EXPECTED_IDS)
    row = {example_id: n for n, example_id in enumerate(EXPECTED_IDS)}
    order = [row[example_id] for example_id in ids]
    for key, parts in values.items():
        np.testing.assert_allclose(np.concatenate(parts), direct[key][order], rtol=1e-5,
                                   atol=1e-6)
    return [os.path.basename(name) for name in names]


def test_direct_runner_two_workers_equals_the_single_process_dump(tapped, tmp_path,
                                                                 monkeypatch):
    out, root = tapped
    temp_location = tmp_path / "beam-temp"  # apart from --out, as on a remote runner
    opened = _opened_paths(monkeypatch)
    stats = beam.dump(out, str(root / "images-*.tfrecord"), {"image": "pixels"},
                      str(tmp_path / "beam"), runner="DirectRunner", batch_size=64, save="npz",
                      pipeline_args=[*TWO_WORKERS, f"--temp_location={temp_location}"])
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
    # the launcher read the statistics back through FileSystems, from under --temp_location
    read_back = [p for p in opened if p.endswith("stats.json")]
    assert read_back and all(p.startswith(f"{temp_location}{os.sep}graphtap-beam-")
                             for p in read_back)
    assert os.listdir(temp_location) == []  # its work directory removed, all of it
    names = _check_values(tmp_path / "beam", out)
    assert len(names) > 1  # several bundles, each its own file
    assert sorted(os.listdir(tmp_path / "beam")) == sorted(["stats.json", *names])


def test_values_out_apart_from_out_holds_every_example_once(tapped, tmp_path):
    out, root = tapped
    values = tmp_path / "values"  # stands for gs://...: written by the workers
    beam.dump(out, str(root / "images-*.tfrecord"), {"image": "pixels"},
              str(tmp_path / "acts"), save="npz", values_out=str(values),
              pipeline_args=TWO_WORKERS)
    assert os.listdir(tmp_path / "acts") == ["stats.json"]
    names = _check_values(values, out)
    assert sorted(os.listdir(values)) == names  # no temporary files left beside them
    assert all(re.fullmatch(r"values-\d{5}-of-\d{5}\.npz", name) for name in names)


def test_an_object_store_for_temp_location_and_values_out(tapped, tmp_path, monkeypatch):
    """gs:// without a network: the statistics, the model and the values pass through a
    filesystem without directories, and the work directory goes, all of it."""
    import object_store

    out, root = tapped
    (tmp_path / "store").mkdir()
    monkeypatch.setattr(object_store, "ROOT", str(tmp_path / "store"))
    (tmp_path / "store" / "other%2Fkept").write_bytes(b"not graphtap's")
    during = []  # the store's keys when the launcher reads the statistics back
    read_stats = beam._read_stats
    monkeypatch.setattr(beam, "_read_stats",
                        lambda work: during.extend(object_store.keys()) or read_stats(work))
    stats = beam.dump(out, str(root / "images-*.tfrecord"), {"image": "pixels"},
                      str(tmp_path / "acts"), save="npz", values_out="objstore://acts/values",
                      pipeline_args=["--direct_running_mode=in_memory",
                                     "--temp_location=objstore://tmp"])
    assert os.listdir(tmp_path / "acts") == ["stats.json"]
    assert stats["output_0"]["count"] == EXAMPLES * 4
    work = {key.split("/")[1] for key in during if key.startswith("tmp/")}
    assert len(work) == 1 and work.pop().startswith("graphtap-beam-")
    assert any(re.fullmatch(r"tmp/graphtap-beam-\w+/model/saved_model\.pb", k) for k in during)
    assert any(re.fullmatch(r"tmp/graphtap-beam-\w+/stats\.json", k) for k in during)
    values = [key for key in object_store.keys() if key.startswith("acts/values/")]
    assert object_store.keys() == sorted(["other/kept", *values])  # no work directory left
    fetched = tmp_path / "fetched"
    fetched.mkdir()
    for key in values:
        with beam.FileSystems.open(f"objstore://{key}") as f:
            (fetched / key.rpartition("/")[2]).write_bytes(f.read())
    assert len(_check_values(fetched, out)) == len(values)
    with pytest.raises(graphtap.GraphtapError, match="values location is not empty"):
        beam.dump(out, str(root / "images-*.tfrecord"), {"image": "pixels"},
                  str(tmp_path / "again"), save="npz", values_out="objstore://acts/values")


def test_a_shipped_model_is_fetched_byte_for_byte(tapped, tmp_path):
    out, _ = tapped
    files = beam.ship_model(out, str(tmp_path / "location" / "model"))
    local = sorted(os.path.relpath(os.path.join(root, name), out)
                   for root, _, names in os.walk(out) for name in names)
    assert sorted(files) == local and "saved_model.pb" in files
    beam.fetch_model(str(tmp_path / "location" / "model"), files, str(tmp_path / "fetched"))
    for relative in files:
        assert (tmp_path / "fetched" / relative).read_bytes() == \
            open(os.path.join(out, relative), "rb").read(), relative


def test_a_non_empty_values_location_is_refused_and_left_alone(tapped, tmp_path):
    out, root = tapped
    values = tmp_path / "values"
    values.mkdir()
    (values / "theirs.npz").write_bytes(b"not graphtap's")
    with pytest.raises(graphtap.GraphtapError, match="values location is not empty"):
        beam.dump(out, str(root / "images-*.tfrecord"), {"image": "pixels"},
                  str(tmp_path / "acts"), save="npz", values_out=str(values))
    assert os.listdir(values) == ["theirs.npz"]
    assert (values / "theirs.npz").read_bytes() == b"not graphtap's"
    assert not (tmp_path / "acts").exists()
    with pytest.raises(graphtap.GraphtapError, match="lie apart from the output"):
        beam.dump(out, str(root / "images-*.tfrecord"), {"image": "pixels"},
                  str(tmp_path / "acts"), save="npz", values_out=str(tmp_path / "acts" / "v"))
    with pytest.raises(graphtap.errors.OutputInsideInput):
        beam.dump(out, str(root / "images-*.tfrecord"), {"image": "pixels"},
                  str(tmp_path / "acts"), save="npz", values_out=os.path.join(out, "values"))
    assert not os.path.exists(os.path.join(out, "values"))


def test_bad_input_is_one_line_and_writes_nothing(tapped, tmp_path):
    out, root = tapped
    (tmp_path / "not.tfrecord").write_bytes(b"this is not a TFRecord file at all" * 10)

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "keep.txt").write_text("not graphtap's")
    shards = str(root / "images-*.tfrecord")

    def graphtap_dump(pattern, feature="image=pixels", *more, runner="DirectRunner"):
        return subprocess.run(
            [sys.executable, "-m", "graphtap", "dump", f"--model={out}", f"--runner={runner}",
             f"--tfrecord={pattern}", f"--feature={feature}", f"--out={tmp_path / 'acts'}",
             "--direct_num_workers=1", *more],
            capture_output=True, text=True, env=child_env(), timeout=300)

    for pattern, feature, more, runner, message in (
        (str(tmp_path / "nothing-*.tfrecord"), "image=pixels", (), "DirectRunner",
         "no file matches"),
        (shards, "image=missing", (), "DirectRunner", "cannot read tf.Examples"),
        (str(tmp_path / "not.tfrecord"), "image=pixels", (), "DirectRunner",
         "not a TFRecord file"),
        (shards, "image=pixels", ("--save=npz", f"--values_out={theirs}"), "DirectRunner",
         "values location is not empty"),
        (shards, "image=pixels", ("--save=npz",), "FlinkRunner",
         "FlinkRunner needs --temp_location"),
    ):
        failed = graphtap_dump(pattern, feature, *more, runner=runner)
        assert failed.returncode == 2, failed.stderr
        # TensorFlow 2.21 prints its C++ start-up lines (oneDNN) whatever TF_CPP_MIN_LOG_LEVEL
        lines = [line for line in failed.stderr.strip().splitlines()
                 if not TF_STARTUP.match(line)]
        assert len(lines) == 1 and lines[0].startswith("graphtap: error: "), failed.stderr
        assert message in lines[0] and "function_node" not in lines[0]
        assert not (tmp_path / "acts").exists()
    assert os.listdir(theirs) == ["keep.txt"]
