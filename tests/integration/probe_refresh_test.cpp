#include <doctest/doctest.h>

#include "p2prc/iptable.hpp"
#include "p2prc/probe.hpp"
#include "p2prc/server.hpp"
#include "support/fake_peer.hpp"

#include <chrono>
#include <map>
#include <thread>

using namespace std::chrono_literals;

namespace {

p2prc::Peer peer_at(const std::string& name, std::uint16_t port) {
    p2prc::Peer p;
    p.name = name;
    p.ipv4 = p2prc::IpAddress::from_string("127.0.0.1");
    p.server_port = port;
    return p;
}

p2prc::RefreshOptions quick() {
    p2prc::RefreshOptions o;
    o.latency.connect_timeout = 500ms;
    o.latency.read_timeout = 400ms;
    o.latency.total_timeout = 3s;
    o.retry_delay = 50ms;
    return o;
}

}  // namespace

TEST_CASE(
    "refresh: dead, silent, failing and lying peers are pruned with the reason; live ones kept") {
    p2prc::ServerOptions so;
    so.bind_address = "127.0.0.1";
    so.worker_threads = 4;
    p2prc::Server live(so);
    live.start();
    p2prc_test::SilentPeer silent;
    p2prc_test::FakePeer failing(500, "{\"error\":\"broken\"}", "application/json");
    p2prc_test::FakePeer html(200, "<!doctype html><p>not a node</p>", "text/html");

    p2prc::IpTable table;
    table.add(peer_at("closed", p2prc_test::closed_port()));
    table.add(peer_at("silent", silent.port()));
    table.add(peer_at("failing", failing.port()));
    table.add(peer_at("html", html.port()));
    table.add(peer_at("live", live.port()));
    // Never "fastest" before being measured.
    CHECK_FALSE(table.lowest_latency());

    std::vector<std::pair<std::size_t, std::size_t>> progress;
    auto o = quick();
    o.progress = [&](std::size_t done, std::size_t total) { progress.emplace_back(done, total); };
    auto report = p2prc::refresh(table, o);

    REQUIRE(report.kept.size() == 1);
    CHECK(report.kept[0].peer.name == "live");
    CHECK(report.kept[0].latency.reachable);
    CHECK(report.kept[0].attempts == 1);
    std::map<std::string, p2prc::ProbeFailure> why;
    for (const auto& e : report.pruned) {
        why[e.peer.name] = e.latency.failure;
        CHECK(e.attempts == 2);  // retried once
        CHECK_FALSE(e.latency.reason.empty());
    }
    CHECK(why.size() == 4);
    CHECK(why["closed"] == p2prc::ProbeFailure::refused);
    CHECK(why["silent"] == p2prc::ProbeFailure::timeout);
    CHECK(why["failing"] == p2prc::ProbeFailure::http_status);
    CHECK(why["html"] == p2prc::ProbeFailure::not_json);

    REQUIRE(table.size() == 1);
    const auto& kept = table.peers()[0];
    CHECK(kept.name == "live");
    REQUIRE(kept.latency_ms);
    CHECK(*kept.latency_ms == doctest::Approx(report.kept[0].latency.min_ms));
    REQUIRE(kept.measured_at);
    CHECK(*kept.measured_at > 1700000000);
    auto best = table.lowest_latency();
    REQUIRE(best);
    CHECK(best->name == "live");

    REQUIRE(progress.size() == 5);
    for (std::size_t i = 0; i < progress.size(); ++i) {
        CHECK(progress[i].first == i + 1);
        CHECK(progress[i].second == 5);
    }
}

TEST_CASE("refresh: without pruning, unreachable peers stay and stay unmeasured") {
    p2prc::IpTable table;
    table.add(peer_at("closed", p2prc_test::closed_port()));
    auto o = quick();
    o.prune = false;
    o.retry = false;
    auto report = p2prc::refresh(table, o);
    CHECK(report.pruned.empty());
    REQUIRE(report.kept.size() == 1);
    CHECK(report.kept[0].attempts == 1);
    CHECK(table.size() == 1);
    CHECK_FALSE(table.peers()[0].latency_ms);
    CHECK_FALSE(table.lowest_latency());
}

TEST_CASE("refresh: a peer that fails once and answers on the retry is kept") {
    const auto port = p2prc_test::closed_port();
    p2prc::IpTable table;
    table.add(peer_at("late", port));
    p2prc::ServerOptions so;
    so.bind_address = "127.0.0.1";
    so.port = port;
    so.worker_threads = 2;
    p2prc::Server late(so);
    auto o = quick();
    o.retry_delay = 600ms;
    std::thread starter([&] {
        std::this_thread::sleep_for(150ms);
        late.start();
    });
    auto report = p2prc::refresh(table, o);
    starter.join();
    REQUIRE(report.kept.size() == 1);
    CHECK(report.kept[0].attempts == 2);
    CHECK(table.size() == 1);
    CHECK(table.peers()[0].latency_ms);
}

TEST_CASE("refresh: throughput figures are recorded when asked; bad options are refused") {
    p2prc::ServerOptions so;
    so.bind_address = "127.0.0.1";
    so.worker_threads = 4;
    p2prc::Server live(so);
    live.start();
    p2prc::IpTable table;
    table.add(peer_at("live", live.port()));
    auto o = quick();
    o.measure_throughput = true;
    o.throughput.duration = 200ms;
    o.throughput.warmup = 50ms;
    auto report = p2prc::refresh(table, o);
    REQUIRE(report.kept.size() == 1);
    REQUIRE(report.kept[0].throughput);
    CHECK(report.kept[0].throughput->ok);
    CHECK(table.peers()[0].download_mbps);
    CHECK(table.peers()[0].upload_mbps);
    o.concurrency = 0;
    CHECK_THROWS_AS(p2prc::refresh(table, o), p2prc::error);
    p2prc::IpTable empty;
    CHECK(p2prc::refresh(empty, quick()).kept.empty());
}
