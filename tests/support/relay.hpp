// Helpers for the relay tests: an echo service, a traffic driver that checks every byte,
// a forwarder that can freeze (a client that vanishes without closing), option presets.
#pragma once

#include <p2prc.hpp>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace p2prc_test {

using namespace std::chrono_literals;
using p2prc::Endpoint;
using p2prc::IpAddress;
using p2prc::detail::Millis;

inline Endpoint loopback(std::uint16_t port = 0) {
    return Endpoint{IpAddress::from_string("127.0.0.1"), port};
}

// A port that was free a moment ago (bound and released).
inline std::uint16_t free_port() {
    p2prc::detail::TcpListener l(loopback());
    return l.port();
}

// True when something accepts TCP connections on the port.
inline bool port_open(std::uint16_t port) {
    try {
        p2prc::detail::TcpConnection::connect(loopback(port), 1000ms);
        return true;
    } catch (const p2prc::error&) {
        return false;
    }
}

// True when the port can be bound again.
inline bool port_bindable(std::uint16_t port) {
    try {
        p2prc::detail::TcpListener l(loopback(port));
        return true;
    } catch (const p2prc::error&) {
        return false;
    }
}

// Echoes every connection until its end of stream, then half-closes it.
class EchoServer {
  public:
    EchoServer() : listener_(loopback()), tasks_(256) {
        thread_ = std::thread([this] {
            for (;;) {
                std::unique_ptr<p2prc::detail::TcpConnection> c;
                try {
                    c = listener_.accept(500ms);
                } catch (const p2prc::error&) {
                    return;
                }
                if (!c) continue;
                std::shared_ptr<p2prc::detail::Stream> conn(std::move(c));
                live_.add(conn);
                if (!tasks_.spawn([conn] { echo(*conn); })) conn->close();
            }
        });
    }
    ~EchoServer() {
        listener_.close();
        thread_.join();
        live_.close_all();
        tasks_.join_all();
    }
    Endpoint endpoint() const { return listener_.local_endpoint(); }

  private:
    static void echo(p2prc::detail::Stream& s) {
        std::vector<char> buf(32 * 1024);
        try {
            for (;;) {
                std::size_t k = s.read_some(buf.data(), buf.size(), 30000ms);
                if (k == 0) break;
                s.write_all(buf.data(), k, 30000ms);
            }
            s.shutdown_write();
        } catch (const p2prc::error&) {
        }
    }
    p2prc::detail::TcpListener listener_;
    p2prc::frp::detail::StreamRegistry live_;
    p2prc::frp::detail::TaskGroup tasks_;
    std::thread thread_;
};

inline char pattern_byte(std::size_t conn, std::size_t i) {
    return char((conn * 131u + i * 7u + (i >> 11)) & 0xff);
}

// Sends `bytes` on one connection to `at` while reading the echo; returns how many echoed
// bytes matched before the first mismatch, end of stream or error, and whether the end of
// stream came right after them (the half-close travelled back through the relay).
struct EchoResult {
    std::size_t matched = 0;
    bool clean_end = false;
    std::string error;
};

inline EchoResult echo_roundtrip(const Endpoint& at, std::size_t conn_index, std::size_t bytes) {
    EchoResult r;
    std::shared_ptr<p2prc::detail::TcpConnection> c;
    try {
        c = p2prc::detail::TcpConnection::connect(at, 5000ms);
    } catch (const p2prc::error& e) {
        r.error = e.what();
        return r;
    }
    std::thread writer([&] {
        std::vector<char> buf(40 * 1024 + 7);
        std::size_t sent = 0;
        try {
            while (sent < bytes) {
                std::size_t k = std::min(buf.size(), bytes - sent);
                for (std::size_t i = 0; i < k; ++i) buf[i] = pattern_byte(conn_index, sent + i);
                c->write_all(buf.data(), k, 20000ms);
                sent += k;
            }
            c->shutdown_write();
        } catch (const p2prc::error&) {
        }
    });
    std::vector<char> buf(33 * 1024);
    try {
        while (r.matched < bytes) {
            std::size_t k =
                c->read_some(buf.data(), std::min(buf.size(), bytes - r.matched), 20000ms);
            if (k == 0) break;
            std::size_t i = 0;
            while (i < k && buf[i] == pattern_byte(conn_index, r.matched + i)) ++i;
            r.matched += i;
            if (i < k) break;
        }
        if (r.matched == bytes) r.clean_end = c->read_some(buf.data(), 1, 20000ms) == 0;
    } catch (const p2prc::error& e) {
        r.error = e.what();
    }
    c->close();
    writer.join();
    return r;
}

