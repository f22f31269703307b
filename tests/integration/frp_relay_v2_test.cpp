// frp wire protocol v2 through the relay: our client (v2) against our server with every
// transport option, v1 and v2 clients on one port, and hostile v2 input, each closing
// only its own connection with a logged reason while the relay keeps serving.
#include <p2prc.hpp>

#include "support/bytes.hpp"
#include "support/node_config.hpp"
#include "support/process.hpp"
#include "support/relay.hpp"
#include "support/tempdir.hpp"

#include <doctest/doctest.h>

#include <condition_variable>
#include <mutex>
#include <vector>

using namespace p2prc_test;
using namespace p2prc::frp;
using p2prc::detail::Clock;
using p2prc::detail::TcpConnection;
using p2prc_test::loopback_node_config;

namespace {

constexpr std::size_t kMiB = 1024 * 1024;

// Collects the server's log lines; wait_for() blocks until one contains a text.
class LogSink {
  public:
    std::function<void(const std::string&)> fn() {
        return [this](const std::string& line) {
            std::lock_guard<std::mutex> lk(mu_);
            if (lines_.size() < 10000) lines_.push_back(line);
            cv_.notify_all();
        };
    }
    // Until `times` lines contain `needle`.
    bool wait_for(const std::string& needle, Millis limit, std::size_t times = 1) {
        std::unique_lock<std::mutex> lk(mu_);
        return cv_.wait_for(lk, limit, [&] {
            std::size_t n = 0;
            for (const auto& l : lines_)
                if (l.find(needle) != std::string::npos) ++n;
            return n >= times;
        });
    }
    std::string all() {
        std::lock_guard<std::mutex> lk(mu_);
        std::string out;
        for (const auto& l : lines_) out += l + "\n";
        return out;
    }

  private:
    std::mutex mu_;
    std::condition_variable cv_;
    std::vector<std::string> lines_;
};

struct Setup {
    bool mux = true, tls = false, encryption = false, compression = false;
    std::string token = "v2-token";
    std::vector<std::string> algorithms{"aes-256-gcm", "xchacha20-poly1305"};
    std::int64_t pool = 1;
    std::size_t conns = 50, bytes = kMiB;
};

void run_echo_v2(const Setup& s) {
    EchoServer echo;
    LogSink log;
    auto so = server_options(s.token);
    so.log = log.fn();
    Server server(so);
    auto opt = client_options(loopback(server.port()), echo.endpoint(), s.token);
    opt.wire_protocol = WireProtocol::v2;
    opt.aead_algorithms = s.algorithms;
    opt.tcp_mux = s.mux;
    opt.tls = s.tls;
    opt.pool_count = s.pool;
    opt.proxies[0].use_encryption = s.encryption;
    opt.proxies[0].use_compression = s.compression;
    Client client(opt);
    auto st = client.wait_running("echo", 10000ms);
    REQUIRE_MESSAGE(st.state == ProxyState::running, client.last_error());
    REQUIRE(server.proxies().size() == 1);
    CHECK(server.proxies()[0].wire == WireProtocol::v2);
    CHECK(log.wait_for(std::string("wire v2 ") + s.algorithms[0], 1000ms));
    std::string why;
    CHECK_MESSAGE(parallel_echo(st.public_endpoint, s.conns, s.bytes, &why) == s.conns, why);
    CHECK(client.login_count() == 1);
}

// A v2 client driven by hand: preface, hellos, login, then the AEAD control.
class RawV2 {
  public:
    explicit RawV2(std::uint16_t port) : tcp(TcpConnection::connect(loopback(port), 3000ms)) {}

    void send(const std::string& bytes) { tcp->write_all(bytes.data(), bytes.size(), 3000ms); }

    std::string hello_payload(const std::vector<std::string>& algorithms,
                              std::size_t random_size = 32) {
        ClientHello ch;
        ch.transport = "tcp";
        ch.codecs = {"json"};
        ch.algorithms = algorithms;
        ch.client_random = random_bytes(random_size);
        return encode_client_hello(ch);
    }

