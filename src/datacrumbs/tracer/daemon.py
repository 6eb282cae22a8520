"""One tracing run: verify, attach, ready file, drain and write, stop cleanly, summary.

This is what ``datacrumbs@<jobid>.service`` runs as root for one job. Every
value it is given (run id, user, probes file, cgroup) is checked before it
names a file; the probes file is trusted only through ``verify_probes_file``.
The job must never be harmed by the tracer: a full disk stops the trace, not
the daemon, and a stop is bounded even if the job keeps writing.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import signal
import socket
import stat
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import __version__
from ..atomicfile import atomic_write
from ..config import SiteConfig, load_config
from ..errors import ConfigError, DatacrumbsError
from ..jobid import validate_run_id
from ..trace import fastlines
from ..trace.writer import OPS_DTYPE, TraceWriter, probe_name
from ..users import User, lookup_user
from .handles import HandleNames
from .klayers import KernelArgs
from .scalars import ScalarRows
from .engine import ASYNC_FIXED_FILE
from .paths import (CLOSE_OPS, DUP_OPS, FCNTL_DUP_CMDS, FCNTL_OPS, FORK_OPS, OPEN_OPS,
                    STREAM_CLOSE_OPS, FdPaths)
from .scope import scope_from_env
from .summary import SummaryBuilder, SummaryFile

log = logging.getLogger("datacrumbs.daemon")

STOP_DRAIN_SECONDS = 30.0
# How often the job's processes' mappings are read for new libraries of a probed family
# (dlopen() after start): calls made before the next scan are not traced. A scan that
# takes long (many processes) is spaced out so it never costs more than 1/LIBRARY_SCAN_DUTY
# of a core.
LIBRARY_SCAN_S = 0.25
LIBRARY_SCAN_DUTY = 20
_POLL_MS = 100
# A drain costs the daemon about 0.1-0.2 ms whatever its size (poll, numpy and Python
# calls per batch): draining every event as soon as it is there would make batches of a
# few hundred events at high rates and double the CPU per event. So a batch smaller than
# BATCH_EVENTS is followed by a pause that spaces drains DRAIN_GAP_S apart (the poll
# timeout is 100 ms anyway): a burst of 2,000,000 events/s during a pause fills half of
# the 190,000 events the default 16 MiB ring holds; at a steady high rate batches reach
# BATCH_EVENTS and drains follow each other without a pause.
DRAIN_GAP_S = 0.05
BATCH_EVENTS = 16384
LOST_CHECK_S = 0.5
CHUNK_EVENTS = 32768      # a drain's events are converted and written this many at a time
RING_FILL_WAKE = 0.125
_SAFE_HOST = re.compile(r"[^A-Za-z0-9_-]")
# Signals whose default action ends the process, that a process can catch: each one
# stops the daemon like SIGINT (drain, flush, summary, no ready file left behind).
# Synchronous faults (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGTRAP, SIGSYS) are
# bugs, not requests, and SIGKILL/SIGSTOP cannot be caught.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
                signal.SIGUSR2, signal.SIGALRM, signal.SIGVTALRM, signal.SIGPROF, signal.SIGXCPU,
                signal.SIGXFSZ, signal.SIGPWR, signal.SIGIO, signal.SIGSTKFLT,
                *range(signal.SIGRTMIN, signal.SIGRTMAX + 1))


class TraceDirError(DatacrumbsError):
    """The trace directory cannot be created or written."""


class NothingAttached(DatacrumbsError):
    """No probe of the probes file could be attached on this host."""


def short_host() -> str:
    """Host name as it appears in trace names: first label, filename-safe."""
    name = socket.gethostname().split(".")[0] or "localhost"
    return _SAFE_HOST.sub("_", name)[:64]


# -- the trace directory and file names --------------------------------------------------

@dataclass(frozen=True)
class TraceAccess:
    """Who reads a trace besides its user: nobody (``gid`` None, the default: users of
    an HPC site often share their primary group) or the site's ``trace_group``."""

    gid: int | None = None

    @property
    def file_mode(self) -> int:
        return 0o600 if self.gid is None else 0o640

    @property
    def dir_mode(self) -> int:
        return 0o700 if self.gid is None else 0o750

    def group(self, user: User) -> int:
        return user.gid if self.gid is None else self.gid


def trace_access(config: SiteConfig) -> TraceAccess:
    """The site's choice (``[paths] trace_group``); a group unknown here is a ConfigError."""
    return TraceAccess(config.trace_gid())


def open_trace_dir(config: SiteConfig, user: User, *, jobid: str, host: str, date: str,
                   access: TraceAccess | None = None) -> int:
    """Open (creating as needed) the trace directory without following links; return its fd.

    Components from the one that contains ``{user}`` on are owned by the user (the user
    reads them) with ``access``'s group and mode (0700, or 0750 for a trace_group); an
    existing one that is owned otherwise or allows more than that mode is corrected, so
    traces made before a site tightened its setting do not stay readable. Components
    above are root's. Walking with ``dir_fd`` and ``O_NOFOLLOW`` means a user cannot
    redirect root's writes with a symlink.
    """
    access = access or trace_access(config)
    dir_mode, gid = access.dir_mode, access.group(user)
    pattern = Path(config.trace_dir)
    target = config.trace_dir_for(user=user.name, jobid=jobid, host=host, date=date)
    if not target.is_absolute() or len(pattern.parts) != len(target.parts):
        raise TraceDirError(f"trace_dir {config.trace_dir!r} must be an absolute path whose "
                            "placeholders fill whole components")
    user_from = next((i for i, part in enumerate(pattern.parts) if "{user}" in part), None)
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open("/", flags)
    try:
        for i, part in enumerate(target.parts[1:], start=1):
            if part in ("..", "."):
                raise TraceDirError(f"trace directory {target} contains {part!r}")
            owned = user_from is not None and i >= user_from
            try:
                os.mkdir(part, dir_mode if owned else 0o755, dir_fd=fd)
                created = True
            except FileExistsError:
                created = False
            nfd = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = nfd
            if owned:
                st = os.fstat(fd)
                if created or (st.st_uid, st.st_gid) != (user.uid, gid):
                    os.fchown(fd, user.uid, gid)
                mode = stat.S_IMODE(st.st_mode)
                if created or mode & ~dir_mode:  # never looser; a user may keep it tighter
                    os.fchmod(fd, dir_mode if created else mode & dir_mode)
            elif created:
                os.fchmod(fd, 0o755)
        if not os.access(f"/proc/self/fd/{fd}", os.W_OK):
            raise TraceDirError(f"trace directory {target} is not writable; fix its permissions "
                                "or trace_dir in the site configuration")
        probe = f".datacrumbs-write-test.{os.getpid()}"
        try:  # os.access says yes on a read-only mount for nothing; try for real
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                             0o600, dir_fd=fd))
            os.unlink(probe, dir_fd=fd)
        except OSError as exc:
            raise TraceDirError(f"trace directory {target} is not writable ({exc.strerror}); "
                                "fix it or trace_dir in the site configuration") from None
        return fd
    except OSError as exc:
        os.close(fd)
        raise TraceDirError(f"cannot create trace directory {target}: {exc.strerror}; "
                            "fix it or trace_dir in the site configuration") from None
    except BaseException:
        os.close(fd)
        raise


