// detail::TcpConnection and detail::TcpListener on loopback.
#include <p2prc.hpp>

#include "support/skip.hpp"

#include <doctest/doctest.h>

#include <chrono>
#include <thread>

using namespace p2prc::detail;
using namespace std::chrono_literals;

namespace {
p2prc::Endpoint any_port(const char* host) {
    return p2prc::Endpoint{p2prc::IpAddress::from_string(host), 0};
}
struct Pair {
    std::unique_ptr<TcpConnection> a, b;
};
Pair connected_pair(const char* host = "127.0.0.1") {
    TcpListener l(p2prc::Endpoint{p2prc::IpAddress::from_string(host), 0});
    REQUIRE(l.port() != 0);
    Pair p;
    p.a = TcpConnection::connect(l.local_endpoint(), 2000ms);
    p.b = l.accept(2000ms);
    REQUIRE(p.b);
    return p;
}
}  // namespace

TEST_CASE("tcp: bytes both ways, read_exact, half-close gives end of stream") {
    auto p = connected_pair();
    CHECK(p.a->remote_endpoint() == p.b->local_endpoint());
    p.a->write_all("hello", 5, 1000ms);
    char buf[8] = {};
    p.b->read_exact(buf, 5, 1000ms);
    CHECK(std::string(buf, 5) == "hello");
    p.a->shutdown_write();
    CHECK(p.b->read_some(buf, 8, 1000ms) == 0);
    // The other direction still works after the half-close.
    p.b->write_all("back", 4, 1000ms);
    p.a->read_exact(buf, 4, 1000ms);
    CHECK(std::string(buf, 4) == "back");
    p.b->shutdown_write();
    CHECK_THROWS_WITH_AS(p.a->read_exact(buf, 1, 1000ms), doctest::Contains("end of stream"),
                         p2prc::error);
}

TEST_CASE("tcp: IPv6 loopback") {
    std::unique_ptr<TcpListener> l;
    try {
        l = std::make_unique<TcpListener>(any_port("::1"));
    } catch (const p2prc::error&) {
        p2prc_test::skip_test_case("no IPv6 loopback (::1) on this machine");
        return;
    }
    auto a = TcpConnection::connect(l->local_endpoint(), 2000ms);
    auto b = l->accept(2000ms);
    REQUIRE(b);
    a->write_all("v6", 2, 1000ms);
    char buf[2];
    b->read_exact(buf, 2, 1000ms);
    CHECK(std::string(buf, 2) == "v6");
    CHECK(a->remote_endpoint()->address.is_v6());
}

TEST_CASE("tcp: timeouts and prompt close from another thread") {
    auto p = connected_pair();
    char buf[4];
    try {
        p.a->read_some(buf, 4, 50ms);
        FAIL("expected a timeout");
    } catch (const p2prc::error& e) {
        CHECK(e.code() == p2prc::errc::timeout);
    }
    auto t0 = Clock::now();
    std::thread closer([&] {
        std::this_thread::sleep_for(100ms);
        p.a->close();
    });
    CHECK_THROWS_AS(p.a->read_some(buf, 4, 10000ms), p2prc::error);
    closer.join();
    CHECK(Clock::now() - t0 < 5s);
    // The peer sees the connection end.
    CHECK(p.b->read_some(buf, 4, 2000ms) == 0);
}

TEST_CASE("tcp: listener accept timeout and prompt close; connect failures") {
    TcpListener l(any_port("127.0.0.1"));
    CHECK(l.accept(50ms) == nullptr);
    auto t0 = Clock::now();
    std::thread closer([&] {
        std::this_thread::sleep_for(100ms);
        l.close();
    });
    CHECK_THROWS_AS(l.accept(10000ms), p2prc::error);
    closer.join();
    CHECK(Clock::now() - t0 < 5s);

    // A port nobody listens on: connection refused, as an io_error naming the endpoint.
    auto port = [] {
        TcpListener tmp(any_port("127.0.0.1"));
        return tmp.port();
    }();
    p2prc::Endpoint dead{p2prc::IpAddress::from_string("127.0.0.1"), port};
    CHECK_THROWS_WITH_AS(TcpConnection::connect(dead, 1000ms),
                         doctest::Contains(dead.to_string().c_str()), p2prc::error);
    // Binding a port in use fails with a clear error.
    TcpListener busy(any_port("127.0.0.1"));
    CHECK_THROWS_AS(TcpListener(busy.local_endpoint()), p2prc::error);
}
