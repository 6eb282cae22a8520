"""`datacrumbs probes ...` run as real processes, by root and by a real user."""

from __future__ import annotations

import shutil

import gzip
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from datacrumbs.probes.document import read_document, write_document
from datacrumbs.probes.verify import verify_probes_file
from datacrumbs.signing.client import ping

from fixtures.keys import sample_probes

BIN = os.path.dirname(sys.executable)
DATACRUMBS = os.path.join(BIN, "datacrumbs")


def run(*args, user=None, check_rc=None):
    """Run the CLI (as `user`, a pwd entry, when given) with a wide terminal."""
    prefix = []
    env = {**os.environ, "COLUMNS": "250"}
    if user is not None:
        prefix = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
                  "--clear-groups"]
        env["HOME"] = user.pw_dir
    proc = subprocess.run([*prefix, DATACRUMBS, "probes", *args], capture_output=True,
                          text=True, timeout=120, env=env)
    assert "Traceback" not in proc.stderr, proc.stderr
    if check_rc is not None:
        assert proc.returncode == check_rc, (proc.stdout, proc.stderr)
    return proc


@pytest.fixture
def user_dir(tmp_path, user1):
    """A directory user1 may write to, as their home would be."""
    d = tmp_path / "home1"
    d.mkdir()
    os.chown(d, user1.pw_uid, user1.pw_gid)
    os.chmod(tmp_path, 0o755)
    return d


def test_round_trip_generate_sign_verify_show(site, key_store, user1, user_dir):
    out = user_dir / "probes.json.gz"
    gen = run("generate", "--set", "posix", "--set", "stdio", "--set", "vfs", "-o", str(out),
              user=user1, check_rc=0)
    assert "NOT signed" in gen.stdout
    # kprobes refused here, with the reason; tracefs is root-only, which is said too.
    assert "vfs.vfs_read" in gen.stderr and "kprobes not available" in gen.stderr
    assert "tracefs" not in gen.stderr  # no tracepoints asked for: nothing left unchecked
    doc = read_document(out)
    assert doc["owner"] == {"uid": user1.pw_uid, "user": user1.pw_name}
    assert doc["sets"] == ["posix", "stdio", "vfs"]
    assert not any(p["kind"] == "kprobe" for p in doc["probes"])
    assert os.stat(out).st_uid == user1.pw_uid

    unsigned = run("verify", str(out), user=user1, check_rc=1)
    assert "it is not signed" in unsigned.stderr

    write_document(out, key_store.sign(doc))  # what the signing service does
    ok = run("verify", str(out), user=user1, check_rc=0)
    assert ok.stdout.startswith(f"valid: {out} for {user1.pw_name} (uid {user1.pw_uid}), "
                                f"{len(doc['probes'])} probes, key {key_store.current_key_id()}")
    as_root = run("verify", str(out), "--user", user1.pw_name, check_rc=0)
    assert as_root.stdout.startswith("valid:")
    not_root = run("verify", str(out), check_rc=1)  # root's own job: not root's file
    assert "signed for dctest1" in not_root.stderr

    show = run("show", str(out), user=user1, check_rc=0)
    for probe in doc["probes"]:
        assert probe["id"] in show.stdout
    assert f"{user1.pw_name} (uid {user1.pw_uid})" in show.stdout
    assert key_store.current_key_id() in show.stdout
    assert f"valid for {user1.pw_name}" in show.stdout
    assert "in 6d" in show.stdout  # relative expiry


