"""The report's columnar paths (the compiled scanner, trace/scan.c, and pyarrow's columns,
report/columnar.py) give the dict path's numbers field by field of the summary (--json):
on a hand-made trace with every kind of event the analysis treats apart (opens with
flags, seeks, offsets, copies, nesting over three layers, errors, pipes, counters,
hostile lines), split or whole, on awkward lines the scanner must give back, and on a
real traced program. Each test also checks that the fast paths did read most of the
events, so it cannot pass by falling back everywhere (or by a missing scanner)."""

from __future__ import annotations

import gzip
import json
import os
import random
import struct
import sys
from collections import Counter
from pathlib import Path

import pytest

from datacrumbs.report import columnar, merge, model
from datacrumbs.report.merge import summarize
from datacrumbs.trace import fastscan
from datacrumbs.trace.reader import _loads
from fixtures.traces import TraceBuilder, bench_trace, mixed_io_program, split_summary
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


@pytest.fixture(scope="module")
def scan_library(tmp_path_factory) -> Path:
    """The scanner built by the real build code, beside a site's BPF object path."""
    lib = tmp_path_factory.mktemp("site-lib")
    return fastscan.build_library(fastscan.library_path(lib / "datacrumbs.bpf.o"))


@pytest.fixture(autouse=True)
def site_scanner(scan_library, tmp_path, monkeypatch):
    """A site configuration whose bpf_object has the scanner beside it (the report finds
    it there, as on an installed node); the process looks it up afresh."""
    cfg = tmp_path / "datacrumbs.toml"
    cfg.write_text(f'[paths]\nbpf_object = "{scan_library.with_name("datacrumbs.bpf.o")}"\n')
    monkeypatch.setenv("DATACRUMBS_CONFIG", str(cfg))
    monkeypatch.setattr(columnar, "_SCANNER", [])


def both(paths: list, monkeypatch, *, chunk: int = 1500, block: int | None = None
         ) -> tuple[dict, dict, dict]:
    """(scanner's summary, dict path's summary, chunks read by kind on the scanner's run
    and on pyarrow's) of ``paths``, one process; pyarrow's summary is held to the dict
    path's here. ``block``: bytes parsed at once by every path (the reader's PARSE_BLOCK)."""
    from datacrumbs.trace import reader

    monkeypatch.setattr(merge, "CHUNK_EVENTS", chunk)
    if block:
        monkeypatch.setattr(reader, "PARSE_BLOCK", block)
        monkeypatch.setattr(columnar, "PARSE_BLOCK", block)
    kinds = {"scan": Counter(), "arrow": Counter()}
    run = ["scan"]
    real = columnar.chunks

    def counted(reader):
        for kind, chunk_ in real(reader):
            kinds[run[0]][kind] += 1
            yield kind, chunk_

    monkeypatch.setattr(columnar, "chunks", counted)
    monkeypatch.setattr(model, "COLUMNAR", True)
    scanner = columnar.scanner()
    assert scanner is not None, "the site's scanner was not loaded"
    blocks = scanner.blocks
    fast = summarize(paths, jobs=1)
    assert scanner.blocks > blocks, "the scanner read no block"
    monkeypatch.setattr(columnar, "SCAN", False)
    run[0] = "arrow"
    arrow = summarize(paths, jobs=1)
    monkeypatch.setattr(columnar, "SCAN", True)
    monkeypatch.setattr(model, "COLUMNAR", False)
    slow = summarize(paths, jobs=1)
    monkeypatch.setattr(model, "COLUMNAR", True)
    assert_same(arrow, slow)
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
    assert kinds["scan"]["scan"] >= 3 and kinds["scan"]["dicts"] >= 1, kinds
    assert kinds["arrow"]["table"] >= 3 and kinds["arrow"]["dicts"] >= 1, kinds
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
    assert set(kinds["scan"]) == {"scan"} and kinds["scan"]["scan"] >= 5, kinds
    assert set(kinds["arrow"]) == {"table"} and kinds["arrow"]["table"] >= 5, kinds


def test_a_clean_trace_is_read_without_importing_pyarrow(tmp_path):
    """pyarrow is imported only for blocks the scanner declines (its import costs each
    worker about 0.05 s of CPU): a fresh process reads a clean trace without it, and one
    awkward line brings it in."""
    import subprocess

    clean = rich_trace(tmp_path / "trace-a-1-node1.pfw.gz", 3_000, seed=5, hostile=False)
    awkward = tmp_path / "trace-a-1-node2.pfw.gz"
    lines = gzip.decompress(clean.read_bytes()).split(b"\n")
    lines.insert(5, b'{"id":99,"name":"re\\u0061d","cat":"POSIX","pid":1,"ph":"X","ts":1,"dur":1}')
    awkward.write_bytes(gzip.compress(b"\n".join(lines)))
    code = ("import sys; from datacrumbs.report.merge import summarize; "
            "s = summarize([sys.argv[1]], jobs=1); "
            "print(s['totals']['events'], 'pyarrow' in sys.modules)")
    for trace, arrow in ((clean, "False"), (awkward, "True")):
        out = subprocess.run([sys.executable, "-c", code, str(trace)], capture_output=True,
                             text=True, env=os.environ, check=True).stdout.split()
        assert int(out[0]) > 0 and out[1] == arrow, (trace.name, out)


