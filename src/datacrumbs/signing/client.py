"""Asking the node's signing service for a signature (what `probes generate --sign` calls).

The request names probe sets and passes the user's library files as open
descriptors; the service builds the probes itself. The reply is not taken on
trust: the signed document is verified with the site's public keys for the
calling user before it is returned, so a file that would be refused at job
start is refused here, where the user can act on it.
"""

from __future__ import annotations

import array
import errno
import os
import socket
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import load_config
from ..errors import DatacrumbsError
from .protocol import (MAX_LIBRARIES, MAX_REPLY_BYTES, MAX_REQUEST_BYTES, MAX_VALIDITY_DAYS,
                       ProtocolError, encode, parse_reply, read_line)

SERVICE = "datacrumbs_sign_probes.service"
DEFAULT_VALIDITY_DAYS = 7


class SigningError(DatacrumbsError):
    """Signing did not produce a usable signed document."""


class ServiceNotRunning(SigningError):
    pass


class ServiceBusy(SigningError):
    pass


class SigningRefused(SigningError):
    pass


@dataclass
class Signed:
    document: dict
    dropped: list[dict] = field(default_factory=list)   # {"id", "reason"}


def _connect(sock: socket.socket, socket_path: Path, timeout: float) -> None:
    """Connect, retrying while the listen backlog is full (EAGAIN) until ``timeout``."""
    deadline = time.monotonic() + timeout
    pause = 0.01
    while True:
        try:
            sock.connect(str(socket_path))
            return
        except BlockingIOError:
            pass
        except OSError as exc:
            if exc.errno != errno.EAGAIN:
                raise
        if time.monotonic() + pause > deadline:
            raise ServiceBusy(f"the signing service on {socket_path} is busy (its queue of "
                              f"connections stayed full for {timeout:g} seconds); try again "
                              "in a moment") from None
        time.sleep(pause)
        pause = min(pause * 2, 0.5)


def _exchange(message: dict, socket_path: Path, timeout: float, fds=()) -> dict:
    """One request and its reply; a "busy, retry" reply is retried with backoff until
    ``timeout``, so many clients at once are served in turn rather than refused."""
    deadline = time.monotonic() + timeout
    pause = 0.02
    while True:
        reply = _exchange_once(message, socket_path, max(deadline - time.monotonic(), 0.5), fds)
        if reply.get("ok") or not reply.get("retry") or time.monotonic() + pause > deadline:
            return reply
        time.sleep(pause)
        pause = min(pause * 2, 0.5)


