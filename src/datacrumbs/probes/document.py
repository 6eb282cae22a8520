"""Build, encode, write and read probes documents (format 1).

Reading is the dangerous direction: the bytes come from a user's file or
socket and end in a root daemon. So reading is bounded at every step — the
compressed size, the decompressed size (checked while inflating, so a gzip
bomb is stopped after max_decompressed bytes, never inflated whole), the JSON
nesting depth, and duplicate keys (which two JSON parsers could resolve
differently) are refused. Every step is linear in the input: a hostile file
must not buy a root prolog seconds of CPU (a backtracking pre-scan once did).
"""

from __future__ import annotations

import copy
import errno
import gzip
import json
import os
import stat
import time
import zlib
from pathlib import Path

from ..atomicfile import atomic_write
from ..config import SiteConfig
from . import CorruptGzip, InvalidJSON, NotRegularFile, SchemaViolation, TooLarge, Unreadable
from .schema import PROBES_FORMAT, PROBES_VERSION, schema_problem

MAX_JSON_DEPTH = 32
_DEFAULTS = SiteConfig()
_GZIP_MAGIC = b"\x1f\x8b"


def _hostname() -> str:
    import socket       # here: the tracer's start reads documents, it never builds one

    return socket.gethostname()


def build_document(probes, *, owner_uid: int, owner_user: str, sets, mode: str = "trace",
                   interval_ms: int = 1000, paths: bool = True, issued_at: int | None = None,
                   expires_at: int | None = None, validity_days: int = 7,
                   host: str | None = None, patterns=None) -> dict:
    """A complete unsigned document; raises SchemaViolation rather than build a bad one.
    ``patterns``: [{"kind", "pattern", "probes"}], the selections by pattern it holds."""
    issued = int(time.time()) if issued_at is None else int(issued_at)
    expires = issued + int(validity_days) * 86400 if expires_at is None else int(expires_at)
    doc = {
        "format": PROBES_FORMAT,
        "version": PROBES_VERSION,
        "owner": {"uid": owner_uid, "user": owner_user},
        "issued_at": issued,
        "expires_at": expires,
        "host": host or _hostname(),
        "sets": list(sets),
        "capture": {"mode": mode, "interval_ms": interval_ms, "paths": paths},
        "probes": copy.deepcopy(list(probes)),
    }
    if patterns:
        doc["patterns"] = [dict(p) for p in patterns]
    check_document(doc, source="(new document)")
    return doc


def check_document(doc, *, source, max_probes: int | None = None) -> dict:
    """Schema plus the rules a schema cannot say (unique ids, expiry after issue)."""
    if max_probes is not None and isinstance(doc, dict) and isinstance(doc.get("probes"), list) \
            and len(doc["probes"]) > max_probes:
        raise TooLarge(source, f"it lists {len(doc['probes'])} probes, more than the site "
                       f"limit max_probes = {max_probes}",
                       "select fewer probe sets, or ask the administrator to raise max_probes")
    problem = schema_problem(doc)
    if problem:
        raise SchemaViolation(source, f"not a valid probes document: {problem}")
    ids = [p["id"] for p in doc["probes"]]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise SchemaViolation(source, f"probe id {dup[0]!r} appears more than once")
    for p in doc["probes"]:
        if p["target"] in p.get("aliases", ()):
            raise SchemaViolation(source, f"probe {p['id']!r} lists its own target among its "
                                  "aliases")
    if doc["expires_at"] <= doc["issued_at"]:
        raise SchemaViolation(source, "expires_at is not after issued_at")
    return doc


def canonical_bytes(doc: dict) -> bytes:
    """The signed bytes: the document without ``signature``, in one exact encoding."""
    body = {k: v for k, v in doc.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def encode_document(doc: dict) -> bytes:
    """The gzip file content (mtime 0, no name: the same document gives the same bytes)."""
    text = json.dumps(doc, sort_keys=True, indent=1, ensure_ascii=False, allow_nan=False) + "\n"
    return gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0)


def write_document(path: str | os.PathLike, doc: dict) -> Path:
    """Write atomically (temp file + rename): readers see the old file or the new one."""
    return atomic_write(path, encode_document(doc), mode=0o644)


