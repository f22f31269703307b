// The node's configuration: a JSON file, defaults for every key, and CLI flags on top.
//
// Where the values come from is decided by the caller, explicitly: Config::from_sources
// takes the --config path and an environment lookup (P2PRC_CONFIG) as parameters, and
// nothing in the library reads a configuration behind the caller's back.
//
// One table (detail::config_keys) describes every key once: its place in the file, its
// flag, its help text, what a valid value is, and how it is read and written. The file
// reader, the flag parser, to_json and the --help text all walk that table, so a key
// cannot exist in one and be forgotten in another.
//
// A key of the wrong type or out of range is a p2prc::error naming the key (or the flag)
// and what was expected; an unknown key is only a warning (Config::warnings), so a file
// written for a newer version still loads.
#pragma once

#include "address.hpp"
#include "error.hpp"
#include "iptable.hpp"
#include "peer.hpp"

#include <nlohmann/json.hpp>

#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace p2prc {

// "behind_nat": true, false, or "auto" (learn it from what peers observe).
enum class BehindNat { no, yes, automatic };

inline const char* to_string(BehindNat b) noexcept {
    return b == BehindNat::no ? "false" : b == BehindNat::yes ? "true" : "auto";
}

// An address the node advertises as its own: "ADDR" (the server's port) or "ADDR:PORT".
struct AdvertisedAddress {
    IpAddress address;
    std::uint16_t port = 0;  // 0: the server's port

    // Accepts "1.2.3.4", "1.2.3.4:9000", "2001:db8::1", "[2001:db8::1]", "[2001:db8::1]:9000".
    // Unspecified and reserved addresses are refused: nobody can reach a node there.
    static std::optional<AdvertisedAddress> parse(std::string_view text) noexcept {
        AdvertisedAddress out;
        if (auto a = IpAddress::parse(text)) {
            out.address = *a;
        } else if (auto e = Endpoint::parse(text)) {
            out.address = e->address;
            out.port = e->port;
        } else {
            return std::nullopt;
        }
        auto s = out.address.scope();
        if (s == Scope::unspecified || s == Scope::reserved) return std::nullopt;
        return out;
    }

    std::string to_string() const {
        if (port == 0) return address.to_string();
        return Endpoint{address, port}.to_string();
    }

    // The endpoint it stands for, given the port the server is bound to.
    Endpoint endpoint(std::uint16_t server_port) const {
        return Endpoint{address, port ? port : server_port};
    }

    friend bool operator==(const AdvertisedAddress& x, const AdvertisedAddress& y) noexcept {
        return x.address == y.address && x.port == y.port;
    }
    friend bool operator!=(const AdvertisedAddress& x, const AdvertisedAddress& y) noexcept {
        return !(x == y);
    }
};

// The relay (GET /FRPPort): bounded so that it cannot be used to exhaust the node.
struct RelaySettings {
    std::size_t cap = 32;                // live relays at most; 0 turns relaying off
    std::uint32_t idle_timeout_s = 300;  // a relay without a public port or traffic is reclaimed
    std::uint32_t login_timeout_s = 60;  // an allocated port nobody logs into is reclaimed
    std::size_t per_address = 4;         // live relays one requester (IPv4 address, IPv6 /64) holds
    // Public ports a relay client may open (frps's allow_ports); the node's own port is
    // refused whatever this says.
    std::string allow_ports = "1024-65535";
};

