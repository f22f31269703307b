#!/usr/bin/env bash
# make demo: a small p2prc network, from its first node to a service reached through a
# relay, told by the p2prc command-line program in well under a minute. Every command it
# runs is printed before it runs, so the output doubles as a walkthrough.
#
# As root with a working `ip netns`, every node gets its own network namespace and the
# joining node sits behind a real NAT (nftables masquerade in a gateway namespace);
# otherwise everything runs on 127.0.0.1. Nothing is left behind: on exit, also on
# Ctrl-C or SIGTERM, every process it started is stopped, every namespace it made is
# deleted and its temporary folder is removed.
#
# Environment:
#   P2PRC_DEMO_MODE    auto (default), netns or loopback
#   P2PRC_DEMO_BUILD   1 (default): install what is missing and build the CLI;
#                      0: use the CLI named by P2PRC_CLI as it is
#   P2PRC_CLI          the CLI to use when P2PRC_DEMO_BUILD=0
#   BUILD BUILD_TYPE JOBS   build folder, CMake build type, parallel jobs (as in the Makefile)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mode=${P2PRC_DEMO_MODE:-auto}
build_cli=${P2PRC_DEMO_BUILD:-1}
build_dir=${BUILD:-build}
case $build_dir in /*) ;; *) build_dir=$root/$build_dir ;; esac

# ---------------------------------------------------------------------------- output
if [ -t 1 ]; then
    bold=$'\033[1m' dim=$'\033[2m' green=$'\033[32m' red=$'\033[31m' cyan=$'\033[36m' off=$'\033[0m'
else
    bold='' dim='' green='' red='' cyan='' off=''
fi
steps=8
step=0
heading() {
    step=$((step + 1))
    printf '\n%s[%d/%d] %s%s\n' "$bold$cyan" "$step" "$steps" "$*" "$off"
}
note() { printf '%s%s%s\n' "$dim" "$*" "$off"; }
fail() {
    printf '%sdemo: %s%s\n' "$red" "$*" "$off" >&2
    exit 1
}

# ---------------------------------------------------------------------------- cleanup
pids=()  # every background process started, in order
work=''
ns_prefix=p2demo-$$-  # every namespace this run makes starts with it
# The namespaces this run made: their names start with its own prefix.
our_namespaces() {
    [ -n "$ns_prefix" ] || return 0
    ip netns list 2>/dev/null | awk '{print $1}' | grep "^$ns_prefix" || true
}
cleanup() {
    local rc=$? pid ns left removed=0
    trap - EXIT INT TERM
    set +e
    # Newest first: the tunnel before the relay, the relay before the nodes.
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill -TERM "${pids[i]}" 2>/dev/null; done
    for _ in $(seq 50); do
        left=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && left=1; done
        [ "$left" = 0 ] && break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null; done
    for ns in $(our_namespaces); do
        # Anything still running inside a namespace this demo made was started by it.
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
        ip netns del "$ns" 2>/dev/null && removed=$((removed + 1))
    done
    [ -n "$work" ] && rm -rf "$work"
    if [ "$step" -gt 0 ]; then
        local what="${#pids[@]} processes stopped"
        [ "$removed" -gt 0 ] && what+=", $removed namespaces removed"
        printf '\n%scleaned up: %s, temporary files removed%s\n' "$dim" "$what" "$off"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------- build
if [ "$build_cli" = 1 ]; then
    printf '%spreparing: system packages, then the p2prc command-line program%s\n' "$dim" "$off"
    bash "$root/tools/install-deps.sh"
    cmake -S "$root" -B "$build_dir" -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-RelWithDebInfo}" >/dev/null
    printf '%sbuilding the p2prc program in %s (half a minute the first time)%s\n' "$dim" "$build_dir" "$off"
    build_log=$(cmake --build "$build_dir" --target p2prc_cli -j "${JOBS:-2}" 2>&1) || {
        printf '%s\n' "$build_log" | tail -n 40 >&2
        fail "the build failed"
    }
    cli=$build_dir/examples/p2prc
else
    cli=${P2PRC_CLI:-}
fi
[ -n "$cli" ] && [ -x "$cli" ] || fail "no p2prc program at '${cli}' (set P2PRC_CLI, or P2PRC_DEMO_BUILD=1)"
command -v python3 >/dev/null || fail "python3 is needed (it serves the file that gets exposed)"

if [ "$mode" = auto ]; then
    mode=loopback
    if [ "$(id -u)" = 0 ] && command -v ip >/dev/null && command -v nft >/dev/null; then
        probe_ns=${ns_prefix}probe
        if ip netns add "$probe_ns" 2>/dev/null; then
            ip netns del "$probe_ns"
            mode=netns
        fi
    fi
fi
case $mode in netns | loopback) ;; *) fail "P2PRC_DEMO_MODE must be auto, netns or loopback, not '$mode'" ;; esac

work=$(mktemp -d "${TMPDIR:-/tmp}/p2prc-demo.XXXXXX")
cd "$work"
started=$(date +%s.%N)

# ---------------------------------------------------------------------------- hosts
# Public hosts: alpha, beta, gamma (servers) and client (someone on the internet).
# delta joins later; in netns mode it sits behind the NAT of the gateway "gw".
declare -A ns_of addr_of
i=0
for host in alpha beta gamma client delta; do
    ns_of[$host]=''
    addr_of[$host]=127.0.0.1
    if [ "$mode" = netns ]; then
        i=$((i + 1))
        ns_of[$host]=$ns_prefix$host
        addr_of[$host]=10.77.0.$i
    fi
done
if [ "$mode" = netns ]; then
    addr_of[client]=10.77.0.100
    addr_of[delta]=192.168.77.2
fi

setup_netns() {
    local sw=${ns_prefix}sw gw=${ns_prefix}gw host ns
    ip netns add "$sw"
    ip -n "$sw" link add br0 type bridge
    ip -n "$sw" link set br0 up
    for host in alpha beta gamma client gw; do
        ns=$ns_prefix$host
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        ip -n "$sw" link add "v-$host" type veth peer name eth0 netns "$ns"
        ip -n "$sw" link set "v-$host" master br0 up
        ip -n "$ns" addr add "${addr_of[$host]:-10.77.0.254}/24" dev eth0
        ip -n "$ns" link set eth0 up
    done
    ns=${ns_of[delta]}
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip -n "$gw" link add eth1 type veth peer name eth0 netns "$ns"
    ip -n "$gw" addr add 192.168.77.1/24 dev eth1
    ip -n "$gw" link set eth1 up
    ip -n "$ns" addr add "${addr_of[delta]}/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" route add default via 192.168.77.1
    ip netns exec "$gw" sysctl -qw net.ipv4.ip_forward=1
    # The NAT: delta's connections leave with the gateway's address; nothing from the
    # outside gets in unless it answers one of them.
    ip netns exec "$gw" nft -f - <<'NFT'
table ip nat {
    chain postrouting {
        type nat hook postrouting priority 100;
        oifname "eth0" masquerade
    }
}
table ip filter {
    chain forward {
        type filter hook forward priority 0; policy drop;
        ct state established,related accept
        iifname "eth1" oifname "eth0" accept
    }
}
NFT
}

if [ "$mode" = netns ]; then
    # In a subshell with -e in force, so the first failing step stops the setup; cleanup
    # finds the namespaces by their prefix.
    set +e
    (
        set -e
        setup_netns
    ) 2>"$work/netns.err"
    rc=$?
    set -e
    if [ "$rc" != 0 ]; then
        note "network namespaces did not work ($(head -c 200 "$work/netns.err" | tr '\n' ' ')); using loopback"
        for ns in $(our_namespaces); do ip netns del "$ns" 2>/dev/null || true; done
        mode=loopback
        for host in "${!ns_of[@]}"; do
            ns_of[$host]=''
            addr_of[$host]=127.0.0.1
        done
    fi
fi

# Runs a command as host $1 (inside its namespace in netns mode).
on() {
    local host=$1
    shift
    if [ -n "${ns_of[$host]}" ]; then
        ip netns exec "${ns_of[$host]}" "$@"
    else
        "$@"
    fi
}
# Prints a p2prc command as the user would type it, then runs it as host $1, bounded in time.
p2prc() {
    local host=$1
    shift
    printf '%s%s$ p2prc %s%s\n' "$dim" "$host" "$*" "$off"
    on "$host" timeout --foreground -k 2 40 "$cli" "$@"
}
# Starts a long-running command as host $1 in the background, output to $2.
start() {
    local host=$1 log=$2
    shift 2
    if [ -n "${ns_of[$host]}" ]; then
        ip netns exec "${ns_of[$host]}" "$@" >"$log" 2>&1 &
    else
        "$@" >"$log" 2>&1 &
    fi
    pids+=($!)
}
# Waits (up to 15 s) until file $1 has a line matching $2; prints that line.
wait_for_line() {
    local file=$1 pattern=$2
    for _ in $(seq 150); do
        if grep -m1 -E "$pattern" "$file" 2>/dev/null; then return 0; fi
        kill -0 "${pids[-1]}" 2>/dev/null || break
        sleep 0.1
    done
    echo "--- $file:" >&2
    head -c 2000 "$file" >&2 || true
    fail "gave up waiting for \"$pattern\" in $(basename "$file")"
}

write_config() {  # name port
    local name=$1 port=$2 bind=127.0.0.1
    [ "$mode" = netns ] && bind=0.0.0.0
    printf '{\n  "name": "%s",\n  "iptable": "%s-table.json",\n  "bind": "%s",\n  "port": %s\n}\n' \
        "$name" "$name" "$bind" "$port" >"$name.json"
}
declare -A port_of pid_of
serve() {  # name
    local name=$1 line
    write_config "$name" "$([ "$mode" = netns ] && echo 8078 || echo 0)"
    printf '%s%s$ p2prc --config %s.json serve &%s\n' "$dim" "$name" "$name" "$off"
    start "$name" "$work/$name.log" "$cli" --config "$name.json" serve
    pid_of[$name]=${pids[-1]}
    line=$(wait_for_line "$work/$name.log" 'serving on')
    echo "$line"
    port_of[$name]=${line##*:}
    port_of[$name]=${port_of[$name]%% *}
    # On loopback the node took a free port: the other commands of this node use it.
    write_config "$name" "${port_of[$name]}"
}
at() { echo "${addr_of[$1]}:${port_of[$1]}"; }

# ---------------------------------------------------------------------------- the story
if [ "$mode" = netns ]; then
    note "network: alpha ${addr_of[alpha]}, beta ${addr_of[beta]}, gamma ${addr_of[gamma]} and a client ${addr_of[client]} on one switch;"
    note "         delta ${addr_of[delta]} behind a NAT gateway (nftables masquerade): it can connect out, nothing can connect in"
else
    note "network: every node on 127.0.0.1 (run as root with \`ip netns\` to put delta behind a real NAT)"
fi

heading "Three servers start, each with its own configuration and IP table"
for n in alpha beta gamma; do serve "$n"; done

heading "beta and gamma join through alpha"
p2prc beta --config beta.json discover "$(at alpha)"
p2prc gamma --config gamma.json discover "$(at alpha)"

heading "delta joins knowing only alpha, and learns the others"
write_config delta "$([ "$mode" = netns ] && echo 8078 || echo 0)"
p2prc delta --config delta.json add "$(at alpha)" alpha
p2prc delta --config delta.json update
serve delta
# Its server asks alpha to dial back: can others reach it directly? If not, it takes a
# relay for itself and advertises the relay's endpoint instead of its own.
wait_for_line "$work/delta.log" 'reachable|undecided' | sed 's/^p2prc: //'
p2prc delta --config delta.json discover "$(at alpha)"

heading "delta measures latency and throughput to every server"
p2prc delta --config delta.json update --throughput
p2prc delta --config delta.json table

heading "gamma goes down; delta's next probe round prunes it"
kill -TERM "${pid_of[gamma]}"
wait "${pid_of[gamma]}" 2>/dev/null || true
echo "gamma stopped"
p2prc delta --config delta.json update

heading "delta exposes a local web service through a relay it chooses"
mkdir -p site
printf 'Hello from delta, reached through a relay. (%s)\n' "$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')" >site/hello.txt
head -c 262144 /dev/urandom >site/blob.bin
# A throwaway web server on delta's loopback: the service nobody outside can reach.
start delta "$work/web.log" python3 -u -c '
import functools, http.server, sys
class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=sys.argv[1]))
print("web server on 127.0.0.1:%d" % srv.server_address[1], flush=True)
srv.serve_forever()' "$work/site"
web_line=$(wait_for_line "$work/web.log" 'web server on')
echo "$web_line (serving hello.txt and blob.bin, 256 KiB)"
web_port=${web_line##*:}

# No --via: delta picks the relay itself, the nearest measured server of its table, asks
# it for a port (GET /FRPPort) and logs into the relay there with the frp protocol.
printf '%sdelta$ p2prc --config delta.json expose %s --json &%s\n' "$dim" "$web_port" "$off"
start delta "$work/expose.log" "$cli" --config delta.json expose "$web_port" --json
exposed=$(wait_for_line "$work/expose.log" 'public_endpoint')
echo "$exposed"
read -r public relay_name relay_at relay_ms < <(python3 -c '
import json, sys
e = json.loads(sys.argv[1])
print(e["public_endpoint"], e["relay_name"] or "?", e["relay"], "%.2f" % e["relay_latency_ms"])' "$exposed")
echo "relay chosen: $relay_name at $relay_at ($relay_ms ms, the nearest server in delta's table)"
echo "delta's service is now public at $public"

heading "Someone on the outside fetches the service through the relay"
fetch() {  # url out
    if command -v curl >/dev/null; then
        on client curl -sS --max-time 10 --connect-timeout 3 -o "$2" "$1"
    else
        on client python3 -c '
import sys, urllib.request
open(sys.argv[2], "wb").write(urllib.request.urlopen(sys.argv[1], timeout=10).read())' "$1" "$2"
    fi
}
if [ "$mode" = netns ]; then
    # From outside, delta is the address of its NAT: nothing there answers for it.
    printf '%sclient$ curl http://10.77.0.254:%s/hello.txt   # delta directly, at its NAT%s\n' "$dim" "$web_port" "$off"
    if fetch "http://10.77.0.254:$web_port/hello.txt" direct.txt 2>direct.err; then
        fail "the client reached delta directly: the NAT is not doing its job"
    fi
    echo "fails, as it should: $(head -c 200 direct.err | tr '\n' ' ')"
fi
printf '%sclient$ curl http://%s/hello.txt%s\n' "$dim" "$public" "$off"
fetch "http://$public/hello.txt" fetched.txt || fail "could not fetch through the relay"
cat fetched.txt
printf '%sclient$ curl http://%s/blob.bin%s\n' "$dim" "$public" "$off"
fetch "http://$public/blob.bin" fetched.bin || fail "could not fetch through the relay"
if cmp -s site/hello.txt fetched.txt && cmp -s site/blob.bin fetched.bin; then
    echo "${green}byte-exact: hello.txt ($(wc -c <fetched.txt) bytes) and blob.bin ($(wc -c <fetched.bin) bytes) match the files on delta${off}"
else
    fail "what came through the relay differs from the files on delta"
fi

heading "The final table, as delta sees it"
p2prc delta --config delta.json table

elapsed=$(python3 -c 'import sys; print("%.1f" % (float(sys.argv[2]) - float(sys.argv[1])))' "$started" "$(date +%s.%N)")
printf '\n%sthe whole story took %s s (%s mode)%s\n' "$bold" "$elapsed" "$mode" "$off"
