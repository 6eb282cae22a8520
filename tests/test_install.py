"""`datacrumbs install|uninstall --prefix`: the layout, the seed's deployment steps, exact removal."""

from __future__ import annotations

import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from datacrumbs.config import load_config
from datacrumbs.flux.install import InstallError, install, uninstall

DATACRUMBS = str(Path(sys.executable).with_name("datacrumbs"))
EXPECTED = [
    "etc/datacrumbs/datacrumbs.toml",
    "etc/datacrumbs/systemd/datacrumbs@.service",
    "etc/datacrumbs/systemd/datacrumbs_sign_probes.service",
    "etc/datacrumbs/flux/cli/plugins/datacrumbs.py",
    "etc/datacrumbs/flux/job-manager.toml.example",
    "etc/datacrumbs/sign-policy.toml",
    "sbin/datacrumbs_service_run.sh",
    "sbin/datacrumbs_service_stop.sh",
    "bin/datacrumbs", "bin/datacrumbs_sign_probes", "bin/datacrumbs_probe_configurator",
    "bin/datacrumbs_service_wrapper", "bin/datacrumbs-python",
    "share/datacrumbs/install-manifest.txt",
]
EXPECTED_DIRS = ["etc/datacrumbs/keys", "etc/datacrumbs/probe-sets", "lib/datacrumbs"]


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


def cli(*args):
    return subprocess.run([DATACRUMBS, *args], capture_output=True, text=True, timeout=300)


def test_layout(tmp_path):
    prefix = tmp_path / "opt/datacrumbs"
    report = install(prefix, build_bpf=False)
    for rel in EXPECTED:
        assert (prefix / rel).exists(), rel
    for rel in EXPECTED_DIRS:
        assert (prefix / rel).is_dir(), rel
    for rel in ("etc/datacrumbs/systemd/datacrumbs@.service", "sbin/datacrumbs_service_run.sh",
                "sbin/datacrumbs_service_stop.sh", "etc/datacrumbs/flux/job-manager.toml.example",
                "etc/datacrumbs/systemd/datacrumbs_sign_probes.service"):
        text = (prefix / rel).read_text()
        assert "@PREFIX@" not in text and "@RUN_DIR@" not in text and str(prefix) in text, rel
    for rel in ("sbin/datacrumbs_service_run.sh", "sbin/datacrumbs_service_stop.sh",
                "bin/datacrumbs-python"):
        assert (prefix / rel).stat().st_mode & 0o111 == 0o111, rel
    plugin = resources.files("datacrumbs") / "data/flux/datacrumbs.py"
    assert (prefix / "etc/datacrumbs/flux/cli/plugins/datacrumbs.py").read_bytes() == \
        plugin.read_bytes()
    cfg = load_config(prefix / "etc/datacrumbs/datacrumbs.toml")
    assert cfg.prefix == prefix and cfg.public_key_dir == prefix / "etc/datacrumbs/keys"
    assert cfg.bpf_object == prefix / "lib/datacrumbs/datacrumbs.bpf.o"
    assert cfg.run_dir == Path("/run/datacrumbs")
    unit = (prefix / "etc/datacrumbs/systemd/datacrumbs@.service").read_text()
    assert "EnvironmentFile=/run/datacrumbs/datacrumbs-%i.env" in unit
    assert "TimeoutStopSec=60s" in unit
    # the bin entries run this environment's commands
    out = subprocess.run([str(prefix / "bin/datacrumbs"), "--version"], capture_output=True,
                         text=True)
    assert out.returncode == 0 and "datacrumbs" in out.stdout
    out = subprocess.run([str(prefix / "bin/datacrumbs-python"), "-c",
                          "import datacrumbs.flux.prolog as p; print(p.__name__)"],
                         capture_output=True, text=True)
    assert out.stdout.strip() == "datacrumbs.flux.prolog", out.stderr
    assert set(map(str, report.installed)) >= {str(prefix / r) for r in EXPECTED[:-1]}


def test_unit_takes_run_dir_and_timeouts_from_an_existing_config(site):
    text = site.source.read_text().replace("stop_timeout = 60.0", "stop_timeout = 90.0")
    site.source.write_text(text)
    report = install(site.prefix, build_bpf=False)
    assert site.source.read_text() == text  # never overwritten
    assert any("datacrumbs.toml exists; kept" in note for note in report.kept)
    unit = (site.prefix / "etc/datacrumbs/systemd/datacrumbs@.service").read_text()
    assert f"EnvironmentFile={site.run_dir}/datacrumbs-%i.env" in unit
    assert "TimeoutStopSec=90s" in unit and "TimeoutStartSec=30s" in unit


def test_uninstall_removes_exactly_what_was_installed(tmp_path):
    prefix = tmp_path / "prefix"
    (prefix / "etc").mkdir(parents=True)
    (prefix / "etc/site-notes.txt").write_text("the admin's own file\n")
    before = tree(prefix)
    install(prefix, build_bpf=False)
    install(prefix, build_bpf=False)  # a reinstall (upgrade) is recorded once
    manifest = (prefix / "share/datacrumbs/install-manifest.txt").read_text().splitlines()
    assert len(manifest) == len(set(manifest))
    report = uninstall(prefix)
    assert tree(prefix) == before
    assert report.kept == []
    with pytest.raises(InstallError, match="nothing was installed"):
        uninstall(prefix)


