"""The eBPF engine against the real kernel: scopes, event contents, uprobes,
profile mode, refusals, a bpftrace cross-check and a loss-free burst."""

from __future__ import annotations

import logging
import mmap
import os
import re
import subprocess
import time

import numpy as np
import pytest

from datacrumbs.errors import DatacrumbsError
from datacrumbs.tracer.engine import EVENT_DTYPE, NO_KPROBES, Engine, EngineError, kernel_has_kprobes
from datacrumbs.tracer.scope import Scope, ScopeError
from datacrumbs.tracer.stage import STAGE_N

from fixtures.tracing import Bpftrace, collect, stdio_sizes, write_sizes

pytestmark = pytest.mark.ebpf

LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"
# a ring record: STAGE_N events (a per-CPU batch, stage.py) and its 8-byte header
RECORD = STAGE_N * EVENT_DTYPE.itemsize + 8
WRITE = {"id": "posix.write", "kind": "syscall", "target": "write", "category": "POSIX",
         "args": {"fd": 0, "count": 2}, "bytes": "ret"}
OPEN = {"id": "posix.open", "kind": "syscall", "target": "open", "category": "POSIX",
        "args": {"path": 0, "flags": 1}, "bytes": None}
OPENAT = {"id": "posix.openat", "kind": "syscall", "target": "openat", "category": "POSIX",
          "args": {"fd": 0, "path": 1, "flags": 2}, "bytes": None}
FWRITE = {"id": "stdio.fwrite", "kind": "uprobe", "target": "fwrite", "library": LIBC,
          "category": "STDIO", "args": {"size": 1, "nmemb": 2, "stream": 3}, "bytes": "ret*arg1"}
FREAD = {"id": "stdio.fread", "kind": "uprobe", "target": "fread", "library": "libc.so.6",
         "category": "STDIO", "args": {"size": 1, "nmemb": 2, "stream": 3}, "bytes": "ret*arg1"}
FOPEN = {"id": "stdio.fopen", "kind": "uprobe", "target": "fopen", "library": LIBC,
         "category": "STDIO", "args": {"path": 0}, "bytes": None}
KPROBE = {"id": "kernel.vfs_write", "kind": "kprobe", "target": "vfs_write", "category": "VFS",
          "args": {"count": 2}, "bytes": "ret"}
NOSYM = {"id": "x.missing", "kind": "uprobe", "target": "datacrumbs_no_such_function",
         "library": LIBC, "category": "X", "args": {}, "bytes": None}
NOLIB = {"id": "x.nolib", "kind": "uprobe", "target": "H5Fopen",
         "library": "/nonexistent/libhdf5.so.1", "category": "X", "args": {}, "bytes": None}
NOTP = {"id": "x.notp", "kind": "tracepoint", "target": "nosuch:event", "category": "X",
        "args": {}, "bytes": None}
POSIX = [WRITE, OPEN, OPENAT]


def _write_index(engine) -> int:
    return next(i for i, p in enumerate(engine.probes) if p["id"] == "posix.write")


def test_pid_scope_sees_exact_writes_and_nothing_else(bpf_object, tracefs, engine_io, workloads,
                                                      tmp_path, user2):
    n = 57
    target = tmp_path / "out.bin"
    child = workloads([engine_io, "write", target, n])
    outsider_root = workloads([engine_io, "write", tmp_path / "root.bin", n])
    outsider_user = workloads([engine_io, "write", "/dev/null", n], user=user2)
    with Engine(POSIX, Scope.for_pids([child.pid]), bpf_object=bpf_object) as eng:
        report = eng.attach()
        assert [p["id"] for p in report.attached] == ["posix.write", "posix.open", "posix.openat"]
        assert report.refused == []
        for w in (outsider_root, outsider_user, child):
            w.go()
        events, paths = collect(eng, [child, outsider_root, outsider_user])
        assert eng.lost() == 0
        names = eng.process_names()

    assert set(events["pid"].tolist()) == {child.pid}, "events of out-of-scope processes leaked"
    opens = [i for i, p in paths.items() if p == str(target)]
    assert len(opens) == 1, paths
    fd = int(events["ret"][opens[0]])
    assert fd >= 3
    assert eng.probes[events["probe"][opens[0]]]["id"] in ("posix.open", "posix.openat")
    writes = events[events["probe"] == _write_index(eng)]
    assert len(writes) == n
    assert writes["bytes"].tolist() == write_sizes(n)
    assert writes["count"].tolist() == write_sizes(n)
    assert writes["ret"].tolist() == write_sizes(n)
    assert set(writes["fd"].tolist()) == {fd}
    assert set(writes["offset"].tolist()) == {-1}
    assert (writes["tid"] == child.pid).all()
    # realtime microseconds line up with the wall clock, durations are sane
    now = time.time_ns()
    assert (now - 60e9 < writes["ts_ns"]).all() and (writes["ts_ns"] <= now).all()
    assert (np.diff(writes["ts_ns"].astype(np.int64)) > 0).all()
    assert (writes["dur_ns"] > 0).all() and (writes["dur_ns"] < 1e9).all()
    assert names[child.pid] == "engine_io"
    assert target.stat().st_size == sum(write_sizes(n))


