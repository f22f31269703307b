// p2prc::Node: a server of the network. It ties the configuration, the table file, the
// HTTP server, the probes and discovery together.
//
// The table file is the node's memory and the meeting point of every process that uses
// it (a running `p2prc serve`, a `p2prc discover` next to it): every change is a
// load-change-save under the file lock (IpTable::update), never a blind overwrite of the
// file with an in-memory copy, so concurrent processes lose nothing.
#pragma once

#include "config.hpp"
#include "discovery.hpp"
#include "error.hpp"
#include "identity.hpp"
#include "iptable.hpp"
#include "metrics.hpp"
#include "net.hpp"
#include "probe.hpp"
#include "relay.hpp"
#include "server.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace p2prc {

// What one POST /IpTable (or one answer during discovery) did to the table.
struct LearnOutcome {
    LearnReport filter;               // the scope rule and the bounds
    std::size_t new_servers = 0;      // entries the table did not know
    std::size_t checked = 0;          // of those, probed for liveness
    std::size_t added = 0;            // of those, alive and added
    std::size_t unchecked = 0;        // not probed: over the per-request cap, the time budget,
                                      // or the node's bound on concurrent checks
    std::vector<Peer> added_peers;    // what was added
    SignatureReport signatures;       // signed entries: verified, forged, replayed, unsigned claims
    std::size_t wrong_identity = 0;  // addresses dropped: another identity (or none) answered there
    std::size_t updated = 0;         // known servers whose newer signed entry was taken
};

struct DiscoverReport {
    std::vector<Endpoint> contacted;                          // peers that answered
    std::vector<std::pair<Endpoint, std::string>> failed;     // peers that did not, and why
    std::size_t hops = 0;                                     // rounds done (1 + hops beyond the bootstrap)
    bool budget_exhausted = false;                            // stopped by the time budget
    RefreshReport refresh;                                    // the probe round at the end
};

// What a peer answered to POST /dialback.
struct DialbackResult {
    Endpoint peer;               // who was asked
    bool answered = false;       // it answered (reachable below is its finding)
    bool reachable = false;      // it could connect to us on the port
    std::optional<IpAddress> observed;  // the address it dialled (ours, as it sees us)
    std::string reason;          // why not answered / why not reachable
};

// Asks `peer` to connect back to us (our address as it sees it) on `port`.
inline DialbackResult request_dialback(const Endpoint& peer, std::uint16_t port,
                                       std::chrono::milliseconds timeout = std::chrono::milliseconds(6000)) {
    DialbackResult out;
    out.peer = peer;
    auto call = detail::http_call(peer, "POST", "/dialback", {}, nlohmann::json{{"port", port}}.dump(), timeout);
    if (!call.answered) {
        out.reason = call.reason;
        return out;
    }
    if (call.status != 200) {
        out.reason = peer.to_string() + " refused the dialback (HTTP " + std::to_string(call.status) +
                     "): " + detail::answer_error(call);
        return out;
    }
    auto j = detail::parse_json_small(call.body);
    if (!j.is_object() || !j.contains("reachable") || !j["reachable"].is_boolean()) {
        out.reason = peer.to_string() + " answered the dialback with something other than {\"reachable\": bool}";
        return out;
    }
    out.answered = true;
    out.reachable = j["reachable"].get<bool>();
    if (j.contains("address") && j["address"].is_string())
        out.observed = IpAddress::parse(j["address"].get<std::string>());
    if (j.contains("error") && j["error"].is_string()) out.reason = j["error"].get<std::string>();
    return out;
}

// What Node::check_reachability found and did.
struct ReachabilityReport {
    bool decided = false;    // a peer answered (or the configuration says)
    bool reachable = false;  // peers can connect to the node's server directly
    std::vector<DialbackResult> asked;
    std::optional<Exposure> exposure;  // the relay that carries the node's server, if any
    std::string reason;                // when undecided, or when exposing failed
};

namespace detail {

// Records a refresh done on a copy into `table` (as it is on disk now): figures for the
// peers that answered, removal of those that did not.
inline void apply_refresh(IpTable& table, const RefreshReport& report) {
    for (const auto& e : report.pruned)
        for (const auto& ep : e.peer.endpoints()) table.remove(ep.to_string());
    for (const auto& e : report.kept) {
        if (!e.latency.reachable) continue;
        for (const auto& ep : e.peer.endpoints()) {
            if (Peer* p = table.find(ep.to_string())) {
                // Contacted from now on where it answered (failover to another address).
                if (!p->is_primary(e.latency.endpoint)) p->promote(e.latency.endpoint);
                if (p->identity.empty()) p->identity = e.latency.identity;
                p->latency_ms = e.peer.latency_ms;
                p->measured_at = e.peer.measured_at;
                if (e.peer.download_mbps) p->download_mbps = e.peer.download_mbps;
                if (e.peer.upload_mbps) p->upload_mbps = e.peer.upload_mbps;
                break;
            }
        }
    }
}

// Runs fn(i) for i in [0, n) on at most `concurrency` threads (this one included).
template <class Fn>
void parallel_for(std::size_t n, std::size_t concurrency, Fn fn) {
    std::atomic<std::size_t> next{0};
    auto work = [&] {
        for (std::size_t i; (i = next.fetch_add(1)) < n;) fn(i);
    };
    std::vector<std::thread> threads;
    const std::size_t extra = std::min(n, std::max<std::size_t>(concurrency, 1)) - (n ? 1 : 0);
    try {
        for (std::size_t i = 0; i < extra; ++i) threads.emplace_back(work);
    } catch (...) {
        // Fewer threads than asked: the ones running share the work.
    }
    work();
    for (auto& t : threads) t.join();
}

inline std::chrono::milliseconds ms(std::uint32_t v) { return std::chrono::milliseconds(v); }

// Counts one caller into `in_flight` for its lifetime; held() tells whether it came in
// within `limit` (when not, the caller backs off: the count is undone on destruction).
class InFlightSlot {
  public:
    InFlightSlot(std::atomic<int>& in_flight, int limit) : n_(in_flight), held_(++in_flight <= limit) {}
    ~InFlightSlot() { --n_; }
    InFlightSlot(const InFlightSlot&) = delete;
    InFlightSlot& operator=(const InFlightSlot&) = delete;
    bool held() const noexcept { return held_; }

  private:
    std::atomic<int>& n_;
    const bool held_;
};

// `n` random hex digits (from the system's entropy source).
inline std::string random_hex(std::size_t n) {
    static const char digits[] = "0123456789abcdef";
    std::random_device rd;
    std::string out;
    for (std::size_t i = 0; i < n; ++i) out += digits[rd() & 15u];
    return out;
}

// Token buckets per caller address for POST /dialback: `burst` requests at once, then one
// per `every`. Remembers at most `max_callers` addresses (the least recent is forgotten, and
// a forgotten caller starts with a full bucket: a flood of addresses gains one burst each,
// which the node's bound on concurrent dials still caps).
class CallerRateLimit {
  public:
    CallerRateLimit(double burst, std::chrono::milliseconds every, std::size_t max_callers = 4096)
        : burst_(burst), every_(every), max_(max_callers) {}