    static Login login_msg(const std::string& token) {
        Login l;
        l.version = "0.70.1";
        l.os = "linux";
        l.arch = "amd64";
        l.timestamp = 1796161099;
        l.privilege_key = privilege_key(token, l.timestamp);
        l.pool_count = 1;
        return l;
    }

    // The whole login; returns the LoginResp and keeps the crypto for control().
    LoginResp login(const std::string& token,
                    std::vector<std::string> algorithms = {"aes-256-gcm"}) {
        std::string ch = hello_payload(algorithms);
        send(std::string(v2_preface()) + encode_v2_frame(kV2ClientHello, ch) +
             v2.encode(login_msg(token)));
        V2Frame sh = read_v2_frame(*tcp, 3000ms);
        REQUIRE(sh.type == kV2ServerHello);
        server_hello = decode_server_hello(sh.payload);
        if (server_hello.error.empty())
            crypto = V2Crypto{*parse_aead_algorithm(server_hello.algorithm),
                              transcript_hash(ch, sh.payload)};
        return std::get<LoginResp>(v2.read(*tcp, 3000ms));
    }

    // Bytes of the sealed control (C->S) for a message, from a sealer kept across calls.
    std::string seal(const std::string& token, const Message& m) {
        if (!sealer)
            sealer.emplace(crypto.algorithm, crypto.key(token, AeadDirection::client_to_server));
        std::string f = v2.encode(m);
        return sealer->seal(f.data(), f.size());
    }

    // True when the server closes the connection within `limit` (reading, and dropping,
    // whatever it still sends).
    bool closed_within(Millis limit) {
        auto deadline = Clock::now() + limit;
        char buf[4096];
        while (Clock::now() < deadline) {
            try {
                if (tcp->read_some(buf, sizeof buf, 200ms) == 0) return true;
            } catch (const p2prc::error& e) {
                if (e.code() != p2prc::errc::timeout) return true;  // reset: closed too
            }
        }
        return false;
    }

    std::shared_ptr<TcpConnection> tcp;
    Codec v2{WireProtocol::v2};
    ServerHello server_hello;
    V2Crypto crypto;
    std::optional<AeadSealer> sealer;
};

template <class F>
bool eventually_zero(F f, Millis limit = 5000ms) {
    auto deadline = Clock::now() + limit;
    while (Clock::now() < deadline) {
        if (f() == 0) return true;
        std::this_thread::sleep_for(50ms);
    }
    return f() == 0;
}

// A fresh v2 client exposes the echo service and carries bytes: the relay still serves.
void fresh_login_works(Server& server, const Endpoint& echo, const std::string& token) {
    auto opt = client_options(loopback(server.port()), echo, token);
    opt.wire_protocol = WireProtocol::v2;
    opt.tcp_mux = false;
    opt.proxies[0].name = "fresh";
    Client client(opt);
    auto st = client.wait_running("fresh", 10000ms);
    REQUIRE_MESSAGE(st.state == ProxyState::running, client.last_error());
    CHECK(parallel_echo(st.public_endpoint, 2, 64 * 1024) == 2);
}

}  // namespace

TEST_CASE("relay v2: 50 connections x 1 MiB each way, tcp_mux on") {
    run_echo_v2(Setup{});
}

TEST_CASE("relay v2: 50 connections x 1 MiB each way, tcp_mux off") {
    Setup s;
    s.mux = false;
    run_echo_v2(s);
}

TEST_CASE("relay v2: 50 connections x 1 MiB each way, TLS, tcp_mux on") {
    Setup s;
    s.tls = true;
    run_echo_v2(s);
}

TEST_CASE("relay v2: 50 connections x 1 MiB each way, TLS, tcp_mux off") {
    Setup s;
    s.tls = true;
    s.mux = false;
    run_echo_v2(s);
}

