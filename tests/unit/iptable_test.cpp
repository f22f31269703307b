#include <p2prc.hpp>

#include "support/tempdir.hpp"

#include <doctest/doctest.h>

#include <fstream>
#include <sstream>

using p2prc::Endpoint;
using p2prc::IpAddress;
using p2prc::IpTable;
using p2prc::Peer;
using p2prc::TableFormat;

namespace {

Peer make_peer(const std::string& name, const char* ipv4, std::uint16_t port) {
    Peer p;
    p.name = name;
    if (ipv4) p.ipv4 = IpAddress::from_string(ipv4);
    p.server_port = port;
    return p;
}

std::string read_all(const std::string& path) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

// The message of the p2prc::error thrown by parsing `text`, or "" when nothing is thrown.
std::string parse_error_of(const std::string& text) {
    try {
        IpTable::parse(text, "T");
    } catch (const p2prc::error& e) {
        return e.what();
    }
    return "";
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

TEST_CASE("P2PRC's own table file reads correctly") {
    auto t = IpTable::load(std::string(P2PRC_TEST_DATA_DIR) + "/p2prc-go-ip_table.json");
    REQUIRE(t.size() == 1);
    const Peer& p = t.peers()[0];
    CHECK(p.name == "Node1");
    REQUIRE(p.ipv4);
    CHECK(p.ipv4->to_string() == "139.59.162.154");
    CHECK_FALSE(p.ipv6);
    CHECK(p.server_port == 8078);
    CHECK_FALSE(p.nat);  // "NAT": "False", a string
    CHECK_FALSE(p.latency_ms);  // Go's 0 means never measured
    CHECK_FALSE(p.download_mbps);
    CHECK(p.custom_information.empty());  // null
    CHECK(p.extra.empty());
}

TEST_CASE("round trip in both formats loses nothing") {
    Peer a = make_peer("alpha", "203.0.113.7", 8078);
    a.ipv6 = IpAddress::from_string("2001:db8::7");
    a.latency_ms = 12.5;
    a.download_mbps = 93.25;
    a.upload_mbps = 40.5;
    a.measured_at = 1795645863;
    a.nat = true;
    a.escape_implementation = "FRP";
    a.proxy_server = true;
    a.unsafe_mode = true;
    a.machine_username = "ubuntu";
    a.udp_server_port = "8079";
    a.bare_metal_ssh_port = "22";
    a.public_key = "ssh-ed25519 AAAA";
    a.custom_information = "{\"gpu\":true}";
    a.extra["FutureKey"] = nlohmann::json{{"nested", 1}};
    Peer b = make_peer("", "198.51.100.1", 9000);  // mostly empty

    IpTable t;
    t.add(a);
    t.add(b);
    for (auto format : {TableFormat::seed, TableFormat::p2prc}) {
        CAPTURE(p2prc::to_string(format));
        auto text = t.dump(format);
        auto back = IpTable::parse(text);
        REQUIRE(back.size() == 2);
        const Peer& r = back.peers()[0];
        CHECK(r.name == a.name);
        CHECK(*r.ipv4 == *a.ipv4);
        CHECK(*r.ipv6 == *a.ipv6);
        CHECK(r.server_port == 8078);
        CHECK(*r.latency_ms == doctest::Approx(12.5));
        CHECK(*r.download_mbps == doctest::Approx(93.25));
        CHECK(*r.upload_mbps == doctest::Approx(40.5));
        CHECK(*r.measured_at == 1795645863);
        CHECK(r.nat);
        CHECK(r.escape_implementation == "FRP");
        CHECK(r.proxy_server);
        CHECK(r.unsafe_mode);
        CHECK(r.machine_username == "ubuntu");
        CHECK(r.udp_server_port == "8079");
        CHECK(r.bare_metal_ssh_port == "22");
        CHECK(r.public_key == a.public_key);
        CHECK(r.custom_information == a.custom_information);
        CHECK(r.extra == a.extra);
        const Peer& r2 = back.peers()[1];
        CHECK(r2.name.empty());
        CHECK_FALSE(r2.latency_ms);
        CHECK_FALSE(r2.ipv6);
        // A second round trip is byte-identical.
        CHECK(back.dump(format) == text);
    }
}

TEST_CASE("the formats on the wire") {
    IpTable t;
    Peer p = make_peer("n", "1.2.3.4", 8078);
    p.latency_ms = 1.5;
    t.add(p);
    auto seed = nlohmann::json::parse(t.dump());
    auto e = seed["ip_address"][0];
    CHECK(e["ipv4"] == "1.2.3.4");
    CHECK(e["port no"] == "8078");  // a string, as in the seed document
    CHECK(e["latency"] == 1.5);     // milliseconds, a JSON number
    CHECK(e["download"].is_null());  // not measured
    auto go = nlohmann::json::parse(t.dump(TableFormat::p2prc));
    auto g = go["ip_address"][0];
    CHECK(g["IPV4"] == "1.2.3.4");
    CHECK(g["ServerPort"] == "8078");
    CHECK(g["Latency"] == 1500000);  // Go time.Duration: nanoseconds
    CHECK(g["NAT"] == false);
    CHECK(g["Download"] == 0.0);
    for (const char* key : {"Name", "MachineUsername", "IPV6", "Upload", "UDPServerPort", "BareMetalSSHPort",
                            "EscapeImplementation", "ProxyServer", "UnSafeMode", "PublicKey", "CustomInformation"})
        CHECK(g.contains(key));
}

TEST_CASE("the reader detects the format per entry and accepts numbers as strings") {
    auto t = IpTable::parse(R"({"ip_address":[
        {"ipv4":"10.0.0.1","latency":"12.5","download":"80","upload":7,"port no":"8078"},
        {"IPV4":"10.0.0.2","Latency":2500000,"ServerPort":8079,"NAT":"True","EscapeImplementation":"FRP"},
        {"ipv6":"2001:DB8::1","port no":8080,"latency":null}
    ]})");
    REQUIRE(t.size() == 3);
    CHECK(*t.peers()[0].latency_ms == doctest::Approx(12.5));
    CHECK(*t.peers()[0].download_mbps == doctest::Approx(80));
    CHECK(*t.peers()[0].upload_mbps == doctest::Approx(7));
    CHECK(*t.peers()[1].latency_ms == doctest::Approx(2.5));  // ns -> ms
    CHECK(t.peers()[1].server_port == 8079);
    CHECK(t.peers()[1].nat);
    CHECK(t.peers()[2].ipv6->to_string() == "2001:db8::1");
    CHECK_FALSE(t.peers()[2].latency_ms);
}

