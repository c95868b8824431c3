#!/usr/bin/env bash
# Live replication benchmark on loopback: syncd (--role primary/standby)
# side by side with lsyncd (Debian package, default.rsync, delay = 1) and the
# classic `inotifywait -mrq | while read; do rsync -a --delete; done` loop.
#
#   benches/live.sh [latency|throughput|idle|restart|all]     (default: all)
#
#   latency     change->replica latency (close() on the primary until the file
#               is under its name, complete, on the standby), p50/p99, under
#               RATE new 1 KiB files/s for SECONDS s, for syncd, lsyncd and the
#               loop, each on fresh directories; p99 ratios syncd/lsyncd and
#               syncd/loop. Target: syncd p99 <= 50 ms.
#   throughput  syncd only: rates RATES (STEP_SECONDS each); the highest rate at
#               which every file arrives and p99 stays under LAG_BOUND_MS.
#   idle        FILES small files synced, then both daemons idle IDLE_SECONDS:
#               CPU seconds (utime+stime) and RSS of each side.
#   restart     on that in-sync tree: SIGTERM both, start both, time until
#               the primary is "in sync; following changes" and a new file
#               written then is on the standby.
#
# Environment: RATE (1000), SECONDS (60; DURATION is an alias), FILES
# (100000), BENCH_DIR (/tmp/syncd-live-bench), GRACE (30: how long to wait
# for late files), TOOLS ("syncd lsyncd loop"), RATES ("1000 2000 4000
# 8000 16000"), STEP_SECONDS (10), LAG_BOUND_MS (1000), BISECT (2: extra
# throughput steps between the last bounded and first unbounded rate),
# IDLE_SECONDS (30), SYNCD_DURABLE (true), SYNCD_SYNC (extra TOML lines for
# syncd's [sync] table, e.g. "batch_max_delay_ms = 20"), RESTART_COLD (0; 1:
# drop the page cache between stop and start, as after a reboot; root only),
# SYNCD (the binary; default: the release build, under CARGO_TARGET_DIR
# when set, built when missing).
#
# The load generator and latency meter is benches/live_load.py (one process,
# CLOCK_MONOTONIC; inotify on the standby directories, one stat per arrival).
# Everything runs on 127.0.0.1. Per-file latencies are kept in
# $BENCH_DIR/runs/*/latency.tsv, daemon logs next to them.

# Bash's SECONDS counts seconds since the shell started; an exported SECONDS
# only sets its starting value, and is exported to children only then.
LOAD_SECONDS=$(printenv SECONDS || true)
LOAD_SECONDS=${LOAD_SECONDS:-${DURATION:-60}}
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

RATE=${RATE:-1000}
FILES=${FILES:-100000}
DIR=${BENCH_DIR:-/tmp/syncd-live-bench}
GRACE=${GRACE:-30}
TOOLS=${TOOLS:-"syncd lsyncd loop"}
RATES=${RATES:-"1000 2000 4000 8000 16000"}
STEP_SECONDS=${STEP_SECONDS:-10}
LAG_BOUND_MS=${LAG_BOUND_MS:-1000}
BISECT=${BISECT:-2}
IDLE_SECONDS=${IDLE_SECONDS:-30}
DURABLE=${SYNCD_DURABLE:-true}
SYNC_EXTRA=${SYNCD_SYNC:-}
RESTART_COLD=${RESTART_COLD:-0}
WHAT=${1:-all}
case "$WHAT" in latency|throughput|idle|restart|all) ;; *) echo "usage: $0 [latency|throughput|idle|restart|all]" >&2; exit 2 ;; esac

# --- prerequisites ---------------------------------------------------------
missing=()
command -v lsyncd >/dev/null || missing+=(lsyncd)
command -v inotifywait >/dev/null || missing+=(inotify-tools)
command -v rsync >/dev/null || missing+=(rsync)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "missing packages: ${missing[*]} (run as root to install them)" >&2; exit 2
  fi
fi
SYNCD=${SYNCD:-${CARGO_TARGET_DIR:-$ROOT/target}/release/syncd}
[ -x "$SYNCD" ] || cargo build --release -q --bin syncd
LOAD=(python3 "$ROOT/benches/live_load.py")
HZ=$(getconf CLK_TCK)

