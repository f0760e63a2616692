#!/usr/bin/env bash
# The checking build: the whole tree compiled by clang with AddressSanitizer and
# UndefinedBehaviorSanitizer (and libFuzzer's coverage), the test suite run in it, then every
# fuzz target for a bounded time on its seed corpus.
#
#   bash .ci/check-build.sh                    # FLOWLAB_FUZZ_SECONDS per target (default 60)
#   FLOWLAB_FUZZ_SECONDS=600 bash .ci/check-build.sh
#
# A fuzzer's finding (crash, leak, timeout, out-of-memory) fails the run; the input that
# triggered it is kept as build-check/fuzz-findings/NAME/crash-* to reproduce with
#   build-check/tests/fuzz/fuzz_NAME build-check/fuzz-findings/NAME/crash-...
set -euo pipefail
cd "$(dirname "$0")/.."
build=${FLOWLAB_CHECK_BUILD_DIR:-build-check}
seconds=${FLOWLAB_FUZZ_SECONDS:-60}

CC=clang CXX=clang++ cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DFLOWLAB_SANITIZE=address,undefined -DFLOWLAB_FUZZ=ON "-DFLOWLAB_TEST_SPEC=~[slow]~[.]" >/dev/null
cmake --build "$build" -j2 --target all flowlab_fuzzers | grep -vE '^\[[0-9]+/[0-9]+\] ' || true
test -x "$build/bin/flowlab_tests" || { echo "check-build: the sanitizer build failed"; exit 1; }

# Leaks count; the plugins are never unloaded by design, so their code stays mapped.
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
echo "check-build: the test suite under ASan + UBSan"
ctest --test-dir "$build" --output-on-failure -j2 -LE slow --timeout 1800 | grep -vE '^ *Start +[0-9]+:|Passed +[0-9.]+ sec$' 

echo "check-build: fuzzing each parser for $seconds s"
for target in config graph checkpoint plugin_header idx npy csv cifar; do
  work="$build/fuzz-corpus/$target"
  findings="$build/fuzz-findings/$target"
  mkdir -p "$work" "$findings"
  # The built plugin libraries and fixtures are real ELF seeds for the plugin-header check.
  [[ $target == plugin_header ]] && cp -f "$build"/tests/fixtures/*.so "$build"/lib/flowlab/plugins/*.so "$work"/ 2>/dev/null || true
  if ! "$build/tests/fuzz/fuzz_$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$findings/" "$work" "tests/fuzz/corpus/$target" \
        >"$findings/log.txt" 2>&1; then
    tail -n 40 "$findings/log.txt"
    echo "check-build: fuzz_$target found a problem; its input is in $findings"
    exit 1
  fi
  runs=$(grep -oE '^Done [0-9]+ runs' "$findings/log.txt" | grep -oE '[0-9]+' || echo "?")
  echo "check-build: fuzz_$target: $runs inputs in $seconds s, no finding"
done
echo "check-build: sanitizer suite and fuzzers pass"
