#!/usr/bin/env bash
# Drives examples/echo.rs with the Python `websockets` client (scripts/python_client/test_echo.py).
#
#   scripts/python-client.sh
#
# Builds the example (`cargo build --example echo`, bounded by 1200 s), then, all within
# `timeout 300`: creates target/pyclient/venv (python3 + the pinned websockets from
# scripts/python_client/requirements.txt; reused while the pins are unchanged), starts
# `cargo run --quiet --example echo` with ADDR=127.0.0.1:<free port>, runs the checks and exits
# non-zero when any fails. The last line printed is `python-client: N passed, M failed`.
#
# Environment:
#   PY_CLIENT_SERVER_CMD     shell command that starts the server instead of
#                            `cargo run --quiet --example echo` (no cargo build then); it gets
#                            ADDR=127.0.0.1:PORT
#   PY_CLIENT_START_TIMEOUT  seconds to wait for the server to accept connections (default 120)
#   PY_CLIENT_VERBOSE=1      print a traceback for each failing check
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
WORK="$ROOT/target/pyclient"
HERE="$ROOT/scripts/python_client"

log() { echo "python-client.sh: $*" >&2; }
die() { log "$*"; exit 2; }

case "${1:-}" in
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    '') ;;
    *) die "unknown argument: $1" ;;
esac

if [ -z "${PY_CLIENT_UNDER_TIMEOUT:-}" ]; then
    # Compile the example first (a cold build on 2 cores can take minutes and should not eat
    # into the test's time), then re-run this script under `timeout 300`.
    if [ -z "${PY_CLIENT_SERVER_CMD:-}" ]; then
        log "building examples/echo.rs"
        timeout 1200 cargo build --quiet --example echo || { echo "python-client: 0 passed, 1 failed"; die "cargo build --example echo failed"; }
    fi
    PY_CLIENT_UNDER_TIMEOUT=1 exec timeout -k 10 300 "${BASH_SOURCE[0]}" "$@"
fi

mkdir -p "$WORK"
command -v python3 >/dev/null 2>&1 || die "python3 not found"

VENV="$WORK/venv" REQ="$HERE/requirements.txt"
STAMP="$VENV/.requirements.sha256"
want=$(sha256sum "$REQ" | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ] \
    || ! "$VENV/bin/python" -c 'import websockets.asyncio.client' 2>/dev/null; then
    log "installing $(tr '\n' ' ' <"$REQ")into $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    if ! "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQ" >"$WORK/pip-install.log" 2>&1; then
        tail -n 40 "$WORK/pip-install.log" >&2
        die "pip install -r $REQ failed"
    fi
    echo "$want" >"$STAMP"
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

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
SERVER_CMD=${PY_CLIENT_SERVER_CMD:-cargo run --quiet --example echo}
log "starting server: ADDR=127.0.0.1:$PORT $SERVER_CMD (log: $WORK/server.log)"
ADDR="127.0.0.1:$PORT" setsid bash -c "exec $SERVER_CMD" >"$WORK/server.log" 2>&1 </dev/null &
SERVER_PID=$!

START_TIMEOUT=${PY_CLIENT_START_TIMEOUT:-120}
deadline=$((SECONDS + START_TIMEOUT))
until (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        tail -n 40 "$WORK/server.log" >&2
        SERVER_PID=''
        echo "python-client: 0 passed, 1 failed"
        die "the server exited before it accepted connections"
    fi
    if [ $SECONDS -ge $deadline ]; then
        tail -n 40 "$WORK/server.log" >&2
        echo "python-client: 0 passed, 1 failed"
        die "the server did not accept connections on port $PORT within ${START_TIMEOUT} s"
    fi
    sleep 0.5
done

rc=0
"$VENV/bin/python" "$HERE/test_echo.py" "127.0.0.1:$PORT" || rc=$?
if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    log "the server exited during the checks; its log:"
    tail -n 40 "$WORK/server.log" >&2
    rc=1
fi
exit "$rc"