// `conns` concurrent echo round trips of `bytes` each; returns how many were byte-exact
// with a clean end.
inline std::size_t parallel_echo(const Endpoint& at, std::size_t conns, std::size_t bytes,
                                 std::string* first_error = nullptr) {
    std::vector<EchoResult> results(conns);
    std::vector<std::thread> threads;
    for (std::size_t i = 0; i < conns; ++i)
        threads.emplace_back([&, i] { results[i] = echo_roundtrip(at, i, bytes); });
    for (auto& t : threads) t.join();
    std::size_t ok = 0;
    for (const auto& r : results) {
        if (r.matched == bytes && r.clean_end)
            ++ok;
        else if (first_error && first_error->empty())
            *first_error = "matched " + std::to_string(r.matched) + " of " +
                           std::to_string(bytes) + ", clean end " +
                           (r.clean_end ? "yes" : "no") + ", error: " + r.error;
    }
    return ok;
}

// A TCP forwarder in front of the relay server. freeze() stops moving bytes (both ways)
// and accepting, while keeping every socket open: to the server, the client vanished.
class Forwarder {
  public:
    explicit Forwarder(Endpoint to) : to_(to), listener_(loopback()), tasks_(64) {
        thread_ = std::thread([this] {
            for (;;) {
                std::unique_ptr<p2prc::detail::TcpConnection> c;
                try {
                    c = listener_.accept(200ms);
                } catch (const p2prc::error&) {
                    return;
                }
                if (!c) continue;
                std::shared_ptr<p2prc::detail::Stream> in(std::move(c));
                live_.add(in);
                if (frozen_.load()) continue;  // held open, never served
                if (!tasks_.spawn([this, in] { serve(in); })) in->close();
            }
        });
    }
    ~Forwarder() {
        stop_.store(true);
        listener_.close();
        thread_.join();
        live_.close_all();
        tasks_.join_all();
    }
    Endpoint endpoint() const { return listener_.local_endpoint(); }
    void freeze() { frozen_.store(true); }

  private:
    void serve(std::shared_ptr<p2prc::detail::Stream> in) {
        std::shared_ptr<p2prc::detail::Stream> out;
        try {
            out = p2prc::detail::TcpConnection::connect(to_, 2000ms);
        } catch (const p2prc::error&) {
            in->close();
            return;
        }
        live_.add(out);
        auto copy = [this](p2prc::detail::Stream& a, p2prc::detail::Stream& b) {
            std::vector<char> buf(16 * 1024);
            try {
                while (!stop_.load()) {
                    if (frozen_.load()) {
                        std::this_thread::sleep_for(50ms);
                        continue;
                    }
                    std::size_t k = 0;
                    try {
                        k = a.read_some(buf.data(), buf.size(), 100ms);
                    } catch (const p2prc::error& e) {
                        if (e.code() == p2prc::errc::timeout) continue;
                        throw;
                    }
                    if (k == 0) {
                        b.shutdown_write();
                        return;
                    }
                    if (frozen_.load()) return;  // bytes read while freezing are lost
                    b.write_all(buf.data(), k, 5000ms);
                }
            } catch (const p2prc::error&) {
                if (!frozen_.load()) {
                    a.close();
                    b.close();
                }
            }
        };
        std::thread back([&] { copy(*out, *in); });
        copy(*in, *out);
        back.join();
    }

    Endpoint to_;
    p2prc::detail::TcpListener listener_;
    std::atomic<bool> frozen_{false}, stop_{false};
    p2prc::frp::detail::StreamRegistry live_;
    p2prc::frp::detail::TaskGroup tasks_;
    std::thread thread_;
};

// A server on a free loopback port, with test-sized deadlines.
inline p2prc::frp::ServerOptions server_options(const std::string& token = {}) {
    p2prc::frp::ServerOptions o;
    o.bind = loopback(0);
    o.token = token;
    o.login_timeout = 3000ms;
    o.user_conn_timeout = 5000ms;
    o.idle_timeout = 30000ms;
    return o;
}

inline p2prc::frp::ClientOptions client_options(const Endpoint& server, const Endpoint& local,
                                                const std::string& token = {}) {
    p2prc::frp::ClientOptions o;
    o.server = server;
    o.token = token;
    o.dial_timeout = 3000ms;
    o.login_timeout = 3000ms;
    o.reconnect_min = 100ms;
    o.reconnect_max = 500ms;
    o.idle_timeout = 30000ms;
    o.proxies.push_back({"echo", local, 0, false, false});
    return o;
}

}  // namespace p2prc_test
