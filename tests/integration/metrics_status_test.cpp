// GET /metrics (read with a strict Prometheus text reader), GET /status.json and
// `p2prc status`, on a small loopback network: the counters move when a relay carries
// bytes, a peer is pruned, a relay or a connection is refused, a table is learned and an
// exposure fails over; with a network token, what is not public needs it.
#include <p2prc.hpp>

#include "support/node_config.hpp"
#include "support/process.hpp"
#include "support/prometheus.hpp"
#include "support/relay.hpp"
#include "support/tempdir.hpp"

#include <doctest/doctest.h>

#include <httplib.h>

#include <memory>

using namespace std::chrono_literals;
using p2prc::Endpoint;
using p2prc::IpTable;
using p2prc::Node;
using p2prc_test::loopback;
using Labels = std::map<std::string, std::string>;

namespace {

std::unique_ptr<Node> start_node(p2prc::Config c) {
    c.limits.probe_timeout_ms = 1000;
    auto n = std::make_unique<Node>(std::move(c));
    n->start();
    return n;
}

Endpoint endpoint_of(const Node& n) {
    return loopback(n.port());
}

httplib::Result get(const Endpoint& at, const std::string& path, const httplib::Headers& h = {}) {
    httplib::Client c(at.host_string(), at.port);
    c.set_connection_timeout(3, 0);
    c.set_read_timeout(10, 0);
    return c.Get(path.c_str(), h);
}

p2prc_test::PromText scrape(const Node& n, const httplib::Headers& h = {}) {
    auto res = get(endpoint_of(n), "/metrics", h);
    REQUIRE(res);
    REQUIRE(res->status == 200);
    CHECK(res->get_header_value("Content-Type").rfind("text/plain; version=0.0.4", 0) == 0);
    return p2prc_test::parse_prometheus(res->body);
}

nlohmann::json status_of(const Node& n, const httplib::Headers& h = {}) {
    auto res = get(endpoint_of(n), "/status.json", h);
    REQUIRE(res);
    REQUIRE(res->status == 200);
    return nlohmann::json::parse(res->body);
}

template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
        if (pred()) return true;
        std::this_thread::sleep_for(50ms);
    }
    return pred();
}

void list_peer(const std::string& path, const std::string& name, const Endpoint& who,
               std::optional<double> latency_ms = std::nullopt) {
    IpTable::update(path, [&](IpTable& t) {
        p2prc::Peer p;
        p.name = name;
        p.ipv4 = who.address;
        p.server_port = who.port;
        p.latency_ms = latency_ms;
        t.add(p);
    });
}

}  // namespace

