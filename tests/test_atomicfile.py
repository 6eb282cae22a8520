"""Publishing a file never shows a reader half of it, and a failed write leaves the old one."""

import os
import stat

import pytest

from datacrumbs.atomicfile import atomic_output, atomic_write


def test_replaces_with_final_mode(tmp_path):
    target = tmp_path / "f.env"
    target.write_text("old")
    atomic_write(target, "new", mode=0o600)
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["f.env"]


def test_failure_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "probes.json.gz"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as f:
            f.write(b"half of a new")
            raise RuntimeError("disk went away")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["probes.json.gz"]


def test_missing_directory_raises_before_anything_is_written(tmp_path):
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "nope" / "x", b"data")
