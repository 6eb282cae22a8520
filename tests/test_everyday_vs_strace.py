"""Everyday programs, traced, held to strace on the very same run: for every file under the
test's directory, the bytes of every data call (read, write, their vector and positional
forms, in-kernel copies) with both files where two are involved, must equal what
`strace -ff -yy` saw. The traced command is strace running the program, so both tools
watch one run. Pipelines, forks (tar runs gzip, git runs its helpers), positional I/O
(sqlite3) and threads are what the narrower tests of single calls do not cover."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from fixtures.strace_bytes import per_file, strace_bytes, trace_bytes, with_strace
from fixtures.tracing import trace_command

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
