"""Reading the input's files, and copying them into a staged output, without following
anything out of the input, blocking on it, or sharing a file with it.

TensorFlow rewrites files in place (`variables.index` is opened with O_TRUNC), so an
output that hard-links the input's files would let a later write into the output corrupt
the input: files are copied, through the kernel's copy offload where there is one
(copy_file_range, which shares extents on filesystems with reflinks). Links within the
input are copied as the files they lead to; a link out of the input, a FIFO, a device or a
socket is refused, never read.
"""

import errno
import os
import shutil
import stat

from graphtap import errors

_NO_OFFLOAD = frozenset({errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP,
                         errno.ENOTSUP, errno.EPERM, errno.EBADF})


def open_regular(path):
    """A descriptor of the regular file at `path`, opened without blocking (a FIFO would
    wait for a writer) and checked before a byte is read: anything else is refused."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        raise errors.NotAModel(f"cannot read: {error.strerror}", path) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise errors.UnsafeInput("not a regular file (a FIFO, device or socket is never "
                                 "read)", path)
    return fd


def check_regular(path, missing="no such input file"):
    """Raises unless `path` leads to a regular file: errors.InputNotFound (`missing`) if
    nothing is there, errors.UnsafeInput for a FIFO, device, socket or directory, none
    of which is ever opened (a FIFO would block the reader)."""
    try:
        status = os.stat(path)
    except (OSError, ValueError):
        raise errors.InputNotFound(missing, path) from None
    if not stat.S_ISREG(status.st_mode):
        raise errors.UnsafeInput("not a regular file (a FIFO, device, socket or directory "
                                 "is never read)", path)


def check_tree(root):
    """Raises errors.UnsafeInput if anything under the directory `root` (following links:
    a loader follows them) is a FIFO, a device or a socket, which a loader that opens it
    would block on or read without end."""
    stack = [root]
    seen = set()
    while stack:
        directory = stack.pop()
        try:
            status = os.stat(directory)
            if (status.st_dev, status.st_ino) in seen:
                continue
            seen.add((status.st_dev, status.st_ino))
            with os.scandir(directory) as entries:
                children = [entry.path for entry in entries]
        except OSError:
            continue  # unreadable: the loader says what is wrong
        for path in children:
            try:
                child = os.stat(path)
            except OSError:
                continue  # a dangling link: the loader says what is wrong
            if stat.S_ISDIR(child.st_mode):
                stack.append(path)
            elif not stat.S_ISREG(child.st_mode):
                raise errors.UnsafeInput("not a regular file or directory (a FIFO, device "
                                         "or socket is never read)", path)


def read_regular(path):
    """The bytes of the regular file at `path` (see open_regular)."""
    fd = open_regular(path)
    with open(fd, "rb") as f:
        try:
            return f.read()
        except OSError as error:
            raise errors.NotAModel(f"cannot read: {error.strerror}", path) from None


def copy_tree(source_dir, target_dir, staged, skip=(), link_dirs=()):
    """Copies the files under `source_dir` into the existing `target_dir`, recording each
    with `staged.add` (a staging.Staged).

    skip: names at the top of `source_dir` not to copy.
    link_dirs: names at the top whose files are hard-linked instead (where the filesystem
      allows): only for outputs that neither graphtap nor anyone else will write to.
    """
    root = os.path.realpath(source_dir)
    stack = [(root, target_dir, False, source_dir)]
    seen = set()
    while stack:
        source, target, link, shown = stack.pop()  # shown: the path as the input spells it
        st = os.stat(source)
        if (st.st_dev, st.st_ino) in seen:
            raise errors.UnsafeInput("a link leads back into a directory above it", shown)
        seen.add((st.st_dev, st.st_ino))
        with os.scandir(source) as entries:
            children = sorted(entries, key=lambda entry: entry.name)
        for entry in children:
            if source == root and entry.name in skip:
                continue
            path = (_inside(entry.path, root, os.path.join(shown, entry.name))
                    if entry.is_symlink() else entry.path)
            child_st = os.stat(path, follow_symlinks=False)
            destination = os.path.join(target, entry.name)
            if stat.S_ISDIR(child_st.st_mode):
                os.mkdir(destination, 0o777)
                link_files = link or (source == root and entry.name in link_dirs)
                stack.append((path, destination, link_files, os.path.join(shown, entry.name)))
            elif stat.S_ISREG(child_st.st_mode):
                copy_file(path, destination, staged, link)
            else:
                raise errors.UnsafeInput("not a regular file or directory (a FIFO, device "
                                         "or socket is never read)",
                                         os.path.join(shown, entry.name))


def _inside(link, root, shown):
    """Where the symbolic link `link` leads, if that is inside `root`; else refused,
    naming the link as `shown`."""
    resolved = os.path.realpath(link)
    if os.path.commonpath([resolved, root]) != root or not os.path.lexists(resolved):
        raise errors.UnsafeInput("a symbolic link leads out of the model; it is never "
                                 "followed", shown)
    return resolved


def copy_file(source, target, staged, link=False):
    """Copies the regular file `source` to the new file `target` (hard-links it when
    `link` and the filesystem allows), and records it with `staged.add`."""
    if link:
        try:
            os.link(source, target, follow_symlinks=False)
            fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
            try:
                staged.add(target, fd)
            finally:
                os.close(fd)
            return
        except OSError:
            pass  # another filesystem, or no links allowed: copy
    source_fd = open_regular(source)
    try:
        mode = stat.S_IMODE(os.fstat(source_fd).st_mode)
        target_fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            _copy_data(source_fd, target_fd)
            staged.add(target, target_fd)
        finally:
            os.close(target_fd)
    finally:
        os.close(source_fd)


def _copy_data(source_fd, target_fd):
    """Copies all of `source_fd` to `target_fd`: in the kernel where it can."""
    copied = 0
    offload = getattr(os, "copy_file_range", None)
    while offload is not None:
        try:
            count = offload(source_fd, target_fd, 1 << 30)
        except OSError as error:
            if copied or error.errno not in _NO_OFFLOAD:
                raise
            break
        if count == 0:
            return
        copied += count
    with open(source_fd, "rb", closefd=False) as source, \
            open(target_fd, "wb", closefd=False) as target:
        shutil.copyfileobj(source, target, 1 << 20)
