#!/usr/bin/env bash
# Builds the integration suite (and the CLI it drives) with ThreadSanitizer in its own
# build folder and runs it; prints the number of ThreadSanitizer reports and fails when
# there is any, or when a test fails.
# usage: tools/tsan.sh [BUILD_DIR] [doctest args...]
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$root/build-tsan}
shift || true
jobs=${JOBS:-2}
flags="-fsanitize=thread -g -O1"
mkdir -p "$bin"
cmake -S "$root" -B "$bin" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DP2PRC_BUILD_BENCH=OFF \
      -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=thread" \
      >"$bin/configure.log" 2>&1 || { tail -n 30 "$bin/configure.log"; exit 1; }
cmake --build "$bin" --target integration_tests p2prc_cli -j "$jobs" || exit 1

log="$bin/tsan-integration.log"
# TSan's runtime cannot map its shadow memory under some address-space layouts ("CHECK
# failed"); without randomisation it always can.
run=()
if command -v setarch >/dev/null 2>&1 && setarch "$(uname -m)" -R true 2>/dev/null; then
    run=(setarch "$(uname -m)" -R)
fi
# A TSan-built CLI exits 66 on a report; reports land in the log either way.
TSAN_OPTIONS="halt_on_error=0 exitcode=66 second_deadlock_stack=1 suppressions=$root/tools/tsan.supp ${TSAN_OPTIONS:-}" \
    "${run[@]}" "$bin/tests/integration_tests" "$@" >"$log" 2>&1
status=$?
reports=$(grep -c '^WARNING: ThreadSanitizer' "$log")
tail -n 4 "$log"
echo "tsan: $reports ThreadSanitizer report(s); integration suite exit status $status (log: $log)"
[ "$reports" -eq 0 ] && [ "$status" -eq 0 ]
