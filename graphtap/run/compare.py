"""`graphtap compare`: run a tapped SavedModel and another form of it (a TFLite or ONNX
conversion, or another SavedModel) on the same batches, and say, tap by tap in graph
order, where they start to disagree. Imports numpy and TensorFlow.

Both sides run one batch at a time and only running sums are kept per key, so memory is
bounded by one batch. The sums are taken over cache-sized chunks in float32 (BLAS) where
both sides' values are exact in float32, and added up in float64: every figure is within
about 1e-6 of float64's, at a third of the cost (a float64 pass over each activation cost
more than running MobileNetV2 itself).

The graph order is the longest-path depth of each tapped tensor in the data flow of the
signature, with every function call on a tap's call path expanded into its body (see
graph_order).
"""

import collections
import dataclasses
import json
import math
import numbers
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import warnings

import numpy as np

from graphtap import errors
from graphtap.rewrite import manifest, model_io, source_files
from graphtap.rewrite.index import call_target, node_of
from graphtap.rewrite.signatures import meta_graph_position
from graphtap.run import dumping

RESULT_FILE = "compare.json"
PLOT_FILE = "compare.png"
FLOAT_KINDS = ("tflite", "onnx")
QUANTIZED_KINDS = ("tflite_dynamic", "tflite_float16", "tflite_int8")
KINDS = FLOAT_KINDS + QUANTIZED_KINDS
REPRESENTATIVE_EXAMPLES = 100  # examples int8 calibration reads, at most
_ENTER = "\0enter"  # the vertex before every node of an expanded call's body


@dataclasses.dataclass
class TapDifference:
    """How the other side's values of one output key differ from the model's."""

    key: str
    position: int  # rank in graph order (0: nearest the inputs)
    is_tap: bool
    max_abs: float
    mean_abs: float
    rel_l2: float  # ||a - b|| / ||a||, a the model's values
    cosine: float
    sqnr_db: float  # 10 log10(||a||^2 / ||a - b||^2); inf when equal
    within_tolerance: bool
    problem: str = None  # why no figures (shapes that differ)

    def as_json(self):
        return {"key": self.key, "position": self.position, "is_tap": self.is_tap,
                "max_abs": _finite(self.max_abs), "mean_abs": _finite(self.mean_abs),
                "rel_l2": _finite(self.rel_l2), "cosine": _finite(self.cosine),
                "sqnr_db": _finite(self.sqnr_db), "within_tolerance": self.within_tolerance,
                **({"problem": self.problem} if self.problem else {})}


@dataclasses.dataclass
class Comparison:
    """What `compare` found: `taps` in graph order (the signature's original outputs
    too, `is_tap` False), `first_divergence` the key of the first over tolerance."""

    model: str
    against: str
    examples: int
    tolerance: float
    taps: list
    first_divergence: str
    missing: list  # tap keys the other side lacks
    only_model: list  # output keys only the model has (taps among them are in `missing`)
    only_other: list  # output keys only the other side has
    not_measured: list  # keys both sides have whose values are strings
    seconds: dict  # {"convert": ..., "run": ...}

    def as_json(self):
        return {"model": self.model, "against": self.against, "examples": self.examples,
                "tolerance": self.tolerance, "first_divergence": self.first_divergence,
                "taps": [t.as_json() for t in self.taps], "missing": self.missing,
                "only_model": self.only_model, "only_other": self.only_other,
                "not_measured": self.not_measured,
                "seconds": self.seconds}


