"""The Flux prolog and epilog, end to end, under a real private systemd manager.

The seed's flow: job metadata -> prolog (datacrumbs_service_run.sh as installed)
-> datacrumbs@<jobid>.service (the real daemon, real eBPF) ready -> the user's
workload -> epilog (datacrumbs_service_stop.sh) -> a complete trace with exactly
the workload's writes, the unit inactive and the env file gone. Failure cases
check the message, that nothing is left running, and the exit status (0, or 1
with fail_job_on_error). Flux itself cannot be installed here: the prolog's
environment is the one flux-interfaces.md documents.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import time
from pathlib import Path

import pytest

from datacrumbs.flux import envfile
from datacrumbs.jobid import f58_encode
from datacrumbs.tracer.daemon import short_host
from fixtures.systemd import FLUX_PATH, recording_flux
from fixtures.systemd import assert_clean as _assert_unit_clean
from fixtures.systemd import (WORKLOAD, digest, epilog, flux_env, perilog_log, prolog,
                              read_trace, run_workload, trace_path)

pytestmark = [pytest.mark.systemd, pytest.mark.ebpf]



def told(fail_job: bool) -> str:
    """What the user is told when tracing cannot start: with fail_job_on_error the job
    does not run, so the message must not say it runs untraced."""
    return ("tracing could not start, so the job was stopped (fail_job_on_error)" if fail_job
            else "tracing disabled for this job")

def assert_clean(manager, site, jobid: str) -> None:
    """No unit, env file or ready file, and no verified copy of the probes file either."""
    _assert_unit_clean(manager, site, jobid)
    assert not (site.run_dir / f"datacrumbs-{jobid}.probes.json.gz").exists()

@pytest.fixture
def traced_site(site, bpf_object, tracefs, installed_service):
    """The site installed and linked into the private manager, with the real daemon."""
    return installed_service


# -- the seed's flow with the real daemon ---------------------------------------------


def test_seed_flow_end_to_end(traced_site, site, user1, signed_probes_file, work_dir):
    manager = traced_site
    jobid = 987654321
    f58 = f58_encode(jobid)  # "ƒ..." exactly as Flux gives FLUX_JOB_ID to a prolog
    env = flux_env(manager, site, f58, user1, signed_probes_file)
    res = prolog(site, env)
    assert res.returncode == 0, res.stderr
    unit = f"datacrumbs@{jobid}.service"
    assert manager.is_active(unit) == "active", res.stderr + manager.journal(unit)
    assert (site.run_dir / f"datacrumbs-{jobid}.ready").exists()
    assert (site.run_dir / f"datacrumbs-{jobid}.env").stat().st_mode & 0o777 == 0o600
    # the unit gets the prolog's verified copy (root, 0600) and its digest, not the user's path
    copy = site.run_dir / "datacrumbs-987654321.probes.json.gz"
    assert copy.read_bytes() == signed_probes_file.read_bytes()
    assert (copy.stat().st_uid, copy.stat().st_mode & 0o777) == (0, 0o600)
    values = envfile.read_env_file(site.run_dir / "datacrumbs-987654321.env")
    assert values["DATACRUMBS_PROBE_FILE"] == str(copy)
    assert values["DATACRUMBS_PROBE_SHA256"] == \
        hashlib.sha256(signed_probes_file.read_bytes()).hexdigest()
    assert values["DATACRUMBS_PROBE_SOURCE"] == str(signed_probes_file)

    pid, fd = run_workload(user1, work_dir, n=250, size=4096, jobid=jobid)

    res = epilog(site, env)
    assert res.returncode == 0, res.stderr
    assert_clean(manager, site, str(jobid))
    events = read_trace(trace_path(site, "dctest1", str(jobid)))
    writes = [e for e in events if e.get("name") == "write" and e.get("pid") == pid
              and e.get("args", {}).get("fd") == fd]
    assert len(writes) == 250
    assert sum(e["args"]["size"] for e in writes) == 250 * 4096
    summary = json.loads(trace_path(site, "dctest1", str(jobid))
                         .with_name(f"trace-dctest1-{jobid}-{short_host()}.summary.json")
                         .read_text())
    assert summary["complete"] is True and summary["job"] == str(jobid)
    journal = manager.journal(unit)
    assert "Deactivated successfully" in journal or "Succeeded" in journal


def test_two_jobs_on_one_node_each_traces_only_its_user(traced_site, site, user1, user2,
                                                        make_probes_file, work_dir):
    manager = traced_site
    work = work_dir
    jobs = {"1001": (user1, make_probes_file(user1)), "1002": (user2, make_probes_file(user2))}
    envs = {j: flux_env(manager, site, j, u, p) for j, (u, p) in jobs.items()}
    for j in jobs:
        res = prolog(site, envs[j])
        assert res.returncode == 0 and manager.is_active(f"datacrumbs@{j}.service") == "active", \
            res.stderr
    assert {p.name for p in site.run_dir.glob("datacrumbs-100?.*")} == {
        "datacrumbs-1001.env", "datacrumbs-1001.ready", "datacrumbs-1001.probes.json.gz",
        "datacrumbs-1002.env", "datacrumbs-1002.ready", "datacrumbs-1002.probes.json.gz"}
    pids = {"1001": run_workload(user1, work, n=60, jobid="1001")[0],
            "1002": run_workload(user2, work, n=90, jobid="1002")[0]}
    for j in jobs:
        assert epilog(site, envs[j]).returncode == 0
        assert_clean(manager, site, j) if j == "1002" else None
    for j, (user, _) in jobs.items():
        other = "1002" if j == "1001" else "1001"
        events = read_trace(trace_path(site, user.pw_name, j))
        ops = [e for e in events if e.get("ph") == "X"]
        assert ops and {e["pid"] for e in ops}.isdisjoint({pids[other]})
        mine = [e for e in ops if e["pid"] == pids[j] and e["name"] == "write"
                and e["args"].get("size") == 4096]
        assert len(mine) == (60 if j == "1001" else 90)
        header = next(e for e in events if e.get("ph") == "M" and e.get("name") == "datacrumbs")
        assert header["args"]["user"] == user.pw_name and header["args"]["job"] == j


# -- failures: the job runs untraced, nothing is left behind ---------------------------------


@pytest.mark.parametrize("spelling", ["\u0192", "f"])
def test_f58_job_id_in_both_spellings_names_the_decimal_unit(installed_service, fake_daemon,
                                                             site, user1, signed_probes_file,
                                                             spelling):
    fake_daemon("ready")
    jobid = 2_000_000_123
    env = flux_env(installed_service, site, spelling + f58_encode(jobid)[1:], user1,
                   signed_probes_file)
    assert prolog(site, env).returncode == 0
    assert installed_service.is_active(f"datacrumbs@{jobid}.service") == "active"
    assert installed_service.running_units("datacrumbs@*") == [f"datacrumbs@{jobid}.service"]
    assert epilog(site, env).returncode == 0
    assert_clean(installed_service, site, str(jobid))


def _set_fail_job(site, on: bool) -> None:
    text = site.source.read_text()
    site.source.write_text(text.replace("fail_job_on_error = false",
                                        f"fail_job_on_error = {'true' if on else 'false'}"))


@pytest.mark.parametrize("fail_job", [False, True])
@pytest.mark.parametrize("raw", ["../x", "1;reboot", "1\nX=y"])
def test_malicious_job_ids(installed_service, site, user1, signed_probes_file, raw, fail_job):
    _set_fail_job(site, fail_job)
    res = prolog(site, flux_env(installed_service, site, raw, user1, signed_probes_file))
    assert res.returncode == (1 if fail_job else 0)
    assert "is not a Flux job id" in res.stderr and "Traceback" not in res.stderr
    assert "is not a Flux job id" in perilog_log(site)
    assert installed_service.running_units("datacrumbs@*") == []
    assert list(site.run_dir.glob("datacrumbs-*")) == []
    assert epilog(site, flux_env(installed_service, site, raw, user1, None)).returncode == 0


def _probe_case(case, make_probes_file, user1, user2, tmp_path):
    """(file the metadata names, file whose digest it carries, expected words)."""
    if case == "missing":
        path = tmp_path / "gone.json.gz"
        return path, None, "does not exist"
    if case == "tampered":
        path = make_probes_file(user1)
        doc = json.loads(gzip.decompress(path.read_bytes()))
        doc["capture"]["interval_ms"] += 1  # still schema-valid, signature kept
        path.write_bytes(gzip.compress(json.dumps(doc).encode()))
        return path, path, "signature"
    if case == "expired":
        now = int(time.time())
        path = make_probes_file(user1, issued_at=now - 10 * 86400, expires_at=now - 86400)
        return path, path, "expired"
    if case == "other_user":
        path = make_probes_file(user2)
        return path, path, "dctest2"
    if case == "digest_mismatch":
        path = make_probes_file(user1, name="changed.json.gz")
        submitted = tmp_path / "as-submitted.json.gz"
        submitted.write_bytes(path.read_bytes())
        make_probes_file(user1, name="changed.json.gz", sets=["posix"])  # replaced after submit
        return path, submitted, "changed after the job was submitted"
    raise AssertionError(case)


@pytest.mark.parametrize("fail_job", [False, True])
@pytest.mark.parametrize("case", ["missing", "tampered", "expired", "other_user",
                                  "digest_mismatch"])
def test_bad_probes_files(installed_service, site, user1, user2, make_probes_file, tmp_path,
                          case, fail_job):
    _set_fail_job(site, fail_job)
    path, digest_of, words = _probe_case(case, make_probes_file, user1, user2, tmp_path)
    env = flux_env(installed_service, site, "3001", user1, None)
    env["DATACRUMBS_JOB_METADATA"] = json.dumps({
        "enable": "yes", "probe_file": str(path),
        "probe_digest": digest(digest_of) if digest_of else "sha256:" + "0" * 64})
    res = prolog(site, env)
    assert res.returncode == (1 if fail_job else 0), res.stderr
    assert words.lower() in res.stderr.lower(), res.stderr
    assert told(fail_job) in res.stderr and "Traceback" not in res.stderr
    assert str(path) in res.stderr
    assert_clean(installed_service, site, "3001")
    assert epilog(site, env).returncode == 0  # the epilog does not care


def test_never_ready_daemon_prolog_returns_within_its_bound(installed_service, fake_daemon, site,
                                                            user1, signed_probes_file):
    fake_daemon("never-ready")
    text = site.source.read_text()
    site.source.write_text(text.replace("ready_timeout = 20.0", "ready_timeout = 30.0")
                           .replace("prolog_timeout = 30.0", "prolog_timeout = 4.0"))
    env = flux_env(installed_service, site, "3002", user1, signed_probes_file)
    res = prolog(site, env)
    assert res.returncode == 0
    # its own bound, not the 30 s ready_timeout, plus interpreter start-up on a loaded machine
    assert res.elapsed < 4.0 + 10.0, res.elapsed
    assert "did not start" in res.stderr and "datacrumbs@3002.service" in res.stderr
    assert_clean(installed_service, site, "3002")


def test_not_enabled_is_quiet(installed_service, site, user1, signed_probes_file, tmp_path):
    # a `flux` that answers `flux job info 3003 jobspec` for a job without datacrumbs
    bindir = tmp_path / "fluxbin"
    bindir.mkdir()
    (bindir / "flux").write_text(
        '#!/bin/sh\n[ "$*" = "job info 3003 jobspec" ] || exit 1\n'
        'echo \'{"version": 1, "attributes": {"system": {"duration": 0}}}\'\n')
    (bindir / "flux").chmod(0o755)
    from_flux = flux_env(installed_service, site, "3003", user1, None)
    from_flux["PATH"] = f"{bindir}:{from_flux['PATH']}"
    for env in (from_flux,
                dict(from_flux, DATACRUMBS_JOB_METADATA="{}"),
                flux_env(installed_service, site, "3003", user1, signed_probes_file,
                         enable="no")):
        res = prolog(site, env)
        assert res.returncode == 0 and res.stderr == "" and res.stdout == ""
        assert_clean(installed_service, site, "3003")
        assert not (site.log_dir / "flux-perilog.log").exists()


def test_epilog_is_idempotent_and_ignores_the_probes_file(installed_service, fake_daemon, site,
                                                          user1, make_probes_file):
    fake_daemon("ready")
    path = make_probes_file(user1)
    env = flux_env(installed_service, site, "3004", user1, path)
    assert epilog(site, env).returncode == 0  # nothing started yet
    assert prolog(site, env).returncode == 0
    assert installed_service.is_active("datacrumbs@3004.service") == "active"
    path.unlink()  # deleted while the job ran
    env["DATACRUMBS_JOB_METADATA"] = "{not json"
    for _ in range(2):
        res = epilog(site, env)
        assert res.returncode == 0, res.stderr
        assert_clean(installed_service, site, "3004")
    assert (site.run_dir / "fake-3004.flushed").read_text() == "SIGINT"


@pytest.mark.parametrize("fail_job", [False, True])
def test_instance_without_allow_root_owner_is_the_admins_to_fix_and_never_drains(
        installed_service, site, user1, tmp_path, fail_job):
    """Real Flux v0.88 multi-user instances refuse root's `flux job info` unless
    access.allow-root-owner = true: the prolog says so in flux dmesg (its stderr), does not
    try `flux job raise` (refused the same way) and exits 0 even with fail_job_on_error."""
    _set_fail_job(site, fail_job)
    bindir, record = recording_flux(tmp_path)
    (bindir / "flux").write_text(
        "#!/usr/bin/python3\nimport json, sys\n"
        f"open({str(record)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
        "if sys.argv[1:3] == ['job', 'info']:\n"
        "    sys.stderr.write('flux-job: access is restricted to job/instance owner\\n')\n"
        "    sys.exit(1)\n")
    env = flux_env(installed_service, site, "3040", user1, None)
    env["PATH"] = f"{bindir}:{env['PATH']}"
    res = prolog(site, env)
    assert res.returncode == 0, res.stderr
    assert "set `allow-root-owner = true` in the instance's [access] configuration" in res.stderr
    assert "Traceback" not in res.stderr
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    # the script's fast path, then Python, read the jobspec; nobody tries `flux job raise`
    assert [c[:2] for c in calls] == [["job", "info"], ["job", "info"]]
    assert_clean(installed_service, site, "3040")


@pytest.mark.parametrize("fail_job,severity", [(False, "1"), (True, "0")])
def test_user_is_told_through_flux_job_raise(installed_service, site, user1, tmp_path,
                                             fail_job, severity):
    _set_fail_job(site, fail_job)
    bindir, record = recording_flux(tmp_path)
    missing = tmp_path / "no such probes.json.gz"
    env = flux_env(installed_service, site, "\u01922kP8DU5B", user1, None)
    env["PATH"] = f"{bindir}:{env['PATH']}"
    env["DATACRUMBS_JOB_METADATA"] = json.dumps({
        "enable": "yes", "probe_file": str(missing), "probe_digest": "sha256:" + "0" * 64})
    res = prolog(site, env)
    assert res.returncode == (1 if fail_job else 0)
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(calls) == 1
    argv = calls[0]
    assert argv[:5] == ["job", "raise", f"--severity={severity}", "--type=datacrumbs",
                        "3859459443726"]
    assert argv[5] == "--" and argv[6].startswith("datacrumbs: " + told(fail_job) + ": ")
    assert str(missing) in argv[6] and "does not exist" in argv[6]
    assert_clean(installed_service, site, "3859459443726")


def test_unit_not_deployed_job_runs_untraced(site, systemctl_on_path, user1, signed_probes_file):
    """Installed but the seed's ln -sf/daemon-reload step was forgotten on this node."""
    from datacrumbs.flux.install import install

    install(site.prefix, build_bpf=False)
    env = flux_env(systemctl_on_path, site, "3005", user1, signed_probes_file)
    res = prolog(site, env)
    assert res.returncode == 0
    assert "datacrumbs@3005.service" in res.stderr and "not found" in res.stderr
    assert_clean(systemctl_on_path, site, "3005")
    assert epilog(site, env).returncode == 0


