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
#
# RUST_TEST_THREADS: tests run at once in each test binary (default 4 on
# any machine). Most end-to-end tests wait on processes, sockets and
# timers, not the CPU (the suite keeps 2 cores ~85% idle at 2 threads), so
# 4 at once halves its wall time on 2 cores; the tests that load the
# machine take turns (outpost_tests::load_test_slot).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh --test
export RUST_TEST_THREADS=${RUST_TEST_THREADS:-4}
cargo test --workspace "$@"

fuzz_seconds=${OUTPOST_FUZZ_SECONDS:-10}
if [ $# -eq 0 ] && [ "$fuzz_seconds" != 0 ]; then
  FUZZ_JOBS=${FUZZ_JOBS:-2} scripts/fuzz.sh "$fuzz_seconds"
fi
