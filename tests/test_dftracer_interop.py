"""Traces open in the tools DFTracer users already have.

A real traced command (eBPF in the kernel) is read by DFTracer's own readers
from PyPI (dftracer-utils: dftracer_validate, dftracer_event_count) and by
pandas, and each agrees with datacrumbs' own report on the number of events.
"""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

BIN = Path(sys.executable).parent
BLOCKS = 64


@pytest.fixture
def traced(site, bpf_object, tmp_path):
    out = tmp_path / "traces"
    out.mkdir()
    data = tmp_path / "out.bin"
    res = subprocess.run([str(BIN / "datacrumbs"), "trace", "-o", str(out), "--set", "posix", "--",
                          "dd", "if=/dev/zero", f"of={data}", "bs=4k", f"count={BLOCKS}"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    (trace,) = out.glob("*.pfw.gz")
    report = subprocess.run([str(BIN / "datacrumbs"), "report", str(trace), "--json", "-", "-q"],
                            capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    return out, trace, json.loads(report.stdout)


def _tool(name, *args):
    res = subprocess.run([str(BIN / name), *args], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_dftracer_validate_accepts_the_trace(traced, tmp_path):
    out, trace, _ = traced
    text = _tool("dftracer_validate", "-d", str(out), "--log-level", "error")
    assert "1 passed, 0 failed" in text


def test_dftracer_event_count_matches_our_report(traced, tmp_path):
    out, trace, summary = traced
    counted = _tool("dftracer_event_count", "-d", str(out), "--index-dir", str(tmp_path),
                    "--log-level", "error")
    assert int(counted.strip().splitlines()[-1]) == summary["totals"]["events"]
    assert summary["totals"]["events"] > BLOCKS * 2  # dd read and wrote every block


def test_pandas_reads_the_event_lines(traced):
    _, trace, summary = traced
    with gzip.open(trace, "rt") as f:
        lines = [ln for ln in f if ln.startswith("{")]
    df = pd.read_json(io.StringIO("".join(lines)), lines=True)
    ops = df[df["ph"] == "X"]
    assert len(ops) == summary["totals"]["events"]
    writes = ops[ops["name"] == "write"]
    sizes = writes["args"].map(lambda a: a.get("size", 0))
    assert sizes.sum() >= BLOCKS * 4096
