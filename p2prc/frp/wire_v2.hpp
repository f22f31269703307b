// frp's wire protocol v2 (frp 0.69+): the preface, the frames, ClientHello/ServerHello and
// the key schedule of the control connection. The message bodies are the v1 JSON bodies
// (frp/wire.hpp); only their framing differs. docs: frp-wire-v2.md.
//
// Every logical connection a v2 client opens (control, work; per yamux stream with
// tcp_mux, inside TLS with TLS) starts with the 7-byte preface "FRP" 00 02 "\r\n". No v1
// message starts with 'F' and none is shorter than 9 bytes, so a server reads 7 bytes and
// replays them to the v1 reader when they are not the preface.
//
// A frame (all integers big-endian):
//
//     +-------------+--------------+----------------+---------------------------+
//     | type uint16 | flags uint16 | length uint32  | payload (length bytes)    |
//     | 1 CH, 2 SH, |  must be 0   |  <= 65536      | hello JSON, or for type   |
//     | 16 message  |              |                | 16: uint16 message ID+JSON|
//     +-------------+--------------+----------------+---------------------------+
//
// e.g. ReqWorkConn: 00 10 00 00 00 00 00 04 00 07 7b 7d.
//
// The control connection: C->S preface, ClientHello, Login; S->C ServerHello, LoginResp
// (all in clear). Then each direction is an AEAD stream (frp/aead.hpp) keyed by
//     HKDF-SHA256(ikm = token, salt = transcript, info = "frp wire v2 control aead <alg> <dir>")
// where the transcript hashes the exact hello payloads. Work connections stay in clear.
#pragma once

#include "../error.hpp"
#include "../net.hpp"
#include "aead.hpp"
#include "wire.hpp"

#include <nlohmann/json.hpp>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>

#include <array>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace p2prc::frp {

enum class WireProtocol { v1, v2 };

inline const char* to_string(WireProtocol w) noexcept {
    return w == WireProtocol::v2 ? "v2" : "v1";
}
// "v1" or "v2" (frp's transport.wireProtocol values; empty means v1, as in frp).
inline WireProtocol parse_wire_protocol(std::string_view s) {
    if (s.empty() || s == "v1") return WireProtocol::v1;
    if (s == "v2") return WireProtocol::v2;
    throw error(errc::invalid_argument,
                "wire protocol \"" + std::string(s) + "\": expected \"v1\" or \"v2\"");
}

inline constexpr char kV2Preface[7] = {'F', 'R', 'P', 0x00, 0x02, '\r', '\n'};
inline constexpr std::size_t kV2PrefaceSize = 7;
inline constexpr std::size_t kV2FrameHeaderSize = 8;
// Largest frame payload (frp's DefaultMaxFramePayloadSize); exactly 65536 is allowed.
inline constexpr std::size_t kV2MaxPayload = 64 * 1024;
inline constexpr std::uint16_t kV2ClientHello = 1;
inline constexpr std::uint16_t kV2ServerHello = 2;
inline constexpr std::uint16_t kV2Message = 16;
inline constexpr std::size_t kV2RandomSize = 32;

inline std::string_view v2_preface() {
    return std::string_view(kV2Preface, kV2PrefaceSize);
}

// A frame as read: its type and payload (the flags are always 0).
struct V2Frame {
    std::uint16_t type = 0;
    std::string payload;
};

