"""The summary as rich tables in a terminal, and a progress bar for long reads.

Counts and bytes are printed exactly (with thousands separators) so the
terminal, the JSON and the HTML agree number for number; only times,
bandwidths and latencies are scaled to readable units.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from datetime import datetime, timezone

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ..safetext import SafeConsole, plain


def lost_text(summary: dict) -> str:
    """The warning for lost events: when every run that lost some counted them in the kernel
    (trace mode), the totals are exact and only per-event figures miss them."""
    n = summary["events_lost"]
    if summary.get("totals_exact"):
        return (f"warning: {n:,} events were lost by the tracer (ring buffer full); the kernel "
                "counted their operations, so operation, process and node totals (count, bytes, "
                "time) are exact; latencies, sizes, errors and per-file figures lack them")
    return (f"warning: {n:,} events were lost by the tracer (ring buffer full); counts are "
            "lower bounds")


def tail_text(tr: dict) -> str:
    """What was kept of a trace with a damaged end: when the damaged member's whole lines
    were kept, its bytes are not "dropped" (a user would think its events were lost)."""
    members = f"{tr['members']:,} complete gzip member{'' if tr['members'] == 1 else 's'}"
    if tr.get("partial_member_kept"):
        text = (f"{tr['path']}: {tr['tail_error']}; kept {tr['events']:,} events: {members}, "
                f"then every whole line of the damaged last {tr['dropped_bytes']:,} bytes up "
                "to the damage")
        if not tr.get("torn_tail"):
            # a cut is exact up to the cut; corrupt deflate data is only found some bytes on
            text += " (as zcat gives them: the last ones before the damage may be wrong)"
        return text
    return (f"{tr['path']}: {tr['tail_error']}; read {members} ({tr['events']:,} events), "
            f"dropped {tr['dropped_bytes']:,} bytes at the end")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_rate(bps: float) -> str:
    return human_bytes(bps) + "/s" if bps else "-"


def human_us(us: float | None) -> str:
    """A time given in µs (three decimals: ns resolution) in a readable unit."""
    if us is None:
        return "-"
    if us < 0.9995:
        return f"{us * 1000:.0f} ns"
    if us < 1000:
        return f"{us:.3g} µs"
    if us < 1_000_000:
        return f"{us / 1000:.2f} ms"
    return f"{us / 1e6:.2f} s"


def exact(n: int) -> str:
    return f"{n:,}"


def when(us: int | None) -> str:
    if us is None:
        return "-"
    return datetime.fromtimestamp(us / 1e6, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _table(title: str, *columns: str, numeric_from: int = 1) -> Table:
    t = Table(title=title, title_justify="left", title_style="bold")
    for i, c in enumerate(columns):
        numeric = i >= numeric_from
        # Names keep room for at least their header: rich otherwise gives all the width
        # to the no-wrap numeric columns and narrows the names to nothing.
        t.add_column(c, justify="right" if numeric else "left", no_wrap=numeric,
                     overflow="fold", min_width=min(len(c), 9) if numeric else max(len(c), 10))
    return t


def _fit(console: Console, title: str, columns: list[str], rows: list[list[str]], *,
         numeric_from: int = 1, optional: tuple[str, ...] = ()) -> Table:
    """The table with as many columns as fit the console, dropping ``optional`` ones in
    order: rich would otherwise cut numbers (614,8 for 614,8xx) or squeeze names to
    nothing, and a user copies a wrong value. Digits are never cut: numeric columns do
    not wrap and keep their full width."""
    keep = list(range(len(columns)))
    dropped: list[str] = []
    for name in (None, *optional):
        if name is not None and name in columns:
            keep.remove(columns.index(name))
            dropped.append(name)
        note = f"{title} ({', '.join(dropped)} left out at this width; widen the terminal or " \
            "use --json)" if dropped else title
        table = _table(note, *(columns[i] for i in keep),
                       numeric_from=sum(1 for i in keep if i < numeric_from))
        for row in rows:
            table.add_row(*(row[i] for i in keep))
        # measured unbounded (console.measure clamps to the width); the widest rendering
        # must fit, since rich cuts no-wrap cells rather than narrowing below it
        if table.__rich_measure__(console, console.options.update_width(1 << 20)).maximum \
                <= console.width:
            break
    return table


def render(summary: dict, console: Console) -> None:
    """Print every section of the summary."""
    job = summary["job"]
    tot = summary["totals"]
    render_findings(summary, console)
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("Job", ", ".join(job["jobs"]) or "-")
    head.add_row("User", ", ".join(job["users"]) or "-")
    head.add_row("Nodes", exact(job["nodes"]))
    head.add_row("Processes", exact(job["processes"]))
    head.add_row("Wall time", f"{job['wall_time_s']:.3f} s  ({when(job['start_us'])} .. {when(job['end_us'])})")
    head.add_row("Operations", exact(tot["operations"]))
    head.add_row("Bytes", f"{exact(tot['bytes'])} ({human_bytes(tot['bytes'])}) of file I/O, "
                 f"{exact(tot.get('bytes_read', 0))} read, {exact(tot.get('bytes_written', 0))} "
                 "written, each byte once")
    head.add_row("I/O time", f"{human_us(tot['time_us'])} in file I/O calls (outermost call "
                 "of each nest)")
    for a in summary.get("not_file_io", []):
        head.add_row(f"  not file I/O: {a['kind']}",
                     f"{human_us(a['time_us'])}, {exact(a['bytes_read'])} bytes read, "
                     f"{exact(a['bytes_written'])} written")
    head.add_row("Errors", exact(tot["errors"]))
    head.add_row("Traces read", exact(len(summary["traces"])))
    head.add_row("Events lost", exact(summary["events_lost"]))
    head.add_row("File names lost", exact(summary.get("names_lost", 0)))
    console.print(head)
    console.print()

    if not summary["operations"]:
        console.print("No I/O operations in these traces.")
    rows = []
    for o in summary["operations"]:
        lat = o["latency_us"] or {}
        mark = "" if lat.get("exact", True) else "~"
        rows.append([o["category"], o["name"], exact(o["count"]), exact(o["bytes"]),
                     human_us(o["time_us"]), human_us(o["mean_us"]),
                     human_rate(o["bandwidth_Bps"]),
                     *(mark + human_us(lat.get(k)) if lat else "-" for k in ("p50", "p90", "p99")),
                     human_us(lat.get("max")) if lat else "-", exact(o["errors"])])
    if summary["operations"]:
        console.print(_fit(console, "Operations",
                           ["Category", "Operation", "Count", "Bytes", "Total time", "Mean",
                            "Bandwidth", "p50", "p90", "p99", "Max", "Errors"], rows,
                           numeric_from=2,
                           optional=("p90", "p50", "Max", "Mean", "p99", "Bandwidth",
                                     "Errors", "Category")))
    if any(not (o["latency_us"] or {}).get("exact", True) for o in summary["operations"]):
        console.print("~ percentile from a log-scale histogram (within 9%)", style="dim")

    for key, title in (("top_files_by_bytes", "Top files by bytes"), ("top_files_by_time", "Top files by time")):
        if summary[key]:
            t = _table(title + files_note(summary), "File", "Count", "Bytes", "Time")
            for f in summary[key]:
                t.add_row(f["path"], exact(f["count"]), exact(f["bytes"]), human_us(f["time_us"]))
            console.print(t)

    render_detail(summary, console)

    if summary["nodes"]:
        t = _table("Per node", "Host", "Processes", "Count", "Bytes", "Time")
        for n in summary["nodes"]:
            t.add_row(n["host"], exact(n["processes"]), exact(n["count"]), exact(n["bytes"]),
                      human_us(n["time_us"]))
        console.print(t)
        imbalance(summary, console)
    if summary["processes"]:
        shown = len(summary["processes"])
        t = _table(f"Per process (top {shown} of {job['processes']} by bytes)",
                   "Host", "PID", "Command", "Count", "Bytes", "Time", numeric_from=3)
        for p in summary["processes"]:
            t.add_row(p["host"], str(p["pid"]), p["name"] or "-", exact(p["count"]),
                      exact(p["bytes"]), human_us(p["time_us"]))
        console.print(t)
    if summary["errors"]:
        t = _table("Errors by errno", "Errno", "Name", "Count", "Operations", numeric_from=2)
        for e in summary["errors"]:
            opnames = ", ".join(f"{k} ({v:,})" for k, v in e["operations"].items())
            t.add_row(str(e["errno"]), f"{e['name']}: {e['message']}", exact(e["count"]), opnames)
        console.print(t)
    notes(summary, console)


def imbalance(summary: dict, console: Console) -> None:
    """With several nodes: how uneven they were, and what kept the slowest one busy."""
    imb = (summary.get("timeviews") or {}).get("imbalance") or {}
    if imb.get("nodes", 0) < 2:
        return
    b, t, slow = imb["bytes"], imb["time_us"], imb["slowest"]
    ratio = (lambda r: f"max/mean {r:.2f}" if r else "max/mean -")
    console.print(f"Imbalance over {imb['nodes']:,} nodes: bytes min {exact(b['min'])} mean "
                  f"{exact(round(b['mean']))} max {exact(b['max'])} ({b['max_host']}, "
                  f"{ratio(b['max_over_mean'])}); I/O time min {human_us(t['min'])} mean "
                  f"{human_us(t['mean'])} max {human_us(t['max'])} ({ratio(t['max_over_mean'])})",
                  highlight=False, markup=False)
    why = []
    if slow["top_process"]:
        p = slow["top_process"]
        why.append(f"process {p['pid']}{' (' + p['name'] + ')' if p['name'] else ''} "
                   f"{human_us(p['time_us'])}, {p['share'] * 100:.1f}%")
    if slow["top_operation"]:
        o = slow["top_operation"]
        why.append(f"{o['category']}/{o['name']} {human_us(o['time_us'])}, {o['share'] * 100:.1f}%")
    console.print(f"Slowest node {slow['host']}: {human_us(slow['time_us'])} of I/O time"
                  + (f" ({'; '.join(why)})" if why else ""), highlight=False, markup=False)
    console.print()


def render_findings(summary: dict, console: Console) -> None:
    """The findings, first: what to look at, with its numbers and where."""
    items = summary.get("findings") or []
    if not items:
        console.print(plain("Findings: nothing stands out", style="bold"))
        console.print()
        return
    console.print(plain("Findings", style="bold"))
    style = {"high": "bold red", "warning": "yellow", "info": "cyan"}
    for f in items:
        console.print(plain(f"  [{f['severity']}] {f['title']}", style=style.get(f["severity"], "")))
        if f["files"]:
            console.print(plain("      files: " + ", ".join(f["files"]), style="dim"))
        if f["processes"]:
            console.print(plain("      processes: " + ", ".join(
                f"{p.get('host', '')}:{p['pid']}" if "pid" in p else p.get("host", "")
                for p in f["processes"]), style="dim"))
    console.print()


def render_detail(summary: dict, console: Console, top: int = 10) -> None:
    """Layers, call chains, per-file split, file counts and data per file system."""
    layers = summary.get("layers") or []
    if layers:
        t = _table("Layers (exclusive: time not spent in a traced call beneath)", "Layer",
                   "Operations", "Bytes moved", "Bytes asked", "Inclusive", "Exclusive")
        for lay in layers:
            t.add_row(lay["layer"], exact(lay["operations"]), exact(lay["bytes_moved"]),
                      exact(lay["bytes_asked"]), human_us(lay["inclusive_us"]),
                      human_us(lay["exclusive_us"]))
        console.print(t)
    for chain in summary.get("layer_breakdown") or []:
        console.print("  " + " -> ".join(
            f"{c['op'].split('/', 1)[-1]} {human_us(c['time_us'])} ({exact(c['calls'])} calls)"
            for c in chain))
    files = [f for f in summary.get("files") or [] if f["kind"] in ("reg", "blk", "dir", "unknown")]
    if files:
        shown = files[:top]
        rows = []
        for f in shown:
            acc = {k: f["access"]["read"][k] + f["access"]["write"][k]
                   for k in ("consecutive", "sequential", "random")}
            rows.append([f["path"], exact(f["bytes"]["read"]), exact(f["bytes"]["write"]),
                         exact(f["ops"]["read"]), exact(f["ops"]["write"]),
                         exact(f["ops"]["metadata"]),
                         human_us(f["time_us"]["read"] + f["time_us"]["write"]),
                         human_us(f["time_us"]["metadata"]),
                         f"{acc['consecutive']:,}/{acc['sequential']:,}/{acc['random']:,}",
                         exact(f["processes"]), f["fs_type"] or "-"])
        console.print(_fit(console, f"Files (top {len(shown)} of {len(files)} by bytes; all in --json)",
                           ["File", "Read B", "Written B", "Reads", "Writes", "Meta ops",
                            "Data time", "Meta time", "Consec/seq/rand", "Procs", "FS"], rows,
                           optional=("FS", "Procs", "Consec/seq/rand", "Meta time", "Data time")))
    fc = summary.get("file_counts")
    if fc and fc["files"]:
        console.print(f"Files: {fc['files']:,} ({fc['read_only']:,} read-only, "
                      f"{fc['write_only']:,} write-only, {fc['read_write']:,} read-write, "
                      f"{fc['metadata_only']:,} metadata only; {fc['created']:,} created)")
    mounts = summary.get("data_per_mount") or []
    if mounts and any(m["mount"] for m in mounts):
        t = _table("Data per file system", "Mount", "Type", "Files", "Read", "Written")
        for m in mounts:
            t.add_row(m["mount"] or "(unknown)", m["fs_type"] or "-", exact(m["files"]),
                      exact(m["bytes_read"]), exact(m["bytes_written"]))
        console.print(t)


def notes(summary: dict, console: Console) -> None:
    """Everything that makes the numbers incomplete, said plainly."""
    for tr in summary["traces"]:
        if tr["tail_error"]:
            console.print(plain(f"warning: {tail_text(tr)}", style="yellow"))
        if tr["bad_lines"]:
            console.print(plain(f"warning: {tr['path']}: {tr['bad_lines']:,} lines are not JSON "
                                "objects and were skipped", style="yellow"))
    for bad in summary["unreadable"]:
        console.print(plain(f"warning: {bad['error']}", style="yellow"))
    for path in summary["incomplete_runs"]:
        console.print(plain(f"warning: {path}: the tracer did not finish cleanly", style="yellow"))
    if summary["events_lost"]:
        console.print(plain(lost_text(summary), style="yellow"))
    if summary.get("names_lost"):
        console.print(plain(f"warning: {summary['names_lost']:,} events lost their file name in "
                            "the tracer; per-file figures are lower bounds", style="yellow"))
    for lib in summary.get("libraries", []):
        if lib["status"] == "not attached":
            hosts = f" on {', '.join(lib['hosts'])}" if lib["hosts"] else ""
            console.print(plain(f"warning: library {lib['path']}{hosts} of the probed family "
                                f"{lib['family']} was mapped by the job but not traced: "
                                f"{lib['reason'] or 'not attached'}", style="yellow"))
    for pr in summary["probes_refused"]:
        hosts = f" on {', '.join(pr['hosts'])}" if pr["hosts"] else ""
        console.print(plain(f"probe refused{hosts}: {pr['id']} ({pr['kind']} {pr['target']}): "
                            f"{pr['reason']}", style="dim"))


def files_note(summary: dict) -> str:
    """Says when the file tables cover a sample (jobs touching more than FILES_CAP files)."""
    frac = summary["totals"].get("files_sampled")
    if not frac:
        return ""
    return (f" (among a 1/{round(1 / frac)} sample of about {summary['totals']['files']:,} files; "
            "numbers of listed files are exact)")


class _Console(SafeConsole):
    def on_broken_pipe(self) -> None:
        """`| head` closed the pipe: stop writing quietly and let the CLI exit as a
        command killed by SIGPIPE would (141), not with rich's error status 1."""
        self.quiet = True
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise BrokenPipeError


def make_console(file=None) -> Console:
    """Terminal width on a terminal; 160 columns into files and pipes (rich's default, 80,
    would fold the wide tables of a log or a `| less`)."""
    console = _Console(file=file or sys.stdout, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = _Console(file=file or sys.stdout, highlight=False, width=160)
    return console


@contextmanager
def progress_bar(label: str = "Reading traces"):
    """A byte progress bar on stderr while a long summary runs (silent when not a terminal)."""
    console = Console(file=sys.stderr)
    progress = Progress(TextColumn(label), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                        console=console, transient=True, disable=not console.is_terminal)
    task = progress.add_task(label, total=None)

    def update(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    with progress:
        yield update
