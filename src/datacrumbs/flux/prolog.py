"""Flux prolog entry point (``datacrumbs_service_run.sh``): start tracing one job.

Runs as root on every node of the job (``per-rank = true``). It must never
hang and never fail a job because tracing is unavailable: every step is bounded
by ``SiteConfig.prolog_timeout`` and any failure is reported to the user as a
non-fatal job exception, cleaned up (unit stopped, env file removed) and
answered with exit 0 so the job runs untraced. Only a site that sets
``fail_job_on_error = true`` gets a fatal exception and exit 1.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import CONFIG_ENV, SiteConfig, default_config_path, load_config
from ..errors import DatacrumbsError
from ..jobid import f58plain
from . import envfile, jobinfo, systemctl

log = logging.getLogger("datacrumbs.flux")
LOG_NAME = "flux-perilog.log"


class PrologError(DatacrumbsError):
    """Tracing could not be started for this job (the message goes to the user)."""


@dataclass
class PrologResult:
    jobid: str | None
    started: bool
    message: str | None = None  # why tracing did not start (None when not requested)
    fatal: bool = False         # fail_job_on_error: the prolog exits 1

    @property
    def exit_code(self) -> int:
        return 1 if (self.message and self.fatal) else 0


class _LogFile(logging.FileHandler):
    """Opened (and its directory made) on the first message: untraced jobs leave nothing.

    A log that cannot be written must not disturb the prolog: stderr still has it.
    """

    def __init__(self, path: Path):
        super().__init__(path, delay=True)

    def _open(self):
        Path(self.baseFilename).parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        return super()._open()

    def emit(self, record) -> None:
        try:
            super().emit(record)
        except OSError:
            pass

    def handleError(self, record) -> None:
        pass


def setup_logging(cfg: SiteConfig | None) -> None:
    """stderr (Flux keeps it) plus ``<log_dir>/flux-perilog.log`` when writable."""
    log.setLevel(logging.INFO)
    log.propagate = False
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    err = logging.StreamHandler(sys.stderr)
    err.setFormatter(logging.Formatter("datacrumbs: %(message)s"))
    log.addHandler(err)
    if cfg is not None:
        fh = _LogFile(cfg.log_dir / LOG_NAME)
        fh.setFormatter(logging.Formatter("%(asctime)s %(process)d %(message)s"))
        log.addHandler(fh)


def file_digest(path: Path, limit: int) -> str:
    """``sha256:<hex>`` of a regular file, read without following a final symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise PrologError(f"probes file {path} does not exist; generate and sign a new one "
                          "with `datacrumbs probes generate --sign`") from None
    except OSError as exc:
        raise PrologError(f"cannot open probes file {path}: {exc.strerror} (it must be a "
                          "regular file, not a symlink)") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise PrologError(f"probes file {path} is not a regular file")
        if info.st_size > limit:
            raise PrologError(f"probes file {path} is larger than {limit} bytes")
        sha = hashlib.sha256()
        total = 0
        while chunk := os.read(fd, 1 << 16):
            total += len(chunk)
            if total > limit:
                raise PrologError(f"probes file {path} is larger than {limit} bytes")
            sha.update(chunk)
        return "sha256:" + sha.hexdigest()
    finally:
        os.close(fd)


