"""Built-in and site probe sets."""

from __future__ import annotations

import json

import pytest

from datacrumbs.probes.catalog import CatalogError, builtin_sets, load_catalog, select_probes
from datacrumbs.probes.host_check import SYSCALLS_X86_64
from datacrumbs.probes.schema import schema_problem

EXPECTED = {
    "posix": {"open", "openat", "creat", "read", "write", "pread64", "pwrite64", "readv",
              "writev", "lseek", "close", "fsync", "fdatasync", "ftruncate", "unlink", "rename",
              "mkdir", "stat", "lstat", "fstat", "newfstatat", "statx"},
    "stdio": {"fopen", "fopen64", "fread", "fwrite", "fclose", "fflush", "fseek", "fgets",
              "fputs", "fprintf"},
    "mpiio": {"MPI_File_open", "MPI_File_close", "MPI_File_read", "MPI_File_read_at",
              "MPI_File_read_all", "MPI_File_write", "MPI_File_write_at", "MPI_File_write_all",
              "MPI_File_sync", "MPI_File_set_view"},
    "hdf5": {"H5Fcreate", "H5Fopen", "H5Fclose", "H5Dcreate2", "H5Dopen2", "H5Dread",
             "H5Dwrite", "H5Dclose"},
    "block": {"block:block_rq_issue", "block:block_rq_complete"},
    "vfs": {"vfs_read", "vfs_write", "vfs_fsync"},
}
KINDS = {"posix": "syscall", "stdio": "uprobe", "mpiio": "uprobe", "hdf5": "uprobe",
         "block": "tracepoint", "vfs": "kprobe"}
LIBRARIES = {"stdio": "libc.so.6", "mpiio": "libmpich.so.12", "hdf5": "libhdf5_serial.so.103"}


def _set_file(directory, name, probes=None, **extra):
    probes = probes or [{"id": f"{name}.write", "kind": "syscall", "target": "write",
                         "category": "SITE", "args": {"fd": 0}, "bytes": "ret"}]
    path = directory / f"{name}.json"
    path.write_text(json.dumps({"name": name, "description": "site set", "probes": probes,
                                **extra}))
    return path


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builtin_set_contents(name):
    probe_set = builtin_sets()[name]
    assert probe_set.builtin and probe_set.description
    targets = {p["target"] for p in probe_set.probes}
    assert EXPECTED[name] <= targets
    assert {p["kind"] for p in probe_set.probes} == {KINDS[name]}
    for probe in probe_set.probes:
        assert probe["id"].startswith(f"{name}.")
        if name in LIBRARIES:
            assert probe["library"] == LIBRARIES[name]
        if probe["kind"] == "syscall":
            assert probe["target"] in SYSCALLS_X86_64


def test_builtin_sets_valid_and_roles_sensible():
    sets = builtin_sets()
    for probe_set in sets.values():
        assert schema_problem({"name": probe_set.name, "description": probe_set.description,
                               "probes": list(probe_set.probes)}, "set") is None
    posix = {p["target"]: p for p in sets["posix"].probes}
    assert posix["write"]["args"] == {"fd": 0, "count": 2} and posix["write"]["bytes"] == "ret"
    assert posix["openat"]["args"]["path"] == 1 and posix["close"]["bytes"] is None
    stdio = {p["target"]: p for p in sets["stdio"].probes}
    assert stdio["fwrite"]["bytes"] == "ret*arg1" and stdio["fwrite"]["args"]["stream"] == 3


def test_site_set_is_loaded(site):
    _set_file(site.probe_sets_dir, "mysite")
    catalog = load_catalog(site)
    assert not catalog["mysite"].builtin
    assert catalog["mysite"].source == str(site.probe_sets_dir / "mysite.json")
    assert "posix" in catalog


@pytest.mark.parametrize("content,words", [
    ("{not json", "not valid JSON"),
    (json.dumps({"name": "bad", "description": "x", "probes": []}), "probes"),
    (json.dumps({"name": "bad", "description": "x", "probes": [
        {"id": "bad.x", "kind": "kprobe", "target": "x y", "category": "X", "args": {},
         "bytes": None}]}), "target"),
    (json.dumps({"name": "other", "description": "x", "probes": [
        {"id": "a", "kind": "syscall", "target": "read", "category": "X", "args": {},
         "bytes": None}]}), "rename the file to other.json"),
])
def test_invalid_site_set_names_the_file(site, content, words):
    path = site.probe_sets_dir / "bad.json"
    path.write_text(content)
    with pytest.raises(CatalogError) as info:
        load_catalog(site)
    assert str(path) in str(info.value) and words in str(info.value)


def test_site_set_may_not_shadow_builtin_silently(site):
    path = _set_file(site.probe_sets_dir, "posix")
    with pytest.raises(CatalogError, match='"override": true') as info:
        load_catalog(site)
    assert str(path) in str(info.value)
    _set_file(site.probe_sets_dir, "posix", override=True)
    catalog = load_catalog(site)
    assert not catalog["posix"].builtin
    assert [p["id"] for p in catalog["posix"].probes] == ["posix.write"]


def test_select_probes():
    catalog = builtin_sets()
    both = select_probes(catalog, ["posix", "stdio", "posix"])
    ids = [p["id"] for p in both]
    assert len(ids) == len(set(ids)) == len(catalog["posix"].probes) + len(catalog["stdio"].probes)
    with pytest.raises(CatalogError, match="unknown probe set 'nope'; known sets: async, block, hdf5"):
        select_probes(catalog, ["nope"])
    with pytest.raises(CatalogError, match="no probe set chosen"):
        select_probes(catalog, [])


def test_conflicting_ids_across_sets(site):
    _set_file(site.probe_sets_dir, "mine", probes=[
        {"id": "posix.write", "kind": "syscall", "target": "read", "category": "POSIX",
         "args": {}, "bytes": "ret"}])
    catalog = load_catalog(site)
    with pytest.raises(CatalogError, match="'posix.write' means different probes"):
        select_probes(catalog, ["posix", "mine"])
