"""What an I/O analyst acts on: per-file truth, layers without double counting.

:class:`Detail` is a mergeable partial like :class:`~.model.Aggregate` (it lives in
one). Partials merge exactly in trace order, so a trace split into member ranges gives
the same numbers as one pass:

* Per (node, process, file, class, layer) stream: operations, bytes, time, and the
  access pattern as Darshan counts it per process and file (consecutive: offset equal
  to the previous access's end; sequential: beyond it; random otherwise), with the
  offset of a ``read``/``write`` that has none followed from the opens and seeks
  before it. A partial keeps the first access of each stream unclassified and its
  offsets relative to the position it started at, so the merge classifies and shifts
  them once the earlier partial is known.
* Nesting on one thread: a thread's events come in the order they ended, so an event
  contains exactly the not-yet-claimed events before it that started after it (a
  stack). Each event's direct children give its layer's exclusive time and the
  cross-layer edges (H5Dwrite -> MPI_File_write_at -> pwrite64); an event no other
  event contains is "top level", and job I/O time sums only those. A partial keeps the
  events that emptied its stack ("open claims") and replays them against the earlier
  partial's stack on merge.

Bounds, where exactness gives way: a thread keeps its newest STACK_CAP unclaimed events
(a call containing more, across a chunk boundary, misses the oldest); a file keeps
EXTENTS_CAP distinct read extents and a (file, layer, class) SIZES_CAP distinct sizes;
reads and writes follow the file position each on its own (a descriptor read and written
in turn with read()/write() places them less well); an offset before the trace's first
open or seek of a stream is taken as 0. State grows with (process, file) pairs, not with
events: every file is kept (no sampling, unlike the model's top-file tables).
"""

from __future__ import annotations

import numpy as np

from . import groupstate as gs

LAYERS = {"HDF5": 5, "MPIIO": 4, "MPI": 4, "STDIO": 3, "POSIX": 2, "SYSCALL": 2,
          "VFS": 1, "BLOCK": 1,
          # the kernel-* sets' tracepoints (probes/kernel_sets.py): instants inside the
          # job's calls, never data operations, so their bytes are never job bytes
          "EXT4": 1, "XFS": 1, "IOMAP": 1, "FILEMAP": 1, "WRITEBACK": 1, "JBD2": 1,
          "IO_URING": 1}
LAYER_NAMES = {5: "HDF5", 4: "MPI-IO", 3: "STDIO", 2: "POSIX", 1: "kernel"}
OTHER_LAYER = 2                 # an unknown category is taken as a system-call layer
READ, WRITE, META, OTHER, WRITE2 = 0, 1, 2, 3, 4     # WRITE2: a copy's output file
CLASS_NAMES = ("read", "write", "metadata", "other")
READ_OPS = {"read", "pread64", "readv", "preadv", "preadv2", "fread", "fgets", "fgetc",
            "getc", "H5Dread", "H5Aread", "copy_file_range", "sendfile", "sendfile64",
            "splice", "vfs_read"}
WRITE_OPS = {"write", "pwrite64", "writev", "pwritev", "pwritev2", "fwrite", "fputs",
             "fprintf", "fputc", "putc", "H5Dwrite", "H5Awrite", "vfs_write"}
OTHER_OPS = {"mmap", "munmap", "clone", "clone3", "fork", "vfork", "dup", "dup2", "dup3",
             "tee", "vmsplice", "block_rq_issue", "block_rq_complete"}
OPEN_OPS = {"open", "openat", "openat2", "creat", "fopen", "fopen64", "freopen"}
SEEK_OPS = {"lseek", "llseek", "_llseek"}
COPY_OPS = {"copy_file_range", "sendfile", "sendfile64", "splice"}
IMPLICIT_OPS = {"read", "write", "readv", "writev", "fread", "fwrite", "fgets", "fputs",
                "fprintf", "fgetc", "fputc", "vfs_read", "vfs_write"}   # at the file position
O_CREAT, O_APPEND = 0o100, 0o2000
STACK_CAP = 2048                # unclaimed events kept per thread (oldest dropped)
EXTENTS_CAP = 65536             # distinct read extents kept per file
SIZES_CAP = 1024                # distinct access sizes kept per (file, layer, class)
ALIGN = 4096
FILE_KINDS = {"reg", "blk", "dir", "unknown"}      # what counts as file I/O


#: Fold each chunk's streams with the compiled trace/fold.c when the site has it; False:
#: numpy (the same numbers; tests run both).
FOLD = True
UNIQUE_HASH_MIN = 2048  # fewer keys: numpy is as quick as the call into fold.c
SUMS_C_MIN = 1024       # fewer values: numpy's bincount is as quick as the call
_FOLDER: list = []      # [the fold or None], looked up once per process


def _folder():
    """The site's compiled stream fold (trace/fastfold.py), or None."""
    if not FOLD:
        return None
    if not _FOLDER:
        from ..trace import fastfold

        _FOLDER.append(fastfold.for_site())
    return _FOLDER[0]


def op_class(name: str) -> int:
    if name in READ_OPS or name.startswith(("MPI_File_read", "MPI_File_iread")):
        return READ
    if name in WRITE_OPS or name.startswith(("MPI_File_write", "MPI_File_iwrite")):
        return WRITE
    if name in OTHER_OPS:
        return OTHER
    return META


class Stream:
    """Order-dependent state of one (node, pid, file, class, layer) stream.

    Positions are absolute (``abs`` True) or relative to the stream's position where
    this partial began; ``head`` is the first access, not yet classified. Read extents
    at absolute offsets go to the file (Detail.read_ext); ``ext_rel`` keeps the relative
    ones until a merge places them. ``pend`` holds the pairs (access, end of the one
    before) on different bases, classed once a merge puts both on one: compared as they
    are, an ftell (``lseek(fd, 0, SEEK_CUR)``) after reads a chunk began without an open
    or a seek made the next consecutive read look sequential."""

    __slots__ = ("pos", "pos_abs", "head", "last_end", "last_abs", "consec", "seq", "rand",
                 "ext_rel", "misaligned", "large", "pend")

    def __init__(self):
        self.pos, self.pos_abs = 0, False
        self.head = None            # (offset, is_abs)
        self.last_end, self.last_abs = None, False
        self.consec = self.seq = self.rand = 0
        self.ext_rel: list = []     # [(start, end)] relative to the partial's start position
        self.misaligned = self.large = 0
        self.pend: list = []        # [(offset, is_abs, previous end, is_abs)]

    # A partial holds one per stream (tens of thousands) and goes back to the parent
    # pickled: a tuple is about four times quicker to load than the slots' default state.
    def __getstate__(self) -> tuple:
        return tuple(getattr(self, k) for k in Stream.__slots__)

    def __setstate__(self, state: tuple) -> None:
        (self.pos, self.pos_abs, self.head, self.last_end, self.last_abs, self.consec,
         self.seq, self.rand, self.ext_rel, self.misaligned, self.large, self.pend) = state

    def _classify(self, off, prev) -> None:
        d = off - prev
        if d == 0:
            self.consec += 1
        elif d > 0:
            self.seq += 1
        else:
            self.rand += 1

    def _pair(self, off, off_abs, prev, prev_abs) -> None:
        """Class an access against the end of the one before once both are on one base."""
        if off_abs == prev_abs:
            self._classify(off, prev)
        else:
            self.pend.append((off, off_abs, prev, prev_abs))

    def absorb(self, b: "Stream") -> list:
        """Compose ``b``, the same stream's state in a later partial, after this one, in
        place; returns the read extents of ``b`` that became absolute."""
        shift, sabs = self.pos, self.pos_abs
        self.consec += b.consec
        self.seq += b.seq
        self.rand += b.rand
        self.misaligned += b.misaligned
        self.large += b.large
        resolved = []
        if b.ext_rel:
            moved = [(s + shift, e + shift) for s, e in b.ext_rel]
            if sabs:
                resolved = moved
            else:
                self.ext_rel = _merge_runs(self.ext_rel + moved)
        for off, oa, prev, pa in b.pend:    # b's relative positions, on this one's base
            self._pair(off if oa else off + shift, oa or sabs,
                       prev if pa else prev + shift, pa or sabs)
        if b.head is not None:
            h = b.head if b.head[1] else (b.head[0] + shift, sabs)
            if self.last_end is None:
                self.head = h
            else:
                self._pair(h[0], h[1], self.last_end, self.last_abs)
        if b.last_end is not None:
            if b.last_abs:
                self.last_end, self.last_abs = b.last_end, True
            else:
                self.last_end, self.last_abs = b.last_end + shift, sabs
        if b.pos_abs:
            self.pos, self.pos_abs = b.pos, True
        else:
            self.pos += b.pos
        return resolved

    def finish(self) -> list:
        """Classify the very first access (against offset 0); the extents still relative
        are taken from offset 0 (the position before the trace is unknown)."""
        if self.head is not None:
            self._classify(self.head[0], 0)
            self.head = None
        for off, _oa, prev, _pa in self.pend:   # the unknown base taken as 0, as the head
            self._classify(off, prev)
        self.pend = []
        rel, self.ext_rel = self.ext_rel, []
        return rel