namespace detail {

// v2 message IDs 1..18 in order, as v1 type bytes. NatHoleReport (18, '6') has no struct
// here: it is only sent for xtcp, which this relay does not serve.
inline constexpr char kV2MessageTypes[18] = {'o', '1', 'p', '2', 'c', 'w', 'r', 's', 'v',
                                             '3', 'h', '4', 'u', 'i', 'n', 'm', '5', '6'};

inline std::uint16_t v2_id_of(char type) {
    for (std::uint16_t i = 0; i < 18; ++i)
        if (kV2MessageTypes[i] == type) return std::uint16_t(i + 1);
    return 0;
}

inline std::string v2_frame_header(std::uint16_t type, std::size_t len) {
    std::string h(kV2FrameHeaderSize, '\0');
    h[0] = char(type >> 8), h[1] = char(type & 0xff);
    for (int i = 0; i < 4; ++i) h[std::size_t(4 + i)] = char((len >> (24 - 8 * i)) & 0xff);
    return h;
}

// ---- base64 (standard alphabet, padded: Go's encoding of []byte in JSON) -------------

inline std::string base64_encode(std::string_view in) {
    static const char* a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    std::size_t i = 0;
    auto b = [&](std::size_t k) { return static_cast<unsigned char>(in[k]); };
    for (; i + 3 <= in.size(); i += 3) {
        std::uint32_t v = std::uint32_t(b(i)) << 16 | std::uint32_t(b(i + 1)) << 8 | b(i + 2);
        out += a[v >> 18], out += a[(v >> 12) & 63], out += a[(v >> 6) & 63], out += a[v & 63];
    }
    if (in.size() - i == 1) {
        std::uint32_t v = std::uint32_t(b(i)) << 16;
        out += a[v >> 18], out += a[(v >> 12) & 63], out += "==";
    } else if (in.size() - i == 2) {
        std::uint32_t v = std::uint32_t(b(i)) << 16 | std::uint32_t(b(i + 1)) << 8;
        out += a[v >> 18], out += a[(v >> 12) & 63], out += a[(v >> 6) & 63], out += '=';
    }
    return out;
}

// nullopt for anything but padded base64 (as Go's StdEncoding: \r and \n skipped,
// stray bits after the last byte ignored).
inline std::optional<std::string> base64_decode(std::string_view in) {
    std::string s;
    for (char c : in)
        if (c != '\r' && c != '\n') s += c;
    if (s.size() % 4) return std::nullopt;
    auto val = [](char c) -> int {
        if (c >= 'A' && c <= 'Z') return c - 'A';
        if (c >= 'a' && c <= 'z') return c - 'a' + 26;
        if (c >= '0' && c <= '9') return c - '0' + 52;
        if (c == '+') return 62;
        if (c == '/') return 63;
        return -1;
    };
    std::string out;
    for (std::size_t i = 0; i < s.size(); i += 4) {
        bool last = i + 4 == s.size();
        int pad = (s[i + 3] == '=') + (s[i + 2] == '=' && s[i + 3] == '=');
        if (pad && !last) return std::nullopt;
        int v[4];
        for (int k = 0; k < 4 - pad; ++k)
            if ((v[k] = val(s[i + std::size_t(k)])) < 0) return std::nullopt;
        std::uint32_t x = std::uint32_t(v[0]) << 18 | std::uint32_t(v[1]) << 12;
        if (pad < 2) x |= std::uint32_t(v[2]) << 6;
        if (pad < 1) x |= std::uint32_t(v[3]);
        out += char(x >> 16);
        if (pad < 2) out += char((x >> 8) & 0xff);
        if (pad < 1) out += char(x & 0xff);
    }
    return out;
}

}  // namespace detail

// ---- frames -----------------------------------------------------------------------------

// Header + payload. Throws errc::limit_exceeded for a payload over 65536 bytes.
inline std::string encode_v2_frame(std::uint16_t type, std::string_view payload) {
    if (payload.size() > kV2MaxPayload)
        throw error(errc::limit_exceeded, "frp v2 frame: payload of " +
                                              std::to_string(payload.size()) +
                                              " bytes exceeds the limit of 65536");
    std::string out = detail::v2_frame_header(type, payload.size());
    out.append(payload);
    return out;
}

// Checks an 8-byte header and returns the payload length, before any payload is read.
inline std::size_t check_v2_frame_header(const unsigned char* h) {
    std::uint16_t flags = std::uint16_t(h[2] << 8 | h[3]);
    std::uint32_t len =
        std::uint32_t(h[4]) << 24 | std::uint32_t(h[5]) << 16 | std::uint32_t(h[6]) << 8 | h[7];
    if (flags != 0)
        throw error(errc::protocol_error,
                    "frp v2 frame: flags " + std::to_string(flags) + " (must be 0)");
    if (len > kV2MaxPayload)
        throw error(errc::limit_exceeded, "frp v2 frame: payload length " + std::to_string(len) +
                                              " exceeds the limit of 65536");
    return len;
}