def test_pid_scope_follows_forked_children(bpf_object, tracefs, engine_io, workloads, tmp_path):
    n = 23
    parent = workloads([engine_io, "fork", tmp_path / "child.bin", n])
    with Engine([WRITE], Scope.for_pids([parent.pid]), bpf_object=bpf_object) as eng:
        eng.attach()
        parent.go()
        events, _ = collect(eng, [parent])
    pids = set(events["pid"].tolist())
    assert len(pids) == 1 and parent.pid not in pids, "the write happen in the forked child"
    assert events["bytes"].tolist() == write_sizes(n)


def test_pid_scope_without_follow_ignores_children(bpf_object, tracefs, engine_io, workloads,
                                                   tmp_path):
    parent = workloads([engine_io, "fork", tmp_path / "child.bin", 5])
    with Engine([WRITE], Scope.for_pids([parent.pid], follow=False), bpf_object=bpf_object) as eng:
        eng.attach()
        parent.go()
        events, _ = collect(eng, [parent])
    assert len(events) == 0


def test_user_scope(bpf_object, tracefs, engine_io, workloads, tmp_path, user1):
    n = 31
    mine = workloads([engine_io, "write", "/dev/null", n], user=user1)
    roots = workloads([engine_io, "write", tmp_path / "root.bin", n])
    with Engine([WRITE], Scope.for_user(user1.pw_uid), bpf_object=bpf_object) as eng:
        eng.attach()
        mine.go()
        roots.go()
        events, _ = collect(eng, [mine, roots])
    assert roots.pid not in set(events["pid"].tolist())
    seen = events[events["pid"] == mine.pid]
    assert seen["bytes"].tolist() == write_sizes(n)


def test_cgroup_scope(bpf_object, tracefs, engine_io, workloads, tmp_path, cgroup):
    n = 19
    inside = workloads([engine_io, "write", tmp_path / "in.bin", n])
    outside = workloads([engine_io, "write", tmp_path / "out.bin", n])
    (cgroup / "cgroup.procs").write_text(str(inside.pid))
    with Engine([WRITE], Scope.for_cgroup(cgroup), bpf_object=bpf_object) as eng:
        eng.attach()
        inside.go()
        outside.go()
        events, _ = collect(eng, [inside, outside])
    assert set(events["pid"].tolist()) == {inside.pid}
    assert events["bytes"].tolist() == write_sizes(n)


def test_uprobes_stdio_bytes_and_stream_fd(bpf_object, tracefs, engine_io, workloads, tmp_path):
    n = 40
    target = tmp_path / "stdio.bin"
    child = workloads([engine_io, "stdio", target, n])
    with Engine([FOPEN, FWRITE, FREAD], Scope.for_pids([child.pid]), bpf_object=bpf_object) as eng:
        report = eng.attach()
        assert len(report.attached) == 3, report.refused
        child.go()
        events, paths = collect(eng, [child])
    opens = events[events["probe"] == 0]
    assert len(opens) == 1 and list(paths.values()) == [str(target)]
    assert opens["ret"][0] > 0, "fopen returns a FILE pointer"
    for probe in (1, 2):
        rows = events[events["probe"] == probe]
        assert len(rows) == n
        assert rows["ret"].tolist() == [1] * n          # nmemb = 1 each time
        assert rows["bytes"].tolist() == stdio_sizes(n)  # bytes = ret * size
        assert rows["count"].tolist() == stdio_sizes(n)  # size * nmemb requested
        assert len(set(rows["fd"].tolist())) == 1 and rows["fd"][0] >= 3


