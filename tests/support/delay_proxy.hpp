// A userspace TCP proxy that injects delay and limits rate, for loopback tests (kernel
// netem is not available here).
//
// Each route listens on 127.0.0.1 (port chosen by the kernel; both can be set) and
// forwards every accepted connection to 127.0.0.1:<target>. Semantics, per direction and
// independently:
//   delay D: a chunk read from one side at time t is written to the other side at t + D
//            at the earliest, order kept. One request/response exchange therefore takes
//            2*D longer than without the proxy.
//   rate R:  (bytes/s, 0 = unlimited) a token bucket; the bytes written in any interval
//            of length T are at most R*T + burst, burst = max(16 KiB, 50 ms of R): a
//            proxy thread that the scheduler delays loses nothing; while data flows the
//            bucket is empty, so the long-run rate is R.
// Delays count from the kernel's receive time of the data (SO_TIMESTAMPNS), so the
// proxy's own scheduling delays do not add to them. Each connection has its own pair of
// buckets. At most 256 KiB wait in the proxy per direction; beyond that it stops reading,
// so the sender feels the limit (TCP backpressure) as it would on a real slow link.
//
// One thread serves every route and connection (poll-driven), so a benchmark can put
// hundreds of peers behind it.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace p2prc_test {

struct ProxyRoute {
    std::uint16_t target_port = 0;
    std::chrono::microseconds delay{0};  // one way
    double rate_bytes_per_second = 0;    // 0: unlimited
    // Where the route listens (host byte order); loopback unless a test inside its own
    // network namespace puts the proxy in front of a host's address.
    std::uint32_t listen_address = INADDR_LOOPBACK;
    std::uint16_t listen_port = 0;  // 0: chosen by the kernel
};

class DelayProxy {
  public:
    using Clock = std::chrono::steady_clock;

