#!/usr/bin/env python3
"""A traced job's start on one node, from the prolog to the tracer's ready file.

The real service path, as on a node: datacrumbs installed into a temporary prefix, its
unit linked into a private systemd manager (the tests' SystemdManager: PID 1 of its own
namespaces, see docs/platform-facts), a signed probes file of the job's user (the posix
and stdio sets by default), and per job the installed prolog script
(datacrumbs_service_run.sh, which verifies the file, writes the unit's env file, starts
datacrumbs@<jobid>.service and waits for its ready file) then the epilog.

Printed per job and as medians: the prolog's wall time (what the job waits), the CPU
seconds of the prolog and its children (getrusage), the unit's CPU seconds when the prolog
returns (its cgroup's cpu.stat: the daemon and the unit's wait-ready, for any version), the
daemon's own CPU seconds to its ready file and their phases (its journal line "started
in ..."), and the epilog's wall time. CPU seconds hold on a loaded machine; wall seconds do not. Goal (issue #10): the
prolog returns within 1.5 s.

It reuses the tests' fixtures (tests/fixtures/systemd.py): install the test extras.

usage: sudo .venv/bin/python bench/bench_start.py [--jobs 5] [--sets posix,stdio]
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from bench_ready import STARTED, phases  # noqa: E402

JOB_USER = "dctest1"        # the tests' unprivileged user (created if missing)
GOAL_S = 1.5


def make_site(root: Path):
    """A site like the tests' (tests/fixtures/common.py site): world-traversable dirs."""
    from datacrumbs.config import SiteConfig, load_config, render_config

    cfg = SiteConfig(prefix=root / "prefix", run_dir=root / "run", log_dir=root / "log",
                     trace_dir=str(root / "traces" / "{user}"),
                     public_key_dir=root / "prefix/etc/datacrumbs/keys",
                     probe_sets_dir=root / "prefix/etc/datacrumbs/probe-sets",
                     bpf_object=Path(os.environ.get("DATACRUMBS_BENCH_BPF_OBJECT",
                                                    REPO / "build/bpf/datacrumbs.bpf.o")),
                     socket_path=root / "run/sign.sock", private_key_dir=root / "private",
                     policy_file=root / "prefix/etc/datacrumbs/sign-policy.toml",
                     audit_log=root / "log/sign-audit.log")
    for d in (cfg.run_dir, cfg.log_dir, cfg.public_key_dir, cfg.probe_sets_dir, root / "traces"):
        d.mkdir(parents=True, exist_ok=True)
    for d in (root, cfg.run_dir, root / "traces", cfg.prefix, cfg.prefix / "etc",
              cfg.prefix / "etc/datacrumbs", cfg.public_key_dir):
        d.chmod(0o755)
    path = cfg.prefix / "etc/datacrumbs/datacrumbs.toml"
    path.write_text(render_config(cfg))
    os.environ["DATACRUMBS_CONFIG"] = str(path)
    return load_config(path)


def probes_file(cfg, user: pwd.struct_passwd, sets: list[str], root: Path) -> Path:
    from datacrumbs.probes.catalog import load_catalog, select_probes
    from datacrumbs.probes.document import build_document, write_document
    from datacrumbs.signing.keys import KeyStore

    from datacrumbs.probes.host_check import LibraryResolver

    store = KeyStore.from_config(cfg)
    store.init()
    resolver, selected = LibraryResolver(), []
    for probe in select_probes(load_catalog(cfg), sets):
        if probe.get("kind") == "uprobe":      # as `probes generate` does: the file here
            path = resolver.resolve(probe["library"])
            if path is None:
                continue
            probe = dict(probe, library=path)
        selected.append(probe)
    doc = build_document(selected, owner_uid=user.pw_uid, owner_user=user.pw_name, sets=sets)
    home = root / "home"
    home.mkdir(mode=0o755)
    path = write_document(home / "probes.json.gz", store.sign(doc))
    os.chown(path, user.pw_uid, user.pw_gid)
    return path


def daemon_start(manager, jobid: int) -> dict[str, tuple[float, float]]:
    """The daemon's own account of its start, from the unit's journal."""
    m = STARTED.search(manager.journal(f"datacrumbs@{jobid}.service"))
    if not m:
        return {}
    return phases(m)


