// Bounded JSON from the network: size and nesting refused before anything is built.
#include <doctest/doctest.h>

#include <p2prc.hpp>

#include <string>

TEST_CASE("parse_json_small: size and depth bounds, syntax errors, all as discarded") {
    using p2prc::detail::parse_json_small;
    CHECK(parse_json_small(R"({"a":[1,2,{"b":3}]})").is_object());
    CHECK(parse_json_small(std::string(100, '['), 1u << 20, 8).is_discarded());
    CHECK(parse_json_small("[[[[[[[[1]]]]]]]]", 1024, 8).is_array());         // 8 levels: fine
    CHECK(parse_json_small("[[[[[[[[[1]]]]]]]]]", 1024, 8).is_discarded());   // 9: refused
    CHECK(parse_json_small(R"({"s":"[[[[[[[[[[[["})", 1024, 2).is_object());  // in a string
    CHECK(parse_json_small(std::string(2000, ' ') + "1", 1024).is_discarded());
    CHECK(parse_json_small("{\"a\":", 1024).is_discarded());
}

TEST_CASE("dialback_port: {\"port\": N} and nothing else") {
    using p2prc::detail::dialback_port;
    CHECK(dialback_port(R"({"port": 8080})") == 8080);
    CHECK(dialback_port(R"({"port": "8080"})") == 8080);
    CHECK_FALSE(dialback_port(R"({"port": 0})"));
    CHECK_FALSE(dialback_port(R"({"port": 65536})"));
    CHECK_FALSE(dialback_port(R"({"port": -1})"));
    CHECK_FALSE(dialback_port(R"({"port": 1.5})"));
    CHECK_FALSE(dialback_port(R"([8080])"));
    CHECK_FALSE(dialback_port(std::string(5000, '[')));
    CHECK_FALSE(dialback_port(R"({"port": 80)" + std::string(2000, ' ') + "}"));
}
