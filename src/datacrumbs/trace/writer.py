"""TraceWriter: the ``.pfw.gz`` file in whole gzip members, crash-safe.

The layout is the contract in docs/design.md (DFTracer's pfw v1): first line
``[``, one JSON object per line, ``]`` alone in the final member of a clean
close. Every member is complete and ends at a line end and is written with one
``os.write`` (looping on short writes), so a killed daemon leaves at most a torn
last member that readers drop. A write error (disk full) stops writing for good
with one log line: the file is cut back to its last complete member so it stays
readable, and the events not written are counted for the summary. A size cap
(``max_bytes``) ends the trace the same way, but cleanly: the last member that
fits is cut at a line so the file ends within a few hundred bytes of the cap,
the closing ``]`` is written at once, and later events are only counted.
A clean close ends the file with the member index (trace/gzindex.py): empty gzip
members, invisible to other readers, that tell the report where to cut the trace.

Lines are formatted column by column from numpy arrays (one list comprehension
per field, per-probe prefixes precomputed) because a ``json.dumps`` per event
would cap the daemon far below the kernel's event rate. The daemon goes further:
with the compiled formatter (``lines=``, trace/fastlines.py) ``_format_ops_compiled``
writes the same lines in C at a tenth of the CPU. ``_format_ops`` stays the fallback
and the reference: a change to the lines goes into both, and tests/test_fastlines.py
holds them to identical bytes.

Times are carried in integer nanoseconds and written as microseconds with exactly
three decimals (``"ts":1732400000123456.789,"dur":0.412``): the kernel measures
nanoseconds, and whole microseconds would turn a 0.9 µs read into 0. The decimals
come from integer arithmetic (``divmod`` by 1000 and a table of ``"000"``..``"999"``),
never from float formatting, which would cost more and could round.
"""

from __future__ import annotations

import errno as errno_mod
import hashlib
import json
import logging
import os
import time
import zlib
from collections import OrderedDict
from itertools import repeat
from json.encoder import encode_basestring as _encode_str
from pathlib import Path

import numpy as np

from . import gzindex
from .fastlines import Program

log = logging.getLogger("datacrumbs.trace")

try:
    from isal.isal_zlib import compressobj as _compressobj
except ImportError:  # pragma: no cover - isal is a dependency; zlib is the same format
    _compressobj = zlib.compressobj

#: Columns of the operations array :meth:`TraceWriter.write_ops` takes. ``-1``
#: means "unknown" for fd, fd2, count, offset and size; errno 0 means "no error".
#: ``ts_ns`` is nanoseconds since the Unix epoch, ``dur_ns`` nanoseconds. ``fd2`` (the
#: output descriptor of a copy: copy_file_range, sendfile, splice, tee) and ``flags``
#: (e.g. open's O_* bits) are written only for probes with an ``fd2``/``flags`` role.
OPS_DTYPE = np.dtype([
    ("ts_ns", np.int64), ("dur_ns", np.int64), ("pid", np.int64), ("tid", np.int64),
    ("probe", np.int32), ("ret", np.int64), ("errno", np.int32), ("fd", np.int64),
    ("count", np.int64), ("offset", np.int64), ("size", np.int64),
    ("fd2", np.int64), ("flags", np.int64),
    # what fd and fd2 refer to: an index into FD_KINDS (0: unknown or no descriptor)
    ("kind", np.int8), ("kind2", np.int8),
])
#: ``args.ftype`` of a row by its ``kind`` (enum dc_fkind in the BPF header).
FD_KINDS = ("", "reg", "dir", "pipe", "socket", "tty", "chr", "blk", "link", "anon")

_NOTHING = repeat("")       # a column no row of the batch has
_FTYPE_ARG = tuple(f',"ftype":"{k}"' if k else "" for k in FD_KINDS)
_FTYPE2_ARG = tuple(f',"ftype2":"{k}"' if k else "" for k in FD_KINDS)
#: ftype and ftype2 of a row by kind * len(FD_KINDS) + kind2 (the compiled formatter's table)
_FTYPE_PAIRS = [a + b for a in _FTYPE_ARG for b in _FTYPE2_ARG]
_HASH_CACHE_MAX = 65536
#: The three decimals of a microsecond value, indexed by its nanoseconds (0..999).
_FRAC = [f"{i:03d}" for i in range(1000)]


def us_text(ns: int) -> str:
    """Nanoseconds as the trace writes microseconds: ``1234`` -> ``"1.234"``."""
    q, r = divmod(int(ns), 1000)
    return f"{q}.{_FRAC[r]}"


_SLICE = 256     # lines of about 200 bytes: 50 KiB, below malloc's 128 KiB mmap threshold
_TEXT_BYTES = 8 << 20   # the compiled formatter's buffer: a member of 16,384 lines fits