def test_split_over_workers_and_two_nodes_give_the_dict_paths_numbers(tmp_path, monkeypatch):
    paths = [rich_trace(tmp_path / f"trace-a-1-node{i}.pfw.gz", 20_000, seed=10 + i,
                        host=f"node{i}") for i in (1, 2)]
    monkeypatch.setattr(merge, "SPLIT_BYTES", 20_000)     # member ranges of ~1,500 events
    monkeypatch.setattr(merge, "WHOLE_WHEN_BALANCED", False)  # cut even so
    monkeypatch.setattr(merge, "CHUNK_EVENTS", 1000)
    monkeypatch.setattr(model, "COLUMNAR", False)
    slow = split_summary(paths)
    monkeypatch.setattr(model, "COLUMNAR", True)
    blocks = columnar.scanner().blocks
    fast = split_summary(paths)
    assert columnar.scanner().blocks > blocks
    assert len(fast["traces"]) == 2
    assert_same(fast, slow)
    monkeypatch.setattr(columnar, "SCAN", False)
    assert_same(split_summary(paths), slow)
    monkeypatch.setattr(columnar, "SCAN", True)
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
        assert fast["traces"][0]["torn_tail"] and kinds["scan"]["scan"] >= 1


@ebpf
def test_a_real_traced_program_gives_the_dict_paths_numbers(site, bpf_object, tmp_path, monkeypatch):
    """Opens, writes, seeks, positioned reads, a copy, stdio and a pipe of a real program."""
    root = tmp_path / "d"
    root.mkdir()
    program = mixed_io_program(root)
    _, trace, _ = trace_command(tmp_path, [sys.executable, "-I", "-S", "-c", program],
                                sets=("posix", "stdio"))
    fast, slow, kinds = both([trace], monkeypatch, chunk=200, block=20_000)
    assert_same(fast, slow)
    assert kinds["scan"]["scan"] >= 2 and kinds["arrow"]["table"] >= 2, kinds
    files = {f["path"]: f for f in fast["files"]}
    a = files[os.path.join(str(root), "a")]
    assert a["bytes"]["write"] == sum((i % 7 + 1) * 100 for i in range(300))
    assert files[os.path.join(str(root), "b")]["bytes"]["write"] == 5000


def test_a_large_synthetic_trace_of_the_projects_writer_gives_the_dict_paths_numbers(
        tmp_path, monkeypatch):
    """bench_report.py's generator: 300,000 events of 32 processes over 128 files, written
    by TraceWriter, read in the default chunks (two of them)."""
    trace = bench_trace(tmp_path / "trace-bench-4242-node0.pfw.gz", 300_000, seed=5)
    fast, slow, kinds = both([trace], monkeypatch, chunk=merge.CHUNK_EVENTS)
    assert_same(fast, slow)
    assert kinds == {"scan": {"scan": 3}, "arrow": {"table": 3}}, kinds
    assert fast["totals"]["events"] == 300_000 and len(fast["files"]) == 128


