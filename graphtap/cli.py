"""The `graphtap` command: a thin absl-flags front end over the Python API.

    graphtap tap --input=DIR --output=DIR --tap_name=REGEX --tap_op=OP --tap_layer=NAME
    graphtap list --input=DIR [--filter=REGEX] [--format=table|json]
    graphtap verify --original=DIR --tapped=DIR [--inputs=NAME=FILE.npy] [--runs=N]
    graphtap profile --input=DIR --logdir=DIR [--inputs=NAME=FILE.npy] [--runs=10] [--top_k=20]
    graphtap dump --model=DIR --inputs=NAME=FILE.npy | --inputs_npz=FILE.npz |
        --tfrecord=FILE --feature=NAME --out=DIR [--save=stats|npz] [--tensorboard=DIR]

Exit status: 0 on success, 1 when verify finds a difference, 2 on any error (one line on
stderr, no traceback), 130 when interrupted (Ctrl-C).
"""

import contextlib
import json
import os
import sys

from absl import app, flags, logging

import graphtap
from graphtap import errors, paths, protos
from graphtap.select import compile_regex

FLAGS = flags.FLAGS
VERBS = ("tap", "list", "verify", "profile", "dump")

flags.DEFINE_string("input", None, "SavedModel directory, or frozen GraphDef file (.pb, .pbtxt).")
flags.DEFINE_string("output", None, "tap: where to write the tapped model (directory, or file "
                    "for a GraphDef input: .pbtxt/.txt for text).")
flags.DEFINE_multi_string("tap_name", [], "tap: regex full-matched against tensor names as "
                          "`graphtap list` shows them (`node`, or `node:k` for output k > 0); "
                          "`REGEX=KEY` chooses the output key. Repeatable.")
flags.DEFINE_multi_string("tap_op", [], "tap: op type whose every output is tapped. Repeatable.")
flags.DEFINE_multi_string("tap_layer", [], "tap: Keras layer name (as in model.summary()) whose "
                          "output is tapped, keyed by the layer's name. Repeatable.")
flags.DEFINE_enum("loop", None, ["stack", "last"], "tap: for tensors inside a While loop's "
                  "body: `stack` gives every iteration's value on a new leading axis, `last` the "
                  "last iteration's. Without it they are refused.")
flags.DEFINE_string("tap_profile", None, "tap: a profiler log directory of this model: tap "
                    "the --top_k nodes that took most time (with --tap_name: the traced nodes "
                    "it matches).")
flags.DEFINE_integer("top_k", 20, "tap --tap_profile, profile: how many of the most expensive "
                     "nodes.", lower_bound=1)
flags.DEFINE_string("logdir", None, "profile: where to write the trace "
                    "(plugins/profile/<run>/<host>.xplane.pb, as TensorBoard reads it).")
flags.DEFINE_multi_string("exclude", [], "tap: regex; tensors whose names it full-matches "
                          "are not tapped (applied after --tap_name/--tap_op). Repeatable.")
flags.DEFINE_string("filter", None, "list: only tensors whose names this regex searches.")
flags.DEFINE_enum("format", "table", ["table", "json"], "list: output format.")
flags.DEFINE_multi_string("signature_def", None, "Signature to tap or list (default: "
                          "serving_default, or the only one). Repeatable.")
flags.DEFINE_enum("mode", "extend", ["extend", "add"], "tap: `extend` adds the taps to the "
                  "signature; `add` leaves it untouched and adds <signature>_tapped.")
flags.DEFINE_string("tapped_signature", None, "tap, --mode=add: name of the new signature.")
flags.DEFINE_string("tag_set", "serve", "Tags of the meta graph to use, comma-separated.")
flags.DEFINE_bool("overwrite", False, "tap, dump: replace an existing output that graphtap "
                  "wrote.")
flags.DEFINE_bool("link_variables", False, "tap: hard-link the variables into the output "
                  "instead of copying them. Safe only if neither model is ever written to: "
                  "TensorFlow rewrites variables.index in place, through every link.")
flags.DEFINE_string("original", None, "verify: the SavedModel that was tapped.")
flags.DEFINE_string("tapped", None, "verify: the tapped SavedModel.")
flags.DEFINE_multi_string("inputs", [], "verify, dump: NAME=FILE.npy, data for the signature "
                          "input NAME (verify: for every signature with that input; the others "
                          "get seeded random inputs). Repeatable.")
flags.DEFINE_string("model", None, "dump: the SavedModel to run (tapped or not).")
flags.DEFINE_string("inputs_npz", None, "dump, verify: a .npz whose arrays are named after "
                    "the signature's inputs.")
flags.DEFINE_string("tfrecord", None, "dump: a TFRecord file of tf.Examples.")
flags.DEFINE_multi_string("feature", [], "dump, --tfrecord: INPUT=FEATURE, or FEATURE when it "
                          "is named like the input. Repeatable.")