// Bounds on what the node accepts and spends. Everything from the network is bounded.
struct NodeLimits {
    std::size_t max_body_bytes = 16u << 20;    // a POST /IpTable body
    std::size_t max_upload_bytes = 64u << 20;  // a speed-test upload
    std::size_t max_entries = 10000;           // entries in a table from a peer
    std::uint32_t request_timeout_ms = 5000;   // one HTTP exchange, either side
    std::uint32_t probe_timeout_ms = 3000;     // one latency probe
    std::size_t probe_concurrency = 32;        // probes in flight at once
    std::uint32_t liveness_budget_ms = 3000;   // POST /IpTable: time to check new entries
    std::size_t discovery_hops = 3;            // discover: hops beyond the bootstrap servers
    std::uint32_t discovery_budget_s = 60;     // a whole discover() run
    std::size_t discovery_concurrency = 8;     // peers contacted at once while discovering
    std::size_t server_threads = 8;            // HTTP worker threads
    std::size_t server_queue = 64;             // connections open beyond the workers
    std::uint32_t request_deadline_ms = 5000;  // one request served, headers to answer
    std::uint32_t header_deadline_ms = 3000;   // request line and headers in, from accept
    std::size_t connections_per_address = 32;  // open connections of one IPv4 /32 or IPv6 /64
    std::size_t table_answer_entries = 1000;   // entries answered on POST /IpTable (freshest first)
};

// Looks up one environment variable. A parameter, so tests inject their own environment
// and the library never reads the process environment unless told to.
using EnvLookup = std::function<std::optional<std::string>(std::string_view name)>;

// The process environment, for callers that want it (pass it to Config::from_sources).
inline std::optional<std::string> process_environment(std::string_view name) {
    const char* v = std::getenv(std::string(name).c_str());
    if (!v) return std::nullopt;
    return std::string(v);
}

// One command-line flag of the configuration, for --help.
struct ConfigFlag {
    std::string flag;           // "--port"
    std::string metavar;        // "N"; empty for a boolean flag (its value is optional)
    std::string key;            // "port", "relay.cap": the key it overrides
    std::string help;           // one line, without the default
    std::string default_value;  // as a user would write it; "" when empty
    bool repeatable = false;    // --public-address may be given several times
    bool boolean() const { return metavar.empty(); }
};

namespace detail {

// The machine's host name: the default node name.
inline std::string default_node_name() {
    char buf[HOST_NAME_MAX + 1] = {};
    if (::gethostname(buf, sizeof buf - 1) != 0 || buf[0] == '\0') return "p2prc-node";
    return buf;
}

}  // namespace detail

class Config {
  public:
    std::string name = detail::default_node_name();   // the node's name in tables
    std::string iptable = "p2prc-iptable.json";       // path of the table file
    TableFormat table_format = TableFormat::seed;     // format the table file is written in
    std::string identity_key;  // the node's key file; "" = beside the table (identity_key_path)
    bool table_pretty = false;                        // indented table file (else one entry a line)
    std::string bind = "0.0.0.0";                     // numeric address the server binds to
    std::uint16_t port = 8078;                        // server port; 0 picks a free one
    std::vector<AdvertisedAddress> public_addresses;  // addresses advertised as the node's own
    BehindNat behind_nat = BehindNat::automatic;
    RelaySettings relay;
    std::string token;              // network secret for /FRPPort and frp login; "" = none
    bool allow_link_local = false;  // accept link-local addresses from peers
    NodeLimits limits;

    // Not configuration: where the values came from ("defaults" or the file's path), and
    // what the reader wants the user to know (unknown keys).
    std::string source = "defaults";
    std::vector<std::string> warnings;

    static constexpr std::size_t max_file_bytes = 1u << 20;
    static constexpr std::size_t max_public_addresses = 64;
    static constexpr const char* env_var = "P2PRC_CONFIG";

    // Reads a configuration from JSON text; keys not given keep their defaults. `origin`
    // names the text in errors and warnings.
    static Config parse(std::string_view text, const std::string& origin = "config");

    // Reads a configuration file. The path was given explicitly, so a missing file is an
    // error (io_error), not a silent fall-back to defaults.
    static Config load(const std::string& path);

    // The path from --config when given, else env P2PRC_CONFIG when set and non-empty,
    // else the defaults. `env` is the environment to consult, e.g. p2prc::process_environment.
    static Config from_sources(const std::optional<std::string>& cli_config_path,
                               const EnvLookup& env);