def test_real_daemon_gets_an_odd_probes_path_as_one_argument(traced_site, site, user1,
                                                             make_probes_file, tmp_path):
    """The prolog reads the odd path as the user; the daemon gets the verified copy and the
    odd path, for its log, through the env file: it must arrive byte for byte, unexpanded."""
    odd_dir = tmp_path / "my dir; $(touch PWNED)"
    odd_dir.mkdir()
    path = make_probes_file(user1, name="my dir; $(touch PWNED)/it's \"odd\" `id`.json.gz")
    env = flux_env(traced_site, site, "3006", user1, path)
    res = prolog(site, env)
    assert res.returncode == 0 and "tracing disabled" not in res.stderr, res.stderr
    assert traced_site.is_active("datacrumbs@3006.service") == "active"
    journal = traced_site.journal("datacrumbs@3006.service")
    assert (f"probes file {site.run_dir}/datacrumbs-3006.probes.json.gz verified (the prolog's "
            f"copy of {tmp_path}/my dir; $(touch PWNED)/it's \"odd\" `id`.json.gz)") in journal
    assert epilog(site, env).returncode == 0
    assert_clean(traced_site, site, "3006")
    assert read_trace(trace_path(site, "dctest1", "3006"))  # complete, ends with ']'
    assert not list(tmp_path.rglob("PWNED")) and not Path("/PWNED").exists()