TEST_CASE("a missing file is an empty table; a corrupt one is an error naming it") {
    p2prc_test::TempDir dir;
    CHECK(IpTable::load(dir.file("absent.json")).empty());
    {
        std::ofstream(dir.file("bad.json")) << "{\"ip_address\": [ {\"ipv4\": \"1.2.3.4\",\n \"port no\": ";
    }
    try {
        IpTable::load(dir.file("bad.json"));
        FAIL("no exception");
    } catch (const p2prc::error& e) {
        std::string msg = e.what();
        CHECK(e.code() == p2prc::errc::parse_error);
        CHECK(contains(msg, dir.file("bad.json")));
        CHECK(contains(msg, "line 2"));
    }
    {
        std::ofstream(dir.file("empty.json")) << "";
    }
    CHECK_THROWS_AS(IpTable::load(dir.file("empty.json")), p2prc::error);
    CHECK_THROWS_WITH_AS(IpTable::load(dir.path().string()), doctest::Contains("folder"), p2prc::error);
    // Valid syntax the JSON parser still refuses (a number beyond double) is our error too,
    // not the parser's own exception (found by the config fuzzer).
    CHECK_THROWS_WITH_AS(IpTable::parse(R"({"ip_address":[{"latency": 33E336}]})"),
                         doctest::Contains("unusable JSON"), p2prc::error);
    CHECK_THROWS_AS(p2prc::Config::parse(R"({"port": 1E999})"), p2prc::error);
}