    // Every key, in the file's layout. With `redacted`, a set token reads "<redacted>".
    nlohmann::json to_json(bool redacted = false) const;
    std::string dump(bool redacted = false, int indent = 2) const {
        return to_json(redacted).dump(indent) + "\n";
    }

    // Sets one key from a command-line flag ("--port", "8079"); the leading "--" is
    // optional. A boolean flag with an empty value means true. A repeatable flag
    // (--public-address) appends. Throws p2prc::error naming the flag on an unknown flag
    // or an invalid value.
    void apply_flag(std::string_view flag, std::string_view value);

    // Applies flags in order, with the override rule of the CLI: a repeatable flag given
    // on the command line replaces the file's list rather than adding to it.
    void apply_flags(const std::vector<std::pair<std::string, std::string>>& flags);

    // The flags, in --help order; find_flag accepts "--port" or "port", nullptr if unknown.
    static const std::vector<ConfigFlag>& flags();
    static const ConfigFlag* find_flag(std::string_view flag);

    // The identity key file: identity_key when set, else the table's path with ".json"
    // replaced by ".key" (or ".key" appended), so every table has its own node identity.
    std::string identity_key_path() const {
        if (!identity_key.empty()) return identity_key;
        const std::string ext = ".json";
        if (iptable.size() > ext.size() &&
            iptable.compare(iptable.size() - ext.size(), ext.size(), ext) == 0)
            return iptable.substr(0, iptable.size() - ext.size()) + ".key";
        return iptable + ".key";
    }

    // Bounds for a table received from a peer.
    TableLimits peer_table_limits() const {
        TableLimits t;
        t.max_bytes = limits.max_body_bytes;
        t.max_entries = limits.max_entries;
        return t;
    }
};

namespace detail {

// One configuration key, described once; see the file comment.
struct ConfigKey {
    std::string key;      // "port", "relay.cap", "limits.max_entries"
    std::string flag;     // "--port"
    std::string metavar;  // "" for a boolean
    std::string help;
    std::string expected;  // "an integer 0-65535": completes "expected ..."
    bool repeatable = false;
    std::function<bool(Config&, const nlohmann::json&)> from_json;  // false: invalid
    std::function<bool(Config&, std::string_view)> from_text;       // false: invalid
    std::function<nlohmann::json(const Config&)> to_json;
};

inline std::optional<std::uint64_t> json_uint(const nlohmann::json& v) {
    if (v.is_number_unsigned()) return v.get<std::uint64_t>();
    if (v.is_number_integer()) {
        auto n = v.get<std::int64_t>();
        if (n >= 0) return static_cast<std::uint64_t>(n);
    }
    return std::nullopt;
}

inline std::optional<bool> text_bool(std::string_view s) {
    auto l = ascii_lower(s);
    if (l.empty() || l == "true" || l == "1" || l == "yes" || l == "on") return true;
    if (l == "false" || l == "0" || l == "no" || l == "off") return false;
    return std::nullopt;
}

inline bool has_control_char(std::string_view s) {
    for (char c : s)
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) return true;
    return false;
}

// What was found, for an error message; never long, never the raw bytes of a control char.
inline std::string describe_json(const nlohmann::json& v) {
    if (v.is_string()) return quote_for_error(v.get_ref<const std::string&>());
    if (v.is_object()) return "an object";
    std::string d = v.dump();
    if (d.size() > 60) d = d.substr(0, 60) + "...";
    return d;
}

// Access is a generic lambda returning a reference to the field, for Config& and const
// Config& alike.
template <class Access>
ConfigKey integer_key(const char* key, const char* flag, const char* metavar, const char* help,
                      std::uint64_t lo, std::uint64_t hi, Access access) {
    ConfigKey k;
    k.key = key;
    k.flag = flag;
    k.metavar = metavar;
    k.help = help;
    k.expected = "an integer " + std::to_string(lo) + "-" + std::to_string(hi);
    auto set = [lo, hi, access](Config& c, std::optional<std::uint64_t> n) {
        if (!n || *n < lo || *n > hi) return false;
        using T = std::remove_reference_t<decltype(access(c))>;
        access(c) = static_cast<T>(*n);
        return true;
    };
    k.from_json = [set](Config& c, const nlohmann::json& v) { return set(c, json_uint(v)); };
    k.from_text = [set](Config& c, std::string_view s) { return set(c, parse_decimal_u64(s)); };
    k.to_json = [access](const Config& c) { return nlohmann::json(access(c)); };
    return k;
}

