"""Trace mode's staged event records: the kernel sends events 8 to a ring record from a
per-CPU batch (datacrumbs.bpf.c, send_event), so before each drain the reader flushes
every CPU's partial batch, and keeps each thread's events in its order across drains."""

from __future__ import annotations

import logging
import time

import numpy as np

from . import libbpf
from .objload import FLUSH_PROGRAM as PROGRAM  # noqa: F401 - its name, for the engine

log = logging.getLogger("datacrumbs.stage")

STAGE_N = 8                 # DC_STAGE_N: events per ring record
STAGE_HEADER = 8            # struct dc_stage: __u32 n, __u32 busy, then the events
EVENT_BYTES = 80            # struct dc_event
BUSY_TRIES = 200            # a busy batch is a program mid-append: it ends in microseconds


def online_cpus() -> list[int]:
    """The CPUs a flush must visit (a staged batch can only be on a CPU that ran)."""
    try:
        with open("/sys/devices/system/cpu/online") as f:
            text = f.read().strip()
    except OSError:
        return list(range(libbpf.num_possible_cpus()))
    cpus: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


class Stager:
    """Flushes partial batches and orders what a drain releases.

    Order: a thread that moved to another CPU leaves its older events in the old CPU's
    batch. The flush begins at ``cut`` (CLOCK_MONOTONIC, the clock of the events' ts);
    every event that ended (ts + dur) before ``cut`` was staged before the flush reached
    its CPU, or its program was still running there, and then every later event of its
    thread ends after ``cut``. So a drain releases, sorted by end, the events that ended
    before ``cut`` and holds the others for the next drain: a thread's events come out in
    its order. A CPU whose batch stayed busy (a program preempted mid-append) is not
    flushed: then nothing is released until a drain whose flush reached every CPU."""

    def __init__(self, prog_fd: int, stage_fd: int | None = None):
        self.prog_fd = prog_fd
        self.stage_fd = stage_fd
        self.cpus = online_cpus()
        self.held: np.ndarray | None = None
        self.retries = 0
        self.unflushed = 0
        self.visits = 0         # flush programs run (a CPU with nothing staged is not visited)

    def _staged_cpus(self) -> list[int]:
        """The CPUs whose batch holds events or is taken, read from the ``stage`` map in one
        system call: a flush visits only those (each visit is an IPI to that CPU, and a node
        of 128 CPUs would otherwise take 128 of them at every drain). Read after the cut, so
        the order argument holds: an event staged on a CPU after it was read as empty had
        its program running then, and its thread's later events end after the cut."""
        if self.stage_fd is None:
            return self.cpus
        ncpu = libbpf.num_possible_cpus()
        width = (STAGE_HEADER + STAGE_N * EVENT_BYTES + 7) & ~7
        raw = libbpf.map_lookup(self.stage_fd, b"\0\0\0\0", width * ncpu)
        if raw is None:
            return self.cpus
        head = np.frombuffer(raw, dtype=np.uint32).reshape(ncpu, width // 4)[:, :2]
        staged = set(np.flatnonzero((head[:, 0] & (STAGE_N - 1)) | head[:, 1]).tolist())
        return [cpu for cpu in self.cpus if cpu in staged]

    def flush(self, tries: int = BUSY_TRIES) -> int | None:
        """Send every CPU's partial batch; the cut (ns), or None if a CPU stayed busy."""
        cut = time.monotonic_ns()
        complete = True
        for cpu in self._staged_cpus():
            self.visits += 1
            for _ in range(tries):
                try:
                    busy = libbpf.prog_test_run_on_cpu(self.prog_fd, cpu)
                except libbpf.LibbpfError as exc:
                    if getattr(exc, "errno", 0) == 6:   # ENXIO: went offline, nothing staged
                        busy = 0
                    else:
                        raise
                if not busy:
                    break
                self.retries += 1
                time.sleep(20e-6)
            else:
                complete = False
        if not complete:
            self.unflushed += 1
        return cut if complete else None

    def release(self, events: np.ndarray, cut: int | None) -> np.ndarray:
        """This drain's events with the held ones: those to write now, oldest end first
        (``cut`` None: hold all; ``cut`` -1: release all, the last drain)."""
        dtype = events.dtype
        item = f"V{dtype.itemsize}"     # moved as opaque items: structured copies cost 10x
        if self.held is not None and len(self.held):
            events = np.concatenate([self.held.view(item), events.view(item)]).view(dtype)
            self.held = None
        if not len(events):
            return events
        end = events["ts_ns"] + events["dur_ns"]
        if len(end) > 1 and not (end[1:] >= end[:-1]).all():
            order = np.argsort(end, kind="stable")
            events, end = events.view(item)[order].view(dtype), end[order]
        if cut == -1:
            return events
        n = 0 if cut is None else int(np.searchsorted(end, np.uint64(cut), side="left"))
        if n < len(events):
            self.held = events[n:]
        return events[:n]
