// Byte streams: the one interface the relay reads and writes through.
//
// A plain TCP connection, a yamux stream (frp/mux.hpp) and an encrypting wrapper
// (frp/crypto.hpp) all implement detail::Stream, so the code that pipes bytes between a
// user and a service never cares which one it holds. Every operation takes a timeout;
// close() may be called from any thread and wakes every blocked operation promptly (it
// shuts the socket down; the descriptor itself is released only by the destructor, so a
// racing call never touches a reused descriptor number).
#pragma once

#include "address.hpp"
#include "error.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <functional>
#include <string>
#include <utility>

namespace p2prc::detail {

using Clock = std::chrono::steady_clock;
using Millis = std::chrono::milliseconds;

// Milliseconds left until `deadline`, clamped to [0, int max] for poll().
inline int millis_until(Clock::time_point deadline) {
    auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now()).count();
    if (left <= 0) return 0;
    if (left > 0x7fffffff) return 0x7fffffff;
    return static_cast<int>(left);
}

// Calls a user's callback, if set, from one of the library's threads: an exception it
// throws is dropped, since it must not take that thread (or the process) down.
template <class... Params, class... Args>
inline void notify(const std::function<void(Params...)>& callback, Args&&... args) noexcept {
    if (!callback) return;
    try {
        callback(std::forward<Args>(args)...);
    } catch (...) {
    }
}

// now + timeout, saturated so that a huge timeout means "practically forever".
inline Clock::time_point deadline_after(Millis timeout) {
    auto now = Clock::now();
    if (timeout.count() <= 0) return now;
    auto room = std::chrono::duration_cast<Millis>(Clock::time_point::max() - now);
    return timeout >= room ? Clock::time_point::max() : now + timeout;
}

inline std::string socket_error_text(int e) {
    return std::strerror(e);
}

// An abstract bidirectional byte stream.
//
// Outcomes: read_some returns 0 at end of stream (the peer half-closed); a timeout throws
// p2prc::error(errc::timeout); a broken or closed stream throws errc::io_error (or
// errc::state_error when this side closed it). Reads and writes may run concurrently on
// two threads; two concurrent readers (or writers) are not supported.
class Stream {
  public:
    virtual ~Stream() = default;

    // Reads between 1 and n bytes, or returns 0 at end of stream.
    virtual std::size_t read_some(void* buf, std::size_t n, Millis timeout) = 0;
    // Writes all n bytes or throws.
    virtual void write_all(const void* buf, std::size_t n, Millis timeout) = 0;
    // Half-close: the peer reads end of stream after the bytes already written.
    virtual void shutdown_write() = 0;
    // Aborts both directions; wakes blocked calls on other threads. Idempotent.
    virtual void close() noexcept = 0;
    // A short description for error messages ("tcp 127.0.0.1:5000", "yamux stream 3").
    virtual std::string describe() const = 0;

    // Reads exactly n bytes within `timeout` (one deadline for the whole read). End of
    // stream before n bytes is an io_error naming how many bytes arrived.
    void read_exact(void* buf, std::size_t n, Millis timeout) {
        auto deadline = deadline_after(timeout);
        auto* p = static_cast<unsigned char*>(buf);
        std::size_t got = 0;
        while (got < n) {
            auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now());
            if (left.count() <= 0 && got < n)
                throw error(errc::timeout, describe() + ": timed out reading " + std::to_string(n) +
                                               " bytes (got " + std::to_string(got) + ")");
            std::size_t k = read_some(p + got, n - got, left);
            if (k == 0)
                throw error(errc::io_error, describe() + ": end of stream after " +
                                                std::to_string(got) + " of " + std::to_string(n) +
                                                " bytes");
            got += k;
        }
    }
};

// A connected TCP socket. Owns its descriptor.
class TcpConnection final : public Stream {
  public:
    // Takes ownership of a connected socket descriptor.
    explicit TcpConnection(int fd) : fd_(fd) {
        if (fd_ < 0) throw error(errc::invalid_argument, "TcpConnection: invalid descriptor");
        int one = 1;
        ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        set_nonblocking(fd_);
    }
    ~TcpConnection() override {
        if (fd_ >= 0) ::close(fd_);
    }
    TcpConnection(const TcpConnection&) = delete;
    TcpConnection& operator=(const TcpConnection&) = delete;

