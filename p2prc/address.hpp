// IP addresses, endpoints and ports: parse, normalise, classify.
//
// Every address that enters a table goes through IpAddress::parse, so two spellings of
// one host ("2001:DB8::1", "2001:db8:0:0::1") compare equal, and an IPv4-mapped IPv6
// address ("::ffff:1.2.3.4") is the IPv4 host it maps.
#pragma once

#include "error.hpp"

#include <arpa/inet.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace p2prc {

// How far from the open internet an address is. The order matters: the scope rule of
// discovery accepts an address from a peer only if it is no more internal than the peer.
enum class Scope {
    public_network = 0,   // globally routable (documentation ranges count as public)
    private_network = 1,  // RFC 1918, CGNAT 100.64/10, IPv6 ULA fc00::/7
    link_local = 2,       // 169.254/16, fe80::/10
    loopback = 3,         // 127/8, ::1
    unspecified = 4,      // 0.0.0.0, ::, and 0/8: never a peer
    reserved = 5,         // multicast, broadcast, 240/4: never a peer
};

inline const char* to_string(Scope s) noexcept {
    switch (s) {
        case Scope::public_network: return "public";
        case Scope::private_network: return "private";
        case Scope::link_local: return "link-local";
        case Scope::loopback: return "loopback";
        case Scope::unspecified: return "unspecified";
        case Scope::reserved: return "reserved";
    }
    return "unknown";
}

class IpAddress {
public:
    enum class Family { v4, v6 };

    IpAddress() = default;

    // Parses a numeric address: dotted IPv4, or IPv6 optionally in brackets. IPv4-mapped
    // IPv6 addresses become IPv4. Zone indices ("fe80::1%eth0") are refused: they mean
    // nothing on another machine. Returns nullopt on anything else.
    static std::optional<IpAddress> parse(std::string_view text) noexcept {
        if (text.size() >= 2 && text.front() == '[' && text.back() == ']')
            text = text.substr(1, text.size() - 2);
        if (text.empty() || text.size() > INET6_ADDRSTRLEN) return std::nullopt;
        char buf[INET6_ADDRSTRLEN + 1];
        std::memcpy(buf, text.data(), text.size());
        buf[text.size()] = '\0';
        IpAddress a;
        if (text.find(':') == std::string_view::npos) {
            if (inet_pton(AF_INET, buf, a.bytes_.data()) != 1) return std::nullopt;
            a.family_ = Family::v4;
            return a;
        }
        std::array<std::uint8_t, 16> b{};
        if (inet_pton(AF_INET6, buf, b.data()) != 1) return std::nullopt;
        static constexpr std::uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (std::memcmp(b.data(), mapped, 12) == 0) {
            a.family_ = Family::v4;
            std::memcpy(a.bytes_.data(), b.data() + 12, 4);
            return a;
        }
        a.family_ = Family::v6;
        a.bytes_ = b;
        return a;
    }

    // Like parse, but throws p2prc::error naming the value.
    static IpAddress from_string(std::string_view text) {
        if (auto a = parse(text)) return *a;
        throw error(errc::parse_error,
                    "invalid IP address \"" + std::string(text.substr(0, 80)) +
                        "\": expected a numeric IPv4 or IPv6 address");
    }

    static IpAddress from_v4(const std::uint8_t (&b)[4]) {
        IpAddress a;
        std::memcpy(a.bytes_.data(), b, 4);
        return a;
    }
    static IpAddress from_v6(const std::uint8_t (&b)[16]) {
        IpAddress a;
        a.family_ = Family::v6;
        std::memcpy(a.bytes_.data(), b, 16);
        return a;
    }

    Family family() const noexcept { return family_; }
    bool is_v4() const noexcept { return family_ == Family::v4; }
    bool is_v6() const noexcept { return family_ == Family::v6; }
    // 4 bytes for IPv4 (network order), 16 for IPv6.
    const std::uint8_t* bytes() const noexcept { return bytes_.data(); }
    std::size_t size() const noexcept { return is_v4() ? 4 : 16; }