template <class Access>
ConfigKey bool_key(const char* key, const char* flag, const char* help, Access access) {
    ConfigKey k;
    k.key = key;
    k.flag = flag;
    k.help = help;
    k.expected = "true or false";
    k.from_json = [access](Config& c, const nlohmann::json& v) {
        if (!v.is_boolean()) return false;
        access(c) = v.get<bool>();
        return true;
    };
    k.from_text = [access](Config& c, std::string_view s) {
        auto b = text_bool(s);
        if (!b) return false;
        access(c) = *b;
        return true;
    };
    k.to_json = [access](const Config& c) { return nlohmann::json(access(c)); };
    return k;
}

// A string of 1..max bytes (0..max when `allow_empty`) without control characters.
template <class Access>
ConfigKey string_key(const char* key, const char* flag, const char* metavar, const char* help,
                     std::size_t max, bool allow_empty, Access access) {
    ConfigKey k;
    k.key = key;
    k.flag = flag;
    k.metavar = metavar;
    k.help = help;
    k.expected =
        std::string(allow_empty ? "a string of at most " : "a non-empty string of at most ") +
        std::to_string(max) + " bytes without control characters";
    auto set = [max, allow_empty, access](Config& c, std::string_view s) {
        if ((s.empty() && !allow_empty) || s.size() > max || has_control_char(s)) return false;
        access(c) = std::string(s);
        return true;
    };
    k.from_json = [set](Config& c, const nlohmann::json& v) {
        return v.is_string() && set(c, v.get_ref<const std::string&>());
    };
    k.from_text = set;
    k.to_json = [access](const Config& c) { return nlohmann::json(access(c)); };
    return k;
}

