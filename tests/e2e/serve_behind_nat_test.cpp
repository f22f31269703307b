// `p2prc serve` finds out by itself whether it can be reached (behind_nat "auto": a peer
// is asked to dial back): behind the real NAT it exposes its own server through a relay,
// and an outside client reaches the node there; on a public host it stays direct.
#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include "support/netns.hpp"
#include "support/tempdir.hpp"

#include <iostream>

using namespace std::chrono_literals;
using p2prc_test::Internet;
using p2prc_test::NetnsLab;

TEST_CASE("e2e: a node serving behind NAT finds it out and is reached through a relay") {
    p2prc_test::TempDir dir;
    if (p2prc_test::skip_without_netns(dir.path().string())) return;
    NetnsLab lab(dir.path().string());
    Internet net(lab);
    const std::string a_http = std::string(Internet::public_a) + ":8088";

    auto& node_a = lab.spawn(
        net.a, "public-a",
        {P2PRC_CLI, "--table", dir.file("a.json"), "--name", "public-a", "--bind",
         Internet::public_a, "--port", "8088", "--behind-nat", "false", "--json", "serve"});
    REQUIRE_MESSAGE(p2prc_test::nth_line(node_a, 1, 15s), node_a.out() << node_a.err());

    // Control: a public host that asks is told it is reachable, and exposes nothing.
    lab.exec(net.b, {P2PRC_CLI, "--table", dir.file("b.json"), "add", a_http, "public-a"});
    auto& node_b = lab.spawn(net.b, "public-b",
                             {P2PRC_CLI, "--table", dir.file("b.json"), "--name", "public-b",
                              "--bind", Internet::public_b, "--port", "8088", "serve"});
    // The NAT'd host, knowing A, on every address of its namespace.
    lab.exec(net.natted, {P2PRC_CLI, "--table", dir.file("n.json"), "add", a_http, "public-a"});
    // A relay candidate must be measured: serve does not probe the table by itself.
    lab.exec(net.natted, {P2PRC_CLI, "--table", dir.file("n.json"), "update"}, 30s);
    auto& node_n = lab.spawn(net.natted, "natted",
                             {P2PRC_CLI, "--table", dir.file("n.json"), "--name", "natted",
                              "--bind", "0.0.0.0", "--port", "8088", "--json", "serve"});

    auto b_says = p2prc_test::nth_line(node_b, 2, 30s);
    REQUIRE_MESSAGE(b_says, "public B: " << node_b.out() << node_b.err());
    CHECK_MESSAGE(b_says->find("reachable directly") != std::string::npos, *b_says);

    auto relayed_line = p2prc_test::nth_line(node_n, 2, 30s);
    REQUIRE_MESSAGE(relayed_line, "NAT'd node: " << node_n.out() << node_n.err());
    auto j = nlohmann::json::parse(*relayed_line, nullptr, false);
    REQUIRE_MESSAGE(j.is_object(), *relayed_line);
    REQUIRE_MESSAGE(j.contains("relayed"), *relayed_line);
    std::string pe = j["relayed"].value("public_endpoint", "");
    MESSAGE("the NAT'd node is advertised at " << pe << " via "
                                               << j["relayed"].value("relay", std::string()));
    CHECK(j["relayed"].value("relay", "") == a_http);
    CHECK(pe.rfind(std::string(Internet::public_a) + ":", 0) == 0);

    // The outside client reaches the node's own server through the relay.
    auto info = lab.try_exec(net.client,
                             {P2PRC_CLI, "--table", dir.file("c.json"), "info", pe, "--json"}, 20s);
    REQUIRE_MESSAGE(info.code == 0, info.out << info.err);
    auto facts = nlohmann::json::parse(info.out, nullptr, false);
    REQUIRE(facts.is_object());
    CHECK(facts.contains("Hostname"));
}
