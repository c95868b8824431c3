#!/usr/bin/env bash
# The whole-tree walk alone: syncd's listing of a tree (what each side of a
# restart, `verify --quick` and every full compare makes) on all cores,
# on all cores adding an inotify watch for each directory before reading
# it (the primary's walk at a start), and on one core (`taskset -c 0`),
# beside rsync's own listing of the same tree
# (`rsync -a --list-only`, single-threaded by design), ROUNDS rounds, the
# order rotating, `sync` before each timed run. Prints every round, the
# medians and the ratios.
#
#   benches/walk.sh            (FILES, default 1,000,000, in FILES/10
#                               directories: FILES/1000 top directories of
#                               100; ROUNDS, default 7; DIR=an existing tree
#                               to walk instead; COLD=1 drops the page and
#                               inode caches before each run; KEEP=1 keeps
#                               the generated tree)
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=${FILES:-1000000}; ROUNDS=${ROUNDS:-7}; COLD=${COLD:-0}; KEEP=${KEEP:-0}
BENCH_DIR=${BENCH_DIR:-/tmp/syncd-walk-bench}
WALK=$(cargo bench --bench walk --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "walk" and m.get("executable"):
        print(m["executable"])')
[ -x "$WALK" ] || { echo "could not build the walk bench" >&2; exit 1; }
if [ -n "${DIR:-}" ]; then
  TREE=$DIR
else
  TREE=$BENCH_DIR/tree
  if [ "$(cat "$BENCH_DIR/.done" 2>/dev/null)" != "$FILES" ]; then
    rm -rf "$BENCH_DIR"; mkdir -p "$TREE"
    python3 - "$TREE" "$FILES" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, "t%04d" % (i // 1000), "d%03d" % (i // 10 % 100))
    if i % 10 == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%07d" % i), "w") as f:
        f.write("%d\n" % i)
PY
    echo "$FILES" > "$BENCH_DIR/.done"
  fi
  [ "$KEEP" = 1 ] || trap 'rm -rf "$BENCH_DIR"' EXIT
fi
prepare() { sync; if [ "$COLD" = 1 ]; then echo 3 > /proc/sys/vm/drop_caches; fi; }
now() { date +%s.%N; }
run() { # name -> seconds on stdout
  local t0 t1
  prepare
  case $1 in
    all) "$WALK" "$TREE" | awk '{print $1}' ;;
    watching) WATCH=1 "$WALK" "$TREE" | awk '{print $1}' ;;
    one) taskset -c 0 "$WALK" "$TREE" | awk '{print $1}' ;;
    rsync) t0=$(now); rsync -a --list-only "$TREE/" >/dev/null; t1=$(now)
           echo "$t1 - $t0" | bc -l | xargs printf '%.3f\n' ;;
  esac
}
echo "== walk of $TREE ($("$WALK" "$TREE" | awk '{print $2}') entries) | $(nproc) cores | cold=$COLD | load $(cut -d' ' -f1-3 /proc/loadavg) | $(date -u +%FT%TZ)"
ORDER=(all watching one rsync)
declare -A T=([all]="" [watching]="" [one]="" [rsync]="")
for r in $(seq 1 "$ROUNDS"); do
  line="round $r:"
  for k in 0 1 2 3; do
    name=${ORDER[$(( (r + k) % 4 ))]}
    s=$(run "$name"); T[$name]+="$s "
    line+=" $name $s"
  done
  echo "$line (load $(cut -d' ' -f1 /proc/loadavg))"
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ma=$(echo "${T[all]}" | median); mw=$(echo "${T[watching]}" | median); mo=$(echo "${T[one]}" | median); mr=$(echo "${T[rsync]}" | median)
echo "syncd, all cores: ${T[all]}-> median $ma s"
echo "syncd, all cores, watching each directory (the primary's walk): ${T[watching]}-> median $mw s"
echo "syncd, one core:  ${T[one]}-> median $mo s"
echo "rsync --list-only: ${T[rsync]}-> median $mr s"
printf 'median ratios: all cores / one core %.2fx, syncd (all cores) / rsync %.2fx, watching / rsync %.2fx, syncd (one core) / rsync %.2fx\n' \
  "$(echo "$ma / $mo" | bc -l)" "$(echo "$ma / $mr" | bc -l)" "$(echo "$mw / $mr" | bc -l)" "$(echo "$mo / $mr" | bc -l)"
