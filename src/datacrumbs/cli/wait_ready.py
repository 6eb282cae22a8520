"""Wait until the tracer of RUN_ID has written its ready file (ExecStartPost of datacrumbs@.service).

Exits 0 once ``<run_dir>/datacrumbs-<RUN_ID>.ready`` exists, 1 when the
timeout passes or the daemon (``--pid``, systemd's $MAINPID) exits first. With
``--pid`` only a ready file whose first line is that pid counts: a file left by a
SIGKILLed earlier daemon must never make a new start look ready. It replaces a
shell loop in the unit so that no user value is ever part of a shell string.

examples:
  datacrumbs wait-ready 1234 --timeout 20
  ExecStartPost=/opt/datacrumbs/bin/datacrumbs wait-ready %i --pid ${MAINPID}
"""

from __future__ import annotations

import os
import time

from ..config import load_config
from ..errors import DatacrumbsError, UsageError
from ..jobid import validate_run_id

HELP = "wait for a tracer's ready file (used by datacrumbs@.service)"
POLL_SECONDS = 0.02


def setup_parser(parser) -> None:
    parser.add_argument("run_id", help="decimal job id (the unit's instance name)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds to wait (default: ready_timeout of the site config)")
    parser.add_argument("--pid", default=None,
                        help="the daemon: only its own ready file counts, and stop waiting "
                             "if it exits first")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited: it will never write the file
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def ready_owner(path) -> int | None:
    """The pid on the ready file's first line; None if there is no file, -1 if no pid."""
    try:
        with open(path, "rb") as f:
            first = f.read(64).split(b"\n", 1)[0].strip()
    except FileNotFoundError:
        return None
    except OSError:
        return -1
    return int(first) if first.isdigit() else -1


def main(args) -> int:
    run_id = validate_run_id(args.run_id)
    cfg = load_config()
    timeout = cfg.ready_timeout if args.timeout is None else args.timeout
    if not timeout > 0:
        raise UsageError(f"--timeout {args.timeout} must be a positive number of seconds")
    pid = None
    if args.pid not in (None, ""):
        if not args.pid.isdigit():
            raise UsageError(f"--pid {args.pid!r} is not a process id")
        pid = int(args.pid)
    ready = cfg.run_dir / f"datacrumbs-{run_id}.ready"
    deadline = time.monotonic() + timeout
    while True:
        owner = ready_owner(ready)
        if owner is not None and (pid is None or owner == pid):
            return 0
        if pid is not None and not _alive(pid):
            raise DatacrumbsError(f"the tracer for job {run_id} (pid {pid}) exited before "
                                  f"writing {ready}; see its log above")
        if time.monotonic() >= deadline:
            stale = "" if owner is None else \
                f" (the {ready.name} there names pid {owner}, not {pid}: left by an earlier run)"
            raise DatacrumbsError(f"the tracer for job {run_id} did not write {ready} within "
                                  f"{timeout:g} s{stale} (ready_timeout in "
                                  f"{cfg.source or 'defaults'})")
        time.sleep(POLL_SECONDS)
