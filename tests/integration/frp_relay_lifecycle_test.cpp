// The relay over time: the server restarts, a client vanishes, ports are refused.
#include <p2prc.hpp>

#include "support/relay.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <mutex>
#include <vector>

using namespace p2prc_test;
using p2prc::detail::Clock;
using p2prc::frp::Client;
using p2prc::frp::ClientState;
using p2prc::frp::ProxyState;
using p2prc::frp::Server;

namespace {

// Polls `cond` every 50 ms for at most `limit`; true once it held.
template <class F>
bool eventually(F cond, Millis limit) {
    auto deadline = Clock::now() + limit;
    while (Clock::now() < deadline) {
        if (cond()) return true;
        std::this_thread::sleep_for(50ms);
    }
    return cond();
}

}  // namespace

TEST_CASE("relay: after a server restart the client logs in again and re-registers") {
    for (bool mux : {true, false}) {
        CAPTURE(mux);
        EchoServer echo;
        auto so = server_options("tok");
        so.bind = loopback(free_port());
        auto server = std::make_unique<Server>(so);
        auto co = client_options(loopback(server->port()), echo.endpoint(), "tok");
        co.tcp_mux = mux;
        co.proxies[0].remote_port = free_port();
        std::mutex seen_mu;
        std::vector<ProxyState> seen;  // what the callback reported, in order
        co.on_status = [&](const p2prc::frp::ProxyStatus& s) {
            std::lock_guard<std::mutex> lk(seen_mu);
            if (seen.size() < 64) seen.push_back(s.state);
        };
        Client client(co);
        auto st = client.wait_running("echo", 10000ms);
        REQUIRE_MESSAGE(st.state == ProxyState::running, client.last_error());
        CHECK(st.remote_port == co.proxies[0].remote_port);
        CHECK(parallel_echo(st.public_endpoint, 4, 256 * 1024) == 4);
        std::string run_id = client.run_id();
        CHECK(run_id.size() == 16);

        server.reset();  // every connection and port of the old server goes
        CHECK(eventually([&] { return client.status("echo").state == ProxyState::pending; },
                         5000ms));
        server = std::make_unique<Server>(so);

        auto again = client.wait_running("echo", 15000ms, st.generation);
        REQUIRE_MESSAGE(again.state == ProxyState::running, client.last_error());
        CHECK(again.generation > st.generation);
        CHECK(again.remote_port == st.remote_port);
        CHECK(client.run_id() == run_id);  // the same run_id was offered and kept
        CHECK(client.login_count() >= 2);
        CHECK(parallel_echo(again.public_endpoint, 4, 256 * 1024) == 4);
        REQUIRE(server->proxies().size() == 1);
        CHECK(server->proxies()[0].run_id == run_id);
        std::lock_guard<std::mutex> lk(seen_mu);
        auto first = std::find(seen.begin(), seen.end(), ProxyState::running);
        REQUIRE(first != seen.end());
        auto down = std::find(first, seen.end(), ProxyState::pending);
        REQUIRE(down != seen.end());
        CHECK(std::find(down, seen.end(), ProxyState::running) != seen.end());
    }
}

TEST_CASE("relay: a client that vanishes loses its public port within the deadline") {
    // Short deadlines: no app heartbeat for 1.5 s (without tcp_mux), or no answer to a
    // yamux ping for 1 s (with tcp_mux) and the server drops the client.
    for (bool mux : {true, false}) {
        CAPTURE(mux);
        EchoServer echo;
        auto so = server_options();
        so.heartbeat_timeout = 1500ms;
        so.mux_keepalive_interval = 500ms;
        so.mux_ping_timeout = 1000ms;
        Server server(so);
        Forwarder path(loopback(server.port()));
        auto co = client_options(path.endpoint(), echo.endpoint());
        co.tcp_mux = mux;
        co.heartbeat_interval = 300ms;  // the live client keeps its control alive
        Client client(co);
        auto st = client.wait_running("echo", 10000ms);
        REQUIRE_MESSAGE(st.state == ProxyState::running, client.last_error());
        std::uint16_t port = server.proxies().at(0).port;
        // Alive for longer than the deadline: heartbeats (or pings) keep it.
        std::this_thread::sleep_for(2000ms);
        CHECK(server.client_count() == 1);
        CHECK(port_open(port));

        path.freeze();  // no FIN, no RST: the client is simply gone
        auto t0 = Clock::now();
        bool gone = eventually([&] { return server.client_count() == 0; }, 8000ms);
        CHECK(gone);
        auto waited = std::chrono::duration_cast<Millis>(Clock::now() - t0);
        CHECK(waited < 5000ms);  // deadline 1.5 s (or 0.5 + 1 s), generous slack
        CHECK(server.proxies().empty());
        CHECK(eventually([&] { return port_bindable(port); }, 2000ms));
        CHECK(!port_open(port));
    }
}

TEST_CASE("relay: a remote port in use is refused in NewProxyResp and the control stays up") {
    EchoServer echo;
    Server server(server_options());
    p2prc::detail::TcpListener squatter(loopback(0));  // someone else holds this port
    auto co = client_options(loopback(server.port()), echo.endpoint());
    co.proxies.clear();
    co.proxies.push_back({"taken", echo.endpoint(), squatter.port(), false, false});
    co.proxies.push_back({"first", echo.endpoint(), 0, false, false});
    Client client(co);
    auto taken = client.wait_running("taken", 10000ms);
    CHECK(taken.state == ProxyState::failed);
    CHECK(taken.error == "port unavailable");
    auto first = client.wait_running("first", 10000ms);
    REQUIRE(first.state == ProxyState::running);
    CHECK(client.state() == ClientState::online);
    CHECK(parallel_echo(first.public_endpoint, 2, 64 * 1024) == 2);

    // A port held by another proxy of the relay: frps's "port already used".
    auto co2 = client_options(loopback(server.port()), echo.endpoint());
    co2.proxies[0] = {"second", echo.endpoint(), first.remote_port, false, false};
    co2.proxies.push_back({"third", echo.endpoint(), 0, false, false});
    Client other(co2);
    auto second = other.wait_running("second", 10000ms);
    CHECK(second.state == ProxyState::failed);
    CHECK(second.error == "port already used");
    auto third = other.wait_running("third", 10000ms);
    CHECK(third.state == ProxyState::running);
    CHECK(parallel_echo(third.public_endpoint, 2, 64 * 1024) == 2);
    CHECK(server.client_count() == 2);
}

TEST_CASE("relay: a proxy name already registered elsewhere is refused") {
    EchoServer echo;
    Server server(server_options());
    Client a(client_options(loopback(server.port()), echo.endpoint()));
    REQUIRE(a.wait_running("echo", 10000ms).state == ProxyState::running);
    Client b(client_options(loopback(server.port()), echo.endpoint()));
    auto st = b.wait_running("echo", 10000ms);
    CHECK(st.state == ProxyState::failed);
    CHECK(st.error == "proxy name [echo] is already in use");
}

TEST_CASE("relay: stopping the client closes its public port") {
    EchoServer echo;
    Server server(server_options());
    auto client = std::make_unique<Client>(client_options(loopback(server.port()),
                                                          echo.endpoint()));
    auto st = client->wait_running("echo", 10000ms);
    REQUIRE(st.state == ProxyState::running);
    client->stop();
    CHECK(client->state() == ClientState::stopped);
    CHECK(eventually([&] { return server.client_count() == 0; }, 5000ms));
    CHECK(eventually([&] { return port_bindable(st.remote_port); }, 2000ms));
}
