// The node's HTTP server, on cpp-httplib.
//
// Routes of its own: GET /server_info (machine facts), the speed test
// (GET /speedtest/download?bytes=N, POST /speedtest/upload) and P2PRC's names for it
// (GET /50, POST /upload). Higher layers add routes with get()/post() before start();
// their handlers see a plain HttpRequest (body already read, within the limit) and fill
// an HttpResponse. Every error answer is JSON: {"error": "..."}.
//
// cpp-httplib's read timeout is per receive, so a client that trickles a byte a second
// never trips it and holds a worker for as long as it likes; and its stop() waits for
// every connection to end by itself. It does not hand out the sockets it accepts, so the
// server finds each accepted connection right after accept() (the task queue is ours: it
// is told of every connection on the accepting thread) by looking for the one socket of
// the process that has the server's port as local port and is not yet known. With its own
// handle on the socket it can bound a request's total time (header_timeout,
// request_timeout) and shut every connection down at stop(). cpp-httplib serves one
// connection per worker thread for the connection's whole life, so two more rules keep
// workers for clients that talk: a connection reaches a worker only once its first bytes
// are in, and while connections wait for a worker, an idle one (kept alive, or stalled in
// its headers) gives its worker up after overload_idle_timeout.
//
// Linux only for these guards (they read /proc/self/fd); elsewhere the server still runs,
// bounded by cpp-httplib's own per-receive timeouts.
#pragma once

#include "address.hpp"
#include "error.hpp"
#include "sysinfo.hpp"
#include "version.hpp"

#include <httplib.h>
#include <nlohmann/json.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <regex>
#include <string>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace p2prc {

struct ServerOptions {
    std::string bind_address = "0.0.0.0";  // "::" for IPv6 (and IPv4 where the OS maps it)
    std::uint16_t port = 0;                // 0: pick a free port; Server::port() tells which
    std::string name;                      // reported in /server_info
    std::vector<std::string> advertised_addresses;  // reported in /server_info
    std::string disk_path = ".";                    // the filesystem /server_info reports
    std::string identity;  // the node's identity, reported in /server_info as "Identity"

    std::chrono::milliseconds read_timeout{5000};   // one receive
    std::chrono::milliseconds write_timeout{5000};  // one send
    // The request line and headers must be complete this long after the connection is
    // accepted (or, on a kept-alive connection, after keep_alive_timeout plus this long
    // after the previous answer). This is what stops a client trickling bytes.
    std::chrono::milliseconds header_timeout{10000};
    // One request, body and answer included, from its headers on; 0: no bound.
    std::chrono::milliseconds request_timeout{120000};
    std::size_t worker_threads = 16;            // connections served at once
    std::size_t max_queued_connections = 1024;  // open beyond those (more are closed at once)
    // While connections wait for a worker, a worker waiting this long on an idle
    // connection (kept alive, or with stalled headers) lets it go.
    std::chrono::milliseconds overload_idle_timeout{500};
    // A request line and headers together (cpp-httplib alone bounds each line only once
    // it has read all of it); 0: no bound.
    std::size_t max_header_bytes = 64u << 10;
    std::size_t max_body_bytes = 64u << 20;         // every route; 413 beyond
    std::uint64_t max_download_bytes = 256u << 20;  // one speed-test download
    std::size_t keep_alive_max_requests = 100;
    int listen_backlog = 512;
    std::chrono::milliseconds keep_alive_timeout{5000};
};

// A request as a route handler sees it: the body is read already (bounded by
// max_body_bytes); a multipart body is split into files.
struct HttpRequest {
    struct File {
        std::string name;  // the form field
        std::string filename;
        std::string content_type;
        std::string content;
    };
    std::string method;
    std::string path;
    std::multimap<std::string, std::string> params;  // query string
    std::vector<std::pair<std::string, std::string>> headers;
    std::string body;
    std::vector<File> files;
    std::string remote_address;  // as the socket reports it
    int remote_port = -1;
    std::optional<Endpoint> remote;  // the peer as an endpoint, when it parses

    // The first value of a header (case-insensitive), or "".
    std::string header(const std::string& name) const {
        auto lower = [](std::string s) {
            for (auto& c : s)
                if (c >= 'A' && c <= 'Z') c = char(c - 'A' + 'a');
            return s;
        };
        const std::string want = lower(name);
        for (const auto& [k, v] : headers)
            if (lower(k) == want) return v;
        return {};
    }
    std::optional<std::string> param(const std::string& key) const {
        auto it = params.find(key);
        if (it == params.end()) return std::nullopt;
        return it->second;
    }
};

struct HttpResponse {
    int status = 200;
    std::string body;
    std::string content_type = "application/json";
    std::vector<std::pair<std::string, std::string>> headers;

    void json(const nlohmann::json& value, int code = 200) {
        status = code;
        body = value.dump();
        content_type = "application/json";
    }
    void error(int code, const std::string& message) { json({{"error", message}}, code); }
};

using RouteHandler = std::function<void(const HttpRequest&, HttpResponse&)>;

