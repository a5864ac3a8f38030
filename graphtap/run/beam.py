"""`graphtap dump` as an Apache Beam pipeline (the `beam` extra): TFRecord shards of
tf.Examples run through a tapped signature on any Beam runner, the statistics combined
with the same partials and the same merge as the in-process dump (graphtap.run.stats).

    TappedModelHandler  a RunInference ModelHandler: the SavedModel loaded once per
                        worker, {output key: np.ndarray} per example
    ActivationStats     a CombineFn over those dicts: accumulators are {key: RunningStats},
                        merged with RunningStats.merge (associative, in any order)
    dump                the pipeline: read shards by glob, run, combine, write stats.json
                        and, with save="npz", npz files keyed by example id

Imports apache_beam, numpy and (on the workers, and here to check the data) TensorFlow.
"""

import json
import os
import re
import uuid

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from graphtap import errors
from graphtap.rewrite import model_io
from graphtap.run import dumping
from graphtap.run.stats import RunningStats

RUNNERS = ("DirectRunner", "DataflowRunner", "FlinkRunner", "SparkRunner")
_STATS_PART = ".beam-stats.json"  # what the pipeline combined, read back here


class TappedModelHandler(ModelHandler):
    """Runs a SavedModel's signature on batches of examples, loaded once per worker.

    Examples are serialized tf.Examples when `features` ({input: feature name}, as
    graphtap.TFRecord takes it) is given, else {input: np.ndarray} of one example each.
    Each result is {output key: np.ndarray} of one example.
    """

    def __init__(self, model_dir, signature=None, tag_set="serve", custom_ops=(),
                 features=None, max_batch_size=64):
        super().__init__()
        self._model_dir, self._signature, self._tag_set = model_dir, signature, tag_set
        self._custom_ops, self._max_batch_size = tuple(custom_ops), max_batch_size
        self._features = features

    def load_model(self):
        runner = dumping.Runner(self._model_dir, self._signature, self._tag_set,
                                self._custom_ops)
        if self._features is not None:
            runner.parse = dumping.TFRecord(self._model_dir, self._features).parser(runner.specs)
        return runner

    def run_inference(self, batch, model, inference_args=None):
        if self._features is not None:
            try:
                inputs = {name: value.numpy()
                          for name, value in model.parse(model.tf.constant(batch)).items()}
            except model.tf.errors.OpError as error:
                raise errors.BadInput(f"cannot read tf.Examples: "
                                       f"{_message(error)}") from None
        else:
            inputs = {name: np.stack([example[name] for example in batch]) for name in batch[0]}
        outputs = model.run(inputs)
        return [{key: values[i] for key, values in outputs.items()} for i in range(len(batch))]

    def batch_elements_kwargs(self):
        return {"max_batch_size": self._max_batch_size}


class ActivationStats(beam.CombineFn):
    """Statistics of every output key over {key: values of one example} elements."""

    def create_accumulator(self):
        return {}

    def add_input(self, accumulator, outputs):
        for key, values in outputs.items():
            part = RunningStats.of_values(np.asarray(values)[np.newaxis])
            accumulator.setdefault(key, RunningStats()).merge(part)
        return accumulator

    def merge_accumulators(self, accumulators):
        accumulators = iter(accumulators)
        merged = next(accumulators, None)
        merged = {} if merged is None else merged
        for accumulator in accumulators:
            for key, stats in accumulator.items():
                merged.setdefault(key, RunningStats()).merge(stats)
        return merged

    def extract_output(self, accumulator):
        return {key: accumulator[key].summary() for key in sorted(accumulator)}


def match(pattern):
    """The files `pattern` (a glob, local or any Beam filesystem) matches, sorted."""
    try:
        found = FileSystems.match([pattern])[0].metadata_list
    except Exception as error:  # noqa: BLE001 (each filesystem raises its own)
        raise errors.BadInput(f"cannot list files: {str(error).splitlines()[0]}",
                               pattern) from None
    files = sorted(m.path for m in found)
    if not files:
        raise errors.BadInput("no file matches", pattern)
    return files


def _records(path):
    """(example id, serialized tf.Example) of each record of one shard; the id is the
    shard's file name and the record's index in it."""
    import tensorflow as tf

    name = os.path.basename(path)
    try:
        for index, record in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator()):
            yield f"{name}:{index}", record
    except tf.errors.OpError as error:
        raise errors.BadInput(f"not a TFRecord file: {_message(error)}",
                               path) from None


