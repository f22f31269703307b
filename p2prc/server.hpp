// The node's HTTP server, on cpp-httplib.
//
// Routes of its own: GET /server_info (machine facts), the speed test
// (GET /speedtest/download?bytes=N, POST /speedtest/upload) and P2PRC's names for it
// (GET /50, POST /upload). Higher layers add routes with get()/post() before start();
// their handlers see a plain HttpRequest (body already read, within the limit) and fill
// an HttpResponse. Every error answer is JSON: {"error": "..."}.
//
// cpp-httplib's read timeout is per receive, so a client that trickles a byte a second
// never trips it; it serves one connection per worker thread for the connection's whole
// life; and it does not hand out the sockets it accepts. So the server keeps its own
// record of every connection (ConnectionRegistry): each accepted socket is learnt from
// cpp-httplib's own task (HttpServer::socket_of) on the accepting thread, and served by
// a connection loop of ours (HttpServer::process_and_close_socket) that reads through
// ConnStream. With that the server bounds:
//   - time: a header deadline from accept (header_timeout), a whole-request deadline
//     (request_timeout; upload routes have upload_timeout), enforced by a watchdog that
//     shuts the socket down;
//   - bytes: request line and headers together (max_header_bytes) and their count
//     (max_header_count), checked as cpp-httplib reads them; a body per route, from
//     Content-Length before reading and while reading a chunked body;
//   - connections: per address (IPv4 /32, IPv6 /64) open at once, and handed to a worker
//     before their headers are complete (more wait at the gate, holding no worker);
//   - workers: a connection reaches a worker only once its first bytes are in; while
//     every worker is taken, idle kept-alive connections give theirs up after
//     overload_idle_timeout, and a complete GET of a short route (/server_info, /whoami)
//     is served at once on a small lane of its own (short_threads), so those answers
//     never wait behind body-heavy routes.
// Where the platform lacks a piece (poll, MSG_PEEK), the server still runs on
// cpp-httplib's own per-receive timeouts; malloc_trim is glibc's.
#pragma once

#include "address.hpp"
#include "error.hpp"
#include "sysinfo.hpp"
#include "version.hpp"

#include <httplib.h>
#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

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
    std::chrono::milliseconds header_timeout{5000};
    // One request, body and answer included, from its headers on; 0: no bound.
    std::chrono::milliseconds request_timeout{5000};
    // The same for the upload routes (speed test), which move much data by design.
    std::chrono::milliseconds upload_timeout{120000};
    std::size_t worker_threads = 8;            // connections served at once
    std::size_t max_queued_connections = 256;  // open beyond those (more are closed at once)
    // The lane of the short routes: threads, and the GET routes it serves.
    std::size_t short_threads = 2;
    std::vector<std::string> short_routes{"/server_info", "/whoami"};
    // How long such a request waits for a main worker before it takes the lane.
    std::chrono::milliseconds short_lane_after{250};
    // Per address (IPv4 /32, IPv6 /64): connections open at once (more are closed at
    // once), and connections on a worker whose first request's headers are not complete
    // (more wait at the gate). 0: no bound.
    std::size_t max_connections_per_address = 256;
    std::size_t max_header_connections_per_address = 4;
    // While connections wait for a worker, a worker waiting this long on an idle
    // connection (kept alive, or with stalled headers) lets it go.
    std::chrono::milliseconds overload_idle_timeout{500};
    // A request line and headers together (cpp-httplib alone bounds each line only once
    // it has read all of it); 0: no bound.
    std::size_t max_header_bytes = 64u << 10;
    std::size_t max_header_count = 100;  // header lines of one request; 0: no bound
    // A POST body, where the route sets no limit of its own; 413 beyond. GET routes take
    // no body beyond max_get_body_bytes.
    std::size_t max_body_bytes = 64u << 20;
    std::size_t max_get_body_bytes = 4096;
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
    std::uint64_t overload_cuts = 0;        // idle connections let go because others waited
    std::uint64_t header_overflows = 0;     // cut for more than max_header_bytes / _count
    std::uint64_t refused_per_address = 0;  // closed over max_connections_per_address
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

// The bucket a per-address cap counts by: an IPv4 address (/32), or an IPv6 /64 (one
// host commonly owns a whole /64). An IPv4-mapped IPv6 address counts as its IPv4 one.
inline std::string address_bucket(const sockaddr_storage& sa) {
    if (sa.ss_family == AF_INET) {
        const auto& a = reinterpret_cast<const sockaddr_in&>(sa);
        return std::string(reinterpret_cast<const char*>(&a.sin_addr), 4);
    }
    if (sa.ss_family == AF_INET6) {
        const auto& a = reinterpret_cast<const sockaddr_in6&>(sa);
        const char* b = reinterpret_cast<const char*>(&a.sin6_addr);
        if (IN6_IS_ADDR_V4MAPPED(&a.sin6_addr)) return std::string(b + 12, 4);
        return std::string(b, 8) + "/64";
    }
    return {};
}

