"""Scalar arguments of library functions the catalog does not know, from their debug info.

A pattern (``--uprobe 'libmyio.so:*'``) reaches functions the catalog has no roles
for. Their integer and pointer arguments are still worth having in the trace (a
descriptor, a count, a flag), but without types nobody knows how many there are or
which register holds which: a ``double`` argument takes no integer register, a
structure passed by value may take one, two or none, a large returned structure
shifts every argument by one. So the service reads the function's DWARF (in the file,
or in the distribution's separate debug file found by build id), maps its parameters
to the x86-64 System V registers, and signs the first four integer-class ones; with
no debug info (or debug info it cannot read in bounded time) the function gets none,
and says why.

Reading registers reads no memory, so a hostile debug section can at worst mislabel
the values of the user's own function's arguments; it is still read within a size
and time budget, and any parse failure means "no arguments", never a traceback.
"""

from __future__ import annotations

import io
import os
import re
import stat
import time
from dataclasses import dataclass, field

#: The integer-class arguments one event can carry (tracer/scalars.py: count, offset,
#: handle and the fd pair of struct dc_event).
MAX_SCALARS = 4
#: The six integer argument registers of the x86-64 System V ABI.
GP_REGISTERS = 6
#: A debug section larger than this is not read (the service answers in seconds).
MAX_DEBUG_BYTES = 32 << 20
#: Children of one function looked at (its parameters, blocks, labels...): a parameter's
#: position is at most 255 anyway.
MAX_CHILDREN = 1024
#: Wall time spent reading one library's debug info.
TIME_BUDGET_S = 5.0
#: Where Debian's -dbgsym (and RHEL's -debuginfo) packages put separate debug files.
DEBUG_ROOT = "/usr/lib/debug/.build-id"

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_QUALIFIERS = ("DW_TAG_typedef", "DW_TAG_const_type", "DW_TAG_volatile_type",
               "DW_TAG_restrict_type", "DW_TAG_atomic_type")
_POINTERS = ("DW_TAG_pointer_type", "DW_TAG_reference_type", "DW_TAG_rvalue_reference_type")
_AGGREGATES = ("DW_TAG_structure_type", "DW_TAG_union_type", "DW_TAG_class_type",
               "DW_TAG_array_type")
_SIGNED = (0x05, 0x06, 0x0d)        # DW_ATE_signed, signed_char, signed_fixed
_INTEGER = (0x02, 0x05, 0x06, 0x07, 0x08, 0x10, 0x0d, 0x0e)   # + boolean, unsigned(_char), UTF
_FLOAT = (0x03, 0x04, 0x09)         # complex_float, float, imaginary_float


@dataclass
class Signature:
    """What a probe of one function records: ``scalars`` as the probe definition holds
    them; ``returns`` the size and sign of its integer result (a C int's upper register
    half is garbage), None for void or a result not in rax (a double, a structure)."""

    scalars: list[dict]
    returns: dict | None = None


@dataclass
class Signatures:
    """The functions found (name -> Signature) and, when none could be, why."""

    found: dict[str, Signature] = field(default_factory=dict)
    missing: str | None = None


class _Stop(Exception):
    """The parameters after this one cannot be placed in registers reliably."""


class _PreadFile(io.RawIOBase):
    """A seekable read-only view of a descriptor through pread: the caller's file
    offset is untouched and a file truncated under us reads short (never SIGBUS,
    as a mapping would)."""

    def __init__(self, fd: int, size: int):
        self._fd, self._size, self._pos = fd, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = (0, self._pos, self._size)[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buf) -> int:
        data = os.pread(self._fd, len(buf), self._pos)
        buf[:len(data)] = data
        self._pos += len(data)
        return len(data)


def read_signatures(fd: int, names: dict[str, int], *, debug_root: str = DEBUG_ROOT,
                    budget_s: float = TIME_BUDGET_S) -> Signatures:
    """The signatures of ``names`` (function -> its address, from .dynsym) in the ELF
    file open on ``fd`` (its own DWARF, else the separate debug file its build id names
    under ``debug_root``)."""
    if not names:
        return Signatures()
    try:
        from elftools.elf.elffile import ELFFile
    except ImportError:         # pragma: no cover - pyelftools is a dependency
        return Signatures(missing="pyelftools is not installed")
    deadline = time.monotonic() + budget_s
    try:
        elf = ELFFile(io.BufferedReader(_PreadFile(fd, os.fstat(fd).st_size), 1 << 16))
        source = elf
        if elf.get_section_by_name(".debug_info") is None:
            source, why = _debug_file(elf, debug_root)
            if source is None:
                return Signatures(missing=why)
        return _read(source, names, deadline)
    except RecursionError:
        return Signatures(missing="its debug info nests too deeply to read")
    except Exception as exc:    # noqa: BLE001 - hostile DWARF: any parser error means none
        return Signatures(missing=f"its debug info cannot be read ({type(exc).__name__})")