TEST_CASE("relay v2: XChaCha20-Poly1305 control, use_encryption + use_compression, pool 5") {
    for (bool mux : {true, false}) {
        CAPTURE(mux);
        Setup s;
        s.mux = mux;
        s.algorithms = {"xchacha20-poly1305", "aes-256-gcm"};
        s.encryption = s.compression = true;
        s.pool = 5;
        s.conns = 8;
        s.bytes = 256 * 1024;
        run_echo_v2(s);
    }
}

TEST_CASE("relay v2: v1 and v2 clients on one relay port at once") {
    EchoServer echo;
    Server server(server_options("tok"));
    std::vector<std::unique_ptr<Client>> clients;
    const char* names[] = {"v1-mux", "v1-plain", "v2-mux", "v2-plain"};
    for (int i = 0; i < 4; ++i) {
        auto o = client_options(loopback(server.port()), echo.endpoint(), "tok");
        o.proxies[0].name = names[i];
        o.tcp_mux = i % 2 == 0;
        o.wire_protocol = i < 2 ? WireProtocol::v1 : WireProtocol::v2;
        clients.push_back(std::make_unique<Client>(o));
    }
    std::vector<ProxyStatus> st;
    for (int i = 0; i < 4; ++i) {
        st.push_back(clients[std::size_t(i)]->wait_running(names[i], 10000ms));
        REQUIRE_MESSAGE(st.back().state == ProxyState::running,
                        clients[std::size_t(i)]->last_error());
    }
    CHECK(server.client_count() == 4);
    int v1 = 0, v2 = 0;
    for (const auto& p : server.proxies()) (p.wire == WireProtocol::v2 ? v2 : v1)++;
    CHECK(v1 == 2);
    CHECK(v2 == 2);
    // All four at the same time.
    std::vector<std::thread> ts;
    std::vector<std::size_t> ok(4, 0);
    for (std::size_t i = 0; i < 4; ++i)
        ts.emplace_back([&, i] { ok[i] = parallel_echo(st[i].public_endpoint, 8, 256 * 1024); });
    for (auto& t : ts) t.join();
    CHECK(ok == std::vector<std::size_t>(4, 8));
}

TEST_CASE("relay v2: a wrong token is refused with frp's text, in a plain v2 LoginResp") {
    EchoServer echo;
    Server server(server_options("right"));
    auto opt = client_options(loopback(server.port()), echo.endpoint(), "wrong");
    opt.wire_protocol = WireProtocol::v2;
    Client client(opt);
    auto st = client.wait_running("echo", 10000ms);
    CHECK(st.state == ProxyState::failed);
    CHECK(client.last_error() == "token in login doesn't match token from configuration");
    CHECK(server.client_count() == 0);
}

TEST_CASE("relay v2: heartbeats without tcp_mux, and a reconnect after a server restart") {
    EchoServer echo;
    auto so = server_options("tok");
    so.bind = loopback(free_port());
    so.heartbeat_timeout = 1500ms;
    auto server = std::make_unique<Server>(so);
    auto co = client_options(loopback(server->port()), echo.endpoint(), "tok");
    co.wire_protocol = WireProtocol::v2;
    co.tcp_mux = false;
    co.heartbeat_interval = 300ms;
    co.heartbeat_timeout = 1500ms;
    co.proxies[0].remote_port = free_port();
    Client client(co);
    auto st = client.wait_running("echo", 10000ms);
    REQUIRE_MESSAGE(st.state == ProxyState::running, client.last_error());
    // Well past both heartbeat timeouts the control is still the first one: Ping/Pong
    // travel in the AEAD stream.
    std::this_thread::sleep_for(3000ms);
    CHECK(client.login_count() == 1);
    CHECK(client.status("echo").generation == st.generation);
    CHECK(parallel_echo(st.public_endpoint, 4, 64 * 1024) == 4);

    server.reset();
    server = std::make_unique<Server>(so);
    auto again = client.wait_running("echo", 15000ms, st.generation);
    REQUIRE_MESSAGE(again.state == ProxyState::running, client.last_error());
    CHECK(client.login_count() >= 2);
    CHECK(again.remote_port == st.remote_port);
    CHECK(parallel_echo(again.public_endpoint, 4, 64 * 1024) == 4);
}