# --- processes ---------------------------------------------------------------
# Every daemon runs in its own process group (setsid), so a stop reaches the
# rsync/inotifywait children of lsyncd and of the loop too, and its CPU time
# can be summed over the group.
GROUPS_STARTED=()
SAMPLER=
cleanup() {
  set +e
  [ -n "$SAMPLER" ] && { kill "$SAMPLER" 2>/dev/null; wait "$SAMPLER" 2>/dev/null; }
  for g in "${GROUPS_STARTED[@]}"; do kill -TERM -- "-$g" 2>/dev/null; done
  for g in "${GROUPS_STARTED[@]}"; do wait "$g" 2>/dev/null; done
  GROUPS_STARTED=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

spawn() { # log, command...: starts it in a new session; sets SPAWNED
  local log=$1; shift
  setsid "$@" >"$log" 2>&1 </dev/null &
  SPAWNED=$!
  GROUPS_STARTED+=("$SPAWNED")
}
forget() { local g n=(); for g in "${GROUPS_STARTED[@]}"; do [ "$g" = "$1" ] || n+=("$g"); done; GROUPS_STARTED=("${n[@]}"); }
alive() { local s; s=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) && [ -n "$s" ] && [ "${s%% *}" != Z ]; }
stop() { # pid [group]: SIGTERM (the process, or its whole group), wait up to 30 s, then SIGKILL
  local p=$1 target=$1 i
  [ "${2:-}" = group ] && target=-$1
  kill -TERM -- "$target" 2>/dev/null || true
  for i in $(seq 300); do alive "$p" || break; sleep 0.1; done
  if alive "$p"; then echo "  ($p did not stop within 30 s of SIGTERM; killing it)" >&2; kill -KILL -- "$target" 2>/dev/null || true; fi
  wait "$p" 2>/dev/null || true
  [ "${2:-}" = group ] && kill -KILL -- "-$1" 2>/dev/null || true
  forget "$p"
}
cpu_of() { "${LOAD[@]}" cpu "$@"; } # pgid...: CPU ticks of the processes in these groups (children they reaped included)
proc_cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
ctxsw() { # pid: "tid switches" per thread (voluntary + involuntary)
  local t
  for t in /proc/"$1"/task/*; do awk -v t="${t##*/}" '/ctxt_switches/ {s += $2} END {print t, s + 0}' "$t/status" 2>/dev/null || true; done
}
ctxsw_delta() { # before after: switches of the threads alive at the end since the first sample (new threads count from 0)
  awk 'NR == FNR {a[$1] = $2; next} {s += $2 - ($1 in a ? a[$1] : 0)} END {print s + 0}' <(echo "$1") <(echo "$2")
}
machine_busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 > 0 && a != "nan") printf "%.3f", a / b; else print "n/a" }'; }
getv() { sed -n 's/^RESULT //p' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }
free_port() { python3 -c 'import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM if sys.argv[1]=="udp" else socket.SOCK_STREAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' "$1"; }
wait_for_line() { # file pattern timeout_s
  local i
  for i in $(seq $(( $3 * 20 ))); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
  echo "'$2' not in $1 after $3 s:" >&2; tail -20 "$1" >&2; return 1
}
log_problems() { # label logfile: counts WARN/ERROR lines, shows the most frequent (colours and timestamps stripped)
  local n pat='(^|[^A-Za-z])(WARN|ERROR|Error|error)([^A-Za-z]|$)'
  n=$(grep -cE "$pat" "$2" 2>/dev/null || true)
  if [ "${n:-0}" -gt 0 ]; then
    echo "  $1: $n warning/error lines in $2, most frequent:"
    grep -E "$pat" "$2" | sed -E 's/\x1b\[[0-9;]*m//g; s/^[0-9]{4}-[0-9-]+T[0-9:.]+Z +//; s/^[A-Z][a-z]{2} [A-Z][a-z]{2} +[0-9]+ [0-9:]+ [0-9]{4} //' \
      | sort | uniq -c | sort -rn | head -5 | cut -c1-300 | sed 's/^/    /'
  fi
}

