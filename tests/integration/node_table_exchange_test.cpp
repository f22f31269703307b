// POST /IpTable as P2PRC's Go client sends it, and under hostile input.
#include <p2prc.hpp>

#include "support/multipart.hpp"
#include "support/node_config.hpp"
#include "support/tempdir.hpp"

#include <doctest/doctest.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

using namespace std::chrono_literals;
using p2prc::IpAddress;
using p2prc::IpTable;

namespace {

p2prc::Config test_config(const p2prc_test::TempDir& dir, const std::string& name) {
    auto c = p2prc_test::loopback_node_config(dir, name);
    c.limits.liveness_budget_ms = 1500;
    return c;
}

std::unique_ptr<httplib::Client> client_for(const p2prc::Node& n) {
    auto c = std::make_unique<httplib::Client>("127.0.0.1", n.port());
    c->set_connection_timeout(2, 0);
    c->set_read_timeout(20, 0);
    c->set_write_timeout(20, 0);
    return c;
}

// The Go client's form: multipart, a file field (named "json" by P2PRC) holding a table.
httplib::Result post_form(httplib::Client& c, const std::string& field, const std::string& table_json) {
    return p2prc_test::post_file(c, "/IpTable", field, "config.json", "application/octet-stream", table_json);
}
httplib::Result post_go_form(httplib::Client& c, const std::string& table_json) {
    return post_form(c, "json", table_json);
}

// Sends raw bytes on a new connection and returns what comes back (up to 4 KiB, 5 s).
std::string raw_exchange(std::uint16_t port, const std::string& bytes) {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    timeval tv{5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    std::string out;
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
        ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size())) {
        char buf[4096];
        ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        if (n > 0) out.assign(buf, static_cast<std::size_t>(n));
    }
    ::close(fd);
    return out;
}

}  // namespace

TEST_CASE("the P2PRC exchange: a Go-style form gets a P2PRC-format answer that includes the node") {
    p2prc_test::TempDir dir;
    p2prc::Node other(test_config(dir, "other"));
    other.start();
    p2prc::Node node(test_config(dir, "node"));
    node.start();

    // The sender's table in Go's format: its own entry (alive) and a dead server.
    IpTable sent;
    p2prc::Peer live;
    live.name = "other";
    live.ipv4 = IpAddress::from_string("127.0.0.1");
    live.server_port = other.port();
    sent.add(live);
    p2prc::Peer dead = live;
    dead.name = "dead";
    dead.server_port = 1;  // nothing listens on port 1
    sent.add(dead);

    auto c = client_for(node);
    auto res = post_go_form(*c, sent.dump(p2prc::TableFormat::p2prc));
    REQUIRE(res);
    CHECK(res->status == 200);
    auto answer = nlohmann::json::parse(res->body);
    REQUIRE(answer["ip_address"].is_array());
    bool saw_node = false, saw_other = false;
    for (const auto& e : answer["ip_address"]) {
        CHECK(e.contains("ServerPort"));  // P2PRC's format, as the caller used
        CHECK(e.contains("IPV4"));
        if (e["Name"] == "node" && e["ServerPort"] == std::to_string(node.port())) saw_node = true;
        if (e["Name"] == "other") saw_other = true;
        CHECK(e["Name"] != "dead");  // failed the liveness check
    }
    CHECK(saw_node);
    CHECK(saw_other);
    CHECK(res->get_header_value(p2prc::observed_address_header) == "127.0.0.1");
    // The table on disk learned the live server only.
    auto t = node.table();
    CHECK(t.size() == 1);
    CHECK(t.peers().at(0).server_port == other.port());

    // A plain JSON body in the seed's format gets the seed's format back.
    auto res2 = c->Post("/IpTable", sent.dump(), "application/json");
    REQUIRE(res2);
    CHECK(res2->status == 200);
    CHECK(res2->body.find("\"port no\"") != std::string::npos);

    // GET /whoami tells the caller its address.
    auto who = c->Get("/whoami");
    REQUIRE(who);
    CHECK(nlohmann::json::parse(who->body)["address"] == "127.0.0.1");
}

