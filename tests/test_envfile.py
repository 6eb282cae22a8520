"""The unit's env file: atomic, 0600, exact round trip, refuses what the syntax cannot carry."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from datacrumbs.errors import InvalidJobId
from datacrumbs.flux import envfile

BASE = {"DATACRUMBS_JOBID": "1234", "DATACRUMBS_USER": "dctest1",
        "DATACRUMBS_PROBE_FILE": "/home/dctest1/probes.json.gz",
        "DATACRUMBS_CONFIG": "/opt/datacrumbs/etc/datacrumbs/datacrumbs.toml"}


@pytest.mark.parametrize("probe", [
    "/tmp/a b/c.json.gz", "/tmp/it's \"q\".gz", "/tmp/x;reboot $(id) `id` ${HOME}.gz",
    "/tmp/back\\slash\\n.gz", "/tmp/#x =y.gz", "/tmp/ leading and trailing ", "/tmp/ünï.gz"])
def test_round_trip_is_exact(tmp_path, probe):
    values = dict(BASE, DATACRUMBS_PROBE_FILE=probe)
    path = envfile.write_env_file(tmp_path, "1234", values)
    assert path == tmp_path / "datacrumbs-1234.env"
    assert envfile.read_env_file(path) == values
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.stat().st_uid == os.geteuid()
    assert len(path.read_text().splitlines()) == 4


@pytest.mark.parametrize("key,value,words", [
    ("DATACRUMBS_PROBE_FILE", "/tmp/a\nDATACRUMBS_USER=root", "newline"),
    ("DATACRUMBS_PROBE_FILE", "/tmp/a\rb", "carriage return"),
    ("DATACRUMBS_PROBE_FILE", "/tmp/a\0b", "NUL"),
    ("DATACRUMBS_PROBE_FILE", "/tmp/a\tb", "control"),
    ("DATACRUMBS_PROBE_FILE", "relative/probes.json.gz", "absolute"),
    ("DATACRUMBS_CONFIG", "etc/x.toml", "absolute"),
    ("DATACRUMBS_USER", "", "empty"),
])
def test_bad_values_are_refused_and_nothing_is_written(tmp_path, key, value, words):
    with pytest.raises(envfile.EnvFileError) as err:
        envfile.write_env_file(tmp_path, "1234", dict(BASE, **{key: value}))
    assert key in str(err.value) and words in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_missing_key_and_unknown_key(tmp_path):
    values = dict(BASE)
    del values["DATACRUMBS_USER"]
    with pytest.raises(envfile.EnvFileError, match="missing DATACRUMBS_USER"):
        envfile.write_env_file(tmp_path, "1", values)
    with pytest.raises(envfile.EnvFileError, match="not a datacrumbs environment key"):
        envfile.check_value("LD_PRELOAD", "/x")


@pytest.mark.parametrize("jobid", ["../x", "1;reboot", "1\nX=y", "ƒ2kP8", "", "-1"])
def test_file_name_only_from_decimal_job_ids(tmp_path, jobid):
    with pytest.raises(InvalidJobId):
        envfile.write_env_file(tmp_path, jobid, BASE)
    assert list(tmp_path.iterdir()) == []


def test_rewrite_replaces_atomically_and_remove_is_idempotent(tmp_path):
    envfile.write_env_file(tmp_path, "7", BASE)
    envfile.write_env_file(tmp_path, "7", dict(BASE, DATACRUMBS_USER="dctest2"))
    assert envfile.read_env_file(tmp_path / "datacrumbs-7.env")["DATACRUMBS_USER"] == "dctest2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["datacrumbs-7.env"]  # no temp left
    assert envfile.remove_env_file(tmp_path, "7") is True
    assert envfile.remove_env_file(tmp_path, "7") is False


# The documented encoding, pinned from outside the module: double-quoted POSIX-shell text with
# \ " $ ` backslash-escaped (systemd.exec(5): a "-quoted EnvironmentFile value takes the escapes
# of double-quoted POSIX shell text). Its own reader cannot judge this (it reads back whatever it
# wrote), so the bytes are compared with a literal and the file is read by /bin/sh, whose
# double-quote rules would run `id` or $(...) if an escape were missing.
HOSTILE = "/tmp/x;$(touch PWNED) `touch PWNED2` ${HOME} \"q\" back\\slash.gz"


def test_written_bytes_are_the_documented_escapes(tmp_path):
    path = envfile.write_env_file(tmp_path, "9", dict(BASE, DATACRUMBS_PROBE_FILE=HOSTILE))
    assert path.read_text().splitlines()[2] == (
        'DATACRUMBS_PROBE_FILE="/tmp/x;\\$(touch PWNED) \\`touch PWNED2\\` \\${HOME} '
        '\\"q\\" back\\\\slash.gz"')


def test_a_posix_shell_reads_the_same_values_and_runs_nothing(tmp_path):
    path = envfile.write_env_file(tmp_path, "9", dict(BASE, DATACRUMBS_PROBE_FILE=HOSTILE))
    work = tmp_path / "cwd"
    work.mkdir()
    proc = subprocess.run(["/bin/sh", "-c", '. "$1" && printf %s "$DATACRUMBS_PROBE_FILE"',
                           "sh", str(path)], cwd=work, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == HOSTILE
    assert list(work.iterdir()) == []  # neither PWNED file was created
