"""THE trust decision for a probes file: may this root daemon attach these probes?

Checks run from cheapest and least trusting to most specific: file type and
size, bounded gunzip and JSON, schema, signature by a trusted key, validity
window, owner. The first failure raises its own ProbesFileError subclass
whose message names the file and says what to do; nothing here returns a
partially trusted document.
"""

from __future__ import annotations

import base64
import binascii
import os
import time

from ..config import SiteConfig, load_config
from ..errors import DatacrumbsError
from ..users import lookup_user
from . import (REGENERATE, BadSignature, CorruptGzip, Expired, InvalidJSON, NotRegularFile,
               NotYetValid, OwnerMismatch, ProbesFileError, SchemaViolation, TooLarge,
               UnknownKey, Unreadable, Unsigned)
from .document import canonical_bytes, check_document, read_document

# Login node and compute nodes' clocks may differ a little.
CLOCK_SKEW_SECONDS = 120


def verify_probes_file(path: str | os.PathLike, expected_user: str | int, *,
                       config: SiteConfig | None = None, public_keys: dict | None = None,
                       now: float | None = None) -> dict:
    """Return the verified document, or raise the ProbesFileError that explains why not."""
    config = config or load_config()
    doc = read_document(path, max_compressed=config.max_probes_file_bytes,
                        max_decompressed=config.max_probes_document_bytes)
    return verify_document(doc, expected_user, config=config, public_keys=public_keys, now=now,
                           source=path)


def verify_document(doc, expected_user: str | int, *, config: SiteConfig | None = None,
                    public_keys: dict | None = None, now: float | None = None,
                    source: str | os.PathLike = "(document)",
                    prolog_verified: bool = False) -> dict:
    """The same decision for an already parsed document (service replies, tests).

    ``prolog_verified``: these are the very bytes the prolog verified (the daemon has
    checked its root-only copy's digest), so the schema and the signature are not
    checked again; the expiry and the owner are, as they depend on the time and on
    the user asked for."""
    config = config or load_config()
    if not prolog_verified:
        check_document(doc, source=source, max_probes=config.max_probes)
        _check_signature(doc, source, config, public_keys)
    _check_times(doc, source, time.time() if now is None else now)
    _check_owner(doc, source, expected_user)
    return doc


def _check_signature(doc: dict, source, config: SiteConfig, public_keys: dict | None) -> None:
    if "signature" not in doc or "key_id" not in doc:
        missing = "signature" if "signature" not in doc else "key_id"
        raise Unsigned(source, f"it is not signed (no {missing})")
    if public_keys is None:
        from ..signing.keys import load_public_keys

        try:
            public_keys = load_public_keys(config.public_key_dir)
        except DatacrumbsError as exc:
            raise UnknownKey(source, f"no trusted keys could be loaded ({exc})",
                             "ask the administrator to fix the public key directory") from None
    key = public_keys.get(doc["key_id"])
    if key is None:
        raise UnknownKey(source, f"it is signed by key {doc['key_id']}, which is not among the "
                         f"trusted keys in {config.public_key_dir}")
    from cryptography.exceptions import InvalidSignature     # 28 ms: only when checked

    try:
        signature = base64.b64decode(doc["signature"], validate=True)
        key.verify(signature, canonical_bytes(doc))
    except (binascii.Error, ValueError, InvalidSignature):
        raise BadSignature(source, "its signature does not match its content (it was changed "
                           "after signing)") from None


def _check_times(doc: dict, source, now: float) -> None:
    if now >= doc["expires_at"]:
        raise Expired(source, f"it expired at {_fmt(doc['expires_at'])}")
    if doc["issued_at"] > now + CLOCK_SKEW_SECONDS:
        raise NotYetValid(source, f"it is valid only from {_fmt(doc['issued_at'])} (this host's "
                          f"clock says {_fmt(now)})", "check the clocks of this host and the "
                          "signing host, or " + REGENERATE)


def _check_owner(doc: dict, source, expected_user: str | int) -> None:
    owner = doc["owner"]
    try:
        user = lookup_user(expected_user)
    except DatacrumbsError as exc:
        raise OwnerMismatch(source, f"cannot check its owner: {exc}") from None
    if owner["uid"] != user.uid or owner["user"] != user.name:
        raise OwnerMismatch(source, f"it was signed for {owner['user']} (uid {owner['uid']}), "
                            f"not for {user.name} (uid {user.uid})",
                            f"user {user.name} must {REGENERATE}")


def _fmt(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


__all__ = ["verify_probes_file", "verify_document", "CLOCK_SKEW_SECONDS", "ProbesFileError",
           "NotRegularFile", "TooLarge", "CorruptGzip", "InvalidJSON", "SchemaViolation",
           "Unsigned", "UnknownKey", "BadSignature", "Expired", "NotYetValid", "OwnerMismatch",
           "Unreadable"]
