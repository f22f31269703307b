// NAT traversal through relays ("TURN through FRP"), both roles:
//
// - RelayPool: what a node does for others on GET /FRPPort. Each call starts an
//   frps-compatible relay server on a free port. The pool is bounded (a cap on live relays)
//   and reclaims relays nobody logged into and relays left without a client.
// - RelayTunnel: what a node behind NAT does for itself. It asks the best relay for a port,
//   exposes a local port there with the frp client, keeps it up, fails over to the next
//   best relay when the relay dies, and moves to a clearly better relay (with hysteresis)
//   when one appears. Which peers are candidates, and how near they are, is the caller's
//   business (p2prc::Node ranks the peers of its table).
#pragma once

#include "address.hpp"
#include "error.hpp"
#include "frp/client.hpp"
#include "frp/server.hpp"
#include "identity.hpp"
#include "probe.hpp"

#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

namespace p2prc {

// The header that carries the network token to /FRPPort (the query parameter `token` works
// too, for clients that cannot set headers).
inline constexpr const char* token_header = "X-P2PRC-Token";

namespace detail {

// Compares secrets in time that does not depend on where they differ.
inline bool same_secret(const std::string& a, const std::string& b) {
    unsigned char diff = static_cast<unsigned char>(a.size() != b.size());
    for (std::size_t i = 0; i < a.size(); ++i)
        diff |= static_cast<unsigned char>(a[i] ^ (i < b.size() ? b[i] : 0));
    return diff == 0;
}

// The outcome of one small HTTP request to a peer: bounded in time and answer size.
struct HttpCall {
    bool answered = false;  // an HTTP answer came (any status)
    int status = 0;
    std::string body;
    std::string reason;  // why there is no (usable) answer
};

inline HttpCall http_call(const Endpoint& peer, const std::string& method, const std::string& path,
                          const httplib::Headers& extra_headers, const std::string& body,
                          std::chrono::milliseconds timeout, std::size_t max_answer = 4096) {
    HttpCall out;
    auto client = probe_client(peer, std::min(timeout, std::chrono::milliseconds(3000)), timeout);
    client->set_keep_alive(false);
    httplib::Headers headers = probe_headers(peer);
    for (const auto& h : extra_headers) headers.insert(h);
    CappedBody answer(max_answer);
    httplib::Request req;
    req.method = method;
    req.path = path;
    req.headers = headers;
    req.body = body;
    if (!body.empty() && !req.has_header("Content-Type"))
        req.headers.emplace("Content-Type", "application/json");
    req.response_handler = [&](const httplib::Response& r) {
        out.status = r.status;
        return true;
    };
    req.content_receiver = [&](const char* data, std::size_t n, std::uint64_t, std::uint64_t) {
        return answer.add(data, n);
    };
    httplib::Response res;
    httplib::Error err = httplib::Error::Success;
    bool late = false;
    const auto t0 = ProbeClock::now();
    const bool sent = with_deadline(
        *client, ProbeClock::now() + timeout, [&] { return client->send(req, res, err); }, &late);
    if (answer.too_large) {
        out.reason = peer.to_string() + " answered more than " + std::to_string(max_answer) + " bytes";
    } else if (late) {
        out.reason = "no answer from " + peer.to_string() + " within " +
                     std::to_string(timeout.count()) + " ms";
    } else if (!sent) {
        out.reason = peer.to_string() + ": " +
                     classify(err, ms_between(t0, ProbeClock::now()), timeout, timeout).second;
    } else {
        out.answered = true;
        out.status = res.status;
        out.body = std::move(answer.data);
    }
    return out;
}

// The "error" member of a JSON error answer, else the (printable) start of the body.
inline std::string answer_error(const HttpCall& c) {
    auto j = parse_json_small(c.body);
    if (j.is_object() && j.contains("error") && j["error"].is_string())
        return j["error"].get<std::string>();
    std::string s;
    for (char ch : c.body.substr(0, 120)) s += (ch >= 32 && ch < 127) ? ch : '?';
    return s;
}

// Asks the server at `at` to prove it holds the key of identity `expected` (GET /whoami with
// a fresh nonce; see identity.hpp). nullopt when it does; else why not.
inline std::optional<std::string> whoami_refutes(const Endpoint& at, const std::string& expected,
                                                 std::chrono::milliseconds timeout) {
    const std::string nonce = random_nonce(16);
    auto call = http_call(at, "GET", "/whoami?nonce=" + nonce, {}, "", timeout);
    if (!call.answered) return call.reason;
    auto j = nlohmann::json::parse(call.body, nullptr, false);
    if (call.status != 200 || !j.is_object() || !j.contains("identity") ||
        !j["identity"].is_string())
        return "GET /whoami at " + at.to_string() + " answered HTTP " +
               std::to_string(call.status) + " without an identity";
    const std::string id = j["identity"].get<std::string>();
    if (id != expected)
        return "another node answers there (identity " + short_identity(id) + ", expected " +
               short_identity(expected) + ")";
    if (!j.contains("signature") || !j["signature"].is_string() ||
        !verify_signature_hex(expected, whoami_message(nonce), j["signature"].get<std::string>()))
        return "the server at " + at.to_string() + " claims identity " + short_identity(id) +
               " but does not prove it (no valid signature of the nonce)";
    return std::nullopt;
}

}  // namespace detail

// ==== The relay side: GET /FRPPort =========================================================

struct RelayPoolOptions {
    IpAddress bind = IpAddress::from_string("0.0.0.0");  // relays listen here (all ports)
    std::size_t cap = 32;                                // live relays at most
    // An allocated relay nobody logs into within this time is reclaimed.
    std::chrono::milliseconds login_timeout{60000};
    // A relay that is not in use for this long is reclaimed. In use means: a client owns
    // a public port on it, or a user connection is piped through it or ended less than
    // idle_timeout ago. A logged-in client alone does not count (its heartbeats are not
    // use), so idle logins cannot hold the pool.
    std::chrono::milliseconds idle_timeout{300000};
    // frp logins are accepted only from the requester's address (IPv4 address, IPv6 /64;
    // behind a NAT, the NAT's address) when it is known.
    bool requester_only = true;
    // Public ports a relay client may open (frps's allow_ports): unprivileged ports by
    // default; deny_ports (the node's own) are refused whatever the ranges say.
    std::vector<PortRange> allow_ports{{1024, 65535}};
    std::vector<std::uint16_t> deny_ports;
    std::string token;  // required at frp login; empty: frp's default (no secret)
    // The relays' TLS certificates are made for this private key (PEM; a node gives its
    // identity key), so a client that knows the node's identity verifies the relay.
    std::string tls_key_pem;
    // Bounds for each relay: it serves one node behind NAT, not a crowd.
    std::size_t max_clients_per_relay = 4;
    // Public ports one client may open on a relay: each is a listener and a thread here,
    // and a node exposes a port or two, not frps's default of 32.
    std::size_t max_proxies_per_client = 4;
    // Live relays one requester may hold (requesters are IPv4 addresses and IPv6 /64s):
    // one caller cannot take every slot of the cap.
    std::size_t per_requester = 4;
    std::size_t max_connections_per_relay = 256;
    std::chrono::milliseconds sweep_interval{500};
    std::function<void(const std::string&)> log;
};

struct RelayInfo {
    std::uint16_t port = 0;
    std::size_t clients = 0;
    bool logged_in = false;  // a client has logged in at least once
    std::chrono::milliseconds age{0};
    std::vector<std::uint16_t> public_ports;  // the proxies' public ports
    std::uint64_t connections = 0, connections_total = 0;  // piped user connections
    std::uint64_t bytes_in = 0, bytes_out = 0;             // users -> service, service -> users
};

// Counts of a RelayPool since it started (what its relays carried is in RelayPool::traffic).
struct RelayPoolCounters {
    std::atomic<std::uint64_t> allocated{0};
    std::atomic<std::uint64_t> refused_cap{0};          // at the cap of live relays
    std::atomic<std::uint64_t> refused_per_address{0};  // at one requester's share
};

class RelayPool {
  public:
    explicit RelayPool(RelayPoolOptions options) : opt_(std::move(options)) {
        if (opt_.login_timeout.count() <= 0 || opt_.idle_timeout.count() <= 0 ||
            opt_.sweep_interval.count() <= 0)
            throw error(errc::invalid_argument, "RelayPool: timeouts must be > 0");
        reaper_ = std::thread([this] { sweep_loop(); });
    }
    ~RelayPool() { stop(); }
    RelayPool(const RelayPool&) = delete;
    RelayPool& operator=(const RelayPool&) = delete;

