// Throughput of yamux on loopback against the raw TCP connection, in the same run:
//   raw TCP, one connection; yamux, one stream; yamux, 8 streams sharing the session.
// Each case moves a fixed byte budget one way (after a discarded warm-up) and prints
// MB/s; ratios are yamux / raw. Figures only: nothing passes or fails on speed.
#include <p2prc.hpp>

#include "support/loopback.hpp"

#include <cstdio>
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

// Moves `total` bytes split over the (writer, reader) pairs; returns MB/s.
double run(const std::vector<std::pair<Stream*, Stream*>>& pairs, std::size_t total) {
    std::size_t each = total / pairs.size();
    auto once = [&](std::size_t n) {
        std::vector<std::thread> th;
        auto t0 = Clock::now();
        for (auto [w, r] : pairs) {
            th.emplace_back([w = w, n] { pump(*w, n); });
            th.emplace_back([r = r, n] { drain(*r, n); });
        }
        for (auto& t : th) t.join();
        return std::chrono::duration<double>(Clock::now() - t0).count();
    };
    once(std::max<std::size_t>(each / 16, 1 << 20));  // warm-up, discarded
    double best = 0;
    for (int i = 0; i < 3; ++i) {
        double secs = once(each);
        best = std::max(best, double(each * pairs.size()) / secs / 1e6);
    }
    return best;
}

}  // namespace

int main() {
    constexpr std::size_t kTotal = 256u << 20;
    auto tcp = p2prc_test::tcp_pair();
    double raw = run({{tcp.client.get(), tcp.server.get()}}, kTotal);

    auto carrier = p2prc_test::tcp_pair();
    p2prc::frp::MuxConfig cfg;
    p2prc::frp::MuxSession client(carrier.client, p2prc::frp::MuxRole::client, cfg);
    p2prc::frp::MuxSession server(carrier.server, p2prc::frp::MuxRole::server, cfg);
    std::vector<std::unique_ptr<p2prc::frp::MuxStream>> cs, ss;
    for (int i = 0; i < 8; ++i) cs.push_back(client.open(2s));
    for (int i = 0; i < 8; ++i) ss.push_back(server.accept(2s));
    double one = run({{cs[0].get(), ss[0].get()}}, kTotal);
    std::vector<std::pair<Stream*, Stream*>> eight;
    for (int i = 0; i < 8; ++i) eight.emplace_back(cs[i].get(), ss[i].get());
    double many = run(eight, kTotal);

    std::printf("bench_mux: %zu MiB per case, best of 3, loopback, one direction\n",
                kTotal >> 20);
    std::printf("  raw TCP, 1 connection : %8.1f MB/s\n", raw);
    std::printf("  yamux, 1 stream       : %8.1f MB/s  (%.2f x raw)\n", one, one / raw);
    std::printf("  yamux, 8 streams      : %8.1f MB/s  (%.2f x raw)\n", many, many / raw);
    return 0;
}
