// Measuring peers: latency, throughput, and a bounded-concurrency sweep of the table.
//
// Latency: one keep-alive connection, one warm-up request (it pays for the TCP handshake
// and the peer's first-request costs), then N timed `GET /server_info`, each timed until
// the whole body is in and parses as JSON. TCP_NODELAY is on: with Nagle and delayed ACKs
// a small keep-alive exchange can wait tens of milliseconds, which would be measured as
// latency.
//
// Throughput: download, then upload, for a fixed time or a byte budget; the first part
// (warm-up: TCP slow start, buffers filling) is not counted. Download bytes are counted
// as they arrive at the client; upload bytes as they arrive at the server, which reports
// them (the client's own count would include whatever sits in socket buffers). A peer
// without these routes (P2PRC's Go server answers 404) is measured on its own GET /50
// and POST /upload instead; its upload figure then includes the request's round trip.
//
// refresh(): probes every peer of a table with at most `concurrency` probes in flight,
// retries a failed peer once, records the figures and prunes the peers that stay
// unreachable. A peer is never "fastest" by default: an unmeasured peer has no latency.
#pragma once

#include "address.hpp"
#include "error.hpp"
#include "iptable.hpp"
#include "peer.hpp"

#include <httplib.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <ctime>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace p2prc {

// Why a peer could not be measured.
enum class ProbeFailure {
    none = 0,
    refused,      // nothing listens there (connection refused, or unreachable at once)
    timeout,      // connect, send or receive ran out of time
    http_status,  // the peer answered with a status other than 200
    not_json,     // the peer answered 200 with a body that is not JSON
    closed,       // the peer closed or reset the connection before answering
    too_large,    // the answer was larger than the bound
    error,        // anything else (the text says what)
};

inline const char* to_string(ProbeFailure f) noexcept {
    switch (f) {
        case ProbeFailure::none:
            return "none";
        case ProbeFailure::refused:
            return "refused";
        case ProbeFailure::timeout:
            return "timeout";
        case ProbeFailure::http_status:
            return "http_status";
        case ProbeFailure::not_json:
            return "not_json";
        case ProbeFailure::closed:
            return "closed";
        case ProbeFailure::too_large:
            return "too_large";
        case ProbeFailure::error:
            return "error";
    }
    return "unknown";
}

struct LatencyOptions {
    int samples = 5;  // timed requests after the warm-up
    std::string path = "/server_info";
    std::chrono::milliseconds connect_timeout{2000};
    std::chrono::milliseconds read_timeout{2000};    // one receive
    std::chrono::milliseconds total_timeout{10000};  // the whole probe
    std::size_t max_body_bytes = 1 << 20;
};

struct LatencyResult {
    Endpoint endpoint;
    bool reachable = false;
    double min_ms = 0, median_ms = 0, max_ms = 0;
    std::vector<double> samples_ms;
    ProbeFailure failure = ProbeFailure::none;
    int http_status = 0;  // when failure == http_status
    std::string reason;   // human text for a failure: "connection refused", "HTTP status 500"
    std::string identity;  // the "Identity" the server's /server_info states ("" when none)
};

struct ThroughputOptions {
    std::chrono::milliseconds duration{2000};  // counted time of each direction
    std::uint64_t byte_budget = 0;  // when non-zero: stop each direction after this many bytes
    std::chrono::milliseconds warmup{250};  // not counted
    unsigned streams = 1;                   // parallel connections per direction
    bool download = true;
    bool upload = true;
    std::uint64_t max_upload_request_bytes = 64u << 20;  // the server's body limit (P2PRC default)
    std::chrono::milliseconds connect_timeout{2000};
    std::chrono::milliseconds read_timeout{5000};
    // The whole probe, both directions: no request outlives it. 0: 2 x (warmup + duration)
    // + 4 x (connect_timeout + read_timeout). Set it when only a byte budget bounds the run.
    std::chrono::milliseconds total_timeout{0};
};

struct ThroughputResult {
    Endpoint endpoint;
    bool ok = false;
    std::optional<double> download_mbps;
    std::optional<double> upload_mbps;
    std::uint64_t download_bytes = 0;  // counted (after the warm-up)
    std::uint64_t upload_bytes = 0;
    ProbeFailure failure = ProbeFailure::none;
    std::string reason;
};

