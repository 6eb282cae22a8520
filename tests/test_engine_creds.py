"""A trace for an ordinary user never holds what that user could not ptrace.

A set-uid (or set-gid) program the user starts inside the job runs with root's
credentials: its reads of root-only files must not land in the user's trace, and
nothing of its memory (file names, FILE structs) may be read. Real eBPF, real test
users, a real set-uid binary built here: the canary is a root-only file with a
random name that must never appear, while the same user's ordinary process next to
it must be traced (else the test could not fail).
"""

from __future__ import annotations

import os
import secrets
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from datacrumbs.tracer.engine import Engine, EngineError
from datacrumbs.tracer.scope import Scope

from fixtures.tracing import collect

pytestmark = pytest.mark.ebpf

LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"
PROBES = [
    {"id": "posix.openat", "kind": "syscall", "target": "openat", "category": "POSIX",
     "args": {"fd": 0, "path": 1, "flags": 2}, "bytes": None},
    {"id": "posix.read", "kind": "syscall", "target": "read", "category": "POSIX",
     "args": {"fd": 0, "count": 2}, "bytes": "ret"},
    {"id": "posix.close", "kind": "syscall", "target": "close", "category": "POSIX",
     "args": {"fd": 0}, "bytes": None},
    {"id": "stdio.fopen", "kind": "uprobe", "target": "fopen", "library": LIBC,
     "category": "STDIO", "args": {"path": 0}, "bytes": None},
    {"id": "stdio.fread", "kind": "uprobe", "target": "fread", "library": LIBC,
     "category": "STDIO", "args": {"size": 1, "nmemb": 2, "stream": 3}, "bytes": "ret*arg1"},
    {"id": "tp.read", "kind": "tracepoint", "target": "syscalls:sys_enter_read",
     "category": "TP", "args": {}, "bytes": None},
]
OPENAT, READ, CLOSE, FOPEN, FREAD, TP_READ = range(len(PROBES))

# One program, five roles (argv[1]):
#   user FILE MARKER [nowait]     the user's own I/O: open MARKER; open+read, fopen+fread FILE
#   hide FILE HIDDEN SEEN         wait for "g"; not dumpable: open HIDDEN; dumpable again: open
#                                 SEEN, then as user
#   launch PROG MARKER ROLE ...   wait for "g", open MARKER, exec PROG ROLE ...
#   secret CANARY FILE            (set-uid/set-gid copy) read the root-only CANARY, then FILE
#   drop CANARY FILE PROG MARKER  as secret, then a child drops every privilege for good and
#                                 execs PROG user FILE MARKER nowait; waits for it
PROGRAM = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <grp.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

static char buf[4096];

static int read_file(const char *path, int must)
{
	int fd = open(path, O_RDONLY);
	FILE *f;

	if (fd < 0)
		return must ? 12 : 0;
	while (read(fd, buf, sizeof(buf)) > 0)
		;
	close(fd);
	f = fopen(path, "r");
	if (!f)
		return must ? 13 : 0;
	while (fread(buf, 1, 7, f) > 0)
		;
	fclose(f);
	return 0;
}

static int touch(const char *marker)
{
	int fd = open(marker, O_RDONLY);

	if (fd < 0)
		return 14;
	return close(fd) ? 15 : 0;
}