def test_profile_mode_matches_trace_mode(bpf_object, tracefs, engine_io, workloads, tmp_path):
    n = 300
    probes = [WRITE, FWRITE, FREAD]
    child = workloads([engine_io, "stdio", tmp_path / "t.bin", n])
    with Engine(probes, Scope.for_pids([child.pid]), bpf_object=bpf_object) as eng:
        eng.attach()
        child.go()
        events, _ = collect(eng, [child])
        assert eng.read_profile() == [], "trace mode keeps no profile"
    traced = {i: (int((events["probe"] == i).sum()), int(events["bytes"][events["probe"] == i].sum()))
              for i in range(len(probes))}

    child = workloads([engine_io, "stdio", tmp_path / "p.bin", n])
    with Engine(probes, Scope.for_pids([child.pid]), mode="profile", bpf_object=bpf_object) as eng:
        eng.attach()
        child.go()
        events, _ = collect(eng, [child])
        assert len(events) == 0, "profile mode sends no events"
        rows = eng.read_profile()
    profiled = {r.probe: (r.count, r.bytes) for r in rows}
    assert {r.pid for r in rows} == {child.pid}
    assert profiled == traced
    assert traced[1] == (n, sum(stdio_sizes(n)))
    for r in rows:
        assert sum(r.hist) == r.count and len(r.hist) == 32
        assert 0 < r.min_ns <= r.max_ns <= r.time_ns


def test_kprobe_and_missing_targets_are_refused_while_others_attach(bpf_object, tracefs):
    probes = [KPROBE, NOSYM, NOLIB, NOTP, WRITE]
    with Engine(probes, Scope.for_pids([os.getppid()]), bpf_object=bpf_object) as eng:
        report = eng.attach()
    assert [p["id"] for p in report.attached] == ["posix.write"]
    reasons = {p["id"]: r for p, r in report.refused}
    if not kernel_has_kprobes():
        assert reasons["kernel.vfs_write"] == NO_KPROBES == \
            "kernel has no kprobes (CONFIG_KPROBES not set)"
    assert reasons["x.missing"] == f"symbol datacrumbs_no_such_function not found in {LIBC}"
    assert reasons["x.nolib"] == "library /nonexistent/libhdf5.so.1 not found on this host"
    assert reasons["x.notp"] == "tracepoint nosuch:event does not exist on this kernel"


def test_generic_tracepoint_reads_a_field(bpf_object, tracefs, engine_io, workloads, tmp_path):
    n = 17
    probe = {"id": "tp.write", "kind": "tracepoint", "target": "syscalls:sys_enter_write",
             "category": "SYSCALL", "args": {}, "bytes": "field:count"}
    child = workloads([engine_io, "write", tmp_path / "tp.bin", n])
    with Engine([probe], Scope.for_pids([child.pid]), bpf_object=bpf_object) as eng:
        assert eng.attach().refused == []
        child.go()
        events, _ = collect(eng, [child])
    assert set(events["pid"].tolist()) == {child.pid}
    assert events["bytes"].tolist() == write_sizes(n)
    assert (events["dur_ns"] == 0).all() and (events["fd"] == -1).all()


def test_block_requests_are_attributed_to_the_issuing_process(bpf_object, tracefs, engine_io,
                                                             workloads, tmp_path):
    n = 20
    probes = [{"id": "block.block_rq_issue", "kind": "tracepoint", "target": "block:block_rq_issue",
               "category": "BLOCK", "args": {}, "bytes": "field:bytes"},
              {"id": "block.block_rq_complete", "kind": "tracepoint",
               "target": "block:block_rq_complete", "category": "BLOCK", "args": {},
               "bytes": "field:nr_bytes"}]
    child = workloads([engine_io, "direct", tmp_path / "direct.bin", n])   # O_DIRECT, ext4
    with Engine(probes, Scope.for_pids([child.pid]), bpf_object=bpf_object) as eng:
        assert eng.attach().refused == []
        child.go()
        events, _ = collect(eng, [child])
    assert set(events["pid"].tolist()) == {child.pid}
    issued, completed = events[events["probe"] == 0], events[events["probe"] == 1]
    assert (issued["bytes"] == 4096).sum() >= n
    assert (completed["bytes"] == 4096).sum() >= n
    assert len(completed) <= len(issued)
    assert (completed["dur_ns"] > 0).all() and (completed["offset"] % 512 == 0).all()
    assert (completed["ret"] == 0).all()