TEST_CASE("relay v2: ClientHello and login refusals carry frps's exact texts") {
    LogSink log;
    auto so = server_options("tok");
    so.log = log.fn();
    Server server(so);
    auto refused = [&](const std::string& ch, const std::string& error) {
        RawV2 c(server.port());
        c.send(std::string(v2_preface()) + encode_v2_frame(kV2ClientHello, ch) +
               c.v2.encode(RawV2::login_msg("tok")));
        V2Frame f = read_v2_frame(*c.tcp, 3000ms);
        CHECK(f.type == kV2ServerHello);
        CHECK(f.payload ==
              R"({"selected":{"message":{"codec":"json"},"crypto":{}},"error":")" + error + "\"}");
        CHECK(c.closed_within(3000ms));  // and no LoginResp
        CHECK(log.wait_for("v2 ClientHello refused: " + error, 1000ms));
    };
    {
        RawV2 c(server.port());
        refused(c.hello_payload({"aes-256-gcm"}, 16),
                "invalid crypto client random length 16, want 32");
        refused(c.hello_payload({"chacha20-poly1305"}), "no supported crypto algorithm");
        refused(R"({"capabilities":{"crypto":{"algorithms":["aes-256-gcm"]}}})",
                "unsupported message codec");
    }
    {
        // A v2 Login without a ClientHello: plain LoginResp with frps's text.
        RawV2 c(server.port());
        c.send(std::string(v2_preface()) + c.v2.encode(RawV2::login_msg("tok")));
        auto resp = std::get<LoginResp>(c.v2.read(*c.tcp, 3000ms));
        CHECK(resp.error == "missing v2 crypto negotiation");
        CHECK(c.closed_within(3000ms));
    }
    {
        RawV2 c(server.port());
        auto resp = c.login("wrong");
        CHECK(c.server_hello.error.empty());  // the ServerHello came first
        CHECK(resp.error == "token in login doesn't match token from configuration");
        CHECK(c.closed_within(3000ms));
    }
    CHECK(server.client_count() == 0);
}

TEST_CASE("relay v2: a flipped tag byte closes that control with a logged reason") {
    EchoServer echo;
    LogSink log;
    auto so = server_options("tok");
    so.log = log.fn();
    Server server(so);
    std::size_t round = 0;
    for (auto alg : {"aes-256-gcm", "xchacha20-poly1305"}) {
        CAPTURE(alg);
        ++round;
        RawV2 c(server.port());
        auto resp = c.login("tok", {alg});
        REQUIRE(resp.error.empty());
        CHECK(c.server_hello.algorithm == alg);
        CHECK(server.client_count() == 1);
        NewProxy np;
        np.proxy_name = "bad";
        np.proxy_type = "tcp";
        std::string sealed = c.seal("tok", np);
        sealed.back() = char(sealed.back() ^ 0x01);  // the tag's last byte
        c.send(sealed);
        CHECK(c.closed_within(5000ms));
        CHECK(log.wait_for("record 0 failed authentication", 3000ms, round));
        CHECK(server.proxies().empty());
        CHECK(eventually_zero([&] { return server.client_count(); }));
    }
    fresh_login_works(server, echo.endpoint(), "tok");
}

