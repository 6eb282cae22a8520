"""What the signing service signs for a request: the catalog's probes, bound to real files.

A request names probe sets and hands over library files as descriptors the
user opened herself. Every probe definition (argument roles, byte formulas)
is the catalog's, so nothing a user writes decides which memory the root
tracer reads; the user only chooses which sets, and which copy of a library
the sets' library probes attach to. Library files are identified by device
and inode, so the policy judges the file whatever path or link named it.
"""

from __future__ import annotations

import copy
import errno
import os
import platform
import stat
from dataclasses import dataclass, field

from elftools.common.exceptions import ELFError

from ..errors import DatacrumbsError
from ..probes.host_check import (HostInfo, LibraryResolver, check_probe, elf_info_fd,
                                 in_family, ldconfig_cache, merge_aliases)

# Larger than any real library (libmpich is about 20 MB): parsing stays bounded.
MAX_LIBRARY_BYTES = 512 << 20
LIBRARY_KINDS = ("uprobe", "usdt")


class RequestRefused(DatacrumbsError):
    """A library or set the service cannot use; the message says which and why."""


@dataclass(frozen=True)
class LibraryFile:
    path: str                    # absolute, as the tracer will open it
    dev: int
    ino: int
    soname: str | None
    functions: frozenset = frozenset()
    usdt: frozenset = frozenset()
    addresses: dict = field(default_factory=dict, compare=False, hash=False)
    ambiguous: frozenset = field(default=frozenset(), compare=False, hash=False)
    # its USDT notes (probes/usdt.py Note), read from the descriptor: a catalog usdt
    # probe bound to this file is signed with its sites
    notes: tuple = field(default=(), compare=False, hash=False)
    # the descriptor a user passed (open for the request), -1 for the admin's files: the
    # service reads its debug info from it, never from a path (signing/signatures.py)
    fd: int = field(default=-1, compare=False, hash=False)


@dataclass
class Resolved:
    probes: list[dict]                       # what will be signed
    dropped: list[dict]                      # {"id", "reason"}: cannot attach on this host
    libraries: dict[str, LibraryFile]        # by path, for the policy
    # (probe, the probe it was merged into): one function of one file, one probe
    merged: list[tuple[dict, dict]] = field(default_factory=list)


def _shown(path: str) -> str:
    return path if path.isprintable() else repr(path)


def opened_library(fd: int, claimed: str) -> tuple[os.stat_result, str, str]:
    """(stat, path, name to show) of a descriptor a user passed as a library: a regular
    file of a library's size that the service finds under a stable path; else refused."""
    shown = _shown(claimed)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise RequestRefused(f"library {shown} is not a regular file; pass the library's file")
    if st.st_size > MAX_LIBRARY_BYTES:
        raise RequestRefused(f"library {shown} is larger than {MAX_LIBRARY_BYTES} bytes; "
                             "that is not a shared library")
    path = _path_of(fd, claimed, st)
    if path is None:
        raise RequestRefused(f"library {shown}: the signing service cannot find the file you "
                             "opened under that name (was it moved or replaced?); give a "
                             "stable absolute path")
    return st, path, shown


def library_file(fd: int, claimed: str) -> LibraryFile:
    """Judge an open file as a library: a regular x86-64 ELF with dynamic symbols.

    The path recorded is one under which the service itself finds this very
    file (same device and inode): the claimed path, else the kernel's name for
    the descriptor. Where the service may not look (a directory only the user
    can enter), the kernel's name is taken as it is.
    """
    st, path, shown = opened_library(fd, claimed)
    try:
        info = elf_info_fd(fd)
    except (ELFError, ValueError, OSError, EOFError, KeyError, IndexError, TypeError,
            AttributeError, AssertionError, UnicodeDecodeError):
        raise RequestRefused(f"library {shown} is not an ELF shared library") from None
    if not info.functions:
        raise RequestRefused(f"library {shown} exports no functions (no dynamic symbols); "
                             "it is not a shared library")
    if platform.machine() == "x86_64" and info.machine != "EM_X86_64":
        raise RequestRefused(f"library {shown} is built for {info.machine}, not x86-64")
    notes = ()
    if info.usdt:
        from ..probes.usdt import read_notes_fd
        try:
            notes = tuple(read_notes_fd(fd))
        except (ELFError, ValueError, OSError, EOFError, KeyError, IndexError, TypeError,
                AttributeError, AssertionError, UnicodeDecodeError):
            notes = ()
    return LibraryFile(path, st.st_dev, st.st_ino, info.soname, info.functions, info.usdt,
                       info.addresses, info.ambiguous, notes)