namespace detail {

using ProbeClock = std::chrono::steady_clock;

inline double ms_between(ProbeClock::time_point a, ProbeClock::time_point b) {
    return std::chrono::duration<double, std::milli>(b - a).count();
}

// cpp-httplib takes its timeouts as seconds and microseconds.
inline void set_client_timeouts(httplib::Client& c, std::chrono::milliseconds connect,
                                std::chrono::milliseconds io) {
    c.set_connection_timeout(connect.count() / 1000, static_cast<long>((connect.count() % 1000) * 1000));
    c.set_read_timeout(io.count() / 1000, static_cast<long>((io.count() % 1000) * 1000));
    c.set_write_timeout(io.count() / 1000, static_cast<long>((io.count() % 1000) * 1000));
}

inline std::unique_ptr<httplib::Client> probe_client(const Endpoint& e,
                                                     std::chrono::milliseconds connect,
                                                     std::chrono::milliseconds read) {
    // cpp-httplib wants the bare address; the Host header gets the bracketed form.
    auto c = std::make_unique<httplib::Client>(e.host_string(), e.port);
    c->set_keep_alive(true);
    c->set_tcp_nodelay(true);
    c->set_decompress(false);  // no Accept-Encoding: the peer sends the bytes as they are
    c->set_follow_location(false);
    set_client_timeouts(*c, connect, read);
    return c;
}

// A hard deadline for the requests of one httplib::Client. cpp-httplib's read timeout
// bounds each receive, not the request, and it does not bound the header size: a peer that
// trickles one header byte a second would hold a request forever. A watchdog thread waits
// until the deadline (or release), then calls the client's stop(), which shuts its socket
// down so the blocked call returns. It repeats stop() every 20 ms until released, because
// the first one can land just before the request takes hold of a (new) socket.
class RequestDeadline {
  public:
    // Throws p2prc::error(io_error) when the watchdog thread cannot be started.
    RequestDeadline(httplib::Client& client, std::chrono::steady_clock::time_point deadline)
        : client_(client), deadline_(deadline) {
        try {
            thread_ = std::thread([this] { watch(); });
        } catch (const std::exception& e) {
            throw error(errc::io_error,
                        std::string("cannot start a request deadline watchdog: ") + e.what());
        }
    }
    ~RequestDeadline() { release(); }
    RequestDeadline(const RequestDeadline&) = delete;
    RequestDeadline& operator=(const RequestDeadline&) = delete;

    // Ends the watch (the request is over); idempotent.
    void release() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            released_ = true;
        }
        cv_.notify_all();
        if (thread_.joinable()) thread_.join();
    }
    // True when the deadline passed and the request was stopped.
    bool fired() const {
        std::lock_guard<std::mutex> lock(mutex_);
        return fired_;
    }

  private:
    void watch() {
        std::unique_lock<std::mutex> lock(mutex_);
        if (cv_.wait_until(lock, deadline_, [this] { return released_; })) return;
        fired_ = true;
        for (int i = 0; i < 1000 && !released_; ++i) {  // 20 s of retries at most
            lock.unlock();
            client_.stop();
            lock.lock();
            cv_.wait_for(lock, std::chrono::milliseconds(20), [this] { return released_; });
        }
    }

    httplib::Client& client_;
    const std::chrono::steady_clock::time_point deadline_;
    mutable std::mutex mutex_;
    std::condition_variable cv_;
    bool released_ = false;
    bool fired_ = false;
    std::thread thread_;
};

// Runs fn() (one or more requests on `client`) under a hard deadline and returns its
// result; *fired (when given) tells whether the deadline cut it short.
template <class Fn>
inline auto with_deadline(httplib::Client& client, std::chrono::steady_clock::time_point deadline,
                          Fn&& fn, bool* fired = nullptr) {
    RequestDeadline guard(client, deadline);
    auto result = fn();
    guard.release();
    if (fired) *fired = guard.fired();
    return result;
}

// The bound on a small answer (server_info, the upload report) read by the probes.
constexpr std::size_t kMaxAnswerBytes = 1 << 20;

// Collects a response body up to `limit` bytes; past it, the receiver cancels the request.
struct CappedBody {
    explicit CappedBody(std::size_t max) : limit(max) {}
    std::string data;
    std::size_t limit;
    bool too_large = false;
    bool add(const char* p, std::size_t n) {
        if (data.size() + n > limit) {
            too_large = true;
            return false;
        }
        data.append(p, n);
        return true;
    }
};

inline httplib::Headers probe_headers(const Endpoint& e) {
    return {{"Host", e.to_string()}, {"Accept", "application/json"}, {"User-Agent", "p2prc"}};
}