    // The canonical text: dotted quad, or RFC 5952 lower-case compressed IPv6.
    std::string to_string() const {
        char buf[INET6_ADDRSTRLEN];
        inet_ntop(is_v4() ? AF_INET : AF_INET6, bytes_.data(), buf, sizeof buf);
        return buf;
    }

    Scope scope() const noexcept {
        const auto* b = bytes_.data();
        if (is_v4()) {
            if (b[0] == 0) return Scope::unspecified;
            if (b[0] == 127) return Scope::loopback;
            if (b[0] == 169 && b[1] == 254) return Scope::link_local;
            if (b[0] == 10 || (b[0] == 172 && (b[1] & 0xf0) == 16) || (b[0] == 192 && b[1] == 168) ||
                (b[0] == 100 && (b[1] & 0xc0) == 64))
                return Scope::private_network;
            if (b[0] >= 224) return Scope::reserved;  // multicast, 240/4, broadcast
            return Scope::public_network;
        }
        static constexpr std::uint8_t zero[16] = {};
        if (std::memcmp(b, zero, 16) == 0) return Scope::unspecified;
        if (std::memcmp(b, zero, 15) == 0 && b[15] == 1) return Scope::loopback;
        // IPv4-compatible (::a.b.c.d) and NAT64 (64:ff9b::/96) addresses reach an IPv4
        // host: they are as internal as the address they embed.
        static constexpr std::uint8_t nat64[12] = {0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};
        if (std::memcmp(b, zero, 12) == 0 || std::memcmp(b, nat64, 12) == 0) {
            const std::uint8_t v4[4] = {b[12], b[13], b[14], b[15]};
            return from_v4(v4).scope();
        }
        if (b[0] == 0xfe && (b[1] & 0xc0) == 0x80) return Scope::link_local;
        if ((b[0] & 0xfe) == 0xfc) return Scope::private_network;               // ULA fc00::/7
        if (b[0] == 0xfe && (b[1] & 0xc0) == 0xc0) return Scope::private_network;  // site-local
        if (b[0] == 0xff) return Scope::reserved;                                  // multicast
        return Scope::public_network;
    }

    friend bool operator==(const IpAddress& x, const IpAddress& y) noexcept {
        return x.family_ == y.family_ && std::memcmp(x.bytes_.data(), y.bytes_.data(), x.size()) == 0;
    }
    friend bool operator!=(const IpAddress& x, const IpAddress& y) noexcept { return !(x == y); }

    std::size_t hash() const noexcept {
        // FNV-1a over family and bytes: cheap, and good enough for table keys.
        std::size_t h = is_v4() ? 0x811c9dc5u : 0x01000193u;
        for (std::size_t i = 0; i < size(); ++i) h = (h ^ bytes_[i]) * 0x100000001b3ull;
        return h;
    }

private:
    Family family_ = Family::v4;
    std::array<std::uint8_t, 16> bytes_{};
};

namespace detail {

// Parses unsigned decimal text: digits only (no sign, no spaces), at most 19 of them so
// the value fits in 64 bits.
inline std::optional<std::uint64_t> parse_decimal_u64(std::string_view s) noexcept {
    if (s.empty() || s.size() > 19) return std::nullopt;
    std::uint64_t v = 0;
    for (char c : s) {
        if (c < '0' || c > '9') return std::nullopt;
        v = v * 10 + std::uint64_t(c - '0');
    }
    return v;
}

}  // namespace detail

// Parses a port given as decimal text: 1-65535, digits only (no sign, no spaces).
inline std::optional<std::uint16_t> parse_port(std::string_view text) noexcept {
    if (text.empty() || text.size() > 5) return std::nullopt;
    unsigned v = 0;
    for (char c : text) {
        if (c < '0' || c > '9') return std::nullopt;
        v = v * 10 + unsigned(c - '0');
    }
    if (v < 1 || v > 65535) return std::nullopt;
    return static_cast<std::uint16_t>(v);
}

inline std::uint16_t port_from_string(std::string_view text) {
    if (auto p = parse_port(text)) return *p;
    throw error(errc::parse_error, "invalid port \"" + std::string(text.substr(0, 80)) +
                                       "\": expected a decimal number 1-65535");
}

