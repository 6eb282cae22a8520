"""Stand-in for flux.job.validator (see tests/flux_contract/__init__.py)."""

from flux.job.validator.validator import (  # noqa: F401
    JobValidator,
    ValidatorJobInfo,
    ValidatorPlugin,
    ValidatorResult,
)
