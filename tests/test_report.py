"""`datacrumbs report`: numbers checked against traces whose operations are known exactly."""

from __future__ import annotations

import base64
import errno
import gzip
import io
import json
import math
import os
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from datacrumbs.cli import run_cli
from datacrumbs.report import merge, model
from datacrumbs.report.merge import summarize
from fixtures.traces import START_US, TraceBuilder

REPO = Path(__file__).resolve().parents[1]
DATACRUMBS = str(REPO / ".venv/bin/datacrumbs")


def nearest_rank(values, p):
    v = np.sort(np.asarray(values))
    return int(v[max(0, math.ceil(p / 100 * len(v)) - 1)])


def write_summary_json(trace: Path, **fields) -> None:
    doc = {"format": "datacrumbs-summary", "version": 1, "job": "1234", "user": "alice",
           "mode": "trace", "complete": True, "events_written": 0, "events_lost": 0,
           "trace_file": trace.name, "probes_attached": [], "probes_refused": []}
    doc.update(fields)
    trace.with_name(trace.name.replace(".pfw.gz", ".summary.json")).write_text(json.dumps(doc))


def make_job(d: Path) -> dict:
    """Two nodes with known operations; returns the expected numbers."""
    d.mkdir(parents=True, exist_ok=True)
    n1 = TraceBuilder(d / "trace-alice-1234-node1.pfw.gz", host="node1", member_lines=64)
    n1.process(100, "writer")
    n1.process(101, "reader")
    write_durs = []
    for i in range(1000):
        dur = i % 100 + 1
        write_durs.append(dur)
        n1.op("write", pid=100, ts=i * 1000, dur=dur, path="/data/out.dat", size=4096, fd=3, count=4096)
    for i in range(500):
        n1.op("read", pid=101, ts=i * 2000 + 7, dur=2, path="/data/in.dat", size=1024, fd=4, count=1024)
    for i in range(5):
        n1.op("openat", pid=100, ts=1_000_000 + i, dur=4, path="/missing", errno=errno.ENOENT)
    n1.write()
    write_summary_json(n1.path, host="node1", events_lost=7, probes_refused=[
        {"id": "kernel.vfs_write", "kind": "kprobe", "target": "vfs_write",
         "reason": "kernel has no kprobes (CONFIG_KPROBES not set)"}])
    n2 = TraceBuilder(d / "trace-alice-1234-node2.pfw.gz", host="node2", member_lines=64)
    n2.process(100, "writer")
    for i in range(300):
        write_durs.append(10)
        n2.op("write", pid=100, ts=500_000 + i * 100, dur=10, path="/data/out.dat", size=8192)
    for i in range(2):
        write_durs.append(1)
        n2.op("write", pid=100, ts=600_000 + i, dur=1, path="/data/out.dat", errno=errno.EIO)
    n2.write()
    write_summary_json(n2.path, host="node2", events_lost=3, complete=False)
    return {"write_durs": write_durs, "paths": [n1.path, n2.path]}


def op(summary, cat, name):
    return next(o for o in summary["operations"] if (o["category"], o["name"]) == (cat, name))


def test_summary_numbers_are_exact(tmp_path):
    job = make_job(tmp_path / "job")
    s = summarize([tmp_path / "job"], jobs=1)
    w = op(s, "POSIX", "write")
    assert (w["count"], w["bytes"], w["time_us"], w["errors"]) == (
        1302, 1000 * 4096 + 300 * 8192, 10 * sum(range(1, 101)) + 3000 + 2, 2)
    lat = w["latency_us"]
    assert lat["exact"] and (lat["min"], lat["max"]) == (1, 100)
    for p in (50, 90, 99):
        assert lat[f"p{p}"] == nearest_rank(job["write_durs"], p)
    r = op(s, "POSIX", "read")
    assert (r["count"], r["bytes"], r["time_us"], r["errors"]) == (500, 512_000, 1000, 0)
    assert r["bandwidth_Bps"] == pytest.approx(512_000 / 0.001)
    o = op(s, "POSIX", "openat")
    assert (o["count"], o["bytes"], o["errors"]) == (5, 0, 5)
    assert s["totals"]["operations"] == 1807 and s["totals"]["errors"] == 7
    assert s["job"] == {**s["job"], "jobs": ["1234"], "users": ["alice"], "nodes": 2, "processes": 3}
    assert s["job"]["start_us"] == START_US
    assert s["job"]["end_us"] == START_US + 1_000_004 + 4        # the last failed openat
    top = s["top_files_by_bytes"][0]
    assert (top["path"], top["count"], top["bytes"]) == ("/data/out.dat", 1302, 4096 * 1000 + 8192 * 300)
    assert s["top_files_by_time"][0]["path"] == "/data/out.dat"
    assert {f["path"] for f in s["top_files_by_bytes"]} == {"/data/out.dat", "/data/in.dat", "/missing"}
    nodes = {n["host"]: n for n in s["nodes"]}
    assert (nodes["node1"]["count"], nodes["node1"]["processes"]) == (1505, 2)
    assert (nodes["node2"]["count"], nodes["node2"]["bytes"]) == (302, 300 * 8192)
    procs = {(p["host"], p["pid"]): p for p in s["processes"]}
    assert procs[("node1", 101)]["name"] == "reader" and procs[("node1", 101)]["bytes"] == 512_000
    assert procs[("node2", 100)]["name"] == "writer"
    errs = {e["name"]: e for e in s["errors"]}
    assert errs["ENOENT"]["count"] == 5 and errs["ENOENT"]["operations"] == {"POSIX/openat": 5}
    assert errs["EIO"]["count"] == 2 and errs["EIO"]["errno"] == errno.EIO
    assert s["access_sizes"]["POSIX/write"] == [[4096, 8192, 1000], [8192, 16384, 300]]
    series = s["timeline"]["series"]
    assert sum(v for _, v in series["node1"]) == nodes["node1"]["bytes"]
    assert sum(v for _, v in series["node2"]) == nodes["node2"]["bytes"]
    assert s["events_lost"] == 10 and s["runs"] == 2
    assert s["incomplete_runs"] == [str(job["paths"][1]).replace(".pfw.gz", ".summary.json")]
    assert s["probes_refused"][0]["id"] == "kernel.vfs_write" and s["probes_refused"][0]["hosts"] == ["node1"]
    assert sum(sum(r[2] for r in h) for h in s["latency_histograms"].values()) == 1807


