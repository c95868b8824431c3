#!/usr/bin/env bash
# Benchmark harness: wrk against syncd-proxy and against nginx, configured
# equivalently (same worker count, keep-alive upstream pool, no access log),
# in front of the same three nginx backends on loopback.
#
# Usage: benches/proxy_wrk.sh   (env: WORKERS=1 CONNS=64 DURATION=10 THREADS=1 ROUNDS=9
#                                               PROXY_BIN=path/to/syncd-proxy
#                                               PROXY_BIN_B=another/syncd-proxy  (e.g. the previous
#                                                 build: runs as "syncd-proxy-B" in the same rounds)
#                                               PERF_OUT=file.data  (perf record -g of syncd-proxy
#                                                 during one extra run; prints the top symbols)
#                                               STRACE=1  (strace -c -f of each proxy during one
#                                                 extra run: system calls per request, by name)
#                                               PROFILE_RATE=1  (the PERF_OUT and STRACE runs at the
#                                                 fixed rate below instead of closed-loop))
#        RATE_ROUNDS=ROUNDS RATE_DELAY_MS=8  (fixed-rate rounds: each connection
#                                               waits RATE_DELAY_MS between requests; 0 rounds skips them)
# Runs ROUNDS rounds of one wrk run per proxy, the order flipping every round
# (ABBA), and prints per round req/s, p50, p99, CPU time per request, each
# worker's CPU share and the same-round syncd/nginx ratios of p99 and req/s;
# then medians and the median/best/worst same-round p99 ratio (on a shared
# machine only same-round ratios compare). The same again at a fixed rate
# well under capacity (p99 without the queueing of an overload). Then a
# failover run in which one of the three backends is killed (SIGKILL) and
# restarted during the load, reporting client-visible errors for both proxies.
#
# Not a test: numbers depend on the machine. All traffic stays on 127.0.0.1.
set -euo pipefail

WORKERS=${WORKERS:-1}
CONNS=${CONNS:-64}
DURATION=${DURATION:-10}
THREADS=${THREADS:-1}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/syncd-proxy-bench.XXXXXX)
PIDS=()

cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

command -v wrk >/dev/null || { echo "wrk not found (apt-get install wrk)"; exit 1; }
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || { echo "nginx not found (apt-get install nginx)"; exit 1; }

if [ -z "${PROXY_BIN:-}" ]; then
    TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
    (cd "$ROOT" && cargo build --release -q -p syncd-proxy)
    PROXY_BIN=$TARGET/release/syncd-proxy
fi

BE_PORTS=(18101 18102 18103)
SP_PORT=18080; NX_PORT=18081; ADMIN_PORT=18090
BE_PIDS=()

start_backend() { # index
    local i=$1 port=${BE_PORTS[$1]}
    mkdir -p "$WORK/be$i"
    cat > "$WORK/be$i/nginx.conf" <<CONF
daemon off;
master_process off;
worker_processes 1;
pid $WORK/be$i/nginx.pid;
error_log $WORK/be$i/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000;
    server {
        listen 127.0.0.1:$port reuseport;
        location / { return 200 "backend $i: hello from a small static response\n"; }
    }
}
CONF
    "$NGINX" -c "$WORK/be$i/nginx.conf" -p "$WORK/be$i" &
    BE_PIDS[$i]=$!
    PIDS+=($!)
}

