#include <p2prc.hpp>

#include <doctest/doctest.h>

#include "support/tempdir.hpp"

#include <fstream>
#include <map>
#include <string>

using p2prc::BehindNat;
using p2prc::Config;
using p2prc::errc;
using p2prc::TableFormat;

namespace {

// The message of the p2prc::error that fn throws; fails the test if it throws nothing.
template <class Fn>
std::string error_of(Fn fn, errc expected_code = errc::invalid_argument) {
    try {
        fn();
    } catch (const p2prc::error& e) {
        CHECK(e.code() == expected_code);
        return e.what();
    }
    FAIL("no p2prc::error thrown");
    return {};
}

bool contains(const std::string& s, const std::string& part) {
    return s.find(part) != std::string::npos;
}

void write(const std::string& path, const std::string& text) {
    std::ofstream(path) << text;
}

p2prc::EnvLookup env_of(std::map<std::string, std::string> vars) {
    return [vars](std::string_view name) -> std::optional<std::string> {
        auto it = vars.find(std::string(name));
        if (it == vars.end()) return std::nullopt;
        return it->second;
    };
}

}  // namespace

TEST_CASE("config: every key has its documented default") {
    Config c;
    char host[256] = {};
    REQUIRE(gethostname(host, sizeof host - 1) == 0);
    CHECK(c.name == host);
    CHECK(c.iptable == "p2prc-iptable.json");
    CHECK(c.table_format == TableFormat::seed);
    CHECK(c.bind == "0.0.0.0");
    CHECK(c.port == 8078);
    CHECK(c.public_addresses.empty());
    CHECK(c.behind_nat == BehindNat::automatic);
    CHECK(c.relay.cap == 32);
    CHECK(c.relay.idle_timeout_s == 300);
    CHECK(c.relay.login_timeout_s == 60);
    CHECK(c.token.empty());
    CHECK_FALSE(c.allow_link_local);
    CHECK(c.limits.max_entries == 10000);
    CHECK(c.limits.probe_concurrency == 32);
    CHECK(c.limits.discovery_hops == 3);
    CHECK(c.limits.max_body_bytes == 16u << 20);
    CHECK(c.limits.request_timeout_ms == 5000);
    CHECK(c.limits.probe_timeout_ms == 3000);
    CHECK(c.limits.discovery_budget_s == 60);
    CHECK(c.source == "defaults");
    CHECK(c.warnings.empty());
}

TEST_CASE("config: parse reads every kind of key and keeps defaults for the rest") {
    auto c = Config::parse(R"({
        "name": "alpha", "iptable": "/tmp/t.json", "table_format": "p2prc",
        "bind": "::", "port": 9000,
        "public_addresses": ["203.0.113.7", "198.51.100.1:9100", "[2001:DB8::1]:9200",
                             "2001:db8::2"],
        "behind_nat": true, "token": "s3cret", "allow_link_local": true,
        "relay": {"cap": 4, "idle_timeout_s": 10},
        "limits": {"max_entries": 500, "probe_concurrency": 2}
    })",
                           "test.json");
    CHECK(c.name == "alpha");
    CHECK(c.iptable == "/tmp/t.json");
    CHECK(c.table_format == TableFormat::p2prc);
    CHECK(c.bind == "::");
    CHECK(c.port == 9000);
    REQUIRE(c.public_addresses.size() == 4);
    CHECK(c.public_addresses[0].to_string() == "203.0.113.7");
    CHECK(c.public_addresses[0].port == 0);
    CHECK(c.public_addresses[1].to_string() == "198.51.100.1:9100");
    CHECK(c.public_addresses[2].to_string() == "[2001:db8::1]:9200");
    CHECK(c.public_addresses[3].to_string() == "2001:db8::2");
    CHECK(c.behind_nat == BehindNat::yes);
    CHECK(c.token == "s3cret");
    CHECK(c.allow_link_local);
    CHECK(c.relay.cap == 4);
    CHECK(c.relay.idle_timeout_s == 10);
    CHECK(c.relay.login_timeout_s == 60);  // not given: default
    CHECK(c.limits.max_entries == 500);
    CHECK(c.limits.probe_concurrency == 2);
    CHECK(c.limits.discovery_hops == 3);
    CHECK(c.source == "test.json");
    CHECK(c.warnings.empty());

    CHECK(Config::parse(R"({"behind_nat": false})").behind_nat == BehindNat::no);
    CHECK(Config::parse(R"({"behind_nat": "auto"})").behind_nat == BehindNat::automatic);
    CHECK(Config::parse(R"({"bind": "0:0::0:1"})").bind == "::1");  // normalised
    CHECK(Config::parse("{}").port == 8078);
}

