"""The signing service as users meet it: a real daemon process on a real Unix socket.

Clients run as root in-process and as the real unprivileged account dctest1
in a separate process, so SO_PEERCRED reports real, different credentials.
"""

from __future__ import annotations

import array
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from datacrumbs.config import SiteConfig, load_config, render_config
from datacrumbs.flux.install import render_template, template_values
from datacrumbs.probes import OwnerMismatch
from datacrumbs.probes.document import build_document, canonical_bytes, write_document
from datacrumbs.probes.verify import verify_probes_file
from datacrumbs.signing.audit import read_records
from datacrumbs.signing.client import (ServiceNotRunning, SigningError, SigningRefused, ping,
                                       request_signature)
from datacrumbs.signing.keys import KeyStore
from datacrumbs.signing.protocol import MAX_REQUEST_BYTES, encode

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
SERVICE_BIN = VENV_BIN / "datacrumbs_sign_probes"
UNIT = REPO / "src/datacrumbs/data/systemd/datacrumbs_sign_probes.service"
READ_TIMEOUT = 1.0
RUNUSER = shutil.which("runuser", path="/usr/sbin:/usr/bin:/sbin:/bin") or "runuser"

PROBES = {
    "write": {"id": "posix.write", "kind": "syscall", "target": "write", "category": "POSIX",
              "args": {"fd": 0, "count": 2}, "bytes": "ret"},
    "fwrite": {"id": "stdio.fwrite", "kind": "uprobe", "target": "fwrite",
               "library": "libc.so.6", "category": "STDIO",
               "args": {"size": 1, "nmemb": 2, "stream": 3}, "bytes": "ret*arg1"},
    "rq": {"id": "block.rq_complete", "kind": "tracepoint", "target": "block:block_rq_complete",
           "category": "BLOCK", "args": {}, "bytes": None},
    "vfs": {"id": "kernel.vfs_write", "kind": "kprobe", "target": "vfs_write", "category": "VFS",
            "args": {"count": 2}, "bytes": "ret"},
}


@pytest.fixture(autouse=True)
def site_sets(site):
    """Site sets ``one-<probe>`` with one probe each, so a test chooses exactly what the
    service signs."""
    for name, probe in PROBES.items():
        (site.probe_sets_dir / f"one-{name}.json").write_text(json.dumps(
            {"name": f"one-{name}", "description": f"test set {name}", "probes": [probe]}))
    return site.probe_sets_dir


@pytest.fixture
def keystore(site):
    store = KeyStore(site.private_key_dir, site.public_key_dir)
    store.init()
    return store


class Service:
    def __init__(self, site, *extra: str):
        self.site = site
        self.socket = Path(extra[extra.index("--socket") + 1]) if "--socket" in extra \
            else site.socket_path
        self.log = site.log_dir / f"service-{time.monotonic_ns()}.stderr"
        self._log_file = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [str(SERVICE_BIN), "--config", str(site.source), "--read-timeout", str(READ_TIMEOUT),
             *extra], stdout=subprocess.DEVNULL, stderr=self._log_file)

    def wait_ready(self, timeout: float = 20.0) -> "Service":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"signing service exited {self.proc.returncode}: {self.stderr()}")
            if self.socket.exists() and ping(socket_path=self.socket):
                return self
            time.sleep(0.05)
        pytest.fail(f"signing service not ready within {timeout} s: {self.stderr()}")

    def stderr(self) -> str:
        if not self._log_file.closed:
            self._log_file.flush()
        return self.log.read_text(errors="replace")

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()
        return self.proc.returncode


@pytest.fixture
def start_service(site):
    """Start services with extra options; all are stopped at teardown, even after a failure."""
    started = []

    def start(*extra: str, ready: bool = True) -> Service:
        svc = Service(site, *extra)
        started.append(svc)
        return svc.wait_ready() if ready else svc

    yield start
    for svc in started:
        svc.stop()


@pytest.fixture
def service(keystore, start_service):
    return start_service()


