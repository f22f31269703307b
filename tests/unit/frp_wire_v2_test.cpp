// frp wire protocol v2: the test vectors of frp-wire-v2.md section 15 (computed from real
// frp 0.70.1 captures), and the framing, hello and AEAD rules around them.
#include <p2prc.hpp>

#include "support/bytes.hpp"

#include <doctest/doctest.h>

using namespace p2prc::frp;
using p2prc::errc;
using p2prc_test::hex;
using p2prc_test::unhex;

namespace {

const std::string kToken = "p2prc-v2-test";

const std::string kMuxClientHello =
    R"({"bootstrap":{"transport":"tcp","tcpMux":true},"capabilities":{"message":{"codecs":["json"]},"crypto":{"algorithms":["aes-256-gcm","xchacha20-poly1305"],"clientRandom":"z4zElucQZDiCHn9B4ZCnkvp6y6/Lie/Il19kwqRw6w0="}}})";
const std::string kMuxServerHello =
    R"({"selected":{"message":{"codec":"json"},"crypto":{"algorithm":"aes-256-gcm","serverRandom":"GnQGu7eSkphr50k5ZVWXHz6cZnp75GNSTNBK+8+eCc4="}}})";
const std::string kXChaClientHello =
    R"({"bootstrap":{"transport":"tcp","tcpMux":true},"capabilities":{"message":{"codecs":["json"]},"crypto":{"algorithms":["xchacha20-poly1305","aes-256-gcm"],"clientRandom":"ZR8o832m/EVu3dSNMqbgMWMpkvaWPtTOur+dQpe5CSM="}}})";
const std::string kXChaServerHello =
    R"({"selected":{"message":{"codec":"json"},"crypto":{"algorithm":"xchacha20-poly1305","serverRandom":"mK0+WouON0YpG0kgQxBQLkZHLtHYLmdjSldSiEcX8UI="}}})";

std::string key_hex(const AeadKey& k) {
    return hex(k.data(), k.size());
}

// Opens one record with an explicit nonce: the plaintext, or "" + a failed CHECK.
std::optional<std::string> open_record(AeadAlgorithm alg, const AeadKey& key,
                                       const std::string& nonce_hex, const std::string& aad_hex,
                                       const std::string& ct_hex, const std::string& tag_hex) {
    Aead aead(alg, key);
    std::string nonce = unhex(nonce_hex);
    return aead.open(reinterpret_cast<const std::uint8_t*>(nonce.data()), unhex(aad_hex),
                     unhex(ct_hex + tag_hex));
}

}  // namespace

