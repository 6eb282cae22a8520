"""`datacrumbs export --perfetto`: one strict-JSON Chrome trace, all nodes, sliced on request."""

from __future__ import annotations

import gzip
import json
import os
import zlib
from decimal import Decimal

import pytest

from datacrumbs.cli import run_cli
from datacrumbs.report.export import ExportTooLarge, export_perfetto, parse_time
from fixtures.traces import START_US, TraceBuilder
from test_trace_reader import gzip_complete_events


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


ORIGIN_US = (START_US // 1_000_000 - 1) * 1_000_000   # a whole second before the start


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
    # the time origin, 3 nodes x 2 pids x (process name, sort index, thread name)
    assert len(ops) == res.events - 1 - 18 == 300
    (origin,) = [e for e in events if e["name"] == "datacrumbs_time_origin"]
    assert origin["args"]["epoch_us"] == ORIGIN_US
    assert res.nodes == ["node0", "node1", "node2"]
    assert {e["args"]["hostname"] for e in ops} == {"node0", "node1", "node2"}
    assert all(e["args"]["fname"] == f"/scratch/f{e['args']['hostname'][-1]}" for e in ops)
    assert not any(e["name"] in ("HH", "FH", "SH") for e in events)
    names = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert len(names) == 6                                # same pids on 3 nodes stay distinct
    assert sorted(names) == [1, 2, 3, 4, 5, 6]            # small numbers, whatever the nodes
    assert set(names.values()) == {f"node{k}: rank{r} ({500 + r})" for k in range(3)
                                   for r in (0, 1)}
    assert {e["pid"] for e in ops} == set(names)
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
               if e["name"] == "thread_name"}
    assert {(e["pid"], e["tid"]) for e in ops} == set(threads)
    assert all(name in (f"rank{r} (tid {500 + r})" for r in (0, 1)) for name in threads.values())
    assert all(e["args"]["pid"] in (500, 501) for e in ops)
    assert min(e["ts"] for e in ops) == START_US - ORIGIN_US


def test_slices_by_time_node_and_pid(tmp_path):
    d = make_nodes(tmp_path / "job")
    out = tmp_path / "slice.json"
    export_perfetto([d], out, since=parse_time("2", "--since"), until=parse_time("4.5", "--until"),
                    nodes=["node1"], pids=[501])
    ops = [e for e in load(out) if e["ph"] == "X"]
    lo, hi = START_US + 2_000_000, START_US + 4_500_000
    assert ops and all(lo <= ORIGIN_US + e["ts"] + e["dur"] and ORIGIN_US + e["ts"] <= hi
                       for e in ops)
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
    assert len(json.loads(text)) == 200 + 1 + 2 * 2 * 3


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
    assert sliced.events == 50 + 1 + 3


def test_cli_export_and_its_refusals(tmp_path, capsys):
    d = make_nodes(tmp_path / "job", n_nodes=2)
    out = tmp_path / "x.json"
    assert run_cli(["export", "--perfetto", str(out), str(d)]) == 0
    stdout = capsys.readouterr().out
    assert "213 events from 2 node(s)" in stdout and "ui.perfetto.dev" in stdout
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
    assert c["args"] == {"count": 4, "bytes": 4096, "time_us": 9} and c["pid"] == 1


def test_torn_input_exports_its_complete_members(tmp_path, capsys):
    b = TraceBuilder(tmp_path / "t.pfw.gz", member_lines=10)
    for i in range(55):
        b.op("read", ts=i, size=8, path="/r")
    b.write(close=False, torn_bytes=33)
    out = tmp_path / "t.json"
    assert run_cli(["export", "--perfetto", str(out), str(b.path)]) == 0
    assert "ends inside a gzip member" in capsys.readouterr().err
    kept = len([e for e in load(out) if e["ph"] == "X"])
    assert kept == gzip_complete_events(b.path) >= b.member_bounds[-1]


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
    # the builder prints its doubles' shortest repr (…001.8 for …001.75); the export keeps
    # exactly what the file says, relative to the origin
    assert [e["ts"] for e in ops] == [float(Decimal(repr(START_US + i + 0.75)) - ORIGIN_US)
                                      for i in range(1, 10)]
    assert [e["dur"] for e in ops] == [0.25] * 8 + [0.412]


def test_sub_microsecond_slices_nest_exactly_and_ids_fit_10000_nodes(tmp_path):
    """fwrite [x.124, +1.000] holds write [x.126, +0.874] (the same end). As doubles of epoch
    µs both starts round to 0.25 µs and the child ends after its parent; relative times keep
    every ns. And node 9,999's processes still get small numbers."""
    d = tmp_path / "job"
    d.mkdir()
    paths = []
    for k in (0, 9999):
        b = TraceBuilder(d / f"trace-alice-9-n{k}.pfw.gz", host=f"n{k}", job="9")
        b.process(4242, "app")
        paths.append(b.path)
        b.write()
    parent = '{"id":1,"name":"fwrite","cat":"STDIO","pid":4242,"tid":4243,' \
             f'"ts":{START_US + 5}.124,"dur":1.000,"ph":"X","args":{{}}}}'
    child = '{"id":2,"name":"write","cat":"POSIX","pid":4242,"tid":4243,' \
            f'"ts":{START_US + 5}.126,"dur":0.874,"ph":"X","args":{{}}}}'
    for p in paths:   # add the two events as one more member, before the closing ]
        text = gzip.decompress(p.read_bytes()).decode()
        body = text.rstrip().removesuffix("]").rstrip("\n")
        p.write_bytes(gzip.compress((body + "\n" + parent + "\n" + child + "\n]\n").encode()))
    out = tmp_path / "nest.json"
    export_perfetto([d], out)
    ops = [e for e in load(out) if e["ph"] == "X"]
    assert len(ops) == 4 and max(e["pid"] for e in ops) == 2 and max(e["tid"] for e in ops) == 2
    for pid in (1, 2):
        (f,) = [e for e in ops if e["pid"] == pid and e["name"] == "fwrite"]
        (w,) = [e for e in ops if e["pid"] == pid and e["name"] == "write"]
        # Perfetto turns µs into integer ns: the child stays inside its parent
        assert round(f["ts"] * 1000) <= round(w["ts"] * 1000)
        assert round((w["ts"] + w["dur"]) * 1000) <= round((f["ts"] + f["dur"]) * 1000)
        assert round(w["ts"] * 1000) - round(f["ts"] * 1000) == 2   # 2 ns apart, exactly
