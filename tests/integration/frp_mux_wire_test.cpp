// A yamux session against a hand-driven peer: exact bytes on the wire and the protocol's
// error rules (backlog, duplicate SYN, window overrun, unknown ids, pings).
#include <p2prc.hpp>

#include "support/loopback.hpp"

#include <doctest/doctest.h>

#include <thread>

using namespace p2prc::frp;
using namespace std::chrono_literals;
using p2prc_test::RawPeer;

namespace {
MuxConfig quiet() {
    MuxConfig c;
    c.keepalive_interval = p2prc::detail::Millis(0);
    return c;
}
}  // namespace

TEST_CASE("mux wire: client frames are byte-exact (SYN, Data, window update, FIN)") {
    auto tcp = p2prc_test::tcp_pair();
    MuxSession client(tcp.client, MuxRole::client, quiet());
    RawPeer frps{tcp.server};
    auto s = client.open(1s);
    CHECK(frps.read_frame_hex() == "000100010000000100000000");  // WU SYN stream 1
    std::string login(146, 'L');  // the size of the spec's framed Login
    s->write_all(login.data(), login.size(), 1s);
    std::string payload;
    CHECK(frps.read_frame_hex(&payload) == "000000000000000100000092");
    CHECK(payload == login);
    frps.send_hex("000100020000000100000000");  // ACK

    // The peer sends 128 KiB: once we have read it all, we return exactly that much window.
    std::string chunk(65536, 'd');
    frps.send_frame({yamux::FrameType::data, 0, 1, 65536}, chunk);
    frps.send_frame({yamux::FrameType::data, 0, 1, 65536}, chunk);
    std::vector<char> buf(131072);
    s->read_exact(buf.data(), 131071, 2s);
    s->read_exact(buf.data(), 1, 2s);
    CHECK(frps.read_frame_hex() == "000100000000000100020000");

    // Ping from the peer is answered with the same id.
    frps.send_hex("000200010000000000000005");
    CHECK(frps.read_frame_hex() == "000200020000000000000005");

    s->shutdown_write();
    CHECK(frps.read_frame_hex() == "000100040000000100000000");
    // GoAway normal from us: exact bytes.
    client.go_away();
    CHECK(frps.read_frame_hex() == "000300000000000000000000");
}

TEST_CASE("mux wire: accept sends ACK; data before accept is kept; unknown ids ignored") {
    auto tcp = p2prc_test::tcp_pair();
    MuxSession server(tcp.server, MuxRole::server, quiet());
    RawPeer frpc{tcp.client};
    // Frames for streams that do not exist are ignored (Data payload discarded).
    frpc.send_frame({yamux::FrameType::data, 0, 99, 5}, "junk!");
    frpc.send_hex("000100000000004d00010000");  // WU for 77
    frpc.send_hex("000100080000000700000000");  // RST for 7
    frpc.send_hex("000100010000000100000000");
    frpc.send_frame({yamux::FrameType::data, 0, 1, 5}, "hello");
    auto s = server.accept(2s);
    REQUIRE(s);
    CHECK(s->id() == 1);
    CHECK(frpc.read_frame_hex() == "000100020000000100000000");
    char b[5];
    s->read_exact(b, 5, 1s);
    CHECK(std::string(b, 5) == "hello");
    CHECK_FALSE(server.closed());
    // FIN + RST semantics from the peer side: FIN -> end of stream after the data.
    frpc.send_frame({yamux::FrameType::data, yamux::kFin, 1, 3}, "bye");
    s->read_exact(b, 3, 1s);
    CHECK(std::string(b, 3) == "bye");
    CHECK(s->read_some(b, 1, 1s) == 0);
}

TEST_CASE("mux wire: accept backlog bound answers RST") {
    auto tcp = p2prc_test::tcp_pair();
    MuxConfig cfg = quiet();
    cfg.accept_backlog = 4;
    MuxSession server(tcp.server, MuxRole::server, cfg);
    RawPeer frpc{tcp.client};
    for (std::uint32_t id = 1; id <= 11; id += 2)
        frpc.send_frame({yamux::FrameType::window_update, yamux::kSyn, id, 0});
    // Streams 9 and 11 exceed the backlog of 4.
    CHECK(frpc.read_frame_hex() == "000100080000000900000000");
    CHECK(frpc.read_frame_hex() == "000100080000000b00000000");
    std::vector<std::unique_ptr<MuxStream>> kept;  // (destroying one would send FIN)
    for (std::uint32_t id = 1; id <= 7; id += 2) {
        kept.push_back(server.accept(1s));
        auto& s = kept.back();
        REQUIRE(s);
        CHECK(s->id() == id);
        CHECK(
            frpc.read_frame_hex() ==
            p2prc_test::hex(
                yamux::encode_header({yamux::FrameType::window_update, yamux::kAck, id, 0}).data(),
                12));
    }
    CHECK(server.accept(50ms) == nullptr);
    // With room again, a new SYN is queued.
    frpc.send_frame({yamux::FrameType::window_update, yamux::kSyn, 13, 0});
    auto s = server.accept(1s);
    REQUIRE(s);
    CHECK(s->id() == 13);
    CHECK_FALSE(server.closed());
}

