"""The report's compiled kernels (trace/fold.c): built at install time, loaded with ctypes.

analysis.Detail._streams (access pattern, positions, pending pairs and read extents of
every (pid, file, class, layer) stream of a chunk) was the largest part of the report's
numpy fold: a sort of the chunk by stream and some forty array passes. fold.c does it in
one walk in trace order. The other kernels replace several numpy passes each: ``unique``
(np.unique of int64 keys by hashing and a radix sort of the distinct ones, for keys too
wide to count directly), ``sums`` (exact per-group sums), ``add_streams`` (groupstate's
composition of stream states) and ``floats`` (a scanned block's columns as the report's
float columns). It is built beside the BPF object like the line scanner (``datacrumbs
build-bpf``, ``datacrumbs install``), never at run time; without it, or with one of
another ABI, the numpy code runs with identical results (tests/test_report_fastfold.py
holds both paths to the same summaries and each kernel to the numpy code it replaces).
"""

from __future__ import annotations

import ctypes
import logging
from importlib import resources
from pathlib import Path

import numpy as np

from .fastlines import load_once, site_bpf_object

log = logging.getLogger("datacrumbs.trace")

LIBRARY_NAME = "datacrumbs-fold.so"
SOURCE_NAME = "fold.c"
ABI = 2

_P = ctypes.c_void_p
_I = ctypes.c_int64


def source_path() -> Path:
    return Path(str(resources.files("datacrumbs.trace") / SOURCE_NAME))


def library_path(bpf_object) -> Path:
    """Where the fold lives: beside the site's BPF object (and the line scanner)."""
    return Path(bpf_object).with_name(LIBRARY_NAME)


def build_library(out: Path, cc: str | None = None) -> Path:
    """Compile fold.c into ``out`` atomically (``cc``, else cc, clang or gcc from PATH)."""
    from ..tracer.build import build_shared_library

    return build_shared_library(source_path(), out, "report stream fold", cc)


def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data