def compare(model_dir, against, data, out_dir=None, signature=None, batch_size=64,
            max_examples=None, rtol=1e-4, max_rel_l2=0.1, representative=None,
            overwrite=False, tag_set="serve", custom_ops=(), plot=True, progress=True):
    """Runs the tapped SavedModel `model_dir` and `against` on the same batches of `data`
    and returns a Comparison; with `out_dir`, also writes compare.json there (and
    compare.png when matplotlib is installed and `plot`).

    against: "tflite" (converted here, float), "tflite_dynamic", "tflite_float16",
      "tflite_int8" (quantized: dynamic range, float16, full integer with float inputs
      and outputs, calibrated on `representative` or else on `data`), "onnx" (tf2onnx and
      onnxruntime: the `onnx` extra); or a path: a .tflite or .onnx file converted from
      the tapped model, or another SavedModel (tapped first, with the model's tensor
      names and keys, when it lacks the taps).
    data: as graphtap.activations takes it; read once more for int8 calibration.
    rtol: the largest rel_l2 within tolerance for float sides; max_rel_l2 that for the
      quantized kinds.
    representative: {input name: array} for int8 calibration.
    progress: a bar on a terminal, log lines otherwise, as dump shows.
    """
    for name, value in (("batch_size", batch_size), ("max_examples", max_examples)):
        if value is not None and not (isinstance(value, numbers.Integral) and value >= 1):
            raise errors.BadArgument(f"{name} must be a whole number >= 1, not {value}")
    for name, value in (("rtol", rtol), ("max_rel_l2", max_rel_l2)):
        finite = isinstance(value, numbers.Real) and 0 <= value < math.inf  # not NaN
        if not finite:  # a NaN or infinite tolerance would also make compare.json not JSON
            raise errors.BadArgument(f"{name} must be a finite number >= 0, not {value}")
    if representative is not None and against != "tflite_int8":
        raise errors.BadArgument("representative data calibrates tflite_int8 only, not "
                                 f"'{against}'")
    inputs = [model_dir, *dumping.data_paths(data), *dumping.data_paths(representative)]
    if not isinstance(against, str):
        raise errors.BadArgument("against must be a kind or a path")
    if against not in KINDS:
        if not os.path.lexists(against):
            raise errors.InputNotFound(f"not a kind ({', '.join(KINDS)}) nor a path", against)
        inputs.append(against)
    if out_dir is not None:
        model_io.check_output(inputs, out_dir, overwrite, mark=RESULT_FILE)
    model = dumping.Runner(model_dir, signature, tag_set, custom_ops)
    records = [r for r in manifest.read(model_dir) or ()
               if r["signature"] == model.signature_key]
    if not records:
        raise errors.BadArgument("the model has no taps: tap it first", model_dir)
    if representative is not None:
        _check_representative(model, representative)
    tolerance = float(max_rel_l2 if against in QUANTIZED_KINDS else rtol)
    with tempfile.TemporaryDirectory(prefix="graphtap-compare-") as scratch:
        start = time.perf_counter()
        other = _other_side(model, records, against, data, batch_size, representative,
                            scratch, tag_set, custom_ops)
        converted = time.perf_counter()
        meter = dumping.Progress(dumping.example_count(data, max_examples), progress, "compare")
        sums, strings, examples, only_model, only_other = _run_both(
            model, other, data, batch_size, max_examples, meter)
        ran = time.perf_counter()
    order = graph_order(model_dir, model.signature_key, tag_set)
    tap_keys = {r["key"] for r in records}
    keys = sorted(sums, key=lambda k: order.get(k, (math.inf, k)))
    taps = [sums[key].difference(key, position, key in tap_keys, tolerance)
            for position, key in enumerate(keys)]
    first = next((t.key for t in taps if not t.within_tolerance), None)
    result = Comparison(model_dir, against, examples, tolerance, taps, first,
                        sorted(tap_keys & set(only_model)), sorted(only_model),
                        sorted(only_other), sorted(strings),
                        {"convert": converted - start, "run": ran - converted})
    if out_dir is not None:
        with model_io.staged_directory(out_dir, overwrite, RESULT_FILE, inputs) as staging:
            with open(os.path.join(staging, RESULT_FILE), "w", encoding="utf-8") as f:
                json.dump(result.as_json(), f, indent=1)
            if plot:
                write_plot(result, os.path.join(staging, PLOT_FILE))
    return result


def _finite(value):
    """JSON has no inf or NaN: null for them."""
    return value if value is not None and math.isfinite(value) else None


