"""The signing service against a hostile ordinary user: a real daemon on a real socket.

Users choose sets; the service defines every probe. The policy judges what a probe
reaches (a library file by device and inode, a function by its address, a system
call by its canonical name), not the string that named it. Every refusal is one
line, and the service keeps answering others while one user floods it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import threading
import time
from pathlib import Path

import pytest

from datacrumbs.signing.client import ServiceBusy, SigningRefused, request_signature
from datacrumbs.signing.protocol import (MAX_FDS, MAX_LIBRARIES, MAX_PATTERNS,
                                         MAX_REQUEST_BYTES, MAX_USDT, encode)
from test_signing_service import (PROBES, RUNUSER, VENV_BIN, REPO, raw_exchange, site_sets,
                                  start_service, write_policy)  # noqa: F401 (fixtures)
from test_signing_service import keystore, service  # noqa: F401 (fixtures)

LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"
LIBC_OTHER_PATHS = ["/lib/x86_64-linux-gnu/libc.so.6",                 # the /lib symlink
                    "/proc/self/root/usr/lib/x86_64-linux-gnu/libc.so.6",
                    "/usr/lib/x86_64-linux-gnu/../x86_64-linux-gnu/libc.so.6"]


def set_file(site, name: str, probes: list[dict]) -> None:
    (site.probe_sets_dir / f"{name}.json").write_text(json.dumps(
        {"name": name, "description": name, "probes": probes}))


def uprobe(pid: str, target: str, library: str = "libc.so.6") -> dict:
    return {"id": pid, "kind": "uprobe", "target": target, "library": library,
            "category": "STDIO", "args": {}, "bytes": None}


def sign(site, *sets, **kw):
    return request_signature(list(sets), socket_path=site.socket_path, **kw)


# ---- the policy judges objects, not strings -----------------------------------------------


@pytest.mark.parametrize("denied, asked", [
    ("fwrite", "_IO_fwrite"),
    ("fopen", "fopen64"),
    ("fseeko64", "fseeko"),
    ("pread", "__pread64"),
])
def test_a_denied_function_is_denied_under_every_alias(site, service, denied, asked):
    set_file(site, "alias", [uprobe("stdio.alias", asked)])
    write_policy(site, '[defaults]\nallow_kinds = ["uprobe"]\nallow_sets = ["*"]\n'
                       f'[deny]\ntargets = ["{denied}"]\n')
    with pytest.raises(SigningRefused) as info:
        sign(site, "alias")
    assert (f"target '{asked}' (the same function as '{denied}') is on the signing policy's "
            "deny list") in str(info.value)


def test_an_unrelated_function_is_still_signed(site, service):
    set_file(site, "alias", [uprobe("stdio.fread", "fread")])
    write_policy(site, '[defaults]\nallow_kinds = ["uprobe"]\nallow_sets = ["*"]\n'
                       '[deny]\ntargets = ["fwrite"]\n')
    assert [p["target"] for p in sign(site, "alias").document["probes"]] == ["fread"]


@pytest.mark.parametrize("denied, asked", [("pread", "pread64"), ("fstatat", "newfstatat"),
                                           ("sendfile64", "sendfile")])
def test_a_denied_system_call_is_denied_by_its_canonical_name(site, service, denied, asked):
    set_file(site, "sys", [{"id": "posix.x", "kind": "syscall", "target": asked,
                            "category": "POSIX", "args": {}, "bytes": None}])
    write_policy(site, '[defaults]\nallow_kinds = ["syscall"]\nallow_sets = ["*"]\n'
                       f'[deny]\ntargets = ["{denied}"]\n')
    with pytest.raises(SigningRefused, match=f"target '{asked}' is on the signing policy's deny"):
        sign(site, "sys")


@pytest.fixture
def libc_denied(site, service):
    write_policy(site, '[defaults]\nallow_kinds = ["syscall", "uprobe"]\nallow_sets = ["*"]\n'
                       f'[deny]\nlibraries = ["{LIBC}"]\n')
    set_file(site, "stdio1", [uprobe("stdio.fwrite", "fwrite")])


@pytest.mark.parametrize("path", LIBC_OTHER_PATHS)
def test_a_denied_library_is_denied_by_any_other_path(site, libc_denied, path):
    with pytest.raises(SigningRefused, match="library '/usr/lib/x86_64-linux-gnu/libc.so.6' is "
                                             "on the signing policy's deny list"):
        sign(site, "stdio1", libraries=[path])


def test_a_denied_library_is_denied_through_a_users_symlink_and_copy_of_the_name(
        site, libc_denied, user1, tmp_path):
    """The user's own symlink (named like an allowed library) is followed to the file."""
    home = tmp_path / "alice-lib"
    home.mkdir()
    (home / "libc.so.6").symlink_to(LIBC)
    shutil.chown(home, user1.pw_uid, user1.pw_gid)
    os.lchown(home / "libc.so.6", user1.pw_uid, user1.pw_gid)
    with pytest.raises(SigningRefused, match="on the signing policy's deny list"):
        sign(site, "stdio1", libraries=[str(home / "libc.so.6")])
    with pytest.raises(SigningRefused, match="on the signing policy's deny list"):
        sign(site, "stdio1")  # and of course through the catalog's own soname