TEST_CASE("malformed input: each a clear error, none a crash") {
    const std::string entry_pre = R"({"ip_address":[{"ipv4":"1.2.3.4","port no":)";
    struct Case {
        std::string text, expect;
    };
    std::vector<Case> cases = {
        {R"({"ip_address":[{"ipv4":"1.2.3.4","port no":"80")", "invalid JSON"},
        {R"([{"ipv4":"1.2.3.4","port no":"80"}])", "found an array"},
        {R"({"ip_address":{"ipv4":"1.2.3.4"}})", "must be an array"},
        {R"({"ip_address":[17]})", "entry 0: expected a JSON object"},
        {entry_pre + R"("0"}]})", "invalid port \"0\""},
        {entry_pre + R"(0}]})", "invalid port 0"},
        {entry_pre + R"(65536}]})", "invalid port 65536"},
        {entry_pre + R"("65536"}]})", "invalid port \"65536\""},
        {entry_pre + R"(-1}]})", "invalid port -1"},
        {entry_pre + R"("-1"}]})", "invalid port \"-1\""},
        {entry_pre + R"("80a"}]})", "invalid port \"80a\""},
        {entry_pre + R"(true}]})", "found a boolean"},
        {R"({"ip_address":[{"ipv4":"1.2.3.999","port no":"80"}]})", "invalid address \"1.2.3.999\""},
        {R"({"ip_address":[{"ipv4":"2001:db8::1","port no":"80"}]})", "not an IPv4 address"},
        {R"({"ip_address":[{"ipv4":7,"port no":"80"}]})", "expected an address string"},
        {R"({"ip_address":[{"port no":"80"}]})", "no address"},
        {R"({"ip_address":[{"ipv4":"1.2.3.4"}]})", "no server port"},
        {R"({"ip_address":[{"ipv4":"1.2.3.4","port no":"80","latency":"fast"}]})", "expected a number"},
        {R"({"ip_address":[{"ipv4":"1.2.3.4","port no":"80","latency":-3}]})", "non-negative"},
        {R"({"ip_address":[{"IPV4":"1.2.3.4","ServerPort":"80","NAT":"maybe"}]})", "expected a boolean"},
        {R"({"ip_address":[{"IPV4":"1.2.3.4","ServerPort":"80","Name":["x"]}]})", "expected a string"},
    };
    for (const auto& c : cases) {
        CAPTURE(c.text);
        auto msg = parse_error_of(c.text);
        CHECK(contains(msg, c.expect));
        CHECK(contains(msg, "T"));
    }
    // A 1 MB name.
    std::string huge = R"({"ip_address":[{"ipv4":"1.2.3.4","port no":"80","name":")" +
                       std::string(1 << 20, 'x') + "\"}]}";
    CHECK(contains(parse_error_of(huge), "the limit is 255"));
    // JSON nested 100,000 deep: refused before parsing, no recursion.
    std::string deep = std::string(100000, '[') + std::string(100000, ']');
    CHECK(contains(parse_error_of(deep), "nested deeper than"));
    std::string deep_obj = R"({"ip_address":[{"ipv4":"1.2.3.4","port no":"80","x":)" +
                           std::string(100000, '[') + std::string(100000, ']') + "}]}";
    CHECK(contains(parse_error_of(deep_obj), "nested deeper than"));
    // Brackets inside strings do not count as nesting.
    std::string quoted = R"({"ip_address":[{"ipv4":"1.2.3.4","port no":"80","name":")" + std::string(200, '[') +
                         "\"}]}";
    CHECK(IpTable::parse(quoted).size() == 1);
    // Too many entries.
    p2prc::TableLimits small;
    small.max_entries = 2;
    CHECK_THROWS_WITH_AS(
        IpTable::parse(R"({"ip_address":[{"ipv4":"1.1.1.1","port no":1},{"ipv4":"1.1.1.2","port no":1},
                          {"ipv4":"1.1.1.3","port no":1}]})",
                       "T", small),
        doctest::Contains("more than the limit of 2"), p2prc::error);
    // Top-level odds.
    CHECK(contains(parse_error_of("null"), "found null"));
    CHECK(contains(parse_error_of("   "), "empty"));
    CHECK(IpTable::parse(R"({"ip_address":null})").empty());
}

