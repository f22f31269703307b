// use_compression: snappy framing (spec 12.5), blocks with every element kind, bounds.
#include <p2prc.hpp>

#include "support/bytes.hpp"

#include <doctest/doctest.h>

#include <random>

using namespace p2prc::frp;
using p2prc_test::hex;
using p2prc_test::unhex;

namespace {
std::string le32(std::uint32_t v) {
    std::string s;
    for (int i = 0; i < 4; ++i) s += char((v >> (8 * i)) & 0xff);
    return s;
}
std::string decode_all(const std::string& framed, std::size_t step = 1 << 20) {
    snappy::FrameDecoder d;
    std::string out;
    for (std::size_t at = 0; at < framed.size(); at += step) {
        d.feed(framed.data() + at, std::min(step, framed.size() - at));
        std::vector<char> buf(d.available());
        out.append(buf.data(), d.read(buf.data(), buf.size()));
    }
    return out;
}
p2prc::errc code_of(const std::function<void()>& f) {
    try {
        f();
    } catch (const p2prc::error& e) {
        return e.code();
    }
    FAIL("expected a p2prc::error");
    return p2prc::errc::state_error;
}
}  // namespace

TEST_CASE("spec 12.5: CRC-32C and the framed \"hello\"") {
    CHECK(snappy::crc32c("123456789", 9) == 0xe3069283u);  // the standard check value
    CHECK(snappy::crc32c("hello", 5) == 0x9a71bb4cu);
    CHECK(snappy::masked_crc("hello", 5) == 0x191c1fbbu);
    snappy::FrameEncoder e;
    CHECK(hex(e.encode("hello", 5)) ==
          "ff060000734e61507059"
          "01090000"
          "bb1f1c19"
          "68656c6c6f");
    // A second write of the same direction has no identifier.
    CHECK(hex(e.encode("hello", 5)) == "01090000bb1f1c1968656c6c6f");
    CHECK(decode_all(unhex("ff060000734e6150705901090000bb1f1c1968656c6c6f")) == "hello");
}

TEST_CASE("snappy blocks: literals and the three copy forms, by hand") {
    // "abcd" literal, then a 1-byte-offset copy (len 8, offset 4).
    CHECK(snappy::decompress_block(unhex("0c0c6162636411 04").data(), 8) == "abcdabcdabcd");
    // 2-byte-offset copy, len 12.
    CHECK(snappy::decompress_block(unhex("100c616263642e0400").data(), 9) == "abcdabcdabcdabcd");
    // 4-byte-offset copy, len 4; and an overlapping run (offset 1, len 9).
    CHECK(snappy::decompress_block(unhex("080c616263640f04000000").data(), 11) == "abcdabcd");
    CHECK(snappy::decompress_block(unhex("0a00782201 00").data(), 6) == "xxxxxxxxxx");
    // A literal with a 1-byte length extension (61 bytes).
    std::string lit(61, 'q');
    CHECK(snappy::decompress_block((unhex("3df03c") + lit).data(), 3 + 61) == lit);
    auto bad = [](const std::string& h) {
        std::string b = unhex(h);
        return code_of([&] { snappy::decompress_block(b.data(), b.size()); });
    };
    CHECK(bad("0c0c6162636411 00") == p2prc::errc::parse_error);  // offset 0
    CHECK(bad("0c0c6162636411 05") == p2prc::errc::parse_error);  // before the start
    CHECK(bad("0d0c6162636411 04") == p2prc::errc::parse_error);  // length mismatch
    CHECK(bad("0c0c616263") == p2prc::errc::parse_error);         // truncated literal
    CHECK(bad("0c0c6162636411") == p2prc::errc::parse_error);     // truncated copy
    CHECK(bad("808008") == p2prc::errc::limit_exceeded);          // 131072 > 64 KiB
    CHECK(bad("ffffffffff0f") == p2prc::errc::parse_error);       // varint too long
}

