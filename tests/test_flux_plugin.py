"""The Flux CLI plugin (src/datacrumbs/data/flux/datacrumbs.py) against the documented contract.

Flux cannot be installed here (not in Debian, not on PyPI), so these tests drive the plugin
through tests/flux_contract/, a stand-in reproducing flux-core's documented CLIPlugin, Jobspec
and job-ingest validator behaviour (see its docstring for the source files it follows). What is
real: the installed plugin file, probes files signed with the project's own KeyStore, real
gzip/JSON bytes, real users dctest1/dctest2 and Debian's /usr/bin/python3 (Flux's interpreter),
where the subprocess tests run.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from datacrumbs.config import SiteConfig, render_config
from datacrumbs.probes.document import build_document, write_document
from datacrumbs.probes.verify import verify_probes_file
from datacrumbs.signing.keys import KeyStore

REPO = Path(__file__).resolve().parents[1]
PLUGIN_SOURCE = REPO / "src/datacrumbs/data/flux/datacrumbs.py"
CONTRACT = REPO / "tests/flux_contract"
EMULATE = CONTRACT / "emulate.py"
SYSTEM_PYTHON = "/usr/bin/python3"
PROBE = {"id": "posix.write", "kind": "syscall", "target": "write", "category": "POSIX",
         "args": {"fd": 0, "count": 2}, "bytes": "ret"}
UNAVAILABLE = ("datacrumbs: tracing is unavailable: python3-cryptography is not installed for "
               "Flux's Python (ask your admin)")
NO_SUBMITTER = (
    "datacrumbs: this traced job is refused because the validator could not determine the "
    "submitting user's uid, so the probes file's owner cannot be checked; ask your admin to "
    "check that this plugin runs in flux-core's job-ingest validator "
    "(flux/job/validator/plugins/jobspec.py) and that this flux-core version still passes a "
    "ValidatorJobInfo with a userid (see docs/flux-plugin.md)")


# ------------------------------------------------------------------ a site with the plugin


@pytest.fixture
def world():
    """A directory every test user can traverse (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="dc-fluxplugin-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def install(world, monkeypatch):
    """The plugin installed verbatim at <prefix>/etc/datacrumbs/flux/cli/plugins/, a key store
    and the site TOML beside it; DATACRUMBS_CONFIG unset so the plugin finds the prefix itself."""
    prefix = world / "prefix"
    plugin_dir = prefix / "etc/datacrumbs/flux/cli/plugins"
    plugin_dir.mkdir(parents=True)
    shutil.copy(PLUGIN_SOURCE, plugin_dir / "datacrumbs.py")
    cfg = SiteConfig(prefix=prefix, public_key_dir=prefix / "etc/datacrumbs/keys",
                     private_key_dir=world / "private")
    store = KeyStore(cfg.private_key_dir, cfg.public_key_dir)
    store.init()
    (prefix / "etc/datacrumbs/datacrumbs.toml").write_text(render_config(cfg))
    for d in [prefix, *prefix.rglob("*")]:
        if d.is_dir():
            d.chmod(0o755)
    monkeypatch.delenv("DATACRUMBS_CONFIG", raising=False)
    monkeypatch.setenv("FLUX_CLI_PLUGINPATH", str(plugin_dir))
    return SimpleNamespace(world=world, prefix=prefix, plugin_dir=plugin_dir,
                           plugin=plugin_dir / "datacrumbs.py", cfg=cfg, store=store)


def signed_doc(install, uid, user, **changes):
    now = int(time.time())
    doc = build_document([PROBE], owner_uid=uid, owner_user=user, sets=["posix"],
                         issued_at=changes.pop("issued_at", now - 60),
                         expires_at=changes.pop("expires_at", now + 3600))
    doc = install.store.sign(doc)
    doc.update(changes)
    return doc


def write_probes(install, name, doc, owner=None):
    path = install.world / name
    write_document(path, doc)
    if owner is not None:
        os.chown(path, owner.pw_uid, owner.pw_gid)
    return path


@pytest.fixture
def root_probes(install):
    return write_probes(install, "root.json.gz", signed_doc(install, 0, "root"))


def meta_for(path, data=None):
    data = Path(path).read_bytes() if data is None else data
    return {"enable": "yes", "probe_file": str(path),
            "probe_digest": "sha256:" + hashlib.sha256(data).hexdigest()}


def jobspec_with(meta):
    return {"resources": [{"type": "slot", "count": 1, "label": "task",
                           "with": [{"type": "core", "count": 1}]}],
            "tasks": [{"command": ["true"], "slot": "task", "count": {"per_slot": 1}}],
            "attributes": {"system": {"duration": 0, **({} if meta is None
                                                         else {"datacrumbs": meta})}},
            "version": 1}


# ------------------------------------------------------------------ the stand-in Flux, in process


def _purge():
    for name in list(sys.modules):
        if name == "flux" or name.startswith("flux.") or name == "runner":
            del sys.modules[name]


@pytest.fixture
def flux(install, monkeypatch):
    """Import the stand-in Flux in a given style; returns its runner module."""
    monkeypatch.syspath_prepend(str(CONTRACT))

    def load(style="v0.88"):
        monkeypatch.setenv("FLUX_CONTRACT_STYLE", style)
        _purge()
        import runner

        return runner

    yield load
    _purge()


def _plugin_of(registry):
    [plugin] = [p for p in registry.plugins if type(p).__name__ == "DatacrumbsPlugin"]
    return plugin


# ------------------------------------------------------------ options, the CLIPlugin contract


def test_options_v084_style_give_prefixed_and_unprefixed_names(flux):
    runner = flux("v0.88")
    from flux.cli.plugin import CLIPluginRegistry

    registry = CLIPluginRegistry("run")
    plugin = _plugin_of(registry)
    assert plugin.prefix == "datacrumbs"
    assert [o.name for o in plugin.options] == ["--datacrumbs-enable", "--datacrumbs-probe-file"]
    assert [o.dest for o in plugin.options] == ["datacrumbs_enable", "datacrumbs_probe_file"]
    args = runner.build_parser("run", registry).parse_args(
        ["--datacrumbs-enable", "--datacrumbs-probe-file", "/x.json.gz", "true"])
    view = registry._args_for(plugin, args)  # what the callbacks receive
    assert view.enable is True and view.datacrumbs_enable is True
    assert view.probe_file == view.datacrumbs_probe_file == "/x.json.gz"


def test_options_v077_style_use_explicit_prefixed_dests_and_avoid_collisions(flux, install):
    """Before 0.84 a default dest is unprefixed and collides; ours are explicit and prefixed."""
    (install.plugin_dir / "other.py").write_text(
        "from flux.cli.plugin import CLIPlugin\n"
        "class OtherPlugin(CLIPlugin):\n"
        "    def __init__(self, prog):\n"
        "        super().__init__(prog, prefix='other')\n"
        "        self.add_option('--enable', action='store_true')\n")
    runner = flux("v0.83")
    from flux.cli.plugin import CLIPluginRegistry

    registry = CLIPluginRegistry("run")  # would raise "conflicts" with two default `enable` dests
    plugin = _plugin_of(registry)
    assert [o.dest for o in plugin.options] == ["datacrumbs_enable", "datacrumbs_probe_file"]
    args = runner.build_parser("run", registry).parse_args(
        ["--other-enable", "--datacrumbs-probe-file", "/x.json.gz", "true"])
    # The other plugin, with a default dest, gets only the unprefixed name in this style.
    assert args.enable is True and not hasattr(args, "other_enable")
    assert args.datacrumbs_enable is False and args.datacrumbs_probe_file == "/x.json.gz"


def test_stand_in_v077_registry_refuses_colliding_default_dests(flux, install):
    """Proves the stand-in reproduces the hazard the explicit dests avoid."""
    for name in ("a", "b"):
        (install.plugin_dir / f"{name}.py").write_text(
            "from flux.cli.plugin import CLIPlugin\n"
            f"class P{name}(CLIPlugin):\n"
            "    def __init__(self, prog):\n"
            f"        super().__init__(prog, prefix='{name}')\n"
            "        self.add_option('--enable', action='store_true')\n")
    flux("v0.83")
    from flux.cli.plugin import CLIPluginRegistry

    with pytest.raises(ValueError, match="conflicts with another option"):
        CLIPluginRegistry("run")


@pytest.mark.parametrize("style", ["v0.83", "v0.88"])
def test_one_argument_constructor_two_instances_no_state(flux, root_probes, style):
    runner = flux(style)
    result = runner.submit("run", ["--datacrumbs-enable", "--datacrumbs-probe-file",
                                   str(root_probes), "true"])
    assert result.rc == 0, result.error
    first, second = (_plugin_of(r) for r in result.registries)
    assert first is not second  # preinit ran on one, modify_jobspec on the other
    assert first.prog == "run"
    base = {"prog", "path", "prefix", "version", "options"}
    assert set(vars(first)) == base and set(vars(second)) == base
    assert result.jobspec["attributes"]["system"]["datacrumbs"]["enable"] == "yes"


@pytest.mark.parametrize("prog", ["run", "submit", "batch", "alloc", "bulksubmit"])
def test_help_lists_options_and_docstring_explains(flux, prog):
    runner = flux("v0.88")
    from flux.cli.plugin import CLIPluginRegistry

    registry = CLIPluginRegistry(prog)
    text = runner.build_parser(prog, registry).format_help()
    assert "--datacrumbs-enable" in text and "--datacrumbs-probe-file PATH" in text
    doc = type(_plugin_of(registry)).__doc__
    assert "flux run --datacrumbs-enable --datacrumbs-probe-file" in doc
    assert "datacrumbs probes generate --sign" in doc


# ------------------------------------------------------------------ user side: jobspec written


def test_modify_jobspec_writes_attributes_system_datacrumbs(flux, root_probes, monkeypatch):
    runner = flux("v0.88")
    monkeypatch.chdir(root_probes.parent)
    result = runner.submit("submit", ["--datacrumbs-enable", "--datacrumbs-probe-file",
                                      root_probes.name, "app"])
    assert result.rc == 0, result.error
    assert result.jobspec["attributes"]["system"]["datacrumbs"] == meta_for(root_probes)
    # It also is valid for the instance, and for the package's own trust decision.
    assert runner.ingest(result.jobspec, 0).errnum == 0
    assert verify_probes_file(root_probes, 0, config=_config_of(root_probes))["owner"]["uid"] == 0


def _config_of(probes_path):
    prefix = probes_path.parent / "prefix"
    return SiteConfig(prefix=prefix, public_key_dir=prefix / "etc/datacrumbs/keys")


def test_nothing_written_without_enable(flux):
    runner = flux("v0.88")
    result = runner.submit("run", ["true"])
    assert result.rc == 0
    assert "datacrumbs" not in result.jobspec["attributes"]["system"]
    assert runner.ingest(result.jobspec, 0).errnum == 0


# ------------------------------------------------------------------ user side: refusals


def _bytes_file(install, name, data):
    path = install.world / name
    path.write_bytes(data)
    path.chmod(0o644)
    return path


def _user_case(install, case):
    """(argv after `flux run`, words the one-line error must contain)."""
    w = install.world
    good = write_probes(install, "good.json.gz", signed_doc(install, 0, "root"))
    if case == "enable-without-file":
        return ["--datacrumbs-enable"], "needs --datacrumbs-probe-file"
    if case == "file-without-enable":
        return ["--datacrumbs-probe-file", str(good)], "without --datacrumbs-enable"
    if case == "missing":
        path = w / "nope.json.gz"
    elif case == "symlink":
        path = w / "link.json.gz"
        path.symlink_to(good)
    elif case == "directory":
        path = w / "dir.json.gz"
        path.mkdir()
    elif case == "not-gzip":
        plain = json.dumps(signed_doc(install, 0, "root")).encode()
        path = _bytes_file(install, "plain.json.gz", plain)
    elif case == "gzip-bomb":
        path = _bytes_file(install, "bomb.json.gz", gzip.compress(b" " * (64 << 20)))
    elif case == "bad-json":
        path = _bytes_file(install, "bad.json.gz",
                           gzip.compress(b'{"format": "datacrumbs-probes",'))
    elif case == "tampered":
        doc = signed_doc(install, 0, "root")
        doc["probes"][0]["target"] = "read"
        path = write_probes(install, "tampered.json.gz", doc)
    elif case == "unknown-key":
        other = KeyStore(w / "other-private", w / "other-public")
        other.init()
        doc = other.sign(build_document([PROBE], owner_uid=0, owner_user="root", sets=["posix"]))
        path = write_probes(install, "unknown.json.gz", doc)
    elif case == "expired":
        now = int(time.time())
        path = write_probes(install, "expired.json.gz", signed_doc(
            install, 0, "root", issued_at=now - 7200, expires_at=now - 3600))
    elif case == "other-users-file":
        path = write_probes(install, "other.json.gz", signed_doc(install, 1001, "dctest1"))
    elif case == "wrong-shape":
        doc = signed_doc(install, 0, "root")
        doc["version"] = 2
        path = write_probes(install, "shape.json.gz", doc)
    words = {"missing": "does not exist", "symlink": "is a symbolic link",
             "directory": "is a directory", "not-gzip": "is not gzip-compressed",
             "gzip-bomb": "decompresses to more than", "bad-json": "is not valid JSON",
             "tampered": "does not match its content", "unknown-key": "does not trust",
             "expired": "expired at", "other-users-file": "belongs to user dctest1",
             "wrong-shape": "this plugin reads version 1"}[case]
    return ["--datacrumbs-enable", "--datacrumbs-probe-file", str(path)], words


USER_CASES = ["enable-without-file", "file-without-enable", "missing", "symlink", "directory",
              "not-gzip", "gzip-bomb", "bad-json", "tampered", "unknown-key", "expired",
              "other-users-file", "wrong-shape"]


@pytest.mark.parametrize("case", USER_CASES)
def test_user_side_refusals_are_one_valueerror_sentence(flux, install, case):
    runner = flux("v0.88")
    argv, words = _user_case(install, case)
    result = runner.submit("run", [*argv, "true"])
    assert result.rc == 1 and result.jobspec is None
    assert result.error.startswith("flux-run: ERROR: datacrumbs: ")
    assert words in result.error and "\n" not in result.error
    # Called directly, the exception is exactly ValueError (what Flux prints as ERROR).
    from flux.cli.plugin import CLIPluginRegistry
    from flux.job import JobspecV1

    registry = CLIPluginRegistry("run")
    plugin = _plugin_of(registry)
    args = registry._args_for(plugin, runner.build_parser("run", registry).parse_args([*argv, "x"]))
    with pytest.raises(Exception) as info:
        plugin.preinit(args)
        plugin.modify_jobspec(args, JobspecV1.from_command(["x"], environment={}))
    assert type(info.value) is ValueError and words in str(info.value)


# ------------------------------------------------------------------ instance side: validate


def _validate_case(install, case, user1, user2):
    """(jobspec for the validator, userid, words the refusal must contain)."""
    w = install.world
    good = write_probes(install, "v-good.json.gz", signed_doc(install, user1.pw_uid, "dctest1"))
    meta = meta_for(good)
    words = None
    if case == "digest-changed":
        write_probes(install, "v-good.json.gz", signed_doc(install, user1.pw_uid, "dctest1",
                                                           expires_at=int(time.time()) + 7200))
        words = "changed after the job was submitted; resubmit"
    elif case in ("tampered", "unknown-key", "expired", "other-users-file", "wrong-shape",
                  "not-gzip", "gzip-bomb", "bad-json", "missing", "symlink", "directory"):
        argv, words = _user_case(install, case)
        path = Path(argv[-1])
        if case == "other-users-file":
            path = write_probes(install, "v-other.json.gz", signed_doc(install, user2.pw_uid,
                                                                       "dctest2"))
            words = "belongs to user dctest2"
        data = path.read_bytes() if path.is_file() else b""
        meta = meta_for(path, data)
    elif case == "enable-not-yes":
        meta["enable"] = "no"
        words = 'enable must be "yes"'
    elif case == "relative-path":
        meta["probe_file"] = "probes.json.gz"
        words = "normalized absolute path"
    elif case == "unnormalized-path":
        meta["probe_file"] = str(w / "x" / ".." / "v-good.json.gz")
        words = "normalized absolute path"
    elif case == "bad-digest":
        meta["probe_digest"] = "md5:abc"
        words = "probe_digest must be"
    elif case == "extra-key":
        meta["uid"] = 0
        words = "must hold exactly enable, probe_file and probe_digest"
    elif case == "not-a-table":
        meta = "yes"
        words = "must hold exactly"
    return jobspec_with(meta), user1.pw_uid, words


VALIDATE_CASES = ["digest-changed", "tampered", "unknown-key", "expired", "other-users-file",
                  "wrong-shape", "not-gzip", "gzip-bomb", "bad-json", "missing", "symlink",
                  "directory", "enable-not-yes", "relative-path", "unnormalized-path",
                  "bad-digest", "extra-key", "not-a-table"]


def test_validate_accepts_a_good_job_and_a_job_without_tracing(flux, install, user1):
    runner = flux("v0.88")
    good = write_probes(install, "ok.json.gz", signed_doc(install, user1.pw_uid, "dctest1"))
    assert runner.ingest(jobspec_with(meta_for(good)), user1.pw_uid).errnum == 0
    assert runner.ingest(jobspec_with(None), user1.pw_uid).errnum == 0


@pytest.mark.parametrize("case", VALIDATE_CASES)
def test_validate_refusals_are_one_valueerror_sentence(flux, install, user1, user2, case):
    runner = flux("v0.88")
    jobspec, userid, words = _validate_case(install, case, user1, user2)
    result = runner.ingest(jobspec, userid)  # a WorkerDied here would fail the test
    assert result.errnum == 1
    assert result.errmsg.startswith("datacrumbs: ") and words in result.errmsg
    assert "\n" not in result.errmsg
    # Without the executor's mapping, what escapes the plugin is exactly ValueError.
    from flux.job.validator.plugins.jobspec import Validator
    from flux.job.validator.validator import ValidatorJobInfo

    validator = Validator()
    validator.configure(None)
    with pytest.raises(Exception) as info:
        validator.validate(ValidatorJobInfo({"jobspec": jobspec, "userid": userid, "flags": 0,
                                             "urgency": 16}))
    assert type(info.value) is ValueError and words in str(info.value)


def test_validate_maps_unexpected_errors_instead_of_killing_the_worker(flux, install, user1):
    """A jobspec object that breaks in an unforeseen way still yields one ValueError."""
    runner = flux("v0.88")
    from flux.cli.plugin import CLIPluginRegistry

    class Hostile(dict):
        def get(self, key, default=None):
            raise KeyError(key)

    plugin = _plugin_of(CLIPluginRegistry("validate"))
    with pytest.raises(Exception) as info:
        plugin.validate(SimpleNamespace(jobspec=Hostile(attributes={})))
    assert type(info.value) is ValueError and "internal error" in str(info.value)
    assert runner.ingest(jobspec_with(None), user1.pw_uid).errnum == 0


def test_owner_check_uses_the_validators_userid(flux, install, user1, user2):
    """The owner is checked against the authenticated submitter (ValidatorJobInfo.userid)."""
    runner = flux("v0.88")
    theirs = write_probes(install, "u2.json.gz", signed_doc(install, user2.pw_uid, "dctest2"))
    spec = jobspec_with(meta_for(theirs))
    assert runner.ingest(spec, user2.pw_uid).errnum == 0
    assert "belongs to user dctest2" in runner.ingest(spec, user1.pw_uid).errmsg


def test_validate_without_the_submitters_uid_fails_closed(flux, install, user1):
    """No ValidatorJobInfo up the stack (a Flux that calls plugins differently): even a good
    file is refused with the one line saying what the admin should check, never accepted
    unchecked; a job without tracing is unaffected."""
    runner = flux("v0.88")
    from flux.cli.plugin import CLIPluginRegistry
    from flux.job import JobspecV1

    mine = write_probes(install, "nouid.json.gz", signed_doc(install, user1.pw_uid, "dctest1"))
    spec = jobspec_with(meta_for(mine))
    assert runner.ingest(spec, user1.pw_uid).errnum == 0  # the same job, inside the validator
    plugin = _plugin_of(CLIPluginRegistry("validate"))
    with pytest.raises(Exception) as info:
        plugin.validate(JobspecV1(**spec))
    assert type(info.value) is ValueError and str(info.value) == NO_SUBMITTER
    plugin.validate(JobspecV1(**jobspec_with(None)))  # no tracing asked: no refusal


@pytest.mark.parametrize("userid", ["1001", -1, 2**32, True, None, 1.5])
def test_validate_with_an_unusable_userid_fails_closed(flux, install, user1, userid):
    """A ValidatorJobInfo whose userid is not a uid is the same as none: refused, one line."""
    runner = flux("v0.88")
    mine = write_probes(install, "baduid.json.gz", signed_doc(install, user1.pw_uid, "dctest1"))
    result = runner.ingest(jobspec_with(meta_for(mine)), userid)
    assert result.errnum == 1 and result.errmsg == NO_SUBMITTER
    assert runner.ingest(jobspec_with(None), userid).errnum == 0


def test_user_side_owner_check_uses_the_submitting_process_uid(flux, install, user1):
    """modify_jobspec runs in `flux run`, outside any validator: os.getuid() is the user."""
    runner = flux("v0.88")
    mine = write_probes(install, "own.json.gz", signed_doc(install, os.getuid(), "root"))
    theirs = write_probes(install, "not-own.json.gz", signed_doc(install, user1.pw_uid,
                                                                 "dctest1"))
    ok = runner.submit("run", ["--datacrumbs-enable", "--datacrumbs-probe-file", str(mine), "x"])
    assert ok.rc == 0, ok.error
    refused = runner.submit("run", ["--datacrumbs-enable", "--datacrumbs-probe-file",
                                    str(theirs), "x"])
    assert refused.rc == 1 and "belongs to user dctest1" in refused.error


def test_site_config_override_and_missing_config(flux, install, monkeypatch, world):
    runner = flux("v0.88")
    user_uid = 0
    good = write_probes(install, "cfg.json.gz", signed_doc(install, 0, "root"))
    spec = jobspec_with(meta_for(good))
    elsewhere = world / "elsewhere.toml"
    elsewhere.write_text(render_config(SiteConfig(public_key_dir=world / "no-keys-here")))
    monkeypatch.setenv("DATACRUMBS_CONFIG", str(elsewhere))
    msg = runner.ingest(spec, user_uid).errmsg
    assert "does not trust (no " + str(world / "no-keys-here") in msg
    monkeypatch.setenv("DATACRUMBS_CONFIG", str(world / "missing.toml"))
    msg = runner.ingest(spec, user_uid).errmsg
    assert "missing.toml named by DATACRUMBS_CONFIG does not exist" in msg
    monkeypatch.delenv("DATACRUMBS_CONFIG")
    assert runner.ingest(spec, user_uid).errnum == 0


# ------------------------------------------------------------ Debian's /usr/bin/python3, real users


def emulate(install, *args, user=None, stdin=None, env=None):
    environ = {"PATH": "/usr/bin:/bin", "FLUX_CLI_PLUGINPATH": str(install.plugin_dir),
               **(env or {})}
    kwargs = {}
    if user is not None:
        kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    proc = subprocess.run([SYSTEM_PYTHON, "-I", str(EMULATE), *args], input=stdin,
                          capture_output=True, text=True, env=environ, cwd="/", timeout=60,
                          **kwargs)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_validate_under_debian_python_valid_and_tampered(install, user1):
    good = write_probes(install, "d-good.json.gz", signed_doc(install, user1.pw_uid, "dctest1"))
    ok = emulate(install, "validate", str(user1.pw_uid),
                 stdin=json.dumps(jobspec_with(meta_for(good))))
    assert ok == {"errnum": 0, "errmsg": ""}
    doc = signed_doc(install, user1.pw_uid, "dctest1")
    doc["capture"]["paths"] = False
    bad = write_probes(install, "d-bad.json.gz", doc)
    refused = emulate(install, "validate", str(user1.pw_uid),
                      stdin=json.dumps(jobspec_with(meta_for(bad))))
    assert refused["errnum"] == 1 and "does not match its content" in refused["errmsg"]


def test_real_user_submits_own_file_and_instance_accepts(install, user1):
    mine = write_probes(install, "mine.json.gz", signed_doc(install, user1.pw_uid, "dctest1"),
                        owner=user1)
    out = emulate(install, "submit", "run", "--datacrumbs-enable", "--datacrumbs-probe-file",
                  str(mine), "true", user=user1)
    assert out["rc"] == 0, out["error"]
    assert out["jobspec"]["attributes"]["system"]["datacrumbs"] == meta_for(mine)
    verdict = emulate(install, "validate", str(user1.pw_uid), stdin=json.dumps(out["jobspec"]))
    assert verdict == {"errnum": 0, "errmsg": ""}


def test_real_user_cannot_submit_another_users_or_unreadable_file(install, user1, user2):
    theirs = write_probes(install, "theirs.json.gz", signed_doc(install, user2.pw_uid, "dctest2"),
                          owner=user2)
    out = emulate(install, "submit", "run", "--datacrumbs-enable", "--datacrumbs-probe-file",
                  str(theirs), "true", user=user1)
    assert out["rc"] == 1 and "belongs to user dctest2" in out["error"]
    theirs.chmod(0o600)
    out = emulate(install, "submit", "run", "--datacrumbs-enable", "--datacrumbs-probe-file",
                  str(theirs), "true", user=user1)
    assert out["rc"] == 1 and "you cannot read probes file" in out["error"]


def test_instance_owner_that_cannot_read_the_file_refuses_clearly(install, user1, user2):
    """A system instance runs the validator as its owner (here dctest2), not as the user."""
    private = write_probes(install, "private.json.gz", signed_doc(install, user1.pw_uid,
                                                                  "dctest1"), owner=user1)
    private.chmod(0o600)
    verdict = emulate(install, "validate", str(user1.pw_uid),
                      stdin=json.dumps(jobspec_with(meta_for(private))), user=user2)
    assert verdict["errnum"] == 1
    assert f"the Flux instance (uid {user2.pw_uid}) cannot read probes file" in verdict["errmsg"]


def test_without_cryptography_options_remain_and_validate_refuses(install, user1):
    hide = {"FLUX_CONTRACT_HIDE": "cryptography"}
    good = write_probes(install, "nc.json.gz", signed_doc(install, user1.pw_uid, "dctest1"),
                        owner=user1)
    loaded = emulate(install, "import", str(install.plugin), env=hide)
    assert loaded["classes"] == ["DatacrumbsPlugin"]
    # The user side still checks everything but the signature and writes the request ...
    out = emulate(install, "submit", "run", "--datacrumbs-enable", "--datacrumbs-probe-file",
                  str(good), "true", user=user1, env=hide)
    assert out["rc"] == 0 and out["jobspec"]["attributes"]["system"]["datacrumbs"]
    # ... and the instance refuses the traced job rather than run it untraced.
    verdict = emulate(install, "validate", str(user1.pw_uid),
                      stdin=json.dumps(out["jobspec"]), env=hide)
    assert verdict == {"errnum": 1, "errmsg": UNAVAILABLE}
    plain = emulate(install, "validate", str(user1.pw_uid), stdin=json.dumps(jobspec_with(None)),
                    env=hide)
    assert plain == {"errnum": 0, "errmsg": ""}


def test_module_imports_only_stdlib_under_debian_python(install):
    loaded = emulate(install, "import", str(install.plugin))
    print(f"plugin import time under {SYSTEM_PYTHON}: {loaded['seconds'] * 1000:.1f} ms")
    assert loaded["classes"] == ["DatacrumbsPlugin"]
    stdlib = set(sys.stdlib_module_names)
    foreign = [m for m in loaded["new_modules"] if m.split(".")[0] not in stdlib]
    assert foreign == [], f"non-stdlib modules imported at module level: {foreign}"
    assert not any(m.startswith("cryptography") for m in loaded["new_modules"])


def test_module_imports_and_works_without_flux(install):
    """Imported outside Flux (no flux package at all) it still loads and validates."""
    code = (
        "import importlib.util, json, sys\n"
        "spec = importlib.util.spec_from_file_location('datacrumbs', sys.argv[1])\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "p = m.DatacrumbsPlugin('run')\n"
        "p.validate({'attributes': {'system': {}}})\n"
        "try:\n"
        "    p.validate({'attributes': {'system': {'datacrumbs': {'enable': 'no'}}}})\n"
        "except ValueError as e:\n"
        "    err = str(e)\n"
        "print(json.dumps({'flux': 'flux' in sys.modules, 'options': [o[0] for o in p.options],"
        " 'err': err}))\n")
    proc = subprocess.run([SYSTEM_PYTHON, "-I", "-c", code, str(install.plugin)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["flux"] is False
    assert out["options"] == ["--datacrumbs-enable", "--datacrumbs-probe-file"]
    assert out["err"].startswith("datacrumbs: attributes.system.datacrumbs must hold exactly")


def test_signature_compatible_with_package_signing(install):
    """Canonical bytes in the plugin equal the package's, so KeyStore signatures verify."""
    import importlib.util

    from datacrumbs.probes.document import canonical_bytes

    spec = importlib.util.spec_from_file_location("dc_flux_plugin", install.plugin)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    doc = signed_doc(install, 0, "root", host="nœud-1")
    assert module.canonical_bytes(doc) == canonical_bytes(doc)
    raw = base64.b64decode(doc["signature"])
    assert len(raw) == 64


def _hostile(install, case, uid):
    """(path, words) for byte-level and document-level attacks the validator must refuse."""
    w = install.world
    doc = signed_doc(install, uid, "dctest1")
    text = json.dumps(doc).encode()
    if case == "fifo":
        path = w / "fifo.json.gz"
        os.mkfifo(path)
        return path, "is not a regular file"
    if case == "truncated":
        return _bytes_file(install, "trunc.json.gz", gzip.compress(text)[:-12]), "is truncated"
    if case == "trailing-garbage":
        path = _bytes_file(install, "trail.json.gz", gzip.compress(text) + b"junk")
        return path, "trailing garbage"
    if case == "duplicate-key":
        raw = b'{"format": "datacrumbs-probes", "format": "x"}'
        return _bytes_file(install, "dup.json.gz", gzip.compress(raw)), "repeats the key format"
    if case == "nan":
        return _bytes_file(install, "nan.json.gz", gzip.compress(b'{"a": NaN}')), "contains NaN"
    if case == "deep":
        raw = b'{"a": ' + b"[" * 40 + b"]" * 40 + b"}"
        return _bytes_file(install, "deep.json.gz", gzip.compress(raw)), "nested more than 32"
    if case == "too-large":
        return _bytes_file(install, "big.json.gz", os.urandom((1 << 20) + 10)), "is too large"
    if case == "unsigned":
        del doc["signature"]
        return write_probes(install, "unsigned.json.gz", doc), "is not signed"
    if case == "not-yet-valid":
        now = int(time.time())
        doc = signed_doc(install, uid, "dctest1", issued_at=now + 3600, expires_at=now + 7200)
        return write_probes(install, "future.json.gz", doc), "is not valid before"
    if case == "bad-public-key-file":
        (install.cfg.public_key_dir / f"{doc['key_id']}.pub").write_text("bm90IGEga2V5\n")
        return write_probes(install, "badpub.json.gz", doc), "does not hold the Ed25519 key"
    if case == "public-key-file-of-another-key":
        # A well-formed 32-byte key, but not the one the key id names: refused as a bad key
        # file, not used to judge the signature.
        other = KeyStore(w / "other-private", w / "other-public")
        [pub] = (w / "other-public").glob(f"{other.init()}.pub")
        (install.cfg.public_key_dir / f"{doc['key_id']}.pub").write_text(pub.read_text())
        return write_probes(install, "otherpub.json.gz", doc), "does not hold the Ed25519 key"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["fifo", "truncated", "trailing-garbage", "duplicate-key", "nan",
                                  "deep", "too-large", "unsigned", "not-yet-valid",
                                  "bad-public-key-file", "public-key-file-of-another-key"])
def test_validate_refuses_hostile_files(flux, install, user1, case):
    runner = flux("v0.88")
    path, words = _hostile(install, case, user1.pw_uid)
    data = b"" if case == "fifo" else path.read_bytes()
    result = runner.ingest(jobspec_with(meta_for(path, data)), user1.pw_uid)
    assert result.errnum == 1 and words in result.errmsg, result.errmsg
    named = install.cfg.public_key_dir if "public-key" in case else path
    assert result.errmsg.startswith("datacrumbs: ") and str(named) in result.errmsg


def test_validate_accepts_multi_member_gzip(flux, install, user1):
    """gzip allows several members; the bounded reader must join them like gzip does."""
    runner = flux("v0.88")
    text = json.dumps(signed_doc(install, user1.pw_uid, "dctest1")).encode()
    half = len(text) // 2
    data = gzip.compress(text[:half]) + gzip.compress(text[half:])
    path = _bytes_file(install, "multi.json.gz", data)
    assert runner.ingest(jobspec_with(meta_for(path)), user1.pw_uid).errnum == 0
