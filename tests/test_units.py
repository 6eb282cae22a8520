"""datacrumbs@.service under a real (private) systemd manager: install, verify, argv, ready, stop.

The daemon here is tests/workloads/service_fake_daemon.py where the test is
about systemd behaviour (argv passing, ready waits, stop semantics); the real
tracer is exercised end to end in test_prolog_epilog.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from datacrumbs.flux import envfile
from datacrumbs.flux.install import install

pytestmark = pytest.mark.systemd


def test_harness_boots_lists_units_and_shim_reaches_it(systemd_manager, systemctl_on_path):
    assert systemd_manager.systemctl("is-system-running").stdout.strip() == "running"
    units = systemd_manager.systemctl("list-units", "--plain", "--no-legend").stdout
    assert "systemd-journald.service" in units and "default.target" in units
    # the manager lives in its own cgroup, not the machine's root cgroup
    assert systemd_manager.cgroup.exists()
    assert str(systemd_manager.pid1) in "".join(
        p.read_text() for p in systemd_manager.cgroup.rglob("cgroup.procs"))
    # plain `systemctl` on PATH (what the prolog calls) talks to the private manager
    shim = subprocess.run(["systemctl", "is-system-running"], capture_output=True, text=True)
    assert shim.stdout.strip() == "running"


def test_harness_teardown_kills_everything_and_removes_cgroup(tmp_path):
    from fixtures.systemd import CGROUP_ROOT, SystemdManager

    manager = SystemdManager(tmp_path, CGROUP_ROOT / f"datacrumbs-test-td-{os.getpid()}")
    manager.boot()
    pid1 = manager.pid1
    (manager.unit_dir / "sleeper.service").write_text("[Service]\nExecStart=/bin/sleep 1000\n")
    manager.systemctl("daemon-reload", check=True)
    manager.systemctl("start", "sleeper.service", check=True)
    procs = {int(p) for f in manager.cgroup.rglob("cgroup.procs") for p in f.read_text().split()}
    assert len(procs) >= 3  # unshare, systemd, journald, sleep
    manager.teardown()
    assert not manager.cgroup.exists()
    for pid in procs | {pid1}:
        assert not Path(f"/proc/{pid}").exists() or \
            Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"


def _verify(*args, cwd):
    return subprocess.run(["systemd-analyze", "verify", *args], capture_output=True,
                          text=True, cwd=cwd)


def test_units_pass_systemd_analyze_verify_after_install(tmp_path):
    prefix = tmp_path / "prefix"
    install(prefix, build_bpf=False)
    unit_dir = prefix / "etc/datacrumbs/systemd"
    for unit in ("datacrumbs@.service", "datacrumbs_sign_probes.service"):
        res = _verify(str(unit_dir / unit), cwd=tmp_path)
        assert res.returncode == 0 and res.stderr == "", (unit, res.stderr)
    # an instance, as systemd loads it (%i expanded); a copy, since verify calls a
    # symlink with another name an alias
    text = (unit_dir / "datacrumbs@.service").read_text()
    inst = tmp_path / "datacrumbs@1234.service"
    inst.write_text(text)
    res = _verify(str(inst), cwd=tmp_path)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    assert "@" not in text.replace("datacrumbs@", "").replace("%i", "")
    assert f"ExecStart={prefix}/bin/datacrumbs run ${{DATACRUMBS_PROBE_FILE}} %i " \
           "${DATACRUMBS_USER}" in text
    assert "KillSignal=SIGINT" in text and "ExecStop=" not in text
    # the check itself can fail: a bad key is reported on stderr
    bad = tmp_path / "bad@7.service"
    bad.write_text(text.replace("Restart=no", "Restart=no\nBogusKey=1"))
    assert "BogusKey" in _verify(str(bad), cwd=tmp_path).stderr


def _start_with_env(manager, site, jobid, probe_file):
    envfile.write_env_file(site.run_dir, jobid, {
        "DATACRUMBS_JOBID": jobid, "DATACRUMBS_USER": "dctest1",
        "DATACRUMBS_PROBE_FILE": probe_file, "DATACRUMBS_CONFIG": str(site.source)})
    return manager.systemctl("start", f"datacrumbs@{jobid}.service", timeout=60)


@pytest.mark.parametrize("name", ["a b c.json.gz", "it's \"quoted\".json.gz",
                                  "x;reboot;$(touch PWNED) `id` ${HOME}.json.gz",
                                  "back\\slash #hash.json.gz"])
def test_probe_path_reaches_daemon_as_one_argument(installed_service, fake_daemon, site, user1,
                                                   name, tmp_path):
    fake_daemon("ready")
    weird_dir = tmp_path / "dir with space;$(id)"
    weird_dir.mkdir()
    probe = str(weird_dir / name)
    res = _start_with_env(installed_service, site, "41", probe)
    assert res.returncode == 0, res.stderr + installed_service.journal("datacrumbs@41.service")
    got = json.loads((site.run_dir / "fake-41.argv.json").read_text())
    assert got["argv"] == [probe, "41", "dctest1"]
    assert not list(tmp_path.rglob("PWNED")) and not Path("/PWNED").exists()
    installed_service.systemctl("stop", "datacrumbs@41.service", check=True)


def test_start_returns_only_after_ready_and_stop_waits_for_flush(installed_service, fake_daemon,
                                                                 site, user1):
    fake_daemon("ready", flush_s=1.5)
    res = _start_with_env(installed_service, site, "42", "/nonexistent/probes.json.gz")
    assert res.returncode == 0, res.stderr
    assert (site.run_dir / "datacrumbs-42.ready").exists()
    assert installed_service.is_active("datacrumbs@42.service") == "active"
    t0 = time.monotonic()
    installed_service.systemctl("stop", "datacrumbs@42.service", check=True)
    # stop returned only after the daemon finished its (slow) flush, signalled by SIGINT
    assert time.monotonic() - t0 >= 1.4
    assert (site.run_dir / "fake-42.flushed").read_text() == "SIGINT"
    assert not (site.run_dir / "datacrumbs-42.ready").exists()
    assert installed_service.is_active("datacrumbs@42.service") == "inactive"
    assert "Deactivated successfully" in installed_service.journal("datacrumbs@42.service")


def test_never_ready_daemon_fails_start_within_ready_timeout(installed_service, fake_daemon,
                                                             site, user1):
    fake_daemon("never-ready")
    cfg_text = site.source.read_text().replace("ready_timeout = 20.0", "ready_timeout = 1.0")
    site.source.write_text(cfg_text)
    t0 = time.monotonic()
    res = _start_with_env(installed_service, site, "43", "/nonexistent/probes.json.gz")
    assert res.returncode != 0
    assert time.monotonic() - t0 < 10
    assert installed_service.is_active("datacrumbs@43.service") in ("failed", "inactive")
    assert "did not write" in installed_service.journal("datacrumbs@43.service")
    # the daemon got its SIGINT and shut down cleanly when systemd gave up on it
    assert (site.run_dir / "fake-43.flushed").read_text() == "SIGINT"


def test_daemon_exiting_early_fails_start_at_once(installed_service, fake_daemon, site, user1):
    """wait-ready --pid $MAINPID notices the daemon is gone instead of waiting ready_timeout."""
    fake_daemon("exit")
    t0 = time.monotonic()
    res = _start_with_env(installed_service, site, "44", "/nonexistent/probes.json.gz")
    assert res.returncode != 0
    assert time.monotonic() - t0 < 5  # ready_timeout is 20 s in this config
    assert installed_service.is_active("datacrumbs@44.service") in ("failed", "inactive")
    journal = installed_service.journal("datacrumbs@44.service")
    assert "fake daemon: refusing to start" in journal


def test_wait_ready_cli(site, tmp_path):
    """The ExecStartPost helper on its own: ready file, timeout, dead pid, bad values."""
    datacrumbs = str(Path(sys.executable).with_name("datacrumbs"))

    def wait(*args):
        return subprocess.run([datacrumbs, "wait-ready", *args], capture_output=True, text=True,
                              timeout=30)

    (site.run_dir / "datacrumbs-5.ready").write_text("x")
    assert wait("5", "--timeout", "1").returncode == 0
    t0 = time.monotonic()
    res = wait("6", "--timeout", "0.5")
    assert res.returncode == 1 and time.monotonic() - t0 < 5
    assert "did not write" in res.stderr and "datacrumbs-6.ready" in res.stderr
    dead = subprocess.Popen(["true"])
    dead.wait()
    res = wait("6", "--timeout", "10", "--pid", str(dead.pid))
    assert res.returncode == 1 and "exited before" in res.stderr
    for args, words in ((("../x",), "not a decimal job id"), (("6", "--pid", "1;x"), "--pid"),
                        (("6", "--timeout", "-1"), "--timeout")):
        res = wait(*args)
        assert res.returncode in (1, 2) and words in res.stderr
        assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr


def test_wait_ready_pid_accepts_only_the_daemons_own_file(site):
    """A ready file left by a SIGKILLed daemon names a dead pid: wait-ready --pid
    $MAINPID must keep waiting (and say why when it gives up), not report ready."""
    datacrumbs = str(Path(sys.executable).with_name("datacrumbs"))
    live = subprocess.Popen(["sleep", "30"])
    try:
        ready = site.run_dir / "datacrumbs-8.ready"
        ready.write_text("999999999\ntrace-old.pfw.gz\n")
        res = subprocess.run([datacrumbs, "wait-ready", "8", "--pid", str(live.pid),
                              "--timeout", "0.5"], capture_output=True, text=True, timeout=30)
        assert res.returncode == 1
        assert "names pid 999999999" in res.stderr and res.stderr.count("\n") == 1
        ready.write_text(f"{live.pid}\ntrace-new.pfw.gz\n")
        res = subprocess.run([datacrumbs, "wait-ready", "8", "--pid", str(live.pid),
                              "--timeout", "5"], capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, res.stderr
    finally:
        live.kill()
        live.wait()


def test_stale_ready_file_does_not_make_the_unit_active(installed_service, fake_daemon, site,
                                                        user1):
    """Under real systemd: a stale ready file and a daemon that never gets ready is a
    failed start, not an active unit (before, ExecStartPost returned at once)."""
    fake_daemon("never-ready")
    site.source.write_text(site.source.read_text().replace("ready_timeout = 20.0",
                                                           "ready_timeout = 1.0"))
    (site.run_dir / "datacrumbs-46.ready").write_text("999999999\ntrace-old.pfw.gz\n")
    res = _start_with_env(installed_service, site, "46", "/nonexistent/probes.json.gz")
    assert res.returncode != 0
    assert installed_service.is_active("datacrumbs@46.service") in ("failed", "inactive")
    assert "names pid 999999999" in installed_service.journal("datacrumbs@46.service")
    assert not (site.run_dir / "datacrumbs-46.ready").exists()  # ExecStopPost cleared it


def test_sigkilled_daemon_leaves_no_ready_file(installed_service, fake_daemon, site, user1):
    """Nothing in the daemon runs after SIGKILL; the unit's ExecStopPost removes its file."""
    fake_daemon("ready")
    res = _start_with_env(installed_service, site, "47", "/nonexistent/probes.json.gz")
    assert res.returncode == 0, res.stderr
    ready = site.run_dir / "datacrumbs-47.ready"
    assert ready.exists()
    installed_service.systemctl("kill", "--signal=SIGKILL", "datacrumbs@47.service", check=True)
    deadline = time.monotonic() + 10
    while installed_service.is_active("datacrumbs@47.service") not in ("failed", "inactive"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert not (site.run_dir / "fake-47.flushed").exists()  # really killed, no clean exit
    assert not ready.exists()
    installed_service.systemctl("reset-failed", "datacrumbs@47.service")
