"""The numpy ELF symbol reader (tracer/elfsyms.py) gives exactly what pyelftools gives,
on the real libraries uprobes go to, and refuses what it does not decode so that the
pyelftools path explains it."""

from __future__ import annotations

import shutil

import pytest

from datacrumbs.probes.host_check import ldconfig_cache
from datacrumbs.tracer import elfsyms, symbols

SONAMES = ("libc.so.6", "libhdf5_serial.so.103", "libmpich.so.12", "libstdc++.so.6")


@pytest.mark.parametrize("soname", SONAMES)
def test_same_offsets_as_pyelftools(soname):
    path = ldconfig_cache().get(soname)
    assert path, f"{soname} is installed by scripts/deps.sh"
    fast = elfsyms.function_offsets_elf64(path)
    reference = symbols._function_offsets_pyelftools(path)
    assert fast == reference and len(fast) > 100
    if soname == "libc.so.6":   # one address, two names; versioned spellings too
        assert fast["fopen"] == fast["fopen64"] and "fopen@GLIBC_2.2.5" in fast


def test_damaged_and_foreign_files_fall_back(tmp_path):
    text = tmp_path / "data.txt"
    text.write_text("not an ELF file\n")
    with pytest.raises(elfsyms.NotElf64):
        elfsyms.function_offsets_elf64(str(text))
    cut = tmp_path / "libcut.so"
    src = ldconfig_cache()["libmpich.so.12"]
    with open(src, "rb") as f:
        cut.write_bytes(f.read(4096))       # headers only: the tables are past the end
    with pytest.raises(elfsyms.NotElf64):
        elfsyms.function_offsets_elf64(str(cut))
    whole = tmp_path / "libwhole.so"
    shutil.copy(src, whole)
    assert symbols.function_offsets(str(whole)) == elfsyms.function_offsets_elf64(src)


@pytest.mark.parametrize("soname", SONAMES)
def test_exported_functions_agree_with_pyelftools(soname):
    """What patterns are matched against (.dynsym functions, addresses, soname) is what the
    pyelftools reader of the signing service's --library path finds."""
    import os

    from datacrumbs.probes.host_check import elf_info_fd

    path = ldconfig_cache()[soname]
    fd = os.open(path, os.O_RDONLY)
    try:
        found, machine, addresses, ambiguous = elfsyms.exported_functions_fd(fd)
        reference = elf_info_fd(fd)
    finally:
        os.close(fd)
    assert machine == reference.machine == "EM_X86_64"
    assert found == reference.soname == soname
    assert set(addresses) == reference.functions and len(addresses) > 100
    assert addresses == reference.addresses and ambiguous == reference.ambiguous


def test_exported_functions_refuse_what_is_not_elf64(tmp_path):
    import os

    text = tmp_path / "data.txt"
    text.write_text("not an ELF file\n")
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    for path in (text, empty):
        fd = os.open(path, os.O_RDONLY)
        try:
            with pytest.raises(elfsyms.NotElf64):
                elfsyms.exported_functions_fd(fd)
        finally:
            os.close(fd)
