"""summary.json beside each trace, built incrementally batch by batch.

Users and the epilog read the summary without opening the trace, so it is kept
up to date as events are written (never by re-reading the trace) and holds
only bounded tables: one row per probe and at most ``max_files`` files.

Times are summed in integer nanoseconds and written as ``time_us`` (and the
profile's ``min_us``/``max_us``) in microseconds with three decimals: a total of
sub-microsecond calls must not be rounded away call by call.
"""

from __future__ import annotations

import json
import os

import numpy as np

from ..trace.writer import FD_KINDS, probe_name
from .paths import OPEN_OPS

OTHER_FILES = "(other files)"
MAP_SHARED = 0x01
O_ACCMODE = 0o3
SHARED_MAPPINGS_NOTE = ("these files, opened for writing, were mapped shared (mmap MAP_SHARED): "
                        "bytes a process stores to the mapping change the file without a call, "
                        "so they are not in the byte counts")


def us(ns) -> float:
    """Integer nanoseconds as microseconds with three decimals (exact below 2**53 ns)."""
    return round(int(ns) / 1000, 3)


def _ns_sums(groups: np.ndarray, dur_ns: np.ndarray, n: int) -> np.ndarray:
    """Sum of ``dur_ns`` per group, exact: bincount adds in float64, which holds every
    integer below 2**53 ns (104 days, far above a batch's total); else integer adds."""
    if len(dur_ns) and int(dur_ns.max()) * len(dur_ns) >= 1 << 53:
        out = np.zeros(n, np.int64)
        np.add.at(out, groups, dur_ns)
        return out
    return np.rint(np.bincount(groups, weights=dur_ns, minlength=n)[:n]).astype(np.int64)


def op_key(probe: dict) -> str:
    return f"{probe.get('category') or 'SYSCALL'}/{probe_name(probe)}"


