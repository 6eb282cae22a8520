"""Flux epilog entry point (``datacrumbs_service_stop.sh``): stop tracing one job.

Needs only the job id: it must work when the probes file was deleted or
changed, when the metadata cannot be read, when nothing was started, and when
it runs twice. ``systemctl stop`` sends KillSignal=SIGINT and waits while the
daemon flushes the trace (bounded by TimeoutStopSec = stop_timeout). An
epilog failure is only logged: it never fails the job.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

from ..config import CONFIG_ENV, SiteConfig, load_config
from ..errors import DatacrumbsError
from . import envfile, jobinfo, systemctl
from .prolog import log, setup_logging

# systemd itself SIGKILLs after TimeoutStopSec; give it that long plus this margin.
STOP_MARGIN = 10.0


@dataclass
class EpilogResult:
    jobid: str | None
    stopped: bool            # the unit is inactive now
    message: str | None = None


def run_epilog(environ=None, cfg: SiteConfig | None = None) -> EpilogResult:
    """Stop ``datacrumbs@<jobid>.service``, remove its env file and probes copy; never raises."""
    environ = os.environ if environ is None else environ
    started = time.monotonic()
    try:
        cfg = cfg or load_config(environ.get(CONFIG_ENV))
        setup_logging(cfg)
        jobid = jobinfo.resolve_jobid(environ)
    except DatacrumbsError as exc:
        setup_logging(None)
        log.error("epilog: %s", exc)
        return EpilogResult(None, False, str(exc))
    message = None
    stopped = False
    try:
        had_env = envfile.env_path(cfg.run_dir, jobid).exists() or \
            envfile.probes_copy_path(cfg.run_dir, jobid).exists()
        before = systemctl.state(jobid)
        if before in ("inactive", "unknown") and not had_env:
            stopped = True  # nothing was started here (or a second epilog run)
        else:
            systemctl.stop(jobid, timeout=cfg.stop_timeout + STOP_MARGIN)
            stopped = systemctl.wait_inactive(jobid, timeout=5.0)
            systemctl.reset_failed(jobid)
            log.info("job %s: tracer stopped (was %s) in %.2f s", jobid, before,
                     time.monotonic() - started)
    except Exception as exc:  # noqa: BLE001 - an epilog only logs
        message = str(exc) if isinstance(exc, DatacrumbsError) else \
            f"internal error {type(exc).__name__}: {exc}"
        log.error("job %s: epilog: %s", jobid, message)
    try:
        envfile.remove_env_file(cfg.run_dir, jobid)
        envfile.remove_probes_copy(cfg.run_dir, jobid)
    except OSError as exc:
        message = message or f"cannot remove the env file or the probes copy: {exc}"
        log.error("job %s: %s", jobid, message)
    return EpilogResult(jobid, stopped, message)


def main(argv: list[str] | None = None) -> int:
    """``--config FILE``: the installed script passes its prefix's datacrumbs.toml."""
    environ = dict(os.environ)
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) == 2 and args[0] == "--config":
        environ[CONFIG_ENV] = args[1]
    run_epilog(environ)
    return 0


if __name__ == "__main__":
    sys.exit(main())
