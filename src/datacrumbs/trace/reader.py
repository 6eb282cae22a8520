"""Streaming reader of ``.pfw.gz`` traces: whole gzip members, torn tails, hash tables.

A trace is a series of gzip members (docs/design.md, "The trace"). A daemon
killed mid-write leaves a torn last member; gzip.open would raise on it and
lose everything, so members are inflated one by one with
``decompressobj(wbits=31)`` (ISA-L's, with zlib's API). Of a torn or corrupt last member the whole
lines inflated before the damage are kept (no CRC can vouch for them, but
deflate output is sequential); the rest is dropped and reported in
:class:`ReadStats`, never raised: a crashed job's trace is still readable.

Memory stays bounded: a member is buffered until its end is verified, up to
``max_member_bytes``; beyond that (a foreign producer writing one huge member)
whole lines are handed on as they arrive.
"""

from __future__ import annotations

import json
import os
import stat
import zlib
from bisect import bisect_right
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence

from ..errors import DatacrumbsError
from . import gzindex

try:  # ISA-L's inflate: the same gzip, about 3x less CPU than zlib's
    from isal import isal_zlib as _inflate
    _INFLATE_ERRORS: tuple = (zlib.error, _inflate.error)
except ImportError:  # pragma: no cover - isal is a dependency
    _inflate = zlib
    _INFLATE_ERRORS = (zlib.error,)

try:  # optional: about 10% faster summaries than the standard json module
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - depends on the installation
    _loads = json.loads

GZIP_MAGIC = b"\x1f\x8b"
READ_CHUNK = 1 << 20
#: Upper bound on the decompressed bytes produced per zlib call (bounds memory
#: on highly compressible input).
INFLATE_STEP = 16 << 20
DEFAULT_MAX_MEMBER = 64 << 20
#: Compressed bytes a call when a damaged member is inflated again up to its damage.
SALVAGE_STEP = 256
DEFAULT_CHUNK_EVENTS = 32768
#: Bytes of text decoded per call: bounds the dicts alive at once.
PARSE_BLOCK = 4 << 20
HASH_KINDS = {"HH": "hosts", "FH": "files", "SH": "strings"}


class TraceReadError(DatacrumbsError):
    """A trace file that cannot be read at all (missing, unreadable, not a trace)."""


