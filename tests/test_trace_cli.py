"""`datacrumbs trace -- CMD`: one command traced from its first instruction, real eBPF."""

from __future__ import annotations

import json
import signal
import time
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from datacrumbs.probes.catalog import load_catalog, select_probes
from datacrumbs.probes.document import build_document, write_document
from workloads import daemon_readback as rb
from workloads.daemon_build import build

pytestmark = pytest.mark.ebpf
DATACRUMBS = str(Path(sys.executable).with_name("datacrumbs"))


@pytest.fixture(scope="module")
def writes_bin(shared_dir):
    return build("writes", shared_dir)


def trace(site, tmp_path, *args, user=None):
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    kw = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}
    proc = subprocess.run([DATACRUMBS, "trace", "-o", str(out), *args], capture_output=True,
                          text=True, timeout=120, **kw)
    return proc, out


def outputs(out: Path):
    traces = sorted(out.glob("*.pfw.gz"))
    assert len(traces) == 1, traces
    summary = json.loads(Path(str(traces[0])[:-len(".pfw.gz")] + ".summary.json").read_text())
    return traces[0], summary


def test_traces_the_command_from_its_first_io(site, tmp_path, writes_bin):
    target = tmp_path / "data.bin"
    proc, out = trace(site, tmp_path, "--set", "posix", "--",
                      str(writes_bin), str(target), "1500", "4096")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "done 1500 6144000\n"  # the command's own output is untouched
    path, summary = outputs(out)
    assert f"trace: {path}" in proc.stderr
    assert "POSIX/write" in proc.stderr and str(target) in proc.stderr
    assert rb.lines(path)[-1] == "]"
    events = rb.events(path)
    pid = int(path.name.split("-")[2])
    mine = [e for e in events if e["pid"] == pid]
    # started stopped: even the dynamic loader's first open is in the trace
    fh = {r["args"]["value"]: r["args"]["name"] for r in rb.records(path) if r["name"] == "FH"}
    opened = [fh.get(e["args"].get("fhash")) for e in mine if e["name"] == "openat"]
    assert opened[0] == "/etc/ld.so.cache"
    writes = [e for e in mine if e["name"] == "write" and fh.get(e["args"].get("fhash")) == str(target)]
    assert len(writes) == 1500 and sum(e["args"]["size"] for e in writes) == 1500 * 4096
    assert summary["files"][str(target)]["bytes"] == 1500 * 4096
    assert summary["events_lost"] == 0 and summary["complete"] is True


def test_default_sets_include_stdio(site, tmp_path):
    proc, out = trace(site, tmp_path, "--", "sh", "-c", "exit 0")
    assert proc.returncode == 0, proc.stderr
    _, summary = outputs(out)
    attached = {p["id"].split(".")[0] for p in summary["probes_attached"]}
    # async: io_uring and libaio requests (fio's engines), tests/test_async_io.py
    assert attached == {"posix", "stdio", "async"}


@pytest.mark.parametrize("command,status", [
    (["sh", "-c", "exit 7"], 7),
    (["sh", "-c", "kill -TERM $$"], 128 + 15),
])
def test_exit_status_is_the_commands(site, tmp_path, command, status):
    proc, out = trace(site, tmp_path, "--set", "posix", "-q", "--", *command)
    assert proc.returncode == status, proc.stderr
    path, _ = outputs(out)
    assert str(path) in proc.stderr


def test_missing_command_is_127_with_one_clear_line(site, tmp_path):
    proc, _ = trace(site, tmp_path, "--set", "posix", "-q", "--", "/nonexistent/cmd")
    assert proc.returncode == 127
    assert "cannot run /nonexistent/cmd" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("ms", ["0", "5", "-5", "3600001"])
def test_an_interval_out_of_bounds_is_refused_before_tracing(site, tmp_path, ms):
    """--interval-ms has a probes file's bounds; 0 was taken as "not given" (1000 ms)."""
    proc, out = trace(site, tmp_path, "--mode", "profile", "--interval-ms", ms, "--", "true")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (f"datacrumbs: error: --interval-ms {ms} must be between "
                                   "10 and 3600000")
    assert not list(out.glob("*.pfw.gz"))