TEST_CASE("dedupe folds one server's entries and keeps the freshest measurements") {
    IpTable t;
    Peer old = make_peer("old-name", "203.0.113.1", 8078);
    old.latency_ms = 50;
    old.measured_at = 100;
    Peer fresh = make_peer("", "203.0.113.1", 8078);
    fresh.latency_ms = 20;
    fresh.measured_at = 200;
    Peer other_port = make_peer("x", "203.0.113.1", 9000);
    Peer v6 = make_peer("six", nullptr, 8078);
    v6.ipv6 = IpAddress::from_string("2001:db8::1");
    Peer v6_again = make_peer("", nullptr, 8078);
    v6_again.ipv6 = IpAddress::from_string("2001:DB8:0::1");
    Peer nat_none = make_peer("hidden", "203.0.113.9", 8078);
    nat_none.nat = true;
    nat_none.escape_implementation = "None";
    Peer nat_frp = make_peer("relayed", "203.0.113.10", 8078);
    nat_frp.nat = true;
    nat_frp.escape_implementation = "FRP";
    IpTable raw({fresh, old, other_port, v6, v6_again, nat_none, nat_frp});
    CHECK(raw.dedupe() == 3);
    REQUIRE(raw.size() == 4);
    const Peer* p = raw.find("203.0.113.1:8078");
    REQUIRE(p);
    CHECK(*p->latency_ms == 20);  // the fresher figure, though it came first
    CHECK(p->name == "old-name");  // a name is kept when the other side has none
    CHECK(raw.find("203.0.113.1:9000"));
    CHECK(raw.find("[2001:db8::1]:8078")->name == "six");
    CHECK_FALSE(raw.find("hidden"));
    CHECK(raw.find("relayed"));
}

TEST_CASE("an entry knowing both addresses joins the entries that knew one each") {
    Peer v4 = make_peer("a", "203.0.113.1", 80);
    Peer v6 = make_peer("b", nullptr, 80);
    v6.ipv6 = IpAddress::from_string("2001:db8::1");
    Peer both = make_peer("c", "203.0.113.1", 80);
    both.ipv6 = IpAddress::from_string("2001:db8::1");
    IpTable t({v4, v6, both});
    t.dedupe();
    REQUIRE(t.size() == 1);
    CHECK(t.peers()[0].ipv4);
    CHECK(t.peers()[0].ipv6);
    CHECK(t.peers()[0].name == "c");
}

