#!/usr/bin/env bash
# Fuzz the parsers: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Runs each target (default: all of fuzz/fuzz_targets/) for SECONDS (default
# 60) with cargo-fuzz on the nightly toolchain (debug assertions on), one at
# a time, starting from the committed corpus fuzz/corpus/TARGET. New inputs
# go to a scratch directory, then the committed corpus is replaced by the
# libFuzzer -merge=1 minimisation of both (only inputs that add coverage).
# Crashes are left in fuzz/artifacts/TARGET/ (never commit them: reproduce
# in a unit test of the library, fix, and add the input to the corpus).
#
# Prints per target: runs, corpus size, crashes; and adds the seconds, runs
# and crashes to the table in fuzz/README.md.
#
# Environment: CARGO_TARGET_DIR (default /work/target-fuzz if /work exists,
# else fuzz/target), FUZZ_JOBS (cargo build jobs), FUZZ_ARGS (extra
# libFuzzer flags, e.g. "-rss_limit_mb=1024").
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)

secs=${1:-60}
shift || true
if ! [[ $secs =~ ^[0-9]+$ ]]; then
    echo "usage: $0 [SECONDS_PER_TARGET] [TARGET...]" >&2
    exit 2
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz not found; installing it" >&2
    cargo install cargo-fuzz
fi
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "the nightly toolchain is needed: rustup toolchain install nightly" >&2
    exit 1
fi

if [[ -z ${CARGO_TARGET_DIR:-} ]]; then
    if [[ -d /work ]]; then
        export CARGO_TARGET_DIR=/work/target-fuzz
    else
        export CARGO_TARGET_DIR=$root/fuzz/target
    fi
fi

if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    targets=()
    for f in fuzz/fuzz_targets/*.rs; do
        targets+=("$(basename "$f" .rs)")
    done
fi

jobs=()
[[ -n ${FUZZ_JOBS:-} ]] && jobs=(--jobs "$FUZZ_JOBS")
if [[ ${#targets[@]} -eq 1 ]]; then
    cargo +nightly fuzz build -a "${jobs[@]}" "${targets[0]}"
else
    cargo +nightly fuzz build -a "${jobs[@]}"
fi

readme=fuzz/README.md
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

printf '%-20s %8s %12s %8s %8s\n' target seconds runs corpus crashes
for t in "${targets[@]}"; do
    if [[ ! -f fuzz/fuzz_targets/$t.rs ]]; then
        echo "$t: no such target (see fuzz/fuzz_targets/)" >&2
        exit 2
    fi
    corpus=fuzz/corpus/$t
    new=$scratch/$t-new
    merged=$scratch/$t-merged
    mkdir -p "$corpus" "$new" "$merged" "fuzz/artifacts/$t"
    before=$(find "fuzz/artifacts/$t" -type f | wc -l)
    log=$scratch/$t.log
    # New inputs land in $new (the first directory); $corpus is read.
    start=$SECONDS
    set +e
    # shellcheck disable=SC2086
    cargo +nightly fuzz run -a "$t" "$new" "$corpus" -- \
        -max_total_time="$secs" -timeout=10 -print_final_stats=1 ${FUZZ_ARGS:-} >"$log" 2>&1
    rc=$?
    set -e
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    runs=${runs:-0}
    took=$((SECONDS - start))
    after=$(find "fuzz/artifacts/$t" -type f | wc -l)
    crashes=$((after - before))
    if [[ $rc -ne 0 && $crashes -eq 0 ]]; then
        echo "$t: cargo fuzz failed (exit $rc):" >&2
        tail -30 "$log" >&2
        crashes=1
    fi
    # Minimise: keep only what adds coverage, from the old corpus and the new inputs.
    if cargo +nightly fuzz run -a "$t" "$merged" "$corpus" "$new" -- -merge=1 \
        >"$scratch/$t.merge.log" 2>&1 && [[ -n $(ls -A "$merged") ]]; then
        rm -rf "$corpus"
        mv "$merged" "$corpus"
    else
        echo "$t: merge failed, corpus left as is" >&2
    fi
    size=$(find "$corpus" -type f | wc -l)
    printf '%-20s %8s %12s %8s %8s\n' "$t" "$took" "$runs" "$size" "$crashes"
    if [[ $crashes -gt 0 ]]; then
        grep -m1 -A3 -E '^==[0-9]+==|panicked at' "$log" >&2 || true
        ls "fuzz/artifacts/$t" >&2
    fi

    # Add to the README table: | target | seconds | execs | crashes |
    if [[ -f $readme ]]; then
        awk -v t="$t" -v s="$took" -v r="$runs" -v c="$crashes" '
            BEGIN { FS = "|"; done = 0 }
            $2 ~ "^ *`?" t "`? *$" && NF >= 6 {
                printf "| `%s` | %.0f | %.0f | %.0f |\n", t, $3 + s, $4 + r, $5 + c
                done = 1; next
            }
            /<!-- end of totals -->/ && !done {
                printf "| `%s` | %.0f | %.0f | %.0f |\n", t, s, r, c
                done = 1
            }
            { print }
        ' "$readme" >"$scratch/readme" && cat "$scratch/readme" >"$readme"
    fi
done
