"""Time views of `datacrumbs report` (per-process heatmap, bandwidth per node, imbalance),
and the HTML page in a real headless browser.

Numbers are checked against traces whose operations are known exactly, and, for
real traces of a two-node job (the tracer run twice under two host names), against
figures computed here straight from the trace files with gzip and json.
"""

from __future__ import annotations

import gzip
import json
import re
import struct
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from datacrumbs.report import html, merge, model, timeviews
from datacrumbs.report.merge import summarize
from fixtures.browser import Browser, artifacts_dir
from fixtures.traces import START_US, TraceBuilder
from fixtures.tracing import DATACRUMBS

# -- exact numbers on built traces ---------------------------------------------------------


def make_many_processes(path: Path) -> dict:
    """100 processes, process i writes (i + 1) * 100 bytes at 10 ms * i; one 3 ms fsync from
    1.5 ms; the job spans 1 s, so 2 ms bins (1 ms would need 1,000 > COLS_CAP columns)."""
    b = TraceBuilder(path, member_lines=40)
    for i in range(100):
        b.process(1000 + i, f"rank{i}")
        b.op("write", pid=1000 + i, ts=i * 10_000, dur=3, path=f"/d/{i}", size=(i + 1) * 100)
    b.op("fsync", pid=2000, ts=1500, dur=3000, path="/d/x")
    b.write()
    return {"bytes": sum((i + 1) * 100 for i in range(100)), "time_us": 100 * 3 + 3000}


def test_heatmap_rows_cells_and_busy_time_are_exact(tmp_path):
    expect = make_many_processes(tmp_path / "t.pfw.gz")
    tv = summarize([tmp_path / "t.pfw.gz"], jobs=1)["timeviews"]
    assert tv["bin_us"] == 2000 and tv["start_us"] == START_US and tv["columns"] <= timeviews.COLS_CAP
    rows = tv["heatmap"]["rows"]
    assert len(rows) == timeviews.ROWS + 1 and tv["heatmap"]["processes"] == 101
    assert [r["pid"] for r in rows[:64]] == [1000 + i for i in range(99, 35, -1)]   # by bytes
    assert rows[0]["name"] == "rank99" and rows[0]["label"] == "node1:1099"
    others = rows[-1]
    assert others["pid"] is None and others["processes"] == 37
    assert others["bytes"] == sum((i + 1) * 100 for i in range(36))                 # 36 + the fsync
    cells = tv["heatmap"]["cells"]
    assert sum(c[2] for c in cells) == expect["bytes"]
    assert round(sum(c[3] for c in cells), 3) == expect["time_us"]
    # the fsync (others row, 1.5 ms .. 4.5 ms) is split over the bins it spans: 0.5, 2, 0.5 ms
    # (others also holds process 1000's write at 0 ms: 3 µs in bin 0)
    fsync = {c[1]: c[3] for c in cells if c[0] == 64}
    assert fsync[0] == 500 + 3 and fsync[1] == 2000 and fsync[2] == 500
    # every write in its own row and 10 ms / 2 ms = the 5 * i-th column
    for r, row in enumerate(rows[:64]):
        i = row["pid"] - 1000
        assert [c[1:] for c in cells if c[0] == r] == [[5 * i, (i + 1) * 100, 3.0]]
    assert sum(tv["node_bandwidth"]["series"]["node1"]) == expect["bytes"]


def test_time_views_are_the_same_split_merged_backwards_or_whole(tmp_path, monkeypatch):
    """The caps hit (cells widen the bins) and the file cut in member ranges merged in any
    order give the very same views."""
    make_many_processes(tmp_path / "t.pfw.gz")
    monkeypatch.setattr(timeviews, "CELLS_CAP", 40)
    monkeypatch.setattr(timeviews, "PENDING_CAP", 16)
    whole = summarize([tmp_path / "t.pfw.gz"], jobs=1)["timeviews"]
    assert whole["bin_us"] > 2000 and len({c[0] for c in whole["heatmap"]["cells"]}) > 10
    monkeypatch.setattr(merge, "SPLIT_BYTES", 800)
    monkeypatch.setattr(merge, "WHOLE_WHEN_BALANCED", False)  # cut even so
    units = merge.plan_units([tmp_path / "t.pfw.gz"], 2, model.Aggregate())
    assert len(units) > 3
    parts = [merge.summarize_unit(u) for u in units]
    for order in (parts, parts[::-1]):
        agg = model.Aggregate()
        for p in order:
            agg.merge(p)
        assert agg.finalize()["timeviews"] == whole
    assert summarize([tmp_path / "t.pfw.gz"], jobs=2)["timeviews"] == whole