def ask(*sets: str, days: int = 7, **options) -> dict:
    """What a client asks for: sets (``write`` = the site set one-write) and options
    (request_signature's keywords)."""
    return {"sets": [f"one-{s}" if s in PROBES else s for s in sets], "validity_days": days,
            **options}


def sign(site, request: dict, **kw) -> dict:
    return request_signature(socket_path=kw.pop("socket_path", site.socket_path), **request,
                             **kw).document


def wire(request: dict) -> bytes:
    """A sign request as it travels (for raw-socket tests)."""
    return encode({"op": "sign", "request": {"capture": {}, **request}})


CLIENT = r"""
import json, sys
from datacrumbs.errors import DatacrumbsError
from datacrumbs.signing.client import request_signature
try:
    doc = request_signature(socket_path=sys.argv[1], **json.load(sys.stdin)).document
except DatacrumbsError as exc:
    print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
    sys.exit(3)
json.dump(doc, sys.stdout)
"""


def sign_as(user: str, doc: dict, site) -> subprocess.CompletedProcess:
    """request_signature() in a process of the real account ``user``.

    The venv's interpreter lives under /root (mode 0700), out of reach of other
    accounts, so the client runs on the system Python 3.11 with the project's
    source and the venv's libraries on PYTHONPATH.
    """
    env = {"PATH": "/usr/bin:/bin", "DATACRUMBS_CONFIG": str(site.source),
           "PYTHONPATH": f"{REPO / 'src'}:{VENV_BIN.parent / 'lib/python3.11/site-packages'}"}
    return subprocess.run([RUNUSER, "-u", user, "--", "/usr/bin/python3", "-c", CLIENT,
                           str(site.socket_path)], input=json.dumps(doc), env=env,
                          capture_output=True, text=True, timeout=60)


