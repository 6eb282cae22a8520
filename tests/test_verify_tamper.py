"""The trust decision against a corpus of altered, broken, hostile and forbidden files.

Every case is refused three ways, each with its expected one-line message:
by verify_probes_file() (its own error class), by `datacrumbs probes verify`
(one line, no traceback) and through the installed Flux prolog, run as Flux
runs it for a job of dctest1 whose metadata names the file. The prolog reads
the file as dctest1, so for a path she cannot open it tells her only what
`ls` would; it must answer within its bound (1 s of CPU for a hostile parse),
and no output anywhere may contain the canary text of a root-only file or
quote a file's content.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from datacrumbs.probes import ProbesFileError
from datacrumbs.probes.document import encode_document, write_document
from datacrumbs.probes.verify import (CLOCK_SKEW_SECONDS, BadSignature, CorruptGzip, Expired,
                                      InvalidJSON, NotRegularFile, NotYetValid, OwnerMismatch,
                                      SchemaViolation, TooLarge, Unreadable, UnknownKey,
                                      Unsigned, verify_document, verify_probes_file)

from fixtures.keys import sample_probes
from fixtures.systemd import flux_env, perilog_log, prolog, recording_flux

DAY = 86400
DATACRUMBS = os.path.join(os.path.dirname(sys.executable), "datacrumbs")
CANARY = "CANARY-7f3a9c51"
CORPUS_PROLOG_TIMEOUT = 5.0

REGEN = "generate and sign a new probes file with `datacrumbs probes generate --sign`"
PERMS = "check the path and its permissions"
REAL = "pass the path of the real file, not a link or special file"
KEYS = ("ask the administrator to install the signing service's public key with "
        "`datacrumbs keys export-public`, or " + REGEN)
CHANGED = "its signature does not match its content (it was changed after signing); " + REGEN
NOT_GZIP = "it is not gzip-compressed (a probes file is a .json.gz); " + REGEN
DENIED = "it cannot be opened as user dctest1 (Permission denied); " + PERMS
TOP_ALLOWED = ("(top level): has a property that is not allowed here (allowed: capture, "
               "expires_at, format, host, issued_at, key_id, owner, patterns, probes, sets, signature, "
               "version)")


# -- building the corpus -----------------------------------------------------------------


@dataclasses.dataclass
class Ctx:
    tmp: Path
    user1: object
    user2: object
    make_doc: Callable
    key_store: object
    bomb: Path


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


def tampered(change, **kwargs):
    """A document of user1, signed, then changed (and written as a proper gzip file)."""
    def make(ctx: Ctx, p: Path) -> Path:
        doc = ctx.make_doc(ctx.user1, **kwargs)
        change(doc)
        return write_document(p, doc)
    return make


def signed(user="user1", key=None, **kwargs):
    def make(ctx: Ctx, p: Path) -> Path:
        extra = {"key": Ed25519PrivateKey.generate()} if key == "stranger" else {}
        return write_document(p, ctx.make_doc(getattr(ctx, user), **extra, **kwargs))
    return make


def owner_mixed(ctx: Ctx, p: Path) -> Path:
    doc = ctx.make_doc(ctx.user1, signed=False)
    doc["owner"]["uid"] = ctx.user2.pw_uid
    return write_document(p, ctx.key_store.sign(doc))


def raw(data: bytes | Callable[[], bytes], *, compress: bool = True):
    def make(ctx: Ctx, p: Path) -> Path:
        content = data() if callable(data) else data
        p.write_bytes(gzip.compress(content) if compress else content)
        return p
    return make


def from_good(edit: Callable[[bytes], bytes]):
    """The bytes of a valid signed file of user1, edited."""
    def make(ctx: Ctx, p: Path) -> Path:
        good = encode_document(ctx.make_doc(ctx.user1))
        p.write_bytes(edit(good))
        return p
    return make


def _json_text_with_duplicate(doc_bytes: bytes) -> bytes:
    text = gzip.decompress(doc_bytes).decode()
    return gzip.compress(('{"version": 1,' + text[1:]).encode())


def _damaged_crc(good: bytes) -> bytes:
    data = bytearray(good)
    data[-8] ^= 0xFF  # the CRC-32 in the gzip trailer
    return bytes(data)


def _huge_probe_list(ctx: Ctx, p: Path) -> Path:
    doc = ctx.make_doc(ctx.user1)
    doc["probes"] = [dict(doc["probes"][0], id=f"p{i}") for i in range(17000)]
    p.write_bytes(encode_document(doc))
    return p


def _max_probes_one_bad(ctx: Ctx, p: Path) -> Path:
    """16384 probes (the site limit), the last one invalid: the slowest schema check allowed."""
    doc = ctx.make_doc(ctx.user1)
    doc["probes"] = [dict(doc["probes"][0], id=f"p{i}") for i in range(16383)]
    doc["probes"].append(dict(doc["probes"][0], id="Bad-" + CANARY))
    p.write_bytes(encode_document(doc))
    return p


def _canary_doc(ctx: Ctx, p: Path) -> Path:
    """A gzip JSON document whose keys and values are the canary (schema errors only)."""
    p.write_bytes(gzip.compress(json.dumps({CANARY: CANARY}).encode()))
    return p


def _root_only(name: str, *, in_root_dir: bool = False, exists: bool = True):
    """A file only root may read (0600 root), holding the canary, maybe in a 0700 directory."""
    def make(ctx: Ctx, p: Path) -> Path:
        folder = ctx.tmp
        if in_root_dir:
            folder = ctx.tmp / "root-only-dir"
            folder.mkdir(exist_ok=True)
            folder.chmod(0o700)
        target = folder / name
        if exists:
            target.write_bytes(f"{CANARY} root's secret\n".encode())
            target.chmod(0o600)
        return target
    return make


def _hardlink_to_root_only(ctx: Ctx, p: Path) -> Path:
    secret = _root_only("hl-secret")(ctx, p)
    os.link(secret, p)
    return p


def _symlink_to_root_only(ctx: Ctx, p: Path) -> Path:
    p.symlink_to(_root_only("sl-secret")(ctx, p))
    return p


def _through_dir_link(ctx: Ctx, p: Path) -> Path:
    """An intermediate symlink to a root-only directory: the walk is checked as the user."""
    _root_only("secret.json.gz", in_root_dir=True)(ctx, p)
    link = ctx.tmp / "dir-link"
    link.symlink_to(ctx.tmp / "root-only-dir")
    return link / "secret.json.gz"


def _proc_root_root_only(ctx: Ctx, p: Path) -> Path:
    secret = _root_only("proc-secret.json.gz", in_root_dir=True)(ctx, p)
    return Path("/proc/self/root" + str(secret))


def _symlink(ctx: Ctx, p: Path) -> Path:
    p.symlink_to(write_document(ctx.tmp / "target.json.gz", ctx.make_doc(ctx.user1)))
    return p


def _directory(ctx: Ctx, p: Path) -> Path:
    p.mkdir()
    return p


def _fifo(ctx: Ctx, p: Path) -> Path:
    os.mkfifo(p)
    return p


def _socket(ctx: Ctx, p: Path) -> Path:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(p))  # the socket file stays after close; opening it gives ENXIO
    return p


def _fixed(path: str):
    return lambda ctx, p: Path(path)


def _bomb(ctx: Ctx, p: Path) -> Path:
    shutil.copyfile(ctx.bomb, p)  # the session's bomb lies in a root-only directory
    return p


def _missing(ctx: Ctx, p: Path) -> Path:
    return p


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[Ctx, Path], Path]
    cls: type
    line: str                  # after "probes file {path}: "; {keydir}, {uid1}, {uid2}, {*}
    prolog: str | None = None  # what the job's user is told, when it differs from `line`
    digest: str = "content"    # the submitted digest: of the content, or "zeros" (unreadable)
    parse: bool = False        # a hostile parse: the whole prolog run must take < 1 s


CORPUS = [
    # -- a signed file of the job's user, changed after signing
    Case("owner-uid", tampered(_set(("owner", "uid"), lambda uid: uid + 1)), BadSignature, CHANGED),
    Case("owner-user", tampered(_set(("owner", "user"), "dctest2")), BadSignature, CHANGED),
    Case("issued-at", tampered(_set(("issued_at",), lambda t: t - 1)), BadSignature, CHANGED),
    Case("expires-at", tampered(_set(("expires_at",), lambda t: t + 30 * DAY)), BadSignature,
         CHANGED),
    Case("host", tampered(_set(("host",), "othernode")), BadSignature, CHANGED),
    Case("sets", tampered(_set(("sets",), ["posix"])), BadSignature, CHANGED),
    Case("capture-mode", tampered(_set(("capture", "mode"), "profile")), BadSignature, CHANGED),
    Case("capture-interval", tampered(_set(("capture", "interval_ms"), 10)), BadSignature,
         CHANGED),
    Case("capture-paths", tampered(_set(("capture", "paths"), False)), BadSignature, CHANGED),
    Case("probe-target", tampered(_set(("probes", 0, "target"), "read")), BadSignature, CHANGED),
    Case("probe-library", tampered(_set(("probes", 2, "library"),
                                        "/usr/lib/x86_64-linux-gnu/libm.so.6")),
         BadSignature, CHANGED),
    Case("probe-args", tampered(_set(("probes", 0, "args"), {"fd": 1})), BadSignature, CHANGED),
    Case("probe-removed", tampered(lambda d: d["probes"].pop()), BadSignature, CHANGED),
    Case("probe-added", tampered(lambda d: d["probes"].append(dict(d["probes"][0],
                                                                   id="posix.extra"))),
         BadSignature, CHANGED),
    Case("signature-flipped", tampered(_flip_signature), BadSignature, CHANGED),
    Case("signature-removed", tampered(lambda d: d.pop("signature")), Unsigned,
         "it is not signed (no signature); " + REGEN),
    Case("key-id-removed", tampered(lambda d: d.pop("key_id")), Unsigned,
         "it is not signed (no key_id); " + REGEN),
    Case("key-id-unknown", tampered(_set(("key_id",), "0123456789abcdef")), UnknownKey,
         "it is signed by key 0123456789abcdef, which is not among the trusted keys in "
         "{keydir}; " + KEYS),
    # -- schema violations: where and what is expected, never the file's values
    Case("format", tampered(_set(("format",), CANARY)), SchemaViolation,
         "not a valid probes document: format: must be 'datacrumbs-probes'; " + REGEN),
    Case("version", tampered(_set(("version",), 2)), SchemaViolation,
         "not a valid probes document: version: must be 1; " + REGEN),
    Case("unknown-key", tampered(_set((CANARY,), CANARY)), SchemaViolation,
         f"not a valid probes document: {TOP_ALLOWED}; " + REGEN),
    Case("signature-not-base64", tampered(_set(("signature",), "!" * 86 + "==")),
         SchemaViolation, "not a valid probes document: signature: does not match the pattern "
         "for signatures (88 base64 characters); " + REGEN),
    Case("probe-nul-target", tampered(_set(("probes", 2, "target"), "fwr\x00ite")),
         SchemaViolation, "not a valid probes document: probes/2/target: does not match the "
         "pattern for uprobe targets; " + REGEN),
    Case("probe-relative-library", tampered(_set(("probes", 2, "library"), "libc.so.6")),
         SchemaViolation, "not a valid probes document: probes/2/library: does not match the "
         "pattern for absolute paths (no '.' or '..' components, no control characters); "
         + REGEN),
    Case("probe-dotdot-library", tampered(_set(("probes", 2, "library"),
                                               "/tmp/../etc/libc.so.6")),
         SchemaViolation, "not a valid probes document: probes/2/library: does not match the "
         "pattern for absolute paths (no '.' or '..' components, no control characters); "
         + REGEN),
    Case("duplicate-probe-id", tampered(lambda d: d["probes"].append(d["probes"][0])),
         SchemaViolation, "probe id 'posix.write' appears more than once; " + REGEN),
    Case("owner-uid-string", tampered(_set(("owner", "uid"), str)), SchemaViolation,
         "not a valid probes document: owner/uid: must be an integer; " + REGEN),
    Case("host-canary", tampered(_set(("host",), CANARY + " x")), SchemaViolation,
         "not a valid probes document: host: does not match the pattern for host names; "
         + REGEN),
    Case("probe-kind", tampered(_set(("probes", 0, "kind"), CANARY)), SchemaViolation,
         "not a valid probes document: probes/0/kind: must be one of syscall, uprobe, "
         "tracepoint, kprobe, usdt, async; " + REGEN),
    Case("probe-arg-name", tampered(_set(("probes", 0, "args"), {CANARY: 1})), SchemaViolation,
         "not a valid probes document: probes/0/args: has a property name that is not one of "
         "fd, count, offset, path, flags, size, nmemb, stream, whence, fd2, handle, handle_ptr, "
         "handle_out, datatype; " + REGEN),
    Case("probe-bytes", tampered(_set(("probes", 0, "bytes"), CANARY)), SchemaViolation,
         "not a valid probes document: probes/0/bytes: does not match the pattern for bytes "
         "rules (ret, ret*argN, argN, field:NAME); " + REGEN),
    Case("no-probes", tampered(_set(("probes",), [])), SchemaViolation,
         "not a valid probes document: probes: must have at least 1 item; " + REGEN),
    Case("too-many-sets", tampered(_set(("sets",), [f"s{i}" for i in range(5000)])),
         SchemaViolation, "not a valid probes document: sets: must have at most 64 items; "
         + REGEN, parse=True),
    Case("interval-too-short", tampered(_set(("capture", "interval_ms"), 5)), SchemaViolation,
         "not a valid probes document: capture/interval_ms: must be at least 10; " + REGEN),
    Case("huge-string", tampered(_set(("host",), "a" * (6 << 20) + CANARY)), SchemaViolation,
         "not a valid probes document: host: does not match the pattern for host names; "
         + REGEN, parse=True),
    Case("many-keys", tampered(lambda d: d.update({f"{CANARY}{i}": i for i in range(100_000)})),
         SchemaViolation, f"not a valid probes document: {TOP_ALLOWED}; " + REGEN, parse=True),
    Case("not-an-object", raw(json.dumps([CANARY]).encode()), SchemaViolation,
         "not a valid probes document: (top level): must be an object; " + REGEN),
    Case("canary-document", _canary_doc, SchemaViolation,
         f"not a valid probes document: {TOP_ALLOWED}; " + REGEN),
    Case("missing-format", tampered(lambda d: d.pop("format")), SchemaViolation,
         "not a valid probes document: (top level): is missing the required property "
         "'format'; " + REGEN),
    Case("max-probes-one-bad", _max_probes_one_bad, SchemaViolation,
         "not a valid probes document: probes/16383/id: does not match the pattern for names "
         "(a-z, 0-9, '_', '.', '-'; at most 64); " + REGEN),
    Case("expires-before-issued", tampered(_set(("expires_at",), 1)), SchemaViolation,
         "expires_at is not after issued_at; " + REGEN),
    # -- signed, but not for this job
    Case("expired", signed(issued_at=1_000_000_000, expires_at=1_000_086_400), Expired,
         "it expired at 2001-09-10 01:46:40 UTC; " + REGEN),
    Case("not-yet-valid", signed(issued_at=4_000_000_000, expires_at=4_000_086_400), NotYetValid,
         "it is valid only from 2096-10-02 07:06:40 UTC (this host's clock says {*}); check the "
         "clocks of this host and the signing host, or " + REGEN),
    Case("wrong-owner", signed(user="user2"), OwnerMismatch,
         "it was signed for dctest2 (uid {uid2}), not for dctest1 (uid {uid1}); user dctest1 "
         "must " + REGEN),
    Case("owner-name-uid-mixed", owner_mixed, OwnerMismatch,
         "it was signed for dctest1 (uid {uid2}), not for dctest1 (uid {uid1}); user dctest1 "
         "must " + REGEN),
    Case("stranger-key", signed(key="stranger"), UnknownKey,
         "it is signed by key {*}, which is not among the trusted keys in {keydir}; " + KEYS),
    # -- not a gzip JSON document at all, or a hostile one
    Case("truncated-gzip", from_good(lambda b: b[: len(b) // 2]), CorruptGzip,
         "the gzip data is truncated; " + REGEN),
    Case("not-gzip", raw(json.dumps({"format": CANARY}).encode(), compress=False), CorruptGzip,
         NOT_GZIP),
    Case("empty", raw(b"", compress=False), CorruptGzip, "it is empty; " + REGEN),
    Case("trailing-garbage", from_good(lambda b: b + b"garbage!"), CorruptGzip,
         "it has trailing bytes after the gzip data; " + REGEN, parse=True),
    Case("damaged-crc", from_good(_damaged_crc), CorruptGzip,
         "the gzip data is damaged (Error -3 while decompressing data: incorrect data check); "
         + REGEN),
    Case("gzip-bomb", _bomb, TooLarge,
         "it decompresses to more than the site limit max_probes_document_bytes = 8388608 "
         "bytes; " + REGEN, parse=True),
    Case("compressed-too-large", raw(lambda: os.urandom((1 << 20) + 1), compress=False),
         TooLarge, "it is 1048577 bytes, more than the site limit max_probes_file_bytes = "
         "1048576; " + REGEN, parse=True),
    Case("huge-probe-list", _huge_probe_list, TooLarge,
         "it lists 17000 probes, more than the site limit max_probes = 16384; select fewer probe "
         "sets, or ask the administrator to raise max_probes", parse=True),
    Case("quadratic-quotes-8k", raw(b'"' + b'\\"' * 4096), InvalidJSON,
         "it is not valid JSON (Unterminated string starting at line 1 column 1); " + REGEN,
         parse=True),
    Case("quadratic-quotes-8m", raw(b'"' + b'\\"' * ((8 << 20) // 2 - 1)), InvalidJSON,
         "it is not valid JSON (Unterminated string starting at line 1 column 1); " + REGEN,
         parse=True),
    Case("quadratic-quotes-in-doc", raw(b'{"format": "' + b'\\"' * ((8 << 20) // 2 - 16)),
         InvalidJSON, "it is not valid JSON (Unterminated string starting at line 1 column 12); "
         + REGEN, parse=True),
    Case("deep-nesting", raw(b"[" * 100_000 + b"]" * 100_000), InvalidJSON,
         "its JSON is nested more than 32 levels deep; " + REGEN, parse=True),
    Case("nesting-33", raw(b"[" * 33 + b"]" * 33), InvalidJSON,
         "its JSON is nested more than 32 levels deep; " + REGEN, parse=True),
    Case("deep-objects", raw(b'{"a":' * 500 + b"1" + b"}" * 500), InvalidJSON,
         "its JSON is nested more than 32 levels deep; " + REGEN, parse=True),
    Case("not-json", raw(b"{this is not json " + CANARY.encode()), InvalidJSON,
         "it is not valid JSON (Expecting property name enclosed in double quotes at line 1 "
         "column 2); " + REGEN),
    Case("not-utf8", raw(b'{"format": "\xff\xfe"}'), InvalidJSON,
         "it is not UTF-8 text (byte 12); " + REGEN),
    Case("utf8-bom", raw(b"\xef\xbb\xbf{}"), InvalidJSON,
         "it is not valid JSON (Unexpected UTF-8 BOM (decode using utf-8-sig) at line 1 "
         "column 1); " + REGEN),
    Case("duplicate-keys", from_good(_json_text_with_duplicate), InvalidJSON,
         "it is not valid JSON (duplicate key); " + REGEN, parse=True),
    Case("json-nan", raw(b'{"issued_at": NaN}'), InvalidJSON,
         "it is not valid JSON (a value is not allowed); " + REGEN, parse=True),
    Case("json-infinity", raw(b'{"issued_at": -Infinity}'), InvalidJSON,
         "it is not valid JSON (a value is not allowed); " + REGEN, parse=True),
    Case("integer-digits-bomb", raw(b'{"issued_at": 1' + b"0" * 5000 + b"}"), InvalidJSON,
         "it is not valid JSON (a value is not allowed); " + REGEN, parse=True),
    # -- not a regular file the user may read
    Case("symlink", _symlink, NotRegularFile, "it is a symbolic link; " + REAL, digest="zeros"),
    Case("directory", _directory, NotRegularFile,
         "it is a directory, not a regular file; " + REAL, digest="zeros"),
    Case("fifo", _fifo, NotRegularFile, "it is a FIFO, not a regular file; " + REAL,
         digest="zeros"),
    Case("socket", _socket, Unreadable, "cannot open it (No such device or address); " + PERMS,
         prolog="it cannot be opened as user dctest1 (No such device or address); " + PERMS,
         digest="zeros"),
    Case("missing", _missing, Unreadable, "it does not exist; " + PERMS, digest="zeros"),
    Case("dev-null", _fixed("/dev/null"), NotRegularFile,
         "it is a character device, not a regular file; " + REAL, digest="zeros"),
    Case("dev-zero", _fixed("/dev/zero"), NotRegularFile,
         "it is a character device, not a regular file; " + REAL, digest="zeros"),
    Case("proc-self-status", _fixed("/proc/self/status"), CorruptGzip, NOT_GZIP,
         prolog="it is a file of /proc, not a regular file; " + REAL, digest="zeros"),
    Case("proc-self-environ", _fixed("/proc/self/environ"), CorruptGzip, NOT_GZIP,
         prolog=DENIED, digest="zeros"),
    Case("proc-self-mem", _fixed("/proc/self/mem"), Unreadable,
         "cannot read it (Input/output error); " + PERMS, prolog=DENIED, digest="zeros"),
    Case("proc-self-fd", _fixed("/proc/self/fd/0"), NotRegularFile,
         "it is a symbolic link; " + REAL, digest="zeros"),
    Case("proc-self-root-root-only", _proc_root_root_only, CorruptGzip, NOT_GZIP,
         prolog=DENIED, digest="zeros"),
    # -- root's files, named by the user: she learns only what `ls` would tell her
    Case("root-only-file", _root_only("secret.json.gz"), CorruptGzip, NOT_GZIP, prolog=DENIED),
    Case("root-only-dir-file", _root_only("secret.json.gz", in_root_dir=True), CorruptGzip,
         NOT_GZIP, prolog=DENIED),
    Case("root-only-dir-missing", _root_only("nothing.json.gz", in_root_dir=True, exists=False),
         Unreadable, "it does not exist; " + PERMS, prolog=DENIED, digest="zeros"),
    Case("hardlink-to-root-only", _hardlink_to_root_only, CorruptGzip, NOT_GZIP, prolog=DENIED),
    Case("symlink-to-root-only", _symlink_to_root_only, NotRegularFile,
         "it is a symbolic link; " + REAL, digest="zeros"),
    Case("dir-link-to-root-only", _through_dir_link, CorruptGzip, NOT_GZIP, prolog=DENIED),
    Case("etc-shadow", _fixed("/etc/shadow"), CorruptGzip, NOT_GZIP, prolog=DENIED),
]


def _expected(template: str, path, **values) -> re.Pattern:
    """The full message as a regex: literal text, {name} filled in, {*} for a time or key id."""
    pattern = ""
    for part in re.split(r"(\{\w+\}|\{\*\})", "probes file {path}: " + template):
        if part == "{*}":
            pattern += ".+"
        elif re.fullmatch(r"\{\w+\}", part):
            pattern += re.escape(str({"path": path, **values}[part[1:-1]]))
        else:
            pattern += re.escape(part)
    return re.compile(pattern)


@pytest.fixture
def corpus_ctx(tmp_path, user1, user2, make_probes_doc, key_store, gzip_bomb):
    return Ctx(tmp_path, user1, user2, make_probes_doc, key_store, gzip_bomb)


def _run_prolog(manager, site, tmp_path, user, path: Path, digest: str, jobid: str):
    """The installed prolog as Flux runs it; returns (process, what `flux job raise` got)."""
    bindir, record = recording_flux(tmp_path)
    record.unlink(missing_ok=True)
    env = flux_env(manager, site, jobid, user, None)
    env["PATH"] = f"{bindir}:{env['PATH']}"
    env["DATACRUMBS_JOB_METADATA"] = json.dumps(
        {"enable": "yes", "probe_file": str(path), "probe_digest": digest})
    res = prolog(site, env)
    calls = [json.loads(line) for line in record.read_text().splitlines()] \
        if record.exists() else []
    shutil.rmtree(bindir)
    return res, [c[6] for c in calls]


@pytest.mark.systemd
@pytest.mark.parametrize("case", CORPUS, ids=[c.id for c in CORPUS])
def test_corpus_is_refused_by_library_cli_and_prolog(case, corpus_ctx, site, user1, user2,
                                                     installed_service, tmp_path):
    assert len(CORPUS) >= 50
    site.source.write_text(site.source.read_text().replace(
        "prolog_timeout = 30.0", f"prolog_timeout = {CORPUS_PROLOG_TIMEOUT}"))
    path = case.make(corpus_ctx, tmp_path / f"{case.id}.json.gz")
    values = {"keydir": site.public_key_dir, "uid1": user1.pw_uid, "uid2": user2.pw_uid}
    lib_line = _expected(case.line, path, **values)

    # the library (as root)
    with pytest.raises(ProbesFileError) as info:
        verify_probes_file(path, user1.pw_name, config=site)
    assert type(info.value) is case.cls
    assert lib_line.fullmatch(str(info.value)), str(info.value)

    # the CLI: one line, exit 1, no traceback
    cli = subprocess.run([DATACRUMBS, "probes", "verify", str(path), "--user", user1.pw_name],
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 1 and cli.stdout == "", cli.stderr
    assert len(cli.stderr.splitlines()) == 1 and "Traceback" not in cli.stderr, cli.stderr
    assert cli.stderr.startswith("datacrumbs: error: ")
    assert lib_line.fullmatch(cli.stderr.strip()[len("datacrumbs: error: "):]), cli.stderr

    # through the prolog, for a job of dctest1 whose metadata names the file
    digest = "sha256:" + ("0" * 64 if case.digest == "zeros" else
                          hashlib.sha256(path.read_bytes()).hexdigest())
    res, told = _run_prolog(installed_service, site, tmp_path, user1, path, digest, "4001")
    prolog_line = _expected(case.prolog or case.line, path, **values)
    assert res.returncode == 0, res.stderr
    assert len(told) == 1, (told, res.stderr)
    prefix = "datacrumbs: tracing disabled for this job: "
    assert told[0].startswith(prefix) and prolog_line.fullmatch(told[0][len(prefix):]), told[0]
    assert "Traceback" not in res.stderr
    # within its bound (a timeout would have told the user another line); a hostile parse
    # costs under 1 s of CPU (CPU, not wall time: other work may load the machine)
    if case.parse:
        assert res.cpu < 1.0, (res.cpu, res.elapsed)
    assert installed_service.running_units("datacrumbs@*") == []
    assert sorted(p.name for p in site.run_dir.glob("datacrumbs-4001*")) == []

    # nothing anywhere quotes a root-only file, or the canary text of any file
    seen = "\n".join([str(info.value), cli.stderr, res.stdout, res.stderr, *told,
                      perilog_log(site)])
    assert CANARY not in seen


@pytest.mark.systemd
def test_root_only_paths_tell_the_user_nothing_more_than_ls(installed_service, site, user1,
                                                            tmp_path):
    """For the job's user, an existing root-only file (with the right or a wrong digest) and a
    path that does not exist in a root-only directory give the same answer, as with `ls`."""
    secret_dir = tmp_path / "root-only-dir"
    secret_dir.mkdir()
    secret_dir.chmod(0o700)
    secret = secret_dir / "secret.json.gz"
    secret.write_bytes(f"{CANARY} root's secret\n".encode())
    secret.chmod(0o600)
    open_dir_secret = tmp_path / "secret.json.gz"
    shutil.copyfile(secret, open_dir_secret)
    open_dir_secret.chmod(0o600)
    right = "sha256:" + hashlib.sha256(secret.read_bytes()).hexdigest()
    wrong = "sha256:" + "0" * 64
    runs = {
        "exists, right digest": (secret, right),
        "exists, wrong digest": (secret, wrong),
        "does not exist": (secret_dir / "nothing.json.gz", wrong),
        "does not exist, right digest": (secret_dir / "nothing.json.gz", right),
    }
    told = {}
    for what, (path, digest) in runs.items():
        res, lines = _run_prolog(installed_service, site, tmp_path, user1, path, digest, "4002")
        assert res.returncode == 0 and len(lines) == 1, res.stderr
        told[what] = lines[0].replace(str(path), "PATH")
        assert CANARY not in res.stderr + perilog_log(site)
    assert set(told.values()) == {
        "datacrumbs: tracing disabled for this job: probes file PATH: it cannot be opened as "
        "user dctest1 (Permission denied); check the path and its permissions"}
    # a root-only file in a directory she can list: the digest still tells her nothing
    answers = {_run_prolog(installed_service, site, tmp_path, user1, open_dir_secret, digest,
                           "4002")[1][0] for digest in (right, wrong)}
    assert len(answers) == 1
    # and `ls` as the user says the same of both paths in the root-only directory
    for path in (secret, secret_dir / "nothing.json.gz"):
        ls = subprocess.run(["ls", "-l", str(path)], user=user1.pw_uid, group=user1.pw_gid,
                            extra_groups=[], capture_output=True, text=True, timeout=10)
        assert ls.returncode == 2 and "Permission denied" in ls.stderr


@pytest.mark.systemd
def test_the_prologs_cwd_does_not_open_roots_directories(installed_service, site, user1,
                                                         make_probes_file, tmp_path):
    """/proc/self/cwd in the user's path must not lead through the prolog's working directory
    (here under a root-only directory) to a file she could not reach herself; the reader
    works from "/", so the path names /probes.json.gz, which does not exist."""
    hidden = tmp_path / "root-only"
    hidden.mkdir()
    hidden.chmod(0o700)
    cwd = hidden / "cwd"
    cwd.mkdir()
    cwd.chmod(0o755)
    inner = make_probes_file(user1, name="root-only/cwd/probes.json.gz")  # valid, 0644
    path = Path("/proc/self/cwd/probes.json.gz")
    bindir, record = recording_flux(tmp_path)
    env = flux_env(installed_service, site, "4003", user1, None)
    env["PATH"] = f"{bindir}:{env['PATH']}"
    env["DATACRUMBS_JOB_METADATA"] = json.dumps({
        "enable": "yes", "probe_file": str(path),
        "probe_digest": "sha256:" + hashlib.sha256(inner.read_bytes()).hexdigest()})
    res = subprocess.run([str(site.prefix / "sbin/datacrumbs_service_run.sh")], env=env,
                         cwd=cwd, capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    told = [json.loads(line)[6] for line in record.read_text().splitlines()]
    assert told == ["datacrumbs: tracing disabled for this job: probes file "
                    "/proc/self/cwd/probes.json.gz: it does not exist; check the path and its "
                    "permissions"]
    assert installed_service.running_units("datacrumbs@*") == []


# -- the library's own limits and rules ----------------------------------------------------


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


def test_hostile_parses_are_linear(site, user1, tmp_path):
    """The quadratic quote file once held the root prolog for minutes: 8 MiB now takes well
    under a second of CPU in the library itself, as does the deepest nesting."""
    for name, text in (("quotes", b'"' + b'\\"' * ((8 << 20) // 2 - 1)),
                       ("nesting", b"[" * (8 << 20))):
        path = tmp_path / f"{name}.json.gz"
        path.write_bytes(gzip.compress(text))
        start = time.process_time()     # CPU seconds: other load cannot inflate them
        with pytest.raises(InvalidJSON):
            verify_probes_file(path, user1.pw_name, config=site)
        assert time.process_time() - start < 0.5, name


def test_expiry_is_exact(make_probes_file, user1, site, now):
    path = make_probes_file(user1, issued_at=now - DAY, expires_at=now + 100)
    assert verify_probes_file(path, user1.pw_name, config=site, now=now + 99)
    with pytest.raises(Expired):
        verify_probes_file(path, user1.pw_name, config=site, now=now + 100)


def test_small_clock_skew_is_allowed(make_probes_file, user1, site, now):
    path = make_probes_file(user1, issued_at=now + CLOCK_SKEW_SECONDS // 2)
    assert verify_probes_file(path, user1.pw_name, config=site, now=now)["owner"]["user"] == \
        user1.pw_name
    with pytest.raises(NotYetValid):
        verify_probes_file(path, user1.pw_name, config=site, now=now - CLOCK_SKEW_SECONDS)


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
