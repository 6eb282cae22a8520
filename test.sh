#!/usr/bin/env bash
# Runs the whole datacrumbs test suite as root on Debian 12: installs what it needs first,
# builds the BPF object once, then runs pytest (real eBPF, real systemd, real users).
set -euo pipefail
cd "$(dirname "$0")"
scripts/deps.sh .venv -e '.[test]'
.venv/bin/datacrumbs build-bpf -o build/bpf/datacrumbs.bpf.o
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
# pytest exits 5 when no test ran: that is a failure here, not a pass.
[ $rc -eq 5 ] && echo "test.sh: no test was collected" >&2
exit $rc
