// frp messages and their framing, as frp v0.45.0 puts them on the wire.
//
// A message is one frame:
//
//     +------+----------------------------+----------------------+
//     | type | length (int64, big-endian) | body (length bytes)  |
//     | 1 B  | 8 B                        | JSON object, UTF-8   |
//     +------+----------------------------+----------------------+
//
// The type is an ASCII letter or digit naming the message ('o' Login, '1' LoginResp, ...;
// 18 in all, see the structs below). A reader rejects any other type byte, a length above
// 10240 or below zero before reading the body, and a body that is not valid JSON for the
// struct of that type. There is no separator between frames. Example, a Ping with body
// "{}":  68 00 00 00 00 00 00 00 02 7b 7d.
//
// The body is what Go's encoding/json writes for frp's message structs: compact, keys in
// struct field order, every field `omitempty` (zero values left out, so an all-zero
// message is "{}"), map keys sorted, and < > & U+2028 U+2029 escaped as \u003c etc. We
// write exactly those bytes, so a capture of our traffic matches a capture of Go frp's.
// Reading follows Go too: unknown keys are ignored, keys match case-insensitively (exact
// match preferred), null leaves a field at its zero value, and an integer field refuses
// fractions and out-of-range numbers.
#pragma once

#include "../error.hpp"
#include "../net.hpp"

#include <nlohmann/json.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace p2prc::frp {

// The frp version we speak and announce (the wire format of frp 0.45.0). Both roles use it,
// so it lives with the messages, not with either role.
inline constexpr const char* kProtocolVersion = "0.45.0";

// Largest body a reader accepts (golib's msg.MaxMsgLength). Exactly 10240 is allowed.
inline constexpr std::int64_t kMaxBodyLength = 10240;
// Type byte + 8 length bytes.
inline constexpr std::size_t kFrameHeaderSize = 9;

// ---------------------------------------------------------------------------------------
// Messages. Each struct lists its JSON keys in wire order (`keys`) and its members in the
// same order (`tie`). Integer fields hold Go `int`/`int64` as int64 and Go `uint16` as
// uint16; all are omitted from the JSON when zero.

// Go's net.UDPAddr as JSON: {"IP":"203.0.113.7","Port":5353,"Zone":""} -- its fields have
// no omitempty, so all three keys are always written.
struct UdpAddr {
    std::string ip;
    std::int64_t port = 0;
    std::string zone;
    static constexpr std::array<const char*, 3> keys{"IP", "Port", "Zone"};
    template <class S>
    static auto tie(S& s) {
        return std::tie(s.ip, s.port, s.zone);
    }
};

// C->S, the first message of a control connection (sent in clear). privilege_key is
// hex(MD5(token + decimal timestamp)); pool_count asks for that many idle work conns.
struct Login {
    static constexpr char type = 'o';
    static constexpr const char* name = "Login";
    std::string version, hostname, os, arch, user, privilege_key;
    std::int64_t timestamp = 0;
    std::string run_id;
    std::map<std::string, std::string> metas;
    std::int64_t pool_count = 0;
    static constexpr std::array<const char*, 10> keys{
        "version",       "hostname",  "os",     "arch",  "user",
        "privilege_key", "timestamp", "run_id", "metas", "pool_count"};
    template <class S>
    static auto tie(S& s) {
        return std::tie(s.version, s.hostname, s.os, s.arch, s.user, s.privilege_key, s.timestamp,
                        s.run_id, s.metas, s.pool_count);
    }
};

// S->C answer to Login (in clear). Success carries run_id; failure carries error.
struct LoginResp {
    static constexpr char type = '1';
    static constexpr const char* name = "LoginResp";
    std::string version, run_id;
    std::int64_t server_udp_port = 0;
    std::string error;
    static constexpr std::array<const char*, 4> keys{"version", "run_id", "server_udp_port",
                                                     "error"};
    template <class S>
    static auto tie(S& s) {
        return std::tie(s.version, s.run_id, s.server_udp_port, s.error);
    }
};

