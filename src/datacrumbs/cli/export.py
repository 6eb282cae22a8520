"""Export traces as one trace for Perfetto UI (ui.perfetto.dev) or chrome://tracing.

All nodes of a job go on one timeline. Cut a slice with --since/--until
(seconds from the trace start, or absolute microseconds since the epoch),
--node and --pid. OUT ending in .gz is written gzip-compressed, anything else
as plain JSON. An export larger than 1 GiB of JSON is refused unless --force.

examples:
  datacrumbs export --perfetto job.json.gz /var/lib/datacrumbs/traces/alice/2026-11-25/
  datacrumbs export --perfetto slice.json --since 10 --until 12.5 --node node3 traces/
"""

from __future__ import annotations

import sys

from ..errors import UsageError

HELP = "export traces as one Perfetto/chrome://tracing JSON trace (slice by time, node, pid)"


def setup_parser(parser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="trace files or trace directories")
    parser.add_argument("--perfetto", required=True, metavar="OUT",
                        help="output file (.json, or .json.gz for gzip)")
    parser.add_argument("--node", action="append", metavar="HOST", help="only this node (repeatable)")
    parser.add_argument("--pid", action="append", type=int, metavar="PID", help="only this pid (repeatable)")
    parser.add_argument("--since", metavar="T", help="start: seconds from the trace start, or absolute µs")
    parser.add_argument("--until", metavar="T", help="end: seconds from the trace start, or absolute µs")
    parser.add_argument("--force", action="store_true",
                        help="replace OUT if it exists and lift the 1 GiB size limit")


def main(args) -> int:
    from ..report.export import export_perfetto, parse_time
    from ..report.terminal import human_bytes, progress_bar

    if args.pid and any(p < 0 for p in args.pid):
        raise UsageError("--pid must be a non-negative process id")
    since = parse_time(args.since, "--since") if args.since is not None else None
    until = parse_time(args.until, "--until") if args.until is not None else None
    with progress_bar("Exporting") as update:
        result = export_perfetto(args.paths, args.perfetto, nodes=args.node, since=since,
                                 until=until, pids=args.pid, force=args.force, on_progress=update)
    for warning in result.warnings:
        print(f"datacrumbs: warning: {warning}", file=sys.stderr)
    print(f"wrote {result.path}: {result.events:,} events from {len(result.nodes)} node(s) "
          f"({', '.join(result.nodes)}), {human_bytes(result.bytes)} of JSON; open it at "
          "https://ui.perfetto.dev (Open trace file) or chrome://tracing")
    return 0