def open_regular_file(path: str | os.PathLike, max_bytes: int) -> bytes:
    """Read a regular file without following a final symlink or blocking on a FIFO."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # ELOOP: the last component is a symlink
            raise NotRegularFile(path, "it is a symbolic link") from None
        if exc.errno == errno.ENOENT:
            raise Unreadable(path, "it does not exist") from None
        raise Unreadable(path, f"cannot open it ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket",
                    stat.S_IFCHR: "a character device",
                    stat.S_IFBLK: "a block device"}.get(stat.S_IFMT(st.st_mode), "not a file")
            raise NotRegularFile(path, f"it is {kind}, not a regular file")
        if st.st_size > max_bytes:
            raise _too_large_compressed(path, st.st_size, max_bytes)
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:  # it grew after fstat
                raise _too_large_compressed(path, total, max_bytes)
        return b"".join(chunks)
    except OSError as exc:
        raise Unreadable(path, f"cannot read it ({exc.strerror})") from None
    finally:
        os.close(fd)


def _too_large_compressed(path, size, limit) -> TooLarge:
    return TooLarge(path, f"it is {size} bytes, more than the site limit "
                    f"max_probes_file_bytes = {limit}")


def gunzip_bounded(data: bytes, *, source, max_decompressed: int) -> bytes:
    """Inflate gzip members, refusing as soon as the output passes the limit."""
    if not data:
        raise CorruptGzip(source, "it is empty")
    if data[:2] != _GZIP_MAGIC:
        raise CorruptGzip(source, "it is not gzip-compressed (a probes file is a .json.gz)")
    out = bytearray()
    inflater = zlib.decompressobj(wbits=31)
    pending = data
    try:
        while True:
            out += inflater.decompress(pending, max_decompressed + 1 - len(out))
            if len(out) > max_decompressed:
                raise TooLarge(source, "it decompresses to more than the site limit "
                               f"max_probes_document_bytes = {max_decompressed} bytes")
            if inflater.eof:
                pending = inflater.unused_data
                if not pending:
                    break
                if pending[:2] != _GZIP_MAGIC:
                    raise CorruptGzip(source, "it has trailing bytes after the gzip data")
                inflater = zlib.decompressobj(wbits=31)
            elif inflater.unconsumed_tail:
                pending = inflater.unconsumed_tail
            else:
                raise CorruptGzip(source, "the gzip data is truncated")
    except zlib.error as exc:
        raise CorruptGzip(source, f"the gzip data is damaged ({exc})") from None
    return bytes(out)


def _no_duplicates(pairs):
    obj = dict(pairs)       # in C: a probes file has tens of thousands of objects
    if len(obj) != len(pairs):
        seen = set()
        for key, _value in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key!r}")
            seen.add(key)
    return obj


def _no_constant(name):
    raise ValueError(f"{name} is not allowed")


def _depth_exceeds(value, max_depth: int) -> bool:
    """Whether containers nest deeper than ``max_depth``: linear, and recursive only to
    ``max_depth`` + 1 levels (MAX_JSON_DEPTH is far below Python's recursion limit).
    (10,000 probes: 5 ms; a worklist of (value, depth) tuples took 20)."""
    def deeper(item, depth: int) -> bool:
        if depth > max_depth:
            return True
        for child in item.values() if type(item) is dict else item:
            kind = type(child)
            if (kind is dict or kind is list) and deeper(child, depth + 1):
                return True
        return False

    return (type(value) is dict or type(value) is list) and deeper(value, 1)


def parse_json_bounded(text: bytes, *, source, max_depth: int = MAX_JSON_DEPTH):
    """Strict UTF-8 JSON with a nesting limit, in time linear in ``text``.

    CPython's C decoder is linear and stops runaway nesting with RecursionError
    (about 1000 levels); the depth limit is then checked on the parsed value.
    """
    try:
        value = json.loads(text.decode("utf-8"), object_pairs_hook=_no_duplicates,
                           parse_constant=_no_constant)
    except UnicodeDecodeError as exc:
        raise InvalidJSON(source, f"it is not UTF-8 text (byte {exc.start})") from None
    except RecursionError:
        raise InvalidJSON(source, f"its JSON is nested more than {max_depth} levels deep") from None
    except ValueError as exc:
        raise InvalidJSON(source, f"it is not valid JSON ({_json_problem(exc)})") from None
    if _depth_exceeds(value, max_depth):
        raise InvalidJSON(source, f"its JSON is nested more than {max_depth} levels deep")
    return value


def _json_problem(exc: ValueError) -> str:
    """The decoder's reason and position, never a quote of the input (it may be a secret)."""
    if isinstance(exc, json.JSONDecodeError):
        msg = exc.msg.removesuffix(" at")  # "Unterminated string starting at"
        return f"{msg} at line {exc.lineno} column {exc.colno}"
    return "duplicate key" if "duplicate key" in str(exc) else "a value is not allowed"


def decode_document(data: bytes, *, source, max_decompressed: int = _DEFAULTS.max_probes_document_bytes,
                    prolog_verified: bool = False):
    """Compressed file bytes to the parsed JSON value (not yet schema-checked).

    ``prolog_verified``: bytes the prolog has decoded strictly and verified (its root-only
    copy, by digest) hold no duplicate key, NaN or deep nesting, so the C decoder alone
    gives the same value (10,000 probes: 16 ms, not 31)."""
    text = gunzip_bounded(data, source=source, max_decompressed=max_decompressed)
    if prolog_verified:
        try:
            return json.loads(text)
        except (ValueError, RecursionError):
            pass            # the strict decoder says what is wrong
    return parse_json_bounded(text, source=source)


def read_document(path: str | os.PathLike, *,
                  max_compressed: int = _DEFAULTS.max_probes_file_bytes,
                  max_decompressed: int = _DEFAULTS.max_probes_document_bytes):
    """Read and parse a probes file within the limits (not yet schema-checked or verified)."""
    data = open_regular_file(path, max_compressed)
    return decode_document(data, source=path, max_decompressed=max_decompressed)