TEST_CASE("add, merge, remove_self, find, remove, sort, lowest_latency") {
    IpTable t;
    CHECK(t.add(make_peer("a", "203.0.113.1", 8078)));
    CHECK_FALSE(t.add(make_peer("a2", "203.0.113.1", 8078)));  // same server: an update
    CHECK(t.size() == 1);
    CHECK(t.peers()[0].name == "a2");
    CHECK_THROWS_AS(t.add(make_peer("noaddr", nullptr, 1)), p2prc::error);
    CHECK_THROWS_AS(t.add(make_peer("noport", "1.1.1.1", 0)), p2prc::error);

    IpTable other;
    Peer b = make_peer("b", "203.0.113.2", 8078);
    b.latency_ms = 30;
    Peer c = make_peer("c", "203.0.113.3", 8078);
    c.latency_ms = 10;
    other.add(b);
    other.add(c);
    other.add(make_peer("dup", "203.0.113.1", 8078));
    other.add(make_peer("me", "127.0.0.1", 8078));
    t.merge(other);
    CHECK(t.size() == 4);
    CHECK(t.remove_self({Endpoint::from_string("127.0.0.1:8078")}) == 1);
    CHECK(t.size() == 3);

    // Never measured is never fastest.
    auto best = t.lowest_latency();
    REQUIRE(best);
    CHECK(best->name == "c");
    auto best_not_c = t.lowest_latency([](const Peer& p) { return p.name != "c"; });
    CHECK(best_not_c->name == "b");
    CHECK_FALSE(IpTable({make_peer("u", "1.1.1.1", 1)}).lowest_latency());

    t.sort_by_latency();
    CHECK(t.peers()[0].name == "c");
    CHECK(t.peers()[1].name == "b");
    CHECK(t.peers()[2].name == "dup");

    CHECK(t.remove("b") == 1);
    CHECK(t.remove("203.0.113.3:8078") == 1);
    CHECK(t.remove("nobody") == 0);
    CHECK(t.size() == 1);
}

TEST_CASE("save writes the chosen format atomically and leaves no temporary files") {
    p2prc_test::TempDir dir;
    IpTable t;
    t.add(make_peer("a", "203.0.113.1", 8078));
    auto path = dir.file("table.json");
    t.save(path);
    CHECK(contains(read_all(path), "\"port no\""));
    t.save(path, TableFormat::p2prc);
    CHECK(contains(read_all(path), "\"ServerPort\""));
    CHECK(IpTable::load(path).size() == 1);
    std::size_t files = 0;
    for (auto& e : std::filesystem::directory_iterator(dir.path())) {
        (void)e;
        ++files;
    }
    CHECK(files == 1);
    CHECK_THROWS_WITH_AS(t.save(dir.file("no/such/folder/t.json")), doctest::Contains("no/such/folder"),
                         p2prc::error);
}

TEST_CASE("update: a throwing change writes nothing") {
    p2prc_test::TempDir dir;
    auto path = dir.file("t.json");
    IpTable::update(path, [](IpTable& t) { t.add(make_peer("a", "203.0.113.1", 1)); });
    CHECK_THROWS_AS(IpTable::update(path,
                                    [](IpTable& t) {
                                        t.add(make_peer("b", "203.0.113.2", 1));
                                        throw std::runtime_error("changed my mind");
                                    }),
                    std::runtime_error);
    CHECK(IpTable::load(path).size() == 1);
}

TEST_CASE("a fold through an entry that was itself folded keeps everything") {
    // Z knows an IPv6 Y; AX joins A and BX; AZ then joins that entry and Z; B comes last
    // and must land in the living entry, not in a slot folded earlier.
    auto v6 = [](Peer p, const char* a) {
        p.ipv6 = IpAddress::from_string(a);
        return p;
    };
    Peer z = v6(make_peer("Z", nullptr, 80), "2001:db8::99");
    Peer a = make_peer("A", "203.0.113.1", 80);
    Peer bx = v6(make_peer("BX", "203.0.113.2", 80), "2001:db8::2");
    Peer ax = v6(make_peer("AX", "203.0.113.1", 80), "2001:db8::2");
    Peer az = v6(make_peer("AZ", "203.0.113.1", 80), "2001:db8::99");
    Peer b = make_peer("B", "203.0.113.2", 80);
    b.latency_ms = 7;
    IpTable t({z, a, bx, ax, az, b});
    t.dedupe();
    REQUIRE(t.size() == 1);
    CHECK(t.peers()[0].name == "B");  // the last word
    REQUIRE(t.peers()[0].latency_ms);
    CHECK(*t.peers()[0].latency_ms == 7);
}
