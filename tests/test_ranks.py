"""A process's rank from its launcher's variables (tracer/ranks.py): the MPI world rank
first, Flux's task rank otherwise; anything but a small decimal is no rank. The real MPI
case (MPICH's PMI_RANK under mpiexec, in the trace and the report) is in
test_mpiio_hdf5_files.py."""

from __future__ import annotations

import pytest

from datacrumbs.tracer.ranks import process_rank


def _proc(tmp_path, environ: bytes) -> str:
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "environ").write_bytes(environ)
    return str(tmp_path)


@pytest.mark.parametrize("environ, rank", [
    (b"HOME=/h\0FLUX_TASK_RANK=7\0PMI_RANK=3\0", 3),          # MPI's world rank first
    (b"FLUX_TASK_RANK=7\0", 7),
    (b"OMPI_COMM_WORLD_RANK=12\0SLURM_PROCID=1\0", 12),
    (b"PMI_RANK=-1\0", None),
    (b"PMI_RANK=3; rm -rf /\0", None),
    (b"PMI_RANK=99999999999\0", None),
    (b"PMI_RANK=\0FLUX_TASK_RANK=2\0", 2),                    # an empty one is no rank
    (b"PMI_RANKX=5\0XPMI_RANK=6\0", None),
    (b"", None),
])
def test_rank_from_the_environment(tmp_path, environ, rank):
    assert process_rank(42, _proc(tmp_path, environ)) == rank


def test_a_process_gone_or_unreadable_has_no_rank(tmp_path):
    assert process_rank(42, str(tmp_path)) is None
    assert process_rank(1 << 30) is None        # no such pid


def test_the_daemon_reads_only_the_job_users_rank(user1, user2):
    """As root, after the events: a pid that now belongs to another user's process (pids
    wrap) gives no rank to the job user's trace; the owner's own process does."""
    import os
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-S", "-c", "import time; print('ok', flush=True); "
                             "time.sleep(5)"], user=user2.pw_uid, group=user2.pw_gid,
                            extra_groups=[], env={"PMI_RANK": "7"}, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"ok\n"
        assert process_rank(proc.pid) == 7                          # root's own tools
        assert process_rank(proc.pid, owner_uid=user2.pw_uid) == 7
        assert process_rank(proc.pid, owner_uid=user1.pw_uid) is None
        assert process_rank(os.getpid(), owner_uid=user1.pw_uid) is None
    finally:
        proc.kill()
        proc.wait()
