// frp message framing and JSON bodies: spec vectors, round trips, rejection rules.
#include <p2prc.hpp>

#include "support/bytes.hpp"

#include <doctest/doctest.h>

#include <functional>
#include <set>

using namespace p2prc::frp;
using p2prc::errc;
using p2prc_test::hex;
using p2prc_test::unhex;

namespace {

errc code_of(const std::function<void()>& f) {
    try {
        f();
    } catch (const p2prc::error& e) {
        return e.code();
    }
    FAIL("expected a p2prc::error");
    return errc::state_error;
}

// One populated instance of every message type (all fields set where it matters).
std::vector<Message> sample_messages() {
    Login login;
    login.version = "0.45.0";
    login.hostname = "h<o>st&";
    login.os = "linux";
    login.arch = "amd64";
    login.user = "alice";
    login.privilege_key = privilege_key("s3cret", 1700000000);
    login.timestamp = 1700000000;
    login.run_id = "0123456789abcdef";
    login.metas = {{"zeta", "1"}, {"alpha", "\xe2\x80\xa8 line sep"}};
    login.pool_count = 5;
    NewProxy np;
    np.proxy_name = "ssh";
    np.proxy_type = "tcp";
    np.use_encryption = true;
    np.use_compression = true;
    np.group = "g";
    np.group_key = "gk";
    np.metas = {{"k", "v"}};
    np.remote_port = 6000;
    np.custom_domains = {"a.example", "b.example"};
    np.subdomain = "sub";
    np.locations = {"/", "/x"};
    np.http_user = "u";
    np.http_pwd = "p";
    np.host_header_rewrite = "h";
    np.headers = {{"X-A", "1"}};
    np.route_by_http_user = "r";
    np.sk = "secret";
    np.multiplexer = "httpconnect";
    StartWorkConn swc{"ssh", "203.0.113.7", "198.51.100.1", 51234, 6000, "e"};
    NewVisitorConn nvc{"v", "sk", -5, true, false};
    UdpPacket udp;
    udp.content = "aGVsbG8=";
    udp.remote_addr = UdpAddr{"203.0.113.7", 5353, ""};
    udp.local_addr = UdpAddr{"::1", 1, "eth0"};
    return {login,
            LoginResp{"0.45.0", "0123456789abcdef", 7001, "bad \"token\"\n"},
            np,
            NewProxyResp{"ssh", ":6000", "port already used"},
            CloseProxy{"ssh"},
            NewWorkConn{"0123456789abcdef", "key", 1700000000},
            ReqWorkConn{},
            swc,
            nvc,
            NewVisitorConnResp{"v", "e"},
            Ping{"key", 1},
            Pong{"error"},
            udp,
            NatHoleVisitor{"x", "sk", 9},
            NatHoleClient{"x", "sid"},
            NatHoleResp{"sid", "1.2.3.4:5", "5.6.7.8:9", ""},
            NatHoleClientDetectOK{},
            NatHoleSid{"sid"}};
}

}  // namespace

TEST_CASE("spec 12.3: the framed Login is byte-exact") {
    Login login;
    login.version = "0.45.0";
    login.os = "linux";
    login.arch = "amd64";
    login.privilege_key = privilege_key("s3cret", 1700000000);
    login.timestamp = 1700000000;
    login.pool_count = 1;
    std::string expect = unhex(
        "6f00000000000000897b2276657273696f6e223a22302e34352e30222c226f73223a226c696e7578"
        "222c2261726368223a22616d643634222c2270726976696c6567655f6b6579223a22356437356339"
        "6334323266383838613666633133666531306366643462333065222c2274696d657374616d70223a"
        "313730303030303030302c22706f6f6c5f636f756e74223a317d");
    std::string frame = encode_frame(login);
    CHECK(frame.size() == 146);
    CHECK(hex(frame) == hex(expect));
    CHECK(encode_body(login) ==
          R"({"version":"0.45.0","os":"linux","arch":"amd64","privilege_key":)"
          R"("5d75c9c422f888a6fc13fe10cfd4b30e","timestamp":1700000000,"pool_count":1})");
}

