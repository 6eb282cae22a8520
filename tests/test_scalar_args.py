"""Scalar arguments of functions the catalog does not know (issue #10: "others are traced
with time, return value and scalar arguments only").

The signing service types them from the library's debug info (signing/signatures.py:
which x86-64 register holds which integer-class parameter), the kernel copies those
registers into the event, the daemon names them ``arg<position>_<name>`` (tracer/scalars.py).
The values are checked against what the test program passed and against bpftrace's view
of the same run; the debug info reader is fed damaged and oversized files.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from datacrumbs.probes.document import write_document
from datacrumbs.signing.signatures import read_signatures
from datacrumbs.tracer import scalars
from datacrumbs.tracer.elfsyms import exported_functions_fd

from fixtures.tracing import DATACRUMBS, Bpftrace, trace_command
from test_patterns import grants, sign_patterns
from test_signing_service import keystore, service, site_sets, start_service  # noqa: F401
from workloads import daemon_readback as rb

SIG_C = r"""
#include <stddef.h>
struct big { long a, b, c; };
struct small { int x; int y; };
typedef unsigned long handle_t;
enum mode { M_A = 1, M_B = -2 };
int sig_write(int fd, const void *buf, size_t n) { return (int)n; }
long sig_mixed(double x, short s, float y, unsigned char c, long long l) { return l + s + c; }
struct big sig_big(int fd, long v) { struct big b = {fd, v, 0}; return b; }
int sig_byval(struct small s, int fd) { return s.x + fd; }
int sig_many(int a, int b, int c, int d, int e, int f, int g) { return a + b + c + d + e + f + g; }
handle_t sig_handle(handle_t h, enum mode m) { return h + m; }
static int sig_static(int q) { return q * 2; }
int sig_callstatic(int q) { return sig_static(q); }
void sig_void(int fd) { (void)fd; }
"""
PROG_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <stddef.h>
struct big { long a, b, c; };
struct small { int x; int y; };
typedef unsigned long handle_t;
enum mode { M_A = 1, M_B = -2 };
int sig_write(int fd, const void *buf, size_t n);
long sig_mixed(double x, short s, float y, unsigned char c, long long l);
struct big sig_big(int fd, long v);
int sig_byval(struct small s, int fd);
int sig_many(int a, int b, int c, int d, int e, int f, int g);
handle_t sig_handle(handle_t h, enum mode m);
void sig_void(int fd);
int main(int argc, char **argv) {
    int n = atoi(argv[1]);
    long s = 0;
    for (int i = 0; i < n; i++) {
        s += sig_write(-5 - i, (void *)0x1234, 4096 + i);
        s += sig_mixed(1.5, -7, 2.5f, 200, -123456789012LL);
        s += sig_big(9, -1).b;
        struct small sm = {1, 2};
        s += sig_byval(sm, 4);
        s += sig_many(1, -2, 3, -4, 5, 6, 7);
        s += (long)sig_handle(0x10, M_B);
        sig_void(i);
    }
    printf("ok %ld\n", s);
    return 0;
}
"""
CALLS = 5
#: (position, register, name, size, signed, pointer) per function, by the x86-64 SysV ABI:
#: a double or float takes no integer register, a returned 24-byte struct takes rdi,
#: a struct by value stops the mapping, four at most.
EXPECTED = {
    "sig_write": [(0, 0, "fd", 4, True, False), (1, 1, "buf", 8, False, True),
                  (2, 2, "n", 8, False, False)],
    "sig_mixed": [(1, 0, "s", 2, True, False), (3, 1, "c", 1, False, False),
                  (4, 2, "l", 8, True, False)],
    "sig_big": [(0, 1, "fd", 4, True, False), (1, 2, "v", 8, True, False)],
    "sig_byval": [],
    "sig_many": [(0, 0, "a", 4, True, False), (1, 1, "b", 4, True, False),
                 (2, 2, "c", 4, True, False), (3, 3, "d", 4, True, False)],
    "sig_handle": [(0, 0, "h", 8, False, False), (1, 1, "m", 4, True, False)],
    "sig_callstatic": [(0, 0, "q", 4, True, False)],
    "sig_void": [(0, 0, "fd", 4, True, False)],
}
RETURNS = {"sig_write": {"size": 4, "signed": True}, "sig_mixed": {"size": 8, "signed": True},
           "sig_big": None, "sig_byval": {"size": 4, "signed": True},
           "sig_many": {"size": 4, "signed": True}, "sig_handle": {"size": 8, "signed": False},
           "sig_callstatic": {"size": 4, "signed": True}, "sig_void": None}


