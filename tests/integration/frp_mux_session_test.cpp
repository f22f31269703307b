// Two yamux sessions on a loopback TCP pair: concurrency, flow control, close semantics.
#include <p2prc.hpp>

#include "support/loopback.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <thread>
#include <vector>

using namespace p2prc::frp;
using namespace std::chrono_literals;
using p2prc::detail::Clock;

namespace {

MuxConfig quiet() {
    MuxConfig c;
    c.keepalive_interval = p2prc::detail::Millis(0);
    return c;
}

struct SessionPair {
    p2prc_test::TcpPair tcp = p2prc_test::tcp_pair();
    MuxSession client{tcp.client, MuxRole::client, quiet()};
    MuxSession server{tcp.server, MuxRole::server, quiet()};
};

// Deterministic bytes for (stream, direction, offset).
inline char pattern(std::uint32_t id, int dir, std::size_t i) {
    return char((id * 131u + unsigned(dir) * 17u + i * 7u + (i >> 13)) & 0xff);
}

void send_pattern(p2prc::detail::Stream& s, std::uint32_t id, int dir, std::size_t total) {
    std::vector<char> buf(48 * 1024 + 13);  // odd size: frames and reads never line up
    std::size_t sent = 0;
    while (sent < total) {
        std::size_t k = std::min(buf.size(), total - sent);
        for (std::size_t i = 0; i < k; ++i) buf[i] = pattern(id, dir, sent + i);
        s.write_all(buf.data(), k, 20s);
        sent += k;
    }
}

// Returns the number of bytes that matched before the first mismatch or end of stream.
std::size_t check_pattern(p2prc::detail::Stream& s, std::uint32_t id, int dir, std::size_t total) {
    std::vector<char> buf(37 * 1024);
    std::size_t got = 0;
    while (got < total) {
        std::size_t k = s.read_some(buf.data(), std::min(buf.size(), total - got), 20s);
        if (k == 0) return got;
        for (std::size_t i = 0; i < k; ++i)
            if (buf[i] != pattern(id, dir, got + i)) return got + i;
        got += k;
    }
    return got;
}

}  // namespace

TEST_CASE("mux: open, accept, bytes both ways, odd ids from the client") {
    SessionPair p;
    auto a = p.client.open(2s);
    auto b = p.client.open(2s);
    CHECK(a->id() == 1);
    CHECK(b->id() == 3);
    auto sa = p.server.accept(2s);
    auto sb = p.server.accept(2s);
    REQUIRE(sa);
    REQUIRE(sb);
    CHECK(sa->id() == 1);
    CHECK(sb->id() == 3);
    a->write_all("ping", 4, 1s);
    char buf[8];
    sa->read_exact(buf, 4, 1s);
    CHECK(std::string(buf, 4) == "ping");
    sb->write_all("pong!", 5, 1s);
    b->read_exact(buf, 5, 1s);
    CHECK(std::string(buf, 5) == "pong!");
    CHECK(p.server.accept(50ms) == nullptr);
    // The server may open streams too (even ids), though frps never does.
    auto s2 = p.server.open(2s);
    CHECK(s2->id() == 2);
    auto c2 = p.client.accept(2s);
    REQUIRE(c2);
    CHECK(c2->id() == 2);
}

TEST_CASE("mux: 100 streams x 1 MiB in both directions at once, byte-exact") {
    constexpr int kStreams = 100;
    constexpr std::size_t kBytes = 1 << 20;
    SessionPair p;
    std::vector<std::unique_ptr<MuxStream>> cs, ss;
    for (int i = 0; i < kStreams; ++i) cs.push_back(p.client.open(5s));
    for (int i = 0; i < kStreams; ++i) {
        auto s = p.server.accept(5s);
        REQUIRE(s);
        ss.push_back(std::move(s));
    }
    std::atomic<int> ok{0};
    std::atomic<int> failures{0};
    std::mutex first_error_mu;
    std::string first_error;
    std::vector<std::thread> threads;
    auto t0 = Clock::now();
    for (int i = 0; i < kStreams; ++i) {
        auto* c = cs[i].get();
        auto* s = ss[i].get();
        auto guarded = [&](auto f) {
            return [&, f] {
                try {
                    f();
                } catch (const std::exception& e) {
                    if (failures++ == 0) {
                        std::lock_guard<std::mutex> lk(first_error_mu);
                        first_error = e.what();
                    }
                }
            };
        };
        threads.emplace_back(guarded([=] { send_pattern(*c, c->id(), 0, kBytes); }));
        threads.emplace_back(guarded([=] { send_pattern(*s, s->id(), 1, kBytes); }));
        threads.emplace_back(guarded([=, &ok] {
            if (check_pattern(*s, s->id(), 0, kBytes) == kBytes) ++ok;
        }));
        threads.emplace_back(guarded([=, &ok] {
            if (check_pattern(*c, c->id(), 1, kBytes) == kBytes) ++ok;
        }));
    }
    for (auto& t : threads) t.join();
    auto secs = std::chrono::duration<double>(Clock::now() - t0).count();
    MESSAGE("200 MiB over 100 streams in " << secs << " s");
    CHECK_MESSAGE(failures.load() == 0, first_error);
    CHECK(ok.load() == 2 * kStreams);
    CHECK_FALSE(p.client.closed());
    CHECK_FALSE(p.server.closed());
}

