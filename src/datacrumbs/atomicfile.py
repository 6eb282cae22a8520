"""Publish a file in one step: a reader, or a crash, sees the old file or the new one.

Probes files, env files, reports and the installed layout are read by other
processes (the prolog, systemd, users); none of them may ever see half a file.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

# what a failed write of a file's own bytes says (the disk, a quota, the device)
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS}


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, mode: int = 0o644, text: bool = False,
                  fsync: bool = True):
    """A file object on a temp file beside ``path`` that replaces ``path`` on success.

    The temp file has its final ``mode`` before any byte is written and is
    removed if the block raises (``path`` is then as it was). An OSError of the
    temp file or of its writes names ``path``, not the temp file, which the user
    never heard of.
    """
    path = Path(path)
    try:
        import tempfile     # 4 ms, not paid by a tracer's start that writes nothing here

        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from None
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
            raise OSError(exc.errno, exc.strerror, str(path)) from None
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
    return f"{path}: cannot write it in {parent} ({why}); write it elsewhere"


def atomic_write(path: str | os.PathLike, data: bytes | str, *, mode: int = 0o644,
                 fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` through :func:`atomic_output`."""
    with atomic_output(path, mode=mode, text=isinstance(data, str), fsync=fsync) as f:
        f.write(data)
    return Path(path)