class _Sums:
    """Running float64 sums of one key's two sides, batch by batch."""

    def __init__(self):
        self.count = 0
        self.abs_sum = self.max_abs = self.aa = self.bb = self.dd = self.ab = 0.0
        self.problem = None

    def add(self, a, b):
        if self.problem:
            return
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            if a.size != b.size:
                self.problem = f"shapes differ: {a.shape} and {b.shape}"
                return
            b = b.reshape(a.shape)
        if a.dtype.kind == "c" or b.dtype.kind == "c":  # as (real, imaginary) pairs
            pair = np.result_type(a.dtype, b.dtype, np.complex64)
            real = np.finfo(pair).dtype  # float32 for complex64, float64 for complex128
            a, b = (np.ascontiguousarray(v, dtype=pair).view(real) for v in (a, b))
        a, b = a.ravel(), b.ravel()
        self.count += a.size
        # Chunks small enough to stay in cache, summed in float32 by BLAS when both sides
        # are exact in float32, else in float64; the chunks' sums add up in float64.
        work = np.float32 if all(np.can_cast(v.dtype, np.float32) for v in (a, b)) else np.float64
        x, y, d = _buffers(work)
        with np.errstate(invalid="ignore", over="ignore"):  # NaN, Inf: a problem, later
            self._add_chunks(a, b, work, x, y, d)

    def _add_chunks(self, a, b, work, x, y, d):
        for start in range(0, a.size, CHUNK):
            stop = min(start + CHUNK, a.size)
            xs, ys, ds = a[start:stop], b[start:stop], d[:stop - start]
            if xs.dtype != work:
                xs = x[:stop - start]
                np.copyto(xs, a[start:stop], casting="unsafe")
            if ys.dtype != work:
                ys = y[:stop - start]
                np.copyto(ys, b[start:stop], casting="unsafe")
            np.subtract(xs, ys, out=ds)
            sums = [float(xs @ xs), float(ys @ ys), float(xs @ ys), float(ds @ ds)]
            if work != np.float64 and not all(map(math.isfinite, sums)):
                # beyond float32 (or NaN, Inf): this chunk again in float64
                xs, ys = xs.astype(np.float64), ys.astype(np.float64)
                ds = xs - ys
                sums = [float(xs @ xs), float(ys @ ys), float(xs @ ys), float(ds @ ds)]
            self.aa += sums[0]
            self.bb += sums[1]
            self.ab += sums[2]
            self.dd += sums[3]
            np.abs(ds, out=ds)
            self.max_abs = max(self.max_abs, float(ds.max()))
            self.abs_sum += float(ds.sum())

    def difference(self, key, position, is_tap, tolerance):
        sums = (self.aa, self.bb, self.ab, self.dd, self.abs_sum)
        problem = self.problem or (None if all(map(math.isfinite, sums))
                                   else "NaN or infinite values")
        if problem:
            nan = math.nan
            return TapDifference(key, position, is_tap, nan, nan, nan, nan, nan, False, problem)
        rel_l2 = _ratio(math.sqrt(self.dd), math.sqrt(self.aa))
        norms = math.sqrt(self.aa) * math.sqrt(self.bb)
        cosine = self.ab / norms if norms else (1.0 if self.aa == self.bb else 0.0)
        cosine = min(1.0, max(-1.0, cosine))  # the sums' rounding may step just past 1
        if self.dd == 0:
            sqnr = math.inf
        elif self.aa == 0:
            sqnr = -math.inf
        else:
            sqnr = 10 * math.log10(self.aa / self.dd)
        mean_abs = self.abs_sum / self.count if self.count else 0.0
        return TapDifference(key, position, is_tap, self.max_abs, mean_abs, rel_l2, cosine,
                             sqnr, bool(rel_l2 <= tolerance))


CHUNK = 1 << 16  # elements summed at a time
_THREAD = threading.local()  # per thread: {dtype: buffers}, gone with the thread


def _buffers(dtype):
    """Three arrays of CHUNK elements of `dtype`, made once per thread (made anew per
    batch, they would cost page faults on every chunk)."""
    buffers = _THREAD.__dict__.setdefault("buffers", {})
    if dtype not in buffers:
        buffers[dtype] = [np.empty(CHUNK, dtype) for _ in range(3)]
    return buffers[dtype]


def _ratio(numerator, denominator):
    if denominator:
        return numerator / denominator
    return 0.0 if numerator == 0 else math.inf


def _run_both(model, other, data, batch_size, max_examples, meter):
    """Runs both sides batch by batch: ({key: _Sums}, keys of strings (not measured),
    examples, output keys of the model only, of the other side only)."""
    sums, strings = {}, set()
    examples = 0
    only_model = only_other = None
    for batch in dumping.stream_batches(data, batch_size, max_examples, model.specs):
        batch = {name: model.conform(name, values) for name, values in batch.items()}
        ours = model.run_views(batch)
        theirs = other.run(batch)
        if only_model is None:
            only_model = sorted(set(ours) - set(theirs))
            only_other = sorted(set(theirs) - set(ours))
        for key in ours.keys() & theirs.keys():
            if ours[key].dtype == object:
                strings.add(key)
                continue
            sums.setdefault(key, _Sums()).add(ours[key], theirs[key])
        count = dumping.batch_length(batch)
        examples += count
        meter.update(count)
    meter.done()
    if not examples:
        raise errors.BadInput("no examples to run", model.model_dir)
    return sums, strings, examples, only_model, only_other


