// Discovery: how a node learns servers from its peers, and learns about itself.
//
// Part 1 (pure, no network): the scope rule for addresses learned from a peer, the filter
// a received table goes through before it may touch the node's table, the node's own
// endpoints (so it never lists itself), and the vote that turns what peers observe into
// the node's public address.
// Part 2 (network): gossip over POST /IpTable.
#pragma once

#include "address.hpp"
#include "config.hpp"
#include "probe.hpp"
#include "error.hpp"
#include "identity.hpp"
#include "iptable.hpp"
#include "peer.hpp"

#include <ifaddrs.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <httplib.h>

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace p2prc {

// ==== Part 1: pure building blocks =========================================================

// ---- The scope rule -------------------------------------------------------------------
//
// Gossip must not turn a node into a scanner of its own network: a peer on the internet
// that could make us probe 10.0.0.0/8, 127.0.0.1 or fe80::/10 would use us to map (or
// attack) what only we can reach. So an address learned from a peer is accepted only if
// it is no more internal than the peer itself, in the order of p2prc::Scope:
// public < private < link-local < loopback. Unspecified and reserved addresses are never
// a server. Link-local addresses are refused unless configured: they name a different
// host on every link. A loopback sender is the node's own machine (tests, several nodes
// on one host) and may teach any address that can be a server.

struct ScopePolicy {
    bool allow_link_local = false;
};

inline ScopePolicy scope_policy(const Config& config) {
    ScopePolicy p;
    p.allow_link_local = config.allow_link_local;
    return p;
}

// Why `learned`, received from `sender`, is refused; nullopt when it is accepted.
inline std::optional<std::string> scope_refusal(const IpAddress& sender, const IpAddress& learned,
                                                const ScopePolicy& policy) {
    const Scope ls = learned.scope(), ss = sender.scope();
    if (ls == Scope::unspecified || ls == Scope::reserved)
        return std::string(to_string(ls)) + " address is never a server";
    if (ls == Scope::link_local && !policy.allow_link_local)
        return std::string("link-local addresses are not accepted (allow_link_local is off)");
    if (ss == Scope::loopback) return std::nullopt;
    if (ss == Scope::unspecified || ss == Scope::reserved)
        return "sender " + sender.to_string() + " has a " + to_string(ss) + " address";
    if (static_cast<int>(ls) > static_cast<int>(ss))
        return std::string(to_string(ls)) + " address from a " + to_string(ss) + " sender " +
               sender.to_string();
    return std::nullopt;
}

inline bool scope_allows(const IpAddress& sender, const IpAddress& learned,
                         const ScopePolicy& policy) {
    return !scope_refusal(sender, learned, policy).has_value();
}

// ---- Filtering a table received from a peer -------------------------------------------

struct LearnReport {
    std::size_t received = 0;            // entries in the table as received
    std::size_t accepted = 0;            // entries left in it
    std::size_t dropped_scope = 0;       // entries with no acceptable address
    std::size_t addresses_removed = 0;   // refused addresses, incl. those of kept entries
    std::size_t dropped_over_limit = 0;  // acceptable entries beyond the entry bound
    std::vector<std::string> reasons;    // the first few refusals, for logs

    static constexpr std::size_t max_reasons = 16;
    std::size_t dropped() const { return dropped_scope + dropped_over_limit; }
};

// Makes a table received from `sender` fit to be merged into the node's table:
// - every address the scope rule refuses is removed; an entry left with no address goes
//   (an entry whose IPv4 is fine but whose IPv6 is not keeps its IPv4);
// - the measurements are cleared: latency and throughput are relative to the node that
//   measured them, so a peer's figures say nothing about us (and a liar could make itself
//   "fastest" to become everybody's relay);
// - at most `max_entries` entries are kept.
// O(n). The entries kept are in their received order.
inline LearnReport filter_learned(IpTable& incoming, const IpAddress& sender,
                                  const ScopePolicy& policy, std::size_t max_entries = 10000) {
    LearnReport report;
    std::vector<Peer> peers = std::move(incoming).peers();
    report.received = peers.size();
    std::vector<Peer> kept;
    kept.reserve(std::min(peers.size(), max_entries));
    std::size_t index = 0;
    auto note = [&](const Peer& p, const IpAddress& a, const std::string& why) {
        if (report.reasons.size() >= LearnReport::max_reasons) return;
        report.reasons.push_back("entry " + std::to_string(index) + " (" +
                                 Endpoint{a, p.server_port}.to_string() + "): " + why);
    };
    for (auto& p : peers) {
        for (auto* slot : {&p.ipv4, &p.ipv6}) {
            if (!*slot) continue;
            if (auto why = scope_refusal(sender, **slot, policy)) {
                note(p, **slot, *why);
                slot->reset();
                ++report.addresses_removed;
            }
        }
        std::vector<Endpoint> alt;
        for (const auto& e : p.alt_endpoints) {
            if (auto why = scope_refusal(sender, e.address, policy)) {
                note(p, e.address, *why);
                ++report.addresses_removed;
            } else {
                alt.push_back(e);
            }
        }
        p.alt_endpoints = std::move(alt);
        if (!p.ipv4 && !p.ipv6 && !p.alt_endpoints.empty()) p.promote(p.alt_endpoints.front());
        if (!p.ipv4 && !p.ipv6) {
            ++report.dropped_scope;
        } else if (kept.size() >= max_entries) {
            ++report.dropped_over_limit;
        } else {
            p.latency_ms.reset();
            p.download_mbps.reset();
            p.upload_mbps.reset();
            p.measured_at.reset();
            p.extra = nlohmann::json();  // unknown keys from a peer: not ours to keep
            kept.push_back(std::move(p));
        }
        ++index;
    }
    report.accepted = kept.size();
    incoming = IpTable(std::move(kept));
    return report;
}

// ---- Signed entries ---------------------------------------------------------------------

struct SignatureReport {
    std::size_t verified = 0;          // entries with a good signature, taken
    std::size_t forged = 0;            // bad signature, or an identity other than the signed one
    std::size_t replayed = 0;          // a good signature, older than what the table holds
    std::size_t unsigned_claims = 0;   // no signature, an identity the table knows signed
    std::vector<std::string> reasons;  // the first few refusals, for logs and callers

    static constexpr std::size_t max_reasons = 16;
    std::size_t dropped() const { return forged + replayed + unsigned_claims; }
};

// Checks the signed entries of a table received from a peer against `current` (the node's
// table) and drops what must not touch it:
// - an entry whose signature does not verify, or whose identity is not the signed one
//   (forged);
// - a signed entry older (smaller sequence number) than the signed entry `current` holds
//   for that identity (replayed);
// - an entry without a signature that claims an identity `current` holds a signed entry
//   for (an unsigned word never overwrites a signed one).
// A good signed entry is the server's own word: its identity, name, NAT facts and
// endpoints are taken into the entry (the endpoints still face the scope rule and the
// liveness check like any other). O(n) plus one signature check per signed entry.
inline SignatureReport check_signatures(IpTable& incoming, const IpTable& current) {
    SignatureReport report;
    std::unordered_map<std::string, std::uint64_t> known_seq;
    for (const auto& p : current.peers())
        if (p.signed_entry) {
            auto& seq = known_seq[p.signed_entry->identity];
            seq = std::max(seq, p.signed_entry->seq);
        }
    std::vector<Peer> peers = std::move(incoming).peers();
    std::vector<Peer> kept;
    kept.reserve(peers.size());
    auto refuse = [&](std::size_t i, const Peer& p, std::size_t& counter, const std::string& why) {
        ++counter;
        if (report.reasons.size() < SignatureReport::max_reasons)
            report.reasons.push_back("entry " + std::to_string(i) + " (" + p.label() + "): " + why);
    };
    for (std::size_t i = 0; i < peers.size(); ++i) {
        Peer& p = peers[i];
        if (p.signed_entry) {
            const SignedEntry& s = *p.signed_entry;
            if (!s.verify()) {
                refuse(i, p, report.forged,
                       "forged: the signature does not verify for identity " +
                           short_identity(s.identity));
                continue;
            }
            if (!p.identity.empty() && p.identity != s.identity) {
                refuse(i, p, report.forged,
                       "forged: the entry names identity " + short_identity(p.identity) +
                           " but is signed by " + short_identity(s.identity));
                continue;
            }
            auto known = known_seq.find(s.identity);
            if (known != known_seq.end() && s.seq < known->second) {
                refuse(i, p, report.replayed,
                       "replayed: sequence " + std::to_string(s.seq) + " of " +
                           short_identity(s.identity) + " is older than the known " +
                           std::to_string(known->second));
                continue;
            }
            p.identity = s.identity;
            p.name = s.name;
            p.nat = s.nat;
            p.escape_implementation = s.escape_implementation;
            for (const auto& e : s.endpoints) p.add_alt(e);
            ++report.verified;
        } else if (!p.identity.empty() && known_seq.count(p.identity)) {
            refuse(i, p, report.unsigned_claims,
                   "unsigned entry claims identity " + short_identity(p.identity) +
                       ", which the table holds a signed entry for");
            continue;
        }
        kept.push_back(std::move(p));
    }
    incoming = IpTable(std::move(kept));
    return report;
}

// ---- The node's own addresses ----------------------------------------------------------

// Every address of this machine's interfaces (IPv4 and IPv6, normalised, no duplicates,
// in the order the system lists them). Throws p2prc::error(io_error) when the system
// cannot list them.
inline std::vector<IpAddress> local_interface_addresses() {
    struct ifaddrs* list = nullptr;
    if (::getifaddrs(&list) != 0)
        throw error(errc::io_error, std::string("cannot list the network interfaces: ") +
                                        detail::errno_text(errno));
    std::vector<IpAddress> out;
    std::unordered_set<IpAddress> seen;
    for (auto* i = list; i; i = i->ifa_next) {
        if (!i->ifa_addr) continue;
        std::optional<IpAddress> a;
        if (i->ifa_addr->sa_family == AF_INET) {
            const auto* sin = reinterpret_cast<const sockaddr_in*>(i->ifa_addr);
            std::uint8_t b[4];
            std::memcpy(b, &sin->sin_addr, 4);
            a = IpAddress::from_v4(b);
        } else if (i->ifa_addr->sa_family == AF_INET6) {
            const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(i->ifa_addr);
            std::uint8_t b[16];
            std::memcpy(b, &sin6->sin6_addr, 16);
            // Through parse, so that an IPv4-mapped address becomes the IPv4 host.
            a = IpAddress::parse(IpAddress::from_v6(b).to_string());
        }
        if (a && seen.insert(*a).second) out.push_back(*a);
    }
    ::freeifaddrs(list);
    return out;
}

// The endpoints under which the node may appear in a table: the configured public
// addresses (with their own port, or the server's), the bind address, and, every
// interface address and loopback with the server's port. The unspecified addresses
// (0.0.0.0, ::) are included too, so that a table naming them never lists the node.
// Interface addresses are included even when the server binds one specific address:
// listing ourselves is the worse mistake than missing another server on our own host
// with our own port. `interfaces` is local_interface_addresses() in the overload below.
inline std::vector<Endpoint> own_endpoints(const Config& config, std::uint16_t bound_port,
                                           const std::vector<IpAddress>& interfaces) {
    if (bound_port == 0)
        throw error(errc::invalid_argument,
                    "own_endpoints: expected the port the server is "
                    "bound to, found 0");
    std::vector<Endpoint> out;
    std::unordered_set<Endpoint> seen;
    auto add = [&](const Endpoint& e) {
        if (seen.insert(e).second) out.push_back(e);
    };
    for (const auto& a : config.public_addresses) add(a.endpoint(bound_port));
    if (auto b = IpAddress::parse(config.bind)) add({*b, bound_port});
    for (const auto& a : interfaces) add({a, bound_port});
    for (const char* a : {"127.0.0.1", "::1", "0.0.0.0", "::"})
        add({IpAddress::from_string(a), bound_port});
    return out;
}

inline std::vector<Endpoint> own_endpoints(const Config& config, std::uint16_t bound_port) {
    return own_endpoints(config, bound_port, local_interface_addresses());
}

// ---- The node's address as its peers see it --------------------------------------------
//
// A node learns its public address from its peers (GET /whoami, the POST /IpTable answer),
// not from a third-party service. One peer cannot set it: an address is trusted once
// `quorum` (2) distinct reporters, by address, agree. A reporter's newer report replaces
// its older one, so repeating a claim counts once. Memory is bounded: past `max_reporters`
// the reporter heard from least recently is forgotten.
//
// Peers on different networks see different addresses (a LAN peer sees 192.168.1.5, an
// internet peer 203.0.113.5); among the addresses with a quorum the most public one wins,
// then the one with most reporters, then the most recently reported.
class ObservedAddress {
public:
    explicit ObservedAddress(std::size_t max_reporters = 64, std::size_t quorum = 2)
        : max_reporters_(std::max<std::size_t>(max_reporters, 1)),
          quorum_(std::max<std::size_t>(quorum, 1)) {}

    // Records that `reporter` saw us come from `observed`. Unspecified and reserved
    // observations are ignored (they are nobody's address).
    void report(const IpAddress& reporter, const IpAddress& observed) {
        const Scope s = observed.scope();
        if (s == Scope::unspecified || s == Scope::reserved) return;
        std::lock_guard<std::mutex> lock(mutex_);
        ++clock_;
        for (auto& v : votes_) {
            if (v.reporter == reporter) {
                v.observed = observed;
                v.at = clock_;
                return;
            }
        }
        if (votes_.size() >= max_reporters_) {
            auto oldest =
                std::min_element(votes_.begin(), votes_.end(),
                                 [](const Vote& a, const Vote& b) { return a.at < b.at; });
            votes_.erase(oldest);
        }
        votes_.push_back({reporter, observed, clock_});
    }

    // The address a quorum of distinct reporters agrees on, if any.
    std::optional<IpAddress> trusted() const {
        std::lock_guard<std::mutex> lock(mutex_);
        struct Tally {
            IpAddress address;
            std::size_t count = 0;
            std::uint64_t latest = 0;
        };
        std::vector<Tally> tallies;  // at most max_reporters_ entries: linear is fine
        for (const auto& v : votes_) {
            auto it = std::find_if(tallies.begin(), tallies.end(),
                                   [&](const Tally& t) { return t.address == v.observed; });
            if (it == tallies.end()) {
                tallies.push_back({v.observed, 1, v.at});
            } else {
                ++it->count;
                it->latest = std::max(it->latest, v.at);
            }
        }
        const Tally* best = nullptr;
        for (const auto& t : tallies) {
            if (t.count < quorum_) continue;
            if (!best || better(t.address.scope(), t.count, t.latest, best->address.scope(),
                                best->count, best->latest))
                best = &t;
        }
        if (!best) return std::nullopt;
        return best->address;
    }

    // True when a trusted observed address exists and is none of `own` (the interface
    // and configured addresses): something between us and our peers rewrites our address.
    // False when nothing is trusted yet.
    bool behind_nat(const std::vector<IpAddress>& own) const {
        auto t = trusted();
        if (!t) return false;
        return std::find(own.begin(), own.end(), *t) == own.end();
    }

    std::size_t reporters() const {
        std::lock_guard<std::mutex> lock(mutex_);
        return votes_.size();
    }

    void clear() {
        std::lock_guard<std::mutex> lock(mutex_);
        votes_.clear();
    }

private:
    struct Vote {
        IpAddress reporter;
        IpAddress observed;
        std::uint64_t at;  // logical time of the report
    };

    static bool better(Scope s1, std::size_t n1, std::uint64_t t1, Scope s2, std::size_t n2,
                       std::uint64_t t2) {
        if (s1 != s2) return static_cast<int>(s1) < static_cast<int>(s2);
        if (n1 != n2) return n1 > n2;
        return t1 > t2;
    }

    std::size_t max_reporters_;
    std::size_t quorum_;
    mutable std::mutex mutex_;
    std::vector<Vote> votes_;
    std::uint64_t clock_ = 0;
};

// ==== Part 2: gossip over the network ======================================================
//
// The exchange is P2PRC's: POST /IpTable with a multipart form whose file field "json"
// holds the sender's table in P2PRC's format; the answer is the receiver's table. Go
// nodes and p2prc nodes both accept that form, so it is what we send. The receiver also
// says which address it saw the request come from (header X-P2PRC-Observed-Address):
// that is how a node learns its public address without asking a third party.

inline constexpr const char* observed_address_header = "X-P2PRC-Observed-Address";
// The identity of the node answering POST /IpTable (its own entry in the answer carries
// its signed word; this says which entry that is).
inline constexpr const char* identity_header = "X-P2PRC-Identity";

struct GossipOptions {
    std::chrono::milliseconds connect_timeout{2000};
    std::chrono::milliseconds timeout{5000};  // each receive and send
    std::size_t max_answer_bytes = 16u << 20;
    TableLimits limits;  // applied to the answer
};

struct GossipResult {
    Endpoint peer;
    bool ok = false;
    IpTable table;                        // the peer's answer, as received
    std::optional<IpAddress> observed;    // our address as the peer saw it
    std::string identity;                 // the identity the peer states ("" when none)
    std::string reason;                   // why it failed
};

namespace detail {

inline std::string multipart_table_body(const std::string& boundary, const std::string& json) {
    return "--" + boundary + "\r\n" +
           "Content-Disposition: form-data; name=\"json\"; filename=\"config.json\"\r\n"
           "Content-Type: application/json\r\n\r\n" +
           json + "\r\n--" + boundary + "--\r\n";
}

}  // namespace detail

// Sends `ours` to `peer` and reads its table back. Network trouble and bad answers are
// values (ok == false, reason says why), never exceptions.
inline GossipResult exchange_tables(const Endpoint& peer, const IpTable& ours,
                                    const GossipOptions& options = {}) {
    GossipResult r;
    r.peer = peer;
    httplib::Client client(peer.host_string(), peer.port);
    detail::set_client_timeouts(client, options.connect_timeout, options.timeout);
    client.set_keep_alive(false);
    client.set_tcp_nodelay(true);

    const std::string boundary = "p2prc-table-boundary-7d1f3a";
    httplib::Request req;
    req.method = "POST";
    req.path = "/IpTable";
    req.headers = {{"Host", peer.to_string()}, {"Accept", "application/json"}, {"User-Agent", "p2prc"}};
    req.set_header("Content-Type", "multipart/form-data; boundary=" + boundary);
    req.body = detail::multipart_table_body(boundary, ours.dump(TableFormat::p2prc, -1));
    std::string answer;
    bool too_large = false;
    req.content_receiver = [&](const char* data, std::size_t n, std::uint64_t, std::uint64_t) {
        if (answer.size() + n > options.max_answer_bytes) {
            too_large = true;
            return false;
        }
        answer.append(data, n);
        return true;
    };
    // A hard deadline for the whole exchange: a peer trickling its answer a byte at a time
    // defeats the per-receive timeouts, not this.
    const auto deadline = std::chrono::steady_clock::now() + options.connect_timeout + 2 * options.timeout;
    bool late = false;
    auto res = detail::with_deadline(client, deadline, [&] { return client.send(req); }, &late);
    if (late) {
        r.reason = "no complete answer within the deadline";
        return r;
    }
    if (too_large) {
        r.reason = "answer larger than " + std::to_string(options.max_answer_bytes) + " bytes";
        return r;
    }
    if (!res) {
        r.reason = "no answer: " + httplib::to_string(res.error());
        return r;
    }
    if (res->status != 200) {
        r.reason = "HTTP status " + std::to_string(res->status);
        return r;
    }
    try {
        r.table = IpTable::parse(answer, "answer of " + peer.to_string(), options.limits);
    } catch (const error& e) {
        r.reason = e.what();
        return r;
    }
    if (res->has_header(observed_address_header))
        r.observed = IpAddress::parse(res->get_header_value(observed_address_header));
    if (res->has_header(identity_header) && is_identity(res->get_header_value(identity_header)))
        r.identity = res->get_header_value(identity_header);
    r.ok = true;
    return r;
}

}  // namespace p2prc