@pytest.mark.parametrize("denied", ["/lib/x86_64-linux-gnu/libc.so.6",
                                    "/lib/x86_64-linux-gnu/libc.so.[0-9]"])
def test_a_library_denied_under_another_path_is_denied_by_file(site, service, denied):
    """The admin names the /lib path, the user hands over /usr/lib's: one file, refused."""
    write_policy(site, '[defaults]\nallow_kinds = ["uprobe"]\nallow_sets = ["*"]\n'
                       f'[deny]\nlibraries = ["{denied}"]\n')
    set_file(site, "stdio1", [uprobe("stdio.fwrite", "fwrite")])
    with pytest.raises(SigningRefused, match="is on the signing policy's deny list"):
        sign(site, "stdio1", libraries=[LIBC])


def test_a_denied_library_pattern_by_soname(site, service):
    write_policy(site, '[defaults]\nallow_kinds = ["uprobe"]\nallow_sets = ["*"]\n'
                       '[deny]\nlibraries = ["libc.so*"]\n')
    set_file(site, "stdio1", [uprobe("stdio.fwrite", "fwrite", library=LIBC)])
    with pytest.raises(SigningRefused, match="is on the signing policy's deny list"):
        sign(site, "stdio1", libraries=["/lib/x86_64-linux-gnu/libc.so.6"])


def test_the_signed_library_is_the_resolved_file(site, service, user1, tmp_path):
    """A user's symlink is not what gets signed: she could retarget it after signing."""
    link_dir = tmp_path / "links"
    link_dir.mkdir()
    (link_dir / "libc.so.6").symlink_to(LIBC)
    set_file(site, "stdio1", [uprobe("stdio.fwrite", "fwrite")])
    doc = sign(site, "stdio1", libraries=[str(link_dir / "libc.so.6")]).document
    assert doc["probes"][0]["library"] == LIBC


# ---- users choose, the service defines -----------------------------------------------------


def test_argument_roles_come_from_the_catalog_only(site, service):
    """The shadow-hash attack: a `path` role on read's buffer. No request can carry one."""
    bad = {"op": "sign", "request": {"sets": ["posix"], "validity_days": 1, "capture": {},
                                     "probes": [{"id": "posix.read", "kind": "syscall",
                                                 "target": "read", "category": "POSIX",
                                                 "args": {"path": 1}, "bytes": "ret"}]}}
    reply = raw_exchange(site.socket_path, encode(bad))
    assert reply == {"ok": False, "error": "the request does not match the signing protocol: "
                     + ALLOWED}
    doc = sign(site, "posix").document
    read = next(p for p in doc["probes"] if p["target"] == "read")
    assert read["args"] == {"fd": 0, "count": 2}  # the built-in set's definition
    assert all("path" not in p["args"] or p["target"] in
               {"open", "openat", "openat2", "creat", "truncate", "stat", "lstat", "newfstatat",
                "statx", "unlink", "unlinkat", "mkdir", "mkdirat", "rmdir", "rename",
                "renameat", "renameat2", "access", "faccessat", "faccessat2", "chdir",
                "execve", "readlink", "readlinkat"}
               for p in doc["probes"])


