"""datacrumbs_sign_probes: the node's signing service for probes files.

Any local user may connect to its Unix socket and ask for a signature; the
kernel tells the service who is asking (SO_PEERCRED), so the signed owner is
always the real caller and no secret is ever shared with users. The admin's
policy decides what may be signed and for how long; every decision is
appended to the audit log before the reply leaves. One thread per connection
with an overall read deadline keeps a slow or silent client from blocking
anyone else.
"""

from __future__ import annotations

import argparse
import logging
import os
import pwd
import signal
import socket
import stat
import struct
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..config import SiteConfig, load_config
from ..errors import DatacrumbsError
from .audit import GRANTED, REFUSED, AuditLog, digest
from .policy import Caller, Policy, PolicyError, load_policy
from .protocol import (MAX_REQUEST_BYTES, ProtocolError, ReadTimeout, RequestTooLarge, drain,
                       encode, error_reply, ok_reply, parse_request, read_line)

PROG = "datacrumbs_sign_probes"
log = logging.getLogger(PROG)
_PEERCRED = struct.Struct("3i")


class ServiceError(DatacrumbsError):
    """The service cannot start; the message says what to fix."""


class _Stop(BaseException):
    """Raised in the main thread by SIGTERM/SIGINT to leave accept(). A BaseException, so
    no ``except Exception`` it lands in (logging's own, a library's) can swallow the stop."""


# Connection threads block these, so the kernel hands a stop or reload signal to the main
# thread: only its accept() returns EINTR and runs Python's handler at once.
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


