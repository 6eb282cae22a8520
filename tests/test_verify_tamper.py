"""The trust decision against a corpus of altered, broken and hostile files.

Every case must be refused with its own error class and a message naming the
file, both by verify_probes_file() and by `datacrumbs probes verify`, which
must print one line and no traceback.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import json
import os
import subprocess
import sys
import time
import tracemalloc

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from datacrumbs.probes import ProbesFileError
from datacrumbs.probes.document import encode_document, write_document
from datacrumbs.probes.verify import (CLOCK_SKEW_SECONDS, BadSignature, CorruptGzip, Expired,
                                      InvalidJSON, NotRegularFile, NotYetValid, OwnerMismatch,
                                      SchemaViolation, TooLarge, Unreadable, UnknownKey,
                                      Unsigned, verify_document, verify_probes_file)

from fixtures.keys import sample_probes

DAY = 86400
DATACRUMBS = os.path.join(os.path.dirname(sys.executable), "datacrumbs")


def _flip_signature(doc):
    raw = bytearray(base64.b64decode(doc["signature"]))
    raw[10] ^= 0x01
    doc["signature"] = base64.b64encode(bytes(raw)).decode()


def _set(path, value):
    def change(doc):
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value(target[path[-1]]) if callable(value) else value
    return change


# (case id, change applied to a signed document of user1, expected error class)
FIELD_TAMPERING = [
    ("owner-uid", _set(("owner", "uid"), lambda uid: uid + 1), BadSignature),
    ("owner-user", _set(("owner", "user"), "dctest2"), BadSignature),
    ("issued-at", _set(("issued_at",), lambda t: t - 1), BadSignature),
    ("expires-at", _set(("expires_at",), lambda t: t + 30 * DAY), BadSignature),
    ("host", _set(("host",), "othernode"), BadSignature),
    ("sets", _set(("sets",), ["posix"]), BadSignature),
    ("capture-mode", _set(("capture", "mode"), "profile"), BadSignature),
    ("capture-interval", _set(("capture", "interval_ms"), 10), BadSignature),
    ("capture-paths", _set(("capture", "paths"), False), BadSignature),
    ("probe-target", _set(("probes", 0, "target"), "read"), BadSignature),
    ("probe-library", _set(("probes", 2, "library"), "/usr/lib/x86_64-linux-gnu/libm.so.6"),
     BadSignature),
    ("probe-args", _set(("probes", 0, "args"), {"fd": 1}), BadSignature),
    ("probe-removed", lambda d: d["probes"].pop(), BadSignature),
    ("probe-added", lambda d: d["probes"].append(dict(d["probes"][0], id="posix.extra")),
     BadSignature),
    ("signature-flipped", _flip_signature, BadSignature),
    ("signature-removed", lambda d: d.pop("signature"), Unsigned),
    ("key-id-removed", lambda d: d.pop("key_id"), Unsigned),
    ("key-id-unknown", _set(("key_id",), "0123456789abcdef"), UnknownKey),
    ("format", _set(("format",), "datacrumbs-probes-x"), SchemaViolation),
    ("version", _set(("version",), 2), SchemaViolation),
    ("extra-field", _set(("admin",), True), SchemaViolation),
    ("signature-not-base64", _set(("signature",), "!" * 86 + "=="), SchemaViolation),
    ("probe-nul-target", _set(("probes", 2, "target"), "fwr\x00ite"), SchemaViolation),
    ("probe-relative-library", _set(("probes", 2, "library"), "libc.so.6"), SchemaViolation),
    ("probe-dotdot-library", _set(("probes", 2, "library"), "/tmp/../etc/libc.so.6"),
     SchemaViolation),
    ("duplicate-probe-id", lambda d: d["probes"].append(d["probes"][0]), SchemaViolation),
]


def _write_raw(path, data: bytes):
    path.write_bytes(data)
    return path


def _hostile_file(kind, tmp_path, signed_probes_file, gzip_bomb):
    """Files that are not a probes document at all."""
    p = tmp_path / f"{kind}.json.gz"
    good = signed_probes_file.read_bytes()
    if kind == "truncated-gzip":
        return _write_raw(p, good[: len(good) // 2])
    if kind == "not-gzip":
        return _write_raw(p, json.dumps({"format": "datacrumbs-probes"}).encode())
    if kind == "empty":
        return _write_raw(p, b"")
    if kind == "trailing-garbage":
        return _write_raw(p, good + b"garbage!")
    if kind == "gzip-bomb":
        return gzip_bomb
    if kind == "deep-nesting":
        return _write_raw(p, gzip.compress(b"[" * 100_000 + b"]" * 100_000))
    if kind == "not-json":
        return _write_raw(p, gzip.compress(b"{this is not json"))
    if kind == "not-utf8":
        return _write_raw(p, gzip.compress(b'{"format": "\xff\xfe"}'))
    if kind == "duplicate-keys":
        text = encode_document_text(signed_probes_file)
        assert text.startswith("{")
        return _write_raw(p, gzip.compress(('{"version": 1,' + text[1:]).encode()))
    if kind == "json-nan":
        return _write_raw(p, gzip.compress(b'{"issued_at": NaN}'))
    if kind == "compressed-too-large":
        return _write_raw(p, os.urandom((1 << 20) + 1))
    if kind == "huge-probe-list":
        doc = json.loads(gzip.decompress(good))
        doc["probes"] = [dict(doc["probes"][0], id=f"p{i}") for i in range(5000)]
        return _write_raw(p, encode_document(doc))
    if kind == "symlink":
        p.symlink_to(signed_probes_file)
        return p
    if kind == "directory":
        p.mkdir()
        return p
    if kind == "fifo":
        os.mkfifo(p)
        return p
    if kind == "missing":
        return p
    raise AssertionError(kind)


def encode_document_text(path) -> str:
    return gzip.decompress(path.read_bytes()).decode()


HOSTILE = [
    ("truncated-gzip", CorruptGzip, "truncated"),
    ("not-gzip", CorruptGzip, "not gzip"),
    ("empty", CorruptGzip, "empty"),
    ("trailing-garbage", CorruptGzip, "trailing"),
    ("gzip-bomb", TooLarge, "max_probes_document_bytes"),
    ("deep-nesting", InvalidJSON, "nested"),
    ("not-json", InvalidJSON, "not valid JSON"),
    ("not-utf8", InvalidJSON, "UTF-8"),
    ("duplicate-keys", InvalidJSON, "duplicate key"),
    ("json-nan", InvalidJSON, "NaN"),
    ("compressed-too-large", TooLarge, "max_probes_file_bytes"),
    ("huge-probe-list", TooLarge, "max_probes"),
    ("symlink", NotRegularFile, "symbolic link"),
    ("directory", NotRegularFile, "directory"),
    ("fifo", NotRegularFile, "FIFO"),
    ("missing", Unreadable, "does not exist"),
]


def _assert_cli_one_line(path, user, cls):
    """`datacrumbs probes verify` says the same in one line, exit 1, no traceback."""
    proc = subprocess.run([DATACRUMBS, "probes", "verify", str(path), "--user", user],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"datacrumbs: error: probes file {path}: ")
    assert proc.stdout == ""


@pytest.mark.parametrize("case,change,cls", FIELD_TAMPERING, ids=[c[0] for c in FIELD_TAMPERING])
def test_tampered_field_is_refused(case, change, cls, make_probes_doc, user1, site, tmp_path):
    doc = make_probes_doc(user1)
    change(doc)
    path = tmp_path / f"tampered-{case}.json.gz"
    write_document(path, doc)
    with pytest.raises(cls) as info:
        verify_probes_file(path, user1.pw_name, config=site)
    assert type(info.value) is cls
    assert str(path) in str(info.value)
    assert "generate" in str(info.value) or "administrator" in str(info.value)
    _assert_cli_one_line(path, user1.pw_name, cls)


@pytest.mark.parametrize("kind,cls,words", HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_file_is_refused(kind, cls, words, tmp_path, signed_probes_file, gzip_bomb,
                                 site, user1):
    path = _hostile_file(kind, tmp_path, signed_probes_file, gzip_bomb)
    with pytest.raises(cls) as info:
        verify_probes_file(path, user1.pw_name, config=site)
    assert type(info.value) is cls
    assert str(path) in str(info.value)
    assert words in str(info.value)
    _assert_cli_one_line(path, user1.pw_name, cls)


def test_gzip_bomb_is_stopped_without_inflating_it(gzip_bomb, site, user1):
    """Peak memory stays near the 8 MiB limit, far below the bomb's 1 GiB."""
    tracemalloc.start()
    try:
        with pytest.raises(TooLarge):
            verify_probes_file(gzip_bomb, user1.pw_name, config=site)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * site.max_probes_document_bytes, peak