class Folder:
    """The loaded library; ``streams(...)`` is one chunk's per-stream results, or None
    (the numpy path then runs)."""

    def __init__(self, lib: ctypes.CDLL, path: Path):
        self.path = path
        self._fn = lib.dc_fold_streams
        self._fn.restype = _I
        self._fn.argtypes = [_I, _P, _P, _P, _P, _P, _I, _P, _P, _P, _P, _I, _P] + [_P] * 17
        self._unique = lib.dc_unique
        self._unique.restype = _I
        self._unique.argtypes = [_I, _P, _P, _P, _P]
        self._dense = lib.dc_dense_unique
        self._dense.restype = _I
        self._dense.argtypes = [_I, _P, _I, _I, _P, _P, _P]
        self._sums = lib.dc_sums
        self._sums.restype = _I
        self._sums.argtypes = [_I, _P, _I, _P, _P]
        self._add = lib.dc_add_streams
        self._add.restype = _I
        self._add.argtypes = [_I, _I, _P, _I, _P, _P, _I, _P, _P, _I, _P, _P] + [_P] * 6
        self._ints_f = lib.dc_ints_as_floats
        self._ints_f.restype = None
        self._ints_f.argtypes = [_I, _P, _P, ctypes.c_double, _P]
        self._sane_f = lib.dc_sane_floats
        self._sane_f.restype = None
        self._sane_f.argtypes = [_I, _P, ctypes.c_double, _P]
        self.calls = 0              # chunks folded here (tests: the C path did run)
        self.declined = 0
        self.uniques = 0            # unique() calls answered here
        self.summed = 0             # sums() calls answered here
        self.absorbed = 0           # add_streams() calls answered here

    def floats(self, values: np.ndarray, given: np.ndarray | None, default: float,
               out: np.ndarray) -> None:
        """``out`` (float64, contiguous, len(values)) = int64 ``values`` where ``given``
        (or float64 ``values`` when ``given`` is None) that are finite numbers in [0,
        2**53] as doubles, else ``default``: columnar._sane of them."""
        n = len(values)
        if len(out) != n or out.dtype != np.float64 or not out.flags.c_contiguous:
            raise ValueError("out must be a contiguous float64 array as long as values")
        if given is None:
            v = np.ascontiguousarray(values, np.float64)
            self._sane_f(n, _ptr(v), default, _ptr(out))
        else:
            v = np.ascontiguousarray(values, np.int64)
            ok = np.ascontiguousarray(given).view(np.uint8)
            if len(ok) != n:
                raise ValueError("given must be as long as values")
            self._ints_f(n, _ptr(v), _ptr(ok), default, _ptr(out))

    def add_streams(self, state: np.ndarray, ids, b, ext_j, ext_se, pend_j, pend_v):
        """groupstate.Groups.add_streams' arithmetic on ``state`` (an int64 C-ordered
        matrix, changed in place): (ext_kind, ext_out, pend_kind, pend_out, mixed_j,
        mixed_v) as fold.c's dc_add_streams describes them; None (nothing changed) when
        declined."""
        if state.dtype != np.int64 or not state.flags.c_contiguous or state.ndim != 2:
            return None
        i64 = np.int64
        ids, ext_j, pend_j = (np.ascontiguousarray(x, i64) for x in (ids, ext_j, pend_j))
        b = np.ascontiguousarray(b, i64)
        ext_se = np.ascontiguousarray(ext_se, i64).reshape(-1, 2)
        pend_v = np.ascontiguousarray(pend_v, i64).reshape(-1, 4)
        ng, ne, npend = len(ids), len(ext_j), len(pend_j)
        if b.shape != (ng, state.shape[1]) or len(ext_se) != ne or len(pend_v) != npend:
            return None
        ext_kind, pend_kind = np.empty(ne, np.int8), np.empty(npend, np.int8)
        ext_out, pend_out = np.empty((ne, 2), i64), np.empty((npend, 4), i64)
        mixed_j, mixed_v = np.empty(ng, i64), np.empty((ng, 4), i64)
        nm = self._add(state.shape[0], state.shape[1], _ptr(state), ng, _ptr(ids), _ptr(b),
                       ne, _ptr(ext_j), _ptr(ext_se), npend, _ptr(pend_j), _ptr(pend_v),
                       _ptr(ext_kind), _ptr(ext_out), _ptr(pend_kind), _ptr(pend_out),
                       _ptr(mixed_j), _ptr(mixed_v))
        if nm < 0:
            return None
        self.absorbed += 1
        return ext_kind, ext_out, pend_kind, pend_out, mixed_j[:nm], mixed_v[:nm]

    def sums(self, groups: np.ndarray, values: np.ndarray, n: int) -> np.ndarray | None:
        """Per-group int64 sums of int64 ``values`` over ``groups`` 0..n-1, wrapping as
        numpy's int64 adds do; None (numpy decides) for a group outside that range."""
        groups = np.ascontiguousarray(groups, np.int64)
        values = np.ascontiguousarray(values, np.int64)
        if len(groups) != len(values):
            return None
        out = np.empty(max(n, 1), np.int64)[:n]
        if self._sums(len(groups), _ptr(groups), n, _ptr(values), _ptr(out)) != 0:
            return None
        self.summed += 1
        return out

    def unique(self, keys: np.ndarray, inverse: bool = False, counts: bool = False,
               lo: int = 0, span: int | None = None):
        """``np.unique(keys, return_inverse=inverse, return_counts=counts)`` of int64
        ``keys``, the same arrays; with ``span``, keys known to lie in [lo, lo + span) are
        counted in an array of that size. None when the library has no memory for it (or
        a key lies outside the span)."""
        keys = np.ascontiguousarray(keys, np.int64)
        n = len(keys)
        inv = np.empty(n, np.int64) if inverse else None
        # at most n distinct keys, and at most span when they lie in [lo, lo + span)
        uk, cnt = (np.empty(n if span is None else min(n, span), np.int64) for _ in range(2))
        if span is not None:        # counted, not hashed
            k = self._dense(n, _ptr(keys), lo, span, _ptr(uk), _ptr(cnt),
                            _ptr(inv) if inverse else None)
        else:
            k = self._unique(n, _ptr(keys), _ptr(uk), _ptr(cnt), _ptr(inv) if inverse else None)
        if k < 0:
            return None
        self.uniques += 1
        out = [uk[:k]]
        if inverse:
            out.append(inv)
        if counts:
            out.append(cnt[:k])
        return out[0] if len(out) == 1 else tuple(out)

    def streams(self, a_row, a_g, a_kind, a_val, a_sz, r_row, r_pos, r_gr, r_gw, g_read):
        """Per-stream arrays (pat (ng, 3), n_large, n_mis, has, head_off, head_abs,
        last_end, last_abs, pos, pos_abs, rel_read), pending pairs (pend_g, pend_v (k, 4))
        and absolute read runs (run_g, run_s, run_e) in trace order; None: declined."""
        i64 = np.int64
        a_row, a_g, a_val, a_sz, r_row, r_pos, r_gr, r_gw = (
            np.ascontiguousarray(x, i64) for x in (a_row, a_g, a_val, a_sz, r_row, r_pos,
                                                    r_gr, r_gw))
        a_kind = np.ascontiguousarray(a_kind, np.int8)
        g_read = np.ascontiguousarray(g_read, np.uint8)
        na, nr, ng = len(a_row), len(r_row), len(g_read)
        pat = np.empty((ng, 3), i64)
        per = np.empty((10, ng), i64)
        pend_g, run_g, run_s, run_e = (np.empty(na, i64) for _ in range(4))
        pend_v = np.empty((na, 4), i64)
        counts = np.zeros(2, i64)
        rc = self._fn(na, _ptr(a_row), _ptr(a_g), _ptr(a_kind), _ptr(a_val), _ptr(a_sz),
                      nr, _ptr(r_row), _ptr(r_pos), _ptr(r_gr), _ptr(r_gw), ng, _ptr(g_read),
                      _ptr(pat), *(_ptr(per[j]) for j in range(10)), _ptr(pend_g),
                      _ptr(pend_v), _ptr(run_g), _ptr(run_s), _ptr(run_e), _ptr(counts))
        if rc != 0:
            self.declined += 1
            log.debug("stream fold declined a chunk (%d); folding it with numpy", rc)
            return None
        self.calls += 1
        k, r = int(counts[0]), int(counts[1])
        return (pat, *per, pend_g[:k], pend_v[:k], run_g[:r], run_s[:r], run_e[:r])


_loaded: dict[str, Folder | None] = {}


def load(path) -> Folder | None:
    """The fold at ``path``, or None (logged once, at debug level: the report is the same
    without it) when it is missing, unsafe or of another ABI."""
    return load_once(_loaded, path, Folder, "dc_fold_abi", ABI, "report stream fold",
                     "folding with numpy", logging.DEBUG)


def for_site() -> Folder | None:
    """The fold beside the site configuration's BPF object (None: none usable)."""
    bpf_object = site_bpf_object("report stream fold")
    return load(library_path(bpf_object)) if bpf_object is not None else None
