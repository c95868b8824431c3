#!/usr/bin/env bash
# Build and install syncd in one command:
#
#   sudo ./scripts/install.sh                 # release build; /usr/local/bin, /etc/syncd
#   ./scripts/install.sh --debug              # debug build (fast; for tests)
#   DESTDIR=/tmp/root PREFIX=/usr ./scripts/install.sh   # staged, packager style
#
# Installs: $PREFIX/bin/{syncd,syncd-proxy}; the systemd units in
# $PREFIX/lib/systemd/system (ExecStart pointing at $PREFIX/bin); example
# configurations as $SYSCONFDIR/syncd/*.example.toml (never over a file
# that exists); README, the proxy's VRRP drop-in and the sysctl example in
# $PREFIX/share/doc/syncd.
# Options: --debug (dev profile), --no-build (install what target/ holds).
# Environment: DESTDIR, PREFIX (/usr/local), SYSCONFDIR (/etc), CARGO (cargo),
# CARGO_TARGET_DIR (target).
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
build=1
for a in "$@"; do
  case "$a" in
    --debug) profile=debug ;;
    --no-build) build=0 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown option $a (see --help)" >&2; exit 2 ;;
  esac
done

DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr/local}
SYSCONFDIR=${SYSCONFDIR:-/etc}
CARGO=${CARGO:-cargo}
target=${CARGO_TARGET_DIR:-target}

if [ "$build" = 1 ]; then
  flags=(--locked -p syncd -p syncd-proxy --bins)
  [ "$profile" = release ] && flags+=(--release)
  "$CARGO" build "${flags[@]}"
fi

bindir="$DESTDIR$PREFIX/bin"
unitdir="$DESTDIR$PREFIX/lib/systemd/system"
docdir="$DESTDIR$PREFIX/share/doc/syncd"
confdir="$DESTDIR$SYSCONFDIR/syncd"

for b in syncd syncd-proxy; do
  [ -x "$target/$profile/$b" ] || { echo "install.sh: $target/$profile/$b not built" >&2; exit 1; }
  install -D -m 0755 "$target/$profile/$b" "$bindir/$b"
done

# The units name /usr/bin (the package layout) and /etc/syncd; point them
# at this installation's directories.
install -d -m 0755 "$unitdir"
for u in contrib/systemd/*.service; do
  sed -e "s|/usr/bin/syncd|$PREFIX/bin/syncd|g" -e "s|/etc/syncd/|$SYSCONFDIR/syncd/|g" \
    -e "s|/usr/share/doc/syncd/|$PREFIX/share/doc/syncd/|g" \
    "$u" >"$unitdir/$(basename "$u")"
  chmod 0644 "$unitdir/$(basename "$u")"
done

install -d -m 0755 "$confdir"
for c in syncd syncd-auto vrrp proxy; do
  src=contrib/$c.example.toml
  dst=$confdir/$c.example.toml
  [ -e "$dst" ] || install -m 0644 "$src" "$dst"
done

install -d -m 0755 "$docdir"
install -m 0644 README.md contrib/systemd/syncd-proxy-vrrp.conf contrib/sysctl/90-syncd.conf "$docdir/"

cat <<MSG
installed syncd and syncd-proxy ($profile) into $DESTDIR$PREFIX/bin,
units into $unitdir, examples into $confdir.
Next: write $SYSCONFDIR/syncd/syncd.toml from syncd.example.toml (or
syncd-auto.example.toml), set the export in the unit
(systemctl edit syncd-standby: ReadWritePaths=/your/export), then
systemctl daemon-reload && systemctl enable --now syncd-standby
(state goes to /var/lib/syncd/<export_id>, the units' StateDirectory;
an older release's <export>/.syncd is moved there at the first start)
MSG
