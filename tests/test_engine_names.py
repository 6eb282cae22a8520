"""File names are never lost silently: every open-like event in the trace either has
its name or is counted in names_lost, which the summary, the daemon's log, `datacrumbs
trace -q` and the report all show. Real eBPF, a C burst of 100,000 opens of distinct
long names."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from datacrumbs.tracer.engine import Engine
from datacrumbs.tracer.scope import Scope
from datacrumbs.users import lookup_user

from fixtures.tracing import collect

pytestmark = pytest.mark.ebpf

OPENAT = {"id": "posix.openat", "kind": "syscall", "target": "openat", "category": "POSIX",
          "args": {"fd": 0, "path": 1, "flags": 2}, "bytes": None}
N_OPENS = 100_000
STEM = "n" * 100          # long names: each name record is about 4x an event record

# opens N distinct names (none exists: the burst is as fast as the kernel can fail
# lookups) after a "g" on stdin
BURST = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	char path[4096], go;
	long n = atol(argv[2]);

	if (read(0, &go, 1) != 1)
		return 3;
	for (long i = 0; i < n; i++) {
		snprintf(path, sizeof(path), "%s/%s-%07ld", argv[1], argv[3], i);
		if (open(path, O_RDONLY) >= 0)
			return 4;
	}
	return 0;
}
"""


@pytest.fixture(scope="module")
def burst(shared_dir) -> Path:
    src = shared_dir / "burst.c"
    src.write_text(BURST)
    out = shared_dir / "burst"
    cc = shutil.which("gcc") or shutil.which("cc")
    subprocess.run([cc, "-O2", "-o", str(out), str(src)], check=True, capture_output=True,
                   timeout=120)
    out.chmod(0o755)
    return out


def _expected(tmp_path: Path) -> set[str]:
    return {f"{tmp_path}/{STEM}-{i:07d}" for i in range(N_OPENS)}


def _account(events, paths, pid, tmp_path):
    """(named, unnamed) burst opens of ``pid``; every name must be one it opened."""
    rows = np.flatnonzero(events["pid"] == pid)
    named = [paths[r] for r in rows.tolist() if r in paths]
    assert set(named) <= _expected(tmp_path) and len(set(named)) == len(named)
    return len(named), len(rows) - len(named)


def test_burst_of_opens_names_each_or_counts_it(bpf_object, tracefs, burst, workloads,
                                                 tmp_path):
    """Default rings, read while the burst runs: whatever the machine's load, an event
    without its name is one counted in names_lost."""
    child = workloads([burst, tmp_path, N_OPENS, STEM])
    with Engine([OPENAT], Scope.for_pids([child.pid]), bpf_object=bpf_object) as eng:
        eng.attach()
        child.go()
        events, paths = collect(eng, [child])
        lost, names_lost = eng.lost(), eng.names_lost()
    named, unnamed = _account(events, paths, child.pid, tmp_path)
    assert named + unnamed + lost == N_OPENS
    assert unnamed == names_lost
    print(f"\n{N_OPENS} opens: {named} named, {names_lost} names lost, {lost} events lost")


def test_a_full_name_ring_is_counted_exactly(bpf_object, tracefs, burst, workloads, tmp_path):
    """A 16 KiB name ring nobody reads during the burst holds about a hundred names:
    every other event arrives nameless and is counted, not one more or less."""
    child = workloads([burst, tmp_path, N_OPENS, STEM])
    with Engine([OPENAT], Scope.for_pids([child.pid]), bpf_object=bpf_object,
                ringbuf_bytes=32 << 20, paths_ringbuf_bytes=16 << 10) as eng:
        eng.attach()
        child.go().wait()
        events, paths = collect(eng, [])
        assert eng.lost() == 0
        names_lost = eng.names_lost()
    named, unnamed = _account(events, paths, child.pid, tmp_path)
    assert named + unnamed == N_OPENS
    assert 0 < named < 200 and unnamed == names_lost
    assert eng.names_lost() == names_lost, "names_lost() still answers after close()"