def test_library_given_as_data_file_fifo_or_directory_is_refused(site, service, tmp_path):
    data = tmp_path / "libdata.so"
    data.write_bytes(b"not an elf\n" * 100)
    fifo = tmp_path / "libfifo.so"
    os.mkfifo(fifo)
    set_file(site, "stdio1", [uprobe("stdio.fwrite", "fwrite")])
    with pytest.raises(SigningRefused, match=f"library {data} is not an ELF shared library"):
        sign(site, "stdio1", libraries=[str(data)])
    started = time.monotonic()
    with pytest.raises(SigningRefused, match=f"library {fifo} is not a regular file"):
        sign(site, "stdio1", libraries=[str(fifo)])
    assert time.monotonic() - started < 2
    with pytest.raises(SigningRefused, match="is not a regular file"):
        sign(site, "stdio1", libraries=[str(tmp_path)])


# ---- a raw-socket corpus of hostile requests: each one line, service survives ----------------

ENVELOPE = {"op": "sign", "request": {"sets": ["posix"], "validity_days": 1}}


def req(**changes) -> bytes:
    body = {**ENVELOPE["request"], **changes}
    return encode({"op": "sign", "request": {k: v for k, v in body.items() if v is not ...}})


# what a request with a field the protocol does not have is told (it is never echoed)
ALLOWED = ("request: has a property that is not allowed here "
           "(allowed: capture, libraries, patterns, sets, usdt, validity_days)")

QUADRATIC = b'{"op":"sign","request":{"sets":["' + b'\\"' * 30000 + b'\n'

CORPUS = [
    ("empty line", b"\n", "the request is empty"),
    ("not utf-8", b"\xff\xfe\x00\n", "not UTF-8"),
    ("not json", b"{op: sign}\n", "not valid JSON"),
    ("array", b"[]\n", "must be a JSON object, not list"),
    ("string", b'"sign"\n', "must be a JSON object, not str"),
    ("deep nesting", b"[" * 50000 + b"\n", "nested more than 32 levels"),
    ("deep objects", b'{"a":' * 40 + b"1" + b"}" * 40 + b"\n", "nested more than 32 levels"),
    ("quadratic escapes", QUADRATIC, "not valid JSON"),
    ("duplicate key", b'{"op":"ping","op":"sign"}\n', "duplicate key"),
    ("NaN", b'{"op":"sign","request":{"sets":["posix"],"validity_days":NaN}}\n',
     "not valid JSON"),
    ("unknown op", b'{"op":"shutdown"}\n', "does not match the signing protocol"),
    ("ping with extra", b'{"op":"ping","x":1}\n', "does not match the signing protocol"),
    ("no request", b'{"op":"sign"}\n', "(top level): is missing the required property 'request'"),
    ("no sets", req(sets=...), "request: is missing the required property 'sets'"),
    ("empty sets", req(sets=[]), "the request chooses no probes; name probe sets"),
    ("set name with slash", req(sets=["../etc"]), "request/sets/0: does not match the pattern for names (a-z, 0-9, '_', '.', '-'; at most 64)"),
    ("set name too long", req(sets=["a" * 65]), "request/sets/0: does not match the pattern for names (a-z, 0-9, '_', '.', '-'; at most 64)"),
    ("too many sets", req(sets=[f"s{i}" for i in range(65)]),
     "request/sets: must have at most 64 items"),
    ("duplicate sets", req(sets=["posix", "posix"]),
     "request/sets: must not list the same item twice"),
    ("unknown set", req(sets=["nosuchset"]), "unknown probe set 'nosuchset'"),
    ("validity zero", req(validity_days=0), "request/validity_days: must be at least 1"),
    ("validity huge", req(validity_days=10**9), "request/validity_days: must be at most 3650"),
    ("validity bool", req(validity_days=True), "request/validity_days: must be an integer"),
    ("validity float", req(validity_days=1.5), "request/validity_days: must be an integer"),
    ("mode unknown", req(capture={"mode": "root"}),
     "request/capture/mode: must be one of trace, profile"),
    ("interval tiny", req(capture={"interval_ms": 1}), "interval_ms: must be at least 10"),
    ("capture extra", req(capture={"paths": True, "args": {"path": 1}}),
     "request/capture: has a property that is not allowed here (allowed: interval_ms, mode, "
     "paths)"),
    ("owned by another", req(owner={"uid": 0, "user": "root"}), ALLOWED),
    ("probes smuggled", req(probes=[{"id": "x"}]), ALLOWED),
    ("library relative", req(libraries=["libc.so.6"]), "request/libraries/0: does not match the pattern for absolute paths (no control characters)"),
    ("library with newline", req(libraries=["/usr/lib/libc.so.6\nforged: line"]),
     "request/libraries/0: does not match the pattern for absolute paths (no control characters)"),
    ("library without descriptor", req(libraries=[LIBC]),
     "names 1 libraries but passes 0 open files"),
    ("too many libraries", req(libraries=[LIBC] * (MAX_LIBRARIES + 1)),
     f"request/libraries: must have at most {MAX_LIBRARIES} items"),
    ("oversized", b'{"op":"sign","request":{"sets":["' + b"a" * (MAX_REQUEST_BYTES + 10)
     + b'"]}}\n', f"larger than the limit of {MAX_REQUEST_BYTES} bytes"),
]


