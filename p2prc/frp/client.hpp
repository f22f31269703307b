// The frpc role: logs in to an frps-compatible server (stock frps, or p2prc::frp::Server)
// and has local TCP services exposed on public ports of that server.
//
// Life of a client: connect (one TCP connection, optionally 0x17 + TLS; with tcp_mux a
// yamux session on it whose first stream is the control), plain Login, plain LoginResp (run_id),
// then the control is encrypted (frp/crypto.hpp) and carries NewProxy/NewProxyResp, ReqWorkConn and
// Ping/Pong. Each ReqWorkConn asks for one work connection (a new yamux stream, or a new
// TCP connection without tcp_mux) that starts with a plain NewWorkConn and waits for
// StartWorkConn; then it is piped to a fresh connection to the proxy's local service.
// When the control is lost the client logs in again with the same run_id (so the server
// replaces its stale control) after a growing pause, and registers its proxies again.
//
// With wire_protocol v2 (frp 0.69+, frp/wire_v2.hpp) every logical connection starts with
// the v2 preface and uses v2 frames; the control sends a ClientHello before its Login, and
// after LoginResp it is an AEAD stream keyed by HKDF(token, hello transcript) instead of
// AES-128-CFB. Everything else is the same.
//
// Threads: one runs the control, one per work connection (two while piping), all owned by
// the Client and joined by stop().
#pragma once

#include "../address.hpp"
#include "../error.hpp"
#include "../net.hpp"
#include "crypto.hpp"
#include "mux.hpp"
#include "pipe.hpp"
#include "snappy.hpp"
#include "tls.hpp"
#include "aead.hpp"
#include "wire.hpp"
#include "wire_v2.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace p2prc::frp {

// One local TCP service to expose.
struct ProxySpec {
    std::string name;               // unique on the server
    Endpoint local;                 // where the service listens, e.g. 127.0.0.1:8080
    std::uint16_t remote_port = 0;  // public port on the server; 0 = the server chooses
    bool use_encryption = false;    // AES-CFB on the work connections (token key)
    bool use_compression = false;   // snappy framing on the work connections
};

enum class ProxyState {
    pending,  // not registered (connecting, or waiting for NewProxyResp)
    running,  // the public port is open
    failed,   // the server refused it (error says why) or the client stopped for good
};

inline const char* to_string(ProxyState s) noexcept {
    switch (s) {
        case ProxyState::pending:
            return "pending";
        case ProxyState::running:
            return "running";
        case ProxyState::failed:
            return "failed";
    }
    return "unknown";
}

struct ProxyStatus {
    std::string name;
    ProxyState state = ProxyState::pending;
    std::uint16_t remote_port = 0;  // when running
    Endpoint public_endpoint;       // server address + remote_port, when running
    std::string error;              // when failed
    // Counts the times the proxy became running (a re-registration after a reconnect
    // increments it).
    std::uint64_t generation = 0;
};

struct ClientOptions {
    Endpoint server;  // the frps-compatible server (its bind_port)
    std::string token;
    bool tcp_mux = true;  // must match the server unless it is a p2prc::frp::Server
    // TLS on every connection to the server (frpc's tls_enable), preceded by the byte 0x17
    // unless tls_first_byte is false (frpc's disable_custom_tls_first_byte). The server's
    // certificate is not verified, as frpc does by default.
    bool tls = false;
    bool tls_first_byte = true;
    // With tls: the server's raw Ed25519 public key (32 bytes) when it is known; the
    // handshake then fails unless the server's certificate carries that key.
    std::string tls_expected_key;
    // Encrypt every proxy's work connections (in addition to ProxySpec::use_encryption).
    bool use_encryption = false;
    // frp's transport.wireProtocol. v1 is the default, as in frp 0.70; v2 needs frps 0.69+
    // or p2prc::frp::Server (stock frps before 0.69 closes a v2 connection).
    WireProtocol wire_protocol = WireProtocol::v1;
    // v2: the AEAD algorithms offered, preferred first (the server takes the first it
    // supports). frpc lists aes-256-gcm first on CPUs with AES instructions.
    std::vector<std::string> aead_algorithms{"aes-256-gcm", "xchacha20-poly1305"};
    std::vector<ProxySpec> proxies;
    std::int64_t pool_count = 1;  // idle work connections the server keeps
    p2prc::detail::Millis dial_timeout{10000};
    p2prc::detail::Millis login_timeout{10000};
    // Ping on the control every interval; without tcp_mux, no Pong for heartbeat_timeout
    // drops the control (with tcp_mux the yamux keepalive decides instead).
    p2prc::detail::Millis heartbeat_interval{30000};
    p2prc::detail::Millis heartbeat_timeout{90000};
    p2prc::detail::Millis mux_keepalive_interval{30000};
    p2prc::detail::Millis mux_ping_timeout{10000};
    // Pause before logging in again: doubles from min to max; reset by a good login.
    p2prc::detail::Millis reconnect_min{500};
    p2prc::detail::Millis reconnect_max{20000};
    // A refused first login stops the client for good (frpc's login_fail_exit); later
    // refusals are retried.
    bool login_fail_exit = true;
    p2prc::detail::Millis idle_timeout{3600000};  // a piped connection idle this long ends
    std::size_t max_connections = 1024;           // live work-connection threads
    // Called (on the client's thread) whenever a proxy's status changes.
    std::function<void(const ProxyStatus&)> on_status;
    std::function<void(const std::string&)> log;
};

