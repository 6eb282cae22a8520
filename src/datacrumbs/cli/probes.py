"""Make, inspect and check probes files: what a job's tracer may attach.

A probes file names the probes (syscalls, library functions, tracepoints,
kernel functions) to trace in your jobs. `generate` picks probe sets, drops
the probes this host cannot attach (and says why), and with --sign has the
site's signing service sign it for you. Flux jobs only trace with a signed,
unexpired file that belongs to the job's user.

examples:
  datacrumbs probes list-sets
  datacrumbs probes generate --set posix --set stdio --sign -o ~/probes.json.gz
  datacrumbs probes generate --set mpiio --library /opt/mpich/lib/libmpich.so.12 --sign -o mpi.json.gz
  datacrumbs probes generate --set posix --mode profile --interval-ms 500 --sign -o prof.json.gz
  datacrumbs probes generate --uprobe 'libhdf5*.so*:H5D*' --syscall 'read*' --sign -o h5d.json.gz
  datacrumbs probes show ~/probes.json.gz
  datacrumbs probes verify ~/probes.json.gz --user alice
"""

from __future__ import annotations

import argparse
import os
import pwd
import sys
import time

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..config import load_config
from ..atomicfile import cannot_write, output_target
from ..errors import DatacrumbsError, UsageError
from ..safetext import SafeConsole, plain

HELP = "generate, show and verify signed probes files"