class SummaryBuilder:
    """Totals per operation and per file for one run."""

    def __init__(self, probes: list[dict], *, max_files: int = 10000):
        self.probes = list(probes)
        self.keys = [op_key(p) for p in self.probes]
        self._probe_tables()
        n = len(self.probes)
        self.count = np.zeros(n, np.int64)
        self.bytes = np.zeros(n, np.int64)
        self.time_ns = np.zeros(n, np.int64)
        self.errors = np.zeros(n, np.int64)
        self.files: dict[str, list[int]] = {}
        self.max_files = max_files
        self.profile: dict[str, dict] = {}
        # files mapped shared: what a process stores to (or loads from) the mapping moves
        # no bytes through a call, so the trace cannot count it
        self.shared_mappings: set[str] = set()
        self._opened_rw: set[str] = set()
        self.unsent = 0         # operations counted from the kernel's rows, without an event

    def _probe_tables(self) -> None:
        """Per-probe lookups, indexed by probe: rebuilt when probes are added."""
        probes = self.probes
        # a negative result is an error when the convention is known: not for tracepoints,
        # nor for functions typed only by their debug info ("returns")
        self._has_ret = np.array([p.get("kind") != "tracepoint" and "returns" not in p
                                  for p in probes] or [True])
        self._mmap = np.array([probe_name(p) in ("mmap", "mmap2", "mmap64") for p in probes]
                              or [False])
        self._open_rw = np.array([probe_name(p) in OPEN_OPS and (p.get("args") or {}).get("flags")
                                  is not None for p in probes] or [False])

    def add_probes(self, probes: list[dict]) -> None:
        """More probes (the engine attached a family to a library found at run time)."""
        if not probes:
            return
        self.probes += probes
        self.keys += [op_key(p) for p in probes]
        self._probe_tables()
        grow = np.zeros(len(probes), np.int64)
        self.count = np.concatenate([self.count, grow])
        self.bytes = np.concatenate([self.bytes, grow])
        self.time_ns = np.concatenate([self.time_ns, grow])
        self.errors = np.concatenate([self.errors, grow])

    def add_ops(self, ops: np.ndarray, paths: list | None = None,
                paths2: list | None = None) -> None:
        """``paths2[i]``: the second file of row i (a copy's output), credited with the
        row's bytes too, so a copy counts in both its files."""
        if len(ops) == 0:
            return
        if self._add_run(ops, paths, paths2):
            return
        n = len(self.probes)
        probe = ops["probe"]
        size = np.where(ops["size"] > 0, ops["size"], 0)
        self.count += np.bincount(probe, minlength=n)[:n]
        self.bytes += np.bincount(probe, weights=size, minlength=n)[:n].astype(np.int64)
        self.time_ns += _ns_sums(probe, ops["dur_ns"], n)
        failed = (ops["ret"] < 0) & self._has_ret[probe]
        if failed.any():
            self.errors += np.bincount(probe[failed], minlength=n)[:n]
        if paths is None:
            return
        self._note_shared_mappings(ops, paths)
        self._add_files(ops, paths, size)
        if paths2 is not None:
            two = [i for i, p in enumerate(paths2) if p is not None]
            if two:
                self._add_files(ops[two], [paths2[i] for i in two], size[two])

    def _add_run(self, ops: np.ndarray, paths: list | None, paths2: list | None) -> bool:
        """add_ops of the common batch, one probe on one file (a run of reads or writes),
        in a few sums instead of group-bys (the daemon's CPU per event); False: any
        other batch, for add_ops."""
        probe = ops["probe"]
        p0 = int(probe[0])
        n = len(ops)
        if (paths2 is not None or not 0 <= p0 < len(self.probes) or self._mmap[p0]
                or self._open_rw[p0] or not (probe == p0).all()):
            return False
        if paths is not None and paths.count(paths[0]) != n:
            return False
        size = ops["size"]
        nbytes = int(size.sum()) if size.min() > 0 else int(np.where(size > 0, size, 0).sum())
        dur = ops["dur_ns"]
        time_ns = int(dur.sum())
        self.count[p0] += n
        self.bytes[p0] += nbytes
        self.time_ns[p0] += time_ns
        if self._has_ret[p0]:
            self.errors[p0] += int(np.count_nonzero(ops["ret"] < 0))
        if paths is not None and paths[0] is not None:
            self._add_files(ops[:1], [paths[0]], np.zeros(1, np.int64), (n, nbytes, time_ns))
        return True

    def _note_shared_mappings(self, ops: np.ndarray, paths: list) -> None:
        """Shared mappings of files opened for writing: a store to one changes the file
        without a call (a read-only file's shared mapping cannot be written)."""
        probe, ok = ops["probe"], ops["ret"] >= 0
        rw = self._open_rw[probe] & ok & ((ops["flags"] & O_ACCMODE) != os.O_RDONLY)
        for i in np.flatnonzero(rw).tolist():
            if paths[i] is not None and len(self._opened_rw) < self.max_files:
                self._opened_rw.add(paths[i])
        shared = self._mmap[probe] & ok & ((ops["flags"] & MAP_SHARED) != 0)
        if "kind" in ops.dtype.names:
            shared &= ops["kind"] == FD_KINDS.index("reg")
        for i in np.flatnonzero(shared).tolist():
            if paths[i] in self._opened_rw and len(self.shared_mappings) < self.max_files:
                self.shared_mappings.add(paths[i])

    def _add_files(self, ops: np.ndarray, paths: list, size: np.ndarray,
                   totals: tuple[int, int, int] | None = None) -> None:
        """``totals``: (count, bytes, time_ns) of the one path in ``paths``, summed already."""
        # distinct paths first (a C loop), then one C-level lookup per row
        ids = {p: i for i, p in enumerate(dict.fromkeys(paths))}
        if totals is not None:
            counts, nbytes, times = [totals[0]], [totals[1]], [totals[2]]
        else:
            idx = np.fromiter(map(ids.__getitem__, paths), np.int64, len(paths))
            k = len(ids)
            counts = np.bincount(idx, minlength=k).tolist()
            nbytes = np.bincount(idx, weights=size, minlength=k).astype(np.int64).tolist()
            times = _ns_sums(idx, ops["dur_ns"], k).tolist()
        files = self.files
        for path, i in ids.items():
            if path is None:
                continue
            row = files.get(path)
            if row is None:
                if len(files) >= self.max_files:
                    path = OTHER_FILES
                    row = files.get(path)
                if row is None:
                    row = files[path] = [0, 0, 0]
            row[0] += counts[i]
            row[1] += nbytes[i]
            row[2] += times[i]

    def add_unsent(self, rows) -> None:
        """Trace mode: operations the kernel counted but could not send as events, rows of
        (ts_ns, pid, probe, count, bytes, time_ns) since the last call: with them the
        per-operation totals are exact however many events were lost."""
        n = len(self.probes)
        for _ts, _pid, probe, count, nbytes, time_ns in rows:
            if 0 <= probe < n:
                self.count[probe] += count
                self.bytes[probe] += max(nbytes, 0)
                self.time_ns[probe] += time_ns
                self.unsent += count

    def set_profile(self, rows) -> None:
        """Final in-kernel profile (ProfileRow list): totals, extremes and histograms."""
        n = len(self.probes)
        self.count[:] = 0
        self.bytes[:] = 0
        self.time_ns[:] = 0
        profile: dict[str, dict] = {}
        for row in rows:
            if not 0 <= row.probe < n:
                continue
            self.count[row.probe] += row.count
            self.bytes[row.probe] += max(row.bytes, 0)
            self.time_ns[row.probe] += row.time_ns
            key = self.keys[row.probe]
            cur = profile.get(key)
            hist = [int(h) for h in row.hist]
            if cur is None:
                profile[key] = {"count": int(row.count), "bytes": int(max(row.bytes, 0)),
                                "time_ns": int(row.time_ns), "min_ns": int(row.min_ns),
                                "max_ns": int(row.max_ns), "hist_log2_us": hist}
                continue
            cur["count"] += int(row.count)
            cur["bytes"] += int(max(row.bytes, 0))
            cur["time_ns"] += int(row.time_ns)
            if row.count:
                cur["min_ns"] = min(cur["min_ns"], int(row.min_ns))
                cur["max_ns"] = max(cur["max_ns"], int(row.max_ns))
            width = max(len(cur["hist_log2_us"]), len(hist))
            a = cur["hist_log2_us"] + [0] * (width - len(cur["hist_log2_us"]))
            b = hist + [0] * (width - len(hist))
            cur["hist_log2_us"] = [x + y for x, y in zip(a, b)]
        profile = {key: {"count": c["count"], "bytes": c["bytes"], "time_us": us(c["time_ns"]),
                         "min_us": us(c["min_ns"]), "max_us": us(c["max_ns"]),
                         "hist_log2_us": c["hist_log2_us"]} for key, c in profile.items()}
        self.profile = profile

    def operations(self) -> dict[str, dict]:
        ops: dict[str, dict] = {}
        for i, key in enumerate(self.keys):
            if not self.count[i]:
                continue
            cur = ops.setdefault(key, {"count": 0, "bytes": 0, "time_ns": 0, "errors": 0})
            cur["count"] += int(self.count[i])
            cur["bytes"] += int(self.bytes[i])
            cur["time_ns"] += int(self.time_ns[i])
            cur["errors"] += int(self.errors[i])
        return {key: {"count": c["count"], "bytes": c["bytes"], "time_us": us(c["time_ns"]),
                      "errors": c["errors"]} for key, c in ops.items()}

    def to_dict(self, *, job: str, user: str, host: str, mode: str, start_ts: int, end_ts: int,
                complete: bool, events_written: int, events_lost: int, trace_file: str,
                attached: list[dict], refused: list[tuple[dict, str]], names_lost: int = 0,
                **extra) -> dict:
        doc = {
            "format": "datacrumbs-summary", "version": 1, "job": job, "user": user, "host": host,
            "mode": mode, "start_ts": int(start_ts), "end_ts": int(end_ts),
            "complete": bool(complete), "events_written": int(events_written),
            "events_lost": int(events_lost),
            # events of open-like calls in the trace without their file name
            "names_lost": int(names_lost), "trace_file": trace_file,
            "probes_attached": [_probe_ref(p) for p in attached],
            "probes_refused": [_probe_ref(p) | {"reason": str(r)} for p, r in refused],
            "operations": self.operations(),
            "files": {p: {"count": c, "bytes": b, "time_us": us(t)}
                      for p, (c, b, t) in self.files.items()},
        }
        if self.shared_mappings:
            doc["shared_mappings"] = sorted(self.shared_mappings)
            doc["shared_mappings_note"] = SHARED_MAPPINGS_NOTE
        if self.profile or mode == "profile":
            doc["profile"] = self.profile
        doc.update(extra)
        return doc


