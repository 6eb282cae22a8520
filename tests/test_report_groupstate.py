"""The report's per-group state as arrays (report/groupstate.py) gives the numbers of the
object fold it replaced (a table row and a Stream per group and chunk, kept as
``Detail.VECTOR = False``), field by field of the --json summary: on a large synthetic
trace of many chunks and many (process, file, class, layer) streams with opens (some
O_APPEND), seeks, offsets, implicit-position reads and writes, re-read extents, copies
and nesting, read whole, split into member ranges merged in order, and through the dict
path (``TraceReader.chunks`` + ``Aggregate.add_events``) with the object fold."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from datacrumbs.report import analysis, columnar, merge, model
from datacrumbs.report.merge import summarize
from fixtures.traces import TraceBuilder, split_summary

O_WRONLY, O_RDWR, O_CREAT, O_APPEND = 0o1, 0o2, 0o100, 0o2000


def streams_trace(path: Path, n: int, seed: int, *, host: str = "node1") -> Path:
    """About ``n`` events of 24 processes (two threads each) over 160 files: several
    hundred streams per chunk, each followed across chunks."""
    rng = random.Random(seed)
    b = TraceBuilder(path, host=host, member_lines=1999)
    pids = list(range(1000, 1024))
    for p in pids:
        b.process(p, f"rank{p - 1000}")
    clock = {(p, t): 10.0 * p for p in pids for t in (p, p + 1)}
    sizes = [1, 100, 512, 4096, 4096, 65536, 1 << 20]
    k = 0
    while b.event_lines < n:
        pid = rng.choice(pids)
        tid = pid + rng.randrange(2)
        t = clock[(pid, tid)] = clock[(pid, tid)] + rng.choice([0.5, 1.25, 3.0, 10.001])
        f = f"/scratch/job/f{rng.randrange(160)}.dat"
        r = rng.random()
        k += 1
        if r < 0.05:
            flags = rng.choice([0, O_RDWR, O_WRONLY | O_CREAT, O_WRONLY | O_APPEND,
                                O_WRONLY | O_CREAT | O_APPEND])
            b.op("openat", pid=pid, tid=tid, ts=t, dur=2.5, path=f, ret=rng.choice([3, 3, -1]),
                 flags=flags, ftype="reg")
        elif r < 0.09:                          # back to the start (re-reads) or forward
            b.op("lseek", pid=pid, tid=tid, ts=t, dur=0.3, path=f,
                 ret=rng.choice([0, 0, 4096, 12345, 1 << 20]), ftype="reg")
        elif r < 0.50:
            sz = rng.choice(sizes)
            b.op(rng.choice(["read", "read", "write"]), pid=pid, tid=tid, ts=t, dur=1.0 + sz / 1e4,
                 path=f, size=sz, count=sz, ftype="reg")
        elif r < 0.62:                          # positioned: repeated offsets re-read extents
            sz = rng.choice(sizes)
            b.op(rng.choice(["pread64", "pread64", "pwrite64"]), pid=pid, tid=tid, ts=t, dur=2.0,
                 path=f, size=sz, count=sz, offset=rng.choice([0, 4096, 8192, 100, 1 << 30,
                                                               4096 * rng.randrange(64)]),
                 ftype="reg")
        elif r < 0.65:
            f2 = f"/scratch/job/copy{rng.randrange(5)}"
            b.op("copy_file_range", pid=pid, tid=tid, ts=t, dur=5.0, path=f, size=4096, count=4096,
                 fhash2=b._hash("FH", f2, pid), ftype="reg", ftype2="reg")
        elif r < 0.72:                          # H5Dwrite > MPI_File_write_at > pwrite64
            b.op("pwrite64", pid=pid, tid=tid, ts=t + 2, dur=3.0, path=f, size=4096, count=4096,
                 offset=4096 * (k % 50), ftype="reg")
            b.op("MPI_File_write_at", cat="MPIIO", pid=pid, tid=tid, ts=t + 1, dur=5.0, path=f,
                 size=4096, count=4096)
            b.op("H5Dwrite", cat="HDF5", pid=pid, tid=tid, ts=t, dur=7.0, size=4096)
            clock[(pid, tid)] = t + 7
        elif r < 0.80:                          # fread > read, at the file position
            b.op("read", pid=pid, tid=tid, ts=t + 0.5, dur=1.0, path=f, size=8192, count=8192,
                 ftype="reg")
            b.op("fread", cat="STDIO", pid=pid, tid=tid, ts=t, dur=2.0, path=f, size=8192)
            clock[(pid, tid)] = t + 2
        elif r < 0.85:
            b.op("read", pid=pid, tid=tid, ts=t, dur=900.0, path="pipe:[4242]", size=10,
                 count=4096, ftype="pipe")
        elif r < 0.90:
            b.op("mmap", pid=pid, tid=tid, ts=t, dur=0.7, size=-1)
        else:
            b.op("close", pid=pid, tid=tid, ts=t, dur=0.2, path=f, ret=0, ftype="reg")
    return b.write()


def assert_same(new: dict, ref: dict) -> None:
    """Field by field, so a difference names its place."""
    assert new.keys() == ref.keys()
    for key in ref:
        assert json.dumps(new[key], sort_keys=True, default=str) == \
            json.dumps(ref[key], sort_keys=True, default=str), key


def test_array_fold_gives_the_object_folds_numbers_over_many_chunks(tmp_path, monkeypatch):
    trace = streams_trace(tmp_path / "trace-a-1-node1.pfw.gz", 150_000, seed=7)
    monkeypatch.setattr(merge, "CHUNK_EVENTS", 12_000)          # 13 chunks
    monkeypatch.setattr(analysis.Detail, "VECTOR", True)
    new = summarize([trace], jobs=1)
    monkeypatch.setattr(analysis.Detail, "VECTOR", False)
    ref = summarize([trace], jobs=1)
    monkeypatch.setattr(model, "COLUMNAR", False)               # the dict path, object fold
    ref_dicts = summarize([trace], jobs=1)
    assert_same(new, ref)
    assert_same(new, ref_dicts)
    # the trace exercises what the fold composes across chunks
    files = [f for f in new["files"] if f["path"].startswith("/scratch/job/f")]
    assert len(files) == 160
    for c in ("read", "write"):
        for k in ("consecutive", "sequential", "random"):
            assert sum(f["access"][c][k] for f in files) > 100, (c, k)
        # every access of the lowest layer is classified once, whichever chunk it fell in
        assert all(sum(f["access"][c].values()) == f["ops"][c] for f in files), c
    assert sum(f["misaligned_requests"] for f in files) > 0
    # reads re-read extents: the distinct bytes read are fewer than the bytes read
    assert all(0 < f["read_extent_bytes"] < f["bytes"]["read"] for f in files)
    assert new["file_counts"]["created"] > 0
    assert [c["op"] for c in new["layer_breakdown"][0]] == \
        ["HDF5/H5Dwrite", "MPIIO/MPI_File_write_at", "POSIX/pwrite64"]


DEFAULT_CAP = analysis.SIZES_CAP


@pytest.mark.parametrize("sizes_cap", [DEFAULT_CAP, 3])
def test_array_merge_of_member_ranges_gives_the_object_merges_numbers(tmp_path, monkeypatch,
                                                                      sizes_cap):
    """Split in member ranges, each a partial of several chunks, merged in order; with a
    cap of 3 distinct sizes a file keeps (of the trace's 7) too, which sizes each fold
    admits and drops, within a chunk and across merges."""
    monkeypatch.setattr(analysis, "SIZES_CAP", sizes_cap)
    paths = [streams_trace(tmp_path / f"trace-a-1-node{i}.pfw.gz", 40_000, seed=20 + i,
                           host=f"node{i}") for i in (1, 2)]
    monkeypatch.setattr(merge, "SPLIT_BYTES", 100_000)          # several units a file
    monkeypatch.setattr(merge, "WHOLE_WHEN_BALANCED", False)  # cut even so
    monkeypatch.setattr(merge, "CHUNK_EVENTS", 5_000)
    monkeypatch.setattr(analysis.Detail, "VECTOR", False)
    ref = split_summary(paths)
    monkeypatch.setattr(analysis.Detail, "VECTOR", True)
    units = merge.plan_units([Path(p) for p in paths], 2, model.Aggregate())
    assert len(units) >= 6, units
    new = split_summary(paths)
    assert_same(new, ref)
    assert new["totals"]["events"] >= 80_000 and len(new["traces"]) == 2
    if sizes_cap == DEFAULT_CAP:
        # the same as the traces read whole: where the report cuts them changes nothing (an
        # access and the one before on different bases wait in pend until one is known);
        # at a cap of 3, which sizes are kept depends on the order they come in, by design
        monkeypatch.setattr(merge, "SPLIT_BYTES", 1 << 40)
        monkeypatch.setattr(merge, "CHUNK_EVENTS", 1 << 30)
        whole = split_summary(paths)
        for key in ("files", "operations", "findings"):
            assert whole[key] == new[key], key
    agg = model.Aggregate()
    for unit in units:
        agg.merge(merge.summarize_unit(unit))
    agg.detail._sync()
    kept = [len(d) for d in agg.detail.sizes.values()]
    assert max(kept) == min(sizes_cap, 7) and min(kept) >= 1


def test_sorts_without_lexsort_give_lexsorts_order():
    """pair_counts (one key of both when they are non-negative and fit, else a hash of b
    and a rank of a), _by_group and the thread order of _nest replace np.lexsort: the same
    pairs, counts and order on random keys of every range and sign."""
    import numpy as np

    def ref_pairs(a, b):
        o = np.lexsort((b, a))
        a, b = a[o], b[o]
        new = np.ones(len(a), bool)
        new[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
        idx = np.flatnonzero(new)
        return a[idx].tolist(), b[idx].tolist(), np.diff(np.append(idx, len(a))).tolist()

    rng = np.random.default_rng(1)
    for trial in range(200):
        n = int(rng.integers(1, 6000))
        a = rng.integers(int(rng.choice([-5, 0])), int(rng.choice([3, 100, 10 ** 6, 2 ** 40])), n)
        b = rng.integers(int(rng.choice([-2 ** 62, -3, 0])), int(rng.choice([5, 1000, 2 ** 62])), n)
        assert analysis.pair_counts(a, b) == ref_pairs(a, b), trial
        rows = np.concatenate([np.sort(rng.choice(10 ** 6, n, replace=False))] * 2)
        keys = np.concatenate([a, a + 1])       # (key, row) pairs distinct, as _streams makes
        _, rank = analysis.uniq(keys, inverse=True)
        order, ranks = analysis._group_order(rank, rows)
        assert (order == np.lexsort((rows, keys))).all(), trial
        assert (ranks == rank[order]).all(), trial


def test_float_floor_division_without_fmod_is_numpys():
    import numpy as np

    from datacrumbs.report.model import _floor_div

    rng = np.random.default_rng(3)
    for w in (1, 10_000, 40_000, 10_000 << 20):
        base = 1_764_079_200_000_000 + rng.integers(0, 10 ** 12, 100_000)
        us = np.concatenate([base + rng.integers(0, 1000, len(base)) / 1000,   # µs.ns stamps
                             (base // w) * w - rng.choice([0.001, 0.0, 0.25, 0.5], len(base)),
                             [0.0, 0.5, 2.0 ** 52, 2.0 ** 53 - 1]])
        assert (_floor_div(us, w) == (us // w).astype(np.int64)).all(), w


def test_chunks_of_opens_and_seeks_only_carry_the_position_to_later_reads(tmp_path, monkeypatch):
    """A chunk whose file calls are only opens and seeks (no read or write yet) once raised
    IndexError; its streams keep the position, so the later reads land where the seek left
    them: at 4096, then back to back."""
    from datacrumbs.trace import reader

    b = TraceBuilder(tmp_path / "trace-a-1-node1.pfw.gz", member_lines=7)
    t = 0.0
    for i in range(30):
        t += 10
        b.op("openat", pid=100, ts=t, dur=2, path="/d/a", ret=3, flags=O_RDWR, ftype="reg")
        b.op("lseek", pid=100, ts=t + 5, dur=1, path="/d/a", ret=4096 * (i % 3), ftype="reg")
    b.op("lseek", pid=100, ts=t + 20, dur=1, path="/d/a", ret=4096, ftype="reg")
    for i in range(10):
        b.op("read", pid=100, ts=t + 30 + i, dur=0.5, path="/d/a", size=100, count=100,
             ftype="reg")
    trace = b.write()
    monkeypatch.setattr(reader, "PARSE_BLOCK", 1500)          # blocks of a few lines
    monkeypatch.setattr(columnar, "PARSE_BLOCK", 1500)
    monkeypatch.setattr(merge, "CHUNK_EVENTS", 8)
    out = []
    for vector in (True, False):
        monkeypatch.setattr(analysis.Detail, "VECTOR", vector)
        out.append(summarize([trace], jobs=1))
    assert_same(*out)
    f = out[0]["files"][0]
    assert f["ops"] == {"read": 10, "write": 0, "metadata": 61, "other": 0}
    assert f["access"]["read"] == {"consecutive": 9, "sequential": 1, "random": 0}
    assert f["read_extent_bytes"] == 1000


def test_sizes_keep_the_first_distinct_sizes_of_a_key_and_ids_for_those_only():
    """groupstate.Sizes admits as the dict of dicts did (a key's first ``cap`` distinct sizes,
    later counts of those added) and gives ids only to admitted sizes, so a stream of ever
    new sizes does not grow its state."""
    import numpy as np

    from datacrumbs.report.groupstate import Sizes

    s = Sizes(cap=2)
    for first in range(0, 1000, 10):                    # 100 chunks, 10 new sizes each
        sizes = np.arange(first, first + 10, dtype=np.int64) + 1
        s.add(np.zeros(10, np.int64), sizes, np.ones(10, np.int64))
        s.add(np.ones(1, np.int64), sizes[-1:], np.full(1, 5, np.int64))
    s.add(np.zeros(2, np.int64), np.array([2, 1], np.int64), np.array([7, 3], np.int64))
    keys, sizes, counts = s.keys_in_order()
    assert keys.tolist() == [0, 0, 1, 1] and sizes.tolist() == [1, 2, 10, 20]
    assert counts.tolist() == [4, 8, 5, 5]
    assert len(s.size_ids) == 4 and len(s) == 4