int main(int argc, char **argv)
{
	char go;
	int rc;

	if (argc < 4)
		return 2;
	if (!strcmp(argv[1], "user")) {
		if (argc < 5 && read(0, &go, 1) != 1)
			return 3;
		if ((rc = touch(argv[3])))
			return rc;
		return read_file(argv[2], 1);
	}
	if (!strcmp(argv[1], "hide") && argc >= 5) {
		if (read(0, &go, 1) != 1)
			return 3;
		if (prctl(PR_SET_DUMPABLE, 0) || (rc = touch(argv[3])))
			return 16;
		if (prctl(PR_SET_DUMPABLE, 1) || (rc = touch(argv[4])))
			return 17;
		return read_file(argv[2], 1);
	}
	if (!strcmp(argv[1], "keepcaps") && argc >= 7) {
		/* root becomes uid/gid argv[2]/argv[3] keeping its permitted capabilities
		 * (argv[6] = 1) or not, then is made dumpable again: only the capabilities
		 * tell it from the user's own processes */
		uid_t u = (uid_t)atoi(argv[2]);
		gid_t g = (gid_t)atoi(argv[3]);

		if (prctl(PR_SET_KEEPCAPS, atoi(argv[6])) || setgroups(0, NULL) ||
		    setresgid(g, g, g) || setresuid(u, u, u) || prctl(PR_SET_DUMPABLE, 1))
			return 18;
		if (read(0, &go, 1) != 1)
			return 3;
		if ((rc = touch(argv[4])))
			return rc;
		return read_file(argv[5], 1);
	}
	if (!strcmp(argv[1], "launch")) {
		if (read(0, &go, 1) != 1)
			return 3;
		if ((rc = touch(argv[3])))
			return rc;
		argv[3] = argv[2];
		execv(argv[2], argv + 3);
		return 4;
	}
	/* secret and drop: the privileged copy; reading the canary proves the privilege */
	if ((rc = read_file(argv[2], 1)) || (rc = read_file(argv[3], 1)))
		return rc;
	if (!strcmp(argv[1], "drop") && argc >= 6) {
		pid_t pid = fork();
		int status;

		if (pid < 0)
			return 5;
		if (pid == 0) {
			gid_t g = getgid();
			uid_t u = getuid();

			if (setresgid(g, g, g) || setresuid(u, u, u))
				_exit(6);
			execl(argv[4], argv[4], "user", argv[3], argv[5], "nowait", (char *)NULL);
			_exit(7);
		}
		if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status))
			return 8;
		return WEXITSTATUS(status);
	}
	return 0;
}
"""


def _suid_capable_dir(candidates) -> Path:
    """A directory on a file system that honours set-uid bits (not mounted nosuid)."""
    for d in candidates:
        if not os.statvfs(d).f_flag & os.ST_NOSUID:
            return Path(d)
    raise AssertionError(f"every candidate directory is on a nosuid mount: {candidates}")


@pytest.fixture(scope="module")
def creds_setup(shared_dir, test_users):
    """Binaries (ordinary 0755, set-uid root 4755, set-gid root 2755, and one with the file
    capability CAP_DAC_READ_SEARCH: same uid, a capability), canaries only root can read
    (0600; 0640 root:root for the set-gid copy), a file the user may read, all with
    random names under a directory the user can reach."""
    base = _suid_capable_dir([shared_dir, "/var/tmp"])
    d = base / f"creds-{secrets.token_hex(6)}"
    d.mkdir()
    d.chmod(0o755)
    src = d / "credprobe.c"
    src.write_text(PROGRAM)
    cc = shutil.which("gcc") or shutil.which("cc")
    ordinary = d / "credprobe"
    subprocess.run([cc, "-O2", "-o", str(ordinary), str(src)], check=True, capture_output=True,
                   timeout=120)
    ordinary.chmod(0o755)
    suid, sgid = d / "credprobe-suid", d / "credprobe-sgid"
    for copy, mode in ((suid, 0o4755), (sgid, 0o2755)):
        shutil.copy(ordinary, copy)
        os.chown(copy, 0, 0)
        copy.chmod(mode)
    fcap = d / "credprobe-fcap"
    shutil.copy(ordinary, fcap)
    fcap.chmod(0o755)
    # struct vfs_cap_data, revision 2, effective: permitted = CAP_DAC_READ_SEARCH (2)
    os.setxattr(fcap, "security.capability", struct.pack("<5I", 0x02000001, 1 << 2, 0, 0, 0))
    token = secrets.token_hex(16)
    canary_u = d / f"canary-{secrets.token_hex(8)}"
    canary_g = d / f"canary-{secrets.token_hex(8)}"
    for canary, mode in ((canary_u, 0o600), (canary_g, 0o640)):
        canary.write_text(token)
        os.chown(canary, 0, 0)
        canary.chmod(mode)
    public = d / f"public-{secrets.token_hex(8)}"
    public.write_text("anyone may read this\n")
    public.chmod(0o644)
    yield {"dir": d, "ordinary": ordinary, "suid": suid, "sgid": sgid, "fcap": fcap,
           "canary_u": canary_u, "canary_g": canary_g, "public": public}
    shutil.rmtree(d, ignore_errors=True)


def _marker(setup, what: str) -> Path:
    m = setup["dir"] / f"marker-{what}-{secrets.token_hex(6)}"
    m.write_text("")
    m.chmod(0o644)
    return m


def _scope(kind: str, user, cgroup, pids) -> Scope:
    if kind == "user":
        return Scope.for_user(user.pw_uid)
    if kind == "cgroup":
        for pid in pids:
            (cgroup / "cgroup.procs").write_text(str(pid))
        return Scope.for_cgroup(cgroup)
    return Scope.for_pids(pids)


def _run(setup, bpf_object, workloads, user, scope_kind, cgroup, *, privileged: str,
         role: str = "secret", job_uid="user"):
    """The user's launcher execs the privileged copy; the user's ordinary process runs
    beside it. Returns (events, paths, launcher pid, ordinary pid, markers)."""
    canary = setup["canary_u"] if privileged == "suid" else setup["canary_g"]
    m_launch, m_user, m_drop = (_marker(setup, w) for w in ("launch", "user", "drop"))
    launcher = workloads([setup["ordinary"], "launch", setup[privileged], m_launch, role, canary,
                          setup["public"], setup["ordinary"], m_drop], user=user)
    ordinary = workloads([setup["ordinary"], "user", setup["public"], m_user], user=user)
    scope = _scope(scope_kind, user, cgroup, [launcher.pid, ordinary.pid])
    uid = user.pw_uid if job_uid == "user" else job_uid
    with Engine(PROBES, scope, bpf_object=bpf_object, job_uid=uid) as eng:
        report = eng.attach()
        assert len(report.attached) == len(PROBES), report.refused
        launcher.go()
        ordinary.go()
        events, paths = collect(eng, [launcher, ordinary])
        names_lost = eng.names_lost()
    assert names_lost == 0
    return events, paths, launcher.pid, ordinary.pid, (m_launch, m_user, m_drop), canary


def _opened(events, paths, pid) -> list[str]:
    return [paths.get(i) for i in np.flatnonzero((events["pid"] == pid)
                                                 & np.isin(events["probe"], [OPENAT, FOPEN]))]


def _check_ordinary_traced(events, paths, pid, setup, marker):
    """The same user's ordinary process: every probe kind saw it."""
    mine = events[events["pid"] == pid]
    assert {OPENAT, READ, CLOSE, FOPEN, FREAD, TP_READ} <= set(mine["probe"].tolist())
    opened = _opened(events, paths, pid)
    # open, fopen and the openat under fopen
    assert str(marker) in opened and opened.count(str(setup["public"])) == 3
    assert mine[mine["probe"] == FREAD]["fd"].max() >= 3, "the FILE's fd was read"


