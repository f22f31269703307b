// yamux frame encoding and the thread-free frame parser: spec 12.6 vectors and bounds.
#include <p2prc.hpp>

#include "support/bytes.hpp"

#include <doctest/doctest.h>

using namespace p2prc::frp::yamux;
using p2prc_test::hex;
using p2prc_test::unhex;

namespace {
std::string h(const Header& x) {
    auto b = encode_header(x);
    return hex(b.data(), b.size());
}
}  // namespace

TEST_CASE("spec 12.6: yamux frame bytes") {
    CHECK(h({FrameType::window_update, kSyn, 1, 0}) == "000100010000000100000000");
    CHECK(h({FrameType::window_update, kAck, 1, 0}) == "000100020000000100000000");
    CHECK(h({FrameType::data, 0, 1, 146}) == "000000000000000100000092");
    CHECK(h({FrameType::window_update, 0, 3, 131072}) == "000100000000000300020000");
    CHECK(h({FrameType::window_update, kFin, 3, 0}) == "000100040000000300000000");
    CHECK(h({FrameType::window_update, kRst, 3, 0}) == "000100080000000300000000");
    CHECK(h({FrameType::ping, kSyn, 0, 0}) == "000200010000000000000000");
    CHECK(h({FrameType::ping, kAck, 0, 0}) == "000200020000000000000000");
    CHECK(h({FrameType::ping, kSyn, 0, 5}) == "000200010000000000000005");
    CHECK(h({FrameType::go_away, 0, 0, kGoAwayNormal}) == "000300000000000000000000");
    CHECK(h({FrameType::window_update, kSyn | kAck | kFin, 0xfffffffe, 0x01020304}) ==
          "00010007fffffffe01020304");
    std::string b = unhex("00010007fffffffe01020304");
    auto back = parse_header(reinterpret_cast<const std::uint8_t*>(b.data()));
    CHECK(back == Header{FrameType::window_update, kSyn | kAck | kFin, 0xfffffffe, 0x01020304});
}

TEST_CASE("yamux parser: a stream split at every boundary gives the same frames") {
    std::string payload(300, 'p');
    for (std::size_t i = 0; i < payload.size(); ++i) payload[i] = char(i);
    std::string s = unhex("000100010000000100000000") + unhex("00000000000000010000012c") +
                    payload + unhex("000200010000000000000007") +
                    unhex("000000040000000100000000") + unhex("000300000000000000000002");
    for (std::size_t cut = 0; cut <= s.size(); ++cut) {
        FrameParser p;
        std::vector<Frame> got;
        p.feed(s.data(), cut);
        while (auto f = p.next()) got.push_back(*f);
        p.feed(s.data() + cut, s.size() - cut);
        while (auto f = p.next()) got.push_back(*f);
        REQUIRE(got.size() == 5);
        CHECK(got[0].header == Header{FrameType::window_update, kSyn, 1, 0});
        CHECK(got[1].header == Header{FrameType::data, 0, 1, 300});
        CHECK(got[1].payload == payload);
        CHECK(got[2].header == Header{FrameType::ping, kSyn, 0, 7});
        CHECK(got[3].header == Header{FrameType::data, kFin, 1, 0});
        CHECK(got[3].payload.empty());
        CHECK(got[4].header == Header{FrameType::go_away, 0, 0, 2});
    }
}

TEST_CASE("yamux parser: bad version, bad type and oversize Data are refused at the header") {
    auto refuse = [](const std::string& hexbytes, p2prc::errc code) {
        FrameParser p(1000);
        std::string b = unhex(hexbytes);
        try {
            p.feed(b.data(), b.size());
            FAIL("accepted " << hexbytes);
        } catch (const p2prc::error& e) {
            CHECK(e.code() == code);
        }
        // Sticky.
        CHECK_THROWS_AS(p.feed("", 0), p2prc::error);
    };
    refuse("010100010000000100000000", p2prc::errc::protocol_error);
    refuse("000400010000000100000000", p2prc::errc::protocol_error);
    refuse("0000000000000001000003e9", p2prc::errc::protocol_error);  // 1001 > 1000
    // 1000 is fine; a Data header with no payload yet yields nothing.
    FrameParser p(1000);
    std::string b = unhex("0000000000000001000003e8");
    p.feed(b.data(), b.size());
    CHECK_FALSE(p.next());
    // Non-Data frames never carry a payload, whatever their length says.
    std::string wu = unhex("0001000000000001ffffffff");
    p.feed(std::string(1000, 'x').data(), 1000);
    REQUIRE(p.next());
    p.feed(wu.data(), wu.size());
    auto f = p.next();
    REQUIRE(f);
    CHECK(f->header.length == 0xffffffffu);
}
