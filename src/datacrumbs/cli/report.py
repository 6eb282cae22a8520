"""Summarise a job's traces: per operation, file, node and process.

PATH is a trace file (*.pfw.gz) or a directory holding a job's traces (all
nodes are merged; each trace's *.summary.json adds events lost and probes
refused). A trace cut short by a crash is read up to its last complete line,
and a file that cannot be read is reported while the rest are summarised.
--html and --json files are written before the tables are printed, so piping
the tables into `head` loses nothing.

examples:
  datacrumbs report /var/lib/datacrumbs/traces/alice/2026-11-25/
  datacrumbs report trace-alice-1234-node1.pfw.gz --html job1234.html --json job1234.json
  datacrumbs report --dask --top 20 traces/
  datacrumbs report --dask-scheduler tcp://login1:8786 /shared/traces/job1234/
    (a dask.distributed cluster whose workers can read the traces' paths)
"""

from __future__ import annotations

import sys

from ..errors import DatacrumbsError, UsageError
from ..safetext import shown

HELP = "summarise traces (terminal tables, --html page with plots, --json)"


def setup_parser(parser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="trace files or trace directories")
    parser.add_argument("--html", metavar="FILE", help="also write a self-contained HTML page with plots")
    parser.add_argument("--json", metavar="FILE", help="also write the summary as JSON ('-' for stdout, "
                        "which replaces the tables)")
    parser.add_argument("--dask", action="store_true", help="compute with dask (same numbers)")
    parser.add_argument("--dask-scheduler", metavar="ADDRESS",
                        help="compute on a running dask.distributed cluster (its scheduler's "
                             "address, e.g. tcp://host:8786; the workers must see PATH); "
                             "implies --dask")
    parser.add_argument("--top", type=int, default=10, metavar="N", help="rows in top-N tables (default 10)")
    parser.add_argument("-j", "--jobs", type=int, metavar="N", help="worker processes (default: all cores)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print no tables (only warnings)")


def compute(args) -> dict:
    if args.dask_scheduler:
        from ..report import dask_backend

        return dask_backend.summarize_on_cluster(args.paths, args.dask_scheduler, top=args.top,
                                                 jobs=args.jobs)
    if args.dask:
        from ..report import dask_backend

        return dask_backend.summarize(args.paths, top=args.top, jobs=args.jobs)
    from ..report.merge import summarize
    from ..report.terminal import progress_bar

    with progress_bar() as update:
        return summarize(args.paths, jobs=args.jobs, top=args.top, on_progress=update)


def _warn_about_the_site_config() -> None:
    """The report finds its compiled readers through the site configuration; one it cannot
    read (a typo in datacrumbs.toml, a wrong DATACRUMBS_CONFIG) leaves it on the slower
    Python path with the same numbers. Said once here, not silently in every worker."""
    from ..config import load_config

    try:
        load_config()
    except DatacrumbsError as exc:
        print(f"datacrumbs: warning: {shown(exc)}; reading without the compiled scanner "
              "(the same numbers, slower)", file=sys.stderr)


def main(args) -> int:
    if args.top < 1:
        raise UsageError(f"--top {args.top}: give a positive number of rows")
    if args.jobs is not None and args.jobs < 1:
        raise UsageError(f"--jobs {args.jobs}: give a positive number of worker processes")
    _warn_about_the_site_config()
    summary = compute(args)
    if not summary["traces"]:
        bad = summary["unreadable"]
        for entry in bad[:-1]:
            print(f"datacrumbs: warning: {entry['error']}", file=sys.stderr)
        raise DatacrumbsError(bad[-1]["error"] if bad else "no trace could be read")

    from ..report import json_out, terminal

    # Files first: a reader who pipes the tables into `head` still gets them.
    if args.json and args.json != "-":
        path = json_out.write_json(summary, args.json)
        print(f"JSON summary: {path}", file=sys.stderr)
    if args.html:
        from ..report import html

        path = json_out.write_text_atomic(args.html, html.render(summary))
        print(f"HTML report: {path}", file=sys.stderr)
    if args.json == "-":
        sys.stdout.write(json_out.dumps(summary))
        terminal.notes(summary, terminal.make_console(sys.stderr))
    elif not args.quiet:
        terminal.render(summary, terminal.make_console())
    else:
        terminal.notes(summary, terminal.make_console(sys.stderr))
    return 0
