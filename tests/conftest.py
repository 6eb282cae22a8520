"""Fixtures live in tests/fixtures/<area>.py, one module per area, so that
areas can grow their fixtures without touching each other's files.

A skipped test is a failed test here: this machine has root, eBPF and a
systemd binary, so every test can run. The one allowed exception is a kprobe
test on a kernel built without kprobes (real cluster nodes have them; this
machine's kernel does not), and its reason must say so.
"""

import shutil
import tempfile
from pathlib import Path

import pytest

pytest_plugins = [
    "fixtures.common",
    "fixtures.keys",
    "fixtures.systemd",
    "fixtures.tracing",
]

ALLOWED_SKIP_PREFIX = "kernel lacks kprobes"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if ALLOWED_SKIP_PREFIX not in reason:
            report.outcome = "failed"
            report.longrepr = f"skipped tests count as failures on this machine: {reason}"


@pytest.fixture
def tmp_path():
    """A per-test directory real test users can traverse.

    pytest's own tmp_path lies under a 0700 directory, so dctest1 could not
    reach the site config, sockets or files the tests give it.
    """
    path = Path(tempfile.mkdtemp(prefix="datacrumbs-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