#: Lines the scanner must give back (the block then goes to pyarrow or the dicts), by kind.
AWKWARD = {
    "escape in a string": rb'{"name":"write","cat":"POSIX","pid":100,"tid":100,"ts":5,"dur":1,"ph":"X","args":{"fname":"/a\"b","size":3}}',
    "escape in a key": rb'{"name":"write","cat":"POSIX","pid":100,"tid":100,"ts":5,"dur":1,"p\u0068":"X","args":{"size":3}}',
    "escaped unknown value": rb'{"name":"write","cat":"POSIX","pid":100,"tid":100,"ts":5,"dur":1,"ph":"X","args":{"cmd":"a\nb","size":3}}',
    "counter phase": rb'{"name":"write","cat":"POSIX","pid":100,"tid":100,"ts":5,"ph":"C","args":{"count":2,"bytes":10,"time_us":1}}',
    "unknown phase": rb'{"name":"write","cat":"POSIX","pid":100,"tid":100,"ts":5,"dur":1,"ph":"B","args":{"size":3}}',
    "no phase": rb'{"name":"write","cat":"POSIX","pid":100,"tid":100,"ts":5,"dur":1,"args":{"size":3}}',
    "nested value in args": rb'{"name":"write","cat":"POSIX","pid":100,"tid":100,"ts":5,"dur":1,"ph":"X","args":{"size":3,"extra":{"a":1}}}',
    "array in args": rb'{"name":"write","cat":"POSIX","pid":100,"tid":100,"ts":5,"dur":1,"ph":"X","args":{"size":3,"list":[1,2]}}',
    "nested top-level value": rb'{"name":"write","cat":"POSIX","pid":100,"tid":100,"ts":5,"dur":1,"ph":"X","extra":[1],"args":{"size":3}}',
    "duplicate key": rb'{"name":"write","cat":"POSIX","pid":100,"tid":100,"ts":5,"dur":1,"ph":"X","args":{"size":3,"size":7}}',
    "duplicate top key": rb'{"name":"write","cat":"POSIX","pid":100,"pid":300,"tid":100,"ts":5,"dur":1,"ph":"X","args":{"size":3}}',
    "int out of range": rb'{"name":"write","cat":"POSIX","pid":100,"tid":100,"ts":5,"dur":1,"ph":"X","args":{"size":99999999999999999999}}',
    "ret past int64": rb'{"name":"openat","cat":"POSIX","pid":100,"tid":100,"ts":5,"dur":1,"ph":"X","args":{"fname":"/scratch/job/f1.dat","ret":9223372036854775808,"flags":65}}',
    "float overflow": rb'{"name":"write","cat":"POSIX","pid":100,"tid":100,"ts":5,"dur":1e400,"ph":"X","args":{"size":3}}',
    "huge integer ts": rb'{"name":"write","cat":"POSIX","pid":100,"tid":100,"ts":176407920000000000000000,"dur":1,"ph":"X","args":{"size":3}}',
    "float for an int": rb'{"name":"write","cat":"POSIX","pid":100,"tid":100,"ts":5,"dur":1,"ph":"X","args":{"size":3.0}}',
    "string for an int": rb'{"name":"write","cat":"POSIX","pid":"100","tid":100,"ts":5,"dur":1,"ph":"X","args":{"size":3}}',
    "bool for an int": rb'{"name":"write","cat":"POSIX","pid":100,"tid":100,"ts":5,"dur":1,"ph":"X","args":{"size":true}}',
    "number for a string": rb'{"name":7,"cat":"POSIX","pid":100,"tid":100,"ts":5,"dur":1,"ph":"X","args":{"size":3}}',
    "null fhash2": rb'{"name":"copy_file_range","cat":"POSIX","pid":100,"tid":100,"ts":5,"dur":1,"ph":"X","args":{"size":3,"fhash2":null}}',
    "args not an object": rb'{"name":"write","cat":"POSIX","pid":100,"tid":100,"ts":5,"dur":1,"ph":"X","args":3}',
    "NaN": rb'{"name":"write","cat":"POSIX","pid":100,"tid":100,"ts":NaN,"dur":1,"ph":"X","args":{"size":3}}',
    "leading zero": rb'{"name":"write","cat":"POSIX","pid":100,"tid":100,"ts":05,"dur":1,"ph":"X","args":{"size":3}}',
    "plus sign": rb'{"name":"write","cat":"POSIX","pid":100,"tid":100,"ts":+5,"dur":1,"ph":"X","args":{"size":3}}',
    "two objects on a line": rb'{"name":"read","ph":"X","pid":100,"ts":1}{"name":"read","ph":"X","pid":100}',
    "trailing comma": rb'{"name":"write","cat":"POSIX","pid":100,"tid":100,"ts":5,"dur":1,"ph":"X","args":{"size":3}},',
    "comma inside": rb'{"name":"write","cat":"POSIX","pid":100,"tid":100,"ts":5,"dur":1,"ph":"X","args":{"size":3,}}',
    "blank line": b"",
    "not json": b"not json at all",
    "truncated": rb'{"name":"write","cat":"POSIX","pid":100,"tid":100,"ts":5,"dur":1,"ph":"X","args":{"si',
    "non-UTF-8": b'{"name":"write","cat":"POSIX","pid":100,"tid":100,"ts":5,"dur":1,"ph":"X","args":{"fname":"/a\xff\xfe","size":3}}',
    "UTF-8 surrogate": b'{"name":"write","cat":"POSIX","pid":100,"tid":100,"ts":5,"dur":1,"ph":"X","args":{"fname":"/a\xed\xa0\x80","size":3}}',
    "overlong UTF-8": b'{"name":"write","cat":"POSIX","pid":100,"tid":100,"ts":5,"dur":1,"ph":"X","args":{"fname":"/a\xc0\xaf","size":3}}',
    "control character": b'{"name":"write","cat":"POSIX","pid":100,"tid":100,"ts":5,"dur":1,"ph":"X","args":{"fname":"/a\x01","size":3}}',
    "a bad metadata line": rb'{"name":"FH","ph":"M","args":{"name":"/x","value":"abc"',
    "an array line": b"[1, 2]",
    # the writer's own key order (scan.c matches those keys as literals first)
    "duplicate of a writer-order key": rb'{"id":1,"name":"write","name":"read","cat":"POSIX","pid":100,"tid":100,"ts":5.000,"dur":1.000,"ph":"X","args":{"hhash":"a05d58b42f09dc65","size":3}}',
    "duplicate writer-order arg": rb'{"id":1,"name":"write","cat":"POSIX","pid":100,"tid":100,"ts":5.000,"dur":1.000,"ph":"X","args":{"hhash":"a05d58b42f09dc65","fhash":"6a8af0f9242f84a3","fd":3,"count":4,"size":4,"ret":4,"hhash":"b05d58b42f09dc65"}}',
    "writer order, ph Y": rb'{"id":1,"name":"write","cat":"POSIX","pid":100,"tid":100,"ts":5.000,"dur":1.000,"ph":"Y","args":{"size":3}}',
    "writer order, escaped key": rb'{"id":1,"na\u006de":"write","cat":"POSIX","pid":100,"tid":100,"ts":5.000,"dur":1.000,"ph":"X","args":{"size":3}}',
}