wait_port() { # port
    for _ in $(seq 100); do
        (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "port $1 did not open"; exit 1
}

for i in 0 1 2; do start_backend $i; done
for p in "${BE_PORTS[@]}"; do wait_port "$p"; done

# ---- syncd-proxy
cat > "$WORK/proxy.toml" <<CONF
[global]
workers = $WORKERS
access_log = false
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
[[listener]]
listen = "127.0.0.1:$SP_PORT"
upstream = "web"
[[upstream]]
name = "web"
keepalive = 64
keepalive_timeout = "60s"
[[upstream.server]]
addr = "127.0.0.1:${BE_PORTS[0]}"
[[upstream.server]]
addr = "127.0.0.1:${BE_PORTS[1]}"
[[upstream.server]]
addr = "127.0.0.1:${BE_PORTS[2]}"
CONF
SYNCD_PROXY_LOG=warn "$PROXY_BIN" --config "$WORK/proxy.toml" 2>"$WORK/proxy.log" &
SP_PID=$!
PIDS+=($!)
SB_PORT=18082; SB_PID=
WHO="sp nx"
if [ -n "${PROXY_BIN_B:-}" ]; then
    sed -e "s/127.0.0.1:$SP_PORT/127.0.0.1:$SB_PORT/" -e "s/127.0.0.1:$ADMIN_PORT/127.0.0.1:$((ADMIN_PORT + 1))/" \
        "$WORK/proxy.toml" > "$WORK/proxy-b.toml"
    SYNCD_PROXY_LOG=warn "$PROXY_BIN_B" --config "$WORK/proxy-b.toml" 2>"$WORK/proxy-b.log" &
    SB_PID=$!
    PIDS+=($!)
    WHO="sp sb nx"
fi

# ---- nginx, configured the same way
mkdir -p "$WORK/nx"
cat > "$WORK/nx/nginx.conf" <<CONF
daemon off;
worker_processes $WORKERS;
pid $WORK/nx/nginx.pid;
error_log $WORK/nx/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    upstream web {
        server 127.0.0.1:${BE_PORTS[0]};
        server 127.0.0.1:${BE_PORTS[1]};
        server 127.0.0.1:${BE_PORTS[2]};
        keepalive 64;
        keepalive_timeout 60s;
    }
    server {
        listen 127.0.0.1:$NX_PORT;
        keepalive_requests 100000;
        location / {
            proxy_pass http://web;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Real-IP \$remote_addr;
            proxy_set_header X-Forwarded-Proto \$scheme;
        }
    }
}
CONF
"$NGINX" -c "$WORK/nx/nginx.conf" -p "$WORK/nx" &
NX_PID=$!
PIDS+=($!)
wait_port $SP_PORT; wait_port $NX_PORT
[ -z "$SB_PID" ] || wait_port $SB_PORT
label() { case $1 in sp) echo syncd-proxy ;; sb) echo syncd-proxy-B ;; *) echo nginx ;; esac; }

run_wrk() { # port outfile [extra wrk args...]
    local port=$1 out=$2
    shift 2
    wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency "$@" "http://127.0.0.1:$port/" > "$out" 2>&1 || true
}

# wrk prints latencies as 1.23ms / 456.78us / 1.02s: convert to ms
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v; sub(/[a-z]+$/, "", n); u = v; sub(/^[0-9.]+/, "", u);
        if (u == "us") n = n / 1000; else if (u == "s") n = n * 1000; else if (u == "m") n = n * 60000;
        printf "%.3f\n", n }'
}
rps()   { awk '/^Requests\/sec/ {print $2}' "$1"; }
pct()   { to_ms "$(awk -v p="$2" '$1 == p {print $2}' "$1")"; }
errs()  {
    local non2xx sock
    non2xx=$(awk '/Non-2xx/ {print $NF}' "$1"); non2xx=${non2xx:-0}
    sock=$(awk '/Socket errors/ {gsub(",", ""); print $4 + $6 + $8 + $10}' "$1"); sock=${sock:-0}
    echo "non-2xx=$non2xx socket-errors=$sock"
}