TEST_CASE("wire v2 vectors 15.1: AES-256-GCM keys and records of v2-mux") {
    REQUIRE(kMuxClientHello.size() == 217);
    REQUIRE(kMuxServerHello.size() == 140);
    auto t = transcript_hash(kMuxClientHello, kMuxServerHello);
    CHECK(hex(t.data(), t.size()) ==
          "46b63e79ef111096390f26af83bac90f8a4caa556ac6b5992d721a4d66049ca3");
    V2Crypto c{AeadAlgorithm::aes_256_gcm, t};
    auto c2s = c.key(kToken, AeadDirection::client_to_server);
    auto s2c = c.key(kToken, AeadDirection::server_to_client);
    CHECK(key_hex(c2s) == "2ec1ec321a525755753bdab96275b115efdb34f5315d361882727060ef7c532e");
    CHECK(key_hex(s2c) == "f925a978a2cef68c73201273630f722ad826617977fe637263ea80af29af536f");

    // C->S records 0 and 1: the NewProxy frame, header and payload.
    auto r0 = open_record(AeadAlgorithm::aes_256_gcm, c2s, "74c80ec9b996433817670667",
                          "74c80ec9b99643381767066700000018", "25fc252207ecad4a",
                          "677f63566708ca1d2db77f54307410d5");
    REQUIRE(r0);
    CHECK(hex(*r0) == "001000000000003d");
    auto r1 = open_record(
        AeadAlgorithm::aes_256_gcm, c2s, "74c80ec9b996433817670668",
        "74c80ec9b9964338176706670000004d",
        "e497be802ddcad2e3f34c7f14a38cd4de37f64af60c588bb9d85549f0b5fa4ad534f5383b3739ba870cd2550f"
        "49e7c6ea1276b02c118367168b316819d",
        "576cb5478c72e1f8cb70334b04246a9e");
    REQUIRE(r1);
    CHECK(*r1 == std::string("\x00\x03", 2) +
                     R"({"proxy_name":"web","proxy_type":"tcp","remote_port":26710})");
    auto np = std::get<NewProxy>(decode_v2_message_payload(*r1));
    CHECK(np.proxy_name == "web");
    CHECK(np.remote_port == 26710);
    // The same record under the other direction's key, or the next nonce, does not open.
    CHECK_FALSE(open_record(AeadAlgorithm::aes_256_gcm, s2c, "74c80ec9b996433817670667",
                            "74c80ec9b99643381767066700000018", "25fc252207ecad4a",
                            "677f63566708ca1d2db77f54307410d5"));
    CHECK_FALSE(open_record(AeadAlgorithm::aes_256_gcm, c2s, "74c80ec9b996433817670668",
                            "74c80ec9b99643381767066700000018", "25fc252207ecad4a",
                            "677f63566708ca1d2db77f54307410d5"));

    // S->C: the ReqWorkConn frame, and the same bytes as an AEAD stream on the wire.
    std::string wire = unhex(
        "cc4f685937f5f84ad46d0152 00000018 a5da5352023e582bb9db302e379f5c614fa2193c231fe922 "
        "00000014 7ffae48d1c8382203881bcd080d5dafaed3be029");
    AeadOpener op(AeadAlgorithm::aes_256_gcm, s2c);
    op.feed(wire.data(), wire.size());
    std::string plain(op.available(), '\0');
    op.read(plain.data(), plain.size());
    CHECK(hex(plain) == "001000000000000400077b7d");
    V2FrameDecoder fd;
    fd.feed(plain.data(), plain.size());
    auto f = fd.take();
    REQUIRE(f);
    CHECK(std::holds_alternative<ReqWorkConn>(decode_v2_message_frame(*f)));

    // Our sealer with the capture's stream nonce reproduces the capture byte for byte.
    AeadSealer seal(AeadAlgorithm::aes_256_gcm, s2c, unhex("cc4f685937f5f84ad46d0152"));
    std::string out = seal.seal(plain.data(), 8);
    out += seal.seal(plain.data() + 8, 4);
    CHECK(out == wire);
}

