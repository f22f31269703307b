// One entry of the IP table, and its JSON forms.
//
// Two formats exist in the wild and both are read and written:
//   TableFormat::seed   {"ipv4":..,"latency":..,"download":..,"upload":..,"port no":"8078"}
//                       latency in milliseconds, speeds in Mbit/s (the default output)
//   TableFormat::p2prc  P2PRC's Go struct: "IPV4", "ServerPort", "Latency" as integer
//                       nanoseconds (Go time.Duration), "NAT", "EscapeImplementation", ...
// The reader decides per entry, and tolerates what P2PRC's own files contain: numbers
// written as strings ("12.5", "8078"), booleans as "True"/"False", null for "".
// Keys it does not know are kept and written back, so a round trip loses nothing.
#pragma once

#include "address.hpp"
#include "error.hpp"
#include "identity.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace p2prc {

enum class TableFormat { seed, p2prc };

inline const char* to_string(TableFormat f) noexcept {
    return f == TableFormat::seed ? "seed" : "p2prc";
}

struct Peer {
    std::string name;
    std::optional<IpAddress> ipv4;  // always family v4 when set
    std::optional<IpAddress> ipv6;  // always family v6 when set
    std::uint16_t server_port = 0;

    // Measurements: absent until measured. A peer never measured is never "fastest".
    std::optional<double> latency_ms;
    std::optional<double> download_mbps;
    std::optional<double> upload_mbps;
    std::optional<std::int64_t> measured_at;  // unix seconds of the last measurement

    bool nat = false;                   // behind NAT
    std::string escape_implementation;  // "", "None" or "FRP"
    bool proxy_server = false;
    bool unsafe_mode = false;
    std::string machine_username;
    std::string udp_server_port;      // P2PRC keeps these ports as strings
    std::string bare_metal_ssh_port;
    std::string public_key;
    std::string custom_information;

    // The server's identity (identity.hpp), when known: learned from the server itself (a
    // probe, its signed entry). Entries of P2PRC's Go nodes have none.
    std::string identity;
    // More endpoints of the same server (another address, IPv4 and IPv6, another port):
    // the entry is contacted at ipv4/ipv6:server_port, these are the fall-backs.
    std::vector<Endpoint> alt_endpoints;
    // The server's own signed word about itself, passed on unchanged.
    std::optional<SignedEntry> signed_entry;

    static constexpr std::size_t max_alt_endpoints = 8;

    // Keys this version does not know, kept for the round trip (null when there are none,
    // which costs no allocation).
    nlohmann::json extra;

    // The endpoints under which this server is reachable: IPv4 first, then IPv6, then the
    // alternatives.
    std::vector<Endpoint> endpoints() const {
        std::vector<Endpoint> out;
        if (ipv4) out.push_back({*ipv4, server_port});
        if (ipv6) out.push_back({*ipv6, server_port});
        out.insert(out.end(), alt_endpoints.begin(), alt_endpoints.end());
        return out;
    }
    // The endpoint to contact: IPv4 when known, else IPv6.
    std::optional<Endpoint> endpoint() const {
        if (ipv4) return Endpoint{*ipv4, server_port};
        if (ipv6) return Endpoint{*ipv6, server_port};
        return std::nullopt;
    }
    // Calls fn(endpoint) for each endpoint (alternatives included) without allocating
    // (hot in dedupe).
    template <class Fn>
    void for_each_endpoint(Fn&& fn) const {
        if (ipv4) fn(Endpoint{*ipv4, server_port});
        if (ipv6) fn(Endpoint{*ipv6, server_port});
        for (const auto& e : alt_endpoints) fn(e);
    }
    // Whether `e` is the primary endpoint (IPv4 or IPv6 with the server port).
    bool is_primary(const Endpoint& e) const {
        return e.port == server_port &&
               ((ipv4 && *ipv4 == e.address) || (ipv6 && *ipv6 == e.address));
    }
    // Makes `e` the endpoint to contact; the previous primary endpoints become alternatives.
    void promote(const Endpoint& e) {
        if (is_primary(e) && (e.address.is_v4() || !ipv4)) return;
        std::vector<Endpoint> rest;
        for_each_endpoint([&](const Endpoint& x) {
            if (x != e && std::find(rest.begin(), rest.end(), x) == rest.end()) rest.push_back(x);
        });
        ipv4.reset();
        ipv6.reset();
        (e.address.is_v4() ? ipv4 : ipv6) = e.address;
        server_port = e.port;
        alt_endpoints.clear();
        for (const auto& x : rest) add_alt(x);
    }
    // Adds an alternative endpoint (not the primary, not twice, at most max_alt_endpoints).
    void add_alt(const Endpoint& e) {
        if (is_primary(e) ||
            std::find(alt_endpoints.begin(), alt_endpoints.end(), e) != alt_endpoints.end())
            return;
        if (e.port == server_port && !(e.address.is_v4() ? ipv4 : ipv6)) {
            (e.address.is_v4() ? ipv4 : ipv6) = e.address;  // the other family of the same port
            return;
        }
        if (alt_endpoints.size() < max_alt_endpoints) alt_endpoints.push_back(e);
    }
    bool measured() const noexcept { return latency_ms.has_value(); }

