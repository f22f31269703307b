// The relay under attack from one address (127.0.0.2), on loopback: idle TCP
// connections, idle yamux sessions, 500 logins at once, a flood of yamux SYNs on one
// session. While each runs, fresh legitimate frp logins from 127.0.0.1 succeed (at least
// 9 of 10), the threads and memory of this process (relay and attacker alike) stay
// bounded, and both come back near where they started once the attack ends.
#include <p2prc.hpp>

#include "support/relay.hpp"
#include "support/relay_abuse.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <thread>

using namespace p2prc_test;
using p2prc::frp::Server;
using p2prc::frp::ServerOptions;

namespace {

template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
        if (pred()) return true;
        std::this_thread::sleep_for(50ms);
    }
    return pred();
}

struct Figures {
    int ok = 0, tries = 0;
    std::size_t threads_before = 0, threads_peak = 0, threads_after = 0;
    std::size_t rss_before = 0, rss_peak = 0, rss_after = 0;  // KiB
};

// Runs `kind` against a fresh relay: waits until the attack bites, probes 10 logins,
// stops the attack and waits for the threads to come back.
Figures run_attack(RelayAttack kind, std::size_t size, std::size_t* attacker_held = nullptr) {
    ServerOptions o;
    o.bind = loopback(0);
    Server server(o);
    EchoServer echo;
    // One login first, so what a login allocates once is in the baseline.
    REQUIRE(legit_login(server.port(), echo.endpoint(), true, 10000ms).count() >= 0);
    REQUIRE(eventually([&] { return server.client_count() == 0; }, 10s));

    Figures f;
    f.threads_before = thread_count();
    f.rss_before = rss_kib();
    std::atomic<bool> sampling{true};
    std::atomic<std::size_t> threads_peak{f.threads_before}, rss_peak{f.rss_before};
    std::thread sampler([&] {
        while (sampling.load()) {
            threads_peak.store(std::max(threads_peak.load(), thread_count()));
            rss_peak.store(std::max(rss_peak.load(), rss_kib()));
            std::this_thread::sleep_for(20ms);
        }
    });

    {
        RelayAttacker attack(kind, server.port(), size);
        // The attack bites: the relay refuses the surplus, or the logins are in.
        bool bit = eventually(
            [&] {
                auto a = server.activity();
                switch (kind) {
                    case RelayAttack::idle_tcp:
                    case RelayAttack::idle_mux:
                        return a.refused_pending + a.refused_sessions > 0;
                    case RelayAttack::login_burst:
                        return attack.held() >= size * 4 / 5;
                    case RelayAttack::syn_flood:
                        return attack.syns_sent() >= size;
                }
                return false;
            },
            60s);
        CHECK_MESSAGE(bit, "the attack never reached its size: " << to_string(kind));
        if (attacker_held) *attacker_held = attack.held();
        for (int i = 0; i < 10; ++i) {
            ++f.tries;
            std::string why;
            if (legit_login(server.port(), echo.endpoint(), i % 2 == 0, 8000ms, &why).count() >= 0)
                ++f.ok;
            else
                MESSAGE("a legitimate login failed: " << why);
        }
        attack.stop();
    }
    // The relay lets go of what the attack held (closed connections are noticed at once;
    // logged-in controls when their socket ends).
    eventually([&] { return thread_count() <= f.threads_before + 8; }, 30s);
    sampling.store(false);
    sampler.join();
    f.threads_after = thread_count();
    f.rss_after = rss_kib();
    f.threads_peak = threads_peak.load();
    f.rss_peak = rss_peak.load();
    MESSAGE(std::string(to_string(kind))
            << ": " << f.ok << "/" << f.tries << " logins; threads " << f.threads_before
            << " -> peak " << f.threads_peak << " -> " << f.threads_after << "; RSS KiB "
            << f.rss_before << " -> peak " << f.rss_peak << " -> " << f.rss_after);
    return f;
}

// Bounds with room for a loaded machine: the relay's threads are per connection it
// accepted, and the per-address caps keep one address's share small.
void check_bounds(const Figures& f, std::size_t max_extra_threads) {
    CHECK(f.ok >= 9);
    CHECK(f.threads_peak <= f.threads_before + max_extra_threads);
    CHECK(f.rss_peak <= f.rss_before + 256 * 1024);
    CHECK(f.threads_after <= f.threads_before + 8);
    CHECK(f.rss_after <= f.rss_before + 96 * 1024);
}

}  // namespace

TEST_CASE("relay abuse: 400 idle TCP connections from one address do not lock out a client") {
    auto f = run_attack(RelayAttack::idle_tcp, 400);
    // 32 pending connections of the attacker, the attacker and probe threads.
    check_bounds(f, 120);
}

TEST_CASE("relay abuse: 200 idle yamux sessions from one address do not lock out a client") {
    auto f = run_attack(RelayAttack::idle_mux, 200);
    // 32 pending sessions of three threads each.
    check_bounds(f, 200);
}

TEST_CASE("relay abuse: 500 logins at once are accepted, and a client still logs in") {
    std::size_t held = 0;
    auto f = run_attack(RelayAttack::login_burst, 500, &held);
    CHECK(held >= 400);  // capacity for hundreds of clients, not 64
    // A thread per logged-in control (plain logins), no more.
    check_bounds(f, 700);
}

TEST_CASE("relay abuse: 20,000 yamux SYNs on one session cost bounded threads") {
    auto f = run_attack(RelayAttack::syn_flood, 20000);
    // The session's own threads and at most 16 streams owing a first message.
    check_bounds(f, 120);
}
