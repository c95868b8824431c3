#!/usr/bin/env bash
# Before/after of syncd builds alone: `syncd resync` of the same generated
# tree (FILES x FILE_KIB KiB, default 100,000 x 4) into a fresh standby
# directory, durable, every build once per round, the order rotating each
# round; earlier rounds' trees are moved aside, never deleted while it runs
# (a large delete puts ext4 in a slow state for about a minute). Prints
# every round and each build's median.
#
#   benches/ab_resync.sh OLD_BIN NEW_BIN [MORE_BINS...]   (ROUNDS, default 8)
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 BIN BIN [BIN...]"; exit 2; }
BINS=(); for b in "$@"; do BINS+=("$(realpath "$b")"); done
FILES=${FILES:-100000}; FILE_KIB=${FILE_KIB:-4}; ROUNDS=${ROUNDS:-8}
D=${BENCH_DIR:-/tmp/syncd-ab}; PORT=${SYNCD_PORT:-29911}
mkdir -p "$D"; cd "$D"
if [ "$(cat src/.done 2>/dev/null)" != "$FILES x $FILE_KIB" ]; then
  rm -rf src; mkdir -p src
  python3 - src "$FILES" "$FILE_KIB" <<'PY'
import os, sys
root, n, kib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
blob = os.urandom(kib * 1024 + 4096)
for i in range(n):
    d = os.path.join(root, "d%03d" % (i // 1000))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%06d" % i), "wb") as f:
        f.write(blob[i % 4096:i % 4096 + kib * 1024])
PY
  echo "$FILES x $FILE_KIB" > src/.done
fi
[ -f keys/p/node.crt ] || { "${BINS[0]}" keygen --out keys/p --name p >/dev/null; "${BINS[0]}" keygen --out keys/s --name s >/dev/null; }
cat > primary.toml <<T
export = "$D/src"
state_dir = "$D/src.state"
peer = "127.0.0.1:$PORT"
cert = "keys/p/node.crt"
key = "keys/p/node.key"
peer_cert = "keys/s/node.crt"
T
cat > standby.toml <<T
export = "$D/dst"
state_dir = "$D/dst.state"
listen = "127.0.0.1:$PORT"
cert = "keys/s/node.crt"
key = "keys/s/node.key"
peer_cert = "keys/p/node.crt"
T
PID=
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null; true' EXIT
run() { # $1 binary; prints seconds
  mkdir -p old
  for x in dst dst.state src.state; do [ -e "$x" ] && mv "$x" "old/$x.$RANDOM$RANDOM"; done
  mkdir -p dst
  "$1" --role standby --config standby.toml 2>standby.log &
  PID=$!
  for _ in $(seq 100); do grep -q "standby listening" standby.log && break; sleep 0.05; done
  sync
  local t0 t1; t0=$(date +%s.%N)
  "$1" resync --config primary.toml >last.txt 2>&1
  t1=$(date +%s.%N)
  kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
  grep -q "sent whole $((FILES + 1))," last.txt || { echo "resync did not send every file:" >&2; cat last.txt >&2; exit 1; }
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'
}
n=${#BINS[@]}; declare -A times
for i in $(seq "$ROUNDS"); do
  line="round $i (load $(cut -d' ' -f1 /proc/loadavg)):"
  for k in $(seq 0 $((n - 1))); do
    j=$(( (i + k) % n )); t=$(run "${BINS[$j]}")
    times[$j]="${times[$j]:-} $t"; line="$line  #$((j + 1)) ${t}s"
  done
  echo "$line"
done
for j in $(seq 0 $((n - 1))); do
  m=$(printf '%s\n' ${times[$j]} | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}')
  echo "#$((j + 1)) ${BINS[$j]}: median ${m}s"
done
