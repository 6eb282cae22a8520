#!/bin/sh
# Flux epilog (run as root on each node of the job): stop datacrumbs tracing
# and wait for the trace to be flushed. Logic in datacrumbs.flux.epilog.
# DATACRUMBS_CONFIG, when set in the broker's environment, names another config.
#
# Fast path: the prolog starts a tracer only after writing its env file (and
# the verified probes copy) in the run dir, and the epilog removes them last.
# With neither for any job on this node nothing can be running: exit 0 without
# starting Python. (A site that moves run_dir with DATACRUMBS_CONFIG always
# takes the full path.)
if [ -z "${DATACRUMBS_CONFIG:-}" ]; then
    set -- @RUN_DIR@/datacrumbs-*.env @RUN_DIR@/datacrumbs-*.probes.json.gz
    if [ ! -e "$1" ] && [ ! -e "$2" ]; then
        exit 0
    fi
fi
exec @PREFIX@/bin/datacrumbs-python -m datacrumbs.flux.epilog \
    --config "${DATACRUMBS_CONFIG:-@PREFIX@/etc/datacrumbs/datacrumbs.toml}"
