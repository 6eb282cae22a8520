"""The tracer daemon as the unit runs it: `datacrumbs run PROBES RUN_ID USER`, real eBPF.

Workloads are real processes of the real test users doing a known number of
writes; traces are read back with independent readers (zlib + json, pandas)
and with the project's reader.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from datacrumbs.probes.catalog import load_catalog, select_probes
from datacrumbs.probes.document import build_document, write_document
from datacrumbs.signing.keys import KeyStore
from datacrumbs.trace.reader import TraceReader
from datacrumbs.trace.writer import name_hash
from datacrumbs.tracer.daemon import short_host
from workloads import daemon_readback as rb
from workloads.daemon_build import build

from fixtures.tracing import Bpftrace, held_bpf_ids

pytestmark = pytest.mark.ebpf
DATACRUMBS = [
    str(Path(sys.executable).with_name("datacrumbs"))]
HOST = short_host()


@pytest.fixture(scope="module")
def writes_bin(shared_dir):
    return build("writes", shared_dir)


@pytest.fixture
def workdir(shared_dir, request):
    """A directory every test user can write in (their workloads' files)."""
    d = Path(tempfile.mkdtemp(dir=shared_dir, prefix="work-"))
    d.chmod(0o1777)
    return d


def sign_for(site, user, *, sets=("posix",), mode="trace", name="probes.json.gz") -> Path:
    """A probes file for ``user`` signed by a key store of the test site."""
    store = KeyStore.from_config(site)
    if not (site.private_key_dir / "current").exists():
        store.init()
    probes = select_probes(load_catalog(site), list(sets))
    doc = build_document(probes, owner_uid=user.pw_uid, owner_user=user.pw_name,
                         sets=list(sets), mode=mode, interval_ms=200)
    path = site.prefix.parent / f"{user.pw_name}-{name}"
    write_document(path, store.sign(doc))
    return path


class Daemon:
    """`datacrumbs run` as a subprocess, with its ready file and outputs."""

    def __init__(self, site, probes, run_id, user, env=None):
        self.site, self.run_id, self.user = site, run_id, user
        self.ready = site.run_dir / f"datacrumbs-{run_id}.ready"
        full_env = dict(os.environ, **(env or {}))
        self.proc = subprocess.Popen([*DATACRUMBS, "run", str(probes), run_id, user],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env)

    def wait_ready(self, timeout=30.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.ready.exists():
                self.ready_pid = int(self.ready.read_text().split()[0])
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}: "
                                     f"{self.proc.stderr.read().decode()}")
            time.sleep(0.02)
        raise AssertionError("daemon never became ready")

    def stop(self, sig=signal.SIGINT, timeout=40.0):
        self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=timeout)
        self.stderr = err.decode()
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()

    def trace_dir(self):
        return Path(self.site.trace_dir.format(user=self.user, jobid=self.run_id, host=HOST,
                                               date=""))

    def trace(self, k=0):
        suffix = "" if k == 0 else f".{k}"
        return self.trace_dir() / f"trace-{self.user}-{self.run_id}-{HOST}{suffix}.pfw.gz"

    def summary_path(self, k=0):
        return Path(str(self.trace(k))[:-len(".pfw.gz")] + ".summary.json")

    def summary(self, k=0):
        return json.loads(self.summary_path(k).read_text())


@pytest.fixture
def daemons():
    started = []

    def start(*args, **kw):
        d = Daemon(*args, **kw)
        started.append(d)
        return d

    yield start
    for d in started:
        d.kill()
        d.ready.unlink(missing_ok=True)


