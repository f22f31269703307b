#include <p2prc.hpp>

#include <doctest/doctest.h>

using p2prc::Endpoint;
using p2prc::IpAddress;
using p2prc::Scope;

TEST_CASE("IPv6 spellings of one host are one address") {
    auto a = IpAddress::from_string("2001:DB8::1");
    auto b = IpAddress::from_string("2001:db8:0:0::1");
    auto c = IpAddress::from_string("[2001:0db8:0000::0001]");
    CHECK(a == b);
    CHECK(a == c);
    CHECK(a.hash() == b.hash());
    CHECK(a.to_string() == "2001:db8::1");
    CHECK(a.is_v6());
}

TEST_CASE("an IPv4-mapped IPv6 address is the IPv4 host") {
    auto m = IpAddress::from_string("::ffff:1.2.3.4");
    CHECK(m.is_v4());
    CHECK(m == IpAddress::from_string("1.2.3.4"));
    CHECK(m.to_string() == "1.2.3.4");
    CHECK(IpAddress::from_string("::FFFF:0102:0304") == m);
}

TEST_CASE("scopes") {
    auto scope = [](const char* s) { return IpAddress::from_string(s).scope(); };
    CHECK(scope("127.0.0.1") == Scope::loopback);
    CHECK(scope("127.255.0.9") == Scope::loopback);
    CHECK(scope("::1") == Scope::loopback);
    CHECK(scope("::ffff:127.0.0.1") == Scope::loopback);
    CHECK(scope("10.1.2.3") == Scope::private_network);
    CHECK(scope("172.16.0.1") == Scope::private_network);
    CHECK(scope("172.31.255.255") == Scope::private_network);
    CHECK(scope("172.32.0.1") == Scope::public_network);
    CHECK(scope("192.168.1.1") == Scope::private_network);
    CHECK(scope("100.64.0.1") == Scope::private_network);
    CHECK(scope("fd00::1") == Scope::private_network);
    CHECK(scope("169.254.1.1") == Scope::link_local);
    CHECK(scope("fe80::1") == Scope::link_local);
    CHECK(scope("febf::1") == Scope::link_local);
    CHECK(scope("0.0.0.0") == Scope::unspecified);
    CHECK(scope("::") == Scope::unspecified);
    CHECK(scope("224.0.0.1") == Scope::reserved);
    CHECK(scope("255.255.255.255") == Scope::reserved);
    CHECK(scope("ff02::1") == Scope::reserved);
    CHECK(scope("203.0.113.7") == Scope::public_network);
    CHECK(scope("8.8.8.8") == Scope::public_network);
    CHECK(scope("2001:db8::1") == Scope::public_network);
    CHECK(std::string(p2prc::to_string(Scope::link_local)) == "link-local");
}

TEST_CASE("bad addresses are refused with the value in the message") {
    for (const char* bad : {"", "1.2.3", "1.2.3.4.5", "256.1.1.1", "example.com", "fe80::1%eth0",
                            "1.2.3.4 ", " 1.2.3.4", "::g", "[::1", "01.2.3.4"}) {
        CAPTURE(bad);
        CHECK_FALSE(IpAddress::parse(bad).has_value());
    }
    try {
        IpAddress::from_string("not-an-ip");
        FAIL("no exception");
    } catch (const p2prc::error& e) {
        CHECK(e.code() == p2prc::errc::parse_error);
        CHECK(std::string(e.what()).find("not-an-ip") != std::string::npos);
    }
}

TEST_CASE("ports: 1-65535 as decimal text") {
    CHECK(p2prc::parse_port("1") == 1);
    CHECK(p2prc::parse_port("8078") == 8078);
    CHECK(p2prc::parse_port("65535") == 65535);
    for (const char* bad : {"0", "65536", "-1", "80a", "", " 80", "+80", "100000", "0x50"}) {
        CAPTURE(bad);
        CHECK_FALSE(p2prc::parse_port(bad).has_value());
    }
    CHECK_THROWS_WITH_AS(p2prc::port_from_string("80a"), doctest::Contains("\"80a\""), p2prc::error);
}

TEST_CASE("endpoints") {
    auto e = Endpoint::from_string("1.2.3.4:8078");
    CHECK(e.port == 8078);
    CHECK(e.to_string() == "1.2.3.4:8078");
    auto v6 = Endpoint::from_string("[2001:DB8::1]:80");
    CHECK(v6.to_string() == "[2001:db8::1]:80");
    CHECK(v6 == Endpoint::from_string("[2001:db8:0::1]:80"));
    CHECK(Endpoint::from_string("[::ffff:1.2.3.4]:8078") == e);
    for (const char* bad : {"1.2.3.4", "1.2.3.4:", "1.2.3.4:0", "2001:db8::1:80", "[::1]80", "[::1]:",
                            "host:80", ":80"}) {
        CAPTURE(bad);
        CHECK_FALSE(Endpoint::parse(bad).has_value());
    }
}

TEST_CASE("IPv6 forms that embed an IPv4 address take its scope") {
    auto scope = [](const char* s) { return IpAddress::from_string(s).scope(); };
    CHECK(scope("64:ff9b::10.0.0.1") == Scope::private_network);
    CHECK(scope("64:ff9b::127.0.0.1") == Scope::loopback);
    CHECK(scope("64:ff9b::203.0.113.9") == Scope::public_network);
    CHECK(scope("::10.1.2.3") == Scope::private_network);
    CHECK(scope("::169.254.0.1") == Scope::link_local);
}