def _without_read_stats(s):
    return {k: v for k, v in s.items() if k != "traces"}


def test_parallel_split_and_merge_order_give_identical_numbers(tmp_path, monkeypatch):
    make_job(tmp_path / "job")
    one = summarize([tmp_path / "job"], jobs=1)
    two = summarize([tmp_path / "job"], jobs=2)              # process pool, one file per worker
    assert two == one
    monkeypatch.setattr(merge, "SPLIT_BYTES", 2000)          # split each file into member ranges
    monkeypatch.setattr(merge, "WHOLE_WHEN_BALANCED", False)  # cut even so
    units = merge.plan_units(merge.find_traces([tmp_path / "job"]), 2, model.Aggregate())
    assert len(units) > 4 and all(u.end is not None for u in units)
    split = summarize([tmp_path / "job"], jobs=2)
    assert split == one
    parts = [merge.summarize_unit(u) for u in units]
    backwards = model.Aggregate()
    for part in reversed(parts):
        backwards.merge(part)
    merge.add_run_summaries(merge.find_traces([tmp_path / "job"]), backwards)
    assert _without_read_stats(backwards.finalize()) == _without_read_stats(one)


def test_traces_that_share_out_evenly_are_not_cut(tmp_path, monkeypatch):
    """One trace per node, about equal: each worker takes whole files and this process
    inflates nothing to find member boundaries; cut or not, the same numbers."""
    assert merge._balanced_whole([100, 100], 2) and merge._balanced_whole([10] * 999, 2)
    assert not merge._balanced_whole([100], 2)              # fewer files than workers
    assert not merge._balanced_whole([100, 100, 100], 2)    # 200 against an even 150
    assert not merge._balanced_whole([300, 100, 100], 2)
    builders = [TraceBuilder(tmp_path / f"trace-a-1-node{i}.pfw.gz", host=f"node{i}",
                             member_lines=50) for i in (1, 2)]
    for i, b in enumerate(builders):
        for k in range(3000):
            b.op("write" if k % 3 else "read", pid=100 + i, ts=k * 10, dur=3,
                 path=f"/data/f{k % 7}", size=512 * (1 + k % 4), fd=3)
        b.write()
    files = [b.path for b in builders]
    monkeypatch.setattr(merge, "SPLIT_BYTES", 2000)
    inflated = []
    real = merge.iter_members
    monkeypatch.setattr(merge, "iter_members", lambda *a, **k: inflated.append(1) or real(*a, **k))
    units = merge.plan_units(files, 2, model.Aggregate())
    assert [(u.path, u.start, u.end) for u in units] == [(str(f), 0, None) for f in files]
    assert not inflated
    whole = summarize(files, jobs=2)
    monkeypatch.setattr(merge, "WHOLE_WHEN_BALANCED", False)
    units = merge.plan_units(files, 2, model.Aggregate())
    assert len(units) > 4 and inflated
    assert summarize(files, jobs=2) == whole


def test_percentiles_from_the_histogram_beyond_the_exact_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(model, "EXACT_CAP", 100)
    rng = np.random.default_rng(7)
    durs = rng.lognormal(4, 1.2, 3000).astype(int) + 1
    b = TraceBuilder(tmp_path / "t.pfw.gz", member_lines=500)
    for i, d in enumerate(durs.tolist()):
        b.op("read", ts=i, dur=d, size=10, path="/f")
    b.write()
    lat = op(summarize([b.path], jobs=1), "POSIX", "read")["latency_us"]
    assert lat["exact"] is False and lat["max"] == durs.max() and lat["min"] == durs.min()
    for p in (50, 90, 99):
        true = nearest_rank(durs, p)
        assert abs(lat[f"p{p}"] - true) <= 0.1 * true + 1, (p, lat, true)