enum class ClientState { connecting, online, failed, stopped };

namespace detail {

inline const char* go_arch() {
#if defined(__x86_64__)
    return "amd64";
#elif defined(__aarch64__)
    return "arm64";
#elif defined(__i386__)
    return "386";
#elif defined(__arm__)
    return "arm";
#else
    return "unknown";
#endif
}

}  // namespace detail

// An frpc-compatible client. The constructor starts it (in the background); watch it with
// status()/wait_running() or ClientOptions::on_status.
class Client {
  public:
    explicit Client(ClientOptions opt)
        : opt_(std::move(opt)),
          key_(derive_key(opt_.token)),
          tls_(!opt_.tls ? nullptr
               : opt_.tls_expected_key.empty()
                   ? TlsContext::client()
                   : TlsContext::client_expecting(opt_.tls_expected_key)),
          tasks_(opt_.max_connections) {
        if (opt_.server.port == 0)
            throw error(errc::invalid_argument, "frp::Client: the server port must not be 0");
        if (opt_.pool_count < 0 || opt_.pool_count > 100)
            throw error(errc::invalid_argument, "frp::Client: pool_count must be 0-100");
        if (opt_.dial_timeout.count() <= 0 || opt_.login_timeout.count() <= 0 ||
            opt_.reconnect_min.count() <= 0 || opt_.reconnect_max < opt_.reconnect_min ||
            opt_.idle_timeout.count() <= 0 || opt_.mux_ping_timeout.count() <= 0 ||
            opt_.max_connections < 2)
            throw error(errc::invalid_argument,
                        "frp::Client: timeouts must be > 0, reconnect_max >= reconnect_min, "
                        "max_connections >= 2");
        if (opt_.wire_protocol == WireProtocol::v2) {
            if (opt_.aead_algorithms.empty())
                throw error(errc::invalid_argument,
                            "frp::Client: wire protocol v2 needs at least one AEAD algorithm");
            for (const auto& a : opt_.aead_algorithms)
                if (!parse_aead_algorithm(a))
                    throw error(errc::invalid_argument,
                                "frp::Client: unknown AEAD algorithm \"" + a +
                                    "\" (expected aes-256-gcm or xchacha20-poly1305)");
        }
        for (const auto& p : opt_.proxies) {
            // The empty name is valid, as in frp (P2PRC's Go nodes use it); it is sent as
            // no proxy_name at all.
            if (p.name.size() > 256)
                throw error(errc::invalid_argument,
                            "frp::Client: a proxy name must have at most 256 characters");
            if (status_.count(p.name))
                throw error(errc::invalid_argument,
                            "frp::Client: " + proxy_label(p.name) + " is used twice");
            if (p.local.port == 0)
                throw error(errc::invalid_argument,
                            "frp::Client: " + proxy_label(p.name) + " needs a local port");
            ProxyStatus st;
            st.name = p.name;
            status_[p.name] = st;
            specs_[p.name] = p;
            if (opt_.use_encryption) specs_[p.name].use_encryption = true;
        }
        thread_ = std::thread([this] { run(); });
    }
    ~Client() { stop(); }
    Client(const Client&) = delete;
    Client& operator=(const Client&) = delete;