# --- directories ---------------------------------------------------------------
# Without a journal, ext4 reads the deletion time of every candidate inode for
# 60 s after the deletes reach the disk, which slows whoever creates files next.
# So earlier runs' trees are removed here, before anything is measured, then
# a pause long enough for that window to pass.
mkdir -p "$DIR"
RUNS=$DIR/runs
if [ -d "$RUNS" ] && [ -n "$(ls -A "$RUNS" 2>/dev/null)" ]; then
  echo "removing earlier runs' trees, then waiting 65 s (ext4 recently-deleted window)" >&2
  rm -rf "$RUNS"; sync; sleep 65
fi
mkdir -p "$RUNS"
[ -f "$DIR/keys/p/node.crt" ] || { "$SYNCD" keygen --out "$DIR/keys/p" --name primary >/dev/null; "$SYNCD" keygen --out "$DIR/keys/s" --name standby >/dev/null; }

# --- syncd -------------------------------------------------------------------
setup_syncd() { # base: writes base/{primary,standby}.toml for base/src -> base/dst
  local b=$1 port admin sadmin
  port=$(free_port udp); admin=$(free_port tcp); sadmin=$(free_port tcp)
  cat > "$b/standby.toml" <<EOF
node_id = "standby"
export = "$b/dst"
state_dir = "$b/dst.state"
listen = "127.0.0.1:$port"
admin = "127.0.0.1:$sadmin"
cert = "$DIR/keys/s/node.crt"
key = "$DIR/keys/s/node.key"
peer_cert = "$DIR/keys/p/node.crt"
[sync]
durable = $DURABLE
$SYNC_EXTRA
EOF
  cat > "$b/primary.toml" <<EOF
node_id = "primary"
export = "$b/src"
state_dir = "$b/src.state"
peer = "127.0.0.1:$port"
admin = "127.0.0.1:$admin"
cert = "$DIR/keys/p/node.crt"
key = "$DIR/keys/p/node.key"
peer_cert = "$DIR/keys/s/node.crt"
[sync]
durable = $DURABLE
$SYNC_EXTRA
EOF
}
start_syncd() { # base [logsuffix]: standby, then primary; waits until the primary is live
  local b=$1 sfx=${2:-}
  spawn "$b/standby$sfx.log" "$SYNCD" --role standby --config "$b/standby.toml"; SB_PID=$SPAWNED
  wait_for_line "$b/standby$sfx.log" "standby listening" 30
  spawn "$b/primary$sfx.log" "$SYNCD" --role primary --config "$b/primary.toml"; PR_PID=$SPAWNED
}
wait_syncd_live() { wait_for_line "$1/primary${2:-}.log" "in sync; following changes" "${3:-600}"; }
stop_syncd() { stop "$PR_PID"; stop "$SB_PID"; }
status_field() { # base, awk program over `syncd status`
  "$SYNCD" status --config "$1/primary.toml" 2>/dev/null | awk "$2"
}
wait_drained() { # base timeout: until queue depth 0 and lag 0 operations
  local i
  for i in $(seq $(( $2 * 5 ))); do
    [ "$(status_field "$1" '/^queue depth:/ {q=$3} /^lag:/ {o=$2} END {print q + o}')" = 0 ] && return 0
    sleep 0.2
  done
  return 1
}
start_sampler() { # base out: `syncd status` every second
  local b=$1 out=$2
  (
    while :; do
      printf '%s ' "$(date +%s.%N)"
      "$SYNCD" status --config "$b/primary.toml" 2>/dev/null | awk '/^queue depth:/ {q=$3} /^lag:/ {o=$2; by=$4; s=$6} END {print q + 0, o + 0, by + 0, s + 0}'
      sleep 1
    done
  ) >"$out" 2>/dev/null &
  SAMPLER=$!
}
stop_sampler() { [ -n "$SAMPLER" ] && { kill "$SAMPLER" 2>/dev/null || true; wait "$SAMPLER" 2>/dev/null || true; }; SAMPLER=; }
sampler_max() { awk 'BEGIN {q=0; o=0; s=0} {if ($2>q) q=$2; if ($3>o) o=$3; if ($5>s) s=$5} END {printf "max queue %d, max lag %d ops / %.3f s", q, o, s}' "$1"; }

