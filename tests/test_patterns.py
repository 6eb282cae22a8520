"""Selections by pattern (--uprobe LIB:GLOB, --syscall, --tracepoint, --kfunc), resolved by
the real signing service and traced under real eBPF.

What a pattern resolves to is checked against independent tools: `nm -D --defined-only` for
a library's exported functions, tracefs for tracepoints, and bpftrace counting the same
functions on the same run. Hostile requests run as the real unprivileged account dctest1.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from datacrumbs.probes.catalog import load_catalog
from datacrumbs.probes.document import read_document, write_document
from datacrumbs.probes.host_check import HostInfo, host_info
from datacrumbs.signing.audit import read_records
from datacrumbs.signing.client import SigningRefused, request_signature
from datacrumbs.signing.patterns import Resolver, kernel_function_support, resolve_kfuncs
from datacrumbs.tracer.elfsyms import exported_functions_fd

from fixtures.tracing import Bpftrace, trace_command
from test_signing_service import (RUNUSER, VENV_BIN, REPO, site_sets, start_service,  # noqa: F401
                                  keystore, service, write_policy)
from workloads import daemon_readback as rb
from workloads.daemon_build import hdf5_flags

HDF5_LIB = "/usr/lib/x86_64-linux-gnu/libhdf5_serial.so.103"
WORKLOADS = Path(__file__).resolve().parent / "workloads"

MYIO_C = r"""
#include <unistd.h>
long myio_write(int fd, const void *buf, long n) { return n > 0 ? n : 0; }
long myio_read(int fd, void *buf, long n) { return n; }
int myio_close(int fd) { return fd < 0 ? -1 : 0; }
int myio_never(void) { return 42; }
"""
MYIO_MAIN = r"""
#include <stdio.h>
long myio_write(int, const void *, long);
long myio_read(int, void *, long);
int myio_close(int);
int main(void) {
    char buf[16] = {0};
    long total = 0;
    for (int i = 0; i < 7; i++) total += myio_write(1, buf, i + 1);
    for (int i = 0; i < 3; i++) total += myio_read(0, buf, 4);
    for (int i = 0; i < 11; i++) total += myio_close(i);
    printf("ok %ld\n", total);
    return 0;
}
"""
MYIO_CALLS = {"myio_write": 7, "myio_read": 3, "myio_close": 11}


def exported(path: str, glob: str = "*") -> set[str]:
    """Function names `nm -D --defined-only` lists for a library (T, W: code; not IFUNC
    resolvers, which run once at binding)."""
    out = subprocess.run(["nm", "-D", "--defined-only", path], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    names = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "TW" and fnmatch.fnmatchcase(parts[2], glob):
            names.add(parts[2].split("@")[0])
    return names


def targets(doc: dict, kind: str | None = None) -> set[str]:
    """Every function name a document's probes reach (targets and merged aliases)."""
    return {n for p in doc["probes"] if kind is None or p["kind"] == kind
            for n in (p["target"], *p.get("aliases", ()))}


def sign_patterns(site, *patterns: tuple[str, str], sets=()) -> dict:
    return request_signature(list(sets), socket_path=site.socket_path,
                             patterns=[{"kind": k, "pattern": p} for k, p in patterns]).document


def grants(site) -> list[dict]:
    return [r for r in read_records(site.audit_log) if r["decision"] == "granted"]


