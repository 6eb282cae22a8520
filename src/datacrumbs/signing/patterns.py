"""Selections by pattern: ``--uprobe LIB:GLOB``, ``--syscall GLOB``, ``--tracepoint CAT:GLOB``,
``--kfunc GLOB``, resolved by the signing service into probe definitions.

A pattern is matched against what this host really has: a library's exported
functions (its ``.dynsym``), the kernel's system call table, tracefs events, the
kernel's traceable functions. A match the catalog knows (``H5Dwrite`` of libhdf5,
``read``) gets the catalog's definition with its argument roles; any other gets
none (time and return value only), so a pattern never lets a user decide which
memory the root tracer reads. A user's own library reaches the service as a
descriptor she opened (never a path the service opens on her say-so); a library
family (``libhdf5*.so*``) is looked up in the ld.so cache, the admin's list.

Refusals are one line naming the pattern. Counting comes before building, so a
pattern over 100,000 symbols is refused in milliseconds. USDT (``--usdt``) plugs
in as one more entry of RESOLVERS.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import hashlib
import os
import platform
import re
import stat
import time
from dataclasses import dataclass, field

from ..probes.catalog import with_family
from ..probes.host_check import (SYSCALLS_X86_64, HostInfo,
                                 _traceable_functions, in_family, ldconfig_cache,
                                 syscall_tracepoint)
from ..probes.schema import _TARGETS, FAMILY_PATTERN
from ..tracer.elfsyms import NotElf64, exported_functions_fd
from .resolve import MAX_LIBRARY_BYTES, LibraryFile, RequestRefused, _shown, opened_library

# The kinds a request may select by pattern, and the option that says so.
FLAGS = {"uprobe": "--uprobe", "syscall": "--syscall", "tracepoint": "--tracepoint",
         "kfunc": "--kfunc"}
# Files one library family may name in the ld.so cache: a family names one library's builds.
MAX_FAMILY_FILES = 8
# Names shown per pattern in the audit log (the count is always exact).
MAX_AUDIT_NAMES = 2000

_GLOB = {
    "uprobe": re.compile(r"^[A-Za-z0-9_.$@*?\[\]!-]{1,255}$"),
    "syscall": re.compile(r"^[a-z0-9_*?\[\]!]{1,64}$"),
    "tracepoint": re.compile(r"^[a-z0-9_*?\[\]!]{1,64}:[a-z0-9_*?\[\]!]{1,128}$"),
    "kfunc": re.compile(r"^[A-Za-z0-9_.*?\[\]!]{1,128}$"),
}
_SONAME = re.compile(r"^[A-Za-z0-9_+-][A-Za-z0-9_.+-]*\.so(\.[0-9]+)*$")
_NAMES = {kind: re.compile(p) for kind, p in _TARGETS.items()}


@dataclass
class PatternResult:
    """What one pattern resolved to."""

    kind: str
    pattern: str
    probes: list[dict]
    libraries: list[LibraryFile] = field(default_factory=list)
    # per library: how many uncatalogued functions its debug info described, and why not
    arguments: list[dict] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{FLAGS.get(self.kind, '--' + self.kind)} {self.pattern!r}"

    def audit(self) -> dict:
        names = [p["target"] for p in self.probes]
        entry = {"kind": self.kind, "pattern": self.pattern, "probes": len(names),
                 "names": names[:MAX_AUDIT_NAMES]}
        if self.arguments:      # functions the catalog does not know: typed from debug info
            entry["arguments"] = self.arguments
        if len(names) > MAX_AUDIT_NAMES:
            entry["names_truncated"] = True
        if self.libraries:
            entry["libraries"] = [{"path": lib.path, "dev": lib.dev, "ino": lib.ino}
                                  for lib in self.libraries]
        return entry


def label(kind: str, pattern: str) -> str:
    return f"{FLAGS.get(kind, '--' + kind)} {pattern!r}"


def _refuse(kind: str, pattern: str, why: str) -> RequestRefused:
    return RequestRefused(f"{label(kind, pattern)} refused: {why}")


def split_uprobe(pattern: str) -> tuple[str, str]:
    """(library, function glob) of ``LIB:GLOB``; the glob has no ':', a path may."""
    lib, sep, glob = pattern.rpartition(":")
    if not sep or not lib or not glob:
        raise _refuse("uprobe", pattern, "write it as LIBRARY:FUNCTIONS, e.g. "
                      "'libhdf5*.so*:H5D*' or '/home/me/lib/libmyio.so:*'")
    return lib, glob


def library_names_passed(patterns: list[dict], paths: list[str]) -> set[str]:
    """The passed library paths that a path-form ``--uprobe`` pattern names: these are
    read as pattern libraries (every exported function), not as ``--library`` files."""
    named = set()
    for item in patterns:
        if item.get("kind") != "uprobe" or ":" not in item.get("pattern", ""):
            continue
        lib = item["pattern"].rpartition(":")[0]
        if lib.startswith("/"):
            named.update(p for p in paths if fnmatch.fnmatchcase(p, lib))
    return named


def pattern_library(fd: int, claimed: str) -> LibraryFile:
    """A descriptor the user passed, judged as a library (as resolve.library_file, but
    its exported functions read by the fast reader: a file may hold 100,000 symbols)."""
    st, path, shown = opened_library(fd, claimed)
    return dataclasses.replace(_judge(fd, st, path, shown), fd=fd)


def _judge(fd: int, st: os.stat_result, path: str, shown: str) -> LibraryFile:
    try:
        soname, machine, addresses, ambiguous = exported_functions_fd(fd)
    except NotElf64:
        raise RequestRefused(f"library {shown} is not an ELF64 shared library") from None
    if not addresses:
        raise RequestRefused(f"library {shown} exports no functions (no dynamic symbols); "
                             "it is not a shared library")
    if platform.machine() == "x86_64" and machine != "EM_X86_64":
        raise RequestRefused(f"library {shown} is built for {machine}, not x86-64")
    return LibraryFile(path, st.st_dev, st.st_ino, soname, frozenset(addresses), frozenset(),
                       addresses, ambiguous)


def _system_library(path: str) -> LibraryFile | None:
    """A library of the ld.so cache (the admin's files), opened by the service itself."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_LIBRARY_BYTES:
            return None
        return _judge(fd, st, os.path.realpath(path), _shown(path))
    except RequestRefused:
        return None
    finally:
        os.close(fd)


class Resolver:
    """Resolves one request's patterns against this host, counting against ``cap``."""

    def __init__(self, *, catalog: dict, host: HostInfo, passed: list[tuple[str, LibraryFile]],
                 cap: int, cap_reason: str):
        self.catalog = catalog
        self.host = host
        self.passed = passed
        self.cap = cap
        self.cap_reason = cap_reason
        self.count = 0
        self.ids: dict[str, dict] = {}
        # (kind, target, library) -> id: one probe per object, whichever pattern or set
        # reached it first
        self.seen: dict[tuple, str] = {}
        self._known = _catalog_index(catalog)
        self._categories: dict[tuple[int, int], str] = {}
        self._args_deadline: float | None = None

    def already(self, probes: list[dict]) -> None:
        """Probes the request's sets already hold: patterns reaching them add nothing."""
        for probe in probes:
            self.ids[probe["id"]] = probe
            self.seen[_key(probe)] = probe["id"]

    def resolve(self, patterns: list[dict]) -> list[PatternResult]:
        results = []
        for item in patterns:
            kind, pattern = item["kind"], item["pattern"]
            resolver = RESOLVERS.get(kind)
            if resolver is None:
                raise _refuse(kind, pattern, f"patterns of kind {kind!r} are not supported by "
                              "this signing service")
            results.append(resolver(self, pattern))
        return results

    def _count(self, kind: str, pattern: str, n: int, what: str) -> None:
        """Count ``n`` matches (``what``: "system call(s) of this kernel") against the cap."""
        if n == 0:
            raise _refuse(kind, pattern, "it matches no " + what.replace("(s)", ""))
        what = what.replace("(s)", "" if n == 1 else "s")
        self.count += n
        if self.count > self.cap:
            raise _refuse(kind, pattern, f"it matches {n} {what}, which makes "
                          f"{self.count} probes in all, more than {self.cap} "
                          f"({self.cap_reason}); narrow the pattern")

    def _unique_id(self, base: str, probe: dict) -> str:
        base = re.sub(r"[^a-z0-9_.-]", "_", base.lower())
        if len(base) > 64:
            base = base[:55] + "-" + hashlib.sha1(base.encode()).hexdigest()[:8]
        candidate, n = base, 2
        while candidate in self.ids:
            suffix = f"-{n}"
            candidate = base[:64 - len(suffix)] + suffix
            n += 1
        self.ids[candidate] = probe
        return candidate

    def _finish(self, probes: list[dict], probe: dict, default_id: str) -> None:
        """Name the probe and keep it, unless a set or an earlier pattern has its object."""
        if _key(probe) in self.seen:
            return
        probe["id"] = self._unique_id(probe.get("id") or default_id, probe)
        self.ids[probe["id"]] = probe
        self.seen[_key(probe)] = probe["id"]
        probes.append(probe)

    # ---- library functions --------------------------------------------------------------

    def uprobe(self, pattern: str) -> PatternResult:
        lib_pattern, glob = split_uprobe(pattern)
        if not _GLOB["uprobe"].match(glob):
            raise _refuse("uprobe", pattern, "the function part may hold letters, digits, "
                          "'_', '.', '$', '@' and the wildcards * ? [ ]")
        libraries = self._libraries(pattern, lib_pattern)
        chosen: list[tuple[LibraryFile, str]] = []
        for lib in libraries:
            chosen += [(lib, name) for name in sorted(lib.addresses)
                       if fnmatch.fnmatchcase(name, glob) and _NAMES["uprobe"].match(name)]
        where = ", ".join(lib.path for lib in libraries)
        self._count("uprobe", pattern, len(chosen), f"exported function(s) of {where}")
        family = lib_pattern if "/" not in lib_pattern and re.match(FAMILY_PATTERN, lib_pattern) \
            and any(c in lib_pattern for c in "*?") else None
        probes = []
        known_of = {(lib.path, name): self._known_uprobe(name, lib) for lib, name in chosen}
        signatures, arguments = self._signatures([(lib, name) for lib, name in chosen
                                                  if known_of[(lib.path, name)] is None])
        for lib, name in chosen:
            known = known_of[(lib.path, name)]
            category = known["category"] if known else self._library_category(lib)
            probe = copy.deepcopy(known) if known else {
                "kind": "uprobe", "target": name, "category": category, "args": {},
                "bytes": None}
            sig = signatures.get((lib.path, name))
            if sig is not None:
                if sig.scalars:
                    probe["scalars"] = sig.scalars
                probe["returns"] = sig.returns
            probe["library"] = lib.path
            probe.pop("family", None)
            if family:
                probe["family"] = family
            self._finish(probes, probe, f"{category}.{name}")
        return PatternResult("uprobe", pattern, probes, libraries, arguments)

    def _signatures(self, wanted: list[tuple[LibraryFile, str]]) -> tuple[dict, list[dict]]:
        """({(library path, function): Signature}, one note per library for the audit
        log) for functions the catalog does not know, from each library's debug info."""
        from .signatures import TIME_BUDGET_S, read_signatures

        if self._args_deadline is None:     # one budget for the whole request
            self._args_deadline = time.monotonic() + TIME_BUDGET_S
        by_lib: dict[str, tuple[LibraryFile, dict]] = {}
        for lib, name in wanted:
            by_lib.setdefault(lib.path, (lib, {}))[1][name] = lib.addresses.get(name, 0)
        found: dict = {}
        notes: list[dict] = []
        for path, (lib, names) in by_lib.items():
            fd, own = lib.fd, False
            if fd < 0:              # a library of the ld.so cache: root's file, by its path
                try:
                    fd, own = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), True
                    st = os.fstat(fd)
                except OSError as exc:
                    notes.append({"library": path, "functions": len(names), "described": 0,
                                  "why": exc.strerror})
                    continue
                if (st.st_dev, st.st_ino) != (lib.dev, lib.ino):
                    os.close(fd)
                    notes.append({"library": path, "functions": len(names), "described": 0,
                                  "why": "the file was replaced while the request was read"})
                    continue
            try:
                sigs = read_signatures(fd, names, budget_s=max(
                    0.0, self._args_deadline - time.monotonic()))
            finally:
                if own:
                    os.close(fd)
            for name, sig in sigs.found.items():
                found[(path, name)] = sig
            note = {"library": path, "functions": len(names), "described": len(sigs.found)}
            if sigs.missing:
                note["why"] = sigs.missing
            notes.append(note)
        return found, notes

    def _libraries(self, pattern: str, lib_pattern: str) -> list[LibraryFile]:
        if lib_pattern.startswith("/"):
            parts = lib_pattern.split("/")[1:]
            if any(p in ("", ".", "..") for p in parts):
                raise _refuse("uprobe", pattern, "the library path has an empty, '.' or '..' "
                              "component; give the library's plain absolute path")
            found = [lib for claimed, lib in self.passed
                     if fnmatch.fnmatchcase(claimed, lib_pattern)]
            if not found:
                raise _refuse("uprobe", pattern, f"no open file was passed for {lib_pattern} "
                              "(the signing service never opens a path you name: "
                              "`datacrumbs probes generate` opens it as you and passes it)")
            return _unique_files(found)
        if "/" in lib_pattern:
            raise _refuse("uprobe", pattern, "the library is an absolute path, or a soname or "
                          "family pattern such as libhdf5*.so*")
        if not (_SONAME.match(lib_pattern) or re.match(FAMILY_PATTERN, lib_pattern)):
            raise _refuse("uprobe", pattern, "the library family must begin with at least three "
                          "literal characters and name a .so (e.g. libhdf5*.so*)")
        paths = sorted({path for soname, path in ldconfig_cache().items()
                        if fnmatch.fnmatchcase(soname, lib_pattern)
                        or fnmatch.fnmatchcase(os.path.basename(path), lib_pattern)})
        files, seen = [], set()
        for path in paths:
            lib = _system_library(path)
            if lib is None or (lib.dev, lib.ino) in seen:
                continue
            seen.add((lib.dev, lib.ino))
            files.append(lib)
            if len(files) > MAX_FAMILY_FILES:
                raise _refuse("uprobe", pattern, f"{lib_pattern} names more than "
                              f"{MAX_FAMILY_FILES} different libraries of this host; name one "
                              "library's builds")
        if not files:
            raise _refuse("uprobe", pattern, f"no library of this host (`ldconfig -p`) matches "
                          f"{lib_pattern}; give the library's absolute path")
        return files

    def _known_uprobe(self, name: str, lib: LibraryFile) -> dict | None:
        for probe in self._known.get(("uprobe", name), ()):
            library = os.path.basename(probe.get("library", ""))
            if library in (os.path.basename(lib.path), lib.soname) or \
                    in_family(probe.get("family"), lib.path, lib.soname):
                return probe
        return None

    def _library_category(self, lib: LibraryFile) -> str:
        key = (lib.dev, lib.ino)
        if key not in self._categories:
            self._categories[key] = self._find_category(lib)
        return self._categories[key]

    def _find_category(self, lib: LibraryFile) -> str:
        for (kind, _name), probes in self._known.items():
            if kind != "uprobe":
                continue
            for probe in probes:
                library = os.path.basename(probe.get("library", ""))
                if library in (os.path.basename(lib.path), lib.soname) or \
                        in_family(probe.get("family"), lib.path, lib.soname):
                    return probe["category"]
        return _category(re.sub(r"^lib", "", (lib.soname or os.path.basename(lib.path))
                                .split(".so")[0]), "LIB")

    # ---- system calls, tracepoints, kernel functions -----------------------------------

    def syscall(self, pattern: str) -> PatternResult:
        if not _GLOB["syscall"].match(pattern):
            raise _refuse("syscall", pattern, "a system call pattern holds a-z, 0-9, '_' and "
                          "the wildcards * ? [ ]")
        if platform.machine() != "x86_64":
            raise _refuse("syscall", pattern, "system call numbers are known only for x86_64")
        events = self.host.tracefs / "events" / "syscalls" if self.host.tracefs else None
        names = [n for n in SYSCALLS_X86_64 if fnmatch.fnmatchcase(n, pattern)
                 and (events is None
                      or (events / syscall_tracepoint(n).split(":")[1]).is_dir())]
        self._count("syscall", pattern, len(names), "system call(s) of this kernel")
        probes = []
        for name in sorted(names, key=SYSCALLS_X86_64.get):
            self._add(probes, "syscall", name, "SYSCALL", f"syscall.{name}")
        return PatternResult("syscall", pattern, probes)

    def tracepoint(self, pattern: str) -> PatternResult:
        if not _GLOB["tracepoint"].match(pattern):
            raise _refuse("tracepoint", pattern, "write it as CATEGORY:NAME (a-z, 0-9, '_' "
                          "and the wildcards * ? [ ]), e.g. 'ext4:*'")
        if self.host.tracefs is None:
            raise _refuse("tracepoint", pattern, "tracefs is not readable here, so tracepoints "
                          "cannot be listed (it is root's: with --sign the signing service "
                          "lists them)")
        cat_glob, name_glob = pattern.split(":")
        events = self.host.tracefs / "events"
        found = []
        for cat in sorted(os.listdir(events)):
            if not fnmatch.fnmatchcase(cat, cat_glob) or not (events / cat).is_dir():
                continue
            for name in sorted(os.listdir(events / cat)):
                target = f"{cat}:{name}"
                if fnmatch.fnmatchcase(name, name_glob) and _NAMES["tracepoint"].match(target) \
                        and (events / cat / name / "format").exists():
                    found.append((cat, name))
        self._count("tracepoint", pattern, len(found), "tracepoint(s) of this kernel")
        probes = []
        for cat, name in found:
            self._add(probes, "tracepoint", f"{cat}:{name}", _category(cat, "TP"),
                      f"{cat}.{name}")
        return PatternResult("tracepoint", pattern, probes)

    def kfunc(self, pattern: str) -> PatternResult:
        if not _GLOB["kfunc"].match(pattern):
            raise _refuse("kfunc", pattern, "a kernel function pattern holds letters, digits, "
                          "'_', '.' and the wildcards * ? [ ]")
        mechanism, why = kernel_function_support(self.host)
        if mechanism is None:
            raise _refuse("kfunc", pattern, why)
        names = resolve_kfuncs(pattern, self._kernel_functions())
        self._count("kfunc", pattern, len(names), "traceable kernel function(s)")
        probes = []
        for name in names:
            self._add(probes, "kprobe", name, "KERNEL", f"kernel.{name}")
        return PatternResult("kfunc", pattern, probes)

    def _kernel_functions(self) -> frozenset[str]:
        functions = _traceable_functions(str(self.host.tracefs or "/sys/kernel/tracing"))
        return functions - _kprobe_blacklist()

    def _add(self, probes: list[dict], kind: str, target: str, category: str,
             default_id: str) -> None:
        """The catalog's definition of (kind, target) when it has one (its argument
        roles), else one traced with time and return value only; kept by _finish."""
        known = self._known.get((kind, target))
        probe = copy.deepcopy(known[0]) if known else {
            "kind": kind, "target": target, "category": category, "args": {}, "bytes": None}
        self._finish(probes, probe, default_id)


