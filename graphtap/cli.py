"""The `graphtap` command: a thin absl-flags front end over the Python API.

    graphtap tap --input=DIR --output=DIR --tap_name=REGEX --tap_op=OP --tap_layer=NAME
    graphtap list --input=DIR [--filter=REGEX] [--format=table|json]
    graphtap verify --original=DIR --tapped=DIR [--inputs=NAME=FILE.npy] [--runs=N]
    graphtap profile --input=DIR --logdir=DIR [--inputs=NAME=FILE.npy] [--runs=10] [--top_k=20]
    graphtap dump --model=DIR --inputs=NAME=FILE.npy | --inputs_npz=FILE.npz |
        --tfrecord=FILE --feature=NAME --out=DIR [--save=stats|npz] [--tensorboard=DIR]
        [--runner=DirectRunner|DataflowRunner|FlinkRunner|SparkRunner BEAM_OPTIONS...]
    graphtap compare --model=TAPPED_DIR --against=tflite|tflite_dynamic|tflite_float16|
        tflite_int8|onnx|PATH (data flags as for dump) --out=DIR [--rtol=1e-4]

`graphtap VERB --help` lists the flags of that verb.

Exit status: 0 on success, 1 when verify finds a difference or compare a divergence, 2 on
any error (one line on stderr, no traceback), 130 when interrupted (Ctrl-C).
"""

import importlib
import json
import os
import sys

from absl import flags, logging

import graphtap
from graphtap import errors
from graphtap.rewrite import protos
from graphtap.flags import TapFlags, define_tap_flags
from graphtap.printing import print_table, printing, require, shape
from graphtap.rewrite.selectors import compile_regex

VERBS = ("tap", "list", "verify", "profile", "dump", "compare")
RUN_VERBS = ("verify", "profile", "dump", "compare")
_HELP_FLAGS = ("-h", "-?", "--help", "--helpshort", "--helpfull")
INTERRUPTED = 130  # the shell's status for a command ended by SIGINT (128 + 2)
MAX_MESSAGE = 500  # characters of an error line


def _define_tap(fv):
    flags.DEFINE_string("input", None, "SavedModel directory, or frozen GraphDef file (.pb, "
                        ".pbtxt).", flag_values=fv)
    flags.DEFINE_string("output", None, "Where to write the tapped model (a directory, or for "
                        "a GraphDef a file: .pbtxt/.txt for text).", flag_values=fv)
    define_tap_flags(flag_values=fv)


def _define_list(fv):
    flags.DEFINE_string("input", None, "SavedModel directory, or frozen GraphDef file (.pb, "
                        ".pbtxt).", flag_values=fv)
    _define_signature_def(fv, "Signature to list (default: serving_default, or the only one). "
                          "Repeatable.", multi=True)
    _define_tag_set(fv)
    flags.DEFINE_string("filter", None, "Only tensors whose names this regex (RE2) searches.",
                        flag_values=fv)
    flags.DEFINE_enum("format", "table", ["table", "json"], "Output format.", flag_values=fv)


def _define_verify(fv):
    flags.DEFINE_string("original", None, "The SavedModel that was tapped.", flag_values=fv)
    flags.DEFINE_string("tapped", None, "The tapped SavedModel.", flag_values=fv)
    _define_data(fv, "for every signature with that input; the others get seeded random "
                 "inputs")
    flags.DEFINE_integer("runs", 1, "With N > 1, also report each signature's median latency "
                         "over N runs, original and tapped.", lower_bound=1, flag_values=fv)
    _define_tag_set(fv)
    _define_custom_ops(fv)


