#!/usr/bin/env bash
# Drives the examples' pages in headless Chromium (scripts/browser/run.mjs, with playwright-core).
#
#   scripts/browser.sh
#
# Installs what is missing, each step only when needed: Debian's `chromium` with apt-get when
# /usr/bin/chromium is absent (needs root, as on CI), and the pinned playwright-core of
# scripts/browser/package-lock.json into target/browser/node_modules with `npm ci` (again when
# the lock file changes). Playwright never downloads a browser: it drives /usr/bin/chromium.
# Then builds the examples (`cargo build --examples`, bounded by 1200 s) unless all three
# binaries are given, and, within `timeout 300`, runs the checks: each example is started on
# a free port with ADDR=127.0.0.1:PORT, its page opened and driven like a person would (chat
# between two browsers, the live plot's points and canvas, the echo page). Screenshots and the
# servers' logs go to target/browser/. The last line printed is `browser: N passed, M failed`;
# the exit status is non-zero when any check fails.
#
# Environment:
#   BROWSER_ECHO_BIN, BROWSER_CHAT_BIN, BROWSER_LIVE_PLOT_BIN
#                            the built examples to run (default: target/debug/examples/NAME,
#                            built here); when all three are set nothing is built
#   BROWSER_CHROMIUM         the Chromium binary (default /usr/bin/chromium)
#   BROWSER_CHECK_TIMEOUT    seconds each check may take (default 20)
#   BROWSER_ONLY             a comma-separated subset of the checks: chat,live_plot,echo
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
WORK="$TARGET_DIR/browser"
HERE="$ROOT/scripts/browser"
CHROMIUM=${BROWSER_CHROMIUM:-/usr/bin/chromium}

log() { echo "browser.sh: $*" >&2; }
fail() { echo "browser: 0 passed, 1 failed"; log "$*"; exit 2; }

case "${1:-}" in
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    '') ;;
    *) log "unknown argument: $1"; exit 2 ;;
esac

if [ -z "${BROWSER_UNDER_TIMEOUT:-}" ]; then
    mkdir -p "$WORK"

    # 1. Chromium, from Debian, when it is not there yet.
    if [ ! -x "$CHROMIUM" ]; then
        [ "$CHROMIUM" = /usr/bin/chromium ] || fail "BROWSER_CHROMIUM=$CHROMIUM is not an executable"
        command -v apt-get >/dev/null 2>&1 || fail "$CHROMIUM is missing and there is no apt-get to install it"
        [ "$(id -u)" = 0 ] || fail "$CHROMIUM is missing: install Debian's chromium (apt-get install chromium) as root"
        log "installing chromium with apt-get (log: $WORK/apt.log)"
        start=$SECONDS
        if ! { timeout 900 apt-get update -q \
                && DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q \
                    -o DPkg::Lock::Timeout=300 chromium; } \
                >"$WORK/apt.log" 2>&1 </dev/null; then
            tail -n 30 "$WORK/apt.log" >&2
            fail "apt-get install chromium failed"
        fi
        log "chromium installed in $((SECONDS - start)) s"
    fi

    # 2. playwright-core, pinned by the committed lock file, into target/browser.
    command -v node >/dev/null 2>&1 || fail "node not found"
    command -v npm >/dev/null 2>&1 || fail "npm not found"
    want=$(cat "$HERE/package.json" "$HERE/package-lock.json" | sha256sum | cut -d' ' -f1)
    STAMP="$WORK/node_modules/.lock.sha256"
    if [ ! -f "$WORK/node_modules/playwright-core/package.json" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
        log "installing playwright-core into $WORK with npm ci (log: $WORK/npm.log)"
        start=$SECONDS
        rm -rf "$WORK/node_modules"
        cp "$HERE/package.json" "$HERE/package-lock.json" "$WORK/"
        if ! (cd "$WORK" && timeout 300 npm ci --no-audit --no-fund --ignore-scripts) >"$WORK/npm.log" 2>&1 </dev/null; then
            tail -n 30 "$WORK/npm.log" >&2
            fail "npm ci (playwright-core) failed"
        fi
        echo "$want" >"$STAMP"
        log "playwright-core installed in $((SECONDS - start)) s"
    fi

    # 3. The examples, unless given.
    if [ -z "${BROWSER_ECHO_BIN:-}" ] || [ -z "${BROWSER_CHAT_BIN:-}" ] || [ -z "${BROWSER_LIVE_PLOT_BIN:-}" ]; then
        log "building the examples"
        timeout 1200 cargo build --quiet --examples </dev/null || fail "cargo build --examples failed"
    fi
    export BROWSER_ECHO_BIN=${BROWSER_ECHO_BIN:-$TARGET_DIR/debug/examples/echo}
    export BROWSER_CHAT_BIN=${BROWSER_CHAT_BIN:-$TARGET_DIR/debug/examples/chat}
    export BROWSER_LIVE_PLOT_BIN=${BROWSER_LIVE_PLOT_BIN:-$TARGET_DIR/debug/examples/live_plot}
    export BROWSER_WORK="$WORK" BROWSER_CHROMIUM="$CHROMIUM"

    BROWSER_UNDER_TIMEOUT=1 exec timeout -k 10 300 "${BASH_SOURCE[0]}" "$@"
fi

# Under `timeout 300`: run.mjs starts the servers (each in its own process group) and the
# browser, and ends them on every way out, a signal from `timeout` included.
exec node "$HERE/run.mjs" </dev/null
