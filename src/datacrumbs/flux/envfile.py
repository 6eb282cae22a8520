r"""``<run_dir>/datacrumbs-<jobid>.env``: the values the unit's ExecStart receives.

systemd reads this file with ``EnvironmentFile=`` and passes each ``${VAR}``
as one argument, with no shell. Every value is written double-quoted with
``\ " $ ` `` backslash-escaped, which systemd reads back byte for byte (tested
against a real manager with spaces, quotes, ``;``, ``$(...)``, backslashes);
only what the line syntax cannot carry (newline, NUL, other control
characters) is refused. The file is written as root, 0600, by rename, so the
unit never sees a half-written file.

Beside it, ``datacrumbs-<jobid>.probes.json.gz`` is the prolog's verified copy
of the job's probes file (root, 0600): ``DATACRUMBS_PROBE_FILE`` names the copy,
``DATACRUMBS_PROBE_SHA256`` its digest (64 hex digits) and
``DATACRUMBS_PROBE_SOURCE`` the user's own path, for logs only.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from ..atomicfile import atomic_write
from ..errors import DatacrumbsError
from ..jobid import validate_run_id

KEYS = ("DATACRUMBS_JOBID", "DATACRUMBS_USER", "DATACRUMBS_PROBE_FILE", "DATACRUMBS_CONFIG",
        "DATACRUMBS_CGROUP", "DATACRUMBS_CGROUP_NAME", "DATACRUMBS_JOB_SHELL",
        "DATACRUMBS_PROBE_SHA256",
        "DATACRUMBS_PROBE_SOURCE")
REQUIRED = KEYS[:4]
PATH_KEYS = ("DATACRUMBS_PROBE_FILE", "DATACRUMBS_CONFIG", "DATACRUMBS_CGROUP",
             "DATACRUMBS_PROBE_SOURCE")
_FORBIDDEN = {"\n": "a newline", "\r": "a carriage return", "\0": "a NUL byte"}
_ESCAPED = '\\"$`'
MAX_VALUE = 4096
_SHA256 = re.compile(r"[0-9a-f]{64}")


class EnvFileError(DatacrumbsError, ValueError):
    """A value that cannot be written safely to the unit's environment file."""


def env_path(run_dir: Path, jobid: str) -> Path:
    return Path(run_dir) / f"datacrumbs-{validate_run_id(jobid)}.env"


def probes_copy_path(run_dir: Path, jobid: str) -> Path:
    """The verified copy of the job's probes file that the unit's daemon reads."""
    return Path(run_dir) / f"datacrumbs-{validate_run_id(jobid)}.probes.json.gz"


def write_probes_copy(run_dir: Path, jobid: str, data: bytes) -> Path:
    """Publish the bytes the prolog verified: root-owned, 0600, by rename.

    The daemon reads these bytes, never the user's path again, so a file the
    user swaps after the prolog's check is never what gets traced.
    """
    Path(run_dir).mkdir(mode=0o755, parents=True, exist_ok=True)
    return atomic_write(probes_copy_path(run_dir, jobid), data, mode=0o600)


def is_probes_copy(path, run_dir: Path, jobid: str) -> bool:
    """Whether ``path`` is the verified copy the prolog writes for ``jobid``: that name in
    the run directory, a regular file of root's in a directory of root's, neither
    writable by anyone else (the prolog makes them 0600 and 0755). The daemon takes the
    prolog's word for the bytes of that file only (with their digest)."""
    try:
        if os.path.abspath(path) != os.path.abspath(probes_copy_path(run_dir, jobid)):
            return False
        st = os.stat(path, follow_symlinks=False)
        parent = os.stat(run_dir, follow_symlinks=False)
    except (OSError, ValueError, DatacrumbsError):
        return False
    return (stat.S_ISREG(st.st_mode) and st.st_uid == 0 and not st.st_mode & 0o022
            and stat.S_ISDIR(parent.st_mode) and parent.st_uid == 0
            and not parent.st_mode & 0o022)


def failure_path(run_dir: Path, jobid: str) -> Path:
    """Where the daemon leaves the one line that says why it could not trace the job."""
    return Path(run_dir) / f"datacrumbs-{validate_run_id(jobid)}.failed"


def read_failure(run_dir: Path, jobid: str) -> str | None:
    """The daemon's reason (first line, bounded, printable), or None."""
    try:
        with open(failure_path(run_dir, jobid), "rb") as f:
            line = f.read(2048).split(b"\n", 1)[0].decode("utf-8", "replace").strip()
    except OSError:
        return None
    return "".join(c if c.isprintable() else "?" for c in line) or None


def remove_failure(run_dir: Path, jobid: str) -> bool:
    return _unlink(failure_path(run_dir, jobid))


def remove_probes_copy(run_dir: Path, jobid: str) -> bool:
    """Remove the verified copy if present; True when something was removed."""
    return _unlink(probes_copy_path(run_dir, jobid))


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False


def check_value(key: str, value: str) -> str:
    """Return value if systemd will read it back byte for byte, else raise EnvFileError."""
    if key not in KEYS:
        raise EnvFileError(f"{key!r} is not a datacrumbs environment key ({', '.join(KEYS)})")
    if not isinstance(value, str) or not value:
        raise EnvFileError(f"{key} is empty")
    for char, name in _FORBIDDEN.items():
        if char in value:
            raise EnvFileError(f"{key} value {value!r} contains {name}; "
                               "rename the file or directory so it does not")
    if not value.isprintable():
        raise EnvFileError(f"{key} value {value!r} contains control characters; "
                           "rename it so it does not")
    if len(value) > MAX_VALUE:
        raise EnvFileError(f"{key} value is longer than {MAX_VALUE} characters")
    if key in PATH_KEYS and not value.startswith("/"):
        raise EnvFileError(f"{key} value {value!r} is not an absolute path")
    if key == "DATACRUMBS_PROBE_SHA256" and not _SHA256.fullmatch(value):
        raise EnvFileError(f"{key} value {value!r} is not 64 lowercase hex digits")
    return value


def render(values: dict[str, str]) -> str:
    missing = [k for k in REQUIRED if k not in values]
    if missing:
        raise EnvFileError(f"environment file is missing {', '.join(missing)}")
    return "".join(f"{k}={_quote(check_value(k, values[k]))}\n"
                   for k in KEYS if values.get(k) is not None)


def _quote(value: str) -> str:
    return '"' + "".join("\\" + c if c in _ESCAPED else c for c in value) + '"'


def _unquote(text: str) -> str:
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        raise EnvFileError(f"{text!r} is not a value written by datacrumbs")
    out, chars = [], iter(text[1:-1])
    for c in chars:
        out.append(next(chars, "") if c == "\\" else c)
    return "".join(out)


def write_env_file(run_dir: Path, jobid: str, values: dict[str, str]) -> Path:
    """Write atomically (temp file + rename), mode 0600, owned by the caller (root)."""
    text = render(values)
    target = env_path(run_dir, jobid)
    Path(run_dir).mkdir(mode=0o755, parents=True, exist_ok=True)
    return atomic_write(target, text, mode=0o600)


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a file this module wrote (tests and troubleshooting)."""
    values = {}
    for line in Path(path).read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key] = _unquote(value)
    return values


def remove_env_file(run_dir: Path, jobid: str) -> bool:
    """Remove the file if present; True when something was removed."""
    return _unlink(env_path(run_dir, jobid))