def _member(lines: list) -> bytes:
    """One complete gzip member holding ``lines`` (each ends with a newline): text
    lines, or blocks of lines (bytes, each line ending with a newline) from the
    compiled formatter.

    ISA-L's deflate (python-isal) when installed: a standard gzip member, as any
    gzip reader sees it, compressed about 8x faster than zlib's level 1 (about
    0.1 µs instead of 0.85 µs per trace line) and as small; otherwise zlib."""
    comp = _compressobj(1, zlib.DEFLATED, 31)
    out = _compress_items(comp, lines)
    out.append(comp.flush(zlib.Z_FINISH))
    return b"".join(out)


def _compress_items(comp, items: list) -> list[bytes]:
    """``comp.compress`` of text lines and blocks of lines, in order."""
    out = []
    text: list[str] = []
    for item in items:
        if isinstance(item, str):
            text.append(item)
            continue
        # a block of lines from the compiled formatter, each ending with a newline
        if text:
            out += _compress_text(comp, text)
            text = []
        out.append(comp.compress(item))
    if text:
        out += _compress_text(comp, text)
    return out


def _split_blocks(items: list, spans: list[tuple[int, int]]):
    """``items`` as one line each (blocks of the compiled formatter split at their
    newlines), with ``spans`` (event items [start, end)) in those lines."""
    if all(isinstance(item, str) for item in items):
        return items, spans
    lines: list[str] = []
    at = []                     # the line index of each item, and one past the end
    for item in items:
        at.append(len(lines))
        if isinstance(item, str):
            lines.append(item)
        else:
            lines += bytes(item).decode("utf-8", "surrogateescape").split("\n")[:-1]
    at.append(len(lines))
    return lines, [(at[start], at[end]) for start, end in spans]


def _compress_text(comp, lines: list[str]) -> list[bytes]:
    # in slices of lines whose text stays below malloc's mmap threshold: one string of
    # a whole member would be fresh pages (page faults) three times over, every flush
    return [comp.compress(("\n".join(lines[i:i + _SLICE]) + "\n").encode("utf-8",
                                                                         "surrogateescape"))
            for i in range(0, len(lines), _SLICE)]


#: The final member of every finished trace; a size cap always leaves room for it.
_CLOSING = _member(["]"])


def name_hash(name: str) -> str:
    """DFTracer-style short hash: first 16 hex digits of SHA-256 of the UTF-8 name."""
    return hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def _json_str(text: str) -> str:
    # json.dumps(text, ensure_ascii=False) without the encoder object it builds per call
    # (10,000 probes: 30,000 calls as the daemon starts)
    if type(text) is str:
        return _encode_str(text)
    return json.dumps(text, ensure_ascii=False)


def _header_args(header: dict, hhash: str) -> dict:
    args = {}
    for key, value in header.items():
        if key != "ts":
            args[key] = value
        if key == "host":
            args["hhash"] = hhash
    args.setdefault("hhash", hhash)
    return args


def _column(key: str, values: list, skip_negative: bool):
    """``,"key":v`` for each value ("" for a negative one when ``skip_negative``).

    Runs of I/O repeat their fd, sizes and return values, so a column with few distinct
    values formats each once (this pays for the three decimals of ``ts`` and ``dur``).
    """
    head = values[:256]     # a cheap look first: most columns are clearly one or the other
    uniq = None if len(set(head)) * 4 > len(head) else set(values)
    if uniq is None or len(uniq) * 4 > len(values):
        if skip_negative:
            return [f',"{key}":{v}' if v >= 0 else "" for v in values]
        return [f',"{key}":{v}' for v in values]
    text = {v: f',"{key}":{v}' if v >= 0 or not skip_negative else "" for v in uniq}
    if len(text) == 1:
        return repeat(text[values[0]])
    return list(map(text.__getitem__, values))


def _concat(parts: list):
    """Row-wise concatenation of columns, each a ``repeat`` of one string or a list:
    one string when every part repeats, else a list (adjacent repeats merged first)."""
    segs: list = []
    for part in parts:
        value = next(part) if isinstance(part, repeat) else part
        if isinstance(value, str) and segs and isinstance(segs[-1], str):
            segs[-1] += value
        else:
            segs.append(value)
    if len(segs) == 1 and isinstance(segs[0], str):
        return segs[0]
    cols = [repeat(x) if isinstance(x, str) else x for x in segs]
    if len(cols) <= 3 and sum(isinstance(x, str) for x in segs) == len(segs) - 1:
        pre = segs[0] if isinstance(segs[0], str) else ""
        post = segs[-1] if isinstance(segs[-1], str) and len(segs) > 1 else ""
        (var,) = [x for x in segs if not isinstance(x, str)]
        return [pre + x + post for x in var]
    return ["".join(row) for row in zip(*cols)]


