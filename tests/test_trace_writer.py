"""TraceWriter: the pfw layout, whole members, ownership, crash and disk-full behaviour."""

from __future__ import annotations

import gzip
import json
import os
import re
import stat
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest

from test_trace_reader import gzip_complete_events

from datacrumbs.trace.writer import OPS_DTYPE, TraceWriter, name_hash
from workloads import daemon_readback as rb

T0 = 1764079200_000_000
PROBES = [
    {"id": "posix.write", "kind": "syscall", "target": "write", "category": "POSIX"},
    {"id": "posix.openat", "kind": "syscall", "target": "openat", "category": "POSIX"},
    {"id": "stdio.fwrite", "kind": "uprobe", "target": "fwrite", "category": "STDIO"},
    {"id": "blk.done", "kind": "tracepoint", "target": "block:block_rq_complete",
     "category": "BLOCK"},
]
HEADER = {"version": "0.1.0", "job": "1234", "user": "alice", "host": "node1", "mode": "trace",
          "clock": "realtime-us", "ts": T0}


@pytest.fixture(scope="module")
def compiled_lines(tmp_path_factory):
    from datacrumbs.trace import fastlines
    out = tmp_path_factory.mktemp("lines") / fastlines.LIBRARY_NAME
    return fastlines.load(fastlines.build_library(out))


@pytest.fixture(autouse=True, params=["python", "compiled"])
def formatting(request, monkeypatch, compiled_lines):
    """Every writer test twice: lines by Python f-strings, and by the compiled formatter
    the daemon uses (members of blocks, the cap, disk full, ... behave the same)."""
    if request.param == "compiled":
        monkeypatch.setitem(TraceWriter.__init__.__kwdefaults__, "lines", compiled_lines)
    return request.param


def make_ops(n, *, probe=0, fd=3, count=4096, size=4096, ret=4096, pid=4242, errno=0):
    ops = np.zeros(n, OPS_DTYPE)
    ops["ts_ns"] = (T0 + np.arange(n) * 10) * 1000
    ops["dur_ns"] = 2000
    ops["pid"] = pid
    ops["tid"] = pid + 1
    ops["probe"] = probe
    ops["ret"] = ret
    ops["errno"] = errno
    ops["fd"] = fd
    ops["count"] = count
    ops["offset"] = -1
    ops["size"] = size
    return ops


def new_writer(path, **kw):
    w = TraceWriter(path, header=HEADER, **kw)
    w.set_probes(PROBES)
    return w


def test_layout_key_order_hashes_and_pandas(tmp_path):
    path = tmp_path / "t.pfw.gz"
    with new_writer(path) as w:
        w.process_name(4242, "ior")
        opened = make_ops(1, probe=1, fd=-1, count=-1, size=-1, ret=3)
        w.write_ops(opened, ["/data/out.bin"])
        w.write_ops(make_ops(5), ["/data/out.bin"] * 5)
        failed = make_ops(1, ret=-1, errno=28, size=-1)
        w.write_ops(failed, [None])
        w.write_ops(make_ops(1, probe=3, fd=-1, count=-1, size=512, ret=0), None)
    text = gzip.open(path, "rt").read().splitlines()  # whole file = valid multi-member gzip
    assert text[0] == "[" and text[-1] == "]"
    recs = [json.loads(x) for x in text[1:-1]]
    head = recs[0]
    assert list(head) == ["id", "name", "cat", "pid", "tid", "ts", "ph", "args"]
    assert head["args"] == {"version": "0.1.0", "job": "1234", "user": "alice", "host": "node1",
                            "hhash": name_hash("node1"), "mode": "trace", "clock": "realtime-us"}
    kinds = [(r["name"], r["ph"]) for r in recs]
    assert kinds[1] == ("HH", "M") and kinds[2] == ("process_name", "M")
    fh = [i for i, r in enumerate(recs) if r["name"] == "FH"]
    assert len(fh) == 1 and recs[fh[0]]["args"] == {"name": "/data/out.bin",
                                                    "value": name_hash("/data/out.bin")}
    ev = [r for r in recs if r["ph"] == "X"]
    assert fh[0] < recs.index(ev[0])
    assert all(list(e) == ["id", "name", "cat", "pid", "tid", "ts", "dur", "ph", "args"] for e in ev)
    assert [e["name"] for e in ev] == ["openat"] + ["write"] * 6 + ["block_rq_complete"]
    assert ev[0]["args"] == {"hhash": name_hash("node1"), "fhash": name_hash("/data/out.bin"),
                             "ret": 3}
    assert ev[1]["args"] == {"hhash": name_hash("node1"), "fhash": name_hash("/data/out.bin"),
                             "fd": 3, "count": 4096, "size": 4096, "ret": 4096}
    assert ev[6]["args"]["ret"] == -1 and ev[6]["args"]["errno"] == 28
    assert "size" not in ev[6]["args"] and "fhash" not in ev[6]["args"]
    assert ev[7]["cat"] == "BLOCK" and ev[7]["args"]["probe"] == "blk.done"
    assert "ret" not in ev[7]["args"]
    ids = [r["id"] for r in recs]
    assert ids == sorted(set(ids))
    frame = rb.pandas_frame(path)
    x = frame[frame["ph"] == "X"]
    assert len(x) == 8 and x["ts"].tolist() == [e["ts"] for e in ev]
    assert w.complete and w.events_written == 8


