// P2PRC's own Go client (its embedded frpc 0.45.0) against our relay. A Go node behind NAT
// registers its one proxy as, whole, {"remote_port":N}: no proxy_name, no proxy_type
// (tests/data/frp-captures/p2prc-go-client.wire.txt). Stock frps takes that as an unnamed
// tcp proxy; so must we. The replay below sends the captured Login and NewProxy again,
// re-encrypted for a fresh session, against frp::Server and against a relay handed out by
// a node's GET /FRPPort, then carries traffic through the port it opened.
#include <p2prc.hpp>

#include "support/bytes.hpp"
#include "support/node_config.hpp"
#include "support/relay.hpp"
#include "support/tempdir.hpp"

#include <doctest/doctest.h>

#include <httplib.h>

#include <functional>
#include <thread>

using namespace p2prc_test;
using namespace p2prc::frp;
using p2prc::detail::Millis;

namespace {

// The Go client's control stream (yamux stream 1, C->S), decoded: the plain Login and the
// NewProxy behind the empty-token cipher.
struct GoClientMessages {
    std::string login_frame;  // the Login frame, byte for byte as captured
    Login login;
    NewProxy new_proxy;
    std::string new_proxy_body;  // its JSON, as captured (after decryption)
};

GoClientMessages decode_go_client_capture() {
    auto streams =
        reassemble(load_capture(P2PRC_TEST_DATA_DIR "/frp-captures/p2prc-go-client.wire.txt"));
    yamux::FrameParser parser;
    const std::string& up = streams.at("conn1 C->S");
    parser.feed(up.data(), up.size());
    std::string stream1;
    while (auto f = parser.next())
        if (f->header.type == yamux::FrameType::data && f->header.stream_id == 1)
            stream1 += f->payload;

    GoClientMessages g;
    auto plain = std::make_shared<MemStream>(stream1);
    g.login = std::get<Login>(read_msg(*plain, Millis(100)));
    g.login_frame = stream1.substr(0, plain->pos);
    // IV + AES-128-CFB(key from the empty token), as every P2PRC node without a token.
    std::string rest = stream1.substr(plain->pos);
    REQUIRE(rest.size() > 16);
    CipherIv iv;
    std::memcpy(iv.data(), rest.data(), 16);
    std::string cipher = rest.substr(16);
    CfbCipher dec(derive_key(""), iv, CfbCipher::Mode::decrypt);
    dec.apply(reinterpret_cast<std::uint8_t*>(cipher.data()), cipher.size());
    REQUIRE(cipher.size() > kFrameHeaderSize);
    REQUIRE(cipher[0] == NewProxy::type);
    std::size_t len = check_frame_header(reinterpret_cast<const unsigned char*>(cipher.data()));
    REQUIRE(cipher.size() >= kFrameHeaderSize + len);
    g.new_proxy_body = cipher.substr(kFrameHeaderSize, len);
    g.new_proxy = std::get<NewProxy>(decode_body(NewProxy::type, g.new_proxy_body));
    return g;
}

// What the Go client does after login, written with our own frp pieces: a yamux session,
// the captured Login in clear, the captured NewProxy under a fresh IV, then one work stream
// per ReqWorkConn (NewWorkConn, StartWorkConn, then the bytes piped to `local`).
class GoClientReplay {
  public:
    GoClientReplay(std::uint16_t relay_port, const GoClientMessages& g, Endpoint local)
        : local_(local) {
        auto tcp = std::shared_ptr<p2prc::detail::TcpConnection>(
            p2prc::detail::TcpConnection::connect(loopback(relay_port), 3000ms));
        mux_ = std::make_shared<MuxSession>(tcp, MuxRole::client);
        std::shared_ptr<p2prc::detail::Stream> ctl(mux_->open(3000ms));
        ctl->write_all(g.login_frame.data(), g.login_frame.size(), 3000ms);
        login_resp = std::get<LoginResp>(read_msg(*ctl, 3000ms));
        if (!login_resp.error.empty()) return;
        ctl_ = std::make_unique<CryptoStream>(ctl, derive_key(""));
        write_msg(*ctl_, g.new_proxy, 3000ms);
        reader_ = std::thread([this] { control_loop(); });
    }
    ~GoClientReplay() {
        stop_ = true;
        if (mux_) mux_->close();
        if (reader_.joinable()) reader_.join();
        for (auto& t : work_) t.join();
    }