// Maps a failed cpp-httplib call to a failure kind; `elapsed` tells a timeout from a
// refusal (older cpp-httplib reports both as a connection error).
inline std::pair<ProbeFailure, std::string> classify(httplib::Error err, double elapsed_ms,
                                                     std::chrono::milliseconds connect_timeout,
                                                     std::chrono::milliseconds read_timeout) {
    switch (err) {
        case httplib::Error::Connection:
            if (elapsed_ms + 50 >= double(connect_timeout.count()))
                return {ProbeFailure::timeout, "connect timed out"};
            return {ProbeFailure::refused, "connection refused"};
        case httplib::Error::ConnectionTimeout:
            return {ProbeFailure::timeout, "connect timed out"};
        case httplib::Error::Read:
            if (elapsed_ms + 50 >= double(read_timeout.count()))
                return {ProbeFailure::timeout,
                        "no answer within " + std::to_string(read_timeout.count()) + " ms"};
            return {ProbeFailure::closed, "connection closed before an answer"};
        case httplib::Error::Write:
            return {ProbeFailure::closed, "connection closed while sending"};
        default:
            return {ProbeFailure::error, httplib::to_string(err)};
    }
}

inline void fill_stats(LatencyResult& r) {
    auto s = r.samples_ms;
    std::sort(s.begin(), s.end());
    r.min_ms = s.front();
    r.max_ms = s.back();
    r.median_ms = s.size() % 2 ? s[s.size() / 2] : (s[s.size() / 2 - 1] + s[s.size() / 2]) / 2;
}

}  // namespace detail

// Measures the round trip of GET /server_info to one endpoint. Never throws for network
// outcomes; throws p2prc::error for bad options.
inline LatencyResult probe_latency(const Endpoint& endpoint, const LatencyOptions& options = {}) {
    if (options.samples < 1 || options.samples > 1000)
        throw error(
            errc::invalid_argument,
            "LatencyOptions::samples is " + std::to_string(options.samples) + ": expected 1-1000");
    using detail::ProbeClock;
    LatencyResult r;
    r.endpoint = endpoint;
    auto client = detail::probe_client(endpoint, options.connect_timeout, options.read_timeout);
    const auto headers = detail::probe_headers(endpoint);
    const auto deadline = ProbeClock::now() + options.total_timeout;
    std::string body;
    bool too_large = false, late = false;
    for (int i = 0; i <= options.samples; ++i) {  // request 0 is the warm-up
        body.clear();
        std::optional<detail::RequestDeadline> guard;
        try {
            // Started before t0 and released after t1 (destructor): not in the sample.
            guard.emplace(*client, deadline);
        } catch (const error& e) {
            r.failure = ProbeFailure::error;
            r.reason = e.what();
            r.samples_ms.clear();
            return r;
        }
        const auto t0 = ProbeClock::now();
        auto res = client->Get(options.path.c_str(), headers, [&](const char* data, size_t n) {
            if (body.size() + n > options.max_body_bytes) return !(too_large = true);
            if (ProbeClock::now() > deadline) return !(late = true);
            body.append(data, n);
            return true;
        });
        if (!res) {
            guard->release();
            if (guard->fired()) late = true;
            if (too_large) {
                r.failure = ProbeFailure::too_large;
                r.reason =
                    "answer larger than " + std::to_string(options.max_body_bytes) + " bytes";
            } else if (late) {
                r.failure = ProbeFailure::timeout;
                r.reason = "probe took longer than " +
                           std::to_string(options.total_timeout.count()) + " ms";
            } else {
                auto [f, text] =
                    detail::classify(res.error(), detail::ms_between(t0, ProbeClock::now()),
                                     options.connect_timeout, options.read_timeout);
                r.failure = f;
                r.reason = text;
            }
            r.samples_ms.clear();
            return r;
        }
        if (res->status != 200) {
            r.failure = ProbeFailure::http_status;
            r.http_status = res->status;
            r.reason = "HTTP status " + std::to_string(res->status);
            r.samples_ms.clear();
            return r;
        }
        if (!nlohmann::json::accept(body)) {
            r.failure = ProbeFailure::not_json;
            r.reason = "answer is not JSON";
            r.samples_ms.clear();
            return r;
        }
        const auto t1 = ProbeClock::now();
        if (i > 0) r.samples_ms.push_back(detail::ms_between(t0, t1));
        if (t1 > deadline && i < options.samples) {
            r.failure = ProbeFailure::timeout;
            r.reason =
                "probe took longer than " + std::to_string(options.total_timeout.count()) + " ms";
            r.samples_ms.clear();
            return r;
        }
    }
    r.reachable = true;
    detail::fill_stats(r);
    if (auto j = nlohmann::json::parse(body, nullptr, false); j.is_object()) {
        auto id = j.find("Identity");
        if (id != j.end() && id->is_string() && is_identity(id->get_ref<const std::string&>()))
            r.identity = id->get<std::string>();
    }
    return r;
}