def test_unwritable_log_never_disturbs_the_prolog(site, user1, capsys):
    """In-process: the log dir cannot be created; the reason still reaches stderr."""
    from dataclasses import replace

    from datacrumbs.flux.prolog import run_prolog

    cfg = replace(site, log_dir=Path("/proc/no-such-dir/log"))
    env = {"FLUX_JOB_ID": "3007", "FLUX_JOB_USERID": str(user1.pw_uid),
           "DATACRUMBS_JOB_METADATA": '{"enable": "yes"}', "PATH": FLUX_PATH}
    result = run_prolog(env, cfg)
    assert result.started is False and result.exit_code == 0
    assert "no probe_file was given" in result.message
    err = capsys.readouterr().err
    assert "no probe_file was given" in err and "Traceback" not in err and "Logging error" not in err


def test_sdexec_scope_keeps_two_jobs_of_one_user_apart(traced_site, site, user1,
                                                        signed_probes_file, work_dir):
    """With sdexec_scope, the prolog asks the tracer for the job's unit cgroup,
    <shell>-<rank>-<f58 jobid>.service, which Flux creates only after the prolog:
    two jobs of the same user on one node then each trace only their own processes."""
    import subprocess
    import uuid

    from datacrumbs.config import load_config, render_config
    from datacrumbs.jobid import f58plain
    from datacrumbs.tracer.scope import cgroup2_root
    from fixtures.systemd import WORKLOAD

    manager = traced_site
    cfg = load_config(site.source)
    cfg.sdexec_scope = True
    Path(site.source).write_text(render_config(cfg))
    parent = cgroup2_root() / f"dctest-sdexec-{uuid.uuid4().hex[:8]}"
    parent.mkdir()
    jobs = {"3001": 40, "3002": 70}
    try:
        envs = {j: flux_env(manager, site, j, user1, signed_probes_file) for j in jobs}
        for j in jobs:
            res = prolog(site, envs[j])
            assert res.returncode == 0 and manager.is_active(f"datacrumbs@{j}.service") == \
                "active", res.stderr
            assert f'DATACRUMBS_CGROUP_NAME="-{f58plain(int(j))}.service"' in \
                (site.run_dir / f"datacrumbs-{j}.env").read_text()
        pids = {}
        for j, n in jobs.items():
            unit = parent / f"imp-shell-0-{f58plain(int(j))}.service"   # as Flux's sdexec names it
            unit.mkdir()
            # enter the job's cgroup as root, then become the job's user: argv only, no splicing
            out = subprocess.run(
                ["sh", "-c", 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"', "sh", str(unit),
                 "setpriv", f"--reuid={user1.pw_uid}", f"--regid={user1.pw_gid}", "--clear-groups",
                 "/usr/bin/python3", "-c", WORKLOAD, str(work_dir / f"out-{j}"), str(n), "4096"],
                capture_output=True, text=True, check=True, timeout=60, cwd="/")
            pids[j] = int(out.stdout.split()[0])
        for j in jobs:
            assert epilog(site, envs[j]).returncode == 0
        for j, n in jobs.items():
            ops = [e for e in read_trace(trace_path(site, user1.pw_name, j)) if e.get("ph") == "X"]
            assert {e["pid"] for e in ops} == {pids[j]}, "the other job's processes leaked in"
            writes = [e for e in ops if e["name"] == "write" and e["args"].get("size") == 4096]
            assert len(writes) == n
    finally:
        for unit in parent.iterdir():
            if unit.is_dir():
                unit.rmdir()
        parent.rmdir()


