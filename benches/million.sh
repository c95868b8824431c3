#!/usr/bin/env bash
# A million files: syncd --role primary/standby on one large generated tree,
# lsyncd's start-up on the same tree beside it.
#
#   benches/million.sh
#
# Steps, one tree per run (FILES small files of a few bytes in FILES/10
# directories, two levels: FILES/1000 top directories of 100 each):
#   1. first sync: both daemons started on an empty standby, time until the
#      primary connects (what its start took) and until it says "in sync;
#      following changes"; then SETTLE s idle, and
#      the primary's lost-event counters (overflows, full reconciles) read;
#   2. latency: WRITES new small files written one by one after "in sync",
#      change->replica p50/p99 (benches/live_load.py);
#   3. restart of the in-sync pair (both SIGTERMed, both started): time to
#      "in sync", protocol bytes each way (the primary's wire counters),
#      each daemon's peak RSS (VmHWM) and its RSS while idle watching;
#   4. `syncd verify --quick` (when the binary has it), then `syncd verify`;
#   5. lsyncd (default.rsync) started on the same in-sync pair: time to its
#      "Startup of ... finished" (its inotify watches plus one rsync run),
#      and rsync's own bytes for that no-change run (--stats);
#   6. (before 4) a full reconcile while live: the primary restarted with
#      full_reconcile_secs = FULL_EVERY (30), and the first periodic full
#      reconcile after "in sync" timed from the primary's own log (its
#      "replicated full=true ... ms=" line), the standby running throughout.
# The trees are deleted at the end (and at the start, if an earlier run left
# them).
#
# Environment: FILES (1000000), BENCH_DIR (/tmp/syncd-million-bench),
# WRITES (300), WRITE_RATE (100/s), SETTLE (10), SYNCD_DURABLE (true),
# SYNCD (the binary; default: the release build, under CARGO_TARGET_DIR when
# set, built when missing), KEEP (1: leave the trees), STEPS (the steps
# to run, default "1 2 3 4 5 6"; step 1 always runs, as the others start
# from its in-sync pair: "1 3" measures the first sync and the restart alone),
# RESTARTS (1: how many times step 3 restarts the pair, one after another).
#
# DISK: each side costs about 4 KiB per file and directory in inodes and
# blocks (a 1,000,000-file tree ~5 GiB per side on ext4). The script
# refuses to start when the free space after both trees would be under
# 10 GiB.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

FILES=${FILES:-1000000}
DIR=${BENCH_DIR:-/tmp/syncd-million-bench}
WRITES=${WRITES:-300}
WRITE_RATE=${WRITE_RATE:-100}
SETTLE=${SETTLE:-10}
DURABLE=${SYNCD_DURABLE:-true}
KEEP=${KEEP:-0}
RESTARTS=${RESTARTS:-1}
STEPS=" ${STEPS:-1 2 3 4 5 6} "
FULL_EVERY=${FULL_EVERY:-30}
step() { [[ $STEPS == *" $1 "* ]]; }
SYNCD=${SYNCD:-${CARGO_TARGET_DIR:-$ROOT/target}/release/syncd}
[ -x "$SYNCD" ] || cargo build --release -q --bin syncd
LOAD=(python3 "$ROOT/benches/live_load.py")

need_kib=$(( (FILES + FILES / 10) * 4 * 2 * 11 / 10 ))
mkdir -p "$DIR"
avail_kib=$(df -Pk "$DIR" | awk 'NR == 2 {print $4}')
if [ $(( avail_kib - need_kib )) -lt $(( 10 * 1024 * 1024 )) ]; then
  echo "not enough disk under $DIR: ${avail_kib} KiB free, both trees need ~${need_kib} KiB and 10 GiB must stay free" >&2
  exit 2
fi