// Probes the peer's endpoints in order (IPv4 first, then the alternatives) and returns the
// first reachable result, or the failure of the last one tried. When the peer's identity is
// known, an endpoint where another identity (or none) answers is another server: it counts
// as a failure.
inline LatencyResult probe_latency(const Peer& peer, const LatencyOptions& options = {}) {
    auto eps = peer.endpoints();
    if (eps.empty())
        throw error(errc::invalid_argument, "peer " + peer.label() + " has no address to probe");
    LatencyResult last;
    for (const auto& e : eps) {
        last = probe_latency(e, options);
        if (last.reachable && !peer.identity.empty() && last.identity != peer.identity) {
            last.reachable = false;
            last.failure = ProbeFailure::error;
            last.reason = last.identity.empty()
                              ? "the server there states no identity, expected " +
                                    short_identity(peer.identity)
                              : "another server answers there (identity " +
                                    short_identity(last.identity) + ", expected " +
                                    short_identity(peer.identity) + ")";
            last.samples_ms.clear();
            continue;
        }
        if (last.reachable) return last;
    }
    return last;
}

namespace detail {

struct StreamFigures {
    bool ok = false;
    std::uint64_t bytes = 0;  // counted bytes
    double seconds = 0;       // counted time
    ProbeFailure failure = ProbeFailure::none;
    std::string reason;
    double mbps() const { return seconds > 0 ? double(bytes) * 8.0 / 1e6 / seconds : 0.0; }
};

inline std::string speed_pattern() {
    std::string p(64 * 1024, '\0');
    std::uint32_t x = 0x2545f491u;
    for (auto& c : p) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        c = static_cast<char>(x & 0xff);
    }
    return p;
}

inline void fail_stream(StreamFigures& f, httplib::Error err, ProbeClock::time_point t0,
                        const ThroughputOptions& o) {
    auto [kind, text] =
        classify(err, ms_between(t0, ProbeClock::now()), o.connect_timeout, o.read_timeout);
    f.failure = kind;
    f.reason = text;
}

inline void fail_late(StreamFigures& f, const char* what) {
    f.failure = ProbeFailure::timeout;
    f.reason = std::string(what) + ": the probe ran out of time";
}

inline void fail_too_large(StreamFigures& f, const char* what) {
    f.failure = ProbeFailure::too_large;
    f.reason = std::string(what) + ": answer larger than " + std::to_string(kMaxAnswerBytes) +
               " bytes";
}

// One download stream: GET /speedtest/download until the time (or budget) is used up,
// counting bytes as they arrive; the first `warmup` after the first byte is not counted.
// No request outlives `deadline`.
inline StreamFigures download_stream(const Endpoint& e, const ThroughputOptions& o,
                                     ProbeClock::time_point deadline) {
    StreamFigures f;
    auto client = probe_client(e, o.connect_timeout, o.read_timeout);
    auto headers = probe_headers(e);
    bool started = false, done = false;
    ProbeClock::time_point first{}, warm_end{}, stop_at{}, last{};
    std::uint64_t total = 0, counted = 0;
    bool go_route = false;  // a P2PRC (Go) peer: only its fixed GET /50
    for (int request = 0; !done && request < 10000; ++request) {
        const std::uint64_t want =
            o.byte_budget ? o.byte_budget - total : (1ull << 40);  // the server caps it
        const std::string path =
            go_route ? "/50" : "/speedtest/download?bytes=" + std::to_string(want);
        int status = 0;
        bool late = false;
        const auto t0 = ProbeClock::now();
        auto res = with_deadline(
            *client, deadline,
            [&] {
                return client->Get(
                    path.c_str(), headers,
                    [&](const httplib::Response& r) {
                        status = r.status;
                        return r.status == 200;
                    },
                    [&](const char*, size_t n) {
                        const auto now = ProbeClock::now();
                        if (!started) {
                            started = true;
                            first = now;
                            warm_end = first + o.warmup;
                            stop_at = warm_end + o.duration;
                        }
                        total += n;
                        if (now >= warm_end) {
                            counted += n;
                            last = now;
                        }
                        if ((o.byte_budget && total >= o.byte_budget) || now >= stop_at) {
                            done = true;
                            return false;  // enough: cancel the rest of the body
                        }
                        return true;
                    });
            },
            &late);
        if (done) break;
        if (late) {
            fail_late(f, "download");
            return f;
        }
        if (status == 404 && !go_route && total == 0) {
            go_route = true;
            continue;
        }
        if (status != 0 && status != 200) {
            f.failure = ProbeFailure::http_status;
            f.reason = "download: HTTP status " + std::to_string(status);
            return f;
        }
        if (!res) {
            fail_stream(f, res.error(), t0, o);
            f.reason = "download: " + f.reason;
            return f;
        }
        if (total == 0) {
            f.failure = ProbeFailure::error;
            f.reason = "download: the peer sent no bytes";
            return f;
        }
        // The body ended before the time was up (the server caps one download): go on.
    }
    f.ok = true;
    if (counted > 0 && last > warm_end) {
        f.bytes = counted;
        f.seconds = std::chrono::duration<double>(last - warm_end).count();
    } else {  // too few bytes to get past the warm-up: count them all
        f.bytes = total;
        f.seconds = std::chrono::duration<double>((last > first ? last : ProbeClock::now()) - first)
                        .count();
    }
    return f;
}