TEST_CASE("mux: a stream whose reader stops does not stall the others") {
    SessionPair p;
    auto stuck = p.client.open(2s);
    auto live = p.client.open(2s);
    auto stuck_s = p.server.accept(2s);
    auto live_s = p.server.accept(2s);
    REQUIRE(stuck_s);
    REQUIRE(live_s);
    // Nobody reads stuck_s: its writer fills the 256 KiB window and then blocks.
    std::string big(1 << 20, 'x');
    try {
        stuck->write_all(big.data(), big.size(), 500ms);
        FAIL("a write beyond the window should not complete while nobody reads");
    } catch (const p2prc::error& e) {
        CHECK(e.code() == p2prc::errc::timeout);
    }
    // The other stream still moves 4 MiB.
    std::thread w([&] { send_pattern(*live, live->id(), 0, 4 << 20); });
    CHECK(check_pattern(*live_s, live_s->id(), 0, 4 << 20) == std::size_t(4 << 20));
    w.join();
    // Exactly one window's worth is buffered on the stuck stream; then reading it frees
    // the writer.
    std::vector<char> buf(yamux::kInitialWindow);
    stuck_s->read_exact(buf.data(), buf.size(), 2s);
    char c;
    CHECK_THROWS_AS(stuck_s->read_some(&c, 1, 100ms), p2prc::error);  // nothing more yet
    std::thread w2([&] { stuck->write_all(big.data(), 1000, 2s); });
    stuck_s->read_exact(buf.data(), 1000, 2s);
    w2.join();
    CHECK_FALSE(p.client.closed());
}

TEST_CASE("mux: FIN half-close and RST") {
    SessionPair p;
    auto c = p.client.open(2s);
    auto s = p.server.accept(2s);
    REQUIRE(s);
    c->write_all("request", 7, 1s);
    c->shutdown_write();
    char buf[16];
    s->read_exact(buf, 7, 1s);
    CHECK(std::string(buf, 7) == "request");
    CHECK(s->read_some(buf, sizeof buf, 1s) == 0);  // end of stream after the data
    CHECK(s->read_some(buf, sizeof buf, 1s) == 0);
    // The other direction is still open.
    s->write_all("response", 8, 1s);
    CHECK_THROWS_AS(c->write_all("x", 1, 1s), p2prc::error);  // we sent FIN
    c->read_exact(buf, 8, 1s);
    CHECK(std::string(buf, 8) == "response");
    s->shutdown_write();
    CHECK(c->read_some(buf, sizeof buf, 1s) == 0);
    // Both FINs exchanged: the stream leaves both tables.
    for (int i = 0; i < 100 && (p.client.stream_count() || p.server.stream_count()); ++i)
        std::this_thread::sleep_for(10ms);
    CHECK(p.client.stream_count() == 0);
    CHECK(p.server.stream_count() == 0);

    auto c2 = p.client.open(2s);
    auto s2 = p.server.accept(2s);
    REQUIRE(s2);
    c2->write_all("abc", 3, 1s);
    s2->read_exact(buf, 3, 1s);
    // A reader blocked on the other side wakes with an error when we reset.
    std::atomic<bool> reset_seen{false};
    std::thread r([&] {
        try {
            c2->read_some(buf, 1, 5s);
        } catch (const p2prc::error& e) {
            reset_seen = e.code() == p2prc::errc::io_error;
        }
    });
    std::this_thread::sleep_for(50ms);
    s2->reset();
    r.join();
    CHECK(reset_seen.load());
    CHECK_THROWS_WITH_AS(c2->write_all("x", 1, 1s), doctest::Contains("reset"), p2prc::error);
    CHECK_FALSE(p.client.closed());
}

