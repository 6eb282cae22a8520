"""The engine's fast paths against the real kernel: uprobe_multi links (one pair per
library, the cookie names the probe) with their per-probe fallback, and per-task entry
state in task storage (nesting, threads that end mid-syscall)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest

from datacrumbs.tracer.engine import UPROBE_MULTI_ENV, Engine
from datacrumbs.tracer.scope import Scope

from fixtures.tracing import MOVER, run_before_move, collect, held_bpf_ids, stdio_sizes, write_sizes

pytestmark = pytest.mark.ebpf

LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"


def _uprobe(name: str, args: dict, bytes_rule, library: str = LIBC) -> dict:
    return {"id": f"stdio.{name}", "kind": "uprobe", "target": name, "library": library,
            "category": "STDIO", "args": args, "bytes": bytes_rule}


FOPEN = _uprobe("fopen", {"path": 0}, None)
FWRITE = _uprobe("fwrite", {"size": 1, "nmemb": 2, "stream": 3}, "ret*arg1")
FREAD = _uprobe("fread", {"size": 1, "nmemb": 2, "stream": 3}, "ret*arg1")
FCLOSE = _uprobe("fclose", {"stream": 0}, None)
MISSING = _uprobe("datacrumbs_no_such_function", {}, None)
# a missing symbol between the others: cookies must follow the document's indexes
STDIO = [FOPEN, MISSING, FWRITE, FREAD, FCLOSE]
WRITE_SYSCALL = {"id": "posix.write", "kind": "syscall", "target": "write", "category": "POSIX",
                 "args": {"fd": 0, "count": 2}, "bytes": "ret"}
READ_SYSCALL = {"id": "posix.read", "kind": "syscall", "target": "read", "category": "POSIX",
                "args": {"fd": 0, "count": 2}, "bytes": "ret"}
EXIT_SYSCALL = {"id": "posix.exit", "kind": "syscall", "target": "exit", "category": "POSIX",
                "args": {}, "bytes": None}
WRITE_UPROBE = {"id": "libc.write", "kind": "uprobe", "target": "write", "library": LIBC,
                "category": "LIBC", "args": {"fd": 0, "count": 2}, "bytes": "ret"}


def _uprobe_multi_links() -> list[tuple[str, str, list[int]]]:
    """(link type, path, cookies) of this process's uprobe_multi links, from fdinfo."""
    links = []
    for fd in os.listdir("/proc/self/fdinfo"):
        try:
            with open(f"/proc/self/fdinfo/{fd}") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        info = dict(line.split(":\t", 1) for line in lines if ":\t" in line)
        if info.get("link_type") in ("uprobe_multi", "uretprobe_multi"):
            rows = lines[lines.index(next(x for x in lines if x.startswith("cookie"))) + 1:]
            links.append((info["link_type"], info["path"],
                          sorted(int(r.split()[0]) for r in rows if r.strip())))
    return sorted(links)


def _trace_stdio(bpf_object, engine_io, workloads, tmp_path, n, **kwargs):
    target = tmp_path / "stdio.bin"
    child = workloads([engine_io, "stdio", target, n])
    with Engine(STDIO, Scope.for_pids([child.pid]), bpf_object=bpf_object, **kwargs) as eng:
        report = eng.attach()
        links = _uprobe_multi_links()
        child.go()
        events, paths = collect(eng, [child])
    return report, links, events, paths, target


def _check_stdio_events(events, paths, target, n):
    assert sorted(set(events["probe"].tolist())) == [0, 2, 3, 4]
    opens = events[events["probe"] == 0]
    assert len(opens) == 1 and list(paths.values()) == [str(target)]
    for probe in (2, 3):                            # fwrite, fread
        rows = events[events["probe"] == probe]
        assert len(rows) == n
        assert rows["bytes"].tolist() == stdio_sizes(n)
        assert rows["count"].tolist() == stdio_sizes(n)
        assert len(set(rows["fd"].tolist())) == 1 and rows["fd"][0] >= 3
    closes = events[events["probe"] == 4]
    assert len(closes) == 1 and closes["ret"][0] == 0