def _debug_file(elf, debug_root: str):
    """The separate debug file of ``elf`` by build id, if root installed one."""
    note = elf.get_section_by_name(".note.gnu.build-id")
    build_id = None
    if note is not None:
        for n in note.iter_notes():
            if n["n_type"] == "NT_GNU_BUILD_ID":
                build_id = str(n["n_desc"])
    if not build_id or not re.fullmatch(r"[0-9a-f]{4,128}", build_id):
        return None, "it has no debug info (built without -g, and no build id)"
    path = os.path.join(debug_root, build_id[:2], build_id[2:] + ".debug")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None, (f"it has no debug info (built without -g, and no {path}: install the "
                      "library's debug symbols package)")
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        os.close(fd)
        return None, f"its debug file {path} is not a regular file owned and written by root only"
    from elftools.elf.elffile import ELFFile
    # the descriptor lives as long as the service's request (closed with the process's
    # other request files by the garbage collector of this stream)
    stream = io.BufferedReader(_OwnedPreadFile(fd, st.st_size), 1 << 16)
    debug = ELFFile(stream)
    if debug.get_section_by_name(".debug_info") is None:
        return None, f"its debug file {path} holds no .debug_info"
    return debug, None


class _OwnedPreadFile(_PreadFile):
    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        super().close()

    def __del__(self):
        self.close()


def _read(elf, names: dict[str, int], deadline: float) -> Signatures:
    section = elf.get_section_by_name(".debug_info")
    if section is not None and section.data_size > MAX_DEBUG_BYTES:
        return Signatures(missing=f"its debug info is {section.data_size >> 20} MiB, more "
                                  f"than the {MAX_DEBUG_BYTES >> 20} MiB the service reads")
    dwarf = elf.get_dwarf_info(relocate_dwarf_sections=False)
    out = Signatures()
    by_addr: dict[int, list[str]] = {}
    for name, addr in names.items():
        by_addr.setdefault(addr, []).append(name)
    for cu in _units(dwarf, names):
        seen = 0
        for die in cu.get_top_DIE().iter_children():
            seen += 1
            if not seen % 256 and time.monotonic() > deadline:
                return _late(out)
            if die.tag != "DW_TAG_subprogram" or "DW_AT_declaration" in die.attributes:
                continue
            origin = _origin(die)
            low = die.attributes.get("DW_AT_low_pc")
            # by address first: an alias (pread64) is described under its definition's
            # name (__libc_pread64)
            hits = by_addr.get(low.value, []) if low is not None and \
                isinstance(low.value, int) else []
            if not hits:
                name = _name(origin)
                if name not in names or "DW_AT_external" not in origin.attributes and \
                        "DW_AT_external" not in die.attributes:
                    continue    # not asked for, or a static function of the same name
                hits = [name]
            hits = [h for h in hits if h not in out.found]
            if not hits:
                continue
            sig = _signature(origin, cu)
            if sig is None:
                continue
            for name in hits:
                out.found[name] = sig
            if len(out.found) == len(names):
                return out
        if time.monotonic() > deadline:
            return _late(out)
    if not out.found:
        out.missing = "its debug info does not describe these functions"
    return out


def _late(out: Signatures) -> Signatures:
    """What was read when the time budget ran out: those functions keep their arguments."""
    out.missing = ("its debug info is too large to read in the service's time budget"
                   + (f" (read for {len(out.found)} of the functions)" if out.found else ""))
    return out


def _units(dwarf, names: dict[str, int]):
    """The compile units that hold the functions' addresses (by .debug_aranges: libc's
    debug file has 1,700 units, a pattern needs a few), else every unit."""
    aranges = dwarf.get_aranges() if dwarf.has_debug_info else None
    if aranges is None:
        yield from dwarf.iter_CUs()
        return
    offsets = []
    for addr in names.values():
        off = aranges.cu_offset_at_addr(addr)
        if off is not None and off not in offsets:
            offsets.append(off)
    for off in sorted(offsets):
        yield dwarf.get_CU_at(off)


