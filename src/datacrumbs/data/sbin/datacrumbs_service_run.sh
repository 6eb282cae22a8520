#!/bin/sh
# Flux prolog (run as root on each node of the job): start datacrumbs tracing
# when the job asked for it. All logic is in Python (datacrumbs.flux.prolog).
exec @PREFIX@/bin/datacrumbs-python -m datacrumbs.flux.prolog \
    --config @PREFIX@/etc/datacrumbs/datacrumbs.toml
