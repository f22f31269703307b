// Loopback helpers for the yamux tests: a connected TCP pair and a raw frame peer.
#pragma once

#include <p2prc.hpp>

#include "support/bytes.hpp"

#include <chrono>
#include <memory>
#include <string>

namespace p2prc_test {

using namespace std::chrono_literals;

struct TcpPair {
    std::shared_ptr<p2prc::detail::TcpConnection> client, server;
};

inline TcpPair tcp_pair() {
    p2prc::detail::TcpListener l(p2prc::Endpoint{p2prc::IpAddress::from_string("127.0.0.1"), 0});
    TcpPair p;
    p.client = p2prc::detail::TcpConnection::connect(l.local_endpoint(), 2000ms);
    p.server = l.accept(2000ms);
    if (!p.server) throw std::runtime_error("loopback accept timed out");
    return p;
}

// A peer that speaks yamux by hand: sends hex, reads frames.
struct RawPeer {
    std::shared_ptr<p2prc::detail::TcpConnection> conn;

    void send_hex(const std::string& h) {
        std::string b = unhex(h);
        conn->write_all(b.data(), b.size(), 2000ms);
    }
    void send_bytes(const std::string& b) { conn->write_all(b.data(), b.size(), 5000ms); }
    void send_frame(const p2prc::frp::yamux::Header& h, const std::string& payload = {}) {
        auto head = p2prc::frp::yamux::encode_header(h);
        std::string b(reinterpret_cast<const char*>(head.data()), head.size());
        send_bytes(b + payload);
    }
    // Next frame header as hex (payload read and returned through `payload`).
    std::string read_frame_hex(std::string* payload = nullptr,
                               p2prc::detail::Millis timeout = 3000ms) {
        std::uint8_t h[12];
        conn->read_exact(h, 12, timeout);
        auto hdr = p2prc::frp::yamux::parse_header(h);
        std::string body;
        if (hdr.type == p2prc::frp::yamux::FrameType::data && hdr.length) {
            body.resize(hdr.length);
            conn->read_exact(body.data(), body.size(), timeout);
        }
        if (payload) *payload = body;
        return hex(h, 12);
    }
    // True when the peer closed the connection (after draining up to `limit` bytes).
    bool sees_eof(p2prc::detail::Millis timeout = 3000ms, std::size_t limit = 1 << 20) {
        char buf[4096];
        std::size_t total = 0;
        while (total < limit) {
            std::size_t k = 0;
            try {
                k = conn->read_some(buf, sizeof buf, timeout);
            } catch (const p2prc::error& e) {
                return e.code() == p2prc::errc::io_error;  // reset counts as closed
            }
            if (k == 0) return true;
            total += k;
        }
        return false;
    }
};

}  // namespace p2prc_test
