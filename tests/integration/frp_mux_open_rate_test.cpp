// MuxConfig::max_opens_per_second: a peer that opens streams faster than allowed gets RST
// for the surplus, the streams within the budget work, and the budget refills.
#include <p2prc.hpp>

#include "support/loopback.hpp"

#include <doctest/doctest.h>

#include <memory>
#include <thread>
#include <vector>

using namespace p2prc::frp;
using namespace std::chrono_literals;

namespace {

// Streams the server accepts until none comes for 300 ms (at most 2 s).
std::vector<std::unique_ptr<MuxStream>> accept_all(MuxSession& s) {
    std::vector<std::unique_ptr<MuxStream>> out;
    const auto end = std::chrono::steady_clock::now() + 2s;
    while (std::chrono::steady_clock::now() < end) {
        auto st = s.accept(300ms);
        if (!st) break;
        out.push_back(std::move(st));
    }
    return out;
}

}  // namespace

TEST_CASE("mux: streams opened beyond max_opens_per_second are reset; the budget refills") {
    auto tcp = p2prc_test::tcp_pair();
    MuxConfig quiet;
    quiet.keepalive_interval = 0ms;
    MuxConfig limited = quiet;
    limited.max_opens_per_second = 10;
    MuxSession client{tcp.client, MuxRole::client, quiet};
    MuxSession server{tcp.server, MuxRole::server, limited};

    std::vector<std::unique_ptr<MuxStream>> opened;
    for (int i = 0; i < 40; ++i) {
        opened.push_back(client.open(2000ms));
        try {
            opened.back()->write_all("x", 1, 2000ms);
        } catch (const p2prc::error&) {
            // already reset by the server: one of the surplus
        }
    }
    auto accepted = accept_all(server);
    // A full bucket (10) and what refilled while the 40 went out: far below 40 unless
    // opening them took seconds.
    CHECK(accepted.size() >= 10);
    CHECK(accepted.size() <= 30);
    CHECK(server.refused_opens() == 40 - accepted.size());
    // The accepted ones carry their byte.
    for (auto& s : accepted) {
        char c = 0;
        REQUIRE(s->read_some(&c, 1, 2000ms) == 1);
        CHECK(c == 'x');
    }
    // A refused one reads as reset on the client side.
    bool some_reset = false;
    for (auto& s : opened) {
        char c;
        try {
            s->read_some(&c, 1, 50ms);
        } catch (const p2prc::error& e) {
            if (e.code() != p2prc::errc::timeout) some_reset = true;
        }
    }
    CHECK(some_reset);
    CHECK_FALSE(server.closed());

    // A second later the budget is back.
    std::this_thread::sleep_for(1100ms);
    std::vector<std::unique_ptr<MuxStream>> more;
    for (int i = 0; i < 5; ++i) more.push_back(client.open(2000ms));
    CHECK(accept_all(server).size() == 5);
}
