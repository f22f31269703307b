// In-process relay server and client on loopback: an echo service exposed through the
// relay, many concurrent connections, every byte checked, with each transport option.
#include <p2prc.hpp>

#include "support/relay.hpp"

#include <doctest/doctest.h>

using namespace p2prc_test;
using p2prc::frp::Client;
using p2prc::frp::ClientState;
using p2prc::frp::ProxyState;
using p2prc::frp::Server;

namespace {

constexpr std::size_t kMiB = 1024 * 1024;

// Exposes an echo service and pushes `conns` x `bytes` through it both ways.
void run_echo(bool mux, bool encryption, bool compression, const std::string& token,
              std::size_t conns, std::size_t bytes) {
    EchoServer echo;
    Server server(server_options(token));
    auto opt = client_options(loopback(server.port()), echo.endpoint(), token);
    opt.tcp_mux = mux;
    opt.proxies[0].use_encryption = encryption;
    opt.proxies[0].use_compression = compression;
    Client client(opt);
    auto st = client.wait_running("echo", 10000ms);
    REQUIRE_MESSAGE(st.state == ProxyState::running, client.last_error());
    CHECK(st.remote_port != 0);
    CHECK(st.public_endpoint == loopback(st.remote_port));
    REQUIRE(server.proxies().size() == 1);
    CHECK(server.proxies()[0].port == st.remote_port);
    CHECK(server.proxies()[0].use_encryption == encryption);
    std::string why;
    CHECK_MESSAGE(parallel_echo(st.public_endpoint, conns, bytes, &why) == conns, why);
}

}  // namespace

TEST_CASE("relay: 50 connections x 1 MiB each way through tcp_mux") {
    run_echo(true, false, false, "", 50, kMiB);
}

TEST_CASE("relay: 50 connections x 1 MiB each way without tcp_mux") {
    run_echo(false, false, false, "", 50, kMiB);
}

TEST_CASE("relay: 50 connections x 1 MiB each way with a token and use_encryption") {
    run_echo(true, true, false, "s3cret", 50, kMiB);
}

TEST_CASE("relay: use_encryption and use_compression without tcp_mux") {
    run_echo(false, true, true, "s3cret", 8, kMiB);
}

TEST_CASE("relay: one server serves tcp_mux and plain clients at once") {
    EchoServer echo;
    Server server(server_options());
    auto a = client_options(loopback(server.port()), echo.endpoint());
    a.proxies[0].name = "with-mux";
    auto b = a;
    b.tcp_mux = false;
    b.proxies[0].name = "without-mux";
    Client ca(a), cb(b);
    auto sa = ca.wait_running("with-mux", 10000ms);
    auto sb = cb.wait_running("without-mux", 10000ms);
    REQUIRE(sa.state == ProxyState::running);
    REQUIRE(sb.state == ProxyState::running);
    CHECK(sa.remote_port != sb.remote_port);
    CHECK(server.client_count() == 2);
    CHECK(parallel_echo(sa.public_endpoint, 4, 64 * 1024) == 4);
    CHECK(parallel_echo(sb.public_endpoint, 4, 64 * 1024) == 4);
}

TEST_CASE("relay: a wrong token is refused with frp's error text") {
    EchoServer echo;
    Server server(server_options("right"));
    for (bool mux : {true, false}) {
        CAPTURE(mux);
        auto opt = client_options(loopback(server.port()), echo.endpoint(), "wrong");
        opt.tcp_mux = mux;
        Client client(opt);
        auto st = client.wait_running("echo", 10000ms);
        CHECK(st.state == ProxyState::failed);
        CHECK(st.error == "login refused: token in login doesn't match token from configuration");
        CHECK(client.state() == ClientState::failed);
        CHECK(client.last_error() == "token in login doesn't match token from configuration");
        CHECK(server.client_count() == 0);
    }
}

TEST_CASE("relay: TLS is refused as unsupported on both sides") {
    auto so = server_options();
    so.tls = true;
    CHECK_THROWS_WITH_AS(Server{so}, doctest::Contains("TLS is not supported yet"),
                         p2prc::error);
    auto co = client_options(loopback(7000), loopback(8000));
    co.tls = true;
    try {
        Client c(co);
        FAIL("Client accepted tls = true");
    } catch (const p2prc::error& e) {
        CHECK(e.code() == p2prc::errc::unsupported);
    }
}
