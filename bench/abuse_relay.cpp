// The relay under attack, on loopback: for each attack of the abuse tests (idle TCP
// connections, idle yamux sessions, logins at once, yamux SYNs on one session, all from
// 127.0.0.2), fresh legitimate frp logins from 127.0.0.1 while it runs: their success
// rate and p99 time, and the relay process's peak and final RSS and threads.
//
// The p2prc relay runs in a child process (so its figures are its own, not the
// attacker's); with FRP_BIN_DIR naming a folder with stock frps, the same runs against
// it. Sizes: BENCH_IDLE (400), BENCH_SESSIONS (200), BENCH_LOGINS (500), BENCH_SYNS
// (100000), BENCH_PROBES (20 logins per attack).
#include <p2prc.hpp>

#include "support/process.hpp"
#include "support/relay.hpp"
#include "support/relay_abuse.hpp"
#include "support/tempdir.hpp"

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <optional>
#include <string>
#include <vector>

using namespace p2prc_test;
using Clock = std::chrono::steady_clock;

namespace {

std::size_t env_size(const char* name, std::size_t def, std::size_t lo, std::size_t hi) {
    const char* v = std::getenv(name);
    if (!v || !*v) return def;
    auto n = std::strtoull(v, nullptr, 10);
    return std::clamp<std::size_t>(n, lo, hi);
}

// A relay in a child process: the p2prc one (fork) or stock frps.
struct Relay {
    int pid = 0;
    std::uint16_t port = 0;
    std::function<void()> stop;
};

// The parent's ends of the pipes that hold earlier relays open: a later child must not
// keep them, or closing them would never reach the relay they hold.
std::vector<int> held_pipes;

// The p2prc relay with its defaults, in a child made before this process has threads.
std::optional<Relay> start_p2prc() {
    int up[2], hold[2];
    if (::pipe(up) != 0 || ::pipe(hold) != 0) return std::nullopt;
    pid_t pid = ::fork();
    if (pid < 0) return std::nullopt;
    if (pid == 0) {
        ::close(up[0]);
        ::close(hold[1]);
        for (int fd : held_pipes) ::close(fd);
        {
            p2prc::frp::ServerOptions o;
            o.bind = loopback(0);
            p2prc::frp::Server server(o);
            std::uint16_t port = server.port();
            if (::write(up[1], &port, sizeof port) != sizeof port) _exit(2);
            char c;
            while (::read(hold[0], &c, 1) > 0) {
            }  // until the parent closes its end
        }
        _exit(0);
    }
    ::close(up[1]);
    ::close(hold[0]);
    Relay r;
    r.pid = pid;
    if (::read(up[0], &r.port, sizeof r.port) != sizeof r.port) r.port = 0;
    ::close(up[0]);
    const int hold_fd = hold[1];
    held_pipes.push_back(hold_fd);
    r.stop = [pid, hold_fd] {
        ::close(hold_fd);
        int st = 0;
        ::waitpid(pid, &st, 0);
    };
    if (r.port == 0) {
        r.stop();
        return std::nullopt;
    }
    return r;
}

std::optional<Relay> start_frps(const std::string& dir, std::shared_ptr<TempDir> tmp) {
    const std::uint16_t port = free_port();
    std::ofstream(tmp->file("frps.ini"))
        << "[common]\nbind_addr = 127.0.0.1\nbind_port = " << port << "\nlog_level = warn\n";
    auto child = std::make_shared<ChildProcess>(
        std::vector<std::string>{dir + "/frps", "-c", tmp->file("frps.ini")}, tmp->file("frps.out"),
        tmp->file("frps.err"));
    const auto end = Clock::now() + 10s;
    while (!port_open(port) && Clock::now() < end) std::this_thread::sleep_for(50ms);
    if (!port_open(port)) return std::nullopt;
    Relay r;
    r.pid = child->pid();
    r.port = port;
    r.stop = [child, tmp]() mutable { child.reset(); };
    return r;
}

struct Row {
    std::size_t ok = 0, tries = 0;
    long p99_ms = -1;
    std::size_t rss_start = 0, rss_peak = 0, rss_final = 0;
    std::size_t threads_start = 0, threads_peak = 0, threads_final = 0;
};

Row attack_once(const Relay& relay, RelayAttack kind, std::size_t size, std::size_t probes,
                const p2prc::Endpoint& service) {
    Row row;
    row.rss_start = rss_kib(relay.pid);
    row.threads_start = thread_count(relay.pid);
    std::atomic<bool> sampling{true};
    std::atomic<std::size_t> rss_peak{row.rss_start}, threads_peak{row.threads_start};
    std::thread sampler([&] {
        while (sampling.load()) {
            rss_peak.store(std::max(rss_peak.load(), rss_kib(relay.pid)));
            threads_peak.store(std::max(threads_peak.load(), thread_count(relay.pid)));
            std::this_thread::sleep_for(20ms);
        }
    });
    std::vector<long> times;
    {
        RelayAttacker attack(kind, relay.port, size);
        const auto end = Clock::now() + 60s;
        while (Clock::now() < end) {
            bool bit = kind == RelayAttack::syn_flood     ? attack.syns_sent() >= size
                       : kind == RelayAttack::login_burst ? attack.held() >= size * 4 / 5
                                                          : attack.opened() >= size;
            if (bit) break;
            std::this_thread::sleep_for(50ms);
        }
        for (std::size_t i = 0; i < probes; ++i) {
            ++row.tries;
            auto t = legit_login(relay.port, service, i % 2 == 0, 8000ms);
            if (t.count() >= 0) {
                ++row.ok;
                times.push_back(t.count());
            }
        }
        attack.stop();
    }
    // Final: once the threads have settled (or 15 s).
    const auto end = Clock::now() + 15s;
    std::size_t last = thread_count(relay.pid);
    while (Clock::now() < end) {
        std::this_thread::sleep_for(500ms);
        std::size_t now = thread_count(relay.pid);
        if (now <= row.threads_start + 2 || now == last) break;
        last = now;
    }
    sampling.store(false);
    sampler.join();
    row.rss_peak = rss_peak.load();
    row.threads_peak = threads_peak.load();
    row.rss_final = rss_kib(relay.pid);
    row.threads_final = thread_count(relay.pid);
    if (!times.empty()) {
        std::sort(times.begin(), times.end());
        row.p99_ms = times[std::min(times.size() - 1, (times.size() * 99 + 99) / 100 - 1)];
    }
    return row;
}

void print_row(const char* relay, RelayAttack kind, std::size_t size, const Row& r) {
    std::printf(
        "%-6s %-26s %6zu | logins %2zu/%-2zu p99 %5ld ms | RSS kB %6zu -> peak %7zu -> "
        "%7zu | threads %4zu -> peak %5zu -> %4zu\n",
        relay, to_string(kind), size, r.ok, r.tries, r.p99_ms, r.rss_start, r.rss_peak, r.rss_final,
        r.threads_start, r.threads_peak, r.threads_final);
    std::fflush(stdout);
}

}  // namespace