    // A short human label: the name, else the endpoint.
    std::string label() const {
        if (!name.empty()) return name;
        auto e = endpoint();
        return e ? e->to_string() : std::string("(no address)");
    }
};

// Bounds on what one entry may hold; a peer's table is input from the network.
struct PeerLimits {
    std::size_t max_name = 255;
    std::size_t max_string = 4096;              // usernames, ports as text, escape impl.
    std::size_t max_public_key = 16384;
    std::size_t max_custom_information = 65536;
    std::size_t max_unknown_keys = 64;
    std::size_t max_unknown_key_length = 128;
};

namespace detail {

inline std::string quote_for_error(std::string_view s) {
    std::string out = "\"";
    for (char c : s.substr(0, 60)) out += (static_cast<unsigned char>(c) < 0x20) ? '?' : c;
    if (s.size() > 60) out += "...";
    return out + "\"";
}

inline std::string json_type_name(const nlohmann::json& v) {
    return v.is_number() ? "a number" : v.is_string() ? "a string" : v.is_boolean() ? "a boolean"
         : v.is_null() ? "null" : v.is_array() ? "an array" : "an object";
}

inline std::string ascii_lower(std::string_view s) {
    std::string out(s);
    for (auto& c : out)
        if (c >= 'A' && c <= 'Z') c = char(c - 'A' + 'a');
    return out;
}

// Parses a decimal number written as text ("12.5"); refuses nan, inf and trailing junk.
inline std::optional<double> parse_decimal(const std::string& s) {
    if (s.empty() || s.size() > 64) return std::nullopt;
    for (char c : s)
        if (!((c >= '0' && c <= '9') || c == '.' || c == '-' || c == '+' || c == 'e' || c == 'E'))
            return std::nullopt;
    char* end = nullptr;
    double v = std::strtod(s.c_str(), &end);
    if (end != s.c_str() + s.size() || !std::isfinite(v)) return std::nullopt;
    return v;
}

// Reads one entry; `where` prefixes every error ("IP table F: entry 3").
class PeerReader {
public:
    PeerReader(const std::string& where, const PeerLimits& limits) : where_(where), limits_(limits) {}

