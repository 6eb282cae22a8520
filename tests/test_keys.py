"""The Ed25519 key store: files, modes, rotation and refusal of unsafe keys."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from datacrumbs.probes.document import write_document
from datacrumbs.probes.verify import BadSignature, UnknownKey, verify_probes_file
from datacrumbs.signing.keys import (KeyStore, KeyStoreError, key_id_of, load_public_keys,
                                     sign_document)

DATACRUMBS = os.path.join(os.path.dirname(sys.executable), "datacrumbs")


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_init_writes_the_documented_files(site, key_store):
    key_id = key_store.current_key_id()
    assert len(key_id) == 16 and int(key_id, 16) >= 0
    private = site.private_key_dir / f"{key_id}.key"
    public = site.public_key_dir / f"{key_id}.pub"
    assert _mode(site.private_key_dir) == 0o700
    assert _mode(private) == 0o600 and os.stat(private).st_uid == 0
    assert _mode(public) == 0o644
    assert (site.private_key_dir / "current").read_text().strip() == key_id
    # Private: PEM PKCS8; public: one base64 line of the raw 32 bytes.
    pem = private.read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    key = serialization.load_pem_private_key(pem, None)
    raw = base64.b64decode(public.read_text().rstrip("\n"), validate=True)
    assert public.read_text().count("\n") == 1 and len(raw) == 32
    assert raw == key.public_key().public_bytes(serialization.Encoding.Raw,
                                                serialization.PublicFormat.Raw)
    assert key_id == hashlib.sha256(raw).hexdigest()[:16] == key_id_of(key.public_key())


def test_init_refuses_to_overwrite(site, key_store):
    before = sorted(os.listdir(site.private_key_dir))
    with pytest.raises(KeyStoreError, match="already holds a signing key.*keys rotate"):
        key_store.init()
    assert sorted(os.listdir(site.private_key_dir)) == before


def test_rotation_keeps_old_files_valid(site, key_store, make_probes_file, user1):
    old_id = key_store.current_key_id()
    old_file = make_probes_file(user1)
    new_id = key_store.rotate()
    assert new_id != old_id and key_store.current_key_id() == new_id
    assert set(load_public_keys(site.public_key_dir)) == {old_id, new_id}
    assert not (site.private_key_dir / f"{old_id}.key").exists()  # never used again
    assert verify_probes_file(old_file, user1.pw_name, config=site)["key_id"] == old_id
    new_file = make_probes_file(user1)
    assert verify_probes_file(new_file, user1.pw_name, config=site)["key_id"] == new_id
    # Removing an old public key revokes what it signed.
    (site.public_key_dir / f"{old_id}.pub").unlink()
    with pytest.raises(UnknownKey):
        verify_probes_file(old_file, user1.pw_name, config=site)
    assert verify_probes_file(new_file, user1.pw_name, config=site)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_readable_private_key_is_refused(site, key_store, make_probes_doc, user1, mode):
    path = site.private_key_dir / f"{key_store.current_key_id()}.key"
    os.chmod(path, mode)
    with pytest.raises(KeyStoreError) as info:
        make_probes_doc(user1)
    assert str(path) in str(info.value)
    assert f"mode {mode:04o}" in str(info.value)
    assert f"run `chmod 600 {path}`" in str(info.value)


def test_open_private_directory_is_refused(site, key_store, make_probes_doc, user1):
    os.chmod(site.private_key_dir, 0o755)
    with pytest.raises(KeyStoreError, match=f"run `chmod 700 {site.private_key_dir}`"):
        make_probes_doc(user1)
    with pytest.raises(KeyStoreError, match="chmod 700"):
        key_store.rotate()


def test_private_key_owned_by_someone_else_is_refused(site, key_store, make_probes_doc, user1):
    path = site.private_key_dir / f"{key_store.current_key_id()}.key"
    os.chown(path, user1.pw_uid, user1.pw_gid)
    with pytest.raises(KeyStoreError, match=f"owned by uid {user1.pw_uid}"):
        make_probes_doc(user1)


def test_symlinked_private_key_is_refused(site, key_store, make_probes_doc, user1, tmp_path):
    key_id = key_store.current_key_id()
    path = site.private_key_dir / f"{key_id}.key"
    elsewhere = tmp_path / "elsewhere.key"
    os.rename(path, elsewhere)
    path.symlink_to(elsewhere)
    with pytest.raises(KeyStoreError, match="not a regular file"):
        make_probes_doc(user1)


def test_damaged_current_file(site, key_store):
    (site.private_key_dir / "current").write_text("../../etc/shadow\n")
    with pytest.raises(KeyStoreError, match="does not name a key id"):
        key_store.current_key_id()


def test_missing_store_says_what_to_run(tmp_path):
    store = KeyStore(tmp_path / "priv", tmp_path / "pub")
    with pytest.raises(KeyStoreError, match="keys init"):
        store.current_key_id()
    with pytest.raises(KeyStoreError, match="keys init"):
        load_public_keys(tmp_path / "pub")


def test_public_key_file_must_match_its_name(site, key_store):
    other = Ed25519PrivateKey.generate().public_key()
    raw = other.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    bad = site.public_key_dir / "0000000000000000.pub"
    bad.write_text(base64.b64encode(raw).decode() + "\n")
    with pytest.raises(KeyStoreError, match=f"rename it to {key_id_of(other)}.pub"):
        load_public_keys(site.public_key_dir)
    bad.write_text("not base64 at all\n")
    with pytest.raises(KeyStoreError, match="not one base64 line"):
        load_public_keys(site.public_key_dir)


def test_unreadable_key_dir_makes_verify_say_unknown_key(site, key_store, signed_probes_file,
                                                         user1):
    (site.public_key_dir / "junk.pub").write_text("xx\n")
    with pytest.raises(UnknownKey, match="no trusted keys could be loaded"):
        verify_probes_file(signed_probes_file, user1.pw_name, config=site)


def test_sign_document_sets_key_id_inside_signed_bytes(make_probes_doc, user1, key_store, site):
    doc = make_probes_doc(user1)
    assert list(doc)[-2:] == ["key_id", "signature"]
    assert doc["key_id"] == key_store.current_key_id()
    # Re-signing a signed document replaces, never nests, the signature.
    again = sign_document(doc, key_store.private_key())
    assert again["signature"] == doc["signature"]  # Ed25519 is deterministic
    forged = dict(doc, key_id=key_id_of(Ed25519PrivateKey.generate().public_key()))
    keys = load_public_keys(site.public_key_dir)
    keys[forged["key_id"]] = keys[doc["key_id"]]
    path = write_document(site.run_dir / "forged.json.gz", forged)
    with pytest.raises(BadSignature):
        verify_probes_file(path, user1.pw_name, config=site, public_keys=keys)


def test_export_public(site, key_store, tmp_path):
    key_store.rotate()
    dest = tmp_path / "node-keys"
    written = key_store.export_public(dest)
    assert sorted(p.name for p in written) == sorted(os.listdir(site.public_key_dir))
    assert load_public_keys(dest).keys() == load_public_keys(site.public_key_dir).keys()
    assert all(_mode(p) == 0o644 for p in written)


def test_keys_cli(site):
    def run(*args):
        proc = subprocess.run([DATACRUMBS, "keys", *args], capture_output=True, text=True,
                              timeout=60, env={**os.environ, "COLUMNS": "200"})
        assert "Traceback" not in proc.stderr
        return proc

    init = run("init")
    assert init.returncode == 0, init.stderr
    first = KeyStore.from_config(site).current_key_id()
    assert first in init.stdout
    again = run("init")
    assert again.returncode == 1
    assert again.stderr.startswith("datacrumbs: error: ") and "keys rotate" in again.stderr
    rotated = run("rotate")
    second = KeyStore.from_config(site).current_key_id()
    assert rotated.returncode == 0 and second in rotated.stdout and second != first
    listing = run("list")
    assert listing.returncode == 0 and first in listing.stdout and second in listing.stdout
    dest = site.prefix / "exported"
    exported = run("export-public", str(dest))
    assert exported.returncode == 0
    assert sorted(os.listdir(dest)) == sorted([f"{first}.pub", f"{second}.pub"])
    os.chmod(site.private_key_dir, 0o755)
    refused = run("rotate")
    assert refused.returncode == 1 and f"chmod 700 {site.private_key_dir}" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_a_reinstall_gets_the_current_public_key_back(site, key_store, make_probes_file, user1,
                                                      tmp_path):
    """`datacrumbs uninstall` keeps the private keys (in /etc) but a new install starts an
    empty public key directory under its prefix: files the service signed then failed to
    verify, and export-public had nothing to copy (seen on this machine: the demo failed).
    export-public restores the current key's public half from its private one first."""
    key_id = key_store.current_key_id()
    path = make_probes_file(user1)
    public = site.public_key_dir / f"{key_id}.pub"
    want = public.read_bytes()
    public.unlink()
    with pytest.raises(UnknownKey):
        verify_probes_file(path, user1.pw_name, config=site)
    dest = tmp_path / "nodes"
    assert dest / f"{key_id}.pub" in key_store.export_public(dest)
    assert public.read_bytes() == want == (dest / f"{key_id}.pub").read_bytes()
    assert verify_probes_file(path, user1.pw_name, config=site)["owner"]["user"] == user1.pw_name
    assert key_store.publish_current() is None          # there already: nothing written


