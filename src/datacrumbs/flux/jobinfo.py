"""Who and what a prolog/epilog is about: job id, job user, datacrumbs metadata.

Flux gives the prolog ``FLUX_JOB_ID`` (F58, e.g. ``ƒ2kP8DU5B``) and
``FLUX_JOB_USERID`` (a uid), never a user name. The job's datacrumbs settings
are ``attributes.system.datacrumbs`` of its jobspec (written by the CLI
plugin), read with ``flux job info <id> jobspec``; ``DATACRUMBS_JOB_METADATA``
(the same dict as JSON) replaces that call for the service wrapper and tests.

There is deliberately no fallback to ``$USER`` when ``FLUX_JOB_USERID`` is
missing: under the IMP, ``USER`` is not reliably the job's user, and tracing
the wrong account is worse than not tracing.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..errors import DatacrumbsError
from ..jobid import normalize_jobid
from ..users import User, lookup_user

METADATA_ENV = "DATACRUMBS_JOB_METADATA"
MAX_METADATA_BYTES = 1 << 20
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class JobInfoError(DatacrumbsError, ValueError):
    """The job's id, user or metadata cannot be used."""


@dataclass(frozen=True)
class Settings:
    """The validated ``attributes.system.datacrumbs`` of one job."""

    probe_file: Path
    probe_digest: str  # "sha256:<64 hex>"


def resolve_jobid(environ) -> str:
    raw = environ.get("FLUX_JOB_ID")
    if not raw:
        raise JobInfoError("FLUX_JOB_ID is not set; run this from a Flux prolog/epilog "
                           "or use datacrumbs_service_wrapper")
    return normalize_jobid(raw)


def resolve_user(environ) -> User:
    raw = environ.get("FLUX_JOB_USERID")
    if raw is None or not raw.isdigit() or not raw.isascii():
        raise JobInfoError(f"FLUX_JOB_USERID={raw!r} is not a uid; the prolog needs the "
                           "job's uid from Flux")
    return lookup_user(int(raw))


class InstanceAccessError(JobInfoError):
    """The instance does not let root read the job: a site configuration problem (for
    the admin, in flux dmesg), not the user's; it must never fail a job or drain a node."""


def _jobspec_from_flux(jobid: str, timeout: float) -> dict:
    argv = ["flux", "job", "info", jobid, "jobspec"]
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=max(timeout, 0.1),
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise JobInfoError(f"cannot read job {jobid}'s metadata: the flux command is not on "
                           f"PATH (or set {METADATA_ENV})") from None
    except subprocess.TimeoutExpired:
        raise JobInfoError(f"`flux job info {jobid} jobspec` did not answer within "
                           f"{timeout:.1f} s") from None
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        if "access is restricted" in err:
            raise InstanceAccessError(
                f"the datacrumbs prolog (root) may not read job {jobid} in this Flux instance "
                f"(`flux job info`: {err[-200:]}); set `allow-root-owner = true` in the "
                "instance's [access] configuration and `flux config reload`, or no job can be "
                "traced (jobs run untraced meanwhile)")
        raise JobInfoError(f"`flux job info {jobid} jobspec` failed: {err or proc.returncode}")
    return _loads(proc.stdout, f"the jobspec of job {jobid}")


def _loads(data: bytes | str, what: str):
    if len(data) > MAX_METADATA_BYTES:
        raise JobInfoError(f"{what} is larger than {MAX_METADATA_BYTES} bytes")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise JobInfoError(f"{what} is not valid JSON: {exc}") from None


def read_metadata(jobid: str, environ, *, timeout: float = 10.0) -> dict | None:
    """The job's datacrumbs dict, or None when the job did not ask for tracing.

    ``DATACRUMBS_JOB_METADATA`` may hold the dict itself or, as in the seed,
    ``{"datacrumbs": {...}}``.
    """
    override = environ.get(METADATA_ENV)
    if override is not None:
        meta = _loads(override, METADATA_ENV)
        if isinstance(meta, dict) and set(meta) == {"datacrumbs"}:
            meta = meta["datacrumbs"]
    else:
        spec = _jobspec_from_flux(jobid, timeout)
        meta = ((spec.get("attributes") or {}).get("system") or {}).get("datacrumbs") \
            if isinstance(spec, dict) else None
    if meta is None:
        return None
    if not isinstance(meta, dict):
        raise JobInfoError(f"datacrumbs metadata of job {jobid} is not an object: {meta!r:.80}")
    return meta


def parse_settings(jobid: str, meta: dict | None) -> Settings | None:
    """None unless ``enable`` is ``"yes"``; otherwise the validated probe file and digest."""
    if not meta or meta.get("enable") not in ("yes", True):
        return None
    probe_file = meta.get("probe_file")
    if probe_file is None:
        raise JobInfoError("datacrumbs is enabled but no probe_file was given; "
                           "resubmit with --datacrumbs-probe-file /abs/path")
    if not isinstance(probe_file, str) or not probe_file.startswith("/") or "\0" in probe_file:
        raise JobInfoError(f"datacrumbs probe_file {probe_file!r} is not an "
                           "absolute path; resubmit with --datacrumbs-probe-file /abs/path")
    digest = meta.get("probe_digest")
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise JobInfoError("datacrumbs metadata has no valid probe_digest "
                           "(sha256:<hex>); resubmit with the site's datacrumbs Flux plugin")
    return Settings(Path(probe_file), digest)