    // Starts a relay on a free port for `requester` (when known) and returns the port.
    // With `serve_requester_only` (and RelayPoolOptions::requester_only) its frp logins
    // must come from the requester's address; the requester's share counts either way.
    // Throws p2prc::error: limit_exceeded at the cap or at the requester's share,
    // state_error when relaying is off (cap 0) or stopped, io_error when no port could be
    // opened.
    std::uint16_t allocate(const std::optional<IpAddress>& requester = std::nullopt,
                           bool serve_requester_only = true) {
        std::lock_guard<std::mutex> lock(mu_);
        if (stopped_) throw error(errc::state_error, "the relay pool is stopped");
        if (opt_.cap == 0) throw error(errc::state_error, "this node does not relay (relay.cap is 0)");
        if (relays_.size() >= opt_.cap) {
            ++counters_.refused_cap;
            throw error(errc::limit_exceeded, "all " + std::to_string(opt_.cap) +
                                                  " relays of this node are in use; try later");
        }
        const std::string who = requester ? frp::address_group(*requester) : std::string();
        if (!who.empty()) {
            std::size_t held = 0;
            for (const auto& [port, e] : relays_) held += e.requester == who;
            if (held >= opt_.per_requester) {
                ++counters_.refused_per_address;
                throw error(errc::limit_exceeded, who + " already holds " + std::to_string(held) +
                                                      " relays of this node (the most one requester may hold); "
                                                      "try later");
            }
        }
        frp::ServerOptions so;
        so.bind = Endpoint{opt_.bind, 0};
        so.token = opt_.token;
        so.tls_key_pem = opt_.tls_key_pem;
        so.max_clients = opt_.max_clients_per_relay;
        so.max_proxies_per_client = opt_.max_proxies_per_client;
        so.max_connections = opt_.max_connections_per_relay;
        so.login_timeout = std::min(opt_.login_timeout, std::chrono::milliseconds(10000));
        if (requester && opt_.requester_only && serve_requester_only) so.owner = *requester;
        so.allow_ports = opt_.allow_ports;
        so.deny_ports = opt_.deny_ports;
        // One requester's relay: a few clients and sessions, not a crowd.
        so.max_sessions_per_address = std::max<std::size_t>(opt_.max_clients_per_relay, 1);
        so.log = opt_.log;
        so.stats = std::make_shared<frp::TrafficStats>();
        so.stats->parent = traffic_;
        Entry e;
        e.server = std::make_unique<frp::Server>(std::move(so));
        e.created = e.last_active = Clock::now();
        e.requester = who;
        const std::uint16_t port = e.server->port();
        relays_.emplace(port, std::move(e));
        ++counters_.allocated;
        log("relay allocated on port " + std::to_string(port));
        return port;
    }

