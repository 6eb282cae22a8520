"""The root side's building blocks on their own: reading as the job's user, the verified
copy and its digest in the env file, and the daemon reading the copy once.

The end-to-end flows (prolog -> unit -> daemon) are in test_prolog_epilog.py and the
corpus of refused files in test_verify_tamper.py.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from datacrumbs.flux import asuser, envfile
from datacrumbs.probes import NotRegularFile, ProbesFileError, TooLarge, Unreadable
from datacrumbs.probes.document import encode_document, write_document

from fixtures.systemd import epilog, flux_env

PERMS = "check the path and its permissions"


def _user(pw):
    return SimpleNamespace(name=pw.pw_name, uid=pw.pw_uid, gid=pw.pw_gid)


def _children() -> set[int]:
    """Processes whose parent is this one (the session's systemd launcher among them)."""
    found = set()
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid():
            found.add(int(stat_file.parent.name))
    return found


# -- reading as the job's user -----------------------------------------------------------


def test_read_as_user_has_exactly_the_users_uid_and_gid(tmp_path, user1, user2):
    """Her own 0600 file and a 0640 file of her group are read; another user's 0600 file and
    root's 0600 file are not, although this process is root."""
    files = {}
    for name, uid, gid, mode in (("own", user1.pw_uid, user1.pw_gid, 0o600),
                                 ("group", 0, user1.pw_gid, 0o640),
                                 ("other", user2.pw_uid, user2.pw_gid, 0o600),
                                 ("root", 0, 0, 0o600)):
        path = tmp_path / name
        path.write_bytes(name.encode())
        os.chown(path, uid, gid)
        path.chmod(mode)
        files[name] = path
    me = _user(user1)
    before = _children()
    assert asuser.read_as_user(files["own"], me, limit=100, timeout=5) == b"own"
    assert asuser.read_as_user(files["group"], me, limit=100, timeout=5) == b"group"
    for name in ("other", "root"):
        with pytest.raises(Unreadable) as info:
            asuser.read_as_user(files[name], me, limit=100, timeout=5)
        assert str(info.value) == (f"probes file {files[name]}: it cannot be opened as user "
                                   f"dctest1 (Permission denied); {PERMS}")
    assert _children() == before  # every reader was collected


def test_reader_does_not_inherit_the_prologs_descriptors(tmp_path, user1):
    """A directory the prolog holds open (here one under a root-only directory) must not be
    reachable as /proc/self/fd/N/...: the reader closes everything before it opens."""
    hidden = tmp_path / "root-only"
    hidden.mkdir()
    hidden.chmod(0o700)
    inner = hidden / "inner"
    inner.mkdir()
    inner.chmod(0o755)
    (inner / "f.json.gz").write_bytes(b"readable by all, once inside")
    (inner / "f.json.gz").chmod(0o644)
    fd = os.open(inner, os.O_RDONLY | os.O_DIRECTORY)
    try:
        path = f"/proc/self/fd/{fd}/f.json.gz"
        with pytest.raises(Unreadable) as info:
            asuser.read_as_user(path, _user(user1), limit=100, timeout=5)
        assert str(info.value) == f"probes file {path}: it does not exist; {PERMS}"
    finally:
        os.close(fd)


@pytest.mark.parametrize("make,cls,problem", [
    (lambda p: os.symlink("/etc/hostname", p), NotRegularFile, "it is a symbolic link"),
    (os.mkfifo, NotRegularFile, "it is a FIFO, not a regular file"),
    (lambda p: p.write_bytes(b"x" * 101), TooLarge,
     "it is 101 bytes, more than the site limit max_probes_file_bytes = 100"),
])
def test_reader_refuses_what_is_not_a_small_regular_file(tmp_path, user1, make, cls, problem):
    path = tmp_path / "f.json.gz"
    make(path)
    start = time.monotonic()
    with pytest.raises(cls) as info:
        asuser.read_as_user(path, _user(user1), limit=100, timeout=5)
    assert str(info.value).startswith(f"probes file {path}: {problem}; ")
    assert time.monotonic() - start < 2  # a FIFO never blocks the reader


def test_reader_is_killed_at_its_deadline(tmp_path, user1, monkeypatch):
    """A reader that never answers (the user may SIGSTOP her own process) costs the
    prolog its timeout, not more, and leaves no process behind."""
    monkeypatch.setattr(asuser, "_read", lambda path, limit: time.sleep(60))
    path = tmp_path / "f.json.gz"
    path.write_bytes(b"x")
    before = _children()
    start = time.monotonic()
    with pytest.raises(asuser.UserReadTimeout):
        asuser.read_as_user(path, _user(user1), limit=100, timeout=0.5)
    assert 0.5 <= time.monotonic() - start < 2.0
    assert _children() == before  # killed and collected


def test_reader_cannot_take_another_identity_without_root(tmp_path, user1, user2):
    """A prolog that is not root (a single-user instance) says so instead of reading as itself."""
    path = tmp_path / "f.json.gz"
    path.write_bytes(b"x")
    path.chmod(0o644)
    code = ("import sys\nfrom types import SimpleNamespace as U\n"
            "from datacrumbs.flux import asuser\n"
            "u = U(name=sys.argv[2], uid=int(sys.argv[3]), gid=int(sys.argv[4]))\n"
            "try:\n    print(asuser.read_as_user(sys.argv[1], u, limit=10, timeout=5))\n"
            "except Exception as exc:\n    print(exc)\n")
    src = str(Path(__file__).resolve().parents[1] / "src")

    def run_as(runner, target):
        return subprocess.run([sys.executable, "-c", code, str(path), target.pw_name,
                               str(target.pw_uid), str(target.pw_gid)], user=runner.pw_uid,
                              group=runner.pw_gid, extra_groups=[], capture_output=True,
                              text=True, timeout=30, cwd="/", env={"PYTHONPATH": src})
    other = run_as(user2, user1)
    assert other.stdout.strip() == (
        f"cannot read probes file {path} as user dctest1: this prolog runs as uid "
        f"{user2.pw_uid} and cannot take that user's identity (a system prolog runs as root)"), \
        other.stderr
    assert run_as(user1, user1).stdout.strip() == "b'x'"  # the owner of a single-user instance


# -- the verified copy and the env file ----------------------------------------------------


def test_copy_is_root_only_and_env_file_checks_its_digest(tmp_path):
    copy = envfile.write_probes_copy(tmp_path, "77", b"verified bytes")
    assert copy == tmp_path / "datacrumbs-77.probes.json.gz"
    assert (copy.stat().st_uid, copy.stat().st_mode & 0o777) == (0, 0o600)
    assert copy.read_bytes() == b"verified bytes"
    base = {"DATACRUMBS_JOBID": "77", "DATACRUMBS_USER": "dctest1",
            "DATACRUMBS_PROBE_FILE": str(copy), "DATACRUMBS_CONFIG": "/etc/x.toml",
            "DATACRUMBS_PROBE_SOURCE": "/home/dctest1/it's mine.json.gz"}
    good = dict(base, DATACRUMBS_PROBE_SHA256="ab" * 32)
    assert envfile.read_env_file(envfile.write_env_file(tmp_path, "77", good)) == good
    for bad in ("AB" * 32, "ab" * 31, "sha256:" + "ab" * 32, "ab" * 32 + "\n"):
        with pytest.raises(envfile.EnvFileError):
            envfile.write_env_file(tmp_path, "78", dict(base, DATACRUMBS_PROBE_SHA256=bad))
    with pytest.raises(envfile.EnvFileError, match="not an absolute path"):
        envfile.write_env_file(tmp_path, "78", dict(base, DATACRUMBS_PROBE_SOURCE="rel.json.gz"))
    assert not (tmp_path / "datacrumbs-78.env").exists()
    assert envfile.remove_probes_copy(tmp_path, "77") is True
    assert envfile.remove_probes_copy(tmp_path, "77") is False


@pytest.mark.systemd
def test_epilog_removes_a_copy_left_without_an_env_file(installed_service, site, user1):
    """A prolog killed between the copy and the env file leaves only the copy: the epilog
    still removes it."""
    copy = envfile.write_probes_copy(site.run_dir, "4010", b"left behind")
    res = epilog(site, flux_env(installed_service, site, "4010", user1, None))
    assert res.returncode == 0, res.stderr
    assert not copy.exists()


# -- the daemon reads the copy once --------------------------------------------------------


def test_daemon_verifies_the_bytes_it_read_not_the_path_again(site, user1, make_probes_doc,
                                                              tmp_path, monkeypatch):
    """The file is swapped for another validly signed one right after the daemon read it:
    what it verifies and returns is still what it read."""
    import datacrumbs.probes.document as document
    from datacrumbs.tracer.daemon import load_probes

    first = make_probes_doc(user1)
    second = make_probes_doc(user1, sets=["posix"], probes=first["probes"][:1])
    path = write_document(tmp_path / "p.json.gz", first)
    real_decode = document.decode_document

    def decode_then_swap(data, **kwargs):
        write_document(path, second)
        return real_decode(data, **kwargs)

    monkeypatch.setattr(document, "decode_document", decode_then_swap)
    doc = load_probes(path, "dctest1", config=site, env={})
    assert [p["id"] for p in doc["probes"]] == ["posix.write", "posix.openat", "stdio.fwrite",
                                               "block.block_rq_issue"]


def test_daemon_refuses_bytes_with_another_digest(site, user1, make_probes_doc, tmp_path):
    from datacrumbs.errors import ConfigError
    from datacrumbs.tracer.daemon import load_probes

    data = encode_document(make_probes_doc(user1))
    path = tmp_path / "copy.json.gz"
    path.write_bytes(data)
    right = hashlib.sha256(data).hexdigest()
    assert load_probes(path, "dctest1", config=site,
                       env={"DATACRUMBS_PROBE_SHA256": right})["owner"]["user"] == "dctest1"
    with pytest.raises(ProbesFileError) as info:
        load_probes(path, "dctest1", config=site, env={"DATACRUMBS_PROBE_SHA256": "0" * 64})
    assert str(info.value) == (f"probes file {path}: its SHA-256 is not the one the prolog "
                               "verified (DATACRUMBS_PROBE_SHA256); rerun the job")
    with pytest.raises(ConfigError, match="is not a SHA-256 in hex"):
        load_probes(path, "dctest1", config=site, env={"DATACRUMBS_PROBE_SHA256": "x"})


def test_daemon_checks_schema_and_signature_again_except_in_the_prologs_copy(
        site, user1, make_probes_doc, tmp_path):
    """The prolog verified the bytes of its copy and wrote their digest; the daemon does not
    check their schema and signature twice there (0.08-0.14 s of a 10,000-probe start).
    Bytes changed after signing pass only in that copy, under that digest, for that run:
    elsewhere, for another run, writable by anyone but root, or without the digest, the
    daemon checks the signature itself and refuses them."""
    from datacrumbs.probes import BadSignature
    from datacrumbs.tracer.daemon import load_probes

    doc = make_probes_doc(user1)
    doc["probes"][0]["id"] = "posix.changed"        # after signing: the signature is wrong
    data = encode_document(doc)
    env = {"DATACRUMBS_PROBE_SHA256": hashlib.sha256(data).hexdigest()}
    copy = envfile.write_probes_copy(site.run_dir, "4301", data)
    got = load_probes(copy, "dctest1", config=site, env=env, run_id="4301")
    assert got["probes"][0]["id"] == "posix.changed"

    elsewhere = tmp_path / "elsewhere.json.gz"
    elsewhere.write_bytes(data)
    elsewhere.chmod(0o600)
    refused = [(elsewhere, env, "4301"), (copy, env, "4302"), (copy, {}, "4301"),
               (copy, env, None)]
    for path, run_env, run_id in refused:
        with pytest.raises(BadSignature):
            load_probes(path, "dctest1", config=site, env=run_env, run_id=run_id)
    for change in (lambda: copy.chmod(0o620), lambda: copy.chmod(0o602),
                   lambda: os.chown(copy, user1.pw_uid, 0),
                   lambda: site.run_dir.chmod(0o775)):
        change()
        with pytest.raises(BadSignature):
            load_probes(copy, "dctest1", config=site, env=env, run_id="4301")
        os.chown(copy, 0, 0)
        copy.chmod(0o600)
        site.run_dir.chmod(0o755)
    assert load_probes(copy, "dctest1", config=site, env=env, run_id="4301") == got


def test_the_prologs_copy_decodes_to_the_same_document_and_only_for_a_trusting_daemon(
        site, user1, make_probes_doc, tmp_path):
    """The copy is decoded by the C decoder alone (the prolog decoded those bytes strictly):
    the same value as the strict decoder's. What the early load decoded so is handed only
    to a daemon that trusts the copy too; a strict decoding to anyone with the digest."""
    from datacrumbs.probes.document import decode_document
    from datacrumbs.tracer import preload

    data = encode_document(make_probes_doc(user1))
    assert decode_document(data, source="x", prolog_verified=True) == \
        decode_document(data, source="x")
    sha = hashlib.sha256(data).hexdigest()
    copy = envfile.write_probes_copy(site.run_dir, "4305", data)
    other = tmp_path / "other.json.gz"
    other.write_bytes(data)
    for path, trusted in ((copy, True), (other, False)):
        preload.start(path, "4305", user1.pw_name, env={"DATACRUMBS_PROBE_SHA256": sha})
        assert preload._decoded[2] is trusted
        preload.discard()
    preload.start(copy, "4305", user1.pw_name, env={"DATACRUMBS_PROBE_SHA256": sha})
    assert preload.decoded(sha, False) is None
    preload.discard()
    preload.start(copy, "4305", user1.pw_name, env={"DATACRUMBS_PROBE_SHA256": sha})
    assert preload.decoded(sha, True) == decode_document(data, source="x")
    preload.start(other, "4305", user1.pw_name, env={"DATACRUMBS_PROBE_SHA256": sha})
    assert preload.decoded(sha, False) == decode_document(data, source="x")
    preload.discard()


def test_daemon_checks_expiry_and_owner_of_the_prologs_copy(site, user1, user2,
                                                            make_probes_doc):
    """What can change between the prolog's check and the daemon's start is checked again
    in the verified copy too: the time (an expired file) and whom the daemon runs for."""
    from datacrumbs.probes import Expired, OwnerMismatch
    from datacrumbs.tracer.daemon import load_probes

    expired = encode_document(make_probes_doc(user1, issued_at=1_000_000_000,
                                              expires_at=1_000_086_400))
    copy = envfile.write_probes_copy(site.run_dir, "4303", expired)
    with pytest.raises(Expired):
        load_probes(copy, "dctest1", config=site, run_id="4303",
                    env={"DATACRUMBS_PROBE_SHA256": hashlib.sha256(expired).hexdigest()})
    data = encode_document(make_probes_doc(user1))
    copy = envfile.write_probes_copy(site.run_dir, "4304", data)
    with pytest.raises(OwnerMismatch):
        load_probes(copy, user2.pw_name, config=site, run_id="4304",
                    env={"DATACRUMBS_PROBE_SHA256": hashlib.sha256(data).hexdigest()})


def test_daemon_cli_refuses_a_digest_mismatch_in_one_line(site, user1, make_probes_doc,
                                                          tmp_path):
    data = encode_document(make_probes_doc(user1))
    path = tmp_path / "copy.json.gz"
    path.write_bytes(data)
    proc = subprocess.run([str(Path(sys.executable).with_name("datacrumbs")), "run", str(path),
                           "100", "dctest1"], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, DATACRUMBS_PROBE_SHA256="f" * 64))
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"datacrumbs: error: probes file {path}: its SHA-256 is not "
                                   "the one the prolog verified (DATACRUMBS_PROBE_SHA256); "
                                   "rerun the job")
