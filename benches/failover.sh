#!/bin/sh
# Pair failover benchmark: `syncd --role auto` vs keepalived + seed 000's
# inotifywait | rsync loop (and its --delete variant), same lab, same kill.
# Needs root, keepalived, rsync, inotify-tools, iproute2, python3.
#   benches/failover.sh               # 3 rounds per tool, order alternating
#   benches/failover.sh --rounds 5
#   benches/failover.sh --only syncd
set -eu
cd "$(dirname "$0")/.."
: "${CARGO_TARGET_DIR:=target}"
export CARGO_TARGET_DIR
cargo build --release -p syncd --bin syncd >&2
exec python3 benches/failover/harness.py --syncd "$CARGO_TARGET_DIR/release/syncd" "$@"
