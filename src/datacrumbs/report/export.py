"""One Perfetto / chrome://tracing trace from a job's traces (``datacrumbs export``).

The output is a strict JSON array of Chrome trace events, one per line with
commas (``json.load`` reads it, so do Perfetto UI and chrome://tracing), plain
or as a single complete gzip member when OUT ends in ``.gz``. Hash tables are
dropped and their names resolved into ``args.fname``/``args.hostname``.

All nodes share one timeline: ``ts`` is µs (ns decimals) since one origin, a
whole second before the earliest trace start, recorded as ``args.epoch_us`` of
a ``datacrumbs_time_origin`` metadata event. Times are relative because a
double holds an epoch time in µs only to 0.25 µs, and Perfetto would then nest
sub-µs slices wrongly; they are read exactly (Decimal) from the traces. Every
(node, pid) gets its own small process number and every (node, pid, tid) its
own thread number, in order of appearance, so a job of any number of nodes stays
within 32-bit ids; ``process_name``/``thread_name`` metadata give host, command
and the real pid and tid, and ``args.pid``/``args.tid`` keep the real ones.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Callable, Iterable

from ..atomicfile import WRITE_ERRNOS, atomic_output, cannot_write, output_target
from ..errors import DatacrumbsError, UsageError
from ..trace.reader import TraceReadError, TraceReader, read_header
from .merge import find_traces
from .terminal import human_bytes

DEFAULT_MAX_BYTES = 1 << 30
PID_LIMIT = 1 << 22         # Linux pid_max: larger "pids" are not processes
MIN_RATIO = 4               # gzip'd event lines expand at least this much (about 9 measured)
ABSOLUTE_US = 10**12        # a time at least this large is absolute µs, else seconds from start


class ExportTooLarge(DatacrumbsError):
    """The export would pass the size limit."""


@dataclass
class ExportResult:
    path: Path
    events: int = 0
    bytes: int = 0
    nodes: list[str] = field(default_factory=list)
    start_us: float | None = None
    warnings: list[str] = field(default_factory=list)


def parse_time(text: str, option: str) -> tuple[str, float]:
    """``T``: seconds from the trace start (e.g. 12.5), or absolute µs since the epoch."""
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{option} {text!r}: give seconds from the trace start (e.g. 12.5) "
                         "or absolute microseconds since the epoch") from None
    if value != value or value < 0 or value == float("inf"):
        raise UsageError(f"{option} {text!r}: must be a non-negative number")
    return ("absolute", value) if value >= ABSOLUTE_US else ("relative", value)


def _host_of(trace: Path, header: dict | None) -> str:
    host = (header or {}).get("host")
    return host if isinstance(host, str) and host else trace.name


def _first_ts(trace: Path) -> float | None:
    """Earliest event time (µs, sub-µs kept) of a file without a header (one streaming pass)."""
    best = None
    for chunk in TraceReader(trace).chunks():
        for rec in chunk:
            ts = rec.get("ts")
            if type(ts) in (int, float) and (best is None or ts < best):
                best = ts
    return best


def export_perfetto(paths: Iterable[str | os.PathLike], out: str | os.PathLike, *,
                    nodes: list[str] | None = None, since: tuple[str, float] | None = None,
                    until: tuple[str, float] | None = None, pids: list[int] | None = None,
                    force: bool = False, max_bytes: int = DEFAULT_MAX_BYTES,
                    on_progress: Callable[[int, int], None] | None = None) -> ExportResult:
    out = Path(out)
    if out.is_dir():
        raise DatacrumbsError(f"{out} is a directory; give a file name such as job.json or job.json.gz")
    try:
        _target, into = output_target(out)      # a pipe or a terminal is written into
    except OSError as exc:
        raise DatacrumbsError(cannot_write(out, exc)) from None
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise DatacrumbsError(f"{out}: directory {parent} does not exist; create it first")
    if out.exists() and not force and not into:
        raise DatacrumbsError(f"{out} already exists; choose another name or pass --force to replace it")
    traces = find_traces(paths)
    result = ExportResult(out)
    readable: list[tuple[Path, str]] = []
    starts = []
    for trace in traces:
        try:
            header = read_header(trace)
        except TraceReadError as exc:
            result.warnings.append(str(exc))
            continue
        readable.append((trace, _host_of(trace, header)))
        ts = (header or {}).get("ts")
        if type(ts) is not int or ts <= 0:
            ts = _first_ts(trace) if (since and since[0] == "relative") or \
                (until and until[0] == "relative") else None
        if ts is not None:
            starts.append(ts)
    if not readable:
        raise DatacrumbsError(result.warnings[-1] if result.warnings else "no trace could be read")
    hosts = sorted({h for _, h in readable})
    if nodes:
        unknown = sorted(set(nodes) - set(hosts))
        if unknown:
            raise UsageError(f"--node {', '.join(unknown)}: no such node in these traces; "
                             f"nodes: {', '.join(hosts)}")
        readable = [(t, h) for t, h in readable if h in nodes]
    node_index = {h: i for i, h in enumerate(hosts)}
    result.start_us = min(starts) if starts else None
    lo = _bound(since, result.start_us)
    hi = _bound(until, result.start_us)
    if lo is not None and hi is not None and hi < lo:
        raise UsageError("--until is before --since; give a time range that is not empty")
    pid_set = set(pids) if pids else None
    total = sum(t.stat().st_size for t, _ in readable)
    if not force and lo is None and hi is None and pid_set is None \
            and total * MIN_RATIO > max_bytes:
        raise ExportTooLarge(
            f"the export would be larger than {human_bytes(max_bytes)} of JSON "
            f"({total / (1 << 20):.0f} MiB of gzip traces expand at least {MIN_RATIO}x), too big "
            "for Perfetto UI; slice it with --since/--until (seconds from the start), --node or "
            "--pid, or pass --force")
    done = 0
    gz = out.name.endswith(".gz")
    try:
        with atomic_output(out, mode=0o644, text=not gz, fsync=False) as raw, \
                (gzip.open(raw, "wt", encoding="utf-8", compresslevel=6) if gz
                 else contextlib.nullcontext(raw)) as f:
            writer = _Writer(f, max_bytes if not force else None)
            writer.write_raw("[\n")
            ids = _Ids(writer, origin_ns=_origin_ns(result.start_us))
            for trace, host in readable:
                result.warnings += _export_file(trace, host, node_index[host], writer, lo, hi,
                                                pid_set, ids)
                done += trace.stat().st_size
                if on_progress:
                    on_progress(done, total)
            writer.write_raw("\n]\n")
    except OSError as exc:
        if exc.filename == str(out) or (exc.filename is None and exc.errno in WRITE_ERRNOS):
            raise DatacrumbsError(cannot_write(out, exc)) from None   # a full disk, say
        raise
    result.events, result.bytes = writer.events, writer.bytes
    result.nodes = sorted({h for _, h in readable})
    return result


def _bound(spec: tuple[str, float] | None, start: float | None) -> float | None:
    if spec is None:
        return None
    kind, value = spec
    if kind == "absolute":
        return value
    if start is None:
        raise UsageError("relative --since/--until need a trace start time, and these traces have "
                         "no events; give absolute microseconds instead")
    return start + round(value * 1e6, 3)


class _Writer:
    """Comma-separated event lines with a running size check."""

    def __init__(self, f, limit: int | None):
        self.f, self.limit = f, limit
        self.events = 0
        self.bytes = 0

    def write_raw(self, text: str) -> None:
        self.f.write(text)
        self.bytes += len(text)

    def event(self, ev: dict) -> None:
        line = json.dumps(ev, separators=(",", ":"), ensure_ascii=False)
        self.write_raw(line if self.events == 0 else ",\n" + line)
        self.events += 1
        if self.limit is not None and self.bytes > self.limit:
            raise ExportTooLarge(
                f"the export would be larger than {human_bytes(self.limit)} of JSON "
                f"(passed it after {self.events:,} events), too big for Perfetto UI; slice it with "
                "--since/--until (seconds from the start), --node or --pid, or pass --force")


def _origin_ns(start_us) -> int:
    """A whole second before the earliest start (0 when unknown: times stay absolute)."""
    if start_us is None:
        return 0
    return (int(start_us) // 1_000_000 - 1) * 1_000_000_000


def _ns(value) -> int:
    """µs (int, float or the reader's exact Decimal) as integer ns."""
    if type(value) is int:
        return value * 1000
    if type(value) is float:
        return round(value * 1000)
    return int(value * 1000)


class _Ids:
    """Small process and thread numbers for (node, pid) and (node, pid, tid), named as they
    first appear: node i's pid 500 and node j's pid 500 are different processes."""

    def __init__(self, writer: "_Writer", origin_ns: int):
        self.writer, self.origin_ns = writer, origin_ns
        self.pids: dict[tuple[int, int], int] = {}
        self.tids: dict[tuple[int, int, int], int] = {}
        writer.event({"name": "datacrumbs_time_origin", "ph": "M", "pid": 0, "tid": 0,
                      "args": {"epoch_us": origin_ns // 1000}})

    def pid(self, node: int, pid: int, label: str) -> int:
        key = (node, pid)
        number = self.pids.get(key)
        if number is None:
            number = self.pids[key] = len(self.pids) + 1
            self.writer.event({"name": "process_name", "ph": "M", "pid": number, "tid": 0,
                               "args": {"name": label}})
            self.writer.event({"name": "process_sort_index", "ph": "M", "pid": number,
                               "tid": 0, "args": {"sort_index": number}})
        return number

    def tid(self, node: int, pid: int, tid: int, number_pid: int, comm: str) -> int:
        key = (node, pid, tid)
        number = self.tids.get(key)
        if number is None:
            number = self.tids[key] = len(self.tids) + 1
            label = f"{comm} (tid {tid})" if comm else f"tid {tid}"
            self.writer.event({"name": "thread_name", "ph": "M", "pid": number_pid,
                               "tid": number, "args": {"name": label}})
        return number

    def time(self, value) -> float:
        """µs since the origin, exact to the ns (a double holds that for 104 days)."""
        return (_ns(value) - self.origin_ns) / 1000


def _export_file(trace: Path, host: str, index: int, writer: _Writer, lo, hi, pid_set,
                 ids: _Ids) -> list[str]:
    reader = TraceReader(trace, exact=True)
    try:
        for chunk in reader.chunks():
            for ev in chunk:
                pid = ev.get("pid")
                if type(pid) is not int or not 0 <= pid < PID_LIMIT:
                    continue
                if pid_set is not None and pid not in pid_set:
                    continue
                ts = ev.get("ts")
                if type(ts) not in (int, float, Decimal):
                    continue
                dur = ev.get("dur") if type(ev.get("dur")) in (int, float, Decimal) else 0
                if (lo is not None and float(ts) + float(dur) < lo) or \
                        (hi is not None and float(ts) > hi):
                    continue
                comm = reader.meta.process_names.get(pid, "")
                number = ids.pid(index, pid, f"{host}: {comm} ({pid})" if comm
                                 else f"{host}: pid {pid}")
                tid = ev.get("tid") if type(ev.get("tid")) is int else pid
                out = dict(ev)
                out["pid"] = number
                out["tid"] = ids.tid(index, pid, tid, number, comm)
                out["ts"] = ids.time(ts)
                if "dur" in ev:
                    out["dur"] = _ns(dur) / 1000
                args = ev.get("args")
                out["args"] = reader.meta.resolve(args) if isinstance(args, dict) else {}
                if ev.get("ph") != "C":         # a counter's args are its plotted series
                    out["args"].setdefault("hostname", host)
                    out["args"]["pid"] = pid
                    out["args"]["tid"] = tid
                writer.event(_plain(out))
    except TraceReadError as exc:
        return [str(exc)]
    st = reader.stats
    if st.tail_error:
        return [f"{trace}: {st.tail_error}; exported the {st.events:,} events before it"]
    return []


def _plain(value):
    """Decimals the exact reader made (args, counter series) as JSON numbers."""
    if type(value) is Decimal:
        return int(value) if value == value.to_integral_value() else float(value)
    if type(value) is dict:
        return {k: _plain(v) for k, v in value.items()}
    if type(value) is list:
        return [_plain(v) for v in value]
    return value
