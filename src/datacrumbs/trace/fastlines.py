"""The compiled line formatter (trace/lines.c): built at install time, loaded with ctypes.

A trace line per event written with a Python f-string costs the daemon 0.3 to 0.6 µs of
CPU, more than the whole per-event budget (0.5 µs from the ring buffer to gzip bytes on
disk); numpy and pyarrow string kernels were measured at 0.1 to 0.25 µs a line for the
ragged join alone. So the writer decides a batch's layout in Python (which columns it has,
which values repeat) and this module runs it over the rows in C, about 0.03 µs a line.

The library is compiled next to the BPF object (``datacrumbs build-bpf``, ``datacrumbs
install``), never by the daemon. Without it, or with one of another ABI, the writer formats
the same bytes in Python (tests/test_fastlines.py holds both to identical output).
"""

from __future__ import annotations

import ctypes
import logging
import os
from importlib import resources
from pathlib import Path

import numpy as np

from ..safelib import unsafe_reason

log = logging.getLogger("datacrumbs.trace")

LIBRARY_NAME = "datacrumbs-lines.so"
SOURCE_NAME = "lines.c"
ABI = 3

OP_CONST, OP_ID, OP_INT, OP_US, OP_TABLE, OP_RET = range(6)
#: The longest text one number can add (a sign and 19 digits), and a microsecond value.
_INT_MAX = 20
_US_MAX = 25


class _Op(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_int64), ("str", ctypes.c_void_p), ("len", ctypes.c_int64),
                ("vals", ctypes.c_void_p), ("idx", ctypes.c_void_p), ("tbl", ctypes.c_void_p),
                ("off", ctypes.c_void_p), ("mask", ctypes.c_void_p), ("skip_neg", ctypes.c_int64)]


#: dc_convert's fields: its name -> (the dtype's field, the type it must have)
_EV_FIELDS = {"ev_ts": ("ts_ns", "<u8"), "ev_dur": ("dur_ns", "<u8"), "ev_pid": ("pid", "<u4"),
              "ev_tid": ("tid", "<u4"), "ev_probe": ("probe", "<u4"), "ev_fd": ("fd", "<i4"),
              "ev_ret": ("ret", "<i8"), "ev_count": ("count", "<u8"),
              "ev_offset": ("offset", "<i8"), "ev_bytes": ("bytes", "<i8"),
              "ev_fd2": ("fd2", "<i4"), "ev_flags": ("flags", "<u4")}
_OPS_FIELDS = {"op_ts": ("ts_ns", "<i8"), "op_dur": ("dur_ns", "<i8"), "op_pid": ("pid", "<i8"),
               "op_tid": ("tid", "<i8"), "op_probe": ("probe", "<i4"), "op_ret": ("ret", "<i8"),
               "op_errno": ("errno", "<i4"), "op_fd": ("fd", "<i8"),
               "op_count": ("count", "<i8"), "op_offset": ("offset", "<i8"),
               "op_size": ("size", "<i8"), "op_fd2": ("fd2", "<i8"),
               "op_flags": ("flags", "<i8"), "op_kind": ("kind", "i1"),
               "op_kind2": ("kind2", "i1")}


#: dc_uniform's columns, in the order of its bits
UNIFORM_COLUMNS = ("pid", "tid", "ret", "fd", "count", "offset", "size", "fd2", "flags",
                   "probe", "errno", "kind", "kind2")
#: the record layout dc_convert expects (only its row half matters to dc_uniform)
_EV_DTYPE_OF_LAYOUT = np.dtype([(field, want) for field, want in _EV_FIELDS.values()])


class _Layout(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int64) for name in
                ("ev_stride", *_EV_FIELDS, "op_stride", *_OPS_FIELDS)]


def source_path() -> Path:
    return Path(str(resources.files("datacrumbs.trace") / SOURCE_NAME))


def library_path(bpf_object) -> Path:
    """Where the formatter lives: beside the site's BPF object."""
    return Path(bpf_object).with_name(LIBRARY_NAME)


def build_library(out: Path, cc: str | None = None) -> Path:
    """Compile lines.c into ``out`` atomically (``cc``, else cc, clang or gcc from PATH)."""
    from ..tracer.build import build_shared_library

    return build_shared_library(source_path(), out, "trace line formatter", cc)


