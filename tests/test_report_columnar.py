"""The report's columnar path (pyarrow columns, report/columnar.py) gives the dict path's
numbers field by field of the summary (--json): on a hand-made trace with every kind of
event the analysis treats apart (opens with flags, seeks, offsets, copies, nesting over
three layers, errors, pipes, counters, hostile lines), split or whole, and on a real
traced program. Each test also checks that the fast path did read most of the events,
so it cannot pass by falling back everywhere."""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import pytest

from datacrumbs.report import columnar, merge, model
from datacrumbs.report.merge import summarize
from fixtures.traces import TraceBuilder
from fixtures.tracing import trace_command

ebpf = pytest.mark.ebpf
O_WRONLY, O_CREAT, O_APPEND = 0o1, 0o100, 0o2000


def rich_trace(path: Path, n: int, seed: int, *, host: str = "node1", hostile: bool = True) -> Path:
    """About ``n`` events of 8 threads in 4 processes over 30 files, ordered as a tracer
    writes them (each event when it ends)."""
    rng = random.Random(seed)
    b = TraceBuilder(path, host=host, member_lines=997)
    pids = [100, 200, 300, 400]
    for p in pids:
        b.process(p, f"rank{p // 100}")
    clock = {(p, t): 10.0 * p for p in pids for t in (p, p + 1)}
    sizes = [1, 7, 512, 4096, 65536, 1 << 20]
    k = 0
    while b.event_lines < n:
        pid = rng.choice(pids)
        tid = pid + rng.randrange(2)
        t = clock[(pid, tid)] = clock[(pid, tid)] + rng.choice([0.5, 1.25, 3.0, 10.001])
        f = f"/scratch/job/f{rng.randrange(30)}.dat"
        r = rng.random()
        k += 1
        if r < 0.08:
            flags = rng.choice([0, O_WRONLY | O_CREAT, O_WRONLY | O_APPEND, O_WRONLY | O_CREAT | O_APPEND])
            b.op("openat", pid=pid, tid=tid, ts=t, dur=2.5, path=f, ret=3, flags=flags, ftype="reg")
        elif r < 0.12:
            b.op("lseek", pid=pid, tid=tid, ts=t, dur=0.3, path=f, ret=rng.choice([0, 4096, 12345]),
                 ftype="reg")
        elif r < 0.45:
            sz = rng.choice(sizes)
            b.op(rng.choice(["read", "write"]), pid=pid, tid=tid, ts=t, dur=1.0 + sz / 1e4, path=f,
                 size=sz, count=sz, ftype="reg")
        elif r < 0.55:
            sz = rng.choice(sizes)
            b.op(rng.choice(["pread64", "pwrite64"]), pid=pid, tid=tid, ts=t, dur=2.0, path=f,
                 size=sz, count=sz, offset=rng.choice([0, 4096, 8192, 100, 1 << 30]), ftype="reg")
        elif r < 0.60:
            f2 = f"/scratch/job/copy{rng.randrange(5)}"
            b.op("copy_file_range", pid=pid, tid=tid, ts=t, dur=5.0, path=f, size=4096, count=4096,
                 fhash2=b._hash("FH", f2, pid), ftype="reg", ftype2="reg")
        elif r < 0.70:                          # H5Dwrite > MPI_File_write_at > pwrite64
            b.op("pwrite64", pid=pid, tid=tid, ts=t + 2, dur=3.0, path=f, size=4096, count=4096,
                 offset=4096 * (k % 50), ftype="reg")
            b.op("MPI_File_write_at", cat="MPIIO", pid=pid, tid=tid, ts=t + 1, dur=5.0, path=f,
                 size=4096, count=4096)
            b.op("H5Dwrite", cat="HDF5", pid=pid, tid=tid, ts=t, dur=7.0, size=4096)
            clock[(pid, tid)] = t + 7
        elif r < 0.75:                          # fwrite > write
            b.op("write", pid=pid, tid=tid, ts=t + 0.5, dur=1.0, path=f, size=8192, count=8192,
                 ftype="reg")
            b.op("fwrite", cat="STDIO", pid=pid, tid=tid, ts=t, dur=2.0, path=f, size=8192)
            clock[(pid, tid)] = t + 2
        elif r < 0.80:
            b.op("openat", pid=pid, tid=tid, ts=t, dur=1.5, path=f"/nope/{k % 7}", errno=2)
        elif r < 0.85:
            b.op("read", pid=pid, tid=tid, ts=t, dur=900.0, path="pipe:[4242]", size=10,
                 count=4096, ftype="pipe")
        elif r < 0.90:
            b.op("mmap", pid=pid, tid=tid, ts=t, dur=0.7, size=-1)
        else:
            b.op("close", pid=pid, tid=tid, ts=t, dur=0.2, path=f, ret=0, ftype="reg")
        if hostile and k % 6000 == 0:           # lines the fast path must leave to the dicts
            b.raw(rng.choice([
                '{"id":1,"name":"write","cat":"POSIX","pid":"x","tid":1,"ts":5,"dur":1,"ph":"X",'
                '"args":{"size":3}}',
                'not json at all',
                '{"name":"write","cat":"POSIX","pid":100,"tid":100,"ts":7,"dur":1,"ph":"X",'
                '"args":{"size":3,"fhash2":null}}',
                '{"name":"read","ph":"X","pid":100,"ts":1}{"name":"read","ph":"X","pid":100}',
                '{"name":"write","cat":"POSIX","pid":100,"tid":100,"ts":8,"dur":1.5,"ph":"X",'
                '"args":{"size":99999999999999999999}}',
                '{"name":"openat","cat":"POSIX","pid":100,"tid":100,"ts":9,"dur":1,"ph":"X",'
                '"args":{"fname":"/scratch/job/f1.dat","ret":99999999999999999999,"flags":65}}',
            ]), event=True)
            b.counter("write", pid=pid, ts=t, count=rng.randrange(1, 50), nbytes=4096,
                      time_us=12.5)
    return b.write()


