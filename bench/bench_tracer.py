#!/usr/bin/env python3
"""Cost of tracing, measured in one run: untraced vs trace mode vs profile mode.

Runs as root on a machine with eBPF. The workload is the tests' C program
(tests/workloads/daemon_writes.c): 200,000 writes of 4 KiB and 200,000 writes
of 16 bytes to a file on tmpfs, in a cgroup of its own that the real daemon
(`datacrumbs run`, started as a subprocess exactly as the unit starts it) is
scoped to. Each configuration is repeated and the medians are printed:

- floor: the same workload with a pair of EMPTY programs on the same hooks
  (raw_syscalls sys_enter/sys_exit): what the hook itself costs on this kernel,
  so the rest of the trace/profile slowdown is ours;
- drain: CPU time per event of Engine.poll() emptying a full ring buffer;
- kernel time per program run (kernel.bpf_stats_enabled during that run only);
- a paced test at 300,000 writes per second reports what was lost;
- uprobes: a probes file with 1000 uprobes on distinct functions of Debian's
  serial HDF5 library (which nothing else here calls): daemon start to ready and
  SIGINT to exit, and the engine's attach/close with uprobe_multi links against
  the per-probe path (on fewer probes: it detaches one by one).

It prints what it measured and asserts nothing about time.

usage: sudo .venv/bin/python bench/bench_tracer.py [--repeat 3] [--sustained-seconds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CGROUP_ROOT = Path("/sys/fs/cgroup/unified")
WORKLOADS = (("4 KiB writes", 200_000, 4096), ("16 B writes", 200_000, 16))
DATACRUMBS = str(Path(sys.executable).with_name("datacrumbs"))
HDF5_SONAME = "libhdf5_serial.so.103"
UPROBES = 1000
PER_PROBE_UPROBES = 20
DRAIN_EVENTS = 150_000
# Empty programs on the hooks dc_sys_enter/dc_sys_exit use: the floor.
FLOOR_BPF = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
char LICENSE[] SEC("license") = "GPL";
SEC("tp_btf/sys_enter") int floor_enter(void *ctx) { return 0; }
SEC("tp_btf/sys_exit") int floor_exit(void *ctx) { return 0; }
"""
# One program per building block of the hot path, each alone on sys_enter (--only helpers):
# what each costs above the empty program on this CPU, so the hot path's figure can be
# read as a sum of them. Every program runs for every system call of the node.
HELPERS_BPF = r"""
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
char LICENSE[] SEC("license") = "GPL";
struct st { __u64 a[40]; };
struct { __uint(type, BPF_MAP_TYPE_TASK_STORAGE); __uint(map_flags, BPF_F_NO_PREALLOC);
         __type(key, int); __type(value, struct st); } tasks SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); __uint(max_entries, 1);
         __type(key, __u32); __type(value, __u64); } pc SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_RINGBUF); __uint(max_entries, 256 << 20); } rb SEC(".maps");
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;
volatile __u64 sink;
#define FD_SLOT(t) ({ struct files_struct *f = (t)->files; struct fdtable *d = f ? f->fdt : 0; \
                      d && d->max_fds > 1 ? (__u64)d->fd + 8 : 0; })
SEC("tp_btf/sys_enter") int empty(void *ctx) { return 0; }
SEC("tp_btf/sys_enter") int current_task_btf(void *ctx) {
    sink = (__u64)bpf_get_current_task_btf(); return 0; }
SEC("tp_btf/sys_enter") int current_pid_tgid(void *ctx) {
    sink = bpf_get_current_pid_tgid(); return 0; }
SEC("tp_btf/sys_enter") int ktime_get_ns(void *ctx) { sink = bpf_ktime_get_ns(); return 0; }
SEC("tp_btf/sys_enter") int percpu_array_lookup(void *ctx) {
    __u32 z = 0; __u64 *v = bpf_map_lookup_elem(&pc, &z); if (v) (*v)++; return 0; }
SEC("tp_btf/sys_enter") int task_btf_and_storage(void *ctx) {
    struct st *s = bpf_task_storage_get(&tasks, bpf_get_current_task_btf(), 0,
                                        BPF_LOCAL_STORAGE_GET_F_CREATE);
    if (s) s->a[0]++; return 0; }
SEC("tp_btf/sys_enter") int task_btf_and_fd_probe_read(void *ctx) {
    __u64 a = FD_SLOT(bpf_get_current_task_btf()), v = 0;
    if (a) bpf_probe_read_kernel(&v, 8, (void *)a); sink = v; return 0; }
SEC("tp_btf/sys_enter") int task_btf_and_fd_direct_load(void *ctx) {
    __u64 a = FD_SLOT(bpf_get_current_task_btf());
    if (a) sink = *(__u64 *)bpf_rdonly_cast((void *)a, 0); return 0; }
SEC("tp_btf/sys_enter") int ringbuf_output_80B(void *ctx) {
    __u64 ev[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
    bpf_ringbuf_output(&rb, ev, sizeof(ev), BPF_RB_NO_WAKEUP); return 0; }
"""
HELPER_PROGS = ("empty", "current_task_btf", "current_pid_tgid", "ktime_get_ns",
                "percpu_array_lookup", "task_btf_and_storage", "task_btf_and_fd_probe_read",
                "task_btf_and_fd_direct_load", "ringbuf_output_80B")