// C->S: register a proxy. A tcp proxy uses name, type and remote_port (0 = server picks).
struct NewProxy {
    static constexpr char type = 'p';
    static constexpr const char* name = "NewProxy";
    std::string proxy_name, proxy_type;
    bool use_encryption = false, use_compression = false;
    std::string group, group_key;
    std::map<std::string, std::string> metas;
    std::int64_t remote_port = 0;
    std::vector<std::string> custom_domains;
    std::string subdomain;
    std::vector<std::string> locations;
    std::string http_user, http_pwd, host_header_rewrite;
    std::map<std::string, std::string> headers;
    std::string route_by_http_user, sk, multiplexer;
    static constexpr std::array<const char*, 18> keys{
        "proxy_name",         "proxy_type", "use_encryption", "use_compression",     "group",
        "group_key",          "metas",      "remote_port",    "custom_domains",      "subdomain",
        "locations",          "http_user",  "http_pwd",       "host_header_rewrite", "headers",
        "route_by_http_user", "sk",         "multiplexer"};
    template <class S>
    static auto tie(S& s) {
        return std::tie(s.proxy_name, s.proxy_type, s.use_encryption, s.use_compression, s.group,
                        s.group_key, s.metas, s.remote_port, s.custom_domains, s.subdomain,
                        s.locations, s.http_user, s.http_pwd, s.host_header_rewrite, s.headers,
                        s.route_by_http_user, s.sk, s.multiplexer);
    }
};

// How logs and errors name a proxy: `proxy [web]`, and `unnamed proxy []` for the empty
// name (valid in frp; P2PRC's Go nodes register their one proxy without a name).
inline std::string proxy_label(std::string_view name) {
    if (name.empty()) return "unnamed proxy []";
    return "proxy [" + std::string(name) + "]";
}

// S->C: remote_addr is ":<port>" on success, else error says why.
struct NewProxyResp {
    static constexpr char type = '2';
    static constexpr const char* name = "NewProxyResp";
    std::string proxy_name, remote_addr, error;
    static constexpr std::array<const char*, 3> keys{"proxy_name", "remote_addr", "error"};
    template <class S>
    static auto tie(S& s) {
        return std::tie(s.proxy_name, s.remote_addr, s.error);
    }
};

// C->S: unregister a proxy. No answer.
struct CloseProxy {
    static constexpr char type = 'c';
    static constexpr const char* name = "CloseProxy";
    std::string proxy_name;
    static constexpr std::array<const char*, 1> keys{"proxy_name"};
    template <class S>
    static auto tie(S& s) {
        return std::tie(s.proxy_name);
    }
};

// C->S, first message of a work connection (in clear); frps parks it in the pool.
struct NewWorkConn {
    static constexpr char type = 'w';
    static constexpr const char* name = "NewWorkConn";
    std::string run_id, privilege_key;
    std::int64_t timestamp = 0;
    static constexpr std::array<const char*, 3> keys{"run_id", "privilege_key", "timestamp"};
    template <class S>
    static auto tie(S& s) {
        return std::tie(s.run_id, s.privilege_key, s.timestamp);
    }
};

// S->C on the control: "open one more work connection". Always {}.
struct ReqWorkConn {
    static constexpr char type = 'r';
    static constexpr const char* name = "ReqWorkConn";
    static constexpr std::array<const char*, 0> keys{};
    template <class S>
    static auto tie(S&) {
        return std::tuple<>();
    }
};

// S->C on a pooled work connection (in clear): a user arrived; after this the
// connection is a raw byte pipe. src = the user, dst = frps's side of that socket.
struct StartWorkConn {
    static constexpr char type = 's';
    static constexpr const char* name = "StartWorkConn";
    std::string proxy_name, src_addr, dst_addr;
    std::uint16_t src_port = 0, dst_port = 0;
    std::string error;
    static constexpr std::array<const char*, 6> keys{"proxy_name", "src_addr", "dst_addr",
                                                     "src_port",   "dst_port", "error"};
    template <class S>
    static auto tie(S& s) {
        return std::tie(s.proxy_name, s.src_addr, s.dst_addr, s.src_port, s.dst_port, s.error);
    }
};

// C->S, first message of an stcp/sudp visitor connection.
struct NewVisitorConn {
    static constexpr char type = 'v';
    static constexpr const char* name = "NewVisitorConn";
    std::string proxy_name, sign_key;
    std::int64_t timestamp = 0;
    bool use_encryption = false, use_compression = false;
    static constexpr std::array<const char*, 5> keys{"proxy_name", "sign_key", "timestamp",
                                                     "use_encryption", "use_compression"};
    template <class S>
    static auto tie(S& s) {
        return std::tie(s.proxy_name, s.sign_key, s.timestamp, s.use_encryption, s.use_compression);
    }
};