def test_members_end_at_line_ends_and_respect_limits(tmp_path):
    path = tmp_path / "t.pfw.gz"
    clock = [0.0]
    w = new_writer(path, member_events=100, clock=lambda: clock[0])
    w.write_ops(make_ops(250), None)  # 2 members of 100 closed, 50 pending
    assert len(rb.members(path)[0]) == 3
    w.write_ops(make_ops(10), None)
    w.tick()
    assert len(rb.members(path)[0]) == 3  # younger than flush_interval: buffered
    clock[0] = 1.5
    w.tick()
    assert len(rb.members(path)[0]) == 4 and len(rb.events(path)) == 260
    w.close()
    mem, tail = rb.members(path)
    # "]" in its own member, then the member index: one empty member (trace/gzindex.py)
    assert tail == b"" and mem[-2:] == [b"]\n", b""]
    assert all(m.endswith(b"\n") for m in mem[:-1])
    from datacrumbs.trace import gzindex
    with open(path, "rb") as f:
        entries = gzindex.read_index(f)
    assert [e.events for e in entries] == [0, 100, 100, 60, 0]


def test_file_is_new_private_and_owned_by_the_user(tmp_path, user1):
    path = tmp_path / "t.pfw.gz"
    old = os.umask(0o077)
    try:
        new_writer(path, owner_uid=user1.pw_uid, owner_gid=user1.pw_gid).close()
    finally:
        os.umask(old)
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o600  # private by default: not even the group
    assert (st.st_uid, st.st_gid) == (user1.pw_uid, user1.pw_gid)
    shared = tmp_path / "shared.pfw.gz"     # a site's trace_group: exactly 0640, that group
    old = os.umask(0o077)
    try:
        new_writer(shared, owner_uid=user1.pw_uid, owner_gid=0, mode=0o640).close()
    finally:
        os.umask(old)
    st = os.stat(shared)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, user1.pw_uid, 0)
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        new_writer(path)
    assert path.read_bytes() == before  # never overwritten
    link = tmp_path / "link.pfw.gz"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError):
        new_writer(link)
    assert not (tmp_path / "elsewhere").exists()


def test_speed_and_size_for_repetitive_io(tmp_path):
    """Formatting must keep up with the kernel: measured, and bounded loosely."""
    path = tmp_path / "t.pfw.gz"
    n = 100_000
    ops = make_ops(n)
    paths = ["/scratch/job/out.dat"] * n
    w = new_writer(path)
    t = time.perf_counter()
    for i in range(0, n, 8192):
        w.write_ops(ops[i:i + 8192], paths[i:i + 8192])
    w.close()
    rate = n / (time.perf_counter() - t)
    per_event = path.stat().st_size / n
    print(f"writer: {rate:,.0f} events/s, {per_event:.1f} bytes/event")
    assert per_event < 25
    assert rate > 50_000  # loose: CI cores are shared; the benchmark reports the real number
    assert len(rb.events(path)) == n