#: Unusual lines the scanner reads itself, as json.loads would.
UNUSUAL = [
    rb' { "name" : "write" , "cat" : "POSIX" , "pid" : 100 , "tid" : 100 , "ts" : 1764079200000007.5 , "dur" : 1 , "ph" : "X" , "args" : { "size" : 3 } } ',
    b'{"name":"write","cat":"POSIX","pid":100,"tid":100,"ts":1764079200000008,"dur":2,"ph":"X","args":{"fname":"/scratch/\xc3\xa9t\xc3\xa9/\xe2\x82\xac\xf0\x9f\x92\xbe","size":4096,"count":4096}}\r',
    rb'{"name":"write","cat":null,"pid":null,"tid":100,"ts":null,"dur":null,"ph":"X","args":null}',
    rb'{"name":"","cat":"","pid":100,"tid":100,"ts":1764079200000009,"dur":1,"ph":"X","args":{}}',
    # the writer's key order, then the same keys out of order, spaced, unknown in between
    rb'{"id":7,"name":"pwrite64","cat":"POSIX","pid":1001,"tid":1002,"ts":1764079200000273.422,"dur":13.477,"ph":"X","args":{"hhash":"a05d58b42f09dc65","fhash":"6e5e4e1308d3f368","fd":6,"fd2":7,"fhash2":"6e5e4e1308d3f369","ftype2":"pipe","count":32768,"offset":4096,"size":32768,"ret":-1,"errno":5,"flags":65,"ftype":"reg"}}',
    rb'{"id":8,"ph":"X","args":{"ftype":"reg","ret":1,"hhash":"a05d58b42f09dc65","size":2,"fd":3},"dur":0.001,"ts":1764079200000274.001,"tid":1,"pid":2,"cat":"STDIO","name":"fwrite"}',
    rb'{"id":9,"name" :"read","cat": "POSIX","x":1,"pid":3,"tid":3,"ts":1764079200000275.999,"dur":2.5,"ph" : "X","args":{"fname":"/f","other":"y","size":1,"count":1}}',
    rb'{"id":10,"name":"read","cat":"POSIX","pid":3,"tid":3,"ts":1764079200000276.000,"dur":2.500,"ph":"M","args":{"name":"m"}}',
    rb'{"ph":"X"}',
    rb'{"name":"write","cat":"POSIX","pid":-5,"tid":100,"ts":-1,"dur":-0.0,"ph":"X","args":{"size":-1,"count":9007199254740993,"offset":-0}}',
    rb'{"name":"read","cat":"POSIX","pid":100,"tid":100,"ts":1.764079200000010123e15,"dur":12e-1,"ph":"X","args":{"size":3,"other":true,"more":false,"none":null,"num":-1.5e-300,"s":"x"}}',
    rb'{"name":"openat","cat":"POSIX","pid":100,"tid":100,"ts":1764079200000011,"dur":1,"ph":"X","args":{"fname":"/scratch/job/new","ret":-9223372036854775808,"flags":65}}',
    rb'{"name":"process_name","ph":"M","pid":100,"args":{"name":"a\"quoted\" \u00e9 name","nested":{"a":[1,{"b":"}"}]}}}',
]


def _clean_lines(n: int) -> list[bytes]:
    b = TraceBuilder(Path("/nonexistent"), host="node1")
    b.process(100, "rank0")
    for k in range(n):
        b.op(["write", "read", "lseek"][k % 3], pid=100, ts=1.5 * k, dur=0.25, size=4096,
             path=f"/scratch/job/f{k % 3}.dat", ftype="reg")
    return [line.encode() for line in b.lines[1:]]


def test_the_scanner_gives_back_every_block_with_an_awkward_line():
    scanner = columnar.scanner()
    clean = _clean_lines(40)
    got = scanner.scan(b"\n".join(clean))
    assert got is not None and got.n == 40 and len(got.meta_lines) == len(clean) - 40
    for kind, line in AWKWARD.items():
        for at in (0, 17, len(clean)):
            body = b"\n".join(clean[:at] + [line] + clean[at:])
            assert scanner.scan(body) is None, (kind, at)