TEST_CASE("wire v2 vectors 15.2: AES-256-GCM keys of v2-nomux and a nonce carry") {
    auto reads = p2prc_test::reassemble(
        p2prc_test::load_capture(P2PRC_TEST_DATA_DIR "/frp-captures/v2-nomux.wire.txt"));
    // The hellos of this capture: the first frames after the preface in each direction.
    std::string up = reads["conn1 C->S"], down = reads["conn1 S->C"];
    REQUIRE(up.substr(0, 7) == std::string(v2_preface()));
    V2FrameDecoder u, d;
    u.feed(up.data() + 7, 8 + 300);  // more than the hello: the decoder keeps the rest
    auto ch = u.take();
    REQUIRE(ch);
    CHECK(ch->type == kV2ClientHello);
    d.feed(down.data(), 8);
    d.feed(down.data() + 8, 200);
    auto sh = d.take();
    REQUIRE(sh);
    CHECK(sh->type == kV2ServerHello);
    auto t = transcript_hash(ch->payload, sh->payload);
    CHECK(hex(t.data(), t.size()) ==
          "cd2f8c5b0ac28c9ecdb420c0e46f6c87604c1237b7210ec001a5725e0197177e");
    V2Crypto c{AeadAlgorithm::aes_256_gcm, t};
    auto c2s = c.key(kToken, AeadDirection::client_to_server);
    CHECK(key_hex(c2s) == "cd3b3a8e469b75d94c17bdb45927a12dea5aad021a873842cc847647409d56cd");
    CHECK(key_hex(c.key(kToken, AeadDirection::server_to_client)) ==
          "f89e84e058df17bd6f5f1d00fc67afb05764f67630bb024c5ec3b695cfa5bc2d");
    auto r0 = open_record(AeadAlgorithm::aes_256_gcm, c2s, "e57c2f76bff488dcc6dd161f",
                          "e57c2f76bff488dcc6dd161f00000018", "4a44fcce135388fc",
                          "1655efc7638e074295ed599784244b3d");
    REQUIRE(r0);
    CHECK(hex(*r0) == "001000000000003d");
    // Record 1 uses nonce ...1620: the stream opener carries into the next byte.
    std::string nonce = unhex("e57c2f76bff488dcc6dd161f");
    auto at = up.find(nonce);
    REQUIRE(at != std::string::npos);
    AeadOpener op(AeadAlgorithm::aes_256_gcm, c2s);
    op.feed(up.data() + at, up.size() - at);
    CHECK(op.records() >= 2);
    std::string plain(op.available(), '\0');
    op.read(plain.data(), plain.size());
    CHECK(plain.substr(0, 10) == unhex("001000000000003d0003"));
}

TEST_CASE("wire v2 vectors 15.3: XChaCha20-Poly1305 of v2-mux-xchacha") {
    REQUIRE(kXChaClientHello.size() == 217);
    REQUIRE(kXChaServerHello.size() == 147);
    auto t = transcript_hash(kXChaClientHello, kXChaServerHello);
    CHECK(hex(t.data(), t.size()) ==
          "f54bde38bd2e65a5cd8f8264558c0c5566eb9a324e2c9912c1acfcd35aa449ad");
    V2Crypto c{AeadAlgorithm::xchacha20_poly1305, t};
    auto c2s = c.key(kToken, AeadDirection::client_to_server);
    auto s2c = c.key(kToken, AeadDirection::server_to_client);
    CHECK(key_hex(c2s) == "802545243eba8ea6825e613f69404f91bf425cc82cb2e908d635d4e90d363dd1");
    CHECK(key_hex(s2c) == "5b47679f66962143001504245f144e89bafc0ccc49836dd075e8cba9ee485b99");
    const std::string n = "99a28cc11380a06c04bc4b5f0dd84dcb4233985e7ea63c24";
    auto r0 = open_record(AeadAlgorithm::xchacha20_poly1305, c2s, n, n + "00000018",
                          "a6adbafbb69a99dd", "d0a37befc94b7b54164ee875d8db9a5a");
    REQUIRE(r0);
    CHECK(hex(*r0) == "001000000000003d");
    auto r1 = open_record(
        AeadAlgorithm::xchacha20_poly1305, c2s, "99a28cc11380a06c04bc4b5f0dd84dcb4233985e7ea63c25",
        n + "0000004d",
        "59938bcb3a2149189931e8de740c45368336907890ece99e6710c552b9de85342d61852783b6c407cf3a364df"
        "97c5423116f4f3dbfb64d9815c58ba6a8",
        "962aa326250a03468290060b8d5cccf4");
    REQUIRE(r1);
    CHECK(r1->substr(2) == R"({"proxy_name":"web","proxy_type":"tcp","remote_port":26710})");
    const std::string sn = "963e5db0bae23f9d8461b4bbe2ec425cdfff353ca2c63f7c";
    auto s0 = open_record(AeadAlgorithm::xchacha20_poly1305, s2c, sn, sn + "00000018",
                          "41f958907662d5fa", "b449faccbc247ae3157a27895f347b0e");
    REQUIRE(s0);
    CHECK(hex(*s0) == "0010000000000004");
}