# CPU time "user sys" (clock ticks) of a process and its children (nginx workers)
cpu_ticks() {
    local u=0 s=0 p pu ps_
    for p in "$1" $(ps -o pid= --ppid "$1" 2>/dev/null); do
        read -r pu ps_ < <(awk '{print $14, $15}' /proc/"$p"/stat 2>/dev/null || echo "0 0")
        u=$((u + pu)); s=$((s + ps_))
    done
    echo "$u $s"
}
requests() { awk '/requests in/ {print $1}' "$1"; }
# CPU ticks (user+sys) of each worker: syncd-proxy's worker threads, or
# nginx's worker processes; one line "t1 t2 ..." (how evenly the
# connections, and so the load, are spread over the workers)
worker_ticks() { # pid
    local t
    if [ -d /proc/"$1"/task ] && grep -q syncd-proxy-w /proc/"$1"/task/*/comm 2>/dev/null; then
        for t in /proc/"$1"/task/*; do
            grep -q '^syncd-proxy-w' "$t/comm" 2>/dev/null && awk '{printf "%d ", $14 + $15}' "$t/stat"
        done
    else
        for t in $(ps -o pid= --ppid "$1" 2>/dev/null); do awk '{printf "%d ", $14 + $15}' /proc/"$t"/stat; done
    fi
    echo
}
# client connections per worker, sampled once during a run: syncd-proxy's
# per thread (the sockets registered in each worker runtime's epoll set),
# nginx's per worker process; one line "n1/n2/...". With a closed loop the
# worker holding more connections gives each of them less CPU, so an
# uneven split lengthens the tail even when the workers' CPU shares are even.
conn_split() { # pid port
    local fds e
    fds=$(ss -tnpH state established "( sport = :$2 )" 2>/dev/null | grep -o "pid=[0-9]*,fd=[0-9]*" | sort -u)
    if grep -q syncd-proxy-w /proc/"$1"/task/*/comm 2>/dev/null; then
        # mio keeps a dup of each epoll fd: one line per distinct set
        for e in $(ls -l /proc/"$1"/fd 2>/dev/null | awk '/eventpoll/ {print $9}'); do
            awk '/^tfd:/ {print $2}' /proc/"$1"/fdinfo/"$e" 2>/dev/null | sort -n | paste -sd,
        done | sort -u | awk -v fds="$(echo "$fds" | sed 's/.*fd=//' | tr '\n' ' ')" \
            'BEGIN {n = split(fds, a, " "); for (i = 1; i <= n; i++) c[a[i]] = 1}
             {k = 0; m = split($0, t, ","); for (i = 1; i <= m; i++) if (t[i] in c) k++; if (k) print k}' \
            | sort -rn | paste -sd/
    else
        echo "$fds" | sed 's/,fd=.*//' | sort | uniq -c | awk '{print $1}' | sort -rn | paste -sd/
    fi
}
median() { sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

HZ=$(getconf CLK_TCK)
ROUNDS=${ROUNDS:-9}
# fixed-rate rounds: each connection waits RATE_DELAY_MS between its
# requests (wrk's delay()), so the offered load is about
# CONNS * 1000 / RATE_DELAY_MS req/s, well under either proxy's capacity:
# p99 is then the proxies' own tail, not queueing behind an overload
RATE_DELAY_MS=${RATE_DELAY_MS:-8}
RATE_ROUNDS=${RATE_ROUNDS:-$ROUNDS}
printf 'function delay()\n  return %d\nend\n' "$RATE_DELAY_MS" > "$WORK/rate.lua"
echo "== syncd-proxy vs nginx $("$NGINX" -v 2>&1 | sed 's/.*\///') | workers=$WORKERS wrk -t$THREADS -c$CONNS -d${DURATION}s x $ROUNDS rounds, alternating order | $(nproc) cores | load $(cut -d' ' -f1-3 /proc/loadavg) | $(date -u +%FT%TZ)"
# warm-up (pools, caches), then alternating measured runs so that background
# load affects both proxies alike; medians are reported
wrk -t1 -c8 -d2s "http://127.0.0.1:$SP_PORT/" >/dev/null 2>&1 || true
wrk -t1 -c8 -d2s "http://127.0.0.1:$NX_PORT/" >/dev/null 2>&1 || true
[ -z "$SB_PID" ] || wrk -t1 -c8 -d2s "http://127.0.0.1:$SB_PORT/" >/dev/null 2>&1 || true

# one series of alternating rounds: files $WORK/<mode>-<who>-<round>.*
series() { # mode rounds [extra wrk args...]
    local mode=$1 rounds=$2 r who order port pid u0 s0 u1 s1 n f w0
    shift 2
    for r in $(seq "$rounds"); do
        # the order flips every round (ABBA...): neither proxy always runs
        # right after the other's load or always first after a quiet spell
        order=$WHO
        [ $((r % 2)) -eq 1 ] || order=$(echo "$WHO" | tr ' ' '\n' | tac | tr '\n' ' ')
        for who in $order; do
            case $who in
                sp) port=$SP_PORT; pid=$SP_PID ;;
                sb) port=$SB_PORT; pid=$SB_PID ;;
                *) port=$NX_PORT; pid=$NX_PID ;;
            esac
            f=$WORK/$mode-$who-$r
            read -r u0 s0 < <(cpu_ticks "$pid")
            w0=$(worker_ticks "$pid")
            (sleep $(((DURATION + 1) / 2)); conn_split "$pid" "$port" > "$f.conns") &
            local sampler=$!
            run_wrk "$port" "$f.txt" "$@"
            wait "$sampler" 2>/dev/null || true
            read -r u1 s1 < <(cpu_ticks "$pid")
            # each worker's share of the CPU the proxy used in this run
            paste <(echo "$w0" | tr ' ' '\n') <(worker_ticks "$pid" | tr ' ' '\n') \
                | awk 'NF == 2 {d[++n] = $2 - $1; t += $2 - $1}
                       END {for (i = 1; i <= n; i++) printf "%s%.0f%%", (i > 1 ? "/" : ""), t ? 100 * d[i] / t : 0; print ""}' > "$f.split"
            n=$(requests "$f.txt")
            awk -v t=$((u1 - u0 + s1 - s0)) -v n="${n:-1}" -v hz="$HZ" 'BEGIN {printf "%.2f\n", t * 1e6 / hz / n}' > "$f.cpu"
            awk -v t=$((u1 - u0)) -v n="${n:-1}" -v hz="$HZ" 'BEGIN {printf "%.2f\n", t * 1e6 / hz / n}' > "$f.ucpu"
        done
        for who in $WHO; do
            f=$WORK/$mode-$who-$r
            printf '%s round %d %-13s %10s req/s  p50 %7s  p99 %8s ms  cpu %6s us/req (user %6s)  workers %s  conns %s  %s\n' "$mode" "$r" \
                "$(label $who)" "$(rps "$f.txt")" "$(pct "$f.txt" 50%)" \
                "$(pct "$f.txt" 99%)" "$(cat "$f.cpu")" "$(cat "$f.ucpu")" "$(cat "$f.split")" "$(cat "$f.conns")" "$(errs "$f.txt")"
        done
        # same-round ratios: the only figures this shared VM makes comparable
        pct "$WORK/$mode-sp-$r.txt" 99% > "$WORK/$mode-sp-$r.p99"
        pct "$WORK/$mode-nx-$r.txt" 99% > "$WORK/$mode-nx-$r.p99"
        awk -v a="$(cat "$WORK/$mode-sp-$r.p99")" -v b="$(cat "$WORK/$mode-nx-$r.p99")" \
            -v c="$(rps "$WORK/$mode-sp-$r.txt")" -v d="$(rps "$WORK/$mode-nx-$r.txt")" \
            'BEGIN { printf "%.3f %.3f\n", (b > 0 ? a / b : 99), (d > 0 ? c / d : 0) }' > "$WORK/$mode-ratio-$r"
        printf '%s round %d same-round syncd/nginx: p99 %sx, req/s %sx\n' "$mode" "$r" \
            "$(cut -d' ' -f1 "$WORK/$mode-ratio-$r")" "$(cut -d' ' -f2 "$WORK/$mode-ratio-$r")"
        if [ -n "$SB_PID" ]; then
            # the second build beside the first: how far two runs of (nearly)
            # the same code drift apart in one round
            awk -v a="$(pct "$WORK/$mode-sb-$r.txt" 99%)" -v b="$(cat "$WORK/$mode-nx-$r.p99")" \
                'BEGIN { printf "%.3f\n", (b > 0 ? a / b : 99) }' > "$WORK/$mode-bratio-$r"
            printf '%s round %d same-round syncd-B/nginx: p99 %sx\n' "$mode" "$r" "$(cat "$WORK/$mode-bratio-$r")"
        fi
    done
}

