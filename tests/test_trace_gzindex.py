"""The member index a clean close appends (trace/gzindex.py): invisible to other readers,
used by the report to cut a trace without inflating it, and never trusted blindly: every
kind of damage or lie gives the summary the inflating path gives."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from datacrumbs.report import merge
from datacrumbs.trace import gzindex
from datacrumbs.trace.reader import TraceReader
from datacrumbs.trace.writer import OPS_DTYPE, TraceWriter

BIN = Path(sys.executable).parent
EVENTS = 60_000
MEMBER = 2_000          # events per member: 30 members and more, several units per worker
WRITERS: list = []      # the writers _write closed (their state after close)


def _write(path: Path, events: int = EVENTS, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    w = TraceWriter(path, header={"job": "7", "user": "u", "host": f"h{seed}", "mode": "trace",
                                  "version": "0.1.0", "ts": 1_764_079_200_000_000},
                    member_events=MEMBER)
    w.set_probes([{"id": "posix.write", "kind": "syscall", "target": "write", "category": "POSIX"},
                  {"id": "posix.read", "kind": "syscall", "target": "read", "category": "POSIX"}])
    w.process_name(100, "app")
    batch = min(10_000, MEMBER * 200)     # the writer splits a batch per member, recursively
    for first in range(0, events, batch):
        n = min(batch, events - first)
        ops = np.zeros(n, dtype=OPS_DTYPE)
        ops["ts_ns"] = 1_764_079_200_000_000_000 + (first + np.arange(n)) * 5000
        ops["dur_ns"] = rng.integers(100, 90_000, n)
        ops["pid"] = ops["tid"] = 100 + rng.integers(0, 4, n)
        ops["probe"] = rng.integers(0, 2, n)
        ops["fd"] = 3 + rng.integers(0, 3, n)
        ops["count"] = ops["size"] = ops["ret"] = 1 << rng.integers(9, 17, n)
        ops["offset"] = -1
        w.write_ops(ops, [f"/data/f{i}" for i in rng.integers(0, 5, n)])
    w.close()
    WRITERS.append(w)
    return path


def _index_start(path: Path) -> int:
    with open(path, "rb") as f:
        entries = gzindex.read_index(f)
    assert entries is not None
    data = path.read_bytes()
    return data.index(b"\x1f\x8b\x08\x04", entries[-1].offset)


@pytest.fixture
def trace(tmp_path) -> Path:
    return _write(tmp_path / "trace-u-7-h0.pfw.gz")


@pytest.fixture
def cut(monkeypatch):
    """Files this small are cut too (the parent decides), and the counters start at 0."""
    monkeypatch.setattr(merge, "SPLIT_BYTES", 64 << 10)
    monkeypatch.setattr(merge, "WHOLE_WHEN_BALANCED", False)
    for k in merge.INDEX_COUNTS:
        monkeypatch.setitem(merge.INDEX_COUNTS, k, 0)


def _reference(paths) -> dict:
    """The summary of the inflating path (the index not looked at)."""
    was = merge.USE_INDEX
    merge.USE_INDEX = False
    try:
        return merge.summarize(paths, jobs=2)
    finally:
        merge.USE_INDEX = was


def test_index_lists_every_member_and_its_events(trace):
    with open(trace, "rb") as f:
        entries = gzindex.read_index(f)
    assert entries is not None and entries[0].offset == 0
    assert sum(e.events for e in entries) == EVENTS
    assert max(e.events for e in entries) == MEMBER
    # the offsets are exactly where inflating finds the members (the index ones aside)
    from datacrumbs.trace.reader import index_members
    found, tail = index_members(trace)
    start = _index_start(trace)
    assert [m.offset for m in found if m.offset < start] == [e.offset for e in entries]
    assert not tail.torn and tail.error is None


def test_other_readers_read_the_same_text(trace, tmp_path):
    plain = tmp_path / "plain.pfw.gz"        # the same trace without its index
    plain.write_bytes(trace.read_bytes()[:_index_start(trace)])
    assert subprocess.run(["gzip", "-t", str(trace)]).returncode == 0
    zcat = subprocess.run(["zcat", str(trace)], capture_output=True, check=True).stdout
    assert zcat == subprocess.run(["zcat", str(plain)], capture_output=True, check=True).stdout
    assert gzip.decompress(trace.read_bytes()) == zcat
    import pyarrow as pa
    with pa.input_stream(str(trace), compression="gzip") as f:
        assert f.read() == zcat
    assert zcat.startswith(b"[\n") and zcat.endswith(b"]\n")
    ours, bare = TraceReader(trace), TraceReader(plain)
    assert ours.read_all() == bare.read_all()
    assert ours.stats.members == bare.stats.members      # the index is not counted a member
    assert ours.stats.closed and not ours.stats.torn_tail


def test_dftracer_tools_read_it(trace, tmp_path):
    """DFTracer's own tools (dftracer-utils) validate it and count every event."""
    d = tmp_path / "dft"
    d.mkdir()
    shutil.copy(trace, d / trace.name)
    res = subprocess.run([str(BIN / "dftracer_validate"), "-d", str(d), "--log-level", "error"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "1 passed, 0 failed" in res.stdout, res.stdout + res.stderr
    res = subprocess.run([str(BIN / "dftracer_event_count"), "-d", str(d), "--index-dir",
                          str(tmp_path / "idx"), "--log-level", "error"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert int(res.stdout.strip().splitlines()[-1]) == EVENTS


def test_report_cuts_at_the_index_with_the_same_numbers(trace, cut, monkeypatch):
    ref = _reference([trace])
    assert merge.INDEX_COUNTS["used"] == 0
    got = merge.summarize([trace], jobs=2)
    assert merge.INDEX_COUNTS == {"used": 1, "refused": 0, "lied": 0}
    assert got == ref and got["totals"]["events"] == EVENTS
    units = list(merge.iter_units([trace], 2, merge.Aggregate(), use_index=True))
    assert len(units) > 2 and all(u.indexed for u in units)
    # each unit carries the member starts inside it, where its reads end (iter_members)
    with open(trace, "rb") as f:
        starts = [e.offset for e in gzindex.read_index(f)]
    assert [b for u in units for b in u.bounds] == starts[1:]
    assert all(u.start < b <= (u.end or 1 << 62) for u in units for b in u.bounds)
    # a file read whole (two workers, two even files) carries them too
    monkeypatch.setattr(merge, "WHOLE_WHEN_BALANCED", True)
    twin = trace.with_name("trace-u-7-h1.pfw.gz")
    twin.write_bytes(trace.read_bytes())
    whole = list(merge.iter_units([trace, twin], 2, merge.Aggregate(), use_index=True))
    assert [u.end for u in whole] == [None, None] and whole[0].bounds == tuple(starts[1:])


def _rewrite_index(path: Path, change) -> None:
    """Replace the file's index by one made from ``change(entries)``."""
    with open(path, "rb") as f:
        entries = gzindex.read_index(f)
    start = _index_start(path)
    body = path.read_bytes()[:start]
    path.write_bytes(body + gzindex.index_members(change(list(entries)), start))


def _shift(entries):
    e = entries[5]
    entries[5] = gzindex.Entry(e.offset + 1, e.events, e.trailer)
    return entries


def _swap(entries):
    entries[3], entries[4] = entries[4], entries[3]
    return entries


def _bad_trailer(entries):
    e = entries[7]
    entries[7] = gzindex.Entry(e.offset, e.events, bytes(8))
    return entries


def _not_from_zero(entries):
    return entries[1:]


def _drop_some(entries):        # each entry's trailer no longer ends where the next starts
    return entries[::3]


@pytest.mark.parametrize("lie", [_shift, _swap, _bad_trailer, _not_from_zero, _drop_some])
def test_an_index_that_lies_is_refused(trace, cut, lie):
    _rewrite_index(trace, lie)
    ref = _reference([trace])
    with open(trace, "rb") as f:
        assert gzindex.read_index(f) is None
    assert merge.summarize([trace], jobs=2) == ref
    assert merge.INDEX_COUNTS == {"used": 0, "refused": 1, "lied": 0}


def test_wrong_event_counts_change_nothing(trace, cut):
    """Event counts are informational: the numbers come from the lines."""
    _rewrite_index(trace, lambda es: [gzindex.Entry(e.offset, 7, e.trailer) for e in es])
    ref = _reference([trace])
    assert merge.summarize([trace], jobs=2) == ref
    assert merge.INDEX_COUNTS["used"] == 1


@pytest.mark.parametrize("keep", [0.3, 0.77, 0.999])
def test_torn_trace_has_no_index_and_reads_as_before(trace, cut, keep):
    data = trace.read_bytes()
    trace.write_bytes(data[:int(len(data) * keep)])
    ref = _reference([trace])
    got = merge.summarize([trace], jobs=2)
    assert got == ref
    assert merge.INDEX_COUNTS == {"used": 0, "refused": 1, "lied": 0}
    assert got["totals"]["events"] < EVENTS


def test_trace_appended_after_the_index(trace, tmp_path, cut):
    other = _write(tmp_path / "other.pfw.gz", 9_000, seed=3)
    trace.write_bytes(trace.read_bytes() + other.read_bytes())
    ref = _reference([trace])
    got = merge.summarize([trace], jobs=2)
    assert got == ref and got["totals"]["events"] == EVENTS + 9_000
    assert merge.INDEX_COUNTS["used"] == 0 and merge.INDEX_COUNTS["refused"] == 1


def test_garbage_after_the_index(trace, cut):
    trace.write_bytes(trace.read_bytes() + b"\x1f\x8b\x08\x04 not a member")
    ref = _reference([trace])
    assert merge.summarize([trace], jobs=2) == ref
    assert merge.INDEX_COUNTS == {"used": 0, "refused": 1, "lied": 0}


def test_damaged_member_behind_a_true_index_is_redone_the_old_way(trace, cut):
    """The index holds (header bytes and trailers check out) but a member in the middle is
    corrupt: a worker finds it, and the summary is redone without the index."""
    with open(trace, "rb") as f:
        entries = gzindex.read_index(f)
    victim = entries[len(entries) // 2]
    data = bytearray(trace.read_bytes())
    for k in range(40, 60):
        data[victim.offset + k] ^= 0x5A
    trace.write_bytes(bytes(data))
    with open(trace, "rb") as f:
        assert gzindex.read_index(f) is not None       # the parent's checks pass
    ref = _reference([trace])
    got = merge.summarize([trace], jobs=2)
    assert got == ref
    assert merge.INDEX_COUNTS == {"used": 1, "refused": 0, "lied": 1}
    assert got["totals"]["events"] < EVENTS


def test_long_trace_index_spans_several_members(tmp_path, cut, monkeypatch):
    """More members than one FEXTRA can list (a long job closing a member every second):
    the index is chained over several members and still read whole."""
    monkeypatch.setattr(sys.modules[__name__], "MEMBER", 4)
    n = 4 * (gzindex.PER_MEMBER * 2 + 100)
    trace = _write(tmp_path / "long.pfw.gz", n)
    data = trace.read_bytes()
    start = _index_start(trace)
    assert data.count(b"\x1f\x8b\x08\x04", start) == 3
    with open(trace, "rb") as f:
        entries = gzindex.read_index(f)
    assert entries is not None and sum(e.events for e in entries) == n
    assert len(entries) > 2 * gzindex.PER_MEMBER
    ref = _reference([trace])
    assert merge.summarize([trace], jobs=2) == ref
    assert merge.INDEX_COUNTS == {"used": 1, "refused": 0, "lied": 0}


def test_an_index_that_does_not_fit_leaves_a_complete_trace(tmp_path):
    """The index is a hint: a disk that fills up while writing it (here RLIMIT_FSIZE, in a
    child) leaves the trace complete and ending at "]", read by inflating as before."""
    whole = _write(tmp_path / "whole.pfw.gz", 5_000)
    limit = _index_start(whole) + 10
    code = f"""
import resource, signal, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
from pathlib import Path
import test_trace_gzindex as t
t._write(Path({str(tmp_path / "short.pfw.gz")!r}), 5_000)
w = t.WRITERS[-1]
print(w.complete, w.error, w.events_written)
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, timeout=120,
                         capture_output=True, text=True).stdout
    assert out.split() == ["True", "None", "5000"]
    short = tmp_path / "short.pfw.gz"
    assert short.stat().st_size == _index_start(whole)
    assert short.read_bytes() == whole.read_bytes()[:_index_start(whole)]
    with open(short, "rb") as f:
        assert gzindex.read_index(f) is None
    r = TraceReader(short)
    assert len([e for e in r.events() if e.get("ph") == "X"]) == 5_000 and r.stats.closed


@pytest.mark.parametrize("scheduler", ["processes", "threads"])
def test_dask_cuts_at_the_index_too(trace, cut, scheduler):
    from datacrumbs.report import dask_backend
    ref = _reference([trace])
    got = dask_backend.summarize([trace], jobs=2, scheduler=scheduler)
    assert got == ref
    assert merge.INDEX_COUNTS == {"used": 1, "refused": 0, "lied": 0}
    # a corrupt member behind a true index: found by a worker, redone without the index
    with open(trace, "rb") as f:
        victim = gzindex.read_index(f)[7]
    data = bytearray(trace.read_bytes())
    data[victim.offset + 50] ^= 0xFF
    trace.write_bytes(bytes(data))
    ref = _reference([trace])
    assert dask_backend.summarize([trace], jobs=2, scheduler=scheduler) == ref
    assert merge.INDEX_COUNTS == {"used": 2, "refused": 0, "lied": 1}
