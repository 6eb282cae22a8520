#!/bin/sh
# Starts init.sh as PID 1 of new namespaces from inside CGROUP_DIR, never from the
# root cgroup (a systemd started there would adopt every process of the machine).
#   boot.sh CGROUP_DIR STATE_DIR
set -eu
echo $$ > "$1/cgroup.procs"
exec unshare --pid --fork --kill-child --mount --propagation private --uts --ipc \
    --cgroup --mount-proc /bin/sh "$(dirname "$0")/init.sh" "$2"
