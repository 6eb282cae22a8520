"""`datacrumbs export --perfetto`: one strict-JSON Chrome trace, all nodes, sliced on request."""

from __future__ import annotations

import gzip
import json
import os
import zlib

import pytest

from datacrumbs.cli import run_cli
from datacrumbs.report.export import PID_STRIDE, ExportTooLarge, export_perfetto, parse_time
from fixtures.traces import START_US, TraceBuilder


def make_nodes(d, n_nodes=3, per_node=100):
    d.mkdir(parents=True, exist_ok=True)
    for k in range(n_nodes):
        b = TraceBuilder(d / f"trace-alice-9-node{k}.pfw.gz", host=f"node{k}", job="9", member_lines=30)
        for pid in (500, 501):
            b.process(pid, f"rank{pid - 500}")
        for i in range(per_node):
            b.op("write", pid=500 + i % 2, ts=i * 100_000, dur=50, path=f"/scratch/f{k}", size=1024)
        b.write()
    return d


def load(path):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as f:
        return json.load(f)          # strict JSON: commas, one array


def test_export_has_all_nodes_on_one_timeline(tmp_path):
    d = make_nodes(tmp_path / "job")
    out = tmp_path / "job.json"
    res = export_perfetto([d], out)
    events = load(out)
    assert isinstance(events, list)
    ops = [e for e in events if e["ph"] == "X"]
    assert len(ops) == res.events - 12 == 300            # 3 nodes x 2 pids x 2 metadata lines
    assert res.nodes == ["node0", "node1", "node2"]
    assert {e["args"]["hostname"] for e in ops} == {"node0", "node1", "node2"}
    assert all(e["args"]["fname"] == f"/scratch/f{e['args']['hostname'][-1]}" for e in ops)
    assert not any(e["name"] in ("HH", "FH", "SH") for e in events)
    names = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert len(names) == 6                                # same pids on 3 nodes stay distinct
    assert names[1 * PID_STRIDE + 500] == "node0: rank0 (500)"
    assert names[3 * PID_STRIDE + 501] == "node2: rank1 (501)"
    assert {e["pid"] for e in ops} == set(names)
    assert all(e["args"]["pid"] in (500, 501) for e in ops)
    assert min(e["ts"] for e in ops) == START_US


def test_slices_by_time_node_and_pid(tmp_path):
    d = make_nodes(tmp_path / "job")
    out = tmp_path / "slice.json"
    export_perfetto([d], out, since=parse_time("2", "--since"), until=parse_time("4.5", "--until"),
                    nodes=["node1"], pids=[501])
    ops = [e for e in load(out) if e["ph"] == "X"]
    lo, hi = START_US + 2_000_000, START_US + 4_500_000
    assert ops and all(lo <= e["ts"] + e["dur"] and e["ts"] <= hi for e in ops)
    assert {e["args"]["hostname"] for e in ops} == {"node1"} and {e["args"]["pid"] for e in ops} == {501}
    # i*100ms for i odd (pid 501) with 2.0 s <= ts <= 4.5 s: i = 21, 23, ..., 45
    assert len(ops) == len(range(21, 46, 2))
    absolute = tmp_path / "abs.json"
    export_perfetto([d], absolute, since=parse_time(str(lo), "--since"),
                    until=parse_time(str(hi), "--until"), nodes=["node1"], pids=[501])
    assert [e for e in load(absolute) if e["ph"] == "X"] == ops


def test_gzip_output_is_one_complete_member(tmp_path):
    d = make_nodes(tmp_path / "job", n_nodes=2)
    out = tmp_path / "job.json.gz"
    export_perfetto([d], out)
    raw = out.read_bytes()
    dec = zlib.decompressobj(31)
    text = dec.decompress(raw)
    assert dec.eof and dec.unused_data == b""           # exactly one member, nothing after it
    assert len(json.loads(text)) == 200 + 8