    std::size_t live() const {
        std::lock_guard<std::mutex> lock(mu_);
        return relays_.size();
    }

    std::vector<RelayInfo> relays() const {
        std::lock_guard<std::mutex> lock(mu_);
        std::vector<RelayInfo> out;
        const auto now = Clock::now();
        for (const auto& [port, e] : relays_) {
            RelayInfo i;
            i.port = port;
            i.clients = e.server->client_count();
            i.logged_in = e.logged_in;
            i.age = std::chrono::duration_cast<std::chrono::milliseconds>(now - e.created);
            for (const auto& p : e.server->proxies()) i.public_ports.push_back(p.port);
            const auto& st = e.server->stats();
            i.connections = st.connections_live;
            i.connections_total = st.connections_total;
            i.bytes_in = st.bytes_in;
            i.bytes_out = st.bytes_out;
            out.push_back(i);
        }
        return out;
    }

    // What every relay of the pool carried, the reclaimed ones included.
    const frp::TrafficStats& traffic() const noexcept { return *traffic_; }
    const RelayPoolCounters& counters() const noexcept { return counters_; }
    const RelayPoolOptions& options() const noexcept { return opt_; }

    // Closes every relay (and every tunnel through them) and joins every thread.
    void stop() {
        std::map<std::uint16_t, Entry> doomed;
        {
            std::lock_guard<std::mutex> lock(mu_);
            if (stopped_) return;
            stopped_ = true;
            doomed.swap(relays_);
        }
        cv_.notify_all();
        if (reaper_.joinable()) reaper_.join();
        for (auto& [port, e] : doomed) e.server->stop();
    }

