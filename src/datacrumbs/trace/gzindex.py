"""The member index a finished trace ends with: where each gzip member starts, for free.

To cut a trace over several workers the report needs member boundaries, and finding
them means inflating the whole file once more (a ninth of the report's CPU). The
writer knows them: at a clean close it appends the index as one or more *empty* gzip
members whose header carries an FEXTRA field (RFC 1952, 2.3.1.1) with our own subfield
``SI1 SI2 = "D" "x"``. A reader that does not know it sees empty members: ``gzip -t``,
``zcat``, Python's gzip and DFTracer's readers read the same text as without it.

The subfield's data (little-endian)::

    version u8 (1) | previous index member's offset u64 (NONE: the first) |
    per member: offset u64, events u32, its last 8 bytes (CRC32 + ISIZE)

An FEXTRA holds at most 65,535 bytes, so a long trace's index spans several members,
chained backwards from the one that ends the file.

The index is a hint, never the truth: :func:`read_index` takes it only when the file
ends with well-formed index members whose entries start at 0 and go up, each offset
starts a gzip member header and is preceded by the previous member's recorded trailer,
and the last entry's member ends where the index begins. A torn trace (no index at its
end), a trace appended after it or an index that lies is refused (None) and the reader
finds the members by inflating, as before. Workers that read a range cut at these
offsets check again as they inflate (report/merge.py).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

SUBFIELD = b"Dx"
VERSION = 1
NONE = (1 << 64) - 1
_HEAD = struct.Struct("<BQ")
_ENTRY = struct.Struct("<QI8s")
#: Header (10) + XLEN (2), empty final deflate block (2), CRC32 and ISIZE (8).
_FIXED = 12 + 2 + 8
#: Entries per index member: the whole FEXTRA (subfield header + data) fits 65,535 bytes.
PER_MEMBER = (0xFFFF - 4 - _HEAD.size) // _ENTRY.size
#: The tail read to find the last index member (it is at most this long).
_TAIL = _FIXED + 0xFFFF


@dataclass(frozen=True)
class Entry:
    offset: int         # where the member starts in the file
    events: int         # trace events it holds (metadata lines excluded)
    trailer: bytes      # its last 8 bytes: CRC32 and ISIZE


def pack(offset: int, events: int, trailer: bytes) -> bytes:
    """One entry as the index stores it (a long-running writer keeps 20 bytes a member)."""
    return _ENTRY.pack(offset, events, trailer)


def index_members(entries: list[Entry] | bytes, at: int) -> bytes:
    """The index members for ``entries`` (or the bytes of their :func:`pack`, in order), to be
    written at file offset ``at``."""
    if not isinstance(entries, (bytes, bytearray)):
        entries = b"".join(pack(e.offset, e.events, e.trailer) for e in entries)
    out = bytearray()
    prev = NONE
    step = PER_MEMBER * _ENTRY.size
    for first in range(0, max(len(entries), 1), step):
        data = _HEAD.pack(VERSION, prev) + bytes(entries[first:first + step])
        extra = SUBFIELD + struct.pack("<H", len(data)) + data
        prev = at + len(out)
        out += (b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff" + struct.pack("<H", len(extra)) +
                extra + b"\x03\x00" + b"\x00" * 8)
    return bytes(out)


def is_index_member(f, offset: int) -> bool:
    """Whether the (empty) member at ``offset`` of ``f`` is one of ours."""
    try:
        head = os.pread(f.fileno(), 16, offset)
    except OSError:
        return False
    return len(head) == 16 and head[:4] == b"\x1f\x8b\x08\x04" and head[12:14] == SUBFIELD


def _parse(member: bytes) -> tuple[int, list[Entry]] | None:
    """(previous offset, entries) of one whole index member, or None."""
    if len(member) < _FIXED or member[:4] != b"\x1f\x8b\x08\x04" or \
            member[-10:] != b"\x03\x00" + b"\x00" * 8:
        return None
    (xlen,) = struct.unpack_from("<H", member, 10)
    if 12 + xlen + 10 != len(member) or xlen < 4 + _HEAD.size:
        return None
    extra = member[12:12 + xlen]
    (n,) = struct.unpack_from("<H", extra, 2)
    if extra[:2] != SUBFIELD or 4 + n != xlen or (n - _HEAD.size) % _ENTRY.size:
        return None
    version, prev = _HEAD.unpack_from(extra, 4)
    if version != VERSION:
        return None
    entries = [Entry(o, ev, tr) for o, ev, tr in _ENTRY.iter_unpack(extra[4 + _HEAD.size:])]
    return prev, entries


def _last_member(f, end: int) -> tuple[int, bytes] | None:
    """The index member that ends the file at ``end``: (its offset, its bytes), or None."""
    lo = max(0, end - _TAIL)
    tail = os.pread(f.fileno(), end - lo, lo)
    at = len(tail)
    while True:
        at = tail.rfind(b"\x1f\x8b\x08\x04", 0, at)
        if at < 0:
            return None
        if len(tail) - at >= 12 and 12 + struct.unpack_from("<H", tail, at + 10)[0] + 10 \
                == len(tail) - at:
            return lo + at, tail[at:]


def read_index(f) -> list[Entry] | None:
    """The members listed by the index at the end of open trace ``f``, checked against
    the file (see the module doc); None when there is none or it does not hold."""
    try:
        size = os.fstat(f.fileno()).st_size
        found = _last_member(f, size)
        if found is None:
            return None
        at, member = found
        chunks: list[list[Entry]] = []
        end = size
        while True:
            got = _parse(member)
            if got is None or at + len(member) != end:
                return None
            prev, entries = got
            chunks.append(entries)
            if prev == NONE:
                break
            if prev >= at or len(chunks) > size // _FIXED:
                return None
            end = at
            member = os.pread(f.fileno(), min(_TAIL, at - prev), prev)
            at = prev
        entries = [e for chunk in reversed(chunks) for e in chunk]
        index_start = at
        if not entries or entries[0].offset != 0:
            return None
        ends = [e.offset for e in entries[1:]] + [index_start]
        fd = f.fileno()
        for e, stop in zip(entries, ends):
            if stop - e.offset < 18 or os.pread(fd, 3, e.offset) != b"\x1f\x8b\x08" or \
                    os.pread(fd, 8, stop - 8) != e.trailer:
                return None
        return entries
    except (OSError, struct.error, ValueError):
        return None
