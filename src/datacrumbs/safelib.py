"""Whether a root daemon may load a compiled helper library (ctypes runs its code).

The helpers (trace/lines.c, tracer/libbpf_print.c) are built beside the BPF object at
install time; a file or directory another user could replace would run that user's code
as root. Kept apart from the helpers' modules, which import numpy: the daemon checks the
libbpf printing helper before it imports anything heavy (tracer/objload.py).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def unsafe_reason(path: os.PathLike | str) -> str | None:
    """Why a root daemon must not load ``path`` (None: it may): the library runs with the
    daemon's rights, so it and its directory must be the daemon's user's (or root's)
    and writable by no one else."""
    me = os.geteuid()
    path = Path(os.path.realpath(path))     # the file a link leads to, and its directory
    for item in (path, path.parent):
        st = os.stat(item)
        if st.st_uid not in (0, me):
            return f"{item} is owned by uid {st.st_uid}"
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not (
                item == path.parent and st.st_mode & stat.S_ISVTX):
            return f"{item} is writable by others"
    return None