TEST_CASE(
    "GET /metrics: relayed bytes, tunnelled connections, prunes and refusals move their counters") {
    p2prc_test::TempDir dir;
    auto rc = p2prc_test::loopback_node_config(dir, "R");
    rc.relay.cap = 1;
    auto R = start_node(rc);
    auto xc = p2prc_test::loopback_node_config(dir, "X");
    auto X = start_node(xc);
    list_peer(xc.iptable, "R", endpoint_of(*R), 1.0);

    // Before anything happened: every family there, the counters at zero.
    auto m0 = scrape(*R);
    CHECK(m0.value("p2prc_relays") == 0);
    CHECK(m0.value("p2prc_relay_bytes_total", {{"direction", "to_service"}}) == 0);
    CHECK(m0.value("p2prc_relay_refusals_total", {{"bound", "cap"}}) == 0);
    CHECK(m0.value("p2prc_peers_pruned_total", {{"reason", "refused"}}) == 0);
    CHECK(m0.value("p2prc_probe_round_duration_seconds_count") == 0);
    CHECK(m0.value("p2prc_node_info",
                   {{"name", "R"}, {"instance", R->instance_id()}, {"version", p2prc::version}}) ==
          1);
    CHECK(m0.families.at("p2prc_relay_connections_total").type == "counter");
    CHECK(m0.families.at("p2prc_relay_connections").type == "gauge");
    CHECK(m0.families.at("p2prc_probe_round_duration_seconds").type == "histogram");

    // X exposes an echo service through R; 123457 bytes go through and come back.
    p2prc_test::EchoServer service;
    auto ex = X->expose(service.endpoint().port);
    REQUIRE(ex.relay == endpoint_of(*R));
    const std::size_t n = 123457;
    auto echo = p2prc_test::echo_roundtrip(ex.public_endpoint, 1, n);
    REQUIRE(echo.matched == n);
    REQUIRE(echo.clean_end);
    REQUIRE(eventually([&] { return scrape(*R).value("p2prc_relay_connections") == 0; }, 10s));
    auto m1 = scrape(*R);
    CHECK(m1.value("p2prc_relays") == 1);
    CHECK(m1.value("p2prc_relays_allocated_total") == 1);
    CHECK(m1.value("p2prc_relay_clients") == 1);
    CHECK(m1.value("p2prc_relay_connections_total") == 1);
    CHECK(m1.value("p2prc_relay_bytes_total", {{"direction", "to_service"}}) == double(n));
    CHECK(m1.value("p2prc_relay_bytes_total", {{"direction", "to_user"}}) == double(n));
    auto mx = scrape(*X);
    CHECK(mx.value("p2prc_exposures", {{"state", "up"}}) == 1);

    // The same facts as JSON, relay by relay and exposure by exposure.
    auto sr = status_of(*R);
    REQUIRE(sr["relays"]["list"].size() == 1);
    CHECK(sr["relays"]["list"][0]["port"] == ex.relay_port);
    CHECK(sr["relays"]["list"][0]["clients"] == 1);
    CHECK(sr["relays"]["list"][0]["public_ports"] ==
          nlohmann::json::array({ex.public_endpoint.port}));
    CHECK(sr["relays"]["list"][0]["bytes_in"] == n);
    CHECK(sr["relays"]["list"][0]["connections_total"] == 1);
    auto sx = status_of(*X);
    REQUIRE(sx["exposures"].size() == 1);
    CHECK(sx["exposures"][0]["public"] == ex.public_endpoint.to_string());
    CHECK(sx["exposures"][0]["relay"] == endpoint_of(*R).to_string());
    REQUIRE(sx["table"].size() == 1);
    CHECK(sx["table"][0]["endpoint"] == endpoint_of(*R).to_string());
    CHECK(sx["table"][0]["latency_ms"] == 1.0);

    // The cap is 1: another /FRPPort is refused and counted.
    auto refused = get(endpoint_of(*R), "/FRPPort");
    REQUIRE(refused);
    CHECK(refused->status == 503);
    CHECK(scrape(*R).value("p2prc_relay_refusals_total", {{"bound", "cap"}}) == 1);

    // A dead peer in R's table: one probe round prunes it.
    const auto dead = loopback(p2prc_test::free_port());
    list_peer(rc.iptable, "dead", dead, 5.0);
    list_peer(rc.iptable, "X", endpoint_of(*X));
    auto m2 = scrape(*R);
    CHECK(m2.value("p2prc_peers", {{"nat", "false"}}) == 2);
    CHECK(m2.value("p2prc_peers_measured") == 1);
    auto round = R->update();
    REQUIRE(round.pruned.size() == 1);
    auto m3 = scrape(*R);
    CHECK(m3.value("p2prc_peers_pruned_total", {{"reason", "refused"}}) == 1);
    CHECK(m3.value("p2prc_probe_round_duration_seconds_count") == 1);
    CHECK(m3.value("p2prc_probe_round_duration_seconds_bucket", {{"le", "+Inf"}}) == 1);
    CHECK(m3.value("p2prc_peers", {{"nat", "false"}}) == 1);
    CHECK(X->unexpose(service.endpoint().port));
}

TEST_CASE("GET /metrics: tables learned from peers are counted as accepted or refused, by reason") {
    p2prc_test::TempDir dir;
    auto A = start_node(p2prc_test::loopback_node_config(dir, "A"));
    auto B = start_node(p2prc_test::loopback_node_config(dir, "B"));
    IpTable sent;
    p2prc::Peer alive, dead;
    alive.name = "B";
    alive.ipv4 = p2prc::IpAddress::from_string("127.0.0.1");
    alive.server_port = B->port();
    dead.name = "gone";
    dead.ipv4 = alive.ipv4;
    dead.server_port = p2prc_test::free_port();
    sent.add(alive);
    sent.add(dead);
    httplib::Client c("127.0.0.1", A->port());
    c.set_read_timeout(20, 0);
    auto res = c.Post("/IpTable", sent.dump(), "application/json");
    REQUIRE(res);
    REQUIRE(res->status == 200);
    auto m = scrape(*A);
    CHECK(m.value("p2prc_learned_entries_total", {{"result", "accepted"}, {"reason", "alive"}}) ==
          1);
    CHECK(m.value("p2prc_learned_entries_total", {{"result", "refused"}, {"reason", "dead"}}) == 1);
    CHECK(m.value("p2prc_learned_entries_total", {{"result", "refused"}, {"reason", "scope"}}) ==
          0);
    CHECK(A->table().size() == 1);
}