# The other side: an object whose run(batch) returns {output key: array}.


def _other_side(model, records, against, data, batch_size, representative, scratch,
                tag_set, custom_ops):
    if against == "onnx":
        path = os.path.join(scratch, "model.onnx")
        _tf2onnx(model.model_dir, model.signature_key, path, tag_set)
        side = _OnnxSide(path)
    elif against in FLOAT_KINDS + QUANTIZED_KINDS:
        side = _TFLiteSide(_convert_tflite(model, against, data, batch_size, representative))
    elif os.path.isdir(against):
        side = _saved_model_side(model, records, against, scratch, tag_set, custom_ops)
    else:
        side = _model_file_side(against)
    taps = {r["key"] for r in records}
    if not taps & side.keys:
        raise errors.BadArgument("has none of the model's taps: not made from the tapped "
                                 "model", against)
    return side


def _model_file_side(path):
    with open(source_files.open_regular(path), "rb") as f:  # a FIFO or device: refused
        head = f.read(8)
        if head[4:8] == b"TFL3":
            return _TFLiteSide(head + f.read(), path)
    if path.endswith(".onnx"):
        return _OnnxSide(path)  # by path: an ONNX model may keep its weights beside it
    raise errors.NotAModel("not a SavedModel directory, .tflite or .onnx model", path)


class _TFLiteSide:
    def __init__(self, content, where=None):
        import tensorflow as tf

        try:
            with warnings.catch_warnings():  # that it is deprecated in favour of LiteRT
                warnings.simplefilter("ignore", UserWarning)
                interpreter = tf.lite.Interpreter(model_content=content)
            signatures = interpreter.get_signature_list()
            if len(signatures) != 1:
                raise ValueError(f"{len(signatures)} signatures, not one")
            (key,) = signatures
            self.runner = interpreter.get_signature_runner(key)
        except ValueError as error:
            raise errors.NotAModel(f"TFLite cannot run it: {_first_line(error)}", where) from None
        self.keys = set(signatures[key]["outputs"])
        self.inputs = set(signatures[key]["inputs"])
        self.where = where or "the converted model"
        self._interpreter = interpreter

    def run(self, batch):
        if set(batch) != self.inputs:
            raise errors.BadInput(f"takes inputs {', '.join(sorted(self.inputs))}, not "
                                   f"{', '.join(sorted(batch))}", self.where)
        try:
            return self.runner(**batch)
        except (ValueError, RuntimeError) as error:
            raise errors.BadInput(f"TFLite cannot run the batch: {_first_line(error)}",
                                   self.where) from None


class _OnnxSide:
    def __init__(self, path):
        onnxruntime = _optional("onnxruntime")
        try:
            self.session = onnxruntime.InferenceSession(path,
                                                        providers=["CPUExecutionProvider"])
        except Exception as error:  # noqa: BLE001 (onnxruntime raises its own kinds)
            raise errors.NotAModel(f"onnxruntime cannot load it: {_first_line(error)}",
                                   path) from None
        self.names = [output.name for output in self.session.get_outputs()]
        self.keys = {name.split(":")[0] for name in self.names}
        self.where = path

    def run(self, batch):
        try:
            values = self.session.run(None, batch)
        except Exception as error:  # noqa: BLE001 (onnxruntime raises its own kinds)
            raise errors.BadInput(f"onnxruntime cannot run the batch: {_first_line(error)}",
                                   self.where) from None
        return {name.split(":")[0]: value for name, value in zip(self.names, values)}


class _SavedModelSide:
    def __init__(self, runner):
        self.runner = runner
        self.keys = set(runner.function.structured_outputs)

    def run(self, batch):
        return self.runner.run_views(batch)