def setup_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="probes_command", metavar="ACTION", required=True)
    fmt = argparse.RawDescriptionHelpFormatter

    gen = sub.add_parser("generate", formatter_class=fmt, help="build a probes file from sets "
                         "and patterns",
                         description="Build a probes file from named probe sets and from "
                         "patterns over what this host has (a library's exported functions, "
                         "system calls, tracepoints, kernel functions), keeping only the probes "
                         "this host can attach. With --sign the site's signing service resolves "
                         "the patterns itself. Functions the catalog knows (H5Dwrite, read ...) "
                         "get their argument roles; any other is traced with its time and "
                         "return value. An empty match refuses the whole file.",
                         epilog="patterns (quote them, the shell would expand them):\n"
                         "  --uprobe LIB:GLOB      LIB: a library family or soname from "
                         "`ldconfig -p`,\n"
                         "                         or a path (your own file, read as you); "
                         "GLOB: its\n"
                         "                         exported functions (nm -D --defined-only)\n"
                         "  --syscall GLOB         this kernel's system calls\n"
                         "  --tracepoint CAT:GLOB  tracefs events (/sys/kernel/tracing/events)\n"
                         "  --kfunc GLOB           kernel functions (needs kprobes; refused "
                         "where the\n"
                         "                         kernel has no kprobes)\n"
                         "\nexamples:\n"
                         "  datacrumbs probes generate --set posix --set stdio --sign -o p.json.gz\n"
                         "  datacrumbs probes generate --set hdf5 --library "
                         "/opt/hdf5/lib/libhdf5.so.310 --sign -o h5.json.gz\n"
                         "  datacrumbs probes generate --uprobe 'libhdf5*.so*:H5D*' --sign "
                         "-o h5d.json.gz\n"
                         "  datacrumbs probes generate --uprobe '/home/alice/lib/libmyio.so:*' "
                         "--sign -o myio.json.gz\n"
                         "  datacrumbs probes generate --set posix --syscall 'read*' --tracepoint "
                         "'sched:sched_process_*' --sign -o k.json.gz\n"
                         "  datacrumbs probes generate --kfunc 'vfs_*' --sign -o vfs.json.gz\n"
                         "  datacrumbs probes generate --usdt '/usr/bin/python3.11:python:"
                         "function__*' --sign -o py.json.gz")
    gen.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME",
                     help="probe set to include (repeat; see `datacrumbs probes list-sets`)")
    gen.add_argument("--uprobe", dest="uprobe_patterns", action="append", default=[],
                     metavar="LIB:GLOB", help="functions of a library by pattern, e.g. "
                     "'libhdf5*.so*:H5D*' or '/home/alice/lib/libmyio.so:*' (repeat)")
    gen.add_argument("--syscall", dest="syscall_patterns", action="append", default=[],
                     metavar="GLOB", help="system calls by pattern, e.g. 'read*' (repeat)")
    gen.add_argument("--tracepoint", dest="tracepoint_patterns", action="append", default=[],
                     metavar="CAT:GLOB", help="tracepoints by pattern, e.g. 'ext4:*' or "
                     "'sched:sched_process_*' (repeat)")
    gen.add_argument("--kfunc", dest="kfunc_patterns", action="append", default=[],
                     metavar="GLOB", help="kernel functions by pattern, e.g. 'vfs_*' "
                     "(kprobes; repeat)")
    gen.add_argument("--usdt", dest="usdt", action="append", default=[],
                     metavar="LIB:PROVIDER:NAME",
                     help="USDT probes of a program or library: LIB a path, or a library "
                          "soname or file pattern (libpython*.so*); PROVIDER and NAME may "
                          "be globs, e.g. '/home/me/app:myprov:*' (repeat)")
    gen.add_argument("--library", dest="libraries", action="append", default=[], metavar="PATH",
                     help="use this library file for uprobes on the library of the same "
                          "soname or file name, or of the set's library family (e.g. "
                          "h5py's bundled libhdf5-<hash>.so for libhdf5*.so*; repeat)")
    gen.add_argument("--mode", choices=("trace", "profile"), default="trace",
                     help="trace: every call as an event; profile: counters per interval")
    gen.add_argument("--interval-ms", type=int, default=1000, metavar="N",
                     help="profile interval in milliseconds (default 1000)")
    gen.add_argument("--no-paths", dest="paths", action="store_false",
                     help="do not record file paths")
    gen.add_argument("--validity-days", type=int, default=7, metavar="N",
                     help="days the file stays valid (default 7; the site may allow fewer)")
    gen.add_argument("--sign", action="store_true",
                     help="have the site's signing service sign the file (needed for Flux jobs)")
    gen.add_argument("--socket", metavar="PATH", help="signing service socket (default from the "
                     "site configuration)")
    gen.add_argument("-o", "--output", required=True, metavar="FILE",
                     help="file to write (name ends in .json.gz)")
    gen.add_argument("--force", action="store_true", help="replace FILE if it exists")
    gen.set_defaults(_action=_generate)

    ls = sub.add_parser("list-sets", formatter_class=fmt, help="list the probe sets",
                        description="List built-in and site probe sets.",
                        epilog="example:\n  datacrumbs probes list-sets")
    ls.set_defaults(_action=_list_sets)

    show = sub.add_parser("show", formatter_class=fmt, help="print a probes file",
                          description="Print a probes file's owner, validity, key and probes, "
                          "and whether it verifies for you.",
                          epilog="example:\n  datacrumbs probes show ~/probes.json.gz")
    show.add_argument("file", metavar="FILE")
    show.set_defaults(_action=_show)

    ver = sub.add_parser("verify", formatter_class=fmt, help="check a probes file",
                         description="Check a probes file exactly as a job's tracer will: "
                         "prints `valid: ...` and exits 0, or prints why not and exits 1.",
                         epilog="examples:\n  datacrumbs probes verify ~/probes.json.gz\n"
                         "  datacrumbs probes verify /home/alice/p.json.gz --user alice")
    ver.add_argument("file", metavar="FILE")
    ver.add_argument("--user", metavar="USER", help="whose job it is for (default: you)")
    ver.set_defaults(_action=_verify)


def main(args) -> int:
    return args._action(args)


def _me() -> tuple[int, str]:
    uid = os.getuid()
    try:
        return uid, pwd.getpwuid(uid).pw_name
    except KeyError:
        raise UsageError(f"uid {uid} has no account name on this host") from None