TEST_CASE("relay v2: a replayed record closes that control with a logged reason") {
    EchoServer echo;
    LogSink log;
    auto so = server_options("tok");
    so.log = log.fn();
    Server server(so);
    RawV2 c(server.port());
    REQUIRE(c.login("tok").error.empty());
    NewProxy np;
    np.proxy_name = "once";
    np.proxy_type = "tcp";
    std::string record = c.seal("tok", np);  // stream nonce + one record
    c.send(record);
    // The server answers in its own AEAD stream: ReqWorkConn (pool 1), NewProxyResp.
    AeadStream down(c.tcp, c.crypto.algorithm, c.crypto.key("tok", AeadDirection::client_to_server),
                    c.crypto.key("tok", AeadDirection::server_to_client));
    p2prc::frp::detail::MsgReader reader(down, c.v2);
    std::optional<NewProxyResp> npr;
    for (int i = 0; i < 20 && !npr; ++i)
        if (auto m = reader.next(500ms))
            if (auto* r = std::get_if<NewProxyResp>(&*m)) npr = *r;
    REQUIRE(npr);
    CHECK(npr->error.empty());
    CHECK(server.proxies().size() == 1);
    // The same record again (without the nonce, which is sent once): counter mismatch.
    std::size_t ns = aead_nonce_size(c.crypto.algorithm);
    c.send(record.substr(ns));
    CHECK(c.closed_within(5000ms));
    CHECK(log.wait_for("record 1 failed authentication", 3000ms));
    CHECK(eventually_zero([&] { return server.proxies().size(); }));
    fresh_login_works(server, echo.endpoint(), "tok");
}

TEST_CASE("relay v2: a frame over the 64 KiB limit closes that connection") {
    EchoServer echo;
    LogSink log;
    auto so = server_options("tok");
    so.log = log.fn();
    Server server(so);
    {
        // As the first frame of a connection: refused from its header, nothing buffered.
        RawV2 c(server.port());
        c.send(std::string(v2_preface()) + unhex("0010000000010001") + std::string(1000, 'x'));
        CHECK(c.closed_within(5000ms));
        CHECK(log.wait_for("payload length 65537 exceeds the limit of 65536", 3000ms));
    }
    {
        // Inside the AEAD stream of a logged-in control.
        RawV2 c(server.port());
        REQUIRE(c.login("tok").error.empty());
        if (!c.sealer)
            c.sealer.emplace(c.crypto.algorithm,
                             c.crypto.key("tok", AeadDirection::client_to_server));
        std::string h = unhex("0010000000010001");
        c.send(c.sealer->seal(h.data(), h.size()));
        CHECK(c.closed_within(5000ms));
        CHECK(log.wait_for("payload length 65537 exceeds the limit of 65536", 3000ms, 2));
        CHECK(log.wait_for("is gone", 3000ms));
    }
    {
        // Exactly 64 KiB is a valid frame (a Login padded to the limit is accepted).
        RawV2 c(server.port());
        std::string ch = c.hello_payload({"aes-256-gcm"});
        Login l = RawV2::login_msg("tok");
        std::string body = encode_body(l);
        l.hostname =
            std::string(65536 - 2 - body.size() - std::string(",\"hostname\":\"\"").size(), 'h');
        std::string frame = c.v2.encode(l);
        REQUIRE(frame.size() == 8 + 65536);
        c.send(std::string(v2_preface()) + encode_v2_frame(kV2ClientHello, ch) + frame);
        CHECK(read_v2_frame(*c.tcp, 3000ms).type == kV2ServerHello);
        CHECK(std::get<LoginResp>(c.v2.read(*c.tcp, 3000ms)).error.empty());
    }
    fresh_login_works(server, echo.endpoint(), "tok");
}

TEST_CASE("relay v2: a truncated hello or preface closes that connection with a reason") {
    EchoServer echo;
    LogSink log;
    auto so = server_options("tok");
    so.log = log.fn();
    so.login_timeout = 1000ms;
    Server server(so);
    {
        RawV2 c(server.port());
        std::string f = encode_v2_frame(kV2ClientHello, c.hello_payload({"aes-256-gcm"}));
        c.send(std::string(v2_preface()) + f.substr(0, 100));
        c.tcp->shutdown_write();
        CHECK(c.closed_within(5000ms));
        CHECK(log.wait_for("end of stream after 92 of", 3000ms));
    }
    {
        // Half a hello and then silence: the first-message deadline closes it.
        RawV2 c(server.port());
        std::string f = encode_v2_frame(kV2ClientHello, c.hello_payload({"aes-256-gcm"}));
        c.send(std::string(v2_preface()) + f.substr(0, 50));
        auto t0 = Clock::now();
        CHECK(c.closed_within(5000ms));
        CHECK(Clock::now() - t0 >= 500ms);
        CHECK(log.wait_for("timed out", 3000ms));
    }
    {
        // A ClientHello that is not JSON: closed without an answer.
        RawV2 c(server.port());
        c.send(std::string(v2_preface()) + encode_v2_frame(kV2ClientHello, "{\"bootstrap\":"));
        CHECK(c.closed_within(5000ms));
        CHECK(log.wait_for("ClientHello: not valid JSON", 3000ms));
    }
    {
        // Three bytes of the preface, then silence.
        RawV2 c(server.port());
        c.send("FRP");
        CHECK(c.closed_within(5000ms));
    }
    fresh_login_works(server, echo.endpoint(), "tok");
}