// What the server saw; for tests and the CLI's status output.
struct ServerStats {
    std::uint64_t connections = 0;       // accepted connections the server tracked
    std::uint64_t header_timeouts = 0;   // cut for not sending their headers in time
    std::uint64_t request_timeouts = 0;  // cut for exceeding request_timeout
    std::uint64_t refused_queue_full = 0;
    std::uint64_t overload_cuts = 0;     // idle connections let go because others waited
    std::uint64_t header_overflows = 0;  // cut for sending more than max_header_bytes
};

namespace detail {

inline std::string json_error_body(const std::string& message) {
    return nlohmann::json{{"error", message}}.dump();
}

inline const char* status_text(int status) {
    switch (status) {
        case 400:
            return "bad request";
        case 404:
            return "no such route";
        case 405:
            return "method not allowed";
        case 408:
            return "request timeout";
        case 411:
            return "length required";
        case 413:
            return "request body too large";
        case 414:
            return "request URI too long";
        case 416:
            return "range not satisfiable";
        case 500:
            return "internal error";
        case 503:
            return "service unavailable";
        default:
            return status >= 500 ? "server error" : "client error";
    }
}

// "ip:port" exactly as cpp-httplib spells Request::remote_addr/remote_port.
inline std::string peer_key(const sockaddr_storage& sa, socklen_t len) {
    char host[NI_MAXHOST], serv[NI_MAXSERV];
    if (getnameinfo(reinterpret_cast<const sockaddr*>(&sa), len, host, sizeof host, serv,
                    sizeof serv, NI_NUMERICHOST | NI_NUMERICSERV) != 0)
        return {};
    return std::string(host) + "|" + serv;
}
inline std::string peer_key(const std::string& addr, int port) {
    return addr + "|" + std::to_string(port);
}

inline std::uint16_t sockaddr_port(const sockaddr_storage& sa) {
    if (sa.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in&>(sa).sin_port);
    if (sa.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6&>(sa).sin6_port);
    return 0;
}

// The server's own handle on each accepted connection (see the file comment).
class ConnectionRegistry {
  public:
    using Clock = std::chrono::steady_clock;

    // `listening` is the listening socket's address: a connection qualifies when its local
    // port is the same and, unless the server listens on a wildcard address, its local
    // address too (another server of the process may use the same port elsewhere).
    void reset(const sockaddr_storage& listening) {
        std::lock_guard<std::mutex> lock(mutex_);
        listening_ = listening;
        port_ = sockaddr_port(listening);
        foreign_.clear();
        closed_ = false;
        ignored_.clear();
    }