# --- processes (each in its own session, so a stop reaches its children) ----
STARTED=()
cleanup() {
  set +e
  for g in "${STARTED[@]}"; do kill -TERM -- "-$g" 2>/dev/null; done
  for g in "${STARTED[@]}"; do wait "$g" 2>/dev/null; done
  STARTED=()
  if [ "$KEEP" != 1 ] && [ -d "$DIR/run" ]; then rm -rf "$DIR/run"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
spawn() { # log, command...: sets SPAWNED
  local log=$1; shift
  setsid "$@" >"$log" 2>&1 </dev/null &
  SPAWNED=$!
  STARTED+=("$SPAWNED")
}
alive() { local s; s=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) && [ -n "$s" ] && [ "${s%% *}" != Z ]; }
stop() { # pid [group]
  local p=$1 target=$1 i n=() g
  [ "${2:-}" = group ] && target=-$1
  kill -TERM -- "$target" 2>/dev/null || true
  for i in $(seq 600); do alive "$p" || break; sleep 0.1; done
  alive "$p" && { echo "  ($p did not stop within 60 s; killing it)" >&2; kill -KILL -- "$target" 2>/dev/null || true; }
  wait "$p" 2>/dev/null || true
  for g in "${STARTED[@]}"; do [ "$g" = "$p" ] || n+=("$g"); done
  STARTED=("${n[@]}")
}
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.0f", k / 1024 }'; }
kib_of() { awk -v f="$2" '$1 == f":" {print $2}' "/proc/$1/status"; } # pid field
free_port() { python3 -c 'import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM if sys.argv[1]=="udp" else socket.SOCK_STREAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' "$1"; }
wait_for_line() { # file pattern timeout_s
  local i
  for i in $(seq $(( $3 * 50 ))); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.02; done
  echo "'$2' not in $1 after $3 s:" >&2; tail -20 "$1" >&2; return 1
}
metric() { # name: the primary's /metrics value
  curl -s "http://127.0.0.1:$ADMIN/metrics" | awk -v n="syncd_$1" '$1 == n || index($1, n "{") == 1 {print $2}'
}
getv() { sed -n 's/^RESULT //p' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }

# --- the tree --------------------------------------------------------------
B=$DIR/run
if [ -d "$B" ]; then
  echo "removing an earlier run's trees, then waiting 65 s (ext4 recently-deleted window)" >&2
  rm -rf "$B"; sync; sleep 65
fi
mkdir -p "$B/src" "$B/dst"
[ -f "$DIR/keys/p/node.crt" ] || { "$SYNCD" keygen --out "$DIR/keys/p" --name primary >/dev/null; "$SYNCD" keygen --out "$DIR/keys/s" --name standby >/dev/null; }