def both(paths: list, monkeypatch, *, chunk: int = 1500, block: int | None = None
         ) -> tuple[dict, dict, dict]:
    """(columnar summary, dict summary, chunks read by kind) of ``paths``, one process;
    ``block``: bytes parsed at once by both paths (the reader's PARSE_BLOCK)."""
    from datacrumbs.trace import reader

    monkeypatch.setattr(merge, "CHUNK_EVENTS", chunk)
    if block:
        monkeypatch.setattr(reader, "PARSE_BLOCK", block)
        monkeypatch.setattr(columnar, "PARSE_BLOCK", block)
    kinds = {"table": 0, "dicts": 0}
    real = columnar.chunks

    def counted(reader):
        for kind, chunk_ in real(reader):
            kinds[kind] += 1
            yield kind, chunk_

    monkeypatch.setattr(columnar, "chunks", counted)
    monkeypatch.setattr(model, "COLUMNAR", True)
    fast = summarize(paths, jobs=1)
    monkeypatch.setattr(model, "COLUMNAR", False)
    slow = summarize(paths, jobs=1)
    monkeypatch.setattr(model, "COLUMNAR", True)
    return fast, slow, kinds


def assert_same(fast: dict, slow: dict) -> None:
    """Field by field, so a difference names its place."""
    assert fast.keys() == slow.keys()
    for key in slow:
        assert json.dumps(fast[key], sort_keys=True, default=str) == \
            json.dumps(slow[key], sort_keys=True, default=str), key


def test_every_kind_of_event_gives_the_dict_paths_numbers(tmp_path, monkeypatch):
    trace = rich_trace(tmp_path / "trace-a-1-node1.pfw.gz", 40_000, seed=1)
    fast, slow, kinds = both([trace], monkeypatch)
    assert_same(fast, slow)
    assert kinds["table"] >= 3 and kinds["dicts"] >= 1, kinds
    # the analysis saw what the trace holds: nesting, copies, creates, pipes, counters
    assert [c["op"] for c in fast["layer_breakdown"][0]] == \
        ["HDF5/H5Dwrite", "MPIIO/MPI_File_write_at", "POSIX/pwrite64"]
    assert fast["file_counts"]["created"] > 0 and fast["not_file_io"][0]["kind"] == "pipe"
    assert any(f["path"].startswith("/scratch/job/copy") for f in fast["files"])
    assert fast["totals"]["events"] >= 39_900 and fast["traces"][0]["bad_lines"] > 0
    assert any(o["from_counters"] for o in fast["operations"])


def test_clean_trace_is_read_by_the_fast_path_only_and_identically(tmp_path, monkeypatch):
    trace = rich_trace(tmp_path / "trace-a-1-node1.pfw.gz", 30_000, seed=2, hostile=False)
    fast, slow, kinds = both([trace], monkeypatch)
    assert_same(fast, slow)
    assert kinds == {"table": kinds["table"], "dicts": 0} and kinds["table"] >= 5, kinds