TEST_CASE("GET /metrics: dialbacks are counted on both sides, by result") {
    p2prc_test::TempDir dir;
    auto A = start_node(p2prc_test::loopback_node_config(dir, "A"));
    auto xc = p2prc_test::loopback_node_config(dir, "X");
    xc.behind_nat = p2prc::BehindNat::automatic;
    auto X = start_node(xc);
    list_peer(xc.iptable, "A", endpoint_of(*A), 1.0);
    // X asks A to connect back; on loopback it can.
    auto r = X->check_reachability();
    REQUIRE(r.decided);
    CHECK(r.reachable);
    CHECK(scrape(*X).value("p2prc_dialbacks_total", {{"role", "asked"}, {"result", "reachable"}}) ==
          1);
    CHECK(scrape(*A).value("p2prc_dialbacks_total",
                           {{"role", "served"}, {"result", "reachable"}}) == 1);
    // A port nobody listens on: A cannot connect.
    httplib::Client c("127.0.0.1", A->port());
    c.set_read_timeout(10, 0);
    auto res = c.Post("/dialback", nlohmann::json{{"port", p2prc_test::free_port()}}.dump(),
                      "application/json");
    REQUIRE(res);
    CHECK(res->status == 200);
    CHECK(nlohmann::json::parse(res->body)["reachable"] == false);
    auto m = scrape(*A);
    CHECK(m.value("p2prc_dialbacks_total", {{"role", "served"}, {"result", "unreachable"}}) == 1);
    CHECK(m.value("p2prc_dialbacks_total", {{"role", "served"}, {"result", "reachable"}}) == 1);
}

TEST_CASE("a relay counts the connections it refuses at its connection bound") {
    auto opt = p2prc_test::server_options();
    opt.max_connections = 4;
    opt.login_timeout = 20000ms;  // the silent connections below hold their slots
    // As in a node's relay pool: the relay's own counts, added up in a parent's.
    auto pool_total = std::make_shared<p2prc::frp::TrafficStats>();
    opt.stats = std::make_shared<p2prc::frp::TrafficStats>();
    opt.stats->parent = pool_total;
    p2prc::frp::Server relay(opt);
    std::vector<std::shared_ptr<p2prc::detail::TcpConnection>> conns;
    for (int i = 0; i < 10; ++i)
        conns.push_back(p2prc::detail::TcpConnection::connect(loopback(relay.port()), 3000ms));
    // 4 are held while they say nothing; the 6 others are closed at once and counted.
    CHECK(eventually([&] { return relay.stats().refused_connections == 6; }, 10s));
    CHECK(relay.stats().refused_connections == 6);
    CHECK(relay.stats().connections_total == 0);
    CHECK(pool_total->refused_connections == 6);
    for (auto& c : conns) c->close();
}

TEST_CASE("GET /metrics: an exposure that fails over to another relay is counted as a failover") {
    p2prc_test::TempDir dir;
    auto B = start_node(p2prc_test::loopback_node_config(dir, "B"));
    auto C = start_node(p2prc_test::loopback_node_config(dir, "C"));
    auto xc = p2prc_test::loopback_node_config(dir, "X");
    auto X = start_node(xc);
    list_peer(xc.iptable, "B", endpoint_of(*B), 1.0);
    list_peer(xc.iptable, "C", endpoint_of(*C), 1.0);
    p2prc_test::EchoServer service;
    p2prc::ExposeOptions eo;
    eo.reevaluate_interval = 0ms;
    eo.failure_grace = 500ms;
    // Both are about as near on loopback: whichever X takes first, the other is next.
    auto ex = X->expose(service.endpoint().port, eo);
    const bool on_b = ex.relay == endpoint_of(*B);
    REQUIRE((on_b || ex.relay == endpoint_of(*C)));
    const Endpoint next = on_b ? endpoint_of(*C) : endpoint_of(*B);
    CHECK(scrape(*X).value("p2prc_exposure_changes_total", {{"reason", "failover"}}) == 0);
    (on_b ? B : C)->stop();
    REQUIRE(eventually(
        [&] {
            auto now = X->exposure(service.endpoint().port);
            return now && now->relay == next;
        },
        30s));
    auto m = scrape(*X);
    CHECK(m.value("p2prc_exposure_changes_total", {{"reason", "failover"}}) == 1);
    CHECK(m.value("p2prc_exposure_changes_total", {{"reason", "move"}}) == 0);
    CHECK(status_of(*X)["exposures"][0]["last_change"] == "failover");
    CHECK(X->unexpose(service.endpoint().port));
}

