"""The verbs that run models (verify, dump, profile): reading their data files and
printing their results. Imports numpy and TensorFlow; graphtap.cli loads it only for them.
"""

import contextlib
import logging
import os
import sys

import numpy as np

import graphtap
from graphtap import errors
from graphtap.rewrite import paths
from graphtap.printing import print_table, printing, require, shape
from graphtap.run.verification import verify


def run(verb, f):
    """Runs `verb` (verify, dump or profile) with its parsed flags `f`."""
    with _custom_ops_hint():
        {"verify": _verify, "dump": _dump, "profile": _profile}[verb](f)


@contextlib.contextmanager
def _custom_ops_hint():
    """Says which flag loads the library when a model to run uses an op TensorFlow lacks."""
    try:
        yield
    except errors.UnknownOp as error:
        raise errors.UnknownOp(f"{error.what}: --custom_ops=MODULE_OR_FILE.so",
                               error.where) from None


def _named_arrays(f, read):
    """{input name: read(path)} from --inputs NAME=FILE.npy."""
    arrays = {}
    for spec in f.inputs:
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


def _dump(f):
    require(f, "model")
    require(f, "out")
    sources = [bool(f.inputs), bool(f.inputs_npz), bool(f.tfrecord)]
    if sum(sources) != 1:
        raise errors.BadArgument("give the data one way: --inputs, --inputs_npz or --tfrecord")
    if f.runner and not f.tfrecord:
        raise errors.BadArgument("--runner reads TFRecord shards: give --tfrecord=GLOB")
    if f.runner and (f.tensorboard or f.max_examples):
        raise errors.BadArgument("--runner takes neither --tensorboard nor --max_examples")
    if f.tfrecord:
        if not f.feature:
            raise errors.BadArgument("--tfrecord needs --feature")
        features = dict(f.partition("=")[::2] if "=" in f else (f, f) for f in f.feature)
        data = graphtap.TFRecord(f.tfrecord, features)
    elif f.inputs_npz:
        if not os.path.isfile(f.inputs_npz):
            raise errors.InputNotFound("no such input file", f.inputs_npz)
        paths.check_not_inside(f.inputs_npz, f.out)  # read whole: dump sees no path
        try:
            with np.load(f.inputs_npz) as archive:  # members are read whole: no mmap in zips
                data = {name: archive[name] for name in archive.files}
        except (OSError, ValueError) as error:
            raise errors.GraphtapError(f"cannot read input: {error}", f.inputs_npz) from None
    else:
        data = _named_arrays(f, graphtap.NpyFile)  # read a batch at a time
    if f.runner:
        if not f["verbosity"].present:  # Beam logs to the root logger, on import too
            logging.getLogger().setLevel(logging.ERROR)
        try:
            from graphtap.run import beam
        except ImportError as error:
            raise errors.BadArgument(f"--runner needs Apache Beam (pip install "
                                     f"'graphtap[beam]'): {error}") from None
        stats = beam.dump(f.model, f.tfrecord, features, f.out, runner=f.runner,
                          pipeline_args=f.pipeline_args, signature=f.signature_def,
                          batch_size=f.batch_size, save=f.save, overwrite=f.overwrite,
                          tag_set=f.tag_set, custom_ops=f.custom_ops)
    else:
        stats = graphtap.dump(f.model, data, f.out, signature=f.signature_def,
                              batch_size=f.batch_size, max_examples=f.max_examples,
                              save=f.save, tensorboard=f.tensorboard,
                              overwrite=f.overwrite, tag_set=f.tag_set,
                              custom_ops=f.custom_ops)
    rows = [(key, "tap" if s["is_tap"] else "output", s["count"], _number(s["mean"]),
             _number(s["std"]), _number(s["min"]), _number(s["max"]),
             _number(s["zero_fraction"]), s["nan_count"], s["inf_count"])
            for key, s in stats.items()]
    with printing(written=f.out):
        print_table(("key", "kind", "count", "mean", "std", "min", "max", "zero frac", "NaN",
                      "Inf"), rows)
        print(f"wrote {f.out}")


def _profile(f):
    require(f, "input")
    require(f, "logdir")
    runs = f.runs
    traced = graphtap.profile(f.input, f.logdir, _named_arrays(f, np.load), f.signature_def,
                              runs=runs, batch_size=f.batch_size, custom_ops=f.custom_ops)
    total = sum(t.picoseconds for t in traced.times)
    rows = [(t.candidate.name, t.candidate.op, t.events, f"{t.picoseconds / 1e9:.3f}",
             f"{100 * t.picoseconds / total:.1f}%") for t in traced.times[:f.top_k]]
    unmapped = sum(traced.unmapped.values())
    with printing(written=f.logdir):
        print_table(("name", "op", "events", "total ms", "share"), rows)
        print(f"{len(traced.times)} nodes, {total / 1e9:.3f} ms of op time in {runs} runs "
              f"({traced.wall_picoseconds / 1e9:.3f} ms traced); trace: {traced.files[0]}")
        if unmapped:
            print(f"{unmapped} of {traced.op_events} op events map to no node: "
                  + ", ".join(path for path, _ in traced.unmapped.most_common(3)))


def _number(value):
    return "-" if value is None else f"{value:.4g}"


def _verify(f):
    require(f, "original")
    require(f, "tapped")
    inputs = _named_arrays(f, np.load)
    if f.inputs_npz:
        if not os.path.isfile(f.inputs_npz):
            raise errors.InputNotFound("no such input file", f.inputs_npz)
        try:
            with np.load(f.inputs_npz) as archive:
                inputs.update({name: archive[name] for name in archive.files})
        except (OSError, ValueError) as error:
            raise errors.GraphtapError(f"cannot read input: {error}", f.inputs_npz) from None
    result = verify(f.original, f.tapped, inputs, runs=f.runs, tag_set=f.tag_set,
                    custom_ops=f.custom_ops)
    rows = [(c.path, c.signature, c.key, "tap" if c.is_tap else "original", shape(c.shape),
             c.status, f"{c.max_abs_diff:g}" if c.status == "diff" else "") for c in result.checks]
    failed = sum(c.status != "match" for c in result.checks)
    with printing():
        print_table(("path", "signature", "key", "kind", "shape", "status", "max abs diff"),
                     rows)
        for signature, (original, tapped) in sorted(result.latency.items()):
            print(f"latency {signature}: original {original * 1e3:.2f} ms, tapped "
                  f"{tapped * 1e3:.2f} ms (median of {f.runs})")
        print(f"{len(result.checks) - failed} of {len(result.checks)} checks match")
    if failed:
        sys.exit(1)