TEST_CASE(
    "relay v2: stock frpc 0.70.1's v2 login bytes are accepted; its old session's records are "
    "not") {
    // The control's first bytes from the real capture: preface, ClientHello, Login (token
    // p2prc-v2-test). Our server answers with its own ServerHello, so the captured AEAD
    // records (keyed by the capture's transcript) cannot authenticate here: a replay.
    auto reads = load_capture(P2PRC_TEST_DATA_DIR "/frp-captures/v2-nomux.wire.txt");
    std::string up = reassemble(reads)["conn1 C->S"];
    std::size_t ch_len = 8 + (std::size_t(std::uint8_t(up[7 + 6])) << 8 | std::uint8_t(up[7 + 7]));
    std::size_t login_at = 7 + ch_len;
    std::size_t login_len =
        8 + (std::size_t(std::uint8_t(up[login_at + 6])) << 8 | std::uint8_t(up[login_at + 7]));
    std::size_t aead_at = login_at + login_len;
    LogSink log;
    auto so = server_options("p2prc-v2-test");
    so.log = log.fn();
    Server server(so);
    RawV2 c(server.port());
    c.send(up.substr(0, aead_at));
    V2Frame sh = read_v2_frame(*c.tcp, 3000ms);
    REQUIRE(sh.type == kV2ServerHello);
    auto hello = decode_server_hello(sh.payload);
    CHECK(hello.error.empty());
    CHECK(hello.algorithm == "aes-256-gcm");
    auto resp = std::get<LoginResp>(c.v2.read(*c.tcp, 3000ms));
    CHECK(resp.error.empty());
    CHECK(resp.run_id.size() == 16);
    CHECK(log.wait_for("wire v2 aes-256-gcm", 1000ms));
    c.send(up.substr(aead_at));
    CHECK(c.closed_within(5000ms));
    CHECK(log.wait_for("record 0 failed authentication", 3000ms));
}

TEST_CASE("relay v2: Node::expose with ExposeOptions::wire_protocol v2 through a node's relay") {
    p2prc_test::TempDir dir;
    auto R = std::make_unique<p2prc::Node>(loopback_node_config(dir, "R"));
    R->start();
    auto xc = loopback_node_config(dir, "X");
    p2prc::IpTable::update(xc.iptable, [&](p2prc::IpTable& t) {
        p2prc::Peer p;
        p.name = "R";
        p.ipv4 = p2prc::IpAddress::from_string("127.0.0.1");
        p.server_port = R->port();
        p.latency_ms = 1.0;
        t.add(p);
    });
    EchoServer service;
    LogSink log;
    p2prc::ExposeOptions eo;
    eo.wire_protocol = WireProtocol::v2;
    eo.log = log.fn();
    p2prc::Node X(xc);
    auto ex = X.expose(service.endpoint().port, eo);
    CHECK(ex.relay == loopback(R->port()));
    CHECK(log.wait_for("(wire v2 aes-256-gcm)", 1000ms));
    CHECK(echo_roundtrip(ex.public_endpoint, 3, 200000).matched == 200000);
}