@pytest.mark.parametrize("name, data, expected", CORPUS, ids=[c[0] for c in CORPUS])
def test_hostile_request_gets_one_line_refusal_within_a_second(site, service, name, data,
                                                               expected):
    started = time.monotonic()
    reply = raw_exchange(site.socket_path, data)
    elapsed = time.monotonic() - started
    assert reply["ok"] is False, reply
    assert expected in reply["error"], reply["error"]
    assert "\n" not in reply["error"] and "Traceback" not in reply["error"]
    assert elapsed < 1.0, f"{name}: answered after {elapsed:.2f} s"
    assert raw_exchange(site.socket_path, encode({"op": "ping"})) == {"ok": True, "pong": True}


def test_corpus_is_at_least_thirty_requests():
    assert len(CORPUS) >= 30


@pytest.mark.parametrize("what, expected", [
    ("/dev/null", "is not a regular file"),
    ("/etc/hostname", "is not an ELF shared library"),
    ("/proc/self/status", "is not an ELF shared library"),
])
def test_descriptor_of_a_special_or_data_file_is_refused(site, service, what, expected):
    set_file(site, "stdio1", [uprobe("stdio.fwrite", "fwrite")])
    fd = os.open(what, os.O_RDONLY)
    try:
        reply = raw_exchange(site.socket_path, req(sets=["stdio1"], libraries=[what]), fds=[fd])
    finally:
        os.close(fd)
    assert reply["ok"] is False and expected in reply["error"]


def test_descriptor_passed_under_another_files_name_signs_the_real_file(site, service):
    """The name is only a label: the file judged and signed is the descriptor's."""
    set_file(site, "stdio1", [uprobe("stdio.fwrite", "fwrite")])
    fd = os.open(LIBC, os.O_RDONLY)
    try:
        reply = raw_exchange(site.socket_path,
                             req(sets=["stdio1"], libraries=["/usr/lib/os-release"]), fds=[fd])
    finally:
        os.close(fd)
    assert reply["ok"] is True
    assert reply["document"]["probes"][0]["library"] == LIBC


def test_more_descriptors_than_allowed_are_closed_and_refused(site, service):
    fds = [os.open(LIBC, os.O_RDONLY) for _ in range(MAX_FDS + 4)]
    try:
        reply = raw_exchange(site.socket_path, req(), fds=fds)
    finally:
        for fd in fds:
            os.close(fd)
    assert reply["ok"] is False
    assert f"names 0 libraries but passes {MAX_FDS} open files" in reply["error"]


