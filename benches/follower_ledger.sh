#!/bin/bash
# The follower's cost of the placed-file ledger: time of resyncs that
# replace N small files (all touched on the primary) on a standby that
# already holds them (fixed port 7789). Run it with a build of this
# release and of the one before, alternately. Usage: follower_ledger.sh BIN N ROUNDS
set -e
BIN=$1; N=${2:-20000}; R=${3:-3}
D=${TMPDIR:-/tmp}/syncd-ledger-bench.$$; rm -rf $D; mkdir -p $D/primary $D/standby; cd $D
$BIN keygen --out pk --name p >/dev/null; $BIN keygen --out sk --name s >/dev/null
PORT=7789
cat > s.toml <<T
export = "standby"
state_dir = "sstate"
listen = "127.0.0.1:$PORT"
cert = "sk/node.crt"
key = "sk/node.key"
peer_cert = "pk/node.crt"
T
cat > p.toml <<T
export = "primary"
state_dir = "pstate"
peer = "127.0.0.1:$PORT"
cert = "pk/node.crt"
key = "pk/node.key"
peer_cert = "sk/node.crt"
T
python3 - $N <<'P'
import sys,os
n=int(sys.argv[1])
for i in range(n):
    d=f"primary/d{i//1000}"
    os.makedirs(d,exist_ok=True)
    open(f"{d}/f{i}","wb").write(os.urandom(1024))
P
start() { $BIN --role standby --config s.toml 2>sb.log & SB=$!; for i in $(seq 100); do grep -q 'standby listening' sb.log 2>/dev/null && break; sleep 0.1; done; }
stop() { kill $SB; wait $SB 2>/dev/null || true; }
start; $BIN resync --config p.toml >/dev/null 2>&1; stop
for r in $(seq $R); do
  start
  find primary -type f -exec touch {} +
  t0=$(date +%s.%N); $BIN resync --config p.toml >/dev/null 2>&1; t1=$(date +%s.%N)
  stop
  echo "$(basename $BIN) round $r: $(echo "$t1 - $t0" | bc) s to replace $N files; placed.bin $(stat -c %s sstate/placed.bin 2>/dev/null || echo none) bytes"
done
rm -rf $D
