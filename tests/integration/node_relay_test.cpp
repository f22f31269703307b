// NAT traversal in the node, on loopback: GET /FRPPort (a bare port, an frps-compatible
// login on it, the cap, reclaiming, the token), Node::expose (the nearest measured relay
// that is not behind NAT, failover, no flapping, moving to a clearly nearer relay),
// POST /dialback, and `p2prc serve` with behind_nat auto ending up advertised through a
// relay.
#include <p2prc.hpp>

#include "support/delay_proxy.hpp"
#include "support/node_config.hpp"
#include "support/process.hpp"
#include "support/relay.hpp"
#include "support/tempdir.hpp"

#include <doctest/doctest.h>

#include <httplib.h>

#include <memory>
#include <regex>

using namespace std::chrono_literals;
using p2prc::Endpoint;
using p2prc::IpAddress;
using p2prc::IpTable;
using p2prc::Node;
using p2prc_test::loopback;

namespace {

p2prc::Config node_config(const p2prc_test::TempDir& dir, const std::string& name) {
    auto c = p2prc_test::loopback_node_config(dir, name);
    c.limits.probe_timeout_ms = 1000;
    return c;
}

std::unique_ptr<Node> start_node(p2prc::Config c) {
    auto n = std::make_unique<Node>(std::move(c));
    n->start();
    return n;
}

Endpoint endpoint_of(const Node& n) { return loopback(n.port()); }

httplib::Result get(const Endpoint& at, const std::string& path, const httplib::Headers& h = {}) {
    httplib::Client c(at.host_string(), at.port);
    c.set_connection_timeout(3, 0);
    c.set_read_timeout(5, 0);
    return c.Get(path.c_str(), h);
}

httplib::Result post_json(const Endpoint& at, const std::string& path, const std::string& body) {
    httplib::Client c(at.host_string(), at.port);
    c.set_connection_timeout(3, 0);
    c.set_read_timeout(10, 0);
    return c.Post(path.c_str(), body, "application/json");
}

// An frp client exposing `local` through the relay at `server`; waits until it runs or fails.
struct Tunnel {
    std::unique_ptr<p2prc::frp::Client> client;
    p2prc::frp::ProxyStatus status;
};

Tunnel frp_login(const Endpoint& server, const Endpoint& local, const std::string& token = {}) {
    p2prc::frp::ClientOptions o;
    o.server = server;
    o.token = token;
    o.reconnect_min = 100ms;
    o.reconnect_max = 500ms;
    p2prc::frp::ProxySpec p;
    p.name = "svc";
    p.local = local;
    o.proxies.push_back(p);
    Tunnel t;
    t.client = std::make_unique<p2prc::frp::Client>(o);
    t.status = t.client->wait_running("svc", 10s);
    return t;
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

// Lists `who` in the table at `path` under `name`, optionally with figures and NAT.
void list_peer(const std::string& path, const std::string& name, const Endpoint& who,
               std::optional<double> latency_ms = std::nullopt, bool nat = false) {
    IpTable::update(path, [&](IpTable& t) {
        p2prc::Peer p;
        p.name = name;
        p.ipv4 = who.address;
        p.server_port = who.port;
        p.latency_ms = latency_ms;
        p.nat = nat;
        if (nat) p.escape_implementation = "FRP";
        t.add(p);
    });
}

}  // namespace

TEST_CASE("GET /FRPPort answers a bare port on which an frps-compatible login works") {
    p2prc_test::TempDir dir;
    auto relay = start_node(node_config(dir, "relay"));
    auto res = get(endpoint_of(*relay), "/FRPPort");
    REQUIRE(res);
    CHECK(res->status == 200);
    REQUIRE(std::regex_match(res->body, std::regex("[0-9]{1,5}")));
    const auto port = static_cast<std::uint16_t>(std::stoi(res->body));
    CHECK(port != relay->port());

    p2prc_test::EchoServer echo;
    auto t = frp_login(loopback(port), echo.endpoint());
    REQUIRE(t.status.state == p2prc::frp::ProxyState::running);
    CHECK(t.status.public_endpoint.port != 0);
    auto r = p2prc_test::echo_roundtrip(t.status.public_endpoint, 0, 200000);
    CHECK(r.matched == 200000);
    CHECK(r.clean_end);

    SUBCASE("?udp=true is refused with a JSON error: UDP proxies are not supported") {
        auto u = get(endpoint_of(*relay), "/FRPPort?udp=true");
        REQUIRE(u);
        CHECK(u->status == 501);
        CHECK(nlohmann::json::parse(u->body).at("error").get<std::string>().find("UDP") != std::string::npos);
    }
}

TEST_CASE("GET /FRPPort: the cap on live relays, then 503 with a JSON error") {
    p2prc_test::TempDir dir;
    auto c = node_config(dir, "relay");
    c.relay.cap = 2;
    auto relay = start_node(c);
    std::vector<std::uint16_t> ports;
    for (int i = 0; i < 2; ++i) {
        auto res = get(endpoint_of(*relay), "/FRPPort");
        REQUIRE(res);
        REQUIRE(res->status == 200);
        ports.push_back(static_cast<std::uint16_t>(std::stoi(res->body)));
    }
    CHECK(ports[0] != ports[1]);
    for (auto p : ports) CHECK(p2prc_test::port_open(p));
    auto over = get(endpoint_of(*relay), "/FRPPort");
    REQUIRE(over);
    CHECK(over->status == 503);
    auto j = nlohmann::json::parse(over->body, nullptr, false);
    REQUIRE(j.is_object());
    CHECK(j.at("error").get<std::string>().find("2 relays") != std::string::npos);

    SUBCASE("relay.cap 0: the node relays for nobody") {
        auto c0 = node_config(dir, "norelay");
        c0.relay.cap = 0;
        auto none = start_node(c0);
        auto r0 = get(endpoint_of(*none), "/FRPPort");
        REQUIRE(r0);
        CHECK(r0->status == 503);
    }
}

TEST_CASE("GET /FRPPort: a relay nobody logs into is reclaimed; one in use is kept until its client leaves") {
    p2prc_test::TempDir dir;
    auto c = node_config(dir, "relay");
    c.relay.cap = 1;
    c.relay.login_timeout_s = 2;  // room for the 503 below on a loaded machine
    c.relay.idle_timeout_s = 1;
    auto relay = start_node(c);

    auto first = get(endpoint_of(*relay), "/FRPPort");
    REQUIRE(first);
    REQUIRE(first->status == 200);
    const auto unused = static_cast<std::uint16_t>(std::stoi(first->body));
    CHECK(p2prc_test::port_open(unused));
    // At the cap until it is reclaimed.
    auto full = get(endpoint_of(*relay), "/FRPPort");
    REQUIRE(full);
    CHECK(full->status == 503);
    CHECK(eventually([&] { return !p2prc_test::port_open(unused); }, 20s));

    // The slot is free again; this time a client logs in and stays.
    auto second = get(endpoint_of(*relay), "/FRPPort");
    REQUIRE(second);
    REQUIRE(second->status == 200);
    const auto used = static_cast<std::uint16_t>(std::stoi(second->body));
    p2prc_test::EchoServer echo;
    auto t = frp_login(loopback(used), echo.endpoint());
    REQUIRE(t.status.state == p2prc::frp::ProxyState::running);
    std::this_thread::sleep_for(3500ms);  // past both timeouts
    CHECK(p2prc_test::port_open(used));
    CHECK(t.client->status("svc").state == p2prc::frp::ProxyState::running);
    CHECK(p2prc_test::echo_roundtrip(t.status.public_endpoint, 1, 10000).matched == 10000);

    // The client leaves: the relay is reclaimed after the idle time.
    t.client->stop();
    CHECK(eventually([&] { return !p2prc_test::port_open(used); }, 20s));
}

TEST_CASE("GET /FRPPort and the relay's login require the network token when one is set") {
    p2prc_test::TempDir dir;
    auto c = node_config(dir, "relay");
    c.token = "s3cret-token";
    auto relay = start_node(c);
    auto none = get(endpoint_of(*relay), "/FRPPort");
    REQUIRE(none);
    CHECK(none->status == 401);
    CHECK(nlohmann::json::parse(none->body).contains("error"));
    auto wrong = get(endpoint_of(*relay), "/FRPPort", {{"X-P2PRC-Token", "s3cret-tokeN"}});
    REQUIRE(wrong);
    CHECK(wrong->status == 401);
    auto by_query = get(endpoint_of(*relay), "/FRPPort?token=s3cret-token");
    REQUIRE(by_query);
    CHECK(by_query->status == 200);
    auto by_header = get(endpoint_of(*relay), "/FRPPort", {{"X-P2PRC-Token", "s3cret-token"}});
    REQUIRE(by_header);
    REQUIRE(by_header->status == 200);
    const auto port = static_cast<std::uint16_t>(std::stoi(by_header->body));

    p2prc_test::EchoServer echo;
    auto bad = frp_login(loopback(port), echo.endpoint(), "not-the-token");
    CHECK(bad.status.state == p2prc::frp::ProxyState::failed);
    CHECK(bad.client->last_error().find("token") != std::string::npos);
    auto good = frp_login(loopback(port), echo.endpoint(), "s3cret-token");
    REQUIRE(good.status.state == p2prc::frp::ProxyState::running);
    CHECK(p2prc_test::echo_roundtrip(good.status.public_endpoint, 2, 10000).matched == 10000);
}

TEST_CASE("relay_switch_worthwhile: at least 10 ms and a third faster") {
    CHECK(p2prc::relay_switch_worthwhile(30, 19));
    CHECK(p2prc::relay_switch_worthwhile(100, 66));
    CHECK_FALSE(p2prc::relay_switch_worthwhile(20, 14));   // a third faster, but only 6 ms
    CHECK_FALSE(p2prc::relay_switch_worthwhile(100, 80));  // 20 ms faster, but not a third
    CHECK_FALSE(p2prc::relay_switch_worthwhile(12, 9));
    CHECK_FALSE(p2prc::relay_switch_worthwhile(10, 10));
    CHECK_FALSE(p2prc::relay_switch_worthwhile(10, 50));
}

TEST_CASE("expose chooses the nearest measured relay, never an unmeasured or NAT'd peer, and fails over") {
    p2prc_test::TempDir dir;
    auto A = start_node(node_config(dir, "A"));
    auto B = start_node(node_config(dir, "B"));
    auto C = start_node(node_config(dir, "C"));
    auto D = start_node(node_config(dir, "D"));  // unmeasured
    auto E = start_node(node_config(dir, "E"));  // behind NAT (as its entry says)
    // One-way delays: A 40 ms, B 3 ms, C 15 ms (round trips about 80, 6, 30 ms).
    p2prc_test::DelayProxy proxy({{A->port(), 40ms}, {B->port(), 3ms}, {C->port(), 15ms}});
    const Endpoint viaA = loopback(proxy.port(0)), viaB = loopback(proxy.port(1)), viaC = loopback(proxy.port(2));

    auto xc = node_config(dir, "X");
    Node X(xc);
    list_peer(xc.iptable, "A", viaA);
    list_peer(xc.iptable, "B", viaB);
    list_peer(xc.iptable, "C", viaC);
    auto refreshed = X.update();
    REQUIRE(refreshed.pruned.empty());
    // Direct (so nearer than any of the three) but not eligible:
    list_peer(xc.iptable, "D", endpoint_of(*D));
    list_peer(xc.iptable, "E", endpoint_of(*E), 0.01, true);

    p2prc_test::EchoServer service;
    std::mutex mu;
    std::vector<p2prc::Exposure> changes;
    p2prc::ExposeOptions eo;
    eo.reevaluate_interval = 0ms;
    eo.failure_grace = 500ms;
    eo.on_change = [&](const p2prc::Exposure& e) {
        std::lock_guard<std::mutex> lock(mu);
        changes.push_back(e);
    };
    auto ex = X.expose(service.endpoint().port, eo);
    CHECK(ex.relay == viaB);
    CHECK(ex.relay_name == "B");
    CHECK(ex.relay_latency_ms >= 5.0);  // the injected delay (no upper bound: the machine may be loaded)
    CHECK(ex.public_endpoint.address == IpAddress::from_string("127.0.0.1"));
    auto r = p2prc_test::echo_roundtrip(ex.public_endpoint, 3, 300000);
    CHECK(r.matched == 300000);
    CHECK(r.clean_end);
    REQUIRE(X.exposure(service.endpoint().port));
    CHECK(X.exposure(service.endpoint().port)->public_endpoint == ex.public_endpoint);
    CHECK_THROWS_AS(X.expose(service.endpoint().port, eo), p2prc::error);

    // The relay dies: the tunnel moves to the next nearest, C.
    B->stop();
    REQUIRE(eventually([&] {
        auto now = X.exposure(service.endpoint().port);
        return now && now->relay == viaC;
    }, 30s));
    auto moved = *X.exposure(service.endpoint().port);
    CHECK(moved.changes == 1);
    CHECK(p2prc_test::echo_roundtrip(moved.public_endpoint, 4, 300000).matched == 300000);
    {
        std::lock_guard<std::mutex> lock(mu);
        REQUIRE(changes.size() == 1);
        CHECK(changes[0].relay == viaC);
        CHECK(changes[0].public_endpoint == moved.public_endpoint);
    }
    CHECK(X.unexpose(service.endpoint().port));
    CHECK_FALSE(X.exposure(service.endpoint().port));
    // The relay closes the public port when it notices the client gone: soon, not at once.
    CHECK(eventually([&] { return !p2prc_test::port_open(moved.public_endpoint.port); }, 20s));
}

TEST_CASE("expose with no eligible relay fails with an error naming why") {
    p2prc_test::TempDir dir;
    auto D = start_node(node_config(dir, "D"));
    auto xc = node_config(dir, "X");
    Node X(xc);
    list_peer(xc.iptable, "D", endpoint_of(*D));  // not measured
    p2prc_test::EchoServer service;
    try {
        X.expose(service.endpoint().port);
        FAIL("expose succeeded without an eligible relay");
    } catch (const p2prc::error& e) {
        CHECK(std::string(e.what()).find("no relay candidate") != std::string::npos);
    }
    // A measured relay that refuses (cap 0) is named with its reason.
    auto c0 = node_config(dir, "R0");
    c0.relay.cap = 0;
    auto R0 = start_node(c0);
    list_peer(xc.iptable, "R0", endpoint_of(*R0), 1.0);
    try {
        X.expose(service.endpoint().port);
        FAIL("expose succeeded through a node that does not relay");
    } catch (const p2prc::error& e) {
        CHECK(std::string(e.what()).find(endpoint_of(*R0).to_string()) != std::string::npos);
        CHECK(std::string(e.what()).find("does not relay") != std::string::npos);
    }
    CHECK_FALSE(X.exposure(service.endpoint().port));
}

TEST_CASE("expose does not flap between two relays within 5 ms, and moves to a clearly nearer one") {
    p2prc_test::TempDir dir;
    auto A = start_node(node_config(dir, "A"));
    auto B = start_node(node_config(dir, "B"));
    auto C = start_node(node_config(dir, "C"));
    // A and B: one way 30 and 32 ms (round trips 60 and 64 ms): a move would take a sample
    // of the current one 36 ms late three times over, which a loaded machine does not do
    // the way it may add 10 ms to a round trip of 8. C: 120 ms one way.
    p2prc_test::DelayProxy proxy({{A->port(), 30ms}, {B->port(), 32ms}, {C->port(), 120ms}});
    const Endpoint viaA = loopback(proxy.port(0)), viaB = loopback(proxy.port(1)), viaC = loopback(proxy.port(2));
    auto xc = node_config(dir, "X");
    Node X(xc);
    list_peer(xc.iptable, "A", viaA);
    list_peer(xc.iptable, "B", viaB);
    REQUIRE(X.update().pruned.empty());

    p2prc_test::EchoServer service;
    p2prc::ExposeOptions eo;
    eo.reevaluate_interval = 150ms;
    auto first = X.expose(service.endpoint().port, eo);
    CHECK((first.relay == viaA || first.relay == viaB));
    // About 15 re-evaluations: the tunnel stays where it is.
    std::this_thread::sleep_for(2500ms);
    auto later = X.exposure(service.endpoint().port);
    REQUIRE(later);
    CHECK(later->relay == first.relay);
    CHECK(later->changes == 0);
    CHECK(later->public_endpoint == first.public_endpoint);
    X.unexpose(service.endpoint().port);

    // Now from the far relay C (the only one listed): when the near A appears in the table,
    // the next re-evaluation moves the tunnel there.
    auto yc = node_config(dir, "Y");
    Node Y(yc);
    list_peer(yc.iptable, "C", viaC);
    REQUIRE(Y.update().pruned.empty());
    auto far = Y.expose(service.endpoint().port, eo);
    CHECK(far.relay == viaC);
    list_peer(yc.iptable, "A", viaA, 60.0);
    CHECK(eventually([&] {
        auto now = Y.exposure(service.endpoint().port);
        return now && now->relay == viaA;
    }, 30s));
    auto near = Y.exposure(service.endpoint().port);
    REQUIRE(near);
    CHECK(near->changes == 1);
    CHECK(p2prc_test::echo_roundtrip(near->public_endpoint, 5, 100000).matched == 100000);
}

TEST_CASE("POST /dialback connects back to the caller only, answers whether it could, and is rate-limited") {
    p2prc_test::TempDir dir;
    auto N = start_node(node_config(dir, "N"));

    SUBCASE("reachable and unreachable") {
        p2prc::detail::TcpListener open(loopback());
        auto yes = p2prc::request_dialback(endpoint_of(*N), open.port());
        CHECK(yes.answered);
        CHECK(yes.reachable);
        REQUIRE(yes.observed);
        CHECK(*yes.observed == IpAddress::from_string("127.0.0.1"));
        CHECK(open.accept(2000ms) != nullptr);  // the connection really came

        const auto closed = p2prc_test::free_port();
        auto no = p2prc::request_dialback(endpoint_of(*N), closed);
        CHECK(no.answered);
        CHECK_FALSE(no.reachable);
        CHECK_FALSE(no.reason.empty());
    }
    SUBCASE("it never dials an address other than the caller's") {
        // A listener on 127.0.0.2 only; the request names that address every way it can.
        p2prc::detail::TcpListener elsewhere(Endpoint{IpAddress::from_string("127.0.0.2"), 0});
        const auto port = elsewhere.port();
        auto res = post_json(endpoint_of(*N), "/dialback",
                             nlohmann::json{{"port", port}, {"address", "127.0.0.2"}, {"host", "127.0.0.2"},
                                            {"ip", "127.0.0.2"}}.dump());
        REQUIRE(res);
        REQUIRE(res->status == 200);
        auto j = nlohmann::json::parse(res->body);
        CHECK(j.at("address") == "127.0.0.1");
        CHECK(j.at("reachable") == (p2prc_test::port_open(port)));  // 127.0.0.1:port, whatever is there
        CHECK(elsewhere.accept(500ms) == nullptr);
    }
    SUBCASE("bad bodies get a clear 400") {
        for (const char* body : {"", "{}", "{\"port\": 0}", "{\"port\": 70000}", "{\"port\": \"x\"}", "[1]"}) {
            auto res = post_json(endpoint_of(*N), "/dialback", body);
            REQUIRE(res);
            CHECK(res->status == 400);
            CHECK(nlohmann::json::parse(res->body).at("error").get<std::string>().find("port") != std::string::npos);
        }
    }
    SUBCASE("rate limit: a burst of 3, then 429 with Retry-After") {
        const auto closed = p2prc_test::free_port();
        const std::string body = nlohmann::json{{"port", closed}}.dump();
        for (int i = 0; i < 3; ++i) {
            auto res = post_json(endpoint_of(*N), "/dialback", body);
            REQUIRE(res);
            CHECK(res->status == 200);
        }
        auto limited = post_json(endpoint_of(*N), "/dialback", body);
        REQUIRE(limited);
        CHECK(limited->status == 429);
        CHECK(limited->has_header("Retry-After"));
        auto again = p2prc::request_dialback(endpoint_of(*N), closed);
        CHECK_FALSE(again.answered);
        CHECK(again.reason.find("429") != std::string::npos);
    }
}

TEST_CASE("p2prc serve with behind_nat auto, unreachable on its port, is advertised through a relay") {
    p2prc_test::TempDir dir;
    auto R = start_node(node_config(dir, "R"));
    // The node listens on 127.0.0.2 only; its requests leave from 127.0.0.1, so the relay's
    // dialback (to the caller's address) finds nothing: as behind a NAT.
    const std::string table = dir.file("N.json");
    list_peer(table, "R", endpoint_of(*R), 1.0);
    p2prc_test::ChildProcess serve({P2PRC_CLI, "--json", "--name", "N", "--bind", "127.0.0.2", "--port", "0", "--table",
                                    table, "serve"},
                                   dir.file("N.out"), dir.file("N.err"));
    auto started = nlohmann::json::parse(serve.first_line(10s));
    const auto own_port = started.at("port").get<std::uint16_t>();
    std::optional<Endpoint> public_endpoint;
    REQUIRE(eventually([&] {
        auto out = serve.out();
        auto at = out.find("{\"relayed\"");
        if (at == std::string::npos) return false;
        auto line = out.substr(at, out.find('\n', at) - at);
        public_endpoint = Endpoint::from_string(
            nlohmann::json::parse(line).at("relayed").at("public_endpoint").get<std::string>());
        return true;
    }, 40s));
    INFO("stderr: " << serve.err());
    CHECK(public_endpoint->address == IpAddress::from_string("127.0.0.1"));
    CHECK(public_endpoint->port != own_port);

    // A peer reaches its /server_info through the relay endpoint.
    auto info = get(*public_endpoint, "/server_info");
    REQUIRE(info);
    CHECK(info->status == 200);
    CHECK(nlohmann::json::parse(info->body).contains("Hostname"));

    // And it advertises that endpoint, marked NAT + FRP, as P2PRC does.
    p2prc::GossipOptions go;
    auto answer = p2prc::exchange_tables(*public_endpoint, IpTable{}, go);
    REQUIRE(answer.ok);
    const p2prc::Peer* self = answer.table.find(public_endpoint->to_string());
    REQUIRE(self != nullptr);
    CHECK(self->name == "N");
    CHECK(self->nat);
    CHECK(self->escape_implementation == "FRP");
    serve.signal(SIGTERM);
    CHECK(serve.wait(10s) == 0);
}

namespace {

// An HTTP server on loopback with /server_info (so it can be measured) and the routes given.
std::unique_ptr<p2prc::Server> fake_relay(const std::string& path, p2prc::RouteHandler h,
                                          p2prc::RouteHandler dialback = {}) {
    p2prc::ServerOptions so;
    so.bind_address = "127.0.0.1";
    auto s = std::make_unique<p2prc::Server>(so);
    s->get(path, std::move(h));
    if (dialback) s->post("/dialback", std::move(dialback));
    s->start();
    return s;
}

void answer_port(p2prc::HttpResponse& r, std::uint16_t port) {
    r.status = 200;
    r.content_type = "text/plain";
    r.body = std::to_string(port);
}

}  // namespace

TEST_CASE("RelayTunnel: stop() while start() brings the tunnel up ends start() with state_error") {
    p2prc::frp::ServerOptions so;
    so.bind = loopback();
    p2prc::frp::Server frps(so);
    p2prc::RelayTunnel* tunnel = nullptr;
    std::atomic<bool> asked{false};
    // The relay's answer comes after the tunnel was stopped: start() must not go on to
    // start its monitor (a thread nobody would join) and keep a client nobody stops.
    auto fake = fake_relay("/FRPPort", [&](const p2prc::HttpRequest&, p2prc::HttpResponse& r) {
        asked = true;
        tunnel->stop();
        answer_port(r, frps.port());
    });
    p2prc_test::EchoServer service;
    auto rank = [&](const std::vector<Endpoint>&) {
        return std::vector<p2prc::RelayCandidate>{{"fake", loopback(fake->port()), 1.0}};
    };
    auto measure = [](const Endpoint&) -> std::optional<double> { return 1.0; };
    {
        p2prc::RelayTunnel t(service.endpoint(), "", {}, rank, measure);
        tunnel = &t;
        std::optional<p2prc::errc> code;
        try {
            t.start();
        } catch (const p2prc::error& e) {
            code = e.code();
        }
        CHECK(asked);
        REQUIRE(code);
        CHECK(*code == p2prc::errc::state_error);
        CHECK_FALSE(t.current());
    }
    CHECK(eventually([&] { return frps.client_count() == 0; }, 10s));
}

TEST_CASE("Node::stop() ends an expose() held up by a relay that never answers the frp login") {
    p2prc_test::TempDir dir;
    p2prc::detail::TcpListener silent(loopback());  // connections complete, nothing is said
    std::atomic<int> asked{0};
    auto fake = fake_relay("/FRPPort", [&](const p2prc::HttpRequest&, p2prc::HttpResponse& r) {
        ++asked;
        answer_port(r, silent.port());
    });
    auto xc = node_config(dir, "X");
    Node X(xc);
    list_peer(xc.iptable, "F", loopback(fake->port()), 1.0);
    p2prc_test::EchoServer service;
    p2prc::ExposeOptions eo;
    eo.attempt_timeout = 60s;  // far longer than the test may take
    eo.max_attempts = 1;
    std::optional<p2prc::errc> code;
    std::string what;
    std::thread exposing([&] {
        try {
            X.expose(service.endpoint().port, eo);
        } catch (const p2prc::error& e) {
            code = e.code();
            what = e.what();
        }
    });
    const bool reached = eventually([&] { return asked > 0; }, 30s);
    X.stop();
    exposing.join();
    REQUIRE(reached);
    INFO(what);
    REQUIRE(code);
    CHECK(*code == p2prc::errc::state_error);
    CHECK_FALSE(X.exposure(service.endpoint().port));
}

TEST_CASE("GET /FRPPort: a client opens at most 4 public ports on the relay it was given") {
    p2prc_test::TempDir dir;
    auto relay = start_node(node_config(dir, "relay"));
    auto res = get(endpoint_of(*relay), "/FRPPort");
    REQUIRE(res);
    REQUIRE(res->status == 200);
    p2prc_test::EchoServer echo;
    p2prc::frp::ClientOptions o;
    o.server = loopback(static_cast<std::uint16_t>(std::stoi(res->body)));
    for (int i = 0; i < 6; ++i) {
        p2prc::frp::ProxySpec p;
        p.name = "svc" + std::to_string(i);
        p.local = echo.endpoint();
        o.proxies.push_back(p);
    }
    p2prc::frp::Client client(o);
    int running = 0, refused = 0;
    for (const auto& p : o.proxies) {
        auto st = client.wait_running(p.name, 10s);
        if (st.state == p2prc::frp::ProxyState::running) ++running;
        if (st.state == p2prc::frp::ProxyState::failed) ++refused;
    }
    CHECK(running == 4);
    CHECK(refused == 2);
}

TEST_CASE("RelayTunnel: a nearer relay that fails the move is not tried again at every re-evaluation") {
    p2prc_test::TempDir dir;
    auto R = start_node(node_config(dir, "R"));
    std::atomic<int> refusals{0};
    auto F = fake_relay("/FRPPort", [&](const p2prc::HttpRequest&, p2prc::HttpResponse& r) {
        ++refusals;
        r.error(503, "no relay for you");
    });
    const Endpoint viaR = endpoint_of(*R), viaF = loopback(F->port());
    std::atomic<bool> f_listed{false};
    std::atomic<int> measured{0};
    auto rank = [&](const std::vector<Endpoint>& exclude) {
        auto excluded = [&](const Endpoint& e) { return std::find(exclude.begin(), exclude.end(), e) != exclude.end(); };
        std::vector<p2prc::RelayCandidate> out;
        if (f_listed && !excluded(viaF)) out.push_back({"F", viaF, 1.0});
        if (!excluded(viaR)) out.push_back({"R", viaR, 50.0});
        return out;
    };
    auto measure = [&](const Endpoint& e) -> std::optional<double> {
        ++measured;
        return e == viaF ? 1.0 : 50.0;
    };
    p2prc_test::EchoServer service;
    p2prc::ExposeOptions eo;
    eo.reevaluate_interval = 50ms;
    p2prc::RelayTunnel t(service.endpoint(), "", eo, rank, measure);
    auto up = t.start();
    REQUIRE(up.relay == viaR);
    f_listed = true;
    const int base = measured;
    // Six re-evaluations with F listed: F (clearly nearer) is tried once, then cools down.
    CHECK(eventually([&] { return measured >= base + 6; }, 30s));
    CHECK(refusals == 1);
    REQUIRE(t.current());
    CHECK(t.current()->relay == viaR);
    t.stop();
}

TEST_CASE("p2prc serve ends at once on SIGTERM while it is exposing itself through relays that stall") {
    p2prc_test::TempDir dir;
    // Four relays that answer the dialback (the node is unreachable) and /FRPPort with a
    // port where nothing ever answers the frp login: exposing waits attempt_timeout (10 s)
    // on each of them.
    p2prc::detail::TcpListener silent(loopback());
    std::atomic<int> asked{0};
    std::vector<std::unique_ptr<p2prc::Server>> relays;
    const std::string table = dir.file("N.json");
    for (int i = 0; i < 4; ++i) {
        auto f = fake_relay(
            "/FRPPort",
            [&](const p2prc::HttpRequest&, p2prc::HttpResponse& r) {
                ++asked;
                answer_port(r, silent.port());
            },
            [](const p2prc::HttpRequest& q, p2prc::HttpResponse& r) {
                r.json({{"reachable", false}, {"address", q.remote->address.to_string()}, {"error", "refused"}});
            });
        list_peer(table, "F" + std::to_string(i), loopback(f->port()), 1.0);
        relays.push_back(std::move(f));
    }
    p2prc_test::ChildProcess serve({P2PRC_CLI, "--json", "--name", "N", "--bind", "127.0.0.1", "--port", "0", "--table",
                                    table, "serve"},
                                   dir.file("N.out"), dir.file("N.err"));
    serve.first_line(10s);
    const bool exposing = eventually([&] { return asked > 0; }, 30s);
    serve.signal(SIGTERM);
    // Prompt: well before even the first relay's attempt would have run out.
    auto code = serve.wait(8s);
    INFO("stderr: " << serve.err());
    REQUIRE(exposing);
    REQUIRE(code);
    CHECK(*code == 0);
}

TEST_CASE("RelayTunnel: a failover with every other relay cooling down says so, not that the table is empty") {
    p2prc_test::TempDir dir;
    auto R = start_node(node_config(dir, "R"));
    auto F = fake_relay("/FRPPort", [](const p2prc::HttpRequest&, p2prc::HttpResponse& r) { r.error(503, "full"); });
    const Endpoint viaR = endpoint_of(*R), viaF = loopback(F->port());
    auto rank = [&](const std::vector<Endpoint>& exclude) {
        std::vector<p2prc::RelayCandidate> out;
        for (const auto& c : {p2prc::RelayCandidate{"F", viaF, 1.0}, p2prc::RelayCandidate{"R", viaR, 50.0}})
            if (std::find(exclude.begin(), exclude.end(), c.http) == exclude.end()) out.push_back(c);
        return out;
    };
    std::mutex mu;
    std::vector<std::string> lines;
    p2prc::ExposeOptions eo;
    eo.reevaluate_interval = 0ms;
    eo.failure_grace = 200ms;
    eo.log = [&](const std::string& line) {
        std::lock_guard<std::mutex> lock(mu);
        if (lines.size() < 1000) lines.push_back(line);
    };
    p2prc_test::EchoServer service;
    p2prc::RelayTunnel t(service.endpoint(), "", eo, rank, [](const Endpoint&) { return std::optional<double>(1.0); });
    auto up = t.start();  // F refuses, so R carries it
    REQUIRE(up.relay == viaR);
    R->stop();
    std::string failed;
    CHECK(eventually([&] {
        std::lock_guard<std::mutex> lock(mu);
        for (const auto& l : lines)
            if (l.find("failover failed") != std::string::npos) failed = l;
        return !failed.empty();
    }, 30s));
    INFO(failed);
    CHECK(failed.find("no relay candidate") != std::string::npos);
    CHECK(failed.find("besides 1 that failed") != std::string::npos);
    t.stop();
}

TEST_CASE("p2prc expose without --via ends at once on SIGTERM while the relays it tries stall") {
    p2prc_test::TempDir dir;
    p2prc::detail::TcpListener silent(loopback());  // never answers the frp login
    std::atomic<int> asked{0};
    std::vector<std::unique_ptr<p2prc::Server>> relays;
    const std::string table = dir.file("X.json");
    for (int i = 0; i < 4; ++i) {  // 4 attempts of 10 s each without the fix
        relays.push_back(fake_relay("/FRPPort", [&](const p2prc::HttpRequest&, p2prc::HttpResponse& r) {
            ++asked;
            answer_port(r, silent.port());
        }));
        list_peer(table, "F" + std::to_string(i), loopback(relays.back()->port()), 1.0);
    }
    p2prc_test::EchoServer service;
    p2prc_test::ChildProcess expose({P2PRC_CLI, "--json", "--table", table, "expose",
                                     std::to_string(service.endpoint().port)},
                                    dir.file("X.out"), dir.file("X.err"));
    const bool trying = eventually([&] { return asked > 0; }, 30s);
    expose.signal(SIGTERM);
    auto code = expose.wait(8s);  // well before the first attempt would run out
    INFO("stderr: " << expose.err());
    REQUIRE(trying);
    REQUIRE(code);
    CHECK(*code == 0);
}

TEST_CASE("expose through a relay that wants a token: the refusal says so; with the token it works") {
    p2prc_test::TempDir dir;
    auto rc = node_config(dir, "R");
    rc.token = "network-secret";
    auto R = start_node(rc);
    auto xc = node_config(dir, "X");
    list_peer(xc.iptable, "R", endpoint_of(*R), 1.0);
    p2prc_test::EchoServer service;
    {
        Node X(xc);
        try {
            X.expose(service.endpoint().port);
            FAIL("expose succeeded without the network token");
        } catch (const p2prc::error& e) {
            const std::string what = e.what();
            CHECK(what.find("HTTP 401") != std::string::npos);
            CHECK(what.find("token") != std::string::npos);
        }
    }
    xc.token = "network-secret";
    Node X(xc);
    auto ex = X.expose(service.endpoint().port);
    CHECK(ex.relay == endpoint_of(*R));
    CHECK(p2prc_test::echo_roundtrip(ex.public_endpoint, 6, 50000).matched == 50000);
}

TEST_CASE("GET /FRPPort: one requester holds at most relay.per_address relays; a node behind NAT relays for nobody") {
    p2prc_test::TempDir dir;
    auto c = node_config(dir, "relay");
    c.relay.cap = 10;
    c.relay.per_address = 3;
    auto relay = start_node(c);
    for (int i = 0; i < 3; ++i) {
        auto res = get(endpoint_of(*relay), "/FRPPort");
        REQUIRE(res);
        CHECK(res->status == 200);
    }
    auto over = get(endpoint_of(*relay), "/FRPPort");
    REQUIRE(over);
    CHECK(over->status == 503);
    CHECK(nlohmann::json::parse(over->body).at("error").get<std::string>().find("127.0.0.1 already holds 3 relays") !=
          std::string::npos);

    auto nc = node_config(dir, "natted");
    nc.behind_nat = p2prc::BehindNat::yes;
    auto natted = start_node(nc);
    auto refused = get(endpoint_of(*natted), "/FRPPort");
    REQUIRE(refused);
    CHECK(refused->status == 503);
    CHECK(nlohmann::json::parse(refused->body).at("error").get<std::string>().find("behind NAT") != std::string::npos);
}

TEST_CASE("a node behind NAT does not advertise an endpoint a relay lied about, and takes another relay") {
    p2prc_test::TempDir dir;
    // The liar looks like a node; its /FRPPort hands out a real relay that opens the public
    // ports on 127.0.0.3 while the exposing node is told 127.0.0.1:<port>.
    p2prc::frp::ServerOptions fo;
    fo.bind = loopback(0);
    fo.proxy_bind = IpAddress::from_string("127.0.0.3");
    p2prc::frp::Server lying_relay(fo);
    p2prc::ServerOptions so;
    so.bind_address = "127.0.0.1";
    so.name = "liar";
    p2prc::Server liar(so);
    liar.get("/FRPPort", [&](const p2prc::HttpRequest&, p2prc::HttpResponse& r) {
        r.status = 200;
        r.content_type = "text/plain";
        r.body = std::to_string(lying_relay.port());
    });
    liar.start();
    // An honest relay, farther away (20 ms each way), so the liar is chosen first.
    auto honest = start_node(node_config(dir, "honest"));
    p2prc_test::DelayProxy proxy(std::vector<p2prc_test::ProxyRoute>{{honest->port(), 20ms}});
    const Endpoint via_honest = loopback(proxy.port(0));

    auto nc = node_config(dir, "N");
    nc.bind = "127.0.0.2";
    nc.behind_nat = p2prc::BehindNat::yes;
    list_peer(nc.iptable, "liar", loopback(liar.port()), 0.1);
    list_peer(nc.iptable, "honest", via_honest, 40.0);
    Node N(nc);
    N.start();

    auto first = N.check_reachability();
    CHECK_FALSE(first.exposure);
    CHECK(first.reason.find("does not lead to this node") != std::string::npos);
    CHECK_FALSE(N.self_exposure());
    CHECK(N.self_entry().escape_implementation != "FRP");

    auto second = N.check_reachability();
    REQUIRE(second.exposure);
    CHECK(second.exposure->relay == via_honest);
    REQUIRE(N.self_exposure());
    const auto entry = N.self_entry();
    CHECK(entry.escape_implementation == "FRP");
    CHECK(entry.server_port == second.exposure->public_endpoint.port);
    // The advertised endpoint leads to this very node.
    auto who = get(second.exposure->public_endpoint, "/whoami");
    REQUIRE(who);
    CHECK(nlohmann::json::parse(who->body).at("node") == N.instance_id());
    N.stop();
    liar.stop();
}
