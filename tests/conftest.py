"""Fixtures live in tests/fixtures/<area>.py, one module per area, so that
areas can grow their fixtures without touching each other's files."""

pytest_plugins = [
    "fixtures.common",
    "fixtures.keys",
    "fixtures.systemd",
    "fixtures.tracing",
]
