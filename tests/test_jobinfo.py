"""Job id, user and metadata as a Flux prolog receives them (F58 ids, uids, jobspec JSON)."""

from __future__ import annotations

import json
import os
import stat

import pytest

from datacrumbs.errors import InvalidJobId, InvalidUser
from datacrumbs.flux import jobinfo

DIGEST = "sha256:" + "ab" * 32
NOT_A_JOB_ID = ("is not a Flux job id (expected decimal, F58 like \u01922kP8DU5B, hex 0x..., "
                "dothex 0000.0000.0000.0000 or job.<dothex>)")


# Expected decimals are flux-core's published values (t/python/t0010-job.py test_24_jobid and
# src/common/libutil/test/fluid.c), never computed with datacrumbs.jobid; the by-hand
# derivations are in tests/test_jobid.py.
@pytest.mark.parametrize("raw,decimal", [
    ("\u0192uzzybunny", "6787342413402046"), ("fuzzybunny", "6787342413402046"),
    ("\u0192jpXCZedGfVP", "18446744073709551614"), ("fjpXCZedGfVQ", "18446744073709551615"),
    ("\u0192xyzzy", "633528662"), ("0x181d0d4d850fbe", "6787342413402046"),
    ("0018.1d0d.4d85.0fbe", "6787342413402046"), ("6787342413402046", "6787342413402046"),
])
def test_f58_and_other_job_ids_become_decimal(raw, decimal):
    assert jobinfo.resolve_jobid({"FLUX_JOB_ID": raw}) == decimal


@pytest.mark.parametrize("raw,message", [
    ("../x", f"job id '../x' {NOT_A_JOB_ID}"),
    ("1;reboot", f"job id '1;reboot' {NOT_A_JOB_ID}"),
    ("1\nX=y", f"job id '1\\nX=y' {NOT_A_JOB_ID}"),
    ("\u01920OIl", "job id '\u01920OIl': '0' is not an F58 digit"),
    ("0x", f"job id '0x' {NOT_A_JOB_ID}"),
    (" ", "job id ' ' is empty or too long"),
    ("1 2", f"job id '1 2' {NOT_A_JOB_ID}"),
])
def test_malicious_or_malformed_job_ids_are_refused(raw, message):
    with pytest.raises(InvalidJobId) as err:
        jobinfo.resolve_jobid({"FLUX_JOB_ID": raw})
    assert str(err.value) == message


def test_missing_job_id_says_where_it_comes_from():
    with pytest.raises(jobinfo.JobInfoError, match="FLUX_JOB_ID is not set"):
        jobinfo.resolve_jobid({})


def test_user_from_uid(user1):
    user = jobinfo.resolve_user({"FLUX_JOB_USERID": str(user1.pw_uid), "USER": "root"})
    assert user.name == "dctest1" and user.uid == user1.pw_uid


@pytest.mark.parametrize("env", [{}, {"USER": "dctest1"}, {"FLUX_JOB_USERID": "-1"},
                                 {"FLUX_JOB_USERID": "1000;id"}, {"FLUX_JOB_USERID": "٣"}])
def test_no_uid_no_user(env):
    """No fallback to $USER: under the IMP it is not the job's user."""
    with pytest.raises(jobinfo.JobInfoError, match="FLUX_JOB_USERID"):
        jobinfo.resolve_user(env)


def test_unknown_uid():
    with pytest.raises(InvalidUser, match="does not exist"):
        jobinfo.resolve_user({"FLUX_JOB_USERID": "3999999"})


def test_metadata_override_both_shapes():
    meta = {"enable": "yes", "probe_file": "/p/x.json.gz", "probe_digest": DIGEST}
    for text in (json.dumps(meta), json.dumps({"datacrumbs": meta})):
        got = jobinfo.read_metadata("5", {jobinfo.METADATA_ENV: text})
        assert got == meta
        settings = jobinfo.parse_settings("5", got)
        assert str(settings.probe_file) == "/p/x.json.gz" and settings.probe_digest == DIGEST


@pytest.mark.parametrize("meta", [None, {}, {"enable": "no", "probe_file": "/x"}])
def test_not_enabled_is_none(meta):
    assert jobinfo.parse_settings("5", meta) is None


@pytest.mark.parametrize("meta,words", [
    ({"enable": "yes"}, "probe_file"),
    ({"enable": "yes", "probe_file": "rel.json.gz", "probe_digest": DIGEST}, "absolute"),
    ({"enable": "yes", "probe_file": "/x.json.gz"}, "probe_digest"),
    ({"enable": "yes", "probe_file": "/x.json.gz", "probe_digest": "md5:00"}, "probe_digest"),
])
def test_bad_settings(meta, words):
    with pytest.raises(jobinfo.JobInfoError, match=words):
        jobinfo.parse_settings("5", meta)


def test_bad_override_json_and_shape():
    with pytest.raises(jobinfo.JobInfoError, match="not valid JSON"):
        jobinfo.read_metadata("5", {jobinfo.METADATA_ENV: "{nope"})
    with pytest.raises(jobinfo.JobInfoError, match="not an object"):
        jobinfo.read_metadata("5", {jobinfo.METADATA_ENV: "[1]"})
    with pytest.raises(jobinfo.JobInfoError, match="larger than"):
        jobinfo.read_metadata("5", {jobinfo.METADATA_ENV: " " * (jobinfo.MAX_METADATA_BYTES + 1)})


def _fake_flux(tmp_path, monkeypatch, body: str):
    """A `flux` executable on PATH printing what `flux job info ID jobspec` would."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    flux = bindir / "flux"
    flux.write_text("#!/bin/sh\n" + body)
    flux.chmod(flux.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")


def test_metadata_from_flux_job_info(tmp_path, monkeypatch):
    spec = {"version": 1, "attributes": {"system": {"duration": 0, "datacrumbs": {
        "enable": "yes", "probe_file": "/p.json.gz", "probe_digest": DIGEST}}}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    _fake_flux(tmp_path, monkeypatch,
               f'[ "$1 $2 $3 $4" = "job info 77 jobspec" ] && exec cat {tmp_path}/spec.json\n'
               "exit 1\n")
    assert jobinfo.read_metadata("77", {"PATH": os.environ["PATH"]}) == \
        spec["attributes"]["system"]["datacrumbs"]
    spec["attributes"]["system"].pop("datacrumbs")
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    assert jobinfo.read_metadata("77", {}) is None


def test_flux_missing_failing_or_hanging(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no flux at all
    with pytest.raises(jobinfo.JobInfoError, match="not on PATH"):
        jobinfo.read_metadata("77", {})
    _fake_flux(tmp_path, monkeypatch, "echo 'flux-job: no such job' >&2; exit 1\n")
    with pytest.raises(jobinfo.JobInfoError, match="no such job"):
        jobinfo.read_metadata("77", {})
    (tmp_path / "bin/flux").write_text("#!/bin/sh\nexec /bin/sleep 30\n")
    with pytest.raises(jobinfo.JobInfoError, match="did not answer within 0.5 s"):
        jobinfo.read_metadata("77", {}, timeout=0.5)