def _probe_ref(probe: dict) -> dict:
    return {"id": probe.get("id"), "kind": probe.get("kind"), "target": probe.get("target")}


class SummaryFile:
    """The summary's file, with its disk space reserved when the run starts.

    A full disk must not cost the summary that says the disk was full, so the
    space is allocated up front in an anonymous file (``O_TMPFILE``, nothing
    left behind by a crash) that is linked under its name only when complete,
    and never over an existing file. ``mode`` is the trace's: private (0600) unless the
    site shares traces with a group.
    """

    def __init__(self, dir_fd: int, name: str, *, owner_uid: int | None = None,
                 owner_gid: int | None = None, reserve: int = 64 << 10, mode: int = 0o600):
        self.dir_fd, self.name = dir_fd, name
        self._tmpname = None
        try:
            self.fd = os.open(".", os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, mode, dir_fd=dir_fd)
        except OSError:  # file systems without O_TMPFILE: a hidden named temp file
            self._tmpname = f".{name}.{os.getpid()}.tmp"
            self.fd = os.open(self._tmpname, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                              | os.O_CLOEXEC, mode, dir_fd=dir_fd)
        os.fchmod(self.fd, mode)
        if owner_uid is not None:
            os.fchown(self.fd, owner_uid, -1 if owner_gid is None else owner_gid)
        try:
            os.posix_fallocate(self.fd, 0, reserve)
        except OSError:
            pass  # no reservation possible: still try to write at the end

    def commit(self, doc: dict) -> None:
        data = (json.dumps(doc, indent=1, ensure_ascii=False) + "\n").encode("utf-8",
                                                                              "surrogateescape")
        try:
            view, pos = memoryview(data), 0
            while pos < len(data):
                pos += os.pwrite(self.fd, view[pos:], pos)
            os.ftruncate(self.fd, len(data))
            os.fsync(self.fd)
            if self._tmpname is None:
                os.link(f"/proc/self/fd/{self.fd}", self.name, dst_dir_fd=self.dir_fd)
            else:
                os.link(self._tmpname, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        finally:
            self.discard()

    def discard(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self._tmpname is not None:
            try:
                os.unlink(self._tmpname, dir_fd=self.dir_fd)
            except OSError:
                pass
            self._tmpname = None