    // Logs out (closes the control and every connection) and joins every thread.
    void stop() {
        {
            std::lock_guard<std::mutex> lk(mu_);
            if (stop_) return;
            stop_ = true;
            if (current_) current_->close();
            cv_.notify_all();
        }
        if (thread_.joinable()) thread_.join();
        live_.close_all();
        tasks_.join_all();
        std::lock_guard<std::mutex> lk(mu_);
        if (state_ != ClientState::failed) state_ = ClientState::stopped;
        cv_.notify_all();
    }

    ProxyStatus status(const std::string& name) const {
        std::lock_guard<std::mutex> lk(mu_);
        auto it = status_.find(name);
        if (it == status_.end())
            throw error(errc::invalid_argument, "frp::Client: no " + proxy_label(name));
        return it->second;
    }

    // Waits until the proxy is running with a generation above `newer_than` (0: any), the
    // proxy failed, the client stopped, or `timeout` passed; returns the status then.
    ProxyStatus wait_running(const std::string& name, p2prc::detail::Millis timeout,
                             std::uint64_t newer_than = 0) const {
        std::unique_lock<std::mutex> lk(mu_);
        auto it = status_.find(name);
        if (it == status_.end())
            throw error(errc::invalid_argument, "frp::Client: no " + proxy_label(name));
        cv_.wait_until(lk, p2prc::detail::deadline_after(timeout), [&] {
            const auto& s = it->second;
            return (s.state == ProxyState::running && s.generation > newer_than) ||
                   s.state == ProxyState::failed || state_ == ClientState::failed ||
                   state_ == ClientState::stopped;
        });
        return it->second;
    }

    ClientState state() const {
        std::lock_guard<std::mutex> lk(mu_);
        return state_;
    }
    // The last login refusal or connection failure.
    std::string last_error() const {
        std::lock_guard<std::mutex> lk(mu_);
        return last_error_;
    }
    std::string run_id() const {
        std::lock_guard<std::mutex> lk(mu_);
        return run_id_;
    }
    // Successful logins so far (a reconnect adds one).
    std::uint64_t login_count() const {
        std::lock_guard<std::mutex> lk(mu_);
        return logins_;
    }

  private:
    using Millis = p2prc::detail::Millis;
    using Clock = p2prc::detail::Clock;
    using StreamPtr = detail::StreamPtr;

    enum class Outcome { lost, refused, stopped };

    void log(const std::string& line) {
        if (opt_.log) opt_.log(line);
    }

    bool stopping() {
        std::lock_guard<std::mutex> lk(mu_);
        return stop_;
    }

    // Changes a proxy's status and tells the observer (outside the lock).
    void set_status(const std::string& name, ProxyState st, std::uint16_t port,
                    const std::string& err) {
        ProxyStatus copy;
        {
            std::lock_guard<std::mutex> lk(mu_);
            auto& s = status_[name];
            if (s.state == st && s.remote_port == port && s.error == err) return;
            s.state = st;
            s.remote_port = port;
            s.error = err;
            s.public_endpoint = Endpoint{opt_.server.address, port};
            if (st == ProxyState::running) ++s.generation;
            copy = s;
            cv_.notify_all();
        }
        p2prc::detail::notify(opt_.on_status, copy);
    }

    void run() {
        Millis backoff = opt_.reconnect_min;
        bool ever = false;
        while (!stopping()) {
            bool logged_in = false;
            Outcome out = session(logged_in);
            if (logged_in) {
                ever = true;
                backoff = opt_.reconnect_min;
            }
            for (const auto& [name, spec] : specs_) set_status(name, ProxyState::pending, 0, {});
            if (out == Outcome::stopped || stopping()) break;
            if (out == Outcome::refused && !ever && opt_.login_fail_exit) {
                // The client and its proxies fail together: a waiter sees both at once.
                std::vector<ProxyStatus> changed;
                {
                    std::lock_guard<std::mutex> lk(mu_);
                    state_ = ClientState::failed;
                    for (auto& [name, st] : status_) {
                        st.state = ProxyState::failed;
                        st.remote_port = 0;
                        st.error = "login refused: " + last_error_;
                        changed.push_back(st);
                    }
                    cv_.notify_all();
                }
                for (const auto& st : changed) p2prc::detail::notify(opt_.on_status, st);
                return;
            }
            {
                std::unique_lock<std::mutex> lk(mu_);
                state_ = ClientState::connecting;
                cv_.wait_for(lk, backoff, [&] { return stop_; });
            }
            backoff = std::min(backoff * 2, opt_.reconnect_max);
        }
    }

