"""fd -> path tables: duplicated descriptors keep their file (dd of=F, shell redirects).

Unit tests drive FdPaths with real descriptors of this process and the engine's
real /proc resolver; the eBPF tests run dd and a shell redirect under the real
kernel and check that every byte written lands on the right file.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from datacrumbs.probes.catalog import builtin_sets, select_probes
from datacrumbs.tracer.engine import Engine
from datacrumbs.tracer.paths import CLOSE_OPS, DUP_OPS, OPEN_OPS, FdPaths
from datacrumbs.tracer.scope import Scope

from fixtures.tracing import collect
from workloads import daemon_readback as rb

DATACRUMBS = str(Path(sys.executable).with_name("datacrumbs"))
PID = 4242  # a table key only: FdPaths does not care whether it runs
BLOCKS, BLOCK = 100, 4096


# -- the table ---------------------------------------------------------------------------

def test_dup2_gives_newfd_the_old_file_and_survives_closing_oldfd():
    paths = FdPaths()
    paths.opened(PID, 3, "/data/out.bin")
    assert paths.duplicated(PID, 3, 1) == "/data/out.bin"
    assert paths.closed(PID, 3) == "/data/out.bin"
    assert paths.lookup(PID, 1) == "/data/out.bin"
    assert paths.lookup(PID, 3) is None


def test_dup2_replaces_what_newfd_held_before():
    paths = FdPaths()
    paths.opened(PID, 1, "/old/stdout.log")
    paths.opened(PID, 5, "/new/file")
    paths.duplicated(PID, 5, 1)
    assert paths.lookup(PID, 1) == "/new/file"
    assert paths.lookup(PID, 5) == "/new/file"


def test_fclose_after_its_own_close_names_the_file_that_close_closed():
    """fclose's event comes after the close(2) it made: that close's file names it, and only
    until the descriptor's number is given to another file."""
    paths = FdPaths()
    paths.opened(PID, 3, "/data/in.txt")
    assert paths.closed(PID, 3) == "/data/in.txt"          # close(3) inside fclose
    assert paths.stream_closed(PID, 3) == "/data/in.txt"   # then the fclose
    assert paths.stream_closed(PID, 3) is None             # once
    paths.opened(PID, 3, "/data/a")
    paths.closed(PID, 3)                                   # a plain close(3)
    paths.opened(PID, 3, "/data/b")                        # the number reused
    assert paths.stream_closed(PID, 3) is None             # fd 3 is open: not a's
    assert paths.closed(PID, 3) == "/data/b"
    paths.opened(PID, 4, "/data/c")
    paths.duplicated(PID, 4, 5)
    paths.closed(PID, 5)
    paths.duplicated(PID, 4, 5)                            # dup2 onto the closed number
    paths.closed(PID, 5)
    assert paths.stream_closed(PID, 5) == "/data/c"


def test_dup_of_a_non_file_forgets_newfd_without_reading_proc(tmp_path):
    """A pipe duplicated over a descriptor that /proc names as a file: the table must say
    "no file" rather than let a later /proc read name the file the fd held before."""
    resolve = Engine.resolve_fd
    pid = os.getpid()
    r, w = os.pipe()
    file_fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        paths = FdPaths(resolve)
        assert resolve(pid, w) is None and resolve(pid, file_fd) == str(tmp_path / "f")
        assert paths.duplicated(pid, w, file_fd) is None
        assert paths.lookup(pid, file_fd) is None
        assert len(paths) == 2  # w (remembered miss) and file_fd
    finally:
        for fd in (r, w, file_fd):
            os.close(fd)


