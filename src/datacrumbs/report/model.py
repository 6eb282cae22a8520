"""The summary numbers of a job's traces, aggregated in bounded memory.

:class:`Aggregate` is a partial summary of any slice of the events (a member
range, a file, a node). Partials merge exactly and in any order: every sum is
an integer (times in nanoseconds: the trace's ``dur`` has three decimals of µs,
so nothing is rounded away before it is summed), latency percentiles come from
exact durations while an operation has at most ``EXACT_CAP`` of them and from a
fixed log-scale histogram after that, and the bandwidth timeline coarsens to the
smallest power-of-two bin width that fits ``TIMELINE_CAP`` bins. So a run split
across processes, or dask, gives the very same numbers as one sequential pass.
The finished summary gives times in microseconds with three decimals.

:meth:`Aggregate.finalize` turns it into the plain dict that the terminal,
HTML and JSON outputs all render.
"""

from __future__ import annotations

import errno as errno_mod
import gc
import hashlib
import math
import os
from dataclasses import dataclass, field

import numpy as np

from ..trace.reader import ReadStats, TraceMeta
from .timeviews import TimeViews
from .analysis import Detail, group_sums as _sums, json_float as _float, pair_counts, uniq

LAT_SUB = 8                         # log-scale bins per power of two of ns
LAT_BINS = 1 + LAT_SUB * 63         # bin 0 holds dur == 0, bin b [2**((b-1)/8), 2**(b/8)) ns
SIZE_BINS = 66                      # bin 0: 0 bytes; bin k: [2**(k-1), 2**k)
EXACT_CAP = 50_000                  # durations kept per operation for exact percentiles
TIMELINE_BASE_US = 10_000           # finest timeline bin: 10 ms
TIMELINE_CAP = 20_000               # non-empty (node, bin) cells kept
PERCENTILES = (50, 90, 99)
FILES_CAP = 200_000                 # distinct files kept exactly (see Aggregate._fit_files)
FILE_HASH_SPACE = 1 << 32
MAX_VALUE = 2.0 ** 53               # larger numbers in a trace are treated as missing
REPORT_FORMAT = "datacrumbs-report"
REPORT_VERSION = 1
_EMPTY: dict = {}


def _text(value) -> str:
    return value if isinstance(value, str) else ("" if value is None else str(value))


def _errno_message(code: int) -> str:
    """strerror of a trace's errno; a value no C int holds (a hostile or damaged trace) is
    an unknown error, not an OverflowError."""
    return os.strerror(code) if 0 < code < 1 << 31 else "unknown error"


def _numbers(values: list, default: float) -> np.ndarray:
    """Untrusted JSON values as float64; anything not a finite non-negative number -> default."""
    try:
        arr = np.array(values, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        arr = np.array([_float(v) for v in values], dtype=np.float64)
    bad = ~np.isfinite(arr) | (arr < 0) | (arr > MAX_VALUE)
    if bad.any():
        arr[bad] = default
    return arr


def _ns(us: np.ndarray) -> np.ndarray:
    """Sanitised µs values (at most MAX_VALUE) as integer nanoseconds, nearest: a trace's
    three decimals are whole nanoseconds, and 2**53 µs in ns still fits an int64."""
    return np.rint(us * 1000).astype(np.int64)


def us(ns) -> float:
    """Integer nanoseconds as microseconds with three decimals."""
    return round(int(ns) / 1000, 3)


def _log_bins(v: np.ndarray, sub: int, last: int) -> np.ndarray:
    """min(last, 1 + floor(log2(v) * sub)) of each v > 0, 0 for v == 0 (int64 v >= 0);
    without the masks when no v is 0 (most chunks' durations)."""
    pos = v > 0
    if pos.all():
        return np.minimum(last, 1 + np.floor(np.log2(v) * sub)).astype(np.int64)
    out = np.zeros(len(v), np.int64)
    out[pos] = np.minimum(last, 1 + np.floor(np.log2(v[pos]) * sub)).astype(np.int64)
    return out


def _floor_div(us: np.ndarray, width: int) -> np.ndarray:
    """``(us // width).astype(int64)`` of non-negative µs below 2**53 (exact: numpy's float
    ``//`` is the exact floor here), without its fmod: floor(us / width), then the rare
    quotient the rounded division put one off is corrected (q * width is exact)."""
    q = np.floor(us / width)
    q -= q * width > us
    q += (q + 1) * width <= us
    return q.astype(np.int64)


def _file_hash(key) -> int:
    """A stable 32-bit hash of a file key (the trace's own hash when it is one)."""
    if isinstance(key, str) and len(key) >= 8:
        try:
            return int(key[:8], 16)
        except ValueError:
            pass
    try:
        raw = str(key).encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:      # json.loads keeps a UTF-8 encoded surrogate ("\ud800")
        raw = str(key).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.sha256(raw).digest()[:4], "big")