def split_summary(paths: list) -> dict:
    """The units a two-worker run makes, summarised in this process and merged in order."""
    from datacrumbs.report.model import Aggregate

    agg = Aggregate()
    for unit in merge.plan_units([Path(p) for p in paths], 2, agg):
        agg.merge(merge.summarize_unit(unit))
    return agg.finalize()


def test_split_over_workers_and_two_nodes_give_the_dict_paths_numbers(tmp_path, monkeypatch):
    paths = [rich_trace(tmp_path / f"trace-a-1-node{i}.pfw.gz", 20_000, seed=10 + i,
                        host=f"node{i}") for i in (1, 2)]
    monkeypatch.setattr(merge, "SPLIT_BYTES", 20_000)     # member ranges of ~1,500 events
    monkeypatch.setattr(merge, "CHUNK_EVENTS", 1000)
    monkeypatch.setattr(model, "COLUMNAR", False)
    slow = split_summary(paths)
    monkeypatch.setattr(model, "COLUMNAR", True)
    fast = split_summary(paths)
    assert len(fast["traces"]) == 2
    assert_same(fast, slow)
    # the worker processes (columnar, their default chunks) merge the same units the same way
    assert_same(summarize(paths, jobs=2), fast)


def test_torn_trace_keeps_the_same_lines_on_both_paths(tmp_path, monkeypatch):
    whole = rich_trace(tmp_path / "whole.pfw.gz", 20_000, seed=3, hostile=False)
    data = whole.read_bytes()
    for cut in (len(data) // 3, 2 * len(data) // 3, len(data) - 5):
        torn = tmp_path / f"torn-{cut}.pfw.gz"
        torn.write_bytes(data[:cut])
        fast, slow, kinds = both([torn], monkeypatch)
        assert_same(fast, slow)
        assert fast["traces"][0]["torn_tail"] and kinds["table"] >= 1


@ebpf
def test_a_real_traced_program_gives_the_dict_paths_numbers(site, bpf_object, tmp_path, monkeypatch):
    """Opens, writes, seeks, positioned reads, a copy, stdio and a pipe of a real program."""
    root = tmp_path / "d"
    root.mkdir()
    program = f"""
import os
root = {str(root)!r}
fd = os.open(os.path.join(root, "a"), os.O_RDWR | os.O_CREAT, 0o644)
for i in range(300):
    os.write(fd, b"x" * (i % 7 + 1) * 100)
os.lseek(fd, 0, 0)
while os.read(fd, 333):
    pass
for off in (0, 4096, 100, 9000):
    os.pread(fd, 50, off)
out = os.open(os.path.join(root, "b"), os.O_WRONLY | os.O_CREAT, 0o644)
os.copy_file_range(fd, out, 5000, 0)
os.close(out)
log = os.open(os.path.join(root, "log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
os.write(log, b"appended")
os.close(log)
os.close(fd)
with open(os.path.join(root, "c"), "w") as f:
    for i in range(200):
        f.write("line %d\\n" % i)
r, w = os.pipe()
os.write(w, b"hello")
os.read(r, 5)
"""
    _, trace, _ = trace_command(tmp_path, [sys.executable, "-I", "-S", "-c", program],
                                sets=("posix", "stdio"))
    fast, slow, kinds = both([trace], monkeypatch, chunk=200, block=20_000)
    assert_same(fast, slow)
    assert kinds["table"] >= 2, kinds
    files = {f["path"]: f for f in fast["files"]}
    a = files[os.path.join(str(root), "a")]
    assert a["bytes"]["write"] == sum((i % 7 + 1) * 100 for i in range(300))
    assert files[os.path.join(str(root), "b")]["bytes"]["write"] == 5000


def test_a_large_synthetic_trace_of_the_projects_writer_gives_the_dict_paths_numbers(
        tmp_path, monkeypatch):
    """bench_report.py's generator: 300,000 events of 32 processes over 128 files, written
    by TraceWriter, read in the default chunks (two of them)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_report", Path(__file__).resolve().parents[1] / "bench" / "bench_report.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    trace = tmp_path / "trace-bench-4242-node0.pfw.gz"
    bench.generate(trace, 300_000, "node0", seed=5)
    fast, slow, kinds = both([trace], monkeypatch, chunk=merge.CHUNK_EVENTS)
    assert_same(fast, slow)
    assert kinds == {"table": 3, "dicts": 0}, kinds
    assert fast["totals"]["events"] == 300_000 and len(fast["files"]) == 128
