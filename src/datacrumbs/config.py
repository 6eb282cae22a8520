"""The one site configuration file, and the defaults used without it.

Every component (signing service, daemon, prolog, epilog, reports) reads its
paths and limits from here so that an admin changes them in one place:
``<prefix>/etc/datacrumbs/datacrumbs.toml``. ``DATACRUMBS_CONFIG`` points
elsewhere (tests use it).
"""

from __future__ import annotations

import grp
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from .errors import ConfigError

DEFAULT_PREFIX = Path("/opt/datacrumbs")
CONFIG_ENV = "DATACRUMBS_CONFIG"


def default_config_path(prefix: Path = DEFAULT_PREFIX) -> Path:
    return prefix / "etc" / "datacrumbs" / "datacrumbs.toml"


@dataclass
class SiteConfig:
    """Values an admin may set; each section of the TOML file maps to a prefix."""

    prefix: Path = DEFAULT_PREFIX
    # [paths]
    run_dir: Path = Path("/run/datacrumbs")
    log_dir: Path = Path("/var/log/datacrumbs")
    # Placeholders: {user} {jobid} {host} {date} (YYYY-MM-DD of the job start).
    trace_dir: str = "/var/lib/datacrumbs/traces/{user}/{date}"
    public_key_dir: Path = DEFAULT_PREFIX / "etc/datacrumbs/keys"
    probe_sets_dir: Path = DEFAULT_PREFIX / "etc/datacrumbs/probe-sets"
    bpf_object: Path = DEFAULT_PREFIX / "lib/datacrumbs/datacrumbs.bpf.o"
    # Empty: traces are the job user's alone (files 0600, directories 0700); HPC users
    # often share a primary group, so that group must not read them. A group name:
    # that group may read them too (files 0640, directories 0750).
    trace_group: str = ""
    # [signing]
    socket_path: Path = Path("/run/datacrumbs/sign.sock")
    private_key_dir: Path = Path("/etc/datacrumbs/private")
    policy_file: Path = DEFAULT_PREFIX / "etc/datacrumbs/sign-policy.toml"
    audit_log: Path = Path("/var/log/datacrumbs/sign-audit.log")
    max_validity_days: int = 30
    # [service]
    prolog_timeout: float = 30.0
    ready_timeout: float = 20.0
    stop_timeout: float = 60.0
    fail_job_on_error: bool = False
    # Flux runs job shells with sdexec (exec.service = "sdexec"): trace only the job's
    # cgroup, the unit <shell>-<rank>-<f58 jobid>.service, so two jobs of one user on a
    # node stay apart. Off: trace every process of the job's user on the node.
    sdexec_scope: bool = False
    # Without sdexec: trace the process tree of the job's shell, the process Flux execs as
    # ``<job_shell> <jobid>`` (directly, or through flux-imp exec), so two jobs of one user
    # on a node stay apart. Empty: trace every process of the job's user on the node.
    job_shell: str = "flux-shell"
    # [limits]
    max_probes_file_bytes: int = 1 << 20          # compressed
    max_probes_document_bytes: int = 8 << 20      # decompressed
    max_probes: int = 16384      # the BPF object holds at most 16384 (DC_MAX_PROBES)
    # Compressed trace per job and node: a job that does endless I/O must not fill
    # the node's /var. At the cap the trace is closed (complete and readable) and
    # further events are only counted in the summary.
    max_trace_bytes: int = 1 << 30
    source: Path | None = field(default=None, compare=False)

    def trace_dir_for(self, *, user: str, jobid: str, host: str, date: str) -> Path:
        try:
            return Path(self.trace_dir.format(user=user, jobid=jobid, host=host, date=date))
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(
                f"trace_dir pattern {self.trace_dir!r} in {self.source or 'defaults'} is invalid "
                f"({exc}); use only {{user}}, {{jobid}}, {{host}} and {{date}}"
            ) from None

    def trace_gid(self) -> int | None:
        """The gid of ``trace_group``, or None when traces are private to the user.

        Looked up where traces are written (not in load_config), so a node that
        lacks the group fails its tracer with this line while the epilog and the
        other components still read the file.
        """
        if not self.trace_group:
            return None
        try:
            return grp.getgrnam(self.trace_group).gr_gid
        except KeyError:
            raise ConfigError(
                f"{self.source or 'defaults'}: trace_group = {self.trace_group!r} is not a group "
                "on this node; create it, or set trace_group = \"\" for traces only their user "
                "can read") from None


