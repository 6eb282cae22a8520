"""The compiled trace-line scanner (trace/scan.c): built at install time, loaded with ctypes.

Parsing was most of the report's CPU: pyarrow's JSON reader and its checks cost about
2.5 µs an event, more than the whole aggregation. scan.c reads a block of whole lines in
one pass into numpy columns (numbers, and strings as per-block codes with the list of
distinct ones), declining the whole block ("not mine") at the first line it cannot read
exactly as ``json.loads`` would; report/columnar.py then uses pyarrow or the dicts, which
give the same numbers (tests/test_report_columnar.py holds the three paths to identical
summaries).

The library is compiled beside the BPF object (``datacrumbs build-bpf``, ``datacrumbs
install``), never at run time: a report runs as an ordinary user who may have no compiler.
Not at pip install either: the package has no build step (it installs as plain Python),
while the site's install step already compiles the BPF object and lines.c with the same
compiler; the report finds it through the site configuration (paths.bpf_object) that
every node and login node has. A pip-installed copy without a site reads with pyarrow.
"""

from __future__ import annotations

import ctypes
import logging
from importlib import resources
from pathlib import Path

import numpy as np

from .fastlines import load_once, site_bpf_object

log = logging.getLogger("datacrumbs.trace")

LIBRARY_NAME = "datacrumbs-scan.so"
SOURCE_NAME = "scan.c"
ABI = 1

#: scan.c's string and integer columns, in its order (the ``args`` fields and the top ones).
STRINGS = ("name", "cat", "fhash", "fname", "hhash", "ftype", "fhash2", "ftype2")
INTS = ("pid", "tid", "size", "count", "errno", "offset", "ret", "flags")
FLOATS = ("ts", "dur")
_S = {k: i for i, k in enumerate(STRINGS)}
_ARRAYS = ("flt", "ival", "iok", "code", "soff", "slen", "op", "opcat", "opname", "fil",
           "fcol", "fcode", "moff", "mlen")


class _Out(ctypes.Structure):
    _fields_ = [("cap", ctypes.c_int64)] + [(a, ctypes.c_void_p) for a in _ARRAYS] + [
        ("nstr", ctypes.c_int64 * len(STRINGS)), ("nop", ctypes.c_int64),
        ("nfil", ctypes.c_int64), ("nmeta", ctypes.c_int64), ("nrec", ctypes.c_int64),
        ("fail_at", ctypes.c_int64)]


def source_path() -> Path:
    return Path(str(resources.files("datacrumbs.trace") / SOURCE_NAME))


def library_path(bpf_object) -> Path:
    """Where the scanner lives: beside the site's BPF object (and the line formatter)."""
    return Path(bpf_object).with_name(LIBRARY_NAME)


def build_library(out: Path, cc: str | None = None) -> Path:
    """Compile scan.c into ``out`` atomically (``cc``, else cc, clang or gcc from PATH)."""
    from ..tracer.build import build_shared_library

    return build_shared_library(source_path(), out, "trace line scanner", cc)


