"""The admin's signing policy: who may have which probe sets and kinds, and for how long.

Read from ``SiteConfig.policy_file`` (TOML). Without that file the policy
shipped in ``datacrumbs/data/sign-policy.toml`` applies, so the documented
default and the real default are one text. Rules only add permissions
(defaults, then every group the user is in, then the user's own table); the
``[deny]`` table removes them again and always wins.
"""

from __future__ import annotations

import fnmatch
import grp
import os
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import jsonschema

from ..errors import ConfigError, DatacrumbsError
from ..probes.schema import KINDS

DEFAULT_CONTACT = "your site's datacrumbs administrators"

_NAMES = {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 256},
          "uniqueItems": True}
_RULE = {
    "type": "object",
    "properties": {
        "allow_kinds": {"type": "array", "items": {"enum": list(KINDS)}, "uniqueItems": True},
        "allow_sets": _NAMES,
        "max_validity_days": {"type": "integer", "minimum": 1, "maximum": 3650},
        # the most probes one signed document may hold (patterns can name thousands);
        # the largest of the tables that apply, never more than the site's max_probes
        "max_probes": {"type": "integer", "minimum": 1, "maximum": 65536},
        # tracepoints these users may have ("category:name" patterns, or a category):
        # without it in any table that applies, every tracepoint is allowed
        "allow_tracepoints": _NAMES,
    },
    "additionalProperties": False,
}
POLICY_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        "contact": {"type": "string", "minLength": 1, "maxLength": 200},
        "defaults": _RULE,
        "users": {"type": "object", "additionalProperties": _RULE},
        "groups": {"type": "object", "additionalProperties": _RULE},
        "deny": {
            "type": "object",
            "properties": {
                "users": _NAMES, "groups": _NAMES, "sets": _NAMES,
                "kinds": {"type": "array", "items": {"enum": list(KINDS)}, "uniqueItems": True},
                "probes": _NAMES, "targets": _NAMES, "libraries": _NAMES, "families": _NAMES,
                # tracepoints as "category:name" patterns; one without ':' names a category
                "tracepoints": _NAMES,
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}
_validator = jsonschema.Draft202012Validator(POLICY_SCHEMA)


class PolicyError(ConfigError):
    """The policy file cannot be used; the message names it and the bad value."""


class PolicyRefused(DatacrumbsError):
    """The policy does not allow this request; the message says what and whom to ask."""


@dataclass(frozen=True)
class Caller:
    """Who is asking, as the kernel told the service (SO_PEERCRED) and pwd named them."""

    uid: int
    user: str
    gid: int


@dataclass(frozen=True)
class Grant:
    validity_days: int
    max_validity_days: int


@dataclass
class Policy:
    default_max_days: int
    contact: str = DEFAULT_CONTACT
    defaults: dict = field(default_factory=dict)
    users: dict = field(default_factory=dict)
    groups: dict = field(default_factory=dict)
    deny: dict = field(default_factory=dict)
    source: str = "the built-in default policy"

    def _rules_for(self, caller: Caller, groups: list[str]) -> list[dict]:
        rules = [self.defaults]
        rules += [self.groups[g] for g in groups if g in self.groups]
        if caller.user in self.users:
            rules.append(self.users[caller.user])
        return rules

    def _ask(self) -> str:
        return f"ask {self.contact} to change the signing policy ({self.source})"

    def check(self, caller: Caller, *, sets: list[str], probes: list[dict],
              validity_days: int, groups: list[str] | None = None,
              libraries: dict | None = None) -> Grant:
        """Allow the request and say how long the signature lasts, or raise PolicyRefused.

        Probes are judged as the objects they reach, not as the strings that name
        them: a system call by its canonical name, and with ``libraries`` (path ->
        signing.resolve.LibraryFile, the files the probes were bound to) a library
        by device and inode and a function by its address, so neither another path
        to a denied library nor an alias of a denied function gets through.
        """
        groups = group_names(caller) if groups is None else groups
        deny = self.deny
        who = f"user {caller.user} (uid {caller.uid})"
        if caller.user in deny.get("users", ()):
            raise PolicyRefused(f"{who} may not have probes files signed; {self._ask()}")
        for g in groups:
            if g in deny.get("groups", ()):
                raise PolicyRefused(f"members of group {g} may not have probes files signed, "
                                    f"and {who} is one; {self._ask()}")
        rules = self._rules_for(caller, groups)
        kinds = {k for r in rules for k in r.get("allow_kinds", ())} - set(deny.get("kinds", ()))
        allowed_sets = {s for r in rules for s in r.get("allow_sets", ())}
        allowed_tps = sorted({t for r in rules for t in r.get("allow_tracepoints", ())}) \
            if any("allow_tracepoints" in r for r in rules) else None
        for name in sets:
            if _matches(name, deny.get("sets", ())) or not _matches(name, allowed_sets):
                raise PolicyRefused(f"probe set {name!r} is not allowed for {who}; "
                                    f"leave it out or {self._ask()}")
        deny_targets = [canonical_syscall(t) for t in deny.get("targets", ())]
        denied_files = _library_files(deny.get("libraries", ())) if libraries else set()
        for probe in probes:
            pid, kind, target = probe.get("id"), probe.get("kind"), probe.get("target")
            label = f"probe {pid!r} ({kind} {target!r})"
            if kind not in kinds:
                raise PolicyRefused(f"{label} is refused: probes of kind {kind!r} are not allowed "
                                    f"for {who}; leave it out or {self._ask()}")
            if _matches(str(pid), deny.get("probes", ())):
                raise PolicyRefused(f"{label} is on the signing policy's deny list; "
                                    f"leave it out or {self._ask()}")
            name = canonical_syscall(str(target)) if kind == "syscall" else str(target)
            library = probe.get("library")
            lib = (libraries or {}).get(library) if library is not None else None
            alias = _denied_alias(lib, name, deny.get("targets", ())) if lib else None
            # a probe merged from several names (fopen with aliases fopen64) answers for each
            alias = alias or next((str(a) for a in probe.get("aliases", ())
                                   if _matches(str(a), deny_targets)), None)
            if _matches(name, deny_targets) or alias:
                what = f"target {target!r}" + (f" (the same function as {alias!r})"
                                               if alias and alias != target else "")
                raise PolicyRefused(f"{label} is refused: {what} is on the signing "
                                    f"policy's deny list; leave it out or {self._ask()}")
            if kind == "tracepoint" and allowed_tps is not None and \
                    not _tracepoint_pattern(str(target), allowed_tps):
                raise PolicyRefused(f"{label} is refused: its category is not among the "
                                    f"tracepoints allowed for {who} ({', '.join(allowed_tps)}); "
                                    f"leave it out or {self._ask()}")
            if kind == "tracepoint":
                denied_tp = _tracepoint_pattern(str(target), deny.get("tracepoints", ()))
                if denied_tp:
                    raise PolicyRefused(f"{label} is refused: tracepoints {denied_tp!r} are on "
                                        f"the signing policy's deny list; leave it out or "
                                        f"{self._ask()}")
            if library is None:
                continue
            names = [str(library)]
            if lib is not None:
                names += [lib.path, os.path.basename(lib.path)] + ([lib.soname] if lib.soname
                                                                    else [])
            if any(_matches(n, deny.get("libraries", ())) for n in names) or \
                    (lib is not None and (lib.dev, lib.ino) in denied_files):
                raise PolicyRefused(f"{label} is refused: library {library!r} is on the signing "
                                    f"policy's deny list; leave it out or {self._ask()}")
        longest = max(r.get("max_validity_days", self.default_max_days) for r in rules)
        return Grant(validity_days=min(validity_days, longest), max_validity_days=longest)


    def probe_limit(self, caller: Caller, site_max: int, groups: list[str] | None = None
                    ) -> tuple[int, str]:
        """(the most probes a document signed for ``caller`` may hold, where that limit is
        set): the largest ``max_probes`` of the tables that apply, capped by the site's."""
        groups = group_names(caller) if groups is None else groups
        limits = [r["max_probes"] for r in self._rules_for(caller, groups) if "max_probes" in r]
        if limits and max(limits) < site_max:
            return max(limits), f"max_probes of the signing policy {self.source}"
        return site_max, "the site's max_probes"

    def family_denied(self, family: str) -> str | None:
        """The deny pattern that keeps a library family out of signed documents, if any.

        A family lets the tracer attach to every matching library a job maps, which the
        signing service never sees, so it is withheld (the probes stay on the file they
        were bound to) when ``deny.families`` matches it, or when a ``deny.libraries``
        pattern could name one of its members: their literal beginnings agree."""
        for pattern in self.deny.get("families", ()):
            if fnmatch.fnmatchcase(family, pattern):
                return pattern
        for pattern in self.deny.get("libraries", ()):
            name = pattern.rsplit("/", 1)[-1]
            a, b = _literal_prefix(family), _literal_prefix(name)
            if a.startswith(b) or b.startswith(a):
                return pattern
        return None


def _tracepoint_pattern(target: str, patterns) -> str | None:
    """The first of ``patterns`` naming tracepoint ``category:name`` (or its category)."""
    category = target.split(":", 1)[0]
    for pattern in patterns:
        if fnmatch.fnmatchcase(target if ":" in pattern else category, pattern):
            return pattern
    return None


def _literal_prefix(pattern: str) -> str:
    """What every name a shell pattern matches begins with."""
    for i, ch in enumerate(pattern):
        if ch in "*?[":
            return pattern[:i]
    return pattern


def _matches(value: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(value, p) for p in patterns)


# Names by which system calls are known (libc wrappers, 32-bit and older names) ->
# the x86_64 system call the tracer attaches to.
SYSCALL_ALIASES = {
    "pread": "pread64", "pwrite": "pwrite64", "fstatat": "newfstatat",
    "fstatat64": "newfstatat", "stat64": "stat", "lstat64": "lstat", "fstat64": "fstat",
    "newstat": "stat", "newlstat": "lstat", "newfstat": "fstat", "sendfile64": "sendfile",
    "fadvise": "fadvise64", "posix_fadvise": "fadvise64", "fadvise64_64": "fadvise64",
    "umount": "umount2", "open64": "open", "openat64": "openat", "creat64": "creat",
    "truncate64": "truncate", "ftruncate64": "ftruncate", "fallocate64": "fallocate",
    "preadv64": "preadv", "pwritev64": "pwritev", "preadv64v2": "preadv2",
    "pwritev64v2": "pwritev2", "getdents32": "getdents", "sync_file_range2": "sync_file_range",
}


def canonical_syscall(name: str) -> str:
    return SYSCALL_ALIASES.get(name, name)


def _denied_alias(lib, target: str, patterns) -> str | None:
    """The denied name that shares ``target``'s address in ``lib``, if any."""
    address = lib.addresses.get(target)
    if address is None or not patterns:
        return None
    for other, where in lib.addresses.items():
        if where == address and _matches(other, patterns):
            return other
    return None


MAX_DENY_MATCHES = 4096


def _library_files(patterns) -> set[tuple[int, int]]:
    """(device, inode) of every file a path pattern of ``deny.libraries`` names now,
    following links, so another path, link or /proc/self/root view of it is caught."""
    import glob

    found: set[tuple[int, int]] = set()
    for pattern in patterns:
        if "/" not in pattern:
            continue  # a soname or file-name pattern: matched against names above
        for path in glob.iglob(pattern):
            try:
                st = os.stat(path)
            except OSError:
                continue
            found.add((st.st_dev, st.st_ino))
            if len(found) >= MAX_DENY_MATCHES:
                return found
    return found


def group_names(caller: Caller) -> list[str]:
    """Every group the caller belongs to (primary and supplementary), by name."""
    try:
        gids = os.getgrouplist(caller.user, caller.gid)
    except OSError:
        gids = [caller.gid]
    names = []
    for gid in gids:
        try:
            names.append(grp.getgrgid(gid).gr_name)
        except KeyError:
            continue
    return names


def default_policy_text() -> str:
    return resources.files("datacrumbs").joinpath("data/sign-policy.toml").read_text("utf-8")


def parse_policy(text: str, *, source: str, default_max_days: int) -> Policy:
    """Turn policy TOML into a Policy, or raise PolicyError naming ``source`` and the problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"signing policy {source} is not valid TOML: {exc}; "
                          "fix it (the shipped sign-policy.toml shows the format)") from None
    error = jsonschema.exceptions.best_match(_validator.iter_errors(data))
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "top level"
        raise PolicyError(f"signing policy {source}: {where}: {error.message}; "
                          "fix it (the shipped sign-policy.toml shows the format)")
    defaults = {"allow_kinds": [], "allow_sets": [], "max_validity_days": default_max_days,
                **data.get("defaults", {})}
    return Policy(default_max_days=defaults["max_validity_days"],
                  contact=data.get("contact", DEFAULT_CONTACT), defaults=defaults,
                  users=data.get("users", {}), groups=data.get("groups", {}),
                  deny=data.get("deny", {}), source=source)


def load_policy(path: str | os.PathLike | None, *, default_max_days: int) -> Policy:
    """The policy at ``path``; the shipped default when that file does not exist."""
    if path is None or not Path(path).exists():
        return parse_policy(default_policy_text(), source="the built-in default policy",
                            default_max_days=default_max_days)
    try:
        text = Path(path).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"cannot read signing policy {path}: {exc}") from None
    return parse_policy(text, source=str(path), default_max_days=default_max_days)
