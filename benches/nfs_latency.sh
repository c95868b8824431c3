#!/usr/bin/env bash
# Change->replica latency for files written through an NFS server: a libnfs
# client in one network namespace writes new files through nfs-ganesha
# (NFSv4, then NFSv3) serving the primary's export from another; syncd
# --role primary / --role standby replicate it on loopback. Latency is from
# the file's last change in the primary's export (the server's close at the
# client's NFSv4 CLOSE; over NFSv3, which has no close, its last WRITE) to the
# complete file under its name on the standby (benches/live_load.py nfs). Root; needs nfs-ganesha(-vfs), rpcbind,
# libnfs-utils.
#
#   benches/nfs_latency.sh
#
# Environment: RATE (200 files/s), SECONDS (30), SIZE (1024 bytes; NFSv4
# writes of 4 KiB or more fail in libnfs 4.0), VERSIONS ("4 3"),
# SETTLE_MS (500: syncd's settle_ms), DURABLE (true: syncd's durable, a
# syncfs on the standby before each commit is acknowledged), BENCH_DIR (/tmp/syncd-nfs-bench),
# SYNCD (the binary; default: the release build, built when missing),
# STANDBY_FS ("shared", the default: beside the primary's export, where
# each of the standby's syncfs also flushes what ganesha wrote; "own": on a
# filesystem of its own, a loop-mounted ext4 image, as on its own host),
# CLIENT ("keep", the default: one libnfs session mounted once and kept, as
# a mount is; "fresh": a new nfs-cp process, connection and mount per file).
# Besides the latencies ($BENCH_DIR/latency-vN.tsv) it keeps the client's
# per-file times (client-vN.tsv, CLIENT=keep), pressure stalls and CPU time
# sampled every 10 ms (pressure-vN.tsv), and both daemons' logs
# (primary.log, standby.log; SYNCD_LOG sets what they hold):
# benches/nfs_tail.py lines them up per slow file.
LOAD_SECONDS=$(printenv SECONDS || true)
LOAD_SECONDS=${LOAD_SECONDS:-30}
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RATE=${RATE:-200}
SIZE=${SIZE:-1024}
VERSIONS=${VERSIONS:-"4 3"}
SETTLE_MS=${SETTLE_MS:-500}
DURABLE=${DURABLE:-true}
DIR=${BENCH_DIR:-/tmp/syncd-nfs-bench}
STANDBY_FS=${STANDBY_FS:-shared}
CLIENT=${CLIENT:-keep}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
SYNCD=${SYNCD:-$TARGET/release/syncd}
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces)" >&2; exit 2; }
for t in ganesha.nfsd rpcbind nfs-cp unshare; do
  command -v "$t" >/dev/null || { echo "missing $t (apt-get install nfs-ganesha nfs-ganesha-vfs rpcbind libnfs-utils)" >&2; exit 2; }
done
[ -x "$SYNCD" ] || cargo build --release -q --bin syncd
LOAD=(python3 "$ROOT/benches/live_load.py")

NS=snb$$
GROUPS_STARTED=()
cleanup() {
  set +e
  for g in "${GROUPS_STARTED[@]}"; do kill -KILL -- "-$g" 2>/dev/null; wait "$g" 2>/dev/null; done
  ip netns del "${NS}s" 2>/dev/null; ip netns del "${NS}c" 2>/dev/null
  mountpoint -q "$DIR/standby-fs" && umount "$DIR/standby-fs"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
spawn() { # log, command...: in a new session (its own process group)
  local log=$1; shift
  setsid "$@" >"$log" 2>&1 </dev/null &
  GROUPS_STARTED+=("$!")
}
wait_for_line() { # file pattern timeout_s
  local i
  for i in $(seq $(( $3 * 20 ))); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
  echo "'$2' not in $1 after $3 s:" >&2; tail -20 "$1" >&2; return 1
}
getv() { sed -n 's/^RESULT //p' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }
writers() { # pid dir: files under dir it holds open for writing
  local f n=0
  for f in /proc/"$1"/fd/*; do
    case $(readlink "$f") in "$2"/*) ;; *) continue ;; esac
    case $(awk '/^flags:/ {print $2}' "/proc/$1/fdinfo/${f##*/}" 2>/dev/null) in *1|*2|*5|*6) n=$((n + 1)) ;; esac
  done
  echo "$n"
}

mountpoint -q "$DIR/standby-fs" && umount "$DIR/standby-fs"
rm -rf "$DIR"; mkdir -p "$DIR"/src "$DIR"/stage "$DIR"/ganesha/recovery
case $STANDBY_FS in
  own)
    truncate -s 2G "$DIR/standby.img"
    mkfs.ext4 -q -F "$DIR/standby.img"
    mkdir "$DIR/standby-fs"; mount -o loop "$DIR/standby.img" "$DIR/standby-fs"
    SB=$DIR/standby-fs ;;
  shared) SB=$DIR ;;
  *) echo "STANDBY_FS is own or shared" >&2; exit 2 ;;