// A numeric address and a port: "1.2.3.4:8078" or "[2001:db8::1]:8078".
struct Endpoint {
    IpAddress address;
    std::uint16_t port = 0;

    static std::optional<Endpoint> parse(std::string_view text) noexcept {
        std::string_view host, port;
        if (!text.empty() && text.front() == '[') {
            auto close = text.find(']');
            if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':')
                return std::nullopt;
            host = text.substr(1, close - 1);
            port = text.substr(close + 2);
        } else {
            auto colon = text.rfind(':');
            if (colon == std::string_view::npos) return std::nullopt;
            host = text.substr(0, colon);
            if (host.find(':') != std::string_view::npos) return std::nullopt;  // v6 needs []
            port = text.substr(colon + 1);
        }
        auto a = IpAddress::parse(host);
        auto p = parse_port(port);
        if (!a || !p) return std::nullopt;
        return Endpoint{*a, *p};
    }

    static Endpoint from_string(std::string_view text) {
        if (auto e = parse(text)) return *e;
        throw error(errc::parse_error,
                    "invalid endpoint \"" + std::string(text.substr(0, 80)) +
                        "\": expected ADDRESS:PORT (IPv6 as [ADDRESS]:PORT, port 1-65535)");
    }

    std::string host_string() const { return address.to_string(); }
    std::string to_string() const {
        return address.is_v6() ? "[" + address.to_string() + "]:" + std::to_string(port)
                               : address.to_string() + ":" + std::to_string(port);
    }

    friend bool operator==(const Endpoint& x, const Endpoint& y) noexcept {
        return x.port == y.port && x.address == y.address;
    }
    friend bool operator!=(const Endpoint& x, const Endpoint& y) noexcept { return !(x == y); }
    std::size_t hash() const noexcept { return address.hash() * 31u + port; }
};

// An inclusive range of ports, as in frps's allow_ports ("2000-3000,3001,4000-50000").
struct PortRange {
    std::uint16_t lo = 0, hi = 0;
    bool contains(std::uint16_t p) const noexcept { return p >= lo && p <= hi; }
};

// Parses "1024-65535" or "2000-3000, 3001, 4000-50000" (ports 1-65535, lo <= hi). Throws
// p2prc::error(invalid_argument) naming the part that is wrong.
inline std::vector<PortRange> parse_port_ranges(std::string_view text) {
    std::vector<PortRange> out;
    auto number = [](std::string_view part, std::string_view whole) -> std::uint16_t {
        while (!part.empty() && part.front() == ' ') part.remove_prefix(1);
        while (!part.empty() && part.back() == ' ') part.remove_suffix(1);
        auto v = parse_port(part);  // decimal 1-65535, nothing else
        if (!v)
            throw error(errc::invalid_argument,
                        "port range \"" + std::string(whole) + "\": expected ports 1-65535");
        return *v;
    };
    std::size_t start = 0;
    while (start <= text.size()) {
        std::size_t comma = text.find(',', start);
        if (comma == std::string_view::npos) comma = text.size();
        std::string_view part = text.substr(start, comma - start);
        std::size_t dash = part.find('-');
        PortRange r;
        if (dash == std::string_view::npos) {
            r.lo = r.hi = number(part, part);
        } else {
            r.lo = number(part.substr(0, dash), part);
            r.hi = number(part.substr(dash + 1), part);
            if (r.lo > r.hi)
                throw error(errc::invalid_argument, "port range \"" + std::string(part) +
                                                        "\": the first port is above the last");
        }
        out.push_back(r);
        start = comma + 1;
    }
    return out;
}

}  // namespace p2prc

namespace std {
template <>
struct hash<p2prc::IpAddress> {
    size_t operator()(const p2prc::IpAddress& a) const noexcept { return a.hash(); }
};
template <>
struct hash<p2prc::Endpoint> {
    size_t operator()(const p2prc::Endpoint& e) const noexcept { return e.hash(); }
};
}  // namespace std
