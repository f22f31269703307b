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

struct Setup {
    bool mux = true, encryption = false, compression = false;
    std::string token;
    bool tls = false, tls_first_byte = true, tls_only = false;
    std::size_t conns = 50, bytes = kMiB;
};

// Exposes an echo service and pushes `conns` x `bytes` through it both ways.
void run_echo(const Setup& s) {
    EchoServer echo;
    auto so = server_options(s.token);
    so.tls_only = s.tls_only;
    Server server(so);
    auto opt = client_options(loopback(server.port()), echo.endpoint(), s.token);
    opt.tcp_mux = s.mux;
    opt.tls = s.tls;
    opt.tls_first_byte = s.tls_first_byte;
    opt.proxies[0].use_encryption = s.encryption;
    opt.proxies[0].use_compression = s.compression;
    Client client(opt);
    auto st = client.wait_running("echo", 10000ms);
    REQUIRE_MESSAGE(st.state == ProxyState::running, client.last_error());
    CHECK(st.remote_port != 0);
    CHECK(st.public_endpoint == loopback(st.remote_port));
    REQUIRE(server.proxies().size() == 1);
    CHECK(server.proxies()[0].port == st.remote_port);
    CHECK(server.proxies()[0].use_encryption == s.encryption);
    std::string why;
    CHECK_MESSAGE(parallel_echo(st.public_endpoint, s.conns, s.bytes, &why) == s.conns, why);
}

}  // namespace

TEST_CASE("relay: 50 connections x 1 MiB each way through tcp_mux") {
    run_echo(Setup{});
}

TEST_CASE("relay: 50 connections x 1 MiB each way without tcp_mux") {
    Setup s;
    s.mux = false;
    run_echo(s);
}

TEST_CASE("relay: 50 connections x 1 MiB each way with a token and use_encryption") {
    Setup s;
    s.encryption = true;
    s.token = "s3cret";
    run_echo(s);
}

TEST_CASE("relay: use_encryption and use_compression without tcp_mux") {
    Setup s;
    s.mux = false;
    s.encryption = s.compression = true;
    s.token = "s3cret";
    s.conns = 8;
    run_echo(s);
}

TEST_CASE("relay: 50 connections x 1 MiB each way over TLS (0x17 first byte)") {
    for (bool mux : {true, false}) {
        CAPTURE(mux);
        Setup s;
        s.mux = mux;
        s.tls = true;
        run_echo(s);
    }
}

TEST_CASE("relay: bare TLS (no 0x17) to a server that only takes TLS") {
    Setup s;
    s.tls = true;
    s.tls_first_byte = false;
    s.tls_only = true;
    s.conns = 8;
    run_echo(s);
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

TEST_CASE("relay: a server that only takes TLS drops a plain client") {
    EchoServer echo;
    auto so = server_options();
    so.tls_only = true;
    Server server(so);
    auto co = client_options(loopback(server.port()), echo.endpoint());
    co.login_timeout = 1000ms;
    Client client(co);
    auto st = client.wait_running("echo", 1500ms);
    CHECK(st.state == ProxyState::pending);
    CHECK(client.login_count() == 0);
    CHECK(server.client_count() == 0);
}
