"""uprobes on Debian's HDF5 and MPICH: small real programs, traced with `datacrumbs trace`.

The programs (tests/workloads/uprobe_*.c) are compiled here against the
libraries from the archive (libhdf5-dev, mpich). HDF5 calls carry no byte count
(H5Dwrite takes ids), so their bytes are checked on the POSIX calls each library
call made: same thread, inside the call's interval; MPI-IO calls' bytes (count x
the datatype's size) are checked against those too. Files and objects by handle:
test_mpiio_hdf5_files.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from datacrumbs.probes.catalog import builtin_sets
from datacrumbs.probes.host_check import LibraryResolver
from datacrumbs.tracer.engine import resolve_library

from workloads import daemon_readback as rb
from workloads.daemon_build import hdf5_flags

pytestmark = pytest.mark.ebpf

DATACRUMBS = str(Path(sys.executable).with_name("datacrumbs"))
WORKLOADS = Path(__file__).resolve().parent / "workloads"
HDF5_SONAME, MPICH_SONAME = "libhdf5_serial.so.103", "libmpich.so.12"
HDF5_ELEMENTS = 262144            # int32: 1 MiB, above HDF5's sieve buffer: written directly
MPI_WRITES, MPI_COUNT = 10, 4096



@pytest.fixture(scope="module")
def programs():
    """{"hdf5": path, "mpiio": path}, built once for this module."""
    out = Path(tempfile.mkdtemp(prefix="datacrumbs-uprobe-progs-"))
    out.chmod(0o755)
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc and shutil.which("mpicc"), "cc and mpicc (mpich) are needed"
    built = {"hdf5": out / "uprobe_hdf5", "mpiio": out / "uprobe_mpiio"}
    subprocess.run([cc, "-O2", "-Wall", "-o", str(built["hdf5"]),
                    str(WORKLOADS / "uprobe_hdf5.c"), *hdf5_flags()],
                   check=True, capture_output=True, timeout=120)
    subprocess.run(["mpicc", "-O2", "-Wall", "-o", str(built["mpiio"]),
                    str(WORKLOADS / "uprobe_mpiio.c")], check=True, capture_output=True,
                   timeout=120)
    yield built
    shutil.rmtree(out, ignore_errors=True)


def _loaded_library(program: Path, soname: str) -> str:
    """The file the dynamic loader maps for soname when it starts program (ldd is ld.so)."""
    out = subprocess.run(["ldd", str(program)], capture_output=True, text=True, check=True,
                         timeout=30).stdout
    for line in out.splitlines():
        name, _, rest = line.strip().partition(" => ")
        if name == soname:
            return rest.split(" (")[0]
    raise AssertionError(f"{program} does not link {soname}:\n{out}")


@pytest.mark.parametrize("kind,soname,set_name", [("hdf5", HDF5_SONAME, "hdf5"),
                                                  ("mpiio", MPICH_SONAME, "mpiio")])
def test_catalog_library_is_the_inode_the_program_maps(programs, kind, soname, set_name):
    """uprobes live on an inode: the set's library must resolve to the file the program maps."""
    libraries = {p["library"] for p in builtin_sets()[set_name].probes}
    assert libraries == {soname}
    mapped = os.stat(_loaded_library(programs[kind], soname))
    for resolved in (LibraryResolver().resolve(soname), resolve_library(soname)):
        assert resolved is not None
        st = os.stat(resolved)
        assert (st.st_dev, st.st_ino) == (mapped.st_dev, mapped.st_ino)