    // The NewProxyResp, once it arrived.
    std::optional<NewProxyResp> wait_resp(Millis timeout) {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait_for(lk, timeout, [&] { return resp_.has_value(); });
        return resp_;
    }
    std::vector<StartWorkConn> starts() {
        std::lock_guard<std::mutex> lk(mu_);
        return starts_;
    }

    LoginResp login_resp;

  private:
    void control_loop() {
        try {
            while (!stop_) {
                Message m = read_msg(*ctl_, 60000ms);
                if (std::holds_alternative<ReqWorkConn>(m)) {
                    work_.emplace_back([this] { work(); });
                } else if (auto* r = std::get_if<NewProxyResp>(&m)) {
                    std::lock_guard<std::mutex> lk(mu_);
                    resp_ = *r;
                    cv_.notify_all();
                }
            }
        } catch (const std::exception&) {
        }
    }
    void work() {
        try {
            std::shared_ptr<p2prc::detail::Stream> s(mux_->open(3000ms));
            NewWorkConn w;
            w.run_id = login_resp.run_id;
            write_msg(*s, w, 3000ms);
            auto start = std::get<StartWorkConn>(read_msg(*s, 60000ms));
            {
                std::lock_guard<std::mutex> lk(mu_);
                starts_.push_back(start);
            }
            std::shared_ptr<p2prc::detail::Stream> svc(
                p2prc::detail::TcpConnection::connect(local_, 3000ms));
            std::thread back([s, svc] { copy(*svc, *s); });
            copy(*s, *svc);
            back.join();
        } catch (const std::exception&) {
        }
    }
    static void copy(p2prc::detail::Stream& from, p2prc::detail::Stream& to) {
        char buf[16384];
        try {
            for (;;) {
                std::size_t n = from.read_some(buf, sizeof buf, 10000ms);
                if (n == 0) break;
                to.write_all(buf, n, 10000ms);
            }
            to.shutdown_write();
        } catch (const std::exception&) {
            to.close();
        }
    }

    Endpoint local_;
    std::shared_ptr<MuxSession> mux_;
    std::unique_ptr<CryptoStream> ctl_;
    std::thread reader_;
    std::vector<std::thread> work_;
    std::atomic<bool> stop_{false};
    std::mutex mu_;
    std::condition_variable cv_;
    std::optional<NewProxyResp> resp_;
    std::vector<StartWorkConn> starts_;
};

std::uint16_t port_of(const std::string& remote_addr) {
    REQUIRE(remote_addr.size() > 1);
    REQUIRE(remote_addr[0] == ':');
    return std::uint16_t(std::stoi(remote_addr.substr(1)));
}

// Replays the Go client against a relay on `relay_port` and echoes bytes through the port
// the relay opened for it.
// `while_up` runs while the Go client is still logged in.
void replay_and_echo(std::uint16_t relay_port, GoClientMessages g,
                     const std::function<void()>& while_up = {}) {
    // The captured remote_port, unless something on this machine holds it now.
    if (!port_bindable(std::uint16_t(g.new_proxy.remote_port))) {
        MESSAGE("port " << g.new_proxy.remote_port << " is taken here; asking for a free one");
        g.new_proxy.remote_port = free_port();
    }
    EchoServer echo;
    GoClientReplay go(relay_port, g, echo.endpoint());
    REQUIRE(go.login_resp.error == "");
    auto resp = go.wait_resp(5000ms);
    REQUIRE(resp);
    CHECK(resp->error == "");
    CHECK(resp->proxy_name == "");
    const std::uint16_t port = port_of(resp->remote_addr);
    CHECK(port == g.new_proxy.remote_port);
    // The answer names no proxy either: what frps 0.45 writes for the empty name.
    CHECK(encode_body(*resp) == "{\"remote_addr\":\":" + std::to_string(port) + "\"}");

    auto r = echo_roundtrip(loopback(port), 0, 100000);
    CHECK(r.matched == 100000);
    CHECK(r.clean_end);
    auto starts = go.starts();
    REQUIRE(!starts.empty());
    CHECK(starts.front().proxy_name == "");
    CHECK(starts.front().dst_port == port);
    if (while_up) while_up();
}

}  // namespace