@dataclass
class OpStats:
    count: int = 0          # operations (counter rows add their count)
    bytes: int = 0
    time_ns: int = 0
    errors: int = 0
    timed: int = 0          # operations with a duration (complete events)
    min_ns: int | None = None
    max_ns: int = 0
    counters: bool = False  # some numbers came from profile-mode counters
    lat_hist: np.ndarray = field(default_factory=lambda: np.zeros(LAT_BINS, np.int64))
    size_hist: np.ndarray = field(default_factory=lambda: np.zeros(SIZE_BINS, np.int64))
    exact: list | None = field(default_factory=list)

    def merge(self, o: "OpStats") -> None:
        self.count += o.count
        self.bytes += o.bytes
        self.time_ns += o.time_ns
        self.errors += o.errors
        self.timed += o.timed
        if o.min_ns is not None:
            self.min_ns = o.min_ns if self.min_ns is None else min(self.min_ns, o.min_ns)
        self.max_ns = max(self.max_ns, o.max_ns)
        self.counters |= o.counters
        self.lat_hist += o.lat_hist
        self.size_hist += o.size_hist
        if self.exact is None or o.exact is None or self.timed > EXACT_CAP:
            self.exact = None
        else:
            self.exact.extend(o.exact)


@dataclass
class Source:
    """One trace file: its metadata tables and what reading it found."""

    meta: TraceMeta = field(default_factory=TraceMeta)
    stats: ReadStats | None = None
    first_hhash: str | None = None

    def merge(self, o: "Source") -> None:
        self.meta.merge(o.meta)
        if o.stats is not None:
            if self.stats is None:
                self.stats = ReadStats(o.stats.path)
            self.stats.merge(o.stats)
        self.first_hhash = self.first_hhash or o.first_hhash