    explicit DelayProxy(const std::vector<ProxyRoute>& routes) {
        if (pipe2(wake_, O_CLOEXEC | O_NONBLOCK) != 0) throw std::runtime_error("pipe2 failed");
        for (const auto& r : routes) {
            Listener l;
            l.route = r;
            l.fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
            int one = 1;
            setsockopt(l.fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
            sockaddr_in a{};
            a.sin_family = AF_INET;
            a.sin_addr.s_addr = htonl(r.listen_address);
            a.sin_port = htons(r.listen_port);
            if (::bind(l.fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
                ::listen(l.fd, 512) != 0)
                throw std::runtime_error("proxy: cannot listen");
            socklen_t len = sizeof a;
            getsockname(l.fd, reinterpret_cast<sockaddr*>(&a), &len);
            l.port = ntohs(a.sin_port);
            listeners_.push_back(l);
        }
        thread_ = std::thread([this] { loop(); });
    }
    explicit DelayProxy(ProxyRoute route) : DelayProxy(std::vector<ProxyRoute>{route}) {}

    ~DelayProxy() {
        stop_ = true;
        char c = 1;
        (void)!::write(wake_[1], &c, 1);
        thread_.join();
        for (auto& l : listeners_) ::close(l.fd);
        for (auto& c2 : conns_) close_conn(*c2);
        ::close(wake_[0]);
        ::close(wake_[1]);
    }
    DelayProxy(const DelayProxy&) = delete;
    DelayProxy& operator=(const DelayProxy&) = delete;

    std::uint16_t port(std::size_t i = 0) const { return listeners_.at(i).port; }
    std::size_t accepted() const { return accepted_; }

  private:
    static constexpr std::size_t kMaxQueued = 256 * 1024;
    static constexpr std::size_t kReadChunk = 64 * 1024;

    struct Listener {
        ProxyRoute route;
        int fd = -1;
        std::uint16_t port = 0;
    };
    struct Chunk {
        Clock::time_point due;
        std::string data;
        std::size_t off = 0;
    };
    struct Direction {
        int from = -1, to = -1;
        std::deque<Chunk> queue;
        std::size_t queued = 0;
        bool eof = false;   // `from` reached EOF
        bool shut = false;  // EOF passed on to `to`
        double tokens = 0;
        Clock::time_point refilled;
        bool want_write = false;  // `to` is full: wait for POLLOUT
    };
    struct Conn {
        ProxyRoute route;
        int client = -1, server = -1;
        Direction up, down;  // up: client -> server
        bool dead = false;
    };

    static void close_conn(Conn& c) {
        if (c.client >= 0) ::close(c.client);
        if (c.server >= 0) ::close(c.server);
        c.client = c.server = -1;
    }

    double burst(const ProxyRoute& r) const {
        return std::max(16384.0, r.rate_bytes_per_second * 0.05);
    }

    void accept_from(Listener& l) {
        for (int i = 0; i < 64; ++i) {
            int fd = ::accept4(l.fd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
            if (fd < 0) return;
            int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
            sockaddr_in a{};
            a.sin_family = AF_INET;
            a.sin_port = htons(l.route.target_port);
            a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            // Loopback: a blocking connect is immediate (refused or accepted).
            if (::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
                ::close(s);
                ::close(fd);
                continue;
            }
            fcntl(s, F_SETFL, fcntl(s, F_GETFL) | O_NONBLOCK);
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            // Kernel receive times: a proxy thread that wakes late does not add its
            // lateness to the delay.
            setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
            setsockopt(s, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
            auto c = std::make_unique<Conn>();
            c->route = l.route;
            c->client = fd;
            c->server = s;
            c->up.from = fd;
            c->up.to = s;
            c->down.from = s;
            c->down.to = fd;
            c->up.tokens = c->down.tokens = burst(l.route);
            c->up.refilled = c->down.refilled = Clock::now();
            conns_.push_back(std::move(c));
            ++accepted_;
        }
    }

    void read_side(Conn& c, Direction& d) {
        char buf[kReadChunk];
        iovec iov{buf, sizeof buf};
        alignas(cmsghdr) char control[CMSG_SPACE(sizeof(timespec))];
        msghdr msg{};
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control;
        msg.msg_controllen = sizeof control;
        ssize_t n = ::recvmsg(d.from, &msg, 0);
        if (n > 0) {
            Chunk ch;
            auto arrived = Clock::now();
            for (cmsghdr* cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
                if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_TIMESTAMPNS) continue;
                timespec ts{};
                std::memcpy(&ts, CMSG_DATA(cm), sizeof ts);
                timespec real{};
                clock_gettime(CLOCK_REALTIME, &real);
                const auto late = std::chrono::seconds(real.tv_sec - ts.tv_sec) +
                                  std::chrono::nanoseconds(real.tv_nsec - ts.tv_nsec);
                // The timestamp is of the last segment in this read: never in the future.
                if (late.count() > 0 && late < std::chrono::seconds(1))
                    arrived -= std::chrono::duration_cast<Clock::duration>(late);
            }
            ch.due = arrived + c.route.delay;
            ch.data.assign(buf, static_cast<std::size_t>(n));
            d.queued += ch.data.size();
            d.queue.push_back(std::move(ch));
        } else if (n == 0) {
            d.eof = true;
        } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            c.dead = true;
        }
    }

    // Writes what is due and allowed; returns when it next needs to run (or max()).
    Clock::time_point write_side(Conn& c, Direction& d, Clock::time_point now) {
        const double rate = c.route.rate_bytes_per_second;
        d.want_write = false;
        while (!d.queue.empty()) {
            Chunk& ch = d.queue.front();
            if (ch.due > now) return ch.due;
            std::size_t left = ch.data.size() - ch.off;
            std::size_t allowed = left;
            if (rate > 0) {
                double dt = std::chrono::duration<double>(now - d.refilled).count();
                d.tokens = std::min(burst(c.route), d.tokens + dt * rate);
                d.refilled = now;
                if (d.tokens < 1.0) {
                    double need = std::min<double>(double(left), 4096.0) - d.tokens;
                    return now +
                           std::chrono::microseconds(static_cast<long long>(need / rate * 1e6) + 1);
                }
                allowed = std::min(left, static_cast<std::size_t>(d.tokens));
            }
            ssize_t n = ::send(d.to, ch.data.data() + ch.off, allowed, MSG_NOSIGNAL);
            if (n < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK) {
                    d.want_write = true;
                    return Clock::time_point::max();
                }
                if (errno == EINTR) continue;
                c.dead = true;
                return Clock::time_point::max();
            }
            if (rate > 0) d.tokens -= double(n);
            ch.off += static_cast<std::size_t>(n);
            d.queued -= static_cast<std::size_t>(n);
            if (ch.off == ch.data.size()) d.queue.pop_front();
        }
        if (d.eof && !d.shut) {
            ::shutdown(d.to, SHUT_WR);
            d.shut = true;
        }
        return Clock::time_point::max();
    }

    void loop() {
        std::vector<pollfd> fds;
        struct Slot {
            int kind;  // 0 wake, 1 listener, 2 conn
            std::size_t index;
        };
        std::vector<Slot> slots;
        Clock::time_point next = Clock::time_point::max();
        while (!stop_) {
            fds.clear();
            slots.clear();
            fds.push_back({wake_[0], POLLIN, 0});
            slots.push_back({0, 0});
            for (std::size_t i = 0; i < listeners_.size(); ++i) {
                fds.push_back({listeners_[i].fd, POLLIN, 0});
                slots.push_back({1, i});
            }
            for (std::size_t i = 0; i < conns_.size(); ++i) {
                Conn& c = *conns_[i];
                short ce = 0, se = 0;
                if (!c.up.eof && c.up.queued < kMaxQueued) ce |= POLLIN;
                if (!c.down.eof && c.down.queued < kMaxQueued) se |= POLLIN;
                if (c.up.want_write) se |= POLLOUT;
                if (c.down.want_write) ce |= POLLOUT;
                fds.push_back({c.client, ce, 0});
                slots.push_back({2, i});
                fds.push_back({c.server, se, 0});
                slots.push_back({2, i});
            }
            timespec ts{};
            timespec* tsp = nullptr;
            if (next != Clock::time_point::max()) {
                auto left =
                    std::chrono::duration_cast<std::chrono::nanoseconds>(next - Clock::now())
                        .count();
                if (left < 0) left = 0;
                ts.tv_sec = static_cast<time_t>(left / 1000000000);
                ts.tv_nsec = static_cast<long>(left % 1000000000);
                tsp = &ts;
            } else {
                ts.tv_sec = 0;
                ts.tv_nsec = 100 * 1000000;  // re-check the stop flag now and then
                tsp = &ts;
            }
            int n = ::ppoll(fds.data(), fds.size(), tsp, nullptr);
            if (n < 0 && errno != EINTR) break;
            for (std::size_t k = 0; n > 0 && k < fds.size(); ++k) {
                if (!fds[k].revents) continue;
                if (slots[k].kind == 0) {
                    char buf[64];
                    while (::read(wake_[0], buf, sizeof buf) > 0) {
                    }
                } else if (slots[k].kind == 1) {
                    accept_from(listeners_[slots[k].index]);
                } else {
                    Conn& c = *conns_[slots[k].index];
                    const bool is_client = fds[k].fd == c.client;
                    if (fds[k].revents & (POLLIN | POLLHUP | POLLERR)) {
                        Direction& d = is_client ? c.up : c.down;
                        if (!d.eof && d.queued < kMaxQueued)
                            read_side(c, d);
                        else if (fds[k].revents & POLLERR)
                            c.dead = true;
                    }
                }
            }
            // Write what is due; work out the next time something is.
            const auto now = Clock::now();
            next = Clock::time_point::max();
            for (auto& cp : conns_) {
                Conn& c = *cp;
                if (c.dead) continue;
                next = std::min(next, write_side(c, c.up, now));
                next = std::min(next, write_side(c, c.down, now));
                if (c.up.shut && c.down.shut) c.dead = true;
            }
            for (auto& cp : conns_)
                if (cp->dead) close_conn(*cp);
            conns_.erase(
                std::remove_if(conns_.begin(), conns_.end(), [](const auto& c) { return c->dead; }),
                conns_.end());
        }
    }

    std::vector<Listener> listeners_;
    std::vector<std::unique_ptr<Conn>> conns_;
    int wake_[2] = {-1, -1};
    std::atomic<bool> stop_{false};
    std::atomic<std::size_t> accepted_{0};
    std::thread thread_;
};

}  // namespace p2prc_test
