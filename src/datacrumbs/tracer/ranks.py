"""The rank of a job's process, read from the environment its launcher gave it.

Flux gives each task FLUX_TASK_RANK; MPI launchers give PMI_RANK/PMIX_RANK (MPICH,
PMIx), OMPI_COMM_WORLD_RANK (Open MPI), MV2_COMM_WORLD_RANK (MVAPICH) and SLURM_PROCID
(srun). The report labels process rows with it, as Darshan's DXT does ranks. Only a small
decimal number is ever taken from /proc/<pid>/environ: nothing else of a job's
environment reaches the trace.
"""

from __future__ import annotations

import os

from . import procdir

# in order of precedence: the MPI world rank is what the analyst reads a heatmap by
RANK_VARIABLES = (b"PMIX_RANK", b"PMI_RANK", b"OMPI_COMM_WORLD_RANK", b"MV2_COMM_WORLD_RANK",
                  b"FLUX_TASK_RANK", b"SLURM_PROCID")
MAX_ENVIRON = 1 << 20           # bytes read at most (an environment is rarely over 100 KiB)
MAX_RANK = 10_000_000


def process_rank(pid: int, proc: str = "/proc", owner_uid: int | None = None) -> int | None:
    """The rank in ``pid``'s environment at its exec, or None (no such variable, not a
    small decimal, or the process gone). ``owner_uid``: read only while the process at
    ``pid`` is still that user's own (tracer/procdir.py: the pid may have changed hands)."""
    data = procdir.read(pid, owner_uid, _environ, proc)
    if data is None:
        return None
    found: dict[bytes, bytes] = {}
    for entry in data.split(b"\0"):
        name, eq, value = entry.partition(b"=")
        if eq and name in RANK_VARIABLES and name not in found:
            found[name] = value
    for name in RANK_VARIABLES:
        value = found.get(name)
        if value is not None and value.isdigit() and len(value) <= 8 \
                and int(value) <= MAX_RANK:
            return int(value)
    return None


def _environ(dfd: int) -> bytes:
    fd = os.open("environ", os.O_RDONLY | os.O_CLOEXEC, dir_fd=dfd)
    try:
        return os.read(fd, MAX_ENVIRON)
    finally:
        os.close(fd)
