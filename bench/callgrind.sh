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
# Then one publish to many subscribers (`bench publish-cost`): SUBSCRIBERS in-memory sockets served
# by the layer, each subscribed to one topic of a Hub, and PUB_SMALL and PUB_LARGE publishes of a
# 20-byte message, each read by every subscriber's client before the next; the difference over
# SUBSCRIBERS x (PUB_LARGE - PUB_SMALL) is the cost of one delivered message: the publish, the
# connection task's write and the client's read. With PUBLISH_DEFLATE=1, also 1 KiB compressible
# messages to subscribers that agreed on permessage-deflate, without context takeover (one
# compression per publish, shared) and with it (one per subscriber); these runs are slower.
# The row publish-20B-burst is the same with the publishes BURST at a time, back to back, before
# the subscribers' tasks run (`--burst`), as publishes arrive under load.
#
# Usage: bench/callgrind.sh            (SMALL=200 LARGE=2200 KINDS="layer fastwebsockets axum-ws"
#                                       SUBSCRIBERS=1000 PUB_SMALL=20 PUB_LARGE=220 BURST=16
#                                       PUBLISH_DEFLATE=0)
set -euo pipefail
cd "$(dirname "$0")/.."

SMALL=${SMALL:-200}
LARGE=${LARGE:-2200}
KINDS=${KINDS:-"layer fastwebsockets axum-ws"}
SUBSCRIBERS=${SUBSCRIBERS:-1000}
PUB_SMALL=${PUB_SMALL:-20}
PUB_LARGE=${PUB_LARGE:-220}
BURST=${BURST:-16}
PUBLISH_DEFLATE=${PUBLISH_DEFLATE:-0}
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

# Total instructions (Ir) of one run of `bench upgrade-cost`.
instructions() {
    bench_instructions upgrade-cost "$@"
}

# Total instructions (Ir) of one run of a bench subcommand.
bench_instructions() {
    local out
    out=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        "$BIN" "$@" 2>&1) || { echo "$out" >&2; return 1; }
    echo "$out" | sed -n 's/^==[0-9]*== Collected : \([0-9]*\)$/\1/p'
}

# One table: for each kind, the instructions of a run with SMALL and with LARGE units of work,
# the cost of one unit, and its ratio to fastwebsockets. $1 follows the counts in the column
# heads, $2 names the unit, $3 ends the ratio lines; the rest are `upgrade-cost`'s arguments,
# where the word N stands for the number of units.
table() {
    local suffix=$1 unit=$2 ratio_label=$3
    shift 3
    local -A per=()
    local kind small large
    printf '%-16s %14s %14s %16s\n' kind "Ir ($SMALL$suffix)" "Ir ($LARGE$suffix)" "Ir per $unit"
    for kind in $KINDS; do
        small=$(instructions "$kind" "${@/#N/$SMALL}")
        large=$(instructions "$kind" "${@/#N/$LARGE}")
        per[$kind]=$(( (large - small) / (LARGE - SMALL) ))
        printf '%-16s %14d %14d %16d\n' "$kind" "$small" "$large" "${per[$kind]}"
    done
    if [[ -n "${per[fastwebsockets]:-}" ]]; then
        for kind in $KINDS; do
            awk -v k="$kind" -v a="${per[$kind]}" -v b="${per[fastwebsockets]}" -v l="$ratio_label" \
                'BEGIN { printf "%-16s %.3f x fastwebsockets %s\n", k, a / b, l }'
        done
    fi
}

table "" upgrade "in an axum Router" --count N
echo
table " msgs" message "per echoed message" --count 1 --messages N
echo
# One row of the publish table: $1 names it, the rest are `publish-cost`'s arguments.
publish_row() {
    local name=$1 small large
    shift
    small=$(bench_instructions publish-cost --subscribers "$SUBSCRIBERS" --publishes "$PUB_SMALL" "$@")
    large=$(bench_instructions publish-cost --subscribers "$SUBSCRIBERS" --publishes "$PUB_LARGE" "$@")
    printf '%-22s %14d %14d %16d\n' "$name" "$small" "$large" \
        $(( (large - small) / (SUBSCRIBERS * (PUB_LARGE - PUB_SMALL)) ))
}
printf '%-22s %14s %14s %16s\n' "publish to $SUBSCRIBERS" "Ir ($PUB_SMALL pubs)" \
    "Ir ($PUB_LARGE pubs)" "Ir per delivery"
publish_row publish-20B --size 20
# PUB_SMALL and PUB_LARGE rounded up to multiples of BURST, as `--burst` does.
PUB_SMALL=$(( (PUB_SMALL + BURST - 1) / BURST * BURST )) PUB_LARGE=$(( (PUB_LARGE + BURST - 1) / BURST * BURST )) \
    publish_row publish-20B-burst --size 20 --burst "$BURST"
if [[ "$PUBLISH_DEFLATE" == 1 ]]; then
    publish_row publish-1KiB --size 1024
    publish_row publish-1KiB-shared --size 1024 --deflate shared
    publish_row publish-1KiB-takeover --size 1024 --deflate takeover
fi
