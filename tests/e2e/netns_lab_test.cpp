// The lab cleans up after itself: its namespaces (and the processes in them) are gone when
// it is destroyed, also by an exception, and a new lab removes what a dead run left behind.
#include <doctest/doctest.h>

#include "support/netns.hpp"
#include "support/tempdir.hpp"

#include <algorithm>
#include <cerrno>
#include <iostream>
#include <sstream>

using namespace std::chrono_literals;
using p2prc_test::NetnsLab;

namespace {

std::vector<std::string> lab_namespaces(const std::string& scratch) {
    auto r =
        p2prc_test::run_command({p2prc_test::find_executable("ip"), "netns", "list"}, scratch, 5s);
    std::vector<std::string> names;
    std::stringstream ss(r.out);
    std::string line;
    while (std::getline(ss, line)) {
        std::string name = line.substr(0, line.find(' '));
        if (name.rfind(NetnsLab::prefix, 0) == 0) names.push_back(name);
    }
    return names;
}

bool listed(const std::vector<std::string>& names, const std::string& name) {
    return std::find(names.begin(), names.end(), name) != names.end();
}

}  // namespace

TEST_CASE("e2e: the network lab removes its namespaces and processes, also on an exception") {
    p2prc_test::TempDir dir;
    if (p2prc_test::skip_without_netns(dir.path().string())) return;
    std::string one, two;
    pid_t sleeper = -1;
    try {
        NetnsLab lab(dir.path().string());
        one = lab.add_namespace("one");
        two = lab.add_namespace("two");
        lab.veth(one, "eth0", "10.199.3.1/24", two, "eth0", "10.199.3.2/24");
        auto& p = lab.spawn(two, "sleeper", {"/bin/sleep", "30"});
        sleeper = p.pid();
        auto names = lab_namespaces(dir.path().string());
        CHECK(listed(names, one));
        CHECK(listed(names, two));
        // Each name carries the pid, so parallel runs do not collide.
        CHECK(one.find("-" + std::to_string(::getpid()) + "-") != std::string::npos);
        CHECK(lab.in_namespace(one, [] {
            return p2prc_test::tcp_connect_outcome("10.199.3.2", 9, 2s);
        }) == p2prc_test::ConnectOutcome::refused);  // the link works; nothing listens
        throw std::runtime_error("a failing test");
    } catch (const std::runtime_error& e) {
        CHECK(std::string(e.what()) == "a failing test");
    }
    auto names = lab_namespaces(dir.path().string());
    CHECK_FALSE(listed(names, one));
    CHECK_FALSE(listed(names, two));
    REQUIRE(sleeper > 0);
    CHECK(::kill(sleeper, 0) != 0);  // killed and reaped
}

TEST_CASE("e2e: a new network lab removes namespaces left by a run that died") {
    p2prc_test::TempDir dir;
    if (p2prc_test::skip_without_netns(dir.path().string())) return;
    // A pid nobody has (the highest pids are practically never handed out).
    pid_t dead = 0;
    for (pid_t p = 4194000; p > 4000000 && !dead; --p)
        if (::kill(p, 0) != 0 && errno == ESRCH) dead = p;
    REQUIRE(dead > 0);
    std::string ip = p2prc_test::find_executable("ip");
    // Unique per run: a run in parallel may remove it too, which is what it is for.
    std::string stale = std::string(NetnsLab::prefix) + std::to_string(dead) + "-" +
                        std::to_string(::getpid()) + "-stale";
    auto added = p2prc_test::run_command({ip, "netns", "add", stale}, dir.path().string(), 5s);
    REQUIRE_MESSAGE(added.code == 0, added.err);
    // Ours, alive: kept.
    std::string alive = std::string(NetnsLab::prefix) + std::to_string(::getpid()) + "-zzzzzz-kept";
    added = p2prc_test::run_command({ip, "netns", "add", alive}, dir.path().string(), 5s);
    REQUIRE_MESSAGE(added.code == 0, added.err);
    {
        NetnsLab lab(dir.path().string());
        auto names = lab_namespaces(dir.path().string());
        CHECK_FALSE(listed(names, stale));
        CHECK(listed(names, alive));
    }
    p2prc_test::run_command({ip, "netns", "del", alive}, dir.path().string(), 5s);
    p2prc_test::run_command({ip, "netns", "del", stale}, dir.path().string(), 5s);
}