def test_long_calls_are_split_over_their_bins_in_bounded_steps(tmp_path, monkeypatch):
    """20 calls of 0.9 s each span ~450 bins: expanded at most PENDING_CAP cells at a time,
    with compactions (and wider bins, CELLS_CAP) in between, each call's time is still exact."""
    monkeypatch.setattr(timeviews, "PENDING_CAP", 64)
    monkeypatch.setattr(timeviews, "CELLS_CAP", 2000)
    b = TraceBuilder(tmp_path / "t.pfw.gz", member_lines=5)
    for i in range(20):
        b.op("read", pid=10 + i, ts=i * 1000 + 137, dur=900_000 + i, size=1 + i, path="/p")
    b.write()
    whole = summarize([b.path], jobs=1)["timeviews"]
    assert whole["bin_us"] > 2000            # 20 rows * 450 bins > CELLS_CAP: bins widened
    rows = whole["heatmap"]["rows"]
    for r, row in enumerate(rows):
        i = row["pid"] - 10
        mine = sorted((c for c in whole["heatmap"]["cells"] if c[0] == r), key=lambda c: c[1])
        assert round(sum(c[3] for c in mine), 3) == 900_000 + i
        assert [c[2] for c in mine] == [1 + i] + [0] * (len(mine) - 1)
        assert len(mine) > 3 and all(c[3] <= whole["bin_us"] for c in mine)
    monkeypatch.setattr(merge, "SPLIT_BYTES", 300)
    monkeypatch.setattr(merge, "WHOLE_WHEN_BALANCED", False)  # cut even so
    units = merge.plan_units([b.path], 2, model.Aggregate())
    assert len(units) > 3
    agg = model.Aggregate()
    for u in reversed(units):
        agg.merge(merge.summarize_unit(u))
    assert agg.finalize()["timeviews"] == whole


def test_many_nodes_keep_the_top_series_and_sum_the_rest(tmp_path):
    for i in range(40):
        b = TraceBuilder(tmp_path / f"n{i}.pfw.gz", host=f"n{i:02d}")
        b.op("write", ts=i * 1000, dur=2, size=100 * (i + 1), path="/f")
        b.write()
    tv = summarize([tmp_path], jobs=2)["timeviews"]
    series = tv["node_bandwidth"]["series"]
    assert list(series)[:32] == [f"n{i:02d}" for i in range(39, 7, -1)]   # by bytes
    assert list(series)[32] == "others (8 nodes)"
    assert sum(series["others (8 nodes)"]) == sum(100 * (i + 1) for i in range(8))
    assert all(len(v) == tv["columns"] for v in series.values())
    assert tv["imbalance"]["nodes"] == 40 and tv["imbalance"]["bytes"]["max_host"] == "n39"


def test_imbalance_of_built_nodes(tmp_path):
    a = TraceBuilder(tmp_path / "a.pfw.gz", host="fast")
    a.op("write", pid=1, ts=0, dur=10, size=1000, path="/f")
    a.write()
    b = TraceBuilder(tmp_path / "b.pfw.gz", host="slow")
    b.process(7, "solver")
    b.op("write", pid=7, ts=0, dur=100, size=10, path="/f")
    b.op("fsync", pid=7, ts=200, dur=900, path="/f")
    b.op("read", pid=8, ts=0, dur=50, size=5, path="/f")
    b.write()
    c = TraceBuilder(tmp_path / "c.pfw.gz", host="idle")      # traced, did no I/O
    c.write()
    imb = summarize([tmp_path], jobs=1)["timeviews"]["imbalance"]
    assert imb["nodes"] == 3
    assert imb["bytes"] == {"min": 0, "min_host": "idle", "mean": round(1015 / 3, 3), "max": 1000,
                            "max_host": "fast", "max_over_mean": round(1000 / (1015 / 3), 3)}
    assert imb["time_us"]["min"] == 0 and imb["time_us"]["max"] == 1050 and imb["time_us"]["mean"] == 353.333
    slow = imb["slowest"]
    assert slow["host"] == "slow" and slow["time_us"] == 1050 and slow["processes"] == 2
    assert slow["top_process"] == {"pid": 7, "name": "solver", "time_us": 1000, "share": round(1000 / 1050, 4)}
    assert slow["top_operation"] == {"category": "POSIX", "name": "fsync", "time_us": 900,
                                     "share": round(900 / 1050, 4)}