summary() { # mode who
    local f
    RPS=$(for f in "$WORK/$1-$2"-*.txt; do rps "$f"; done | median)
    P50=$(for f in "$WORK/$1-$2"-*.txt; do pct "$f" 50%; done | median)
    P99=$(for f in "$WORK/$1-$2"-*.txt; do pct "$f" 99%; done | median)
    CPU=$(cat "$WORK/$1-$2"-*.cpu | median)
    UCPU=$(cat "$WORK/$1-$2"-*.ucpu | median)
}
report() { # mode
    local mode=$1
    echo "-- $mode: medians over the rounds"
    printf '%-13s %12s %10s %10s %14s %14s\n' proxy req/s p50_ms p99_ms cpu_us/req user_us/req
    summary "$mode" sp; SP_RPS=$RPS; SP_P99=$P99; SP_CPU=$CPU; SP_UCPU=$UCPU
    printf '%-13s %12s %10s %10s %14s %14s\n' syncd-proxy "$RPS" "$P50" "$P99" "$CPU" "$UCPU"
    summary "$mode" nx; NX_RPS=$RPS; NX_P99=$P99; NX_CPU=$CPU; NX_UCPU=$UCPU
    printf '%-13s %12s %10s %10s %14s %14s\n' nginx "$RPS" "$P50" "$P99" "$CPU" "$UCPU"
    if [ -n "$SB_PID" ]; then
        summary "$mode" sb
        printf '%-13s %12s %10s %10s %14s %14s\n' syncd-proxy-B "$RPS" "$P50" "$P99" "$CPU" "$UCPU"
    fi
    awk -v a="$SP_RPS" -v b="$NX_RPS" -v c="$SP_P99" -v d="$NX_P99" -v e="$SP_CPU" -v f="$NX_CPU" -v g="$SP_UCPU" -v h="$NX_UCPU" \
        'BEGIN { printf "ratio of medians syncd/nginx: req/s %.2fx, p99 %.2fx, cpu per request %.2fx, user cpu per request %.2fx\n", a / b, c / d, e / f, g / h }'
    local n pmed pbest pworst pwin qmed qworst qwin
    n=$(cat "$WORK/$mode"-ratio-* | wc -l)
    pmed=$(cat "$WORK/$mode"-ratio-* | cut -d' ' -f1 | median)
    pbest=$(cat "$WORK/$mode"-ratio-* | cut -d' ' -f1 | sort -g | head -1)
    pworst=$(cat "$WORK/$mode"-ratio-* | cut -d' ' -f1 | sort -g | tail -1)
    pwin=$(cat "$WORK/$mode"-ratio-* | awk '$1 <= 1' | wc -l)
    qmed=$(cat "$WORK/$mode"-ratio-* | cut -d' ' -f2 | median)
    qworst=$(cat "$WORK/$mode"-ratio-* | cut -d' ' -f2 | sort -g | head -1)
    qwin=$(cat "$WORK/$mode"-ratio-* | awk '$2 >= 1' | wc -l)
    echo "same-round p99 syncd/nginx: median ${pmed}x, best ${pbest}x, worst ${pworst}x; syncd <= nginx in $pwin of $n rounds (target: median <= 1)"
    echo "same-round req/s syncd/nginx: median ${qmed}x, worst ${qworst}x; syncd >= nginx in $qwin of $n rounds"
    if [ -n "$SB_PID" ]; then
        echo "same-round p99 syncd-B/nginx: median $(cat "$WORK/$mode"-bratio-* | median)x, worst $(cat "$WORK/$mode"-bratio-* | sort -g | tail -1)x; <= nginx in $(cat "$WORK/$mode"-bratio-* | awk '$1 <= 1' | wc -l) of $n rounds"
    fi
}

