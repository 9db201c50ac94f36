#!/usr/bin/env bash
# Builds every fuzz target and runs each for N seconds (default 30); exits non-zero if any
# target crashes. Works on stable Rust: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z
# sanitizer flags. Logs and crash inputs land in fuzz/artifacts/ (git-ignored).
# FUZZ_SANITIZER picks cargo-fuzz's sanitizer (default address; CI's short run uses none:
# the parsers hold no unsafe code, and the build takes 5 minutes instead of 8 on 2 cores).
#   fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
secs=${1:-30}
shift || true
cd "$(dirname "$0")/.."
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
san=${FUZZ_SANITIZER:-address}
# cargo-fuzz forces one codegen unit unless told otherwise; 16 builds faster on 2 cores.
# FUZZ_DEV=1 builds without optimisation (with overflow checks): much faster to build, for
# the short CI run, where build time matters more than executions per second.
flags=(-s "$san" --codegen-units 16)
[ "${FUZZ_DEV:-0}" = 1 ] && flags+=(--dev)
cargo fuzz build "${flags[@]}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
mkdir -p fuzz/artifacts
failed=()
for t in "${targets[@]}"; do
    log=fuzz/artifacts/$t.log
    # max_len covers the largest valid TCPRequest (6,168 bytes) with room to spare.
    # A fixed seed (FUZZ_SEED, default 1) keeps CI runs repeatable; set another for
    # exploration.
    if cargo fuzz run "${flags[@]}" "$t" -- -max_total_time="$secs" -max_len=8192 -seed="${FUZZ_SEED:-1}" \
        >"$log" 2>&1; then
        echo "$t: ok, $(grep -E '^Done [0-9]+ runs' "$log" | tail -1)"
    else
        echo "$t: FAILED, see $log"
        tail -40 "$log"
        failed+=("$t")
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "crashed: ${failed[*]}"
    exit 1
fi