TEST_CASE("wire v2 vectors 15.4: plain framing of work connections and hellos") {
    NewWorkConn nwc;
    nwc.run_id = "507f01fbb33753e3";
    std::string start = std::string(v2_preface()) + encode_v2_message(nwc);
    CHECK(start.size() == 46);
    CHECK(hex(start) ==
          "46525000020d0a"
          "001000000000001f"
          "0006" +
              hex(R"({"run_id":"507f01fbb33753e3"})"));
    CHECK(hex(encode_v2_frame(kV2ClientHello, kMuxClientHello).substr(0, 8)) == "00010000000000d9");
    CHECK(hex(encode_v2_frame(kV2ServerHello, kMuxServerHello).substr(0, 8)) == "000200000000008c");
    Codec v2{WireProtocol::v2};
    CHECK(hex(v2.encode(ReqWorkConn{})) == "001000000000000400077b7d");
}

TEST_CASE("wire v2: hellos encode exactly as frp writes them and decode back") {
    auto ch = decode_client_hello(kMuxClientHello);
    CHECK(ch.transport == "tcp");
    CHECK(ch.tcp_mux);
    CHECK_FALSE(ch.tls);
    CHECK(ch.codecs == std::vector<std::string>{"json"});
    CHECK(ch.algorithms == std::vector<std::string>{"aes-256-gcm", "xchacha20-poly1305"});
    CHECK(ch.client_random.size() == 32);
    CHECK(encode_client_hello(ch) == kMuxClientHello);
    auto sh = decode_server_hello(kMuxServerHello);
    CHECK(sh.algorithm == "aes-256-gcm");
    CHECK(sh.server_random.size() == 32);
    CHECK(encode_server_hello(sh) == kMuxServerHello);
    // frps's refusal, verbatim.
    ServerHello refusal;
    refusal.codec = "json";
    refusal.error = "no supported crypto algorithm";
    CHECK(
        encode_server_hello(refusal) ==
        R"({"selected":{"message":{"codec":"json"},"crypto":{}},"error":"no supported crypto algorithm"})");
    // Empty bootstrap still written (a Go struct value is never omitted).
    CHECK(encode_client_hello(ClientHello{}) ==
          R"({"bootstrap":{},"capabilities":{"message":{},"crypto":{}}})");
    CHECK_THROWS_AS(decode_client_hello("{\"bootstrap\":"), p2prc::error);
    CHECK_THROWS_AS(decode_client_hello(R"({"capabilities":{"crypto":{"clientRandom":"*"}}})"),
                    p2prc::error);
    CHECK_THROWS_AS(decode_client_hello(R"({"capabilities":{"crypto":{"algorithms":"x"}}})"),
                    p2prc::error);
}

TEST_CASE("wire v2: negotiation gives frps's answers") {
    auto ch = decode_client_hello(kMuxClientHello);
    auto sh = negotiate(ch);
    CHECK(sh.error.empty());
    CHECK(sh.codec == "json");
    CHECK(sh.algorithm == "aes-256-gcm");
    CHECK(sh.server_random.size() == 32);
    CHECK(negotiate(ch).server_random != sh.server_random);
    CHECK(std::get<AeadAlgorithm>(check_server_hello(ch, sh)) == AeadAlgorithm::aes_256_gcm);
    // The client's order decides.
    auto x = decode_client_hello(kXChaClientHello);
    CHECK(negotiate(x).algorithm == "xchacha20-poly1305");
    auto bad = ch;
    bad.client_random = std::string(16, 'r');
    CHECK(negotiate(bad).error == "invalid crypto client random length 16, want 32");
    bad = ch;
    bad.algorithms = {"chacha20-poly1305"};
    CHECK(negotiate(bad).error == "no supported crypto algorithm");
    CHECK(negotiate(bad).algorithm.empty());
    bad = ch;
    bad.codecs = {"protobuf"};
    CHECK(negotiate(bad).error == "unsupported message codec");
    // frpc's checks.
    auto wrong = sh;
    wrong.algorithm = "xchacha20-poly1305";
    auto only_aes = ch;
    only_aes.algorithms = {"aes-256-gcm"};
    CHECK(std::get<std::string>(check_server_hello(only_aes, wrong)) ==
          "selected crypto algorithm was not advertised by client: xchacha20-poly1305");
    wrong = sh;
    wrong.server_random = "short";
    CHECK(std::get<std::string>(check_server_hello(ch, wrong)) ==
          "invalid crypto server random length 5, want 32");
    wrong = sh;
    wrong.error = "no supported crypto algorithm";
    CHECK(std::get<std::string>(check_server_hello(ch, wrong)) == "no supported crypto algorithm");
}

