"""Files a command writes for its user (report, export, probes file) on a full disk, or in
a directory that holds no files: one line naming the file and what to do, exit code 1, no
temp file left, and a file already there unchanged. A real tmpfs, filled up
(fixtures.common.full_disk)."""

from __future__ import annotations

import os

import pytest

from datacrumbs.cli import run_cli
from fixtures.traces import TraceBuilder


@pytest.fixture
def trace(tmp_path):
    b = TraceBuilder(tmp_path / "trace-alice-9-node0.pfw.gz", host="node0", job="9")
    b.process(500, "rank0")
    for i in range(200):
        b.op("write", pid=500, ts=i * 1000, dur=50, path="/scratch/f", size=4096)
    b.write()
    return b.path


def _one_line(err: str, path) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("datacrumbs")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert str(path) in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("argv", [
    ["report", "--html", "{out}", "{trace}"],
    ["report", "--json", "{out}", "{trace}"],
    ["export", "--perfetto", "{out}", "{trace}"],
    ["probes", "generate", "--set", "posix", "-o", "{out}.json.gz"],
], ids=["report-html", "report-json", "export", "probes-generate"])
def test_a_full_disk_is_one_line_and_loses_nothing(argv, full_disk, trace, site, capsys):
    out = full_disk / "new.out"
    argv = [a.format(out=out, trace=trace) for a in argv]
    target = argv[argv.index("-o") + 1] if "-o" in argv else str(out)
    assert run_cli(argv) == 1
    line = _one_line(capsys.readouterr().err, target)
    assert "No space left on device" in line and "free some space" in line, line
    assert sorted(os.listdir(full_disk)) == ["filler", "old.html"]     # no temp file left
    assert (full_disk / "old.html").read_text() == "the report of yesterday\n"


def test_replacing_a_file_on_a_full_disk_keeps_the_old_one(full_disk, trace, capsys):
    old = full_disk / "old.html"
    assert run_cli(["report", "--html", str(old), str(trace)]) == 1
    _one_line(capsys.readouterr().err, old)
    assert old.read_text() == "the report of yesterday\n"


@pytest.mark.parametrize("argv", [
    ["report", "--json", "/proc/x.json", "{trace}"],
    ["export", "--perfetto", "/proc/x.json", "{trace}"],
    ["probes", "generate", "--set", "posix", "-o", "/proc/x.json.gz"],
], ids=["report", "export", "probes-generate"])
def test_a_directory_that_holds_no_files_is_named(argv, trace, site, capsys):
    """/proc exists but takes no new file: said as such (it was "directory /proc does not
    exist", or the name of a temp file the user never heard of)."""
    argv = [a.format(trace=trace) for a in argv]
    assert run_cli(argv) == 1
    target = next(a for a in argv if a.startswith("/proc/"))
    line = _one_line(capsys.readouterr().err, target)
    assert "cannot write it in /proc" in line and "does not exist" not in line, line
    assert ".tmp" not in line
