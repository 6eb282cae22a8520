"""Everyday programs, traced, held to strace on the very same run: for every file under the
test's directory, the bytes of every data call (read, write, their vector and positional
forms, in-kernel copies) with both files where two are involved, must equal what
`strace -ff -yy` saw. The traced command is strace running the program, so both tools
watch one run. Pipelines, forks (tar runs gzip, git runs its helpers), positional I/O
(sqlite3) and threads are what the narrower tests of single calls do not cover."""

from __future__ import annotations

import bisect
import errno
import fcntl
import os
import re
import sys
from collections import Counter
from pathlib import Path

import pytest

from datacrumbs.probes.catalog import builtin_sets

from fixtures.strace_bytes import per_file, strace_bytes, strace_logs, trace_bytes, with_strace
from fixtures.tracing import trace_command
from workloads import daemon_readback as rb

pytestmark = pytest.mark.ebpf


def _tree(root: Path) -> Path:
    """Files of distinct, known sizes under repeated names in nested directories."""
    for i, d in enumerate(("a", "b", "a/sub", "b/sub/deep")):
        (root / d).mkdir(parents=True, exist_ok=True)
        for j, name in enumerate(("notes.txt", "data.bin", "README")):
            body = (f"{d}/{name} line {j}\n" * (300 * (i + 1) + 17 * j)).encode()
            (root / d / name).write_bytes(body)
    return root


def _compare(tmp_path: Path, command: list[str], under: Path, **run):
    """Trace ``command`` under strace; the per-(call, file, file) bytes of both, which must
    be equal and not empty (a test that compares nothing proves nothing)."""
    log = tmp_path / "strace.log"
    _, trace, summary = trace_command(tmp_path, with_strace(log, command), timeout=300, **run)
    got, want = trace_bytes(trace, under), strace_bytes(log, under)
    assert want, "strace saw no data call on the test's files: the workload did nothing"
    missing = {k: (got.get(k, 0), n) for k, n in want.items() if got.get(k, 0) != n}
    extra = {k: n for k, n in got.items() if k not in want}
    assert not missing and not extra, (
        f"trace vs strace (trace, strace) differ: {missing}; only in the trace: {extra}")
    return got, summary


def test_sort_into_gzip_pipeline(site, tmp_path):
    """`sort | gzip > f`: two processes and a pipe; only the files count here."""
    work = tmp_path / "w"
    work.mkdir()
    src = work / "words"
    src.write_text("".join(f"{(i * 7919) % 10007:05d} word\n" for i in range(40000)))
    got, _ = _compare(tmp_path, ["sh", "-c", f"sort {src} | gzip -c > {work}/sorted.gz"], work)
    reads, writes = per_file(got)
    assert reads[str(src)] == src.stat().st_size
    assert writes[str(work / "sorted.gz")] == (work / "sorted.gz").stat().st_size


def test_tar_create_and_extract_a_tree(site, tmp_path):
    """tar runs gzip as a child; files of the same name in different directories stay apart,
    and every extracted file is written with exactly its size."""
    work = tmp_path / "w"
    tree = _tree(work / "tree")
    out = work / "x"
    out.mkdir()
    got, _ = _compare(tmp_path, ["sh", "-c",
                                 f"tar czf {work}/t.tgz -C {work} tree && tar xzf {work}/t.tgz -C {out}"],
                      work)
    reads, writes = per_file(got)
    for f in tree.rglob("*"):
        if f.is_file():
            assert reads[str(f)] == f.stat().st_size, f
            copy = out / f.relative_to(work)
            assert writes[str(copy)] == f.stat().st_size, copy


def test_git_init_add_commit(site, tmp_path):
    """git writes loose objects, its index and refs through several processes."""
    work = tmp_path / "w"
    repo = _tree(work / "repo")
    env = dict(os.environ, HOME=str(tmp_path), GIT_CONFIG_NOSYSTEM="1",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@x", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@x")
    got, _ = _compare(tmp_path, ["sh", "-c",
                                 f"cd {repo} && git init -q && git add . && git commit -qm one"],
                      work, env=env)
    _, writes = per_file(got)
    assert any("/.git/objects/" in f for f in writes), "no git object written"
    assert writes[str(repo / ".git" / "index.lock")] > 0     # renamed to index after