    // Connects within `timeout`. Throws errc::timeout or errc::io_error naming the peer.
    static std::unique_ptr<TcpConnection> connect(const Endpoint& to, Millis timeout) {
        sockaddr_storage ss{};
        socklen_t len = to_sockaddr(to, ss);
        int fd = ::socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            throw error(errc::io_error,
                        "socket() for " + to.to_string() + ": " + socket_error_text(errno));
        FdGuard guard{fd};
        set_nonblocking(fd);
        auto deadline = deadline_after(timeout);
        if (::connect(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
            if (errno != EINPROGRESS)
                throw error(errc::io_error,
                            "connect to " + to.to_string() + ": " + socket_error_text(errno));
            for (;;) {
                pollfd p{fd, POLLOUT, 0};
                int r = ::poll(&p, 1, millis_until(deadline));
                if (r < 0 && errno == EINTR) continue;
                if (r == 0)
                    throw error(errc::timeout, "connect to " + to.to_string() + ": timed out");
                if (r < 0)
                    throw error(errc::io_error,
                                "connect to " + to.to_string() + ": " + socket_error_text(errno));
                break;
            }
            int err = 0;
            socklen_t el = sizeof err;
            ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
            if (err != 0)
                throw error(errc::io_error,
                            "connect to " + to.to_string() + ": " + socket_error_text(err));
        }
        guard.fd = -1;
        return std::make_unique<TcpConnection>(fd);
    }

    std::size_t read_some(void* buf, std::size_t n, Millis timeout) override {
        if (n == 0) return 0;
        auto deadline = deadline_after(timeout);
        for (;;) {
            if (closed_.load()) throw error(errc::state_error, describe() + ": closed");
            ssize_t k = ::recv(fd_, buf, n, 0);
            if (k >= 0) return static_cast<std::size_t>(k);
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                throw error(errc::io_error, describe() + ": read: " + socket_error_text(errno));
            wait(POLLIN, deadline, "read");
        }
    }

    void write_all(const void* buf, std::size_t n, Millis timeout) override {
        auto deadline = deadline_after(timeout);
        const auto* p = static_cast<const char*>(buf);
        while (n > 0) {
            if (closed_.load()) throw error(errc::state_error, describe() + ": closed");
            ssize_t k = ::send(fd_, p, n, MSG_NOSIGNAL);
            if (k > 0) {
                p += k;
                n -= static_cast<std::size_t>(k);
                continue;
            }
            if (k < 0 && errno == EINTR) continue;
            if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
                throw error(errc::io_error, describe() + ": write: " + socket_error_text(errno));
            wait(POLLOUT, deadline, "write");
        }
    }

    void shutdown_write() override { ::shutdown(fd_, SHUT_WR); }

    void close() noexcept override {
        if (!closed_.exchange(true)) ::shutdown(fd_, SHUT_RDWR);
    }

    std::string describe() const override {
        auto peer = remote_endpoint();
        return "tcp " + (peer ? peer->to_string() : std::string("(unconnected)"));
    }

    std::optional<Endpoint> local_endpoint() const { return name_of(fd_, false); }
    std::optional<Endpoint> remote_endpoint() const { return name_of(fd_, true); }
    int native_handle() const noexcept { return fd_; }

    static socklen_t to_sockaddr(const Endpoint& e, sockaddr_storage& ss) {
        std::memset(&ss, 0, sizeof ss);
        if (e.address.is_v4()) {
            auto* a = reinterpret_cast<sockaddr_in*>(&ss);
            a->sin_family = AF_INET;
            a->sin_port = htons(e.port);
            std::memcpy(&a->sin_addr, e.address.bytes(), 4);
            return sizeof *a;
        }
        auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
        a->sin6_family = AF_INET6;
        a->sin6_port = htons(e.port);
        std::memcpy(&a->sin6_addr, e.address.bytes(), 16);
        return sizeof *a;
    }

    static std::optional<Endpoint> from_sockaddr(const sockaddr_storage& ss) {
        if (ss.ss_family == AF_INET) {
            const auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
            std::uint8_t b[4];
            std::memcpy(b, &a->sin_addr, 4);
            return Endpoint{IpAddress::from_v4(b), ntohs(a->sin_port)};
        }
        if (ss.ss_family == AF_INET6) {
            const auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
            std::uint8_t b[16];
            std::memcpy(b, &a->sin6_addr, 16);
            // Through parse so that a v4-mapped address becomes the IPv4 host.
            auto ip = IpAddress::from_v6(b);
            auto canon = IpAddress::parse(ip.to_string());
            return Endpoint{canon ? *canon : ip, ntohs(a->sin6_port)};
        }
        return std::nullopt;
    }

  private:
    struct FdGuard {
        int fd;
        ~FdGuard() {
            if (fd >= 0) ::close(fd);
        }
    };

    static void set_nonblocking(int fd) {
        int fl = ::fcntl(fd, F_GETFL, 0);
        if (fl >= 0) ::fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    }

    static std::optional<Endpoint> name_of(int fd, bool peer) {
        sockaddr_storage ss{};
        socklen_t len = sizeof ss;
        int r = peer ? ::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len)
                     : ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
        if (r != 0) return std::nullopt;
        return from_sockaddr(ss);
    }

