"""Where outputs may go: never into, onto or around an input.

Paths are compared by what they are on disk, (device, inode), not by their spelling:
symlinks, bind mounts, `..` and case-insensitive names all lead to the same directory
entry, and realpath strings can disagree about them where the kernel does not.
"""

import contextlib
import os
import stat

from graphtap import errors


def check_not_inside(input_path, output_path):
    """Raises errors.OutputInsideInput if writing `output_path` could write into the input
    at `input_path`: the output is the input, lies inside it, or contains it (as far as
    the input's path shows: a tree that is to be removed is searched by tree_holds)."""
    if lies_within(output_path, input_path):
        raise errors.OutputInsideInput("output is the input or lies inside it", output_path)
    with contextlib.suppress(OSError, ValueError):
        if identity(os.stat(output_path)) in ancestry(input_path):
            raise errors.OutputInsideInput("output contains the input", output_path)


def identity(status):
    """The (device, inode) of an os.stat result."""
    return status.st_dev, status.st_ino


def lies_within(path, container):
    """Whether `path` (which may not exist yet) is `container` or lies inside it."""
    try:
        return identity(os.stat(container)) in ancestry(path)
    except (OSError, ValueError):  # ValueError: a NUL in the path
        return False


def ancestry(path):
    """The identities of `path`, if it exists, and of every existing directory above it,
    along the path as spelled and along its resolved form (the kernel's `..`)."""
    found = set()
    for form in {os.path.abspath(path), os.path.realpath(path)}:
        while True:
            with contextlib.suppress(OSError, ValueError):
                found.add(identity(os.stat(form)))
            up = os.path.dirname(form)
            if up == form:
                break
            form = up
    return found


def protected_identities(paths):
    """The identities of `paths` and of every directory above them but the root: a tree
    holding any of them holds one of the paths."""
    found = set()
    for path in paths:
        found |= ancestry(path)
    found.discard(identity(os.stat(os.sep)))
    return found


def tree_holds(root, identities):
    """Whether `root` or anything below it (not following links) is one of `identities`:
    finds an input that a bind mount shows under another path."""
    if not identities:
        return False
    stack = [root]
    while stack:
        path = stack.pop()
        status = os.lstat(path)
        if identity(status) in identities:
            return True
        if stat.S_ISDIR(status.st_mode):
            with os.scandir(path) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif identity(entry.stat(follow_symlinks=False)) in identities:
                        return True
    return False