// The table of every key, in the file's order (also the order of --help).
inline const std::vector<ConfigKey>& config_keys() {
    static const std::vector<ConfigKey> keys = [] {
        std::vector<ConfigKey> v;
        v.push_back(string_key(
            "name", "--name", "NAME", "name of this node in tables", 255, false,
            [](auto& c) -> auto& { return c.name; }));
        v.push_back(string_key(
            "iptable", "--table", "PATH", "path of the IP table file", 4096, false,
            [](auto& c) -> auto& { return c.iptable; }));
        {
            ConfigKey k;
            k.key = "table_format";
            k.flag = "--table-format";
            k.metavar = "seed|p2prc";
            k.help = "format the table file is written in";
            k.expected = "\"seed\" or \"p2prc\"";
            k.from_text = [](Config& c, std::string_view s) {
                if (s == "seed")
                    c.table_format = TableFormat::seed;
                else if (s == "p2prc")
                    c.table_format = TableFormat::p2prc;
                else
                    return false;
                return true;
            };
            k.from_json = [f = k.from_text](Config& c, const nlohmann::json& j) {
                return j.is_string() && f(c, j.get_ref<const std::string&>());
            };
            k.to_json = [](const Config& c) { return nlohmann::json(to_string(c.table_format)); };
            v.push_back(std::move(k));
        }
        v.push_back(string_key(
            "identity_key", "--identity-key", "PATH",
            "the node's Ed25519 key file (made at first start, mode 0600; \"\": beside the table)",
            4096, true, [](auto& c) -> auto& { return c.identity_key; }));
        v.push_back(bool_key(
            "table_pretty", "--table-pretty",
            "write the table file indented (default: compact, one entry a line)",
            [](auto& c) -> auto& { return c.table_pretty; }));
        {
            ConfigKey k;
            k.key = "bind";
            k.flag = "--bind";
            k.metavar = "ADDR";
            k.help =
                "numeric address the server listens on; 0.0.0.0 is every IPv4 "
                "interface, :: every interface";
            k.expected = "a numeric IPv4 or IPv6 address";
            k.from_text = [](Config& c, std::string_view s) {
                auto a = IpAddress::parse(s);
                if (!a) return false;
                c.bind = a->to_string();
                return true;
            };
            k.from_json = [f = k.from_text](Config& c, const nlohmann::json& j) {
                return j.is_string() && f(c, j.get_ref<const std::string&>());
            };
            k.to_json = [](const Config& c) { return nlohmann::json(c.bind); };
            v.push_back(std::move(k));
        }
        v.push_back(integer_key(
            "port", "--port", "N", "server port (0: any free port)", 0, 65535,
            [](auto& c) -> auto& { return c.port; }));
        {
            ConfigKey k;
            k.key = "public_addresses";
            k.flag = "--public-address";
            k.metavar = "ADDR[:PORT]";
            k.help = "address advertised as this node's own (repeatable)";
            k.expected = "a list of at most " + std::to_string(Config::max_public_addresses) +
                         " addresses as \"ADDR\" or \"ADDR:PORT\" ([ADDR]:PORT for IPv6)";
            k.repeatable = true;
            k.from_text = [](Config& c, std::string_view s) {
                auto a = AdvertisedAddress::parse(s);
                if (!a || c.public_addresses.size() >= Config::max_public_addresses) return false;
                c.public_addresses.push_back(*a);
                return true;
            };
            k.from_json = [](Config& c, const nlohmann::json& j) {
                if (!j.is_array() || j.size() > Config::max_public_addresses) return false;
                std::vector<AdvertisedAddress> list;
                for (const auto& e : j) {
                    if (!e.is_string()) return false;
                    auto a = AdvertisedAddress::parse(e.get_ref<const std::string&>());
                    if (!a) return false;
                    list.push_back(*a);
                }
                c.public_addresses = std::move(list);
                return true;
            };
            k.to_json = [](const Config& c) {
                auto arr = nlohmann::json::array();
                for (const auto& a : c.public_addresses) arr.push_back(a.to_string());
                return arr;
            };
            v.push_back(std::move(k));
        }
        {
            ConfigKey k;
            k.key = "behind_nat";
            k.flag = "--behind-nat";
            k.metavar = "true|false|auto";
            k.help = "whether the node is behind a NAT; auto: learn it from peers";
            k.expected = "true, false or \"auto\"";
            k.from_text = [](Config& c, std::string_view s) {
                if (ascii_lower(s) == "auto") {
                    c.behind_nat = BehindNat::automatic;
                    return true;
                }
                auto b = s.empty() ? std::nullopt : text_bool(s);
                if (!b) return false;
                c.behind_nat = *b ? BehindNat::yes : BehindNat::no;
                return true;
            };
            k.from_json = [](Config& c, const nlohmann::json& j) {
                if (j.is_boolean()) {
                    c.behind_nat = j.get<bool>() ? BehindNat::yes : BehindNat::no;
                    return true;
                }
                if (j.is_string() && j.get_ref<const std::string&>() == "auto") {
                    c.behind_nat = BehindNat::automatic;
                    return true;
                }
                return false;
            };
            k.to_json = [](const Config& c) {
                if (c.behind_nat == BehindNat::automatic) return nlohmann::json("auto");
                return nlohmann::json(c.behind_nat == BehindNat::yes);
            };
            v.push_back(std::move(k));
        }
        v.push_back(integer_key(
            "relay.cap", "--relay-cap", "N", "live relays served at most (0: serve none)", 0, 65535,
            [](auto& c) -> auto& { return c.relay.cap; }));
        v.push_back(integer_key(
            "relay.idle_timeout_s", "--relay-idle-timeout", "SECONDS",
            "a relay with no public port and no traffic this long is reclaimed", 1, 86400,
            [](auto& c) -> auto& { return c.relay.idle_timeout_s; }));
        v.push_back(integer_key(
            "relay.login_timeout_s", "--relay-login-timeout", "SECONDS",
            "an allocated relay port nobody logs into is reclaimed", 1, 3600,
            [](auto& c) -> auto& { return c.relay.login_timeout_s; }));
        v.push_back(integer_key(
            "relay.per_address", "--relay-per-address", "N",
            "live relays one requester may hold (an IPv4 address, an IPv6 /64)", 1, 65535,
            [](auto& c) -> auto& { return c.relay.per_address; }));
        {
            ConfigKey k;
            k.key = "relay.allow_ports";
            k.flag = "--relay-allow-ports";
            k.metavar = "RANGES";
            k.help = "public ports a relay client may open, e.g. 1024-65535 or 2000-3000,4000";
            k.expected = "port ranges such as \"1024-65535\" or \"2000-3000,4000\" (ports 1-65535)";
            k.from_text = [](Config& c, std::string_view s) {
                if (s.size() > 4096 || has_control_char(s)) return false;
                try {
                    (void)parse_port_ranges(s);
                } catch (const error&) {
                    return false;
                }
                c.relay.allow_ports = std::string(s);
                return true;
            };
            k.from_json = [f = k.from_text](Config& c, const nlohmann::json& j) {
                return j.is_string() && f(c, j.get_ref<const std::string&>());
            };
            k.to_json = [](const Config& c) { return nlohmann::json(c.relay.allow_ports); };
            v.push_back(std::move(k));
        }
        v.push_back(string_key(
            "token", "--token", "SECRET",
            "network secret required by /FRPPort and frp login (empty: none)", 1024, true,
            [](auto& c) -> auto& { return c.token; }));
        v.push_back(bool_key(
            "allow_link_local", "--allow-link-local",
            "accept link-local addresses learned from peers",
            [](auto& c) -> auto& { return c.allow_link_local; }));
        v.push_back(integer_key(
            "limits.max_body_bytes", "--max-body-bytes", "BYTES",
            "largest POST /IpTable body accepted", 1024, 1ull << 30,
            [](auto& c) -> auto& { return c.limits.max_body_bytes; }));
        v.push_back(integer_key(
            "limits.max_upload_bytes", "--max-upload-bytes", "BYTES",
            "largest speed-test upload accepted", 1024, 1ull << 32,
            [](auto& c) -> auto& { return c.limits.max_upload_bytes; }));
        v.push_back(integer_key(
            "limits.max_entries", "--max-entries", "N",
            "most entries accepted in a table from a peer", 1, 1000000,
            [](auto& c) -> auto& { return c.limits.max_entries; }));
        v.push_back(integer_key(
            "limits.request_timeout_ms", "--request-timeout-ms", "MS",
            "timeout of one HTTP exchange", 1, 600000,
            [](auto& c) -> auto& { return c.limits.request_timeout_ms; }));
        v.push_back(integer_key(
            "limits.probe_timeout_ms", "--probe-timeout-ms", "MS", "timeout of one latency probe",
            1, 600000, [](auto& c) -> auto& { return c.limits.probe_timeout_ms; }));
        v.push_back(integer_key(
            "limits.probe_concurrency", "--probe-concurrency", "N", "probes in flight at once", 1,
            1024, [](auto& c) -> auto& { return c.limits.probe_concurrency; }));
        v.push_back(integer_key(
            "limits.liveness_budget_ms", "--liveness-budget-ms", "MS",
            "time POST /IpTable spends checking new entries", 1, 600000,
            [](auto& c) -> auto& { return c.limits.liveness_budget_ms; }));
        v.push_back(integer_key(
            "limits.discovery_hops", "--discovery-hops", "N",
            "hops discover goes beyond the servers it was given", 0, 16,
            [](auto& c) -> auto& { return c.limits.discovery_hops; }));
        v.push_back(integer_key(
            "limits.discovery_budget_s", "--discovery-budget", "SECONDS",
            "time budget of a whole discover run", 1, 3600,
            [](auto& c) -> auto& { return c.limits.discovery_budget_s; }));
        v.push_back(integer_key(
            "limits.discovery_concurrency", "--discovery-concurrency", "N",
            "peers contacted at once while discovering", 1, 256,
            [](auto& c) -> auto& { return c.limits.discovery_concurrency; }));
        v.push_back(integer_key(
            "limits.server_threads", "--server-threads", "N", "HTTP worker threads of the server",
            1, 256, [](auto& c) -> auto& { return c.limits.server_threads; }));
        v.push_back(integer_key(
            "limits.server_queue", "--server-queue", "N",
            "connections the HTTP server keeps open beyond its workers (more are closed)", 1, 65536,
            [](auto& c) -> auto& { return c.limits.server_queue; }));
        v.push_back(integer_key(
            "limits.request_deadline_ms", "--request-deadline-ms", "MS",
            "whole-request deadline of the HTTP server (uploads: must keep moving instead)", 100,
            600000, [](auto& c) -> auto& { return c.limits.request_deadline_ms; }));
        v.push_back(integer_key(
            "limits.header_deadline_ms", "--header-deadline-ms", "MS",
            "request line and headers must be in this long after a connection opens", 100, 600000,
            [](auto& c) -> auto& { return c.limits.header_deadline_ms; }));
        v.push_back(integer_key(
            "limits.connections_per_address", "--connections-per-address", "N",
            "HTTP connections one IPv4 address or IPv6 /64 may hold open", 1, 65536,
            [](auto& c) -> auto& { return c.limits.connections_per_address; }));
        v.push_back(integer_key(
            "limits.table_answer_entries", "--table-answer-entries", "N",
            "most entries a POST /IpTable answer carries (the freshest)", 1, 1000000,
            [](auto& c) -> auto& { return c.limits.table_answer_entries; }));
        return v;
    }();
    return keys;
}