struct NewVisitorConnResp {
    static constexpr char type = '3';
    static constexpr const char* name = "NewVisitorConnResp";
    std::string proxy_name, error;
    static constexpr std::array<const char*, 2> keys{"proxy_name", "error"};
    template <class S>
    static auto tie(S& s) {
        return std::tie(s.proxy_name, s.error);
    }
};

// C->S heartbeat on the control (encrypted). Key and timestamp only with
// authenticate_heartbeats; otherwise {}.
struct Ping {
    static constexpr char type = 'h';
    static constexpr const char* name = "Ping";
    std::string privilege_key;
    std::int64_t timestamp = 0;
    static constexpr std::array<const char*, 2> keys{"privilege_key", "timestamp"};
    template <class S>
    static auto tie(S& s) {
        return std::tie(s.privilege_key, s.timestamp);
    }
};

// S->C heartbeat answer; a non-empty error makes frpc drop the control.
struct Pong {
    static constexpr char type = '4';
    static constexpr const char* name = "Pong";
    std::string error;
    static constexpr std::array<const char*, 1> keys{"error"};
    template <class S>
    static auto tie(S& s) {
        return std::tie(s.error);
    }
};

// One datagram inside a udp proxy's work connection: c = base64 payload (with padding),
// r = the user's address.
struct UdpPacket {
    static constexpr char type = 'u';
    static constexpr const char* name = "UDPPacket";
    std::string content;
    std::optional<UdpAddr> local_addr, remote_addr;
    static constexpr std::array<const char*, 3> keys{"c", "l", "r"};
    template <class S>
    static auto tie(S& s) {
        return std::tie(s.content, s.local_addr, s.remote_addr);
    }
};

// xtcp hole punching (carried for completeness: a reader must accept these types).
struct NatHoleVisitor {
    static constexpr char type = 'i';
    static constexpr const char* name = "NatHoleVisitor";
    std::string proxy_name, sign_key;
    std::int64_t timestamp = 0;
    static constexpr std::array<const char*, 3> keys{"proxy_name", "sign_key", "timestamp"};
    template <class S>
    static auto tie(S& s) {
        return std::tie(s.proxy_name, s.sign_key, s.timestamp);
    }
};

struct NatHoleClient {
    static constexpr char type = 'n';
    static constexpr const char* name = "NatHoleClient";
    std::string proxy_name, sid;
    static constexpr std::array<const char*, 2> keys{"proxy_name", "sid"};
    template <class S>
    static auto tie(S& s) {
        return std::tie(s.proxy_name, s.sid);
    }
};

struct NatHoleResp {
    static constexpr char type = 'm';
    static constexpr const char* name = "NatHoleResp";
    std::string sid, visitor_addr, client_addr, error;
    static constexpr std::array<const char*, 4> keys{"sid", "visitor_addr", "client_addr", "error"};
    template <class S>
    static auto tie(S& s) {
        return std::tie(s.sid, s.visitor_addr, s.client_addr, s.error);
    }
};

struct NatHoleClientDetectOK {
    static constexpr char type = 'd';
    static constexpr const char* name = "NatHoleClientDetectOK";
    static constexpr std::array<const char*, 0> keys{};
    template <class S>
    static auto tie(S&) {
        return std::tuple<>();
    }
};

struct NatHoleSid {
    static constexpr char type = '5';
    static constexpr const char* name = "NatHoleSid";
    std::string sid;
    static constexpr std::array<const char*, 1> keys{"sid"};
    template <class S>
    static auto tie(S& s) {
        return std::tie(s.sid);
    }
};

using Message =
    std::variant<Login, LoginResp, NewProxy, NewProxyResp, CloseProxy, NewWorkConn, ReqWorkConn,
                 StartWorkConn, NewVisitorConn, NewVisitorConnResp, Ping, Pong, UdpPacket,
                 NatHoleVisitor, NatHoleClient, NatHoleResp, NatHoleClientDetectOK, NatHoleSid>;

