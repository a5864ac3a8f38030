"""Benchmarks graphtap's rewrite against the floor of reading and writing the protobuf,
and against the Keras rebuild a user would write without graphtap.

Models: Keras 3 exports of keras.applications models (weights=None), synthetic
SavedModels from tools/make_synthetic.py, and ResNet50 frozen into a GraphDef (its
weights become constants), each built once into --workdir by a child process.
Reported, as median (min-max) over --repeats runs, alternated, in this process:

  floor      read saved_model.pb, parse it, serialize it (deterministically, as graphtap
             does), write it with fsync (as graphtap does) into a new directory and
             copy the variables and assets there, each file synced (a safe rewrite
             shares no file with its input); for a GraphDef, the same for its file,
             written as a file;
  all acts   graphtap.tap of every activation output (Relu, Relu6, Sigmoid, Swish ops);
  one name   graphtap.tap of one activation name (in the synthetic models, every leaf
             function has the same node names, so one name is a tap per leaf);
  baseline   keras.Model with the outputs of every activation layer added, then
             `export` (the Keras model already built, so neither loading nor building
             it is counted); Keras applications only.

Then the cost of that copy: graphtap.tap of every activation, copying the variables (the
default) against hard-linking them (link_variables=True), alternated, for --copy_model.

Then, in child processes: the peak RSS (VmHWM) of a process that taps every activation, against
4 x the size of saved_model.pb plus the peak RSS of `import tensorflow`; and the
whole-process time of the `graphtap tap` command for --cli_model against
`python -c "import tensorflow"`.

    python tools/bench.py [--models=resnet50,synthetic_100k] [--repeats=5]
    python tools/bench.py --breakdown=resnet50 --repeats=20   # time per phase

    python tools/bench.py --compare=mobilenetv2 --repeats=5  # graphtap compare's cost

--compare taps every activation of the model, converts it to a .tflite once (timed
apart), then times the comparison phase of graphtap.compare against that file over
--compare_examples examples against running both models alone on the same batches
(the SavedModel signature and the TFLite signature runner, already loaded), alternated.
    python tools/bench.py --dump --repeats=5   # dump's throughput against plain inference

--dump times, alternated in this process, on DenseNet121 at 64x64 with every Relu tapped
(256 examples, batch 32, as in issue #19): plain calls of the tapped signature converting
every output to numpy; `graphtap.dump(..., save="stats")` whole (loading the model and
tracing included); dump's loop alone (statistics in the graph, the model loaded once); and
the statistics folded in numpy on the host from plain calls (what dump did before); and
plain calls after loading the model with tf.saved_model.load, against which dump whole
compares.

    python tools/bench.py --beam --repeats=3   # dump on Beam's DirectRunner against dump

--beam (in an environment with apache-beam: the `beam` extra) writes --beam_examples
random 64x64 images as 4 TFRecord shards of tf.Examples and times, alternated, each whole
(loading the model included): `graphtap.dump` over those shards (one tf.data pipeline, in
this process) and the Beam pipeline of `graphtap dump --runner=DirectRunner` over the same
shards with 2 workers in multi_processing mode; same tapped DenseNet121 as --dump.

--breakdown also times, for a SavedModel, a lower bound of any rewrite that writes the
tap's output from protobuf messages in Python: parse the input's functions that change,
read the name and op of each of their nodes, serialize the changed and added functions,
write the output (see lower_bound).
"""

import collections
import contextlib
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

from absl import app, flags

import graphtap
from graphtap.rewrite import check, model_io, protos, tapping, wire
from graphtap.rewrite.index import GraphIndex
from graphtap.rewrite.plumbing import TapRewrite

flags.DEFINE_list("models", ["mobilenetv2", "resnet50", "efficientnetb0", "densenet121",
                             "synthetic_1k", "synthetic_10k", "synthetic_100k",
                             "resnet50_frozen"], "Models.")
