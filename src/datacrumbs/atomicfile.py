"""Publish a file in one step: a reader, or a crash, sees the old file or the new one.

Probes files, env files, reports and the installed layout are read by other
processes (the prolog, systemd, users); none of them may ever see half a file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, mode: int = 0o644, text: bool = False,
                  fsync: bool = True):
    """A file object on a temp file beside ``path`` that replaces ``path`` on success.

    The temp file has its final ``mode`` before any byte is written and is
    removed if the block raises.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w" if text else "wb", encoding="utf-8" if text else None) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write(path: str | os.PathLike, data: bytes | str, *, mode: int = 0o644,
                 fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` through :func:`atomic_output`."""
    with atomic_output(path, mode=mode, text=isinstance(data, str), fsync=fsync) as f:
        f.write(data)
    return Path(path)
