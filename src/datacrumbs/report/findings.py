"""Findings: what in a job's I/O deserves an analyst's attention, with its numbers.

Rules in the spirit of Drishti (its default thresholds, ``drishti/includes/config.py``)
and DFTracer's analyzer. Each rule fires only past a relative threshold *and* an
absolute one, so a short program's few calls do not raise alarms:

=================  ========================================================  ============
rule               fires when                                                 severity
=================  ========================================================  ============
events_lost        the kernel dropped events (ring buffer full)               high
names_lost         events whose file name is missing                           warning
small_io           > 10 % of file requests are < 4 KiB, and >= 1,000 of them   warning
random_access      > 20 % of classified accesses random, and >= 1,000          warning
metadata_heavy     metadata time > data time, and >= 1 s of it                 warning
misaligned         > 10 % of requests >= 4 KiB at an offset the program chose  info
                   (pread, pwrite, MPI _at) start off a 4 KiB boundary,
                   and >= 100 of them
redundant_reads    a file's bytes read > 1.5 x the distinct bytes read,        warning
                   and >= 1 MiB read
imbalance          (max - min) / max of file bytes per process of one command  warning
                   (ranks, not a pipeline's stages) or per node > 0.15,
                   >= 2 of them, the busiest >= 1 MiB
not_file_io        time in pipes, sockets or terminals > file I/O time,        info
                   and >= 1 s
untraced           libraries of a probed family mapped but not attached         warning
                   (summary ``libraries`` rows, status "not attached"), or
                   warnings a trace's run summary lists
=================  ========================================================  ============

Drishti uses 1 MiB for "small"; 4 KiB (a page, the usual file-system block) is what
local and NFS file systems punish, and what a request below it wastes on any of them.
"""

from __future__ import annotations

from html import escape

SMALL = 4096
SMALL_SHARE, SMALL_MIN = 0.10, 1000
RANDOM_SHARE, RANDOM_MIN = 0.20, 1000
META_MIN_US = 1_000_000
MISALIGNED_SHARE, MISALIGNED_MIN = 0.10, 100
REDUNDANT_FACTOR, REDUNDANT_MIN = 1.5, 1 << 20
IMBALANCE, IMBALANCE_MIN = 0.15, 1 << 20
NOT_FILE_MIN_US = 1_000_000
FILE_KINDS = {"reg", "blk", "dir", "unknown"}
LIST = 5            # files and processes named per finding


def _finding(rule, severity, title, numbers, files=(), processes=()) -> dict:
    return {"rule": rule, "severity": severity, "title": title, "numbers": numbers,
            "files": list(files)[:LIST], "processes": list(processes)[:LIST]}


def _procs(files) -> list:
    seen = []
    for f in files:
        for pid in f.get("pids", []):
            for h in f.get("nodes", []) or [""]:
                p = {"host": h, "pid": pid}
                if p not in seen:
                    seen.append(p)
    return seen


def _worst(files, count) -> tuple[list[str], list]:
    """(paths, processes) of the files with a nonzero ``count``, most first."""
    hit = sorted((f for f in files if count(f)), key=lambda f: (-count(f), f["path"]))
    return [f["path"] for f in hit], _procs(hit)