def raw_exchange(path: Path, data: bytes, *, shutdown: bool = True, timeout: float = 10,
                 fds=()) -> dict:
    """One request as raw bytes (with ``fds`` passed on its first bytes), one reply parsed."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        try:
            sent = s.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                       array.array("i", fds))]) if fds else 0
            s.sendall(data[sent:])
            if shutdown:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
    return json.loads(reply)


def write_policy(site, text: str) -> None:
    """Replace the policy atomically, with a new inode, so the service notices at once."""
    tmp = site.policy_file.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, site.policy_file)


def validity(doc: dict) -> float:
    return (doc["expires_at"] - doc["issued_at"]) / 86400


# ---- ownership comes from the kernel, not from the request ---------------------------------


def test_unprivileged_caller_owns_the_signature_whatever_the_request_claims(site, service, keystore,
                                                                            user1, user2, tmp_path):
    claimed = ask("write", "fwrite", "rq")
    result = sign_as(user1.pw_name, claimed, site)
    assert result.returncode == 0, result.stderr
    signed = json.loads(result.stdout)
    assert signed["owner"] == {"uid": user1.pw_uid, "user": user1.pw_name}
    assert signed["key_id"] == keystore.current_key_id()
    path = write_document(tmp_path / "probes.json.gz", signed)
    assert verify_probes_file(path, user1.pw_name)["owner"]["uid"] == user1.pw_uid
    assert verify_probes_file(path, user1.pw_uid)
    with pytest.raises(OwnerMismatch, match=f"signed for {user1.pw_name}"):
        verify_probes_file(path, user2.pw_name)


def test_root_caller_owns_the_signature_even_when_claiming_a_user(site, service, keystore, user1,
                                                                   tmp_path):
    signed = sign(site, ask("write"))
    assert signed["owner"] == {"uid": 0, "user": "root"}
    assert signed["key_id"] == keystore.current_key_id()
    assert [p["id"] for p in signed["probes"]] == ["posix.write"]
    path = write_document(tmp_path / "root.json.gz", signed)
    assert verify_probes_file(path, "root")
    with pytest.raises(OwnerMismatch):
        verify_probes_file(path, user1.pw_name)


def test_issued_now_and_requested_validity_kept_when_under_the_maximum(site, service):
    before = int(time.time())
    signed = sign(site, ask("write", days=2))
    assert before <= signed["issued_at"] <= int(time.time())
    assert validity(signed) == 2


# ---- policy ---------------------------------------------------------------------------------


def test_kprobe_refused_by_default_policy_with_a_sentence(site, service, user1):
    result = sign_as(user1.pw_name, ask("write", "vfs"), site)
    assert result.returncode == 3
    assert "SigningRefused" in result.stderr
    assert "kernel.vfs_write" in result.stderr and "'kprobe'" in result.stderr
    assert "user dctest1" in result.stderr and "administrators" in result.stderr
    assert "Traceback" not in result.stderr


def test_group_rule_allows_kprobe_for_members_only(site, service, user1):
    write_policy(site, '[defaults]\nallow_kinds = ["syscall"]\nallow_sets = ["*"]\n'
                       f'[groups.{user1.pw_name}]\nallow_kinds = ["kprobe"]\n')
    result = sign_as(user1.pw_name, ask("write", "vfs"), site)
    assert result.returncode == 0, result.stderr  # allowed: this kernel has no kprobes,
    assert {p["kind"] for p in json.loads(result.stdout)["probes"]} == {"syscall"}  # so dropped
    with pytest.raises(SigningRefused, match="kind 'kprobe' are not allowed for user root"):
        sign(site, ask("write", "vfs"))


def test_disallowed_set_refused_naming_the_set_and_contact(site, service):
    write_policy(site, 'contact = "hpc-help@example.org"\n'
                       '[defaults]\nallow_kinds = ["syscall", "uprobe"]\nallow_sets = ["one-write"]\n')
    with pytest.raises(SigningRefused) as info:
        sign(site, ask("write", "fwrite"))
    message = str(info.value)
    assert "probe set 'one-fwrite' is not allowed" in message
    assert "hpc-help@example.org" in message and str(site.policy_file) in message
    assert sign(site, ask("write"))["sets"] == ["one-write"]


def test_validity_capped_to_site_maximum_and_to_policy_maximum(site, service, user1):
    assert site.max_validity_days == 30
    assert validity(sign(site, ask("write", days=400))) == 30
    write_policy(site, '[defaults]\nallow_kinds = ["syscall"]\nallow_sets = ["*"]\n'
                       'max_validity_days = 3\n'
                       f'[users.{user1.pw_name}]\nmax_validity_days = 10\n')
    assert validity(sign(site, ask("write", days=30))) == 3
    result = sign_as(user1.pw_name, ask("write", days=30), site)
    assert result.returncode == 0, result.stderr
    assert validity(json.loads(result.stdout)) == 10


def test_policy_broken_while_running_refuses_until_fixed(site, service):
    write_policy(site, "[defaults\n")
    with pytest.raises(SigningRefused, match="not valid TOML.*nothing is signed"):
        sign(site, ask("write"))
    site.policy_file.unlink()  # back to the built-in default
    assert sign(site, ask("write"))
    assert service.proc.poll() is None


def test_sighup_forces_a_policy_reread(site, service):
    def refusal() -> str:
        with pytest.raises(SigningRefused) as info:
            sign(site, ask("write"))
        return str(info.value)

    write_policy(site, 'contact = "first"\n[defaults]\nallow_kinds = ["uprobe"]\n')
    assert "ask first" in refusal()
    st = site.policy_file.stat()
    site.policy_file.write_text('contact = "later"\n[defaults]\nallow_kinds = ["uprobe"]\n')
    os.utime(site.policy_file, ns=(st.st_atime_ns, st.st_mtime_ns))  # looks unchanged
    assert "ask first" in refusal()
    service.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "ask later" not in refusal() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "ask later" in refusal()
    assert service.proc.poll() is None


def test_probe_definitions_from_the_user_are_refused(site, service):
    """Users choose sets; only the service's catalog defines probes (argument roles,
    byte formulas): a request that carries its own probe definitions is refused whole."""
    request = {"op": "sign", "request": {
        "sets": ["one-write"], "capture": {"mode": "trace", "interval_ms": 1000, "paths": True},
        "validity_days": 1,
        "probes": [{**PROBES["write"], "args": {"fd": 0, "path": 1}}]}}
    reply = raw_exchange(site.socket_path, encode(request))
    assert reply == {"ok": False, "error": "the request does not match the signing protocol: "
                     "request: has a property that is not allowed here "
                     "(allowed: capture, libraries, patterns, sets, usdt, validity_days)"}


# ---- the audit log --------------------------------------------------------------------------


def test_audit_has_one_line_per_decision_with_uid_decision_and_digest(site, service, user1):
    result = sign_as(user1.pw_name, ask("write", "rq"), site)
    assert result.returncode == 0, result.stderr
    signed = json.loads(result.stdout)
    refused = wire(ask("vfs", days=1))
    reply = raw_exchange(site.socket_path, refused)
    assert reply["ok"] is False
    raw_exchange(site.socket_path, encode({"op": "ping"}))  # not a decision: not recorded

    records = read_records(site.audit_log)
    assert [r["decision"] for r in records] == ["granted", "refused"]
    granted, denied = records
    assert (granted["uid"], granted["user"]) == (user1.pw_uid, user1.pw_name)
    assert granted["sha256"] == hashlib.sha256(canonical_bytes(signed)).hexdigest()
    assert granted["key_id"] == signed["key_id"] and granted["probes"] == 2
    assert granted["pid"] > 0 and granted["time"].endswith("Z")
    assert (denied["uid"], denied["user"], denied["probes"]) == (0, "root", 0)
    assert granted["resolved"] == {"sets": ["one-write", "one-rq"], "libraries": [],
                                   "dropped": 0}
    assert denied["sha256"] == hashlib.sha256(refused.rstrip(b"\n")).hexdigest()
    assert "kprobe" in denied["reason"] and denied["key_id"] is None
    assert stat.S_IMODE(site.audit_log.stat().st_mode) == 0o640


# ---- robustness -----------------------------------------------------------------------------


def assert_still_serving(site):
    assert ping(socket_path=site.socket_path)
    signed = sign(site, ask("write"))
    assert signed["owner"]["user"] == "root"


@pytest.mark.parametrize("data, expected", [
    (b"\x00\xff\xfegarbage\x80\n", "not UTF-8"),
    (b"{\"op\": \"sign\", \"request\": \n", "not valid JSON"),
    (b"[1, 2, 3]\n", "must be a JSON object"),
    (b"[" * 60000 + b"\n", "nested more than"),
    (b'{"op": "sign", "op": "ping"}\n', "duplicate key"),
    (b'{"op": "shutdown"}\n', "does not match the signing protocol"),
    (b'{"op": "sign", "request": {"sets": [], "probes": []}}\n', "does not match"),
    (b"\n", "empty"),
])
def test_bad_requests_get_an_error_reply_and_service_survives(site, service, data, expected):
    reply = raw_exchange(site.socket_path, data)
    assert reply["ok"] is False and expected in reply["error"]
    assert_still_serving(site)


def test_oversized_request_refused_and_connection_closed(site, service):
    data = b'{"op":"sign","request":{"sets":["' + b"a" * (MAX_REQUEST_BYTES * 4) + b'"]}}\n'
    reply = raw_exchange(site.socket_path, data)
    assert reply["ok"] is False and f"larger than the limit of {MAX_REQUEST_BYTES}" in reply["error"]
    assert_still_serving(site)


def test_half_closed_connection_gets_answered(site, service):
    data = wire(ask("write", days=1))
    reply = raw_exchange(site.socket_path, data.rstrip(b"\n"), shutdown=True)
    assert reply["ok"] is True and reply["document"]["owner"]["uid"] == 0


def test_silent_and_trickling_clients_are_cut_and_block_nobody(site, keystore, start_service):
    timeout = 3.0  # long enough that serving others meanwhile is measurable on a busy machine
    svc = start_service("--read-timeout", str(timeout))
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.connect(str(site.socket_path))
    trickle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    trickle.connect(str(site.socket_path))
    stop = threading.Event()

    def drip():
        try:
            while not stop.is_set():
                trickle.send(b" ")
                time.sleep(0.1)
        except OSError:
            pass

    dripper = threading.Thread(target=drip)
    dripper.start()
    try:
        start = time.monotonic()
        assert_still_serving(site)  # served while both others hold their connections
        assert time.monotonic() - start < timeout
        silent.settimeout(timeout * 5)
        reply = json.loads(silent.recv(4096))
        assert reply["ok"] is False and "no complete request" in reply["error"]
        assert silent.recv(4096) == b""  # and then closed
        waited = time.monotonic() - start
        assert timeout * 0.8 <= waited < timeout * 4
        trickle.settimeout(timeout * 5)
        assert b"no complete request" in trickle.recv(4096)  # the deadline is overall
    finally:
        stop.set()
        dripper.join()
        silent.close()
        trickle.close()
    assert_still_serving(site)
    assert svc.stop() == 0


def test_one_users_connections_are_capped_and_others_still_served(site, keystore, user1,
                                                                  start_service):
    svc = start_service("--max-per-user", "3")
    held = []
    try:
        for _ in range(3):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(site.socket_path))
            held.append(s)
        # once the service has admitted all three (a loaded machine may take a while), a
        # fourth connection of the same uid is refused as busy
        deadline = time.monotonic() + 10
        while True:
            reply = raw_exchange(site.socket_path, encode({"op": "ping"}))
            if reply["ok"] is False or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert reply["ok"] is False and "busy" in reply["error"]
        result = sign_as(user1.pw_name, ask("write"), site)  # another uid: served
        assert result.returncode == 0, result.stderr
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 10
    while not ping(socket_path=site.socket_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert_still_serving(site)
    assert svc.stop() == 0


def test_client_vanishing_before_the_reply_does_not_hurt(site, service):
    data = wire(ask("write", "rq", days=1))
    for _ in range(20):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(site.socket_path))
            s.sendall(data)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:  # connects and leaves at once
        s.connect(str(site.socket_path))
    assert_still_serving(site)
    assert service.proc.poll() is None


def test_hundred_concurrent_clients_each_get_a_valid_signature(site, service):
    docs = [ask("write", "fwrite", "rq", days=1 + i % 5) for i in range(100)]
    barrier = threading.Barrier(100)

    def one(doc):
        barrier.wait()
        return sign(site, doc, timeout=60)

    with ThreadPoolExecutor(max_workers=100) as pool:
        results = list(pool.map(one, docs))
    assert len(results) == 100
    assert len({r["signature"] for r in results}) >= 5  # different validities, different bytes
    for doc, signed in zip(docs, results):
        assert signed["owner"]["uid"] == 0 and len(signed["probes"]) == 3
        assert validity(signed) == doc["validity_days"]
    assert len(read_records(site.audit_log)) == 100
    assert_still_serving(site)


# ---- the socket and the process -------------------------------------------------------------


def test_socket_is_0666_in_a_0755_directory_and_removed_on_sigterm(site, service):
    assert stat.S_ISSOCK(site.socket_path.lstat().st_mode)
    assert stat.S_IMODE(site.socket_path.stat().st_mode) == 0o666
    assert stat.S_IMODE(site.socket_path.parent.stat().st_mode) == 0o755
    assert service.stop(signal.SIGTERM) == 0
    assert not site.socket_path.exists()
    assert "Traceback" not in service.stderr()


def test_sigint_stops_cleanly_too(site, service):
    assert service.stop(signal.SIGINT) == 0
    assert not site.socket_path.exists()


def _blocked_signals(pid: int, tid: int) -> int:
    status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
    return int(re.search(r"^SigBlk:\s*([0-9a-f]+)$", status, re.M).group(1), 16)


def test_a_stop_signal_reaches_accept_while_a_connection_is_open(site, keystore,
                                                                 start_service):
    """A process-wide signal goes to any thread that does not block it; if a connection
    thread took it, the main thread's accept() would never wake. Connection threads must
    block the stop signals, and a stop with one connection open must still be prompt
    (the connection's thread is given up after close()'s 5 s grace)."""
    service = start_service("--read-timeout", "60")     # the held thread outlives the test
    held = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    held.connect(str(site.socket_path))  # says nothing: its thread waits for a request
    try:
        pid = service.proc.pid
        deadline = time.monotonic() + 5
        while len(os.listdir(f"/proc/{pid}/task")) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        workers = [int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid]
        assert workers, "no connection thread appeared"
        stops = sum(1 << (sig - 1) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP))
        for tid in workers:
            assert _blocked_signals(pid, tid) & stops == stops, f"thread {tid} takes stop signals"
        # the main thread still takes them, once thread.start() has returned and its mask
        # is restored (the worker is in /proc before that: poll, do not read once)
        deadline = time.monotonic() + 5
        while _blocked_signals(pid, pid) & stops and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _blocked_signals(pid, pid) & stops == 0
        started = time.monotonic()
        assert service.stop(signal.SIGTERM) == 0
        assert time.monotonic() - started < 12
    finally:
        held.close()
    assert not site.socket_path.exists()


def test_creates_missing_socket_directory_0755(site, keystore, tmp_path, start_service):
    sock = tmp_path / "fresh" / "dir" / "sign.sock"
    svc = start_service("--socket", str(sock))
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o755
    assert sign(site, ask("write"), socket_path=sock)["owner"]["uid"] == 0
    assert svc.stop() == 0
    assert not sock.exists()


def test_second_service_on_a_live_socket_is_refused(site, service):
    second = subprocess.run([str(SERVICE_BIN), "--config", str(site.source)],
                            capture_output=True, text=True, timeout=30)
    assert second.returncode == 1
    assert "another signing service is already answering" in second.stderr
    assert "Traceback" not in second.stderr
    assert_still_serving(site)  # the first one's socket was left alone


def test_stale_socket_is_replaced(site, keystore, start_service):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(site.socket_path))
    stale.close()  # the file stays, nobody listens: what a killed service leaves
    svc = start_service()
    assert_still_serving(site)
    assert "stale socket" in svc.stderr()


def test_a_missing_public_key_is_said_where_admins_look(site, keystore, start_service):
    """After a reinstall the service's key may have no public half in public_key_dir:
    everything it signs then fails to verify. It still serves (the admin may copy keys
    in later) but its log says so and names the command that restores the key."""
    key_id = keystore.current_key_id()
    (site.public_key_dir / f"{key_id}.pub").unlink()
    svc = start_service()
    assert ping(socket_path=site.socket_path)
    with pytest.raises(SigningError, match="keys export-public"):
        sign(site, ask("write"))        # the client checks what it got, and says why not
    assert (f"the public key of signing key {key_id} is not in {site.public_key_dir}"
            in svc.stderr())
    assert f"datacrumbs keys export-public {site.public_key_dir}" in svc.stderr()


def test_regular_file_at_the_socket_path_is_not_touched(site, keystore):
    site.socket_path.write_text("precious\n")
    result = subprocess.run([str(SERVICE_BIN), "--config", str(site.source)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert f"{site.socket_path} exists and is not a socket" in result.stderr
    assert site.socket_path.read_text() == "precious\n"


@pytest.mark.parametrize("setup, expected", [
    ("nokey", "run `datacrumbs keys init`"),
    ("badpolicy", "is not valid TOML"),
    ("unknownkind", "allow_kinds"),
])
def test_start_up_problems_give_one_clear_line(site, setup, expected):
    if setup != "nokey":
        KeyStore(site.private_key_dir, site.public_key_dir).init()
        text = "[defaults\n" if setup == "badpolicy" else '[defaults]\nallow_kinds = ["kprobes"]\n'
        site.policy_file.write_text(text)
    result = subprocess.run([str(SERVICE_BIN), "--config", str(site.source)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not site.socket_path.exists()


def test_help_explains_the_service():
    result = subprocess.run([str(SERVICE_BIN), "--help"], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0
    for word in ("--config", "--socket", "--foreground", "kernel",
                 "audit", "examples:"):
        assert word in result.stdout


# ---- the client's own errors ----------------------------------------------------------------


def test_client_says_the_service_is_not_running(site):
    with pytest.raises(ServiceNotRunning) as info:
        sign(site, ask("write"))
    message = str(info.value)
    assert "not running on this node" in message and str(site.socket_path) in message
    assert "systemctl enable --now datacrumbs_sign_probes.service" in message
    assert ping(socket_path=site.socket_path) is False


@contextlib.contextmanager
def impostor(path: Path, answer: bytes):
    """A real socket that answers one request with ``answer``, as a fake service would."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def answer_once():
        conn, _ = server.accept()
        with conn:
            conn.recv(MAX_REQUEST_BYTES)
            conn.sendall(answer)

    thread = threading.Thread(target=answer_once)
    thread.start()
    try:
        yield path
    finally:
        thread.join(10)
        server.close()


