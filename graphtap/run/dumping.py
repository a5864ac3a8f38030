"""Run a signature over a data set in batches and keep what its outputs did: statistics
(`stats.json`), the values themselves (`.npz`), TensorBoard summaries. Imports TensorFlow.

Memory stays bounded by one batch: `.npy` inputs are read a slice at a time, TFRecords
stream through tf.data, statistics are folded batch by batch (graphtap.run.stats), and
values are appended to files on disk as they come. Each batch's statistics are computed in
TensorFlow, in one function with the model (stats.graph_partials): only those numbers
reach Python, unless the values themselves are asked for (npz, TensorBoard).
"""

import json
import os
import shutil
import struct
import sys
import time
import zipfile

import numpy as np
from absl import logging

from graphtap import errors
from graphtap.rewrite import manifest, model_io, paths, source_files
from graphtap.run import runtime
from graphtap.rewrite.signatures import choose_signatures, tags
from graphtap.run import stats as stats_lib
from graphtap.run.stats import RunningStats

STATS_FILE = "stats.json"
SHARD_BYTES = 1 << 30  # a key's values go to numbered shards beyond this many bytes


def activations(model_dir, data, signature=None, batch_size=64, max_examples=None,
                tag_set="serve", custom_ops=()):
    """Yields {output key: np.ndarray} for each batch of `data` run through a signature.

    data: {input name: array} (numpy arrays, or graphtap.NpyFile to read a .npy a batch
      at a time), batched here; a graphtap.TFRecord; or an iterable of such dicts, each
      already a batch (a batched tf.data.Dataset of dicts, for one). A scalar is the value
      of an input the signature takes as a scalar (not one per example): it is fed whole
      with every batch.
    signature: its key; default `serving_default`, or the only one.
    tag_set: tags of the meta graph to load, comma-separated.
    custom_ops: modules to import and `.so` files to load first, for the model's custom
      ops (runtime.load_custom_ops).
    """
    runner = Runner(model_dir, signature, tag_set, custom_ops)
    for batch in stream_batches(data, batch_size, max_examples, runner.specs):
        yield runner.run(batch)


def dump(model_dir, data, out_dir, signature=None, batch_size=64, max_examples=None,
         save="stats", tensorboard=None, overwrite=False, progress=True, tag_set="serve",
         custom_ops=()):
    """Runs a signature over `data` (as `activations` takes it) and writes to `out_dir`:
    `stats.json` always, and with save="npz" one `KEY.npz` per output key holding the
    array `KEY` (every example, in order; `KEY-00000.npz`, ... beyond 1 GiB). With
    `tensorboard`, a directory: a histogram and scalars per output key, one step a batch.

    Returns {output key: statistics}, the content of stats.json's "outputs"; `is_tap` says
    which keys graphtap added (from the model's manifest). custom_ops: as `activations`.
    """
    if save not in ("stats", "npz"):
        raise errors.BadArgument(f"save must be 'stats' or 'npz', not '{save}'")
    inputs = [model_dir, *data_paths(data)]
    model_io.check_output(inputs, out_dir, overwrite, mark=STATS_FILE)  # before TensorFlow loads
    for source in inputs if tensorboard else ():
        paths.check_not_inside(source, tensorboard)
    runner = Runner(model_dir, signature, tag_set, custom_ops)
    with model_io.staged_directory(out_dir, overwrite, STATS_FILE, inputs) as staging:
        stats = {}
        streams = {}
        summaries = _Summaries(staging) if tensorboard else None
        meter = Progress(example_count(data, max_examples), progress, "dump")
        keep_values = save == "npz" or bool(tensorboard)
        for step, batch in enumerate(stream_batches(data, batch_size, max_examples, runner.specs)):
            partials, outputs = runner.run_partials(batch, keep_values)
            for key, part in partials.items():
                stats.setdefault(key, RunningStats()).merge(part)
            for key, values in outputs.items():
                if save == "npz" and values.dtype != object:  # tf.string: statistics only
                    if key not in streams:
                        streams[key] = _ArrayStream(staging, key)
                    streams[key].append(values)
            if summaries:
                summaries.write(outputs, step)
            meter.update(batch_length(batch))
        meter.done()
        if not stats:
            raise errors.BadInput("no examples to run", model_dir)
        for stream in streams.values():
            stream.close()
        result = {key: dict(stats[key].summary(), is_tap=key in runner.taps)
                  for key in sorted(stats)}
        document = {"model": model_dir, "signature": runner.signature_key, "outputs": result}
        with open(os.path.join(staging, STATS_FILE), "w", encoding="utf-8") as f:
            json.dump(document, f, indent=1)
        if summaries:
            summaries.publish(tensorboard)
    return result