    // 0 when the call may go ahead (and counts it), else milliseconds to wait.
    std::int64_t take(const IpAddress& who) {
        using Clock = std::chrono::steady_clock;
        std::lock_guard<std::mutex> lock(mu_);
        const auto now = Clock::now();
        const std::string key = who.to_string();
        auto it = buckets_.find(key);
        if (it == buckets_.end()) {
            if (buckets_.size() >= max_) {
                auto oldest = std::min_element(buckets_.begin(), buckets_.end(), [](const auto& a, const auto& b) {
                    return a.second.at < b.second.at;
                });
                buckets_.erase(oldest);
            }
            it = buckets_.emplace(key, Bucket{burst_, now}).first;
        }
        Bucket& b = it->second;
        const double per_ms = 1.0 / double(every_.count());
        b.tokens = std::min(burst_, b.tokens + per_ms * double(std::chrono::duration_cast<std::chrono::milliseconds>(now - b.at).count()));
        b.at = now;
        if (b.tokens >= 1.0) {
            b.tokens -= 1.0;
            return 0;
        }
        return std::max<std::int64_t>(1, std::int64_t((1.0 - b.tokens) / per_ms));
    }

  private:
    struct Bucket {
        double tokens;
        std::chrono::steady_clock::time_point at;
    };
    double burst_;
    std::chrono::milliseconds every_;
    std::size_t max_;
    std::mutex mu_;
    std::unordered_map<std::string, Bucket> buckets_;
};

// The port of a POST /dialback body {"port": N} (N a number or a decimal string,
// 1-65535), or nullopt. The body is bounded (1 KiB, nesting 4) before it is parsed.
inline std::optional<std::uint16_t> dialback_port(std::string_view body) {
    auto j = parse_json_small(body, 1024, 4);
    if (!j.is_object() || !j.contains("port")) return std::nullopt;
    const auto& p = j["port"];
    if (p.is_number_unsigned() && p.get<std::uint64_t>() <= 65535)
        return parse_port(std::to_string(p.get<std::uint64_t>()));
    if (p.is_string()) return parse_port(p.get<std::string>());
    return std::nullopt;
}

// The table a node answers on POST /IpTable, kept in memory: rebuilt only when the table
// file changes (another inode after an atomic save, another size or modification time)
// or the node's own entry does, never per request. At most `cap` entries, the freshest
// (latest measured_at) first; never-measured entries follow in file order.
class TableAnswer {
  public:
    explicit TableAnswer(std::size_t cap) : cap_(cap) {}

    std::shared_ptr<const std::string> get(const std::string& path, const Peer& self, TableFormat format) {
        const std::string self_key = peer_to_json(self, TableFormat::seed).dump();
        std::lock_guard<std::mutex> lock(mu_);
        const bool reloaded = refresh_locked(path);
        if (reloaded || self_key != self_key_ || !text_[0]) {
            IpTable answer;
            for (const auto& p : freshest_) answer.add(p);
            answer.add(self);
            for (int f = 0; f < 2; ++f)
                text_[f] = std::make_shared<const std::string>(answer.dump(f ? TableFormat::p2prc : TableFormat::seed, -1));
            self_key_ = self_key;
            ++builds_;
        }
        return text_[format == TableFormat::p2prc ? 1 : 0];
    }
    // Every endpoint the table file lists (all entries, not only those answered).
    std::shared_ptr<const std::unordered_set<Endpoint>> known(const std::string& path) {
        std::lock_guard<std::mutex> lock(mu_);
        refresh_locked(path);
        return known_;
    }
    std::uint64_t builds() const {
        std::lock_guard<std::mutex> lock(mu_);
        return builds_;
    }

  private:
    struct Stamp {
        bool exists = false;
        std::uint64_t ino = 0;
        std::int64_t size = 0;
        std::int64_t mtime_ns = 0;
        bool operator==(const Stamp& o) const {
            return exists == o.exists && ino == o.ino && size == o.size && mtime_ns == o.mtime_ns;
        }
    };

    // Reloads the file when it changed; true when it did.
    bool refresh_locked(const std::string& path) {
        struct stat st {};
        const bool exists = ::stat(path.c_str(), &st) == 0;
        Stamp now{exists, exists ? std::uint64_t(st.st_ino) : 0, exists ? std::int64_t(st.st_size) : 0,
                  exists ? std::int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec : 0};
        if (loaded_ && now == stamp_) return false;
        IpTable t = IpTable::load(path);
        auto known = std::make_shared<std::unordered_set<Endpoint>>();
        for (const auto& p : t.peers()) p.for_each_endpoint([&](const Endpoint& e) { known->insert(e); });
        std::vector<Peer> peers = t.peers();
        std::stable_sort(peers.begin(), peers.end(), [](const Peer& a, const Peer& b) {
            return a.measured_at.value_or(INT64_MIN) > b.measured_at.value_or(INT64_MIN);
        });
        if (peers.size() > cap_) peers.resize(cap_);
        peers.shrink_to_fit();
        const bool large = t.size() > 10000;
        freshest_ = std::move(peers);
        known_ = std::move(known);
        stamp_ = now;
        loaded_ = true;
        t = IpTable();
        if (large) release_heap();  // the parsed file was a large transient
        return true;
    }

    std::size_t cap_;
    mutable std::mutex mu_;
    Stamp stamp_;
    bool loaded_ = false;
    std::vector<Peer> freshest_;
    std::shared_ptr<const std::unordered_set<Endpoint>> known_;
    std::string self_key_;
    std::uint64_t builds_ = 0;
    std::shared_ptr<const std::string> text_[2];
};

}  // namespace detail

class Node;
namespace detail {
// GET /metrics, GET /status (and /) and GET /status.json; defined in status.hpp.
inline void install_status_routes(Server& server, Node& node);
}  // namespace detail

class Node {
public:
    // New servers in one POST /IpTable that are probed before they enter the table; the
    // rest wait for a later exchange. Bounds the work one request can cause.
    static constexpr std::size_t max_liveness_checks = 64;
    // learn() calls that may probe at the same time; others add nothing new.
    static constexpr int max_concurrent_learning = 2;
    // POST /dialback: per caller, 3 at once then one every 2 s; at most 4 dials at a time
    // in the whole node; each dial waits 2 s at most.
    static constexpr int max_concurrent_dialbacks = 4;
    static constexpr std::chrono::milliseconds dialback_connect_timeout{2000};
    // Relay candidates re-measured before a choice (the nearest by the table's figures).
    static constexpr std::size_t relay_candidates_measured = 4;

    // Reads the node's identity key (config.identity_key_path()), or makes it at the first
    // start. Throws p2prc::error naming the file when it exists but is damaged.
    explicit Node(Config config)
        : config_(std::move(config)),
          identity_(Identity::load_or_create(config_.identity_key_path())),
          instance_id_(identity_.id()) {}
    ~Node() { stop(); }
    Node(const Node&) = delete;
    Node& operator=(const Node&) = delete;

    const Config& config() const noexcept { return config_; }
    // The node's identity: its Ed25519 key (identity.hpp).
    const Identity& identity() const noexcept { return identity_; }
    // What the HTTP server saw (zeros before start()).
    ServerStats server_stats() const {
        std::lock_guard<std::mutex> lock(lifecycle_);
        return server_ ? server_->stats() : ServerStats{};
    }

