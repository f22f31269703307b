// The relay path itself across the real NAT: `p2prc relay` on a public host, `p2prc expose
// --via` on the NAT'd host, and the outside client fetching the NAT'd host's service through
// the relay's public port, byte for byte; once the exposure ends, the port is gone.
#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include "support/netns.hpp"
#include "support/tempdir.hpp"

#include <iostream>
#include <random>

using namespace std::chrono_literals;
using p2prc_test::ConnectOutcome;
using p2prc_test::Internet;
using p2prc_test::NetnsLab;

TEST_CASE("e2e: a service behind NAT is fetched from outside through p2prc relay / expose --via") {
    p2prc_test::TempDir dir;
    if (p2prc_test::skip_without_netns(dir.path().string())) return;
    NetnsLab lab(dir.path().string());
    Internet net(lab);

    auto& relay = lab.spawn(net.a, "relay",
                            {P2PRC_CLI, "--table", dir.file("relay.json"), "--bind",
                             Internet::public_a, "--port", "7000", "--json", "relay"});
    auto hello = nlohmann::json::parse(relay.first_line(15s), nullptr, false);
    REQUIRE_MESSAGE(hello.is_object(), relay.out() << relay.err());

    std::mt19937_64 rng(7);
    std::string blob(768 * 1024, '\0');
    for (auto& c : blob) c = static_cast<char>(rng() & 0xff);
    p2prc_test::HttpService service(lab, net.natted, "127.0.0.1", 8000, blob);

    auto& expose =
        lab.spawn(net.natted, "expose",
                  {P2PRC_CLI, "--table", dir.file("natted.json"), "--name", "natted", "expose",
                   "8000", "--via", std::string(Internet::public_a) + ":7000", "--json"});
    auto line = p2prc_test::nth_line(expose, 1, 30s);
    REQUIRE_MESSAGE(line, "not exposed: " << expose.out() << expose.err());
    auto j = nlohmann::json::parse(*line, nullptr, false);
    REQUIRE_MESSAGE(j.is_object(), *line);
    std::string pe = j.value("public_endpoint", "");
    auto colon = pe.rfind(':');
    REQUIRE(colon != std::string::npos);
    auto port = static_cast<std::uint16_t>(std::stoi(pe.substr(colon + 1)));
    MESSAGE("exposed at " << pe);
    CHECK(pe.substr(0, colon) == std::string(Internet::public_a));

    auto got = p2prc_test::http_get_in(lab, net.client, Internet::public_a, port, "/blob");
    REQUIRE_MESSAGE(got, "the client could not fetch through the relay at port " << port);
    CHECK(got->size() == blob.size());
    CHECK(*got == blob);

    // The exposure ends: the relay closes the public port.
    expose.signal(SIGTERM);
    CHECK(expose.wait(10s));
    bool closed = false;
    for (int i = 0; i < 50 && !closed; ++i) {
        closed = lab.in_namespace(net.client, [&] {
            return p2prc_test::tcp_connect_outcome(Internet::public_a, port, 1s);
        }) != ConnectOutcome::connected;
        if (!closed) std::this_thread::sleep_for(100ms);
    }
    CHECK_MESSAGE(closed, "the relay still accepts on port " << port << " after the client left");
}
