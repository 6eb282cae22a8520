"""Function symbols of a library: name -> file offset, what a uprobe is attached at.

ELF64 little-endian files (every HPC node's) are read with numpy (elfsyms.py); any other
is read with pyelftools, which the tests also keep as the reference. Results are cached
per file version (path, inode, mtime): a daemon reads a library once.
"""

from __future__ import annotations

import functools
import os

from elftools.common.exceptions import ELFError

from . import elfsyms


@functools.lru_cache(maxsize=32)
def _function_offsets(path: str, inode: int, mtime_ns: int,
                      wanted: frozenset[str] | None = None) -> dict[str, int]:
    """Function name -> file offset (what uprobes take), from .symtab and .dynsym.

    As libbpf resolves a func_name: a global symbol wins over a weak one;
    names defined twice at different places map to -1 (ambiguous: the per-probe
    path reports it). Offset = st_value - p_vaddr + p_offset of its PT_LOAD.
    Versioned names are there too, as ``name@VERSION`` (see versioned_name).
    ELF64 little-endian files are decoded with numpy (elfsyms: 20-40 times faster);
    this pyelftools path stays for anything else, and as the reference in the tests.
    ``wanted``: see function_offsets."""
    try:
        return elfsyms.function_offsets_elf64(path, wanted)
    except elfsyms.NotElf64:
        pass
    found = _function_offsets_pyelftools(path)
    if wanted is not None:
        found = {name: off for name, off in found.items() if name.split("@", 1)[0] in wanted}
    return found


def _function_offsets_pyelftools(path: str) -> dict[str, int]:
    # imported here: ELF64 files never need it, and the daemon's start is shorter without
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    found: dict[str, tuple[int, bool]] = {}
    with open(path, "rb") as f:
        elf = ELFFile(f)
        loads = [(seg["p_vaddr"], seg["p_vaddr"] + seg["p_memsz"], seg["p_offset"])
                 for seg in elf.iter_segments() if seg["p_type"] == "PT_LOAD"]
        versions = _symbol_versions(elf)
        for name in (".symtab", ".dynsym"):
            section = elf.get_section_by_name(name)
            if not isinstance(section, SymbolTableSection):
                continue
            for index, sym in enumerate(section.iter_symbols()):
                if sym["st_info"]["type"] != "STT_FUNC" or sym["st_shndx"] == "SHN_UNDEF" \
                        or not sym["st_value"] or not sym.name:
                    continue
                value = sym["st_value"]
                offset = next((value - lo + off for lo, hi, off in loads if lo <= value < hi), -1)
                version = versions.get(index) if name == ".dynsym" else None
                if version or "@" in sym.name:
                    found.setdefault(versioned_name(f"{sym.name}@{version}" if version
                                                    else sym.name), (offset, False))
                    if "@" in sym.name:
                        continue
                weak = sym["st_info"]["bind"] == "STB_WEAK"
                old = found.get(sym.name)
                if old is None or (old[1] and not weak):
                    found[sym.name] = (offset, weak)
                elif old[0] != offset and not weak and not old[1]:
                    found[sym.name] = (-1, False)
    return {name: off for name, (off, _weak) in found.items()}


def versioned_name(name: str) -> str:
    """``fopen@@GLIBC_2.2.5`` and ``fopen@GLIBC_2.2.5`` name one symbol: one spelling."""
    base, _, version = name.partition("@")
    return f"{base}@{version.lstrip('@')}" if version else name


def _symbol_versions(elf) -> dict[int, str]:
    """.dynsym index -> the version it defines (GNU symbol versioning), where it has one."""
    versym = elf.get_section_by_name(".gnu.version")
    verdef = elf.get_section_by_name(".gnu.version_d")
    if versym is None or verdef is None:
        return {}
    try:
        names = {ver["vd_ndx"]: next(aux).name for ver, aux in verdef.iter_versions()}
        out = {}
        for index in range(versym.num_symbols()):
            ndx = versym.get_symbol(index)["ndx"]
            if isinstance(ndx, int) and (ndx & 0x7FFF) in names and ndx & 0x7FFF > 1:
                out[index] = names[ndx & 0x7FFF]
        return out
    except (ELFError, AttributeError, KeyError, StopIteration, ValueError):
        return {}


def function_offsets(path: str, wanted=None) -> dict[str, int]:
    """``wanted`` (names, without any ``@VERSION``): only those names and their versioned
    spellings, as the whole table gives them; None: every function."""
    st = os.stat(path)
    return _function_offsets(path, st.st_ino, st.st_mtime_ns,
                             None if wanted is None else frozenset(wanted))