    // Starts the HTTP server (returns once it listens): /server_info, the speed tests,
    // POST /IpTable and GET /whoami. The table file is cleaned on the way (duplicates
    // folded, the node's own entries removed).
    void start() {
        std::lock_guard<std::mutex> lock(lifecycle_);
        if (server_) throw error(errc::state_error, "node already started");
        ServerOptions so;
        so.bind_address = config_.bind;
        so.port = config_.port;
        so.name = config_.name;
        for (const auto& a : config_.public_addresses) so.advertised_addresses.push_back(a.to_string());
        so.disk_path = detail::parent_dir(config_.iptable);
        so.identity = identity_.id();
        so.worker_threads = config_.limits.server_threads;
        so.max_body_bytes = std::max(config_.limits.max_body_bytes, config_.limits.max_upload_bytes);
        so.read_timeout = so.write_timeout = detail::ms(config_.limits.request_timeout_ms);
        so.request_timeout = detail::ms(config_.limits.request_deadline_ms);
        so.header_timeout = detail::ms(config_.limits.header_deadline_ms);
        so.max_queued_connections = config_.limits.server_queue;
        so.max_connections_per_address = config_.limits.connections_per_address;
        auto server = std::make_unique<Server>(so);
        server->post("/IpTable", [this](const HttpRequest& q, HttpResponse& r) { handle_table(q, r); },
                     config_.limits.max_body_bytes);
        server->get("/whoami", [this](const HttpRequest& q, HttpResponse& r) { handle_whoami(q, r); });
        server->get("/FRPPort", [this](const HttpRequest& q, HttpResponse& r) { handle_frp_port(q, r); });
        // {"port": N}: a few dozen bytes.
        server->post("/dialback", [this](const HttpRequest& q, HttpResponse& r) { handle_dialback(q, r); },
                     max_dialback_body);
        detail::install_status_routes(*server, *this);
        started_at_ms_ = std::chrono::duration_cast<std::chrono::milliseconds>(
                             std::chrono::system_clock::now().time_since_epoch())
                             .count();
        server->start();
        bound_port_ = server->port();
        server_ = std::move(server);
        running_ = true;
        modify([](IpTable&) {});
    }

    // Closes the tunnels this node holds, the relays it serves and its server.
    void stop() {
        std::lock_guard<std::mutex> lock(lifecycle_);
        running_ = false;
        std::map<std::uint16_t, std::shared_ptr<RelayTunnel>> tunnels;
        {
            std::lock_guard<std::mutex> tl(tunnels_mu_);
            tunnels.swap(tunnels_);
            self_tunnel_port_ = 0;
        }
        for (auto& [port, t] : tunnels)
            if (t) t->stop();
        if (server_) server_->stop();
        std::shared_ptr<RelayPool> relays;
        {
            std::lock_guard<std::mutex> rl(relays_mu_);
            relays.swap(relays_);
        }
        if (relays) relays->stop();
        server_.reset();
    }

    bool running() const noexcept { return running_; }

    // The port the server listens on, or (before start) the configured one.
    std::uint16_t port() const noexcept {
        std::uint16_t bound = bound_port_;
        return bound ? bound : config_.port;
    }

    // The table as it is on disk.
    // (The node's own file is read with the default, generous limits; a peer's table with
    // the configured ones.)
    IpTable table() const { return IpTable::load(config_.iptable); }

    // Every endpoint that is this node: never listed in its own table.
    std::vector<Endpoint> own_endpoints() const {
        if (port() == 0) return {};
        auto own = p2prc::own_endpoints(config_, port());
        if (auto relayed = self_exposure()) own.push_back(relayed->public_endpoint);
        return own;
    }

    // The entry other nodes should list for this one, with the node's identity and its
    // signed word about itself (a new sequence number only when the content changed).
    Peer self_entry() const {
        Peer p = self_entry_unsigned();
        p.identity = identity_.id();
        SignedEntry s;
        s.identity = identity_.id();
        s.name = p.name;
        s.endpoints = p.endpoints();
        // A server bound to every address is reachable at each of them (peers keep the ones
        // they reach, after checking them): listed so one server is one entry everywhere.
        auto bind = IpAddress::parse(config_.bind);
        if (!self_exposure() && config_.public_addresses.empty() && bind &&
            bind->scope() == Scope::unspecified) {
            try {
                for (const auto& a : local_interface_addresses()) {
                    const auto sc = a.scope();
                    if (sc == Scope::loopback || sc == Scope::link_local ||
                        sc == Scope::unspecified || sc == Scope::reserved ||
                        (bind->is_v4() && a.is_v6()))
                        continue;
                    const Endpoint e{a, p.server_port};
                    if (s.endpoints.size() < SignedEntry::max_endpoints &&
                        std::find(s.endpoints.begin(), s.endpoints.end(), e) == s.endpoints.end())
                        s.endpoints.push_back(e);
                }
            } catch (const error&) {
            }
        }
        s.nat = p.nat;
        s.escape_implementation = p.escape_implementation;
        if (auto relayed = self_exposure()) s.relay = relayed->relay;
        for (const auto& e : s.endpoints) p.add_alt(e);
        {
            std::lock_guard<std::mutex> lock(signed_mu_);
            if (last_signed_ && last_signed_->same_content(s)) {
                s = *last_signed_;
            } else {
                const auto now = static_cast<std::uint64_t>(
                    std::chrono::duration_cast<std::chrono::milliseconds>(
                        std::chrono::system_clock::now().time_since_epoch())
                        .count());
                s.seq = std::max(now, last_signed_ ? last_signed_->seq + 1 : 0);
                s.sign(identity_);
                last_signed_ = s;
            }
        }
        p.signed_entry = std::move(s);
        return p;
    }

  private:
    Peer self_entry_unsigned() const {
        Peer p;
        p.name = config_.name;
        if (auto relayed = self_exposure()) {
            // Reached through a relay: others list the relay's endpoint, marked as P2PRC
            // marks a node behind NAT that escapes it with FRP.
            (relayed->public_endpoint.address.is_v4() ? p.ipv4 : p.ipv6) = relayed->public_endpoint.address;
            p.server_port = relayed->public_endpoint.port;
            p.nat = true;
            p.escape_implementation = "FRP";
            return p;
        }
        p.server_port = port();
        auto consider = [&](const IpAddress& a) {
            auto& slot = a.is_v4() ? p.ipv4 : p.ipv6;
            if (!slot) slot = a;
        };
        for (const auto& a : config_.public_addresses) {
            if (a.port && !p.ipv4 && !p.ipv6) p.server_port = a.port;
            consider(a.address);
        }
        if (!p.ipv4 && !p.ipv6) {
            if (auto seen = observed_.trusted()) {
                consider(*seen);
            } else if (auto bind = IpAddress::parse(config_.bind); bind && bind->scope() != Scope::unspecified) {
                consider(*bind);
            } else {
                consider(best_interface_address());
            }
        }
        p.nat = behind_nat();
        if (p.nat) p.escape_implementation = "None";  // until a relay carries it (see expose)
        return p;
    }

  public:
    // Whether this node is behind NAT: as configured, or (auto) when two peers agree on
    // an address that is none of this machine's.
    bool behind_nat() const {
        if (config_.behind_nat == BehindNat::yes) return true;
        if (config_.behind_nat == BehindNat::no) return false;
        if (const int r = reachable_; r >= 0) return r == 0;  // a peer's dialback decided
        std::vector<IpAddress> own;
        try {
            own = local_interface_addresses();
        } catch (const error&) {
        }
        for (const auto& a : config_.public_addresses) own.push_back(a.address);
        return observed_.behind_nat(own);
    }

