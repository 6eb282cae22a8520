"""Reading another process's /proc entries as root, for the job's user only.

The daemon reads /proc/<pid> after the events that named the pid, when the process may
have exited and its pid gone to another user's process (pids wrap), or exec'd a set-uid
program. A /proc/<pid> directory held open stays with the process it was opened for (a
reused pid is another directory), so every check and read goes through one such
directory, and the check is made again after the read.
"""

from __future__ import annotations

import os
from typing import Callable, TypeVar

T = TypeVar("T")


def runs_as(dfd: int, uid: int) -> bool:
    """The process of the open /proc/<pid> directory ``dfd`` has all four uids ``uid``
    and is dumpable (its ``fd`` directory, looked up anew, is then owned by ``uid``;
    by root otherwise)."""
    try:
        if os.stat("fd", dir_fd=dfd, follow_symlinks=False).st_uid != uid:
            return False
        sfd = os.open("status", os.O_RDONLY | os.O_CLOEXEC, dir_fd=dfd)
        try:
            text = os.read(sfd, 1 << 16).decode("ascii", "replace")
        finally:
            os.close(sfd)
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("Uid:"):
            try:
                return all(int(x) == uid for x in line.split()[1:5])
            except ValueError:
                return False
    return False


def read(pid: int, owner_uid: int | None, reader: Callable[[int], T],
         proc: str = "/proc") -> T | None:
    """``reader(dfd)`` on the open ``/proc/<pid>`` directory, or None when the process is
    gone, ``reader`` raises OSError, or (``owner_uid`` given) the process is not that
    user's own before and after the read."""
    try:
        dfd = os.open(f"{proc}/{int(pid)}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (OSError, ValueError):
        return None
    try:
        if owner_uid is not None and not runs_as(dfd, owner_uid):
            return None
        value = reader(dfd)
        if owner_uid is not None and not runs_as(dfd, owner_uid):   # a set-uid exec meanwhile
            return None
        return value
    except OSError:
        return None
    finally:
        os.close(dfd)