def test_uninstall_keeps_admin_edits_and_keys(tmp_path):
    prefix = tmp_path / "prefix"
    install(prefix, build_bpf=False)
    config = prefix / "etc/datacrumbs/datacrumbs.toml"
    config.write_text(config.read_text().replace("stop_timeout = 60.0", "stop_timeout = 5.0"))
    key = prefix / "etc/datacrumbs/keys/0123456789abcdef.pub"
    key.write_text("AAAA\n")
    report = uninstall(prefix)
    assert config.exists() and key.exists()
    notes = "\n".join(report.kept)
    assert f"{config} was changed since install; left as it is" in notes
    assert "keys is not empty (0123456789abcdef.pub)" in notes
    assert tree(prefix) == {"etc", "etc/datacrumbs", "etc/datacrumbs/datacrumbs.toml",
                            "etc/datacrumbs/keys", "etc/datacrumbs/keys/0123456789abcdef.pub"}


@pytest.mark.parametrize("prefix", ["relative/prefix", "/opt/data crumbs", "/opt/x;y",
                                    "/opt/$(id)", "/opt/../etc"])
def test_unsafe_prefix_is_refused_before_writing(prefix, tmp_path):
    with pytest.raises(InstallError, match="must be an absolute path"):
        install(Path(prefix), build_bpf=False)
    assert not Path("/opt/data crumbs").exists() and not Path("/opt/x;y").exists()


def test_foreign_file_in_the_way_is_not_clobbered(tmp_path):
    prefix = tmp_path / "prefix"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin/datacrumbs").write_text("#!/bin/sh\necho mine\n")
    with pytest.raises(InstallError, match="was not installed by datacrumbs"):
        install(prefix, build_bpf=False)
    assert (prefix / "bin/datacrumbs").read_text() == "#!/bin/sh\necho mine\n"


@pytest.mark.systemd
def test_seed_deployment_steps_work_as_written(tmp_path, systemd_manager):
    prefix = tmp_path / "prefix"
    tmp_path.chmod(0o755)
    install(prefix, build_bpf=False)
    m = systemd_manager
    try:
        for unit in ("datacrumbs@.service", "datacrumbs_sign_probes.service"):
            res = m.run("ln", "-sf", f"{prefix}/etc/datacrumbs/systemd/{unit}",
                        f"/etc/systemd/system/{unit}")
            assert res.returncode == 0, res.stderr
        assert m.systemctl("daemon-reload").returncode == 0
        for unit in ("datacrumbs@77.service", "datacrumbs_sign_probes.service"):
            show = m.systemctl("show", "-p", "LoadState", "-p", "FragmentPath", unit).stdout
            assert "LoadState=loaded" in show, show
            assert f"{prefix}/etc/datacrumbs/systemd/" in show or "/etc/systemd/system/" in show
        cat = m.systemctl("cat", "datacrumbs@77.service").stdout
        assert f"ExecStart={prefix}/bin/datacrumbs run" in cat
    finally:
        m.run("rm", "-f", "/etc/systemd/system/datacrumbs@.service",
              "/etc/systemd/system/datacrumbs_sign_probes.service")
        m.systemctl("daemon-reload")


def test_cli_install_with_bpf_then_uninstall(tmp_path, tracefs):
    prefix = tmp_path / "prefix"
    res = cli("install", "--prefix", str(prefix))
    assert res.returncode == 0, res.stderr
    obj = prefix / "lib/datacrumbs/datacrumbs.bpf.o"
    scan = obj.with_name("datacrumbs-scan.so")     # the report's line scanner, beside it
    assert obj.read_bytes()[:4] == b"\x7fELF" and scan.read_bytes()[:4] == b"\x7fELF"
    assert f"installed {obj}" in res.stdout and "daemon-reload" in res.stdout
    assert f"installed {scan}" in res.stdout
    fold = obj.with_name("datacrumbs-fold.so")     # and the report's stream fold
    assert fold.read_bytes()[:4] == b"\x7fELF" and f"installed {fold}" in res.stdout
    res = cli("uninstall", "--prefix", str(prefix))
    assert res.returncode == 0, res.stderr
    assert f"removed {obj}" in res.stdout and f"removed {scan}" in res.stdout
    assert f"removed {fold}" in res.stdout
    assert not prefix.exists()
    res = cli("uninstall", "--prefix", str(prefix))
    assert res.returncode == 1
    assert res.stderr.startswith("datacrumbs: error: ") and "nothing was installed" in res.stderr


