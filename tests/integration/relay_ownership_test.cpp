// A relay handed out on GET /FRPPort belongs to whoever asked for it, on loopback:
// strangers (127.0.0.3) cannot log in to it and lock the requester (127.0.0.1) out, a
// client cannot open privileged ports or the node's own port, and logins that carry no
// traffic and own no port do not keep relays from being reclaimed.
#include <p2prc.hpp>

#include "support/bytes.hpp"
#include "support/loopback.hpp"
#include "support/node_config.hpp"
#include "support/relay.hpp"
#include "support/relay_abuse.hpp"
#include "support/tempdir.hpp"

#include <doctest/doctest.h>

#include <httplib.h>

#include <atomic>
#include <thread>

using namespace p2prc_test;
using namespace p2prc::frp;
using p2prc::RelayPool;
using p2prc::RelayPoolOptions;
using p2prc::detail::TcpConnection;

namespace {

template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
        if (pred()) return true;
        std::this_thread::sleep_for(50ms);
    }
    return pred();
}

// A hand-written frp client without tcp_mux, from a chosen loopback address.
struct RawLogin {
    std::shared_ptr<TcpConnection> tcp;
    std::unique_ptr<CryptoStream> ctl;
    LoginResp resp;

    RawLogin(const std::string& source, std::uint16_t port, const std::string& token = {}) {
        int fd = connect_from(source, port);
        REQUIRE(fd >= 0);
        tcp = std::make_shared<TcpConnection>(fd);
        write_msg(*tcp, plain_login(token), 3000ms);
        Message m = read_msg(*tcp, 5000ms);
        REQUIRE(std::holds_alternative<LoginResp>(m));
        resp = std::get<LoginResp>(m);
        if (resp.error.empty()) ctl = std::make_unique<CryptoStream>(tcp, derive_key(token));
    }
    NewProxyResp new_proxy(const std::string& name, std::int64_t port) {
        NewProxy np;
        np.proxy_name = name;
        np.proxy_type = "tcp";
        np.remote_port = port;
        write_msg(*ctl, np, 3000ms);
        for (int i = 0; i < 20; ++i) {
            Message m = read_msg(*ctl, 5000ms);
            if (auto* r = std::get_if<NewProxyResp>(&m)) return *r;
        }
        FAIL("no NewProxyResp");
        return {};
    }
    void ping() { write_msg(*ctl, Ping{}, 3000ms); }
};

std::uint16_t port_of(const std::string& remote_addr) {
    REQUIRE(remote_addr.size() > 1);
    REQUIRE(remote_addr[0] == ':');
    return static_cast<std::uint16_t>(std::stoi(remote_addr.substr(1)));
}

httplib::Result get(std::uint16_t port, const std::string& path) {
    httplib::Client c("127.0.0.1", port);
    c.set_connection_timeout(3, 0);
    c.set_read_timeout(5, 0);
    return c.Get(path.c_str());
}

}  // namespace

