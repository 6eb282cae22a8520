"""Where a daemon's start goes: CPU and wall seconds per phase, up to its ready file.

A job's prolog waits for the ready file, so every phase of the start is paid by the job.
CPU seconds (user + system, this process and its threads, from ``getrusage``) are the
figure that holds on a loaded node; wall seconds are printed beside them. The first
phase ("imports") runs from the process's start: interpreter, imports, configuration.

    startclock.begin()              # the daemon, once its imports are done
    startclock.mark("verify")       # each phase ends with a mark named for it
    startclock.summary()            # "ready in 0.412 s, CPU 0.380 s: imports 0.110/0.105 ..."

``mark`` does nothing unless ``begin`` was called (``datacrumbs trace`` and the tests use
the engine without a clock).
"""

from __future__ import annotations

import os
import resource
import time

_marks: list[tuple[str, float, float]] | None = None


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _process_start_wall() -> float | None:
    """CLOCK_BOOTTIME seconds at this process's start (/proc/self/stat field 22), or None."""
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        ticks = int(stat[stat.rindex(b")") + 2:].split()[19])
        return ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def begin(name: str = "imports") -> None:
    """Start recording; the first phase, ``name``, ran from the process's start to now."""
    global _marks
    _marks = []
    started = _process_start_wall()
    now = time.clock_gettime(time.CLOCK_BOOTTIME)
    _marks.append(("start", now if started is None else started, 0.0))
    _marks.append((name, now, _cpu()))


def mark(name: str) -> None:
    """The phase ``name`` ends now (no-op without ``begin``)."""
    if _marks is not None:
        _marks.append((name, time.clock_gettime(time.CLOCK_BOOTTIME), _cpu()))


def phases() -> list[tuple[str, float, float]]:
    """[(phase, wall seconds, CPU seconds)] in order; [] without ``begin``."""
    if not _marks:
        return []
    return [(name, wall - _marks[i][1], cpu - _marks[i][2])
            for i, (name, wall, cpu) in enumerate(_marks[1:])]


def summary(early_load: tuple[float, float] | None = None) -> str:
    """One line for the log: the totals, then each phase as wall/CPU seconds, and the
    BPF load's own (wall, CPU) when a thread did it during the first phases (its CPU
    is in theirs too: getrusage counts every thread)."""
    rows = phases()
    if not rows:
        return ""
    wall = sum(w for _n, w, _c in rows)
    cpu = sum(c for _n, _w, c in rows)
    parts = ", ".join(f"{name} {w:.3f}/{c:.3f}" for name, w, c in rows)
    if early_load is not None:
        parts += f"; in a thread meanwhile: bpf load {early_load[0]:.3f}/{early_load[1]:.3f}"
    return f"started in {wall:.3f} s wall, {cpu:.3f} s CPU (phase wall/CPU s: {parts})"
