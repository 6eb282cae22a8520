"""Library handles -> file names, so MPI-IO and HDF5 events carry their file.

MPI-IO and HDF5 calls name their file once, when it is opened, and then work
on a handle: an ``MPI_File`` (written by ``MPI_File_open`` to its last
argument), an HDF5 ``hid_t`` (returned by ``H5Fcreate``/``H5Fopen``, and by
``H5Dcreate2``/``H5Dopen2``/``H5Gopen2``... for objects inside a file, whose
first argument is the file or group they are in). The kernel sends each
event's handle (``EVENT_DTYPE["handle"]``, from the probe's ``handle``,
``handle_ptr`` or ``handle_out`` role) and, for opens, the name argument (the
``path`` role: a file name for file opens, an object name for HDF5 object
opens). :class:`HandleNames` keeps a table per process, within fixed memory,
from handle to (file, object path) and names every event by its handle.

MPI bytes: an MPI data call gives a count of elements of a datatype (the
``datatype`` role, sent in the event's flags word). In the MPICH ABI (MPICH,
Intel MPI, MVAPICH, Cray MPICH: ``libmpich.so.12``/``libmpi.so.12``) a
predefined datatype is an int handle that holds its own size
(``MPIR_Datatype_get_basic_size``), so bytes = count x size; a derived
datatype's size is only in the library's memory, and its bytes stay unknown
(absent from the event, never 0). Open MPI's datatypes are pointers to
globals: not decoded (bytes unknown).
"""

from __future__ import annotations

import functools
import re
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from elftools.common.exceptions import ELFError

# The MPI calls are in the probe sets under their MPI_ and PMPI_ names.
MPI_OPEN_OPS = frozenset({"MPI_File_open", "PMPI_File_open"})
MPI_CLOSE_OPS = frozenset({"MPI_File_close", "PMPI_File_close"})
# HDF5 calls that return a new file id for their path argument.
H5_FILE_OPEN_OPS = frozenset({"H5Fcreate", "H5Fopen"})
# HDF5 calls that return a new id for the object named by their path argument (a name
# relative to the location of their handle argument: a file or group id; H5Oopen opens
# any object, as h5py does to read f["a/b"]); anonymous ones (h5py's f["x"] = array makes
# its dataset with H5Dcreate_anon, then links it) have no name yet, only their file.
H5_OBJECT_OPEN_OPS = frozenset({
    "H5Dcreate2", "H5Dcreate1", "H5Dopen2", "H5Dopen1", "H5Gcreate2", "H5Gcreate1",
    "H5Gopen2", "H5Gopen1", "H5Oopen", "H5Acreate2", "H5Acreate1", "H5Aopen",
    "H5Aopen_name", "H5Dcreate_anon"})
# HDF5 calls that release their handle argument.
H5_CLOSE_OPS = frozenset({"H5Fclose", "H5Dclose", "H5Gclose", "H5Aclose", "H5Oclose"})
# The trace arg that names an HDF5 call's object, by the call's interface (H5F calls
# name only the file).
H5_OBJECT_ARG = {"H5D": "dataset", "H5G": "group", "H5A": "attribute", "H5O": "object"}
# ROMIO accepts "ufs:/path" and the like to choose its file system driver: the file is
# what follows. Such a name does not start with "/", so the engine has already joined it to
# the caller's cwd ("/cwd/ufs:/path", "/cwd/ufs:rel"): the prefix is a path component.
_ROMIO_PREFIX = re.compile(r"(?:^|(?<=/))(?:ufs|nfs|lustre|gpfs|pvfs2|panfs|daos|beegfs|xfs|"
                           r"testfs|ime|quobytefs|gridftp|bg|bgl|piofs|pvfs|sfs|hfs|zoidfs):(?=.)")

# MPICH handles (src/include/mpir_objects.h): kind in bits 30-31 (1: builtin), object
# type in bits 26-29 (3: datatype); a builtin datatype's size in bytes is in bits 8-15.
_MPICH_BUILTIN_DATATYPE_MASK, _MPICH_BUILTIN_DATATYPE = 0xFC000000, 0x4C000000