def _generate(args) -> int:
    from ..probes.catalog import load_catalog, select_probes
    from ..probes.document import build_document, write_document
    from ..probes.host_check import _code_address, check_probes, host_info, merge_aliases

    config = load_config()
    output = os.path.abspath(args.output)
    if not output.endswith(".json.gz"):
        raise UsageError(f"output file {args.output} must end in .json.gz")
    try:
        _target, into = output_target(output)       # a pipe or a terminal is written into
    except OSError as exc:
        raise DatacrumbsError(cannot_write(output, exc)) from None
    if os.path.lexists(output) and not args.force and not into:
        raise UsageError(f"{args.output} already exists; use --force to replace it")
    if not 1 <= args.validity_days <= config.max_validity_days:
        raise UsageError(f"--validity-days {args.validity_days} must be between 1 and "
                         f"{config.max_validity_days} (the site's max_validity_days)")
    if not 10 <= args.interval_ms <= 3600000:
        raise UsageError(f"--interval-ms {args.interval_ms} must be between 10 and 3600000")
    err = SafeConsole(stderr=True)
    sets = list(dict.fromkeys(args.sets))
    patterns = [{"kind": kind, "pattern": text} for kind in ("uprobe", "syscall", "tracepoint",
                                                              "kfunc")
                for text in dict.fromkeys(getattr(args, f"{kind}_patterns"))]
    if not sets and not patterns and not args.usdt:
        raise UsageError("choose probes with --set NAME or a pattern (--uprobe, --syscall, "
                         "--tracepoint, --kfunc, --usdt); see `datacrumbs probes generate "
                         "--help`")
    if args.libraries and not sets:
        raise UsageError("--library gives a file for the library probes of the chosen sets, "
                         "and no set is chosen; name your own library in --uprobe PATH:GLOB")
    _check_libraries(args.libraries, select_probes(load_catalog(config), sets) if sets else [],
                     sets)
    if args.sign:
        # The service builds the probes from its catalog; we only name what we want.
        from ..signing.client import request_signature

        signed = request_signature(sets, libraries=args.libraries, mode=args.mode,
                                   interval_ms=args.interval_ms, paths=args.paths,
                                   validity_days=args.validity_days,
                                   socket_path=args.socket or config.socket_path,
                                   patterns=patterns, usdt=args.usdt)
        doc = signed.document
        _print_dropped(err, [(d["id"], d["reason"]) for d in signed.dropped])
        kept = doc["probes"]
    else:
        catalog = load_catalog(config)
        probes = select_probes(catalog, sets) if sets else []
        host = host_info()
        merged: list = []
        kept, dropped = check_probes(probes, libraries=args.libraries, host=host, merged=merged)
        results = []
        if patterns:
            from ..signing.patterns import resolve_here

            results = resolve_here(patterns, catalog=catalog, host=host, existing=kept,
                                   cap=config.max_probes)
            kept, more = merge_aliases(kept + [p for r in results for p in r.probes],
                                       _code_address)
            merged += more
        if args.usdt:
            kept += _local_usdt(args.usdt, {p["id"] for p in kept})
        _print_dropped(err, [(d.probe["id"], d.reason) for d in dropped])
        for alias, into in merged:
            err.print(plain(f"note: {alias['id']} ({alias['target']}) is the same function as "
                            f"{into['id']} ({into['target']}) in {into['library']}: one probe "
                            "records both names"))
        if host.tracefs is None and any(p["kind"] in ("tracepoint", "async") for p in kept):
            err.print("note: tracefs is readable only by root, so tracepoints were not checked "
                      "here; the tracer reports any that do not exist on the compute node")
        if not kept:
            raise UsageError(f"none of the {len(probes)} probes of {', '.join(sets)} can attach "
                             "on this host; nothing written")
        uid, user = _me()
        doc = build_document(kept, owner_uid=uid, owner_user=user, sets=sets, mode=args.mode,
                             interval_ms=args.interval_ms, paths=args.paths,
                             validity_days=args.validity_days,
                             patterns=[{"kind": r.kind, "pattern": r.pattern,
                                        "probes": len(r.probes)} for r in results])
    user = doc["owner"]["user"]
    try:
        write_document(output, doc)
    except OSError as exc:
        raise DatacrumbsError(cannot_write(output, exc)) from None
    state = f"signed by key {doc['key_id']}" if "signature" in doc else \
        "NOT signed (Flux jobs need --sign)"
    print(f"wrote {output}: {len(kept)} probes for {user}, {state}, "
          f"valid until {_local(doc['expires_at'])}")
    return 0