def test_job_manager_example_runs_perilog_on_every_rank(tmp_path):
    import tomllib

    prefix = tmp_path / "prefix"
    install(prefix, build_bpf=False)
    text = (prefix / "etc/datacrumbs/flux/job-manager.toml.example").read_text()
    whole = tomllib.loads(text)
    conf = whole["job-manager"]
    for phase in ("prolog", "epilog"):
        assert conf[phase]["per-rank"] is True
        # no command: Flux runs prolog.d/epilog.d through its configured IMP; flux-imp
        # itself is not on the broker's PATH (a real multi-user Flux drained every node)
        assert "command" not in conf[phase]
    # root must be able to read the job's jobspec in a multi-user instance
    assert whole["access"] == {"allow-root-owner": True}
    assert f"{prefix}/sbin/datacrumbs_service_run.sh" in text


@pytest.mark.parametrize("script", ["sbin/datacrumbs_service_run.sh",
                                    "sbin/datacrumbs_service_stop.sh"])
def test_installed_perilog_scripts_honour_datacrumbs_config(tmp_path, script):
    """A site that points DATACRUMBS_CONFIG elsewhere (in the broker's environment) gets
    that configuration, not the prefix's; without it, the prefix's."""
    prefix = tmp_path / "opt/datacrumbs"
    install(prefix, build_bpf=False)
    elsewhere = tmp_path / "site" / "missing.toml"
    env = {"PATH": "/usr/bin:/bin", "FLUX_JOB_ID": "1234", "FLUX_JOB_USERID": "0",
           "DATACRUMBS_CONFIG": str(elsewhere)}
    res = subprocess.run([str(prefix / script)], env=env, capture_output=True, text=True,
                         timeout=60)
    assert f"configuration file {elsewhere} does not exist" in res.stderr, res.stderr
    env.pop("DATACRUMBS_CONFIG")
    res = subprocess.run([str(prefix / script)], env=env, capture_output=True, text=True,
                         timeout=60)
    assert "configuration file" not in res.stderr, res.stderr


def test_signing_unit_may_write_where_the_config_puts_socket_and_audit_log(tmp_path):
    prefix = tmp_path / "opt/datacrumbs"
    config = prefix / "etc/datacrumbs/datacrumbs.toml"
    config.parent.mkdir(parents=True)
    config.write_text('[signing]\nsocket_path = "/run/site-sign/sign.sock"\n'
                      'audit_log = "/srv/datacrumbs-audit/sign-audit.log"\n')
    install(prefix, build_bpf=False)
    unit = (prefix / "etc/datacrumbs/systemd/datacrumbs_sign_probes.service").read_text()
    lines = [line for line in unit.splitlines() if line.startswith("ReadWritePaths=")]
    assert lines == ["ReadWritePaths=-/run/site-sign -/srv/datacrumbs-audit"]


def _recording_python(prefix: Path, marker: Path) -> None:
    """bin/datacrumbs-python replaced by a stand-in that only records that it ran."""
    stand_in = prefix / "bin/datacrumbs-python"
    stand_in.unlink()
    stand_in.write_text(f'#!/bin/sh\necho "$@" >> {marker}\n')
    stand_in.chmod(0o755)


def test_untraced_job_never_starts_python(tmp_path):
    """The installed prolog and epilog of a job without tracing exit 0 from the shell: one
    `flux job info` (the prolog), a glob of the run dir (the epilog). A job whose jobspec
    names datacrumbs, an env file in the run dir, or metadata given directly take the full
    (Python) path. bench/bench_perilog.py measures what the fast path saves."""
    prefix = tmp_path / "opt/datacrumbs"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = prefix / "etc/datacrumbs/datacrumbs.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'[paths]\nrun_dir = "{run_dir}"\n')
    install(prefix, build_bpf=False)
    marker = tmp_path / "python-ran"
    _recording_python(prefix, marker)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    jobspec = tmp_path / "jobspec.json"
    (bindir / "flux").write_text(f'#!/bin/sh\n[ "$1 $2 $4" = "job info jobspec" ] && '
                                 f'exec cat {jobspec}\nexit 1\n')
    (bindir / "flux").chmod(0o755)
    env = {"PATH": f"{bindir}:/usr/sbin:/usr/bin:/sbin:/bin", "FLUX_JOB_ID": "\u01922kP8DU5B",
           "FLUX_JOB_USERID": "1001"}

    def run(script, **extra):
        marker.unlink(missing_ok=True)
        res = subprocess.run([str(prefix / "sbin" / script)], env={**env, **extra},
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0 and res.stderr == "", res.stderr
        return marker.exists()

    prolog, epilog = "datacrumbs_service_run.sh", "datacrumbs_service_stop.sh"
    jobspec.write_text('{"tasks": [{"command": ["hostname"]}], "attributes": {"system": {}}}')
    assert run(prolog) is False and run(epilog) is False
    jobspec.write_text('{"attributes": {"system": {"datacrumbs": {"enable": "yes"}}}}')
    assert run(prolog) is True
    jobspec.unlink()                                   # flux job info fails: Python decides
    assert run(prolog) is True
    assert run(prolog, DATACRUMBS_JOB_METADATA="{}") is True
    (run_dir / "datacrumbs-3859459443726.env").write_text("")  # a tracer may run here
    assert run(epilog) is True
    (run_dir / "datacrumbs-3859459443726.env").unlink()
    assert run(epilog, DATACRUMBS_CONFIG=str(config)) is True  # run_dir may be elsewhere
