"""The compiled stream fold (trace/fold.c via trace/fastfold.py) gives the numpy fold's
summary (--json, whole) and the object fold's (Stream per stream, Detail.VECTOR False):
on the hand-made traces of the columnar tests, the bench's generator, hostile numbers
(offsets near 2^63 that wrap, negative sizes, NaN/inf durations, huge pids, chunks of
opens only, an empty trace) and a real traced program, chunked several ways and cut as
two workers cut a trace. Each comparison checks the fold's counter, so a missing library
cannot pass by falling back; a missing or foreign-ABI library falls back cleanly."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from datacrumbs.report import analysis, columnar, merge, model
from datacrumbs.report import groupstate as gs
from datacrumbs.report.merge import summarize
from datacrumbs.trace import fastfold, fastscan
from datacrumbs.tracer.build import build_shared_library
from fixtures.traces import TraceBuilder, bench_trace, mixed_io_program, split_summary
from fixtures.tracing import trace_command
from test_report_columnar import rich_trace

ebpf = pytest.mark.ebpf


@pytest.fixture(scope="module")
def site_object(tmp_path_factory) -> Path:
    """A site's BPF object path with the scanner and the fold built beside it by the real
    build code."""
    obj = tmp_path_factory.mktemp("site-lib") / "datacrumbs.bpf.o"
    fastscan.build_library(fastscan.library_path(obj))
    fastfold.build_library(fastfold.library_path(obj))
    return obj


def use_site(obj: Path, tmp_path: Path, monkeypatch) -> None:
    cfg = tmp_path / "datacrumbs.toml"
    cfg.write_text(f'[paths]\nbpf_object = "{obj}"\n')
    monkeypatch.setenv("DATACRUMBS_CONFIG", str(cfg))
    monkeypatch.setattr(columnar, "_SCANNER", [])
    monkeypatch.setattr(analysis, "_FOLDER", [])


@pytest.fixture(autouse=True)
def site_fold(site_object, tmp_path, monkeypatch):
    use_site(site_object, tmp_path, monkeypatch)


def dumps(summary: dict) -> str:
    return json.dumps(summary, sort_keys=True, default=str)


def assert_same(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for key in b:
        assert dumps(a[key]) == dumps(b[key]), (what, key)


def all_folds(paths: list, monkeypatch, *, chunk: int | None = None, split: bool = False) -> dict:
    """The summary with fold.c, held to numpy's and to the object fold's (with and without
    fold.c); fold.c must have folded at least one chunk."""
    if chunk:
        monkeypatch.setattr(merge, "CHUNK_EVENTS", chunk)

    def run() -> dict:
        return split_summary(paths) if split else summarize(paths, jobs=1)

    folder = analysis._folder()
    assert folder is not None, "the site's stream fold was not loaded"
    calls, declined = folder.calls, folder.declined
    fast = run()
    assert folder.calls > calls, "fold.c folded no chunk"
    assert folder.declined == declined
    monkeypatch.setattr(analysis, "FOLD", False)
    assert_same(fast, run(), "numpy")
    monkeypatch.setattr(analysis.Detail, "VECTOR", False)
    assert_same(fast, run(), "objects, numpy")
    monkeypatch.setattr(analysis, "FOLD", True)
    assert_same(fast, run(), "objects, fold.c")
    monkeypatch.setattr(analysis.Detail, "VECTOR", True)
    return fast


@pytest.mark.parametrize("chunk", [97, 1500, 100_000])
def test_rich_trace_gives_numpys_numbers_chunked_several_ways(tmp_path, monkeypatch, chunk):
    trace = rich_trace(tmp_path / "trace-a-1-node1.pfw.gz", 30_000, seed=1)
    fast = all_folds([trace], monkeypatch, chunk=chunk)
    assert fast["totals"]["events"] >= 29_900
    # what the fold computes is there: patterns, read extents, created files
    acc = [a for f in fast["files"] for a in f["access"].values()]
    for kind in ("consecutive", "sequential", "random"):
        assert sum(a[kind] for a in acc) > 100, kind
    assert sum(f["read_extent_bytes"] for f in fast["files"]) > 0
    assert fast["file_counts"]["created"] > 0


def test_rich_traces_cut_as_two_workers_cut_them(tmp_path, monkeypatch):
    paths = [rich_trace(tmp_path / f"trace-a-1-node{i}.pfw.gz", 15_000, seed=20 + i,
                        host=f"node{i}") for i in (1, 2)]
    monkeypatch.setattr(merge, "SPLIT_BYTES", 20_000)
    monkeypatch.setattr(merge, "WHOLE_WHEN_BALANCED", False)
    fast = all_folds(paths, monkeypatch, chunk=700, split=True)
    assert len(fast["traces"]) == 2
    # the dict path (one dict per event) folds with fold.c too, to the same numbers
    monkeypatch.setattr(model, "COLUMNAR", False)
    assert_same(split_summary(paths), fast, "dicts")


def test_the_bench_generators_trace(tmp_path, monkeypatch):
    trace = bench_trace(tmp_path / "trace-bench-4242-node0.pfw.gz", 150_000, seed=7)
    folder = analysis._folder()
    uniques, absorbed = folder.uniques, folder.absorbed
    fast = all_folds([trace], monkeypatch, chunk=40_000)
    assert fast["totals"]["events"] == 150_000
    # its (file, access size) pairs span too wide a range to count directly: hashed
    assert folder.uniques > uniques
    # and each chunk after the first composes its streams with the earlier ones in C
    assert folder.absorbed > absorbed


def test_unique_is_numpys_unique(site_object):
    """dc_unique (hashed) and dc_dense_unique (counted, for a narrow range) against
    np.unique: keys over the whole int64 range and narrow ones, few and many distinct, runs
    of one key, both ends of int64, with and without inverse and counts (the same arrays,
    dtype and all)."""
    folder = fastfold.load(fastfold.library_path(site_object))
    rng = np.random.default_rng(11)
    for trial in range(240):
        n = int(rng.integers(0, 9000)) if trial else 0
        hi = [2 ** 63 - 1, 2 ** 40, 300][trial % 3]
        pool = rng.integers(-hi - 1 if trial % 2 else 0, hi, max(1, n // int(rng.integers(1, 60))),
                            dtype=np.int64)
        keys = rng.choice(pool, n) if n else np.zeros(0, np.int64)
        if trial % 4 == 0:
            keys = np.sort(keys)                    # runs
        if n >= 5 and trial % 5 == 0:
            keys[:5] = [0, -1, 2 ** 63 - 1, -2 ** 63, 0]
        lo = int(keys.min()) if n else 0
        span = int(keys.max()) - lo + 1 if n else 0
        for inverse in (False, True):
            for counts in (False, True):
                want = np.unique(keys, return_inverse=inverse, return_counts=counts)
                want = want if isinstance(want, tuple) else (want,)
                dense = [folder.unique(keys, inverse, counts, lo, span)] if span < 1e6 else []
                for got in [folder.unique(keys, inverse, counts)] + dense:
                    got = got if isinstance(got, tuple) else (got,)
                    assert len(got) == len(want)
                    for g, w in zip(got, want):
                        assert g.dtype == w.dtype and np.array_equal(g, w), (trial, inverse, counts)
    # a key outside the span given: declined, not miscounted
    assert folder.unique(np.array([3, 9, 4]), True, True, 3, 5) is None


def test_sums_are_numpys_int64_sums(site_object):
    """dc_sums against np.add.at in int64 (which wraps), groups sorted and not, values
    near both ends of int64; a group out of range is declined (None), not written."""
    folder = fastfold.load(fastfold.library_path(site_object))
    rng = np.random.default_rng(5)
    for trial in range(120):
        n, ng = int(rng.integers(0, 5000)), int(rng.integers(1, 300))
        groups = rng.integers(0, ng, n)
        if trial % 3 == 0:
            groups = np.sort(groups)
        hi = [2 ** 63 - 1, 2 ** 53, 1000][trial % 3]
        values = rng.integers(-hi if trial % 2 else 0, hi, n, dtype=np.int64)
        want = np.zeros(ng, np.int64)
        np.add.at(want, groups, values)
        assert np.array_equal(folder.sums(groups, values, ng), want), trial
    assert folder.sums(np.array([0, 3]), np.array([1, 2]), 3) is None
    assert folder.sums(np.array([0, -1]), np.array([1, 2]), 3) is None


def test_byte_sums_past_2_to_the_53_are_exact(tmp_path, monkeypatch):
    """One read of 2**53 - 1 bytes and 1999 of one byte: float64 sums stop at 2**53 (each
    +1 rounds back to even); the operation, file and process totals are exact, with fold.c
    and with numpy."""
    b = TraceBuilder(tmp_path / "trace-big-1-node1.pfw.gz", member_lines=500)
    for i in range(2000):
        b.op("read", ts=float(i), path="/scratch/big", size=2 ** 53 - 1 if i == 0 else 1,
             count=1)
    trace = b.write()
    want = 2 ** 53 - 1 + 1999
    folder = analysis._folder()
    summed = folder.summed
    for fold in (True, False):
        monkeypatch.setattr(analysis, "FOLD", fold)
        s = summarize([trace], jobs=1)
        assert [o["bytes"] for o in s["operations"] if o["name"] == "read"] == [want]
        assert [f["bytes"] for f in s["top_files_by_bytes"]] == [want]
        assert [f["bytes"]["read"] for f in s["files"]] == [want]
        assert [p["bytes"] for p in s["processes"]] == [want]
    assert folder.summed > summed


def test_floats_are_columnars_sanitised_columns(site_object):
    """dc_ints_as_floats / dc_sane_floats against the numpy code they replace (astype, NaN
    where not given, columnar._sane): ints around 2**53 (2**53 + 1 rounds down to it and
    stays), negatives, int64's ends; floats NaN, inf, -0.0, just past 2**53."""
    folder = fastfold.load(fastfold.library_path(site_object))
    edges = [0, 1, -1, 2 ** 53, 2 ** 53 + 1, 2 ** 53 + 2, 2 ** 63 - 1, -2 ** 63, 12345]
    rng = np.random.default_rng(8)
    ints = np.array(edges + rng.integers(-2 ** 60, 2 ** 60, 500).tolist(), np.int64)
    given = rng.integers(0, 2, len(ints)).astype(bool)
    given[:len(edges)] = True
    fl = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 2.0 ** 53, np.nextafter(2.0 ** 53, 4e16),
                   -1e-300, 1.5] + rng.normal(0, 1e16, 500).tolist())
    for default in (-1.0, 0.0):
        want = ints.astype(np.float64)
        want[~given] = np.nan
        want = columnar._sane(want, default)
        got = np.empty(len(ints))
        folder.floats(ints, given, default, got)
        assert np.array_equal(got, want) and np.array_equal(np.signbit(got), np.signbit(want))
        want = columnar._sane(fl.copy(), default)
        got = np.empty(len(fl))
        folder.floats(fl, None, default, got)
        assert np.array_equal(got, want) and np.array_equal(np.signbit(got), np.signbit(want))


