#!/usr/bin/env python3
"""The kernel verifier's work per BPF program: what a tracer's start spends in bpf load.

Each program of the object is loaded alone (the others' autoload off, the uprobe_multi
programs with their attach type, as the engine loads them) with the verifier's statistics
(log level 4), and its verification time, instructions processed and states are printed,
medians of --repeat loads. `--base OBJ` loads another object's programs alternately with
this one's (before/after on a loaded machine). Runs as root; asserts nothing.

usage: sudo .venv/bin/python bench/bench_verifier.py [--repeat 3] [--base OLD.bpf.o]
                                                     [--object NEW.bpf.o] [PROGRAM ...]
"""

from __future__ import annotations

import argparse
import ctypes
import re
import statistics
import sys
import time
from ctypes import c_char_p, c_size_t, c_uint32, c_void_p
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STATS = re.compile(r"processed (\d+) insns .*?max_states_per_insn (\d+) total_states (\d+) "
                   r"peak_states (\d+)")


def _lib():
    from datacrumbs.tracer import libbpf
    lib = libbpf.lib()
    lib.bpf_program__set_log_level.argtypes = [c_void_p, c_uint32]
    lib.bpf_program__set_log_buf.argtypes = [c_void_p, c_char_p, c_size_t]
    lib.bpf_program__name.restype = c_char_p
    lib.bpf_program__name.argtypes = [c_void_p]
    lib.bpf_object__next_program.restype = c_void_p
    lib.bpf_object__next_program.argtypes = [c_void_p, c_void_p]
    return lib


def programs(path: Path) -> list[str]:
    from datacrumbs.tracer.libbpf import BpfObject
    lib, obj, names = _lib(), BpfObject(path), []
    try:
        ptr = lib.bpf_object__next_program(obj._obj, None)
        while ptr:
            names.append(lib.bpf_program__name(ptr).decode())
            ptr = lib.bpf_object__next_program(obj._obj, ptr)
    finally:
        obj.close()
    return names


def verify_one(path: Path, name: str, names: list[str]) -> dict | str:
    """{load_ms, verify_ms, insns, max_states, total_states, peak_states}, or why it failed."""
    from datacrumbs.tracer import libbpf, objload
    lib, obj = _lib(), libbpf.BpfObject(path)
    try:
        for other in names:
            obj.set_autoload(other, other == name)
        if name in objload.MULTI_PROGS:
            obj.set_expected_attach_type(name, libbpf.BPF_TRACE_UPROBE_MULTI)
        buf = ctypes.create_string_buffer(1 << 20)
        prog = obj.program(name)
        lib.bpf_program__set_log_level(prog, 4)
        lib.bpf_program__set_log_buf(prog, buf, len(buf))
        t0 = time.perf_counter()
        try:
            obj.load()
        except libbpf.LibbpfError:
            return buf.value.decode(errors="replace").strip().splitlines()[-1:][0] \
                if buf.value else "refused"
        load_ms = (time.perf_counter() - t0) * 1000
        log = buf.value.decode(errors="replace")
        vt = re.search(r"verification time (\d+) usec", log)
        st = STATS.search(log)
        if not vt or not st:
            return "no statistics in the verifier's log"
        return {"load_ms": load_ms, "verify_ms": int(vt.group(1)) / 1000,
                "insns": int(st.group(1)), "max_states": int(st.group(2)),
                "total_states": int(st.group(3)), "peak_states": int(st.group(4))}
    finally:
        obj.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("programs", nargs="*", help="only these programs")
    parser.add_argument("--object", type=Path, default=REPO / "build/bpf/datacrumbs.bpf.o")
    parser.add_argument("--base", type=Path, help="another object, loaded alternately")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    objects = [("base", args.base)] if args.base else []
    objects.append(("this", args.object))
    names = {label: programs(path) for label, path in objects}
    wanted = args.programs or names["this"]
    runs: dict = {}
    for _ in range(args.repeat):
        for name in wanted:
            for label, path in objects:     # alternated: the load moves both alike
                if name in names[label]:
                    runs.setdefault((name, label), []).append(verify_one(path, name,
                                                                         names[label]))
    print(f"verifier per program (medians of {args.repeat}; ms of verification, "
          "instructions processed, states)")
    total = {label: 0.0 for label, _p in objects}
    for name in wanted:
        for label, _path in objects:
            got = runs.get((name, label))
            if not got:
                continue
            ok = [r for r in got if isinstance(r, dict)]
            if not ok:
                print(f"  {name:22s} {label:4s} refused: {got[0]}")
                continue
            med = {k: statistics.median(r[k] for r in ok) for k in ok[0]}
            total[label] += med["verify_ms"]
            print(f"  {name:22s} {label:4s} verify {med['verify_ms']:7.1f} ms "
                  f"({min(r['verify_ms'] for r in ok):.1f}-{max(r['verify_ms'] for r in ok):.1f})"
                  f"  load {med['load_ms']:6.1f} ms  insns {med['insns']:>7,.0f}  "
                  f"states/insn {med['max_states']:.0f}  peak {med['peak_states']:,.0f}")
    print("  sum of the medians: " + ", ".join(f"{label} {ms:.1f} ms" for label, ms in total.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
