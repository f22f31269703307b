// The mission, end to end: a host behind NAT knows one public node, discovers the other,
// measures both, exposes its HTTP service through the nearer one, and an outside client
// fetches it byte for byte; when that relay's process dies, the exposure moves to the
// other public node and the client fetches again.
//
// Public B is made farther with a userspace delaying proxy in its namespace (the kernel
// here has no netem): B's node listens on every address of B and advertises the proxy's
// endpoint, 10.199.0.12:9088, which adds 40 ms each way to its HTTP exchanges. The relay
// ports B hands out are reached directly.
#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include "support/delay_proxy.hpp"
#include "support/netns.hpp"
#include "support/tempdir.hpp"

#include <iostream>
#include <random>

using namespace std::chrono_literals;
using p2prc_test::Internet;
using p2prc_test::NetnsLab;

namespace {

const std::string a_http = std::string(Internet::public_a) + ":8088";
const std::string b_http = std::string(Internet::public_b) + ":9088";  // through the delay

std::string random_bytes(std::size_t n) {
    std::mt19937_64 rng(0x5eed);
    std::string s(n, '\0');
    for (auto& c : s) c = static_cast<char>(rng() & 0xff);
    return s;
}

struct Exposed {
    std::string host;
    std::uint16_t port = 0;
    std::string relay;
};

// One line of `p2prc expose PORT --json`: {"public_endpoint":"HOST:PORT","relay":"HOST:PORT"}.
std::optional<Exposed> parse_exposed(const std::string& line) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (!j.is_object() || !j["public_endpoint"].is_string() || !j["relay"].is_string())
        return std::nullopt;
    std::string pe = j["public_endpoint"].get<std::string>();
    auto colon = pe.rfind(':');
    if (colon == std::string::npos) return std::nullopt;
    Exposed e;
    e.host = pe.substr(0, colon);
    e.port = static_cast<std::uint16_t>(std::stoi(pe.substr(colon + 1)));
    e.relay = j["relay"].get<std::string>();
    return e;
}

}  // namespace

