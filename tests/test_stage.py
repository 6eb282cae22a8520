"""Trace mode sends events from a per-CPU batch of STAGE_N (stage.py): the tests of what
that must not change. A program of 1-3 calls leaves a partial batch at its exit (flushed
by the stop's last drain), a thread moved between CPUs leaves its older events in the old
CPU's batch (its events must still come out in its order), a batch the ring refuses is
counted event by event in the unsent rows."""

from __future__ import annotations

import mmap
import os
import sys
from collections import Counter

import numpy as np
import pytest

from fixtures.strace_bytes import strace_bytes, trace_bytes, with_strace
from fixtures.tracing import trace_command
from workloads import daemon_readback as rb

from datacrumbs.tracer.engine import EVENT_DTYPE, Engine
from datacrumbs.tracer.scope import Scope
from datacrumbs.tracer.stage import STAGE_N

pytestmark = pytest.mark.ebpf

PWRITE = {"id": "posix.pwrite64", "kind": "syscall", "target": "pwrite64", "category": "POSIX",
          "args": {"fd": 0, "count": 2, "offset": 3}, "bytes": "ret"}
WRITE = {"id": "posix.write", "kind": "syscall", "target": "write", "category": "POSIX",
         "args": {"fd": 0, "count": 2}, "bytes": "ret"}

SHORT = r"""
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv)
{
	int n = atoi(argv[2]);
	int fd = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
	for (int i = 0; i < n; i++)
		if (write(fd, "0123456789abcdef", 5 + i) != 5 + i)
			return 1;
	_exit(0);	/* no close, no stdio flush: the writes are the last traced calls */
}
"""


@pytest.fixture(scope="module")
def short_writer(tmp_path_factory):
    import shutil
    import subprocess
    d = tmp_path_factory.mktemp("short")
    d.chmod(0o755)
    (d / "short.c").write_text(SHORT)
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    subprocess.run([cc, "-O2", "-o", str(d / "short"), str(d / "short.c")], check=True,
                   capture_output=True, timeout=120)
    (d / "short").chmod(0o755)
    return d / "short"


@pytest.mark.parametrize("calls", [1, 2, 3])
def test_a_program_of_few_calls_is_traced_exactly_as_strace_saw_it(site, tmp_path, short_writer,
                                                                   calls):
    """1-3 writes and an _exit: the writes sit in a partial batch when the job ends; the
    stop's flush must bring each of them, with its bytes, as strace -f counts them."""
    work = tmp_path / "w"
    work.mkdir()
    out = work / "out.bin"
    log = tmp_path / "strace.log"
    command = with_strace(log, [str(short_writer), str(out), str(calls)])
    _, trace, summary = trace_command(tmp_path, command, timeout=300)
    got, want = trace_bytes(trace, work), strace_bytes(log, work)
    assert sum(want.values()) == sum(5 + i for i in range(calls)) == out.stat().st_size
    assert got == want
    fh = {r["args"]["value"]: r["args"]["name"] for r in rb.records(trace) if r["name"] == "FH"}
    writes = [e for e in rb.events(trace) if e["name"] == "write"
              and fh.get(e["args"].get("fhash")) == str(out)]
    assert [e["args"]["size"] for e in writes] == [5 + i for i in range(calls)]
    assert summary["events_lost"] == 0