def _origin(die):
    """An out-of-line copy's abstract instance (which holds the name and parameters)."""
    for attr in ("DW_AT_abstract_origin", "DW_AT_specification"):
        if attr in die.attributes:
            return die.get_DIE_from_attribute(attr)
    return die


def _name(die) -> str | None:
    attr = die.attributes.get("DW_AT_name")
    if attr is None:
        return None
    value = attr.value
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _signature(die, cu) -> Signature | None:
    """None for an unprototyped C function without parameters (glibc's generated
    system call stubs): its arguments are unknown, not absent."""
    if "DW_AT_prototyped" not in die.attributes and not _always_prototyped(cu) and not any(
            c.tag == "DW_TAG_formal_parameter" for c in _children(die)):
        return None
    ret = _classify(die.get_DIE_from_attribute("DW_AT_type")) \
        if "DW_AT_type" in die.attributes else None
    returns = {"size": ret[1], "signed": bool(ret[2])} if ret and ret[0] == "int" else None
    # a returned structure larger than 16 bytes comes back through a hidden pointer in rdi
    reg = 1 if ret is not None and ret[0] == "agg" and ret[1] > 16 else 0
    scalars: list[dict] = []
    pos = 0
    try:
        for child in _children(die):
            if child.tag != "DW_TAG_formal_parameter":
                continue
            p = _origin(child)
            cls = _classify(p.get_DIE_from_attribute("DW_AT_type")) \
                if "DW_AT_type" in p.attributes else None
            if cls is None or cls[0] == "agg":
                raise _Stop     # by value: its registers depend on its fields' classes
            if cls[0] == "int" and reg < GP_REGISTERS:
                name = _name(p)
                scalars.append({"pos": pos, "reg": reg,
                                "name": name if name and NAME_RE.match(name) else f"arg{pos}",
                                "size": cls[1], "signed": bool(cls[2]),
                                "pointer": bool(cls[3])})
                reg += 1
                if len(scalars) == MAX_SCALARS:
                    break
            pos += 1
    except _Stop:
        pass
    return Signature(scalars, returns)


def _children(die):
    """A function's first MAX_CHILDREN children: a crafted sibling chain may loop."""
    for n, child in enumerate(die.iter_children()):
        if n == MAX_CHILDREN:
            return
        yield child


def _always_prototyped(cu) -> bool:
    """C++, Fortran, Rust: a function's parameters are always described. C (and
    assembly: glibc's system call stubs) marks a prototype with DW_AT_prototyped."""
    lang = cu.get_top_DIE().attributes.get("DW_AT_language")
    return lang is not None and lang.value in (0x04, 0x19, 0x1a, 0x21, 0x07, 0x08, 0x0e,
                                                0x22, 0x23, 0x1c)


def _classify(t, depth: int = 0):
    """("int", size, signed, pointer) for an integer-class value of at most 8 bytes,
    ("sse",) for one passed in vector registers or memory (no integer register),
    ("agg", size) for a structure, union or array by value; None when unknown."""
    if t is None or depth > 32:
        return None
    if t.tag in _QUALIFIERS:
        if "DW_AT_type" not in t.attributes:
            return None         # a typedef of void
        return _classify(t.get_DIE_from_attribute("DW_AT_type"), depth + 1)
    if t.tag in _POINTERS or t.tag == "DW_TAG_ptr_to_member_type":
        return ("int", 8, False, True)
    size = t.attributes["DW_AT_byte_size"].value if "DW_AT_byte_size" in t.attributes else None
    if t.tag == "DW_TAG_enumeration_type":
        if "DW_AT_type" in t.attributes:
            under = _classify(t.get_DIE_from_attribute("DW_AT_type"), depth + 1)
            if under and under[0] == "int":
                return ("int", under[1], under[2], False)
        return ("int", size, False, False) if size in (1, 2, 4, 8) else None
    if t.tag == "DW_TAG_base_type":
        enc = t.attributes["DW_AT_encoding"].value if "DW_AT_encoding" in t.attributes else None
        if enc in _FLOAT:
            return ("sse",)
        if enc in _INTEGER and size in (1, 2, 4, 8):
            return ("int", size, enc in _SIGNED, False)
        return None             # __int128 takes a register pair: stop there
    if t.tag in _AGGREGATES:
        return ("agg", size if isinstance(size, int) else 1 << 30)
    return None
