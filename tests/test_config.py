"""The site file: defaults without it, every value checked with the file and key named."""

from pathlib import Path

import pytest

from datacrumbs.config import SiteConfig, load_config, render_config
from datacrumbs.errors import ConfigError


def test_render_then_load_round_trips(tmp_path):
    cfg = SiteConfig(prefix=tmp_path / "p", run_dir=tmp_path / "run", trace_dir="/t/{user}/{jobid}",
                     prolog_timeout=12.5, fail_job_on_error=True, max_probes=10)
    path = tmp_path / "c.toml"
    path.write_text(render_config(cfg))
    assert load_config(path) == cfg


def test_missing_default_file_means_defaults(monkeypatch, tmp_path):
    monkeypatch.delenv("DATACRUMBS_CONFIG", raising=False)
    monkeypatch.setattr("datacrumbs.config.default_config_path", lambda *a: tmp_path / "none.toml")
    assert load_config() == SiteConfig()


def test_explicit_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


@pytest.mark.parametrize("text,needle", [
    ("[paths]\nrun_dir = 'relative/dir'\n", "run_dir"),
    ("[service]\nprolog_timeout = -1\n", "prolog_timeout"),
    ("[service]\nfail_job_on_error = 'yes'\n", "fail_job_on_error"),
    ("[paths]\nbogus = 1\n", "unknown key 'bogus'"),
    ("[nosuch]\n", "unknown section"),
    ("this is = = not toml", "not valid TOML"),
])
def test_bad_values_name_the_file_and_key(tmp_path, text, needle):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert needle in str(err.value) and str(path) in str(err.value)


def test_trace_dir_pattern():
    cfg = SiteConfig(trace_dir="/traces/{date}/{user}/{jobid}-{host}")
    assert cfg.trace_dir_for(user="a", jobid="1", host="n", date="2026-11-25") == \
        Path("/traces/2026-11-25/a/1-n")
    with pytest.raises(ConfigError, match="trace_dir pattern"):
        SiteConfig(trace_dir="/t/{nosuch}").trace_dir_for(user="a", jobid="1", host="n", date="d")
