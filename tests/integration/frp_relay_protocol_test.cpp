// The relay server driven byte by byte: a stock frpc 0.45.0 login replayed from the
// captures, then our own encrypted messages (the captured ones cannot be replayed: the
// server picks new IVs), and the refusals with frp's exact texts.
#include <p2prc.hpp>

#include "support/bytes.hpp"
#include "support/loopback.hpp"
#include "support/relay.hpp"

#include <doctest/doctest.h>

using namespace p2prc_test;
using namespace p2prc::frp;
using p2prc::detail::Clock;
using p2prc::detail::TcpConnection;

namespace {

// The first C->S read of a capture: what stock frpc sent first.
std::string first_client_bytes(const char* file) {
    auto reads = load_capture(std::string(P2PRC_TEST_DATA_DIR "/frp-captures/") + file);
    for (const auto& r : reads)
        if (r.dir == "C->S") return r.bytes;
    throw std::runtime_error("no C->S bytes in capture");
}

// A client without tcp_mux written by hand on a TCP connection.
struct RawClient {
    std::shared_ptr<TcpConnection> tcp;
    std::unique_ptr<CryptoStream> ctl;

    explicit RawClient(std::uint16_t port)
        : tcp(TcpConnection::connect(loopback(port), 3000ms)) {}

    LoginResp login(const Login& l) {
        write_msg(*tcp, l, 3000ms);
        Message m = read_msg(*tcp, 3000ms);
        REQUIRE(std::holds_alternative<LoginResp>(m));
        return std::get<LoginResp>(m);
    }
    void start_cipher(const std::string& token = {}) {
        ctl = std::make_unique<CryptoStream>(tcp, derive_key(token));
    }
    void send(const Message& m) { write_msg(*ctl, m, 3000ms); }
    // The next message that is not ReqWorkConn.
    Message next(p2prc::detail::Millis timeout = 3000ms) {
        for (int i = 0; i < 20; ++i) {
            Message m = read_msg(*ctl, timeout);
            if (!std::holds_alternative<ReqWorkConn>(m)) return m;
        }
        throw std::runtime_error("only ReqWorkConn");
    }
    NewProxyResp new_proxy(const std::string& name, const std::string& type, std::int64_t port) {
        NewProxy np;
        np.proxy_name = name;
        np.proxy_type = type;
        np.remote_port = port;
        send(np);
        Message m = next();
        REQUIRE(std::holds_alternative<NewProxyResp>(m));
        return std::get<NewProxyResp>(m);
    }
};

Login stock_login(const std::string& token, const std::string& run_id = {}) {
    Login l;
    l.version = "0.45.0";
    l.os = "linux";
    l.arch = "amd64";
    l.timestamp = 1700000000;
    l.privilege_key = privilege_key(token, l.timestamp);
    l.run_id = run_id;
    l.pool_count = 1;
    return l;
}

bool port_from(const std::string& remote_addr, std::uint16_t& port) {
    if (remote_addr.size() < 2 || remote_addr[0] != ':') return false;
    port = std::uint16_t(std::stoi(remote_addr.substr(1)));
    return port != 0;
}

}  // namespace