    void fail(const std::string& why) {
        log(why);
        std::lock_guard<std::mutex> lk(mu_);
        last_error_ = why;
    }

    // A connection to the server with the transport options applied: TLS (after 0x17) or
    // plain. `tcp` receives the TCP connection underneath (closing it aborts everything).
    StreamPtr dial(std::shared_ptr<p2prc::detail::TcpConnection>& tcp) {
        tcp = p2prc::detail::TcpConnection::connect(opt_.server, opt_.dial_timeout);
        if (!tls_) return tcp;
        if (opt_.tls_first_byte) tcp->write_all(&kTlsFirstByte, 1, opt_.dial_timeout);
        return TlsStream::connect(tcp, tls_, opt_.dial_timeout);
    }

    // One login and its control, until the control is lost. Sets `logged_in` once the
    // server accepted the login.
    Outcome session(bool& logged_in) {
        std::shared_ptr<p2prc::detail::TcpConnection> tcp;
        try {
            tcp = p2prc::detail::TcpConnection::connect(opt_.server, opt_.dial_timeout);
        } catch (const error& e) {
            fail(std::string("connect to the server: ") + e.what());
            return Outcome::lost;
        }
        {
            std::lock_guard<std::mutex> lk(mu_);
            if (stop_) return Outcome::stopped;
            current_ = tcp;
        }
        StreamPtr transport = tcp;
        if (tls_) {
            try {
                if (opt_.tls_first_byte) tcp->write_all(&kTlsFirstByte, 1, opt_.dial_timeout);
                transport = TlsStream::connect(tcp, tls_, opt_.dial_timeout);
            } catch (const std::exception& e) {
                tcp->close();
                if (stopping()) return Outcome::stopped;
                fail(std::string("TLS with the server: ") + e.what());
                return Outcome::lost;
            }
        }
        struct Clear {
            Client& c;
            ~Clear() {
                std::lock_guard<std::mutex> lk(c.mu_);
                c.current_.reset();
            }
        } clear{*this};

        std::shared_ptr<MuxSession> mux;
        StreamPtr ctl;
        const Codec codec{opt_.wire_protocol};
        std::optional<V2Crypto> crypto;  // v2: negotiated by the hellos
        // Idle work connections of this login: closed with it.
        auto pooled = std::make_shared<detail::StreamRegistry>();
        struct Closer {
            std::shared_ptr<p2prc::detail::TcpConnection>& tcp;
            std::shared_ptr<MuxSession>& mux;
            std::shared_ptr<detail::StreamRegistry>& pooled;
            ~Closer() {
                pooled->close_all();
                if (mux) mux->close();
                tcp->close();
            }
        } closer{tcp, mux, pooled};
        try {
            if (opt_.tcp_mux) {
                MuxConfig cfg;
                cfg.keepalive_interval = opt_.mux_keepalive_interval;
                cfg.ping_timeout = opt_.mux_ping_timeout;
                mux = std::make_shared<MuxSession>(transport, MuxRole::client, cfg);
                ctl = StreamPtr(mux->open(opt_.dial_timeout));
            } else {
                ctl = transport;
            }
            Login login;
            login.version = kProtocolVersion;
            login.os = "linux";
            login.arch = detail::go_arch();
            login.timestamp = std::chrono::duration_cast<std::chrono::seconds>(
                                  std::chrono::system_clock::now().time_since_epoch())
                                  .count();
            login.privilege_key = privilege_key(opt_.token, login.timestamp);
            login.run_id = run_id();
            login.pool_count = opt_.pool_count;
            if (codec.wire == WireProtocol::v2) {
                // Preface, ClientHello and Login in one write, as frpc does (it does not
                // wait for the ServerHello before sending its Login).
                ClientHello ch;
                ch.transport = "tcp";
                ch.tls = tls_ != nullptr;
                ch.tcp_mux = opt_.tcp_mux;
                ch.codecs = {"json"};
                ch.algorithms = opt_.aead_algorithms;
                ch.client_random = random_bytes(kV2RandomSize);
                std::string hello = encode_client_hello(ch);
                std::string out(v2_preface());
                out += encode_v2_frame(kV2ClientHello, hello);
                out += codec.encode(login);
                ctl->write_all(out.data(), out.size(), opt_.login_timeout);
                V2Frame f = read_v2_frame(*ctl, opt_.login_timeout);
                if (f.type != kV2ServerHello) {
                    fail("login: expected a v2 ServerHello, got frame type " +
                         std::to_string(f.type));
                    return Outcome::lost;
                }
                auto checked = check_server_hello(ch, decode_server_hello(f.payload));
                if (auto* why = std::get_if<std::string>(&checked)) {
                    fail(*why);
                    return Outcome::refused;
                }
                crypto =
                    V2Crypto{std::get<AeadAlgorithm>(checked), transcript_hash(hello, f.payload)};
            } else {
                codec.write(*ctl, login, opt_.login_timeout);
            }
            Message m = codec.read(*ctl, opt_.login_timeout);
            auto* resp = std::get_if<LoginResp>(&m);
            if (!resp) {
                fail(std::string("login: expected LoginResp, got ") + name_of(m));
                return Outcome::lost;
            }
            if (!resp->error.empty()) {
                fail(resp->error);
                return Outcome::refused;
            }
            if (resp->run_id.empty() || resp->run_id.size() > 256) {
                fail("login: the server sent no usable run_id");
                return Outcome::lost;
            }
            {
                std::lock_guard<std::mutex> lk(mu_);
                run_id_ = resp->run_id;
                ++logins_;
                state_ = ClientState::online;
                cv_.notify_all();
            }
            logged_in = true;
            log("logged in to " + opt_.server.to_string() + " as " + resp->run_id + " (wire " +
                to_string(codec.wire) +
                (crypto ? std::string(" ") + to_string(crypto->algorithm) : std::string()) + ")");
        } catch (const std::exception& e) {
            if (stopping()) return Outcome::stopped;
            fail(std::string("login: ") + e.what());
            return Outcome::lost;
        }
        return control(ctl, mux, pooled, codec, crypto);
    }

