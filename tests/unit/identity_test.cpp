// Node identity: the key file, the printable form, signatures, and what identities do to the
// table (one server, one entry; signed entries; Go entries unchanged).
#include <p2prc.hpp>

#include "support/tempdir.hpp"

#include <doctest/doctest.h>

#include <sys/stat.h>

#include <fstream>
#include <set>
#include <sstream>

using p2prc::Endpoint;
using p2prc::Identity;
using p2prc::IpAddress;
using p2prc::IpTable;
using p2prc::Peer;
using p2prc::SignedEntry;
using p2prc::TableFormat;

namespace {

std::string error_of(const std::function<void()>& fn) {
    try {
        fn();
    } catch (const p2prc::error& e) {
        return e.what();
    }
    return "";
}

bool contains(const std::string& s, const std::string& part) {
    return s.find(part) != std::string::npos;
}

Peer at(const char* ipv4, std::uint16_t port, const std::string& name = "") {
    Peer p;
    p.name = name;
    p.ipv4 = IpAddress::from_string(ipv4);
    p.server_port = port;
    return p;
}

// A server's own signed entry, as Node::self_entry makes it.
Peer signed_peer(const Identity& key, std::uint64_t seq, const std::string& name, const char* ipv4,
                 std::uint16_t port) {
    Peer p = at(ipv4, port, name);
    p.identity = key.id();
    SignedEntry s;
    s.seq = seq;
    s.name = name;
    s.endpoints = p.endpoints();
    s.sign(key);
    p.signed_entry = s;
    return p;
}

}  // namespace