@dataclass
class ReadStats:
    """What reading one file (or one member range of it) found."""

    path: str
    members: int = 0            # complete gzip members read
    records: int = 0            # JSON object lines, metadata included
    events: int = 0             # records that are not metadata ("ph" != "M")
    bad_lines: int = 0          # lines that are not a JSON object
    torn_tail: bool = False     # the file ends inside a gzip member (crash)
    tail_error: str | None = None   # why the tail was dropped (torn / corrupt)
    dropped_bytes: int = 0      # compressed bytes after the last complete member
    partial_member_kept: bool = False  # lines of an oversize torn member were kept
    closed: bool = False        # the final "]" line was seen (clean close)
    compressed_bytes: int = 0
    uncompressed_bytes: int = 0

    def merge(self, other: "ReadStats") -> None:
        for name in ("members", "records", "events", "bad_lines", "dropped_bytes",
                     "compressed_bytes", "uncompressed_bytes"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.torn_tail |= other.torn_tail
        self.partial_member_kept |= other.partial_member_kept
        self.closed |= other.closed
        self.tail_error = self.tail_error or other.tail_error

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class MemberInfo:
    offset: int
    length: int


@dataclass
class TailInfo:
    """Set by :func:`iter_members` when the data after the last complete member is bad."""

    torn: bool = False
    error: str | None = None
    dropped_bytes: int = 0
    partial_kept: bool = False


def open_trace(path: str | os.PathLike) -> BinaryIO:
    """Open a trace for reading, refusing non-regular files with a readable message."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise TraceReadError(f"{p}: no such file; give a .pfw.gz trace or a trace directory") from None
    except PermissionError:
        raise TraceReadError(f"{p}: permission denied; run as the job's user or root") from None
    except OSError as exc:
        raise TraceReadError(f"{p}: cannot open: {exc.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise TraceReadError(f"{p}: not a regular file; give a .pfw.gz trace file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def iter_members(f: BinaryIO, *, start: int = 0, end: int | None = None,
                 tail: TailInfo | None = None, max_member_bytes: int = DEFAULT_MAX_MEMBER,
                 bounds: Sequence[int] = ()) -> Iterator[tuple[MemberInfo | None, bytes]]:
    """Yield ``(member, data)`` for each complete gzip member in ``[start, end)``.

    ``member`` is None for a piece of an oversize member handed on early
    (whole lines only); the member's last piece carries its MemberInfo.
    Problems after the last complete member are recorded in ``tail``.

    ``bounds``: where members are said to start (the trace's index), ascending. Reads
    then end there, so a member is inflated from one read into one piece: no join of its
    pieces, no copy of the input after it (5 % of the inflating on the bench trace). Only
    the reads' sizes depend on them: a wrong bound changes nothing else.
    """
    tail = tail if tail is not None else TailInfo()
    f.seek(start)
    offset = start              # file offset of the first byte of `data`
    member_start = start
    d = _inflate.decompressobj(31)
    fed = False                 # current decompressor has consumed input
    parts: list[bytes] = []
    buffered = 0
    handed = 0                  # bytes of the current member already yielded (oversize)
    data = b""
    pending_output = False      # the last call stopped at INFLATE_STEP: zlib may hold more
    while True:
        if not data and not pending_output:
            want = READ_CHUNK
            if bounds:
                at = bisect_right(bounds, offset)
                if at < len(bounds) and bounds[at] - offset <= 4 * READ_CHUNK:
                    want = bounds[at] - offset
            want = want if end is None else min(want, end - offset)
            data = f.read(want) if want > 0 else b""
            if not data:
                break
        try:
            out = d.decompress(data, INFLATE_STEP)
            pending_output = len(out) == INFLATE_STEP
        except _INFLATE_ERRORS as exc:
            # the failing call returned nothing of its up to READ_CHUNK bytes: inflate the
            # member again in small steps to keep the lines before the damage
            pieces = _salvage(f, member_start, offset + len(data), handed, max_member_bytes,
                              tail)
            first = next(pieces, None)
            what = "not a gzip file" if member_start == start == 0 and not handed and \
                first is None else f"corrupt gzip data at byte {member_start}"
            tail.error = f"{what} ({exc})"
            tail.dropped_bytes = _remaining(f, member_start, end)
            if first is not None:
                yield first
                yield from pieces
            return
        fed = True
        if out:
            parts.append(out)
            buffered += len(out)
        if d.eof:
            used = len(data) - len(d.unused_data)
            member_end = offset + used
            payload = b"".join(parts)
            parts, buffered, handed = [], 0, 0
            yield MemberInfo(member_start, member_end - member_start), payload
            offset = member_end
            member_start = member_end
            data = d.unused_data
            d = _inflate.decompressobj(31)
            fed = False
            continue
        consumed = len(data) - len(d.unconsumed_tail)
        offset += consumed
        data = d.unconsumed_tail
        if buffered > max_member_bytes:
            lines, rest = _whole_lines(parts, tail)
            if lines:
                handed += len(lines)
                yield None, lines
            parts, buffered = [rest], len(rest)
    if fed:
        tail.torn = True
        tail.error = "the file ends inside a gzip member (the writer was killed or the copy is short)"
        tail.dropped_bytes = offset - member_start
        yield from _complete_lines(parts, tail)
    else:
        tail.partial_kept = False


def _salvage(f: BinaryIO, member_start: int, stop: int, skip: int, limit: int,
             tail: TailInfo) -> Iterator[tuple[None, bytes]]:
    """A damaged member's whole lines up to the damage, less its first ``skip`` bytes
    (already yielded): inflated again from its start, SALVAGE_STEP compressed bytes a call
    (at most about 264 KB out), so at most one step's output before the damage is lost;
    handed on in pieces of whole lines past ``limit`` bytes, as iter_members does."""
    f.seek(member_start)
    d = _inflate.decompressobj(31)
    parts: list[bytes] = []
    buffered, pos = 0, member_start
    while pos < stop and not d.eof:
        piece = f.read(min(SALVAGE_STEP, stop - pos))
        if not piece:
            break
        pos += len(piece)
        try:
            out = d.decompress(piece)
        except _INFLATE_ERRORS:
            break
        if skip:
            dropped = min(skip, len(out))
            out, skip = out[dropped:], skip - dropped
        if out:
            parts.append(out)
            buffered += len(out)
        if buffered > limit:
            lines, rest = _whole_lines(parts, tail)
            if lines:
                yield None, lines
            parts, buffered = [rest], len(rest)
    yield from _complete_lines(parts, tail)


def _whole_lines(parts: list[bytes], tail: TailInfo) -> tuple[bytes, bytes]:
    """(the whole lines of a member's output so far, the partial line after them); handing
    on lines before the member's end is noted in ``tail``."""
    joined = b"".join(parts)
    cut = joined.rfind(b"\n") + 1
    if cut:
        tail.partial_kept = True
    return joined[:cut], joined[cut:]


def _complete_lines(parts: list[bytes], tail: TailInfo) -> Iterator[tuple[None, bytes]]:
    """The whole lines a damaged member inflated to before the damage: deflate output is
    sequential, so they are the writer's own lines (a cut keeps all but the last one)."""
    lines, _ = _whole_lines(parts, tail)
    if lines:
        yield None, lines


def _remaining(f: BinaryIO, member_start: int, end: int | None) -> int:
    if end is not None:
        return max(0, end - member_start)
    try:
        return max(0, os.fstat(f.fileno()).st_size - member_start)
    except OSError:
        return 0


def index_members(path: str | os.PathLike) -> tuple[list[MemberInfo], TailInfo]:
    """One pass over a file: where each complete member starts (to split work)."""
    tail = TailInfo()
    members = []
    with open_trace(path) as f:
        for info, _ in iter_members(f, tail=tail, max_member_bytes=1 << 62):
            members.append(info)
    return members, tail


def _split_lines(data: bytes) -> tuple[list[bytes], bool]:
    """Object lines of a piece, and whether the closing ``]`` was among them."""
    lines = []
    closed = False
    for raw in data.split(b"\n"):
        line = raw.strip()
        if not line or line == b"[":
            continue
        if line == b"]":
            closed = True
            continue
        if line.endswith(b","):      # comma-separated Chrome JSON (our Perfetto export)
            line = line[:-1]
        lines.append(line)
    return lines, closed


#: What a lone surrogate looks like in a JSON text (a backslash, then udcff); a block without it
#: decodes to strings that are all UTF-8 encodable.
_SURROGATE_ESCAPES = (b"\\ud", b"\\uD")


def has_surrogate_escape(data: bytes) -> bool:
    return any(e in data for e in _SURROGATE_ESCAPES)


def without_surrogates(doc):
    """``doc`` (decoded JSON) with each lone surrogate escaped as text (``\\udcff``).

    JSON may spell one (a trace line or run summary written by hand, not our writer:
    it writes a name's undecodable bytes as they are), json.loads keeps it, and no
    UTF-8 output (the report's JSON and HTML, a Perfetto export) can hold it. Changes
    dicts and lists in place; iterative, as json.loads already bounded the depth."""
    def clean(v):
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return v.encode("utf-8", "backslashreplace").decode("utf-8")
        return v

    if not isinstance(doc, (dict, list)):
        return clean(doc)
    todo = [doc]
    while todo:
        node = todo.pop()
        for k, v in list(node.items() if isinstance(node, dict) else enumerate(node)):
            if isinstance(v, (dict, list)):
                todo.append(v)
            else:
                node[k] = clean(v)
        if isinstance(node, dict) and any(clean(k) is not k for k in node):
            cleaned = {clean(k): v for k, v in node.items()}
            node.clear()
            node.update(cleaned)
    return doc


def _exact_loads(data: bytes):
    """JSON with every fraction as a Decimal: an epoch ``ts`` in µs with ns decimals has
    more digits than a double holds (0.25 µs apart at today's epoch)."""
    return json.loads(data, parse_float=Decimal)


def parse_lines(lines: list[bytes], loads=None) -> tuple[list[dict], int]:
    """Decode JSON object lines; one decode for the whole batch when all are good."""
    loads = loads or _loads
    if not lines:
        return [], 0
    try:
        records = loads(b"[" + b",".join(lines) + b"]")
        if all(type(r) is dict for r in records):
            return records, 0
    except (ValueError, UnicodeDecodeError, RecursionError):
        pass
    records, bad = [], 0
    for line in lines:
        try:
            rec = (json.loads if loads is _loads else loads)(line)
        except (ValueError, UnicodeDecodeError, RecursionError):
            bad += 1
            continue
        if type(rec) is dict:
            records.append(rec)
        else:
            bad += 1
    return records, bad


def block_events(block: bytes, loads, stats, meta) -> list[dict]:
    """The events of one block of trace lines: metadata lines go to ``meta``, the counts
    (records, bad lines, a closing line) to ``stats``."""
    records, bad, closed = parse_block(block, loads)
    stats.closed |= closed
    stats.bad_lines += bad
    stats.records += len(records)
    events = [r for r in records if r.get("ph") != "M"]
    if len(events) != len(records):
        for r in records:
            if r.get("ph") == "M":
                meta.absorb(r)
    return events


def block_body(block: bytes) -> tuple[bytes, bool]:
    """A block without the JSON array's ``[`` and ``]`` lines, and whether it held the
    closing ``]`` (a trace that was closed)."""
    body = block.strip()
    closed = False
    if body.startswith(b"[") and (len(body) == 1 or body[1:2] in b"\r\n"):
        body = body[1:].lstrip()
    if body.endswith(b"]") and (len(body) == 1 or body[-2:-1] in b"\r\n"):
        body = body[:-1].rstrip()
        closed = True
    return body, closed


def parse_block(block: bytes, loads=None) -> tuple[list[dict], int, bool]:
    """Records of a block of whole lines, bad lines, and whether it held the closing ``]``.

    The writer's layout (no commas, no blank lines) becomes one JSON array by
    turning newlines into commas: one decode call per block. Anything else
    takes the line-by-line path.
    """
    body, closed = block_body(block)
    if not body:
        return [], 0, closed
    if has_surrogate_escape(body):
        records, bad, closed = _parse_body(body, closed, loads)
        return without_surrogates(records), bad, closed
    return _parse_body(body, closed, loads)


def _parse_body(body: bytes, closed: bool, loads) -> tuple[list[dict], int, bool]:
    if b",\n" not in body and b"\n\n" not in body:
        try:
            records = (loads or _loads)(b"[" + body.replace(b"\n", b",") + b"]")
            if all(type(r) is dict for r in records):
                return records, 0, closed
        except (ValueError, UnicodeDecodeError, RecursionError):
            pass
    lines, closed_inside = _split_lines(body)
    records, bad = parse_lines(lines, loads)
    return records, bad, closed or closed_inside


def _blocks(data: bytes, size: int) -> Iterator[bytes]:
    """Cut a piece of whole lines into blocks of about ``size`` bytes, at line ends."""
    start = 0
    while len(data) - start > size:
        cut = data.rfind(b"\n", start, start + size) + 1
        if cut <= start:
            cut = data.find(b"\n", start + size) + 1 or len(data)
        yield data[start:cut]
        start = cut
    if start < len(data):
        yield data[start:] if start else data


@dataclass
class TraceMeta:
    """What the metadata lines of a trace say (header, hash tables, process names)."""

    header: dict | None = None
    hosts: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    strings: dict[str, str] = field(default_factory=dict)
    process_names: dict[int, str] = field(default_factory=dict)
    process_ranks: dict[int, int] = field(default_factory=dict)     # pid -> rank in the job

    def absorb(self, rec: dict) -> bool:
        """Take a metadata record; True when it was one (and is not an event)."""
        if rec.get("ph") != "M":
            return False
        name = rec.get("name")
        args = rec.get("args")
        if not isinstance(args, dict):
            return True
        if name in HASH_KINDS:
            value, text = args.get("value"), args.get("name")
            if isinstance(value, str) and isinstance(text, str):
                getattr(self, HASH_KINDS[name])[value] = text
        elif name == "process_name":
            pid, text, rank = rec.get("pid"), args.get("name"), args.get("rank")
            if isinstance(pid, int) and isinstance(text, str):
                self.process_names[pid] = text
                if isinstance(rank, int) and not isinstance(rank, bool) and rank >= 0:
                    self.process_ranks[pid] = rank
        elif name == "datacrumbs" and rec.get("cat") == "datacrumbs" and self.header is None:
            self.header = dict(args, ts=rec.get("ts"))
        return True

    def merge(self, other: "TraceMeta") -> None:
        if self.header is None:
            self.header = other.header
        self.hosts.update(other.hosts)
        self.files.update(other.files)
        self.strings.update(other.strings)
        for pid, name in other.process_names.items():
            self.process_names.setdefault(pid, name)
        for pid, rank in other.process_ranks.items():
            self.process_ranks.setdefault(pid, rank)

    def resolve(self, args: dict) -> dict:
        """Args with hashes resolved into ``fname``/``hostname`` (DFTracer's names)."""
        out = dict(args)
        fh, hh = args.get("fhash"), args.get("hhash")
        if fh is not None and "fname" not in out and fh in self.files:
            out["fname"] = self.files[fh]
        fh2 = args.get("fhash2")     # a copy's output file
        if fh2 is not None and "fname2" not in out and fh2 in self.files:
            out["fname2"] = self.files[fh2]
        if hh is not None and "hostname" not in out and hh in self.hosts:
            out["hostname"] = self.hosts[hh]
        return out


class TraceReader:
    """Read one trace file (or a member range of it) as chunks of event dicts.

    Metadata lines (header, HH/FH/SH, process names) are absorbed into
    :attr:`meta` as they pass; :attr:`stats` is complete once iteration ends.
    """

    def __init__(self, path: str | os.PathLike, *, start: int = 0, end: int | None = None,
                 chunk_events: int = DEFAULT_CHUNK_EVENTS,
                 max_member_bytes: int = DEFAULT_MAX_MEMBER, exact: bool = False,
                 bounds: Sequence[int] = ()):
        """``exact``: fractions as Decimal (ns-exact epoch times; slower); ``bounds``:
        where members are said to start (iter_members)."""
        self.path = Path(path)
        self.loads = _exact_loads if exact else None
        self.start, self.end = start, end
        self.chunk_events = chunk_events
        self.max_member_bytes = max_member_bytes
        self.bounds = bounds
        self.meta = TraceMeta()
        self.stats = ReadStats(str(self.path))

    def _raw_pieces(self) -> Iterator[bytes]:
        """Decompressed text in whole lines: gzip members, or the plain text of a .pfw/.json."""
        f = open_trace(self.path)
        with f:
            head = f.read(2)
            size = os.fstat(f.fileno()).st_size
            end = size if self.end is None else min(self.end, size)
            self.stats.compressed_bytes = end - self.start
            if head != GZIP_MAGIC and head and self.start == 0 and not self.path.name.endswith(".gz"):
                first = (head + f.read(4094)).lstrip()
                if not first.startswith((b"[", b"{")):
                    raise TraceReadError(
                        f"{self.path}: not a trace (neither gzip nor JSON lines); give a .pfw.gz "
                        "trace written by datacrumbs or DFTracer")
                yield from self._plain_pieces(f, end)
                return
            if head and head != GZIP_MAGIC and self.start == 0:
                raise TraceReadError(
                    f"{self.path}: not a gzip file (a .pfw.gz trace starts with bytes 1f 8b); "
                    "check that this is a datacrumbs or DFTracer trace")
            tail = TailInfo()
            for info, data in iter_members(f, start=self.start, end=end, tail=tail,
                                           max_member_bytes=self.max_member_bytes,
                                           bounds=self.bounds):
                if info is not None and (data or not gzindex.is_index_member(f, info.offset)):
                    self.stats.members += 1     # the writer's member index is not one
                self.stats.uncompressed_bytes += len(data)
                yield data
            if tail.error and self.stats.members == 0 and not tail.partial_kept \
                    and tail.error.startswith("not a gzip"):
                raise TraceReadError(f"{self.path}: {tail.error}")
            self.stats.torn_tail = tail.torn
            self.stats.tail_error = tail.error
            self.stats.dropped_bytes = tail.dropped_bytes
            self.stats.partial_member_kept = tail.partial_kept and tail.error is not None

    def _plain_pieces(self, f: BinaryIO, end: int) -> Iterator[bytes]:
        f.seek(self.start)
        rest = b""
        left = end - self.start
        while left > 0:
            block = f.read(min(READ_CHUNK * 4, left))
            if not block:
                break
            left -= len(block)
            block = rest + block
            cut = block.rfind(b"\n") + 1
            rest = block[cut:]
            self.stats.uncompressed_bytes += cut
            if cut:
                yield block[:cut]
        if rest:
            self.stats.uncompressed_bytes += len(rest)
            yield rest
        self.stats.members = 0

    def chunks(self) -> Iterator[list[dict]]:
        """Lists of about ``chunk_events`` raw event dicts (metadata absorbed into meta)."""
        pending: list[dict] = []
        stats, meta = self.stats, self.meta
        for data in self._raw_pieces():
            for block in _blocks(data, PARSE_BLOCK):
                pending.extend(block_events(block, self.loads, stats, meta))
                if len(pending) >= self.chunk_events:
                    stats.events += len(pending)
                    yield pending
                    pending = []
        if pending:
            stats.events += len(pending)
            yield pending

    def events(self, *, resolve: bool = True) -> Iterator[dict]:
        """One event dict at a time; with ``resolve`` args gain ``fname``/``hostname``."""
        for chunk in self.chunks():
            for rec in chunk:
                if resolve and isinstance(rec.get("args"), dict):
                    rec["args"] = self.meta.resolve(rec["args"])
                yield rec

    def dataframes(self, *, resolve: bool = True):
        """pandas DataFrames of up to ``chunk_events`` events, ``args`` flattened to ``args.*``."""
        import pandas as pd

        for chunk in self.chunks():
            if resolve:
                for rec in chunk:
                    if isinstance(rec.get("args"), dict):
                        rec["args"] = self.meta.resolve(rec["args"])
            yield pd.json_normalize(chunk)

    def read_all(self) -> list[dict]:
        """Every event of a small trace (tests and tools; use :meth:`chunks` for big ones)."""
        return list(self.events())


def read_header(path: str | os.PathLike) -> dict | None:
    """The trace header from the first member only (cheap: no full decompression)."""
    reader = TraceReader(path, chunk_events=64)
    chunks = reader.chunks()
    try:
        for _ in chunks:
            if reader.meta.header is not None:
                break
    finally:
        chunks.close()
    return reader.meta.header