class LineFormatter:
    """The loaded library: ``format_into(program, n, first_id, buf, pos)`` writes n lines
    into a bytearray at ``pos`` and returns their length."""

    def __init__(self, lib: ctypes.CDLL, path: Path):
        self.path = path
        self._fn = lib.dc_format
        self._fn.restype = ctypes.c_int64
        self._fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                             ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64]
        self._convert = lib.dc_convert
        self._convert.restype = ctypes.c_int64
        self._convert.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
                                  ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                  ctypes.c_void_p, ctypes.c_int64]
        self._layouts: dict = {}
        self._uniform = lib.dc_uniform
        self._uniform.restype = ctypes.c_uint64
        self._uniform.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]

    def format_into(self, program: "Program", n: int, first_id: int, buf: bytearray,
                    pos: int) -> int:
        """Needs ``program.row_max * n`` bytes of room after ``pos``."""
        if len(buf) - pos < program.row_max * n:
            raise ValueError("trace line formatter: too little room in the buffer")
        ops = (_Op * len(program.ops))(*program.ops)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(buf)) + pos
        used = self._fn(ops, len(program.ops), n, first_id, addr, len(buf) - pos,
                        program.row_max)
        if used < 0:
            raise RuntimeError("trace line formatter: output larger than its bound")
        return used

    def convert(self, ev: np.ndarray, ops: np.ndarray, kinds, kinds2,
                errno_kind: np.ndarray) -> bool:
        """Fill the trace rows ``ops`` from the ring-buffer records ``ev`` in one pass
        (EventConverter.convert_rows' columns); False when this cannot (another layout,
        a probe outside ``errno_kind``): the caller's numpy code then does it."""
        layout = self._layout(ev.dtype, ops.dtype)
        n = len(ev)
        if layout is None or len(ops) != n or ev.ndim != 1 or ops.strides != (ops.itemsize,):
            return False
        if n == 0:
            return True
        layout.ev_stride = ev.strides[0]
        keep = []
        ptrs = []
        for col in (kinds, kinds2):
            if col is None:
                ptrs.append(None)
                continue
            col = np.ascontiguousarray(col, np.uint8)
            keep.append(col)
            ptrs.append(col.ctypes.data)
        table = np.ascontiguousarray(errno_kind, np.uint8)
        rc = self._convert(ev.ctypes.data, n, ops.ctypes.data, ctypes.byref(layout), ptrs[0],
                           ptrs[1], table.ctypes.data, len(table))
        return rc == 0

    def uniform(self, ops: np.ndarray) -> dict | None:
        """{column: its one value} of the UNIFORM_COLUMNS that hold a single value in
        ``ops`` (one pass in C); None when this cannot tell (another layout)."""
        from .writer import OPS_DTYPE      # the rows' own layout, whatever the records'

        layout = self._layout(_EV_DTYPE_OF_LAYOUT, ops.dtype) if ops.dtype == OPS_DTYPE \
            else None
        if layout is None or ops.ndim != 1 or ops.strides != (ops.itemsize,) or not len(ops):
            return None
        bits = self._uniform(ops.ctypes.data, len(ops), ctypes.byref(layout))
        row = ops[0]
        return {name: int(row[name]) for k, name in enumerate(UNIFORM_COLUMNS) if bits >> k & 1}

    def _layout(self, ev_dtype: np.dtype, ops_dtype: np.dtype):
        """The C layout of these dtypes, or None if a field is missing or of another type."""
        key = (ev_dtype, ops_dtype)
        if key in self._layouts:
            return self._layouts[key]
        layout = _Layout()
        ok = True
        for name, (field, want) in _EV_FIELDS.items():
            got = ev_dtype.fields.get(field) if ev_dtype.fields else None
            if got is None or got[0] != np.dtype(want):
                ok = False
                break
            setattr(layout, name, got[1])
        for name, (field, want) in _OPS_FIELDS.items():
            got = ops_dtype.fields.get(field) if ops_dtype.fields else None
            if not ok or got is None or got[0] != np.dtype(want):
                ok = False
                break
            setattr(layout, name, got[1])
        layout.op_stride = ops_dtype.itemsize
        self._layouts[key] = layout if ok else None
        return self._layouts[key]

    def format(self, program: "Program", n: int, first_id: int) -> bytes:
        """The n lines as bytes (tests; the writer formats into its own buffer)."""
        buf = bytearray(program.row_max * n)
        return bytes(buf[:self.format_into(program, n, first_id, buf, 0)])


_loaded: dict[str, LineFormatter | None] = {}


def open_library(path: Path, abi_symbol: str, abi: int, what: str, instead: str,
                 level: int) -> ctypes.CDLL | None:
    """The compiled ``what`` at ``path``, or None when it is missing (said at debug level:
    not built is normal), unsafe or of another ABI (said at ``level``); ``instead`` is
    what the caller does then."""
    try:
        why = unsafe_reason(path)
        if why:
            log.log(level, "not loading the %s %s: %s; %s", what, path, why, instead)
            return None
        lib = ctypes.CDLL(os.path.realpath(path))
        getattr(lib, abi_symbol).restype = ctypes.c_int
        found = getattr(lib, abi_symbol)()
        if found != abi:
            log.log(level, "%s %s has ABI %d, not %d: rebuild it with `datacrumbs build-bpf`; "
                    "%s", what, path, found, abi, instead)
            return None
        return lib
    except FileNotFoundError:     # not built: the same result, more CPU; no noise for users
        log.debug("no %s at %s (`datacrumbs build-bpf` builds it); %s", what, path, instead)
    except (OSError, AttributeError) as exc:
        log.log(level, "cannot load the %s %s (%s); %s", what, path, exc, instead)
    return None


