"""The compiled line formatter (trace/lines.c) writes exactly the bytes of the Python
f-string path it replaces: real event batches of real programs, and every column's edge
cases, through both, compared byte for byte; its build, its refusal of an unsafe or
foreign library, and the daemon's use of it."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from datacrumbs.probes.catalog import load_catalog, select_probes
from datacrumbs.trace import fastlines
from datacrumbs.trace.writer import OPS_DTYPE, TraceWriter
from datacrumbs.tracer.daemon import EventConverter
from datacrumbs.tracer.engine import EVENT_DTYPE, Engine
from datacrumbs.tracer.paths import FdPaths
from datacrumbs.tracer.scope import Scope

from fixtures.common import DEV_BPF_OBJECT
from fixtures.tracing import Workload

HEADER = {"version": "0.1.0", "job": "77", "user": "alice", "host": "node1", "mode": "trace",
          "clock": "realtime-us", "ts": 1764079200_000_000}
T0_NS = 1764079200_123_456_789


@pytest.fixture(scope="module")
def formatter(tmp_path_factory) -> fastlines.LineFormatter:
    """The library built by the real build code, loaded as the daemon loads it."""
    out = tmp_path_factory.mktemp("lines") / fastlines.LIBRARY_NAME
    fastlines.build_library(out)
    lines = fastlines.load(out)
    assert lines is not None
    return lines


def _writers(tmp_path: Path, probes: list[dict], formatter, **kw):
    """A writer formatting in Python and one formatting in C, same header and probes."""
    out = []
    for name, lines in (("python", None), ("compiled", formatter)):
        w = TraceWriter(tmp_path / f"{name}.pfw.gz", header=HEADER, lines=lines,
                        clock=lambda: 0.0, **kw)
        w.set_probes(probes)
        out.append(w)
    return out


def _same_files(py: TraceWriter, c: TraceWriter) -> list[bytes]:
    py.close()
    c.close()
    a, b = gzip.open(py.path).read(), gzip.open(c.path).read()
    if a != b:
        la, lb = a.split(b"\n"), b.split(b"\n")
        first = next(i for i, (x, y) in enumerate(zip(la, lb)) if x != y) \
            if any(x != y for x, y in zip(la, lb)) else min(len(la), len(lb))
        pytest.fail(f"line {first} differs:\npython  : {la[first:first + 1]}\ncompiled: "
                    f"{lb[first:first + 1]} ({len(la)} and {len(lb)} lines)")
    assert (py.events_written, py.bytes_written > 0) == (c.events_written, True)
    return a.split(b"\n")


def test_real_batches_of_real_programs_are_formatted_identically(tmp_path, bpf_object,
                                                                   formatter):
    """A shell doing ordinary file work (cp, cat through pipes, dd, failing opens, a
    copy with copy_file_range, python with threads) under the real engine: every batch
    it delivered, converted once, goes through both writers; the files are equal byte for
    byte, and the batches did hold the cases the formatter must get right."""
    probes = select_probes(load_catalog(), ["posix", "stdio"])
    data = tmp_path / "data"
    data.mkdir()
    script = f"""
    read go
    cd {data}
    dd if=/dev/zero of=big bs=4096 count=300 status=none
    cp big copy
    cat big | cat > piped
    cat /nonexistent-{os.getpid()} 2>/dev/null
    ls -la {data} > listing
    head -c 1000 big > 'é ü "quoted" name'
    python3 -c "
import os, threading
def work(i):
    fd = os.open('t%d' % i, os.O_CREAT | os.O_WRONLY)
    for k in range(200):
        os.pwrite(fd, b'x' * (k + 1), k * 512)
    os.close(fd)