# --- lsyncd and the loop -------------------------------------------------------
start_lsyncd() { # base
  local b=$1
  cat > "$b/lsyncd.lua" <<EOF
settings {
  nodaemon = true,
  logfile = "$b/lsyncd.log",
  statusFile = "$b/lsyncd.status",
  statusInterval = 10,
}
sync {
  default.rsync,
  source = "$b/src",
  target = "$b/dst",
  delay = 1,
}
EOF
  spawn "$b/lsyncd.out" lsyncd "$b/lsyncd.lua"; TOOL_PID=$SPAWNED
}
start_loop() { # base: the classic loop, after the initial copy it needs
  local b=$1
  rsync -a --delete "$b/src/" "$b/dst/"
  spawn "$b/loop.log" bash -c 'inotifywait -mrq -e close_write,create,delete,move "$1" | while read -r _; do rsync -a --delete "$1/" "$2/"; done' loop "$b/src" "$b/dst"
  TOOL_PID=$SPAWNED
  sleep 0.5 # inotifywait -r sets its watches
}
probe() { # base: a file written on the source must show up (the tool is live)
  local ms
  ms=$("${LOAD[@]}" probe --src "$1/src" --dst "$1/dst" --timeout 120) || { echo "the replicator in $1 is not live" >&2; return 1; }
  echo "$ms"
}