// A message frame's payload: uint16 ID + the v1 JSON body.
inline std::string encode_v2_message_payload(const Message& m) {
    std::uint16_t id = detail::v2_id_of(type_of(m));
    if (id == 0)
        throw error(errc::unsupported,
                    std::string("frp v2: message ") + name_of(m) + " has no v2 message ID");
    std::string out;
    out += char(id >> 8), out += char(id & 0xff);
    out += encode_body(m);
    return out;
}

inline std::string encode_v2_message(const Message& m) {
    std::string payload = encode_v2_message_payload(m);
    if (payload.size() > kV2MaxPayload)
        throw error(errc::limit_exceeded, std::string("frp v2 message ") + name_of(m) +
                                              ": payload of " + std::to_string(payload.size()) +
                                              " bytes exceeds the limit of 65536");
    return encode_v2_frame(kV2Message, payload);
}

inline Message decode_v2_message_payload(std::string_view payload) {
    if (payload.size() < 2)
        throw error(errc::protocol_error, "frp v2 message: payload of " +
                                              std::to_string(payload.size()) +
                                              " bytes has no message ID");
    unsigned id = unsigned(static_cast<unsigned char>(payload[0])) << 8 |
                  static_cast<unsigned char>(payload[1]);
    if (id == 0 || id > 18)
        throw error(errc::protocol_error,
                    "frp v2 message: unknown message ID " + std::to_string(id));
    char type = detail::kV2MessageTypes[id - 1];
    if (!is_known_type(type))
        throw error(errc::unsupported,
                    "frp v2 message: message ID " + std::to_string(id) + " is not supported");
    return decode_body(type, payload.substr(2));
}

// A frame that must be a message (type 16): its message.
inline Message decode_v2_message_frame(const V2Frame& f) {
    if (f.type != kV2Message)
        throw error(errc::protocol_error, "frp v2: expected a message frame (type 16), got type " +
                                              std::to_string(f.type));
    return decode_v2_message_payload(f.payload);
}

// Incremental frame decoder: feed() any slices, take() whole frames. Holds at most one
// partial frame (8 + 65536 bytes); the length is checked before the payload is buffered.
// After an error it stays failed.
class V2FrameDecoder {
  public:
    void feed(const void* data, std::size_t n) {
        if (failed_)
            throw error(errc::state_error, "frp v2 frame decoder: failed earlier: " + why_);
        const auto* p = static_cast<const char*>(data);
        try {
            while (n > 0) {
                if (header_.size() < kV2FrameHeaderSize) {
                    std::size_t k = std::min(n, kV2FrameHeaderSize - header_.size());
                    header_.append(p, k);
                    p += k, n -= k;
                    if (header_.size() < kV2FrameHeaderSize) continue;
                    want_ = check_v2_frame_header(
                        reinterpret_cast<const unsigned char*>(header_.data()));
                    payload_.clear();
                    payload_.reserve(want_);
                }
                std::size_t k = std::min(n, want_ - payload_.size());
                payload_.append(p, k);
                p += k, n -= k;
                if (payload_.size() == want_) {
                    auto h = reinterpret_cast<const unsigned char*>(header_.data());
                    ready_.push_back(V2Frame{std::uint16_t(h[0] << 8 | h[1]), std::move(payload_)});
                    header_.clear();
                    payload_.clear();
                }
            }
        } catch (const error& e) {
            failed_ = true;
            why_ = e.what();
            throw;
        }
    }
    std::optional<V2Frame> take() {
        if (ready_.empty()) return std::nullopt;
        V2Frame f = std::move(ready_.front());
        ready_.pop_front();
        return f;
    }
    std::size_t pending() const noexcept { return header_.size() + payload_.size(); }

  private:
    std::string header_, payload_;
    std::size_t want_ = 0;
    std::deque<V2Frame> ready_;
    bool failed_ = false;
    std::string why_;
};