// Sends `req` under the deadline, reading the answer into `answer` (bounded); fills `f`
// and returns false when the request failed.
inline bool send_bounded(httplib::Client& client, httplib::Request& req, httplib::Response& res,
                         CappedBody& answer, ProbeClock::time_point deadline,
                         const ThroughputOptions& o, StreamFigures& f, const char* what) {
    req.content_receiver = [&answer](const char* data, size_t n, std::uint64_t, std::uint64_t) {
        return answer.add(data, n);
    };
    httplib::Error err = httplib::Error::Success;
    bool late = false;
    const auto t0 = ProbeClock::now();
    const bool sent =
        with_deadline(client, deadline, [&] { return client.send(req, res, err); }, &late);
    if (sent) return true;
    if (answer.too_large) {
        fail_too_large(f, what);
    } else if (late) {
        fail_late(f, what);
    } else {
        fail_stream(f, err, t0, o);
        f.reason = std::string(what) + ": " + f.reason;
    }
    return false;
}

// P2PRC's (Go) own upload route takes one multipart file and says nothing back that
// can be counted: the client times the whole request. No warm-up is left out here.
inline StreamFigures upload_go_route(const Endpoint& e, const ThroughputOptions& o,
                                     std::uint64_t bytes, ProbeClock::time_point deadline) {
    StreamFigures f;
    auto client = probe_client(e, o.connect_timeout, o.read_timeout);
    // The multipart body is written out here rather than with cpp-httplib's form types,
    // whose names differ between its versions.
    static const std::string chunk = speed_pattern();
    const std::string boundary = "p2prc-speedtest-7f3a9c2e1b5d4e60";
    httplib::Request req;
    req.method = "POST";
    req.path = "/upload";
    req.headers = probe_headers(e);
    req.headers.emplace("Content-Type", "multipart/form-data; boundary=" + boundary);
    std::string& body = req.body;
    body = "--" + boundary +
           "\r\nContent-Disposition: form-data; name=\"file\"; filename=\"upload.bin\"\r\n"
           "Content-Type: application/octet-stream\r\n\r\n";
    body.reserve(body.size() + bytes + 64);
    for (std::uint64_t added = 0; added < bytes;) {
        const auto n =
            static_cast<std::size_t>(std::min<std::uint64_t>(chunk.size(), bytes - added));
        body.append(chunk, 0, n);
        added += n;
    }
    body += "\r\n--" + boundary + "--\r\n";
    httplib::Response res;
    CappedBody answer(kMaxAnswerBytes);
    const auto t0 = ProbeClock::now();
    if (!send_bounded(*client, req, res, answer, deadline, o, f, "upload")) return f;
    const double secs = std::chrono::duration<double>(ProbeClock::now() - t0).count();
    if (res.status != 200) {
        f.failure = ProbeFailure::http_status;
        f.reason = "upload: HTTP status " + std::to_string(res.status);
        return f;
    }
    f.ok = true;
    f.bytes = bytes;
    f.seconds = secs;
    return f;
}

