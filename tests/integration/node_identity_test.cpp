// Node identity on loopback: one server is one entry however many addresses it is known
// under; signed entries cannot be forged, replayed or overridden unsigned; /server_info and
// /whoami carry (and prove) the identity; relays must be the server the table names.
#include <p2prc.hpp>

#include "support/delay_proxy.hpp"
#include "support/node_config.hpp"
#include "support/process.hpp"
#include "support/relay.hpp"
#include "support/tempdir.hpp"

#include <doctest/doctest.h>

#include <httplib.h>
#include <sys/stat.h>

#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <set>

using namespace std::chrono_literals;
using p2prc::Endpoint;
using p2prc::Identity;
using p2prc::IpAddress;
using p2prc::IpTable;
using p2prc::Node;
using p2prc::Peer;
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

httplib::Result get(const Endpoint& at, const std::string& path) {
    httplib::Client c(at.host_string(), at.port);
    c.set_connection_timeout(3, 0);
    c.set_read_timeout(5, 0);
    return c.Get(path.c_str());
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

// Lists a server in the table at `path`, with the identity the caller says it has.
void list_peer(const std::string& path, const std::string& name, const Endpoint& who,
               const std::string& identity, std::optional<double> latency_ms = std::nullopt) {
    IpTable::update(path, [&](IpTable& t) {
        Peer p;
        p.name = name;
        (who.address.is_v4() ? p.ipv4 : p.ipv6) = who.address;
        p.server_port = who.port;
        p.identity = identity;
        p.latency_ms = latency_ms;
        t.add(p);
    });
}

// A server's own signed entry at `at`.
Peer signed_entry_of(const Identity& key, std::uint64_t seq, const std::string& name,
                     const Endpoint& at) {
    Peer p;
    p.name = name;
    p.ipv4 = at.address;
    p.server_port = at.port;
    p.identity = key.id();
    p2prc::SignedEntry s;
    s.seq = seq;
    s.name = name;
    s.endpoints = {at};
    s.sign(key);
    p.signed_entry = s;
    return p;
}

// Every identity of the table with how many entries it has.
std::map<std::string, int> identity_counts(const IpTable& t) {
    std::map<std::string, int> out;
    for (const auto& p : t.peers()) ++out[p.identity];
    return out;
}

}  // namespace

TEST_CASE(
    "five nodes bound to 0.0.0.0, each known under two addresses: a sixth joining through "
    "127.0.0.1 lists each once") {
    // Each node listens on every address and advertises 127.0.0.2 (as a node on a real host
    // advertises its interface's address), while the newcomer is told 127.0.0.1:PORT: before
    // identities, every server showed up twice in the newcomer's table.
    p2prc_test::TempDir dir;
    std::vector<std::unique_ptr<Node>> nodes;
    for (int i = 0; i < 5; ++i) {
        auto c = node_config(dir, "n" + std::to_string(i));
        c.bind = "0.0.0.0";
        c.public_addresses = {*p2prc::AdvertisedAddress::parse("127.0.0.2")};
        nodes.push_back(start_node(c));
    }
    const Endpoint first = loopback(nodes[0]->port());
    for (int i = 1; i < 5; ++i) {
        auto r = nodes[i]->discover({first});
        REQUIRE_MESSAGE(r.failed.empty(), r.failed.front().second);
    }
    auto c6 = node_config(dir, "newcomer");
    c6.bind = "0.0.0.0";
    c6.public_addresses = {*p2prc::AdvertisedAddress::parse("127.0.0.2")};
    auto six = start_node(c6);
    auto report = six->discover({first});
    REQUIRE(report.failed.empty());

    std::set<std::string> expected;
    for (const auto& n : nodes) expected.insert(n->identity().id());
    const IpTable t = six->table();
    auto counts = identity_counts(t);
    CHECK(t.size() == 5);
    for (const auto& count : counts)
        CHECK_MESSAGE(count.second == 1, count.first << " listed " << count.second << " times\n"
                                                     << t.dump());
    std::set<std::string> got;
    for (const auto& count : counts) got.insert(count.first);
    CHECK(got == expected);
    // Every entry is measured; the one met under both addresses keeps both.
    for (const auto& p : t.peers()) CHECK(p.latency_ms);
    const Peer* p0 = t.find_identity(nodes[0]->identity().id());
    REQUIRE(p0);
    std::set<std::string> addrs;
    for (const auto& e : p0->endpoints()) addrs.insert(e.to_string());
    CHECK(addrs ==
          std::set<std::string>{first.to_string(), "127.0.0.2:" + std::to_string(first.port)});
    // The first node, which heard from everybody, lists each other node once and never itself.
    const IpTable t0 = nodes[0]->table();
    auto counts0 = identity_counts(t0);
    CHECK(counts0.count(nodes[0]->identity().id()) == 0);
    CHECK(counts0.count(six->identity().id()) == 1);
    for (const auto& count : counts0) CHECK_MESSAGE(count.second == 1, t0.dump());
    CHECK(t0.size() == 5);
}

