#!/usr/bin/env bash
# Drives examples/echo.rs, with the legacy drafts on (WS_LEGACY=1), with Perl's
# Protocol::WebSocket speaking hixie-76 and hixie-75 (scripts/perl_client/legacy_echo.pl).
#
#   scripts/perl-client.sh
#
# Builds the example (`cargo build --features hixie76 --example echo`, bounded by 1200 s),
# then, all within `timeout 300`: installs the Debian package libprotocol-websocket-perl when
# Protocol::WebSocket is missing (apt-get update + apt-get install, which needs root), starts
# the example with ADDR=127.0.0.1:<free port> and WS_LEGACY=1, runs the checks and exits
# non-zero when any fails. The last line printed is `perl-client: N passed, M failed`.
#
# Environment:
#   PERL_CLIENT_SERVER_CMD     shell command that starts the server instead of
#                              `cargo run --quiet --features hixie76 --example echo` (no cargo
#                              build then); it gets ADDR=127.0.0.1:PORT and WS_LEGACY=1
#   PERL_CLIENT_START_TIMEOUT  seconds to wait for the server to accept connections (default 120)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
WORK="$ROOT/target/perlclient"
HERE="$ROOT/scripts/perl_client"

log() { echo "perl-client.sh: $*" >&2; }
die() { log "$*"; exit 2; }

case "${1:-}" in
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    '') ;;
    *) die "unknown argument: $1" ;;
esac

if [ -z "${PERL_CLIENT_UNDER_TIMEOUT:-}" ]; then
    # Compile the example first (a cold build can take minutes and should not eat into the
    # checks' time), then re-run this script under `timeout 300`.
    if [ -z "${PERL_CLIENT_SERVER_CMD:-}" ]; then
        log "building examples/echo.rs with the hixie76 feature"
        timeout 1200 cargo build --quiet --features hixie76 --example echo || { echo "perl-client: 0 passed, 1 failed"; die "cargo build --example echo failed"; }
    fi
    PERL_CLIENT_UNDER_TIMEOUT=1 exec timeout -k 10 300 "${BASH_SOURCE[0]}" "$@"
fi

mkdir -p "$WORK"
command -v perl >/dev/null 2>&1 || die "perl not found"
if ! perl -MProtocol::WebSocket -e1 2>/dev/null; then
    log "installing libprotocol-websocket-perl (apt)"
    SUDO=''
    [ "$(id -u)" -eq 0 ] || SUDO='sudo -n'
    if ! { $SUDO apt-get update && $SUDO apt-get install -y --no-install-recommends libprotocol-websocket-perl; } >"$WORK/apt-install.log" 2>&1; then
        tail -n 40 "$WORK/apt-install.log" >&2
        echo "perl-client: 0 passed, 1 failed"
        die "cannot install libprotocol-websocket-perl"
    fi
fi

SERVER_PID=''
cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        # The server runs in its own process group (setsid): end the group we started.
        kill -TERM -- "-$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$SERVER_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

PORT=$(perl -MIO::Socket::INET -e 'print IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => 0, Listen => 1)->sockport')
SERVER_CMD=${PERL_CLIENT_SERVER_CMD:-cargo run --quiet --features hixie76 --example echo}
log "starting server: ADDR=127.0.0.1:$PORT WS_LEGACY=1 $SERVER_CMD (log: $WORK/server.log)"
ADDR="127.0.0.1:$PORT" WS_LEGACY=1 setsid bash -c "exec $SERVER_CMD" >"$WORK/server.log" 2>&1 </dev/null &
SERVER_PID=$!

START_TIMEOUT=${PERL_CLIENT_START_TIMEOUT:-120}
deadline=$((SECONDS + START_TIMEOUT))
until (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        tail -n 40 "$WORK/server.log" >&2
        SERVER_PID=''
        echo "perl-client: 0 passed, 1 failed"
        die "the server exited before it accepted connections"
    fi
    if [ $SECONDS -ge $deadline ]; then
        tail -n 40 "$WORK/server.log" >&2
        echo "perl-client: 0 passed, 1 failed"
        die "the server did not accept connections on port $PORT within ${START_TIMEOUT} s"
    fi
    sleep 0.5
done

rc=0
perl "$HERE/legacy_echo.pl" "127.0.0.1:$PORT" || rc=$?
if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    log "the server exited during the checks; its log:"
    tail -n 40 "$WORK/server.log" >&2
    rc=1
fi
# The close log of each draft connection, with its version.
grep -o 'version[^ ]*=[^ ]*76\|version[^ ]*=[^ ]*75' "$WORK/server.log" | sort | uniq -c | sed 's/\x1b\[[0-9;]*m//g' | sed 's/^/perl-client.sh: close log: /' >&2 || true
exit "$rc"
