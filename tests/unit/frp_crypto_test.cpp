// frp's key derivation, privilege key and AES-128-CFB stream: spec section 12 vectors.
#include <p2prc.hpp>

#include "support/bytes.hpp"

#include <doctest/doctest.h>

using namespace p2prc::frp;
using p2prc_test::hex;
using p2prc_test::unhex;

namespace {
CipherIv iv_0_to_15() {
    CipherIv iv{};
    for (int i = 0; i < 16; ++i) iv[i] = std::uint8_t(i);
    return iv;
}
}  // namespace

TEST_CASE("spec 12.1: privilege_key") {
    CHECK(privilege_key("", 1700000000) == "24920decf83f6960b80f737a28eeafc1");
    CHECK(privilege_key("s3cret", 1700000000) == "5d75c9c422f888a6fc13fe10cfd4b30e");
}

TEST_CASE("spec 12.2: key derivation with salt \"frp\"") {
    CHECK(hex(derive_key("").data(), 16) == "cdc9dc4c472c37331281df4c232a8407");
    CHECK(hex(derive_key("s3cret").data(), 16) == "98d40315f7ae4d22a12d1f4879bd5ca9");
    // The wrong (golib default) salt "crypto" gives the spec's third vector; not ours.
    unsigned char wrong[16];
    REQUIRE(PKCS5_PBKDF2_HMAC("s3cret", 6, reinterpret_cast<const unsigned char*>("crypto"), 6, 64,
                              EVP_sha1(), 16, wrong) == 1);
    CHECK(hex(wrong, 16) == "1b1fe4b9ebd3504c99d3d6d515bfdf84");
    CHECK(hex(derive_key("s3cret").data(), 16) != hex(wrong, 16));
}

TEST_CASE("spec 12.4: AES-128-CFB of framed Pings, continuous across messages") {
    std::string ping = encode_frame(Ping{});
    REQUIRE(hex(ping) == "6800000000000000027b7d");
    CipherKey k = derive_key("s3cret");

    CfbCipher enc(k, iv_0_to_15(), CfbCipher::Mode::encrypt);
    std::string a = ping, b = ping;
    enc.apply(reinterpret_cast<std::uint8_t*>(a.data()), a.size());
    CHECK(hex(a) == "f37848b3103aeeb1a4aaff");
    enc.apply(reinterpret_cast<std::uint8_t*>(b.data()), b.size());
    CHECK(hex(b) == "2eb482973d4c731ad418ff");

    std::string r = encode_frame(ReqWorkConn{});
    CfbCipher enc2(k, iv_0_to_15(), CfbCipher::Mode::encrypt);
    enc2.apply(reinterpret_cast<std::uint8_t*>(r.data()), r.size());
    CHECK(hex(r) == "e97848b3103aeeb1a4aaff");

    CfbCipher enc3(derive_key(""), iv_0_to_15(), CfbCipher::Mode::encrypt);
    std::string p = ping;
    enc3.apply(reinterpret_cast<std::uint8_t*>(p.data()), p.size());
    CHECK(hex(p) == "9130610abcb682c5556510");

    // Decrypt in odd-sized pieces: the keystream position carries over partial blocks.
    std::string ct = unhex("f37848b3103aeeb1a4aaff2eb482973d4c731ad418ff");
    CfbCipher dec(k, iv_0_to_15(), CfbCipher::Mode::decrypt);
    std::size_t cuts[] = {1, 4, 12, 5};
    std::size_t at = 0;
    for (auto c : cuts) {
        dec.apply(reinterpret_cast<std::uint8_t*>(ct.data() + at), c);
        at += c;
    }
    CHECK(hex(ct) == hex(ping + ping));
}

TEST_CASE("CryptoStream: IV in clear before the first ciphertext byte, then a stream") {
    auto out = std::make_shared<p2prc_test::MemStream>();
    CryptoStream w(out, derive_key("s3cret"), iv_0_to_15());
    std::string ping = encode_frame(Ping{});
    write_msg(w, Ping{}, p2prc::detail::Millis(100));
    CHECK(hex(out->output) == "000102030405060708090a0b0c0d0e0ff37848b3103aeeb1a4aaff");
    w.write_all(ping.data(), ping.size(), p2prc::detail::Millis(100));
    CHECK(hex(out->output.substr(27)) == "2eb482973d4c731ad418ff");

    // The reader side, fed 3 bytes at a time, recovers both messages.
    auto in = std::make_shared<p2prc_test::MemStream>(out->output, 3);
    CryptoStream r(in, derive_key("s3cret"));
    CHECK(std::holds_alternative<Ping>(read_msg(r, p2prc::detail::Millis(100))));
    CHECK(std::holds_alternative<Ping>(read_msg(r, p2prc::detail::Millis(100))));
    char c;
    CHECK(r.read_some(&c, 1, p2prc::detail::Millis(10)) == 0);

    // A random IV differs between two writers; each round-trips.
    auto o1 = std::make_shared<p2prc_test::MemStream>();
    auto o2 = std::make_shared<p2prc_test::MemStream>();
    CryptoStream w1(o1, derive_key("")), w2(o2, derive_key(""));
    std::string big(200000, 'x');
    for (std::size_t i = 0; i < big.size(); ++i) big[i] = char(i * 7 + i / 251);
    w1.write_all(big.data(), big.size(), p2prc::detail::Millis(100));
    w2.write_all(big.data(), big.size(), p2prc::detail::Millis(100));
    CHECK(o1->output.size() == 16 + big.size());
    CHECK(o1->output.substr(0, 16) != o2->output.substr(0, 16));
    auto i1 = std::make_shared<p2prc_test::MemStream>(o1->output, 1000);
    CryptoStream r1(i1, derive_key(""));
    std::string back(big.size(), '\0');
    r1.read_exact(back.data(), back.size(), p2prc::detail::Millis(1000));
    CHECK(back == big);
    // The wrong key yields garbage, not the plaintext.
    auto i2 = std::make_shared<p2prc_test::MemStream>(o2->output);
    CryptoStream r2(i2, derive_key("other"));
    std::string junk(64, '\0');
    r2.read_exact(junk.data(), junk.size(), p2prc::detail::Millis(1000));
    CHECK(junk != big.substr(0, 64));
}
