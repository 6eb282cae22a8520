#!/usr/bin/env python3
"""Time to ready against the number of probes, measured in one run.

The real daemon (`datacrumbs run`, as the unit starts it) is started with signed probes
files of 100, 1,000 and 10,000 probes, each given as the prolog leaves it (its verified
copy in the run directory and that copy's digest; `--no-early`: the signed file itself,
which the daemon verifies whole), and timed from its start to its ready file (what a
job's prolog waits for), then from SIGINT to its exit. Probes are distinct functions (one
probe per address) of libraries nothing here calls, so attaching is all that is measured:
the posix syscall set, file system and block tracepoints, every exported function of
Debian's serial HDF5 (2,592 addresses), MPICH and HDF5's high-level library, then LLVM's
library to reach 10,000. Beside the wall time, the daemon's own account of its start
(its log line "started in ...", resource.getrusage of the daemon) gives CPU seconds per
phase: imports (interpreter start, imports, configuration), verify (the signed probes
file), bpf load (the kernel's verifier), attach, and the rest up to the ready file. CPU
seconds hold on a loaded machine, where wall time does not. The engine's own split (BPF
object load and verify, attach) is printed for the largest file.

The original DataCrumbs publishes attach times of 0.45 ms / 24 ms / 33 ms / 79 ms, the last
for its 8,723 functions; they are printed beside ours for reference (not the same machine).
Runs as root; asserts nothing about time.

usage: sudo .venv/bin/python bench/bench_ready.py [--repeat 3] [--counts 100,1000,10000]
                                                  [--split auto|0|1] [--src DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_tracer import Daemon, hdf5_library, make_site  # noqa: E402

LIBRARIES = ("libhdf5_serial.so.103", "libmpich.so.12", "libhdf5_serial_hl.so.100",
             "libLLVM-14.so.1")
TRACEPOINT_GROUPS = ("ext4", "xfs", "writeback", "block", "iomap", "jbd2", "filemap")
ORIGINAL = "0.45 ms / 24 ms / 33 ms / 79 ms (the last: 8,723 functions)"
STARTED = re.compile(r"started in ([0-9.]+) s wall, ([0-9.]+) s CPU \(phase wall/CPU s: (.*)\)")


def start_phases(daemon, timeout: float = 5.0) -> dict[str, tuple[float, float]]:
    """The daemon's own account of its start: {phase: (wall s, CPU s)}, "total" too."""
    deadline = time.monotonic() + timeout
    while True:
        m = STARTED.search(daemon._log())
        if m or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    if not m:
        raise SystemExit("bench_ready: the daemon logged no 'started in' line")
    return phases(m)


