"""Raw tracepoints attached in one C call from a thread (tracer/rawtp.py): the same links
and refusals as one system call each from Python, and none left behind when the engine
stops before taking them."""

from __future__ import annotations

import errno
import json
import os
import subprocess

import pytest

from datacrumbs.tracer import libbpf, rawtp
from datacrumbs.tracer.engine import TRACEFS, Engine
from datacrumbs.tracer.scope import Scope

pytestmark = pytest.mark.ebpf


def tracepoints(group: str, n: int) -> list[str]:
    d = TRACEFS / "events" / group
    return sorted(p.name for p in d.iterdir() if (p / "format").exists())[:n]


def raw_links_of(prog_fd: int) -> list[dict]:
    with open(f"/proc/self/fdinfo/{prog_fd}") as f:
        prog_id = next(int(line.split()[1]) for line in f if line.startswith("prog_id:"))
    links = json.loads(subprocess.run(["bpftool", "-j", "link", "show"], capture_output=True,
                                      text=True, check=True).stdout)
    return [link for link in links if link.get("prog_id") == prog_id]


@pytest.fixture
def raw_program(bpf_object, tracefs):
    with Engine([{"id": "t.0", "kind": "tracepoint", "target": "sched:sched_switch",
                  "category": "K", "args": {}, "bytes": None}],
                Scope.for_pids([os.getpid()]), bpf_object=bpf_object) as eng:
        eng._obj = eng._loader.load(multi=False)       # loaded, nothing attached
        assert libbpf._c_print is not None and hasattr(libbpf._c_print, "dc_raw_tp_open_many")
        yield eng._obj.program_fd("dc_raw_tracepoint")


def test_one_c_call_gives_what_one_call_each_gives(raw_program):
    names = tracepoints("sched", 6) + ["datacrumbs_no_such_tracepoint"]
    batch = rawtp.Batch(raw_program, list(enumerate(names)))
    got = batch.results()
    try:
        assert [i for i, _r in got] == list(range(len(names)))
        assert all(isinstance(r, libbpf.FdLink) for _i, r in got[:-1])
        assert isinstance(got[-1][1], libbpf.AttachFailed) and got[-1][1].errno == errno.ENOENT
        # the same refusal, one call from Python
        with pytest.raises(libbpf.AttachFailed) as one:
            libbpf.raw_tracepoint_link(raw_program, names[-1], 99)
        assert one.value.errno == errno.ENOENT and str(one.value) == str(got[-1][1])
        assert sorted(link["tp_name"] for link in raw_links_of(raw_program)) == \
            sorted(names[:-1])
    finally:
        for _i, r in got:
            if isinstance(r, libbpf.FdLink):
                r.destroy()
    assert raw_links_of(raw_program) == []


def test_links_not_taken_are_detached(raw_program):
    """The engine failed between starting the batch and taking it: discard() (called by
    Engine.close) waits for the thread and detaches every link it made."""
    names = tracepoints("sched", 8)
    batch = rawtp.Batch(raw_program, list(enumerate(names)))
    batch.discard()
    assert raw_links_of(raw_program) == []


def test_an_engine_closed_before_taking_them_leaves_no_link(bpf_object, tracefs):
    probes = [{"id": f"t.{i}", "kind": "tracepoint", "target": f"sched:{name}",
               "category": "K", "args": {}, "bytes": None}
              for i, name in enumerate(tracepoints("sched", 10))]
    eng = Engine(probes, Scope.for_pids([os.getpid()]), bpf_object=bpf_object)
    try:
        eng._obj = eng._loader.load(multi=False)
        specs = [eng._spec_or_refusal(i, p) for i, p in enumerate(probes)]
        started = eng._start_raw_tracepoints(specs, eng._obj.map_fd("probe_specs"))
        assert started == set(range(len(probes)))
        prog_fd = eng._obj.program_fd("dc_raw_tracepoint")
        with open(f"/proc/self/fdinfo/{prog_fd}") as f:
            prog_id = next(int(line.split()[1]) for line in f if line.startswith("prog_id:"))
    finally:
        eng.close()
    links = json.loads(subprocess.run(["bpftool", "-j", "link", "show"], capture_output=True,
                                      text=True, check=True).stdout)
    assert [link for link in links if link.get("prog_id") == prog_id] == []