    // Called on the accepting thread right after accept(): finds the new connection.
    // Returns its id (the socket's inode), or 0 when it could not be found (no /proc,
    // or the peer already went away).
    //
    // Exactly one socket qualifies at that moment: the accepting thread adopts each
    // connection before it accepts the next, and every socket that is not adopted is
    // remembered as not to be adopted. TSan reports the scan's fstat() on descriptors of
    // other threads as races on descriptors; they are reads of kernel state, not memory.
    std::uint64_t adopt() {
        DIR* dir = opendir("/proc/self/fd");
        if (!dir) return 0;
        std::uint64_t found = 0;
        int found_fd = -1;
        std::string key;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            while (dirent* e = readdir(dir)) {
                if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
                int fd = std::atoi(e->d_name);
                if (fd == dirfd(dir)) continue;
                struct stat st {};
                if (fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
                auto ino = static_cast<std::uint64_t>(st.st_ino);
                if (conns_.count(ino) || ignored_.count(ino) || foreign_.count(ino)) continue;
                sockaddr_storage local{}, peer{};
                socklen_t ll = sizeof local, pl = sizeof peer;
                if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &ll) != 0) continue;
                if ((local.ss_family != AF_INET && local.ss_family != AF_INET6) ||
                    sockaddr_port(local) != port_ || !same_local_address(local)) {
                    // Bound elsewhere (a client socket, another server): never ours. Kept
                    // so a process with many sockets pays for each one once, not per accept.
                    if (local.ss_family == AF_UNIX || sockaddr_port(local) != 0) {
                        if (foreign_.size() >= 65536) foreign_.clear();
                        foreign_.insert(ino);
                    }
                    continue;
                }
                if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &pl) != 0) {
                    // The listening socket, or a connection whose peer is gone already:
                    // never a candidate again, so a later accept cannot be confused with it.
                    forget(ino);
                    continue;
                }
                found = ino;
                found_fd = fd;
                key = peer_key(peer, pl);
                break;
            }
            closedir(dir);
            if (!found) return 0;
            // Our own descriptor for the socket: shutting it down can never hit a
            // descriptor number that the server closed and the process reused.
            int own = fcntl(found_fd, F_DUPFD_CLOEXEC, 0);
            if (own < 0) {
                forget(found);  // out of descriptors: serve it untracked
                return 0;
            }
            int one = 1;
            setsockopt(own, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            Conn c;
            c.fd = own;
            c.key = key;
            c.since = Clock::now();
            conns_[found] = c;
            by_peer_[key] = found;
            ++stats_.connections;
            if (closed_) {
                ::shutdown(own, SHUT_RDWR);
            } else if (max_pending_ && conns_.size() > max_pending_ + max_active_) {
                ::shutdown(own, SHUT_RDWR);  // too many: the worker will find it closed at once
                ++stats_.refused_queue_full;
            }
        }
        return found;
    }

    // The connection's own descriptor (valid until release), or -1.
    int fd_of(std::uint64_t id) const {
        std::lock_guard<std::mutex> lock(mutex_);
        auto it = conns_.find(id);
        return it == conns_.end() ? -1 : it->second.fd;
    }

    // Handed to the worker queue (its first bytes are in).
    void dispatched(std::uint64_t id) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (conns_.count(id)) ++pending_;
    }
    // A worker took it.
    void started(std::uint64_t id) {
        std::lock_guard<std::mutex> lock(mutex_);
        auto it = conns_.find(id);
        if (it == conns_.end()) return;
        if (pending_) --pending_;
        it->second.started = true;
        it->second.started_at = Clock::now();
    }

    // The worker is done with the connection (cpp-httplib has shut and closed it).
    void release(std::uint64_t id) {
        std::lock_guard<std::mutex> lock(mutex_);
        auto it = conns_.find(id);
        if (it == conns_.end()) return;
        ::close(it->second.fd);
        auto p = by_peer_.find(it->second.key);
        if (p != by_peer_.end() && p->second == id) by_peer_.erase(p);
        conns_.erase(it);
    }

    // Headers of a request are in; its handler runs.
    void request_started(const std::string& key) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (Conn* c = find(key)) {
            c->active = true;
            c->since = Clock::now();
        }
    }
    // Its answer is written; the connection waits for the next request.
    void request_done(const std::string& key, bool close_after) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (Conn* c = find(key)) {
            c->active = false;
            c->served = true;
            c->since = Clock::now();
            c->consumed_mark = consumed_bytes(c->fd);
            // An answer given without reading the body (413, 404): the unread bytes must
            // not be parsed as the next request.
            if (close_after) ::shutdown(c->fd, SHUT_RDWR);
        }
    }

    // Cuts connections over their time. Called periodically by the server's watchdog.
    // Under load (connections wait for a worker), a worker that waits on a connection for
    // longer than `overload_idle` (an idle keep-alive, or headers that stall) lets it go.
    void enforce(std::chrono::milliseconds header_timeout, std::chrono::milliseconds keep_alive,
                 std::chrono::milliseconds request_timeout, std::chrono::milliseconds overload_idle,
                 std::size_t max_header_bytes) {
        std::lock_guard<std::mutex> lock(mutex_);
        const auto now = Clock::now();
        const bool overloaded = pending_ > 0;
        for (auto& [id, c] : conns_) {
            if (c.cut) continue;
            auto age = now - c.since;
            if (overloaded && c.started && !c.active &&
                now - std::max(c.since, c.started_at) > overload_idle) {
                ::shutdown(c.fd, SHUT_RDWR);
                c.cut = true;
                ++stats_.overload_cuts;
                continue;
            }
            if (!c.active) {
                auto limit =
                    header_timeout + (c.served ? keep_alive : std::chrono::milliseconds(0));
                if (age > limit) {
                    ::shutdown(c.fd, SHUT_RDWR);
                    c.cut = true;
                    ++stats_.header_timeouts;
                    continue;
                }
                // cpp-httplib keeps reading a request line or header line until its end,
                // however long: bound what a connection may make it read before a request
                // starts (its read-ahead buffer is 4 KiB).
                auto consumed = consumed_bytes(c.fd);
                const std::uint64_t mark = c.consumed_mark.value_or(0);
                if (max_header_bytes && consumed && *consumed > mark &&
                    *consumed - mark > max_header_bytes + 4096) {
                    ::shutdown(c.fd, SHUT_RDWR);
                    c.cut = true;
                    ++stats_.header_overflows;
                }
            } else if (request_timeout.count() > 0 && age > request_timeout) {
                ::shutdown(c.fd, SHUT_RDWR);
                c.cut = true;
                ++stats_.request_timeouts;
            }
        }
    }

    // Shuts every connection down, now and from now on (stop()).
    void close_all() {
        std::lock_guard<std::mutex> lock(mutex_);
        closed_ = true;
        for (auto& [id, c] : conns_) ::shutdown(c.fd, SHUT_RDWR);
    }

    void set_limits(std::size_t max_pending, std::size_t max_active) {
        std::lock_guard<std::mutex> lock(mutex_);
        max_pending_ = max_pending;
        max_active_ = max_active;
    }
    ServerStats stats() const {
        std::lock_guard<std::mutex> lock(mutex_);
        return stats_;
    }
    std::size_t open_connections() const {
        std::lock_guard<std::mutex> lock(mutex_);
        return conns_.size();
    }

    ~ConnectionRegistry() {
        for (auto& [id, c] : conns_) ::close(c.fd);
    }

  private:
    struct Conn {
        int fd = -1;
        std::string key;
        Clock::time_point since;
        bool active = false;
        bool served = false;
        bool cut = false;
        bool started = false;
        Clock::time_point started_at{};
        std::optional<std::uint64_t> consumed_mark;  // bytes read when the wait began
    };

    // Bytes the server has read from the socket so far: what TCP received minus what
    // still waits in the socket. nullopt where the kernel does not say (before Linux 4.1).
    static std::optional<std::uint64_t> consumed_bytes(int fd) {
        // struct tcp_info as the kernel defines it (append-only ABI): tcpi_bytes_received
        // is the u64 at offset 128. glibc's own struct stops before it.
        alignas(8) unsigned char info[256] = {};
        socklen_t len = sizeof info;
        if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, info, &len) != 0 || len < 136)
            return std::nullopt;
        std::uint64_t received = 0;
        std::memcpy(&received, info + 128, sizeof received);
        int queued = 0;
        if (ioctl(fd, FIONREAD, &queued) != 0 || queued < 0) return std::nullopt;
        return received >= std::uint64_t(queued) ? received - std::uint64_t(queued) : 0;
    }

    bool same_local_address(const sockaddr_storage& local) const {
        if (listening_.ss_family == AF_INET) {
            const auto& l = reinterpret_cast<const sockaddr_in&>(listening_);
            if (l.sin_addr.s_addr == htonl(INADDR_ANY)) return true;
            return local.ss_family == AF_INET &&
                   reinterpret_cast<const sockaddr_in&>(local).sin_addr.s_addr == l.sin_addr.s_addr;
        }
        if (listening_.ss_family == AF_INET6) {
            const auto& l = reinterpret_cast<const sockaddr_in6&>(listening_);
            if (IN6_IS_ADDR_UNSPECIFIED(&l.sin6_addr)) return true;
            return local.ss_family == AF_INET6 &&
                   std::memcmp(&reinterpret_cast<const sockaddr_in6&>(local).sin6_addr,
                               &l.sin6_addr, sizeof l.sin6_addr) == 0;
        }
        return true;
    }

    // Bounded: after many forgotten sockets the set restarts (closed sockets' inode
    // numbers are not reused soon, and the listening socket is simply found again).
    void forget(std::uint64_t ino) {
        if (ignored_.size() >= 4096) ignored_.clear();
        ignored_.insert(ino);
    }

    Conn* find(const std::string& key) {
        auto p = by_peer_.find(key);
        if (p == by_peer_.end()) return nullptr;
        auto it = conns_.find(p->second);
        return it == conns_.end() ? nullptr : &it->second;
    }

    mutable std::mutex mutex_;
    std::uint16_t port_ = 0;
    sockaddr_storage listening_{};
    bool closed_ = false;
    std::size_t pending_ = 0;
    std::size_t max_pending_ = 0;
    std::size_t max_active_ = 0;
    std::unordered_map<std::uint64_t, Conn> conns_;
    std::unordered_map<std::string, std::uint64_t> by_peer_;
    std::unordered_set<std::uint64_t> ignored_;
    std::unordered_set<std::uint64_t> foreign_;
    ServerStats stats_;
};

