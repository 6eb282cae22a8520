"""Every event's file under its absolute name, and the kind of every descriptor, from the
kernel's own objects: relative names (cwd, chdir, a directory fd), descriptors inherited
across fork and exec, descriptors opened before the trace began, pipes. Real programs
(tar, make and gcc, sh and dd, cat, Python) under `datacrumbs trace`, real eBPF; bytes are
checked against sizes known in advance and names against strace -f -yy on the same run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from fixtures.tracing import trace_command
from workloads import daemon_readback as rb

pytestmark = pytest.mark.ebpf

READS = ("read", "pread64", "readv", "preadv", "preadv2")
WRITES = ("write", "pwrite64", "writev", "pwritev", "pwritev2")
COPIES = ("copy_file_range", "sendfile", "sendfile64", "splice")  # fd reads, fd2 writes


def file_names(trace: Path) -> dict[str, str]:
    return {r["args"]["value"]: r["args"]["name"] for r in rb.records(trace)
            if r["name"] == "FH"}


def bytes_by_file(trace: Path) -> tuple[Counter, list]:
    """Bytes per (direction, file) and the data events that had no file name."""
    fh = file_names(trace)
    total, unnamed = Counter(), []
    for e in rb.events(trace):
        a = e["args"]
        if e["name"] not in READS + WRITES + COPIES or a.get("size", 0) <= 0:
            continue
        name = fh.get(a.get("fhash"))
        if name is None or (e["name"] in COPIES and "fhash2" not in a):
            unnamed.append(e)
            continue
        if e["name"] in COPIES:
            total[("read", name)] += a["size"]
            total[("write", fh[a["fhash2"]])] += a["size"]
        else:
            total[("read" if e["name"] in READS else "write", name)] += a["size"]
    return total, unnamed


@pytest.fixture
def tree(tmp_path) -> Path:
    """Files of distinct sizes under repeated names in different directories."""
    root = tmp_path / "tree"
    for i, d in enumerate(("a", "b", "a/sub", "b/sub/deeper")):
        (root / d).mkdir(parents=True, exist_ok=True)
        for j, name in enumerate(("changelog.gz", "README", "data.bin")):
            (root / d / name).write_bytes(bytes([65 + j]) * (1000 * (i + 1) + 7 * j + 1))
    return root


def test_tar_names_every_file_absolutely_with_exact_bytes(site, tmp_path, tree):
    """tar walks the tree with relative names (openat on directory fds): each file of
    the same name in another directory is its own row, and each read its whole size."""
    archive = tmp_path / "x.tar"
    _, trace, _ = trace_command(tmp_path, ["tar", "cf", archive, "tree"], cwd=tmp_path)
    total, _ = bytes_by_file(trace)
    for f in tree.rglob("*"):
        if f.is_file():
            assert total[("read", str(f))] == f.stat().st_size, f
    assert total[("write", str(archive))] == archive.stat().st_size
    names = set(file_names(trace).values())
    bare = {n for n in names if not n.startswith("/") and not n.startswith(("pipe:", "socket:",
                                                                            "anon_inode:"))}
    assert not bare, f"names that are not absolute: {sorted(bare)[:10]}"


MAKEFILE = """\
all: f1.o
f1.o: f1.c
\tgcc -c f1.c -o f1.o
"""


def test_make_dash_c_gives_gcc_the_directory(site, tmp_path):
    """`make -C dir` chdirs, then gcc (cc1, as) opens f1.c and writes f1.o relative to it:
    the trace names them under dir, as strace -yy on the same run does."""
    if not shutil.which("make") or not shutil.which("gcc"):
        pytest.fail("make and gcc are installed by scripts/deps.sh")
    src = tmp_path / "proj"
    src.mkdir()
    (src / "Makefile").write_text(MAKEFILE)
    (src / "f1.c").write_text("int f1(void) { return 42; }\n")
    log = tmp_path / "strace.log"
    _, trace, _ = trace_command(tmp_path, ["strace", "-f", "-yy", "-qq", "-o", log,
                                           "-e", "trace=openat", "make", "-s", "-C", src],
                                cwd=tmp_path)
    names = set(file_names(trace).values())
    assert str(src / "f1.c") in names and str(src / "f1.o") in names
    assert "f1.c" not in names and "f1.o" not in names
    # strace's view of the same run: every successful openat of a file under src
    opened = set(re.findall(r"openat\([^)]*\) = \d+<(" + re.escape(str(src)) + r"/[^>]+)>",
                            log.read_text()))
    assert opened and opened <= names, opened - names


def test_shell_redirect_and_inherited_descriptors(site, tmp_path):
    """`sh -c 'dd ... > f'`: dd writes fd 1, which the shell opened and dup2'd before
    exec; a child writes to an fd it inherited across fork and exec."""
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(300_000))
    out, inherited = tmp_path / "f", tmp_path / "inherited.log"
    script = (f"dd if={src} bs=4096 status=none > {out}; "
              f"exec 3> {inherited}; sh -c 'printf abcdefghij >&3; printf 12345 >&3'")
    _, trace, _ = trace_command(tmp_path, ["sh", "-c", script], cwd=tmp_path)
    total, _ = bytes_by_file(trace)
    assert total[("read", str(src))] == 300_000
    assert total[("write", str(out))] == 300_000
    assert total[("write", str(inherited))] == 15


def test_descriptors_opened_before_the_trace(site, tmp_path):
    """`./app < in > out.log`: stdin and stdout were opened by whoever started the
    command, before any probe existed. They are named anyway, with their kinds."""
    src, dst = tmp_path / "in.txt", tmp_path / "out.log"
    src.write_bytes(b"x" * 123_457)
    with open(src, "rb") as stdin, open(dst, "wb") as stdout:
        _, trace, _ = trace_command(tmp_path, ["cat"], stdin=stdin, stdout=stdout)
    total, unnamed = bytes_by_file(trace)
    assert total[("read", str(src))] == 123_457
    assert total[("write", str(dst))] == 123_457
    assert not unnamed
    kinds = {(e["args"].get("ftype"), e["args"].get("ftype2")) for e in rb.events(trace)
             if e["name"] in COPIES and e["args"].get("size", 0) > 0}
    assert kinds == {("reg", "reg")}


def test_a_pipe_is_a_pipe(site, tmp_path):
    """`(sleep; echo x) | cat > f`: cat's read waits on a pipe (ftype pipe, named
    pipe:[inode] as /proc names it), its write goes to a regular file."""
    out = tmp_path / "f"
    _, trace, _ = trace_command(tmp_path, ["sh", "-c", f"(sleep 0.2; echo hello) | cat > {out}"])
    fh = file_names(trace)
    cat_reads = [e for e in rb.events(trace) if e["name"] == "read"
                 and e["args"].get("fd") == 0 and e["args"].get("size", 0) > 0]
    assert cat_reads and all(e["args"]["ftype"] == "pipe" for e in cat_reads)
    assert all(re.fullmatch(r"pipe:\[\d+\]", fh[e["args"]["fhash"]]) for e in cat_reads)
    writes = [e for e in rb.events(trace) if e["name"] == "write"
              and fh.get(e["args"].get("fhash")) == str(out)]
    assert [e["args"]["ftype"] for e in writes] == ["reg"] and writes[0]["args"]["size"] == 6


DIRFD = """
import os, sys
base = sys.argv[1]
d = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
os.chdir("/")
with os.fdopen(os.open("sub/x.dat", os.O_WRONLY | os.O_CREAT, dir_fd=d), "wb") as f:
    f.write(b"y" * 4321)
