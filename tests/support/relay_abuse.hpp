// Attacks on a relay from one loopback source address (127.0.0.2 and up, so the
// legitimate client on 127.0.0.1 is another address), legitimate frp login probes, and
// this process's thread count and RSS. Shared by the abuse tests and bench/abuse_relay.
// Every attack is bounded in connections and ends when stopped.
#pragma once

#include <p2prc.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace p2prc_test {

// A TCP socket bound to `source` (a loopback address) and connected to 127.0.0.1:port,
// or -1. Blocking connect: loopback answers at once.
inline int connect_from(const std::string& source, std::uint16_t port) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    sockaddr_in src{};
    src.sin_family = AF_INET;
    ::inet_pton(AF_INET, source.c_str(), &src.sin_addr);
    sockaddr_in dst{};
    dst.sin_family = AF_INET;
    dst.sin_port = htons(port);
    ::inet_pton(AF_INET, "127.0.0.1", &dst.sin_addr);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&src), sizeof src) != 0 ||
        ::connect(fd, reinterpret_cast<sockaddr*>(&dst), sizeof dst) != 0) {
        ::close(fd);
        return -1;
    }
    return fd;
}

// True when the peer closed (or reset) the connection; reads and drops what it sent.
inline bool peer_closed(int fd) {
    char buf[4096];
    for (;;) {
        ssize_t k = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (k > 0) continue;
        if (k == 0) return true;
        return errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
    }
}