def _exchange_once(message: dict, socket_path: Path, timeout: float, fds=()) -> dict:
    data = encode(message)
    if len(data) > MAX_REQUEST_BYTES:
        raise SigningError(f"the request is {len(data)} bytes, more than the signing service "
                           f"accepts ({MAX_REQUEST_BYTES}); choose fewer sets or libraries")
    not_running = (f"the signing service is not running on this node (no answer on "
                   f"{socket_path}): ask your admin to `systemctl enable --now {SERVICE}`")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            _connect(sock, socket_path, timeout)
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
            raise ServiceNotRunning(not_running) from None
        except PermissionError:
            raise SigningError(f"permission denied on the signing socket {socket_path}: ask your "
                               "admin to make it mode 0666 in a 0755 directory") from None
        except socket.timeout:
            raise ServiceBusy(f"the signing service on {socket_path} did not accept the "
                              f"connection within {timeout:g} seconds; it may be "
                              "overloaded: try again, or ask your admin") from None
        try:
            sent = 0
            if fds:  # the descriptors ride on the first bytes of the request
                sent = sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                              array.array("i", fds))])
            sock.sendall(data[sent:])
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the service may already have replied with an error: read it
        except socket.timeout:
            raise ServiceBusy(f"the signing service on {socket_path} did not take the request "
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


def pattern_libraries(patterns) -> tuple[list[dict], list[str]]:
    """The patterns as sent (a path-form ``--uprobe`` library made absolute) and the
    library files they name, found and opened as the user: a glob over paths is expanded
    here, with the user's own permissions, and never by the root service."""
    import glob

    sent, files = [], []
    for item in patterns:
        kind, text = item["kind"], item["pattern"]
        lib, sep, functions = text.rpartition(":")
        if kind != "uprobe" or not sep or not lib or not ("/" in lib or lib.startswith(".")):
            sent.append({"kind": kind, "pattern": text})
            continue
        lib = os.path.abspath(os.path.expanduser(lib))
        found = sorted(glob.glob(lib)) if glob.has_magic(lib) else [lib]
        if not found:
            raise SigningError(f"--uprobe {text!r}: no file you can see matches {lib}")
        for path in found:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as exc:
                raise SigningError(f"--uprobe {text!r}: cannot open library {path}: "
                                   f"{exc.strerror}") from None
            try:
                regular = stat.S_ISREG(os.fstat(fd).st_mode)
            finally:
                os.close(fd)
            if not regular:
                raise SigningError(f"--uprobe {text!r}: {path} is not a regular file; give "
                                   "a shared library")
            files.append(path)
        sent.append({"kind": kind, "pattern": f"{lib}:{functions}"})
    return sent, list(dict.fromkeys(files))


def request_signature(sets, *, libraries=(), mode: str = "trace", interval_ms: int = 1000,
                      paths: bool = True, validity_days: int = DEFAULT_VALIDITY_DAYS,
                      socket_path: str | os.PathLike | None = None,
                      timeout: float = 10.0, patterns=(), usdt=()) -> Signed:
    """Have the service sign the probes of ``sets`` for the calling user.

    ``libraries`` are files to use for the sets' library probes (matched by soname or
    file name); each is opened here, as the user, and passed to the service open.
    ``patterns``: [{"kind", "pattern"}] selections by pattern (``--uprobe LIB:GLOB`` ...),
    resolved by the service; the library files of path-form uprobe patterns are opened
    here and passed like ``libraries``.
    ``usdt``: ``LIB:PROVIDER:NAME`` patterns; a LIB that is a path is opened here too
    and passed after the libraries (others name libraries of the ld.so cache).
    Returns the verified document and the probes the service left out (not attachable).
    """
    from ..probes.verify import ProbesFileError, verify_document

    config = load_config()
    path = Path(socket_path) if socket_path else config.socket_path
    patterns, pattern_files = pattern_libraries(patterns)
    libraries = [os.path.abspath(lib) for lib in libraries]
    libraries += [f for f in pattern_files if f not in libraries]
    if len(libraries) > MAX_LIBRARIES:
        raise SigningError(f"{len(libraries)} libraries given; at most {MAX_LIBRARIES} at once")
    fds: list[int] = []
    try:
        for library in libraries:
            try:
                fds.append(os.open(library, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
            except OSError as exc:
                raise SigningError(f"cannot open library {library}: {exc.strerror}") from None
        usdt_patterns = []
        for pattern in dict.fromkeys(usdt):
            pattern, fd = open_usdt_pattern(pattern)
            usdt_patterns.append(pattern)
            if fd is not None:
                fds.append(fd)
        request = {"sets": list(dict.fromkeys(sets)),
                   "libraries": libraries,
                   "capture": {"mode": mode, "interval_ms": int(interval_ms),
                               "paths": bool(paths)},
                   "validity_days": max(1, min(int(validity_days), MAX_VALIDITY_DAYS))}
        if patterns:
            request["patterns"] = patterns
        if usdt_patterns:
            request["usdt"] = usdt_patterns
        reply = _exchange({"op": "sign", "request": request}, path, timeout, fds)
    finally:
        for fd in fds:
            os.close(fd)
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
    return Signed(document, list(reply.get("dropped", [])))


def open_usdt_pattern(pattern: str) -> tuple[str, int | None]:
    """A --usdt pattern as the request sends it, and the file it names opened as the
    user (None: LIB is a library name or pattern, looked up by the service). LIB is a
    path when it holds a '/'; it is sent absolute."""
    from ..probes.usdt import UsdtError, split_pattern

    try:
        lib, provider, name = split_pattern(pattern)
    except UsdtError as exc:
        raise SigningError(str(exc)) from None
    if "/" not in lib:
        return pattern, None
    lib = os.path.abspath(lib)
    try:
        fd = os.open(lib, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise SigningError(f"--usdt {pattern}: cannot open {lib}: {exc.strerror}") from None
    return f"{lib}:{provider}:{name}", fd