TEST_CASE("config: a key of the wrong type or out of range names the key and what was expected") {
    struct Case {
        const char* text;
        const char* key;
        const char* expected;
    };
    const Case cases[] = {
        {R"({"port": "8078"})", "\"port\"", "an integer 0-65535"},
        {R"({"port": 70000})", "\"port\"", "an integer 0-65535"},
        {R"({"port": -1})", "\"port\"", "an integer 0-65535"},
        {R"({"port": 80.5})", "\"port\"", "an integer"},
        {R"({"name": 7})", "\"name\"", "a non-empty string"},
        {R"({"name": ""})", "\"name\"", "a non-empty string"},
        {R"({"name": "a\u0001b"})", "\"name\"", "without control characters"},
        {R"({"bind": "localhost"})", "\"bind\"", "a numeric IPv4 or IPv6 address"},
        {R"({"table_format": "xml"})", "\"table_format\"", "\"seed\" or \"p2prc\""},
        {R"({"behind_nat": "maybe"})", "\"behind_nat\"", "true, false or \"auto\""},
        {R"({"behind_nat": 1})", "\"behind_nat\"", "true, false or \"auto\""},
        {R"({"allow_link_local": "yes"})", "\"allow_link_local\"", "true or false"},
        {R"({"public_addresses": "1.2.3.4"})", "\"public_addresses\"", "a list of at most 64"},
        {R"({"public_addresses": ["1.2.3.4", "nope"]})", "\"public_addresses\"", "ADDR:PORT"},
        {R"({"public_addresses": ["0.0.0.0"]})", "\"public_addresses\"", "ADDR:PORT"},
        {R"({"relay": 5})", "\"relay\"", "an object"},
        {R"({"relay": {"cap": true}})", "\"relay.cap\"", "an integer 0-65535"},
        {R"({"limits": []})", "\"limits\"", "an object"},
        {R"({"limits": {"max_entries": 0}})", "\"limits.max_entries\"", "an integer 1-1000000"},
        {R"({"limits": {"probe_concurrency": 5000}})", "\"limits.probe_concurrency\"", "1-1024"},
        {R"({"limits": {"request_timeout_ms": null}})", "\"limits.request_timeout_ms\"",
         "an integer"},
        {R"({"token": 12})", "\"token\"", "a string"},
    };
    for (const auto& c : cases) {
        CAPTURE(c.text);
        auto msg = error_of([&] { Config::parse(c.text, "my.json"); });
        CHECK(contains(msg, "my.json"));
        CHECK(contains(msg, std::string("key ") + c.key));
        CHECK(contains(msg, c.expected));
    }
}

TEST_CASE("config: not a JSON object is a parse error naming the origin") {
    CHECK(contains(error_of([] { Config::parse("[1,2]", "c.json"); }, errc::parse_error),
                   "c.json: expected a JSON object"));
    CHECK(contains(error_of([] { Config::parse("{\"port\": ", "c.json"); }, errc::parse_error),
                   "c.json: invalid JSON at line 1"));
    CHECK(contains(
        error_of([] { Config::parse(std::string(2000, '['), "c.json"); }, errc::parse_error),
        "nested deeper"));
    CHECK_THROWS_AS(Config::parse(std::string(Config::max_file_bytes + 1, ' ')), p2prc::error);
}

TEST_CASE("config: an unknown key is a warning, not an error") {
    auto c =
        Config::parse(R"({"port": 9001, "colour": "blue", "limits": {"max_fun": 1}})", "w.json");
    CHECK(c.port == 9001);
    REQUIRE(c.warnings.size() == 2);
    CHECK(contains(c.warnings[0], "w.json: unknown key \"colour\""));
    CHECK(contains(c.warnings[1], "unknown key \"limits.max_fun\""));

    std::string many = "{";
    for (int i = 0; i < 100; ++i)
        many += (i ? "," : "") + std::string("\"k") + std::to_string(i) + "\":1";
    CHECK(Config::parse(many + "}").warnings.size() <= 32);  // bounded
}