TEST_CASE("relay protocol: stock frpc's tcp_mux login bytes are accepted") {
    Server server(server_options());  // empty token, as in the capture
    RawPeer peer{TcpConnection::connect(loopback(server.port()), 3000ms)};
    // SYN of stream 1 + Data(Login) exactly as frpc 0.45.0 sent them.
    peer.send_bytes(first_client_bytes("default.wire.txt"));
    CHECK(peer.read_frame_hex() == "000100020000000100000000");  // ACK of stream 1

    // Stream 1 from the server: LoginResp in clear, then IV and ciphertext.
    std::string s1;
    auto need = [&](std::size_t n) {
        while (s1.size() < n) {
            std::string payload;
            std::string h = peer.read_frame_hex(&payload);
            REQUIRE(h.substr(0, 4) == "0000");          // Data
            REQUIRE(h.substr(8, 8) == "00000001");      // stream 1
            s1 += payload;
        }
    };
    need(kFrameHeaderSize);
    REQUIRE(s1[0] == '1');
    std::size_t len = check_frame_header(reinterpret_cast<const unsigned char*>(s1.data()));
    need(kFrameHeaderSize + len);
    auto resp = std::get<LoginResp>(decode_body('1', s1.substr(kFrameHeaderSize, len)));
    CHECK(resp.error == "");
    CHECK(resp.version == "0.45.0");
    CHECK(resp.run_id.size() == 16);
    CHECK(s1.substr(kFrameHeaderSize, len).find("\"run_id\"") != std::string::npos);
    s1.erase(0, kFrameHeaderSize + len);

    // IV_s then E(ReqWorkConn {}): pool_count 1 asks for one work connection.
    need(16 + 11);
    CipherIv iv;
    std::memcpy(iv.data(), s1.data(), 16);
    CfbCipher dec(derive_key(""), iv, CfbCipher::Mode::decrypt);
    std::string plain = s1.substr(16, 11);
    dec.apply(reinterpret_cast<std::uint8_t*>(plain.data()), plain.size());
    CHECK(hex(plain) == "7200000000000000027b7d");
    s1.erase(0, 27);

    // Our own IV_c + E(NewProxy) on stream 1, like frpc's next write.
    CipherIv civ{};
    for (int i = 0; i < 16; ++i) civ[i] = std::uint8_t(i);
    CfbCipher enc(derive_key(""), civ, CfbCipher::Mode::encrypt);
    NewProxy np;
    np.proxy_name = "web";
    np.proxy_type = "tcp";
    std::string frame = encode_frame(np);
    enc.apply(reinterpret_cast<std::uint8_t*>(frame.data()), frame.size());
    std::string payload(reinterpret_cast<const char*>(civ.data()), 16);
    payload += frame;
    peer.send_frame({yamux::FrameType::data, 0, 1, std::uint32_t(payload.size())}, payload);

    // E(NewProxyResp {"proxy_name":"web","remote_addr":":N"}), maybe after a ReqWorkConn.
    std::optional<NewProxyResp> npr;
    for (int i = 0; i < 4 && !npr; ++i) {
        need(kFrameHeaderSize);
        std::string head = s1.substr(0, kFrameHeaderSize);
        dec.apply(reinterpret_cast<std::uint8_t*>(head.data()), head.size());
        std::size_t blen = check_frame_header(reinterpret_cast<const unsigned char*>(head.data()));
        need(kFrameHeaderSize + blen);
        std::string body = s1.substr(kFrameHeaderSize, blen);
        dec.apply(reinterpret_cast<std::uint8_t*>(body.data()), body.size());
        s1.erase(0, kFrameHeaderSize + blen);
        Message m = decode_body(head[0], body);
        if (auto* r = std::get_if<NewProxyResp>(&m)) npr = *r;
    }
    REQUIRE(npr);
    CHECK(npr->proxy_name == "web");
    CHECK(npr->error == "");
    std::uint16_t port = 0;
    REQUIRE(port_from(npr->remote_addr, port));
    CHECK(port_open(port));
    REQUIRE(server.proxies().size() == 1);
    CHECK(server.proxies()[0].run_id == resp.run_id);
}

TEST_CASE("relay protocol: stock frpc's plain login bytes are accepted without tcp_mux") {
    Server server(server_options());
    auto tcp = TcpConnection::connect(loopback(server.port()), 3000ms);
    std::string login = first_client_bytes("nomux.wire.txt");
    REQUIRE(login[0] == 'o');
    tcp->write_all(login.data(), login.size(), 3000ms);
    auto resp = std::get<LoginResp>(read_msg(*tcp, 3000ms));
    CHECK(resp.error == "");
    CHECK(resp.run_id.size() == 16);
    CryptoStream ctl(std::shared_ptr<TcpConnection>(std::move(tcp)), derive_key(""));
    CHECK(std::holds_alternative<ReqWorkConn>(read_msg(ctl, 3000ms)));
    write_msg(ctl, Ping{}, 3000ms);
    CHECK(std::holds_alternative<Pong>(read_msg(ctl, 3000ms)));
}

