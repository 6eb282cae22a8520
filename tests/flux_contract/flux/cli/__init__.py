"""Stand-in for flux.cli (see tests/flux_contract/__init__.py)."""
