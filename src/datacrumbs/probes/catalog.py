"""Named probe sets: built-in ones shipped as JSON, plus the site's own.

Built-in sets are ``datacrumbs/data/probe-sets/*.json``; an admin adds sets
as ``*.json`` files in ``SiteConfig.probe_sets_dir`` with the same format
(``name``, ``description``, ``probes``; the file is named ``<name>.json``).
A site set may replace a built-in set only by saying ``"override": true`` —
silently changing what ``--set posix`` means would surprise users.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..config import SiteConfig, load_config
from ..errors import DatacrumbsError
from . import ProbesFileError
from .document import open_regular_file, parse_json_bounded
from .schema import schema_problem

MAX_SET_FILE_BYTES = 1 << 20


class CatalogError(DatacrumbsError):
    """A bad probe set file, an unknown set name, or conflicting sets."""


@dataclass(frozen=True)
class ProbeSet:
    name: str
    description: str
    probes: tuple[dict, ...]
    source: str
    builtin: bool
    override: bool = False
    # library as the probes name it -> family pattern (see probes.schema.FAMILY_PATTERN)
    families: dict = field(default_factory=dict, compare=False, hash=False)


def _load_set_file(path, *, builtin: bool) -> ProbeSet:
    try:
        data = parse_json_bounded(open_regular_file(path, MAX_SET_FILE_BYTES), source=path)
    except ProbesFileError as exc:
        raise CatalogError(f"probe set file {path}: {exc.problem}; fix or remove it") from None
    problem = schema_problem(data, "set")
    if problem:
        raise CatalogError(f"probe set file {path} is invalid: {problem}; fix or remove it")
    stem = os.path.basename(str(path))[:-len(".json")]
    if data["name"] != stem:
        raise CatalogError(f"probe set file {path} defines set {data['name']!r}; "
                           f"rename the file to {data['name']}.json or change its name")
    ids = [p["id"] for p in data["probes"]]
    if len(set(ids)) != len(ids):
        raise CatalogError(f"probe set file {path} lists a probe id twice; ids must be unique")
    families = dict(data.get("families", {}))
    used = {p.get("library") for p in data["probes"] if p["kind"] == "uprobe"}
    for library, family in families.items():
        if library not in used:
            raise CatalogError(f"probe set file {path} gives a family for {library}, which no "
                               "uprobe of the set names; fix or remove it")
        if not fnmatch.fnmatchcase(os.path.basename(library), family):
            raise CatalogError(f"probe set file {path}: the family {family} of {library} does "
                               "not match that library's own name; fix the pattern")
    return ProbeSet(data["name"], data["description"], tuple(data["probes"]), str(path), builtin,
                    bool(data.get("override", False)), families)


def builtin_sets() -> dict[str, ProbeSet]:
    folder = resources.files("datacrumbs") / "data" / "probe-sets"
    with resources.as_file(folder) as directory:
        return {s.name: s for s in (_load_set_file(p, builtin=True)
                                    for p in sorted(Path(directory).glob("*.json")))}


def site_sets(directory: str | os.PathLike) -> dict[str, ProbeSet]:
    directory = Path(directory)
    if not directory.is_dir():
        return {}
    return {s.name: s for s in (_load_set_file(p, builtin=False)
                                for p in sorted(directory.glob("*.json")))}


def load_catalog(config: SiteConfig | None = None) -> dict[str, ProbeSet]:
    """Built-in sets, then site sets (which may replace a built-in only explicitly)."""
    config = config or load_config()
    catalog = builtin_sets()
    for name, probe_set in site_sets(config.probe_sets_dir).items():
        if name in catalog and catalog[name].builtin and not probe_set.override:
            raise CatalogError(f"probe set file {probe_set.source} has the name of the built-in "
                               f"set {name!r}; rename it, or add \"override\": true to replace "
                               "the built-in set on purpose")
        catalog[name] = probe_set
    return catalog


def select_probes(catalog: dict[str, ProbeSet], names) -> list[dict]:
    """The probes of the named sets, in order; the same id twice must be the same probe."""
    if not names:
        raise CatalogError(f"no probe set chosen; choose with --set from: {', '.join(sorted(catalog))}")
    chosen: dict[str, dict] = {}
    for name in names:
        if name not in catalog:
            raise CatalogError(f"unknown probe set {name!r}; known sets: "
                               f"{', '.join(sorted(catalog))}")
        for probe in catalog[name].probes:
            probe = with_family(dict(probe), catalog[name].families)
            previous = chosen.get(probe["id"])
            if previous is not None and previous != probe:
                raise CatalogError(f"probe id {probe['id']!r} means different probes in set "
                                   f"{name!r} and an earlier set; rename one of them")
            chosen.setdefault(probe["id"], probe)
    return list(chosen.values())


def with_family(probe: dict, families: dict) -> dict:
    """The probe with its library's family (a uprobe of a library the set names one for)."""
    family = families.get(probe.get("library")) if probe.get("kind") == "uprobe" else None
    if family:
        probe["family"] = family
    return probe
