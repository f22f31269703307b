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
// them (the client's own count would include whatever sits in socket buffers).
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
#include <cstdint>
#include <ctime>
#include <functional>
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
        case ProbeFailure::none: return "none";
        case ProbeFailure::refused: return "refused";
        case ProbeFailure::timeout: return "timeout";
        case ProbeFailure::http_status: return "http_status";
        case ProbeFailure::not_json: return "not_json";
        case ProbeFailure::closed: return "closed";
        case ProbeFailure::too_large: return "too_large";
        case ProbeFailure::error: return "error";
    }
    return "unknown";
}

struct LatencyOptions {
    int samples = 5;                              // timed requests after the warm-up
    std::string path = "/server_info";
    std::chrono::milliseconds connect_timeout{2000};
    std::chrono::milliseconds read_timeout{2000};  // one receive
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
};

struct ThroughputOptions {
    std::chrono::milliseconds duration{2000};  // counted time of each direction
    std::uint64_t byte_budget = 0;             // when non-zero: stop each direction after this many bytes
    std::chrono::milliseconds warmup{250};     // not counted
    unsigned streams = 1;                      // parallel connections per direction
    bool download = true;
    bool upload = true;
    std::uint64_t max_upload_request_bytes = 64u << 20;  // the server's body limit (P2PRC default)
    std::chrono::milliseconds connect_timeout{2000};
    std::chrono::milliseconds read_timeout{5000};
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

inline std::unique_ptr<httplib::Client> probe_client(const Endpoint& e, std::chrono::milliseconds connect,
                                                     std::chrono::milliseconds read) {
    // cpp-httplib wants the bare address; the Host header gets the bracketed form.
    auto c = std::make_unique<httplib::Client>(e.host_string(), e.port);
    c->set_keep_alive(true);
    c->set_tcp_nodelay(true);
    c->set_decompress(false);  // no Accept-Encoding: the peer sends the bytes as they are
    c->set_follow_location(false);
    c->set_connection_timeout(connect.count() / 1000, static_cast<long>((connect.count() % 1000) * 1000));
    c->set_read_timeout(read.count() / 1000, static_cast<long>((read.count() % 1000) * 1000));
    c->set_write_timeout(read.count() / 1000, static_cast<long>((read.count() % 1000) * 1000));
    return c;
}

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
                return {ProbeFailure::timeout, "no answer within " + std::to_string(read_timeout.count()) + " ms"};
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
        throw error(errc::invalid_argument, "LatencyOptions::samples is " + std::to_string(options.samples) +
                                                ": expected 1-1000");
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
        int status = 0;
        const auto t0 = ProbeClock::now();
        auto res = client->Get(
            options.path.c_str(), headers,
            [&](const httplib::Response& response) {
                status = response.status;
                return true;
            },
            [&](const char* data, size_t n) {
                if (body.size() + n > options.max_body_bytes) return !(too_large = true);
                if (ProbeClock::now() > deadline) return !(late = true);
                body.append(data, n);
                return true;
            });
        if (!res) {
            if (too_large) {
                r.failure = ProbeFailure::too_large;
                r.reason = "answer larger than " + std::to_string(options.max_body_bytes) + " bytes";
            } else if (late) {
                r.failure = ProbeFailure::timeout;
                r.reason = "probe took longer than " + std::to_string(options.total_timeout.count()) + " ms";
            } else {
                auto [f, text] = detail::classify(res.error(), detail::ms_between(t0, ProbeClock::now()),
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
            r.reason = "probe took longer than " + std::to_string(options.total_timeout.count()) + " ms";
            r.samples_ms.clear();
            return r;
        }
    }
    r.reachable = true;
    detail::fill_stats(r);
    return r;
}

// Probes the peer's endpoints in order (IPv4 first) and returns the first reachable
// result, or the failure of the last one tried.
inline LatencyResult probe_latency(const Peer& peer, const LatencyOptions& options = {}) {
    auto eps = peer.endpoints();
    if (eps.empty())
        throw error(errc::invalid_argument, "peer " + peer.label() + " has no address to probe");
    LatencyResult last;
    for (const auto& e : eps) {
        last = probe_latency(e, options);
        if (last.reachable) return last;
    }
    return last;
}

}  // namespace p2prc