def test_sqlite3_positional_io(site, tmp_path):
    """sqlite3 reads and writes its database and journal with pread64/pwrite64."""
    work = tmp_path / "w"
    work.mkdir()
    db = work / "t.db"
    sql = ("create table t(a integer, b text); begin;"
           + "".join(f"insert into t values({i}, '{'x' * (i % 50)}');" for i in range(2000))
           + "commit; select count(*), sum(a) from t;")
    got, _ = _compare(tmp_path, ["sqlite3", str(db), sql], work)
    names = {name for name, _, _ in got}
    assert "pwrite64" in names or "pread64" in names, names
    _, writes = per_file(got)
    assert writes[str(db)] >= db.stat().st_size // 2


def test_python_threads_write_one_file_each(site, tmp_path):
    """Eight threads of one process, each writing its own file with write and pwrite."""
    work = tmp_path / "w"
    work.mkdir()
    prog = (
        "import os, sys, threading\n"
        "def run(i):\n"
        "    fd = os.open(f'{sys.argv[1]}/t{i}', os.O_WRONLY | os.O_CREAT, 0o644)\n"
        "    for k in range(200):\n"
        "        os.write(fd, b'a' * (i + 1) * 100)\n"
        "        os.pwrite(fd, b'b' * 10, k * 10)\n"
        "    os.close(fd)\n"
        "ts = [threading.Thread(target=run, args=(i,)) for i in range(8)]\n"
        "[t.start() for t in ts]; [t.join() for t in ts]\n")
    got, _ = _compare(tmp_path, [sys.executable, "-c", prog, str(work)], work)
    for i in range(8):
        assert got[("write", str(work / f"t{i}"), None)] == 200 * (i + 1) * 100
        assert got[("pwrite64", str(work / f"t{i}"), None)] == 200 * 10


def _files(work: Path) -> None:
    """Inputs of the coreutils cases: random bytes, text, a sparse file, a small tree."""
    _tree(work / "tree")
    (work / "a").write_bytes(os.urandom(300_000))
    (work / "b").write_bytes(b"hello world\n" * 5000)
    with open(work / "sparse", "wb") as f:
        f.write(b"x" * 5000)
        f.seek(5_000_000)
        f.write(b"y" * 5000)
    (work / "sub").mkdir()


# (shell command run in the work directory, file whose final size its writes must add up to)
EVERYDAY = {
    "cp": ("cp a a.copy", "a.copy"),
    "cp -r": ("cp -r tree tree2", None),
    "cp of a sparse file": ("cp --reflink=never sparse sparse.copy", None),
    "cat with redirection": ("cat a b > c", "c"),
    "append": ("cat b >> b.app; cat b >> b.app", "b.app"),
    "dd skip, seek": ("dd if=a of=d.out bs=4k skip=2 seek=3 count=10 conv=notrunc status=none",
                      None),
    "dd O_DIRECT": ("dd if=a of=d.direct bs=64k count=4 iflag=direct oflag=direct status=none",
                    "d.direct"),
    "dd conv=fsync": ("dd if=b of=d.sync bs=1000 conv=fsync status=none", "d.sync"),
    "install": ("install -m 644 a sub/a.inst", "sub/a.inst"),
    "split": ("split -b 70000 a part_", None),
    "sed -i": ("sed -i s/hello/HELLO/ b", None),
    "xz": ("xz -k -T1 b && xz -dc b.xz > b.unxz", "b.unxz"),
    "zstd": ("zstd -q -k b -o b.zst && zstd -q -dc b.zst > b.unzst", "b.unzst"),
    "tee": ("cat a | tee t1 t2 > /dev/null", "t2"),
    "relative paths after cd": ("cd sub && cat ../b > rel && cd .. && cat sub/rel > rel2",
                                "rel2"),
    "sendfile": ("python3 -c \"import os; i = os.open('a', os.O_RDONLY); "
                 "o = os.open('sf', os.O_WRONLY | os.O_CREAT, 0o644); os.sendfile(o, i, None, 300000)\"",
                 "sf"),
    "openat with a directory fd": (
        "python3 -c \"import os; d = os.open('sub', os.O_RDONLY); "
        "f = os.open('x', os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=d); os.write(f, b'z' * 12345)\"",
        "sub/x"),
    "pwritev, preadv": (
        "python3 -c \"import os; f = os.open('pv', os.O_RDWR | os.O_CREAT, 0o644); "
        "os.pwritev(f, [b'a' * 100, b'b' * 200], 10); os.preadv(f, [bytearray(50), bytearray(70)], 0)\"",
        None),
    "dup2, dup": ("python3 -c \"import os; f = os.open('dupped', os.O_WRONLY | os.O_CREAT, 0o644); "
                  "os.dup2(f, 9); os.write(9, b'd' * 777); os.write(os.dup(f), b'e' * 333)\"",
                  "dupped"),
    "unlinked while open": ("python3 -c \"import os; f = open('gone', 'w+'); os.unlink('gone'); "
                            "f.write('s' * 4000); f.flush(); f.seek(0); f.read()\"", None),
}


