#!/usr/bin/env bash
# Installs datacrumbs on this Debian 12 machine (as root) under PREFIX (default /opt/datacrumbs),
# then runs the demo job: sign a probes file as an ordinary user and trace a job end to end.
set -euo pipefail
cd "$(dirname "$0")"
prefix=${PREFIX:-/opt/datacrumbs}
scripts/deps.sh "$prefix/venv" .
"$prefix/venv/bin/datacrumbs" install --prefix "$prefix"
exec "$prefix/bin/datacrumbs" demo --config "$prefix/etc/datacrumbs/datacrumbs.toml"
