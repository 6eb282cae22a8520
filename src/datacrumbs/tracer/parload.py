"""Load a BPF object's programs in two kernel verifications at once (issue #10: ready sooner).

One ``bpf_object__load`` verifies its programs one after another, and that was most of a
tracer's start (10,000 probes: 0.30 s, of which ``dc_sys_exit`` 0.10 s and
``dc_uretprobe_multi`` 0.08 s). The kernel holds no lock across verifications, so programs
loaded from two objects in two threads are verified side by side on two CPUs. All of them
must use the very same maps: the configured object is loaded first with only its cheapest
program, which makes every map; two more objects of the same file take its maps
(``bpf_map__reuse_fd``, before their load; the object has no .data/.rodata/.bss maps,
whose contents would have to match) and load the other programs, split so that their
verification times are about equal. ``SplitObject`` makes the three look like one
``BpfObject`` to the engine: a program is found in the object that loaded it, a map in
the first.

On a failure nothing stays loaded: the extra objects are closed here, the first by its
caller (as when one object is refused), and the error is the refusing load's own.
"""

from __future__ import annotations

import os
import threading

from .libbpf import BpfObject

SPLIT_ENV = "DATACRUMBS_SPLIT_LOAD"     # "0": never split, "1": whenever it pays; else ask
                                        # for spare CPUs too (spare_cpus)
# Kernel verification per program in ms, bench/bench_verifier.py on the project's machine
# (2026-12-03, after the verifier's work was cut: untrusted task reads, global subprograms
# for the full-ring path): only to balance the two halves; a program not listed counts as
# UNKNOWN_MS.
VERIFY_MS = {"dc_kretprobe": 25, "dc_uretprobe_multi": 24, "dc_sys_exit": 19,
             "dc_uretprobe": 19, "dc_exec": 10, "dc_tracepoint": 9, "dc_cgroup_made": 7,
             "dc_raw_tracepoint": 7, "dc_uring_complete": 6, "dc_raw_ktp": 6, "dc_raw_ktp1": 5,
             "dc_uring_submit": 5, "dc_ktp": 5, "dc_dl_hook": 4, "dc_block_complete": 4,
             "dc_hold_exec": 2, "dc_sys_enter": 1.4, "dc_kprobe": 1.3, "dc_uprobe": 1.1,
             "dc_uprobe_multi": 1, "dc_flush": 1, "dc_block_issue": 0.9, "dc_exit": 0.7,
             "dc_fork": 0.5, "dc_hold_signal": 0.3, "dc_hold_exit": 0.3, "dc_cgroup_moved": 0.3,
             "dc_usdt": 21}
UNKNOWN_MS = 10
# An extra object costs about 20 ms (its BTF, relocations, the map fds): split only when
# the lighter half verifies for longer than that
MIN_HALF_MS = 40
# The daemon's own thread imports and verifies meanwhile: a second verification needs a
# CPU beyond that one and the first verification's, or it only adds work (on the 2-CPU
# test machine, the daemon at 10,000 probes, medians of 6: 1.51 s split against 1.33 s
# not at load 1.6-3.5; 100 probes 1.02 s against 0.76 s). So: three CPUs' room.
MIN_SPARE_CPUS = 2.5


def spare_cpus() -> float:
    """CPUs this process may use less the 1-minute load average."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    return len(os.sched_getaffinity(0)) - load


def plan(needed) -> tuple[str, list[str], list[str]] | None:
    """(the program loaded with the maps, one half, the other half) of ``needed``, or None
    when splitting would not pay: too little to verify, or no CPU to spare for it."""
    progs = sorted(needed, key=lambda p: (VERIFY_MS.get(p, UNKNOWN_MS), p))
    how = os.environ.get(SPLIT_ENV)
    if len(progs) < 3 or how == "0" or (how != "1" and spare_cpus() < MIN_SPARE_CPUS):
        return None
    first, rest = progs[0], progs[1:]
    halves: tuple[list[str], list[str]] = ([], [])
    weight = [0.0, 0.0]
    for prog in reversed(rest):         # heaviest first, each into the lighter half
        k = 0 if weight[0] <= weight[1] else 1
        halves[k].append(prog)
        weight[k] += VERIFY_MS.get(prog, UNKNOWN_MS)
    if min(weight) < MIN_HALF_MS:
        return None
    return first, halves[0], halves[1]


class SplitObject:
    """Loaded objects of one file sharing the first one's maps, used as one BpfObject."""

    def __init__(self, first: BpfObject, others: list[tuple[BpfObject, list[str]]]):
        self.first = first
        self.path = first.path
        self.others = [obj for obj, _progs in others]
        self._owner = {prog: obj for obj, progs in others for prog in progs}

    def _of(self, prog: str) -> BpfObject:
        return self._owner.get(prog, self.first)

    def program(self, name: str) -> int:
        return self._of(name).program(name)

    def program_fd(self, name: str) -> int:
        return self._of(name).program_fd(name)

    def attach(self, prog: str, *args, **kwargs):
        return self._of(prog).attach(prog, *args, **kwargs)

    def attach_uprobe(self, prog: str, *args, **kwargs):
        return self._of(prog).attach_uprobe(prog, *args, **kwargs)

    def attach_kprobe(self, prog: str, *args, **kwargs):
        return self._of(prog).attach_kprobe(prog, *args, **kwargs)

    def attach_tracepoint(self, prog: str, *args, **kwargs):
        return self._of(prog).attach_tracepoint(prog, *args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.first, name)        # maps: map_fd, map_value_size, ...

    def close(self) -> None:
        for obj in self.others:
            obj.close()
        self.others = []
        self.first.close()


def load(obj: BpfObject, needed, all_progs, attach_types: dict[str, int]):
    """Load ``obj`` (opened and configured for the programs ``needed``; ``all_progs``: every
    program of its file, ``attach_types``: the expected attach type of some) and return it,
    or, when two verifications at once pay, a SplitObject of it and two more objects.
    Raises the refusing load's LibbpfError; ``obj`` is then the caller's to close."""
    # libbpf fills and freezes an internal map (global variables, .rodata) only in the
    # object that creates it; a reused one would leave the other objects' programs
    # verified against contents nobody checked: such an object is never split
    split = None if any("." in name for name in obj.map_names()) else plan(needed)
    if split is None:
        obj.load()
        return obj
    first, *halves = split
    others: list[tuple[BpfObject, list[str]]] = []
    try:
        for half in halves:             # opened and configured while nothing waits on them
            other = BpfObject(obj.path)
            others.append((other, half))
            for prog in all_progs:
                if prog not in half:
                    other.set_autoload(prog, False)
                elif prog in attach_types:
                    other.set_expected_attach_type(prog, attach_types[prog])
        for prog in needed:
            if prog != first:
                obj.set_autoload(prog, False)
        obj.load()                      # the maps, and the cheapest program
        for other, _half in others:
            other.reuse_maps(obj)
        failed: list[BaseException] = []

        def load_second():
            try:
                others[1][0].load()
            except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
                failed.append(exc)

        thread = threading.Thread(target=load_second, name="datacrumbs-load2")
        thread.start()
        try:
            others[0][0].load()
        finally:
            thread.join()
        if failed:
            raise failed[0]
    except BaseException:
        for other, _half in others:
            other.close()
        raise
    return SplitObject(obj, others)
