"""The streaming trace reader against traces written independently with gzip + json.

``fixtures.traces.TraceBuilder`` is a second producer of the design.md layout
(not the project's writer), so the reader is checked against the contract.
"""

from __future__ import annotations

import gzip
import subprocess
import io
import json

import numpy as np
import pandas as pd
import pytest

from fixtures.traces import START_US, TraceBuilder

from datacrumbs.trace.reader import (TraceReadError, TraceReader, index_members, iter_members,
                                     parse_lines, read_header)

def simple_trace(path, n=200, member_lines=50, **kw) -> TraceBuilder:
    b = TraceBuilder(path, member_lines=member_lines, **kw)
    b.process(100, "writer")
    for i in range(n):
        b.op("write", ts=i * 10, dur=i % 7 + 1, path="/data/out.dat", size=4096, fd=3, count=4096)
    return b


def test_reads_every_event_with_hash_tables_resolved(tmp_path):
    b = simple_trace(tmp_path / "t.pfw.gz")
    b.write()
    reader = TraceReader(b.path)
    events = reader.read_all()
    assert len(events) == 200
    assert all(e["args"]["fname"] == "/data/out.dat" for e in events)
    assert all(e["args"]["hostname"] == "node1" for e in events)
    assert sum(e["args"]["size"] for e in events) == 200 * 4096
    st = reader.stats
    assert (st.events, st.bad_lines, st.torn_tail, st.closed) == (200, 0, False, True)
    assert st.members == len(b.member_bounds) + 1     # + the "]" member
    assert st.records == len(b.lines) - 1              # every line but "["
    assert reader.meta.header["job"] == "1234" and reader.meta.header["host"] == "node1"
    assert reader.meta.process_names == {100: "writer"}
    assert read_header(b.path)["user"] == "alice"


def test_pandas_read_json_of_the_event_lines_agrees(tmp_path):
    b = simple_trace(tmp_path / "t.pfw.gz", n=321, member_lines=37)
    b.op("openat", path="/etc/none", errno=2, ts=5000)
    b.write()
    text = gzip.open(b.path, "rt").read().splitlines()
    assert text[0] == "[" and text[-1] == "]"
    df = pd.read_json(io.StringIO("\n".join(text[1:-1])), lines=True)
    reader = TraceReader(b.path)
    events = reader.read_all()
    assert len(df) == reader.stats.records
    assert int((df["ph"] != "M").sum()) == reader.stats.events == len(events) == 322
    assert int((df["ph"] == "X").sum()) == sum(1 for e in events if e["ph"] == "X")
    frames = list(TraceReader(b.path, chunk_events=100).dataframes())
    assert sum(len(f) for f in frames) == 322
    whole = pd.concat(frames)
    assert int(whole["args.size"].sum()) == int(df["args"].map(lambda a: a.get("size", 0)).sum())
    assert set(whole["args.fname"].dropna()) == {"/data/out.dat", "/etc/none"}


def test_torn_tail_is_dropped_and_reported(tmp_path):
    b = simple_trace(tmp_path / "t.pfw.gz")
    b.write(close=False, torn_bytes=30)
    reader = TraceReader(b.path)
    events = reader.read_all()
    assert len(events) == 200                      # the torn member's event is not counted
    st = reader.stats
    assert st.torn_tail and not st.closed and st.dropped_bytes == 30
    assert "ends inside a gzip member" in st.tail_error
    assert st.members == len(b.member_bounds)


def gzip_complete_events(path: Path) -> int:
    """Independent oracle: event lines that `gzip -dc` writes out whole before it stops at
    the damage (it exits 1 on a truncated file but has written all it could inflate)."""
    out = subprocess.run(["gzip", "-dc", str(path)], capture_output=True).stdout
    whole = out[:out.rfind(b"\n") + 1].splitlines()
    return sum(1 for line in whole if line.startswith(b"{") and b'"ph":"M"' not in line)


def test_every_cut_point_keeps_every_complete_line_before_it(tmp_path):
    """A crash can cut the file anywhere: the reader never raises and keeps every whole line
    that was written before the cut, also inside the torn member (what gzip -dc recovers)."""
    b = simple_trace(tmp_path / "full.pfw.gz", n=120, member_lines=20)
    b.write()
    data = b.path.read_bytes()
    with open(b.path, "rb") as f:
        ends = [m.offset + m.length for m, _ in iter_members(f)]
    per_member = [0] + b.member_bounds + [b.member_bounds[-1]]   # events complete after member k
    cut_path = tmp_path / "cut.pfw.gz"
    beyond_members = 0
    for cut in range(0, len(data) + 1, 7):
        cut_path.write_bytes(data[:cut])
        reader = TraceReader(cut_path)
        n = sum(len(c) for c in reader.chunks())
        complete = sum(1 for e in ends if e <= cut)
        assert reader.stats.members == complete
        assert n == gzip_complete_events(cut_path)
        assert n >= per_member[complete]
        beyond_members += n > per_member[complete]
        assert reader.stats.torn_tail == (cut not in [0, *ends])
    assert beyond_members > 0  # some cuts fell inside a member and its lines were kept


