#!/usr/bin/env bash
# The full test suite: unit, property, CLI and end-to-end tests (real
# processes and sockets on 127.0.0.1, real RocksDB), then every fuzz target
# for a short while (README, "Fuzzing"; a crash fails the suite).
#
#   scripts/test.sh             # everything
#   scripts/test.sh ARGS...     # cargo test --workspace ARGS... only (no fuzzing)
#
# OUTPOST_FUZZ_SECONDS: seconds per fuzz target (default 10; 0 skips
# fuzzing); FUZZ_JOBS: targets fuzzed at once (default 2, one per core).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh --test
cargo test --workspace "$@"

fuzz_seconds=${OUTPOST_FUZZ_SECONDS:-10}
if [ $# -eq 0 ] && [ "$fuzz_seconds" != 0 ]; then
  FUZZ_JOBS=${FUZZ_JOBS:-2} scripts/fuzz.sh "$fuzz_seconds"
fi
