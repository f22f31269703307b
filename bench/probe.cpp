// Sweep of 200 peers, each behind 50 ms of injected round-trip delay (25 ms each way, a
// userspace proxy on loopback), against the time of probing one of them. A sweep that
// probes concurrently costs about one probe per `concurrency` peers; P2PRC's Go code
// probes one after another (200x).
#include "p2prc/probe.hpp"
#include "p2prc/server.hpp"
#include "support/delay_proxy.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <vector>

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

int main() {
    constexpr int kPeers = 200;
    constexpr int kServers = 4;
    std::vector<std::unique_ptr<p2prc::Server>> servers;
    for (int i = 0; i < kServers; ++i) {
        p2prc::ServerOptions o;
        o.bind_address = "127.0.0.1";
        o.worker_threads = 64;
        servers.push_back(std::make_unique<p2prc::Server>(o));
        servers.back()->start();
    }
    std::vector<p2prc_test::ProxyRoute> routes;
    for (int i = 0; i < kPeers; ++i) routes.push_back({servers[i % kServers]->port(), 25ms, 0});
    p2prc_test::DelayProxy proxy(routes);

    auto make_table = [&] {
        p2prc::IpTable t;
        for (int i = 0; i < kPeers; ++i) {
            p2prc::Peer p;
            p.name = "peer" + std::to_string(i);
            p.ipv4 = p2prc::IpAddress::from_string("127.0.0.1");
            p.server_port = proxy.port(static_cast<std::size_t>(i));
            t.add(p);
        }
        return t;
    };

    // One probe alone (median of 5): warm-up + 5 samples, each ~50 ms.
    std::vector<double> singles;
    for (int i = 0; i < 5; ++i) {
        auto t0 = Clock::now();
        auto r = p2prc::probe_latency(
            p2prc::Endpoint{p2prc::IpAddress::from_string("127.0.0.1"), proxy.port(0)});
        singles.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
        if (!r.reachable) {
            std::printf("single probe failed: %s\n", r.reason.c_str());
            return 1;
        }
        if (i == 0)
            std::printf("single probe: min %.2f ms, median %.2f ms (50 ms injected)\n", r.min_ms,
                        r.median_ms);
    }
    std::sort(singles.begin(), singles.end());
    const double single = singles[2];
    std::printf("single probe time: %.3f s (median of 5)\n", single);
    std::printf("sequential sweep (the Go original's way), estimated: %.1f s = %dx\n",
                single * kPeers, kPeers);

    for (std::size_t concurrency : {std::size_t(32), std::size_t(64), std::size_t(200)}) {
        auto table = make_table();
        p2prc::RefreshOptions o;
        o.concurrency = concurrency;
        auto t0 = Clock::now();
        auto report = p2prc::refresh(table, o);
        const double sweep = std::chrono::duration<double>(Clock::now() - t0).count();
        double lo = 1e9, hi = 0;
        for (const auto& e : report.kept) {
            lo = std::min(lo, e.latency.min_ms);
            hi = std::max(hi, e.latency.min_ms);
        }
        std::printf(
            "sweep of %d peers, concurrency %3zu: %.3f s = %.2fx a single probe "
            "(kept %zu, pruned %zu, recorded latency %.1f-%.1f ms)\n",
            kPeers, concurrency, sweep, sweep / single, report.kept.size(), report.pruned.size(),
            lo, hi);
    }
    return 0;
}