def _trace(tmp_path, sets, *command):
    out = tmp_path / "out"
    out.mkdir()
    args = [a for s in sets for a in ("--set", s)]
    proc = subprocess.run([DATACRUMBS, "trace", *args, "-o", str(out), "--", *map(str, command)],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    traces = list(out.glob("*.pfw.gz"))
    assert len(traces) == 1, traces
    summary = json.loads(Path(str(traces[0])[:-len(".pfw.gz")] + ".summary.json").read_text())
    assert summary["events_lost"] == 0 and summary["complete"] is True
    fh = {r["args"]["value"]: r["args"]["name"] for r in rb.records(traces[0])
          if r.get("name") == "FH"}
    events = rb.events(traces[0])
    for e in events:
        e["file"] = fh.get(e["args"].get("fhash"))
    return proc, events, summary


def _below(call: dict, events: list[dict], name: str, path: Path) -> list[dict]:
    """POSIX `name` events on path made by call's thread while call ran (1 µs of rounding)."""
    end = call["ts"] + call["dur"] + 1
    return [e for e in events if e["cat"] == "POSIX" and e["name"] == name
            and e["tid"] == call["tid"] and e["file"] == str(path)
            and call["ts"] <= e["ts"] and e["ts"] + e["dur"] <= end]


def _named(events, cat, name):
    return [e for e in events if e["cat"] == cat and e["name"] == name]


def test_hdf5_calls_appear_with_the_bytes_written_and_read_below_them(site, bpf_object,
                                                                     programs, tmp_path):
    h5 = tmp_path / "data.h5"
    nbytes = HDF5_ELEMENTS * 4
    proc, events, summary = _trace(tmp_path, ["hdf5", "posix"], programs["hdf5"], h5,
                                   HDF5_ELEMENTS)
    assert proc.stdout == f"ok {nbytes}\n"
    attached = {p["id"] for p in summary["probes_attached"]}
    assert {"hdf5.h5dwrite", "hdf5.h5dread", "posix.pwrite64"} <= attached
    counts = {name: len(_named(events, "HDF5", name)) for name in
              ("H5Fcreate", "H5Fopen", "H5Dcreate2", "H5Dopen2", "H5Dwrite", "H5Dread",
               "H5Dclose", "H5Fclose")}
    assert counts == {"H5Fcreate": 1, "H5Fopen": 1, "H5Dcreate2": 1, "H5Dopen2": 1,
                      "H5Dwrite": 1, "H5Dread": 1, "H5Dclose": 2, "H5Fclose": 2}
    for op, n in counts.items():
        assert summary["operations"][f"HDF5/{op}"]["count"] == n
    (create,), (open_,) = _named(events, "HDF5", "H5Fcreate"), _named(events, "HDF5", "H5Fopen")
    assert create["file"] == open_["file"] == str(h5)       # the path argument, read at entry
    assert create["args"]["ret"] > 0 and open_["args"]["ret"] > 0   # hid_t, not an error
    (write,), (read,) = _named(events, "HDF5", "H5Dwrite"), _named(events, "HDF5", "H5Dread")
    assert write["args"]["ret"] == 0 and read["args"]["ret"] == 0
    assert "size" not in write["args"]    # bytes are not in H5Dwrite's arguments
    assert sum(e["args"]["size"] for e in _below(write, events, "pwrite64", h5)) == nbytes
    assert sum(e["args"]["size"] for e in _below(read, events, "pread64", h5)) == nbytes
    # the file's POSIX total holds the data twice plus HDF5's metadata
    assert summary["files"][str(h5)]["bytes"] > 2 * nbytes
    assert h5.stat().st_size > nbytes


@pytest.mark.parametrize("dtype,size", [("byte", 1), ("int", 4)])
def test_mpiio_calls_appear_with_counts_offsets_and_bytes_below(site, bpf_object, programs,
                                                                tmp_path, dtype, size):
    target = tmp_path / "mpi.bin"
    chunk = MPI_COUNT * size
    proc, events, summary = _trace(tmp_path, ["mpiio", "posix"], programs["mpiio"], target,
                                   MPI_WRITES, MPI_COUNT, dtype)
    assert proc.stdout == f"ok {MPI_WRITES * chunk}\n"
    (opened,) = _named(events, "MPIIO", "MPI_File_open")
    assert opened["file"] == str(target) and opened["args"]["ret"] == 0
    assert len(_named(events, "MPIIO", "MPI_File_close")) == 1
    for name, posix in (("MPI_File_write_at", "pwrite64"), ("MPI_File_read_at", "pread64")):
        calls = sorted(_named(events, "MPIIO", name), key=lambda e: e["ts"])
        assert summary["operations"][f"MPIIO/{name}"]["count"] == MPI_WRITES
        assert [c["args"]["offset"] for c in calls] == [i * chunk for i in range(MPI_WRITES)]
        for call in calls:
            assert call["args"]["ret"] == 0                  # MPI_SUCCESS
            assert call["args"]["count"] == MPI_COUNT        # elements of the datatype
            assert call["args"]["size"] == chunk             # x the predefined type's size
            assert call["file"] == str(target)               # named by its MPI_File
            below = _below(call, events, posix, target)
            assert sum(e["args"]["size"] for e in below) == chunk
            assert [e["args"]["offset"] for e in below] == [call["args"]["offset"]]
    assert target.stat().st_size == MPI_WRITES * chunk