TEST_CASE(
    "forged, replayed and unsigned entries about a known signed server leave the table as it was") {
    p2prc_test::TempDir dir;
    auto target = start_node(node_config(dir, "target"));
    // A server with identity F (its /server_info states it, as a node's does).
    const Identity f = Identity::generate();
    p2prc::ServerOptions so;
    so.bind_address = "127.0.0.1";
    so.identity = f.id();
    p2prc::Server server(so);
    server.start();
    const Endpoint fe = loopback(server.port());
    const auto sender = IpAddress::from_string("127.0.0.1");

    auto learned =
        target->learn(IpTable(std::vector<Peer>{signed_entry_of(f, 100, "F", fe)}), sender);
    CHECK(learned.signatures.verified == 1);
    REQUIRE(learned.added == 1);
    const std::string before = target->table().dump();
    CHECK(target->table().find_identity(f.id()));

    Peer forged = signed_entry_of(f, 200, "F", fe);
    forged.signed_entry->name = "mallory";  // valid shape, wrong signature
    forged.name = "mallory";
    auto o = target->learn(IpTable(std::vector<Peer>{forged}), sender);
    CHECK(o.signatures.forged == 1);
    REQUIRE(o.signatures.reasons.size() == 1);
    CHECK(o.signatures.reasons[0].find("forged") != std::string::npos);
    CHECK(target->table().dump() == before);

    o = target->learn(IpTable(std::vector<Peer>{signed_entry_of(f, 99, "F-old", fe)}), sender);
    CHECK(o.signatures.replayed == 1);
    REQUIRE(o.signatures.reasons.size() == 1);
    CHECK(o.signatures.reasons[0].find("replayed") != std::string::npos);
    CHECK(target->table().dump() == before);

    Peer claim;
    claim.name = "imposter";
    claim.ipv4 = fe.address;
    claim.server_port = fe.port;
    claim.identity = f.id();
    claim.nat = true;
    claim.escape_implementation = "FRP";
    o = target->learn(IpTable(std::vector<Peer>{claim}), sender);
    CHECK(o.signatures.unsigned_claims == 1);
    REQUIRE(o.signatures.reasons.size() == 1);
    CHECK(o.signatures.reasons[0].find("unsigned") != std::string::npos);
    CHECK(target->table().dump() == before);

    // Control: a newer signed word of F is taken.
    o = target->learn(IpTable(std::vector<Peer>{signed_entry_of(f, 101, "F-renamed", fe)}), sender);
    CHECK(o.signatures.verified == 1);
    CHECK(o.updated == 1);
    const IpTable after = target->table();
    const Peer* now = after.find_identity(f.id());
    REQUIRE(now);
    CHECK(now->name == "F-renamed");
    server.stop();
}

TEST_CASE("an entry naming an identity where another server answers does not get that address") {
    p2prc_test::TempDir dir;
    auto target = start_node(node_config(dir, "target"));
    auto other = start_node(node_config(dir, "other"));
    Peer p;
    p.name = "claims-other";
    p.ipv4 = IpAddress::from_string("127.0.0.1");
    p.server_port = other->port();
    p.identity = Identity::generate().id();
    auto o = target->learn(IpTable(std::vector<Peer>{p}), IpAddress::from_string("127.0.0.1"));
    CHECK(o.wrong_identity == 1);
    CHECK(o.added == 0);
    CHECK(target->table().empty());
    // Without a claim, the identity that answers is recorded.
    p.identity.clear();
    o = target->learn(IpTable(std::vector<Peer>{p}), IpAddress::from_string("127.0.0.1"));
    CHECK(o.added == 1);
    REQUIRE(target->table().size() == 1);
    CHECK(target->table().peers()[0].identity == other->identity().id());
}