def unit_cpu(manager, jobid: int) -> float | None:
    """CPU seconds of the job's unit so far (its cgroup's cpu.stat: the daemon and the
    unit's wait-ready), for any daemon version."""
    for stat in manager.cgroup.rglob(f"datacrumbs@{jobid}.service/cpu.stat"):
        for line in stat.read_text().splitlines():
            if line.startswith("usage_usec "):
                return int(line.split()[1]) / 1e6
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--sets", default="posix,stdio")
    parser.add_argument("--src", type=Path,
                        help="run the prolog and the daemon from this source tree (its src/ "
                             "directory): before/after on one machine")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_start: run as root (systemd manager, eBPF)", file=sys.stderr)
        return 1
    from datacrumbs.flux.install import install
    from datacrumbs.tracer.engine import ensure_tracefs
    from fixtures.common import ensure_user
    from fixtures.systemd import CGROUP_ROOT, SEED_LINK, SystemdManager, epilog, flux_env, prolog

    ensure_tracefs()
    user = ensure_user(JOB_USER)
    root = Path(tempfile.mkdtemp(prefix="datacrumbs-bench-start-"))
    root.chmod(0o755)
    cfg = make_site(root / "site")
    probes = probes_file(cfg, user, args.sets.split(","), root)
    install(cfg.prefix, build_bpf=False)
    state = root / "systemd"
    state.mkdir()
    state.chmod(0o755)
    manager = SystemdManager(state, CGROUP_ROOT / f"datacrumbs-bench-start-{os.getpid()}")
    rows = []
    try:
        manager.boot()
        unit = cfg.prefix / "etc/datacrumbs/systemd/datacrumbs@.service"
        manager.run("ln", "-sf", str(unit), SEED_LINK, check=True)
        if args.src:
            dropin = manager.unit_dir / "datacrumbs@.service.d"
            dropin.mkdir(exist_ok=True)
            (dropin / "src.conf").write_text(
                f"[Service]\nEnvironment=PYTHONPATH={args.src.resolve()}\n")
        manager.systemctl("daemon-reload", check=True)
        print(f"traced job start, prolog to ready (sets {args.sets}, {args.jobs} jobs; "
              f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})")
        for k in range(args.jobs):
            jobid = 81000 + k
            env = flux_env(manager, cfg, str(jobid), user, probes)
            if args.src:
                env["PYTHONPATH"] = str(args.src.resolve())
            res = prolog(cfg, env)
            if res.returncode != 0 or not (cfg.run_dir / f"datacrumbs-{jobid}.ready").exists():
                raise SystemExit(f"prolog failed ({res.returncode}): {res.stderr}")
            unit = unit_cpu(manager, jobid)
            start = daemon_start(manager, jobid)
            stop = epilog(cfg, env)
            if stop.returncode != 0:
                raise SystemExit(f"epilog failed ({stop.returncode}): {stop.stderr}")
            rows.append((res.elapsed, res.cpu, start, stop.elapsed, unit))
            d_wall, d_cpu = start.get("total", (float("nan"), float("nan")))
            daemon = (f"daemon ready in {d_wall:.3f} s (CPU {d_cpu:.3f} s)" if start else
                      "daemon: no start line (an older daemon)")
            print(f"  job {jobid}: prolog {res.elapsed:.3f} s (CPU {res.cpu:.3f} s), {daemon}, "
                  f"unit CPU at ready {unit if unit is not None else float('nan'):.3f} s, "
                  f"epilog {stop.elapsed:.3f} s")
    finally:
        manager.teardown()
        shutil.rmtree(root, ignore_errors=True)
    med = statistics.median
    phases = [r[2] for r in rows if r[2]]
    print(f"median: prolog to ready {med(r[0] for r in rows):.3f} s (goal < {GOAL_S} s), "
          f"prolog CPU {med(r[1] for r in rows):.3f} s, unit CPU at ready (daemon and "
          f"wait-ready) {med(r[4] or 0.0 for r in rows):.3f} s, epilog "
          f"{med(r[3] for r in rows):.3f} s")
    if phases:
        print("  daemon, median per phase (wall s / CPU s): " + ", ".join(
            f"{name} {med(p[name][0] for p in phases):.3f}/{med(p[name][1] for p in phases):.3f}"
            for name in phases[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