def test_uprobe_multi_links_carry_each_probe_index_as_cookie(bpf_object, tracefs, engine_io,
                                                             workloads, tmp_path):
    n = 25
    report, links, events, paths, target = _trace_stdio(bpf_object, engine_io, workloads,
                                                        tmp_path, n)
    assert report.uprobe_links == {LIBC: "uprobe_multi"}
    # one entry and one return link for the whole library, a cookie per attached probe
    assert links == [("uprobe_multi", LIBC, [0, 2, 3, 4]),
                     ("uretprobe_multi", LIBC, [0, 2, 3, 4])]
    assert [p["id"] for p in report.attached] == ["stdio.fopen", "stdio.fwrite", "stdio.fread",
                                                  "stdio.fclose"]
    assert [(p["id"], r) for p, r in report.refused] == [
        ("stdio.datacrumbs_no_such_function",
         f"symbol datacrumbs_no_such_function not found in {LIBC}")]
    _check_stdio_events(events, paths, target, n)
    assert _uprobe_multi_links() == [], "closing the engine removed both links"


def test_per_probe_fallback_when_forced_gives_the_same_events(bpf_object, tracefs, engine_io,
                                                              workloads, tmp_path):
    n = 25
    report, links, events, paths, target = _trace_stdio(bpf_object, engine_io, workloads,
                                                        tmp_path, n, uprobe_multi=False)
    assert report.uprobe_links == {LIBC: "per-probe: uprobe_multi links turned off"}
    assert links == []
    assert [p["id"] for p in report.attached] == ["stdio.fopen", "stdio.fwrite", "stdio.fread",
                                                  "stdio.fclose"]
    assert [r for _p, r in report.refused] == [
        f"symbol datacrumbs_no_such_function not found in {LIBC}"]
    _check_stdio_events(events, paths, target, n)


def test_environment_forces_the_per_probe_path(bpf_object, tracefs, monkeypatch):
    monkeypatch.setenv(UPROBE_MULTI_ENV, "0")
    with Engine([FWRITE], Scope.for_pids([1]), bpf_object=bpf_object) as eng:
        report = eng.attach()
    assert report.uprobe_links == {LIBC: "per-probe: uprobe_multi links turned off"}
    monkeypatch.setenv(UPROBE_MULTI_ENV, "1")
    with Engine([FWRITE], Scope.for_pids([1]), bpf_object=bpf_object) as eng:
        assert eng.attach().uprobe_links == {LIBC: "uprobe_multi"}


def test_a_library_with_no_wanted_symbol_is_refused_probe_by_probe(bpf_object, tracefs):
    with Engine([MISSING, WRITE_SYSCALL], Scope.for_pids([1]), bpf_object=bpf_object) as eng:
        report = eng.attach()
    assert [p["id"] for p in report.attached] == ["posix.write"]
    assert [r for _p, r in report.refused] == [
        f"symbol datacrumbs_no_such_function not found in {LIBC}"]
    assert report.uprobe_links == {}


@pytest.mark.parametrize("multi", [True, False])
def test_nested_uprobe_and_syscall_pair_up(bpf_object, tracefs, engine_io, workloads, tmp_path,
                                           multi):
    """libc write() (uprobe) wraps the write system call: both are reported, and each
    syscall lies inside its wrapper's call."""
    n = 40
    child = workloads([engine_io, "write", tmp_path / "nested.bin", n])
    with Engine([WRITE_UPROBE, WRITE_SYSCALL], Scope.for_pids([child.pid]),
                bpf_object=bpf_object, uprobe_multi=multi) as eng:
        assert eng.attach().refused == []
        child.go()
        events, _ = collect(eng, [child])
        assert eng.lost() == 0
    outer, inner = events[events["probe"] == 0], events[events["probe"] == 1]
    assert len(outer) == len(inner) == n
    for rows in (outer, inner):
        assert rows["bytes"].tolist() == write_sizes(n)
        assert rows["count"].tolist() == write_sizes(n)
    assert (outer["ts_ns"] <= inner["ts_ns"]).all()
    assert (inner["ts_ns"] + inner["dur_ns"] <= outer["ts_ns"] + outer["dur_ns"]).all()


