// One server on two networks: a client that reaches it under both addresses lists it once
// (one identity, one entry), and when one network goes away the entry keeps working
// through the other address.
//
//   server ns: n1 10.198.1.1/24 ------ n1 10.198.1.2/24 : client ns
//              n2 10.198.2.1/24 ------ n2 10.198.2.2/24
#include <p2prc.hpp>

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include "support/netns.hpp"
#include "support/tempdir.hpp"

#include <set>

using namespace std::chrono_literals;
using p2prc_test::NetnsLab;

TEST_CASE(
    "e2e: one server reachable under two addresses on two networks is listed once, and fails "
    "over") {
    p2prc_test::TempDir dir;
    if (p2prc_test::skip_without_netns(dir.path().string())) return;
    NetnsLab lab(dir.path().string());
    const auto srv = lab.add_namespace("idsrv");
    const auto cli = lab.add_namespace("idcli");
    lab.veth(srv, "n1", "10.198.1.1/24", cli, "n1", "10.198.1.2/24");
    lab.veth(srv, "n2", "10.198.2.1/24", cli, "n2", "10.198.2.2/24");

    // The server listens on every address (the default bind) and says nothing about them.
    auto& server = lab.spawn(srv, "server",
                             {P2PRC_CLI, "--table", dir.file("s.json"), "--name", "S", "--port",
                              "8078", "--behind-nat", "false", "--json", "serve"});
    REQUIRE_MESSAGE(p2prc_test::nth_line(server, 1, 15s), server.out() << server.err());
    const std::string id = p2prc::Identity::load_or_create(dir.file("s.key")).id();
    auto said = lab.exec(srv, {P2PRC_CLI, "--table", dir.file("s.json"), "id"});
    CHECK(said.out == id + "\n");

    // The client joins through the first network only.
    auto joined = lab.try_exec(
        cli,
        {P2PRC_CLI, "--table", dir.file("c.json"), "--name", "C", "--port", "8079", "--behind-nat",
         "false", "--probe-timeout-ms", "1000", "--json", "discover", "10.198.1.1:8078"},
        60s);
    REQUIRE_MESSAGE(joined.code == 0, joined.out << joined.err);
    auto t = p2prc::IpTable::load(dir.file("c.json"));
    REQUIRE_MESSAGE(t.size() == 1, t.dump());
    const p2prc::Peer p = t.peers()[0];
    CHECK(p.identity == id);
    CHECK(p.name == "S");
    std::set<std::string> eps;
    for (const auto& e : p.endpoints()) eps.insert(e.to_string());
    const std::set<std::string> both{"10.198.1.1:8078", "10.198.2.1:8078"};
    CHECK_MESSAGE(eps == both, t.dump());
    REQUIRE(p.endpoint());
    const std::string first = p.endpoint()->to_string();
    const std::string other = first == "10.198.1.1:8078" ? "10.198.2.1:8078" : "10.198.1.1:8078";
    const std::string dead_if = first == "10.198.1.1:8078" ? "n1" : "n2";

    // The network of the address in use goes away.
    lab.ip(srv, {"link", "set", dead_if, "down"});
    auto updated = lab.try_exec(cli,
                                {P2PRC_CLI, "--table", dir.file("c.json"), "--port", "8079",
                                 "--probe-timeout-ms", "1000", "--json", "update"},
                                60s);
    REQUIRE_MESSAGE(updated.code == 0, updated.out << updated.err);
    auto report = nlohmann::json::parse(updated.out, nullptr, false);
    REQUIRE_MESSAGE(report.is_object(), updated.out);
    CHECK_MESSAGE(report["pruned"].empty(), updated.out);
    t = p2prc::IpTable::load(dir.file("c.json"));
    REQUIRE_MESSAGE(t.size() == 1, t.dump());
    CHECK(t.peers()[0].identity == id);
    REQUIRE(t.peers()[0].endpoint());
    CHECK(t.peers()[0].endpoint()->to_string() == other);
    CHECK(t.peers()[0].latency_ms);
    // And the server answers there.
    auto info =
        lab.try_exec(cli, {P2PRC_CLI, "--table", dir.file("c.json"), "--json", "info", other}, 20s);
    REQUIRE_MESSAGE(info.code == 0, info.out << info.err);
    CHECK(nlohmann::json::parse(info.out).value("Identity", "") == id);
}
