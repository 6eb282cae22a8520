"""A BPF ring buffer, mapped and read by this process without libbpf.

The daemon's events come through one (decoded with numpy, a batch at a time), file names
and the dlopen holds through others (records of any size, one by one).
"""

from __future__ import annotations

import mmap

import numpy as np

from ..errors import DatacrumbsError

_RB_BUSY, _RB_DISCARD = 1 << 31, 1 << 30      # a record header's flags (kernel/bpf/ringbuf.c)


class RingMismatch(DatacrumbsError):
    """The ring holds records of another size than this datacrumbs' object writes."""


class Ring:
    """A BPF ring buffer, mapped and decoded without libbpf.

    Layout (kernel/bpf/ringbuf.c): page 0 = consumer position (rw), page 1 =
    producer position, then the data area mapped twice in a row so a record
    that wraps is still contiguous. Each record has an 8-byte header
    (len | BUSY | DISCARD, page offset) and is padded to 8 bytes. Event
    records have one size (``per_record`` events, unused slots with ts 0:
    stage.py), so drain() decodes them all with numpy at once;
    drain_variable() walks records of any size (paths: rarer, one by one).
    """

    def __init__(self, fd: int, size: int, dtype: np.dtype | None = None, per_record: int = 1):
        page = mmap.PAGESIZE
        self.size, self.mask, self.page = size, size - 1, page
        self.dtype = dtype
        self.per_record = per_record        # events: a record holds stage.STAGE_N slots
        self.record = dtype.itemsize * per_record if dtype is not None else 0
        self.stride = (self.record + 8 + 7) & ~7 if dtype is not None else 0
        self._cons_map = mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._prod_map = mmap.mmap(fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ,
                                   offset=page)
        self._cons = np.frombuffer(self._cons_map, dtype="<u8", count=1)
        self._prod = np.frombuffer(self._prod_map, dtype="<u8", count=1)

    def pending(self) -> bool:
        return int(self._prod[0]) > int(self._cons[0])

    def drain(self) -> np.ndarray:
        cons = int(self._cons[0])
        prod = int(self._prod[0])
        n = min((prod - cons) // self.stride, self.size // self.stride)
        if n <= 0:
            return np.empty(0, self.dtype)
        start = self.page + (cons & self.mask)
        # The headers are read first (a record is committed when the kernel clears its
        # BUSY bit, after writing it), then the committed records are copied in one
        # sequential memcpy, and every later pass works on the copies: strided passes
        # over the shared pages each paid the cross-CPU cache misses again.
        hdr = np.ndarray((n,), "<u4", buffer=self._prod_map, offset=start,
                         strides=(self.stride,)).copy()
        busy = (hdr & _RB_BUSY) != 0
        if busy.any():
            n = int(np.argmax(busy))
            hdr = hdr[:n]
        if n == 0:
            return np.empty(0, self.dtype)
        raw = np.frombuffer(self._prod_map, np.uint8, count=n * self.stride, offset=start).copy()
        lengths = hdr & ~np.uint32(_RB_BUSY | _RB_DISCARD)
        if (lengths != self.record).any():
            raise RingMismatch("the BPF ring buffer holds records of an unexpected size: the BPF "
                               "object does not match this datacrumbs; run `datacrumbs build-bpf`")
        self._cons[0] = cons + n * self.stride
        keep = (hdr & _RB_DISCARD) == 0
        if self.per_record == 1:
            recs = np.ndarray((n,), self.dtype, buffer=raw, offset=8, strides=(self.stride,))
            return recs if keep.all() else recs[keep]
        # slots after a partial batch (and a discarded record's) have ts 0: no event's
        recs = np.ndarray((n, self.per_record), self.dtype, buffer=raw, offset=8,
                          strides=(self.stride, self.dtype.itemsize))
        keep = (recs["ts_ns"] != 0) & keep[:, None]
        # selected as opaque 80-byte items: numpy copies structured items field by field
        # (30 ns an event against 3)
        return recs.view(f"V{self.dtype.itemsize}")[keep].view(self.dtype)

    def drain_variable(self) -> list[bytes]:
        """Committed records of any size, oldest first: all of them up to the first one
        still being written (a record left for the next poll would miss its event)."""
        cons = int(self._cons[0])
        prod = int(self._prod[0])
        out: list[bytes] = []
        buf = self._prod_map
        pos = cons
        while pos < prod:
            off = self.page + (pos & self.mask)
            hdr = int.from_bytes(buf[off:off + 4], "little")
            if hdr & _RB_BUSY:
                break
            length = hdr & ~(_RB_BUSY | _RB_DISCARD)
            if not hdr & _RB_DISCARD:
                out.append(buf[off + 8:off + 8 + length])
            pos += (length + 8 + 7) & ~7
        self._cons[0] = pos
        return out

    def close(self) -> None:
        # numpy views pin the buffers: drop them before unmapping
        self._cons = self._prod = None
        for m in (self._cons_map, self._prod_map):
            try:
                m.close()
            except BufferError:
                pass
