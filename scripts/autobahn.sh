#!/usr/bin/env bash
# Runs the Autobahn TestSuite (wstest fuzzingclient) against examples/echo.rs and summarizes it.
#
#   scripts/autobahn.sh [--cases '1.*,2.*'] [--exclude '12.*,13.*'] [--strict]
#                       [--shards N] [--limit SECONDS]
#
# Defaults: cases 1.* .. 10.* (no category 8 exists), nothing excluded, 2 wstest processes
# (AUTOBAHN_SHARDS), a 900 s limit on the suite's run (AUTOBAHN_TIMEOUT). Exits non-zero when
# any case's behavior or behaviorClose fails (see scripts/autobahn/summarize.py for the exact
# rule), or when the suite overruns its limit; with --strict, NON-STRICT results fail too.
# It prints `autobahn-time: N s of a L s limit`, and its last line is
# `autobahn: N passed, M failed`.
#
# Everything it installs or writes lives under target/autobahn/ and is reused on the next run:
#   venv/        Python 2.7 virtualenv with wstest (scripts/autobahn/requirements-py2.txt)
#   venv3/       Python 3 venv with kosoku, used only when no Python 2.7 is found
#   reports/     the last run's report: servers/ holds the merged index.json and one file
#                per case; shard-K/ the index.html of each wstest process
#   server.log   the echo server's output; wstest-K.log: each wstest process's output
#
# Environment:
#   AUTOBAHN_SERVER_CMD    shell command that starts the server instead of
#                          `cargo run --quiet --example echo` (no cargo build then); it gets
#                          ADDR=127.0.0.1:PORT
#   AUTOBAHN_PYTHON2       a Python 2.7 interpreter to use instead of searching for one
#   AUTOBAHN_RUNNER        wstest (default when Python 2.7 exists) or kosoku
#   AUTOBAHN_START_TIMEOUT seconds to wait for the server to accept connections (default 120;
#                          the example is compiled before, by `cargo build`, bounded by 1200 s)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
WORK="$ROOT/target/autobahn"
HERE="$ROOT/scripts/autobahn"
AGENT=tower-websocket