def test_unknown_signing_key(make_probes_file, user1, site):
    stranger = Ed25519PrivateKey.generate()
    path = make_probes_file(user1, key=stranger)
    with pytest.raises(UnknownKey, match="not among the trusted keys"):
        verify_probes_file(path, user1.pw_name, config=site)
    _assert_cli_one_line(path, user1.pw_name, UnknownKey)


def test_expired_file(make_probes_file, user1, site, now):
    path = make_probes_file(user1, issued_at=now - 10 * DAY, expires_at=now - DAY)
    with pytest.raises(Expired, match="expired at"):
        verify_probes_file(path, user1.pw_name, config=site)
    _assert_cli_one_line(path, user1.pw_name, Expired)


def test_expiry_is_exact(make_probes_file, user1, site, now):
    path = make_probes_file(user1, issued_at=now - DAY, expires_at=now + 100)
    assert verify_probes_file(path, user1.pw_name, config=site, now=now + 99)
    with pytest.raises(Expired):
        verify_probes_file(path, user1.pw_name, config=site, now=now + 100)


def test_not_yet_valid_file(make_probes_file, user1, site, now):
    path = make_probes_file(user1, issued_at=now + 3600, validity_days=1)
    with pytest.raises(NotYetValid, match="clock"):
        verify_probes_file(path, user1.pw_name, config=site)
    _assert_cli_one_line(path, user1.pw_name, NotYetValid)