// Member-wise equality for every message struct (and UdpAddr).
template <class M, class = decltype(M::keys)>
bool operator==(const M& a, const M& b) {
    return M::tie(a) == M::tie(b);
}
template <class M, class = decltype(M::keys)>
bool operator!=(const M& a, const M& b) {
    return !(a == b);
}

// The type byte of a message.
inline char type_of(const Message& m) {
    return std::visit([](const auto& x) { return std::decay_t<decltype(x)>::type; }, m);
}
inline const char* name_of(const Message& m) {
    return std::visit([](const auto& x) { return std::decay_t<decltype(x)>::name; }, m);
}

namespace detail {

template <std::size_t I = 0>
inline int type_index(char t) {
    if constexpr (I == std::variant_size_v<Message>) {
        (void)t;
        return -1;
    } else {
        return std::variant_alternative_t<I, Message>::type == t ? int(I) : type_index<I + 1>(t);
    }
}

inline std::string hex_byte(unsigned char c) {
    static const char* digits = "0123456789abcdef";
    return std::string("0x") + digits[c >> 4] + digits[c & 15];
}

template <class Tuple, class F, std::size_t... I>
void for_each_field(Tuple&& t, F&& f, std::index_sequence<I...>) {
    (void)t;
    (void)f;
    (f(I, std::get<I>(t)), ...);
}
template <class Tuple, class F>
void for_each_field(Tuple&& t, F&& f) {
    for_each_field(t, f, std::make_index_sequence<std::tuple_size_v<std::decay_t<Tuple>>>{});
}

// ---- Go encoding/json, the writing half ------------------------------------------------

// Length of the valid UTF-8 sequence at s[i], or 0 if invalid (overlong, surrogate,
// > U+10FFFF or truncated), as Go's utf8.DecodeRuneInString decides.
inline std::size_t utf8_sequence(std::string_view s, std::size_t i, std::uint32_t& cp) {
    auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[i + k]); };
    unsigned char c = b(0);
    std::size_t n;
    std::uint32_t min;
    if (c < 0x80) {
        cp = c;
        return 1;
    } else if ((c & 0xe0) == 0xc0) {
        n = 2, cp = c & 0x1f, min = 0x80;
    } else if ((c & 0xf0) == 0xe0) {
        n = 3, cp = c & 0x0f, min = 0x800;
    } else if ((c & 0xf8) == 0xf0) {
        n = 4, cp = c & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (i + n > s.size()) return 0;
    for (std::size_t k = 1; k < n; ++k) {
        if ((b(k) & 0xc0) != 0x80) return 0;
        cp = (cp << 6) | (b(k) & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    return n;
}

inline void go_quote(std::string& out, std::string_view s) {
    static const char* hex = "0123456789abcdef";
    out += '"';
    for (std::size_t i = 0; i < s.size();) {
        auto c = static_cast<unsigned char>(s[i]);
        if (c < 0x80) {
            if (c == '"' || c == '\\') {
                out += '\\';
                out += char(c);
            } else if (c == '\n') {
                out += "\\n";
            } else if (c == '\r') {
                out += "\\r";
            } else if (c == '\t') {
                out += "\\t";
            } else if (c < 0x20 || c == '<' || c == '>' || c == '&') {
                // HTML-safe escaping is Go's default for Marshal.
                out += "\\u00";
                out += hex[c >> 4];
                out += hex[c & 15];
            } else {
                out += char(c);
            }
            ++i;
            continue;
        }
        std::uint32_t cp = 0;
        std::size_t n = utf8_sequence(s, i, cp);
        if (n == 0) {
            out += "\\ufffd";  // each invalid byte becomes one replacement character
            ++i;
        } else if (cp == 0x2028 || cp == 0x2029) {
            out += cp == 0x2028 ? "\\u2028" : "\\u2029";
            i += n;
        } else {
            out.append(s.substr(i, n));
            i += n;
        }
    }
    out += '"';
}

// Appends `"key":value` for a field unless the value is empty (omitempty).
class GoJsonWriter {
  public:
    explicit GoJsonWriter(std::string& out) : out_(out) {}

    void field(const char* key, const std::string& v) {
        if (v.empty()) return;
        key_(key);
        go_quote(out_, v);
    }
    void field(const char* key, std::int64_t v) {
        if (v == 0) return;
        key_(key);
        out_ += std::to_string(v);
    }
    void field(const char* key, std::uint16_t v) {
        if (v == 0) return;
        key_(key);
        out_ += std::to_string(v);
    }
    void field(const char* key, bool v) {
        if (!v) return;
        key_(key);
        out_ += "true";
    }
    void field(const char* key, const std::map<std::string, std::string>& v) {
        if (v.empty()) return;
        key_(key);
        // std::map orders keys bytewise, as Go sorts map keys.
        out_ += '{';
        bool first = true;
        for (const auto& [k, val] : v) {
            if (!first) out_ += ',';
            first = false;
            go_quote(out_, k);
            out_ += ':';
            go_quote(out_, val);
        }
        out_ += '}';
    }
    void field(const char* key, const std::vector<std::string>& v) {
        if (v.empty()) return;
        key_(key);
        out_ += '[';
        for (std::size_t i = 0; i < v.size(); ++i) {
            if (i) out_ += ',';
            go_quote(out_, v[i]);
        }
        out_ += ']';
    }
    void field(const char* key, const std::optional<UdpAddr>& v) {
        if (!v) return;  // a nil *net.UDPAddr
        key_(key);
        // No omitempty inside net.UDPAddr: every key is written.
        out_ += "{\"IP\":";
        go_quote(out_, v->ip);
        out_ += ",\"Port\":" + std::to_string(v->port) + ",\"Zone\":";
        go_quote(out_, v->zone);
        out_ += '}';
    }

  private:
    void key_(const char* key) {
        out_ += first_ ? "" : ",";
        first_ = false;
        go_quote(out_, key);
        out_ += ':';
    }
    std::string& out_;
    bool first_ = true;
};

// ---- Go encoding/json, the reading half ------------------------------------------------

using Json = nlohmann::json;

inline bool iequal(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i) {
        char x = a[i], y = b[i];
        if (x >= 'A' && x <= 'Z') x = char(x - 'A' + 'a');
        if (y >= 'A' && y <= 'Z') y = char(y - 'A' + 'a');
        if (x != y) return false;
    }
    return true;
}

// The value for `key`: exact match first, else a case-insensitive one, as Go matches.
inline const Json* find_key(const Json& obj, const char* key) {
    auto it = obj.find(key);
    if (it != obj.end()) return &*it;
    for (auto i = obj.begin(); i != obj.end(); ++i)
        if (iequal(i.key(), key)) return &*i;
    return nullptr;
}

[[noreturn]] inline void bad_field(const char* msg, const char* key, const char* expected) {
    throw error(errc::parse_error, std::string("frp message ") + msg + ": field \"" + key +
                                       "\": expected " + expected);
}

inline void read_value(const Json& j, std::string& v, const char* msg, const char* key) {
    if (!j.is_string()) bad_field(msg, key, "a string");
    v = j.get<std::string>();
}
inline void read_value(const Json& j, bool& v, const char* msg, const char* key) {
    if (!j.is_boolean()) bad_field(msg, key, "true or false");
    v = j.get<bool>();
}
inline void read_value(const Json& j, std::int64_t& v, const char* msg, const char* key) {
    if (j.is_number_integer() && !j.is_number_unsigned()) {
        v = j.get<std::int64_t>();
    } else if (j.is_number_unsigned()) {
        auto u = j.get<std::uint64_t>();
        if (u > std::uint64_t(std::numeric_limits<std::int64_t>::max()))
            bad_field(msg, key, "an integer within int64");
        v = std::int64_t(u);
    } else {
        bad_field(msg, key, "an integer");
    }
}
inline void read_value(const Json& j, std::uint16_t& v, const char* msg, const char* key) {
    std::int64_t x = 0;
    read_value(j, x, msg, key);
    if (x < 0 || x > 65535) bad_field(msg, key, "an integer 0-65535");
    v = std::uint16_t(x);
}
inline void read_value(const Json& j, std::map<std::string, std::string>& v, const char* msg,
                       const char* key) {
    if (!j.is_object()) bad_field(msg, key, "an object of strings");
    v.clear();
    for (auto it = j.begin(); it != j.end(); ++it) {
        if (it->is_null()) {
            v[it.key()];
        } else if (it->is_string()) {
            v[it.key()] = it->get<std::string>();
        } else {
            bad_field(msg, key, "an object of strings");
        }
    }
}
inline void read_value(const Json& j, std::vector<std::string>& v, const char* msg,
                       const char* key) {
    if (!j.is_array()) bad_field(msg, key, "an array of strings");
    v.clear();
    for (const auto& e : j) {
        if (e.is_null()) {
            v.emplace_back();
        } else if (e.is_string()) {
            v.push_back(e.get<std::string>());
        } else {
            bad_field(msg, key, "an array of strings");
        }
    }
}
inline void read_value(const Json& j, std::optional<UdpAddr>& v, const char* msg, const char* key) {
    if (!j.is_object()) bad_field(msg, key, "an address object {\"IP\",\"Port\",\"Zone\"}");
    UdpAddr a;
    for_each_field(UdpAddr::tie(a), [&](std::size_t i, auto& member) {
        if (const Json* f = find_key(j, UdpAddr::keys[i]); f && !f->is_null())
            read_value(*f, member, msg, UdpAddr::keys[i]);
    });
    if (!a.ip.empty() && !IpAddress::parse(a.ip)) bad_field(msg, "IP", "a numeric IP address");
    v = std::move(a);
}

template <class M>
M decode_body_as(std::string_view body) {
    Json j = Json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded())
        throw error(errc::parse_error,
                    std::string("frp message ") + M::name + ": body is not valid JSON");
    M m{};
    if (j.is_null()) return m;  // Go decodes null into a struct as "no change"
    if (!j.is_object())
        throw error(errc::parse_error,
                    std::string("frp message ") + M::name + ": body is not a JSON object");
    for_each_field(M::tie(m), [&](std::size_t i, auto& member) {
        if (const Json* f = find_key(j, M::keys[i]); f && !f->is_null())
            read_value(*f, member, M::name, M::keys[i]);
    });
    return m;
}