series closed "$ROUNDS"
report closed
if [ "$RATE_ROUNDS" -gt 0 ]; then
    echo "== fixed rate: each of the $CONNS connections waits ${RATE_DELAY_MS} ms between requests (about $((CONNS * 1000 / RATE_DELAY_MS)) req/s offered), $RATE_ROUNDS rounds"
    series rate "$RATE_ROUNDS" -s "$WORK/rate.lua"
    report rate
fi

PROFILE_ARGS=()
[ -z "${PROFILE_RATE:-}" ] || PROFILE_ARGS=(-s "$WORK/rate.lua")
if [ -n "${PERF_OUT:-}" ]; then
    echo "== perf record -g of syncd-proxy during one more ${DURATION}s run -> $PERF_OUT"
    perf record -q -F "${PERF_FREQ:-999}" --call-graph "${PERF_CALLGRAPH:-fp}" -p "$SP_PID" -o "$PERF_OUT" -- sleep "$DURATION" 2>/dev/null &
    perf_pid=$!
    run_wrk "$SP_PORT" "$WORK/perf.txt" "${PROFILE_ARGS[@]}"
    wait $perf_pid || true
    perf report -i "$PERF_OUT" --no-children --percent-limit 1.5 --stdio -g none 2>/dev/null \
        | grep -v '^#' | grep -v '^$' | head -40
