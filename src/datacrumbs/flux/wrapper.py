"""datacrumbs_service_wrapper start|stop JOBID USER PROBE_FILE: the prolog without Flux.

Fabricates what Flux would give the prolog and epilog (FLUX_JOB_ID,
FLUX_JOB_USERID, and the job metadata with the probes file's SHA-256 in
DATACRUMBS_JOB_METADATA) and runs the very same code path, so an admin can
test a node's setup before wiring up the real prolog.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..config import CONFIG_ENV, load_config
from ..errors import DatacrumbsError
from ..jobid import normalize_jobid
from ..users import lookup_user
from . import systemctl
from .epilog import run_epilog
from .jobinfo import METADATA_ENV
from .prolog import SCOPE_ENV, file_digest, run_prolog

PROG = "datacrumbs_service_wrapper"
PROLOG = {"start": "prolog", "stop": "epilog"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "exit status: 0 when tracing started (start) or the unit is stopped (stop),\n"
            "1 with one line saying why otherwise.\n\n"
            "examples:\n"
            f"  sudo {PROG} start 1 alice /home/alice/probes.json.gz\n"
            "  systemctl status datacrumbs@1.service\n"
            f"  sudo {PROG} stop 1 alice /home/alice/probes.json.gz\n"
            "job ids may be given in any Flux form (1234, \u01922kP8DU5B, f2kP8DU5B, 0x...)."),
    )
    parser.add_argument("action", choices=("start", "stop"),
                        help="start: run the prolog path; stop: run the epilog path")
    parser.add_argument("jobid", help="Flux job id (any form Flux prints)")
    parser.add_argument("user", help="the job's user (name or uid)")
    parser.add_argument("probe_file", type=Path, help="signed probes file (*.json.gz)")
    parser.add_argument("--job-shell", action="store_true",
                        help="start: trace only the job shell's process tree, as the prolog "
                             "does under Flux (a process exec'd as `flux-shell JOBID`, or the "
                             "site's [service] job_shell); default: every process of USER, "
                             "as there is no job shell without Flux")
    parser.add_argument("--config", type=Path, default=None,
                        help=f"site config (default ${CONFIG_ENV} or "
                             "/opt/datacrumbs/etc/datacrumbs/datacrumbs.toml)")
    return parser


def fabricate_environ(action: str, jobid: str, user: str, probe_file: Path,
                      job_shell: bool = False) -> dict:
    """The environment a Flux prolog/epilog would see for this job (``job_shell``: leave
    the scope to the site's job_shell, as under Flux; else every process of the user)."""
    account = lookup_user(user)
    env = dict(os.environ, FLUX_JOB_ID=normalize_jobid(jobid), FLUX_JOB_USERID=str(account.uid))
    if not job_shell:
        env[SCOPE_ENV] = "user"
    if action == "start":
        path = Path(os.path.abspath(probe_file))
        cfg = load_config()
        env[METADATA_ENV] = json.dumps({
            "enable": "yes", "probe_file": str(path),
            "probe_digest": file_digest(path, cfg.max_probes_file_bytes)})
    return env


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.config is not None:
        os.environ[CONFIG_ENV] = str(args.config.absolute())
    if os.geteuid() != 0:
        # the prolog writes root's run directory and starts a system unit: an ordinary
        # user would get a PermissionError deep inside it
        print(f"{PROG}: error: {args.action} runs the Flux {PROLOG[args.action]} as Flux "
              f"would, as root (it {'starts' if args.action == 'start' else 'stops'} the system "
              f"unit datacrumbs@<jobid>.service); run it with sudo", file=sys.stderr)
        return 1
    try:
        env = fabricate_environ(args.action, args.jobid, args.user, args.probe_file,
                                args.job_shell)
    except DatacrumbsError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    # a failing prolog or epilog has said why on stderr already: one line, not two
    if args.action == "start":
        result = run_prolog(env)
        if not result.started:
            if not result.message:
                print(f"{PROG}: error: tracing was not enabled", file=sys.stderr)
            return 1
        print(f"{systemctl.unit_name(result.jobid)} is active and ready")
        return 0
    result = run_epilog(env)
    if result.message or not result.stopped:
        if not result.message:
            print(f"{PROG}: error: the unit did not stop", file=sys.stderr)
        return 1
    print(f"{systemctl.unit_name(result.jobid)} is stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