def test_the_scanner_reads_unusual_lines_as_json_does():
    scanner = columnar.scanner()
    got = scanner.scan(b"\n".join(UNUSUAL))
    assert got is not None
    recs = [_loads(line) for line in UNUSUAL]
    xs = [r for r in recs if r["ph"] == "X"]
    assert got.n == len(xs) and got.nrec == len(recs)
    assert [_loads(m) for m in got.meta_lines] == [r for r in recs if r["ph"] == "M"]
    for i, r in enumerate(xs):
        a = r.get("args") or {}
        for k, name in enumerate(fastscan.FLOATS):
            want = r.get(name)
            assert struct.pack("<d", got.flt[k][i]) == struct.pack(
                "<d", float("nan") if want is None else float(want)), (i, name)
        for name in fastscan.INTS:
            want = (r if name in ("pid", "tid") else a).get(name)
            vals, ok = got.ints(name)
            assert (int(vals[i]) if ok[i] else None) == want, (i, name)
        for k, name in enumerate(fastscan.STRINGS):
            want = (r if name in ("name", "cat") else a).get(name)
            code = got.code[k][i]
            assert (got.strings[k][code] if code >= 0 else None) == want, (i, name)


def test_awkward_lines_fall_back_and_the_three_paths_agree(tmp_path, monkeypatch):
    """Every awkward kind in its own block among clean ones, and the unusual lines the
    scanner reads: the same summary from the scanner, pyarrow and the dicts."""
    rng = random.Random(7)
    clean = _clean_lines(3000)
    lines = [b"["]
    for k, line in enumerate([*AWKWARD.values(), *UNUSUAL]):
        lines += clean[k * 60:(k + 1) * 60] + [line]
    lines += clean[(k + 1) * 60:] + [b"]"]
    path = tmp_path / "trace-awkward-1-node1.pfw.gz"
    data = b"".join(gzip.compress(b"\n".join(lines[i:i + 97]) + b"\n")
                    for i in range(0, len(lines), 97))
    path.write_bytes(data)
    rng.shuffle(lines[1:-1])            # and the same lines in another order, other blocks
    shuffled = tmp_path / "trace-awkward-2-node1.pfw.gz"
    shuffled.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    for trace in (path, shuffled):
        declined = columnar.scanner().declined
        fast, slow, kinds = both([trace], monkeypatch, chunk=400, block=6000)
        assert_same(fast, slow)
        assert columnar.scanner().declined - declined >= len(AWKWARD) // 3, kinds
        assert kinds["scan"]["scan"] >= 1 and kinds["scan"]["dicts"] >= 1, kinds
        assert fast["traces"][0]["bad_lines"] > 0 and fast["totals"]["events"] > 3000


