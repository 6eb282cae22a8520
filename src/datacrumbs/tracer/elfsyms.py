"""Function symbols of an ELF shared object: name -> file offset, what uprobes take.

pyelftools decodes symbols one by one through its construct layer: libLLVM's 50,000
symbols take 10 s, and a daemon with 10,000 uprobes must be ready in well under a
second. The symbol tables are fixed-size records, so they are decoded here with numpy
in one go (ELF64 little-endian, every HPC node's format); any other ELF class falls
back to pyelftools, which the caller keeps as the reference (tests compare the two).
"""

from __future__ import annotations

import mmap

import numpy as np

SHT_SYMTAB, SHT_DYNSYM = 2, 11
SHT_GNU_VERDEF, SHT_GNU_VERSYM = 0x6FFFFFFD, 0x6FFFFFFF
PT_LOAD = 1
STT_FUNC = 2
STB_WEAK = 2
SHN_UNDEF = 0

_EHDR = np.dtype([("ident", "u1", 16), ("type", "<u2"), ("machine", "<u2"),
                  ("version", "<u4"), ("entry", "<u8"), ("phoff", "<u8"), ("shoff", "<u8"),
                  ("flags", "<u4"), ("ehsize", "<u2"), ("phentsize", "<u2"), ("phnum", "<u2"),
                  ("shentsize", "<u2"), ("shnum", "<u2"), ("shstrndx", "<u2")])
_PHDR = np.dtype([("type", "<u4"), ("flags", "<u4"), ("offset", "<u8"), ("vaddr", "<u8"),
                  ("paddr", "<u8"), ("filesz", "<u8"), ("memsz", "<u8"), ("align", "<u8")])
_SHDR = np.dtype([("name", "<u4"), ("type", "<u4"), ("flags", "<u8"), ("addr", "<u8"),
                  ("offset", "<u8"), ("size", "<u8"), ("link", "<u4"), ("info", "<u4"),
                  ("addralign", "<u8"), ("entsize", "<u8")])
_SYM = np.dtype([("name", "<u4"), ("info", "u1"), ("other", "u1"), ("shndx", "<u2"),
                 ("value", "<u8"), ("size", "<u8")])
_VERDEF = np.dtype([("version", "<u2"), ("flags", "<u2"), ("ndx", "<u2"), ("cnt", "<u2"),
                    ("hash", "<u4"), ("aux", "<u4"), ("next", "<u4")])


class NotElf64(Exception):
    """Not a little-endian ELF64 file this reader decodes (the caller falls back)."""


def _cstr(blob: bytes, start: int) -> str:
    end = blob.find(b"\0", start)
    return blob[start:end if end >= 0 else len(blob)].decode("utf-8", "surrogateescape")


def _cstrs(blob: bytes, starts: np.ndarray) -> list[str]:
    """_cstr of every start at once: the ends from one search of the NULs, and the
    slices of the table decoded once when it is ASCII (libLLVM: 35,000 names in a
    few ms; one find and decode per name was a third of a 10,000-uprobe start)."""
    nul = np.flatnonzero(np.frombuffer(blob, np.uint8) == 0)
    at = np.searchsorted(nul, starts)
    ends = np.where(at < len(nul), nul[np.minimum(at, len(nul) - 1)] if len(nul) else 0,
                    len(blob))
    text = blob.decode("ascii") if blob.isascii() else None
    if text is None:
        return [blob[a:b].decode("utf-8", "surrogateescape")
                for a, b in zip(starts.tolist(), ends.tolist())]
    # Most names begin right after a NUL: those are pieces of one split (libLLVM: 35,000
    # names in 2 ms, not 11); a name that is the tail of another (the linker shares
    # suffixes) is sliced
    pieces = text.split("\0")
    begins = (np.where(at > 0, nul[np.maximum(at - 1, 0)] + 1, 0) if len(nul)
              else np.zeros(len(starts), np.int64))
    names = list(map(pieces.__getitem__, at.tolist()))
    for n in np.flatnonzero(begins != starts).tolist():
        names[n] = text[int(starts[n]):int(ends[n])]
    return names