RESOLVERS = {"uprobe": Resolver.uprobe, "syscall": Resolver.syscall,
             "tracepoint": Resolver.tracepoint, "kfunc": Resolver.kfunc}


def _catalog_index(catalog: dict) -> dict[tuple[str, str], list[dict]]:
    """(kind, target) -> the catalog's probes for it, in set order: their definitions
    (argument roles, byte rules) are used for the functions a pattern reaches."""
    index: dict[tuple[str, str], list[dict]] = {}
    for name in sorted(catalog):
        probe_set = catalog[name]
        for probe in probe_set.probes:
            probe = with_family(dict(probe), probe_set.families)
            index.setdefault((probe["kind"], probe["target"]), []).append(probe)
    return index


def _key(probe: dict) -> tuple:
    return probe["kind"], probe["target"], probe.get("library")


def _category(name: str, fallback: str) -> str:
    text = re.sub(r"[^A-Z0-9_]", "_", name.upper())[:32]
    return text if re.match(r"^[A-Z]", text) else (fallback + "_" + text)[:32]


def _unique_files(libraries: list[LibraryFile]) -> list[LibraryFile]:
    seen, out = set(), []
    for lib in libraries:
        if (lib.dev, lib.ino) not in seen:
            seen.add((lib.dev, lib.ino))
            out.append(lib)
    return out