def test_a_thread_moved_between_cpus_keeps_its_order(bpf_object, tracefs, workloads, tmp_path):
    """A thread moves itself to the other CPU every 3 writes (numbered 8-byte records at
    their own offsets) while the engine drains: each drain flushes both CPUs' batches, and
    the thread's 3000 events must come out in its order, none lost, none twice."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.fail("needs two CPUs to move a thread between")
    cpus = sorted(os.sched_getaffinity(0))[:2]
    n = 3000
    target = tmp_path / "numbered.bin"
    script = (
        "import os, sys, threading\n"
        "sys.stdin.read(1)\n"
        f"fd = os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)\n"
        "def writer():\n"
        f"    for i in range({n}):\n"
        "        if i % 3 == 0:\n"
        f"            os.sched_setaffinity(0, {{{cpus}[(i // 3) % 2]}})\n"
        "        os.pwrite(fd, b'%07d\\n' % i, 8 * i)\n"
        "t = threading.Thread(target=writer)\n"
        "t.start(); t.join()\n")
    child = workloads([sys.executable, "-c", script])
    parts = []
    with Engine([PWRITE], Scope.for_pids([child.pid]), bpf_object=bpf_object) as eng:
        eng.attach()
        child.go()
        while child.running():
            if (b := eng.poll(5)) is not None:
                parts.append(b.events)
        child.wait()
        while (b := eng.poll(0)) is not None:
            parts.append(b.events)
        assert eng.lost() == 0
    ev = np.concatenate(parts) if parts else np.empty(0, EVENT_DTYPE)
    ev = ev[ev["pid"] == child.pid]
    assert len(ev) == n
    assert (ev["offset"] == 8 * np.arange(n)).all(), "a thread's events out of its order"
    assert (ev["bytes"] == 8).all() and target.stat().st_size == 8 * n
    assert len(parts) > 3, "the run was drained more than once while it ran"


def test_a_refused_partial_batch_is_counted_event_by_event(bpf_object, tracefs, engine_io,
                                                           workloads, tmp_path):
    """A one-page ring nobody drains, 1003 writes (not a multiple of STAGE_N): the full
    batches the ring refused and the last partial one (refused at the flush) are each
    counted as lost and in the process's unsent row, so received + unsent is exact."""
    from fixtures.tracing import write_sizes
    n = 1003
    w = workloads([engine_io, "write", tmp_path / "w.bin", n])
    with Engine([WRITE], Scope.for_pids([w.pid]), bpf_object=bpf_object,
                ringbuf_bytes=mmap.PAGESIZE) as eng:
        eng.attach()
        w.go().wait()
        parts = []
        while (batch := eng.poll(0)) is not None:
            parts.append(batch.events)
        events = np.concatenate(parts) if parts else np.empty(0, EVENT_DTYPE)
        lost, rows = eng.lost(), eng.read_unsent()
    record = STAGE_N * EVENT_DTYPE.itemsize + 8
    assert len(events) == STAGE_N * (mmap.PAGESIZE // record)
    assert len(events) + lost == n
    (row,) = [r for r in rows if r.pid == w.pid]
    assert row.count == lost
    assert int(events["bytes"].sum()) + row.bytes == sum(write_sizes(n))
    sizes = Counter(events["bytes"].tolist())
    assert sizes == Counter(write_sizes(n)[:len(events)]), "the first batches, in order"


def test_a_flush_visits_only_cpus_with_staged_events(bpf_object, tracefs, engine_io,
                                                      workloads, tmp_path):
    """Each visit is an IPI to that CPU: drains with nothing staged visit none, and the
    partial batch a short run leaves is still flushed (its 3 events, exact)."""
    from fixtures.tracing import write_sizes
    w = workloads([engine_io, "write", tmp_path / "w.bin", 3])
    with Engine([WRITE], Scope.for_pids([w.pid]), bpf_object=bpf_object) as eng:
        eng.attach()
        stager = eng._stager
        for _ in range(5):
            assert eng.poll(0) is None
        assert stager.visits == 0, "a CPU with nothing staged was sent a flush"
        w.go().wait()
        batch = eng.poll(0)
        assert batch is not None and batch.events["bytes"].tolist() == write_sizes(3)
        assert 1 <= stager.visits <= len(stager.cpus)
        seen = stager.visits
        for _ in range(5):
            assert eng.poll(0) is None
        assert stager.visits == seen


def test_block_completions_in_interrupt_context_beside_the_flushes(site, tmp_path, bpf_object,
                                                                    tracefs):
    """Direct writes to a loop-mounted file system: each write's block request completes
    in interrupt context, on whatever CPU, while the same CPUs' system call programs stage
    events and the daemon flushes every CPU before each drain. Every write is there in
    order, and the block bytes the job's processes issued equal bpftrace's."""
    from fixtures.tracing import Bpftrace
    from test_kernel_layers import kernel_dev, loop_fs

    n = 1500
    with loop_fs(tmp_path, "ext4") as (mnt, st_dev):
        dev = kernel_dev(st_dev)
        program = (f"tracepoint:block:block_rq_issue /args->dev == {dev}/ "
                   f"{{ @b[pid] = sum(args->bytes); }}")
        target = mnt / "direct.bin"
        job = ["dd", "if=/dev/zero", f"of={target}", "bs=4k", f"count={n}", "oflag=direct"]
        with Bpftrace(program) as bt:
            _, trace, summary = trace_command(tmp_path, job, sets=("posix", "block"),
                                              options=("-q",), timeout=300)
        assert target.stat().st_size == 4096 * n
    devtext = f"{os.major(st_dev)}:{os.minor(st_dev)}"
    events = rb.events(trace)
    fh = {r["args"]["value"]: r["args"]["name"] for r in rb.records(trace) if r["name"] == "FH"}
    writes = [e for e in events if e["name"] == "write"
              and fh.get(e["args"].get("fhash")) == str(target)]
    assert len(writes) == n and all(e["args"]["size"] == 4096 for e in writes)
    ts = [e["ts"] for e in writes]
    assert ts == sorted(ts), "dd's writes out of its order"
    issued: dict = {}
    for e in events:
        if e["name"] == "block_rq_issue" and e["args"].get("dev") == devtext:
            issued[e["pid"]] = issued.get(e["pid"], 0) + e["args"]["size"]
    assert issued and issued == {p: bt.counts[f"b[{p}]"] for p in issued}, (issued, bt.counts)
    done = sum(e["args"]["count"] for e in events if e["name"] == "block_rq_complete"
               and e["args"].get("dev") == devtext and "async" not in e["args"])
    assert done >= 4096 * n
    assert summary["events_lost"] == 0
