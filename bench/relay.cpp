// The relay on loopback against direct loopback, in the same run:
//   throughput with 1 and 8 connections (a fixed byte budget one way, best of 3), and the
//   round-trip time of 64-byte request/response exchanges (median and p99), through
//   p2prc::frp::Server + p2prc::frp::Client with tcp_mux on and off; then the resident
//   memory the relay adds while holding 1000 idle tunnelled connections.
// When FRP_BIN_DIR names a folder with stock frps and frpc, the same throughput and RTT runs
// go through them too. Figures only: nothing passes or fails on speed.
// Environment: BENCH_MIB (throughput budget per run, default 256), BENCH_IDLE (idle
// connections, default 1000), BENCH_PINGS (exchanges, default 2000).
#include <p2prc.hpp>

#include "support/process.hpp"
#include "support/tempdir.hpp"

#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using p2prc::Endpoint;
using p2prc::IpAddress;
using p2prc::detail::Clock;
using p2prc::detail::Millis;
using p2prc::detail::Stream;
using p2prc::detail::TcpConnection;
using p2prc::detail::TcpListener;

namespace {

constexpr std::size_t kBuf = 64 * 1024;
constexpr std::size_t kPing = 64;
constexpr std::uint64_t kMaxSink = 1ull << 32;  // bound on a sink request's length
constexpr Millis kIo = 30000ms;                 // every read/write in a run

Endpoint loopback(std::uint16_t port = 0) {
    return Endpoint{IpAddress::from_string("127.0.0.1"), port};
}

std::size_t env_size(const char* name, std::size_t def, std::size_t lo, std::size_t hi) {
    const char* v = std::getenv(name);
    if (!v || !*v) return def;
    char* end = nullptr;
    unsigned long long n = std::strtoull(v, &end, 10);
    if (*end || n < lo || n > hi) {
        std::fprintf(stderr, "%s=%s ignored: expected %zu..%zu\n", name, v, lo, hi);
        return def;
    }
    return std::size_t(n);
}

// The in-process service. Every connection carries requests, each a mode byte:
//   'S' + 8-byte big-endian length + that many bytes -> one byte 'k' once all arrived (sink)
//   'P' + 64 bytes -> the same 64 bytes (ping)
// A connection that says nothing stays open (idle) until its peer closes or 60 s pass.
class Service {
  public:
    Service() : listener_(loopback(), 1024), tasks_(4096) {
        thread_ = std::thread([this] {
            while (!stop_.load()) {
                std::unique_ptr<TcpConnection> c;
                try {
                    c = listener_.accept(200ms);
                } catch (const p2prc::error&) {
                    return;
                }
                if (!c) continue;
                std::shared_ptr<Stream> conn(std::move(c));
                auto id = live_.add(conn);
                if (!tasks_.spawn([this, conn, id] {
                        ++open_;
                        serve(*conn);
                        --open_;
                        live_.remove(id);
                    })) {
                    live_.remove(id);
                    conn->close();
                }
            }
        });
    }
    ~Service() {
        stop_.store(true);
        listener_.close();
        thread_.join();
        live_.close_all();
        tasks_.join_all();
    }
    Endpoint endpoint() const { return listener_.local_endpoint(); }
    int open_connections() const { return open_.load(); }

  private:
    static void serve(Stream& s) {
        std::vector<char> buf(kBuf);
        try {
            for (;;) {
                char mode = 0;
                if (s.read_some(&mode, 1, 60000ms) == 0) return;
                if (mode == 'S') {
                    unsigned char len[8];
                    s.read_exact(len, 8, kIo);
                    std::uint64_t n = 0;
                    for (unsigned char b : len) n = (n << 8) | b;
                    if (n > kMaxSink) return;
                    for (std::uint64_t got = 0; got < n;) {
                        std::size_t k = s.read_some(
                            buf.data(), std::size_t(std::min<std::uint64_t>(kBuf, n - got)),
                            kIo);
                        if (k == 0) return;
                        got += k;
                    }
                    s.write_all("k", 1, kIo);
                } else if (mode == 'P') {
                    s.read_exact(buf.data(), kPing, kIo);
                    s.write_all(buf.data(), kPing, kIo);
                } else {
                    return;
                }
            }
        } catch (const p2prc::error&) {
        }
    }

