#include <p2prc.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <string>
#include <thread>
#include <vector>

using p2prc::Config;
using p2prc::Endpoint;
using p2prc::IpAddress;
using p2prc::IpTable;
using p2prc::ObservedAddress;
using p2prc::ScopePolicy;

namespace {

IpAddress ip(const char* s) {
    return IpAddress::from_string(s);
}

bool allows(const char* sender, const char* learned, bool link_local = false) {
    ScopePolicy p;
    p.allow_link_local = link_local;
    return p2prc::scope_allows(ip(sender), ip(learned), p);
}

bool has(const std::vector<Endpoint>& v, const char* e) {
    return std::find(v.begin(), v.end(), Endpoint::from_string(e)) != v.end();
}

}  // namespace

TEST_CASE("scope rule: a public sender teaches public addresses only") {
    for (const char* sender : {"203.0.113.5", "2001:db8::5"}) {
        CAPTURE(sender);
        CHECK(allows(sender, "198.51.100.7"));
        CHECK(allows(sender, "2001:db8::99"));
        CHECK_FALSE(allows(sender, "10.0.0.1"));
        CHECK_FALSE(allows(sender, "192.168.1.1"));
        CHECK_FALSE(allows(sender, "172.16.3.4"));
        CHECK_FALSE(allows(sender, "100.64.0.1"));
        CHECK_FALSE(allows(sender, "fd00::1"));
        CHECK_FALSE(allows(sender, "127.0.0.1"));
        CHECK_FALSE(allows(sender, "::1"));
        CHECK_FALSE(allows(sender, "::ffff:127.0.0.1"));
        CHECK_FALSE(allows(sender, "169.254.1.1"));
        CHECK_FALSE(allows(sender, "fe80::1"));
        CHECK_FALSE(allows(sender, "169.254.1.1", /*link_local=*/true));  // still more internal
        CHECK_FALSE(allows(sender, "fe80::1", true));
    }
}

TEST_CASE("scope rule: a private sender teaches private and public, not loopback") {
    for (const char* sender : {"192.168.1.10", "10.1.1.1", "fd12::3"}) {
        CAPTURE(sender);
        CHECK(allows(sender, "203.0.113.1"));
        CHECK(allows(sender, "2001:db8::1"));
        CHECK(allows(sender, "10.0.0.2"));
        CHECK(allows(sender, "fd00::2"));
        CHECK_FALSE(allows(sender, "127.0.0.1"));
        CHECK_FALSE(allows(sender, "::1"));
        CHECK_FALSE(allows(sender, "169.254.0.9"));
        CHECK_FALSE(allows(sender, "169.254.0.9", true));
    }
}

TEST_CASE("scope rule: link-local is gated by the policy") {
    CHECK_FALSE(allows("169.254.3.3", "169.254.4.4"));
    CHECK(allows("169.254.3.3", "169.254.4.4", true));
    CHECK(allows("fe80::1", "fe80::2", true));
    CHECK_FALSE(allows("fe80::1", "fe80::2"));
    CHECK(allows("fe80::1", "192.168.0.1"));  // a link-local sender may teach less internal
    CHECK_FALSE(allows("fe80::1", "::1", true));
    CHECK_FALSE(allows("127.0.0.1", "fe80::2"));  // even a local sender: the policy says no
    CHECK(allows("127.0.0.1", "fe80::2", true));
}

TEST_CASE("scope rule: a loopback sender teaches anything that can be a server") {
    for (const char* sender : {"127.0.0.1", "::1", "127.0.0.9"}) {
        CAPTURE(sender);
        CHECK(allows(sender, "127.0.0.1"));
        CHECK(allows(sender, "::1"));
        CHECK(allows(sender, "10.0.0.1"));
        CHECK(allows(sender, "203.0.113.1"));
        CHECK_FALSE(allows(sender, "0.0.0.0"));
        CHECK_FALSE(allows(sender, "::"));
        CHECK_FALSE(allows(sender, "224.0.0.1"));
        CHECK_FALSE(allows(sender, "255.255.255.255"));
        CHECK_FALSE(allows(sender, "ff02::1"));
    }
}

TEST_CASE("scope rule: unspecified and reserved are always refused, from any sender") {
    for (const char* sender : {"203.0.113.5", "10.0.0.5", "127.0.0.1", "::1", "fe80::5"})
        for (const char* learned :
             {"0.0.0.0", "0.1.2.3", "::", "239.1.1.1", "240.0.0.1", "ff05::2"}) {
            CAPTURE(sender);
            CAPTURE(learned);
            CHECK_FALSE(allows(sender, learned, true));
        }
    // A sender that claims a nonsense address teaches nothing.
    CHECK_FALSE(allows("0.0.0.0", "203.0.113.1"));
    CHECK_FALSE(allows("224.0.0.1", "203.0.113.1"));
    auto why = p2prc::scope_refusal(ip("203.0.113.5"), ip("10.0.0.1"), {});
    REQUIRE(why);
    CHECK(why->find("private address from a public sender 203.0.113.5") != std::string::npos);
}