  private:
    using Clock = std::chrono::steady_clock;
    struct Entry {
        std::unique_ptr<frp::Server> server;
        Clock::time_point created, last_active;
        bool logged_in = false;
        std::string requester;  // frp::address_group() of who asked, "" when unknown
    };

    void log(const std::string& line) { p2prc::detail::notify(opt_.log, line); }

    void sweep_loop() {
        std::unique_lock<std::mutex> lock(mu_);
        while (!stopped_) {
            cv_.wait_for(lock, opt_.sweep_interval, [this] { return stopped_; });
            if (stopped_) break;
            const auto now = Clock::now();
            std::vector<std::pair<std::uint16_t, Entry>> doomed;
            for (auto it = relays_.begin(); it != relays_.end();) {
                Entry& e = it->second;
                const auto a = e.server->activity();
                if (a.clients > 0 && !e.logged_in) {
                    e.logged_in = true;
                    e.last_active = now;  // a client just came: idle_timeout from here
                }
                // What keeps a relay: a public port, or traffic (see idle_timeout).
                if (a.proxies > 0 || a.piped_connections > 0) e.last_active = now;
                if (a.last_traffic && *a.last_traffic > e.last_active)
                    e.last_active = *a.last_traffic;
                const char* why = nullptr;
                if (!e.logged_in && now - e.created >= opt_.login_timeout) why = "nobody logged in";
                else if (e.logged_in && now - e.last_active >= opt_.idle_timeout)
                    why = a.clients > 0 ? "its clients own no port and carry no traffic"
                                        : "no client left";
                if (why) {
                    log("relay on port " + std::to_string(it->first) + " reclaimed: " + why);
                    doomed.emplace_back(it->first, std::move(e));
                    it = relays_.erase(it);
                } else {
                    ++it;
                }
            }
            if (doomed.empty()) continue;
            // Stopping joins the relay's threads: not under the lock, so allocate() and
            // live() stay responsive.
            lock.unlock();
            for (auto& d : doomed) d.second.server->stop();
            doomed.clear();
            lock.lock();
        }
    }

    RelayPoolOptions opt_;
    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::map<std::uint16_t, Entry> relays_;
    bool stopped_ = false;
    std::thread reaper_;
    std::shared_ptr<frp::TrafficStats> traffic_ = std::make_shared<frp::TrafficStats>();
    RelayPoolCounters counters_;
};

// ==== The exposing side ====================================================================

// A peer that may carry a tunnel: its HTTP endpoint (where /FRPPort is asked) and how near
// it is now.
struct RelayCandidate {
    std::string name;
    Endpoint http;
    double latency_ms = 0;
    // Its identity, when the table knows it: the relay must prove it (GET /whoami) before
    // it is used, so an address that now leads to somebody else is not trusted. (Given a
    // default, so brace-initialising the first three stays warning-free.)
    std::string identity{};
};

// Whether moving from a relay at `current_ms` to one at `candidate_ms` is worth breaking a
// healthy tunnel: the new one must be at least 10 ms and a third faster (the hysteresis
// Tailscale uses to choose its relay), so two relays of about the same distance never make
// the tunnel flap between them.
inline bool relay_switch_worthwhile(double current_ms, double candidate_ms) {
    return candidate_ms <= current_ms - 10.0 && candidate_ms <= current_ms * (2.0 / 3.0);
}

// Asks `relay` for a port with GET /FRPPort. Returns the port, or nullopt with *why set.
inline std::optional<std::uint16_t> request_relay_port(const Endpoint& relay, const std::string& token,
                                                       std::chrono::milliseconds timeout,
                                                       std::string* why = nullptr) {
    httplib::Headers h;
    if (!token.empty()) h.emplace(token_header, token);
    // Room for a JSON refusal (a port is at most 5 digits, an error a sentence).
    auto call = detail::http_call(relay, "GET", "/FRPPort", h, "", timeout, 4096);
    auto fail = [&](std::string text) -> std::optional<std::uint16_t> {
        if (why) *why = std::move(text);
        return std::nullopt;
    };
    if (!call.answered) return fail(call.reason);
    if (call.status != 200)
        return fail(relay.to_string() + " refused a relay port (HTTP " + std::to_string(call.status) +
                    "): " + detail::answer_error(call));
    std::string text = call.body;
    while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' '))
        text.pop_back();
    auto port = parse_port(text);
    if (!port) return fail(relay.to_string() + " answered /FRPPort with \"" + detail::answer_error(call) +
                           "\", not a port");
    return port;
}

