"""Read the job's probes file with the job user's credentials, never root's.

The root prolog must tell a user nothing about a path that she could not find
out herself: not whether a root-only file exists, nor its type, size or bytes.
So the file is opened in a forked child that first becomes the user (her
groups, then gid and uid, real, effective and saved), and only what that child
could read comes back over a pipe. Before that the child moves to ``/`` and
closes every descriptor but the pipe (a ``/proc/self/fd/N`` or
``/proc/self/cwd/...`` path must not reach the prolog's own files). It opens
without following a final symlink or blocking on a FIFO, accepts only a regular
file within the size limit, and is killed at the deadline: the user can stop
or kill a process running as herself, which only costs her her own trace.
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import stat
import time

from ..errors import DatacrumbsError
from ..probes import NotRegularFile, TooLarge, Unreadable

_DATA, _FAIL = b"D", b"E"
_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE = 1, 4
_PROC_SUPER_MAGIC = 0x9FA0
_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket",
          stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}


class UserReadError(DatacrumbsError):
    """The file could not be read as the user for a reason other than the file itself."""


class UserReadTimeout(UserReadError):
    """The reading child gave no answer before the deadline (it was killed)."""


def set_parent_death_signal() -> None:
    """SIGKILL this process when its parent dies (a killed prolog leaves no helper behind).

    Call it after any change of credentials: the kernel clears the setting then.
    """
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _prctl(option: int, value: int) -> None:
    import ctypes  # here: a prolog for a job without tracing never loads it

    try:
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def read_as_user(path, user, *, limit: int, timeout: float) -> bytes:
    """The bytes of ``path`` as ``user`` can read them, or the ProbesFileError she would get.

    ``user`` has ``name``, ``uid`` and ``gid``. Raises Unreadable, NotRegularFile or
    TooLarge for the file, UserReadTimeout at the deadline, UserReadError otherwise.
    """
    deadline = time.monotonic() + max(timeout, 0.0)
    groups = os.getgrouplist(user.name, user.gid)
    pid, rfd = fork_child(lambda out, parent: _child(os.fspath(path), user.uid, user.gid,
                                                     groups, limit, out, parent))
    try:
        reply = _collect(rfd, deadline, limit + 1 + 4096)
    finally:
        os.close(rfd)
        _reap(pid)
    if reply is None:
        raise UserReadTimeout(f"reading probes file {_shown(path)} as user {user.name} took "
                              "too long")
    return _decode(reply, path, user, limit)


def fork_child(run) -> tuple[int, int]:
    """Fork a child that runs ``run(write_fd, parent_pid)`` and never returns into the
    caller; return (its pid, the read end of its pipe)."""
    rfd, wfd = os.pipe2(os.O_CLOEXEC)
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(rfd)
            run(wfd, parent)
        finally:
            os._exit(70)
    os.close(wfd)
    return pid, rfd


# -- the child ---------------------------------------------------------------------------

def _child(path: str, uid: int, gid: int, groups: list[int], limit: int, out: int,
           parent: int) -> None:
    try:
        import ctypes  # noqa: F401 - loaded now, while every library is readable
        _isolate(out)
        _become(uid, gid, groups)
    except BaseException:  # noqa: BLE001 - say so rather than die silently
        reply = _fail("identity")
    else:
        set_parent_death_signal()
        if os.getppid() != parent:
            os._exit(0)  # the prolog is gone already
        try:
            reply = _read(path, limit)
        except BaseException:  # noqa: BLE001
            reply = _fail("internal")
    view = memoryview(reply)
    while view:
        view = view[os.write(out, view):]
    os._exit(0)


def _isolate(keep: int) -> None:
    """Nothing of the prolog's survives: cwd is "/", only ``keep`` and /dev/null are open."""
    os.chdir("/")
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        if fd != null:
            os.dup2(null, fd)
    try:
        open_fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        open_fds = range(3, os.sysconf("SC_OPEN_MAX"))
    for fd in open_fds:
        if fd > 2 and fd != keep:
            try:
                os.close(fd)
            except OSError:
                pass