# ---- floods, backlogs and big requests -------------------------------------------------------

PINGER = r"""
import socket, sys, time, json
lat = []
for _ in range(int(sys.argv[2])):
    t = time.monotonic()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(sys.argv[1])
        s.sendall(b'{"op":"ping"}\n')
        reply = s.recv(4096)
    lat.append(time.monotonic() - t)
    assert b'"pong":true' in reply, reply
    time.sleep(0.05)
print(json.dumps(lat))
"""


def test_other_users_are_served_during_a_hostile_flood(site, keystore, start_service, user1):
    """One user keeps the service as busy as she can with expensive refusals (oversized and
    quadratic requests, many at once); another user's pings are answered meanwhile."""
    start_service()
    stop = threading.Event()
    floods = {"sent": 0}

    def flood():
        payloads = [QUADRATIC, b"[" * 90000 + b"\n",
                    b'{"op":"sign","request":{"sets":["' + b"a" * (3 * MAX_REQUEST_BYTES)]
        i = 0
        while not stop.is_set():
            try:
                raw_exchange(site.socket_path, payloads[i % len(payloads)], timeout=10)
            except (OSError, ValueError):
                pass
            floods["sent"] += 1
            i += 1

    threads = [threading.Thread(target=flood) for _ in range(24)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        result = subprocess.run([RUNUSER, "-u", user1.pw_name, "--", "/usr/bin/python3", "-c",
                                 PINGER, str(site.socket_path), "20"],
                                capture_output=True, text=True, timeout=120)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert result.returncode == 0, result.stderr
    latencies = json.loads(result.stdout)
    print(f"flood: {floods['sent']} hostile requests; ping latency median "
          f"{statistics.median(latencies) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms")
    assert floods["sent"] > 100  # the flood really ran
    assert statistics.median(latencies) < 0.25 and max(latencies) < 1.0


def test_a_full_backlog_gets_busy_not_eagain(site, tmp_path):
    """A listener that never accepts: once its queue is full the client says "busy"."""
    path = tmp_path / "full.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(0)
    held = []
    try:
        for _ in range(8):  # fill the queue
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(str(path))
            except BlockingIOError:
                s.close()
                break
            held.append(s)
        started = time.monotonic()
        with pytest.raises(ServiceBusy) as info:
            request_signature(["posix"], socket_path=path, timeout=1.5)
        assert "is busy" in str(info.value) and "try again" in str(info.value)
        assert "Resource temporarily unavailable" not in str(info.value)
        assert 1.0 <= time.monotonic() - started < 5
    finally:
        for s in held:
            s.close()
        server.close()


def test_a_70kb_request_gets_a_reply_not_a_reset(site, service):
    data = b'{"op":"sign","request":{"sets":["' + b"b" * (MAX_REQUEST_BYTES + 70_000) + b'"]}}\n'
    for _ in range(5):
        reply = raw_exchange(site.socket_path, data)  # ConnectionResetError would fail here
        assert reply["ok"] is False and "larger than the limit" in reply["error"]


def test_every_valid_request_fits_the_request_limit():
    """The largest request the schema allows is under MAX_REQUEST_BYTES (so the limit never
    refuses a valid request; max_probes alone bounds what is signed)."""
    biggest = {"op": "sign", "request": {
        "sets": [f"{i:02d}" + "s" * 62 for i in range(64)],
        "libraries": ["/" + "\U0001F600" * 4095 for _ in range(MAX_LIBRARIES)],
        "patterns": [{"kind": "tracepoint", "pattern": "\U0001F600" * 1024}
                     for _ in range(MAX_PATTERNS)],
        "usdt": [f"/{i:02d}" + "\U0001F600" * 4093 + ":" + "p" * 64 + ":" + "n" * 64
                 for i in range(MAX_USDT)],
        "capture": {"mode": "profile", "interval_ms": 3600000, "paths": False},
        "validity_days": 3650}}
    assert len(encode(biggest)) <= MAX_REQUEST_BYTES