flags.DEFINE_integer("batch_size", 64, "dump: examples per batch.", lower_bound=1)
flags.DEFINE_integer("max_examples", None, "dump: stop after this many examples.", lower_bound=1)
flags.DEFINE_string("out", None, "dump: directory to write stats.json (and .npz files) to.")
flags.DEFINE_enum("save", "stats", ["stats", "npz"], "dump: `stats` writes stats.json; `npz` "
                  "also every output's values, one KEY.npz per output key.")
flags.DEFINE_string("tensorboard", None, "dump: also write TensorBoard summaries (a histogram "
                    "and scalars per output, one step a batch) to this log directory.")
flags.DEFINE_multi_string("custom_ops", [], "verify, dump, profile: a Python module to import "
                          "(tensorflow_text) or an op library to load (a file ending in .so) "
                          "before the model, for the custom ops it uses. Repeatable.")
flags.DEFINE_integer("runs", 1, "verify: with N > 1, also report each signature's median "
                     "latency over N runs, original and tapped.", lower_bound=1)


def main(argv):
    if len(argv) != 2 or argv[1] not in VERBS:
        raise errors.BadArgument(f"usage: graphtap {{{'|'.join(VERBS)}}} --input=... "
                                   "(see --help)")
    run = {"verify": _verify, "dump": _dump, "profile": _profile}.get(argv[1])
    if run:
        with _custom_ops_hint():
            run()
        return
    _require("input")
    if argv[1] == "tap":
        _require("output")
        if FLAGS.tapped_signature is not None and FLAGS.mode != "add":
            raise errors.BadArgument("--tapped_signature names the signature --mode=add adds; "
                                     "give --mode=add")
        report = graphtap.tap(
            FLAGS.input,
            FLAGS.output,
            names=FLAGS.tap_name,
            ops=FLAGS.tap_op,
            exclude=FLAGS.exclude,
            layers=FLAGS.tap_layer,
            profile=FLAGS.tap_profile,
            top_k=FLAGS.top_k,
            loop=FLAGS.loop,
            signatures=FLAGS.signature_def,
            mode=FLAGS.mode,
            tag_set=FLAGS.tag_set,
            tapped_signature=FLAGS.tapped_signature,
            overwrite=FLAGS.overwrite,
            link_variables=FLAGS.link_variables,
        )
        with _printing(written=report.output):
            _print_report(report)
    else:
        _list()


def _list():
    targets = graphtap.list_targets(FLAGS.input, FLAGS.signature_def, FLAGS.tag_set)
    if FLAGS.filter:
        try:
            pattern = compile_regex(FLAGS.filter)
        except errors.NoMatch as error:
            raise errors.BadArgument(f"--filter: {error.what}", FLAGS.filter) from None
        targets = [c for c in targets if pattern.search(c.name)]
    if FLAGS.format == "json":
        rows = [{"name": c.name, "op": c.op, "dtype": protos.dtype_name(c.dtype),
                 "shape": c.dims, "layer": c.layer, "layer_output": c.layer_output,
                 "function": c.function, "tappable": not c.blocked, "why_not": c.blocked}
                for c in targets]
        with _printing():
            print(json.dumps(rows, indent=1))
        return
    rows = [(c.name, c.op, protos.dtype_name(c.dtype), _shape(c.dims),
             f"{c.layer} (output)" if c.layer_output else c.layer or "", c.function or "",
             "no: " + c.blocked.split(";")[0] if c.blocked else "yes") for c in targets]
    with _printing():
        _print_table(("name", "op", "dtype", "shape", "layer", "function", "tappable"), rows)


def _named_arrays(read):
    """{input name: read(path)} from --inputs NAME=FILE.npy."""
    arrays = {}
    for spec in FLAGS.inputs:
        name, sep, path = spec.partition("=")
        if not sep:
            raise errors.BadArgument("--inputs takes NAME=FILE.npy", spec)
        if not os.path.isfile(path):
            raise errors.InputNotFound("no such input file", path)
        try:
            arrays[name] = read(path)
        except (OSError, ValueError) as error:
            raise errors.GraphtapError(f"cannot read input: {error}", path) from None
    return arrays