def data_paths(data):
    """The files `data` (as `activations` takes it) reads, as far as they are known."""
    if isinstance(data, TFRecord):
        return [data.path]
    if isinstance(data, dict):
        return [value.path for value in data.values() if isinstance(value, NpyFile)]
    return []


class Runner:
    """A loaded signature, and the checks that make bad data one clear error."""

    def __init__(self, model_dir, signature, tag_set="serve", custom_ops=()):
        import tensorflow as tf

        self.tf = tf
        model_io.read(model_dir)  # the same errors as every command for a missing or broken model
        runtime.load_custom_ops(custom_ops)
        loaded = runtime.saved_model(model_dir, tags(tag_set))
        (signature,) = choose_signatures(loaded.signatures.keys(), signature, model_dir)
        self._loaded = loaded  # the signature function needs its object alive
        self.signature_key = signature
        self.function = loaded.signatures[signature]
        self.specs = self.function.structured_input_signature[1]
        self.taps = _manifest_keys(model_dir, signature)
        self.model_dir = model_dir

        self._partials = None  # the tf.function of run_partials, traced on first use

    def run(self, batch):
        """{output key: np.ndarray} of one batch."""
        return {key: value.numpy() for key, value in self.function(**self.feed(batch)).items()}

    def run_views(self, batch):
        """{output key: read-only np.ndarray} of one batch, sharing the tensors' memory
        (`run` copies them, which costs as much as a small model)."""
        return {key: np.asarray(value) for key, value in self.function(**self.feed(batch)).items()}

    def run_partials(self, batch, keep_values=False):
        """({key: RunningStats of this batch}, {key: np.ndarray}) for one batch: the
        statistics computed in the graph with the model, and the values of every output
        with `keep_values`. The statistics of outputs the graph does not reduce (complex
        numbers, unknown rank), or of a batch holding NaNs or infinities, are computed
        from the values with numpy."""
        if self._partials is None:
            self._partials = self._partials_function()
        partials, outputs = self._partials(self.feed(batch))
        stats, values = {}, {}
        for key, output in outputs.items():
            part = partials.get(key)
            part = part and {name: value.numpy() for name, value in part.items()}
            if part is None or "finite_sum" in part and not np.isfinite(part["finite_sum"]):
                values[key] = output.numpy()
                stats[key] = RunningStats.of_values(values[key])
            else:
                stats[key] = RunningStats.of_graph(part)
            if keep_values and key not in values:
                values[key] = output.numpy()
        return stats, values

    def _partials_function(self):
        """One tf.function: the signature, and the partial statistics of its outputs
        (the outputs are returned too, as tensors: on the host only when asked for)."""
        signature = self.function

        def step(feed):
            outputs = signature(**feed)
            partials = {key: stats_lib.graph_partials(value) for key, value in outputs.items()
                        if stats_lib.in_graph(value)}
            return partials, outputs

        return self.tf.function(step, input_signature=[dict(self.specs)], autograph=False)

    def feed(self, batch):
        """{input name: tf.Tensor}, checked against the signature's inputs."""
        feed = {name: self.tf.constant(self.conform(name, values))
                for name, values in batch.items()}
        missing = sorted(set(self.specs) - set(feed))
        if missing:
            raise errors.BadInput(f"no data for input(s) {', '.join(missing)} of signature "
                                  f"'{self.signature_key}'", self.model_dir)
        return feed

    def conform(self, name, values):
        """`values` as the signature's input `name` takes them, or a BadInput saying why not."""
        spec = self.specs.get(name)
        if spec is None:
            raise errors.BadInput(f"signature '{self.signature_key}' has no input '{name}'; "
                                  f"its inputs: {', '.join(sorted(self.specs))}",
                                  self.model_dir)
        values = np.asarray(values)
        wanted = spec.dtype.as_numpy_dtype
        if values.dtype != wanted:
            if not np.can_cast(values.dtype, wanted, casting="same_kind"):
                raise errors.BadInput(f"input '{name}' is {values.dtype}; the signature takes "
                                      f"{spec.dtype.name}", self.model_dir)
            values = values.astype(wanted)
        if spec.shape.rank == 0 and values.ndim:
            raise errors.BadInput(f"input '{name}' is a scalar in the signature, not one value per "
                                  f"example; the data has shape {values.shape}", self.model_dir)
        if not values.ndim and spec.shape.rank != 0:
            raise errors.BadInput(f"input '{name}' is a scalar; the signature takes shape "
                                  f"{spec.shape}, examples along the first axis", self.model_dir)
        if not spec.shape.is_compatible_with(values.shape):
            raise errors.BadInput(f"input '{name}' has shape {values.shape[1:]} per example; the "
                                  f"signature takes {spec.shape[1:]}", self.model_dir)
        return values