os.chdir(os.path.join(base, "sub"))
with open("../sub/./x.dat", "rb") as f:
    assert len(f.read()) == 4321
try:
    os.open("missing/nothing", os.O_RDONLY, dir_fd=d)
except FileNotFoundError:
    pass
"""


def test_directory_fds_chdir_and_failed_relative_opens(site, tmp_path):
    """openat on a directory fd, a relative open after chdir (with . and ..), and a
    failed relative open: all three named absolutely."""
    base = tmp_path / "base"
    (base / "sub").mkdir(parents=True)
    _, trace, _ = trace_command(tmp_path, [sys.executable, "-c", DIRFD, base])
    total, _ = bytes_by_file(trace)
    target = str(base / "sub" / "x.dat")
    assert total[("write", target)] == 4321 and total[("read", target)] == 4321
    failed = [e for e in rb.events(trace) if e["name"] == "openat"
              and e["args"].get("errno") == 2]
    fh = file_names(trace)
    assert str(base / "missing" / "nothing") in {fh.get(e["args"].get("fhash")) for e in failed}


def test_every_data_event_has_a_name_and_kind(site, tmp_path, tree):
    """Nothing nameless: every read and write of a mixed run (files, pipes, /dev/null,
    inherited stdout) carries a file name and an fd kind."""
    script = f"cat $(find {tree} -type f) | gzip -1 > {tmp_path}/all.gz; cat {tree}/a/README > /dev/null"
    _, trace, summary = trace_command(tmp_path, ["sh", "-c", script])
    assert summary.get("names_lost", 0) == 0
    missing = defaultdict(int)
    fh = file_names(trace)
    for e in rb.events(trace):
        if e["name"] in READS + WRITES + COPIES and e["args"].get("fd", -1) >= 0:
            if fh.get(e["args"].get("fhash")) is None or not e["args"].get("ftype"):
                missing[(e["name"], e["args"].get("fd"))] += 1
    assert not missing, dict(missing)




REBIND_FROM_THREAD = """
import ctypes, os, sys, threading
a, rounds = sys.argv[1], int(sys.argv[2])
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open(a, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(fd, b"a" * 1000)
os.write(fd, b"a" * 1001)                 # this thread has named fd: its cache holds a

def swap(k):
    # another thread gives the same number another file with calls no probe sees
    # (close_range, memfd_create): only the kernel's fd table knows
    assert libc.syscall(436, fd, fd, 0) == 0                    # close_range
    assert os.memfd_create(f"dc-swap-{k}") == fd

for k in range(rounds):                   # the freed struct file's memory is often reused
    t = threading.Thread(target=swap, args=(k,))
    t.start()
    t.join()
    os.write(fd, b"b" * (100 + k))
"""


def test_a_descriptor_rebound_by_another_thread_is_named_again(site, tmp_path):
    """Threads share one fd table but each keeps its own cache of named descriptors. When
    another thread gives a number this thread has cached another file, by calls no probe
    records (close_range, memfd_create), this thread's next write must not stay under the
    old file, even when the new struct file has the old one's address (often: it was
    just freed): the kernel side reads the fd table on every event and names it again."""
    a, rounds = tmp_path / "a.dat", 20
    _, trace, _ = trace_command(tmp_path, [sys.executable, "-c", REBIND_FROM_THREAD, a, rounds])
    fh = file_names(trace)
    sizes = [1000, 1001] + [100 + k for k in range(rounds)]
    writes = [e for e in rb.events(trace) if e["name"] == "write"
              and e["args"].get("size") in sizes]
    assert [e["args"]["size"] for e in writes] == sizes
    assert len({e["tid"] for e in writes}) == 1                 # all in one thread
    names = [fh.get(e["args"].get("fhash")) for e in writes]
    assert names[:2] == [str(a), str(a)]
    wrong = [(k, n) for k, n in enumerate(names[2:]) if not (n or "").endswith(f"memfd:dc-swap-{k}")]
    assert not wrong, wrong
