"""The eBPF engine: load the generic object, configure it from the probes, attach, drain.

Usage (what the daemon does)::

    with Engine(doc["probes"], Scope.for_cgroup(cg), mode="trace") as eng:
        report = eng.attach()          # AttachReport(attached=[probe...], refused=[(probe, why)])
        while running:
            batch = eng.poll(100)      # EventBatch or None
            ...                        # batch.events (numpy), batch.paths {row: path}
        eng.lost()                     # events the kernel dropped (ring buffer full)
        eng.names_lost()               # delivered open-like events without their file name

``Engine.probes[i]`` is the probe dict of every event whose ``probe`` field is
``i`` (the order of the probes given). Events are fixed-size records in a BPF
ring buffer that tracer/ring.py maps into memory itself and decodes with numpy
in one go per poll, so draining costs far less than a per-event callback.
Which programs are loaded is tracer/objload.py's decision; function offsets come
from tracer/symbols.py.

Event fields (``EVENT_DTYPE``): ``ts_ns`` CLOCK_REALTIME ns at entry,
``dur_ns``, ``pid`` (tgid), ``tid``, ``probe``, ``ret`` (raw: syscalls give
-errno), ``fd`` (-1 if none), ``count`` (bytes requested, 0 if none),
``offset`` (-1 if none), ``bytes`` (bytes moved by the probe's ``bytes`` rule,
-1 when it is not a data operation), ``fd2`` (the second descriptor of a copy:
copy_file_range, sendfile, splice and tee name the output there; -1 if none),
``flags`` (the probe's ``flags`` argument, e.g. open's O_* bits, or its ``datatype``
argument: an MPI call's datatype; 0 if none), ``handle`` (the library object a call
works on, by its ``handle``/``handle_ptr``/``handle_out`` role: an MPI_File, an HDF5
hid_t; 0 if none). Tracepoint events are instants
(``dur_ns`` 0); ``block:block_rq_complete`` events span issue to completion
and belong to the issuing process (``flags``: the device). Kernel-layer tracepoints
(probes with ``fields``, tracer/klayers.py) send the inode in ``handle``, the device in
``flags``, and ``ret`` 1 for a kernel thread's work on an inode the job wrote (sent with
the job's pid). pids are host pids.

Probes of kind ``async`` (targets in ``ASYNC_CLASSES``) report io_uring requests and
libaio iocbs: one event per completed request, for the task that submitted it, ``ts``
at submission and ``dur`` to completion, ``bytes`` the completion's result, ``flags``
the opcode (``ASYNC_FIXED_FILE`` set when ``fd`` is an io_uring fixed-file index; such
a file's path comes with the event, read from the kernel's file).

Probes of kind ``usdt`` (tracer/usdt.py: one uprobe per note site, its semaphore
counted by the kernel) report instants whose first four arguments travel in ``ret``,
``count``, ``offset`` and ``handle`` (``flags``: which were read, and how many the note
has); ``batch.strings`` maps a row to {argument: text} for pointer arguments.

``batch.paths`` maps a row of ``batch.events`` to the path an open-like call
was given (probes with a ``path`` role; read in the kernel at return). A row
that should have a path and has none is counted in ``names_lost()``.
``Engine.resolve_fd(pid, fd)`` names files opened before attach from /proc.

Profile mode sends no events: ``read_profile()`` returns cumulative
``ProfileRow(pid, probe, count, bytes, time_ns, min_ns, max_ns, hist)`` rows,
``hist`` counting latencies in log2 microsecond buckets ([0] < 1 us,
[i] in [2^(i-1), 2^i) us). ``process_names()`` gives {pid: comm} for every
pid seen in events so far.

Probes that cannot attach here are refused with a reason, never fatal;
``attach()`` raises EngineError only when none attaches.

Uprobes of one library attach as two uprobe_multi links (entry and return,
kernel >= 6.6; the BPF cookie of each function is its probe index), which
attach and detach in one system call each; when the kernel refuses, or with
``Engine(..., uprobe_multi=False)`` / ``DATACRUMBS_UPROBE_MULTI=0``, each probe
gets its own pair of links. ``AttachReport.uprobe_links`` says which, per library.

In the kernel, a thread's pending system call and its cached scope decision
live in task storage (freed with the thread; ``pending_syscall(tid)`` reads
it), so a traced system call costs no hash map operation.
"""

from __future__ import annotations

import errno
import functools
import logging
import mmap
import os
import posixpath
import resource
import select
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from elftools.common.exceptions import ELFError

from ..errors import DatacrumbsError
from . import dlhold, klayers, libbpf, rawtp, scalars, stage, startclock
from .objload import (ALL_PROGS, ASYNC_CLASSES, BLOCK_COMPLETE, DEFAULT_RINGBUF_BYTES,
                      MULTI_PROGS, TRACEFS, UPROBE_MULTI_ENV, URING_PROGS, Loader,
                      async_interface, paths_ring_bytes, perf_tracepoint)
from ..probes import host_check
from .libbpf import AttachFailed, BpfObject
from .paths import OPEN_OPS
from .ring import Ring
from . import procdir
from .specs import (MAX_SYSCALLS, SPEC as _SPEC, SpecChecker, Refused as _Refused,
                    syscall_number, tracepoint_field as _tracepoint_field)
from .symbols import function_offsets, versioned_name  # noqa: F401 - the engine's API too
from .scope import Scope, find_cgroup

log = logging.getLogger("datacrumbs.engine")

EVENT_DTYPE = np.dtype([("ts_ns", "<u8"), ("dur_ns", "<u8"), ("pid", "<u4"), ("tid", "<u4"),
                        ("probe", "<u4"), ("fd", "<i4"), ("ret", "<i8"), ("count", "<u8"),
                        ("offset", "<i8"), ("bytes", "<i8"), ("fd2", "<i4"), ("flags", "<u4"),
                        ("handle", "<u8")])
assert EVENT_DTYPE.itemsize == 80          # struct dc_event
_PATH_HEAD = struct.Struct("<QIIIBBBBQiI")      # struct dc_path up to its path
_NAME_ARG, _NAME_FD, _NAME_BASE = 0, 1, 2       # enum dc_name_role
_NAME_USDT_STR = 3                              # DC_NAME_USDT_STR: not a file's name
#: enum dc_fkind, as the trace writes it ("" = unknown)
FD_KINDS = ("", "reg", "dir", "pipe", "socket", "tty", "chr", "blk", "link", "anon")
_KIND_SHIFT, _KIND2_SHIFT = 23, 27              # DC_EV_KIND_SHIFT, DC_EV_KIND2_SHIFT
_PROBE_MASK = (1 << _KIND_SHIFT) - 1            # DC_EV_PROBE_MASK
HIST_BUCKETS = 32
PROFILE_SLOTS = 16384                           # DC_PROFILE_SLOTS
MAX_PROBES = 16384                              # DC_MAX_PROBES
ASYNC_FIXED_FILE = 1 << 31      # DC_ASYNC_FIXED_FILE: an async event's fd is a fixed-file index
BYTES_AIO_SUBMIT, BYTES_AIO_REAP = 6, 7
_AIO_SYSCALLS = (("io_submit", BYTES_AIO_SUBMIT), ("io_getevents", BYTES_AIO_REAP),
                 ("io_pgetevents", BYTES_AIO_REAP))
NO_KPROBES = "kernel has no kprobes (CONFIG_KPROBES not set)"
KPROBE_PMU = Path("/sys/bus/event_source/devices/kprobe")
INIT_PID_NS_INO = 0xEFFFFFFC     # PROC_PID_INIT_INO: the host's pid namespace
_CONFIG = struct.Struct("<IIIIIIIIQQQQIIII")    # struct dc_config
_PKEY = struct.Struct("<II")                    # struct dc_pkey
_CGNAME = struct.Struct("<QII256s")             # struct dc_cgname
_SHELL = struct.Struct("<IIII24s64s")           # struct dc_shell
_PVAL_WORDS = 5 + HIST_BUCKETS                  # struct dc_pval in u64 words
_TVAL_WORDS = 3                                 # struct dc_tval in u64 words
_TASK_SIZE = 336                                # struct dc_task: dc_entry (64) + 64 + fd cache
_EV_PATH_SENT = 1 << 31                         # DC_EV_PATH_SENT in an event's probe field
_PID_MEMBER, _PID_AT_EXEC = 1, 2                # enum dc_pid_state: scope_pids values
UID_MAX = (1 << 32) - 2
_PIDFD_THREAD = os.O_EXCL                       # pidfd of one thread, not a process (6.9)


class EngineError(DatacrumbsError):
    """The BPF object cannot be loaded or nothing could be attached."""