// Reads exactly one frame from `s` (never a byte past it). One deadline for the frame.
inline V2Frame read_v2_frame(p2prc::detail::Stream& s, p2prc::detail::Millis timeout) {
    auto deadline = p2prc::detail::deadline_after(timeout);
    auto left = [&] {
        auto l = std::chrono::duration_cast<p2prc::detail::Millis>(deadline -
                                                                   p2prc::detail::Clock::now());
        return l.count() > 0 ? l : p2prc::detail::Millis(0);
    };
    unsigned char h[kV2FrameHeaderSize];
    s.read_exact(h, sizeof h, left());
    std::size_t len = check_v2_frame_header(h);
    V2Frame f;
    f.type = std::uint16_t(h[0] << 8 | h[1]);
    f.payload.assign(len, '\0');
    if (len) s.read_exact(f.payload.data(), len, left());
    return f;
}

// ---- one codec per logical connection -----------------------------------------------------

// How messages are framed on one logical connection: v1 (type byte + int64 length) or v2
// (frames with message IDs). Chosen per connection, so the roles' code is written once.
struct Codec {
    WireProtocol wire = WireProtocol::v1;

    std::string encode(const Message& m) const {
        return wire == WireProtocol::v2 ? encode_v2_message(m) : encode_frame(m);
    }
    // Exactly one message, never a byte past it.
    Message read(p2prc::detail::Stream& s, p2prc::detail::Millis timeout) const {
        if (wire == WireProtocol::v1) return read_msg(s, timeout);
        return decode_v2_message_frame(read_v2_frame(s, timeout));
    }
    void write(p2prc::detail::Stream& s, const Message& m, p2prc::detail::Millis timeout) const {
        std::string f = encode(m);
        s.write_all(f.data(), f.size(), timeout);
    }
};

// Incremental message decoder for either codec (the control's byte stream).
class MessageDecoder {
  public:
    explicit MessageDecoder(Codec codec) {
        if (codec.wire == WireProtocol::v2) dec_.emplace<V2FrameDecoder>();
    }
    void feed(const void* data, std::size_t n) {
        if (auto* v1 = std::get_if<FrameDecoder>(&dec_)) return v1->feed(data, n);
        auto& v2 = std::get<V2FrameDecoder>(dec_);
        v2.feed(data, n);
        while (auto f = v2.take()) ready_.push_back(decode_v2_message_frame(*f));
    }
    std::optional<Message> take() {
        if (auto* v1 = std::get_if<FrameDecoder>(&dec_)) return v1->take();
        if (ready_.empty()) return std::nullopt;
        Message m = std::move(ready_.front());
        ready_.pop_front();
        return m;
    }

  private:
    std::variant<FrameDecoder, V2FrameDecoder> dec_;
    std::deque<Message> ready_;
};

// ---- hellos -------------------------------------------------------------------------------

// C->S, frame type 1. Every field is optional on the wire (omitempty); nested objects are
// always written, as Go writes struct values.
struct ClientHello {
    std::string transport;  // bootstrap: informational, frps reads none of it
    bool tls = false, tcp_mux = false;
    std::vector<std::string> codecs;
    std::vector<std::string> algorithms;
    std::string client_random;  // raw bytes (base64 in JSON)
};

// S->C, frame type 2.
struct ServerHello {
    std::string codec;
    std::string algorithm;
    std::string server_random;  // raw bytes
    std::string error;
};

