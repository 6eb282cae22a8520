"""Time views of a job: I/O per process over time, bandwidth per node over time, imbalance.

Darshan's DXT heatmap answers "who did I/O when": rows are processes, columns
time bins. :class:`TimeViews` keeps, per (trace file, pid) and time bin, the
bytes moved (credited to the bin an operation starts in, like model.py's
timeline) and the busy time (an operation's duration split exactly, in integer
nanoseconds, over the bins it overlaps, so a 2 s fsync does not show as 2 s in
one 1 ms bin). Memory is bounded whatever the trace size: at most ``COLS_CAP``
bins (the bin width doubles from ``BASE_US`` until the job fits) and at most
``CELLS_CAP`` non-empty (process, bin) cells (past that, bins widen further).
Partials merge exactly and in any order: the width of the result is the
smallest that fits the whole job, so split or not, the numbers are the same.

Only the top ``ROWS`` processes by bytes are drawn, with one "others" row; the
per-node figures (series and imbalance) come from every process. Rows are named
host:pid (with the command): the traces carry no MPI rank today.
"""

from __future__ import annotations

import numpy as np

from .analysis import group_sums as _sums, uniq

BASE_US = 1000                  # finest bin: 1 ms
COLS_CAP = 512                  # time bins at most
CELLS_CAP = 1 << 19             # non-empty (process, bin) cells kept (16 MiB)
PENDING_CAP = 1 << 17           # cells buffered between compactions
ROWS = 64                       # heatmap rows shown, plus "others"
NODE_SERIES = 32                # nodes drawn in the bandwidth-over-time view, plus "others"


def _us(ns) -> float:
    return round(int(ns) / 1000, 3)