    TcpListener listener_;
    p2prc::frp::detail::StreamRegistry live_;
    p2prc::frp::detail::TaskGroup tasks_;
    std::atomic<bool> stop_{false};
    std::atomic<int> open_{0};
    std::thread thread_;
};

// Sends `bytes` as one sink request and waits for the acknowledgement.
void sink(Stream& s, std::size_t bytes) {
    unsigned char head[9] = {'S'};
    for (int i = 0; i < 8; ++i) head[1 + i] = (std::uint64_t(bytes) >> (56 - 8 * i)) & 0xff;
    s.write_all(head, sizeof head, kIo);
    std::vector<char> buf(kBuf, 'b');
    for (std::size_t sent = 0; sent < bytes;) {
        std::size_t k = std::min(kBuf, bytes - sent);
        s.write_all(buf.data(), k, kIo);
        sent += k;
    }
    char ack = 0;
    s.read_exact(&ack, 1, kIo);
    if (ack != 'k') throw p2prc::error(p2prc::errc::protocol_error, "bad sink acknowledgement");
}

// MB/s of `total` bytes split over `conns` connections to `at`, best of `reps`; 0 on failure.
double throughput(const Endpoint& at, std::size_t conns, std::size_t total, int reps) {
    double best = 0;
    for (int r = 0; r < reps; ++r) {
        std::vector<std::unique_ptr<TcpConnection>> cs;
        for (std::size_t i = 0; i < conns; ++i) cs.push_back(TcpConnection::connect(at, 5000ms));
        // A small request first, so that tunnels are set up before the clock starts.
        for (auto& c : cs) sink(*c, 1);
        std::size_t each = total / conns;
        std::atomic<bool> failed{false};
        std::vector<std::thread> th;
        auto t0 = Clock::now();
        for (auto& c : cs)
            th.emplace_back([&failed, each, conn = c.get()] {
                try {
                    sink(*conn, each);
                } catch (const p2prc::error& e) {
                    if (!failed.exchange(true)) std::fprintf(stderr, "  sink: %s\n", e.what());
                }
            });
        for (auto& t : th) t.join();
        double secs = std::chrono::duration<double>(Clock::now() - t0).count();
        if (failed) return 0;
        best = std::max(best, double(each * conns) / secs / 1e6);
    }
    return best;
}

struct Rtt {
    double median_us = 0, p99_us = 0;
};

Rtt round_trips(const Endpoint& at, std::size_t n) {
    auto c = TcpConnection::connect(at, 5000ms);
    char req[1 + kPing], resp[kPing];
    req[0] = 'P';
    for (std::size_t i = 0; i < kPing; ++i) req[1 + i] = char(i);
    auto once = [&] {
        c->write_all(req, sizeof req, kIo);
        c->read_exact(resp, kPing, kIo);
    };
    for (int i = 0; i < 50; ++i) once();  // warm-up, discarded
    std::vector<double> us;
    us.reserve(n);
    for (std::size_t i = 0; i < n; ++i) {
        auto t0 = Clock::now();
        once();
        us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    }
    std::sort(us.begin(), us.end());
    return {us[us.size() / 2], us[std::min(us.size() - 1, us.size() * 99 / 100)]};
}

struct Figures {
    double mb1 = 0, mb8 = 0;
    Rtt rtt;
};

Figures measure(const Endpoint& at, std::size_t total, std::size_t pings) {
    Figures f;
    f.mb1 = throughput(at, 1, total, 3);
    f.mb8 = throughput(at, 8, total, 3);
    f.rtt = round_trips(at, pings);
    return f;
}

void print_figures(const char* label, const Figures& f, const Figures* direct) {
    std::printf("%-22s 1 conn %8.1f MB/s   8 conns %8.1f MB/s   rtt median %7.1f us  p99 %7.1f us\n",
                label, f.mb1, f.mb8, f.rtt.median_us, f.rtt.p99_us);
    if (direct && direct->mb1 > 0 && direct->mb8 > 0)
        std::printf("%-22s ratio vs direct: 1 conn %.2f   8 conns %.2f   rtt median %.2f  p99 %.2f\n",
                    "", f.mb1 / direct->mb1, f.mb8 / direct->mb8,
                    f.rtt.median_us / direct->rtt.median_us, f.rtt.p99_us / direct->rtt.p99_us);
}

long vm_rss_kb() {
    std::ifstream in("/proc/self/status");
    std::string line;
    for (int i = 0; i < 200 && std::getline(in, line); ++i)
        if (line.rfind("VmRSS:", 0) == 0) return std::atol(line.c_str() + 6);
    return -1;
}

// Waits (bounded) until the service holds `n` connections.
bool wait_open(const Service& svc, int n, Millis limit) {
    auto end = Clock::now() + limit;
    while (svc.open_connections() != n) {
        if (Clock::now() > end) return false;
        std::this_thread::sleep_for(20ms);
    }
    return true;
}

// Opens `n` idle connections to `at`; returns the VmRSS growth (kB) while they are held
// (each reached the service), or -1 when they did not all get through in time.
long idle_rss_delta(const Service& svc, const Endpoint& at, std::size_t n) {
    int base_open = svc.open_connections();
    long before = vm_rss_kb();
    long delta = -1;
    {
        std::vector<std::unique_ptr<TcpConnection>> cs;
        auto end = Clock::now() + 30s;
        try {
            for (std::size_t i = 0; i < n && Clock::now() < end; ++i)
                cs.push_back(TcpConnection::connect(at, 5000ms));
        } catch (const p2prc::error& e) {
            std::fprintf(stderr, "  idle connect %zu: %s\n", cs.size(), e.what());
        }
        if (cs.size() == n && wait_open(svc, base_open + int(n), 30000ms)) {
            std::this_thread::sleep_for(300ms);
            delta = vm_rss_kb() - before;
        } else {
            std::fprintf(stderr, "  idle: %d of %zu connections reached the service\n",
                         svc.open_connections() - base_open, n);
        }
    }
    wait_open(svc, base_open, 30000ms);
    return delta;
}

// A p2prc relay (server + client) exposing the service.
struct P2prcRelay {
    std::unique_ptr<p2prc::frp::Server> server;
    std::unique_ptr<p2prc::frp::Client> client;
    Endpoint public_endpoint;