namespace detail {

inline void json_list(std::string& out, const std::vector<std::string>& v) {
    out += '[';
    for (std::size_t i = 0; i < v.size(); ++i) {
        if (i) out += ',';
        go_quote(out, v[i]);
    }
    out += ']';
}

// Writes `"key":` with a comma when needed.
struct ObjWriter {
    std::string& out;
    bool first = true;
    void key(const char* k) {
        if (!first) out += ',';
        first = false;
        go_quote(out, k);
        out += ':';
    }
};

inline const Json& hello_object(const Json& j, const char* key, const char* what) {
    static const Json empty = Json::object();
    const Json* f = find_key(j, key);
    if (!f || f->is_null()) return empty;
    if (!f->is_object())
        throw error(errc::parse_error, std::string(what) + ": \"" + key + "\" is not an object");
    return *f;
}
inline std::string hello_string(const Json& j, const char* key, const char* what) {
    const Json* f = find_key(j, key);
    if (!f || f->is_null()) return {};
    if (!f->is_string())
        throw error(errc::parse_error, std::string(what) + ": \"" + key + "\" is not a string");
    return f->get<std::string>();
}
inline bool hello_bool(const Json& j, const char* key, const char* what) {
    const Json* f = find_key(j, key);
    if (!f || f->is_null()) return false;
    if (!f->is_boolean())
        throw error(errc::parse_error, std::string(what) + ": \"" + key + "\" is not a boolean");
    return f->get<bool>();
}
inline std::vector<std::string> hello_list(const Json& j, const char* key, const char* what) {
    std::vector<std::string> out;
    const Json* f = find_key(j, key);
    if (!f || f->is_null()) return out;
    if (!f->is_array())
        throw error(errc::parse_error, std::string(what) + ": \"" + key + "\" is not a list");
    for (const auto& e : *f) {
        if (e.is_null()) {
            out.emplace_back();
        } else if (e.is_string()) {
            out.push_back(e.get<std::string>());
        } else {
            throw error(errc::parse_error,
                        std::string(what) + ": \"" + key + "\" is not a list of strings");
        }
    }
    return out;
}
inline std::string hello_bytes(const Json& j, const char* key, const char* what) {
    std::string s = hello_string(j, key, what);
    auto b = base64_decode(s);
    if (!b) throw error(errc::parse_error, std::string(what) + ": \"" + key + "\" is not base64");
    return *b;
}
inline Json hello_parse(std::string_view payload, const char* what) {
    Json j = Json::parse(payload.begin(), payload.end(), nullptr, false);
    if (j.is_discarded()) throw error(errc::parse_error, std::string(what) + ": not valid JSON");
    if (j.is_null()) return Json::object();
    if (!j.is_object()) throw error(errc::parse_error, std::string(what) + ": not a JSON object");
    return j;
}

}  // namespace detail

// The JSON payload exactly as Go frp writes it.
inline std::string encode_client_hello(const ClientHello& h) {
    std::string out = "{\"bootstrap\":{";
    detail::ObjWriter b{out};
    if (!h.transport.empty()) b.key("transport"), detail::go_quote(out, h.transport);
    if (h.tls) b.key("tls"), out += "true";
    if (h.tcp_mux) b.key("tcpMux"), out += "true";
    out += "},\"capabilities\":{\"message\":{";
    if (!h.codecs.empty()) out += "\"codecs\":", detail::json_list(out, h.codecs);
    out += "},\"crypto\":{";
    detail::ObjWriter c{out};
    if (!h.algorithms.empty()) c.key("algorithms"), detail::json_list(out, h.algorithms);
    if (!h.client_random.empty())
        c.key("clientRandom"), detail::go_quote(out, detail::base64_encode(h.client_random));
    out += "}}}";
    return out;
}

inline std::string encode_server_hello(const ServerHello& h) {
    std::string out = "{\"selected\":{\"message\":{";
    if (!h.codec.empty()) out += "\"codec\":", detail::go_quote(out, h.codec);
    out += "},\"crypto\":{";
    detail::ObjWriter c{out};
    if (!h.algorithm.empty()) c.key("algorithm"), detail::go_quote(out, h.algorithm);
    if (!h.server_random.empty())
        c.key("serverRandom"), detail::go_quote(out, detail::base64_encode(h.server_random));
    out += "}}";
    if (!h.error.empty()) out += ",\"error\":", detail::go_quote(out, h.error);
    out += '}';
    return out;
}

// Throws errc::parse_error naming what is wrong. Unknown keys are ignored.
inline ClientHello decode_client_hello(std::string_view payload) {
    const char* what = "frp v2 ClientHello";
    detail::Json j = detail::hello_parse(payload, what);
    ClientHello h;
    const detail::Json& boot = detail::hello_object(j, "bootstrap", what);
    h.transport = detail::hello_string(boot, "transport", what);
    h.tls = detail::hello_bool(boot, "tls", what);
    h.tcp_mux = detail::hello_bool(boot, "tcpMux", what);
    const detail::Json& caps = detail::hello_object(j, "capabilities", what);
    h.codecs = detail::hello_list(detail::hello_object(caps, "message", what), "codecs", what);
    const detail::Json& crypto = detail::hello_object(caps, "crypto", what);
    h.algorithms = detail::hello_list(crypto, "algorithms", what);
    h.client_random = detail::hello_bytes(crypto, "clientRandom", what);
    return h;
}