    const ObservedAddress& observed() const noexcept { return observed_; }

    // Joins the network: sends the table (with the node's own entry) to each bootstrap
    // server and merges what they answer; then goes one hop further, to the servers just
    // learned, config.limits.discovery_hops times (0: the bootstrap servers only), all
    // within the time budget. Then probes every server (refresh), prunes the dead ones
    // and saves.
    DiscoverReport discover(const std::vector<Endpoint>& bootstrap,
                            const std::function<void(std::size_t, std::size_t)>& progress = {}) {
        if (port() == 0)
            throw error(errc::invalid_argument, "discover needs the node's server port (set --port)");
        DiscoverReport report;
        const auto& lim = config_.limits;
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(lim.discovery_budget_s);
        std::unordered_set<Endpoint> seen;
        for (const auto& e : own_endpoints()) seen.insert(e);
        std::vector<Endpoint> frontier;
        for (const auto& e : bootstrap)
            if (seen.insert(e).second) frontier.push_back(e);

        for (std::size_t round = 0; round <= lim.discovery_hops && !frontier.empty(); ++round) {
            auto left = deadline - std::chrono::steady_clock::now();
            if (left <= std::chrono::milliseconds(0)) {
                report.budget_exhausted = true;
                break;
            }
            IpTable ours = table();
            ours.add(self_entry());
            GossipOptions go;
            go.timeout = std::min(detail::ms(lim.request_timeout_ms),
                                  std::chrono::duration_cast<std::chrono::milliseconds>(left));
            go.connect_timeout = std::min(go.timeout, std::chrono::milliseconds(2000));
            go.max_answer_bytes = lim.max_body_bytes;
            go.limits = config_.peer_table_limits();
            std::vector<GossipResult> results(frontier.size());
            detail::parallel_for(frontier.size(), lim.discovery_concurrency, [&](std::size_t i) {
                if (std::chrono::steady_clock::now() >= deadline) {
                    results[i].peer = frontier[i];
                    results[i].reason = "discovery time budget exhausted";
                    return;
                }
                results[i] = exchange_tables(frontier[i], ours, go);
            });
            ++report.hops;

            std::vector<Endpoint> next;
            for (auto& r : results) {
                if (!r.ok) {
                    report.failed.emplace_back(r.peer, r.reason);
                    continue;
                }
                report.contacted.push_back(r.peer);
                if (r.observed) observed_.report(r.peer.address, *r.observed);
                // The server that answered is alive; its answer goes through the same gate
                // as a POST /IpTable: the scope rule, only servers not known yet, each one
                // probed before it is listed. Known entries are never rewritten by a peer.
                // What the peer says of itself (its entry at the endpoint we reached) is its
                // own word: its name and facts are taken, for that endpoint only.
                Peer answered;
                if (const Peer* own = r.table.find(r.peer.to_string())) answered = *own;
                // Its entry may list it under other addresses: the identity it states finds
                // it (the signed word in it is checked below, like every other).
                if (const Peer* own = r.table.find_identity(r.identity);
                    own && own->signed_entry && own->signed_entry->verify() &&
                    own->signed_entry->identity == r.identity)
                    answered = *own;
                answered.alt_endpoints.clear();
                if (!r.identity.empty()) {
                    if (!answered.identity.empty() && answered.identity != r.identity)
                        answered = Peer();
                    answered.identity = r.identity;
                }
                if (answered.signed_entry) {
                    // A forged word, or one older than the table's, is not taken.
                    IpTable one(std::vector<Peer>{answered});
                    check_signatures(one, table());
                    if (one.empty()) answered.signed_entry.reset();
                    if (answered.signed_entry) {
                        answered.name = answered.signed_entry->name;
                        answered.nat = answered.signed_entry->nat;
                        answered.escape_implementation =
                            answered.signed_entry->escape_implementation;
                    }
                }
                answered.ipv4.reset();
                answered.ipv6.reset();
                answered.server_port = r.peer.port;
                (r.peer.address.is_v4() ? answered.ipv4 : answered.ipv6) = r.peer.address;
                answered.latency_ms.reset();
                answered.download_mbps.reset();
                answered.upload_mbps.reset();
                answered.measured_at.reset();
                answered.extra = nlohmann::json();
                // A peer with an identity keeps its own entry in what is learned: its other
                // endpoints are checked there (they must answer as that identity) and join
                // the entry as alternatives. Without one, the address rules stay as they were.
                if (r.identity.empty()) r.table.remove(r.peer.to_string());
                modify([&](IpTable& t) { t.add(answered); });
                auto outcome = learn(std::move(r.table), r.peer.address);
                for (const auto& p : outcome.added_peers)
                    if (auto e = p.endpoint(); e && seen.insert(*e).second) next.push_back(*e);
            }
            frontier = std::move(next);
            if (std::chrono::steady_clock::now() >= deadline) report.budget_exhausted = !frontier.empty();
        }
        report.refresh = update(progress);
        return report;
    }

    // Probes every server of the table (bounded concurrency, one retry), records the
    // figures, prunes the servers that stay unreachable, and saves.
    RefreshReport update(const std::function<void(std::size_t, std::size_t)>& progress = {},
                         bool measure_throughput = false) {
        IpTable snapshot = table();
        snapshot.remove_self(own_endpoints(), identity_.id());
        RefreshOptions ro;
        ro.concurrency = config_.limits.probe_concurrency;
        ro.latency.connect_timeout = std::min(detail::ms(config_.limits.probe_timeout_ms), std::chrono::milliseconds(2000));
        ro.latency.read_timeout = detail::ms(config_.limits.probe_timeout_ms);
        ro.latency.total_timeout = 3 * detail::ms(config_.limits.probe_timeout_ms);
        ro.measure_throughput = measure_throughput;
        ro.progress = progress;
        RefreshReport report = refresh(snapshot, ro);
        metrics_->probe_round_seconds.observe(report.seconds);
        for (const auto& e : report.pruned) metrics_->prunes.add({to_string(e.latency.failure)});
        modify([&](IpTable& t) { detail::apply_refresh(t, report); });
        return report;
    }