def test_sigkill_leaves_whole_members_only(tmp_path):
    """A writer killed at any moment leaves a file readable up to its last member."""
    path = tmp_path / "t.pfw.gz"
    code = f"""
import sys, numpy as np
sys.path.insert(0, {str(os.path.dirname(__file__))!r})
from test_trace_writer import new_writer, make_ops
w = new_writer({str(path)!r}, member_events=1000)
print("go", flush=True)
import time
while True:
    w.write_ops(make_ops(500), ["/x/y"] * 500)
    time.sleep(0.002)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout.readline() == b"go\n"
    time.sleep(0.5)
    proc.kill()
    proc.wait()
    proc.stdout.close()
    mem, tail = rb.members(path)
    ev = rb.events(path)
    assert len(mem) >= 2 and len(ev) > 0 and len(ev) % 500 == 0
    assert rb.lines(path)[0] == "[" and "]" not in rb.lines(path)
    frame = rb.pandas_frame(path)
    assert (frame["ph"] == "X").sum() == len(ev)
    from datacrumbs.trace.reader import TraceReader
    assert sum(1 for r in TraceReader(path).events() if r.get("ph") == "X") == len(ev)
    # A kill inside os.write leaves part of a member: a member-wise reader drops it, ours
    # keeps its whole lines, exactly those gzip -dc recovers.
    comp = zlib.compressobj(1, zlib.DEFLATED, 31)
    member = comp.compress(b"\n".join([b'{"id":1,"ph":"X"}'] * 2000)) + comp.flush()
    with open(path, "ab") as f:
        f.write(member[:len(member) // 2])
    assert rb.members(path)[1] != b"" and len(rb.events(path)) == len(ev)
    kept = sum(1 for r in TraceReader(path).events() if r.get("ph") == "X")
    assert kept == gzip_complete_events(path) > len(ev)


@pytest.fixture
def tiny_fs(tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_disk_full_stops_writing_keeps_trace_readable(tiny_fs, caplog):
    path = tiny_fs / "t.pfw.gz"
    w = new_writer(path, member_events=2000)
    rng = np.random.default_rng(1)
    total = 0
    for i in range(60):  # random paths and values: poorly compressible, fills 256 KiB
        ops = make_ops(2000)
        ops["offset"] = rng.integers(0, 1 << 40, 2000)
        ops["dur_ns"] = rng.integers(0, 1 << 40, 2000)
        w.write_ops(ops, [f"/f/{x}" for x in rng.integers(0, 1 << 60, 2000)])
        total += 2000
    w.close()  # must not raise
    assert w.error and "No space left" in w.error
    assert w.events_dropped > 0 and w.events_written + w.events_dropped == total
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and str(path) in errors[0].getMessage()
    mem, tail = rb.members(path)
    assert tail == b""  # cut back to the last complete member
    assert len(rb.events(path)) == w.events_written
    assert not w.complete


def _noisy_ops(rng, n, first_id_ts=0):
    """Poorly compressible rows (random durations) so a small cap is reached quickly."""
    ops = make_ops(n)
    ops["ts_ns"] += first_id_ts * 1000
    ops["dur_ns"] = rng.integers(0, 1 << 40, n)
    ops["size"] = np.arange(n) + first_id_ts  # the row's number: shows which rows were kept
    return ops


@pytest.mark.parametrize("cap", [4096, 20000, 65536])
def test_size_cap_ends_a_complete_trace_at_the_cap(tmp_path, caplog, cap):
    """At max_bytes the trace is finished (``]``, readable by gzip and our reader), within
    a few hundred bytes of the cap, holding exactly the first events; later ones are
    counted, never written, and the writer does not fail."""
    from datacrumbs.trace.reader import TraceReader

    path = tmp_path / "t.pfw.gz"
    clock = [0.0]
    w = new_writer(path, member_events=700, max_bytes=cap, clock=lambda: clock[0])
    rng = np.random.default_rng(7)
    total = 0
    for i in range(40):
        w.write_ops(_noisy_ops(rng, 500, total), [f"/f/{total // 1000}"] * 500)
        total += 500
        clock[0] += 2.0
        w.tick()
        w.process_name(9000 + i, f"late-{i}")  # metadata after the cap is dropped too
    assert w.capped_at is not None and w.error is None
    size_at_cap = path.stat().st_size
    w.write_ops(make_ops(10), None)          # after the cap: counted, not written
    w.write_counters([(T0, 1, 0, 5, 5, 5)])
    total += 11
    w.close()
    w.close()  # idempotent
    assert path.stat().st_size == size_at_cap  # nothing after the cap, not even at close
    assert cap - 600 < size_at_cap <= cap, (cap, size_at_cap)
    assert not w.complete and w.error is None
    assert w.events_written + w.events_dropped == total and w.events_dropped > 0
    # plain gzip (the tool) and Python's gzip read the whole file; it ends with "]"
    out = subprocess.run(["gzip", "-dc", str(path)], capture_output=True, check=True).stdout
    text = out.decode().splitlines()
    assert text == gzip.open(path, "rt").read().splitlines()
    assert text[0] == "[" and text[-1] == "]" and text.count("]") == 1
    recs = [json.loads(x) for x in text[1:-1]]
    ev = [r for r in recs if r["ph"] == "X"]
    assert len(ev) == w.events_written
    # exactly the first events, in order, and no record skipped in between
    assert [e["args"]["size"] for e in ev] == list(range(len(ev)))
    assert [r["id"] for r in recs] == list(range(len(recs)))
    assert not any(r["name"] == "process_name" and r["pid"] >= 9000 + 39 for r in recs)
    ours = [e for e in TraceReader(path).events() if e.get("ph") == "X"]
    assert [e["args"]["size"] for e in ours] == list(range(len(ev)))


def test_size_cap_not_reached_changes_nothing(tmp_path):
    path = tmp_path / "t.pfw.gz"
    w = new_writer(path, max_bytes=1 << 20)
    w.write_ops(make_ops(1000), None)
    w.close()
    assert w.complete and w.capped_at is None and w.events_dropped == 0
    assert rb.lines(path)[-1] == "]" and len(rb.events(path)) == 1000


def test_times_keep_nanoseconds_as_three_decimals_of_a_microsecond(tmp_path):
    """The kernel measures ns: written as whole µs a 0.412 µs read would take 0 time, and
    1,003 such reads would sum to nothing. Counters (profile mode) likewise."""
    path = tmp_path / "t.pfw.gz"
    durs = [0, 1, 412, 999, 1000, 961_877, 12_345_678_901]
    ops = make_ops(len(durs))
    ops["ts_ns"] = 1732400000123456789 + np.arange(len(durs)) * 1_000_001
    ops["dur_ns"] = durs
    with new_writer(path) as w:
        w.write_ops(ops, None)
        w.write_counters([(1732400000123456789, 4242, 0, 1003, 1003, 961_877),
                          (1732400000200000000, 4242, 0, 1, 1, 5)])
    lines = [ln for ln in rb.lines(path) if '"ph":"X"' in ln or '"ph":"C"' in ln]
    assert '"ts":1732400000123456.789,"dur":0.000,"ph":"X"' in lines[0]
    texts = [re.search(r'"ts":([0-9.]+),"dur":([0-9.]+),', ln).groups() for ln in lines[:7]]
    assert [d for _, d in texts] == ["0.000", "0.001", "0.412", "0.999", "1.000", "961.877",
                                     "12345678.901"]
    assert [t for t, _ in texts] == [f"{t // 1000}.{t % 1000:03d}" for t in ops["ts_ns"].tolist()]
    assert '"ts":1732400000123456.789,"ph":"C"' in lines[7]
    assert '"time_us":961.877}' in lines[7] and '"time_us":0.005}' in lines[8]
    # independent readers get every nanosecond back
    assert [round(e["dur"] * 1000) for e in rb.events(path)] == durs
    frame = rb.pandas_frame(path)
    x = frame[frame["ph"] == "X"]
    assert [round(d * 1000) for d in x["dur"].tolist()] == durs
    assert [round(c["args"]["time_us"] * 1000) for c in rb.events(path, ph="C")] == [961_877, 5]


def test_repeated_values_are_formatted_like_distinct_ones(tmp_path):
    """Columns with few distinct values are formatted once per value; the text must be the
    same as row by row: absent when negative, except ``ret`` which is always written."""
    path = tmp_path / "t.pfw.gz"
    n = 600
    i = np.arange(n)
    ops = make_ops(n, probe=2)
    ops["fd"] = np.where(i % 3 == 0, -1, 7)
    ops["size"] = np.where(i % 2 == 0, 16, -1)
    ops["count"] = i                                  # all distinct: formatted per row
    ops["ret"] = np.where(i % 5 == 0, -1, 16)         # a uprobe's -1 without errno stays
    ops["offset"] = -1
    w = TraceWriter(path, header=HEADER)
    w.set_probes(PROBES[:3])                          # every probe has a return value
    w.write_ops(ops, None)
    w.close()
    got = [e["args"] for e in rb.events(path)]
    want = [{"hhash": name_hash("node1"), **({} if k % 3 == 0 else {"fd": 7}), "count": k,
             **({"size": 16} if k % 2 == 0 else {}), "ret": -1 if k % 5 == 0 else 16}
            for k in range(n)]
    assert got == want


def test_copies_name_both_files_and_flags_are_written_for_their_probes(tmp_path):
    """fd2/fhash2 only for probes with an fd2 role, flags only for probes with a flags role."""
    probes = [
        {"id": "posix.write", "kind": "syscall", "target": "write", "category": "POSIX",
         "args": {"fd": 0, "count": 2}},
        {"id": "posix.openat", "kind": "syscall", "target": "openat", "category": "POSIX",
         "args": {"fd": 0, "path": 1, "flags": 2}},
        {"id": "posix.copy_file_range", "kind": "syscall", "target": "copy_file_range",
         "category": "POSIX", "args": {"fd": 0, "fd2": 2, "count": 4, "flags": 5}},
    ]
    path = tmp_path / "t.pfw.gz"
    with TraceWriter(path, header=HEADER) as w:
        w.set_probes(probes)
        ops = np.concatenate([make_ops(1, probe=1, fd=-100, count=-1, size=-1, ret=4),
                              make_ops(1, probe=2, fd=3, count=1 << 30, size=1 << 20,
                                       ret=1 << 20),
                              make_ops(1, probe=2, fd=3, count=1 << 30, size=0, ret=0),
                              make_ops(1, probe=0, fd=4)])
        ops["fd2"] = [0, 4, 4, 7]          # write's fd2 (none in the probe) is not written
        ops["flags"] = [0o1101, 0, 0, 9]
        w.write_ops(ops, ["/d/b", "/d/a", "/d/a", "/d/b"], [None, "/d/b", "/d/b", None])
    recs = rb.records(path)
    fh = {r["args"]["name"]: r["args"]["value"] for r in recs if r["name"] == "FH"}
    ev = rb.events(path)
    assert ev[0]["args"]["flags"] == 0o1101 and "fd2" not in ev[0]["args"]
    assert ev[1]["args"] == {"hhash": name_hash("node1"), "fhash": fh["/d/a"], "fd": 3, "fd2": 4,
                             "fhash2": fh["/d/b"], "count": 1 << 30, "size": 1 << 20,
                             "ret": 1 << 20, "flags": 0}
    assert "fd2" not in ev[3]["args"] and "flags" not in ev[3]["args"]
    # FH lines come before the events that use them
    first_event = next(i for i, r in enumerate(recs) if r.get("ph") == "X")
    assert all(i < first_event for i, r in enumerate(recs) if r["name"] == "FH")
