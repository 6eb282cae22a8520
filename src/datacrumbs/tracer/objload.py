"""Which BPF programs a tracing session needs, and the object loaded with only those.

The kernel verifying the programs is the largest part of a tracer's start, and a job's
prolog waits for that start. This module decides what to load from the probes alone and
imports neither numpy nor the engine, so the daemon can begin the load (in a thread,
``Loader.start``) a tenth of a second after its process starts, before it imports the
rest (tracer/preload.py); the engine then takes the loaded object (``Loader.result``).

Loading falls back step by step on older kernels, and the engine reads what was learnt
(``raw_tp``, ``lazy_hash``, ``holds_refused``, ``multi_refused``).
"""

from __future__ import annotations

import logging
import resource
import threading
import time
from pathlib import Path

from . import dlhold, libbpf, parload
from .libbpf import BpfObject

log = logging.getLogger("datacrumbs.engine")

TRACEFS = Path("/sys/kernel/tracing")
DEFAULT_RINGBUF_BYTES = 16 << 20
UPROBE_MULTI_ENV = "DATACRUMBS_UPROBE_MULTI"       # "0": always attach uprobes one by one
MULTI_PROGS = ("dc_uprobe_multi", "dc_uretprobe_multi")
URING_PROGS = ("dc_uring_submit", "dc_uring_complete")
KTP_PROGRAM = "dc_ktp"                          # kernel layers (tracer/klayers.py)
RAW_KTP_PROGRAMS = ("dc_raw_ktp", "dc_raw_ktp1")     # the inode from argument 0, 1
FLUSH_PROGRAM = "dc_flush"                      # tracer/stage.py
# Every program of the object (datacrumbs.bpf.c), so each can be left unloaded.
ALL_PROGS = ("dc_sys_enter", "dc_sys_exit", "dc_uprobe", "dc_uretprobe", "dc_kprobe",
             "dc_kretprobe", "dc_tracepoint", "dc_block_issue", "dc_block_complete", "dc_fork",
             "dc_exec", "dc_cgroup_moved", "dc_cgroup_made", "dc_exit", "dc_raw_tracepoint",
             *MULTI_PROGS, *URING_PROGS, *dlhold.HOLD_PROGS, "dc_usdt",
             KTP_PROGRAM, *RAW_KTP_PROGRAMS, FLUSH_PROGRAM)
# Hash maps written only when a process joins or leaves the scope or a (process, probe)
# row is first claimed: made without preallocation, the kernel does not fill their
# 16,384 to 65,536 entries when it creates them (about 10 ms of every tracer's start).
LAZY_HASH_MAPS = ("scope_pids", "profile_slots", "slot_owner")
BLOCK_COMPLETE = "block:block_rq_complete"
# kind "async": requests of asynchronous I/O interfaces, one event per completed
# request (enum dc_async_class); target -> class index
ASYNC_CLASSES = {"io_uring_read": 0, "io_uring_write": 1, "io_uring_fsync": 2,
                 "libaio_read": 3, "libaio_write": 4, "libaio_fsync": 5}
# what each interface's programs attach to: all must exist on the kernel. libaio's
# system calls come through the system call programs (dc_sys_enter/exit): their
# sys_specs entries say what to do at exit (DC_BYTES_AIO_SUBMIT / _REAP), so the
# path of other system calls gains nothing (a syscalls:sys_enter_* tracepoint would
# add a probe call to every system call of the node).
ASYNC_TRACEPOINTS = {
    "io_uring": ("io_uring/io_uring_submit_req", "io_uring/io_uring_complete"),
    "libaio": (),
}


def paths_ring_bytes(ringbuf_bytes: int) -> int:
    """The file-name ring's default size for an events ring of ``ringbuf_bytes``."""
    return min(max(ringbuf_bytes, 1 << 20), 256 << 20)