# --- 1. latency ----------------------------------------------------------------
declare -A L
latency_one() { # tool
  local tool=$1 b=$RUNS/latency-$1 c0 c1 m0 m1 pms
  mkdir -p "$b/src" "$b/dst"
  "${LOAD[@]}" prep --src "$b/src"
  sync
  case $tool in
    syncd) setup_syncd "$b"; start_syncd "$b"; wait_syncd_live "$b"; TOOL_PID="$PR_PID $SB_PID" ;;
    lsyncd) start_lsyncd "$b" ;;
    loop) start_loop "$b" ;;
  esac
  pms=$(probe "$b")
  echo "  $tool: live (probe file arrived in $pms ms); ${RATE}/s for ${LOAD_SECONDS} s ..." >&2
  [ "$tool" = syncd ] && start_sampler "$b" "$b/status.samples"
  c0=0; for p in $TOOL_PID; do c0=$((c0 + $(cpu_of "$p"))); done
  m0=$(machine_busy)
  "${LOAD[@]}" load --src "$b/src" --dst "$b/dst" --rate "$RATE" --seconds "$LOAD_SECONDS" --grace "$GRACE" \
    --label "$tool" --tsv "$b/latency.tsv" >"$b/result.txt"
  m1=$(machine_busy)
  c1=0; for p in $TOOL_PID; do c1=$((c1 + $(cpu_of "$p"))); done
  L[$tool.cpu]=$(awk -v a="$c0" -v b="$c1" -v hz="$HZ" 'BEGIN {printf "%.1f", (b - a) / hz}')
  L[$tool.busy]=$(awk -v a="$m0" -v b="$m1" 'BEGIN {split(a, x, " "); split(b, y, " "); if (y[2] > x[2]) printf "%.0f", 100 * (y[1] - x[1]) / (y[2] - x[2]); else print "?"}')
  for k in p50_ms p99_ms max_ms arrived missing files achieved max_late_ms by_sweep overflows bad_content p50_thirds_ms drain_s; do L[$tool.$k]=$(getv "$b/result.txt" $k); done
  if [ "$tool" = syncd ]; then
    stop_sampler
    L[syncd.status]=$(sampler_max "$b/status.samples")
    if "$SYNCD" verify --config "$b/primary.toml" >"$b/verify.txt" 2>&1; then L[syncd.verify]=equal; else L[syncd.verify]="DIFFERENT (see $b/verify.txt)"; fi
    status_field "$b" '1' >"$b/status.txt"
    stop_syncd
  else
    stop "$TOOL_PID" group
  fi
}
latency() {
  echo "== 1. change->replica latency: ${RATE} new 1 KiB files/s for ${LOAD_SECONDS} s (syncd durable=$DURABLE) =="
  local t
  for t in $TOOLS; do latency_one "$t"; done
  printf '%-7s %9s %9s %9s %8s %8s %8s %8s %6s  %s\n' tool p50_ms p99_ms max_ms files missing achieved cpu_s busy% "p50 by third (ms)"
  for t in $TOOLS; do
    printf '%-7s %9s %9s %9s %8s %8s %8s %8s %6s  %s\n' "$t" "${L[$t.p50_ms]}" "${L[$t.p99_ms]}" "${L[$t.max_ms]}" "${L[$t.files]}" "${L[$t.missing]}" "${L[$t.achieved]}" "${L[$t.cpu]}" "${L[$t.busy]}" "${L[$t.p50_thirds_ms]}"
  done
  for t in $TOOLS; do
    [ "${L[$t.by_sweep]}${L[$t.overflows]}${L[$t.bad_content]}" = 000 ] || echo "  $t: ${L[$t.by_sweep]} found by the slow sweep, ${L[$t.overflows]} meter inotify overflows, ${L[$t.bad_content]} with wrong content"
    [ "${L[$t.missing]}" = 0 ] || echo "  $t: ${L[$t.missing]} files never arrived within ${GRACE} s after the last write"
  done
  if [[ " $TOOLS " == *" syncd "* ]]; then
    local ok="met"
    awk -v p="${L[syncd.p99_ms]}" 'BEGIN {exit !(p <= 50)}' && [ "${L[syncd.missing]}" = 0 ] || ok="MISSED"
    echo "syncd p99 ${L[syncd.p99_ms]} ms (target <= 50 ms: $ok); syncd status during the run: ${L[syncd.status]}; verify after: ${L[syncd.verify]}"
    [[ " $TOOLS " == *" lsyncd "* ]] && echo "p99 ratio syncd/lsyncd: $(ratio "${L[syncd.p99_ms]}" "${L[lsyncd.p99_ms]}")   (p50 ratio $(ratio "${L[syncd.p50_ms]}" "${L[lsyncd.p50_ms]}"))"
    [[ " $TOOLS " == *" loop "* ]] && echo "p99 ratio syncd/loop:   $(ratio "${L[syncd.p99_ms]}" "${L[loop.p99_ms]}")   (p50 ratio $(ratio "${L[syncd.p50_ms]}" "${L[loop.p50_ms]}"))"
  fi
  for t in $TOOLS; do
    case $t in
      syncd) log_problems "syncd primary" "$RUNS/latency-syncd/primary.log"; log_problems "syncd standby" "$RUNS/latency-syncd/standby.log" ;;
      lsyncd) log_problems lsyncd "$RUNS/latency-lsyncd/lsyncd.log" ;;
      loop) log_problems loop "$RUNS/latency-loop/loop.log" ;;
    esac
  done
  echo "  (cpu_s: CPU seconds of the replicator's processes during the load, both daemons for syncd, rsync children included; busy%: whole machine, $(nproc) cores, load generator included)"
}