inline const ConfigKey* find_config_key_by_flag(std::string_view flag) {
    if (flag.substr(0, 2) == "--") flag.remove_prefix(2);
    for (const auto& k : config_keys())
        if (std::string_view(k.flag).substr(2) == flag) return &k;
    return nullptr;
}

// Applies one JSON object level ("" for the top, "relay.", "limits."), collecting
// unknown keys as warnings.
inline void apply_config_object(Config& c, const nlohmann::json& obj, const std::string& prefix,
                                const std::string& origin) {
    for (auto it = obj.begin(); it != obj.end(); ++it) {
        const std::string key = prefix + it.key();
        if (prefix.empty() && (it.key() == "relay" || it.key() == "limits")) {
            if (!it.value().is_object())
                throw error(errc::invalid_argument, origin + ": key \"" + key +
                                                        "\": expected an object, found " +
                                                        describe_json(it.value()));
            apply_config_object(c, it.value(), key + ".", origin);
            continue;
        }
        const ConfigKey* k = nullptr;
        for (const auto& candidate : config_keys())
            if (candidate.key == key) k = &candidate;
        if (!k) {
            // Bounded: a file full of junk keys does not make a list without end.
            if (c.warnings.size() < 32)
                c.warnings.push_back(origin + ": unknown key " + quote_for_error(key) + " ignored");
            continue;
        }
        if (!k->from_json(c, it.value()))
            throw error(errc::invalid_argument, origin + ": key \"" + key + "\": expected " +
                                                    k->expected + ", found " +
                                                    describe_json(it.value()));
    }
}

}  // namespace detail

