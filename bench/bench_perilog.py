#!/usr/bin/env python3
"""What the datacrumbs prolog and epilog cost a job that did not ask for tracing.

Installs datacrumbs into a temporary prefix, puts a stand-in `flux` on PATH
that prints a jobspec without datacrumbs (as `flux job info ID jobspec` would),
and times, in the same run:

- the floor: the stand-in `flux` alone;
- the fast path: the installed prolog + epilog scripts as Flux runs them;
- the full path: the same scripts forced through Python (metadata given
  directly, config named), what every job paid before the fast path.

A real `flux job info` costs more than the stand-in (a broker round trip): add
it to the fast path's figure. Prints medians over --runs runs.

    .venv/bin/python bench/bench_perilog.py
    .venv/bin/python bench/bench_perilog.py --runs 50
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from datacrumbs.flux.install import install  # noqa: E402


def timed(argv, env) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, timeout=120)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed: {proc.stderr.decode(errors='replace')}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dc-bench-perilog-") as tmp:
        tmp = Path(tmp)
        prefix, run_dir = tmp / "prefix", tmp / "run"
        run_dir.mkdir()
        config = prefix / "etc/datacrumbs/datacrumbs.toml"
        config.parent.mkdir(parents=True)
        config.write_text(f'[paths]\nrun_dir = "{run_dir}"\nlog_dir = "{tmp / "log"}"\n')
        install(prefix, build_bpf=False)
        bindir = tmp / "bin"
        bindir.mkdir()
        jobspec = tmp / "jobspec.json"
        jobspec.write_text('{"version": 1, "tasks": [{"command": ["hostname"]}], '
                           '"attributes": {"system": {"duration": 0}}}')
        flux = bindir / "flux"
        flux.write_text(f"#!/bin/sh\nexec cat {jobspec}\n")
        flux.chmod(0o755)
        env = {"PATH": f"{bindir}:/usr/sbin:/usr/bin:/sbin:/bin", "FLUX_JOB_ID": "\u01922kP8DU5B",
               "FLUX_JOB_USERID": str(os.getuid()), "HOME": "/root", "USER": "root"}
        prolog = str(prefix / "sbin/datacrumbs_service_run.sh")
        epilog = str(prefix / "sbin/datacrumbs_service_stop.sh")
        # the full path: Python decides (no systemd here: the epilog's systemctl call fails
        # fast and is only logged, as on a node where nothing ran)
        full_env = {**env, "DATACRUMBS_JOB_METADATA": "{}", "DATACRUMBS_CONFIG": str(config)}
        floor, fast, full = [], [], []
        for _ in range(args.runs):
            floor.append(timed([str(flux), "job", "info", "x", "jobspec"], env))
            fast.append(timed([prolog], env) + timed([epilog], env))
            full.append(timed([prolog], full_env) + timed([epilog], full_env))
    ms = {name: statistics.median(v) * 1000 for name, v in
          (("floor", floor), ("fast", fast), ("full", full))}
    print(f"untraced job, prolog + epilog per node (median of {args.runs}):")
    print(f"  stand-in `flux job info` alone : {ms['floor']:7.2f} ms")
    print(f"  fast path (shell)              : {ms['fast']:7.2f} ms   goal: < 20 ms")
    print(f"  full path (Python)             : {ms['full']:7.2f} ms")
    print(f"  saved per job and node         : {ms['full'] - ms['fast']:7.2f} ms "
          f"(x{ms['full'] / ms['fast']:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