@dataclass
class _Decision:
    reply: dict
    audit: dict | None  # None: nothing to record (ping)


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end, as the kernel recorded at connect()."""
    return _PEERCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))


class SigningService:
    def __init__(self, config: SiteConfig, *, socket_path: Path | None = None,
                 read_timeout: float = 5.0, max_clients: int = 512, max_per_user: int = 16):
        from .keys import KeyStore  # the key store is the only holder of the private key

        self.config = config
        self.socket_path = Path(socket_path or config.socket_path)
        self.read_timeout = read_timeout
        self.keystore = KeyStore(config.private_key_dir, config.public_key_dir)
        self.audit = AuditLog(config.audit_log)
        self.max_clients = max_clients
        self.max_per_user = max_per_user
        self._active: dict[int, int] = {}  # uid -> connections being served
        self._active_lock = threading.Lock()
        self._sign_lock = threading.Lock()
        self._policy_lock = threading.Lock()
        self._policy: Policy | None = None
        self._policy_error: str | None = None
        self._policy_stamp: object = object()
        self._listener: socket.socket | None = None
        self._socket_id: tuple[int, int] | None = None
        self._threads: set[threading.Thread] = set()
        self._threads_lock = threading.Lock()
        self._catalog_lock = threading.Lock()
        self._catalog_cache: tuple[object, dict] | None = None

    # ---- start-up -------------------------------------------------------------------------

    def start(self) -> None:
        """Check key, policy and audit log, then bind the socket: fail before serving anyone."""
        key_id = self.keystore.current_key_id()
        if not (self.keystore.public_dir / f"{key_id}.pub").exists():
            # what it signs would verify nowhere, here included: say it where admins look
            log.warning("the public key of signing key %s is not in %s: probes files signed "
                        "now fail to verify; run `sudo datacrumbs keys export-public %s` "
                        "(it restores it from the private key) and copy it to the compute "
                        "nodes' public_key_dir", key_id, self.keystore.public_dir,
                        self.keystore.public_dir)
        self._reload_policy_if_changed()
        if self._policy_error:
            raise ServiceError(self._policy_error)
        try:
            self.audit.prepare()
        except OSError as exc:
            raise ServiceError(f"cannot open the audit log {self.config.audit_log}: "
                               f"{exc.strerror or exc}; check [signing] audit_log in "
                               f"{self.config.source or 'the site configuration'}") from None
        self._listener = self._bind()
        log.info("signing with key %s; policy %s; audit log %s; listening on %s",
                 key_id, self._policy.source, self.config.audit_log, self.socket_path)

    def _bind(self) -> socket.socket:
        path = self.socket_path
        parent = path.parent
        if not parent.exists():
            parent.mkdir(mode=0o755, parents=True)
            os.chmod(parent, 0o755)
        st = os.lstat(parent)
        if not stat.S_ISDIR(st.st_mode):
            raise ServiceError(f"socket directory {parent} is not a directory")
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            raise ServiceError(f"socket directory {parent} is writable by other users, who could "
                               f"replace the socket; make it mode 0755 (chmod 0755 {parent})")
        if st.st_mode & 0o005 != 0o005:
            log.warning("socket directory %s is not world-readable and searchable (mode %o): "
                        "users cannot reach the socket", parent, stat.S_IMODE(st.st_mode))
        self._remove_stale(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o111)  # the socket is born 0666: no window with other modes
        try:
            sock.bind(str(path))
        except OSError as exc:
            sock.close()
            raise ServiceError(f"cannot create the socket {path}: {exc.strerror or exc}") from None
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o666)
        st = os.lstat(path)
        self._socket_id = (st.st_dev, st.st_ino)
        sock.listen(128)
        return sock

    def _remove_stale(self, path: Path) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ServiceError(f"{path} exists and is not a socket; move it away or choose "
                               "another path with --socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(2.0)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            log.info("removing stale socket %s left by a previous run", path)
            path.unlink(missing_ok=True)
            return
        except OSError as exc:
            raise ServiceError(f"cannot tell whether {path} is in use ({exc.strerror or exc}); "
                               "remove it if no signing service runs") from None
        finally:
            probe.close()
        raise ServiceError(f"another signing service is already answering on {path}; stop it "
                           f"first (systemctl stop {PROG}.service) or choose another --socket")

    # ---- serving --------------------------------------------------------------------------

    def serve_forever(self) -> None:
        """Accept until SIGTERM/SIGINT (raised here as _Stop), then clean up."""
        assert self._listener is not None, "start() first"
        try:
            while True:
                try:
                    conn, _ = self._listener.accept()
                except OSError as exc:  # EMFILE and friends: wait for connections to finish
                    log.warning("cannot accept a connection: %s", exc)
                    time.sleep(0.1)
                    continue
                try:
                    peer = peer_credentials(conn)
                except OSError:
                    conn.close()
                    continue
                if not self._admit(peer[1]):
                    self._refuse_busy(conn, peer)
                    continue
                thread = threading.Thread(target=self._serve_one, args=(conn, peer), daemon=True)
                with self._threads_lock:
                    self._threads.add(thread)
                try:
                    self._start_without_signals(thread)
                except RuntimeError as exc:  # no more threads: refuse this one, keep serving
                    with self._threads_lock:
                        self._threads.discard(thread)
                    self._release(peer[1])
                    self._refuse_busy(conn, peer)
                    log.warning("cannot start a thread: %s", exc)
        except _Stop:
            log.info("stopping on signal")
        finally:
            self.close()

    @staticmethod
    def _start_without_signals(thread: threading.Thread) -> None:
        """Start ``thread`` with the stop signals blocked (a new thread inherits the mask)."""
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            thread.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def close(self, grace: float = 5.0) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self._unlink_own_socket()
        deadline = time.monotonic() + grace
        with self._threads_lock:
            threads = list(self._threads)
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def _unlink_own_socket(self) -> None:
        try:
            st = os.lstat(self.socket_path)
        except FileNotFoundError:
            return
        if (st.st_dev, st.st_ino) == self._socket_id:  # never remove a successor's socket
            self.socket_path.unlink(missing_ok=True)

    def _admit(self, uid: int) -> bool:
        """Bound connections overall and per user, so one user's idle connections (each
        held at most read_timeout) cannot starve the others."""
        with self._active_lock:
            if sum(self._active.values()) >= self.max_clients or \
                    self._active.get(uid, 0) >= self.max_per_user:
                return False
            self._active[uid] = self._active.get(uid, 0) + 1
            return True

    def _release(self, uid: int) -> None:
        with self._active_lock:
            self._active[uid] -= 1
            if not self._active[uid]:
                del self._active[uid]

    def _refuse_busy(self, conn: socket.socket, peer: tuple[int, int, int]) -> None:
        try:
            conn.setblocking(False)
            conn.send(encode(error_reply("the signing service is busy (too many connections "
                                         "at once); try again in a moment", retry=True)))
        except OSError:
            pass
        finally:
            conn.close()
        log.warning("uid %d pid %d: refused a connection: too many at once", peer[1], peer[0])

    def _serve_one(self, conn: socket.socket, peer: tuple[int, int, int]) -> None:
        try:
            self._handle(conn, *peer)
        except Exception:  # noqa: BLE001 - one bad connection must never stop the service
            log.exception("internal error while serving a connection")
        finally:
            conn.close()
            self._release(peer[1])
            with self._threads_lock:
                self._threads.discard(threading.current_thread())

    def _handle(self, conn: socket.socket, pid: int, uid: int, gid: int) -> None:
        who = f"uid {uid} pid {pid}"
        fds: list[int] = []
        try:
            self._handle_request(conn, pid, uid, gid, who, fds)
        finally:
            for fd in fds:
                os.close(fd)

    def _handle_request(self, conn, pid: int, uid: int, gid: int, who: str, fds: list) -> None:
        too_large = False
        try:
            raw = read_line(conn, limit=MAX_REQUEST_BYTES, timeout=self.read_timeout, fds=fds)
        except RequestTooLarge as exc:
            too_large = True
            decision = self._refusal(uid, pid, exc.head, f"the request is larger than the limit of "
                                     f"{MAX_REQUEST_BYTES} bytes; a request names probe sets and "
                                     "at most a few libraries, so check what sends it")
        except ReadTimeout as exc:
            log.info("%s: %s; closing", who, exc)
            self._send(conn, error_reply(f"{exc}; send one JSON request line"), who)
            return
        except OSError as exc:
            log.info("%s: connection lost while reading: %s", who, exc)
            return
        else:
            if not raw:
                log.info("%s: closed without sending a request", who)
                self._send(conn, error_reply("the request is empty"), who)
                return
            decision = self._decide(raw, pid, uid, gid, fds)
        if decision.audit is not None:
            try:
                self.audit.record(**decision.audit)
            except OSError as exc:
                log.error("cannot write the audit log %s: %s; refusing", self.audit.path, exc)
                decision.reply = error_reply("the signing service cannot write its audit log, so "
                                             "it signs nothing; ask your admin to check the disk "
                                             f"holding {self.audit.path}")
            else:
                a = decision.audit
                log.info("%s %s (uid %d pid %d): %s", a["decision"], a["user"], uid, pid,
                         a["reason"])
        self._send(conn, decision.reply, who)
        if too_large:
            # The client may still be sending: read it away (bounded) so that closing
            # does not reset the connection before the client has read the refusal.
            drain(conn, limit=16 * MAX_REQUEST_BYTES, timeout=self.read_timeout)

    def _send(self, conn: socket.socket, reply: dict, who: str) -> None:
        try:
            conn.settimeout(self.read_timeout)
            conn.sendall(encode(reply))
        except OSError as exc:  # the client went away: its loss, nobody else's
            log.info("%s: could not deliver the reply: %s", who, exc)

    # ---- deciding -------------------------------------------------------------------------

    def _refusal(self, uid: int, pid: int, raw: bytes, reason: str, *, user: str | None = None,
                 probes: int = 0, resolved: dict | None = None) -> _Decision:
        if user is None:
            user = _user_name(uid)
        return _Decision(error_reply(reason), dict(
            uid=uid, user=user, pid=pid, decision=REFUSED, reason=reason, sha256=digest(raw),
            key_id=None, probes=probes, resolved=resolved))

    def _decide(self, raw: bytes, pid: int, uid: int, gid: int, fds: list | None = None
                ) -> _Decision:
        user = _user_name(uid)
        try:
            request = parse_request(raw)
        except ProtocolError as exc:
            return self._refusal(uid, pid, raw, str(exc), user=user)
        if request["op"] == "ping":
            return _Decision({"ok": True, "pong": True}, None)
        body = request["request"]
        if user is None:
            return self._refusal(uid, pid, raw, f"uid {uid} has no account name on this host, "
                                 "and a probes file is signed for a named account")
        try:
            signed, grant_days, dropped, resolved = self._sign(
                Caller(uid=uid, user=user, gid=gid), body, fds or [])
        except DatacrumbsError as exc:  # policy refusals, unusable libraries, limits
            asked = body.get("patterns")
            return self._refusal(uid, pid, raw, str(exc), user=user,
                                 resolved={"patterns": asked} if asked else None)
        from ..probes.document import canonical_bytes

        nprobes = len(signed["probes"])
        asked = ", ".join([*body["sets"], *(p["pattern"] for p in body.get("patterns", [])),
                           *body.get("usdt", [])])
        return _Decision(ok_reply(signed, dropped), dict(
            uid=uid, user=user, pid=pid, decision=GRANTED,
            reason=f"signed {nprobes} probes of {asked} valid for {grant_days} days"
                   + (f" ({len(dropped)} not attachable here)" if dropped else ""),
            sha256=digest(canonical_bytes(signed)), key_id=signed.get("key_id"), probes=nprobes,
            resolved=resolved))

    def _sign(self, caller: Caller, body: dict, fds: list[int]):
        """Build the document from the catalog and the request's patterns, judge it, sign it.

        The policy is asked twice: once about the sets and the catalog's probes as
        named (kinds, probe ids, targets), then about what they were bound to on
        this host (library files by device and inode, functions by address). The
        probes a pattern resolved to are judged per pattern first, so a refusal
        names the pattern.
        """
        from ..probes import SchemaViolation, TooLarge
        from ..probes.catalog import CatalogError, select_probes
        from ..probes.document import build_document, check_document
        from ..probes.host_check import host_info, merge_aliases
        from .patterns import Resolver, library_names_passed, pattern_library
        from .policy import PolicyRefused, group_names
        from .resolve import (RequestRefused, Resolved, _code_address, library_file, resolve,
                              usdt_probes)

        policy = self._current_policy()
        sets, days = body["sets"], int(body["validity_days"])
        patterns, usdt = body.get("patterns", []), body.get("usdt", [])
        if not sets and not patterns and not usdt:
            raise RequestRefused("the request chooses no probes; name probe sets (--set) or "
                                 "patterns (--uprobe, --syscall, --tracepoint, --kfunc, --usdt)")
        catalog = self._catalog()
        try:
            chosen = select_probes(catalog, sets) if sets else []
        except CatalogError as exc:
            raise RequestRefused(str(exc)) from None
        groups = group_names(caller)
        policy.check(caller, sets=sets, probes=chosen, validity_days=days, groups=groups)
        paths = body.get("libraries", [])
        # --usdt patterns whose LIB is a path come as open files after the libraries
        usdt_fds = fds[len(paths):]
        if len(paths) > len(fds) or len(usdt_fds) != _usdt_paths(usdt):
            raise RequestRefused(f"the request names {len(paths)} libraries but passes "
                                 f"{len(fds)} open files; use `datacrumbs probes generate "
                                 "--library PATH`, which sends both")
        for_patterns = library_names_passed(patterns, paths)
        libraries = [library_file(fd, path) for fd, path in zip(fds, paths)
                     if path not in for_patterns]
        passed = [(path, pattern_library(fd, path)) for fd, path in zip(fds, paths)
                  if path in for_patterns]
        host = host_info()
        if chosen:
            resolved = resolve(chosen, libraries, host)
            if not resolved.probes:
                first = "; ".join(f"{d['id']}: {d['reason']}" for d in resolved.dropped[:3])
                raise RequestRefused(f"none of the {len(chosen)} probes of {', '.join(sets)} "
                                     f"can attach on this host ({first}); choose other sets")
        else:
            if libraries:
                raise RequestRefused(f"library {libraries[0].path} is not named by any "
                                     "--uprobe pattern and no set is chosen")
            resolved = Resolved([], [], {})
        if usdt:
            # judged with the rest below, by kind, target and file (device and inode)
            found, files = usdt_probes(usdt, usdt_fds, {p["id"] for p in resolved.probes})
            resolved.probes += found
            resolved.libraries.update(files)
        results = []
        cap, why = policy.probe_limit(caller, self.config.max_probes, groups)
        if len(resolved.probes) > cap:
            raise RequestRefused(f"the sets {', '.join(sets + usdt)} make "
                                 f"{len(resolved.probes)} probes, more than {cap} ({why}); "
                                 "choose fewer sets")
        if patterns:
            resolver = Resolver(catalog=catalog, host=host, passed=passed, cap=cap,
                                cap_reason=why)
            resolver.count = len(resolved.probes)
            resolver.already(resolved.probes)
            results = resolver.resolve(patterns)
            for result in results:
                files = {lib.path: lib for lib in result.libraries}
                try:
                    policy.check(caller, sets=[], probes=result.probes, validity_days=days,
                                 groups=groups, libraries=files)
                except PolicyRefused as exc:
                    raise PolicyRefused(f"{result.label}: {exc}") from None
                resolved.libraries.update(files)
            extra = [p for r in results for p in r.probes]
            files = resolved.libraries
            probes, more = merge_aliases(resolved.probes + extra,
                                         lambda p: _code_address(files[p["library"]], p))
            resolved.probes, resolved.merged = probes, resolved.merged + more
        withheld = sorted(_withhold_families(policy, resolved.probes))
        grant = policy.check(caller, sets=sets, probes=resolved.probes, validity_days=days,
                             groups=groups, libraries=resolved.libraries)
        capture = body.get("capture", {})
        now = int(time.time())
        what = ", ".join([*sets, *(r.label for r in results)])
        try:
            doc = build_document(
                resolved.probes, owner_uid=caller.uid, owner_user=caller.user, sets=sets,
                mode=capture.get("mode", "trace"), interval_ms=capture.get("interval_ms", 1000),
                paths=capture.get("paths", True), issued_at=now, validity_days=1,
                patterns=[{"kind": r.kind, "pattern": r.pattern, "probes": len(r.probes)}
                          for r in results])
            check_document(doc, source="request", max_probes=self.config.max_probes)
        except (SchemaViolation, TooLarge) as exc:
            raise RequestRefused(f"the probes of {what} do not make a valid probes "
                                 f"document: {exc.problem}") from None
        doc["expires_at"] = now + grant.validity_days * 86400
        with self._sign_lock:
            signed = self.keystore.sign(doc)
        record = {"sets": list(sets), "libraries": [
            {"path": lib.path, "dev": lib.dev, "ino": lib.ino} for lib in
            sorted(resolved.libraries.values(), key=lambda lib: lib.path)],
            "dropped": len(resolved.dropped)}
        if results:
            record["patterns"] = [r.audit() for r in results]
        if withheld:
            record["families_withheld"] = withheld
        if usdt:
            record["usdt"] = list(usdt)
        return signed, grant.validity_days, resolved.dropped, record

    def _catalog(self) -> dict:
        """The site's probe sets, reread only when the set directory changes."""
        from ..probes.catalog import load_catalog

        directory = Path(self.config.probe_sets_dir)
        try:
            stamp = tuple(sorted((e.name, e.stat().st_mtime_ns, e.stat().st_size, e.inode())
                                 for e in os.scandir(directory) if e.name.endswith(".json")))
        except OSError:
            stamp = None
        with self._catalog_lock:
            if self._catalog_cache is None or self._catalog_cache[0] != stamp:
                self._catalog_cache = (stamp, load_catalog(self.config))
            return self._catalog_cache[1]

    def _current_policy(self) -> Policy:
        self._reload_policy_if_changed()
        if self._policy_error:
            raise PolicyError(f"{self._policy_error}; until then nothing is signed — "
                              "ask your admin to fix it")
        return self._policy

    def request_policy_reload(self) -> None:
        """SIGHUP: reread the policy on the next request even if its file looks unchanged."""
        self._policy_stamp = object()

    def _reload_policy_if_changed(self) -> None:
        """Re-read the policy when its file changes, so admins need no restart."""
        path = self.config.policy_file
        try:
            st = os.stat(path)
            stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            stamp = None
        except OSError as exc:
            stamp = ("error", str(exc))
        with self._policy_lock:
            if stamp == self._policy_stamp:
                return
            try:
                self._policy = load_policy(path, default_max_days=self.config.max_validity_days)
                self._policy_error = None
                log.info("signing policy loaded from %s", self._policy.source)
            except PolicyError as exc:
                self._policy_error = str(exc)
                log.error("%s", exc)
            self._policy_stamp = stamp


