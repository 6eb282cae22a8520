"""Building, encoding, writing and reading probes documents."""

from __future__ import annotations


import gzip
import json
import os
import stat

import pytest

from datacrumbs.probes import CorruptGzip, InvalidJSON, SchemaViolation, TooLarge
from datacrumbs.probes.document import (MAX_JSON_DEPTH, build_document, canonical_bytes,
                                        check_document, encode_document, gunzip_bounded,
                                        parse_json_bounded, read_document, write_document)
from datacrumbs.probes.schema import DOCUMENT_SCHEMA, PROBE_SET_SCHEMA, schema_problem

from fixtures.keys import sample_probes


def _doc(**kwargs):
    kwargs.setdefault("sets", ["posix"])
    return build_document(sample_probes(), owner_uid=1001, owner_user="dctest1", **kwargs)


def test_build_document_fields():
    doc = _doc(issued_at=1764079200, validity_days=7, mode="profile", interval_ms=500,
               paths=False, host="login1")
    assert doc["format"] == "datacrumbs-probes" and doc["version"] == 1
    assert doc["owner"] == {"uid": 1001, "user": "dctest1"}
    assert doc["expires_at"] - doc["issued_at"] == 7 * 86400
    assert doc["capture"] == {"mode": "profile", "interval_ms": 500, "paths": False}
    assert doc["host"] == "login1" and doc["sets"] == ["posix"]
    assert "signature" not in doc and "key_id" not in doc
    assert schema_problem(doc) is None


def test_build_document_copies_probes():
    probes = sample_probes()
    doc = build_document(probes, owner_uid=1, owner_user="a", sets=[])
    probes[0]["target"] = "read"
    assert doc["probes"][0]["target"] == "write"


@pytest.mark.parametrize("kwargs,words", [
    ({"mode": "everything"}, "capture/mode"),
    ({"interval_ms": 0}, "capture/interval_ms"),
    ({"owner_user": "Bad User"}, "owner/user"),
    ({"owner_uid": -1}, "owner/uid"),
    ({"sets": ["Not A Name"]}, "sets/0"),
    ({"issued_at": 100, "expires_at": 100}, "expires_at is not after issued_at"),
    ({"probes": []}, "probes"),
])
def test_build_document_refuses_bad_values(kwargs, words):
    args = {"owner_uid": 1001, "owner_user": "dctest1", "sets": ["posix"]}
    probes = kwargs.pop("probes", sample_probes())
    args.update(kwargs)
    with pytest.raises(SchemaViolation) as info:
        build_document(probes, **args)
    assert words in str(info.value)


@pytest.mark.parametrize("change,words", [
    (lambda p: p[0].update(kind="magic"), "kind"),
    (lambda p: p[0].update(id="Posix.Write"), "id"),
    (lambda p: p[0].update(target="wr ite"), "target"),
    (lambda p: p[0].update(library="/usr/lib/x86_64-linux-gnu/libc.so.6"), "library"),
    (lambda p: p[2].pop("library"), "library"),
    (lambda p: p[2].update(library="/a/./b.so"), "library"),
    (lambda p: p[0].update(args={"fd": 6}), "args"),
    (lambda p: p[0].update(args={"bogus": 1}), "args"),
    (lambda p: p[0].update(bytes="ret*arg9"), "bytes"),
    (lambda p: p[0].update(bytes="rm -rf /"), "bytes"),
    (lambda p: p[3].update(target="block"), "target"),
    (lambda p: p[0].update(extra=1), "probes/0: has a property that is not allowed here"),
    (lambda p: p[0].update(category="posix"), "category"),
    (lambda p: p.append(dict(p[0])), "appears more than once"),
])
def test_probe_entries_are_strict(change, words):
    probes = sample_probes()
    change(probes)
    with pytest.raises(SchemaViolation) as info:
        build_document(probes, owner_uid=1001, owner_user="dctest1", sets=[])
    assert words in str(info.value)


def test_schemas_are_valid_draft_2020_12():
    import jsonschema

    for schema in (DOCUMENT_SCHEMA, PROBE_SET_SCHEMA):
        assert schema["$schema"].endswith("2020-12/schema")
        jsonschema.Draft202012Validator.check_schema(schema)
    assert DOCUMENT_SCHEMA["additionalProperties"] is False