def test_generate_with_the_real_signing_service(site, key_store, user1, user_dir):
    """--sign goes through datacrumbs_sign_probes on its Unix socket."""
    service = subprocess.Popen([os.path.join(BIN, "datacrumbs_sign_probes"), "--socket",
                                str(site.socket_path)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not ping(socket_path=site.socket_path):
            assert service.poll() is None, service.stderr.read()
            assert time.monotonic() < deadline, "signing service did not come up"
            time.sleep(0.05)
        out = user_dir / "signed.json.gz"
        gen = run("generate", "--set", "posix", "--set", "block", "--sign", "--validity-days",
                  "2", "-o", str(out), user=user1, check_rc=0)
        assert f"signed by key {key_store.current_key_id()}" in gen.stdout
        # the service builds and checks the probes itself (as root, tracefs readable)
        assert "tracepoints were not checked" not in gen.stderr
        doc = verify_probes_file(out, user1.pw_name, config=site)
        assert {p["target"] for p in doc["probes"] if p["kind"] == "tracepoint"} == \
            {"block:block_rq_issue", "block:block_rq_complete"}
        assert doc["owner"]["user"] == user1.pw_name
        assert doc["expires_at"] - doc["issued_at"] <= 2 * 86400
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=20)


def test_sign_without_service_is_one_line(site, user1, user_dir):
    out = user_dir / "x.json.gz"
    proc = run("generate", "--set", "posix", "--sign", "--socket", str(site.run_dir / "none"),
               "-o", str(out), user=user1, check_rc=1)
    assert proc.stderr.strip().count("\n") == 0 and "signing service is not running" in proc.stderr
    assert not out.exists()


def test_generate_refuses_to_overwrite(site, user1, user_dir):
    out = user_dir / "p.json.gz"
    out.write_bytes(b"keep me")
    proc = run("generate", "--set", "posix", "-o", str(out), user=user1, check_rc=2)
    assert "already exists; use --force" in proc.stderr
    assert out.read_bytes() == b"keep me"
    run("generate", "--set", "posix", "-o", str(out), "--force", user=user1, check_rc=0)
    assert read_document(out)["sets"] == ["posix"]


@pytest.mark.parametrize("args,words", [
    (["--set", "nope"], "unknown probe set 'nope'"),
    (["--set", "posix", "--validity-days", "31"], "--validity-days 31 must be between 1 and 30"),
    (["--set", "posix", "--interval-ms", "1"], "--interval-ms 1 must be between"),
    (["--set", "posix", "--library", "/no/such/lib.so"], "--library /no/such/lib.so: no such"),
    (["--set", "vfs"], "none of the 3 probes of vfs can attach"),
])
def test_generate_bad_values_are_one_line(site, tmp_path, args, words):
    out = tmp_path / "p.json.gz"
    proc = run("generate", *args, "-o", str(out))
    assert proc.returncode in (1, 2)
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("datacrumbs: error: ") and words in last
    assert not out.exists()


def test_library_that_is_no_matching_elf_library_is_refused(site, tmp_path):
    """--library must name a shared library some probe of the sets uses: a data file, or a
    library no probe of the sets asks for, would otherwise be silently ignored."""
    data = tmp_path / "libhdf5-data.so"
    data.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(4096))
    libc = "/usr/lib/x86_64-linux-gnu/libc.so.6"
    for args, words in (
            (["--set", "hdf5", "--library", str(data)],
             f"--library {data} is not an ELF shared library"),
            (["--set", "hdf5", "--library", libc],
             f"--library {libc} (libc.so.6) is not used by any probe of hdf5"),
            (["--set", "posix", "--library", libc], "is not used by any probe of posix")):
        out = tmp_path / "p.json.gz"
        proc = run("generate", *args, "-o", str(out), check_rc=2)
        assert proc.stderr.count("\n") == 1 and words in proc.stderr, proc.stderr
        assert not out.exists()


def test_generate_output_name(site, tmp_path):
    proc = run("generate", "--set", "posix", "-o", str(tmp_path / "p.json"), check_rc=2)
    assert "must end in .json.gz" in proc.stderr


def test_generate_profile_and_library_override(site, tmp_path):
    from datacrumbs.probes.host_check import ldconfig_cache

    lib = tmp_path / "libmpich.so.12"
    shutil.copy(ldconfig_cache()["libmpich.so.12"], lib)
    out = tmp_path / "p.json.gz"
    run("generate", "--set", "mpiio", "--library", str(lib), "--mode", "profile",
        "--interval-ms", "250", "--no-paths", "-o", str(out), check_rc=0)
    doc = read_document(out)
    assert doc["capture"] == {"mode": "profile", "interval_ms": 250, "paths": False}
    assert {p["library"] for p in doc["probes"]} == {str(lib)}


def test_list_sets(site):
    proc = run("list-sets", check_rc=0)
    for name in ("posix", "stdio", "mpiio", "hdf5", "block", "vfs"):
        assert name in proc.stdout


def test_show_refuses_garbage_in_one_line(site, tmp_path):
    path = tmp_path / "junk.json.gz"
    path.write_bytes(gzip.compress(json.dumps({"hello": 1}).encode()))
    proc = run("show", str(path), check_rc=1)
    assert proc.stderr.startswith(f"datacrumbs: error: probes file {path}: not a valid probes")
    assert proc.stderr.count("\n") == 1


def test_show_unsigned_says_so(site, tmp_path, user1, make_probes_doc):
    path = write_document(tmp_path / "u.json.gz", make_probes_doc(user1, signed=False))
    proc = run("show", str(path), check_rc=0)
    assert "(unsigned)" in proc.stdout and "not signed" in proc.stdout
    for probe in sample_probes():
        assert probe["id"] in proc.stdout


@pytest.mark.parametrize("action", ["generate", "list-sets", "show", "verify"])
def test_help_ends_with_examples(action):
    proc = run(action, "--help", check_rc=0)
    assert "example" in proc.stdout
    assert proc.stdout.rstrip().splitlines()[-1].strip().startswith("datacrumbs probes")


def test_group_help_explains_and_has_examples():
    proc = subprocess.run([DATACRUMBS, "probes", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and "signed" in proc.stdout
    assert "datacrumbs probes generate --set posix" in proc.stdout


def test_show_prints_values_literally(site, tmp_path, user1, make_probes_doc):
    """Rich markup inside a document value is shown as text, never interpreted."""
    probes = sample_probes()
    probes[2]["library"] = "/opt/[bold]x[/bold]/libc.so.6"
    path = write_document(tmp_path / "m.json.gz",
                          make_probes_doc(user1, signed=False, probes=probes))
    proc = run("show", str(path), check_rc=0)
    assert "/opt/[bold]x[/bold]/libc.so.6" in proc.stdout


def test_unprintable_file_name_cannot_forge_lines(site, tmp_path):
    path = tmp_path / "evil\ndatacrumbs: valid.json.gz"
    path.write_bytes(b"junk")
    proc = run("verify", str(path), "--user", "root", check_rc=1)
    assert len(proc.stderr.strip().splitlines()) == 1
    assert repr(str(path)) in proc.stderr