def mpich_datatype_size(datatype: int) -> int | None:
    """Bytes of one element of a predefined MPICH datatype; None for derived ones (and for
    MPI_DATATYPE_NULL, MPI_LB, MPI_UB and the pair types, whose size is not encoded)."""
    datatype &= 0xFFFFFFFF
    if datatype & _MPICH_BUILTIN_DATATYPE_MASK != _MPICH_BUILTIN_DATATYPE:
        return None
    return (datatype >> 8) & 0xFF or None


@functools.lru_cache(maxsize=16)
def mpi_abi(library: str | None) -> str | None:
    """"mpich" when the library's datatypes are MPICH int handles, "ompi" for Open MPI
    (pointers), None when it cannot tell (then no bytes are computed). Decided by the
    names in its dynamic string table (a byte search: decoding symbols costs 0.1 s)."""
    if not library:
        return None
    from elftools.elf.elffile import ELFFile    # here: the daemon's start does not need it

    try:
        with open(library, "rb") as f:
            section = ELFFile(f).get_section_by_name(".dynstr")
            names = b"\0" + section.data() if section is not None else b""
    except (OSError, ELFError, ValueError):
        return None
    if b"\0ompi_mpi_" in names:
        return "ompi"
    if b"\0MPIR_" in names or b"\0MPII_" in names:
        return "mpich"
    return None


def romio_path(name: str) -> str:
    """The file of an MPI_File_open name, without ROMIO's file system prefix: ``ufs:/a/b``
    and ``/cwd/ufs:/a/b`` are ``/a/b``, ``/cwd/ufs:b`` is ``/cwd/b``."""
    m = _ROMIO_PREFIX.search(name)
    if m is None:
        return name
    rest = name[m.end():]
    return rest if rest.startswith("/") else name[:m.start()] + rest


def _join(parent: str | None, name: str) -> str:
    """HDF5 object path of ``name`` opened at a location whose path is ``parent``."""
    if name.startswith("/") or parent is None:
        return name
    return f"{parent.rstrip('/')}/{name}"


@dataclass(frozen=True)
class Handle:
    file: str | None            # the file's name as opened
    path: str | None = None     # HDF5: the object's path in the file ("/" for the file),
                                # an attribute's name, None when not known


class HandleTable:
    """(process, library, handle) -> Handle, within fixed memory (oldest dropped first)."""

    def __init__(self, *, max_per_pid: int = 65536, max_pids: int = 4096):
        self._max, self._max_pids = max_per_pid, max_pids
        self._tables: OrderedDict[int, OrderedDict[tuple[str, int], Handle]] = OrderedDict()

    def put(self, pid: int, lib: str, handle: int, value: Handle) -> None:
        table = self._tables.get(pid)
        if table is None:
            table = self._tables[pid] = OrderedDict()
            if len(self._tables) > self._max_pids:
                self._tables.popitem(last=False)
        table[(lib, handle)] = value
        table.move_to_end((lib, handle))
        if len(table) > self._max:
            table.popitem(last=False)

    def get(self, pid: int, lib: str, handle: int) -> Handle | None:
        table = self._tables.get(pid)
        return table.get((lib, handle)) if table is not None else None

    def pop(self, pid: int, lib: str, handle: int) -> Handle | None:
        table = self._tables.get(pid)
        return table.pop((lib, handle), None) if table is not None else None

    def __len__(self) -> int:
        return sum(len(t) for t in self._tables.values())


