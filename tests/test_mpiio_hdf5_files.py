"""MPI-IO and HDF5 events name their file (and HDF5 object), MPI events their bytes.

Real programs (tests/workloads/mpiio_files.c under ``mpiexec -n 2``,
tests/workloads/hdf5_files.c), built here against Debian's MPICH and HDF5 and
traced with ``datacrumbs trace`` together with the POSIX set. Each program has
two files open at once, so a file named by "the last open" would be caught.
What the library layer reports is checked against the layer below it: the
POSIX calls each library call made (same thread, inside its interval) name
their file through the kernel's descriptor, and move the bytes the MPI event
claims; the files' sizes on disk are the totals.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from datacrumbs.tracer.engine import Engine, resolve_library
from datacrumbs.tracer.scope import Scope
from datacrumbs.tracer.handles import mpi_abi, mpich_datatype_size, romio_path

from workloads import daemon_readback as rb
from workloads.daemon_build import hdf5_flags

pytestmark = pytest.mark.ebpf

DATACRUMBS = str(Path(sys.executable).with_name("datacrumbs"))
WORKLOADS = Path(__file__).resolve().parent / "workloads"
RANKS, MPI_N = 2, 4
BYTE_COUNT, DOUBLE_COUNT, DERIVED_COUNT, INT_COUNT = 1000, 125, 10, 256   # mpiio_files.c
H5_N = 65536        # elements: 256 KiB and 512 KiB, above HDF5's 64 KiB sieve buffer



@pytest.fixture(scope="module")
def programs():
    out = Path(tempfile.mkdtemp(prefix="datacrumbs-files-progs-"))
    out.chmod(0o755)
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc and shutil.which("mpicc") and shutil.which("mpiexec"), "cc and mpich are needed"
    built = {"hdf5": out / "hdf5_files", "mpiio": out / "mpiio_files",
             "datatypes": out / "mpi_datatypes"}
    subprocess.run([cc, "-O2", "-Wall", "-o", str(built["hdf5"]), str(WORKLOADS / "hdf5_files.c"),
                    *hdf5_flags()], check=True, capture_output=True, timeout=120)
    subprocess.run(["mpicc", "-O2", "-Wall", "-o", str(built["mpiio"]),
                    str(WORKLOADS / "mpiio_files.c")], check=True, capture_output=True,
                   timeout=120)
    subprocess.run(["mpicc", "-O2", "-Wall", "-o", str(built["datatypes"]),
                    str(WORKLOADS / "mpi_datatypes.c")], check=True, capture_output=True,
                   timeout=120)
    yield built
    shutil.rmtree(out, ignore_errors=True)


def test_mpich_datatype_sizes_are_what_mpi_type_size_says(programs):
    """The daemon's decoding of MPICH datatype handles, against the library itself: every
    predefined type it decodes has MPI_Type_size's size; the common ones are decoded; pair
    and derived types (whose size is not in the handle) are unknown, never 0."""
    out = subprocess.run([str(programs["datatypes"])], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    rows = {name: (int(handle), int(size)) for name, handle, size in
            (line.split() for line in out.splitlines())}
    assert len(rows) > 40
    decoded = {name: mpich_datatype_size(handle) for name, (handle, _size) in rows.items()}
    for name, size in decoded.items():
        assert size is None or size == rows[name][1], name
    assert all(decoded[t] == rows[t][1] for t in (
        "MPI_BYTE", "MPI_CHAR", "MPI_INT", "MPI_DOUBLE", "MPI_FLOAT", "MPI_LONG",
        "MPI_LONG_DOUBLE", "MPI_INT64_T", "MPI_C_DOUBLE_COMPLEX", "MPI_DOUBLE_PRECISION"))
    assert decoded["derived_contiguous"] is None and decoded["derived_vector"] is None
    assert decoded["MPI_DOUBLE_INT"] is None and mpich_datatype_size(0x0C000000) is None
    assert mpich_datatype_size(rows["MPI_DOUBLE"][0] | 0xFFFFFFFF00000000) == 8  # a register
    assert mpi_abi(resolve_library("libmpich.so.12")) == "mpich"
    assert mpi_abi(resolve_library("libhdf5_serial.so.103")) is None
    assert romio_path("ufs:/scratch/x") == "/scratch/x" == romio_path("/scratch/x")
    assert romio_path("/home/u/lustre:/scratch/x") == "/scratch/x"     # joined to the cwd
    assert romio_path("/home/u/nfs:run/x") == "/home/u/run/x"
    assert romio_path("/d/file:with:colons") == "/d/file:with:colons"


def _trace(tmp_path, sets, *command, cwd=None):
    out = tmp_path / "out"
    out.mkdir()
    args = [a for s in sets for a in ("--set", s)]
    proc = subprocess.run([DATACRUMBS, "trace", *args, "-o", str(out), "--", *map(str, command)],
                          capture_output=True, text=True, timeout=300, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    (trace,) = out.glob("*.pfw.gz")
    summary = json.loads(Path(str(trace)[:-len(".pfw.gz")] + ".summary.json").read_text())
    assert summary["events_lost"] == 0 and summary["names_lost"] == 0
    assert summary["complete"] is True
    fh = {r["args"]["value"]: r["args"]["name"] for r in rb.records(trace) if r.get("name") == "FH"}
    events = rb.events(trace)
    for e in events:
        e["file"] = fh.get(e["args"].get("fhash"))
    return proc, events, summary


def _report_json(trace: Path, tmp_path: Path) -> str:
    """`datacrumbs report --json` of one trace, as a user runs it."""
    out = tmp_path / "report.json"
    proc = subprocess.run([DATACRUMBS, "report", "-q", "--json", str(out), str(trace)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out.read_text()


def _below(call: dict, events: list[dict], names: tuple[str, ...]) -> list[dict]:
    """POSIX events among ``names`` made by call's thread while call ran (1 µs of rounding)."""
    end = call["ts"] + call["dur"] + 1
    return [e for e in events if e["cat"] == "POSIX" and e["name"] in names
            and e["tid"] == call["tid"] and call["ts"] <= e["ts"] and e["ts"] + e["dur"] <= end]


