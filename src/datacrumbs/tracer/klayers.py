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
* a block request a kernel thread issued for pages of such an inode (its first page's
  page cache) is the job's too (dc_block_issue): its completion carries the inode in
  ``handle`` and is marked async;
* every other event (another process's, a kernel thread's work that names no inode the
  job wrote: journal commits, requests for metadata or other files) is left out.
"""

from __future__ import annotations

import struct

import numpy as np

from .objload import BLOCK_COMPLETE, KTP_PROGRAM, RAW_KTP_PROGRAMS, wants_ktp  # noqa: F401

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
# the program names and what needs them are decided before numpy is imported (objload)
PROGRAM, RAW_PROGRAMS = KTP_PROGRAM, RAW_KTP_PROGRAMS


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


def attach(obj, libbpf, probe: dict, index: int, field_of, *, raw: bool):
    """Attach the probe: as a raw tracepoint (dc_raw_ktp) when ``raw`` (the kernel takes
    raw tracepoints with cookies) and its arguments give what it asks for, else fill
    ``ktp_fields[index]`` and attach dc_ktp to its perf tracepoint."""
    system, event = probe["target"].split(":")
    for name in probe["fields"].values():      # the fields named must be the kernel's
        field_of(system, event, name)
    way = raw_way(probe) if raw else None
    if way is not None:
        libbpf.map_update(obj.map_fd("ktp_raw"), struct.pack("<I", index), pack_raw(probe, way))
        try:
            return libbpf.raw_tracepoint_link(obj.program_fd(RAW_PROGRAMS[way[0]]), event,
                                              index)
        except libbpf.AttachFailed:
            pass                # e.g. an event that is not a raw tracepoint: its perf event
    packed = pack_fields(probe, field_of)      # ValueError: fields that cannot go together
    libbpf.map_update(obj.map_fd("ktp_fields"), struct.pack("<I", index), packed)
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
        """``args`` (one dict or None per row) with the kernel rows' args added. Rows of
        one (inode, device, async) share one dict: a batch names few inodes."""
        probe = ev["probe"]
        ktp, block = self.ktp[probe], self.block[probe]
        rows = np.flatnonzero(ktp | block)
        if not len(rows):
            return args
        if args is None:
            args = [None] * len(ev)
        # a block request carries an inode only when a kernel thread issued it for the job
        late = ((ktp[rows] & (ev["ret"][rows] == ASYNC_RET))
                | (block[rows] & (ev["handle"][rows] != 0))).tolist()
        made: dict = {}
        for r, key in zip(rows.tolist(), zip(ev["handle"][rows].tolist(),
                                             ev["flags"][rows].tolist(), late)):
            a = made.get(key)
            if a is None:
                i, d, lt = key
                a = made[key] = {**({"ino": i} if i else {}), **({"dev": dev_text(d)} if d else {}),
                                 **({"async": 1} if lt else {})}
            if a:
                args[r] = {**args[r], **a} if args[r] else a
        return args


# -- raw tracepoints: the inode from the tracepoint's own arguments ---------------------
#
# A perf tracepoint costs an RCU grace period (about 40 ms) to detach, one at a time: 631
# XFS tracepoints took 25 s to stop. A raw tracepoint detaches at once but has no record,
# only the arguments of the kernel's trace call, whose types vmlinux's BTF gives
# (``btf_trace_<event>``). A probe whose fields are only its inode and device, and whose
# call takes (as its first or second argument) an object that leads to an inode, attaches
# ``dc_raw_ktp``/``dc_raw_ktp1`` that way; one whose record has only a device takes it from
# a super_block, xfs_mount or journal argument, or goes without it.

# enum dc_kraw_how: how dc_raw_ktp reaches the inode from the argument (struct name -> how)
RAW_HOW = {"inode": 1, "file": 2, "kiocb": 3, "folio": 4, "page": 5, "xfs_inode": 6,
           "dentry": 7, "address_space": 8}
RAW_DEV = {"super_block": 9, "xfs_mount": 10, "journal_s": 11}   # the device only
_KRAW = struct.Struct("<BBBB")                  # struct dc_kraw: arg, how, remember, pad
KRAW_SIZE = _KRAW.size
VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
MAX_RAW_ARG = len(RAW_PROGRAMS) - 1


def _btf_trace_protos(path: str = VMLINUX_BTF) -> dict[str, list]:
    """``btf_trace_<event>`` typedefs of a BTF file: event -> each argument's struct name
    when it is a pointer to a struct (else None), the leading ``void *`` left out."""
    with open(path, "rb") as f:            # sysfs: read, not mmap
        data = f.read(64 << 20)
    magic, _ver, _flags, hdr_len, type_off, type_len, str_off, str_len = \
        struct.unpack_from("<HBBIIIII", data, 0)
    if magic != 0xEB9F:
        return {}
    types = hdr_len + type_off
    strs = hdr_len + str_off
    end = types + type_len

    def name(off: int) -> str:
        e = data.find(b"\0", strs + off)
        return data[strs + off:e].decode()

    # kind -> bytes after the 12-byte header: fixed, per member
    fixed = {1: 4, 3: 12, 14: 4, 17: 4}
    per = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}
    kinds, refs, names, protos = [0], [0], [0], {}
    typedefs = []
    pos, tid = types, 1
    unpack = struct.unpack_from
    while pos < end:
        name_off, info, size_type = unpack("<III", data, pos)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        kinds.append(kind)
        refs.append(size_type)
        names.append(name_off)
        pos += 12
        if kind == 13:
            protos[tid] = [unpack("<II", data, pos + 8 * i)[1] for i in range(vlen)]
        elif kind == 8 and name_off:
            typedefs.append(tid)
        pos += fixed.get(kind, 0) + per.get(kind, 0) * vlen
        tid += 1

    def struct_of(t: int):
        # through const/volatile/restrict/typedef/type tags to a pointer, then to its struct
        seen = 0
        while kinds[t] in (8, 9, 10, 11, 18) and seen < 16:
            t, seen = refs[t], seen + 1
        if kinds[t] != 2:
            return None
        t = refs[t]
        while kinds[t] in (8, 9, 10, 11, 18) and seen < 32:
            t, seen = refs[t], seen + 1
        return name(names[t]) if kinds[t] == 4 else None

    out = {}
    for t in typedefs:
        n = name(names[t])
        if not n.startswith("btf_trace_"):
            continue
        ptr = refs[t]
        if kinds[ptr] != 2 or kinds[refs[ptr]] != 13:
            continue
        params = protos.get(refs[ptr], [])
        out[n[len("btf_trace_"):]] = [struct_of(p) for p in params[1:]]
    return out


_PROTOS: dict | None = None


def trace_protos() -> dict[str, list]:
    """This kernel's tracepoint argument types (read once; {} where BTF is unreadable)."""
    global _PROTOS
    if _PROTOS is None:
        try:
            _PROTOS = _btf_trace_protos()
        except (OSError, ValueError, struct.error):
            _PROTOS = {}
    return _PROTOS


def raw_way(probe: dict) -> tuple[int, int] | None:
    """(argument, how) for dc_raw_ktp, or None when the probe needs its record: it reads
    bytes or an offset, or no argument of its call leads to the inode (or the device,
    when that is all it asks for)."""
    fields = probe["fields"]
    if probe.get("bytes") or set(fields) - {"ino", "dev"}:
        return None
    args = trace_protos().get(probe["target"].split(":")[1])
    if args is None:
        return None
    args = args[:MAX_RAW_ARG + 1]
    for table in (RAW_HOW, RAW_DEV):
        for wanted, how in table.items():
            if wanted in args:
                return args.index(wanted), how
        if "ino" in fields:
            return None         # its record names an inode no argument leads to
    return 0, 0                 # only a device, which no argument leads to: left out


def pack_raw(probe: dict, way: tuple[int, int]) -> bytes:
    event = probe["target"].split(":")[1]
    return _KRAW.pack(way[0], way[1], 1 if writes_inode(event) and "ino" in probe["fields"]
                      else 0, 0)