def test_an_output_directory_that_takes_no_file_is_refused_before_the_command(site, tmp_path):
    """-o /proc exists but takes no new file: one line before anything runs (it failed
    after attaching, naming the bare trace file)."""
    marker = tmp_path / "ran"
    proc = subprocess.run([DATACRUMBS, "trace", "-o", "/proc", "--", "touch", str(marker)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == ("datacrumbs: error: output directory /proc: cannot write in "
                                   "it (No such file or directory); pass another with -o")
    assert not marker.exists()


def test_a_summary_a_full_disk_refused_is_not_announced(site, tmp_path, writes_bin, full_disk):
    """On a full disk the trace says what it could not write, and the summary line says
    the summary file was not written instead of naming a file that is not there."""
    proc = subprocess.run([DATACRUMBS, "trace", "-o", str(full_disk), "--set", "posix", "--",
                           str(writes_bin), str(tmp_path / "w.bin"), "50", "512"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("summary: "))
    assert line.endswith("not written (No space left on device)"), line
    assert not list(full_disk.glob("*.summary.json"))
    assert "not written" in proc.stderr and "Traceback" not in proc.stderr


def test_profile_mode(site, tmp_path, writes_bin):
    proc, out = trace(site, tmp_path, "--set", "posix", "--mode", "profile",
                      "--interval-ms", "100", "--", str(writes_bin), str(tmp_path / "p.bin"),
                      "2000", "16")
    assert proc.returncode == 0, proc.stderr
    path, summary = outputs(out)
    assert summary["mode"] == "profile"
    assert summary["profile"]["POSIX/write"]["count"] == 2001  # writes and the "done" line
    assert summary["operations"]["POSIX/write"]["bytes"] == 2000 * 16 + len(proc.stdout)
    counters = rb.events(path, ph="C")
    assert sum(c["args"]["count"] for c in counters if c["name"] == "write") == 2001


def test_unsigned_probes_file_is_allowed_here(site, tmp_path, writes_bin):
    probes = [p for p in select_probes(load_catalog(site), ["posix"])
              if p["target"] in ("write", "openat", "close")]
    doc = build_document(probes, owner_uid=0, owner_user="root", sets=["posix"])
    path = write_document(tmp_path / "mine.json.gz", doc)
    proc, out = trace(site, tmp_path, "--probes", str(path), "--",
                      str(writes_bin), str(tmp_path / "u.bin"), "10", "10")
    assert proc.returncode == 0, proc.stderr
    assert "unsigned probes file" in proc.stderr
    _, summary = outputs(out)
    assert {p["id"] for p in summary["probes_attached"]} == {p["id"] for p in probes}
    assert summary["operations"]["POSIX/write"]["count"] == 11


def test_needs_root(site, tmp_path, user1):
    """As an ordinary user: one line saying root (sudo) is needed, nothing written.

    The code under test runs in a forked child that dropped to user1 (the venv itself
    is not readable by test users), exactly as the console script would run it.
    """
    from datacrumbs.cli import build_parser, run_cli

    build_parser()  # import every subcommand while still root
    out = Path(tempfile.mkdtemp(prefix="datacrumbs-trace-cli-"))
    out.chmod(0o777)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.dup2(w, 2)
            sys.stderr = os.fdopen(2, "w", buffering=1)
            os.setgroups([])
            os.setgid(user1.pw_gid)
            os.setuid(user1.pw_uid)
            code = run_cli(["trace", "-o", str(out), "--", "true"])
            sys.stderr.flush()
        except BaseException:
            code = 99
        os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        stderr = f.read()
    _, status = os.waitpid(pid, 0)
    try:
        assert os.waitstatus_to_exitcode(status) == 1, stderr
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and "needs root" in lines[0] and "sudo" in lines[0], stderr
        assert list(out.iterdir()) == []
    finally:
        shutil.rmtree(out)


def test_signed_probes_file_of_another_user_is_refused(site, tmp_path, user2):
    from datacrumbs.signing.keys import KeyStore

    store = KeyStore.from_config(site)
    store.init()
    doc = build_document(select_probes(load_catalog(site), ["posix"]), owner_uid=user2.pw_uid,
                         owner_user=user2.pw_name, sets=["posix"])
    path = write_document(tmp_path / "theirs.json.gz", store.sign(doc))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUDO_")}
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run([DATACRUMBS, "trace", "--probes", str(path), "-o", str(out), "--",
                           "true"], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("datacrumbs: error: ") and str(path) in lines[0]
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("shared", [False, True])
def test_outputs_follow_the_sites_trace_access(site, tmp_path, user1, shared):
    """Like the daemon's: trace and summary are the invoker's alone (0600) unless the site
    sets trace_group (0640, that group)."""
    import grp
    import stat

    if shared:
        site.source.write_text(site.source.read_text().replace(
            'trace_group = ""', f'trace_group = "{grp.getgrgid(0).gr_name}"'))
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run([DATACRUMBS, "trace", "-o", str(out), "--", "sh", "-c", "exit 0"],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, SUDO_USER=user1.pw_name))
    assert proc.returncode == 0, proc.stderr
    trace_file, _ = outputs(out)
    for path in (trace_file, Path(str(trace_file)[:-len(".pfw.gz")] + ".summary.json")):
        st = path.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == \
            ((user1.pw_uid, 0, 0o640) if shared else (user1.pw_uid, user1.pw_gid, 0o600)), path


def test_a_real_trace_cut_anywhere_keeps_its_complete_lines(site, tmp_path, writes_bin):
    """A trace cut at a third, a half and two thirds of its bytes (a daemon killed, a copy
    stopped short) keeps every event written whole before the cut, as gzip -dc recovers
    them; before, a cut member (up to 16,384 events) was dropped whole."""
    from datacrumbs.trace.reader import TraceReader
    from test_trace_reader import gzip_complete_events

    proc, out = trace(site, tmp_path, "--set", "posix", "--",
                      str(writes_bin), str(tmp_path / "data.bin"), "20000", "64")
    assert proc.returncode == 0, proc.stderr
    path, summary = outputs(out)
    data = path.read_bytes()
    total = sum(len(c) for c in TraceReader(path).chunks())
    assert total == summary["events_written"] > 20000
    kept = []
    for fraction in (3, 2, 1.5):
        cut = tmp_path / f"cut-{fraction}.pfw.gz"
        cut.write_bytes(data[:int(len(data) / fraction)])
        reader = TraceReader(cut)
        n = sum(len(c) for c in reader.chunks())
        assert n == gzip_complete_events(cut) and reader.stats.torn_tail
        kept.append(n)
    assert 0 < kept[0] < kept[1] < kept[2] < total


def _exec_of(binary: str, arg: str, timeout: float = 30.0) -> int:
    """The pid of the process running ``binary`` with ``arg``, once it has exec'd."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    argv = (entry / "cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if argv[:2] == [binary.encode(), arg.encode()]:
                    return int(entry.name)
        time.sleep(0.02)
    raise AssertionError(f"{binary} {arg} never ran")


def test_quiet_still_reports_lost_events_and_exact_totals(site, tmp_path, writes_bin):
    """-q prints only the trace path, but never hides a loss: a tracer that cannot drain
    (stopped while the command writes more than its ring buffer holds) says how many
    events were lost, and that the totals still count them (the kernel did)."""
    writes, size = 400_000, 16
    target = tmp_path / "lost.bin"
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen([DATACRUMBS, "trace", "-o", str(out), "--set", "posix", "-q", "--",
                             str(writes_bin), str(target), str(writes), str(size)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, DC_WAIT_STDIN="1"))
    stopped = False
    try:
        _exec_of(str(writes_bin), str(target))      # traced and waiting for its line
        proc.send_signal(signal.SIGSTOP)
        stopped = True
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        deadline = time.monotonic() + 60
        while not (target.exists() and target.stat().st_size == writes * size):
            assert time.monotonic() < deadline, "the command never finished its writes"
            time.sleep(0.05)
        time.sleep(0.2)
        proc.send_signal(signal.SIGCONT)
        stopped = False
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if stopped:
            proc.send_signal(signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    path, summary = outputs(out)
    lost = summary["events_lost"]
    assert lost > 0 and summary["totals_exact"] is True, summary
    lines = stderr.decode().splitlines()
    assert str(path) in lines, lines
    assert f"datacrumbs: {lost:,} events lost (the ring buffer was full; the totals count them)" \
        in lines, lines
    op = summary["operations"]["POSIX/write"]
    done = len(f"done {writes} {writes * size}\n")
    assert (op["count"], op["bytes"]) == (writes + 1, writes * size + done), op


def test_hostile_file_names_reach_the_terminal_as_text(site, tmp_path):
    """A traced program names its files: escape sequences (window title, clipboard via OSC
    52, a one-byte CSI), rich markup and emoji codes in them are printed as text, on the
    terminal of whoever runs the trace."""
    work = tmp_path / "w"
    work.mkdir()
    names = ["t\x1b]0;PWNED\x07x", "c\x1b]52;c;ZWNobw==\x07y", "[bold]z[red]k[link=https:e.x]",
             "s:smile:\x9b31m"]
    prog = "import sys\nfor n in sys.argv[1:]: open(n, 'w').write('x' * 100)"
    proc, out = trace(site, tmp_path, "--set", "posix", "--", sys.executable, "-c", prog,
                      *(str(work / n) for n in names))
    assert proc.returncode == 0, proc.stderr
    for control in ("\x1b", "\x07", "\x9b"):
        assert control not in proc.stderr
    assert "t\\x1b]0;PWNED\\x07x" in proc.stderr and "c\\x1b]52;c;ZWNobw==\\x07y" in proc.stderr
    assert "[bold]z[red]k[link=https:e.x]" in proc.stderr and "s:smile:\\x9b31m" in proc.stderr