TEST_CASE("config: to_json round-trips, and the redacted form hides the token") {
    auto c = Config::parse(R"({"name": "n1", "port": 9002, "token": "hunter2",
        "public_addresses": ["203.0.113.9:1234", "2001:db8::5"], "behind_nat": "auto",
        "table_format": "p2prc", "relay": {"cap": 0}, "limits": {"discovery_hops": 5}})");
    auto j = c.to_json();
    CHECK(j["token"] == "hunter2");
    CHECK(j["relay"]["cap"] == 0);
    CHECK(j["limits"]["discovery_hops"] == 5);
    CHECK(j["behind_nat"] == "auto");
    auto back = Config::parse(j.dump());
    CHECK(back.to_json() == j);
    CHECK(back.warnings.empty());
    CHECK(back.public_addresses == c.public_addresses);

    auto redacted = c.dump(/*redacted=*/true);
    CHECK_FALSE(contains(redacted, "hunter2"));
    CHECK(contains(redacted, "<redacted>"));
    CHECK(Config().to_json(true)["token"] == "");  // nothing to hide: shown as empty
}

TEST_CASE("config: load reads a file; a missing explicit file is an error") {
    p2prc_test::TempDir dir;
    write(dir.file("c.json"), R"({"port": 9100, "name": "from-file"})");
    auto c = Config::load(dir.file("c.json"));
    CHECK(c.port == 9100);
    CHECK(c.source == dir.file("c.json"));
    auto msg = error_of([&] { Config::load(dir.file("absent.json")); }, errc::io_error);
    CHECK(contains(msg, "absent.json"));
}

TEST_CASE("config: from_sources takes --config, else P2PRC_CONFIG, else defaults") {
    p2prc_test::TempDir dir;
    write(dir.file("cli.json"), R"({"port": 9201})");
    write(dir.file("env.json"), R"({"port": 9202})");
    auto env = env_of({{"P2PRC_CONFIG", dir.file("env.json")}});

    CHECK(Config::from_sources(dir.file("cli.json"), env).port == 9201);  // --config wins
    auto from_env = Config::from_sources(std::nullopt, env);
    CHECK(from_env.port == 9202);
    CHECK(from_env.source == dir.file("env.json"));
    auto none = Config::from_sources(std::nullopt, env_of({}));
    CHECK(none.port == 8078);
    CHECK(none.source == "defaults");
    CHECK(Config::from_sources(std::nullopt, env_of({{"P2PRC_CONFIG", ""}})).source == "defaults");
    // A path that was named explicitly must exist.
    CHECK_THROWS_AS(Config::from_sources(std::nullopt, env_of({{"P2PRC_CONFIG", dir.file("no")}})),
                    p2prc::error);
    CHECK_THROWS_AS(Config::from_sources(std::string(), env), p2prc::error);
}

TEST_CASE("config: CLI flags override file values") {
    auto c = Config::parse(R"({"port": 9300, "name": "file", "public_addresses": ["203.0.113.1"],
                              "limits": {"max_entries": 77}})");
    c.apply_flags({{"--port", "9301"},
                   {"--name", "cli"},
                   {"--public-address", "198.51.100.2:9999"},
                   {"--public-address", "2001:db8::7"},
                   {"--max-entries", "1234"},
                   {"--table", "other.json"},
                   {"--table-format", "p2prc"},
                   {"--bind", "127.0.0.1"},
                   {"--behind-nat", "false"},
                   {"--relay-cap", "3"},
                   {"--relay-idle-timeout", "30"},
                   {"--relay-login-timeout", "5"},
                   {"--token", "t0k"},
                   {"--allow-link-local", ""},
                   {"--probe-concurrency", "4"},
                   {"--discovery-hops", "2"},
                   {"--discovery-budget", "9"}});
    CHECK(c.port == 9301);
    CHECK(c.name == "cli");
    REQUIRE(c.public_addresses.size() == 2);  // the command line's list replaced the file's
    CHECK(c.public_addresses[0].to_string() == "198.51.100.2:9999");
    CHECK(c.public_addresses[1].to_string() == "2001:db8::7");
    CHECK(c.limits.max_entries == 1234);
    CHECK(c.iptable == "other.json");
    CHECK(c.table_format == TableFormat::p2prc);
    CHECK(c.bind == "127.0.0.1");
    CHECK(c.behind_nat == BehindNat::no);
    CHECK(c.relay.cap == 3);
    CHECK(c.relay.idle_timeout_s == 30);
    CHECK(c.relay.login_timeout_s == 5);
    CHECK(c.token == "t0k");
    CHECK(c.allow_link_local);
    CHECK(c.limits.probe_concurrency == 4);
    CHECK(c.limits.discovery_hops == 2);
    CHECK(c.limits.discovery_budget_s == 9);

    // apply_flag alone appends to the list; "--" is optional; booleans take a value too.
    c.apply_flag("public-address", "203.0.113.50");
    CHECK(c.public_addresses.size() == 3);
    c.apply_flag("--allow-link-local", "false");
    CHECK_FALSE(c.allow_link_local);
    c.apply_flag("--behind-nat", "auto");
    CHECK(c.behind_nat == BehindNat::automatic);
    c.apply_flag("--token", "");
    CHECK(c.token.empty());
}