def run_as(user, argv, **kw):
    """A workload process of ``user`` (setuid in the child, so its pid is the workload's)."""
    return subprocess.Popen(argv, user=user.pw_uid, group=user.pw_gid, extra_groups=[],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


N_WRITES, SIZE = 3000, 4096


def test_user_workload_traced_exactly_root_absent(site, user1, workdir, writes_bin, daemons):
    probes = sign_for(site, user1)
    d = daemons(site, probes, "4242", user1.pw_name)
    d.wait_ready()
    target = workdir / "user1.dat"
    rootfile = workdir / "root.dat"
    root_proc = subprocess.Popen([str(writes_bin), str(rootfile), "2000", "512"],
                                 stdout=subprocess.PIPE)
    work = run_as(user1, [str(writes_bin), str(target), str(N_WRITES), str(SIZE)])
    out, err = work.communicate(timeout=60)
    assert work.returncode == 0, err
    root_proc.communicate(timeout=60)
    time.sleep(0.2)
    assert d.stop() == 0, d.stderr
    assert not d.ready.exists()
    assert "Traceback" not in d.stderr
    trace = d.trace()
    # private by default: the user's primary group (often shared on HPC) reads nothing
    for path, mode in ((trace, 0o600), (d.summary_path(), 0o600), (trace.parent, 0o700)):
        st = path.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == \
            (user1.pw_uid, user1.pw_gid, mode), path
    assert d.ready_pid == d.proc.pid  # the ready file named the daemon itself
    lines = rb.lines(trace)
    assert lines[0] == "[" and lines[-1] == "]"
    recs = rb.records(trace)
    fh = name_hash(str(target))
    writes = [e for e in recs if e.get("ph") == "X" and e["name"] == "write"
              and e["args"].get("fhash") == fh]
    assert len(writes) == N_WRITES
    assert sum(e["args"]["size"] for e in writes) == N_WRITES * SIZE
    assert {e["pid"] for e in writes} == {work.pid}
    assert all(e["args"]["count"] == SIZE and e["args"]["fd"] >= 3 for e in writes)
    fhs = {r["args"]["name"] for r in recs if r["name"] == "FH"}
    assert str(target) in fhs and str(rootfile) not in fhs
    assert root_proc.pid not in {r["pid"] for r in recs}
    # pandas, independently
    frame = rb.pandas_frame(trace)
    x = frame[(frame["ph"] == "X") & (frame["name"] == "write")]
    mine = x[x["args"].map(lambda a: a.get("fhash") == fh)]
    assert len(mine) == N_WRITES and mine["args"].map(lambda a: a["size"]).sum() == N_WRITES * SIZE
    # the project's reader agrees
    ours = [e for e in TraceReader(trace).events() if e.get("ph") == "X" and e["name"] == "write"
            and e["pid"] == work.pid and e["args"].get("fhash") == fh]
    assert len(ours) == N_WRITES
    summary = d.summary()
    assert summary["complete"] is True and summary["events_lost"] == 0
    assert summary["trace_file"] == trace.name and summary["job"] == "4242"
    assert summary["files"][str(target)] == {
        "count": N_WRITES + 2,  # openat + writes + close
        "bytes": N_WRITES * SIZE,
        "time_us": summary["files"][str(target)]["time_us"]}
    assert summary["events_written"] == sum(1 for r in recs if r["ph"] == "X")
    assert summary["operations"]["POSIX/write"]["count"] >= N_WRITES


def _pid_write_totals_trace(trace, pid):
    ev = [e for e in rb.events(trace) if e["pid"] == pid and e["name"] == "write"]
    return len(ev), sum(e["args"].get("size", 0) for e in ev)


def _pid_write_totals_profile(trace, pid):
    ev = [e for e in rb.events(trace, ph="C") if e["pid"] == pid and e["name"] == "write"]
    return sum(e["args"]["count"] for e in ev), sum(e["args"]["bytes"] for e in ev)


def test_profile_mode_gives_the_same_totals(site, user1, workdir, writes_bin, daemons):
    totals = {}
    for mode in ("trace", "profile"):
        probes = sign_for(site, user1, mode=mode, name=f"{mode}.json.gz")
        d = daemons(site, probes, "77" if mode == "trace" else "78", user1.pw_name)
        d.wait_ready()
        work = run_as(user1, [str(writes_bin), str(workdir / f"{mode}.dat"), "2500", "16"])
        out, _ = work.communicate(timeout=60)
        time.sleep(0.4 if mode == "profile" else 0.1)
        assert d.stop() == 0, d.stderr
        expected = (2501, 2500 * 16 + len(out))  # the writes and the "done ..." line
        if mode == "trace":
            totals[mode] = _pid_write_totals_trace(d.trace(), work.pid)
        else:
            totals[mode] = _pid_write_totals_profile(d.trace(), work.pid)
            summary = d.summary()
            prof = summary["profile"]["POSIX/write"]
            assert prof["count"] >= expected[0] and sum(prof["hist_log2_us"]) == prof["count"]
            assert summary["mode"] == "profile" and rb.lines(d.trace())[-1] == "]"
        assert totals[mode] == expected, mode


def test_sigkill_leaves_a_readable_trace(site, user1, workdir, writes_bin, daemons):
    probes = sign_for(site, user1)
    d = daemons(site, probes, "555", user1.pw_name)
    d.wait_ready()
    # ~20,000 writes/s for 3 s; the daemon is killed after 2 s
    work = run_as(user1, [str(writes_bin), str(workdir / "k.dat"), "60000", "16", "20000"])
    time.sleep(2.0)
    killed_at = time.time()
    d.proc.kill()
    d.proc.communicate()
    work.communicate(timeout=60)
    trace = d.trace()
    members, tail = rb.members(trace)
    assert len(members) >= 2
    writes = [e for e in rb.events(trace) if e["name"] == "write" and e["pid"] == work.pid]
    assert len(writes) > 10000
    last_ts = max(e["ts"] for e in writes) / 1e6
    assert killed_at - last_ts < 1.6, "more than about a second of events was lost"
    assert rb.lines(trace)[-1] != "]"
    frame = rb.pandas_frame(trace)
    assert (frame["ph"] == "X").sum() >= len(writes)
    reader = TraceReader(trace)
    assert sum(1 for e in reader.events() if e.get("ph") == "X" and e["pid"] == work.pid
               and e["name"] == "write") == len(writes)


def _only_one_error_line(stderr: str, *needles):
    lines = [x for x in stderr.splitlines() if x.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("datacrumbs: error: "), stderr
    assert "Traceback" not in stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


def _files_under(*dirs):
    return sorted(str(p) for d in dirs if d.exists() for p in d.rglob("*"))


@pytest.mark.parametrize("run_id,user,needle", [
    ("../x", "dctest1", "'../x'"),
    ("1;reboot", "dctest1", "'1;reboot'"),
    ("\u01922kP8", "dctest1", "decimal"),
    ("100", "nosuchuser", "'nosuchuser'"),
    ("100", "../../etc", "'../../etc'"),
])
def test_bad_run_id_or_user_is_one_line_and_writes_nothing(site, user1, run_id, user, needle):
    probes = sign_for(site, user1)
    traces = site.prefix.parent / "traces"
    before = _files_under(traces, site.run_dir)
    proc = subprocess.run([*DATACRUMBS, "run", str(probes), run_id, user], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1
    _only_one_error_line(proc.stderr, needle)
    assert _files_under(traces, site.run_dir) == before


def test_bad_probes_files_are_refused(site, user1, user2, tmp_path):
    own = sign_for(site, user1)
    other = sign_for(site, user2)
    tampered = tmp_path / "tampered.json.gz"
    import gzip
    doc = json.loads(gzip.decompress(own.read_bytes()))
    doc["probes"] = doc["probes"][:1]
    tampered.write_bytes(gzip.compress(json.dumps(doc).encode()))
    traces = site.prefix.parent / "traces"
    before = _files_under(traces, site.run_dir)
    for path, needle in ((tampered, str(tampered)), (other, str(other)),
                         (tmp_path / "missing.json.gz", "missing.json.gz")):
        proc = subprocess.run([*DATACRUMBS, str(path), "100", user1.pw_name],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1, proc.stderr
        _only_one_error_line(proc.stderr, needle)
    assert _files_under(traces, site.run_dir) == before


def test_bad_cgroup_env_is_refused(site, user1):
    probes = sign_for(site, user1)
    proc = subprocess.run([*DATACRUMBS, "run", str(probes), "100", user1.pw_name],
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, DATACRUMBS_CGROUP="/etc"))
    assert proc.returncode == 1
    _only_one_error_line(proc.stderr, "DATACRUMBS_CGROUP")


@pytest.fixture
def mount_tmpfs(tmp_path):
    mounted = []

    def mount(path: Path, options: str):
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=True)


def test_unwritable_trace_directory(site, user1, mount_tmpfs):
    probes = sign_for(site, user1)
    ro = mount_tmpfs(site.prefix.parent / "traces", "ro,size=64k,mode=0755")
    proc = subprocess.run([*DATACRUMBS, "run", str(probes), "100", user1.pw_name],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    _only_one_error_line(proc.stderr, str(ro))
    assert _files_under(ro, site.run_dir) == []


def test_existing_trace_is_never_overwritten(site, user1, daemons):
    probes = sign_for(site, user1)
    first = daemons(site, probes, "900", user1.pw_name)
    first.wait_ready()
    assert first.stop() == 0
    original = first.trace().read_bytes()
    second = daemons(site, probes, "900", user1.pw_name)
    second.wait_ready()
    assert second.stop() == 0
    assert first.trace().read_bytes() == original
    assert second.trace(1).exists() and second.summary(1)["trace_file"] == second.trace(1).name
    assert first.summary(0)["trace_file"] == first.trace().name


def test_disk_full_keeps_daemon_alive_and_trace_readable(site, user1, workdir, writes_bin,
                                                         daemons, mount_tmpfs):
    probes = sign_for(site, user1)
    mount_tmpfs(site.prefix.parent / "traces", "size=256k,mode=0755")
    d = daemons(site, probes, "31337", user1.pw_name)
    d.wait_ready()
    # random-ish small writes at a high rate: far more trace than 256 KiB
    for i in range(4):
        work = run_as(user1, [str(writes_bin), str(workdir / f"full{i}.dat"), "100000", "16"])
        _, err = work.communicate(timeout=120)
        assert work.returncode == 0, err  # the job is unharmed
    time.sleep(1.2)
    assert d.proc.poll() is None, "the daemon died on a full disk"
    assert d.stop() == 0
    errors = [x for x in d.stderr.splitlines() if "cannot write trace" in x]
    assert len(errors) == 1, d.stderr
    assert "No space left on device" in errors[0]
    members, tail = rb.members(d.trace())
    assert tail == b"" and rb.lines(d.trace())[0] == "["
    summary = d.summary()
    assert summary["complete"] is False
    assert "No space left on device" in summary["write_error"]
    assert summary["events_not_written"] > 0
    assert summary["events_written"] == len(rb.events(d.trace()))
    assert summary["operations"]["POSIX/write"]["count"] >= 400000


def enter_cgroup_as(cg: Path, user):
    """A preexec_fn: join the job's cgroup as root, then become the job's user."""
    def enter():
        (cg / "cgroup.procs").write_text(str(os.getpid()))
        os.setgroups([])
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)
    return enter


def test_cgroup_scope_from_env(site, user1, workdir, writes_bin, daemons):
    """With DATACRUMBS_CGROUP only the job's cgroup is traced, even the same user elsewhere."""
    cg = Path("/sys/fs/cgroup/unified") / f"datacrumbs-daemon-test-{os.getpid()}-job-6060"
    cg.mkdir()
    try:
        probes = sign_for(site, user1)
        d = daemons(site, probes, "6060", user1.pw_name, env={"DATACRUMBS_CGROUP": str(cg)})
        d.wait_ready()

        inside = subprocess.Popen([str(writes_bin), str(workdir / "in.dat"), "700", "64"],
                                  preexec_fn=enter_cgroup_as(cg, user1), stdout=subprocess.PIPE)
        outside = run_as(user1, [str(writes_bin), str(workdir / "out.dat"), "500", "64"])
        inside.communicate(timeout=60)
        outside.communicate(timeout=60)
        time.sleep(0.1)
        assert d.stop() == 0, d.stderr
        files = d.summary()["files"]
        assert files[str(workdir / "in.dat")]["bytes"] == 700 * 64
        assert str(workdir / "out.dat") not in files
        assert outside.pid not in {e["pid"] for e in rb.events(d.trace())}
    finally:
        cg.rmdir()


def test_cgroup_name_scope_from_env(site, user1, workdir, writes_bin, daemons):
    """DATACRUMBS_CGROUP_NAME names the job's cgroup before it exists (the prolog runs
    first): once made, only processes in it are traced, not the same user elsewhere."""
    import uuid
    parent = Path("/sys/fs/cgroup/unified") / f"datacrumbs-daemon-test-{uuid.uuid4().hex[:8]}"
    name = f"shell-dct{uuid.uuid4().hex[:8]}-6161.service"
    cg = parent / name
    parent.mkdir()
    try:
        probes = sign_for(site, user1)
        d = daemons(site, probes, "6161", user1.pw_name, env={"DATACRUMBS_CGROUP_NAME": name})
        d.wait_ready()
        cg.mkdir()                   # the job's shell unit, made after the tracer started

        inside = subprocess.Popen([str(writes_bin), str(workdir / "in.dat"), "300", "64"],
                                  preexec_fn=enter_cgroup_as(cg, user1), stdout=subprocess.PIPE)
        outside = run_as(user1, [str(writes_bin), str(workdir / "out.dat"), "200", "64"])
        inside.communicate(timeout=60)
        outside.communicate(timeout=60)
        time.sleep(0.1)
        assert d.stop() == 0, d.stderr
        assert f"scope cgroup named {name}" in d.stderr
        files = d.summary()["files"]
        assert files[str(workdir / "in.dat")]["bytes"] == 300 * 64
        assert str(workdir / "out.dat") not in files
        assert {e["pid"] for e in rb.events(d.trace()) if "pid" in e} == {inside.pid}
    finally:
        for sub in (cg, parent):
            if sub.exists():
                sub.rmdir()


def test_job_cgroup_that_never_appears_is_a_warning_not_silence(site, user1, daemons):
    """sdexec_scope on a node whose Flux does not use sdexec traces nothing: the log and
    the summary must say why the trace is empty."""
    probes = sign_for(site, user1)
    d = daemons(site, probes, "6262", user1.pw_name,
                env={"DATACRUMBS_CGROUP_NAME": "-never-made-6262.service"})
    d.wait_ready()
    assert d.stop() == 0, d.stderr
    warning = d.summary()["warning"]
    assert "-never-made-6262.service" in warning and "sdexec" in warning
    assert "nothing was traced" in d.stderr


def test_bad_cgroup_name_env_is_refused(site, user1):
    probes = sign_for(site, user1)
    proc = subprocess.run([*DATACRUMBS, "run", str(probes), "100", user1.pw_name],
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, DATACRUMBS_CGROUP_NAME="../etc/shell-1.service"))
    assert proc.returncode == 1
    _only_one_error_line(proc.stderr, "DATACRUMBS_CGROUP_NAME", "one path component")


def test_fd_tables_and_file_tables_stay_bounded():
    from datacrumbs.tracer.paths import FdPaths
    from datacrumbs.tracer.summary import OTHER_FILES, SummaryBuilder
    from datacrumbs.trace.writer import OPS_DTYPE
    import numpy as np

    resolved = []
    fdp = FdPaths(lambda pid, fd: resolved.append((pid, fd)) or f"/proc-said/{pid}/{fd}",
                  max_fds_per_pid=8, max_pids=4)
    for pid in range(1, 50):
        for fd in range(100):
            fdp.opened(pid, fd, f"/f/{pid}/{fd}")
    assert len(fdp) <= 4 * 8
    assert fdp.lookup(49, 99) == "/f/49/99" and resolved == []
    assert fdp.lookup(49, 1000) == "/proc-said/49/1000"
    assert fdp.lookup(49, 1000) == "/proc-said/49/1000" and resolved == [(49, 1000)]
    assert fdp.closed(49, 99) == "/f/49/99" and fdp.lookup(49, 99) == "/proc-said/49/99"
    probes = [{"id": "posix.write", "kind": "syscall", "target": "write", "category": "POSIX"}]
    summary = SummaryBuilder(probes, max_files=10)
    ops = np.zeros(100, OPS_DTYPE)
    ops["size"] = 5
    summary.add_ops(ops, [f"/x/{i}" for i in range(100)])
    assert len(summary.files) == 11 and summary.files[OTHER_FILES] == [90, 450, 0]
    assert summary.operations()["POSIX/write"] == {"count": 100, "bytes": 500, "time_us": 0,
                                                   "errors": 0}


def test_summary_sums_nanoseconds_not_whole_microseconds():
    """1,003 reads of 0.959 µs each took 961.877 µs: summed per event in whole µs they
    would be 0 (the issue's "7 µs" and "545 GiB/s"). Profile rows are summed in ns too."""
    from datacrumbs.tracer.engine import ProfileRow
    from datacrumbs.tracer.summary import SummaryBuilder
    from datacrumbs.trace.writer import OPS_DTYPE
    import numpy as np

    probes = [{"id": "posix.read", "kind": "syscall", "target": "read", "category": "POSIX"}]
    summary = SummaryBuilder(probes)
    for n in (1000, 3):                      # two batches: sums carry across them exactly
        ops = np.zeros(n, OPS_DTYPE)
        ops["dur_ns"], ops["size"], ops["ret"] = 959, 1, 1
        summary.add_ops(ops, ["/dev/zero"] * n)
    assert summary.operations()["POSIX/read"] == {"count": 1003, "bytes": 1003,
                                                  "time_us": 961.877, "errors": 0}
    doc = summary.to_dict(job="1", user="u", host="h", mode="trace", start_ts=0, end_ts=1,
                          complete=True, events_written=1003, events_lost=0, trace_file="t",
                          attached=probes, refused=[])
    assert doc["files"]["/dev/zero"] == {"count": 1003, "bytes": 1003, "time_us": 961.877}
    assert json.loads(json.dumps(doc))["operations"]["POSIX/read"]["time_us"] == 961.877
    summary.set_profile([ProfileRow(7, 0, 1000, 1000, 959_000, 412, 2_500, [999, 1]),
                         ProfileRow(8, 0, 3, 3, 2_877, 959, 959, [3])])
    prof = summary.profile["POSIX/read"]
    assert (prof["count"], prof["time_us"], prof["min_us"], prof["max_us"]) == \
        (1003, 961.877, 0.412, 2.5)
    assert prof["hist_log2_us"] == [1002, 1]
    assert summary.operations()["POSIX/read"]["time_us"] == 961.877


def test_lost_events_are_counted_and_logged(site, user1, workdir, writes_bin, daemons):
    """A daemon that cannot drain (stopped) loses events; the loss is reported, not hidden."""
    probes = sign_for(site, user1)
    d = daemons(site, probes, "8080", user1.pw_name)
    d.wait_ready()
    d.proc.send_signal(signal.SIGSTOP)
    try:  # more events than the 16 MiB ring buffer holds
        work = run_as(user1, [str(writes_bin), str(workdir / "lost.dat"), "400000", "16"])
        work.communicate(timeout=120)
    finally:
        d.proc.send_signal(signal.SIGCONT)
    time.sleep(0.3)
    assert d.stop() == 0, d.stderr
    summary = d.summary()
    writes = summary["files"][str(workdir / "lost.dat")]["count"] - 2
    assert summary["events_lost"] > 0 and writes < 400000
    assert writes + summary["events_lost"] >= 400000
    assert f"{summary['events_lost']} lost" in d.stderr
    assert any("events lost so far" in line for line in d.stderr.splitlines()), d.stderr


def test_lost_events_leave_the_totals_exact(site, user1, workdir, writes_bin, daemons):
    """A daemon that cannot drain (stopped) loses most events, yet the summary's and the
    report's totals of the writes (count, bytes, time) are exact: the kernel counts what
    it could not send. Checked against the workload's known writes and bpftrace on the
    same run; the report says the totals are exact."""
    from datacrumbs.report.merge import summarize
    from datacrumbs.report.terminal import lost_text

    writes, size = 400_000, 16
    cg = Path("/sys/fs/cgroup/unified") / f"datacrumbs-daemon-test-{os.getpid()}-job-8181"
    cg.mkdir()
    bt = work = None
    try:
        # the workload waits for a line before its first write: its pid names it to
        # bpftrace, and its cgroup alone is the daemon's scope
        work = run_as(user1, [str(writes_bin), str(workdir / "lost.dat"), str(writes), str(size)],
                      stdin=subprocess.PIPE, env=dict(os.environ, DC_WAIT_STDIN="1"))
        (cg / "cgroup.procs").write_text(str(work.pid))
        d = daemons(site, sign_for(site, user1), "8181", user1.pw_name,
                    env={"DATACRUMBS_CGROUP": str(cg)})
        d.wait_ready()
        program = (f"tracepoint:syscalls:sys_enter_write /pid == {work.pid}/ {{ @s[tid] = 1; }} "
                   f"tracepoint:syscalls:sys_exit_write /@s[tid]/ "
                   f"{{ @n = count(); @b = sum(args->ret); delete(@s[tid]); }}")
        bt = Bpftrace(program).start()
        d.proc.send_signal(signal.SIGSTOP)
        try:  # far more events than the 16 MiB ring buffer holds
            out, _ = work.communicate(b"go\n", timeout=120)
            assert work.returncode == 0, out
        finally:
            d.proc.send_signal(signal.SIGCONT)
        time.sleep(0.3)
        assert d.stop() == 0, d.stderr
        out = bt.maps()
    finally:
        if bt is not None:
            bt.stop()
        if work is not None and work.poll() is None:
            work.kill()
            work.communicate()
        cg.rmdir()
    bt_n, bt_b = re.search(r"@n: (\d+)", out), re.search(r"@b: (\d+)", out)
    assert bt_n and bt_b, out
    # the workload's writes and its "done N BYTES" line on stdout
    done = len(f"done {writes} {writes * size}\n")
    expect = (writes + 1, writes * size + done)
    assert (int(bt_n.group(1)), int(bt_b.group(1))) == expect, out
    summary = d.summary()
    events = summary["files"][str(workdir / "lost.dat")]["count"] - 2     # open, close
    assert summary["events_lost"] > writes // 4 and events < writes, summary
    assert summary["totals_exact"] is True and summary["totals_lost"] == 0
    assert summary["operations_without_event"] == summary["events_lost"]
    op = summary["operations"]["POSIX/write"]
    assert (op["count"], op["bytes"]) == expect, op
    assert f"{summary['events_lost']} lost" in d.stderr
    # the trace holds the lost operations as counter rows, and the report adds them
    lines = rb.lines(d.trace())
    counted = [json.loads(line)["args"] for line in lines if '"events_lost":' in line]
    assert sum(a["events_lost"] for a in counted) == summary["events_lost"]
    written = [json.loads(line)["args"] for line in lines
               if '"name":"write"' in line and '"events_lost":' in line]
    assert sum(1 for line in lines if '"name":"write"' in line and '"ph":"X"' in line) == \
        expect[0] - sum(a["count"] for a in written)
    report = summarize([d.trace()], jobs=1)
    (rw,) = [o for o in report["operations"] if o["name"] == "write"]
    assert (rw["count"], rw["bytes"], rw["time_us"]) == (*expect, op["time_us"])
    assert report["totals_exact"] is True and report["lost_counted"] == summary["events_lost"]
    assert "totals (count, bytes, time) are exact" in lost_text(report)
    (proc,) = [p for p in report["processes"] if p["pid"] == work.pid]
    assert proc["count"] == sum(o["count"] for o in summary["operations"].values())
    assert proc["bytes"] == sum(o["bytes"] for o in summary["operations"].values()), proc


def test_stop_is_bounded_while_the_job_keeps_writing(site, user1, workdir, writes_bin, daemons):
    probes = sign_for(site, user1)
    d = daemons(site, probes, "9090", user1.pw_name)
    d.wait_ready()
    work = run_as(user1, [str(writes_bin), str(workdir / "busy.dat"), "50000000", "16"])
    try:
        time.sleep(0.5)
        t0 = time.monotonic()
        assert d.stop(signal.SIGTERM) == 0, d.stderr
        took = time.monotonic() - t0
        assert work.poll() is None, "the job must keep running"
    finally:
        work.kill()
        work.communicate()
    assert took < 10, f"stop took {took:.1f} s"
    assert rb.lines(d.trace())[-1] == "]"
    # closed cleanly; complete unless the flood overran the ring (then it must say so)
    summary = d.summary()
    assert summary["complete"] is (summary["events_lost"] == 0 == summary["names_lost"])


def test_vectorised_fd_paths_match_row_by_row():
    """The per-(pid, fd) shortcut between opens and closes gives the same paths as a plain
    row-by-row replay, for batches with few and with many opens and closes."""
    import numpy as np

    from datacrumbs.trace.writer import OPS_DTYPE
    from datacrumbs.tracer.daemon import EventConverter
    from datacrumbs.tracer.paths import FdPaths

    probes = [{"id": "posix.write", "kind": "syscall", "target": "write", "category": "POSIX"},
              {"id": "posix.openat", "kind": "syscall", "target": "openat", "category": "POSIX"},
              {"id": "posix.close", "kind": "syscall", "target": "close", "category": "POSIX"}]
    rng = np.random.default_rng(3)
    for trial in range(100):
        n = int(rng.integers(1, 3000))
        ops = np.zeros(n, OPS_DTYPE)
        mix = [0.995, 0.0025, 0.0025] if trial % 2 else [0.6, 0.2, 0.2]
        ops["probe"] = rng.choice([0, 1, 2], n, p=mix)
        ops["pid"] = rng.integers(1, 4, n)
        ops["fd"] = np.where(ops["probe"] == 1, -100, rng.integers(-1, 6, n))
        ops["ret"] = np.where(ops["probe"] == 1, rng.integers(3, 6, n), 0)
        opened = {i: f"/p/{i}" for i in np.flatnonzero(ops["probe"] == 1).tolist()}

        def resolve(pid, fd):
            return f"/proc/{pid}/{fd}"

        fast = EventConverter(probes, FdPaths(resolve))._paths(ops, opened)
        slow = EventConverter(probes, FdPaths(resolve))._paths_rows(ops, opened, 0, n, [None] * n)
        assert fast == slow


def test_converter_follows_forks_fcntl_dups_and_names_a_copys_output():
    """`sh -c 'cat a > b'`: the shell opens b, saves fd 1 with fcntl(F_DUPFD), dup2s b onto
    1 and forks cat, whose copy_file_range(3, .., 1, ..) must name both files."""
    from types import SimpleNamespace

    import numpy as np

    from datacrumbs.tracer.daemon import EventConverter
    from datacrumbs.tracer.engine import EVENT_DTYPE
    from datacrumbs.tracer.paths import FdPaths

    def sys(name, **args):
        return {"id": f"posix.{name}", "kind": "syscall", "target": name, "category": "POSIX",
                "args": args, "bytes": None}

    probes = [sys("openat", fd=0, path=1, flags=2), sys("fcntl", fd=0, flags=1),
              sys("dup2", fd=0), sys("close", fd=0), sys("clone", flags=0),
              sys("copy_file_range", fd=0, fd2=2, count=4), sys("write", fd=0)]
    rows = [  # (pid, probe, fd, fd2, flags, ret)
        (10, 0, -100, -1, 0o1101, 3),     # openat("b") = 3 in the shell
        (10, 1, 1, -1, 0, 11),           # fcntl(1, F_DUPFD, 10) = 11: the saved stdout
        (10, 2, 3, -1, 0, 1),            # dup2(3, 1)
        (10, 3, 3, -1, 0, 0),            # close(3)
        (10, 4, -1, -1, 0, 20),          # clone() = 20: cat
        (20, 0, -100, -1, 0, 3),         # cat: openat("a") = 3
        (20, 5, 3, 1, 0, 4096),          # copy_file_range(3, NULL, 1, NULL, ...)
        (10, 6, 11, -1, 0, 5),           # the shell writes to its saved stdout
    ]
    ev = np.zeros(len(rows), EVENT_DTYPE)
    for i, (pid, probe, fd, fd2, flags, ret) in enumerate(rows):
        ev[i] = (0, 0, pid, pid, probe, fd, ret, 0, -1, -1, fd2, flags, 0)
    batch = SimpleNamespace(events=ev, paths={0: "/d/b", 5: "/d/a"})
    known = {(10, 1): "/dev/pts/0"}
    conv = EventConverter(probes, FdPaths(lambda pid, fd: known.get((pid, fd))))
    ops, paths, paths2 = conv.convert(batch)
    assert paths[6] == "/d/a" and paths2[6] == "/d/b"
    assert paths[7] == "/dev/pts/0"
    assert [p for i, p in enumerate(paths2) if i != 6] == [None] * 7
    assert ops["fd2"].tolist()[6] == 1 and ops["flags"].tolist()[0] == 0o1101


def test_nothing_attached_is_exit_1_with_the_reasons(site, user1):
    store = KeyStore.from_config(site)
    store.init()
    probes = [{"id": "vfs.vfs_write", "kind": "kprobe", "target": "vfs_write", "category": "VFS",
               "args": {"count": 2}, "bytes": "ret"}]
    doc = build_document(probes, owner_uid=user1.pw_uid, owner_user=user1.pw_name, sets=["vfs"])
    path = write_document(site.prefix.parent / "kprobes-only.json.gz", store.sign(doc))
    proc = subprocess.run([*DATACRUMBS, "run", str(path), "100", user1.pw_name],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("datacrumbs: error: ") and "could be attached" in lines[-1]
    assert any("vfs.vfs_write" in x and "kprobes" in x for x in lines)
    assert "Traceback" not in proc.stderr
    assert not list((site.prefix.parent / "traces").rglob("*.pfw.gz"))
    assert not (site.run_dir / "datacrumbs-100.ready").exists()


# -- hardening: signals, ready file, job scope, private traces, size cap (issue #8) ------


def _one_error_line(stderr: str, *needles):
    """Exactly one error line (info lines may precede it), holding every needle."""
    errors = [x for x in stderr.splitlines() if x.startswith("datacrumbs: error: ")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    for n in needles:
        assert n in errors[0], (n, errors[0])

def _signals_to_test():
    from datacrumbs.tracer.daemon import STOP_SIGNALS
    named = [s for s in STOP_SIGNALS if s < signal.SIGRTMIN]
    return named + [signal.SIGRTMIN, signal.SIGRTMIN + 3]


def _signame(sig):
    return f"SIGRTMIN+{sig - signal.SIGRTMIN}" if signal.SIGRTMIN < sig else signal.Signals(sig).name


@pytest.mark.parametrize("sig", _signals_to_test(), ids=_signame)
def test_every_terminating_signal_stops_like_sigint(site, user1, workdir, writes_bin, daemons, sig):
    """SIGHUP, SIGUSR1, ... used to kill the daemon unflushed with its ready file left:
    each one now drains, closes the trace, writes the summary naming it, removes the file."""
    probes = sign_for(site, user1)
    d = daemons(site, probes, "7100", user1.pw_name)
    d.wait_ready()
    work = run_as(user1, [str(writes_bin), str(workdir / "sig.dat"), "300", "64"])
    work.communicate(timeout=60)
    time.sleep(0.1)
    assert d.stop(sig) == 0, d.stderr
    assert not d.ready.exists()
    assert "Traceback" not in d.stderr
    assert rb.lines(d.trace())[-1] == "]"
    summary = d.summary()
    assert summary["complete"] is True and summary["stop_signal"] == _signame(sig)
    assert summary["files"][str(workdir / "sig.dat")]["count"] == 300 + 2
    assert len([e for e in rb.events(d.trace()) if e["pid"] == work.pid
                and e["name"] == "write" and e["args"].get("size") == 64]) == 300


def test_sigpipe_is_ignored(site, user1, daemons):
    """A broken pipe (say, the log reader went away) must not cost the job its trace."""
    probes = sign_for(site, user1)
    d = daemons(site, probes, "7101", user1.pw_name)
    d.wait_ready()
    d.proc.send_signal(signal.SIGPIPE)
    time.sleep(0.5)
    assert d.proc.poll() is None and d.ready.exists()
    assert d.stop() == 0, d.stderr
    assert d.summary()["stop_signal"] == "SIGINT"


def _wait_ready_cli(*args):
    return subprocess.run([*DATACRUMBS, "wait-ready", *args], capture_output=True, text=True,
                          timeout=60)


def test_stale_ready_file_never_makes_a_start_look_ready(site, user1, daemons, tmp_path):
    """A SIGKILLed daemon leaves its ready file (nothing can remove it then). wait-ready
    --pid accepts only a file naming that pid, and a new daemon removes the stale file
    before it attaches, on its error paths too."""
    probes = sign_for(site, user1)
    first = daemons(site, probes, "7200", user1.pw_name)
    first.wait_ready()
    first.proc.kill()
    first.proc.communicate()
    assert first.ready_pid == first.proc.pid and first.ready.exists()   # stale now
    waiter = subprocess.Popen(["sleep", "30"])
    try:
        res = _wait_ready_cli("7200", "--pid", str(waiter.pid), "--timeout", "0.5")
    finally:
        waiter.kill()
        waiter.wait()
    assert res.returncode == 1 and f"names pid {first.proc.pid}" in res.stderr, res.stderr
    # a daemon that fails while attaching (nothing attachable) removes the stale file too
    store = KeyStore.from_config(site)
    kprobes = [{"id": "vfs.vfs_write", "kind": "kprobe", "target": "vfs_write",
                "category": "VFS", "args": {"count": 2}, "bytes": "ret"}]
    bad = write_document(tmp_path / "kp.json.gz", store.sign(build_document(
        kprobes, owner_uid=user1.pw_uid, owner_user=user1.pw_name, sets=["vfs"])))
    proc = subprocess.run([*DATACRUMBS, "run", str(bad), "7200", user1.pw_name],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "could be attached" in proc.stderr
    assert not first.ready.exists()
    # and a good start publishes a file naming itself, which wait-ready --pid accepts
    first.ready.write_text(f"{first.proc.pid}\nstale\n")
    second = daemons(site, probes, "7200", user1.pw_name)
    deadline = time.monotonic() + 30
    while not (second.ready.exists() and second.ready.read_text().split()[0] ==
               str(second.proc.pid)):
        assert time.monotonic() < deadline and second.proc.poll() is None
        time.sleep(0.02)
    assert _wait_ready_cli("7200", "--pid", str(second.proc.pid), "--timeout", "5").returncode == 0
    assert second.stop() == 0 and not second.ready.exists()


@pytest.mark.parametrize("case", ["root", "other_job", "id_inside_a_word", "parent_slice",
                                  "not_a_cgroup"])
def test_cgroup_env_must_be_this_jobs_cgroup(site, user1, case):
    """DATACRUMBS_CGROUP naming the root would trace every process of the node into a
    file the job's user reads: only a cgroup whose own name holds the job id passes."""
    from datacrumbs.tracer.scope import cgroup2_root

    root = cgroup2_root()
    parent = root / f"dctest-scope-{os.getpid()}"
    names = {"other_job": "job-7301", "id_inside_a_word": "job-73001", "parent_slice": None,
             "root": None, "not_a_cgroup": None}
    parent.mkdir()
    made = []
    try:
        if names[case]:
            made.append(parent / names[case])
            made[-1].mkdir()
        value = {"root": str(root), "parent_slice": str(parent),
                 "not_a_cgroup": "/tmp"}.get(case) or str(made[-1])
        probes = sign_for(site, user1)
        traces = site.prefix.parent / "traces"
        before = _files_under(traces, site.run_dir)
        proc = subprocess.run([*DATACRUMBS, "run", str(probes), "7300", user1.pw_name],
                              capture_output=True, text=True, timeout=60,
                              env=dict(os.environ, DATACRUMBS_CGROUP=value))
        assert proc.returncode == 1
        _one_error_line(proc.stderr, f"DATACRUMBS_CGROUP={value!r}", "job 7300")
        words = {"root": "is the cgroup v2 root", "not_a_cgroup": "is not a cgroup",
                 "other_job": "is not job 7300's cgroup",
                 "id_inside_a_word": "is not job 7300's cgroup",
                 "parent_slice": "is not job 7300's cgroup"}[case]
        assert words in proc.stderr
        assert _files_under(traces, site.run_dir) == before
    finally:
        for p in made + [parent]:
            p.rmdir()


def test_cgroup_name_env_must_hold_the_job_id(site, user1):
    probes = sign_for(site, user1)
    proc = subprocess.run([*DATACRUMBS, "run", str(probes), "7400", user1.pw_name],
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, DATACRUMBS_CGROUP_NAME="shell-0.service"))
    assert proc.returncode == 1
    from datacrumbs.jobid import f58plain
    _one_error_line(proc.stderr, "DATACRUMBS_CGROUP_NAME='shell-0.service'",
                         f"-{f58plain(7400)}.service")


@pytest.fixture(scope="session")
def trace_group():
    """A real group for [paths] trace_group (tests run as root, like ensure_user)."""
    import grp
    name = "dctracegrp"
    try:
        return grp.getgrnam(name)
    except KeyError:
        subprocess.run(["groupadd", name], check=True, capture_output=True)
        return grp.getgrnam(name)


def _set_config(site, old, new):
    text = site.source.read_text()
    assert old in text, old
    site.source.write_text(text.replace(old, new))


def test_trace_group_and_loose_directories_are_corrected(site, user1, trace_group, daemons):
    """A site group reads traces (0640/0750, that group); turning it off again makes the
    existing directory private and new traces 0600; a looser pre-existing directory (or
    one owned by someone else) is corrected, never left as it was."""
    user_dir = site.prefix.parent / "traces" / user1.pw_name
    user_dir.mkdir()
    os.chmod(user_dir, 0o3777)   # world-writable, setgid, sticky, root's
    probes = sign_for(site, user1)
    _set_config(site, 'trace_group = ""', f'trace_group = "{trace_group.gr_name}"')
    d = daemons(site, probes, "7500", user1.pw_name)
    d.wait_ready()
    assert d.stop() == 0, d.stderr
    for path, mode in ((d.trace(), 0o640), (d.summary_path(), 0o640), (user_dir, 0o750)):
        st = path.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == \
            (user1.pw_uid, trace_group.gr_gid, mode), path
    _set_config(site, f'trace_group = "{trace_group.gr_name}"', 'trace_group = ""')
    d2 = daemons(site, probes, "7501", user1.pw_name)
    d2.wait_ready()
    assert d2.stop() == 0, d2.stderr
    for path, mode in ((d2.trace(), 0o600), (d2.summary_path(), 0o600), (user_dir, 0o700)):
        st = path.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == \
            (user1.pw_uid, user1.pw_gid, mode), path
    # a user's own tighter choice stays
    os.chmod(user_dir, 0o500)
    d3 = daemons(site, probes, "7502", user1.pw_name)
    d3.wait_ready()
    assert d3.stop() == 0, d3.stderr
    assert stat.S_IMODE(user_dir.stat().st_mode) == 0o500


def test_unknown_trace_group_is_one_line_and_writes_nothing(site, user1):
    probes = sign_for(site, user1)
    _set_config(site, 'trace_group = ""', 'trace_group = "dc-no-such-group"')
    traces = site.prefix.parent / "traces"
    before = _files_under(traces, site.run_dir)
    proc = subprocess.run([*DATACRUMBS, "run", str(probes), "7600", user1.pw_name],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    _one_error_line(proc.stderr, "trace_group = 'dc-no-such-group' is not a group",
                         str(site.source))
    assert _files_under(traces, site.run_dir) == before


# Writes sizes 1, 2, ..., 1000, 1, 2, ...: the trace shows exactly which writes it kept.
SIZED_WRITES = (
    "import os, sys\n"
    "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)\n"
    "for i in range(int(sys.argv[2])):\n"
    "    os.write(fd, b'x' * (1 + i % 1000))\n"
    "os.close(fd)\n"
)


def test_size_cap_on_a_real_workload(site, user1, workdir, writes_bin, daemons):
    """A tiny max_trace_bytes: the trace ends complete at the cap with exactly the first
    events, the daemon keeps draining and counting (the job is unharmed), the summary
    says complete: false and why, and the warning is logged once."""
    from datacrumbs.trace.reader import TraceReader

    cap = 48 * 1024
    _set_config(site, "max_trace_bytes = 1073741824", f"max_trace_bytes = {cap}")
    probes = sign_for(site, user1)
    d = daemons(site, probes, "7700", user1.pw_name)
    d.wait_ready()
    n = 20000
    target = workdir / "capped.dat"
    work = run_as(user1, ["/usr/bin/python3", "-c", SIZED_WRITES, str(target), str(n)])
    _, err = work.communicate(timeout=120)
    assert work.returncode == 0, err
    time.sleep(1.3)  # the cap is reached; then more I/O, counted but not written
    after = run_as(user1, [str(writes_bin), str(workdir / "after.dat"), "500", "16"])
    _, err = after.communicate(timeout=60)
    assert after.returncode == 0, err
    time.sleep(0.2)
    assert d.proc.poll() is None, "the daemon must not stop at the cap"
    assert d.stop() == 0, d.stderr
    trace = d.trace()
    size = trace.stat().st_size
    assert cap - 1024 < size <= cap, size
    # plain gzip reads it all and agrees with the independent member reader
    out = subprocess.run(["gzip", "-dc", str(trace)], capture_output=True, check=True).stdout
    text = out.decode().splitlines()
    assert text == rb.lines(trace) and text[0] == "[" and text[-1] == "]"
    recs = [json.loads(x) for x in text[1:-1]]
    assert [r["id"] for r in recs] == list(range(len(recs))), "a record is missing in between"
    fh = name_hash(str(target))
    sizes = [e["args"]["size"] for e in recs if e.get("ph") == "X" and e["name"] == "write"
             and e["args"].get("fhash") == fh]
    assert 0 < len(sizes) < n
    assert sizes == [1 + i % 1000 for i in range(len(sizes))]  # exactly the first writes
    assert name_hash(str(workdir / "after.dat")) not in {r["args"].get("value") for r in recs
                                                        if r["name"] == "FH"}
    ours = [e for e in TraceReader(trace).events() if e.get("ph") == "X" and e["name"] == "write"
            and e["args"].get("fhash") == fh]
    assert [e["args"]["size"] for e in ours] == sizes
    summary = d.summary()
    assert summary["complete"] is False
    written = sum(1 for r in recs if r["ph"] == "X")
    assert summary["events_written"] == written and summary["events_lost"] == 0
    total = sum(op["count"] for op in summary["operations"].values())
    assert summary["events_not_written"] == total - written
    assert summary["files"][str(target)]["count"] == n + 2       # the summary saw them all
    assert summary["files"][str(workdir / "after.dat")]["count"] == 500 + 2
    assert summary["stopped"].startswith(f"max_trace_bytes ({cap}) reached at ")
    assert summary["stopped"].endswith(f"; {total - written} events not written")
    warnings = [x for x in d.stderr.splitlines() if "max_trace_bytes" in x]
    assert len(warnings) == 1 and "counted in the summary but not written" in warnings[0]


READS = 200_000


@pytest.fixture
def reads_three_ways(site, user1, workdir, engine_io, workloads, daemons):
    """One run of READS one-byte reads measured at once by bpftrace, a profile-mode daemon
    and a trace-mode daemon (attached in that order: each one's window then holds about
    the same cost of the others' programs). Returns what each of them measured."""
    data = workdir / "reads.bin"
    data.write_bytes(b"r" * READS)
    data.chmod(0o644)
    cg = Path("/sys/fs/cgroup/unified") / f"datacrumbs-daemon-test-{os.getpid()}-job-6262-6263"
    cg.mkdir()
    bt = child = None
    try:
        child = workloads([engine_io, "read", data, READS], user=user1)
        (cg / "cgroup.procs").write_text(str(child.pid))
        # tid-keyed start times (its read(0) waiting for "go" began before: never counted);
        # counting on entry leaves bpftrace's two programs about as costly as ours, and
        # each tracer's window holds the other's program on one side
        program = (f"tracepoint:syscalls:sys_enter_read /pid == {child.pid} && args->count == 1/"
                   f" {{ @n = count(); @start[tid] = nsecs; }} "
                   f"tracepoint:syscalls:sys_exit_read /@start[tid]/ "
                   f"{{ @ns = sum(nsecs - @start[tid]); delete(@start[tid]); }}")
        bt = Bpftrace(program).start()
        env = {"DATACRUMBS_CGROUP": str(cg)}
        prof = daemons(site, sign_for(site, user1, mode="profile", name="profile.json.gz"),
                       "6263", user1.pw_name, env=env)
        prof.wait_ready()
        trace = daemons(site, sign_for(site, user1), "6262", user1.pw_name, env=env)
        trace.wait_ready()
        child.go().wait()
        time.sleep(0.3)
        assert trace.stop() == 0, trace.stderr
        assert prof.stop() == 0, prof.stderr
        out = bt.maps()
    finally:
        if bt is not None:
            bt.stop()
        if child is not None:
            child.kill()                  # a failure above must not leave the cgroup busy
        cg.rmdir()
    ns_text = [int(m.group(1)) * 1000 + int(m.group(2) or 0) for m in
               (re.search(r'"dur":(\d+)(?:\.(\d{3}))?,', line) for line in rb.lines(trace.trace())
                if '"name":"read"' in line and f'"pid":{child.pid},' in line)]
    bt_n, bt_ns = re.search(r"@n: (\d+)", out), re.search(r"@ns: (\d+)", out)
    assert bt_n and bt_ns, out
    return {"pid": child.pid, "trace": trace, "profile": prof, "trace_ns": ns_text,
            "bpftrace": (int(bt_n.group(1)), int(bt_ns.group(1)))}


def test_trace_and_profile_mode_agree_on_sub_microsecond_reads(reads_three_ways):
    """Reads of about a microsecond: trace mode (ns in the trace, summary and report) must
    sum to what profile mode sums in the kernel in ns; whole microseconds per event lose
    up to a microsecond a read."""
    from datacrumbs.report.merge import summarize

    trace, prof = reads_three_ways["trace"], reads_three_ways["profile"]
    ts, ps = trace.summary(), prof.summary()
    assert ts["events_lost"] == 0 and ps["events_lost"] == 0
    traced, profiled = ts["operations"]["POSIX/read"], ps["operations"]["POSIX/read"]
    assert traced["count"] == profiled["count"] == READS
    ns = reads_three_ways["trace_ns"]
    assert len(ns) == READS and sum(1 for x in ns if x % 1000) > READS // 2, "ns kept"
    # the summary and the report of the trace file sum exactly what the trace says
    assert traced["time_us"] == round(sum(ns) / 1000, 3)
    report = summarize([trace.trace()], jobs=1)
    (read,) = [o for o in report["operations"] if o["name"] == "read"]
    assert read["time_us"] == traced["time_us"]
    assert read["bandwidth_Bps"] == round(READS / (sum(ns) / 1e9), 1)
    print(f"reads: trace {traced['time_us']} µs, profile {profiled['time_us']} µs")
    assert abs(traced["time_us"] / profiled["time_us"] - 1) < 0.05, (traced, profiled)
    mean_ns = sum(ns) / READS
    assert 100 < mean_ns < 20_000, mean_ns


def test_bpftrace_measures_the_same_read_time(reads_three_ways):
    """bpftrace, on the same run, times the same reads: our sum, of nanoseconds (whole
    microseconds would lose from 5% to all of it), is within 10% of its."""
    n, bt_ns = reads_three_ways["bpftrace"]
    ns = reads_three_ways["trace_ns"]
    assert n == len(ns) == READS
    assert sum(1 for x in ns if x % 1000) > READS // 2
    print(f"reads: trace {sum(ns) / 1000:.3f} µs, bpftrace {bt_ns / 1000:.3f} µs")
    assert abs(sum(ns) / bt_ns - 1) < 0.10, (sum(ns), bt_ns)


STARTED = re.compile(r"datacrumbs: started in ([0-9.]+) s wall, ([0-9.]+) s CPU "
                     r"\(phase wall/CPU s: (.*)\)")


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process from /proc (clock ticks)."""
    stat_ = Path(f"/proc/{pid}/stat").read_bytes()
    fields = stat_[stat_.rindex(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_start_is_accounted_phase_by_phase(site, user1, daemons):
    """The daemon logs where its start went, as CPU and wall seconds per phase (what a
    job's prolog waits for): the phases in order, adding up to the totals, and the CPU
    total agreeing with the kernel's count for the process at its ready file."""
    d = daemons(site, sign_for(site, user1), "4251", user1.pw_name)
    d.wait_ready()
    at_ready = _cpu_seconds(d.proc.pid)
    assert d.stop() == 0, d.stderr
    m = STARTED.search(d.stderr)
    assert m, d.stderr
    wall, cpu = float(m.group(1)), float(m.group(2))
    sequential, _, early = m.group(3).partition("; ")
    assert early == ""      # not the prolog's copy: nothing loaded before the imports
    phases = [(name, float(w), float(c)) for name, w, c in
              re.findall(r"([a-z ]+) ([0-9.]+)/([0-9.]+)(?:, |$)", sequential)]
    assert [p[0] for p in phases] == ["imports", "verify", "bpf load", "attach", "rest"]
    assert abs(sum(p[1] for p in phases) - wall) < 0.006
    assert abs(sum(p[2] for p in phases) - cpu) < 0.006
    assert all(w >= 0 and c >= 0 for _n, w, c in phases)
    # the kernel verified programs in "bpf load": system CPU, never nothing
    assert dict((n, c) for n, _w, c in phases)["bpf load"] > 0.005
    # the log's CPU (getrusage) against /proc's count a moment later (10 ms ticks)
    assert cpu - 0.02 <= at_ready <= cpu + 0.25, (cpu, at_ready)


def test_the_prologs_copy_is_loaded_while_the_daemon_imports(site, user1, workdir, writes_bin,
                                                              daemons):
    """Under the prolog (the digest of its verified copy in the environment) the BPF
    object is loaded in a thread from the daemon's first moment, and that engine, taken
    once the daemon has verified the same document, traces the job."""
    import hashlib

    probes = sign_for(site, user1)
    sha = hashlib.sha256(probes.read_bytes()).hexdigest()
    d = daemons(site, probes, "4252", user1.pw_name, env={"DATACRUMBS_PROBE_SHA256": sha})
    d.wait_ready()
    target = workdir / "early.dat"
    work = run_as(user1, [str(writes_bin), str(target), "300", "512"])
    _, err = work.communicate(timeout=60)
    assert work.returncode == 0, err
    time.sleep(0.3)
    assert d.stop() == 0, d.stderr
    m = STARTED.search(d.stderr)
    assert m and "; in a thread meanwhile: bpf load " in m.group(3), d.stderr
    writes = [e for e in rb.records(d.trace()) if e.get("ph") == "X" and e["name"] == "write"
              and e["args"].get("fhash") == name_hash(str(target))]
    assert len(writes) == 300 and {e["pid"] for e in writes} == {work.pid}


def test_the_early_load_begins_before_numpy_is_imported(site, user1, bpf_object, tracefs):
    """The point of tracer/objload.py: the prolog's copy starts loading before the daemon
    imports numpy and the engine (0.1-0.2 s of a start), so that path must stay free of
    them, and from OpenSSL's hashlib (4-14 ms to load and configure). Run in a fresh
    interpreter, as `datacrumbs run` is."""
    import hashlib

    probes = sign_for(site, user1)
    sha = hashlib.sha256(probes.read_bytes()).hexdigest()
    code = ("import sys\n"
            "from datacrumbs.tracer import preload\n"
            f"preload.start({str(probes)!r}, '4255', {user1.pw_name!r}, "
            f"env={{'DATACRUMBS_PROBE_SHA256': {sha!r}}})\n"
            "heavy = sorted(m for m in ('numpy', 'datacrumbs.tracer.engine', 'elftools',\n"
            "                           '_hashlib')\n"
            "               if m in sys.modules)\n"
            "began = preload._pending is not None\n"
            "preload.discard()\n"
            "print(began, heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True []", out.stdout + out.stderr


def test_the_prologs_digest_is_sha256_whichever_module_computes_it():
    """preload.sha256_hex avoids hashlib's OpenSSL on the start path; it must give the
    digest the prolog wrote (hashlib's), for empty, small and block-crossing inputs."""
    import hashlib

    from datacrumbs.tracer import preload

    for data in (b"", b"abc", bytes(range(256)) * 1000, b"\x1f\x8b" + b"x" * 131_071):
        assert preload.sha256_hex(data) == hashlib.sha256(data).hexdigest()


def test_an_early_load_serves_only_the_document_verified(site, user1, bpf_object, tracefs):
    """preload.take() gives the BPF load begun early only for the very document, scope and
    options the daemon verified; another document closes it, and a copy whose digest is
    not the prolog's is not loaded early at all. An engine uses a loader only for its own
    settings (another ring size: the early object is closed, the engine loads its own)."""
    import hashlib

    from datacrumbs.probes.document import read_document
    from datacrumbs.tracer import preload
    from datacrumbs.tracer.engine import Engine
    from datacrumbs.tracer.scope import Scope

    probes = sign_for(site, user1)
    sha = hashlib.sha256(probes.read_bytes()).hexdigest()
    before = held_bpf_ids()
    preload.start(probes, "4253", user1.pw_name, env={"DATACRUMBS_PROBE_SHA256": "0" * 64})
    assert preload._pending is None
    preload.start(probes, "4253", user1.pw_name, env={"DATACRUMBS_PROBE_SHA256": sha})
    assert preload._pending is not None
    doc = read_document(probes)
    scope = Scope.for_user(user1.pw_uid)
    options = preload.engine_options(doc, site, user1.pw_uid)
    fewer = dict(doc, probes=doc["probes"][:1])
    assert preload.take(fewer, scope, options) is None
    assert held_bpf_ids() == before, "the early load was closed"

    preload.start(probes, "4253", user1.pw_name, env={"DATACRUMBS_PROBE_SHA256": sha})
    loader = preload._pending[3]
    assert preload.take(doc, scope, options) is loader
    with Engine(doc["probes"], scope, **options, ringbuf_bytes=1 << 20, loader=loader) as other:
        assert other._loader is not loader
        assert held_bpf_ids() == before, "a loader for other settings is closed"

    preload.start(probes, "4253", user1.pw_name, env={"DATACRUMBS_PROBE_SHA256": sha})
    loader = preload._pending[3]
    assert preload.take(doc, scope, options) is loader
    with Engine(doc["probes"], scope, **options, loader=loader) as engine:
        report = engine.attach()
        assert engine._loader is loader
    assert len(report.attached) == len(doc["probes"]) and engine.load_stats[1] > 0
    assert held_bpf_ids() == before


def test_an_early_copy_that_fails_verification_leaves_nothing_loaded(site, user1, user2,
                                                                       bpf_object, tracefs):
    """The prolog's digest matches, so the BPF object is loaded (and its document decoded)
    before verification; the document was signed for another user. The daemon still
    verifies the decoded document and refuses it with the one-line reason, and once
    run_daemon returns no BPF program or map of that early load is held, and there is no
    ready file."""
    import hashlib

    from datacrumbs.errors import DatacrumbsError
    from datacrumbs.tracer import preload
    from datacrumbs.tracer.daemon import ready_path, run_daemon

    probes = sign_for(site, user1)
    env = {"DATACRUMBS_PROBE_SHA256": hashlib.sha256(probes.read_bytes()).hexdigest()}
    before = held_bpf_ids()
    preload.start(probes, "4254", user2.pw_name, env=env)
    assert preload._pending is not None and preload._decoded is not None, "begun early"
    with pytest.raises(DatacrumbsError) as refused:
        run_daemon(probes, "4254", user2.pw_name, config=site, env=env)
    message = str(refused.value)
    assert f"signed for {user1.pw_name}" in message and f"not for {user2.pw_name}" in message
    assert "\n" not in message.strip() and "Traceback" not in message
    assert preload._pending is None and preload._decoded is None
    assert held_bpf_ids() == before, "the early load was closed"
    assert not ready_path(site, "4254").exists()
