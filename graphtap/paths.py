"""Where outputs may go: never into, onto or around an input.

Paths are compared by what they are on disk, (device, inode), not by their spelling:
symlinks, bind mounts, `..` and case-insensitive names all lead to the same directory
entry, and realpath strings can disagree about them where the kernel does not.
"""

import os

from graphtap import errors


def check_not_inside(input_path, output_path):
    """Raises errors.OutputInsideInput if writing `output_path` could write into the input
    at `input_path`: the output is the input, lies inside it, or contains it. An input that
    does not exist is no concern here (reading it fails with its own error)."""
    source = _identity(input_path)
    if source is None:
        return
    for spelling in {output_path, os.path.abspath(output_path)}:
        if source in _ancestors(_deepest_existing(spelling)):
            raise errors.OutputInsideInput("output is the input or lies inside it", output_path)
    target = _identity(output_path)
    if target is not None and target in _ancestors(input_path):
        raise errors.OutputInsideInput("output contains the input", output_path)


def _identity(path):
    """(st_dev, st_ino) of what `path` leads to, or None if nothing."""
    try:
        status = os.stat(path)
    except (OSError, ValueError):  # ValueError: a NUL in the path
        return None
    return status.st_dev, status.st_ino


def _deepest_existing(path):
    """`path`, or its nearest ancestor (by its spelling) that exists."""
    while _identity(path) is None:
        path = os.path.dirname(path.rstrip(os.sep))
        if not path:  # a relative path none of whose ancestors exists
            return os.curdir
    return path


def _ancestors(path):
    """The identities of `path` and every directory above it, as the kernel walks `..`
    (from the directory a symlink leads to, not from where the link lies; from a file,
    its directory)."""
    found = []
    current = _identity(path)
    if current is not None and not os.path.isdir(path):
        found.append(current)
        path = os.path.dirname(os.path.abspath(path))
        current = _identity(path)
    while current is not None and current not in found:
        found.append(current)
        path = os.path.join(path, os.pardir)
        current = _identity(path)
    return found