def _dump():
    import numpy as np

    _require("model")
    _require("out")
    sources = [bool(FLAGS.inputs), bool(FLAGS.inputs_npz), bool(FLAGS.tfrecord)]
    if sum(sources) != 1:
        raise errors.BadArgument("give the data one way: --inputs, --inputs_npz or --tfrecord")
    if FLAGS.tfrecord:
        if not FLAGS.feature:
            raise errors.BadArgument("--tfrecord needs --feature")
        features = dict(f.partition("=")[::2] if "=" in f else (f, f) for f in FLAGS.feature)
        data = graphtap.TFRecord(FLAGS.tfrecord, features)
    elif FLAGS.inputs_npz:
        if not os.path.isfile(FLAGS.inputs_npz):
            raise errors.InputNotFound("no such input file", FLAGS.inputs_npz)
        paths.check_not_inside(FLAGS.inputs_npz, FLAGS.out)  # read whole: dump sees no path
        try:
            with np.load(FLAGS.inputs_npz) as archive:  # members are read whole: no mmap in zips
                data = {name: archive[name] for name in archive.files}
        except (OSError, ValueError) as error:
            raise errors.GraphtapError(f"cannot read input: {error}", FLAGS.inputs_npz) from None
    else:
        data = _named_arrays(graphtap.NpyFile)  # read a batch at a time
    signature = FLAGS.signature_def[0] if FLAGS.signature_def else None
    stats = graphtap.dump(FLAGS.model, data, FLAGS.out, signature=signature,
                          batch_size=FLAGS.batch_size, max_examples=FLAGS.max_examples,
                          save=FLAGS.save, tensorboard=FLAGS.tensorboard,
                          overwrite=FLAGS.overwrite, tag_set=FLAGS.tag_set,
                          custom_ops=FLAGS.custom_ops)
    rows = [(key, "tap" if s["is_tap"] else "output", s["count"], _number(s["mean"]),
             _number(s["std"]), _number(s["min"]), _number(s["max"]),
             _number(s["zero_fraction"]), s["nan_count"], s["inf_count"])
            for key, s in stats.items()]
    with _printing(written=FLAGS.out):
        _print_table(("key", "kind", "count", "mean", "std", "min", "max", "zero frac", "NaN",
                      "Inf"), rows)
        print(f"wrote {FLAGS.out}")


def _profile():
    import numpy as np

    _require("input")
    _require("logdir")
    signature = FLAGS.signature_def[0] if FLAGS.signature_def else None
    runs = FLAGS.runs if FLAGS["runs"].present else 10
    batch_size = FLAGS.batch_size if FLAGS["batch_size"].present else 1
    traced = graphtap.profile(FLAGS.input, FLAGS.logdir, _named_arrays(np.load), signature,
                              runs=runs, batch_size=batch_size, custom_ops=FLAGS.custom_ops)
    total = sum(t.picoseconds for t in traced.times)
    rows = [(t.candidate.name, t.candidate.op, t.events, f"{t.picoseconds / 1e9:.3f}",
             f"{100 * t.picoseconds / total:.1f}%") for t in traced.times[:FLAGS.top_k]]
    unmapped = sum(traced.unmapped.values())
    with _printing(written=FLAGS.logdir):
        _print_table(("name", "op", "events", "total ms", "share"), rows)
        print(f"{len(traced.times)} nodes, {total / 1e9:.3f} ms of op time in {runs} runs "
              f"({traced.wall_picoseconds / 1e9:.3f} ms traced); trace: {traced.files[0]}")
        if unmapped:
            print(f"{unmapped} of {traced.op_events} op events map to no node: "
                  + ", ".join(path for path, _ in traced.unmapped.most_common(3)))


def _number(value):
    return "-" if value is None else f"{value:.4g}"


def _verify():
    import numpy as np

    from graphtap.verification import verify  # imports TensorFlow

    _require("original")
    _require("tapped")
    inputs = _named_arrays(np.load)
    if FLAGS.inputs_npz:
        if not os.path.isfile(FLAGS.inputs_npz):
            raise errors.InputNotFound("no such input file", FLAGS.inputs_npz)
        try:
            with np.load(FLAGS.inputs_npz) as archive:
                inputs.update({name: archive[name] for name in archive.files})
        except (OSError, ValueError) as error:
            raise errors.GraphtapError(f"cannot read input: {error}", FLAGS.inputs_npz) from None
    result = verify(FLAGS.original, FLAGS.tapped, inputs, runs=FLAGS.runs, tag_set=FLAGS.tag_set,
                    custom_ops=FLAGS.custom_ops)
    rows = [(c.path, c.signature, c.key, "tap" if c.is_tap else "original", _shape(c.shape),
             c.status, f"{c.max_abs_diff:g}" if c.status == "diff" else "") for c in result.checks]
    failed = sum(c.status != "match" for c in result.checks)
    with _printing():
        _print_table(("path", "signature", "key", "kind", "shape", "status", "max abs diff"),
                     rows)
        for signature, (original, tapped) in sorted(result.latency.items()):
            print(f"latency {signature}: original {original * 1e3:.2f} ms, tapped "
                  f"{tapped * 1e3:.2f} ms (median of {FLAGS.runs})")
        print(f"{len(result.checks) - failed} of {len(result.checks)} checks match")
    if failed:
        sys.exit(1)


