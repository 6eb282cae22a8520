"""Building the BPF object: the real clang/bpftool build, and clear errors without them."""

from __future__ import annotations

import os

import pytest

from datacrumbs.cli import run_cli
from datacrumbs.tracer import build
from datacrumbs.tracer.build import BuildError, build_bpf_object
from datacrumbs.tracer.engine import Engine
from datacrumbs.tracer.scope import Scope

WRITE = {"id": "posix.write", "kind": "syscall", "target": "write", "category": "POSIX",
         "args": {"fd": 0, "count": 2}, "bytes": "ret"}


def test_cli_builds_an_object_the_engine_loads(tmp_path, tracefs, capsys):
    out = tmp_path / "lib" / "datacrumbs.bpf.o"
    assert run_cli(["build-bpf", "-o", str(out)]) == 0
    lines = out.with_name("datacrumbs-lines.so")   # the daemon's line formatter, beside it
    scan = out.with_name("datacrumbs-scan.so")     # and the report's line scanner
    fold = out.with_name("datacrumbs-fold.so")     # and the report's stream fold
    printer = out.with_name("datacrumbs-libbpf-print.so")  # libbpf's printing without Python
    assert capsys.readouterr().out == \
        f"built {out}\nbuilt {lines}\nbuilt {scan}\nbuilt {fold}\nbuilt {printer}\n"
    for built in (out, lines, scan, fold, printer):
        assert built.read_bytes()[:4] == b"\x7fELF"
        assert oct(built.stat().st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in out.parent.iterdir()) == \
        sorted([out.name, lines.name, scan.name, fold.name, printer.name]), \
        "no temporary files left"
    from datacrumbs.trace import fastfold, fastlines, fastscan
    assert fastlines.load(lines) is not None
    assert fastfold.load(fold) is not None
    assert fastscan.load(scan).scan(b'{"ph":"X","pid":7}').ints("pid")[0].tolist() == [7]
    with Engine([WRITE], Scope.for_pids([os.getpid()]), bpf_object=out) as eng:
        assert [p["id"] for p in eng.attach().attached] == ["posix.write"]


def test_cli_default_output_is_the_site_bpf_object(site, tmp_path, monkeypatch, capsys):
    target = tmp_path / "site-object.bpf.o"
    cfg = site.source.read_text().replace(str(site.bpf_object), str(target))
    site.source.write_text(cfg)
    assert run_cli(["build-bpf"]) == 0
    assert target.is_file()


def test_missing_clang_names_the_package(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(build, "SBIN_PATH", str(tmp_path))
    out = tmp_path / "x.bpf.o"
    assert run_cli(["build-bpf", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err == ("datacrumbs: error: clang not found: install the Debian/Ubuntu package "
                   "clang (and llvm) (RHEL: clang) to build the BPF object\n")
    assert not out.exists()


def test_missing_bpftool_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(build, "SBIN_PATH", str(tmp_path))
    with pytest.raises(BuildError, match="^bpftool not found: install the Debian/Ubuntu package "
                                         "bpftool"):
        build_bpf_object(tmp_path / "x.bpf.o", clang="/usr/bin/clang")


def test_missing_btf_is_explained(tmp_path):
    with pytest.raises(BuildError, match="kernel BTF .* not found: the kernel needs "
                                         "CONFIG_DEBUG_INFO_BTF=y"):
        build_bpf_object(tmp_path / "x.bpf.o", btf=tmp_path / "no-btf")


def test_compiler_failure_keeps_the_old_object(tmp_path):
    out = tmp_path / "keep.bpf.o"
    out.write_bytes(b"old")
    fake = tmp_path / "clang"
    fake.write_text("#!/bin/sh\necho 'error: boom' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(BuildError, match=r"^clang compiling .*datacrumbs.bpf.c failed: error: boom$"):
        build_bpf_object(out, clang=str(fake))
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clang", "keep.bpf.o"]