    // Takes a table received from `sender`: applies the scope rule and the bounds,
    // probes the servers it does not know yet (bounded in count and time) and adds the
    // live ones.
    LearnOutcome learn(IpTable incoming, const IpAddress& sender) {
        LearnOutcome out;
        if (incoming.empty()) return out;  // nothing to learn: no need to read the table
        const IpTable current = table();
        // Signatures first: what the signer said is checked as it was signed.
        out.signatures = check_signatures(incoming, current);
        out.filter = filter_learned(incoming, effective_sender(sender), scope_policy(config_),
                                    config_.limits.max_entries);
        incoming.remove_self(own_endpoints(), identity_.id());
        incoming.dedupe();
        std::unordered_set<Endpoint> known;
        std::unordered_map<std::string, std::uint64_t> known_seq;
        for (const auto& p : current.peers()) {
            p.for_each_endpoint([&](const Endpoint& e) { known.insert(e); });
            if (p.signed_entry) known_seq[p.identity] = p.signed_entry->seq;
        }
        std::vector<Peer> fresh;
        IpTable updates;  // known servers, every endpoint known, with a newer signed word
        for (const auto& p : incoming.peers()) {
            bool all_known = true, any_known = false;
            p.for_each_endpoint([&](const Endpoint& e) {
                const bool k = known.count(e) > 0;
                all_known = all_known && k;
                any_known = any_known || k;
            });
            // A server is new when no endpoint of it is known; a known server with an
            // endpoint not known yet is checked like a new one (the endpoint must answer
            // as that server) before it joins the entry.
            const bool identity_known = !p.identity.empty() && current.find_identity(p.identity);
            if (!all_known) {
                fresh.push_back(p);
                if (!any_known && !identity_known) ++out.new_servers;
            } else if (p.signed_entry) {
                auto it = known_seq.find(p.identity);
                if (it == known_seq.end() || p.signed_entry->seq > it->second) updates.add(p);
            }
        }
        if (!updates.empty()) {
            out.updated = updates.size();
            modify([&](IpTable& t) { t.merge(updates); });
        }
        // At most two learn() calls probe at once in the whole node: a flood of tables
        // cannot turn the node into a prober of addresses its senders pick.
        detail::InFlightSlot slot(learning_, max_concurrent_learning);
        if (!slot.held()) {
            out.unchecked = fresh.size();
            count_learned(out);
            return out;
        }
        if (fresh.size() > max_liveness_checks) {
            out.unchecked += fresh.size() - max_liveness_checks;
            fresh.resize(max_liveness_checks);
        }
        // Every endpoint of a new entry must answer; one that does not is dropped, so a
        // live address cannot carry an unchecked one into the table.
        std::vector<std::pair<std::size_t, Endpoint>> checks;
        for (std::size_t i = 0; i < fresh.size(); ++i)
            fresh[i].for_each_endpoint([&](const Endpoint& e) { checks.emplace_back(i, e); });
        const auto budget = detail::ms(config_.limits.liveness_budget_ms);
        const auto deadline = std::chrono::steady_clock::now() + budget;
        std::vector<char> alive(checks.size(), 0), ran(checks.size(), 0);
        std::vector<std::string> answered_as(checks.size());
        detail::parallel_for(checks.size(), 16, [&](std::size_t k) {
            auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
            if (left < std::chrono::milliseconds(50)) return;
            LatencyOptions lo;
            lo.samples = 1;
            lo.connect_timeout = std::min(left, std::chrono::milliseconds(1000));
            lo.read_timeout = left;
            lo.total_timeout = left;
            ran[k] = 1;
            auto r = probe_latency(checks[k].second, lo);
            alive[k] = r.reachable ? 1 : 0;
            answered_as[k] = std::move(r.identity);
        });
        // The identity that answers at an endpoint is the server's: an entry that names
        // another one there (or names one where a server without identity answers) loses
        // that endpoint; an entry without identity takes the one that answered.
        for (std::size_t k = 0; k < checks.size(); ++k) {
            Peer& p = fresh[checks[k].first];
            if (!alive[k]) continue;
            if (p.identity.empty()) p.identity = answered_as[k];
            if (p.identity != answered_as[k]) {
                alive[k] = 0;
                ++out.wrong_identity;
            }
        }
        std::vector<char> entry_ran(fresh.size(), 1);
        std::vector<std::vector<Endpoint>> alive_eps(fresh.size());
        for (std::size_t k = 0; k < checks.size(); ++k) {
            if (!ran[k]) entry_ran[checks[k].first] = 0;
            if (alive[k]) alive_eps[checks[k].first].push_back(checks[k].second);
        }
        IpTable add;
        for (std::size_t i = 0; i < fresh.size(); ++i) {
            if (!entry_ran[i]) ++out.unchecked;
            else ++out.checked;
            if (!entry_ran[i] || alive_eps[i].empty()) continue;
            Peer& p = fresh[i];
            // Only the endpoints that answered as this server stay; the first is contacted.
            p.ipv4.reset();
            p.ipv6.reset();
            p.alt_endpoints.clear();
            p.server_port = alive_eps[i].front().port;
            (alive_eps[i].front().address.is_v4() ? p.ipv4 : p.ipv6) = alive_eps[i].front().address;
            for (std::size_t j = 1; j < alive_eps[i].size(); ++j) p.add_alt(alive_eps[i][j]);
            add.add(p);
        }
        out.added = add.size();
        out.added_peers = add.peers();
        if (!add.empty()) modify([&](IpTable& t) { t.merge(add); });
        count_learned(out);
        return out;
    }

    // ---- NAT traversal ----------------------------------------------------------------

    // The peers of the table that may relay for this node, nearest first by the table's
    // figures (nothing is probed): measured, not behind NAT themselves, not this node.
    std::vector<RelayCandidate> listed_relays(const std::vector<Endpoint>& exclude = {}) const {
        IpTable t = table();
        t.remove_self(own_endpoints(), identity_.id());
        std::unordered_set<Endpoint> skip(exclude.begin(), exclude.end());
        std::vector<RelayCandidate> listed;
        for (const auto& p : t.peers()) {
            if (p.nat || !p.latency_ms) continue;
            auto e = p.endpoint();
            if (!e || skip.count(*e) || distrusted(*e)) continue;
            listed.push_back(RelayCandidate{p.label(), *e, *p.latency_ms, p.identity});
        }
        by_latency(listed);
        return listed;
    }

    // The listed relays that answer now, nearest first: the nearest few by the table's
    // figures are measured again, so the choice rests on fresh numbers.
    std::vector<RelayCandidate> relay_candidates(const std::vector<Endpoint>& exclude = {}) const {
        auto listed = listed_relays(exclude);
        if (listed.size() > relay_candidates_measured) listed.resize(relay_candidates_measured);
        std::vector<std::optional<double>> fresh(listed.size());
        detail::parallel_for(listed.size(), listed.size(), [&](std::size_t i) { fresh[i] = measure_relay(listed[i].http); });
        std::vector<RelayCandidate> out;
        for (std::size_t i = 0; i < listed.size(); ++i) {
            if (!fresh[i]) continue;
            listed[i].latency_ms = *fresh[i];
            out.push_back(listed[i]);
        }
        by_latency(out);
        return out;
    }