def _merge_runs(iv: list) -> list:
    if len(iv) < 64:
        return iv
    return [tuple(x) for x in _union(np.array(iv, np.int64)).tolist()]


class Block:
    """A run of a thread's events kept as arrays on its stack (see Detail._nest): start,
    end, operation and file indices, 24 bytes an event."""

    __slots__ = ("ts", "end", "op", "fi", "pid", "flist", "okeys", "olay", "ocls")

    def __init__(self, ts, end, op, fi, pid, flist, okeys, olay, ocls):
        self.ts, self.end, self.op, self.fi, self.pid = ts, end, op, fi, pid
        self.flist, self.okeys, self.olay, self.ocls = flist, okeys, olay, ocls

    def __len__(self) -> int:
        return len(self.ts)

    def entries(self) -> list:
        ok, ol, oc, fl, pid = self.okeys, self.olay.tolist(), self.ocls.tolist(), self.flist, self.pid
        return [(t, e, ok[o], ol[o], fl[f], e - t, pid, oc[o]) for t, e, o, f in
                zip(self.ts.tolist(), self.end.tolist(), self.op.tolist(), self.fi.tolist())]

    def tail(self, k: int) -> "Block":
        n = len(self.ts)
        return Block(self.ts[n - k:], self.end[n - k:], self.op[n - k:], self.fi[n - k:],
                     self.pid, self.flist, self.okeys, self.olay, self.ocls)


def _trim(stack: list) -> None:
    """Keep the newest STACK_CAP entries of a thread's stack (blocks count their rows)."""
    total = 0
    for i in range(len(stack) - 1, -1, -1):
        x = stack[i]
        k = len(x) if x.__class__ is Block else 1
        if total + k > STACK_CAP:
            if x.__class__ is Block and STACK_CAP - total > 0:
                stack[i] = x.tail(STACK_CAP - total)
                del stack[:i]
            else:
                del stack[:i + 1]
            return
        total += k


_NO_EXT = np.zeros((0, 2), np.int64)


def _cat(*arrays) -> np.ndarray:
    parts = [x for x in arrays if len(x)]
    return parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else _NO_EXT


def _union(a: np.ndarray) -> np.ndarray:
    """The union of [start, end) rows as disjoint sorted rows."""
    if len(a) < 2:
        return a
    a = a[np.lexsort((a[:, 1], a[:, 0]))]
    starts, ends = a[:, 0], np.maximum.accumulate(a[:, 1])
    new = np.ones(len(a), bool)
    new[1:] = starts[1:] > ends[:-1]
    idx = np.flatnonzero(new)
    last = np.append(idx[1:] - 1, len(a) - 1)
    return np.stack([starts[idx], ends[last]], axis=1)


class Thread:
    """Nesting state of one (node, pid, tid)."""

    __slots__ = ("stack", "opens")

    def __init__(self):
        self.stack: list = []    # unclaimed (ts, end, op, layer, fkey, dur)
        self.opens: list = []    # events that emptied the stack: may claim earlier ones