// cpp-httplib's thread pool, told of each connection as it is queued, with a gate in
// front: a connection goes to a worker only once its first bytes are in (or it closed),
// so connections that open and send nothing never hold a worker. TaskQueue::enqueue
// returns void in older cpp-httplib and bool in newer; the override follows the base.
class WatchedPool : public httplib::TaskQueue {
    using EnqueueResult =
        decltype(std::declval<httplib::TaskQueue&>().enqueue(std::function<void()>()));

  public:
    WatchedPool(std::size_t threads, ConnectionRegistry& registry)
        : pool_(threads), registry_(registry) {
        if (pipe2(wake_, O_CLOEXEC | O_NONBLOCK) != 0) wake_[0] = wake_[1] = -1;
        if (wake_[0] >= 0) gate_ = std::thread([this] { gate_loop(); });
    }
    ~WatchedPool() override {
        stop_gate();
        if (wake_[0] >= 0) {
            ::close(wake_[0]);
            ::close(wake_[1]);
        }
    }

    EnqueueResult enqueue(std::function<void()> fn) override {
        std::uint64_t id = registry_.adopt();
        int fd = id ? registry_.fd_of(id) : -1;
        if (fd < 0 || !gate_.joinable()) {
            dispatch(id, std::move(fn));
        } else {
            {
                std::lock_guard<std::mutex> lock(mutex_);
                gated_.push_back({id, fd, std::move(fn)});
            }
            char c = 1;
            (void)!::write(wake_[1], &c, 1);
        }
        if constexpr (!std::is_void_v<EnqueueResult>) return EnqueueResult(true);
    }
    void shutdown() override {
        stop_gate();
        pool_.shutdown();
    }

  private:
    struct Gated {
        std::uint64_t id;
        int fd;
        std::function<void()> fn;
    };

    void dispatch(std::uint64_t id, std::function<void()> fn) {
        ConnectionRegistry* reg = &registry_;
        if (id) reg->dispatched(id);
        pool_.enqueue([fn = std::move(fn), id, reg]() {
            reg->started(id);
            fn();
            reg->release(id);
        });
    }

    void gate_loop() {
        std::vector<pollfd> fds;
        std::vector<Gated> ready;
        for (;;) {
            fds.clear();
            fds.push_back({wake_[0], POLLIN, 0});
            {
                std::lock_guard<std::mutex> lock(mutex_);
                if (gate_stop_) break;
                for (const auto& g : gated_) fds.push_back({g.fd, POLLIN, 0});
            }
            int n = ::poll(fds.data(), fds.size(), 100);
            if (n < 0 && errno != EINTR) break;
            if (fds[0].revents) {
                char buf[256];
                while (::read(wake_[0], buf, sizeof buf) > 0) {
                }
            }
            std::unordered_set<int> readable;
            for (std::size_t i = 1; i < fds.size(); ++i)
                if (fds[i].revents) readable.insert(fds[i].fd);
            {
                std::lock_guard<std::mutex> lock(mutex_);
                for (auto it = gated_.begin(); it != gated_.end();) {
                    if (readable.count(it->fd)) {
                        ready.push_back(std::move(*it));
                        it = gated_.erase(it);
                    } else {
                        ++it;
                    }
                }
            }
            for (auto& g : ready) dispatch(g.id, std::move(g.fn));
            ready.clear();
        }
        // Stopping: every connection still at the gate goes to the workers, which find
        // it shut down (stop() shut every connection) and close it.
        std::lock_guard<std::mutex> lock(mutex_);
        for (auto& g : gated_) dispatch(g.id, std::move(g.fn));
        gated_.clear();
    }