def _manifest_keys(model_dir, signature):
    """Keys of `signature` that graphtap added as taps (none for an untapped model)."""
    return {t["key"] for t in manifest.read(model_dir) or () if t["signature"] == signature}


class NpyFile:
    """A `.npy` file read a slice at a time with plain reads: unlike a memory map, whose
    pages count toward the process's resident memory once touched, it holds one batch."""

    def __init__(self, path):
        source_files.check_regular(path)
        self.path = path
        try:
            mapped = np.load(path, mmap_mode="r")  # for the header only: no page is read
        except (OSError, ValueError) as error:
            raise errors.BadInput(f"not a .npy file: {error}", path) from None
        if not isinstance(mapped, np.memmap) or not mapped.shape or (
                mapped.ndim > 1 and not mapped.flags.c_contiguous):
            raise errors.BadInput("a .npy of examples must be C-ordered, numeric, with a first "
                                  "axis", path)
        self.shape, self.dtype, self._offset = mapped.shape, mapped.dtype, mapped.offset
        del mapped
        self._example_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, rows):
        start, stop, _ = rows.indices(len(self))
        count = max(stop - start, 0)
        with open(source_files.open_regular(self.path), "rb") as f:
            f.seek(self._offset + start * self._example_bytes)
            data = np.fromfile(f, dtype=self.dtype,
                               count=count * self._example_bytes // self.dtype.itemsize)
        if data.size * self.dtype.itemsize != count * self._example_bytes:
            raise errors.BadInput("the .npy file is shorter than its header says", self.path)
        return data.reshape((count, *self.shape[1:]))


class TFRecord:
    """A TFRecord file of `tf.Example`s as data: `features` maps each signature input to
    the name of the feature that holds it (a list of names: the same for both)."""

    def __init__(self, path, features):
        self.path = path
        self.features = features if isinstance(features, dict) else {f: f for f in features}

    def batches(self, specs, batch_size):
        """{input: array} batches, parsed to the signature's dtypes and shapes."""
        import tensorflow as tf

        source_files.check_regular(self.path, "no such TFRecord file")
        parse = self.parser(specs)
        dataset = tf.data.TFRecordDataset(self.path).batch(batch_size).map(parse)
        try:
            yield from dataset.as_numpy_iterator()
        except tf.errors.OpError as error:
            raise errors.BadInput(f"cannot read tf.Examples: {error.message.splitlines()[0]}",
                           self.path) from None

    def parser(self, specs):
        """A function from a batch of serialized tf.Examples to {input: tensor}."""
        import tensorflow as tf

        parsing = {}
        for name, feature in self.features.items():
            spec = specs.get(name)
            if spec is None:
                raise errors.BadInput(f"the signature has no input '{name}'; its inputs: "
                                      f"{', '.join(sorted(specs))}", self.path)
            if spec.shape.rank == 0:
                raise errors.BadInput(f"input '{name}' is a scalar in the signature, not one "
                                      "value per example: no tf.Example feature can feed it",
                                      self.path)
            if not spec.shape[1:].is_fully_defined():
                raise errors.BadInput(f"input '{name}' has shape {spec.shape}: a tf.Example "
                                      "feature needs every dimension but the first known",
                                      self.path)
            stored = tf.float32 if spec.dtype.is_floating else (
                tf.string if spec.dtype == tf.string else tf.int64)
            parsing[name] = (feature, tf.io.FixedLenFeature(spec.shape[1:], stored), spec.dtype)

        def parse(serialized):
            parsed = tf.io.parse_example(serialized, {f: p for f, p, _ in parsing.values()})
            return {name: tf.cast(parsed[f], dtype) for name, (f, _, dtype) in parsing.items()}

        return parse


def stream_batches(data, batch_size, max_examples, specs):
    """{input: array} batches of at most `batch_size` examples, `max_examples` in all."""
    if batch_size < 1:
        raise errors.BadArgument(f"batch_size must be at least 1, not {batch_size}")
    if isinstance(data, TFRecord):
        batches = data.batches(specs, batch_size)
    elif isinstance(data, dict):
        batches = _slices(data, batch_size, specs)
    elif hasattr(data, "as_numpy_iterator"):  # a tf.data.Dataset
        batches = data.as_numpy_iterator()
    else:
        batches = iter(data)
    left = max_examples
    for batch in batches:
        if left is not None:
            if left <= 0:
                return
            batch = {name: values if _is_scalar(values) else values[:left]
                     for name, values in batch.items()}
            left -= batch_length(batch)
        yield batch


def batch_length(batch):
    """How many examples a batch {input: values} holds: the length of its inputs other
    than scalars, which are fed whole with every batch."""
    for values in batch.values():
        if not _is_scalar(values):
            return len(values)
    raise _all_scalars(batch)


def _all_scalars(names):
    return errors.BadInput(f"every input is a scalar: {', '.join(sorted(names))}; a scalar "
                           "is fed whole with every batch, and some input must hold examples "
                           "along a first axis")


def _is_scalar(values):
    shape = getattr(values, "shape", None)  # a graphtap.NpyFile too, without reading it
    return np.ndim(values) == 0 if shape is None else len(shape) == 0


def _slices(arrays, batch_size, specs):
    scalars = {name: values for name, values in arrays.items() if _is_scalar(values)}
    for name in sorted(scalars):
        spec = specs.get(name)
        if spec is not None and spec.shape.rank != 0:
            raise errors.BadInput(f"input '{name}' is a scalar; the signature takes shape "
                                  f"{spec.shape}, examples along the first axis")
    if arrays and len(scalars) == len(arrays):
        raise _all_scalars(arrays)
    arrays = {name: values for name, values in arrays.items() if name not in scalars}
    counts = {name: len(values) for name, values in arrays.items()}
    if len(set(counts.values())) > 1:
        raise errors.BadInput("inputs differ in example count: "
                              + ", ".join(f"{name} has {n}" for name, n in sorted(counts.items())))
    total = next(iter(counts.values()), 0)
    for start in range(0, total, batch_size):
        batch = {name: np.asarray(values[start:start + batch_size])
                 for name, values in arrays.items()}
        batch.update((name, np.asarray(value)) for name, value in scalars.items())
        yield batch


def example_count(data, max_examples):
    """How many examples `data` will give, when it can be told without reading it."""
    lengths = [len(values) for values in data.values() if not _is_scalar(values)] if (
        isinstance(data, dict)) else []
    total = lengths[0] if lengths else None
    if max_examples is not None:
        return min(total, max_examples) if total is not None else max_examples
    return total


class _ArrayStream:
    """Appends batches of one output key to `.npy` data on disk, wrapped into `KEY.npz`
    (members stored, not compressed) when closed; numbered shards beyond SHARD_BYTES."""

    def __init__(self, directory, key):
        self.directory, self.key = directory, key
        self.shards = []
        self._file = None

    def append(self, values):
        values = np.ascontiguousarray(values)
        if not self.shards and self._file is None:
            self._dtype, self._example_shape = values.dtype, values.shape[1:]
        if values.dtype != self._dtype or values.shape[1:] != self._example_shape:
            raise errors.BadInput(f"output '{self.key}' changes from "
                                  f"{self._dtype}{self._example_shape} to "
                                  f"{values.dtype}{values.shape[1:]} per example between "
                                  "batches; its values cannot be stacked (save statistics only)")
        if self._file is None or self._bytes + values.nbytes > SHARD_BYTES and self._rows:
            self._finish_shard()
            self._start_shard()
        self._file.write(values.tobytes())
        self._rows += len(values)
        self._bytes += values.nbytes

    def _start_shard(self):
        self._path = os.path.join(self.directory, f".{self.key}.{len(self.shards)}.npy")
        self._file = open(self._path, "wb")
        self._header_length = len(_npy_header(self._dtype, (10**15, *self._example_shape)))
        self._file.write(b"\0" * self._header_length)  # written when the row count is known
        self._rows = self._bytes = 0

    def _finish_shard(self):
        if self._file is None:
            return
        self._file.seek(0)
        self._file.write(_npy_header(self._dtype, (self._rows, *self._example_shape),
                                     self._header_length))
        self._file.close()
        self.shards.append(self._path)

    def close(self):
        """Wraps the shards into `KEY.npz`, or `KEY-00000.npz`, ... if there are several."""
        self._finish_shard()
        self._file = None
        for number, path in enumerate(self.shards):
            name = self.key if len(self.shards) == 1 else f"{self.key}-{number:05d}"
            with zipfile.ZipFile(os.path.join(self.directory, name + ".npz"), "w",
                                 zipfile.ZIP_STORED, allowZip64=True) as archive:
                archive.write(path, arcname=self.key + ".npy")
            os.unlink(path)


def _npy_header(dtype, shape, length=None):
    """The .npy (version 1.0) header for an array, padded to `length` bytes (default: the
    next multiple of 64), so that it can be rewritten in place with the final shape."""
    text = "{'descr': %r, 'fortran_order': False, 'shape': %r, }" % (
        np.lib.format.dtype_to_descr(np.dtype(dtype)), tuple(int(d) for d in shape))
    fixed = len(b"\x93NUMPY") + 2 + 2  # magic, version, header length
    length = length or -(-(fixed + len(text) + 1) // 64) * 64
    text = text.ljust(length - fixed - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


class _Summaries:
    """TensorBoard summaries written beside the staged output, moved out when complete.

    Written with `tf.summary.write` in the layout of TensorBoard's histogram and scalar
    plugins (a [buckets, 3] tensor of left edge, right edge, count; a scalar tensor):
    tensorflow-cpu does not ship the `tensorboard` package that `tf.summary.histogram`
    needs, and TensorBoard reads these all the same.
    """

    BUCKETS = 30

    def __init__(self, staging):
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        self.tf = tf
        self.directory = os.path.join(staging, ".tensorboard")
        self.writer = tf.summary.create_file_writer(self.directory)
        self.metadata = {}
        for plugin in ("histograms", "scalars"):
            metadata = summary_pb2.SummaryMetadata()
            metadata.plugin_data.plugin_name = plugin
            self.metadata[plugin] = metadata

    def write(self, outputs, step):
        with self.writer.as_default():
            for key, values in outputs.items():
                values = np.asarray(values, dtype=np.float64)
                finite = values[np.isfinite(values)]
                self._write(key, _histogram(finite, self.BUCKETS), "histograms", step)
                self._write(f"{key}/mean", finite.mean() if finite.size else 0.0, "scalars", step)
                self._write(f"{key}/zero_fraction",
                            np.count_nonzero(values == 0) / max(values.size, 1), "scalars", step)

    def _write(self, tag, value, plugin, step):
        tensor = self.tf.constant(value, dtype=self.tf.float64)
        self.tf.summary.write(tag, tensor, step=step, metadata=self.metadata[plugin])

    def publish(self, logdir):
        """Moves the event files into `logdir` (created if needed)."""
        self.writer.close()
        os.makedirs(logdir, exist_ok=True)
        for name in os.listdir(self.directory):
            shutil.move(os.path.join(self.directory, name), os.path.join(logdir, name))
        os.rmdir(self.directory)


def _histogram(values, buckets):
    """[buckets, 3]: left edge, right edge, count of each bucket (one when all are equal)."""
    if not values.size:
        return np.zeros((0, 3))
    low, high = float(values.min()), float(values.max())
    if low == high:
        return np.array([[low, high, float(values.size)]])
    counts, edges = np.histogram(values, bins=buckets, range=(low, high))
    return np.stack([edges[:-1], edges[1:], counts.astype(np.float64)], axis=1)


class Progress:
    """Examples run so far by `graphtap VERB`: a bar on a terminal, a log line now and
    then otherwise."""

    def __init__(self, total, enabled=True, verb="dump"):
        self.total, self.done_count = total, 0
        self.verb = verb
        self.terminal = enabled and sys.stderr.isatty()
        self.enabled = enabled
        self.start = self.last_log = time.monotonic()

    def update(self, examples):
        self.done_count += examples
        now = time.monotonic()
        if self.terminal:
            if self.total:
                filled = int(30 * self.done_count / self.total)
                bar = "#" * filled + "." * (30 - filled)
                sys.stderr.write(f"\r[{bar}] {self.done_count}/{self.total} examples")
            else:
                sys.stderr.write(f"\r{self.done_count} examples")
            sys.stderr.flush()
        elif self.enabled and now - self.last_log >= 10:
            logging.info("graphtap %s: %d examples, %.0f s", self.verb, self.done_count,
                         now - self.start)
            self.last_log = now

    def done(self):
        if self.terminal:
            sys.stderr.write("\n")
        elif self.enabled:
            logging.info("graphtap %s: %d examples in %.1f s", self.verb, self.done_count,
                         time.monotonic() - self.start)
