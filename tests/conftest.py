"""Fixtures live in tests/fixtures/<area>.py, one module per area, so that
areas can grow their fixtures without touching each other's files.

A skipped test is a failed test here: this machine has root, eBPF and a
systemd binary, so every test can run. The one allowed exception is a kprobe
test on a kernel built without kprobes (real cluster nodes have them; this
machine's kernel does not), and its reason must say so.
"""

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