def claim_trace_name(dir_fd: int, stem: str, make_writer) -> tuple[TraceWriter, str, str]:
    """Create ``stem.pfw.gz`` (or ``stem.1.pfw.gz``, ...): an existing trace is never replaced."""
    for k in range(10000):
        base = stem if k == 0 else f"{stem}.{k}"
        summary = f"{base}.summary.json"
        if _exists(summary, dir_fd):
            continue
        try:
            return make_writer(f"{base}.pfw.gz"), f"{base}.pfw.gz", summary
        except FileExistsError:
            continue
    raise TraceDirError(f"too many traces named {stem}.*; remove old ones")


def _exists(name: str, dir_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False


# -- ready file --------------------------------------------------------------------------

def ready_path(config: SiteConfig, run_id: str) -> Path:
    return Path(config.run_dir) / f"datacrumbs-{run_id}.ready"


def write_ready(path: Path, text: str) -> None:
    """Atomically publish the ready file (the unit's start waits for it)."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    atomic_write(path, text, mode=0o644, fsync=False)


def ready_text(trace_name: str, pid: int | None = None) -> str:
    """The ready file's content: this process's pid on the first line (``wait-ready --pid
    $MAINPID`` accepts only a file naming the unit's own daemon, never one left behind
    by a SIGKILLed predecessor), then the trace's name."""
    return f"{os.getpid() if pid is None else pid}\n{trace_name}\n"


def remove_ready(path: Path) -> None:
    """Remove the ready file (at start: a stale one; at every exit: ours)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def mount_table(path: str = "/proc/self/mountinfo") -> list[list[str]]:
    """[[mount point, file-system type]] of this node, read once when a trace starts: the
    report maps each file to its file system by the longest mount point, on whatever
    machine it runs. A later mount on the same point hides the earlier one."""
    table: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                left, sep, right = line.partition(" - ")
                fields, tail = left.split(), right.split()
                if not sep or len(fields) < 5 or not tail:
                    continue
                point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
                table.pop(point, None)
                table[point] = tail[0]
    except OSError:
        return []
    return [[p, t] for p, t in table.items()]


# -- events -> operations ----------------------------------------------------------------

@dataclass
class EventConverter:
    """Turns engine batches into trace rows: ns times, errno, and file paths."""

    probes: list[dict]
    fdpaths: FdPaths
    capture_paths: bool = True
    # MPI-IO and HDF5: files by handle, MPI bytes by datatype (``library_of`` resolves a
    # probe's library for the MPI ABI; None: as the engine does)
    library_of: object = None
    # the compiled library (trace/fastlines.py) for the columns in one pass; None: numpy
    fast: object = None
    handles: HandleNames = field(init=False)
    _errno_kind: np.ndarray = field(init=False)
    _close: set = field(init=False)
    _open: set = field(init=False)
    _dup: set = field(init=False)
    _fcntl: set = field(init=False)
    _fork: set = field(init=False)
    _close_ids: np.ndarray = field(init=False)

    def __post_init__(self):
        if self.library_of is None:
            from .engine import resolve_library
            self.library_of = resolve_library
        self.handles = HandleNames(self.probes, self.library_of)
        self._probe_tables()

    def set_probes(self, probes: list[dict]) -> None:
        """More probes (a family attached to a library found at run time): the tables
        indexed by probe are rebuilt; what was learnt (handles' files) is kept."""
        self.probes = list(probes)
        self.handles = HandleNames(self.probes, self.library_of, table=self.handles.table)
        self._probe_tables()

    def _probe_tables(self) -> None:
        # async requests complete with -errno too (a CQE's res, an io_event's res)
        self._errno_kind = np.array([p.get("kind") in ("syscall", "kprobe", "async")
                                     for p in self.probes] or [False])
        self._async = np.array([p.get("kind") == "async" for p in self.probes] or [False])
        self._usdt = np.array([p.get("kind") == "usdt" for p in self.probes] or [False])
        self._kargs = KernelArgs(self.probes)      # kernel layers: inode, device, async
        self._scalars = ScalarRows(self.probes)     # uncatalogued functions' arguments
        self._any_async = bool(self._async.any())
        self._close, self._open, self._dup, self._fcntl, self._fork = (set() for _ in range(5))
        self._stream_close = set()
        for i, p in enumerate(self.probes):     # one probe_name() each (10,000 probes)
            name = probe_name(p)
            if name in CLOSE_OPS:
                self._close.add(i)
            if name in STREAM_CLOSE_OPS:
                self._stream_close.add(i)
            if name in OPEN_OPS:
                self._open.add(i)
            if name in DUP_OPS:
                self._dup.add(i)
            # fcntl duplicates with F_DUPFD(_CLOEXEC): only when the probe records its cmd
            if name in FCNTL_OPS and (p.get("args") or {}).get("flags") == 1:
                self._fcntl.add(i)
            if name in FORK_OPS:
                self._fork.add(i)
        # rows that change the fd table are resolved one by one, in order
        self._close_ids = np.array(sorted(self._close | self._dup | self._fcntl | self._fork),
                                   dtype=np.int32)

    def convert(self, batch) -> tuple[np.ndarray, list | None, list | None]:
        """(ops, paths, paths2): ``paths2`` names the file of each row's ``fd2`` (the output
        of a copy), None when no row of the batch has one."""
        ops, paths, paths2, _args = self.convert_rows(batch)
        return ops, paths, paths2

    def convert_rows(self, batch) -> tuple[np.ndarray, list | None, list | None, list | None]:
        """(ops, paths, paths2, args): ``args[i]`` holds row i's extra trace args (an HDF5
        call's dataset, group or attribute), None when no row of the batch has any."""
        ev = batch.events
        n = len(ev)
        ops = np.empty(n, OPS_DTYPE)
        kinds, kinds2 = getattr(batch, "kinds", None), getattr(batch, "kinds2", None)
        # one pass in C when the compiled library is there (the same columns: the tests
        # compare them), else a numpy pass per column
        if self.fast is None or not self.fast.convert(ev, ops, kinds, kinds2, self._errno_kind):
            self._columns(ev, ops, kinds, kinds2)
        if self.handles.active:
            self.handles.set_bytes(ops, ev["flags"])
        call_args = self._usdt_rows(batch, ops) if self._usdt.any() else None
        if self._scalars.active:
            more = self._scalars.rows(ev, ops)
            if more is not None:
                call_args = more if call_args is None else \
                    [u or a for u, a in zip(call_args, more)]
        if not self.capture_paths:
            args = call_args
            if self._kargs.active:
                args = self._kargs.rows(ev, args)
            return ops, None, None, args
        two = np.flatnonzero(ops["fd2"] >= 0)
        paths2 = [None] * n if len(two) else None
        # an io_uring fixed file's fd is an index into the ring's file table, not a
        # descriptor: the process's fd table must not name it
        fixed = np.flatnonzero(self._async[ev["probe"]]
                               & ((ev["flags"] & np.uint32(ASYNC_FIXED_FILE)) != 0)) \
            if self._any_async else ()
        if len(fixed):
            index = ops["fd"][fixed].copy()
            ops["fd"][fixed] = -1
        opened = getattr(batch, "paths", None) or {}
        paths = self._paths(ops, opened, two, paths2, getattr(batch, "names", None) or {})
        if len(fixed):
            ops["fd"][fixed] = index
        args = None
        if self.handles.active:
            args = self.handles.name_rows(ops, ev["handle"], paths, opened)
        if call_args is not None:
            args = call_args if args is None else [u or a for u, a in zip(call_args, args)]
        if self._kargs.active:
            args = self._kargs.rows(ev, args)
        return ops, paths, paths2, args

    def _usdt_rows(self, batch, ops: np.ndarray) -> list | None:
        """USDT events carry their arguments in ret/count/offset/handle (tracer/usdt.py):
        move them to the row's args and clear those columns. None: no USDT row here."""
        ev = batch.events
        rows = np.flatnonzero(self._usdt[ev["probe"]])
        if not len(rows):
            return None
        from .usdt import event_args
        out = [None] * len(ops)
        strings = getattr(batch, "strings", None) or {}
        for r in rows.tolist():
            out[r] = event_args(self.probes[int(ev["probe"][r])], ev[r], strings.get(r))
        for key in ("fd", "count", "offset", "size", "fd2"):
            ops[key][rows] = -1
        ops["ret"][rows] = 0
        ops["errno"][rows] = 0
        ops["flags"][rows] = 0
        return out

    def _columns(self, ev: np.ndarray, ops: np.ndarray, kinds, kinds2) -> None:
        """The trace rows' columns from the records, a numpy pass per column."""
        ops["ts_ns"] = ev["ts_ns"]      # nanoseconds all the way to the trace's text
        ops["dur_ns"] = ev["dur_ns"]
        ops["pid"] = ev["pid"]
        ops["tid"] = ev["tid"]
        ops["probe"] = ev["probe"]
        failed = ev["ret"] < 0
        if failed.any():
            ret = ev["ret"].astype(np.int64)
            kernel_errno = failed & self._errno_kind[ev["probe"]]
            ops["errno"] = np.where(kernel_errno, np.minimum(-ret, 4095), 0)
            ops["ret"] = np.where(failed, -1, ret)
        else:       # the common batch: no call failed
            ops["errno"] = 0
            ops["ret"] = ev["ret"]
        ops["fd"] = ev["fd"]
        ops["count"] = np.where(ev["count"] > 0, ev["count"], -1)
        ops["offset"] = ev["offset"]
        ops["size"] = ev["bytes"]
        ops["fd2"] = ev["fd2"]
        ops["flags"] = ev["flags"]
        ops["kind"] = 0 if kinds is None else kinds
        ops["kind2"] = 0 if kinds2 is None else kinds2

    def _paths(self, ops: np.ndarray, opened: dict, two=(), paths2: list | None = None,
               names: dict | None = None) -> list:
        """Path of each row. Between opens and closes the fd table cannot change, so long
        runs of reads and writes are resolved once per distinct (pid, fd), not per row.
        Rows with a second descriptor (``two``) are resolved one by one, in order, with
        ``paths2[i]`` the file of their fd2; so are rows whose descriptors the kernel named
        (``names[i]``: [(fd, name)]), which set the table from there on."""
        n = len(ops)
        names = names or {}
        probe = ops["probe"]
        p0 = int(probe[0]) if n else -1
        if n and (probe == p0).all():   # one probe (a run of reads or writes): no isin
            closing = list(range(n)) if p0 in self._close_ids else []
        else:
            closing = np.flatnonzero(np.isin(probe, self._close_ids)).tolist()
        special = sorted(set(opened).union(closing).union(np.asarray(two).tolist())
                         .union(names))
        if not special and n:
            run = self._one_file_run(ops)
            if run is not None:
                return run
        if len(special) * 32 > n:
            return self._paths_rows(ops, opened, 0, n, [None] * n, paths2, names)
        out = np.full(n, None, dtype=object)
        pid, fd = ops["pid"], ops["fd"]
        start = 0
        for row in special + [n]:
            if row > start:
                seg_fd = fd[start:row]
                valid = np.flatnonzero(seg_fd >= 0)
                if len(valid):
                    if len(valid) == row - start:     # every row has a descriptor
                        keys = (pid[start:row] << 32) | seg_fd
                    else:
                        keys = (pid[start:row][valid] << 32) | seg_fd[valid]
                    k0 = int(keys[0])
                    if (keys == k0).all():     # one file (the common run): no sort
                        out[start + valid] = self.fdpaths.lookup(k0 >> 32, k0 & 0xFFFFFFFF)
                    elif not self._few_files(keys, start + valid, out):
                        uniq, inverse = np.unique(keys, return_inverse=True)
                        found = np.array([None] + [self.fdpaths.lookup(int(k) >> 32,
                                                                       int(k) & 0xFFFFFFFF)
                                                   for k in uniq.tolist()], dtype=object)[1:]
                        out[start + valid] = found[inverse]
            if row < n:
                self._paths_rows(ops, opened, row, row + 1, out, paths2, names)
            start = row + 1
        return out.tolist()

    def _few_files(self, keys: np.ndarray, rows: np.ndarray, out: np.ndarray,
                   most: int = 8) -> bool:
        """Name ``rows`` by their (pid << 32 | fd) ``keys`` when they hold at most ``most``
        distinct ones (several ranks writing their files, interleaved): a comparison per
        key, no sort. False for more (the caller's sort then names every row)."""
        done = np.zeros(len(keys), bool)
        for _ in range(most):
            first = int(np.argmin(done))        # the first row not named yet
            if done[first]:
                return True
            k = int(keys[first])
            same = keys == k
            out[rows[same]] = self.fdpaths.lookup(k >> 32, k & 0xFFFFFFFF)
            done |= same
        return bool(done.all())

    def _one_file_run(self, ops: np.ndarray) -> list | None:
        """The paths of a batch of one (pid, fd) and no row that changes the fd table, the
        common run of reads or writes, as one list repeat; None for any other batch."""
        pid, fd = ops["pid"], ops["fd"]
        pid0, fd0 = int(pid[0]), int(fd[0])
        if fd0 < 0 or not ((fd == fd0).all() and (pid == pid0).all()):
            return None
        return [self.fdpaths.lookup(pid0, fd0)] * len(ops)

    def _paths_rows(self, ops: np.ndarray, opened: dict, begin: int, end: int, out,
                    paths2: list | None = None, names: dict | None = None):
        fdp = self.fdpaths
        close, open_, dup = self._close, self._open, self._dup
        rows = zip(range(begin, end), ops["pid"][begin:end].tolist(),
                   ops["fd"][begin:end].tolist(), ops["probe"][begin:end].tolist(),
                   ops["ret"][begin:end].tolist(), ops["fd2"][begin:end].tolist(),
                   ops["flags"][begin:end].tolist())
        fcntl, fork, stream_close = self._fcntl, self._fork, self._stream_close
        last_key = last_path = None
        names = names or {}
        for i, pid, fd, probe, ret, fd2, flags in rows:
            named = names.get(i)
            if named is not None:   # the kernel's word on these descriptors, from here on
                for nfd, name in named:
                    fdp.opened(pid, nfd, name)
                last_key = None
            if probe in fork:
                if ret > 0:     # the child has the parent's descriptors
                    fdp.forked(pid, ret)
                continue
            if fd2 >= 0 and paths2 is not None:
                paths2[i] = fdp.lookup(pid, fd2)
            path = opened.get(i)
            if path is not None:
                if ret >= 0 and probe in open_:
                    fdp.opened(pid, ret, path)  # the new descriptor is the return value
                out[i] = path
                last_key = None
                continue
            if fd < 0:
                continue
            if probe in close:
                # an fclose: its close(2), when traced, came first and named the file
                out[i] = ((probe in stream_close and fdp.stream_closed(pid, fd))
                          or fdp.closed(pid, fd) or fdp.lookup(pid, fd))
                fdp.closed(pid, fd)
                last_key = None
                continue
            if probe in dup or (probe in fcntl and flags in FCNTL_DUP_CMDS):
                # the new descriptor (the return value) names the old one's file
                out[i] = fdp.duplicated(pid, fd, ret) if ret >= 0 else fdp.lookup(pid, fd)
                last_key = None
                continue
            key = (pid, fd)
            if key != last_key:
                last_key, last_path = key, fdp.lookup(pid, fd)
            out[i] = last_path
        return out


def library_warning(lib: dict) -> str:
    """One line for a library of a probed family the job mapped and the tracer missed."""
    return (f"library {lib['path']} of the probed family {lib['family']} was mapped by the "
            f"job but not traced: {lib.get('reason') or 'not attached'}")


# -- the run -----------------------------------------------------------------------------

def _parts(batch, size: int):
    """``batch`` in consecutive EventBatch parts of at most ``size`` events, row indexes
    of their paths and names made relative to each part: after a stall the ring can hold
    a million events, and rows, lines and their buffers for all of them at once would be
    fresh memory (page faults cost more than formatting here) and out of every cache."""
    n = len(batch.events)
    if n <= size:
        yield batch
        return
    from .engine import EventBatch

    paths, names = getattr(batch, "paths", None) or {}, getattr(batch, "names", None) or {}
    kinds, kinds2 = getattr(batch, "kinds", None), getattr(batch, "kinds2", None)
    for a in range(0, n, size):
        b = min(a + size, n)
        yield EventBatch(
            events=batch.events[a:b],
            paths={k - a: v for k, v in paths.items() if a <= k < b},
            names={k - a: v for k, v in names.items() if a <= k < b},
            kinds=None if kinds is None else kinds[a:b],
            kinds2=None if kinds2 is None else kinds2[a:b])


class StopFlag:
    """Signal handler that asks the drain loop to finish (the loop drains first)."""

    def __init__(self):
        self.requested = False
        self.signal = None

    def __call__(self, signum, frame):
        if not self.requested:  # the first signal is the reason; later ones change nothing
            self.signal = signum
        self.requested = True

    @property
    def name(self) -> str | None:
        """``SIGHUP``, ``SIGRTMIN+3``, ... for logs and the summary (None: no signal)."""
        if not isinstance(self.signal, int):
            return self.signal
        if signal.SIGRTMIN < self.signal <= signal.SIGRTMAX:
            return f"SIGRTMIN+{self.signal - signal.SIGRTMIN}"
        try:
            return signal.Signals(self.signal).name
        except ValueError:
            return f"signal {self.signal}"

    def install(self) -> dict:
        """Catch every STOP_SIGNALS; ignore SIGPIPE (a dead log reader must not cost the
        job its trace: the write fails with EPIPE instead). Returns what to restore."""
        old = {s: signal.signal(s, self) for s in STOP_SIGNALS}
        old[signal.SIGPIPE] = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        return old

    @staticmethod
    def restore(old: dict) -> None:
        for s, h in old.items():
            signal.signal(s, h)


PROBE_SHA256_ENV = "DATACRUMBS_PROBE_SHA256"
PROBE_SOURCE_ENV = "DATACRUMBS_PROBE_SOURCE"


def load_probes(path: Path, user: str, *, config: SiteConfig, env,
                run_id: str | None = None) -> dict:
    """Read the probes file once and verify exactly those bytes (never re-read by path).

    Under the prolog, ``path`` is its verified root-only copy and
    ``DATACRUMBS_PROBE_SHA256`` (from the unit's env file) the digest of the
    bytes it verified: anything else at that path is refused before parsing. Those
    very bytes, in the copy the prolog made for ``run_id``, passed the schema and the
    signature there a moment ago; checking both again cost a 10,000-probe start
    0.08-0.14 s, so only what can have changed since (expiry, and the owner against
    the user this daemon runs for) is checked again. Any other file is verified whole.
    """
    from ..probes import ProbesFileError
    from ..probes.document import decode_document, open_regular_file
    from ..probes.verify import verify_document
    from . import preload

    data = open_regular_file(path, config.max_probes_file_bytes)
    expected = env.get(PROBE_SHA256_ENV)
    if expected is not None:
        if not re.fullmatch(r"[0-9a-f]{64}", expected):
            raise ConfigError(f"{PROBE_SHA256_ENV}={expected!r} is not a SHA-256 in hex; "
                              "check the prolog's env file")
        if preload.sha256_hex(data) != expected:
            raise ProbesFileError(path, "its SHA-256 is not the one the prolog verified "
                                  f"({PROBE_SHA256_ENV})", "rerun the job")
    from ..flux.envfile import is_probes_copy
    trusted = (expected is not None and run_id is not None
               and is_probes_copy(path, config.run_dir, run_id))
    doc = preload.decoded(expected, trusted) if expected is not None else None
    if doc is None:
        doc = decode_document(data, source=path, prolog_verified=trusted,
                              max_decompressed=config.max_probes_document_bytes)
    verify_document(doc, user, config=config, source=path, prolog_verified=trusted)
    source = env.get(PROBE_SOURCE_ENV)
    if source:  # under the prolog: say whose file this copy is
        log.info("probes file %s verified (the prolog's copy of %s)", path,
                 source if source.isprintable() else repr(source))
    return doc


def run_daemon(probes_path, run_id: str, user: str, *, config: SiteConfig | None = None,
               env=os.environ) -> int:
    """Trace one job until a stop signal (STOP_SIGNALS: SIGINT, SIGTERM, SIGHUP, SIGUSR1, ...);
    0 on a clean stop, DatacrumbsError otherwise. The handlers come first so that a
    signal during verification or attach also ends in a clean stop, never a dead daemon."""
    stop = StopFlag()
    old = stop.install()
    try:
        return _run_daemon(probes_path, run_id, user, stop, config=config, env=env)
    finally:
        from . import preload
        preload.discard()       # begun early for a run that failed before taking it
        stop.restore(old)


def _run_daemon(probes_path, run_id: str, user: str, stop: StopFlag, *,
                config: SiteConfig | None, env) -> int:
    run_id = validate_run_id(run_id)      # both name files: check before anything else
    account = lookup_user(user)
    config = config or load_config()
    ready = ready_path(config, run_id)
    remove_ready(ready)   # a SIGKILLed predecessor's file must not make this start look ready
    access = trace_access(config)
    from . import preload, startclock
    from .engine import Engine

    startclock.begin("imports")
    doc = load_probes(Path(probes_path), account.name, config=config, env=env,
                      run_id=run_id)
    startclock.mark("verify")
    mode, interval_ms, capture_paths = preload.capture_options(doc)
    scope = scope_from_env(account.uid, env, run_id)
    host = short_host()
    start = datetime.now(timezone.utc)
    dir_fd = open_trace_dir(config, account, jobid=run_id, host=host,
                            date=start.strftime("%Y-%m-%d"), access=access)
    try:
        # the trace goes to the job's user: nothing that user could not ptrace (a set-uid
        # program, flux-imp) is traced, whatever the scope
        options = preload.engine_options(doc, config, account.uid)
        # the BPF load begun before the imports, if it is this very verified document's
        loader = preload.take(doc, scope, options)
        try:
            engine = Engine(doc["probes"], scope, **options, loader=loader)
        except BaseException:
            if loader is not None:
                loader.close()
            raise
        with engine:
            report = engine.attach()
            for probe, reason in report.refused:
                log.warning("probe %s (%s %s) refused: %s", probe.get("id"), probe.get("kind"),
                            probe.get("target"), reason)
            waiting = getattr(engine, "waits_for_libraries", False)
            if not report.attached and not waiting:
                raise NothingAttached(
                    f"no probe of {probes_path} could be attached on {host} "
                    f"({len(report.refused)} refused, reasons above); generate a probes file "
                    "with sets this node supports (`datacrumbs probes list-sets`)")
            log.info("attached %d of %d probes (%s) for job %s of user %s, scope %s",
                     len(report.attached), len(doc["probes"]),
                     ", ".join(str(p.get("id")) for p in report.attached), run_id, account.name,
                     scope.describe())
            for library, how in report.uprobe_links.items():
                log.info("uprobes on %s attached with %s", library, how)
            run = TraceRun(engine, report, run_id=run_id, user=account, host=host, mode=mode,
                           interval_ms=interval_ms, capture_paths=capture_paths, dir_fd=dir_fd,
                           start=start, access=access, max_bytes=config.max_trace_bytes)

            def on_ready():
                write_ready(ready, ready_text(run.trace_name))
                startclock.mark("rest")
                log.info("%s", startclock.summary(engine.load_stats))

            return run.loop(stop, on_ready)
    finally:
        remove_ready(ready)
        os.close(dir_fd)


class TraceRun:
    """The drain loop of one attached engine and everything it writes (daemon and
    ``datacrumbs trace`` share it). ``loop`` returns once ``stop.requested`` is true and
    the ring buffer is drained; ``summary_doc`` and ``summary_name`` tell what was written
    (``summary_error``: why the summary file could not be).

    ``max_bytes`` caps the trace file. At the cap the writer ends the trace (complete
    and readable) and the loop goes on draining: events are still converted and
    counted in the summary, only not written. Detaching instead would spare the job
    the probes' cost, but removing uprobes takes seconds, the summary's totals would
    stop, and the events_lost count would no longer mean "the ring buffer was full".
    """

    def __init__(self, engine, report, *, run_id, user: User, host, mode, interval_ms,
                 capture_paths, dir_fd, start: datetime, flush_interval: float = 1.0,
                 access: TraceAccess | None = None, max_bytes: int | None = None,
                 library_scan_s: float = LIBRARY_SCAN_S):
        self.engine = engine
        self.report = report
        self._rank_looks: dict[int, int] = {}     # pid -> looks for its rank (3: done)
        self.run_id, self.user, self.host, self.mode = run_id, user, host, mode
        self.interval_s = max(interval_ms, 10) / 1000.0
        self.dir_fd = dir_fd
        self.start_us = int(start.timestamp() * 1_000_000)
        probes = list(engine.probes)
        self.probes = probes
        header = {"version": __version__, "job": run_id, "user": user.name, "host": host,
                  "mode": mode, "clock": "realtime-us", "ts": self.start_us,
                  "mounts": mount_table()}
        stem = f"trace-{user.name}-{run_id}-{host}"

        access = access or TraceAccess()
        self.max_bytes = max_bytes
        self._cap_logged = False
        self.stop_signal: str | None = None

        # the compiled line formatter, built beside the BPF object (else Python f-strings)
        bpf_object = getattr(engine, "bpf_object", None)
        lines = fastlines.load(fastlines.library_path(bpf_object)) if bpf_object else None

        def make(name):
            return TraceWriter(name, header=header, owner_uid=user.uid,
                               owner_gid=access.group(user), mode=access.file_mode,
                               dir_fd=dir_fd, flush_interval=flush_interval, max_bytes=max_bytes,
                               lines=lines)

        self.writer, self.trace_name, self.summary_name = claim_trace_name(dir_fd, stem, make)
        self.summary_error: str | None = None      # why the summary file was not written
        self.writer.set_probes(probes)
        try:
            self.summary_file = SummaryFile(dir_fd, self.summary_name, owner_uid=user.uid,
                                            owner_gid=access.group(user), mode=access.file_mode)
        except BaseException:
            self.writer.close()
            raise
        self._capture_paths, self._lines = capture_paths, lines
        self.library_scan_s = library_scan_s
        self._next_library_scan = 0.0
        self._prev_profile: dict[tuple[int, int], tuple[int, int, int]] = {}
        self._prev_unsent: dict[tuple[int, int], tuple[int, int, int]] = {}
        self._drain_cut = False
        self._last_batch = 0            # events of the last drain
        self._last_lost = 0
        self._last_names_lost = 0
        self._last_lost_log = 0.0
        self._last_lost_check = 0.0

    # The per-probe tables are built at their first use, after the ready file: with
    # 10,000 probes they cost some 40 ms the job's start would wait for, while the
    # events meanwhile wait in the ring buffer for the first drain.
    @functools.cached_property
    def summary(self) -> SummaryBuilder:
        return SummaryBuilder(self.probes)

    @functools.cached_property
    def converter(self) -> EventConverter:
        # as root, after the event: only a process the job's user could ptrace is named
        return EventConverter(self.probes, FdPaths(self.engine.resolve_job_fd),
                              capture_paths=self._capture_paths, fast=self._lines)

    def loop(self, stop, on_ready) -> int:
        try:
            return self._loop(stop, on_ready)
        except DatacrumbsError as exc:  # e.g. the engine failed: still leave a summary
            self._finish(error=str(exc))
            raise
        finally:  # whatever happened, leave a closed trace and no reserved space behind
            self.writer.close()
            self.summary_file.discard()

    def _loop(self, stop, on_ready) -> int:
        ready_sent = False
        next_sample = time.monotonic() + self.interval_s
        while not stop.requested:
            self._scan_libraries()
            began = time.monotonic()
            # the first poll does not wait: the job waits for the ready file
            self._drain_once(_POLL_MS if ready_sent else 0)
            if 0 < self._last_batch < BATCH_EVENTS and ready_sent:
                self._pause(began + DRAIN_GAP_S)
            if not ready_sent:
                on_ready()  # after attach and a completed poll: events flow
                ready_sent = True
                log.info("ready: tracing to %s", self.trace_name)
            now = time.monotonic()
            if now >= next_sample:
                if self.mode == "profile":
                    self._sample_profile()
                else:
                    self._sample_unsent()
                next_sample = now + self.interval_s
            self.writer.tick()
            self._check_cap()
            self._check_lost()
        self._check_lost(force=True)
        if isinstance(stop.signal, int):  # the summary says which signal ended the run
            self.stop_signal = stop.name
        log.info("stop requested (%s): draining", getattr(stop, "name", None) or stop.signal)
        # Everything that happened before the stop is written; a job that keeps writing
        # must not hold the daemon, so draining ends at the first event after the stop
        # (the ring is in time order per CPU) or at the deadline.
        stop_ns = time.time_ns()
        deadline = time.monotonic() + STOP_DRAIN_SECONDS
        while time.monotonic() < deadline:
            newest = self._drain_once(0)
            if newest == 0 or newest >= stop_ns:
                break
        else:
            self._drain_cut = True
            log.warning("stopped draining after %.0f s: the job is still producing events",
                        STOP_DRAIN_SECONDS)
        self._drain_once(0, final=True)     # the events held for their threads' order
        return self._finish()

    def _pause(self, until: float) -> None:
        """Sleep until ``until`` (monotonic) between drains, in steps, ending early when
        the ring buffer fills past RING_FILL_WAKE (a burst must not be lost to a pause)."""
        fill = getattr(self.engine, "ring_fill", None)
        while (left := until - time.monotonic()) > 0:
            time.sleep(min(left, 0.01))
            if fill is not None and fill() >= RING_FILL_WAKE:
                return

    def _scan_libraries(self, force: bool = False) -> None:
        """Attach the probed families to the libraries the job maps by now (see
        tracer/families.py); the tables indexed by probe grow with the engine's."""
        discover = getattr(self.engine, "discover_libraries", None)
        now = time.monotonic()
        if discover is None or (not force and now < self._next_library_scan):
            return
        discover()
        took = time.monotonic() - now
        self._next_library_scan = now + max(self.library_scan_s, LIBRARY_SCAN_DUTY * took)
        self._sync_probes()

    def _sync_probes(self) -> None:
        """The engine attached a family to another library (a scan, or a process held at
        a dlopen() during poll): grow the tables indexed by probe before converting."""
        if len(self.engine.probes) > len(self.probes):
            self.probes = list(self.engine.probes)
            self.writer.set_probes(self.probes)
            self.summary.add_probes(self.probes[len(self.summary.probes):])
            self.converter.set_probes(self.probes)

    def _check_cap(self) -> str | None:
        """Why the trace ended early (max_trace_bytes), logged once; None while under it."""
        at = self.writer.capped_at
        if at is None:
            return None
        when = datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="seconds")
        reason = f"max_trace_bytes ({self.max_bytes}) reached at {when}"
        if not self._cap_logged:
            self._cap_logged = True
            log.warning("trace %s: %s; the trace is closed and complete up to there, later "
                        "events are counted in the summary but not written (the job is not "
                        "affected)", self.trace_name, reason)
        return reason

    def _drain_once(self, timeout_ms: int, final: bool = False) -> int:
        """Poll, convert and write one batch; the latest event time (ns) or 0 if none."""
        batch = self.engine.poll(timeout_ms, final=final)
        self._sync_probes()
        self._last_batch = 0 if batch is None else len(batch.events)
        if batch is None or len(batch.events) == 0:
            return 0
        newest = 0
        for part in _parts(batch, CHUNK_EVENTS):
            newest = max(newest, self._write_batch(part))
        return newest

    def _write_batch(self, batch) -> int:
        """Convert, write and count one batch (at most CHUNK_EVENTS); its newest time."""
        ops, paths, paths2, args = self.converter.convert_rows(batch)
        from .engine import distinct  # imported late, like Engine in run_daemon
        pids = distinct(ops["pid"]).tolist()
        new = [p for p in pids if not self.writer.named(p)]
        # a process first seen before its exec, or a moment before its launcher's variables
        # were read, gets two more looks for its rank (then it keeps its name alone)
        if len(self._rank_looks) > 1_000_000:
            self._rank_looks.clear()
        later = [p for p in pids if 0 < self._rank_looks.get(p, 3) < 3]
        if new or later:
            from .ranks import process_rank

            names = self.engine.process_names()
            for pid in new + later:
                if pid in names:
                    rank = process_rank(pid, owner_uid=self.engine.proc_owner)
                    self._rank_looks[pid] = 3 if rank is not None else \
                        self._rank_looks.get(pid, 0) + 1
                    if pid in new or rank is not None:
                        self.writer.process_name(pid, names[pid], rank)
        self.writer.write_ops(ops, paths, paths2, args)
        if self.mode != "profile":
            self.summary.add_ops(ops, paths, paths2)
        return int(ops["ts_ns"].max())

    def _sample_profile(self) -> list:
        rows = self.engine.read_profile()
        self.writer.write_counters(self._growth(rows, self._prev_profile))
        return rows

    def _growth(self, rows, prev: dict) -> list:
        """Counter rows (ts, pid, probe, count, bytes, time_ns) of what each (process,
        probe) row gained since ``prev`` (updated), for rows of known probes."""
        ts = time.time_ns()
        out = []
        nprobes = len(self.probes)
        for row in rows:
            if not 0 <= row.probe < nprobes:
                continue
            key = (row.pid, row.probe)
            cur = (row.count, row.bytes, row.time_ns)
            before = prev.get(key, (0, 0, 0))
            if cur[0] != before[0]:
                out.append((ts, row.pid, row.probe, cur[0] - before[0],
                            max(cur[1] - before[1], 0), cur[2] - before[2]))
            prev[key] = cur
        return out

    def _sample_unsent(self) -> None:
        """Trace mode: operations the kernel could not send since the last sample (its
        per-(process, probe) rows), into the trace and the summary's totals."""
        out = self._growth(self.engine.read_unsent(), self._prev_unsent)
        if out:
            self.writer.write_unsent(out)
            self.summary.add_unsent(out)

    def _check_lost(self, force: bool = False) -> None:
        """Warn (at most every 10 s) while events or file names are being lost. The
        kernel's counters are read every LOST_CHECK_S (or when ``force``): reading them
        (per-CPU maps) costs as much as formatting a few hundred events."""
        now = time.monotonic()
        if not force and now - self._last_lost_check < LOST_CHECK_S:
            return
        self._last_lost_check = now
        lost, names_lost = self.engine.lost(), self.engine.names_lost()
        if (lost > self._last_lost or names_lost > self._last_names_lost) \
                and now - self._last_lost_log >= 10:
            if lost > self._last_lost:
                log.warning("%d events lost so far (the ring buffer was full)", lost)
            if names_lost > self._last_names_lost:
                log.warning("%d file names lost so far (their events are in the trace without "
                            "a file name)", names_lost)
            self._last_lost, self._last_names_lost = lost, names_lost
            self._last_lost_log = now

    def _finish(self, error: str | None = None) -> int:
        rows = None
        if self.mode == "profile" and error is None:
            rows = self._sample_profile()
        totals_lost = None
        if self.mode == "trace":
            try:    # after the last drain: every lost event is counted by now
                self._sample_unsent()
                totals_lost = int(self.engine.totals_lost())
            except (DatacrumbsError, OSError) as exc:
                log.warning("cannot read the kernel's count of lost events: %s", exc)
        # counted where draining stopped, before closing the trace takes its time
        try:
            lost, names_lost = int(self.engine.lost()), int(self.engine.names_lost())
        except (DatacrumbsError, OSError):
            lost, names_lost = self._last_lost, self._last_names_lost
        self.writer.close()
        if rows is not None:
            self.summary.set_profile(rows)
        extra = {"error": error} if error else {}
        scope = self.engine.scope
        try:
            job_cgroup_seen = scope.kind != "cgroup_name" or self.engine.job_cgroup() is not None
        except (DatacrumbsError, OSError):
            job_cgroup_seen = True      # cannot tell: say nothing rather than something wrong
        if not job_cgroup_seen:
            # Not an error of the job's, but an empty trace must never be silent.
            extra["warning"] = (f"no cgroup named *{scope.cgroup_name} appeared during the job, "
                                "so nothing was traced; sdexec_scope = true needs Flux to run "
                                "jobs with sdexec")
            log.warning("%s", extra["warning"])
        elif scope.kind == "job_shell" and not self.writer.events_written:
            extra["warning"] = (f"no event from a process run as `{scope.shell} {scope.jobid}` "
                                "(the job's shell) or its children; if the job ran here, check "
                                "that [service] job_shell names the site's job shell")
            log.warning("%s", extra["warning"])
        if self.writer.error:
            extra["write_error"] = self.writer.error
            extra["events_not_written"] = self.writer.events_dropped
        capped = self._check_cap()
        if capped:  # complete is false (writer.complete); say why and how much is missing
            extra["stopped"] = f"{capped}; {self.writer.events_dropped} events not written"
            extra["events_not_written"] = self.writer.events_dropped
        if self.stop_signal:
            extra["stop_signal"] = self.stop_signal
        libraries = list(getattr(self.engine, "libraries", None) or [])
        if libraries:
            extra["libraries"] = libraries
            missed = [lib for lib in libraries if lib["status"] == "not attached"]
            if missed:
                extra["library_warnings"] = [library_warning(lib) for lib in missed]
                for line in extra["library_warnings"]:
                    log.warning("%s", line)
        if self.mode == "trace":
            # Totals (operations, bytes, time per operation) are the events received plus
            # the kernel's count of those it could not send: exact unless that count
            # itself had no room (totals_lost) or could not be read.
            extra["totals_lost"] = totals_lost if totals_lost is not None else lost
            extra["totals_exact"] = (totals_lost == 0 and not error and not self._drain_cut)
            extra["operations_without_event"] = int(self.summary.unsent)
        doc = self.summary.to_dict(
            job=self.run_id, user=self.user.name, host=self.host, mode=self.mode,
            start_ts=self.start_us, end_ts=time.time_ns() // 1000,
            complete=self.writer.complete and not error and not lost and not names_lost,
            events_written=self.writer.events_written, events_lost=lost, names_lost=names_lost,
            trace_file=self.trace_name, attached=self.report.attached,
            refused=self.report.refused, **extra)
        self.summary_doc = doc
        try:
            self.summary_file.commit(doc)
        except OSError as exc:
            self.summary_error = exc.strerror or str(exc)
            log.error("cannot write summary %s: %s", self.summary_name, self.summary_error)
        if totals_lost:
            log.warning("%d lost events are missing from the totals too: the kernel's table of "
                        "(process, probe) rows was full", totals_lost)
        if lost and extra.get("totals_exact"):
            log.info("%d events lost; the totals count them (the kernel counted what it could "
                     "not send)", lost)
        log.info("stopped: %d events written to %s, %d lost%s%s", self.writer.events_written,
                 self.trace_name, lost,
                 f", {names_lost} without their file name (names lost)" if names_lost else "",
                 f", {self.writer.events_dropped} not written ({self.writer.error})"
                 if self.writer.error else "")
        return 0
