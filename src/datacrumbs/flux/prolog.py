"""Flux prolog entry point (``datacrumbs_service_run.sh``): start tracing one job.

Runs as root on every node of the job (``per-rank = true``). It must never
hang and never fail a job because tracing is unavailable: every step is bounded
by ``SiteConfig.prolog_timeout`` and any failure is reported to the user as a
non-fatal job exception, cleaned up (unit stopped, env file removed) and
answered with exit 0 so the job runs untraced. Only a site that sets
``fail_job_on_error = true`` gets a fatal exception and exit 1.

Root acts only on what the job's user could see herself: the probes file is
read by a child running with her credentials (asuser.py), so messages never
reveal whether a root-only path exists or what it holds, and the submitted
digest is compared only with bytes she could read. Those very bytes are
verified and published as a root-only copy that the unit's daemon reads (and
checks against DATACRUMBS_PROBE_SHA256): swapping the user's file later
changes nothing. Everything that depends on the user's input runs in a forked
worker that is killed at the bound, even if it is stuck in C code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import select
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import CONFIG_ENV, SiteConfig, default_config_path, load_config
from ..errors import DatacrumbsError
from ..jobid import f58plain
from . import asuser, envfile, jobinfo, systemctl

log = logging.getLogger("datacrumbs.flux")
LOG_NAME = "flux-perilog.log"
# "user" in the prolog's environment: trace every process of the job's user, not the job
# shell's tree (datacrumbs_service_wrapper sets it: without Flux there is no job shell).
SCOPE_ENV = "DATACRUMBS_SCOPE"


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
    """Warnings and errors to stderr, everything to ``<log_dir>/flux-perilog.log``.

    Flux logs a perilog's stderr to `flux dmesg` at error level, so normal
    messages ("starting tracer", "tracer ready") go only to the log file.
    """
    log.setLevel(logging.INFO)
    log.propagate = False
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    err = logging.StreamHandler(sys.stderr)
    err.setFormatter(logging.Formatter("datacrumbs: %(message)s"))
    err.setLevel(logging.WARNING)
    log.addHandler(err)
    if cfg is not None:
        fh = _LogFile(cfg.log_dir / LOG_NAME)
        fh.setFormatter(logging.Formatter("%(asctime)s %(process)d %(message)s"))
        log.addHandler(fh)


def file_digest(path: Path, limit: int) -> str:
    """``sha256:<hex>`` of a regular file, read without following a final symlink.

    For the service wrapper, which an administrator runs to fake Flux's
    metadata; the prolog itself only reads the file as the job's user.
    """
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


def _no_step(what: str) -> None:
    pass


def _start(jobid: str, user, settings: jobinfo.Settings, cfg: SiteConfig, environ,
           deadline: float, reserve: float, step=_no_step) -> None:
    """Read the file as the user, check it, publish the verified copy, start the unit.

    ``step(what)`` names each stage before it runs (the supervisor's message if
    the bound is reached there).
    """
    shown = _shown(settings.probe_file)
    reading = f"reading probes file {shown} as user {user.name}"
    step(reading)
    try:
        data = asuser.read_as_user(settings.probe_file, user, limit=cfg.max_probes_file_bytes,
                                   timeout=deadline - reserve - time.monotonic())
    except asuser.UserReadTimeout:
        raise PrologError(bound_reached(cfg, reading)) from None
    sha = hashlib.sha256(data).hexdigest()
    # only now, with bytes the user could read herself, may a digest be compared
    if f"sha256:{sha}" != settings.probe_digest:
        raise PrologError(f"probes file {shown} changed after the job was "
                          "submitted (its SHA-256 differs); resubmit the job")
    step(f"verifying probes file {shown}")
    # imported here: jobs without tracing never pay for jsonschema/cryptography
    from ..probes.document import decode_document
    from ..probes.verify import verify_document

    doc = decode_document(data, source=settings.probe_file,
                          max_decompressed=cfg.max_probes_document_bytes)
    verify_document(doc, user.name, config=cfg, source=settings.probe_file)
    step("writing the verified copy of the probes file")
    # the daemon reads this copy (and checks its digest), never the user's path again
    copy = envfile.write_probes_copy(cfg.run_dir, jobid, data)
    values = {
        "DATACRUMBS_JOBID": jobid,
        "DATACRUMBS_USER": user.name,
        "DATACRUMBS_PROBE_FILE": str(copy),
        "DATACRUMBS_PROBE_SHA256": sha,
        "DATACRUMBS_PROBE_SOURCE": str(settings.probe_file),
        "DATACRUMBS_CONFIG": str(_config_path(cfg)),
    }
    if environ.get("DATACRUMBS_CGROUP"):
        # the daemon's own check, before the env file names it: only this job's cgroup
        from ..tracer.scope import cgroup_from_env
        cgroup_from_env(environ, jobid)
        values["DATACRUMBS_CGROUP"] = environ["DATACRUMBS_CGROUP"]
    elif cfg.sdexec_scope:
        # the job's unit does not exist yet; the tracer waits for it, in the kernel
        values["DATACRUMBS_CGROUP_NAME"] = f"-{f58plain(int(jobid))}.service"
    elif cfg.job_shell and environ.get(SCOPE_ENV) != "user":
        # the job's shell is not running yet either: the kernel notices its exec
        values["DATACRUMBS_JOB_SHELL"] = cfg.job_shell
    envfile.write_env_file(cfg.run_dir, jobid, values)
    step(f"starting {systemctl.unit_name(jobid)}")
    systemctl.reset_failed(jobid, timeout=min(5.0, max(deadline - time.monotonic(), 0.5)))
    budget = deadline - time.monotonic() - reserve
    if budget <= 0:
        raise PrologError(bound_reached(cfg, f"starting {systemctl.unit_name(jobid)}"))
    envfile.remove_failure(cfg.run_dir, jobid)
    try:
        systemctl.start(jobid, timeout=budget)
    except systemctl.SystemctlError as exc:
        raise PrologError(_start_failure(cfg, jobid, f"the tracer did not start: {exc}")) \
            from None
    now_state = systemctl.state(jobid)
    if now_state != "active" or not ready_path(cfg, jobid).exists():
        raise PrologError(_start_failure(cfg, jobid, f"the tracer exited right after starting "
                                         f"({now_state})"))


def _start_failure(cfg: SiteConfig, jobid: str, fallback: str) -> str:
    """The daemon's own reason when it left one, else systemd's view: users cannot run
    journalctl on compute nodes, so the cause must be in the message itself."""
    reason = envfile.read_failure(cfg.run_dir, jobid)
    envfile.remove_failure(cfg.run_dir, jobid)
    if reason:
        return f"the tracer did not start: {reason}"
    return (f"{fallback}; the admin finds the tracer's log with `journalctl -u "
            f"{systemctl.unit_name(jobid)}` on this node")


def bound_reached(cfg: SiteConfig, doing: str) -> str:
    return f"the prolog's bound of {cfg.prolog_timeout:g} s was reached while {doing}"


def _shown(path) -> str:
    text = str(path)
    return text if text.isprintable() else repr(text)


def _supervised(jobid: str, settings: jobinfo.Settings, cfg: SiteConfig, environ,
                deadline: float, reserve: float) -> None:
    """Run the user-dependent work (:func:`_start`) in a forked child, bounded in time.

    The bound must hold even while Python is stuck in C code (a parser, a
    libc call, an NSS lookup), where no signal handler or thread of this
    process would run. So the work runs in a child that tells this process
    each stage it enters and then its outcome; at ``deadline - reserve / 2``
    the child is SIGKILLed and the stage it was in names the reason. Raises
    PrologError with the message for the user; returns when the tracer runs.
    """
    pid, rfd = asuser.fork_child(lambda out, parent: _worker(
        out, parent, jobid, settings, cfg, environ, deadline, reserve))
    kill_at = deadline - reserve / 2
    doing, outcome, buf = "starting the tracer", None, b""
    poller = select.poll()
    poller.register(rfd, select.POLLIN)
    try:
        while outcome is None:
            left = kill_at - time.monotonic()
            if left <= 0:
                break
            if not poller.poll(max(int(left * 1000), 1)):
                continue
            chunk = os.read(rfd, 65536)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                try:
                    report = json.loads(line)
                except ValueError:
                    continue
                if "step" in report:
                    doing = str(report["step"])
                elif "outcome" in report:
                    outcome = report
    finally:
        os.close(rfd)
        status = _reap(pid, grace=1.0 if outcome is not None else 0.0)
    if outcome is None:
        if time.monotonic() >= kill_at:
            log.info("job %s: killed the prolog's worker at its bound while %s", jobid, doing)
            raise PrologError(bound_reached(cfg, doing))
        raise PrologError(f"internal error: the prolog's worker died ({status}) while {doing}")
    if outcome["outcome"] != "started":
        raise PrologError(str(outcome.get("message")))


def _worker(out: int, parent: int, jobid: str, settings, cfg: SiteConfig, environ,
            deadline: float, reserve: float) -> None:
    """The child of :func:`_supervised`: do the work, report stages and the outcome."""
    asuser.set_parent_death_signal()  # the prolog killed (e.g. by Flux): so is its worker
    if os.getppid() != parent:
        os._exit(0)

    def send(report: dict) -> None:
        try:
            os.write(out, json.dumps(report).encode() + b"\n")
        except OSError:
            pass

    try:
        send({"step": "looking up the job's user"})
        user = jobinfo.resolve_user(environ)
        log.info("job %s: starting tracer for %s with %s", jobid, user.name,
                 _shown(settings.probe_file))
        _start(jobid, user, settings, cfg, environ, deadline, reserve,
               step=lambda doing: send({"step": doing}))
        send({"outcome": "started"})
    except Exception as exc:  # noqa: BLE001 - every failure becomes the user's message
        message = str(exc) if isinstance(exc, DatacrumbsError) else \
            f"internal error {type(exc).__name__}: {exc}"
        send({"outcome": "failed", "message": message})
    finally:
        for handler in log.handlers:
            handler.flush()
        os._exit(0)


def _reap(pid: int, *, grace: float) -> str:
    """Collect the worker: let it exit on its own for ``grace`` seconds, then SIGKILL it
    (waiting at most one more second: a process stuck in the kernel must not hold us)."""
    killed = False
    end = time.monotonic() + grace
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return "gone"
        if done:
            return f"exit status {os.waitstatus_to_exitcode(status)}"
        if time.monotonic() >= end:
            if killed:
                return "still running"
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            killed, end = True, time.monotonic() + 1.0
        time.sleep(0.002)


def _cleanup(jobid: str, cfg: SiteConfig, timeout: float) -> None:
    """Leave nothing behind: no running unit, no failed state, no env file, no copy."""
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
    envfile.remove_probes_copy(cfg.run_dir, jobid)
    envfile.remove_failure(cfg.run_dir, jobid)


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
        may_need_cleanup = True
        _supervised(jobid, settings, cfg, environ, deadline, reserve)
    except jobinfo.InstanceAccessError as exc:
        # The admin's to fix, and `flux job raise` would be refused the same way: say it
        # where the admin looks (stderr is flux dmesg) and never fail the job for it.
        log.error("job %s: %s", jobid, exc)
        return PrologResult(jobid, False, str(exc), fatal=False)
    except Exception as exc:  # noqa: BLE001 - a prolog must not fail the job by accident
        message = str(exc) if isinstance(exc, DatacrumbsError) else \
            f"internal error {type(exc).__name__}: {exc}"
        if cfg.fail_job_on_error:  # the job does not run: say that, not "disabled"
            what = "tracing could not start, so the job was stopped (fail_job_on_error)"
        else:
            what = "tracing disabled for this job"
        text = f"datacrumbs: {what}: {message}"
        log.error("job %s: %s: %s", jobid, what, message)
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
