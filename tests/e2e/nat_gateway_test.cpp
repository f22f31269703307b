// The NAT of the end-to-end network does what a home router does: the host behind it
// reaches the public hosts (seen there as the gateway's address), and nothing outside
// reaches the host behind it.
#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include "support/netns.hpp"
#include "support/tempdir.hpp"

#include <iostream>

using namespace std::chrono_literals;
using p2prc_test::ConnectOutcome;
using p2prc_test::Internet;
using p2prc_test::NetnsLab;
using p2prc_test::tcp_connect_outcome;

TEST_CASE("e2e: outside hosts cannot connect to the NAT'd host, which reaches the public hosts") {
    p2prc_test::TempDir dir;
    if (p2prc_test::skip_without_netns(dir.path().string())) return;
    NetnsLab lab(dir.path().string());
    Internet net(lab);

    // A node on each public host.
    struct Host {
        std::string ns, ip, name;
    };
    for (const auto& h : {Host{net.a, Internet::public_a, "public-a"},
                          Host{net.b, Internet::public_b, "public-b"}}) {
        auto& node =
            lab.spawn(h.ns, h.name,
                      {P2PRC_CLI, "--table", dir.file(h.name + ".json"), "--name", h.name, "--bind",
                       h.ip, "--port", "8088", "--behind-nat", "false", "--json", "serve"});
        auto hello = nlohmann::json::parse(node.first_line(15s), nullptr, false);
        REQUIRE_MESSAGE(hello.is_object(), h.name << ": " << node.out() << node.err());
    }
    // The NAT'd host's service, on every address it has.
    const std::uint16_t service_port = 8000;
    p2prc_test::HttpService service(lab, net.natted, "0.0.0.0", service_port, "hello");

    // The service is up, and reachable where no NAT is in the way: from the host itself
    // and from the gateway, which sits on the same link.
    CHECK(lab.in_namespace(net.natted, [&] {
        return tcp_connect_outcome("127.0.0.1", service_port, 2s);
    }) == ConnectOutcome::connected);
    CHECK(lab.in_namespace(net.gateway, [&] {
        return tcp_connect_outcome(Internet::natted_ip, service_port, 2s);
    }) == ConnectOutcome::connected);

    // From outside: the client has a route to the private network through the gateway, but
    // the gateway drops new inbound connections; at the gateway's own public address
    // nothing is forwarded (no port mapping).
    auto direct = lab.in_namespace(
        net.client, [&] { return tcp_connect_outcome(Internet::natted_ip, service_port, 1500ms); });
    MESSAGE("client -> NAT'd host " << std::string(Internet::natted_ip) << ":" << service_port
                                    << ": " << std::string(p2prc_test::to_string(direct)));
    CHECK(direct == ConnectOutcome::timed_out);
    auto at_gateway = lab.in_namespace(net.client, [&] {
        return tcp_connect_outcome(Internet::gateway_wan, service_port, 1500ms);
    });
    MESSAGE("client -> gateway " << std::string(Internet::gateway_wan) << ":" << service_port
                                 << ": " << std::string(p2prc_test::to_string(at_gateway)));
    CHECK(at_gateway != ConnectOutcome::connected);
    // The client itself is connected: it reaches the public hosts.
    CHECK(lab.in_namespace(net.client, [&] {
        return tcp_connect_outcome(Internet::public_a, 8088, 2s);
    }) == ConnectOutcome::connected);

    // From inside: both public hosts answer, through the CLI too, and they see the
    // connection coming from the gateway's public address (masquerade).
    for (const char* ip : {Internet::public_a, Internet::public_b}) {
        auto info = lab.try_exec(net.natted,
                                 {P2PRC_CLI, "--table", dir.file("natted.json"), "info",
                                  std::string(ip) + ":8088", "--json"},
                                 20s);
        CHECK_MESSAGE(info.code == 0, std::string(ip) << ": " << info.out << info.err);
        auto whoami = p2prc_test::http_get_in(lab, net.natted, ip, 8088, "/whoami");
        REQUIRE_MESSAGE(whoami, "GET /whoami from the NAT'd host to " << std::string(ip));
        auto j = nlohmann::json::parse(*whoami, nullptr, false);
        REQUIRE(j.is_object());
        CHECK(j.value("address", "") == std::string(Internet::gateway_wan));
    }
}
