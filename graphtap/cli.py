"""The `graphtap` command: a thin absl-flags front end over the Python API.

    graphtap tap --input=DIR --output=DIR --tap_name=REGEX --tap_op=OP
    graphtap list --input=DIR [--filter=REGEX] [--format=table|json]
    graphtap verify --original=DIR --tapped=DIR [--inputs=NAME=FILE.npy] [--runs=N]

Exit status: 0 on success, 1 when verify finds a difference, 2 on any error (one line on
stderr, no traceback).
"""

import json
import os
import re
import sys

from absl import app, flags, logging

import graphtap
from graphtap import errors, protos

FLAGS = flags.FLAGS
VERBS = ("tap", "list", "verify")

flags.DEFINE_string("input", None, "SavedModel directory, or frozen GraphDef file (.pb, .pbtxt).")
flags.DEFINE_string("output", None, "tap: where to write the tapped model (directory, or file "
                    "for a GraphDef input: .pbtxt/.txt for text).")
flags.DEFINE_multi_string("tap_name", [], "tap: regex full-matched against tensor names as "
                          "`graphtap list` shows them (`node`, or `node:k` for output k > 0); "
                          "`REGEX=KEY` chooses the output key. Repeatable.")
flags.DEFINE_multi_string("tap_op", [], "tap: op type whose every output is tapped. Repeatable.")
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
flags.DEFINE_bool("overwrite", False, "tap: replace an existing output.")
flags.DEFINE_string("original", None, "verify: the SavedModel that was tapped.")
flags.DEFINE_string("tapped", None, "verify: the tapped SavedModel.")
flags.DEFINE_multi_string("inputs", [], "verify: NAME=FILE.npy, an input for every signature "
                          "with that input (others get seeded random inputs). Repeatable.")
flags.DEFINE_integer("runs", 1, "verify: with N > 1, also report each signature's median "
                     "latency over N runs, original and tapped.", lower_bound=1)


def main(argv):
    if len(argv) != 2 or argv[1] not in VERBS:
        raise errors.GraphtapError(f"usage: graphtap {{{'|'.join(VERBS)}}} --input=... "
                                   "(see --help)")
    if argv[1] == "verify":
        _verify()
        return
    _require("input")
    if argv[1] == "tap":
        _require("output")
        report = graphtap.tap(
            FLAGS.input,
            FLAGS.output,
            names=FLAGS.tap_name,
            ops=FLAGS.tap_op,
            exclude=FLAGS.exclude,
            signatures=FLAGS.signature_def,
            mode=FLAGS.mode,
            tag_set=FLAGS.tag_set,
            tapped_signature=FLAGS.tapped_signature,
            overwrite=FLAGS.overwrite,
        )
        _print_report(report)
    else:
        _list()


def _list():
    targets = graphtap.list_targets(FLAGS.input, FLAGS.signature_def, FLAGS.tag_set)
    if FLAGS.filter:
        try:
            pattern = re.compile(FLAGS.filter)
        except re.error as error:
            raise errors.GraphtapError(f"invalid --filter regex: {error}", FLAGS.filter) from None
        targets = [c for c in targets if pattern.search(c.name)]
    if FLAGS.format == "json":
        rows = [{"name": c.name, "op": c.op, "dtype": protos.dtype_name(c.dtype),
                 "shape": c.dims, "function": c.function, "tappable": not c.blocked,
                 "why_not": c.blocked} for c in targets]
        print(json.dumps(rows, indent=1))
        return
    rows = [(c.name, c.op, protos.dtype_name(c.dtype), _shape(c.dims), c.function or "",
             "no: " + c.blocked.split(";")[0] if c.blocked else "yes") for c in targets]
    _print_table(("name", "op", "dtype", "shape", "function", "tappable"), rows)


def _verify():
    import numpy as np

    from graphtap.verification import verify  # imports TensorFlow

    _require("original")
    _require("tapped")
    inputs = {}
    for spec in FLAGS.inputs:
        name, sep, path = spec.partition("=")
        if not sep:
            raise errors.GraphtapError("--inputs takes NAME=FILE.npy", spec)
        try:
            inputs[name] = np.load(path)
        except (OSError, ValueError) as error:
            raise errors.GraphtapError(f"cannot read input: {error}", path) from None
    result = verify(FLAGS.original, FLAGS.tapped, inputs, runs=FLAGS.runs, tag_set=FLAGS.tag_set)
    rows = [(c.path, c.signature, c.key, "tap" if c.is_tap else "original", _shape(c.shape),
             c.status, f"{c.max_abs_diff:g}" if c.status == "diff" else "") for c in result.checks]
    _print_table(("path", "signature", "key", "kind", "shape", "status", "max abs diff"), rows)
    for signature, (original, tapped) in sorted(result.latency.items()):
        print(f"latency {signature}: original {original * 1e3:.2f} ms, tapped {tapped * 1e3:.2f} ms"
              f" (median of {FLAGS.runs})")
    failed = sum(c.status != "match" for c in result.checks)
    print(f"{len(result.checks) - failed} of {len(result.checks)} checks match")
    if failed:
        sys.exit(1)


def _require(name):
    if not FLAGS[name].value:
        raise errors.GraphtapError(f"--{name} is required")


def _shape(dims):
    if dims is None:
        return "?"
    return "(" + ", ".join("?" if d < 0 else str(d) for d in dims) + ")"


def _print_report(report):
    rows = [(r.signature or "", r.key, r.op, r.dtype, _shape(r.shape),
             r.node if r.output == 0 else f"{r.node}:{r.output}") for r in report.taps]
    _print_table(("signature", "key", "op", "dtype", "shape", "tensor"), rows)
    print(f"tapped {len(report.taps)} tensor(s) -> {report.output}")
    for warning in report.warnings:
        print(f"warning: {warning}")
    if report.already_tapped:
        print(f"already tapped, left as they were: {', '.join(report.already_tapped)}")
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


def _parse_flags(argv):
    try:
        return FLAGS(argv)
    except flags.Error as error:
        print(f"graphtap: error: {error}", file=sys.stderr)
        sys.exit(2)
    except SystemExit:
        if any(arg in _HELP_FLAGS for arg in argv[1:]):
            sys.exit(0)  # absl exits 1 after printing help; asking for help is no error
        raise


def _main_with_errors(argv):
    _quiet_tensorflow()
    try:
        main(argv)
    except errors.GraphtapError as error:
        print(f"graphtap: error: {error}", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stdout = open(os.devnull, "w")
    except OSError as error:
        where = f" ({error.filename})" if error.filename else ""
        print(f"graphtap: error: {error.strerror or error}{where}", file=sys.stderr)
        sys.exit(2)


def run():
    """Console-script entry point."""
    # absl's --help shows the main module's doc and key flags: make those ours.
    sys.modules["__main__"].__doc__ = __doc__
    for flag in FLAGS.get_flags_for_module(__name__):
        FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    app.run(_main_with_errors, flags_parser=_parse_flags)
