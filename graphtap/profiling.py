"""Profiler traces as a selector: run a signature under TensorFlow's profiler, and map
the trace's op events back to the tensors of the signature's functions.

A CPU trace (`plugins/profile/<run>/<host>.xplane.pb`, an XSpace) has, on its `/host:CPU`
plane, lines `tf_Compute/...` whose events are named `<path>:<kernel type>`: the path is
the node's name behind the names of the call nodes that led to its function, as
functions are inlined for execution (`StatefulPartitionedCall/cnn_1/dense_1/Relu:_Fused...`).
Each candidate's path is built the same way from its call path, so one node name in two
functions (or one function reached through two calls) maps exactly. A kernel that fuses
several ops carries the last one's name; a node Grappler made adds a last component, which
is dropped when nothing matches with it. Reading a trace never imports TensorFlow; running
one does.
"""

import collections
import dataclasses
import glob
import os

from graphtap import errors, protos

PROFILE_DIR = os.path.join("plugins", "profile")


@dataclasses.dataclass(frozen=True)
class NodeTime:
    """Time the trace spent in one tensor's node, over every run."""

    candidate: object  # index.Candidate (output 0 of the node: the one `--tap_name` names)
    picoseconds: int
    events: int


@dataclasses.dataclass(frozen=True)
class ProfileMatch:
    """A trace mapped onto a signature's nodes."""

    times: list  # NodeTime, most expensive first
    unmapped: collections.Counter  # event path -> count, for op events that map to no node
    op_events: int
    wall_picoseconds: int  # from the first op event's start to the last one's end
    files: list


def trace_files(logdir):
    """The .xplane.pb files of the newest profiling run under `logdir`."""
    runs = sorted(glob.glob(os.path.join(logdir, PROFILE_DIR, "*")))
    files = sorted(glob.glob(os.path.join(runs[-1], "*.xplane.pb"))) if runs else []
    if not files:
        raise errors.InputNotFound(
            f"no profile: expected {os.path.join(PROFILE_DIR, '<run>', '<host>.xplane.pb')} "
            "(as `graphtap profile` or tf.profiler.experimental write)", logdir)
    return files


def op_events(files):
    """[(event path, start ps, duration ps)] of every op event in the traces."""
    found = []
    for path in files:
        try:
            with open(path, "rb") as f:
                space = protos.XSpace.FromString(f.read())
        except OSError as error:
            raise errors.GraphtapError(f"cannot read profile: {error.strerror}", path) from None
        except Exception:  # protobuf's DecodeError and friends
            raise errors.CorruptModel("not an XSpace profile", path) from None
        for plane in space.planes:
            for line in plane.lines:
                if not line.name.startswith("tf_Compute"):
                    continue
                base = line.timestamp_ns * 1000
                for event in line.events:
                    name = plane.event_metadata[event.metadata_id].name
                    if ":" in name and "::" not in name:  # not the runtime's own C++ scopes
                        found.append((name.rsplit(":", 1)[0], base + event.offset_ps,
                                      event.duration_ps))
    return found


def match(candidates, files):
    """Maps the op events of `files` onto `candidates` (one signature's)."""
    by_path = {}
    for candidate in candidates:
        if candidate.output == 0:
            by_path.setdefault(_trace_path(candidate), candidate)
    events = op_events(files)
    totals = collections.defaultdict(lambda: [0, 0])
    unmapped = collections.Counter()
    for path, _, duration in events:
        candidate = _lookup(path, by_path)
        if candidate is None:
            unmapped[path] += 1
            continue
        totals[candidate][0] += duration
        totals[candidate][1] += 1
    times = sorted((NodeTime(c, ps, n) for c, (ps, n) in totals.items()),
                   key=lambda t: -t.picoseconds)
    wall = (max(s + d for _, s, d in events) - min(s for _, s, _ in events)) if events else 0
    return ProfileMatch(times, unmapped, len(events), wall, files)


def _trace_path(candidate):
    """The path a trace names the candidate's node by: the call nodes below the outer
    graph's (the signature function runs as itself), then the node."""
    return "/".join([call.node for call in candidate.calls[1:]] + [candidate.node])


def _lookup(path, by_path):
    """The candidate an event path names: as it is, then without leading call nodes (the
    TF1 Session path runs the outer call node too), each also without a last component
    that Grappler added."""
    parts = path.split("/")
    for start in range(len(parts)):
        for cut in (0, 1):
            if len(parts) - start - cut < 1:
                continue
            candidate = by_path.get("/".join(parts[start:len(parts) - cut]))
            if candidate is not None:
                return candidate
    return None


def run_profile(model_dir, logdir, inputs=None, signature=None, runs=10, batch_size=1, seed=0,
                custom_ops=()):
    """Runs a signature `runs` times under the profiler (after one warm-up call) and
    writes the trace to `logdir`. inputs: {name: array}; the others are random, of the
    signature's dtypes and shapes, `batch_size` examples (unknown dimensions: 1).
    custom_ops: modules and `.so` files defining the model's custom ops, loaded first.
    Imports TensorFlow; inter-op parallelism is 1, so that no two ops' times overlap."""
    import numpy as np
    import tensorflow as tf

    try:
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # the runtime already started in this process
        pass
    from graphtap.dumping import _Runner

    runner = _Runner(model_dir, signature, custom_ops=custom_ops)
    rng = np.random.default_rng(seed)
    feed = {}
    for name, spec in runner.specs.items():
        if inputs and name in inputs:
            feed[name] = runner._conform(name, inputs[name])
            continue
        shape = [batch_size] + [d if d is not None else 1 for d in spec.shape.as_list()[1:]]
        dtype = spec.dtype.as_numpy_dtype
        if spec.dtype.is_floating:
            feed[name] = rng.standard_normal(shape).astype(dtype)
        elif spec.dtype.is_integer:
            feed[name] = rng.integers(0, 2, shape).astype(dtype)
        else:
            raise errors.GraphtapError(
                f"input '{name}' is {spec.dtype.name}: give it with --inputs", model_dir)
    unknown = sorted(set(inputs or ()) - set(runner.specs))
    if unknown:
        raise errors.GraphtapError(f"signature '{runner.signature_key}' has no input(s) "
                                   f"{', '.join(unknown)}", model_dir)
    tensors = {name: tf.constant(value) for name, value in feed.items()}
    runner.function(**tensors)  # warm-up: tracing and first-run allocation stay out of the trace
    tf.profiler.experimental.start(logdir)
    try:
        for _ in range(runs):
            runner.function(**tensors)
    finally:
        tf.profiler.experimental.stop()
    return runner.signature_key