@pytest.mark.parametrize("case", list(EVERYDAY))
def test_everyday_command(site, tmp_path, case):
    """Coreutils and small programs, each on its own: copies (copy_file_range, sendfile),
    the shell's redirections and appends, O_DIRECT, relative names after a cd, a directory
    fd, vector I/O, dup'd descriptors, a file unlinked while open."""
    command, output = EVERYDAY[case]
    work = tmp_path / "w"
    work.mkdir()
    _files(work)
    got, _ = _compare(tmp_path, ["bash", "-c", command], work, cwd=work)
    if output:
        _, writes = per_file(got)
        assert writes[str(work / output)] == (work / output).stat().st_size


def test_stdout_opened_before_the_trace(site, tmp_path):
    """The traced command's stdout is a file the caller opened before tracing began (an
    inherited descriptor, no open in the trace): its writes are named after that file."""
    work = tmp_path / "w"
    work.mkdir()
    _files(work)
    with open(work / "outer.txt", "w") as out:
        got, _ = _compare(tmp_path, ["bash", "-c", "echo hello; cat b"], work, cwd=work,
                          stdout=out)
    _, writes = per_file(got)
    assert writes[str(work / "outer.txt")] == (work / "outer.txt").stat().st_size == 60006


def test_a_file_renamed_while_open_is_named_anew(site, tmp_path):
    """A log rotated under a writer: two threads write the file, another process of the job
    renames it (mv), both write again. Writes after the rename are the new name's, as
    strace -yy sees them, also for the thread that named the file before."""
    work = tmp_path / "w"
    work.mkdir()
    prog = (
        "import os, subprocess, threading\n"
        "f = os.open('app.log', os.O_WRONLY | os.O_CREAT, 0o644)\n"
        "wrote, go, done = threading.Event(), threading.Event(), threading.Event()\n"
        "def other():\n"
        "    os.write(f, b'a' * 100)\n"
        "    wrote.set(); go.wait()\n"
        "    os.write(f, b'b' * 300)\n"
        "    done.set()\n"
        "t = threading.Thread(target=other); t.start()\n"
        "os.write(f, b'c' * 7000)\n"
        "wrote.wait()\n"
        "subprocess.run(['mv', 'app.log', 'app.log.1'], check=True)\n"
        "go.set(); done.wait()\n"
        "os.write(f, b'd' * 3000)\n"
        "t.join()\n")
    got, _ = _compare(tmp_path, [sys.executable, "-c", prog], work, cwd=work)
    _, writes = per_file(got)
    assert writes[str(work / "app.log")] == 7100
    assert writes[str(work / "app.log.1")] == 3300


def test_fclose_names_the_file_it_closed(site, tmp_path):
    """`sed -i` and `sort -o` open their files with fopen/fdopen and close them with fclose.
    glibc's fclose sets the stream's descriptor to -1 and frees the FILE before it returns,
    so a descriptor read at the return named no file: each fclose must name the file of the
    close(2) strace saw it make (same process, same descriptor), once per stream opened."""
    work = tmp_path / "w"
    work.mkdir()
    for name in ("one", "two"):
        (work / name).write_text("".join(f"{i % 97} hello {name}\n" for i in range(3000)))
    log = tmp_path / "strace.log"
    cmd = ["sh", "-c", "sed -i s/hello/HELLO/ one two && sort -o sorted one two"]
    strace = [a + ",close" if a.startswith("trace=") else a for a in with_strace(log, cmd)]
    _, trace, _ = trace_command(tmp_path, strace, sets=("posix", "stdio"), timeout=300, cwd=work)
    fh = {r["args"]["value"]: r["args"]["name"] for r in rb.records(trace) if r["name"] == "FH"}
    under = lambda f: f if f and f.startswith(f"{work}/") else None   # noqa: E731
    opened, closed = Counter(), Counter()
    fclose_fds = set()
    for e in rb.events(trace):
        a = e["args"]
        f = under(fh.get(a.get("fhash")))
        if e["name"] in ("fopen", "fdopen") and f:
            opened[f] += 1
        elif e["name"] == "fclose" and f:
            closed[f] += 1
            fclose_fds.add((e["pid"], a["fd"], f))
    # strace: close(fd</path>) per process (its -ff logs are named by pid)
    strace_closes = set()
    for one in strace_logs(log):
        for line in one.read_text().splitlines():
            m = re.match(r"close\((\d+)<([^>]*)>\)\s+=\s+0", line)
            if m and under(m.group(2)):
                strace_closes.add((int(one.name.rsplit(".", 1)[1]), int(m.group(1)), m.group(2)))
    temps = [f for f in opened if Path(f).name.startswith("sed")]
    assert len(temps) == 2, opened          # sed's two temporary outputs, renamed after
    assert {str(work / "one"), str(work / "two")} <= set(opened), opened
    # sort opens its -o file with open(2), moves it onto stdout and closes it as stdout
    opened[str(work / "sorted")] += 1
    assert closed == opened, f"fclose per file {dict(closed)}, streams opened {dict(opened)}"
    assert fclose_fds <= strace_closes, fclose_fds - strace_closes


