"""The job's own processes without sdexec: the job shell Flux execs for this job
(``flux-shell <jobid>``, through ``flux-imp exec`` in multi-user instances) and what it
forks. Real eBPF: the kernel notices the exec; a shell already running is found in /proc.
Flux itself cannot run here; the argv shape is flux-core's job-exec contract
(bulk-exec/exec.c: job shell path, then the job id in decimal, last)."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from datacrumbs.config import load_config
from datacrumbs.errors import ConfigError
from datacrumbs.tracer.engine import Engine
from datacrumbs.tracer.scope import (Scope, ScopeError, is_job_shell_cmdline, scope_from_env)

OPENAT = {"id": "posix.openat", "kind": "syscall", "target": "openat", "category": "POSIX",
          "args": {"fd": 0, "path": 1, "flags": 2}, "bytes": None}


@pytest.mark.parametrize("args, matches", [
    ([b"/usr/libexec/flux/flux-shell", b"42"], True),
    ([b"flux-shell", b"42"], True),
    ([b"/usr/libexec/flux/flux-imp", b"exec", b"/usr/libexec/flux/flux-shell", b"42"], True),
    ([b"flux", b"remote", b"host", b"/x/flux-shell", b"--target-rank=3", b"42"], True),
    ([b"/usr/libexec/flux/flux-shell", b"421"], False),          # another job
    ([b"/usr/libexec/flux/flux-shell", b"42", b"x"], False),     # the id is not last
    ([b"/usr/libexec/flux/not-flux-shell", b"42"], False),
    ([b"/usr/libexec/flux/flux-shell.sh", b"42"], False),
    ([b"42"], False),
])
def test_which_command_lines_are_the_jobs_shell(args, matches):
    assert is_job_shell_cmdline(args, "42", "flux-shell") is matches


def test_scope_from_env_and_its_refusals():
    scope = scope_from_env(1000, {"DATACRUMBS_JOB_SHELL": "flux-shell"}, "42")
    assert (scope.kind, scope.jobid, scope.shell) == ("job_shell", "42", "flux-shell")
    for bad in ("../flux-shell", "/usr/libexec/flux/flux-shell", "x" * 64, "a b", "sh;rm"):
        with pytest.raises(ConfigError, match="DATACRUMBS_JOB_SHELL"):
            scope_from_env(1000, {"DATACRUMBS_JOB_SHELL": bad}, "42")
    with pytest.raises(ScopeError):
        Scope.for_job_shell("not-a-job", "flux-shell")


def test_config_refuses_a_job_shell_that_is_not_a_file_name(tmp_path):
    cfg = tmp_path / "datacrumbs.toml"
    cfg.write_text('[service]\njob_shell = "/bin/sh -c evil"\n')
    with pytest.raises(ConfigError, match="job_shell"):
        load_config(cfg)
    cfg.write_text('[service]\njob_shell = ""\n')
    assert load_config(cfg).job_shell == ""


@pytest.mark.ebpf
def test_only_the_jobs_shell_tree_is_traced(bpf_object, tracefs, tmp_path):
    """A shell of job 4242 already running before attach (found in /proc) and one
    started after (noticed at exec) are traced with their children; a shell of job 42421
    and a plain process are not."""
    shell = tmp_path / "flux-shell"
    shutil.copy("/bin/dash", shell)
    marker = {k: tmp_path / k for k in ("early", "late", "child", "other", "plain")}
    for m in marker.values():
        m.write_text("x")
    early = subprocess.Popen([str(shell), "-c", f'read x; cat {marker["early"]}', "--", "4242"],
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    time.sleep(0.2)
    names = set()
    with Engine([OPENAT], Scope.for_job_shell("4242"), bpf_object=bpf_object) as eng:
        eng.attach()
        early.communicate(b"go\n", timeout=30)
        subprocess.run([str(shell), "-c", f'cat {marker["late"]}; (cat {marker["child"]}); true',
                        "--", "4242"], check=True, stdout=subprocess.DEVNULL, timeout=30)
        subprocess.run([str(shell), "-c", f'cat {marker["other"]}', "--", "42421"], check=True,
                       stdout=subprocess.DEVNULL, timeout=30)
        subprocess.run(["cat", str(marker["plain"])], check=True, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            batch = eng.poll(100)
            if batch is not None:
                names.update(batch.paths.values())
    seen = {k for k, m in marker.items() if str(m) in names}
    assert seen == {"early", "late", "child"}
