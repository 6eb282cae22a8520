#!/bin/sh
# Flux epilog (run as root on each node of the job): stop datacrumbs tracing
# and wait for the trace to be flushed. Logic in datacrumbs.flux.epilog.
exec @PREFIX@/bin/datacrumbs-python -m datacrumbs.flux.epilog \
    --config @PREFIX@/etc/datacrumbs/datacrumbs.toml
