"""Flux CLI plugin of datacrumbs: per-job eBPF I/O tracing, asked for at submit time.

Installed by `datacrumbs install` as ``<prefix>/etc/datacrumbs/flux/cli/plugins/datacrumbs.py``;
the admin makes Flux find it (symlink into ``/etc/flux/cli/plugins/`` or ``FLUX_CLI_PLUGINPATH``).
See docs/flux-plugin.md for the admin and user view.

Why this file looks the way it does:

- Flux imports every plugin file on every ``flux run/submit/batch/alloc/bulksubmit`` and inside
  the job-ingest validator, under Flux's own interpreter (Debian's ``/usr/bin/python3``). So it
  is one self-contained file, imports only the standard library at module level (``flux.*`` for
  the base class, ``cryptography`` lazily, only when a job asks for tracing) and never fails to
  import: without ``flux`` or ``cryptography`` the options still exist and refusals stay clear.
- It cannot import the datacrumbs package (not installed in Flux's Python), so it re-implements
  the one trust decision the package makes in ``probes/verify.py``, exactly as docs/design.md
  defines it: canonical JSON without ``signature``, Ed25519, ``<key_id>.pub`` = raw 32-byte key
  in base64, key_id = first 16 hex digits of SHA-256 of that key.
- Flux builds the class with one argument and calls ``preinit`` and ``modify_jobspec`` on two
  different instances, so nothing is kept on ``self`` but the option list Flux reads.
- ``validate`` may only raise ValueError, TypeError or OSError (anything else kills Flux's
  validator worker and the user reads "worker unexpectedly exited"), so every callback goes
  through ``_guard``, which turns any failure into one ValueError sentence.
"""

import errno
import json
import os
import re
import stat
import sys
import time

# hashlib (OpenSSL), zlib and base64 are imported where used: most `flux run`s never need them.

try:
    from flux.cli.plugin import CLIPlugin as _PluginBase
except Exception:  # noqa: BLE001 - importing this file must never fail

    class _PluginBase:
        """Enough of flux.cli.plugin.CLIPlugin to keep this module usable without Flux."""

        def __init__(self, prog, prefix="ex", version=None):
            self.prog = prog[5:] if prog.startswith("flux ") else prog
            self.prefix = prefix
            self.version = version
            self.options = []

        def add_option(self, name, **kwargs):
            self.options.append((name.replace("--", f"--{self.prefix}-", 1), kwargs))


PREFIX = "datacrumbs"
ATTRIBUTE = "system.datacrumbs"  # lands at attributes.system.datacrumbs
CONFIG_ENV = "DATACRUMBS_CONFIG"
DEFAULT_PREFIX = "/opt/datacrumbs"
# Mirrors SiteConfig's defaults (datacrumbs/config.py) so both sides trust the same keys.
DEFAULT_KEY_DIR = DEFAULT_PREFIX + "/etc/datacrumbs/keys"
DEFAULT_LIMITS = {
    "max_probes_file_bytes": 1 << 20,
    "max_probes_document_bytes": 8 << 20,
    "max_probes": 4096,
}
MAX_CONFIG_BYTES = 1 << 20
MAX_JSON_DEPTH = 32
MAX_PATH_CHARS = 4096
CLOCK_SKEW_SECONDS = 120  # as datacrumbs/probes/verify.py: hosts' clocks may differ a little
LAST_TIME = 253402300799  # 9999-12-31T23:59:59Z: anything later is not a time
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}\Z")
KEY_ID_RE = re.compile(r"[0-9a-f]{16}\Z")
REGENERATE = "generate and sign a new one with `datacrumbs probes generate --sign`"
UNAVAILABLE = (
    "datacrumbs: tracing is unavailable: python3-cryptography is not installed for "
    "Flux's Python (ask your admin)"
)
NO_SUBMITTER = (
    "datacrumbs: this traced job is refused because the validator could not determine the "
    "submitting user's uid, so the probes file's owner cannot be checked; ask your admin to "
    "check that this plugin runs in flux-core's job-ingest validator "
    "(flux/job/validator/plugins/jobspec.py) and that this flux-core version still passes a "
    "ValidatorJobInfo with a userid (see docs/flux-plugin.md)"
)