def test_canonical_bytes_is_the_documented_encoding():
    doc = _doc()
    doc["host"] = "løgin"  # canonical_bytes encodes any dict; the schema would refuse this
    doc["key_id"] = "0123456789abcdef"
    doc["signature"] = "A" * 86 + "=="
    body = {k: v for k, v in doc.items() if k != "signature"}
    expected = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode("utf-8")
    assert canonical_bytes(doc) == expected
    assert b'"key_id":"0123456789abcdef"' in canonical_bytes(doc)
    assert b"signature" not in canonical_bytes(doc)
    assert "løgin".encode() in canonical_bytes(doc)  # UTF-8, not \u escapes
    reordered = dict(reversed(list(doc.items())))
    assert canonical_bytes(reordered) == canonical_bytes(doc)


def test_write_and_read_back(tmp_path):
    doc = _doc()
    path = write_document(tmp_path / "p.json.gz", doc)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert json.loads(gzip.decompress(path.read_bytes())) == doc  # plain gzip + JSON
    assert read_document(path) == doc
    assert [p.name for p in tmp_path.iterdir()] == ["p.json.gz"]  # no temp file left


def test_write_is_atomic_replacement(tmp_path):
    path = tmp_path / "p.json.gz"
    write_document(path, _doc(host="first"))
    inode = path.stat().st_ino
    write_document(path, _doc(host="second"))
    assert path.stat().st_ino != inode  # a new file renamed over, never rewritten in place
    assert read_document(path)["host"] == "second"


def test_write_into_missing_directory_fails_cleanly(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_document(tmp_path / "nope" / "p.json.gz", _doc())


def test_encoding_is_reproducible():
    assert encode_document(_doc(issued_at=5, host="h")) == encode_document(_doc(issued_at=5,
                                                                              host="h"))


def test_multi_member_gzip_is_read_whole():
    text = json.dumps(_doc()).encode()
    data = gzip.compress(text[:100]) + gzip.compress(text[100:])
    assert gunzip_bounded(data, source="x", max_decompressed=1 << 20) == text


def test_gunzip_limit_is_exact():
    data = gzip.compress(b"x" * 1000)
    assert len(gunzip_bounded(data, source="x", max_decompressed=1000)) == 1000
    with pytest.raises(TooLarge):
        gunzip_bounded(data, source="x", max_decompressed=999)


def test_corrupt_gzip_body():
    data = bytearray(gzip.compress(b"hello world" * 100))
    data[20] ^= 0xFF
    with pytest.raises(CorruptGzip):
        gunzip_bounded(bytes(data), source="x", max_decompressed=1 << 20)


def test_json_depth_limit():
    ok = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert parse_json_bounded(ok, source="x") is not None
    deep = b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1)
    with pytest.raises(InvalidJSON, match="nested"):
        parse_json_bounded(deep, source="x")
    # Brackets inside strings are not nesting.
    assert parse_json_bounded(b'{"a": "' + b"[" * 1000 + b'\\" ["}', source="x")


@pytest.mark.parametrize("text", [b'{"a": Infinity}', b'{"a": 1, "a": 2}', b"\xef\xbb\xbf{}",
                                  b'{"a": 1} trailing'])
def test_strict_json(text):
    with pytest.raises(InvalidJSON):
        parse_json_bounded(text, source="x")


def test_read_document_limits(tmp_path):
    path = write_document(tmp_path / "p.json.gz", _doc())
    size = path.stat().st_size
    with pytest.raises(TooLarge, match=f"{size} bytes"):
        read_document(path, max_compressed=size - 1)
    with pytest.raises(TooLarge):
        read_document(path, max_decompressed=100)


def test_check_document_probe_count_before_schema():
    doc = _doc()
    doc["probes"] = doc["probes"] * 3  # duplicate ids too, but the count is checked first
    with pytest.raises(TooLarge, match="max_probes = 5"):
        check_document(doc, source="x", max_probes=5)


def test_unreadable_file_for_unprivileged_reader(tmp_path, user1):
    """Run as dctest1: a 0600 root file is Unreadable, with one line from the CLI."""
    import subprocess
    import sys

    path = write_document(tmp_path / "secret.json.gz", _doc())
    os.chmod(path, 0o600)
    os.chmod(tmp_path, 0o755)
    exe = os.path.join(os.path.dirname(sys.executable), "datacrumbs")
    proc = subprocess.run(["setpriv", f"--reuid={user1.pw_uid}", f"--regid={user1.pw_gid}",
                           "--clear-groups", exe, "probes", "verify", str(path)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "HOME": user1.pw_dir})
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"datacrumbs: error: probes file {path}: cannot open it "
                                   "(Permission denied); check the path and its permissions")