# --- 2. throughput --------------------------------------------------------------
throughput() {
  echo "== 2. sustained small-file changes/s (syncd durable=$DURABLE): ${STEP_SECONDS} s per rate; bounded = all arrive, p99 < ${LAG_BOUND_MS} ms, writer keeps the rate =="
  local b=$RUNS/throughput r ok=0 bad=0
  mkdir -p "$b/src" "$b/dst"
  "${LOAD[@]}" prep --src "$b/src"
  setup_syncd "$b"; start_syncd "$b"; wait_syncd_live "$b"; probe "$b" >/dev/null
  printf '%8s %9s %9s %9s %9s %8s %8s  %-18s %s\n' rate achieved p50_ms p99_ms max_ms missing cpu_s "p50 by third" "syncd status (1 s samples)"
  step() { # rate: sets STEP_OK
    local r=$1 res=$b/step-$1.txt c0 c1 ach p99 miss verdict
    start_sampler "$b" "$b/status-$r.samples"
    c0=$(( $(cpu_of "$PR_PID") + $(cpu_of "$SB_PID") ))
    "${LOAD[@]}" load --src "$b/src" --dst "$b/dst" --rate "$r" --seconds "$STEP_SECONDS" --grace "$GRACE" \
      --tag "r$r" --label "r$r" --tsv "$b/latency-$r.tsv" >"$res" 2>"$b/step-$r.log"
    c1=$(( $(cpu_of "$PR_PID") + $(cpu_of "$SB_PID") ))
    stop_sampler
    ach=$(getv "$res" achieved); p99=$(getv "$res" p99_ms); miss=$(getv "$res" missing)
    STEP_OK=0; verdict="unbounded"
    if awk -v a="$ach" -v r="$r" 'BEGIN {exit !(a >= 0.95 * r)}'; then
      awk -v p="$p99" -v m="$LAG_BOUND_MS" 'BEGIN {exit !(p < m)}' && [ "$miss" = 0 ] && { STEP_OK=1; verdict="bounded"; }
    else
      STEP_OK=2; verdict="generator could not keep the rate"
    fi
    printf '%8s %9s %9s %9s %9s %8s %8s  %-18s %s -> %s\n' "$r" "$ach" "$(getv "$res" p50_ms)" "$p99" "$(getv "$res" max_ms)" "$miss" \
      "$(awk -v a="$c0" -v b="$c1" -v hz="$HZ" 'BEGIN {printf "%.1f", (b - a) / hz}')" "$(getv "$res" p50_thirds_ms)" "$(sampler_max "$b/status-$r.samples")" "$verdict"
    wait_drained "$b" 300 || echo "  (syncd still not drained 300 s after the r$r step)"
  }
  for r in $RATES; do
    step "$r"
    case $STEP_OK in
      1) ok=$r ;;
      *) bad=$r; break ;;
    esac
  done
  if [ "$bad" != 0 ] && [ "$STEP_OK" = 0 ] && [ "$ok" != 0 ]; then
    local i lo=$ok hi=$bad mid
    for i in $(seq "$BISECT"); do
      mid=$(( (lo + hi) / 2 ))
      [ $((hi - lo)) -le $((lo / 10)) ] && break
      step "$mid"
      if [ "$STEP_OK" = 1 ]; then lo=$mid; elif [ "$STEP_OK" = 0 ]; then hi=$mid; else break; fi
    done
    ok=$lo; bad=$hi
  fi
  if [ "$ok" = 0 ]; then echo "sustained: below the lowest rate tried"
  elif [ "$bad" = 0 ]; then echo "sustained: at least ${ok}/s (every rate tried was bounded)"
  else echo "sustained: ${ok}/s bounded, ${bad}/s not ($([ "$STEP_OK" = 2 ] && echo "the load generator could not keep that rate" || echo "lag grew"))"; fi
  stop_syncd
  log_problems "syncd primary" "$b/primary.log"; log_problems "syncd standby" "$b/standby.log"
}