@pytest.mark.parametrize("answer, expected", [
    (b"HTTP/1.1 200 OK\r\n\r\n", "unusable reply"),
    (b'{"ok": true, "document": {"format": "x"}}\n', "does not verify"),
    (b'{"ok": "maybe"}\n', "unusable reply"),
    (b"", "unusable reply"),
])
def test_client_rejects_a_garbage_answer(site, keystore, tmp_path, answer, expected):
    with impostor(tmp_path / "impostor.sock", answer) as path:
        with pytest.raises(SigningError, match=expected):
            sign(site, ask("write"), socket_path=path, timeout=5)


def test_client_rejects_a_signature_by_an_untrusted_key(site, keystore, tmp_path):
    rogue = KeyStore(tmp_path / "rogue-private", tmp_path / "rogue-public")
    rogue.init()
    forged = rogue.sign(build_document([PROBES["write"]], owner_uid=0, owner_user="root",
                                       sets=["one-write"], issued_at=int(time.time())))
    with impostor(tmp_path / "rogue.sock", encode({"ok": True, "document": forged})) as path:
        with pytest.raises(SigningError, match="not among the trusted keys"):
            sign(site, ask("write"), socket_path=path, timeout=5)


# ---- the systemd unit -----------------------------------------------------------------------


def test_unit_template_passes_systemd_analyze_verify(tmp_path):
    prefix = tmp_path / "prefix"
    exe = prefix / "bin" / "datacrumbs_sign_probes"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    cfg = SiteConfig(prefix=prefix, socket_path=Path("/run/dc-site/sock/sign.sock"),
                     audit_log=Path("/srv/audit/sign-audit.log"))
    text = render_template(UNIT.read_text(), template_values(prefix, cfg), "unit")
    assert not re.search(r"@[A-Z_]+@", text) and str(prefix) in text
    units = tmp_path / "units"
    units.mkdir()
    unit = units / "datacrumbs_sign_probes.service"
    unit.write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    service = dict(line.split("=", 1) for line in text.splitlines()
                   if "=" in line and not line.startswith("#"))
    assert service["ExecStart"] == (f"{exe} --config "
                                    f"{prefix}/etc/datacrumbs/datacrumbs.toml")
    assert service["RuntimeDirectory"] == "datacrumbs"
    assert service["RuntimeDirectoryPreserve"] == "yes"
    assert service["RuntimeDirectoryMode"] == "0755"
    assert service["ProtectSystem"] == "strict"
    # a site that moves the socket or the audit log gets a unit that may write there
    assert service["ReadWritePaths"].split() == ["-/run/dc-site/sock", "-/srv/audit"]
    assert service["NoNewPrivileges"] == service["PrivateTmp"] == "yes"
    assert service["Restart"] == "on-failure"


