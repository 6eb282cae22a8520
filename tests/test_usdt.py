"""USDT probes (--usdt LIB:PROVIDER:NAME): notes read from real ELF files, probes attached
under real eBPF with their semaphores, arguments decoded, checked against the program's own
output, readelf and bpftrace; the signing service resolves patterns and refuses bad ones.

tests/workloads/usdt/ is built here with <sys/sdt.h> (systemtap-sdt-dev): myprov:plain has
no semaphore and passes an int, a long, a string pointer and the constant 42 (memory,
register and constant operands at -O0); myprov:guarded fires only while its semaphore is
set, and the program prints how often it saw it set.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from datacrumbs.probes import usdt
from datacrumbs.probes.document import check_document, write_document
from datacrumbs.signing.audit import read_records
from datacrumbs.tracer.engine import Engine
from datacrumbs.tracer.scope import Scope
from fixtures.tracing import DATACRUMBS, Bpftrace, collect, trace_command
from test_signing_service import (REPO, raw_exchange, sign_as, site_sets,  # noqa: F401
                                  start_service, wire)
from test_signing_service import keystore, service  # noqa: F401 (fixtures)
from workloads import daemon_readback as rb

SOURCES = REPO / "tests" / "workloads" / "usdt"
PYTHON = Path("/usr/bin/python3.11")
N = 37
LABEL = re.compile(r"plain=(\d+) guarded=(\d+) label=0x([0-9a-f]+)")


@pytest.fixture(scope="module")
def prog(shared_dir) -> Path:
    """The USDT workload, world-readable and executable (test users sign for it)."""
    out = shared_dir / "usdt_prog"
    cc = shutil.which("cc") or shutil.which("gcc")
    subprocess.run([cc, "-O0", "-o", str(out), str(SOURCES / "main.c"),
                    str(SOURCES / "guarded.c")], check=True, capture_output=True, timeout=120)
    out.chmod(0o755)
    return out


def ran(stdout: str) -> tuple[int, int, int]:
    m = LABEL.search(stdout)
    assert m, stdout
    return int(m.group(1)), int(m.group(2)), int(m.group(3), 16)


def readelf_notes(path: Path) -> list[dict]:
    out = subprocess.run(["readelf", "-nW", str(path)], capture_output=True, text=True,
                         check=True).stdout
    notes = []
    for m in re.finditer(r"Provider: (\S+)\s+Name: (\S+)\s+Location: (0x[0-9a-f]+), Base: "
                         r"(0x[0-9a-f]+), Semaphore: (0x[0-9a-f]+)\s+Arguments: ?([^\n]*)", out):
        notes.append({"provider": m.group(1), "name": m.group(2), "pc": int(m.group(3), 16),
                      "sema": int(m.group(5), 16), "args": m.group(6).strip()})
    return notes


def section(path: Path, name: str) -> tuple[int, int]:
    """(address, file offset) of a section, from readelf."""
    out = subprocess.run(["readelf", "-SW", str(path)], capture_output=True, text=True,
                         check=True).stdout
    m = re.search(rf"\s{re.escape(name)}\s+\S+\s+([0-9a-f]+) ([0-9a-f]+)", out)
    assert m, out
    return int(m.group(1), 16), int(m.group(2), 16)


# ---- notes and argument specs -----------------------------------------------------------


def test_notes_match_readelf_and_point_at_the_probe_nops(prog):
    notes = usdt.read_notes(open(prog, "rb"))
    theirs = readelf_notes(prog)
    assert sorted((n.provider, n.name, n.args) for n in notes) == \
        sorted((t["provider"], t["name"], t["args"]) for t in theirs)
    data = prog.read_bytes()
    probes_addr, probes_off = section(prog, ".probes")
    for note in notes:
        # <sys/sdt.h> puts a one-byte nop at each probe: the file offset must land on it
        assert data[note.pc] == 0x90, (note, hex(data[note.pc]))
        sema = next(t["sema"] for t in theirs if t["name"] == note.name)
        expected = sema - probes_addr + probes_off if sema else 0
        assert note.semaphore == expected
    assert {n.name: bool(n.semaphore) for n in notes} == {"plain": False, "guarded": True}


def test_prelinked_notes_are_moved_by_the_base_difference(prog, tmp_path):
    """A prelinked file's notes keep the addresses of before the move; the SystemTap note
    spec says to move pc and semaphore by .stapsdt.base's address now minus the note's
    base. A copy whose notes were written before such a move must give the same file
    offsets as the original (here: the notes say everything was 0x10000 higher)."""
    import struct
    data = bytearray(prog.read_bytes())
    _addr, off = section(prog, ".note.stapsdt")
    size = int(re.search(r"\.note\.stapsdt\s+NOTE\s+\S+\s+\S+\s+([0-9a-f]+)",
                         subprocess.run(["readelf", "-SW", str(prog)], capture_output=True,
                                        text=True).stdout).group(1), 16)
    delta, pos, moved = -0x10000, off, 0
    while pos < off + size:
        namesz, descsz, _type = struct.unpack_from("<III", data, pos)
        desc = pos + 12 + (namesz + 3) // 4 * 4
        pc, base, sema = struct.unpack_from("<QQQ", data, desc)
        struct.pack_into("<QQQ", data, desc, pc - delta, base - delta,
                         sema - delta if sema else 0)
        moved += 1
        pos = desc + (descsz + 3) // 4 * 4
    assert moved == 2
    copy = tmp_path / "prelinked"
    copy.write_bytes(bytes(data))
    assert usdt.read_notes(open(copy, "rb")) == usdt.read_notes(open(prog, "rb"))


@pytest.mark.parametrize("spec, kind, size, signed, reg, value", [
    ("-4@-8(%rbp)", usdt.ARG_MEM, 4, True, 32, -8),
    ("8@%rax", usdt.ARG_REG, 8, False, 80, 0),
    ("-4@%eax", usdt.ARG_REG, 4, True, 80, 0),
    ("1@%dl", usdt.ARG_REG, 1, False, 96, 0),
    ("-4@$42", usdt.ARG_CONST, 4, True, 0, 42),
    ("-4@112(%rsp)", usdt.ARG_MEM, 4, True, 152, 112),
    ("8@%r12", usdt.ARG_REG, 8, False, 24, 0),
    ("8@(%r15d)", usdt.ARG_MEM, 8, False, 0, 0),
    # not decoded (reported so): rip-relative symbols, indexed memory, xmm, odd sizes
    ("8@sym(%rip)", usdt.ARG_NONE, 8, False, 0, 0),
    ("4@(%rax,%rbx,4)", usdt.ARG_NONE, 8, False, 0, 0),
    ("8@%xmm0", usdt.ARG_NONE, 8, False, 0, 0),
    ("3@%eax", usdt.ARG_NONE, 8, False, 0, 0),
])
def test_argument_specs_are_decoded_or_marked_not(spec, kind, size, signed, reg, value):
    a = usdt.parse_arg(spec)
    assert (a.kind, a.text) == (kind, spec)
    if kind != usdt.ARG_NONE:
        assert (a.size, a.signed, a.reg, a.value) == (size, signed, reg, value)


def test_sites_are_checked_by_the_document_schema(site, tmp_path, prog):
    import copy

    from datacrumbs.probes import SchemaViolation
    from datacrumbs.probes.document import read_document
    out = tmp_path / "u.json.gz"
    subprocess.run([DATACRUMBS, "probes", "generate", "--usdt", f"{prog}:myprov:*", "-o",
                    str(out)], check=True, capture_output=True, timeout=60)
    doc = read_document(out)
    check_document(doc, source="generated")
    for change, says in (
            (lambda p: p.update(kind="uprobe", target="f"),
             "probes/0/kind: must be 'usdt': only usdt probes have 'sites'"),
            (lambda p: p["sites"][0].update(args="\x01"),
             "probes/0/sites/0/args: does not match the pattern for USDT argument specs"),
            (lambda p: p["sites"][0].update(pc=-1), "probes/0/sites/0/pc: must be at least 0"),
            (lambda p: p["sites"][0].update(extra=1),
             "probes/0/sites/0: has a property that is not allowed here"),
            (lambda p: p.update(sites=[]), "probes/0/sites: must have at least 1 item")):
        bad = copy.deepcopy(doc)
        change(bad["probes"][0])
        with pytest.raises(SchemaViolation, match=re.escape(says)):
            check_document(bad, source="bad")


def test_patterns_are_checked_without_a_traceback(site, tmp_path, prog):
    out = tmp_path / "x.json.gz"
    for bad, says in (("myprov:plain", "is not LIB:PROVIDER:NAME"),
                      (f"{prog}:my-prov:*", "is not an identifier"),
                      (f"{prog}::plain", "is not LIB:PROVIDER:NAME")):
        r = subprocess.run([DATACRUMBS, "probes", "generate", "--usdt", bad, "-o", str(out)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and says in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and not out.exists()


# ---- tracing ------------------------------------------------------------------------------


def test_usdt_probes_fire_with_their_arguments_and_the_semaphore(site, tmp_path, prog):
    untraced = subprocess.run([str(prog), str(N)], capture_output=True, text=True, check=True)
    assert ran(untraced.stdout)[:2] == (N, 0)       # nobody set the semaphore
    # bpftrace counts the unguarded probe (it has no semaphore to set) on the same run
    with Bpftrace(f"usdt:{prog}:myprov:plain {{ @plain = count(); }}") as bt:
        proc, trace, summary = trace_command(tmp_path, [prog, N], sets=(),
                                             options=("--usdt", f"{prog}:myprov:*"))
    plain_n, guarded_n, label = ran(proc.stdout)
    assert (plain_n, guarded_n) == (N, N)           # our attach set the semaphore
    assert bt.counts == {"plain": N}
    events = rb.events(trace)
    plain = [e for e in events if e["name"] == "plain"]
    guarded = [e for e in events if e["name"] == "guarded"]
    assert len(plain) == N and len(guarded) == N and len(events) == 2 * N
    assert {e["cat"] for e in events} == {"USDT"} and all(e["dur"] == 0 for e in events)
    assert {e["args"]["provider"] for e in events} == {"myprov"}
    # DTRACE_PROBE4(myprov, plain, i, (long)i * 1000000007L - 5, label, 42)
    assert sorted(e["args"]["arg0"] for e in plain) == list(range(N))
    for e in plain:
        i = e["args"]["arg0"]
        assert e["args"]["arg1"] == i * 1000000007 - 5
        assert e["args"]["arg2"] == label
        assert e["args"]["arg2_str"] == "datacrumbs-usdt"     # the text it points to
        assert e["args"]["arg3"] == 42
        assert (e["args"]["nargs"], e["args"]["args_read"]) == (4, 4)
        assert "ret" not in e["args"] and "count" not in e["args"]
    # DTRACE_PROBE2(myprov, guarded, -i, (unsigned char)(i & 0xff))
    assert sorted(e["args"]["arg0"] for e in guarded) == [-i for i in reversed(range(N))]
    assert all(e["args"]["arg1"] == -e["args"]["arg0"] & 0xFF for e in guarded)
    # no string where the spec says int (signed) or a register byte
    assert not any(k.endswith("_str") for e in guarded for k in e["args"])
    # events are in program order, one thread
    assert [e["name"] for e in sorted(events, key=lambda e: e["ts"])] == \
        ["plain", "guarded"] * N
    assert summary["events_lost"] == 0


def test_semaphore_is_raised_in_a_process_already_running(bpf_object, tracefs, workloads,
                                                           prog):
    """The kernel counts the semaphore up in processes that mapped the file before the
    probe was attached (uprobe ref_ctr_offset), not only in later ones."""
    w = workloads([prog, N, "wait"])
    deadline = time.monotonic() + 10
    while str(prog) not in Path(f"/proc/{w.pid}/maps").read_text():
        assert time.monotonic() < deadline, "the workload did not start"
        time.sleep(0.01)
    probe = {"id": "usdt.myprov.guarded", "kind": "usdt", "target": "myprov:guarded",
             "library": str(prog), "category": "USDT", "args": {}, "bytes": None}
    with Engine([probe], Scope.for_pids([w.pid]), bpf_object=bpf_object) as eng:
        report = eng.attach()
        assert report.attached == [probe] and not report.refused
        w.go()
        events, _paths = collect(eng, [w])
    assert len(events) == N and set(events["pid"].tolist()) == {w.pid}
    # arg0 (-i, sign-extended from %eax) travels in the event's ret; flags: 2 of 2 read
    assert sorted(events["ret"].tolist()) == [-i for i in reversed(range(N))]
    assert set(events["flags"].tolist()) == {0x3 | (2 << 8)}


def test_without_paths_no_string_is_read(bpf_object, tracefs, workloads, prog):
    """Strings travel with file names: a trace without paths reads none (the pointer
    argument is still its address)."""
    probe = {"id": "usdt.myprov.plain", "kind": "usdt", "target": "myprov:plain",
             "library": str(prog), "category": "USDT", "args": {}, "bytes": None}
    for capture in (True, False):
        w = workloads([prog, 3, "wait"])
        with Engine([probe], Scope.for_pids([w.pid]), bpf_object=bpf_object,
                     capture_paths=capture) as eng:
            eng.attach()
            w.go()
            batches = []
            while w.running():
                batches.append(eng.poll(50))
            w.wait()
            while (batch := eng.poll(0)) is not None:
                batches.append(batch)
        strings, n = {}, 0
        for batch in filter(None, batches):
            strings.update({n + r: v for r, v in batch.strings.items()})
            n += len(batch.events)
        assert n == 3
        assert strings == ({r: {2: "datacrumbs-usdt"} for r in range(3)} if capture else {})


def test_probe_ids_are_unique_and_in_the_id_alphabet():
    taken = {"usdt.python.function__entry"}
    assert usdt.probe_id("python:function__entry", taken) == "usdt.python.function__entry-2"
    assert usdt.probe_id("Prov:Name", taken) == "usdt.prov.name"
    long = usdt.probe_id("p" * 64 + ":" + "n" * 64, taken)
    assert len(long) <= 64 and re.fullmatch(r"[a-z0-9_.-]+", long)


def test_a_semaphore_in_a_shared_library(site, tmp_path, shared_dir):
    """The guarded probe built into a shared library (PIC: its .probes semaphore sits in a
    writable segment whose address differs from its file offset), the program linked to
    it: the kernel finds the semaphore in the library's mapping."""
    cc = shutil.which("cc") or shutil.which("gcc")
    lib = shared_dir / "libusdtguard.so"
    exe = shared_dir / "usdt_prog_shared"
    subprocess.run([cc, "-O0", "-fPIC", "-shared", "-o", str(lib), str(SOURCES / "guarded.c")],
                   check=True, capture_output=True, timeout=120)
    subprocess.run([cc, "-O0", "-o", str(exe), str(SOURCES / "main.c"), str(lib),
                    f"-Wl,-rpath,{shared_dir}"], check=True, capture_output=True, timeout=120)
    (note,) = [n for n in usdt.read_notes(open(lib, "rb")) if n.name == "guarded"]
    probes_addr, probes_off = section(lib, ".probes")
    assert probes_addr != probes_off and note.semaphore == probes_off
    proc, trace, _summary = trace_command(tmp_path, [exe, N], sets=(),
                                          options=("--usdt", f"{lib}:myprov:guarded"))
    assert ran(proc.stdout)[:2] == (N, N)
    assert [e["name"] for e in rb.events(trace)] == ["guarded"] * N