def test_without_sdexec_each_job_traces_its_own_shell_tree(traced_site, site, user1, user2,
                                                             signed_probes_file, work_dir):
    """No sdexec: the prolog asks for the job shell's process tree (Flux execs
    ``flux-shell <jobid>`` after the prolog). Two concurrent jobs of one user each trace
    only their own shell and what it forks; the same user's process outside any job and
    another user's impostor running ``flux-shell <jobid>`` of this job are not traced."""
    from fixtures.systemd import job_shell

    manager = traced_site
    jobs = {"3101": 30, "3102": 45}
    envs = {j: flux_env(manager, site, j, user1, signed_probes_file) for j in jobs}
    for j in jobs:
        res = prolog(site, envs[j])
        assert res.returncode == 0 and manager.is_active(f"datacrumbs@{j}.service") == \
            "active", res.stderr
        assert 'DATACRUMBS_JOB_SHELL="flux-shell"' in \
            (site.run_dir / f"datacrumbs-{j}.env").read_text()
    pids = {j: run_workload(user1, work_dir, n=n, jobid=j)[0] for j, n in jobs.items()}
    # a child the job shell forks (not execs in place) belongs to the job too
    child = subprocess.run(
        [str(job_shell()), "-c", 'python3 -c "$1" "$2" 7 4096; true', "--", WORKLOAD,
         str(work_dir / "child"), "3101"], user=user1.pw_uid, group=user1.pw_gid,
        extra_groups=[], capture_output=True, text=True, check=True, timeout=60, cwd="/")
    child_pid = int(child.stdout.split()[0])
    outside_pid, _ = run_workload(user1, work_dir, n=11)
    impostor_pid, _ = run_workload(user2, work_dir, n=13, jobid="3101")
    for j in jobs:
        assert epilog(site, envs[j]).returncode == 0
    for j in jobs:
        assert_clean(manager, site, j)
    for j, n in jobs.items():
        ops = [e for e in read_trace(trace_path(site, user1.pw_name, j)) if e.get("ph") == "X"]
        seen = {e["pid"] for e in ops}
        assert pids[j] in seen
        assert not seen & {outside_pid, impostor_pid, *(pids[k] for k in jobs if k != j)}
        writes = [e for e in ops if e["name"] == "write" and e["args"].get("size") == 4096]
        expected = n + (7 if j == "3101" else 0)
        assert len(writes) == expected, (j, len(writes))
        assert (child_pid in seen) == (j == "3101")