def test_timeline_coarsens_the_same_way_split_or_not(tmp_path, monkeypatch):
    monkeypatch.setattr(model, "TIMELINE_CAP", 8)
    b = TraceBuilder(tmp_path / "t.pfw.gz", member_lines=20)
    for i in range(200):
        b.op("write", ts=i * 37_000, dur=1, size=100 + i, path="/f")
    b.write()
    whole = summarize([b.path], jobs=1)
    assert len(whole["timeline"]["series"]["node1"]) <= 8
    assert whole["timeline"]["bin_us"] > model.TIMELINE_BASE_US
    assert sum(v for _, v in whole["timeline"]["series"]["node1"]) == sum(100 + i for i in range(200))
    monkeypatch.setattr(merge, "SPLIT_BYTES", 500)
    monkeypatch.setattr(merge, "WHOLE_WHEN_BALANCED", False)  # cut even so
    units = merge.plan_units([b.path], 2, model.Aggregate())
    agg = model.Aggregate()
    for u in units:
        agg.merge(merge.summarize_unit(u))
    assert len(units) > 3
    assert agg.finalize()["timeline"] == whole["timeline"]


def test_hostile_values_never_break_the_summary(tmp_path):
    """A trace is written by a user's job: odd values are skipped or counted, never raised."""
    b = TraceBuilder(tmp_path / "h.pfw.gz", member_lines=5)
    b.op("write", size=100, path="/ok")
    odd = [
        {"ph": "X", "name": "write", "cat": ["not", "a", "str"], "pid": 1, "ts": 5, "dur": 1},
        {"ph": "X", "name": {"x": 1}, "cat": "POSIX", "pid": "one", "ts": "late", "dur": "long",
         "args": {"size": "big", "errno": "EIO", "fhash": [1]}},
        {"ph": "X", "name": "read", "cat": "POSIX", "pid": 10**30, "ts": -5, "dur": 10**400,
         "args": "not a dict"},
        {"ph": "X", "name": "read", "cat": "POSIX", "pid": 2, "ts": 1e300, "dur": -3,
         "args": {"size": 1e308, "errno": 10**30, "fname": 7}},
        {"ph": "C", "name": "write", "cat": "POSIX", "pid": 3, "ts": 9, "args": {"count": "x"}},
        {"ph": "Q", "name": "unknown phase"},
    ]
    for rec in odd:
        b.raw(json.dumps(rec), event=True)
    b.raw("[" * 5000 + "]" * 5000)                 # deeper than any JSON parser's recursion limit
    b.raw('{"ph":"X","name":"write","cat":"POSIX","dur":NaN,"args":{"size":1}}', event=True)
    b.write()
    s = summarize([b.path], jobs=1)
    assert s["traces"][0]["bad_lines"] == 1
    assert s["totals"]["events"] == 1 + 5 + 1          # X and C rows; the "Q" row is not an I/O event
    w = op(s, "POSIX", "write")
    assert w["bytes"] == 101 and w["count"] == 2
    assert s["errors"] == []                          # non-numeric or absurd errno values are not codes
    json.dumps(s, allow_nan=False)                     # the summary is always strict JSON
    from datacrumbs.report import html
    assert "<table" in html.render(s)


def test_a_numeric_fhash_and_a_wide_errno_are_reported_not_raised(tmp_path):
    """Found by feeding the report hand-made lines: an fhash that is a JSON number (hashable,
    so it slipped past the text conversion) and an errno beyond a C int (os.strerror
    overflows) each ended the report in an internal error."""
    b = TraceBuilder(tmp_path / "n.pfw.gz", member_lines=5)
    b.op("write", size=100, path="/ok")
    b.raw(json.dumps({"ph": "X", "name": "read", "cat": "POSIX", "pid": 4, "tid": 4, "ts": 7,
                      "dur": 2, "args": {"fhash": 5, "size": 10, "ret": 10}}), event=True)
    b.raw(json.dumps({"ph": "X", "name": "read", "cat": "POSIX", "pid": 4, "tid": 4, "ts": 9,
                      "dur": 2, "args": {"fhash": "5", "size": 1, "ret": -1,
                                         "errno": 1 << 40}}), event=True)
    b.write()
    s = summarize([b.path], jobs=1)
    five = [f for f in s["files"] if f["path"] == "<unresolved 5>"]
    assert len(five) == 1 and five[0]["bytes"]["read"] == 11    # 5 and "5": one file key
    assert [(e["errno"], e["message"]) for e in s["errors"]] == [(1 << 40, "unknown error")]
    from datacrumbs.report import html
    assert "<table" in html.render(s)


