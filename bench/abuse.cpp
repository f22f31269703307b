// The HTTP attacks on a node (tests/support/http_abuse.hpp), with figures: for each
// attack, the share of GET /server_info probes answered within 1 s during it, their p99
// latency, and the process's RSS at the start, at its peak and once settled. The node
// runs in this process (4 HTTP workers), attacked from 127.0.0.2 and probed from
// 127.0.0.1 every 200 ms, 20 probes per attack. The relay's attacks (and stock frps, with
// FRP_BIN_DIR) are measured by the relay's own bench.
#include <p2prc.hpp>

#include "support/http_abuse.hpp"
#include "support/node_config.hpp"
#include "support/tempdir.hpp"

#include <cstdio>
#include <memory>
#include <string>
#include <utility>
#include <vector>

int main() {
    using namespace p2prc_test;
    std::vector<std::pair<const char*, Attack>> attacks = {
        {"300 slowloris connections", slowloris},
        {"1000 idle/kept-alive connections", idle_connections},
        {"/dialback 60 MiB bodies",
         [](std::uint16_t p, std::atomic<bool>& s) { dialback_bodies(p, s, nullptr); }},
        {"4 MiB nested JSON on /IpTable",
         [](std::uint16_t p, std::atomic<bool>& s) { nested_json(p, s, nullptr); }},
        {"small /IpTable, 100k-entry table",
         [](std::uint16_t p, std::atomic<bool>& s) { small_table_posts(p, s, nullptr); }},
        {"40 x 10 MB header lines", huge_header_lines},
    };
    std::printf("%-34s %9s %9s %10s %10s %10s\n", "attack (node)", "probes ok", "p99 ms",
                "rss start", "rss peak", "rss final");
    for (auto& [name, attack] : attacks) {
        TempDir dir;
        auto c = loopback_node_config(dir, "bench");
        c.limits.server_threads = 4;
        c.limits.request_deadline_ms = 60000;  // the first /IpTable answer reads 100k entries
        if (std::string(name).find("100k") != std::string::npos) big_table(100000).save(c.iptable);
        p2prc::Node node(c);
        node.start();
        auto r = under_attack(node.port(), attack, 20);
        const long final_rss = settled_rss(r.start_rss, 16 * 1024);
        std::printf("%-34s %6d/%-2d %9.1f %7ld KiB %6ld KiB %6ld KiB\n", name, r.ok, r.sent,
                    r.p99_ms(), r.start_rss, r.peak_rss, final_rss);
        node.stop();
    }
    return 0;
}