# -- the verified copy: what the prolog checked is what the daemon traces --------------------


def _dropin(manager, name: str, text: str) -> None:
    """A drop-in for datacrumbs@.service (the installed_service teardown removes it)."""
    dropin = manager.unit_dir / "datacrumbs@.service.d"
    dropin.mkdir(exist_ok=True)
    (dropin / name).write_text(text)
    manager.systemctl("daemon-reload", check=True)


def test_swapping_the_users_file_after_the_prolog_changes_nothing(traced_site, site, user1,
                                                                   make_probes_file, work_dir):
    """The swap attack: the prolog verifies the user's file, which is then replaced by another
    validly signed file of hers with other probes before the daemon starts. The daemon must
    trace the verified bytes (all four probes), not the swapped file (openat only)."""
    from fixtures.keys import sample_probes

    manager = traced_site
    verified = make_probes_file(user1, name="verified.json.gz")
    other = make_probes_file(user1, name="other.json.gz", probes=[sample_probes()[1]],
                             sets=["posix"])
    # the window between the prolog's check and the daemon's start, made deterministic
    _dropin(manager, "swap.conf", f"[Service]\nExecStartPre=/bin/cp {other} {verified}\n")
    env = flux_env(manager, site, "3020", user1, verified)
    res = prolog(site, env)
    assert res.returncode == 0, res.stderr + manager.journal("datacrumbs@3020.service")
    assert verified.read_bytes() == other.read_bytes()  # the swap did happen
    pid, fd = run_workload(user1, work_dir, n=50, size=4096, jobid="3020")
    assert epilog(site, env).returncode == 0
    assert_clean(manager, site, "3020")
    summary = json.loads(trace_path(site, "dctest1", "3020")
                         .with_name(f"trace-dctest1-3020-{short_host()}.summary.json").read_text())
    attached = {p["id"] for p in summary["probes_attached"]}
    assert {"posix.write", "posix.openat", "stdio.fwrite"} <= attached, attached
    writes = [e for e in read_trace(trace_path(site, "dctest1", "3020"))
              if e.get("name") == "write" and e.get("pid") == pid and e["args"].get("fd") == fd]
    assert len(writes) == 50