TEST_CASE(
    "relay ownership: strangers cannot log in to a requester's relay; its tunnel works meanwhile") {
    TempDir dir;
    auto cfg = loopback_node_config(dir, "relay");
    p2prc::Node node(cfg);
    node.start();
    // P2PRC's Go client asks from its address and logs in from there with no token.
    auto res = get(node.port(), "/FRPPort");
    REQUIRE(res);
    REQUIRE(res->status == 200);
    const auto relay_port = static_cast<std::uint16_t>(std::stoi(res->body));

    // Strangers keep trying all along, more of them than the relay's client limit (4).
    std::atomic<bool> stop{false};
    std::atomic<int> refused{0}, admitted{0};
    std::string refusal;
    std::mutex refusal_mu;
    std::thread strangers([&] {
        for (int round = 0; round < 200 && !stop.load(); ++round) {
            std::vector<std::unique_ptr<RawLogin>> held;
            for (int i = 0; i < 6; ++i) {
                try {
                    auto l = std::make_unique<RawLogin>("127.0.0.3", relay_port);
                    if (l->resp.error.empty()) {
                        ++admitted;
                    } else {
                        ++refused;
                        std::lock_guard<std::mutex> lk(refusal_mu);
                        refusal = l->resp.error;
                    }
                    held.push_back(std::move(l));
                } catch (const std::exception&) {
                    // the relay closed the connection before answering: not admitted
                }
            }
            std::this_thread::sleep_for(20ms);
        }
    });
    REQUIRE(eventually([&] { return refused.load() >= 6; }, 20s));

    EchoServer echo;
    ClientOptions o;
    o.server = loopback(relay_port);
    ProxySpec ps;
    ps.name = "svc";
    ps.local = echo.endpoint();
    o.proxies.push_back(ps);
    Client client(o);
    auto st = client.wait_running("svc", 10s);
    REQUIRE(st.state == ProxyState::running);
    CHECK(echo_roundtrip(st.public_endpoint, 1, 100000).matched == 100000);
    stop.store(true);
    strangers.join();
    CHECK(admitted.load() == 0);
    std::lock_guard<std::mutex> lk(refusal_mu);
    CHECK(refusal.find("serves only the address that requested it") != std::string::npos);
}

TEST_CASE("relay ownership: with a network token the token is still required of the requester") {
    RelayPoolOptions po;
    po.bind = p2prc::IpAddress::from_string("127.0.0.1");
    po.token = "net-secret";
    RelayPool pool(po);
    const auto port = pool.allocate(p2prc::IpAddress::from_string("127.0.0.1"));
    RawLogin no_token("127.0.0.1", port);
    CHECK(no_token.resp.error == "token in login doesn't match token from configuration");
    RawLogin stranger("127.0.0.3", port, "net-secret");
    CHECK(stranger.resp.error.find("serves only") != std::string::npos);
    RawLogin owner("127.0.0.1", port, "net-secret");
    CHECK(owner.resp.error.empty());
}

TEST_CASE("relay ownership: privileged ports and the node's own port are refused in frps's words") {
    TempDir dir;
    p2prc::Node node(loopback_node_config(dir, "relay"));
    node.start();
    auto res = get(node.port(), "/FRPPort");
    REQUIRE(res);
    REQUIRE(res->status == 200);
    const auto relay_port = static_cast<std::uint16_t>(std::stoi(res->body));
    RawLogin l("127.0.0.1", relay_port);
    REQUIRE(l.resp.error.empty());
    CHECK(l.new_proxy("web", 80).error == "port not allowed");
    CHECK(l.new_proxy("tls", 443).error == "port not allowed");
    CHECK(l.new_proxy("dns", 53).error == "port not allowed");
    CHECK(l.new_proxy("self", node.port()).error == "port not allowed");
    // The control is still up, and a port the relay picks is an unprivileged one.
    auto any = l.new_proxy("any", 0);
    REQUIRE(any.error.empty());
    CHECK(port_of(any.remote_addr) >= 1024);
}

TEST_CASE("relay ownership: a port the relay picks lies inside allow_ports") {
    // A narrow range of ports that were free a moment ago.
    const std::uint16_t base = free_port();
    REQUIRE(base < 65000);
    RelayPoolOptions po;
    po.bind = p2prc::IpAddress::from_string("127.0.0.1");
    po.allow_ports = {{base, static_cast<std::uint16_t>(base + 20)}};
    RelayPool pool(po);
    const auto port = pool.allocate(p2prc::IpAddress::from_string("127.0.0.1"));
    RawLogin l("127.0.0.1", port);
    REQUIRE(l.resp.error.empty());
    auto r = l.new_proxy("a", 0);
    REQUIRE(r.error.empty());
    const auto got = port_of(r.remote_addr);
    CHECK(got >= base);
    CHECK(got <= base + 20);
    CHECK(l.new_proxy("b", base + 30).error == "port not allowed");
}