def test_profile_mode_counts_usdt_hits(site, tmp_path, prog):
    proc, trace, _summary = trace_command(tmp_path, [prog, N], sets=(),
                                          options=("--usdt", f"{prog}:myprov:plain",
                                                   "--mode", "profile"))
    assert ran(proc.stdout)[:2] == (N, 0)           # guarded was not asked for
    counters = [r for r in rb.records(trace) if r.get("ph") == "C" and r["name"] == "plain"]
    assert counters and max(r["args"]["count"] for r in counters) == N


def test_a_changed_file_is_refused_at_attach(site, tmp_path, prog):
    """A signed site must still be a note of the file: a rebuilt program is not probed at
    old offsets."""
    doc_path = tmp_path / "u.json.gz"
    subprocess.run([DATACRUMBS, "probes", "generate", "--usdt", f"{prog}:myprov:plain", "-o",
                    str(doc_path)], check=True, capture_output=True, timeout=60)
    from datacrumbs.probes.document import read_document
    doc = read_document(doc_path)
    doc["probes"][0]["sites"][0]["pc"] += 1
    write_document(tmp_path / "moved.json.gz", doc)
    r = subprocess.run([DATACRUMBS, "trace", "--probes", str(tmp_path / "moved.json.gz"), "-o",
                        str(tmp_path), "--", str(prog), "3"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0
    assert "no longer has the USDT probe myprov:plain where it was signed" in r.stderr
    assert "Traceback" not in r.stderr


def test_python_function_entry_matches_bpftrace(site, tmp_path):
    """Debian's python3.11 is built with USDT notes (python:function__entry and others, with
    semaphores). 3.11 fires function__entry only for frames entered from C (not for inlined
    Python-to-Python calls), so the count is compared with bpftrace's on the same run."""
    names = {n.target for n in usdt.read_notes(open(PYTHON, "rb"))}
    assert {"python:function__entry", "python:function__return"} <= names
    script = tmp_path / "calls.py"
    script.write_text("def fdc():\n    pass\nfor i in range(200):\n    fdc()\n")
    # other Python processes run on this machine: bpftrace counts only this one, by its
    # name (a link to python3.11: the probes are the file's, the comm is the link's)
    link = tmp_path / "dcpyusdt"
    link.symlink_to(PYTHON)
    only = '/comm == "dcpyusdt"/'
    bpf = (f"usdt:{PYTHON}:python:function__entry {only} {{ @entry = count(); }} "
           f"usdt:{PYTHON}:python:function__return {only} {{ @ret = count(); }}")
    with Bpftrace(bpf) as bt:
        _proc, trace, _summary = trace_command(
            tmp_path, [link, "-S", script], sets=(),
            options=("--usdt", f"{PYTHON}:python:function__*"))
    events = rb.events(trace)
    entry = [e for e in events if e["name"] == "function__entry"]
    ret = [e for e in events if e["name"] == "function__return"]
    assert bt.counts == {"entry": len(entry), "ret": len(ret)}, (bt.counts, len(entry), len(ret))
    assert len(entry) >= 1
    # (filename, funcname, lineno): the pointers, their text and the line number are read
    assert all(e["args"]["args_read"] == 3 and e["args"]["arg2"] > 0 for e in entry + ret)
    fdc = [e for e in ret if e["args"].get("arg1_str") == "fdc"]
    assert len(fdc) == 200                            # every fdc() returned, at line 2
    assert {(e["args"]["arg0_str"], e["args"]["arg2"]) for e in fdc} == {(str(script), 2)}


def test_library_patterns_resolve_through_the_ld_cache(site, tmp_path):
    """'libpython*.so*' names Debian's libpython3.11.so.1.0 (which has the notes too)."""
    out = tmp_path / "p.json.gz"
    r = subprocess.run([DATACRUMBS, "probes", "generate", "--usdt",
                        "libpython*.so*:python:function__entry", "-o", str(out)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    from datacrumbs.probes.document import read_document
    probes = read_document(out)["probes"]
    assert [p["target"] for p in probes] == ["python:function__entry"]
    assert re.search(r"/libpython3\.\d+\.so[.0-9]*$", probes[0]["library"])
    assert probes[0]["sites"] and probes[0]["sites"][0]["semaphore"] > 0


# ---- the signing service ------------------------------------------------------------------




def test_signed_usdt_probes_for_a_user_trace(site, service, user1, tmp_path, prog):
    result = sign_as(user1.pw_name, {"sets": [], "validity_days": 1,
                                     "usdt": [f"{prog}:myprov:*"]}, site)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    check_document(doc, source="signed")
    assert {p["target"]: p["library"] for p in doc["probes"]} == \
        {"myprov:plain": str(prog), "myprov:guarded": str(prog)}
    guarded = next(p for p in doc["probes"] if p["target"] == "myprov:guarded")
    assert guarded["sites"][0]["semaphore"] == \
        next(n.semaphore for n in usdt.read_notes(open(prog, "rb")) if n.name == "guarded")
    audit = read_records(site.audit_log)[-1]
    assert audit["decision"] == "granted" and audit["resolved"]["usdt"] == [f"{prog}:myprov:*"]
    # the signed file traces like the unsigned one
    signed = write_document(tmp_path / "signed.json.gz", doc)
    out = tmp_path / "out"
    out.mkdir()
    r = subprocess.run([DATACRUMBS, "trace", "--probes", str(signed), "-o", str(out), "--",
                        str(prog), "5"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "SUDO_USER": user1.pw_name})   # her trace
    assert r.returncode == 0, r.stderr
    trace = next(out.glob("*.pfw.gz"))
    assert sorted(e["name"] for e in rb.events(trace)) == ["guarded"] * 5 + ["plain"] * 5


def test_a_catalog_usdt_probe_is_signed_with_its_sites(site, service, user1):
    """A site set's usdt probe (a library of the ld.so cache) is bound to the file and
    signed with the sites read from it, like a --usdt pattern's."""
    (site.probe_sets_dir / "py.json").write_text(json.dumps({
        "name": "py", "description": "python entries", "probes": [
            {"id": "py.entry", "kind": "usdt", "target": "python:function__entry",
             "library": "libpython3.11.so.1.0", "category": "PYTHON", "args": {},
             "bytes": None}]}))
    result = sign_as(user1.pw_name, {"sets": ["py"], "validity_days": 1}, site)
    assert result.returncode == 0, result.stderr
    (probe,) = json.loads(result.stdout)["probes"]
    notes = [n for n in usdt.read_notes(open(probe["library"], "rb"))
             if n.target == "python:function__entry"]
    assert notes and probe["sites"] == usdt.sites_of(notes)


def _refused(site, user, patterns, says):
    before = len(read_records(site.audit_log)) if site.audit_log.exists() else 0
    result = sign_as(user.pw_name, {"sets": [], "validity_days": 1, "usdt": patterns}, site)
    assert result.returncode == 3, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    records = read_records(site.audit_log) if site.audit_log.exists() else []
    assert all(r["decision"] != "granted" for r in records[before:])
    return records[before:]


def test_hostile_user_gets_one_line_and_nothing_signed(site, service, user1, tmp_path, prog):
    secret = tmp_path / "secret_prog"
    shutil.copy(prog, secret)
    secret.chmod(0o700)                     # root's: dctest1 cannot read it
    _refused(site, user1, [f"{secret}:myprov:*"], "Permission denied")
    text = tmp_path / "notes.txt"
    text.write_text("not an ELF file\n")
    text.chmod(0o644)
    recs = _refused(site, user1, [f"{text}:myprov:*"], "is not an ELF file")
    assert recs and recs[-1]["decision"] == "refused"
    recs = _refused(site, user1, [f"{prog}:myprov:nothing*"],
                    "has no USDT probe matching myprov:nothing*")
    assert recs and recs[-1]["decision"] == "refused"
    _refused(site, user1, ["libnosuchlib*.so*:p:n"], "no library in the ld.so cache matches")
    _refused(site, user1, ["libpython3*.so*:python:nosuch*"],
             "no library matching libpython3*.so* in the ld.so cache has a USDT probe matching "
             "python:nosuch*")
    # a file without notes (a library with none)
    _refused(site, user1, [f"{os.path.realpath('/lib/x86_64-linux-gnu/libz.so.1')}:p:*"],
             "has no USDT probes")


def test_a_usdt_path_without_its_file_is_refused(site, service, prog):
    """The service reads only files the caller opened: a path without a descriptor is
    refused, never opened by root."""
    reply = raw_exchange(site.socket_path, wire({"sets": [], "validity_days": 1,
                                                 "usdt": [f"{prog}:myprov:*"]}))
    assert reply["ok"] is False and "passes 0 open files" in reply["error"]
    reply = raw_exchange(site.socket_path, wire({"sets": [], "validity_days": 1}))
    assert reply["ok"] is False and "chooses no probes" in reply["error"]