def test_daemon_refuses_a_copy_that_is_not_the_verified_bytes(installed_service, bpf_object,
                                                              site, user1, make_probes_file):
    """Even a validly signed file of the same user put in place of the copy is refused:
    the daemon checks DATACRUMBS_PROBE_SHA256 before it parses anything."""
    manager = installed_service
    verified = make_probes_file(user1, name="verified.json.gz")
    other = make_probes_file(user1, name="other.json.gz", sets=["posix"])
    copy = site.run_dir / "datacrumbs-3021.probes.json.gz"
    _dropin(manager, "replace-copy.conf", f"[Service]\nExecStartPre=/bin/cp {other} {copy}\n")
    env = flux_env(manager, site, "3021", user1, verified)
    res = prolog(site, env)
    assert res.returncode == 0
    reason = (f"probes file {copy}: its SHA-256 is not the one the prolog verified "
              "(DATACRUMBS_PROBE_SHA256); rerun the job")
    journal = manager.journal("datacrumbs@3021.service")
    assert reason in journal, journal
    # the user is told the daemon's own reason, not to run journalctl on a compute node
    line = next(x for x in res.stderr.splitlines() if "tracing disabled" in x)
    assert line.endswith("tracing disabled for this job: the tracer did not start: " + reason)
    assert "journalctl" not in line
    assert_clean(manager, site, "3021")
    assert not (site.run_dir / "datacrumbs-3021.failed").exists()