def test_small_clock_skew_is_allowed(make_probes_file, user1, site, now):
    path = make_probes_file(user1, issued_at=now + CLOCK_SKEW_SECONDS // 2)
    assert verify_probes_file(path, user1.pw_name, config=site, now=now)["owner"]["user"] == \
        user1.pw_name
    with pytest.raises(NotYetValid):
        verify_probes_file(path, user1.pw_name, config=site, now=now - CLOCK_SKEW_SECONDS)


def test_another_users_valid_file(make_probes_file, user1, user2, site):
    path = make_probes_file(user2)
    assert verify_probes_file(path, user2.pw_name, config=site)
    with pytest.raises(OwnerMismatch, match=f"signed for {user2.pw_name}"):
        verify_probes_file(path, user1.pw_name, config=site)
    with pytest.raises(OwnerMismatch):
        verify_probes_file(path, user1.pw_uid, config=site)
    _assert_cli_one_line(path, user1.pw_name, OwnerMismatch)


def test_owner_name_and_uid_must_both_match(make_probes_doc, key_store, user1, user2, site,
                                            tmp_path):
    """A document naming user1 with user2's uid is signed but still refused."""
    doc = make_probes_doc(user1, signed=False)
    doc["owner"]["uid"] = user2.pw_uid
    path = write_document(tmp_path / "mixed.json.gz", key_store.sign(doc))
    for expected in (user1.pw_name, user2.pw_name, user1.pw_uid, str(user2.pw_uid)):
        with pytest.raises(OwnerMismatch):
            verify_probes_file(path, expected, config=site)


def test_nonexistent_expected_user(signed_probes_file, site):
    with pytest.raises(OwnerMismatch, match="does not exist"):
        verify_probes_file(signed_probes_file, "nosuchuser_dc", config=site)


def test_valid_file_accepted_by_name_and_uid(signed_probes_file, user1, site):
    doc = verify_probes_file(signed_probes_file, user1.pw_name, config=site)
    assert doc["owner"] == {"uid": user1.pw_uid, "user": user1.pw_name}
    assert verify_probes_file(signed_probes_file, user1.pw_uid, config=site) == doc
    assert verify_probes_file(signed_probes_file, str(user1.pw_uid), config=site) == doc


def test_fifo_does_not_block(tmp_path, site, user1):
    fifo = tmp_path / "pipe.json.gz"
    os.mkfifo(fifo)
    start = time.monotonic()
    with pytest.raises(NotRegularFile, match="FIFO"):
        verify_probes_file(fifo, user1.pw_name, config=site)
    assert time.monotonic() - start < 5


def test_site_limits_are_honoured(signed_probes_file, user1, site):
    small = dataclasses.replace(site, max_probes=2)
    with pytest.raises(TooLarge, match="max_probes = 2"):
        verify_probes_file(signed_probes_file, user1.pw_name, config=small)
    tiny = dataclasses.replace(site, max_probes_file_bytes=100)
    with pytest.raises(TooLarge, match="max_probes_file_bytes = 100"):
        verify_probes_file(signed_probes_file, user1.pw_name, config=tiny)
    small_doc = dataclasses.replace(site, max_probes_document_bytes=200)
    with pytest.raises(TooLarge, match="max_probes_document_bytes = 200"):
        verify_probes_file(signed_probes_file, user1.pw_name, config=small_doc)


def test_verify_document_for_parsed_documents(make_probes_doc, user1, site):
    doc = make_probes_doc(user1)
    assert verify_document(doc, user1.pw_name, config=site, source="reply") is doc
    doc["owner"]["uid"] += 1
    with pytest.raises(BadSignature, match="probes file reply"):
        verify_document(doc, user1.pw_name, config=site, source="reply")
    with pytest.raises(SchemaViolation):
        verify_document(["not", "a", "document"], user1.pw_name, config=site)


def test_every_error_is_a_probes_file_error():
    for cls in (BadSignature, CorruptGzip, Expired, InvalidJSON, NotRegularFile, NotYetValid,
                OwnerMismatch, SchemaViolation, TooLarge, Unreadable, UnknownKey, Unsigned):
        assert issubclass(cls, ProbesFileError)
        assert cls("x.json.gz", "a problem").source == "x.json.gz"


def test_sample_probes_are_the_fixture_probes(make_probes_doc, user1):
    assert make_probes_doc(user1)["probes"] == sample_probes()