class HandleNames:
    """Names the rows of MPI-IO and HDF5 probes by their handles, and computes MPI bytes.

    ``probes``: the engine's probe list (``ops["probe"]`` indexes it); ``library_of``
    resolves a probe's library (a soname in catalog sets) to its file, for the MPI ABI.
    """

    def __init__(self, probes: list[dict], library_of=None, table: HandleTable | None = None):
        self.table = table or HandleTable()
        self._ops: dict[int, tuple[str, str]] = {}      # probe -> (library kind, op)
        datatype_sizes = []
        for i, probe in enumerate(probes):
            roles = probe.get("args") if isinstance(probe.get("args"), dict) else {}
            if probe.get("kind") != "uprobe":
                continue
            op = str(probe.get("target") or "").split("@")[0]
            lib = "MPI" if "MPI_File_" in op else "H5" if op.startswith("H5") else None
            if lib is None:
                continue
            if any(r in roles for r in ("handle", "handle_ptr", "handle_out")) \
                    or op in H5_FILE_OPEN_OPS or (lib == "MPI" and "path" in roles):
                self._ops[i] = (lib, op)
            if lib == "MPI" and "datatype" in roles and "count" in roles:
                library = probe.get("library")
                if library_of is not None:
                    library = library_of(library)
                if mpi_abi(library) == "mpich":
                    datatype_sizes.append(i)
        self._sized = np.array(sorted(datatype_sizes), dtype=np.int64)
        self._named = np.array(sorted(self._ops), dtype=np.int64)

    @property
    def active(self) -> bool:
        return bool(self._ops) or bool(len(self._sized))

    def set_bytes(self, ops: np.ndarray, datatypes: np.ndarray) -> None:
        """``ops["size"]`` = count x size of the datatype for MPI data calls that succeeded
        with a predefined datatype; other rows of those probes keep -1 (unknown)."""
        if not len(self._sized):
            return
        rows = np.flatnonzero(np.isin(ops["probe"], self._sized) & (ops["ret"] == 0)
                              & (ops["count"] >= 0))
        for i in rows.tolist():
            size = mpich_datatype_size(int(datatypes[i]))
            if size is not None:
                ops["size"][i] = int(ops["count"][i]) * size

    def name_rows(self, ops: np.ndarray, handles: np.ndarray, paths: list,
                  opened: dict) -> list | None:
        """Set ``paths[i]`` (the file) of every row of a handle probe, in order; return the
        extra ``args`` of each row (HDF5 object names), None when no row has any."""
        rows = np.flatnonzero(np.isin(ops["probe"], self._named)).tolist()
        if not rows:
            return None
        extra: list | None = None
        for i in rows:
            lib, op = self._ops[int(ops["probe"][i])]
            got = self._row(lib, op, int(ops["pid"][i]), int(handles[i]), int(ops["ret"][i]),
                            opened.get(i))
            paths[i] = got.file if got is not None else None
            key = H5_OBJECT_ARG.get(op[:3]) if lib == "H5" else None
            if key is not None and got is not None and got.path is not None:
                if extra is None:
                    extra = [None] * len(ops)
                extra[i] = {key: got.path}
        return extra

    def _row(self, lib: str, op: str, pid: int, handle: int, ret: int,
             name: str | None) -> Handle | None:
        table = self.table
        if lib == "MPI":
            if op in MPI_OPEN_OPS:
                if name is None:
                    return None
                found = Handle(romio_path(name))
                if ret == 0 and handle:
                    table.put(pid, lib, handle, found)
                return found
            if name is not None:        # MPI_File_delete: a name, no handle
                return Handle(romio_path(name))
            if op in MPI_CLOSE_OPS:
                return table.pop(pid, lib, handle) if ret == 0 else table.get(pid, lib, handle)
            return table.get(pid, lib, handle)
        if op in H5_FILE_OPEN_OPS:
            if name is None:
                return None
            found = Handle(name, "/")
            if ret > 0:
                table.put(pid, lib, ret, found)
            return found
        if op in H5_OBJECT_OPEN_OPS:
            loc = table.get(pid, lib, handle)
            file = loc.file if loc else None
            if name is None:
                found = Handle(file)
            elif op.startswith("H5A"):  # an attribute's name is not a path in the file
                found = Handle(file, name)
            else:
                found = Handle(file, _join(loc.path if loc else None, name))
            if ret > 0 and (file is not None or found.path is not None):
                table.put(pid, lib, ret, found)
            return found
        if op in H5_CLOSE_OPS:
            return table.pop(pid, lib, handle) if ret >= 0 else table.get(pid, lib, handle)
        return table.get(pid, lib, handle)
