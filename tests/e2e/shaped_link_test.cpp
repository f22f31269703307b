// The throughput probe against a real link shaped by the kernel: a node serves in one
// namespace, `p2prc speedtest` runs in another, and the veth pair between them is limited
// to 50 Mbit/s by tbf in both directions.
#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include "support/netns.hpp"
#include "support/tempdir.hpp"

#include <algorithm>
#include <iostream>

using namespace std::chrono_literals;
using p2prc_test::NetnsLab;

namespace {

// The figures of one `p2prc speedtest HOST:PORT --json` run, or nothing when it failed.
struct Speed {
    double down = 0, up = 0;
};

std::optional<Speed> speedtest(NetnsLab& lab, const std::string& ns, const std::string& table,
                               const std::string& target, std::string& why) {
    auto r = lab.try_exec(ns, {P2PRC_CLI, "--table", table, "speedtest", target, "--json"}, 40s);
    auto j = nlohmann::json::parse(r.out, nullptr, false);
    if (r.code != 0 || j.is_discarded() || !j.is_array() || j.size() != 1 ||
        !j[0].value("ok", false) || !j[0]["download_mbps"].is_number() ||
        !j[0]["upload_mbps"].is_number()) {
        why = "exit " + std::to_string(r.code) + ": " + r.out.substr(0, 300) + r.err.substr(0, 300);
        return std::nullopt;
    }
    return Speed{j[0]["download_mbps"].get<double>(), j[0]["upload_mbps"].get<double>()};
}

}  // namespace

TEST_CASE("e2e: speedtest across a link shaped by tbf to 50 Mbit/s measures it within 10%") {
    p2prc_test::TempDir dir;
    if (p2prc_test::skip_without_netns(dir.path().string())) return;
    NetnsLab lab(dir.path().string());
    auto server = lab.add_namespace("tbf-server");
    auto client = lab.add_namespace("tbf-client");
    lab.veth(server, "eth0", "10.199.2.1/24", client, "eth0", "10.199.2.2/24");
    const int rate = 50;
    lab.shape(server, "eth0", rate);  // download
    lab.shape(client, "eth0", rate);  // upload

    auto& node =
        lab.spawn(server, "node",
                  {P2PRC_CLI, "--table", dir.file("server.json"), "--name", "shaped", "--bind",
                   "10.199.2.1", "--port", "8088", "--behind-nat", "false", "--json", "serve"});
    auto hello = nlohmann::json::parse(node.first_line(15s), nullptr, false);
    REQUIRE_MESSAGE(hello.is_object(), "node output: " << node.out() << node.err());
    REQUIRE(hello.value("port", 0) == 8088);

    // Best of up to three runs: other work on the machine can only slow a run down, while
    // the shaper caps every run alike. Goodput is below the line rate by the headers
    // (about 4.5% with 1500-byte frames), well inside the tolerance.
    double best_down = 0, best_up = 0;
    auto within = [&](double v) { return v >= rate * 0.9 && v <= rate * 1.1; };
    for (int run = 0; run < 3 && !(within(best_down) && within(best_up)); ++run) {
        std::string why;
        auto s = speedtest(lab, client, dir.file("client.json"), "10.199.2.1:8088", why);
        REQUIRE_MESSAGE(s, "speedtest failed: " << why);
        MESSAGE("run " << run + 1 << ": download " << s->down << " Mbit/s, upload " << s->up
                       << " Mbit/s (link shaped to " << rate << " Mbit/s)");
        best_down = std::max(best_down, s->down);
        best_up = std::max(best_up, s->up);
    }
    CHECK(best_down >= rate * 0.9);
    CHECK(best_down <= rate * 1.1);
    CHECK(best_up >= rate * 0.9);
    CHECK(best_up <= rate * 1.1);
}
