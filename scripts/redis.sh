#!/usr/bin/env bash
# Redis for the hub's Redis backend tests (tests/redis.rs) and benchmark: installs it, starts
# throwaway servers on loopback, stops them by pid.
#
#   scripts/redis.sh install              redis-server and redis-cli from Debian's packages,
#                                         when missing (apt starts no service here)
#   scripts/redis.sh start DIR [PORT]     one server on 127.0.0.1:PORT (a free port when not
#                                         given), no persistence, files in DIR; prints
#                                         `port=P pid=N` once it answers PING
#   scripts/redis.sh cluster DIR          three servers in cluster mode on free ports, joined
#                                         with `redis-cli --cluster create`; prints one
#                                         `port=P pid=N` line per node once the cluster is ok
#   scripts/redis.sh stop PID...          stops servers by pid (SIGTERM, then SIGKILL)
#
# Every server is started with `--save '' --appendonly no` and bound to 127.0.0.1 only.
set -euo pipefail

log() { echo "redis.sh: $*" >&2; }
die() { log "$*"; exit 2; }

install() {
    if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
        return
    fi
    command -v apt-get >/dev/null 2>&1 || die "redis-server is missing and there is no apt-get"
    # Tests start servers in parallel: one installs, the others wait for it.
    exec 9>"${TMPDIR:-/tmp}/tower-websocket-redis-install.lock"
    flock -w 900 9 || die "waited 900 s for another redis.sh to install redis-server"
    if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
        return
    fi
    log "installing redis-server from Debian's packages"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server >/tmp/redis-apt.log 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >>/tmp/redis-apt.log 2>&1 || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server >>/tmp/redis-apt.log 2>&1 \
            || { tail -n 20 /tmp/redis-apt.log >&2; die "apt-get install redis-server failed"; }
    fi
}

# A free loopback port below 55536 whose cluster bus port (+10000) is free too.
free_port() {
    python3 - <<'PY'
import random, socket
for _ in range(200):
    port = random.randint(20000, 55535)
    try:
        for p in (port, port + 10000):
            s = socket.socket()
            s.bind(("127.0.0.1", p))
            s.close()
    except OSError:
        continue
    print(port)
    break
else:
    raise SystemExit("no free port")
PY
}

# start_one DIR PORT [extra redis-server args...]: prints the pid once PING is answered.
start_one() {
    local dir=$1 port=$2
    shift 2
    mkdir -p "$dir"
    rm -f "$dir/redis-$port.pid"
    redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
        --dir "$dir" --logfile "$dir/redis-$port.log" --pidfile "$dir/redis-$port.pid" \
        --daemonize yes "$@" >/dev/null
    for _ in $(seq 1 100); do
        if [ -s "$dir/redis-$port.pid" ] && redis-cli -p "$port" ping 2>/dev/null | grep -q PONG; then
            cat "$dir/redis-$port.pid"
            return
        fi
        sleep 0.05
    done
    tail -n 20 "$dir/redis-$port.log" >&2 || true
    die "redis-server on port $port did not answer within 5 s"
}

case "${1:-}" in
    install)
        install
        ;;
    start)
        [ $# -ge 2 ] || die "usage: redis.sh start DIR [PORT]"
        install
        port=${3:-$(free_port)}
        pid=$(start_one "$(realpath -m "$2")" "$port")
        echo "port=$port pid=$pid"
        ;;
    cluster)
        [ $# -ge 2 ] || die "usage: redis.sh cluster DIR"
        install
        dir=$(realpath -m "$2")
        ports=() lines=()
        for _ in 1 2 3; do
            port=$(free_port)
            pid=$(start_one "$dir" "$port" --cluster-enabled yes \
                --cluster-config-file "$dir/nodes-$port.conf" --cluster-node-timeout 2000)
            ports+=("$port") lines+=("port=$port pid=$pid")
        done
        redis-cli --cluster create "${ports[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes \
            >"$dir/cluster-create.log" 2>&1 || { cat "$dir/cluster-create.log" >&2; die "cluster create failed"; }
        for _ in $(seq 1 100); do
            if redis-cli -p "${ports[0]}" cluster info 2>/dev/null | grep -q 'cluster_state:ok'; then
                printf '%s\n' "${lines[@]}"
                exit 0
            fi
            sleep 0.05
        done
        die "the cluster did not reach cluster_state:ok within 5 s"
        ;;
    stop)
        shift
        for pid in "$@"; do
            kill "$pid" 2>/dev/null || continue
            for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || continue 2; sleep 0.05; done
            kill -9 "$pid" 2>/dev/null || true
        done
        ;;
    -h|--help|'')
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
        ;;
    *) die "unknown command: $1" ;;
esac
