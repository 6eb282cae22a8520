"""The analyst's summary on real traced programs: every file's read/write/metadata split
exact against sizes known in advance, stdio above POSIX counted once, a pipe's wait kept
out of the job's I/O time, findings that fire on 4-byte random reads and not on 1 MiB
sequential ones; and, on hand-made traces, nesting numbers exact and identical however
the trace is split."""

from __future__ import annotations

import json
import math
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from datacrumbs.report import merge
from datacrumbs.report.merge import summarize
from fixtures.traces import TraceBuilder
from fixtures.tracing import trace_command
from test_uprobes_hdf5_mpi import programs  # noqa: F401  (the fixture: built HDF5 and MPI-IO programs)

ebpf = pytest.mark.ebpf
PY = [sys.executable, "-I", "-S"]


def report(trace: Path) -> dict:
    return summarize([trace], jobs=1)


def files_by_path(s: dict) -> dict:
    return {f["path"]: f for f in s["files"]}


def compile_c(tmp_path: Path, name: str, source: str) -> Path:
    src = tmp_path / f"{name}.c"
    src.write_text(source)
    out = tmp_path / name
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    subprocess.run([cc, "-O1", "-o", str(out), str(src)], check=True, capture_output=True,
                   timeout=120)
    return out


TREE_PROGRAM = r"""
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
ins = sorted(os.path.join(d, f) for d, _, fs in os.walk(os.path.join(root, "in")) for f in fs)
def read_all(p):
    fd = os.open(p, os.O_RDONLY)
    while os.read(fd, 1000):
        pass
    os.close(fd)
kids = []
for i in range(n):
    pid = os.fork()
    if pid == 0:
        for p in ins:
            read_all(p)
        fd = os.open(os.path.join(root, "out", f"{i}.dat"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        for k in range(10):
            os.write(fd, b"w" * 1000)
        os.write(fd, b"w" * 7)
        os.close(fd)
        os._exit(0)
    kids.append(pid)
for pid in kids:
    os.waitpid(pid, 0)
for i in range(n):
    read_all(os.path.join(root, "out", f"{i}.dat"))
"""