THREADS_C = r"""
/* A thread blocks in read(2), then ends with a raw exit(2) that never returns. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

static int pfd[2];

static void *worker(void *arg)
{
	char c;

	printf("%ld\n", (long)syscall(SYS_gettid));
	fflush(stdout);
	if (read(pfd[0], &c, 1) != 1)
		return NULL;
	syscall(SYS_exit, 0);		/* mid-syscall for good: no sys_exit ever */
	return NULL;
}

int main(void)
{
	pthread_t t;
	char c;

	if (pipe(pfd) || pthread_create(&t, NULL, worker, NULL))
		return 1;
	if (read(0, &c, 1) != 1)	/* the tracer is attached */
		return 2;
	printf("armed\n");
	fflush(stdout);
	if (read(0, &c, 1) != 1 || write(pfd[1], "x", 1) != 1)
		return 3;
	pthread_join(t, NULL);
	printf("joined\n");
	fflush(stdout);
	return read(0, &c, 1) < 0;
}
"""


def _wait_in_syscall(pid: int, tid: int, nr: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/task/{tid}/syscall") as f:
                if f.read().split()[0] == str(nr):
                    return
        except OSError:
            pass
        time.sleep(0.01)
    raise AssertionError(f"thread {tid} never blocked in syscall {nr}")


def test_entry_state_lives_and_dies_with_the_thread(bpf_object, tracefs, tmp_path):
    src = tmp_path / "threads.c"
    src.write_text(THREADS_C)
    exe = tmp_path / "threads"
    cc = shutil.which("cc") or shutil.which("clang") or shutil.which("gcc")
    subprocess.run([cc, "-O2", "-pthread", "-o", str(exe), str(src)], check=True,
                   capture_output=True, timeout=120)
    proc = subprocess.Popen([str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    events = []
    try:
        tid = int(proc.stdout.readline())
        with Engine([READ_SYSCALL, EXIT_SYSCALL], Scope.for_pids([proc.pid]),
                    bpf_object=bpf_object) as eng:
            eng.attach()
            _wait_in_syscall(proc.pid, tid, 0)
            assert eng.pending_syscall(tid) is None, "its read began before attach"
            proc.stdin.write(b"a")
            proc.stdin.flush()
            assert proc.stdout.readline() == b"armed\n"
            _wait_in_syscall(proc.pid, proc.pid, 0)
            pending = eng.pending_syscall(proc.pid)
            assert pending is not None, "main's second read began after attach"
            assert pending[0] == 0 and 0 < pending[1] <= time.clock_gettime_ns(
                time.CLOCK_MONOTONIC)
            proc.stdin.write(b"g")
            proc.stdin.flush()
            assert proc.stdout.readline() == b"joined\n"
            # the worker died inside exit(2): nothing of it is left to find. pthread_join
            # returns when the kernel clears the thread's tid, a moment before the task and
            # its storage are freed (one CI run under load still saw it): up to 2 s
            deadline = time.monotonic() + 2
            while eng.pending_syscall(tid) is not None and time.monotonic() < deadline:
                time.sleep(0.01)
            assert eng.pending_syscall(tid) is None
            proc.stdin.close()
            assert proc.wait(timeout=30) == 0
            for _ in range(3):
                if (batch := eng.poll(100)) is not None:
                    events.extend(batch.events.tolist())
            assert eng.lost() == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    probes = [ev[4] for ev in events]
    assert 1 not in probes, "exit(2) never returns: no event for it"
    # main's read of "g", then its read of EOF; the reads begun before attach are not paired
    assert [(ev[2], ev[3], ev[6]) for ev in events] == [(proc.pid, proc.pid, 1),
                                                        (proc.pid, proc.pid, 0)]



def test_moving_into_the_cgroup_renews_the_cached_scope_decision(bpf_object, tracefs, cgroup,
                                                                 workloads, tmp_path):
    import sys
    n = 11
    flag = tmp_path / "written-before"
    child = workloads([sys.executable, "-c", MOVER, n, flag])
    with Engine([WRITE_SYSCALL], Scope.for_cgroup(cgroup), bpf_object=bpf_object) as eng:
        eng.attach()
        run_before_move(child, flag)
        (cgroup / "cgroup.procs").write_text(str(child.pid))
        child.go()
        events, _ = collect(eng, [child])
    assert set(events["pid"].tolist()) == {child.pid}
    assert events["count"].tolist() == [5] * n
    assert events["bytes"].tolist() == [5] * n


SETUID = r"""
import os, sys
fd = os.open("/dev/null", os.O_WRONLY)
sys.stdin.buffer.read(1)
for _ in range(5):
    os.write(fd, b"root")            # another uid: decided "not in scope"
uid = int(sys.argv[2])
os.setresgid(uid, uid, uid)
os.setresuid(uid, uid, uid)           # no exec: the cached decision must follow the uid
for _ in range(int(sys.argv[1])):
    os.write(fd, b"user1")
"""


def test_a_uid_change_without_exec_renews_the_cached_scope_decision(bpf_object, tracefs,
                                                                    workloads, user1):
    import sys
    n = 9
    child = workloads([sys.executable, "-c", SETUID, n, user1.pw_uid])
    with Engine([WRITE_SYSCALL], Scope.for_user(user1.pw_uid), bpf_object=bpf_object) as eng:
        eng.attach()
        child.go()
        events, _ = collect(eng, [child])
    mine = events[events["pid"] == child.pid]
    assert mine["count"].tolist() == [5] * n


def test_versioned_names_go_one_by_one_beside_the_multi_links(bpf_object, tracefs, engine_io,
                                                              workloads, tmp_path):
    """libbpf resolves fwrite@GLIBC_2.2.5 itself; the other probes keep their multi links."""
    n = 12
    versioned = dict(FWRITE, id="stdio.fwrite_v", target="fwrite@GLIBC_2.2.5")
    child = workloads([engine_io, "stdio", tmp_path / "v.bin", n])
    with Engine([versioned, FREAD], Scope.for_pids([child.pid]), bpf_object=bpf_object) as eng:
        report = eng.attach()
        links = _uprobe_multi_links()
        child.go()
        events, _ = collect(eng, [child])
    if report.refused:      # libbpf 1.1 does not know symbol versions: then it says so
        assert [(p["id"], r) for p, r in report.refused] == [
            ("stdio.fwrite_v", f"symbol fwrite@GLIBC_2.2.5 not found in {LIBC}")]
    else:
        assert events[events["probe"] == 0]["bytes"].tolist() == stdio_sizes(n)
    assert report.uprobe_links == {
        LIBC: "uprobe_multi, and per-probe for 1: versioned or ambiguous symbol names"}
    assert links == [("uprobe_multi", LIBC, [1]), ("uretprobe_multi", LIBC, [1])]
    assert events[events["probe"] == 1]["bytes"].tolist() == stdio_sizes(n)


ALTERNATE = r"""
import os, sys
out, src = os.open("/dev/null", os.O_WRONLY), os.open("/dev/zero", os.O_RDONLY)
sys.stdin.buffer.read(1)
for i in range(int(sys.argv[1])):
    os.write(out, b"w" * 3)
    os.read(src, 5)
"""


def test_profile_rows_of_probes_sharing_a_cache_way_stay_apart(bpf_object, tracefs, workloads):
    """write is probe 0 and read probe 4: the same way of the per-task slot cache,
    alternating every call. Two processes, so two rows per probe."""
    import sys
    n = 500
    filler = [dict(WRITE_SYSCALL, id=f"posix.{name}", target=name, bytes=None, args={})
              for name in ("fsync", "fdatasync", "ftruncate")]
    probes = [WRITE_SYSCALL, *filler, READ_SYSCALL]
    kids = [workloads([sys.executable, "-c", ALTERNATE, n + k]) for k in (0, 7)]
    with Engine(probes, Scope.for_pids([k.pid for k in kids]), mode="profile",
                bpf_object=bpf_object) as eng:
        assert eng.attach().refused == []
        for kid in kids:
            kid.go()
        collect(eng, kids)
        rows = eng.read_profile()
        assert eng.lost() == 0
    got = {(r.pid, r.probe): (r.count, r.bytes) for r in rows}
    assert got == {(kids[0].pid, 0): (n, 3 * n), (kids[0].pid, 4): (n, 5 * n),
                   (kids[1].pid, 0): (n + 7, 3 * (n + 7)), (kids[1].pid, 4): (n + 7, 5 * (n + 7))}


def _own_programs() -> set[str]:
    """Names of the BPF programs this process holds (its fds), from the kernel."""
    ids = held_bpf_ids()["prog_id"]
    names = set()
    for prog_id in ids:
        out = subprocess.run(["bpftool", "prog", "show", "id", str(prog_id), "-j"],
                             capture_output=True, text=True, check=True).stdout
        names.add(json.loads(out)["name"])
    return names


RAW_TP = {"id": "sched.wakeup", "kind": "tracepoint", "target": "sched:sched_wakeup",
          "category": "SCHED", "args": {}, "bytes": None}


def test_only_the_programs_that_attach_are_loaded(bpf_object, tracefs):
    """Each program loaded is verified by the kernel as the tracer starts: uprobes on
    uprobe_multi links and a raw tracepoint need neither the per-probe uprobe pair nor
    the perf-event tracepoint program nor the block programs."""
    with Engine([FWRITE, RAW_TP], Scope.for_pids([1]), bpf_object=bpf_object) as eng:
        report = eng.attach()
        assert report.uprobe_links == {LIBC: "uprobe_multi"} and not report.refused
        progs = _own_programs()
    assert {"dc_uprobe_multi", "dc_uretprobe_multi", "dc_raw_tracepoint", "dc_fork",
            "dc_exec", "dc_exit"} <= progs
    assert not progs & {"dc_uprobe", "dc_uretprobe", "dc_tracepoint", "dc_block_issue",
                        "dc_block_complete", "dc_sys_enter", "dc_sys_exit"}, progs


def test_per_probe_fallback_loads_its_programs_on_first_use(bpf_object, tracefs, engine_io,
                                                            workloads, tmp_path, monkeypatch):
    """When the kernel refuses a uprobe_multi link (refusal injected here: this kernel
    takes them), the per-probe pair is loaded then, in a second object sharing the first
    one's maps: the events still come through the first object's ring buffer."""
    from datacrumbs.tracer import libbpf

    def refuse(*_args, **_kw):
        raise libbpf.AttachFailed("Operation not supported (injected)", 95)

    monkeypatch.setattr(libbpf, "uprobe_multi_link", refuse)
    n = 25
    target = tmp_path / "stdio.bin"
    child = workloads([engine_io, "stdio", target, n])
    with Engine(STDIO, Scope.for_pids([child.pid]), bpf_object=bpf_object) as eng:
        report = eng.attach()
        progs = _own_programs()
        child.go()
        events, paths = collect(eng, [child])
    assert report.uprobe_links == {
        LIBC: "per-probe: the kernel refused a uprobe_multi link (Operation not supported "
              "(injected))"}
    assert {"dc_uprobe", "dc_uretprobe", "dc_uprobe_multi", "dc_uretprobe_multi"} <= progs
    _check_stdio_events(events, paths, target, n)