def _become(uid: int, gid: int, groups: list[int]) -> None:
    if os.geteuid() == 0:
        os.setgroups(groups)
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid):
        raise PermissionError("cannot take the user's identity")
    _prctl(_PR_SET_DUMPABLE, 0)  # no ptrace or /proc access by the user, whatever
    # fs.suid_dumpable says (set after the uid change, which resets it)


def _fail(what: str, **detail) -> bytes:
    return _FAIL + json.dumps({"what": what, **detail}).encode()


def _read(path: str, limit: int) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        return _fail("open", errno=exc.errno)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return _fail("type", kind=stat.S_IFMT(info.st_mode))
        if _on_procfs(fd):  # /proc/self is this child: a copy of the root prolog
            return _fail("procfs")
        if info.st_size > limit:
            return _fail("size", size=info.st_size)
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                return _DATA + b"".join(chunks)
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:  # it grew after fstat
                return _fail("size", size=total)
    except OSError as exc:
        return _fail("read", errno=exc.errno)
    finally:
        os.close(fd)


def _on_procfs(fd: int) -> bool:
    """fstatfs(2): whether ``fd`` is a file of a proc filesystem (f_type, a long, comes first)."""
    import ctypes

    buf = ctypes.create_string_buffer(256)
    try:
        if ctypes.CDLL(None, use_errno=True).fstatfs(fd, buf) != 0:
            return True  # cannot tell: refuse
    except (OSError, AttributeError):
        return True
    return ctypes.c_long.from_buffer(buf).value == _PROC_SUPER_MAGIC


# -- the parent --------------------------------------------------------------------------

def _collect(fd: int, deadline: float, most: int) -> bytes | None:
    """Everything the child writes until EOF; None at the deadline or past ``most`` bytes."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    chunks, total = [], 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(max(int(left * 1000), 1)):
            if time.monotonic() >= deadline:
                return None
            continue
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > most:
            return b"E" + json.dumps({"what": "size", "size": total - 1}).encode()


def _reap(pid: int) -> None:
    """Kill the child if it still runs and collect it (bounded: never hang on it)."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    end = time.monotonic() + 1.0
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done or time.monotonic() > end:
            return
        time.sleep(0.005)


def _decode(reply: bytes, path, user, limit: int) -> bytes:
    if reply[:1] == _DATA:
        return reply[1:]
    try:
        detail = json.loads(reply[1:]) if reply[:1] == _FAIL else {}
    except ValueError:
        detail = {}
    what = detail.get("what")
    code = detail.get("errno")
    if what == "open":
        if code == errno.ELOOP:
            raise NotRegularFile(path, "it is a symbolic link")
        if code == errno.ENOENT:
            raise Unreadable(path, "it does not exist")
        raise Unreadable(path, f"it cannot be opened as user {user.name} "
                         f"({os.strerror(code) if isinstance(code, int) else 'error'})")
    if what == "type":
        kind = _KINDS.get(detail.get("kind"), "not a file")
        raise NotRegularFile(path, f"it is {kind}, not a regular file")
    if what == "procfs":
        raise NotRegularFile(path, "it is a file of /proc, not a regular file")
    if what == "size":
        raise TooLarge(path, f"it is {detail.get('size')} bytes, more than the site limit "
                       f"max_probes_file_bytes = {limit}")
    if what == "read":
        raise Unreadable(path, f"it cannot be read as user {user.name} "
                         f"({os.strerror(code) if isinstance(code, int) else 'error'})")
    if what == "identity":
        raise UserReadError(f"cannot read probes file {_shown(path)} as user {user.name}: this "
                            f"prolog runs as uid {os.geteuid()} and cannot take that user's "
                            "identity (a system prolog runs as root)")
    raise UserReadError(f"reading probes file {_shown(path)} as user {user.name} failed "
                        "(the reading process was killed or failed)")


def _shown(path) -> str:
    """A path as messages show it: a newline or escape must not forge or hide lines."""
    text = os.fspath(path)
    return text if text.isprintable() else repr(text)