    P2prcRelay(const Endpoint& service, bool mux) {
        p2prc::frp::ServerOptions so;
        so.bind = loopback();
        so.token = "bench";
        so.max_connections = 8192;
        server = std::make_unique<p2prc::frp::Server>(so);
        p2prc::frp::ClientOptions co;
        co.server = loopback(server->port());
        co.token = "bench";
        co.tcp_mux = mux;
        co.max_connections = 4096;
        co.proxies.push_back({"bench", service, 0, false, false});
        client = std::make_unique<p2prc::frp::Client>(co);
        auto st = client->wait_running("bench", 10000ms);
        if (st.state != p2prc::frp::ProxyState::running)
            throw p2prc::error(p2prc::errc::state_error,
                               "relay proxy not running: " + st.error + client->last_error());
        public_endpoint = st.public_endpoint;
    }
};

std::uint16_t free_port() {
    TcpListener l(loopback());
    return l.local_endpoint().port;
}

bool port_open(std::uint16_t port) {
    try {
        TcpConnection::connect(loopback(port), 500ms);
        return true;
    } catch (const p2prc::error&) {
        return false;
    }
}

void write_file(const std::string& path, const std::string& text) {
    std::ofstream out(path);
    out << text;
    if (!out) throw p2prc::error(p2prc::errc::io_error, "cannot write " + path);
}

// Stock frps + frpc from `dir` exposing the service, with tcp_mux on or off.
std::optional<Figures> stock_frp(const std::string& dir, const Endpoint& service, bool mux,
                                 std::size_t total, std::size_t pings) {
    p2prc_test::TempDir tmp;
    std::uint16_t bind = free_port(), remote = free_port();
    std::string m = mux ? "true" : "false";
    write_file(tmp.file("frps.ini"), "[common]\nbind_addr = 127.0.0.1\nbind_port = " +
                                         std::to_string(bind) + "\ntoken = bench\ntcp_mux = " +
                                         m + "\nlog_level = warn\n");
    write_file(tmp.file("frpc.ini"),
               "[common]\nserver_addr = 127.0.0.1\nserver_port = " + std::to_string(bind) +
                   "\ntoken = bench\ntcp_mux = " + m + "\nlog_level = warn\n\n[bench]\n" +
                   "type = tcp\nlocal_ip = 127.0.0.1\nlocal_port = " +
                   std::to_string(service.port) + "\nremote_port = " + std::to_string(remote) +
                   "\n");
    p2prc_test::ChildProcess frps({dir + "/frps", "-c", tmp.file("frps.ini")},
                                  tmp.file("frps.out"), tmp.file("frps.err"));
    auto end = Clock::now() + 10s;
    while (!port_open(bind) && Clock::now() < end) std::this_thread::sleep_for(50ms);
    p2prc_test::ChildProcess frpc({dir + "/frpc", "-c", tmp.file("frpc.ini")},
                                  tmp.file("frpc.out"), tmp.file("frpc.err"));
    end = Clock::now() + 15s;
    while (!port_open(remote) && Clock::now() < end) std::this_thread::sleep_for(100ms);
    if (!port_open(remote)) {
        std::printf("stock frp (tcp_mux %s): proxy did not come up in 15 s\n", m.c_str());
        return std::nullopt;
    }
    return measure(loopback(remote), total, pings);
}

}  // namespace

