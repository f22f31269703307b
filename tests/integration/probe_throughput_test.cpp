#include <doctest/doctest.h>

#include "p2prc/probe.hpp"
#include "p2prc/server.hpp"
#include "support/delay_proxy.hpp"
#include "support/fake_peer.hpp"

#include <chrono>
#include <atomic>
#include <cmath>
#include <thread>

using namespace std::chrono_literals;

namespace {

p2prc::Endpoint local(std::uint16_t port) {
    return p2prc::Endpoint{p2prc::IpAddress::from_string("127.0.0.1"), port};
}

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
    // A loaded machine can only starve the proxy or the endpoints (a rate comes out low,
    // never high): up to 3 runs, until one is within the tolerance.
    p2prc::ThroughputResult r;
    for (int attempt = 0; attempt < 3; ++attempt) {
        r = p2prc::probe_throughput(local(proxy.port()), o);
        REQUIRE_MESSAGE(r.ok, r.reason);
        REQUIRE(r.download_mbps);
        REQUIRE(r.upload_mbps);
        if (std::abs(*r.download_mbps - mbit) <= 0.15 * mbit &&
            std::abs(*r.upload_mbps - mbit) <= 0.15 * mbit)
            break;
        CHECK(*r.download_mbps < mbit * 1.15);  // never above the bucket
        CHECK(*r.upload_mbps < mbit * 1.15);
    }
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
    p2prc::ThroughputResult r;
    for (int attempt = 0; attempt < 3; ++attempt) {  // as above
        r = p2prc::probe_throughput(local(shared.port()), o);
        REQUIRE_MESSAGE(r.ok, r.reason);
        if (std::abs(*r.download_mbps - mbit) <= 0.15 * mbit) break;
        CHECK(*r.download_mbps < mbit * 1.15);
    }
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

TEST_CASE("probe_throughput: a P2PRC (Go) peer is measured on its GET /50 and POST /upload") {
    // The Go server's speed-test routes: a fixed file download and a multipart upload.
    httplib::Server go;
    std::atomic<int> fifty{0}, uploads{0};
    std::atomic<std::size_t> uploaded{0};
    const std::string file(2 << 20, 'f');
    go.Get("/50", [&](const httplib::Request&, httplib::Response& res) {
        ++fifty;
        res.set_content(file, "application/zip");
    });
    go.Post("/upload", [&](const httplib::Request& req, httplib::Response& res) {
        ++uploads;
        if (req.has_file("file")) uploaded += req.get_file_value("file").content.size();
        res.set_content("ok", "text/plain");
    });
    const int port = go.bind_to_any_port("127.0.0.1");
    REQUIRE(port > 0);
    std::thread t([&] { go.listen_after_bind(); });
    for (int i = 0; i < 2000 && !go.is_running(); ++i) std::this_thread::sleep_for(1ms);

    p2prc::ThroughputOptions o;
    o.duration = 300ms;
    o.warmup = 50ms;
    auto r = p2prc::probe_throughput(local(static_cast<std::uint16_t>(port)), o);
    go.stop();
    t.join();
    REQUIRE_MESSAGE(r.ok, r.reason);
    CHECK(*r.download_mbps > 0);
    CHECK(*r.upload_mbps > 0);
    CHECK(fifty >= 1);
    CHECK(uploads == 1);
    CHECK(uploaded == r.upload_bytes);
}
