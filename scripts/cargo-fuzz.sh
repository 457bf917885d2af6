#!/usr/bin/env bash
# Runs the fuzz targets of fuzz/ with cargo-fuzz on the nightly toolchain.
#
#   scripts/cargo-fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Installs cargo-fuzz from crates.io into target/tools (once; `cargo install --locked`, reused
# while its version is unchanged), builds the targets optimized with debug assertions, then
# runs each target (default: all of `cargo fuzz list`)
# for SECONDS_PER_TARGET (default 30) over a copy of its checked-in seed corpus
# (fuzz/corpus/TARGET, copied to target/fuzz-corpus/TARGET so the checked-in corpus stays
# small). A crash leaves its input under fuzz/artifacts/TARGET and makes the script exit
# non-zero. Prints `fuzz: TARGET runs=N` per target (libFuzzer's execution count).
#
# Exits 0 without fuzzing when no nightly toolchain is installed (`rustup toolchain list`):
# the seed corpora still run on stable as `cargo test --all-features --test fuzz_corpus`.
#
# Environment:
#   FUZZ_PARALLEL   targets fuzzed at the same time (default 2)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
TOOLS="$ROOT/target/tools"
CARGO_FUZZ_VERSION=0.13.1

log() { echo "cargo-fuzz.sh: $*" >&2; }
die() { log "$*"; exit 2; }

case "${1:-}" in
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
esac
SECS=${1:-30}
shift || true
case "$SECS" in ''|*[!0-9]*) die "SECONDS_PER_TARGET must be a number, got: $SECS" ;; esac

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    log "no nightly toolchain: skipping the fuzz runs (the corpora run in cargo test)"
    exit 0
fi

if [ "$("$TOOLS/bin/cargo-fuzz" --version 2>/dev/null | awk '{print $2}')" != "$CARGO_FUZZ_VERSION" ]; then
    log "installing cargo-fuzz $CARGO_FUZZ_VERSION into $TOOLS"
    mkdir -p "$TOOLS"
    cargo install --quiet --locked --root "$TOOLS" --version "$CARGO_FUZZ_VERSION" cargo-fuzz \
        || die "cargo install cargo-fuzz failed"
fi
export PATH="$TOOLS/bin:$PATH"

cd "$ROOT/fuzz"
if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo +nightly fuzz list); fi
log "building ${targets[*]}"
# One build for all targets: optimized (libFuzzer needs the speed) with debug assertions and
# overflow checks on.
cargo +nightly fuzz build --debug-assertions >/dev/null 2>"$ROOT/target/fuzz-build.log" \
    || { tail -n 40 "$ROOT/target/fuzz-build.log" >&2; die "cargo fuzz build failed"; }

run_one() {
    local t=$1 work="$ROOT/target/fuzz-corpus/$1" logf="$ROOT/target/fuzz-$1.log"
    mkdir -p "$work"
    cp -n "$ROOT/fuzz/corpus/$t/"* "$work/" 2>/dev/null || true
    # -malloc_limit_mb: one allocation over 256 MiB is a finding (the targets' limits are KiBs).
    if cargo +nightly fuzz run --debug-assertions "$t" "$work" -- -max_total_time="$SECS" \
        -max_len=8192 -rss_limit_mb=1024 -malloc_limit_mb=256 -print_final_stats=1 \
        >"$logf" 2>&1; then
        runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$logf" | awk '{print $2}')
        echo "fuzz: $t runs=${runs:-0} in ${SECS} s"
    else
        tail -n 60 "$logf" >&2
        echo "fuzz: $t FAILED (log: $logf; the input is under fuzz/artifacts/$t)"
        return 1
    fi
}

# Targets run FUZZ_PARALLEL at a time (default 2: one per core of a CI machine).
rc=0 running=0
for t in "${targets[@]}"; do
    if [ "$running" -ge "${FUZZ_PARALLEL:-2}" ]; then
        wait -n || rc=1
        running=$((running - 1))
    fi
    run_one "$t" &
    running=$((running + 1))
done
while [ "$running" -gt 0 ]; do
    wait -n || rc=1
    running=$((running - 1))
done
exit "$rc"