TEST_CASE("spec 12.3: bodies and first 9 bytes of the other frames") {
    struct Case {
        Message m;
        const char* body;
        const char* head;
    };
    std::vector<Case> cases = {
        {LoginResp{"0.45.0", "0123456789abcdef", 0, ""},
         R"({"version":"0.45.0","run_id":"0123456789abcdef"})", "310000000000000030"},
        {[] {
             NewProxy p;
             p.proxy_name = "ssh";
             p.proxy_type = "tcp";
             p.remote_port = 6000;
             return p;
         }(),
         R"({"proxy_name":"ssh","proxy_type":"tcp","remote_port":6000})", "70000000000000003a"},
        {NewProxyResp{"ssh", ":6000", ""}, R"({"proxy_name":"ssh","remote_addr":":6000"})",
         "32000000000000002a"},
        {NewWorkConn{"0123456789abcdef", "", 0}, R"({"run_id":"0123456789abcdef"})",
         "77000000000000001d"},
        {StartWorkConn{"ssh", "203.0.113.7", "198.51.100.1", 51234, 6000, ""},
         R"({"proxy_name":"ssh","src_addr":"203.0.113.7","dst_addr":"198.51.100.1",)"
         R"("src_port":51234,"dst_port":6000})",
         "730000000000000068"},
        {CloseProxy{"ssh"}, R"({"proxy_name":"ssh"})", "630000000000000014"},
        {ReqWorkConn{}, "{}", "720000000000000002"},
        {Ping{}, "{}", "680000000000000002"},
        {Pong{}, "{}", "340000000000000002"},
    };
    for (const auto& c : cases) {
        CAPTURE(c.body);
        std::string f = encode_frame(c.m);
        CHECK(hex(f.substr(0, 9)) == c.head);
        CHECK(f.substr(9) == c.body);
        CHECK(decode_body(f[0], f.substr(9)) == c.m);
    }
    CHECK(hex(encode_frame(Ping{})) ==
          "68000000000000000"
          "27b7d");
}

TEST_CASE("Go encoding/json string escaping") {
    CloseProxy c{std::string("<a&b>\"\\\n\r\t\x01\x7f \xe2\x80\xa8\xe2\x80\xa9 \xc3\xa9 \xff\xc3")};
    CHECK(encode_body(c) ==
          "{\"proxy_name\":\"\\u003ca\\u0026b\\u003e\\\"\\\\\\n\\r\\t\\u0001\x7f "
          "\\u2028\\u2029 \xc3\xa9 \\ufffd\\ufffd\"}");
    // Maps sorted bytewise, empty containers omitted, false/0 omitted.
    Login l;
    l.metas = {{"b", "2"}, {"B", "1"}, {"a", ""}};
    CHECK(encode_body(l) == R"({"metas":{"B":"1","a":"","b":"2"}})");
    UdpPacket u;
    u.remote_addr = UdpAddr{"203.0.113.7", 5353, ""};
    CHECK(encode_body(u) == R"({"r":{"IP":"203.0.113.7","Port":5353,"Zone":""}})");
}

TEST_CASE("decode(encode(m)) == m for every message type") {
    auto all = sample_messages();
    std::set<char> types;
    for (const auto& m : all) {
        CAPTURE(name_of(m));
        types.insert(type_of(m));
        std::string f = encode_frame(m);
        CHECK(f[0] == type_of(m));
        Message back = decode_body(f[0], f.substr(9));
        CHECK(back == m);
        CHECK(back.index() == m.index());
        // A default-constructed message differs (the samples set their fields).
        if (encode_body(m) != "{}") CHECK_FALSE(decode_body(f[0], "{}") == m);
    }
    CHECK(types.size() == 18);
    for (char t : std::string("o1p2cwrsv3h4uinmd5")) CHECK(is_known_type(t));
    CHECK_FALSE(is_known_type('x'));
    CHECK_FALSE(is_known_type('\0'));
}

