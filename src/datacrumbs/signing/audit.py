"""The signing service's append-only record of every grant and refusal.

One JSON object per line. Each line is written with a single ``write`` on a
descriptor opened with ``O_APPEND`` and synced before the reply goes out, so
concurrent decisions never interleave and a granted signature is never
missing from the log. The file is reopened per record so that log rotation
(rename + new file) needs no signal.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

GRANTED = "granted"
REFUSED = "refused"


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class AuditLog:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = threading.Lock()

    def prepare(self) -> None:
        """Create the directory and file up front, so a bad path fails at start-up."""
        self.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        os.close(self._open())

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
                       | os.O_NOFOLLOW, 0o640)

    def record(self, *, uid: int, user: str | None, pid: int, decision: str, reason: str,
               sha256: str, key_id: str | None, probes: int, now: float | None = None,
               resolved: dict | None = None) -> dict:
        """Append one decision; raises OSError if it could not be made durable."""
        if decision not in (GRANTED, REFUSED):
            raise ValueError(f"decision must be {GRANTED!r} or {REFUSED!r}, not {decision!r}")
        now = time.time() if now is None else now
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z",
            "uid": uid, "user": user, "pid": pid, "decision": decision, "reason": reason,
            "sha256": sha256, "key_id": key_id, "probes": probes,
        }
        if resolved is not None:  # what the request was turned into: sets and library files
            entry["resolved"] = resolved
        line = (json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        with self._lock:
            fd = self._open()
            try:
                written = os.write(fd, line)
                if written != len(line):
                    raise OSError(f"short write to audit log {self.path}")
                os.fsync(fd)
            finally:
                os.close(fd)
        return entry


def read_records(path: str | os.PathLike) -> list[dict]:
    """Every record of an audit log, oldest first (for admins' scripts and the tests)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