esac
mkdir -p "$SB/dst"
# the server's namespace and the client's, joined by a veth pair
ip netns add "${NS}s"; ip netns add "${NS}c"
ip link add eth0 netns "${NS}s" type veth peer name eth0 netns "${NS}c"
ip -n "${NS}s" addr add 10.253.0.1/24 dev eth0; ip -n "${NS}c" addr add 10.253.0.2/24 dev eth0
for n in s c; do ip -n "$NS$n" link set eth0 up; ip -n "$NS$n" link set lo up; done
printf '%s\n' \
  'NFS_CORE_PARAM { Protocols = 3, 4; NFS_Port = 2049; Enable_NLM = false; Enable_RQUOTA = false; Nb_Worker = 8; }' \
  "NFSV4 { Graceless = true; RecoveryBackend = fs; RecoveryRoot = \"$DIR/ganesha/recovery\"; }" \
  "EXPORT { Export_Id = 1; Path = \"$DIR/src\"; Pseudo = \"/export\"; Access_Type = RW; Squash = No_Root_Squash;" \
  '         Protocols = 3, 4; Transports = TCP; SecType = sys; FSAL { Name = VFS; } }' \
  'LOG { Default_Log_Level = EVENT; }' > "$DIR/ganesha/ganesha.conf"
spawn "$DIR/ganesha/out.log" ip netns exec "${NS}s" unshare --mount sh -c \
  "mount -t tmpfs tmpfs /run || exit 1; rpcbind -f -w & sleep 0.3; exec ganesha.nfsd -F -f $DIR/ganesha/ganesha.conf -L $DIR/ganesha/ganesha.log -p $DIR/ganesha/ganesha.pid"
wait_for_line "$DIR/ganesha/ganesha.log" "NFS SERVER INITIALIZED" 30

"$SYNCD" keygen --out "$DIR/keys/p" >/dev/null
"$SYNCD" keygen --out "$DIR/keys/s" >/dev/null
port=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf '%s\n' "export = \"$SB/dst\"" "state_dir = \"$SB/dst.state\"" "listen = \"127.0.0.1:$port\"" \
  "cert = \"$DIR/keys/s/node.crt\"" "key = \"$DIR/keys/s/node.key\"" "peer_cert = \"$DIR/keys/p/node.crt\"" \
  "[sync]" "durable = $DURABLE" > "$DIR/standby.toml"
printf '%s\n' "export = \"$DIR/src\"" "state_dir = \"$DIR/src.state\"" "peer = \"127.0.0.1:$port\"" \
  "cert = \"$DIR/keys/p/node.crt\"" "key = \"$DIR/keys/p/node.key\"" "peer_cert = \"$DIR/keys/s/node.crt\"" \
  "[sync]" "settle_ms = $SETTLE_MS" "durable = $DURABLE" > "$DIR/primary.toml"
spawn "$DIR/standby.log" "$SYNCD" --role standby --config "$DIR/standby.toml"
wait_for_line "$DIR/standby.log" "standby listening" 30
spawn "$DIR/primary.log" "$SYNCD" --role primary --config "$DIR/primary.toml"
wait_for_line "$DIR/primary.log" "in sync; following changes" 60

echo "syncd $(git describe --always --dirty 2>/dev/null || true), settle_ms $SETTLE_MS, durable $DURABLE, standby filesystem $STANDBY_FS;" \
  "$RATE new $SIZE-byte files/s for $LOAD_SECONDS s, $( [ "$CLIENT" = keep ] && echo "by one long-lived libnfs session" || echo "each by a fresh nfs-cp") through nfs-ganesha" \
  "$(dpkg-query -W -f '${Version}' nfs-ganesha 2>/dev/null || true)"
for v in $VERSIONS; do
  if [ "$v" = 4 ]; then url="nfs://10.253.0.1/export?version=4"; else url="nfs://10.253.0.1$DIR/src?version=3"; fi
  r=$DIR/result-v$v.txt
  # Pressure stalls and CPU time beside the run (benches/nfs_tail.py).
  spawn "$DIR/pressure-v$v.log" "${LOAD[@]}" pressure --out "$DIR/pressure-v$v.tsv"
  sampler=${GROUPS_STARTED[-1]}
  "${LOAD[@]}" nfs --src "$DIR/src" --dst "$SB/dst" --url "$url" --netns "${NS}c" --stage "$DIR/stage" --client "$CLIENT" \
    --rate "$RATE" --seconds "$LOAD_SECONDS" --size "$SIZE" --tag "v$v" --label "NFSv$v" --grace 30 \
    --tsv "$DIR/latency-v$v.tsv" --client-tsv "$DIR/client-v$v.tsv" > "$r"
  kill -TERM -- "-$sampler" 2>/dev/null || true
  echo "NFSv$v: change->replica p50 $(getv "$r" p50_ms) ms, p99 $(getv "$r" p99_ms) ms, max $(getv "$r" max_ms) ms;" \
    "$(getv "$r" arrived) of $(getv "$r" written) written arrived (offered $RATE/s, client achieved $(getv "$r" achieved)/s," \
    "client failed $(getv "$r" nfs_failed), bad content $(getv "$r" bad_content))"
done
echo "files ganesha holds open for writing at the end: $(writers "$(cat "$DIR/ganesha/ganesha.pid")" "$DIR/src")"