template <std::size_t I = 0>
Message decode_by_index(std::size_t index, std::string_view body) {
    if constexpr (I + 1 == std::variant_size_v<Message>) {
        (void)index;
        return decode_body_as<std::variant_alternative_t<I, Message>>(body);
    } else {
        if (index == I) return decode_body_as<std::variant_alternative_t<I, Message>>(body);
        return decode_by_index<I + 1>(index, body);
    }
}

}  // namespace detail

// True for the 18 type bytes frp registers.
inline bool is_known_type(char t) {
    return detail::type_index(t) >= 0;
}

// The JSON body Go would write for `m`.
inline std::string encode_body(const Message& m) {
    std::string out = "{";
    std::visit(
        [&](const auto& x) {
            using M = std::decay_t<decltype(x)>;
            detail::GoJsonWriter w(out);
            detail::for_each_field(M::tie(x),
                                   [&](std::size_t i, const auto& v) { w.field(M::keys[i], v); });
        },
        m);
    out += '}';
    return out;
}

// Decodes a body for a type byte. Throws errc::protocol_error for an unknown type and
// errc::parse_error for a body that does not decode.
inline Message decode_body(char type, std::string_view body) {
    int index = detail::type_index(type);
    if (index < 0)
        throw error(errc::protocol_error, "frp message: unknown type byte " +
                                              detail::hex_byte(static_cast<unsigned char>(type)) +
                                              " (expected one of o1p2cwrsv3h4uinmd5)");
    return detail::decode_by_index(std::size_t(index), body);
}

