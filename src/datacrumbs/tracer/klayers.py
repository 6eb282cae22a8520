"""Kernel-layer tracepoints: probes with record ``fields`` (see probes/kernel_sets.py).

Such a probe attaches ``dc_ktp`` (datacrumbs.bpf.c) as a perf tracepoint, with its
fields' places in ``ktp_fields[probe]`` (``struct dc_kfields``). Its events carry the
bytes field in ``count``/``bytes``, the byte offset in ``offset``, the inode in
``handle``, the device in ``flags``, and ``ret`` 1 when a kernel thread did the work
on an inode the job touched (attributed to the job's process, ``args.async = 1``).
``block:block_rq_complete`` (``dc_block_complete``) sends its device in ``flags`` too.

Attribution, precisely:

* an event in a job task's context (the trace's scope) is the job's; when it writes
  or syncs the inode it names (``writes_inode``: ext4_da_write_begin,
  writeback_dirty_folio, xfs_file_buffered_write, ext4_sync_file_enter ...), that inode
  is remembered as the job's (an LRU of ``DC_JOB_INODES`` inodes, keyed by inode number,
  with its device once an event names it);
* an event of a kernel thread (writeback kworker, jbd2, loop worker) that names an
  inode the job touched, on the same device when both name one, is the job's: it is
  sent with the job's process id (the last of its processes that touched the inode),
  the kernel thread's tid, and ``args.async = 1``;
* every other event (another process's, a kernel thread's work that names no inode the
  job touched: journal commits, block requests issued by kworkers) is left out.
"""

from __future__ import annotations

import struct

import numpy as np

KFIELD_ROLES = ("bytes", "offset", "ino", "dev")        # enum dc_kfield_role
_KFIELDS = struct.Struct("<" + "HBB" * len(KFIELD_ROLES) + "B3x")
KFIELDS_SIZE = _KFIELDS.size                              # struct dc_kfields
_SHIFT = {"offset": 0, "page": 12, "sector": 9}          # to bytes (x86_64 pages)
ASYNC_RET = 1
# parts of tracepoint names that fire in the writing task: ext4_da_write_begin,
# writeback_dirty_folio, xfs_file_buffered_write, ext4_sync_file_enter, ...
WRITES = ("write_begin", "write_end", "dirty_folio", "buffered_write", "direct_write",
          "dax_write", "sync_file_enter", "fallocate", "zero_range", "punch_hole",
          "writepages", "write_folios")
BLOCK_COMPLETE = "block:block_rq_complete"
PROGRAM = "dc_ktp"


def wants_ktp(probe) -> bool:
    """Is this a kernel-layer probe (a tracepoint with record fields)?"""
    return isinstance(probe, dict) and probe.get("kind") == "tracepoint" \
        and isinstance(probe.get("fields"), dict) and bool(probe["fields"])


def pack_fields(probe: dict, field_of) -> bytes:
    """``struct dc_kfields`` of a probe; ``field_of(system, event, name)`` gives a field's
    (offset, size) from tracefs and raises the engine's refusal when it has none."""
    system, event = probe["target"].split(":")
    fields = probe["fields"]
    places = {role: (0, 0, 0) for role in KFIELD_ROLES}
    rule = str(probe.get("bytes") or "")
    if rule.startswith("field:"):
        places["bytes"] = (*field_of(system, event, rule[len("field:"):]), 0)
    for role, name in fields.items():
        if role in _SHIFT:
            if places["offset"][1]:
                raise ValueError("a probe names one of the fields offset, page and sector")
            places["offset"] = (*field_of(system, event, name), _SHIFT[role])
        elif role in ("ino", "dev"):
            places[role] = (*field_of(system, event, name), 0)
    return _KFIELDS.pack(*(v for role in KFIELD_ROLES for v in places[role]),
                         1 if writes_inode(event) and places["ino"][1] else 0)


def writes_inode(event: str) -> bool:
    """Does this tracepoint fire when its task writes (or syncs) the inode it names?
    Only those make an inode the job's: reading, looking up or evicting (a job's
    drop_caches evicts every inode of the node) does not."""
    return any(w in event for w in WRITES)


def attach(obj, libbpf, probe: dict, index: int, field_of):
    """Fill ``ktp_fields[index]`` and attach dc_ktp to the probe's tracepoint."""
    packed = pack_fields(probe, field_of)      # ValueError: fields that cannot go together
    libbpf.map_update(obj.map_fd("ktp_fields"), struct.pack("<I", index), packed)
    system, event = probe["target"].split(":")
    return obj.attach_tracepoint(PROGRAM, system, event, index)


def dev_text(dev: int) -> str:
    """A kernel dev_t (MINORBITS 20) as ``major:minor``, as /proc/self/mountinfo has it."""
    return f"{dev >> 20}:{dev & 0xfffff}"


class KernelArgs:
    """The trace args of kernel-layer events: ``ino``, ``dev`` and ``async``."""

    def __init__(self, probes: list[dict]):
        self.ktp = np.array([wants_ktp(p) for p in probes] or [False])
        self.block = np.array([isinstance(p, dict) and p.get("target") == BLOCK_COMPLETE
                               for p in probes] or [False])
        self.active = bool(self.ktp.any() or self.block.any())

    def rows(self, ev: np.ndarray, args: list | None) -> list | None:
        """``args`` (one dict or None per row) with the kernel rows' args added."""
        probe = ev["probe"]
        ktp, block = self.ktp[probe], self.block[probe]
        rows = np.flatnonzero(ktp | block)
        if not len(rows):
            return args
        if args is None:
            args = [None] * len(ev)
        ino, dev, ret = ev["handle"][rows].tolist(), ev["flags"][rows].tolist(), \
            ev["ret"][rows].tolist()
        for r, i, d, rt, k in zip(rows.tolist(), ino, dev, ret, ktp[rows].tolist()):
            a = dict(args[r]) if args[r] else {}
            if i:
                a["ino"] = i
            if d:
                a["dev"] = dev_text(d)
            if k and rt == ASYNC_RET:
                a["async"] = 1
            if a:
                args[r] = a
        return args