TEST_CASE(
    "P2PRC's Go client: its NewProxy is, whole, {\"remote_port\":N}, and decodes as an unnamed tcp "
    "proxy") {
    auto g = decode_go_client_capture();
    CHECK(g.new_proxy_body == "{\"remote_port\":35091}");
    CHECK(g.new_proxy.proxy_name == "");
    CHECK(g.new_proxy.proxy_type == "");
    CHECK(g.new_proxy.remote_port == 35091);
    // Our encoder writes the same bytes back: every other field is omitted as Go does.
    CHECK(encode_body(g.new_proxy) == g.new_proxy_body);
    CHECK(g.login.version == "0.45.0");
    CHECK(g.login.hostname == "");
    CHECK(g.login.run_id == "");
    CHECK(g.login.pool_count == 1);
    CHECK(g.login.privilege_key == privilege_key("", g.login.timestamp));
    CHECK(encode_frame(g.login) == g.login_frame);
}

TEST_CASE("P2PRC's Go client logs into frp::Server and its unnamed proxy carries traffic") {
    std::vector<std::string> logs;
    std::mutex logs_mu;
    auto opt = server_options();
    opt.log = [&](const std::string& line) {
        std::lock_guard<std::mutex> lk(logs_mu);
        logs.push_back(line);
    };
    Server server(opt);
    replay_and_echo(server.port(), decode_go_client_capture(), [&] {
        auto proxies = server.proxies();
        REQUIRE(proxies.size() == 1);
        CHECK(proxies[0].name == "");
    });
    // The logs name it readably.
    std::lock_guard<std::mutex> lk(logs_mu);
    bool named = false;
    for (const auto& l : logs)
        if (l.find("unnamed proxy []") != std::string::npos) named = true;
    CHECK(named);
}

TEST_CASE("P2PRC's Go client uses a relay handed out by a node's GET /FRPPort") {
    TempDir dir;
    p2prc::Node node(loopback_node_config(dir, "relay"));
    node.start();
    httplib::Client http("127.0.0.1", node.port());
    http.set_read_timeout(5, 0);
    auto res = http.Get("/FRPPort");
    REQUIRE(res);
    REQUIRE(res->status == 200);
    replay_and_echo(std::uint16_t(std::stoi(res->body)), decode_go_client_capture());
}

TEST_CASE(
    "frp::Client registers an unnamed proxy as the Go client does, and a second one is refused as "
    "frps does") {
    Server server(server_options());
    EchoServer echo;
    ClientOptions o;
    o.server = loopback(server.port());
    ProxySpec p;
    p.name = "";
    p.local = echo.endpoint();
    o.proxies.push_back(p);
    Client a(o);
    auto st = a.wait_running("", 5000ms);
    REQUIRE(st.state == ProxyState::running);
    auto r = echo_roundtrip(loopback(st.remote_port), 0, 10000);
    CHECK(r.matched == 10000);

    // Names are unique per server (frps keys its proxies by name): a second client's
    // unnamed proxy is refused with frps's words.
    Client b(o);
    auto st2 = b.wait_running("", 5000ms);
    CHECK(st2.state == ProxyState::failed);
    CHECK(st2.error == "proxy name [] is already in use");
}