flags.DEFINE_integer("repeats", 5, "Runs of each in-process measurement.")
flags.DEFINE_integer("baseline_repeats", 3, "Runs of the Keras rebuild baseline.")
flags.DEFINE_string("cli_model", "resnet50", "Model for the whole-process CLI timing.")
flags.DEFINE_string("copy_model", "resnet50", "Model whose variables' copy is timed.")
flags.DEFINE_string("workdir", "/tmp/graphtap-bench", "Where models and outputs go.")
flags.DEFINE_string("breakdown", None, "Instead of the tables: where the time of the floor and "
                    "of tapping every activation goes, phase by phase, for this model.")
flags.DEFINE_string("compare", None, "Instead of the tables: the cost of graphtap compare "
                    "against running both models, for this model.")
flags.DEFINE_integer("compare_examples", 64, "Examples --compare runs.")
flags.DEFINE_integer("compare_batch", 16, "Batch size of --compare.")
flags.DEFINE_bool("dump", False, "Instead of the tables: dump's throughput against plain "
                  "inference (see above).")
flags.DEFINE_bool("beam", False, "Instead of the tables: the throughput of dump on Beam's "
                  "DirectRunner (2 workers) against the single-process dump (see above).")
flags.DEFINE_integer("beam_examples", 512, "Examples --beam runs.")
FLAGS = flags.FLAGS

APPLICATIONS = {"mobilenetv2": "MobileNetV2", "resnet50": "ResNet50",
                "efficientnetb0": "EfficientNetB0", "densenet121": "DenseNet121"}
SYNTHETIC = {"synthetic_1k": (1_000, 3), "synthetic_10k": (10_000, 10),
             "synthetic_100k": (100_000, 10)}  # nodes, fanout
FROZEN = {"resnet50_frozen": "resnet50"}  # GraphDef: the SavedModel it freezes
# Freezes the serving signature of SavedModel argv[1] into GraphDef file argv[2].
FREEZE = """
import sys
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
loaded = tf.saved_model.load(sys.argv[1])  # holds the variables the signature reads
frozen = convert_variables_to_constants_v2(loaded.signatures["serving_default"])
graph_def = frozen.graph.as_graph_def()
with open(sys.argv[2], "wb") as f:
    f.write(graph_def.SerializeToString(deterministic=True))
"""
ACTIVATION_OPS = ("Relu", "Relu6", "Sigmoid", "Swish")
CLONE_SUFFIX = re.compile(r"_graphtap(_\d+)?$")  # of a function graphtap copied
TOOLS = os.path.dirname(os.path.abspath(__file__))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def model_path(name):
    """The model's SavedModel directory (or, for FROZEN, GraphDef file) under --workdir,
    built on first use by a child process, so that TensorFlow is not in this process
    while graphtap is timed."""
    if name in FROZEN:
        path = os.path.join(FLAGS.workdir, f"{name}.pb")
        command = [sys.executable, "-c", FREEZE, model_path(FROZEN[name]), path]
    else:
        path = os.path.join(FLAGS.workdir, name)
        if name in APPLICATIONS:
            command = [sys.executable, "-c", f"import keras; keras.applications."
                       f"{APPLICATIONS[name]}(weights=None).export({path!r}, verbose=False)"]
        else:
            nodes, fanout = SYNTHETIC[name]
            command = [sys.executable, os.path.join(TOOLS, "make_synthetic.py"),
                       f"--nodes={nodes}", f"--fanout={fanout}", f"--out={path}"]
    if not os.path.exists(protobuf_file(path)):
        subprocess.run(command, check=True, capture_output=True, env=ENV)
    return path


def protobuf_file(path):
    """The file that holds the graph of the model at `path`."""
    return path if path.endswith(".pb") else os.path.join(path, "saved_model.pb")


def output_path(name, label):
    """Where the tap of model `name` writes: a directory, or a file for a GraphDef."""
    return os.path.join(FLAGS.workdir, label + (".pb" if name in FROZEN else ""))