class Detail:
    """The mergeable partial (see the module docstring)."""

    #: Fold each chunk's groups as arrays (groupstate.py); False: a table row and a Stream
    #: object per group, the reference the arrays must match (tests/test_report_groupstate.py).
    VECTOR = True

    def __init__(self):
        self.groups = gs.Groups(SIZES_CAP)   # table rows and streams as arrays, until _sync()
        self.table: dict = {}       # (src, pid, fkey, cls, layer) -> [count, bytes, ns, asked]
        self.streams: dict = {}     # same key (data classes) -> Stream
        self.span: dict = {}        # fkey -> [first ts µs, last end µs]
        self.sizes: dict = {}       # (fkey, layer, cls) -> {size: count}
        self.created: set = set()
        self.ftypes: dict = {}      # fkey -> {ftype: count}
        self.threads: dict = {}     # (src, pid, tid) -> Thread
        self.claimed: dict = {}     # (src, pid, fkey, layer) -> ns inside another event
        self.excl_adj: dict = {}    # layer -> ns of direct children (subtracted)
        self.edges: dict = {}       # (parent op, child op) -> [count, ns]
        self.read_ext: dict = {}    # fkey -> [arrays of [start, end) read, rows, rows at union]

    # -- adding ---------------------------------------------------------------------

    def add(self, source: str, rows: list, args: list, fks: list, ts: np.ndarray,
            dur: np.ndarray, size: np.ndarray, pid: np.ndarray, keys: list | None = None) -> None:
        """The complete events of one chunk, in trace order; ``fks`` their file keys.

        Sums go through numpy group by group, and the groups (table rows, streams,
        sizes) fold into arrays (groupstate.py); Python loops run over files, threads,
        copies and the events of threads whose calls nest, never over every event."""
        n = len(rows)
        if not n:
            return
        if keys is None:
            keys = [(r.get("cat"), r.get("name")) for r in rows]
        kidx: dict = {}
        try:
            op = [kidx.setdefault(k, len(kidx)) for k in keys]
        except TypeError:                   # an unhashable cat or name
            kidx, op = {}, None
        if op is None or not all(c.__class__ is str and m.__class__ is str for c, m in kidx):
            keys = [(c if c.__class__ is str else "", m if m.__class__ is str else "")
                    for c, m in ((x[0], x[1]) for x in keys)]
            kidx = {}
            op = [kidx.setdefault(k, len(kidx)) for k in keys]
        op = np.array(op, np.int64)
        fmap: dict = {None: 0}
        fi = np.array([fmap.setdefault(k, len(fmap)) for k in fks], np.int64)
        tid = np.nan_to_num(_arr([r.get("tid") for r in rows]), nan=-1).astype(np.int64)
        cnt = _arr([a.get("count", -1) for a in args])
        tmap: dict = {}
        ft = np.array([tmap.setdefault(t, len(tmap)) if t.__class__ is str else -1
                       for t in (a.get("ftype") for a in args)], np.int64)
        self.add_columns(source, op, list(kidx), fi, list(fmap), ts, dur, size, pid, tid, cnt,
                         ft, list(tmap), lambda i, k: args[i].get(k),
                         lambda idx: _arr([args[i].get("offset", -1) for i in idx.tolist()]),
                         lambda idx, k: _ints([args[i].get(k) for i in idx.tolist()]))

    def add_columns(self, source: str, op: np.ndarray, okeys: list, fi: np.ndarray, flist: list,
                    ts: np.ndarray, dur: np.ndarray, size: np.ndarray, pid: np.ndarray,
                    tid: np.ndarray, cnt: np.ndarray, ft: np.ndarray, ftlist: list, arg,
                    offsets, ints, pre: tuple | None = None) -> None:
        """One chunk as columns (report/columnar.py builds them without a dict per event):
        ``op`` indexes ``okeys`` ((cat, name) strings), ``fi`` indexes ``flist`` (its first
        entry None: no file), ``ft`` indexes ``ftlist`` (-1: no ftype), ``tid``/``cnt`` as
        _arr gives them; ``arg(i, key)`` is row i's arg as its dict holds it (asked of
        copies), ``offsets(rows)`` those rows' offsets as _arr gives, ``ints(rows, key)``
        (values, is an int) as int64 arrays, or None when an int does not fit one; ``pre``:
        (pid ranks as uniq gives them, dur in ns, size >= 0) when the caller has them."""
        n = len(op)
        if not n:
            return
        ocls = np.array([op_class(nm) for _, nm in okeys], np.int64)
        olay = np.array([LAYERS.get(c.upper(), OTHER_LAYER) for c, _ in okeys], np.int64)
        cls, layer = ocls[op], olay[op]
        pid = pid.astype(np.int64)
        ts_ns = np.rint(np.where(ts >= 0, ts, 0) * 1000).astype(np.int64)
        if pre is None:
            dur0 = np.where(dur >= 0, dur, 0)
            dur_ns = np.rint(dur0 * 1000).astype(np.int64)
            sz = np.where(size >= 0, size, 0).astype(np.int64)
            upid, pinv = uniq(pid, inverse=True)
        else:
            (upid, pinv), dur_ns, sz = pre
            dur0 = dur                  # the columnar path's dur is never negative
        data = (cls == READ) | (cls == WRITE)
        # (pid, file, class, layer) sums
        nf = len(flist)
        comp = ((pinv * nf + fi) * 5 + cls) * 6 + layer
        ukeys, ginv = uniq(comp, inverse=True)
        ng = len(ukeys)
        g_count = np.bincount(ginv, minlength=ng)
        g_ns = group_sums(ginv, dur_ns, ng)
        g_bytes = group_sums(ginv, np.where(data, sz, 0), ng)
        g_asked = group_sums(ginv, np.where(data & (cnt >= 0), cnt, 0).astype(np.int64), ng)
        table = self.table
        fids = None
        if self._vector():
            G = self.groups
            fids = G.file_ids(flist)
            G.add_table(G.rows(G.key(G.proc_ids(source, upid.tolist())[ukeys // (30 * nf)],
                                     fids[(ukeys // 30) % nf], (ukeys // 6) % 5, ukeys % 6)),
                        np.stack([g_count, g_bytes, g_ns, g_asked], axis=1))
            ukeys = ukeys[:0]
        for j, k in enumerate(ukeys.tolist()):
            lay, k = k % 6, k // 6
            c, k = k % 5, k // 5
            f, p = k % nf, k // nf
            key = (source, int(upid[p]), flist[f], c, lay)
            row = table.get(key)
            if row is None:
                table[key] = [int(g_count[j]), int(g_bytes[j]), int(g_ns[j]), int(g_asked[j])]
            else:
                row[0] += int(g_count[j]); row[1] += int(g_bytes[j])
                row[2] += int(g_ns[j]); row[3] += int(g_asked[j])
        named = fi > 0
        # first and last access of each file (µs as read)
        sel = named & (ts >= 0)
        if sel.any():
            uf, finv = uniq(fi[sel], inverse=True)
            lo = np.full(len(uf), np.inf)
            hi = np.full(len(uf), -np.inf)
            np.minimum.at(lo, finv, ts[sel])
            np.maximum.at(hi, finv, (ts + dur0)[sel])
            for f, a, b in zip(uf.tolist(), lo.tolist(), hi.tolist()):
                sp = self.span.get(flist[f])
                if sp is None:
                    self.span[flist[f]] = [a, b]
                else:
                    sp[0], sp[1] = min(sp[0], a), max(sp[1], b)
        # kinds of descriptor seen
        tsel = (ft >= 0) & (fi > 0)
        if tsel.any():
            nt = len(ftlist)
            pk, pc = uniq(fi[tsel] * nt + ft[tsel], counts=True)
            for k, c in zip(pk.tolist(), pc.tolist()):
                d = self.ftypes.setdefault(flist[k // nt], {})
                t = ftlist[k % nt]
                d[t] = d.get(t, 0) + c
        # access sizes per (file, layer, class)
        dsel = named & data
        if dsel.any():
            k1 = (fi[dsel] * 6 + layer[dsel]) * 5 + cls[dsel]
            pairs = _pairs(k1, sz[dsel])
            if fids is not None:
                self.groups.sizes.add(fids[pairs[0] // 30] * 30 + pairs[0] % 30, *pairs[1:])
                pairs = ((), (), ())
            for k, s_, c in zip(*(x.tolist() if len(x) else [] for x in pairs)):
                key = (flist[k // 30], (k // 5) % 6, k % 5)
                d = self.sizes.get(key)
                if d is None:
                    d = self.sizes[key] = {}
                if s_ in d or len(d) < SIZES_CAP:
                    d[s_] = d.get(s_, 0) + c
        # opens, seeks and copies: opens and seeks as arrays, copies (few) one by one
        kind_of = np.array([1 if nm in COPY_OPS else 2 if nm in OPEN_OPS else 3 if nm in SEEK_OPS
                            else 0 for _, nm in okeys], np.int64)
        r_rows = r_pos = np.zeros(0, np.int64)     # opens and seeks: row, new position
        if kind_of.any():
            rows = np.flatnonzero((kind_of[op] > 0) & named)
            k = kind_of[op[rows]]
            for i in rows[k == 1].tolist():
                fk2 = arg(i, "fhash2")
                if fk2.__class__ is str:
                    k2 = (source, int(pid[i]), fk2, WRITE2, int(layer[i]))
                    r2 = table.get(k2)
                    if r2 is None:
                        r2 = table[k2] = [0, 0, 0, 0]
                    r2[0] += 1; r2[1] += int(sz[i]); r2[2] += int(dur_ns[i])
                    t2 = arg(i, "ftype2")
                    if t2.__class__ is str:
                        d = self.ftypes.setdefault(fk2, {})
                        d[t2] = d.get(t2, 0) + 1
            o_rows, s_rows = rows[k == 2], rows[k == 3]
            ret_o, flags, ret_s = ints(o_rows, "ret"), ints(o_rows, "flags"), ints(s_rows, "ret")
            if ret_o is None or flags is None or ret_s is None:
                r_rows, r_pos = self._resets_one_by_one(rows[k > 1], okeys, op, fi, flist, arg)
            else:
                (rv, rint), (fv, fint), (sv, sint) = ret_o, flags, ret_s
                ok = ~rint | (rv >= 0)              # a failed open moves nothing
                for f in uniq(fi[o_rows[fint & ((fv & O_CREAT) != 0) & ok]]).tolist():
                    self.created.add(flist[f])
                o_keep = o_rows[ok & ~(fint & ((fv & O_APPEND) != 0))]
                good = sint & (sv >= 0) & (sv < 2 ** 62)
                r_rows = np.concatenate([o_keep, s_rows[good]])
                r_pos = np.concatenate([np.zeros(len(o_keep), np.int64), sv[good]])
                o = np.argsort(r_rows, kind="stable")
                r_rows, r_pos = r_rows[o], r_pos[o]
        resets = (r_rows, r_pos)
        self._streams(source, pid, fi, flist, cls, layer, sz, data & named, op, okeys, offsets,
                      resets, fids, (upid, comp))
        self._nest(source, pid, tid, ts_ns, dur_ns, op, okeys, olay, ocls, fi, flist)

    def _resets_one_by_one(self, rows, okeys, op, fi, flist, arg) -> tuple:
        """Opens and seeks whose ret or flags are not all int64 (a foreign trace's huge
        numbers): the same decisions, one row at a time with Python ints."""
        resets = []
        for i in rows.tolist():
            nm, r = okeys[op[i]][1], arg(i, "ret")
            if nm in OPEN_OPS:
                fl = arg(i, "flags")
                ok = type(r) is not int or r >= 0
                if type(fl) is int and fl & O_CREAT and ok:
                    self.created.add(flist[fi[i]])
                if ok and not (type(fl) is int and fl & O_APPEND):
                    resets.append((i, 0))
            elif type(r) is int and 0 <= r < 2 ** 62:
                resets.append((i, r))
        return (np.array([i for i, _ in resets], np.int64),
                np.array([p for _, p in resets], np.int64))

    def _vector(self) -> bool:
        """Fold groups as arrays, unless the dict state is in use (after _sync)."""
        return self.VECTOR and not self.streams and not self.sizes

    def _sync(self) -> None:
        """Move the array state into the table and stream dicts (once, for the summary)."""
        G = self.groups
        k, size, cnt = G.sizes.keys_in_order()
        for key, s_, c in zip(k.tolist(), size.tolist(), cnt.tolist()):
            r = key % 30
            d = self.sizes.setdefault((G.file_list[key // 30], r // 5, r % 5), {})
            if s_ in d or len(d) < SIZES_CAP:
                d[s_] = d.get(s_, 0) + c
        if not G.n:
            self.groups = gs.Groups(SIZES_CAP)
            return
        table, streams = self.table, self.streams
        for key, tab, st, ext, pend in G.items():
            if tab is not None:
                row = table.get(key)
                if row is None:
                    table[key] = tab
                else:
                    for j, v in enumerate(tab):
                        row[j] += v
            if st is not None:
                x = streams[key] = Stream()
                (x.consec, x.seq, x.rand, x.misaligned, x.large, x.pos, x.pos_abs, x.head,
                 x.last_end, x.last_abs) = st
                x.ext_rel = list(ext)
                x.pend = list(pend)
        self.groups = gs.Groups(SIZES_CAP)

    def _streams(self, source, pid, fi, flist, cls, layer, sz, acc, op, okeys, offsets,
                 resets, fids=None, keyed=None) -> None:
        """Access pattern and extents of each (pid, file, class, layer) stream, vectorised:
        an access without an offset starts where the stream's position is, i.e. the last
        open or seek plus the bytes of such accesses since."""
        ai = np.flatnonzero(acc)
        r_rows, r_pos = resets
        if not len(ai) and not len(r_rows):
            return
        offset = offsets(ai)
        implicit_op = np.array([nm in IMPLICIT_OPS for _, nm in okeys], bool)[op[ai]]
        explicit = (offset >= 0) & ~implicit_op
        # rows: accesses, then each reset once per class
        rows = np.concatenate([ai, r_rows, r_rows])
        kind = np.concatenate([np.where(explicit, 0, 1).astype(np.int8),
                               np.full(2 * len(r_rows), 2, np.int8)])
        val = np.concatenate([np.where(explicit, offset, 0).astype(np.int64), r_pos, r_pos])
        rsize = np.concatenate([sz[ai], np.zeros(2 * len(r_rows), np.int64)])
        nf = len(flist)
        if keyed is not None:           # the chunk's (pid, file, class, layer) keys, reused
            upid, comp = keyed
            cr = comp[r_rows] - cls[r_rows] * 6
            gk = np.concatenate([comp[ai], cr + READ * 6, cr + WRITE * 6])
        else:
            rcls = np.concatenate([cls[ai], np.full(len(r_rows), READ),
                                   np.full(len(r_rows), WRITE)])
            upid, pinv = uniq(pid[rows], inverse=True)
            gk = ((pinv * nf + fi[rows]) * 5 + rcls) * 6 + layer[rows]
        ug, ginv = uniq(gk, inverse=True)       # the streams, and each row's
        folder = _folder()
        got = None if folder is None else folder.streams(
            ai, ginv[:len(ai)], kind[:len(ai)], val[:len(ai)], rsize[:len(ai)], r_rows, r_pos,
            ginv[len(ai):len(ai) + len(r_rows)], ginv[len(ai) + len(r_rows):],
            (ug // 6) % 5 == READ)
        if got is not None:
            self._fold_streams(source, flist, nf, upid, ug, fids, got, rsize[:len(ai)],
                               ginv[:len(ai)])
            return
        order, gidx = _group_order(ginv, rows)  # by stream, then in trace order
        kind, val, rsize = kind[order], val[order], rsize[order]
        m, ng = len(gidx), len(ug)
        gstart = np.ones(m, bool)
        gstart[1:] = gidx[1:] != gidx[:-1]
        g_first = np.flatnonzero(gstart)
        is_reset = kind == 2
        segstart = gstart | is_reset
        seg = np.cumsum(segstart) - 1
        seg_first = np.flatnonzero(segstart)
        seg_abs = is_reset[seg_first]                   # segment begins at a known position
        seg_base = np.where(seg_abs, val[seg_first], 0)
        imp = np.where(kind == 1, rsize, 0)
        cs = np.cumsum(imp)
        before = cs - imp - (cs - imp)[seg_first][seg]  # implicit bytes earlier in the segment
        off = np.where(kind == 0, val, seg_base[seg] + before)
        off_abs = np.where(kind == 0, True, seg_abs[seg])
        # accesses only, per stream
        a = ~is_reset
        ai_g, aoff, aabs, asz, aexp = gidx[a], off[a], off_abs[a], rsize[a], kind[a] == 0
        na = len(ai_g)
        first = np.ones(na, bool)
        first[1:] = ai_g[1:] != ai_g[:-1]
        end = aoff + asz
        prev = np.empty(na, np.int64)
        prev[1:] = end[:-1]
        prev[:1] = 0
        prev_abs = np.empty(na, bool)
        prev_abs[1:] = aabs[:-1]
        prev_abs[:1] = True
        # an access and the one before on different bases: classed by Stream once known
        mixed = ~first & (aabs != prev_abs)
        d = aoff - prev
        cls_ = (d != 0).astype(np.int64) + (d < 0)     # consecutive 0, sequential 1, random 2
        cls_[first] = 3
        cls_[mixed] = 3                                 # classed once on one base (pend)
        large = aexp & (asz >= ALIGN)
        mis = large & ((aoff & (ALIGN - 1)) != 0)       # aoff % ALIGN (ALIGN a power of 2)
        pat = np.bincount(ai_g * 4 + cls_, minlength=ng * 4).reshape(ng, 4)[:, :3]
        n_large = np.bincount(ai_g[large], minlength=ng)
        n_mis = np.bincount(ai_g[mis], minlength=ng)
        n_acc = np.bincount(ai_g, minlength=ng)
        a_last = np.cumsum(n_acc) - 1
        a_first = a_last - n_acc + 1
        has = n_acc > 0
        if na:
            af, al = np.where(has, a_first, 0), np.where(has, a_last, 0)
            head_off, head_abs = aoff[af], aabs[af]
            last_end, last_abs = end[al], aabs[al]
        else:                       # opens and seeks only: positions, no access yet
            head_off = last_end = np.zeros(ng, np.int64)
            head_abs = last_abs = np.zeros(ng, bool)
        g_last = np.append(g_first[1:] - 1, m - 1)
        pend_j = ai_g[mixed]
        pend_v = np.stack([aoff[mixed], aabs[mixed], prev[mixed], prev_abs[mixed]],
                          axis=1).astype(np.int64)
        seg_last = np.append(seg_first[1:] - 1, m - 1)
        s_last = seg[g_last]
        sf = seg_first[s_last]
        pos = seg_base[s_last] + cs[g_last] - (cs[sf] - imp[sf])
        pos_abs = seg_abs[s_last]
        s0 = seg[g_first]                   # a stream's first segment: relative unless a reset
        rel_read = np.where(seg_abs[s0], 0, cs[seg_last[s0]] - (cs - imp)[seg_first[s0]])
        self._place_streams(source, flist, nf, upid, ug, fids, pat, n_large, n_mis, has,
                            head_off, head_abs, last_end, last_abs, pos, pos_abs, rel_read,
                            pend_j, pend_v)
        # absolute read extents, per file (runs of back-to-back reads as one)
        sel = aabs & (asz > 0) & (((ug // 6) % 5 == READ)[ai_g])
        if sel.any():
            sg, so, se = ai_g[sel], aoff[sel], end[sel]
            brk = np.ones(len(sg), bool)
            brk[1:] = (sg[1:] != sg[:-1]) | (so[1:] != se[:-1])
            starts = np.flatnonzero(brk)
            ends = np.append(starts[1:] - 1, len(sg) - 1)
            rf = ((ug // 30) % nf)[sg[starts]]
            runs = np.stack([so[starts], se[ends]], axis=1)
            o = np.argsort(rf, kind="stable")
            self._add_runs(flist, rf[o], runs[o])

    def _fold_streams(self, source, flist, nf, upid, ug, fids, got, a_sz, a_g) -> None:
        """_streams' last part with fold.c's results (trace order: put in stream order)."""
        (pat, n_large, n_mis, has, head_off, head_abs, last_end, last_abs, pos, pos_abs,
         rel_read, pend_g, pend_v, run_g, run_s, run_e) = got
        has_b = has == 1
        if not has_b.all():         # what numpy's gathers leave there (HAS says to ignore it)
            if has_b.any():
                hf = int(np.argmax(has_b))
                e0 = head_off[hf:hf + 1] + a_sz[np.argmax(a_g == hf):][:1]
                head_off[~has_b], head_abs[~has_b] = head_off[hf], head_abs[hf]
                last_end[~has_b], last_abs[~has_b] = e0[0], head_abs[hf]
            else:
                head_off[:] = head_abs[:] = last_end[:] = last_abs[:] = 0
        o = np.argsort(pend_g, kind="stable")
        self._place_streams(source, flist, nf, upid, ug, fids, pat, n_large, n_mis, has_b,
                            head_off, head_abs.astype(bool), last_end, last_abs.astype(bool),
                            pos, pos_abs.astype(bool), rel_read, pend_g[o], pend_v[o])
        if len(run_g):
            rf = ((ug // 30) % nf)[run_g]
            o = np.lexsort((run_g, rf))
            self._add_runs(flist, rf[o], np.stack([run_s[o], run_e[o]], axis=1))

    def _add_runs(self, flist, rf, runs) -> None:
        """Read runs ``runs`` of files ``rf`` (sorted) to each file's extents."""
        cut = np.flatnonzero(np.diff(rf)) + 1
        for f, part in zip(rf[np.append(0, cut)].tolist(), np.split(runs, cut)):
            self._add_extents(flist[f], part)

    def _place_streams(self, source, flist, nf, upid, ug, fids, pat, n_large, n_mis, has,
                       head_off, head_abs, last_end, last_abs, pos, pos_abs, rel_read,
                       pend_j, pend_v) -> None:
        """A chunk's per-stream results into the group arrays (or the Stream dicts)."""
        ng = len(ug)
        if fids is not None and self._vector():
            G = self.groups
            f_a, c_a = (ug // 30) % nf, (ug // 6) % 5
            ids = G.rows(G.key(G.proc_ids(source, upid.tolist())[ug // (30 * nf)], fids[f_a],
                               c_a, ug % 6))
            b = np.zeros((ng, gs.NCOL), np.int64)
            b[:, gs.CONSEC:gs.RAND + 1] = pat
            b[:, gs.MIS], b[:, gs.LARGE] = n_mis, n_large
            b[:, gs.HAS] = has
            b[:, gs.HEAD], b[:, gs.HEAD_ABS] = head_off, head_abs
            b[:, gs.LAST], b[:, gs.LAST_ABS] = last_end, last_abs
            b[:, gs.POS], b[:, gs.POS_ABS] = pos, pos_abs
            b[:, gs.IS_STREAM] = 1
            rr = rel_read
            ext_j = np.flatnonzero((c_a == READ) & (rr > 0))
            ext_se = np.stack([np.zeros(len(ext_j), np.int64), rr[ext_j]], axis=1)
            placed = G.add_streams(ids, b, ext_j, ext_se, fids[f_a], pend_j, pend_v)
            for fid, part in placed.items():
                self._add_extents(G.file_list[fid], part)
        else:
            self._fold_streams_ref(source, flist, upid, ug, nf, pat, n_large, n_mis, has,
                                   head_off, head_abs, last_end, last_abs, pos, pos_abs,
                                   rel_read, pend_j, pend_v)

    def _fold_streams_ref(self, source, flist, upid, ug, nf, pat, n_large, n_mis, has,
                          head_off, head_abs, last_end, last_abs, pos, pos_abs, rel_read,
                          pend_j, pend_v):
        """A chunk's streams folded one Stream object at a time: the reference for
        groupstate.Groups.add_streams."""
        pend_of: dict = {}
        for g, (o, oa, p_, pa) in zip(pend_j.tolist(), pend_v.tolist()):
            pend_of.setdefault(g, []).append((o, bool(oa), p_, bool(pa)))
        pat, n_large, n_mis = pat.tolist(), n_large.tolist(), n_mis.tolist()
        head_off, head_abs, last_end, last_abs = (x.tolist() for x in (head_off, head_abs,
                                                                        last_end, last_abs))
        has, pos, pos_abs, rel_read = has.tolist(), pos.tolist(), pos_abs.tolist(), rel_read.tolist()
        lay_g, c_g = (ug % 6).tolist(), ((ug // 6) % 5).tolist()
        f_g, p_g = ((ug // 30) % nf).tolist(), upid[ug // (30 * nf)].tolist()
        streams = self.streams
        placed: dict = {}                   # fk -> read extents made absolute by this chunk
        for j in range(len(ug)):
            st = Stream()
            st.consec, st.seq, st.rand = pat[j]
            st.large, st.misaligned = n_large[j], n_mis[j]
            if has[j]:
                st.head = (head_off[j], head_abs[j])
                st.last_end, st.last_abs = last_end[j], last_abs[j]
            st.pos, st.pos_abs = pos[j], pos_abs[j]
            st.pend = pend_of.get(j, [])
            fk = flist[f_g[j]]
            if c_g[j] == READ and rel_read[j] > 0:
                st.ext_rel = [(0, rel_read[j])]
            skey = (source, p_g[j], fk, c_g[j], lay_g[j])
            old = streams.get(skey)
            if old is None:
                streams[skey] = st
            else:
                resolved = old.absorb(st)
                if resolved:
                    placed.setdefault(fk, []).extend(resolved)
        for fk, rows in placed.items():     # one union check per file, not per stream
            self._add_extents(fk, np.array(rows, np.int64))

    def _add_extents(self, fk, rows: np.ndarray) -> None:
        """A file's read extents; unioned whenever they doubled since the last union."""
        e = self.read_ext.get(fk)
        if e is None:
            e = self.read_ext[fk] = [[], 0, 64]       # arrays, rows, rows at last union
        e[0].append(rows)
        e[1] += len(rows)
        if e[1] > 2 * e[2]:
            u = _union(_cat(*e[0]))[:EXTENTS_CAP]
            e[0], e[1], e[2] = [u], len(u), max(64, len(u))

    def _nest(self, source, pid, tid, ts_ns, dur_ns, op, okeys, olay, ocls, fi, flist) -> None:
        """Per-thread nesting. A thread whose every event starts after the previous one
        nests nothing in this chunk: only its first event can claim (from the stack left
        by earlier chunks), and its last STACK_CAP events stay as one array block, made
        into entries only if a later event reaches into them."""
        n = len(op)
        _, thr = uniq(pid * (int(tid.max()) - int(tid.min()) + 1) + (tid - int(tid.min()))
                      if n and _fits(pid, tid) else np.unique(np.stack([pid, tid]), axis=1,
                                                              return_inverse=True)[1].ravel(),
                      inverse=True)
        # np.lexsort((arange, tid, pid)): a stable sort of each event's thread rank
        if n and int(thr.max()) < 1 << 16:
            thr = thr.astype(np.uint16)
        order = np.argsort(thr, kind="stable")
        start = np.ones(n, bool)
        thr_s = thr[order]
        start[1:] = thr_s[1:] != thr_s[:-1]
        ts_s = ts_ns[order]
        cand = np.zeros(n, bool)
        cand[1:] = ~start[1:] & (ts_s[1:] <= ts_s[:-1])
        bounds = np.append(np.flatnonzero(start), n)
        # a thread's candidates (an event starting before the previous one), by thread
        gcand = np.bincount(thr_s[cand], minlength=len(bounds) - 1).tolist() if n else []
        first_i = order[bounds[:-1]]
        p_first, t_first = pid[first_i].tolist(), tid[first_i].tolist()
        end_ns = ts_ns + dur_ns
        threads = self.threads

        def ev(i):
            o = int(op[i])
            return (int(ts_ns[i]), int(end_ns[i]), okeys[o], int(olay[o]), flist[fi[i]],
                    int(dur_ns[i]), int(pid[i]), int(ocls[o]))

        for g in range(len(bounds) - 1):
            lo, hi = int(bounds[g]), int(bounds[g + 1])
            tk = (source, p_first[g], t_first[g])
            th = threads.get(tk)
            if th is None:
                th = threads[tk] = Thread()
            if gcand[g]:
                todo = order[lo:hi].tolist()
            else:
                todo = [int(order[lo])]
            for i in todo:
                e = ev(i)
                if self._claim(source, e, th.stack):
                    th.opens.append(e)
                th.stack.append(e)
            if not gcand[g] and hi - lo > 1:
                idx = order[max(lo + 1, hi - STACK_CAP):hi]
                th.stack.append(Block(ts_ns[idx], end_ns[idx], op[idx].astype(np.int32),
                                      fi[idx].astype(np.int32), p_first[g], flist, okeys,
                                      olay, ocls))
            _trim(th.stack)

    def _claim(self, source, ev, stack: list) -> bool:
        """``ev`` claims the events it contains from the top of ``stack``; True when it
        emptied it (it may contain events of an earlier partial too)."""
        t0, t1, key, layer = ev[0], ev[1], ev[2], ev[3]
        if (t1 <= t0 or key[0] == "BLOCK") and stack:
            # an instant (a tracepoint) contains nothing, nor does a block request: it spans
            # issue to completion while the thread's other requests are in flight
            return False
        while stack:
            c = stack[-1]
            if c.__class__ is Block:
                if c.ts[-1] < t0 or c.end[-1] > t1:
                    return False
                stack.pop()
                stack.extend(c.entries())
                continue
            if c[0] < t0 or c[1] > t1 or c[3] > layer:
                # a kernel event (a block request, from issue to completion) spans the
                # issuer's later calls without containing them: no layer is under a lower one
                return False
            stack.pop()
            ck = (source, c[6], c[4], c[3], c[7])
            self.claimed[ck] = self.claimed.get(ck, 0) + c[5]
            self.excl_adj[layer] = self.excl_adj.get(layer, 0) + c[5]
            e = self.edges.get((key, c[2]))
            if e is None:
                self.edges[(key, c[2])] = [1, c[5]]
            else:
                e[0] += 1; e[1] += c[5]
        return True

    # -- merging --------------------------------------------------------------------

    def merge(self, o: "Detail") -> None:
        """Add ``o``, a partial of the events after this one's."""
        if self._vector() and not o.streams and not o.sizes:
            G = self.groups
            _, placed = G.merge(o.groups)
            for fid, part in placed.items():
                self._add_extents(G.file_list[fid], part)
        else:
            self._sync()
            o._sync()
        for k, row in o.table.items():
            mine = self.table.get(k)
            if mine is None:
                self.table[k] = list(row)
            else:
                for j, v in enumerate(row):
                    mine[j] += v
        for k, st in o.streams.items():
            old = self.streams.get(k)
            if old is None:
                self.streams[k] = st
            else:
                resolved = old.absorb(st)
                if resolved:
                    self._add_extents(k[2], np.array(resolved, np.int64))
        for fk, (arrays, _, _) in o.read_ext.items():
            for arr in arrays:
                self._add_extents(fk, arr)
        for k, (a, b) in o.span.items():
            sp = self.span.get(k)
            if sp is None:
                self.span[k] = [a, b]
            else:
                sp[0], sp[1] = min(sp[0], a), max(sp[1], b)
        for k, d in o.sizes.items():
            mine = self.sizes.setdefault(k, {})
            for s, c in d.items():
                if s in mine or len(mine) < SIZES_CAP:
                    mine[s] = mine.get(s, 0) + c
        self.created |= o.created
        for k, d in o.ftypes.items():
            mine = self.ftypes.setdefault(k, {})
            for s, c in d.items():
                mine[s] = mine.get(s, 0) + c
        for tab in ("claimed", "excl_adj"):
            mine, other = getattr(self, tab), getattr(o, tab)
            for k, v in other.items():
                mine[k] = mine.get(k, 0) + v
        for k, (c, t) in o.edges.items():
            e = self.edges.get(k)
            if e is None:
                self.edges[k] = [c, t]
            else:
                e[0] += c; e[1] += t
        for tk, th in o.threads.items():
            mine = self.threads.get(tk)
            if mine is None:
                self.threads[tk] = th
                continue
            source = tk[0]
            opens = []
            for ev in th.opens:
                if self._claim(source, ev, mine.stack):
                    opens.append(ev)
            mine.opens.extend(opens)
            mine.stack.extend(th.stack)
            _trim(mine.stack)

    # -- the summary ----------------------------------------------------------------

    def finalize(self, hosts: dict, file_names: dict, mounts: dict, top: int = 10,
                 op_times: dict | None = None) -> dict:
        """Per-file rows, file counts, data per mount, layers and job I/O totals.

        ``hosts``: source -> host; ``file_names``: file key -> path; ``mounts``: host ->
        [(mount point, fs type)] from the trace headers."""
        def path_of(fk):
            if fk is None:
                return None
            return fk[1:] if fk.startswith("\0") else file_names.get(fk, f"<unresolved {fk}>")

        self._sync()
        kind_of: dict = {}

        def kind(fk):
            k = kind_of.get(fk)
            if k is None:
                d = self.ftypes.get(fk)
                if d:
                    k = max(sorted(d), key=lambda s: d[s])
                else:
                    p = path_of(fk) or ""
                    k = ("pipe" if p.startswith("pipe:") else "socket" if p.startswith("socket:")
                         else "anon" if p.startswith("anon_inode:") else "unknown")
                kind_of[fk] = k
            return k

        for k, st in self.streams.items():
            rel = st.finish()
            if rel:
                self._add_extents(k[2], np.array(rel, np.int64))
        # The lowest layer that saw each (node, pid, file, class) moves its bytes.
        lowest: dict = {}
        layers_present = {k[4] for k in self.table}
        skip_kernel = 2 in layers_present
        for (src, pid, fk, cls, layer), row in self.table.items():
            if skip_kernel and layer < 2:
                continue
            k = (src, pid, fk, cls)
            if row[0] and (k not in lowest or layer < lowest[k]):
                lowest[k] = layer
        low_data = {(src, pid, cls) for (src, pid, fk, cls), layer in lowest.items()
                    if fk is not None and layer <= 3}
        files: dict = {}
        per_kind: dict = {}
        proc_io: dict = {}
        for (src, pid, fk, cls, layer), row in self.table.items():
            k = (src, pid, fk, cls)
            if lowest.get(k) != layer:
                continue
            if fk is None and layer > 2 and (src, pid, cls) in low_data:
                continue            # e.g. H5Dwrite without a file, its POSIX calls seen
            fkind = self._kind_none(fk, cls, layer, kind)
            bucket = per_kind.setdefault(fkind, [0, 0, 0, 0])
            if cls == READ:
                bucket[0] += row[1]
            elif cls == WRITE:
                bucket[1] += row[1]
            if cls in (READ, WRITE):
                bucket[2] += row[0]
            if fk is None:
                continue
            path = path_of(fk)
            f = files.get(path)
            if f is None:
                f = files[path] = _new_file(path, fkind)
            c = 1 if cls == WRITE2 else cls
            name = CLASS_NAMES[c]
            if cls != WRITE2:
                f["ops"][name] += row[0]
                f["time_ns"][name] += row[2]
            if c in (READ, WRITE):
                f["bytes"][name] += row[1]
            if cls == WRITE2:
                f["ops"]["write"] += row[0]
            f["_procs"].add((hosts.get(src, src), pid))
            f["_layers"].add(layer)
            f["_keys"].add(fk)
            if c in (READ, WRITE) and fkind in FILE_KINDS:
                p = proc_io.setdefault((hosts.get(src, src), pid), [0, 0])
                p[0] += row[1]; p[1] += row[2]
            st = self.streams.get((src, pid, fk, cls, layer))
            if st is not None and cls in (READ, WRITE):
                pat = f["access"][name]
                pat["consecutive"] += st.consec
                pat["sequential"] += st.seq
                pat["random"] += st.rand
                f["_misaligned"] += st.misaligned
                f["_large"] += st.large
        # top-level time: every event's time minus that of events inside another
        top_time: dict = {}
        for (src, pid, fk, cls, layer), row in self.table.items():
            if cls == WRITE2:
                continue
            fkind = self._kind_none(fk, cls, layer, kind)
            top_time[fkind] = top_time.get(fkind, 0) + row[2]
        for (src, pid, fk, layer, cls), ns in self.claimed.items():
            fkind = self._kind_none(fk, cls, layer, kind)
            top_time[fkind] = top_time.get(fkind, 0) - ns
        out_files = []
        for f in files.values():
            fk_list = f.pop("_keys")
            first = min((self.span[k][0] for k in fk_list if k in self.span), default=None)
            last = max((self.span[k][1] for k in fk_list if k in self.span), default=None)
            f["first_us"], f["last_us"] = _r3(first), _r3(last)
            procs = f.pop("_procs")
            f["processes"] = len(procs)
            f["nodes"] = sorted({h for h, _ in procs})
            f["pids"] = sorted(p for _, p in procs)[:64]
            layers = f.pop("_layers")
            sizes: dict = {}
            for fk in fk_list:
                for lay in layers:
                    for c in (READ, WRITE):
                        for s, n in self.sizes.get((fk, lay, c), {}).items():
                            sizes[s] = sizes.get(s, 0) + n
            f["common_sizes"] = [[s, n] for s, n in
                                 sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))[:4]]
            f["small_requests"] = sum(n for s, n in sizes.items() if 0 < s < ALIGN)
            f["requests"] = sum(sizes.values())
            f["misaligned_requests"] = f.pop("_misaligned")
            f["large_requests"] = f.pop("_large")
            f.pop("_ext")
            ext = _union(_cat(*(a for fk in fk_list for a in self.read_ext.get(fk, [[]])[0])))
            f["read_extent_bytes"] = int((ext[:, 1] - ext[:, 0]).sum())
            f["created"] = any(k in self.created for k in fk_list)
            f["time_us"] = {k: v / 1000 for k, v in f.pop("time_ns").items()}
            f["time_us"] = {k: round(v, 3) for k, v in f["time_us"].items()}
            f["layer"] = LAYER_NAMES.get(min(layers), "POSIX") if layers else None
            mnt = _mount_of(f["path"], [m for h in f["nodes"] for m in mounts.get(h, [])])
            f["mount"], f["fs_type"] = mnt if mnt else (None, None)
            out_files.append(f)
        out_files.sort(key=lambda f: (-(f["bytes"]["read"] + f["bytes"]["write"]), f["path"]))
        counts = {"files": 0, "read_only": 0, "write_only": 0, "read_write": 0,
                  "metadata_only": 0, "created": 0}
        by_mount: dict = {}
        for f in out_files:
            if f["kind"] not in FILE_KINDS:
                continue
            counts["files"] += 1
            r, w = f["ops"]["read"] > 0, f["ops"]["write"] > 0
            counts["read_write" if r and w else "read_only" if r else "write_only" if w
                   else "metadata_only"] += 1
            counts["created"] += f["created"]
            mk = (f["mount"], f["fs_type"])
            m = by_mount.setdefault(mk, {"mount": mk[0], "fs_type": mk[1], "files": 0,
                                         "bytes_read": 0, "bytes_written": 0})
            m["files"] += 1
            m["bytes_read"] += f["bytes"]["read"]
            m["bytes_written"] += f["bytes"]["write"]
        file_io = [0, 0, 0, 0]
        apart: dict = {}
        for k, b in per_kind.items():
            if k in FILE_KINDS:
                for j in range(3):
                    file_io[j] += b[j]
            elif k != "none":
                a = apart.setdefault(k, {"kind": k, "bytes_read": 0, "bytes_written": 0,
                                         "operations": 0, "time_us": 0.0})
                a["bytes_read"] += b[0]; a["bytes_written"] += b[1]; a["operations"] += b[2]
        for k, ns in top_time.items():
            if k not in FILE_KINDS and k != "none":
                a = apart.setdefault(k, {"kind": k, "bytes_read": 0, "bytes_written": 0,
                                         "operations": 0, "time_us": 0.0})
                a["time_us"] = round(ns / 1000, 3)
        io_ns = sum(ns for k, ns in top_time.items() if k in FILE_KINDS)
        return {
            "io": {"bytes": file_io[0] + file_io[1], "bytes_read": file_io[0],
                   "bytes_written": file_io[1], "data_operations": file_io[2],
                   "time_us": round(io_ns / 1000, 3)},
            "not_file_io": sorted(apart.values(), key=lambda a: a["kind"]),
            "files": out_files,
            "file_counts": counts,
            "data_per_mount": sorted(by_mount.values(),
                                     key=lambda m: (-(m["bytes_read"] + m["bytes_written"]),
                                                    str(m["mount"]))),
            "layers": self._layers(),
            "layer_breakdown": self._chains(top, op_times or {}),
            "process_io": [{"host": h, "pid": p, "bytes": b, "time_us": round(t / 1000, 3)}
                           for (h, p), (b, t) in sorted(proc_io.items())],
        }

    @staticmethod
    def _kind_none(fk, cls, layer, kind) -> str:
        """A file's kind; without a file, data calls and layers above POSIX count as
        file I/O of unknown kind, other calls (mmap, clone) as none."""
        if fk is not None:
            return kind(fk)
        return "unknown" if layer > 2 or cls in (READ, WRITE) else "none"

    def add_counters(self, source: str, rows: list, args: list) -> None:
        """Profile-mode counter rows: operations, bytes and time per (process, probe)."""
        for r, a in zip(rows, args):
            name, cat = r.get("name"), r.get("cat")
            name = name if isinstance(name, str) else ""
            cat = cat if isinstance(cat, str) else ""
            pid = r.get("pid") if type(r.get("pid")) is int else -1
            key = (source, pid, None, op_class(name), LAYERS.get(cat.upper(), OTHER_LAYER))
            row = self.table.get(key)
            if row is None:
                row = self.table[key] = [0, 0, 0, 0]
            c, b, t = (a.get(k) for k in ("count", "bytes", "time_us"))
            row[0] += c if type(c) is int and c > 0 else 0
            row[1] += b if type(b) is int and b > 0 and key[3] in (READ, WRITE) else 0
            row[2] += int(round(t * 1000)) if type(t) in (int, float) and 0 <= t < 2.0 ** 53 else 0

    def _layers(self) -> list:
        out: dict = {}
        for (src, pid, fk, cls, layer), row in self.table.items():
            if cls == WRITE2:
                continue
            lay = out.setdefault(layer, {"layer": LAYER_NAMES.get(layer, str(layer)),
                                         "operations": 0, "bytes_moved": 0,
                                         "bytes_asked": 0, "inclusive_ns": 0})
            lay["operations"] += row[0]
            lay["bytes_moved"] += row[1]
            lay["bytes_asked"] += row[3]
            lay["inclusive_ns"] += row[2]
        res = []
        for layer in sorted(out, reverse=True):
            lay = out[layer]
            incl = lay.pop("inclusive_ns")
            lay["inclusive_us"] = round(incl / 1000, 3)
            lay["exclusive_us"] = round((incl - self.excl_adj.get(layer, 0)) / 1000, 3)
            res.append(lay)
        return res

    def _chains(self, top: int, op_times: dict) -> list:
        """The heaviest call chains: each top-level operation down its heaviest child."""
        inside: dict = {}
        children: dict = {}
        for (p, c), (n, t) in self.edges.items():
            inside[c] = inside.get(c, 0) + t
            children.setdefault(p, []).append((t, n, c))
        parents = sorted({p for p, _ in self.edges}, key=lambda p: (-sum(t for t, _, _ in children[p]), p))
        chains = []
        for p in parents:
            if p in inside:
                continue            # inside another operation: its chain starts higher
            n0, t0 = op_times.get(p, (0, 0))
            chain = [{"op": f"{p[0]}/{p[1]}", "calls": n0, "time_us": round(t0 / 1000, 3)}]
            cur, seen = p, {p}
            while cur in children:
                t, n, c = max(children[cur], key=lambda x: (x[0], x[1], x[2]))
                if c in seen:
                    break
                chain.append({"op": f"{c[0]}/{c[1]}", "calls": n, "time_us": round(t / 1000, 3)})
                seen.add(c)
                cur = c
            chains.append(chain)
        return chains[:top]


def _new_file(path: str, kind: str) -> dict:
    z = {"read": 0, "write": 0, "metadata": 0, "other": 0}
    return {"path": path, "kind": kind, "bytes": {"read": 0, "write": 0},
            "ops": dict(z), "time_ns": dict(z),
            "access": {"read": {"consecutive": 0, "sequential": 0, "random": 0},
                       "write": {"consecutive": 0, "sequential": 0, "random": 0}},
            "_procs": set(), "_layers": set(), "_keys": set(), "_ext": [],
            "_misaligned": 0, "_large": 0}


def _mount_of(path: str, mounts: list):
    best = None
    for mp, fs in mounts:
        if not isinstance(mp, str):
            continue
        if path == mp or path.startswith(mp.rstrip("/") + "/"):
            if best is None or len(mp) > len(best[0]):
                best = (mp, fs)
    return best


def _r3(v):
    return round(v, 3) if isinstance(v, float) else v


def _arr(values: list) -> np.ndarray:
    try:
        a = np.array(values, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        a = np.array([json_float(v) for v in values], dtype=np.float64)
    bad = ~np.isfinite(a) | (a < 0) | (a > 2.0 ** 53)
    if bad.any():
        a[bad] = -1
    return a


def json_float(v) -> float:
    """A JSON number as a float; anything else (or too large) NaN."""
    if type(v) in (int, float):
        try:
            return float(v)
        except OverflowError:
            pass
    return np.nan


def _ints(values: list):
    """(int64 values, is an int) of JSON values (bools and floats are not ints), or None
    when an int does not fit an int64."""
    is_int = [type(v) is int for v in values]
    try:
        vals = np.array([v if i else 0 for v, i in zip(values, is_int)], np.int64)
    except OverflowError:
        return None
    return vals, np.array(is_int, bool)


def _small_int(v) -> int:
    return v if type(v) is int and -1 <= v < 1 << 40 else -1


def group_sums(groups: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Exact int64 sums of int ``values`` per group 0..n-1 (int64 adds wrap, as numpy's
    do): in one pass in fold.c when the site has it, else float64 bincount, exact while
    every sum stays below 2**53, or integer adds past that."""
    if len(values) > SUMS_C_MIN and values.dtype.kind in "ib":
        folder = _folder()
        got = None if folder is None else folder.sums(groups, values, n)
        if got is not None:
            return got
    if len(values) and int(np.abs(values).max()) * len(values) >= 1 << 53:
        out = np.zeros(n, np.int64)
        np.add.at(out, groups, values.astype(np.int64))
        return out
    return np.rint(np.bincount(groups, weights=values, minlength=n)[:n]).astype(np.int64)


def uniq(keys: np.ndarray, *, inverse: bool = False, counts: bool = False):
    """``np.unique`` of int64 ``keys`` (same results) in O(n) when their range is small, as
    the report's keys (processes, files, streams of a chunk) usually are: counted in
    fold.c when the site has it (two passes), else with bincount (five); a wider range by
    hashing in fold.c (a chunk's (file, access size) pairs: a quarter of np.unique's
    time), else np.unique."""
    n = len(keys)
    if n:
        lo, hi = int(keys.min()), int(keys.max())
    if not n or hi - lo > 2 * n + 4096:
        folder = _folder() if n > UNIQUE_HASH_MIN and keys.dtype == np.int64 else None
        got = None if folder is None else folder.unique(keys, inverse, counts)
        if got is not None:
            return got
        return np.unique(keys, return_inverse=inverse, return_counts=counts) \
            if inverse or counts else np.unique(keys)
    if n > UNIQUE_HASH_MIN and keys.dtype == np.int64:     # counted in fold.c: one pass
        folder = _folder()
        got = None if folder is None else folder.unique(keys, inverse, counts, lo, hi - lo + 1)
        if got is not None:
            return got
    k = keys - lo if lo else keys
    c = np.bincount(k, minlength=hi - lo + 1)
    present = c > 0
    u = np.flatnonzero(present)
    out = [u + lo if lo else u]
    if inverse:
        out.append((np.cumsum(present) - 1)[k])
    if counts:
        out.append(c[u])
    return out[0] if len(out) == 1 else tuple(out)


def _group_order(rank: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(``np.lexsort((rows, rank))``, ``rank`` in that order) for distinct (rank, row)
    pairs, ``rank`` 0..k-1: rows put in order by a stable sort (a few sorted runs), then a
    stable radix sort of the ranks (16 bits when they fit)."""
    if len(rank) < 2:
        return np.arange(len(rank)), rank
    o1 = np.argsort(rows.astype(np.int32) if int(rows.max()) < 1 << 31 else rows, kind="stable")
    r1 = rank[o1]
    if int(rank.max()) < 1 << 16:
        r1 = r1.astype(np.uint16)
    o2 = np.argsort(r1, kind="stable")
    return o1[o2], r1[o2].astype(np.int64)


def _fits(pid: np.ndarray, tid: np.ndarray) -> bool:
    """pid * (tid range) + tid stays exact in an int64."""
    span = int(tid.max()) - int(tid.min()) + 1
    return int(np.abs(pid).max()) < (1 << 62) // span


def pair_counts(a: np.ndarray, b: np.ndarray) -> tuple[list, list, list]:
    """Distinct (a, b) pairs in (a, b) order and how often each occurs: what
    ``np.unique(np.stack([a, b]), axis=1, return_counts=True)`` gives, without its
    structured-array sort: ``a`` ranked by uniq, ``b`` by a hash (pandas.factorize), and
    the pairs' ranks counted as one key."""
    if not len(a):
        return [], [], []
    return tuple(x.tolist() for x in _pairs(a, b))


def _pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """pair_counts as arrays (a lexsort for a few pairs: the hash's set-up costs more).
    Non-negative integers whose pairs fit one int64 key ``a * (max(b) + 1) + b`` (the
    report's: file and layer keys with access sizes, operations with errnos) are counted
    as that key, in one uniq: a third of the time of ranking both sides, and no pandas
    in the report's workers (0.2 s of CPU each to import)."""
    if len(a) > 2048 and a.dtype.kind in "iu" and b.dtype.kind in "iu" and \
            int(a.min()) >= 0 and int(b.min()) >= 0:
        span = int(b.max()) + 1
        if (int(a.max()) + 1) * span < 1 << 62:
            k, c = uniq(a.astype(np.int64) * span + b.astype(np.int64), counts=True)
            return k // span, k % span, c
    if len(a) > 2048:
        import pandas as pd         # the report's dependency

        ua, ainv = uniq(a, inverse=True)
        codes, ub = pd.factorize(b)
        nb = len(ub)
    if len(a) > 2048 and len(ua) * nb < 1 << 62:
        o = np.argsort(ub, kind="stable")
        rank = np.empty(nb, np.int64)
        rank[o] = np.arange(nb)
        k, c = uniq(ainv * nb + rank[codes], counts=True)
        return ua[k // nb], np.asarray(ub)[o][k % nb], c
    o = np.lexsort((b, a))
    a, b = a[o], b[o]
    new = np.ones(len(a), bool)
    new[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    idx = np.flatnonzero(new)
    return a[idx], b[idx], np.diff(np.append(idx, len(a)))