def _check_privileged_absent(events, paths, launcher_pid, canary, m_launch):
    """Nothing of the privileged program: its pid has only the launcher's own two
    operations before the exec, and the canary is named nowhere."""
    assert all(canary.name not in p for p in paths.values()), "root's file is in the trace"
    theirs = events[events["pid"] == launcher_pid]
    assert sorted(theirs["probe"].tolist()) == [OPENAT, CLOSE], theirs
    assert _opened(events, paths, launcher_pid) == [str(m_launch)]


@pytest.mark.parametrize("privileged", ["suid", "sgid", "fcap"])
@pytest.mark.parametrize("scope_kind", ["user", "cgroup", "pids"])
def test_set_id_program_of_the_user_is_never_traced(bpf_object, tracefs, workloads, user1,
                                                    cgroup, creds_setup, scope_kind, privileged):
    events, paths, launcher, ordinary, (m_launch, m_user, _), canary = _run(
        creds_setup, bpf_object, workloads, user1, scope_kind, cgroup, privileged=privileged)
    _check_privileged_absent(events, paths, launcher, canary, m_launch)
    _check_ordinary_traced(events, paths, ordinary, creds_setup, m_user)
    assert set(events["pid"].tolist()) >= {launcher, ordinary}
    if scope_kind != "user":      # other processes of dctest1 may run elsewhere
        assert set(events["pid"].tolist()) == {launcher, ordinary}


