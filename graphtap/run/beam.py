"""`graphtap dump` as an Apache Beam pipeline (the `beam` extra): TFRecord shards of
tf.Examples run through a tapped signature on any Beam runner, the statistics computed in
the graph and merged as in the in-process dump (dumping.Runner.run_partials,
graphtap.run.stats).

    TappedModelHandler  a RunInference ModelHandler: the SavedModel loaded once per
                        worker, {output key: np.ndarray} per example
    BatchPartials       a DoFn: batches run with the statistics in the graph, one
                        {key: RunningStats} per batch (and the values per example, tagged)
    ActivationStats     a CombineFn over those partials: accumulators are {key: RunningStats},
                        merged with RunningStats.merge (associative, in any order)
    NpzSink             a fileio.FileSink: the rows of one file as one npz keyed by example id
    dump                the pipeline: read shards by glob, batch, run, combine, write
                        stats.json and, with save="npz", npz files keyed by example id

What the launcher reads back (the combined statistics) goes through Beam's FileSystems
into a work directory that only this run writes to, under the pipeline's --temp_location
(which the workers and the launcher both reach) or, on DirectRunner without one, in the
local temporary directory; the work directory is removed at the end. With a
--temp_location, the (local) model is copied there too, and each worker copies it to its
own disk before loading it.

Imports apache_beam, numpy and (on the workers, and here to check the data) TensorFlow.
"""

import contextlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import uuid

import apache_beam as beam
import numpy as np
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import ModelHandler
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions
from apache_beam.options.value_provider import StaticValueProvider
from apache_beam.utils import shared

from graphtap import errors
from graphtap.rewrite import model_io, paths
from graphtap.run import dumping
from graphtap.run.stats import RunningStats

RUNNERS = ("DirectRunner", "DataflowRunner", "FlinkRunner", "SparkRunner")
LOCAL_RUNNER = "DirectRunner"  # the one runner whose workers share the launcher's disk
_STATS_PART = "stats.json"  # in the work directory: what the pipeline combined
_VALUES_TEMP = "values-temp"  # in the work directory: WriteToFiles' temporary files
_MODEL = "model"  # in the work directory: the model's files, for workers on other machines
_RAW = CompressionTypes.UNCOMPRESSED  # AUTO would (de)compress a file named *.gz
VALUES_NAMING = fileio.default_file_naming("values", ".npz")  # values-00000-of-00004.npz


class TappedModelHandler(ModelHandler):
    """Runs a SavedModel's signature on batches of examples, loaded once per worker.

    Examples are serialized tf.Examples when `features` ({input: feature name}, as
    graphtap.TFRecord takes it) is given, else {input: np.ndarray} of one example each.
    Each result is {output key: np.ndarray} of one example.

    `model_files` (the model's files, relative paths) says that `model_dir` is a copy made
    by ship_model, on any Beam filesystem: each worker copies it to a local directory,
    loads it from there and removes that directory.
    """

    def __init__(self, model_dir, signature=None, tag_set="serve", custom_ops=(),
                 features=None, max_batch_size=64, model_files=None):
        super().__init__()
        self._model_dir, self._signature, self._tag_set = model_dir, signature, tag_set
        self._custom_ops, self._max_batch_size = tuple(custom_ops), max_batch_size
        self._features, self._model_files = features, model_files

    def load_model(self):
        if self._model_files is None:
            return self._load(self._model_dir)
        local = tempfile.mkdtemp(prefix="graphtap-model-")
        try:
            fetch_model(self._model_dir, self._model_files, local)
            return self._load(local)
        finally:  # TensorFlow has read the variables and assets by the end of loading
            shutil.rmtree(local, ignore_errors=True)

    def _load(self, model_dir):
        runner = dumping.Runner(model_dir, self._signature, self._tag_set, self._custom_ops)
        if self._features is not None:
            runner.parse = dumping.TFRecord(self._model_dir, self._features).parser(runner.specs)
        return runner

    def run_inference(self, batch, model, inference_args=None):
        outputs = model.run(self.inputs(batch, model))
        return [{key: values[i] for key, values in outputs.items()} for i in range(len(batch))]

    def inputs(self, batch, model):
        """{input name: np.ndarray} of a batch of examples, for `model` (from load_model)."""
        if self._features is None:
            return {name: np.stack([example[name] for example in batch]) for name in batch[0]}
        try:
            return {name: value.numpy()
                    for name, value in model.parse(model.tf.constant(batch)).items()}
        except model.tf.errors.OpError as error:
            raise errors.BadInput(f"cannot read tf.Examples: {_message(error)}") from None

    def batch_elements_kwargs(self):
        # Fixed batches, as the single-process dump's (BatchElements' adaptive sizing
        # starts at 1 and grows: on 512 examples, 47 batches of at most 32 instead of 16).
        return {"min_batch_size": self._max_batch_size, "max_batch_size": self._max_batch_size}