@contextlib.contextmanager
def signing_unit(manager, prefix_name: str):
    """datacrumbs_sign_probes.service as installed, started in ``manager`` (a private
    systemd) with everything it must see or write in /run/datacrumbs (PrivateTmp hides
    pytest's /tmp from it); (config, audit log). Stopped and removed afterwards."""
    name = "datacrumbs_sign_probes.service"
    root = Path("/run/datacrumbs") / f"{prefix_name}-{os.getpid()}-{time.monotonic_ns()}"
    audit_log = root / "log" / "sign-audit.log"
    unit = manager.unit_dir / name
    try:
        root.mkdir(mode=0o755, parents=True)
        root.chmod(0o755)
        prefix = root / "prefix"
        (prefix / "bin").mkdir(parents=True)
        (prefix / "etc/datacrumbs").mkdir(parents=True)
        (prefix / "bin/datacrumbs_sign_probes").symlink_to(SERVICE_BIN)
        config_path = prefix / "etc/datacrumbs/datacrumbs.toml"
        config_path.write_text(render_config(SiteConfig(
            prefix=prefix, run_dir=root, log_dir=audit_log.parent, public_key_dir=root / "keys",
            private_key_dir=root / "private", socket_path=root / "sign.sock",
            policy_file=root / "sign-policy.toml", audit_log=audit_log)))
        config = load_config(config_path)
        KeyStore(config.private_key_dir, config.public_key_dir).init()
        unit.write_text(render_template(UNIT.read_text(), template_values(prefix, config),
                                        "unit"))
        manager.systemctl("daemon-reload", check=True)
        started = manager.systemctl("start", name)
        assert started.returncode == 0, started.stderr + manager.journal(name)
        yield config, audit_log
    finally:
        manager.systemctl("stop", name)
        manager.systemctl("reset-failed", name)
        unit.unlink(missing_ok=True)
        manager.systemctl("daemon-reload")
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.systemd
def test_unit_runs_the_service_under_a_real_systemd(systemd_manager, user1):
    """Type=notify readiness, the hardening and RuntimeDirectory as systemd really applies them.

    Everything the hardened service must see or write lives in /run/datacrumbs (shared with
    the private manager and writable by the unit): PrivateTmp hides pytest's /tmp from it.
    Starting the unit creates /var/log/datacrumbs (LogsDirectory=) as on a node; it is left
    in place, since a concurrent run may be using it.
    """
    manager = systemd_manager
    name = "datacrumbs_sign_probes.service"
    with signing_unit(manager, "test-sign") as (config, audit_log):
        assert manager.is_active(name) == "active"  # only after READY=1: the socket listens
        assert stat.S_IMODE(config.socket_path.stat().st_mode) == 0o666
        result = sign_as(user1.pw_name, ask("posix"), config)
        assert result.returncode == 0, result.stderr + manager.journal(name)
        assert json.loads(result.stdout)["owner"]["user"] == user1.pw_name
        assert manager.systemctl("reload", name).returncode == 0
        assert ping(socket_path=config.socket_path)

        assert manager.systemctl("stop", name).returncode == 0
        assert manager.is_active(name) == "inactive"
        assert not config.socket_path.exists()
        assert Path("/run/datacrumbs").is_dir()  # RuntimeDirectoryPreserve: kept for the prolog
        journal = manager.journal(name)
        assert "listening on" in journal and "stopping on signal" in journal
        assert "Traceback" not in journal
        records = read_records(audit_log)
        assert [(r["user"], r["decision"]) for r in records] == [(user1.pw_name, "granted")]


def test_async_set_is_signed_from_the_catalog_and_judged_by_kind(site, service, user1):
    """The built-in async set (io_uring and libaio requests): the default policy signs it,
    with exactly the catalog's probes; a policy that does not allow the kind refuses it."""
    from datacrumbs.probes.catalog import builtin_sets

    signed = sign(site, ask("async"))
    assert signed["sets"] == ["async"]
    assert signed["probes"] == [dict(p) for p in builtin_sets()["async"].probes]
    write_policy(site, '[defaults]\nallow_kinds = ["syscall"]\nallow_sets = ["*"]\n')
    result = sign_as(user1.pw_name, ask("async"), site)
    assert result.returncode == 3 and "'async'" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
