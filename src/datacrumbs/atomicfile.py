"""Publish a file in one step: a reader, or a crash, sees the old file or the new one.

Probes files, env files, reports and the installed layout are read by other
processes (the prolog, systemd, users); none of them may ever see half a file.

What already stands at the name is never replaced by something of another kind: a
pipe or a character device (``--json /dev/stdout``, ``/dev/null``, a terminal) is
written into, as a shell's ``>`` would (a rename as root put a regular file where
/dev/full was); a symbolic link of root's or of this user's is followed, so the file
it names is the one replaced (not the link: ``/dev/stdout`` when stdout is a file);
a directory, a block device or a socket is refused. Another user's link is replaced
as before, never followed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

# what a failed write of a file's own bytes says (the disk, a quota, the device)
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS}


NOT_A_FILE = "not a regular file, a pipe or a terminal"


def output_target(path: str | os.PathLike) -> tuple[Path, bool]:
    """(the name to write, whether it is a pipe or character device to write into) for an
    output named ``path``; raises OSError (naming ``path``) for a directory, a block
    device or a socket. See the module's docstring."""
    path = Path(path)
    try:
        lst = os.lstat(path)
    except FileNotFoundError:
        return path, False
    except (OSError, ValueError):
        return path, False      # mkstemp beside it says what is wrong
    if stat.S_ISLNK(lst.st_mode):
        if lst.st_uid not in (0, os.geteuid()):
            return path, False
        try:
            st = os.stat(path)
        except OSError:
            return Path(os.path.realpath(path)), False      # a link to a file to be made
        target = path if stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode) \
            else Path(os.path.realpath(path))
    else:
        st, target = lst, path
    if stat.S_ISREG(st.st_mode):
        return target, False
    if stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode):
        return target, True
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "it is a directory", str(path))
    raise OSError(errno.EINVAL, NOT_A_FILE, str(path))


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, mode: int = 0o644, text: bool = False,
                  fsync: bool = True):
    """A file object on a temp file beside ``path`` that replaces ``path`` on success
    (into a pipe or character device at ``path``: written directly, see above).

    The temp file has its final ``mode`` before any byte is written and is
    removed if the block raises (``path`` is then as it was). An OSError of the
    temp file or of its writes names ``path``, not the temp file, which the user
    never heard of.
    """
    shown = str(path)
    path, into = output_target(path)
    if into:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, shown) from None
        try:
            with os.fdopen(fd, "w" if text else "wb",
                           encoding="utf-8" if text else None) as f:
                yield f
        except OSError as exc:
            if exc.filename is None and exc.errno in WRITE_ERRNOS | {errno.EPIPE}:
                raise OSError(exc.errno, exc.strerror, shown) from None
            raise
        return
    try:
        import tempfile     # 4 ms, not paid by a tracer's start that writes nothing here

        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, shown) from None
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w" if text else "wb", encoding="utf-8" if text else None) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and (exc.filename == tmp or (
                exc.filename is None and exc.errno in WRITE_ERRNOS)):
            raise OSError(exc.errno, exc.strerror, shown) from None
        raise


def cannot_write(path: str | os.PathLike, exc: OSError) -> str:
    """One sentence for an output file a command could not write: the file, why, and what
    to do. Written through atomic_output, the file is then as it was before."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    why = exc.strerror or str(exc)
    if exc.errno == errno.ENOENT and not parent.is_dir():
        return f"{path}: directory {parent} does not exist; create it first"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return (f"{path}: {why} in {parent}; free some space there or write it elsewhere "
                "(nothing was written)")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"{path}: cannot write in {parent} (permission denied)"
    if exc.errno == errno.EISDIR:
        return f"{path}: it is a directory; give a file name"
    if exc.strerror == NOT_A_FILE:
        return f"{path}: {NOT_A_FILE}; write it to a file"
    return f"{path}: cannot write it in {parent} ({why}); write it elsewhere"


def atomic_write(path: str | os.PathLike, data: bytes | str, *, mode: int = 0o644,
                 fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` through :func:`atomic_output`."""
    with atomic_output(path, mode=mode, text=isinstance(data, str), fsync=fsync) as f:
        f.write(data)
    return Path(path)