def test_a_chunk_of_scanned_and_pyarrow_blocks_is_read_by_pyarrow(tmp_path, monkeypatch):
    """Lines only the scanner gives back (escapes, a nested value it does not read) among
    clean blocks: their chunks are pyarrow's tables, the scanned blocks parsed again."""
    clean = _clean_lines(2000)
    escaped = [AWKWARD[k] for k in ("escape in a string", "escaped unknown value",
                                    "nested value in args", "nested top-level value")]
    lines = [b"["]
    for k in range(0, len(clean), 300):
        lines += clean[k:k + 300] + [escaped[(k // 300) % len(escaped)]]
    path = tmp_path / "trace-mixed-1-node1.pfw.gz"
    path.write_bytes(gzip.compress(b"\n".join(lines + [b"]"]) + b"\n"))
    fast, slow, kinds = both([path], monkeypatch, chunk=900, block=20_000)
    assert_same(fast, slow)
    assert kinds["scan"]["table"] >= 2 and not kinds["scan"]["dicts"], kinds
    assert fast["traces"][0]["bad_lines"] == 0 and fast["totals"]["events"] == 2000 + 7


def _number_tokens(rng: random.Random, n: int) -> list[str]:
    """JSON numbers of the shapes traces hold, and of every other shape."""
    out = []
    for _ in range(n):
        kind = rng.randrange(8)
        if kind == 0:       # an epoch ts in µs with three decimals (16 + 3 digits)
            out.append(f"{rng.randrange(10**15, 10**16)}.{rng.randrange(1000):03d}")
        elif kind == 1:     # a duration
            out.append(f"{rng.randrange(10**rng.randrange(1, 10))}.{rng.randrange(1000):03d}")
        elif kind == 2:     # Python's repr of a float (shortest round trip)
            out.append(repr(rng.uniform(0, 2e16) * rng.choice([1, 1e-9, 1e-3])))
        elif kind == 3:     # long digit strings, both sides of the exact paths' limits
            a, b = rng.randrange(0, 21), rng.randrange(1, 25)
            out.append(f"{rng.randrange(10**a) if a else 0}.{rng.randrange(10**b):0{b}d}")
        elif kind == 4:     # integers
            out.append(str(rng.randrange(-10**rng.randrange(1, 19), 10**rng.randrange(1, 20))))
        elif kind == 5:     # exponents
            out.append(f"{rng.randrange(1, 10**rng.randrange(1, 18))}e{rng.randrange(-30, 30)}")
        elif kind == 6:     # halfway cases: 2^53 + odd, and ties below
            m = (1 << 53) + rng.randrange(1, 1 << 20) * 2 + 1
            out.append(f"{m // 2}.5" if rng.random() < 0.5 else f"{m}.{rng.choice(['5', '50', '500000001', '4999999'])}")
        else:
            out.append(rng.choice(["0", "-0", "0.0", "-0.0", "1", "-1.5", "0.1", "1e0",
                                   "9007199254740993", "9007199254740993.0", "1e23",
                                   "8.98846567431158e307", "2.2250738585072014e-308",
                                   "0.000000000000000000000000001", "-12.75E+2"]))
    return out


def test_the_scanner_converts_numbers_exactly_as_json_does():
    """Each float as json.loads makes it (correctly rounded), bit for bit; the tokens it
    declines are only the huge or tiny ones it leaves to Python. ``_loads`` is the
    reader's own (orjson when installed)."""
    scanner = columnar.scanner()
    rng = random.Random(11)
    tokens = _number_tokens(rng, 200_000)
    declined = 0
    for tok in tokens:
        got = scanner.number(tok.encode())
        want = float(json.loads(tok))
        if got is None:
            declined += 1
            assert abs(want) > 1e300 or abs(want) < 1e-300 or \
                (tok.lstrip("-").isdigit() and len(tok.lstrip("-")) > 19), tok
            continue
        assert struct.pack("<d", got) == struct.pack("<d", want), (tok, got, want)
        assert struct.pack("<d", got) == struct.pack("<d", float(_loads(tok))), tok
    assert declined < len(tokens) // 100
    # and through whole lines: the ts and dur columns
    ts, dur = tokens[:5000], tokens[5000:10000]
    body = b"\n".join(b'{"ph":"X","ts":%s,"dur":%s}' % (a.encode(), b.encode())
                      for a, b in zip(ts, dur) if scanner.number(a.encode()) is not None
                      and scanner.number(b.encode()) is not None)
    got = scanner.scan(body)
    recs = [_loads(line) for line in body.split(b"\n")]
    assert got.n == len(recs) > 4000
    assert got.flt[0].tobytes() == struct.pack(f"<{got.n}d", *(float(r["ts"]) for r in recs))
    assert got.flt[1].tobytes() == struct.pack(f"<{got.n}d", *(float(r["dur"]) for r in recs))


def _integer_tokens(rng: random.Random, n: int) -> list[str]:
    """Integer-like tokens, valid JSON or not: signs, leading zeros, 17 to 20 digits
    around the int64 limits, a point or an exponent after the digits."""
    fixed = ["0", "-0", "00", "01", "-01", "-", "7", "-7", "1e3", "1E3", "1.0", "12.",
             "1.", "0.5", "-0.0", "123456789012345678", "1234567890123456789",
             "12345678901234567890", "9223372036854775807", "9223372036854775808",
             "-9223372036854775808", "-9223372036854775809", "999999999999999999",
             "1000000000000000000", "-1000000000000000000"]
    out = list(fixed)
    while len(out) < n:
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 21)))
        tok = rng.choice(["", "", "-"]) + digits + rng.choice(["", "", "", ".", ".5", "e1"])
        out.append(tok)
    return out


def test_the_scanner_reads_integers_as_json_does():
    """Every integer column and an unread field (``id``) over integer-like tokens: a line
    is read only when json.loads reads it, an integer column only takes an int of int64,
    and its value is json's (the compiled fast path for small integers, and the general
    one it falls back to, agree with the JSON module)."""
    scanner = columnar.scanner()
    rng = random.Random(5)
    for tok in _integer_tokens(rng, 3000):
        try:
            want = json.loads(tok)
        except ValueError:
            want = ValueError
        for name, template in (("pid", b'{"ph":"X","pid":%s}'),
                               ("size", b'{"ph":"X","args":{"size":%s}}'),
                               ("offset", b'{"ph":"X","args":{"offset":%s,"ret":1}}'),
                               (None, b'{"id":%s,"ph":"X"}')):
            got = scanner.scan(template % tok.encode())
            takes = want is not ValueError and (name is None or (
                type(want) is int and -(1 << 63) <= want < 1 << 63))
            assert (got is not None) == takes, (tok, template)
            if got is None or name is None:
                continue
            vals, ok = got.ints(name)
            assert bool(ok[0]) and int(vals[0]) == want, (tok, name)