int main() {
    // Each idle tunnelled connection holds several descriptors (user, public side, work
    // connection(s), local dial, service side).
    rlimit rl{};
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    const std::size_t total = env_size("BENCH_MIB", 256, 1, 4096) << 20;
    const std::size_t idle = env_size("BENCH_IDLE", 1000, 1, 2000);
    const std::size_t pings = env_size("BENCH_PINGS", 2000, 10, 100000);
    std::printf("relay benchmark: %zu MiB per throughput run (best of 3), %zu x %zu-byte "
                "round trips\n", total >> 20, pings, kPing);
    try {
        Service svc;
        Figures direct = measure(svc.endpoint(), total, pings);
        print_figures("direct loopback", direct, nullptr);
        for (bool mux : {true, false}) {
            P2prcRelay relay(svc.endpoint(), mux);
            Figures f = measure(relay.public_endpoint, total, pings);
            print_figures(mux ? "p2prc relay, mux on" : "p2prc relay, mux off", f, &direct);
        }

        // Memory: the growth of this process with `idle` idle connections held directly,
        // then through the relay; the difference is what the relay (both roles) adds.
        long direct_kb = idle_rss_delta(svc, svc.endpoint(), idle);
        std::printf("VmRSS growth, %zu idle direct connections: %ld kB\n", idle, direct_kb);
        for (bool mux : {true, false}) {
            P2prcRelay relay(svc.endpoint(), mux);
            long kb = idle_rss_delta(svc, relay.public_endpoint, idle);
            if (kb < 0 || direct_kb < 0) {
                std::printf("VmRSS growth through relay, mux %s: not measured\n",
                            mux ? "on" : "off");
                continue;
            }
            std::printf("VmRSS growth, %zu idle tunnelled connections, mux %-3s: %ld kB "
                        "(relay adds %ld kB, %.1f kB per connection)\n",
                        idle, mux ? "on" : "off", kb, kb - direct_kb,
                        double(kb - direct_kb) / double(idle));
        }
        std::printf("VmRSS now: %ld kB\n", vm_rss_kb());

        const char* dir = std::getenv("FRP_BIN_DIR");
        if (!dir || !*dir) {
            std::printf("stock frp: skipped (set FRP_BIN_DIR)\n");
        } else {
            for (bool mux : {true, false}) {
                auto f = stock_frp(dir, svc.endpoint(), mux, total, pings);
                if (f)
                    print_figures(mux ? "stock frp, mux on" : "stock frp, mux off", *f,
                                  &direct);
            }
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_relay: %s\n", e.what());
        return 1;
    }
    return 0;
}
