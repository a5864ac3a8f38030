"""Outputs that appear whole or not at all, and never at the cost of anything else.

A write is staged in a directory beside its destination,
`.graphtap-<hash of the destination's name>-<random>`, which holds a lock file and the
output under the name `out`. The writer holds an advisory lock (flock) on the lock file
for as long as the staging directory exists, so a staging directory whose lock can be
taken was abandoned by a killed writer, on this host or any other that shares the
volume, whatever its process ids: the next write of the same destination removes it.
Publishing checks that every file written is still there, fsyncs the new tree, renames
it into place (on Linux, exchanged atomically with an old output that `overwrite`
replaces), fsyncs the parent, and removes the staging directory: content first, lock
file last.

Nothing is removed that graphtap did not stage, nor anything holding a protected path
(the command's input), judged by device and inode rather than by path strings, which
bind mounts and symbolic links defeat.
"""

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import os
import secrets
import signal
import socket
import stat
import sys

from graphtap import errors
from graphtap.rewrite import paths

PREFIX = ".graphtap-"
LOCK_FILE = "graphtap.lock"
CONTENT = "out"
# Fault injection for the kill tests: the process kills itself with SIGKILL at the named
# point (see `checkpoint`), and appends every point it passes to the trace file.
KILL_AT_ENV = "GRAPHTAP_KILL_AT"
TRACE_ENV = "GRAPHTAP_TRACE_POINTS"

_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
# errno values that say the kernel or filesystem cannot rename this way (not that it failed)
_UNSUPPORTED = frozenset({errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP})


def checkpoint(point):
    """A named point of a write, for fault injection: dies here when asked to."""
    trace = os.environ.get(TRACE_ENV)
    if trace:
        with open(trace, "a", encoding="utf-8") as f:
            f.write(point + "\n")
    if os.environ.get(KILL_AT_ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)


def staging_prefix(destination):
    """The name prefix of every staging directory of `destination`: short and fixed in
    length, so that it fits wherever the destination's own name does."""
    name = os.fsencode(os.path.basename(os.path.abspath(destination)))
    return f"{PREFIX}{hashlib.sha256(name).hexdigest()[:16]}-"


class Staged:
    """A staging directory being filled: `path` is where the output goes, a directory
    (created) or a file name (to create). Files written into it are recorded with
    `add`, so that publishing can check they are all still there."""

    def __init__(self, root, lock_fd, is_directory):
        self.root = root
        self.path = os.path.join(root, CONTENT)
        self._lock_fd = lock_fd
        self._identity = paths.identity(os.lstat(root))
        self._sizes = {}
        if is_directory:
            os.mkdir(self.path, 0o777)

    def add(self, path, fd):
        """Records the file at `path`, open as `fd`, as written whole; fsyncs it."""
        os.fsync(fd)
        self._sizes[path] = os.fstat(fd).st_size
        checkpoint("staged " + os.path.relpath(path, self.path))

    def check_complete(self, destination):
        """Raises unless the staging directory is still ours and holds every file written."""
        try:
            root_ok = paths.identity(os.lstat(self.root)) == self._identity
            lock_ok = os.fstat(self._lock_fd).st_nlink > 0
            missing = [p for p, size in self._sizes.items() if _size(p) != size]
        except OSError:
            root_ok = lock_ok = False
        if not (root_ok and lock_ok) or missing:
            raise errors.OutputExists("another process removed this write's staged output; "
                                      "nothing was published", destination)

    def sync(self):
        """fsyncs every directory of the staged tree, deepest first, and the root."""
        if os.path.isdir(self.path) and not os.path.islink(self.path):
            for directory, _, _ in reversed(list(os.walk(self.path))):
                sync_directory(directory)
        sync_directory(self.root)

    def remove(self):
        """Removes the staging directory (see _remove_staging)."""
        _remove_staging(self.root, self._lock_fd)


@contextlib.contextmanager
def staged_output(destination, overwrite=False, is_directory=True, mark=None, protect=()):
    """Yields a Staged whose `path` the block fills; publishes it at `destination` when
    the block ends without an error, and removes it in every case.

    overwrite: replace an existing `destination`: a directory only if it holds the file
      `mark` (a relative path graphtap writes into every output of this kind) and none of
      the `protect` paths; a file, only with a file.
    protect: paths (the command's inputs) that nothing removed may hold.
    """
    destination = os.path.abspath(destination)
    parent = os.path.dirname(destination)
    if os.path.lexists(destination):
        check_replaceable(destination, overwrite, is_directory, mark, protect)
    os.makedirs(parent, exist_ok=True)
    remove_abandoned(destination, protect)
    staged = _create(destination, is_directory)
    try:
        try:
            yield staged
        except OSError as error:  # named as the output, not as its staged copy
            if isinstance(error.filename, str) and error.filename.startswith(staged.path):
                error.filename = destination + error.filename[len(staged.path):]
            raise
        staged.check_complete(destination)
        staged.sync()
        checkpoint("before publish")
        _publish(staged, destination, overwrite, is_directory, mark, protect)
        sync_directory(parent)
        checkpoint("after publish")
    finally:
        staged.remove()