    Peer read(const nlohmann::json& entry) {
        if (!entry.is_object())
            fail("expected a JSON object, found " + json_type_name(entry));
        // An entry in the seed's format uses lower-case keys that Go never writes.
        bool seed = entry.contains("port no") || entry.contains("ipv4") || entry.contains("ipv6") ||
                    entry.contains("latency");
        Peer p;
        bool have_port = false;
        for (auto it = entry.begin(); it != entry.end(); ++it) {
            const std::string key = ascii_lower(it.key());
            const auto& v = it.value();
            field_ = it.key();
            if (key == "name") {
                p.name = str(v, limits_.max_name);
                label_ = p.name;
            } else if (key == "ipv4") {
                p.ipv4 = address(v, IpAddress::Family::v4);
            } else if (key == "ipv6") {
                p.ipv6 = address(v, IpAddress::Family::v6);
            } else if (key == "serverport" || key == "port no" || key == "server_port") {
                p.server_port = port(v);
                have_port = true;
            } else if (key == "latency") {
                auto n = number(v);
                // Go stores a time.Duration (nanoseconds); 0 is Go's "never measured".
                if (n && *n > 0) p.latency_ms = seed ? *n : *n / 1e6;
            } else if (key == "download") {
                auto n = number(v);
                if (n && *n > 0) p.download_mbps = *n;
            } else if (key == "upload") {
                auto n = number(v);
                if (n && *n > 0) p.upload_mbps = *n;
            } else if (key == "measuredat" || key == "measured_at") {
                auto n = number(v);
                if (n && *n > 0) p.measured_at = static_cast<std::int64_t>(*n);
            } else if (key == "nat") {
                p.nat = boolean(v);
            } else if (key == "escapeimplementation" || key == "escape_implementation") {
                p.escape_implementation = str(v, limits_.max_string);
            } else if (key == "proxyserver" || key == "proxy_server") {
                p.proxy_server = boolean(v);
            } else if (key == "unsafemode" || key == "unsafe_mode") {
                p.unsafe_mode = boolean(v);
            } else if (key == "machineusername" || key == "machine_username") {
                p.machine_username = str(v, limits_.max_string);
            } else if (key == "udpserverport" || key == "udp_server_port") {
                p.udp_server_port = str(v, limits_.max_string, true);
            } else if (key == "baremetalsshport" || key == "bare_metal_ssh_port") {
                p.bare_metal_ssh_port = str(v, limits_.max_string, true);
            } else if (key == "publickey" || key == "public_key") {
                p.public_key = str(v, limits_.max_public_key);
            } else if (key == "custominformation" || key == "custom_information") {
                p.custom_information = str(v, limits_.max_custom_information);
            } else if (key == "identity") {
                p.identity = identity(v);
            } else if (key == "altendpoints" || key == "alt_endpoints") {
                p.alt_endpoints = endpoint_list(v, Peer::max_alt_endpoints);
            } else if (key == "signed") {
                if (!v.is_null()) p.signed_entry = signed_entry(v);
            } else {
                if (p.extra.size() >= limits_.max_unknown_keys)
                    fail("more than " + std::to_string(limits_.max_unknown_keys) + " unknown keys");
                if (it.key().size() > limits_.max_unknown_key_length)
                    fail("unknown key longer than " + std::to_string(limits_.max_unknown_key_length) +
                         " bytes");
                p.extra[it.key()] = v;
            }
        }
        field_.clear();
        if (!p.ipv4 && !p.ipv6) fail("no address: expected \"ipv4\"/\"IPV4\" or \"ipv6\"/\"IPV6\"");
        if (!have_port) fail("no server port: expected \"port no\" or \"ServerPort\"");
        return p;
    }

private:
    [[noreturn]] void fail(const std::string& what) const {
        std::string msg = where_;
        if (!label_.empty()) msg += " (" + quote_for_error(label_) + ")";
        if (!field_.empty()) msg += ", key " + quote_for_error(field_);
        throw error(errc::parse_error, msg + ": " + what);
    }

    std::string str(const nlohmann::json& v, std::size_t max, bool allow_number = false) const {
        if (v.is_null()) return {};
        if (allow_number && v.is_number_integer()) return v.dump();
        if (!v.is_string()) fail("expected a string, found " + json_type_name(v));
        const auto& s = v.get_ref<const std::string&>();
        if (s.size() > max)
            fail("string of " + std::to_string(s.size()) + " bytes, the limit is " + std::to_string(max));
        return s;
    }

    std::optional<double> number(const nlohmann::json& v) const {
        if (v.is_null()) return std::nullopt;
        double d;
        if (v.is_number()) {
            d = v.get<double>();
        } else if (v.is_string()) {
            const auto& s = v.get_ref<const std::string&>();
            if (s.empty()) return std::nullopt;
            auto n = parse_decimal(s);
            if (!n) fail("expected a number, found " + quote_for_error(s));
            d = *n;
        } else {
            fail("expected a number, found " + json_type_name(v));
        }
        if (!std::isfinite(d) || d < 0) fail("expected a non-negative number, found " + v.dump());
        return d;
    }

    bool boolean(const nlohmann::json& v) const {
        if (v.is_boolean()) return v.get<bool>();
        if (v.is_null()) return false;
        if (v.is_number_integer() && (v == 0 || v == 1)) return v == 1;
        if (v.is_string()) {
            auto s = ascii_lower(v.get_ref<const std::string&>());
            if (s == "true" || s == "1" || s == "yes") return true;
            if (s == "false" || s == "0" || s == "no" || s.empty()) return false;
            fail("expected a boolean, found " + quote_for_error(v.get_ref<const std::string&>()));
        }
        fail("expected a boolean, found " + json_type_name(v));
    }

    std::uint16_t port(const nlohmann::json& v) const {
        if (v.is_number_integer()) {
            auto n = v.get<std::int64_t>();
            if (n >= 1 && n <= 65535) return static_cast<std::uint16_t>(n);
            fail("invalid port " + v.dump() + ": expected a decimal number 1-65535");
        }
        if (v.is_string()) {
            const auto& s = v.get_ref<const std::string&>();
            if (auto p = parse_port(s)) return *p;
            fail("invalid port " + quote_for_error(s) + ": expected a decimal number 1-65535");
        }
        fail("invalid port: expected a decimal number 1-65535, found " + json_type_name(v));
    }

