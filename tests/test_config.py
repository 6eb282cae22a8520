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
    ("[paths]\ntrace_group = 'a b'\n", "trace_group = 'a b' is not a group name"),
    ("[paths]\ntrace_group = 7\n", "trace_group"),
    ("[limits]\nmax_trace_bytes = 100\n", "max_trace_bytes = 100 must be at least 4096"),
    ("[limits]\nmax_trace_bytes = 0\n", "max_trace_bytes"),
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


def test_trace_access_and_size_cap_keys(tmp_path):
    """Private traces and a 1 GiB cap by default; a site group round-trips and resolves;
    an unknown group is one clear line naming the file, the key and the way out."""
    import grp

    default = SiteConfig()
    assert (default.trace_group, default.trace_gid(), default.max_trace_bytes) == ("", None, 1 << 30)
    group = grp.getgrgid(0).gr_name
    cfg = SiteConfig(trace_group=group, max_trace_bytes=65536)
    path = tmp_path / "c.toml"
    path.write_text(render_config(cfg))
    loaded = load_config(path)
    assert loaded == cfg and loaded.trace_gid() == 0 and loaded.max_trace_bytes == 65536
    path.write_text(render_config(SiteConfig(trace_group="dc-no-such-group")))
    with pytest.raises(ConfigError) as err:
        load_config(path).trace_gid()   # loading works (the epilog must), using does not
    text = str(err.value)
    assert "\n" not in text and str(path) in text
    assert "trace_group = 'dc-no-such-group' is not a group on this node" in text