@ebpf
def test_every_file_of_a_tree_read_and_written_by_several_processes_is_exact(site, tmp_path):
    """Three children read every file of a tree in 1,000-byte reads and each writes a file
    the parent then reads back: bytes, operations, processes, access pattern, creation and
    file system of each file follow from the known sizes."""
    root = tmp_path / "tree"
    sizes = {}
    for i, d in enumerate(("in/a", "in/b", "in/a/deep")):
        (root / d).mkdir(parents=True, exist_ok=True)
        for j in range(3):
            p = root / d / f"f{j}.bin"
            p.write_bytes(b"r" * (1500 * (i + 1) + 333 * j + 1))
            sizes[str(p)] = p.stat().st_size
    (root / "out").mkdir()
    n = 3
    log = tmp_path / "strace.log"
    # strace without -yy: resolving descriptors, strace would stat the files itself
    _, trace, _ = trace_command(tmp_path, ["strace", "-ff", "-qq", "-o", log, "-e",
                                           "trace=read,write,openat,close",
                                           *PY, "-c", TREE_PROGRAM, root, n])
    s = report(trace)
    files = files_by_path(s)
    # strace's view of the same run, file by file under the tree (-ff: a log per process,
    # so no call is split by another process's; descriptors followed from the openat)
    seen: dict = {}
    call = re.compile(r'^(read|write|openat|close)\((?:AT_FDCWD, "([^"]*)"|(\d+))[^=]*= (-?\d+)')
    for part in tmp_path.glob("strace.log.*"):
        fds: dict = {}
        for line in part.read_text().splitlines():
            m = call.match(line)
            if not m or int(m.group(4)) < 0:
                continue
            name, path = m.group(1), m.group(2)
            if name == "openat":
                fds[int(m.group(4))] = path
            else:
                path = fds.pop(int(m.group(3)), None) if name == "close" else fds.get(int(m.group(3)))
            if path is None or not path.startswith(str(root) + "/"):
                continue
            row = seen.setdefault(path, {"read": [0, 0], "write": [0, 0], "metadata": 0})
            if name in ("read", "write"):
                row[name][0] += 1
                row[name][1] += int(m.group(4))
            else:
                row["metadata"] += 1
    regular = set(sizes) | {str(root / "out" / f"{i}.dat") for i in range(n)}
    assert regular <= set(seen)                 # and the directories os.walk opened
    for path, row in seen.items():
        f = files[path]
        assert (f["ops"]["read"], f["bytes"]["read"]) == tuple(row["read"]), path
        assert (f["ops"]["write"], f["bytes"]["write"]) == tuple(row["write"]), path
        if path in regular:                     # (directories also get getdents, fstat)
            assert f["ops"]["metadata"] == row["metadata"], path
    target = subprocess.run(["findmnt", "-n", "-o", "TARGET,FSTYPE", "-T", str(root)],
                            capture_output=True, text=True, check=True).stdout.split()
    for path, size in sizes.items():
        f = files[path]
        reads = math.ceil(size / 1000) + 1                  # the last read returns 0
        assert f["kind"] == "reg"
        assert f["bytes"] == {"read": n * size, "write": 0}, path
        assert f["ops"]["read"] == n * reads and f["ops"]["write"] == 0
        assert f["ops"]["metadata"] == n * 2                 # openat and close per process
        assert f["processes"] == n and f["nodes"] == [s["nodes"][0]["host"]]
        assert f["access"]["read"] == {"consecutive": n * reads, "sequential": 0, "random": 0}
        assert f["read_extent_bytes"] == size and not f["created"]
        assert [1000, n * (size // 1000)] in f["common_sizes"]
        assert [0, n] in f["common_sizes"]                  # the reads at the end of file
        assert [f["mount"], f["fs_type"]] == target
        assert f["first_us"] <= f["last_us"]
    for i in range(n):
        f = files[str(root / "out" / f"{i}.dat")]
        assert f["bytes"] == {"read": 10007, "write": 10007}
        assert (f["ops"]["write"], f["ops"]["read"], f["ops"]["metadata"]) == (11, 12, 4)
        assert f["processes"] == 2 and f["created"]
        assert f["access"]["write"]["consecutive"] == 11
    counts = s["file_counts"]
    assert counts["created"] >= n and counts["read_write"] >= n and counts["read_only"] >= len(sizes)
    mounts = {(m["mount"], m["fs_type"]): m for m in s["data_per_mount"]}
    m = mounts[tuple(target)]
    assert m["bytes_written"] >= 3 * 10007 and m["bytes_read"] >= n * sum(sizes.values())
    # every file is in the JSON, the terminal keeps the top ones
    assert len(s["files"]) >= len(sizes) + n
    json.dumps(s)


FWRITE = r"""
#include <stdio.h>
#include <string.h>
int main(int argc, char **argv) {
    char buf[100];
    memset(buf, 'y', sizeof buf);
    FILE *f = fopen(argv[1], "w");
    if (!f) return 1;
    for (int i = 0; i < 1000; i++)
        if (fwrite(buf, 1, sizeof buf, f) != sizeof buf) return 2;
    return fclose(f) != 0;
}
"""


@ebpf
def test_stdio_above_posix_counts_each_byte_once(site, tmp_path):
    """1,000 fwrite of 100 bytes become a few 4 KiB writes: both layers see 100,000 bytes,
    the job and the file count them once; fwrite's time holds the write beneath it."""
    prog = compile_c(tmp_path, "fw", FWRITE)
    out = tmp_path / "fw.out"
    _, trace, _ = trace_command(tmp_path, [prog, out], sets=("posix", "stdio"))
    assert out.stat().st_size == 100_000
    s = report(trace)
    f = files_by_path(s)[str(out)]
    assert f["bytes"]["write"] == 100_000 and f["layer"] == "POSIX"
    assert f["ops"]["write"] == math.ceil(100_000 / 4096)   # glibc's 4 KiB buffer on a file
    layers = {lay["layer"]: lay for lay in s["layers"]}
    assert layers["STDIO"]["bytes_moved"] >= 100_000 and layers["POSIX"]["bytes_moved"] >= 100_000
    assert s["totals"]["bytes_written"] == 100_000          # the only file written
    assert s["totals"]["bytes_all_events"] >= 200_000       # what adding layers up gave
    assert s["totals"]["time_us"] < s["totals"]["time_all_events_us"]
    assert layers["STDIO"]["exclusive_us"] < layers["STDIO"]["inclusive_us"]
    chains = [[c["op"] for c in ch] for ch in s["layer_breakdown"]]
    assert ["STDIO/fwrite", "POSIX/write"] in chains or ["STDIO/fclose", "POSIX/write"] in chains


@ebpf
def test_a_pipe_wait_is_not_file_io(site, tmp_path):
    """`(sleep 1.5; echo x) | cat > f`: cat waits 1.5 s on its pipe. That wait is shown
    with the pipes, not in the job's file I/O time, and a finding says so."""
    out = tmp_path / "f"
    _, trace, _ = trace_command(tmp_path, ["sh", "-c", f"(sleep 1.5; echo x) | cat > {out}"])
    s = report(trace)
    assert files_by_path(s)[str(out)]["bytes"]["write"] == 2
    pipe = next(a for a in s["not_file_io"] if a["kind"] == "pipe")
    assert pipe["time_us"] >= 1.4e6 and pipe["bytes_read"] >= 2
    assert s["totals"]["time_us"] < 0.5e6
    assert s["totals"]["time_all_events_us"] >= 1.4e6       # the old total counted the wait
    assert "not_file_io" in {f["rule"] for f in s["findings"]}


RANDOM_READS = r"""
import os, random, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
rng = random.Random(7)
for _ in range(5000):
    os.pread(fd, 4, rng.randrange(0, (4 << 20) - 4))
os.close(fd)
"""
SEQUENTIAL_READS = r"""
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
while os.read(fd, 1 << 20):
    pass
os.close(fd)
"""


@ebpf
def test_small_random_reads_fire_findings_and_large_sequential_ones_do_not(site, tmp_path):
    data = tmp_path / "data.bin"
    data.write_bytes(random.Random(1).randbytes(4 << 20))
    (tmp_path / "r").mkdir()
    _, trace, _ = trace_command(tmp_path / "r", [*PY, "-c", RANDOM_READS, data])
    s = report(trace)
    rules = {f["rule"]: f for f in s["findings"]}
    assert {"small_io", "random_access"} <= set(rules), s["findings"]
    assert s["findings"][0]["severity"] in ("high", "warning")
    small = rules["small_io"]
    assert small["numbers"]["small_requests"] >= 5000 and str(data) == small["files"][0]
    f = files_by_path(s)[str(data)]
    assert f["common_sizes"][0] == [4, 5000] and f["ops"]["read"] == 5000
    acc = f["access"]["read"]
    assert sum(acc.values()) == 5000 and acc["random"] >= 1000
    assert rules["random_access"]["files"][0] == str(data)

    (tmp_path / "s").mkdir()
    _, trace, _ = trace_command(tmp_path / "s", [*PY, "-c", SEQUENTIAL_READS, data])
    s = report(trace)
    rules = {f["rule"] for f in s["findings"]}
    assert not rules & {"small_io", "random_access", "redundant_reads"}, s["findings"]
    f = files_by_path(s)[str(data)]
    assert f["bytes"]["read"] == 4 << 20 and f["ops"]["read"] == 5
    assert f["access"]["read"] == {"consecutive": 5, "sequential": 0, "random": 0}


# -- hand-made traces: exact nesting, and the same numbers however the work is split --

def nested_job(d: Path) -> Path:
    """Threads writing through HDF5 -> MPI-IO -> POSIX and reading after seeks."""
    d.mkdir(parents=True)
    b = TraceBuilder(d / "trace-alice-1234-node1.pfw.gz", member_lines=3)
    for k in range(20):
        t0 = k * 1000
        tid = 100 + k % 2
        # inner calls end first, so they come first in the trace
        b.op("pwrite64", pid=100, tid=tid, ts=t0 + 20, dur=60, path="/d/h5", size=4096,
             offset=k * 4096, ftype="reg")
        b.op("MPI_File_write_at", cat="MPIIO", pid=100, tid=tid, ts=t0 + 10, dur=80, size=4096)
        b.op("H5Dwrite", cat="HDF5", pid=100, tid=tid, ts=t0, dur=100)
        b.op("lseek", pid=200, ts=t0 + 200, dur=1, path="/d/in", offset=(k * 7919) % 5000,
             ret=(k * 7919) % 5000, ftype="reg")
        b.op("read", pid=200, ts=t0 + 300, dur=2, path="/d/in", size=3, ftype="reg")
        b.op("read", pid=200, ts=t0 + 400, dur=2, path="/d/in", size=3, ftype="reg")
        b.op("read", pid=300, ts=t0 + 500, dur=50, path="pipe:[7]", size=1, ftype="pipe")
    b.write()
    return d


def test_nesting_gives_exclusive_time_per_layer_and_counts_once(tmp_path):
    s = summarize([nested_job(tmp_path / "job")], jobs=1)
    layers = {lay["layer"]: lay for lay in s["layers"]}
    assert (layers["HDF5"]["inclusive_us"], layers["HDF5"]["exclusive_us"]) == (2000, 400)
    assert (layers["MPI-IO"]["inclusive_us"], layers["MPI-IO"]["exclusive_us"]) == (1600, 400)
    assert layers["POSIX"]["exclusive_us"] == layers["POSIX"]["inclusive_us"]
    chain = s["layer_breakdown"][0]
    assert [c["op"] for c in chain] == ["HDF5/H5Dwrite", "MPIIO/MPI_File_write_at", "POSIX/pwrite64"]
    assert [c["time_us"] for c in chain] == [2000, 1600, 1200]
    # H5Dwrite's 100 µs once per call, plus seeks and reads of /d/in; the pipe apart
    assert s["totals"]["time_us"] == 20 * (100 + 1 + 2 + 2)
    assert s["totals"]["bytes_written"] == 20 * 4096 and s["totals"]["bytes_read"] == 20 * 6
    assert {a["kind"]: a["time_us"] for a in s["not_file_io"]} == {"pipe": 1000}
    f = files_by_path(s)["/d/in"]
    acc = f["access"]["read"]
    assert sum(acc.values()) == 40 and acc["consecutive"] >= 20     # each second read follows


def test_nesting_and_access_patterns_are_identical_however_the_trace_is_split(tmp_path, monkeypatch):
    d = nested_job(tmp_path / "job")
    whole = summarize([d], jobs=1)
    monkeypatch.setattr(merge, "SPLIT_BYTES", 300)      # member ranges of a few events
    monkeypatch.setattr(merge, "WHOLE_WHEN_BALANCED", False)  # cut even so
    split = summarize([d], jobs=2)
    assert {k: v for k, v in split.items() if k != "traces"} == \
        {k: v for k, v in whole.items() if k != "traces"}


def test_lost_events_and_untraced_libraries_come_first():
    """The tracer's own losses outrank everything: they make the other numbers partial."""
    from datacrumbs.report.findings import findings
    from datacrumbs.report.model import Aggregate

    agg = Aggregate()
    agg.add_events([{"ph": "X", "name": "read", "cat": "POSIX", "pid": 1, "tid": 1, "ts": 1.0,
                     "dur": 1.0, "args": {"fhash": "\0/f", "size": 3, "ftype": "reg"}}], "n1")
    agg.add_run_summary("n1.summary.json", {"events_lost": 5, "names_lost": 2, "host": "n1"})
    s = agg.finalize()
    assert [f["rule"] for f in s["findings"]][:2] == ["events_lost", "names_lost"]
    assert s["findings"][0]["severity"] == "high" and s["findings"][0]["numbers"] == {"events_lost": 5}
    s["libraries"] = [{"path": "/opt/h5/libhdf5.so.310", "family": "hdf5", "status": "not attached",
                       "hosts": ["n1"]}, {"path": "/x.so", "family": "hdf5", "status": "attached"}]
    rows = [f for f in findings(s) if f["rule"] == "untraced"]
    assert len(rows) == 1 and rows[0]["files"] == ["/opt/h5/libhdf5.so.310"]


def test_a_call_enclosing_events_of_an_earlier_chunk_claims_them():
    """Events that nest nothing are kept as an array block; an event in a later chunk
    that started before the last of them still contains them, as in one chunk."""
    from datacrumbs.report.model import Aggregate

    def x(name, cat, ts, dur, size=None):
        args = {"fhash": "\0/f", "ftype": "reg"}
        if size is not None:
            args["size"] = size
        return {"ph": "X", "name": name, "cat": cat, "pid": 5, "tid": 5, "ts": ts, "dur": dur,
                "args": args}

    writes = [x("write", "POSIX", 10.0 * i, 2.0, 100) for i in range(50)]
    outer = x("fwrite", "STDIO", 395.0, 100.0, 1000)       # holds the writes at 400 .. 490
    one, two = Aggregate(), Aggregate()
    one.add_events(writes + [outer], "n1")
    two.add_events(writes, "n1")
    two.add_events([outer], "n1")
    s1, s2 = one.finalize(), two.finalize()
    assert s1["layers"] == s2["layers"] and s1["layer_breakdown"] == s2["layer_breakdown"]
    assert s1["layer_breakdown"][0][1] == {"op": "POSIX/write", "calls": 10, "time_us": 20.0}
    assert s2["totals"]["time_us"] == 40 * 2.0 + 100.0
    assert s2["totals"]["bytes_written"] == 5000               # fwrite's bytes not again


@ebpf
def test_hdf5_over_posix_gives_the_call_chain_and_counts_bytes_once(site, bpf_object, programs,
                                                                    tmp_path):
    """Real HDF5 (Debian's serial library) writing 1 MiB with one H5Dwrite: the chain
    H5Dwrite -> pwrite64 with the time spent below, the file's bytes from POSIX only."""
    from test_uprobes_hdf5_mpi import HDF5_ELEMENTS
    from workloads import daemon_readback as rb

    h5 = tmp_path / "data.h5"
    nbytes = HDF5_ELEMENTS * 4
    _, trace, _ = trace_command(tmp_path, [programs["hdf5"], h5, HDF5_ELEMENTS],
                                sets=("hdf5", "posix"))
    s = report(trace)
    fh = {r["args"]["value"]: r["args"]["name"] for r in rb.records(trace) if r["name"] == "FH"}
    events = [e for e in rb.events(trace) if e.get("ph") == "X"]
    posix_written = sum(e["args"].get("size", 0) for e in events if e["cat"] == "POSIX"
                        and e["name"] in ("write", "pwrite64", "writev", "pwritev")
                        and fh.get(e["args"].get("fhash")) == str(h5))
    f = files_by_path(s)[str(h5)]
    assert f["bytes"]["write"] == posix_written >= nbytes and f["layer"] == "POSIX"
    (h5write,) = [e for e in events if e["name"] == "H5Dwrite"]
    chain = next(c for c in s["layer_breakdown"] if c[0]["op"] == "HDF5/H5Dwrite")
    assert chain[0]["time_us"] == round(h5write["dur"], 3)
    assert chain[1]["op"] == "POSIX/pwrite64" and 0 < chain[1]["time_us"] <= chain[0]["time_us"]
    below = [e for e in events if e["name"] == "pwrite64" and e["tid"] == h5write["tid"]
             and h5write["ts"] <= e["ts"] and e["ts"] + e["dur"] <= h5write["ts"] + h5write["dur"]]
    assert chain[1]["calls"] == len(below) and sum(e["args"]["size"] for e in below) == nbytes
    layers = {lay["layer"]: lay for lay in s["layers"]}
    assert layers["HDF5"]["exclusive_us"] < layers["HDF5"]["inclusive_us"]
    assert s["totals"]["time_us"] < s["totals"]["time_all_events_us"]