def test_size_limit_refuses_without_losing_anything(tmp_path):
    d = make_nodes(tmp_path / "job")
    out = tmp_path / "big.json"
    with pytest.raises(ExportTooLarge, match="--since/--until"):
        export_perfetto([d], out, max_bytes=5000)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["job"]
    res = export_perfetto([d], out, max_bytes=5000, force=True)
    assert res.bytes > 5000 and len(load(out)) == res.events
    size = sum(p.stat().st_size for p in d.iterdir())
    with pytest.raises(ExportTooLarge, match="expand at least"):     # refused before writing
        export_perfetto([d], tmp_path / "early.json", max_bytes=size * 3)
    assert not (tmp_path / "early.json").exists()
    sliced = export_perfetto([d], tmp_path / "sliced.json", max_bytes=size * 3, nodes=["node0"],
                             pids=[500])
    assert sliced.events == 50 + 2


def test_cli_export_and_its_refusals(tmp_path, capsys):
    d = make_nodes(tmp_path / "job", n_nodes=2)
    out = tmp_path / "x.json"
    assert run_cli(["export", "--perfetto", str(out), str(d)]) == 0
    stdout = capsys.readouterr().out
    assert "208 events from 2 node(s)" in stdout and "ui.perfetto.dev" in stdout
    assert run_cli(["export", "--perfetto", str(out), str(d)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert run_cli(["export", "--perfetto", str(tmp_path / "y.json"), "--since", "soon", str(d)]) == 2
    assert "--since 'soon'" in capsys.readouterr().err
    assert run_cli(["export", "--perfetto", str(tmp_path / "y.json"), "--node", "nodeX", str(d)]) == 2
    err = capsys.readouterr().err
    assert "nodeX: no such node" in err and "node0, node1" in err
    assert run_cli(["export", "--perfetto", str(tmp_path / "y.json"), str(tmp_path / "none")]) == 1
    assert "no such file or directory" in capsys.readouterr().err
    assert run_cli(["export", "--perfetto", str(tmp_path / "no/such/dir/y.json"), str(d)]) == 1
    assert "no/such/dir does not exist; create it first" in capsys.readouterr().err
    assert not (tmp_path / "y.json").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]   # no temp files left


def test_profile_counters_keep_only_their_series(tmp_path):
    b = TraceBuilder(tmp_path / "p.pfw.gz", mode="profile")
    b.counter("write", pid=3, ts=0, count=4, nbytes=4096, time_us=9)
    b.write()
    export_perfetto([b.path], tmp_path / "p.json")
    (c,) = [e for e in load(tmp_path / "p.json") if e["ph"] == "C"]
    assert c["args"] == {"count": 4, "bytes": 4096, "time_us": 9} and c["pid"] == PID_STRIDE + 3


def test_torn_input_exports_its_complete_members(tmp_path, capsys):
    b = TraceBuilder(tmp_path / "t.pfw.gz", member_lines=10)
    for i in range(55):
        b.op("read", ts=i, size=8, path="/r")
    b.write(close=False, torn_bytes=33)
    out = tmp_path / "t.json"
    assert run_cli(["export", "--perfetto", str(out), str(b.path)]) == 0
    assert "ends inside a gzip member" in capsys.readouterr().err
    assert len([e for e in load(out) if e["ph"] == "X"]) == b.member_bounds[-1]


def test_sub_microsecond_times_reach_perfetto(tmp_path):
    """Fractional ``ts``/``dur`` pass through to the export (Perfetto reads µs doubles), and
    a relative --since counts from the fractional first event, not a truncated one."""
    b = TraceBuilder(tmp_path / "t.pfw.gz", start_us=0)          # no header time: first event
    for i in range(10):                  # quarters of a µs: exact as doubles at epoch times
        b.op("read", pid=5, ts=START_US + i + 0.75, dur=0.25 if i < 9 else 0.412, size=1,
             path="/dev/zero")
    b.write()
    out = tmp_path / "t.json"
    export_perfetto([b.path], out, since=parse_time("0.000001", "--since"))
    ops = [e for e in load(out) if e["ph"] == "X"]
    # from START_US + 1.75: the first read (ending at START_US + 1.0) is out
    assert [e["ts"] for e in ops] == [START_US + i + 0.75 for i in range(1, 10)]
    assert [e["dur"] for e in ops] == [0.25] * 8 + [0.412]
