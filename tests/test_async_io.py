"""Asynchronous I/O under `datacrumbs trace`: fio's io_uring and libaio engines (psync as
the control), real eBPF, real fio. Each request must appear once, as the submitter's
event, with the fio file's absolute path and exactly the bytes fio moved; the request
counts are checked against bpftrace on the kernel's own tracepoints on the same run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from workloads import daemon_readback as rb
from fixtures.tracing import DATACRUMBS, Bpftrace, trace_command

pytestmark = pytest.mark.ebpf
SIZE = 32 << 20
BS = 128 << 10
NREQ = SIZE // BS
FIXED_FILE = 1 << 31            # DC_ASYNC_FIXED_FILE in an async event's flags
# (write operation, read operation) each fio engine's data moves as
OPS = {"io_uring": ("io_uring_write", "io_uring_read"),
       "libaio": ("libaio_write", "libaio_read"),
       "psync": ("pwrite64", "pread64")}
# The kernel's own count: requests fio (comm "fio") submitted and saw complete.
BPFTRACE = {
    "io_uring": r"""
tracepoint:io_uring:io_uring_submit_req /comm == "fio" && (args->opcode == 22 || args->opcode == 23)/
{ @op[args->req] = args->opcode; }
tracepoint:io_uring:io_uring_complete /@op[args->req]/
{ @n[@op[args->req]] = count(); @b[@op[args->req]] = sum(args->res); delete(@op[args->req]); }
""",
    "libaio": r"""