class _UntilExitPlusOne:
    """Stop condition: the workload has exited and the loop made one more round (which
    checks the loss counters), as `datacrumbs trace` stops at the command's exit."""

    signal = "workload exit"
    name = None

    def __init__(self, workload):
        self.workload, self.rounds_after = workload, 0

    @property
    def requested(self) -> bool:
        if self.workload.running():
            return False
        self.rounds_after += 1
        return self.rounds_after > 1


def test_names_lost_make_the_summary_incomplete_and_are_logged(bpf_object, tracefs, burst,
                                                                workloads, tmp_path, caplog):
    from datacrumbs.tracer.daemon import TraceRun

    out = tmp_path / "out"
    out.mkdir()
    dir_fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    child = workloads([burst, tmp_path, N_OPENS, STEM])
    caplog.set_level(logging.INFO, logger="datacrumbs")
    try:
        with Engine([OPENAT], Scope.for_pids([child.pid]), bpf_object=bpf_object,
                    paths_ringbuf_bytes=16 << 10) as eng:
            report = eng.attach()
            run = TraceRun(eng, report, run_id="77", user=lookup_user("root"), host="h",
                           mode="trace", interval_ms=1000, capture_paths=True, dir_fd=dir_fd,
                           start=datetime.now(timezone.utc))
            run.loop(_UntilExitPlusOne(child), child.go)
            names_lost = eng.names_lost()
    finally:
        os.close(dir_fd)
    doc = run.summary_doc
    assert names_lost > 0 and doc["names_lost"] == names_lost and doc["events_lost"] == 0
    assert doc["complete"] is False, "a trace with nameless opens is not complete"
    assert doc["events_written"] == N_OPENS
    logged = [r for r in caplog.records if r.levelno == logging.WARNING
              and "file names lost so far" in r.getMessage()]
    assert logged, caplog.text
    assert f"{names_lost} without their file name" in caplog.text
    assert (out / run.summary_name).is_file()


def test_no_loss_leaves_the_summary_complete(bpf_object, tracefs, burst, workloads, tmp_path):
    from datacrumbs.tracer.daemon import TraceRun

    out = tmp_path / "out"
    out.mkdir()
    dir_fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    child = workloads([burst, tmp_path, 500, STEM])
    try:
        with Engine([OPENAT], Scope.for_pids([child.pid]), bpf_object=bpf_object) as eng:
            report = eng.attach()
            run = TraceRun(eng, report, run_id="78", user=lookup_user("root"), host="h",
                           mode="trace", interval_ms=1000, capture_paths=True, dir_fd=dir_fd,
                           start=datetime.now(timezone.utc))
            run.loop(_UntilExitPlusOne(child), child.go)
    finally:
        os.close(dir_fd)
    doc = run.summary_doc
    assert (doc["names_lost"], doc["events_lost"], doc["complete"]) == (0, 0, True)
    assert len(doc["files"]) == 500


def test_quiet_trace_still_prints_the_loss(capsys):
    from datacrumbs.cli import trace as cli

    class Run:
        trace_name, summary_name = "t.pfw.gz", "t.summary.json"
        summary_doc = {"events_lost": 0, "names_lost": 1234}

    cli._report(argparse.Namespace(quiet=True), Run(), Path("/o"), ["x"], 1.0)
    err = capsys.readouterr().err.splitlines()
    assert err == ["/o/t.pfw.gz",
                   "datacrumbs: 1,234 file names lost (those events have no file name)"]
    Run.summary_doc = {"events_lost": 0, "names_lost": 0}
    cli._report(argparse.Namespace(quiet=True), Run(), Path("/o"), ["x"], 1.0)
    assert capsys.readouterr().err.splitlines() == ["/o/t.pfw.gz"]


def test_report_shows_names_lost_next_to_events_lost():
    from datacrumbs.report import html

    summary = {"events_lost": 3, "names_lost": 5}
    assert any("5 events lost their file name" in w for w in html._warnings(
        {**summary, "traces": [], "unreadable": [], "incomplete_runs": [],
         "probes_refused": []}))
