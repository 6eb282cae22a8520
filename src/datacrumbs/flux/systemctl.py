"""Argv-only, time-bounded calls to ``systemctl`` for ``datacrumbs@<jobid>.service``.

The unit name is built here and only from a job id that passes
``jobid.validate_run_id`` (decimal digits), so nothing a user controls can
name another unit or reach a shell. Every call has a timeout: a prolog that
hangs on systemd drains the node.
"""

from __future__ import annotations

import subprocess
import time

from ..errors import DatacrumbsError
from ..jobid import validate_run_id

SYSTEMCTL = "systemctl"
UNIT_TEMPLATE = "datacrumbs@{}.service"


class SystemctlError(DatacrumbsError):
    """systemctl failed, timed out, or is missing."""


def unit_name(jobid: str) -> str:
    """``datacrumbs@<decimal jobid>.service``; anything else raises InvalidJobId."""
    return UNIT_TEMPLATE.format(validate_run_id(jobid))


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    argv = [SYSTEMCTL, *args]
    try:
        return subprocess.run(argv, capture_output=True, text=True, errors="replace",
                              timeout=max(timeout, 0.1), stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise SystemctlError(
            "systemctl is not on PATH; datacrumbs needs systemd on the compute node "
            "(see docs/admin-guide.md)") from None
    except subprocess.TimeoutExpired:
        raise SystemctlError(
            f"`{' '.join(argv)}` did not finish within {timeout:.1f} s") from None


_NO_SYSTEMD = ("System has not been booted with systemd", "Failed to connect to bus")


def _check(proc: subprocess.CompletedProcess, what: str) -> None:
    if proc.returncode != 0:
        text = (proc.stderr or proc.stdout).strip()
        if any(sign in text for sign in _NO_SYSTEMD):
            raise SystemctlError(
                "systemd is not running on this machine, and the tracer runs as the systemd "
                "unit datacrumbs@<jobid>.service: use a node booted with systemd, or trace one "
                "command with `sudo datacrumbs trace -- CMD`")
        detail = text.splitlines()
        raise SystemctlError(f"{what} failed (exit {proc.returncode})"
                             + (f": {detail[-1]}" if detail else ""))


def start(jobid: str, *, timeout: float) -> None:
    """Start the unit and wait for its start job (ExecStartPost waits for the ready file)."""
    unit = unit_name(jobid)
    _check(_run(["start", unit], timeout), f"systemctl start {unit}")


def stop(jobid: str, *, timeout: float) -> None:
    """Stop the unit and wait until systemd reports the stop job done."""
    unit = unit_name(jobid)
    _check(_run(["stop", unit], timeout), f"systemctl stop {unit}")


def kill(jobid: str, *, signal: str = "SIGKILL", timeout: float = 5.0) -> None:
    unit = unit_name(jobid)
    if signal not in ("SIGKILL", "SIGTERM", "SIGINT"):
        raise ValueError(f"unsupported signal {signal!r}")
    _check(_run(["kill", f"--signal={signal}", unit], timeout), f"systemctl kill {unit}")


def reset_failed(jobid: str, *, timeout: float = 5.0) -> None:
    """Forget a failed state so the same job id can start again; harmless if not failed."""
    _run(["reset-failed", unit_name(jobid)], timeout)


def state(jobid: str, *, timeout: float = 5.0) -> str:
    """``active``, ``inactive``, ``failed``, ``activating``, ``deactivating`` ..."""
    proc = _run(["is-active", unit_name(jobid)], timeout)
    out = proc.stdout.strip()
    if not out:
        _check(proc, f"systemctl is-active {unit_name(jobid)}")
    return out or "unknown"


def wait_inactive(jobid: str, *, timeout: float, interval: float = 0.05) -> bool:
    """Poll until the unit is neither active nor on its way; False on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        now_state = state(jobid, timeout=max(1.0, min(5.0, deadline - time.monotonic())))
        if now_state in ("inactive", "failed", "unknown"):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