@pytest.mark.parametrize("scope_kind", ["user", "cgroup", "pids"])
def test_child_that_drops_privilege_and_execs_is_traced_again(bpf_object, tracefs, workloads,
                                                              user1, cgroup, creds_setup,
                                                              scope_kind):
    """flux-imp's pattern: a set-uid root member forks; the child gives up root for good
    (setresuid to the user) and execs the job's program, which is the user's again. In
    the pid-tree scope the child is a member although its parent was out of scope."""
    events, paths, launcher, ordinary, (m_launch, m_user, m_drop), canary = _run(
        creds_setup, bpf_object, workloads, user1, scope_kind, cgroup, privileged="suid",
        role="drop")
    _check_privileged_absent(events, paths, launcher, canary, m_launch)
    _check_ordinary_traced(events, paths, ordinary, creds_setup, m_user)
    dropped = {int(events["pid"][i]) for i, p in paths.items() if p == str(m_drop)}
    assert len(dropped) == 1 and dropped.isdisjoint({launcher, ordinary}), dropped
    (child,) = dropped
    _check_ordinary_traced(events, paths, child, creds_setup, m_drop)
    # between its setresuid and its exec the child still held root's memory: nothing
    # from then appears, so its first operation is the exec'd program's loader
    assert _opened(events, paths, child)[0] == "/etc/ld.so.cache"


def test_without_the_check_the_canary_is_seen(bpf_object, tracefs, workloads, user1, cgroup,
                                              creds_setup):
    """Control: root's own trace (no job user) does see the set-uid program, so the
    assertions above would catch a leak."""
    events, paths, launcher, _, _, canary = _run(
        creds_setup, bpf_object, workloads, user1, "cgroup", cgroup, privileged="suid",
        job_uid=None)
    assert str(canary) in _opened(events, paths, launcher)


@pytest.mark.parametrize("keep", [1, 0])
def test_capabilities_alone_keep_a_process_out(bpf_object, tracefs, workloads, user1,
                                               creds_setup, keep):
    """A process with every uid and gid the user's and a dumpable memory, which still holds
    root's permitted capabilities (PR_SET_KEEPCAPS), is not the user's to see; the same
    process without them is (so the test can fail)."""
    marker = _marker(creds_setup, f"caps{keep}")
    child = workloads([creds_setup["ordinary"], "keepcaps", user1.pw_uid, user1.pw_gid, marker,
                       creds_setup["public"], keep])
    with Engine(PROBES, Scope.for_pids([child.pid]), bpf_object=bpf_object,
                job_uid=user1.pw_uid) as eng:
        eng.attach()
        child.go()
        events, paths = collect(eng, [child])
    assert child.proc.returncode == 0
    opened = _opened(events, paths, child.pid)
    if keep:
        assert opened == [] and not len(events[events["pid"] == child.pid])
    else:
        assert opened[0] == str(marker) and opened.count(str(creds_setup["public"])) == 3