def _path_of(fd: int, claimed: str, st: os.stat_result) -> str | None:
    try:
        kernel_name = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        kernel_name = ""
    hidden = None
    for candidate in (claimed, kernel_name):
        if not candidate.startswith("/"):
            continue
        try:
            real = os.path.realpath(candidate, strict=True)
            here = os.stat(real)
        except OSError as exc:
            if candidate == kernel_name and exc.errno in (errno.EACCES, errno.EPERM):
                hidden = candidate
            continue
        if (here.st_dev, here.st_ino) == (st.st_dev, st.st_ino):
            return real
    if hidden and not hidden.endswith(" (deleted)"):
        return hidden
    return None


def _open_catalog_library(path: str) -> LibraryFile | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return library_file(fd, path)
    except RequestRefused:
        return None
    finally:
        os.close(fd)


def resolve(catalog_probes: list[dict], user_libraries: list[LibraryFile],
            host: HostInfo) -> Resolved:
    """Bind the catalog's probes to this host: libraries to files, others checked here.

    A user's library replaces the catalog's library of the same soname or file
    name, as ``--library`` always did. Uprobes that reach one function of one file
    (fopen and fopen64 in glibc) become one probe with ``aliases`` (merge_aliases).
    """
    overrides: dict[str, LibraryFile] = {}
    for lib in user_libraries:
        overrides[os.path.basename(lib.path)] = lib
        if lib.soname:
            overrides[lib.soname] = lib
    _refuse_unused(user_libraries, catalog_probes)
    files: dict[str, LibraryFile] = {}
    opened: dict[str, LibraryFile | None] = {}
    probes, dropped = [], []
    no_libraries = LibraryResolver()
    for probe in catalog_probes:
        kind = probe["kind"]
        if kind not in LIBRARY_KINDS:
            kept, reason = check_probe(probe, host, no_libraries)
            if kept is None:
                dropped.append({"id": probe["id"], "reason": reason})
            else:
                probes.append(kept)
            continue
        name = probe["library"]
        lib = overrides.get(os.path.basename(name) if name.startswith("/") else name)
        if lib is None and probe.get("family"):
            lib = next((u for u in user_libraries
                        if in_family(probe["family"], u.path, u.soname)), None)
        if lib is None:
            path = name if name.startswith("/") else ldconfig_cache().get(name)
            if path is not None and path not in opened:
                opened[path] = _open_catalog_library(path)
            lib = opened.get(path) if path else None
        if lib is None:
            dropped.append({"id": probe["id"], "reason": f"library {name} not found on this host "
                            "(not in `ldconfig -p`; give its path with --library)"})
            continue
        target = probe["target"]
        if kind == "uprobe" and target not in lib.functions:
            dropped.append({"id": probe["id"], "reason": f"{lib.path} does not export function "
                            f"{target}"})
            continue
        if kind == "usdt" and target not in lib.usdt:
            dropped.append({"id": probe["id"], "reason": f"{lib.path} has no USDT probe {target}"})
            continue
        bound = copy.deepcopy(probe)
        bound["library"] = lib.path
        if kind == "usdt":
            from ..probes.usdt import sites_of
            sites = [n for n in lib.notes if n.target == target]
            if not sites:
                dropped.append({"id": probe["id"], "reason": f"{lib.path}: the USDT probe "
                                f"{target} has no site a uprobe can reach"})
                continue
            bound["sites"] = sites_of(sites)
        files[lib.path] = lib
        probes.append(bound)
    probes, merged = merge_aliases(probes, lambda p: _code_address(files[p["library"]], p))
    return Resolved(probes, dropped, files, merged)


def _refuse_unused(user_libraries: list[LibraryFile], catalog_probes: list[dict]) -> None:
    """A library the request passes must stand for a library of the chosen sets (same
    soname or file name, or one of their families): anything else would be silently
    unused, and a user would believe it traced."""
    names = {os.path.basename(p["library"]) for p in catalog_probes
             if p.get("kind") in LIBRARY_KINDS and p.get("library")}
    families = sorted({p["family"] for p in catalog_probes if p.get("family")})
    for lib in user_libraries:
        if {os.path.basename(lib.path), lib.soname} & names:
            continue
        if any(in_family(f, lib.path, lib.soname) for f in families):
            continue
        wanted = ", ".join(sorted(names | set(families))) or "none"
        raise RequestRefused(f"library {_shown(lib.path)} is not a library of the chosen sets "
                             f"(their libraries and families: {wanted})")


def _code_address(lib: LibraryFile, probe: dict):
    """(device, inode, address) of the function a bound uprobe reaches (its name for
    the address when the name has several)."""
    target = probe["target"]
    if target in lib.ambiguous or target not in lib.addresses:
        return lib.dev, lib.ino, target     # address unknown: one name is one function
    return lib.dev, lib.ino, lib.addresses[target]


# ---- USDT probes by pattern (--usdt LIB:PROVIDER:NAME) ------------------------------------

MAX_USDT_PATTERNS = 16