FORKS = "import os, sys\nsys.stdin.read(1)\nfor _ in range(5):\n    pid = os.fork()\n    if not pid:\n        os._exit(0)\n    os.waitpid(pid, 0)\n"


def test_raw_tracepoints_count_the_jobs_hits_and_detach_at_once(bpf_object, tracefs,
                                                                workloads):
    """Tracepoints without a field rule attach as raw tracepoints (kernel >= 6.10: with a
    cookie): each of the job's 5 forks is one task:task_newtask event of its own pid, and
    100 such tracepoints detach in well under the RCU wait per perf event (about 40 ms each
    here, 4 s for 100)."""
    import sys
    import time

    probes = [{"id": f"tp.t{i}", "kind": "tracepoint", "target": target, "category": "KERNEL",
               "args": {}, "bytes": None}
              for i, target in enumerate(["task:task_newtask"] + sorted(
                  f"writeback:{p.name}" for p in (tracefs / "events/writeback").iterdir()
                  if p.is_dir())[:99])]
    child = workloads([sys.executable, "-c", FORKS])
    with Engine(probes, Scope.for_pids([child.pid]), bpf_object=bpf_object) as eng:
        assert eng.attach().refused == []
        assert eng._loader.raw_tp, "this kernel (6.18) takes raw tracepoints with cookies"
        child.go()
        events, _ = collect(eng, [child])
        t0 = time.monotonic()
    took = time.monotonic() - t0
    forks = events[events["probe"] == 0]
    assert len(forks) == 5 and set(forks["pid"].tolist()) == {child.pid}
    assert took < 2.0, f"100 tracepoints took {took:.1f} s to detach"


def test_tracepoint_field_must_exist(bpf_object, tracefs):
    probe = {"id": "tp.bad", "kind": "tracepoint", "target": "syscalls:sys_enter_write",
             "category": "SYSCALL", "args": {}, "bytes": "field:no_such_field"}
    with pytest.raises(EngineError, match="tracepoint syscalls:sys_enter_write has no field "
                                          "no_such_field"):
        Engine([probe], Scope.for_pids([os.getpid()]), bpf_object=bpf_object).attach()


def test_libbpf_messages_go_to_the_logger_not_stderr(bpf_object, tracefs, caplog, capfd):
    caplog.set_level(logging.DEBUG, logger="datacrumbs.libbpf")
    # per-probe uprobes: libbpf itself looks the symbol up and explains the miss
    with Engine([NOSYM, WRITE], Scope.for_pids([os.getpid()]), bpf_object=bpf_object,
                uprobe_multi=False) as eng:
        eng.attach()
    assert capfd.readouterr().err == ""
    assert any("datacrumbs_no_such_function" in r.getMessage() for r in caplog.records
               if r.name == "datacrumbs.libbpf")


def test_kprobes_trace_vfs_write_where_the_kernel_has_them(bpf_object, tracefs, engine_io,
                                                           workloads, tmp_path):
    if not kernel_has_kprobes():
        pytest.skip("kernel lacks kprobes (CONFIG_KPROBES not set): this test runs on nodes "
                    "whose kernel has them")
    n = 13
    child = workloads([engine_io, "write", tmp_path / "k.bin", n])
    with Engine([KPROBE], Scope.for_pids([child.pid]), bpf_object=bpf_object) as eng:
        assert eng.attach().refused == []
        child.go()
        events, _ = collect(eng, [child])
    assert events["bytes"].tolist() == write_sizes(n)
    assert events["count"].tolist() == write_sizes(n)


def test_nothing_attachable_is_one_clear_error(bpf_object, tracefs):
    with pytest.raises(EngineError) as exc:
        Engine([KPROBE, NOSYM], Scope.for_pids([os.getpid()]), bpf_object=bpf_object).attach()
    msg = str(exc.value)
    assert msg.startswith("none of the 2 probes could be attached")
    assert "x.missing: symbol datacrumbs_no_such_function not found" in msg


