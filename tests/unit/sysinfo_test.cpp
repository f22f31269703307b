#include <doctest/doctest.h>

#include "p2prc/sysinfo.hpp"

#include <thread>

TEST_CASE("system_info reports this machine with P2PRC's keys") {
    auto s = p2prc::system_info(".");
    CHECK_FALSE(s.hostname.empty());
    CHECK_FALSE(s.platform.empty());
    CHECK_FALSE(s.cpu.empty());
    CHECK(s.cores >= 1);
    CHECK(s.ram_mib > 0);
    CHECK(s.disk_mib > 0);
    CHECK(s.disk_free_mib <= s.disk_mib);
    auto j = s.to_json();
    for (const char* key : {"Hostname", "Platform", "CPU", "RAM", "Disk", "GPU", "Cores"})
        CHECK_MESSAGE(j.contains(key), key);
    CHECK(j["RAM"].is_number_unsigned());
    CHECK(j["Disk"].is_number_unsigned());
    // GPU is an object when nvidia-smi answered, null otherwise.
    CHECK((j["GPU"].is_null() || j["GPU"].is_object()));
    CHECK(j["GPU"].is_null() == !s.gpus.has_value());
}

TEST_CASE("system_info on a missing folder reports a disk of 0 rather than failing") {
    auto s = p2prc::system_info("/nonexistent/p2prc/folder");
    CHECK(s.disk_mib == 0);
    CHECK(s.ram_mib > 0);
}

TEST_CASE("the bounded runner captures output, and kills what runs too long") {
    auto out = p2prc::detail::run_bounded({"/bin/echo", "hello"}, std::chrono::seconds(2), 1024);
    REQUIRE(out);
    CHECK(*out == "hello\n");
    auto t0 = std::chrono::steady_clock::now();
    auto slow =
        p2prc::detail::run_bounded({"/bin/sleep", "5"}, std::chrono::milliseconds(200), 1024);
    CHECK_FALSE(slow);
    CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(3));
    // Output over the bound is refused, not buffered without end.
    auto big = p2prc::detail::run_bounded({"/usr/bin/yes"}, std::chrono::seconds(2), 4096);
    CHECK_FALSE(big);
    CHECK_FALSE(p2prc::detail::run_bounded({"/nonexistent/tool"}, std::chrono::seconds(1), 10));
}

TEST_CASE("find_on_path finds a program without a shell") {
    CHECK_FALSE(p2prc::detail::find_on_path("sh").empty());
    CHECK(p2prc::detail::find_on_path("p2prc-no-such-program-xyz").empty());
}