# -- a real two-node job: the tracer run twice under two host names --------------------------

WRITER = """import os, sys
n, size, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
for _ in range(n):
    os.write(fd, b"x" * size)
os.fsync(fd)
os.close(fd)
os.write(1, f"{os.getpid()} {path}\\n".encode())   # one write: atomic on the shared pipe
"""

#: host -> writers (count, size); nodeB runs two processes
JOB = {"nodeA": [(400, 4096)], "nodeB": [(100, 8192), (30, 65536)]}


def trace_as_host(out: Path, host: str, command: list[str]) -> subprocess.CompletedProcess:
    """`datacrumbs trace` in a UTS namespace of its own whose host name is ``host``: a second
    node, as far as the tracer and its trace can tell."""
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', host,
                           DATACRUMBS, "trace", "-o", str(out), "--set", "posix", "--", *command],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def two_node_job(site, tmp_path) -> dict:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    pids, files = {}, {}
    for host, writers in JOB.items():
        cmds = [f"{sys.executable} {script} {n} {size} {tmp_path / f'{host}-{k}.dat'}"
                for k, (n, size) in enumerate(writers)]
        script_sh = "".join(f"{c} & p{k}=$!; " for k, c in enumerate(cmds)) + \
            " && ".join(f"wait $p{k}" for k in range(len(cmds)))     # any writer failing fails
        proc = trace_as_host(tmp_path / "job" / host, host, ["sh", "-c", script_sh])
        found = re.findall(r"(\d+) (\S+\.dat)", proc.stdout)
        assert len(found) == len(writers), proc.stdout
        pids[host] = {int(pid): path for pid, path in found}
        files[host] = {str(tmp_path / f"{host}-{k}.dat"): n * size for k, (n, size) in enumerate(writers)}
        for path, size in files[host].items():
            assert Path(path).stat().st_size == size
        [trace] = (tmp_path / "job" / host).glob("*.pfw.gz")
        summ = json.loads(Path(str(trace)[:-len(".pfw.gz")] + ".summary.json").read_text())
        assert summ["events_lost"] == 0 and summ["complete"] is True and summ["host"] == host, summ
    return {"dir": tmp_path / "job", "pids": pids, "files": files}


def read_trace(path: Path) -> tuple[str, list[dict], dict]:
    """Host, events and file names of a trace, read with gzip and json alone."""
    host, events, fnames = None, [], {}
    with gzip.open(path, "rt") as f:
        for line in f:
            line = line.strip()
            if line in ("[", "]", ""):
                continue
            e = json.loads(line)
            if e.get("ph") == "M":
                if e["name"] == "datacrumbs":
                    host = e["args"]["host"]
                elif e["name"] == "FH":
                    fnames[e["args"]["value"]] = e["args"]["name"]
            elif e.get("ph") == "X":
                events.append(e)
    return host, events, fnames


def independent_figures(job_dir: Path) -> dict:
    """Per node bytes and I/O time (in ns: the trace's µs have three decimals), the slowest
    node, its busiest process and operation, straight from the traces."""
    nodes = {}
    for trace in sorted(job_dir.rglob("*.pfw.gz")):
        host, events, fnames = read_trace(trace)
        by_pid, by_op, by_file = defaultdict(int), defaultdict(int), defaultdict(int)
        pid_bytes = defaultdict(int)
        nbytes = ns = 0
        for e in events:
            d = round(e["dur"] * 1000)
            size = e["args"].get("size", -1)
            nbytes += max(size, 0)
            ns += d
            by_pid[e["pid"]] += d
            pid_bytes[e["pid"]] += max(size, 0)
            by_op[(e["cat"], e["name"])] += d
            if size > 0 and e["name"] == "write":
                by_file[fnames.get(e["args"].get("fhash"))] += size
        nodes[host] = {"bytes": nbytes, "ns": ns, "by_pid": by_pid, "by_op": by_op, "by_file": by_file,
                       "pid_bytes": pid_bytes}
    return nodes