def test_bad_probe_values_are_refused_not_crashing(bpf_object, tracefs):
    bad = [{"id": "b1", "kind": "syscall", "target": "no_such_syscall", "args": {}, "bytes": None},
           {"id": "b2", "kind": "syscall", "target": "read", "args": {"fd": 9}, "bytes": "ret"},
           {"id": "b3", "kind": "syscall", "target": "read", "args": {}, "bytes": "ret*x"},
           {"id": "b4", "kind": "fentry", "target": "x", "args": {}, "bytes": None},
           {"id": "b5", "kind": "uprobe", "target": "a;rm -rf /", "library": LIBC, "args": {}},
           {"id": "b6", "kind": "usdt", "target": "p:n", "library": LIBC, "args": {},
            "bytes": None},
           dict(WRITE), dict(WRITE, id="dup"),
           # equal to WRITE's fd role and bytes rule (True == 1 == 1.0) but not valid:
           # checked probes' shapes are reused only for values of the very same type
           dict(WRITE, id="b7", target="pwrite64", args=dict(WRITE["args"], fd=True)),
           dict(WRITE, id="b8", target="pwrite64", args=dict(WRITE["args"], fd=0.0)),
           dict(WRITE, id="b9", target="pwrite64", args=dict(WRITE["args"], fd=[0])),
           # a library that is no path: never looked up (a list is not even hashable)
           {"id": "b10", "kind": "uprobe", "target": "fwrite", "library": [LIBC], "args": {}},
           {"id": "b11", "kind": "uprobe", "target": "fwrite", "library": 7, "args": {}}]
    with Engine(bad, Scope.for_pids([os.getpid()]), bpf_object=bpf_object) as eng:
        report = eng.attach()
    reasons = {p["id"]: r for p, r in report.refused}
    assert [p["id"] for p in report.attached] == ["posix.write"]
    assert reasons["b1"] == "no system call named 'no_such_syscall' on this host"
    assert reasons["b2"] == "argument role 'fd' must be an argument index 0..5, not 9"
    assert reasons["b3"].startswith("bytes rule 'ret*x' is not one of")
    assert reasons["b4"] == ("unknown probe kind 'fentry'; known: syscall, uprobe, kprobe, "
                             "tracepoint, async, usdt")
    assert reasons["b6"] == f"{LIBC} has no USDT probe p:n"
    assert reasons["b5"] == "'a;rm -rf /' is not a function name"
    assert reasons["dup"] == "syscall write is already traced by another probe in this file"
    assert reasons["b7"] == "argument role 'fd' must be an argument index 0..5, not True"
    assert reasons["b8"] == "argument role 'fd' must be an argument index 0..5, not 0.0"
    assert reasons["b9"] == "argument role 'fd' must be an argument index 0..5, not [0]"
    assert reasons["b10"].startswith("library [") and reasons["b11"].startswith("library 7")


def test_missing_bpf_object_names_the_fix(tmp_path):
    missing = tmp_path / "none.bpf.o"
    with pytest.raises(EngineError) as exc:
        Engine([WRITE], Scope.for_pids([1]), bpf_object=missing)
    assert str(exc.value) == (f"BPF object {missing} not built: run `datacrumbs build-bpf` "
                              "(or the installer)")


def test_unusable_bpf_objects_are_explained(tmp_path, tracefs):
    junk = tmp_path / "junk.bpf.o"
    junk.write_bytes(b"not an ELF file")
    with pytest.raises(DatacrumbsError, match=f"^cannot open BPF object {junk}: .*; rebuild it "
                                              "with `datacrumbs build-bpf`$"):
        Engine([WRITE], Scope.for_pids([os.getpid()]), bpf_object=junk).attach()
    src = tmp_path / "other.bpf.c"
    src.write_text('#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\n'
                   'struct { __uint(type, BPF_MAP_TYPE_RINGBUF); __uint(max_entries, 4096); }'
                   ' events SEC(".maps");\nchar LICENSE[] SEC("license") = "GPL";\n')
    other = tmp_path / "other.bpf.o"
    subprocess.run(["clang", "-O2", "-g", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu", "-c",
                    str(src), "-o", str(other)],
                   check=True, capture_output=True, timeout=60)
    with pytest.raises(DatacrumbsError, match=f"^BPF object {other} has no map 'paths'; it was "
                                              "built from another datacrumbs version"):
        Engine([WRITE], Scope.for_pids([os.getpid()]), bpf_object=other).attach()


def test_engine_defaults_to_the_site_bpf_object(site, bpf_object, tracefs):
    eng = Engine([WRITE], Scope.for_pids([os.getpid()]))
    assert eng.bpf_object == site.bpf_object
    eng.close()


