// The HTTP attacks on a node, shared by the abuse suite (tests/integration) and
// bench/abuse. Each attack connects from 127.0.0.2 (loopback, another source address than
// the probes' 127.0.0.1), is bounded in count and time, and ends early when `stop` is set.
#pragma once

#include <p2prc.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace p2prc_test {

// A sanitizer's allocator keeps freed memory (and malloc_trim does not reach it), so
// "RSS comes back" cannot be observed in such a build.
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
constexpr bool kSanitizedAllocator = true;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
constexpr bool kSanitizedAllocator = true;
#else
constexpr bool kSanitizedAllocator = false;
#endif
#else
constexpr bool kSanitizedAllocator = false;
#endif

// This process's resident set, KiB (-1 when unknown).
inline long rss_kib() {
    std::ifstream f("/proc/self/status");
    std::string line;
    while (std::getline(f, line))
        if (line.rfind("VmRSS:", 0) == 0) return std::atol(line.c_str() + 6);
    return -1;
}

// A TCP connection from 127.0.0.2 to 127.0.0.1:port.
class Attacker {
  public:
    explicit Attacker(std::uint16_t port) {
        fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in src{};
        src.sin_family = AF_INET;
        src.sin_addr.s_addr = inet_addr("127.0.0.2");
        sockaddr_in dst{};
        dst.sin_family = AF_INET;
        dst.sin_port = htons(port);
        dst.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (::bind(fd_, reinterpret_cast<sockaddr*>(&src), sizeof src) != 0 ||
            ::connect(fd_, reinterpret_cast<sockaddr*>(&dst), sizeof dst) != 0) {
            ::close(fd_);
            fd_ = -1;
        }
    }
    ~Attacker() {
        if (fd_ >= 0) ::close(fd_);
    }
    Attacker(const Attacker&) = delete;
    Attacker& operator=(const Attacker&) = delete;
    bool ok() const { return fd_ >= 0; }
    // Sends what the node takes within 200 ms; false once the node closed or refused.
    bool send(const std::string& s) {
        std::size_t off = 0;
        while (fd_ >= 0 && off < s.size()) {
            pollfd p{fd_, POLLOUT, 0};
            if (::poll(&p, 1, 200) <= 0) return true;  // the node stopped reading: fine
            ssize_t n = ::send(fd_, s.data() + off, s.size() - off, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n <= 0) return false;
            off += std::size_t(n);
        }
        return fd_ >= 0;
    }
    // What arrives within `wait` (up to 64 KiB); "" when nothing.
    std::string drain(std::chrono::milliseconds wait) {
        std::string out;
        pollfd p{fd_, POLLIN, 0};
        if (fd_ < 0 || ::poll(&p, 1, int(wait.count())) <= 0) return out;
        char buf[65536];
        ssize_t n = ::recv(fd_, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0) out.assign(buf, std::size_t(n));
        return out;
    }

  private:
    int fd_ = -1;
};

using Attack = std::function<void(std::uint16_t port, std::atomic<bool>& stop)>;

struct ProbeStats {
    int sent = 0;
    int ok = 0;                      // 200 within 1 s
    std::vector<double> latency_ms;  // every probe (failures count as their time)
    long start_rss = 0;
    long peak_rss = 0;
    double p99_ms() const {
        if (latency_ms.empty()) return 0;
        auto v = latency_ms;
        std::sort(v.begin(), v.end());
        return v[std::min(v.size() - 1, std::size_t(double(v.size()) * 0.99))];
    }
};

// Runs `attack` on its own thread while a fresh client probes GET /server_info from
// 127.0.0.1 `probes` times, `every` apart; then stops the attack and joins it.
inline ProbeStats under_attack(std::uint16_t port, const Attack& attack, int probes = 10,
                               std::chrono::milliseconds every = std::chrono::milliseconds(200)) {
    using Clock = std::chrono::steady_clock;
    ProbeStats r;
    r.start_rss = r.peak_rss = rss_kib();
    std::atomic<bool> stop{false};
    std::thread t([&] { attack(port, stop); });
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the attack gets going
    for (int i = 0; i < probes; ++i) {
        httplib::Client c("127.0.0.1", port);
        c.set_connection_timeout(1, 0);
        c.set_read_timeout(1, 0);
        const auto t0 = Clock::now();
        auto res = c.Get("/server_info");
        const auto took = Clock::now() - t0;
        ++r.sent;
        if (res && res->status == 200 && took <= std::chrono::seconds(1)) ++r.ok;
        r.latency_ms.push_back(std::chrono::duration<double, std::milli>(took).count());
        r.peak_rss = std::max(r.peak_rss, rss_kib());
        std::this_thread::sleep_for(every);
    }
    stop = true;
    t.join();
    r.peak_rss = std::max(r.peak_rss, rss_kib());
    return r;
}

// RSS once it has come back within `slack_kib` of `start`, or after ~4 s.
inline long settled_rss(long start, long slack_kib) {
    long now = rss_kib();
    for (int i = 0; i < 40 && now > start + slack_kib; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        now = rss_kib();
    }
    return now;
}

