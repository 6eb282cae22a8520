"""The signing socket's wire format: one JSON line in, one JSON line out.

A client connects, writes one request (a JSON object ended by a newline or by
closing its write side) and reads one reply line. Requests are size-capped and
checked against a JSON Schema before anything else looks at them, because
they come from any local user.
"""

from __future__ import annotations

import json
import socket
import time

import jsonschema

from ..errors import DatacrumbsError

MAX_REQUEST_BYTES = 64 * 1024
# A signed reply is the request's probes plus a few fields: generous but bounded.
MAX_REPLY_BYTES = 1024 * 1024
MAX_VALIDITY_DAYS = 3650

_SET_NAME = {"type": "string", "pattern": "^[a-z0-9_.-]{1,64}$"}

# The envelope only; each probe is checked later against the probes-document
# schema, once the service has built the document to sign.
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
                # The client sends its whole unsigned document; the service keeps
                # only these keys and ignores the rest (owner, times, host...).
                "properties": {
                    "sets": {"type": "array", "items": _SET_NAME, "maxItems": 64,
                             "uniqueItems": True},
                    "probes": {"type": "array", "items": {"type": "object"}, "minItems": 1},
                    "capture": {"type": "object"},
                    "validity_days": {"type": "integer", "minimum": 1,
                                      "maximum": MAX_VALIDITY_DAYS},
                },
                "required": ["sets", "probes", "capture", "validity_days"],
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
                        "pong": {"type": "boolean"}},
         "required": ["ok"], "additionalProperties": False},
        {"properties": {"ok": {"const": False}, "error": {"type": "string", "minLength": 1}},
         "required": ["ok", "error"], "additionalProperties": False},
    ],
}

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


def ok_reply(document: dict) -> dict:
    return {"ok": True, "document": document}


def error_reply(sentence: str) -> dict:
    return {"ok": False, "error": sentence}


def read_line(sock: socket.socket, *, limit: int, timeout: float) -> bytes:
    """Read up to the first newline or EOF, within ``limit`` bytes and ``timeout`` seconds overall.

    The deadline covers the whole message, so a client trickling one byte at a
    time cannot hold a connection open for longer than ``timeout``.
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
            chunk = sock.recv(min(65536, limit + 1 - size))
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
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
    message = error.message if len(error.message) <= 200 else error.message[:200] + "..."
    return f"{where}: {message}"


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
