// The table file across processes: crash safety and concurrent updates.
#include <p2prc.hpp>

#include "support/tempdir.hpp"

#include <doctest/doctest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <set>
#include <thread>

using p2prc::IpAddress;
using p2prc::IpTable;
using p2prc::Peer;

namespace {

Peer numbered_peer(int owner, int i) {
    Peer p;
    p.name = "p" + std::to_string(owner) + "-" + std::to_string(i);
    std::uint8_t b[4] = {198, 51, static_cast<std::uint8_t>(owner), static_cast<std::uint8_t>(i % 250 + 1)};
    p.ipv4 = IpAddress::from_v4(b);
    p.server_port = static_cast<std::uint16_t>(1000 + i);
    return p;
}

IpTable table_of(int generation, int n) {
    IpTable t;
    for (int i = 0; i < n; ++i) {
        Peer p = numbered_peer(generation % 200, i);
        p.custom_information = "generation " + std::to_string(generation);
        t.add(std::move(p));
    }
    return t;
}

}  // namespace

TEST_CASE("a process killed while saving leaves the old or the new table, never a broken one") {
    p2prc_test::TempDir dir;
    const std::string path = dir.file("table.json");
    table_of(0, 200).save(path);

    const int rounds = 40;
    for (int round = 0; round < rounds; ++round) {
        int ready[2];
        REQUIRE(pipe(ready) == 0);
        pid_t child = fork();
        REQUIRE(child >= 0);
        if (child == 0) {
            // Save tables of varying size, each generation different, until killed; say
            // when the first save is done, so the kill lands among saves in progress.
            close(ready[0]);
            for (int g = 1; g < 100000; ++g) {
                table_of(round * 1000 + g, 200 + (g % 50)).save(path);
                if (g == 1 && write(ready[1], "x", 1) != 1) _exit(2);
            }
            _exit(0);
        }
        close(ready[1]);
        char byte = 0;
        CHECK(read(ready[0], &byte, 1) == 1);  // the child is saving in a loop now
        close(ready[0]);
        // Kill at a point that varies from round to round.
        std::this_thread::sleep_for(std::chrono::microseconds(300 + (round * 1777) % 12000));
        kill(child, SIGKILL);
        int status = 0;
        waitpid(child, &status, 0);
        CHECK(WIFSIGNALED(status));

        IpTable t = IpTable::load(path);  // must not throw
        REQUIRE(t.size() >= 200);
        // Every entry belongs to one generation: a whole table, not a mix or a torn file.
        std::set<std::string> generations;
        for (const auto& p : t.peers()) generations.insert(p.custom_information);
        CHECK(generations.size() == 1);
    }
    // Temporary files of killed writers may remain; the table itself is intact.
    CHECK(IpTable::load(path).size() >= 200);
}

TEST_CASE("two processes each adding 500 peers through update() end with 1000") {
    p2prc_test::TempDir dir;
    const std::string path = dir.file("shared.json");
    pid_t children[2];
    for (int owner = 0; owner < 2; ++owner) {
        children[owner] = fork();
        REQUIRE(children[owner] >= 0);
        if (children[owner] == 0) {
            try {
                for (int i = 0; i < 500; ++i)
                    IpTable::update(path, [&](IpTable& t) { t.add(numbered_peer(owner + 1, i)); });
            } catch (...) {
                _exit(1);
            }
            _exit(0);
        }
    }
    for (pid_t c : children) {
        int status = 0;
        waitpid(c, &status, 0);
        CHECK(WIFEXITED(status));
        CHECK(WEXITSTATUS(status) == 0);
    }
    IpTable t = IpTable::load(path);
    CHECK(t.size() == 1000);
    std::set<std::string> names;
    for (const auto& p : t.peers()) names.insert(p.name);
    CHECK(names.size() == 1000);
}
