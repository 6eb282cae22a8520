"""Ed25519 keys of the signing service, and signing a probes document.

Private keys never leave ``private_key_dir`` (root, 0700; files 0600 PEM
PKCS8): a key that others could read is refused, with the chmod to run,
instead of being used. Public keys are one base64 line of the raw 32 bytes
in ``<public_key_dir>/<key_id>.pub`` — trivial for the Flux plugin to read
with the standard library. Rotation keeps old public keys, so files signed
before it still verify until they expire; removing a ``.pub`` file revokes
every file signed with that key.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import os
import re
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..atomicfile import atomic_write
from ..errors import DatacrumbsError

KEY_ID_RE = re.compile(r"[0-9a-f]{16}")
MAX_KEY_FILE_BYTES = 4096


class KeyStoreError(DatacrumbsError):
    """A missing, unsafe or damaged key or key directory."""


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    current: bool
    has_private: bool
    public_path: Path | None


def key_id_of(public_key: Ed25519PublicKey) -> str:
    """First 16 hex digits of SHA-256 over the raw 32-byte public key."""
    return hashlib.sha256(_raw(public_key)).hexdigest()[:16]


def _raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_line(public_key: Ed25519PublicKey) -> str:
    return base64.b64encode(_raw(public_key)).decode("ascii") + "\n"


def _read_small(path: Path, what: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise KeyStoreError(f"cannot open {what} {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyStoreError(f"{what} {path} is not a regular file; remove it")
        data = os.read(fd, MAX_KEY_FILE_BYTES + 1)
        if len(data) > MAX_KEY_FILE_BYTES:
            raise KeyStoreError(f"{what} {path} is larger than {MAX_KEY_FILE_BYTES} bytes; "
                                "it is not a datacrumbs key")
        return data
    finally:
        os.close(fd)


def read_public_key(path: str | os.PathLike) -> Ed25519PublicKey:
    path = Path(path)
    data = _read_small(path, "public key file")
    try:
        raw = base64.b64decode(data.strip(), validate=True)
        if len(raw) != 32:
            raise ValueError
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError):
        raise KeyStoreError(f"public key file {path} is not one base64 line of a 32-byte "
                            "Ed25519 key; replace it with the output of "
                            "`datacrumbs keys export-public`") from None


def load_public_keys(public_dir: str | os.PathLike) -> dict[str, Ed25519PublicKey]:
    """Every trusted key, by key id; a file whose name is not its key id is refused."""
    public_dir = Path(public_dir)
    try:
        names = sorted(p for p in os.listdir(public_dir) if p.endswith(".pub"))
    except FileNotFoundError:
        raise KeyStoreError(f"public key directory {public_dir} does not exist; run "
                            "`datacrumbs keys init` on the signing host and copy its public "
                            "keys here with `datacrumbs keys export-public`") from None
    except OSError as exc:
        raise KeyStoreError(f"cannot list public key directory {public_dir}: "
                            f"{exc.strerror}") from None
    keys = {}
    for name in names:
        key = read_public_key(public_dir / name)
        if key_id_of(key) != name[:-4]:
            raise KeyStoreError(f"public key file {public_dir / name} holds key "
                                f"{key_id_of(key)}, not {name[:-4]}; rename it to "
                                f"{key_id_of(key)}.pub")
        keys[name[:-4]] = key
    return keys


def sign_document(doc: dict, private_key: Ed25519PrivateKey) -> dict:
    """A signed copy: ``key_id`` first (it is inside the signed bytes), then ``signature``."""
    from ..probes.document import canonical_bytes, check_document

    signed = copy.deepcopy(doc)
    signed.pop("signature", None)
    signed["key_id"] = key_id_of(private_key.public_key())
    check_document(signed, source="(document to sign)")
    signed["signature"] = base64.b64encode(private_key.sign(canonical_bytes(signed))).decode()
    return signed


def _write_temp(directory: Path, name: str, data: bytes, mode: int) -> str:
    """A complete, synced temp file beside ``name``, with its final mode already set."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    return tmp


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create a file that must not exist yet (link fails if it does: never overwrite a key)."""
    tmp = _write_temp(path.parent, path.name, data, mode)
    try:
        os.link(tmp, path)
    finally:
        os.unlink(tmp)


class KeyStore:
    """The signing host's keys: private in ``private_dir``, public in ``public_dir``."""

    def __init__(self, private_dir: str | os.PathLike, public_dir: str | os.PathLike):
        self.private_dir = Path(private_dir)
        self.public_dir = Path(public_dir)

    @classmethod
    def from_config(cls, config) -> "KeyStore":
        return cls(config.private_key_dir, config.public_key_dir)

    # -- creating keys -------------------------------------------------------------

    def init(self) -> str:
        """Create the first key; refuse if any key is already there."""
        if (self.private_dir / "current").exists() or (
                self.private_dir.is_dir() and any(self.private_dir.glob("*.key"))):
            raise KeyStoreError(f"{self.private_dir} already holds a signing key; use "
                                "`datacrumbs keys rotate` to replace it")
        return self._add_key()

    def rotate(self) -> str:
        """Make a new current key; old public keys stay so signed files keep verifying."""
        old = self.current_key_id()
        new = self._add_key()
        # The old private key is never used again: keeping it would only be a risk.
        try:
            (self.private_dir / f"{old}.key").unlink()
        except FileNotFoundError:
            pass
        return new

    def _add_key(self) -> str:
        self.private_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._check_private_dir()
        self.public_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        key_id = key_id_of(key.public_key())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        _write_new(self.private_dir / f"{key_id}.key", pem, 0o600)
        atomic_write(self.public_dir / f"{key_id}.pub", public_key_line(key.public_key()).encode(),
                     mode=0o644)
        atomic_write(self.private_dir / "current", f"{key_id}\n".encode(), mode=0o600)
        return key_id

    # -- using keys ----------------------------------------------------------------

    def _check_private_dir(self) -> None:
        try:
            st = os.stat(self.private_dir, follow_symlinks=False)
        except FileNotFoundError:
            raise KeyStoreError(f"private key directory {self.private_dir} does not exist; "
                                "run `datacrumbs keys init`") from None
        if not stat.S_ISDIR(st.st_mode):
            raise KeyStoreError(f"private key path {self.private_dir} is not a directory")
        self._check_owner_mode(self.private_dir, st, "700")

    @staticmethod
    def _check_owner_mode(path: Path, st: os.stat_result, fix: str) -> None:
        if st.st_uid != os.geteuid():
            if os.geteuid() != 0:
                # an ordinary user is never told to take the keys over: root signs
                raise KeyStoreError(f"{path} belongs to uid {st.st_uid}: the signing keys are "
                                    "root's; run this as root (sudo)")
            raise KeyStoreError(f"{path} is owned by uid {st.st_uid}, not by root which signs; "
                                f"run `chown root {path}`")
        if st.st_mode & 0o077:
            raise KeyStoreError(f"{path} is accessible by group or others (mode "
                                f"{stat.S_IMODE(st.st_mode):04o}); run `chmod {fix} {path}`")

    def current_key_id(self) -> str:
        self._check_private_dir()
        path = self.private_dir / "current"
        if not path.exists():
            raise KeyStoreError(f"no signing key in {self.private_dir}; run `datacrumbs keys init`")
        key_id = _read_small(path, "current key file").decode("ascii", "replace").strip()
        if not KEY_ID_RE.fullmatch(key_id):
            raise KeyStoreError(f"{path} does not name a key id (16 hex digits); "
                                "run `datacrumbs keys rotate` to make a new key")
        return key_id

    def private_key(self, key_id: str | None = None) -> Ed25519PrivateKey:
        """Load a private key after checking nobody else could have read it."""
        key_id = key_id or self.current_key_id()
        path = self.private_dir / f"{key_id}.key"
        try:
            st = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            raise KeyStoreError(f"private key {path} is missing; run `datacrumbs keys rotate` "
                                "to make a new key") from None
        if not stat.S_ISREG(st.st_mode):
            raise KeyStoreError(f"private key {path} is not a regular file")
        self._check_owner_mode(path, st, "600")
        try:
            key = serialization.load_pem_private_key(_read_small(path, "private key"), None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise KeyStoreError(f"private key {path} is not an unencrypted PEM PKCS8 key") from None
        if not isinstance(key, Ed25519PrivateKey) or key_id_of(key.public_key()) != key_id:
            raise KeyStoreError(f"private key {path} is not the Ed25519 key {key_id}")
        return key

    def sign(self, doc: dict) -> dict:
        return sign_document(doc, self.private_key())

    def publish_current(self) -> Path | None:
        """Write the current key's public half into the public key directory if it is not
        there; the file written, or None. ``datacrumbs uninstall`` keeps the private keys
        (in /etc) but a new install starts an empty key directory under its prefix: every
        file the service signed then failed to verify, and export-public found nothing to
        copy. Raises KeyStoreError when the private key cannot be read (not root)."""
        key_id = self.current_key_id()
        dest = self.public_dir / f"{key_id}.pub"
        if dest.exists():
            return None
        key = self.private_key()
        self.public_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        atomic_write(dest, public_key_line(key.public_key()).encode(), mode=0o644)
        return dest

    def export_public(self, dest_dir: str | os.PathLike) -> list[Path]:
        """Copy every trusted public key (old ones too) to another key directory, the
        current key's first restored from its private half if it is missing here."""
        dest_dir = Path(dest_dir)
        try:
            self.publish_current()
        except (KeyStoreError, OSError):
            pass        # no private key here (or not root): copy what there is
        keys = load_public_keys(self.public_dir)
        if not keys:
            raise KeyStoreError(f"no public keys in {self.public_dir}; run `datacrumbs keys init`")
        dest_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        written = []
        for key_id, key in keys.items():
            dest = dest_dir / f"{key_id}.pub"
            if dest.resolve() != (self.public_dir / f"{key_id}.pub").resolve():
                atomic_write(dest, public_key_line(key).encode(), mode=0o644)
            written.append(dest)
        return written

    def list(self) -> list[KeyInfo]:
        try:
            current = self.current_key_id()
        except KeyStoreError:
            current = None
        public = load_public_keys(self.public_dir) if self.public_dir.is_dir() else {}
        private = set()
        if self.private_dir.is_dir():
            private = {p.stem for p in self.private_dir.glob("*.key")}
        return [KeyInfo(k, k == current, k in private,
                        self.public_dir / f"{k}.pub" if k in public else None)
                for k in sorted(set(public) | private)]


__all__ = ["KeyStore", "KeyStoreError", "KeyInfo", "key_id_of", "load_public_keys",
           "read_public_key", "public_key_line", "sign_document"]
