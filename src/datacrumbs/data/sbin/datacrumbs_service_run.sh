#!/bin/sh
# Flux prolog (run as root on each node of the job): start datacrumbs tracing
# when the job asked for it. All logic is in Python (datacrumbs.flux.prolog).
# DATACRUMBS_CONFIG, when set in the broker's environment, names another config.
exec @PREFIX@/bin/datacrumbs-python -m datacrumbs.flux.prolog \
    --config "${DATACRUMBS_CONFIG:-@PREFIX@/etc/datacrumbs/datacrumbs.toml}"
