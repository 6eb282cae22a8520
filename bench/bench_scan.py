#!/usr/bin/env python3
"""CPU per event of the compiled trace-line scanner (trace/scan.c's dc_scan), beside another build.

Reads the first --mb megabytes of a trace's decompressed text, cuts it into the blocks the
report reads (4 MiB, at line ends: reader._blocks, columnar.body_bounds) and times dc_scan
over all of them, --repeat times, with the site's scanner (beside the configuration's BPF
object, or --scanner) and, in the same run and interleaved pass by pass, with a --baseline
build. Prints the median ns/event and MB/s of each and their ratio, and checks that the two
give identical results for every block (return code, fail_at, counts and every output
array): it exits with status 1, loudly, when they do not.

    .venv/bin/python bench/bench_scan.py TRACE.pfw.gz
    git show HEAD~3:src/datacrumbs/trace/scan.c > /tmp/scan_old.c
    cc -O2 -shared -fPIC /tmp/scan_old.c -o /tmp/scan_old.so -lm
    .venv/bin/python bench/bench_scan.py TRACE.pfw.gz --baseline /tmp/scan_old.so --repeat 5

Only dc_scan is timed, with the process's CPU clock (a number that holds on a shared
machine better than wall time), into output arrays allocated and paged in beforehand.
"""

from __future__ import annotations

import argparse
import ctypes
import gzip
import os
import statistics
import sys
import time
from pathlib import Path

# as every datacrumbs command runs (cli.single_threaded_blas): no OpenBLAS thread pool
# spinning beside the timed calls
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from datacrumbs.report.columnar import body_bounds  # noqa: E402
from datacrumbs.trace import fastscan  # noqa: E402
from datacrumbs.trace.reader import PARSE_BLOCK, _blocks  # noqa: E402