def test_job_uid_is_validated(bpf_object, user1, user2):
    write = PROBES[:1]
    for bad in (-1, True, "1001", 1 << 32):
        with pytest.raises(EngineError, match="not a valid user id"):
            Engine(write, Scope.for_user(user1.pw_uid), bpf_object=bpf_object, job_uid=bad)
    with pytest.raises(EngineError, match="cannot have the scope"):
        Engine(write, Scope.for_user(user1.pw_uid), bpf_object=bpf_object, job_uid=user2.pw_uid)
    assert not Engine(write, Scope.for_user(user1.pw_uid), bpf_object=bpf_object,
                      job_uid=0).check_creds


def test_a_memory_made_undumpable_is_not_read_until_dumpable_again(bpf_object, tracefs,
                                                                   workloads, user1, creds_setup):
    """prctl(PR_SET_DUMPABLE, 0) (ssh-agent, gpg-agent) changes no credential; the
    cached decision must still follow it, both ways."""
    hidden, seen = _marker(creds_setup, "hidden"), _marker(creds_setup, "seen")
    child = workloads([creds_setup["ordinary"], "hide", creds_setup["public"], hidden, seen],
                      user=user1)
    with Engine(PROBES, Scope.for_pids([child.pid]), bpf_object=bpf_object,
                job_uid=user1.pw_uid) as eng:
        eng.attach()
        child.go()
        events, paths = collect(eng, [child])
    opened = _opened(events, paths, child.pid)
    assert str(hidden) not in opened
    assert opened[0] == str(seen) and opened.count(str(creds_setup["public"])) == 3


def test_the_daemon_checks_credentials_for_the_jobs_user(site, bpf_object, tracefs, workloads,
                                                         user1, creds_setup):
    """`datacrumbs run` end to end: the job user's trace has her ordinary process and
    the launcher, never the set-uid program's root-only file."""
    import json
    import signal
    import sys
    import time

    from datacrumbs.probes.catalog import load_catalog, select_probes
    from datacrumbs.probes.document import build_document, write_document
    from datacrumbs.signing.keys import KeyStore

    store = KeyStore.from_config(site)
    store.init()
    doc = build_document(select_probes(load_catalog(site), ["posix"]), owner_uid=user1.pw_uid,
                         owner_user=user1.pw_name, sets=["posix"])
    probes = write_document(site.prefix.parent / "creds-probes.json.gz", store.sign(doc))
    datacrumbs = str(Path(sys.executable).with_name("datacrumbs"))
    daemon = subprocess.Popen([datacrumbs, "run", str(probes), "5150", user1.pw_name],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        ready = site.run_dir / "datacrumbs-5150.ready"
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert daemon.poll() is None, daemon.stderr.read().decode()
            assert time.monotonic() < deadline, "the daemon never became ready"
            time.sleep(0.02)
        m_launch, m_user = _marker(creds_setup, "launch"), _marker(creds_setup, "user")
        canary, public = creds_setup["canary_u"], creds_setup["public"]
        launcher = workloads([creds_setup["ordinary"], "launch", creds_setup["suid"], m_launch,
                              "secret", canary, public], user=user1)
        ordinary = workloads([creds_setup["ordinary"], "user", public, m_user], user=user1)
        launcher.go().wait()
        ordinary.go().wait()
        time.sleep(0.3)
        daemon.send_signal(signal.SIGINT)
        _, err = daemon.communicate(timeout=60)
        assert daemon.returncode == 0, err.decode()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.communicate()
    (path,) = (Path(site.trace_dir.format(user=user1.pw_name))).glob("*5150*.summary.json")
    files = json.loads(path.read_text())["files"]
    assert str(m_launch) in files and str(m_user) in files
    assert files[str(public)]["count"] >= 3          # the ordinary process: open, fopen, close
    assert not [f for f in files if canary.name in f], "root's file is in the user's trace"