def _np_column(key: str, col: np.ndarray, skip_negative: bool):
    """_column of a numpy column, without a Python list when all its values are one."""
    first = int(col[0])
    if (col == first).all():
        return repeat(f',"{key}":{first}' if first >= 0 or not skip_negative else "")
    return _column(key, col.tolist(), skip_negative)


def _args_text(args: list) -> list[str]:
    """Each row's extra args as trace text (``,"k":v`` ...; "" for none). Rows share
    dicts (one per inode, dataset ...): each dict is formatted once."""
    text: dict = {}
    out = []
    for a in args:
        if not a:
            out.append("")
            continue
        t = text.get(id(a))
        if t is None:
            t = text[id(a)] = "".join(f',{_json_str(str(k))}:{_arg_json(v)}'
                                      for k, v in a.items())
        out.append(t)
    return out


def _arg_json(value) -> str:
    """An extra arg: integers (a USDT probe's arguments) as numbers, the rest as text."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _json_str(str(value))


def probe_name(probe: dict) -> str:
    """The operation name of an event: the syscall or symbol, or the tracepoint's event."""
    target = str(probe.get("target") or probe.get("id", "?"))
    return target.rsplit(":", 1)[-1]


class _ProbeTable:
    """One of a writer's per-probe tables (``_probe_tables``), all made at first use."""

    def __init__(self, index: int):
        self.index = index

    def __get__(self, writer, owner=None) -> list:
        return writer._probe_tables()[self.index]