tracepoint:syscalls:sys_exit_io_submit /comm == "fio" && args->ret > 0/ { @submitted = sum(args->ret); }
tracepoint:syscalls:sys_exit_io_getevents /comm == "fio" && args->ret > 0/ { @reaped = sum(args->ret); }
""",
}


@pytest.fixture
def disk_dir():
    """A scratch directory on a disk file system (O_DIRECT needs one: tmpfs refuses it)."""
    d = Path(tempfile.mkdtemp(prefix="datacrumbs-aio-", dir="/var/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def fio():
    path = shutil.which("fio")
    assert path, "fio is not installed (scripts/deps.sh installs it)"
    return path


def fio_cmd(fio: str, target: Path, engine: str, *, direct: int, extra=()) -> list[str]:
    """Write SIZE bytes, then (after the writer ends) read them back, in BS requests."""
    return [fio, f"--filename={target}", f"--size={SIZE}", f"--bs={BS}", f"--ioengine={engine}",
            "--iodepth=8", f"--direct={direct}", "--output=/dev/null", *extra,
            "--name=w", "--rw=write", "--name=r", "--rw=read", "--stonewall"]


def traced(tmp_path, command: list[str], *, sets=("posix", "async"), options=()):
    """``command`` under `datacrumbs trace` (by default the posix and async sets);
    (trace, summary)."""
    _proc, trace, summary = trace_command(tmp_path, command, sets=sets,
                                          options=("-q", *options), timeout=300)
    return trace, summary


def data_events(path: Path, names) -> list[dict]:
    """The events of ``names`` with their file path (``file``) resolved from FH lines."""
    fh = {r["args"]["value"]: r["args"]["name"] for r in rb.records(path) if r["name"] == "FH"}
    out = []
    for e in rb.events(path):
        if e["name"] in names:
            e["file"] = fh.get(e["args"].get("fhash"))
            out.append(e)
    return out


def report(path: Path) -> dict:
    proc = subprocess.run([DATACRUMBS, "report", "--json", "-", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout[proc.stdout.index("{"):])


def check_requests(events: list[dict], name: str, target: Path, *, named=True) -> None:
    """NREQ requests of BS bytes at each offset once, for ``target`` (``named``: only events
    naming it count; else every event of ``name``, which then must all be these)."""
    mine = [e for e in events if e["name"] == name and (not named or e["file"] == str(target))]
    assert len(mine) == NREQ, (name, len(mine))
    assert sum(e["args"]["size"] for e in mine) == SIZE
    assert all(e["args"]["size"] == BS and e["args"]["ret"] == BS for e in mine)
    assert sorted(e["args"]["offset"] for e in mine) == list(range(0, SIZE, BS))


@pytest.mark.parametrize("direct", [0, 1])
@pytest.mark.parametrize("engine", ["io_uring", "libaio", "psync"])
def test_fio_bytes_are_exact_per_file(site, tmp_path, disk_dir, fio, engine, direct):
    target = disk_dir / "fio.dat"
    cmd = fio_cmd(fio, target, engine, direct=direct)
    if engine in BPFTRACE:
        with Bpftrace(BPFTRACE[engine]) as bt:
            path, summary = traced(tmp_path, cmd)
    else:
        bt = None
        path, summary = traced(tmp_path, cmd)
    assert target.stat().st_size == SIZE
    wname, rname = OPS[engine]
    events = data_events(path, (wname, rname))
    check_requests(events, wname, target)
    check_requests(events, rname, target)
    if engine != "psync":       # no other request of fio is one of these: all name the file
        assert {e["file"] for e in events} == {str(target)}
    # the submitter's events: fio's job processes, with a latency
    assert all(e["dur"] > 0 for e in events)
    assert {e["pid"] for e in events} <= {e["pid"] for e in rb.events(path) if e["name"] in
                                           ("openat", "open")}
    if engine == "io_uring":       # the kernel saw as many completions, of as many bytes
        assert bt.counts == {"n[23]": NREQ, "n[22]": NREQ, "b[23]": SIZE, "b[22]": SIZE}, bt.counts
        assert all(e["args"]["flags"] in (22, 23) for e in events)     # IORING_OP_READ/WRITE
    elif engine == "libaio":
        assert bt.counts == {"submitted": 2 * NREQ, "reaped": 2 * NREQ}, bt.counts
        assert all(e["args"]["flags"] in (0, 1) for e in events)       # IOCB_CMD_PREAD/PWRITE
    # the run's summary and the report count them as the file's reads and writes (psync's
    # pread64 also reads fio's libraries: its operation totals are larger)
    assert summary["files"][str(target)]["bytes"] >= 2 * SIZE
    rep = report(path)
    if engine != "psync":
        for name in (wname, rname):
            assert summary["operations"][f"ASYNC/{name}"]["bytes"] == SIZE
        ops = {o["name"]: o for o in rep["operations"]}
        assert ops[wname]["bytes"] == SIZE and ops[rname]["bytes"] == SIZE
        assert ops[wname]["count"] == NREQ and ops[rname]["count"] == NREQ
    files = {f["path"]: f for f in rep["top_files_by_bytes"]}
    assert files[str(target)]["bytes"] >= 2 * SIZE


@pytest.fixture
def shm_dir():
    """A scratch directory on /dev/shm: a tmpfs mounted on devtmpfs mounted on /."""
    d = Path(tempfile.mkdtemp(prefix="datacrumbs-aio-", dir="/dev/shm"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("where,direct,extra", [
    ("disk", 1, ["--registerfiles=1"]),
    ("shm", 0, ["--registerfiles=1"]),
    ("disk", 1, ["--sqthread_poll=1"]),
], ids=["fixed-files", "fixed-files-across-mounts", "sqpoll"])
def test_io_uring_fixed_files_and_sqpoll(site, tmp_path, disk_dir, shm_dir, fio, where, direct,
                                         extra):
    """Registered files: fd is the fixed index, marked in flags, and the file is named from
    the kernel's own file (its dentries and mounts), as no fd table names an index. SQPOLL
    (which fio runs with registered files): the poller thread submits; the event is its
    process's (fio's), on the poller's thread id."""
    target = (disk_dir if where == "disk" else shm_dir) / "fio.dat"
    # with SQPOLL the kernel poller thread (comm iou-sqp-PID) submits
    script = BPFTRACE["io_uring"].replace('comm == "fio"',
                                          '(comm == "fio" || strncmp(comm, "iou-sqp-", 8) == 0)')
    with Bpftrace(script) as bt:
        path, summary = traced(tmp_path, fio_cmd(fio, target, "io_uring", direct=direct,
                                                 extra=extra))
    assert summary["names_lost"] == 0
    events = data_events(path, OPS["io_uring"])
    for name in OPS["io_uring"]:
        check_requests(events, name, target)
    assert {e["file"] for e in events} == {str(target)}
    assert all(e["args"]["flags"] & FIXED_FILE and e["args"]["fd"] == 0 for e in events)
    fio_pids = {e["pid"] for e in rb.events(path) if e["name"] in ("openat", "open")}
    assert {e["pid"] for e in events} <= fio_pids
    # the kernel saw as many completions, of as many bytes
    assert bt.counts == {"n[23]": NREQ, "n[22]": NREQ, "b[23]": SIZE, "b[22]": SIZE}, bt.counts
    if "--sqthread_poll=1" in extra:
        # the kernel poller thread (iou-sqp-PID) is a thread of the submitting process
        assert all(e["tid"] != e["pid"] for e in events)


def test_profile_mode_counts_async_bytes(site, tmp_path, disk_dir, fio):
    target = disk_dir / "fio.dat"
    path, summary = traced(tmp_path, fio_cmd(fio, target, "libaio", direct=1), options=("--mode", "profile"))
    ops = summary["operations"]
    for name in OPS["libaio"]:
        assert ops[f"ASYNC/{name}"]["bytes"] == SIZE and ops[f"ASYNC/{name}"]["count"] == NREQ