CLOSE_INHERITED = """
import os, sys, time
n = int(sys.argv[2])
os.close(n)                                  # inherited from before the trace, never used
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.dup2(fd, n)                               # its number now names another file
os.write(n, b"n" * 1000)
time.sleep(0.5)                              # alive while the tracer names what it saw
os.close(n)
os.close(fd)
"""


def test_close_of_an_inherited_descriptor_names_its_file(site, tmp_path):
    """A descriptor opened before the trace and inherited (a job script's `exec 7>log`),
    closed without being used: nothing named it before the close, and after it /proc shows
    only what the number names later. Every close must name the file strace saw closed."""
    work = tmp_path / "w"
    work.mkdir()
    log = tmp_path / "strace.log"
    fd = os.open(work / "inherited", os.O_WRONLY | os.O_CREAT, 0o644)
    number = fcntl.fcntl(fd, fcntl.F_DUPFD, 50)      # a number this process does not use
    cmd = [sys.executable, "-c", CLOSE_INHERITED, str(work / "new"), str(number)]
    strace = [a + ",close" if a.startswith("trace=") else a for a in with_strace(log, cmd)]
    try:
        _, trace, _ = trace_command(tmp_path, strace, timeout=300, cwd=work,
                                    pass_fds=(number,))
    finally:
        os.close(number)
        os.close(fd)
    logs = {int(one.name.rsplit(".", 1)[1]): one for one in strace_logs(log)}
    want = Counter()
    for pid, one in logs.items():
        for line in one.read_text().splitlines():
            m = re.match(r"close\((\d+)<([^>]*)>\)\s+=\s+0", line)
            if m and m.group(2).startswith(f"{work}/"):
                want[(pid, int(m.group(1)), m.group(2))] += 1
    fh = {r["args"]["value"]: r["args"]["name"] for r in rb.records(trace) if r["name"] == "FH"}
    got = Counter((e["pid"], e["args"]["fd"], fh.get(e["args"].get("fhash")))
                  for e in rb.events(trace) if e["name"] == "close" and e["pid"] in logs
                  and (fh.get(e["args"].get("fhash")) or "").startswith(f"{work}/"))
    assert want[next(k for k in want if k[2] == str(work / "inherited"))] == 1, want
    assert got == want, f"trace {dict(got)}, strace {dict(want)}"