def test_without_a_usable_scanner_the_report_is_pyarrows(tmp_path, monkeypatch, caplog):
    """A missing library, or one of another ABI, is passed over at debug level."""
    import logging
    import subprocess

    trace = rich_trace(tmp_path / "trace-a-1-node1.pfw.gz", 3000, seed=4, hostile=False)
    monkeypatch.setattr(model, "COLUMNAR", True)
    want = summarize([trace], jobs=1)
    foreign = tmp_path / "foreign" / fastscan.LIBRARY_NAME
    foreign.parent.mkdir()
    src = tmp_path / "foreign.c"
    src.write_text("int dc_scan_abi(void) { return 999; }\n")
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(foreign), str(src)], check=True)
    caplog.set_level(logging.DEBUG, "datacrumbs.trace")
    for obj in (tmp_path / "nothing-here" / "datacrumbs.bpf.o",
                foreign.with_name("datacrumbs.bpf.o")):
        cfg = tmp_path / "other.toml"
        cfg.write_text(f'[paths]\nbpf_object = "{obj}"\n')
        monkeypatch.setenv("DATACRUMBS_CONFIG", str(cfg))
        monkeypatch.setattr(columnar, "_SCANNER", [])
        kinds = Counter(kind for kind, _ in columnar.chunks(
            __import__("datacrumbs.trace.reader", fromlist=["TraceReader"]).TraceReader(trace)))
        assert columnar.scanner() is None and set(kinds) == {"table"}, kinds
        assert_same(summarize([trace], jobs=1), want)
    assert "ABI 999" in caplog.text and not [r for r in caplog.records
                                             if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("block", [
    b"", b"\n", b"[", b"[\n", b"]", b"]\n", b"[\n]\n", b"[\n{\"a\":1}\n", b"{\"a\":1}\n]\n",
    b"  \t[\r\n{\"a\":1}\n{\"b\":2}\r\n]\n\n", b"[{\"a\":1}]", b"{\"a\":[1]}\n", b"\x0b{}\x0c",
    b"[\n]", b"x]\n", b"[x\n", b"\n\n{\"id\":1}\n\n"])
def test_body_bounds_is_block_body_without_the_copy(block):
    from datacrumbs.trace.reader import block_body
    start, end, closed = columnar.body_bounds(block)
    assert (block[start:end], closed) == block_body(block)


_TOP_KEYS = ("id", "name", "cat", "pid", "tid", "ts", "dur", "ph", "args")
_ARGS_KEYS = ("hhash", "fhash", "fname", "fd", "fd2", "fhash2", "ftype2", "count", "offset",
              "size", "ret", "errno", "flags", "ftype")


def _random_line(rng: random.Random, pools: dict) -> str:
    """One line as our writer orders it (now and then another order, a null, a metadata
    line, whitespace, an unknown argument, any scalar where the scanner reads none), with
    strings and numbers drawn to hit the scanner's fast and slow paths."""
    def num() -> str:
        kind = rng.randrange(7)
        if kind == 0:       # an epoch ts: 16 digits before the point, 17 to 19 digits in all
            return f"{rng.randrange(10**15, 10**16)}.{rng.randrange(10**rng.randrange(1, 4))}"
        if kind == 1:       # near a halfway point of the doubles about 2^53 and 2^60
            m = (1 << rng.choice([52, 53, 54, 60])) + rng.randrange(-50, 50)
            return f"{m}.{rng.choice(['5', '500', '499', '501', '25', '75', '125', '0'])}"
        if kind == 2:
            return rng.choice(["0", "-0", "0.0", "-0.0", "-1.5", "1e3", "-2.5E-3", "1E+2",
                               "0.001", "123456789012345678.9", "-1764079200005866.141"])
        if kind == 3:
            return f"-{rng.randrange(10**rng.randrange(1, 17))}.{rng.randrange(1000):03d}"
        if kind == 4:
            return repr(rng.uniform(-1e6, 1e17))
        if kind == 5:
            return str(rng.randrange(-10**18, 10**18))
        return f"{rng.randrange(1, 10**6)}.{rng.randrange(1000):03d}"

    def integer() -> str:
        return str(rng.choice([0, -1, 7, 8192, 1 << 20, rng.randrange(-(1 << 63), 1 << 63)]))

    def string(pool: str) -> str:
        return json.dumps(rng.choice(pools[pool]), ensure_ascii=False)

    def scalar() -> str:        # a field the scanner does not read: any scalar
        return rng.choice([integer(), num(), '"x"', '"é"', "true", "false", "null"])

    def other() -> str:
        return integer() if rng.random() < 0.9 else scalar()

    val = {"id": other, "pid": integer, "tid": integer, "ts": num, "dur": num,
           "fd": other, "fd2": other, "count": integer, "offset": integer,
           "size": integer, "ret": integer, "errno": integer, "flags": integer,
           "name": lambda: string("name"), "cat": lambda: string("cat"),
           "hhash": lambda: string("hash"), "fhash": lambda: string("hash"),
           "fhash2": lambda: string("hash"), "fname": lambda: string("path"),
           "ftype": lambda: string("type"), "ftype2": lambda: string("type")}
    args = [k for k in _ARGS_KEYS if rng.random() < 0.5]
    top = [k for k in _TOP_KEYS if k in ("ph", "args") or rng.random() < 0.9]
    if rng.random() < 0.05:
        rng.shuffle(args)
        rng.shuffle(top)

    spaced = rng.random() < 0.05         # whitespace (not the writer's) between tokens

    def w() -> str:
        return rng.choice(["", " ", "\t", "  ", "\r", " \t"]) if spaced else ""

    def field(k: str) -> str:
        if k != "fhash2" and rng.random() < 0.02:
            return f'{w()}"{k}"{w()}:{w()}null{w()}'
        return f'{w()}"{k}"{w()}:{w()}{val[k]()}{w()}'

    fields = [field(k) for k in args]
    if rng.random() < 0.05:             # an argument the scanner does not know
        key = rng.choice(["cmd", "x", "fdx"])
        fields.insert(rng.randrange(len(fields) + 1), f'"{key}":{scalar()}')
    body = ",".join(fields)
    parts = []
    for k in top:
        if k == "ph":
            parts.append(f'{w()}"ph":{w()}"{"M" if rng.random() < 0.02 else "X"}"{w()}')
        elif k == "args":
            parts.append(f'{w()}"args"{w()}:{w()}{{{body or w()}}}{w()}')
        else:
            parts.append(field(k))
    return w() + "{" + ",".join(parts) + "}" + w()


def test_the_scanner_reads_random_writer_lines_as_json_does():
    """Blocks of random lines in the writer's key order, with many distinct strings (the
    string tables grow several times; long ones share their first 16 bytes or more),
    non-ASCII text, and numbers of every shape near the exact paths' limits: every column,
    string code (first appearance), operation and file pair is json.loads's."""
    scanner = columnar.scanner()
    rng = random.Random(23)
    pools = {
        "name": ["", "a", "write", "pwrite64", "MPI_File_write_at_all", "x" * 15, "x" * 16,
                 "x" * 17, "x" * 16 + "y", "é", "h€llo wörld 💾"] +
                [f"op_{i}" for i in range(300)],
        "cat": ["POSIX", "STDIO", "MPIIO", "HDF5", "c" * 8, "c" * 9] +
               [f"CAT{i}" for i in range(14)],       # codes past the operations' direct map
        "hash": [f"{rng.getrandbits(64):016x}" for _ in range(1500)] + ["a05d58b42f09dc65"],
        "path": [f"/scratch/job/rank{i}/data.{j}.h5" for i in range(40) for j in range(5)] +
                ["/", "/a", "/scratch/job/rank1/data.1.h5x"],
        "type": ["reg", "pipe", "sock", ""],
    }
    for trial in range(12):
        lines = [_random_line(rng, pools) for _ in range(rng.randrange(1, 4000))]
        got = scanner.scan("\n".join(lines).encode())
        assert got is not None, trial
        recs = [json.loads(line) for line in lines]
        xs = [r for r in recs if r.get("ph") == "X"]
        assert got.n == len(xs) and got.nrec == len(recs)
        assert [json.loads(m) for m in got.meta_lines] == [r for r in recs if r["ph"] == "M"]
        codes = []
        for k, name in enumerate(fastscan.STRINGS):
            want = [(r if name in ("name", "cat") else r.get("args") or {}).get(name)
                    for r in xs]
            firsts = list(dict.fromkeys(w for w in want if w is not None))
            assert got.strings[k] == firsts, name
            codes.append([firsts.index(w) if w is not None else -1 for w in want])
            assert got.code[k].tolist() == codes[k], name
        for k, name in enumerate(fastscan.FLOATS):
            want = [float("nan") if r.get(name) is None else float(r[name]) for r in xs]
            assert got.flt[k].tobytes() == struct.pack(f"<{len(xs)}d", *want), name
        for name in fastscan.INTS:
            want = [(r if name in ("pid", "tid") else r.get("args") or {}).get(name)
                    for r in xs]
            vals, ok = got.ints(name)
            assert [int(v) if o else None for v, o in zip(vals.tolist(), ok.tolist())] == want
        s = {n: k for k, n in enumerate(fastscan.STRINGS)}
        ops = [(codes[s["cat"]][i], codes[s["name"]][i]) for i in range(len(xs))]
        first_ops = list(dict.fromkeys(ops))
        assert got.op.tolist() == [first_ops.index(o) for o in ops]
        files = [(s["fhash"], codes[s["fhash"]][i]) if codes[s["fhash"]][i] >= 0 else
                 (s["fname"], codes[s["fname"]][i]) if codes[s["fname"]][i] >= 0 else None
                 for i in range(len(xs))]
        first_files = list(dict.fromkeys(f for f in files if f is not None))
        assert got.fil.tolist() == [first_files.index(f) if f else -1 for f in files]


def test_the_scanner_interns_a_string_the_same_at_the_blocks_end():
    """A string read within 16 bytes of the block's end (its first bytes copied, not
    loaded as words) has the code of the same string read earlier, and a string that
    only extends it has another; so do strings longer than 16 bytes that share them."""
    scanner = columnar.scanner()
    long = "/scratch/job/rank1/data.h5"
    for names in (["abc", "abc"], ["abc", "abcd", "abc"], ["abcd", "abc"], [long, long],
                  [long, long + "x", long], ["x" * 16, "x" * 15, "x" * 16, "x" * 17]):
        body = "\n".join(f'{{"ph":"X","name":"{n}"}}' for n in names).encode()
        got = scanner.scan(body)
        firsts = list(dict.fromkeys(names))
        assert got.strings[0] == firsts, names
        assert got.code[0].tolist() == [firsts.index(n) for n in names], names