def _cc() -> str:
    return shutil.which("cc") or shutil.which("gcc")


@pytest.fixture(scope="module")
def sig(shared_dir):
    """libsig.so with debug info, a copy without, a stripped copy with its debug info in
    a separate file named by build id, and a program calling the library."""
    d = shared_dir / "sig"
    d.mkdir()
    d.chmod(0o755)
    (d / "sig.c").write_text(SIG_C)
    (d / "prog.c").write_text(PROG_C)
    out = {"dir": d, "lib": d / "libsig.so", "nodbg": d / "libsig-nodbg.so",
           "split": d / "libsig-split.so", "prog": d / "sigprog"}
    subprocess.run([_cc(), "-g", "-O1", "-shared", "-fPIC", "-Wl,--build-id", "-o",
                    str(out["lib"]), str(d / "sig.c")], check=True, capture_output=True,
                   timeout=60)
    subprocess.run(["strip", "--strip-debug", "-o", str(out["nodbg"]), str(out["lib"])],
                   check=True, timeout=60)
    subprocess.run(["objcopy", "--only-keep-debug", str(out["lib"]), str(d / "libsig.debug")],
                   check=True, timeout=60)
    shutil.copy(out["nodbg"], out["split"])
    subprocess.run([_cc(), "-O0", "-o", str(out["prog"]), str(d / "prog.c"), f"-L{d}", "-lsig",
                    f"-Wl,-rpath,{d}"], check=True, capture_output=True, timeout=60)
    for p in (out["lib"], out["nodbg"], out["split"], out["prog"]):
        p.chmod(0o755)
    return out


def signatures(path: Path, **kw):
    fd = os.open(path, os.O_RDONLY)
    try:
        names = {n: a for n, a in exported_functions_fd(fd)[2].items() if n.startswith("sig_")}
        return read_signatures(fd, names, **kw)
    finally:
        os.close(fd)


def as_tuples(sig) -> list[tuple]:
    return [(a["pos"], a["reg"], a["name"], a["size"], a["signed"], a["pointer"])
            for a in sig.scalars]


def test_registers_follow_the_x86_64_abi(sig):
    got = signatures(sig["lib"])
    assert got.missing is None
    assert {n: as_tuples(s) for n, s in got.found.items()} == EXPECTED
    assert {n: s.returns for n, s in got.found.items()} == RETURNS
    assert "sig_static" not in got.found      # not exported: never asked for


def test_a_separate_debug_file_is_found_by_build_id_when_root_owns_it(sig, tmp_path):
    none = signatures(sig["split"], debug_root=str(tmp_path / "nothing"))
    assert none.found == {} and "no debug info" in none.missing and "debug symbols" in none.missing
    build_id = subprocess.run(["readelf", "-n", str(sig["split"])], capture_output=True,
                              text=True, check=True).stdout.split("Build ID:")[1].split()[0]
    root = tmp_path / "debug"
    where = root / build_id[:2] / (build_id[2:] + ".debug")
    where.parent.mkdir(parents=True)
    shutil.copy(sig["dir"] / "libsig.debug", where)
    where.chmod(0o644)
    got = signatures(sig["split"], debug_root=str(root))
    assert {n: as_tuples(s) for n, s in got.found.items()} == EXPECTED
    where.chmod(0o666)                       # anyone could have written it: not believed
    refused = signatures(sig["split"], debug_root=str(root))
    assert refused.found == {} and "owned and written by root only" in refused.missing


def test_a_library_without_debug_info_gets_no_arguments_and_says_why(sig):
    got = signatures(sig["nodbg"], debug_root="/nonexistent")
    assert got.found == {}
    assert got.missing.startswith("it has no debug info (built without -g")