class BatchPartials(beam.DoFn):
    """Runs batches of (example id, example) through `handler`'s model (loaded once per
    worker process, as RunInference loads it) with the statistics in the graph
    (dumping.Runner.run_partials): yields {output key: RunningStats} of each batch, for
    ActivationStats, and with `keep_values` also (example id, {output key: np.ndarray})
    per example on the output tagged VALUES."""

    VALUES = "values"

    def __init__(self, handler, keep_values=False):
        self._handler, self._keep_values = handler, keep_values
        self._shared = shared.Shared()

    def setup(self):
        self._model = self._shared.acquire(self._handler.load_model)

    def process(self, batch):
        ids = [example_id for example_id, _ in batch]
        inputs = self._handler.inputs([example for _, example in batch], self._model)
        partials, values = self._model.run_partials(inputs, self._keep_values)
        yield partials
        for i, example_id in enumerate(ids if self._keep_values else ()):
            yield beam.pvalue.TaggedOutput(
                self.VALUES, (example_id, {key: array[i] for key, array in values.items()}))


class ActivationStats(beam.CombineFn):
    """Statistics of every output key over {key: RunningStats} elements (the partials of
    a batch each); the accumulator is of the same kind."""

    def create_accumulator(self):
        return {}

    def add_input(self, accumulator, partials):
        for key, part in partials.items():
            accumulator.setdefault(key, RunningStats()).merge(part)
        return accumulator

    def merge_accumulators(self, accumulators):
        accumulators = iter(accumulators)
        merged = next(accumulators, None)
        merged = {} if merged is None else merged
        for accumulator in accumulators:
            merged = self.add_input(merged, accumulator)
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


class NpzSink(fileio.FileSink):
    """Writes the (example id, {output key: values}) rows of one file as one npz, at
    flush: `example_id` (strings) and one array per output key, rows in the order of the
    ids; string outputs are left out (statistics only). WriteToFiles flushes a file once,
    before closing it, and writes it under a temporary name it renames only when its
    bundle is committed: a retried bundle leaves no second copy of its rows."""

    def open(self, fh):
        self._file, self._rows = fh, []

    def write(self, record):
        self._rows.append(record)

    def flush(self):
        if not self._rows:
            return
        buffer = io.BytesIO()  # np.savez seeks; a remote filesystem's stream may not
        np.savez(buffer, **_value_arrays(self._rows))
        self._file.write(buffer.getvalue())
        self._rows = []


def ship_model(model_dir, location):
    """Copies the files of the local directory `model_dir` under `location` (any Beam
    filesystem); returns their paths relative to `model_dir`."""
    files = []
    for root, _, names in os.walk(model_dir):
        for name in sorted(names):
            relative = os.path.relpath(os.path.join(root, name), model_dir)
            with open(os.path.join(model_dir, relative), "rb") as source, \
                    FileSystems.create(_under(location, relative), compression_type=_RAW) as target:
                shutil.copyfileobj(source, target, 1 << 20)
            files.append(relative)
    return files