    std::string identity(const nlohmann::json& v) const {
        if (v.is_null()) return {};
        if (!v.is_string()) fail("expected an identity string, found " + json_type_name(v));
        const auto& s = v.get_ref<const std::string&>();
        if (s.empty()) return {};
        if (!is_identity(s))
            fail("invalid identity " + quote_for_error(s) +
                 ": expected 52 base32 characters (a-z, 2-7)");
        return s;
    }

    std::vector<Endpoint> endpoint_list(const nlohmann::json& v, std::size_t max) const {
        std::vector<Endpoint> out;
        if (v.is_null()) return out;
        if (!v.is_array()) fail("expected an array of endpoints, found " + json_type_name(v));
        if (v.size() > max) fail("more than " + std::to_string(max) + " endpoints");
        for (const auto& e : v) {
            if (!e.is_string()) fail("expected an endpoint string, found " + json_type_name(e));
            auto ep = Endpoint::parse(e.get_ref<const std::string&>());
            if (!ep)
                fail("invalid endpoint " + quote_for_error(e.get_ref<const std::string&>()) +
                     ": expected ADDRESS:PORT ([ADDRESS]:PORT for IPv6)");
            if (std::find(out.begin(), out.end(), *ep) == out.end()) out.push_back(*ep);
        }
        return out;
    }

    // The signed entry is read as written (a reader must not normalise what was signed:
    // only the signature check decides whether it is good).
    SignedEntry signed_entry(const nlohmann::json& v) const {
        if (!v.is_object()) fail("expected a signed entry object, found " + json_type_name(v));
        SignedEntry s;
        auto text = [&](const char* k, std::size_t max) -> std::string {
            auto it = v.find(k);
            if (it == v.end() || it->is_null()) return {};
            if (!it->is_string()) fail(std::string("signed entry: \"") + k + "\" must be a string");
            if (it->get_ref<const std::string&>().size() > max)
                fail(std::string("signed entry: \"") + k + "\" longer than " + std::to_string(max) +
                     " bytes");
            return it->get<std::string>();
        };
        s.identity = identity(v.contains("identity") ? v["identity"] : nlohmann::json());
        if (s.identity.empty()) fail("signed entry without an identity");
        auto seq = v.find("seq");
        if (seq == v.end() || !seq->is_number_unsigned())
            fail("signed entry: \"seq\" must be an unsigned integer");
        s.seq = seq->get<std::uint64_t>();
        s.name = text("name", limits_.max_name);
        s.endpoints = endpoint_list(v.contains("endpoints") ? v["endpoints"] : nlohmann::json(),
                                    SignedEntry::max_endpoints);
        if (auto n = v.find("nat"); n != v.end() && !n->is_null()) {
            if (!n->is_boolean()) fail("signed entry: \"nat\" must be a boolean");
            s.nat = n->get<bool>();
        }
        s.escape_implementation = text("escape_implementation", limits_.max_string);
        const std::string relay = text("relay", 64);
        if (!relay.empty()) {
            s.relay = Endpoint::parse(relay);
            if (!s.relay) fail("signed entry: invalid relay endpoint " + quote_for_error(relay));
        }
        s.signature = text("signature", 128);
        if (s.signature.size() != 128) fail("signed entry: \"signature\" must be 128 hex digits");
        return s;
    }

    std::optional<IpAddress> address(const nlohmann::json& v, IpAddress::Family family) const {
        if (v.is_null()) return std::nullopt;
        if (!v.is_string()) fail("expected an address string, found " + json_type_name(v));
        const auto& s = v.get_ref<const std::string&>();
        if (s.empty()) return std::nullopt;
        auto a = IpAddress::parse(s);
        const char* want = family == IpAddress::Family::v4 ? "IPv4" : "IPv6";
        if (!a) fail("invalid address " + quote_for_error(s) + ": expected a numeric " + want + " address");
        if (a->family() != family)
            fail("address " + quote_for_error(s) + " is not an " + want + " address");
        return a;
    }

    std::string where_;
    const PeerLimits& limits_;
    std::string label_;
    std::string field_;
};

// Go's encoding/json prints a float64 in the shortest form that round-trips; rounding
// to a microsecond / a kbit keeps files readable without losing anything measured.
inline double round_to(double v, double unit) { return std::round(v / unit) * unit; }

}  // namespace detail

// Reads one entry in either format; throws p2prc::error naming `where` and the key.
inline Peer peer_from_json(const nlohmann::json& entry, const std::string& where = "peer",
                           const PeerLimits& limits = {}) {
    return detail::PeerReader(where, limits).read(entry);
}