TEST_CASE(
    "every field Go's omitempty may drop: {} decodes to the zero message, which encodes as {}") {
    // P2PRC's Go client sends NewProxy as {"remote_port":N}: name and type left out. Every
    // field of every message may be missing in the same way, and reads as its zero value.
    std::size_t checked = 0;
    auto check_zero = [&](auto zero) {
        using M = decltype(zero);
        CAPTURE(M::name);
        Message m = decode_body(M::type, "{}");
        REQUIRE(std::holds_alternative<M>(m));
        CHECK(std::get<M>(m) == zero);
        CHECK(encode_body(Message(zero)) == "{}");
        // Unknown keys alone change nothing either.
        CHECK(std::get<M>(decode_body(M::type, R"({"x-unknown":[1,{"y":null}]})")) == zero);
        ++checked;
    };
    std::apply([&](auto... zeros) { (check_zero(zeros), ...); },
               std::tuple<Login, LoginResp, NewProxy, NewProxyResp, CloseProxy, NewWorkConn,
                          ReqWorkConn, StartWorkConn, NewVisitorConn, NewVisitorConnResp, Ping,
                          Pong, UdpPacket, NatHoleVisitor, NatHoleClient, NatHoleResp,
                          NatHoleClientDetectOK, NatHoleSid>{});
    CHECK(checked == std::variant_size_v<Message>);
    CHECK(proxy_label("") == "unnamed proxy []");
    CHECK(proxy_label("web") == "proxy [web]");
}

TEST_CASE("decoding follows Go: unknown keys, case-insensitive keys, null, integer rules") {
    auto m = std::get<NewProxy>(decode_body(
        'p', R"({"PROXY_NAME":"a","proxy_name":"b","extra":[1,{"x":2}],"Remote_Port":70000,)"
             R"("metas":null,"use_encryption":true})"));
    CHECK(m.proxy_name == "b");  // exact match preferred
    CHECK(m.remote_port == 70000);
    CHECK(m.metas.empty());
    CHECK(m.use_encryption);
    CHECK(std::get<StartWorkConn>(decode_body('s', R"({"src_port":65535})")).src_port == 65535);
    CHECK(code_of([] { decode_body('s', R"({"src_port":65536})"); }) == errc::parse_error);
    CHECK(code_of([] { decode_body('s', R"({"src_port":-1})"); }) == errc::parse_error);
    CHECK(code_of([] { decode_body('p', R"({"remote_port":1.5})"); }) == errc::parse_error);
    CHECK(code_of([] { decode_body('p', R"({"remote_port":1e3})"); }) == errc::parse_error);
    CHECK(code_of([] { decode_body('o', R"({"timestamp":9223372036854775808})"); }) ==
          errc::parse_error);
    CHECK(std::get<Login>(decode_body('o', R"({"timestamp":-9223372036854775808})")).timestamp ==
          INT64_MIN);
    CHECK(code_of([] { decode_body('p', R"({"proxy_name":5})"); }) == errc::parse_error);
    CHECK(code_of([] { decode_body('p', R"({"use_encryption":"yes"})"); }) == errc::parse_error);
    CHECK(code_of([] { decode_body('u', R"({"r":{"IP":"nope"}})"); }) == errc::parse_error);
    CHECK(code_of([] { decode_body('h', "[]"); }) == errc::parse_error);
    CHECK(code_of([] { decode_body('h', ""); }) == errc::parse_error);
    CHECK(code_of([] { decode_body('h', "{} x"); }) == errc::parse_error);
    CHECK(code_of([] { decode_body('h', "{\"a\":"); }) == errc::parse_error);
    CHECK(code_of([] { decode_body('x', "{}"); }) == errc::protocol_error);
    // "\u003c" and a raw '<' decode alike.
    CHECK(std::get<CloseProxy>(decode_body('c', R"({"proxy_name":"\u003cx<"})")).proxy_name ==
          "<x<");
}

