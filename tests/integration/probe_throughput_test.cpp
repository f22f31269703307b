#include <doctest/doctest.h>

#include "p2prc/probe.hpp"
#include "p2prc/server.hpp"
#include "support/delay_proxy.hpp"
#include "support/fake_peer.hpp"

#include <chrono>
#include <cmath>

using namespace std::chrono_literals;

namespace {

p2prc::Endpoint local(std::uint16_t port) { return p2prc::Endpoint{p2prc::IpAddress::from_string("127.0.0.1"), port}; }

p2prc::ServerOptions loopback() {
    p2prc::ServerOptions o;
    o.bind_address = "127.0.0.1";
    o.worker_threads = 8;
    return o;
}

}  // namespace

TEST_CASE("probe_throughput: a 40 Mbit/s token bucket is measured within 15%, both ways") {
    p2prc::Server s(loopback());
    s.start();
    const double mbit = 40.0;
    p2prc_test::DelayProxy proxy(p2prc_test::ProxyRoute{s.port(), 1ms, mbit * 1e6 / 8.0});
    p2prc::ThroughputOptions o;
    o.duration = 1500ms;
    o.warmup = 250ms;
    auto r = p2prc::probe_throughput(local(proxy.port()), o);
    REQUIRE_MESSAGE(r.ok, r.reason);
    REQUIRE(r.download_mbps);
    REQUIRE(r.upload_mbps);
    CAPTURE(*r.download_mbps);
    CAPTURE(*r.upload_mbps);
    CHECK(std::abs(*r.download_mbps - mbit) <= 0.15 * mbit);
    CHECK(std::abs(*r.upload_mbps - mbit) <= 0.15 * mbit);
    CHECK(r.download_bytes > 0);
    CHECK(r.upload_bytes > 0);
}

TEST_CASE("probe_throughput: parallel streams share the bucket; a byte budget stops early") {
    p2prc::Server s(loopback());
    s.start();
    const double mbit = 40.0;
    // Two connections through one route: each has its own bucket of half the rate.
    p2prc_test::DelayProxy shared(p2prc_test::ProxyRoute{s.port(), 1ms, mbit * 1e6 / 8.0 / 2});
    p2prc::ThroughputOptions o;
    o.duration = 1000ms;
    o.streams = 2;
    o.upload = false;
    auto r = p2prc::probe_throughput(local(shared.port()), o);
    REQUIRE_MESSAGE(r.ok, r.reason);
    CHECK(std::abs(*r.download_mbps - mbit) <= 0.15 * mbit);

    p2prc::ThroughputOptions budget;
    budget.byte_budget = 1 << 20;
    budget.duration = 10s;
    auto t0 = std::chrono::steady_clock::now();
    auto b = p2prc::probe_throughput(local(s.port()), budget);
    REQUIRE_MESSAGE(b.ok, b.reason);
    CHECK(std::chrono::steady_clock::now() - t0 < 5s);  // the budget, not the 10 s, ended it
    CHECK(*b.download_mbps > 0);
    CHECK(*b.upload_mbps > 0);
}

TEST_CASE("probe_throughput: failures are values") {
    p2prc::ThroughputOptions o;
    o.duration = 200ms;
    o.connect_timeout = 500ms;
    auto refused = p2prc::probe_throughput(local(p2prc_test::closed_port()), o);
    CHECK_FALSE(refused.ok);
    CHECK(refused.failure == p2prc::ProbeFailure::refused);
    // A server without the speed-test routes.
    p2prc_test::FakePeer other(200, "{}", "application/json");
    auto missing = p2prc::probe_throughput(local(other.port()), o);
    CHECK_FALSE(missing.ok);
    CHECK(missing.failure == p2prc::ProbeFailure::http_status);
    o.streams = 0;
    CHECK_THROWS_AS(p2prc::probe_throughput(local(other.port()), o), p2prc::error);
}