inline nlohmann::json signed_entry_to_json(const SignedEntry& s) {
    nlohmann::json eps = nlohmann::json::array();
    for (const auto& e : s.endpoints) eps.push_back(e.to_string());
    return {{"identity", s.identity},
            {"seq", s.seq},
            {"name", s.name},
            {"endpoints", std::move(eps)},
            {"nat", s.nat},
            {"escape_implementation", s.escape_implementation},
            {"relay", s.relay ? s.relay->to_string() : std::string()},
            {"signature", s.signature}};
}

namespace detail {

// The identity facts of an entry, in both formats under the format's spelling (P2PRC's Go
// nodes ignore keys they do not know).
inline void write_identity_keys(const Peer& p, nlohmann::json& j, bool go) {
    if (!p.identity.empty()) j[go ? "Identity" : "identity"] = p.identity;
    if (!p.alt_endpoints.empty()) {
        nlohmann::json alt = nlohmann::json::array();
        for (const auto& e : p.alt_endpoints) alt.push_back(e.to_string());
        j[go ? "AltEndpoints" : "alt_endpoints"] = std::move(alt);
    }
    if (p.signed_entry) j[go ? "Signed" : "signed"] = signed_entry_to_json(*p.signed_entry);
}

}  // namespace detail

// Writes one entry in the chosen format. Unknown keys that were read are written back.
inline nlohmann::json peer_to_json(const Peer& p, TableFormat format = TableFormat::seed) {
    nlohmann::json j = nlohmann::json::object();
    for (auto it = p.extra.begin(); it != p.extra.end(); ++it) j[it.key()] = it.value();
    auto ip = [](const std::optional<IpAddress>& a) { return a ? a->to_string() : std::string(); };
    if (format == TableFormat::p2prc) {
        // Every key, as Go's encoding/json writes the struct.
        j["Name"] = p.name;
        j["MachineUsername"] = p.machine_username;
        j["IPV4"] = ip(p.ipv4);
        j["IPV6"] = ip(p.ipv6);
        j["Latency"] = p.latency_ms ? std::llround(*p.latency_ms * 1e6) : 0;
        j["Download"] = p.download_mbps ? detail::round_to(*p.download_mbps, 1e-3) : 0.0;
        j["Upload"] = p.upload_mbps ? detail::round_to(*p.upload_mbps, 1e-3) : 0.0;
        j["ServerPort"] = std::to_string(p.server_port);
        j["UDPServerPort"] = p.udp_server_port;
        j["BareMetalSSHPort"] = p.bare_metal_ssh_port;
        j["NAT"] = p.nat;
        j["EscapeImplementation"] = p.escape_implementation;
        j["ProxyServer"] = p.proxy_server;
        j["UnSafeMode"] = p.unsafe_mode;
        j["PublicKey"] = p.public_key;
        j["CustomInformation"] = p.custom_information;
        if (p.measured_at) j["MeasuredAt"] = *p.measured_at;  // Go ignores unknown keys
        detail::write_identity_keys(p, j, true);
        return j;
    }
    // The seed's five keys always; the rest only when they say something.
    j["ipv4"] = ip(p.ipv4);
    if (p.ipv6) j["ipv6"] = ip(p.ipv6);
    j["latency"] = p.latency_ms ? nlohmann::json(detail::round_to(*p.latency_ms, 1e-3)) : nlohmann::json();
    j["download"] = p.download_mbps ? nlohmann::json(detail::round_to(*p.download_mbps, 1e-3)) : nlohmann::json();
    j["upload"] = p.upload_mbps ? nlohmann::json(detail::round_to(*p.upload_mbps, 1e-3)) : nlohmann::json();
    j["port no"] = std::to_string(p.server_port);
    if (!p.name.empty()) j["name"] = p.name;
    if (p.measured_at) j["measured_at"] = *p.measured_at;
    if (p.nat) j["nat"] = true;
    if (!p.escape_implementation.empty()) j["escape_implementation"] = p.escape_implementation;
    if (p.proxy_server) j["proxy_server"] = true;
    if (p.unsafe_mode) j["unsafe_mode"] = true;
    if (!p.machine_username.empty()) j["machine_username"] = p.machine_username;
    if (!p.udp_server_port.empty()) j["udp_server_port"] = p.udp_server_port;
    if (!p.bare_metal_ssh_port.empty()) j["bare_metal_ssh_port"] = p.bare_metal_ssh_port;
    if (!p.public_key.empty()) j["public_key"] = p.public_key;
    if (!p.custom_information.empty()) j["custom_information"] = p.custom_information;
    detail::write_identity_keys(p, j, false);
    return j;
}

}  // namespace p2prc