def usdt_file(fd: int, claimed: str) -> tuple[LibraryFile, list]:
    """Judge an open file for its USDT notes: a regular x86-64 ELF file (a program or a
    library) with at least one; (its LibraryFile, its notes)."""
    from ..probes import usdt

    shown = _shown(claimed)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise RequestRefused(f"--usdt {shown} is not a regular file")
    if st.st_size > MAX_LIBRARY_BYTES:
        raise RequestRefused(f"--usdt {shown} is larger than {MAX_LIBRARY_BYTES} bytes")
    path = _path_of(fd, claimed, st)
    if path is None:
        raise RequestRefused(f"--usdt {shown}: the signing service cannot find the file you "
                             "opened under that name (was it moved or replaced?); give a "
                             "stable absolute path")
    try:
        info = elf_info_fd(fd)
        notes = usdt.read_notes_fd(fd)
    except (ELFError, ValueError, OSError, EOFError, KeyError, IndexError, TypeError,
            AttributeError, AssertionError, UnicodeDecodeError):
        raise RequestRefused(f"--usdt {shown} is not an ELF file") from None
    if platform.machine() == "x86_64" and info.machine != "EM_X86_64":
        raise RequestRefused(f"--usdt {shown} is built for {info.machine}, not x86-64")
    if not notes:
        raise RequestRefused(f"--usdt {shown} has no USDT probes (no .note.stapsdt notes)")
    return (LibraryFile(path, st.st_dev, st.st_ino, info.soname, frozenset(),
                        frozenset(n.target for n in notes)), notes)


def _usdt_cache_files(pattern: str) -> list[tuple[int, str]]:
    """Open the ld.so cache's libraries whose soname or file name matches ``pattern``
    (only files every user may read: the service reads them as root); [(fd, path)]."""
    import fnmatch

    seen, out = set(), []
    for soname, path in sorted(ldconfig_cache().items()):
        if not (fnmatch.fnmatchcase(soname, pattern)
                or fnmatch.fnmatchcase(os.path.basename(path), pattern)):
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) in seen or not st.st_mode & stat.S_IROTH:
            os.close(fd)
            continue
        seen.add((st.st_dev, st.st_ino))
        out.append((fd, path))
    return out


def usdt_probes(patterns: list[str], fds: list[int], taken: set[str]
                ) -> tuple[list[dict], dict[str, LibraryFile]]:
    """Probe definitions for ``--usdt LIB:PROVIDER:NAME`` patterns: one ``usdt`` probe per
    matching ``provider:name`` of each file, with every site of it. A LIB that is a path
    comes as the next of ``fds`` (opened by the user); any other LIB is a soname or file
    name pattern over the ld.so cache. ``taken``: probe ids already used (joined).
    Raises RequestRefused for a pattern that gives nothing, with the reason."""
    from ..probes import usdt

    if len(patterns) > MAX_USDT_PATTERNS:
        raise RequestRefused(f"at most {MAX_USDT_PATTERNS} --usdt patterns in one request")
    probes, files = [], {}
    done: set = set()
    given = iter(fds)
    for pattern in patterns:
        try:
            lib, provider, name = usdt.split_pattern(pattern)
        except usdt.UsdtError as exc:
            raise RequestRefused(str(exc)) from None
        opened_here = []
        if lib.startswith("/"):
            fd = next(given, None)
            if fd is None:
                raise RequestRefused(f"--usdt {_shown(pattern)}: the file was not passed "
                                     "with the request; use `datacrumbs probes generate --usdt`")
            candidates = [(fd, lib)]
        else:
            candidates = opened_here = _usdt_cache_files(lib)
            if not candidates:
                raise RequestRefused(f"--usdt {_shown(pattern)}: no library in the ld.so cache "
                                     f"matches {_shown(lib)}; give the file's path")
        found = 0
        try:
            for fd, claimed in candidates:
                try:
                    libfile, notes = usdt_file(fd, claimed)
                except RequestRefused:
                    if lib.startswith("/"):
                        raise
                    continue        # a library of the pattern without notes
                for target, sites in usdt.matching(notes, provider, name).items():
                    found += 1
                    if (libfile.dev, libfile.ino, target) in done:
                        continue
                    done.add((libfile.dev, libfile.ino, target))
                    files[libfile.path] = libfile
                    probes.append({"id": usdt.probe_id(target, taken), "kind": "usdt",
                                   "target": target, "library": libfile.path,
                                   "category": "USDT", "args": {}, "bytes": None,
                                   "sites": usdt.sites_of(sites)})
        finally:
            for fd, _path in opened_here:
                os.close(fd)
        if not found and lib.startswith("/"):
            raise RequestRefused(f"--usdt {_shown(pattern)}: {_shown(lib)} has no USDT probe "
                                 f"matching {provider}:{name}")
        if not found:
            raise RequestRefused(f"--usdt {_shown(pattern)}: no library matching {_shown(lib)} "
                                 f"in the ld.so cache has a USDT probe matching "
                                 f"{provider}:{name}")
    if next(given, None) is not None:
        raise RequestRefused("the request passes more open files than its --usdt paths")
    return probes, files