@pytest.fixture(scope="module")
def built(shared_dir):
    """The HDF5 workload and a user library with its program, readable by every account."""
    cc = shutil.which("cc") or shutil.which("gcc")
    # names of their own: bpftrace counts by command name, and other tests run uprobe_hdf5
    out = {"hdf5": shared_dir / "h5d_pattern", "lib": shared_dir / "lib" / "libmyio.so",
           "myio": shared_dir / "myio_main", "dd": shared_dir / "dd_pattern"}
    shutil.copy("/bin/dd", out["dd"])
    subprocess.run([cc, "-O2", "-o", str(out["hdf5"]), str(WORKLOADS / "uprobe_hdf5.c"),
                    *hdf5_flags()], check=True, capture_output=True, timeout=120)
    out["lib"].parent.mkdir()
    out["lib"].parent.chmod(0o755)
    (shared_dir / "myio.c").write_text(MYIO_C)
    (shared_dir / "myio_main.c").write_text(MYIO_MAIN)
    # -O0 and noinline semantics: every call in main reaches the library through the PLT
    subprocess.run([cc, "-O0", "-shared", "-fPIC", "-o", str(out["lib"]),
                    str(shared_dir / "myio.c")], check=True, capture_output=True, timeout=60)
    subprocess.run([cc, "-O0", "-o", str(out["myio"]), str(shared_dir / "myio_main.c"),
                    f"-L{out['lib'].parent}", "-lmyio", f"-Wl,-rpath,{out['lib'].parent}"],
                   check=True, capture_output=True, timeout=60)
    for path in (out["lib"], out["myio"], out["hdf5"], out["dd"]):
        path.chmod(0o755)
    return out


# ---- library functions ------------------------------------------------------------------


@pytest.mark.ebpf
def test_hdf5_pattern_attaches_every_exported_match_and_counts_equal_bpftrace(
        site, service, built, tmp_path, bpf_object, tracefs):
    doc = sign_patterns(site, ("uprobe", "libhdf5_serial.so*:H5D*"))
    expected = exported(HDF5_LIB, "H5D*")
    assert len(expected) > 100                    # 148 on Debian 12's libhdf5 1.10.8
    assert targets(doc) == expected
    assert doc["patterns"] == [{"kind": "uprobe", "pattern": "libhdf5_serial.so*:H5D*",
                                "probes": len(doc["probes"])}]
    by_target = {p["target"]: p for p in doc["probes"]}
    # the catalog's definition where it has one (argument roles), none otherwise
    assert by_target["H5Dcreate2"]["id"] == "hdf5.h5dcreate2"
    assert by_target["H5Dcreate2"]["args"] == {"handle": 0, "path": 1}
    assert by_target["H5Dget_space"]["args"] == {} and by_target["H5Dget_space"]["bytes"] is None
    assert by_target["H5Dget_space"]["category"] == "HDF5"
    assert {p["library"] for p in doc["probes"]} == {os.path.realpath(HDF5_LIB)}
    probes = tmp_path / "h5d.json.gz"
    write_document(probes, doc)

    h5 = tmp_path / "d.h5"
    program = ("uprobe:" + os.path.realpath(HDF5_LIB) + ":H5D* /comm == \"h5d_pattern\"/ "
               "{ @c[probe] = count(); }")
    with Bpftrace(program) as bt:
        proc, trace, summary = trace_command(tmp_path, [built["hdf5"], h5, 4096], sets=(),
                                             options=["--probes", str(probes)])
    assert proc.stdout == "ok 16384\n"
    assert len(summary["probes_attached"]) == len(doc["probes"])
    seen = {}
    for e in rb.events(trace):
        if e["cat"] == "HDF5":
            seen[e["name"]] = seen.get(e["name"], 0) + 1
    kernel = {k[:-1].rsplit(":", 1)[1]: v for k, v in bt.counts.items() if k.startswith("c[")}
    assert kernel["H5Dwrite"] == kernel["H5Dread"] == 1
    assert len(kernel) > 10                       # internal H5D__ functions fire too
    assert seen == kernel


@pytest.mark.ebpf
def test_users_own_library_traced_by_glob_with_exact_counts(site, service, built, tmp_path,
                                                            bpf_object, tracefs):
    doc = sign_patterns(site, ("uprobe", f"{built['lib']}:*"))
    mine = exported(str(built["lib"]))
    assert {"myio_write", "myio_read", "myio_close", "myio_never"} <= mine
    assert targets(doc) == mine
    for p in doc["probes"]:                       # unknown to the catalog: time and ret only
        assert p["args"] == {} and p["bytes"] is None and p["category"] == "MYIO"
        assert p["library"] == str(built["lib"])
    probes = tmp_path / "myio.json.gz"
    write_document(probes, doc)
    proc, trace, _summary = trace_command(tmp_path, [built["myio"]], sets=(),
                                          options=["--probes", str(probes)])
    assert proc.stdout == f"ok {sum(range(1, 8)) + 12}\n"
    counts = {}
    for e in rb.events(trace):
        if e["cat"] == "MYIO":
            counts[e["name"]] = counts.get(e["name"], 0) + 1
            assert e["args"]["ret"] is not None
    assert counts == MYIO_CALLS


