"""Which processes belong to the job: a cgroup, a user, or a process tree.

A Scope is only a validated description; the engine turns it into BPF map
contents so the decision is taken in the kernel and events of other
processes never reach user space. scope_from_env reads the job's scope from
the unit's environment, and refuses any cgroup that is not the job's own; the
prolog runs the same check (cgroup_from_env) before it writes the env file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, DatacrumbsError
from ..jobid import f58_encode, f58plain, validate_run_id

CGROUP2_ROOT = Path("/sys/fs/cgroup/unified")
MAX_SEED_PIDS = 65536
UID_MAX = (1 << 32) - 2  # (uid_t)-1 means "no uid"
CGROUP_NAME_MAX = 255    # kernfs names are at most NAME_MAX bytes
CGROUP_NAME_SUFFIXES = (".service", ".scope")
FIND_MAX_DEPTH = 12      # how deep find_cgroup looks below the v2 root
FIND_MAX_DIRS = 100000   # and how many directories at most
CGROUP_ENV = "DATACRUMBS_CGROUP"
CGROUP_NAME_ENV = "DATACRUMBS_CGROUP_NAME"
JOB_SHELL_ENV = "DATACRUMBS_JOB_SHELL"
DEFAULT_JOB_SHELL = "flux-shell"
JOB_SHELL_RE = re.compile(r"[A-Za-z0-9._-]{1,63}")
_NAME_SEPARATORS = re.compile(r"[^0-9A-Za-z\u0192]+")


class ScopeError(DatacrumbsError):
    """A cgroup, uid or pid list that cannot define which processes to trace."""


def cgroup2_root() -> Path:
    """Mount point of the cgroup v2 hierarchy (hybrid layout: .../unified)."""
    try:
        with open("/proc/self/mounts", encoding="utf-8") as f:
            mounts = [line.split() for line in f]
    except OSError:
        mounts = []
    for fields in mounts:
        if len(fields) >= 3 and fields[2] == "cgroup2":
            return Path(fields[1].replace("\\040", " "))
    return CGROUP2_ROOT


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as f:
                kids.extend(int(x) for x in f.read().split())
        except (OSError, ValueError):
            continue
    return kids


def descendants(pids) -> set[int]:
    """The given pids plus every living descendant (read from /proc, bounded)."""
    seen: set[int] = set()
    todo = list(pids)
    while todo and len(seen) < MAX_SEED_PIDS:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo.extend(_children(pid))
    return seen


@dataclass(frozen=True)
class Scope:
    """Processes to trace. Build with for_cgroup, for_user or for_pids."""

    kind: str                      # "cgroup" | "cgroup_name" | "user" | "pids" | "job_shell"
    cgroup: Path | None = None
    cgroup_name: str | None = None
    uid: int | None = None
    pids: tuple[int, ...] = ()
    follow: bool = True
    at_exec: bool = False          # pids join when they exec (see for_pids)
    jobid: str | None = None       # job_shell: the decimal job id the shell is run with
    shell: str | None = None       # job_shell: the job shell's file name

    @classmethod
    def for_cgroup(cls, path) -> "Scope":
        """A cgroup v2 directory; processes in it and in its descendants."""
        root = cgroup2_root().resolve()
        p = Path(path)
        if not p.is_absolute() or "\0" in str(path):
            raise ScopeError(f"cgroup {str(path)!r} must be an absolute path under {root}")
        try:
            real = p.resolve()
        except (OSError, RuntimeError) as exc:
            raise ScopeError(f"cgroup {path} cannot be resolved: {exc}") from None
        if real != root and root not in real.parents:
            raise ScopeError(f"cgroup {path} is not in the cgroup v2 hierarchy at {root}; "
                             "pass the job's cgroup directory there")
        if not (real / "cgroup.procs").is_file():
            raise ScopeError(f"cgroup {path} does not exist or is not a cgroup v2 directory "
                             "(no cgroup.procs)")
        return cls(kind="cgroup", cgroup=real, follow=False)

    @classmethod
    def for_cgroup_name(cls, name) -> "Scope":
        """The cgroup v2 directory whose name ends with ``name`` (a whole name matches
        too) and its descendants, wherever and whenever it is created: the tracer
        starts in the prolog, before the job's cgroup exists. Flux's sdexec names it
        ``<shell>-<rank>-<f58 jobid>.service``, so ``-<f58 jobid>.service`` finds it on
        every node."""
        if not isinstance(name, str):
            raise ScopeError(f"cgroup name {name!r} must be a string such as "
                             "'shell-<jobid>.service'")
        raw = name.encode("utf-8", "surrogateescape")
        if (not name or "/" in name or "\0" in name or name in (".", "..")
                or len(raw) > CGROUP_NAME_MAX):
            raise ScopeError(f"cgroup name {name!r} must be one path component (no '/', no NUL, "
                             f"at most {CGROUP_NAME_MAX} bytes), e.g. 'shell-<jobid>.service'")
        if not name.endswith(CGROUP_NAME_SUFFIXES) or name in CGROUP_NAME_SUFFIXES:
            raise ScopeError(f"cgroup name {name!r} must name a systemd unit ending in "
                             f"{' or '.join(CGROUP_NAME_SUFFIXES)}, e.g. 'shell-<jobid>.service'")
        return cls(kind="cgroup_name", cgroup_name=name, follow=False)

    @classmethod
    def for_user(cls, uid) -> "Scope":
        """Every process running as this uid, and the children they fork."""
        if isinstance(uid, bool) or not isinstance(uid, int) or not 0 <= uid <= UID_MAX:
            raise ScopeError(f"uid {uid!r} is not a valid user id (0..{UID_MAX})")
        return cls(kind="user", uid=uid, follow=True)

    @classmethod
    def for_pids(cls, pids, follow: bool = True, at_exec: bool = False) -> "Scope":
        """These processes (tgids) and, with follow, every descendant via fork.

        ``at_exec``: each joins only when it next execs successfully. For a process
        the tracer forked to run a command: what it does before exec (closing
        descriptors, waiting to be released, reporting a failed exec) is the
        tracer's own work, never the command's, and is not traced."""
        clean: list[int] = []
        for pid in pids:
            if isinstance(pid, bool) or not isinstance(pid, int) or not 0 < pid < (1 << 22) + 1:
                raise ScopeError(f"process id {pid!r} is not a valid pid")
            clean.append(pid)
        if not clean:
            raise ScopeError("no process ids given to trace")
        if len(clean) > MAX_SEED_PIDS:
            raise ScopeError(f"{len(clean)} process ids given; at most {MAX_SEED_PIDS} allowed")
        return cls(kind="pids", pids=tuple(dict.fromkeys(clean)), follow=bool(follow),
                   at_exec=bool(at_exec))

    @classmethod
    def for_job_shell(cls, run_id, shell: str = DEFAULT_JOB_SHELL) -> "Scope":
        """The job's own processes without a cgroup of its own: the process that execs
        the job shell with this job's id as its last argument (Flux runs
        ``flux-shell <jobid>``, through ``flux-imp exec`` in multi-user instances), and
        every process it forks. Seen in the kernel at exec, so the tracer may start
        first (in the prolog); a shell already running is found in /proc."""
        try:
            jobid = validate_run_id(str(run_id))
        except DatacrumbsError as exc:
            raise ScopeError(f"job shell scope: {exc}") from None
        if not isinstance(shell, str) or not JOB_SHELL_RE.fullmatch(shell):
            raise ScopeError(f"job shell {shell!r} must be a file name (letters, digits, '.', "
                             "'_', '-'; at most 63 bytes), e.g. flux-shell")
        return cls(kind="job_shell", jobid=str(int(jobid)), shell=shell, follow=True)

    def seed_pids(self) -> set[int]:
        """tgids to put in the kernel's pid set at start (at_exec: to wait for exec;
        their children from before are not the command's)."""
        if self.kind == "job_shell":
            return descendants(running_job_shells(self.jobid, self.shell))
        if self.kind != "pids":
            return set()
        if self.at_exec:
            return set(self.pids)
        return descendants(self.pids) if self.follow else set(self.pids)

    def describe(self) -> str:
        if self.kind == "cgroup":
            return f"cgroup {self.cgroup}"
        if self.kind == "cgroup_name":
            return f"cgroup named {self.cgroup_name}"
        if self.kind == "user":
            return f"uid {self.uid}"
        if self.kind == "job_shell":
            return f"job {self.jobid}'s shell ({self.shell} {self.jobid}) and its descendants"
        return f"pids {', '.join(map(str, self.pids))}" + (" from their exec" if self.at_exec
                                                            else "") + \
            (" and descendants" if self.follow else "")