TEST_CASE("wire v2: frame limits, flags, IDs") {
    // Exactly 65536 is accepted; 65537 refused from the header alone.
    std::string big(65536, 'x');
    V2FrameDecoder ok;
    std::string f = encode_v2_frame(kV2Message, big);
    ok.feed(f.data(), f.size());
    REQUIRE(ok.take());
    CHECK_THROWS_AS(encode_v2_frame(kV2Message, big + "x"), p2prc::error);
    V2FrameDecoder over;
    std::string h = unhex("0010000000010001");
    try {
        over.feed(h.data(), h.size());
        FAIL("a 65537-byte frame was accepted");
    } catch (const p2prc::error& e) {
        CHECK(e.code() == errc::limit_exceeded);
        CHECK(std::string(e.what()).find("65537") != std::string::npos);
    }
    CHECK(over.pending() <= kV2FrameHeaderSize);       // nothing of the payload was buffered
    CHECK_THROWS_AS(over.feed("x", 1), p2prc::error);  // stays failed
    V2FrameDecoder flags;
    h = unhex("0010000100000000");
    CHECK_THROWS_WITH_AS(flags.feed(h.data(), h.size()), "frp v2 frame: flags 1 (must be 0)",
                         p2prc::error);
    CHECK_THROWS_WITH_AS(decode_v2_message_payload(unhex("0063") + "{}"),
                         "frp v2 message: unknown message ID 99", p2prc::error);
    CHECK_THROWS_AS(decode_v2_message_payload(unhex("00")), p2prc::error);
    CHECK_THROWS_AS(decode_v2_message_frame(V2Frame{kV2ClientHello, unhex("0007") + "{}"}),
                    p2prc::error);
    // Every message ID maps to its v1 letter.
    const char letters[] = "o1p2cwrsv3h4uinm5";
    for (int id = 1; id <= 17; ++id) {
        std::string p;
        p += char(0), p += char(id), p += "{}";
        CAPTURE(id);
        CHECK(type_of(decode_v2_message_payload(p)) == letters[id - 1]);
    }
    CHECK_THROWS_AS(Codec{WireProtocol::v2}.encode(NatHoleClientDetectOK{}), p2prc::error);
    // Codec::read takes exactly one frame.
    Codec v2{WireProtocol::v2};
    p2prc_test::MemStream s(v2.encode(Ping{}) + v2.encode(Pong{}), 3);
    CHECK(std::holds_alternative<Ping>(v2.read(s, p2prc::detail::Millis(100))));
    CHECK(std::holds_alternative<Pong>(v2.read(s, p2prc::detail::Millis(100))));
    CHECK(parse_wire_protocol("v2") == WireProtocol::v2);
    CHECK(parse_wire_protocol("") == WireProtocol::v1);
    CHECK_THROWS_AS(parse_wire_protocol("v3"), p2prc::error);
}