    Outcome control(const StreamPtr& raw, const std::shared_ptr<MuxSession>& mux,
                    const std::shared_ptr<detail::StreamRegistry>& pooled, const Codec& codec,
                    const std::optional<V2Crypto>& crypto) {
        std::string run_id = this->run_id();
        try {
            StreamPtr encrypted;
            if (crypto)
                encrypted = std::make_shared<AeadStream>(
                    raw, crypto->algorithm,
                    crypto->key(opt_.token, AeadDirection::client_to_server),
                    crypto->key(opt_.token, AeadDirection::server_to_client));
            else
                encrypted = std::make_shared<CryptoStream>(raw, key_);
            p2prc::detail::Stream& ctl = *encrypted;
            for (const auto& [name, spec] : specs_) {
                NewProxy np;
                np.proxy_name = name;
                np.proxy_type = "tcp";
                np.use_encryption = spec.use_encryption;
                np.use_compression = spec.use_compression;
                np.remote_port = spec.remote_port;
                codec.write(ctl, np, Millis(10000));
            }
            detail::MsgReader reader(ctl, codec);
            auto last_pong = Clock::now();
            auto next_ping = Clock::now() + opt_.heartbeat_interval;
            bool heartbeat = opt_.heartbeat_interval.count() > 0;
            bool check_pong = heartbeat && !opt_.tcp_mux && opt_.heartbeat_timeout.count() > 0;
            while (!stopping()) {
                auto m = reader.next(Millis(200));
                auto now = Clock::now();
                if (heartbeat && now >= next_ping) {
                    codec.write(ctl, Ping{}, Millis(10000));
                    next_ping = now + opt_.heartbeat_interval;
                }
                if (check_pong && now - last_pong > opt_.heartbeat_timeout) {
                    fail("control: no Pong within " +
                         std::to_string(opt_.heartbeat_timeout.count()) + " ms");
                    return Outcome::lost;
                }
                if (!m) continue;
                if (std::holds_alternative<ReqWorkConn>(*m)) {
                    std::weak_ptr<MuxSession> weak_mux = mux;
                    bool ok = tasks_.spawn([this, weak_mux, pooled, run_id, codec] {
                        work_connection(weak_mux, pooled, run_id, codec);
                    });
                    if (!ok) log("work connection refused: too many live connections");
                } else if (auto* r = std::get_if<NewProxyResp>(&*m)) {
                    if (!specs_.count(r->proxy_name)) continue;
                    if (!r->error.empty()) {
                        log(proxy_label(r->proxy_name) + " refused: " + r->error);
                        set_status(r->proxy_name, ProxyState::failed, 0, r->error);
                    } else {
                        std::uint16_t port = parse_remote_port(r->remote_addr);
                        log(proxy_label(r->proxy_name) + " is public on port " +
                            std::to_string(port));
                        set_status(r->proxy_name, ProxyState::running, port, {});
                    }
                } else if (auto* p = std::get_if<Pong>(&*m)) {
                    if (!p->error.empty()) {
                        fail("control: the server ended the heartbeat: " + p->error);
                        return Outcome::lost;
                    }
                    last_pong = now;
                }
            }
            return Outcome::stopped;
        } catch (const std::exception& e) {
            if (stopping()) return Outcome::stopped;
            fail(std::string("control lost: ") + e.what());
            return Outcome::lost;
        }
    }