# --- 3. idle, 4. restart ---------------------------------------------------------
BIG=
big_pair() { # FILES tree synced once per run; both daemons running
  [ -n "$BIG" ] && return
  BIG=$RUNS/tree
  mkdir -p "$BIG/src" "$BIG/dst"
  local t0 t1
  t0=$(now)
  "${LOAD[@]}" gen --dir "$BIG/src" --files "$FILES"
  sync
  t1=$(now)
  echo "  generated $FILES x 1 KiB files in $(secs "$t0" "$t1") s" >&2
  setup_syncd "$BIG"
  t0=$(now)
  start_syncd "$BIG"; wait_syncd_live "$BIG" "" 3600
  t1=$(now)
  wait_drained "$BIG" 600 || true
  echo "  initial sync by the primary's start-up reconcile: $(secs "$t0" "$t1") s" >&2
}
idle() {
  echo "== 3. idle daemons on an in-sync ${FILES}-file tree (${IDLE_SECONDS} s; durable=$DURABLE) =="
  big_pair
  sleep 5; sync; sleep 2
  local p0 s0 p1 s1 pc0 sc0 pc1 sc1
  p0=$(proc_cpu_ticks "$PR_PID"); s0=$(proc_cpu_ticks "$SB_PID"); pc0=$(ctxsw "$PR_PID"); sc0=$(ctxsw "$SB_PID")
  sleep "$IDLE_SECONDS"
  p1=$(proc_cpu_ticks "$PR_PID"); s1=$(proc_cpu_ticks "$SB_PID"); pc1=$(ctxsw "$PR_PID"); sc1=$(ctxsw "$SB_PID")
  local side pid c0 c1 x0 x1
  for side in primary standby; do
    if [ $side = primary ]; then pid=$PR_PID c0=$p0 c1=$p1 x0=$pc0 x1=$pc1; else pid=$SB_PID c0=$s0 c1=$s1 x0=$sc0 x1=$sc1; fi
    awk -v a="$c0" -v b="$c1" -v hz="$HZ" -v s="$IDLE_SECONDS" -v side="$side" -v x0=0 -v x1="$(ctxsw_delta "$x0" "$x1")" \
        -v rss="$(awk '/VmRSS/ {print $2}' /proc/$pid/status)" -v hwm="$(awk '/VmHWM/ {print $2}' /proc/$pid/status)" \
        -v thr="$(awk '/Threads/ {print $2}' /proc/$pid/status)" \
      'BEGIN {printf "%-8s CPU %.2f s in %d s (%.2f%% of a core), %.1f context switches/s; RSS %.1f MiB (peak %.1f MiB), %d threads\n", side, (b - a) / hz, s, 100 * (b - a) / hz / s, (x1 - x0) / s, rss / 1024, hwm / 1024, thr}'
  done
  local t0 t1
  t0=$(now)
  if "$SYNCD" verify --config "$BIG/primary.toml" >"$BIG/verify.txt" 2>&1; then echo "  verify: equal ($(secs "$t0" "$(now)") s)"; else echo "  verify: DIFFERENT (see $BIG/verify.txt)"; fi
}
restart() {
  echo "== 4. restart of both daemons on an in-sync ${FILES}-file tree (durable=$DURABLE) =="
  big_pair
  local t0 t1 t2 res=$BIG/restart.txt
  t0=$(now); stop "$PR_PID"; t1=$(now); stop "$SB_PID"; t2=$(now)
  echo "  SIGTERM: primary stopped in $(secs "$t0" "$t1") s, standby in $(secs "$t1" "$t2") s"
  if [ "$RESTART_COLD" = 1 ]; then sync; echo 3 > /proc/sys/vm/drop_caches; echo "  page cache dropped (cold restart)"; fi
  t0=$(now)
  start_syncd "$BIG" .restart
  "${LOAD[@]}" waitlive --log "$BIG/primary.restart.log" --pattern "in sync; following changes" --src "$BIG/src" --dst "$BIG/dst" --t0 "$t0" --timeout 600 >"$res"
  echo "  live again after $(getv "$res" live_s) s: primary \"in sync; following changes\" after $(getv "$res" sync_s) s, then a new file on the standby in $(getv "$res" probe_ms) ms"
  "$SYNCD" status --config "$BIG/primary.toml" 2>/dev/null | grep -E '^(full_reconciles|files_sent_whole|files_sent_delta|deletes):' | tr '\n' ' ' | sed 's/^/  counters since the restart: /; s/ $/\n/'
  stop_syncd
  log_problems "syncd primary (restart)" "$BIG/primary.restart.log"; log_problems "syncd standby (restart)" "$BIG/standby.restart.log"
  log_problems "syncd primary" "$BIG/primary.log"; log_problems "syncd standby" "$BIG/standby.log"
}

echo "syncd $("$SYNCD" --version | awk '{print $2}'), $(lsyncd --version 2>&1 | head -1 | sed 's/Version: /lsyncd /'), $(rsync --version | head -1 | awk '{print $1, $3}'), inotify-tools $(dpkg-query -W -f '${Version}' inotify-tools 2>/dev/null); $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); $DIR"
case "$WHAT" in
  latency) latency ;;
  throughput) throughput ;;
  idle) idle; stop_syncd ;;
  restart) restart ;;
  all) latency; throughput; idle; restart ;;
esac