def build_workload(dest: Path) -> Path:
    out = dest / "daemon_writes"
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    subprocess.run([cc, "-O2", "-o", str(out), str(REPO / "tests/workloads/daemon_writes.c")],
                   check=True)
    return out


def build_floor(dest: Path):
    """The empty-programs object, loaded (not attached)."""
    from datacrumbs.tracer.libbpf import BpfObject
    src, obj = dest / "floor.bpf.c", dest / "floor.bpf.o"
    src.write_text(FLOOR_BPF)
    subprocess.run([shutil.which("clang") or "clang", "-O2", "-g", "-target", "bpf",
                    "-I/usr/include/x86_64-linux-gnu", "-c", str(src), "-o", str(obj)], check=True)
    floor = BpfObject(obj)
    floor.load()
    return floor


def bench_helpers(binary: Path, cgroup: Path, dest: Path, path: Path, repeat: int) -> None:
    """BPF time per run of each HELPERS_BPF program alone on sys_enter (bpf_stats), medians
    of ``repeat`` runs of the write workload, and each one's cost above the empty one."""
    from datacrumbs.tracer.build import BTF_PATH
    from datacrumbs.tracer.libbpf import BpfObject
    src, obj_path, vmlinux = dest / "helpers.bpf.c", dest / "helpers.bpf.o", dest / "vmlinux.h"
    src.write_text(HELPERS_BPF)
    with open(vmlinux, "wb") as f:
        subprocess.run(["bpftool", "btf", "dump", "file", str(BTF_PATH), "format", "c"],
                       stdout=f, check=True)
    subprocess.run([shutil.which("clang") or "clang", "-O2", "-g", "-target", "bpf",
                    "-D__TARGET_ARCH_x86", "-I", str(dest), "-c", str(src), "-o", str(obj_path)],
                   check=True)
    obj = BpfObject(obj_path)
    obj.load()
    per_run: dict[str, list[float]] = {}
    try:
        with bpf_stats():
            for _ in range(repeat):
                for name in HELPER_PROGS:
                    link = obj.attach(name)
                    before = prog_stats(obj, (name,))
                    run_workload(binary, cgroup, path, DRAIN_EVENTS // 3, 16)
                    after = prog_stats(obj, (name,))
                    link.destroy()
                    runs = after[name][0] - before[name][0]
                    per_run.setdefault(name, []).append(
                        (after[name][1] - before[name][1]) / max(runs, 1))
    finally:
        obj.close()
    empty = statistics.median(per_run["empty"])
    print(f"  BPF time per run on sys_enter, one building block alone (bpf_stats, medians of "
          f"{repeat}; load {os.getloadavg()[0]:.1f}):")
    for name in HELPER_PROGS:
        t = statistics.median(per_run[name])
        print(f"    {name:28s} {t:6.1f} ns" + (f"  (+{t - empty:.1f})" if name != "empty" else ""))


def hdf5_library() -> str:
    from datacrumbs.probes.host_check import ldconfig_cache
    path = ldconfig_cache().get(HDF5_SONAME)
    if not path:
        raise SystemExit(f"bench_tracer: {HDF5_SONAME} not found (Debian: apt-get install "
                         "libhdf5-dev)")
    return path


def hdf5_probes(library: str, n: int) -> list[dict]:
    """n uprobes on distinct H5* functions, alphabetically."""
    from datacrumbs.tracer.engine import function_offsets
    names = sorted(name for name, off in function_offsets(library).items()
                   if name.startswith("H5") and off >= 0)
    if len(names) < n:
        raise SystemExit(f"bench_tracer: {library} has only {len(names)} H5 functions")
    return [{"id": f"hdf5.f{i:04d}", "kind": "uprobe", "target": name, "library": library,
             "category": "HDF5", "args": {}, "bytes": None} for i, name in enumerate(names[:n])]


def make_site(root: Path) -> tuple[Path, Path]:
    """An isolated site config, a key store and signed probes files (posix set in trace and
    profile mode; 1000 HDF5 uprobes) for root."""
    from datacrumbs.config import SiteConfig, render_config
    from datacrumbs.probes.catalog import load_catalog, select_probes
    from datacrumbs.probes.document import build_document, write_document
    from datacrumbs.signing.keys import KeyStore

    cfg = SiteConfig(prefix=root / "prefix", run_dir=root / "run", log_dir=root / "log",
                     trace_dir=str(root / "traces" / "{user}"), public_key_dir=root / "keys",
                     probe_sets_dir=root / "sets", private_key_dir=root / "private",
                     socket_path=root / "run/sign.sock", policy_file=root / "policy.toml",
                     audit_log=root / "log/audit.log",
                     bpf_object=Path(os.environ.get("DATACRUMBS_BENCH_BPF_OBJECT",
                                                    REPO / "build/bpf/datacrumbs.bpf.o")))
    for d in (cfg.run_dir, cfg.public_key_dir):
        d.mkdir(parents=True, exist_ok=True)
    conf = root / "datacrumbs.toml"
    conf.write_text(render_config(cfg))
    store = KeyStore.from_config(cfg)
    store.init()
    probes = {}
    for mode in ("trace", "profile"):
        doc = build_document(select_probes(load_catalog(cfg), ["posix"]), owner_uid=0,
                             owner_user="root", sets=["posix"], mode=mode)
        probes[mode] = write_document(root / f"probes-{mode}.json.gz", store.sign(doc))
    doc = build_document(hdf5_probes(hdf5_library(), UPROBES), owner_uid=0, owner_user="root",
                         sets=["hdf5"], mode="trace")
    probes["uprobes"] = write_document(root / "probes-uprobes.json.gz", store.sign(doc))
    return conf, probes


class Daemon:
    """The real daemon for one run id, scoped to a cgroup of its own named for that job
    (the daemon accepts only a cgroup whose name holds the job id): run the workload in
    ``self.cgroup``. Its log goes to a file, so a chatty daemon never blocks on a pipe."""

    def __init__(self, probes: Path, run_id: str, env: dict, run_dir: Path):
        self.ready = run_dir / f"datacrumbs-{run_id}.ready"
        self.cgroup = CGROUP_ROOT / f"datacrumbs-bench-job-{run_id}-{os.getpid()}"
        self.cgroup.mkdir()
        self.log = tempfile.TemporaryFile()
        t0 = time.monotonic()
        self.proc = subprocess.Popen([DATACRUMBS, "run", str(probes), run_id, "root"],
                                     env=dict(env, DATACRUMBS_CGROUP=str(self.cgroup)),
                                     stdout=subprocess.DEVNULL, stderr=self.log)
        while not self.ready.exists():
            if self.proc.poll() is not None:
                raise SystemExit(f"daemon failed: {self._log()}")
            time.sleep(0.005)
        self.ready_s = time.monotonic() - t0

    def _log(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def peak_rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return 0

    def stop(self) -> float:
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=120)
        took = time.monotonic() - t0
        if self.proc.returncode != 0:
            raise SystemExit(f"daemon exited {self.proc.returncode}: {self._log()}")
        self.cgroup.rmdir()  # its workloads have exited
        return took


def run_workload(binary: Path, cgroup: Path, path: Path, count: int, size: int,
                 rate: int = 0, procs: int = 1) -> float:
    """Seconds for ``count`` writes (``procs`` processes sharing count and rate: a file
    target gets one file per process)."""
    def enter():
        (cgroup / "cgroup.procs").write_text(str(os.getpid()))

    t0 = time.monotonic()
    running = []
    for k in range(procs):
        target = path if procs == 1 or str(path) == "/dev/null" else f"{path}.{k}"
        share = count // procs + (1 if k < count % procs else 0)
        argv = [str(binary), str(target), str(share), str(size)] + \
            ([str(max(rate // procs, 1))] if rate else [])
        running.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, preexec_fn=enter))
    for proc in running:
        if proc.wait() != 0:
            raise SystemExit(f"workload {proc.args} failed ({proc.returncode})")
    return time.monotonic() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sustained-seconds", type=float, default=3.0)
    parser.add_argument("--only", choices=("kernel", "helpers", "sustained", "pipeline",
                                           "capacity"),
                        help="run only that part: kernel time per program run, the cost of "
                             "each building block of the hot path (helpers), the "
                             "sustained rate and daemon CPU per event, the daemon's "
                             "per-event CPU stage by stage (no eBPF), or the daemon loop's "
                             "CPU per event on a ring filled beforehand (its capacity)")
    parser.add_argument("--rates", default="300000,500000,750000,1000000",
                        help="writes per second the sustained test paces the workload to")
    parser.add_argument("--sustained-procs", type=int, default=1,
                        help="workload processes the sustained test splits its rate over")
    parser.add_argument("--sustained-target", choices=("file", "null"), default="file",
                        help="what the sustained test's workload writes to: a file on tmpfs "
                             "(default), or /dev/null, whose cheaper writes let one core make "
                             "more than 1,000,000 traced calls a second")
    args = parser.parse_args()
    if args.only == "pipeline":
        bench_pipeline()
        return 0
    if os.geteuid() != 0:
        print("bench_tracer: run as root (eBPF)", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="datacrumbs-bench-"))
    data_dir = Path(tempfile.mkdtemp(prefix="datacrumbs-bench-", dir="/dev/shm"))
    cgroup = CGROUP_ROOT / f"datacrumbs-bench-{os.getpid()}"
    cgroup.mkdir()
    try:
        binary = build_workload(work)
        floor = build_floor(work)
        conf, probes = make_site(work / "site")
        env = dict(os.environ, DATACRUMBS_CONFIG=str(conf))
        if args.only == "helpers":
            bench_helpers(binary, cgroup, work, data_dir / "bench.dat", args.repeat)
        elif args.only == "capacity":
            for _ in range(args.repeat):
                bench_capacity(binary, cgroup, conf)
            return 0
        if args.only == "kernel":
            for _ in range(args.repeat):
                bench_kernel_time(binary, cgroup, data_dir / "bench.dat", conf, floor)
            return 0
        target = Path("/dev/null") if args.sustained_target == "null" else data_dir / "bench.dat"
        if args.only == "sustained":
            bench_sustained(binary, target, probes["trace"], env,
                            work / "site" / "run", work / "site" / "traces" / "root",
                            args.sustained_seconds, [int(r) for r in args.rates.split(",")],
                            procs=args.sustained_procs)
            return 0
        run_dir = work / "site" / "run"
        traces = work / "site" / "traces" / "root"
        results: dict[str, dict[str, list[float]]] = {}
        daemon_stats: dict[str, dict[str, list[float]]] = {}
        run_id = 1000
        for name, count, size in WORKLOADS:  # warm-up: tmpfs pages, caches, the binary
            run_workload(binary, cgroup, data_dir / "bench.dat", count, size)
        for rep in range(args.repeat):
            for config in ("untraced", "floor", "trace", "profile"):
                daemon = None
                links = [floor.attach("floor_enter"), floor.attach("floor_exit")] \
                    if config == "floor" else []
                if config in ("trace", "profile"):
                    run_id += 1
                    daemon = Daemon(probes[config], str(run_id), env, run_dir)
                times = {}
                where = daemon.cgroup if daemon else cgroup
                for name, count, size in WORKLOADS:
                    times[name] = run_workload(binary, where, data_dir / "bench.dat", count, size)
                for link in links:
                    link.destroy()
                for name, t in times.items():
                    results.setdefault(config, {}).setdefault(name, []).append(t)
                if daemon is None:
                    continue
                time.sleep(0.2 if config == "trace" else 1.2)
                rss = daemon.peak_rss_kib()
                stop_s = daemon.stop()
                stem = traces / f"trace-root-{run_id}-{_host()}"
                summary = json.loads(Path(f"{stem}.summary.json").read_text())
                size = Path(f"{stem}.pfw.gz").stat().st_size
                workload_s = sum(times.values())
                st = daemon_stats.setdefault(config, {})
                for key, value in (("ready_s", daemon.ready_s), ("stop_s", stop_s),
                                   ("rss_mib", rss / 1024),
                                   ("events", summary["events_written"]),
                                   ("lost", summary["events_lost"]),
                                   ("events_per_s", summary["events_written"] / workload_s),
                                   ("bytes_per_event",
                                    size / max(summary["events_written"], 1))):
                    st.setdefault(key, []).append(value)
        print(f"datacrumbs tracer benchmark (medians of {args.repeat}; workload in a cgroup, "
              f"file on tmpfs; {os.cpu_count()} cores)")
        for name, count, size in WORKLOADS:
            base = statistics.median(results["untraced"][name])
            print(f"  {name:13s} x{count}: untraced {base:.3f} s", end="")
            for config in ("floor", "trace", "profile"):
                t = statistics.median(results[config][name])
                print(f" | {config} {t:.3f} s (x{t / base:.2f})", end="")
            print()
            added = {c: (statistics.median(results[c][name]) - base) / count * 1e9
                     for c in ("floor", "trace", "profile")}
            print(f"  {'':13s} per write: empty-hook floor +{added['floor']:.0f} ns; trace "
                  f"+{added['trace']:.0f} ns (ours +{added['trace'] - added['floor']:.0f}); "
                  f"profile +{added['profile']:.0f} ns "
                  f"(ours +{added['profile'] - added['floor']:.0f})")
        for config in ("trace", "profile"):
            st = {k: statistics.median(v) for k, v in daemon_stats[config].items()}
            line = (f"  {config:7s} daemon: ready {st['ready_s']:.2f} s after start, exit "
                    f"{st['stop_s']:.2f} s after SIGINT, peak RSS {st['rss_mib']:.0f} MiB")
            if config == "trace":
                line += (f", {st['events']:.0f} events written ({st['events_per_s']:,.0f}/s "
                         f"during the workload), {st['lost']:.0f} lost, "
                         f"{st['bytes_per_event']:.1f} trace bytes/event")
            else:
                line += f", trace {st['bytes_per_event'] * st['events']:.0f} bytes of counters"
            print(line)
        bench_sustained(binary, target, probes["trace"], env, run_dir, traces,
                        args.sustained_seconds, [int(r) for r in args.rates.split(",")],
                        run_id=run_id, procs=args.sustained_procs)
        run_id += 100
        # sustained: 300,000 writes/s, paced by the workload itself
        rate = 300_000
        count = int(rate * args.sustained_seconds)
        run_id += 1
        daemon = Daemon(probes["trace"], str(run_id), env, run_dir)
        took = run_workload(binary, daemon.cgroup, data_dir / "bench.dat", count, 16, rate)
        time.sleep(0.2)
        daemon.stop()
        summary = json.loads(Path(traces / f"trace-root-{run_id}-{_host()}.summary.json")
                             .read_text())
        achieved = count / took
        print(f"  sustained: {count} writes paced at {rate:,}/s, achieved {achieved:,.0f}/s "
              f"traced; {summary['events_written']} events written, "
              f"{summary['events_lost']} lost")
        bench_drain(binary, cgroup, data_dir / "bench.dat", conf)
        bench_capacity(binary, cgroup, conf)
        bench_kernel_time(binary, cgroup, data_dir / "bench.dat", conf, floor)
        # 1000 uprobes through the daemon: start to ready, SIGINT to exit
        ready, stop = [], []
        for _ in range(args.repeat):
            run_id += 1
            daemon = Daemon(probes["uprobes"], str(run_id), env, run_dir)
            ready.append(daemon.ready_s)
            stop.append(daemon.stop())
        print(f"  {UPROBES} uprobes ({HDF5_SONAME}): daemon ready {statistics.median(ready):.2f} s "
              f"after start, exit {statistics.median(stop):.2f} s after SIGINT")
        bench_uprobe_paths(conf)
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(data_dir, ignore_errors=True)
        try:
            cgroup.rmdir()
        except OSError as exc:
            print(f"bench_tracer: could not remove {cgroup}: {exc}", file=sys.stderr)


def bench_pipeline(batch: int = 16384, reps: int = 10) -> None:
    """The daemon's per-event CPU after the ring buffer, stage by stage, on batches of
    write events as the engine delivers them (one process, one file, realistic times):
    conversion to trace rows (EventConverter), the summary, the JSON lines (TraceWriter)
    and the gzip member with its write; each stage's best of ``reps`` batches, and the
    whole chain timed at once (median of ``reps`` members). Lines by the compiled
    formatter (built beside the BPF object) and, for comparison, by Python f-strings."""
    import numpy as np
    from datacrumbs.config import load_config
    from datacrumbs.probes.catalog import load_catalog, select_probes
    from datacrumbs.trace import fastlines
    from datacrumbs.trace.writer import TraceWriter
    from datacrumbs.tracer.daemon import EventConverter
    from datacrumbs.tracer.engine import EVENT_DTYPE, EventBatch
    from datacrumbs.tracer.paths import FdPaths
    from datacrumbs.tracer.summary import SummaryBuilder

    config = load_config()
    probes = select_probes(load_catalog(config), ["posix"])
    rng = np.random.default_rng(1)
    ev = np.zeros(batch, EVENT_DTYPE)
    t0 = time.time_ns()
    ev["ts_ns"] = t0 + np.arange(batch) * 1000 + rng.integers(0, 999, batch)
    ev["dur_ns"] = rng.integers(300, 3000, batch)
    ev["pid"] = ev["tid"] = 4242
    ev["probe"] = next(i for i, p in enumerate(probes) if p["target"] == "write")
    ev["fd"], ev["ret"], ev["count"], ev["bytes"] = 3, 16, 16, 16
    ev["offset"] = ev["fd2"] = -1
    kinds = np.ones(batch, np.uint8)        # a regular file, as the kernel reports it
    kinds2 = np.zeros(batch, np.uint8)
    library = os.environ.get("DATACRUMBS_BENCH_LINES") or fastlines.library_path(
        os.environ.get("DATACRUMBS_BENCH_BPF_OBJECT", REPO / "build/bpf/datacrumbs.bpf.o"))
    compiled = fastlines.load(library)
    if compiled is None:
        print(f"  (no compiled line formatter at {library}: `datacrumbs build-bpf` builds it)")
    for label, lines in (("compiled", compiled), ("python", None)):
        if label == "compiled" and compiled is None:
            continue
        conv = EventConverter(probes, FdPaths(lambda pid, fd: "/dev/shm/bench.dat"), fast=lines)
        summary = SummaryBuilder(probes)
        best: dict[str, float] = {}
        whole = []
        with tempfile.TemporaryDirectory() as d:
            writer = TraceWriter(Path(d) / "t.pfw.gz", header={"host": "h", "ts": t0 // 1000},
                                 member_events=batch, lines=lines)
            writer.set_probes(probes)
            for _ in range(reps):
                records = EventBatch(events=ev.copy(), paths={}, kinds=kinds, kinds2=kinds2)
                marks = [time.process_time()]
                ops, paths, paths2 = conv.convert(records)
                marks.append(time.process_time())
                summary.add_ops(ops, paths, paths2)
                marks.append(time.process_time())
                writer.member_events = batch + 1        # format only; the flush is timed apart
                writer.write_ops(ops, paths, paths2)
                marks.append(time.process_time())
                writer.flush()
                marks.append(time.process_time())
                # the compiled path compresses a member's lines as they are made: its
                # "JSON lines" includes their gzip, "gzip+write" is the member's end
                for k, name in enumerate(("convert", "summary", "JSON lines", "gzip+write")):
                    took = (marks[k + 1] - marks[k]) / batch * 1e9
                    best[name] = min(best.get(name, took), took)
            writer.member_events = batch
            for _ in range(reps):       # the whole chain at once, as the daemon runs it
                events = [ev.copy() for _ in range(4)]
                c0 = time.process_time()
                for e in events:
                    ops, paths, paths2 = conv.convert(EventBatch(events=e, paths={},
                                                                 kinds=kinds, kinds2=kinds2))
                    summary.add_ops(ops, paths, paths2)
                    writer.write_ops(ops, paths, paths2)
                whole.append((time.process_time() - c0) / (4 * batch) * 1e9)
            writer.close()
            size = (Path(d) / "t.pfw.gz").stat().st_size / max(writer.events_written, 1)
        if label == "compiled":
            best["JSON lines + gzip"] = best.pop("JSON lines")
            best["end of member + write"] = best.pop("gzip+write")
        print("  daemon CPU per event after the ring, %s lines (best of %d batches of %d): %s;"
              " sum %.0f ns; whole chain %.0f ns (median), %.1f trace bytes/event"
              % (label, reps, batch, ", ".join(f"{k} {v:.0f} ns" for k, v in best.items()),
                 sum(best.values()), statistics.median(whole), size))


def _cpu_s(pid: int) -> float:
    """User + system CPU time of a process so far (its own threads, not children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_sustained(binary: Path, path: Path, probes: Path, env: dict, run_dir: Path,
                    traces: Path, seconds: float, rates: list[int], run_id: int = 5000,
                    procs: int = 1) -> None:
    """The real daemon in trace mode under a workload paced at each rate for ``seconds``:
    the rate it sustained, what it lost, and the daemon's whole per-event CPU (drain,
    decode, conversion, summary, JSON, gzip, write: its process CPU time over the
    workload's window, divided by the events it wrote: a lost event costs it nothing)."""
    best = 0.0
    for rate in rates:
        run_id += 1
        daemon = Daemon(probes, str(run_id), env, run_dir)
        count = int(rate * seconds)
        cpu0 = _cpu_s(daemon.proc.pid)
        took = run_workload(binary, daemon.cgroup, path, count, 16, rate, procs)
        # until the daemon has caught up: its CPU for these events, not its idle polls
        deadline = time.monotonic() + 30
        prev = -1.0
        while time.monotonic() < deadline:
            time.sleep(0.3)
            cpu = _cpu_s(daemon.proc.pid)
            if cpu - prev < 0.02:
                break
            prev = cpu
        cpu1 = _cpu_s(daemon.proc.pid)
        daemon.stop()
        summary = json.loads(Path(traces / f"trace-root-{run_id}-{_host()}.summary.json")
                             .read_text())
        events = summary["events_written"]
        lost = summary["events_lost"]
        achieved = count / took
        if not lost:
            best = max(best, achieved)
        print(f"  sustained {seconds:.0f} s at {rate:,} writes/s to {path}"
              f"{f' from {procs} processes' if procs > 1 else ''}: achieved "
              f"{achieved:,.0f}/s, "
              f"{events:,} events written, {lost:,} lost"
              f"{' (totals exact)' if lost and summary.get('totals_exact') else ''}; daemon CPU "
              f"{(cpu1 - cpu0) / max(events, 1) * 1e9:.0f} ns/event written "
              f"({(cpu1 - cpu0) / took * 100:.0f}% of a core)")
    print(f"  sustained with 0 lost: {best:,.0f} events/s (over {seconds:.0f} s)")


BPF_STATS_RUN_TIME = 0


class bpf_stats:
    """Run-time statistics on while the block runs: BPF_ENABLE_STATS gives an fd that keeps
    them on until it is closed, whatever anyone writes to kernel.bpf_stats_enabled meanwhile
    (another benchmark on a shared machine turning the sysctl off emptied our figures)."""

    def __enter__(self):
        import ctypes
        from datacrumbs.tracer import libbpf
        libbpf.lib()
        self.fd = ctypes.CDLL(libbpf.LIBBPF_SONAME, use_errno=True).bpf_enable_stats(
            BPF_STATS_RUN_TIME)
        if self.fd < 0:
            raise OSError(-self.fd, f"BPF_ENABLE_STATS: {os.strerror(-self.fd)}")
        return self

    def __exit__(self, *exc):
        os.close(self.fd)


def prog_stats(obj, names) -> dict[str, tuple[int, int]]:
    """(run_cnt, run_time_ns) of our own loaded programs, from their fds' fdinfo."""
    out = {}
    for name in names:
        info = Path(f"/proc/self/fdinfo/{obj.program_fd(name)}").read_text().splitlines()
        fields = dict(line.split(":", 1) for line in info if ":" in line)
        out[name] = (int(fields.get("run_cnt", 0)), int(fields.get("run_time_ns", 0)))
    return out


def per_run_ns(before, after) -> str:
    parts = []
    for name in after:
        runs = after[name][0] - before[name][0]
        parts.append(f"{name} {(after[name][1] - before[name][1]) / max(runs, 1):.0f} ns")
    # every system call of the node runs the programs: runs well above the workload's
    # calls mean other processes' (cheap, untraced) runs were averaged in
    return ", ".join(parts) + f" ({runs / 1000:.0f}k runs)"


def bench_kernel_time(binary: Path, cgroup: Path, path: Path, conf: Path, floor) -> None:
    """Kernel time per program run (bpf_stats, for this run only): empty programs against
    ours, in trace and profile mode. Runs count every system call of the node; the second
    line takes the other processes' runs out (per_traced_call_ns)."""
    from datacrumbs.config import load_config
    from datacrumbs.tracer.engine import Engine
    from datacrumbs.tracer.scope import Scope
    from datacrumbs.probes.catalog import load_catalog, select_probes

    cfg = load_config(conf)
    write = [p for p in select_probes(load_catalog(cfg), ["posix"]) if p["target"] == "write"]
    with bpf_stats():
        links = [floor.attach("floor_enter"), floor.attach("floor_exit")]
        before = prog_stats(floor, ("floor_enter", "floor_exit"))
        run_workload(binary, cgroup, path, DRAIN_EVENTS, 16)
        line = per_run_ns(before, prog_stats(floor, ("floor_enter", "floor_exit")))
        for link in links:
            link.destroy()
        traced = []
        for mode in ("trace", "profile"):
            with Engine(write, Scope.for_cgroup(cgroup), bpf_object=cfg.bpf_object, mode=mode,
                        ringbuf_bytes=32 << 20) as eng:
                eng.attach()
                names = ("dc_sys_enter", "dc_sys_exit")
                idle = prog_stats(eng._obj, names)
                time.sleep(OTHERS_WINDOW_S)
                before = prog_stats(eng._obj, names)
                run_workload(binary, cgroup, path, DRAIN_EVENTS, 16)
                after = prog_stats(eng._obj, names)
                line += f"; {mode}: " + per_run_ns(before, after)
                sides = [per_traced_call_ns(idle[n], before[n], after[n], DRAIN_EVENTS)
                         for n in names]
                traced.append(f"{mode} {sides[0]:.0f} + {sides[1]:.0f} = {sum(sides):.0f} ns")
    print(f"  kernel time per run (bpf_stats; includes its own clock reads): {line}")
    print(f"  per traced write, enter + exit, other processes' runs taken out (load "
          f"{os.getloadavg()[0]:.1f}): {'; '.join(traced)}")


# Other processes' system calls run the programs too (they leave early, or look up their
# task state and leave when out of scope): their cost per run is taken from a window
# without the workload just before it, and taken out of the workload's total.
OTHERS_WINDOW_S = 0.5


def per_traced_call_ns(idle, before, after, calls: int) -> float:
    """BPF time per traced call of the workload: the run time of the workload window less
    its runs beyond ``calls``, each at the per-run cost of the window before (others only).
    Without it, a loaded machine's many cheap runs make the mean look cheaper."""
    other_runs, other_ns = before[0] - idle[0], before[1] - idle[1]
    per_other = other_ns / other_runs if other_runs else 0.0
    runs, ns = after[0] - before[0], after[1] - before[1]
    return (ns - max(runs - calls, 0) * per_other) / calls


CAPACITY_EVENTS = 600_000


def bench_capacity(binary: Path, cgroup: Path, conf: Path) -> None:
    """The daemon's whole loop (TraceRun: drain, rows, summary, lines, gzip, write) on a
    ring buffer filled beforehand with no reader: its CPU per event and so the events a
    second one core of it turns into trace, apart from a workload competing for the CPU."""
    from datetime import datetime, timezone

    from datacrumbs.config import load_config
    from datacrumbs.probes.catalog import load_catalog, select_probes
    from datacrumbs.tracer.daemon import TraceRun
    from datacrumbs.tracer.engine import Engine
    from datacrumbs.tracer.scope import Scope
    from datacrumbs.users import lookup_user

    cfg = load_config(conf)
    write = [p for p in select_probes(load_catalog(cfg), ["posix"]) if p["target"] == "write"]
    out = Path(tempfile.mkdtemp(prefix="datacrumbs-capacity-"))
    dir_fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with Engine(write, Scope.for_cgroup(cgroup), bpf_object=cfg.bpf_object,
                    ringbuf_bytes=128 << 20) as eng:
            report = eng.attach()
            run = TraceRun(eng, report, run_id="1", user=lookup_user("root"), host="bench",
                           mode="trace", interval_ms=1000, capture_paths=True, dir_fd=dir_fd,
                           start=datetime.now(timezone.utc))
            run_workload(binary, cgroup, Path("/dev/null"), CAPACITY_EVENTS, 16)

            class Drained:      # stop once the ring is empty
                signal = None

                @property
                def requested(self):
                    return eng.ring_fill() == 0.0

            c0, t0 = time.thread_time(), time.monotonic()
            run.loop(Drained(), lambda: None)
            cpu, wall = time.thread_time() - c0, time.monotonic() - t0
            lost = eng.lost()
        events = run.summary_doc["events_written"]
    finally:
        os.close(dir_fd)
        shutil.rmtree(out, ignore_errors=True)
    print(f"  daemon loop on a full ring: {events:,} events in {cpu:.2f} s of CPU ({wall:.2f} s), "
          f"{cpu / max(events, 1) * 1e9:.0f} ns/event: {events / max(cpu, 1e-9):,.0f} events/s "
          f"on one core, {lost} lost")


def bench_drain(binary: Path, cgroup: Path, path: Path, conf: Path) -> None:
    """Fill a ring buffer with no reader, then time only the polls that empty it."""
    from datacrumbs.config import load_config
    from datacrumbs.tracer.engine import Engine
    from datacrumbs.tracer.scope import Scope
    from datacrumbs.probes.catalog import load_catalog, select_probes

    cfg = load_config(conf)
    write = [p for p in select_probes(load_catalog(cfg), ["posix"]) if p["target"] == "write"]
    with Engine(write, Scope.for_cgroup(cgroup), bpf_object=cfg.bpf_object,
                ringbuf_bytes=32 << 20) as eng:
        eng.attach()
        run_workload(binary, cgroup, path, DRAIN_EVENTS, 16)
        got, cpu = 0, 0.0
        while True:
            t0 = time.thread_time()
            batch = eng.poll(0)
            cpu += time.thread_time() - t0
            if batch is None:
                break
            got += len(batch)
        lost = eng.lost()
    print(f"  drain: {got} events from a full ring in {cpu * 1e3:.0f} ms of CPU, "
          f"{cpu / max(got, 1) * 1e9:.0f} ns/event, {lost} lost")


def bench_uprobe_paths(conf: Path) -> None:
    """Engine attach and close for uprobe_multi links and for the per-probe path."""
    from datacrumbs.config import load_config
    from datacrumbs.tracer.engine import Engine
    from datacrumbs.tracer.scope import Scope

    cfg = load_config(conf)
    library = hdf5_library()
    for n, multi in ((UPROBES, True), (PER_PROBE_UPROBES, True), (PER_PROBE_UPROBES, False)):
        eng = Engine(hdf5_probes(library, n), Scope.for_pids([os.getpid()]),
                     bpf_object=cfg.bpf_object, uprobe_multi=multi)
        t0 = time.monotonic()
        report = eng.attach()
        t1 = time.monotonic()
        eng.close()
        t2 = time.monotonic()
        how = next(iter(report.uprobe_links.values()), "none attached").split(":")[0]
        print(f"  engine, {n} uprobes, {how}: {len(report.attached)} attached in "
              f"{t1 - t0:.2f} s, closed in {t2 - t1:.2f} s")


def _host() -> str:
    from datacrumbs.tracer.daemon import short_host
    return short_host()


if __name__ == "__main__":
    sys.exit(main())