def test_missing_close_bracket_and_empty_files_are_fine(tmp_path):
    b = simple_trace(tmp_path / "open.pfw.gz", n=10)
    b.write(close=False)
    r = TraceReader(b.path)
    assert len(r.read_all()) == 10 and not r.stats.closed and not r.stats.torn_tail
    empty = tmp_path / "empty.pfw.gz"
    empty.write_bytes(b"")
    r = TraceReader(empty)
    assert r.read_all() == [] and r.stats.members == 0 and not r.stats.torn_tail
    only = tmp_path / "only.pfw.gz"
    only.write_bytes(gzip.compress(b"[\n") + gzip.compress(b"]\n"))
    r = TraceReader(only)
    assert r.read_all() == [] and r.stats.members == 2 and r.stats.closed


def test_not_gzip_and_corrupt_member(tmp_path):
    bad = tmp_path / "bad.pfw.gz"
    bad.write_text("hello\n")
    with pytest.raises(TraceReadError, match=r"bad\.pfw\.gz: not a gzip file"):
        TraceReader(bad).read_all()
    b = simple_trace(tmp_path / "t.pfw.gz", n=100, member_lines=25)
    b.write()
    data = bytearray(b.path.read_bytes())
    with open(b.path, "rb") as f:
        members = [m for m, _ in iter_members(f)]
    third = members[2]
    data[third.offset + 20: third.offset + 40] = b"\xff" * 20   # inside the deflate data
    b.path.write_bytes(bytes(data))
    r = TraceReader(b.path)
    n = len(r.read_all())
    assert r.stats.members == 2
    assert n == b.member_bounds[1]
    assert r.stats.tail_error.startswith(f"corrupt gzip data at byte {third.offset}")
    assert not r.stats.torn_tail


def test_bad_lines_are_counted_not_fatal(tmp_path):
    b = simple_trace(tmp_path / "t.pfw.gz", n=10)
    b.raw("this is not json")
    b.raw("[1, 2, 3]")
    b.op("write", size=1, path="/x")
    b.write()
    r = TraceReader(b.path)
    assert len(r.read_all()) == 11
    assert r.stats.bad_lines == 2
    assert parse_lines([b'{"a":1}', b"nope"]) == ([{"a": 1}], 1)


def test_oversize_member_is_streamed_in_whole_lines(tmp_path):
    b = simple_trace(tmp_path / "big.pfw.gz", n=500, member_lines=10_000)   # one member
    b.write()
    r = TraceReader(b.path, max_member_bytes=2000)
    assert len(r.read_all()) == 500 and not r.stats.partial_member_kept
    b2 = simple_trace(tmp_path / "bigtorn.pfw.gz", n=500, member_lines=10_000)
    b2.write(close=False)
    data = b2.path.read_bytes()
    b2.path.write_bytes(data[: len(data) - 50])
    r = TraceReader(b2.path, max_member_bytes=2000)
    n = len(r.read_all())
    assert r.stats.torn_tail and r.stats.partial_member_kept and 0 < n < 500