    void stop_gate() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            gate_stop_ = true;
        }
        if (wake_[1] >= 0) {
            char c = 1;
            (void)!::write(wake_[1], &c, 1);
        }
        if (gate_.joinable()) gate_.join();
    }

    httplib::ThreadPool pool_;
    ConnectionRegistry& registry_;
    std::mutex mutex_;
    std::vector<Gated> gated_;
    bool gate_stop_ = false;
    int wake_[2] = {-1, -1};
    std::thread gate_;
};

// cpp-httplib's listening socket, to widen its accept queue: the compiled-in backlog can
// be as small as 5, and a burst of connections beyond it waits for SYN retransmits.
class HttpServer : public httplib::Server {
  public:
    void set_backlog(int backlog) {
        socket_t sock = svr_sock_;
        if (sock != INVALID_SOCKET) ::listen(sock, backlog);
    }
    sockaddr_storage listening_address() const {
        sockaddr_storage a{};
        socklen_t len = sizeof a;
        socket_t sock = svr_sock_;
        if (sock != INVALID_SOCKET) getsockname(sock, reinterpret_cast<sockaddr*>(&a), &len);
        return a;
    }
};

inline std::string regex_escape(const std::string& s) {
    std::string out;
    for (char c : s) {
        if (std::string_view("\\^$.|?*+()[]{}").find(c) != std::string_view::npos) out += '\\';
        out += c;
    }
    return out;
}


}  // namespace detail

class Server {
  public:
    // P2PRC's GET /50 serves a 50 MB file.
    static constexpr std::uint64_t p2prc_download_bytes = 50ull * 1000 * 1000;