# -- the prolog's bound holds even while Python is stuck in C ---------------------------------

HANG_IN_C = '''"""Test hook: make one stage of the prolog hang in C code with the GIL held."""
import ctypes
import os


def _hang(*args, **kwargs):
    lock = ctypes.create_string_buffer(64)  # a zeroed (normal) pthread mutex
    libc = ctypes.PyDLL(None)               # PyDLL keeps the GIL: no Python code runs again
    libc.pthread_mutex_lock(lock)
    libc.pthread_mutex_lock(lock)           # relocking it blocks forever; signals cannot help


if os.environ.get("DC_TEST_HANG") == "verify":
    import datacrumbs.probes.verify
    datacrumbs.probes.verify.verify_document = _hang
elif os.environ.get("DC_TEST_HANG") == "read":
    import datacrumbs.flux.asuser
    datacrumbs.flux.asuser._read = _hang
'''


def _processes_with(marker: bytes) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.parametrize("fail_job", [False, True])
@pytest.mark.parametrize("stage,doing", [
    ("verify", "verifying probes file {path}"),
    ("read", "reading probes file {path} as user dctest1"),
])
def test_prolog_bound_holds_while_stuck_in_c(installed_service, site, user1, signed_probes_file,
                                             tmp_path, stage, doing, fail_job):
    """A stage hung in C (no signal handler or Python thread would ever run) still ends at
    prolog_timeout: the job is told why, exit 0 (1 with fail_job_on_error), nothing is left."""
    _set_fail_job(site, fail_job)
    site.source.write_text(site.source.read_text().replace("prolog_timeout = 30.0",
                                                           "prolog_timeout = 2.0"))
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HANG_IN_C)
    bindir, record = recording_flux(tmp_path)
    env = flux_env(installed_service, site, "3030", user1, signed_probes_file)
    marker = f"DC_TEST_HANG_ID={tmp_path.name}"
    env.update(PATH=f"{bindir}:{env['PATH']}", PYTHONPATH=str(hook), DC_TEST_HANG=stage,
               DC_TEST_HANG_ID=tmp_path.name)
    res = prolog(site, env)
    assert res.returncode == (1 if fail_job else 0), res.stderr
    # its bound (the stage would hang forever), plus interpreter start-up on a loaded machine
    assert res.elapsed < 2.0 + 10.0, res.elapsed
    expected = (f"datacrumbs: {told(fail_job)}: the prolog's bound of 2 s was "
                "reached while " + doing.format(path=signed_probes_file))
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    assert [c[6] for c in calls] == [expected]
    assert "Traceback" not in res.stderr
    assert_clean(installed_service, site, "3030")
    time.sleep(0.2)  # SIGKILLed helpers are gone at once; give the kernel a moment
    assert _processes_with(marker.encode()) == []


# -- DATACRUMBS_CGROUP: a job's scope never covers more than the job ------------------------


