// The frps role: a relay that frpc (stock, or p2prc::frp::Client) logs in to and that
// opens public TCP ports whose connections are piped to the client's local services.
//
// One port serves everything. Each accepted connection is told apart by its first byte:
// 0x00 is a yamux header (a tcp_mux client: the connection is a yamux session whose
// streams are logical connections), an frp message type byte or the 'F' of the v2
// preface is a plain logical connection (tcp_mux off), 0x17 is frpc's TLS marker
// (dropped; a TLS handshake follows) and 0x16 a bare TLS ClientHello. Inside TLS the
// same first-byte test tells yamux from plain. So clients with tcp_mux on or off, with
// TLS or without, work against the same server without any setting, unlike stock frps.
//
// Each logical connection then picks its wire protocol by its first 7 bytes, as frps
// 0.69+ does: the v2 preface (frp/wire_v2.hpp) makes it v2, anything else is replayed to
// the v1 reader. A v2 control may start with a ClientHello, answered at once with a
// ServerHello (or frps's refusal text, then closed).
//
// A logical connection's first message decides its role (10 s to send it): Login makes
// it a control connection, NewWorkConn a pooled work connection of the control with that
// run_id. After a successful Login both directions of the control are encrypted: v1 with
// AES-128-CFB keyed by the token (frp/crypto.hpp), v2 with the negotiated AEAD keyed by
// HKDF(token, transcript) (frp/aead.hpp); a record that fails its tag ends the control.
// Work connections keep the codec of their own preface. The server keeps each client's
// pool of idle work connections filled with ReqWorkConn; a user connecting to a proxy's
// public port takes one, the server writes StartWorkConn on it and then pipes raw bytes.
//
// Threads: one accepts, one per logical connection being classified, one per control,
// one per yamux session, one per proxy listener and two per piped user connection, all
// owned by the Server (bounded by ServerOptions::max_connections) and joined by stop().
// What one client address may hold before logging in is bounded apart (pending
// connections, yamux sessions, streams owing a first message, stream opens a second),
// so a flood from one address never uses up what the others need to log in.
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
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace p2prc::frp {

// What a relay carried, counted as it happens (read by Server::stats() and by the node's
// /metrics). A stats object may be shared by several servers, and each count is also added
// to `parent` when set, so a pool of relays keeps totals that outlive its relays.
struct TrafficStats {
    std::atomic<std::uint64_t> connections_total{0};  // user connections piped to a client
    std::atomic<std::uint64_t> connections_live{0};
    std::atomic<std::uint64_t> bytes_in{0};   // from users to the client's service
    std::atomic<std::uint64_t> bytes_out{0};  // from the service back to users
    std::atomic<std::uint64_t> refused_connections{0};  // beyond max_connections
    std::atomic<std::uint64_t> refused_clients{0};      // logins beyond max_clients
    std::shared_ptr<TrafficStats> parent;

    void connection_opened() {
        for (auto* s = this; s; s = s->parent.get()) ++s->connections_total, ++s->connections_live;
    }
    void connection_closed() {
        for (auto* s = this; s; s = s->parent.get()) --s->connections_live;
    }
    void bytes(bool inbound, std::uint64_t n) {
        for (auto* s = this; s; s = s->parent.get()) (inbound ? s->bytes_in : s->bytes_out) += n;
    }
    void refused_connection() {
        for (auto* s = this; s; s = s->parent.get()) ++s->refused_connections;
    }
    void refused_client() {
        for (auto* s = this; s; s = s->parent.get()) ++s->refused_clients;
    }
};

// How clients are grouped for the per-address bounds and the owner check: an IPv4
// address, or the /64 of an IPv6 one (one site's addresses).
inline std::string address_group(const IpAddress& a) {
    if (a.is_v4()) return a.to_string();
    std::uint8_t prefix[16] = {};
    std::copy(a.bytes(), a.bytes() + 8, prefix);
    return IpAddress::from_v6(prefix).to_string() + "/64";
}

struct ServerOptions {
    // Where clients connect (port 0 = any free port; Server::port() tells which).
    Endpoint bind{IpAddress::from_string("0.0.0.0"), 7000};
    // Address the public proxy ports listen on; default: bind's address.
    std::optional<IpAddress> proxy_bind;
    // Shared secret: login proof and the cipher key. Empty is frp's default.
    std::string token;
    // Logged-in clients at once. Each costs a thread and a few buffers, so hundreds fit.
    std::size_t max_clients = 1024;
    std::size_t max_proxies_per_client = 32;
    // A Login's pool_count is clamped to this (frps's max_pool_count).
    std::int64_t max_pool_count = 5;
    // Live connection tasks: one per connection being classified, per control, per yamux
    // session and per piped user connection (which runs a second thread for its other
    // direction). Beyond it, new connections are closed at once.
    std::size_t max_connections = 2048;
    // First message of a logical connection (and the first byte of a connection).
    p2prc::detail::Millis login_timeout{10000};
    // A control without tcp_mux that sends no Ping for this long is closed; 0 = never.
    p2prc::detail::Millis heartbeat_timeout{90000};
    // How long a user connection waits for a work connection.
    p2prc::detail::Millis user_conn_timeout{10000};
    // yamux keepalive towards tcp_mux clients: a ping every interval, the session is
    // dropped when the answer takes longer than mux_ping_timeout.
    p2prc::detail::Millis mux_keepalive_interval{60000};
    p2prc::detail::Millis mux_ping_timeout{10000};
    // A piped connection with no byte in one direction for this long is closed.
    p2prc::detail::Millis idle_timeout{3600000};
    // TLS (0x17 + TLS, or bare TLS) is always accepted, with this certificate and key
    // (PEM files) or, both empty, a self-signed certificate made at start.
    std::string tls_cert_file, tls_key_file;
    // Or a self-signed certificate for this private key (PEM): a p2prc node gives its
    // identity key, so clients that know its identity can verify the relay.
    std::string tls_key_pem;
    // Refuse connections that do not start TLS (frps's tls_only).
    bool tls_only = false;
    // Logins are accepted from this address only (its /64 for IPv6); others get a
    // LoginResp error. Unset: from anywhere. A relay handed to one requester sets it.
    std::optional<IpAddress> owner;
    // Public ports clients may open (frps's allow_ports); empty: any port. A proxy asking
    // for remote_port 0 gets a free port inside these ranges.
    std::vector<PortRange> allow_ports;
    // Ports never handed out, whatever allow_ports says (the host's own services).
    std::vector<std::uint16_t> deny_ports;
    // Bounds per client address (IPv4 /32, IPv6 /64), so that a flood from one address
    // never locks out the others. Pending: connections (or yamux sessions) that have not
    // yet carried a successful Login or NewWorkConn; beyond the cap new ones are closed
    // at once. Sessions: yamux sessions open at once, logged in or not.
    std::size_t max_pending_per_address = 32;
    std::size_t max_sessions_per_address = 64;
    // Streams of one yamux session still owing their first message (each holds a
    // thread); at this many the session's further streams wait in its accept backlog
    // (MuxConfig::accept_backlog; beyond it, reset).
    std::size_t max_pending_streams_per_session = 16;
    // Streams one yamux session may open per second (MuxConfig::max_opens_per_second):
    // room for a busy tunnel's work connections, not for a flood of SYNs.
    std::uint32_t max_stream_opens_per_second = 1000;
    // Optional event log (logins, proxies, refusals), one line per call.
    std::function<void(const std::string&)> log;
    // Where traffic is counted; default: a stats object of the server's own.
    std::shared_ptr<TrafficStats> stats;
};

// What a server is doing now, for whoever decides whether it is still in use.
struct ServerActivity {
    std::size_t clients = 0;            // logged-in controls
    std::size_t proxies = 0;            // public ports open
    std::size_t piped_connections = 0;  // user connections being piped now
    // When a user connection last started or ended; unset: never.
    std::optional<p2prc::detail::Clock::time_point> last_traffic;
    std::size_t pending_connections = 0;  // connections and sessions not logged in yet
    std::size_t mux_sessions = 0;
    // Connections closed at once for the per-address caps, since start.
    std::uint64_t refused_pending = 0, refused_sessions = 0;
};

// A registered proxy as the server sees it.
struct ServerProxyInfo {
    std::string name;
    std::string run_id;
    std::uint16_t port = 0;
    bool use_encryption = false, use_compression = false;
    WireProtocol wire = WireProtocol::v1;  // of the control that registered it
};

namespace detail {

// The bytes that opened a logical connection: its codec, the v2 crypto it negotiated (a
// v2 control only) and its first message.
struct LogicalStart {
    StreamPtr stream;
    Codec codec;
    std::optional<V2Crypto> crypto;
    Message first;
};

// A pooled work connection and the codec its StartWorkConn must use.
struct PooledWork {
    StreamPtr stream;
    Codec codec;
};

class ServerCore;

// A connection's place in its address's count of pending connections: given back once,
// when the connection first carries a successful Login or NewWorkConn, or when it ends.
class PendingSlot {
  public:
    PendingSlot(std::mutex& mu, std::map<std::string, std::size_t>& counts, std::string key)
        : mu_(mu), counts_(counts), key_(std::move(key)) {}
    ~PendingSlot() { release(); }
    PendingSlot(const PendingSlot&) = delete;
    PendingSlot& operator=(const PendingSlot&) = delete;

    void release() noexcept {
        if (released_.exchange(true)) return;
        std::lock_guard<std::mutex> lk(mu_);
        auto it = counts_.find(key_);
        if (it != counts_.end() && --it->second == 0) counts_.erase(it);
    }
    bool released() const noexcept { return released_.load(); }
    const std::string& key() const noexcept { return key_; }

  private:
    std::mutex& mu_;
    std::map<std::string, std::size_t>& counts_;
    std::string key_;
    std::atomic<bool> released_{false};
};
using PendingPtr = std::shared_ptr<PendingSlot>;

// One tcp proxy: its public listener and the thread accepting on it.
struct ServerProxy {
    NewProxy spec;
    std::uint16_t port = 0;
    std::unique_ptr<p2prc::detail::TcpListener> listener;
    std::thread acceptor;

    ServerProxy() = default;
    ServerProxy(const ServerProxy&) = delete;
    ServerProxy& operator=(const ServerProxy&) = delete;
    ~ServerProxy() { close(); }

    // Stops accepting and releases the port (the descriptor is closed here, not later).
    void close() noexcept {
        if (listener) listener->close();
        if (acceptor.joinable()) {
            if (acceptor.get_id() == std::this_thread::get_id()) {
                // Cannot happen (controls empty their proxies before they die); were it
                // to, the acceptor still uses the listener, so neither may be destroyed.
                acceptor.detach();
                (void)listener.release();
                return;
            }
            acceptor.join();
        }
        listener.reset();
    }
};

// A logged-in client: its encrypted control, its proxies and its work-connection pool.
class ServerControl : public std::enable_shared_from_this<ServerControl> {
  public:
    // `control` is `raw` with the control's encryption on top (v1 CFB or v2 AEAD).
    ServerControl(ServerCore& core, StreamPtr raw, StreamPtr control, Codec codec,
                  std::string run_id, std::int64_t pool_count, bool mux)
        : core_(core),
          raw_(std::move(raw)),
          crypto_(std::move(control)),
          codec_(codec),
          run_id_(std::move(run_id)),
          pool_count_(pool_count),
          mux_(mux) {}

    const std::string& run_id() const { return run_id_; }
    bool mux() const { return mux_; }
    const Codec& codec() const { return codec_; }
    Stream& control() { return *crypto_; }
    StreamPtr raw() const { return raw_; }

    // Encrypted message on the control; a failure closes the control.
    bool send(const Message& m) {
        std::lock_guard<std::mutex> lk(write_mu_);
        try {
            codec_.write(*crypto_, m, Millis(10000));
            return true;
        } catch (const std::exception&) {
            raw_->close();
            return false;
        }
    }

    // Parks an idle work connection; false when the pool is full or the control gone.
    bool park(StreamPtr w, Codec codec) {
        std::lock_guard<std::mutex> lk(mu_);
        if (closed_ || std::int64_t(pool_.size()) >= pool_count_ + 10) return false;
        pool_.push_back(PooledWork{std::move(w), codec});
        pool_cv_.notify_one();
        return true;
    }

    // A work connection on which `start` was written, or nullptr (no connection came
    // within `wait`, or the control is gone). Refills the pool after each take.
    StreamPtr take_work_conn(const StartWorkConn& start, Millis wait) {
        for (std::int64_t attempt = 0; attempt <= pool_count_; ++attempt) {
            PooledWork w;
            {
                std::unique_lock<std::mutex> lk(mu_);
                if (closed_) return nullptr;
                if (pool_.empty()) {
                    lk.unlock();
                    send(ReqWorkConn{});  // ask for one, as frps does when none is idle
                    lk.lock();
                }
                pool_cv_.wait_until(lk, p2prc::detail::deadline_after(wait),
                                    [&] { return closed_ || !pool_.empty(); });
                if (closed_ || pool_.empty()) return nullptr;
                w = std::move(pool_.front());
                pool_.pop_front();
            }
            send(ReqWorkConn{});  // refill, as frps does after every use
            try {
                w.codec.write(*w.stream, start, Millis(10000));
                return w.stream;
            } catch (const std::exception&) {
                w.stream->close();  // a stale pooled connection: try the next one
            }
        }
        return nullptr;
    }

    // Closes the control, its proxies (ports released before this returns) and its pool.
    // Idempotent; callable from any thread but a proxy acceptor.
    void shutdown();

    std::size_t proxy_count() {
        std::lock_guard<std::mutex> lk(mu_);
        return proxies_.size();
    }
    bool closed() {
        std::lock_guard<std::mutex> lk(mu_);
        return closed_;
    }

    // Adds a proxy unless the control is closed (then it is closed right away).
    bool add_proxy(std::unique_ptr<ServerProxy> p) {
        std::unique_lock<std::mutex> lk(mu_);
        if (closed_) {
            lk.unlock();
            p->close();
            return false;
        }
        proxies_[p->spec.proxy_name] = std::move(p);
        return true;
    }
    std::unique_ptr<ServerProxy> remove_proxy(const std::string& name) {
        std::lock_guard<std::mutex> lk(mu_);
        auto it = proxies_.find(name);
        if (it == proxies_.end()) return nullptr;
        auto p = std::move(it->second);
        proxies_.erase(it);
        return p;
    }
    std::vector<ServerProxyInfo> proxies() {
        std::lock_guard<std::mutex> lk(mu_);
        std::vector<ServerProxyInfo> out;
        for (auto& [name, p] : proxies_)
            out.push_back({name, run_id_, p->port, p->spec.use_encryption, p->spec.use_compression,
                           codec_.wire});
        return out;
    }

  private:
    ServerCore& core_;
    StreamPtr raw_;
    StreamPtr crypto_;
    Codec codec_;
    std::string run_id_;
    std::int64_t pool_count_;
    bool mux_;
    std::mutex write_mu_;
    std::mutex mu_;
    std::condition_variable pool_cv_;
    std::deque<PooledWork> pool_;
    std::map<std::string, std::unique_ptr<ServerProxy>> proxies_;
    bool closed_ = false;
};

class ServerCore {
  public:
    explicit ServerCore(ServerOptions opt)
        : opt_(std::move(opt)),
          key_(derive_key(opt_.token)),
          proxy_bind_(opt_.proxy_bind ? *opt_.proxy_bind : opt_.bind.address),
          tls_(opt_.tls_key_pem.empty() ? TlsContext::server(opt_.tls_cert_file, opt_.tls_key_file)
                                        : TlsContext::server_with_key(opt_.tls_key_pem)),
          tasks_(opt_.max_connections) {}

    const ServerOptions& options() const { return opt_; }
    bool stopping() const { return stopping_.load(); }

    void log(const std::string& line) {
        if (opt_.log) opt_.log(line);
    }

    // ---- the public port ------------------------------------------------------------

    void accept_loop(p2prc::detail::TcpListener& l) {
        while (!stopping_.load()) {
            std::unique_ptr<p2prc::detail::TcpConnection> c;
            try {
                c = l.accept(Millis(500));
            } catch (const error& e) {
                if (e.code() == errc::state_error) return;  // closed by stop()
                // Out of descriptors or similar: pause rather than stop accepting.
                log(std::string("accept: ") + e.what());
                std::this_thread::sleep_for(Millis(100));
                continue;
            }
            if (!c) continue;
            std::shared_ptr<p2prc::detail::TcpConnection> conn(std::move(c));
            auto remote = conn->remote_endpoint();
            auto pending = admit(remote ? address_group(remote->address) : std::string("?"));
            if (!pending) {
                conn->close();  // this address has enough connections still to log in
                continue;
            }
            if (!tasks_.spawn([this, conn, pending] { handle_connection(conn, pending); })) {
                opt_.stats->refused_connection();
                conn->close();
            }
        }
    }

    // A pending slot for one more connection from `key`, or nullptr at its cap.
    PendingPtr admit(const std::string& key) {
        std::lock_guard<std::mutex> lk(count_mu_);
        auto& n = pending_[key];
        if (n >= opt_.max_pending_per_address) {
            ++refused_pending_;
            return nullptr;
        }
        ++n;
        return std::make_shared<PendingSlot>(count_mu_, pending_, key);
    }

    // Sniffs the first byte: TLS (then sniffs again inside), yamux or a plain message.
    void handle_connection(std::shared_ptr<p2prc::detail::TcpConnection> tcp,
                           const PendingPtr& pending) {
        StreamRegistry::Registration reg(live_, tcp);
        auto deadline = p2prc::detail::deadline_after(opt_.login_timeout);
        auto left = [&] {
            auto l = std::chrono::duration_cast<Millis>(deadline - Clock::now());
            return l.count() > 0 ? l : Millis(1);
        };
        int first = peek_byte(*tcp, left());
        StreamPtr s = tcp;
        if (first == 0x16 || first == kTlsFirstByte) {
            try {
                unsigned char marker;
                if (first == kTlsFirstByte) tcp->read_exact(&marker, 1, left());
                auto tls = TlsStream::accept(tcp, tls_, left());
                s = tls;
                unsigned char b = 0;
                if (tls->read_some(&b, 1, left()) != 1) throw error(errc::io_error, "no data");
                first = b;
                s = std::make_shared<ReplayStream>(tls, std::string(1, char(b)));
            } catch (const std::exception& e) {
                log("TLS connection from " + tcp->describe() + " failed: " + e.what());
                tcp->close();
                return;
            }
        } else if (opt_.tls_only) {
            tcp->close();
            return;
        }
        if (first == 0x00) {
            run_mux_session(s, pending, deadline);
        } else if (first >= 0 && (is_known_type(char(first)) || first == kV2Preface[0])) {
            // The same deadline as the first byte: a connection has login_timeout in all
            // to say what it is for (frps: 10 s).
            handle_logical(s, false, pending, left());
        } else {
            tcp->close();
        }
    }

    // The first byte of a connection without taking it, or -1 (timeout, end, error).
    static int peek_byte(p2prc::detail::TcpConnection& c, Millis timeout) {
        auto deadline = p2prc::detail::deadline_after(timeout);
        for (;;) {
            unsigned char b = 0;
            ssize_t k = ::recv(c.native_handle(), &b, 1, MSG_PEEK);
            if (k == 1) return b;
            if (k == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) return -1;
            int wait = p2prc::detail::millis_until(deadline);
            if (wait == 0) return -1;
            pollfd p{c.native_handle(), POLLIN, 0};
            ::poll(&p, 1, wait < 200 ? wait : 200);
        }
    }

    // A yamux session: each stream the client opens is a logical connection. The session
    // counts as pending (see ServerOptions) until one of its streams logs in or joins a
    // pool, and must do so by `deadline`; its streams are bounded in rate and in how many
    // may be waiting for their first message at once.
    void run_mux_session(StreamPtr transport, const PendingPtr& pending,
                         Clock::time_point deadline) {
        const std::string key = pending->key();
        {
            std::lock_guard<std::mutex> lk(count_mu_);
            auto& n = sessions_[key];
            if (n >= opt_.max_sessions_per_address) {
                ++refused_sessions_;
                if (n == 0) sessions_.erase(key);
                transport->close();
                return;
            }
            ++n;
        }
        struct SessionCount {
            ServerCore& core;
            const std::string& key;
            ~SessionCount() {
                std::lock_guard<std::mutex> lk(core.count_mu_);
                auto it = core.sessions_.find(key);
                if (it != core.sessions_.end() && --it->second == 0) core.sessions_.erase(it);
            }
        } count{*this, key};
        MuxConfig cfg;
        cfg.keepalive_interval = opt_.mux_keepalive_interval;
        cfg.ping_timeout = opt_.mux_ping_timeout;
        cfg.max_opens_per_second = opt_.max_stream_opens_per_second;
        MuxSession session(transport, MuxRole::server, cfg);
        auto waiting = std::make_shared<std::atomic<std::size_t>>(0);
        std::string why;
        while (!stopping_.load()) {
            if (!pending->released() && Clock::now() >= deadline) {
                why = "no login within " + std::to_string(opt_.login_timeout.count()) + " ms";
                session.close();
                break;
            }
            if (waiting->load() >= opt_.max_pending_streams_per_session) {
                // Enough of its streams still owe their first message: the others wait
                // (a burst of work connections is served a moment later, a flood of
                // silent streams only holds this session up).
                if (session.closed()) break;
                std::this_thread::sleep_for(Millis(5));
                continue;
            }
            std::unique_ptr<MuxStream> s;
            try {
                s = session.accept(Millis(250));
            } catch (const error&) {
                break;  // the session ended (peer gone, keepalive failed, stop)
            }
            if (!s) continue;
            StreamPtr stream(std::move(s));
            waiting->fetch_add(1);
            if (!tasks_.spawn([this, stream, pending, waiting] {
                    handle_logical(stream, true, pending, opt_.login_timeout, waiting.get());
                })) {
                waiting->fetch_sub(1);
                stream->close();
            }
        }
        log("yamux session " + transport->describe() +
            " ended: " + (why.empty() ? session.close_reason() : why));
        // ~MuxSession kills every stream of the session, controls included.
    }

    // The first message decides: Login (a control) or NewWorkConn (a pooled work conn).
    // `waiting` (a session's count of streams owing their first message) is decremented
    // once the first message is in.
    void handle_logical(StreamPtr s, bool mux, const PendingPtr& pending, Millis first_message,
                        std::atomic<std::size_t>* waiting = nullptr) {
        LogicalStart start;
        std::string failed;
        try {
            start = start_logical(s, first_message);
        } catch (const std::exception& e) {
            failed = e.what();
            if (failed.empty()) failed = "error";
        }
        if (waiting) waiting->fetch_sub(1);
        if (!failed.empty()) {
            log("connection " + s->describe() + " closed before its first message: " + failed);
            s->close();
            return;
        }
        if (auto* login = std::get_if<Login>(&start.first)) {
            run_control(start, std::move(*login), mux, pending);
        } else if (auto* nwc = std::get_if<NewWorkConn>(&start.first)) {
            auto ctl = find_control(nwc->run_id);
            if (!ctl || !ctl->park(start.stream, start.codec)) {
                start.stream->close();
            } else {
                pending->release();  // a work connection of a logged-in client
            }
        } else {
            log("connection " + s->describe() + " closed: its first message is " +
                name_of(start.first) + ", not Login or NewWorkConn");
            start.stream->close();
        }
    }

    // The preface (7 bytes: v2, else replayed to the v1 reader), a v2 ClientHello if one
    // comes, and the first message, all within `timeout` (login_timeout, frps: 10 s). Throws with
    // the reason on anything malformed; a refused ClientHello is answered first.
    LogicalStart start_logical(const StreamPtr& s, Millis timeout) {
        auto deadline = p2prc::detail::deadline_after(timeout);
        auto left = [&] {
            auto l = std::chrono::duration_cast<Millis>(deadline - Clock::now());
            return l.count() > 0 ? l : Millis(0);
        };
        LogicalStart out;
        char head[kV2PrefaceSize];
        s->read_exact(head, sizeof head, left());
        if (std::string_view(head, sizeof head) != v2_preface()) {
            out.stream = std::make_shared<ReplayStream>(s, std::string(head, sizeof head));
            out.first = read_msg(*out.stream, left());
            return out;
        }
        out.stream = s;
        out.codec.wire = WireProtocol::v2;
        V2Opening v2 = accept_v2_opening(*s, left());
        if (!v2.refused.empty()) {
            linger_close(*s);  // the refusal was sent: a moment for the client to read it
            throw error(errc::protocol_error, "v2 ClientHello refused: " + v2.refused);
        }
        out.crypto = v2.crypto;
        out.first = std::move(v2.first);
        return out;
    }

    // Ends a connection after a last answer: half-close, a moment for the client to read
    // it (what it sent meanwhile is drained, so the close does not reset the answer away).
    static void linger_close(Stream& s) {
        try {
            s.shutdown_write();
            char sink[256];
            auto until = p2prc::detail::deadline_after(Millis(1000));
            while (Clock::now() < until && s.read_some(sink, sizeof sink, Millis(200)) > 0) {
            }
        } catch (const std::exception&) {
        }
        s.close();
    }

    // ---- controls -------------------------------------------------------------------

    std::shared_ptr<ServerControl> find_control(const std::string& run_id) {
        std::lock_guard<std::mutex> lk(mu_);
        auto it = controls_.find(run_id);
        return it == controls_.end() ? nullptr : it->second;
    }

    static std::string new_run_id() {
        CipherIv r = random_iv();
        static const char* hex = "0123456789abcdef";
        std::string out;
        for (int i = 0; i < 8; ++i) {
            out += hex[r[i] >> 4];
            out += hex[r[i] & 15];
        }
        return out;
    }

    std::string check_login(const Login& login, const std::string& from) {
        auto v = parse_version(login.version);
        if (v < std::array<long, 3>{0, 18, 0})
            return "Please upgrade your frpc version to at least 0.18.0";
        if (privilege_key(opt_.token, login.timestamp) != login.privilege_key)
            return "token in login doesn't match token from configuration";
        if (opt_.owner && from != address_group(*opt_.owner))
            return "this relay serves only the address that requested it, not " + from;
        return {};
    }

    void run_control(const LogicalStart& start, Login login, bool mux,
                     const PendingPtr& pending) {
        const StreamPtr& raw = start.stream;
        const Codec codec = start.codec;
        std::string run_id = login.run_id.empty() ? new_run_id() : login.run_id;
        // frps checks the negotiation before the token (its control needs the keys first).
        std::string why = codec.wire == WireProtocol::v2 && !start.crypto
                              ? "missing v2 crypto negotiation"
                              : check_login(login, pending->key());
        if (why.empty() && run_id.size() > 64) why = "run_id is too long (at most 64 characters)";
        std::shared_ptr<ServerControl> ctl;
        if (why.empty()) {
            std::int64_t pool =
                std::min(std::max<std::int64_t>(login.pool_count, 0), opt_.max_pool_count);
            StreamPtr control;
            if (codec.wire == WireProtocol::v2)
                control = std::make_shared<AeadStream>(
                    raw, start.crypto->algorithm,
                    start.crypto->key(opt_.token, AeadDirection::server_to_client),
                    start.crypto->key(opt_.token, AeadDirection::client_to_server));
            else
                control = std::make_shared<CryptoStream>(raw, key_);
            ctl = std::make_shared<ServerControl>(*this, raw, control, codec, run_id, pool, mux);
            std::shared_ptr<ServerControl> old;
            {
                std::lock_guard<std::mutex> lk(mu_);
                auto it = controls_.find(run_id);
                if (it != controls_.end()) old = it->second;
                if (!old && controls_.size() >= opt_.max_clients) {
                    why = "too many clients (the server allows " +
                          std::to_string(opt_.max_clients) + ")";
                    opt_.stats->refused_client();
                }
            }
            if (old) {
                // A reconnecting client: its stale control goes first, ports included.
                log("client " + run_id + " logged in again: replacing its old control");
                old->shutdown();
            }
            if (why.empty()) {
                std::lock_guard<std::mutex> lk(mu_);
                if (stopping_.load()) {
                    why = "the server is stopping";
                } else {
                    controls_[run_id] = ctl;
                }
            }
        }
        if (!why.empty()) {
            log("login refused from " + raw->describe() + ": " + why);
            try {
                LoginResp resp;
                resp.version = kProtocolVersion;
                resp.error = why;
                codec.write(*raw, resp, Millis(5000));
            } catch (const std::exception&) {
            }
            linger_close(*raw);
            return;
        }
        pending->release();  // logged in: no longer counts against its address
        log("client " + run_id + " logged in from " + raw->describe() +
            (mux ? " (tcp_mux" : " (no tcp_mux") + ", wire " + to_string(codec.wire) +
            (start.crypto ? std::string(" ") + to_string(start.crypto->algorithm) : "") + ")");
        serve_control(ctl, login);
        ctl->shutdown();
        {
            std::lock_guard<std::mutex> lk(mu_);
            auto it = controls_.find(run_id);
            if (it != controls_.end() && it->second == ctl) controls_.erase(it);
        }
        log("client " + run_id + " is gone");
    }

    void serve_control(const std::shared_ptr<ServerControl>& ctl, const Login& login) {
        (void)login;
        try {
            LoginResp resp;
            resp.version = kProtocolVersion;
            resp.run_id = ctl->run_id();
            ctl->codec().write(*ctl->raw(), resp, Millis(10000));
        } catch (const std::exception&) {
            return;
        }
        std::int64_t pool =
            std::min(std::max<std::int64_t>(login.pool_count, 0), opt_.max_pool_count);
        for (std::int64_t i = 0; i < pool; ++i)
            if (!ctl->send(ReqWorkConn{})) return;
        MsgReader reader(ctl->control(), ctl->codec());
        auto last_ping = Clock::now();
        bool heartbeat = !ctl->mux() && opt_.heartbeat_timeout.count() > 0;
        while (!stopping_.load() && !ctl->closed()) {
            std::optional<Message> m;
            try {
                m = reader.next(Millis(250));
            } catch (const std::exception& e) {
                log("control " + ctl->run_id() + ": " + e.what());
                return;
            }
            if (heartbeat && Clock::now() - last_ping > opt_.heartbeat_timeout) {
                log("control " + ctl->run_id() + ": no heartbeat within " +
                    std::to_string(opt_.heartbeat_timeout.count()) + " ms");
                return;
            }
            if (!m) continue;
            if (auto* np = std::get_if<NewProxy>(&*m)) {
                NewProxyResp resp = new_proxy(ctl, *np);
                if (!ctl->send(resp)) return;
            } else if (auto* cp = std::get_if<CloseProxy>(&*m)) {
                close_proxy(ctl, cp->proxy_name);
            } else if (std::holds_alternative<Ping>(*m)) {
                last_ping = Clock::now();
                if (!ctl->send(Pong{})) return;
            }
            // Anything else on a control is ignored, as frps does.
        }
    }

    // ---- proxies --------------------------------------------------------------------

    NewProxyResp new_proxy(const std::shared_ptr<ServerControl>& ctl, const NewProxy& np) {
        NewProxyResp resp;
        resp.proxy_name = np.proxy_name;
        std::string type = np.proxy_type.empty() ? "tcp" : np.proxy_type;
        auto fail = [&](std::string why) {
            log(proxy_label(np.proxy_name) + " of " + ctl->run_id() + " refused: " + why);
            resp.error = std::move(why);
            return resp;
        };
        // An empty name is a name: frps 0.45 accepts it, and P2PRC's Go client sends no
        // proxy_name at all ({"remote_port":N}). Like frps, names are unique per server.
        if (type == "udp") return fail("udp proxies are not supported");
        if (type == "http" || type == "https" || type == "stcp" || type == "xtcp" ||
            type == "sudp" || type == "tcpmux")
            return fail("proxy [" + np.proxy_name + "] type [" + type +
                        "] is not supported by this server (tcp only)");
        if (type != "tcp") return fail("proxy [" + np.proxy_name + "] type [" + type + "] error");
        if (ctl->proxy_count() >= opt_.max_proxies_per_client)
            return fail("exceed the max_ports_per_client");
        if (np.remote_port < 0 || np.remote_port > 65535) return fail("port not allowed");
        auto port = std::uint16_t(np.remote_port);
        if (port != 0 && !port_allowed(port)) return fail("port not allowed");
        {
            std::lock_guard<std::mutex> lk(mu_);
            if (names_.count(np.proxy_name))
                return fail("proxy name [" + np.proxy_name + "] is already in use");
            if (port != 0 && ports_.count(port)) return fail("port already used");
            names_.insert(np.proxy_name);  // reserved while we bind
        }
        auto p = std::make_unique<ServerProxy>();
        p->spec = np;
        p->spec.proxy_type = type;
        try {
            p->listener = bind_proxy(port);
        } catch (const error&) {
            std::lock_guard<std::mutex> lk(mu_);
            names_.erase(np.proxy_name);
            return fail(port == 0 ? "no available port" : "port unavailable");
        }
        p->port = p->listener->port();
        {
            std::lock_guard<std::mutex> lk(mu_);
            ports_.insert(p->port);
        }
        auto* listener = p->listener.get();
        std::weak_ptr<ServerControl> weak = ctl;
        NewProxy spec = p->spec;
        std::uint16_t bound = p->port;
        p->acceptor = std::thread([this, listener, weak, spec, bound] {
            proxy_accept_loop(*listener, weak, spec, bound);
        });
        std::string name = np.proxy_name;
        if (!ctl->add_proxy(std::move(p))) {
            release(name, bound);
            return fail("the control is closed");
        }
        log(proxy_label(name) + " of " + ctl->run_id() + " listens on port " +
            std::to_string(bound));
        resp.remote_addr = ":" + std::to_string(bound);
        return resp;
    }

    // Whether a client may open this public port (ServerOptions::allow_ports, deny_ports).
    bool port_allowed(std::uint16_t port) const {
        if (port == 0) return false;
        for (auto d : opt_.deny_ports)
            if (d == port) return false;
        if (opt_.allow_ports.empty()) return true;
        for (const auto& r : opt_.allow_ports)
            if (r.contains(port)) return true;
        return false;
    }

    // A listener on `port`, or for 0 on a free allowed port: the system's choice when it
    // is allowed, else random picks inside the allowed ranges. Throws when none binds.
    std::unique_ptr<p2prc::detail::TcpListener> bind_proxy(std::uint16_t port) {
        using p2prc::detail::TcpListener;
        if (port != 0) return std::make_unique<TcpListener>(Endpoint{proxy_bind_, port});
        auto l = std::make_unique<TcpListener>(Endpoint{proxy_bind_, 0});
        if (port_allowed(l->port())) return l;
        l.reset();
        std::uint64_t total = 0;
        for (const auto& r : opt_.allow_ports) total += std::uint64_t(r.hi) - r.lo + 1;
        if (total == 0) throw error(errc::io_error, "no available port");
        for (int attempt = 0; attempt < 64; ++attempt) {
            CipherIv rnd = random_iv();
            std::uint64_t pick = 0;
            for (int i = 0; i < 8; ++i) pick = (pick << 8) | rnd[i];
            pick %= total;
            std::uint16_t candidate = 0;
            for (const auto& r : opt_.allow_ports) {
                const std::uint64_t n = std::uint64_t(r.hi) - r.lo + 1;
                if (pick < n) {
                    candidate = std::uint16_t(r.lo + pick);
                    break;
                }
                pick -= n;
            }
            if (!port_allowed(candidate)) continue;
            {
                std::lock_guard<std::mutex> lk(mu_);
                if (ports_.count(candidate)) continue;
            }
            try {
                return std::make_unique<TcpListener>(Endpoint{proxy_bind_, candidate});
            } catch (const error&) {
                // taken by someone else: another pick
            }
        }
        throw error(errc::io_error, "no available port");
    }

    void release(const std::string& name, std::uint16_t port) {
        std::lock_guard<std::mutex> lk(mu_);
        names_.erase(name);
        ports_.erase(port);
    }

    void close_proxy(const std::shared_ptr<ServerControl>& ctl, const std::string& name) {
        auto p = ctl->remove_proxy(name);
        if (!p) return;  // unknown names are ignored
        p->close();
        release(name, p->port);
        log(proxy_label(name) + " of " + ctl->run_id() + " closed");
    }

    void proxy_accept_loop(p2prc::detail::TcpListener& l, std::weak_ptr<ServerControl> weak,
                           NewProxy spec, std::uint16_t port) {
        for (;;) {
            std::unique_ptr<p2prc::detail::TcpConnection> c;
            try {
                c = l.accept(Millis(500));
            } catch (const error& e) {
                if (e.code() == errc::state_error) return;  // listener closed
                std::this_thread::sleep_for(Millis(100));   // transient (descriptors...)
                continue;
            }
            if (!c) continue;
            std::shared_ptr<p2prc::detail::TcpConnection> user(std::move(c));
            auto ctl = weak.lock();
            if (!ctl ||
                !tasks_.spawn([this, ctl, spec, port, user] { serve_user(ctl, spec, port, user); })) {
                if (ctl) opt_.stats->refused_connection();
                user->close();
            }
        }
    }

    void serve_user(std::shared_ptr<ServerControl> ctl, const NewProxy& spec, std::uint16_t port,
                    std::shared_ptr<p2prc::detail::TcpConnection> user) {
        StreamRegistry::Registration ureg(live_, user);
        StartWorkConn start;
        start.proxy_name = spec.proxy_name;
        if (auto r = user->remote_endpoint()) {
            start.src_addr = r->address.to_string();
            start.src_port = r->port;
        }
        if (auto l = user->local_endpoint()) {
            start.dst_addr = l->address.to_string();
            start.dst_port = l->port;
        } else {
            start.dst_port = port;
        }
        StreamPtr work = ctl->take_work_conn(start, opt_.user_conn_timeout);
        ctl.reset();  // a piped connection does not keep the control alive
        if (!work) {
            user->close();
            return;
        }
        StreamRegistry::Registration wreg(live_, work);
        struct Traffic {
            ServerCore& core;
            explicit Traffic(ServerCore& c) : core(c) {
                core.piped_.fetch_add(1);
                core.touch();
            }
            ~Traffic() {
                core.touch();
                core.piped_.fetch_sub(1);
            }
        } traffic(*this);
        try {
            if (spec.use_encryption) work = std::make_shared<CryptoStream>(work, key_);
            if (spec.use_compression) work = std::make_shared<SnappyStream>(work);
        } catch (const std::exception&) {
            work->close();
            user->close();
            return;
        }
        TrafficStats& stats = *opt_.stats;
        stats.connection_opened();
        struct Closed {  // the live count comes down however the pipe ends
            TrafficStats& s;
            ~Closed() { s.connection_closed(); }
        } closed{stats};
        pipe_streams(user, work, opt_.idle_timeout,
                     [&stats](bool from_user, std::size_t n) { stats.bytes(from_user, n); });
    }

    // ---- lifecycle ------------------------------------------------------------------

    void stop() {
        stopping_.store(true);
        std::vector<std::shared_ptr<ServerControl>> all;
        {
            std::lock_guard<std::mutex> lk(mu_);
            for (auto& [id, c] : controls_) all.push_back(c);
            controls_.clear();
        }
        for (auto& c : all) c->shutdown();
        live_.close_all();
        tasks_.join_all();
    }

    std::size_t client_count() {
        std::lock_guard<std::mutex> lk(mu_);
        return controls_.size();
    }

    void touch() {
        std::lock_guard<std::mutex> lk(count_mu_);
        last_traffic_ = Clock::now();
    }

    ServerActivity activity() {
        ServerActivity a;
        {
            std::lock_guard<std::mutex> lk(mu_);
            a.clients = controls_.size();
            a.proxies = ports_.size();
        }
        a.piped_connections = piped_.load();
        std::lock_guard<std::mutex> lk(count_mu_);
        a.last_traffic = last_traffic_;
        for (auto& [k, n] : pending_) a.pending_connections += n;
        for (auto& [k, n] : sessions_) a.mux_sessions += n;
        a.refused_pending = refused_pending_;
        a.refused_sessions = refused_sessions_;
        return a;
    }

    std::vector<ServerProxyInfo> proxies() {
        std::vector<std::shared_ptr<ServerControl>> all;
        {
            std::lock_guard<std::mutex> lk(mu_);
            for (auto& [id, c] : controls_) all.push_back(c);
        }
        std::vector<ServerProxyInfo> out;
        for (auto& c : all)
            for (auto& p : c->proxies()) out.push_back(p);
        return out;
    }

  private:
    friend class ServerControl;
    ServerOptions opt_;
    CipherKey key_;
    IpAddress proxy_bind_;
    std::shared_ptr<TlsContext> tls_;
    std::atomic<bool> stopping_{false};
    std::mutex mu_;
    std::map<std::string, std::shared_ptr<ServerControl>> controls_;
    std::set<std::string> names_;
    std::set<std::uint16_t> ports_;
    StreamRegistry live_;
    TaskGroup tasks_;
    // Per-address counts (see ServerOptions) and traffic, under count_mu_.
    std::mutex count_mu_;
    std::map<std::string, std::size_t> pending_, sessions_;
    std::uint64_t refused_pending_ = 0, refused_sessions_ = 0;
    std::optional<Clock::time_point> last_traffic_;
    std::atomic<std::size_t> piped_{0};
};

inline void ServerControl::shutdown() {
    std::map<std::string, std::unique_ptr<ServerProxy>> proxies;
    std::deque<PooledWork> pool;
    {
        std::lock_guard<std::mutex> lk(mu_);
        if (closed_) return;
        closed_ = true;
        proxies.swap(proxies_);
        pool.swap(pool_);
        pool_cv_.notify_all();
    }
    raw_->close();
    for (auto& w : pool) w.stream->close();
    for (auto& [name, p] : proxies) {
        p->close();
        core_.release(name, p->port);
    }
}

}  // namespace detail

// An frps-compatible relay server. Starts listening in the constructor; stop() (or the
// destructor) closes every client, proxy and piped connection and joins every thread.
class Server {
  public:
    explicit Server(ServerOptions opt) {
        if (opt.max_clients == 0 || opt.max_connections < 4 || opt.max_pool_count < 0 ||
            opt.max_pending_per_address == 0 || opt.max_sessions_per_address == 0 ||
            opt.max_pending_streams_per_session == 0 || opt.login_timeout.count() <= 0 ||
            opt.user_conn_timeout.count() <= 0 || opt.idle_timeout.count() <= 0 ||
            opt.mux_ping_timeout.count() <= 0)
            throw error(errc::invalid_argument,
                        "frp::Server: max_clients, the per-address caps, timeouts must be > 0, "
                        "max_connections >= 4, "
                        "max_pool_count >= 0");
        if (!opt.stats) opt.stats = std::make_shared<TrafficStats>();
        stats_ = opt.stats;
        listener_ = std::make_unique<p2prc::detail::TcpListener>(opt.bind);
        local_ = listener_->local_endpoint();
        core_ = std::make_unique<detail::ServerCore>(std::move(opt));
        acceptor_ = std::thread([this] { core_->accept_loop(*listener_); });
    }
    ~Server() { stop(); }
    Server(const Server&) = delete;
    Server& operator=(const Server&) = delete;

    // The port clients connect to (the one chosen when ServerOptions::bind.port was 0).
    std::uint16_t port() const noexcept { return local_.port; }
    const Endpoint& local_endpoint() const noexcept { return local_; }

    // Logged-in clients and their proxies, now.
    std::size_t client_count() { return core_->client_count(); }
    std::vector<ServerProxyInfo> proxies() { return core_->proxies(); }
    // What the relay carried so far.
    const TrafficStats& stats() const noexcept { return *stats_; }
    ServerActivity activity() { return core_->activity(); }

    // Closes everything and joins every thread. Idempotent.
    void stop() {
        if (stopped_.exchange(true)) return;
        listener_->close();
        if (acceptor_.joinable()) acceptor_.join();
        core_->stop();
        listener_.reset();  // release the port now
    }

  private:
    std::unique_ptr<p2prc::detail::TcpListener> listener_;
    std::unique_ptr<detail::ServerCore> core_;
    std::thread acceptor_;
    std::atomic<bool> stopped_{false};
    Endpoint local_;
    std::shared_ptr<TrafficStats> stats_;
};

}  // namespace p2prc::frp
