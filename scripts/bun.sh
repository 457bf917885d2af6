#!/usr/bin/env bash
# Bun for the fan-out benchmark's `bun` server (bench/bun/fanout.js): installs the version
# pinned in bench/bun/package.json and package-lock.json from the npm registry into target/bun,
# and prints the path of the binary (the last line of stdout).
#
#   scripts/bun.sh
#
# Idempotent: `npm ci` runs only when target/bun has no working binary or the lock file
# changed since the last install. Exits non-zero, saying why on stderr, when npm is missing or
# the install fails; `bench run --scenario fanout` then skips the `bun` kind and says so.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HERE="$ROOT/bench/bun"
WORK="$ROOT/target/bun"
BIN="$WORK/node_modules/.bin/bun"

log() { echo "bun.sh: $*" >&2; }
die() { log "$*"; exit 2; }

case "${1:-}" in
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    '') ;;
    *) die "unknown argument: $1" ;;
esac

want=$(sha256sum "$HERE/package-lock.json" | cut -d' ' -f1)
STAMP="$WORK/.package-lock.sha256"
if [ -x "$BIN" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ] && "$BIN" --version >/dev/null 2>&1; then
    echo "$BIN"
    exit 0
fi

command -v npm >/dev/null 2>&1 || die "npm not found: install Node.js and npm (Debian: apt-get install npm) to run the bun kind"
mkdir -p "$WORK"
# Two benchmark runs may install at once: one installs, the other waits for it.
exec 9>"$WORK/.install.lock"
flock -w 600 9 || die "waited 600 s for another bun.sh to install Bun"
if [ -x "$BIN" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ] && "$BIN" --version >/dev/null 2>&1; then
    echo "$BIN"
    exit 0
fi
log "installing bun $(sed -n 's/.*"bun": *"\([^"]*\)".*/\1/p' "$HERE/package.json") from the npm registry into $WORK"
cp "$HERE/package.json" "$HERE/package-lock.json" "$WORK/"
rm -rf "$WORK/node_modules"
if ! (cd "$WORK" && timeout 600 npm ci --no-audit --no-fund) >"$WORK/npm-ci.log" 2>&1; then
    tail -n 20 "$WORK/npm-ci.log" >&2
    die "npm ci failed (log: $WORK/npm-ci.log)"
fi
"$BIN" --version >/dev/null 2>&1 || die "$BIN does not run after npm ci (log: $WORK/npm-ci.log)"
echo "$want" >"$STAMP"
log "bun $("$BIN" --version) installed"
echo "$BIN"
