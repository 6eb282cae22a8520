#!/usr/bin/env python3
"""How fast `datacrumbs report` summarises a big trace, and in how much memory.

Generates a synthetic trace of N events (default 10 million) with the project's
TraceWriter (or plain gzip when it is missing), then times the summary with
all cores and prints events/s and the peak RSS of the whole process tree
(sampled from /proc: this process, the forkserver and its workers).

    .venv/bin/python bench/bench_report.py                 # 10 M events
    .venv/bin/python bench/bench_report.py --events 1e6 --files 2 --dask
    .venv/bin/python bench/bench_report.py --dftracer       # beside DFTracer's dftracer_stats
    .venv/bin/python bench/bench_report.py --bpf-object build/bpf/datacrumbs.bpf.o
                                            # with the line scanner built beside that object
    .venv/bin/python bench/bench_report.py --files 1 --no-index
                                            # one trace, cut by inflating it first

With --dftracer, DFTracer's own `dftracer_stats` (from dftracer-utils) reads the same files
in the same run: once cold (it builds its gzip index, which decompresses everything) and
once from that index; its events/s is printed beside ours.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

# as every datacrumbs command runs (cli.single_threaded_blas): no OpenBLAS thread pool
# spinning in this process and in each worker it forks
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

START_US = 1_764_079_200_000_000
OPS = [("write", "POSIX"), ("read", "POSIX"), ("pwrite64", "POSIX"), ("openat", "POSIX"),
       ("fwrite", "STDIO"), ("close", "POSIX")]


def _batch(rng, n, first, pids):
    """One batch of synthetic operations as the writer's OPS_DTYPE rows."""
    from datacrumbs.trace.writer import OPS_DTYPE

    ops = np.zeros(n, dtype=OPS_DTYPE)
    ops["ts_ns"] = (START_US + (first + np.arange(n)) * 7) * 1000 + rng.integers(0, 1000, n)
    ops["dur_ns"] = (rng.lognormal(2.5, 1.0, n) * 1000).astype(np.int64) + 1
    ops["pid"] = rng.choice(pids, n)
    ops["tid"] = ops["pid"]
    ops["probe"] = rng.choice(len(OPS), n, p=[0.45, 0.3, 0.1, 0.05, 0.05, 0.05])
    sizes = 1 << rng.integers(9, 21, n)
    ops["fd"] = 3 + rng.integers(0, 8, n)
    ops["count"] = sizes
    ops["offset"] = -1
    data = ops["probe"] <= 2
    ops["size"] = np.where(data, sizes, -1)
    ops["ret"] = np.where(data, sizes, 0)
    fail = rng.random(n) < 0.001
    ops["errno"] = np.where(fail, 2, 0)
    return ops