def test_damaged_debug_info_never_raises(sig, tmp_path):
    """Random bytes over the debug sections: every outcome is a Signatures, in bounded time."""
    data = bytearray(sig["lib"].read_bytes())
    sections = subprocess.run(["readelf", "-S", "-W", str(sig["lib"])], capture_output=True,
                              text=True, check=True).stdout
    spans = []
    for line in sections.splitlines():
        parts = line.replace("[ ", "[").split()
        if len(parts) > 5 and parts[1] in (".debug_info", ".debug_abbrev", ".debug_str",
                                           ".debug_aranges"):
            spans.append((int(parts[4], 16), int(parts[5], 16)))
    assert len(spans) == 4
    outcomes = set()
    for seed in range(24):
        rng = random.Random(seed)
        bad = bytearray(data)
        off, size = spans[seed % 4]
        for _ in range(1 + seed):
            i = off + rng.randrange(size)
            bad[i] = rng.randrange(256)
        path = tmp_path / f"bad{seed}.so"
        path.write_bytes(bad)
        got = signatures(path, budget_s=2.0)
        assert isinstance(got.found, dict)
        for s in got.found.values():       # whatever was read stays within the ABI's limits
            assert len(s.scalars) <= 4
            assert all(0 <= a["reg"] <= 5 and a["size"] in (1, 2, 4, 8) for a in s.scalars)
        outcomes.add("found" if got.found else got.missing.split(" (")[0])
    assert len(outcomes) > 1                 # the damage did reach the parser


def test_the_time_budget_bounds_a_large_debug_section(tmp_path):
    src = tmp_path / "many.c"
    src.write_text("".join(f"int big_{i}(int a, long b) {{ return a + (int)b + {i}; }}\n"
                           for i in range(3000)))
    lib = tmp_path / "libmany.so"
    subprocess.run([_cc(), "-g", "-O0", "-shared", "-fPIC", "-o", str(lib), str(src)],
                   check=True, capture_output=True, timeout=300)
    fd = os.open(lib, os.O_RDONLY)
    try:
        names = exported_functions_fd(fd)[2]
        slow = read_signatures(fd, names, budget_s=0.0)
        whole = read_signatures(fd, names, budget_s=60.0)
    finally:
        os.close(fd)
    # out of time: what was read keeps its arguments, the rest is said
    assert len(slow.found) < 3000 and "time budget" in slow.missing
    assert all(whole.found[n] == sig for n, sig in slow.found.items())
    assert len(whole.found) == 3000
    assert [a["name"] for a in whole.found["big_2999"].scalars] == ["a", "b"]


def one_row(probe: dict, ev) -> dict:
    """The trace args of one event (an EVENT_DTYPE row), one Python int at a time: the
    reference for ScalarRows.rows."""
    out = {}
    for slot, item in enumerate(probe.get("scalars", ())):
        field = scalars.SLOT_FIELDS[slot]
        if field == "fd":
            raw = (int(ev["fd"]) & 0xFFFFFFFF) | ((int(ev["fd2"]) & 0xFFFFFFFF) << 32)
        else:
            raw = int(ev[field]) & 0xFFFFFFFFFFFFFFFF
        out[f"arg{item['pos']}_{item['name']}"] = scalars.sized(raw, item["size"],
                                                                item["signed"])
    return out


def test_the_daemons_columns_equal_the_one_row_reference():
    """ScalarRows.rows (numpy, per probe) against one_row (Python ints, per row) on
    random register values of every width and sign."""
    import numpy as np

    from datacrumbs.trace.writer import OPS_DTYPE
    from datacrumbs.tracer.engine import EVENT_DTYPE

    sc = [{"pos": 0, "reg": 0, "name": "fd", "size": 4, "signed": True, "pointer": False},
          {"pos": 1, "reg": 1, "name": "buf", "size": 8, "signed": False, "pointer": True},
          {"pos": 2, "reg": 2, "name": "n", "size": 2, "signed": True, "pointer": False},
          {"pos": 4, "reg": 3, "name": "q", "size": 1, "signed": False, "pointer": False}]
    probes = [{"kind": "uprobe", "scalars": sc, "returns": {"size": 4, "signed": True}},
              {"kind": "syscall"}, {"kind": "uprobe", "returns": None},
              {"kind": "uprobe", "scalars": sc[1:3], "returns": {"size": 2, "signed": False}}]
    n = 20_000
    rng = np.random.default_rng(7)
    ev = np.zeros(n, EVENT_DTYPE)
    for f in ("count", "handle"):
        ev[f] = rng.integers(0, 2 ** 63, n).astype(np.uint64) * np.uint64(2) + \
            rng.integers(0, 2, n).astype(np.uint64)
    for f, bits in (("offset", 64), ("ret", 64), ("fd", 32), ("fd2", 32)):
        ev[f] = rng.integers(-2 ** (bits - 1), 2 ** (bits - 1) - 1, n)
    ev["probe"] = rng.integers(0, len(probes), n)
    ops = np.zeros(n, OPS_DTYPE)
    ops["fd"] = 3
    out = scalars.ScalarRows(probes).rows(ev, ops)
    for i in range(n):
        p = probes[int(ev["probe"][i])]
        ret = int(ev["ret"][i]) & 0xFFFFFFFFFFFFFFFF
        if p.get("scalars"):
            assert out[i] == one_row(p, ev[i])
            assert ops["fd"][i] == -1
        else:
            assert out[i] is None
        if p is probes[0]:
            assert ops["ret"][i] == scalars.sized(ret, 4, True)
        elif p is probes[3]:
            assert ops["ret"][i] == ret & 0xFFFF
        elif p is probes[2]:
            assert ops["ret"][i] == 0
        else:
            assert ops["fd"][i] == 3            # other probes' rows untouched


