"""Two halves of the BPF programs verified at once (tracer/parload.py): every program,
whichever object loaded it, uses the first object's very maps; a half the kernel refuses
leaves nothing loaded and the engine's usual error; a session with syscalls and uprobes
loads that way and its events of both kinds arrive through the one ring."""

from __future__ import annotations

import json
import subprocess

import pytest

from datacrumbs.tracer import libbpf, parload
from datacrumbs.tracer.engine import Engine
from datacrumbs.tracer.objload import ALL_PROGS as _ALL_PROGS, MULTI_PROGS as _MULTI_PROGS
from datacrumbs.tracer.scope import Scope

from fixtures.tracing import collect, held_bpf_ids, stdio_sizes
from test_engine import FWRITE, WRITE

pytestmark = pytest.mark.ebpf

# what a file of syscalls, raw tracepoints (block completion among them) and uprobes loads
NEEDED = ["dc_fork", "dc_exec", "dc_exit", "dc_sys_enter", "dc_sys_exit", "dc_raw_tracepoint",
          "dc_uprobe_multi", "dc_uretprobe_multi", "dc_block_issue", "dc_block_complete"]
MULTI = {p: libbpf.BPF_TRACE_UPROBE_MULTI for p in _MULTI_PROGS}


def configured(bpf_object) -> libbpf.BpfObject:
    obj = libbpf.BpfObject(bpf_object)
    for prog in _ALL_PROGS:
        if prog not in NEEDED:
            obj.set_autoload(prog, False)
        elif prog in MULTI:
            obj.set_expected_attach_type(prog, MULTI[prog])
    return obj


def map_ids(obj, names) -> set[int]:
    out = set()
    for name in names:
        with open(f"/proc/self/fdinfo/{obj.map_fd(name)}") as f:
            out |= {int(line.split()[1]) for line in f if line.startswith("map_id:")}
    return out