def test_user_signs_her_library_by_path_glob_and_show_names_the_pattern(site, service, built,
                                                                        user1, tmp_path):
    out = tmp_path / "mine.json.gz"
    tmp_path.chmod(0o777)
    proc = as_user(user1, site, "generate", "--uprobe", f"{built['lib'].parent}/libmy*.so:myio_*",
                   "--sign", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    doc = read_document(out)
    assert doc["owner"]["user"] == user1.pw_name
    assert targets(doc) == {"myio_write", "myio_read", "myio_close", "myio_never"}
    asked = f"{built['lib'].parent}/libmy*.so:myio_*"    # as written: the glob over paths
    assert doc["patterns"][0]["pattern"] == asked
    shown = as_user(user1, site, "show", str(out))
    assert shown.returncode == 0, shown.stderr
    assert f"--uprobe '{asked}': 4 probes" in shown.stdout
    (entry,) = grants(site)
    (pattern,) = entry["resolved"]["patterns"]
    assert pattern["probes"] == 4 and sorted(pattern["names"]) == sorted(targets(doc))
    assert pattern["libraries"][0]["path"] == str(built["lib"])


# ---- system calls, tracepoints, kernel functions ------------------------------------------


@pytest.mark.ebpf
def test_syscall_and_tracepoint_patterns_resolve_against_the_kernel_and_trace(
        site, service, built, tmp_path, bpf_object, tracefs):
    doc = sign_patterns(site, ("syscall", "read*"), ("tracepoint", "sched:sched_process_*"))
    assert targets(doc, "syscall") == {"read", "readv", "readlink", "readlinkat", "readahead"}
    want = {f"sched:{d.name}" for d in (tracefs / "events/sched").iterdir()
            if d.name.startswith("sched_process_") and d.is_dir()}
    assert {"sched:sched_process_exec", "sched:sched_process_fork"} <= want
    assert targets(doc, "tracepoint") == want
    read = next(p for p in doc["probes"] if p["target"] == "read")
    assert read["id"] == "posix.read" and read["args"]["fd"] == 0     # the catalog's roles
    assert [p["probes"] for p in doc["patterns"]] == [5, len(want)]
    probes = tmp_path / "k.json.gz"
    write_document(probes, doc)
    script = tmp_path / "work.sh"
    script.write_text("#!/bin/sh\nhead -c 3000 /etc/services > /dev/null\n"
                      f"{built['dd']} if=/dev/zero of=/dev/null bs=1 count=500 2>/dev/null\n")
    script.chmod(0o755)
    with Bpftrace('tracepoint:syscalls:sys_enter_read /comm == "dd_pattern"/ '
                  '{ @r = count(); }') as bt:
        _proc, trace, _summary = trace_command(tmp_path, [script], sets=(),
                                               options=["--probes", str(probes)])
    records = rb.records(trace)
    events = [r for r in records if r.get("ph") == "X"]
    dd = {r["pid"] for r in records if r.get("ph") == "M" and r["name"] == "process_name"
          and r["args"].get("name") == "dd_pattern"}
    assert len(dd) == 1
    # the kernel saw dd read N times (bpftrace, same run): every one is in the trace
    assert bt.counts["r"] >= 500
    assert sum(1 for e in events if e["name"] == "read" and e["pid"] in dd) == bt.counts["r"]
    sched = [e for e in events if e["cat"] == "SCHED"]
    # the shell runs head and dd: two forks and two execs of the job's own processes
    assert sum(1 for e in sched if e["name"] == "sched_process_exec") >= 2
    assert sum(1 for e in sched if e["name"] == "sched_process_fork") >= 2


def test_kfunc_is_refused_here_with_the_reason(site, service):
    assert not host_info().kprobes
    with pytest.raises(SigningRefused) as exc:
        sign_patterns(site, ("kfunc", "vfs_*"))
    message = str(exc.value)
    assert "\n" not in message
    assert "--kfunc 'vfs_*' refused: this kernel has no kprobes (CONFIG_KPROBES is not set), " \
           "and datacrumbs traces kernel functions through kprobes only" in message
    assert grants(site) == []


def test_kfunc_resolution_where_kprobes_exist(site, tracefs):
    """The kprobe path, against this kernel's list of traceable functions."""
    with open("/proc/kallsyms") as f:     # available_filter_functions is locked here
        symbols = {parts[2] for parts in map(str.split, f) if parts[1] in "tT"}
    assert "vfs_read" in symbols
    assert resolve_kfuncs("vfs_read*", ["vfs_read", "vfs_readv", "vfs_read.cold",
                                        "vfs_readlink", "xvfs_read"]) == \
        ["vfs_read", "vfs_readlink", "vfs_readv"]
    with_kprobes = HostInfo(tracefs, True, None)
    assert kernel_function_support(with_kprobes) == ("kprobe", None)
    assert kernel_function_support(HostInfo(tracefs, False, "no"))[0] is None
    resolver = Resolver(catalog=load_catalog(site), host=with_kprobes, passed=[], cap=1000,
                        cap_reason="test")
    (result,) = resolver.resolve([{"kind": "kfunc", "pattern": "vfs_rea*"}])
    names = {p["target"] for p in result.probes}
    assert names == set(resolve_kfuncs("vfs_rea*", symbols)) and "vfs_read" in names
    assert {p["kind"] for p in result.probes} == {"kprobe"}
    vfs_read = next(p for p in result.probes if p["target"] == "vfs_read")
    assert vfs_read["args"]            # the catalog's vfs set knows vfs_read's roles
    # the same objects again add nothing: one probe per kernel function
    assert resolver.resolve([{"kind": "kfunc", "pattern": "vfs_read"}])[0].probes == []


# ---- refusals: empty matches, the policy, hostile users -----------------------------------


@pytest.mark.parametrize("kind,pattern,expected", [
    ("syscall", "nosuch*", "--syscall 'nosuch*' refused: it matches no system call"),
    ("tracepoint", "nosuchcat:*", "--tracepoint 'nosuchcat:*' refused: it matches no tracepoint"),
    ("uprobe", "libhdf5_serial.so*:Zz*", "--uprobe 'libhdf5_serial.so*:Zz*' refused: it matches "
     "no exported function"),
    ("uprobe", "libnosuchlib*.so*:*", "--uprobe 'libnosuchlib*.so*:*' refused: no library of "
     "this host"),
    ("uprobe", "*.so*:*", "--uprobe '*.so*:*' refused: the library family must begin"),
])
def test_an_empty_or_unusable_pattern_is_refused_naming_it(site, service, kind, pattern,
                                                           expected):
    with pytest.raises(SigningRefused) as exc:
        sign_patterns(site, (kind, pattern))
    assert expected in str(exc.value) and "\n" not in str(exc.value)
    (record,) = read_records(site.audit_log)
    assert record["decision"] == "refused"
    assert record["resolved"]["patterns"] == [{"kind": kind, "pattern": pattern}]


def test_policy_judges_what_patterns_resolve_to_and_caps_the_count(site, service):
    write_policy(site, '[defaults]\nallow_kinds = ["syscall", "uprobe", "tracepoint"]\n'
                 'allow_sets = ["*"]\nmax_probes = 50\n[deny]\ntracepoints = ["sched"]\n'
                 'libraries = ["libhdf5_serial*"]\n')
    cases = [
        (("uprobe", "libhdf5_serial.so*:H5D*"), "--uprobe 'libhdf5_serial.so*:H5D*' refused: "
         "it matches 148 exported function"),
        (("tracepoint", "sched:sched_process_*"), "--tracepoint 'sched:sched_process_*': probe "),
        (("uprobe", "libhdf5_serial.so*:H5Dread"), "--uprobe 'libhdf5_serial.so*:H5Dread': "
         "probe 'hdf5.h5dread' (uprobe 'H5Dread') is refused: library"),
    ]
    for pattern, expected in cases:
        with pytest.raises(SigningRefused) as exc:
            sign_patterns(site, pattern)
        assert expected in str(exc.value), str(exc.value)
    assert "more than 50 (max_probes of the signing policy" in str(
        pytest.raises(SigningRefused, sign_patterns, site,
                      ("uprobe", "libhdf5_serial.so*:H5D*")).value)
    assert grants(site) == []
    doc = sign_patterns(site, ("syscall", "read*"))           # under the cap, allowed
    assert len(doc["probes"]) == 5
    (entry,) = grants(site)
    assert entry["resolved"]["patterns"] == [{
        "kind": "syscall", "pattern": "read*", "probes": 5,
        "names": ["read", "readv", "readlink", "readahead", "readlinkat"]}]


def as_user(user, site, *argv: str) -> subprocess.CompletedProcess:
    """`datacrumbs probes ...` run by the real account ``user`` (system Python, the
    project's source and the venv's libraries, as test_signing_service.sign_as)."""
    env = {"PATH": "/usr/bin:/bin", "DATACRUMBS_CONFIG": str(site.source), "HOME": "/tmp",
           "COLUMNS": "250",
           "PYTHONPATH": f"{REPO / 'src'}:{VENV_BIN.parent / 'lib/python3.11/site-packages'}"}
    code = "import sys; from datacrumbs.cli import main; sys.argv[0] = 'datacrumbs'; main()"
    return subprocess.run([RUNUSER, "-u", user.pw_name, "--", "/usr/bin/python3", "-c", code,
                           "probes", *argv], env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture
def others_library(user2, built, tmp_path):
    """A copy of libmyio in a directory only user2 can enter."""
    private = tmp_path / "bob"
    private.mkdir()
    shutil.copy(built["lib"], private / "libsecret.so")
    os.chown(private / "libsecret.so", user2.pw_uid, user2.pw_gid)
    (private / "libsecret.so").chmod(0o600)
    os.chown(private, user2.pw_uid, user2.pw_gid)
    private.chmod(0o700)
    tmp_path.chmod(0o755)
    return private / "libsecret.so"


def test_hostile_user_patterns_are_refused_in_one_line_and_nothing_signed(
        site, service, user1, others_library, shared_dir, tmp_path, huge_library):
    scratch = shared_dir / f"u1-{time.monotonic_ns()}"
    scratch.mkdir()
    os.chown(scratch, user1.pw_uid, user1.pw_gid)
    link = scratch / "libshadow.so"
    os.symlink("/etc/shadow", link)
    tmp_path.chmod(0o777)
    cases = [
        (f"{others_library.parent}/lib*.so:*", "no file you can see matches"),
        (f"{others_library}:*", "cannot open library " + str(others_library)
         + ": Permission denied"),
        (f"{scratch}/../../../../etc/shadow:*", "cannot open library /etc/shadow: "
         "Permission denied"),
        (f"{link}:*", f"cannot open library {link}: Permission denied"),
        ("/etc/passwd:*", "is not an ELF64 shared library"),
        (f"{huge_library}:*", f"it matches 100000 exported functions of {huge_library}, "
         f"which makes 100000 probes in all, more than {site.max_probes}"),
    ]
    for n, (pattern, expected) in enumerate(cases):
        out = tmp_path / f"p{n}.json.gz"
        proc = as_user(user1, site, "generate", "--uprobe", pattern, "--sign", "-o", str(out))
        assert proc.returncode != 0, pattern
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], (pattern, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert not out.exists()
    assert grants(site) == []


def test_raw_requests_naming_paths_without_a_file_are_refused(site, service):
    """The service never opens a path a pattern names: without a passed file, or with '..'
    components, the request is refused naming the pattern."""
    from test_signing_service import raw_exchange, wire
    for pattern, expected in [
        ("/etc/shadow:*", "no open file was passed for /etc/shadow"),
        ("/usr/lib/../../etc/shadow:*", "has an empty, '.' or '..' component"),
        ("/usr/lib/x86_64-linux-gnu/libhdf5_serial.so.103:H5D*", "no open file was passed"),
    ]:
        reply = raw_exchange(site.socket_path, wire({
            "sets": [], "validity_days": 1,
            "patterns": [{"kind": "uprobe", "pattern": pattern}]}))
        assert reply["ok"] is False
        assert reply["error"].startswith(f"--uprobe {pattern!r} refused: ")
        assert expected in reply["error"] and "\n" not in reply["error"]
    assert grants(site) == []


def test_a_file_passed_under_a_symlinks_name_signs_the_file_not_the_link(site, service, built,
                                                                        tmp_path):
    """A descriptor of one's own library claimed as a link to /etc/shadow: the service
    judges the descriptor (device and inode), so it signs that library, never the link's
    target, which it never opens."""
    from test_signing_service import raw_exchange, wire
    link = tmp_path / "libshadow.so"
    os.symlink("/etc/shadow", link)
    fd = os.open(built["lib"], os.O_RDONLY)
    try:
        reply = raw_exchange(site.socket_path, wire({
            "sets": [], "validity_days": 1, "libraries": [str(link)],
            "patterns": [{"kind": "uprobe", "pattern": f"{link}:myio_w*"}]}), fds=[fd])
    finally:
        os.close(fd)
    assert reply["ok"] is True, reply
    (probe,) = reply["document"]["probes"]
    assert probe["target"] == "myio_write" and probe["library"] == str(built["lib"])


def test_sets_alone_are_capped_by_the_policys_max_probes(site, service):
    write_policy(site, '[defaults]\nallow_kinds = ["syscall", "uprobe", "tracepoint", "async"]'
                 '\nallow_sets = ["*"]\nmax_probes = 3\n')
    with pytest.raises(SigningRefused, match=r"the sets posix make \d+ probes, more than 3 "):
        request_signature(["posix"], socket_path=site.socket_path)
    assert grants(site) == []


@pytest.fixture(scope="module")
def huge_library(shared_dir):
    """A shared library exporting 100,000 functions (assembled: seconds, not minutes)."""
    asm = shared_dir / "huge.s"
    with open(asm, "w") as f:
        f.write(".text\n")
        for i in range(100_000):
            f.write(f".globl f{i:06d}\n.type f{i:06d},@function\nf{i:06d}:\nret\n")
    obj, lib = shared_dir / "huge.o", shared_dir / "libhuge.so"
    subprocess.run(["as", "-o", str(obj), str(asm)], check=True, timeout=120)
    subprocess.run(["gcc", "-shared", "-o", str(lib), str(obj)], check=True, timeout=120)
    lib.chmod(0o755)
    return lib


def test_a_pattern_over_100000_symbols_is_refused_quickly(site, service, huge_library):
    with open(huge_library, "rb") as f:
        assert len(exported_functions_fd(f.fileno())[2]) == 100_000
    start = time.monotonic()
    with pytest.raises(SigningRefused) as exc:
        sign_patterns(site, ("uprobe", f"{huge_library}:f*"))
    elapsed = time.monotonic() - start
    message = str(exc.value)
    assert f"--uprobe '{huge_library}:f*' refused: it matches 100000 exported functions" \
        in message and f"more than {site.max_probes}" in message and "\n" not in message
    assert elapsed < 5, elapsed
    assert grants(site) == []


def test_unsigned_generate_resolves_the_same_probes_locally(site, service, tmp_path):
    """Without --sign the CLI resolves patterns itself, with the service's rules."""
    datacrumbs = str(VENV_BIN / "datacrumbs")
    out = tmp_path / "local.json.gz"
    asked = ["--uprobe", "libhdf5_serial.so*:H5Dread*", "--syscall", "pread*",
             "--tracepoint", "block:block_rq_*"]
    proc = subprocess.run([datacrumbs, "probes", "generate", *asked, "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    local = read_document(out)
    signed = sign_patterns(site, ("uprobe", "libhdf5_serial.so*:H5Dread*"),
                           ("syscall", "pread*"), ("tracepoint", "block:block_rq_*"))
    assert "signature" not in local and "signature" in signed
    assert local["probes"] == signed["probes"] and local["patterns"] == signed["patterns"]
    assert targets(local, "syscall") == {"pread64", "preadv", "preadv2"}
    none = subprocess.run([datacrumbs, "probes", "generate", "-o", str(tmp_path / "n.json.gz")],
                          capture_output=True, text=True, timeout=60)
    assert none.returncode != 0 and len(none.stderr.splitlines()) == 1
    assert "choose probes with --set NAME or a pattern" in none.stderr


def test_patterns_resolve_in_the_hardened_unit_under_a_real_systemd(systemd_manager, user1):
    """The unit's sandbox (no capabilities, ProtectKernelTunables, ProtectHome) must still
    let the service read tracefs, the syscall events and the ld.so cache's libraries."""
    from datacrumbs.config import SiteConfig, load_config, render_config
    from datacrumbs.flux.install import render_template, template_values
    from datacrumbs.signing.keys import KeyStore
    from test_signing_service import sign_as, signing_unit

    manager = systemd_manager
    name = "datacrumbs_sign_probes.service"
    with signing_unit(manager, "test-sign-patterns") as (config, _audit_log):
        request = {"sets": [], "patterns": [
            {"kind": "uprobe", "pattern": "libhdf5_serial.so*:H5Dread"},
            {"kind": "syscall", "pattern": "read*"},
            {"kind": "tracepoint", "pattern": "sched:sched_process_*"},
            # typed by libc6-dbg's separate debug file, read inside the sandbox
            {"kind": "uprobe", "pattern": "libc.so.6:posix_fadvise"}]}
        result = sign_as(user1.pw_name, request, config)
        assert result.returncode == 0, result.stderr + manager.journal(name)
        doc = json.loads(result.stdout)
        assert [p["probes"] for p in doc["patterns"]] == [
            1, 5, len([d for d in os.listdir("/sys/kernel/tracing/events/sched")
                       if d.startswith("sched_process_")]), 1]
        (fadvise,) = [p for p in doc["probes"] if p["target"] == "posix_fadvise"]
        assert [a["name"] for a in fadvise["scalars"]] == ["fd", "offset", "len", "advise"]
        refused = sign_as(user1.pw_name, {"sets": [], "patterns": [
            {"kind": "kfunc", "pattern": "vfs_*"}]}, config)
        assert refused.returncode == 3
        assert "--kfunc 'vfs_*' refused: this kernel has no kprobes" in refused.stderr
        assert "Traceback" not in manager.journal(name)


def test_generate_help_documents_the_patterns_with_examples():
    out = subprocess.run([str(VENV_BIN / "datacrumbs"), "probes", "generate", "--help"],
                         capture_output=True, text=True, timeout=60, env={
                             **os.environ, "COLUMNS": "120"})
    assert out.returncode == 0, out.stderr
    for text in ("--uprobe LIB:GLOB", "--syscall GLOB", "--tracepoint CAT:GLOB", "--kfunc GLOB",
                 "datacrumbs probes generate --uprobe 'libhdf5*.so*:H5D*' --sign",
                 "--uprobe '/home/alice/lib/libmyio.so:*'", "--tracepoint 'sched:sched_process_*'",
                 "nm -D --defined-only"):
        assert text in out.stdout, text


def test_damaged_libraries_are_refused_never_crash_the_reader(built, tmp_path):
    """The service reads files any user hands it: random damage to a library's headers and
    tables gives a library or a one-line refusal, never another exception."""
    import random

    from datacrumbs.signing.patterns import pattern_library
    from datacrumbs.signing.resolve import LibraryFile, RequestRefused

    original = built["lib"].read_bytes()
    rng = random.Random(20261202)
    outcomes = {"library": 0, "refused": 0}
    for n in range(400):
        data = bytearray(original)
        for _ in range(rng.randint(1, 16)):
            # headers, section headers (at the end) and anywhere
            spot = rng.choice([rng.randrange(64), len(data) - 1 - rng.randrange(2048),
                               rng.randrange(len(data))])
            data[spot] = rng.randrange(256)
        if n % 50 == 0:
            data = data[:rng.randrange(len(data))]
        path = tmp_path / f"lib{n}.so"
        path.write_bytes(bytes(data))
        fd = os.open(path, os.O_RDONLY)
        try:
            got = pattern_library(fd, str(path))
            assert isinstance(got, LibraryFile)
            outcomes["library"] += 1
        except RequestRefused as exc:
            assert "\n" not in str(exc)
            outcomes["refused"] += 1
        finally:
            os.close(fd)
    assert outcomes["library"] and outcomes["refused"], outcomes


@pytest.mark.ebpf
def test_trace_takes_patterns_directly(built, tmp_path, bpf_object, tracefs, site):
    """`datacrumbs trace --uprobe LIB:GLOB` (root, one command): the same resolution."""
    proc, trace, summary = trace_command(tmp_path, [built["myio"]], sets=("posix",), options=[
        "--uprobe", f"{built['lib']}:myio_*"])
    assert proc.stdout == f"ok {sum(range(1, 8)) + 12}\n"
    counts = {}
    for e in rb.events(trace):
        if e["cat"] == "MYIO":
            counts[e["name"]] = counts.get(e["name"], 0) + 1
    assert counts == MYIO_CALLS
    assert any(e["cat"] == "POSIX" for e in rb.events(trace))   # the set's probes too


@pytest.mark.systemd
@pytest.mark.ebpf
def test_a_job_traced_from_a_pattern_file_through_the_prolog_path(
        site, service, installed_service, built, user1, tmp_path, bpf_object, tracefs):
    """A user's file signed from a pattern, through the prolog path (the service wrapper,
    the real unit and daemon): the job's calls into her library are all in its trace."""
    from fixtures.systemd import FLUX_PATH, assert_clean, read_trace, trace_path

    manager = installed_service
    tmp_path.chmod(0o777)
    probes = tmp_path / "job.json.gz"
    made = as_user(user1, site, "generate", "--uprobe", f"{built['lib']}:myio_*", "--sign",
                   "-o", str(probes))
    assert made.returncode == 0, made.stderr

    def wrapper(*args):
        return subprocess.run([str(site.prefix / "bin/datacrumbs_service_wrapper"), *args,
                               "--config", str(site.source)],
                              env={"PATH": f"{manager.shim_dir}:{FLUX_PATH}"},
                              capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)

    started = wrapper("start", "9", user1.pw_name, str(probes))
    assert started.returncode == 0, started.stderr + manager.journal("datacrumbs@9.service")
    job = subprocess.Popen([str(built["myio"])], user=user1.pw_uid, group=user1.pw_gid,
                           extra_groups=[], stdout=subprocess.PIPE, text=True, cwd="/")
    assert job.communicate(timeout=60)[0] == f"ok {sum(range(1, 8)) + 12}\n"
    stopped = wrapper("stop", "9", user1.pw_name, str(probes))
    assert stopped.returncode == 0, stopped.stderr
    assert_clean(manager, site, "9")
    counts = {}
    for e in read_trace(trace_path(site, user1.pw_name, "9")):
        if e.get("ph") == "X" and e["pid"] == job.pid and e["cat"] == "MYIO":
            counts[e["name"]] = counts.get(e["name"], 0) + 1
    assert counts == MYIO_CALLS