@contextlib.contextmanager
def _custom_ops_hint():
    """Says which flag loads the library when a model to run uses an op TensorFlow lacks."""
    try:
        yield
    except errors.UnknownOp as error:
        raise errors.UnknownOp(f"{error.what}: --custom_ops=MODULE_OR_FILE.so",
                               error.where) from None


def _require(name):
    if not FLAGS[name].value:
        raise errors.BadArgument(f"--{name} is required")


def _shape(dims):
    if dims is None:
        return "?"
    return "(" + ", ".join("?" if d < 0 else str(d) for d in dims) + ")"


def _print_report(report):
    rows = [(r.signature or "", r.key, r.op, r.dtype, _shape(r.shape),
             r.node if r.output == 0 else f"{r.node}:{r.output}")
            for r in report.taps + report.same_function_taps]
    _print_table(("signature", "key", "op", "dtype", "shape", "tensor"), rows)
    for signature, default in sorted(report.same_function.items()):
        print(f"signature '{signature}' runs the same function as '{default}': tapped too")
    print(f"tapped {len(report.taps) + len(report.same_function_taps)} tensor(s) -> "
          f"{report.output}")
    for warning in report.warnings:
        print(f"warning: {warning}")
    if report.already_tapped:
        print(f"already tapped, left as they were: {', '.join(report.already_tapped)}")
    for signature, layer, key in report.already_outputs:
        print(f"layer {layer} is already output '{key}' of signature '{signature}'; skipped")
    if report.taps and report.taps[0].signature is None:
        print("output names: " + ",".join(report.output_names))


def _print_table(header, rows):
    widths = [max(len(str(v)) for v in column) for column in zip(header, *rows)]
    for row in (header, *rows):
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())


def _quiet_tensorflow():
    """Keeps TensorFlow's start-up logs off the terminal unless --verbosity was given."""
    if not FLAGS["verbosity"].present:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        logging.set_verbosity(logging.ERROR)


_HELP_FLAGS = ("-h", "-?", "--help", "--helpshort", "--helpfull", "--helpxml")
INTERRUPTED = 130  # the shell's status for a command ended by SIGINT (128 + 2)
MAX_MESSAGE = 500  # characters of an error line


def _parse_flags(argv):
    try:
        return FLAGS(argv)
    except flags.Error as error:
        _fail(str(error))
    except SystemExit:
        if any(arg in _HELP_FLAGS for arg in argv[1:]):
            sys.exit(0)  # absl exits 1 after printing help; asking for help is no error
        raise


def _main_with_errors(argv):
    _quiet_tensorflow()
    try:
        main(argv)
        sys.stdout.flush()
    except errors.GraphtapError as error:
        if isinstance(error, errors.OutputExists) and error.what == "output exists":
            error = errors.OutputExists("output exists; pass --overwrite to replace it",
                                        error.where)
        _fail(str(error))
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stdout = open(os.devnull, "w")
    except OSError as error:
        where = f" ({error.filename})" if error.filename else ""
        _fail(f"{error.strerror or error}{where}")
    except Exception as error:  # a graphtap bug: one line, unless asked for the traceback
        if FLAGS["verbosity"].present:
            raise
        _fail(f"{type(error).__name__}: {error} (a graphtap bug, please report; "
              "--verbosity=1 shows the traceback)", kind="internal error")


def _fail(message, kind="error"):
    """Prints `graphtap: <kind>: <message>` as one printable line on stderr; exits with 2."""
    print(f"graphtap: {kind}: {one_line(message)}", file=sys.stderr)
    sys.exit(2)


def one_line(text, limit=MAX_MESSAGE):
    """`text` made fit for one line of a terminal: characters that are not printable
    (newlines, escape sequences, ...) as Python escapes them, and at most `limit`
    characters."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


@contextlib.contextmanager
def _printing(written=None):
    """Around what a command prints once its work is done: stdout failing (a full disk) is
    an error that says whether the output, `written`, was. A reader that went away
    (BrokenPipeError) is no error: see _main_with_errors."""
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as error:
        _discard_stdout()
        done = "the output was written, but " if written else ""
        raise errors.GraphtapError(f"{done}the report could not be printed: "
                                   f"{error.strerror or error}", written) from None


def _discard_stdout():
    """Points stdout at /dev/null: what it still buffers, and its flush at exit, go there."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):  # not a file (tests capture it)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def run():
    """Console-script entry point."""
    # absl's --help shows the main module's doc and key flags: make those ours.
    sys.modules["__main__"].__doc__ = __doc__
    for flag in FLAGS.get_flags_for_module(__name__):
        FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    try:
        app.run(_main_with_errors, flags_parser=_parse_flags)
    except KeyboardInterrupt:  # Ctrl-C: what was staged is removed on the way out
        print("graphtap: interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED)
