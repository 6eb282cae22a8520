"""Libraries of a signed family that the job's processes really map.

A signed library probe names the file it was bound to and, when the set gives
one, its library family (``libhdf5*.so*``). A job may map another member: the
libhdf5 bundled in h5py's wheel (``h5py.libs/libhdf5-<hash>.so.310``), an MPI
it dlopen()s. Uprobes live on inodes, so the tracer has to find those files:
it reads ``/proc/<pid>/maps`` of the job's processes (at start and then
periodically, which also catches dlopen() after start) and keeps the
executable mappings whose file name matches a family.

What is attached is decided here, never by the mapped file's name alone: the
file is opened through ``/proc/<pid>/map_files`` (the very inode mapped, not
whatever the path names now), must be a regular x86-64 ELF shared object of
bounded size, and must export some of the family's probed functions; the
probe definitions (argument roles, byte rules) stay the signed ones. The BPF
scope keeps other processes mapping the same inode out of the trace.

A scan every 0.25 s alone would miss the calls a process makes right after a
dlopen() (a minimal h5py script creates its file about 50 ms after libhdf5 is
mapped): a process that maps an unjudged member through the dynamic linker is
held at its debugger hook until the probes are on it (dlhold.py); the scan
stays as the safety net for what the hook does not see.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import platform
import stat
from dataclasses import dataclass, field

MAX_MAPS_BYTES = 8 << 20          # a process with 100,000 mappings: read no more
MAX_LIBRARY_BYTES = 512 << 20     # as the signing service: no real library is larger
MAX_LIBRARIES = 64                # files judged per run (each costs an ELF parse)
# The root tracer parses files any job user can write: whatever a parser raises on a
# hostile file (pyelftools' bundled construct raises its own ConstructError too) means
# "not a library to attach to", never a dead tracer.
_ELF_ERRORS = (Exception,)


@dataclass(frozen=True)
class Mapping:
    """An executable file mapping of a process whose file name matches a family."""

    pid: int
    start: str                  # hex, as in maps: names the map_files entry
    end: str
    key: tuple[int, int, int]   # (major, minor, inode) as maps reports them
    path: str
    family: str


@dataclass
class LibraryRecord:
    """What happened to one library file of a family (for the summary)."""

    path: str
    family: str
    status: str                  # "attached", "not attached" or "skipped"
    pid: int = 0                 # the first process seen mapping it
    dev: int | None = None
    ino: int | None = None
    build_id: str | None = None
    functions: int = 0           # probes attached on it
    reason: str | None = None    # why not attached / skipped
    signed: bool = False         # the file the probes were bound to at signing
    links: str | None = None

    def as_dict(self) -> dict:
        out = {"path": self.path, "family": self.family, "status": self.status}
        for name in ("dev", "ino", "build_id", "reason", "links"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.pid:
            out["pid"] = self.pid
        if self.status == "attached":
            out["functions"] = self.functions
        if self.signed:
            out["signed"] = True
        return out


def literal_prefix(pattern: str) -> str:
    """What every name a shell pattern matches begins with."""
    for i, ch in enumerate(pattern):
        if ch in "*?[":
            return pattern[:i]
    return pattern


@dataclass
class MapScanner:
    """Finds new family mappings in processes' maps; each file (maps' device and inode)
    is reported once per run."""

    families: list[str]
    seen: set = field(default_factory=set)
    # pid -> its virtual memory size at the last read of its maps: mapping a library grows
    # it, and /proc/<pid>/stat costs a small fraction of maps (no path per mapping)
    sizes: dict = field(default_factory=dict)

    def __post_init__(self):
        self._needles = sorted({literal_prefix(f).encode() for f in self.families})

    def scan(self, pid: int, *, force: bool = False) -> list[Mapping]:
        """New family mappings of ``pid``; its maps are read only when its size changed
        since the last read (or with ``force``: a dlopen() and an munmap() of the same
        size between two scans would hide the library until the next forced scan)."""
        size = vm_size(pid)
        if size is None:
            self.sizes.pop(pid, None)
            return []
        if not force and self.sizes.get(pid) == size:
            return []
        if len(self.sizes) >= 65536:
            self.sizes.clear()
        self.sizes[pid] = size
        text = read_maps(pid)
        if not text or not any(n in text for n in self._needles):
            return []       # the common case: one substring test per family, in C
        found = []
        for line in _lines_with(text, self._needles):
            parts = line.split(None, 5)
            if len(parts) < 6 or not parts[5].startswith(b"/"):
                continue
            try:
                major, minor = (int(x, 16) for x in parts[3].split(b":"))
                key = (major, minor, int(parts[4]))
            except ValueError:
                continue
            if key in self.seen:
                continue
            path = os.fsdecode(parts[5])
            if path.endswith(" (deleted)"):
                path = path[:-len(" (deleted)")]
            name = os.path.basename(path)
            family = next((f for f in self.families if fnmatch.fnmatchcase(name, f)), None)
            if family is None:
                continue
            if b"x" not in parts[1]:
                # ld.so maps the whole file first, its code a moment later at the same
                # size: read these maps again next time
                self.sizes.pop(pid, None)
                continue
            self.seen.add(key)
            start, _, end = os.fsdecode(parts[0]).partition("-")
            found.append(Mapping(pid, start, end, key, path, family))
        return found


def _lines_with(text: bytes, needles) -> list[bytes]:
    """The lines of ``text`` holding one of ``needles`` (bytes.find: a few µs for a
    maps file of 300 lines, where a regex or splitting every line costs 0.2-0.6 ms)."""
    lines: dict[int, bytes] = {}
    for needle in needles:
        i = text.find(needle)
        while i >= 0:
            start = text.rfind(b"\n", 0, i) + 1
            end = text.find(b"\n", i)
            end = len(text) if end < 0 else end
            lines[start] = text[start:end]
            i = text.find(needle, end)
    return [lines[k] for k in sorted(lines)]


def vm_size(pid: int) -> int | None:
    """The process's virtual memory size in bytes (/proc/<pid>/stat field 23), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read(4096)
        return int(raw[raw.rindex(b")") + 2:].split()[20])
    except (OSError, ValueError, IndexError):
        return None