    void wait(short events, Clock::time_point deadline, const char* what) {
        for (;;) {
            pollfd p{fd_, events, 0};
            int r = ::poll(&p, 1, millis_until(deadline));
            if (r > 0) return;  // ready, or an error/hangup the next call will report
            if (r < 0 && errno == EINTR) continue;
            if (r == 0) throw error(errc::timeout, describe() + ": " + what + " timed out");
            throw error(errc::io_error, describe() + ": poll: " + socket_error_text(errno));
        }
    }

    int fd_;
    std::atomic<bool> closed_{false};
};

// A listening TCP socket.
class TcpListener {
  public:
    // Binds host:port (port 0 = any free port) and listens. Throws errc::io_error naming
    // the address when the bind fails.
    explicit TcpListener(const Endpoint& at, int backlog = 128) {
        sockaddr_storage ss{};
        socklen_t len = TcpConnection::to_sockaddr(at, ss);
        fd_ = ::socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd_ < 0)
            throw error(errc::io_error,
                        "socket() for " + at.to_string() + ": " + socket_error_text(errno));
        int one = 1;
        ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (at.address.is_v6()) ::setsockopt(fd_, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
        if (::bind(fd_, reinterpret_cast<sockaddr*>(&ss), len) != 0 ||
            ::listen(fd_, backlog) != 0) {
            int e = errno;
            ::close(fd_);
            throw error(errc::io_error,
                        "listen on " + at.to_string() + ": " + socket_error_text(e));
        }
        int fl = ::fcntl(fd_, F_GETFL, 0);
        ::fcntl(fd_, F_SETFL, fl | O_NONBLOCK);
        sockaddr_storage bound{};
        socklen_t bl = sizeof bound;
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&bound), &bl);
        auto b = TcpConnection::from_sockaddr(bound);
        local_ = b ? *b : at;
    }
    ~TcpListener() { ::close(fd_); }
    TcpListener(const TcpListener&) = delete;
    TcpListener& operator=(const TcpListener&) = delete;

    const Endpoint& local_endpoint() const noexcept { return local_; }
    std::uint16_t port() const noexcept { return local_.port; }

    // Waits up to `timeout` for a connection: nullptr on timeout; throws
    // errc::state_error once close() was called.
    std::unique_ptr<TcpConnection> accept(Millis timeout) {
        auto deadline = deadline_after(timeout);
        for (;;) {
            if (closed_.load())
                throw error(errc::state_error, "listener on " + local_.to_string() + " is closed");
            int fd = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
            if (fd >= 0) return std::make_unique<TcpConnection>(fd);
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK && !closed_.load())
                throw error(errc::io_error,
                            "accept on " + local_.to_string() + ": " + socket_error_text(errno));
            // Wake at least every 200 ms: shutdown() wakes poll on Linux, the slice makes
            // close() prompt elsewhere too.
            int left = millis_until(deadline);
            if (left == 0) return nullptr;
            pollfd p{fd_, POLLIN, 0};
            ::poll(&p, 1, left < 200 ? left : 200);
        }
    }

    // Stops accepting; a blocked accept() returns promptly. Idempotent, thread-safe.
    void close() noexcept {
        if (!closed_.exchange(true)) ::shutdown(fd_, SHUT_RDWR);
    }

  private:
    int fd_ = -1;
    Endpoint local_;
    std::atomic<bool> closed_{false};
};

}  // namespace p2prc::detail