fi

# system calls per request: strace -c -f on the proxy's threads (syncd-proxy)
# or worker processes (nginx) during one more run. strace slows the proxy a
# lot, so only the counts per request mean anything, not the rate.
strace_run() { # port pid name
    local port=$1 pid=$2 name=$3 args=() p
    for p in "$pid" $(ps -o pid= --ppid "$pid" 2>/dev/null); do args+=(-p "$p"); done
    strace -c -f -o "$WORK/strace-$name.txt" "${args[@]}" 2>/dev/null &
    local st=$!
    sleep 1
    run_wrk "$port" "$WORK/strace-$name.wrk" "${PROFILE_ARGS[@]}"
    kill -INT "$st" 2>/dev/null || true
    wait "$st" 2>/dev/null || true
    local n
    n=$(requests "$WORK/strace-$name.wrk")
    awk -v n="${n:-1}" -v who="$name" '
        $1 ~ /^[0-9.]+$/ && NF >= 5 { name = $NF; calls = $4;
            if (name == "total") total = calls; else { c[name] = calls; e[name] = (NF == 6) ? $5 : 0 } }
        END { printf "%-14s %6.2f syscalls/request (%d requests):", who, total / n, n;
              for (k in c) if (c[k] / n >= 0.01) printf " %s %.2f%s", k, c[k] / n, e[k] ? sprintf(" (%.2f failed)", e[k] / n) : "";
              printf "\n" }' "$WORK/strace-$name.txt"
}
if [ -n "${STRACE:-}" ]; then
    command -v strace >/dev/null || { echo "strace not found"; exit 1; }
    echo "== strace -c -f during one more ${DURATION}s run per proxy (counts per request; the rate under strace means nothing)"
    strace_run $SP_PORT "$SP_PID" syncd-proxy
    [ -z "$SB_PID" ] || strace_run $SB_PORT "$SB_PID" syncd-proxy-B
    strace_run $NX_PORT "$NX_PID" nginx
fi

failover() { # port name
    local port=$1 name=$2
    run_wrk "$port" "$WORK/fo-$name.txt" &
    local w=$!
    sleep $((DURATION / 3))
    kill -9 "${BE_PIDS[1]}" 2>/dev/null || true
    wait "${BE_PIDS[1]}" 2>/dev/null || true
    sleep $((DURATION / 3))
    start_backend 1
    wait $w
    printf '%-12s %12s req/s  %s\n' "$name" "$(rps "$WORK/fo-$name.txt")" "$(errs "$WORK/fo-$name.txt")"
}
echo "== failover: backend 2 of 3 killed (SIGKILL) at ${DURATION}/3 s, restarted at 2*${DURATION}/3 s"
failover $SP_PORT syncd-proxy
wait_port "${BE_PORTS[1]}"; sleep 1
failover $NX_PORT nginx
