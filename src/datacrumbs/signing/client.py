"""Asking the node's signing service for a signature (what `probes generate --sign` calls).

The reply is not taken on trust: the signed document is verified with the
site's public keys for the calling user before it is returned, so a file that
would be refused at job start is refused here, where the user can act on it.
"""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path

from ..config import load_config
from ..errors import DatacrumbsError
from .protocol import (MAX_REPLY_BYTES, MAX_REQUEST_BYTES, MAX_VALIDITY_DAYS, ProtocolError,
                       encode, parse_reply, read_line)

SERVICE = "datacrumbs_sign_probes.service"
DEFAULT_VALIDITY_DAYS = 7


class SigningError(DatacrumbsError):
    """Signing did not produce a usable signed document."""


class ServiceNotRunning(SigningError):
    pass


class SigningRefused(SigningError):
    pass


def _validity_days(doc: dict) -> int:
    """The validity the user asked for, read from the unsigned document's times."""
    if isinstance(doc.get("validity_days"), int) and not isinstance(doc["validity_days"], bool):
        return doc["validity_days"]
    issued, expires = doc.get("issued_at"), doc.get("expires_at")
    if all(isinstance(t, int) and not isinstance(t, bool) for t in (issued, expires)) \
            and expires > issued:
        return max(1, math.ceil((expires - issued) / 86400))
    return DEFAULT_VALIDITY_DAYS


def _exchange(message: dict, socket_path: Path, timeout: float) -> dict:
    data = encode(message)
    if len(data) > MAX_REQUEST_BYTES:
        raise SigningError(f"the request is {len(data)} bytes, more than the signing service "
                           f"accepts ({MAX_REQUEST_BYTES}); ask for fewer probes at once")
    not_running = (f"the signing service is not running on this node (no answer on "
                   f"{socket_path}): ask your admin to `systemctl enable --now {SERVICE}`")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(socket_path))
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
            raise ServiceNotRunning(not_running) from None
        except PermissionError:
            raise SigningError(f"permission denied on the signing socket {socket_path}: ask your "
                               "admin to make it mode 0666 in a 0755 directory") from None
        except socket.timeout:
            raise ServiceNotRunning(f"the signing service on {socket_path} did not accept the "
                                    f"connection within {timeout:g} seconds; it may be "
                                    "overloaded: try again, or ask your admin") from None
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the service may already have replied with an error: read it
        except socket.timeout:
            raise SigningError(f"the signing service on {socket_path} did not take the request "
                               f"within {timeout:g} seconds; try again") from None
        try:
            raw = read_line(sock, limit=MAX_REPLY_BYTES, timeout=timeout)
            return parse_reply(raw)
        except ProtocolError as exc:
            raise SigningError(f"the signing service on {socket_path} gave an unusable reply "
                               f"({exc}); ask your admin to check `journalctl -u {SERVICE}`") from None
        except ConnectionResetError:
            raise SigningError(f"the signing service on {socket_path} closed the connection "
                               f"without a reply; ask your admin to check "
                               f"`journalctl -u {SERVICE}`") from None


def ping(*, socket_path: str | os.PathLike | None = None, timeout: float = 2.0) -> bool:
    """Whether a signing service answers on the socket."""
    path = Path(socket_path) if socket_path else load_config().socket_path
    try:
        return _exchange({"op": "ping"}, path, timeout).get("ok") is True
    except SigningError:
        return False


def request_signature(unsigned_doc: dict, *, socket_path: str | os.PathLike | None = None,
                      timeout: float = 10.0) -> dict:
    """Have the service sign ``unsigned_doc`` for the calling user; return the verified result."""
    from ..probes.verify import ProbesFileError, verify_document

    config = load_config()
    path = Path(socket_path) if socket_path else config.socket_path
    request = {key: value for key, value in unsigned_doc.items()
               if key not in ("signature", "key_id")}
    request["validity_days"] = min(_validity_days(unsigned_doc), MAX_VALIDITY_DAYS)
    reply = _exchange({"op": "sign", "request": request}, path, timeout)
    if not reply["ok"]:
        raise SigningRefused(f"the signing service refused to sign: {reply['error']}")
    document = reply.get("document")
    if document is None:
        raise SigningError(f"the signing service on {path} answered without a document; "
                           f"ask your admin to check `journalctl -u {SERVICE}`")
    try:
        verify_document(document, os.getuid(), config=config)
    except ProbesFileError as exc:
        raise SigningError(f"the signing service returned a document that does not verify "
                           f"here ({exc}); ask your admin to publish the service's public key "
                           f"(`datacrumbs keys export-public`)") from None
    return document