    // ":6000" (frp always answers this shape) -> 6000; anything unreadable -> 0.
    static std::uint16_t parse_remote_port(const std::string& addr) {
        auto colon = addr.rfind(':');
        std::string digits = colon == std::string::npos ? addr : addr.substr(colon + 1);
        if (digits.empty() || digits.size() > 5) return 0;
        unsigned long v = 0;
        for (char c : digits) {
            if (c < '0' || c > '9') return 0;
            v = v * 10 + unsigned(c - '0');
        }
        return v <= 65535 ? std::uint16_t(v) : 0;
    }

    // Answers one ReqWorkConn: opens a work connection, waits for StartWorkConn, pipes it
    // to a new connection to the proxy's local service.
    void work_connection(std::weak_ptr<MuxSession> weak_mux,
                         std::shared_ptr<detail::StreamRegistry> pooled, std::string run_id,
                         Codec codec) {
        StreamPtr w;
        try {
            if (opt_.tcp_mux) {
                auto mux = weak_mux.lock();
                if (!mux) return;
                w = StreamPtr(mux->open(opt_.dial_timeout));
            } else {
                std::shared_ptr<p2prc::detail::TcpConnection> tcp;
                try {
                    w = dial(tcp);
                } catch (...) {
                    if (tcp) tcp->close();
                    throw;
                }
            }
        } catch (const std::exception& e) {
            log(std::string("work connection: ") + e.what());
            return;
        }
        StartWorkConn start;
        {
            detail::StreamRegistry::Registration reg(*pooled, w);
            try {
                NewWorkConn nwc;
                nwc.run_id = run_id;
                std::string out;
                if (codec.wire == WireProtocol::v2) out = std::string(v2_preface());
                out += codec.encode(nwc);
                w->write_all(out.data(), out.size(), Millis(10000));
                // An idle pooled connection waits as long as its login lives (the
                // registry closes it then); the deadline is only a backstop.
                Message m = codec.read(*w, Millis(24LL * 3600 * 1000));
                auto* s = std::get_if<StartWorkConn>(&m);
                if (!s || !s->error.empty()) {
                    w->close();
                    return;
                }
                start = std::move(*s);
            } catch (const std::exception&) {
                w->close();
                return;
            }
        }
        detail::StreamRegistry::Registration wreg(live_, w);
        auto it = specs_.find(start.proxy_name);
        if (it == specs_.end()) {
            w->close();
            return;
        }
        const ProxySpec& spec = it->second;
        StreamPtr local;
        try {
            local = p2prc::detail::TcpConnection::connect(spec.local, Millis(10000));
        } catch (const std::exception& e) {
            log(proxy_label(spec.name) + ": local service " + spec.local.to_string() + ": " +
                e.what());
            w->close();
            return;
        }
        detail::StreamRegistry::Registration lreg(live_, local);
        try {
            if (spec.use_encryption) w = std::make_shared<CryptoStream>(w, key_);
            if (spec.use_compression) w = std::make_shared<SnappyStream>(w);
        } catch (const std::exception&) {
            w->close();
            local->close();
            return;
        }
        detail::pipe_streams(w, local, opt_.idle_timeout);
    }

    const ClientOptions opt_;
    const CipherKey key_;
    const std::shared_ptr<TlsContext> tls_;
    std::map<std::string, ProxySpec> specs_;  // fixed after construction

    mutable std::mutex mu_;
    mutable std::condition_variable cv_;
    std::map<std::string, ProxyStatus> status_;
    ClientState state_ = ClientState::connecting;
    std::string last_error_, run_id_;
    std::uint64_t logins_ = 0;
    bool stop_ = false;
    std::shared_ptr<p2prc::detail::TcpConnection> current_;

    detail::StreamRegistry live_;
    detail::TaskGroup tasks_;
    std::thread thread_;
};

}  // namespace p2prc::frp
