// How long a node behind NAT waits for a working tunnel, on loopback:
//   - expose: choosing the relay (fresh latency probes of the candidates), GET /FRPPort,
//     frp login and the proxy running;
//   - failover: from the moment the relay's node stops to the moment the tunnel runs
//     through the next relay and a connection through it is echoed (failure_grace is part
//     of it, 2 s by default; BENCH_GRACE_MS overrides it);
// over BENCH_ROUNDS rounds (default 5), as min / median / max. Figures only: nothing passes
// or fails on speed.
#include <p2prc.hpp>

#include "support/node_config.hpp"
#include "support/relay.hpp"
#include "support/tempdir.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

double ms_since(Clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

void print(const char* what, std::vector<double> v) {
    if (v.empty()) {
        std::printf("%-48s no successful round\n", what);
        return;
    }
    std::sort(v.begin(), v.end());
    std::printf("%-48s min %8.1f ms   median %8.1f ms   max %8.1f ms   (%zu rounds)\n", what, v.front(),
                v[v.size() / 2], v.back(), v.size());
}

long env_or(const char* name, long fallback) {
    const char* v = std::getenv(name);
    return v ? std::strtol(v, nullptr, 10) : fallback;
}

}  // namespace

int main() {
    const long rounds = std::clamp(env_or("BENCH_ROUNDS", 5), 1L, 100L);
    const long grace_ms = std::clamp(env_or("BENCH_GRACE_MS", 2000), 50L, 60000L);
    std::vector<double> expose_ms, failover_ms;
    p2prc_test::EchoServer service;
    for (long round = 0; round < rounds; ++round) {
        p2prc_test::TempDir dir;
        p2prc::Node first(p2prc_test::loopback_node_config(dir, "first"));
        p2prc::Node second(p2prc_test::loopback_node_config(dir, "second"));
        first.start();
        second.start();
        auto xc = p2prc_test::loopback_node_config(dir, "exposer");
        p2prc::IpTable::update(xc.iptable, [&](p2prc::IpTable& t) {
            for (auto [node, latency] : {std::pair{&first, 0.1}, std::pair{&second, 0.2}}) {
                p2prc::Peer p;
                p.name = node->config().name;
                p.ipv4 = p2prc::IpAddress::from_string("127.0.0.1");
                p.server_port = node->port();
                p.latency_ms = latency;
                t.add(p);
            }
        });
        p2prc::Node exposer(xc);
        p2prc::ExposeOptions eo;
        eo.failure_grace = std::chrono::milliseconds(grace_ms);
        eo.reevaluate_interval = 0ms;
        auto t0 = Clock::now();
        p2prc::Exposure ex;
        try {
            ex = exposer.expose(service.endpoint().port, eo);
        } catch (const p2prc::error& e) {
            std::fprintf(stderr, "round %ld: expose failed: %s\n", round, e.what());
            continue;
        }
        expose_ms.push_back(ms_since(t0));
        // Both relays are about as near (fresh probes decide): stop whichever carries it.
        const auto was = ex.relay;
        t0 = Clock::now();
        (was.port == first.port() ? first : second).stop();
        // Bounded: 30 s at most per round.
        bool moved = false;
        for (int i = 0; i < 3000 && !moved; ++i) {
            auto now = exposer.exposure(service.endpoint().port);
            if (now && now->relay != was &&
                p2prc_test::echo_roundtrip(now->public_endpoint, std::size_t(round), 1024).matched == 1024) {
                failover_ms.push_back(ms_since(t0));
                moved = true;
            } else {
                std::this_thread::sleep_for(10ms);
            }
        }
        if (!moved)
            std::fprintf(stderr, "round %ld: no failover within 30 s\n", round);
    }
    std::printf("bench_failover: loopback, failure_grace %ld ms\n", grace_ms);
    print("expose (choice, /FRPPort, login, proxy up)", expose_ms);
    print("failover (relay stops -> echo via the next)", failover_ms);
    return 0;
}
