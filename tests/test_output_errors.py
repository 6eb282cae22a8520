"""Files a command writes for its user (report, export, probes file) on a full disk, or in
a directory that holds no files: one line naming the file and what to do, exit code 1, no
temp file left, and a file already there unchanged. A real tmpfs, filled up
(fixtures.common.full_disk)."""

from __future__ import annotations

import gzip
import json
import os
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

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


OUTPUTS = [
    ["report", "--html", "{out}", "{trace}"],
    ["report", "--json", "{out}", "{trace}"],
    ["export", "--perfetto", "{out}", "{trace}"],
    ["probes", "generate", "--set", "posix", "-o", "{out}"],
]
OUTPUT_IDS = ["report-html", "report-json", "export", "probes-generate"]


def _is_device(path, rdev) -> bool:
    st = os.lstat(path)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == rdev


@pytest.mark.parametrize("argv", OUTPUTS, ids=OUTPUT_IDS)
def test_a_device_is_written_into_never_replaced(argv, tmp_path, trace, site, capsys):
    """As root, the output was made beside the name and renamed over it: `--html /dev/full`
    left a regular file where the device was (seen on this machine). A character device is
    written into, as a shell's `>` would: /dev/null takes it all, /dev/full says the disk
    is full in one line; both stay devices and nothing else appears beside them."""
    out = tmp_path / "out"
    out.mkdir()
    null, full = os.makedev(1, 3), os.makedev(1, 7)
    os.mknod(out / "null.json.gz", 0o666 | stat.S_IFCHR, null)
    os.mknod(out / "full.json.gz", 0o666 | stat.S_IFCHR, full)
    assert run_cli([a.format(out=out / "null.json.gz", trace=trace) for a in argv]) == 0
    assert _is_device(out / "null.json.gz", null)
    assert run_cli([a.format(out=out / "full.json.gz", trace=trace) for a in argv]) == 1
    line = _one_line(capsys.readouterr().err, out / "full.json.gz")
    assert "No space left on device" in line, line
    assert _is_device(out / "full.json.gz", full)
    assert sorted(os.listdir(out)) == ["full.json.gz", "null.json.gz"]


@pytest.mark.parametrize("argv", OUTPUTS, ids=OUTPUT_IDS)
def test_a_pipe_is_written_into(argv, tmp_path, trace, site):
    """`--json /dev/stdout | jq` and named pipes: the whole output goes into the pipe, the
    pipe stays a pipe."""
    fifo = tmp_path / "fifo.json.gz"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    try:
        assert run_cli([a.format(out=fifo, trace=trace) for a in argv]) == 0
    finally:
        reader.join(10)
        if reader.is_alive() and stat.S_ISFIFO(os.lstat(fifo).st_mode):
            os.close(os.open(fifo, os.O_WRONLY))    # it failed before opening: unblock
            reader.join(10)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and got
    data = got[0]
    if argv[0] == "export":     # .json.gz: gzip-compressed JSON
        data = gzip.decompress(data)
    if argv[0] == "probes":
        assert gzip.decompress(data).startswith(b"{")
    elif "--html" in argv:
        assert data.lstrip().lower().startswith(b"<!doctype html")
    else:
        assert isinstance(json.loads(data), (dict, list))


def test_dev_stdout_redirected_to_a_file_is_not_replaced(tmp_path, trace):
    """/dev/stdout is a symbolic link of root's to /proc/self/fd/1: followed, so the file
    stdout is gets the report, and the link stays a link (a rename made it a regular file:
    seen on this machine). The same link is made here, so that a regression replaces this
    test's link, not the machine's /dev/stdout."""
    out, link = tmp_path / "stdout.json", tmp_path / "stdout"
    link.symlink_to("/proc/self/fd/1")
    with open(out, "wb") as stdout:
        proc = subprocess.run([str(Path(sys.executable).with_name("datacrumbs")), "report",
                               "--json", str(link), str(trace)], stdout=stdout,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert link.is_symlink()
    assert json.loads(out.read_text())["format"] == "datacrumbs-report"


def test_links_of_root_are_followed_and_others_links_are_not(tmp_path, trace, user1):
    """A link root (or the caller) made is followed: the file it names is replaced, the
    link stays. Another user's link is not followed (it might name /etc/passwd): the link
    itself is replaced, the file it named is untouched."""
    mine, theirs = tmp_path / "mine.json", tmp_path / "theirs.json"
    real, victim = tmp_path / "real.json", tmp_path / "victim"
    real.write_text("old\n")
    victim.write_text("precious\n")
    mine.symlink_to(real.name)
    theirs.symlink_to(victim)
    os.lchown(theirs, user1.pw_uid, user1.pw_gid)
    assert run_cli(["report", "--json", str(mine), str(trace)]) == 0
    assert mine.is_symlink() and json.loads(real.read_text())["format"] == "datacrumbs-report"
    assert run_cli(["report", "--json", str(theirs), str(trace)]) == 0
    assert not theirs.is_symlink() and victim.read_text() == "precious\n"


@pytest.mark.parametrize("argv", OUTPUTS, ids=OUTPUT_IDS)
def test_a_block_device_or_a_socket_is_refused_in_one_line(argv, tmp_path, trace, site, capsys):
    out = tmp_path / "out"
    out.mkdir()
    os.mknod(out / "blk.json.gz", 0o600 | stat.S_IFBLK, os.makedev(7, 200))
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(out / "sock.json.gz"))
    try:
        for name in ("blk.json.gz", "sock.json.gz"):
            assert run_cli([a.format(out=out / name, trace=trace) for a in argv]) == 1
            line = _one_line(capsys.readouterr().err, out / name)
            assert "not a regular file, a pipe or a terminal" in line, line
    finally:
        sock.close()
    assert stat.S_ISBLK(os.lstat(out / "blk.json.gz").st_mode)
    assert stat.S_ISSOCK(os.lstat(out / "sock.json.gz").st_mode)
    assert sorted(os.listdir(out)) == ["blk.json.gz", "sock.json.gz"]