TEST_CASE("snappy framing: compressed chunks, skippable chunks, errors") {
    std::string plain = "abcdabcdabcdabcd";
    std::string block = unhex("100c616263642e0400");
    std::string chunk = std::string("\x00", 1) + char(4 + block.size()) + std::string(2, '\0') +
                        le32(snappy::masked_crc(plain.data(), plain.size())) + block;
    std::string id = unhex("ff060000734e61507059");
    std::string padding = unhex("fe030000000000");
    std::string skippable = unhex("80020000aaaa");
    std::string stream = id + chunk + padding + skippable + id + chunk;
    for (std::size_t step : {1, 3, 7, 1000}) CHECK(decode_all(stream, step) == plain + plain);

    CHECK(code_of([&] { decode_all(chunk); }) == p2prc::errc::protocol_error);  // no identifier
    std::string bad_crc = chunk;
    bad_crc[4] ^= 1;
    CHECK(code_of([&] { decode_all(id + bad_crc); }) == p2prc::errc::protocol_error);
    CHECK(code_of([&] { decode_all(id + unhex("02000000")); }) == p2prc::errc::protocol_error);
    // A chunk header announcing more than a block allows is refused before its body.
    CHECK(code_of([&] { decode_all(id + unhex("01050001")); }) == p2prc::errc::limit_exceeded);
    CHECK(code_of([&] { decode_all(id + unhex("00ffffff")); }) == p2prc::errc::limit_exceeded);
    CHECK(code_of([&] { decode_all(unhex("ff060000734e61507058")); }) ==
          p2prc::errc::protocol_error);
}

TEST_CASE("snappy: encoder output round-trips; compressible data shrinks") {
    std::mt19937 rng(7);
    std::string random(200000, '\0');
    for (auto& c : random) c = char(rng());
    std::string text;
    while (text.size() < 300000) text += "GET /index.html HTTP/1.1\r\nHost: example\r\n\r\n";
    for (const std::string* data : {&random, &text}) {
        snappy::FrameEncoder e;
        std::string framed = e.encode(data->data(), 1000);
        framed += e.encode(data->data() + 1000, data->size() - 1000);
        CHECK(decode_all(framed, 4093) == *data);
        if (data == &text) {
            CHECK(framed.size() < data->size() / 4);
        } else {
            CHECK(framed.size() < data->size() + 64);  // stored uncompressed
        }
    }
    // Every copy length and offset class.
    for (std::size_t len : {4, 5, 11, 12, 63, 64, 65, 67, 68, 69, 200, 5000}) {
        for (std::size_t off : {1, 3, 2047, 2048, 40000}) {
            std::string s(off, '\0');
            for (auto& c : s) c = char(rng());
            for (std::size_t i = 0; i < len; ++i) s += s[s.size() - off];
            s += "tail";
            if (s.size() > snappy::kMaxBlock) continue;
            std::string b = snappy::compress_block(s.data(), s.size());
            CHECK(snappy::decompress_block(b.data(), b.size()) == s);
        }
    }
}

TEST_CASE("SnappyStream inside CryptoStream, as a work connection with both flags") {
    auto wire = std::make_shared<p2prc_test::MemStream>();
    auto enc = std::make_shared<CryptoStream>(wire, derive_key("tok"));
    SnappyStream w(enc);
    std::string msg;
    for (int i = 0; i < 5000; ++i) msg += "line " + std::to_string(i % 50) + "\n";
    w.write_all(msg.data(), msg.size(), p2prc::detail::Millis(100));
    w.write_all("end", 3, p2prc::detail::Millis(100));
    CHECK(wire->output.size() < msg.size() / 2);
    auto in = std::make_shared<p2prc_test::MemStream>(wire->output, 999);
    SnappyStream r(std::make_shared<CryptoStream>(in, derive_key("tok")));
    std::string back(msg.size() + 3, '\0');
    r.read_exact(back.data(), back.size(), p2prc::detail::Millis(1000));
    CHECK(back == msg + "end");
    char c;
    CHECK(r.read_some(&c, 1, p2prc::detail::Millis(10)) == 0);
    // Cut inside a chunk: end of stream there is an error, not a silent truncation.
    auto cut = std::make_shared<p2prc_test::MemStream>(wire->output.substr(0, 40));
    SnappyStream r2(std::make_shared<CryptoStream>(cut, derive_key("tok")));
    CHECK_THROWS_AS(r2.read_exact(back.data(), back.size(), p2prc::detail::Millis(100)),
                    p2prc::error);
}