def wants_ktp(probe) -> bool:
    """Is this a kernel-layer probe (a tracepoint with record fields)?"""
    return isinstance(probe, dict) and probe.get("kind") == "tracepoint" \
        and isinstance(probe.get("fields"), dict) and bool(probe["fields"])


def perf_tracepoint(probe: dict) -> bool:
    """Whether a tracepoint probe needs the perf-event program (dc_tracepoint) from the
    start: it reads a field of the event's record, or its event is an ftrace event over
    another tracepoint (syscalls:*), never a raw tracepoint."""
    target = str(probe.get("target"))
    return target != BLOCK_COMPLETE and (str(probe.get("bytes") or "").startswith("field:")
                                         or target.startswith("syscalls:"))


def async_interface(target: str) -> str:
    """``io_uring`` or ``libaio``: whose requests an async probe's target counts."""
    return "io_uring" if target.startswith("io_uring_") else "libaio"


def async_missing(iface: str) -> str | None:
    """Why this kernel cannot report ``iface``'s requests (a tracepoint it lacks), or None."""
    for tp in ASYNC_TRACEPOINTS[iface]:
        if not (TRACEFS / "events" / tp).is_dir():
            return f"this kernel has no tracepoint {tp.replace('/', ':')} (needed for {iface})"
    return None


def async_interfaces(probes: list) -> set[str]:
    """The async I/O interfaces (io_uring, libaio) the probes ask for and this kernel
    has the tracepoints of: only their programs are loaded."""
    wanted = set()
    for probe in probes:
        if isinstance(probe, dict) and probe.get("kind") == "async" \
                and probe.get("target") in ASYNC_CLASSES:
            iface = async_interface(probe["target"])
            if async_missing(iface) is None:
                wanted.add(iface)
    return wanted


