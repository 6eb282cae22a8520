"""The signing socket's wire format: one JSON line in, one JSON line out.

A client connects, writes one request (a JSON object ended by a newline or by
closing its write side) and reads one reply line. Requests are size-capped and
checked against a JSON Schema before anything else looks at them, because
they come from any local user.

A sign request says only *what* to trace: probe set names, library files to
use for the sets' library probes, and capture options. The service builds
every probe definition from its own catalog, so nothing a user writes decides
which memory the root tracer reads. Library files travel as descriptors the
client opened itself (SCM_RIGHTS, in the order of ``libraries``): the kernel
thus proves the user may read them, and the service judges the file itself
(device and inode), never a path string the user could point elsewhere.
"""

from __future__ import annotations

import array
import json
import os
import socket
import time

import jsonschema

from ..errors import DatacrumbsError
from ..probes.schema import ID_PATTERN, describe_error, schema_names

MAX_SETS = 64
MAX_LIBRARIES = 16
MAX_USDT = 16
MAX_PATH_BYTES = 4096
# Every request the schema allows fits, even with 4-byte UTF-8 library paths (a test
# builds the largest one): a request carries no probes, so its size never limits how
# many probes are signed (max_probes does).
MAX_REQUEST_BYTES = 1024 * 1024
# A signed reply is a whole document: about 250 bytes a probe, for up to 65536 probes.
MAX_REPLY_BYTES = 32 * 1024 * 1024
MAX_VALIDITY_DAYS = 3650

_SET_NAME = {"type": "string", "pattern": ID_PATTERN}
# An absolute path without NUL or control characters (it is only a name for the
# descriptor that comes with it; the service judges the descriptor).
_LIBRARY_PATH = {"type": "string", "maxLength": MAX_PATH_BYTES,
                 "pattern": r"^/[^\x00-\x1f\x7f]*$"}

# One selection by pattern: the kind (the option it came from) and the pattern text,
# e.g. {"kind": "uprobe", "pattern": "libhdf5*.so*:H5D*"}. usdt joins PATTERN_KINDS.
PATTERN_KINDS = ["uprobe", "syscall", "tracepoint", "kfunc"]
MAX_PATTERNS = 32
_PATTERN = {"type": "object", "additionalProperties": False, "required": ["kind", "pattern"],
            "properties": {"kind": {"enum": PATTERN_KINDS},
                           "pattern": {"type": "string", "minLength": 1, "maxLength": 1024,
                                       "pattern": r"^[^\x00-\x1f\x7f]*$"}}}

REQUEST_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {"op": {"enum": ["ping", "sign"]}},
    "required": ["op"],
    "if": {"properties": {"op": {"const": "sign"}}},
    "then": {
        "properties": {
            "op": True,
            "request": {
                "type": "object",
                "properties": {
                    # no set is fine when patterns or usdt choose the probes (the service
                    # checks that a request chooses something)
                    "sets": {"type": "array", "items": _SET_NAME, "minItems": 0,
                             "maxItems": MAX_SETS, "uniqueItems": True},
                    # selections by pattern, resolved by the service (signing.patterns)
                    "patterns": {"type": "array", "maxItems": MAX_PATTERNS,
                                 "items": _PATTERN},
                    # --usdt LIB:PROVIDER:NAME; a LIB that is a path comes as an open file
                    # after the libraries' (probes/usdt.py, signing/resolve.py)
                    "usdt": {"type": "array", "maxItems": MAX_USDT, "uniqueItems": True,
                             "items": {"type": "string", "minLength": 5,
                                       "maxLength": MAX_PATH_BYTES + 130,
                                       "pattern": r"^[^\x00-\x1f\x7f]+$"}},
                    "libraries": {"type": "array", "items": _LIBRARY_PATH,
                                  "maxItems": MAX_LIBRARIES},
                    "capture": {
                        "type": "object", "additionalProperties": False,
                        "properties": {
                            "mode": {"enum": ["trace", "profile"]},
                            "interval_ms": {"type": "integer", "minimum": 10,
                                            "maximum": 3600000},
                            "paths": {"type": "boolean"},
                        },
                    },
                    "validity_days": {"type": "integer", "minimum": 1,
                                      "maximum": MAX_VALIDITY_DAYS},
                },
                "required": ["sets", "validity_days"],
                "additionalProperties": False,
            },
        },
        "required": ["request"],
        "additionalProperties": False,
    },
    "else": {"properties": {"op": True}, "additionalProperties": False},
}

REPLY_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "oneOf": [
        {"properties": {"ok": {"const": True}, "document": {"type": "object"},
                        "pong": {"type": "boolean"},
                        # probes of the chosen sets that cannot attach on this host, and why
                        "dropped": {"type": "array", "maxItems": 65536, "items": {
                            "type": "object", "additionalProperties": False,
                            "required": ["id", "reason"],
                            "properties": {"id": {"type": "string", "maxLength": 64},
                                           "reason": {"type": "string", "maxLength": 1000}}}}},
         "required": ["ok"], "additionalProperties": False},
        # retry: the service was busy; the same request may succeed in a moment
        {"properties": {"ok": {"const": False}, "error": {"type": "string", "minLength": 1},
                        "retry": {"const": True}},
         "required": ["ok", "error"], "additionalProperties": False},
    ],
}