def generate(path: Path, events: int, host: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    pids = np.arange(1000, 1032)
    files = [f"/scratch/job/rank{i}/data.{j}.h5" for i in range(32) for j in range(4)]
    try:
        from datacrumbs.trace.writer import TraceWriter
    except ImportError:
        TraceWriter = None
    batch = 200_000
    if TraceWriter is not None:
        w = TraceWriter(path, header={"job": "4242", "user": "bench", "host": host, "mode": "trace",
                                      "version": "0.1.0", "ts": START_US})
        w.set_probes([{"id": f"{c.lower()}.{n}", "kind": "syscall", "target": n, "category": c}
                      for n, c in OPS])
        for pid in pids.tolist():
            w.process_name(pid, f"ior-rank{pid - 1000}")
        for first in range(0, events, batch):
            ops = _batch(rng, min(batch, events - first), first, pids)
            w.write_ops(ops, [files[i] for i in rng.integers(0, len(files), len(ops))])
        w.close()
        return
    with open(path, "wb") as f:                       # plain gzip, one member per batch
        f.write(gzip.compress(b"[\n"))
        for first in range(0, events, batch):
            ops = _batch(rng, min(batch, events - first), first, pids)
            lines = [json.dumps({"id": first + i, "name": OPS[p][0], "cat": OPS[p][1], "pid": pid,
                                 "tid": pid, "ts": ts, "dur": d, "ph": "X",
                                 "args": {"fname": files[(first + i) % len(files)], "size": s}})
                     for i, (p, pid, ts, d, s) in enumerate(zip(
                         ops["probe"].tolist(), ops["pid"].tolist(),
                         (ops["ts_ns"] / 1000).tolist(), (ops["dur_ns"] / 1000).tolist(),
                         ops["size"].tolist()))]
            f.write(gzip.compress(("\n".join(lines) + "\n").encode(), 1))
        f.write(gzip.compress(b"]\n"))


def _tree(root: int) -> tuple[int, dict[int, float]]:
    """RSS (KiB) of ``root`` and all its descendants, and the CPU seconds (user + system)
    each of them has used so far (from /proc). The tree is walked through each task's
    ``children`` file: reading every process's stat (70 on an idle node) 20 times a second
    took 3-6% of a CPU from the report it measures (the machine has two)."""
    tick = os.sysconf("SC_CLK_TCK")
    page_kib = os.sysconf("SC_PAGE_SIZE") // 1024
    total, todo, seen = 0, [root], {}
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            seen[pid] = (int(fields[11]) + int(fields[12])) / tick
            total += int(fields[21]) * page_kib
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (OSError, IndexError, ValueError):
            continue
    return total, seen


def _tree_rss_kib(root: int) -> int:
    return _tree(root)[0]


class PeakSampler(threading.Thread):
    """Peak RSS of the process tree, and the CPU its processes used while sampled (the
    machine is shared: CPU seconds say what the report costs when wall time cannot)."""

    def __init__(self, interval=0.05):
        super().__init__(daemon=True)
        self.interval, self.peak, self._halt = interval, 0, threading.Event()
        self.start_cpu = _tree(os.getpid())[1]
        self.cpu: dict[int, float] = {}

    def run(self):
        while not self._halt.is_set():
            self._sample()
            self._halt.wait(self.interval)

    def _sample(self):
        rss, cpu = _tree(os.getpid())
        self.peak = max(self.peak, rss)
        self.cpu.update(cpu)

    def stop(self):
        self._halt.set()
        self.join()
        self._sample()
        return self.peak

    def cpu_seconds(self) -> float:
        """CPU of the tree since the start (a worker's last 50 ms before it exits are missed)."""
        return sum(c - self.start_cpu.get(p, 0.0) for p, c in self.cpu.items())


def dftracer_stats(paths: list[Path], index_dir: Path, events: int) -> None:
    """DFTracer's dftracer_stats on the same files: cold (index built) and warm."""
    import subprocess

    tool = shutil.which("dftracer_stats") or str(Path(sys.executable).with_name("dftracer_stats"))
    if not Path(tool).exists():
        print("dftracer: dftracer_stats not found (pip install dftracer-utils)")
        return
    shutil.rmtree(index_dir, ignore_errors=True)
    for label in ("cold (builds its index)", "warm (from its index)"):
        t0 = time.perf_counter()
        proc = subprocess.run([tool, "--files", *map(str, paths), "--index-dir", str(index_dir),
                               "--json", "--report", "summary", "--log-level", "error"],
                              capture_output=True, text=True)
        secs = time.perf_counter() - t0
        counted = None
        text = proc.stdout
        try:        # a JSON array: one summary object per file
            objs = json.loads(text[text.index("["):text.rindex("]") + 1])
            counted = sum(int(o.get("total_events", 0)) for o in objs if isinstance(o, dict))
        except (ValueError, TypeError):
            pass
        if proc.returncode != 0 or counted is None:
            print(f"dftracer_stats {label}: failed ({proc.returncode}): {proc.stderr.strip()[-200:]}")
            continue
        print(f"dftracer_stats {label}: {counted:,} events in {secs:.2f} s = "
              f"{counted / secs:,.0f} events/s" + ("" if counted == events else
                                                   f" (expected {events:,})"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=float, default=10e6, help="total events (default 1e7)")
    ap.add_argument("--files", type=int, default=1, help="trace files (nodes) to spread them over")
    ap.add_argument("--jobs", type=int, default=None, help="worker processes (default: all cores)")
    ap.add_argument("--dask", action="store_true", help="also time the dask backend")
    ap.add_argument("--dir", help="keep the traces in this directory (reused if present)")
    ap.add_argument("--dftracer", action="store_true",
                    help="also time DFTracer's dftracer_stats on the same files")
    ap.add_argument("--bpf-object", type=Path,
                    help="a site config whose bpf_object is this (the report's compiled line "
                         "scanner is looked up beside it; default: the site's own config)")
    ap.add_argument("--no-index", action="store_true",
                    help="cut traces by inflating them first, as before the writer's member index")
    args = ap.parse_args()
    if args.bpf_object:     # the workers read it too (through the environment)
        cfg = Path(tempfile.mkdtemp(prefix="bench-report-cfg-")) / "datacrumbs.toml"
        cfg.write_text(f'[paths]\nbpf_object = "{args.bpf_object.resolve()}"\n')
        os.environ["DATACRUMBS_CONFIG"] = str(cfg)
    events = int(args.events)
    workdir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench-report-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        paths = []
        t0 = time.perf_counter()
        for k in range(args.files):
            p = workdir / f"trace-bench-4242-node{k}.pfw.gz"
            if not p.exists():
                generate(p, events // args.files + (k < events % args.files), f"node{k}", seed=k)
            paths.append(p)
        gen_s = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in paths)
        print(f"trace: {events:,} events in {args.files} file(s), {size / 2**20:.1f} MiB compressed "
              f"({size / max(events, 1):.1f} B/event), generated in {gen_s:.1f} s")

        from datacrumbs.report import columnar
        from datacrumbs.report.merge import default_jobs, summarize_paths

        scan = columnar.scanner()
        print(f"parser: {f'compiled line scanner {scan.path}' if scan else 'pyarrow (no line scanner)'}")
        from datacrumbs.report import analysis
        fold = analysis._folder()
        print(f"fold: {f'compiled stream fold {fold.path}' if fold else 'numpy (no stream fold)'}")
        from datacrumbs.report import merge
        merge.USE_INDEX = not args.no_index
        jobs = args.jobs or default_jobs()
        runs = [("local", lambda: summarize_paths(paths, jobs=jobs))]
        if args.dask:
            from datacrumbs.report import dask_backend
            runs.append(("dask", lambda: dask_backend.summarize_paths(paths, jobs=jobs)))
        results = {}
        for name, fn in runs:
            sampler = PeakSampler()
            sampler.start()
            t0 = time.perf_counter()
            agg = fn()
            summary = agg.finalize()
            secs = time.perf_counter() - t0
            peak = sampler.stop()
            cpu = sampler.cpu_seconds()
            n = summary["totals"]["events"]
            results[name] = summary
            print(f"{name:5s}: {n:,} events in {secs:.2f} s = {n / secs:,.0f} events/s with {jobs} "
                  f"worker(s); peak RSS of the process tree {peak / 1024:.0f} MiB; CPU {cpu:.2f} s "
                  f"= {n / max(cpu, 1e-9) * jobs:,.0f} events/s on {jobs} cores' worth "
                  f"({cpu / max(n, 1) * 1e9:,.0f} ns/event); load {os.getloadavg()[0]:.1f}")
            if name == "local":
                print(f"  member index: {getattr(merge, 'INDEX_COUNTS', '(none in this version)')}")
            if n != events:
                print(f"  MISMATCH: summary counted {n:,} events, expected {events:,}")
        if args.dftracer:
            dftracer_stats(paths, workdir / "dftindex", events)
        self_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(f"max RSS of this process alone: {self_max / 1024:.0f} MiB (workers are sampled above)")
        if "dask" in results:
            same = results["dask"] == results["local"]
            print(f"dask summary identical to local: {same}")
    finally:
        if not args.dir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