inline std::string numeric_host(const sockaddr_storage& sa, socklen_t len, int& port) {
    char host[NI_MAXHOST], serv[NI_MAXSERV];
    if (getnameinfo(reinterpret_cast<const sockaddr*>(&sa), len, host, sizeof host, serv,
                    sizeof serv, NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
        port = -1;
        return {};
    }
    port = std::atoi(serv);
    return host;
}

// The server's own record of each connection it serves (see the file comment). The
// server learns every socket from cpp-httplib itself, on the accepting thread, before any
// worker sees it; the socket stays open until the worker calls release(), so shutting it
// down from here can never hit a descriptor number the process reused.
class ConnectionRegistry {
  public:
    using Clock = std::chrono::steady_clock;
    static constexpr std::uint64_t min_upload_progress = 64u << 10;

    struct Limits {
        std::size_t max_pending = 0;  // connections open beyond the workers; 0: no bound
        std::size_t max_active = 0;   // the workers
        std::size_t per_address = 0;  // open connections of one address (bucket); 0: none
        // Connections of one address handed to a worker before their first request's
        // headers are complete; more wait at the gate. 0: no bound.
        std::size_t header_per_address = 0;
    };

    void reset() {
        std::lock_guard<std::mutex> lock(mutex_);
        closed_ = false;
    }
    void set_limits(const Limits& l) {
        std::lock_guard<std::mutex> lock(mutex_);
        limits_ = l;
    }
    // A descriptor written to whenever a gated connection may have become eligible.
    void set_wake(int fd) {
        std::lock_guard<std::mutex> lock(mutex_);
        wake_fd_ = fd;
    }

    // Called on the accepting thread with the socket cpp-httplib just accepted. Returns
    // the connection's id; a connection over a limit is shut down at once (the worker
    // that takes it finds it closed and ends).
    std::uint64_t adopt(int sock, bool& refused) {
        sockaddr_storage peer{};
        socklen_t pl = sizeof peer;
        std::string bucket;
        if (getpeername(sock, reinterpret_cast<sockaddr*>(&peer), &pl) == 0)
            bucket = address_bucket(peer);
        int one = 1;
        setsockopt(sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        std::lock_guard<std::mutex> lock(mutex_);
        const std::uint64_t id = ++next_id_;
        Conn c;
        c.fd = sock;
        c.bucket = bucket;
        c.since = Clock::now();
        auto& per = per_address_[bucket];
        ++per.open;
        ++stats_.connections;
        if (closed_) {
            shut(c);
        } else if (limits_.max_pending &&
                   conns_.size() + 1 > limits_.max_pending + limits_.max_active) {
            shut(c);
            ++stats_.refused_queue_full;
        } else if (limits_.per_address && per.open > limits_.per_address) {
            shut(c);
            ++stats_.refused_per_address;
        }
        refused = c.refused = c.cut;
        by_fd_[sock] = id;
        conns_.emplace(id, std::move(c));
        return id;
    }

    std::uint64_t id_of(int sock) const {
        std::lock_guard<std::mutex> lock(mutex_);
        auto it = by_fd_.find(sock);
        return it == by_fd_.end() ? 0 : it->second;
    }
    bool refused(std::uint64_t id) const {
        std::lock_guard<std::mutex> lock(mutex_);
        auto it = conns_.find(id);
        return it != conns_.end() && it->second.refused;
    }

    // May the gate hand this connection to a main worker now? Not while its address
    // already has header_per_address connections there still sending headers.
    bool may_dispatch(std::uint64_t id) const {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!limits_.header_per_address) return true;
        auto it = conns_.find(id);
        if (it == conns_.end() || it->second.cut) return true;  // costs a worker nothing
        auto p = per_address_.find(it->second.bucket);
        return p == per_address_.end() || p->second.in_headers < limits_.header_per_address;
    }
    // Every main worker is taken, or connections wait for one.
    bool busy() const {
        std::lock_guard<std::mutex> lock(mutex_);
        return busy_locked();
    }

    // Handed to a worker queue (its first bytes are in). `priority`: the lane of the short
    // routes, which answers one request and closes.
    void dispatched(std::uint64_t id, bool priority) {
        std::lock_guard<std::mutex> lock(mutex_);
        auto it = conns_.find(id);
        if (it == conns_.end()) return;
        Conn& c = it->second;
        c.priority = priority;
        if (!priority) {
            ++pending_;
            c.queued = true;
        }
        if (!c.in_headers) {
            c.in_headers = true;
            ++per_address_[c.bucket].in_headers;
        }
    }
    // A worker took it.
    void started(std::uint64_t id) {
        std::lock_guard<std::mutex> lock(mutex_);
        auto it = conns_.find(id);
        if (it == conns_.end()) return;
        Conn& c = it->second;
        if (c.queued) {
            c.queued = false;
            if (pending_) --pending_;
            ++main_started_;
            c.on_main = true;
        }
        c.started = true;
        c.started_at = Clock::now();
    }

    // The worker is done with the connection; the caller closes the socket after this.
    // `bytes` is what the connection sent: a large transfer asks for a heap trim.
    void release(std::uint64_t id, std::uint64_t bytes) {
        std::lock_guard<std::mutex> lock(mutex_);
        auto it = conns_.find(id);
        if (it == conns_.end()) return;
        Conn& c = it->second;
        leave_headers(c);
        if (c.queued && pending_) --pending_;
        if (c.on_main && main_started_) --main_started_;
        auto p = per_address_.find(c.bucket);
        if (p != per_address_.end() && p->second.open && --p->second.open == 0 &&
            p->second.in_headers == 0)
            per_address_.erase(p);
        by_fd_.erase(c.fd);
        conns_.erase(it);
        if (bytes > (256u << 10)) trim_due_ = true;
    }

    // Headers of a request are in; its handler runs. `long_request`: an upload, bounded
    // by the long deadline instead of the short one.
    void request_started(std::uint64_t id, bool long_request) {
        std::lock_guard<std::mutex> lock(mutex_);
        auto it = conns_.find(id);
        if (it == conns_.end()) return;
        Conn& c = it->second;
        leave_headers(c);
        c.active = true;
        c.long_request = long_request;
        c.since = c.window_start = Clock::now();
        c.window_mark = c.received;
    }
    // What a connection has read so far (its worker reports it as it reads).
    void progress(std::uint64_t id, std::uint64_t received) {
        std::lock_guard<std::mutex> lock(mutex_);
        auto it = conns_.find(id);
        if (it != conns_.end()) it->second.received = received;
    }
    // Its answer is written; the connection waits for the next request (or closes: a
    // connection of the priority lane serves one request).
    void request_done(std::uint64_t id, bool close_after) {
        std::lock_guard<std::mutex> lock(mutex_);
        auto it = conns_.find(id);
        if (it == conns_.end()) return;
        Conn& c = it->second;
        c.active = false;
        c.served = true;
        c.since = Clock::now();
        // An answer given without reading the body (413, 404) leaves unread bytes that
        // must not be parsed as the next request.
        if (close_after || c.priority) shut(c);
    }
    void header_overflow(std::uint64_t id) {
        std::lock_guard<std::mutex> lock(mutex_);
        ++stats_.header_overflows;
        auto it = conns_.find(id);
        if (it != conns_.end()) shut(it->second);
    }

    // Cuts connections over their time. Called periodically by the server's watchdog.
    void enforce(std::chrono::milliseconds header_timeout, std::chrono::milliseconds keep_alive,
                 std::chrono::milliseconds request_timeout,
                 std::chrono::milliseconds long_request_timeout,
                 std::chrono::milliseconds overload_idle) {
        std::lock_guard<std::mutex> lock(mutex_);
        const auto now = Clock::now();
        const bool overloaded = busy_locked();
        for (auto& [id, c] : conns_) {
            if (c.cut) continue;
            auto age = now - c.since;
            if (overloaded && c.started && !c.active && c.served &&
                now - std::max(c.since, c.started_at) > overload_idle) {
                shut(c);
                ++stats_.overload_cuts;
                continue;
            }
            if (!c.active) {
                auto limit =
                    header_timeout + (c.served ? keep_alive : std::chrono::milliseconds(0));
                if (age > limit) {
                    shut(c);
                    ++stats_.header_timeouts;
                }
                continue;
            }
            auto bound = c.long_request ? long_request_timeout : request_timeout;
            bool cut = bound.count() > 0 && age > bound;
            // An upload is exempt from the short deadline, not from moving: each
            // request_timeout it must bring min_upload_progress bytes.
            if (!cut && c.long_request && request_timeout.count() > 0 &&
                now - c.window_start > request_timeout) {
                if (c.received - c.window_mark < min_upload_progress) cut = true;
                c.window_start = now;
                c.window_mark = c.received;
            }
            if (cut) {
                shut(c);
                ++stats_.request_timeouts;
            }
        }
    }

    // Shuts every connection down, now and from now on (stop()).
    void close_all() {
        std::lock_guard<std::mutex> lock(mutex_);
        closed_ = true;
        for (auto& [id, c] : conns_) shut(c);
    }

    // True once after a connection that moved much data ended.
    bool take_trim_due() {
        std::lock_guard<std::mutex> lock(mutex_);
        return std::exchange(trim_due_, false);
    }

    ServerStats stats() const {
        std::lock_guard<std::mutex> lock(mutex_);
        return stats_;
    }
    std::size_t open_connections() const {
        std::lock_guard<std::mutex> lock(mutex_);
        return conns_.size();
    }

  private:
    struct Conn {
        int fd = -1;
        std::string bucket;
        Clock::time_point since;
        bool active = false;
        bool served = false;
        bool cut = false;
        bool started = false;
        bool queued = false;
        bool on_main = false;
        bool priority = false;
        bool in_headers = false;
        bool long_request = false;
        bool refused = false;  // closed at adopt(): never served
        Clock::time_point started_at{};
        std::uint64_t received = 0;     // bytes read from the socket so far
        std::uint64_t window_mark = 0;  // `received` when the progress window began
        Clock::time_point window_start{};
    };
    struct PerAddress {
        std::size_t open = 0;
        std::size_t in_headers = 0;
    };

    bool busy_locked() const {
        return pending_ > 0 || (limits_.max_active && main_started_ >= limits_.max_active);
    }
    static void shut(Conn& c) {
        if (!c.cut) ::shutdown(c.fd, SHUT_RDWR);
        c.cut = true;
    }
    void leave_headers(Conn& c) {
        if (!c.in_headers) return;
        c.in_headers = false;
        auto p = per_address_.find(c.bucket);
        if (p != per_address_.end() && p->second.in_headers) --p->second.in_headers;
        if (wake_fd_ >= 0) {
            char b = 1;
            (void)!::write(wake_fd_, &b, 1);
        }
    }

    mutable std::mutex mutex_;
    bool closed_ = false;
    bool trim_due_ = false;
    int wake_fd_ = -1;
    std::uint64_t next_id_ = 0;
    std::size_t pending_ = 0;
    std::size_t main_started_ = 0;
    Limits limits_;
    std::unordered_map<std::uint64_t, Conn> conns_;
    std::unordered_map<int, std::uint64_t> by_fd_;
    std::unordered_map<std::string, PerAddress> per_address_;
    ServerStats stats_;
};

// One connection as cpp-httplib reads and writes it: buffered reads and writes bounded
// by the per-receive and per-send timeouts, and a bound on what a request line and
// headers may make the server read (bytes and lines), checked byte by byte, so a client
// can never make it buffer more than that. Implements the virtual functions of
// httplib::Stream of both the 0.11 series and newer releases (no `override`: each
// version lacks some of them).
class ConnStream : public httplib::Stream {
  public:
    struct Limits {
        std::chrono::milliseconds read_timeout{5000};
        std::chrono::milliseconds write_timeout{5000};
        std::size_t max_header_bytes = 64u << 10;  // 0: no bound
        std::size_t max_header_lines = 100;        // request line excluded; 0: no bound
    };
    ConnStream(int sock, const Limits& limits, ConnectionRegistry* registry = nullptr,
               std::uint64_t id = 0)
        : sock_(sock),
          limits_(limits),
          registry_(registry),
          id_(id),
          born_(std::chrono::steady_clock::now()) {}

    using httplib::Stream::write;

    bool is_readable() const { return off_ < len_ || wait(POLLIN, limits_.read_timeout); }
    bool is_writable() const { return wait(POLLOUT, limits_.write_timeout); }
    bool wait_readable() const { return is_readable(); }
    bool wait_writable() const { return is_writable(); }

    ssize_t read(char* ptr, size_t size) {
        if (overflow_) return -1;
        if (off_ >= len_) {
            if (!wait(POLLIN, limits_.read_timeout)) return -1;
            ssize_t n;
            do {
                n = ::recv(sock_, buf_, sizeof buf_, 0);
            } while (n < 0 && errno == EINTR);
            if (n <= 0) return n;
            off_ = 0;
            len_ = static_cast<std::size_t>(n);
            received_ += static_cast<std::uint64_t>(n);
            if (registry_ && id_) registry_->progress(id_, received_);
        }
        std::size_t k = std::min(size, len_ - off_);
        if (in_headers_) {
            for (std::size_t i = 0; i < k; ++i) {
                const char c = buf_[off_ + i];
                ++header_bytes_;
                if (c == '\n') {
                    if (line_len_ == 0 && lines_ > 0) {  // the empty line: headers end
                        in_headers_ = false;
                        k = i + 1;
                        break;
                    }
                    ++lines_;
                    line_len_ = 0;
                } else if (c != '\r') {
                    ++line_len_;
                }
                if ((limits_.max_header_bytes && header_bytes_ > limits_.max_header_bytes) ||
                    (limits_.max_header_lines && lines_ > limits_.max_header_lines + 1)) {
                    overflow_ = true;
                    return -1;
                }
            }
        }
        std::memcpy(ptr, buf_ + off_, k);
        off_ += k;
        return static_cast<ssize_t>(k);
    }
    ssize_t write(const char* ptr, size_t size) {
        if (!wait(POLLOUT, limits_.write_timeout)) return -1;
        ssize_t n;
        do {
            n = ::send(sock_, ptr, size, MSG_NOSIGNAL);
        } while (n < 0 && errno == EINTR);
        return n;
    }
    void get_remote_ip_and_port(std::string& ip, int& port) const {
        sockaddr_storage a{};
        socklen_t len = sizeof a;
        port = -1;
        if (getpeername(sock_, reinterpret_cast<sockaddr*>(&a), &len) == 0)
            ip = numeric_host(a, len, port);
    }
    void get_local_ip_and_port(std::string& ip, int& port) const {
        sockaddr_storage a{};
        socklen_t len = sizeof a;
        port = -1;
        if (getsockname(sock_, reinterpret_cast<sockaddr*>(&a), &len) == 0)
            ip = numeric_host(a, len, port);
    }
    socket_t socket() const { return sock_; }
    time_t duration() const {
        return static_cast<time_t>(std::chrono::duration_cast<std::chrono::seconds>(
                                       std::chrono::steady_clock::now() - born_)
                                       .count());
    }

    // A new request starts: its request line and headers are counted afresh.
    void begin_request() {
        in_headers_ = true;
        header_bytes_ = lines_ = line_len_ = 0;
    }
    bool overflowed() const { return overflow_; }
    bool buffered() const { return off_ < len_; }
    std::uint64_t received() const { return received_; }

  private:
    bool wait(short events, std::chrono::milliseconds timeout) const {
        pollfd p{sock_, events, 0};
        int n;
        do {
            n = ::poll(&p, 1, static_cast<int>(std::max<std::int64_t>(timeout.count(), 0)));
        } while (n < 0 && errno == EINTR);
        return n > 0;
    }

    int sock_;
    Limits limits_;
    ConnectionRegistry* registry_;
    std::uint64_t id_;
    std::chrono::steady_clock::time_point born_;
    char buf_[4096];
    std::size_t off_ = 0, len_ = 0;
    std::uint64_t received_ = 0;
    bool in_headers_ = false;
    bool overflow_ = false;
    std::size_t header_bytes_ = 0, lines_ = 0, line_len_ = 0;
};

// cpp-httplib's server with the connection loop of our own. cpp-httplib hands each
// accepted socket to its task queue as a closure that calls the virtual
// process_and_close_socket(sock); run once in "probe" mode on the accepting thread, that
// closure tells the queue which socket it carries (socket_of), so the server knows its
// own sockets without searching for them. On a worker, the override serves the
// connection through ConnStream, calling cpp-httplib's process_request per request.
class HttpServer : public httplib::Server {
  public:
    HttpServer(ConnectionRegistry& registry, const ConnStream::Limits& limits,
               std::chrono::milliseconds keep_alive)
        : registry_(registry), limits_(limits), keep_alive_(keep_alive) {}

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
    void set_stopping() { stopping_ = true; }

    // The socket a task of cpp-httplib's accept loop serves, or -1 (not such a task).
    static int socket_of(const std::function<void()>& task) {
        int sock = -1;
        probe_slot() = &sock;
        task();
        probe_slot() = nullptr;
        return sock;
    }
    // The connection the calling worker serves (0: none, or untracked).
    static std::uint64_t current_connection() { return current_id(); }

  private:
    static int*& probe_slot() {
        thread_local int* slot = nullptr;
        return slot;
    }
    static std::uint64_t& current_id() {
        thread_local std::uint64_t id = 0;
        return id;
    }

    bool process_and_close_socket(socket_t sock) override {
        if (int* slot = probe_slot()) {
            *slot = sock;
            return true;
        }
        const std::uint64_t id = registry_.id_of(sock);
        ConnStream strm(sock, limits_, &registry_, id);
        std::size_t left = keep_alive_max_count_ ? keep_alive_max_count_ : 1;
        bool first = true;
        if (id && registry_.refused(id)) left = 0;  // over a limit: closed unread
        while (!stopping_ && left > 0) {
            if (!first && !strm.buffered()) {
                pollfd p{sock, POLLIN, 0};
                if (::poll(&p, 1, static_cast<int>(keep_alive_.count())) <= 0) break;
            }
            first = false;
            strm.begin_request();
            bool closed = false;
            current_id() = id;
            const bool ok = run_request(strm, left == 1, closed, 0);
            current_id() = 0;
            if (strm.overflowed()) {
                registry_.header_overflow(id);
                break;
            }
            if (!ok || closed) break;
            --left;
        }
        registry_.release(id, strm.received());
        ::shutdown(sock, SHUT_RDWR);
        ::close(sock);
        return true;
    }

    // process_request's signature differs between cpp-httplib releases: the overload
    // that compiles is the one used.
    template <class S>
    auto run_request(S& strm, bool close, bool& closed, int)
        -> decltype(this->process_request(strm, close, closed,
                                          std::function<void(httplib::Request&)>()),
                    bool()) {
        return this->process_request(strm, close, closed, nullptr);
    }
    template <class S>
    auto run_request(S& strm, bool close, bool& closed, long)
        -> decltype(this->process_request(strm, std::string(), 0, std::string(), 0, close, closed,
                                          std::function<void(httplib::Request&)>()),
                    bool()) {
        std::string remote, local;
        int remote_port = -1, local_port = -1;
        strm.get_remote_ip_and_port(remote, remote_port);
        strm.get_local_ip_and_port(local, local_port);
        return this->process_request(strm, remote, remote_port, local, local_port, close, closed,
                                     nullptr);
    }

    ConnectionRegistry& registry_;
    ConnStream::Limits limits_;
    std::chrono::milliseconds keep_alive_;
    std::atomic<bool> stopping_{false};
};

// cpp-httplib's task queue: two thread pools (the main workers, and a small lane for the
// short routes), with a gate in front. A connection goes to a worker only once its first
// bytes are in (or it closed), so connections that open and send nothing never hold a
// worker; an address with header_per_address connections still sending headers on
// workers waits; and while every main worker is taken, a connection whose complete
// request is a GET of a short route (/server_info, /whoami) is served on the short lane.
// TaskQueue::enqueue returns void in older cpp-httplib and bool in newer; the override
// follows the base.
class WatchedPool : public httplib::TaskQueue {
    using EnqueueResult =
        decltype(std::declval<httplib::TaskQueue&>().enqueue(std::function<void()>()));

  public:
    WatchedPool(std::size_t threads, std::size_t short_threads,
                std::vector<std::string> short_paths, std::chrono::milliseconds short_after,
                ConnectionRegistry& registry)
        : short_after_(short_after),
          pool_(threads),
          short_pool_(std::max<std::size_t>(short_threads, 1)),
          short_paths_(std::move(short_paths)),
          registry_(registry) {
#if defined(__linux__)
        if (pipe2(wake_, O_CLOEXEC | O_NONBLOCK) != 0) wake_[0] = wake_[1] = -1;
#else
        if (pipe(wake_) != 0) {
            wake_[0] = wake_[1] = -1;
        } else {
            for (int fd : wake_) {
                fcntl(fd, F_SETFD, FD_CLOEXEC);
                fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
            }
        }
#endif
        registry_.set_wake(wake_[1]);
        if (wake_[0] >= 0) gate_ = std::thread([this] { gate_loop(); });
    }
    ~WatchedPool() override {
        stop_gate();
        registry_.set_wake(-1);
        if (wake_[0] >= 0) {
            ::close(wake_[0]);
            ::close(wake_[1]);
        }
    }

    EnqueueResult enqueue(std::function<void()> fn) override {
        const int sock = HttpServer::socket_of(fn);
        bool refused = false;
        const std::uint64_t id = sock >= 0 ? registry_.adopt(sock, refused) : 0;
        if (refused) {
            // Shut down already: served here and now (one read sees the end), so it never
            // queues for a worker.
            fn();
        } else if (!id || !gate_.joinable()) {
            dispatch(id, std::move(fn), false);
        } else {
            {
                std::lock_guard<std::mutex> lock(mutex_);
                gated_.push_back({id, sock, std::move(fn)});
            }
            char c = 1;
            (void)!::write(wake_[1], &c, 1);
        }
        if constexpr (!std::is_void_v<EnqueueResult>) return EnqueueResult(true);
    }
    void shutdown() override {
        stop_gate();
        pool_.shutdown();
        short_pool_.shutdown();
    }

  private:
    struct Gated {
        std::uint64_t id;
        int fd;
        std::function<void()> fn;
        std::chrono::steady_clock::time_point ready{};  // first seen readable
    };

    void dispatch(std::uint64_t id, std::function<void()> fn, bool short_lane) {
        ConnectionRegistry* reg = &registry_;
        if (id) reg->dispatched(id, short_lane);
        auto task = [fn = std::move(fn), id, reg]() {
            reg->started(id);
            fn();
        };
        if (short_lane)
            short_pool_.enqueue(std::move(task));
        else
            pool_.enqueue(std::move(task));
    }

    // A complete "GET <short path>[?...] HTTP/1.x" request, headers and all, is waiting.
    bool short_request(int fd) const {
        char buf[2048];
        ssize_t n = ::recv(fd, buf, sizeof buf, MSG_PEEK | MSG_DONTWAIT);
        if (n <= 0) return false;
        std::string_view s(buf, static_cast<std::size_t>(n));
        if (s.find("\r\n\r\n") == std::string_view::npos || s.substr(0, 4) != "GET ") return false;
        for (const auto& p : short_paths_) {
            if (s.size() > 4 + p.size() && s.substr(4, p.size()) == p &&
                (s[4 + p.size()] == ' ' || s[4 + p.size()] == '?'))
                return true;
        }
        return false;
    }

    void gate_loop() {
        std::vector<pollfd> fds;
        std::vector<std::pair<Gated, bool>> ready;
        for (;;) {
            fds.clear();
            fds.push_back({wake_[0], POLLIN, 0});
            bool any_held = false;
            {
                std::lock_guard<std::mutex> lock(mutex_);
                if (gate_stop_) break;
                for (auto& g : gated_) fds.push_back({g.fd, POLLIN, 0});
                any_held = !gated_.empty();
            }
            int n = ::poll(fds.data(), fds.size(), any_held ? 100 : 1000);
            if (n < 0 && errno != EINTR) break;
            if (fds[0].revents) {
                char buf[256];
                while (::read(wake_[0], buf, sizeof buf) > 0) {
                }
            }
            std::unordered_set<int> readable;
            for (std::size_t i = 1; i < fds.size(); ++i)
                if (fds[i].revents) readable.insert(fds[i].fd);
            const bool busy = registry_.busy();
            const auto now = std::chrono::steady_clock::now();
            {
                std::lock_guard<std::mutex> lock(mutex_);
                for (auto it = gated_.begin(); it != gated_.end();) {
                    if (!readable.count(it->fd)) {
                        ++it;
                        continue;
                    }
                    if (it->ready == std::chrono::steady_clock::time_point{}) it->ready = now;
                    const bool may = registry_.may_dispatch(it->id);
                    // A short request waits a moment for a main worker (idle kept-alive
                    // ones are let go meanwhile), then takes the short lane.
                    // A short request already complete is no header sender: with a free
                    // worker it goes there at once, whatever its address holds.
                    int lane = -1;  // -1: hold, 0: main, 1: short lane
                    const bool short_req = (!busy && may) ? false : short_request(it->fd);
                    if (!busy && (may || short_req)) {
                        lane = 0;
                    } else if (short_req) {
                        if (now - it->ready >= short_after_) lane = 1;
                    } else if (may) {
                        lane = 0;
                    }
                    if (lane >= 0) {
                        ready.emplace_back(std::move(*it), lane == 1);
                        it = gated_.erase(it);
                    } else {
                        ++it;
                    }
                }
            }
            for (auto& [g, lane] : ready) dispatch(g.id, std::move(g.fn), lane);
            ready.clear();
            // Readable connections held back keep poll() returning at once: pause a
            // little (a freed header slot writes to the wake pipe and ends the pause).
            bool held_readable = false;
            {
                std::lock_guard<std::mutex> lock(mutex_);
                for (auto& g : gated_)
                    if (readable.count(g.fd)) held_readable = true;
            }
            if (held_readable) {
                pollfd w{wake_[0], POLLIN, 0};
                ::poll(&w, 1, 20);
            }
        }
        // Stopping: every connection still at the gate goes to the workers, which find
        // it shut down (stop() shut every connection) and close it.
        std::lock_guard<std::mutex> lock(mutex_);
        for (auto& g : gated_) dispatch(g.id, std::move(g.fn), false);
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

    std::chrono::milliseconds short_after_;
    httplib::ThreadPool pool_;
    httplib::ThreadPool short_pool_;
    std::vector<std::string> short_paths_;
    ConnectionRegistry& registry_;
    std::mutex mutex_;
    std::vector<Gated> gated_;
    bool gate_stop_ = false;
    int wake_[2] = {-1, -1};
    std::thread gate_;
};

// Gives freed heap back to the system after a large transient allocation (glibc keeps
// it otherwise, and RSS stays at the peak). Elsewhere a no-op.
inline void release_heap() {
#if defined(__GLIBC__)
    malloc_trim(0);
#endif
}

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
        for (const char* path : {"/speedtest/upload", "/upload"}) {
            routes_[path].builtin_post = true;
            routes_[path].upload = true;
        }
    }
    ~Server() { stop(); }
    Server(const Server&) = delete;
    Server& operator=(const Server&) = delete;

    // Adds a route (an exact path). Only before start(); a path may have a GET and a POST.
    Server& get(const std::string& path, RouteHandler handler) {
        return add("GET", path, std::move(handler));
    }
    // `max_body_bytes`: this route's body limit (0: ServerOptions::max_body_bytes); 413
    // beyond, from Content-Length before reading or while reading a chunked body.
    Server& post(const std::string& path, RouteHandler handler, std::size_t max_body_bytes = 0) {
        add("POST", path, std::move(handler));
        std::lock_guard<std::mutex> lock(control_);
        routes_[path].max_body = max_body_bytes;
        return *this;
    }

    // Binds and starts serving on an owned thread; returns once the socket is bound and
    // the accept loop runs. Throws p2prc::error (io_error) when the address cannot be bound.
    void start() {
        std::lock_guard<std::mutex> lock(control_);
        if (http_) throw error(errc::state_error, "server already started");
        detail::ConnStream::Limits sl;
        sl.read_timeout = options_.read_timeout;
        sl.write_timeout = options_.write_timeout;
        sl.max_header_bytes = options_.max_header_bytes;
        sl.max_header_lines = options_.max_header_count;
        http_ = std::make_unique<detail::HttpServer>(registry_, sl, options_.keep_alive_timeout);
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
        registry_.reset();
        detail::ConnectionRegistry::Limits limits;
        limits.max_pending = options_.max_queued_connections;
        limits.max_active = options_.worker_threads;
        limits.per_address = options_.max_connections_per_address;
        // One address never holds more than half the workers with unfinished headers.
        limits.header_per_address = std::min(options_.max_header_connections_per_address,
                                             std::max<std::size_t>(1, options_.worker_threads / 2));
        registry_.set_limits(limits);
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
        bool upload = false;       // bounded by upload_timeout, not request_timeout
        std::size_t max_body = 0;  // 0: options_.max_body_bytes
    };

    std::size_t body_limit(const Route& r) const {
        return r.max_body ? std::min(r.max_body, options_.max_body_bytes) : options_.max_body_bytes;
    }

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
        const std::size_t short_threads = options_.short_threads;
        const std::vector<std::string> short_routes = options_.short_routes;
        const auto short_after = options_.short_lane_after;
        detail::ConnectionRegistry* reg = &registry_;
        h.new_task_queue = [threads, short_threads, short_routes, short_after, reg] {
            return new detail::WatchedPool(threads, short_threads, short_routes, short_after, *reg);
        };

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
            (void)req;
            bool close_after = res.get_header_value("Connection") == "close";
            registry_.request_done(detail::HttpServer::current_connection(), close_after);
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
                const std::size_t max = body_limit(route);
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
        auto it = routes_.find(req.path);
        registry_.request_started(detail::HttpServer::current_connection(),
                                  it != routes_.end() && it->second.upload);
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
        const std::size_t limit = is_post ? body_limit(r) : options_.max_get_body_bytes;
        if (req.has_header("Content-Length")) {
            auto n = detail::parse_decimal_u64(req.get_header_value("Content-Length"));
            if (!n) return reject(400, "invalid Content-Length");
            if (*n > limit) {
                too_large(res, limit);
                return httplib::Server::HandlerResponse::Handled;
            }
        } else if (!is_post && req.has_header("Transfer-Encoding")) {
            // cpp-httplib would read a chunked body of a GET whole, up to the largest
            // limit of any route.
            return reject(400, "a GET request carries no chunked body");
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
                              options_.request_timeout, options_.upload_timeout,
                              options_.overload_idle_timeout);
            // A large body or answer leaves freed heap that glibc keeps: give it back
            // once that connection has ended, so memory returns after a burst.
            if (registry_.take_trim_due()) detail::release_heap();
        }
    }

    void stop_locked() {
        if (!http_) return;
        stopping_ = true;
        running_ = false;
        http_->set_stopping();
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
