// Dedupe and merge of large tables: prints milliseconds and entries per second.
//
//   bench_iptable [N ...]     (default: 100000 1000000)
#include <p2prc.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

using Clock = std::chrono::steady_clock;

namespace {

// Peer number i: a distinct IPv4+port for each i, IPv6 for every fourth.
p2prc::Peer peer(std::uint32_t i) {
    p2prc::Peer p;
    std::uint8_t v4[4] = {static_cast<std::uint8_t>(11 + (i >> 24)), static_cast<std::uint8_t>(i >> 16),
                          static_cast<std::uint8_t>(i >> 8), static_cast<std::uint8_t>(i)};
    p.ipv4 = p2prc::IpAddress::from_v4(v4);
    if (i % 4 == 0) {
        std::uint8_t v6[16] = {0x20, 0x01, 0x0d, 0xb8};
        for (int k = 0; k < 4; ++k) v6[12 + k] = static_cast<std::uint8_t>(i >> (24 - 8 * k));
        p.ipv6 = p2prc::IpAddress::from_v6(v6);
    }
    p.server_port = 8078;
    p.latency_ms = 1 + i % 200;
    p.measured_at = 1000 + i % 7;
    return p;
}

double ms_since(Clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<std::uint32_t> sizes;
    for (int i = 1; i < argc; ++i) sizes.push_back(static_cast<std::uint32_t>(std::strtoul(argv[i], nullptr, 10)));
    if (sizes.empty()) sizes = {100000, 1000000};
    std::printf("%-10s %-34s %10s %14s\n", "entries", "operation", "ms", "entries/s");
    for (auto n : sizes) {
        // A table of n entries of which a tenth repeat an earlier server.
        std::vector<p2prc::Peer> raw;
        raw.reserve(n);
        for (std::uint32_t i = 0; i < n; ++i) raw.push_back(peer(i % 10 == 9 ? i - 5 : i));
        p2prc::IpTable table(std::move(raw));
        auto t0 = Clock::now();
        auto removed = table.dedupe();
        double dedupe_ms = ms_since(t0);
        std::printf("%-10u %-34s %10.1f %14.0f   (%zu folded)\n", n, "dedupe (10% duplicates)", dedupe_ms,
                    n / (dedupe_ms / 1000), removed);

        // Merge another table of n entries, half of them already known.
        std::vector<p2prc::Peer> incoming;
        incoming.reserve(n);
        for (std::uint32_t i = 0; i < n; ++i) incoming.push_back(peer(i + n / 2));
        p2prc::IpTable other(std::move(incoming));
        t0 = Clock::now();
        table.merge(std::move(other));
        double merge_ms = ms_since(t0);
        std::printf("%-10u %-34s %10.1f %14.0f   (%zu after)\n", n, "merge n more (half known)", merge_ms,
                    2.0 * n / (merge_ms / 1000), table.size());
    }
}