def phases(m: re.Match) -> dict[str, tuple[float, float]]:
    """{phase: (wall s, CPU s)} of a STARTED match, "total" too."""
    out = {"total": (float(m.group(1)), float(m.group(2)))}
    parts, _, early = m.group(3).partition("; in a thread meanwhile: ")
    if early:       # the BPF load began before the imports (a prolog's verified copy)
        parts += ", " + early.replace("bpf load", "bpf load in a thread")
    for part in parts.split(", "):
        name, _, ws = part.rpartition(" ")
        wall, cpu = ws.split("/")
        out[name] = (float(wall), float(cpu))
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process from /proc (10 ms ticks): the daemon's CPU at its
    ready file, for a daemon that does not account for its start (--src of an older one)."""
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    fields = stat[stat.rindex(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def median_phases(runs: list[dict]) -> dict[str, tuple[float, float]]:
    return {name: (statistics.median(r[name][0] for r in runs),
                   statistics.median(r[name][1] for r in runs)) for name in runs[0]}


def uprobes(limit: int) -> list[dict]:
    """Up to ``limit`` uprobes on distinct addresses of LIBRARIES, in that order."""
    from datacrumbs.probes.host_check import ldconfig_cache
    from datacrumbs.tracer.specs import SYMBOL_RE
    from datacrumbs.tracer.symbols import function_offsets

    cache, out = ldconfig_cache(), []
    for soname in LIBRARIES:
        path = cache.get(soname) or (hdf5_library() if soname.startswith("libhdf5_serial.")
                                     else None)
        if not path:
            print(f"  ({soname} not installed: skipped)")
            continue
        seen: set[int] = set()
        for name, off in sorted(function_offsets(path).items()):
            if off < 0 or off in seen or "@" in name or not SYMBOL_RE.match(name):
                continue
            seen.add(off)
            out.append({"id": f"bench.u{len(out):05d}", "kind": "uprobe", "target": name,
                        "library": path, "category": soname.split(".so")[0][3:].upper().replace("-", "_"),
                        "args": {}, "bytes": None})
            if len(out) >= limit:
                return out
    return out


def tracepoints(limit: int) -> list[dict]:
    from datacrumbs.tracer.engine import TRACEFS, ensure_tracefs

    ensure_tracefs()
    out = []
    for group in TRACEPOINT_GROUPS:
        d = TRACEFS / "events" / group
        if not d.is_dir():
            continue
        for tp in sorted(p.name for p in d.iterdir() if (p / "format").exists()):
            out.append({"id": f"bench.t{len(out):05d}", "kind": "tracepoint",
                        "target": f"{group}:{tp}", "category": "KERNEL", "args": {},
                        "bytes": None})
            if len(out) >= limit:
                return out
    return out


def probe_list(n: int, syscalls: list[dict]) -> list[dict]:
    """n probes: the syscall set, then tracepoints (up to a tenth), then uprobes."""
    probes = syscalls[:n]
    probes += tracepoints(min(n // 10, n - len(probes)))
    probes += uprobes(n - len(probes))
    if len(probes) < n:
        raise SystemExit(f"bench_ready: only {len(probes)} distinct probes found for {n}")
    return probes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--counts", default="100,1000,10000")
    parser.add_argument("--no-early", action="store_true",
                        help="give the daemon the signed file itself, not the prolog's "
                             "verified copy and its digest: it loads its BPF object only "
                             "after its imports and checks the signature itself")
    parser.add_argument("--split", choices=("auto", "0", "1"), default="auto",
                        help="DATACRUMBS_SPLIT_LOAD for the daemon: verify the BPF programs "
                             "in two halves at once never (0), always (1), or when the load "
                             "average leaves a CPU to spare (auto, the default)")
    parser.add_argument("--src", type=Path,
                        help="run the daemon from this source tree (its src/ directory) "
                             "instead of the installed one: before/after on one machine")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]

    from datacrumbs.config import load_config
    from datacrumbs.flux.envfile import write_probes_copy
    from datacrumbs.probes.catalog import load_catalog, select_probes
    from datacrumbs.probes.document import build_document, write_document
    from datacrumbs.signing.keys import KeyStore

    with tempfile.TemporaryDirectory(prefix="datacrumbs-bench-ready-") as tmp:
        root = Path(tmp)
        conf, _ = make_site(root)
        cfg = load_config(conf)
        store = KeyStore.from_config(cfg)
        syscalls = select_probes(load_catalog(cfg), ["posix"])
        env = {"DATACRUMBS_CONFIG": str(conf), "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"}
        if args.src:
            env["PYTHONPATH"] = str(args.src.resolve())
        if args.split != "auto":
            env["DATACRUMBS_SPLIT_LOAD"] = args.split
        print(f"datacrumbs time to ready by probe count (medians of {args.repeat}; 2 cores)")
        for n in counts:
            probes = probe_list(n, syscalls)
            kinds = {k: sum(p["kind"] == k for p in probes)
                     for k in ("syscall", "tracepoint", "uprobe")}
            doc = build_document(probes, owner_uid=0, owner_user="root", sets=["bench"],
                                 mode="trace")
            path = write_document(root / f"probes-{n}.json.gz", store.sign(doc))
            # as under the prolog: the digest of the verified copy
            run_env = env if args.no_early else dict(
                env, DATACRUMBS_PROBE_SHA256=hashlib.sha256(path.read_bytes()).hexdigest())
            ready, stop, phases, cpu = [], [], [], []
            for i in range(args.repeat):
                run_id = f"{7000 + n + i}"
                # as under the prolog: its verified copy, root's, 0600, in the run directory
                copy = path if args.no_early else write_probes_copy(cfg.run_dir, run_id,
                                                                    path.read_bytes())
                daemon = Daemon(copy, run_id, run_env, cfg.run_dir)
                ready.append(daemon.ready_s)
                cpu.append(cpu_seconds(daemon.proc.pid))
                if not args.src:
                    phases.append(start_phases(daemon))
                stop.append(daemon.stop())
            print(f"  {n:>6,} probes ({kinds['syscall']} syscalls, {kinds['tracepoint']} "
                  f"tracepoints, {kinds['uprobe']} uprobes): ready {statistics.median(ready):.3f}"
                  f" s after start ({statistics.median(cpu):.2f} s CPU), exit "
                  f"{statistics.median(stop):.3f} s after SIGINT")
            if phases:
                med = median_phases(phases)
                print(f"           the daemon's account: {med['total'][1]:.3f} s CPU; " +
                      ", ".join(f"{name} {w:.3f} s / {c:.3f} s CPU"
                                for name, (w, c) in med.items() if name != "total"))
            if n == max(counts) and not args.src:
                split(probes, cfg.bpf_object)
        print(f"  original DataCrumbs, published: {ORIGINAL}")
    return 0


def split(probes: list[dict], bpf_object: Path) -> None:
    """The engine's own phases for one probes list: import, load+verify+attach, close."""
    t0 = time.perf_counter()
    from datacrumbs.tracer.engine import Engine
    from datacrumbs.tracer.scope import Scope

    t1 = time.perf_counter()
    eng = Engine(probes, Scope.for_user(65534), bpf_object=bpf_object)
    eng.attach()
    t2 = time.perf_counter()
    eng.close()
    t3 = time.perf_counter()
    print(f"    engine in this process: imports {t1 - t0:.3f} s (already warm), load and "
          f"attach {t2 - t1:.3f} s, detach {t3 - t2:.3f} s")


if __name__ == "__main__":
    sys.exit(main())