def _create(destination, is_directory):
    parent, prefix = os.path.dirname(destination), staging_prefix(destination)
    for _ in range(100):
        root = os.path.join(parent, prefix + secrets.token_hex(6))
        try:
            os.mkdir(root, 0o777)
        except FileExistsError:
            continue
        lock_fd = os.open(os.path.join(root, LOCK_FILE),
                          os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(lock_fd, f"graphtap pid {os.getpid()} on {socket.gethostname()} writing "
                          f"{os.path.basename(destination)}\n".encode("utf-8", "replace"))
        return Staged(root, lock_fd, is_directory)
    raise errors.OutputExists("no free name to stage the output beside it", destination)


def _publish(staged, destination, overwrite, is_directory, mark, protect):
    if not os.path.lexists(destination):
        try:
            _rename_noreplace(staged.path, destination)
            return
        except FileExistsError:  # it appeared meanwhile
            if not overwrite:
                raise errors.OutputExists("output exists",
                                          destination) from None
    check_replaceable(destination, overwrite, is_directory, mark, protect)
    if not is_directory:
        os.replace(staged.path, destination)  # atomic for a file
        return
    try:
        _renameat2(staged.path, destination, _RENAME_EXCHANGE)
    except OSError as error:
        if error.errno not in _UNSUPPORTED:
            raise
        # No atomic exchange here: move the old output into the staging directory (to
        # be removed with it), then the new one into place.
        os.rename(destination, os.path.join(staged.root, "old"))
        checkpoint("old output moved aside")
        os.rename(staged.path, destination)


def check_replaceable(destination, overwrite, is_directory, mark, protect):
    """Raises unless the existing `destination` may be replaced (see staged_output)."""
    if not overwrite:
        raise errors.OutputExists("output exists", destination)
    st = os.lstat(destination)
    if stat.S_ISDIR(st.st_mode) != is_directory:
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a directory"
        raise errors.OutputExists(f"will not replace it: the output is {kind}", destination)
    if is_directory:
        if mark is not None and not os.path.isfile(os.path.join(destination, mark)):
            raise errors.OutputExists(f"will not replace a directory graphtap did not write "
                                      f"(it has no {mark})", destination)
        if paths.tree_holds(destination, paths.protected_identities(protect)):
            raise errors.OutputInsideInput("output contains the input", destination)


def remove_abandoned(destination, protect=()):
    """Removes the staging directories of `destination` that no live writer holds:
    graphtap's by name and lock file, unlocked, and holding no protected path."""
    parent, prefix = os.path.dirname(destination), staging_prefix(destination)
    try:
        names = [n for n in os.listdir(parent) if n.startswith(prefix)]
    except OSError:
        return
    protected = None
    for name in names:
        root = os.path.join(parent, name)
        lock_fd = _open_lock(root)
        if lock_fd is None:
            continue
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a live writer holds it
            os.close(lock_fd)
            continue
        if protected is None:
            protected = paths.protected_identities(protect)
        try:
            if not paths.tree_holds(root, protected):
                _remove_staging(root, lock_fd)
                continue
        except OSError:  # it vanished, or cannot be read: left as it is
            pass
        os.close(lock_fd)


def _remove_staging(root, lock_fd):
    """Removes a staging directory whose lock `lock_fd` holds: its content first, the lock
    file last, so that a kill part way leaves a directory the next write still knows."""
    for name in os.listdir(root):
        if name != LOCK_FILE:
            remove_tree(os.path.join(root, name))
    os.unlink(os.path.join(root, LOCK_FILE))
    os.rmdir(root)
    os.close(lock_fd)


def _open_lock(root):
    """A descriptor of `root`'s lock file if `root` is a real directory (not a link) with
    a regular lock file in it; else None."""
    try:
        if not stat.S_ISDIR(os.lstat(root).st_mode):
            return None
        fd = os.open(os.path.join(root, LOCK_FILE),
                     os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def remove_tree(path):
    """Removes a file, link or directory tree, never following links."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    with os.scandir(path) as entries:
        children = [entry.path for entry in entries]
    for child in children:
        remove_tree(child)
    os.rmdir(path)


def sync_directory(path):
    """fsyncs a directory, so that the names in it survive a power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in _UNSUPPORTED:  # some filesystems cannot sync a directory
            raise
    finally:
        os.close(fd)


def _size(path):
    st = os.lstat(path)
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _rename_noreplace(source, target):
    """Renames, failing with FileExistsError if `target` exists (even an empty directory,
    which a plain rename would replace)."""
    try:
        _renameat2(source, target, _RENAME_NOREPLACE)
    except OSError as error:
        if error.errno not in _UNSUPPORTED:
            raise
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, "File exists", target) from None
        os.rename(source, target)


def _renameat2(source, target, flags):
    function = _libc_renameat2()
    if function is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available", target)
    if function(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), target)


_RENAMEAT2 = []


def _libc_renameat2():
    """glibc's renameat2 (Linux 3.15, glibc 2.28), or None elsewhere."""
    if not _RENAMEAT2:
        function = None
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError, AttributeError):
                function = ctypes.CDLL(None, use_errno=True).renameat2
                function.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                                     ctypes.c_char_p, ctypes.c_uint)
        _RENAMEAT2.append(function)
    return _RENAMEAT2[0]