TEST_CASE(
    "identity: the key file is made 0600 at first use and gives the same identity afterwards") {
    p2prc_test::TempDir dir;
    const std::string path = dir.file("node.key");
    auto first = Identity::load_or_create(path);
    struct stat st {};
    REQUIRE(::stat(path.c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);
    auto again = Identity::load_or_create(path);
    CHECK(again.id() == first.id());
    CHECK(first.id().size() == 52);
    CHECK(p2prc::is_identity(first.id()));
    CHECK(first.short_id() == first.id().substr(0, 12));
    // Another key file, another identity.
    CHECK(Identity::load_or_create(dir.file("other.key")).id() != first.id());
}

TEST_CASE(
    "identity: a damaged, empty or foreign key file is an error naming the file, never a new "
    "identity") {
    p2prc_test::TempDir dir;
    const std::string path = dir.file("node.key");
    const std::string pem = Identity::load_or_create(path).private_pem();
    {
        std::string damaged = pem;
        damaged[damaged.size() / 2] = damaged[damaged.size() / 2] == 'A' ? 'B' : 'A';
        damaged.resize(damaged.size() - 20);
        std::ofstream(path, std::ios::trunc) << damaged;
    }
    auto e = error_of([&] { Identity::load_or_create(path); });
    CHECK(contains(e, path));
    CHECK(contains(e, "damaged"));
    // The damaged file is left as it was (not replaced by a new key).
    {
        std::ifstream in(path);
        std::stringstream ss;
        ss << in.rdbuf();
        CHECK(ss.str() != pem);
        CHECK_FALSE(ss.str().empty());
    }
    std::ofstream(path, std::ios::trunc) << "";
    e = error_of([&] { Identity::load_or_create(path); });
    CHECK(contains(e, path));
    CHECK(contains(e, "empty"));

    // An EC key in PEM is a key, but not an identity.
    std::unique_ptr<EVP_PKEY_CTX, void (*)(EVP_PKEY_CTX*)> ctx(
        EVP_PKEY_CTX_new_id(EVP_PKEY_EC, nullptr), EVP_PKEY_CTX_free);
    REQUIRE(ctx);
    REQUIRE(EVP_PKEY_keygen_init(ctx.get()) == 1);
    REQUIRE(EVP_PKEY_CTX_set_ec_paramgen_curve_nid(ctx.get(), NID_X9_62_prime256v1) == 1);
    EVP_PKEY* ec = nullptr;
    REQUIRE(EVP_PKEY_keygen(ctx.get(), &ec) == 1);
    BIO* bio = BIO_new(BIO_s_mem());
    REQUIRE(PEM_write_bio_PrivateKey(bio, ec, nullptr, nullptr, 0, nullptr, nullptr) == 1);
    char* data = nullptr;
    long n = BIO_get_mem_data(bio, &data);
    std::ofstream(path, std::ios::trunc) << std::string(data, std::size_t(n));
    BIO_free(bio);
    EVP_PKEY_free(ec);
    e = error_of([&] { Identity::load_or_create(path); });
    CHECK(contains(e, path));
    CHECK(contains(e, "not an Ed25519 key"));
}

TEST_CASE("identity: a node whose key file is damaged does not start") {
    p2prc_test::TempDir dir;
    p2prc::Config c;
    c.iptable = dir.file("t.json");
    c.port = 0;
    CHECK(c.identity_key_path() == dir.file("t.key"));
    std::ofstream(c.identity_key_path())
        << "-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n";
    auto e = error_of([&] { p2prc::Node n(c); });
    CHECK(contains(e, c.identity_key_path()));
    c.identity_key = dir.file("elsewhere.key");
    CHECK(error_of([&] { p2prc::Node n(c); }).empty());
}

TEST_CASE("identity: printable form is lower-case base32 and parses back; junk does not") {
    auto k = Identity::generate();
    auto parsed = p2prc::parse_identity(k.id());
    REQUIRE(parsed);
    CHECK(*parsed == k.public_key());
    for (char c : k.id()) CHECK(((c >= 'a' && c <= 'z') || (c >= '2' && c <= '7')));
    CHECK_FALSE(p2prc::is_identity(""));
    CHECK_FALSE(p2prc::is_identity(k.id().substr(1)));
    CHECK_FALSE(p2prc::is_identity(k.id() + "a"));
    std::string bad = k.id();
    bad[5] = '1';  // not in the alphabet
    CHECK_FALSE(p2prc::is_identity(bad));
    // The last character carries 4 padding bits, which must be zero: one key, one spelling.
    std::string pad = k.id();
    pad.back() = pad.back() == 'b' ? 'c' : 'b';
    CHECK_FALSE(p2prc::is_identity(pad));
}

TEST_CASE("identity: signatures verify under the signer's identity only, and tampering shows") {
    auto k = Identity::generate();
    auto other = Identity::generate();
    const std::string msg = p2prc::whoami_message("00112233445566778899aabbccddeeff");
    const std::string sig = k.sign_hex(msg);
    CHECK(sig.size() == 128);
    CHECK(p2prc::verify_signature_hex(k.id(), msg, sig));
    CHECK_FALSE(p2prc::verify_signature_hex(other.id(), msg, sig));
    CHECK_FALSE(p2prc::verify_signature_hex(k.id(), msg + "x", sig));
    std::string flipped = sig;
    flipped[0] = flipped[0] == '0' ? '1' : '0';
    CHECK_FALSE(p2prc::verify_signature_hex(k.id(), msg, flipped));
    CHECK_FALSE(p2prc::verify_signature_hex(k.id(), msg, "zz"));

    Peer p = signed_peer(k, 7, "alpha", "192.0.2.10", 8078);
    CHECK(p.signed_entry->verify());
    SignedEntry s = *p.signed_entry;
    s.nat = true;
    CHECK_FALSE(s.verify());
    s = *p.signed_entry;
    s.endpoints.push_back(Endpoint::from_string("192.0.2.99:8078"));
    CHECK_FALSE(s.verify());
    s = *p.signed_entry;
    s.seq = 8;
    CHECK_FALSE(s.verify());
    // A whoami signature is no entry signature (the tags differ).
    s = *p.signed_entry;
    s.signature = k.sign_hex(s.message().substr(3));
    CHECK_FALSE(s.verify());
}

TEST_CASE(
    "identity: entries keep identity, alternative endpoints and the signed entry through both "
    "formats") {
    auto k = Identity::generate();
    Peer p = signed_peer(k, 42, "alpha", "192.0.2.10", 8078);
    p.alt_endpoints = {Endpoint::from_string("198.51.100.3:8078"),
                       Endpoint::from_string("[2001:db8::3]:9000")};
    p.latency_ms = 3.5;
    for (auto format : {TableFormat::seed, TableFormat::p2prc}) {
        CAPTURE(p2prc::to_string(format));
        IpTable t(std::vector<Peer>{p});
        auto back = IpTable::parse(t.dump(format));
        REQUIRE(back.size() == 1);
        const Peer& q = back.peers()[0];
        CHECK(q.identity == k.id());
        CHECK(q.alt_endpoints == p.alt_endpoints);
        REQUIRE(q.signed_entry);
        CHECK(q.signed_entry->seq == 42);
        CHECK(q.signed_entry->verify());
        CHECK(q.extra.is_null());  // the new keys are known keys, not kept extras
        // Written again, byte for byte the same.
        CHECK(IpTable(std::vector<Peer>{q}).dump(format) == t.dump(format));
    }
    auto go = IpTable(std::vector<Peer>{p}).to_json(TableFormat::p2prc)["ip_address"][0];
    CHECK(go.contains("Identity"));
    CHECK(go.contains("AltEndpoints"));
    CHECK(go.contains("Signed"));
    CHECK(
        contains(error_of([] {
                     IpTable::parse(
                         R"({"ip_address":[{"ipv4":"192.0.2.1","port no":"1","identity":"xyz"}]})");
                 }),
                 "invalid identity"));
    CHECK(contains(
        error_of([] {
            IpTable::parse(
                R"({"ip_address":[{"ipv4":"192.0.2.1","port no":"1","alt_endpoints":["nope"]}]})");
        }),
        "invalid endpoint"));
}

TEST_CASE(
    "identity: P2PRC's Go table round trip keeps every known key, and Go entries have no "
    "identity") {
    auto t = IpTable::load(std::string(P2PRC_TEST_DATA_DIR) + "/p2prc-go-ip_table.json");
    REQUIRE(t.size() == 1);
    CHECK(t.peers()[0].identity.empty());
    auto entry = t.to_json(TableFormat::p2prc)["ip_address"][0];
    for (const char* key :
         {"Name", "MachineUsername", "IPV4", "IPV6", "Latency", "Download", "Upload", "ServerPort",
          "UDPServerPort", "BareMetalSSHPort", "NAT", "EscapeImplementation", "ProxyServer",
          "UnSafeMode", "PublicKey", "CustomInformation"})
        CHECK_MESSAGE(entry.contains(key), key);
    // Nothing new is written for an entry without identity.
    CHECK_FALSE(entry.contains("Identity"));
    CHECK_FALSE(entry.contains("AltEndpoints"));
    CHECK_FALSE(entry.contains("Signed"));
    auto again = IpTable::parse(t.dump(TableFormat::p2prc));
    CHECK(again.dump(TableFormat::p2prc) == t.dump(TableFormat::p2prc));
}

TEST_CASE(
    "identity: entries with one identity fold into one, keeping the nearer endpoint and the "
    "others") {
    auto k = Identity::generate();
    Peer loop = at("127.0.0.1", 8078, "a");
    loop.identity = k.id();
    loop.latency_ms = 0.2;
    Peer lan = at("192.0.2.5", 8078, "a");
    lan.identity = k.id();
    Peer v6;
    v6.ipv6 = IpAddress::from_string("2001:db8::5");
    v6.server_port = 9000;
    v6.identity = k.id();
    Peer other = at("192.0.2.6", 8078, "b");
    other.identity = Identity::generate().id();

    IpTable t(std::vector<Peer>{lan, other, loop, v6});
    CHECK(t.dedupe() == 2);
    REQUIRE(t.size() == 2);
    const Peer* a = t.find_identity(k.id());
    REQUIRE(a);
    // 127.0.0.1 is the one this node measured: it is the one contacted.
    CHECK(a->endpoint()->to_string() == "127.0.0.1:8078");
    std::set<std::string> all;
    for (const auto& e : a->endpoints()) all.insert(e.to_string());
    CHECK(all == std::set<std::string>{"127.0.0.1:8078", "192.0.2.5:8078", "[2001:db8::5]:9000"});
    CHECK(a->latency_ms == 0.2);

    // Merging a table that lists the same server under yet another address adds nothing.
    Peer again = at("198.51.100.5", 8078, "a");
    again.identity = k.id();
    t.merge(IpTable(std::vector<Peer>{again}));
    CHECK(t.size() == 2);
    // And find()/remove() reach it under any of its endpoints.
    CHECK(t.find("192.0.2.5:8078") == t.find("127.0.0.1:8078"));
    CHECK(t.remove_identity(k.id()) == 1);
    CHECK(t.size() == 1);
}

TEST_CASE(
    "identity: different identities at one endpoint stay apart; Go entries dedupe by address as "
    "before") {
    Peer a = at("192.0.2.5", 8078, "a");
    a.identity = Identity::generate().id();
    Peer b = at("192.0.2.5", 8078, "b");
    b.identity = Identity::generate().id();
    IpTable t(std::vector<Peer>{a, b});
    CHECK(t.dedupe() == 0);
    CHECK(t.size() == 2);

    // Go-style: same IPv4 and port is one server; another port is another; IPv6 joins.
    Peer g1 = at("192.0.2.7", 8078, "g");
    Peer g2 = at("192.0.2.7", 8078, "g-renamed");
    g2.ipv6 = IpAddress::from_string("2001:db8::7");
    Peer g3 = at("192.0.2.7", 8079, "g-other-port");
    Peer g4;
    g4.ipv6 = IpAddress::from_string("2001:db8::7");
    g4.server_port = 8078;
    IpTable go(std::vector<Peer>{g1, g2, g3, g4});
    CHECK(go.dedupe() == 2);
    REQUIRE(go.size() == 2);
    CHECK(go.peers()[0].name == "g-renamed");
    REQUIRE(go.peers()[0].ipv6);
    CHECK(go.peers()[0].alt_endpoints.empty());
    CHECK(go.peers()[1].server_port == 8079);

    // An entry without identity at an identified server's endpoint is that server.
    Peer known = at("192.0.2.8", 8078, "k");
    known.identity = Identity::generate().id();
    IpTable mixed(std::vector<Peer>{known, at("192.0.2.8", 8078)});
    CHECK(mixed.dedupe() == 1);
    CHECK(mixed.peers()[0].identity == known.identity);
}

TEST_CASE("identity: the signature check drops forged, replayed and unsigned claims and says why") {
    auto k = Identity::generate();
    IpTable current(std::vector<Peer>{signed_peer(k, 100, "real", "192.0.2.20", 8078)});

    Peer forged = signed_peer(k, 200, "real", "192.0.2.20", 8078);
    forged.signed_entry->name = "evil";  // valid shape, the signature no longer matches
    forged.name = "evil";
    Peer replayed = signed_peer(k, 99, "older", "192.0.2.21", 8078);
    Peer unsigned_claim = at("192.0.2.22", 8078, "claims");
    unsigned_claim.identity = k.id();
    Peer other_identity = signed_peer(k, 300, "real", "192.0.2.20", 8078);
    other_identity.identity = Identity::generate().id();  // signed by k, claims another
    Peer newer = signed_peer(k, 101, "renamed", "192.0.2.20", 8078);
    Peer go = at("192.0.2.30", 8078, "go-node");

    IpTable incoming(
        std::vector<Peer>{forged, replayed, unsigned_claim, other_identity, newer, go});
    auto r = p2prc::check_signatures(incoming, current);
    CHECK(r.forged == 2);
    CHECK(r.replayed == 1);
    CHECK(r.unsigned_claims == 1);
    CHECK(r.verified == 1);
    CHECK(r.dropped() == 4);
    REQUIRE(r.reasons.size() == 4);
    CHECK(contains(r.reasons[0], "forged"));
    CHECK(contains(r.reasons[1], "replayed"));
    CHECK(contains(r.reasons[2], "unsigned"));
    REQUIRE(incoming.size() == 2);
    CHECK(incoming.peers()[0].name == "renamed");
    CHECK(incoming.peers()[1].name == "go-node");

    // Merged, the newer signed word replaces the older; an unsigned entry at the same
    // endpoint afterwards changes none of its facts.
    current.merge(std::move(incoming));
    const Peer* e = current.find_identity(k.id());
    REQUIRE(e);
    CHECK(e->name == "renamed");
    CHECK(e->signed_entry->seq == 101);
    Peer liar = at("192.0.2.20", 8078, "liar");
    liar.nat = true;
    liar.escape_implementation = "FRP";
    current.merge(IpTable(std::vector<Peer>{liar}));
    e = current.find_identity(k.id());
    REQUIRE(e);
    CHECK(e->name == "renamed");
    CHECK_FALSE(e->nat);
    CHECK(current.size() == 2);
}

TEST_CASE("identity: a failing first endpoint hands over to another one of the same server") {
    Peer p = at("192.0.2.5", 8078);
    p.alt_endpoints = {Endpoint::from_string("198.51.100.5:8078")};
    p.promote(Endpoint::from_string("198.51.100.5:8078"));
    CHECK(p.endpoint()->to_string() == "198.51.100.5:8078");
    REQUIRE(p.alt_endpoints.size() == 1);
    CHECK(p.alt_endpoints[0].to_string() == "192.0.2.5:8078");
    CHECK(p.endpoints().size() == 2);
}

TEST_CASE("config: identity_key is a key of the file, a flag, and defaults beside the table") {
    p2prc::Config c;
    CHECK(c.identity_key.empty());
    CHECK(c.identity_key_path() == "p2prc-iptable.key");
    c.iptable = "/var/lib/p2prc/table";
    CHECK(c.identity_key_path() == "/var/lib/p2prc/table.key");
    c.apply_flag("--identity-key", "/etc/p2prc/node.key");
    CHECK(c.identity_key_path() == "/etc/p2prc/node.key");
    auto parsed = p2prc::Config::parse(R"({"identity_key": "k.pem"})");
    CHECK(parsed.identity_key == "k.pem");
    CHECK(parsed.to_json().at("identity_key") == "k.pem");
    CHECK(p2prc::Config::find_flag("--identity-key"));
}

TEST_CASE(
    "identity: the node never lists itself by identity; another server at one of its endpoints "
    "only loses that endpoint") {
    auto me = Identity::generate();
    const std::vector<Endpoint> own = {Endpoint::from_string("192.168.1.5:8078"),
                                       Endpoint::from_string("127.0.0.1:8078")};
    Peer self_elsewhere = at("203.0.113.9", 9999, "me-via-relay");
    self_elsewhere.identity = me.id();
    Peer twin = at("192.168.1.5", 8078, "other-lan");  // another LAN, the same private address
    twin.identity = Identity::generate().id();
    twin.alt_endpoints = {Endpoint::from_string("198.51.100.7:8078")};
    Peer only_mine = at("127.0.0.1", 8078, "only-our-endpoint");
    only_mine.identity = Identity::generate().id();
    Peer go_at_mine = at("192.168.1.5", 8078, "go");  // no identity: the address rule
    IpTable t(std::vector<Peer>{self_elsewhere, twin, only_mine, go_at_mine});
    CHECK(t.remove_self(own, me.id()) == 3);
    REQUIRE(t.size() == 1);
    CHECK(t.peers()[0].name == "other-lan");
    CHECK(t.peers()[0].endpoint()->to_string() == "198.51.100.7:8078");
    CHECK(t.peers()[0].alt_endpoints.empty());
}