    // Exposes local_port (on options.local_host, 127.0.0.1 by default) through the best relay
    // of the table and keeps it exposed: failover when the relay dies, a move when another
    // relay is clearly nearer (see relay_switch_worthwhile). Works whether or not the node's
    // server runs. Throws p2prc::error: state_error when the port is already exposed,
    // io_error when no relay could carry it (the message names each relay tried and why).
    Exposure expose(std::uint16_t local_port, ExposeOptions options = {}) {
        return expose_port(local_port, std::move(options), false);
    }

private:
    // expose(); `own_server`: only while the server runs (checked under tunnels_mu_, so a
    // stop() either sees the tunnel and ends it or makes this refuse).
    Exposure expose_port(std::uint16_t local_port, ExposeOptions options, bool own_server) {
        if (local_port == 0) throw error(errc::invalid_argument, "expose: the local port must not be 0");
        if (options.proxy_name.empty()) options.proxy_name = config_.name + "-" + std::to_string(local_port);
        if (own_server && !options.verify_change) {
            // Every later relay (failover, move) must lead back here too, as the first one
            // is checked in check_reachability.
            options.verify_change = [this](const Exposure& e) -> std::optional<std::string> {
                auto wrong = leads_elsewhere(e.public_endpoint);
                if (wrong) {
                    std::lock_guard<std::mutex> lock(distrust_mu_);
                    distrusted_relays_.insert(e.relay);
                    return "it does not lead to this node (" + *wrong + ")";
                }
                return std::nullopt;
            };
        }
        options.on_change = [m = metrics_, user = std::move(options.on_change)](const Exposure& e) {
            m->exposure_changes.add({e.last_change});
            if (user) user(e);
        };
        auto tunnel = std::make_shared<RelayTunnel>(
            Endpoint{options.local_host, local_port}, config_.token, options,
            [this](const std::vector<Endpoint>& exclude) { return relay_candidates(exclude); },
            [this](const Endpoint& e) { return measure_relay(e); });
        {
            // Listed while it comes up, so stop() and unexpose() can end a start that waits
            // on a slow relay (exposure() says nothing until it is up).
            std::lock_guard<std::mutex> lock(tunnels_mu_);
            if (own_server && !running_)
                throw error(errc::state_error, "the node stopped before its server was exposed");
            if (tunnels_.count(local_port))
                throw error(errc::state_error, "port " + std::to_string(local_port) + " is already exposed");
            tunnels_[local_port] = tunnel;
        }
        Exposure e;
        try {
            e = tunnel->start();
            if (!tunnel->current())  // stopped between start() and here
                throw error(errc::state_error, "expose " + std::to_string(local_port) + ": stopped meanwhile");
        } catch (...) {
            {
                std::lock_guard<std::mutex> lock(tunnels_mu_);
                auto it = tunnels_.find(local_port);
                if (it != tunnels_.end() && it->second == tunnel) tunnels_.erase(it);
            }
            tunnel->stop();  // not under tunnels_mu_: it joins a thread that may take it
            throw;
        }
        return e;
    }

public:

    // Where local_port is exposed now (it follows failovers and moves), if it is.
    std::optional<Exposure> exposure(std::uint16_t local_port) const {
        std::lock_guard<std::mutex> lock(tunnels_mu_);
        auto it = tunnels_.find(local_port);
        if (it == tunnels_.end() || !it->second) return std::nullopt;
        return it->second->current();
    }

    // Closes the tunnel of local_port; false when it was not exposed.
    bool unexpose(std::uint16_t local_port) {
        std::shared_ptr<RelayTunnel> t;
        {
            std::lock_guard<std::mutex> lock(tunnels_mu_);
            auto it = tunnels_.find(local_port);
            if (it == tunnels_.end() || !it->second) return false;
            t = std::move(it->second);
            tunnels_.erase(it);
            if (self_tunnel_port_ == local_port) self_tunnel_port_ = 0;
        }
        t->stop();
        return true;
    }

    // The relay that carries this node's own server, when it is reached that way.
    std::optional<Exposure> self_exposure() const {
        std::uint16_t p;
        {
            std::lock_guard<std::mutex> lock(tunnels_mu_);
            p = self_tunnel_port_;
        }
        return p ? exposure(p) : std::nullopt;
    }

    // Decides whether peers can connect to this node's server, and acts on it:
    // - behind_nat "no": reachable, nothing to do;
    // - "yes": the server is exposed through the best relay (if it is not yet);
    // - "auto": a peer (not behind NAT, nearest first, up to 3 asked) is asked to connect
    //   back (POST /dialback); when it cannot, the server is exposed through the best
    //   relay, and the node advertises the relay's endpoint (self_entry). When no peer
    //   answers, nothing is decided: call again later.
    // Needs the server running.
    ReachabilityReport check_reachability() {
        if (!running_ || bound_port_ == 0)
            throw error(errc::state_error, "check_reachability needs the node's server running (start() first)");
        ReachabilityReport report;
        if (config_.behind_nat == BehindNat::no) {
            report.decided = report.reachable = true;
            return report;
        }
        if (config_.behind_nat == BehindNat::automatic) {
            IpTable t = table();
            t.remove_self(own_endpoints(), identity_.id());
            std::vector<Peer> peers;
            for (const auto& p : t.peers())
                if (!p.nat && p.endpoint()) peers.push_back(p);
            std::stable_sort(peers.begin(), peers.end(), [](const Peer& a, const Peer& b) {
                return a.latency_ms.value_or(1e18) < b.latency_ms.value_or(1e18);
            });
            for (const auto& p : peers) {
                if (report.asked.size() >= 3 || !running_) break;
                auto r = request_dialback(*p.endpoint(), port());
                metrics_->dialbacks.add({"asked", !r.answered ? "no_answer" : r.reachable ? "reachable" : "unreachable"});
                report.asked.push_back(r);
                if (!r.answered) continue;
                if (r.observed) observed_.report(r.peer.address, *r.observed);
                report.decided = true;
                report.reachable = r.reachable;
                break;
            }
            if (!report.decided) {
                report.reason = !running_ ? "the node stopped"
                                : report.asked.empty() ? "no peer to ask: the table has no server that is not behind NAT"
                                                     : "no peer answered the dialback";
                return report;
            }
            reachable_ = report.reachable ? 1 : 0;
            if (report.reachable) {
                std::uint16_t self_port;
                {
                    std::lock_guard<std::mutex> lock(tunnels_mu_);
                    self_port = self_tunnel_port_;
                }
                if (self_port) unexpose(self_port);  // directly reachable now: no relay needed
                return report;
            }
        }
        report.decided = true;
        if (auto cur = self_exposure()) {
            report.exposure = cur;
            return report;
        }
        // The relay is chosen among measured peers: a table that was only added to (never
        // probed) is measured first.
        if (listed_relays().empty()) update();
        ExposeOptions eo;
        eo.proxy_name = config_.name + "-server";
        auto bind = IpAddress::parse(config_.bind);
        if (bind && bind->scope() != Scope::unspecified) eo.local_host = *bind;
        else if (bind && bind->is_v6()) eo.local_host = IpAddress::from_string("::1");
        try {
            report.exposure = expose_port(port(), eo, true);
            // Before advertising it: does the endpoint the relay gave lead back here? A
            // relay that lies about it would send every peer somewhere else.
            if (auto wrong = leads_elsewhere(report.exposure->public_endpoint)) {
                const Exposure bad = *report.exposure;
                report.exposure.reset();
                {
                    std::lock_guard<std::mutex> lock(distrust_mu_);
                    distrusted_relays_.insert(bad.relay);
                }
                unexpose(port());
                report.reason = "relay " + bad.relay.to_string() + " gave " + bad.public_endpoint.to_string() +
                                ", which does not lead to this node (" + *wrong + "); that relay is not used again";
                return report;
            }
            std::lock_guard<std::mutex> lock(tunnels_mu_);
            if (tunnels_.count(port())) self_tunnel_port_ = port();  // unless stop() ran meanwhile
        } catch (const error& e) {
            report.reason = e.what();
        }
        return report;
    }

    // The node's identity (printable), answered on GET /whoami as "node" and "identity":
    // tells whether an endpoint leads to this very node.
    const std::string& instance_id() const noexcept { return instance_id_; }

    // ---- what the node shows of itself (GET /metrics, /status; see status.hpp) -------------

    // The node's event counters (probe rounds, prunes, learned entries, relay changes,
    // dialbacks); shared, so they may outlive the node.
    std::shared_ptr<Metrics> metrics() const { return metrics_; }