inline void idle_until(std::atomic<bool>& stop) {
    while (!stop) std::this_thread::sleep_for(std::chrono::milliseconds(50));
}

// 300 connections that send a request line, then a header a byte per 100 ms each.
inline void slowloris(std::uint16_t port, std::atomic<bool>& stop) {
    std::vector<std::unique_ptr<Attacker>> conns;
    for (int i = 0; i < 300 && !stop; ++i) {
        conns.push_back(std::make_unique<Attacker>(port));
        conns.back()->send("GET /server_info HTTP/1.1\r\n");
    }
    const std::string trickle = "X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    for (std::size_t k = 0; k < trickle.size() && !stop; ++k) {
        for (auto& c : conns) c->send(std::string(1, trickle[k]));
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    idle_until(stop);
}

// 1000 connections: half silent, half kept alive after one request.
inline void idle_connections(std::uint16_t port, std::atomic<bool>& stop) {
    std::vector<std::unique_ptr<Attacker>> conns;
    for (int i = 0; i < 1000 && !stop; ++i) {
        conns.push_back(std::make_unique<Attacker>(port));
        if (i % 2) conns.back()->send("GET /server_info HTTP/1.1\r\nHost: x\r\n\r\n");
    }
    idle_until(stop);
}

// POST /dialback with 60 MiB announced; 60 MiB of '[' chunked; a body announced and never
// sent. `refused` counts the two big ones answered 413 or cut.
inline void dialback_bodies(std::uint16_t port, std::atomic<bool>& stop,
                            std::atomic<int>* refused) {
    Attacker a(port);
    a.send("POST /dialback HTTP/1.1\r\nHost: x\r\nContent-Length: 62914560\r\n\r\n");
    if (a.drain(std::chrono::seconds(2)).find(" 413 ") != std::string::npos && refused) ++*refused;
    Attacker b(port);
    b.send("POST /dialback HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    const std::string chunk = "10000\r\n" + std::string(65536, '[') + "\r\n";
    bool closed = false;
    for (int i = 0; i < 960 && !stop && !closed; ++i) closed = !b.send(chunk);  // <= 60 MiB
    if ((closed || b.drain(std::chrono::seconds(2)).find(" 413 ") != std::string::npos) && refused)
        ++*refused;
    Attacker c(port);
    c.send("POST /IpTable HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n");
    idle_until(stop);
}

// 4 MiB of '[' on POST /IpTable, 4 times; `rejected` counts 400 answers.
inline void nested_json(std::uint16_t port, std::atomic<bool>& stop, std::atomic<int>* rejected) {
    const std::string body(4u << 20, '[');
    for (int i = 0; i < 4 && !stop; ++i) {
        httplib::Client c("127.0.0.1", port);
        c.set_read_timeout(5, 0);
        auto res = c.Post("/IpTable", body, "application/json");
        if (res && res->status == 400 && rejected) ++*rejected;
    }
    idle_until(stop);
}

// A table of n entries (10.x.y.z:8078, measured_at rising with the index), built as
// text: IpTable::add looks for the server first, quadratic over 100,000 entries.
inline p2prc::IpTable big_table(int n) {
    nlohmann::json list = nlohmann::json::array();
    for (int i = 0; i < n; ++i) {
        p2prc::Peer p;
        p.ipv4 = p2prc::IpAddress::from_string("10." + std::to_string(i / 65536) + "." +
                                               std::to_string((i / 256) % 256) + "." +
                                               std::to_string(i % 256));
        p.server_port = 8078;
        p.measured_at = 1700000000 + i;
        list.push_back(p2prc::peer_to_json(p));
    }
    return p2prc::IpTable::parse(nlohmann::json{{"ip_address", list}}.dump(), "big table",
                                 p2prc::TableLimits{});
}

// 20 small POST /IpTable {"ip_address":[]}, all of them even after `stop` (each within
// 60 s); calls `check` with each answer's body.
inline void small_table_posts(std::uint16_t port, std::atomic<bool>& stop,
                              const std::function<void(const std::string&)>& check) {
    for (int i = 0; i < 20; ++i) {
        httplib::Client c("127.0.0.1", port);
        c.set_read_timeout(60, 0);
        auto res = c.Post("/IpTable", R"({"ip_address":[]})", "application/json");
        if (res && res->status == 200 && check) check(res->body);
    }
    idle_until(stop);
}

// 40 connections at once, each sending a header line of up to 10 MiB.
inline void huge_header_lines(std::uint16_t port, std::atomic<bool>& stop) {
    std::vector<std::unique_ptr<Attacker>> conns;
    for (int i = 0; i < 40; ++i) {
        conns.push_back(std::make_unique<Attacker>(port));
        conns.back()->send("GET /server_info HTTP/1.1\r\nX-Big: ");
    }
    const std::string junk(64 * 1024, 'a');
    for (int k = 0; k < 160 && !stop; ++k)  // 160 x 64 KiB = 10 MiB each, at most
        for (auto& c : conns) c->send(junk);
    idle_until(stop);
}

}  // namespace p2prc_test