inline ServerHello decode_server_hello(std::string_view payload) {
    const char* what = "frp v2 ServerHello";
    detail::Json j = detail::hello_parse(payload, what);
    ServerHello h;
    const detail::Json& sel = detail::hello_object(j, "selected", what);
    h.codec = detail::hello_string(detail::hello_object(sel, "message", what), "codec", what);
    const detail::Json& crypto = detail::hello_object(sel, "crypto", what);
    h.algorithm = detail::hello_string(crypto, "algorithm", what);
    h.server_random = detail::hello_bytes(crypto, "serverRandom", what);
    h.error = detail::hello_string(j, "error", what);
    return h;
}

inline std::string random_bytes(std::size_t n) {
    std::string out(n, '\0');
    if (RAND_bytes(reinterpret_cast<unsigned char*>(out.data()), int(n)) != 1)
        throw error(errc::io_error, "frp v2: no random bytes from OpenSSL");
    return out;
}

// What frps 0.70 does with a ClientHello: the ServerHello to send. On a refusal the
// answer carries only the codec and `error` (frps's exact texts), and the caller closes.
// The algorithm is the first of the client's list that we support: the client decides.
inline ServerHello negotiate(const ClientHello& ch) {
    ServerHello sh;
    sh.codec = "json";
    bool json = false;
    for (const auto& c : ch.codecs) json = json || c == "json";
    if (!json) {
        sh.error = "unsupported message codec";
        return sh;
    }
    if (ch.client_random.size() != kV2RandomSize) {
        sh.error = "invalid crypto client random length " +
                   std::to_string(ch.client_random.size()) + ", want 32";
        return sh;
    }
    for (const auto& a : ch.algorithms) {
        if (parse_aead_algorithm(a)) {
            sh.algorithm = a;
            sh.server_random = random_bytes(kV2RandomSize);
            return sh;
        }
    }
    sh.error = "no supported crypto algorithm";
    return sh;
}

// frpc's checks of a ServerHello for its ClientHello: the algorithm, or an error text.
inline std::variant<AeadAlgorithm, std::string> check_server_hello(const ClientHello& ch,
                                                                   const ServerHello& sh) {
    if (!sh.error.empty()) return sh.error;
    if (sh.codec != "json") return "unsupported selected message codec: " + sh.codec;
    auto alg = parse_aead_algorithm(sh.algorithm);
    if (!alg) return "unknown selected crypto algorithm: " + sh.algorithm;
    bool offered = false;
    for (const auto& a : ch.algorithms) offered = offered || a == sh.algorithm;
    if (!offered) return "selected crypto algorithm was not advertised by client: " + sh.algorithm;
    if (sh.server_random.size() != kV2RandomSize)
        return "invalid crypto server random length " + std::to_string(sh.server_random.size()) +
               ", want 32";
    return *alg;
}

// ---- key schedule -------------------------------------------------------------------------

using TranscriptHash = std::array<std::uint8_t, 32>;

// SHA-256 over the exact hello payloads as sent (section 5.1 of the spec).
inline TranscriptHash transcript_hash(std::string_view client_hello,
                                      std::string_view server_hello) {
    std::string in = "frp wire v2 crypto transcript";
    auto part = [&](const char* label, std::string_view payload) {
        in += '\0';
        in += label;
        in += '\0';
        std::uint64_t n = payload.size();
        for (int shift = 56; shift >= 0; shift -= 8) in += char((n >> shift) & 0xff);
        in.append(payload);
    };
    part("client hello", client_hello);
    part("server hello", server_hello);
    TranscriptHash out{};
    unsigned int len = 0;
    if (EVP_Digest(in.data(), in.size(), out.data(), &len, EVP_sha256(), nullptr) != 1 ||
        len != out.size())
        throw error(errc::io_error, "frp v2 transcript: SHA-256 failed in OpenSSL");
    return out;
}

