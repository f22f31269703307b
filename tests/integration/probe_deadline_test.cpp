#include <doctest/doctest.h>

#include "p2prc/probe.hpp"
#include "support/fake_peer.hpp"
#include "support/trickle_peer.hpp"

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>

using namespace std::chrono_literals;

namespace {

p2prc::Endpoint local(std::uint16_t port) {
    return p2prc::Endpoint{p2prc::IpAddress::from_string("127.0.0.1"), port};
}

// An httplib server on loopback run by a thread, stopped and joined on destruction.
struct HttpPeer {
    httplib::Server http;
    std::thread thread;
    int port = 0;
    void start() {
        port = http.bind_to_any_port("127.0.0.1");
        if (port <= 0) throw std::runtime_error("HttpPeer: bind failed");
        thread = std::thread([this] { http.listen_after_bind(); });
        for (int i = 0; i < 2000 && !http.is_running(); ++i) std::this_thread::sleep_for(1ms);
    }
    ~HttpPeer() {
        http.stop();
        if (thread.joinable()) thread.join();
    }
};

}  // namespace

TEST_CASE("probe_latency: a peer trickling header bytes is cut off at the total timeout") {
    p2prc_test::TricklePeer trickle(300ms, 8s);
    p2prc::LatencyOptions o;
    o.connect_timeout = 500ms;
    o.read_timeout = 1s;  // longer than the trickle interval: each receive succeeds
    o.total_timeout = 1500ms;
    const auto t0 = std::chrono::steady_clock::now();
    auto r = p2prc::probe_latency(local(trickle.port()), o);
    const auto took = std::chrono::steady_clock::now() - t0;
    CHECK(trickle.accepted() == 1);
    CHECK_FALSE(r.reachable);
    CHECK(r.failure == p2prc::ProbeFailure::timeout);
    CHECK(r.samples_ms.empty());
    CHECK(took >= 1400ms);
    CHECK(took < 3s);
}

TEST_CASE("probe_throughput: a peer trickling header bytes is cut off at the total timeout") {
    p2prc_test::TricklePeer trickle(300ms, 8s);
    p2prc::ThroughputOptions o;
    o.duration = 200ms;
    o.warmup = 50ms;
    o.connect_timeout = 500ms;
    o.read_timeout = 1s;
    o.total_timeout = 1500ms;
    const auto t0 = std::chrono::steady_clock::now();
    auto r = p2prc::probe_throughput(local(trickle.port()), o);
    const auto took = std::chrono::steady_clock::now() - t0;
    CHECK_FALSE(r.ok);
    CHECK(r.failure == p2prc::ProbeFailure::timeout);
    CHECK(r.reason.find("download") != std::string::npos);
    CHECK(took < 3s);
    o.total_timeout = -1ms;
    CHECK_THROWS_AS(p2prc::probe_throughput(local(trickle.port()), o), p2prc::error);
}

TEST_CASE("with_deadline: a request that ends in time is not cut; one that does not is") {
    p2prc_test::FakePeer ok(200, "{}", "application/json");
    httplib::Client client("127.0.0.1", ok.port());
    bool fired = true;
    auto res = p2prc::detail::with_deadline(
        client, std::chrono::steady_clock::now() + 2s, [&] { return client.Get("/server_info"); },
        &fired);
    REQUIRE(res);
    CHECK(res->status == 200);
    CHECK_FALSE(fired);

    p2prc_test::TricklePeer trickle(300ms, 8s);
    httplib::Client slow("127.0.0.1", trickle.port());
    slow.set_read_timeout(1, 0);
    const auto t0 = std::chrono::steady_clock::now();
    auto cut = p2prc::detail::with_deadline(
        slow, t0 + 500ms, [&] { return slow.Get("/server_info"); }, &fired);
    CHECK_FALSE(cut);
    CHECK(fired);
    CHECK(std::chrono::steady_clock::now() - t0 < 2s);
}

TEST_CASE("probe_throughput: a /server_info answer over 1 MiB fails with too_large") {
    HttpPeer peer;
    const std::string big = "\"" + std::string(2 << 20, 'a') + "\"";
    peer.http.Get("/server_info", [&](const httplib::Request&, httplib::Response& res) {
        res.set_content(big, "application/json");
    });
    peer.start();
    p2prc::ThroughputOptions o;
    o.download = false;
    o.duration = 200ms;
    o.warmup = 50ms;
    o.byte_budget = 256 * 1024;
    auto r = p2prc::probe_throughput(local(static_cast<std::uint16_t>(peer.port)), o);
    CHECK_FALSE(r.ok);
    CHECK(r.failure == p2prc::ProbeFailure::too_large);
}

TEST_CASE("probe_throughput: an upload answer over 1 MiB fails with too_large") {
    HttpPeer peer;
    const std::string big = "{\"measured_bytes\":1,\"measured_seconds\":1,\"pad\":\"" +
                            std::string(2 << 20, 'a') + "\"}";
    peer.http.Post("/speedtest/upload", [&](const httplib::Request&, httplib::Response& res) {
        res.set_content(big, "application/json");
    });
    peer.start();
    p2prc::ThroughputOptions o;
    o.download = false;
    o.duration = 200ms;
    o.warmup = 50ms;
    o.byte_budget = 256 * 1024;  // the upload body stays small
    auto r = p2prc::probe_throughput(local(static_cast<std::uint16_t>(peer.port)), o);
    CHECK_FALSE(r.ok);
    CHECK(r.failure == p2prc::ProbeFailure::too_large);
    CHECK(r.reason.find("upload") != std::string::npos);

    // The same route with a small answer is measured: the bound is not in the way.
    HttpPeer fine;
    std::atomic<std::size_t> received{0};
    fine.http.Post("/speedtest/upload", [&](const httplib::Request& req, httplib::Response& res) {
        received += req.body.size();
        res.set_content("{\"measured_bytes\":" + std::to_string(req.body.size()) +
                            ",\"measured_seconds\":0.5}",
                        "application/json");
    });
    fine.start();
    auto good = p2prc::probe_throughput(local(static_cast<std::uint16_t>(fine.port)), o);
    REQUIRE_MESSAGE(good.ok, good.reason);
    CHECK(good.upload_bytes == received.load());
    CHECK(good.upload_bytes == 256 * 1024);
}

TEST_CASE("parallel_streams: a thread that cannot start leaves the others to measure") {
    std::atomic<int> calls{0};
    auto fn = [&] {
        ++calls;
        p2prc::detail::StreamFigures f;
        f.ok = true;
        f.bytes = 1000000;
        f.seconds = 1.0;
        return f;
    };
    int started = 0;
    auto start_two = [&](auto&& body) {
        if (started == 2)
            throw std::system_error(
                std::make_error_code(std::errc::resource_unavailable_try_again));
        ++started;
        return std::thread(std::forward<decltype(body)>(body));
    };
    auto sum = p2prc::detail::parallel_streams(5, fn, start_two);
    CHECK(sum.ok);
    CHECK(calls == 3);  // two threads and the caller
    CHECK(sum.bytes == 3000000);
    CHECK(sum.mbps() == doctest::Approx(24.0));

    // A stream that throws becomes a failed stream, not std::terminate.
    auto throws = [&]() -> p2prc::detail::StreamFigures { throw std::runtime_error("boom"); };
    auto failed = p2prc::detail::parallel_streams(3, throws);
    CHECK_FALSE(failed.ok);
    CHECK(failed.failure == p2prc::ProbeFailure::error);
    CHECK(failed.reason == "boom");
}
