#!/usr/bin/env bash
# Instructions per WebSocket upgrade, counted by callgrind, for this crate's layer and for raw
# fastwebsockets, both inside an axum Router (and axum's built-in ws, for reference).
#
# `bench upgrade-cost <kind> --count N` performs N upgrades in one process over in-memory
# pipes (hyper http1 server connection + a minimal client: handshake, 101, close frame, close
# reply). Each kind runs twice under callgrind, with SMALL and LARGE upgrades; the difference
# of the two instruction totals divided by LARGE - SMALL is the cost of one upgrade, with the
# process's start-up and exit cancelled out.
#
# The binary is built in its own target directory with RUSTFLAGS="-C target-cpu=x86-64-v2",
# so that nothing in it uses AVX-512 (which valgrind cannot run) and the count does not
# depend on the build machine's CPU.
#
# Then the same for one echoed message: one upgrade that echoes SMALL and LARGE binary messages
# of 20 bytes, one at a time (`--messages`), so the difference is the cost of one request and
# its echo, client included.
#
# Usage: bench/callgrind.sh            (SMALL=200 LARGE=2200 KINDS="layer fastwebsockets axum-ws")
set -euo pipefail
cd "$(dirname "$0")/.."

SMALL=${SMALL:-200}
LARGE=${LARGE:-2200}
KINDS=${KINDS:-"layer fastwebsockets axum-ws"}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/callgrind}

if ! command -v valgrind >/dev/null; then
    # Debian's valgrind, as scripts/browser.sh installs chromium: only as root with apt-get.
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        echo "callgrind.sh: installing valgrind with apt-get" >&2
        { timeout 900 apt-get update -q \
            && DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q valgrind; } \
            >&2 </dev/null || { echo "callgrind.sh: apt-get install valgrind failed" >&2; exit 1; }
    else
        echo "callgrind.sh: valgrind is not installed (apt-get install valgrind)" >&2
        exit 1
    fi
fi
RUSTFLAGS="-C target-cpu=x86-64-v2" cargo build --release -p tower-websocket-bench
BIN="$CARGO_TARGET_DIR/release/bench"

# Total instructions (Ir) of one run.
instructions() {
    local out
    out=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        "$BIN" upgrade-cost "$@" 2>&1) || { echo "$out" >&2; return 1; }
    echo "$out" | sed -n 's/^==[0-9]*== Collected : \([0-9]*\)$/\1/p'
}

declare -A PER
printf '%-16s %14s %14s %16s\n' kind "Ir ($SMALL)" "Ir ($LARGE)" "Ir per upgrade"
for kind in $KINDS; do
    small=$(instructions "$kind" --count "$SMALL")
    large=$(instructions "$kind" --count "$LARGE")
    PER[$kind]=$(( (large - small) / (LARGE - SMALL) ))
    printf '%-16s %14d %14d %16d\n' "$kind" "$small" "$large" "${PER[$kind]}"
done
if [[ -n "${PER[fastwebsockets]:-}" ]]; then
    for kind in $KINDS; do
        awk -v k="$kind" -v a="${PER[$kind]}" -v b="${PER[fastwebsockets]}" \
            'BEGIN { printf "%-16s %.3f x fastwebsockets in an axum Router\n", k, a / b }'
    done
fi

declare -A MSG
echo
printf '%-16s %14s %14s %16s\n' kind "Ir ($SMALL msgs)" "Ir ($LARGE msgs)" "Ir per message"
for kind in $KINDS; do
    small=$(instructions "$kind" --count 1 --messages "$SMALL")
    large=$(instructions "$kind" --count 1 --messages "$LARGE")
    MSG[$kind]=$(( (large - small) / (LARGE - SMALL) ))
    printf '%-16s %14d %14d %16d\n' "$kind" "$small" "$large" "${MSG[$kind]}"
done
if [[ -n "${MSG[fastwebsockets]:-}" ]]; then
    for kind in $KINDS; do
        awk -v k="$kind" -v a="${MSG[$kind]}" -v b="${MSG[fastwebsockets]}" \
            'BEGIN { printf "%-16s %.3f x fastwebsockets per echoed message\n", k, a / b }'
    done
fi
