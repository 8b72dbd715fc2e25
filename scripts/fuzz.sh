#!/usr/bin/env bash
# A long fuzzing run of the property tests (named `fuzz_*`): text validation, user names
# and page tokens, tweet ids, grpc-timeout parsing, and random bodies, ids and page tokens
# against every JSON route of a running gateway. The default test run does 256 cases of
# each; this does PROPTEST_CASES (default 20,000). Embedded backends only: nothing to start.
#   scripts/fuzz.sh            # 20,000 cases each
#   PROPTEST_CASES=200000 scripts/fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PROPTEST_CASES=${PROPTEST_CASES:-20000}
cargo test --release --workspace fuzz_ -- --nocapture
