// Real bytes between stock frpc and frps 0.45.0 with tcp_mux = true
// (tests/data/frp-captures/default.wire.txt): yamux frames, the plain login, the
// encrypted control stream and the work streams.
#include <p2prc.hpp>

#include "support/bytes.hpp"

#include <doctest/doctest.h>

using namespace p2prc::frp;
using p2prc::detail::Millis;

namespace {
struct Direction {
    std::vector<yamux::Header> headers;
    std::map<std::uint32_t, std::string> data;  // per stream, concatenated payloads
};

Direction parse_direction(const std::string& bytes) {
    Direction d;
    yamux::FrameParser p;
    p.feed(bytes.data(), bytes.size());
    while (auto f = p.next()) {
        d.headers.push_back(f->header);
        if (f->header.type == yamux::FrameType::data) d.data[f->header.stream_id] += f->payload;
    }
    return d;
}

bool has(const Direction& d, const yamux::Header& h) {
    return std::find(d.headers.begin(), d.headers.end(), h) != d.headers.end();
}
}  // namespace

TEST_CASE("capture default (tcp_mux): yamux, login, encrypted control, work streams") {
    auto streams = p2prc_test::reassemble(
        p2prc_test::load_capture(P2PRC_TEST_DATA_DIR "/frp-captures/default.wire.txt"));
    REQUIRE(streams.size() == 2);
    auto c2s = parse_direction(streams["conn1 C->S"]);
    auto s2c = parse_direction(streams["conn1 S->C"]);

    using yamux::FrameType;
    // The client opens 1, 3, 5 with WindowUpdate+SYN; the server ACKs each.
    REQUIRE(!c2s.headers.empty());
    CHECK(c2s.headers.front() == yamux::Header{FrameType::window_update, yamux::kSyn, 1, 0});
    for (std::uint32_t id : {1u, 3u, 5u}) {
        CHECK(has(c2s, {FrameType::window_update, yamux::kSyn, id, 0}));
        CHECK(has(s2c, {FrameType::window_update, yamux::kAck, id, 0}));
    }
    // Stream 3 ends with a FIN from each side.
    CHECK(has(c2s, {FrameType::window_update, yamux::kFin, 3, 0}));
    CHECK(has(s2c, {FrameType::window_update, yamux::kFin, 3, 0}));
    // Every id the client uses is odd.
    for (const auto& h : c2s.headers)
        if (h.stream_id) CHECK(h.stream_id % 2 == 1);

    // Stream 1, C->S: plain Login, then IV + AES-CFB(NewProxy).
    auto ctl_up = std::make_shared<p2prc_test::MemStream>(c2s.data[1]);
    auto login = std::get<Login>(read_msg(*ctl_up, Millis(100)));
    CHECK(login.version == "0.45.0");
    CHECK(login.pool_count == 1);
    CHECK(login.privilege_key == privilege_key("", login.timestamp));
    CHECK(encode_frame(login) == c2s.data[1].substr(0, ctl_up->pos));
    CryptoStream up(ctl_up, derive_key(""));
    auto np = std::get<NewProxy>(read_msg(up, Millis(100)));
    CHECK(np.proxy_name == "web");
    CHECK(np.proxy_type == "tcp");
    CHECK(np.remote_port == 16000);
    CHECK(encode_body(np) == R"({"proxy_name":"web","proxy_type":"tcp","remote_port":16000})");

    // Stream 1, S->C: plain LoginResp, then IV + ReqWorkConn, NewProxyResp, ReqWorkConn.
    auto ctl_down = std::make_shared<p2prc_test::MemStream>(s2c.data[1]);
    auto resp = std::get<LoginResp>(read_msg(*ctl_down, Millis(100)));
    CHECK(resp.run_id == "b6f106c835886863");
    CHECK(resp.version == "0.45.0");
    CHECK(encode_frame(resp) == s2c.data[1].substr(0, ctl_down->pos));
    CryptoStream down(ctl_down, derive_key(""));
    CHECK(std::holds_alternative<ReqWorkConn>(read_msg(down, Millis(100))));
    auto npr = std::get<NewProxyResp>(read_msg(down, Millis(100)));
    CHECK(npr.proxy_name == "web");
    CHECK(npr.remote_addr == ":16000");
    CHECK(std::holds_alternative<ReqWorkConn>(read_msg(down, Millis(100))));
    char c;
    CHECK(down.read_some(&c, 1, Millis(10)) == 0);

    // Work stream 3 served the curl request; stream 5 is the pool refill.
    p2prc_test::MemStream w3up(c2s.data[3]);
    CHECK(std::get<NewWorkConn>(read_msg(w3up, Millis(100))).run_id == "b6f106c835886863");
    std::string response = w3up.input.substr(w3up.pos);
    CHECK(response.rfind("HTTP/1.0 200 OK\r\n", 0) == 0);
    CHECK(response.find("Content-Length: 232\r\n") != std::string::npos);
    CHECK(response.size() - (response.find("\r\n\r\n") + 4) == 232);
    p2prc_test::MemStream w3down(s2c.data[3]);
    auto swc = std::get<StartWorkConn>(read_msg(w3down, Millis(100)));
    CHECK(swc.proxy_name == "web");
    CHECK(swc.src_addr == "127.0.0.1");
    CHECK(swc.dst_port == 16000);
    CHECK(swc.src_port == 32898);
    CHECK(w3down.input.substr(w3down.pos) ==
          "GET / HTTP/1.1\r\nHost: 127.0.0.1:16000\r\nUser-Agent: curl/7.88.1\r\nAccept: "
          "*/*\r\n\r\n");
    p2prc_test::MemStream w5(c2s.data[5]);
    CHECK(std::get<NewWorkConn>(read_msg(w5, Millis(100))).run_id == "b6f106c835886863");
    CHECK(w5.pos == w5.input.size());
}
