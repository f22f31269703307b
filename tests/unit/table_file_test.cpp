// The table file's layout (one entry a line by default, indented on request) and the
// removal of temporaries left by saves that were killed midway; the configuration keys
// for both and for the relay's allowed ports.
#include <p2prc.hpp>

#include <doctest/doctest.h>

#include "support/tempdir.hpp"

#include <dirent.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

using p2prc::IpTable;
using p2prc::TableFormat;
using p2prc::TableStyle;

namespace {

IpTable sample(std::size_t n) {
    IpTable t;
    for (std::size_t i = 0; i < n; ++i) {
        p2prc::Peer p;
        p.name = "node-" + std::to_string(i);
        p.ipv4 = p2prc::IpAddress::from_string("10.0." + std::to_string(i / 250) + "." +
                                               std::to_string(1 + i % 250));
        p.server_port = 8078;
        p.latency_ms = 1.5 + double(i);
        t.add(p);
    }
    return t;
}

std::string slurp(const std::string& path) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

void touch(const std::string& path, int age_s) {
    std::ofstream(path) << "partial";
    timeval tv[2];
    gettimeofday(&tv[0], nullptr);
    tv[0].tv_sec -= age_s;
    tv[1] = tv[0];
    REQUIRE(::utimes(path.c_str(), tv) == 0);
}

bool exists(const std::string& path) {
    struct stat st {};
    return ::lstat(path.c_str(), &st) == 0;
}

std::size_t count_lines(const std::string& s) {
    std::size_t n = 0;
    for (char c : s) n += c == '\n';
    return n;
}

}  // namespace

TEST_CASE("table file: one entry a line by default, indented with TableStyle::pretty, same table") {
    p2prc_test::TempDir dir;
    const auto t = sample(50);
    for (auto format : {TableFormat::seed, TableFormat::p2prc}) {
        const auto lines = dir.file("lines.json"), pretty = dir.file("pretty.json");
        t.save(lines, format);
        t.save(pretty, format, TableStyle::pretty);
        const std::string a = slurp(lines), b = slurp(pretty);
        // {"ip_address":[ + one line per entry + ]}
        CHECK(count_lines(a) == 50 + 2);
        CHECK(a.rfind("{\"ip_address\":[\n", 0) == 0);
        CHECK(a.find("  ") == std::string::npos);  // no indentation
        CHECK(count_lines(b) > 50 * 5);
        CHECK(a.size() * 4 < b.size() * 3);  // a quarter smaller at least
        CHECK(nlohmann::json::parse(a) == nlohmann::json::parse(b));
        CHECK(IpTable::load(lines).dump(format) == t.dump(format));
    }
    // An empty table is valid JSON too.
    const auto empty = dir.file("empty.json");
    IpTable().save(empty);
    CHECK(slurp(empty) == "{\"ip_address\":[]}\n");
    CHECK(IpTable::load(empty).empty());
}

TEST_CASE("table file: IpTable::update keeps the chosen layout") {
    p2prc_test::TempDir dir;
    const auto path = dir.file("t.json");
    sample(3).save(path);
    IpTable::update(
        path, [](IpTable& t) { t.add(sample(4).peers().back()); }, TableFormat::seed,
        std::chrono::seconds(5), {}, TableStyle::pretty);
    CHECK(count_lines(slurp(path)) > 4 * 5);
    IpTable::update(path, [](IpTable&) {});
    CHECK(count_lines(slurp(path)) == 4 + 2);
}

