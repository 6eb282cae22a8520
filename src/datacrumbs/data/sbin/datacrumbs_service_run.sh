#!/bin/sh
# Flux prolog (run as root on each node of the job): start datacrumbs tracing
# when the job asked for it. All logic is in Python (datacrumbs.flux.prolog).
# DATACRUMBS_CONFIG, when set in the broker's environment, names another config.
#
# Fast path: most jobs do not ask for tracing, and each would pay a Python
# start for nothing. A jobspec that does not even contain the word "datacrumbs"
# cannot ask for it: exit 0 at the cost of one `flux job info`. Anything else
# (the word appears, flux fails, metadata given directly) goes to Python, which
# decides and reports.
if [ -z "${DATACRUMBS_JOB_METADATA+set}" ] && [ -n "${FLUX_JOB_ID:-}" ]; then
    if spec=$(flux job info "$FLUX_JOB_ID" jobspec 2>/dev/null); then
        case $spec in
            *datacrumbs*) ;;
            *) exit 0 ;;
        esac
    fi
fi
exec @PREFIX@/bin/datacrumbs-python -m datacrumbs.flux.prolog \
    --config "${DATACRUMBS_CONFIG:-@PREFIX@/etc/datacrumbs/datacrumbs.toml}"
