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
#include "iptable.hpp"
#include "probe.hpp"
#include "server.hpp"

#include <atomic>
#include <chrono>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
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
};

struct DiscoverReport {
    std::vector<Endpoint> contacted;                          // peers that answered
    std::vector<std::pair<Endpoint, std::string>> failed;     // peers that did not, and why
    std::size_t hops = 0;                                     // rounds done (1 + hops beyond the bootstrap)
    bool budget_exhausted = false;                            // stopped by the time budget
    RefreshReport refresh;                                    // the probe round at the end
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

}  // namespace detail

class Node {
public:
    // New servers in one POST /IpTable that are probed before they enter the table; the
    // rest wait for a later exchange. Bounds the work one request can cause.
    static constexpr std::size_t max_liveness_checks = 64;
    // learn() calls that may probe at the same time; others add nothing new.
    static constexpr int max_concurrent_learning = 2;

    explicit Node(Config config) : config_(std::move(config)) {}
    ~Node() { stop(); }
    Node(const Node&) = delete;
    Node& operator=(const Node&) = delete;

    const Config& config() const noexcept { return config_; }

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
        so.worker_threads = config_.limits.server_threads;
        so.max_body_bytes = std::max(config_.limits.max_body_bytes, config_.limits.max_upload_bytes);
        so.read_timeout = so.write_timeout = detail::ms(config_.limits.request_timeout_ms);
        auto server = std::make_unique<Server>(so);
        server->post("/IpTable", [this](const HttpRequest& q, HttpResponse& r) { handle_table(q, r); });
        server->get("/whoami", [this](const HttpRequest& q, HttpResponse& r) { handle_whoami(q, r); });
        server->start();
        bound_port_ = server->port();
        server_ = std::move(server);
        running_ = true;
        modify([](IpTable&) {});
    }

    void stop() {
        std::lock_guard<std::mutex> lock(lifecycle_);
        running_ = false;
        if (server_) server_->stop();
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
        return p2prc::own_endpoints(config_, port());
    }

    // The entry other nodes should list for this one.
    Peer self_entry() const {
        Peer p;
        p.name = config_.name;
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

    // Whether this node is behind NAT: as configured, or (auto) when two peers agree on
    // an address that is none of this machine's.
    bool behind_nat() const {
        if (config_.behind_nat == BehindNat::yes) return true;
        if (config_.behind_nat == BehindNat::no) return false;
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
                answered.ipv4.reset();
                answered.ipv6.reset();
                answered.server_port = r.peer.port;
                (r.peer.address.is_v4() ? answered.ipv4 : answered.ipv6) = r.peer.address;
                answered.latency_ms.reset();
                answered.download_mbps.reset();
                answered.upload_mbps.reset();
                answered.measured_at.reset();
                answered.extra = nlohmann::json();
                r.table.remove(r.peer.to_string());
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
        snapshot.remove_self(own_endpoints());
        RefreshOptions ro;
        ro.concurrency = config_.limits.probe_concurrency;
        ro.latency.connect_timeout = std::min(detail::ms(config_.limits.probe_timeout_ms), std::chrono::milliseconds(2000));
        ro.latency.read_timeout = detail::ms(config_.limits.probe_timeout_ms);
        ro.latency.total_timeout = 3 * detail::ms(config_.limits.probe_timeout_ms);
        ro.measure_throughput = measure_throughput;
        ro.progress = progress;
        RefreshReport report = refresh(snapshot, ro);
        modify([&](IpTable& t) { detail::apply_refresh(t, report); });
        return report;
    }

    // Takes a table received from `sender`: applies the scope rule and the bounds,
    // probes the servers it does not know yet (bounded in count and time) and adds the
    // live ones.
    LearnOutcome learn(IpTable incoming, const IpAddress& sender) {
        LearnOutcome out;
        out.filter = filter_learned(incoming, sender, scope_policy(config_), config_.limits.max_entries);
        incoming.remove_self(own_endpoints());
        incoming.dedupe();
        std::unordered_set<Endpoint> known;
        for (const auto& p : table().peers()) p.for_each_endpoint([&](const Endpoint& e) { known.insert(e); });
        std::vector<Peer> fresh;
        for (const auto& p : incoming.peers()) {
            bool is_known = false;
            p.for_each_endpoint([&](const Endpoint& e) { is_known = is_known || known.count(e) > 0; });
            if (!is_known) fresh.push_back(p);
        }
        out.new_servers = fresh.size();
        // At most two learn() calls probe at once in the whole node: a flood of tables
        // cannot turn the node into a prober of addresses its senders pick.
        struct Slot {
            std::atomic<int>& n;
            bool held;
            explicit Slot(std::atomic<int>& c) : n(c), held(++c <= max_concurrent_learning) {}
            ~Slot() { --n; }
        } slot(learning_);
        if (!slot.held) {
            out.unchecked = fresh.size();
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
        detail::parallel_for(checks.size(), 16, [&](std::size_t k) {
            auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
            if (left < std::chrono::milliseconds(50)) return;
            LatencyOptions lo;
            lo.samples = 1;
            lo.connect_timeout = std::min(left, std::chrono::milliseconds(1000));
            lo.read_timeout = left;
            lo.total_timeout = left;
            ran[k] = 1;
            alive[k] = probe_latency(checks[k].second, lo).reachable ? 1 : 0;
        });
        std::vector<char> entry_ran(fresh.size(), 1);
        for (std::size_t k = 0; k < checks.size(); ++k) {
            Peer& p = fresh[checks[k].first];
            if (!ran[k]) entry_ran[checks[k].first] = 0;
            if (!alive[k]) (checks[k].second.address.is_v4() ? p.ipv4 : p.ipv6).reset();
        }
        IpTable add;
        for (std::size_t i = 0; i < fresh.size(); ++i) {
            if (!entry_ran[i]) ++out.unchecked;
            else ++out.checked;
            if (entry_ran[i] && (fresh[i].ipv4 || fresh[i].ipv6)) add.add(fresh[i]);
        }
        out.added = add.size();
        out.added_peers = add.peers();
        if (!add.empty()) modify([&](IpTable& t) { t.merge(add); });
        return out;
    }

private:
    // Load, change, clean, save, under the file lock.
    void modify(const std::function<void(IpTable&)>& change) {
        auto own = own_endpoints();
        IpTable::update(
            config_.iptable,
            [&](IpTable& t) {
                change(t);
                t.dedupe();
                t.remove_self(own);
            },
            config_.table_format, std::chrono::seconds(30));
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
        try {
            learn(std::move(incoming), sender);
            IpTable answer = table();
            answer.add(self_entry());
            r.status = 200;
            r.content_type = "application/json";
            r.body = answer.dump(answer_format, -1);
            r.headers.emplace_back(observed_address_header, sender.to_string());
        } catch (const error& e) {
            r.error(500, e.what());
        }
    }

    void handle_whoami(const HttpRequest& q, HttpResponse& r) {
        if (!q.remote) return r.error(400, "cannot tell the sender's address");
        r.json({{"address", q.remote->address.to_string()}, {"port", q.remote->port}});
        r.headers.emplace_back(observed_address_header, q.remote->address.to_string());
    }

    Config config_;
    std::mutex lifecycle_;
    std::unique_ptr<Server> server_;
    std::atomic<std::uint16_t> bound_port_{0};
    std::atomic<bool> running_{false};
    std::atomic<int> learning_{0};  // learn() calls probing right now
    ObservedAddress observed_;
};

}  // namespace p2prc
