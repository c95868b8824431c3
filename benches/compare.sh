#!/usr/bin/env bash
# Side-by-side benchmark: syncd resync vs `rsync -a --delete` to an rsync
# daemon, both on loopback, same generated data, same (warm) page cache.
#
#   benches/compare.sh [small|big|foreign|nochange|rss|all]  (default: all)
#
# Environment: FILES (100000), FILE_KIB (4), BIG_MIB (1024), HUGE_MIB (4096),
# ROUNDS (rounds of `foreign`, default 3, and of `small` and `nochange`, default 7),
# SYNCD_BIN (a syncd binary to use instead of building this tree's release
# binary; for before/after comparisons),
# RSYNC_PORT, SYNCD_PORT (free ports by default),
# BENCH_DIR (/tmp/syncd-bench), SYNCD_DURABLE (true: syncd flushes with
# syncfs before it reports success; rsync never fsyncs, so "false" is the
# like-for-like comparison and "true" is what syncd does by default).
set -euo pipefail
cd "$(dirname "$0")/.."

FILES=${FILES:-100000}
FILE_KIB=${FILE_KIB:-4}
BIG_MIB=${BIG_MIB:-1024}
HUGE_MIB=${HUGE_MIB:-4096}
DIR=${BENCH_DIR:-/tmp/syncd-bench}
DURABLE=${SYNCD_DURABLE:-true}
ROUNDS_SMALL=${ROUNDS:-7}
ROUNDS=${ROUNDS:-3}
WHAT=${1:-all}

command -v rsync >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rsync >/dev/null; }
if [ -n "${SYNCD_BIN:-}" ]; then
  SYNCD=$(realpath "$SYNCD_BIN")
else
  cargo build --release -q --bin syncd
  SYNCD=${CARGO_TARGET_DIR:-$PWD/target}/release/syncd
fi

mkdir -p "$DIR"
cd "$DIR"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; }
trap 'cleanup' EXIT
# Fresh destination directories each run. Freshly freed inodes slow ext4's
# allocator for whoever creates files next (its "recently deleted" check
# covers 60 s after a sync, without a journal), so what earlier runs left is deleted
# here, before anything is measured, followed by a pause long enough for
# that window to pass.
if [ -d old ] && [ -n "$(ls -A old 2>/dev/null)" ]; then
  echo "removing earlier runs' trees, then waiting 65 s (ext4 recently-deleted window)" >&2
  rm -rf old; sync; sleep 65
fi
fresh() { # a destination and its syncd state (beside it, outside the export)
  mkdir -p old
  for d in "$@"; do
    for x in "$d" "$d.state"; do [ -e "$x" ] && mv "$x" "old/$x.$RANDOM$RANDOM"; done
    mkdir -p "$d"
  done
}

