"""Trace one command on this machine and print what it did (needs root for eBPF).

The command is started stopped: it waits until every probe is attached, then
execs, so none of its early I/O is missed; it and every process it forks are
traced. The forked helper joins the trace only when it execs the command
(the kernel side marks it at sched_process_exec), so the helper's own work
(closing the pipe, waiting for release, reporting a failed exec) is never in
the trace, and the tracer itself never is. The trace and its summary go to
DIR (default: the current directory); the exit status is the command's.

Probes come from named sets (default: posix, stdio and async, checked against this
host), patterns (--uprobe, --syscall, --tracepoint, --kfunc, --usdt, as `probes
generate`) or from a probes file. A probes file may be unsigned here: signatures
protect the root daemon from other users' choices, and here root runs only
its own command. A signed file is still verified (for $SUDO_USER when run
through sudo, else for root) so an expired or tampered file is noticed.

examples:
  sudo datacrumbs trace -- dd if=/dev/zero of=/tmp/x bs=4k count=100
  sudo datacrumbs trace --set posix --mode profile -o /tmp/traces -- ./ior -w
  sudo datacrumbs trace --probes probes.json.gz -- python train.py
  sudo datacrumbs trace --set posix --uprobe './libmyio.so:myio_*' -- ./app
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from ..errors import DatacrumbsError, UsageError

HELP = "trace one command on this machine and print a summary (root)"
DEFAULT_SETS = ("posix", "stdio", "async")


def setup_parser(parser) -> None:
    parser.usage = ("datacrumbs trace [-h] [--probes FILE | --set NAME ... --uprobe LIB:GLOB "
                    "... --syscall GLOB ... --tracepoint CAT:GLOB ... --kfunc GLOB ... "
                    "--usdt LIB:PROVIDER:NAME ...] [-o DIR] "
                    "[--mode trace|profile] [--interval-ms MS] [-q] -- CMD [ARGS ...]")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--probes", metavar="FILE", help="probes file (*.json.gz), signed or not")
    src.add_argument("--set", dest="sets", metavar="NAME", action="append",
                     help="probe set to use (repeatable; default: posix, stdio and async)")
    for kind, meta, example in (("uprobe", "LIB:GLOB", "'libhdf5*.so*:H5D*'"),
                                ("syscall", "GLOB", "'read*'"),
                                ("tracepoint", "CAT:GLOB", "'sched:sched_process_*'"),
                                ("kfunc", "GLOB", "'vfs_*'")):
        parser.add_argument(f"--{kind}", dest=f"{kind}_patterns", action="append", default=[],
                            metavar=meta, help=f"also trace {kind}s by pattern, e.g. {example} "
                            "(as `probes generate`; without --set only these)")
    parser.add_argument("--usdt", metavar="LIB:PROVIDER:NAME", action="append", default=[],
                        help="USDT probes too (repeatable; LIB a path or library pattern, "
                             "PROVIDER and NAME globs); alone, no default sets")
    parser.add_argument("-o", "--output", metavar="DIR", default=".",
                        help="directory for the trace and summary (default: current)")
    parser.add_argument("--mode", choices=("trace", "profile"), default=None,
                        help="trace every event, or profile (counters and histograms only)")
    parser.add_argument("--interval-ms", type=int, default=None, metavar="MS",
                        help="profile counter interval in ms, 10 to 3600000 (default 1000)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the trace path")
    parser.add_argument("command", nargs="+", metavar="CMD",
                        help="the command and its arguments (after --)")


class _ChildExit:
    """Stop condition of the drain loop: the traced command has exited."""

    def __init__(self, pid: int):
        self.pid = pid
        self.status: int | None = None
        self.signal = "command exit"

    @property
    def requested(self) -> bool:
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid == self.pid:
                self.status = os.waitstatus_to_exitcode(status)
        return self.status is not None


def _invoker():
    """Whose trace this is: the sudo caller when there is one, else root."""
    from ..users import lookup_user

    name = os.environ.get("SUDO_USER")
    if name:
        try:
            return lookup_user(name)
        except DatacrumbsError:
            pass
    return lookup_user(os.getuid())


def _probes_from_file(path: str, user, config) -> dict:
    from ..probes.document import check_document, read_document
    from ..probes.verify import verify_probes_file

    doc = read_document(path, max_compressed=config.max_probes_file_bytes,
                        max_decompressed=config.max_probes_document_bytes)
    if "signature" in doc:
        return verify_probes_file(path, user.name, config=config)
    check_document(doc, source=path, max_probes=config.max_probes)
    logging.getLogger("datacrumbs").info("using unsigned probes file %s (allowed for "
                                         "`datacrumbs trace` only)", path)
    return doc


def _probes_from_sets(names, config, log) -> tuple[list[dict], list]:
    from ..probes.catalog import load_catalog, select_probes
    from ..probes.host_check import check_probes

    probes = select_probes(load_catalog(config), names)
    kept, dropped = check_probes(probes)
    return kept, [(d.probe, d.reason) for d in dropped]


def _with_patterns(probes: list[dict], patterns: list[dict], config) -> list[dict]:
    """The set probes plus what ``patterns`` resolve to here (signing.patterns' rules)."""
    from ..probes.catalog import load_catalog
    from ..probes.host_check import _code_address, host_info, merge_aliases
    from ..signing.patterns import resolve_here

    results = resolve_here(patterns, catalog=load_catalog(config), host=host_info(),
                           existing=probes, cap=config.max_probes)
    kept, _merged = merge_aliases(probes + [p for r in results for p in r.probes],
                                  _code_address)
    return kept


def _start_stopped(argv: list[str]) -> tuple[int, int]:
    """Fork the command; it blocks on a pipe until we write to it, then execs.

    The child is traced from its exec on (Scope.for_pids(..., at_exec=True)): what
    it does before, here, is not the command's."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: only async-signal-safe-ish work until exec
        try:
            os.close(w)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            go = os.read(r, 1)
            os.close(r)
            if go != b"g":
                os._exit(127)
            os.execvp(argv[0], argv)
        except OSError as exc:
            os.write(2, f"datacrumbs: error: cannot run {argv[0]}: {exc.strerror}\n".encode())
        os._exit(127)
    os.close(r)
    return pid, w


def main(args) -> int:
    from ..config import load_config
    from ..tracer.daemon import TraceRun, short_host, trace_access
    from ..tracer.engine import Engine
    from ..tracer.scope import Scope

    argv = list(args.command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise UsageError("no command given; usage: datacrumbs trace [options] -- CMD ARGS")
    if os.geteuid() != 0:
        raise DatacrumbsError("datacrumbs trace needs root to load eBPF programs; "
                              "run it with sudo (the command itself runs as root too)")
    log = logging.getLogger("datacrumbs")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("datacrumbs: %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.WARNING if args.quiet else logging.INFO)
    config = load_config()
    access = trace_access(config)  # the daemon's rules: private unless trace_group
    user = _invoker()
    refused_early: list = []
    patterns = [{"kind": kind, "pattern": text}
                for kind in ("uprobe", "syscall", "tracepoint", "kfunc")
                for text in dict.fromkeys(getattr(args, f"{kind}_patterns", []))]
    if args.probes:
        if patterns:
            raise UsageError("--probes FILE holds every probe; patterns (--uprobe ...) go "
                             "with --set or alone")
        doc = _probes_from_file(args.probes, user, config)
        probes = doc["probes"]
        capture = doc.get("capture") or {}
    else:
        names = args.sets or ([] if patterns or args.usdt else list(DEFAULT_SETS))
        probes, refused_early = _probes_from_sets(names, config, log) if names else ([], [])
        if patterns:
            probes = _with_patterns(probes, patterns, config)
        capture = {}
    if args.usdt:
        if args.probes:
            raise UsageError("--usdt adds to --set, not to a --probes file (generate the file "
                             "with `datacrumbs probes generate --usdt`)")
        from .probes import _local_usdt
        probes += _local_usdt(args.usdt, {p["id"] for p in probes})
    mode = args.mode or capture.get("mode", "trace")
    interval_ms = args.interval_ms if args.interval_ms is not None else \
        int(capture.get("interval_ms", 1000))
    if not 10 <= interval_ms <= 3600000:     # a probes file's bounds (probes/schema.py)
        raise UsageError(f"--interval-ms {interval_ms} must be between 10 and 3600000")
    out = Path(args.output)
    try:
        dir_fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise DatacrumbsError(f"output directory {out}: {exc.strerror}; "
                              "create it or pass another with -o") from None
    _check_writable(out, dir_fd)
    pid, go = _start_stopped(argv)
    child = _ChildExit(pid)
    pipe = {"open": True}

    def release():  # probes attached and events flowing: let the command exec
        os.write(go, b"g")
        os.close(go)
        pipe["open"] = False

    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the command
    try:
        # The credential check keeps what an ordinary job user could not ptrace out of
        # that user's trace. The command runs with our credentials (root, for a sudoer
        # who may read all of it anyway), so job_uid 0 turns the check off; run as an
        # ordinary user, it would be on.
        engine = Engine(probes, Scope.for_pids([pid], follow=True, at_exec=True), mode=mode,
                        interval_ms=interval_ms, bpf_object=config.bpf_object,
                        capture_paths=bool(capture.get("paths", True)), job_uid=os.geteuid())
        with engine:
            report = engine.attach()
            report.refused.extend(refused_early)
            if not report.attached and not engine.waits_for_libraries:
                for probe, reason in report.refused:
                    log.warning("probe %s refused: %s", probe.get("id"), reason)
                raise DatacrumbsError("no probe could be attached on this host; see the "
                                      "reasons above or choose other sets with --set")
            run = TraceRun(engine, report, run_id=str(pid), user=user, host=short_host(),
                           mode=mode, interval_ms=interval_ms,
                           capture_paths=bool(capture.get("paths", True)), dir_fd=dir_fd,
                           start=datetime.now(timezone.utc), access=access,
                           max_bytes=config.max_trace_bytes)
            t0 = time.monotonic()
            run.loop(child, release)
            # Report before detaching: removing uprobes can take seconds.
            _report(args, run, out, argv, time.monotonic() - t0)
    except BaseException:
        if child.status is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        raise
    finally:
        signal.signal(signal.SIGINT, old_int)
        os.close(dir_fd)
        if pipe["open"]:
            os.close(go)  # the command sees EOF and exits 127 without running
    status = child.status
    return status if status >= 0 else 128 - status


def _check_writable(out: Path, dir_fd: int) -> None:
    """Refuse, before the command runs, an output directory that takes no new file
    (/proc, a read-only or full-of-inodes mount): a file made and removed again."""
    try:       # a random name (O_EXCL, retried): nobody can block it by making it first
        fd, probe = tempfile.mkstemp(prefix=".datacrumbs-probe-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        os.close(dir_fd)
        raise DatacrumbsError(f"output directory {out}: cannot write in it "
                              f"({exc.strerror or exc}); pass another with -o") from None


def _report(args, run, out: Path, argv: list[str], elapsed: float) -> None:
    trace_path = out / run.trace_name
    if args.quiet:
        print(trace_path, file=sys.stderr)
        loss = loss_line(run.summary_doc)
        if loss:  # quiet is never silent about an incomplete trace
            print(f"datacrumbs: {loss}", file=sys.stderr)
    else:
        summary = out / run.summary_name
        print_summary(run.summary_doc, trace_path=trace_path,
                      summary_path=f"{summary} not written ({run.summary_error})"
                      if run.summary_error else summary,
                      command=argv, elapsed=elapsed)
    sys.stderr.flush()


def loss_line(doc: dict) -> str | None:
    """One line saying what the trace lacks (events, file names), or None when nothing."""
    parts = []
    if doc.get("events_lost"):
        parts.append(f"{doc['events_lost']:,} events lost (the ring buffer was full"
                     + ("; the totals count them" if doc.get("totals_exact") else "") + ")")
    if doc.get("names_lost"):
        parts.append(f"{doc['names_lost']:,} file names lost (those events have no file name)")
    parts += doc.get("library_warnings", [])
    return "; ".join(parts) or None


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _secs(us: float) -> str:
    """A summary time (µs, three decimals): sub-millisecond totals keep their ns."""
    if us >= 100_000:
        return f"{us / 1e6:.3f} s"
    return f"{us / 1e3:.3f} ms" if us >= 1000 else f"{us:.3f} µs"


def print_summary(doc: dict, *, trace_path, summary_path, command, elapsed: float,
                  file=None, top: int = 10) -> None:
    """The terminal view of a summary.json: operations, top files, refusals, losses."""
    from rich.table import Table
    from rich.text import Text

    from ..safetext import SafeConsole, shown

    # file names and library paths are the traced program's: no markup, no escapes
    console = SafeConsole(file=file or sys.stderr, highlight=False)
    console.print(Text.assemble(("datacrumbs", "bold"), shown(
        f": traced {' '.join(command)!r} ({doc['mode']} mode, {elapsed:.2f} s)")), soft_wrap=True)
    ops = Table(title="I/O operations", title_justify="left")
    for col in ("operation", "count", "bytes", "time", "errors"):
        ops.add_column(col, justify="left" if col == "operation" else "right")
    rows = sorted(doc["operations"].items(), key=lambda kv: -kv[1]["time_us"])
    for key, row in rows:
        ops.add_row(key, f"{row['count']:,}", _size(row["bytes"]), _secs(row["time_us"]),
                    str(row.get("errors", 0)))
    if not rows:
        ops.add_row("(no I/O seen)", "0", "0 B", "0 ms", "0")
    console.print(ops)
    files = sorted(doc.get("files", {}).items(), key=lambda kv: (-kv[1]["bytes"], -kv[1]["count"]))
    if files:
        ft = Table(title=f"Top files (of {len(files)})", title_justify="left")
        for col in ("file", "ops", "bytes", "time"):
            ft.add_column(col, justify="left" if col == "file" else "right")
        for path, row in files[:top]:
            ft.add_row(path, f"{row['count']:,}", _size(row["bytes"]), _secs(row["time_us"]))
        console.print(ft)
    for lib in doc.get("libraries", []):
        if lib.get("status") == "attached" and not lib.get("signed"):
            console.print(f"library traced: {lib['path']} (family {lib['family']}, "
                          f"{lib['functions']} functions)", soft_wrap=True)
    for line in doc.get("library_warnings", []):
        console.print(f"warning: {line}", soft_wrap=True)
    for probe in doc.get("probes_refused", []):
        console.print(f"probe refused: {probe['id']} ({probe['kind']} {probe['target']}): "
                      f"{probe['reason']}", soft_wrap=True)
    console.print(f"events: {doc['events_written']:,} written, {doc['events_lost']:,} lost"
                  + (f", {doc['names_lost']:,} without their file name (names lost)"
                     if doc.get("names_lost") else "")
                  + (f", {doc['events_not_written']:,} not written ({doc['write_error']})"
                     if doc.get("write_error") else "")
                  + ("; the totals above count the lost events (the kernel counted them)"
                     if doc.get("events_lost") and doc.get("totals_exact") else ""))
    if doc.get("totals_lost"):
        console.print(f"{doc['totals_lost']:,} lost events are missing from the totals too (the "
                      "kernel's table of processes and probes was full)", soft_wrap=True)
    shared = doc.get("shared_mappings") or []
    if shared:
        console.print(f"not counted: {len(shared)} file(s) mapped shared ({', '.join(shared[:3])}"
                      f"{', ...' if len(shared) > 3 else ''}): bytes stored to "
                      "the mapping change the file without a call", soft_wrap=True)
    if doc.get("stopped"):  # the size cap: the trace ends early, the totals above do not
        console.print(f"trace stopped early: {doc['stopped']}", soft_wrap=True)
    console.print(f"trace: {trace_path}", soft_wrap=True)  # never wrapped: copied and parsed
    console.print(f"summary: {summary_path}", soft_wrap=True)