@pytest.mark.parametrize("probe, why", [
    ({"kind": "syscall", "scalars": [{"reg": 0, "size": 4, "name": "fd"}]}, "only uprobes"),
    ({"kind": "uprobe", "scalars": [{"reg": 6, "size": 4, "name": "fd"}]}, "register 0-5"),
    ({"kind": "uprobe", "scalars": [{"reg": 0, "size": 3, "name": "fd"}]}, "size of 1, 2, 4"),
    ({"kind": "uprobe", "scalars": [{"reg": 0, "size": 4, "name": "a;b"}]}, "C identifier"),
    ({"kind": "uprobe", "scalars": [{"reg": 0, "size": 4, "name": "a"}] * 5}, "at most 4"),
    ({"kind": "uprobe", "returns": {"size": 16, "signed": True}}, "returns must be"),
])
def test_the_tracer_refuses_malformed_scalars(probe, why):
    """The engine's own check (a signed file is schema-checked first; this is its backstop)."""
    with pytest.raises(ValueError, match=why):
        scalars.registers(probe, probe["kind"], {"fd": -1}, 0)
    with pytest.raises(ValueError, match="not both"):
        scalars.registers({"kind": "uprobe", "scalars": [{"reg": 0, "size": 4, "name": "a"}]},
                          "uprobe", {"fd": 0}, 0)