    // The relays served on GET /FRPPort, or nullptr when none was ever asked for.
    std::shared_ptr<const RelayPool> served_relays() const {
        std::lock_guard<std::mutex> lock(relays_mu_);
        return relays_;
    }

    // The ports exposed through relays and where they are now (nullopt: coming up).
    std::vector<std::pair<std::uint16_t, std::optional<Exposure>>> exposures() const {
        std::vector<std::pair<std::uint16_t, std::shared_ptr<RelayTunnel>>> tunnels;
        {
            std::lock_guard<std::mutex> lock(tunnels_mu_);
            for (const auto& [port, t] : tunnels_) tunnels.emplace_back(port, t);
        }
        std::vector<std::pair<std::uint16_t, std::optional<Exposure>>> out;
        for (const auto& [port, t] : tunnels) out.emplace_back(port, t ? t->current() : std::nullopt);
        return out;
    }

    // When start() last ran (the epoch before).
    std::chrono::system_clock::time_point started_at() const {
        return std::chrono::system_clock::time_point(std::chrono::milliseconds(started_at_ms_.load()));
    }

private:
    void count_learned(const LearnOutcome& o) {
        auto& m = metrics_->learned;
        if (o.added) m.add({"accepted", "alive"}, o.added);
        if (o.checked > o.added) m.add({"refused", "dead"}, o.checked - o.added);
        if (o.filter.dropped_scope) m.add({"refused", "scope"}, o.filter.dropped_scope);
        if (o.filter.dropped_over_limit) m.add({"refused", "entry_limit"}, o.filter.dropped_over_limit);
        if (o.unchecked) m.add({"deferred", "unchecked"}, o.unchecked);
    }

    static void by_latency(std::vector<RelayCandidate>& v) {
        std::stable_sort(v.begin(), v.end(), [](const auto& a, const auto& b) { return a.latency_ms < b.latency_ms; });
    }

    bool distrusted(const Endpoint& relay) const {
        std::lock_guard<std::mutex> lock(distrust_mu_);
        return distrusted_relays_.count(relay) > 0;
    }

    // Why `endpoint` does not lead to this node's server, or nullopt when it does.
    // The proof is a signature of a fresh nonce (GET /whoami?nonce=): a relay cannot pass
    // off another server as this one by copying its identity.
    std::optional<std::string> leads_elsewhere(const Endpoint& endpoint) const {
        return detail::whoami_refutes(endpoint, identity_.id(), std::chrono::milliseconds(5000));
    }

    std::optional<double> measure_relay(const Endpoint& e) const {
        LatencyOptions lo;
        lo.samples = 3;
        lo.connect_timeout = std::min(detail::ms(config_.limits.probe_timeout_ms), std::chrono::milliseconds(2000));
        lo.read_timeout = detail::ms(config_.limits.probe_timeout_ms);
        lo.total_timeout = 2 * detail::ms(config_.limits.probe_timeout_ms);
        auto r = probe_latency(e, lo);
        if (!r.reachable) return std::nullopt;
        return r.min_ms;
    }

    // Whether a connection from `sender` may have come through the relay that carries this
    // node's server: the tunnel's local end connects from loopback, or (server bound to one
    // address) from that address itself; either way it may be anybody on the relay's side.
    bool via_own_relay(const IpAddress& sender) const {
        auto relayed = self_exposure();
        return relayed && (sender.scope() == Scope::loopback || sender == relayed->local.address);
    }

    // Who sent a request, for the scope rule: through the relay, the relay's address.
    IpAddress effective_sender(const IpAddress& sender) const {
        if (via_own_relay(sender))
            if (auto relayed = self_exposure()) return relayed->public_endpoint.address;
        return sender;
    }

    // Load, change, clean, save, under the file lock.
    void modify(const std::function<void(IpTable&)>& change) {
        auto own = own_endpoints();
        IpTable::update(
            config_.iptable,
            [&](IpTable& t) {
                change(t);
                t.dedupe();
                t.remove_self(own, identity_.id());
            },
            config_.table_format, std::chrono::seconds(30), TableLimits{},
            config_.table_pretty ? TableStyle::pretty : TableStyle::lines);
    }

    static IpAddress best_interface_address() {
        std::optional<IpAddress> best;
        try {
            for (const auto& a : local_interface_addresses()) {
                auto s = a.scope();
                if (s == Scope::unspecified || s == Scope::reserved || s == Scope::link_local) continue;
                if (!best || static_cast<int>(s) < static_cast<int>(best->scope()) ||
                    (s == best->scope() && a.is_v4() && best->is_v6()))
                    best = a;
            }
        } catch (const error&) {
        }
        return best ? *best : IpAddress::from_string("127.0.0.1");
    }

    void handle_table(const HttpRequest& q, HttpResponse& r) {
        // P2PRC's form: a multipart file field "json"; or a plain JSON body.
        const std::string* text = &q.body;
        TableFormat answer_format = TableFormat::seed;
        if (!q.files.empty()) {
            text = nullptr;
            for (const auto& f : q.files)
                if (f.name == "json") text = &f.content;
            if (!text) return r.error(400, "multipart form without a file field named \"json\"");
            answer_format = TableFormat::p2prc;
        } else if (q.body.find("\"ServerPort\"") != std::string::npos ||
                   q.body.find("\"IPV4\"") != std::string::npos) {
            answer_format = TableFormat::p2prc;
        }
        if (text->size() > config_.limits.max_body_bytes)
            return r.error(413, "table larger than " + std::to_string(config_.limits.max_body_bytes) + " bytes");
        if (!q.remote) return r.error(400, "cannot tell the sender's address");
        const IpAddress sender = q.remote->address;
        IpTable incoming;
        try {
            incoming = IpTable::parse(*text, "table from " + sender.to_string(), config_.peer_table_limits());
        } catch (const error& e) {
            return r.error(e.code() == errc::limit_exceeded ? 413 : 400, e.what());
        }
        // A table that costs more than a small one to learn is rate-limited per sender.
        if (incoming.size() > cheap_table_entries || text->size() > cheap_table_bytes) {
            if (auto wait = table_limit_.take(sender)) {
                r.headers.emplace_back("Retry-After", std::to_string((wait + 999) / 1000));
                return r.error(429, "too many large tables from " + sender.to_string() + "; retry in " +
                                        std::to_string(wait) + " ms");
            }
        }
        try {
            learn(std::move(incoming), sender);
            auto answer = table_answer_.get(config_.iptable, self_entry(), answer_format);
            r.status = 200;
            r.content_type = "application/json";
            r.body = *answer;
            r.headers.emplace_back(observed_address_header, sender.to_string());
            r.headers.emplace_back(identity_header, identity_.id());
        } catch (const error& e) {
            r.error(500, e.what());
        }
    }

    // The relays served on GET /FRPPort, made on first use: a node nobody asks runs no
    // relay bookkeeping. Throws state_error once the node is stopping.
    std::shared_ptr<RelayPool> relay_pool() {
        std::lock_guard<std::mutex> lock(relays_mu_);
        if (!running_) throw error(errc::state_error, "the node is stopping");
        if (!relays_) {
            RelayPoolOptions ro;
            if (auto bind = IpAddress::parse(config_.bind)) ro.bind = *bind;
            ro.cap = config_.relay.cap;
            ro.login_timeout = std::chrono::seconds(config_.relay.login_timeout_s);
            ro.idle_timeout = std::chrono::seconds(config_.relay.idle_timeout_s);
            ro.token = config_.token;
            ro.tls_key_pem = identity_.private_pem();
            ro.per_requester = config_.relay.per_address;
            ro.allow_ports = parse_port_ranges(config_.relay.allow_ports);
            // The node's own port is never a relay client's public port.
            if (port() != 0) ro.deny_ports.push_back(port());
            if (config_.port != 0 && config_.port != port()) ro.deny_ports.push_back(config_.port);
            relays_ = std::make_shared<RelayPool>(ro);
        }
        return relays_;
    }

