// Real bytes between stock frpc and frps 0.45.0 with tcp_mux = false
// (tests/data/frp-captures/nomux.wire.txt): every message decodes, the control channel
// decrypts with the empty-token key.
#include <p2prc.hpp>

#include "support/bytes.hpp"

#include <doctest/doctest.h>

using namespace p2prc::frp;
using p2prc::detail::Millis;

TEST_CASE("capture nomux: control and work connections decode") {
    auto streams = p2prc_test::reassemble(
        p2prc_test::load_capture(P2PRC_TEST_DATA_DIR "/frp-captures/nomux.wire.txt"));
    REQUIRE(streams.count("conn1 C->S"));
    REQUIRE(streams.count("conn1 S->C"));

    // conn1 C->S: plain Login, then IV + encrypted NewProxy.
    auto c2s = std::make_shared<p2prc_test::MemStream>(streams["conn1 C->S"]);
    auto login = std::get<Login>(read_msg(*c2s, Millis(100)));
    CHECK(login.version == "0.45.0");
    CHECK(login.os == "linux");
    CHECK(login.arch == "amd64");
    CHECK(login.pool_count == 1);
    CHECK(login.run_id.empty());
    // The key proves the empty token.
    CHECK(login.privilege_key == privilege_key("", login.timestamp));
    // Our encoder reproduces frpc's bytes exactly.
    CHECK(encode_frame(login) == streams["conn1 C->S"].substr(0, c2s->pos));
    CryptoStream c2s_plain(c2s, derive_key(""));
    auto np = std::get<NewProxy>(read_msg(c2s_plain, Millis(100)));
    CHECK(np.proxy_name == "web");
    CHECK(np.proxy_type == "tcp");
    CHECK(np.remote_port == 16000);
    char c;
    CHECK(c2s_plain.read_some(&c, 1, Millis(10)) == 0);

    // conn1 S->C: plain LoginResp, then IV + ReqWorkConn, NewProxyResp, ReqWorkConn.
    auto s2c = std::make_shared<p2prc_test::MemStream>(streams["conn1 S->C"]);
    auto resp = std::get<LoginResp>(read_msg(*s2c, Millis(100)));
    CHECK(resp.version == "0.45.0");
    CHECK(resp.run_id == "55f78436ff006f49");
    CHECK(resp.error.empty());
    CHECK(encode_frame(resp) == streams["conn1 S->C"].substr(0, s2c->pos));
    CryptoStream s2c_plain(s2c, derive_key(""));
    CHECK(std::holds_alternative<ReqWorkConn>(read_msg(s2c_plain, Millis(100))));
    auto npr = std::get<NewProxyResp>(read_msg(s2c_plain, Millis(100)));
    CHECK(npr.proxy_name == "web");
    CHECK(npr.remote_addr == ":16000");
    CHECK(npr.error.empty());
    CHECK(std::holds_alternative<ReqWorkConn>(read_msg(s2c_plain, Millis(100))));
    CHECK(s2c_plain.read_some(&c, 1, Millis(10)) == 0);
    // With the wrong key the same bytes do not decode as frames.
    auto s2c_again = std::make_shared<p2prc_test::MemStream>(streams["conn1 S->C"]);
    read_msg(*s2c_again, Millis(100));
    CryptoStream wrong(s2c_again, derive_key("s3cret"));
    CHECK_THROWS_AS(read_msg(wrong, Millis(100)), p2prc::error);

    // conn2: the work connection that served the request; conn3: the refill.
    p2prc_test::MemStream w2(streams["conn2 C->S"]);
    auto nwc = std::get<NewWorkConn>(read_msg(w2, Millis(100)));
    CHECK(nwc.run_id == "55f78436ff006f49");
    std::string rest = w2.input.substr(w2.pos);
    CHECK(rest.rfind("HTTP/1.0 200 OK\r\n", 0) == 0);
    CHECK(rest.find("Directory listing for /") != std::string::npos);
    p2prc_test::MemStream w2r(streams["conn2 S->C"]);
    auto swc = std::get<StartWorkConn>(read_msg(w2r, Millis(100)));
    CHECK(swc.proxy_name == "web");
    CHECK(swc.src_addr == "127.0.0.1");
    CHECK(swc.dst_addr == "127.0.0.1");
    CHECK(swc.src_port == 42650);
    CHECK(swc.dst_port == 16000);
    CHECK(encode_frame(swc) == w2r.input.substr(0, w2r.pos));
    CHECK(w2r.input.substr(w2r.pos).rfind("GET / HTTP/1.1\r\nHost: 127.0.0.1:16000\r\n", 0) == 0);
    p2prc_test::MemStream w3(streams["conn3 C->S"]);
    CHECK(std::get<NewWorkConn>(read_msg(w3, Millis(100))).run_id == "55f78436ff006f49");
    CHECK(w3.pos == w3.input.size());
}