class Block:
    """The complete events of one block as scan.c read them (rows in trace order)."""

    __slots__ = ("n", "flt", "ival", "iok", "code", "strings", "op", "op_keys", "fil",
                 "file_keys", "meta_lines", "nrec")

    @property
    def num_rows(self) -> int:
        return self.n

    def ints(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(int64 values, 1 where given) of an integer column."""
        i = INTS.index(name)
        return self.ival[i], self.iok[i]


class Scanner:
    """The loaded library: ``scan(body)`` is a :class:`Block`, or None for "not mine"."""

    def __init__(self, lib: ctypes.CDLL, path: Path):
        self.path = path
        self._fn = lib.dc_scan
        self._fn.restype = ctypes.c_int64
        self._fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.POINTER(_Out)]
        self._double = lib.dc_scan_double
        self._double.restype = ctypes.c_int
        self._double.argtypes = [ctypes.c_char_p, ctypes.c_int64, ctypes.POINTER(ctypes.c_double)]
        self.blocks = 0             # blocks read here (tests: the scanner did run)
        self.declined = 0

    def number(self, token: bytes) -> float | None:
        """The float scan.c makes of one JSON number (None: it would decline it)."""
        out = ctypes.c_double()
        return out.value if self._double(token, len(token), ctypes.byref(out)) else None

    def scan(self, body: bytes, start: int = 0, end: int | None = None) -> Block | None:
        """Rows of a block of whole lines (no ``[``/``]`` lines, no trailing newline):
        ``body[start:end]``, read in place (a slice would copy megabytes a block)."""
        end = len(body) if end is None else end
        size = end - start
        addr = ctypes.cast(ctypes.c_char_p(body), ctypes.c_void_p).value + start
        # our lines are 150 to 300 bytes; a block of shorter ones is scanned again
        for cap in (size // 96 + 64, size // 10 + 2):
            arrays = self._arrays(cap)
            out = _Out(cap, *(a.ctypes.data for a in arrays))
            n = self._fn(addr, size, ctypes.byref(out))
            if n != -2:
                break
        if n < 0:
            self.declined += 1
            if n == -1:
                log.debug("scanner: line at byte %d of a block is not one it reads; "
                          "parsing the block with pyarrow", out.fail_at)
            return None
        self.blocks += 1
        return _block(body, n, out, dict(zip(_ARRAYS, arrays)), start)

    @staticmethod
    def _arrays(cap: int) -> list:
        ns, ni = len(STRINGS), len(INTS)
        shapes = {"flt": ((len(FLOATS), cap), np.float64), "ival": ((ni, cap), np.int64),
                  "iok": ((ni, cap), np.uint8), "code": ((ns, cap), np.int32),
                  "soff": ((ns, cap), np.int64), "slen": ((ns, cap), np.int64)}
        return [np.empty(*shapes.get(a, ((cap,), np.int64 if a in ("moff", "mlen")
                                         else np.int32))) for a in _ARRAYS]


def _block(body: bytes, n: int, out: _Out, a: dict, base: int = 0) -> Block:
    b = Block()
    b.n, b.nrec = n, out.nrec
    b.flt, b.ival = a["flt"][:, :n], a["ival"][:, :n]
    b.iok, b.code = a["iok"][:, :n].view(bool), a["code"][:, :n]
    soff, slen = a["soff"], a["slen"]
    b.strings = [[body[o:o + ln].decode("utf-8") for o, ln in
                  zip((soff[c, :out.nstr[c]] + base).tolist(), slen[c, :out.nstr[c]].tolist())]
                 for c in range(len(STRINGS))]
    names, cats = b.strings[_S["name"]], b.strings[_S["cat"]]
    b.op = a["op"][:n]
    b.op_keys = [(cats[c] if c >= 0 else "", names[m] if m >= 0 else "") for c, m in
                 zip(a["opcat"][:out.nop].tolist(), a["opname"][:out.nop].tolist())]
    hashes, fnames = b.strings[_S["fhash"]], b.strings[_S["fname"]]
    b.fil = a["fil"][:n]
    b.file_keys = [hashes[c] if col == _S["fhash"] else "\0" + fnames[c] for col, c in
                   zip(a["fcol"][:out.nfil].tolist(), a["fcode"][:out.nfil].tolist())]
    b.meta_lines = [body[o:o + ln] for o, ln in zip((a["moff"][:out.nmeta] + base).tolist(),
                                                    a["mlen"][:out.nmeta].tolist())]
    return b


_loaded: dict[str, Scanner | None] = {}


def load(path) -> Scanner | None:
    """The scanner at ``path``, or None (logged once, at debug level: the report is the
    same without it) when it is missing, unsafe or of another ABI."""
    return load_once(_loaded, path, Scanner, "dc_scan_abi", ABI, "trace line scanner",
                     "parsing with pyarrow", logging.DEBUG)


def for_site() -> Scanner | None:
    """The scanner beside the site configuration's BPF object (None: none usable)."""
    bpf_object = site_bpf_object("trace line scanner")
    return load(library_path(bpf_object)) if bpf_object is not None else None
