"""What the command prints: tables, shapes, and output that survives a full disk or a
closed pipe. No TensorFlow, no numpy."""

import contextlib
import os
import sys

from graphtap import errors


def require(f, name):
    """Raises unless the flag `name` of the parsed FlagValues `f` has a value."""
    if not f[name].value:
        raise errors.BadArgument(f"--{name} is required")


def shape(dims):
    if dims is None:
        return "?"
    return "(" + ", ".join("?" if d < 0 else str(d) for d in dims) + ")"


def print_table(header, rows):
    widths = [max(len(str(v)) for v in column) for column in zip(header, *rows)]
    for row in (header, *rows):
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())


@contextlib.contextmanager
def printing(written=None):
    """Around what a command prints once its work is done: stdout failing (a full disk) is
    an error that says whether the output, `written`, was. A reader that went away
    (BrokenPipeError) is no error: the command ends quietly."""
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