TEST_CASE("one byte stream split at every boundary decodes identically") {
    auto all = sample_messages();
    std::string stream;
    for (const auto& m : all) stream += encode_frame(m);
    for (std::size_t cut = 0; cut <= stream.size(); ++cut) {
        FrameDecoder d;
        std::vector<Message> got;
        d.feed(stream.data(), cut);
        while (auto m = d.take()) got.push_back(*m);
        d.feed(stream.data() + cut, stream.size() - cut);
        while (auto m = d.take()) got.push_back(*m);
        REQUIRE(got.size() == all.size());
        for (std::size_t i = 0; i < all.size(); ++i) CHECK(got[i] == all[i]);
        CHECK(d.pending() == 0);
    }
    // And byte by byte.
    FrameDecoder d;
    std::size_t n = 0;
    for (char c : stream) {
        d.feed(&c, 1);
        while (d.take()) ++n;
    }
    CHECK(n == all.size());
}

TEST_CASE("bad frames are rejected before the body is buffered") {
    auto header = [](char type, std::int64_t len) {
        std::string h(1, type);
        for (int s = 56; s >= 0; s -= 8) h += char((std::uint64_t(len) >> s) & 0xff);
        return h;
    };
    SUBCASE("oversize length, body never fed") {
        FrameDecoder d;
        std::string h = header('h', 10241);
        CHECK(code_of([&] { d.feed(h.data(), h.size()); }) == errc::limit_exceeded);
        // Sticky: the stream cannot be resynchronised.
        CHECK(code_of([&] { d.feed("{}", 2); }) == errc::state_error);
    }
    SUBCASE("negative length") {
        FrameDecoder d;
        std::string h = header('h', -1);
        CHECK(code_of([&] { d.feed(h.data(), h.size()); }) == errc::protocol_error);
        h = header('h', INT64_MIN);
        FrameDecoder d2;
        CHECK(code_of([&] { d2.feed(h.data(), h.size()); }) == errc::protocol_error);
    }
    SUBCASE("exactly 10240 is allowed") {
        std::string body = "{\"proxy_name\":\"" + std::string(10240 - 17, 'a') + "\"}";
        REQUIRE(body.size() == 10240);
        std::string f = header('c', 10240) + body;
        FrameDecoder d;
        d.feed(f.data(), f.size());
        auto m = d.take();
        REQUIRE(m);
        CHECK(std::get<CloseProxy>(*m).proxy_name.size() == 10223);
        CloseProxy big{std::string(10224, 'a')};
        CHECK(code_of([&] { encode_frame(big); }) == errc::limit_exceeded);
        CHECK(encode_frame(CloseProxy{std::string(10223, 'a')}).size() == 9 + 10240);
    }
    SUBCASE("unknown type is rejected on its first byte") {
        FrameDecoder d;
        CHECK(code_of([&] { d.feed("x", 1); }) == errc::protocol_error);
    }
    SUBCASE("invalid JSON") {
        std::string f = header('h', 3) + "{x}";
        FrameDecoder d;
        CHECK(code_of([&] { d.feed(f.data(), f.size()); }) == errc::parse_error);
        std::string z = header('h', 0);
        FrameDecoder d2;
        CHECK(code_of([&] { d2.feed(z.data(), z.size()); }) == errc::parse_error);
    }
    SUBCASE("read_msg stops at the bound and never reads past a frame") {
        p2prc_test::MemStream s(header('h', 1 << 30) + std::string(64, '{'));
        CHECK(code_of([&] { read_msg(s, p2prc::detail::Millis(100)); }) == errc::limit_exceeded);
        CHECK(s.pos == 9);
        p2prc_test::MemStream t(encode_frame(Ping{}) + "IVIVIVIVIVIVIVIV", 3);
        CHECK(std::holds_alternative<Ping>(read_msg(t, p2prc::detail::Millis(100))));
        CHECK(t.pos == 11);
        p2prc_test::MemStream u("q");
        CHECK(code_of([&] { read_msg(u, p2prc::detail::Millis(100)); }) == errc::protocol_error);
        p2prc_test::MemStream v(encode_frame(Ping{}).substr(0, 10));
        CHECK(code_of([&] { read_msg(v, p2prc::detail::Millis(100)); }) == errc::io_error);
    }
}

TEST_CASE("write_msg writes the frame") {
    p2prc_test::MemStream s;
    write_msg(s, NewProxyResp{"web", ":16000", ""}, p2prc::detail::Millis(100));
    CHECK(s.output == encode_frame(NewProxyResp{"web", ":16000", ""}));
}
