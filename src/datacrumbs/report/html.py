"""One self-contained HTML page: the summary tables and its plots as data: URIs.

Everything is inline (CSS, PNGs as base64), so the page opens offline and can
be mailed or attached to a ticket. Every string from a trace (file names,
commands, hosts) is escaped: traces are written by users' programs.
"""

from __future__ import annotations

import base64
from html import escape

from . import plots
from .findings import findings_html
from .terminal import exact, files_note, human_bytes, human_rate, human_us, when

CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:0.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:3px 8px;font-size:0.9em}
th{background:#f0f0f0;text-align:left} td.n{text-align:right;font-variant-numeric:tabular-nums}
.warn{color:#8a4b00} img{max-width:100%;display:block;margin:0.5em 0 1.5em}
"""


def _table(caption: str, headers: list[str], rows: list[list], numeric_from: int = 1,
           table_id: str = "") -> str:
    out = [f'<table id="{escape(table_id)}"><caption>{escape(caption)}</caption><thead><tr>']
    out += [f"<th>{escape(h)}</th>" for h in headers]
    out.append("</tr></thead><tbody>")
    for row in rows:
        out.append("<tr>" + "".join(
            f'<td class="n">{escape(str(v))}</td>' if i >= numeric_from else f"<td>{escape(str(v))}</td>"
            for i, v in enumerate(row)) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def render(summary: dict) -> str:
    job, tot = summary["job"], summary["totals"]
    title = f"datacrumbs report: job {', '.join(job['jobs']) or '-'}"
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{escape(title)}</h1>", findings_html(summary)]
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
    warnings = _warnings(summary)
    if warnings:
        parts.append("<h2>Warnings</h2><ul>" + "".join(
            f'<li class="warn">{escape(w)}</li>' for w in warnings) + "</ul>")
    rows = []
    for o in summary["operations"]:
        lat = o["latency_us"] or {}
        rows.append([o["category"], o["name"], exact(o["count"]), exact(o["bytes"]),
                     human_us(o["time_us"]), human_us(o["mean_us"]), human_rate(o["bandwidth_Bps"]),
                     *(human_us(lat.get(k)) if lat else "-" for k in ("p50", "p90", "p99", "max")),
                     exact(o["errors"])])
    parts.append("<h2>Operations</h2>" + _table(
        "Per operation", ["Category", "Operation", "Count", "Bytes", "Total time", "Mean",
                          "Bandwidth", "p50", "p90", "p99", "Max", "Errors"], rows, 2, "operations"))
    for key, caption in (("top_files_by_bytes", "Top files by bytes"),
                         ("top_files_by_time", "Top files by time")):
        parts.append(_table(caption + files_note(summary), ["File", "Count", "Bytes", "Time"],
                            [[f["path"], exact(f["count"]), exact(f["bytes"]), human_us(f["time_us"])]
                             for f in summary[key]], table_id=key))
    parts.append("<h2>Nodes and processes</h2>" + _table(
        "Per node", ["Host", "Processes", "Count", "Bytes", "Time"],
        [[n["host"], exact(n["processes"]), exact(n["count"]), exact(n["bytes"]), human_us(n["time_us"])]
         for n in summary["nodes"]], table_id="nodes"))
    parts.append(_table(
        f"Per process (top {len(summary['processes'])} of {job['processes']} by bytes)",
        ["Host", "PID", "Command", "Count", "Bytes", "Time"],
        [[p["host"], p["pid"], p["name"] or "-", exact(p["count"]), exact(p["bytes"]),
          human_us(p["time_us"])] for p in summary["processes"]], 3, "processes"))
    if summary["errors"]:
        parts.append("<h2>Errors</h2>" + _table(
            "Errors by errno", ["Errno", "Name", "Count", "Operations"],
            [[e["errno"], f"{e['name']}: {e['message']}", exact(e["count"]),
              ", ".join(f"{k} ({v:,})" for k, v in e["operations"].items())]
             for e in summary["errors"]], 2, "errors"))
    parts.append("<h2>Plots</h2>")
    for caption, draw in plots.ALL:
        png = draw(summary)
        if png:
            data = base64.b64encode(png).decode("ascii")
            parts.append(f"<h3>{escape(caption)}</h3><img alt=\"{escape(caption)}\" "
                         f"src=\"data:image/png;base64,{data}\">")
    parts.append("</body></html>")
    return "\n".join(parts)


def _warnings(summary: dict) -> list[str]:
    out = []
    for tr in summary["traces"]:
        if tr["tail_error"]:
            out.append(f"{tr['path']}: {tr['tail_error']}; read {tr['members']:,} complete gzip "
                       f"members ({tr['events']:,} events)")
        if tr["bad_lines"]:
            out.append(f"{tr['path']}: {tr['bad_lines']:,} lines skipped (not JSON objects)")
    out += [bad["error"] for bad in summary["unreadable"]]
    out += [f"{p}: the tracer did not finish cleanly" for p in summary["incomplete_runs"]]
    if summary["events_lost"]:
        out.append(f"{summary['events_lost']:,} events lost by the tracer; counts are lower bounds")
    if summary.get("names_lost"):
        out.append(f"{summary['names_lost']:,} events lost their file name in the tracer; "
                   "per-file figures are lower bounds")
    out += [f"probe refused: {p['id']} ({p['kind']} {p['target']}): {p['reason']}"
            for p in summary["probes_refused"]]
    return out