# Categories 1 to 10 (the suite has no category 8; kosoku refuses a pattern that matches nothing).
CASES='1.*,2.*,3.*,4.*,5.*,6.*,7.*,9.*,10.*'
EXCLUDE=''
STRICT=0
SHARDS=${AUTOBAHN_SHARDS:-2}
LIMIT=${AUTOBAHN_TIMEOUT:-900}

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }
log() { echo "autobahn.sh: $*" >&2; }
die() { log "$*"; exit 2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --cases) [ $# -ge 2 ] || die "--cases needs a value"; CASES=$2; shift 2 ;;
        --cases=*) CASES=${1#*=}; shift ;;
        --exclude) [ $# -ge 2 ] || die "--exclude needs a value"; EXCLUDE=$2; shift 2 ;;
        --exclude=*) EXCLUDE=${1#*=}; shift ;;
        --strict) STRICT=1; shift ;;
        --shards) [ $# -ge 2 ] || die "--shards needs a value"; SHARDS=$2; shift 2 ;;
        --limit) [ $# -ge 2 ] || die "--limit needs a value"; LIMIT=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

mkdir -p "$WORK"

# ---------------------------------------------------------------------------------------------
# Test-suite install (cached).

is_py27() { [ -x "$1" ] && "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (2, 7))' 2>/dev/null; }

find_python2() {
    local c
    if [ -n "${AUTOBAHN_PYTHON2:-}" ]; then
        is_py27 "$AUTOBAHN_PYTHON2" || die "AUTOBAHN_PYTHON2=$AUTOBAHN_PYTHON2 is not a Python 2.7"
        echo "$AUTOBAHN_PYTHON2"; return 0
    fi
    if command -v pyenv >/dev/null 2>&1; then
        local pyroot
        pyroot=$(pyenv root)
        for c in "$pyroot"/versions/2.7.18/bin/python2.7 "$pyroot"/versions/2.7*/bin/python2.7; do
            if is_py27 "$c"; then echo "$c"; return 0; fi
        done
    fi
    for c in python2.7 python2; do
        # pyenv shims exist even when the version is not installed, so test the interpreter.
        c=$(command -v "$c" 2>/dev/null) || continue
        if is_py27 "$c"; then echo "$c"; return 0; fi
    done
    return 1
}

need_c_compiler() {
    # wsaccel ships only a source distribution for Python 2.7: it needs a C compiler (the
    # Python headers come with pyenv's build). Install gcc from Debian only when none exists.
    if command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1; then return 0; fi
    command -v apt-get >/dev/null 2>&1 || die "no C compiler and no apt-get to install gcc"
    log "installing gcc (needed to build wsaccel)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev >/dev/null
}

stamp_of() { sha256sum "$1" | cut -d' ' -f1; }

setup_wstest() {
    local py2=$1 venv="$WORK/venv" req="$HERE/requirements-py2.txt"
    local stamp="$venv/.requirements.sha256"
    if [ -x "$venv/bin/wstest" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$(stamp_of "$req")" ] \
        && "$venv/bin/wstest" --help >/dev/null 2>&1; then
        WSTEST="$venv/bin/wstest"; return 0
    fi
    log "installing the Autobahn TestSuite into $venv (about 30 s)"
    local t0=$SECONDS boot="$WORK/bootstrap"
    # virtualenv 20.15.1 is the last one that creates Python 2.7 environments; keep it in its own
    # folder so that the pyenv interpreter's site-packages stay untouched.
    if ! PYTHONPATH="$boot" "$py2" -c 'import virtualenv' >/dev/null 2>&1; then
        if ! "$py2" -m pip --version >/dev/null 2>&1; then
            "$py2" -m ensurepip --user >/dev/null || die "$py2 has no pip and ensurepip failed"
        fi
        rm -rf "$boot"
        "$py2" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
            --target "$boot" virtualenv==20.15.1 2>&1 | grep -v DEPRECATION >&2 || true
        PYTHONPATH="$boot" "$py2" -c 'import virtualenv' >/dev/null 2>&1 \
            || die "could not install virtualenv==20.15.1 for $py2"
    fi
    need_c_compiler
    rm -rf "$venv"
    PYTHONPATH="$boot" "$py2" -m virtualenv --quiet --no-periodic-update -p "$py2" "$venv" >&2
    # The pinned set is resolved as is: pip adds only setuptools==44.0.0, which
    # autobahntestsuite pins itself. PYTHONWARNINGS silences the Python 2 end-of-life banner.
    if ! PYTHONWARNINGS=ignore "$venv/bin/pip" install --quiet --disable-pip-version-check \
        --no-python-version-warning -r "$req" >"$WORK/pip-install.log" 2>&1; then
        tail -n 40 "$WORK/pip-install.log" >&2
        die "pip install -r $req failed (full log: $WORK/pip-install.log)"
    fi
    "$venv/bin/wstest" --help >/dev/null 2>&1 || die "wstest does not start after the install"
    stamp_of "$req" >"$stamp"
    log "installed wstest in $((SECONDS - t0)) s"
    WSTEST="$venv/bin/wstest"
}

setup_kosoku() {
    local venv="$WORK/venv3" req="$HERE/requirements-py3.txt"
    local stamp="$venv/.requirements.sha256"
    if [ -x "$venv/bin/kosoku" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$(stamp_of "$req")" ] \
        && "$venv/bin/kosoku" --help >/dev/null 2>&1; then
        KOSOKU="$venv/bin/kosoku"; return 0
    fi
    command -v python3 >/dev/null 2>&1 || die "neither Python 2.7 nor python3 found"
    log "installing kosoku into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    if ! "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req" \
        >"$WORK/pip-install.log" 2>&1; then
        tail -n 40 "$WORK/pip-install.log" >&2
        die "pip install -r $req failed (full log: $WORK/pip-install.log)"
    fi
    "$venv/bin/kosoku" --help >/dev/null 2>&1 || die "kosoku does not start after the install"
    stamp_of "$req" >"$stamp"
    KOSOKU="$venv/bin/kosoku"
}

RUNNER=${AUTOBAHN_RUNNER:-}
if [ -z "$RUNNER" ]; then
    if PY2=$(find_python2); then RUNNER=wstest; else
        log "no Python 2.7 found: falling back to kosoku (Python 3)"; RUNNER=kosoku
    fi
fi
case "$RUNNER" in
    wstest) PY2=${PY2:-$(find_python2)} || die "AUTOBAHN_RUNNER=wstest but no Python 2.7 found"
            setup_wstest "$PY2" ;;
    kosoku) setup_kosoku ;;
    *) die "AUTOBAHN_RUNNER must be wstest or kosoku, not $RUNNER" ;;
esac

# ---------------------------------------------------------------------------------------------
# Server under test.

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

if [ -z "${AUTOBAHN_SERVER_CMD:-}" ]; then
    # Compile first, so a compile error shows as such and a cold build (minutes on 2 cores)
    # does not count against the start timeout.
    log "building examples/echo.rs"
    timeout 1200 cargo build --quiet --example echo || die "cargo build --example echo failed"
fi
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
SERVER_CMD=${AUTOBAHN_SERVER_CMD:-cargo run --quiet --example echo}
log "starting server: ADDR=127.0.0.1:$PORT $SERVER_CMD (log: $WORK/server.log)"
ADDR="127.0.0.1:$PORT" setsid bash -c "exec $SERVER_CMD" >"$WORK/server.log" 2>&1 </dev/null &
SERVER_PID=$!

START_TIMEOUT=${AUTOBAHN_START_TIMEOUT:-120}
deadline=$((SECONDS + START_TIMEOUT))
until (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        tail -n 40 "$WORK/server.log" >&2
        SERVER_PID=''
        die "the server exited before it accepted connections"
    fi
    [ $SECONDS -lt $deadline ] || { tail -n 40 "$WORK/server.log" >&2; die "the server did not accept connections on port $PORT within ${START_TIMEOUT} s"; }
    sleep 0.5
done
log "server is up on 127.0.0.1:$PORT"

# ---------------------------------------------------------------------------------------------
# Run the suite.
#
# wstest is single-threaded Python 2 and is the bottleneck, not the server: the cases are dealt
# round-robin (in case order, so that every shard gets its share of the large ones) to SHARDS
# wstest processes, each with its own spec and report directory, against the one server; their
# reports are merged into one index.json afterwards.

OUTDIR="$WORK/reports/servers"
rm -rf "$WORK/reports"
mkdir -p "$OUTDIR"
t0=$SECONDS
rc=0
if [ "$RUNNER" = wstest ]; then
    # The concrete case ids, resolved by the suite's own pattern rules, dealt to the shards.
    SPECS=$(cd "$WORK" && PYTHONWARNINGS=ignore "$(dirname "$WSTEST")/python" - \
        "$WORK" "$AGENT" "ws://127.0.0.1:$PORT" "$CASES" "$EXCLUDE" "$SHARDS" <<'PY'
import json, sys
from autobahntestsuite.caseset import CaseSet
from autobahntestsuite.case import Cases, CaseCategories, CaseSubCategories
work, agent, url, cases, exclude, shards = sys.argv[1:]
split = lambda s: [c.strip() for c in s.split(",") if c.strip()]
ids = CaseSet("websocket", "Case", Cases, CaseCategories, CaseSubCategories).parseSpecCases(
    {"cases": split(cases), "exclude-cases": split(exclude)})
shards = max(1, min(int(shards), len(ids)))
for k in range(shards):
    spec = "%s/fuzzingclient-%d.json" % (work, k)
    with open(spec, "w") as f:
        json.dump({
            "outdir": "%s/reports/shard-%d" % (work, k),
            "servers": [{"agent": agent, "url": url}],
            "cases": ids[k::shards],
            "exclude-cases": [],
            "exclude-agent-cases": {},
        }, f, indent=2)
        f.write("\n")
    print(spec)
PY
    ) || die "could not resolve the cases $CASES (excluding ${EXCLUDE:-none})"
    [ -n "$SPECS" ] || die "the cases $CASES (excluding ${EXCLUDE:-none}) select nothing"
    pids=()
    k=0
    for spec in $SPECS; do
        log "running wstest -m fuzzingclient -s $spec (log: $WORK/wstest-$k.log)"
        (cd "$WORK" && PYTHONWARNINGS=ignore exec timeout "$LIMIT" "$WSTEST" -m fuzzingclient -s "$spec") \
            >"$WORK/wstest-$k.log" 2>&1 &
        pids+=($!)
        k=$((k + 1))
    done
    log "cases: $CASES (excluded: ${EXCLUDE:-none}) over $k wstest processes, limit $LIMIT s each"
    k=0
    for pid in "${pids[@]}"; do
        src=0
        wait "$pid" || src=$?
        log "wstest shard $k finished after $((SECONDS - t0)) s (exit $src)"
        if [ "$src" != 0 ]; then
            tail -n 20 "$WORK/wstest-$k.log" >&2
            [ "$src" != 124 ] || log "wstest shard $k hit its $LIMIT s limit (AUTOBAHN_TIMEOUT)"
            rc=$src
        fi
        k=$((k + 1))
    done
    if [ "$rc" = 0 ]; then
        python3 - "$OUTDIR" "$WORK"/reports/shard-* <<'PY' || rc=$?
import json, os, shutil, sys
out, shards = sys.argv[1], sys.argv[2:]
merged = {}
for d in shards:
    with open(os.path.join(d, "index.json")) as f:
        for agent, cases in json.load(f).items():
            merged.setdefault(agent, {}).update(cases)
    for name in os.listdir(d):
        if name != "index.json" and name != "index.html":
            shutil.copy(os.path.join(d, name), os.path.join(out, name))
with open(os.path.join(out, "index.json"), "w") as f:
    json.dump(merged, f, indent=2)
PY
    fi
    AGENT_ARGS=(--agent "$AGENT")
else
    args=()
    IFS=',' read -r -a inc <<<"$CASES"
    for c in "${inc[@]}"; do c=${c// /}; [ -z "$c" ] || args+=(-i "$c"); done
    IFS=',' read -r -a exc <<<"$EXCLUDE"
    for c in "${exc[@]}"; do c=${c// /}; [ -z "$c" ] || args+=(-x "$c"); done
    log "running kosoku -m fuzzingclient (cases: $CASES; excluded: ${EXCLUDE:-none}; log: $WORK/wstest.log)"
    timeout "$LIMIT" "$KOSOKU" -m fuzzingclient "ws://127.0.0.1:$PORT" "${args[@]}" -o "$OUTDIR" \
        >"$WORK/wstest.log" 2>&1 || rc=$?
    # kosoku exits 1 both when a case fails (after writing its report) and on an error.
    [ "$rc" != 1 ] || [ ! -f "$OUTDIR/index.json" ] || rc=0
    [ "$rc" = 0 ] || tail -n 40 "$WORK/wstest.log" >&2
    [ "$rc" != 124 ] || log "kosoku hit its $LIMIT s limit (AUTOBAHN_TIMEOUT)"
    AGENT_ARGS=()
fi
ELAPSED=$((SECONDS - t0))
SERVER_CPU=$(ps -o cputime= -p "$SERVER_PID" 2>/dev/null | tr -d ' ' || true)
log "test suite finished in $ELAPSED s (exit $rc; server CPU ${SERVER_CPU:-unknown}); HTML reports: $WORK/reports/"
if [ "$rc" != 0 ] || [ ! -f "$OUTDIR/index.json" ]; then
    echo "autobahn-time: $ELAPSED s of a $LIMIT s limit"
    echo "autobahn: 0 passed, 1 failed"
    die "the test suite did not produce a complete report (exit $rc)"
fi
echo "autobahn-time: $ELAPSED s of a $LIMIT s limit"

cleanup
SERVER_PID=''

STRICT_ARGS=()
[ "$STRICT" = 0 ] || STRICT_ARGS=(--strict)
python3 "$HERE/summarize.py" "$OUTDIR/index.json" "${AGENT_ARGS[@]}" "${STRICT_ARGS[@]}"
