#!/usr/bin/env bash
# Install shoes (0.3.2, crates.io; a Rust proxy on quinn + tokio with a Hysteria2 server), the
# third Hysteria2 server of bench/cc.py, with `cargo install` into a root directory,
# idempotently.
#
# usage: scripts/get-shoes.sh [ROOT]      (default: target/peers, relative to the cwd; the
#                                          binary goes to ROOT/bin/shoes)
#   env: SHOES_VERSION (default 0.3.2), CARGO (default: cargo),
#        SHOES_TARGET_DIR (default ROOT/build: cargo's CARGO_TARGET_DIR for the build, apart
#        from the main build's target/ so that neither disturbs the other)
# Prints the installed binary's path on stdout (last line); everything else goes to stderr.
# `cargo install --locked` first (the crate's own Cargo.lock), without --locked if that fails.
# It compiles for several minutes (about 5-10 on 2 cores). Every failure says which step
# failed (cargo missing, both installs, version check).
set -euo pipefail

VERSION="${SHOES_VERSION:-0.3.2}"
ROOT="${1:-target/peers}"
BIN="$ROOT/bin/shoes"
CARGO="${CARGO:-cargo}"

die() { echo "get-shoes.sh: $*" >&2; exit 1; }

# The binary at $BIN is the wanted version when `shoes --version` (0.3.x: one line
# "shoes VERSION") says so.
installed() {
  [ -x "$BIN" ] && "$BIN" --version 2>/dev/null | head -n1 | grep -qx "shoes $VERSION"
}

# Already installed at the right version? Nothing to do.
if installed; then
  echo "shoes $VERSION already at $BIN" >&2
  echo "$BIN"
  exit 0
fi

command -v "$CARGO" >/dev/null 2>&1 || die "'$CARGO' not found: install a Rust toolchain (rustup) or set CARGO"
mkdir -p "$ROOT/bin" || die "cannot create $ROOT/bin"
ROOT="$(cd "$ROOT" && pwd)"   # cargo wants an absolute --root (it is relative to the cwd too,
BIN="$ROOT/bin/shoes"         # but be explicit), and the binary path printed last
export CARGO_TARGET_DIR="${SHOES_TARGET_DIR:-$ROOT/build}"

# bench/cc.py or a person may run this concurrently: serialise the install, then look again
# in case another process finished while we waited. flock is optional (util-linux).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$ROOT/.shoes.lock" || die "cannot open the lock file $ROOT/.shoes.lock"
  flock -w 1800 9 || die "timed out after 1800 s waiting for $ROOT/.shoes.lock"
  if installed; then
    echo "shoes $VERSION already at $BIN (installed concurrently)" >&2
    echo "$BIN"
    exit 0
  fi
fi

# --force: a shoes of another version (or a half-finished one) in ROOT is replaced.
echo "installing shoes $VERSION with '$CARGO install --locked' into $ROOT (CARGO_TARGET_DIR=$CARGO_TARGET_DIR); this compiles for several minutes" >&2
if ! "$CARGO" install shoes --version "=$VERSION" --locked --force --root "$ROOT" >&2; then
  echo "get-shoes.sh: 'cargo install --locked' failed; retrying without --locked" >&2
  "$CARGO" install shoes --version "=$VERSION" --force --root "$ROOT" >&2 \
    || die "cargo install shoes --version $VERSION failed, with and without --locked (is crates.io reachable? see cargo's messages above)"
fi
[ -x "$BIN" ] || die "cargo install succeeded but left no executable $BIN"
installed || die "$BIN is installed but '$BIN --version' does not say 'shoes $VERSION'"
echo "installed shoes $VERSION to $BIN" >&2
echo "$BIN"