// Where a local port is reachable through a relay.
struct Exposure {
    Endpoint local;            // the exposed service
    Endpoint public_endpoint;  // where others reach it
    Endpoint relay;            // the relay peer's HTTP endpoint
    std::string relay_name;
    double relay_latency_ms = 0;
    std::uint16_t relay_port = 0;  // the frp port the relay gave for this tunnel
    std::uint64_t changes = 0;     // relay switches and failovers so far
    std::string last_change;       // why the last one: "failover", "move" or "reconnect"
};

struct ExposeOptions {
    IpAddress local_host = IpAddress::from_string("127.0.0.1");
    std::string proxy_name;  // default: "<node name>-<local port>"
    bool tcp_mux = true;
    // frp's wire protocol towards the relay: v1 (the default, what every relay speaks) or
    // v2 (p2prc relays of this version and stock frps 0.69+).
    frp::WireProtocol wire_protocol = frp::WireProtocol::v1;
    // One relay's chance: /FRPPort, frp login and the proxy running.
    std::chrono::milliseconds attempt_timeout{10000};
    // How often a healthy tunnel looks for a clearly better relay (0: never).
    std::chrono::milliseconds reevaluate_interval{60000};
    // A tunnel down this long (its relay gone) moves to the next best relay.
    std::chrono::milliseconds failure_grace{2000};
    // A relay that failed is not tried again for this long.
    std::chrono::milliseconds failed_relay_cooldown{60000};
    std::size_t max_attempts = 4;  // relays tried per (re)establishment
    // frp keepalive towards the relay: a relay that vanishes silently (no FIN, no RST) is
    // noticed within about interval + timeout.
    std::chrono::milliseconds keepalive_interval{5000};
    std::chrono::milliseconds keepalive_timeout{5000};
    // Called on the tunnel's own thread after every change of relay (not for the first).
    // It must not stop or unexpose this tunnel (the thread would wait for itself).
    std::function<void(const Exposure&)> on_change;
    // Checks every relay after the first (failover, move) once its tunnel runs, before it
    // replaces the old one: a reason refuses that relay. (The first one is the caller's to
    // check: start() returns it.) Runs on the tunnel's own thread.
    std::function<std::optional<std::string>(const Exposure&)> verify_change;
    std::function<void(const std::string&)> log;
};

// One local port kept exposed through the best relay. Thread-safe.
class RelayTunnel {
  public:
    // Ranked candidates, nearest first, measured now; `exclude` are not wanted.
    using Ranker = std::function<std::vector<RelayCandidate>(const std::vector<Endpoint>& exclude)>;
    // A fresh latency of one relay, or nullopt when it does not answer.
    using Measure = std::function<std::optional<double>(const Endpoint&)>;

    RelayTunnel(Endpoint local, std::string token, ExposeOptions options, Ranker rank, Measure measure)
        : local_(local), token_(std::move(token)), opt_(std::move(options)),
          rank_(std::move(rank)), measure_(std::move(measure)) {
        if (local_.port == 0) throw error(errc::invalid_argument, "expose: the local port must not be 0");
        if (opt_.proxy_name.empty()) opt_.proxy_name = "p2prc-" + std::to_string(local_.port);
        if (opt_.attempt_timeout.count() <= 0 || opt_.failure_grace.count() <= 0 || opt_.max_attempts == 0)
            throw error(errc::invalid_argument,
                        "expose: attempt_timeout and failure_grace must be > 0, max_attempts >= 1");
    }
    ~RelayTunnel() { stop(); }
    RelayTunnel(const RelayTunnel&) = delete;
    RelayTunnel& operator=(const RelayTunnel&) = delete;