class _Elf:
    def __init__(self, data):
        self.data = data
        if len(data) < _EHDR.itemsize or bytes(data[:4]) != b"\x7fELF":
            raise NotElf64("not an ELF file")
        eh = np.frombuffer(data, _EHDR, count=1).copy()[0]
        if eh["ident"][4] != 2 or eh["ident"][5] != 1:
            raise NotElf64("not ELF64 little-endian")
        if eh["shentsize"] != _SHDR.itemsize or eh["phentsize"] not in (0, _PHDR.itemsize):
            raise NotElf64("unexpected header sizes")
        self.sections = self._table(int(eh["shoff"]), int(eh["shnum"]), _SHDR)
        self.segments = self._table(int(eh["phoff"]), int(eh["phnum"]), _PHDR)

    def _table(self, offset: int, count: int, dtype) -> np.ndarray:
        if not count:
            return np.empty(0, dtype)
        if offset + count * dtype.itemsize > len(self.data):
            raise NotElf64("table past the end of the file")
        # copies: nothing may hold on to the mapping once the file is closed
        return np.frombuffer(self.data, dtype, count=count, offset=offset).copy()

    def section_bytes(self, sec) -> bytes:
        start, size = int(sec["offset"]), int(sec["size"])
        if start + size > len(self.data):
            raise NotElf64("section past the end of the file")
        return bytes(self.data[start:start + size])

    def by_type(self, kind: int):
        hits = self.sections[self.sections["type"] == kind]
        return hits[0] if len(hits) else None

    def versions_of(self, indexes: np.ndarray) -> list[str | None]:
        """The version each .dynsym entry of ``indexes`` defines (GNU symbol versioning),
        None for none."""
        ndx, names = self._versions()
        if not names or not len(ndx):
            return [None] * len(indexes)
        inside = indexes < len(ndx)
        ids = np.where(inside, ndx[np.minimum(indexes, max(len(ndx) - 1, 0))], 0)
        return [names.get(v) if v > 1 else None for v in ids.tolist()]

    def _versions(self) -> tuple[np.ndarray, dict[int, str]]:
        """(version index of each .dynsym entry, version index -> name)."""
        versym, verdef = self.by_type(SHT_GNU_VERSYM), self.by_type(SHT_GNU_VERDEF)
        if versym is None or verdef is None:
            return np.zeros(0, np.uint16), {}
        strings = self.section_bytes(self.sections[int(verdef["link"])])
        raw = self.section_bytes(verdef)
        names, pos = {}, 0
        for _ in range(int(verdef["info"]) or 4096):     # sh_info: number of entries
            if pos + _VERDEF.itemsize > len(raw):
                break
            vd = np.frombuffer(raw, _VERDEF, count=1, offset=pos)[0]
            aux = pos + int(vd["aux"])
            if aux + 8 <= len(raw):
                names[int(vd["ndx"])] = _cstr(strings, int.from_bytes(raw[aux:aux + 4], "little"))
            if not vd["next"]:
                break
            pos += int(vd["next"])
        raw = self.section_bytes(versym)
        return np.frombuffer(raw[: len(raw) // 2 * 2], "<u2") & 0x7FFF, names


def function_offsets_elf64(path: str, wanted: frozenset[str] | None = None) -> dict[str, int]:
    """Function name -> file offset, with the same rules as symbols._function_offsets:
    .symtab and .dynsym, STT_FUNC defined symbols; a global symbol wins over a weak one;
    a name defined twice at different places maps to -1; versioned names are there too
    as ``name@VERSION``. Raises NotElf64 for files it does not decode (then the caller's
    pyelftools path reads them, or says what is wrong with them).

    ``wanted``: only names whose part before any ``@`` is one of these, exactly as the
    whole table would give them. A daemon needs only its probes' functions, and
    libLLVM's 70,000 names cost a 10,000-probe start 50 ms of a thread holding the GIL."""
    try:
        return _function_offsets(path, wanted)
    except (IndexError, ValueError) as exc:     # a damaged table: not ours to explain
        raise NotElf64(str(exc)) from None


def _function_offsets(path: str, wanted: frozenset[str] | None = None) -> dict[str, int]:
    from .symbols import versioned_name

    with open(path, "rb") as f:
        with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as data:
            elf = _Elf(data)
            loads = [(int(s["vaddr"]), int(s["vaddr"] + s["memsz"]), int(s["offset"]))
                     for s in elf.segments if s["type"] == PT_LOAD]
            found: dict[str, int] = {}
            weak_ones: set[str] = set()         # names whose offset is a weak symbol's
            for kind in (SHT_SYMTAB, SHT_DYNSYM):
                sec = elf.by_type(kind)
                if sec is None or int(sec["entsize"]) not in (0, _SYM.itemsize):
                    continue
                strings = elf.section_bytes(elf.sections[int(sec["link"])])
                syms = np.frombuffer(elf.section_bytes(sec), _SYM)
                keep = np.flatnonzero(((syms["info"] & 0xF) == STT_FUNC)
                                      & (syms["shndx"] != SHN_UNDEF) & (syms["value"] != 0)
                                      & (syms["name"] != 0))
                names = _cstrs(strings, syms["name"][keep].astype(np.int64))
                if wanted is not None:      # the names are cheap; what follows is not
                    hit = np.fromiter(map(wanted.__contains__, names), bool, len(names))
                    if b"@" in strings:     # "name@VERSION" spellings in the table
                        hit |= np.fromiter((name.split("@", 1)[0] in wanted for name in names),
                                           bool, len(names))
                    chosen = np.flatnonzero(hit)
                    keep, names = keep[chosen], [names[n] for n in chosen.tolist()]
                values = syms["value"][keep]
                offsets = np.full(len(keep), -1, np.int64)
                for lo, hi, off in loads:
                    inside = (values >= lo) & (values < hi)
                    offsets[inside] = (values[inside] - lo + off).astype(np.int64)
                weak = ((syms["info"][keep] >> 4) == STB_WEAK).tolist()
                vers = (elf.versions_of(keep) if kind == SHT_DYNSYM
                        else [None] * len(keep))
                for name, version, offset, is_weak in zip(names, vers, offsets.tolist(), weak):
                    if not name:
                        continue
                    plain = "@" not in name
                    if version or not plain:
                        # versioned_name(), without its call for the common spelling
                        key = (f"{name}@{version.lstrip('@')}" if plain else
                               versioned_name(f"{name}@{version}")) if version \
                            else versioned_name(name)
                        if key not in found:
                            found[key] = offset
                        if not plain:
                            continue
                    old = found.get(name)
                    if old is None:
                        found[name] = offset
                        if is_weak:
                            weak_ones.add(name)
                    elif name in weak_ones:
                        if not is_weak:         # a global symbol wins over a weak one
                            found[name] = offset
                            weak_ones.discard(name)
                    elif old != offset and not is_weak:
                        found[name] = -1        # two global definitions: ambiguous
            elf.data = None
    return found


SHT_DYNAMIC = 6
DT_SONAME = 14
_DYN = np.dtype([("tag", "<i8"), ("val", "<u8")])
_MACHINES = {62: "EM_X86_64", 183: "EM_AARCH64", 3: "EM_386", 21: "EM_PPC64", 243: "EM_RISCV"}


def exported_functions_fd(fd: int) -> tuple[str | None, str, dict[str, int], frozenset]:
    """(soname, machine, exported function -> address, names defined at several addresses)
    of an open ELF64 file, from .dynsym alone: what another program can call, hence what
    a pattern over a library's functions is matched against. About 50 ms for 100,000
    symbols (pyelftools: tens of seconds), so a root service can afford a hostile file.
    Raises NotElf64 for anything it cannot decode."""
    try:
        with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as data:
            return _exported(_Elf(data))
    except (IndexError, ValueError, OSError) as exc:
        raise NotElf64(str(exc)) from None


def _exported(elf: _Elf):
    machine_code = int(np.frombuffer(elf.data, _EHDR, count=1)[0]["machine"])
    machine = _MACHINES.get(machine_code, f"machine {machine_code}")
    soname = None
    dyn = elf.by_type(SHT_DYNAMIC)
    if dyn is not None:
        entries = np.frombuffer(elf.section_bytes(dyn)[: int(dyn["size"]) // 16 * 16], _DYN)
        hits = entries["val"][entries["tag"] == DT_SONAME]
        if len(hits):
            strings = elf.section_bytes(elf.sections[int(dyn["link"])])
            soname = _cstr(strings, int(hits[0]))
    addresses: dict[str, int] = {}
    ambiguous: set[str] = set()
    sec = elf.by_type(SHT_DYNSYM)
    if sec is not None and int(sec["entsize"]) in (0, _SYM.itemsize):
        strings = elf.section_bytes(elf.sections[int(sec["link"])])
        raw = elf.section_bytes(sec)
        syms = np.frombuffer(raw[: len(raw) // _SYM.itemsize * _SYM.itemsize], _SYM)
        # STT_FUNC only: an IFUNC symbol's address is its resolver, run once at binding,
        # not the function a call reaches (and the engine's offsets skip them too)
        keep = np.flatnonzero(((syms["info"] & 0xF) == STT_FUNC)
                              & (syms["shndx"] != SHN_UNDEF) & (syms["name"] != 0))
        for name_at, value in zip(syms["name"][keep].tolist(), syms["value"][keep].tolist()):
            name = _cstr(strings, name_at)
            if not name:
                continue
            if addresses.get(name, value) != value:
                ambiguous.add(name)
            addresses[name] = value
    elf.data = None
    return soname, machine, addresses, frozenset(ambiguous)