def _local_usdt(patterns: list[str], taken: set) -> list[dict]:
    """The probes of --usdt patterns, read here as the signing service would."""
    from ..signing.client import SigningError, open_usdt_pattern
    from ..signing.resolve import RequestRefused, usdt_probes

    sent, fds = [], []
    try:
        for pattern in dict.fromkeys(patterns):
            try:
                pattern, fd = open_usdt_pattern(pattern)
            except SigningError as exc:
                raise UsageError(str(exc)) from None
            sent.append(pattern)
            if fd is not None:
                fds.append(fd)
        try:
            return usdt_probes(sent, fds, taken)[0]
        except RequestRefused as exc:
            raise UsageError(str(exc)) from None
    finally:
        for fd in fds:
            os.close(fd)


def _check_libraries(libraries, probes, sets) -> None:
    """Each --library must be an ELF shared library that some library probe of the sets
    names (by soname or file name): anything else would be silently unused."""
    from elftools.common.exceptions import ELFError

    from ..probes.host_check import elf_info

    from ..probes.host_check import in_family

    wanted = {os.path.basename(p["library"]) for p in probes if p.get("library")}
    families = sorted({p["family"] for p in probes if p.get("family")})
    for library in libraries:
        if not os.path.isfile(library):
            raise UsageError(f"--library {library}: no such file")
        try:
            info = elf_info(os.path.realpath(library))
        except (ELFError, OSError, ValueError, EOFError):
            info = None
        if info is None or not info.functions:
            raise UsageError(f"--library {library} is not an ELF shared library; give the path "
                             "of a .so file")
        names = {os.path.basename(library), os.path.basename(os.path.realpath(library))}
        if info.soname:
            names.add(info.soname)
        if not names & wanted and not any(in_family(f, n, info.soname) for f in families
                                          for n in names):
            raise UsageError(f"--library {library} ({info.soname or 'no soname'}) is not used by "
                             f"any probe of {', '.join(sets)}, whose libraries are "
                             f"{', '.join(sorted(wanted)) or 'none'}"
                             + (f" (families {', '.join(families)})" if families else ""))


def _print_dropped(err: Console, dropped: list[tuple[str, str]]) -> None:
    if not dropped:
        return
    table = Table(title=f"{len(dropped)} probe(s) dropped: not attachable on this host",
                  title_justify="left")
    table.add_column("probe", no_wrap=True)
    table.add_column("reason")
    for probe_id, reason in dropped:
        table.add_row(plain(probe_id), plain(reason))
    err.print(table)


def _list_sets(args) -> int:
    from ..probes.catalog import load_catalog

    table = Table(title="probe sets")
    table.add_column("set", no_wrap=True)
    table.add_column("probes", justify="right")
    table.add_column("from")
    table.add_column("description")
    for name, probe_set in sorted(load_catalog(load_config()).items()):
        table.add_row(plain(name), str(len(probe_set.probes)),
                      plain("built-in" if probe_set.builtin else probe_set.source),
                      plain(probe_set.description))
    SafeConsole().print(table)
    return 0


def _local(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(ts))


def _relative(ts: float, now: float) -> str:
    delta = round(ts - now)
    if delta == 0:
        return "now"
    span = abs(delta)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if span >= size or unit == "s":
            text = f"{span // size}{unit}"
            break
    return f"in {text}" if delta >= 0 else f"{text} ago"