class _Refusal(Exception):
    """A refusal whose text is the sentence the user reads (becomes ValueError at the edge)."""


def _guard(func, *args):
    """Run a callback so that Flux only ever sees one ValueError with one sentence."""
    try:
        return func(*args)
    except _Refusal as exc:
        raise ValueError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - anything else would kill Flux's validator
        raise ValueError(
            f"datacrumbs: internal error while checking the tracing request "
            f"({type(exc).__name__}: {exc}); report this to your admin"
        ) from None


def _default_dest_is_prefixed():
    """True on flux-core >= 0.84, where an option's default dest carries the prefix.

    There Flux also gives callbacks the unprefixed alias (args.enable). Before 0.84 the default
    dest is unprefixed and collides with any other plugin's --enable, so we name it ourselves.
    """
    try:
        from flux.cli.plugin import CLIPluginOption

        return CLIPluginOption("--x", prefix="p").kwargs.get("dest") == "p_x"
    except Exception:  # noqa: BLE001
        return False


def _option(args, name):
    """Read our option whichever dest Flux used: datacrumbs_NAME, else the unprefixed NAME."""
    for attr in (f"{PREFIX}_{name}", name):
        try:
            return getattr(args, attr)
        except AttributeError:
            continue
    return None


def _show(text, limit=200):
    """A user-supplied string made safe to put in a one-line message."""
    text = str(text)
    shown = text if text.isprintable() else ascii(text)
    return shown if len(shown) <= limit else shown[:limit] + "..."


def _when(seconds):
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


# ---------------------------------------------------------------- site configuration


def _plugin_prefix():
    """The install prefix, from this file's real path <prefix>/etc/datacrumbs/flux/cli/plugins."""
    try:
        here = os.path.dirname(os.path.realpath(__file__))
    except NameError:
        return DEFAULT_PREFIX
    parts = here.split(os.sep)
    if len(parts) > 5 and parts[-5:] == ["etc", "datacrumbs", "flux", "cli", "plugins"]:
        return os.sep.join(parts[:-5]) or os.sep
    return DEFAULT_PREFIX


class _Site:
    """The few site settings the plugin needs: where trusted keys are, and size limits."""

    def __init__(self, key_dir, limits):
        self.key_dir = key_dir
        self.max_file = limits["max_probes_file_bytes"]
        self.max_document = limits["max_probes_document_bytes"]
        self.max_probes = limits["max_probes"]


def _site():
    """Read the site TOML: $DATACRUMBS_CONFIG, else <prefix>/etc/datacrumbs/datacrumbs.toml."""
    explicit = os.environ.get(CONFIG_ENV)
    prefix = _plugin_prefix()
    path = explicit or os.path.join(prefix, "etc", "datacrumbs", "datacrumbs.toml")
    try:
        raw = _read_bounded(path, MAX_CONFIG_BYTES, follow=True)
    except FileNotFoundError:
        if explicit:
            raise _Refusal(
                f"datacrumbs: configuration file {_show(path)} named by {CONFIG_ENV} does not "
                f"exist (ask your admin)"
            ) from None
        return _Site(os.path.join(prefix, "etc", "datacrumbs", "keys"), DEFAULT_LIMITS)
    except (OSError, _TooBig) as exc:
        raise _Refusal(
            f"datacrumbs: cannot read configuration file {_show(path)} ({_reason(exc)}); "
            f"ask your admin"
        ) from None
    import tomllib

    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise _Refusal(
            f"datacrumbs: configuration file {_show(path)} is not valid TOML ({exc}); "
            f"ask your admin"
        ) from None
    paths = data.get("paths", {})
    limits_table = data.get("limits", {})
    if not isinstance(paths, dict) or not isinstance(limits_table, dict):
        raise _Refusal(f"datacrumbs: configuration file {_show(path)} has a malformed "
                       f"[paths] or [limits] section; ask your admin")
    key_dir = paths.get("public_key_dir", DEFAULT_KEY_DIR)
    if not isinstance(key_dir, str) or not key_dir.startswith("/"):
        raise _Refusal(f"datacrumbs: configuration file {_show(path)}: public_key_dir must "
                       f"be an absolute path; ask your admin")
    limits = dict(DEFAULT_LIMITS)
    for key in limits:
        if key in limits_table:
            value = limits_table[key]
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise _Refusal(f"datacrumbs: configuration file {_show(path)}: {key} must be "
                               f"a positive integer; ask your admin")
            limits[key] = value
    return _Site(key_dir, limits)