class Loader:
    """The BPF object of one session, loaded for its probes, mode and scope kind.

    ``settings`` are what the loaded object depends on besides the probes: an engine
    takes a loader begun early only when its own settings are the same."""

    def __init__(self, probes: list, *, bpf_object: Path, mode: str, scope_kind: str,
                 ringbuf_bytes: int = DEFAULT_RINGBUF_BYTES, paths_bytes: int | None = None,
                 slots: int | None = None, multi: bool = True):
        self.probes = probes
        self.bpf_object = Path(bpf_object)
        self.mode = mode
        self.scope_kind = scope_kind
        self.ringbuf_bytes = ringbuf_bytes
        self.paths_bytes = paths_ring_bytes(ringbuf_bytes) if paths_bytes is None else paths_bytes
        self.slots = slots
        self.multi = multi
        # learnt while loading (and later, by the engine, while attaching)
        self.raw_tp = True          # tracepoints as raw tracepoints until the kernel says no
        self.lazy_hash = True       # LAZY_HASH_MAPS without preallocation (kernel 6.1)
        self.holds_refused: str | None = None   # why the dlopen hold programs did not load
        self.multi_refused: str | None = None if multi else "uprobe_multi links turned off"
        self.loaded: set[str] = set()           # the programs loaded in the object
        self.stats: tuple[float, float] | None = None   # a started load's (wall, CPU) s
        self._future = None         # (thread, box) of start()

    @property
    def settings(self) -> tuple:
        return (self.bpf_object, self.mode, self.scope_kind, self.ringbuf_bytes,
                self.paths_bytes, self.slots, self.multi)

    def start(self) -> None:
        """Begin loading in a thread; ``result`` takes the object. The object is opened
        and configured here: ~100 calls into libbpf that, in a thread, would each wait
        for the GIL while this one imports and verifies (2026-12-03: the thread took
        0.23 s for 0.1 s of work); the thread makes one call, without it."""
        if self._future is not None:
            return
        multi = self.multi
        try:
            opened = self.open_configured(multi)
        except libbpf.LibbpfError:
            opened = None       # load() in the thread says why (as without start)
        box: dict = {}

        def run():
            t0, r0 = time.monotonic(), resource.getrusage(resource.RUSAGE_THREAD)
            try:
                box["obj"] = self.load(multi, opened)
            except BaseException as exc:  # noqa: BLE001 - raised again by result()
                box["error"] = exc
            r1 = resource.getrusage(resource.RUSAGE_THREAD)
            self.stats = (time.monotonic() - t0, (r1.ru_utime - r0.ru_utime)
                          + (r1.ru_stime - r0.ru_stime))

        thread = threading.Thread(target=run, name="datacrumbs-load", daemon=True)
        thread.start()
        self._future = (thread, box)

    def result(self) -> BpfObject:
        """The object ``start`` began loading (waiting for it), or one loaded now."""
        future, self._future = self._future, None
        if future is None:
            return self.load(self.multi)
        thread, box = future
        thread.join()
        if "error" in box:
            raise box["error"]
        return box["obj"]

    def close(self) -> None:
        """Close an object begun by ``start`` that nobody took."""
        future, self._future = self._future, None
        if future is not None:
            future[0].join()
            if "obj" in future[1]:
                future[1]["obj"].close()

    def programs_needed(self, multi: bool) -> set[str]:
        """Only the programs this session attaches are loaded: the kernel verifies each
        one it loads, which is most of the time to start (a syscall-only probes file
        needs neither the uprobe nor the kprobe nor the tracepoint programs)."""
        probes = self.probes
        kinds = {p.get("kind") for p in probes if isinstance(p, dict)}
        needed = {"dc_fork", "dc_exec", "dc_exit"}
        if self.scope_kind in ("cgroup", "cgroup_name"):
            needed.add("dc_cgroup_moved")
        if self.scope_kind == "cgroup_name":
            needed.add("dc_cgroup_made")
        if "syscall" in kinds:
            needed |= {"dc_sys_enter", "dc_sys_exit"}
        if self.mode == "trace":
            needed.add(FLUSH_PROGRAM)       # sends the CPUs' partial batches before a drain
        if "uprobe" in kinds:
            # the per-probe pair only where it is the way uprobes attach; as the fallback
            # for some functions it is loaded when first needed (Engine._prog_obj)
            needed |= set(MULTI_PROGS) if multi else {"dc_uprobe", "dc_uretprobe"}
            if self.holds_refused is None and any(
                    isinstance(p, dict) and isinstance(p.get("family"), str) for p in probes):
                self.holds_refused = dlhold.kernel_lacks()
                if self.holds_refused is None:
                    needed |= set(dlhold.HOLD_PROGS)
        if "kprobe" in kinds:
            needed |= {"dc_kprobe", "dc_kretprobe"}
        if "usdt" in kinds:
            needed.add("dc_usdt")
        if "tracepoint" in kinds:
            tps = [p for p in probes if isinstance(p, dict) and p.get("kind") == "tracepoint"]
            if any(p.get("target") == BLOCK_COMPLETE for p in tps):
                needed |= {"dc_block_issue", "dc_block_complete"}
            if any(wants_ktp(p) for p in tps):      # kernel layers: record fields
                needed.add(KTP_PROGRAM)
                if self.raw_tp:
                    needed.update(RAW_KTP_PROGRAMS)
            tps = [p for p in tps if not wants_ktp(p)]
            if tps and (not self.raw_tp or any(perf_tracepoint(p) for p in tps)):
                needed.add("dc_tracepoint")
            if self.raw_tp and any(p.get("target") != BLOCK_COMPLETE and not perf_tracepoint(p)
                                   for p in tps):
                needed.add("dc_raw_tracepoint")
        wanted = async_interfaces(probes) if "async" in kinds else set()
        if "io_uring" in wanted:
            needed |= set(URING_PROGS)
        if "libaio" in wanted:          # its system calls come through the syscall programs
            needed |= {"dc_sys_enter", "dc_sys_exit"}
        return needed

    def unused_maps(self, needed: set[str]) -> list[str]:
        """Maps only programs left unloaded use: made with one entry, as the kernel
        fills a preallocated hash map's 16,384 or 65,536 entries as it creates it."""
        unused = []
        if not needed & {"dc_uprobe", "dc_uretprobe", "dc_kprobe", "dc_kretprobe",
                         *MULTI_PROGS}:
            unused.append("entries")
        if "dc_block_complete" not in needed:
            unused.append("block_starts")
        if not needed & set(URING_PROGS):
            unused.append("uring_inflight")
        kinds = {p.get("kind") for p in self.probes if isinstance(p, dict)}
        if "async" not in kinds or "libaio" not in async_interfaces(self.probes):
            unused.append("aio_inflight")
        return unused

    def open_configured(self, multi: bool) -> tuple[BpfObject, set[str]]:
        """The object opened and sized, with only the programs this session needs set
        to load, and those programs' names."""
        libbpf.use_c_print(self.bpf_object)     # libbpf's ~4,000 debug lines without the GIL
        obj = BpfObject(self.bpf_object)
        try:
            # A map or program missing here means an object from another version:
            # no point retrying without uprobe_multi, say so once.
            obj.set_max_entries("events", self.ringbuf_bytes)
            obj.set_max_entries("paths", self.paths_bytes)
            # per-CPU profile rows are large: trace mode keeps only the slots and the
            # small rows of unsent events, profile mode none of those
            obj.set_max_entries("unsent" if self.mode == "profile" else "profile", 1)
            if self.slots is not None:
                for name in ("profile_slots", "slot_owner"):
                    obj.set_max_entries(name, self.slots)
            needed = self.programs_needed(multi)
            for name in self.unused_maps(needed):
                obj.set_max_entries(name, 1)
            if self.lazy_hash:
                for name in LAZY_HASH_MAPS:
                    obj.add_map_flags(name, libbpf.BPF_F_NO_PREALLOC)
            for prog in ALL_PROGS:
                if prog not in needed:
                    obj.set_autoload(prog, False)
                elif prog in MULTI_PROGS:
                    obj.set_expected_attach_type(prog, libbpf.BPF_TRACE_UPROBE_MULTI)
        except libbpf.LibbpfError:
            obj.close()
            raise
        return obj, needed

    def load(self, multi: bool, opened: tuple[BpfObject, set[str]] | None = None
             ) -> BpfObject:
        """Open, size and load the object (``opened``: already opened and configured
        for ``multi``). The uprobe_multi programs need the BPF_TRACE_UPROBE_MULTI attach
        type, which kernels before 6.6 refuse: then load again without them (uprobes go
        one by one)."""
        obj, needed = opened if opened is not None else self.open_configured(multi)
        try:
            # two halves verified at once when that pays (tracer/parload.py)
            obj = parload.load(obj, needed, ALL_PROGS,
                               {p: libbpf.BPF_TRACE_UPROBE_MULTI for p in MULTI_PROGS})
            self.loaded = needed
        except libbpf.LibbpfError as exc:
            obj.close()
            if self.lazy_hash:
                # before 6.1 tracing programs take only preallocated hash maps: the first
                # thing to try again without (a refusal for another reason comes back)
                log.info("the kernel refused the object (%s); trying again with its hash "
                         "maps preallocated", exc)
                self.lazy_hash = False
                return self.load(multi)
            if "dc_raw_tracepoint" in needed:
                # kernels before 6.10 give raw tracepoints no cookie: perf events then
                log.info("raw tracepoints with cookies refused (%s); tracepoints attach as "
                         "perf events", exc)
                self.raw_tp = False
                return self.load(multi)
            if not multi and dlhold.HOLD_PROGS[0] in needed:
                # the last thing to leave out: the periodic scan alone finds libraries
                self.holds_refused = f"the kernel refused the dlopen hold programs ({exc})"
                return self.load(multi)
            if not multi:
                raise
            log.info("loading the uprobe_multi programs failed (%s); uprobes attach one by one",
                     exc)
            self.multi_refused = "the kernel refused uprobe_multi programs"
            return self.load(multi=False)
        return obj