inline Config Config::parse(std::string_view text, const std::string& origin) {
    if (text.size() > max_file_bytes)
        throw error(errc::limit_exceeded, origin + ": " + std::to_string(text.size()) +
                                              " bytes, larger than the limit of " +
                                              std::to_string(max_file_bytes));
    const nlohmann::json doc = detail::parse_json_bounded(text, 16, origin);
    if (!doc.is_object())
        throw error(errc::parse_error,
                    origin + ": expected a JSON object of configuration keys, found " +
                        detail::json_type_name(doc));
    Config c;
    c.source = origin;
    detail::apply_config_object(c, doc, "", origin);
    return c;
}

inline Config Config::load(const std::string& path) {
    auto text = detail::read_file(path, max_file_bytes);
    if (!text) throw error(errc::io_error, "config file " + path + ": not found");
    return parse(*text, path);
}

inline Config Config::from_sources(const std::optional<std::string>& cli_config_path,
                                   const EnvLookup& env) {
    if (cli_config_path) {
        if (cli_config_path->empty())
            throw error(errc::invalid_argument, "--config: expected a file path, found \"\"");
        return load(*cli_config_path);
    }
    if (env) {
        auto from_env = env(env_var);
        if (from_env && !from_env->empty()) return load(*from_env);
    }
    return Config();
}