TEST_CASE(
    "with a network token, /metrics and the relays and exposures of /status.json need it; the page "
    "is self-contained") {
    p2prc_test::TempDir dir;
    auto cfg = p2prc_test::loopback_node_config(dir, "T");
    cfg.token = "s3cret-token";
    auto T = start_node(cfg);
    list_peer(cfg.iptable, "P", loopback(p2prc_test::free_port()), 2.0);
    const auto at = endpoint_of(*T);

    auto denied = get(at, "/metrics");
    REQUIRE(denied);
    CHECK(denied->status == 401);
    CHECK(nlohmann::json::parse(denied->body)["error"].get<std::string>().find("token") !=
          std::string::npos);
    auto wrong = get(at, "/metrics", {{"X-P2PRC-Token", "s3cret-tokem"}});
    REQUIRE(wrong);
    CHECK(wrong->status == 401);
    CHECK_NOTHROW(scrape(*T, {{"X-P2PRC-Token", "s3cret-token"}}));
    auto by_query = get(at, "/metrics?token=s3cret-token");
    REQUIRE(by_query);
    CHECK(by_query->status == 200);

    // The table is public; the rest is not.
    auto pub = status_of(*T);
    CHECK(pub["access"]["token_required"] == true);
    CHECK(pub["access"]["full"] == false);
    CHECK(pub["node"]["name"] == "T");
    REQUIRE(pub["table"].size() == 1);
    CHECK(pub["table"][0]["name"] == "P");
    CHECK_FALSE(pub.contains("relays"));
    CHECK_FALSE(pub.contains("exposures"));
    auto bad = get(at, "/status.json", {{"X-P2PRC-Token", "nope"}});
    REQUIRE(bad);
    CHECK(bad->status == 401);
    auto full = status_of(*T, {{"X-P2PRC-Token", "s3cret-token"}});
    CHECK(full["access"]["full"] == true);
    CHECK(full["relays"]["live"] == 0);
    CHECK(full["exposures"].empty());

    for (const char* path : {"/status", "/"}) {
        auto page = get(at, path);
        REQUIRE(page);
        CHECK(page->status == 200);
        CHECK(page->get_header_value("Content-Type") == "text/html; charset=utf-8");
        CHECK(page->get_header_value("Content-Security-Policy").find("default-src 'none'") !=
              std::string::npos);
        CHECK(page->body.find("status.json") != std::string::npos);
        // Nothing is loaded from elsewhere.
        for (const char* outside : {"http://", "https://", "src=", "<link", "@import", "url("})
            CHECK_MESSAGE(page->body.find(outside) == std::string::npos, outside);
    }
}

#ifdef P2PRC_CLI
TEST_CASE(
    "p2prc status prints the node's facts, as text or --json, and says what needs the token") {
    p2prc_test::TempDir dir;
    auto cfg = p2prc_test::loopback_node_config(dir, "S");
    cfg.token = "tok";
    auto S = start_node(cfg);
    list_peer(cfg.iptable, "peer-one", loopback(p2prc_test::free_port()), 3.5);
    const std::string at = endpoint_of(*S).to_string();

    auto j = p2prc_test::run_command({P2PRC_CLI, "--token", "tok", "status", at, "--json"},
                                     dir.path().string());
    REQUIRE_MESSAGE(j.code == 0, j.err);
    auto parsed = nlohmann::json::parse(j.out);
    CHECK(parsed["node"]["name"] == "S");
    CHECK(parsed["access"]["full"] == true);
    REQUIRE(parsed["table"].size() == 1);
    CHECK(parsed["table"][0]["name"] == "peer-one");

    auto t = p2prc_test::run_command({P2PRC_CLI, "status", at}, dir.path().string());
    REQUIRE_MESSAGE(t.code == 0, t.err);
    CHECK(t.out.find("S") != std::string::npos);
    CHECK(t.out.find("peer-one") != std::string::npos);
    CHECK(t.out.find("3.5 ms") != std::string::npos);
    CHECK(t.out.find("network token") != std::string::npos);  // relays and exposures withheld

    auto w =
        p2prc_test::run_command({P2PRC_CLI, "--token", "wrong", "status", at}, dir.path().string());
    CHECK(w.code == 1);
    CHECK(w.err.find("token") != std::string::npos);

    auto none = p2prc_test::run_command(
        {P2PRC_CLI, "status", loopback(p2prc_test::free_port()).to_string()}, dir.path().string());
    CHECK(none.code == 1);
    CHECK(none.err.find("no answer") != std::string::npos);
}
#endif