def fetch_model(location, files, model_dir):
    """Copies the `files` that ship_model put under `location` into the local `model_dir`."""
    for relative in files:
        path = os.path.join(model_dir, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with FileSystems.open(_under(location, relative), compression_type=_RAW) as source, \
                open(path, "wb") as target:
            shutil.copyfileobj(source, target, 1 << 20)


def _under(location, relative):
    """The path of the local relative path `relative` under `location` (any filesystem)."""
    return FileSystems.join(location, *relative.split(os.sep))


def _value_arrays(rows):
    """{output key: stacked values, "example_id": ids} of (example id, outputs) rows."""
    keys = [key for key, values in rows[0][1].items()
            if np.asarray(values).dtype != object]  # tf.string: statistics only
    arrays = {key: np.stack([outputs[key] for _, outputs in rows]) for key in keys}
    arrays["example_id"] = np.array([example_id for example_id, _ in rows])
    return arrays


def dump(model_dir, pattern, features, out_dir, runner=LOCAL_RUNNER, pipeline_args=(),
         signature=None, batch_size=64, save="stats", overwrite=False, tag_set="serve",
         custom_ops=(), values_out=None):
    """Runs `graphtap dump` as a Beam pipeline over the TFRecord shards `pattern` matches
    and writes `stats.json` to `out_dir` (local, staged and published when the pipeline
    succeeds), as graphtap.dump writes it. Returns {output key: statistics}, as graphtap.dump.

    save="npz" also writes the values as `values-NNNNN-of-NNNNN.npz` files, each holding
    `example_id` (SHARD_NAME:INDEX) and one array per output key, every example in exactly
    one file: into `out_dir` (DirectRunner only: its workers share this machine's disk),
    or into `values_out`, a directory or URL of any Beam filesystem that must be new or
    empty (graphtap never deletes there).

    Runners other than DirectRunner need --temp_location in `pipeline_args`: a location
    both their workers and this machine reach, where the statistics are passed back and
    the model (a local directory) is copied for the workers.
    """
    options = PipelineOptions([f"--runner={runner}", *pipeline_args])
    temp_location = _temp_location(options)
    _check_arguments(runner, save, values_out, temp_location)
    model_io.check_output([model_dir], out_dir, overwrite, mark=dumping.STATS_FILE)
    if values_out is not None:
        values_out = check_values_location(values_out, out_dir, model_dir)
    files = match(pattern)
    local = dumping.Runner(model_dir, signature, tag_set, custom_ops)
    _check_shards(files, features, local)
    with model_io.staged_directory(out_dir, overwrite, dumping.STATS_FILE,
                                   [model_dir]) as staging, \
            _work_directory(temp_location) as work:
        if temp_location is None:  # DirectRunner: the workers share this machine's disk
            shipped, model_files = model_dir, None
        else:
            shipped = FileSystems.join(work, _MODEL)
            model_files = ship_model(model_dir, shipped)
        handler = TappedModelHandler(shipped, local.signature_key, tag_set, custom_ops,
                                     features, batch_size, model_files)
        values_dir = (values_out or staging) if save == "npz" else None
        _run_pipeline(options, files, handler, work, values_dir, pattern)
        combined = _read_stats(work)
        if not combined or not next(iter(combined.values()))["count"]:
            raise errors.BadInput("no examples to run", pattern)
        result = {key: dict(stats, is_tap=key in local.taps) for key, stats in combined.items()}
        document = {"model": model_dir, "signature": local.signature_key, "outputs": result}
        with open(os.path.join(staging, dumping.STATS_FILE), "w", encoding="utf-8") as f:
            json.dump(document, f, indent=1)
    return result


def _check_arguments(runner, save, values_out, temp_location):
    """Refuses what cannot work, before anything is read or written."""
    if runner not in RUNNERS:
        raise errors.BadArgument(f"runner must be one of {', '.join(RUNNERS)}, not '{runner}'")
    if save not in ("stats", "npz"):
        raise errors.BadArgument(f"save must be 'stats' or 'npz', not '{save}'")
    if values_out is not None and save != "npz":
        raise errors.BadArgument("values_out is where save='npz' writes values: "
                                 "give save='npz'", values_out)
    if runner == LOCAL_RUNNER:
        return
    if temp_location is None:
        raise errors.BadArgument(f"{runner} needs --temp_location: a location its workers "
                                 f"and this machine both reach (gs://..., hdfs://..., "
                                 f"a shared directory)")
    if save == "npz" and values_out is None:
        raise errors.BadArgument(f"save='npz' on {runner} needs values_out: a location "
                                 f"its workers reach (the output is on this machine)")


def _temp_location(options):
    """The pipeline's --temp_location, absolute when it is a local path; None without."""
    location = options.view_as(GoogleCloudOptions).temp_location
    if location and FileSystems.get_scheme(location) is None:
        return os.path.abspath(location)  # the workers' working directory may differ
    return location or None


def check_values_location(values_out, out_dir, model_dir):
    """`values_out` as the workers are to see it (absolute when local), refused when it
    holds anything or when, local, it overlaps `out_dir` or the model: graphtap writes
    only into a new or empty location, so that it never has to delete what it did not
    create, and never into its input."""
    if FileSystems.get_scheme(values_out) is None:
        values_out = os.path.abspath(values_out)
        paths.check_not_inside(model_dir, values_out)
        ours, theirs = os.path.realpath(out_dir), os.path.realpath(values_out)
        if ours == theirs or theirs.startswith(ours + os.sep) or \
                ours.startswith(theirs + os.sep):
            raise errors.BadArgument("the values location must lie apart from the output",
                                     values_out)
        if os.path.lexists(values_out) and not os.path.isdir(values_out):
            raise errors.BadArgument("not a directory", values_out)
    try:
        found = FileSystems.match([FileSystems.join(values_out, "*")])[0].metadata_list
    except Exception as error:  # noqa: BLE001 (each filesystem raises its own)
        raise errors.BadArgument(f"cannot list the values location: "
                                 f"{str(error).splitlines()[0]}", values_out) from None
    if found:
        raise errors.OutputExists("the values location is not empty (graphtap writes values "
                                  "only into a new or empty one)", values_out)
    return values_out


@contextlib.contextmanager
def _work_directory(temp_location):
    """Yields a new directory that only this run writes to, under `temp_location` (any
    Beam filesystem) or, without one, in this machine's temporary directory; removes it
    (and nothing else) at the end."""
    if temp_location is None:
        work = tempfile.mkdtemp(prefix="graphtap-beam-")
    else:
        work = FileSystems.join(temp_location, f"graphtap-beam-{uuid.uuid4().hex}")
        try:
            FileSystems.mkdirs(work)
        except Exception as error:  # noqa: BLE001 (each filesystem raises its own)
            raise errors.BadArgument(f"cannot write under --temp_location: "
                                     f"{str(error).splitlines()[0]}", temp_location) from None
    try:
        yield work
    finally:
        _delete_tree(work)


def _delete_tree(path):
    """Deletes the directory `path` and what it holds; on a filesystem without directories
    (gs://), every object under the prefix `path/`. A failure is logged, not raised: it
    must not hide the run's own result or error."""
    recursive = path if FileSystems.get_filesystem(path).has_dirs() else path.rstrip("/") + "/"
    try:
        FileSystems.delete([recursive])
    except Exception as error:  # noqa: BLE001 (each filesystem raises its own)
        logging.warning("graphtap: could not remove its work directory %s: %s", path, error)


def _run_pipeline(options, files, handler, work, values_dir, pattern):
    """Runs the pipeline to its end: the combined statistics written into `work` and, when
    `values_dir` is given, the values into it through WriteToFiles."""
    try:
        with beam.Pipeline(options=options) as pipeline:
            run = (pipeline
                   | "Shards" >> beam.Create(files)
                   | "Records" >> beam.FlatMap(_records)
                   | "Spread" >> beam.Reshuffle()
                   | "Batch" >> beam.BatchElements(**handler.batch_elements_kwargs())
                   | "Run" >> beam.ParDo(BatchPartials(handler, values_dir is not None))
                   .with_outputs(BatchPartials.VALUES, main="partials"))
            (run.partials
             | "Stats" >> beam.CombineGlobally(ActivationStats())
             | "Json" >> beam.Map(json.dumps)
             | "WriteStats" >> beam.io.WriteToText(FileSystems.join(work, _STATS_PART),
                                                   shard_name_template=""))
            if values_dir is not None:
                run[BatchPartials.VALUES] | "WriteValues" >> fileio.WriteToFiles(
                    values_dir, file_naming=VALUES_NAMING, sink=NpzSink,
                    # a ValueProvider: WriteToFiles calls .get() on what it is given
                    temp_directory=StaticValueProvider(str, FileSystems.join(work, _VALUES_TEMP)))
    except errors.GraphtapError:
        raise
    except Exception as error:  # noqa: BLE001 (a worker's error, as the runner wraps it)
        raise errors.BadInput(f"the pipeline failed: {_last_line(error)}", pattern) from None


def _read_stats(work):
    """The statistics the pipeline combined, read back from the work directory."""
    with FileSystems.open(FileSystems.join(work, _STATS_PART), compression_type=_RAW) as f:
        return json.loads(f.read().decode("utf-8"))


def _message(error):
    """The first line of a TensorFlow error, without the function it was raised in."""
    return re.sub(r"\{\{[^}]*\}\}\s*", "", error.message).splitlines()[0]


def _last_line(error):
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
