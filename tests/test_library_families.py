"""Library families: probes follow a library wherever the job really maps it.

A library probe set names a family (``libhdf5*.so*``); the signed document carries it
on each probe, and the tracer attaches the family's probes to every member the job's
processes map: a copy loaded with dlopen() after start, HDF5 bundled in h5py's wheel.
Each member must be an ELF shared object exporting the probed functions; the summary
lists what was attached and warns about members that could not be.

The eBPF tests use a test-only family (``libdcfam*.so*``, a site probe set over a tiny
library built here) and h5py's own wheel; counts are checked against what the programs
did and against bpftrace on the same run.
"""

from __future__ import annotations

import copy
import json
import select
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from datacrumbs.probes.catalog import CatalogError, builtin_sets, load_catalog, select_probes
from datacrumbs.probes.document import build_document, check_document
from datacrumbs.probes.host_check import check_probes, host_info
from datacrumbs.probes.schema import schema_problem
from datacrumbs.signing.policy import parse_policy
from datacrumbs.signing.resolve import RequestRefused, library_file, resolve

from fixtures.tracing import Bpftrace, trace_command
from workloads import daemon_readback as rb

BIN = Path(sys.executable).parent
DATACRUMBS = str(BIN / "datacrumbs")
WORKLOADS = Path(__file__).resolve().parent / "workloads"
FAMILY = "libdcfam*.so*"


def _h5py_libhdf5() -> Path:
    """The libhdf5 bundled in h5py's wheel (h5py.libs/libhdf5-<hash>.so...)."""
    import h5py

    libs = Path(h5py.__file__).resolve().parent.parent / "h5py.libs"
    found = [p for p in libs.glob("libhdf5-*.so*")]
    assert len(found) == 1, f"h5py's wheel should bundle one libhdf5: {found}"
    return found[0]


