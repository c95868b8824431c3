#!/bin/sh
# Failover benchmark: syncd-vrrp vs keepalived, same configuration, in network
# namespaces. Needs root, keepalived, tcpdump, iproute2, python3.
#   benches/vrrp_failover.sh            # 5 runs per case
#   benches/vrrp_failover.sh --runs 10
#   benches/vrrp_failover.sh --quick    # 0.1 s cases only
set -eu
cd "$(dirname "$0")/.."
: "${CARGO_TARGET_DIR:=/work/target-vrrp}"
export CARGO_TARGET_DIR
cargo build --release -p syncd-vrrp >&2
exec python3 benches/vrrp_failover/harness.py "$CARGO_TARGET_DIR/release/syncd-vrrp" "$@"