def test_close_is_idempotent_and_detaches(bpf_object, tracefs, engine_io, workloads, tmp_path):
    child = workloads([engine_io, "write", tmp_path / "x.bin", 3])
    eng = Engine([WRITE], Scope.for_pids([child.pid]), bpf_object=bpf_object)
    eng.attach()
    eng.close()
    eng.close()
    with pytest.raises(EngineError):
        eng.poll(0)
    child.go().wait()


def test_resolve_fd_reads_proc(tmp_path):
    path = tmp_path / "f.txt"
    with open(path, "w") as f:
        assert Engine.resolve_fd(os.getpid(), f.fileno()) == str(path)
    assert Engine.resolve_fd(os.getpid(), 987654) is None
    assert Engine.resolve_fd(-1, 0) is None
    assert Engine.resolve_fd(True, 0) is None


def test_scope_validation(tmp_path):
    with pytest.raises(ScopeError, match="not in the cgroup v2 hierarchy"):
        Scope.for_cgroup(tmp_path)
    with pytest.raises(ScopeError, match="must be an absolute path"):
        Scope.for_cgroup("relative/cg")
    with pytest.raises(ScopeError, match="must be an absolute path"):
        Scope.for_cgroup("/sys/fs/cgroup/unified/a\0b")
    with pytest.raises(ScopeError, match="not in the cgroup v2 hierarchy"):
        Scope.for_cgroup("/sys/fs/cgroup/unified/../../../etc")
    with pytest.raises(ScopeError, match="does not exist"):
        Scope.for_cgroup("/sys/fs/cgroup/unified/dctest-does-not-exist")
    with pytest.raises(ScopeError, match="not a valid user id"):
        Scope.for_user(-1)
    with pytest.raises(ScopeError, match="not a valid user id"):
        Scope.for_user("0")
    with pytest.raises(ScopeError, match="no process ids"):
        Scope.for_pids([])
    with pytest.raises(ScopeError, match="not a valid pid"):
        Scope.for_pids([0])


def test_bpftrace_sees_the_same_writes(bpf_object, tracefs, engine_io, workloads, tmp_path):
    n = 123
    child = workloads([engine_io, "write", tmp_path / "bt.bin", n])
    program = f"tracepoint:syscalls:sys_enter_write /pid == {child.pid}/ {{ @c = count(); }}"
    with Bpftrace(program) as bt:
        with Engine([WRITE], Scope.for_pids([child.pid]), bpf_object=bpf_object) as eng:
            eng.attach()
            child.go()
            events, _ = collect(eng, [child])
        out = bt.maps()
    m = re.search(r"@c: (\d+)", out)
    assert m, out
    assert int(m.group(1)) == len(events) == n


def test_burst_of_200k_events_without_loss(bpf_object, tracefs, engine_io, workloads):
    n = 200_000
    child = workloads([engine_io, "spin", n])
    with Engine([WRITE], Scope.for_pids([child.pid]), bpf_object=bpf_object) as eng:
        eng.attach()
        start = time.perf_counter()
        child.go()
        events, _ = collect(eng, [child], timeout=120)
        elapsed = time.perf_counter() - start
        assert eng.lost() == 0
    assert len(events) == n
    assert (events["bytes"] == 1).all()
    print(f"{n} events in {elapsed:.2f} s ({n / elapsed:,.0f} events/s)")


def test_draining_a_full_ring_delivers_every_event(bpf_object, tracefs, engine_io, workloads):
    """Fill the ring first, then drain it in polls (bench/bench_tracer.py times this)."""
    n = 150_000
    child = workloads([engine_io, "spin", n])
    with Engine([WRITE], Scope.for_pids([child.pid]), bpf_object=bpf_object,
                ringbuf_bytes=32 << 20) as eng:
        eng.attach()
        child.go().wait()
        got = 0
        while (batch := eng.poll(0)) is not None:
            assert (batch.events["bytes"] == 1).all()
            got += len(batch)
        assert eng.lost() == 0
    assert got == n