_KNOWN_NAMES = frozenset(schema_names([REQUEST_SCHEMA, REPLY_SCHEMA]))
_PATTERN_NAMES = {_LIBRARY_PATH["pattern"]: "absolute paths (no control characters)",
                  _PATTERN["properties"]["pattern"]["pattern"]: "patterns (no control characters)"}
_request_validator = jsonschema.Draft202012Validator(REQUEST_SCHEMA)
_reply_validator = jsonschema.Draft202012Validator(REPLY_SCHEMA)


class ProtocolError(DatacrumbsError):
    """A request or reply that breaks the wire format; the message says how."""


class RequestTooLarge(ProtocolError):
    def __init__(self, message: str, head: bytes = b""):
        super().__init__(message)
        self.head = head  # what was read before giving up, for the audit digest


class ReadTimeout(ProtocolError):
    pass


def encode(message: dict) -> bytes:
    """One compact JSON line; NaN and friends are not JSON and are refused."""
    return (json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
            + "\n").encode("utf-8")


def ok_reply(document: dict, dropped=()) -> dict:
    reply = {"ok": True, "document": document}
    if dropped:
        reply["dropped"] = [{"id": d["id"], "reason": d["reason"]} for d in dropped]
    return reply


def error_reply(sentence: str, *, retry: bool = False) -> dict:
    return {"ok": False, "error": sentence, **({"retry": True} if retry else {})}


def read_line(sock: socket.socket, *, limit: int, timeout: float, fds: list | None = None) -> bytes:
    """Read up to the first newline or EOF, within ``limit`` bytes and ``timeout`` seconds overall.

    The deadline covers the whole message, so a client trickling one byte at a
    time cannot hold a connection open for longer than ``timeout``. With ``fds``
    (a list), descriptors passed with the message (SCM_RIGHTS) are appended to it,
    at most MAX_LIBRARIES; the caller closes them.
    """
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    size = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ReadTimeout(f"no complete request within {timeout:g} seconds")
        sock.settimeout(remaining)
        try:
            chunk = _recv(sock, min(65536, limit + 1 - size), fds)
        except socket.timeout:
            raise ReadTimeout(f"no complete request within {timeout:g} seconds") from None
        if not chunk:
            return b"".join(chunks)
        newline = chunk.find(b"\n")
        if newline >= 0:
            chunks.append(chunk[:newline])
            size += newline
            if size > limit:
                break
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            break
    raise RequestTooLarge(f"message is larger than {limit} bytes", b"".join(chunks))


# the libraries' files, then the files of --usdt patterns that name a path
MAX_FDS = MAX_LIBRARIES + MAX_USDT
_FD_SPACE = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)


def _recv(sock: socket.socket, size: int, fds: list | None) -> bytes:
    if fds is None:
        return sock.recv(size)
    data, ancillary, _flags, _addr = sock.recvmsg(size, _FD_SPACE, socket.MSG_CMSG_CLOEXEC)
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            got = array.array("i")
            got.frombytes(payload[:len(payload) - len(payload) % got.itemsize])
            for fd in got:
                if len(fds) < MAX_FDS:
                    fds.append(fd)
                else:
                    os.close(fd)
    return data


def drain(sock: socket.socket, *, limit: int, timeout: float) -> None:
    """Read and discard what the client still sends (bounded), so that closing the
    connection after an early refusal does not reset it before the client reads
    the reply."""
    deadline = time.monotonic() + timeout
    total = 0
    try:
        while total < limit:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            sock.settimeout(remaining)
            chunk = sock.recv(65536)
            if not chunk:
                return
            total += len(chunk)
    except OSError:
        return


def _decode_object(raw: bytes, what: str) -> dict:
    from ..probes import InvalidJSON
    from ..probes.document import parse_json_bounded

    try:
        value = parse_json_bounded(raw, source=what)
    except InvalidJSON as exc:  # bad UTF-8, bad JSON, nested too deeply, duplicate keys
        raise ProtocolError(f"the {what} is refused: {exc.problem}") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"the {what} must be a JSON object, not {type(value).__name__}")
    return value


def _schema_error(validator: jsonschema.Draft202012Validator, value: dict) -> str | None:
    """Where and what the protocol expects, never the value (it may be huge or forged)."""
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is None:
        return None
    return describe_error(error, known=_KNOWN_NAMES, patterns=_PATTERN_NAMES)


def _parse(raw: bytes, what: str, validator) -> dict:
    if not raw.strip():
        raise ProtocolError(f"the {what} is empty")
    message = _decode_object(raw, what)
    problem = _schema_error(validator, message)
    if problem:
        raise ProtocolError(f"the {what} does not match the signing protocol: {problem}")
    return message


def parse_request(raw: bytes) -> dict:
    """Decode and validate one request line, or raise ProtocolError with the reason."""
    return _parse(raw, "request", _request_validator)


def parse_reply(raw: bytes) -> dict:
    """Decode and validate the service's reply (used by the client)."""
    return _parse(raw, "reply", _reply_validator)
