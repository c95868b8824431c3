#!/usr/bin/env bash
# The test command: installs what the tests need (when missing), then runs the
# whole workspace test suite. Tests that need root and network namespaces
# (VRRP) print "SKIP" and pass when not run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pair in keepalived:keepalived ip:iproute2 bridge:iproute2 tcpdump:tcpdump; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  if ! command -v "$cmd" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$cmd" ]; then need+=("$pkg"); fi
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
  else
    echo "note: missing ${need[*]} (not root or no apt-get); tests that need them will skip" >&2
  fi
fi
# keepalived/nginx from the package must not run as system services during tests.
if command -v systemctl >/dev/null 2>&1; then systemctl stop keepalived >/dev/null 2>&1 || true; fi
pkill -x keepalived 2>/dev/null || true

exec cargo test --workspace "$@"
