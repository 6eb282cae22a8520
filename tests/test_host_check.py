"""Host checks against this machine's real kernel, tracefs, libc, MPICH and HDF5."""

from __future__ import annotations

import os
import re
import shutil

import pytest

from datacrumbs.probes.catalog import builtin_sets
from datacrumbs.probes.host_check import (NO_KPROBES, SYSCALLS_X86_64, LibraryResolver,
                                          check_probes, elf_info, host_info, ldconfig_cache,
                                          syscall_number, syscall_tracepoint)

LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"


def _uprobe(target, library="libc.so.6"):
    return {"id": f"t.{target.lower()}", "kind": "uprobe", "target": target, "library": library,
            "category": "TEST", "args": {}, "bytes": None}


def _one(probe, **kwargs):
    kept, dropped = check_probes([probe], **kwargs)
    assert len(kept) + len(dropped) == 1
    return kept, dropped


def test_real_libc_symbol_is_kept_with_absolute_path():
    kept, dropped = _one(_uprobe("fwrite"))
    assert dropped == []
    assert kept[0]["library"] == LIBC and os.path.isabs(kept[0]["library"])


def test_made_up_symbol_is_dropped_with_reason():
    kept, dropped = _one(_uprobe("datacrumbs_no_such_function"))
    assert kept == []
    assert dropped[0].reason == (f"{LIBC} does not export function datacrumbs_no_such_function "
                                 "(not in its dynamic symbols)")


def test_undefined_import_is_not_an_export():
    """libmpich imports `write` from libc: it is in .dynsym but undefined there."""
    kept, dropped = _one(_uprobe("write", "libmpich.so.12"))
    assert kept == [] and "does not export function write" in dropped[0].reason


def test_missing_library_is_dropped():
    kept, dropped = _one(_uprobe("foo", "libdatacrumbs_missing.so.9"))
    assert kept == []
    assert dropped[0].reason.startswith("library libdatacrumbs_missing.so.9 not found")
    assert "--library" in dropped[0].reason


def test_kprobes_dropped_on_this_kernel():
    """This machine's kernel has CONFIG_KPROBES unset: every kprobe is refused, with why."""
    info = host_info()
    assert info.kprobes is False and info.kprobes_reason == NO_KPROBES
    kept, dropped = check_probes(builtin_sets()["vfs"].probes)
    assert kept == [] and len(dropped) == 3
    for d in dropped:
        assert d.reason.startswith("kprobes not available")
        assert "CONFIG_KPROBES" in d.reason


@pytest.mark.parametrize("name", ["posix", "stdio", "mpiio", "hdf5", "block"])
def test_builtin_sets_attach_here(name):
    """Debian's libc, mpich and serial HDF5 define every symbol the catalog names
    (names of one function, fopen and fopen64, become one probe)."""
    probes = builtin_sets()[name].probes
    merged = []
    kept, dropped = check_probes(probes, merged=merged)
    assert dropped == [], [(d.probe["id"], d.reason) for d in dropped]
    assert len(kept) + len(merged) == len(probes)
    assert [(a["id"], b["id"]) for a, b in merged] == \
        ([("stdio.fopen64", "stdio.fopen")] if name == "stdio" else [])
    for probe in kept:
        if probe["kind"] == "uprobe":
            assert os.path.isabs(probe["library"]) and os.path.isfile(probe["library"])


def test_syscall_checks():
    info = host_info()
    assert info.tracefs is not None  # root here: tracefs mounted and readable
    probes = [
        {"id": "a", "kind": "syscall", "target": "stat", "category": "P", "args": {},
         "bytes": None},
        {"id": "b", "kind": "syscall", "target": "not_a_syscall", "category": "P", "args": {},
         "bytes": None},
        {"id": "c", "kind": "syscall", "target": "ni_syscall_x", "category": "P", "args": {},
         "bytes": None},
    ]
    kept, dropped = check_probes(probes, host=info)
    assert [p["id"] for p in kept] == ["a"]
    assert dropped[0].reason == "not_a_syscall is not an x86_64 system call"
    assert syscall_tracepoint("stat") == "syscalls:sys_enter_newstat"
    assert (info.tracefs / "events/syscalls/sys_enter_newstat").is_dir()