TEST_CASE("mux wire: a SYN for an existing id is a protocol error (GoAway 1, closed)") {
    auto tcp = p2prc_test::tcp_pair();
    MuxSession server(tcp.server, MuxRole::server, quiet());
    RawPeer frpc{tcp.client};
    frpc.send_hex("000100010000000100000000");
    frpc.send_hex("000100010000000100000000");
    CHECK(frpc.read_frame_hex() == "000300000000000000000001");
    CHECK(frpc.sees_eof());
    CHECK(server.closed());
    CHECK(server.close_reason().find("already exists") != std::string::npos);
    CHECK_THROWS_AS(server.accept(100ms), p2prc::error);
}

TEST_CASE("mux wire: Data beyond the receive window is a protocol error") {
    auto tcp = p2prc_test::tcp_pair();
    MuxSession server(tcp.server, MuxRole::server, quiet());
    RawPeer frpc{tcp.client};
    frpc.send_hex("000100010000000100000000");
    std::string a(200000, 'a'), b(62145, 'b');  // 262145 = window + 1
    frpc.send_frame({yamux::FrameType::data, 0, 1, std::uint32_t(a.size())}, a);
    frpc.send_frame({yamux::FrameType::data, 0, 1, std::uint32_t(b.size())}, b);
    CHECK(frpc.read_frame_hex() == "000300000000000000000001");
    CHECK(frpc.sees_eof());
    CHECK(server.closed());
    CHECK(server.close_reason().find("window") != std::string::npos);
}

TEST_CASE("mux wire: a bad header (version, type) closes the session with GoAway 1") {
    for (const char* bad : {"010100010000000100000000", "000900000000000000000000"}) {
        auto tcp = p2prc_test::tcp_pair();
        MuxSession server(tcp.server, MuxRole::server, quiet());
        RawPeer frpc{tcp.client};
        frpc.send_hex(bad);
        CHECK(frpc.read_frame_hex() == "000300000000000000000001");
        CHECK(frpc.sees_eof());
        CHECK(server.closed());
    }
}

TEST_CASE("mux wire: GoAway with an error code tears the session down") {
    auto tcp = p2prc_test::tcp_pair();
    MuxSession client(tcp.client, MuxRole::client, quiet());
    RawPeer frps{tcp.server};
    auto s = client.open(1s);
    frps.read_frame_hex();
    frps.send_hex("000300000000000000000002");
    char b;
    CHECK_THROWS_AS(s->read_some(&b, 1, 3s), p2prc::error);
    CHECK(client.closed());
    CHECK(client.close_reason().find("GoAway") != std::string::npos);
}

TEST_CASE("mux wire: our keepalive pings count up from 0 and accept the ACK") {
    auto tcp = p2prc_test::tcp_pair();
    MuxConfig cfg;
    cfg.keepalive_interval = p2prc::detail::Millis(50);
    cfg.ping_timeout = p2prc::detail::Millis(2000);
    MuxSession client(tcp.client, MuxRole::client, cfg);
    RawPeer frps{tcp.server};
    for (int i = 0; i < 3; ++i) {
        std::string want = "00020001000000000000000" + std::to_string(i);
        CHECK(frps.read_frame_hex() == want);
        frps.send_hex("00020002000000000000000" + std::to_string(i));
    }
    CHECK_FALSE(client.closed());
}

TEST_CASE("mux wire: a closed stream whose peer never sends FIN is reset after a while") {
    auto tcp = p2prc_test::tcp_pair();
    MuxConfig cfg = quiet();
    cfg.half_closed_timeout = p2prc::detail::Millis(200);
    MuxSession server(tcp.server, MuxRole::server, cfg);
    RawPeer frpc{tcp.client};
    frpc.send_hex("000100010000000100000000");
    frpc.send_hex("000100010000000300000000");
    auto s1 = server.accept(1s);
    auto s3 = server.accept(1s);
    REQUIRE(s1);
    REQUIRE(s3);
    CHECK(frpc.read_frame_hex() == "000100020000000100000000");
    CHECK(frpc.read_frame_hex() == "000100020000000300000000");
    s1->close();
    s3->close();
    CHECK(frpc.read_frame_hex() == "000100040000000100000000");  // FIN
    CHECK(frpc.read_frame_hex() == "000100040000000300000000");
    // Stream 3 gets its FIN answered in time; stream 1 never does.
    frpc.send_hex("000100040000000300000000");
    CHECK(frpc.read_frame_hex() == "000100080000000100000000");  // RST after ~200 ms
    CHECK(server.stream_count() == 0);
    CHECK_FALSE(server.closed());
}
