#!/usr/bin/env bash
# Starts etcd, Redis and a Kafka-protocol broker (Tansu) on free loopback ports with
# throw-away data, for the test suite; or stops what it started.
#
#   eval "$(scripts/backends.sh start)"   # prints export lines: STARLING_TEST_ETCD, ...
#   scripts/backends.sh stop
#
# State (pids, data, logs) lives in $STARLING_BACKENDS_DIR (default: a fresh temp dir,
# remembered in .backends-dir), so nothing outside it is touched; the machine's own Redis
# on 6379 is left alone.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
marker="$root/.backends-dir"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_tcp() { # host port name log
  for _ in $(seq 1 150); do
    if python3 -c "import socket,sys; socket.create_connection(('$1',$2),0.2)" 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  echo "backends: $3 did not start on $1:$2; its log:" >&2
  tail -n 30 "$4" >&2 || true
  return 1
}

start() {
  dir=${STARLING_BACKENDS_DIR:-$(mktemp -d -t starling-backends.XXXXXX)}
  mkdir -p "$dir"
  echo "$dir" > "$marker"

  etcd_port=$(free_port); peer_port=$(free_port)
  etcd --name ci --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "ci=http://127.0.0.1:$peer_port" --log-level warn >"$dir/etcd.log" 2>&1 &
  echo $! > "$dir/etcd.pid"

  redis_port=$(free_port)
  redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
    --dir "$dir" --logfile "$dir/redis.log" --daemonize no >/dev/null 2>&1 &
  echo $! > "$dir/redis.pid"

  kafka_port=$(free_port)
  tansu=$(python3 "$here/find-tansu.py")
  "$tansu" broker --storage-engine memory://tansu/ \
    --listener-url "tcp://127.0.0.1:$kafka_port" --advertised-listener-url "tcp://127.0.0.1:$kafka_port" \
    >"$dir/tansu.log" 2>&1 &
  echo $! > "$dir/tansu.pid"

  wait_tcp 127.0.0.1 "$etcd_port" etcd "$dir/etcd.log"
  wait_tcp 127.0.0.1 "$redis_port" redis "$dir/redis.log"
  wait_tcp 127.0.0.1 "$kafka_port" tansu "$dir/tansu.log"
  echo "export STARLING_TEST_ETCD=http://127.0.0.1:$etcd_port"
  echo "export STARLING_TEST_REDIS=redis://127.0.0.1:$redis_port"
  echo "export STARLING_TEST_KAFKA=127.0.0.1:$kafka_port"
  echo "backends: etcd :$etcd_port, redis :$redis_port, kafka (tansu) :$kafka_port; logs in $dir" >&2
}

stop() {
  [ -f "$marker" ] || return 0
  dir=$(cat "$marker")
  for name in tansu redis etcd; do
    if [ -f "$dir/$name.pid" ]; then
      pid=$(cat "$dir/$name.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
  done
  rm -rf "$dir" "$marker"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
