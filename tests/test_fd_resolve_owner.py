"""A descriptor the tracer did not see opened is named from /proc only while the process
still is the job user's own.

The daemon names a descriptor opened before it attached (or received over a socket)
by reading ``/proc/<pid>/fd/<fd>`` as root when it converts the event, which is later
than the event itself. By then the job's process may have exited and its pid been
given to another user's process (pids wrap at pid_max, 32768 here; a user wraps them
in seconds), or it may have exec'd a set-uid program: root would then write that
other process's file name into the job user's trace.

Real eBPF, real test users, the real daemon: dctest1's process writes on a descriptor
it opened before the tracer started and exits; dctest2's process, holding its private
file on the same descriptor number, gets the same pid before the daemon converts the
event (the pid is placed with ns_last_pid, as root: the hostile user gets there by
wrapping pids, which only changes how often it happens). dctest2's file name must not
appear in dctest1's trace, while dctest1's own descriptor is still named when its
process lives (else the test could not fail).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from datacrumbs.tracer.engine import Engine
from datacrumbs.tracer.paths import FdPaths
from workloads import daemon_readback as rb

from test_daemon import daemons, sign_for  # noqa: F401 - fixtures and helpers reused

pytestmark = pytest.mark.ebpf
FD = 37

# the job user's process: holds its own file on FD (opened before the tracer attached),
# says so, waits for a line, writes on FD and exits at once
ALICE = ("import os, sys\n"
         f"fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o600); os.dup2(fd, {FD})\n"
         "print('open', flush=True); sys.stdin.readline()\n"
         f"os.write({FD}, b'x'); os._exit(0)\n")


def _as(user, argv, **kw):
    return subprocess.Popen(argv, user=user.pw_uid, group=user.pw_gid, extra_groups=[],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kw)


def _victim_at(pid: int, user, secret: Path) -> int:
    """``user``'s process holding ``secret`` on FD, started with pid ``pid`` (forked
    here, at once: a subprocess takes longer than the daemon's next drain)."""
    for _ in range(50):
        Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
        child = os.fork()
        if child == 0:
            try:
                os.setgroups([])
                os.setresgid(user.pw_gid, user.pw_gid, user.pw_gid)
                os.setresuid(user.pw_uid, user.pw_uid, user.pw_uid)
                os.dup2(os.open(secret, os.O_RDONLY), FD)
                time.sleep(5)
            finally:
                os._exit(0)
        if child == pid:
            return child
        os.kill(child, 9)
        os.waitpid(child, 0)
    pytest.fail(f"could not start a process with pid {pid}")


def test_a_reused_pid_does_not_name_another_users_file(site, user1, user2, daemons,
                                                      tmp_path):
    private = Path(f"/home/{user2.pw_name}/dc-private-{secrets.token_hex(6)}")
    private.parent.mkdir(exist_ok=True)
    os.chown(private.parent, user2.pw_uid, user2.pw_gid)
    private.parent.chmod(0o700)
    private.write_text("bob's\n")
    os.chown(private, user2.pw_uid, user2.pw_gid)
    private.chmod(0o600)
    # deeper than the kernel side walks (DC_WALK_MAX components): named from /proc
    work = tmp_path.joinpath("alice", *["d"] * 70)
    work.mkdir(parents=True)
    for d in [work, *work.parents]:
        if d == tmp_path:
            break
        os.chown(d, user1.pw_uid, user1.pw_gid)
    try:
        alice = _as(user1, [sys.executable, "-S", "-c", ALICE, str(work / "own.dat")])
        assert alice.stdout.readline() == b"open\n"
        d = daemons(site, sign_for(site, user1), "4343", user1.pw_name)
        d.wait_ready()
        # the same user keeps the daemon busy (events to convert), so that her write
        # below waits a little longer in the ring buffer while its pid changes hands
        noise = _as(user1, ["dd", "if=/dev/zero", "of=/dev/null", "bs=1", "count=300000"])
        time.sleep(0.3)
        alice.stdin.write(b"go\n")
        alice.stdin.flush()
        assert alice.wait(10) == 0
        victim = _victim_at(alice.pid, user2, private)
        noise.wait(60)
        time.sleep(0.5)
        # the same user's process, alive: its descriptor is still named (the test can fail)
        alive = _as(user1, [sys.executable, "-S", "-c", ALICE, str(work / "alive.dat")])
        assert alive.stdout.readline() == b"open\n"
        time.sleep(0.3)
        alive.stdin.write(b"go\n")
        alive.stdin.flush()
        assert alive.wait(10) == 0
        time.sleep(0.5)
        assert d.stop() == 0, d.stderr
        os.kill(victim, 9)
        os.waitpid(victim, 0)
        recs = rb.records(d.trace())
        names = {r["args"].get("name") for r in recs if r.get("name") == "FH"}
        writes = [r for r in recs if r.get("ph") == "X" and r.get("name") == "write"
                  and r["args"].get("fd") == FD]
        assert {w["pid"] for w in writes} >= {alice.pid}, writes
        assert str(private) not in names, "another user's file named in the job's trace"
        assert str(work / "alive.dat") in names, names
    finally:
        private.unlink(missing_ok=True)


def test_resolve_names_only_the_owners_descriptors(user1, user2, tmp_path):
    """The resolver the daemon uses, for a live process of another user: nothing."""
    private = tmp_path / "bob.dat"
    private.write_text("x")
    os.chown(private, user2.pw_uid, user2.pw_gid)
    private.chmod(0o600)
    bob = _as(user2, [sys.executable, "-S", "-c", "import os, sys, time; "
                      f"os.dup2(os.open(sys.argv[1], os.O_RDONLY), {FD}); "
                      "print('ok', flush=True); time.sleep(5)", str(private)])
    try:
        assert bob.stdout.readline() == b"ok\n"
        # without an owner (root's own tool): named; for user1's trace: not
        assert Engine.resolve_fd(bob.pid, FD) == str(private)
        assert Engine.resolve_fd(bob.pid, FD, owner_uid=user1.pw_uid) is None
        assert Engine.resolve_fd(bob.pid, FD, owner_uid=user2.pw_uid) == str(private)
        assert FdPaths(lambda p, f: Engine.resolve_fd(p, f, owner_uid=user1.pw_uid)) \
            .lookup(bob.pid, FD) is None
    finally:
        bob.kill()
        bob.wait()
