"""fd -> path tables per process, so events on a descriptor carry their file.

Open-like events tell us the path of the descriptor they return; dup-like
events give the new descriptor the old one's file (``dd of=F`` and shell
redirects write to fd 1 only after ``dup2``); descriptors opened before the
tracer attached, or inherited by a forked child, are resolved once through
/proc (the engine's ``resolve_fd``), which works while the process lives.
Tables are capped per process and in number of processes so a job that opens
millions of files cannot grow the daemon without bound.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

# Operations whose return value is the new descriptor for the path argument (fopen returns
# a FILE*, but the open(2) inside it is traced and stdio events carry fileno).
OPEN_OPS = frozenset({"open", "open64", "openat", "openat64", "openat2", "creat", "creat64"})
#: Calls that rename a path (system calls and libc's functions of the same names): when
#: one succeeds, the kernel side names every open descriptor again on its next use.
RENAME_OPS = frozenset({"rename", "renameat", "renameat2"})
# Operations that release a descriptor or stream.
CLOSE_OPS = frozenset({"close", "fclose"})
# Of those, the ones that close a stream: fclose's own close(2), traced, returns first.
STREAM_CLOSE_OPS = frozenset({"fclose"})
# Operations whose return value is a new descriptor for the file of descriptor ``fd``
# (dup2/dup3 close whatever newfd held first).
DUP_OPS = frozenset({"dup", "dup2", "dup3"})
# fcntl duplicates too when its cmd (the posix set's ``flags`` role: argument 1) is one of
# these: F_DUPFD, F_DUPFD_CLOEXEC.
FCNTL_OPS = frozenset({"fcntl", "fcntl64"})
FCNTL_DUP_CMDS = frozenset({0, 1030})
# Operations whose return value (in the parent) is a new process that inherits the
# caller's descriptors: a shell's redirect is opened before the fork of the command.
FORK_OPS = frozenset({"clone", "clone3", "fork", "vfork"})
_MAX_RESOLVABLE_FD = 1 << 20  # larger "fds" are FILE* values: nothing in /proc to read


class FdPaths:
    """Which file each (process, descriptor) refers to, within fixed memory."""

    def __init__(self, resolve: Callable[[int, int], str | None] | None = None, *,
                 max_fds_per_pid: int = 4096, max_pids: int = 4096):
        self._resolve = resolve
        self._max_fds = max_fds_per_pid
        self._max_pids = max_pids
        self._tables: OrderedDict[int, OrderedDict[int, str | None]] = OrderedDict()

    def _table(self, pid: int) -> OrderedDict:
        table = self._tables.get(pid)
        if table is None:
            table = self._tables[pid] = OrderedDict()
            if len(self._tables) > self._max_pids:
                self._tables.popitem(last=False)
        else:
            self._tables.move_to_end(pid)
        return table

    def opened(self, pid: int, fd: int, path: str) -> None:
        table = self._table(pid)
        table.pop(_closed(fd), None)
        table[fd] = path
        table.move_to_end(fd)
        if len(table) > self._max_fds:
            table.popitem(last=False)

    def closed(self, pid: int, fd: int) -> str | None:
        table = self._tables.get(pid)
        path = table.pop(fd, None) if table is not None else None
        if path is not None:
            # remembered until the number is used again, for the fclose this close(2)
            # may be inside of: its event comes after the close's (stream_closed)
            table[_closed(fd)] = path
            if len(table) > self._max_fds:
                table.popitem(last=False)
        return path

    def stream_closed(self, pid: int, fd: int) -> str | None:
        """The file of the stream an fclose on descriptor ``fd`` closed: the close(2) it made
        came first and took ``fd`` out of the table, so the file that close named (None if
        no close was seen since ``fd`` last got a file: the caller then does as for close)."""
        table = self._tables.get(pid)
        if table is None or fd in table:
            return None
        return table.pop(_closed(fd), None)

    def duplicated(self, pid: int, oldfd: int, newfd: int) -> str | None:
        """``newfd`` now refers to ``oldfd``'s file, as after dup/dup2/dup3; return that path.

        Whatever ``newfd`` named before is dropped, as the kernel closes it. An unknown or
        non-file ``oldfd`` (pipe, socket) is remembered as None for ``newfd`` too: /proc,
        read later, could name a file the descriptor was given after this point.
        """
        path = self.lookup(pid, oldfd)
        if newfd < 0 or newfd == oldfd:
            return path
        table = self._table(pid)
        table.pop(newfd, None)
        table.pop(_closed(newfd), None)
        table[newfd] = path
        if len(table) > self._max_fds:
            table.popitem(last=False)
        return path

    def forked(self, pid: int, child: int) -> None:
        """``child`` starts with a copy of ``pid``'s descriptors (fork, clone). Entries the
        child already has (its own events came first) are kept, unknown ones filled in."""
        parent = self._tables.get(pid)
        if not parent or child <= 0 or child == pid:
            return
        table = self._table(child)
        for fd, path in parent.items():
            if isinstance(fd, int) and table.get(fd) is None:
                table.pop(_closed(fd), None)
                table[fd] = path
        while len(table) > self._max_fds:
            table.popitem(last=False)

    def lookup(self, pid: int, fd: int) -> str | None:
        table = self._table(pid)
        if fd in table:
            return table[fd]
        path = None
        if self._resolve is not None and 0 <= fd < _MAX_RESOLVABLE_FD:
            path = self._resolve(pid, fd)
        table.pop(_closed(fd), None)
        table[fd] = path  # remember misses too: /proc is read once per descriptor
        if len(table) > self._max_fds:
            table.popitem(last=False)
        return path

    def forget(self, pid: int) -> None:
        self._tables.pop(pid, None)

    def __len__(self) -> int:
        return sum(len(t) for t in self._tables.values())


def _closed(fd: int) -> tuple:
    """The key, beside the descriptors of a table, of the file ``fd`` named until its close."""
    return ("closed", fd)