# ---------------------------------------------------------------- reading files


class _TooBig(Exception):
    pass


def _reason(exc):
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc) or type(exc).__name__


def _read_bounded(path, limit, follow=False):
    """Read at most ``limit`` bytes of a regular file, from one descriptor (no TOCTOU).

    Raises OSError as the kernel reports it, IsADirectoryError / _TooBig, or
    OSError(EINVAL) for anything that is not a regular file (FIFO, device).
    """
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
    if not follow:
        flags |= os.O_NOFOLLOW
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        if info.st_size > limit:
            raise _TooBig(f"{info.st_size} bytes, more than the limit of {limit}")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 16, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise _TooBig(f"more than the limit of {limit} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _read_probes_file(path, site, reader):
    """The probes file's bytes, or a refusal naming the file and what to do.

    ``reader`` says who is reading: "you" (user side) or "the Flux instance" (validator).
    """
    name = _show(path)
    try:
        return _read_bounded(path, site.max_file)
    except FileNotFoundError:
        raise _Refusal(f"datacrumbs: probes file {name} does not exist; {REGENERATE}") from None
    except IsADirectoryError:
        raise _Refusal(f"datacrumbs: probes file {name} is a directory, not a probes file; "
                       f"give the path of a .json.gz file") from None
    except PermissionError:
        if reader == "you":
            raise _Refusal(f"datacrumbs: you cannot read probes file {name}; give a file you "
                           f"own and can read") from None
        raise _Refusal(
            f"datacrumbs: the Flux instance (uid {os.getuid()}) cannot read probes file {name}; "
            f"make the file readable (chmod a+r) and its directories searchable, then resubmit"
        ) from None
    except _TooBig as exc:
        raise _Refusal(f"datacrumbs: probes file {name} is too large ({exc}); "
                       f"{REGENERATE}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _Refusal(
                f"datacrumbs: probes file {name} is a symbolic link; give the path of the file "
                f"itself (for example $(readlink -f {name}))"
            ) from None
        if exc.errno == errno.EINVAL:
            raise _Refusal(f"datacrumbs: probes file {name} is not a regular file; "
                           f"{REGENERATE}") from None
        raise _Refusal(f"datacrumbs: cannot read probes file {name} ({_reason(exc)})") from None


# ---------------------------------------------------------------- the probes document


def _gunzip(data, limit, name):
    """Decompress all gzip members, never producing more than ``limit`` bytes (gzip bombs)."""
    import zlib

    if data[:2] != b"\x1f\x8b":
        raise _Refusal(f"datacrumbs: probes file {name} is not gzip-compressed; {REGENERATE}")
    out = bytearray()
    rest = data
    while rest:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out += inflater.decompress(rest, limit + 1 - len(out))
        except zlib.error as exc:
            raise _Refusal(f"datacrumbs: probes file {name} is corrupt ({exc}); "
                           f"{REGENERATE}") from None
        if len(out) > limit:
            raise _Refusal(f"datacrumbs: probes file {name} decompresses to more than {limit} "
                           f"bytes; {REGENERATE}")
        if not inflater.eof:
            raise _Refusal(f"datacrumbs: probes file {name} is truncated; {REGENERATE}")
        rest = inflater.unused_data
        if rest and rest[:2] != b"\x1f\x8b":
            raise _Refusal(f"datacrumbs: probes file {name} has trailing garbage after its "
                           f"gzip data; {REGENERATE}")
    return bytes(out)


def _parse_json(raw, name):
    """Strict JSON: UTF-8, no duplicate keys, no NaN/Infinity, bounded nesting."""

    def no_duplicates(pairs):
        result = {}
        for key, value in pairs:
            if key in result:
                raise _Refusal(f"datacrumbs: probes file {name} repeats the key "
                               f"{_show(key, 60)}; {REGENERATE}")
            result[key] = value
        return result

    def no_constants(word):
        raise _Refusal(f"datacrumbs: probes file {name} contains {word}, which is not JSON; "
                       f"{REGENERATE}")

    try:
        text = raw.decode("utf-8")
        doc = json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except (ValueError, RecursionError) as exc:
        raise _Refusal(f"datacrumbs: probes file {name} is not valid JSON "
                       f"({_show(exc, 120)}); {REGENERATE}") from None
    stack = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise _Refusal(f"datacrumbs: probes file {name} is nested more than "
                           f"{MAX_JSON_DEPTH} levels deep; {REGENERATE}")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
    return doc


def _is_int(value, low=0, high=LAST_TIME):
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _check_shape(doc, name, site):
    """The fields the trust decision reads; the tracer daemon checks the full schema."""

    def bad(what):
        return _Refusal(f"datacrumbs: probes file {name} {what}; {REGENERATE}")

    if not isinstance(doc, dict) or doc.get("format") != "datacrumbs-probes":
        raise bad("is not a datacrumbs probes document")
    if doc.get("version") != 1 or isinstance(doc.get("version"), bool):
        raise bad(f"has version {_show(doc.get('version'), 20)}, but this plugin reads version 1")
    owner = doc.get("owner")
    if not (isinstance(owner, dict) and _is_int(owner.get("uid"), 0, 2**32 - 1)
            and isinstance(owner.get("user"), str)):
        raise bad("has no valid owner (uid and user)")
    if not (_is_int(doc.get("issued_at")) and _is_int(doc.get("expires_at"))):
        raise bad("has no valid issued_at/expires_at times")
    if doc["expires_at"] <= doc["issued_at"]:
        raise bad("expires before it was issued")
    probes = doc.get("probes")
    if not isinstance(probes, list) or not all(isinstance(p, dict) for p in probes):
        raise bad("has no list of probes")
    if len(probes) > site.max_probes:
        raise bad(f"has {len(probes)} probes, more than this site's limit of {site.max_probes}")
    if "signature" not in doc:
        raise bad("is not signed")
    if not isinstance(doc.get("key_id"), str) or not KEY_ID_RE.match(doc["key_id"]):
        raise bad("has no valid key_id (16 lowercase hex digits)")
    import base64
    import binascii

    signature = doc["signature"]
    try:
        raw = base64.b64decode(signature, validate=True) if isinstance(signature, str) else b""
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 64:
        raise bad("has a malformed signature (not base64 of 64 bytes)")
    return raw


def canonical_bytes(doc):
    """The signed bytes, exactly as docs/design.md and datacrumbs.probes.document define them."""
    unsigned = {k: v for k, v in doc.items() if k != "signature"}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def _load_crypto():
    """(Ed25519PublicKey, InvalidSignature), or None when Flux's Python lacks cryptography."""
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:  # noqa: BLE001 - a broken install may raise anything, even a panic
        return None
    return Ed25519PublicKey, InvalidSignature


def _public_key(key_id, site, name):
    path = os.path.join(site.key_dir, key_id + ".pub")
    try:
        text = _read_bounded(path, 4096, follow=True)
    except FileNotFoundError:
        raise _Refusal(
            f"datacrumbs: probes file {name} is signed by key {key_id}, which this site does not "
            f"trust (no {_show(path)}); {REGENERATE}"
        ) from None
    except (OSError, _TooBig) as exc:
        raise _Refusal(f"datacrumbs: cannot read public key {_show(path)} ({_reason(exc)}); "
                       f"ask your admin") from None
    import base64
    import binascii
    import hashlib

    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32 or hashlib.sha256(raw).hexdigest()[:16] != key_id:
        raise _Refusal(f"datacrumbs: public key file {_show(path)} does not hold the Ed25519 "
                       f"key {key_id} (raw 32 bytes in base64); ask your admin")
    return raw


def _check_document(path, data, site, uid, crypto, now=None):
    """The trust decision: shape, signature by a trusted key, validity window, owner."""
    name = _show(path)
    doc = _parse_json(_gunzip(data, site.max_document, name), name)
    signature = _check_shape(doc, name, site)
    if crypto is not None:
        key_class, invalid = crypto
        raw_key = _public_key(doc["key_id"], site, name)
        try:
            key_class.from_public_bytes(raw_key).verify(signature, canonical_bytes(doc))
        except invalid:
            raise _Refusal(f"datacrumbs: the signature of probes file {name} does not match its "
                           f"content (it was changed after signing); {REGENERATE}") from None
    now = int(time.time()) if now is None else now
    if doc["expires_at"] <= now:
        raise _Refusal(f"datacrumbs: probes file {name} expired at {_when(doc['expires_at'])}; "
                       f"{REGENERATE}")
    if doc["issued_at"] > now + CLOCK_SKEW_SECONDS:
        raise _Refusal(f"datacrumbs: probes file {name} is not valid before "
                       f"{_when(doc['issued_at'])} (clock skew between hosts?); ask your admin")
    owner = doc["owner"]
    if owner["uid"] != uid:  # uid None (unknown) never matches: fail closed
        raise _Refusal(f"datacrumbs: probes file {name} belongs to user {_show(owner['user'], 40)} "
                       f"(uid {owner['uid']}), not to the job's user (uid {uid}); use a probes "
                       f"file signed for you")
    return doc


def _digest(data):
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- user side (flux run/submit)


def _requested_path(args):
    """The absolute probes file path if tracing was asked for, None if not, or a refusal."""
    enable = bool(_option(args, "enable"))
    probe_file = _option(args, "probe_file")
    if not enable and probe_file is None:
        return None
    if probe_file is None:
        raise _Refusal("datacrumbs: --datacrumbs-enable needs --datacrumbs-probe-file PATH, a "
                       "probes file made with `datacrumbs probes generate --sign`")
    if not enable:
        raise _Refusal("datacrumbs: --datacrumbs-probe-file was given without "
                       "--datacrumbs-enable; add --datacrumbs-enable to trace this job")
    if not isinstance(probe_file, str) or not probe_file or "\0" in probe_file:
        raise _Refusal("datacrumbs: --datacrumbs-probe-file needs a file path")
    path = os.path.abspath(os.path.expanduser(probe_file))
    if len(path) > MAX_PATH_CHARS:
        raise _Refusal(f"datacrumbs: probes file path is longer than {MAX_PATH_CHARS} characters")
    return path


def _check_request(args):
    _requested_path(args)


def _modify(args, jobspec):
    path = _requested_path(args)
    if path is None:
        return
    site = _site()
    data = _read_probes_file(path, site, "you")
    # Without cryptography here the validator still checks the signature in the instance.
    _check_document(path, data, site, uid=os.getuid(), crypto=_load_crypto())
    jobspec.setattr(ATTRIBUTE, {"enable": "yes", "probe_file": path, "probe_digest": _digest(data)})


# ---------------------------------------------------------------- instance side (job-ingest)


def _validator_userid():
    """The submitting user's uid from Flux's validator, or None if it cannot be found.

    CLI plugins' validate() gets only the jobspec. flux-core's job-ingest validator runs
    ``Validator.validate(self, args)`` in flux/job/validator/plugins/jobspec.py with ``args`` a
    ``ValidatorJobInfo`` whose ``jobinfo["userid"]`` is the authenticated submitter, and calls
    the CLI plugins from there; we find that object up the call stack.
    """
    frame = sys._getframe(1)
    for _ in range(64):
        if frame is None:
            break
        for value in list(frame.f_locals.values()):
            kind = type(value)
            if kind.__name__ == "ValidatorJobInfo" and kind.__module__.startswith("flux.job."):
                info = getattr(value, "__dict__", {}).get("jobinfo")
                uid = info.get("userid") if isinstance(info, dict) else None
                if _is_int(uid, 0, 2**32 - 1):
                    return uid
        frame = frame.f_back
    return None


def _request_in(jobspec):
    """attributes.system.datacrumbs as (path, digest), None if absent, or a refusal."""
    spec = getattr(jobspec, "jobspec", jobspec)
    attributes = spec.get("attributes") if isinstance(spec, dict) else None
    system = attributes.get("system") if isinstance(attributes, dict) else None
    if not isinstance(system, dict) or "datacrumbs" not in system:
        return None
    meta = system["datacrumbs"]
    if not isinstance(meta, dict) or set(meta) != {"enable", "probe_file", "probe_digest"}:
        raise _Refusal("datacrumbs: attributes.system.datacrumbs must hold exactly enable, "
                       "probe_file and probe_digest; submit with --datacrumbs-enable "
                       "--datacrumbs-probe-file PATH instead of setting it by hand")
    if meta["enable"] != "yes":
        raise _Refusal('datacrumbs: attributes.system.datacrumbs.enable must be "yes"; drop '
                       'the attribute to run without tracing')
    path = meta["probe_file"]
    if (not isinstance(path, str) or not path.startswith("/") or "\0" in path
            or len(path) > MAX_PATH_CHARS or os.path.normpath(path) != path):
        raise _Refusal("datacrumbs: attributes.system.datacrumbs.probe_file must be a normalized "
                       "absolute path; submit with --datacrumbs-probe-file PATH")
    digest = meta["probe_digest"]
    if not isinstance(digest, str) or not DIGEST_RE.match(digest):
        raise _Refusal('datacrumbs: attributes.system.datacrumbs.probe_digest must be '
                       '"sha256:<64 hex digits>"; submit with --datacrumbs-probe-file PATH')
    return path, digest


def _validate(jobspec):
    request = _request_in(jobspec)
    if request is None:
        return
    path, digest = request
    # Fail closed: without the authenticated submitter the owner check cannot be made, and a
    # job must not run with someone else's probes file because a Flux version moved the uid.
    uid = _validator_userid()
    if uid is None:
        raise _Refusal(NO_SUBMITTER)
    crypto = _load_crypto()
    if crypto is None:
        raise _Refusal(UNAVAILABLE)
    site = _site()
    data = _read_probes_file(path, site, "the Flux instance")
    if _digest(data) != digest:
        raise _Refusal(f"datacrumbs: probes file {_show(path)} changed after the job was "
                       f"submitted; resubmit the job")
    _check_document(path, data, site, uid=uid, crypto=crypto)


# ---------------------------------------------------------------- the plugin


class DatacrumbsPlugin(_PluginBase):
    """datacrumbs: trace this job's I/O (POSIX, STDIO, block, ...) with eBPF.

    Usage:
        datacrumbs probes generate --sign -o ~/probes.json.gz   # once, on a login node
        flux run --datacrumbs-enable --datacrumbs-probe-file ~/probes.json.gz ./app

    --datacrumbs-enable          ask for tracing; needs --datacrumbs-probe-file
    --datacrumbs-probe-file PATH the signed probes file saying what to trace

    At submission the file is read, its signature, validity and owner are
    checked, and its absolute path and SHA-256 are stored in the jobspec
    (attributes.system.datacrumbs). Flux checks it again when it receives the
    job: the file must still be the same bytes, be a regular file (not a
    symbolic link) readable by the Flux instance, be signed by a key this
    site trusts, be unexpired and belong to you. Otherwise the job is refused
    with one sentence saying what to do. The trace is written per node to the
    site's trace directory (see `datacrumbs report`).
    """

    def __init__(self, prog, prefix=PREFIX, version=None):
        super().__init__(prog, prefix=prefix)
        # Before flux-core 0.84 the default dest is unprefixed ("enable") and the registry
        # refuses two plugins with the same dest, so name it explicitly. From 0.84 the default
        # dest is already "datacrumbs_enable" and Flux adds the unprefixed alias, so leaving it
        # default gives callbacks both args.enable and args.datacrumbs_enable.
        prefixed = _default_dest_is_prefixed()

        def dest(name):
            return {} if prefixed else {"dest": f"{PREFIX}_{name}"}

        self.add_option(
            "--enable",
            action="store_true",
            help="Trace this job's I/O with datacrumbs (eBPF). Needs --datacrumbs-probe-file. "
            "More: --help=datacrumbs-enable",
            **dest("enable"),
        )
        self.add_option(
            "--probe-file",
            metavar="PATH",
            help="Signed probes file from `datacrumbs probes generate --sign` saying what to "
            "trace; must be yours, unexpired, and a regular file the Flux instance can read",
            **dest("probe_file"),
        )

    def preinit(self, args):
        _guard(_check_request, args)

    def modify_jobspec(self, args, jobspec):
        _guard(_modify, args, jobspec)

    def validate(self, jobspec):
        _guard(_validate, jobspec)