def test_dup_of_a_descriptor_opened_before_attach_resolves_it_once(tmp_path):
    pid = os.getpid()
    calls = []

    def resolve(p, fd):
        calls.append((p, fd))
        return Engine.resolve_fd(p, fd)

    fd = os.open(tmp_path / "early", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        paths = FdPaths(resolve)
        assert paths.duplicated(pid, fd, 999) == str(tmp_path / "early")
        assert paths.lookup(pid, 999) == str(tmp_path / "early")
        assert calls == [(pid, fd)]  # the new fd is known: /proc is not read for it
    finally:
        os.close(fd)


def test_dup_onto_itself_and_failed_targets_change_nothing():
    paths = FdPaths()
    paths.opened(PID, 4, "/a")
    assert paths.duplicated(PID, 4, 4) == "/a"
    assert paths.duplicated(PID, 4, -1) == "/a"
    assert paths.lookup(PID, 4) == "/a" and len(paths) == 1


def test_tables_stay_bounded_under_dups():
    paths = FdPaths(max_fds_per_pid=8, max_pids=3)
    paths.opened(PID, 0, "/first")
    for newfd in range(1, 100):
        paths.duplicated(PID, newfd - 1, newfd)
    assert len(paths) == 8
    assert paths.lookup(PID, 99) == "/first"  # the newest survive
    for pid in range(10):
        paths.opened(pid, 3, f"/p{pid}")
        paths.duplicated(pid, 3, 1)
    assert len(paths) == 3 * 2
    assert paths.lookup(9, 1) == "/p9"


def test_operation_sets_are_disjoint_and_the_posix_set_traces_dups():
    assert DUP_OPS == {"dup", "dup2", "dup3"}
    assert not DUP_OPS & (OPEN_OPS | CLOSE_OPS)
    posix = {p["target"]: p for p in builtin_sets()["posix"].probes}
    for name in DUP_OPS:
        assert posix[name]["kind"] == "syscall"
        assert posix[name]["args"] == {"fd": 0} and posix[name]["bytes"] is None
    # fcntl(F_DUPFD) duplicates too: the set records its cmd (argument 1) as flags
    assert posix["fcntl"]["args"] == {"fd": 0, "flags": 1}


# -- real eBPF ---------------------------------------------------------------------------

def _replay(engine, events, paths_by_row) -> tuple[list, dict[str, int]]:
    """Rows in kernel order through FdPaths, as the daemon's converter must.

    Returns (probe target of each row, bytes written per file)."""
    names = [engine.probes[int(p)]["target"] for p in events["probe"]]
    table = FdPaths(Engine.resolve_fd)
    written: dict[str, int] = {}
    for row, ev in enumerate(events.tolist()):
        name = names[row]
        pid, fd, ret, nbytes = ev[2], ev[5], ev[6], ev[9]
        if name in OPEN_OPS and row in paths_by_row and ret >= 0:
            table.opened(pid, ret, paths_by_row[row])
        elif name in DUP_OPS and ret >= 0:
            table.duplicated(pid, fd, ret)
        elif name in CLOSE_OPS:
            table.closed(pid, fd)
        elif name == "write" and nbytes > 0:
            path = table.lookup(pid, fd)
            written[path] = written.get(path, 0) + nbytes
    return names, written


@pytest.mark.ebpf
def test_kernel_reports_dup2_old_and_new_fd_and_bytes_follow_them(bpf_object, tracefs,
                                                                  workloads, tmp_path):
    target = tmp_path / "dd.bin"
    probes = select_probes(builtin_sets(), ["posix"])
    w = workloads(["sh", "-c", f"read go; exec dd if=/dev/zero of={shlex.quote(str(target))} "
                   f"bs={BLOCK} count={BLOCKS} status=none"])
    with Engine(probes, Scope.for_pids([w.pid]), bpf_object=bpf_object) as eng:
        report = eng.attach()
        assert {p["target"] for p in report.attached} >= DUP_OPS
        events, paths_by_row = collect(eng, [w.go()])
    names, written = _replay(eng, events, paths_by_row)
    dup2 = [ev for ev, name in zip(events.tolist(), names) if name == "dup2"]
    # dd moves if= to fd 0 and of= to fd 1: arg0 is the old fd, the return value the new one
    assert sorted(ev[6] for ev in dup2) == [0, 1] and all(ev[5] >= 3 for ev in dup2)
    assert all(ev[9] == -1 for ev in dup2)  # not a data operation
    assert written == {str(target): BLOCKS * BLOCK}
    assert target.stat().st_size == BLOCKS * BLOCK


def _trace(tmp_path, *command):
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run([DATACRUMBS, "trace", "--set", "posix", "-o", str(out), "--", *command],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    traces = list(out.glob("*.pfw.gz"))
    assert len(traces) == 1, traces
    summary = json.loads(Path(str(traces[0])[:-len(".pfw.gz")] + ".summary.json").read_text())
    return proc, traces[0], summary


def _trace_bytes(path, target) -> tuple[int, int]:
    """(writes, bytes) the trace attributes to target."""
    records = rb.records(path)
    fh = {r["args"]["value"]: r["args"]["name"] for r in records if r.get("name") == "FH"}
    writes = [e for e in rb.events(path) if e["name"] == "write"
              and fh.get(e["args"].get("fhash")) == str(target)]
    return len(writes), sum(e["args"].get("size", 0) for e in writes)


@pytest.mark.ebpf
def test_trace_attributes_dd_output_to_its_file(site, bpf_object, tmp_path):
    target = tmp_path / "dd.bin"
    proc, path, summary = _trace(tmp_path, "dd", "if=/dev/zero", f"of={target}", f"bs={BLOCK}",
                                 f"count={BLOCKS}")
    assert summary["operations"]["POSIX/dup2"]["count"] == 2
    assert _trace_bytes(path, target) == (BLOCKS, BLOCKS * BLOCK)
    assert summary["files"][str(target)]["bytes"] == BLOCKS * BLOCK
    assert summary["files"]["/dev/zero"]["bytes"] == BLOCKS * BLOCK


@pytest.mark.ebpf
def test_trace_follows_a_shell_redirect_after_stdout_was_used(site, bpf_object, tmp_path):
    """stdout is a pipe first (remembered as "no file"); after `exec >FILE` the same fd 1
    writes to FILE: the dup2 must replace the old entry."""
    target = tmp_path / "redirect.bin"
    script = (f"echo before; exec >{shlex.quote(str(target))}; "
              f"exec dd if=/dev/zero bs={BLOCK} count={BLOCKS} status=none")
    proc, path, summary = _trace(tmp_path, "sh", "-c", script)
    assert proc.stdout == "before\n"
    assert _trace_bytes(path, target) == (BLOCKS, BLOCKS * BLOCK)
    assert summary["files"][str(target)]["bytes"] == BLOCKS * BLOCK
    assert target.stat().st_size == BLOCKS * BLOCK


def test_a_forked_child_inherits_the_parents_descriptors():
    """A shell opens a redirect and forks the command: the child's fd 1 is the file."""
    paths = FdPaths(lambda pid, fd: None)
    paths.opened(10, 3, "/out")
    paths.duplicated(10, 3, 1)
    paths.closed(10, 3)
    assert paths.lookup(11, 1) is None      # child seen first: unknown, remembered
    paths.forked(10, 11)
    assert paths.lookup(11, 1) == "/out" and paths.lookup(11, 3) is None
    paths.opened(11, 5, "/mine")
    paths.forked(10, 11)                    # what the child has of its own stays
    assert paths.lookup(11, 5) == "/mine"
    assert paths.lookup(10, 1) == "/out"