class Aggregate:
    """A mergeable partial summary (see the module docstring)."""

    def __init__(self):
        self.ops: dict[tuple[str, str], OpStats] = {}
        self.files: dict[str, list[int]] = {}           # file key -> [count, bytes, time_ns, hash]
        self.file_level = 0                             # files kept: hash < SPACE >> level
        self.nodes: dict[str, list[int]] = {}           # source -> [events, count, bytes, time_ns]
        self.procs: dict[tuple[str, int], list[int]] = {}
        self.errors: dict[tuple[str, str, int], int] = {}
        self.timeline: dict[tuple[str, int], int] = {}  # (source, bin) -> bytes
        self.bin_us = TIMELINE_BASE_US
        self.sources: dict[str, Source] = {}
        self.unreadable: dict[str, str] = {}
        self.run_summaries: dict[str, dict] = {}
        self.ts_min: float | None = None                # µs since the epoch
        self.ts_max: float | None = None
        self.other_events = 0
        self.timeviews = TimeViews()                    # per-process heatmap, node imbalance
        self.lost_counted = 0       # operations of counter rows marked events_lost (trace mode)
        self.detail = Detail()                          # per-file truth, layers (analysis.py)

    # -- adding ---------------------------------------------------------------

    def source(self, path: str) -> Source:
        src = self.sources.get(path)
        if src is None:
            src = self.sources[path] = Source()
        return src

    def add_events(self, records: list[dict], source: str) -> None:
        """Aggregate one chunk of raw event dicts read from ``source``.

        One list comprehension per field (much faster than one loop with many
        appends); values are sanitised when they become numpy arrays.
        """
        xs = [r for r in records if r.get("ph") == "X"]
        cs = [r for r in records if r.get("ph") == "C"] if len(xs) != len(records) else []
        self.other_events += len(records) - len(xs) - len(cs)
        rows = xs + cs if cs else xs
        if not rows:
            return
        nx, n = len(xs), len(rows)
        args = [r.get("args") for r in rows]
        if not all(type(a) is dict for a in args):
            args = [a if type(a) is dict else _EMPTY for a in args]
        xargs, cargs = args[:nx], args[nx:]
        raw_keys = [(r.get("cat"), r.get("name")) for r in rows]
        kidx: dict = {}
        try:
            op = [kidx.setdefault(k, len(kidx)) for k in raw_keys]
        except TypeError:
            kidx = {}
            op = [kidx.setdefault(k, len(kidx)) for k in ((_text(c), _text(m)) for c, m in raw_keys)]
        keys = [(_text(c), _text(m)) for c, m in kidx]
        fks = [a.get("fhash") for a in xargs]
        if None in fks:
            fks = [fk if fk is not None else
                   ("\0" + a["fname"] if type(a.get("fname")) is str else None)
                   for fk, a in zip(fks, xargs)]
        fidx: dict = {}
        try:
            fi = [fidx.setdefault(k, len(fidx)) for k in fks]
            if any(type(k) is not str for k in fidx if k is not None):
                raise TypeError     # a number or true as fhash: a file key is text
        except TypeError:
            fidx = {}
            fi = [fidx.setdefault(k if k is None else _text(k), len(fidx)) for k in fks]
        fil = np.full(n, -1, np.int64)
        if fi:
            fil[:nx] = fi
            none_i = fidx.pop(None, None)
            if none_i is not None:
                head = fil[:nx]
                head[head == none_i] = -1
                head[head > none_i] -= 1
        dur = [r.get("dur") for r in xs]
        size = [a.get("size", -1) for a in xargs]
        weight = np.ones(n, np.float64)
        if cs:
            dur += [a.get("time_us", 0) for a in cargs]
            size += [a.get("bytes", -1) for a in cargs]
            weight[nx:] = _numbers([a.get("count", 0) for a in cargs], 0)
            # trace mode: operations the kernel counted but could not send as events
            self.lost_counted += int(_numbers([a.get("events_lost", 0) for a in cargs], 0).sum())
        timed = np.zeros(n, bool)
        timed[:nx] = True
        errnos = np.zeros(n, np.int64)
        if nx:
            errnos[:nx] = _numbers([a.get("errno", 0) for a in xargs], 0)
            hh = xargs[0].get("hhash")
            if isinstance(hh, str):
                src = self.source(source)
                src.first_hhash = src.first_hhash or hh
        ts_a, dur_a, size_a = _numbers([r.get("ts") for r in rows], -1), _numbers(dur, 0), \
            _numbers(size, -1)
        pid_a = _numbers([r.get("pid") for r in rows], -1)
        self._add_arrays(source, keys, list(fidx), errnos,
                         np.array(op, np.int64), ts_a, dur_a, size_a, weight, pid_a, fil, timed)
        self.detail.add(source, xs, xargs,
                        [k if k is None or type(k) is str else _text(k) for k in fks],
                        ts_a[:nx], dur_a[:nx], size_a[:nx], pid_a[:nx], raw_keys[:nx])
        if cs:
            self.detail.add_counters(source, cs, cargs)
        two = [i for i, a in enumerate(xargs) if "fhash2" in a]
        if two:
            self._add_second_files([_text(xargs[i]["fhash2"]) for i in two],
                                   _numbers([size[i] for i in two], -1),
                                   _numbers([dur[i] for i in two], 0))

    def add_columns(self, cols, source: str) -> None:
        """One chunk of complete events as columns (report/columnar.py): the numbers
        add_events gives for the same events, without a dict per event."""
        n = cols.n
        if not n:
            return
        if isinstance(cols.hhash, str):
            src = self.source(source)
            src.first_hhash = src.first_hhash or cols.hhash
        pre = self._add_arrays(source, cols.keys, list(cols.fkeys), cols.errno.astype(np.int64),
                               cols.op, cols.ts, cols.dur, cols.size, np.ones(n, np.float64),
                               cols.pid, cols.fil, np.ones(n, bool))
        self.detail.add_columns(source, cols.op, cols.keys, cols.fil + 1, [None, *cols.fkeys],
                                cols.ts, cols.dur, cols.size, cols.pid, cols.tid.astype(np.int64),
                                cols.count, cols.ft, cols.ftlist, cols.arg, cols.offsets,
                                cols.ints, pre)
        if len(cols.two):
            self._add_second_files([_text(k) for k in cols.two_keys], cols.size[cols.two],
                                   cols.dur[cols.two])

    def _add_second_files(self, fkeys: list, size: np.ndarray, dur: np.ndarray) -> None:
        """A copy (copy_file_range, sendfile, splice, tee) moves its bytes from the file of
        ``fhash`` to the file of ``fhash2``: the second file is credited with the call, its
        bytes and its time as well, so each file of a copy shows the bytes that went
        through it. Operation, process and node totals count the call once."""
        idx: dict = {}
        fi = np.array([idx.setdefault(k, len(idx)) for k in fkeys], np.int64)
        nf = len(idx)
        fc = np.bincount(fi, minlength=nf)
        fb = _sums(fi, np.where(size >= 0, size, 0).astype(np.int64), nf)
        ft = _sums(fi, _ns(dur), nf)
        self._add_file_rows(idx, fc, fb, ft)

    def _add_file_rows(self, fkeys, fc, fb, ft) -> None:
        """Add per-file (count, bytes, ns) to the file table, sampled by hash when large."""
        limit = FILE_HASH_SPACE >> self.file_level
        for j, fk in enumerate(fkeys):
            row = self.files.get(fk)
            if row is None:
                h = _file_hash(fk)
                if h < limit:
                    self.files[fk] = [int(fc[j]), int(fb[j]), int(ft[j]), h]
            else:
                row[0] += int(fc[j]); row[1] += int(fb[j]); row[2] += int(ft[j])
        self._fit_files()

    def _add_arrays(self, source, keys, fkeys, errs, op, ts, dur, size, weight, pid, fil,
                    timed) -> tuple:
        """Returns what Detail.add_columns would compute again: (pid ranks, dur in ns,
        size >= 0)."""
        n_ops = len(keys)
        dur_i = _ns(dur)            # every time sum below is of integer nanoseconds
        # no counter rows (the columnar path's chunks, most others): every row timed, of
        # weight 1, and the selections below are the whole arrays
        plain = bool(timed.all())
        data = size >= 0
        size_i = np.where(data, size, 0).astype(np.int64)
        times = _sums(op, dur_i, n_ops)
        byts = _sums(op, size_i, n_ops)
        if plain:
            counts = timed_counts = np.bincount(op, minlength=n_ops)
            counter_rows = np.zeros(n_ops, np.int64)
            t_op, tdur, sel = op, dur_i, data
        else:
            counts = np.bincount(op, weights=weight, minlength=n_ops).astype(np.int64)
            timed_counts = np.bincount(op[timed], minlength=n_ops)
            counter_rows = np.bincount(op[~timed], minlength=n_ops)
            t_op, tdur, sel = op[timed], dur_i[timed], data & timed
        # Latency histogram over complete events only.
        tbin = _log_bins(tdur, LAT_SUB, LAT_BINS - 1)
        lat = np.bincount(t_op * LAT_BINS + tbin, minlength=n_ops * LAT_BINS).reshape(n_ops, LAT_BINS)
        # Access sizes over complete data events.
        ssz = size_i[sel]
        sbin = _log_bins(ssz, 1, SIZE_BINS - 1)
        sizes = np.bincount(op[sel] * SIZE_BINS + sbin, minlength=n_ops * SIZE_BINS).reshape(n_ops, SIZE_BINS)
        # Per-op durations, grouped by one stable sort.
        # a stable sort of small ints is numpy's radix sort (int64 keys take a merge sort)
        order = np.argsort(t_op.astype(np.int16) if n_ops < 1 << 15 else t_op, kind="stable")
        sorted_dur = tdur[order]
        bounds = np.concatenate(([0], np.cumsum(timed_counts)))
        failed = errs > 0
        err_counts = np.bincount(op[failed], minlength=n_ops)
        if failed.any():
            for oi, code, c in zip(*pair_counts(op[failed], errs[failed])):
                key = (keys[oi][0], keys[oi][1], code)
                self.errors[key] = self.errors.get(key, 0) + c
        for i, key in enumerate(keys):
            st = self.ops.get(key)
            if st is None:
                st = self.ops[key] = OpStats()
            st.count += int(counts[i])
            st.bytes += int(byts[i])
            st.time_ns += int(times[i])
            st.errors += int(err_counts[i])
            n_t = int(timed_counts[i])
            if n_t:
                d = sorted_dur[bounds[i]:bounds[i + 1]]
                lo, hi = int(d.min()), int(d.max())
                st.min_ns = lo if st.min_ns is None else min(st.min_ns, lo)
                st.max_ns = max(st.max_ns, hi)
                st.timed += n_t
                if st.exact is not None:
                    if st.timed > EXACT_CAP:
                        st.exact = None
                    else:
                        st.exact.append(d.copy())
            if counter_rows[i]:
                st.counters = True
            st.lat_hist += lat[i]
            st.size_hist += sizes[i]
        # Files.
        fmask = fil >= 0
        if fmask.any():
            fi = fil[fmask]
            nf = len(fkeys)
            fc = np.bincount(fi, minlength=nf)
            fb = _sums(fi, size_i[fmask], nf)
            ft = _sums(fi, dur_i[fmask], nf)
            self._add_file_rows(fkeys, fc, fb, ft)
        upid, pinv = uniq(pid.astype(np.int64), inverse=True)
        pb = _sums(pinv, size_i, len(upid))
        pt = _sums(pinv, dur_i, len(upid))
        self.timeviews.add(source, keys, op, ts, dur_i, size_i, None if plain else weight, pid,
                           timed, (upid, pinv), (times, pb, pt))
        # Node (= source file) and processes.
        node = self.nodes.setdefault(source, [0, 0, 0, 0])
        node[0] += len(op)
        node[1] += len(op) if plain else int(weight.astype(np.int64).sum())
        node[2] += int(size_i.sum())
        node[3] += int(dur_i.sum())
        pc = np.bincount(pinv, minlength=len(upid)) if plain else \
            np.bincount(pinv, weights=weight, minlength=len(upid)).astype(np.int64)
        for j, p in enumerate(upid.tolist()):
            row = self.procs.get((source, p))
            if row is None:
                self.procs[(source, p)] = [int(pc[j]), int(pb[j]), int(pt[j])]
            else:
                row[0] += int(pc[j]); row[1] += int(pb[j]); row[2] += int(pt[j])
        # Time range and bandwidth timeline (ts in µs as parsed: a double holds an epoch
        # time to about 0.25 µs, plenty for a wall time and 10 ms bins).
        valid = ts >= 0
        if valid.any():
            t0 = float(ts[valid].min())
            t1 = float((ts[valid] + dur[valid]).max())
            self.ts_min = t0 if self.ts_min is None else min(self.ts_min, t0)
            self.ts_max = t1 if self.ts_max is None else max(self.ts_max, t1)
            tl = valid & (size_i > 0)
            if tl.all():
                bins, binv = uniq(_floor_div(ts, self.bin_us), inverse=True)
                bb = _sums(binv, size_i, len(bins))
            elif tl.any():
                bins, binv = uniq(_floor_div(ts[tl], self.bin_us), inverse=True)
                bb = _sums(binv, size_i[tl], len(bins))
            if tl.any():
                for b, v in zip(bins.tolist(), bb.tolist()):
                    cell = (source, b)
                    self.timeline[cell] = self.timeline.get(cell, 0) + v
                self._fit_timeline()
        return (upid, pinv), dur_i, size_i

    def _rebin(self, width: int) -> None:
        if width == self.bin_us:
            return
        factor = width // self.bin_us
        out: dict = {}
        for (src, b), v in self.timeline.items():
            cell = (src, b // factor)
            out[cell] = out.get(cell, 0) + v
        self.timeline, self.bin_us = out, width

    def _fit_timeline(self) -> None:
        width = self.bin_us
        while len(self.timeline) > TIMELINE_CAP:
            width *= 2
            self._rebin(width)

    def _drop_files(self, level: int) -> None:
        if level > self.file_level:
            limit = FILE_HASH_SPACE >> level
            self.files = {k: r for k, r in self.files.items() if r[3] < limit}
            self.file_level = level

    def _fit_files(self) -> None:
        """Past FILES_CAP distinct files keep the files in a hash range that halves each time.

        A kept file was never dropped anywhere, so its numbers stay exact, and
        the range depends only on the set of files, not on how work was split.
        """
        level = self.file_level
        while len(self.files) > FILES_CAP:
            level += 1
            self._drop_files(level)

    def add_run_summary(self, path: str, summary: dict) -> None:
        """A daemon's ``*.summary.json`` (events lost, probes refused)."""
        self.run_summaries[path] = summary

    def add_unreadable(self, path: str, message: str) -> None:
        self.unreadable[path] = message

    # -- merging --------------------------------------------------------------

    def merge(self, o: "Aggregate") -> "Aggregate":
        for key, st in o.ops.items():
            mine = self.ops.get(key)
            if mine is None:
                self.ops[key] = st
            else:
                mine.merge(st)
        level = max(self.file_level, o.file_level)
        self._drop_files(level)
        limit = FILE_HASH_SPACE >> level
        for key, row in o.files.items():
            mine = self.files.get(key)
            if mine is None:
                if row[3] < limit:
                    self.files[key] = list(row)
            else:
                mine[0] += row[0]; mine[1] += row[1]; mine[2] += row[2]
        self._fit_files()
        for table in ("nodes", "procs"):
            mine_t, other_t = getattr(self, table), getattr(o, table)
            for key, row in other_t.items():
                mine = mine_t.get(key)
                if mine is None:
                    mine_t[key] = list(row)
                else:
                    for i, v in enumerate(row):
                        mine[i] += v
        for key, c in o.errors.items():
            self.errors[key] = self.errors.get(key, 0) + c
        width = max(self.bin_us, o.bin_us)
        self._rebin(width)
        factor = width // o.bin_us
        for (src, b), v in o.timeline.items():
            cell = (src, b // factor)
            self.timeline[cell] = self.timeline.get(cell, 0) + v
        self._fit_timeline()
        for path, src in o.sources.items():
            self.source(path).merge(src)
        self.unreadable.update(o.unreadable)
        self.run_summaries.update(o.run_summaries)
        for name, pick in (("ts_min", min), ("ts_max", max)):
            a, b = getattr(self, name), getattr(o, name)
            setattr(self, name, b if a is None else a if b is None else pick(a, b))
        self.other_events += o.other_events
        self.timeviews.merge(o.timeviews)
        self.lost_counted += o.lost_counted
        self.detail.merge(o.detail)
        return self

    # -- the summary ------------------------------------------------------------

    def _hosts(self) -> dict[str, str]:
        """Source file -> host name (header, else the events' host hash, else the file name)."""
        hosts = {}
        all_hosts: dict[str, str] = {}
        for src in self.sources.values():
            all_hosts.update(src.meta.hosts)
        for path in set(self.sources) | set(self.nodes):
            src = self.sources.get(path) or Source()
            header = src.meta.header or {}
            host = header.get("host") if isinstance(header.get("host"), str) else None
            if not host and src.first_hhash:
                host = all_hosts.get(src.first_hhash)
            hosts[path] = host or os.path.basename(path)
        return hosts

    def finalize(self, top: int = 10) -> dict:
        """The plain, JSON-serialisable summary every output renders."""
        hosts = self._hosts()
        file_names: dict[str, str] = {}
        for src in self.sources.values():
            file_names.update(src.meta.files)
        ops = []
        for (cat, name), st in self.ops.items():
            ops.append({
                "category": cat, "name": name, "count": st.count, "bytes": st.bytes,
                "time_us": us(st.time_ns),
                "mean_us": round(st.time_ns / st.count / 1000, 3) if st.count else 0.0,
                "bandwidth_Bps": round(st.bytes / (st.time_ns / 1e9), 1) if st.time_ns and st.bytes else 0.0,
                "errors": st.errors,
                "latency_us": _latency(st),
                "from_counters": st.counters,
            })
        ops.sort(key=lambda o: (-o["time_us"], -o["count"], o["category"], o["name"]))

        files = []      # time_us holds nanoseconds until _in_us: sums stay exact integers
        for key, (c, b, t, _h) in self.files.items():
            path = key[1:] if key.startswith("\0") else file_names.get(key, f"<unresolved {key}>")
            files.append({"path": path, "count": c, "bytes": b, "time_us": t})
        merged_files: dict[str, dict] = {}
        for f in files:
            m = merged_files.setdefault(f["path"], {"path": f["path"], "count": 0, "bytes": 0, "time_us": 0})
            for k in ("count", "bytes", "time_us"):
                m[k] += f[k]
        files = list(merged_files.values())
        _in_us(files)
        by_bytes = sorted(files, key=lambda f: (-f["bytes"], -f["time_us"], f["path"]))[:top]
        by_time = sorted(files, key=lambda f: (-f["time_us"], -f["bytes"], f["path"]))[:top]

        # a process's display name: its command, and its rank in the job when its
        # launcher set one (Flux, MPI), as rows of a rank-ordered heatmap are read
        names: dict[tuple[str, int], str] = {}
        ranks: dict[tuple[str, int], int] = {}
        for path, src in self.sources.items():
            host = hosts.get(path, path)
            for pid, rank in src.meta.process_ranks.items():
                ranks.setdefault((host, pid), rank)
            for pid, comm in src.meta.process_names.items():
                rank = ranks.get((host, pid))
                names.setdefault((host, pid), comm if rank is None else f"{comm}, rank {rank}")
        nodes: dict[str, dict] = {}
        for path, (ev, c, b, t) in self.nodes.items():
            host = hosts[path]
            n = nodes.setdefault(host, {"host": host, "events": 0, "count": 0, "bytes": 0,
                                        "time_us": 0, "processes": 0})
            n["events"] += ev; n["count"] += c; n["bytes"] += b; n["time_us"] += t
        procs: dict[tuple[str, int], dict] = {}
        for (path, pid), (c, b, t) in self.procs.items():
            host = hosts[path]
            p = procs.setdefault((host, pid), {"host": host, "pid": pid,
                                               "name": names.get((host, pid), ""),
                                               "rank": ranks.get((host, pid)),
                                               "count": 0, "bytes": 0, "time_us": 0})
            p["count"] += c; p["bytes"] += b; p["time_us"] += t
        for path, src in self.sources.items():      # a node that traced but did no I/O
            if src.meta.header and isinstance(src.meta.header.get("host"), str):
                host = hosts[path]
                nodes.setdefault(host, {"host": host, "events": 0, "count": 0, "bytes": 0,
                                        "time_us": 0, "processes": 0})
        for (host, _pid) in procs:
            nodes[host]["processes"] += 1
        _in_us(nodes.values())
        _in_us(procs.values())
        node_list = sorted(nodes.values(), key=lambda n: n["host"])
        proc_list = sorted(procs.values(), key=lambda p: (-p["bytes"], -p["time_us"], p["host"], p["pid"]))

        by_errno: dict[int, dict] = {}
        for (cat, name, code), c in sorted(self.errors.items(), key=lambda kv: kv[0]):
            e = by_errno.setdefault(code, {"errno": code, "name": errno_mod.errorcode.get(code, "unknown"),
                                           "message": _errno_message(code),
                                           "count": 0, "operations": {}})
            e["count"] += c
            e["operations"][f"{cat}/{name}"] = c
        errors = sorted(by_errno.values(), key=lambda e: (-e["count"], e["errno"]))

        series: dict[str, dict[int, int]] = {}
        for (path, b), v in self.timeline.items():
            s = series.setdefault(hosts[path], {})
            s[b] = s.get(b, 0) + v
        timeline = {"bin_us": self.bin_us,
                    "series": {h: [[b * self.bin_us, s[b]] for b in sorted(s)] for h, s in sorted(series.items())}}

        read = []
        for path in sorted(self.sources):
            st = self.sources[path].stats
            if st is not None:
                d = st.as_dict()
                d["host"] = hosts.get(path, "")
                read.append(d)
        headers = [s.meta.header for s in self.sources.values() if s.meta.header]
        jobs = sorted({str(h.get("job")) for h in headers if h.get("job") is not None})
        users = sorted({str(h.get("user")) for h in headers if h.get("user") is not None})
        modes = sorted({str(h.get("mode")) for h in headers if h.get("mode") is not None})

        lost, names_lost, refused, incomplete = 0, 0, {}, []
        libraries: dict = {}    # library path -> row: files of probed families, per host
        totals_exact = True
        warnings: list = []
        for path, summ in sorted(self.run_summaries.items()):
            _add_libraries(libraries, summ)
            for w in _list(summ.get("warnings")):
                if isinstance(w, str) and w not in warnings:
                    warnings.append(w)
            lost += _int(summ.get("events_lost"))
            if _int(summ.get("events_lost")) and summ.get("totals_exact") is not True:
                totals_exact = False
            names_lost += _int(summ.get("names_lost"))
            if summ.get("complete") is False:
                incomplete.append(path)
            for pr in _list(summ.get("probes_refused")):
                if isinstance(pr, dict):
                    key = (_text(pr.get("id")), _text(pr.get("reason")))
                    r = refused.setdefault(key, {"id": key[0], "kind": _text(pr.get("kind")),
                                                 "target": _text(pr.get("target")),
                                                 "reason": key[1], "hosts": []})
                    host = _text(summ.get("host"))
                    if host and host not in r["hosts"]:
                        r["hosts"].append(host)
        start = self.ts_min
        if start is None:
            hts = [h.get("ts") for h in headers if isinstance(h.get("ts"), int)]
            start = min(hts) if hts else None
        end = self.ts_max if self.ts_max is not None else start
        total_count = sum(o["count"] for o in ops)
        mounts: dict = {}
        for path, src in self.sources.items():
            m = (src.meta.header or {}).get("mounts")
            if isinstance(m, list):
                mounts.setdefault(hosts.get(path, path), []).extend(
                    tuple(x) for x in m if isinstance(x, list) and len(x) == 2)
        detail = self.detail.finalize(hosts, file_names, mounts, top,
                                      {k: (st.count, st.time_ns) for k, st in self.ops.items()})
        summary = {
            "format": REPORT_FORMAT, "version": REPORT_VERSION,
            "job": {"jobs": jobs, "users": users, "modes": modes,
                    "nodes": len(node_list), "processes": len(proc_list),
                    "start_us": _round3(start), "end_us": _round3(end),
                    "wall_time_s": round((end - start) / 1e6, 6) if start is not None else 0.0},
            "totals": {"events": sum(n["events"] for n in node_list),
                       "operations": total_count,
                       # file I/O, each byte once (the lowest layer that moved it) and
                       # each second once (the outermost call); all events' sums apart
                       "bytes": detail["io"]["bytes"],
                       "bytes_read": detail["io"]["bytes_read"],
                       "bytes_written": detail["io"]["bytes_written"],
                       "time_us": detail["io"]["time_us"],
                       "bytes_all_events": sum(o["bytes"] for o in ops),
                       "time_all_events_us": us(sum(st.time_ns for st in self.ops.values())),
                       "errors": sum(o["errors"] for o in ops),
                       "files": len(files) << self.file_level,
                       "files_sampled": 1 / (1 << self.file_level) if self.file_level else None},
            "operations": ops,
            "top_files_by_bytes": by_bytes,
            "top_files_by_time": by_time,
            "nodes": node_list,
            "processes": proc_list[:top],
            "errors": errors,
            "timeline": timeline,
            "timeviews": self.timeviews.finalize(hosts, names, [n["host"] for n in node_list]),
            "access_sizes": {f"{c}/{n}": _size_bins(st) for (c, n), st in sorted(self.ops.items())
                             if st.size_hist.any()},
            "latency_histograms": {f"{c}/{n}": _lat_bins(st) for (c, n), st in sorted(self.ops.items())
                                   if st.lat_hist.any()},
            "traces": read,
            "unreadable": [{"path": p, "error": m} for p, m in sorted(self.unreadable.items())],
            "events_lost": lost,
            # trace mode: the kernel counted the operations of lost events, and the traces
            # hold those counts, so operation, process and node totals are exact
            "totals_exact": totals_exact,
            "lost_counted": self.lost_counted,
            "names_lost": names_lost,   # events in the traces without their file name
            "runs": len(self.run_summaries),
            "incomplete_runs": incomplete,
            "probes_refused": sorted(refused.values(), key=lambda r: (r["id"], r["reason"])),
            # libraries of probed families the tracers attached to or missed (warnings)
            "libraries": sorted(libraries.values(), key=lambda r: (r["status"], r["path"])),
            "warnings": warnings,
        }
        for row in detail["process_io"]:
            row["name"] = names.get((row["host"], row["pid"]), "")
            row["rank"] = ranks.get((row["host"], row["pid"]))
        for k in ("files", "file_counts", "data_per_mount", "layers", "layer_breakdown",
                  "not_file_io", "process_io"):
            summary[k] = detail[k]
        from .findings import findings
        return {"findings": findings(summary), **summary}


def _add_libraries(out: dict, summ: dict) -> None:
    """A run summary's ``libraries`` rows, merged by (path, status) with the hosts."""
    host = _text(summ.get("host"))
    for lib in _list(summ.get("libraries")):
        if not isinstance(lib, dict) or lib.get("status") not in ("attached", "not attached"):
            continue
        key = (_text(lib.get("path")), _text(lib.get("status")))
        row = out.setdefault(key, {"path": key[0], "status": key[1],
                                   "family": _text(lib.get("family")),
                                   "reason": _text(lib.get("reason")) if lib.get("reason") else None,
                                   "signed": lib.get("signed") is True, "hosts": []})
        if host and host not in row["hosts"]:
            row["hosts"].append(host)


def _in_us(rows) -> None:
    """Each row's ``time_us``, summed in integer nanoseconds, in microseconds."""
    for row in rows:
        row["time_us"] = us(row["time_us"])


def _round3(t):
    return round(t, 3) if isinstance(t, float) else t


def _list(v) -> list:
    """A run summary's list field; anything else (the file is the job user's) is empty."""
    return v if isinstance(v, list) else []


def _int(v) -> int:
    return int(v) if type(v) is int and v >= 0 else 0


def lat_edge(b: int) -> float:
    """Upper edge in µs of latency bin ``b`` (bins are fractions of a power of two of ns,
    so sub-microsecond calls get bins of their own)."""
    return 0.0 if b == 0 else 2.0 ** (b / LAT_SUB) / 1000


def _sig(x: float) -> float:
    return float(f"{x:.4g}")


def _latency(st: OpStats) -> dict | None:
    """Latency in µs (three decimals): min, max, percentiles."""
    if not st.timed:
        return None
    out = {"min": us(st.min_ns or 0), "max": us(st.max_ns)}
    if st.exact is not None:
        d = np.sort(np.concatenate(st.exact)) if st.exact else np.zeros(0, np.int64)
        n = len(d)
        for p in PERCENTILES:
            out[f"p{p}"] = us(d[max(0, math.ceil(p / 100 * n) - 1)])
        out["exact"] = True
        return out
    cum = np.cumsum(st.lat_hist)
    n = int(cum[-1])
    for p in PERCENTILES:
        b = int(np.searchsorted(cum, max(1, math.ceil(p / 100 * n))))
        out[f"p{p}"] = us(min(st.max_ns, max(st.min_ns or 0, round(lat_edge(b) * 1000))))
    out["exact"] = False
    return out


def _lat_bins(st: OpStats) -> list[list]:
    """[low µs, high µs, count] of each non-empty latency bin (four significant digits)."""
    return [[_sig(lat_edge(b - 1)) if b > 1 else 0.0, _sig(lat_edge(b)), int(c)]
            for b, c in enumerate(st.lat_hist.tolist()) if c]


def _size_bins(st: OpStats) -> list[list]:
    return [[0 if b == 0 else 2 ** (b - 1), 0 if b == 0 else 2 ** b, int(c)]
            for b, c in enumerate(st.size_hist.tolist()) if c]


#: Read traces through pyarrow's columns (report/columnar.py); False: one dict per event.
COLUMNAR = True


def summarize_reader(reader, agg: Aggregate | None = None) -> Aggregate:
    """Feed every chunk of a :class:`~datacrumbs.trace.reader.TraceReader` into an Aggregate."""
    from . import columnar

    agg = agg or Aggregate()
    path = str(reader.path)
    # Millions of short-lived acyclic dicts: the cyclic GC would rescan them for nothing.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        if COLUMNAR and columnar.available():
            for kind, chunk in columnar.chunks(reader):
                if kind == "scan":
                    agg.add_columns(columnar.ScanColumns(chunk), path)
                elif kind == "table":
                    agg.add_columns(columnar.Columns(chunk), path)
                else:
                    agg.add_events(chunk, path)
        else:
            for chunk in reader.chunks():
                agg.add_events(chunk, path)
    finally:
        if was_enabled:
            gc.enable()
    src = agg.source(path)
    src.meta.merge(reader.meta)
    if src.stats is None:
        src.stats = ReadStats(path)
    src.stats.merge(reader.stats)
    return agg
