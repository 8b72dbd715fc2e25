#!/usr/bin/env bash
# Runs every test: installs the backends if missing, starts etcd, Redis and the Kafka-protocol
# broker on loopback, runs `cargo test --workspace`, and stops what it started.
# Extra arguments go to cargo test (e.g. `scripts/test.sh --test mesh_etcd`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
# Python tools in a virtual environment when the system Python is externally managed.
if [ -x target/py/bin/python3 ]; then export PATH="$PWD/target/py/bin:$PATH"; fi
trap 'bash scripts/backends.sh stop' EXIT
eval "$(bash scripts/backends.sh start)"
cargo test --workspace "$@"
