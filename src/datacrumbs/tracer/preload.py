"""Start the kernel's part of a daemon's start before the daemon's own imports.

The kernel verifying the BPF programs is the largest part of a tracer's start, and
it runs without the GIL: ``datacrumbs run`` calls ``start`` first, which loads the
BPF object in a thread (tracer/objload.py, which imports neither numpy nor the engine)
while the daemon imports its modules and verifies the probes file. Nothing is attached
before that verification: the daemon takes the loader (``take``) only for the very
document, scope and options it verified, and its engine uses it only when it would
have loaded the same object (``Loader.settings``); otherwise it loads its own.

Only the prolog's verified copy is loaded early: its SHA-256 must be the one the
prolog wrote into the unit's environment (DATACRUMBS_PROBE_SHA256). Early loading
is best effort: whatever goes wrong here is left for the daemon to find and report.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("datacrumbs.daemon")

PROBE_SHA256_ENV = "DATACRUMBS_PROBE_SHA256"    # as tracer/daemon.py (not imported: heavy)
_pending: tuple | None = None        # (doc, scope, options, objload.Loader)
_decoded: tuple | None = None        # (SHA-256 of the bytes, the document decoded from them)


def sha256_hex(data: bytes) -> str:
    """SHA-256 of ``data`` in hex, from CPython's own module when it has one: hashlib
    loads OpenSSL and reads its configuration first (4-14 ms, measured 2026-12-03), all
    before the BPF load can begin; a probes file hashes in under a millisecond either
    way."""
    try:
        from _sha2 import sha256          # CPython 3.12+
    except ImportError:
        try:
            from _sha256 import sha256    # CPython 3.11
        except ImportError:
            from hashlib import sha256
    return sha256(data).hexdigest()


def capture_options(doc: dict) -> tuple[str, int, bool]:
    """(mode, interval_ms, capture_paths) of a probes document, as the daemon runs it."""
    capture = doc.get("capture") or {}
    return (capture.get("mode", "trace"), int(capture.get("interval_ms", 1000)),
            bool(capture.get("paths", True)))


def engine_options(doc: dict, config, uid: int) -> dict:
    """The Engine keyword arguments the daemon uses for ``doc``."""
    mode, interval_ms, capture_paths = capture_options(doc)
    return {"mode": mode, "interval_ms": interval_ms, "bpf_object": config.bpf_object,
            "capture_paths": capture_paths, "job_uid": uid}


def start(probes_path, run_id: str, user: str, env=os.environ) -> None:
    """Begin loading the BPF object for this run, if the probes file is the prolog's
    verified copy. Never raises."""
    global _pending, _decoded
    discard()
    expected = env.get(PROBE_SHA256_ENV)
    if not expected:
        return      # not started by the prolog: the daemon does it all in order
    try:
        from ..config import load_config
        from ..jobid import validate_run_id
        from ..flux.envfile import is_probes_copy
        from ..probes.document import decode_document, open_regular_file
        from ..users import lookup_user
        from .objload import TRACEFS, UPROBE_MULTI_ENV, Loader
        from .scope import scope_from_env

        run_id = validate_run_id(run_id)
        config = load_config()
        data = open_regular_file(probes_path, config.max_probes_file_bytes)
        if sha256_hex(data) != expected:
            return
        trusted = is_probes_copy(probes_path, config.run_dir, run_id)
        doc = decode_document(data, source=probes_path, prolog_verified=trusted,
                              max_decompressed=config.max_probes_document_bytes)
        _decoded = (expected, doc, trusted)
        account = lookup_user(user)
        scope = scope_from_env(account.uid, env, run_id)
        options = engine_options(doc, config, account.uid)
        probes = doc.get("probes") if isinstance(doc, dict) else None
        if not isinstance(probes, list) or not probes:
            return
        if not (TRACEFS / "events").is_dir():
            return      # which programs are needed depends on its events: the engine mounts it
        loader = Loader(probes, bpf_object=options["bpf_object"], mode=options["mode"],
                        scope_kind=scope.kind, multi=os.environ.get(UPROBE_MULTI_ENV, "1") != "0")
        loader.start()
        _pending = (doc, scope, options, loader)
    except Exception as exc:  # noqa: BLE001 - the daemon finds it again and says so
        log.debug("BPF object not loaded early: %s", exc)


def decoded(digest: str, trusted: bool) -> dict | None:
    """The document ``start`` decoded from the bytes of this SHA-256, once, else None: the
    daemon checks the same digest of the bytes it reads, and the same bytes decode to the
    same document (10,000 probes: 65 ms not spent twice). It still verifies it. One
    decoded as the prolog's verified copy (``prolog_verified``) is given only to a
    daemon that ``trusted`` that copy too."""
    global _decoded
    got, _decoded = _decoded, None
    if got is None or got[0] != digest or (got[2] and not trusted):
        return None
    return got[1]


def take(doc: dict, scope, options: dict):
    """The objload.Loader begun by ``start`` if it was made from exactly this verified
    document, scope and options (nothing is attached by it), else None: the caller
    gives it to its Engine, or closes it."""
    global _pending
    pending, _pending = _pending, None
    if pending is None:
        return None
    pdoc, pscope, poptions, loader = pending
    if pdoc == doc and pscope == scope and poptions == options:
        return loader
    loader.close()
    return None


def discard() -> None:
    """Close a load begun by ``start`` that nobody took."""
    global _pending, _decoded
    pending, _pending = _pending, None
    _decoded = None
    if pending is not None:
        pending[3].close()