ts = [threading.Thread(target=work, args=(i,)) for i in range(3)]
[t.start() for t in ts]; [t.join() for t in ts]
"
    sync
    """
    w = Workload(["sh", "-c", script])
    batches = []
    with Engine(probes, Scope.for_pids([w.pid], follow=True), bpf_object=bpf_object) as eng:
        eng.attach()
        w.go()
        deadline = time.monotonic() + 120
        while w.running():
            assert time.monotonic() < deadline
            batch = eng.poll(50)
            if batch is not None:
                batches.append(batch)
        w.wait()
        while (batch := eng.poll(0)) is not None:
            batches.append(batch)
        assert eng.lost() == 0
        names = eng.process_names()
        conv = EventConverter(list(eng.probes), FdPaths(eng.resolve_fd))
        py, c = _writers(tmp_path, list(eng.probes), formatter, member_events=2000)
        seen = {"errno": 0, "fd2": 0, "pids": set(), "tids": set(), "submicro": 0,
                "kinds": set(), "offsets": set(), "ret_none": 0}
        for batch in batches:
            # the records' columns: one pass in C, and numpy's pass per column
            in_c, in_numpy = (np.empty(len(batch.events), OPS_DTYPE) for _ in range(2))
            assert formatter.convert(batch.events, in_c, batch.kinds, batch.kinds2,
                                     conv._errno_kind)
            conv._columns(batch.events, in_numpy, batch.kinds, batch.kinds2)
            assert in_c.tobytes() == in_numpy.tobytes()
            ops, paths, paths2, args = conv.convert_rows(batch)
            for pid in sorted(set(ops["pid"].tolist())):
                for wr in (py, c):
                    if pid in names:
                        wr.process_name(pid, names[pid])
            for wr in (py, c):
                wr.write_ops(ops, paths, paths2, args)
            seen["errno"] += int((ops["errno"] != 0).sum())
            seen["fd2"] += int((ops["fd2"] >= 0).sum())
            seen["pids"] |= set(ops["pid"].tolist())
            seen["tids"] |= set(ops["tid"].tolist())
            seen["submicro"] += int((ops["dur_ns"] < 1000).sum())
            seen["kinds"] |= set(ops["kind"].tolist())
            seen["offsets"] |= set(ops["offset"].tolist())
    lines = _same_files(py, c)
    events = [json.loads(x) for x in lines[1:] if x.startswith(b'{"id"') and b'"ph":"X"' in x]
    assert len(events) == sum(len(b.events) for b in batches) > 2000
    # the batches held what a formatter can get wrong
    assert seen["errno"] >= 1 and seen["fd2"] >= 1, seen
    assert len(seen["pids"]) >= 5 and len(seen["tids"]) > len(seen["pids"]), seen
    assert seen["submicro"] >= 1 and len(seen["kinds"]) >= 3 and len(seen["offsets"]) >= 200
    assert any("fhash2" in e["args"] for e in events)
    assert any(isinstance(e["dur"], float) and 0 < e["dur"] < 1 for e in events)
    fh = {x for x in lines if b'"name":"FH"' in x}
    assert any('é ü \\"quoted\\" name'.encode() in x for x in fh), fh


def _probes() -> list[dict]:
    return [
        {"id": "posix.write", "kind": "syscall", "target": "write", "category": "POSIX"},
        {"id": "posix.openat", "kind": "syscall", "target": "openat", "category": "POSIX",
         "args": {"fd": 0, "path": 1, "flags": 2}},
        {"id": "stdio.fwrite", "kind": "uprobe", "target": "fwrite", "category": "STDIO"},
        {"id": "blk.done", "kind": "tracepoint", "target": "block:block_rq_complete",
         "category": "BLOCK"},
        {"id": "posix.copy_file_range", "kind": "syscall", "target": "copy_file_range",
         "category": "POSIX", "args": {"fd": 0, "fd2": 2}},
        {"id": "io_uring.write", "kind": "async", "target": "io_uring:write",
         "category": "IO_URING"},
        {"id": "hdf5.H5Dwrite", "kind": "uprobe", "target": "H5Dwrite", "category": "HDF5",
         "discovered": True, "library": "/opt/h5py/libhdf5-1a2b.so"},
    ]


def _edge_ops(n: int, rng) -> np.ndarray:
    ops = np.zeros(n, OPS_DTYPE)
    ops["ts_ns"] = T0_NS + np.cumsum(rng.integers(0, 5000, n))
    ops["ts_ns"][:3] = [0, 999, 1000][:n]          # the epoch and around a microsecond
    ops["dur_ns"] = rng.choice([-5, 0, 1, 999, 1000, 1001, 123456789, 2**62], n)
    ops["pid"] = rng.choice([1, 4242, 2**31 - 1, 4294967295], n)
    ops["tid"] = ops["pid"] + rng.integers(0, 3, n)
    ops["probe"] = rng.integers(0, 7, n)
    ops["ret"] = rng.choice([-1, 0, 7, 2**63 - 1], n)
    ops["errno"] = np.where(rng.random(n) < 0.2, rng.integers(1, 4096, n), 0)
    ops["fd"] = rng.choice([-1, 0, 3, 1023], n)
    ops["count"] = rng.choice([-1, 0, 16, 10**15], n)
    ops["offset"] = rng.choice([-1, 0, 4096, 2**63 - 1, -2**63], n)
    ops["size"] = rng.choice([-1, 0, 16, 10**12], n)
    ops["fd2"] = rng.choice([-1, 5], n)
    ops["flags"] = rng.choice([0, 0o100 | 0o1000, 2**32 - 1], n)
    ops["kind"] = rng.integers(0, 10, n)
    ops["kind2"] = rng.choice([0, 1, 3], n)
    return ops


def test_every_column_edge_case_is_formatted_identically(tmp_path, formatter):
    """Negative, zero and 64-bit extreme values in every column, errors, rows without a
    return value (tracepoints), second descriptors with and without a name, flags, every
    descriptor kind, extra args (HDF5 names, USDT and kernel numbers), paths with quotes, newlines, non-UTF-8 bytes and
    None, many processes and threads, batches split across members: identical bytes."""
    rng = np.random.default_rng(7)
    py, c = _writers(tmp_path, _probes(), formatter, member_events=500)
    names = ["/data/a", '/data/"q"\n', "/data/\udcff-raw", None, "/ü/ß"]
    for size in (1, 2, 7, 300, 1200):
        ops = _edge_ops(size, rng)
        paths = [names[i] for i in rng.integers(0, len(names), size)]
        paths2 = [names[i] if ops["fd2"][k] >= 0 else None
                  for k, i in enumerate(rng.integers(0, len(names), size))]
        # HDF5 object names (text), USDT arguments and kernel-layer inodes (numbers),
        # one dict shared by several rows as the kernel layer's are
        shared = {"ino": 1 << 40, "dev": "7:2", "async": 1}
        args = [{"dataset": f"/grid/t{k % 3}", "é": "x\"y"} if k % 4 == 0 else
                {"provider": "myprov", "arg0": -(1 << 63), "arg1": k, "arg2_str": "a\"b"}
                if k % 4 == 1 else shared if k % 4 == 2 else None for k in range(size)]
        for wr in (py, c):
            wr.write_ops(ops, paths, paths2, args)
            wr.write_ops(ops, None, None, None)
            wr.write_ops(ops[:1], [paths[0]])
    # uniform batches: one probe, one file, constant columns (the daemon's common case)
    run = _edge_ops(4000, rng)
    for key, value in (("probe", 0), ("pid", 4242), ("tid", 4243), ("fd", 3), ("count", 16),
                       ("size", 16), ("ret", 16), ("errno", 0), ("offset", -1),
                       ("fd2", -1), ("kind", 1), ("kind2", 0), ("flags", 0)):
        run[key] = value
    for wr in (py, c):
        wr.write_ops(run, ["/data/run"] * len(run))
        wr.write_unsent([(T0_NS, 4242, 0, 3, 48, 1500)])
        wr.write_counters([(T0_NS + 7, 4242, 1, 2, 0, 999)])
        wr.process_name(4242, "ior")
    lines = _same_files(py, c)
    assert len(lines) > 7000
    for line in lines[1:-2]:     # every line is JSON (a non-UTF-8 name as it was given)
        json.loads(line.decode("utf-8", "surrogateescape"))


def test_a_size_cap_cuts_the_compiled_lines_where_python_cut_its_own(tmp_path, formatter):
    """max_bytes with blocks of compiled lines: the member that does not fit is cut at the
    same line, the events counted the same, the closing member written."""
    rng = np.random.default_rng(3)
    py, c = _writers(tmp_path, _probes(), formatter, member_events=3000, max_bytes=60_000)
    for _ in range(6):
        ops = _edge_ops(2500, rng)
        for wr in (py, c):
            wr.write_ops(ops, ["/data/a"] * len(ops))
    assert py.capped_at and c.capped_at
    assert (py.events_written, py.events_dropped) == (c.events_written, c.events_dropped)
    lines = _same_files(py, c)
    assert lines[-2] == b"]" and 0 < py.events_written < 15000


def test_the_daemon_writes_with_the_formatter_beside_its_bpf_object(tmp_path):
    """`datacrumbs build-bpf` builds the formatter beside the BPF object, and that is
    where TraceRun looks for it (tests and daemon use build/bpf/)."""
    assert fastlines.library_path(DEV_BPF_OBJECT) == DEV_BPF_OBJECT.parent / "datacrumbs-lines.so"
    out = tmp_path / "obj" / "datacrumbs.bpf.o"
    out.parent.mkdir()
    # the build step as the CLI runs it, without rebuilding the BPF object
    built = fastlines.build_library(fastlines.library_path(out))
    assert built.is_file() and fastlines.load(built) is not None


def test_an_unsafe_or_foreign_library_is_not_loaded(tmp_path, caplog):
    """A library others may write, or one of another ABI, is refused with one log line
    and the writer formats in Python; a missing one is only noted."""
    ok = fastlines.build_library(tmp_path / "ok" / fastlines.LIBRARY_NAME)
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    shutil.copy(ok, open_dir / fastlines.LIBRARY_NAME)
    (open_dir / fastlines.LIBRARY_NAME).chmod(0o666)
    assert fastlines.load(open_dir / fastlines.LIBRARY_NAME) is None
    assert "writable by others" in caplog.text
    other = tmp_path / "other"
    other.mkdir()
    src = other / "abi.c"
    src.write_text("int dc_lines_abi(void) { return 99; }\n")
    subprocess.run([shutil.which("cc") or "clang", "-shared", "-fPIC", "-o",
                    str(other / fastlines.LIBRARY_NAME), str(src)], check=True)
    assert fastlines.load(other / fastlines.LIBRARY_NAME) is None
    assert "ABI 99" in caplog.text
    assert fastlines.load(tmp_path / "missing" / fastlines.LIBRARY_NAME) is None
    # the writer still writes, in Python
    w = TraceWriter(tmp_path / "t.pfw.gz", header=HEADER, lines=None)
    w.set_probes(_probes())
    w.write_ops(_edge_ops(10, np.random.default_rng(1)), None)
    w.close()
    assert w.events_written == 10


@pytest.mark.parametrize("built", [True, False])
def test_the_daemons_run_formats_with_the_library_beside_its_bpf_object(bpf_object, tmp_path,
                                                                         built):
    """TraceRun (the daemon's and `datacrumbs trace`'s loop) loads the formatter built
    beside the engine's BPF object, and its trace of a real workload reads back whole:
    every write of the workload, with its file; with no formatter there, the same trace
    in Python."""
    from datetime import datetime, timezone

    if not built:       # a BPF object with no formatter beside it
        alone = tmp_path / "alone"
        alone.mkdir()
        shutil.copy(bpf_object, alone / bpf_object.name)
        bpf_object = alone / bpf_object.name

    from datacrumbs.tracer.daemon import TraceRun
    from datacrumbs.users import lookup_user
    from workloads import daemon_readback as rb

    cc = shutil.which("cc") or "clang"
    binary = tmp_path / "daemon_writes"
    subprocess.run([cc, "-O2", "-o", str(binary),
                    str(Path(__file__).parent / "workloads" / "daemon_writes.c")], check=True)
    out = tmp_path / "out"
    out.mkdir()
    dir_fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    target = tmp_path / "f.dat"
    child = subprocess.Popen([str(binary), str(target), "30000", "16"], stdin=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, env=dict(os.environ, DC_WAIT_STDIN="1"))
    write = [p for p in select_probes(load_catalog(), ["posix"]) if p["target"] == "write"]

    class UntilExit:
        rounds = 0
        signal = None

        @property
        def requested(self):
            if child.poll() is None:
                return False
            self.rounds += 1
            return self.rounds > 1

    def go():
        child.stdin.write(b"g\n")
        child.stdin.close()

    try:
        with Engine(write, Scope.for_pids([child.pid]), bpf_object=bpf_object) as eng:
            report = eng.attach()
            run = TraceRun(eng, report, run_id="79", user=lookup_user("root"), host="h",
                           mode="trace", interval_ms=1000, capture_paths=True, dir_fd=dir_fd,
                           start=datetime.now(timezone.utc))
            if built:
                assert run.writer.formatter.path == fastlines.library_path(bpf_object)
                assert run.converter.fast is run.writer.formatter
            else:
                assert run.writer.formatter is None and run.converter.fast is None
            run.loop(UntilExit(), go)
    finally:
        os.close(dir_fd)
        if child.poll() is None:
            child.kill()
        child.wait()
    assert child.returncode == 0
    # 30,000 writes to the file and the workload's "done" line to /dev/null
    assert run.summary_doc["events_written"] == 30001 and run.summary_doc["events_lost"] == 0
    writes = [e for e in rb.events(out / run.trace_name) if e["name"] == "write"]
    assert len(writes) == 30001
    assert sum(e["args"].get("size") == 16 for e in writes) == 30000
    assert run.summary_doc["files"][str(target)] == {"count": 30000, "bytes": 480000,
                                                     "time_us": pytest.approx(
        sum(e["dur"] for e in writes if e["args"].get("size") == 16), abs=0.01)}


def test_records_to_rows_in_c_match_numpy_at_every_extreme(formatter):
    """dc_convert against EventConverter's numpy columns on random records with every
    field at its extremes (negative returns down to INT64_MIN, counts of 0 and 2**64-1,
    times above 2**63), strided as the ring's copies are; a probe the tables do not know
    sends the batch back to numpy, which judges it."""
    rng = np.random.default_rng(11)
    conv = EventConverter(_probes(), FdPaths(None))
    n = 5000
    raw = rng.integers(0, 256, n * 88, dtype=np.uint8)
    ev = np.ndarray((n,), EVENT_DTYPE, buffer=raw, offset=8, strides=(88,))
    ev["probe"] = rng.integers(0, len(_probes()), n)
    ev["ret"][:6] = [-1, -4095, -4096, -2**63, 2**63 - 1, 0]
    ev["probe"][:6] = 0             # a system call's: its negative returns are errnos
    ev["count"][:3] = [0, 2**64 - 1, 1]
    kinds = rng.integers(0, 10, n).astype(np.uint8)
    for k, k2 in ((kinds, kinds[::-1].copy()), (None, None)):
        in_c, in_numpy = (np.empty(n, OPS_DTYPE) for _ in range(2))
        assert formatter.convert(ev, in_c, k, k2, conv._errno_kind)
        conv._columns(ev, in_numpy, k, k2)
        assert in_c.tobytes() == in_numpy.tobytes()
    assert in_c["errno"][:6].tolist() == [1, 4095, 4095, 0, 0, 0]
    assert in_c["ret"][:6].tolist() == [-1, -1, -1, -1, 2**63 - 1, 0]
    ev["probe"][7] = 99
    assert not formatter.convert(ev, np.empty(n, OPS_DTYPE), None, None, conv._errno_kind)


@pytest.mark.parametrize("files", [1, 3, 8, 9, 40])
def test_interleaved_processes_get_their_own_files(files):
    """Rows of several processes and descriptors interleaved (ranks writing at once): each
    row is named by its own (pid, fd), whether the converter compares a few keys or sorts
    many, and rows without a descriptor stay unnamed."""
    n = 4000
    rng = np.random.default_rng(files)
    pid = 1000 + rng.integers(0, files, n)
    fd = 3 + (pid % 2)
    fd[::97] = -1
    table = FdPaths(lambda p, f: f"/scratch/rank{p}/fd{f}")
    conv = EventConverter(_probes(), table)
    ops = np.zeros(n, OPS_DTYPE)
    ops["pid"], ops["tid"], ops["fd"], ops["fd2"] = pid, pid, fd, -1
    got = conv._paths(ops, {})
    want = [None if f < 0 else f"/scratch/rank{p}/fd{f}" for p, f in zip(pid.tolist(),
                                                                         fd.tolist())]
    assert got == want


def test_uniform_columns_in_c_match_numpy(formatter):
    """dc_uniform's one pass says which columns hold one value exactly as numpy does,
    also when only the last row differs, for every column it covers."""
    rng = np.random.default_rng(5)
    base = _edge_ops(1, rng)
    for name in fastlines.UNIFORM_COLUMNS:
        for n in (1, 2, 1000):
            ops = np.repeat(base, n)
            if n > 1:
                ops[name][-1] = ops[name][0] + 1     # only the last row differs
            want = {k: int(ops[k][0]) for k in fastlines.UNIFORM_COLUMNS
                    if (ops[k] == ops[k][0]).all()}
            assert formatter.uniform(ops) == want, (name, n)
            assert (name in want) == (n == 1)
    assert formatter.uniform(np.zeros(0, OPS_DTYPE)) is None


def test_a_huge_drain_is_written_in_parts_that_keep_every_rows_names():
    """A drain of more than CHUNK_EVENTS events (a ring full after a stall) is converted in
    parts; each part keeps its rows' paths, names and kinds at the right rows."""
    from datacrumbs.tracer.daemon import CHUNK_EVENTS, _parts
    from datacrumbs.tracer.engine import EventBatch

    n = 2 * CHUNK_EVENTS + 123
    ev = np.zeros(n, EVENT_DTYPE)
    ev["ts_ns"] = np.arange(n)
    rows = [0, CHUNK_EVENTS - 1, CHUNK_EVENTS, 2 * CHUNK_EVENTS + 5, n - 1]
    batch = EventBatch(events=ev, paths={r: f"/p{r}" for r in rows},
                       names={r: [(3, f"/n{r}")] for r in rows},
                       kinds=(np.arange(n) % 7).astype(np.uint8), kinds2=None)
    parts = list(_parts(batch, CHUNK_EVENTS))
    assert [len(p.events) for p in parts] == [CHUNK_EVENTS, CHUNK_EVENTS, 123]
    start = 0
    for part in parts:
        for k, path in part.paths.items():
            assert path == f"/p{start + k}" and part.names[k] == [(3, f"/n{start + k}")]
            assert part.events["ts_ns"][k] == start + k
        assert (part.kinds == (np.arange(start, start + len(part.events)) % 7)).all()
        assert part.kinds2 is None
        start += len(part.events)
    assert sum(len(p.paths) for p in parts) == len(rows)
    small = EventBatch(events=ev[:10])
    assert list(_parts(small, CHUNK_EVENTS)) == [small]


def test_a_link_to_a_library_in_a_directory_others_may_write_is_not_loaded(tmp_path, caplog):
    """The checks follow a link to the file it leads to: a root-owned link beside the BPF
    object cannot lend its directory's safety to a file in a directory anyone may write."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    target = fastlines.build_library(shared / "real.so")
    safe = tmp_path / "safe"
    safe.mkdir()
    (safe / fastlines.LIBRARY_NAME).symlink_to(target)
    assert fastlines.load(safe / fastlines.LIBRARY_NAME) is None
    assert "writable by others" in caplog.text