def findings(s: dict) -> list[dict]:
    """The findings of a finished summary (``Aggregate.finalize``), worst first."""
    out = []
    if s.get("events_lost"):
        out.append(_finding("events_lost", "high",
                            f"{s['events_lost']:,} events lost: totals are exact, per-file and "
                            "per-call numbers are not", {"events_lost": s["events_lost"]}))
    if s.get("names_lost"):
        out.append(_finding("names_lost", "warning",
                            f"{s['names_lost']:,} events without their file name",
                            {"names_lost": s["names_lost"]}))
    files = [f for f in s.get("files", []) if f.get("kind") in FILE_KINDS]
    reqs = sum(f["requests"] for f in files)
    small = sum(f["small_requests"] for f in files)
    if reqs and small > SMALL_SHARE * reqs and small >= SMALL_MIN:
        out.append(_finding("small_io", "warning",
                            f"{small:,} of {reqs:,} requests ({small / reqs:.0%}) are smaller "
                            f"than {SMALL // 1024} KiB: aggregate them (buffering, larger "
                            "records, collective I/O)",
                            {"small_requests": small, "requests": reqs, "threshold_bytes": SMALL},
                            *_worst(files, lambda f: f["small_requests"])))
    pats = {k: 0 for k in ("consecutive", "sequential", "random")}
    for f in files:
        for d in ("read", "write"):
            for k in pats:
                pats[k] += f["access"][d][k]
    total = sum(pats.values())
    if total and pats["random"] > RANDOM_SHARE * total and pats["random"] >= RANDOM_MIN:
        out.append(_finding("random_access", "warning",
                            f"{pats['random']:,} of {total:,} accesses ({pats['random'] / total:.0%}) "
                            "are random (behind the previous one's end)", dict(pats),
                            *_worst(files, lambda f: f["access"]["read"]["random"]
                                    + f["access"]["write"]["random"])))
    meta = sum(f["time_us"]["metadata"] for f in files)
    data = sum(f["time_us"]["read"] + f["time_us"]["write"] for f in files)
    if meta > data and meta >= META_MIN_US:
        hit = sorted(files, key=lambda f: (-f["time_us"]["metadata"], f["path"]))
        out.append(_finding("metadata_heavy", "warning",
                            f"metadata calls (open, stat, close, seek ...) took {meta / 1e6:.2f} s, "
                            f"more than reading and writing ({data / 1e6:.2f} s)",
                            {"metadata_time_us": round(meta, 3), "data_time_us": round(data, 3)},
                            [f["path"] for f in hit], _procs(hit)))
    large = sum(f["large_requests"] for f in files)
    mis = sum(f["misaligned_requests"] for f in files)
    if large and mis > MISALIGNED_SHARE * large and mis >= MISALIGNED_MIN:
        out.append(_finding("misaligned", "info",
                            f"{mis:,} of {large:,} requests of 4 KiB or more start off a 4 KiB "
                            "boundary", {"misaligned_requests": mis, "large_requests": large},
                            *_worst(files, lambda f: f["misaligned_requests"])))
    red = [f for f in files if f["bytes"]["read"] >= REDUNDANT_MIN and f["read_extent_bytes"]
           and f["bytes"]["read"] > REDUNDANT_FACTOR * f["read_extent_bytes"]]
    if red:
        red.sort(key=lambda f: (-(f["bytes"]["read"] - f["read_extent_bytes"]), f["path"]))
        extra = sum(f["bytes"]["read"] - f["read_extent_bytes"] for f in red)
        out.append(_finding("redundant_reads", "warning",
                            f"{len(red):,} files read more than {REDUNDANT_FACTOR}x over: "
                            f"{extra:,} bytes read again", {"files": len(red), "bytes_reread": extra,
                                                            "worst": {"path": red[0]["path"],
                                                                      "bytes_read": red[0]["bytes"]["read"],
                                                                      "distinct_bytes": red[0]["read_extent_bytes"]}},
                            [f["path"] for f in red], _procs(red)))
    groups: dict = {}
    for r in s.get("process_io", []):        # the ranks of one program, not a pipeline's stages
        groups.setdefault(r.get("name", ""), []).append(r)
    cases = [("process", g, lambda r: {"host": r["host"], "pid": r["pid"], "name": r.get("name", "")})
             for _, g in sorted(groups.items())]
    cases.append(("node", _by_node(s.get("process_io", [])), lambda r: {"host": r["host"]}))
    for what, rows, label in cases:
        rows = [r for r in rows if r["bytes"] > 0]
        if len(rows) < 2:
            continue
        hi = max(rows, key=lambda r: r["bytes"])
        lo = min(rows, key=lambda r: r["bytes"])
        ratio = (hi["bytes"] - lo["bytes"]) / hi["bytes"]
        if ratio > IMBALANCE and hi["bytes"] >= IMBALANCE_MIN:
            out.append(_finding("imbalance", "warning",
                                f"{what}es{' of ' + rows[0].get('name', '') if what == 'process' and rows[0].get('name') else ''} move unequal data: the busiest {hi['bytes']:,} bytes, "
                                f"the least busy {lo['bytes']:,} ({ratio:.0%} apart)",
                                {"by": what, "max_bytes": hi["bytes"], "min_bytes": lo["bytes"],
                                 "count": len(rows), "ratio": round(ratio, 3)},
                                [], [label(hi), label(lo)]))
    io_us = s.get("totals", {}).get("time_us", 0)
    for a in s.get("not_file_io", []):
        if a["time_us"] > io_us and a["time_us"] >= NOT_FILE_MIN_US:
            out.append(_finding("not_file_io", "info",
                                f"{a['time_us'] / 1e6:.2f} s in {a['kind']} calls (waiting on other "
                                f"processes, not storage) against {io_us / 1e6:.2f} s of file I/O",
                                {"kind": a["kind"], "time_us": a["time_us"], "file_io_time_us": io_us}))
    missed = [lib for lib in s.get("libraries") or []
              if isinstance(lib, dict) and lib.get("status") == "not attached"]
    if missed:                              # the family helper's rows, when merged with it
        out.append(_finding("untraced", "warning",
                            f"{len(missed):,} libraries of a probed family were mapped by the job "
                            "but not traced: their calls are missing from every number",
                            {"libraries": [{k: lib.get(k) for k in ("path", "family", "hosts")}
                                           for lib in missed[:LIST]]},
                            [lib.get("path", "") for lib in missed]))
    for w in s.get("warnings", []):
        out.append(_finding("untraced", "warning", str(w.get("message", w)) if isinstance(w, dict)
                            else str(w), w if isinstance(w, dict) else {}))
    order = {"high": 0, "warning": 1, "info": 2}
    out.sort(key=lambda f: order[f["severity"]])
    return out


def _by_node(rows) -> list:
    nodes: dict = {}
    for r in rows:
        n = nodes.setdefault(r["host"], {"host": r["host"], "bytes": 0})
        n["bytes"] += r["bytes"]
    return list(nodes.values())


def findings_html(summary: dict) -> str:
    """The findings as an HTML section (html.py places it first)."""
    items = summary.get("findings") or []
    if not items:
        return "<section id='findings'><h2>Findings</h2><p>Nothing stands out.</p></section>"
    rows = []
    for f in items:
        where = ", ".join(escape(p) for p in f["files"])
        procs = ", ".join(escape(f"{p.get('host', '')}:{p.get('pid', '')}".strip(":"))
                          for p in f["processes"])
        rows.append(f"<li class='{escape(f['severity'])}'><b>{escape(f['severity'])}</b> "
                    f"{escape(f['title'])}" + (f"<br><small>files: {where}</small>" if where else "")
                    + (f"<br><small>processes: {procs}</small>" if procs else "") + "</li>")
    return "<section id='findings'><h2>Findings</h2><ul>" + "".join(rows) + "</ul></section>"