def _saved_model_side(model, records, path, scratch, tag_set, custom_ops):
    """The other SavedModel, tapped in `scratch` with the model's tensor names and keys
    where it lacks some of the model's taps."""
    import graphtap

    other = dumping.Runner(path, model.signature_key, tag_set, custom_ops)
    have = set(other.function.structured_outputs)
    lacking = [r for r in records if r["key"] not in have]
    if not lacking:
        return _SavedModelSide(other)
    names = {c.name for c in graphtap.list_targets(path, model.signature_key, tag_set)
             if not c.blocked}
    selectors = {}
    for record in lacking:
        name = record["node"] if record["output"] == 0 else f"{record['node']}:{record['output']}"
        if name in names:
            selectors[re.escape(name)] = record["key"]
    if not selectors:
        return _SavedModelSide(other)  # none of the tensors: the taps are all missing
    tapped = os.path.join(scratch, "other_tapped")
    loop = next((r["loop"] for r in lacking if r.get("loop")), None)
    graphtap.tap(path, tapped, names=selectors, signatures=[model.signature_key],
                 tag_set=tag_set, loop=loop)
    return _SavedModelSide(dumping.Runner(tapped, model.signature_key, tag_set, custom_ops))


def _convert_tflite(model, kind, data, batch_size, representative):
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(
        model.model_dir, signature_keys=[model.signature_key])
    if kind != "tflite":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if kind == "tflite_float16":
        converter.target_spec.supported_types = [tf.float16]
    elif kind == "tflite_int8":
        calibration = representative if representative is not None else data
        if not isinstance(calibration, (dict, dumping.TFRecord)):
            raise errors.BadArgument("int8 calibration reads the data again: give arrays, "
                                     "files or a TFRecord, or representative data")
        failed = []  # a graphtap error reading the data, which the converter wraps

        def examples():
            try:
                yield from _examples(model, calibration, batch_size)
            except errors.GraphtapError as error:
                failed.append(error)
                raise

        converter.representative_dataset = examples
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    try:
        return converter.convert()
    except Exception as error:  # noqa: BLE001 (the converter raises many kinds)
        if kind == "tflite_int8" and failed:
            raise failed[0] from None
        raise errors.CorruptModel(f"TFLite cannot convert it: {_first_line(error)}",
                                  model.model_dir) from None


def _check_representative(model, representative):
    """Refuses representative data that the signature cannot take, before converting."""
    if not isinstance(representative, dict):
        raise errors.BadArgument("representative must be {input name: array}")
    where = ", ".join(sorted(dumping.data_paths(representative))) or None
    try:
        for name, values in representative.items():
            model.conform(name, np.asarray(values[:1]))
            if not len(values):
                raise errors.BadInput(f"no examples for input '{name}'")
        missing = sorted(set(model.specs) - set(representative))
        if missing:
            raise errors.BadInput(f"no data for input(s) {', '.join(missing)}")
    except errors.BadInput as error:
        raise errors.BadInput(f"representative data: {error.what}", where) from None
    except (TypeError, IndexError):  # not an array of examples
        raise errors.BadInput(f"representative data for '{name}' is not an array of "
                              "examples", where) from None


def _examples(model, data, batch_size):
    """{input: a batch of one} for the converter's calibration."""
    left = REPRESENTATIVE_EXAMPLES
    for batch in dumping.stream_batches(data, batch_size, REPRESENTATIVE_EXAMPLES, model.specs):
        batch = {name: model.conform(name, values) for name, values in batch.items()}
        for i in range(dumping.batch_length(batch)):
            if left <= 0:
                return
            left -= 1
            yield {name: values if not values.ndim else values[i:i + 1]
                   for name, values in batch.items()}


def _tf2onnx(model_dir, signature, output, tag_set):
    """Converts the signature with tf2onnx's command line (it has no Python entry point
    for a SavedModel)."""
    _optional("tf2onnx")
    _optional("onnxruntime")
    result = subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--saved-model",
                             model_dir, "--signature_def", signature, "--tag", tag_set,
                             "--output", output], capture_output=True, text=True)
    if result.returncode != 0 or not os.path.isfile(output):
        lines = [line for line in result.stderr.splitlines() if "Error" in line]
        raise errors.CorruptModel("tf2onnx cannot convert it: "
                                  + (lines[-1].strip() if lines else "it failed"), model_dir)


def _optional(module):
    try:
        return __import__(module)
    except ImportError:
        raise errors.BadArgument(f"comparing with ONNX needs {module}: install the 'onnx' "
                                 "extra (pip install graphtap[onnx])") from None
    except Exception as error:  # noqa: BLE001 (installed, but broken: a version mismatch)
        raise errors.BadArgument(f"comparing with ONNX needs {module}, which fails to import: "
                                 f"{type(error).__name__}: {_first_line(error)}") from None


def _first_line(error):
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


# Graph order.