def test_a_corrupt_member_keeps_its_lines_before_the_damage(tmp_path, monkeypatch):
    """Bytes zeroed inside the only events member (a bad disk block): the reader keeps the
    events inflated before the damage, as an independent inflater (zlib fed one byte at
    a time) recovers them, not nothing because one read call spanned the damage."""
    import random
    import zlib

    b = TraceBuilder(tmp_path / "c.pfw.gz", member_lines=100_000)
    b.process(100, "writer")
    rng = random.Random(7)
    for i in range(4000):       # varied values: the member compresses like a real one
        b.op("write", ts=i * 10, dur=rng.randrange(1, 999), path=f"/d/f{rng.randrange(50)}",
             size=rng.choice((512, 4096, 65536)), fd=3, count=4096)
    b.write()
    data = bytearray(b.path.read_bytes())
    first = zlib.decompressobj(31)
    first.decompress(bytes(data))
    member_end = len(data) - len(first.unused_data)     # then the "]" member
    assert first.eof and member_end > 20_000
    bad_at = member_end // 2
    data[bad_at:bad_at + 64] = bytes(64)
    b.path.write_bytes(bytes(data))

    def events_in(text: bytes) -> list:
        lines = text[:text.rfind(b"\n") + 1].splitlines()
        return [json.loads(ln) for ln in lines if ln.startswith(b"{") and b'"ph":"X"' in ln]

    clean = zlib.decompressobj(31)
    before = events_in(b"".join(clean.decompress(data[i:i + 1])
                               for i in range(bad_at)))
    assert 1000 < len(before) < 3000
    r = TraceReader(b.path)
    got = r.read_all()
    assert "corrupt gzip data" in r.stats.tail_error and r.stats.partial_member_kept
    # every event up to the damage (but those of the last 256-byte step), and the events
    # themselves, not damaged ones: the damage is found some bytes after it begins
    assert len(got) >= len(before) - 40, (len(got), len(before))
    assert [e["ts"] for e in got[:len(before) - 40]] == [e["ts"] for e in before[:-40]]
    assert [e["dur"] for e in got[:len(before) - 40]] == [e["dur"] for e in before[:-40]]
    # read in 4 KiB reads as an oversize member, handed on in pieces before the damage is
    # met: the same events, none twice
    import datacrumbs.trace.reader as reader_module

    monkeypatch.setattr(reader_module, "READ_CHUNK", 4096)
    pieces = TraceReader(b.path, max_member_bytes=20_000)
    assert [e.get("ts") for e in pieces.read_all()] == [e.get("ts") for e in got]


def test_member_ranges_add_up_to_the_whole(tmp_path):
    b = simple_trace(tmp_path / "t.pfw.gz", n=1000, member_lines=40)
    b.write(torn_bytes=25)
    members, tail = index_members(b.path)
    assert tail.torn and len(members) == len(b.member_bounds) + 1
    total = 0
    for lo in range(0, len(members), 5):
        group = members[lo:lo + 5]
        r = TraceReader(b.path, start=group[0].offset, end=group[-1].offset + group[-1].length)
        total += sum(len(c) for c in r.chunks())
        assert r.stats.members == len(group) and not r.stats.torn_tail
    assert total == 1000


def test_plain_json_and_non_trace_files(tmp_path):
    plain = tmp_path / "t.pfw"
    plain.write_text("[\n" + "\n".join(
        json.dumps({"name": "read", "cat": "POSIX", "pid": 1, "tid": 1, "ts": i, "dur": 1,
                    "ph": "X", "args": {"size": 2}}) + "," for i in range(5)) + "\n]\n")
    r = TraceReader(plain)
    assert len(r.read_all()) == 5 and r.stats.closed and r.stats.bad_lines == 0
    other = tmp_path / "notes.txt"
    other.write_text("just text\n")
    with pytest.raises(TraceReadError, match="not a trace"):
        TraceReader(other).read_all()
    with pytest.raises(TraceReadError, match="no such file"):
        TraceReader(tmp_path / "missing.pfw.gz").read_all()
    with pytest.raises(TraceReadError, match="not a regular file"):
        TraceReader(tmp_path).read_all()


def test_reads_the_project_writer_output(tmp_path):
    """The project's TraceWriter and this reader agree on the contract."""
    from datacrumbs.trace import writer as writer_mod

    path = tmp_path / "w.pfw.gz"
    w = writer_mod.TraceWriter(path, header={"job": "77", "user": "alice", "host": "nodeW",
                                             "mode": "trace", "version": "0.1.0"},
                               member_events=100)
    w.set_probes([{"id": "posix.write", "kind": "syscall", "target": "write", "category": "POSIX"}])
    ops = np.zeros(250, dtype=writer_mod.OPS_DTYPE)
    ops["ts_ns"] = (START_US + np.arange(250)) * 1000
    ops["dur_ns"] = 3000
    ops["pid"] = ops["tid"] = 4242
    ops["fd"], ops["count"], ops["offset"], ops["size"], ops["ret"] = 3, 512, -1, 512, 512
    w.process_name(4242, "dd")
    w.write_ops(ops, ["/tmp/out"] * 250)
    w.close()
    r = TraceReader(path)
    events = r.read_all()
    assert len(events) == 250 and r.stats.closed and not r.stats.torn_tail
    assert {e["args"]["fname"] for e in events} == {"/tmp/out"}
    assert sum(e["args"]["size"] for e in events) == 250 * 512
    assert r.meta.header["host"] == "nodeW" and r.meta.process_names[4242] == "dd"
    assert r.stats.members >= 3


def test_unused_data_between_members_is_not_lost():
    """Many tiny members inside one read chunk: each decompressor hands on its unused_data."""
    parts = [gzip.compress(f'{{"ph":"X","name":"w","ts":{i}}}\n'.encode()) for i in range(300)]
    f = io.BytesIO(b"".join(parts))
    got = [data for _, data in iter_members(f)]
    assert len(got) == 300 and got[299] == b'{"ph":"X","name":"w","ts":299}\n'