@dataclass
class AttachReport:
    attached: list[dict] = field(default_factory=list)
    refused: list[tuple[dict, str]] = field(default_factory=list)
    # library -> how its uprobes were attached: "uprobe_multi" (two links for
    # all its functions) or "per-probe: <why not multi>"
    uprobe_links: dict[str, str] = field(default_factory=dict)
    # (probe not attached, attached probe reaching the same library file and address):
    # one call must be one event, so one function gets one uprobe whatever the list says
    aliased: list[tuple[dict, dict]] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        """What the list asked for and did not get, in words, for the logs."""
        return [alias_warning(p, into) for p, into in self.aliased]


@dataclass
class EventBatch:
    events: np.ndarray                      # EVENT_DTYPE rows (probe without its kind bits)
    paths: dict[int, str] = field(default_factory=dict)   # row index -> path (open-like)
    # row index -> [(fd, absolute name)]: what the kernel says the row's descriptors are
    names: dict[int, list] = field(default_factory=dict)
    kinds: np.ndarray | None = None         # FD_KINDS index of each row's fd (0: unknown)
    kinds2: np.ndarray | None = None        # ... and of its fd2
    # row index -> {argument index: text}: a USDT event's string arguments (tracer/usdt.py)
    strings: dict[int, dict] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.events)


@dataclass
class TotalsRow:
    """Trace mode: operations of (pid, probe) whose event the kernel could not send."""
    pid: int
    probe: int
    count: int
    bytes: int
    time_ns: int


@dataclass
class ProfileRow:
    pid: int
    probe: int
    count: int
    bytes: int
    time_ns: int
    min_ns: int
    max_ns: int
    hist: list[int]          # [0] < 1 us, [i] in [2^(i-1), 2^i) us


def distinct(values: np.ndarray) -> np.ndarray:
    """np.unique without its sort in the common case of a batch of one value."""
    if len(values) and (values == values[0]).all():
        return values[:1]
    return np.unique(values)