@pytest.mark.ebpf
def test_traced_arguments_are_what_the_program_passed_and_what_bpftrace_saw(
        site, service, sig, tmp_path, bpf_object, tracefs):
    doc = sign_patterns(site, ("uprobe", f"{sig['lib']}:sig_*"))
    by_target = {p["target"]: p for p in doc["probes"]}
    assert set(by_target) == set(EXPECTED)
    for name, want in EXPECTED.items():
        assert as_tuples(type("S", (), {"scalars": by_target[name].get("scalars", [])})) == want
        assert by_target[name]["returns"] == RETURNS[name]
    (pattern,) = grants(site)[-1]["resolved"]["patterns"]
    assert pattern["arguments"] == [{"library": str(sig["lib"]), "functions": len(EXPECTED),
                                     "described": len(EXPECTED)}]
    probes = tmp_path / "sig.json.gz"
    write_document(probes, doc)
    shown = subprocess.run([DATACRUMBS, "probes", "show", str(probes)], capture_output=True,
                           text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert shown.returncode == 0, shown.stderr
    assert "fd int32, buf pointer, n uint64 -> int32" in shown.stdout
    assert "s int16, c uint8, l int64 -> int64" in shown.stdout
    lib = str(sig["lib"])
    program = (f'uprobe:{lib}:sig_write /comm == "sigprog"/ {{ @w[(int32)arg0, arg1, arg2] = count(); }} '
               f'uprobe:{lib}:sig_mixed /comm == "sigprog"/ {{ @m[(int16)arg0, (uint8)arg1, arg2] = count(); }} '
               f'uprobe:{lib}:sig_big /comm == "sigprog"/ {{ @b[(int32)arg1, (int64)arg2] = count(); }} '
               f'uprobe:{lib}:sig_many /comm == "sigprog"/ {{ @y[(int32)arg0, (int32)arg1, (int32)arg2, (int32)arg3] = count(); }} '
               f'uretprobe:{lib}:sig_handle /comm == "sigprog"/ {{ @h[retval] = count(); }}')
    with Bpftrace(program) as bt:
        proc, trace, summary = trace_command(tmp_path, [sig["prog"], CALLS], sets=(),
                                             options=["--probes", str(probes)])
    assert proc.stdout.startswith("ok ")
    rows: dict[str, list[dict]] = {}
    for e in rb.events(trace):
        if e["name"] in EXPECTED:
            rows.setdefault(e["name"], []).append(e["args"])
    assert {n: len(r) for n, r in rows.items()} == {n: CALLS for n in EXPECTED if n != "sig_callstatic"}
    # what the program passed
    assert [(a["arg0_fd"], a["arg1_buf"], a["arg2_n"], a["ret"]) for a in rows["sig_write"]] == \
        [(-5 - i, 0x1234, 4096 + i, 4096 + i) for i in range(CALLS)]
    assert {(a["arg1_s"], a["arg3_c"], a["arg4_l"], a["ret"]) for a in rows["sig_mixed"]} == \
        {(-7, 200, -123456789012, -123456789012 - 7 + 200)}
    assert {(a["arg0_fd"], a["arg1_v"]) for a in rows["sig_big"]} == {(9, -1)}
    assert all("ret" not in a for a in rows["sig_big"] + rows["sig_void"])   # no result in rax
    assert [a["arg0_fd"] for a in rows["sig_void"]] == list(range(CALLS))
    assert {(a["arg0_a"], a["arg1_b"], a["arg2_c"], a["arg3_d"]) for a in rows["sig_many"]} == \
        {(1, -2, 3, -4)}
    assert {(a["arg0_h"], a["arg1_m"], a["ret"]) for a in rows["sig_handle"]} == {(0x10, -2, 14)}
    assert all(set(a) == {"hhash", "ret"} for a in rows["sig_byval"])        # struct by value
    # and what bpftrace saw of the same calls
    kernel = bt.counts
    assert sorted(k for k in kernel if k.startswith("w[")) == sorted(
        f"w[{-5 - i}, {0x1234}, {4096 + i}]" for i in range(CALLS))
    assert kernel["m[-7, 200, -123456789012]"] == CALLS
    assert kernel["b[9, -1]"] == CALLS
    assert kernel["y[1, -2, 3, -4]"] == CALLS
    assert kernel["h[14]"] == CALLS
    # a negative result of unknown convention is a value, not an error
    mixed = summary["operations"]["SIG/sig_mixed"]
    assert mixed["count"] == CALLS and mixed["errors"] == 0


FADVISE_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    int fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0644);
    int n = atoi(argv[2]), bad = 0;
    for (int i = 0; i < n; i++)
        bad += posix_fadvise(fd, 4096L * i, 8192 + i, POSIX_FADV_DONTNEED) != 0;
    bad += posix_fadvise(-1, 0, 0, POSIX_FADV_NORMAL) == 0;      /* EBADF, returned not set */
    printf("ok %d\n", bad);
    return 0;
}
"""


@pytest.mark.ebpf
def test_a_system_library_is_typed_by_the_distributions_debug_file_and_matches_strace(
        tmp_path, bpf_object, tracefs):
    """glibc has no DWARF of its own; libc6-dbg's /usr/lib/debug/.build-id file types
    posix_fadvise (not in the catalog), and the traced arguments equal the fadvise64
    system calls strace saw in the same run. Its result is an error number, not -1 and
    errno: the trace keeps it (9, EBADF) and does not count it as an error."""
    src, prog, log = tmp_path / "fadv.c", tmp_path / "fadv", tmp_path / "strace.log"
    src.write_text(FADVISE_C)
    subprocess.run([_cc(), "-O0", "-o", str(prog), str(src)], check=True, capture_output=True,
                   timeout=60)
    n = 6
    proc, trace, summary = trace_command(
        tmp_path, ["strace", "-f", "-e", "trace=fadvise64", "-o", log, prog, tmp_path / "f", n],
        sets=(), options=["--uprobe", "libc.so.6:posix_fadvise"])
    assert proc.stdout == "ok 0\n"
    calls = [e["args"] for e in rb.events(trace) if e["name"] == "posix_fadvise"]
    seen = [(a["arg0_fd"], a["arg1_offset"], a["arg2_len"], a["arg3_advise"], a["ret"])
            for a in calls]
    strace = []
    for line in log.read_text().splitlines():
        m = re.search(r"fadvise64\((-?\d+), (\d+), (\d+), POSIX_FADV_(\w+)\) += (-?\d+)", line)
        if m:
            advise = {"NORMAL": 0, "DONTNEED": 4}[m.group(4)]
            ret = 0 if int(m.group(5)) == 0 else 9          # glibc returns the error number
            strace.append((int(m.group(1)), int(m.group(2)), int(m.group(3)), advise, ret))
    assert len(strace) == n + 1
    assert seen == strace
    assert seen[-1] == (-1, 0, 0, 0, 9)
    (op,) = [v for k, v in summary["operations"].items() if k.endswith("/posix_fadvise")]
    assert op["count"] == n + 1 and op["errors"] == 0