_SECTIONS = {
    "paths": ("run_dir", "log_dir", "trace_dir", "public_key_dir", "probe_sets_dir", "bpf_object",
              "trace_group"),
    "signing": ("socket_path", "private_key_dir", "policy_file", "audit_log", "max_validity_days"),
    "service": ("prolog_timeout", "ready_timeout", "stop_timeout", "fail_job_on_error",
                "sdexec_scope", "job_shell"),
    "limits": ("max_probes_file_bytes", "max_probes_document_bytes", "max_probes",
               "max_trace_bytes"),
}
# Smallest values that still work: the trace's header member must fit under the cap.
_MINIMUM = {"max_trace_bytes": 4096}
# A group name as groupadd accepts it (no ':', ',', '/', blanks); empty = private.
_GROUP_NAME = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,63}\$?")
# The job shell's file name, as tracer/scope.py's JOB_SHELL_RE (no path: a basename).
_JOB_SHELL = re.compile(r"[A-Za-z0-9._-]{1,63}")


def _coerce(name: str, value, path: Path):
    kind = {f.name: f.type for f in fields(SiteConfig)}[name]
    ok = {
        "Path": isinstance(value, str) and value.startswith("/"),
        "str": isinstance(value, str),
        "int": isinstance(value, int) and not isinstance(value, bool) and value > 0,
        "float": isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0,
        "bool": isinstance(value, bool),
    }[kind]
    if not ok:
        expected = {"Path": "an absolute path", "str": "a string", "int": "a positive integer",
                    "float": "a positive number", "bool": "true or false"}[kind]
        raise ConfigError(f"{path}: {name} = {value!r} must be {expected}")
    if name in _MINIMUM and value < _MINIMUM[name]:
        raise ConfigError(f"{path}: {name} = {value!r} must be at least {_MINIMUM[name]}")
    if name == "job_shell" and value and not _JOB_SHELL.fullmatch(value):
        raise ConfigError(f"{path}: job_shell = {value!r} must be the job shell's file name "
                          "(e.g. \"flux-shell\"), or \"\" to trace every process of the "
                          "job's user")
    if name == "trace_group" and value and not _GROUP_NAME.fullmatch(value):
        raise ConfigError(f"{path}: trace_group = {value!r} is not a group name; set a group "
                          "name, or \"\" for traces only their user can read")
    return Path(value) if kind == "Path" else value


def load_config(path: str | os.PathLike | None = None) -> SiteConfig:
    """Read the site file (explicit path, $DATACRUMBS_CONFIG, or the default prefix)."""
    explicit = path or os.environ.get(CONFIG_ENV)
    cfg_path = Path(explicit) if explicit else default_config_path()
    if not cfg_path.exists():
        if explicit:
            raise ConfigError(f"configuration file {cfg_path} does not exist; "
                              f"check {CONFIG_ENV} or the --config option")
        return SiteConfig()
    try:
        data = tomllib.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read configuration file {cfg_path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {cfg_path} is not valid TOML: {exc}") from None
    values: dict = {"source": cfg_path}
    if "prefix" in data:
        values["prefix"] = _coerce("prefix", data.pop("prefix"), cfg_path)
    for section, table in data.items():
        if section not in _SECTIONS or not isinstance(table, dict):
            raise ConfigError(f"{cfg_path}: unknown section [{section}]; "
                              f"known: {', '.join(sorted(_SECTIONS))}")
        for key, value in table.items():
            if key not in _SECTIONS[section]:
                raise ConfigError(f"{cfg_path}: unknown key {key!r} in [{section}]; "
                                  f"known: {', '.join(_SECTIONS[section])}")
            values[key] = _coerce(key, value, cfg_path)
    return SiteConfig(**values)


def render_config(cfg: SiteConfig) -> str:
    """The TOML text the installer writes, with every value spelled out."""
    lines = ["# datacrumbs site configuration (read by every datacrumbs component)",
             f'prefix = "{cfg.prefix}"', ""]
    for section, keys in _SECTIONS.items():
        lines.append(f"[{section}]")
        for key in keys:
            value = getattr(cfg, key)
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, (int, float)):
                text = repr(value)
            else:
                text = '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
            lines.append(f"{key} = {text}")
        lines.append("")
    return "\n".join(lines)
