#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ one after the other, SECONDS each
# (default 60), and fails if any of them crashed (a panic, a failed
# assertion, a sanitizer report, a timeout or out-of-memory).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]    # default: every target
#
# Installs what it needs if missing: the nightly toolchain (minimal
# profile, through rustup) and cargo-fuzz 0.13.2. Builds every target once
# (sanitizer flags, into fuzz/target), then runs each on its committed
# seeds (fuzz/corpus/<target>, read only) plus a scratch corpus
# (fuzz/target/corpus/<target>, kept between runs, where libFuzzer adds
# what it finds). A crashing input lands in fuzz/artifacts/<target>/;
# logs in fuzz/target/logs/<target>.log. Environment: FUZZ_JOBS (targets
# run at once, default 1), FUZZ_ARGS (more libFuzzer flags, e.g.
# `-runs=10000000`).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
[ $# -gt 0 ] && shift
case "$seconds" in
  '' | *[!0-9]*) echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...]" >&2; exit 2 ;;
esac

if ! cargo +nightly --version >/dev/null 2>&1; then
  command -v rustup >/dev/null || { echo "fuzzing needs rustup (for the nightly toolchain)" >&2; exit 1; }
  echo "installing the nightly toolchain (minimal profile)" >&2
  rustup toolchain install nightly --profile minimal
fi
if [ "$(cargo fuzz --version 2>/dev/null || true)" != "cargo-fuzz 0.13.2" ]; then
  echo "installing cargo-fuzz 0.13.2" >&2
  cargo install cargo-fuzz --locked --version 0.13.2
fi

cd fuzz
if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

# Link Debian's libzstd (libzstd-dev) instead of compiling zstd's C
# sources, when it is there: 74 s of CPU less per fresh build. The C
# library is not instrumented either way (the sanitizer flags are rustc's).
if pkg-config --exists libzstd 2>/dev/null; then
  export ZSTD_SYS_USE_PKG_CONFIG=1
fi

start=$(date +%s)
if [ $# -gt 0 ]; then
  for t in "${targets[@]}"; do cargo +nightly fuzz build "$t"; done
else
  cargo +nightly fuzz build
fi
echo "built in $(($(date +%s) - start)) s" >&2

mkdir -p target/logs
run_one() {
  local t=$1 log=target/logs/$1.log
  mkdir -p "target/corpus/$t" "corpus/$t"
  rm -f "target/logs/$t.status"
  # -timeout: one input taking longer is a hang; -rss_limit_mb: a decoder
  # may hold a few hundred MiB for a batch at its limits, never 2 GiB.
  if cargo +nightly fuzz run "$t" "target/corpus/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -timeout=30 -rss_limit_mb=2048 \
    -print_final_stats=1 ${FUZZ_ARGS:-} >"$log" 2>&1; then
    local runs secs
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n 1)
    printf '%-20s ok     %10s runs %5s s %8s exec/s\n' "$t" "${runs:-?}" "${secs:-?}" \
      "$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)"
  else
    printf '%-20s CRASH  (log: fuzz/%s, input: fuzz/artifacts/%s/)\n' "$t" "$log" "$t"
    grep -E -m 5 'panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer|Test unit written' "$log" | sed 's/^/    /' || true
    return 1
  fi
}

failed=()
jobs=${FUZZ_JOBS:-1}
for t in "${targets[@]}"; do
  if [ "$jobs" -le 1 ]; then
    run_one "$t" || failed+=("$t")
  else
    # A few at a time (each libFuzzer process uses one core).
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
    (
      rc=0
      run_one "$t" >"target/logs/$t.summary" || rc=$?
      echo "$rc" >"target/logs/$t.status"
    ) &
  fi
done
if [ "$jobs" -gt 1 ]; then
  wait
  for t in "${targets[@]}"; do
    cat "target/logs/$t.summary"
    [ "$(cat "target/logs/$t.status")" = 0 ] || failed+=("$t")
  done
fi

echo "fuzzed ${#targets[@]} targets, ${seconds} s each, in $(($(date +%s) - start)) s (build included)" >&2
if [ ${#failed[@]} -gt 0 ]; then
  echo "CRASHED: ${failed[*]} (reproduce: cd fuzz && cargo +nightly fuzz run TARGET artifacts/TARGET/crash-...)" >&2
  exit 1
fi