@pytest.mark.parametrize("args", [("init",), ("rotate",)])
def test_an_ordinary_user_is_sent_to_root_not_told_to_take_the_keys(site, key_store, user1,
                                                                    args):
    """As an ordinary user, the commands that write private keys say, in one line,
    that root signs; never the fix "chown <your uid> <root's key directory>"."""
    before = key_store.current_key_id()
    proc = subprocess.run(
        ["setpriv", f"--reuid={user1.pw_uid}", f"--regid={user1.pw_gid}", "--clear-groups",
         DATACRUMBS, "keys", *args], capture_output=True, text=True, timeout=60,
        env={**os.environ, "DATACRUMBS_CONFIG": str(site.source), "COLUMNS": "200"})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("datacrumbs: error: ") and "Traceback" not in proc.stderr
    assert "root" in lines[0] and "sudo" in lines[0] and "chown" not in lines[0], lines[0]
    assert key_store.current_key_id() == before
    assert os.stat(site.private_key_dir).st_uid == 0


def test_a_store_read_by_an_ordinary_user_says_root_signs(site, key_store, user1):
    """The key store's own check, reached by any caller that is not root: no chown advice."""
    code = ("import sys; from datacrumbs.signing.keys import KeyStore, KeyStoreError\n"
            "try: KeyStore(sys.argv[1], sys.argv[2]).current_key_id()\n"
            "except KeyStoreError as e: print(e)")
    proc = subprocess.run(
        ["setpriv", f"--reuid={user1.pw_uid}", f"--regid={user1.pw_gid}", "--clear-groups",
         sys.executable, "-c", code, str(site.private_key_dir), str(site.public_key_dir)],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "the signing keys are root's; run this as root (sudo)" in proc.stdout, proc.stdout
    assert "chown" not in proc.stdout