echo "syncd $("$SYNCD" --version | awk '{print $2}'), $(lsyncd --version 2>&1 | head -1 | sed 's/Version: /lsyncd /'), $(rsync --version | head -1 | awk '{print $1, $3}'); $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); inotify max_user_watches $(sysctl -n fs.inotify.max_user_watches), max_queued_events $(sysctl -n fs.inotify.max_queued_events)"
t0=$(now)
# FILES/1000 top directories, 100 subdirectories each, 10 files each; and
# the load generator's own directories (d00..).
python3 - "$B/src" "$FILES" <<'EOF'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    if i % 10 == 0:
        d = os.path.join(root, "a%04d" % (i // 1000), "b%03d" % (i // 10 % 100))
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%d" % (i % 10)), "wb") as f:
        f.write(b"%d\n" % i)
EOF
"${LOAD[@]}" prep --src "$B/src" >/dev/null
sync
echo "generated $FILES files in $(find "$B/src" -type d | wc -l) directories in $(secs "$t0" "$(now)") s"

port=$(free_port udp); ADMIN=$(free_port tcp); sadmin=$(free_port tcp)
for side in primary standby; do
  if [ $side = primary ]; then
    cat > "$B/primary.toml" <<EOF
node_id = "primary"
export = "$B/src"
state_dir = "$B/src.state"
peer = "127.0.0.1:$port"
admin = "127.0.0.1:$ADMIN"
cert = "$DIR/keys/p/node.crt"
key = "$DIR/keys/p/node.key"
peer_cert = "$DIR/keys/s/node.crt"
[sync]
durable = $DURABLE
EOF
  else
    cat > "$B/standby.toml" <<EOF
node_id = "standby"
export = "$B/dst"
state_dir = "$B/dst.state"
listen = "127.0.0.1:$port"
admin = "127.0.0.1:$sadmin"
cert = "$DIR/keys/s/node.crt"
key = "$DIR/keys/s/node.key"
peer_cert = "$DIR/keys/p/node.crt"
[sync]
durable = $DURABLE
EOF
  fi
done
start_pair() { # log suffix: standby, then primary; sets T_START
  spawn "$B/standby$1.log" "$SYNCD" --role standby --config "$B/standby.toml"; SB=$SPAWNED
  wait_for_line "$B/standby$1.log" "standby listening" 60
  T_START=$(now)
  spawn "$B/primary$1.log" "$SYNCD" --role primary --config "$B/primary.toml"; PR=$SPAWNED
}
rss_line() { # label
  echo "  $1 RSS: primary $(mib "$(kib_of "$PR" VmRSS)") MiB (peak $(mib "$(kib_of "$PR" VmHWM)")), standby $(mib "$(kib_of "$SB" VmRSS)") MiB (peak $(mib "$(kib_of "$SB" VmHWM)"))"
}
lost_line() {
  echo "  lost-event counters: overflows $(metric overflows_total), full_reconciles $(metric full_reconciles_total); \"lost events\"/\"overflowed\" log lines: $(grep -cE 'lost events|queue overflowed' "$B/primary$1.log" || true)"
}

# --- 1. first sync -------------------------------------------------------------
echo "== 1. first sync ($FILES files, durable=$DURABLE) =="
start_pair ""
wait_for_line "$B/primary.log" "connected to the standby" 3600
echo "  connected after $(secs "$T_START" "$(now)") s"
wait_for_line "$B/primary.log" "in sync; following changes" 7200
echo "  in sync after $(secs "$T_START" "$(now)") s"
sleep "$SETTLE"
lost_line ""
rss_line "after the first sync,"

# --- 2. latency after "in sync" ----------------------------------------------
if step 2; then
echo "== 2. change->replica latency: $WRITES small files at ${WRITE_RATE}/s after in sync =="
secs_needed=$(( (WRITES + WRITE_RATE - 1) / WRITE_RATE ))
"${LOAD[@]}" load --src "$B/src" --dst "$B/dst" --rate "$WRITE_RATE" --seconds "$secs_needed" --size 32 --grace 60 \
  --label syncd --tsv "$B/latency.tsv" >"$B/latency.txt"
echo "  p50 $(getv "$B/latency.txt" p50_ms) ms, p99 $(getv "$B/latency.txt" p99_ms) ms, max $(getv "$B/latency.txt" max_ms) ms, missing $(getv "$B/latency.txt" missing)"
fi

# --- 3. restart of the in-sync pair --------------------------------------------
if step 3; then
for n in $(seq "$RESTARTS"); do
echo "== 3. restart of the in-sync pair ($n of $RESTARTS) =="
stop "$PR"; stop "$SB"
sync
sfx=.restart; [ "$n" = 1 ] || sfx=.restart$n
start_pair "$sfx"
wait_for_line "$B/primary$sfx.log" "connected to the standby" 3600
echo "  connected after $(secs "$T_START" "$(now)") s"
wait_for_line "$B/primary$sfx.log" "in sync; following changes" 3600
t1=$(now)
echo "  in sync after $(secs "$T_START" "$t1") s; wire: primary sent $(metric wire_tx_bytes_total) B, received $(metric wire_rx_bytes_total) B"
rss_line "at in sync,"
sleep "$SETTLE"
lost_line "$sfx"
rss_line "watching, ${SETTLE} s later,"
done
fi

# --- 6. a full reconcile while live --------------------------------------------
if step 6; then
echo "== 6. a full reconcile while live (full_reconcile_secs = $FULL_EVERY) =="
stop "$PR"
# [sync] is the file's last table.
echo "full_reconcile_secs = $FULL_EVERY" >> "$B/primary.toml"
spawn "$B/primary.full.log" env SYNCD_LOG=info,syncd::primary::ship=debug "$SYNCD" --role primary --config "$B/primary.toml"; PR=$SPAWNED
wait_for_line "$B/primary.full.log" "in sync; following changes" 3600
full_lines() { grep -c 'replicated.*full=true' "$B/primary.full.log" || true; }
n0=$(full_lines)
for _ in $(seq $(( (FULL_EVERY + 600) * 10 ))); do [ "$(full_lines)" -gt "$n0" ] && break; sleep 0.1; done
line=$(grep 'replicated.*full=true' "$B/primary.full.log" | tail -1)
if [ "$(full_lines)" -gt "$n0" ]; then
  echo "  periodic full reconcile: $(echo "$line" | sed -n 's/.* ms=\([0-9]*\).*/\1/p') ms; $(echo "$line" | grep -oE 'whole=[0-9]+ delta=[0-9]+ deleted=[0-9]+')"
else
  echo "  no periodic full reconcile within $((FULL_EVERY + 600)) s (see $B/primary.full.log)"
fi
rss_line "after it,"
# Step 4 must not share the cores with a compare every FULL_EVERY s.
stop "$PR"
sed -i '/^full_reconcile_secs = /d' "$B/primary.toml"
spawn "$B/primary.after-full.log" "$SYNCD" --role primary --config "$B/primary.toml"; PR=$SPAWNED
wait_for_line "$B/primary.after-full.log" "in sync; following changes" 3600
fi

# --- 4. verify ------------------------------------------------------------------
if step 4; then
echo "== 4. verify =="
# --quick first: plain verify reads every file, minutes on a large tree.
if "$SYNCD" verify --help 2>&1 | grep -q -- --quick; then
  t0=$(now)
  if "$SYNCD" verify --quick --config "$B/primary.toml" >"$B/verify-quick.txt" 2>&1; then v=equal; else v="DIFFERENT (see $B/verify-quick.txt)"; fi
  echo "  syncd verify --quick: $v in $(secs "$t0" "$(now)") s"
fi
t0=$(now)
if "$SYNCD" verify --config "$B/primary.toml" >"$B/verify.txt" 2>&1; then v=equal; else v="DIFFERENT (see $B/verify.txt)"; fi
echo "  syncd verify: $v in $(secs "$t0" "$(now)") s"
fi
stop "$PR"; stop "$SB"

# --- 5. lsyncd beside it ---------------------------------------------------------
if ! step 5; then
  :
elif command -v lsyncd >/dev/null; then
  echo "== 5. lsyncd (default.rsync) started on the same in-sync pair =="
  cat > "$B/lsyncd.lua" <<EOF
settings { nodaemon = true, logfile = "$B/lsyncd.log", statusFile = "$B/lsyncd.status", statusInterval = 60 }
sync { default.rsync, source = "$B/src", target = "$B/dst", delay = 1, rsync = { _extra = { "--stats" } } }
EOF
  sync
  t0=$(now)
  spawn "$B/lsyncd.out" lsyncd "$B/lsyncd.lua"; L=$SPAWNED
  wait_for_line "$B/lsyncd.log" "Startup of .* finished" 3600
  echo "  lsyncd: \"Startup of ... finished\" after $(secs "$t0" "$(now)") s; rsync: $(grep -E 'Total bytes (sent|received)' "$B/lsyncd.out" "$B/lsyncd.log" 2>/dev/null | sed 's/.*Total/Total/' | tr '\n' ' ')"
  echo "  lsyncd RSS: $(mib "$(kib_of "$L" VmRSS)") MiB (peak $(mib "$(kib_of "$L" VmHWM)"))"
  stop "$L" group
else
  echo "== 5. lsyncd not installed: skipped =="
fi
for f in "$B"/primary*.log "$B"/standby*.log; do
  n=$(grep -cE 'WARN|ERROR' "$f" || true)
  [ "${n:-0}" = 0 ] || { echo "  $(basename "$f"): $n warning/error lines, first:"; grep -E 'WARN|ERROR' "$f" | head -3 | cut -c1-240 | sed 's/^/    /'; }
done