enum class AeadDirection { client_to_server, server_to_client };

// HKDF-SHA256(ikm = token, salt = transcript, info = "frp wire v2 control aead <alg> <dir>").
inline AeadKey derive_control_key(std::string_view token, const TranscriptHash& transcript,
                                  AeadAlgorithm alg, AeadDirection dir) {
    std::string info =
        std::string("frp wire v2 control aead ") + to_string(alg) + " " +
        (dir == AeadDirection::client_to_server ? "client-to-server" : "server-to-client");
    AeadKey out{};
    std::unique_ptr<EVP_PKEY_CTX, decltype(&EVP_PKEY_CTX_free)> ctx(
        EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, nullptr), &EVP_PKEY_CTX_free);
    // An empty token is valid (frp's default): OpenSSL wants a non-null key pointer.
    static const unsigned char none = 0;
    const auto* ikm = token.empty() ? &none : reinterpret_cast<const unsigned char*>(token.data());
    std::size_t len = out.size();
    if (!ctx || EVP_PKEY_derive_init(ctx.get()) <= 0 ||
        EVP_PKEY_CTX_set_hkdf_md(ctx.get(), EVP_sha256()) <= 0 ||
        EVP_PKEY_CTX_set1_hkdf_salt(ctx.get(), transcript.data(), int(transcript.size())) <= 0 ||
        EVP_PKEY_CTX_set1_hkdf_key(ctx.get(), ikm, int(token.size())) <= 0 ||
        EVP_PKEY_CTX_add1_hkdf_info(ctx.get(), reinterpret_cast<const unsigned char*>(info.data()),
                                    int(info.size())) <= 0 ||
        EVP_PKEY_derive(ctx.get(), out.data(), &len) <= 0 || len != out.size())
        throw error(errc::io_error, "frp v2 key schedule: HKDF-SHA256 failed in OpenSSL");
    return out;
}

// The negotiated crypto of one control connection.
struct V2Crypto {
    AeadAlgorithm algorithm = AeadAlgorithm::aes_256_gcm;
    TranscriptHash transcript{};

    AeadKey key(std::string_view token, AeadDirection dir) const {
        return derive_control_key(token, transcript, algorithm, dir);
    }
};

// ---- the server's side of a v2 connection's opening ----------------------------------------

// What follows the preface of a v2 logical connection, as frps reads it.
struct V2Opening {
    std::optional<V2Crypto> crypto;  // set when a ClientHello was accepted
    Message first;
    std::string refused;  // frps's text when the ClientHello was refused (then no `first`)
};

// Reads an optional ClientHello (answered at once with the ServerHello, before the Login
// is read, as frps does) and the first message frame, within one `timeout`. A refused
// ClientHello is answered with frps's refusal and returned in `refused`: the caller
// closes. Malformed input throws, unanswered.
inline V2Opening accept_v2_opening(p2prc::detail::Stream& s, p2prc::detail::Millis timeout) {
    auto deadline = p2prc::detail::deadline_after(timeout);
    auto left = [&] {
        auto l = std::chrono::duration_cast<p2prc::detail::Millis>(deadline -
                                                                   p2prc::detail::Clock::now());
        return l.count() > 0 ? l : p2prc::detail::Millis(0);
    };
    V2Opening out;
    V2Frame f = read_v2_frame(s, left());
    if (f.type == kV2ClientHello) {
        ServerHello sh = negotiate(decode_client_hello(f.payload));
        std::string payload = encode_server_hello(sh);
        std::string frame = encode_v2_frame(kV2ServerHello, payload);
        s.write_all(frame.data(), frame.size(), p2prc::detail::Millis(5000));
        if (!sh.error.empty()) {
            out.refused = sh.error;
            return out;
        }
        out.crypto =
            V2Crypto{*parse_aead_algorithm(sh.algorithm), transcript_hash(f.payload, payload)};
        f = read_v2_frame(s, left());
    }
    out.first = decode_v2_message_frame(f);
    return out;
}

}  // namespace p2prc::frp
