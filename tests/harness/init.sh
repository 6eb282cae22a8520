#!/bin/sh
# PID 1 of a private namespace set (made by boot.sh): prepares the mounts a
# systemd system manager expects, then becomes that manager. Test-only.
#   init.sh STATE_DIR
set -eu
state=$1
export LIBMOUNT_UTAB="$state/utab"

# A pure cgroup2 hierarchy rooted at our own cgroup (the cgroup namespace root).
umount -l /sys/fs/cgroup
mount -t cgroup2 cgroup2 /sys/fs/cgroup

# A fresh /run, but /run/datacrumbs stays shared with the host (run dir of a real node).
mkdir -p /run/datacrumbs "$state/run-datacrumbs"
mount --bind /run/datacrumbs "$state/run-datacrumbs"
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/datacrumbs /run/log
mount --move "$state/run-datacrumbs" /run/datacrumbs

mkdir -p "$state/system" "$state/log"
mount --bind "$state/system" /etc/systemd/system
mount --bind "$state/log" /run/log

: > "$state/console"
if [ -e /dev/console ]; then
    mount --bind "$state/console" /dev/console
fi

mkdir -p "$state/generators"
export container=unshare
export SYSTEMD_UNIT_PATH="/etc/systemd/system:$state/core"
export SYSTEMD_GENERATOR_PATH="$state/generators"
export SYSTEMD_ENVIRONMENT_GENERATOR_PATH="$state/generators"
exec /lib/systemd/systemd --system --unit=default.target
