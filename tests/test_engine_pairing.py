"""Pairing of a system call's exit with its entry: a call refused by seccomp fires
sys_exit without sys_enter and must never meet a call already reported, and a thread
that blocks, is moved to another CPU while blocked, or shares its CPU with other traced
calls meanwhile must still get exactly its own calls. Any faster exit path (a per-CPU
copy of the call was tried: docs/benchmarks.md, "The two levers") must pass these.
Counts and durations are checked against bpftrace on the same run."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import numpy as np
import pytest

from datacrumbs.tracer.engine import Engine
from datacrumbs.tracer.scope import Scope

from fixtures.tracing import Bpftrace

pytestmark = pytest.mark.ebpf

WRITE = {"id": "posix.write", "kind": "syscall", "target": "write", "category": "POSIX",
         "args": {"fd": 0, "count": 2}, "bytes": "ret"}
READ = {"id": "posix.read", "kind": "syscall", "target": "read", "category": "POSIX",
        "args": {"fd": 0, "count": 2}, "bytes": "ret"}

# Writes to one descriptor pass, to its dup are refused by a seccomp filter (EPERM: the
# kernel fires sys_exit, never sys_enter). Every refused write follows a traced write of
# the same number just reported, half of them after moving to the other CPU.
SECCOMP_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <stddef.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

static void move_to(int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	sched_setaffinity(0, sizeof(set), &set);
}

int main(int argc, char **argv)
{
	int before = atoi(argv[1]), after = atoi(argv[2]), ncpu = atoi(argv[3]), i;
	int ok = open("/dev/null", O_WRONLY), blk = dup(ok);
	char c;

	if (ok < 0 || blk < 0 || read(0, &c, 1) != 1)	/* the tracer is attached */
		return 2;
	for (i = 0; i < before; i++)
		if (write(ok, "abc", 3) != 3 || write(blk, "defgh", 5) != 5)
			return 3;
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_write, 0, 3),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)blk, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { sizeof(f) / sizeof(f[0]), f };

	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog))
		return 4;
	for (i = 0; i < after; i++) {
		if (write(ok, "abc", 3) != 3)
			return 5;
		if (i % 2)
			move_to((i / 2) % ncpu);
		if (write(blk, "defgh", 5) != -1 || errno != EPERM)
			return 6;
	}
	return 0;
}
"""

# Reads one byte at a time from stdin (a pipe the test feeds slowly), acknowledging each
# on stdout: every read blocks, and the test moves it to the other CPU while it waits.
READER_C = r"""
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	int n = atoi(argv[1]), i;
	char c;

	for (i = 0; i <= n; i++)	/* the first read (before attach) and n more */
		if (read(0, &c, 1) != 1 || write(1, &c, 1) != 1)
			return 1;
	return 0;
}
"""