def test_lone_surrogates_and_odd_summary_fields_are_escaped_not_raised(tmp_path):
    """Found by feeding the report hand-made files: a lone surrogate spelt in JSON
    (\\udcff: json.loads keeps it) in a trace line or a run summary made the JSON, HTML
    and Perfetto outputs fail to encode; a run summary whose probes_refused, libraries or
    warnings was a number raised TypeError. The trace directory is the job user's."""
    b = TraceBuilder(tmp_path / "trace-u-1-node0.pfw.gz", member_lines=5)
    b.op("write", size=100, path="/ok")
    b.raw('{"ph":"X","name":"re\\udcffad","cat":"POSIX","pid":4,"tid":4,"ts":7,"dur":2,'
          '"args":{"fname":"/tmp/\\udcffx","size":10}}', event=True)
    b.raw('{"ph":"M","name":"process_name","cat":"dftracer","pid":4,"tid":4,'
          '"args":{"name":"app\\ud800"}}')
    b.write()
    write_summary_json(b.path, host="node\udcff0", probes_refused=5, libraries=True,
                       warnings=["w\udcff", 7])
    out = tmp_path / "o.json"
    assert run_cli(["report", "-q", "--json", str(out), "--html", str(tmp_path / "o.html"),
                    str(tmp_path)]) == 0
    s = json.loads(out.read_text(encoding="utf-8"))
    assert {f["path"] for f in s["files"]} >= {"/tmp/\\udcffx"}
    assert any(o["name"] == "re\\udcffad" for o in s["operations"])
    assert s["warnings"] == ["w\\udcff"] and s["probes_refused"] == [] and s["libraries"] == []
    assert run_cli(["export", "--perfetto", str(tmp_path / "o.pftrace"), str(b.path)]) == 0
    assert "app\\\\ud800" in (tmp_path / "o.pftrace").read_text(encoding="utf-8")


def test_many_files_are_sampled_exactly_and_split_invariantly(tmp_path, monkeypatch):
    monkeypatch.setattr(model, "FILES_CAP", 50)
    b = TraceBuilder(tmp_path / "f.pfw.gz", member_lines=40)
    for i in range(400):
        for k in range(1 + i % 3):
            b.op("write", ts=i * 10 + k, dur=1 + k, size=100 + i, path=f"/many/f{i}")
    b.write()
    whole = summarize([b.path], jobs=1, top=1000)
    listed = whole["top_files_by_bytes"]
    assert 0 < len(listed) <= 50 and whole["totals"]["files_sampled"] < 1
    for f in listed:                                   # every listed file's numbers are exact
        i = int(f["path"].rsplit("f", 1)[1])
        assert (f["count"], f["bytes"]) == (1 + i % 3, (1 + i % 3) * (100 + i))
    monkeypatch.setattr(merge, "SPLIT_BYTES", 1000)
    monkeypatch.setattr(merge, "WHOLE_WHEN_BALANCED", False)  # cut even so
    parts = [merge.summarize_unit(u) for u in merge.plan_units([b.path], 2, model.Aggregate())]
    agg = model.Aggregate()
    for p in parts:
        agg.merge(p)
    assert len(parts) > 3
    assert agg.finalize(top=1000)["top_files_by_bytes"] == listed


def test_profile_counters_are_summed(tmp_path):
    b = TraceBuilder(tmp_path / "p.pfw.gz", mode="profile")
    b.counter("write", pid=7, ts=0, count=10, nbytes=40960, time_us=55)
    b.counter("write", pid=7, ts=1_000_000, count=5, nbytes=20480, time_us=20)
    b.write()
    s = summarize([b.path], jobs=1)
    w = op(s, "POSIX", "write")
    assert (w["count"], w["bytes"], w["time_us"], w["from_counters"], w["latency_us"]) == (
        15, 61440, 75, True, None)
    assert s["job"]["modes"] == ["profile"]