// The whole frame: type byte, int64 big-endian length, body. Throws errc::limit_exceeded
// if the body would exceed kMaxBodyLength (a Go reader would drop the connection).
inline std::string encode_frame(const Message& m) {
    std::string body = encode_body(m);
    if (std::int64_t(body.size()) > kMaxBodyLength)
        throw error(errc::limit_exceeded, std::string("frp message ") + name_of(m) + ": body of " +
                                              std::to_string(body.size()) +
                                              " bytes exceeds the limit of 10240");
    std::string out;
    out.reserve(kFrameHeaderSize + body.size());
    out += type_of(m);
    std::uint64_t len = body.size();
    for (int shift = 56; shift >= 0; shift -= 8) out += char((len >> shift) & 0xff);
    out += body;
    return out;
}

// Validates the 9-byte frame header and returns the body length. The checks happen
// before any body byte is read, so a hostile length never makes us buffer anything.
inline std::size_t check_frame_header(const unsigned char* h) {
    if (!is_known_type(char(h[0])))
        throw error(errc::protocol_error, "frp frame: unknown type byte " + detail::hex_byte(h[0]) +
                                              " (expected one of o1p2cwrsv3h4uinmd5)");
    std::uint64_t u = 0;
    for (int i = 1; i <= 8; ++i) u = (u << 8) | h[i];
    auto len = static_cast<std::int64_t>(u);
    if (len < 0)
        throw error(errc::protocol_error, "frp frame: negative body length " + std::to_string(len));
    if (len > kMaxBodyLength)
        throw error(errc::limit_exceeded, "frp frame: body length " + std::to_string(len) +
                                              " exceeds the limit of 10240");
    return static_cast<std::size_t>(len);
}