def _realtime_offset_ns() -> int:
    """CLOCK_REALTIME - CLOCK_MONOTONIC (bpf_ktime_get_ns), from the tightest of a few reads."""
    best = None
    for _ in range(8):
        m1 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        rt = time.clock_gettime_ns(time.CLOCK_REALTIME)
        m2 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        if best is None or m2 - m1 < best[0]:
            best = (m2 - m1, rt - (m1 + m2) // 2)
    return best[1]


def ensure_tracefs() -> None:
    """Mount tracefs if missing: tracepoint attachment reads event ids from it."""
    if host_check.ensure_tracefs(TRACEFS) is None:
        raise EngineError(f"tracefs is not mounted on {TRACEFS} and could not be mounted: run "
                          f"`mount -t tracefs nodev {TRACEFS}` as root")


def resolve_library(library) -> str | None:
    """Absolute path of a uprobe library given as a path or a soname (ld.so cache)."""
    if not isinstance(library, str) or not library or "\0" in library:
        return None
    if not library.startswith("/") and "/" in library:
        return None
    return host_check.LibraryResolver().resolve(library)


@functools.lru_cache(maxsize=1)
def pid_namespace() -> tuple[int, int] | None:
    """(st_dev, st_ino) of our pid namespace, or None in the host's (initial) one."""
    st = os.stat("/proc/self/ns/pid")
    return None if st.st_ino == INIT_PID_NS_INO else (st.st_dev, st.st_ino)


def _raise_fd_limit(needed: int) -> None:
    """Each uprobe/kprobe link holds file descriptors: raise the soft limit only as far
    as needed (commands started by `datacrumbs trace` inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        pass


# Programs only a fallback attaches: loaded when first needed, in an object of their own
# that shares the first object's maps (Engine._prog_obj), not verified at every start.
_LATE_GROUPS = {"dc_uprobe": ("dc_uprobe", "dc_uretprobe"),
                "dc_uretprobe": ("dc_uprobe", "dc_uretprobe"),
                "dc_tracepoint": ("dc_tracepoint",)}


def alias_warning(probe: dict, into: dict) -> str:
    return (f"probe {probe.get('id')} (uprobe {probe.get('target')}) not attached: probe "
            f"{into.get('id')} (uprobe {into.get('target')}) reaches the same function of "
            f"{into.get('library')}; each call is counted once, as {into.get('target')}")


def _destroy_all(links: list) -> None:
    """Detach links, many at a time: the kernel waits for an RCU grace period as it
    detaches each tracepoint or uprobe (tens of ms), and waits that overlap share one
    (844 tracepoints: 67 s one by one). libbpf calls release the GIL."""
    if len(links) <= 8:
        for link in links:
            link.destroy()
        return
    with ThreadPoolExecutor(max_workers=min(64, len(links)),
                            thread_name_prefix="datacrumbs-detach") as pool:
        list(pool.map(lambda link: link.destroy(), links))


def _runs_as(pid: int, uid: int) -> bool:
    from .families import runs_as
    return runs_as(pid, uid)


def kernel_has_kprobes() -> bool:
    return KPROBE_PMU.exists() or (TRACEFS / "kprobe_events").exists()


def absolute_name(arg: str, base: str | None) -> str:
    """``arg`` as the kernel resolved it: relative names start at ``base`` (the cwd or
    directory fd the kernel named); ``.`` and ``..`` are folded as the kernel would
    on a base without symbolic links (the kernel's names have none)."""
    if arg.startswith("/") or base is None:
        return arg
    return posixpath.normpath(posixpath.join(base, arg))


class Engine:
    """One tracing session: a loaded BPF object configured for ``probes`` and ``scope``.

    ``mode`` is "trace" (events through the ring buffer) or "profile" (per
    process and probe aggregates in a BPF map, read with read_profile()).
    ``bpf_object`` defaults to the site configuration's ``bpf_object``.
    ``uprobe_multi``: attach each library's uprobes with two uprobe_multi links
    (kernel >= 6.6; fast to attach and detach) falling back to one link per
    probe when the kernel refuses; False forces the per-probe path. Default:
    True unless the environment sets DATACRUMBS_UPROBE_MULTI=0.

    ``job_uid``: the (non-root) user the trace is for. Then the kernel also
    leaves out every scope member that user could not ptrace: any uid other than
    job_uid, a gid raised over the real gid (set-gid), any effective or permitted
    capability, or a memory that is not dumpable (a set-uid program the user
    runs, flux-imp in the job's cgroup), and reads nothing of its memory. Such
    a member's children still join the pid tree, and are traced once they run
    as the user. None or 0 (root's trace): no credential check.

    ``paths_ringbuf_bytes``: size of the ring for file names (default: as large
    as the events ring; a name record is often larger than its event).

    ``slots``: rows of (process, probe) the kernel can keep (profile rows, or in trace
    mode the counts of unsent events); default and most DC_PROFILE_SLOTS (16384).
    Operations without a row are counted in lost() (profile) or totals_lost() (trace).
    """

    def __init__(self, probes: list[dict], scope: Scope, *, mode: str = "trace",
                 interval_ms: int = 1000, bpf_object: Path | None = None,
                 ringbuf_bytes: int = DEFAULT_RINGBUF_BYTES, capture_paths: bool = True,
                 uprobe_multi: bool | None = None, job_uid: int | None = None,
                 paths_ringbuf_bytes: int | None = None, slots: int | None = None,
                 loader: Loader | None = None):
        if mode not in ("trace", "profile"):
            raise EngineError(f"capture mode {mode!r} is neither 'trace' nor 'profile'")
        if not isinstance(scope, Scope):
            raise EngineError("the engine needs a Scope (Scope.for_cgroup/for_cgroup_name/for_user/"
                              "for_pids)")
        if not isinstance(probes, list) or not probes:
            raise EngineError("no probes given: the probes file lists none")
        if len(probes) > MAX_PROBES:
            raise EngineError(f"{len(probes)} probes given; at most {MAX_PROBES} are supported")
        page = mmap.PAGESIZE
        if ringbuf_bytes < page or ringbuf_bytes & (ringbuf_bytes - 1) or ringbuf_bytes > 1 << 30:
            raise EngineError(f"ring buffer size {ringbuf_bytes} must be a power of two "
                              f"between {page} and {1 << 30} bytes")
        if isinstance(interval_ms, bool) or not isinstance(interval_ms, int) or interval_ms <= 0:
            raise EngineError(f"profile interval {interval_ms!r} ms must be a positive integer")
        if job_uid is not None and (isinstance(job_uid, bool) or not isinstance(job_uid, int)
                                    or not 0 <= job_uid <= UID_MAX):
            raise EngineError(f"job uid {job_uid!r} is not a valid user id (0..{UID_MAX})")
        # root may ptrace anything: only another user's trace needs the check
        self.job_uid = job_uid
        self.check_creds = bool(job_uid)
        if self.check_creds and scope.kind == "user" and scope.uid != job_uid:
            raise EngineError(f"a trace for uid {job_uid} cannot have the scope of uid {scope.uid}")
        if paths_ringbuf_bytes is None:
            paths_ringbuf_bytes = paths_ring_bytes(ringbuf_bytes)
        if paths_ringbuf_bytes < page or paths_ringbuf_bytes & (paths_ringbuf_bytes - 1) \
                or paths_ringbuf_bytes > 1 << 30:
            raise EngineError(f"path ring buffer size {paths_ringbuf_bytes} must be a power of two "
                              f"between {page} and {1 << 30} bytes")
        if slots is not None and (isinstance(slots, bool) or not isinstance(slots, int)
                                  or not 1 <= slots <= PROFILE_SLOTS):
            raise EngineError(f"slots {slots!r} must be an integer from 1 to {PROFILE_SLOTS}")
        # the arguments first, then the site's object (a wrong argument is said as such
        # even where the object is missing)
        if bpf_object is None:
            from ..config import load_config
            bpf_object = load_config().bpf_object
        self.bpf_object = Path(bpf_object)
        if not self.bpf_object.is_file():
            raise EngineError(f"BPF object {self.bpf_object} not built: run `datacrumbs build-bpf` "
                              "(or the installer)")
        self.probes = list(probes)
        self.scope = scope
        self.mode = mode
        self.interval_ms = interval_ms
        self.ringbuf_bytes = ringbuf_bytes
        self.capture_paths = bool(capture_paths) and mode == "trace"
        if uprobe_multi is None:
            uprobe_multi = os.environ.get(UPROBE_MULTI_ENV, "1") != "0"
        self.uprobe_multi = bool(uprobe_multi)
        self._paths_bytes = paths_ringbuf_bytes
        # what to load, and what loading taught (raw tracepoints, uprobe_multi, ...):
        # begun early by tracer/preload.py for exactly these settings, or made here
        own = Loader(self.probes, bpf_object=self.bpf_object, mode=mode, scope_kind=scope.kind,
                     ringbuf_bytes=ringbuf_bytes, paths_bytes=paths_ringbuf_bytes, slots=slots,
                     multi=self.uprobe_multi)
        if loader is not None and loader.settings != own.settings:
            loader.close()
            loader = None
        self._loader = loader if loader is not None else own
        self._specs = SpecChecker()     # each probe checked and packed (tracer/specs.py)
        self._obj: BpfObject | None = None
        self._late: dict[tuple, BpfObject] = {}     # _LATE_GROUPS loaded since
        self._symbols: dict = {}    # library path -> Future of its function_offsets()
        self._links: list[libbpf.Link] = []
        self._events: Ring | None = None
        self._stager: stage.Stager | None = None
        self._paths: Ring | None = None
        self._epoll = None
        self._offset_ns = 0
        self._path_probes = np.empty(0, np.uint32)
        self._pending_paths: dict[tuple[int, int], list] = {}
        self._names: dict[int, str] = {}
        self._seen: set[int] = set()
        self._closed = False
        self._final_lost = (0, 0)
        self._final_totals_lost = 0
        self._names_lost_here = 0       # name records that never met their event (user space)
        # library families (families.py): family -> indexes of its signed uprobes
        self._families: dict[str, list[int]] = {}
        self._scanner = None
        self._libraries: list = []          # families.LibraryRecord, in the order found
        self._library_files: set = set()    # (st_dev, st_ino) of every library judged
        self._signed_paths: set[str] = set()
        self._dead_pids: set[int] = set()
        self._scans = 0
        self._sys_attached = False      # dc_sys_enter/exit attached (syscall or libaio probes)
        self._hold = None               # dlhold.DlopenHold: families' libraries at dlopen()
        self._raw_batch = None          # rawtp.Batch: raw tracepoints attached in a thread

    # -- setup --

    def attach(self) -> AttachReport:
        """Load, configure and attach; refuse probes that cannot attach, with their reason."""
        if self._obj is not None:
            raise EngineError("attach() was already called on this engine")
        ensure_tracefs()
        try:
            return self._attach()
        except BaseException:
            self.close()
            raise

    def start_load(self) -> None:
        """Begin loading the BPF object in a thread (the kernel verifies the programs
        without holding the GIL) while the caller goes on, e.g. importing and verifying
        the probes file; attach() takes the loaded object. Nothing is attached here."""
        if self._obj is not None or self._closed:
            return
        ensure_tracefs()        # which programs are needed depends on its events
        self._loader.start()

    @property
    def load_stats(self) -> tuple[float, float] | None:
        """(wall, CPU) seconds of a load begun by start_load(), once it is done."""
        return self._loader.stats

    def _attach(self) -> AttachReport:
        _raise_fd_limit(256 + 4 * len(self.probes))
        resolved = self._read_symbols_meanwhile()
        # the tracepoints' specs first: their links are made in a thread (text patching
        # in the kernel, 844 tracepoints: 0.15 s) while the other specs are checked
        specs: list = [self._spec_or_refusal(i, probe)
                       if isinstance(probe, dict) and probe.get("kind") == "tracepoint" else None
                       for i, probe in enumerate(self.probes)]
        obj = self._obj = self._loader.result()
        startclock.mark("bpf load")
        self._check_layout()
        mode = 1 if self.mode == "profile" else 0
        kind = {"pids": 0, "job_shell": 0, "user": 1, "cgroup": 2,
                "cgroup_name": 3}[self.scope.kind]
        ns = pid_namespace()
        if ns is not None and self.scope.kind == "pids":
            raise EngineError("a process-id scope needs datacrumbs in the host's pid namespace "
                              "(the kernel reports host pids); use a cgroup or user scope here")
        # paths: wake the reader once 1/32 of the ring waits, so a burst of opens is
        # drained long before the ring is full (each name costs a record, unlike events)
        libbpf.map_update(obj.map_fd("settings"), struct.pack("<I", 0), _CONFIG.pack(
            kind, mode, self.scope.uid or 0, os.getpid(), int(self.scope.follow),
            int(self.capture_paths), 1, 0, *(ns or (0, 0)), self._wakeup_events(),
            self._paths_bytes // 32, self.job_uid or 0, int(self.check_creds), 0, 0))
        if self.scope.kind == "cgroup":
            fd = os.open(self.scope.cgroup, os.O_RDONLY | os.O_DIRECTORY)
            try:
                libbpf.map_update(obj.map_fd("scope_cgroup"), struct.pack("<I", 0),
                                  struct.pack("<I", fd))
            finally:
                os.close(fd)
        if self.scope.kind == "cgroup_name":
            name = self.scope.cgroup_name.encode("utf-8", "surrogateescape")
            libbpf.map_update(obj.map_fd("scope_cgname"), struct.pack("<I", 0),
                              _CGNAME.pack(0, 0, len(name), name))
        if self.scope.kind == "job_shell":
            jobid, shell = self.scope.jobid.encode(), self.scope.shell.encode()
            libbpf.map_update(obj.map_fd("scope_shell"), struct.pack("<I", 0),
                              _SHELL.pack(1, len(jobid), len(shell), 0, jobid, shell))
        # Process tracking first, then seed: a fork racing the seed is still caught.
        # Scope decisions are cached per task; a cgroup move makes them stale; a
        # job cgroup named in advance is watched for before it is looked for.
        tracking = ("dc_fork", "dc_exec", "dc_exit")
        if self.scope.kind in ("cgroup", "cgroup_name"):
            tracking += ("dc_cgroup_moved",)
        if self.scope.kind == "cgroup_name":
            tracking += ("dc_cgroup_made",)
        for prog in tracking:
            try:
                self._links.append(obj.attach(prog))
            except AttachFailed as exc:
                raise EngineError(f"cannot follow processes ({prog}: {exc}); the kernel needs "
                                  "sched and cgroup tracepoints and BTF") from None
        self._seed_pids()
        if self.scope.kind == "cgroup_name":
            self._find_job_cgroup()

        report = AttachReport()
        syscalls: list[tuple[int, int, bytes]] = []
        path_probes = []
        block_issue_needed = False
        async_found: list[tuple[int, int]] = []     # (probe index, dc_async_class)
        uprobes: dict[str, list[int]] = {}
        usdt_found: list[int] = []      # usdt probes: tracer/usdt.py attaches their sites
        has_kprobes = kernel_has_kprobes()
        specs_fd = obj.map_fd("probe_specs")
        uprobe_specs: list[tuple[bytes, bytes]] = []
        batched = self._start_raw_tracepoints(specs, specs_fd)
        specs = [self._spec_or_refusal(i, probe) if spec is None else spec
                 for i, (probe, spec) in enumerate(zip(self.probes, specs))]
        for i, probe in enumerate(self.probes):
            try:
                if isinstance(specs[i], _Refused):
                    raise specs[i]
                if i in batched:        # attached in a thread meanwhile
                    continue
                kind, spec = specs[i]
                if kind == "syscall":
                    nr = spec[1]
                    if any(nr == s[1] for s in syscalls):
                        raise _Refused(f"syscall {probe['target']} is already traced by another "
                                       "probe in this file")
                    syscalls.append((i, nr, spec[0]))
                    if spec[2]:
                        path_probes.append(i)
                    continue
                if kind == "async":
                    cls = ASYNC_CLASSES[probe["target"]]
                    if any(cls == c for _j, c in async_found):
                        raise _Refused(f"async probe {probe['target']} is already in this file")
                    async_found.append((i, cls))
                    continue
                if kind == "uprobe":    # attached after this loop: written in one batch
                    uprobe_specs.append((struct.pack("<I", i), spec[0]))
                else:
                    libbpf.map_update(specs_fd, struct.pack("<I", i), spec[0])
                if kind == "usdt":
                    usdt_found.append(i)
                    continue
                if kind == "kprobe" and not has_kprobes:
                    raise _Refused(NO_KPROBES)
                if kind == "uprobe" and isinstance(probe.get("family"), str):
                    self._families.setdefault(probe["family"], []).append(i)
                if kind == "uprobe":
                    # once per library named, not per probe (10,000 probes: 0.4 s)
                    given = probe.get("library")
                    if isinstance(given, str) and given in resolved:
                        library = resolved[given]
                    else:
                        library = resolve_library(given)
                        if isinstance(given, str):
                            resolved[given] = library
                    if library is None:
                        family = probe.get("family")
                        raise _Refused(f"library {probe.get('library')} not found on this host"
                                       + (f" (the probe still attaches to the libraries of "
                                          f"its family {family} the job maps)"
                                          if isinstance(family, str) else ""))
                    uprobes.setdefault(library, []).append(i)
                    if spec[2]:
                        path_probes.append(i)
                    continue
                self._attach_one(i, probe, kind)
                if kind == "tracepoint" and probe["target"] == "block:block_rq_complete":
                    block_issue_needed = True
                if spec[2]:
                    path_probes.append(i)
                report.attached.append(probe)
            except _Refused as exc:
                report.refused.append((probe, str(exc)))
        libbpf.map_update_many(specs_fd, uprobe_specs)
        code: dict[tuple, int] = {}     # (dev, ino, offset or name) -> first probe index
        for library, indexes in uprobes.items():
            self._attach_library(library, indexes, report, code)
        self._note_signed_libraries(uprobes, report)
        if usdt_found:
            from . import usdt
            usdt.attach(self, usdt_found, report, resolve_library)
        if syscalls:
            self._attach_syscalls(syscalls, report)
        if async_found:
            self._attach_async(async_found, report)
        self._take_raw_tracepoints(report)
        if block_issue_needed:
            try:
                self._links.append(obj.attach("dc_block_issue"))
            except AttachFailed as exc:
                log.warning("block request start times unavailable: %s", exc)
        if self._families and self._scanner is None:    # signed files all missing here
            from .families import MapScanner
            self._scanner = MapScanner(sorted(self._families))
        if not report.attached and not self._families:
            reasons = "; ".join(f"{p.get('id', p.get('target'))}: {r}" for p, r in report.refused)
            raise EngineError(f"none of the {len(self.probes)} probes could be attached ({reasons})")
        # keep the document order in the report
        order = {id(p): n for n, p in enumerate(self.probes)}
        report.attached.sort(key=lambda p: order[id(p)])
        report.refused.sort(key=lambda pr: order[id(pr[0])])
        self._path_probes = np.array(sorted(path_probes), dtype=np.uint32)
        self._offset_ns = _realtime_offset_ns()
        self._events = Ring(obj.map_fd("events"), self.ringbuf_bytes, EVENT_DTYPE,
                             stage.STAGE_N)
        self._stager = (stage.Stager(obj.program_fd(stage.PROGRAM), obj.map_fd("stage"))
                        if self.mode == "trace" else None)
        self._paths = Ring(obj.map_fd("paths"), self._paths_bytes)
        self._epoll = select.epoll()
        self._epoll.register(obj.map_fd("events"), select.EPOLLIN)
        self._epoll.register(obj.map_fd("paths"), select.EPOLLIN)
        if self._families and self._loader.holds_refused is None:
            self._hold = dlhold.start(self)
            if self._hold is not None:
                self._epoll.register(self._hold.ring_fd, select.EPOLLIN)
        elif self._families:
            log.warning("%s: calls made right after a dlopen() of a library of %s may be "
                        "missed", self._loader.holds_refused, ", ".join(sorted(self._families)))
        startclock.mark("attach")
        return report

    def _start_raw_tracepoints(self, specs: list, specs_fd: int) -> set[int]:
        """Write the specs of the tracepoints that attach as raw tracepoints and begin
        attaching them in a thread (tracer/rawtp.py); their probe indexes."""
        if not self._loader.raw_tp:
            return set()
        items = [(i, probe["target"].split(":")[1]) for i, probe in enumerate(self.probes)
                 if isinstance(specs[i], tuple) and specs[i][0] == "tracepoint"
                 and probe["target"] != BLOCK_COMPLETE and not klayers.wants_ktp(probe)
                 and not perf_tracepoint(probe)]
        if not items:
            return set()
        libbpf.map_update_many(specs_fd, [(struct.pack("<I", i), specs[i][1][0])
                                          for i, _name in items])
        self._raw_batch = rawtp.Batch(self._obj.program_fd("dc_raw_tracepoint"), items)
        return {i for i, _name in items}

    def _take_raw_tracepoints(self, report: AttachReport) -> None:
        """The links _start_raw_tracepoints began; a refused one goes the way _attach_one
        takes (its perf event; after a refusal other than ENOENT, perf events only)."""
        batch, self._raw_batch = self._raw_batch, None
        if batch is None:
            return
        results = batch.results()
        for i, got in results:
            if isinstance(got, libbpf.FdLink):
                self._links.append(got)
                report.attached.append(self.probes[i])
        for i, got in results:
            if isinstance(got, libbpf.FdLink):
                continue
            probe = self.probes[i]
            if got.errno != errno.ENOENT and self._loader.raw_tp:
                log.info("raw tracepoint %s refused (%s); perf events from here on",
                         probe["target"], got)
                self._loader.raw_tp = False
            try:
                self._attach_one(i, probe, "tracepoint")
                report.attached.append(probe)
            except _Refused as exc:
                report.refused.append((probe, str(exc)))

    def _read_symbols_meanwhile(self) -> dict[str, str | None]:
        """Resolve the uprobe libraries (returned: {library as given: path here}) and
        start reading their symbols in a thread: the kernel verifies the programs
        meanwhile, without the GIL (10,000 uprobes in 4 libraries: 0.3 s of a start).
        _attach_library takes the result (self._symbols)."""
        resolved: dict[str, str | None] = {}
        wanted: dict[str, set[str]] = {}    # library path -> its probes' function names
        for probe in self.probes:
            if isinstance(probe, dict) and probe.get("kind") == "uprobe":
                given = probe.get("library")
                if not isinstance(given, str):
                    continue        # refused with its reason when attached
                if given not in resolved:
                    resolved[given] = resolve_library(given)
                path, target = resolved[given], probe.get("target")
                if path is not None and isinstance(target, str):
                    wanted.setdefault(path, set()).add(target.split("@", 1)[0])
        paths = sorted(wanted)
        if paths:
            pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="datacrumbs-symbols")
            # only the probes' names: only those are looked up (_attach_library)
            self._symbols = {path: pool.submit(function_offsets, path, wanted[path])
                             for path in paths}
            pool.shutdown(wait=False)       # the thread ends once the last file is read
        return resolved

    def _prog_obj(self, prog: str) -> BpfObject:
        """The object ``prog`` is loaded in: the first one, or else an object of its own
        (its _LATE_GROUPS group) sharing the first one's maps, loaded now, once. Raises
        AttachFailed when the kernel refuses it."""
        if prog in self._loader.loaded:
            return self._obj
        group = _LATE_GROUPS.get(prog, (prog,))
        obj = self._late.get(group)
        if obj is None:
            obj = BpfObject(self.bpf_object)
            try:
                for other in ALL_PROGS:
                    if other not in group:
                        obj.set_autoload(other, False)
                obj.reuse_maps(self._obj)
                obj.load()
            except libbpf.LibbpfError as exc:
                obj.close()
                raise AttachFailed(f"cannot load {', '.join(group)}: {exc}") from None
            log.info("loaded %s (a fallback) on first use", ", ".join(group))
            self._late[group] = obj
        return obj

    def _attach_async(self, found: list[tuple[int, int]], report: AttachReport) -> None:
        """Fill async_probes (class -> probe index + 1) and attach the programs of each
        interface asked for; probes of an interface that cannot attach are refused."""
        fd = self._obj.map_fd("async_probes")
        by_iface: dict[str, list[tuple[int, int]]] = {}
        for i, cls in found:
            by_iface.setdefault(async_interface(self.probes[i]["target"]), []).append((i, cls))
        for iface, members in by_iface.items():
            links = []
            try:
                for i, cls in members:
                    libbpf.map_update(fd, struct.pack("<I", cls), struct.pack("<I", i + 1))
                if iface == "io_uring":
                    for prog in URING_PROGS:
                        links.append(self._obj.attach(prog))
                else:
                    links = self._attach_aio_syscalls()
            except (AttachFailed, libbpf.LibbpfError) as exc:
                for link in links:
                    link.destroy()
                for i, cls in members:
                    libbpf.map_update(fd, struct.pack("<I", cls), struct.pack("<I", 0))
                    report.refused.append((self.probes[i], f"cannot attach {iface} "
                                                           f"tracepoints: {exc}"))
                continue
            self._links.extend(links)
            report.attached.extend(self.probes[i] for i, _cls in members)

    def _attach_aio_syscalls(self) -> list:
        """libaio: io_submit and io_(p)getevents in sys_specs (their exit reads the iocbs
        or io_events), and the system call programs if no syscall probe attached them.
        Returns the links made here."""
        fd = self._obj.map_fd("sys_specs")
        numbers = []
        for name, kind in _AIO_SYSCALLS:
            nr = syscall_number(name)
            if nr is None or not 0 <= nr < MAX_SYSCALLS:
                raise AttachFailed(f"no system call {name} on this host")
            raw = libbpf.map_lookup(fd, struct.pack("<I", nr), _SPEC.size)
            if raw is not None and raw[4]:          # dc_spec.active
                raise AttachFailed(f"system call {name} is already traced by a syscall probe")
            numbers.append((nr, kind))
        for nr, kind in numbers:
            libbpf.map_update(fd, struct.pack("<I", nr), _SPEC.pack(
                0xFFFFFFFF, 1, kind, -1, 0, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, -1, -1, 0, 0,
                -1, 0, 0, 0, *scalars.NONE))
        if self._sys_attached:
            return []
        links = []
        try:
            for prog in ("dc_sys_enter", "dc_sys_exit"):
                links.append(self._obj.attach(prog))
        except AttachFailed:
            for link in links:
                link.destroy()
            for nr, _kind in numbers:       # inactive again
                libbpf.map_update(fd, struct.pack("<I", nr), bytes(_SPEC.size))
            raise
        self._sys_attached = True
        return links

    def _wakeup_events(self) -> int:
        """Events per CPU between wakeups of the reader: all CPUs together fill at
        most 1/8 of the ring before it is woken."""
        records = self.ringbuf_bytes // (8 * (EVENT_DTYPE.itemsize + 8))
        return max(1, records // libbpf.num_possible_cpus())

    def _check_layout(self) -> None:
        """The object must have been built from the same header as this module."""
        expect = {"probe_specs": _SPEC.size, "settings": _CONFIG.size,
                  "scope_cgname": _CGNAME.size, "scope_shell": _SHELL.size,
                  "profile": _PVAL_WORDS * 8, "tasks": _TASK_SIZE, "unsent": _TVAL_WORDS * 8,
                  "ktp_fields": klayers.KFIELDS_SIZE, "ktp_raw": klayers.KRAW_SIZE}
        for name, size in expect.items():
            got = self._obj.map_value_size(name)
            if got != size:
                raise EngineError(f"BPF object {self.bpf_object} does not match this datacrumbs "
                                  f"(map {name}: {got} != {size} bytes); run `datacrumbs build-bpf`")

    def job_cgroup(self) -> tuple[int, int] | None:
        """(id, level) of the named job cgroup once it exists, else None."""
        if self._obj is None or self.scope.kind != "cgroup_name":
            return None
        raw = libbpf.map_lookup(self._obj.map_fd("scope_cgname"), struct.pack("<I", 0),
                                _CGNAME.size)
        if raw is None:
            return None
        cg_id, level, _, _ = _CGNAME.unpack(raw)
        return (cg_id, level) if cg_id else None

    def _find_job_cgroup(self) -> None:
        """The job may have started first: record its existing cgroup, unless the
        kernel already saw it being made (dc_cgroup_made is attached by now)."""
        found = find_cgroup(self.scope.cgroup_name)
        if found is None or self.job_cgroup() is not None:
            if found is None:
                log.info("cgroup %s does not exist yet; nothing is traced until it is made",
                         self.scope.cgroup_name)
            return
        path, level = found
        try:
            cg_id = os.stat(path).st_ino
        except OSError as exc:
            log.info("cgroup %s went away while looking for it (%s)", path, exc)
            return
        name = self.scope.cgroup_name.encode("utf-8", "surrogateescape")
        libbpf.map_update(self._obj.map_fd("scope_cgname"), struct.pack("<I", 0),
                          _CGNAME.pack(cg_id, level, len(name), name))
        log.info("cgroup %s already exists at %s (id %d)", self.scope.cgroup_name, path, cg_id)

    def _seed_pids(self) -> None:
        if self.scope.kind == "job_shell" and pid_namespace() is not None:
            # /proc here names other pids than the kernel's: only the exec is watched
            log.info("in a pid namespace: a job shell already running is not looked for")
            return
        fd = self._obj.map_fd("scope_pids")
        # DC_PID_MEMBER, or DC_PID_AT_EXEC: a member from its next exec on
        state = bytes([_PID_AT_EXEC if self.scope.at_exec else _PID_MEMBER])
        for pid in self.scope.seed_pids():
            try:
                libbpf.map_update(fd, struct.pack("<I", pid), state)
            except libbpf.LibbpfError as exc:
                raise EngineError(f"cannot add process {pid} to the trace scope: {exc}") from None

    def _spec_or_refusal(self, index: int, probe):
        return self._specs.spec_or_refusal(index, probe)

    def _attach_library(self, library: str, indexes: list[int], report: AttachReport,
                        code: dict) -> None:
        """All uprobes of one library: two uprobe_multi links when the kernel takes
        them, else (or when forced) one pair of links per probe. Versioned or
        ambiguous names go one by one too: libbpf resolves those.

        A probe reaching a function (file and offset, in ``code``) that an earlier
        probe already reaches is not attached (fopen and fopen64 are one function in
        glibc): two uprobes there would make one call two events."""
        why = self._loader.multi_refused
        offsets: dict[str, int] = {}
        try:
            read = self._symbols.pop(library, None)
            offsets = read.result() if read is not None else function_offsets(library)
        except (OSError, ELFError, ValueError) as exc:
            why = why or f"cannot read the symbols of {library}: {exc}"
        try:
            st = os.stat(library)
        except OSError:
            pass        # gone: attaching says so, probe by probe
        else:
            indexes = self._one_probe_per_function((st.st_dev, st.st_ino), indexes, offsets,
                                                   code, report)
        found: list[tuple[int, int]] = []
        single: list[int] = []
        for i in indexes:
            target = self.probes[i]["target"]
            if why is not None or "@" in target or offsets.get(target, 0) < 0:
                single.append(i)
            elif target in offsets:
                found.append((i, offsets[target]))
            else:
                report.refused.append((self.probes[i], f"symbol {target} not found in {library}"))
        if found:
            try:
                self._multi_links(library, found)
            except AttachFailed as exc:
                why = f"the kernel refused a uprobe_multi link ({exc})"
                single = sorted(single + [i for i, _off in found])
            else:
                report.attached.extend(self.probes[i] for i, _off in found)
                report.uprobe_links[library] = "uprobe_multi"
                log.info("%s: %d uprobes attached with 2 uprobe_multi links", library,
                         len(found))
        if not single:
            return
        if why is None:
            why = "versioned or ambiguous symbol names"
            report.uprobe_links[library] = ("uprobe_multi, and per-probe for "
                                            f"{len(single)}: {why}") if found else \
                f"per-probe: {why}"
        else:
            report.uprobe_links[library] = f"per-probe: {why}"
        log.info("%s: %d uprobes attached one by one (%s)", library, len(single), why)
        for i in single:
            try:
                self._attach_one(i, self.probes[i], "uprobe")
                report.attached.append(self.probes[i])
            except _Refused as exc:
                report.refused.append((self.probes[i], str(exc)))

    def _one_probe_per_function(self, file_id: tuple[int, int], indexes: list[int],
                                offsets: dict[str, int], code: dict,
                                report: AttachReport) -> list[int]:
        """``indexes`` without the probes whose function an earlier probe reaches."""
        kept = []
        for i in indexes:
            target = versioned_name(self.probes[i]["target"])
            offset = offsets.get(target, -1)
            # unknown or ambiguous here (libbpf resolves it): one name is still one function
            first = code.setdefault((*file_id, offset if offset >= 0 else target), i)
            if first == i:
                kept.append(i)
                continue
            report.aliased.append((self.probes[i], self.probes[first]))
            log.warning("%s", alias_warning(self.probes[i], self.probes[first]))
        return kept

    # -- library families: the copies the job really maps (see families.py) --

    def _note_signed_libraries(self, uprobes: dict[str, list[int]], report: AttachReport) -> None:
        """Record the signed files of the families: they are attached already, so a
        process mapping them is not a new member."""
        if not self._families:
            return
        from .families import LibraryRecord, MapScanner, build_id

        self._scanner = MapScanner(sorted(self._families))
        attached = {id(p) for p in report.attached}
        for library, indexes in uprobes.items():
            family = next((self.probes[i].get("family") for i in indexes
                           if self.probes[i].get("family")), None)
            if family is None:
                continue
            self._signed_paths.add(os.path.realpath(library))
            try:
                st = os.stat(library)
            except OSError:
                continue
            self._library_files.add((st.st_dev, st.st_ino))
            self._scanner.seen.add((os.major(st.st_dev), os.minor(st.st_dev), st.st_ino))
            n = sum(id(self.probes[i]) in attached for i in indexes)
            try:
                fd = os.open(library, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            except OSError:
                bid = None
            else:
                try:
                    bid = build_id(fd)
                finally:
                    os.close(fd)
            self._libraries.append(LibraryRecord(
                library, family, "attached" if n else "not attached", dev=st.st_dev,
                ino=st.st_ino, functions=n, signed=True, links=report.uprobe_links.get(library),
                build_id=bid,
                reason=None if n else "none of its probes could be attached"))

    @property
    def waits_for_libraries(self) -> bool:
        """Probes of a library family may still attach to libraries the job maps, even
        when none attached at start (their signed file is not on this host)."""
        return self._scanner is not None

    @property
    def libraries(self) -> list[dict]:
        """Every library file of a probed family judged so far: the signed ones, those
        found mapped by the job (attached, or not and why), those skipped."""
        return [r.as_dict() for r in self._libraries]

    def _scope_pids(self) -> set[int]:
        """The job's processes as far as user space can list them: the cgroup's, the
        kernel's pid set (followed forks), every process that exec'd in scope or sent
        an event, and at first a user scope's processes."""
        from .families import cgroup_pids, uid_pids

        # events and the kernel's maps hold host pids: inside a pid namespace only a
        # cgroup's own list names processes as this /proc does
        host = pid_namespace() is None
        pids = set(self._seen) if host else set()
        obj = self._obj
        # a cgroup lists its processes; a user scope's new processes are in comms (those
        # that exec'd in scope) and the pid set (forks of members)
        maps = ("scope_pids", "comms") if self.scope.kind == "user" else ("scope_pids",)
        for name in maps if host else ():
            fd = obj.map_fd(name)
            for key in libbpf.map_keys(fd, 4, limit=obj.map_max_entries(name)):
                pid = struct.unpack("<I", key)[0]
                if name == "scope_pids":
                    state = libbpf.map_lookup(fd, key, 1)
                    if state != bytes([_PID_MEMBER]):
                        continue
                pids.add(pid)
        if self.scope.kind == "cgroup":
            pids |= cgroup_pids(self.scope.cgroup)
        elif self.scope.kind == "cgroup_name" and self.job_cgroup() is not None:
            # the walk to find it is long: once, then again only every 16th scan
            if getattr(self, "_job_cgroup_path", None) is None and self._scans % 16 == 1:
                found = find_cgroup(self.scope.cgroup_name)
                self._job_cgroup_path = found[0] if found else None
            if self._job_cgroup_path is not None:
                pids |= cgroup_pids(self._job_cgroup_path)
        elif self.scope.kind == "user" and host and not getattr(self, "_user_listed", False):
            self._user_listed = True
            pids |= uid_pids(self.scope.uid)
        pids.discard(os.getpid())
        if len(self._dead_pids) > 65536:      # bounded: the maps forget exited pids too
            self._dead_pids.clear()
        return pids - self._dead_pids

    def discover_libraries(self) -> list[dict]:
        """Look for family members the job's processes map and attach the family's
        probes to each new one (new probe indexes: ``probes`` grows, and events of a
        copy name it). Returns the records of the files judged now. A process that maps
        a new member with dlopen() is found at once, held until attached (dlhold.py);
        this periodic scan is the safety net."""
        if self._scanner is None or self._obj is None:
            return []
        new = []
        self._scans += 1
        force = self._scans % 16 == 1           # now and then, read every process's maps
        for pid in sorted(self._scope_pids()):
            new += self._discover_pid(pid, force=force)
        if self._hold is not None:
            self._hold.learn()
        return new

    def _discover_pid(self, pid: int, *, force: bool) -> list[dict]:
        """discover_libraries() for one process (also for one held at a dlopen())."""
        from .families import MAX_LIBRARIES

        if self._scanner is None or self._obj is None:
            return []
        if not os.path.isdir(f"/proc/{pid}"):
            self._dead_pids.add(pid)
            return []
        if self.check_creds and not _runs_as(pid, self.job_uid):
            return []
        new = []
        for mapping in self._scanner.scan(pid, force=force):
            if len(self._libraries) >= MAX_LIBRARIES + len(self._signed_paths):
                from .families import LibraryRecord
                record = LibraryRecord(mapping.path, mapping.family, "not attached",
                                       pid=pid, reason=f"more than {MAX_LIBRARIES} "
                                       "libraries of the probed families were mapped")
            else:
                record = self._attach_mapped(mapping)
            if record is not None:
                self._libraries.append(record)
                new.append(record.as_dict())
                log.log(logging.WARNING if record.status == "not attached" else logging.INFO,
                        "library %s (family %s, pid %d): %s%s", record.path, record.family,
                        pid, record.status, f" ({record.reason})" if record.reason else
                        f", {record.functions} functions")
        return new

    def _attach_mapped(self, m):
        """Judge and attach one newly mapped family member; its LibraryRecord, or None
        when it is a file already judged (another path to it)."""
        from .families import LibraryRecord, build_id, exported_offsets, open_mapped

        record = LibraryRecord(m.path, m.family, "not attached", pid=m.pid)
        try:
            fd = open_mapped(m)
        except OSError as exc:
            if not os.path.isdir(f"/proc/{m.pid}"):
                self._scanner.seen.discard(m.key)      # gone: look again in another process
                return None
            record.reason = f"cannot open the mapped file ({exc.strerror or exc})"
            return record
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) in self._library_files or \
                    os.path.realpath(m.path) in self._signed_paths:
                return None
            self._library_files.add((st.st_dev, st.st_ino))
            record.dev, record.ino = st.st_dev, st.st_ino
            names = {n for i in self._families[m.family]
                     for n in (self.probes[i]["target"], *self.probes[i].get("aliases", ()))}
            offsets, why = exported_offsets(fd, sorted(names))
            if offsets is None:
                record.reason = why
                return record
            record.build_id = build_id(fd)
            return self._attach_family(fd, offsets, record)
        finally:
            os.close(fd)

    def _attach_family(self, fd: int, offsets: dict[str, int], record):
        """The family's signed probes on an open library file (``offsets``: the file
        offsets of the functions it exports), under new probe indexes."""
        wanted = []
        for i in self._families[record.family]:
            probe = self.probes[i]
            name = next((n for n in (probe["target"], *probe.get("aliases", ()))
                         if n in offsets), None)
            if name is not None:
                wanted.append((i, name))
        if not wanted:
            record.status = "skipped"
            record.reason = "exports none of the probed functions (another library)"
            return record
        if len(self.probes) + len(wanted) > MAX_PROBES:
            record.reason = f"more than {MAX_PROBES} probes in all"
            return record
        fd_path = f"/proc/self/fd/{fd}"
        added: list[tuple[int, int, str]] = []     # (new index, file offset, name)
        seen_offsets: set[int] = set()
        for i, name in wanted:
            offset = offsets[name]
            if offset in seen_offsets:
                continue        # two probed names of one function: one uprobe
            seen_offsets.add(offset)
            j = len(self.probes)
            probe = {k: v for k, v in self.probes[i].items() if k != "aliases"}
            probe["library"] = record.path
            probe["discovered"] = True
            kind, spec = self._specs.spec(j, probe)
            libbpf.map_update(self._obj.map_fd("probe_specs"), struct.pack("<I", j), spec[0])
            added.append((j, offset, name))
            self.probes.append(probe)
        how = None
        if self._loader.multi_refused is None:
            try:
                self._multi_links(fd_path, [(j, off) for j, off, _n in added])
                how = "uprobe_multi"
            except AttachFailed as exc:
                how = None
                log.info("%s: uprobe_multi refused (%s); one by one", record.path, exc)
        attached = len(added) if how else 0
        if how is None:
            how = "per-probe"
            for j, off, name in added:
                links = []
                try:
                    for prog, ret in (("dc_uprobe", False), ("dc_uretprobe", True)):
                        links.append(self._prog_obj(prog).attach_uprobe(prog, fd_path, off, j,
                                                                        retprobe=ret))
                except AttachFailed as exc:
                    for link in links:
                        link.destroy()
                    record.reason = f"uprobe on {name} refused: {exc}"
                    continue
                self._links.extend(links)
                attached += 1
        record.functions = attached
        record.links = how
        if attached:
            record.status = "attached"
            if attached < len(added):
                record.reason = f"{len(added) - attached} of {len(added)} probes refused " \
                    f"({record.reason})"
        return record

    def _multi_links(self, library: str, found: list[tuple[int, int]]) -> None:
        offsets = [off for _i, off in found]
        cookies = [i for i, _off in found]
        links = []
        try:
            for prog, ret in zip(MULTI_PROGS, (False, True)):
                links.append(libbpf.uprobe_multi_link(self._obj.program_fd(prog), library,
                                                      offsets, cookies, retprobe=ret))
        except AttachFailed:
            for link in links:
                link.destroy()
            raise
        self._links.extend(links)

    def _attach_one(self, i: int, probe: dict, kind: str) -> None:
        obj, target = self._obj, probe["target"]
        try:
            if kind == "uprobe":
                given = probe.get("library")
                library = resolve_library(given)
                if library is None:
                    raise _Refused(f"library {given} not found on this host")
                links = []
                try:
                    for prog, ret in (("dc_uprobe", False), ("dc_uretprobe", True)):
                        links.append(self._prog_obj(prog).attach_uprobe(
                            prog, library, 0, i, retprobe=ret, func_name=target))
                except AttachFailed as exc:
                    for link in links:
                        link.destroy()
                    if "No such file" in str(exc):
                        raise _Refused(f"symbol {target} not found in {library}") from None
                    raise
                self._links.extend(links)
            elif kind == "kprobe":
                links = [obj.attach_kprobe("dc_kprobe", target, i)]
                try:
                    links.append(obj.attach_kprobe("dc_kretprobe", target, i, retprobe=True))
                except AttachFailed:
                    links[0].destroy()
                    raise
                self._links.extend(links)
            elif target == "block:block_rq_complete":   # a BTF tracepoint: no cookie
                libbpf.map_update(obj.map_fd("block_probe"), struct.pack("<I", 0),
                                  struct.pack("<I", i + 1))
                self._links.append(obj.attach("dc_block_complete"))
            elif klayers.wants_ktp(probe):
                try:
                    self._links.append(klayers.attach(obj, libbpf, probe, i, _tracepoint_field,
                                                      raw=self._loader.raw_tp))
                except ValueError as exc:
                    raise _Refused(str(exc)) from None
            else:
                category, name = target.split(":")
                if self._loader.raw_tp and target != BLOCK_COMPLETE and not perf_tracepoint(probe):
                    try:
                        self._links.append(libbpf.raw_tracepoint_link(
                            obj.program_fd("dc_raw_tracepoint"), name, i))
                        return
                    except AttachFailed as exc:
                        # ENOENT: not a raw tracepoint (syscalls:* are ftrace events over
                        # raw_syscalls): its perf event may still exist
                        if exc.errno != errno.ENOENT:
                            log.info("raw tracepoint %s refused (%s); perf events from here "
                                     "on", target, exc)
                            self._loader.raw_tp = False
                prog = "dc_block_complete" if target == BLOCK_COMPLETE else "dc_tracepoint"
                self._links.append(self._prog_obj(prog).attach_tracepoint(prog, category, name,
                                                                          i))
        except AttachFailed as exc:
            raise _Refused(f"cannot attach {kind} {target}: {exc}") from None

    def _attach_syscalls(self, syscalls, report: AttachReport) -> None:
        fd = self._obj.map_fd("sys_specs")
        for _i, nr, packed in syscalls:
            libbpf.map_update(fd, struct.pack("<I", nr), packed)
        try:
            for prog in ("dc_sys_enter", "dc_sys_exit"):
                self._links.append(self._obj.attach(prog))
        except AttachFailed as exc:
            for i, _nr, _p in syscalls:
                report.refused.append((self.probes[i], f"cannot attach raw_syscalls: {exc}"))
            return
        self._sys_attached = True
        report.attached.extend(self.probes[i] for i, _nr, _p in syscalls)

    # -- running --

    def poll(self, timeout_ms: int, final: bool = False) -> EventBatch | None:
        """Everything available now; else wait up to timeout_ms and drain; None if nothing.

        The kernel wakes this only after each CPU has sent its share of 1/8 of
        the ring buffer (a wakeup per event would cost more than the event), so a
        quiet job's events arrive within timeout_ms: poll with the latency
        you want (the daemon uses about 100 ms). Events are released in each thread's
        order (stage.Stager): those that ended while this drain began wait for the next;
        ``final``: the last drain, everything held is released."""
        if self._events is None:
            raise EngineError("poll() before attach() or after close()")
        if not self._events.pending() and not self._paths.pending() and timeout_ms > 0:
            try:
                self._epoll.poll(timeout_ms / 1000.0)
            except InterruptedError:
                pass
        if self._hold is not None:
            self._hold.service()        # a process waits at a dlopen(): before anything
        if self._stager is not None:
            # the last drain waits longer (up to seconds) for a batch a preempted program holds
            cut = self._stager.flush(stage.BUSY_TRIES * (100 if final else 1))
            if final and cut is None:
                log.warning("a CPU's staged events could not be flushed at the stop: they are "
                            "missing from the trace")
            events = self._stager.release(self._events.drain(), -1 if final else cut)
        else:
            events = self._events.drain()
        if self.capture_paths:
            self._stash_paths(self._paths.drain_variable())
        if not len(events):
            return None
        probe = events["probe"]
        sent = (probe & np.uint32(_EV_PATH_SENT)) != 0
        kinds = ((probe >> np.uint32(_KIND_SHIFT)) & np.uint32(15)).astype(np.uint8)
        kinds2 = ((probe >> np.uint32(_KIND2_SHIFT)) & np.uint32(7)).astype(np.uint8)
        events["probe"] = probe & np.uint32(_PROBE_MASK)
        matched, names, strings = {}, {}, {}
        if sent.any():
            matched, names = self._match_paths(events, np.flatnonzero(sent), strings)
        pids = distinct(events["pid"])
        if len(pids) and len(self._seen) < 65536:
            self._seen.update(int(p) for p in pids if int(p) not in self._seen)
        events["ts_ns"] += np.uint64(self._offset_ns)
        return EventBatch(events=events, paths=matched, names=names, kinds=kinds, kinds2=kinds2,
                          strings=strings)

    def ring_fill(self) -> float:
        """How full the event ring buffer is (0.0 to 1.0; 0.0 before attach or after
        close): the daemon ends a pause between drains early when it fills."""
        ring = self._events
        if ring is None:
            return 0.0
        return (int(ring._prod[0]) - int(ring._cons[0])) / ring.size

    def _returns_fd(self, index: int) -> bool:
        """Is probe ``index``'s return value a new descriptor (the kernel names its file)?
        Probes may be added while tracing (library families), so asked, not cached."""
        probe = self.probes[index] if 0 <= index < len(self.probes) else None
        return isinstance(probe, dict) and str(probe.get("target", "")).split("@")[0] in OPEN_OPS

    def _stash_paths(self, recs: list[bytes]) -> None:
        head = _PATH_HEAD.size
        pending = self._pending_paths
        for rec in recs:
            if len(rec) <= head:
                continue
            ts, tid, _probe, length, kind, role, pseudo, _p, ino, fd, _p2 = \
                _PATH_HEAD.unpack_from(rec)
            raw = rec[head:head + length].split(b"\0", 1)[0]
            if not raw and not pseudo:
                continue
            name = raw.decode("utf-8", errors="surrogateescape")
            if pseudo:      # as /proc names them (a pipe's own name is empty)
                name = (f"pipe:[{ino}]" if kind == 3 else f"socket:[{ino}]" if kind == 4
                        else f"anon_inode:{name}")
            pending.setdefault((tid, ts), []).append((role, fd, name))
        if len(pending) > 65536:      # bounded: drop the oldest unmatched
            for key in list(pending)[:len(pending) - 65536]:
                del pending[key]

    def _match_paths(self, events: np.ndarray, rows: np.ndarray,
                     strings: dict | None = None) -> tuple[dict, dict]:
        """Name the events whose names the kernel sent (``rows``): ``paths[row]`` the
        file of an open-like row (its new descriptor, or its path argument made absolute
        from the directory it is relative to), ``names[row]`` [(fd, name)] for every
        descriptor the kernel named with the row. A name is written before its event, so
        it has been drained by now, unless another CPU's record ahead of it was still
        being written: wait a moment for that one. A name still missing is counted in
        names_lost(), never dropped silently."""
        paths: dict[int, str] = {}
        names: dict[int, list] = {}
        missing = list(zip(rows.tolist(), events["tid"][rows].tolist(),
                           events["ts_ns"][rows].tolist()))
        deadline = None
        while True:
            left = []
            for row, tid, ts in missing:
                recs = self._pending_paths.pop((tid, ts), None)
                if recs is None:
                    left.append((row, tid, ts))
                    continue
                arg = base = None
                for role, fd, name in recs:
                    if role == _NAME_USDT_STR:      # {row: {argument: text}}, no file
                        if strings is not None:
                            strings.setdefault(row, {})[fd] = name
                    elif role == _NAME_ARG:
                        arg = name
                    elif role == _NAME_BASE:
                        base = name
                    else:
                        names.setdefault(row, []).append((fd, name))
                if arg is not None:
                    paths[row] = absolute_name(arg, base)
                elif row in names and self._returns_fd(int(events["probe"][row])):
                    ret = int(events["ret"][row])
                    paths[row] = next((n for fd, n in names[row] if fd == ret), names[row][0][1])
            missing = left
            if not missing or not self._paths.pending():
                break
            deadline = deadline or time.monotonic() + 0.01
            if time.monotonic() > deadline:
                break
            self._stash_paths(self._paths.drain_variable())
        self._names_lost_here += len(missing)
        return paths, names

    def _percpu_sum(self, name: str, index: int) -> int:
        ncpu = libbpf.num_possible_cpus()
        raw = libbpf.map_lookup(self._obj.map_fd(name), struct.pack("<I", index), 8 * ncpu)
        return int(np.frombuffer(raw, "<u8").sum()) if raw else 0

    def lost(self) -> int:
        """Operations the kernel could not report: ring buffer full (trace mode) or
        profile table full (profile mode). Still answers after close()."""
        if self._obj is None:
            return self._final_lost[0]
        if self.mode == "profile":
            return self._percpu_sum("lost", 0) + self._percpu_sum("lost", 2)
        return self._percpu_sum("lost", 0)

    def totals_lost(self) -> int:
        """Trace mode: lost events that read_unsent() could not count either (its table
        of (process, probe) rows was full): the totals miss exactly these. Still answers
        after close()."""
        if self._obj is None:
            return self._final_totals_lost
        return self._percpu_sum("lost", 2) if self.mode == "trace" else 0

    def names_lost(self) -> int:
        """Delivered events of open-like calls that lack their file name: the kernel
        could not read it or the name ring was full, or (rarely) the name arrived too late
        here. Still answers after close()."""
        if self._obj is None:
            return self._final_lost[1]
        return self._percpu_sum("lost", 1) + self._names_lost_here

    lost_paths = names_lost       # the older name

    def _slot_rows(self, name: str, words: int, per_cpu: bool = True):
        """(tgid, probe, u64 words: one row per CPU, or one row) of every claimed
        (process, probe) slot of map ``name`` (profile: per CPU; unsent: shared)."""
        fd = self._obj.map_fd(name)
        slots_fd = self._obj.map_fd("profile_slots")
        ncpu = libbpf.num_possible_cpus() if per_cpu else 1
        for key in libbpf.map_keys(slots_fd, _PKEY.size,
                                   limit=self._obj.map_max_entries("profile_slots")):
            slot = libbpf.map_lookup(slots_fd, key, 4)
            raw = libbpf.map_lookup(fd, slot, words * 8 * ncpu) if slot else None
            if raw is not None:
                tgid, probe = _PKEY.unpack(key)
                yield tgid, probe, np.frombuffer(raw, "<u8").reshape(ncpu, words)

    def read_profile(self) -> list[ProfileRow]:
        """Profile mode: cumulative totals per (pid, probe) since attach."""
        if self._obj is None:
            raise EngineError("read_profile() before attach() or after close()")
        rows = []
        for tgid, probe, v in self._slot_rows("profile", _PVAL_WORDS):
            v = v[v[:, 0] > 0]
            if not len(v):
                continue
            rows.append(ProfileRow(pid=tgid, probe=probe, count=int(v[:, 0].sum()),
                                   bytes=int(v[:, 1].sum()), time_ns=int(v[:, 2].sum()),
                                   min_ns=int(v[:, 3].min()), max_ns=int(v[:, 4].max()),
                                   hist=[int(x) for x in v[:, 5:].sum(axis=0)]))
        rows.sort(key=lambda r: (r.pid, r.probe))
        return rows

    def read_unsent(self) -> list[TotalsRow]:
        """Trace mode: cumulative (count, bytes, time) per (pid, probe) since attach of
        the operations whose event the ring buffer had no room for. The events received
        plus these rows are the run's exact totals (less totals_lost())."""
        if self._obj is None:
            raise EngineError("read_unsent() before attach() or after close()")
        if self.mode != "trace":
            return []
        rows = []
        for tgid, probe, row in self._slot_rows("unsent", _TVAL_WORDS, per_cpu=False):
            v = row[0]
            if not v[0]:
                continue
            rows.append(TotalsRow(pid=tgid, probe=probe, count=int(v[0]), bytes=int(v[1]),
                                  time_ns=int(v[2])))
        rows.sort(key=lambda r: (r.pid, r.probe))
        return rows

    def process_names(self) -> dict[int, str]:
        """comm of every tgid seen in events, as the kernel recorded it (first event, exec).

        Read from the kernel rather than /proc: pids in events are host pids,
        the process may be gone, and the tracer may sit in a pid namespace.
        """
        if self._obj is None:
            return dict(self._names)
        comms_fd = self._obj.map_fd("comms")
        for pid in self._seen - self._names.keys():
            raw = libbpf.map_lookup(comms_fd, struct.pack("<I", pid), 16)
            if raw:
                self._names[pid] = raw.split(b"\0", 1)[0].decode(errors="replace")
        return dict(self._names)

    def pending_syscall(self, tid: int) -> tuple[int, int] | None:
        """(syscall number, entry CLOCK_MONOTONIC ns) a live thread of the job is in,
        as the kernel side recorded it; None when none is pending or the thread is gone.

        Entry state lives in the thread's own task storage, which the kernel frees
        with the thread: a thread that dies mid-syscall leaves nothing behind."""
        if self._obj is None:
            raise EngineError("pending_syscall() before attach() or after close()")
        try:
            pidfd = os.pidfd_open(tid, _PIDFD_THREAD)
        except (OSError, ValueError, TypeError, OverflowError):
            return None
        try:
            raw = libbpf.map_lookup(self._obj.map_fd("tasks"), struct.pack("<i", pidfd),
                                    _TASK_SIZE)
        finally:
            os.close(pidfd)
        if raw is None:
            return None
        ts, nr = struct.unpack_from("<Q", raw, 0)[0], struct.unpack_from("<I", raw, 56)[0]
        return (nr, ts) if ts else None

    @staticmethod
    def resolve_fd(pid: int, fd: int, owner_uid: int | None = None) -> str | None:
        """Path of a file descriptor opened before attach (None if gone or not a file).

        Event pids are host pids: from inside a pid namespace /proc would name
        another process, so nothing is resolved there.

        ``owner_uid``: name it only while the process at ``pid`` is still one that user
        could ptrace (all four uids hers, dumpable). This runs as root, after the event:
        by then the job's process may have exited and its pid gone to another user's
        process (pids wrap), or it may have exec'd a set-uid program, and that
        process's file must not be named in the job user's trace. The checks and the
        readlink go through one open /proc/<pid> directory, which stays with the
        process it was opened for (a reused pid is another directory)."""
        if pid_namespace() is not None:
            return None
        if isinstance(pid, bool) or isinstance(fd, bool) or not isinstance(pid, int) \
                or not isinstance(fd, int) or pid <= 0 or fd < 0:
            return None
        target = procdir.read(pid, owner_uid, lambda d: os.readlink(f"fd/{fd}", dir_fd=d))
        return target if target is not None and target.startswith("/") else None

    @property
    def proc_owner(self) -> int | None:
        """The user whose processes alone the daemon reads /proc of, after the events (the
        job's, see ``job_uid``); None when root traces for root."""
        return self.job_uid if self.check_creds else None

    def resolve_job_fd(self, pid: int, fd: int) -> str | None:
        """:meth:`resolve_fd` for this engine's trace: only :attr:`proc_owner`'s processes
        are looked into."""
        return self.resolve_fd(pid, fd, owner_uid=self.proc_owner)

    def close(self) -> None:
        """Detach everything and free the object; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._hold is not None:
            self._hold.close()          # held processes resumed before anything else
            self._hold = None
        if self._obj is None:
            self._loader.close()        # start_load() without attach(): its object
        if self._raw_batch is not None:     # attach() failed before taking them
            self._raw_batch.discard()
            self._raw_batch = None
        _destroy_all(list(reversed(self._links)))
        self._links.clear()
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        if self._obj is not None and self._events is not None:
            # fully attached: keep the counts for after close
            self._final_lost = (self.lost(), self.lost_paths())
            self._final_totals_lost = self.totals_lost()
        for ring in (self._events, self._paths):
            if ring is not None:
                ring.close()
        self._events = self._paths = None
        for late in self._late.values():
            late.close()
        self._late.clear()
        if self._obj is not None:
            self._obj.close()
            self._obj = None

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