#ifdef P2PRC_CLI
TEST_CASE("relay v2: p2prc expose --via --wire v2 logs in with v2 and carries bytes") {
    p2prc_test::TempDir dir;
    EchoServer service;
    Server server(server_options("cli-token"));
    p2prc_test::ChildProcess expose(
        {P2PRC_CLI, "--json", "--name", "x", "--table", dir.file("x.json"), "--token", "cli-token",
         "expose", std::to_string(service.endpoint().port), "--via",
         "127.0.0.1:" + std::to_string(server.port()), "--wire", "v2"},
        dir.file("x.out"), dir.file("x.err"));
    auto line = expose.first_line(20s);
    INFO("stdout: " << expose.out() << " stderr: " << expose.err());
    auto j = nlohmann::json::parse(line, nullptr, false);
    REQUIRE(j.is_object());
    auto pe = Endpoint::from_string(j.value("public_endpoint", ""));
    REQUIRE(server.proxies().size() == 1);
    CHECK(server.proxies()[0].wire == WireProtocol::v2);
    CHECK(echo_roundtrip(pe, 1, 300000).matched == 300000);
    expose.signal(SIGTERM);
    auto code = expose.wait(10s);
    REQUIRE(code);
    CHECK(*code == 0);

    p2prc_test::ChildProcess bad(
        {P2PRC_CLI, "expose", "8080", "--via", "127.0.0.1:1", "--wire", "v3"}, dir.file("b.out"),
        dir.file("b.err"));
    auto bad_code = bad.wait(10s);
    REQUIRE(bad_code);
    CHECK(*bad_code == 2);
    CHECK(bad.err().find("invalid --wire \"v3\": expected v1 or v2") != std::string::npos);
}
#else
TEST_CASE("relay v2: p2prc expose --via --wire v2 (skipped: built without the CLI)") {
    MESSAGE("skipped: P2PRC_CLI is not defined (configure with P2PRC_BUILD_EXAMPLES=ON)");
}
#endif

TEST_CASE("relay v2: our client fails the login on a ServerHello refusal, retries a v1-only peer") {
    EchoServer echo;
    p2prc::detail::TcpListener fake(loopback());
    std::thread peer([&] {
        // Two connections: the first answers frps's refusal, the second is closed at once
        // after the client's bytes, as frps before 0.69 does with a v2 preface.
        for (int i = 0; i < 2; ++i) {
            auto c = fake.accept(10000ms);
            if (!c) return;
            char buf[1024];
            try {
                c->read_some(buf, sizeof buf, 3000ms);
                if (i == 0) {
                    std::string f = encode_v2_frame(
                        kV2ServerHello,
                        R"({"selected":{"message":{"codec":"json"},"crypto":{}},"error":"no supported crypto algorithm"})");
                    c->write_all(f.data(), f.size(), 3000ms);
                    c->read_some(buf, sizeof buf, 3000ms);
                }
            } catch (const p2prc::error&) {
            }
            c->close();
        }
    });
    {
        auto opt = client_options(loopback(fake.port()), echo.endpoint());
        opt.wire_protocol = WireProtocol::v2;
        opt.tcp_mux = false;
        Client client(opt);
        auto st = client.wait_running("echo", 10000ms);
        CHECK(st.state == ProxyState::failed);
        CHECK(client.last_error() == "no supported crypto algorithm");
        CHECK(client.state() == ClientState::failed);
    }
    {
        auto opt = client_options(loopback(fake.port()), echo.endpoint());
        opt.wire_protocol = WireProtocol::v2;
        opt.tcp_mux = false;
        opt.reconnect_min = opt.reconnect_max = 5000ms;  // one attempt within the test
        Client client(opt);
        auto deadline = Clock::now() + 10000ms;
        while (Clock::now() < deadline && client.last_error().empty())
            std::this_thread::sleep_for(20ms);
        CHECK(client.last_error().rfind("login: ", 0) == 0);  // lost, not refused: retried
        CHECK(client.state() == ClientState::connecting);
        CHECK(client.status("echo").state == ProxyState::pending);
    }
    peer.join();
}
