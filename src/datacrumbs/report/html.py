"""One self-contained HTML page: the summary tables, its plots and the time views.

Everything is inline (CSS, PNGs as base64, the time views' data as JSON, the
pinned uPlot library from ``datacrumbs/data/js``), so the page opens offline and
can be mailed or attached to a ticket; its Content-Security-Policy forbids any
request, so it cannot reach the network either. Tables sort on a click on their
header and the heatmap and bandwidth chart zoom by dragging (small hand-written
JS below). Every string from a trace (file names, commands, hosts) is escaped:
traces are written by users' programs; in the embedded JSON every ``<`` is
written ``\\u003c``, so no string can close the script element.
"""

from __future__ import annotations

import base64
import json
from functools import lru_cache
from html import escape
from importlib import resources

from . import plots
from .findings import findings_html
from .terminal import (exact, files_note, lost_text, human_bytes, human_rate, human_us,
                       tail_text, when)

UPLOT_VERSION = "1.6.32"
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
       "img-src data:")

CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:0.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:3px 8px;font-size:0.9em}
th{background:#f0f0f0;text-align:left} td.n{text-align:right;font-variant-numeric:tabular-nums}
.warn{color:#8a4b00} img{max-width:100%;display:block;margin:0.5em 0 1.5em}
nav{position:sticky;top:0;background:#fff;border-bottom:1px solid #ccc;padding:0.4em 0;z-index:10}
nav a{margin-right:1em} caption{text-align:left;font-weight:bold;padding:0.2em 0}
th.sort{cursor:pointer;user-select:none} th.sort:hover{background:#e4e4f4}
th[aria-sort=ascending]::after{content:" \\25B2"} th[aria-sort=descending]::after{content:" \\25BC"}
.info{font-size:0.85em;color:#444;min-height:1.3em;font-variant-numeric:tabular-nums}
#dc-errors{color:#a00} .chart{margin:0.5em 0 1em}
.sw{display:inline-block;width:1.2em;height:0.9em;vertical-align:middle;margin:0 0.2em 0 0.8em}
"""

# Sortable tables, the two charts, and errors shown on the page (a chart that fails says so).
JS = r"""
(function () {
  "use strict";
  var errs = document.getElementById("dc-errors");
  function report(msg) {
    var li = document.createElement("li");
    li.textContent = String(msg);
    errs.appendChild(li);
    errs.hidden = false;
  }
  window.addEventListener("error", function (e) { report("script error: " + e.message); });
  window.addEventListener("unhandledrejection", function (e) { report("script error: " + e.reason); });

  function sortable(table) {
    var ths = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(ths, function (th, i) {
      th.classList.add("sort");
      th.tabIndex = 0;
      th.title = "sort";
      function go() {
        var asc = th.getAttribute("aria-sort") !== "ascending";
        Array.prototype.forEach.call(ths, function (o) { o.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", asc ? "ascending" : "descending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        var numeric = rows.some(function (r) { return r.cells[i] && r.cells[i].hasAttribute("data-v"); });
        var keyed = rows.map(function (r, k) {
          var c = r.cells[i];
          var v = !c ? "" : numeric ? (c.hasAttribute("data-v") ? parseFloat(c.getAttribute("data-v")) : NaN)
                                    : c.textContent;
          return {r: r, v: v, k: k};
        });
        keyed.sort(function (a, b) {
          var d;
          if (numeric) {
            var an = isNaN(a.v), bn = isNaN(b.v);
            d = an || bn ? (an - bn) : (asc ? a.v - b.v : b.v - a.v);   // missing values last
          } else {
            d = a.v.localeCompare(b.v, undefined, {numeric: true});
            d = asc ? d : -d;
          }
          return d || a.k - b.k;
        });
        keyed.forEach(function (x) { body.appendChild(x.r); });
      }
      th.addEventListener("click", go);
      th.addEventListener("keydown", function (e) { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); go(); } });
    });
  }

  function human(n, unit) {
    var u = ["", "Ki", "Mi", "Gi", "Ti", "Pi"], k = 0;
    while (Math.abs(n) >= 1024 && k < u.length - 1) { n /= 1024; k++; }
    return (k ? n.toFixed(1) : String(Math.round(n))) + " " + u[k] + unit;
  }
  function humanUs(v) {
    if (v >= 1e6) return (v / 1e6).toFixed(3) + " s";
    if (v >= 1e3) return (v / 1e3).toFixed(3) + " ms";
    return v.toFixed(3) + " µs";
  }
  var STOPS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  function color(t) {
    t = Math.max(0, Math.min(1, t)) * (STOPS.length - 1);
    var i = Math.min(STOPS.length - 2, Math.floor(t)), f = t - i, a = STOPS[i], b = STOPS[i + 1];
    return "rgb(" + [0, 1, 2].map(function (j) { return Math.round(a[j] + (b[j] - a[j]) * f); }).join(",") + ")";
  }
  var PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                 "#7f7f7f", "#bcbd22", "#17becf"];   // matplotlib's tab10, as in the PNG plots
  function width(el) { return Math.max(400, Math.min(1150, el.clientWidth || 900)); }

  function heatmap(tv) {
    var el = document.getElementById("dc-heatmap");
    var rows = tv.heatmap.rows, cells = tv.heatmap.cells, n = rows.length, cols = tv.columns;
    if (!n || !cols || !cells.length) { el.textContent = "No timed I/O to show."; return null; }
    var w = tv.bin_us / 1e6, field = 2;
    var sel = document.getElementById("dc-hm-value");
    var byKey = new Map(), max = [0, 0, 0, 0];
    cells.forEach(function (c) {
      byKey.set(c[0] * cols + c[1], c);
      max[2] = Math.max(max[2], c[2]); max[3] = Math.max(max[3], c[3]);
    });
    var label = function (r) { var x = rows[r]; var s = x.label + (x.name ? " (" + x.name + ")" : ""); return s.length > 34 ? s.slice(0, 33) + "…" : s; };
    var splits = rows.map(function (_, r) { return n - 1 - r + 0.5; });
    var opts = {
      width: width(el), height: Math.round(Math.max(12, Math.min(36, 400 / n)) * n) + 80,
      scales: {x: {time: false, range: function (u, lo, hi) { return [lo, hi]; }}, y: {range: [0, n]}},
      axes: [{label: "seconds since " + new Date(tv.start_us / 1000).toISOString()},
             {size: 230, gap: 4, font: "10px system-ui", splits: function () { return splits; },
              values: function (u, sp) { return sp.map(function (v) { return label(n - 1 - Math.floor(v)); }); },
              grid: {show: false}, ticks: {show: false}}],
      legend: {show: false},
      cursor: {drag: {x: true, y: false}, points: {show: false}},
      series: [{}, {stroke: "transparent", points: {show: false}, paths: function () { return null; }}],
      hooks: {
        draw: [function (u) {
          var ctx = u.ctx, bb = u.bbox, lo = u.scales.x.min, hi = u.scales.x.max, m = max[field] || 1;
          ctx.save();
          ctx.beginPath(); ctx.rect(bb.left, bb.top, bb.width, bb.height); ctx.clip();
          for (var k = 0; k < cells.length; k++) {
            var c = cells[k], v = c[field];
            if (!v || (c[1] + 1) * w < lo || c[1] * w > hi) continue;
            var x0 = u.valToPos(c[1] * w, "x", true), x1 = u.valToPos((c[1] + 1) * w, "x", true);
            var y0 = u.valToPos(n - c[0], "y", true), y1 = u.valToPos(n - 1 - c[0], "y", true);
            ctx.fillStyle = color(Math.log1p(v) / Math.log1p(m));
            ctx.fillRect(x0, y0, Math.max(1, x1 - x0), Math.max(1, y1 - y0 - 1));
          }
          ctx.restore();
        }],
        setCursor: [function (u) {
          var info = document.getElementById("dc-hm-info"), l = u.cursor.left, t = u.cursor.top;
          if (l == null || l < 0) { info.textContent = ""; return; }
          var col = Math.floor(u.posToVal(l, "x") / w), r = n - 1 - Math.floor(u.posToVal(t, "y"));
          if (r < 0 || r >= n || col < 0 || col >= cols) { info.textContent = ""; return; }
          var c = byKey.get(r * cols + col);
          info.textContent = rows[r].label + (rows[r].name ? " (" + rows[r].name + ")" : "") + ", " +
            (col * w).toFixed(3) + " s .. " + ((col + 1) * w).toFixed(3) + " s: " +
            (c ? human(c[2], "B") + ", busy " + humanUs(c[3]) : "no I/O");
        }]
      }
    };
    var scale = document.getElementById("dc-hm-scale");
    function legend() {   // five swatches of the log colour scale with the values they stand for
      var m = max[field] || 1;
      scale.textContent = "Colour, log scale: ";
      [0.05, 0.25, 0.5, 0.75, 1].forEach(function (t) {
        var sw = document.createElement("span");
        sw.className = "sw";
        sw.style.background = color(t);
        scale.appendChild(sw);
        var v = Math.expm1(t * Math.log1p(m));
        scale.appendChild(document.createTextNode(" " + (field === 2 ? human(v, "B") : humanUs(v))));
      });
    }
    var u = new uPlot(opts, [[0, cols * w], [0, n]], el);
    legend();
    sel.addEventListener("change", function () { field = sel.value === "time" ? 3 : 2; legend(); u.redraw(false); });
    return u;
  }

  function bandwidth(tv) {
    var el = document.getElementById("dc-bandwidth");
    var series = tv.node_bandwidth.series, hosts = Object.keys(series), cols = tv.columns;
    if (!hosts.length || !cols) { el.textContent = "No bytes moved."; return null; }
    var w = tv.bin_us / 1e6, xs = [];
    for (var i = 0; i < cols; i++) xs.push(i * w);
    var data = [xs];
    var ser = [{}];
    hosts.forEach(function (h, j) {
      data.push(series[h].map(function (b) { return b / w / 1048576; }));
      ser.push({label: h, stroke: PALETTE[j % PALETTE.length], width: 1.5,
                paths: uPlot.paths.stepped({align: 1}), points: {show: false},
                value: function (u, v) { return v == null ? "-" : v.toFixed(2) + " MiB/s"; }});
    });
    return new uPlot({width: width(el), height: 320,
                      scales: {x: {time: false}},
                      axes: [{label: "seconds since " + new Date(tv.start_us / 1000).toISOString()},
                             {label: "MiB/s", size: 70}],
                      cursor: {drag: {x: true, y: false}},
                      series: ser}, data, el);
  }

  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), sortable);
    var tv = JSON.parse(document.getElementById("dc-data").textContent);
    window.datacrumbs = {charts: {}};
    try { window.datacrumbs.charts.heatmap = heatmap(tv); } catch (e) { report("heatmap: " + e); }
    try { window.datacrumbs.charts.bandwidth = bandwidth(tv); } catch (e) { report("bandwidth chart: " + e); }
    window.datacrumbs.ready = true;
  });
})();
"""


def _table(caption: str, headers: list[str], rows: list[list], numeric_from: int = 1,
           table_id: str = "") -> str:
    """A sortable table; a cell given as (shown, value) sorts by the number ``value``."""
    out = [f'<table id="{escape(table_id)}" class="sortable"><caption>{escape(caption)}</caption>'
           '<thead><tr>']
    out += [f"<th>{escape(h)}</th>" for h in headers]
    out.append("</tr></thead><tbody>")
    for row in rows:
        cells = []
        for i, v in enumerate(row):
            attrs = ' class="n"' if i >= numeric_from else ""
            if isinstance(v, tuple):
                v, raw = v
                if raw is not None:
                    attrs += f' data-v="{float(raw)!r}"'
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                attrs += f' data-v="{float(v)!r}"'
            cells.append(f"<td{attrs}>{escape(str(v))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _n(v: int) -> tuple:
    return exact(v), v


def _t(v: float | None) -> tuple:
    return human_us(v), v


SECTIONS = (("sec-job", "Job"), ("sec-warnings", "Warnings"), ("sec-ops", "Operations"),
            ("sec-layers", "Layers"), ("sec-files", "Files"), ("sec-nodes", "Nodes and processes"), ("sec-time", "Time views"),
            ("heatmap", "Heatmap"), ("bandwidth", "Bandwidth"), ("imbalance", "Imbalance"),
            ("sec-errors", "Errors"), ("sec-plots", "Plots"))   # ids apart from the tables' ids


def render(summary: dict) -> str:
    job, tot = summary["job"], summary["totals"]
    title = f"datacrumbs report: job {', '.join(job['jobs']) or '-'}"
    warnings = _warnings(summary)
    shown = {"sec-warnings": bool(warnings), "sec-errors": bool(summary["errors"]),
             "sec-layers": bool(summary.get("layers"))}
    nav = " ".join(f'<a href="#{sid}">{escape(name)}</a>' for sid, name in SECTIONS
                   if shown.get(sid, True))
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">"
             f"<title>{escape(title)}</title><style>{CSS}{_uplot_css()}</style></head><body>",
             f"<nav>{nav}</nav>",
             '<ul id="dc-errors" hidden></ul>',
             f"<h1 id=\"sec-job\">{escape(title)}</h1>", findings_html(summary)]
    parts.append(_table("Job", ["What", "Value"], [
        ["User", ", ".join(job["users"]) or "-"], ["Nodes", exact(job["nodes"])],
        ["Processes", exact(job["processes"])],
        ["Wall time", f"{job['wall_time_s']:.3f} s ({when(job['start_us'])} .. {when(job['end_us'])})"],
        ["Operations", exact(tot["operations"])],
        ["Bytes", f"{exact(tot['bytes'])} ({human_bytes(tot['bytes'])})"],
        ["I/O time", human_us(tot["time_us"])], ["Errors", exact(tot["errors"])],
        ["Events lost", exact(summary["events_lost"])],
        ["File names lost", exact(summary.get("names_lost", 0))],
    ], numeric_from=2, table_id="job"))
    if warnings:
        parts.append("<h2 id=\"sec-warnings\">Warnings</h2><ul>" + "".join(
            f'<li class="warn">{escape(w)}</li>' for w in warnings) + "</ul>")
    rows = []
    for o in summary["operations"]:
        lat = o["latency_us"] or {}
        rows.append([o["category"], o["name"], _n(o["count"]), _n(o["bytes"]),
                     _t(o["time_us"]), _t(o["mean_us"]), (human_rate(o["bandwidth_Bps"]), o["bandwidth_Bps"]),
                     *(_t(lat.get(k)) if lat else ("-", None) for k in ("p50", "p90", "p99", "max")),
                     _n(o["errors"])])
    parts.append("<h2 id=\"sec-ops\">Operations</h2>" + _table(
        "Per operation", ["Category", "Operation", "Count", "Bytes", "Total time", "Mean",
                          "Bandwidth", "p50", "p90", "p99", "Max", "Errors"], rows, 2, "operations"))
    parts.append(_layers(summary))
    parts.append("<h2 id=\"sec-files\">Files</h2>")
    for key, caption in (("top_files_by_bytes", "Top files by bytes"),
                         ("top_files_by_time", "Top files by time")):
        parts.append(_table(caption + files_note(summary), ["File", "Count", "Bytes", "Time"],
                            [[f["path"], _n(f["count"]), _n(f["bytes"]), _t(f["time_us"])]
                             for f in summary[key]], table_id=key))
    parts.append("<h2 id=\"sec-nodes\">Nodes and processes</h2>" + _table(
        "Per node", ["Host", "Processes", "Count", "Bytes", "Time"],
        [[n["host"], _n(n["processes"]), _n(n["count"]), _n(n["bytes"]), _t(n["time_us"])]
         for n in summary["nodes"]], table_id="nodes"))
    parts.append(_table(
        f"Per process (top {len(summary['processes'])} of {job['processes']} by bytes)",
        ["Host", "PID", "Command", "Count", "Bytes", "Time"],
        [[p["host"], p["pid"], p["name"] or "-", _n(p["count"]), _n(p["bytes"]),
          _t(p["time_us"])] for p in summary["processes"]], 3, "processes"))
    parts.append(_time_views(summary.get("timeviews")))
    if summary["errors"]:
        parts.append("<h2 id=\"sec-errors\">Errors</h2>" + _table(
            "Errors by errno", ["Errno", "Name", "Count", "Operations"],
            [[e["errno"], f"{e['name']}: {e['message']}", _n(e["count"]),
              ", ".join(f"{k} ({v:,})" for k, v in e["operations"].items())]
             for e in summary["errors"]], 2, "errors"))
    parts.append("<h2 id=\"sec-plots\">Plots</h2>")
    for caption, draw in plots.ALL:
        png = draw(summary)
        if png:
            data = base64.b64encode(png).decode("ascii")
            parts.append(f"<h3>{escape(caption)}</h3><img alt=\"{escape(caption)}\" "
                         f"src=\"data:image/png;base64,{data}\">")
    parts.append(f"<script>{_uplot_js()}</script><script>{JS}</script>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _layers(summary: dict) -> str:
    """Per layer (HDF5 ... POSIX, kernel) inclusive and exclusive time, and the heaviest
    call chains down the layers (``write -> ext4_da_write_begin``)."""
    layers = summary.get("layers") or []
    if not layers:
        return ""
    out = ['<h2 id="sec-layers">Layers</h2>', _table(
        "Per layer (exclusive: time not spent in a traced call beneath)",
        ["Layer", "Operations", "Bytes moved", "Bytes asked", "Inclusive", "Exclusive"],
        [[lay["layer"], _n(lay["operations"]), _n(lay["bytes_moved"]), _n(lay["bytes_asked"]),
          _t(lay["inclusive_us"]), _t(lay["exclusive_us"])] for lay in layers],
        table_id="layers")]
    chains = summary.get("layer_breakdown") or []
    if chains:
        out.append('<h3>Heaviest call chains</h3><ul class="chains">' + "".join(
            "<li>" + " &rarr; ".join(
                f"{escape(c['op'])} {escape(human_us(c['time_us']))} "
                f"({escape(exact(c['calls']))} calls)" for c in chain) + "</li>"
            for chain in chains) + "</ul>")
    return "".join(out)


def _json_for_script(obj) -> str:
    """JSON that cannot end its <script> element: every < is written \\u003c."""
    return json.dumps(obj, separators=(",", ":")).replace("<", "\\u003c")   # ASCII: lone surrogates too


def _time_views(tv: dict | None) -> str:
    """The heatmap and bandwidth chart (drawn by the page's JS from embedded JSON) and the
    imbalance tables."""
    tv = tv or {"bin_us": 0, "start_us": None, "columns": 0, "imbalance": {"nodes": 0},
                "heatmap": {"rows": [], "processes": 0, "cells": []}, "node_bandwidth": {"series": {}}}
    hm = tv["heatmap"]
    top = sum(1 for r in hm["rows"] if r.get("pid") is not None)
    bin_txt = human_us(tv["bin_us"])
    out = ['<h2 id="sec-time">Time views</h2>',
           f'<script type="application/json" id="dc-data">{_json_for_script(tv)}</script>',
           '<noscript><p class="warn">The heatmap and the bandwidth chart need JavaScript.</p></noscript>',
           '<h3 id="heatmap">I/O over time per process</h3>',
           f"<p>Rows: the top {top} of {hm['processes']:,} processes by bytes"
           f"{', and all others in one row' if top < len(hm['rows']) else ''}; columns: bins of "
           f"{escape(bin_txt)}. Bytes count in the bin an operation starts in; busy time is split "
           "over the bins it spans (summed over threads). Drag to zoom in time, double-click to "
           'reset. <label>Colour: <select id="dc-hm-value"><option value="bytes">bytes</option>'
           '<option value="time">busy time</option></select></label></p>',
           '<div id="dc-heatmap" class="chart"></div><div id="dc-hm-scale" class="info"></div>'
           '<div id="dc-hm-info" class="info"></div>',
           '<h3 id="bandwidth">Bandwidth over time per node</h3>',
           f"<p>MiB/s per bin of {escape(bin_txt)}. Drag to zoom, double-click to reset.</p>",
           '<div id="dc-bandwidth" class="chart"></div>',
           '<h3 id="imbalance">Per-node imbalance</h3>']
    imb = tv["imbalance"]
    if not imb.get("nodes"):
        out.append("<p>No nodes.</p>")
        return "\n".join(out)
    b, t = imb["bytes"], imb["time_us"]
    out.append(_table("Across nodes", ["", "Min", "Mean", "Max", "Max / mean", "Least", "Most"], [
        ["Bytes", _n(b["min"]), (exact(round(b["mean"])), b["mean"]), _n(b["max"]),
         (f"{b['max_over_mean']:.3f}" if b["max_over_mean"] else "-", b["max_over_mean"]),
         b["min_host"], b["max_host"]],
        ["I/O time", _t(t["min"]), _t(t["mean"]), _t(t["max"]),
         (f"{t['max_over_mean']:.3f}" if t["max_over_mean"] else "-", t["max_over_mean"]),
         t["min_host"], t["max_host"]],
    ], 1, "imbalance-summary"))
    slow = imb["slowest"]
    why = []
    if slow["top_process"]:
        p = slow["top_process"]
        why.append(f"process {p['pid']}{' (' + p['name'] + ')' if p['name'] else ''} took "
                   f"{human_us(p['time_us'])} ({_pct(p['share'])} of the node's I/O time)")
    if slow["top_operation"]:
        o = slow["top_operation"]
        why.append(f"{o['category']}/{o['name']} took {human_us(o['time_us'])} ({_pct(o['share'])})")
    out.append(f'<p id="slowest">Slowest node: <b>{escape(slow["host"])}</b>, '
               f"{escape(human_us(slow['time_us']))} of I/O time, {escape(human_bytes(slow['bytes']))} "
               f"in {slow['processes']:,} processes" + (": " + escape("; ".join(why)) if why else "") + ".</p>")
    out.append(_table("Per node", ["Host", "Processes", "Count", "Bytes", "I/O time"],
                      [[n["host"], _n(n["processes"]), _n(n["count"]), _n(n["bytes"]), _t(n["time_us"])]
                       for n in imb["per_node"]], table_id="imbalance-nodes"))
    return "\n".join(out)


def _pct(share) -> str:
    return "-" if share is None else f"{share * 100:.1f}%"


@lru_cache(maxsize=1)
def _uplot_js() -> str:
    return _vendored(f"uPlot-{UPLOT_VERSION}.iife.min.js")


@lru_cache(maxsize=1)
def _uplot_css() -> str:
    return _vendored(f"uPlot-{UPLOT_VERSION}.min.css")


def _vendored(name: str) -> str:
    return resources.files("datacrumbs").joinpath("data/js", name).read_text("utf-8")


def _warnings(summary: dict) -> list[str]:
    out = []
    for tr in summary["traces"]:
        if tr["tail_error"]:
            out.append(tail_text(tr))
        if tr["bad_lines"]:
            out.append(f"{tr['path']}: {tr['bad_lines']:,} lines skipped (not JSON objects)")
    out += [bad["error"] for bad in summary["unreadable"]]
    out += [f"{p}: the tracer did not finish cleanly" for p in summary["incomplete_runs"]]
    if summary["events_lost"]:
        out.append(lost_text(summary).removeprefix("warning: "))
    if summary.get("names_lost"):
        out.append(f"{summary['names_lost']:,} events lost their file name in the tracer; "
                   "per-file figures are lower bounds")
    out += [f"library {lib['path']} of the probed family {lib['family']} was mapped by the job "
            f"but not traced: {lib['reason'] or 'not attached'}"
            for lib in summary.get("libraries", []) if lib["status"] == "not attached"]
    out += [f"probe refused: {p['id']} ({p['kind']} {p['target']}): {p['reason']}"
            for p in summary["probes_refused"]]
    return out
