#!/usr/bin/env bash
# The test command: installs what the tests need (when missing), then runs the
# whole workspace test suite. Tests that need root, network namespaces or a
# tool say "SKIP" when they cannot run; the skips are listed at the end, and
# with SYNCD_NO_SKIP=1 (as .ci/run sets) a skip fails its test.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pair in keepalived:keepalived ip:iproute2 bridge:iproute2 tcpdump:tcpdump \
    promtool:prometheus inotifywait:inotify-tools rsync:rsync systemd-analyze:systemd nft:nftables \
    ganesha.nfsd:nfs-ganesha ganesha.nfsd:nfs-ganesha-vfs nfs-cp:libnfs-utils rpcbind:rpcbind; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  if ! command -v "$cmd" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$cmd" ]; then need+=("$pkg"); fi
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
  else
    echo "note: missing ${need[*]} (not root or no apt-get); tests that need them will skip" >&2
  fi
fi
# keepalived from the package must not run as a system service during tests
# (its VRRP adverts would reach the test namespaces' bridges).
if command -v systemctl >/dev/null 2>&1; then systemctl stop keepalived >/dev/null 2>&1 || true; fi
if [ -r /run/keepalived.pid ]; then kill "$(cat /run/keepalived.pid)" 2>/dev/null || true; fi
# Nor nfs-ganesha and rpcbind: the NFS tests start their own in namespaces.
if command -v systemctl >/dev/null 2>&1; then
  systemctl stop nfs-ganesha rpcbind.socket rpcbind >/dev/null 2>&1 || true
fi
for pidfile in /run/ganesha/ganesha.pid /run/rpcbind.pid; do
  if [ -r "$pidfile" ]; then kill "$(cat "$pidfile")" 2>/dev/null || true; fi
done

# The previous release's syncd for tests/upgrade.rs (a rolling upgrade
# against the real binary): built from git once per commit, into the same
# target directory so the registry dependencies are reused, and passed as
# SYNCD_PREV_BIN. Its workspace packages get a "-prev" version and the binary
# another name, so none of its artifacts shares a name with this tree's.
# PREV is the last commit of protocol 6 (the one before 819df69 made it 7).
PREV=d7fd876716bcd77169b74a1af87d60ceab74e73d
target="${CARGO_TARGET_DIR:-$PWD/target}"
prev_bin="$target/prev/syncd-$PREV"
if [ -z "${SYNCD_PREV_BIN:-}" ] && [ ! -x "$prev_bin" ]; then
  if ! git cat-file -e "$PREV^{commit}" 2>/dev/null; then
    # A shallow clone: fetch just that commit.
    git fetch --quiet --depth=1 origin "$PREV" 2>/dev/null || true
  fi
  if git cat-file -e "$PREV^{commit}" 2>/dev/null; then
    src="$target/prev/src"
    rm -rf "$src" && mkdir -p "$src"
    git archive "$PREV" | tar -x -C "$src"
    sed -i 's/^version = "0.1.0"$/version = "0.1.0-prev"/' "$src/Cargo.toml" "$src"/crates/*/Cargo.toml
    sed -i '/^\[\[bin\]\]/,/^path/ s/^name = "syncd"$/name = "syncd-prev"/' "$src/Cargo.toml"
    echo "building the previous release's syncd ($PREV) for tests/upgrade.rs"
    if (cd "$src" && CARGO_TARGET_DIR="$target" cargo build --quiet --bin syncd-prev); then
      mv "$target/debug/syncd-prev" "$prev_bin"
    else
      echo "note: the previous release did not build; tests/upgrade.rs will skip" >&2
    fi
    rm -rf "$src"
  else
    echo "note: commit $PREV is not in this clone and could not be fetched; tests/upgrade.rs will skip (fails under SYNCD_NO_SKIP=1)" >&2
  fi
fi
if [ -z "${SYNCD_PREV_BIN:-}" ] && [ -x "$prev_bin" ]; then
  export SYNCD_PREV_BIN="$prev_bin"
fi

SYNCD_SKIP_LOG=$(mktemp)
export SYNCD_SKIP_LOG
status=0
cargo test --workspace "$@" || status=$?
# Every parser's fuzz corpus and saved crash inputs, replayed through the
# fuzz targets' bodies on the stable toolchain (scripts/fuzz.sh fuzzes).
# The same target directory as the workspace: the libraries are built once.
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}" \
  cargo test --manifest-path fuzz/Cargo.toml --no-default-features || status=$?
if [ -s "$SYNCD_SKIP_LOG" ]; then
  echo "tests skipped here:" >&2
  sort -u "$SYNCD_SKIP_LOG" >&2
fi
rm -f "$SYNCD_SKIP_LOG"
exit "$status"