// Incremental decoder: feed() any slices of the byte stream, take() whole messages.
// It holds at most one partial frame (<= 9 + 10240 bytes) and checks the type byte as
// soon as it arrives and the length as soon as its 8 bytes arrive. After an error it
// stays failed (the stream cannot be resynchronised) and every feed() throws again.
class FrameDecoder {
  public:
    void feed(const void* data, std::size_t n) {
        if (failed_) throw error(errc::state_error, "frp frame decoder: failed earlier: " + why_);
        const auto* p = static_cast<const unsigned char*>(data);
        try {
            while (n > 0) {
                if (header_.size() < kFrameHeaderSize) {
                    std::size_t k = std::min(n, kFrameHeaderSize - header_.size());
                    header_.append(reinterpret_cast<const char*>(p), k);
                    p += k, n -= k;
                    auto* h = reinterpret_cast<const unsigned char*>(header_.data());
                    if (header_.size() >= 1 && !is_known_type(char(h[0])))
                        check_frame_header(h);  // throws the unknown-type error
                    if (header_.size() == kFrameHeaderSize) {
                        want_ = check_frame_header(h);
                        body_.clear();
                        body_.reserve(want_);
                    } else {
                        continue;
                    }
                }
                std::size_t k = std::min(n, want_ - body_.size());
                body_.append(reinterpret_cast<const char*>(p), k);
                p += k, n -= k;
                if (body_.size() == want_) {
                    ready_.push_back(decode_body(header_[0], body_));
                    header_.clear();
                    body_.clear();
                }
            }
        } catch (const error& e) {
            failed_ = true;
            why_ = e.what();
            throw;
        }
    }

    // The next complete message, if any.
    std::optional<Message> take() {
        if (ready_.empty()) return std::nullopt;
        Message m = std::move(ready_.front());
        ready_.pop_front();
        return m;
    }

    // Bytes of an unfinished frame held (0 between frames).
    std::size_t pending() const noexcept { return header_.size() + body_.size(); }

  private:
    std::string header_, body_;
    std::size_t want_ = 0;
    std::deque<Message> ready_;
    bool failed_ = false;
    std::string why_;
};

// Reads exactly one frame from `s` (never a byte past it: what follows may be a cipher
// IV for another reader). One deadline covers the whole frame.
inline Message read_msg(p2prc::detail::Stream& s, p2prc::detail::Millis timeout) {
    using namespace std::chrono;
    auto deadline = p2prc::detail::deadline_after(timeout);
    auto left = [&] {
        auto l = duration_cast<p2prc::detail::Millis>(deadline - p2prc::detail::Clock::now());
        return l.count() > 0 ? l : p2prc::detail::Millis(0);
    };
    unsigned char h[kFrameHeaderSize];
    s.read_exact(h, 1, left());
    if (!is_known_type(char(h[0]))) check_frame_header(h);
    s.read_exact(h + 1, kFrameHeaderSize - 1, left());
    std::size_t len = check_frame_header(h);
    std::string body(len, '\0');
    if (len) s.read_exact(body.data(), len, left());
    return decode_body(char(h[0]), body);
}

inline void write_msg(p2prc::detail::Stream& s, const Message& m, p2prc::detail::Millis timeout) {
    std::string f = encode_frame(m);
    s.write_all(f.data(), f.size(), timeout);
}

}  // namespace p2prc::frp
