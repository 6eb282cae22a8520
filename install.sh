#!/usr/bin/env bash
# Installs datacrumbs on this Debian 12 machine (as root) under PREFIX (default /opt/datacrumbs),
# then runs the demo job: sign a probes file as an ordinary user and trace a job end to end.
set -euo pipefail
cd "$(dirname "$0")"
prefix=${PREFIX:-/opt/datacrumbs}
scripts/deps.sh "$prefix/venv" '.[dask]'     # dask: `datacrumbs report --dask`
"$prefix/venv/bin/datacrumbs" install --prefix "$prefix"
# The commands where users and sudo look (sudo's secure_path has /usr/local/bin); an
# existing command of the same name that is not ours is left alone, and said so.
for cmd in datacrumbs datacrumbs_sign_probes datacrumbs_probe_configurator \
           datacrumbs_service_wrapper; do
    link=/usr/local/bin/$cmd
    if [ -e "$link" ] && [ "$(readlink -f "$link")" != "$(readlink -f "$prefix/bin/$cmd")" ]; then
        echo "install.sh: $link exists and is not datacrumbs'; run $prefix/bin/$cmd" >&2
    else
        ln -sfn "$prefix/bin/$cmd" "$link"
    fi
done
exec "$prefix/bin/datacrumbs" demo --config "$prefix/etc/datacrumbs/datacrumbs.toml"
