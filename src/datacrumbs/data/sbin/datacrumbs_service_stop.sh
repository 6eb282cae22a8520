#!/bin/sh
# Flux epilog (run as root on each node of the job): stop datacrumbs tracing
# and wait for the trace to be flushed. Logic in datacrumbs.flux.epilog.
# DATACRUMBS_CONFIG, when set in the broker's environment, names another config.
exec @PREFIX@/bin/datacrumbs-python -m datacrumbs.flux.epilog \
    --config "${DATACRUMBS_CONFIG:-@PREFIX@/etc/datacrumbs/datacrumbs.toml}"