def test_mpiio_events_name_their_file_and_bytes_of_predefined_datatypes(site, bpf_object,
                                                                        programs, tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a_rank = MPI_N * (BYTE_COUNT + DOUBLE_COUNT * 8) + DERIVED_COUNT * 16
    b_rank = MPI_N * INT_COUNT * 4
    # a is given relative to the ranks' cwd, b with ROMIO's file system prefix
    proc, events, summary = _trace(tmp_path, ["mpiio", "posix"], "mpiexec", "-n", RANKS,
                                   programs["mpiio"], "a.bin", f"ufs:{b}", MPI_N, cwd=tmp_path)
    assert proc.stdout.splitlines()[0] == f"ok {a_rank * RANKS} {b_rank * RANKS}"
    assert a.stat().st_size == a_rank * RANKS and b.stat().st_size == b_rank * RANKS
    mpi = [e for e in events if e["cat"] == "MPIIO"]
    assert len({e["pid"] for e in mpi}) == RANKS
    # each rank's process is labelled with its rank (from its launcher's PMI_RANK), as the
    # MPI library itself says: in the trace's metadata and in the report's process rows
    said = {int(pid): int(rank) for rank, pid in re.findall(r"^rank (\d+) pid (\d+)$",
                                                            proc.stderr, re.M)}
    assert sorted(said.values()) == list(range(RANKS)) and set(said) == {e["pid"] for e in mpi}
    (trace,) = (tmp_path / "out").glob("*.pfw.gz")
    labelled = {r["pid"]: r["args"].get("rank") for r in rb.records(trace)
                if r.get("name") == "process_name" and r["pid"] in said}
    assert labelled == said
    report = json.loads(_report_json(trace, tmp_path))
    rows = {p["pid"]: p for p in report["processes"] if p["pid"] in said}
    assert {pid: p["rank"] for pid, p in rows.items()} == said
    assert all(p["name"].endswith(f", rank {said[pid]}") for pid, p in rows.items())
    # every call names its file, by the absolute path the program opened
    assert Counter((e["name"], e["file"]) for e in mpi) == {
        ("MPI_File_open", str(a)): RANKS, ("MPI_File_open", str(b)): RANKS,
        ("MPI_File_write_at", str(a)): RANKS * (2 * MPI_N + 1),
        ("MPI_File_write_at", str(b)): RANKS * MPI_N,
        ("MPI_File_read_at", str(a)): RANKS, ("MPI_File_read_at_all", str(b)): RANKS,
        ("MPI_File_close", str(a)): RANKS, ("MPI_File_close", str(b)): RANKS}
    # bytes: count x the datatype's size; the derived type's bytes are unknown, not 0
    sizes = Counter()
    derived = []
    for e in mpi:
        if e["name"] in ("MPI_File_open", "MPI_File_close"):
            assert "size" not in e["args"]
            continue
        assert e["args"]["ret"] == 0
        if e["args"]["count"] == DERIVED_COUNT:
            derived.append(e)
            continue
        sizes[(e["name"], e["file"])] += e["args"]["size"]
    assert sizes == {("MPI_File_write_at", str(a)): RANKS * MPI_N * (BYTE_COUNT + DOUBLE_COUNT * 8),
                     ("MPI_File_write_at", str(b)): RANKS * b_rank,
                     ("MPI_File_read_at", str(a)): RANKS * a_rank,
                     ("MPI_File_read_at_all", str(b)): RANKS * b_rank}
    assert len(derived) == RANKS
    assert all(e["name"] == "MPI_File_write_at" and e["file"] == str(a) and "size" not in e["args"]
               for e in derived)
    # the layer below: each independent call's pwrite64/pread64 hit the same file and moved
    # exactly the bytes the MPI event reports (the derived call's 160 bytes are real)
    for e in mpi:
        if e["name"] not in ("MPI_File_write_at", "MPI_File_read_at"):
            continue
        below = _below(e, events, ("pwrite64", "pread64"))
        assert below and {p["file"] for p in below} == {e["file"]}
        moved = sum(p["args"]["size"] for p in below)
        assert moved == e["args"].get("size", DERIVED_COUNT * 16)
    # the summary credits MPI bytes to the files (as it does POSIX bytes: both layers)
    for op, expect in (("MPIIO/MPI_File_write_at", RANKS * (MPI_N * 2000 + b_rank)),
                       ("MPIIO/MPI_File_read_at", RANKS * a_rank)):
        assert summary["operations"][op]["bytes"] == expect


def test_hdf5_events_name_their_file_and_object(site, bpf_object, programs, tmp_path):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    # a relative to the cwd (made absolute), objects relative to their group (never the cwd)
    proc, events, summary = _trace(tmp_path, ["hdf5", "posix"], programs["hdf5"], "a.h5", b, H5_N,
                                   cwd=tmp_path)
    assert proc.stdout == "ok\n"
    h5 = sorted((e for e in events if e["cat"] == "HDF5"), key=lambda e: e["ts"])
    got = [(e["name"], Path(e["file"]).name if e["file"] else None,
            e["args"].get("dataset") or e["args"].get("group") or e["args"].get("attribute"))
           for e in h5]
    assert got == [
        ("H5Fcreate", "a.h5", None), ("H5Fcreate", "b.h5", None),
        ("H5Dcreate2", "a.h5", "/top"), ("H5Gcreate2", "a.h5", "/grid"),
        ("H5Dcreate2", "a.h5", "/grid/temperature"), ("H5Dcreate2", "b.h5", "/b"),
        ("H5Acreate2", "a.h5", "units"),
        ("H5Dwrite", "a.h5", "/top"), ("H5Dwrite", "b.h5", "/b"),
        ("H5Dwrite", "a.h5", "/grid/temperature"), ("H5Awrite", "a.h5", "units"),
        ("H5Aclose", "a.h5", "units"), ("H5Dclose", "b.h5", "/b"),
        ("H5Dclose", "a.h5", "/grid/temperature"), ("H5Gclose", "a.h5", "/grid"),
        ("H5Dclose", "a.h5", "/top"), ("H5Fclose", "b.h5", None), ("H5Fclose", "a.h5", None),
        ("H5Fopen", "a.h5", None), ("H5Dopen2", "a.h5", "/grid/temperature"),
        ("H5Dread", "a.h5", "/grid/temperature"), ("H5Dclose", "a.h5", "/grid/temperature"),
        ("H5Gopen2", "a.h5", "/grid"), ("H5Dopen2", "a.h5", "/grid/temperature"),
        ("H5Dopen2", "a.h5", "/top"), ("H5Dread", "a.h5", "/grid/temperature"),
        ("H5Dread", "a.h5", "/top"), ("H5Dclose", "a.h5", "/top"),
        ("H5Dclose", "a.h5", "/grid/temperature"), ("H5Gclose", "a.h5", "/grid"),
        ("H5Fclose", "a.h5", None)]
    assert {e["file"] for e in h5} == {str(a), str(b)}          # absolute, as opened
    # the kernel's view: what each data call wrote or read went to the file it names
    moved = defaultdict(int)
    for e in h5:
        if e["name"] in ("H5Dwrite", "H5Dread"):
            below = _below(e, events, ("pwrite64", "pread64"))
            assert below and {p["file"] for p in below} == {e["file"]}
            moved[(e["name"], e["args"]["dataset"])] += sum(p["args"]["size"] for p in below)
    assert moved == {("H5Dwrite", "/top"): H5_N * 4, ("H5Dwrite", "/b"): H5_N * 4,
                     ("H5Dwrite", "/grid/temperature"): H5_N * 8,
                     ("H5Dread", "/grid/temperature"): 2 * H5_N * 8, ("H5Dread", "/top"): H5_N * 4}
    assert summary["files"][str(a)]["count"] > 0 and summary["files"][str(b)]["count"] > 0


def test_handle_and_datatype_roles_that_cannot_work_are_refused(bpf_object, tracefs):
    libc = resolve_library("libc.so.6")

    def probe(pid, kind, args, target="write"):
        return {"id": pid, "kind": kind, "target": target, "category": "X", "args": args,
                "bytes": None, **({"library": libc} if kind == "uprobe" else {})}

    probes = [probe("two", "uprobe", {"handle": 0, "handle_out": 1}),
              probe("both", "uprobe", {"flags": 1, "datatype": 2}, "read"),
              probe("sys", "syscall", {"handle_ptr": 0}),
              probe("bad", "uprobe", {"handle_out": 7}, "pwrite"),
              probe("ok", "uprobe", {"handle_out": 1, "datatype": 2}, "pread")]
    with Engine(probes, Scope.for_pids([os.getpid()]), bpf_object=bpf_object) as eng:
        report = eng.attach()
    reasons = {p["id"]: r for p, r in report.refused}
    assert [p["id"] for p in report.attached] == ["ok"]
    assert reasons == {
        "two": "a probe has one handle role, not handle and handle_out",
        "both": "a probe has a flags or a datatype role, not both (they share the event's "
                "flags field)",
        "sys": "argument role 'handle_ptr' reads the caller's memory: uprobes only",
        "bad": "argument role 'handle_out' must be an argument index 0..5, not 7"}


def test_h5py_on_debians_libhdf5_names_files_and_datasets(site, bpf_object, tmp_path):
    """h5py looks objects up with H5Oopen and makes f["x"] = array anonymously
    (H5Dcreate_anon, then a link): its reads still name the dataset, the anonymous one
    its file."""
    h5 = tmp_path / "py.h5"
    proc, events, _summary = _trace(tmp_path, ["hdf5", "posix"], "/usr/bin/python3",
                                    WORKLOADS / "h5py_files.py", h5, H5_N)
    mapped, ok = proc.stdout.splitlines()
    assert ok == "ok" and "libhdf5_serial.so" in mapped     # Debian's, where the uprobes are
    h5_events = sorted((e for e in events if e["cat"] == "HDF5"), key=lambda e: e["ts"])
    got = [(e["name"], e["file"], e["args"].get("dataset") or e["args"].get("group")
            or e["args"].get("object")) for e in h5_events]
    f = str(h5)
    assert got == [
        ("H5Fcreate", f, None), ("H5Gcreate2", f, "/grid"),
        ("H5Dcreate2", f, "/grid/temperature"), ("H5Dwrite", f, "/grid/temperature"),
        ("H5Dcreate_anon", f, None), ("H5Dwrite", f, None),
        ("H5Fopen", f, None), ("H5Oopen", f, "/grid/temperature"),
        ("H5Dread", f, "/grid/temperature"), ("H5Oopen", f, "/grid"),
        ("H5Oopen", f, "/grid/temperature"), ("H5Dread", f, "/grid/temperature"),
        ("H5Oopen", f, "/top"), ("H5Dread", f, "/top")]
    for e in h5_events:
        if e["name"] in ("H5Dwrite", "H5Dread"):
            below = _below(e, events, ("pwrite64", "pread64"))
            assert below and {p["file"] for p in below} == {f}


def test_converter_follows_handles_through_close_reuse_failure_and_unknown_ids():
    """What one real run rarely shows: a freed MPI_File's address reused for the next
    file, a failed open, a handle opened before the trace, HDF5 ids in two processes."""
    from types import SimpleNamespace

    import numpy as np

    from datacrumbs.probes.catalog import builtin_sets
    from datacrumbs.tracer.daemon import EventConverter
    from datacrumbs.tracer.engine import EVENT_DTYPE
    from datacrumbs.tracer.paths import FdPaths

    probes = list(builtin_sets()["mpiio"].probes) + list(builtin_sets()["hdf5"].probes)
    index = {p["target"]: i for i, p in enumerate(probes)}
    dt_double = 0x4C00080B
    rows = [  # (pid, target, ret, count, datatype, handle), name of the open-like rows
        (1, "MPI_File_open", 0, 0, 0, 0xA0, "/d/one"),
        (1, "MPI_File_write_at", 0, 10, dt_double, 0xA0, None),
        (1, "MPI_File_close", 0, 0, 0, 0xA0, None),
        (1, "MPI_File_open", 0, 0, 0, 0xA0, "/d/two"),          # the same address again
        (1, "MPI_File_write_at", 0, 3, dt_double, 0xA0, None),
        (1, "MPI_File_open", 15, 0, 0, 0xB0, "/d/missing"),     # failed: nothing recorded
        (1, "MPI_File_write_at", 0, 3, 0x8C000001, 0xB0, None),  # unknown handle, derived type
        (1, "MPI_File_write_at", 13, 3, dt_double, 0xA0, None),  # failed: bytes unknown
        (2, "MPI_File_write_at", 0, 3, dt_double, 0xA0, None),   # another process's handle
        (1, "MPI_File_delete", 0, 0, 0, 0, "/cwd/ufs:/d/two"),
        (1, "H5Fopen", 7 << 56, 0, 0, 0, "/d/f.h5"),
        (2, "H5Fopen", 7 << 56, 0, 0, 0, "/d/g.h5"),             # same id, other process
        (1, "H5Dopen2", (5 << 56) | 1, 0, 0, 7 << 56, "x"),
        (2, "H5Dopen2", (5 << 56) | 1, 0, 0, 7 << 56, "/y/z"),
        (1, "H5Dread", 0, 0, 0, (5 << 56) | 1, None),
        (2, "H5Dread", 0, 0, 0, (5 << 56) | 1, None),
        (1, "H5Dread", 0, 0, 0, (5 << 56) | 9, None),            # opened before the trace
    ]
    ev = np.zeros(len(rows), EVENT_DTYPE)
    for i, (pid, target, ret, count, datatype, handle, _name) in enumerate(rows):
        ev[i] = (i, 1, pid, pid, index[target], -1, ret, count, -1, -1, -1, datatype, handle)
    batch = SimpleNamespace(events=ev, paths={i: r[6] for i, r in enumerate(rows) if r[6]})
    conv = EventConverter(probes, FdPaths())
    ops, paths, _paths2, args = conv.convert_rows(batch)
    assert paths == ["/d/one", "/d/one", "/d/one", "/d/two", "/d/two", "/d/missing", None,
                     "/d/two", None, "/d/two", "/d/f.h5", "/d/g.h5", "/d/f.h5", "/d/g.h5",
                     "/d/f.h5", "/d/g.h5", None]
    assert ops["size"].tolist()[:10] == [-1, 80, -1, -1, 24, -1, -1, -1, 24, -1]
    assert [a for a in args[12:]] == [{"dataset": "/x"}, {"dataset": "/y/z"},
                                      {"dataset": "/x"}, {"dataset": "/y/z"}, None]


def test_probes_added_at_run_time_keep_the_files_handles_name():
    """A library family attached mid-run adds probes (the daemon's library scan): an HDF5
    file opened before keeps naming the calls on its ids after it."""
    from types import SimpleNamespace

    import numpy as np

    from datacrumbs.probes.catalog import builtin_sets
    from datacrumbs.tracer.daemon import EventConverter
    from datacrumbs.tracer.engine import EVENT_DTYPE
    from datacrumbs.tracer.paths import FdPaths

    probes = list(builtin_sets()["hdf5"].probes)
    index = {p["target"]: i for i, p in enumerate(probes)}

    def batch(rows):
        ev = np.zeros(len(rows), EVENT_DTYPE)
        for i, (target, ret, handle, _name) in enumerate(rows):
            ev[i] = (i, 1, 1, 1, index[target], -1, ret, 0, -1, -1, -1, 0, handle)
        return SimpleNamespace(events=ev, paths={i: r[3] for i, r in enumerate(rows) if r[3]})

    conv = EventConverter(probes, FdPaths())
    conv.convert_rows(batch([("H5Fopen", 7 << 56, 0, "/d/f.h5"),
                             ("H5Dopen2", (5 << 56) | 1, 7 << 56, "x")]))
    copy = [dict(p, library="/x/libhdf5-abc.so", discovered=True) for p in probes]
    conv.set_probes(probes + copy)          # as the daemon does when a family attaches
    _ops, paths, _p2, args = conv.convert_rows(batch([("H5Dread", 0, (5 << 56) | 1, None)]))
    assert paths == ["/d/f.h5"] and args == [{"dataset": "/x"}]
    assert len(conv._errno_kind) == 2 * len(probes)