// One upload stream: POST /speedtest/upload with a chunked body until the time (or the
// budget, or the server's body limit) is used up. The server counts what arrives and
// leaves the warm-up out.
inline StreamFigures upload_stream(const Endpoint& e, const ThroughputOptions& o,
                                   std::uint64_t limit, std::uint64_t go_bytes,
                                   ProbeClock::time_point deadline) {
    StreamFigures f;
    auto client = probe_client(e, o.connect_timeout, o.read_timeout);
    static const std::string chunk = speed_pattern();
    std::uint64_t sent = 0;
    const auto stop_at = ProbeClock::now() + o.warmup + o.duration;
    // Client::Post with a content provider reads the answer without a bound, so the
    // request is built by hand: the streamed body goes through the Request's content
    // provider members (what Post itself fills in), the answer through a capped receiver.
    httplib::Request req;
    req.method = "POST";
    req.path = "/speedtest/upload?warmup_ms=" + std::to_string(o.warmup.count());
    req.headers = probe_headers(e);
    req.headers.emplace("Content-Type", "application/octet-stream");
    req.headers.emplace("Transfer-Encoding", "chunked");
    req.content_provider_ = [&](size_t, size_t, httplib::DataSink& sink) {
        if (sent >= limit || ProbeClock::now() >= stop_at) {
            sink.done();
            return true;
        }
        const std::size_t n =
            static_cast<std::size_t>(std::min<std::uint64_t>(chunk.size(), limit - sent));
        if (!sink.write(chunk.data(), n)) return false;
        sent += n;
        return true;
    };
    req.is_chunked_content_provider_ = true;
    httplib::Response res;
    CappedBody answer(kMaxAnswerBytes);
    if (!send_bounded(*client, req, res, answer, deadline, o, f, "upload")) return f;
    if (res.status == 404) return upload_go_route(e, o, go_bytes, deadline);
    if (res.status != 200) {
        f.failure = ProbeFailure::http_status;
        f.reason = "upload: HTTP status " + std::to_string(res.status);
        return f;
    }
    auto j = detail::parse_json_small(answer.data);
    if (j.is_discarded() || !j.is_object() || !j.contains("measured_bytes") ||
        !j.contains("measured_seconds") || !j["measured_bytes"].is_number() ||
        !j["measured_seconds"].is_number()) {
        f.failure = ProbeFailure::not_json;
        f.reason = "upload: the answer is not the expected JSON";
        return f;
    }
    f.ok = true;
    f.bytes = j["measured_bytes"].get<std::uint64_t>();
    f.seconds = j["measured_seconds"].get<double>();
    if (f.seconds <= 0 && j.value("seconds", 0.0) > 0) {
        f.bytes = j.value("bytes", std::uint64_t(0));
        f.seconds = j["seconds"].get<double>();
    }
    return f;
}

struct StartThread {
    template <class Body>
    std::thread operator()(Body&& body) const {
        return std::thread(std::forward<Body>(body));
    }
};

// Runs `streams` copies of fn in parallel and sums their rates. When a thread cannot be
// started, the streams that run do the measuring (fewer connections, still a figure);
// `start` makes the threads (a parameter so that failure can be tested).
template <class Fn, class Start = StartThread>
inline StreamFigures parallel_streams(unsigned streams, Fn fn, Start start = {}) {
    std::vector<StreamFigures> figures(streams);
    // An exception must not leave a thread (or std::terminate): it becomes a failed stream.
    auto run = [&fn](StreamFigures& out) {
        try {
            out = fn();
        } catch (const std::exception& e) {
            out = {};
            out.failure = ProbeFailure::error;
            out.reason = e.what();
        }
    };
    std::vector<std::thread> threads;
    threads.reserve(streams);  // no reallocation (and no throw) once threads exist
    unsigned running = 1;      // this thread runs figures[0]
    try {
        for (unsigned i = 1; i < streams; ++i) {
            threads.push_back(start([&run, &figures, i] { run(figures[i]); }));
            ++running;
        }
    } catch (...) {
        // Could not start more threads: measure with the ones that run.
    }
    run(figures[0]);
    for (auto& t : threads) t.join();
    figures.resize(running);
    StreamFigures sum;
    sum.ok = true;
    double mbps = 0;
    for (const auto& f : figures) {
        if (!f.ok) return f;
        sum.bytes += f.bytes;
        mbps += f.mbps();
    }
    // Express the summed rate as bytes over the mean window.
    sum.seconds = mbps > 0 ? double(sum.bytes) * 8.0 / 1e6 / mbps : 0.0;
    return sum;
}