def _show(args) -> int:
    from ..probes import ProbesFileError
    from ..probes.document import check_document, read_document
    from ..probes.verify import verify_document

    config = load_config()
    doc = read_document(args.file, max_compressed=config.max_probes_file_bytes,
                        max_decompressed=config.max_probes_document_bytes)
    check_document(doc, source=args.file, max_probes=config.max_probes)
    uid, user = _me()
    try:
        verify_document(doc, uid, config=config, source=args.file)
        status = plain(f"valid for {user}", "green")
    except ProbesFileError as exc:
        status = plain(f"not valid for {user}: {exc.problem}", "red")
    now = time.time()
    out = SafeConsole()
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("file", plain(os.path.abspath(args.file)))
    head.add_row("owner", f"{doc['owner']['user']} (uid {doc['owner']['uid']})")
    head.add_row("issued", f"{_local(doc['issued_at'])} ({_relative(doc['issued_at'], now)})")
    head.add_row("expires", f"{_local(doc['expires_at'])} ({_relative(doc['expires_at'], now)})")
    head.add_row("host", plain(doc["host"]))
    head.add_row("sets", ", ".join(doc["sets"]) or "-")
    if doc.get("patterns"):
        # what the user asked for by pattern, and how many probes each became
        flags = {"uprobe": "--uprobe", "syscall": "--syscall", "tracepoint": "--tracepoint",
                 "kfunc": "--kfunc", "usdt": "--usdt"}
        head.add_row("patterns", Text("\n").join(
            plain(f"{flags.get(p['kind'], p['kind'])} {p['pattern']!r}: {p['probes']} probes")
            for p in doc["patterns"]))
    capture = doc["capture"]
    mode = capture["mode"] + (f", every {capture['interval_ms']} ms"
                              if capture["mode"] == "profile" else "")
    head.add_row("mode", mode + ("" if capture["paths"] else ", no paths"))
    head.add_row("key", doc.get("key_id", "(unsigned)"))
    head.add_row("status", status)
    out.print(head)
    table = Table(title=f"{len(doc['probes'])} probes", title_justify="left")
    # aliases: other names of the same function, merged into this probe (fopen64 for fopen)
    aliases = any(p.get("aliases") for p in doc["probes"])
    # functions typed by their debug info: the arguments their events carry
    typed = any("scalars" in p or "returns" in p for p in doc["probes"])
    shown = [c for c in ("id", "kind", "target", "aliases", "library", "category", "bytes",
                         "arguments") if (c != "aliases" or aliases) and (c != "arguments" or typed)]
    for column in shown:
        table.add_column(column, no_wrap=column in ("id", "target"))
    for p in doc["probes"]:
        # the family: the tracer also attaches this probe to matching libraries the job maps
        library = p.get("library", "") + (f" (family {p['family']})" if p.get("family") else "")
        values = {"id": p["id"], "kind": p["kind"], "target": p["target"],
                  "aliases": ", ".join(p.get("aliases", ())) or "-", "library": library,
                  "category": p["category"], "bytes": p["bytes"] or "-",
                  "arguments": _arguments(p)}
        table.add_row(*(plain(values[c]) for c in shown))
    out.print(table)
    return 0


def _arguments(probe: dict) -> str:
    """``fd int32, buf pointer -> int32``: a typed probe's recorded arguments and result."""
    if "scalars" not in probe and "returns" not in probe:
        return "-"
    def kind(t: dict) -> str:
        return "pointer" if t.get("pointer") else \
            f"{'int' if t['signed'] else 'uint'}{8 * t['size']}"
    args = ", ".join(f"{a['name']} {kind(a)}" for a in probe.get("scalars", ())) or "none"
    returns = probe.get("returns")
    return args + (f" -> {kind(returns)}" if returns else "")


def _verify(args) -> int:
    from ..probes.verify import verify_probes_file
    from ..users import lookup_user

    user = lookup_user(args.user) if args.user else lookup_user(os.getuid())
    doc = verify_probes_file(args.file, user.name, config=load_config())
    print(f"valid: {args.file} for {user.name} (uid {user.uid}), {len(doc['probes'])} probes, "
          f"key {doc['key_id']}, expires {_local(doc['expires_at'])}")
    sys.stdout.flush()
    return 0