TEST_CASE("filter_learned drops refused entries, keeps the rest, and strips measurements") {
    auto t = IpTable::parse(R"({"ip_address":[
        {"ipv4":"198.51.100.1","port no":"8078","latency":1.5,"download":900,"upload":800,
         "measured_at":1700000000,"name":"good"},
        {"ipv4":"10.0.0.1","port no":"8078","latency":0.1,"name":"private"},
        {"ipv4":"127.0.0.1","port no":"8078","name":"loop"},
        {"ipv6":"fe80::1","port no":"8078","name":"ll"},
        {"ipv4":"198.51.100.2","ipv6":"fd00::2","port no":"8079","name":"mixed"},
        {"ipv4":"0.0.0.0","port no":"8078","name":"zero"}
    ]})");
    auto report = p2prc::filter_learned(t, ip("203.0.113.5"), {});
    CHECK(report.received == 6);
    CHECK(report.accepted == 2);
    CHECK(report.dropped_scope == 4);
    CHECK(report.addresses_removed == 5);
    CHECK(report.dropped_over_limit == 0);
    CHECK(report.dropped() == 4);
    CHECK(report.reasons.size() == 5);
    CHECK(report.reasons[0].find("entry 1 (10.0.0.1:8078): private address") == 0);
    REQUIRE(t.size() == 2);
    const auto& good = t.peers()[0];
    CHECK(good.name == "good");
    CHECK_FALSE(good.latency_ms);
    CHECK_FALSE(good.download_mbps);
    CHECK_FALSE(good.upload_mbps);
    CHECK_FALSE(good.measured_at);
    const auto& mixed = t.peers()[1];
    CHECK(mixed.name == "mixed");
    CHECK(mixed.ipv4 == ip("198.51.100.2"));
    CHECK_FALSE(mixed.ipv6);  // its private IPv6 went, its public IPv4 stays
}

TEST_CASE("filter_learned: a private sender's LAN entries pass; the entry count is bounded") {
    std::vector<p2prc::Peer> peers;
    for (int i = 0; i < 50; ++i) {
        p2prc::Peer p;
        p.ipv4 = ip(("10.0.1." + std::to_string(i + 1)).c_str());
        p.server_port = 8078;
        p.latency_ms = 3;
        peers.push_back(p);
    }
    p2prc::Peer loop;
    loop.ipv4 = ip("127.0.0.1");
    loop.server_port = 1;
    peers.insert(peers.begin(), loop);  // refused: it must not take a slot
    IpTable t(std::move(peers));
    auto report = p2prc::filter_learned(t, ip("10.0.0.9"), {}, 20);
    CHECK(report.received == 51);
    CHECK(report.accepted == 20);
    CHECK(report.dropped_scope == 1);
    CHECK(report.dropped_over_limit == 30);
    REQUIRE(t.size() == 20);
    CHECK(t.peers()[0].ipv4 == ip("10.0.1.1"));
    for (const auto& p : t.peers()) CHECK_FALSE(p.measured());
}

TEST_CASE("filter_learned: reasons are bounded") {
    std::vector<p2prc::Peer> peers(200);
    for (std::size_t i = 0; i < peers.size(); ++i) {
        peers[i].ipv4 = ip("192.168.0.1");
        peers[i].server_port = static_cast<std::uint16_t>(i + 1);
    }
    IpTable t(std::move(peers));
    auto report = p2prc::filter_learned(t, ip("203.0.113.5"), {});
    CHECK(report.dropped_scope == 200);
    CHECK(report.reasons.size() == p2prc::LearnReport::max_reasons);
    CHECK(t.empty());
}

TEST_CASE("local_interface_addresses lists loopback, normalised and without duplicates") {
    auto all = p2prc::local_interface_addresses();
    CHECK(std::find(all.begin(), all.end(), ip("127.0.0.1")) != all.end());
    for (std::size_t i = 0; i < all.size(); ++i) {
        CHECK(IpAddress::from_string(all[i].to_string()) == all[i]);
        for (std::size_t j = i + 1; j < all.size(); ++j) CHECK(all[i] != all[j]);
    }
}