def test_unlocked_stdio_of_coreutils_is_counted(site, tmp_path):
    """Debian's sed, sort and grep write (and sort reads) through fwrite_unlocked and
    fread_unlocked (gnulib's unlocked-io), not fwrite/fread: with those in the stdio set, the
    bytes each wrote through stdio to a file are the bytes strace saw written to it."""
    work = tmp_path / "w"
    work.mkdir()
    (work / "in").write_text("".join(f"{(i * 7919) % 10007} hello\n" for i in range(5000)))
    log = tmp_path / "strace.log"
    cmd = ["sh", "-c", "sed -i s/hello/HELLO/ in && sort -o sorted in && grep HELLO in > found"]
    _, trace, _ = trace_command(tmp_path, with_strace(log, cmd), sets=("posix", "stdio"),
                                timeout=300, cwd=work)
    fh = {r["args"]["value"]: r["args"]["name"] for r in rb.records(trace) if r["name"] == "FH"}
    stdio_written, stdio_read = Counter(), Counter()
    for e in rb.events(trace):
        f = fh.get(e["args"].get("fhash"))
        if e["cat"] == "STDIO" and f and f.startswith(f"{work}/"):
            if e["name"].startswith("fwrite"):
                stdio_written[f] += e["args"].get("size", 0)
            elif e["name"].startswith("fread"):
                stdio_read[f] += e["args"].get("size", 0)
    reads, writes = per_file(strace_bytes(log, work))
    size = (work / "in").stat().st_size
    temps = [f for f in writes if Path(f).name.startswith("sed")]
    assert len(temps) == 1, writes
    for f in (temps[0], str(work / "sorted"), str(work / "found")):
        assert stdio_written[f] == writes[f] == size, (f, stdio_written[f], writes[f])
    # sort reads "in" through fread_unlocked; sed with getdelim (not traced), grep with read
    assert stdio_read[str(work / "in")] == size, stdio_read
    # a system call a stdio call made lies inside it on the timeline: it starts after the
    # stdio call started and ends before it returned (no child outlives its parent)
    by_tid = {}
    for e in rb.events(trace):
        by_tid.setdefault(e["tid"], []).append(e)
    inside = 0
    for events in by_tid.values():
        # one thread's system calls do not overlap: sorted by start, their ends are sorted too
        posix = sorted((e["ts"], e["ts"] + e["dur"], e["name"]) for e in events
                       if e["cat"] == "POSIX")
        ends = [p1 for _, p1, _ in posix]
        for s in (e for e in events if e["cat"] == "STDIO"):
            s0, s1 = s["ts"], s["ts"] + s["dur"]
            i = bisect.bisect_right(ends, s0)        # the first call ending after s0
            while i < len(posix) and posix[i][0] < s1:
                p0, p1, name = posix[i]
                assert s0 <= p0 and p1 <= s1, (s["name"], s0, s1, name, p0, p1)
                inside += 1
                i += 1
    assert inside >= 3, "no stdio call was seen making a system call"
    assert reads[str(work / "in")] == 3 * size, reads


_STRACE_CALL = re.compile(r"^(\w+)\((.*)\)\s+=\s+(0x[0-9a-f]+|-?\d+)(?: (E\w+))?")


def test_every_posix_call_and_error_matches_strace(site, tmp_path):
    """Not only bytes: for every call of the posix set, each process made as many in the
    trace as strace counted, in the same order with the same results, and failed with the
    same errno (a missing file, an existing directory, a bad descriptor)."""
    work = tmp_path / "w"
    _tree(work / "tree")
    (work / "words").write_text("".join(f"{(i * 31) % 1009} w\n" for i in range(5000)))
    calls = sorted({p["target"] for p in builtin_sets()["posix"].probes})
    log = tmp_path / "strace.log"
    cmd = ["sh", "-c", "cat missing 2>/dev/null; mkdir tree 2>/dev/null; cp -r tree tree2 && "
           "sed -i s/w/W/ words && sort words | gzip -c > w.gz && mv w.gz w2.gz && "
           "python3 -c 'import os\ntry: os.fstat(77)\nexcept OSError: pass' && rm -r tree2"]
    strace = ["strace", "-ff", "-qq", "-o", str(log), "-e", "trace=" + ",".join(calls), *cmd]
    _, trace, _ = trace_command(tmp_path, strace, timeout=300, cwd=work)
    want, errors_want = {}, Counter()
    for one in strace_logs(log):
        tid = int(one.name.rsplit(".", 1)[1])
        for line in one.read_text().splitlines():
            m = _STRACE_CALL.match(line)
            if m and m.group(1) in calls:  # not the unknown ones strace always shows (uretprobe)
                want.setdefault(tid, []).append((m.group(1), int(m.group(3), 0)))
                if m.group(4):
                    errors_want[(tid, m.group(1), getattr(errno, m.group(4)))] += 1
    got, errors_got = {}, Counter()
    for e in sorted(rb.events(trace), key=lambda e: e["ts"]):
        if e["tid"] in want and e["cat"] == "POSIX":
            got.setdefault(e["tid"], []).append((e["name"], e["args"]["ret"]))
            if "errno" in e["args"]:
                errors_got[(e["tid"], e["name"], e["args"]["errno"])] += 1
    assert len(want) >= 5, "strace saw fewer processes than the command runs"
    assert {name for seq in want.values() for name, _ in seq} >= {
        "openat", "read", "write", "close", "newfstatat", "renameat2", "unlinkat", "mkdir"}
    for tid, seq in want.items():
        assert got.get(tid) == seq, (tid, Counter(got.get(tid, [])) - Counter(seq),
                                     Counter(seq) - Counter(got.get(tid, [])))
    assert errors_got == errors_want, (errors_got, errors_want)
    assert {e for _, _, e in errors_want} >= {errno.ENOENT, errno.EEXIST, errno.EBADF}