def _check_shards(files, features, runner):
    """Reads the first record of every shard and parses it: a file that is not TFRecord
    or lacks a feature is one error here, before the pipeline starts."""
    import tensorflow as tf

    parse = dumping.TFRecord(files[0], features).parser(runner.specs)
    for path in files:
        first = next(_records(path), None)
        if first is None:
            continue
        try:
            parse(tf.constant([first[1]]))
        except tf.errors.OpError as error:
            raise errors.BadInput(f"cannot read tf.Examples: "
                                   f"{_message(error)}", path) from None


class _WriteValues(beam.DoFn):
    """Writes each bundle's examples to one npz in `directory`: `example_id` (strings) and
    one array per output key, rows in the order of the ids."""

    def __init__(self, directory):
        self.directory = directory

    def start_bundle(self):
        self.rows = []

    def process(self, element):
        self.rows.append(element)

    def finish_bundle(self):
        if not self.rows:
            return
        keys = [key for key, values in self.rows[0][1].items()
                if np.asarray(values).dtype != object]  # tf.string: statistics only
        arrays = {key: np.stack([outputs[key] for _, outputs in self.rows]) for key in keys}
        arrays["example_id"] = np.array([example_id for example_id, _ in self.rows])
        path = os.path.join(self.directory, f"values-{uuid.uuid4().hex}.npz")
        with FileSystems.create(path) as f:
            np.savez(f, **arrays)
        self.rows = []


def dump(model_dir, pattern, features, out_dir, runner="DirectRunner", pipeline_args=(),
         signature=None, batch_size=64, save="stats", overwrite=False, tag_set="serve",
         custom_ops=()):
    """Runs `graphtap dump` as a Beam pipeline over the TFRecord shards `pattern` matches
    and writes to `out_dir` (local): `stats.json` as graphtap.dump writes it and, with
    save="npz", `values-*.npz` files, each holding `example_id` (SHARD_NAME:INDEX) and one
    array per output key. Nothing is left at `out_dir` unless the pipeline succeeds.
    Returns {output key: statistics}, as graphtap.dump.
    """
    if runner not in RUNNERS:
        raise errors.BadArgument(f"runner must be one of {', '.join(RUNNERS)}, not '{runner}'")
    if save not in ("stats", "npz"):
        raise errors.BadArgument(f"save must be 'stats' or 'npz', not '{save}'")
    model_io.check_output([model_dir], out_dir, overwrite, mark=dumping.STATS_FILE)
    files = match(pattern)
    local = dumping.Runner(model_dir, signature, tag_set, custom_ops)
    _check_shards(files, features, local)
    handler = KeyedModelHandler(TappedModelHandler(
        model_dir, local.signature_key, tag_set, custom_ops, features, batch_size))
    options = PipelineOptions([f"--runner={runner}", *pipeline_args])
    with model_io.staged_directory(out_dir, overwrite, dumping.STATS_FILE,
                                   [model_dir]) as staging:
        try:
            with beam.Pipeline(options=options) as pipeline:
                outputs = (pipeline
                           | "Shards" >> beam.Create(files)
                           | "Records" >> beam.FlatMap(_records)
                           | "Spread" >> beam.Reshuffle()
                           | "Run" >> RunInference(handler))
                (outputs
                 | "Values" >> beam.Values()
                 | "Stats" >> beam.CombineGlobally(ActivationStats())
                 | "Json" >> beam.Map(json.dumps)
                 | "WriteStats" >> beam.io.WriteToText(os.path.join(staging, _STATS_PART),
                                                       shard_name_template=""))
                if save == "npz":
                    outputs | "WriteValues" >> beam.ParDo(_WriteValues(staging))
        except errors.GraphtapError:
            raise
        except Exception as error:  # noqa: BLE001 (a worker's error, as the runner wraps it)
            raise errors.BadInput(f"the pipeline failed: {_last_line(error)}",
                                   pattern) from None
        with open(os.path.join(staging, _STATS_PART), encoding="utf-8") as f:
            combined = json.loads(f.read())
        os.unlink(os.path.join(staging, _STATS_PART))
        if not combined or not next(iter(combined.values()))["count"]:
            raise errors.BadInput("no examples to run", pattern)
        result = {key: dict(stats, is_tap=key in local.taps) for key, stats in combined.items()}
        document = {"model": model_dir, "signature": local.signature_key, "outputs": result}
        with open(os.path.join(staging, dumping.STATS_FILE), "w", encoding="utf-8") as f:
            json.dump(document, f, indent=1)
    return result


def _message(error):
    """The first line of a TensorFlow error, without the function it was raised in."""
    return re.sub(r"\{\{[^}]*\}\}\s*", "", error.message).splitlines()[0]


def _last_line(error):
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
