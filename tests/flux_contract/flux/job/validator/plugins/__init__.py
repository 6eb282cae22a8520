"""Stand-in for flux.job.validator.plugins (see tests/flux_contract/__init__.py)."""
