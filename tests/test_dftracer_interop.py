"""Traces open in the tools DFTracer users already have.

A real traced command (eBPF in the kernel) is read by DFTracer's own readers
from PyPI (dftracer-utils: dftracer_validate, dftracer_event_count) and by
pandas, and each agrees with datacrumbs' own report on the number of events.
"""

from __future__ import annotations

import gzip
import io
import json
import re
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


@pytest.fixture
def traced_small_reads(site, bpf_object, tmp_path):
    """The issue's command: dd's 1,003 reads, most well under a microsecond each."""
    out = tmp_path / "small"
    out.mkdir()
    res = subprocess.run([str(BIN / "datacrumbs"), "trace", "-o", str(out), "--set", "posix", "--",
                          "dd", "if=/dev/zero", "of=/dev/null", "bs=1", "count=1000"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    (trace,) = out.glob("*.pfw.gz")
    return out, trace


def test_sub_microsecond_durations_survive_every_reader(traced_small_reads, tmp_path):
    """ns in the text (three decimals of µs) come back from our reader and from pandas, and
    DFTracer's own tools still validate and count the fractional trace."""
    from datacrumbs.report.merge import summarize
    from datacrumbs.trace.reader import TraceReader

    out, trace = traced_small_reads
    with gzip.open(trace, "rt") as f:
        lines = [ln for ln in f if ln.startswith("{")]
    text = {}                                # event id -> dur in ns, as the text says
    for ln in lines:
        m = re.search(r'^\{"id":(\d+),.*"dur":(\d+)\.(\d{3}),"ph":"X"', ln)
        if m:
            text[int(m.group(1))] = int(m.group(2)) * 1000 + int(m.group(3))
    sub_us = {i for i, ns in text.items() if 0 < ns < 1000}
    assert len(sub_us) > 100, sorted(text.values())[:20]
    ours = {e["id"]: e["dur"] for e in TraceReader(trace).events() if e.get("ph") == "X"}
    assert {i: round(d * 1000) for i, d in ours.items()} == text
    df = pd.read_json(io.StringIO("".join(lines)), lines=True)
    x = df[df["ph"] == "X"]
    assert dict(zip(x["id"].tolist(), (round(d * 1000) for d in x["dur"].tolist()))) == text
    assert all(ours[i] < 1 for i in sub_us)
    report = summarize([trace], jobs=1)
    # every event's time (totals.time_us counts file I/O only, each second once)
    assert report["totals"]["time_all_events_us"] == round(sum(text.values()) / 1000, 3)
    assert report["totals"]["events"] == len(text)
    assert "1 passed, 0 failed" in _tool("dftracer_validate", "-d", str(out), "--log-level", "error")
    counted = _tool("dftracer_event_count", "-d", str(out), "--index-dir", str(tmp_path),
                    "--log-level", "error")
    assert int(counted.strip().splitlines()[-1]) == len(text)