def _run(args, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    rc = run_cli(args)
    out, err = capsys.readouterr()
    return rc, out, err


def test_torn_empty_and_corrupt_traces_among_good_ones(tmp_path, capsys, monkeypatch):
    d = tmp_path / "job"
    make_job(d)
    torn = TraceBuilder(d / "trace-alice-1234-node3.pfw.gz", host="node3", member_lines=10)
    for i in range(95):
        torn.op("write", pid=5, ts=i, dur=1, size=1, path="/t")
    torn.write(close=False, torn_bytes=40)
    (d / "trace-alice-1234-node4.pfw.gz").write_bytes(b"")
    (d / "trace-alice-1234-node5.pfw.gz").write_bytes(b"this is not gzip")
    rc, out, err = _run(["report", str(d), "--json", str(tmp_path / "s.json")], capsys, monkeypatch)
    assert rc == 0, err
    s = json.loads((tmp_path / "s.json").read_text())
    traces = {Path(t["path"]).name: t for t in s["traces"]}
    t3 = traces["trace-alice-1234-node3.pfw.gz"]
    assert t3["torn_tail"] and t3["members"] == len(torn.member_bounds)
    assert t3["events"] == torn.member_bounds[-1]
    assert traces["trace-alice-1234-node4.pfw.gz"]["events"] == 0
    assert [Path(u["path"]).name for u in s["unreadable"]] == ["trace-alice-1234-node5.pfw.gz"]
    assert "not a gzip file" in s["unreadable"][0]["error"]
    assert op(s, "POSIX", "write")["count"] == 1302 + torn.member_bounds[-1]
    flat = " ".join(out.split())
    assert "node3.pfw.gz: the file ends inside a gzip member" in flat
    assert f"read {len(torn.member_bounds)} complete gzip members" in flat
    assert "node5.pfw.gz: not a gzip file" in flat
    assert "10 events were lost" in flat and "kernel.vfs_write" in flat


def test_empty_trace_reports_zeros(tmp_path, capsys, monkeypatch):
    b = TraceBuilder(tmp_path / "e.pfw.gz")
    b.write()
    rc, out, err = _run(["report", str(b.path), "--json", "-"], capsys, monkeypatch)
    assert rc == 0, err
    s = json.loads(out)
    assert s["totals"]["operations"] == 0 and s["operations"] == [] and s["job"]["jobs"] == ["1234"]
    assert s["job"]["nodes"] == 1 and s["nodes"][0]["host"] == "node1"   # traced, did no I/O
    rc, out, _ = _run(["report", str(b.path)], capsys, monkeypatch)
    assert rc == 0 and "No I/O operations" in out


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tables, self.images, self.cells = [], [], {}
        self._table = None
        self._in_td = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = attrs.get("id", "")
            self.tables.append(self._table)
            self.cells[self._table] = []
        elif tag == "td":
            self._in_td = True
        elif tag == "img":
            self.images.append(attrs["src"])

    def handle_endtag(self, tag):
        if tag == "td":
            self._in_td = False

    def handle_data(self, data):
        if self._in_td and self._table is not None:
            self.cells[self._table].append(data)


def test_terminal_json_and_html_show_the_same_numbers(tmp_path, capsys, monkeypatch):
    make_job(tmp_path / "job")
    html_path, json_path = tmp_path / "r.html", tmp_path / "r.json"
    rc, out, err = _run(["report", str(tmp_path / "job"), "--html", str(html_path), "--json",
                         str(json_path)], capsys, monkeypatch)
    assert rc == 0, err
    s = json.loads(json_path.read_text())
    lines = out.splitlines()
    for o in s["operations"]:
        row = next(ln for ln in lines if f" {o['category']} " in ln and f" {o['name']} " in ln)
        cells = [c.strip() for c in row.split("│") if c.strip()]
        assert cells[2] == f"{o['count']:,}" and cells[3] == f"{o['bytes']:,}", row
    for n in s["nodes"]:
        row = next(ln for ln in lines if f" {n['host']} " in ln and f"{n['bytes']:,}" in ln)
        assert f"{n['count']:,}" in row
    assert f"{s['totals']['bytes']:,}" in out
    page = _Page()
    page.feed(html_path.read_text())
    assert {"job", "operations", "top_files_by_bytes", "nodes", "processes", "errors"} <= set(page.tables)
    ops_cells = page.cells["operations"]
    for o in s["operations"]:
        i = ops_cells.index(o["name"])
        assert ops_cells[i + 1] == f"{o['count']:,}" and ops_cells[i + 2] == f"{o['bytes']:,}"
    assert len(page.images) == 4
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    import matplotlib.pyplot as plt
    assert plt.get_fignums() == []          # figures are never left open


def test_html_escapes_names_from_the_trace(tmp_path):
    b = TraceBuilder(tmp_path / "x.pfw.gz", host="<b>node</b>")
    b.process(100, "<script>alert(1)</script>")
    b.op("write", path="/tmp/<img src=x onerror=alert(1)>", size=10)
    b.write()
    from datacrumbs.report import html
    page = html.render(summarize([b.path], jobs=1))
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page



def test_terminal_shows_names_from_the_trace_as_text(tmp_path, capsys, monkeypatch):
    """A trace's names are its user's: in the terminal report, escape sequences are written
    as escapes, rich markup stays text (`[/]` crashed the report with MarkupError), emoji
    codes stay text and a newline cannot start a forged line."""
    b = TraceBuilder(tmp_path / "x.pfw.gz", host="h\x1b[2Jost")
    b.process(100, "[/]crash\x1b]0;PWNED\x07")
    b.op("write", pid=100, size=10,
         path="/tmp/a\x1b[31mRED\x1b]52;c;ZWNobw==\x07[link=https://e.x]k[/link]:smile:")
    b.op("write", pid=100, size=10, path="/tmp/nl\nforged line")
    b.write()
    rc, out, err = _run(["report", str(b.path)], capsys, monkeypatch)
    assert rc == 0, err
    for control in ("\x1b", "\x07"):
        assert control not in out + err
    flat = " ".join(out.split())
    assert "[/]crash\\x1b]0;PWNED\\x07" in flat and "h\\x1b[2Jost" in flat
    assert "/tmp/a\\x1b[31mRED\\x1b]52;c;ZWNobw==\\x07[link=https://e.x]k[/link]:smile:" in flat
    assert "/tmp/nl\\nforged line" in flat
    # the JSON on stdout: the exact names, with no raw DEL or C1 control either
    b2 = TraceBuilder(tmp_path / "y.pfw.gz")
    b2.op("write", pid=1, size=1, path="/tmp/c1\x9b31m\x7f")
    b2.write()
    rc, out, err = _run(["report", str(b2.path), "--json", "-"], capsys, monkeypatch)
    assert rc == 0 and "\x9b" not in out and "\x7f" not in out
    assert "/tmp/c1\x9b31m\x7f" in [f["path"] for f in json.loads(out)["files"]]

AS_USER = """import contextlib, io, os, sys
from datacrumbs.cli import run_cli
uid, gid, warm = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    run_cli(["report", warm])        # as root: load every lazily imported module first
os.setgroups([]); os.setegid(gid); os.seteuid(uid)   # file access is now checked as that user
sys.exit(run_cli(sys.argv[4:]))
"""


def _cli_as(user, *args, warm=None):
    """The CLI as root, or with the real permissions of an unprivileged test user (the
    venv's interpreter lives under /root, so the user cannot exec it directly)."""
    if user:
        cmd = [sys.executable, "-c", AS_USER, str(user.pw_uid), str(user.pw_gid), str(warm), *args]
    else:
        cmd = [DATACRUMBS, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})