now() { date +%s.%N; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

# --- generators ----------------------------------------------------------
gen_small() { # $1 dir
  [ "$(cat "$1/.done" 2>/dev/null)" = "$FILES x $FILE_KIB" ] && return
  rm -rf "$1"; mkdir -p "$1"
  python3 - "$1" "$FILES" "$FILE_KIB" <<'PY'
import os, sys
root, n, kib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
blob = os.urandom(kib * 1024 + 4096)
for i in range(n):
    d = os.path.join(root, "d%03d" % (i // 1000))
    if i % 1000 == 0:
        os.makedirs(d, exist_ok=True)
    off = i % 4096
    with open(os.path.join(d, "f%06d" % i), "wb") as f:
        f.write(blob[off:off + kib * 1024])
PY
  echo "$FILES x $FILE_KIB" > "$1/.done"
}

gen_big() { # $1 file $2 MiB
  [ -f "$1" ] && [ "$(stat -c %s "$1")" = $(( $2 * 1048576 )) ] && return
  head -c $(( $2 * 1048576 )) /dev/urandom > "$1"
}

# --- peers ---------------------------------------------------------------
# Free ports by default, so two runs (two builds, two engineers) can share
# the machine, each with its own BENCH_DIR; set RSYNC_PORT / SYNCD_PORT to
# pin them.
free_port() { # $1 tcp|udp
  python3 -c 'import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if sys.argv[1] == "udp" else socket.SOCK_STREAM)
s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' "$1"
}
RSYNC_PORT=${RSYNC_PORT:-$(free_port tcp)}
start_rsyncd() { # $1 dest dir
  cat > rsyncd.conf <<EOF
pid file = $DIR/rsyncd.pid
use chroot = no
[bench]
  path = $1
  read only = no
  uid = root
  gid = root
EOF
  rm -f rsyncd.pid
  rsync --daemon --no-detach --config="$DIR/rsyncd.conf" --port=$RSYNC_PORT --address=127.0.0.1 &
  PIDS+=($!)
  sleep 0.5
}

SYNCD_PORT=${SYNCD_PORT:-$(free_port udp)}
setup_syncd() { # $1 primary export, $2 standby export
  [ -f keys/p/node.crt ] || { "$SYNCD" keygen --out keys/p --name p >/dev/null; "$SYNCD" keygen --out keys/s --name s >/dev/null; }
  cat > standby.toml <<EOF
export = "$2"
state_dir = "$2.state"
listen = "127.0.0.1:$SYNCD_PORT"
cert = "keys/s/node.crt"
key = "keys/s/node.key"
peer_cert = "keys/p/node.crt"
[sync]
durable = $DURABLE
EOF
  cat > primary.toml <<EOF
export = "$1"
state_dir = "$1.state"
peer = "127.0.0.1:$SYNCD_PORT"
cert = "keys/p/node.crt"
key = "keys/p/node.key"
peer_cert = "keys/s/node.crt"
[sync]
durable = $DURABLE
EOF
}
start_standby() {
  "$SYNCD" --role standby --config standby.toml 2>standby.log &
  STANDBY_PID=$!
  PIDS+=($STANDBY_PID)
  for _ in $(seq 100); do grep -q "standby listening" standby.log 2>/dev/null && return; sleep 0.05; done
  echo "standby did not start"; cat standby.log; exit 1
}
stop_standby() { kill "$STANDBY_PID" 2>/dev/null || true; wait "$STANDBY_PID" 2>/dev/null || true; }

run_rsync() { # $1 src/ → module; prints seconds, sets RSYNC_WIRE
  local t0 t1 out
  t0=$(now)
  out=$(rsync -a --delete --stats "$1/" "rsync://127.0.0.1:$RSYNC_PORT/bench/")
  t1=$(now)
  echo "$out" | awk -F': ' '/^Total bytes sent/ {gsub(/,/,"",$2); s=$2} /^Total bytes received/ {gsub(/,/,"",$2); r=$2} END {print s + r}' > rsync-wire.txt
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'
}

run_syncd() { # prints seconds, sets SYNCD_WIRE (UDP payload bytes both ways)
  local t0 t1 out
  t0=$(now)
  out=$("$SYNCD" resync --config primary.toml 2>/dev/null)
  t1=$(now)
  echo "$out" > syncd-last.txt
  echo "$out" | sed -n 's/.*(\([0-9]*\) + \([0-9]*\) bytes;.*/\1 \2/p' | awk '{ print $1 + $2 }' > syncd-wire.txt
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'
}

report() { # name syncd rsync target
  printf '%-44s syncd %8ss  rsync %8ss  ratio %s  (target %s)\n' "$1" "$2" "$3" "$(ratio "$2" "$3")" "$4"
}

med() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

run_cp() { # $1 src tree, $2 fresh dest: one `cp -a` per top-level entry, nproc at a time
  local t0 t1
  t0=$(now)
  (cd "$1" && ls -A | xargs -P "$(nproc)" -I{} cp -a {} "../$2/")
  t1=$(now)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'
}

check_copy() { # $1 src, $2 syncd's copy: same names and contents (or the round does not count)
  diff -rq "$1" "$2" >/dev/null || { echo "syncd's copy $2 differs from $1"; exit 1; }
}

# Wire bytes: rsync's --stats totals (TCP payload both ways); syncd's QUIC UDP
# payload both ways (includes QUIC/TLS overhead), from its summary line.

# --- scenarios -----------------------------------------------------------
# Case 1, ROUNDS rounds (default 7 here): each round both tools write a
# fresh copy of the tree (syncd into a freshly started standby), in an order
# that alternates (rsync first in odd rounds), with `sync` before each timed
# run; then a local `cp -a` of the same tree, one `cp` per top-level
# directory, nproc at a time, for scale: what this filesystem takes to create
# the inodes right now. Absolute times swing with the filesystem's state on a
# shared VM, so the same-round ratio is what counts. Every round, the medians
# and the worst ratio are printed; then case 3, a no-change resync.
small() {
  gen_small src-small
  sync
  start_rsyncd "$DIR/dst-rsync"
  setup_syncd "$DIR/src-small" "$DIR/dst-syncd"
  local i r s c first rs=() ss=() cs=() qs=()
  for i in $(seq "$ROUNDS_SMALL"); do
    fresh dst-rsync dst-syncd dst-cp
    start_standby
    first=$([ $((i % 2)) = 1 ] && echo rsync || echo syncd)
    if [ "$first" = rsync ]; then
      sync; r=$(run_rsync src-small); sync; s=$(run_syncd)
    else
      sync; s=$(run_syncd); sync; r=$(run_rsync src-small)
    fi
    sync; c=$(run_cp src-small dst-cp)
    check_copy src-small dst-syncd
    stop_standby
    rs+=("$r"); ss+=("$s"); cs+=("$c"); qs+=("$(ratio "$s" "$r")")
    printf '1. round %d (%s first, load %s): syncd %ss  rsync %ss  ratio %s  cp -a %ss\n' \
      "$i" "$first" "$(cut -d' ' -f1-3 /proc/loadavg)" "$s" "$r" "$(ratio "$s" "$r")" "$c"
  done
  printf '1. initial sync %s x %s KiB, %s rounds: median syncd %ss  rsync %ss  cp -a %ss  same-round ratio median %s, worst %s  (target median <= 0.7, worst <= 1.0)\n' \
    "$FILES" "$FILE_KIB" "$ROUNDS_SMALL" "$(med "${ss[@]}")" "$(med "${rs[@]}")" "$(med "${cs[@]}")" \
    "$(med "${qs[@]}")" "$(printf '%s\n' "${qs[@]}" | sort -g | tail -1)"
  start_standby
  sync; r=$(run_rsync src-small)
  sync; s=$(run_syncd)
  report "3. no-change resync of the same tree" "$s" "$r" "<= 0.5"
  stop_standby; cleanup; PIDS=()
}

# Case 3 alone, ROUNDS rounds (default 7): both tools first bring a fresh
# copy of the small-file tree up to date once, then each round runs both
# against their in-sync copy (a standby started fresh for syncd, as after a
# restart), the order alternating, `sync` before each. One no-change run
# lasts under a second, so a single one (the end of `small`) says little.
nochange() {
  gen_small src-small
  fresh dst-rsync dst-syncd
  start_rsyncd "$DIR/dst-rsync"
  setup_syncd "$DIR/src-small" "$DIR/dst-syncd"
  start_standby
  run_rsync src-small >/dev/null; run_syncd >/dev/null
  check_copy src-small dst-syncd
  local i r s first rs=() ss=() qs=()
  for i in $(seq "$ROUNDS_SMALL"); do
    stop_standby; start_standby
    first=$([ $((i % 2)) = 1 ] && echo rsync || echo syncd)
    if [ "$first" = rsync ]; then
      sync; r=$(run_rsync src-small); sync; s=$(run_syncd)
    else
      sync; s=$(run_syncd); sync; r=$(run_rsync src-small)
    fi
    rs+=("$r"); ss+=("$s"); qs+=("$(ratio "$s" "$r")")
    printf '3. round %d (%s first, load %s): syncd %ss  rsync %ss  ratio %s\n' \
      "$i" "$first" "$(cut -d' ' -f1-3 /proc/loadavg)" "$s" "$r" "$(ratio "$s" "$r")"
  done
  printf '3. no-change resync of %s files, %s rounds: median syncd %ss  rsync %ss  same-round ratio median %s, worst %s  (target <= 0.5)\n' \
    "$FILES" "$ROUNDS_SMALL" "$(med "${ss[@]}")" "$(med "${rs[@]}")" \
    "$(med "${qs[@]}")" "$(printf '%s\n' "${qs[@]}" | sort -g | tail -1)"
  stop_standby; cleanup; PIDS=()
}

big() {
  mkdir -p src-big
  gen_big src-big/big.bin "$BIG_MIB"
  fresh dst-rsync dst-syncd
  start_rsyncd "$DIR/dst-rsync"
  setup_syncd "$DIR/src-big" "$DIR/dst-syncd"; start_standby
  # Each tool first writes its own copy (the normal life of a replica; syncd's
  # standby keeps block signatures of files it wrote), then 1 MiB changes in
  # the middle and both bring their copy up to date.
  run_rsync src-big >/dev/null; run_syncd >/dev/null
  head -c 1048576 /dev/urandom | dd of=src-big/big.bin bs=1M seek=$(( BIG_MIB / 2 )) conv=notrunc status=none
  sync
  local r s
  r=$(run_rsync src-big)
  s=$(run_syncd)
  report "2. ${BIG_MIB} MiB file, 1 MiB changed: time" "$s" "$r" "<= 0.5"
  printf '%-44s syncd %8s B  rsync %8s B  ratio %s  (target <= 1.05)\n' "2. ${BIG_MIB} MiB file, 1 MiB changed: wire" "$(cat syncd-wire.txt)" "$(cat rsync-wire.txt)" "$(ratio "$(cat syncd-wire.txt)" "$(cat rsync-wire.txt)")"
  sed 's/^/   syncd: /' syncd-last.txt
  # The same kind of change against a copy syncd did not write (no cached signature).
  cp src-big/big.bin dst-syncd/big.bin.tmp && mv dst-syncd/big.bin.tmp dst-syncd/big.bin && touch -d 2000-01-01 dst-syncd/big.bin
  head -c 1048576 /dev/urandom | dd of=src-big/big.bin bs=1M seek=$(( BIG_MIB / 3 )) conv=notrunc status=none
  sync
  r=$(run_rsync src-big)
  s=$(run_syncd)
  report "2b. same, base not written by syncd" "$s" "$r" "<= 0.5"
  stop_standby; cleanup; PIDS=()
}

# 2b alone, ROUNDS times: each round the standby gets a fresh copy of the
# source it did not write (no cached signature), 1 MiB of the source
# changes, then rsync and syncd bring their copies up to date, in an order
# that alternates across rounds. Every round is printed, then the medians
# of both tools and of the same-round ratios.
foreign() {
  # A fresh standby state: the standby keeps each replaced foreign copy
  # among its conflicts (a local write on a follower), 1 GiB per round,
  # so those are removed before every round, outside the timing.
  rm -rf dst-syncd-f.state
  mkdir -p src-big dst-rsync-f dst-syncd-f
  gen_big src-big/big.bin "$BIG_MIB"
  start_rsyncd "$DIR/dst-rsync-f"
  setup_syncd "$DIR/src-big" "$DIR/dst-syncd-f"; start_standby
  run_rsync src-big >/dev/null
  local i r s rs=() ss=() qs=()
  for i in $(seq "$ROUNDS"); do
    find dst-syncd-f.state/conflicts -type f -delete 2>/dev/null || true
    cp src-big/big.bin dst-syncd-f/big.bin.tmp && mv dst-syncd-f/big.bin.tmp dst-syncd-f/big.bin && touch -d 2000-01-01 dst-syncd-f/big.bin
    head -c 1048576 /dev/urandom | dd of=src-big/big.bin bs=1M seek=$(( BIG_MIB * i / (ROUNDS + 2) )) conv=notrunc status=none
    sync
    if [ $((i % 2)) = 1 ]; then r=$(run_rsync src-big); s=$(run_syncd); else s=$(run_syncd); r=$(run_rsync src-big); fi
    cmp -s src-big/big.bin dst-syncd-f/big.bin || { echo "round $i: syncd's copy differs"; exit 1; }
    rs+=("$r"); ss+=("$s"); qs+=("$(ratio "$s" "$r")")
    printf '2b round %d (%s first, load %s): syncd %ss  rsync %ss  ratio %s  wire syncd %s B rsync %s B (%s)\n' \
      "$i" "$([ $((i % 2)) = 1 ] && echo rsync || echo syncd)" "$(cut -d' ' -f1 /proc/loadavg)" "$s" "$r" "$(ratio "$s" "$r")" \
      "$(cat syncd-wire.txt)" "$(cat rsync-wire.txt)" "$(ratio "$(cat syncd-wire.txt)" "$(cat rsync-wire.txt)")"
  done
  printf '2b. %s MiB, base not written by syncd, %s rounds: median syncd %ss  rsync %ss  same-round ratio %s (worst %s)  (target <= 1.0)\n' \
    "$BIG_MIB" "$ROUNDS" "$(med "${ss[@]}")" "$(med "${rs[@]}")" "$(med "${qs[@]}")" "$(printf '%s\n' "${qs[@]}" | sort -g | tail -1)"
  stop_standby; cleanup; PIDS=()
}

rss() {
  mkdir -p src-huge
  gen_big src-huge/huge.bin "$HUGE_MIB"
  fresh dst-syncd
  setup_syncd "$DIR/src-huge" "$DIR/dst-syncd"; start_standby
  local t0 t1 prim
  t0=$(now)
  /usr/bin/time -o prim-rss.txt -f '%M' "$SYNCD" resync --config primary.toml >/dev/null 2>&1
  prim=$(tail -1 prim-rss.txt)
  t1=$(now)
  local sb
  sb=$(awk '/VmHWM/ {print $2}' /proc/$STANDBY_PID/status)
  printf '%-44s primary %6s MiB  standby %6s MiB  (target < 200 each; %.1f s)\n' "4. peak RSS, ${HUGE_MIB} MiB file whole" "$((prim / 1024))" "$((sb / 1024))" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')"
  # And as a delta against a slightly different copy.
  head -c 1048576 /dev/urandom | dd of=src-huge/huge.bin bs=1M seek=$(( HUGE_MIB / 2 )) conv=notrunc status=none
  /usr/bin/time -o prim-rss.txt -f '%M' "$SYNCD" resync --config primary.toml >/dev/null 2>&1
  prim=$(tail -1 prim-rss.txt)
  sb=$(awk '/VmHWM/ {print $2}' /proc/$STANDBY_PID/status)
  printf '%-44s primary %6s MiB  standby %6s MiB  (target < 200 each)\n' "4. peak RSS, ${HUGE_MIB} MiB file as delta" "$((prim / 1024))" "$((sb / 1024))"
  # And against a copy syncd did not write (signed on every core first).
  cp src-huge/huge.bin dst-syncd/huge.bin.tmp && mv dst-syncd/huge.bin.tmp dst-syncd/huge.bin && touch -d 2000-01-01 dst-syncd/huge.bin
  head -c 1048576 /dev/urandom | dd of=src-huge/huge.bin bs=1M seek=$(( HUGE_MIB / 3 )) conv=notrunc status=none
  /usr/bin/time -o prim-rss.txt -f '%M' "$SYNCD" resync --config primary.toml >/dev/null 2>&1
  prim=$(tail -1 prim-rss.txt)
  sb=$(awk '/VmHWM/ {print $2}' /proc/$STANDBY_PID/status)
  printf '%-44s primary %6s MiB  standby %6s MiB  (target < 200 each)\n' "4. peak RSS, ${HUGE_MIB} MiB, delta, foreign base" "$((prim / 1024))" "$((sb / 1024))"
  stop_standby; cleanup; PIDS=()
}

echo "syncd $("$SYNCD" --version | awk '{print $2}') vs $(rsync --version | head -1 | awk '{print $1, $3}'), $(nproc) cores, durable=$DURABLE"
case "$WHAT" in
  small) small ;;
  big) big ;;
  foreign) foreign ;;
  nochange) nochange ;;
  rss) rss ;;
  all) small; big; rss ;;
  *) echo "usage: $0 [small|big|foreign|nochange|rss|all]"; exit 2 ;;
esac