def _define_profile(fv):
    flags.DEFINE_string("input", None, "The SavedModel to profile.", flag_values=fv)
    flags.DEFINE_string("logdir", None, "Where to write the trace "
                        "(plugins/profile/<run>/<host>.xplane.pb, as TensorBoard reads it).",
                        flag_values=fv)
    _define_data(fv, "the others get seeded random inputs", npz=False)
    _define_signature_def(fv, "Signature to run (default: serving_default, or the only one).")
    flags.DEFINE_integer("runs", 10, "Calls of the signature traced, after a warm-up call.",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("batch_size", 1, "Examples in each random input.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_integer("top_k", 20, "How many of the most expensive nodes to print.",
                         lower_bound=1, flag_values=fv)
    _define_tag_set(fv)
    _define_custom_ops(fv)


def _define_dump(fv):
    flags.DEFINE_string("model", None, "The SavedModel to run (tapped or not).", flag_values=fv)
    _define_streamed_data(fv)
    flags.DEFINE_string("out", None, "Directory to write stats.json (and .npz files) to.",
                        flag_values=fv)
    flags.DEFINE_enum("save", "stats", ["stats", "npz"], "`stats` writes stats.json; `npz` also "
                      "every output's values, one KEY.npz per output key.", flag_values=fv)
    flags.DEFINE_string("tensorboard", None, "Also write TensorBoard summaries (a histogram and "
                        "scalars per output, one step a batch) to this log directory.",
                        flag_values=fv)
    _define_run_output(fv)
    flags.DEFINE_enum("runner", None, ["DirectRunner", "DataflowRunner", "FlinkRunner",
                                       "SparkRunner"],
                      "Run as an Apache Beam pipeline on this runner (the `beam` extra): "
                      "--tfrecord is then a glob of shards, --save=npz writes values-*.npz "
                      "keyed by example id, and flags graphtap does not know are passed to "
                      "Beam as pipeline options (--direct_num_workers=2, --project=...).",
                      flag_values=fv)
    flags.DEFINE_multi_string("pipeline_args", [], "Beam pipeline options (with --runner); "
                              "unknown flags land here.", flag_values=fv)
    flags.DEFINE_string("values_out", None, "With --runner and --save=npz: write the values "
                        "files here (a new or empty directory, or a URL of a Beam filesystem: "
                        "gs://...) instead of into --out; needed on runners other than "
                        "DirectRunner, whose workers cannot write to this machine.",
                        flag_values=fv)


def _define_streamed_data(fv):
    _define_data(fv, "read a batch at a time")
    flags.DEFINE_string("tfrecord", None, "A TFRecord file of tf.Examples.", flag_values=fv)
    flags.DEFINE_multi_string("feature", [], "With --tfrecord: INPUT=FEATURE, or FEATURE when "
                              "it is named like the input. Repeatable.", flag_values=fv)
    flags.DEFINE_integer("batch_size", 64, "Examples per batch.", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("max_examples", None, "Stop after this many examples.", lower_bound=1,
                         flag_values=fv)


def _define_compare(fv):
    flags.DEFINE_string("model", None, "The tapped SavedModel.", flag_values=fv)
    flags.DEFINE_string("against", None, "What to compare it with: tflite (converted here, "
                        "float), tflite_dynamic, tflite_float16, tflite_int8 (quantized), onnx "
                        "(tf2onnx + onnxruntime: the onnx extra), or a path: a .tflite or .onnx "
                        "file converted from the tapped model, or another SavedModel (tapped "
                        "with the model's tensor names when it lacks the taps).",
                        flag_values=fv)
    _define_streamed_data(fv)
    flags.DEFINE_string("out", None, "Directory to write compare.json (and compare.png, with "
                        "matplotlib) to.", flag_values=fv)
    flags.DEFINE_float("rtol", 1e-4, "Largest rel L2 error (||a-b||/||a||) of a tap within "
                       "tolerance, against a float side.", lower_bound=0, flag_values=fv)
    flags.DEFINE_float("max_rel_l2", 0.1, "The same, against the quantized kinds "
                       "(tflite_dynamic, tflite_float16, tflite_int8).", lower_bound=0,
                       flag_values=fv)
    flags.DEFINE_multi_string("representative", [], "NAME=FILE.npy: calibration data for "
                              "tflite_int8 (default: the compared data). Repeatable.",
                              flag_values=fv)
    _define_run_output(fv)


def _define_run_output(fv):
    """The flags of a verb that runs a signature and writes an output (dump, compare)."""
    flags.DEFINE_bool("overwrite", False, "Replace an existing output that graphtap wrote.",
                      flag_values=fv)
    _define_signature_def(fv, "Signature to run (default: serving_default, or the only one).")
    _define_tag_set(fv)
    _define_custom_ops(fv)


def _define_data(fv, inputs_help, npz=True):
    flags.DEFINE_multi_string("inputs", [], f"NAME=FILE.npy: data for the signature input NAME "
                              f"({inputs_help}). Repeatable.", flag_values=fv)
    if npz:
        flags.DEFINE_string("inputs_npz", None, "A .npz whose arrays are named after the "
                            "signature's inputs.", flag_values=fv)


def _define_signature_def(fv, help_text, multi=False):
    define = flags.DEFINE_multi_string if multi else flags.DEFINE_string
    define("signature_def", None, help_text, flag_values=fv)


def _define_tag_set(fv):
    flags.DEFINE_string("tag_set", "serve", "Tags of the meta graph to use, comma-separated.",
                        flag_values=fv)


def _define_custom_ops(fv):
    flags.DEFINE_multi_string("custom_ops", [], "A Python module to import (tensorflow_text) "
                              "or an op library to load (a file ending in .so) before the "
                              "model, for the custom ops it uses. Repeatable.", flag_values=fv)


_DEFINE = {"tap": _define_tap, "list": _define_list, "verify": _define_verify,
           "profile": _define_profile, "dump": _define_dump, "compare": _define_compare}


def verb_flags(verb):
    """A FlagValues holding the flags of `verb` only (and --verbosity)."""
    fv = flags.FlagValues()
    flags.DEFINE_integer("verbosity", -1, "Show TensorFlow's and graphtap's logs at this absl "
                         "level, and the traceback of an internal error.", flag_values=fv)
    _DEFINE[verb](fv)
    return fv


def main(verb, f):
    """Runs `verb` with its parsed flags `f`."""
    if verb in RUN_VERBS:  # the run layer, loaded only for the verbs that need it
        importlib.import_module("graphtap.run.commands").run(verb, f)
        return
    require(f, "input")
    if verb == "list":
        _list(f)
        return
    require(f, "output")
    if f.tapped_signature is not None and f.mode != "add":
        raise errors.BadArgument("--tapped_signature names the signature --mode=add adds; "
                                 "give --mode=add")
    report = graphtap.tap(f.input, f.output, TapFlags("", f).options())
    with printing(written=report.output):
        _print_report(report)


def _list(f):
    targets = graphtap.list_targets(f.input, f.signature_def, f.tag_set)
    if f.filter:
        try:
            pattern = compile_regex(f.filter)
        except errors.NoMatch as error:
            raise errors.BadArgument(f"--filter: {error.what}", f.filter) from None
        targets = [c for c in targets if pattern.search(c.name)]
    if f.format == "json":
        rows = [{"name": c.name, "op": c.op, "dtype": protos.dtype_name(c.dtype),
                 "shape": c.dims, "layer": c.layer, "layer_output": c.layer_output,
                 "function": c.function, "tappable": not c.blocked, "why_not": c.blocked}
                for c in targets]
        with printing():
            print(json.dumps(rows, indent=1))
        return
    rows = [(c.name, c.op, protos.dtype_name(c.dtype), shape(c.dims),
             f"{c.layer} (output)" if c.layer_output else c.layer or "", c.function or "",
             "no: " + c.blocked.split(";")[0] if c.blocked else "yes") for c in targets]
    with printing():
        print_table(("name", "op", "dtype", "shape", "layer", "function", "tappable"), rows)


def _print_report(report):
    rows = [(r.signature or "", r.key, r.op, r.dtype, shape(r.shape),
             r.node if r.output == 0 else f"{r.node}:{r.output}")
            for r in report.taps + report.same_function_taps]
    print_table(("signature", "key", "op", "dtype", "shape", "tensor"), rows)
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


def _quiet_tensorflow(f):
    """Keeps TensorFlow's start-up logs off the terminal unless --verbosity was given."""
    if f["verbosity"].present:
        logging.set_verbosity(f.verbosity)
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        logging.set_verbosity(logging.ERROR)


def _parse(argv):
    """(verb, its parsed FlagValues) from the command line; usage, help and flag errors
    end the process here."""
    verb = argv[1] if len(argv) > 1 else None
    if verb not in VERBS:
        if verb in _HELP_FLAGS:
            print(__doc__)
            sys.exit(0)
        _fail(f"usage: graphtap {{{'|'.join(VERBS)}}} --flag=value ... (see --help)")
    f = verb_flags(verb)
    if any(arg in _HELP_FLAGS for arg in argv[2:]):
        print(f"usage: graphtap {verb} --flag=value ...\n\n{f.get_help()}")
        sys.exit(0)
    beam = verb == "dump" and any(arg.startswith("--runner=") for arg in argv[2:])
    try:  # with --runner, flags graphtap does not know are Beam's pipeline options
        rest = f([f"graphtap {verb}", *argv[2:]], known_only=beam)
    except flags.Error as error:
        _fail(str(error))
    if beam:
        f.pipeline_args = f.pipeline_args + [arg for arg in rest[1:] if arg.startswith("--")]
        rest = [rest[0], *(arg for arg in rest[1:] if not arg.startswith("--"))]
    if len(rest) > 1:
        _fail(f"unexpected argument '{rest[1]}' (flags are --name=value)")
    flags.FLAGS.mark_as_parsed()  # absl's logging asks whether flags were parsed
    return verb, f


def _run(verb, f):
    _quiet_tensorflow(f)
    try:
        main(verb, f)
        sys.stdout.flush()
    except errors.GraphtapError as error:
        _fail(str(_with_flag_hint(error)))
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stdout = open(os.devnull, "w")
    except OSError as error:
        where = f" ({error.filename})" if error.filename else ""
        _fail(f"{error.strerror or error}{where}")
    except Exception as error:  # a graphtap bug: one line, unless asked for the traceback
        if f["verbosity"].present:
            raise
        _fail(f"{type(error).__name__}: {error} (a graphtap bug, please report; "
              "--verbosity=1 shows the traceback)", kind="internal error")


# Library errors name no flags; the command adds the flag that answers them.
_FLAG_HINTS = (
    (errors.OutputExists, "output exists", "output exists; pass --overwrite to replace it"),
    (errors.UnknownSignature, "choose a signature", "choose a signature with --signature_def"),
    (errors.NotTappable, "tap with loop 'stack' or 'last'", "pass --loop=stack|last"),
    (errors.NotTappable, "leave it out with exclude", "leave it out with --exclude"),
    (errors.NoMatch, "no selector given: give names, ops, layers or a profile",
     "no selector given: pass --tap_name, --tap_op, --tap_layer or --tap_profile"),
    (errors.BadInput, "(save statistics only)", "(use --save=stats)"),
    (errors.BadArgument, "values_out is where save='npz' writes values: give save='npz'",
     "--values_out is where --save=npz writes values: give --save=npz"),
    (errors.BadArgument, "save='npz' on", "--save=npz on"),
    (errors.BadArgument, "needs values_out", "needs --values_out"),
    (errors.GraphtapError, "give real ones", "give real ones with --inputs or --inputs_npz"),
)


def _with_flag_hint(error):
    """`error` with the library's words for an option replaced by the command's flag."""
    what = error.what
    for kind, library, command in _FLAG_HINTS:
        if isinstance(error, kind):
            what = what.replace(library, command)
    return error if what == error.what else type(error)(what, error.where)


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


def run(argv=None):
    """Console-script entry point: `graphtap VERB --flag=value ...`."""
    try:
        _run(*_parse(sys.argv if argv is None else argv))
    except KeyboardInterrupt:  # Ctrl-C: what was staged is removed on the way out
        print("graphtap: interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED)