TEST_CASE("the identity survives a restart; /server_info states it; /whoami proves it") {
    p2prc_test::TempDir dir;
    auto c = node_config(dir, "N");
    std::string id;
    {
        auto n = start_node(c);
        id = n->identity().id();
        CHECK(n->instance_id() == id);
        struct stat st {};
        REQUIRE(::stat(c.identity_key_path().c_str(), &st) == 0);
        CHECK((st.st_mode & 0777) == 0600);

        auto info = get(loopback(n->port()), "/server_info");
        REQUIRE(info);
        CHECK(nlohmann::json::parse(info->body).at("Identity") == id);

        const std::string nonce = "0123456789abcdef0123456789abcdef";
        auto who = get(loopback(n->port()), "/whoami?nonce=" + nonce);
        REQUIRE(who);
        REQUIRE(who->status == 200);
        auto j = nlohmann::json::parse(who->body);
        CHECK(j.at("identity") == id);
        CHECK(p2prc::verify_signature_hex(id, p2prc::whoami_message(nonce),
                                          j.at("signature").get<std::string>()));
        CHECK_FALSE(p2prc::verify_signature_hex(
            id, p2prc::whoami_message("0123456789abcdef0123456789abcdee"),
            j.at("signature").get<std::string>()));
        auto bad = get(loopback(n->port()), "/whoami?nonce=xyz");
        REQUIRE(bad);
        CHECK(bad->status == 400);
        // The node's own signed entry verifies, and a peer's table never lists the node itself.
        auto self = n->self_entry();
        REQUIRE(self.signed_entry);
        CHECK(self.signed_entry->verify());
        CHECK(self.identity == id);
        // Unchanged content, unchanged sequence number (a repeat is not a newer word).
        CHECK(n->self_entry().signed_entry->seq == self.signed_entry->seq);
        Peer me_elsewhere;
        me_elsewhere.ipv4 = IpAddress::from_string("127.0.0.9");
        me_elsewhere.server_port = 1;
        me_elsewhere.identity = id;
        n->learn(IpTable(std::vector<Peer>{me_elsewhere}), IpAddress::from_string("127.0.0.1"));
        CHECK(n->table().find_identity(id) == nullptr);
        n->stop();
    }
    auto again = start_node(c);
    CHECK(again->identity().id() == id);
    auto info = get(loopback(again->port()), "/server_info");
    REQUIRE(info);
    CHECK(nlohmann::json::parse(info->body).at("Identity") == id);
}

TEST_CASE("an entry whose address dies keeps working through its other address") {
    p2prc_test::TempDir dir;
    auto S = start_node(node_config(dir, "S"));
    auto forwarder = std::make_unique<p2prc_test::Forwarder>(loopback(S->port()));
    const Endpoint via = forwarder->endpoint();
    auto xc = node_config(dir, "X");
    Node X(xc);
    IpTable::update(xc.iptable, [&](IpTable& t) {
        Peer p;
        p.name = "S";
        p.ipv4 = via.address;
        p.server_port = via.port;
        p.alt_endpoints = {loopback(S->port())};
        t.add(p);
    });
    auto r = X.update();
    CHECK(r.pruned.empty());
    REQUIRE(X.table().size() == 1);
    CHECK(X.table().peers()[0].endpoint() == via);
    CHECK(X.table().peers()[0].identity == S->identity().id());

    forwarder.reset();  // the first address dies
    r = X.update();
    CHECK(r.pruned.empty());
    const IpTable t = X.table();
    REQUIRE(t.size() == 1);
    CHECK(t.peers()[0].endpoint() == loopback(S->port()));
    CHECK(t.peers()[0].latency_ms);
}

