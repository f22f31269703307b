#include <doctest/doctest.h>

#include "p2prc/server.hpp"
#include "support/raw_http.hpp"

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

p2prc::ServerOptions loopback() {
    p2prc::ServerOptions o;
    o.bind_address = "127.0.0.1";
    o.worker_threads = 8;
    return o;
}

bool get_ok(std::uint16_t port, const char* path = "/server_info") {
    httplib::Client c("127.0.0.1", port);
    c.set_connection_timeout(2, 0);
    c.set_read_timeout(3, 0);
    auto r = c.Get(path);
    return r && r->status == 200;
}

}  // namespace

TEST_CASE("abuse: 200 concurrent clients are all answered") {
    p2prc::Server s(loopback());
    s.start();
    constexpr int kClients = 200;
    std::vector<std::unique_ptr<p2prc_test::RawConn>> conns;
    for (int i = 0; i < kClients; ++i) {
        conns.push_back(std::make_unique<p2prc_test::RawConn>(s.port()));
        REQUIRE(conns.back()->ok());
    }
    // Every connection is open before any request is sent: 200 at once.
    for (auto& c : conns)
        REQUIRE(c->send("GET /server_info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
    int answered = 0;
    for (auto& c : conns) {
        auto resp = c->read_all(20s, 64 * 1024);
        if (p2prc_test::status_of(resp) == 200 && nlohmann::json::accept(p2prc_test::body_of(resp)))
            ++answered;
    }
    CHECK(answered == kClients);
    CHECK(s.stats().connections >= kClients);
    CHECK(get_ok(s.port()));
}

TEST_CASE("abuse: a client sending one byte a second is cut, and others are served meanwhile") {
    auto o = loopback();
    o.worker_threads = 2;
    o.read_timeout = 5s;  // per receive: a byte a second never trips it
    o.header_timeout = 1500ms;
    o.overload_idle_timeout = 60s;  // only the header timeout may cut it here
    p2prc::Server s(o);
    s.start();

    p2prc_test::RawConn slow(s.port());
    REQUIRE(slow.ok());
    std::atomic<bool> slow_cut{false};
    Clock::time_point cut_at{};
    const auto t0 = Clock::now();
    std::thread trickler([&] {
        const std::string request =
            "GET /server_info HTTP/1.1\r\nHost: x\r\nX-Pad: aaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        for (std::size_t i = 0; i < request.size() && i < 20; ++i) {  // at most 20 s
            if (!slow.send(request.substr(i, 1))) break;
            // The server cuts the connection: reading sees EOF (or a reset).
            auto got = slow.read_all(1000ms, 4096);
            if (slow.peer_closed()) break;
            (void)got;
        }
        cut_at = Clock::now();
        slow_cut = slow.peer_closed();
    });

    // While the trickler holds its connection, others are answered.
    int served = 0;
    while (!slow_cut && Clock::now() - t0 < 1200ms) {
        if (get_ok(s.port())) ++served;
        std::this_thread::sleep_for(50ms);
    }
    trickler.join();
    CHECK(served >= 5);
    CHECK(slow_cut);
    const auto held = cut_at - t0;
    CHECK(held >= 1400ms);  // not before the header timeout
    CHECK(held < 4s);       // but soon after it
    CHECK(s.stats().header_timeouts >= 1);
    CHECK(get_ok(s.port()));
}

TEST_CASE("abuse: a body trickled a byte a second is cut by the request timeout") {
    auto o = loopback();
    o.worker_threads = 2;
    o.read_timeout = 5s;
    o.request_timeout = 1500ms;
    p2prc::Server s(o);
    s.start();
    p2prc_test::RawConn slow(s.port());
    REQUIRE(slow.ok());
    REQUIRE(slow.send("POST /speedtest/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"));
    const auto t0 = Clock::now();
    for (int i = 0; i < 10 && !slow.peer_closed(); ++i) {
        if (!slow.send("z")) break;
        slow.read_all(500ms, 4096);
    }
    CHECK(slow.peer_closed());
    CHECK(Clock::now() - t0 < 4s);
    CHECK(s.stats().request_timeouts >= 1);
}

TEST_CASE("abuse: stop() under load returns promptly") {
    auto o = loopback();
    o.worker_threads = 8;
    o.read_timeout = 30s;
    o.write_timeout = 30s;
    o.keep_alive_timeout = 30s;
    o.max_download_bytes = 1u << 30;
    auto s = std::make_unique<p2prc::Server>(o);
    s->start();
    const auto port = s->port();

    std::atomic<bool> quit{false};
    std::atomic<int> requests{0};
    std::vector<std::thread> clients;
    for (int i = 0; i < 12; ++i) {
        clients.emplace_back([&, i] {
            httplib::Client c("127.0.0.1", port);
            c.set_connection_timeout(1, 0);
            c.set_read_timeout(5, 0);
            c.set_keep_alive(true);
            for (int n = 0; n < 10000 && !quit; ++n) {
                // Half download big bodies (slowly: they read little at a time), half chat.
                auto r = i % 2 ? c.Get("/speedtest/download?bytes=1000000000",
                                       [&](const char*, size_t) {
                                           std::this_thread::sleep_for(1ms);
                                           return !quit.load();
                                       })
                               : c.Get("/server_info");
                if (r)
                    ++requests;
                else if (quit)
                    break;
            }
        });
    }
    // Idle and trickling connections too.
    std::vector<std::unique_ptr<p2prc_test::RawConn>> idle;
    for (int i = 0; i < 20; ++i) idle.push_back(std::make_unique<p2prc_test::RawConn>(port));
    idle[0]->send("GET /server_info HTTP/1.1\r\nHo");
    std::this_thread::sleep_for(500ms);
    CHECK(requests > 0);

    const auto t0 = Clock::now();
    s->stop();
    const auto took = Clock::now() - t0;
    CHECK(took < 3s);
    CHECK_FALSE(s->running());
    quit = true;
    for (auto& t : clients) t.join();
    // Nothing listens any more.
    p2prc_test::RawConn after(port);
    CHECK_FALSE(after.ok());
}

TEST_CASE("abuse: connections that open and send nothing hold no worker") {
    auto o = loopback();
    o.worker_threads = 2;
    o.header_timeout = 20s;  // the test ends long before: the gate, not the timeout, matters
    p2prc::Server s(o);
    s.start();
    std::vector<std::unique_ptr<p2prc_test::RawConn>> idle;
    for (int i = 0; i < 30; ++i) {
        idle.push_back(std::make_unique<p2prc_test::RawConn>(s.port()));
        REQUIRE(idle.back()->ok());
    }
    std::this_thread::sleep_for(100ms);
    // 30 silent connections, 2 workers: requests are still answered (within the client's
    // 3 s, far below the 20 s header timeout that would free a held worker).
    for (int i = 0; i < 5; ++i) CHECK(get_ok(s.port()));
    CHECK(s.open_connections() >= 30);
    CHECK(s.stats().header_timeouts == 0);
}

TEST_CASE("abuse: under load, idle keep-alive connections give their worker to waiting ones") {
    auto o = loopback();
    o.worker_threads = 2;
    o.keep_alive_timeout = 20s;
    o.overload_idle_timeout = 200ms;
    p2prc::Server s(o);
    s.start();
    // Two kept-alive clients take both workers and then sit idle.
    httplib::Client a("127.0.0.1", s.port()), b("127.0.0.1", s.port());
    a.set_keep_alive(true);
    b.set_keep_alive(true);
    REQUIRE(a.Get("/server_info"));
    REQUIRE(b.Get("/server_info"));
    // A third is served once an idle one is let go, not after the 20 s keep-alive.
    CHECK(get_ok(s.port()));
    CHECK(s.stats().overload_cuts >= 1);
    // The kept-alive clients reconnect transparently.
    auto again = a.Get("/server_info");
    REQUIRE(again);
    CHECK(again->status == 200);
}

TEST_CASE("abuse: an endless request line is cut at the header bound, not read forever") {
    auto o = loopback();
    o.max_header_bytes = 16 * 1024;
    o.header_timeout = 20s;
    p2prc::Server s(o);
    s.start();
    p2prc_test::RawConn c(s.port());
    REQUIRE(c.ok());
    c.send("GET /");
    const std::string junk(64 * 1024, 'a');
    // At most 64 MiB, stopping as soon as the server closes.
    bool closed = false;
    for (int i = 0; i < 1024 && !closed; ++i) {
        if (!c.send(junk)) closed = true;
        if (i % 16 == 15) {
            c.read_all(std::chrono::milliseconds(20), 4096);
            closed = closed || c.peer_closed();
        }
    }
    CHECK(closed);
    CHECK(s.stats().header_overflows == 1);
    CHECK(get_ok(s.port()));
}