int main() {
    rlimit rl{};
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    const std::size_t probes = env_size("BENCH_PROBES", 20, 1, 1000);
    const std::vector<std::pair<RelayAttack, std::size_t>> attacks = {
        {RelayAttack::idle_tcp, env_size("BENCH_IDLE", 400, 1, 5000)},
        {RelayAttack::idle_mux, env_size("BENCH_SESSIONS", 200, 1, 5000)},
        {RelayAttack::login_burst, env_size("BENCH_LOGINS", 500, 1, 5000)},
        {RelayAttack::syn_flood, env_size("BENCH_SYNS", 100000, 1, 10000000)},
    };
    // The p2prc relays are forked before this process starts any thread.
    std::vector<Relay> ours;
    for (std::size_t i = 0; i < attacks.size(); ++i) {
        auto r = start_p2prc();
        if (!r) {
            std::fprintf(stderr, "bench_abuse_relay: cannot start the p2prc relay\n");
            return 1;
        }
        ours.push_back(*r);
    }
    std::printf(
        "relay abuse benchmark: attacks from 127.0.0.2, %zu fresh frp logins from "
        "127.0.0.1 during each (limit 8 s each)\n",
        probes);
    try {
        EchoServer service;
        for (std::size_t i = 0; i < attacks.size(); ++i) {
            auto row = attack_once(ours[i], attacks[i].first, attacks[i].second, probes,
                                   service.endpoint());
            print_row("p2prc", attacks[i].first, attacks[i].second, row);
            ours[i].stop();
        }
        const char* dir = std::getenv("FRP_BIN_DIR");
        if (!dir || !*dir) {
            std::printf("stock frps: skipped (set FRP_BIN_DIR to a folder with frps)\n");
        } else {
            for (const auto& [kind, size] : attacks) {
                auto tmp = std::make_shared<TempDir>();
                auto frps = start_frps(dir, tmp);
                if (!frps) {
                    std::printf("stock frps: did not start from %s\n", dir);
                    break;
                }
                auto row = attack_once(*frps, kind, size, probes, service.endpoint());
                print_row("frps", kind, size, row);
                frps->stop();
            }
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_abuse_relay: %s\n", e.what());
        return 1;
    }
    return 0;
}