    bool token_ok(const HttpRequest& q) const {
        if (config_.token.empty()) return true;
        std::string given = q.header(token_header);
        if (given.empty()) {
            auto it = q.params.find("token");
            if (it != q.params.end()) given = it->second;
        }
        return detail::same_secret(given, config_.token);
    }

    // GET /FRPPort[?udp=true]: a relay on a free port; the answer is the bare port number.
    void handle_frp_port(const HttpRequest& q, HttpResponse& r) {
        if (!token_ok(q)) return r.error(401, "a valid network token is required (header X-P2PRC-Token or query token)");
        auto udp = q.params.find("udp");
        if (udp != q.params.end() && udp->second == "true")
            return r.error(501, "UDP relays are not supported: only TCP proxies");
        if (config_.relay.cap == 0) return r.error(503, "this node does not relay (relay.cap is 0)");
        // A relay opened behind NAT would be out of reach of the very peers that need it.
        if (behind_nat()) return r.error(503, "this node is behind NAT: it cannot relay for others");
        try {
            // A request from loopback to a node that listens beyond loopback came through
            // something local (a proxy in front of the node, a tunnel) that hides who
            // asked: that relay cannot be bound to the requester's address. (It still
            // counts towards the loopback address's share.)
            const auto bind = IpAddress::parse(config_.bind);
            const bool hidden = q.remote && q.remote->address.scope() == Scope::loopback &&
                                !(bind && bind->scope() == Scope::loopback);
            const auto port = relay_pool()->allocate(
                q.remote ? std::optional<IpAddress>(q.remote->address) : std::nullopt, !hidden);
            r.status = 200;
            r.content_type = "text/plain";
            r.body = std::to_string(port);
        } catch (const error& e) {
            r.error(e.code() == errc::limit_exceeded || e.code() == errc::state_error ? 503 : 500, e.what());
        }
    }

    // POST /dialback {"port": N}: can this node connect to the caller's address on port N?
    // The address is always the caller's own, as this node sees it: nobody can make the
    // node connect elsewhere.
    void handle_dialback(const HttpRequest& q, HttpResponse& r) {
        if (!q.remote) return r.error(400, "cannot tell the sender's address");
        const IpAddress caller = q.remote->address;
        if (via_own_relay(caller))
            return r.error(403, "dialback refused: this node is reached through a relay, so a caller at " +
                                    caller.to_string() + " may be anybody");
        const std::optional<std::uint16_t> port = detail::dialback_port(q.body);
        if (!port) return r.error(400, "expected a JSON body {\"port\": 1-65535}");
        if (auto wait = dialback_limit_.take(caller)) {
            metrics_->dialbacks.add({"served", "rate_limited"});
            r.headers.emplace_back("Retry-After", std::to_string((wait + 999) / 1000));
            return r.error(429, "too many dialback requests from " + caller.to_string() + "; retry in " +
                                    std::to_string(wait) + " ms");
        }
        detail::InFlightSlot slot(dialing_, max_concurrent_dialbacks);
        if (!slot.held()) {
            metrics_->dialbacks.add({"served", "busy"});
            return r.error(503, "too many dialbacks in progress; retry shortly");
        }
        const Endpoint target{caller, *port};
        nlohmann::json answer{{"address", caller.to_string()}, {"port", *port}};
        const auto t0 = std::chrono::steady_clock::now();
        try {
            auto conn = detail::TcpConnection::connect(target, dialback_connect_timeout);
            conn->close();
            answer["reachable"] = true;
            metrics_->dialbacks.add({"served", "reachable"});
        } catch (const error& e) {
            answer["reachable"] = false;
            metrics_->dialbacks.add({"served", "unreachable"});
            answer["error"] = e.what();
        }
        answer["elapsed_ms"] = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
        r.json(answer);
        r.headers.emplace_back(observed_address_header, caller.to_string());
    }

    // GET /whoami[?nonce=HEX]: the caller's address as seen here, the node's identity and,
    // given a nonce, the proof that this node holds its key (identity.hpp).
    void handle_whoami(const HttpRequest& q, HttpResponse& r) {
        if (!q.remote) return r.error(400, "cannot tell the sender's address");
        nlohmann::json answer{{"address", q.remote->address.to_string()},
                              {"port", q.remote->port},
                              {"node", instance_id_},
                              {"identity", identity_.id()}};
        auto nonce = q.params.find("nonce");
        if (nonce != q.params.end()) {
            if (!valid_nonce(nonce->second))
                return r.error(400, "nonce: expected 16-128 hex digits");
            answer["nonce"] = nonce->second;
            answer["signature"] = identity_.sign_hex(whoami_message(nonce->second));
        }
        r.json(answer);
        r.headers.emplace_back(observed_address_header, q.remote->address.to_string());
    }

    Config config_;
    Identity identity_;
    mutable std::mutex signed_mu_;
    mutable std::optional<SignedEntry> last_signed_;  // the last self-entry signed
    mutable std::mutex lifecycle_;
    std::unique_ptr<Server> server_;
    std::atomic<std::uint16_t> bound_port_{0};
    std::atomic<bool> running_{false};
    std::atomic<int> learning_{0};  // learn() calls probing right now
    ObservedAddress observed_;
    mutable std::mutex relays_mu_;
    std::shared_ptr<RelayPool> relays_;  // the relays served on GET /FRPPort (see relay_pool)
    mutable std::mutex tunnels_mu_;
    // By local port; shared with an expose() that is still bringing its tunnel up.
    std::map<std::uint16_t, std::shared_ptr<RelayTunnel>> tunnels_;
    std::uint16_t self_tunnel_port_ = 0;  // the tunnel of the node's own server, if any
    std::atomic<int> reachable_{-1};      // dialback verdict: -1 none, 0 no, 1 yes
    detail::CallerRateLimit dialback_limit_{3, std::chrono::milliseconds(2000)};
    // POST /IpTable: a table beyond these is "large" (rate-limited per sender).
    static constexpr std::size_t cheap_table_entries = 64;
    static constexpr std::size_t cheap_table_bytes = 64u << 10;
    static constexpr std::size_t max_dialback_body = 1024;
    detail::CallerRateLimit table_limit_{4, std::chrono::milliseconds(5000)};
    detail::TableAnswer table_answer_{config_.limits.table_answer_entries};
    std::atomic<int> dialing_{0};
    const std::string instance_id_;
    mutable std::mutex distrust_mu_;
    std::unordered_set<Endpoint> distrusted_relays_;  // gave an endpoint that led elsewhere
    std::shared_ptr<Metrics> metrics_ = std::make_shared<Metrics>();
    std::atomic<std::int64_t> started_at_ms_{0};  // Unix milliseconds of the last start()
};

}  // namespace p2prc

#include "status.hpp"