def _random_groups(rng, n: int) -> gs.Groups:
    """Groups of ``n`` rows in every state a fold can leave: streams and not, positions
    absolute and relative (near int64's ends too), with and without an access, and side
    tables of extents and pairs."""
    g = gs.Groups(16)
    big = 2 ** 63 - 1
    st = rng.integers(-1000, 1000, (n, gs.NCOL))
    st[:, gs.POS] = rng.choice([0, 4096, big - 10, -big, 123], n)
    for col in (gs.POS_ABS, gs.HAS, gs.HEAD_ABS, gs.LAST_ABS, gs.IN_TABLE, gs.IS_STREAM):
        st[:, col] = rng.integers(0, 2, n)
    g.state, g.n = np.ascontiguousarray(st, np.int64), n
    for r in rng.choice(n, n // 3, replace=False).tolist():
        g.ext[r] = [(0, int(rng.integers(1, 9000)))]
    for r in rng.choice(n, n // 3, replace=False).tolist():
        g.pend[r] = [tuple(int(x) for x in rng.integers(0, 2, 4))]
    return g


def test_add_streams_in_c_is_numpys(monkeypatch):
    """fold.c's dc_add_streams against groupstate's numpy code on random states and later
    partials: the same matrix, the same extents and pairs in the same order (dict order
    too), the same extents made absolute."""
    import copy

    folder = analysis._folder()
    rng = np.random.default_rng(3)
    for trial in range(200):
        n = int(rng.integers(1, 60))
        g = _random_groups(rng, n)
        ng = int(rng.integers(0, n + 1))
        ids = rng.choice(n, ng, replace=False).astype(np.int64)
        b = _random_groups(rng, max(ng, 1)).state[:ng].copy()
        ne, npend = int(rng.integers(0, 3 * ng + 1)), int(rng.integers(0, 3 * ng + 1))
        ext_j = rng.integers(0, max(ng, 1), ne) if ng else np.zeros(0, np.int64)
        ext_se = np.sort(rng.integers(-50, 5000, (ne, 2)), axis=1)
        ext_file = rng.integers(0, 4, ng)
        pend_j = rng.integers(0, max(ng, 1), npend) if ng else np.zeros(0, np.int64)
        pend_v = rng.integers(-3000, 3000, (npend, 4))
        pend_v[:, 1] = rng.integers(0, 2, npend)
        pend_v[:, 3] = rng.integers(0, 2, npend)
        want_g, got_g = copy.deepcopy(g), copy.deepcopy(g)
        monkeypatch.setattr(analysis, "FOLD", False)
        want = want_g.add_streams(ids, b, ext_j, ext_se, ext_file, pend_j, pend_v)
        monkeypatch.setattr(analysis, "FOLD", True)
        absorbed = folder.absorbed
        got = got_g.add_streams(ids, b, ext_j, ext_se, ext_file, pend_j, pend_v)
        assert folder.absorbed == absorbed + (ng > 0)
        assert np.array_equal(got_g.state, want_g.state), trial
        assert list(got_g.ext.items()) == list(want_g.ext.items()), trial
        assert list(got_g.pend.items()) == list(want_g.pend.items()), trial
        assert list(got) == list(want) and all(np.array_equal(got[k], want[k]) for k in want)


def hostile_trace(path: Path, chunked_opens: bool = True) -> Path:
    """Numbers at int64's edges and beyond, in every field the fold reads."""
    b = TraceBuilder(path, member_lines=37)
    big = 2 ** 63 - 1
    t = 0.0
    for i in range(600):
        t += 1.0
        pid = (100, 2 ** 62 + 3, 2 ** 31 + 5)[i % 3]
        f = f"/scratch/h{i % 4}"
        k = i % 12
        if k == 0:
            b.op("openat", pid=pid, ts=t, path=f, ret=3, flags=0o100)
        elif k == 1:
            b.op("pread64", pid=pid, ts=t, path=f, size=4096, count=4096, offset=big - 100)
        elif k == 2:
            b.op("pwrite64", pid=pid, ts=t, path=f, size=2 ** 62, count=2 ** 62,
                 offset=2 ** 62 + 5)
        elif k == 3:
            b.op("read", pid=pid, ts=t, path=f, size=big, count=big)
        elif k == 4:
            b.op("read", pid=pid, ts=t, path=f, size=big, count=big)      # wraps the position
        elif k == 5:
            b.op("write", pid=pid, ts=t, path=f, size=-5, count=10)
        elif k == 6:
            b.op("lseek", pid=pid, ts=t, path=f, ret=2 ** 62 - 1)
        elif k == 7:
            b.op("lseek", pid=pid, ts=t, path=f, ret=big)                # not a position
        elif k == 8:
            b.op("read", pid=pid, ts=-t, dur=0, path=f, size=4096, count=4096)
        elif k == 9:
            b.raw('{"id":%d,"name":"read","cat":"POSIX","pid":%d,"tid":%d,"ts":%d,"dur":%s,'
                  '"ph":"X","args":{"fhash":"%s","size":512,"ret":512}}'
                  % (900000 + i, pid, pid, b.start_us + int(t), ("NaN", "Infinity", "-Infinity")[i % 3],
                     b._hash("FH", f, pid)), event=True)
        elif k == 10:
            b.op("pread64", pid=pid, ts=t, path=f, size=4096, count=4096, offset=-3)
        else:
            b.op("write", pid=pid, ts=t, path=f, size=8192, count=8192)
    if chunked_opens:       # a process that only opens and seeks: streams with no access
        for i in range(50):
            b.op("openat", pid=77, ts=1000.0 + i, path=f"/scratch/o{i % 3}", ret=4)
            b.op("lseek", pid=77, ts=1000.5 + i, path=f"/scratch/o{i % 3}", ret=i * 4096)
    return b.write()


@pytest.mark.parametrize("chunk", [5, 64, 10_000])
def test_hostile_numbers_give_numpys_numbers(tmp_path, monkeypatch, chunk):
    trace = hostile_trace(tmp_path / "trace-h-1-node1.pfw.gz")
    fast = all_folds([trace], monkeypatch, chunk=chunk)
    assert fast["totals"]["events"] >= 700


def test_an_empty_trace_and_a_trace_of_opens_only(tmp_path, monkeypatch):
    empty = TraceBuilder(tmp_path / "trace-e-1-node1.pfw.gz").write()
    monkeypatch.setattr(analysis, "FOLD", False)
    numpy_ = summarize([empty], jobs=1)
    monkeypatch.setattr(analysis, "FOLD", True)
    assert_same(summarize([empty], jobs=1), numpy_, "empty")
    b = TraceBuilder(tmp_path / "trace-o-1-node1.pfw.gz")
    for i in range(40):
        b.op("openat", pid=5, ts=float(i), path=f"/scratch/o{i % 3}", ret=3)
    all_folds([b.write()], monkeypatch, chunk=7)


def test_bad_columns_are_declined_cleanly(site_object):
    """Rows out of order or a stream number out of range: None (numpy folds), no crash;
    empty inputs fold to empty results."""
    folder = fastfold.load(fastfold.library_path(site_object))
    z = np.zeros(0, np.int64)
    one = np.ones(2, np.int64)
    declined = folder.declined
    assert folder.streams(np.array([5, 3]), one, np.zeros(2), one, one, z, z, z, z,
                          np.ones(2, bool)) is None                         # rows unsorted
    assert folder.streams(np.array([1, 2]), np.array([0, 9]), np.zeros(2), one, one, z, z, z,
                          z, np.ones(2, bool)) is None                      # stream 9 of 2
    assert folder.streams(np.array([1, 2]), np.array([0, -1]), np.zeros(2), one, one, z, z,
                          z, z, np.ones(2, bool)) is None                   # stream -1
    assert folder.streams(z, z, z, z, z, np.array([4, 2]), one, np.zeros(2),
                          np.ones(2), np.ones(2, bool)) is None             # resets unsorted
    assert folder.declined == declined + 4
    got = folder.streams(z, z, z, z, z, z, z, z, z, np.zeros(0, bool))
    assert got is not None and all(len(x) == 0 for x in got)


def test_missing_or_foreign_library_falls_back_to_numpy(tmp_path, monkeypatch):
    trace = rich_trace(tmp_path / "trace-a-1-node1.pfw.gz", 5_000, seed=4, hostile=False)
    monkeypatch.setattr(analysis, "FOLD", False)
    want = summarize([trace], jobs=1)
    monkeypatch.setattr(analysis, "FOLD", True)
    bare = tmp_path / "bare"
    bare.mkdir()
    use_site(bare / "datacrumbs.bpf.o", tmp_path, monkeypatch)
    assert analysis._folder() is None
    assert_same(summarize([trace], jobs=1), want, "no library")
    src = tmp_path / "foreign.c"
    src.write_text("int dc_fold_abi(void) { return 999; }\n")
    foreign = tmp_path / "foreign" / "datacrumbs.bpf.o"
    build_shared_library(src, fastfold.library_path(foreign), "foreign fold")
    use_site(foreign, tmp_path, monkeypatch)
    assert analysis._folder() is None
    assert_same(summarize([trace], jobs=1), want, "foreign ABI")


@ebpf
def test_a_real_traced_program(site, bpf_object, tmp_path, monkeypatch):
    """Opens, sequential and positioned reads and writes, seeks, a copy, appends, stdio."""
    monkeypatch.setattr(analysis, "_FOLDER", [])
    root = tmp_path / "d"
    root.mkdir()
    program = mixed_io_program(root)
    _, trace, _ = trace_command(tmp_path, [sys.executable, "-I", "-S", "-c", program],
                                sets=("posix", "stdio"))
    for chunk in (13, 200, 100_000):
        fast = all_folds([trace], monkeypatch, chunk=chunk)
    files = {f["path"]: f for f in fast["files"]}
    a = files[os.path.join(str(root), "a")]
    assert a["bytes"]["write"] == sum((i % 7 + 1) * 100 for i in range(300))
    assert files[os.path.join(str(root), "b")]["bytes"]["write"] == 5000