// The peer's own body limit from GET /server_info, when it says; fails `f` when the
// answer is over the bound or the deadline passes.
inline std::optional<std::uint64_t> peer_body_limit(const Endpoint& e, const ThroughputOptions& o,
                                                    ProbeClock::time_point deadline,
                                                    StreamFigures& f) {
    auto client = probe_client(e, o.connect_timeout, o.read_timeout);
    CappedBody answer(kMaxAnswerBytes);
    bool late = false;
    auto res = with_deadline(
        *client, deadline,
        [&] {
            return client->Get("/server_info", probe_headers(e),
                               [&](const char* data, size_t n) { return answer.add(data, n); });
        },
        &late);
    if (answer.too_large) {
        fail_too_large(f, "server_info");
        return std::nullopt;
    }
    if (late) {
        fail_late(f, "server_info");
        return std::nullopt;
    }
    if (!res || res->status != 200) return std::nullopt;  // optional: the defaults hold
    auto j = detail::parse_json_small(answer.data);
    if (j.is_object() && j.contains("MaxBodyBytes") && j["MaxBodyBytes"].is_number_unsigned())
        return j["MaxBodyBytes"].get<std::uint64_t>();
    return std::nullopt;
}

}  // namespace detail

// Measures download then upload speed against the peer's speed-test routes. Never throws
// for network outcomes; no request outlives options.total_timeout.
inline ThroughputResult probe_throughput(const Endpoint& endpoint,
                                         const ThroughputOptions& options = {}) {
    if (options.streams < 1 || options.streams > 64)
        throw error(
            errc::invalid_argument,
            "ThroughputOptions::streams is " + std::to_string(options.streams) + ": expected 1-64");
    if (options.duration.count() <= 0 && options.byte_budget == 0)
        throw error(errc::invalid_argument,
                    "ThroughputOptions: a duration or a byte budget is needed");
    if (options.total_timeout.count() < 0)
        throw error(errc::invalid_argument,
                    "ThroughputOptions::total_timeout is negative: expected 0 (derived) or more");
    const auto total = options.total_timeout.count() > 0
                           ? options.total_timeout
                           : 2 * (options.warmup + options.duration) +
                                 4 * (options.connect_timeout + options.read_timeout);
    const auto deadline = detail::ProbeClock::now() + total;
    ThroughputResult r;
    r.endpoint = endpoint;
    if (options.download) {
        auto f = detail::parallel_streams(options.streams, [&] {
            return detail::download_stream(endpoint, options, deadline);
        });
        if (!f.ok) {
            r.failure = f.failure;
            r.reason = f.reason;
            return r;
        }
        r.download_mbps = f.mbps();
        r.download_bytes = f.bytes;
    }
    if (options.upload) {
        // Stay within the peer's body limit when it says what it is.
        std::uint64_t limit = options.max_upload_request_bytes;
        if (options.byte_budget) limit = std::min(limit, options.byte_budget);
        detail::StreamFigures info;
        try {
            if (auto peer_limit = detail::peer_body_limit(endpoint, options, deadline, info))
                limit = std::min(limit, *peer_limit);
        } catch (const error& e) {  // the deadline watchdog could not start
            info.failure = ProbeFailure::error;
            info.reason = e.what();
        }
        if (info.failure != ProbeFailure::none) {
            r.failure = info.failure;
            r.reason = info.reason;
            return r;
        }
        // For a Go peer's one-shot upload: about what the download rate moves in the
        // duration, within 256 KiB - 64 MiB.
        double guess = r.download_mbps ? *r.download_mbps * 1e6 / 8 *
                                             std::chrono::duration<double>(options.duration).count()
                                       : 4.0 * (1 << 20);
        const auto go_bytes = std::min<std::uint64_t>(
            limit, static_cast<std::uint64_t>(std::clamp(guess, 256.0 * 1024, 64.0 * (1 << 20))));
        auto f = detail::parallel_streams(options.streams, [&] {
            return detail::upload_stream(endpoint, options, limit, go_bytes, deadline);
        });
        if (!f.ok) {
            r.failure = f.failure;
            r.reason = f.reason;
            return r;
        }
        r.upload_mbps = f.mbps();
        r.upload_bytes = f.bytes;
    }
    r.ok = true;
    return r;
}