def prog_info(fd: int) -> dict:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        prog_id = next(int(line.split()[1]) for line in f if line.startswith("prog_id:"))
    out = subprocess.run(["bpftool", "-j", "prog", "show", "id", str(prog_id)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


MIN_HALF_MS = parload.MIN_HALF_MS


@pytest.fixture(autouse=True)
def split_whenever_it_pays(monkeypatch):
    """Split even when other tests load the machine (the daemon asks for spare CPUs), and
    however little the halves verify: these tests are about the split's mechanism (shared
    maps, clean failures), not about when it pays (since the verifier's work was cut, the
    halves of NEEDED verify for less than MIN_HALF_MS)."""
    monkeypatch.setenv(parload.SPLIT_ENV, "1")
    monkeypatch.setattr(parload, "MIN_HALF_MS", 0)


def test_both_halves_use_the_first_objects_maps(bpf_object, tracefs):
    first, *halves = parload.plan(NEEDED)
    assert first == "dc_fork" and all(halves), "the plan splits this set in two"
    assert {("dc_sys_exit" in h, "dc_uretprobe_multi" in h) for h in halves} == \
        {(True, False), (False, True)}, "the two long verifications go to different halves"
    before = held_bpf_ids()         # another test's engine may still be open
    obj = parload.load(configured(bpf_object), NEEDED, _ALL_PROGS, MULTI)
    try:
        assert isinstance(obj, parload.SplitObject) and len(obj.others) == 2
        assert len({id(obj._of(prog)) for prog in NEEDED}) == 3, "three objects loaded them"
        # the maps this process holds are the first object's: the other two made none
        names = obj.first.map_names()
        made = map_ids(obj, names)
        assert len(names) > 30 and len(made) == len(names)
        assert held_bpf_ids()["map_id"] - before["map_id"] == made
        events = next(iter(map_ids(obj, ["events"])))
        for prog in NEEDED:
            info = prog_info(obj.program_fd(prog))
            assert info["name"] == prog      # bpftool names it from BTF
            assert set(info.get("map_ids", [])) <= made, f"{prog} uses a map of its own"
        for prog in ("dc_sys_exit", "dc_uretprobe_multi", "dc_raw_tracepoint"):
            assert events in prog_info(obj.program_fd(prog))["map_ids"], \
                f"{prog} sends through the first object's ring"
    finally:
        obj.close()
    assert held_bpf_ids() == before, "close frees everything"


@pytest.mark.parametrize("half", [0, 1], ids=["in-the-callers-thread", "in-the-second-thread"])
def test_a_refused_half_leaves_nothing_loaded(bpf_object, tracefs, half):
    """A program of one half made unloadable (a BTF tracepoint program given the uprobe_multi
    attach type, which the kernel refuses): the load raises the usual refusal and once the
    caller closes its object (as the engine does) no BPF program or map is held."""
    before = held_bpf_ids()
    _first, *halves = parload.plan(NEEDED)
    bad = next(p for p in halves[half] if p in ("dc_sys_enter", "dc_block_issue",
                                                "dc_block_complete"))
    obj = configured(bpf_object)
    with pytest.raises(libbpf.LibbpfError, match="the kernel refused to load BPF object"):
        parload.load(obj, NEEDED, _ALL_PROGS, dict(MULTI, **{bad: libbpf.BPF_TRACE_UPROBE_MULTI}))
    obj.close()
    assert held_bpf_ids() == before


def test_a_session_of_syscalls_and_uprobes_loads_in_halves(bpf_object, tracefs, engine_io,
                                                           workloads, tmp_path):
    """The engine's own load splits for syscalls + uprobes, and the events of programs of
    both halves come through the first object's ring, exact."""
    n = 40
    child = workloads([engine_io, "stdio", tmp_path / "stdio.bin", n])
    with Engine([WRITE, FWRITE], Scope.for_pids([child.pid]), bpf_object=bpf_object) as eng:
        report = eng.attach()
        assert len(report.attached) == 2, report.refused
        assert isinstance(eng._obj, parload.SplitObject)
        assert eng._obj._of("dc_sys_exit") is not eng._obj._of("dc_uretprobe_multi")
        child.go()
        events, _paths = collect(eng, [child])
    fwrites = events[events["probe"] == 1]
    assert fwrites["bytes"].tolist() == stdio_sizes(n)
    writes = events[events["probe"] == 0]
    assert writes["bytes"].sum() == sum(stdio_sizes(n)), "stdio's buffered writes, every byte"


def test_one_load_when_splitting_does_not_pay(monkeypatch):
    monkeypatch.setattr(parload, "MIN_HALF_MS", MIN_HALF_MS)    # the module's own threshold
    # a syscall-only file: dc_sys_exit against 13 ms of small programs
    assert parload.plan(["dc_fork", "dc_exec", "dc_exit", "dc_sys_enter", "dc_sys_exit"]) is None
    monkeypatch.setenv(parload.SPLIT_ENV, "0")
    assert parload.plan(NEEDED) is None


GLOBALS_SRC = r"""
#include <linux/types.h>
#include <bpf/bpf_helpers.h>
char LICENSE[] SEC("license") = "GPL";
const volatile __u32 wanted = 7;    /* .rodata: libbpf fills and freezes it in its creator */
__u64 seen;                          /* .bss */
SEC("raw_tracepoint/sys_enter") int a(void *ctx) { if (wanted == 7) seen++; return 0; }
SEC("raw_tracepoint/sys_exit") int b(void *ctx) { seen += wanted; return 0; }
SEC("raw_tracepoint/sched_process_fork") int c(void *ctx) { seen--; return 0; }
"""


def test_an_object_with_global_variables_is_never_split(tmp_path, monkeypatch):
    """Internal maps (.rodata, .bss) are filled by libbpf only in the object that creates
    them: an object that has any loads whole, however the plan would split it."""
    src = tmp_path / "globals.bpf.c"
    src.write_text(GLOBALS_SRC)
    out = tmp_path / "globals.bpf.o"
    subprocess.run(["clang", "-g", "-O2", "-target", "bpf",
                    "-I/usr/include/x86_64-linux-gnu", "-c", str(src),
                    "-o", str(out)], check=True, capture_output=True)
    monkeypatch.setattr(parload, "VERIFY_MS", {"a": 100, "b": 100, "c": 1})
    monkeypatch.setattr(parload, "MIN_HALF_MS", 1)
    assert parload.plan(["a", "b", "c"]) is not None, "the plan alone would split"
    obj = libbpf.BpfObject(str(out))
    try:
        assert any("." in name for name in obj.map_names()), obj.map_names()
        loaded = parload.load(obj, ["a", "b", "c"], ["a", "b", "c"], {})
        assert loaded is obj, "split although the object has internal maps"
        assert obj.program_fd("a") >= 0 and obj.program_fd("b") >= 0
    finally:
        obj.close()