TEST_CASE("mux: close() from another thread wakes a blocked read; a closed stream refuses") {
    SessionPair p;
    auto c = p.client.open(2s);
    auto s = p.server.accept(2s);
    REQUIRE(s);
    std::atomic<bool> woke{false};
    std::thread r([&] {
        char b;
        try {
            c->read_some(&b, 1, 10s);
        } catch (const p2prc::error& e) {
            woke = e.code() == p2prc::errc::state_error;
        }
    });
    std::this_thread::sleep_for(50ms);
    auto t0 = Clock::now();
    c->close();
    r.join();
    CHECK(woke.load());
    CHECK(Clock::now() - t0 < 2s);
    // The peer sees end of stream.
    char b;
    CHECK(s->read_some(&b, 1, 1s) == 0);
}

TEST_CASE("mux: the peer vanishing mid-transfer fails every stream promptly") {
    constexpr int kStreams = 8;
    p2prc_test::TcpPair tcp = p2prc_test::tcp_pair();
    auto client = std::make_unique<MuxSession>(tcp.client, MuxRole::client, quiet());
    auto server = std::make_unique<MuxSession>(tcp.server, MuxRole::server, quiet());
    std::vector<std::unique_ptr<MuxStream>> cs, ss;
    for (int i = 0; i < kStreams; ++i) cs.push_back(client->open(2s));
    for (int i = 0; i < kStreams; ++i) ss.push_back(server->accept(2s));
    std::atomic<int> failed{0};
    std::vector<std::thread> th;
    for (int i = 0; i < kStreams; ++i) {
        // Half the streams block writing (nobody reads on the server), half block reading.
        auto* c = cs[i].get();
        th.emplace_back([c, i, &failed] {
            try {
                if (i % 2) {
                    std::string big(4 << 20, 'z');
                    c->write_all(big.data(), big.size(), 30s);
                } else {
                    char b[64];
                    while (c->read_some(b, sizeof b, 30s) > 0) {
                    }
                }
            } catch (const p2prc::error& e) {
                if (e.code() == p2prc::errc::io_error) ++failed;
            }
        });
    }
    std::this_thread::sleep_for(200ms);
    auto t0 = Clock::now();
    // The server goes away without a word: its transport is closed under it.
    tcp.server->close();
    for (auto& t : th) t.join();
    auto took = Clock::now() - t0;
    CHECK(failed.load() == kStreams);
    CHECK(took < 5s);
    CHECK(client->closed());
    CHECK_FALSE(client->close_reason().empty());
    // A stream that outlives its session fails cleanly too.
    client.reset();
    CHECK_THROWS_AS(cs[0]->write_all("x", 1, 100ms), p2prc::error);
    CHECK_THROWS_AS(p2prc::frp::MuxSession(tcp.client, MuxRole::client, quiet()).open(1s),
                    p2prc::error);
}

TEST_CASE("mux: keepalive closes a session whose peer stops answering") {
    // The peer accepts the TCP connection but never speaks yamux (never answers pings).
    p2prc_test::TcpPair tcp = p2prc_test::tcp_pair();
    MuxConfig cfg;
    cfg.keepalive_interval = p2prc::detail::Millis(100);
    cfg.ping_timeout = p2prc::detail::Millis(300);
    MuxSession s(tcp.client, MuxRole::client, cfg);
    auto st = s.open(1s);
    auto t0 = Clock::now();
    char b;
    CHECK_THROWS_AS(st->read_some(&b, 1, 10s), p2prc::error);
    CHECK(Clock::now() - t0 < 5s);
    CHECK(s.closed());
    CHECK(s.close_reason().find("ping") != std::string::npos);
}

TEST_CASE("mux: pings answered; GoAway stops new streams only") {
    SessionPair p;
    auto rtt = p.client.ping(2s);
    REQUIRE(rtt);
    CHECK(rtt->count() < 2000);
    CHECK(p.server.ping(2s));
    auto c = p.client.open(2s);
    auto s = p.server.accept(2s);
    REQUIRE(s);
    p.server.go_away();
    // Once the GoAway arrived, open() refuses; the existing stream keeps working.
    bool refused = false;
    for (int i = 0; i < 100 && !refused; ++i) {
        try {
            auto extra = p.client.open(1s);
            std::this_thread::sleep_for(10ms);
        } catch (const p2prc::error& e) {
            refused = e.code() == p2prc::errc::state_error;
        }
    }
    CHECK(refused);
    c->write_all("still", 5, 1s);
    char buf[5];
    s->read_exact(buf, 5, 1s);
    CHECK(std::string(buf, 5) == "still");
}