def test_bad_inputs_give_one_clear_line(tmp_path, user1):
    (tmp_path / "empty").mkdir()
    notgz = tmp_path / "x.pfw.gz"
    notgz.write_text("plain text, not gzip\n")
    secret = tmp_path / "secret.pfw.gz"
    TraceBuilder(secret).write()
    secret.chmod(0o600)
    tmp_path.chmod(0o755)
    warm = tmp_path / "warm.pfw.gz"
    wb = TraceBuilder(warm)
    wb.op("write", size=1, path="/w")
    wb.write()
    cases = [
        (None, [str(tmp_path / "nope")], "nope: no such file or directory"),
        (None, [str(tmp_path / "empty")], "empty: directory contains no traces"),
        (None, [str(notgz)], "x.pfw.gz: not a gzip file"),
        (user1, [str(secret)], "secret.pfw.gz: permission denied"),
        (None, [str(secret), "--top", "0"], "--top 0"),
        (user1, [str(Path(tempfile.gettempdir()) / "pytest-of-root" / "x.pfw.gz")], "permission denied"),
    ]
    for user, args, expected in cases:
        r = _cli_as(user, "report", *args, warm=warm)
        assert r.returncode in (1, 2), (args, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("datacrumbs: error: ") and expected in lines[0], r.stderr
        assert "Traceback" not in r.stderr + r.stdout


def test_report_of_a_real_traced_workload(tmp_path, site):
    """End to end: `datacrumbs trace -- workload` with real eBPF, then `datacrumbs report`."""
    out_dir = tmp_path / "traces"
    out_dir.mkdir()
    target = tmp_path / "out.bin"
    n, size = 300, 4096
    workload = (f"import os\nfd = os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT, 0o644)\n"
                f"for _ in range({n}):\n    os.write(fd, b'x' * {size})\nos.close(fd)\n")
    r = subprocess.run([DATACRUMBS, "trace", "-o", str(out_dir), "--", sys.executable, "-c", workload],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert target.stat().st_size == n * size
    traces = sorted(out_dir.rglob("*.pfw.gz"))
    assert traces, r.stdout + r.stderr
    json_path = tmp_path / "s.json"
    rep = _cli_as(None, "report", str(out_dir), "--json", str(json_path))
    assert rep.returncode == 0, rep.stderr
    s = json.loads(json_path.read_text())
    file_row = next(f for f in s["top_files_by_bytes"] if f["path"] == str(target))
    assert file_row["bytes"] == n * size
    writes = [o for o in s["operations"] if o["name"] == "write"]
    assert writes and sum(o["count"] for o in writes) >= n
    assert max(o["bytes"] for o in writes) >= n * size
    assert s["traces"][0]["closed"] and not s["traces"][0]["torn_tail"]
    assert f"{n * size:,}" in rep.stdout
    # The same trace read independently (pandas) and through the Perfetto export.
    lines = gzip.open(traces[0], "rt").read().splitlines()
    df = pd.read_json(io.StringIO("\n".join(lines[1:-1])), lines=True)
    assert int((df["ph"] != "M").sum()) == s["totals"]["events"]
    assert run_cli(["export", "--perfetto", str(tmp_path / "p.json"), str(out_dir)]) == 0
    exported = json.loads((tmp_path / "p.json").read_text())
    to_target = [e for e in exported if e.get("ph") == "X" and e["name"] == "write"
                 and e["args"].get("fname") == str(target)]
    assert len(to_target) == n and sum(e["args"]["size"] for e in to_target) == n * size


def test_benchmark_runs_and_checks_itself(tmp_path):
    """bench/bench_report.py on a small trace: counts every event, dask agrees with local."""
    r = subprocess.run([sys.executable, str(REPO / "bench/bench_report.py"), "--events", "30000",
                        "--files", "2", "--dask", "--dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "local: 30,000 events in" in r.stdout and "events/s" in r.stdout
    assert "peak RSS of the process tree" in r.stdout and "MISMATCH" not in r.stdout
    assert "dask summary identical to local: True" in r.stdout


SUB_US_NS = {"node1": 1003 * 959, "node2": 500 * 412 + 4321}


def make_sub_us_job(d: Path) -> Path:
    """The issue's dd on node1 (1,003 reads of 0.959 µs, by the project's writer from ns)
    and, on node2, 500 reads of 0.412 µs and a profile counter of 4.321 µs (independent
    producer)."""
    from datacrumbs.trace.writer import OPS_DTYPE, TraceWriter

    d.mkdir(parents=True, exist_ok=True)
    w = TraceWriter(d / "trace-alice-1234-node1.pfw.gz", member_events=100,
                    header={"job": "1234", "user": "alice", "host": "node1", "mode": "trace",
                            "ts": START_US})
    w.set_probes([{"id": "posix.read", "kind": "syscall", "target": "read", "category": "POSIX"}])
    ops = np.zeros(1003, OPS_DTYPE)
    ops["ts_ns"] = START_US * 1000 + np.arange(1003) * 2_000 + 123
    ops["dur_ns"] = 959
    ops["pid"] = ops["tid"] = 77
    ops["size"] = ops["ret"] = ops["count"] = 1
    ops["offset"] = -1
    w.write_ops(ops, ["/dev/zero"] * 1003)
    w.close()
    b = TraceBuilder(d / "trace-alice-1234-node2.pfw.gz", host="node2", member_lines=20)
    for i in range(500):
        b.op("read", pid=88, ts=i * 10 + 0.5, dur=0.412, path="/dev/zero", size=1)
    b.counter("read", pid=89, ts=6000, count=10, nbytes=10, time_us=4.321)
    b.write()
    return d


def test_sub_microsecond_durations_are_summed_in_nanoseconds(tmp_path, capsys, monkeypatch):
    """Summed from whole µs the issue's 1,003 reads took 7 µs ("545 GiB/s"); from the
    trace's three decimals every total, mean, bandwidth, percentile and bin is ns-exact,
    on every node and however the work is split."""
    d = make_sub_us_job(tmp_path / "job")
    s = summarize([d], jobs=1)
    total_ns = sum(SUB_US_NS.values())
    r = op(s, "POSIX", "read")
    assert (r["count"], r["bytes"], r["time_us"]) == (1513, 1513, total_ns / 1000)
    assert s["totals"]["time_us"] == total_ns / 1000 == 1172.198
    assert r["mean_us"] == round(total_ns / 1513 / 1000, 3)
    assert r["bandwidth_Bps"] == round(1513 / (total_ns / 1e9), 1)      # 1.29 MB/s
    lat = r["latency_us"]
    assert (lat["min"], lat["p50"], lat["p99"], lat["max"], lat["exact"]) == \
        (0.412, 0.959, 0.959, 0.959, True)
    hist = s["latency_histograms"]["POSIX/read"]
    assert [c for lo, hi, c in hist if lo <= 0.412 < hi] == [500]
    assert [c for lo, hi, c in hist if lo <= 0.959 < hi] == [1003]
    assert len(hist) == 2                                # each in a sub-µs bin of its own
    assert {n["host"]: n["time_us"] for n in s["nodes"]} == \
        {h: ns / 1000 for h, ns in SUB_US_NS.items()}
    assert {p["pid"]: p["time_us"] for p in s["processes"]} == {77: 961.877, 88: 206.0, 89: 4.321}
    assert s["top_files_by_time"] == [{"path": "/dev/zero", "count": 1503, "bytes": 1503,
                                       "time_us": (1003 * 959 + 500 * 412) / 1000}]
    assert abs(s["job"]["start_us"] - (START_US + 0.123)) < 0.25     # a double's resolution
    monkeypatch.setattr(merge, "SPLIT_BYTES", 1500)                   # member ranges, 2 workers
    monkeypatch.setattr(merge, "WHOLE_WHEN_BALANCED", False)  # cut even so
    assert _without_read_stats(summarize([d], jobs=2)) == _without_read_stats(s)
    rc, out, err = _run(["report", str(d), "--html", str(tmp_path / "r.html")], capsys, monkeypatch)
    assert rc == 0, err
    row = next(ln for ln in out.splitlines() if " POSIX " in ln and " read " in ln)
    assert "1.17 ms" in row and "959 ns" in row and "412 ns" not in row   # total, p50
    assert "1.17 ms" in out.split("I/O time", 1)[1].splitlines()[0]
    assert "959 ns" in (tmp_path / "r.html").read_text()


def test_files_are_written_when_the_tables_reader_goes_away(tmp_path):
    """`datacrumbs report X --html f --json g | head -1`: head closes the pipe after one
    line; the HTML and JSON files are complete all the same, and nothing is printed about
    the closed pipe (no traceback, no 'Exception ignored')."""
    make_job(tmp_path / "job")
    html_path, json_path = tmp_path / "r.html", tmp_path / "r.json"
    datacrumbs = str(Path(sys.executable).with_name("datacrumbs"))
    report = subprocess.Popen([datacrumbs, "report", str(tmp_path / "job"), "--html",
                               str(html_path), "--json", str(json_path)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**os.environ, "COLUMNS": "80"})
    first = report.stdout.readline()
    report.stdout.close()                   # what head -1 does after its line
    _, err = report.communicate(timeout=120)
    assert first
    assert report.returncode in (0, 141), err  # all written, or stopped as by SIGPIPE
    assert b"Traceback" not in err and b"Exception ignored" not in err, err
    summary = json.loads(json_path.read_text())
    assert summary["totals"]["events"] > 0
    assert html_path.read_text().rstrip().endswith("</html>")


@pytest.mark.parametrize("columns", [80, 100])
def test_at_80_columns_every_count_is_shown_whole(tmp_path, capsys, monkeypatch, columns):
    """A narrow terminal drops whole columns (and says which), never digits: every count and
    byte total of the JSON stands in full in the text, and no line is wider than the terminal."""
    make_job(tmp_path / "job")
    json_path = tmp_path / "r.json"
    monkeypatch.setenv("COLUMNS", str(columns))
    assert run_cli(["report", str(tmp_path / "job"), "--json", str(json_path)]) == 0
    out = capsys.readouterr().out
    s = json.loads(json_path.read_text())
    assert max(len(line) for line in out.splitlines()) <= columns
    tokens = {t.strip("│┃ ") for line in out.splitlines() for t in line.split("│")}
    for o in s["operations"]:
        assert f"{o['count']:,}" in tokens and f"{o['bytes']:,}" in tokens, o
        row = next(ln for ln in out.splitlines() if "│" in ln and f" {o['name']} " in ln)
        assert f" {o['category']} " in row
    for n in s["nodes"]:
        assert f"{n['count']:,}" in tokens and f"{n['bytes']:,}" in tokens
    for f in s["top_files_by_bytes"]:
        assert f"{f['count']:,}" in tokens and f"{f['bytes']:,}" in tokens
    if columns == 80:
        assert "left out at this width" in " ".join(out.split())   # the title may wrap


def test_a_copy_counts_in_both_its_files_and_once_in_the_totals():
    from datacrumbs.report.model import Aggregate

    def x(name, size, **args):
        return {"ph": "X", "name": name, "cat": "POSIX", "pid": 1, "ts": 10.0, "dur": 2.5,
                "args": {"size": size, **args}}

    agg = Aggregate()
    agg.add_events([x("copy_file_range", 1000, fhash="\0a", fhash2="\0b"),
                    x("copy_file_range", 0, fhash="\0a", fhash2="\0b"),
                    x("write", 24, fhash="\0b")], "node1.pfw.gz")
    # merging partials gives the same numbers
    other = Aggregate()
    other.add_events([x("sendfile", 7, fhash="\0c", fhash2="\0b")], "node1.pfw.gz")
    s = agg.merge(other).finalize()
    files = {f["path"]: f for f in s["top_files_by_bytes"]}
    assert files["a"]["bytes"] == 1000 and files["a"]["count"] == 2
    assert files["b"]["bytes"] == 1031 and files["b"]["count"] == 4
    assert files["c"]["bytes"] == 7
    assert s["totals"]["bytes"] == 1031 and s["totals"]["operations"] == 4


def test_a_cut_inside_a_member_says_its_lines_were_kept(tmp_path, capsys, monkeypatch):
    """A trace cut inside a member of many lines keeps that member's whole lines: the
    warning says how many events were kept, and does not call those bytes dropped."""
    b = TraceBuilder(tmp_path / "trace-alice-1234-node1.pfw.gz", member_lines=1000)
    for i in range(500):
        b.op("write", pid=5, ts=i, dur=1, size=1, path="/t")
    b.write(close=False)
    data = b.path.read_bytes()
    b.path.write_bytes(data[:len(data) * 2 // 3])
    rc, out, err = _run(["report", str(b.path), "--json", str(tmp_path / "s.json")], capsys,
                        monkeypatch)
    assert rc == 0, err
    t = json.loads((tmp_path / "s.json").read_text())["traces"][0]
    assert t["partial_member_kept"] and 0 < t["events"] < 500
    flat = " ".join(out.split())
    assert (f"the file ends inside a gzip member (the writer was killed or the copy is short); "
            f"kept {t['events']} events: 0 complete gzip members, then every whole line") in flat
    assert "dropped" not in flat and "may be wrong" not in flat