def graph_order(model_dir, signature, tag_set="serve"):
    """{output key: (depth, manifest position)} for the outputs of `signature`, sorting
    them in an order the data flow allows: depth is the length of the longest path from
    the graph's sources to the tapped node, over the outer graph and every function body
    on a tap's call path, each such call node expanded in place (every node of the body
    after the call's inputs, and before the call node itself, which stands for its
    outputs). A tensor that feeds another is thus always earlier; taps at one depth keep
    the manifest's order. Keys whose node is not found come last."""
    model = model_io.read(model_dir)
    meta_graph = model.proto.meta_graphs[meta_graph_position(model.proto, tag_set, model_dir)]
    graph = meta_graph.graph_def
    functions = {f.signature.name: f for f in graph.library.function}
    records = [r for r in manifest.read(model_dir) or () if r["signature"] == signature]
    expand = set()
    for record in records:
        path = tuple(record.get("call_path") or ())
        expand.update(path[:i] for i in range(1, len(path) + 1))
    successors = collections.defaultdict(set)
    vertices = set()

    def add_body(path, nodes, arguments):
        enter = (path, _ENTER)
        vertices.add(enter)
        for node in nodes:
            vertex = (path, node.name)
            vertices.add(vertex)
            if path:
                successors[enter].add(vertex)
                successors[vertex].add((path[:-1], path[-1]))
            for ref in node.input:
                source = node_of(ref)
                successors[enter if source in arguments else (path, source)].add(vertex)
            inner = path + (node.name,)
            callee = call_target(node, functions) if inner in expand else None
            if callee in functions:
                for ref in node.input:
                    successors[(path, node_of(ref))].add((inner, _ENTER))
                body = functions[callee]
                add_body(inner, body.node_def, {arg.name for arg in body.signature.input_arg})

    add_body((), graph.node, set())
    depth = _longest_paths(vertices, successors)
    order = {}
    for position, record in enumerate(records):
        vertex = (tuple(record.get("call_path") or ()), record["node"])
        order[record["key"]] = (depth.get(vertex, math.inf), position)
    outputs = meta_graph.signature_def[signature].outputs if (
        signature in meta_graph.signature_def) else {}
    for key, info in outputs.items():
        if key not in order:
            order[key] = (depth.get(((), node_of(info.name)), math.inf), len(records))
    return order


def _longest_paths(vertices, successors):
    """{vertex: longest path to it from a source} (Kahn's algorithm); a vertex on a cycle
    (a broken graph) gets none."""
    for targets in list(successors.values()):
        vertices |= targets
    vertices |= successors.keys()
    incoming = collections.Counter()
    for targets in successors.values():
        for target in targets:
            incoming[target] += 1
    depth = {v: 0 for v in vertices if not incoming[v]}
    ready = collections.deque(depth)
    while ready:
        vertex = ready.popleft()
        for target in successors.get(vertex, ()):
            depth[target] = max(depth.get(target, 0), depth[vertex] + 1)
            incoming[target] -= 1
            if not incoming[target]:
                ready.append(target)
    return {v: d for v, d in depth.items() if not incoming[v]}


# The plot.


def write_plot(result, path):
    """compare.png: rel_l2 of each tap against its graph position, log scale, the first
    divergence marked. Nothing without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    from matplotlib import pyplot

    taps = [t for t in result.taps if t.rel_l2 == t.rel_l2]  # not NaN
    floor = 1e-12  # log scale: a bit-identical tap is drawn at the floor
    figure, axes = pyplot.subplots(figsize=(8, 4))
    axes.semilogy([t.position for t in taps], [max(t.rel_l2, floor) for t in taps], "o-",
                  markersize=3)
    axes.axhline(result.tolerance, color="gray", linestyle="--", label="tolerance")
    first = next((t for t in taps if t.key == result.first_divergence), None)
    if first is not None:
        axes.plot([first.position], [max(first.rel_l2, floor)], "rx", markersize=12,
                  label=f"first divergence: {first.key}")
    axes.set_xlabel("tap position in graph order")
    axes.set_ylabel("rel L2 error")
    axes.set_title(f"{os.path.basename(os.path.normpath(result.model))} vs {result.against}")
    axes.legend(loc="upper left", fontsize="small")
    with warnings.catch_warnings():  # nothing to draw (every tap NaN): say nothing
        warnings.simplefilter("ignore", UserWarning)
        figure.tight_layout()
        figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return True
