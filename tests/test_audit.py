"""The audit log: one complete JSON line per decision, even from many threads at once."""

from __future__ import annotations

import json
import os
import stat
import threading

import pytest

from datacrumbs.signing.audit import GRANTED, REFUSED, AuditLog, digest, read_records


def entry(**overrides):
    values = dict(uid=1001, user="dctest1", pid=4242, decision=GRANTED, reason="signed 2 probes",
                  sha256=digest(b"doc"), key_id="0123456789abcdef", probes=2)
    return {**values, **overrides}


def test_a_record_has_every_field(tmp_path):
    log = AuditLog(tmp_path / "log" / "sign-audit.log")
    log.prepare()
    assert stat.S_IMODE(log.path.stat().st_mode) == 0o640
    assert stat.S_IMODE(log.path.parent.stat().st_mode) == 0o750
    log.record(**entry(), now=1764079200.25)
    log.record(**entry(decision=REFUSED, reason="kind 'kprobe' not allowed", key_id=None,
                       sha256=digest(b"request")))
    lines = log.path.read_text().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first == {"time": "2025-11-25T14:00:00.250000Z", "uid": 1001, "user": "dctest1",
                     "pid": 4242, "decision": "granted", "reason": "signed 2 probes",
                     "sha256": digest(b"doc"), "key_id": "0123456789abcdef", "probes": 2}
    assert second["decision"] == "refused" and second["key_id"] is None
    assert second["sha256"] == digest(b"request") and len(second["sha256"]) == 64
    assert read_records(log.path) == [first, second]


def test_existing_log_is_appended_to_never_truncated(tmp_path):
    path = tmp_path / "sign-audit.log"
    path.write_text('{"old": "record"}\n')
    AuditLog(path).record(**entry())
    records = read_records(path)
    assert records[0] == {"old": "record"} and records[1]["uid"] == 1001


def test_concurrent_writers_never_interleave(tmp_path):
    log = AuditLog(tmp_path / "sign-audit.log")
    long_reason = "x" * 3000  # lines larger than a pipe buffer still stay whole

    def write_many(n):
        for i in range(50):
            log.record(**entry(uid=n, pid=i, reason=long_reason))

    threads = [threading.Thread(target=write_many, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = read_records(log.path)
    assert len(records) == 400
    assert sorted((r["uid"], r["pid"]) for r in records) == [(n, i) for n in range(8)
                                                              for i in range(50)]


def test_rotation_by_rename_starts_a_new_file(tmp_path):
    log = AuditLog(tmp_path / "sign-audit.log")
    log.record(**entry(pid=1))
    os.rename(log.path, tmp_path / "sign-audit.log.1")
    log.record(**entry(pid=2))
    assert [r["pid"] for r in read_records(tmp_path / "sign-audit.log.1")] == [1]
    assert [r["pid"] for r in read_records(log.path)] == [2]


def test_a_symlink_in_place_of_the_log_is_refused(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("")
    (tmp_path / "sign-audit.log").symlink_to(target)
    with pytest.raises(OSError):
        AuditLog(tmp_path / "sign-audit.log").record(**entry())
    assert target.read_text() == ""


def test_unknown_decision_is_a_programming_error(tmp_path):
    with pytest.raises(ValueError, match="decision must be"):
        AuditLog(tmp_path / "a.log").record(**entry(decision="maybe"))
    assert not (tmp_path / "a.log").exists()
