#!/usr/bin/env bash
# Runs the whole datacrumbs test suite as root on Debian 12: installs what it needs first,
# builds the BPF object once, then runs pytest (real eBPF, real systemd, real users).
set -euo pipefail
cd "$(dirname "$0")"

# The tests run commands as unprivileged users and as hardened systemd units against this
# checkout: a checkout under a private directory (e.g. /root) is unreachable for those users,
# and one under /tmp or /var/tmp is hidden from units with PrivateTmp=yes. Run from a copy then.
case "$PWD/" in /tmp/*|/var/tmp/*) hidden=yes ;; *) hidden=no ;; esac
if [ "$hidden" = yes ] || \
   ! setpriv --reuid=65534 --regid=65534 --clear-groups test -r "$PWD/pyproject.toml" 2>/dev/null; then
  copy=/srv/datacrumbs-test-checkout
  echo "test.sh: $PWD is private or under a temporary directory; running the tests from $copy"
  mkdir -p "$copy" && chmod 755 "$copy"
  find "$copy" -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf {} +   # keep only its venv
  tar --exclude=./.venv --exclude=./build -cf - . | (cd "$copy" && tar -xf -)
  chmod -R go+rX "$copy"
  exec "$copy/test.sh" "$@"
fi

scripts/deps.sh .venv -e '.[test]'
.venv/bin/datacrumbs build-bpf -o build/bpf/datacrumbs.bpf.o
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
# pytest exits 5 when no test ran: that is a failure here, not a pass.
[ $rc -eq 5 ] && echo "test.sh: no test was collected" >&2
exit $rc