    // Establishes the tunnel through the best candidate that works and starts keeping it.
    // Throws p2prc::error(io_error) naming every relay tried and why it failed (or saying
    // there was no candidate).
    Exposure start() {
        {
            std::lock_guard<std::mutex> lock(mu_);
            if (started_) throw error(errc::state_error, "expose: the tunnel is already started");
            started_ = true;
        }
        std::string why;
        auto up = establish({}, &why, false);
        if (!up && stopping())
            throw error(errc::state_error, "expose " + local_.to_string() + ": stopped while choosing a relay");
        if (!up) throw error(errc::io_error, "cannot expose " + local_.to_string() + ": " + why);
        Exposure e;
        {
            std::lock_guard<std::mutex> lock(mu_);
            // stop() may have run while the relay was chosen: it found no monitor to join,
            // so starting one now would outlive it (and the client would never be stopped).
            if (stop_) {
                up->client->stop();
                throw error(errc::state_error, "expose " + local_.to_string() + ": stopped while choosing a relay");
            }
            client_ = std::move(up->client);
            current_ = up->exposure;
            e = *current_;
        }
        monitor_ = std::thread([this] { monitor(); });
        return e;
    }

    std::optional<Exposure> current() const {
        std::lock_guard<std::mutex> lock(mu_);
        return current_;
    }

    void stop() {
        std::unique_ptr<frp::Client> client;
        {
            std::lock_guard<std::mutex> lock(mu_);
            if (stop_) return;
            stop_ = true;
            client = std::move(client_);
            current_.reset();
        }
        cv_.notify_all();
        if (monitor_.joinable()) monitor_.join();
        if (client) client->stop();
    }

  private:
    using Clock = std::chrono::steady_clock;
    struct Up {
        std::unique_ptr<frp::Client> client;
        Exposure exposure;
    };

    void log(const std::string& line) { p2prc::detail::notify(opt_.log, line); }

    bool stopping() const {
        std::lock_guard<std::mutex> lock(mu_);
        return stop_;
    }

    std::vector<Endpoint> cooling(Clock::time_point now) {
        std::vector<Endpoint> out;
        std::lock_guard<std::mutex> lock(mu_);
        for (auto it = failed_.begin(); it != failed_.end();) {
            if (now - it->second >= opt_.failed_relay_cooldown) {
                it = failed_.erase(it);
            } else {
                out.push_back(it->first);
                ++it;
            }
        }
        return out;
    }

    // Tries the ranked candidates (minus `exclude` and the relays cooling down) in order.
    std::optional<Up> establish(std::vector<Endpoint> exclude, std::string* why, bool later) {
        const std::size_t lost = exclude.size();
        const auto cool = cooling(Clock::now());
        for (const auto& e : cool)
            if (std::find(exclude.begin(), exclude.end(), e) == exclude.end()) exclude.push_back(e);
        std::vector<RelayCandidate> ranked;
        try {
            ranked = rank_(exclude);
        } catch (const std::exception& e) {
            *why = std::string("cannot rank the relays: ") + e.what();
            return std::nullopt;
        }
        if (ranked.empty()) {
            *why = "no relay candidate: the table has no reachable, measured peer that is not "
                   "itself behind NAT";
            // Not the table's fault when the others are only left out for now.
            if (exclude.size() > lost)
                *why += " (besides " + std::to_string(exclude.size() - lost) +
                        " that failed in the last " +
                        std::to_string(opt_.failed_relay_cooldown.count() / 1000) + " s)";
            return std::nullopt;
        }
        std::string tried;
        std::size_t attempts = 0;
        for (const auto& c : ranked) {
            if (attempts++ >= opt_.max_attempts || stopping()) break;
            std::string reason;
            if (auto up = try_relay(c, &reason, later)) return up;
            log("relay " + c.http.to_string() + " failed: " + reason);
            {
                std::lock_guard<std::mutex> lock(mu_);
                failed_[c.http] = Clock::now();
            }
            tried += (tried.empty() ? "" : "; ") + c.http.to_string() + ": " + reason;
        }
        *why = "every relay tried failed (" + tried + ")";
        return std::nullopt;
    }