def kernel_function_support(host: HostInfo) -> tuple[str | None, str | None]:
    """("kprobe", None) where kernel functions can be traced, else (None, the reason).

    The engine attaches kernel functions through kprobes only, so kprobes decide.
    fentry/fexit (BTF trampolines) are not probed here: that takes a bpf() call, which
    the signing unit's system call filter answers by killing the service; and on the
    project's machine they fail to load (EPERM) although the kernel is built with them."""
    if host.kprobes:
        return "kprobe", None
    why = ("CONFIG_KPROBES is not set" if "CONFIG_KPROBES" in (host.kprobes_reason or "")
           else "not available")
    return None, (f"this kernel has no kprobes ({why}), and datacrumbs traces kernel "
                  "functions through kprobes only (not through fentry/fexit), so no kernel "
                  "function can be traced here; use --tracepoint")


def resolve_kfuncs(pattern: str, symbols) -> list[str]:
    """The kernel functions ``pattern`` names in ``symbols`` (the traceable ones), sorted;
    compiler clones (``.isra.0``, ``.constprop.0``) are left out: they are not the
    function a user names."""
    return sorted(s for s in set(symbols)
                  if fnmatch.fnmatchcase(s, pattern) and _NAMES["kprobe"].match(s)
                  and "." not in s)


def _kprobe_blacklist() -> frozenset[str]:
    for path in ("/sys/kernel/debug/kprobes/blacklist",):
        try:
            with open(path) as f:
                return frozenset(line.split()[-1] for line in f if line.strip())
        except OSError:
            continue
    return frozenset()


def resolve_here(patterns: list[dict], *, catalog: dict, host: HostInfo, existing: list[dict],
                 cap: int) -> list[PatternResult]:
    """Resolve patterns in this process, as the user (``probes generate`` without --sign):
    the same rules as the service, with the user's own view of files and tracefs."""
    from .client import pattern_libraries

    sent, files = pattern_libraries(patterns)
    passed, fds = [], []
    try:
        for path in files:      # open until resolved: their debug info is read from them
            fds.append(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
            passed.append((path, pattern_library(fds[-1], path)))
        resolver = Resolver(catalog=catalog, host=host, passed=passed, cap=cap,
                            cap_reason="the site's max_probes")
        resolver.count = len(existing)
        resolver.already(existing)
        return resolver.resolve(sent)
    finally:
        for fd in fds:
            os.close(fd)