class TraceWriter:
    """Writes one trace file; create it with the job's header, then feed it batches."""

    def __init__(self, path, *, header: dict, owner_uid: int | None = None,
                 owner_gid: int | None = None, mode: int = 0o600, flush_interval: float = 1.0,
                 member_events: int = 16384, dir_fd: int | None = None, clock=time.monotonic,
                 max_bytes: int | None = None, lines=None):
        self.path = Path(path)
        # the compiled line formatter (trace/fastlines.py); None: Python f-strings
        self.formatter = lines
        self._text = bytearray()    # the text of its blocks in the current member
        self._text_used = 0
        # with it, the member is compressed as its blocks are made (their text is still in
        # the CPU's cache, not read back megabytes later): the compressor, its output so
        # far, and how many items of _lines it has been given
        self._comp = None
        self._zout: list[bytes] = []
        self._fed = 0
        self.flush_interval = float(flush_interval)
        self.member_events = int(member_events)
        self._clock = clock
        self.events_written = 0      # events inside members that reached the file
        self.events_dropped = 0      # events not written because of a write error
        self.bytes_written = 0
        self.error: str | None = None
        self.closed = False
        # Set (time.time()) when max_bytes was reached: the file is finished, ``]`` written.
        self.capped_at: float | None = None
        self.max_bytes: int | None = None   # the header member is never held back
        self._spans: list[tuple[int, int]] = []  # event lines in _lines: [start, end)
        self._members = bytearray()     # what the index at a clean close lists (gzindex.pack)
        self._complete = False
        self._next_id = 1
        self._lines: list[str] = []
        self._pending_events = 0
        self._last_flush = clock()
        self._hashes: OrderedDict[str, str] = OrderedDict()
        self._named_pids: set[int] = set()
        self._probes: list[dict] = []
        self._tables: tuple | None = None          # made from _probes at first use
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        # dir_fd: the caller walked the directory without following links; stay inside it.
        self._fd = os.open(self.path, flags, mode, dir_fd=dir_fd)
        try:
            os.fchmod(self._fd, mode)  # the umask must not widen or narrow it
            if owner_uid is not None or owner_gid is not None:
                os.fchown(self._fd, -1 if owner_uid is None else owner_uid,
                          -1 if owner_gid is None else owner_gid)
        except OSError:
            os.close(self._fd)
            os.unlink(self.path, dir_fd=dir_fd)
            raise
        host = str(header.get("host", ""))
        self.hhash = name_hash(host)
        self._hhash_arg = f'"hhash":"{self.hhash}"'
        head = {"id": 0, "name": "datacrumbs", "cat": "datacrumbs", "pid": 0, "tid": 0,
                "ts": int(header.get("ts", time.time_ns() // 1000)), "ph": "M",
                "args": _header_args(header, self.hhash)}
        self._lines.append("[")
        self._lines.append(json.dumps(head, ensure_ascii=False, separators=(",", ":")))
        self._hash_line("HH", host, 0, 0)
        self.flush()
        self.max_bytes = None if max_bytes is None else int(max_bytes)

    # -- metadata -------------------------------------------------------------------------

    def set_probes(self, probes: list[dict]) -> None:
        """The probes ``ops["probe"]`` indexes; each one's line prefix is made at the first
        write (10,000 probes: 30 ms a tracer's ready file need not wait for)."""
        self._probes, self._tables = list(probes), None

    def _probe_tables(self) -> tuple:
        """(prefix, args, ret, fd2, flags) of each probe, made once per set_probes."""
        if self._tables is not None:
            return self._tables
        prefix, args, ret, fd2, flags = [], [], [], [], []
        for probe in self._probes:
            roles = probe.get("args") if isinstance(probe.get("args"), dict) else {}
            tp = probe.get("kind") == "tracepoint"
            fd2.append("fd2" in roles and not tp)
            # async requests: the opcode (and the fixed-file bit) is in flags
            flags.append(("flags" in roles and not tp) or probe.get("kind") == "async")
            name = probe_name(probe)
            cat = str(probe.get("category") or "SYSCALL")
            prefix.append(f'"name":{_json_str(name)},"cat":{_json_str(cat)},')
            pid_ = str(probe.get("id", ""))
            extra = "" if pid_ == f"{cat.lower()}.{name}" else f',"probe":{_json_str(pid_)}'
            if probe.get("discovered"):   # a library of the probe's family found at run time
                extra += f',"library":{_json_str(str(probe.get("library")))}'
            args.append(extra)
            # a void function's rax is whatever it last held (returns: null)
            ret.append(probe.get("kind") not in ("tracepoint", "usdt")
                       and not ("returns" in probe and probe["returns"] is None))
        self._tables = (prefix, args, ret, fd2, flags)
        return self._tables

    _probe_prefix, _probe_args, _probe_ret, _probe_fd2, _probe_flags = (
        _ProbeTable(i) for i in range(5))

    def _hash_line(self, kind: str, name: str, pid: int, tid: int) -> str:
        value = name_hash(name)
        self._lines.append(
            f'{{"id":{self._take_id()},"name":"{kind}","cat":"dftracer","pid":{pid},"tid":{tid},'
            f'"ph":"M","args":{{"name":{_json_str(name)},"value":"{value}"}}}}')
        return value

    def _take_id(self) -> int:
        n = self._next_id
        self._next_id += 1
        return n

    def file_hash(self, path: str, pid: int = 0) -> str:
        """Hash of a file path, writing its ``FH`` line first if this writer has not yet."""
        value = self._hashes.get(path)
        if value is not None:
            self._hashes.move_to_end(path)
            return value
        value = self._hash_line("FH", path, pid, pid)
        self._hashes[path] = value
        if len(self._hashes) > _HASH_CACHE_MAX:
            self._hashes.popitem(last=False)  # re-emitting an FH line later is harmless
        return value

    def string_hash(self, text: str, pid: int = 0) -> str:
        """``SH`` table entry (e.g. a command line), written before first use."""
        return self._hash_line("SH", text, pid, pid)

    def process_name(self, pid: int, name: str, rank: int | None = None) -> None:
        """A process's command name, and its rank in the job when its launcher set one
        (tracer/ranks.py): the report labels its rows with both."""
        if pid in self._named_pids and rank is None:
            return
        if len(self._named_pids) > 1_000_000:
            self._named_pids.clear()
        self._named_pids.add(pid)
        self._lines.append(
            f'{{"id":{self._take_id()},"name":"process_name","cat":"dftracer","pid":{pid},'
            f'"tid":{pid},"ph":"M","args":{{"name":{_json_str(name)}'
            + (f',"rank":{int(rank)}' if rank is not None else "") + "}}")

    def named(self, pid: int) -> bool:
        return pid in self._named_pids

    # -- events ---------------------------------------------------------------------------

    def write_ops(self, ops: np.ndarray, paths: list | None = None,
                  paths2: list | None = None, args: list | None = None) -> None:
        """Append completed operations (``OPS_DTYPE`` rows); ``paths[i]`` names row i's file,
        ``paths2[i]`` the file of its ``fd2`` (the output of a copy), written as ``fhash2``;
        ``args[i]`` (a dict of strings and ints, or None) adds to row i's args, e.g. an HDF5
        call's ``{"dataset": "/grid/temperature"}``, a kernel event's ``{"ino": 12, "async": 1}``."""
        n = len(ops)
        if n == 0:
            return
        if self.error is not None or self.closed or self.capped_at is not None:
            self.events_dropped += n
            return
        room = self.member_events - self._pending_events
        if n > room:  # a member never holds more than member_events events
            self.write_ops(ops[:room], None if paths is None else paths[:room],
                           None if paths2 is None else paths2[:room],
                           None if args is None else args[:room])
            self.write_ops(ops[room:], None if paths is None else paths[room:],
                           None if paths2 is None else paths2[room:],
                           None if args is None else args[room:])
            return
        self._format_ops(ops, paths, paths2, args)

    def _format_ops(self, ops: np.ndarray, paths: list | None, paths2: list | None = None,
                    args: list | None = None) -> None:
        if self.formatter is not None:
            self._format_ops_compiled(ops, paths, paths2, args)
            return
        n = len(ops)
        if paths is not None:
            first_pid = int(ops["pid"][0])
            fhs: dict = {None: ""}
            for p in dict.fromkeys(paths):  # FH lines for the whole batch, before its events
                if p is not None:
                    fhs[p] = f',"fhash":"{self.file_hash(p, first_pid)}"'
            fh = repeat(fhs[paths[0]]) if len(fhs) - (None not in paths) == 1 else \
                [fhs[p] for p in paths]
        else:
            fh = repeat("")
        probe = ops["probe"].tolist()
        fd2s, flagss = self._second_columns(ops, paths2, set(probe))
        if args is not None:    # HDF5 object calls, USDT and kernel events
            flagss = [fl + t for fl, t in zip(flagss, _args_text(args))]
        start = self._next_id
        self._next_id += n
        has_ret = self._probe_ret
        cols = []
        for key in ("fd", "count", "offset", "size"):
            cols.append(_np_column(key, ops[key], True))
        cols.insert(1, fd2s)
        errs = ops["errno"]
        if errs.any():
            rets = [(f',"ret":{r}' if e == 0 else f',"ret":-1,"errno":{e}') if has_ret[p] else ""
                    for r, e, p in zip(ops["ret"].tolist(), errs.tolist(), probe)]
        elif all(has_ret):
            rets = _np_column("ret", ops["ret"], False)
        else:
            rets = [f',"ret":{r}' if has_ret[p] else "" for r, p in zip(ops["ret"].tolist(), probe)]
        ext, fr = self._probe_args, _FRAC
        ts_q, ts_r = np.divmod(ops["ts_ns"], 1000)
        dur_q, dur_r = np.divmod(np.maximum(ops["dur_ns"], 0), 1000)
        # Each line is {"id":…,HEAD"ts":…,"dur":…,"ph":"X","args":{TAIL}}: HEAD (name, cat,
        # pid, tid) and TAIL (every arg) repeat across runs of I/O, so they are built once
        # per distinct value and the per-row f-string formats only id, ts and dur.
        heads = self._heads(ops, probe)
        extc = repeat(ext[probe[0]]) if len(set(ext[p] for p in set(probe))) == 1 else \
            [ext[p] for p in probe]
        tails = _concat([self._hhash_arg, fh, cols[0], cols[1], cols[2], cols[3], cols[4], rets,
                         flagss, extc])
        first = len(self._lines)
        self._spans.append((first, first + n))
        ids = range(start, start + n)
        if isinstance(heads, str) and isinstance(tails, str):
            h, t = heads, tails
            self._lines.extend([
                f'{{"id":{i},{h}"ts":{c}.{fr[cr]},"dur":{d}.{fr[dr]},"ph":"X","args":{{{t}}}}}'
                for i, c, cr, d, dr in zip(ids, ts_q.tolist(), ts_r.tolist(), dur_q.tolist(),
                                           dur_r.tolist())])
        else:
            self._lines.extend([
                f'{{"id":{i},{h}"ts":{c}.{fr[cr]},"dur":{d}.{fr[dr]},"ph":"X","args":{{{t}}}}}'
                for i, h, c, cr, d, dr, t in zip(
                    ids, repeat(heads) if isinstance(heads, str) else heads, ts_q.tolist(),
                    ts_r.tolist(), dur_q.tolist(), dur_r.tolist(),
                    repeat(tails) if isinstance(tails, str) else tails)])
        self._pending_events += n
        if self._pending_events >= self.member_events:
            self.flush()

    def _format_ops_compiled(self, ops: np.ndarray, paths: list | None,
                             paths2: list | None = None, args: list | None = None) -> None:
        """_format_ops's lines, byte for byte, by the compiled formatter: the batch's
        layout (constant columns as text, the rest as columns) is decided here once, and
        the rows are written in C as one block of lines (tests/test_fastlines.py)."""
        n = len(ops)
        prog = Program()
        probe = ops["probe"]
        # the columns that hold one value, in one pass (C); else a numpy pass per column
        uniform = self.formatter.uniform(ops)

        def one(key: str):
            """The column's one value, or None when its rows differ."""
            if uniform is not None:
                return uniform.get(key)
            col = ops[key]
            v0 = int(col[0])
            return v0 if (col == v0).all() else None

        fh_entries = fh_index = None
        if paths is not None:
            first_pid = int(ops["pid"][0])
            ids: dict = {}
            # FH lines for the whole batch, before its events (a run on one file: no dict)
            for p in [paths[0]] if paths.count(paths[0]) == n else dict.fromkeys(paths):
                ids[p] = len(ids)
            fh_entries = [f',"fhash":"{self.file_hash(p, first_pid)}"' if p is not None else ""
                          for p in ids]
            if len(ids) > 1:
                fh_index = np.fromiter(map(ids.__getitem__, paths), np.int32, n)
        p0 = int(probe[0])
        one_probe = one("probe") is not None
        probes = {p0} if one_probe else set(probe.tolist())
        fd2s = _NOTHING
        if any(0 <= p < len(self._probe_fd2) and self._probe_fd2[p] for p in probes):
            fd2s = self._fd2_strings(ops, paths2)
        start = self._next_id
        self._next_id += n
        # {"id":…,"name":…,"cat":…,"pid":…,"tid":…,"ts":…,"dur":…,"ph":"X","args":{…}}
        prog.text('{"id":')
        prog.ident()
        prog.text(",")
        pid, tid = ops["pid"], ops["tid"]
        pfx = self._probe_prefix
        if one_probe:
            prog.text(pfx[p0])
        else:
            prog.table(pfx, probe)
        for key, name, col in (('"pid":', "pid", pid), (',"tid":', "tid", tid)):
            v0 = one(name)
            if v0 is not None:
                prog.text(f"{key}{v0}")
            else:
                prog.number(key, col)
        prog.text(',"ts":')
        prog.micros(ops["ts_ns"])
        prog.text(',"dur":')
        prog.micros(ops["dur_ns"], clamp=True)
        prog.text(',"ph":"X","args":{')
        prog.text(self._hhash_arg)
        if fh_entries is not None:
            if fh_index is None:
                prog.text(fh_entries[0])
            else:
                prog.table(fh_entries, fh_index)
        for key in ("fd", "fd2", "count", "offset", "size"):
            if key == "fd2":
                if fd2s is not _NOTHING:
                    prog.strings(fd2s)
                continue
            v0 = one(key)
            if v0 is not None:
                prog.text(f',"{key}":{v0}' if v0 >= 0 else "")
            else:
                prog.number(f',"{key}":', ops[key], skip_neg=True)
        has_ret = self._probe_ret
        errs = ops["errno"]
        if one("errno") != 0 or not all(has_ret[p] for p in probes):
            mask = None if all(has_ret[p] for p in probes) else \
                np.array(has_ret, np.uint8)[probe]
            prog.ret(ops["ret"], errs, mask)
        else:
            r0 = one("ret")
            if r0 is not None:
                prog.text(f',"ret":{r0}')
            else:
                prog.number(',"ret":', ops["ret"])
        has_flags = self._probe_flags
        if any(0 <= p < len(has_flags) and has_flags[p] for p in probes):
            if all(has_flags[p] for p in probes):
                prog.number(',"flags":', ops["flags"])
            else:
                prog.number(',"flags":', ops["flags"], mask=np.array(has_flags, np.uint8)[probe])
        kinds, kinds2 = ops["kind"], ops["kind2"]
        k, k2 = one("kind"), one("kind2")
        if k is not None and k2 is not None:    # a run on one kind: one string (or none)
            if k or k2:
                prog.text(_FTYPE_ARG[k] + _FTYPE2_ARG[k2])
        else:
            prog.table(_FTYPE_PAIRS, kinds.astype(np.int32) * len(FD_KINDS) + kinds2)
        if args is not None:    # the same text as _format_ops gives (ints as numbers)
            prog.strings(_args_text(args))
        ext = self._probe_args
        if one_probe:
            prog.text(ext[p0])
        else:
            prog.table(ext, probe)
        prog.text("}}\n")
        block = self._format_block(prog.done(), n, start)
        first = len(self._lines)
        self._spans.append((first, first + 1))   # one item: a block of n lines
        self._lines.append(block)
        self._pending_events += n
        if self._pending_events >= self.member_events:
            self.flush()
        elif self.error is None and self.capped_at is None:
            if self._comp is None:
                self._comp = _compressobj(1, zlib.DEFLATED, 31)
            self._zout += _compress_items(self._comp, self._lines[self._fed:])
            self._fed = len(self._lines)

    def _format_block(self, prog: Program, n: int, start: int) -> memoryview:
        """The compiled lines of one batch, in the member's text buffer: it is reused
        member after member (a fresh multi-megabyte buffer per batch is fresh pages, page
        faults, each time); a full one is replaced, and the old one lives on in the
        blocks that point into it until their member is written."""
        need = prog.row_max * n
        if len(self._text) - self._text_used < need:
            # grown as members need it (each new page is a page fault), up to _TEXT_BYTES
            self._text = bytearray(max(need, min(2 * len(self._text) or 1 << 18, _TEXT_BYTES)))
            self._text_used = 0
        pos = self._text_used
        used = self.formatter.format_into(prog, n, start, self._text, pos)
        self._text_used = pos + used
        return memoryview(self._text)[pos:pos + used]

    def _fd2_strings(self, ops: np.ndarray, paths2: list | None) -> list:
        """``,"fd2":N,"fhash2":"…"`` of each row, as _second_columns writes it."""
        has_fd2 = self._probe_fd2
        first_pid = int(ops["pid"][0])
        out = []
        for i, (p, fd2) in enumerate(zip(ops["probe"].tolist(), ops["fd2"].tolist())):
            if fd2 < 0 or not has_fd2[p]:
                out.append("")
                continue
            path = paths2[i] if paths2 is not None else None
            out.append(f',"fd2":{fd2}' if path is None else
                       f',"fd2":{fd2},"fhash2":"{self.file_hash(path, first_pid)}"')
        return out

    def _heads(self, ops: np.ndarray, probe: list):
        """``"name":…,"cat":…,"pid":…,"tid":…,`` of each row: one string when the batch
        has one (probe, pid, tid), else a list built once per distinct triple."""
        pfx = self._probe_prefix
        pid, tid = ops["pid"], ops["tid"]
        if (pid == pid[0]).all() and (tid == tid[0]).all() and probe.count(probe[0]) == len(probe):
            return f'{pfx[probe[0]]}"pid":{int(pid[0])},"tid":{int(tid[0])},'
        made: dict = {}
        out = []
        for key in zip(probe, pid.tolist(), tid.tolist()):
            h = made.get(key)
            if h is None:
                h = made[key] = f'{pfx[key[0]]}"pid":{key[1]},"tid":{key[2]},'
            out.append(h)
        return out

    def _second_columns(self, ops: np.ndarray, paths2: list | None, probes=None):
        """``,"fd2":N,"fhash2":"…"`` and ``,"flags":N,"ftype":"…","ftype2":"…"`` of each
        row, only for the probes and rows that have them (else nothing is formatted)."""
        if probes is None:
            probes = set(ops["probe"].tolist())
        has_fd2, has_flags = self._probe_fd2, self._probe_flags
        fd2s = flagss = _NOTHING
        if any(0 <= p < len(has_fd2) and has_fd2[p] for p in probes):
            fd2s = self._fd2_strings(ops, paths2)
        if any(0 <= p < len(has_flags) and has_flags[p] for p in probes):
            flagss = [f',"flags":{f}' if has_flags[p] else ""
                      for p, f in zip(ops["probe"].tolist(), ops["flags"].tolist())]
        kinds, kinds2 = ops["kind"], ops["kind2"]
        if kinds.any() or kinds2.any():     # the kind of each descriptor the kernel saw
            ft, ft2 = _FTYPE_ARG, _FTYPE2_ARG
            k, k2 = int(kinds[0]), int(kinds2[0])
            if (kinds == k).all() and (kinds2 == k2).all():   # a run on one kind: one string
                tails = repeat(ft[k] + ft2[k2])
            else:
                tails = [ft[k] + ft2[k2] for k, k2 in zip(kinds.tolist(), kinds2.tolist())]
            if flagss is _NOTHING:
                flagss = tails
            else:
                flagss = [a + b for a, b in zip(flagss, tails)]
        return fd2s, flagss

    def write_counters(self, rows) -> None:
        """Profile counters: rows of (ts_ns, pid, probe, count, bytes, time_ns); ``ts`` and
        ``args.time_us`` are written as microseconds with three decimals, like events."""
        if self.error is not None or self.closed or self.capped_at is not None:
            self.events_dropped += len(rows)
            return
        first = len(self._lines)
        self._spans.append((first, first + len(rows)))
        pfx = self._probe_prefix
        for ts, pid, probe, count, nbytes, time_ns in rows:
            self._lines.append(
                f'{{"id":{self._take_id()},{pfx[probe]}"pid":{pid},"tid":{pid},'
                f'"ts":{us_text(ts)},"ph":"C","args":{{"count":{count},"bytes":{nbytes},'
                f'"time_us":{us_text(max(time_ns, 0))}}}}}')
        self._pending_events += len(rows)
        if self._pending_events >= self.member_events:
            self.flush()

    def write_unsent(self, rows) -> None:
        """Trace mode: operations whose events the kernel could not send (ring buffer full),
        rows of (ts_ns, pid, probe, count, bytes, time_ns) since the previous call. Written
        as counters like profile mode's, with ``args.events_lost`` (= ``count``) saying
        these operations have no event of their own: a reader adds them to the events'
        totals, which are then exact. They are not events, so events_written skips them."""
        if self.error is not None or self.closed or self.capped_at is not None or not rows:
            return
        pfx = self._probe_prefix
        for ts, pid, probe, count, nbytes, time_ns in rows:
            self._lines.append(
                f'{{"id":{self._take_id()},{pfx[probe]}"pid":{pid},"tid":{pid},'
                f'"ts":{us_text(ts)},"ph":"C","args":{{"count":{count},"bytes":{nbytes},'
                f'"time_us":{us_text(max(time_ns, 0))},"events_lost":{count}}}}}')

    # -- members --------------------------------------------------------------------------

    def tick(self) -> None:
        """Close the current member if it is older than ``flush_interval`` (call often)."""
        if self._lines and self._clock() - self._last_flush >= self.flush_interval:
            self.flush()

    def flush(self) -> None:
        """Write everything buffered as one complete gzip member."""
        self._last_flush = self._clock()
        if not self._lines:
            return
        lines, self._lines = self._lines, []
        pending, self._pending_events = self._pending_events, 0
        spans, self._spans = self._spans, []
        self._text_used = 0     # written below or dropped: its blocks' space is free again
        comp, zout, fed = self._comp, self._zout, self._fed
        self._comp, self._zout, self._fed = None, [], 0
        if self.error is not None or self.capped_at is not None:
            self.events_dropped += pending
            return
        if comp is None:
            data = _member(lines)
        else:           # the rest of a member compressed as it was made
            zout += _compress_items(comp, lines[fed:])
            zout.append(comp.flush(zlib.Z_FINISH))
            data = b"".join(zout)
        if (self.max_bytes is not None and lines != ["]"]
                and self.bytes_written + len(data) + len(_CLOSING) > self.max_bytes):
            self._cap(lines, spans, pending)
            return
        at = self.bytes_written
        if self._write_all(data):
            self.events_written += pending
            self._members += gzindex.pack(at, pending, bytes(data[-8:]))
        else:
            self.events_dropped += pending

    def _cap(self, lines: list[str], spans: list[tuple[int, int]], pending: int) -> None:
        """Write the longest prefix of ``lines`` that fits under max_bytes with the closing
        member, then the closing member: the trace ends at the cap, complete and readable."""
        room = self.max_bytes - self.bytes_written - len(_CLOSING)
        lines, spans = _split_blocks(lines, spans)
        lo, hi, best = 0, len(lines), b""
        while lo < hi:  # compressed size grows with the prefix: binary search, once per run
            mid = (lo + hi + 1) // 2
            data = _member(lines[:mid])
            if len(data) <= room:
                lo, best = mid, data
            else:
                hi = mid - 1
        kept = sum(max(0, min(end, lo) - start) for start, end in spans)
        self.capped_at = time.time()
        if best and not self._write_all(best):
            self.events_dropped += pending
            return
        self.events_written += kept
        self.events_dropped += pending - kept
        self._write_all(_CLOSING)

    def _write_raw(self, data) -> None:
        """All of ``data`` at the file's end, or OSError."""
        view = memoryview(data)
        while view:
            done = os.write(self._fd, view)
            if done <= 0:
                raise OSError(errno_mod.EIO, "write returned 0")
            view = view[done:]

    def _write_all(self, data: bytes) -> bool:
        try:
            self._write_raw(data)
        except OSError as exc:
            self._fail(exc)
            return False
        self.bytes_written += len(data)
        return True

    def _write_index(self) -> None:
        """The member index after "]" (trace/gzindex.py: the report cuts the trace there
        without inflating it). A hint only: if it cannot be written (disk full) the file is
        cut back to "]", still complete, and readers find the members by inflating."""
        try:
            self._write_raw(gzindex.index_members(self._members, self.bytes_written))
        except OSError as exc:
            log.debug("trace %s: member index not written (%s)", self.path, exc)
            try:
                os.ftruncate(self._fd, self.bytes_written)
            except OSError:
                pass

    def _fail(self, exc: OSError) -> None:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        self.error = f"{self.path}: {reason}"
        try:  # drop the torn member so the file ends at a complete one
            os.ftruncate(self._fd, self.bytes_written)
        except OSError:
            pass
        log.error("cannot write trace %s (%s): stopped writing; the trace is readable up to "
                  "the last complete member and the job is not affected", self.path, reason)

    @property
    def complete(self) -> bool:
        """True once a clean close wrote the final ``]``, no write failed and no event was
        left out for the size cap (a capped trace is well formed but not complete)."""
        return self._complete and self.capped_at is None

    def close(self) -> None:
        """Flush, write ``]`` in its own member, fsync and close (idempotent)."""
        if self.closed:
            return
        self.flush()
        if self.error is None:
            if self.capped_at is None:  # a capped trace got its "]" at the cap
                self._lines.append("]")
                self.flush()
                if self.error is None:
                    self._write_index()
            self._complete = self.error is None
            try:
                os.fsync(self._fd)
            except OSError:
                pass
        self.closed = True
        os.close(self._fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