    std::optional<Up> try_relay(const RelayCandidate& c, std::string* why, bool later) {
        const auto deadline = Clock::now() + opt_.attempt_timeout;
        if (!c.identity.empty()) {
            if (auto bad = detail::whoami_refutes(
                    c.http, c.identity,
                    std::min(opt_.attempt_timeout, std::chrono::milliseconds(5000)))) {
                *why = "not the relay the table lists: " + *bad;
                return std::nullopt;
            }
        }
        auto port = request_relay_port(c.http, token_, std::min(opt_.attempt_timeout, std::chrono::milliseconds(5000)), why);
        if (!port) return std::nullopt;
        frp::ClientOptions co;
        co.server = Endpoint{c.http.address, *port};
        co.token = token_;
        co.tcp_mux = opt_.tcp_mux;
        co.wire_protocol = opt_.wire_protocol;
        if (auto key = parse_identity(c.identity)) {
            // A p2prc relay whose identity the table knows: TLS to it, its certificate
            // checked against that identity (a stock frps has none, and stays unverified).
            co.tls = true;
            co.tls_expected_key.assign(reinterpret_cast<const char*>(key->data()), key->size());
        }
        co.dial_timeout = co.login_timeout = std::min(opt_.attempt_timeout, std::chrono::milliseconds(5000));
        co.heartbeat_interval = co.mux_keepalive_interval = opt_.keepalive_interval;
        co.mux_ping_timeout = opt_.keepalive_timeout;
        co.heartbeat_timeout = opt_.keepalive_interval + opt_.keepalive_timeout;
        co.reconnect_min = std::chrono::milliseconds(250);
        co.reconnect_max = std::chrono::milliseconds(2000);
        co.log = opt_.log;
        frp::ProxySpec ps;
        ps.name = opt_.proxy_name;
        ps.local = local_;
        co.proxies.push_back(ps);
        auto client = std::make_unique<frp::Client>(std::move(co));
        // Waited in short slices, so stop() is not held up by a relay that never finishes
        // (one that accepts the login and never registers the proxy keeps us here until the
        // deadline).
        frp::ProxyStatus st;
        for (;;) {
            auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
            st = client->wait_running(ps.name, std::clamp(left, std::chrono::milliseconds(1),
                                                          std::chrono::milliseconds(100)));
            if (st.state == frp::ProxyState::running || st.state == frp::ProxyState::failed ||
                client->state() == frp::ClientState::failed || Clock::now() >= deadline || stopping())
                break;
        }
        if (st.state != frp::ProxyState::running) {
            *why = stopping() ? "stopped"
                   : !st.error.empty() ? st.error
                   : !client->last_error().empty() ? "relay port " + std::to_string(*port) + ": " + client->last_error()
                   : "the tunnel did not come up within " + std::to_string(opt_.attempt_timeout.count()) + " ms";
            client->stop();
            return std::nullopt;
        }
        Up up;
        up.exposure.local = local_;
        up.exposure.public_endpoint = st.public_endpoint;
        up.exposure.relay = c.http;
        up.exposure.relay_name = c.name;
        up.exposure.relay_latency_ms = c.latency_ms;
        up.exposure.relay_port = *port;
        if (later && opt_.verify_change) {
            std::optional<std::string> bad;
            try {
                bad = opt_.verify_change(up.exposure);
            } catch (const std::exception& e) {
                bad = std::string("cannot check it: ") + e.what();
            }
            if (bad) {
                *why = "the endpoint it gave (" + st.public_endpoint.to_string() +
                       ") failed the check: " + *bad;
                client->stop();
                return std::nullopt;
            }
        }
        up.client = std::move(client);
        return up;
    }

    // Puts a new tunnel in place of the old one (make before break) and reports it.
    void replace(Up up, const char* why) {
        std::unique_ptr<frp::Client> old;
        Exposure now;
        {
            std::lock_guard<std::mutex> lock(mu_);
            if (stop_) {
                old = std::move(up.client);
            } else {
                old = std::move(client_);
                client_ = std::move(up.client);
                up.exposure.changes = (current_ ? current_->changes : 0) + 1;
                up.exposure.last_change = why;
                current_ = up.exposure;
                now = *current_;
            }
        }
        if (old) old->stop();
        if (now.public_endpoint.port == 0) return;
        log("exposed " + local_.to_string() + " at " + now.public_endpoint.to_string() + " via relay " +
            now.relay.to_string());
        p2prc::detail::notify(opt_.on_change, now);
    }

