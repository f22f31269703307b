#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (a separate build, sanitizers on) and runs each
# for a bounded time on a copy of its seed corpus. When clang++ or the libFuzzer runtime is
# missing it says why and exits 77, which ctest reports as "Skipped" (never as passed).
# usage: run.sh SOURCE_DIR BINARY_DIR [SECONDS_PER_TARGET]
set -u
src=$(cd "$1" && pwd)
bin=$2
secs=${3:-20}
cxx=${P2PRC_FUZZ_CXX:-clang++}

if ! command -v "$cxx" >/dev/null 2>&1; then
    echo "fuzz: skipped because $cxx is not installed"
    exit 77
fi
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
cat >"$probe/t.cpp" <<'CPP'
#include <cstddef>
#include <cstdint>
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t*, std::size_t) { return 0; }
CPP
if ! "$cxx" -fsanitize=fuzzer,address,undefined "$probe/t.cpp" -o "$probe/t" >"$probe/err" 2>&1; then
    echo "fuzz: skipped because $cxx cannot link -fsanitize=fuzzer (libFuzzer runtime missing):"
    head -c 400 "$probe/err"
    exit 77
fi

mkdir -p "$bin"
bin=$(cd "$bin" && pwd)
cmake -S "$src/tests/fuzz" -B "$bin" -DCMAKE_CXX_COMPILER="$cxx" \
      -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$bin/configure.log" 2>&1 ||
    { tail -n 30 "$bin/configure.log"; exit 1; }
cmake --build "$bin" -j 2 >"$bin/build.log" 2>&1 || { tail -n 40 "$bin/build.log"; exit 1; }

status=0
# target:seconds (the snappy decoder is optional machinery: half the time)
# (the table body, table file and config targets: half the time each, to keep the total short)
half=$(( (secs + 1) / 2 ))
for entry in "fuzz_frame_decoder:$secs" "fuzz_yamux_parser:$secs" "fuzz_snappy_decoder:$half" \
             "fuzz_v2_frame_decoder:$secs" "fuzz_v2_handshake:$secs" \
             "fuzz_table_body:$half" "fuzz_table_file:$half" "fuzz_config:$half"; do
    t=${entry%%:*}
    tsecs=${entry##*:}
    corpus="$bin/corpus-$t"
    rm -rf "$corpus" && mkdir -p "$corpus"
    cp "$src/tests/fuzz/corpus/$t/"* "$corpus/"
    log="$bin/$t.log"
    echo "fuzz: $t for ${tsecs}s"
    if "$bin/$t" -max_total_time="$tsecs" -max_len=65536 -rss_limit_mb=2048 -timeout=10 \
        -artifact_prefix="$bin/$t-" "$corpus" >"$log" 2>&1; then
        grep -E '^(Done|#[0-9]+ +DONE)' "$log" | tail -n 2
    else
        echo "fuzz: $t FAILED; last lines of $log:"
        tail -n 60 "$log"
        status=1
    fi
done
exit $status
