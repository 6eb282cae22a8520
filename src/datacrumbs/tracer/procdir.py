"""Reading another process's /proc entries as root, for the job's user only.

The daemon reads /proc/<pid> after the events that named the pid, when the process may
have exited and its pid gone to another user's process (pids wrap), or exec'd a set-uid
program. A /proc/<pid> directory held open stays with the process it was opened for (a
reused pid is another directory), so every check and read goes through one such
directory, and the check is made again after the read.
"""

from __future__ import annotations

import os


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