def _user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _notify_ready() -> None:
    """Tell systemd (Type=notify) that the socket is listening."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.connect(address)
            s.sendall(b"READY=1\nSTATUS=signing probes files")
        except OSError as exc:
            log.warning("could not notify systemd (%s): %s", address, exc)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Sign datacrumbs probes files for the local users who ask.\n\n"
            "Users run `datacrumbs probes generate --sign`, which sends the unsigned probes to\n"
            "this service over a Unix socket. The kernel tells the service who is asking, so\n"
            "the signed owner is always the real caller. The admin's policy (policy_file)\n"
            "decides which probe sets and kinds each user or group may have and for how\n"
            "long; every grant and refusal is appended to the audit log (audit_log). The\n"
            "private key never leaves the key store (private_key_dir).\n\n"
            "Runs in the foreground and logs to stderr (the journal under systemd); stop it\n"
            "with SIGTERM or SIGINT, which removes the socket. The policy is reread when its\n"
            "file changes; SIGHUP (systemctl reload) forces a reread."
        ),
        epilog=(
            "examples:\n"
            "  systemctl enable --now datacrumbs_sign_probes.service\n"
            f"  {PROG} --config /opt/datacrumbs/etc/datacrumbs/datacrumbs.toml\n"
            f"  {PROG} --foreground --socket /tmp/sign.sock     (try it by hand)"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--config", metavar="FILE",
                        help="site configuration file (default: $DATACRUMBS_CONFIG, else "
                             "/opt/datacrumbs/etc/datacrumbs/datacrumbs.toml)")
    parser.add_argument("--socket", metavar="PATH", type=Path,
                        help="Unix socket to listen on (default: socket_path from the "
                             "configuration, /run/datacrumbs/sign.sock)")
    parser.add_argument("--foreground", action="store_true",
                        help="running by hand in a terminal: timestamp each log line (the "
                             "journal adds its own); the service never forks either way")
    parser.add_argument("--read-timeout", metavar="SECONDS", type=float, default=5.0,
                        help="drop a client that has not sent a complete request in this time "
                             "(default: %(default)s)")
    parser.add_argument("--max-clients", metavar="N", type=int, default=512,
                        help="connections served at once; more are told to retry "
                             "(default: %(default)s)")
    parser.add_argument("--max-per-user", metavar="N", type=int, default=16,
                        help="connections served at once for one uid (default: %(default)s)")
    return parser


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    fmt = "%(asctime)s %(levelname)s: %(message)s" if args.foreground else "%(levelname)s: %(message)s"
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format=fmt)
    if args.read_timeout <= 0 or args.max_clients < 1 or args.max_per_user < 1:
        print(f"{PROG}: error: --read-timeout, --max-clients and --max-per-user must be "
              "positive", file=sys.stderr)
        return 2
    service = None

    def stop(signum, frame):
        # Once: a second signal must not interrupt the clean-up the first one started.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise _Stop()

    def reload(signum, frame):
        if service is not None:
            service.request_policy_reload()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, reload)
    try:
        config = load_config(args.config)
        service = SigningService(config, socket_path=args.socket, read_timeout=args.read_timeout,
                                 max_clients=args.max_clients, max_per_user=args.max_per_user)
        service.start()
        _notify_ready()
        service.serve_forever()
    except _Stop:
        if service is not None:
            service.close()
    except DatacrumbsError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{PROG}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def main() -> None:
    sys.exit(run())


def _usdt_paths(patterns: list[str]) -> int:
    """How many --usdt patterns name a file by path (each comes as an open file)."""
    return sum(1 for p in patterns if p.rsplit(":", 2)[0].startswith("/"))


def _withhold_families(policy, probes: list[dict]) -> set[str]:
    """Remove the families the policy denies from the probes (they then attach to their
    bound file only); return those families."""
    withheld = set()
    for probe in probes:
        family = probe.get("family")
        if family and policy.family_denied(family):
            del probe["family"]
            withheld.add(family)
    return withheld