@pytest.mark.parametrize("step,chunk", [(1000, 37), (29000, 5), (512, 4096), (29, 1)])
def test_bounded_inflate_steps_lose_no_output(monkeypatch, step, chunk):
    """Output is inflated at most INFLATE_STEP bytes per call (bounded memory); whatever
    the step and read sizes, including members whose size is an exact multiple of the step,
    every byte comes out and no member looks torn."""
    import datacrumbs.trace.reader as reader_mod

    monkeypatch.setattr(reader_mod, "INFLATE_STEP", step)
    monkeypatch.setattr(reader_mod, "READ_CHUNK", chunk)
    payload = b'{"ph":"X","name":"w","ts":1}\n' * 1000          # 29,000 bytes
    tail = reader_mod.TailInfo()
    got = [d for _, d in iter_members(io.BytesIO(gzip.compress(payload) * 3), tail=tail,
                                      max_member_bytes=10**9)]
    assert got == [payload] * 3 and not tail.torn and tail.error is None


def test_member_bounds_only_change_the_reads(monkeypatch):
    """Reads end at the bounds an index gives (one read, one piece per member), and only
    the reads: true bounds, lying ones (inside members, far apart, past the end) and none
    give the same members, bytes, damage report and kept lines, on clean members, a
    corrupt one and a torn tail; with true bounds no member is inflated from two reads."""
    import random

    import datacrumbs.trace.reader as reader_mod

    rng = random.Random(4)
    members = [gzip.compress(b"".join(b'{"ph":"X","name":"w","ts":%d,"pad":"%s"}\n' % (
        i * 100 + j, b"x" * rng.randrange(50)) for j in range(rng.randrange(1, 400))))
        for i in range(40)]
    starts = [sum(map(len, members[:i])) for i in range(len(members))]
    clean = b"".join(members)
    bad = bytearray(clean)
    bad[starts[20] + 200] ^= 0xFF                           # corrupt inside member 20
    torn = clean[:starts[30] + len(members[30]) // 2]      # cut inside member 30
    monkeypatch.setattr(reader_mod, "READ_CHUNK", 3000)    # members span several reads
    reads = []

    class Counting(io.BytesIO):
        def read(self, n=-1):
            got = super().read(n)
            reads.append(len(got))
            return got

    def run(blob, bounds):
        tail = reader_mod.TailInfo()
        got = [(i and (i.offset, i.length), d) for i, d in
               iter_members(Counting(bytes(blob)), tail=tail, bounds=bounds)]
        return got, (tail.torn, tail.error, tail.dropped_bytes, tail.partial_kept)

    lies = sorted(rng.sample(range(len(clean) + 5000), 30))
    for blob in (clean, bad, torn):
        want = run(blob, ())
        for bounds in (starts[1:], lies, [5, 10 ** 9], starts[1::7]):
            assert run(blob, bounds) == want
    reads.clear()
    run(clean, starts[1:] + [len(clean)])
    assert len(reads) == len(members) + 1                  # one read a member, then EOF


def test_fractional_microseconds_are_read_as_written(tmp_path):
    """``ts``/``dur`` carry three decimals (ns): events and DataFrames give them back, and
    ``dur`` keeps every nanosecond (an epoch ``ts`` as a double keeps about 0.25 µs)."""
    from datacrumbs.trace.writer import OPS_DTYPE, TraceWriter

    path = tmp_path / "ns.pfw.gz"
    w = TraceWriter(path, header={"host": "n", "ts": START_US}, member_events=50)
    w.set_probes([{"id": "posix.read", "kind": "syscall", "target": "read", "category": "POSIX"}])
    ops = np.zeros(120, OPS_DTYPE)
    ops["ts_ns"] = START_US * 1000 + np.arange(120) * 1_500 + 789
    ops["dur_ns"] = np.arange(120) * 7 + 1
    ops["fd"] = ops["count"] = ops["offset"] = ops["size"] = -1
    w.write_ops(ops, None)
    w.close()
    events = TraceReader(path).read_all()
    assert [round(e["dur"] * 1000) for e in events] == ops["dur_ns"].tolist()
    assert all(abs(e["ts"] - t / 1000) <= 0.25 for e, t in zip(events, ops["ts_ns"].tolist()))
    assert events[0]["dur"] == 0.001 and events[-1]["dur"] == 0.834
    frames = list(TraceReader(path, chunk_events=40).dataframes())
    durs = pd.concat(frames)["dur"]
    assert durs.dtype == np.float64 and (np.rint(durs * 1000) == ops["dur_ns"]).all()
