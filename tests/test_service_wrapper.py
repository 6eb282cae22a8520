"""datacrumbs_service_wrapper start|stop: the seed's "testing without a real Flux prolog" path.

Runs the installed wrapper (<prefix>/bin/datacrumbs_service_wrapper) against a
real private systemd manager and the real daemon, and reads the trace back.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from datacrumbs.jobid import f58_encode

from fixtures.systemd import FLUX_PATH, assert_clean, read_trace, run_workload, trace_path

pytestmark = [pytest.mark.systemd, pytest.mark.ebpf]


def wrapper(manager, site, *args, timeout=120):
    return subprocess.run(
        [str(site.prefix / "bin/datacrumbs_service_wrapper"), *args,
         "--config", str(site.source)],
        env={"PATH": f"{manager.shim_dir}:{FLUX_PATH}"}, capture_output=True, text=True,
        timeout=timeout, stdin=subprocess.DEVNULL)


def test_wrapper_start_stop_traces_the_job(site, bpf_object, tracefs, installed_service, user1,
                                           signed_probes_file, work_dir):
    manager = installed_service
    res = wrapper(manager, site, "start", "1", "dctest1", str(signed_probes_file))
    assert res.returncode == 0, res.stderr + manager.journal("datacrumbs@1.service")
    assert "datacrumbs@1.service is active and ready" in res.stdout
    assert manager.is_active("datacrumbs@1.service") == "active"
    env = (site.run_dir / "datacrumbs-1.env").read_text()
    # the unit traces the prolog's verified copy; the user's path is kept for the logs
    assert f'DATACRUMBS_PROBE_FILE="{site.run_dir}/datacrumbs-1.probes.json.gz"' in env
    assert f'DATACRUMBS_PROBE_SOURCE="{signed_probes_file}"' in env
    pid, fd = run_workload(user1, work_dir, n=123, size=512)
    res = wrapper(manager, site, "stop", "1", "dctest1", str(signed_probes_file))
    assert res.returncode == 0, res.stderr
    assert "datacrumbs@1.service is stopped" in res.stdout
    assert_clean(manager, site, "1")
    events = read_trace(trace_path(site, "dctest1", "1"))
    writes = [e for e in events if e.get("name") == "write" and e["pid"] == pid
              and e["args"].get("fd") == fd]
    assert len(writes) == 123 and {e["args"]["size"] for e in writes} == {512}


def test_wrapper_f58_and_weird_probe_path(installed_service, fake_daemon, site, user1,
                                          make_probes_file, tmp_path):
    fake_daemon("ready")
    weird = make_probes_file(user1, name="my probes; $(reboot) 'x'.json.gz")
    res = wrapper(installed_service, site, "start", "f2kP8DU5B", "dctest1", str(weird))
    assert res.returncode == 0, res.stderr
    jobid = "3859459443726"  # ƒ2kP8DU5B in decimal
    assert f58_encode(int(jobid)) == "\u01922kP8DU5B"
    got = json.loads((site.run_dir / f"fake-{jobid}.argv.json").read_text())
    assert got["argv"] == [f"{site.run_dir}/datacrumbs-{jobid}.probes.json.gz", jobid, "dctest1"]
    env = (site.run_dir / f"datacrumbs-{jobid}.env").read_text()
    assert "DATACRUMBS_PROBE_SOURCE=\"" + str(weird).replace("$", "\\$") + "\"" in env
    assert wrapper(installed_service, site, "stop", "\u01922kP8DU5B", "dctest1",
                   str(weird)).returncode == 0
    assert_clean(installed_service, site, jobid)


@pytest.mark.parametrize("args,words", [
    (("start", "1;reboot", "dctest1", "/x.json.gz"), "is not a Flux job id"),
    (("start", "5", "nosuchuser", "/x.json.gz"), "does not exist"),
    (("start", "5", "dctest1", "/nonexistent/p.json.gz"), "does not exist"),
    (("stop", "../x", "dctest1", "/x.json.gz"), "is not a Flux job id"),
])
def test_wrapper_errors_are_one_line(installed_service, site, args, words):
    res = wrapper(installed_service, site, *args)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith("datacrumbs_service_wrapper: error: ") and words in lines[-1]
    assert "Traceback" not in res.stderr
    assert installed_service.running_units("datacrumbs@*") == []
    assert list(site.run_dir.glob("datacrumbs-*")) == []


def test_wrapper_help(site, installed_service):
    res = subprocess.run([str(site.prefix / "bin/datacrumbs_service_wrapper"), "--help"],
                         capture_output=True, text=True)
    assert res.returncode == 0
    for words in ("start", "stop", "FLUX_JOB_ID", "examples:", "f2kP8DU5B", "exit status"):
        assert words in res.stdout


def test_wrapper_outside_systemd_says_so_in_one_line(site, tmp_path):
    """This machine's systemd is not PID 1 (as on a laptop or in a container): the wrapper
    says that, once, instead of systemctl's D-Bus error."""
    import sys

    wrapper_bin = Path(sys.executable).with_name("datacrumbs_service_wrapper")
    probes = tmp_path / "p.json.gz"
    probes.write_bytes(b"")
    res = subprocess.run([str(wrapper_bin), "stop", "7", "root", str(probes)],
                         env={**os.environ, "DATACRUMBS_CONFIG": str(site.source),
                              "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "systemd is not running on this machine" in lines[0]
    assert "sudo datacrumbs trace -- CMD" in lines[0] and "bus" not in lines[0]


@pytest.mark.parametrize("action", ["start", "stop"])
def test_wrapper_as_an_ordinary_user_says_to_use_sudo(site, tmp_path, user1, action):
    """The wrapper runs the prolog/epilog path, which only root can: an ordinary user gets
    one line saying so, not an "internal error PermissionError" from deep inside it, and
    nothing is written to the run directory."""
    import sys

    wrapper_bin = Path(sys.executable).with_name("datacrumbs_service_wrapper")
    probes = tmp_path / "p.json.gz"
    probes.write_bytes(b"")
    os.chmod(tmp_path, 0o755)
    res = subprocess.run(["setpriv", f"--reuid={user1.pw_uid}", f"--regid={user1.pw_gid}",
                          "--clear-groups", str(wrapper_bin), action, "7", user1.pw_name,
                          str(probes), "--config", str(site.source)],
                         capture_output=True, text=True, timeout=60)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(lines) == 1, res.stderr
    assert lines[0].startswith("datacrumbs_service_wrapper: error: ")
    assert "as root" in lines[0] and "sudo" in lines[0] and "internal error" not in lines[0]
    assert list(site.run_dir.glob("datacrumbs-*")) == []
