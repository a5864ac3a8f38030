"""The verbs that run models (verify, dump, profile, compare): reading their data files and
printing their results. Imports numpy and TensorFlow; graphtap.cli loads it only for them.
"""

import contextlib
import logging
import sys

import numpy as np

import graphtap
from graphtap import errors
from graphtap.rewrite import paths, source_files
from graphtap.printing import print_table, printing, require, shape
from graphtap.run.verification import verify


def run(verb, f):
    """Runs `verb` (verify, dump, profile or compare) with its parsed flags `f`."""
    with _custom_ops_hint():
        {"verify": _verify, "dump": _dump, "profile": _profile, "compare": _compare}[verb](f)


@contextlib.contextmanager
def _custom_ops_hint():
    """Says which flag loads the library when a model to run uses an op TensorFlow lacks."""
    try:
        yield
    except errors.UnknownOp as error:
        raise errors.UnknownOp(f"{error.what}: --custom_ops=MODULE_OR_FILE.so",
                               error.where) from None


def _named_arrays(f, read, flag="inputs"):
    """{input name: read(path)} from --inputs (or `flag`) NAME=FILE.npy."""
    arrays = {}
    for spec in f[flag].value:
        name, sep, path = spec.partition("=")
        if not sep:
            raise errors.BadArgument(f"--{flag} takes NAME=FILE.npy", spec)
        source_files.check_regular(path)
        try:
            arrays[name] = read(path)
        except (OSError, ValueError) as error:
            raise errors.GraphtapError(f"cannot read input: {error}", path) from None
    return arrays


def _dump(f):
    require(f, "model")
    require(f, "out")
    if f.runner:
        stats = _dump_on_beam(f)
    elif f.values_out:
        raise errors.BadArgument("--values_out is where --runner writes values; give --runner")
    else:
        stats = graphtap.dump(f.model, _streamed_data(f), f.out, signature=f.signature_def,
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


def _dump_on_beam(f):
    """dump --runner: the pipeline on Apache Beam, over TFRecord shards."""
    if not f.tfrecord or f.inputs or f.inputs_npz:
        raise errors.BadArgument("--runner reads TFRecord shards: give --tfrecord=GLOB only")
    if f.tensorboard or f.max_examples:
        raise errors.BadArgument("--runner takes neither --tensorboard nor --max_examples")
    if not f["verbosity"].present:  # Beam logs to the root logger, on import too
        logging.getLogger().setLevel(logging.ERROR)
    try:
        from graphtap.run import beam
    except ImportError as error:
        raise errors.BadArgument(f"--runner needs Apache Beam (pip install "
                                 f"'graphtap[beam]'): {error}") from None
    return beam.dump(f.model, f.tfrecord, _features(f), f.out, runner=f.runner,
                     pipeline_args=f.pipeline_args, signature=f.signature_def,
                     batch_size=f.batch_size, save=f.save, overwrite=f.overwrite,
                     tag_set=f.tag_set, custom_ops=f.custom_ops, values_out=f.values_out)


def _features(f):
    """{input: tf.Example feature} from --feature INPUT=FEATURE (or FEATURE alone)."""
    if not f.feature:
        raise errors.BadArgument("--tfrecord needs --feature")
    return dict(spec.partition("=")[::2] if "=" in spec else (spec, spec) for spec in f.feature)


def _compare(f):
    require(f, "model")
    require(f, "against")
    require(f, "out")
    data = _streamed_data(f)
    representative = _named_arrays(f, graphtap.NpyFile, "representative") or None
    result = graphtap.compare(f.model, f.against, data, f.out, signature=f.signature_def,
                              batch_size=f.batch_size, max_examples=f.max_examples,
                              rtol=f.rtol, max_rel_l2=f.max_rel_l2,
                              representative=representative, overwrite=f.overwrite,
                              tag_set=f.tag_set, custom_ops=f.custom_ops)
    with printing(written=f.out):
        print_comparison(result)
        print(f"wrote {f.out}")
    if result.first_divergence is not None:
        sys.exit(1)


def print_comparison(result):
    """The table of a graphtap.compare result, and what it found."""
    rows = [(t.position, t.key, "tap" if t.is_tap else "output", _number(t.max_abs),
             _number(t.mean_abs), _number(t.rel_l2), _number(t.cosine), _number(t.sqnr_db),
             t.problem or ("ok" if t.within_tolerance else "DIVERGES"))
            for t in result.taps]
    print_table(("#", "key", "kind", "max abs", "mean abs", "rel l2", "cosine", "sqnr dB",
                 "status"), rows)
    for key in result.missing:
        print(f"missing in {result.against}: tap {key}")
    for key in (k for k in result.only_model if k not in result.missing):
        print(f"only in the model: output {key}")
    for key in result.only_other:
        print(f"only in {result.against}: output {key}")
    for key in result.not_measured:
        print(f"not measured (strings): {key}")
    print(f"{result.examples} examples; conversion {result.seconds['convert']:.2f} s, runs "
          f"{result.seconds['run']:.2f} s")
    if result.first_divergence is None:
        print(f"every tap within tolerance (rel l2 <= {result.tolerance:g})")
    else:
        print(f"first divergence: {result.first_divergence} (rel l2 > {result.tolerance:g})")


def _read_npz(path):
    """{name: array} of every member of the .npz at `path`, read whole (a zip's members
    cannot be memory-mapped)."""
    source_files.check_regular(path)
    try:
        with np.load(path) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as error:
        raise errors.GraphtapError(f"cannot read input: {error}", path) from None


def _streamed_data(f):
    """The data of dump and compare, from --inputs, --inputs_npz or --tfrecord."""
    sources = [bool(f.inputs), bool(f.inputs_npz), bool(f.tfrecord)]
    if sum(sources) != 1:
        raise errors.BadArgument("give the data one way: --inputs, --inputs_npz or --tfrecord")
    if f.tfrecord:
        data = graphtap.TFRecord(f.tfrecord, _features(f))
    elif f.inputs_npz:
        paths.check_not_inside(f.inputs_npz, f.out)  # read whole: dump sees no path
        data = _read_npz(f.inputs_npz)
    else:
        data = _named_arrays(f, graphtap.NpyFile)  # read a batch at a time
    return data


def _profile(f):
    require(f, "input")
    require(f, "logdir")
    runs = f.runs
    traced = graphtap.profile(f.input, f.logdir, _named_arrays(f, np.load), f.signature_def,
                              runs=runs, batch_size=f.batch_size, custom_ops=f.custom_ops,
                              tag_set=f.tag_set)
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
    return "-" if value is None or value != value else f"{value:.4g}"


def _verify(f):
    require(f, "original")
    require(f, "tapped")
    inputs = _named_arrays(f, np.load)
    if f.inputs_npz:
        inputs.update(_read_npz(f.inputs_npz))
    result = verify(f.original, f.tapped, inputs, runs=f.runs, tag_set=f.tag_set,
                    custom_ops=f.custom_ops)
    rows = [(c.path, c.signature, c.key, "tap" if c.is_tap else "original", shape(c.shape),
             c.status, f"{c.max_abs_diff:g}" if c.status == "diff" else "") for c in result.checks]
    failed = len(result.failures)
    with printing():
        print_table(("path", "signature", "key", "kind", "shape", "status", "max abs diff"),
                     rows)
        for signature, (original, tapped) in sorted(result.latency.items()):
            print(f"latency {signature}: original {original * 1e3:.2f} ms, tapped "
                  f"{tapped * 1e3:.2f} ms (median of {f.runs})")
        print(f"{len(result.checks) - failed} of {len(result.checks)} checks match")
    if not result.ok:
        sys.exit(1)