def test_quiet_events_arrive_within_the_poll_timeout(bpf_object, tracefs, engine_io, workloads,
                                                     tmp_path):
    """Wakeups are batched: a few events still come back by the end of poll's timeout."""
    child = workloads([engine_io, "write", tmp_path / "q.bin", 3])
    with Engine([WRITE], Scope.for_pids([child.pid]), bpf_object=bpf_object) as eng:
        eng.attach()
        child.go()
        start = time.monotonic()
        batch = eng.poll(400)
        waited = time.monotonic() - start
        got = len(batch) if batch else 0
        child.wait()
        while (batch := eng.poll(0)) is not None:
            got += len(batch)
    assert got == 3
    assert waited < 2.0


NS_SCRIPT = r"""
import json, os, subprocess, sys
from datacrumbs.tracer.engine import Engine, EngineError, pid_namespace
from datacrumbs.tracer.scope import Scope
obj, mine, other = sys.argv[1:4]
out = {"ns": pid_namespace() is not None, "pid": os.getpid()}
try:
    Engine([WRITE], Scope.for_pids([1]), bpf_object=obj).attach()
except EngineError as exc:
    out["pids_error"] = str(exc)
probes = [WRITE, OPENAT]
with Engine(probes, Scope.for_user(0), bpf_object=obj) as eng:
    eng.attach()
    with open(mine, "w") as f:
        f.write("self")
    subprocess.run(["sh", "-c", 'echo other > "$0"', other], check=True)
    seen = []
    for _ in range(20):
        batch = eng.poll(100)
        if batch is not None:
            seen += list(batch.paths.values())
        if other in seen:
            break
out["paths"] = [p for p in seen if p in (mine, other)]
print(json.dumps(out))
"""


def test_tracer_in_a_child_pid_namespace_excludes_itself(bpf_object, tracefs, tmp_path):
    import json
    import sys
    mine, other = tmp_path / "mine.txt", tmp_path / "other.txt"
    script = f"WRITE = {WRITE!r}\nOPENAT = {OPENAT!r}\n" + NS_SCRIPT
    proc = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c",
                           script, str(bpf_object), str(mine), str(other)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["ns"] is True and out["pid"] == 1
    assert out["pids_error"].startswith("a process-id scope needs datacrumbs in the host's pid "
                                        "namespace")
    assert out["paths"] == [str(other)], "the tracer's own open leaked or the other was missed"