inline nlohmann::json Config::to_json(bool redacted) const {
    nlohmann::json j = nlohmann::json::object();
    for (const auto& k : detail::config_keys()) {
        auto v = k.to_json(*this);
        if (redacted && k.key == "token" && !token.empty()) v = "<redacted>";
        auto dot = k.key.find('.');
        if (dot == std::string::npos)
            j[k.key] = std::move(v);
        else
            j[k.key.substr(0, dot)][k.key.substr(dot + 1)] = std::move(v);
    }
    return j;
}

inline void Config::apply_flag(std::string_view flag, std::string_view value) {
    const auto* k = detail::find_config_key_by_flag(flag);
    if (!k)
        throw error(errc::invalid_argument,
                    "unknown option " + detail::quote_for_error(flag) + ": see --help");
    // An empty value is true for a boolean flag, and "no token" for --token; every other
    // key refuses it in its own reader.
    if (!k->from_text(*this, value)) {
        std::string what = k->flag + " " + detail::quote_for_error(value) + ": expected ";
        if (k->repeatable) {
            what += "\"ADDR\" or \"ADDR:PORT\" ([ADDR]:PORT for IPv6), at most " +
                    std::to_string(max_public_addresses) + " times";
        } else {
            what += k->expected;
        }
        throw error(errc::invalid_argument, what);
    }
}

inline void Config::apply_flags(const std::vector<std::pair<std::string, std::string>>& flags) {
    std::vector<const detail::ConfigKey*> cleared;
    for (const auto& [flag, value] : flags) {
        const auto* k = detail::find_config_key_by_flag(flag);
        if (k && k->repeatable && std::find(cleared.begin(), cleared.end(), k) == cleared.end()) {
            // The command line overrides the file: its list replaces the file's.
            k->from_json(*this, nlohmann::json::array());
            cleared.push_back(k);
        }
        apply_flag(flag, value);
    }
}

inline const std::vector<ConfigFlag>& Config::flags() {
    static const std::vector<ConfigFlag> list = [] {
        std::vector<ConfigFlag> out;
        Config defaults;
        for (const auto& k : detail::config_keys()) {
            ConfigFlag f;
            f.flag = k.flag;
            f.metavar = k.metavar;
            f.key = k.key;
            f.help = k.help;
            f.repeatable = k.repeatable;
            auto v = k.to_json(defaults);
            if (v.is_string())
                f.default_value = v.get<std::string>();
            else if (v.is_array())
                f.default_value = v.empty() ? "" : v.dump();
            else
                f.default_value = v.dump();
            out.push_back(std::move(f));
        }
        return out;
    }();
    return list;
}

inline const ConfigFlag* Config::find_flag(std::string_view flag) {
    const auto* k = detail::find_config_key_by_flag(flag);
    if (!k) return nullptr;
    for (const auto& f : flags())
        if (f.key == k->key) return &f;
    return nullptr;
}

}  // namespace p2prc