def load_once(cache: dict, path, wrap, abi_symbol: str, abi: int, what: str, instead: str,
              level: int):
    """``wrap(library, path)`` of the compiled library at ``path``, opened (and any refusal
    logged) once per path and kept in ``cache``; None when open_library refuses it."""
    path = Path(path)
    key = str(path)
    if key not in cache:
        lib = open_library(path, abi_symbol, abi, what, instead, level)
        cache[key] = wrap(lib, path) if lib is not None else None
    return cache[key]


def site_bpf_object(what: str) -> Path | None:
    """The site configuration's BPF object, beside which the compiled ``what`` lives (None,
    said at debug level, when there is no usable configuration: the caller's Python path
    gives the same results)."""
    from ..config import load_config
    from ..errors import DatacrumbsError

    try:
        return Path(load_config().bpf_object)
    except (DatacrumbsError, OSError, ValueError) as exc:
        log.debug("no site configuration for the %s (%s)", what, exc)
        return None


def load(path) -> LineFormatter | None:
    """The formatter at ``path``, or None (logged once) when it is missing, unsafe or of
    another ABI: the writer then formats in Python, slower, with the same bytes."""
    return load_once(_loaded, path, LineFormatter, "dc_lines_abi", ABI, "trace line formatter",
                     "formatting in Python", logging.WARNING)


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _addr(data: bytes) -> int:
    """Address of a bytes object's own buffer (kept alive by the Program)."""
    return ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value


class Program:
    """The operations of one batch's lines; arrays are kept alive until formatted."""

    def __init__(self):
        self.ops: list[_Op] = []
        self.row_max = 1
        self._keep: list = []
        self._text: list[bytes] = []      # pending constant text, merged into one op

    def _flush_text(self) -> None:
        if self._text:
            data = b"".join(self._text)
            self._text = []
            self._keep.append(data)
            self.ops.append(_Op(OP_CONST, _addr(data),
                                len(data), None, None, None, None, None, 0))
            self.row_max += len(data)

    def _array(self, values, dtype):
        arr = np.ascontiguousarray(values, dtype=dtype)
        self._keep.append(arr)
        return arr.ctypes.data

    def text(self, text: str | bytes) -> None:
        self._text.append(text if isinstance(text, bytes) else _bytes(text))

    def ident(self) -> None:
        self._flush_text()
        self.ops.append(_Op(OP_ID, None, 0, None, None, None, None, None, 0))
        self.row_max += _INT_MAX

    def number(self, prefix: str, values, *, skip_neg: bool = False, mask=None) -> None:
        """``prefix`` and the value, or nothing where mask is 0 or (skip_neg) it is < 0."""
        self._flush_text()
        pre = _bytes(prefix)
        self._keep.append(pre)
        self.ops.append(_Op(OP_INT, _addr(pre),
                            len(pre), self._array(values, np.int64), None, None, None,
                            None if mask is None else self._array(mask, np.uint8),
                            int(skip_neg)))
        self.row_max += len(pre) + _INT_MAX

    def micros(self, values, *, clamp: bool = False) -> None:
        """Nanoseconds as microseconds with three decimals (negative as 0 when clamp)."""
        self._flush_text()
        self.ops.append(_Op(OP_US, None, 0, self._array(values, np.int64), None, None, None,
                            None, int(clamp)))
        self.row_max += _US_MAX

    def table(self, entries: list, index) -> None:
        """Entry ``index[row]`` of ``entries`` (strings; an index out of range: nothing,
        where Python would have raised)."""
        if len(entries) == 1:
            self.text(entries[0])
            return
        self._flush_text()
        data = [_bytes(e) for e in entries]
        off = np.zeros(len(data) + 1, np.int64)
        off[1:] = np.cumsum([len(d) for d in data])
        blob = b"".join(data)
        self._keep.append(blob)
        self.ops.append(_Op(OP_TABLE, None, len(data), None, self._array(index, np.int32),
                            _addr(blob),
                            self._array(off, np.int64), None, 0))
        self.row_max += max(len(d) for d in data)

    def strings(self, values: list) -> None:
        """A column of one string per row (rare columns): as a table of its distinct ones."""
        ids: dict = {}
        index = np.fromiter((ids.setdefault(v, len(ids)) for v in values), np.int32, len(values))
        self.table(list(ids), index)

    def ret(self, ret, errno, mask=None) -> None:
        self._flush_text()
        self.ops.append(_Op(OP_RET, None, 0, self._array(ret, np.int64),
                            self._array(errno, np.int32), None, None,
                            None if mask is None else self._array(mask, np.uint8), 0))
        self.row_max += 18 + 2 * _INT_MAX

    def done(self) -> "Program":
        self._flush_text()
        return self