inline bool send_all(int fd, const std::string& bytes) {
    std::size_t off = 0;
    while (off < bytes.size()) {
        ssize_t k = ::send(fd, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
        if (k <= 0) return false;
        off += std::size_t(k);
    }
    return true;
}

// One frp message as its wire bytes (type byte, length, JSON).
inline std::string wire_bytes(const p2prc::frp::Message& m) {
    struct Sink : p2prc::detail::Stream {
        std::string out;
        std::size_t read_some(void*, std::size_t, p2prc::detail::Millis) override { return 0; }
        void write_all(const void* b, std::size_t n, p2prc::detail::Millis) override {
            out.append(static_cast<const char*>(b), n);
        }
        void shutdown_write() override {}
        void close() noexcept override {}
        std::string describe() const override { return "sink"; }
    } sink;
    p2prc::frp::write_msg(sink, m, p2prc::detail::Millis(1000));
    return sink.out;
}

inline p2prc::frp::Login plain_login(const std::string& token = {}) {
    p2prc::frp::Login l;
    l.version = "0.45.0";
    l.os = "linux";
    l.arch = "amd64";
    l.timestamp = 1700000000;
    l.privilege_key = p2prc::frp::privilege_key(token, l.timestamp);
    l.pool_count = 0;
    return l;
}

inline std::string yamux_header(p2prc::frp::yamux::FrameType type, std::uint16_t flags,
                                std::uint32_t id, std::uint32_t length) {
    auto h = p2prc::frp::yamux::encode_header(p2prc::frp::yamux::Header{type, flags, id, length});
    return std::string(reinterpret_cast<const char*>(h.data()), h.size());
}

enum class RelayAttack { idle_tcp, idle_mux, login_burst, syn_flood };

inline const char* to_string(RelayAttack a) {
    switch (a) {
        case RelayAttack::idle_tcp:
            return "idle TCP connections";
        case RelayAttack::idle_mux:
            return "idle yamux sessions";
        case RelayAttack::login_burst:
            return "logins at once";
        case RelayAttack::syn_flood:
            return "yamux SYNs on one session";
    }
    return "?";
}

// Runs one attack on its own thread until stop() (or the destructor). `size` is the
// number of connections held (idle_tcp, idle_mux, login_burst) or of SYNs sent
// (syn_flood). Connections the relay closes are opened again, at most `size` per second
// each round, so the pressure lasts as long as the attack.
class RelayAttacker {
  public:
    RelayAttacker(RelayAttack kind, std::uint16_t port, std::size_t size,
                  std::string source = "127.0.0.2")
        : kind_(kind), port_(port), size_(size), source_(std::move(source)) {
        thread_ = std::thread([this] { run(); });
    }
    ~RelayAttacker() { stop(); }
    RelayAttacker(const RelayAttacker&) = delete;
    RelayAttacker& operator=(const RelayAttacker&) = delete;

    void stop() {
        stop_.store(true);
        if (thread_.joinable()) thread_.join();
    }
    // Connections held now (logins answered without error, for login_burst).
    std::size_t held() const { return held_.load(); }
    // Connections opened, and SYNs sent, so far.
    std::size_t opened() const { return opened_.load(); }
    std::size_t syns_sent() const { return syns_.load(); }

  private:
    void run() {
        if (kind_ == RelayAttack::syn_flood) return syn_flood();
        std::vector<int> fds(size_, -1);
        std::vector<bool> answered(size_, false);
        const std::string opener =
            kind_ == RelayAttack::idle_mux
                ? yamux_header(p2prc::frp::yamux::FrameType::ping, p2prc::frp::yamux::kSyn, 0, 1)
            : kind_ == RelayAttack::login_burst ? wire_bytes(plain_login())
                                                : std::string();
        while (!stop_.load()) {
            std::size_t live = 0, ok = 0, reopened = 0;
            for (std::size_t i = 0; i < size_ && !stop_.load(); ++i) {
                if (fds[i] >= 0 && peer_closed_keep(fds[i], answered[i])) {
                    ::close(fds[i]);
                    fds[i] = -1;
                    answered[i] = false;
                }
                if (fds[i] < 0) {
                    // Bounded churn: the relay closes what it refuses at once, and
                    // reopening all of them every round would only wear out ports.
                    if (reopened++ >= 64) continue;
                    fds[i] = connect_from(source_, port_);
                    if (fds[i] < 0) continue;
                    ++opened_;
                    if (!opener.empty()) send_all(fds[i], opener);
                }
                ++live;
                ok += answered[i];
            }
            held_.store(kind_ == RelayAttack::login_burst ? ok : live);
            for (int t = 0; t < 5 && !stop_.load(); ++t)
                std::this_thread::sleep_for(std::chrono::milliseconds(40));
        }
        for (int fd : fds)
            if (fd >= 0) ::close(fd);
        held_.store(0);
    }

    // Like peer_closed, and notes whether the relay sent anything (a LoginResp).
    static bool peer_closed_keep(int fd, std::vector<bool>::reference answered) {
        char buf[4096];
        for (;;) {
            ssize_t k = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
            if (k > 0) {
                // A refusal is a LoginResp with an error, then a close: only a connection
                // still open after its answer counts as logged in.
                answered = true;
                continue;
            }
            if (k == 0) return true;
            return errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
        }
    }

    // One session, SYNs for new streams as fast as the socket takes them; the relay's
    // answers (ACKs, RSTs) are read and dropped so it never counts us as not reading.
    void syn_flood() {
        int fd = connect_from(source_, port_);
        if (fd < 0) return;
        ++opened_;
        held_.store(1);
        // Logged in on stream 1 first, as a client would be: the session is then no
        // longer pending, and what follows is only the SYNs.
        const std::string login = wire_bytes(plain_login());
        send_all(fd, yamux_header(p2prc::frp::yamux::FrameType::data, p2prc::frp::yamux::kSyn, 1,
                                  std::uint32_t(login.size())) +
                         login);
        ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
        std::uint32_t id = 3;
        std::size_t generated = 0, sent_bytes = 0;
        std::string out;
        std::size_t off = 0;
        while (!stop_.load() && syns_.load() < size_) {
            if (off == out.size()) {
                out.clear();
                off = 0;
                for (int i = 0; i < 256 && generated < size_; ++i, ++generated) {
                    out += yamux_header(p2prc::frp::yamux::FrameType::window_update,
                                        p2prc::frp::yamux::kSyn, id, 0);
                    id += 2;
                }
            }
            pollfd p{fd, POLLIN | POLLOUT, 0};
            ::poll(&p, 1, 100);
            if (p.revents & (POLLERR | POLLHUP)) break;
            if ((p.revents & POLLIN) && peer_closed(fd)) break;
            if (p.revents & POLLOUT) {
                ssize_t k = ::send(fd, out.data() + off, out.size() - off, MSG_NOSIGNAL);
                if (k > 0) {
                    off += std::size_t(k);
                    sent_bytes += std::size_t(k);
                    syns_.store(sent_bytes / 12);
                }
            }
        }
        // Keep the session until stopped: its streams stay the relay's to bound.
        while (!stop_.load()) {
            pollfd p{fd, POLLIN, 100};
            ::poll(&p, 1, 100);
            if ((p.revents & POLLIN) && peer_closed(fd)) break;
        }
        ::close(fd);
        held_.store(0);
    }

    RelayAttack kind_;
    std::uint16_t port_;
    std::size_t size_;
    std::string source_;
    std::atomic<bool> stop_{false};
    std::atomic<std::size_t> held_{0}, opened_{0}, syns_{0};
    std::thread thread_;
};

// One legitimate client: a fresh frp::Client from 127.0.0.1 that logs in and registers a
// proxy for `local`. Returns the time it took, or a negative duration when it failed
// within `limit`.
inline std::chrono::milliseconds legit_login(std::uint16_t port, const p2prc::Endpoint& local,
                                             bool tcp_mux, std::chrono::milliseconds limit,
                                             std::string* why = nullptr) {
    p2prc::frp::ClientOptions o;
    o.server = p2prc::Endpoint{p2prc::IpAddress::from_string("127.0.0.1"), port};
    o.tcp_mux = tcp_mux;
    o.reconnect_min = std::chrono::milliseconds(100);
    o.reconnect_max = std::chrono::milliseconds(500);
    // A name of its own: the relay may not have noticed the previous probe's end yet,
    // and two clients may not share a proxy name.
    static std::atomic<unsigned> serial{0};
    p2prc::frp::ProxySpec ps;
    ps.name = "legit-" + std::to_string(serial.fetch_add(1));
    ps.local = local;
    o.proxies.push_back(ps);
    const auto t0 = std::chrono::steady_clock::now();
    p2prc::frp::Client c(o);
    auto st = c.wait_running(ps.name, limit);
    auto took = std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::steady_clock::now() - t0);
    if (why && st.state != p2prc::frp::ProxyState::running)
        *why = (tcp_mux ? "tcp_mux: " : "no tcp_mux: ") +
               (!st.error.empty()         ? st.error
                : !c.last_error().empty() ? c.last_error()
                                          : std::string("not running within the limit"));
    c.stop();
    return st.state == p2prc::frp::ProxyState::running ? took : std::chrono::milliseconds(-1);
}

// A field of /proc/<pid>/status ("Threads", "VmRSS" in kB; pid 0: this process), or 0.
inline std::size_t proc_status(const std::string& field, int pid = 0) {
    std::ifstream in(pid == 0 ? std::string("/proc/self/status")
                              : "/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(in, line))
        if (line.compare(0, field.size() + 1, field + ":") == 0)
            return std::size_t(std::stoull(line.substr(field.size() + 1)));
    return 0;
}
inline std::size_t thread_count(int pid = 0) {
    return proc_status("Threads", pid);
}
inline std::size_t rss_kib(int pid = 0) {
    return proc_status("VmRSS", pid);
}

}  // namespace p2prc_test