TEST_CASE(
    "a relay that answers /whoami with another identity is not used; a failover target is checked "
    "too") {
    p2prc_test::TempDir dir;
    p2prc_test::EchoServer service;
    SUBCASE("the first choice") {
        auto R = start_node(node_config(dir, "R"));
        auto xc = node_config(dir, "X");
        list_peer(xc.iptable, "R", loopback(R->port()), Identity::generate().id(), 1.0);
        Node X(xc);
        std::string e;
        try {
            X.expose(service.endpoint().port);
        } catch (const p2prc::error& ex) {
            e = ex.what();
        }
        CHECK(e.find("not the relay the table lists") != std::string::npos);
        CHECK(e.find("another node answers there") != std::string::npos);
        CHECK_FALSE(X.exposure(service.endpoint().port));
        // Control: with its true identity, the same relay is used.
        IpTable::update(xc.iptable, [&](IpTable& t) {
            t.find(loopback(R->port()).to_string())->identity = R->identity().id();
        });
        auto ex = X.expose(service.endpoint().port);
        CHECK(ex.relay == loopback(R->port()));
    }
    SUBCASE("a failover") {
        auto R1 = start_node(node_config(dir, "R1"));
        auto R2 = start_node(node_config(dir, "R2"));
        // R2 farther (20 ms each way), so R1 is the first choice and R2 the failover target.
        p2prc_test::DelayProxy proxy(std::vector<p2prc_test::ProxyRoute>{{R2->port(), 20ms}});
        const Endpoint viaR2 = loopback(proxy.port(0));
        auto xc = node_config(dir, "X");
        list_peer(xc.iptable, "R1", loopback(R1->port()), R1->identity().id(), 1.0);
        list_peer(xc.iptable, "R2", viaR2, Identity::generate().id(), 40.0);
        Node X(xc);
        std::mutex mu;
        std::vector<std::string> log;
        p2prc::ExposeOptions eo;
        eo.reevaluate_interval = 0ms;
        eo.failure_grace = 300ms;
        eo.log = [&](const std::string& line) {
            std::lock_guard<std::mutex> lock(mu);
            log.push_back(line);
        };
        auto ex = X.expose(service.endpoint().port, eo);
        REQUIRE(ex.relay == loopback(R1->port()));
        R1->stop();
        const bool refused = eventually(
            [&] {
                std::lock_guard<std::mutex> lock(mu);
                for (const auto& l : log)
                    if (l.find(viaR2.to_string()) != std::string::npos &&
                        l.find("not the relay the table lists") != std::string::npos)
                        return true;
                return false;
            },
            20s);
        CHECK(refused);
        auto now = X.exposure(service.endpoint().port);
        CHECK_FALSE((now && now->relay == viaR2));
    }
}

TEST_CASE(
    "a node behind NAT checks the relay a failover moves it to: one whose endpoint leads elsewhere "
    "is not used") {
    p2prc_test::TempDir dir;
    // The liar's relay opens the public ports on 127.0.0.3 but says 127.0.0.1.
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
    // The liar farther (20 ms each way): the honest relay is the first choice.
    p2prc_test::DelayProxy proxy(std::vector<p2prc_test::ProxyRoute>{{liar.port(), 20ms}});
    const Endpoint via_liar = loopback(proxy.port(0));
    auto honest = start_node(node_config(dir, "honest"));

    auto nc = node_config(dir, "N");
    nc.bind = "127.0.0.2";
    nc.behind_nat = p2prc::BehindNat::yes;
    list_peer(nc.iptable, "honest", loopback(honest->port()), honest->identity().id(), 0.1);
    list_peer(nc.iptable, "liar", via_liar, "", 40.0);
    Node N(nc);
    N.start();
    auto first = N.check_reachability();
    REQUIRE(first.exposure);
    REQUIRE(first.exposure->relay == loopback(honest->port()));

    honest->stop();  // failover: the liar is the only one left
    // The tunnel's monitor tries the liar and refuses it: no exposure through it, ever.
    const bool distrusted = eventually(
        [&] {
            auto cands = N.listed_relays();
            for (const auto& c : cands)
                if (c.http == via_liar) return false;
            return true;
        },
        20s);
    CHECK(distrusted);
    auto now = N.self_exposure();
    CHECK_FALSE((now && now->relay == via_liar));
    N.stop();
    liar.stop();
}