    explicit Server(ServerOptions options = {}) : options_(std::move(options)) {
        if (options_.worker_threads == 0)
            throw error(errc::invalid_argument,
                        "ServerOptions::worker_threads is 0: expected at least 1");
        if (options_.max_body_bytes == 0)
            throw error(errc::invalid_argument,
                        "ServerOptions::max_body_bytes is 0: expected at least 1");
        pattern_.resize(64 * 1024);
        // Incompressible-looking bytes, so no layer on the way can shrink the test.
        std::uint32_t x = 0x9e3779b9u;
        for (auto& c : pattern_) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            c = static_cast<char>(x & 0xff);
        }
        for (const char* path : {"/server_info", "/speedtest/download", "/50"})
            routes_[path].builtin_get = true;
        for (const char* path : {"/speedtest/upload", "/upload"}) routes_[path].builtin_post = true;
    }
    ~Server() { stop(); }
    Server(const Server&) = delete;
    Server& operator=(const Server&) = delete;

    // Adds a route (an exact path). Only before start(); a path may have a GET and a POST.
    Server& get(const std::string& path, RouteHandler handler) {
        return add("GET", path, std::move(handler));
    }
    Server& post(const std::string& path, RouteHandler handler) {
        return add("POST", path, std::move(handler));
    }

    // Binds and starts serving on an owned thread; returns once the socket is bound and
    // the accept loop runs. Throws p2prc::error (io_error) when the address cannot be bound.
    void start() {
        std::lock_guard<std::mutex> lock(control_);
        if (http_) throw error(errc::state_error, "server already started");
        http_ = std::make_unique<detail::HttpServer>();
        configure(*http_);
        int port = 0;
        errno = 0;
        if (options_.port == 0) {
            port = http_->bind_to_any_port(options_.bind_address);
        } else {
            port = http_->bind_to_port(options_.bind_address, options_.port) ? options_.port : -1;
        }
        if (port <= 0) {
            int e = errno;
            http_.reset();
            throw error(errc::io_error,
                        "cannot bind the HTTP server to " + options_.bind_address + " port " +
                            std::to_string(options_.port) +
                            (e ? std::string(": ") + std::strerror(e) : std::string()));
        }
        port_ = static_cast<std::uint16_t>(port);
        http_->set_backlog(options_.listen_backlog);
        info_ = build_info(port_);
        registry_.reset(http_->listening_address());
        registry_.set_limits(options_.max_queued_connections, options_.worker_threads);
        stopping_ = false;
        httplib::Server* h = http_.get();
        listener_ = std::thread([h] { h->listen_after_bind(); });
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        while (!h->is_running() && std::chrono::steady_clock::now() < deadline)
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        watchdog_ = std::thread([this] { watch(); });
        running_ = h->is_running();
        if (!running_) {
            stop_locked();
            throw error(errc::io_error, "the HTTP server did not start listening within 10 s");
        }
    }

    // Stops accepting, shuts every connection down and joins every thread. Prompt even
    // with clients connected. Idempotent.
    void stop() {
        std::lock_guard<std::mutex> lock(control_);
        stop_locked();
    }

    bool running() const { return running_; }
    // The bound port (after start()), 0 before.
    std::uint16_t port() const { return port_; }
    const ServerOptions& options() const { return options_; }
    // The /server_info document.
    nlohmann::json info() const {
        return nlohmann::json::parse(info_.empty() ? build_info(port_) : info_);
    }
    ServerStats stats() const { return registry_.stats(); }
    std::size_t open_connections() const { return registry_.open_connections(); }

  private:
    struct Route {
        RouteHandler get;
        RouteHandler post;
        bool builtin_get = false;
        bool builtin_post = false;
    };

    Server& add(const std::string& method, const std::string& path, RouteHandler handler) {
        std::lock_guard<std::mutex> lock(control_);
        if (http_) throw error(errc::state_error, "routes must be added before start(): " + path);
        if (path.empty() || path[0] != '/')
            throw error(errc::invalid_argument,
                        "route path \"" + path + "\": expected an absolute path");
        if (!handler) throw error(errc::invalid_argument, "route " + path + ": empty handler");
        auto& r = routes_[path];
        if (method == "GET") {
            if (r.builtin_get) throw error(errc::invalid_argument, "GET " + path + " is built in");
            r.get = std::move(handler);
        } else {
            if (r.builtin_post)
                throw error(errc::invalid_argument, "POST " + path + " is built in");
            r.post = std::move(handler);
        }
        return *this;
    }

    std::string build_info(std::uint16_t port) const {
        auto j = system_info(options_.disk_path).to_json();
        j["Name"] = options_.name;
        j["Version"] = P2PRC_VERSION_STRING;
        j["ServerPort"] = std::to_string(port);
        j["Addresses"] = options_.advertised_addresses;
        j["MaxBodyBytes"] = options_.max_body_bytes;
        j["MaxDownloadBytes"] = options_.max_download_bytes;
        if (!options_.identity.empty()) j["Identity"] = options_.identity;  // Go nodes ignore it
        return j.dump();
    }

    static long ms_part_sec(std::chrono::milliseconds d) {
        return static_cast<long>(d.count() / 1000);
    }
    static long ms_part_usec(std::chrono::milliseconds d) {
        return static_cast<long>((d.count() % 1000) * 1000);
    }

    void configure(httplib::Server& h) {
        h.set_tcp_nodelay(true);
        // cpp-httplib's default options add SO_REUSEPORT, which would let a second node
        // bind the same port and silently take half its connections. Address reuse only.
        h.set_socket_options([](socket_t sock) {
            int one = 1;
            setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        });
        h.set_read_timeout(ms_part_sec(options_.read_timeout), ms_part_usec(options_.read_timeout));
        h.set_write_timeout(ms_part_sec(options_.write_timeout),
                            ms_part_usec(options_.write_timeout));
        h.set_keep_alive_max_count(options_.keep_alive_max_requests);
        // cpp-httplib takes whole seconds here; round up so a short setting is not 0.
        h.set_keep_alive_timeout(
            static_cast<time_t>((options_.keep_alive_timeout.count() + 999) / 1000));
        h.set_payload_max_length(options_.max_body_bytes);
        const std::size_t threads = options_.worker_threads;
        detail::ConnectionRegistry* reg = &registry_;
        h.new_task_queue = [threads, reg] { return new detail::WatchedPool(threads, *reg); };

        httplib::Server::HandlerWithResponse pre = [this](const httplib::Request& req,
                                                          httplib::Response& res) {
            return pre_route(req, res);
        };
        h.set_pre_routing_handler(pre);
        httplib::Server::HandlerWithResponse on_error = [](const httplib::Request&,
                                                           httplib::Response& res) {
            if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
            res.set_content(detail::json_error_body(detail::status_text(res.status)),
                            "application/json");
            return httplib::Server::HandlerResponse::Handled;
        };
        h.set_error_handler(on_error);
        h.set_exception_handler(
            [](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
                res.status = 500;
                res.set_content(detail::json_error_body("internal error"), "application/json");
            });
        h.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
            bool close_after = res.get_header_value("Connection") == "close";
            registry_.request_done(detail::peer_key(req.remote_addr, req.remote_port), close_after);
        });

        // Built-in routes.
        builtin_get("/server_info", [this](const httplib::Request&, httplib::Response& res) {
            res.set_content(info_, "application/json");
        });
        builtin_get("/speedtest/download", [this](const httplib::Request& req,
                                                  httplib::Response& res) {
            if (!req.has_param("bytes")) {
                res.status = 400;
                res.set_content(detail::json_error_body("missing query parameter bytes=N"),
                                "application/json");
                return;
            }
            auto n = detail::parse_decimal_u64(req.get_param_value("bytes"));
            if (!n) {
                res.status = 400;
                res.set_content(
                    detail::json_error_body("bytes=" + req.get_param_value("bytes").substr(0, 40) +
                                            ": expected a decimal byte count"),
                    "application/json");
                return;
            }
            serve_bytes(res, *n);
        });
        builtin_get("/50", [this](const httplib::Request&, httplib::Response& res) {
            serve_bytes(res, p2prc_download_bytes);
        });
        for (const char* path : {"/speedtest/upload", "/upload"}) {
            builtin_post(
                path, [this](const httplib::Request& req, httplib::Response& res,
                             const httplib::ContentReader& reader) { upload(req, res, reader); });
        }

        // Routes of higher layers.
        for (auto& [path, route] : routes_) {
            const std::string pattern = detail::regex_escape(path);
            if (route.get && !route.builtin_get) {
                RouteHandler handler = route.get;
                h.Get(pattern, [handler](const httplib::Request& req, httplib::Response& res) {
                    HttpRequest r = convert(req);
                    run_handler(handler, r, res);
                });
            }
            if (route.post && !route.builtin_post) {
                RouteHandler handler = route.post;
                const std::size_t max = options_.max_body_bytes;
                h.Post(pattern, [handler, max](const httplib::Request& req, httplib::Response& res,
                                               const httplib::ContentReader& reader) {
                    HttpRequest r = convert(req);
                    std::size_t total = 0;
                    bool over = false;
                    bool ok;
                    if (req.is_multipart_form_data()) {
                        ok = reader(
                            [&](const auto&
                                    f) {  // a form part (its type is named differently by version)
                                if (r.files.size() >= 64) return false;
                                r.files.push_back({f.name, f.filename, f.content_type, {}});
                                return true;
                            },
                            [&](const char* data, std::size_t n) {
                                total += n;
                                if (total > max) return !(over = true);
                                if (!r.files.empty()) r.files.back().content.append(data, n);
                                return true;
                            });
                    } else {
                        ok = reader([&](const char* data, std::size_t n) {
                            total += n;
                            if (total > max) return !(over = true);
                            r.body.append(data, n);
                            return true;
                        });
                    }
                    if (over) return too_large(res, max);
                    if (!ok) {
                        res.status = 400;
                        res.set_content(detail::json_error_body("could not read the request body"),
                                        "application/json");
                        return;
                    }
                    run_handler(handler, r, res);
                });
            }
        }
    }

    void builtin_get(const std::string& path, httplib::Server::Handler h) {
        http_->Get(detail::regex_escape(path), std::move(h));
    }
    void builtin_post(const std::string& path, httplib::Server::HandlerWithContentReader h) {
        http_->Post(detail::regex_escape(path), std::move(h));
    }

    static void too_large(httplib::Response& res, std::size_t max) {
        res.status = 413;
        res.set_header("Connection", "close");
        res.set_content(detail::json_error_body("request body larger than the limit of " +
                                                std::to_string(max) + " bytes"),
                        "application/json");
    }

    // Decides what cpp-httplib must not do itself: answer unknown routes and wrong
    // methods as JSON, and refuse a declared body over the limit before reading it.
    httplib::Server::HandlerResponse pre_route(const httplib::Request& req,
                                               httplib::Response& res) {
        registry_.request_started(detail::peer_key(req.remote_addr, req.remote_port));
        auto it = routes_.find(req.path);
        const bool has_body =
            req.has_header("Content-Length") || req.has_header("Transfer-Encoding");
        auto reject = [&](int status, const std::string& message) {
            res.status = status;
            if (has_body) res.set_header("Connection", "close");
            res.set_content(detail::json_error_body(message), "application/json");
            return httplib::Server::HandlerResponse::Handled;
        };
        if (it == routes_.end()) return reject(404, "no such route: " + req.path.substr(0, 200));
        const Route& r = it->second;
        const bool is_get = req.method == "GET" || req.method == "HEAD";
        const bool is_post = req.method == "POST";
        if (!((is_get && (r.get || r.builtin_get)) || (is_post && (r.post || r.builtin_post)))) {
            std::string allow = (r.get || r.builtin_get) ? "GET" : "";
            if (r.post || r.builtin_post) allow += allow.empty() ? "POST" : ", POST";
            res.set_header("Allow", allow);
            return reject(405,
                          req.method.substr(0, 20) + " not allowed on " + req.path.substr(0, 200));
        }
        if (req.has_header("Content-Length")) {
            auto n = detail::parse_decimal_u64(req.get_header_value("Content-Length"));
            if (!n) return reject(400, "invalid Content-Length");
            if (*n > options_.max_body_bytes) {
                too_large(res, options_.max_body_bytes);
                return httplib::Server::HandlerResponse::Handled;
            }
        }
        return httplib::Server::HandlerResponse::Unhandled;
    }

    static HttpRequest convert(const httplib::Request& req) {
        HttpRequest r;
        r.method = req.method;
        r.path = req.path;
        for (const auto& [k, v] : req.params) r.params.emplace(k, v);
        for (const auto& [k, v] : req.headers) {
            if (k == "REMOTE_ADDR" || k == "REMOTE_PORT" || k == "LOCAL_ADDR" || k == "LOCAL_PORT")
                continue;
            r.headers.emplace_back(k, v);
        }
        r.remote_address = req.remote_addr;
        r.remote_port = req.remote_port;
        auto a = IpAddress::parse(req.remote_addr);
        if (a && req.remote_port > 0 && req.remote_port <= 65535)
            r.remote = Endpoint{*a, static_cast<std::uint16_t>(req.remote_port)};
        return r;
    }

    static void run_handler(const RouteHandler& handler, const HttpRequest& r,
                            httplib::Response& res) {
        HttpResponse out;
        try {
            handler(r, out);
        } catch (const p2prc::error& e) {
            int status = e.code() == errc::limit_exceeded ? 413
                         : (e.code() == errc::parse_error || e.code() == errc::invalid_argument)
                             ? 400
                             : 500;
            out.error(status, e.what());
        } catch (const std::exception& e) {
            out.error(500, std::string("internal error: ") + e.what());
        }
        res.status = out.status;
        for (const auto& [k, v] : out.headers) res.set_header(k, v);
        res.set_content(out.body, out.content_type);
    }

    // Streams n generated bytes (at most max_download_bytes), never from a file.
    void serve_bytes(httplib::Response& res, std::uint64_t n) {
        n = std::min<std::uint64_t>(n, options_.max_download_bytes);
        res.set_header("Cache-Control", "no-store");
        if (n == 0) {
            res.set_content("", "application/octet-stream");
            return;
        }
        res.set_content_provider(
            static_cast<std::size_t>(n), "application/octet-stream",
            [this](std::size_t offset, std::size_t length, httplib::DataSink& sink) {
                if (stopping_) return false;
                const std::size_t at = offset % pattern_.size();
                const std::size_t len = std::min(length, pattern_.size() - at);
                return sink.write(pattern_.data() + at, len);
            });
    }

    // Reads and discards the body, counting bytes as they arrive. Answers
    // {"bytes", "seconds"} (first to last byte) and, with ?warmup_ms=W, the same for the
    // bytes that arrived W ms after the first one ("measured_bytes", "measured_seconds").
    void upload(const httplib::Request& req, httplib::Response& res,
                const httplib::ContentReader& reader) {
        using Clock = std::chrono::steady_clock;
        std::uint64_t warmup_ms = 0;
        if (req.has_param("warmup_ms")) {
            auto w = detail::parse_decimal_u64(req.get_param_value("warmup_ms"));
            if (!w || *w > 60000) {
                res.status = 400;
                res.set_content(detail::json_error_body("warmup_ms: expected 0-60000"),
                                "application/json");
                return;
            }
            warmup_ms = *w;
        }
        const std::size_t max = options_.max_body_bytes;
        std::uint64_t total = 0, measured = 0;
        bool over = false;
        Clock::time_point first{}, last{}, warm{};
        bool have_first = false, warmed = false;
        auto count = [&](std::size_t n) {
            if (stopping_) return false;
            auto now = Clock::now();
            if (!have_first) {
                have_first = true;
                first = now;
                warm = first + std::chrono::milliseconds(warmup_ms);
            }
            total += n;
            last = now;
            if (!warmed && now >= warm) {
                warmed = true;
                warm = now;  // the window starts at the first chunk after the warm-up
            } else if (warmed) {
                measured += n;
            }
            if (total > max) return !(over = true);
            return true;
        };
        bool ok;
        if (req.is_multipart_form_data()) {
            ok = reader([&](const auto&) { return true; },
                        [&](const char*, std::size_t n) { return count(n); });
        } else {
            ok = reader([&](const char*, std::size_t n) { return count(n); });
        }
        if (over) return too_large(res, max);
        if (!ok) {
            res.status = 400;
            res.set_content(detail::json_error_body("could not read the request body"),
                            "application/json");
            return;
        }
        auto secs = [](Clock::duration d) { return std::chrono::duration<double>(d).count(); };
        nlohmann::json j;
        j["bytes"] = total;
        j["seconds"] = have_first ? secs(last - first) : 0.0;
        j["measured_bytes"] = warmed ? measured : total;
        j["measured_seconds"] =
            warmed ? secs(last - warm) : (have_first ? secs(last - first) : 0.0);
        res.set_content(j.dump(), "application/json");
    }

    void watch() {
        std::unique_lock<std::mutex> lock(watch_mutex_);
        while (!watch_stop_) {
            watch_cv_.wait_for(lock, std::chrono::milliseconds(50));
            if (watch_stop_) break;
            registry_.enforce(options_.header_timeout, options_.keep_alive_timeout,
                              options_.request_timeout, options_.overload_idle_timeout,
                              options_.max_header_bytes);
        }
    }

    void stop_locked() {
        if (!http_) return;
        stopping_ = true;
        running_ = false;
        http_->stop();          // closes the listening socket: the accept loop ends
        registry_.close_all();  // every connection sees EOF: every worker ends
        if (listener_.joinable()) listener_.join();  // joins the workers too
        {
            std::lock_guard<std::mutex> lock(watch_mutex_);
            watch_stop_ = true;
        }
        watch_cv_.notify_all();
        if (watchdog_.joinable()) watchdog_.join();
        watch_stop_ = false;
        http_.reset();
    }

    ServerOptions options_;
    std::map<std::string, Route> routes_;
    std::string pattern_;
    std::string info_;
    std::uint16_t port_ = 0;
    std::atomic<bool> stopping_{false};
    std::atomic<bool> running_{false};
    detail::ConnectionRegistry registry_;
    std::unique_ptr<detail::HttpServer> http_;
    std::thread listener_;
    std::thread watchdog_;
    std::mutex control_;
    std::mutex watch_mutex_;
    std::condition_variable watch_cv_;
    bool watch_stop_ = false;
};

}  // namespace p2prc