def is_job_shell_cmdline(args: list[bytes], jobid: str, shell: str) -> bool:
    """The kernel side's rule (is_job_shell in the BPF program), for processes already
    running: the last argument is the job id, an earlier one names the job shell."""
    if len(args) < 2 or args[-1] != jobid.encode():
        return False
    name = shell.encode()
    return any(a == name or a.endswith(b"/" + name) for a in args[:-1])


def running_job_shells(jobid: str, shell: str) -> set[int]:
    """Processes running job ``jobid``'s shell now (bounded scan of /proc)."""
    found: set[int] = set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries[:MAX_SEED_PIDS * 4]:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                raw = f.read(64 << 10)
        except OSError:
            continue
        if is_job_shell_cmdline(raw.rstrip(b"\0").split(b"\0"), jobid, shell):
            found.add(int(entry))
    return found


def find_cgroup(name: str, root: Path | None = None) -> tuple[Path, int] | None:
    """The existing cgroup v2 directory whose name ends with ``name`` and its level
    (depth below the root), searched breadth-first and bounded; the newest (highest
    id) when several match, as the kernel side keeps the last one created."""
    root = root or cgroup2_root()
    found: list[tuple[int, Path, int]] = []
    todo, seen = [(root, 0)], 0
    while todo and seen < FIND_MAX_DIRS:
        nxt = []
        for path, level in todo:
            try:
                with os.scandir(path) as it:
                    entries = [e for e in it if e.is_dir(follow_symlinks=False)]
            except OSError:
                continue
            for e in entries:
                seen += 1
                if e.name.endswith(name):
                    try:
                        found.append((e.inode(), Path(e.path), level + 1))
                    except OSError:
                        pass
                if level + 1 < FIND_MAX_DEPTH:
                    nxt.append((Path(e.path), level + 1))
        todo = nxt
    if not found:
        return None
    _, path, level = max(found)
    return path, level