def read_maps(pid: int) -> bytes:
    """``/proc/<pid>/maps`` (bounded), or b"" when the process is gone or hidden."""
    try:
        fd = os.open(f"/proc/{pid}/maps", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        chunks, size = [], 0
        while size < MAX_MAPS_BYTES:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    except OSError:
        return b""
    finally:
        os.close(fd)


def open_mapped(m: Mapping) -> int:
    """A read-only descriptor of the very file ``m`` maps (map_files names the mapping's
    inode, whatever its path names now); else its path, if that is still the same
    inode. Raises OSError saying why not."""
    try:
        return os.open(f"/proc/{m.pid}/map_files/{m.start}-{m.end}",
                       os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENOENT and not os.path.exists(f"/proc/{m.pid}"):
            raise
    fd = os.open(m.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW)
    st = os.fstat(fd)
    if (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino) != m.key:
        os.close(fd)
        raise OSError(errno.ESTALE, "the file at that path is not the one the process maps")
    return fd


def exported_offsets(fd: int, names) -> tuple[dict[str, int] | None, str | None]:
    """({name: file offset} of the ``names`` the file exports as functions, None), or
    (None, why the tracer may not attach to it): a regular x86-64 ELF shared object of
    bounded size. Names are looked up in the dynamic symbols' hash table (a few
    milliseconds for libhdf5's 3,000 functions, where reading them all takes half a
    second: calls made meanwhile would be missed); without one, they are all read."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        return None, "not a regular file"
    if st.st_size > MAX_LIBRARY_BYTES:
        return None, f"larger than {MAX_LIBRARY_BYTES} bytes"
    from elftools.elf.elffile import ELFFile    # here: a start without families needs none

    try:
        with os.fdopen(os.dup(fd), "rb") as f:
            elf = ELFFile(f)
            if elf["e_type"] != "ET_DYN":
                return None, "not an ELF shared library"
            if platform.machine() == "x86_64" and elf["e_machine"] != "EM_X86_64":
                return None, f"built for {elf['e_machine']}, not x86-64"
            loads = [(seg["p_vaddr"], seg["p_vaddr"] + seg["p_memsz"], seg["p_offset"])
                     for seg in elf.iter_segments() if seg["p_type"] == "PT_LOAD"]
            table = elf.get_section_by_name(".gnu.hash") or elf.get_section_by_name(".hash")
            if table is None or not hasattr(table, "get_symbol"):
                table = elf.get_section_by_name(".dynsym")
                if table is None:
                    return None, "exports no functions (no dynamic symbols)"
                wanted = set(names)
                symbols = {sym.name: sym for sym in table.iter_symbols() if sym.name in wanted}
                lookup = symbols.get
            else:
                lookup = table.get_symbol
            found = {}
            for name in names:
                sym = lookup(name)
                if sym is None or sym["st_shndx"] == "SHN_UNDEF" or \
                        sym["st_info"]["type"] != "STT_FUNC" or not sym["st_value"]:
                    continue
                value = sym["st_value"]
                offset = next((value - lo + off for lo, hi, off in loads if lo <= value < hi), -1)
                if offset > 0:
                    found[name] = offset
            return found, None
    except _ELF_ERRORS:
        return None, "not an ELF shared library"


def build_id(fd: int) -> str | None:
    """The GNU build id (hex) of an ELF file, when it has one."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import NoteSection

    try:
        with os.fdopen(os.dup(fd), "rb") as f:
            elf = ELFFile(f)
            for section in elf.iter_sections():
                if isinstance(section, NoteSection):
                    for note in section.iter_notes():
                        if note["n_type"] == "NT_GNU_BUILD_ID":
                            return str(note["n_desc"])
    except _ELF_ERRORS:
        return None
    return None


def cgroup_pids(directory) -> set[int]:
    """Processes of a cgroup v2 directory and its descendants (bounded)."""
    pids: set[int] = set()
    dirs = 0
    for root, subdirs, _files in os.walk(directory):
        dirs += 1
        if dirs > 10000:
            break
        try:
            with open(os.path.join(root, "cgroup.procs"), encoding="ascii") as f:
                pids.update(int(x) for x in f.read().split())
        except (OSError, ValueError):
            continue
    return pids


def uid_pids(uid: int) -> set[int]:
    """Processes whose real uid is ``uid`` (/proc's directories are owned by it)."""
    out = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid:
                    out.add(int(name))
            except OSError:
                continue
    return out


def runs_as(pid: int, uid: int) -> bool:
    """All four uids of the process are ``uid`` (what the user could ptrace, roughly):
    the tracer does not look into another user's or a set-uid program's mappings."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return all(int(x) == uid for x in line.split()[1:5])
    except (OSError, ValueError):
        return False
    return False