def test_tracepoint_checks():
    def tp(target, rule=None):
        return {"id": target.replace(":", "."), "kind": "tracepoint", "target": target,
                "category": "BLOCK", "args": {}, "bytes": rule}

    kept, dropped = check_probes([tp("block:block_rq_issue", "field:bytes"),
                                  tp("block:no_such_event"),
                                  tp("block:block_rq_complete", "field:nr_bytes_x")])
    assert [p["target"] for p in kept] == ["block:block_rq_issue"]
    assert dropped[0].reason == "this kernel has no tracepoint block:no_such_event"
    assert dropped[1].reason == "tracepoint block:block_rq_complete has no field 'nr_bytes_x'"


def test_syscall_table_matches_kernel_headers():
    header = "/usr/include/x86_64-linux-gnu/asm/unistd_64.h"
    assert os.path.exists(header)  # linux-libc-dev is installed with clang here
    numbers = dict(re.findall(r"#define __NR_(\w+) (\d+)", open(header).read()))
    assert numbers, header
    for name, nr in numbers.items():
        assert syscall_number(name) == int(nr), name
    assert syscall_number("write") == 1 and syscall_number("openat") == 257
    with pytest.raises(KeyError, match="'nope' is not an x86_64 system call"):
        syscall_number("nope")
    assert len(SYSCALLS_X86_64) >= len(numbers)


def test_library_override(tmp_path):
    """--library PATH: a copy of libmpich elsewhere replaces the soname lookup."""
    copy = tmp_path / "libmpich.so.12"
    shutil.copy(ldconfig_cache()["libmpich.so.12"], copy)
    probe = dict(_uprobe("MPI_File_open", "libmpich.so.12"), category="MPIIO")
    kept, dropped = check_probes([probe], libraries=[str(copy)])
    assert dropped == [] and kept[0]["library"] == str(copy)
    with pytest.raises(FileNotFoundError):
        LibraryResolver([str(tmp_path / "absent.so")])


def test_override_matched_by_soname(tmp_path):
    """A file named differently still replaces the library whose DT_SONAME it has."""
    copy = tmp_path / "libmpich-custom-build.so"
    shutil.copy(ldconfig_cache()["libmpich.so.12"], copy)
    assert elf_info(str(copy)).soname == "libmpich.so.12"
    kept, _ = check_probes([_uprobe("MPI_File_close", "libmpich.so.12")],
                           libraries=[str(copy)])
    assert kept[0]["library"] == str(copy)


def test_non_elf_library_is_dropped(tmp_path):
    fake = tmp_path / "libfake.so.1"
    fake.write_text("not an ELF file")
    kept, dropped = check_probes([_uprobe("f", str(fake))])
    assert kept == [] and "is not a readable ELF library" in dropped[0].reason


def test_library_path_keeps_soname_file_name():
    """Directories are resolved (/lib -> /usr/lib) but not the soname link itself."""
    resolved = LibraryResolver().resolve("libmpich.so.12")
    assert resolved == "/usr/lib/x86_64-linux-gnu/libmpich.so.12"
    assert os.path.islink(resolved)


def test_usdt_probe_absent_from_libc():
    probe = {"id": "u.x", "kind": "usdt", "target": "datacrumbs:nothing", "library": "libc.so.6",
             "category": "USDT", "args": {}, "bytes": None}
    kept, dropped = check_probes([probe])
    assert kept == [] and dropped[0].reason == f"{LIBC} has no USDT probe datacrumbs:nothing"


def test_usdt_probe_found_in_libstdcxx():
    """libstdc++ carries SystemTap notes (libstdcxx:throw, :catch ...)."""
    probe = {"id": "u.throw", "kind": "usdt", "target": "libstdcxx:throw",
             "library": "libstdc++.so.6", "category": "USDT", "args": {}, "bytes": None}
    kept, dropped = check_probes([probe])
    assert dropped == [] and kept[0]["library"] == "/usr/lib/x86_64-linux-gnu/libstdc++.so.6"
