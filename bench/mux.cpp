// Throughput of yamux on loopback against the raw TCP connection, in the same run:
//   raw TCP, one connection; yamux, one stream; yamux, 8 streams sharing the session.
// Each case moves a fixed byte budget one way (after a discarded warm-up) and prints
// MB/s; ratios are yamux / raw. Figures only: nothing passes or fails on speed.
// MAX_FRAME=<bytes> in the environment overrides MuxConfig::max_frame, to compare.
#include <p2prc.hpp>

#include "support/loopback.hpp"

#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using p2prc::detail::Clock;
using p2prc::detail::Stream;

namespace {

constexpr std::size_t kBuf = 64 * 1024;

void pump(Stream& w, std::size_t bytes) {
    std::vector<char> buf(kBuf, 'b');
    for (std::size_t sent = 0; sent < bytes;) {
        std::size_t k = std::min(kBuf, bytes - sent);
        w.write_all(buf.data(), k, 30s);
        sent += k;
    }
}

void drain(Stream& r, std::size_t bytes) {
    std::vector<char> buf(kBuf);
    for (std::size_t got = 0; got < bytes;) {
        std::size_t k = r.read_some(buf.data(), std::min(kBuf, bytes - got), 30s);
        if (k == 0) throw std::runtime_error("unexpected end of stream");
        got += k;
    }
}

// Moves `total` bytes split over the (writer, reader) pairs once; returns MB/s.
double run_once(const std::vector<std::pair<Stream*, Stream*>>& pairs, std::size_t total) {
    std::size_t each = total / pairs.size();
    std::vector<std::thread> th;
    auto t0 = Clock::now();
    for (auto [w, r] : pairs) {
        th.emplace_back([w = w, each] { pump(*w, each); });
        th.emplace_back([r = r, each] { drain(*r, each); });
    }
    for (auto& t : th) t.join();
    double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    return double(each * pairs.size()) / secs / 1e6;
}

}  // namespace

int main() {
    constexpr std::size_t kTotal = 256u << 20;
    auto tcp = p2prc_test::tcp_pair();
    std::vector<std::pair<Stream*, Stream*>> raw_pair{{tcp.client.get(), tcp.server.get()}};

    auto carrier = p2prc_test::tcp_pair();
    p2prc::frp::MuxConfig cfg;
    if (const char* f = std::getenv("MAX_FRAME")) cfg.max_frame = std::uint32_t(std::atoi(f));
    p2prc::frp::MuxSession client(carrier.client, p2prc::frp::MuxRole::client, cfg);
    p2prc::frp::MuxSession server(carrier.server, p2prc::frp::MuxRole::server, cfg);
    std::vector<std::unique_ptr<p2prc::frp::MuxStream>> cs, ss;
    for (int i = 0; i < 8; ++i) cs.push_back(client.open(2s));
    for (int i = 0; i < 8; ++i) ss.push_back(server.accept(2s));
    std::vector<std::pair<Stream*, Stream*>> one_pair{{cs[0].get(), ss[0].get()}}, eight;
    for (int i = 0; i < 8; ++i) eight.emplace_back(cs[i].get(), ss[i].get());

    // Warm-up (discarded), then rounds that interleave the cases so that a change in the
    // machine's load hits all three alike; each case keeps its best round.
    for (auto* c : {&raw_pair, &one_pair, &eight}) run_once(*c, kTotal / 16);
    double raw = 0, one = 0, many = 0;
    for (int round = 0; round < 3; ++round) {
        raw = std::max(raw, run_once(raw_pair, kTotal));
        one = std::max(one, run_once(one_pair, kTotal));
        many = std::max(many, run_once(eight, kTotal));
    }

    std::printf("bench_mux: %zu MiB per run, best of 3 interleaved rounds, loopback, one way\n",
                kTotal >> 20);
    std::printf("  raw TCP, 1 connection : %8.1f MB/s\n", raw);
    std::printf("  yamux, 1 stream       : %8.1f MB/s  (%.2f x raw)\n", one, one / raw);
    std::printf("  yamux, 8 streams      : %8.1f MB/s  (%.2f x raw)\n", many, many / raw);
    return 0;
}