TEST_CASE("hostile input to POST /IpTable: clear 4xx answers, nothing bad in the table, still serving") {
    p2prc_test::TempDir dir;
    auto cfg = test_config(dir, "node");
    cfg.limits.max_body_bytes = 4u << 20;
    cfg.limits.max_upload_bytes = 8u << 20;
    p2prc::Node node(cfg);
    node.start();
    auto c = client_for(node);

    auto garbage = c->Post("/IpTable", "\x01\x02 not json {{{", "application/json");
    REQUIRE(garbage);
    CHECK(garbage->status == 400);
    CHECK(nlohmann::json::parse(garbage->body)["error"].get<std::string>().find("invalid JSON") != std::string::npos);

    auto wrong = c->Post("/IpTable", R"({"ip_address":[{"ipv4":"1.2.3.4","port no":"99999"}]})", "application/json");
    REQUIRE(wrong);
    CHECK(wrong->status == 400);
    CHECK(wrong->body.find("99999") != std::string::npos);

    auto no_field = post_go_form(*c, "{}");
    REQUIRE(no_field);
    CHECK(no_field->status == 200);  // an empty table is a valid (if dull) table
    auto wf = post_form(*c, "table", "{}");
    REQUIRE(wf);
    CHECK(wf->status == 400);

    // A 50 MB body: refused from its Content-Length, before the body is read. (A client
    // that sends the body regardless sees the connection closed: both refuse it.)
    {
        std::string head = "POST /IpTable HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           "Content-Length: " + std::to_string(50u << 20) + "\r\n\r\n";
        CHECK(raw_exchange(node.port(), head).rfind("HTTP/1.1 413", 0) == 0);
    }
    // 10^6 entries in a body the node is willing to read: over the entry bound (10,000).
    {
        auto cfg2 = test_config(dir, "big");
        cfg2.limits.max_body_bytes = cfg2.limits.max_upload_bytes = 64u << 20;
        p2prc::Node big_node(cfg2);
        big_node.start();
        std::string big = R"({"ip_address":[)";
        big.reserve(48u << 20);
        for (int i = 0; i < 1000000; ++i) {
            if (i) big += ',';
            big += R"({"ipv4":"203.0.113.)" + std::to_string(i % 250 + 1) + R"(","port no":)" +
                   std::to_string(i % 60000 + 1) + "}";
        }
        big += "]}";
        auto bc = client_for(big_node);
        auto res = bc->Post("/IpTable", big, "application/json");
        REQUIRE(res);
        CHECK(res->status == 413);
        CHECK(res->body.find("more than the limit of 10000") != std::string::npos);
        CHECK(big_node.table().empty());
    }
    CHECK(node.table().empty());
    // Still serving.
    auto info = c->Get("/server_info");
    REQUIRE(info);
    CHECK(info->status == 200);
}

TEST_CASE("the scope rule: a public sender cannot teach internal addresses") {
    p2prc_test::TempDir dir;
    p2prc::Node node(test_config(dir, "node"));
    IpTable t = IpTable::parse(R"({"ip_address":[
        {"ipv4":"127.0.0.1","port no":"8078"},
        {"ipv4":"10.0.0.5","port no":"8078"},
        {"ipv4":"192.168.1.20","port no":"8078"},
        {"ipv4":"169.254.3.3","port no":"8078"},
        {"ipv6":"fe80::1","port no":"8078"},
        {"ipv6":"::1","port no":"8078"},
        {"ipv4":"0.0.0.0","port no":"8078"},
        {"ipv4":"224.0.0.1","port no":"8078"}
    ]})");
    // The sender is injected: a public address (documentation range).
    auto outcome = node.learn(t, IpAddress::from_string("203.0.113.7"));
    CHECK(outcome.filter.received == 8);
    CHECK(outcome.filter.accepted == 0);
    CHECK(outcome.new_servers == 0);
    CHECK(node.table().empty());

    // What the rule lets through (checked on the filter alone, so nothing is probed):
    // public addresses from a public sender, private and public ones from a private one.
    IpTable mixed = IpTable::parse(R"({"ip_address":[
        {"ipv4":"198.51.100.4","port no":"8078"},
        {"ipv4":"10.0.0.5","port no":"8078"},
        {"ipv6":"2001:db8::5","port no":"8078"}
    ]})");
    IpTable from_public = mixed;
    auto pub = p2prc::filter_learned(from_public, IpAddress::from_string("203.0.113.7"), p2prc::ScopePolicy{});
    CHECK(pub.accepted == 2);
    CHECK(from_public.find("198.51.100.4:8078"));
    CHECK(from_public.find("[2001:db8::5]:8078"));
    CHECK_FALSE(from_public.find("10.0.0.5:8078"));
    IpTable from_private = mixed;
    CHECK(p2prc::filter_learned(from_private, IpAddress::from_string("10.0.0.9"), p2prc::ScopePolicy{}).accepted == 3);

    // A private sender cannot teach loopback either. (Only refused addresses here: the
    // test never makes the node probe anything off this machine.)
    auto priv = node.learn(IpTable::parse(R"({"ip_address":[{"ipv4":"127.0.0.1","port no":"8078"}]})"),
                           IpAddress::from_string("10.0.0.9"));
    CHECK(priv.filter.accepted == 0);
    CHECK(node.table().empty());
}

TEST_CASE("a node trusts the address its peers observe once two distinct peers agree") {
    p2prc_test::TempDir dir;
    // Two peers on distinct loopback addresses: two distinct reporters.
    auto c2 = test_config(dir, "two");
    c2.bind = "127.0.0.2";
    auto c3 = test_config(dir, "three");
    c3.bind = "127.0.0.3";
    p2prc::Node two(c2), three(c3);
    two.start();
    three.start();
    auto cf = test_config(dir, "self");
    cf.behind_nat = p2prc::BehindNat::automatic;
    p2prc::Node self(cf);
    self.start();

    // One peer is not enough.
    auto r1 = self.discover({p2prc::Endpoint{IpAddress::from_string("127.0.0.2"), two.port()}});
    CHECK(r1.contacted.size() >= 1);
    CHECK_FALSE(self.observed().trusted().has_value());
    // A second, distinct peer agrees: trusted. It is one of this machine's addresses, so
    // the node is not behind NAT.
    self.discover({p2prc::Endpoint{IpAddress::from_string("127.0.0.3"), three.port()}});
    REQUIRE(self.observed().trusted().has_value());
    CHECK(self.observed().trusted()->to_string() == "127.0.0.1");
    CHECK_FALSE(self.behind_nat());
}