# Other traced calls on both CPUs while the reader waits (with a per-CPU copy of the
# pending call, they are what takes the reader's copy out of its CPU's slot).
BUSY_C = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	int fd = open("/dev/null", O_WRONLY);
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(atoi(argv[1]), &set);
	if (fd < 0 || sched_setaffinity(0, sizeof(set), &set))
		return 1;
	for (;;) {
		if (write(fd, "b", 1) != 1)
			return 2;
		usleep(500);
	}
}
"""


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    """The three C programs, compiled once."""
    cc = shutil.which("cc") or shutil.which("clang") or shutil.which("gcc")
    d = tmp_path_factory.mktemp("pairing")
    out = {}
    for name, text in (("seccomp", SECCOMP_C), ("reader", READER_C), ("busy", BUSY_C)):
        (d / f"{name}.c").write_text(text)
        subprocess.run([cc, "-O2", "-o", str(d / name), str(d / f"{name}.c")], check=True,
                       capture_output=True, timeout=120)
        out[name] = d / name
    return out


def _drain(eng, procs, timeout=60.0):
    parts = []
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in procs):
        assert time.monotonic() < deadline, "workload did not finish in time"
        if (batch := eng.poll(50)) is not None:
            parts.append(batch.events)
    for _ in range(3):
        if (batch := eng.poll(50)) is not None:
            parts.append(batch.events)
    return np.concatenate(parts) if parts else np.empty(0)


def _cpus() -> list[int]:
    cpus = sorted(os.sched_getaffinity(0))
    assert len(cpus) >= 2, "the pairing tests need two CPUs to move a thread between"
    return cpus


@pytest.mark.parametrize("mode", ["trace", "profile"])
def test_a_seccomp_refused_call_does_not_pair_with_a_consumed_one(bpf_object, tracefs,
                                                                  programs, mode):
    before, after = 20, 200
    cpus = _cpus()
    proc = subprocess.Popen([str(programs["seccomp"]), str(before), str(after), str(len(cpus))],
                            stdin=subprocess.PIPE)
    try:
        program = (f"tracepoint:raw_syscalls:sys_enter /pid == {proc.pid} && args->id == 1/ "
                   "{ @enter = count(); } "
                   f"tracepoint:raw_syscalls:sys_exit /pid == {proc.pid} && args->id == 1/ "
                   "{ @exit = count(); if (args->ret < 0) { @refused = count(); } "
                   "else { @bytes = sum(args->ret); } }")
        with Bpftrace(program) as bt, Engine([WRITE], Scope.for_pids([proc.pid]),
                                             bpf_object=bpf_object, mode=mode) as eng:
            eng.attach()
            proc.stdin.write(b"g")
            proc.stdin.flush()
            events = _drain(eng, [proc])
            assert proc.wait(timeout=30) == 0
            assert eng.lost() == 0
            rows = eng.read_profile() if mode == "profile" else []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    entered = 2 * before + after
    # the kernel: every write entered, and the refused ones exited without an entry
    assert bt.counts == {"enter": entered, "exit": entered + after, "refused": after,
                         "bytes": 8 * before + 3 * after}, bt.counts
    if mode == "profile":
        assert [(r.pid, r.count, r.bytes) for r in rows] == [
            (proc.pid, entered, 8 * before + 3 * after)]
        return
    assert len(events) == entered
    assert (events["ret"] >= 0).all(), "a refused write was paired with an earlier entry"
    assert events["ret"].tolist() == events["count"].tolist()
    assert int(events["bytes"].sum()) == 8 * before + 3 * after


def test_blocking_reads_moved_between_cpus_pair_exactly(bpf_object, tracefs, programs):
    n, pause = 40, 0.004
    cpus = _cpus()
    reader = subprocess.Popen([str(programs["reader"]), str(n)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE)
    busy = [subprocess.Popen([str(programs["busy"]), str(c)]) for c in cpus[:2]]
    procs = [reader, *busy]
    try:
        program = (f"tracepoint:raw_syscalls:sys_enter /pid == {reader.pid} && args->id == 0/ "
                   "{ @start[tid] = nsecs; } "
                   f"tracepoint:raw_syscalls:sys_exit /pid == {reader.pid} && args->id == 0 "
                   "&& @start[tid]/ { @reads = count(); @ns = sum(nsecs - @start[tid]); "
                   "delete(@start[tid]); }")
        with Bpftrace(program) as bt, Engine([READ, WRITE], Scope.for_pids([p.pid for p in procs]),
                                             bpf_object=bpf_object) as eng:
            eng.attach()
            reader.stdin.write(b"g")            # its read began before attach: not paired
            reader.stdin.flush()
            assert reader.stdout.read(1) == b"g"
            parts = []
            for i in range(n):
                deadline = time.monotonic() + 10
                while open(f"/proc/{reader.pid}/syscall").read().split()[0] != "0":
                    assert time.monotonic() < deadline, "the reader never blocked"
                    time.sleep(0.0005)
                # blocked in read: it wakes on the other CPU (odd i) or stays (even i);
                # meanwhile the busy writers make traced calls on both CPUs
                os.sched_setaffinity(reader.pid, {cpus[(i // 2) % 2]} if i % 2 else set(cpus))
                time.sleep(pause)
                reader.stdin.write(b"x")
                reader.stdin.flush()
                assert reader.stdout.read(1) == b"x"
                if (batch := eng.poll(0)) is not None:
                    parts.append(batch.events)
            reader.stdin.close()
            assert reader.wait(timeout=30) == 0
            for p in busy:
                p.kill()
                p.wait()
            for _ in range(3):
                if (batch := eng.poll(50)) is not None:
                    parts.append(batch.events)
            assert eng.lost() == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    events = np.concatenate(parts)
    reads = events[(events["pid"] == reader.pid) & (events["probe"] & 0x7fffff == 0)]
    acks = events[(events["pid"] == reader.pid) & (events["probe"] & 0x7fffff == 1)]
    assert bt.counts["reads"] == n, bt.counts
    assert len(reads) == n and reads["ret"].tolist() == [1] * n
    assert len(acks) == n + 1 and acks["ret"].tolist() == [1] * (n + 1)
    # each read waited for the test's pause; together they took what bpftrace measured
    assert (reads["dur_ns"] >= pause * 1e9).all()
    ours, theirs = int(reads["dur_ns"].sum()), bt.counts["ns"]
    assert abs(ours - theirs) <= n * 100_000, (ours, theirs)
    busy_events = events[np.isin(events["pid"], [p.pid for p in busy])]
    assert len(busy_events) > n and (busy_events["ret"] == 1).all()
