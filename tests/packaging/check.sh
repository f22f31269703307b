#!/usr/bin/env bash
# The library as its users get it:
#  1. `cmake --install`, then a small project with find_package(p2prc) builds and runs, and
#     every example builds against the installed package;
#  2. the same program builds with the installed pkg-config file;
#  3. every example builds with single_include/p2prc.hpp alone plus system packages; the
#     table and expose examples run.
# usage: check.sh SOURCE_DIR WORK_DIR
set -euo pipefail
src=$(cd "$1" && pwd)
work=$2
rm -rf "$work" && mkdir -p "$work"
prefix=$work/prefix
cxx=${CXX:-c++}

echo "== install"
cmake -S "$src" -B "$work/lib" -DP2PRC_BUILD_TESTS=OFF -DP2PRC_BUILD_EXAMPLES=OFF -DP2PRC_BUILD_BENCH=OFF >/dev/null
cmake --install "$work/lib" --prefix "$prefix" >/dev/null
test -f "$prefix/include/p2prc.hpp"
test -f "$prefix/lib/cmake/p2prc/p2prcConfig.cmake"

echo "== find_package(p2prc)"
cmake -S "$src/tests/packaging/consumer" -B "$work/consumer" -DCMAKE_PREFIX_PATH="$prefix" \
  -DP2PRC_EXAMPLES_DIR="$src/examples" >/dev/null
cmake --build "$work/consumer" -j 2 >/dev/null
out=$("$work/consumer/consumer" "$src/tests/data/p2prc-go-ip_table.json")
echo "$out"
grep -q "Node1 139.59.162.154:8078" <<<"$out"
ls "$work/consumer"/example_* | sed 's|.*/|built against the installed package: |'
"$work/consumer/example_table" "$src/tests/data/p2prc-go-ip_table.json" | grep -q '"port no": "8078"'

echo "== pkg-config p2prc"
export PKG_CONFIG_PATH="$prefix/share/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
# shellcheck disable=SC2046
$cxx -std=c++17 -o "$work/consumer-pc" "$src/tests/packaging/consumer/main.cpp" $(pkg-config --cflags --libs p2prc)
"$work/consumer-pc" "$src/tests/data/p2prc-go-ip_table.json" | grep -q "Node1 139.59.162.154:8078"

echo "== single_include/p2prc.hpp alone"
mkdir -p "$work/single"
cp "$src/single_include/p2prc.hpp" "$work/single/"
for ex in "$src"/examples/*.cpp; do
  name=$(basename "$ex" .cpp)
  # shellcheck disable=SC2046
  $cxx -std=c++17 -Wall -Wextra -Wpedantic -Werror -I "$work/single" -o "$work/single/$name" "$ex" \
    $(pkg-config --cflags --libs cpp-httplib nlohmann_json openssl) -pthread
  echo "built $name"
done
"$work/single/table" "$src/tests/data/p2prc-go-ip_table.json" | grep -q '"port no": "8078"'
# The amalgamation alone carries a node through a relay (all on 127.0.0.1).
expose_out=$(timeout 60 "$work/single/expose")
echo "$expose_out"
grep -q '/hello -> hello through the relay' <<<"$expose_out"
echo "packaging: all checks passed"