    void monitor() {
        bool down = false;  // the proxy is not running (since down_since)
        Clock::time_point down_since = Clock::now();
        auto next_eval = Clock::now() + opt_.reevaluate_interval;
        auto next_failover = Clock::now();
        for (;;) {
            {
                std::unique_lock<std::mutex> lock(mu_);
                cv_.wait_for(lock, std::chrono::milliseconds(200), [this] { return stop_; });
                if (stop_) return;
            }
            frp::ProxyStatus st;
            Exposure cur;
            {
                std::lock_guard<std::mutex> lock(mu_);
                if (!client_ || !current_) return;
                st = client_->status(opt_.proxy_name);
                cur = *current_;
            }
            const auto now = Clock::now();
            if (st.state == frp::ProxyState::running) {
                down = false;
                if (st.public_endpoint != cur.public_endpoint) {
                    // The same relay took the proxy back after a reconnect, on another port.
                    cur.public_endpoint = st.public_endpoint;
                    {
                        std::lock_guard<std::mutex> lock(mu_);
                        current_->public_endpoint = st.public_endpoint;
                        ++current_->changes;
                        current_->last_change = "reconnect";
                        cur = *current_;
                    }
                    p2prc::detail::notify(opt_.on_change, cur);
                }
            } else if (!down) {
                down = true;
                down_since = now;
            }
            if (down && now - down_since >= opt_.failure_grace && now >= next_failover) {
                log("relay " + cur.relay.to_string() + " lost; failing over");
                {
                    std::lock_guard<std::mutex> lock(mu_);
                    failed_[cur.relay] = now;
                }
                std::string why;
                if (auto up = establish({cur.relay}, &why, true)) {
                    replace(std::move(*up), "failover");
                    down = false;
                    next_eval = Clock::now() + opt_.reevaluate_interval;
                } else {
                    // The old client keeps trying its relay; another round later.
                    log("failover failed: " + why);
                    next_failover = Clock::now() + std::chrono::seconds(5);
                }
                continue;
            }
            if (opt_.reevaluate_interval.count() > 0 && !down && now >= next_eval) {
                next_eval = now + opt_.reevaluate_interval;
                reevaluate(cur);
            }
        }
    }

    void reevaluate(const Exposure& cur) {
        std::optional<double> here;
        std::vector<RelayCandidate> others;
        try {
            here = measure_(cur.relay);
            std::vector<Endpoint> exclude = cooling(Clock::now());
            exclude.push_back(cur.relay);
            others = rank_(exclude);
        } catch (const std::exception& e) {
            log(std::string("relay re-evaluation failed: ") + e.what());
            return;
        }
        if (others.empty() || !here) return;  // a healthy tunnel stays where it is
        {
            std::lock_guard<std::mutex> lock(mu_);
            if (current_) current_->relay_latency_ms = *here;
        }
        const auto& best = others.front();
        if (!relay_switch_worthwhile(*here, best.latency_ms)) return;
        log("relay " + best.http.to_string() + " (" + std::to_string(best.latency_ms) + " ms) is clearly nearer than " +
            cur.relay.to_string() + " (" + std::to_string(*here) + " ms); moving");
        std::string why;
        if (auto up = try_relay(best, &why, true)) {
            replace(std::move(*up), "move");
            return;
        }
        log("moving to " + best.http.to_string() + " failed: " + why);
        // Cooled down like a relay that failed a failover: else every re-evaluation would
        // spend attempt_timeout on it again (the monitor cannot fail over meanwhile).
        std::lock_guard<std::mutex> lock(mu_);
        failed_[best.http] = Clock::now();
    }

    const Endpoint local_;
    const std::string token_;
    ExposeOptions opt_;
    Ranker rank_;
    Measure measure_;
    mutable std::mutex mu_;
    std::condition_variable cv_;
    bool started_ = false;
    bool stop_ = false;
    std::unique_ptr<frp::Client> client_;
    std::optional<Exposure> current_;
    std::unordered_map<Endpoint, Clock::time_point> failed_;
    std::thread monitor_;
};

}  // namespace p2prc