def load_text(path: Path, mb: float) -> bytes:
    """The first ``mb`` MB of the trace's text, cut after its last whole line."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read(int(mb * 1e6))
    return data[:data.rfind(b"\n") + 1]


class Lib:
    """One scanner build, called directly (no fastscan.Block, no string decoding)."""

    def __init__(self, path: Path):
        self.path = path
        lib = ctypes.CDLL(str(path))
        if lib.dc_scan_abi() != fastscan.ABI:
            sys.exit(f"{path}: scanner ABI {lib.dc_scan_abi()}, this checkout's is {fastscan.ABI}")
        self.fn = lib.dc_scan
        self.fn.restype = ctypes.c_int64
        self.fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.POINTER(fastscan._Out)]
        self.runs: list[float] = []


def prepared(blocks: list[bytes]) -> list[tuple]:
    """Per block: its body's address and size, and the capacity the report would give it."""
    out = []
    for b in blocks:
        start, end, _ = body_bounds(b)
        if start < end:
            addr = ctypes.cast(ctypes.c_char_p(b), ctypes.c_void_p).value + start
            out.append((addr, end - start, (end - start) // 96 + 64))
    return out


def scan_all(lib: Lib, blocks: list[tuple], keep: bool) -> tuple[float, list]:
    """CPU seconds of dc_scan over every block; with ``keep``, each block's results (in
    fresh arrays; without, in one set reused, already paged in: no page faults timed)."""
    results, secs = [], 0.0
    cap = max(c for _, _, c in blocks)
    arrays = fastscan.Scanner._arrays(cap)
    for a in arrays:
        a.fill(0)
    for addr, size, bcap in blocks:
        if keep:
            cap, arrays = bcap, fastscan.Scanner._arrays(bcap)
        out = fastscan._Out(cap, *(a.ctypes.data for a in arrays))
        t0 = time.process_time()
        n = lib.fn(addr, size, ctypes.byref(out))
        secs += time.process_time() - t0
        if keep:
            results.append((n, out, arrays))
    return secs, results


def digest(n: int, out, arrays: list) -> dict:
    """Everything dc_scan gave for one block, cut to what it filled in."""
    a = dict(zip(fastscan._ARRAYS, arrays))
    d = {"rc": n, "fail_at": out.fail_at, "nmeta": out.nmeta, "nrec": out.nrec,
         "nop": out.nop, "nfil": out.nfil, "nstr": list(out.nstr)}
    if n < 0:
        return d
    rows = {"flt", "ival", "iok", "code", "op", "fil"}
    for name, arr in a.items():
        if name in rows:
            d[name] = arr[..., :n]
        elif name in ("soff", "slen"):
            d[name] = [arr[c, :out.nstr[c]] for c in range(len(fastscan.STRINGS))]
        elif name in ("opcat", "opname"):
            d[name] = arr[:out.nop]
        elif name in ("fcol", "fcode"):
            d[name] = arr[:out.nfil]
        else:
            d[name] = arr[:out.nmeta]
    return d


def same(x: dict, y: dict) -> str | None:
    """None when two digests are identical (floats bit for bit), else the first difference."""
    for k in x:
        u, v = x[k], y[k]
        if isinstance(u, np.ndarray):
            ok = u.shape == v.shape and u.tobytes() == v.tobytes()
        elif isinstance(u, list) and u and isinstance(u[0], np.ndarray):
            ok = all(p.tobytes() == q.tobytes() for p, q in zip(u, v))
        else:
            ok = u == v
        if not ok:
            return k
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace", type=Path, help="a trace file (.pfw.gz or plain JSON lines)")
    ap.add_argument("--mb", type=float, default=200, help="MB of decompressed text (default 200)")
    ap.add_argument("--repeat", type=int, default=5, help="timed passes per scanner (default 5)")
    ap.add_argument("--scanner", type=Path, default=None,
                    help="the scanner to time (default: the site's, beside paths.bpf_object)")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="another scanner build to time and compare against")
    args = ap.parse_args()

    site = args.scanner
    if site is None:
        sc = fastscan.for_site()
        if sc is None:
            sys.exit("no usable scanner beside the site's BPF object (datacrumbs build-bpf)")
        site = sc.path
    libs = [Lib(site)] + ([Lib(args.baseline)] if args.baseline else [])

    t0 = time.perf_counter()
    text = load_text(args.trace, args.mb)
    blocks = list(_blocks(text, PARSE_BLOCK))
    prep = prepared(blocks)
    print(f"{len(text) / 1e6:.0f} MB of text in {len(prep)} blocks "
          f"(read in {time.perf_counter() - t0:.1f} s)")

    # correctness first: both must give the same for every block
    first = [scan_all(lib, prep, keep=True)[1] for lib in libs]
    events = sum(max(n, 0) for n, _, _ in first[0])
    declined = sum(n < 0 for n, _, _ in first[0])
    if len(libs) == 2:
        for i, (x, y) in enumerate(zip(*first)):
            diff = same(digest(*x), digest(*y))
            if diff is not None:
                print(f"MISMATCH: block {i}: {diff} differs between {libs[0].path} and "
                      f"{libs[1].path}", file=sys.stderr)
                return 1
        print(f"identical results for all {len(prep)} blocks")
    del first
    if not events:
        sys.exit("no events read: every block was declined")

    for _ in range(args.repeat):          # interleaved: both see the same machine load
        for lib in libs:
            lib.runs.append(scan_all(lib, prep, keep=False)[0])
    mb = len(text) / 1e6
    for lib in libs:
        med = statistics.median(lib.runs)
        print(f"{str(lib.path):50s} {med / events * 1e9:7.1f} ns/event  {mb / med:7.0f} MB/s  "
              f"(median of {args.repeat}; min {min(lib.runs) / events * 1e9:.1f})")
    print(f"{events:,} events, {declined} block(s) declined")
    if len(libs) == 2:
        a, b = (statistics.median(lib.runs) for lib in libs)
        print(f"site / baseline: {a / b:.3f} ({(1 - a / b) * 100:+.1f} % less time)"
              if a <= b else f"site / baseline: {a / b:.3f} (slower)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