TEST_CASE("config: a bad flag value names the flag and what was expected") {
    Config c;
    struct Case {
        const char* flag;
        const char* value;
        const char* expected;
    };
    const Case cases[] = {
        {"--port", "80a", "--port \"80a\": expected an integer 0-65535"},
        {"--port", "", "--port \"\": expected an integer"},
        {"--port", "65536", "expected an integer 0-65535"},
        {"--max-entries", "0", "--max-entries \"0\": expected an integer 1-1000000"},
        {"--relay-idle-timeout", "0", "--relay-idle-timeout"},
        {"--bind", "example.com", "--bind \"example.com\": expected a numeric"},
        {"--table-format", "csv", "--table-format \"csv\": expected \"seed\" or \"p2prc\""},
        {"--behind-nat", "", "--behind-nat \"\": expected true, false or \"auto\""},
        {"--allow-link-local", "perhaps", "--allow-link-local \"perhaps\": expected true or false"},
        {"--public-address", "1.2.3.4:0", "--public-address \"1.2.3.4:0\": expected \"ADDR\""},
        {"--name", "", "--name \"\": expected a non-empty string"},
        {"--table", "", "--table \"\": expected a non-empty string"},
    };
    for (const auto& k : cases) {
        CAPTURE(k.flag);
        CAPTURE(k.value);
        CHECK(contains(error_of([&] { c.apply_flag(k.flag, k.value); }), k.expected));
    }
    CHECK(c.port == 8078);  // nothing changed by the failures
    CHECK(contains(error_of([&] { c.apply_flag("--frobnicate", "1"); }),
                   "unknown option \"--frobnicate\""));
    for (int i = 0; i < 64; ++i) c.apply_flag("--public-address", "203.0.113." + std::to_string(i));
    CHECK_THROWS_AS(c.apply_flag("--public-address", "203.0.113.200"), p2prc::error);  // bounded
}

TEST_CASE("config: every key has exactly one flag with help text and a default") {
    const auto& flags = Config::flags();
    auto j = Config().to_json();
    std::size_t leaves = 0;
    for (auto it = j.begin(); it != j.end(); ++it)
        leaves += it.value().is_object() ? it.value().size() : 1;
    CHECK(flags.size() == leaves);
    for (const auto& f : flags) {
        CAPTURE(f.flag);
        CHECK(f.flag.substr(0, 2) == "--");
        CHECK_FALSE(f.help.empty());
        CHECK(Config::find_flag(f.flag) == &f);
        CHECK(Config::find_flag(f.flag.substr(2)) == &f);
    }
    CHECK(Config::find_flag("--nope") == nullptr);
    const auto* port = Config::find_flag("--port");
    REQUIRE(port);
    CHECK(port->key == "port");
    CHECK(port->metavar == "N");
    CHECK(port->default_value == "8078");
    CHECK(Config::find_flag("--allow-link-local")->boolean());
    CHECK(Config::find_flag("--public-address")->repeatable);
    CHECK(Config::find_flag("--table")->key == "iptable");
    CHECK(Config::find_flag("--behind-nat")->default_value == "auto");
    CHECK(Config::find_flag("--relay-idle-timeout")->default_value == "300");
}

TEST_CASE("config: peer_table_limits follows the limits") {
    Config c;
    c.apply_flag("--max-entries", "12");
    c.apply_flag("--max-body-bytes", "4096");
    auto t = c.peer_table_limits();
    CHECK(t.max_entries == 12);
    CHECK(t.max_bytes == 4096);
}
