"""Trace one Flux job: the daemon that ``datacrumbs@<jobid>.service`` runs as root.

Verifies the signed probes file for USER, attaches its probes to the job's
processes (the cgroup in DATACRUMBS_CGROUP, else every process of USER),
writes <run_dir>/datacrumbs-<RUN_ID>.ready (its pid, then the trace's name) once
events flow, and traces until SIGINT, SIGTERM or any other terminating signal it
can catch (SIGHUP, SIGUSR1, ...; SIGPIPE is ignored). Then it drains, closes the
trace, writes the summary beside it (naming the signal), removes the ready file
and exits 0. Logs go to stderr (the journal).

examples:
  datacrumbs run /home/alice/probes.json.gz 1234 alice
  datacrumbs /home/alice/probes.json.gz 1234 alice     (same; the unit's form)
"""

from __future__ import annotations

import logging
import sys

HELP = "trace one job (the daemon run by datacrumbs@.service)"


def setup_parser(parser) -> None:
    parser.add_argument("probes", metavar="PROBES", help="signed probes file (*.json.gz)")
    parser.add_argument("run_id", metavar="RUN_ID", help="the job id in decimal")
    parser.add_argument("user", metavar="USER", help="the job's user")


def main(args) -> int:
    from ..errors import DatacrumbsError
    from ..tracer import preload

    # the kernel verifies the BPF programs while the daemon's modules are imported
    preload.start(args.probes, args.run_id, args.user)
    from ..tracer.daemon import run_daemon

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("datacrumbs: %(message)s"))
    root = logging.getLogger("datacrumbs")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        return run_daemon(args.probes, args.run_id, args.user)
    except DatacrumbsError as exc:
        _leave_reason(args.run_id, str(exc))
        raise


def _leave_reason(run_id: str, message: str) -> None:
    """One line for the prolog, which tells the user why tracing did not start (she
    cannot read the journal of a compute node). Only for a run the prolog started (its
    env file exists; the prolog removes the line again). Best effort: never hides the
    error."""
    from ..atomicfile import atomic_write
    from ..config import load_config
    from ..flux.envfile import env_path, failure_path

    try:
        run_dir = load_config().run_dir
        if not env_path(run_dir, run_id).exists():
            return
        atomic_write(failure_path(run_dir, run_id), message.replace("\n", " ")[:1000] + "\n",
                     mode=0o600, fsync=False)
    except Exception:  # noqa: BLE001 - a bad run id, no run dir: the journal still has it
        pass
