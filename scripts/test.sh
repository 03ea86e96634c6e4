#!/usr/bin/env bash
# The full test suite: unit, property, CLI and end-to-end tests (real
# processes and sockets on 127.0.0.1, real RocksDB).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh --test
exec cargo test --workspace "$@"
