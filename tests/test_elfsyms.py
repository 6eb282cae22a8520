"""The numpy ELF symbol reader (tracer/elfsyms.py) gives exactly what pyelftools gives,
on the real libraries uprobes go to, and refuses what it does not decode so that the
pyelftools path explains it."""

from __future__ import annotations

import shutil
import subprocess

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


@pytest.mark.parametrize("soname", SONAMES)
def test_only_the_wanted_names_exactly_as_the_whole_table_gives_them(soname):
    """The daemon reads only its probes' names (a 10,000-probe start). Each wanted name
    must come with every spelling and the same offset the whole table gives, ambiguous
    (-1) and weak-overridden names included; nothing else, and no error for a missing one."""
    path = ldconfig_cache()[soname]
    whole = elfsyms.function_offsets_elf64(path)
    plain = sorted({name.split("@", 1)[0] for name in whole})
    picks = [plain[k] for k in range(0, len(plain), 7)]     # every 7th: suffix-shared too
    picks += [name for name in plain if whole.get(name) == -1][:5]
    wanted = frozenset(picks + ["no_such_function_here", "x"])
    got = elfsyms.function_offsets_elf64(path, wanted)
    assert got == {k: v for k, v in whole.items() if k.split("@", 1)[0] in wanted}
    assert len(got) >= len(picks)
    assert elfsyms.function_offsets_elf64(path, frozenset()) == {}
    assert symbols.function_offsets(path, picks) == got       # and through the cache
    if soname == "libc.so.6":
        assert set(elfsyms.function_offsets_elf64(path, frozenset({"fopen"}))) >= {
            "fopen", "fopen@GLIBC_2.2.5"}


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


def test_wanted_names_spelled_with_versions_in_the_symbol_table(tmp_path):
    """An unstripped library names versioned definitions ``foo@VER_1`` and ``foo@@VER_2``
    in .symtab itself (the Debian libraries above are stripped): wanting ``foo`` must
    still give all its spellings, and ``foo`` itself as ambiguous."""
    src = tmp_path / "v.c"
    src.write_text("int foo_v1(void) { return 1; }\nint foo_v2(void) { return 2; }\n"
                   "int bar(void) { return 3; }\n"
                   '__asm__(".symver foo_v1, foo@VER_1");\n'
                   '__asm__(".symver foo_v2, foo@@VER_2");\n')
    script = tmp_path / "v.map"
    script.write_text("VER_1 { global: foo; bar; local: *; };\nVER_2 { global: foo; } VER_1;\n")
    lib = tmp_path / "libsv.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib), str(src),
                    f"-Wl,--version-script={script}"], check=True)
    whole = elfsyms.function_offsets_elf64(str(lib))
    assert whole == symbols._function_offsets_pyelftools(str(lib))
    got = elfsyms.function_offsets_elf64(str(lib), frozenset({"foo"}))
    assert got == {"foo": -1, "foo@VER_1": whole["foo_v1"], "foo@VER_2": whole["foo_v2"]}
    assert elfsyms.function_offsets_elf64(str(lib), frozenset({"bar"})) == {
        "bar": whole["bar"], "bar@VER_1": whole["bar"]}