class TimeViews:
    """A mergeable partial of the time views (see the module docstring)."""

    def __init__(self):
        self.bin_us = BASE_US
        self.lo: int | None = None          # first and last bin (at bin_us) of any event
        self.hi: int | None = None
        self.rows: dict[tuple[str, int], int] = {}     # (source, pid) -> row id
        self.row_tot = np.zeros((0, 3), np.int64)      # per row: count, bytes, busy ns
        self.node_ops: dict[tuple[str, str, str], int] = {}    # (source, cat, name) -> ns
        self.cells = _empty()               # compacted: row, bin, bytes, ns (unique row, bin)
        self.pending: list[np.ndarray] = []
        self.n_pending = 0

    # -- adding ---------------------------------------------------------------

    def _row_ids(self, source: str, pids: list[int]) -> np.ndarray:
        ids = []
        for p in pids:
            r = self.rows.get((source, p))
            if r is None:
                r = self.rows[(source, p)] = len(self.rows)
            ids.append(r)
        if len(self.rows) > len(self.row_tot):
            grow = np.zeros((max(len(self.rows), 2 * len(self.row_tot)), 3), np.int64)
            grow[:len(self.row_tot)] = self.row_tot
            self.row_tot = grow
        return np.array(ids, np.int64)

    def add(self, source: str, keys: list, op: np.ndarray, ts: np.ndarray, dur_ns: np.ndarray,
            size: np.ndarray, weight: np.ndarray | None, pid: np.ndarray, timed: np.ndarray,
            ranks: tuple | None = None, sums: tuple | None = None) -> None:
        """One chunk, as model.Aggregate._add_arrays holds it: ``ts`` in µs (-1: missing),
        ``dur_ns`` and ``size`` (0: none) as int64, ``timed`` for complete events (a
        profile counter's time is a sum, not a span, so it stays in its sample's bin);
        ``weight`` None: all 1; ``ranks``: ``uniq(pid, inverse=True)`` when known, and
        ``sums``: (ns per op, bytes per pid, ns per pid) of these arrays when known."""
        if not len(op):
            return
        upid, pinv = ranks if ranks is not None else uniq(pid.astype(np.int64), inverse=True)
        rows = self._row_ids(source, upid.tolist())
        n = len(upid)
        self.row_tot[rows, 0] += np.bincount(pinv, minlength=n) if weight is None else \
            np.rint(np.bincount(pinv, weights=weight, minlength=n)).astype(np.int64)
        if sums is None:
            sums = (_sums(op, dur_ns, len(keys)),
                    _sums(pinv, size, n), _sums(pinv, dur_ns, n))
        op_ns, p_bytes, p_ns = sums
        self.row_tot[rows, 1] += p_bytes
        self.row_tot[rows, 2] += p_ns
        for (cat, name), t in zip(keys, op_ns.tolist()):
            k = (source, cat, name)
            self.node_ops[k] = self.node_ops.get(k, 0) + t
        valid = ts >= 0
        if valid.all():                     # (most chunks: no selection to copy)
            pv, byts = pinv, size
            start = _epoch_ns(ts)
            span = dur_ns if timed.all() else np.where(timed, dur_ns, 0)
        elif not valid.any():
            return
        else:
            pv, byts = pinv[valid], size[valid]
            start = _epoch_ns(ts[valid])
            span = np.where(timed[valid], dur_ns[valid], 0)
        row = rows[pv]
        end = start + span
        last = np.maximum(start, end - 1)
        w = self.bin_us * 1000
        self._fit_cols(int(start.min()) // w, int(last.max()) // w)
        w = self.bin_us * 1000
        b0 = start // w
        b1 = last // w
        one = b0 == b1
        if one.all():
            self._pend(_presum(pv, rows, b0, byts, span))
        else:
            self._pend(_presum(pv[one], rows, b0[one], byts[one], span[one]))
        many = np.flatnonzero(~one)
        while len(many):
            # Operations over several bins: bytes in the first, time split exactly. Expanded
            # PENDING_CAP cells at a time (a compaction may widen the bins in between).
            w = self.bin_us * 1000
            b0, b1 = start[many] // w, (end[many] - 1) // w
            k = b1 - b0 + 1
            take = max(1, int(np.searchsorted(np.cumsum(k), PENDING_CAP, side="right")))
            ev, k, b0 = many[:take], k[:take], b0[:take]
            many = many[take:]
            rep = np.repeat(np.arange(len(ev)), k)
            off = np.arange(len(rep)) - np.repeat(np.cumsum(k) - k, k)
            b = b0[rep] + off
            e = ev[rep]
            busy = np.minimum(end[e], (b + 1) * w) - np.maximum(start[e], b * w)
            self._pend(np.stack([row[e], b, np.where(off == 0, byts[e], 0), busy]))

    def _pend(self, cells: np.ndarray) -> None:
        if cells.shape[1]:
            self.pending.append(cells)
            self.n_pending += cells.shape[1]
            if self.n_pending > PENDING_CAP:
                self._compact()

    # -- bounding -------------------------------------------------------------

    def _widen(self) -> None:
        """Double the bin width: every bin index halves (floor), cells merge at compaction."""
        self.bin_us *= 2
        self.lo //= 2
        self.hi //= 2
        self.cells[1] //= 2
        for p in self.pending:
            p[1] //= 2

    def _fit_cols(self, lo: int, hi: int) -> None:
        if self.lo is None:
            self.lo, self.hi = lo, hi
        else:
            self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        while self.hi - self.lo + 1 > COLS_CAP:
            self._widen()

    def _compact(self) -> None:
        """Sum the cells of each (row, bin); widen bins while there are more than CELLS_CAP."""
        while True:
            allc = np.concatenate([self.cells, *self.pending], axis=1) if self.pending else self.cells
            self.pending, self.n_pending = [], 0
            if allc.shape[1]:
                key = allc[0] * (self.hi - self.lo + 1) + (allc[1] - self.lo)
                ukey, inv = np.unique(key, return_inverse=True)
                n = len(ukey)
                cells = np.stack([ukey // (self.hi - self.lo + 1), ukey % (self.hi - self.lo + 1) + self.lo,
                                  _sums(inv, allc[2], n), _sums(inv, allc[3], n)])
                # Empty cells (calls of no bytes and no time) are never kept, whichever way the
                # cells came: the count that widens the bins must not depend on the chunking.
                self.cells = cells[:, (cells[2] > 0) | (cells[3] > 0)]
            else:
                self.cells = allc
            if self.cells.shape[1] <= CELLS_CAP or self.hi == self.lo:
                return
            self._widen()

    # -- merging --------------------------------------------------------------

    def merge(self, o: "TimeViews") -> "TimeViews":
        ids = self._row_ids_for(list(o.rows))
        remap = np.zeros(max(len(o.rows), 1), np.int64)
        remap[list(o.rows.values())] = ids
        self.row_tot[ids] += o.row_tot[:len(o.rows)]
        for k, t in o.node_ops.items():
            self.node_ops[k] = self.node_ops.get(k, 0) + t
        if o.lo is None:
            return self
        o._compact()
        cells = o.cells.copy()
        cells[0] = remap[cells[0]]
        lo, hi = o.lo, o.hi
        if self.lo is None:
            self.bin_us = max(self.bin_us, o.bin_us)
        while self.bin_us < o.bin_us:
            self._widen()
        factor = max(1, self.bin_us // o.bin_us)
        cells[1] //= factor
        self._fit_cols(lo // factor, hi // factor)
        # _fit_cols may have widened self further: bring the incoming cells along.
        cells[1] //= self.bin_us // (o.bin_us * factor)
        self.pending.append(cells)
        self.n_pending += cells.shape[1]
        self._compact()
        return self

    def _row_ids_for(self, keys: list[tuple[str, int]]) -> np.ndarray:
        by_source: dict[str, list[int]] = {}
        for s, p in keys:
            by_source.setdefault(s, []).append(p)
        out = {}
        for s, pids in by_source.items():
            for p, r in zip(pids, self._row_ids(s, pids).tolist()):
                out[(s, p)] = r
        return np.array([out[k] for k in keys], np.int64)

    # -- the views ------------------------------------------------------------

    def finalize(self, hosts: dict[str, str], names: dict[tuple[str, int], str],
                 node_hosts: list[str] | None = None) -> dict:
        """The plain dict of the three views; ``hosts`` maps a trace file to its host,
        ``names`` (host, pid) to the command, ``node_hosts`` adds nodes that did no I/O."""
        if self.pending or self.cells.shape[1]:
            self._compact()
        # Rows by (host, pid): two trace files of one host are one node.
        procs: dict[tuple[str, int], int] = {}
        prow = np.zeros(max(len(self.rows), 1), np.int64)
        for (src, pid), r in self.rows.items():
            prow[r] = procs.setdefault((hosts.get(src, src), pid), len(procs))
        keys = list(procs)
        np_ = len(keys)
        tot = np.zeros((np_, 3), np.int64)
        np.add.at(tot, prow[:len(self.rows)], self.row_tot[:len(self.rows)])
        order = sorted(range(np_), key=lambda i: (-tot[i, 1], -tot[i, 2], keys[i][0], keys[i][1]))
        shown = order[:ROWS]
        rank = np.full(max(np_, 1), len(shown), np.int64)     # the others row
        rank[shown] = np.arange(len(shown))
        rows_out = [{"label": f"{keys[i][0]}:{keys[i][1]}", "host": keys[i][0], "pid": keys[i][1],
                     "name": names.get(keys[i], ""), "count": int(tot[i, 0]), "bytes": int(tot[i, 1]),
                     "time_us": _us(tot[i, 2])} for i in shown]
        rest = order[ROWS:]
        if rest:
            rt = tot[rest].sum(axis=0)
            rows_out.append({"label": f"others ({len(rest):,} processes)", "host": "", "pid": None,
                             "name": "", "count": int(rt[0]), "bytes": int(rt[1]),
                             "time_us": _us(rt[2]), "processes": len(rest)})
        c = self.cells
        cols = 0 if self.lo is None else self.hi - self.lo + 1
        hm_cells: list[list] = []
        node_cells: dict[str, np.ndarray] = {}
        if c.shape[1]:
            proc = prow[c[0]]
            hrow = rank[proc]
            col = c[1] - self.lo
            key = hrow * cols + col
            ukey, inv = np.unique(key, return_inverse=True)
            hb = _sums(inv, c[2], len(ukey))
            ht = _sums(inv, c[3], len(ukey))
            hm_cells = [[int(k // cols), int(k % cols), int(b), _us(t)]
                        for k, b, t in zip(ukey.tolist(), hb.tolist(), ht.tolist())]
            hidx: dict[str, int] = {}
            host_of = np.array([hidx.setdefault(h, len(hidx)) for h, _ in keys], np.int64)
            per_host = np.bincount(host_of[proc] * cols + col, weights=c[2],
                                   minlength=len(hidx) * cols).reshape(len(hidx), cols)
            node_cells = {h: per_host[j] for h, j in hidx.items() if per_host[j].any()}
        # Per node: totals from every event (with or without a time stamp).
        nodes: dict[str, dict] = {h: _node(h) for h in node_hosts or ()}
        for i, (h, pid) in enumerate(keys):
            n = nodes.setdefault(h, _node(h))
            n["count"] += int(tot[i, 0]); n["bytes"] += int(tot[i, 1]); n["time_ns"] += int(tot[i, 2])
            n["processes"] += 1
            if n["top_process"] is None or (tot[i, 2], -pid) > (n["top_process_ns"], -n["top_process"]):
                n["top_process"], n["top_process_ns"] = pid, int(tot[i, 2])
        node_ops: dict[str, dict[tuple[str, str], int]] = {}
        for (src, cat, name), t in self.node_ops.items():
            d = node_ops.setdefault(hosts.get(src, src), {})
            d[(cat, name)] = d.get((cat, name), 0) + t
        series_hosts = sorted(nodes, key=lambda h: (-nodes[h]["bytes"], h))
        shown_hosts = [h for h in series_hosts if h in node_cells][:NODE_SERIES]
        series = {h: [int(v) for v in np.rint(node_cells[h]).tolist()] for h in shown_hosts}
        others = [h for h in node_cells if h not in series]
        if others:
            series[f"others ({len(others)} nodes)"] = [
                int(v) for v in np.rint(sum(node_cells[h] for h in others)).tolist()]
        return {
            "bin_us": self.bin_us,
            "start_us": None if self.lo is None else self.lo * self.bin_us,
            "columns": cols,
            "heatmap": {"rows": rows_out, "processes": np_, "cells": hm_cells,
                        "cell_fields": ["row", "column", "bytes", "time_us"]},
            "node_bandwidth": {"series": series, "unit": "bytes per bin"},
            "imbalance": _imbalance(nodes, node_ops, names),
        }


def _node(host: str) -> dict:
    return {"host": host, "count": 0, "bytes": 0, "time_ns": 0, "processes": 0,
            "top_process": None, "top_process_ns": 0}


def _imbalance(nodes: dict[str, dict], node_ops: dict, names: dict) -> dict:
    """min, mean and max over nodes of bytes and I/O time, and why the slowest node was slow."""
    if not nodes:
        return {"nodes": 0}
    ns = list(nodes.values())

    def stats(field: str, div: int) -> dict:
        vals = [n[field] for n in ns]
        lo = min(ns, key=lambda n: (n[field], n["host"]))
        hi = max(ns, key=lambda n: (n[field], n["host"]))
        mean = sum(vals) / len(vals)
        scale = (lambda v: v) if div == 1 else (lambda v: round(v / div, 3))
        return {"min": scale(lo[field]), "min_host": lo["host"], "mean": round(mean / div, 3),
                "max": scale(hi[field]), "max_host": hi["host"],
                "max_over_mean": round(hi[field] / mean, 3) if mean else None}

    slow = max(ns, key=lambda n: (n["time_ns"], n["host"]))
    ops = node_ops.get(slow["host"], {})
    top_op = max(ops.items(), key=lambda kv: (kv[1], kv[0]), default=None)
    share = (lambda t: round(t / slow["time_ns"], 4) if slow["time_ns"] else None)
    pid = slow["top_process"]
    return {
        "nodes": len(ns),
        "bytes": stats("bytes", 1),
        "time_us": stats("time_ns", 1000),
        "slowest": {
            "host": slow["host"], "time_us": _us(slow["time_ns"]), "bytes": slow["bytes"],
            "processes": slow["processes"],
            "top_process": None if pid is None else {
                "pid": pid, "name": names.get((slow["host"], pid), ""),
                "time_us": _us(slow["top_process_ns"]), "share": share(slow["top_process_ns"])},
            "top_operation": None if top_op is None else {
                "category": top_op[0][0], "name": top_op[0][1], "time_us": _us(top_op[1]),
                "share": share(top_op[1])},
        },
        "per_node": [{"host": n["host"], "count": n["count"], "bytes": n["bytes"],
                      "time_us": _us(n["time_ns"]), "processes": n["processes"]}
                     for n in sorted(ns, key=lambda n: n["host"])],
    }


def _presum(local: np.ndarray, rows: np.ndarray, b: np.ndarray, byts: np.ndarray,
            ns: np.ndarray) -> np.ndarray:
    """One chunk's single-bin calls summed per (process, bin) before they are buffered: a
    chunk holds few processes and bins, so a dense bincount (no sort) shrinks 32k calls to
    a few cells. ``local`` indexes ``rows`` (the chunk's processes)."""
    if not len(b):
        return _empty()
    lo = int(b.min())
    span = int(b.max()) - lo + 1
    if len(rows) * span > max(4 * len(b), 1 << 16):
        return np.stack([rows[local], b, byts, ns])
    key = local * span + (b - lo)
    size = len(rows) * span
    sb = _sums(key, byts, size)
    st = _sums(key, ns, size)
    nz = np.flatnonzero((sb > 0) | (st > 0))
    return np.stack([rows[nz // span], nz % span + lo, sb[nz], st[nz]])


def _epoch_ns(ts_us: np.ndarray) -> np.ndarray:
    """Epoch µs as int64 ns without float rounding: ts * 1000 exceeds 2**53, where a
    whole-µs stamp on a bin edge would round into the bin before."""
    whole = np.floor(ts_us)
    return whole.astype(np.int64) * 1000 + np.rint((ts_us - whole) * 1000).astype(np.int64)


def _empty() -> np.ndarray:
    return np.zeros((4, 0), np.int64)
