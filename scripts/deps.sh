#!/usr/bin/env bash
# Installs what datacrumbs needs on Debian 12 (run as root): the BPF toolchain that compiles
# the CO-RE object, the libraries the tests put uprobes on, and a Python venv with the package.
#   scripts/deps.sh VENV_DIR [pip install args...]
set -euo pipefail
venv=${1:?usage: scripts/deps.sh VENV_DIR [pip args]}
shift
[ "$(id -u)" = 0 ] || { echo "deps.sh: run as root (apt-get, BPF and systemd need it)" >&2; exit 1; }

apt_packages=(
  clang llvm libbpf-dev bpftool    # compile and inspect the CO-RE BPF object (libbpf.so.1 at run time)
  bpftrace                         # independent cross-check of event counts in the tests
  libhdf5-dev mpich libmpich-dev   # real HDF5 and MPI-IO libraries for uprobe tests and the demo
  python3-h5py                     # h5py on Debian's libhdf5 (the PyPI wheel bundles its own): HDF5 naming tests
  gcc make                         # test workloads are small C programs
  systemtap-sdt-dev                # <sys/sdt.h>: the USDT test workload's probes and semaphores
  strace busybox                   # copy tests: strace checks the bytes; busybox cat/cp use sendfile
  git sqlite3                      # everyday programs whose bytes the tests hold to strace
  libc6-dbg                        # glibc's separate debug info: functions typed by /usr/lib/debug (scalar args)
  chromium                         # report tests open the HTML page headless (console errors, sorting, zoom)
  fio                              # async I/O tests: its io_uring and libaio engines move data without read/write
  e2fsprogs xfsprogs               # kernel-layer tests make ext4 and xfs file systems in a file and loop-mount them
  python3 python3-venv python3-pip
  python3-cryptography             # signature checks inside Flux's own /usr/bin/python3 (CLI plugin)
  systemd util-linux procps passwd # a private systemd manager for tests; unshare, nsenter, useradd
)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps.sh: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# tracefs is not mounted on a fresh machine of this kind; probes need it.
if [ ! -e /sys/kernel/tracing/events ]; then
  mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true
fi
if [ ! -e /sys/kernel/debug/tracing ] && [ -d /sys/kernel/debug ]; then
  mount -t debugfs nodev /sys/kernel/debug 2>/dev/null || true
fi

# Prefer Debian's interpreter: a venv built on it is usable by every account, while one built
# on a per-root interpreter (e.g. pyenv under /root) is not, and real users run our commands.
python=${DATACRUMBS_PYTHON:-}
if [ -z "$python" ]; then
  if /usr/bin/python3 -c 'import sys, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    python=/usr/bin/python3
  else
    python=python3
  fi
fi
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "deps.sh: $python is older than Python 3.11" >&2; exit 1; }
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q "$@"