TEST_CASE("relay ownership: idle logins do not keep relays; the squatted pool drains back") {
    RelayPoolOptions po;
    po.bind = p2prc::IpAddress::from_string("127.0.0.1");
    po.cap = 2;
    po.login_timeout = 1000ms;
    po.idle_timeout = 1000ms;
    po.sweep_interval = 100ms;
    RelayPool pool(po);
    // The requesters squat their own relays: logged in, heartbeating, no port, no traffic.
    const auto a = pool.allocate(p2prc::IpAddress::from_string("127.0.0.1"));
    const auto b = pool.allocate(p2prc::IpAddress::from_string("127.0.0.1"));
    CHECK_THROWS_AS(pool.allocate(p2prc::IpAddress::from_string("127.0.0.4")), p2prc::error);
    RawLogin sa("127.0.0.1", a), sb("127.0.0.1", b);
    REQUIRE(sa.resp.error.empty());
    REQUIRE(sb.resp.error.empty());
    std::atomic<bool> stop{false};
    std::thread heartbeat([&] {
        for (int i = 0; i < 400 && !stop.load(); ++i) {
            try {
                sa.ping();
                sb.ping();
            } catch (const std::exception&) {
                return;  // reclaimed: the relay closed the control
            }
            std::this_thread::sleep_for(50ms);
        }
    });
    CHECK(eventually([&] { return pool.live() == 0; }, 20s));
    stop.store(true);
    heartbeat.join();
    // The pool serves again.
    CHECK_NOTHROW(pool.allocate(p2prc::IpAddress::from_string("127.0.0.4")));
}

TEST_CASE("relay ownership: P2PRC's Go client's captured login works from the requester only") {
    // The bytes P2PRC's Go client sent first (SYN of stream 1 + its Login, no token).
    std::string login;
    for (const auto& r : load_capture(P2PRC_TEST_DATA_DIR "/frp-captures/p2prc-go-client.wire.txt"))
        if (r.dir == "C->S") {
            login = r.bytes;
            break;
        }
    REQUIRE(login.size() > 24);
    RelayPoolOptions po;
    po.bind = p2prc::IpAddress::from_string("127.0.0.1");
    RelayPool pool(po);
    const auto port = pool.allocate(p2prc::IpAddress::from_string("127.0.0.1"));
    auto login_error = [&](const std::string& source) {
        int fd = connect_from(source, port);
        REQUIRE(fd >= 0);
        RawPeer peer{std::make_shared<TcpConnection>(fd)};
        peer.send_bytes(login);
        // Stream 1's data until the LoginResp is whole.
        std::string s1;
        for (int i = 0; i < 20; ++i) {
            std::string payload;
            std::string h = peer.read_frame_hex(&payload, 5000ms);
            if (h.substr(0, 4) == "0000" && h.substr(8, 8) == "00000001") s1 += payload;
            if (s1.size() >= kFrameHeaderSize) {
                std::size_t len =
                    check_frame_header(reinterpret_cast<const unsigned char*>(s1.data()));
                if (s1.size() >= kFrameHeaderSize + len) {
                    REQUIRE(s1[0] == '1');
                    auto m = decode_body('1', s1.substr(kFrameHeaderSize, len));
                    return std::get<LoginResp>(m).error;
                }
            }
        }
        FAIL("no LoginResp");
        return std::string();
    };
    CHECK(login_error("127.0.0.1") == "");
    CHECK(login_error("127.0.0.3").find("serves only the address that requested it") !=
          std::string::npos);
}

TEST_CASE(
    "relay ownership: a loopback request to a node listening on every address binds the relay to "
    "nobody") {
    // Such a request came through something local (a proxy in front of the node, a
    // tunnel) that hides who asked, so the relay cannot hold the login to that address.
    TempDir dir;
    auto cfg = loopback_node_config(dir, "relay");
    cfg.bind = "0.0.0.0";
    p2prc::Node node(cfg);
    node.start();
    auto res = get(node.port(), "/FRPPort");
    REQUIRE(res);
    REQUIRE(res->status == 200);
    const auto port = static_cast<std::uint16_t>(std::stoi(res->body));
    RawLogin other("127.0.0.3", port);
    CHECK(other.resp.error.empty());
}
