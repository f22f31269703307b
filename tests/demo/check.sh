#!/usr/bin/env bash
# ctest "demo": runs tools/demo.sh on loopback with the CLI already built (no install, no
# build) and checks that it tells the whole story, that what came through the relay is
# what delta served, and that it leaves nothing behind: no process, no temporary file.
# Then starts it again and stops it with SIGTERM halfway: the same must hold.
# usage: check.sh SOURCE_DIR CLI WORK_DIR
set -uo pipefail
src=$(cd "$1" && pwd)
cli=$2
work=$3
rm -rf "$work" && mkdir -p "$work/tmp"

failures=0
check() {  # description, then a command that must succeed
    local what=$1
    shift
    if "$@"; then
        echo "ok: $what"
    else
        echo "FAILED: $what"
        failures=$((failures + 1))
    fi
}

# Every process the demo starts inherits this variable: any process still carrying it
# once the demo has exited is a leftover.
leftovers() {  # tag
    local f out=''
    for f in /proc/[0-9]*/environ; do
        if grep -qzx "P2PRC_DEMO_CHECK=$1" "$f" 2>/dev/null; then
            out+=" $(basename "$(dirname "$f")")"
        fi
    done
    echo "$out"
}
no_leftovers() {  # tag
    local left
    for _ in $(seq 20); do  # a process being reaped may take a moment to vanish
        left=$(leftovers "$1")
        [ -z "$left" ] && return 0
        sleep 0.1
    done
    echo "still running:$left" >&2
    for pid in $left; do tr '\0' ' ' <"/proc/$pid/cmdline" >&2 2>/dev/null; echo >&2; done
    return 1
}
empty_dir() { [ -z "$(ls -A "$1")" ] || { ls -A "$1" >&2; return 1; }; }

run_demo() {  # tag, output file; the demo in the background, its pid in $demo_pid
    env P2PRC_DEMO_CHECK="$1" P2PRC_DEMO_MODE=loopback P2PRC_DEMO_BUILD=0 P2PRC_CLI="$cli" \
        TMPDIR="$work/tmp" bash "$src/tools/demo.sh" >"$2" 2>&1 &
    demo_pid=$!
}
wait_bounded() {  # pid, seconds: its exit code, or 124 after killing it when too slow
    local pid=$1
    for _ in $(seq $(($2 * 10))); do
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid"
            return
        fi
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return 124
}

echo "== the whole demo"
tag=check-$$-$RANDOM
out=$work/demo.txt
start=$(date +%s)
run_demo "$tag" "$out"
wait_bounded "$demo_pid" 120
rc=$?
echo "demo exited with $rc after $(($(date +%s) - start)) s; its output:"
head -c 20000 "$out"
check "exit code 0" test "$rc" = 0
check "eight steps announced" grep -q '^\[8/8\] The final table' "$out"
check "delta learned the other servers" grep -q 'contacted 3 servers' "$out"
check "gamma was pruned" grep -q 'pruned gamma (127.0.0.1:[0-9]*): ' "$out"
check "a relay was chosen from the table" grep -qE '^relay chosen: (alpha|beta) at 127\.0\.0\.1:[0-9]+' "$out"
check "the greeting came through the relay" grep -qE '^Hello from delta, reached through a relay\. \([0-9a-f]{12}\)$' "$out"
check "byte-exact through the relay" grep -q '^byte-exact: hello.txt (58 bytes) and blob.bin (262144 bytes) match' "$out"
check "no process left" no_leftovers "$tag"
check "no temporary file left" empty_dir "$work/tmp"

echo "== stopped halfway with SIGTERM"
tag=check-$$-$RANDOM
out=$work/demo-term.txt
run_demo "$tag" "$out"
for _ in $(seq 300); do
    grep -q '^\[2/8\]' "$out" 2>/dev/null && break
    kill -0 "$demo_pid" 2>/dev/null || break
    sleep 0.1
done
kill -TERM "$demo_pid"
wait_bounded "$demo_pid" 30
rc=$?
head -c 4000 "$out"
check "nodes were running when it was stopped" grep -q 'serving on' "$out"
check "exit code 143 (SIGTERM)" test "$rc" = 143
check "no process left" no_leftovers "$tag"
check "no temporary file left" empty_dir "$work/tmp"

if [ "$failures" -gt 0 ]; then
    echo "demo: $failures checks failed"
    exit 1
fi
echo "demo: all checks passed"