TEST_CASE("e2e: a NAT'd node exposes its service through the nearer relay and fails over") {
    p2prc_test::TempDir dir;
    if (p2prc_test::skip_without_netns(dir.path().string())) return;
    NetnsLab lab(dir.path().string());
    Internet net(lab);
    const std::string table_a = dir.file("public-a.json"), table_b = dir.file("public-b.json"),
                      table_n = dir.file("natted.json");

    // The public network: A knows B (at B's advertised, delayed endpoint).
    lab.exec(net.a, {P2PRC_CLI, "--table", table_a, "add", b_http, "public-b"});
    auto& node_a = lab.spawn(
        net.a, "public-a",
        {P2PRC_CLI, "--table", table_a, "--name", "public-a", "--bind", Internet::public_a,
         "--port", "8088", "--behind-nat", "false", "--json", "serve"});
    auto& node_b = lab.spawn(
        net.b, "public-b",
        {P2PRC_CLI, "--table", table_b, "--name", "public-b", "--bind", "0.0.0.0", "--port", "8088",
         "--public-address", b_http, "--behind-nat", "false", "--json", "serve"});
    for (auto* node : {&node_a, &node_b}) {
        auto hello = nlohmann::json::parse(node->first_line(15s), nullptr, false);
        REQUIRE_MESSAGE(hello.is_object(), node->out() << node->err());
    }
    p2prc_test::ProxyRoute far{8088, 40ms, 0};
    inet_pton(AF_INET, Internet::public_b, &far.listen_address);
    far.listen_address = ntohl(far.listen_address);
    far.listen_port = 9088;
    auto delay =
        lab.in_namespace(net.b, [&] { return std::make_unique<p2prc_test::DelayProxy>(far); });

    // The NAT'd host knows A only, and discovers B through it.
    lab.exec(net.natted, {P2PRC_CLI, "--table", table_n, "add", a_http, "public-a"});
    auto found = lab.try_exec(net.natted,
                              {P2PRC_CLI, "--table", table_n, "--name", "natted", "--port", "8088",
                               "discover", a_http, "--json"},
                              40s);
    REQUIRE_MESSAGE(found.code == 0, found.out << found.err);
    auto table = lab.try_exec(net.natted, {P2PRC_CLI, "--table", table_n, "table", "--json"});
    REQUIRE(table.code == 0);
    auto t = nlohmann::json::parse(table.out, nullptr, false);
    REQUIRE_MESSAGE(t.is_object(), table.out);
    std::optional<double> lat_a, lat_b;
    for (const auto& e : t.value("ip_address", nlohmann::json::array())) {
        std::string ep = e.value("ipv4", "") + ":" + e.value("port no", "");
        if (!e["latency"].is_number()) continue;
        if (ep == a_http) lat_a = e["latency"].get<double>();
        if (ep == b_http) lat_b = e["latency"].get<double>();
    }
    REQUIRE_MESSAGE(lat_a, "A not measured in the NAT'd host's table: " << table.out);
    REQUIRE_MESSAGE(lat_b, "B not discovered and measured: " << table.out);
    MESSAGE("latency from the NAT'd host: A " << *lat_a << " ms, B " << *lat_b << " ms");
    CHECK(*lat_a + 40 < *lat_b);

    // Its service, on its loopback only: reachable from outside through a relay or not at all.
    const std::string blob = random_bytes(1 << 20);
    p2prc_test::HttpService service(lab, net.natted, "127.0.0.1", 8000, blob);
    auto& expose =
        lab.spawn(net.natted, "expose",
                  {P2PRC_CLI, "--table", table_n, "--name", "natted", "expose", "8000", "--json"});
    auto first = p2prc_test::nth_line(expose, 1, 40s);
    REQUIRE_MESSAGE(first, "no exposure within 40 s: " << expose.out() << expose.err());
    auto via_a = parse_exposed(*first);
    REQUIRE_MESSAGE(via_a, "unexpected line: " << *first);
    MESSAGE("exposed at " << via_a->host << ":" << via_a->port << " via " << via_a->relay);
    CHECK(via_a->relay == a_http);
    CHECK(via_a->host == Internet::public_a);

    auto got = p2prc_test::http_get_in(lab, net.client, via_a->host, via_a->port, "/blob");
    REQUIRE_MESSAGE(got,
                    "the client could not fetch through " << via_a->host << ":" << via_a->port);
    CHECK(got->size() == blob.size());
    CHECK(*got == blob);

    // The chosen relay dies: its process goes, its namespace (and address) stays. The next
    // line naming another relay is the failover (a reconnection to A before A died would
    // print A again).
    node_a.signal(SIGKILL);
    REQUIRE(node_a.wait(5s));
    const auto killed = std::chrono::steady_clock::now();
    std::optional<Exposed> via_b;
    for (std::size_t n = 2; n < 10 && !via_b; ++n) {
        auto left = 45s - (std::chrono::steady_clock::now() - killed);
        auto line = p2prc_test::nth_line(
            expose, n, std::chrono::duration_cast<std::chrono::milliseconds>(left));
        REQUIRE_MESSAGE(line, "no failover within 45 s: " << expose.out() << expose.err());
        auto e = parse_exposed(*line);
        REQUIRE_MESSAGE(e, "unexpected line: " << *line);
        if (e->relay != a_http) via_b = e;
    }
    REQUIRE_MESSAGE(via_b, "no failover: " << expose.out());
    MESSAGE("failed over to "
            << via_b->host << ":" << via_b->port << " via " << via_b->relay << " in "
            << std::chrono::duration<double>(std::chrono::steady_clock::now() - killed).count()
            << " s");
    CHECK(via_b->relay == b_http);
    CHECK(via_b->host == Internet::public_b);
    got = p2prc_test::http_get_in(lab, net.client, via_b->host, via_b->port, "/blob");
    REQUIRE_MESSAGE(got,
                    "the client could not fetch through " << via_b->host << ":" << via_b->port);
    CHECK(*got == blob);
    CHECK_FALSE(expose.wait(0ms));  // still holding the tunnel
}