def test_without_the_async_set_nothing_is_loaded(site, tmp_path, disk_dir, fio):
    """The async programs are loaded only on request: posix alone sees no fio data."""
    target = disk_dir / "fio.dat"
    path, summary = traced(tmp_path, fio_cmd(fio, target, "io_uring", direct=0),
                           sets=("posix",))
    assert not data_events(path, OPS["io_uring"])
    assert not any(p["kind"] == "async" for p in summary["probes_attached"])


def test_requests_of_other_processes_are_not_recorded(site, tmp_path, disk_dir, fio):
    """An untraced fio doing io_uring at the same time: none of its requests (submitted
    outside the scope, completing anywhere) reaches the trace."""
    mine, other = disk_dir / "traced.dat", disk_dir / "other.dat"
    outside = subprocess.Popen(
        [fio, f"--filename={other}", f"--size={SIZE}", f"--bs={BS}", "--ioengine=io_uring",
         "--iodepth=8", "--direct=1", "--output=/dev/null", "--time_based", "--runtime=30",
         "--name=o", "--rw=randrw"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not (other.exists() and other.stat().st_size == SIZE):   # laid out: running
            assert time.monotonic() < deadline and outside.poll() is None
            time.sleep(0.1)
        path, _summary = traced(tmp_path, fio_cmd(fio, mine, "io_uring", direct=1))
        assert outside.poll() is None, "the untraced fio ended before the traced one"
    finally:
        outside.kill()
        outside.wait()
    events = data_events(path, OPS["io_uring"])
    for name in OPS["io_uring"]:
        check_requests(events, name, mine)
    assert {e["file"] for e in events} == {str(mine)}
    assert outside.pid not in {e["pid"] for e in events}


def test_engine_refuses_unknown_async_targets(bpf_object, tracefs):
    from datacrumbs.tracer.engine import Engine
    from datacrumbs.tracer.scope import Scope

    probes = [{"id": "a.ok", "kind": "async", "target": "io_uring_write", "category": "ASYNC",
               "args": {}, "bytes": "ret"},
              {"id": "a.bad", "kind": "async", "target": "io_uring_nope", "category": "ASYNC",
               "args": {}, "bytes": "ret"},
              {"id": "a.twice", "kind": "async", "target": "io_uring_write", "category": "ASYNC",
               "args": {}, "bytes": "ret"}]
    with Engine(probes, Scope.for_pids([os.getpid()]), bpf_object=bpf_object) as eng:
        report = eng.attach()
    assert [p["id"] for p in report.attached] == ["a.ok"]
    reasons = {p["id"]: why for p, why in report.refused}
    assert reasons["a.bad"].startswith("unknown async I/O probe 'io_uring_nope'")
    assert reasons["a.twice"] == "async probe io_uring_write is already in this file"


def test_iocbs_beyond_a_batch_are_counted_lost_not_dropped(site, tmp_path, disk_dir, fio):
    """io_submit of 256 iocbs at once: 64 are read per call and the rest are counted as lost
    events, as are io_events beyond 64 per io_getevents (bpftrace counts both overflows on
    the same run): no request goes missing without being counted."""
    target = disk_dir / "fio.dat"
    out = tmp_path / "out"
    out.mkdir()
    cmd = [fio, f"--filename={target}", f"--size={SIZE}", f"--bs={BS}", "--ioengine=libaio",
           "--iodepth=256", "--iodepth_batch_submit=256", "--iodepth_batch_complete_min=1",
           "--direct=1", "--output=/dev/null", "--name=w", "--rw=write"]
    script = """
tracepoint:syscalls:sys_exit_io_submit /comm == "fio" && args->ret > 64/ { @sover = sum(args->ret - 64); }
tracepoint:syscalls:sys_exit_io_getevents /comm == "fio" && args->ret > 64/ { @rover = sum(args->ret - 64); }
"""
    with Bpftrace(script) as bt:
        proc = subprocess.run([DATACRUMBS, "trace", "-q", "-o", str(out), "--set", "posix",
                               "--set", "async", "--", *cmd], capture_output=True, text=True,
                              timeout=300)
    assert proc.returncode == 0, proc.stderr
    trace = next(out.glob("*.pfw.gz"))
    summary = json.loads(next(out.glob("*.summary.json")).read_text())
    events = data_events(trace, ("libaio_write",))
    assert bt.counts.get("sover", 0) > 0, bt.counts
    assert summary["events_lost"] == bt.counts.get("sover", 0) + bt.counts.get("rover", 0)
    assert len(events) + summary["events_lost"] >= NREQ
    # how many are recorded depends on how the completions were reaped (a request whose
    # io_event lands past 64 in one io_getevents is counted lost): some, all whole
    assert len(events) > 0 and all(e["args"]["size"] == BS for e in events)