TEST_CASE("wire v2: HChaCha20 test vector and the AEAD stream's rules") {
    // draft-irtf-cfrg-xchacha-03, section 2.2.1.
    AeadKey k{};
    for (std::size_t i = 0; i < k.size(); ++i) k[i] = std::uint8_t(i);
    std::string n = unhex("000000090000004a0000000031415927");
    CHECK(key_hex(hchacha20(k, reinterpret_cast<const std::uint8_t*>(n.data()))) ==
          "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc");

    for (auto alg : {AeadAlgorithm::aes_256_gcm, AeadAlgorithm::xchacha20_poly1305}) {
        CAPTURE(to_string(alg));
        AeadSealer s(alg, k);
        std::string big(100000, 'q');
        std::string wire = s.seal("hello", 5);
        wire += s.seal(big.data(), big.size());
        // Round trip, fed one byte at a time.
        AeadOpener o(alg, k);
        for (char c : wire) o.feed(&c, 1);
        CHECK(o.records() == 3);  // 100000 bytes: 65536 + 34464
        std::string got(o.available(), '\0');
        o.read(got.data(), got.size());
        CHECK(got == "hello" + big);
        CHECK(o.at_boundary());

        std::size_t ns = aead_nonce_size(alg);
        // A flipped tag byte fails.
        std::string bad = wire;
        bad[ns + 4 + 5 + 15] ^= 1;
        AeadOpener o2(alg, k);
        CHECK_THROWS_AS(o2.feed(bad.data(), bad.size()), p2prc::error);
        CHECK_THROWS_AS(o2.feed("x", 1), p2prc::error);  // stays failed
        // A replayed record (record 0 sent again as record 1) fails.
        std::string rec0 = wire.substr(ns, 4 + 5 + 16);
        std::string replay = wire.substr(0, ns) + rec0 + rec0;
        AeadOpener o3(alg, k);
        CHECK_THROWS_WITH_AS(o3.feed(replay.data(), replay.size()),
                             doctest::Contains("record 1 failed authentication"), p2prc::error);
        // A length outside 16..65552 is refused before any body.
        AeadOpener o4(alg, k);
        std::string lens = wire.substr(0, ns) + unhex("00010011");
        CHECK_THROWS_WITH_AS(o4.feed(lens.data(), lens.size()),
                             doctest::Contains("record length 65553"), p2prc::error);
        AeadOpener o5(alg, k);
        lens = wire.substr(0, ns) + unhex("0000000f");
        CHECK_THROWS_AS(o5.feed(lens.data(), lens.size()), p2prc::error);
    }
    // The counter carries across bytes and refuses to wrap.
    std::uint8_t c[3] = {0x00, 0xff, 0xff};
    CHECK(p2prc::frp::detail::increment_nonce(c, 3));
    CHECK(hex(c, 3) == "010000");
    std::uint8_t w[2] = {0xff, 0xff};
    CHECK_FALSE(p2prc::frp::detail::increment_nonce(w, 2));
}

TEST_CASE("wire v2: HKDF with an empty token and base64 as Go reads it") {
    TranscriptHash t{};
    auto a = derive_control_key("", t, AeadAlgorithm::aes_256_gcm, AeadDirection::client_to_server);
    auto b = derive_control_key("", t, AeadAlgorithm::aes_256_gcm, AeadDirection::server_to_client);
    CHECK(a != b);
    CHECK(a != AeadKey{});
    using p2prc::frp::detail::base64_decode;
    using p2prc::frp::detail::base64_encode;
    for (const std::string& s :
         std::vector<std::string>{"", "a", "ab", "abc", "abcd", std::string("\x00\xff\x10", 3)})
        CHECK(base64_decode(base64_encode(s)) == s);
    CHECK(base64_encode("abcd") == "YWJjZA==");
    CHECK_FALSE(base64_decode("YWJjZA="));
    CHECK_FALSE(base64_decode("YW=jZA=="));
    CHECK_FALSE(base64_decode("YWJj$A=="));
}