def test_two_node_imbalance_matches_the_traces(two_node_job, tmp_path, capsys):
    s = summarize([two_node_job["dir"]], jobs=1)
    tv = s["timeviews"]
    imb = tv["imbalance"]
    ind = independent_figures(two_node_job["dir"])
    assert set(ind) == set(JOB) and imb["nodes"] == 2
    # the workloads' own bytes are in the traces, per node and file
    for host, files in two_node_job["files"].items():
        for path, size in files.items():
            assert ind[host]["by_file"][path] == size, (host, path)
    byts = {h: n["bytes"] for h, n in ind.items()}
    ns = {h: n["ns"] for h, n in ind.items()}
    lo_b, hi_b = min(byts, key=byts.get), max(byts, key=byts.get)
    assert imb["bytes"]["min"] == byts[lo_b] and imb["bytes"]["min_host"] == lo_b
    assert imb["bytes"]["max"] == byts[hi_b] and imb["bytes"]["max_host"] == hi_b
    assert imb["bytes"]["mean"] == round(sum(byts.values()) / 2, 3)
    assert imb["time_us"]["min"] == round(min(ns.values()) / 1000, 3)
    assert imb["time_us"]["max"] == round(max(ns.values()) / 1000, 3)
    assert imb["time_us"]["mean"] == round(sum(ns.values()) / 2 / 1000, 3)
    slowest = max(ns, key=ns.get)
    slow = imb["slowest"]
    assert slow["host"] == slowest and slow["time_us"] == round(ns[slowest] / 1000, 3)
    by_pid, by_op = ind[slowest]["by_pid"], ind[slowest]["by_op"]
    top_pid = max(by_pid, key=lambda p: (by_pid[p], -p))
    top_op = max(by_op, key=lambda k: (by_op[k], k))
    assert slow["top_process"]["pid"] == top_pid
    assert slow["top_process"]["time_us"] == round(by_pid[top_pid] / 1000, 3)
    assert slow["top_process"]["share"] == round(by_pid[top_pid] / ns[slowest], 4)
    assert (slow["top_operation"]["category"], slow["top_operation"]["name"]) == top_op
    assert slow["top_operation"]["time_us"] == round(by_op[top_op] / 1000, 3)
    assert {n["host"]: n["bytes"] for n in imb["per_node"]} == byts
    # heatmap and bandwidth: every byte and every µs of I/O time once, each writer its own row
    cells = tv["heatmap"]["cells"]
    assert sum(c[2] for c in cells) == sum(byts.values())
    assert abs(sum(c[3] for c in cells) - sum(ns.values()) / 1000) < 0.001 * len(cells) + 0.001
    for host in JOB:
        assert sum(tv["node_bandwidth"]["series"][host]) == byts[host]
    rows = {(r["host"], r["pid"]): r for r in tv["heatmap"]["rows"]}
    for host, pids in two_node_job["pids"].items():
        assert len(pids) == len(JOB[host])
        for pid, path in pids.items():
            row = rows[(host, pid)]
            assert row["bytes"] == ind[host]["pid_bytes"][pid] >= two_node_job["files"][host][path]
            assert row["label"] == f"{host}:{pid}" and row["time_us"] == round(ind[host]["by_pid"][pid] / 1000, 3)
    # the same figures in --json
    out = tmp_path / "r.json"
    from datacrumbs.cli import run_cli
    assert run_cli(["report", str(two_node_job["dir"]), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["timeviews"]["imbalance"] == imb
    capsys.readouterr()
    assert run_cli(["report", str(two_node_job["dir"])]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"Slowest node {slowest}: " in text and f"process {top_pid} " in text
    assert f"bytes min {byts[lo_b]:,} " in text and f"max {byts[hi_b]:,} ({hi_b}, " in text


# -- the page in a real browser --------------------------------------------------------------

SORT_STATE = """(() => {
  const t = document.getElementById(%s);
  const i = Array.from(t.tHead.rows[0].cells).findIndex(th => th.textContent.replace(/[▲▼]/g, "").trim() === %s);
  return Array.from(t.tBodies[0].rows).map(r => r.cells[i].getAttribute("data-v"));
})()"""

CLICK = """(() => {
  const t = document.getElementById(%s);
  const th = Array.from(t.tHead.rows[0].cells).find(th => th.textContent.trim() === %s);
  th.click();
  return th.getAttribute("aria-sort");
})()"""


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def _plot_box(b: Browser, chart: str) -> dict:
    return b.eval(f"""(() => {{ const u = window.datacrumbs.charts.{chart};
      const r = u.over.getBoundingClientRect();
      return {{left: r.left, top: r.top, width: r.width, height: r.height,
               min: u.scales.x.min, max: u.scales.x.max}}; }})()""")


def _drag_zoom(b: Browser, chart: str) -> tuple[dict, dict, dict]:
    """Drag across the middle fifth of a chart, then double-click: (before, zoomed, reset)."""
    b.eval(f"document.getElementById('dc-{chart}').scrollIntoView()")
    before = _plot_box(b, chart)
    y = before["top"] + before["height"] / 2
    x0, x1 = before["left"] + before["width"] * 0.4, before["left"] + before["width"] * 0.6
    b.mouse("mouseMoved", x0, y, buttons=0)
    b.mouse("mousePressed", x0, y)
    for k in range(1, 11):
        b.mouse("mouseMoved", x0 + (x1 - x0) * k / 10, y)
    b.mouse("mouseReleased", x1, y, buttons=0)
    zoomed = _plot_box(b, chart)
    for count in (1, 2):
        for kind in ("mousePressed", "mouseReleased"):
            b.send("Input.dispatchMouseEvent", {"type": kind, "x": x0, "y": y, "button": "left",
                                                "buttons": 1 if kind == "mousePressed" else 0,
                                                "clickCount": count})
    return before, zoomed, _plot_box(b, chart)


def test_html_page_of_a_real_job_in_headless_chromium(two_node_job, tmp_path):
    """The page opens with no console error and no request, every chart draws, tables sort on a
    click, the heatmap and bandwidth chart zoom by dragging; screenshots are kept."""
    page = tmp_path / "report.html"
    from datacrumbs.cli import run_cli
    assert run_cli(["report", str(two_node_job["dir"]), "--html", str(page)]) == 0
    text = page.read_text()
    assert "http://" not in text.replace("http-equiv", "") and "https://" not in text.replace(
        "https://github.com/leeoniya/uPlot", "")     # uPlot's banner comment is the only URL
    shots = artifacts_dir("report-html")
    print(f"\nscreenshots in {shots}")
    with Browser(width=1280, height=900) as b:
        b.open(page.as_uri())
        assert b.eval("window.datacrumbs && window.datacrumbs.ready") is True
        assert b.eval("document.getElementById('dc-errors').hidden") is True, \
            b.eval("document.getElementById('dc-errors').textContent")
        b.screenshot(shots / "page.png")
        # both charts exist and painted something other than background
        for chart in ("heatmap", "bandwidth"):
            painted = b.eval(f"""(() => {{ const u = window.datacrumbs.charts.{chart};
              const d = u.ctx.getImageData(0, 0, u.ctx.canvas.width, u.ctx.canvas.height).data;
              let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; }})()""")
            assert painted > 1000, (chart, painted)
        nav = b.eval("Array.from(document.querySelectorAll('nav a')).map(a => a.getAttribute('href'))")
        ids = b.eval("Array.from(document.querySelectorAll('[id]')).map(e => e.id)")
        assert len(ids) == len(set(ids)), sorted(ids)
        for href in nav:
            assert b.eval(f"!!document.getElementById({json.dumps(href[1:])})"), href
        assert "#sec-time" in nav
        # sorting: numeric columns by their exact values, both ways; text by name
        checked = 0
        for table, col in (("processes", "Bytes"), ("processes", "Time"), ("operations", "Count"),
                           ("operations", "Total time"), ("top_files_by_bytes", "Bytes"),
                           ("nodes", "Bytes"), ("imbalance-nodes", "I/O time")):
            before = b.eval(SORT_STATE % (json.dumps(table), json.dumps(col)))
            vals = [float(v) for v in before]
            assert len(set(vals)) > 1, (table, col, vals)
            assert b.eval(CLICK % (json.dumps(table), json.dumps(col))) == "ascending"
            up = [float(v) for v in b.eval(SORT_STATE % (json.dumps(table), json.dumps(col)))]
            assert up == sorted(vals), (table, col, up)
            assert b.eval(CLICK % (json.dumps(table), json.dumps(col))) == "descending"
            down = [float(v) for v in b.eval(SORT_STATE % (json.dumps(table), json.dumps(col)))]
            assert down == sorted(vals, reverse=True), (table, col, down)
            checked += 1
        assert checked == 7
        b.eval(CLICK % ('"processes"', '"Command"'))
        names = b.eval("""Array.from(document.getElementById('processes').tBodies[0].rows)
                          .map(r => r.cells[2].textContent)""")
        assert names == sorted(names, key=str.lower) or names == sorted(names), names
        b.screenshot(shots / "sorted.png")
        # zoom by dragging, reset by double-click
        for chart in ("heatmap", "bandwidth"):
            before, zoomed, reset = _drag_zoom(b, chart)
            span = before["max"] - before["min"]
            assert before["min"] < zoomed["min"] < zoomed["max"] < before["max"], (chart, before, zoomed)
            assert zoomed["max"] - zoomed["min"] < 0.3 * span, (chart, before, zoomed)
            assert (reset["min"], reset["max"]) == (before["min"], before["max"]), (chart, reset)
        b.eval("""(() => { const s = document.getElementById('dc-hm-value'); s.value = 'time';
                           s.dispatchEvent(new Event('change')); })()""")
        b.screenshot(shots / "busy-time.png")
        assert b.eval("document.getElementById('dc-errors').hidden") is True
        problems = b.problems()
    assert problems == [], problems
    requests = b.requests()
    assert page.as_uri() in requests                  # the network log works: the page itself
    assert [u for u in requests if u != page.as_uri() and not u.startswith("data:")] == []
    for name in ("page.png", "sorted.png", "busy-time.png"):
        w, h = _png_size(shots / name)
        assert w == 1280 and h > 2000, (name, w, h)


def test_a_page_error_is_reported_on_the_page_and_to_the_browser(tmp_path):
    """The checks above can fail: a page whose data is broken shows the error and logs it."""
    b_ = TraceBuilder(tmp_path / "t.pfw.gz")
    b_.op("write", ts=0, dur=5, size=10, path="/f")
    b_.write()
    s = summarize([tmp_path / "t.pfw.gz"], jobs=1)
    s["timeviews"]["heatmap"]["cells"] = "not cells"
    page = tmp_path / "broken.html"
    page.write_text(html.render(s))
    with Browser() as b:
        b.open(page.as_uri())
        shown = b.eval("document.getElementById('dc-errors').textContent")
        b.eval("console.error('seen by the test')")
        problems = b.problems()
    assert "heatmap" in shown
    assert any("seen by the test" in p for p in problems)


def test_page_of_hostile_names_and_an_idle_node_opens_cleanly(tmp_path):
    """Names from a trace cannot end the embedded JSON's script element or run code; a node
    that did no I/O and a job with no timed I/O still give a page without errors."""
    evil = "</script><script>alert(1)</script>"
    b = TraceBuilder(tmp_path / "a.pfw.gz", host=evil)
    b.process(5, "<img src=x onerror=alert(2)>")
    b.op("write", pid=5, ts=0, dur=5, size=10, path="/tmp/</script>")
    b.write()
    TraceBuilder(tmp_path / "b.pfw.gz", host="idle").write()
    pages = {"hostile": html.render(summarize([tmp_path], jobs=1)),
             "empty": html.render(summarize([tmp_path / "b.pfw.gz"], jobs=1))}
    assert evil not in pages["hostile"] and "<img src=x" not in pages["hostile"]
    for name, text in pages.items():
        page = tmp_path / f"{name}.html"
        page.write_text(text)
        with Browser() as br:
            br.open(page.as_uri())
            assert br.eval("window.datacrumbs.ready") is True
            labels = br.eval("JSON.parse(document.getElementById('dc-data').textContent)"
                             ".heatmap.rows.map(r => r.label)")
            shown = br.eval("document.getElementById('dc-errors').textContent")
            slowest = br.eval("document.getElementById('slowest') && document.getElementById('slowest').textContent")
            problems = br.problems()
        assert problems == [] and shown == "", (name, problems, shown)
        if name == "hostile":
            assert labels == [f"{evil}:5"] and evil in slowest   # the very string, as text
        else:
            assert labels == [] and "idle" in slowest