# -- the job's scope from the unit's environment (the daemon; the prolog checks first) --

def job_id_spellings(run_id: str) -> set[str]:
    """How a job's cgroup name carries its id: decimal (a site's ``job-1234``), or F58
    as Flux's sdexec writes it in unit names (``shell-0-f2kP8DU5B.service``) or prints it."""
    n = int(validate_run_id(run_id))
    return {str(n), f58plain(n), f58_encode(n)}


def names_job(name: str, run_id: str) -> bool:
    """True when the cgroup name holds the job id as a whole token (``job-12`` names
    job 12; ``job-123`` and ``job12`` do not), so a cgroup of another job never passes."""
    return not job_id_spellings(run_id).isdisjoint(_NAME_SEPARATORS.split(name))


def cgroup_from_env(env, run_id: str) -> Path | None:
    """Job ``run_id``'s cgroup from ``DATACRUMBS_CGROUP``, or None when unset.

    The job's user reads the trace, so the scope must never cover more than the job:
    the v2 root (every process of the node), a directory that is not a cgroup, and a
    cgroup whose own name does not carry the job id (a parent slice, another job) are
    refused. The prolog runs this same check before it writes the env file.
    """
    raw = env.get(CGROUP_ENV)
    if not raw:
        return None
    root = Path(os.path.realpath(cgroup2_root()))
    spellings = " or ".join(sorted(job_id_spellings(run_id) - {f58_encode(int(run_id))}))
    fix = (f"set it to job {run_id}'s own cgroup (a directory under {root} whose name holds "
           f"{spellings}, e.g. shell-0-{f58plain(int(run_id))}.service), or unset it")
    path = Path(raw)
    if not path.is_absolute() or ".." in path.parts or "\0" in raw:
        raise ConfigError(f"{CGROUP_ENV}={raw!r} is not an absolute path; {fix}")
    real = Path(os.path.realpath(path))
    if real == root:
        raise ConfigError(f"{CGROUP_ENV}={raw!r} is the cgroup v2 root, which holds every "
                          f"process of the node; {fix}")
    if root not in real.parents or not (real / "cgroup.procs").is_file():
        raise ConfigError(f"{CGROUP_ENV}={raw!r} is not a cgroup (no cgroup.procs under "
                          f"{root}); {fix}")
    if not names_job(real.name, run_id):
        raise ConfigError(f"{CGROUP_ENV}={raw!r} is not job {run_id}'s cgroup (its name "
                          f"{real.name!r} does not hold the job id); {fix}")
    return real


def scope_from_env(uid: int, env, run_id: str):
    """The job's scope: DATACRUMBS_CGROUP (an existing directory), else
    DATACRUMBS_CGROUP_NAME (the job's cgroup, e.g. shell-<jobid>.service, which
    the prolog names before it exists), else DATACRUMBS_JOB_SHELL (the process tree
    of the job's shell, e.g. flux-shell), else every process of the job's user.
    Both cgroup forms must name this job (see cgroup_from_env)."""
    cgroup = cgroup_from_env(env, run_id)
    if cgroup:
        return Scope.for_cgroup(cgroup)
    name = env.get(CGROUP_NAME_ENV)
    if name:
        try:
            scope = Scope.for_cgroup_name(name)
        except ScopeError as exc:
            raise ConfigError(f"{CGROUP_NAME_ENV}: {exc}; check the prolog's env file") from None
        if not names_job(name, run_id):
            raise ConfigError(f"{CGROUP_NAME_ENV}={name!r} does not hold job {run_id}'s id "
                              f"as a whole word, so it could match another job's cgroup; use "
                              f"e.g. -{f58plain(int(run_id))}.service")
        return scope
    shell = env.get(JOB_SHELL_ENV)
    if shell:
        try:
            return Scope.for_job_shell(run_id, shell)
        except ScopeError as exc:
            raise ConfigError(f"{JOB_SHELL_ENV}: {exc}; check the prolog's env file") from None
    return Scope.for_user(uid)