def remove(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.unlink(path)


def parse_model(path):
    """The GraphDef (a .pb file) or SavedModel at `path`, parsed."""
    message_class = protos.GraphDef if path.endswith(".pb") else protos.SavedModel
    with open(protobuf_file(path), "rb") as f:
        return message_class.FromString(f.read())


def write_synced(path, data):
    """Writes `data` to `path` and waits until it is on disk, as graphtap writes."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def node_count(path):
    model = parse_model(path)
    graph = model if path.endswith(".pb") else model.meta_graphs[0].graph_def
    return len(graph.node) + sum(len(function.node_def) for function in graph.library.function)


def floor(source, output):
    """What any safe rewrite of the file must do: read, parse, serialize, write, copy.
    Returns {phase: seconds}."""
    is_graph_def = source.endswith(".pb")
    start = time.perf_counter()
    model = parse_model(source)
    parsed = time.perf_counter()
    data = model.SerializeToString(deterministic=True)
    serialized = time.perf_counter()
    if not is_graph_def:
        os.makedirs(output)
    write_synced(protobuf_file(output), data)
    for name in ("variables", "assets") if not is_graph_def else ():
        if os.path.isdir(os.path.join(source, name)):
            shutil.copytree(os.path.join(source, name), os.path.join(output, name),
                            copy_function=copy_synced)
    return {"read and parse": parsed - start, "serialize": serialized - parsed,
            "write and copy": time.perf_counter() - serialized}


def copy_synced(source, target):
    """Copies a file (in the kernel: shutil uses sendfile) and waits until it is on disk."""
    shutil.copyfile(source, target)
    with open(target, "rb") as f:
        os.fsync(f.fileno())
    return target


def copy_cost(name):
    """(MiB of variables, {"copy": [seconds], "link": [seconds]}): tapping every activation
    of model `name`, copying its variables and hard-linking them, alternated."""
    path, output = model_path(name), output_path(name, "out")
    ops, _ = activation_selectors(path)
    runs = {"copy": [], "link": []}
    for _ in range(FLAGS.repeats):
        for measure, link in (("copy", False), ("link", True)):
            runs[measure].append(timed(
                lambda source, out, link=link: graphtap.tap(source, out, ops=ops,
                                                            link_variables=link),
                path, output))
    variables = os.path.join(path, "variables")
    size = sum(os.path.getsize(os.path.join(variables, f)) for f in os.listdir(variables))
    return size / 2**20, runs


def activation_selectors(path):
    """(the activation op types the model has, the name its fewest activations share:
    in the synthetic models every leaf function has the same node names)."""
    targets = [c for c in graphtap.list_targets(path) if c.op in ACTIVATION_OPS and not c.blocked]
    counts = collections.Counter(c.name for c in targets)
    return sorted({c.op for c in targets}), min(counts, key=counts.get)


def timed(function, source, output):
    remove(output)
    start = time.perf_counter()
    function(source, output)
    return time.perf_counter() - start


def in_process(name):
    """({measure: [seconds]} for floor, all activations and one name, alternated;
    {measure: taps made})."""
    path, output = model_path(name), output_path(name, "out")
    ops, one_name = activation_selectors(path)
    tappers = {
        "all": lambda source, out: graphtap.tap(source, out, ops=ops),
        "one": lambda source, out: graphtap.tap(source, out, names=[re.escape(one_name)]),
    }
    runs = {"floor": [], "all": [], "one": []}
    for _ in range(FLAGS.repeats):
        runs["floor"].append(timed(floor, path, output))
        for measure, tapper in tappers.items():
            runs[measure].append(timed(tapper, path, output))
    taps = {}
    for measure, tapper in tappers.items():
        remove(output)
        taps[measure] = len(tapper(path, output).taps)
    return runs, taps, ops


# Run in a child after its work, prints the child's peak RSS in KiB. VmHWM, not the
# parent's rusage: the kernel counts the parent's size at fork into a child's ru_maxrss.
PRINT_PEAK_RSS = ("\nprint([line.split()[1] for line in open('/proc/self/status') "
                  "if line.startswith('VmHWM')][0])")


def child_seconds(command):
    """Wall time of one child process."""
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=ENV)
    return time.perf_counter() - start


def child_peak_rss(code, *args):
    """Peak RSS in MiB of a child Python running `code`."""
    child = subprocess.run([sys.executable, "-c", code + PRINT_PEAK_RSS, *args], check=True,
                           capture_output=True, env=ENV, text=True)
    return int(child.stdout.split()[-1]) / 1024


def tap_process_rss(name, ops):
    code = ("import sys, graphtap; graphtap.tap(sys.argv[1], sys.argv[2], ops=sys.argv[3:], "
            "overwrite=True)")
    return child_peak_rss(code, model_path(name), output_path(name, "out_rss"), *ops)


def keras_baseline(name):
    """Seconds to build the multi-output Keras model and export it."""
    import keras
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    model = getattr(keras.applications, APPLICATIONS[name])(weights=None)
    linear = keras.activations.get("linear")
    outputs = [layer.output for layer in model.layers
               if isinstance(layer, (keras.layers.ReLU, keras.layers.Activation))
               or getattr(layer, "activation", linear) is not linear]
    times = []
    for _ in range(FLAGS.baseline_repeats):
        output = os.path.join(FLAGS.workdir, "out_keras")
        shutil.rmtree(output, ignore_errors=True)
        start = time.perf_counter()
        keras.Model(model.inputs, model.outputs + outputs).export(output, verbose=False)
        times.append(time.perf_counter() - start)
    return times, len(outputs)


def summary(values, scale=1e3, unit=" ms"):
    median = statistics.median(values) * scale
    return f"{median:.1f}{unit} ({min(values) * scale:.1f}-{max(values) * scale:.1f})"


def print_table(header, rows):
    widths = [max(len(str(v)) for v in column) for column in zip(header, *rows)]
    for row in (header, *rows):
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())
    print()


# The phases of graphtap.tap that --breakdown times: (label, owner, attribute).
TAP_PHASES = (
    ("read and parse", model_io, "read"),
    ("  of which the layout", wire, "layout"),  # read with stubs needs it: see wire.stubbed
    ("layout", wire, "graph_def_layout"),
    ("index and check the input", check, "check_input"),
    ("select", tapping, "_candidates"),
    ("select", GraphIndex, "all_candidates"),
    ("rewrite", TapRewrite, "apply"),
    ("check the output", check, "check_output"),
    ("manifest", tapping, "_manifest"),
    ("write (splice, files, staging)", model_io, "write_saved_model"),
    ("write (splice, files, staging)", model_io, "write_graph_def"),
    ("  of which the splice", model_io, "_chunks"),
)


@contextlib.contextmanager
def timed_phases(totals):
    """Wraps each of TAP_PHASES to add its seconds to `totals`[label] while in the block."""
    originals = [(owner, attribute, getattr(owner, attribute))
                 for _, owner, attribute in TAP_PHASES]

    def timing(label, function):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                totals[label] = totals.get(label, 0.0) + time.perf_counter() - start
        return wrapper

    for (label, _, _), (owner, attribute, function) in zip(TAP_PHASES, originals):
        setattr(owner, attribute, timing(label, function))
    try:
        yield
    finally:
        for owner, attribute, function in originals:
            setattr(owner, attribute, function)


def breakdown(name):
    """Prints the minimum time of each phase of the floor and of tapping every activation
    of model `name`, over --repeats alternated runs."""
    path, output = model_path(name), output_path(name, "out")
    ops, _ = activation_selectors(path)
    runs = collections.defaultdict(list)
    for _ in range(FLAGS.repeats):
        remove(output)
        floor_phases = floor(path, output)
        for phase, seconds in floor_phases.items():
            runs["floor", phase].append(seconds)
        runs["floor", "total"].append(sum(floor_phases.values()))
        remove(output)
        phases = {}
        with timed_phases(phases):
            start = time.perf_counter()
            graphtap.tap(path, output, ops=ops)
            phases["total"] = time.perf_counter() - start
        for phase, seconds in phases.items():
            runs["tap", phase].append(seconds)
    if not path.endswith(".pb"):
        changed = changed_functions(path, output)
        for _ in range(FLAGS.repeats):
            bound_phases = lower_bound(output, changed)
            for phase, seconds in bound_phases.items():
                runs["lower bound", phase].append(seconds)
            runs["lower bound", "total"].append(sum(bound_phases.values()))
    order = [key for key in runs if key[0] == "floor"] + [
        ("tap", label) for label in [*dict.fromkeys(label for label, _, _ in TAP_PHASES), "total"]
        if ("tap", label) in runs] + [key for key in runs if key[0] == "lower bound"]
    print(f"{name}: minimum over {FLAGS.repeats} alternated runs, ms")
    print_table(("", "phase", "ms"),
                [[kind, phase, f"{min(runs[kind, phase]) * 1e3:.2f}"] for kind, phase in order])
    floor_s, tap_s = min(runs["floor", "total"]), min(runs["tap", "total"])
    print(f"tap / floor {tap_s / floor_s:.2f}", end="")
    if ("lower bound", "total") in runs:
        bound_s = min(runs["lower bound", "total"])
        print(f"; lower bound / floor {bound_s / floor_s:.2f}: within 1.5 x the floor, "
              f"{(1.5 * floor_s - bound_s) * 1e3:.1f} ms are left for the rest, which took "
              f"{(tap_s - bound_s) * 1e3:.1f} ms", end="")
    print()


def changed_functions(source, tapped):
    """[(bytes of the input's function, the output's function)] for each function of
    SavedModel `tapped` that `source` lacks or has otherwise; a clone is paired with the
    function it copies (its name without graphtap's suffix)."""
    def functions(path):
        library = parse_model(path).meta_graphs[0].graph_def.library
        return {f.signature.name: f for f in library.function}

    before = functions(source)
    changed = []
    for name, function in functions(tapped).items():
        if before.get(name) != function:
            origin = before.get(name)
            if origin is None:
                origin = before.get(CLONE_SUFFIX.sub("", name), function)
            changed.append((origin.SerializeToString(deterministic=True), function))
    return changed


def lower_bound(tapped, changed):
    """A lower bound of any rewrite that writes `tapped`'s output from protobuf messages:
    parse the input's functions that change (`changed`, from changed_functions), read the
    name and op of each of their nodes (what selecting and naming in Python needs at
    least), serialize the changed functions, write the output with fsync. Reading the
    rest of the input, and every tap's own work, are left out. {phase: seconds}"""
    start = time.perf_counter()
    parsed_functions = [protos.FunctionDef.FromString(data) for data, _ in changed]
    parsed = time.perf_counter()
    for function in parsed_functions:  # as index._Body reads them, the fastest way measured
        nodes = list(function.node_def)
        _ = [node.name for node in nodes], [node.op for node in nodes]
    read = time.perf_counter()
    for _, function in changed:
        function.SerializeToString(deterministic=True)
    serialized = time.perf_counter()
    with open(protobuf_file(tapped), "rb") as f:
        data = f.read()
    written = time.perf_counter()
    write_synced(os.path.join(FLAGS.workdir, "lower_bound.pb"), data)
    return {"parse what changes": parsed - start, "read names and ops": read - parsed,
            "serialize what changed": serialized - read,
            "write the output": time.perf_counter() - written}


def densenet_64_tapped():
    """DenseNet121 at 64x64 (weights=None) with every Relu tapped, built once in --workdir."""
    model = os.path.join(FLAGS.workdir, "densenet121_64")
    tapped = os.path.join(FLAGS.workdir, "densenet121_64_relu")
    if not os.path.exists(os.path.join(model, "saved_model.pb")):
        subprocess.run([sys.executable, "-c", "import keras; keras.applications.DenseNet121("
                        f"weights=None, input_shape=(64, 64, 3)).export({model!r}, "
                        "verbose=False)"], check=True, capture_output=True, env=ENV)
    if not os.path.exists(os.path.join(tapped, "saved_model.pb")):
        graphtap.tap(model, tapped, ops=["Relu"])
    return tapped


def dump_throughput(examples=256, batch_size=32):
    """Examples per second of plain inference, dump and the host-side statistics."""
    import numpy as np

    from graphtap.run import dumping
    from graphtap.run.stats import RunningStats

    tapped = densenet_64_tapped()
    runner = dumping.Runner(tapped, None)
    (name,) = runner.specs
    images = np.random.default_rng(0).standard_normal((examples, 64, 64, 3)).astype("float32")
    data = os.path.join(FLAGS.workdir, "densenet121_64.npy")
    np.save(data, images)
    batches = [{name: images[i:i + batch_size]} for i in range(0, examples, batch_size)]

    def plain():
        for batch in batches:
            runner.run(batch)

    def plain_whole():
        import tensorflow as tf

        signature = tf.saved_model.load(tapped).signatures["serving_default"]
        for batch in batches:
            {key: value.numpy() for key, value in signature(**batch).items()}

    def dump_whole():
        graphtap.dump(tapped, {name: graphtap.NpyFile(data)}, os.path.join(FLAGS.workdir,
                      "dump_out"), batch_size=batch_size, overwrite=True, progress=False)

    def dump_loop():
        stats = {}
        for batch in batches:
            for key, part in runner.run_partials(batch)[0].items():
                stats.setdefault(key, RunningStats()).merge(part)

    def host_numpy():
        stats = {}
        for batch in batches:
            for key, values in runner.run(batch).items():
                stats.setdefault(key, RunningStats()).add(values)

    kinds = {"plain calls, outputs to numpy": plain,
             "plain, whole (tf.saved_model.load too)": plain_whole,
             "graphtap.dump, whole": dump_whole,
             "dump loop, statistics in graph": dump_loop,
             "statistics in numpy on the host": host_numpy}
    for function in kinds.values():  # warm up: tracing, first allocations
        function()
    times = {label: [] for label in kinds}
    for _ in range(FLAGS.repeats):
        for label, function in kinds.items():
            start = time.perf_counter()
            function()
            times[label].append(time.perf_counter() - start)
    plain_s = statistics.median(times["plain calls, outputs to numpy"])
    print(f"DenseNet121 64x64, {len(runner.taps)} Relu taps, {examples} examples, batch "
          f"{batch_size}: examples/s, median (min-max) of {FLAGS.repeats} alternated runs")
    rows = [[label, f"{examples / statistics.median(t):.1f} ({examples / max(t):.1f}-"
             f"{examples / min(t):.1f})", f"{plain_s / statistics.median(t):.2f}"]
            for label, t in times.items()]
    print_table(("", "examples/s", "x plain"), rows)


def write_shards(images, name, count=4):
    """Writes `images` as `count` TFRecord shards of tf.Examples (feature `pixels`) into
    --workdir; returns their glob."""
    import numpy as np
    import tensorflow as tf

    for number, part in enumerate(np.array_split(images, count)):
        path = os.path.join(FLAGS.workdir, f"{name}-{number:05d}-of-{count:05d}.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            for image in part:
                pixels = tf.train.Feature(float_list=tf.train.FloatList(value=image.ravel()))
                writer.write(tf.train.Example(features=tf.train.Features(
                    feature={"pixels": pixels})).SerializeToString())
    return os.path.join(FLAGS.workdir, f"{name}-*-of-{count:05d}.tfrecord")


def beam_throughput(batch_size=32):
    """Examples per second of dump over TFRecord shards: in this process, and as the Beam
    pipeline on DirectRunner with 2 workers (multi_processing), each whole."""
    import glob

    import numpy as np
    import tensorflow as tf

    from graphtap.run import beam, dumping

    examples = FLAGS.beam_examples
    tapped = densenet_64_tapped()
    runner = dumping.Runner(tapped, None)  # its input specs, for parsing the shards
    (name,) = runner.specs
    features = {name: "pixels"}
    images = np.random.default_rng(0).standard_normal((examples, 64, 64, 3)).astype("float32")
    pattern = write_shards(images, "densenet121_64_images")
    parse = graphtap.TFRecord(pattern, features).parser(runner.specs)
    out = os.path.join(FLAGS.workdir, "beam_bench_out")

    def single_process():
        shards = tf.data.TFRecordDataset(sorted(glob.glob(pattern)))
        return graphtap.dump(tapped, shards.batch(batch_size).map(parse), out,
                             batch_size=batch_size, overwrite=True, progress=False)

    def direct_runner():
        return beam.dump(tapped, pattern, features, out, batch_size=batch_size,
                         overwrite=True, pipeline_args=["--direct_num_workers=2",
                                                        "--direct_running_mode=multi_processing"])

    kinds = {"graphtap.dump, one process": single_process,
             "Beam DirectRunner, 2 workers (multi_processing)": direct_runner}
    times = {label: [] for label in kinds}
    for _ in range(FLAGS.repeats):
        for label, function in kinds.items():
            start = time.perf_counter()
            stats = function()
            times[label].append(time.perf_counter() - start)
            first = next(iter(stats.values()))  # count: of elements
            assert first["count"] == examples * math.prod(first["example_shape"]), label
    print(f"DenseNet121 64x64, {len(runner.taps)} Relu taps, {examples} examples in 4 "
          f"TFRecord shards, batch {batch_size}, each whole (model loading included): "
          f"examples/s, median (min-max) of {FLAGS.repeats} alternated runs")
    single_s = statistics.median(times["graphtap.dump, one process"])
    rows = [[label, f"{examples / statistics.median(t):.1f} ({examples / max(t):.1f}-"
             f"{examples / min(t):.1f})", f"{single_s / statistics.median(t):.2f}"]
            for label, t in times.items()]
    print_table(("", "examples/s", "x one process"), rows)


def main(_):
    os.makedirs(FLAGS.workdir, exist_ok=True)
    if FLAGS.beam:
        beam_throughput()
        return
    if FLAGS.dump:
        dump_throughput()
        return
    if FLAGS.breakdown:
        breakdown(FLAGS.breakdown)
        return
    if FLAGS.compare:
        compare_cost(FLAGS.compare)
        return
    for name in FLAGS.models:
        model_path(name)

    model_path(FLAGS.copy_model)
    import_rss = child_peak_rss("import tensorflow")
    results = {}
    for name in FLAGS.models:
        runs, taps, ops = in_process(name)
        pb = os.path.getsize(protobuf_file(model_path(name))) / 2**20
        results[name] = dict(runs=runs, taps=taps, ops=ops, pb=pb,
                             nodes=node_count(model_path(name)), rss=tap_process_rss(name, ops))
    cli = [sys.executable, "-m", "graphtap", "tap", f"--input={model_path(FLAGS.cli_model)}",
           f"--output={os.path.join(FLAGS.workdir, 'out_cli')}", "--tap_op=Relu", "--overwrite"]
    cli_runs, import_runs = [], []
    for _ in range(FLAGS.repeats):
        cli_runs.append(child_seconds(cli))
        import_runs.append(child_seconds([sys.executable, "-c", "import tensorflow"]))

    for name in FLAGS.models:
        if name in APPLICATIONS:
            results[name]["baseline"] = keras_baseline(name)

    print(f"in process: median (min-max) of {FLAGS.repeats} alternated runs")
    rows = []
    for name in FLAGS.models:
        r = results[name]
        floor_s, all_s = statistics.median(r["runs"]["floor"]), statistics.median(r["runs"]["all"])
        baseline = r.get("baseline")
        rows.append([
            name, f"{r['nodes']:,}", f"{r['pb']:.1f} MiB", summary(r["runs"]["floor"]),
            f"{summary(r['runs']['all'])} [{r['taps']['all']}]",
            f"{summary(r['runs']['one'])} [{r['taps']['one']}]",
            f"{all_s / floor_s:.2f}",
            f"{summary(baseline[0], 1, ' s')} [{baseline[1]}]" if baseline else "-",
            f"{statistics.median(baseline[0]) / all_s:.0f}" if baseline else "-",
        ])
    print_table(("model", "nodes", "protobuf", "floor", "all activations [taps]",
                 "one name [taps]",
                 "all/floor", "Keras rebuild [outputs]", "rebuild/all"), rows)

    sizes = [n for n in ("synthetic_10k", "synthetic_100k") if n in results]
    if len(sizes) == 2:
        small, large = (results[n] for n in sizes)
        ratio = statistics.median(large["runs"]["all"]) / statistics.median(small["runs"]["all"])
        print(f"scaling: synthetic_100k / synthetic_10k rewrite time {ratio:.1f} "
              f"for {large['nodes'] / small['nodes']:.1f}x the nodes\n")

    mib, runs = copy_cost(FLAGS.copy_model)
    copy_s, link_s = statistics.median(runs["copy"]), statistics.median(runs["link"])
    print(f"copying the variables ({mib:.0f} MiB) of {FLAGS.copy_model}: tap with copies "
          f"{summary(runs['copy'])}, with hard links {summary(runs['link'])}: the copy costs "
          f"{(copy_s - link_s) * 1e3:.0f} ms ({mib / max(copy_s - link_s, 1e-9):.0f} MiB/s)\n")

    rows = [[name, f"{r['rss']:.0f} MiB", f"{4 * r['pb'] + import_rss:.0f} MiB"]
            for name, r in results.items()]
    print("peak RSS of a process tapping every activation "
          f"(import tensorflow: {import_rss:.0f} MiB)")
    print_table(("model", "tap process", "4 x protobuf + import tensorflow"), rows)

    print(f"whole process, {FLAGS.cli_model}, `graphtap tap --tap_op=Relu`: "
          f"{summary(cli_runs, 1, ' s')}; `python -c \"import tensorflow\"`: "
          f"{summary(import_runs, 1, ' s')}; ratio "
          f"{statistics.median(cli_runs) / statistics.median(import_runs):.3f}")


def compare_cost(name):
    """Prints the time of graphtap.compare's runs over that of running both models."""
    import numpy as np
    import tensorflow as tf

    from graphtap.run import compare, dumping

    tapped = os.path.join(FLAGS.workdir, f"{name}_compare_tapped")
    remove(tapped)
    ops, _ = activation_selectors(model_path(name))
    report = graphtap.tap(model_path(name), tapped, ops=ops)
    start = time.perf_counter()
    converter = tf.lite.TFLiteConverter.from_saved_model(tapped)
    tflite = os.path.join(FLAGS.workdir, f"{name}_compare.tflite")
    with open(tflite, "wb") as f:
        f.write(converter.convert())
    convert = time.perf_counter() - start
    model = dumping.Runner(tapped, None)
    (input_name, spec), = model.specs.items()  # noqa: B018
    shape = [FLAGS.compare_examples, *spec.shape[1:]]
    data = {input_name: np.random.default_rng(0).standard_normal(shape).astype("float32")}
    batches = list(dumping.stream_batches(data, FLAGS.compare_batch, None, model.specs))

    def both():
        """Both models loaded afresh (not timed), as compare loads them, then run."""
        model = dumping.Runner(tapped, None)
        other = compare._model_file_side(tflite)
        start = time.perf_counter()
        for batch in batches:
            model.run_views(batch)
            other.run(batch)
        return time.perf_counter() - start

    runs = {"both models": [], "compare": []}
    for _ in range(FLAGS.repeats):
        runs["both models"].append(both())
        result = graphtap.compare(tapped, tflite, data, batch_size=FLAGS.compare_batch)
        runs["compare"].append(result.seconds["run"])
    ratios = [c / b for c, b in zip(runs["compare"], runs["both models"])]
    print(f"{name}: {len(report.taps)} taps, {FLAGS.compare_examples} examples in batches of "
          f"{FLAGS.compare_batch}; TFLite conversion {convert:.2f} s")
    for label, seconds in runs.items():
        print(f"  {label:12} {summary(seconds)}")
    print(f"  compare / both models: {statistics.median(ratios):.2f} "
          f"({min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    app.run(main)
