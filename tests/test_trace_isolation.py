"""The tracer's own activity is never the job's: `datacrumbs trace` starts the command
through a forked helper that joins the trace only when it execs the command.

strace is the independent witness: what the trace holds for a command must be a
subset of what ``strace -f`` shows that command doing after its execve.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from datacrumbs.tracer.engine import Engine
from datacrumbs.tracer.scope import Scope
from fixtures.tracing import collect
from workloads import daemon_readback as rb

pytestmark = pytest.mark.ebpf
DATACRUMBS = str(Path(sys.executable).with_name("datacrumbs"))
WRITE = {"id": "posix.write", "kind": "syscall", "target": "write", "category": "POSIX",
         "args": {"fd": 0, "count": 2}, "bytes": "ret"}
# A helper that writes 5 times and then execs echo, which writes once: what the
# engine sees of it depends only on when it joins the scope.
HELPER = ("import os, sys\n"
          "sys.stdin.buffer.read(1)\n"
          "fd = os.open('/dev/null', os.O_WRONLY)\n"
          "for _ in range(5):\n"
          "    os.write(fd, b'helper')\n"
          "os.execv('/bin/echo', ['echo', 'hi'])\n")


def _trace(tmp_path: Path, *argv: str) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run([DATACRUMBS, "trace", "--set", "posix", "--set", "stdio", "-o",
                           str(out), "--", *argv], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    return proc, out


def _trace_events(out: Path) -> tuple[int, list[dict], dict]:
    traces = list(out.glob("*.pfw.gz"))
    assert len(traces) == 1, traces
    summary = json.loads(Path(str(traces[0])[:-len(".pfw.gz")] + ".summary.json").read_text())
    return int(traces[0].name.split("-")[2]), rb.events(traces[0]), summary


def _strace_after_execve(tmp_path: Path, *argv: str) -> Counter:
    """System calls strace -f sees the command make after its (successful) execve."""
    log = tmp_path / "strace.log"
    subprocess.run([shutil.which("strace"), "-f", "-qq", "-o", str(log), *argv], check=True,
                   capture_output=True, timeout=120)
    calls = [m.group(1) for line in log.read_text().splitlines()
             if (m := re.match(r"^\d+\s+([a-z0-9_]+)\(", line))]
    assert calls[0] == "execve", calls[:3]
    return Counter(calls[1:])


def test_true_is_traced_as_strace_sees_it_after_execve(site, bpf_object, tmp_path):
    """The helper's close of its release pipe used to be the command's third close."""
    expected = _strace_after_execve(tmp_path, "/bin/true")
    proc, out = _trace(tmp_path, "/bin/true")
    assert proc.returncode == 0, proc.stderr
    pid, events, summary = _trace_events(out)
    assert {e["pid"] for e in events} == {pid}, "only the command: never the tracer itself"
    got = Counter(e["name"] for e in events)
    assert got["openat"] >= 2, got       # the loader's opens are there: traced from exec on
    extra = got - expected
    assert not extra, f"in the trace but not done by /bin/true: {dict(extra)}"
    assert summary["events_written"] == sum(got.values())


def test_a_command_that_cannot_run_leaves_an_empty_trace(site, bpf_object, tmp_path):
    """The helper's failed exec and its error line on stderr are the tracer's, not a job's."""
    proc, out = _trace(tmp_path, "/nonexistent/cmd")
    assert proc.returncode == 127
    assert "cannot run /nonexistent/cmd" in proc.stderr
    _pid, events, summary = _trace_events(out)
    assert events == [] and summary["events_written"] == 0
    assert summary["operations"] == {}


@pytest.mark.parametrize("at_exec, writes", [(True, 1), (False, 6)])
def test_a_pid_joins_the_scope_at_its_exec(bpf_object, tracefs, workloads, at_exec, writes):
    """at_exec: the five writes before exec are not traced, echo's one write is."""
    child = workloads([shutil.which("python3"), "-c", HELPER])
    with Engine([WRITE], Scope.for_pids([child.pid], at_exec=at_exec),
                bpf_object=bpf_object) as eng:
        eng.attach()
        child.go()
        events, _ = collect(eng, [child])
    assert len(events) == writes
    assert events["pid"].tolist() == [child.pid] * writes
    assert events["ret"].tolist()[-1] == len("hi\n")       # echo's own write comes last


def test_a_child_forked_before_exec_is_not_in_the_scope(bpf_object, tracefs, workloads):
    """Only the command's own tree counts: a child the helper forks before exec is not it."""
    script = ("import os, sys\n"
              "sys.stdin.buffer.read(1)\n"
              "if os.fork() == 0:\n"
              "    os.write(os.open('/dev/null', os.O_WRONLY), b'child')\n"
              "    os._exit(0)\n"
              "os.wait()\n"
              "os.execv('/bin/echo', ['echo', 'hi'])\n")
    child = workloads([shutil.which("python3"), "-c", script])
    with Engine([WRITE], Scope.for_pids([child.pid], at_exec=True),
                bpf_object=bpf_object) as eng:
        eng.attach()
        child.go()
        events, _ = collect(eng, [child])
    assert events["pid"].tolist() == [child.pid] and events["ret"].tolist() == [3]