def notify_user(jobid: str, message: str, *, fatal: bool, timeout: float) -> None:
    """``flux job raise``: severity 1 is a warning in the eventlog, 0 fails the job.

    Skipped (logged only) where ``flux`` is absent, e.g. in tests and the wrapper.
    """
    argv = ["flux", "job", "raise", f"--severity={0 if fatal else 1}", "--type=datacrumbs",
            jobid, "--", message]
    try:
        subprocess.run(argv, capture_output=True, timeout=max(timeout, 0.5),
                       stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        log.info("job %s: flux is not on PATH; the message above is only in this log", jobid)
    except (subprocess.TimeoutExpired, OSError) as exc:
        log.info("job %s: flux job raise failed (%s)", jobid, exc)


def ready_path(cfg: SiteConfig, jobid: str) -> Path:
    return cfg.run_dir / f"datacrumbs-{jobid}.ready"


def _config_path(cfg: SiteConfig) -> Path:
    return Path(cfg.source) if cfg.source else default_config_path(cfg.prefix)


def _start(jobid: str, user, settings: jobinfo.Settings, cfg: SiteConfig, environ,
           deadline: float, reserve: float) -> None:
    # imported here: jobs without tracing never pay for jsonschema/cryptography
    from ..probes.verify import verify_probes_file

    digest = file_digest(settings.probe_file, cfg.max_probes_file_bytes)
    if digest != settings.probe_digest:
        raise PrologError(f"probes file {settings.probe_file} changed after the job was "
                          "submitted (its SHA-256 differs); resubmit the job")
    verify_probes_file(settings.probe_file, user.name, config=cfg)
    values = {
        "DATACRUMBS_JOBID": jobid,
        "DATACRUMBS_USER": user.name,
        "DATACRUMBS_PROBE_FILE": str(settings.probe_file),
        "DATACRUMBS_CONFIG": str(_config_path(cfg)),
    }
    if environ.get("DATACRUMBS_CGROUP"):
        values["DATACRUMBS_CGROUP"] = environ["DATACRUMBS_CGROUP"]
    elif cfg.sdexec_scope:
        # the job's unit does not exist yet; the tracer waits for it, in the kernel
        values["DATACRUMBS_CGROUP_NAME"] = f"-{f58plain(int(jobid))}.service"
    envfile.write_env_file(cfg.run_dir, jobid, values)
    systemctl.reset_failed(jobid, timeout=min(5.0, max(deadline - time.monotonic(), 0.5)))
    budget = deadline - time.monotonic() - reserve
    if budget <= 0:
        raise PrologError(f"prolog_timeout ({cfg.prolog_timeout} s) was used up before the "
                          "tracer could start")
    try:
        systemctl.start(jobid, timeout=budget)
    except systemctl.SystemctlError as exc:
        raise PrologError(f"the tracer did not start: {exc}; see `journalctl -u "
                          f"{systemctl.unit_name(jobid)}` on this node") from None
    now_state = systemctl.state(jobid)
    if now_state != "active" or not ready_path(cfg, jobid).exists():
        raise PrologError(f"the tracer exited right after starting ({now_state}); see "
                          f"`journalctl -u {systemctl.unit_name(jobid)}` on this node")


def _cleanup(jobid: str, cfg: SiteConfig, timeout: float) -> None:
    """Leave nothing behind: no running unit, no failed state, no env file."""
    try:
        systemctl.stop(jobid, timeout=timeout)
    except DatacrumbsError as exc:
        log.info("job %s: stop after failure: %s; killing the unit", jobid, exc)
        try:
            systemctl.kill(jobid, signal="SIGKILL", timeout=1.0)
            systemctl.wait_inactive(jobid, timeout=1.0)
        except DatacrumbsError as exc2:
            log.info("job %s: kill after failure: %s", jobid, exc2)
    try:
        systemctl.reset_failed(jobid, timeout=1.0)
    except DatacrumbsError:
        pass
    envfile.remove_env_file(cfg.run_dir, jobid)


def run_prolog(environ=None, cfg: SiteConfig | None = None) -> PrologResult:
    """Start ``datacrumbs@<jobid>.service`` if the job asked for it; never raises."""
    environ = os.environ if environ is None else environ
    started = time.monotonic()
    try:
        cfg = cfg or load_config(environ.get(CONFIG_ENV))
    except DatacrumbsError as exc:
        setup_logging(None)
        log.error("prolog: %s; job not traced", exc)
        return PrologResult(None, False, str(exc))
    setup_logging(cfg)
    deadline = started + cfg.prolog_timeout
    reserve = min(5.0, cfg.prolog_timeout / 3)
    try:
        jobid = jobinfo.resolve_jobid(environ)
    except DatacrumbsError as exc:
        log.error("prolog: %s; job not traced", exc)
        return PrologResult(None, False, str(exc), cfg.fail_job_on_error)
    may_need_cleanup = False
    try:
        meta = jobinfo.read_metadata(jobid, environ,
                                     timeout=min(10.0, deadline - time.monotonic() - reserve))
        settings = jobinfo.parse_settings(jobid, meta)
        if settings is None:
            return PrologResult(jobid, False)
        user = jobinfo.resolve_user(environ)
        log.info("job %s: starting tracer for %s with %s", jobid, user.name, settings.probe_file)
        may_need_cleanup = True
        _start(jobid, user, settings, cfg, environ, deadline, reserve)
    except Exception as exc:  # noqa: BLE001 - a prolog must not fail the job by accident
        message = str(exc) if isinstance(exc, DatacrumbsError) else \
            f"internal error {type(exc).__name__}: {exc}"
        text = f"datacrumbs: tracing disabled for this job: {message}"
        log.error("job %s: tracing disabled for this job: %s", jobid, message)
        if may_need_cleanup:
            left = max(deadline - time.monotonic(), 1.0)
            _cleanup(jobid, cfg, timeout=max(left * 0.6, 1.0))
        notify_user(jobid, text, fatal=cfg.fail_job_on_error,
                    timeout=min(5.0, max(deadline - time.monotonic(), 0.5)))
        return PrologResult(jobid, False, message, cfg.fail_job_on_error)
    log.info("job %s: tracer ready in %.2f s", jobid, time.monotonic() - started)
    return PrologResult(jobid, True)


def main(argv: list[str] | None = None) -> int:
    """``--config FILE``: the installed script passes its prefix's datacrumbs.toml."""
    environ = dict(os.environ)
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) == 2 and args[0] == "--config":
        environ[CONFIG_ENV] = args[1]
    return run_prolog(environ).exit_code


if __name__ == "__main__":
    sys.exit(main())
