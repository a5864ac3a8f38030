"""Profiler traces as a selector: map a trace's op events back to the tensors of a
signature's functions. Reading a trace never imports TensorFlow (graphtap.run.profiling runs
one).

A CPU trace (`plugins/profile/<run>/<host>.xplane.pb`, an XSpace) has, on its `/host:CPU`
plane, lines `tf_Compute/...` whose events are named `<path>:<kernel type>`: the path is
the node's name behind the names of the call nodes that led to its function, as
functions are inlined for execution (`StatefulPartitionedCall/cnn_1/dense_1/Relu:_Fused...`).
Each candidate's path is built the same way from its call path, so one node name in two
functions (or one function reached through two calls) maps exactly. A kernel that fuses
several ops carries the last one's name; a node Grappler made adds a last component, which
is dropped when nothing matches with it.
"""

import collections
import dataclasses
import glob
import os

from graphtap import errors
from graphtap.rewrite import protos

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


def match_trace(candidates, files):
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
