"""USDT (SystemTap SDT) probes: read a file's ``.note.stapsdt`` notes, choose them by
``LIB:PROVIDER:NAME`` pattern, and decode their argument specs.

A note (https://sourceware.org/systemtap/wiki/UserSpaceProbeImplementation) holds
three addresses -- the probe's pc, the link-time address of ``.stapsdt.base`` and the
semaphore (0: none) -- then ``provider\\0name\\0arguments\\0``. A prelinked file has
moved sections since the note was written: the pc and semaphore move by the
difference between ``.stapsdt.base``'s address now and the note's base. The kernel
takes both as file offsets (a uprobe's offset, its ``ref_ctr_offset``), so each is
turned into one through the PT_LOAD segment holding it.

Arguments are ``[-]SIZE@OPERAND`` separated by spaces (x86-64, GNU as syntax): a
register (``-4@%eax``), a constant (``4@$42``) or memory at a register plus an offset
(``8@-8(%rbp)``). These three are decoded (the BPF program reads them, as libbpf's
usdt.bpf.h does); any other form (``%rip``-relative symbols, indexed addressing,
floating-point registers) is kept as text and reported as not decoded.

Used by the signing service (root, on the user's descriptor) to resolve ``--usdt``
patterns into probe definitions, and by the tracer to check that a signed site is still
a note of the file it attaches to.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass

from elftools.elf.elffile import ELFFile
from elftools.elf.sections import NoteSection

# A note's provider and name: C identifiers (what <sys/sdt.h> makes of them).
IDENT = r"[A-Za-z_][A-Za-z0-9_]{0,63}"
# A pattern's provider or name: an identifier glob ('*', '?', '[...]').
_GLOB = re.compile(r"^[A-Za-z0-9_*?\[\]!]{1,64}$")
# <sys/sdt.h> allows 12 arguments; more in a note is not a probe of this format.
MAX_ARGS = 12
# Sites one probe may have (a probe macro expanded in several places, or inlined).
MAX_SITES = 256
# Registers of x86-64 by every name an argument spec uses -> offset in struct pt_regs.
_PT_REGS = {"r15": 0, "r14": 8, "r13": 16, "r12": 24, "bp": 32, "bx": 40, "r11": 48,
            "r10": 56, "r9": 64, "r8": 72, "ax": 80, "cx": 88, "dx": 96, "si": 104, "di": 112,
            "ip": 128, "sp": 152}
_REGISTERS: dict[str, int] = {}
for _base in ("ax", "bx", "cx", "dx"):
    off = _PT_REGS[_base]
    _REGISTERS.update({"r" + _base: off, "e" + _base: off, _base: off, _base[0] + "l": off})
for _base in ("si", "di", "bp", "sp"):
    off = _PT_REGS[_base]
    _REGISTERS.update({"r" + _base: off, "e" + _base: off, _base: off, _base + "l": off})
for _n in range(8, 16):
    off = _PT_REGS[f"r{_n}"]
    _REGISTERS.update({f"r{_n}": off, f"r{_n}d": off, f"r{_n}w": off, f"r{_n}b": off})
_REGISTERS["rip"] = _PT_REGS["ip"]
_ARG_RE = re.compile(r"^(?:(-?\d+)@)?(.+)$")
_MEM_RE = re.compile(r"^(-?(?:0x[0-9a-fA-F]+|\d+))?\(%([a-z0-9]+)\)$")
_IMM_RE = re.compile(r"^\$(-?(?:0x[0-9a-fA-F]+|\d+))$")

# enum dc_usdt_arg_kind in datacrumbs.h
ARG_NONE, ARG_CONST, ARG_REG, ARG_MEM = 0, 1, 2, 3


class UsdtError(ValueError):
    """A file or pattern that cannot give USDT probes; the message says why."""


@dataclass(frozen=True)
class Arg:
    """One argument: ``kind`` (ARG_*; ARG_NONE: not decoded), ``size`` in bytes,
    ``signed``, ``reg`` (pt_regs offset), ``value`` (the constant or the memory offset),
    ``text`` (the spec as the note wrote it)."""

    text: str
    kind: int = ARG_NONE
    size: int = 8
    signed: bool = False
    reg: int = 0
    value: int = 0


@dataclass(frozen=True)
class Note:
    provider: str
    name: str
    pc: int             # file offset of the probe's instruction
    semaphore: int      # file offset of its semaphore (0: none)
    args: str           # the argument spec string, as written

    @property
    def target(self) -> str:
        return f"{self.provider}:{self.name}"


def parse_arg(text: str) -> Arg:
    """One ``[-]SIZE@OPERAND`` of an x86-64 argument spec (not decodable: ARG_NONE)."""
    m = _ARG_RE.match(text)
    if not m:
        return Arg(text)
    size, operand = int(m.group(1) or 8), m.group(2)
    signed, size = size < 0, abs(size)
    if size not in (1, 2, 4, 8):
        return Arg(text)
    if operand.startswith("%"):
        reg = _REGISTERS.get(operand[1:])
        if reg is None or operand == "%rip":
            return Arg(text)
        return Arg(text, ARG_REG, size, signed, reg)
    imm = _IMM_RE.match(operand)
    if imm:
        return Arg(text, ARG_CONST, size, signed, 0, int(imm.group(1), 0))
    mem = _MEM_RE.match(operand)
    if mem and mem.group(2) in _REGISTERS and mem.group(2) != "rip":
        return Arg(text, ARG_MEM, size, signed, _REGISTERS[mem.group(2)],
                   int(mem.group(1) or "0", 0))
    return Arg(text)


def parse_args(spec: str) -> list[Arg]:
    return [parse_arg(part) for part in spec.split()]


def split_pattern(pattern: str) -> tuple[str, str, str]:
    """``LIB:PROVIDER:NAME`` -> its three parts (LIB may itself hold ':'); UsdtError
    with the reason when it is not of that form."""
    parts = pattern.rsplit(":", 2)
    if len(parts) != 3 or not all(parts):
        raise UsdtError(f"--usdt {pattern!r} is not LIB:PROVIDER:NAME (e.g. "
                        "'libpython*.so*:python:function__entry' or '/path/prog:myprov:*')")
    lib, provider, name = parts
    for what, glob in (("provider", provider), ("name", name)):
        if not _GLOB.match(glob):
            raise UsdtError(f"--usdt {pattern!r}: the {what} {glob!r} is not an identifier "
                            "or a glob of one ('*', '?', '[...]')")
    if any(c in lib for c in "\0\n") or len(lib) > 4096:
        raise UsdtError(f"--usdt {pattern!r}: the library is not a file name or path")
    return lib, provider, name


def read_notes(f) -> list[Note]:
    """Every stapsdt note of an open ELF file (a binary file object), with file offsets."""
    elf = ELFFile(f)
    if elf.elfclass != 64 or not elf.little_endian:
        raise UsdtError("not a 64-bit little-endian ELF file")
    base_sec = elf.get_section_by_name(".stapsdt.base")
    actual_base = base_sec["sh_addr"] if base_sec is not None else None
    segments = [(s["p_vaddr"], s["p_filesz"], s["p_offset"]) for s in elf.iter_segments()
                if s["p_type"] == "PT_LOAD"]
    notes = []
    for section in elf.iter_sections():
        if not isinstance(section, NoteSection) or section.name != ".note.stapsdt":
            continue
        for note in section.iter_notes():
            # NT_STAPSDT is 3, which pyelftools names as a GNU note type
            if note["n_name"] != "stapsdt" or note["n_type"] not in (3, "NT_GNU_BUILD_ID"):
                continue
            desc = bytes(note["n_descdata"])
            if len(desc) < 27:
                continue
            pc, base, sema = (int.from_bytes(desc[i:i + 8], "little") for i in (0, 8, 16))
            strings = desc[24:].split(b"\0")
            if len(strings) < 3:
                continue
            try:
                provider, name, args = (s.decode("ascii") for s in strings[:3])
            except UnicodeDecodeError:
                continue
            if not re.fullmatch(IDENT, provider) or not re.fullmatch(IDENT, name):
                continue
            if actual_base is not None and base and base != actual_base:   # prelinked
                pc += actual_base - base
                if sema:
                    sema += actual_base - base
            pc_off = _file_offset(segments, pc)
            sema_off = _file_offset(segments, sema) if sema else 0
            if pc_off is None or (sema and not sema_off):
                continue        # not in the file's loaded image: no uprobe can go there
            notes.append(Note(provider, name, pc_off, sema_off, args.strip()))
    return notes


def _file_offset(segments, vaddr: int) -> int | None:
    for start, size, offset in segments:
        if start <= vaddr < start + size:
            return vaddr - start + offset
    return None


def read_notes_fd(fd: int) -> list[Note]:
    """read_notes of an open descriptor (its offset is left alone)."""
    with os.fdopen(os.dup(fd), "rb") as f:
        return read_notes(f)


def matching(notes: list[Note], provider: str, name: str) -> dict[str, list[Note]]:
    """``provider:name`` -> its sites, for the notes whose provider and name match the
    globs, in the file's order."""
    out: dict[str, list[Note]] = {}
    for n in notes:
        if fnmatch.fnmatchcase(n.provider, provider) and fnmatch.fnmatchcase(n.name, name):
            out.setdefault(n.target, []).append(n)
    return out


def probe_id(target: str, taken: set) -> str:
    """A document probe id for a USDT target: ``usdt.provider.name`` in the id alphabet,
    made unique within ``taken`` (which it joins)."""
    base = "usdt." + re.sub(r"[^a-z0-9_.-]", "_", target.lower().replace(":", "."))
    base = base[:60]
    pid, n = base, 1
    while pid in taken:
        n += 1
        pid = f"{base[:60 - len(str(n))]}-{n}"
    taken.add(pid)
    return pid


def sites_of(notes: list[Note]) -> list[dict]:
    """The document's ``sites`` of one probe: where each note puts it, in the file."""
    return [{"pc": n.pc, "semaphore": n.semaphore, "args": n.args} for n in notes[:MAX_SITES]]