def test_small_ring_wraps_and_accounts_for_every_event(bpf_object, tracefs, engine_io, workloads):
    """72-byte records in a 32 KiB ring straddle its end thousands of times; each event
    is either delivered intact, in order, or counted as lost."""
    n = 30_000
    child = workloads([engine_io, "spin", n])
    with Engine([WRITE], Scope.for_pids([child.pid]), bpf_object=bpf_object,
                ringbuf_bytes=32 << 10) as eng:
        eng.attach()
        child.go()
        events, _ = collect(eng, [child])
        lost = eng.lost()
    assert len(events) + lost == n
    assert len(events) > 2 * STAGE_N * ((32 << 10) // RECORD), "the ring wrapped"
    assert (events["bytes"] == 1).all() and (events["pid"] == child.pid).all()
    assert (np.diff(events["ts_ns"].astype(np.int64)) > 0).all()


def test_full_ring_counts_exactly_the_lost_events(bpf_object, tracefs, engine_io, workloads):
    """Nobody drains a one-page ring during the run: it keeps 4096 // RECORD records of
    STAGE_N events (1000 writes: 125 full batches, no partial one)."""
    n = 1000
    child = workloads([engine_io, "spin", n])
    with Engine([WRITE], Scope.for_pids([child.pid]), bpf_object=bpf_object,
                ringbuf_bytes=4096) as eng:
        eng.attach()
        child.go().wait()
        events, _ = collect(eng, [])
        assert eng.lost() == n - STAGE_N * (4096 // RECORD)
    assert len(events) == STAGE_N * (4096 // RECORD)
    assert eng.lost() == n - STAGE_N * (4096 // RECORD), "lost() still answers after close()"


def test_reused_path_slots_never_leak_older_paths(bpf_object, tracefs, workloads, tmp_path):
    """Variable-size path records (long and short, alternating) through a wrapped ring
    come back exactly: nothing truncated, nothing left over from older records."""
    import sys
    (tmp_path / ("D" * 200)).mkdir()
    long_path = tmp_path / ("D" * 200) / ("L" * 250)   # > 255 bytes whatever tmp_path is
    short_path = tmp_path / "s"
    long_path.write_text("l")
    short_path.write_text("s")
    n = 6000
    script = (f"import sys\nsys.stdin.read(1)\nfor i in range({n}):\n"
              f"    open({str(long_path)!r} if i % 2 == 0 else {str(short_path)!r}, 'rb').close()\n")
    child = workloads([sys.executable, "-c", script])
    with Engine([OPENAT], Scope.for_pids([child.pid]), bpf_object=bpf_object,
                ringbuf_bytes=1 << 20) as eng:
        eng.attach()
        child.go()
        events, paths = collect(eng, [child])
        lost_paths = eng.lost_paths()
    ours = [p for p in paths.values() if p in (str(long_path), str(short_path))]
    assert len(ours) + lost_paths == n
    assert len(str(long_path)) > 255, "paths longer than a file name come back whole"
    assert str(long_path) in ours and str(short_path) in ours
    assert sum((24 + len(p) + 1 + 8 + 7) & ~7 for p in ours) > 1 << 20, "the path ring wrapped"
    strays = {p for p in paths.values() if p.startswith(str(tmp_path))} - \
        {str(long_path), str(short_path)}
    assert strays == set()


def test_unsent_events_are_counted_per_process_and_a_full_table_is_counted_too(
        bpf_object, tracefs, engine_io, workloads, tmp_path):
    """Trace mode with a one-page ring that nobody drains: nearly every event is lost. The
    kernel counts each lost one in its (process, probe) row, so received + unsent is each
    process's exact count and bytes; with room for one row only, the other process's lost
    events are counted in totals_lost(), never dropped silently."""
    n = 3000
    kids = [workloads([engine_io, "write", tmp_path / f"w{k}.bin", n]) for k in range(2)]
    with Engine([WRITE], Scope.for_pids([w.pid for w in kids]), bpf_object=bpf_object,
                ringbuf_bytes=mmap.PAGESIZE, slots=1) as eng:
        eng.attach()
        for w in kids:
            w.go().wait()
        parts = []
        while (batch := eng.poll(0)) is not None:
            parts.append(batch.events)
        events = np.concatenate(parts) if parts else np.empty(0, EVENT_DTYPE)
        lost, totals_lost, rows = eng.lost(), eng.totals_lost(), eng.read_unsent()
    assert len(events) + lost == 2 * n and lost > n, (len(events), lost)
    (row,) = rows                                   # one row: the table has one slot
    assert row.probe == 0 and row.pid in {w.pid for w in kids}
    mine = events[events["pid"] == row.pid]
    assert len(mine) + row.count == n
    assert int(mine["bytes"].sum()) + row.bytes == sum(write_sizes(n))
    assert row.time_ns > 0
    assert totals_lost == lost - row.count > 0      # the other process's lost events
    assert eng.totals_lost() == totals_lost         # still answers after close


def test_slots_are_checked():
    with pytest.raises(EngineError, match="slots 0 must be an integer from 1 to 16384"):
        Engine([WRITE], Scope.for_pids([1]), slots=0)


def _map_flags(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        return next(int(line.split()[1], 16) for line in f if line.startswith("map_flags:"))


def test_rarely_written_hash_maps_are_not_preallocated(bpf_object, tracefs, monkeypatch, caplog):
    """The scope and slot hash maps are made without preallocation (BPF_F_NO_PREALLOC: the
    kernel does not fill their entries at creation). Where the kernel refuses the flag (made
    to here by asking it for an LRU map, which no kernel takes without preallocation) the
    object is loaded again with them preallocated, and the session attaches all the same."""
    from datacrumbs.tracer import objload

    with Engine([WRITE], Scope.for_pids([1]), bpf_object=bpf_object) as eng:
        eng.attach()
        flags = {name: _map_flags(eng._obj.map_fd(name)) for name in objload.LAZY_HASH_MAPS}
    assert flags and all(f & 1 for f in flags.values()), flags
    monkeypatch.setattr(objload, "LAZY_HASH_MAPS", ("comms",))
    caplog.set_level(logging.INFO, logger="datacrumbs.engine")
    with Engine([WRITE], Scope.for_pids([1]), bpf_object=bpf_object) as eng:
        report = eng.attach()
        assert len(report.attached) == 1 and not eng._loader.lazy_hash
        assert not _map_flags(eng._obj.map_fd("comms")) & 1
    assert "trying again with its hash maps preallocated" in caplog.text