TEST_CASE("table file: save removes this table's stale temporaries, nothing else") {
    p2prc_test::TempDir dir;
    const auto path = dir.file("t.json");
    const std::string stale1 = path + ".tmp.Ab3xYz", stale2 = path + ".tmp.000000";
    const std::string fresh = path + ".tmp.Qw9rTy";                // another save in progress
    const std::string other = dir.file("u.json") + ".tmp.Ab3xYz";  // another table's
    const std::string odd1 = path + ".tmp.abc", odd2 = path + ".tmp.Ab3xYz7";
    const std::string odd3 = path + ".tmp.Ab-xYz";
    touch(stale1, 120);
    touch(stale2, 3600);
    touch(fresh, 5);
    touch(other, 120);
    touch(odd1, 120);
    touch(odd2, 120);
    touch(odd3, 120);
    const std::string dir_like = path + ".tmp.DirDir";  // not a regular file
    REQUIRE(::mkdir(dir_like.c_str(), 0700) == 0);
    struct timeval tv[2];
    gettimeofday(&tv[0], nullptr);
    tv[0].tv_sec -= 120;
    tv[1] = tv[0];
    ::utimes(dir_like.c_str(), tv);

    sample(2).save(path);
    CHECK_FALSE(exists(stale1));
    CHECK_FALSE(exists(stale2));
    CHECK(exists(fresh));
    CHECK(exists(other));
    CHECK(exists(odd1));
    CHECK(exists(odd2));
    CHECK(exists(odd3));
    CHECK(exists(dir_like));
    CHECK(IpTable::load(path).size() == 2);
    // Also on its own (what a node does at start).
    touch(stale1, 120);
    CHECK(IpTable::remove_stale_temporaries(path) == 1);
    CHECK_FALSE(exists(stale1));
}

TEST_CASE("table file: saves killed midway leave temporaries that a later save removes") {
    p2prc_test::TempDir dir;
    const auto path = dir.file("t.json");
    const auto big = sample(2000);
    // Children that save in a loop, killed at once: some die between mkstemp and rename.
    // Bounded: at most 40 children, until one left a temporary behind.
    auto leftovers = [&] {
        std::vector<std::string> out;
        DIR* d = ::opendir(dir.path().c_str());
        REQUIRE(d);
        while (dirent* e = ::readdir(d)) {
            std::string n = e->d_name;
            if (n.rfind("t.json.tmp.", 0) == 0) out.push_back(dir.file(n));
        }
        ::closedir(d);
        return out;
    };
    int kills = 0;
    for (; kills < 40 && leftovers().empty(); ++kills) {
        pid_t pid = ::fork();
        REQUIRE(pid >= 0);
        if (pid == 0) {
            for (;;) big.save(path);
        }
        ::usleep(useconds_t(50000 + 17000 * (kills % 13)));
        ::kill(pid, SIGKILL);
        int status = 0;
        ::waitpid(pid, &status, 0);
    }
    const auto found = leftovers();
    if (found.empty()) {
        MESSAGE("skipped: none of " << kills << " killed savers died mid-save on this machine");
        return;
    }
    // A fresh one may be another save in progress: made old, they are stale.
    for (const auto& f : found) {
        struct timeval tv[2];
        gettimeofday(&tv[0], nullptr);
        tv[0].tv_sec -= 120;
        tv[1] = tv[0];
        ::utimes(f.c_str(), tv);
    }
    const std::size_t left = found.size();
    MESSAGE(left << " temporaries left after " << kills << " killed savers");
    sample(1).save(path);
    CHECK(leftovers().empty());
    CHECK(IpTable::load(path).size() == 1);
}

TEST_CASE("config: table_pretty and relay.allow_ports") {
    p2prc::Config d;
    CHECK_FALSE(d.table_pretty);
    CHECK(d.relay.allow_ports == "1024-65535");
    auto c = p2prc::Config::parse(
        R"({"table_pretty": true, "relay": {"allow_ports": "2000-3000, 3001,4000-50000"}})");
    CHECK(c.table_pretty);
    CHECK(c.relay.allow_ports == "2000-3000, 3001,4000-50000");
    auto r = p2prc::parse_port_ranges(c.relay.allow_ports);
    REQUIRE(r.size() == 3);
    CHECK(r[0].lo == 2000);
    CHECK(r[0].hi == 3000);
    CHECK(r[1].lo == 3001);
    CHECK(r[1].hi == 3001);
    CHECK(r[2].contains(4000));
    CHECK_FALSE(r[2].contains(50001));
    for (const char* bad : {"", "0-100", "100-", "3000-2000", "1-65536", "80,x", "1024 - 2048x"}) {
        CAPTURE(bad);
        CHECK_THROWS_AS(p2prc::parse_port_ranges(bad), p2prc::error);
        try {
            p2prc::Config::parse(std::string(R"({"relay": {"allow_ports": ")") + bad + "\"}}");
            FAIL("accepted");
        } catch (const p2prc::error& e) {
            CHECK(std::string(e.what()).find("relay.allow_ports") != std::string::npos);
        }
    }
}