TEST_CASE("own_endpoints: configured public addresses, interfaces, loopback and unspecified") {
    Config c;
    c.apply_flag("--public-address", "203.0.113.7");
    c.apply_flag("--public-address", "[2001:db8::9]:9999");
    c.apply_flag("--bind", "127.0.0.1");
    auto own = p2prc::own_endpoints(c, 8123, {ip("192.168.5.5"), ip("fe80::1234")});
    CHECK(has(own, "203.0.113.7:8123"));    // no port given: the server's
    CHECK(has(own, "[2001:db8::9]:9999"));  // its own port
    CHECK(has(own, "192.168.5.5:8123"));
    CHECK(has(own, "[fe80::1234]:8123"));
    CHECK(has(own, "127.0.0.1:8123"));
    CHECK(has(own, "[::1]:8123"));
    CHECK(has(own, "0.0.0.0:8123"));
    CHECK(has(own, "[::]:8123"));
    CHECK_FALSE(has(own, "192.168.5.5:8078"));
    CHECK_FALSE(has(own, "[2001:db8::9]:8123"));
    auto sorted = own;
    std::sort(sorted.begin(), sorted.end(),
              [](const Endpoint& a, const Endpoint& b) { return a.to_string() < b.to_string(); });
    CHECK(std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end());  // no duplicates

    auto real = p2prc::own_endpoints(Config(), 8124);
    CHECK(has(real, "127.0.0.1:8124"));
    CHECK_THROWS_AS(p2prc::own_endpoints(Config(), 0, {}), p2prc::error);

    // The use it is made for: a table never lists the node itself.
    auto t = IpTable::parse(R"({"ip_address":[
        {"ipv4":"127.0.0.1","port no":"8123"},{"ipv4":"203.0.113.7","port no":"8123"},
        {"ipv4":"127.0.0.1","port no":"8124"},{"ipv6":"2001:db8::9","port no":"9999"}]})");
    CHECK(t.remove_self(own) == 3);
    REQUIRE(t.size() == 1);
    CHECK(t.peers()[0].server_port == 8124);
}

TEST_CASE("observed address: one reporter cannot set it, two distinct ones can") {
    ObservedAddress obs;
    CHECK_FALSE(obs.trusted());
    for (int i = 0; i < 10; ++i) obs.report(ip("198.51.100.1"), ip("203.0.113.50"));
    CHECK_FALSE(obs.trusted());  // the same peer repeating itself counts once
    CHECK(obs.reporters() == 1);
    obs.report(ip("198.51.100.2"), ip("203.0.113.50"));
    REQUIRE(obs.trusted());
    CHECK(*obs.trusted() == ip("203.0.113.50"));
    CHECK(obs.behind_nat({ip("192.168.1.5"), ip("127.0.0.1")}));
    CHECK_FALSE(obs.behind_nat({ip("203.0.113.50")}));
    obs.clear();
    CHECK_FALSE(obs.trusted());
    CHECK_FALSE(obs.behind_nat({}));  // nothing known: not claimed
}

TEST_CASE("observed address: disagreement") {
    ObservedAddress obs;
    obs.report(ip("198.51.100.1"), ip("203.0.113.1"));
    obs.report(ip("198.51.100.2"), ip("203.0.113.2"));
    CHECK_FALSE(obs.trusted());  // two peers, two answers: no quorum

    obs.report(ip("198.51.100.3"), ip("203.0.113.2"));
    REQUIRE(obs.trusted());
    CHECK(*obs.trusted() == ip("203.0.113.2"));

    // A reporter changing its mind moves its one vote.
    obs.report(ip("198.51.100.3"), ip("203.0.113.1"));
    REQUIRE(obs.trusted());
    CHECK(*obs.trusted() == ip("203.0.113.1"));

    // LAN peers and internet peers see different addresses: the public view wins.
    ObservedAddress mixed;
    mixed.report(ip("192.168.1.2"), ip("192.168.1.5"));
    mixed.report(ip("192.168.1.3"), ip("192.168.1.5"));
    mixed.report(ip("192.168.1.4"), ip("192.168.1.5"));
    mixed.report(ip("198.51.100.1"), ip("203.0.113.9"));
    mixed.report(ip("198.51.100.2"), ip("203.0.113.9"));
    CHECK(*mixed.trusted() == ip("203.0.113.9"));

    // Nonsense observations are not votes.
    ObservedAddress junk;
    junk.report(ip("198.51.100.1"), ip("0.0.0.0"));
    junk.report(ip("198.51.100.2"), ip("0.0.0.0"));
    CHECK_FALSE(junk.trusted());
    CHECK(junk.reporters() == 0);
}

TEST_CASE("observed address: memory is bounded, the least recent reporter goes first") {
    ObservedAddress obs(4);
    obs.report(ip("198.51.100.1"), ip("203.0.113.1"));
    obs.report(ip("198.51.100.2"), ip("203.0.113.1"));
    CHECK(obs.trusted() == ip("203.0.113.1"));
    for (int i = 10; i < 300; ++i)
        obs.report(ip(("198.51.100." + std::to_string(i % 250 + 3)).c_str()),
                   ip(("192.0.2." + std::to_string(i % 250)).c_str()));
    CHECK(obs.reporters() == 4);
    CHECK_FALSE(obs.trusted());  // the two old agreeing votes were pushed out
}

TEST_CASE("observed address: concurrent reports are safe") {
    ObservedAddress obs;
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
        threads.emplace_back([&obs, t] {
            for (int i = 0; i < 500; ++i) {
                obs.report(ip(("198.51.100." + std::to_string(t * 50 + i % 50)).c_str()),
                           ip("203.0.113.77"));
                (void)obs.trusted();
            }
        });
    for (auto& th : threads) th.join();
    CHECK(obs.reporters() == 64);
    CHECK(obs.trusted() == ip("203.0.113.77"));
}