TEST_CASE("relay protocol: refusals carry frp's texts and leave the control up") {
    Server server(server_options("s3cret"));
    {
        RawClient bad(server.port());
        auto r = bad.login(stock_login("nope"));
        CHECK(r.error == "token in login doesn't match token from configuration");
        CHECK(r.version == "0.45.0");
        CHECK(r.run_id == "");
    }
    {
        RawClient old(server.port());
        auto l = stock_login("s3cret");
        l.version = "0.17.9";
        CHECK(old.login(l).error == "Please upgrade your frpc version to at least 0.18.0");
    }
    RawClient c(server.port());
    auto resp = c.login(stock_login("s3cret"));
    REQUIRE(resp.error == "");
    c.start_cipher("s3cret");
    CHECK(c.new_proxy("dns", "udp", 5353).error == "udp proxies are not supported");
    CHECK(c.new_proxy("site", "http", 0).error.find("not supported") != std::string::npos);
    // An empty name and no type are what P2PRC's Go client sends: frps 0.45 takes them as
    // an unnamed tcp proxy, unique per server like any name.
    CHECK(c.new_proxy("", "", 0).error == "");
    CHECK(c.new_proxy("", "tcp", 0).error == "proxy name [] is already in use");
    c.send(CloseProxy{""});
    p2prc::detail::TcpListener squatter(loopback(0));
    CHECK(c.new_proxy("busy", "tcp", squatter.port()).error == "port unavailable");
    auto ok = c.new_proxy("ssh", "tcp", 0);
    CHECK(ok.error == "");
    std::uint16_t port = 0;
    REQUIRE(port_from(ok.remote_addr, port));
    CHECK(port_open(port));
    CHECK(c.new_proxy("ssh", "tcp", 0).error == "proxy name [ssh] is already in use");

    // CloseProxy: no answer; the port is released.
    c.send(CloseProxy{"ssh"});
    c.send(Ping{});
    CHECK(std::holds_alternative<Pong>(c.next()));
    CHECK(server.proxies().empty());
    CHECK(port_bindable(port));
    // The same port can be taken again after the close.
    CHECK(c.new_proxy("ssh2", "tcp", port).remote_addr == ":" + std::to_string(port));
}

TEST_CASE("relay protocol: a login with a known run_id replaces the stale control") {
    Server server(server_options());
    RawClient first(server.port());
    auto r1 = first.login(stock_login("", "feedfacecafebeef"));
    REQUIRE(r1.error == "");
    CHECK(r1.run_id == "feedfacecafebeef");  // the client's run_id is used as given
    first.start_cipher();
    auto p1 = first.new_proxy("svc", "tcp", 0);
    std::uint16_t port = 0;
    REQUIRE(port_from(p1.remote_addr, port));

    RawClient second(server.port());
    REQUIRE(second.login(stock_login("", "feedfacecafebeef")).error == "");
    second.start_cipher();
    // The old control is closed and its port is free for the new one at once.
    auto p2 = second.new_proxy("svc", "tcp", port);
    CHECK(p2.error == "");
    CHECK(p2.remote_addr == ":" + std::to_string(port));
    CHECK(server.client_count() == 1);
    bool closed = false;
    try {
        for (int i = 0; i < 10; ++i) read_msg(*first.ctl, 3000ms);
    } catch (const p2prc::error& e) {
        closed = e.code() == p2prc::errc::io_error;
    }
    CHECK(closed);
}

TEST_CASE("relay protocol: a silent or garbage connection is dropped") {
    auto so = server_options();
    so.login_timeout = 300ms;
    Server server(so);
    auto silent = TcpConnection::connect(loopback(server.port()), 3000ms);
    char b;
    auto t0 = Clock::now();
    std::size_t k = 1;
    try {
        k = silent->read_some(&b, 1, 3000ms);
    } catch (const p2prc::error&) {
        k = 0;
    }
    CHECK(k == 0);
    CHECK(Clock::now() - t0 < 2500ms);
    auto junk = TcpConnection::connect(loopback(server.port()), 3000ms);
    junk->write_all("GET / HTTP/1.1\r\n\r\n", 18, 1000ms);
    try {
        k = junk->read_some(&b, 1, 3000ms);
    } catch (const p2prc::error&) {
        k = 0;
    }
    CHECK(k == 0);
    CHECK(server.client_count() == 0);
}
