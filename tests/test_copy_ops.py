"""In-kernel data paths (copy_file_range, sendfile, splice, tee, vmsplice, preadv2,
pwritev2) under `datacrumbs trace`, real eBPF and real programs, each checked against
strace on the same run (the traced command is strace running the program) or against
sizes the program guarantees."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest

from workloads import daemon_readback as rb
from workloads.daemon_build import build

from fixtures.strace_bytes import per_file, strace_bytes, trace_bytes, with_strace
from fixtures.tracing import DATACRUMBS, trace_command as traced

pytestmark = pytest.mark.ebpf
SIZE = 64 << 20


@pytest.fixture
def shm():
    """A scratch directory on tmpfs (/dev/shm), as the issue's numbers were taken on."""
    d = Path(tempfile.mkdtemp(prefix="datacrumbs-copy-", dir="/dev/shm"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def copies_bin(shared_dir):
    return build("copies", shared_dir)


def report_files(tmp_path, trace: Path) -> dict:
    proc = subprocess.run([DATACRUMBS, "report", "--json", "-", str(trace)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout[proc.stdout.index("{"):])
    return {f["path"]: f for f in rep["top_files_by_bytes"]}, rep


@pytest.mark.parametrize("how", ["cp", "cat-redirect"])
def test_coreutils_copies_are_counted_in_both_files(site, tmp_path, shm, how):
    """coreutils 9 copies with copy_file_range: cp, and cat with a shell redirect."""
    src, dst = shm / "a", shm / "b"
    with open(src, "wb") as f:
        f.write(bytes(range(256)) * (SIZE // 256))
    log = tmp_path / "strace.log"
    cmd = ["cp", str(src), str(dst)] if how == "cp" else ["sh", "-c", f"cat {src} > {dst}"]
    _, path, summary = traced(tmp_path, with_strace(log, cmd))
    assert dst.stat().st_size == SIZE
    got, want = trace_bytes(path, shm), strace_bytes(log, shm)
    assert got == want
    assert got[("copy_file_range", str(src), str(dst))] == SIZE, got
    reads, writes = per_file(got)
    assert reads[str(src)] == SIZE and writes[str(dst)] == SIZE
    # the run's summary credits the copy to both files
    assert summary["files"][str(src)]["bytes"] >= SIZE
    assert summary["files"][str(dst)]["bytes"] >= SIZE
    files, rep = report_files(tmp_path, path)
    assert files[str(src)]["bytes"] >= SIZE and files[str(dst)]["bytes"] >= SIZE
    ops = {o["name"]: o for o in rep["operations"]}
    assert ops["copy_file_range"]["bytes"] >= SIZE


@pytest.mark.parametrize("applet", ["cat", "cp"])
def test_busybox_sendfile_bytes_are_exact(site, tmp_path, shm, applet):
    busybox = shutil.which("busybox")
    assert busybox, "busybox is not installed (scripts/deps.sh installs it)"
    src, dst = shm / "a", shm / "b"
    with open(src, "wb") as f:
        f.write(b"x" * (SIZE // 8 + 12345))
    size = src.stat().st_size
    log = tmp_path / "strace.log"
    cmd = ([busybox, "cp", str(src), str(dst)] if applet == "cp"
           else ["sh", "-c", f"{busybox} cat {src} > {dst}"])
    _, path, _summary = traced(tmp_path, with_strace(log, cmd))
    assert dst.stat().st_size == size
    got, want = trace_bytes(path, shm), strace_bytes(log, shm)
    assert got == want
    assert got[("sendfile", str(src), str(dst))] == size, got


def test_splice_tee_vmsplice_preadv2_pwritev2(site, tmp_path, shm, copies_bin):
    log = tmp_path / "strace.log"
    proc, path, _ = traced(tmp_path, with_strace(log, [str(copies_bin), str(shm)]))
    assert proc.stdout == "done\n"
    src, dst = str(shm / "src"), str(shm / "dst")
    got, want = trace_bytes(path, shm), strace_bytes(log, shm)
    assert got == want
    assert got == Counter({("pwritev2", src, None): 8192, ("preadv2", src, None): 8192,
                           ("splice", src, None): 8192, ("splice", None, dst): 8192})
    # the calls between pipes (tee, vmsplice) are traced with their sizes too
    events = [e for e in rb.events(path) if e["name"] in ("tee", "vmsplice")]
    sizes = {(e["name"], e["args"]["size"]) for e in events if e["args"].get("size", 0) > 0}
    assert sizes == {("tee", 8192), ("vmsplice", 4096)}
    tee = next(e for e in events if e["name"] == "tee")
    assert tee["args"]["fd"] >= 0 and tee["args"]["fd2"] >= 0 and tee["args"]["count"] == 8192


def test_open_flags_reach_the_trace(site, tmp_path, shm, copies_bin):
    _, path, _ = traced(tmp_path, [str(copies_bin), str(shm)])
    fh = {r["args"]["value"]: r["args"]["name"] for r in rb.records(path) if r["name"] == "FH"}
    opens = {fh.get(e["args"].get("fhash")): e["args"] for e in rb.events(path)
             if e["name"] in ("open", "openat")}
    import os
    assert opens[str(shm / "src")]["flags"] & 0o3 == os.O_RDWR
    assert opens[str(shm / "src")]["flags"] & (os.O_CREAT | os.O_TRUNC) == os.O_CREAT | os.O_TRUNC
    assert opens[str(shm / "dst")]["flags"] & 0o3 == os.O_WRONLY


@pytest.mark.parametrize("shell_cmd", ["cat {src} > {dst}", "cp {src} {dst}"])
def test_copies_without_strace_name_both_files(site, tmp_path, shm, shell_cmd):
    """The same copies at full speed (no strace slowing the command): the forked command
    inherits the shell's redirect, and its copy_file_range names both files."""
    src, dst = shm / "a", shm / "b"
    with open(src, "wb") as f:
        f.write(b"y" * SIZE)
    _, path, summary = traced(tmp_path, ["sh", "-c", shell_cmd.format(src=src, dst=dst)])
    got = trace_bytes(path, shm)
    assert got == Counter({("copy_file_range", str(src), str(dst)): SIZE})
    assert summary["files"][str(src)]["bytes"] == SIZE
    assert summary["files"][str(dst)]["bytes"] == SIZE


def test_calls_that_move_no_data_carry_their_ranges(site, tmp_path, shm, copies_bin):
    """ftruncate, fallocate, fadvise64, sync_file_range, mmap, msync, munmap: recorded with
    their file, offset and length, and no bytes (the call itself moves none)."""
    _, path, _ = traced(tmp_path, [str(copies_bin), str(shm)])
    fh = {r["args"]["value"]: r["args"]["name"] for r in rb.records(path) if r["name"] == "FH"}
    src = str(shm / "src")
    got = {}
    for e in rb.events(path):
        a = e["args"]
        if e["name"] in ("ftruncate", "fallocate", "fadvise64", "sync_file_range", "mmap") \
                and fh.get(a.get("fhash")) == src:
            got[e["name"]] = (a.get("offset"), a.get("count"), a.get("size"))
        elif e["name"] in ("msync", "munmap") and a.get("count") == 8192:
            got[e["name"]] = (a.get("offset"), a.get("count"), a.get("size"))
    assert got == {"ftruncate": (16384, None, None), "fallocate": (0, 32768, None),
                   "fadvise64": (4096, 8192, None), "sync_file_range": (0, 8192, None),
                   "mmap": (4096, 8192, None), "msync": (None, 8192, None),
                   "munmap": (None, 8192, None)}


MAPPED = """
import mmap, sys
p = sys.argv[1]
with open(p, "wb") as f:
    f.truncate(1 << 20)
with open(p, "r+b") as f:           # opened for writing, mapped shared: stores are writes
    m = mmap.mmap(f.fileno(), 1 << 20, mmap.MAP_SHARED)
    m[:4096] = b"z" * 4096
    m.flush()
    m.close()
with open(p, "rb") as f:            # read-only, private: nothing is stored to the file
    m = mmap.mmap(f.fileno(), 1 << 20, mmap.MAP_PRIVATE, mmap.PROT_READ)
    m.close()
"""


def test_stores_through_a_shared_mapping_are_said_to_be_uncounted(site, tmp_path):
    """Bytes stored to a shared mapping move without a call: the summary and `trace`'s
    output name the file instead of counting 0 bytes as if nothing happened."""
    target = tmp_path / "mapped.dat"
    proc, _path, summary = traced(tmp_path, [sys.executable, "-c", MAPPED, str(target)])
    assert summary["shared_mappings"] == [str(target)]
    assert "not counted" in proc.stderr and str(target) in proc.stderr