inline ThroughputResult probe_throughput(const Peer& peer, const ThroughputOptions& options = {}) {
    auto e = peer.endpoint();
    if (!e)
        throw error(errc::invalid_argument, "peer " + peer.label() + " has no address to probe");
    return probe_throughput(*e, options);
}

struct RefreshOptions {
    LatencyOptions latency;
    bool measure_throughput = false;
    ThroughputOptions throughput;
    std::size_t concurrency = 32;  // probes in flight at most (threads)
    bool retry = true;             // probe a failed peer once more
    std::chrono::milliseconds retry_delay{200};
    bool prune = true;  // remove the peers that stay unreachable
    // Called after each peer, from the probing threads (one call at a time).
    std::function<void(std::size_t done, std::size_t total)> progress;
};

struct RefreshEntry {
    Peer peer;  // as it is in the table afterwards (or as it was, when pruned)
    LatencyResult latency;
    std::optional<ThroughputResult> throughput;
    int attempts = 0;
};

struct RefreshReport {
    std::vector<RefreshEntry> kept;
    std::vector<RefreshEntry> pruned;  // each with latency.failure/reason saying why
    double seconds = 0;
};

// Probes every peer of `table` concurrently (at most options.concurrency at once),
// records latency (the minimum sample) and, when asked, throughput plus measured_at,
// and removes the peers that stay unreachable after the retry. The table is only
// touched on the calling thread, after the probes.
inline RefreshReport refresh(IpTable& table, const RefreshOptions& options = {}) {
    if (options.concurrency < 1 || options.concurrency > 4096)
        throw error(errc::invalid_argument, "RefreshOptions::concurrency is " +
                                                std::to_string(options.concurrency) +
                                                ": expected 1-4096");
    const auto t0 = detail::ProbeClock::now();
    const std::vector<Peer> peers = table.peers();
    const std::size_t total = peers.size();
    std::vector<RefreshEntry> results(total);
    std::atomic<std::size_t> next{0};
    std::size_t done = 0;
    std::mutex progress_mutex;

    auto work = [&] {
        for (;;) {
            const std::size_t i = next.fetch_add(1);
            if (i >= total) return;
            RefreshEntry& e = results[i];
            e.peer = peers[i];
            const int max_attempts = options.retry ? 2 : 1;
            for (int a = 0; a < max_attempts; ++a) {
                if (a > 0) std::this_thread::sleep_for(options.retry_delay);
                ++e.attempts;
                e.latency = probe_latency(e.peer, options.latency);
                if (e.latency.reachable) break;
            }
            if (e.latency.reachable && options.measure_throughput)
                e.throughput = probe_throughput(e.latency.endpoint, options.throughput);
            std::lock_guard<std::mutex> lock(progress_mutex);
            ++done;
            if (options.progress) options.progress(done, total);
        }
    };
    const std::size_t n = std::min(options.concurrency, total);
    std::vector<std::thread> threads;
    threads.reserve(n);
    try {
        for (std::size_t i = 0; i + 1 < n; ++i) threads.emplace_back(work);
    } catch (...) {
        // Could not start more threads: the ones that run (and this one) do all the work.
    }
    work();
    for (auto& t : threads) t.join();

    RefreshReport report;
    const auto now = static_cast<std::int64_t>(std::time(nullptr));
    std::vector<std::string> to_remove;
    for (auto& e : results) {
        if (!e.latency.reachable) {
            if (options.prune) {
                to_remove.push_back(e.peer.endpoints().front().to_string());
                report.pruned.push_back(std::move(e));
            } else {
                report.kept.push_back(std::move(e));
            }
            continue;
        }
        // Record on the entry (and its duplicates, if the table has any).
        for (const auto& ep : e.peer.endpoints()) {
            if (Peer* p = table.find(ep.to_string())) {
                // The endpoint that answered is the one to contact from now on (the first
                // may have died: failover to another address of the same server).
                if (!p->is_primary(e.latency.endpoint)) p->promote(e.latency.endpoint);
                if (p->identity.empty()) p->identity = e.latency.identity;
                p->latency_ms = e.latency.min_ms;
                p->measured_at = now;
                if (e.throughput && e.throughput->ok) {
                    p->download_mbps = e.throughput->download_mbps;
                    p->upload_mbps = e.throughput->upload_mbps;
                }
                e.peer = *p;
                break;
            }
        }
        report.kept.push_back(std::move(e));
    }
    for (const auto& key : to_remove) table.remove(key);
    report.seconds = std::chrono::duration<double>(detail::ProbeClock::now() - t0).count();
    return report;
}

}  // namespace p2prc