TEST_CASE(
    "a relay's TLS certificate carries its identity: a client expecting it connects, one expecting "
    "another does not") {
    const Identity relay_key = Identity::generate();
    p2prc::frp::ServerOptions so;
    so.bind = loopback(0);
    so.tls_key_pem = relay_key.private_pem();
    p2prc::frp::Server relay(so);
    p2prc_test::EchoServer echo;

    auto login = [&](const std::string& expected_key) {
        p2prc::frp::ClientOptions o;
        o.server = loopback(relay.port());
        o.tls = true;
        o.tls_expected_key = expected_key;
        o.reconnect_min = 100ms;
        o.reconnect_max = 500ms;
        p2prc::frp::ProxySpec p;
        p.name = "svc";
        p.local = echo.endpoint();
        o.proxies.push_back(p);
        auto c = std::make_unique<p2prc::frp::Client>(o);
        auto st = c->wait_running("svc", 5s);
        std::string error = c->last_error();
        c->stop();
        return std::make_pair(st.state == p2prc::frp::ProxyState::running, error);
    };
    const auto& k = relay_key.public_key();
    auto good = login(std::string(reinterpret_cast<const char*>(k.data()), k.size()));
    CHECK(good.first);
    const auto other = Identity::generate().public_key();
    auto bad = login(std::string(reinterpret_cast<const char*>(other.data()), other.size()));
    CHECK_FALSE(bad.first);
    CHECK_MESSAGE(bad.second.find("TLS") != std::string::npos, bad.second);
    // Without an expected key (stock frps's case), TLS still works, unverified.
    CHECK(login("").first);
}

TEST_CASE(
    "the CLI: p2prc id prints the node's identity; the table shows each server's short identity") {
    p2prc_test::TempDir dir;
    const std::string scratch = dir.path().string();
    const std::string table = dir.file("me.json");
    auto r = p2prc_test::run_command({P2PRC_CLI, "--table", table, "id"}, scratch);
    REQUIRE_MESSAGE(r.code == 0, r.err);
    const std::string id = r.out.substr(0, r.out.size() - 1);
    CHECK(p2prc::is_identity(id));
    CHECK(Identity::load_or_create(dir.file("me.key")).id() == id);
    r = p2prc_test::run_command({P2PRC_CLI, "--table", table, "--json", "id"}, scratch);
    REQUIRE(r.code == 0);
    auto j = nlohmann::json::parse(r.out);
    CHECK(j.at("identity") == id);
    CHECK(j.at("short") == id.substr(0, 12));
    CHECK(j.at("key_file") == dir.file("me.key"));

    auto A = start_node(node_config(dir, "A"));
    r = p2prc_test::run_command(
        {P2PRC_CLI, "--table", table, "add", loopback(A->port()).to_string(), "alpha"}, scratch);
    REQUIRE(r.code == 0);
    r = p2prc_test::run_command({P2PRC_CLI, "--table", table, "update"}, scratch);
    REQUIRE(r.code == 0);
    r = p2prc_test::run_command({P2PRC_CLI, "--table", table, "table"}, scratch);
    REQUIRE(r.code == 0);
    CHECK(r.out.find("IDENTITY") != std::string::npos);
    CHECK(r.out.find(A->identity().short_id()) != std::string::npos);
    r = p2prc_test::run_command(
        {P2PRC_CLI, "--table", table, "info", loopback(A->port()).to_string()}, scratch);
    REQUIRE(r.code == 0);
    CHECK(r.out.find("identity: " + A->identity().id()) == 0);

    // A damaged key file: a clear error naming it, and the file is left alone.
    std::ofstream(dir.file("me.key"), std::ios::trunc) << "garbage";
    r = p2prc_test::run_command({P2PRC_CLI, "--table", table, "id"}, scratch);
    CHECK(r.code == 1);
    CHECK(r.err.find(dir.file("me.key")) != std::string::npos);
}