def prolog_on_node(manager, site, env):
    """The prolog run inside the private manager's namespaces: there, as on a node, the
    prolog and the tracer unit see one cgroup v2 mount (/sys/fs/cgroup, rooted at the
    manager's cgroup), so a DATACRUMBS_CGROUP path means the same to both."""
    import subprocess

    script = site.prefix / "sbin" / "datacrumbs_service_run.sh"
    # the manager is PID 1 there: plain systemctl, not the host-side shim
    return subprocess.run([*manager.nsenter(), str(script)], env=dict(env, PATH=FLUX_PATH),
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


@pytest.fixture
def job_cgroups(systemd_manager):
    """A parent for job cgroups inside the manager's hierarchy: (host path, node path)."""
    import uuid

    from fixtures.tracing import remove_cgroup_tree

    name = f"dctest-jobs-{uuid.uuid4().hex[:8]}"
    host = systemd_manager.cgroup / name
    host.mkdir()
    yield host, Path("/sys/fs/cgroup") / name
    remove_cgroup_tree(host, systemd_manager.cgroup)


@pytest.mark.parametrize("case", ["node_root", "host_root", "other_job", "parent", "not_a_cgroup"])
def test_prolog_refuses_a_cgroup_that_is_not_the_jobs(traced_site, site, user1,
                                                      signed_probes_file, job_cgroups, case):
    """The cgroup root (every process of the node, in either layout), another job's
    cgroup, a parent of job cgroups or a plain directory: the job runs untraced with a
    clear message, and no env file or unit is left."""
    from datacrumbs.jobid import f58plain

    manager = traced_site
    jobid = 4711
    host_parent, node_parent = job_cgroups
    (host_parent / f"imp-shell-0-{f58plain(jobid + 1)}.service").mkdir()
    value = {"node_root": "/sys/fs/cgroup", "host_root": "/sys/fs/cgroup/unified",
             "other_job": str(node_parent / f"imp-shell-0-{f58plain(jobid + 1)}.service"),
             "parent": str(node_parent), "not_a_cgroup": "/etc"}[case]
    env = flux_env(manager, site, str(jobid), user1, signed_probes_file)
    env["DATACRUMBS_CGROUP"] = value
    res = prolog(site, env) if case == "host_root" else prolog_on_node(manager, site, env)
    assert res.returncode == 0, res.stderr
    assert "tracing disabled for this job" in res.stderr and "Traceback" not in res.stderr
    line = next(x for x in res.stderr.splitlines() if "tracing disabled" in x)
    assert f"DATACRUMBS_CGROUP={value!r}" in line and f"job {jobid}" in line
    assert {"node_root": "is the cgroup v2 root", "host_root": "is the cgroup v2 root",
            "other_job": f"is not job {jobid}'s cgroup", "parent": f"is not job {jobid}'s cgroup",
            "not_a_cgroup": "is not a cgroup"}[case] in line
    assert_clean(manager, site, str(jobid))
    assert epilog(site, env).returncode == 0


def test_prolog_accepts_the_jobs_own_cgroup_and_traces_only_it(traced_site, site, user1,
                                                               signed_probes_file, work_dir,
                                                               job_cgroups):
    """The job's own cgroup, named as Flux's sdexec names it: the real daemon traces the
    processes in it, not the same user's processes elsewhere."""
    import os
    import subprocess

    from datacrumbs.jobid import f58plain
    from fixtures.systemd import WORKLOAD

    manager = traced_site
    jobid = 4712
    host_parent, node_parent = job_cgroups
    unit = f"imp-shell-0-{f58plain(jobid)}.service"
    (host_parent / unit).mkdir()
    env = flux_env(manager, site, str(jobid), user1, signed_probes_file)
    env["DATACRUMBS_CGROUP"] = str(node_parent / unit)
    res = prolog_on_node(manager, site, env)
    assert res.returncode == 0 and "tracing disabled" not in res.stderr, res.stderr
    assert manager.is_active(f"datacrumbs@{jobid}.service") == "active"
    assert f'DATACRUMBS_CGROUP="{node_parent / unit}"' in \
        (site.run_dir / f"datacrumbs-{jobid}.env").read_text()

    def in_job():
        (host_parent / unit / "cgroup.procs").write_text(str(os.getpid()))
        os.setgroups([])
        os.setgid(user1.pw_gid)
        os.setuid(user1.pw_uid)

    inside = subprocess.run(["/usr/bin/python3", "-c", WORKLOAD, str(work_dir / "in"), "40",
                             "4096"], preexec_fn=in_job, capture_output=True, text=True,
                            check=True, timeout=60, cwd="/")
    outside_pid, _ = run_workload(user1, work_dir, n=30)
    assert epilog(site, env).returncode == 0
    assert_clean(manager, site, str(jobid))
    ops = [e for e in read_trace(trace_path(site, user1.pw_name, str(jobid)))
           if e.get("ph") == "X"]
    inside_pid = int(inside.stdout.split()[0])
    assert {e["pid"] for e in ops} == {inside_pid}
    assert len([e for e in ops if e["name"] == "write" and e["args"].get("size") == 4096]) == 40
