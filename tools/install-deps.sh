#!/usr/bin/env bash
# Installs the system packages the build and the test suites need, only those missing.
# Without root or apt-get it prints the exact list and fails.
set -euo pipefail

required=(g++ make cmake pkg-config python3 libssl-dev nlohmann-json3-dev libcpp-httplib-dev doctest-dev)
# clang and its runtime build the fuzz targets; iproute2 and nftables build the
# network-namespace tests; chromium renders the status page in the browser suite. Suites
# that need them say so and skip when they are absent.
optional=(clang libclang-rt-14-dev iproute2 nftables procps chromium)

missing_from() {
  local out=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || out+=("$p")
  done
  echo "${out[@]:-}"
}

if ! command -v dpkg-query >/dev/null 2>&1; then
  echo "install-deps: not a Debian-like system; make sure these are installed: ${required[*]}" >&2
  exit 0
fi

need=$(missing_from "${required[@]}")
want=$(missing_from "${optional[@]}")
[ -z "$need$want" ] && exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  if [ -n "$need" ]; then
    echo "install-deps: missing packages: $need" >&2
    echo "install-deps: run as root: apt-get install -y $need $want" >&2
    exit 1
  fi
  echo "install-deps: optional packages missing (some suites will skip): $want" >&2
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
echo "install-deps: installing $need $want"
apt-get update -qq >/dev/null || true
if [ -n "$need" ]; then
  apt-get install -y -qq --no-install-recommends $need >/dev/null
fi
if [ -n "$want" ]; then
  apt-get install -y -qq --no-install-recommends $want >/dev/null ||
    echo "install-deps: could not install optional packages: $want (some suites will skip)" >&2
fi