def _build_id(path: Path) -> str:
    """The GNU build id as binutils' readelf prints it (an independent reader)."""
    out = subprocess.run(["readelf", "-n", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return re.search(r"Build ID: ([0-9a-f]+)", out).group(1)


# -- the document, the catalog, the resolvers (no eBPF) -----------------------------------

def test_builtin_library_sets_carry_their_family_and_documents_keep_it():
    sets = builtin_sets()
    assert sets["hdf5"].families == {"libhdf5_serial.so.103": "libhdf5*.so*"}
    assert sets["mpiio"].families == {"libmpich.so.12": "libmpi*.so*"}
    assert sets["stdio"].families == {"libc.so.6": "libc.so.6"}
    probes = select_probes(sets, ["hdf5", "posix"])
    assert {p.get("family") for p in probes if p["kind"] == "uprobe"} == {"libhdf5*.so*"}
    assert all("family" not in p for p in probes if p["kind"] != "uprobe")
    kept, _dropped = check_probes(probes, host=host_info())
    doc = build_document(kept, owner_uid=0, owner_user="root", sets=["hdf5", "posix"])
    assert check_document(doc, source="t") is doc
    assert {p["family"] for p in doc["probes"] if p["kind"] == "uprobe"} == {"libhdf5*.so*"}


def test_schema_bounds_the_family_and_old_documents_stay_valid():
    kept, _ = check_probes(select_probes(builtin_sets(), ["hdf5"]), host=host_info())
    doc = build_document(kept, owner_uid=0, owner_user="root", sets=["hdf5"])
    old = copy.deepcopy(doc)
    for p in old["probes"]:
        del p["family"]
    assert schema_problem(old) is None          # documents from before families
    for bad, words in (("*", "library families"), ("*.so", "library families"),
                       ("lib*", "library families"), ("../libx.so", "library families"),
                       ("lib/x.so", "library families")):
        broken = copy.deepcopy(doc)
        broken["probes"][0]["family"] = bad
        assert schema_problem(broken) == f"probes/0/family: does not match the pattern for " \
            "library families (a file-name pattern naming a .so, e.g. libhdf5*.so*)", bad
    syscall = {"id": "posix.read", "kind": "syscall", "target": "read", "category": "POSIX",
               "args": {}, "bytes": None, "family": "libc.so.6"}
    broken = copy.deepcopy(doc)
    broken["probes"][0] = syscall
    assert schema_problem(broken) == "probes/0/kind: must be 'uprobe': only uprobe probes " \
        "have 'family'"


def _site_set(site, library: Path, *, family: str = FAMILY, name: str = "dcfam") -> None:
    args = {"dcfam_open": {"path": 0}, "dcfam_write": {"fd": 0, "count": 2},
            "dcfam_close": {"fd": 0}}
    probes = [{"id": f"dcfam.{t.split('_')[1]}", "kind": "uprobe", "target": t,
               "library": str(library), "category": "DCFAM", "args": a,
               "bytes": "ret" if t == "dcfam_write" else None} for t, a in args.items()]
    (site.probe_sets_dir / f"{name}.json").write_text(json.dumps(
        {"name": name, "description": "test-only library family",
         "families": {str(library): family}, "probes": probes}))


def test_a_family_must_match_its_own_library(site, tmp_path):
    _site_set(site, Path("/opt/x/libdcfam.so.1"), family="libother*.so*")
    with pytest.raises(CatalogError, match="does not match that library's own name"):
        load_catalog(site)


def test_h5py_copy_stands_for_the_family_and_other_files_are_refused(tmp_path):
    """The signing service's resolver: a --library of the set's family replaces the
    catalog's file; one of no family of the sets, or not an ELF library, is refused
    with one line naming it."""
    copy_path = _h5py_libhdf5()
    probes = select_probes(builtin_sets(), ["hdf5"])
    fd = os.open(copy_path, os.O_RDONLY)
    try:
        resolved = resolve(probes, [library_file(fd, str(copy_path))], host_info())
    finally:
        os.close(fd)
    assert {p["library"] for p in resolved.probes} == {str(copy_path)}
    assert {p["family"] for p in resolved.probes} == {"libhdf5*.so*"}
    assert len(resolved.probes) == len(probes) and not resolved.dropped

    data = tmp_path / "libhdf5-abc123.so.310"
    data.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(4096))
    libc = "/usr/lib/x86_64-linux-gnu/libc.so.6"
    for path, words in ((data, f"library {data} is not an ELF shared library"),
                        (Path(libc), f"library {libc} is not a library of the chosen sets "
                                     "(their libraries and families: libhdf5*.so*, "
                                     "libhdf5_serial.so.103)")):
        fd = os.open(path, os.O_RDONLY)
        try:
            with pytest.raises(RequestRefused) as info:
                resolve(probes, [library_file(fd, str(path))], host_info())
        finally:
            os.close(fd)
        assert str(info.value) == words and "\n" not in str(info.value)


def test_local_generation_binds_the_family_member_given_with_library(site, tmp_path):
    copy_path = _h5py_libhdf5()
    out = tmp_path / "h5.json.gz"
    proc = subprocess.run([DATACRUMBS, "probes", "generate", "--set", "hdf5", "--library",
                           str(copy_path), "-o", str(out)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    from datacrumbs.probes.document import read_document

    doc = read_document(out)
    assert {p["library"] for p in doc["probes"]} == {str(copy_path)}
    assert {p["family"] for p in doc["probes"]} == {"libhdf5*.so*"}
    show = subprocess.run([DATACRUMBS, "probes", "show", str(out)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "COLUMNS": "400"})
    assert show.stdout.count(f"{copy_path} (family libhdf5*.so*)") == len(doc["probes"])
    libc = "/usr/lib/x86_64-linux-gnu/libc.so.6"
    proc = subprocess.run([DATACRUMBS, "probes", "generate", "--set", "hdf5", "--library", libc,
                           "-o", str(tmp_path / "x.json.gz")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert f"--library {libc} (libc.so.6) is not used by any probe of hdf5, whose libraries " \
        "are libhdf5_serial.so.103 (families libhdf5*.so*)" in proc.stderr


def test_policy_withholds_denied_families():
    from datacrumbs.signing.service import _withhold_families

    policy = parse_policy('[defaults]\nallow_kinds = ["uprobe"]\nallow_sets = ["*"]\n'
                          '[deny]\nfamilies = ["libmpi*"]\nlibraries = ["/opt/secret/libhdf5-*"]\n',
                          source="t", default_max_days=7)
    assert policy.family_denied("libmpi*.so*") == "libmpi*"
    assert policy.family_denied("libhdf5*.so*") == "/opt/secret/libhdf5-*"   # could name one
    assert policy.family_denied("libc.so.6") is None
    probes = [{"id": "a", "kind": "uprobe", "family": "libmpi*.so*"},
              {"id": "b", "kind": "uprobe", "family": "libc.so.6"}]
    assert _withhold_families(policy, probes) == {"libmpi*.so*"}
    assert probes == [{"id": "a", "kind": "uprobe"},
                      {"id": "b", "kind": "uprobe", "family": "libc.so.6"}]


# -- under eBPF ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def family_build(shared_dir):
    """The family's library, a hash-named copy, a name-only member and the programs."""
    cc = shutil.which("cc") or shutil.which("gcc")
    lib = shared_dir / "lib" / "libdcfam.so.1"
    lib.parent.mkdir()
    copies = shared_dir / "x"
    copies.mkdir()
    subprocess.run([cc, "-O2", "-shared", "-fPIC", "-Wl,-soname,libdcfam.so.1", "-o", str(lib),
                    str(WORKLOADS / "family_lib.c")], check=True, capture_output=True)
    copied = copies / "libdcfam-3f2a9c1b.so.1"
    shutil.copy(lib, copied)
    other = copies / "libdcfam_hl-77e0d1aa.so.1"
    subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(other),
                    str(WORKLOADS / "family_other.c")], check=True, capture_output=True)
    prog = shared_dir / "family_dlopen"
    subprocess.run([cc, "-O2", "-o", str(prog), str(WORKLOADS / "family_dlopen.c"), "-ldl"],
                   check=True, capture_output=True)
    exe = copies / "libdcfam-exec.so.1"     # a program named like a member
    subprocess.run([cc, "-O2", "-no-pie", "-rdynamic", "-o", str(exe),
                    str(WORKLOADS / "family_exec.c")], check=True, capture_output=True)
    for path in (shared_dir, lib.parent, copies):
        path.chmod(0o755)
    return {"lib": lib, "copy": copied, "other": other, "prog": prog, "exe": exe}


class _Traced:
    """`datacrumbs trace` running a command; its log lines are collected as they come so
    the test can wait for one ("attached") before letting the command go on."""

    def __init__(self, sets, out: Path, command, probes: Path | None = None, env=None):
        args = [a for s in sets for a in ("--set", s)] or ["--probes", str(probes)]
        self.proc = subprocess.Popen([DATACRUMBS, "trace", *args, "-o", str(out), "--",
                                      *map(str, command)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.out = out

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_for(self, pattern: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if re.search(pattern, line):
                    return line
            if self.proc.poll() is not None and not self.reader.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"no log line matching {pattern!r}:\n{''.join(self.lines)}")

    def finish(self):
        stdout = self.proc.stdout.read()        # stderr is the reader thread's alone
        self.proc.wait(timeout=180)
        self.reader.join(timeout=10)
        assert self.proc.returncode == 0, "".join(self.lines)
        assert "Traceback" not in "".join(self.lines)
        (trace,) = self.out.glob("*.pfw.gz")
        summary = json.loads(Path(str(trace)[:-len(".pfw.gz")] + ".summary.json").read_text())
        fh = {r["args"]["value"]: r["args"]["name"] for r in rb.records(trace)
              if r.get("name") == "FH"}
        events = rb.events(trace)
        for e in events:
            e["file"] = fh.get(e["args"].get("fhash"))
        return stdout, events, summary


@pytest.mark.ebpf
@pytest.mark.parametrize("multi", [True, False], ids=["uprobe_multi", "per-probe"])
def test_dlopened_copy_of_the_family_is_traced_as_itself(site, bpf_object, family_build,
                                                         tmp_path, multi):
    """A copy with a hash-like name, dlopen()ed after start, gets the family's probes:
    its calls are in the trace with its path, the signed file's calls without, and the
    summary counts them together and lists the copy (path, inode, build id)."""
    b = family_build
    _site_set(site, b["lib"])
    out = tmp_path / "out"
    out.mkdir()
    data, loaded, go = tmp_path / "data.bin", tmp_path / "loaded", tmp_path / "go"
    n_copy, n_signed = 7, 5
    run = _Traced(["dcfam", "posix"], out, [b["prog"], b["copy"], data, n_copy, loaded, go,
                                             b["lib"], n_signed, b["other"]],
                  env={"DATACRUMBS_UPROBE_MULTI": "1" if multi else "0"})
    run.wait_for(rf"library {re.escape(str(b['copy']))} .*: attached, 3 functions")
    go.touch()
    stdout, events, summary = run.finish()
    assert stdout == f"ok {16 * (n_copy + n_signed)}\n"
    assert data.stat().st_size == 16 * (n_copy + n_signed)
    writes = [e for e in events if e["cat"] == "DCFAM" and e["name"] == "dcfam_write"]
    by_lib = {}
    for e in writes:
        by_lib.setdefault(e["args"].get("library"), []).append(e)
        assert e["args"]["size"] == 16 and e["file"] == str(data)
    assert {k: len(v) for k, v in by_lib.items()} == {str(b["copy"]): n_copy, None: n_signed}
    opens = [e for e in events if e["name"] == "dcfam_open"]
    assert sorted(e["args"].get("library") or "" for e in opens) == ["", str(b["copy"])]
    assert all(e["file"] == str(data) for e in opens)
    assert summary["operations"]["DCFAM/dcfam_write"] == {
        "count": n_copy + n_signed, "bytes": 16 * (n_copy + n_signed),
        "time_us": summary["operations"]["DCFAM/dcfam_write"]["time_us"], "errors": 0}
    libs = {lib["path"]: lib for lib in summary["libraries"]}
    st = b["copy"].stat()
    assert libs[str(b["copy"])] | {"pid": 0} == {
        "path": str(b["copy"]), "family": FAMILY, "status": "attached", "dev": st.st_dev,
        "ino": st.st_ino, "build_id": _build_id(b["copy"]),
        "links": "uprobe_multi" if multi else "per-probe", "pid": 0, "functions": 3}
    assert libs[str(b["lib"])]["signed"] is True and libs[str(b["lib"])]["status"] == "attached"
    assert libs[str(b["other"])]["status"] == "skipped"     # matches the name only
    assert "library_warnings" not in summary
    assert any(f"library traced: {b['copy']} (family {FAMILY}, 3 functions)" in line
               for line in run.lines), "".join(run.lines)


@pytest.mark.ebpf
def test_a_member_that_cannot_be_attached_is_a_warning(site, bpf_object, family_build,
                                                       tmp_path):
    """A file named like the family that is no shared library (a program) is never
    attached; the summary, the trace command and the report say so."""
    b = family_build
    _site_set(site, b["lib"])
    out = tmp_path / "out"
    out.mkdir()
    go = tmp_path / "go"
    run = _Traced(["dcfam"], out, [b["exe"], go])
    run.wait_for(rf"library {re.escape(str(b['exe']))} .*: not attached")
    go.touch()
    _stdout, _events, summary = run.finish()
    (lib,) = [x for x in summary["libraries"] if x["path"] == str(b["exe"])]
    assert lib["status"] == "not attached" and lib["reason"] == "not an ELF shared library"
    warning = (f"library {b['exe']} of the probed family {FAMILY} was mapped by the job but "
               "not traced: not an ELF shared library")
    assert summary["library_warnings"] == [warning]
    assert any(f"warning: {warning}" in line for line in run.lines)
    report = subprocess.run([DATACRUMBS, "report", str(out)], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "COLUMNS": "400"})
    assert report.returncode == 0, report.stderr
    assert f"warning: library {b['exe']}" in report.stdout + report.stderr


H5PY_SCRIPT = """
import sys, time, os
import numpy as np
import h5py
open(sys.argv[2], "w").close()                  # h5py (and its libhdf5) is loaded
for _ in range(3000):
    if os.path.exists(sys.argv[3]):
        break
    time.sleep(0.01)
with h5py.File(sys.argv[1], "w") as f:
    for i in range(int(sys.argv[4])):
        f.create_dataset(f"d{i}", data=np.arange(1000, dtype="i4"))
with h5py.File(sys.argv[1], "r") as f:
    total = sum(int(f[f"d{i}"][()].sum()) for i in range(int(sys.argv[4])))
print("ok", total)
"""


@pytest.mark.ebpf
def test_h5py_writes_are_traced_through_its_bundled_libhdf5(site, bpf_object, tmp_path):
    """h5py's wheel bundles libhdf5-<hash>.so: the hdf5 set's family reaches it. Counts
    per function equal bpftrace's uprobes on that file in the same run."""
    lib = _h5py_libhdf5()
    functions = ("H5Fcreate", "H5Fopen", "H5Dcreate2", "H5Dopen2", "H5Dwrite", "H5Dread")
    script = tmp_path / "h5w.py"
    script.write_text(H5PY_SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    h5, loaded, go = tmp_path / "t.h5", tmp_path / "loaded", tmp_path / "go"
    n = 6
    probes = ", ".join(f"uprobe:{lib}:{f}" for f in functions)
    with Bpftrace(f"{probes} {{ @[probe] = count(); }}") as bt:
        run = _Traced(["hdf5"], out, [sys.executable, script, h5, loaded, go, n])
        run.wait_for(rf"library {re.escape(str(lib))} .*: attached, \d+ functions")
        go.touch()
        stdout, events, summary = run.finish()
        counted = bt.maps()
    assert stdout == f"ok {n * sum(range(1000))}\n"
    expected = {f: int(m.group(1)) for f in functions
                for m in [re.search(rf"@\[uprobe:{re.escape(str(lib))}:{f}\]: (\d+)", counted)]
                if m}
    assert expected["H5Dwrite"] == n and expected["H5Dcreate2"] == n, counted
    assert expected["H5Fcreate"] == 1, counted
    traced = {}
    for e in events:
        if e["cat"] == "HDF5":
            assert e["args"]["library"] == str(lib)
            if e["name"] in functions:
                traced[e["name"]] = traced.get(e["name"], 0) + 1
    assert traced == expected
    (create,) = [e for e in events if e["name"] == "H5Fcreate"]
    assert create["file"] == str(h5)
    libs = {x["path"]: x for x in summary["libraries"]}
    assert libs[str(lib)]["status"] == "attached"
    assert libs[str(lib)]["build_id"] == _build_id(lib)
    hl = [x for x in summary["libraries"] if "libhdf5_hl" in x["path"]]
    assert [x["status"] for x in hl] == ["skipped"]


def _read_until(stream, pattern: str, seen: list[str], timeout: float = 60) -> None:
    """Read a child's stderr (without blocking past ``timeout``) until a line matches."""
    fd = stream.fileno()
    os.set_blocking(fd, False)
    buf = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            r, _, _ = select.select([fd], [], [], 0.1)
            if r:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                buf += chunk
                *lines, buf = buf.split(b"\n")
                seen.extend(x.decode(errors="replace") for x in lines)
                if any(re.search(pattern, x) for x in seen):
                    return
    finally:
        os.set_blocking(fd, True)
    raise AssertionError(f"no line matching {pattern!r}:\n" + "\n".join(seen))


@pytest.mark.ebpf
def test_the_daemon_attaches_members_mapped_in_the_jobs_cgroup_only(site, bpf_object, user1,
                                                                    family_build, tmp_path):
    """`datacrumbs run` for user1 with the job's cgroup: a copy the job dlopen()s is traced;
    another copy the same user maps outside the job is neither attached nor listed."""
    from datacrumbs.probes.document import write_document
    from datacrumbs.signing.keys import KeyStore

    b = family_build
    _site_set(site, b["lib"])
    outside_copy = b["copy"].with_name("libdcfam-0badc0de.so.1")
    shutil.copy(b["lib"], outside_copy)
    work = tmp_path / "work"
    work.mkdir()
    work.chmod(0o1777)
    tmp_path.chmod(0o755)
    store = KeyStore.from_config(site)
    store.init()
    doc = build_document(select_probes(load_catalog(site), ["dcfam"]), owner_uid=user1.pw_uid,
                         owner_user=user1.pw_name, sets=["dcfam"])
    probes = site.prefix.parent / "dcfam.json.gz"
    write_document(probes, store.sign(doc))
    cg = Path("/sys/fs/cgroup/unified") / f"datacrumbs-family-test-{os.getpid()}-job-7070"
    cg.mkdir()
    daemon = subprocess.Popen([DATACRUMBS, "run", str(probes), "7070", user1.pw_name],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**os.environ, "DATACRUMBS_CGROUP": str(cg)})
    procs = []
    try:
        seen: list[str] = []
        _read_until(daemon.stderr, r"ready: tracing to", seen)

        def enter():
            (cg / "cgroup.procs").write_text(str(os.getpid()))
            os.setgroups([])
            os.setgid(user1.pw_gid)
            os.setuid(user1.pw_uid)

        go = work / "go"
        for name, lib, pre in (("in", b["copy"], enter), ("out", outside_copy, None)):
            kw = {"preexec_fn": pre} if pre else {"user": user1.pw_uid, "group": user1.pw_gid,
                                                   "extra_groups": []}
            procs.append(subprocess.Popen([str(b["prog"]), str(lib), str(work / f"{name}.bin"),
                                           "9", str(work / f"{name}.loaded"), str(go)],
                                          stdout=subprocess.PIPE, **kw))
        _read_until(daemon.stderr, rf"library {re.escape(str(b['copy']))} .*attached, 3 ", seen)
        go.touch()
        for p in procs:
            assert p.communicate(timeout=60)[0] == b"ok 144\n"
        time.sleep(0.3)     # the next scan would see the outside copy if it looked there
        daemon.send_signal(signal.SIGINT)
        _out, err = daemon.communicate(timeout=60)
        assert daemon.returncode == 0, err.decode()
        log = "\n".join(seen) + err.decode()
        assert str(outside_copy) not in log
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        if daemon.poll() is None:
            daemon.kill()
            daemon.communicate()
        cg.rmdir()
    (summary_path,) = Path(site.trace_dir.format(user=user1.pw_name)).rglob("*.summary.json")
    summary = json.loads(summary_path.read_text())
    assert [lib["path"] for lib in summary["libraries"]] == [str(b["lib"]), str(b["copy"])]
    assert summary["operations"]["DCFAM/dcfam_write"] | {"time_us": 0} == {
        "count": 9, "bytes": 9 * 16, "time_us": 0, "errors": 0}     # the job's copy only
    # dcfam_open names its file (the probe's path argument); the outside one is absent
    assert list(summary["files"]) == [str(work / "in.bin")]


def _unsigned_probes(site, tmp_path, library: Path, *, family: bool) -> Path:
    """An unsigned probes file (`datacrumbs trace --probes` takes one) of the test set
    bound to ``library``, with or without the family (a document from before families)."""
    from datacrumbs.probes.document import write_document

    _site_set(site, library)
    probes = select_probes(load_catalog(site), ["dcfam"])
    if not family:
        for p in probes:
            del p["family"]
    path = tmp_path / ("fam.json.gz" if family else "nofam.json.gz")
    write_document(path, build_document(probes, owner_uid=0, owner_user="root",
                                        sets=["dcfam"]))
    return path


@pytest.mark.ebpf
def test_a_document_without_family_attaches_to_its_file_only(site, bpf_object, family_build,
                                                             tmp_path):
    b = family_build
    probes = _unsigned_probes(site, tmp_path, b["lib"], family=False)
    out = tmp_path / "out"
    out.mkdir()
    loaded, go = tmp_path / "loaded", tmp_path / "go"
    go.touch()
    run = _Traced([], out, [b["prog"], b["copy"], tmp_path / "d.bin", 4, loaded, go, b["lib"],
                            3], probes=probes)
    stdout, events, summary = run.finish()
    assert stdout == f"ok {16 * 7}\n"
    writes = [e for e in events if e["name"] == "dcfam_write"]
    assert len(writes) == 3 and all("library" not in e["args"] for e in writes)
    assert "libraries" not in summary
    assert not any("library" in line and "attached," in line for line in run.lines)


@pytest.mark.ebpf
def test_family_still_attaches_when_its_signed_file_is_missing_here(site, bpf_object,
                                                                    family_build, tmp_path):
    """The signed file is absent on this node: its probes are refused, but the family
    attaches to the copy the job maps, and the run does not fail for 'nothing attached'."""
    b = family_build
    gone = tmp_path / "gone" / "libdcfam.so.1"
    gone.parent.mkdir()
    shutil.copy(b["lib"], gone)
    probes = _unsigned_probes(site, tmp_path, gone, family=True)
    gone.unlink()
    out = tmp_path / "out"
    out.mkdir()
    loaded, go = tmp_path / "loaded", tmp_path / "go"
    run = _Traced([], out, [b["prog"], b["copy"], tmp_path / "d.bin", 5, loaded, go],
                  probes=probes)
    run.wait_for(rf"library {re.escape(str(b['copy']))} .*: attached, 3 functions")
    go.touch()
    stdout, events, summary = run.finish()
    assert stdout == f"ok {16 * 5}\n"
    writes = [e for e in events if e["name"] == "dcfam_write"]
    assert len(writes) == 5 and {e["args"]["library"] for e in writes} == {str(b["copy"])}
    assert [p["reason"] for p in summary["probes_refused"]] == [
        f"library {gone} not found on this host (the probe still attaches to the libraries "
        f"of its family {FAMILY} the job maps)"] * 3
    assert [lib["path"] for lib in summary["libraries"]] == [str(b["copy"])]


def _service(site):
    from datacrumbs.signing.client import ping

    service = subprocess.Popen([str(BIN / "datacrumbs_sign_probes"), "--socket",
                                str(site.socket_path)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while not ping(socket_path=site.socket_path):
        assert service.poll() is None, service.stderr.read()
        assert time.monotonic() < deadline, "signing service did not come up"
        time.sleep(0.05)
    return service


def test_the_signing_service_signs_the_family_and_the_policy_can_withhold_it(
        site, key_store, user1, tmp_path):
    """--sign through the real service, as a user: h5py's libhdf5 (a copy the user owns)
    is accepted for the hdf5 set and the signed probes carry the family; with
    ``deny.families`` the service signs them without it."""
    from datacrumbs.probes.verify import verify_probes_file

    home = tmp_path / "home"
    home.mkdir()
    tmp_path.chmod(0o755)
    os.chown(home, user1.pw_uid, user1.pw_gid)
    lib = home / _h5py_libhdf5().name
    shutil.copy(_h5py_libhdf5(), lib)
    os.chown(lib, user1.pw_uid, user1.pw_gid)

    def generate(name):
        out = home / name
        proc = subprocess.run(["setpriv", f"--reuid={user1.pw_uid}", f"--regid={user1.pw_gid}",
                               "--clear-groups", DATACRUMBS, "probes", "generate", "--set",
                               "hdf5", "--library", str(lib), "--sign", "-o", str(out)],
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "HOME": str(home)})
        assert proc.returncode == 0, proc.stderr
        return verify_probes_file(out, user1.pw_name, config=site)

    for policy, family in (("", "libhdf5*.so*"),
                           ('[deny]\nfamilies = ["libhdf5*"]\n', None)):
        site.policy_file.write_text('contact = "x"\n[defaults]\nallow_kinds = ["uprobe"]\n'
                                    'allow_sets = ["*"]\n' + policy)
        service = _service(site)
        try:
            doc = generate(f"h5-{bool(family)}.json.gz")
        finally:
            service.send_signal(signal.SIGTERM)
            service.wait(timeout=20)
        assert {p["library"] for p in doc["probes"]} == {str(lib)}
        assert {p.get("family") for p in doc["probes"]} == {family}


HOSTILE_MAPPER = """
import mmap, os, sys, time
maps = []
for path in sys.argv[2:]:
    with open(path, "rb") as f:
        maps.append(mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ | mmap.PROT_EXEC,
                              flags=mmap.MAP_PRIVATE))
for _ in range(3000):
    if os.path.exists(sys.argv[1]):
        break
    time.sleep(0.01)
print("ok", len(maps))
"""


@pytest.mark.ebpf
def test_hostile_files_named_like_the_family_never_harm_the_tracer(site, bpf_object,
                                                                   family_build, tmp_path):
    """Files a job user can write, named like members and mapped executable: ELF headers
    with random contents, a truncated copy. Each is refused with its reason; the trace
    completes."""
    import random

    b = family_build
    _site_set(site, b["lib"])
    rng = random.Random(9)
    files = []
    good = b["lib"].read_bytes()
    for k in range(24):
        body = bytearray(rng.randbytes(8192))
        body[:16] = b"\x7fELF\x02\x01\x01" + bytes(9)      # 64-bit little-endian ELF
        body[16:18] = (3).to_bytes(2, "little")                 # ET_DYN
        body[18:20] = (62).to_bytes(2, "little")                # EM_X86_64
        if k % 2:    # a real header, random tables behind it
            body[:64] = good[:64]
        files.append(tmp_path / f"libdcfam-evil{k}.so.1")
        files[-1].write_bytes(bytes(body))
    files.append(tmp_path / "libdcfam-cut.so.1")
    files[-1].write_bytes(good[:len(good) // 3])
    script = tmp_path / "mapper.py"
    script.write_text(HOSTILE_MAPPER)
    out = tmp_path / "out"
    out.mkdir()
    go = tmp_path / "go"
    run = _Traced(["dcfam"], out, [sys.executable, script, go, *files])
    run.wait_for(r"library .*libdcfam-cut\.so\.1 .*: not attached")
    for f in files:
        run.wait_for(rf"library {re.escape(str(f))} ")
    go.touch()
    stdout, _events, summary = run.finish()
    assert stdout == f"ok {len(files)}\n"
    libs = {x["path"]: x for x in summary["libraries"]}
    assert all(libs[str(f)]["status"] == "not attached" for f in files)
    assert {libs[str(f)]["reason"] for f in files} <= {"not an ELF shared library"}
    assert len(summary["library_warnings"]) == len(files)


MPROTECT_CHILD = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
fd = os.open(sys.argv[1], os.O_RDONLY)
addr = libc.mmap(None, 4096, 1, 2, fd, 0)              # PROT_READ, MAP_PRIVATE
print("mapped", flush=True)
sys.stdin.readline()
assert libc.mprotect(addr, 4096, 5) == 0               # PROT_READ | PROT_EXEC
print("exec", flush=True)
sys.stdin.readline()
"""


def test_the_scanner_sees_code_mapped_after_a_read_only_mapping_of_the_same_size(tmp_path):
    """ld.so maps a library read-only, then its code over it: the process's size does not
    change in between, so a scan in that moment must not let the size check hide it."""
    from datacrumbs.tracer.families import MapScanner

    lib = tmp_path / "libdcfam-9d8c7b6a.so.1"
    lib.write_bytes(bytes(4096))
    child = subprocess.Popen([sys.executable, "-c", MPROTECT_CHILD, str(lib)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        scanner = MapScanner([FAMILY, "libc.so.6"])
        assert child.stdout.readline() == "mapped\n"
        found = scanner.scan(child.pid)
        assert [m.path for m in found] == ["/usr/lib/x86_64-linux-gnu/libc.so.6"]
        assert scanner.scan(child.pid) == []            # same size: maps not read again
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.stdout.readline() == "exec\n"
        (m,) = scanner.scan(child.pid)
        st = lib.stat()
        assert (m.path, m.family, m.key) == (str(lib), FAMILY,
                                             (os.major(st.st_dev), os.minor(st.st_dev),
                                              st.st_ino))
        assert scanner.scan(child.pid, force=True) == []    # each file once
    finally:
        child.kill()
        child.wait()


# -- dlopen holds: no call missed right after a dlopen() ------------------------------------

DLOPEN_RUNS = 5             # the race was lost most of the time before holds; 5 tries each
CTOR_WRITES = 3             # DCFAM_CTOR_WRITES in workloads/family_ctor_lib.c


@pytest.fixture(scope="module")
def dlopen_build(family_build, shared_dir):
    """family_dlopen_now (also built for a copy of the dynamic linker, as in a container),
    and per run a fresh copy of the family's library (a file the tracer has not judged
    yet), plain and with a constructor calling the library."""
    cc = shutil.which("cc") or shutil.which("gcc")
    prog = shared_dir / "family_dlopen_now"
    subprocess.run([cc, "-O2", "-o", str(prog), str(WORKLOADS / "family_dlopen_now.c"), "-ldl"],
                   check=True, capture_output=True)
    ctor = shared_dir / "ctor.so"
    subprocess.run([cc, "-O2", "-shared", "-fPIC", "-I", str(WORKLOADS), "-o", str(ctor),
                    str(WORKLOADS / "family_ctor_lib.c")], check=True, capture_output=True)
    ldso = shared_dir / "ldx" / "ld-linux-x86-64.so.2"
    ldso.parent.mkdir()
    shutil.copy(os.path.realpath("/lib64/ld-linux-x86-64.so.2"), ldso)
    for path in (ldso.parent, ldso):
        path.chmod(0o755)
    prog_ldx = shared_dir / "family_dlopen_ldx"
    subprocess.run([cc, "-O2", "-o", str(prog_ldx), str(WORKLOADS / "family_dlopen_now.c"), "-ldl",
                    f"-Wl,--dynamic-linker={ldso}"], check=True, capture_output=True)
    out = {"prog": prog, "prog_ldx": prog_ldx, "ldso": ldso, "plain": [], "ctor": [], "ldx": []}
    copies = family_build["copy"].parent
    for k in range(DLOPEN_RUNS + 2):
        for kind, src in (("plain", family_build["lib"]), ("ctor", ctor),
                          ("ldx", family_build["lib"])):
            dst = copies / f"libdcfam-{kind}{k:02d}.so.1"
            shutil.copy(src, dst)
            out[kind].append(dst)
    return out


def _state(pid: int) -> str:
    """The process's state letter (/proc/<pid>/stat): "T" while stopped; "" once gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return ""
    return raw[raw.rindex(b")") + 2:].split()[0].decode()


def _wait_state(pid: int, want, timeout: float = 10) -> float:
    """Wait until the process's state is (``want`` True: is "T", False: is not "T");
    the monotonic time it was seen so."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (_state(pid) == "T") == want:
            return time.monotonic()
        time.sleep(0.002)
    raise AssertionError(f"process {pid} is {_state(pid)!r}, wanted {'' if want else 'not '}"
                         "stopped")


def test_the_debugger_hook_is_found_in_glibcs_dynamic_linker_only(tmp_path):
    """The hook's file offset and the distance to _r_debug, as binutils reads them; any
    other file a job could name as its dynamic linker is refused with one line."""
    from datacrumbs.tracer.dlhold import debugger_hook

    ldso = os.path.realpath("/lib64/ld-linux-x86-64.so.2")
    syms = {}
    for line in subprocess.run(["nm", "-D", ldso], capture_output=True, text=True,
                               check=True).stdout.splitlines():
        parts = line.split()
        if len(parts) == 3:
            syms[parts[2].split("@")[0]] = int(parts[0], 16)
    loads = [(int(m.group(2), 16), int(m.group(1), 16), int(m.group(3), 16))
             for m in re.finditer(r"LOAD\s+0x([0-9a-f]+) 0x([0-9a-f]+) 0x[0-9a-f]+ 0x([0-9a-f]+)",
                                  subprocess.run(["readelf", "-lW", ldso], capture_output=True,
                                                 text=True, check=True).stdout)]
    hook = syms["_dl_debug_state"]
    offset = next(hook - vaddr + off for vaddr, off, size in loads if vaddr <= hook < vaddr + size)
    assert debugger_hook(ldso) == (offset, syms["_r_debug"] - hook)
    cut = tmp_path / "ld-cut.so"
    cut.write_bytes(Path(ldso).read_bytes()[:5000])
    libc = os.path.realpath("/lib/x86_64-linux-gnu/libc.so.6")
    for path, words in ((libc, "exports no _dl_debug_state and _r_debug"),
                        ("/etc/passwd", "is not an ELF dynamic linker"),
                        (str(cut), "")):
        with pytest.raises(ValueError) as info:
            debugger_hook(path)
        assert words in str(info.value) and "\n" not in str(info.value)


@pytest.mark.ebpf
@pytest.mark.parametrize("ctor", [False, True], ids=["calls", "constructor"])
def test_no_call_is_missed_right_after_dlopen(site, bpf_object, family_build, dlopen_build,
                                              tmp_path, ctor):
    """A program dlopen()s an unjudged copy of the family and calls it N times at once
    (and, with ``ctor``, the library's constructor calls it during dlopen()): the process
    is held at the dynamic linker's debugger hook until the family's probes are on the
    copy, so the trace has every call, as bpftrace's uprobes on the copy count them in
    the same runs. Five runs, each a fresh file: the race is run five times."""
    _site_set(site, family_build["lib"])
    libs = dlopen_build["ctor" if ctor else "plain"][:DLOPEN_RUNS]
    n = 40
    extra = CTOR_WRITES if ctor else 0
    probes = ", ".join(f"uprobe:{lib}:dcfam_write" for lib in libs)
    runs = []
    with Bpftrace(f"{probes} {{ @[probe] = count(); }}") as bt:
        for k, lib in enumerate(libs):
            work = tmp_path / f"run{k}"
            work.mkdir()
            data = work / "data.bin"
            proc, trace, summary = trace_command(work, [dlopen_build["prog"], lib, data, n],
                                                 sets=("dcfam", "posix"))
            runs.append((lib, data, proc, trace, summary))
        counted = bt.maps()
    for lib, data, proc, trace, summary in runs:
        assert proc.stdout == f"ok {16 * n}\n"
        assert re.search(rf"process \d+ held as it mapped {re.escape(lib.name)} \(dlopen or "
                         r"start\): probes attached in [\d.]+ ms, resumed", proc.stderr), \
            proc.stderr
        fh = {r["args"]["value"]: r["args"]["name"] for r in rb.records(trace)
              if r.get("name") == "FH"}
        writes = [e for e in rb.events(trace) if e["name"] == "dcfam_write"]
        assert all(e["args"]["library"] == str(lib) for e in writes)
        per_file = {}
        for e in writes:
            name = fh.get(e["args"].get("fhash"))
            per_file[name] = per_file.get(name, 0) + 1
        assert per_file == ({str(data): n, "/dev/null": extra} if ctor else {str(data): n})
        m = re.search(rf"@\[uprobe:{re.escape(str(lib))}:dcfam_write\]: (\d+)", counted)
        assert m and int(m.group(1)) == n + extra == len(writes), counted
        op = summary["operations"]["DCFAM/dcfam_write"]
        assert (op["count"], op["bytes"]) == (n + extra, 16 * (n + extra))
        assert summary["operations"]["DCFAM/dcfam_open"]["count"] == 1 + (1 if ctor else 0)


@pytest.mark.ebpf
def test_a_program_with_its_own_dynamic_linker_is_hooked_at_exec(site, bpf_object,
                                                                  family_build, dlopen_build,
                                                                  tmp_path):
    """A program whose dynamic linker is another file than the system's (a container's
    glibc) is held once at exec until the hook is on that linker, then at its dlopen()
    like any other: every call right after the dlopen() is traced, in each of five runs,
    as bpftrace counts them."""
    _site_set(site, family_build["lib"])
    b = dlopen_build
    libs = b["ldx"][:DLOPEN_RUNS]
    n = 30
    runs = []
    probes = ", ".join(f"uprobe:{lib}:dcfam_write" for lib in libs)
    with Bpftrace(f"{probes} {{ @[probe] = count(); }}") as bt:
        for k, lib in enumerate(libs):
            work = tmp_path / f"run{k}"
            work.mkdir()
            proc, trace, _summary = trace_command(work, [b["prog_ldx"], lib, work / "d.bin", n],
                                                  sets=("dcfam",))
            runs.append((lib, proc, trace))
        counted = bt.maps()
    for lib, proc, trace in runs:
        assert proc.stdout == f"ok {16 * n}\n"
        assert re.search(rf"process \d+ started with dynamic linker ld-linux-x86-64.so.2: hooked "
                         rf"{re.escape(str(b['ldso']))} in [\d.]+ ms, resumed", proc.stderr), \
            proc.stderr
        assert re.search(rf"process \d+ held as it mapped {re.escape(lib.name)} ", proc.stderr)
        writes = [e for e in rb.events(trace) if e["name"] == "dcfam_write"]
        m = re.search(rf"@\[uprobe:{re.escape(str(lib))}:dcfam_write\]: (\d+)", counted)
        assert m and int(m.group(1)) == n == len(writes), counted


@pytest.mark.ebpf
def test_a_program_linked_with_a_new_member_is_held_at_its_start(site, bpf_object,
                                                                 family_build, dlopen_build,
                                                                 tmp_path):
    """A program linked (DT_NEEDED) against a member the tracer has not judged, calling it
    first thing in main(): held when the dynamic linker has mapped its libraries, before
    their constructors and main() run; every call is traced, as bpftrace counts them."""
    _site_set(site, family_build["lib"])
    cc = shutil.which("cc") or shutil.which("gcc")
    libdir = tmp_path / "needed"
    libdir.mkdir()
    lib = libdir / "libdcfam.so.1"
    shutil.copy(family_build["lib"], lib)
    prog = tmp_path / "linked"
    subprocess.run([cc, "-O2", "-o", str(prog), str(WORKLOADS / "family_linked.c"),
                    f"-L{libdir}", "-l:libdcfam.so.1", f"-Wl,-rpath,{libdir}"], check=True,
                   capture_output=True)
    n = 30
    with Bpftrace(f"uprobe:{lib}:dcfam_write {{ @w = count(); }}") as bt:
        proc, trace, _summary = trace_command(tmp_path, [prog, tmp_path / "d.bin", n],
                                              sets=("dcfam",))
        counted = bt.maps()
    assert proc.stdout == f"ok {16 * n}\n"
    assert re.search(rf"process \d+ held as it mapped libdcfam.so.1 \(dlopen or start\): "
                     r"probes attached in [\d.]+ ms, resumed", proc.stderr), proc.stderr
    writes = [e for e in rb.events(trace) if e["name"] == "dcfam_write"]
    assert {e["args"]["library"] for e in writes} == {str(lib)}
    assert f"@w: {n}" in counted and len(writes) == n, counted


def _dcfam_probes(site, library: Path) -> list[dict]:
    _site_set(site, library)
    return select_probes(load_catalog(site), ["dcfam"])


def _writes(engine, events) -> int:
    return sum(engine.probes[int(p)]["target"] == "dcfam_write" for p in events["probe"])


@pytest.mark.ebpf
def test_a_held_process_stopped_by_someone_else_stays_stopped(site, bpf_object, family_build,
                                                              dlopen_build, workloads,
                                                              tmp_path, monkeypatch):
    """The tracer sends SIGCONT only to a process it stopped itself and nobody else stopped
    meanwhile: a SIGSTOP from the job's user during the hold is kept. A second process
    mapping the same (now judged) file is not held at all; a held process that is killed
    leaves nothing held behind."""
    from datacrumbs.tracer import dlhold
    from datacrumbs.tracer.engine import Engine
    from datacrumbs.tracer.scope import Scope
    from fixtures.tracing import collect

    monkeypatch.setattr(dlhold, "HOLD_TIMEOUT_S", 60.0)    # the watchdog stays out of it
    b, lib = dlopen_build, dlopen_build["plain"][DLOPEN_RUNS]
    n = 25
    first = workloads([b["prog"], lib, tmp_path / "a.bin", n, "wait"])
    second = workloads([b["prog"], lib, tmp_path / "b.bin", n, "wait"])
    doomed = workloads([b["prog"], b["plain"][DLOPEN_RUNS + 1], tmp_path / "c.bin", n, "wait"])
    scope = Scope.for_pids([first.pid, second.pid, doomed.pid])
    with Engine(_dcfam_probes(site, family_build["lib"]), scope, bpf_object=bpf_object) as eng:
        eng.attach()
        held_fd = eng._hold.held_fd
        first.go()
        _wait_state(first.pid, True)            # held at its dlopen()
        assert [pid for pid, _ts in dlhold.held_pids(held_fd)] == [first.pid]
        os.kill(first.pid, signal.SIGSTOP)       # its user stops it too
        assert eng.poll(0) is None               # attaches, and leaves it stopped
        assert dlhold.held_pids(held_fd) == []
        time.sleep(0.3)
        assert _state(first.pid) == "T"
        assert [r["status"] for r in eng.libraries if r["path"] == str(lib)] == ["attached"]
        os.kill(first.pid, signal.SIGCONT)       # the user's own continue
        events, _paths = collect(eng, [first])
        assert _writes(eng, events) == n

        second.go()                              # the same file: judged, never held
        events, _paths = collect(eng, [second])
        assert _writes(eng, events) == n and eng._hold.holds == 1

        doomed.go()
        _wait_state(doomed.pid, True)
        doomed.kill()                            # exits while held
        assert dlhold.held_pids(held_fd) == []
        eng.poll(0)                              # the hold's message: nothing to resume
        assert eng._hold.holds == 2


@pytest.mark.ebpf
def test_without_holds_the_scan_still_attaches_and_says_what_may_be_missed(
        site, bpf_object, family_build, dlopen_build, workloads, tmp_path, monkeypatch, caplog):
    """A kernel without the helpers the hold programs call: they are not loaded, the run
    warns that calls right after a dlopen() may be missed, and the periodic scan still
    attaches the family to a copy the process maps (and keeps it mapped)."""
    import logging

    from datacrumbs.tracer import dlhold
    from datacrumbs.tracer.engine import Engine
    from datacrumbs.tracer.scope import Scope

    monkeypatch.setattr(dlhold, "kernel_lacks", lambda: "the kernel lacks bpf_find_vma() "
                        "for uprobe programs (no dlopen holds)")
    b = family_build
    loaded, go = tmp_path / "loaded", tmp_path / "go"
    w = workloads([b["prog"], dlopen_build["plain"][DLOPEN_RUNS], tmp_path / "e.bin", 3,
                   loaded, go])
    with caplog.at_level(logging.INFO, logger="datacrumbs.engine"):
        with Engine(_dcfam_probes(site, b["lib"]), Scope.for_pids([w.pid]),
                    bpf_object=bpf_object) as eng:
            eng.attach()
            assert eng._hold is None
            deadline = time.monotonic() + 30
            while not loaded.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            found = eng.discover_libraries()
            go.touch()
            w.wait()
    assert [r["status"] for r in found] == ["attached"]
    assert "the kernel lacks bpf_find_vma() for uprobe programs (no dlopen holds): calls made " \
        f"right after a dlopen() of a library of {FAMILY} may be missed" in caplog.text
    assert "dlopen holds on" not in caplog.text


HUNG_TRACER = """
import json, sys, time
from datacrumbs.tracer.engine import Engine
from datacrumbs.tracer.scope import Scope
probes = json.loads(sys.argv[1])
with Engine(probes, Scope.for_pids([int(sys.argv[2])]), bpf_object=sys.argv[3]) as eng:
    eng.attach()
    print("ready", eng._hold.watchdog.pid, flush=True)
    time.sleep(600)          # never polls: a tracer that hangs
"""


@pytest.mark.ebpf
@pytest.mark.parametrize("how", ["hung", "killed"])
def test_a_held_process_never_waits_for_a_tracer_that_cannot_answer(site, bpf_object,
                                                                    family_build,
                                                                    dlopen_build, workloads,
                                                                    tmp_path, how):
    """A tracer that holds a process and then hangs: the watchdog resumes it after
    HOLD_TIMEOUT_S. One killed with SIGKILL: the watchdog resumes it at once and exits.
    Either way the program completes."""
    from datacrumbs.tracer import dlhold

    b = dlopen_build
    k = 0 if how == "hung" else 1
    lib = b["plain"][DLOPEN_RUNS + k]
    w = workloads([b["prog"], lib, tmp_path / "d.bin", 10, "wait"])
    tracer = subprocess.Popen([sys.executable, "-c", HUNG_TRACER,
                               json.dumps(_dcfam_probes(site, family_build["lib"])),
                               str(w.pid), str(bpf_object)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = tracer.stdout.readline()
        assert line.startswith("ready "), tracer.stderr.read()
        watchdog = int(line.split()[1])
        w.go()
        stopped = _wait_state(w.pid, True)
        if how == "killed":
            time.sleep(0.2)
            assert _state(w.pid) == "T"
            killed = time.monotonic()
            tracer.kill()
            resumed = _wait_state(w.pid, False)
            assert resumed - killed < 1.0
        else:
            resumed = _wait_state(w.pid, False)
            assert dlhold.HOLD_TIMEOUT_S - 0.2 < resumed - stopped < dlhold.HOLD_TIMEOUT_S + 2
        w.wait()
        tracer.kill()
        tracer.wait(timeout=30)
        err = tracer.stderr.read()
        assert f"datacrumbs: process {w.pid} held at a dlopen() " in err
        assert "Traceback" not in err
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{watchdog}") and _state(watchdog) != "Z" \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not os.path.exists(f"/proc/{watchdog}") or _state(watchdog) == "Z"
    finally:
        if tracer.poll() is None:
            tracer.kill()
            tracer.wait()
