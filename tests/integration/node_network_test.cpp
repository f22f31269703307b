// Nodes as separate processes on loopback, driven through the CLI: discovery along a
// chain, pruning of a killed node, and every subcommand's output.
#include <p2prc.hpp>

#include "support/process.hpp"
#include "support/tempdir.hpp"

#include <doctest/doctest.h>

#include <map>
#include <memory>
#include <set>

using namespace std::chrono_literals;
using p2prc::Endpoint;
using p2prc::IpTable;
using p2prc_test::ChildProcess;
using p2prc_test::run_command;

namespace {

struct RunningNode {
    std::string name;
    std::string table;
    std::uint16_t port = 0;
    std::unique_ptr<ChildProcess> process;
    Endpoint endpoint() const { return Endpoint::from_string("127.0.0.1:" + std::to_string(port)); }
};

std::vector<std::string> node_flags(const RunningNode& n) {
    return {"--name", n.name, "--bind", "127.0.0.1", "--port", std::to_string(n.port), "--table", n.table,
            "--behind-nat", "false"};
}

RunningNode start_node(const p2prc_test::TempDir& dir, const std::string& name) {
    RunningNode n;
    n.name = name;
    n.table = dir.file(name + ".json");
    std::vector<std::string> argv = {P2PRC_CLI, "--json", "serve"};
    for (auto& f : node_flags(n)) argv.push_back(f);
    n.process = std::make_unique<ChildProcess>(argv, dir.file(name + ".out"), dir.file(name + ".err"));
    auto line = nlohmann::json::parse(n.process->first_line(10s));
    n.port = line.at("port").get<std::uint16_t>();
    REQUIRE(n.port != 0);
    return n;
}

std::vector<std::string> cli(const RunningNode& n, std::vector<std::string> command) {
    std::vector<std::string> argv = {P2PRC_CLI};
    for (auto& f : node_flags(n)) argv.push_back(f);
    for (auto& c : command) argv.push_back(c);
    return argv;
}

void know(const RunningNode& who, const std::vector<const RunningNode*>& peers) {
    IpTable::update(who.table, [&](IpTable& t) {
        for (const auto* p : peers) {
            p2prc::Peer e;
            e.ipv4 = p->endpoint().address;
            e.server_port = p->port;
            t.add(e);
        }
    });
}

std::set<std::uint16_t> ports_in(const IpTable& t) {
    std::set<std::uint16_t> out;
    for (const auto& p : t.peers()) out.insert(p.server_port);
    return out;
}

}  // namespace

TEST_CASE("six nodes: F knows only A, discovers the chain A..E, and prunes C once it dies") {
    p2prc_test::TempDir dir;
    std::map<std::string, RunningNode> nodes;
    for (const char* name : {"A", "B", "C", "D", "E", "F"}) nodes[name] = start_node(dir, name);
    auto& A = nodes["A"];
    auto& B = nodes["B"];
    auto& C = nodes["C"];
    auto& D = nodes["D"];
    auto& E = nodes["E"];
    auto& F = nodes["F"];
    // A chain: each knows its neighbours only.
    know(A, {&B});
    know(B, {&A, &C});
    know(C, {&B, &D});
    know(D, {&C, &E});
    know(E, {&D});
    know(F, {&A});

    auto r = run_command(cli(F, {"--json", "discover", A.endpoint().to_string()}), dir.path().string(), 60s);
    INFO("stdout: " << r.out << "\nstderr: " << r.err);
    REQUIRE(r.code == 0);
    auto report = nlohmann::json::parse(r.out);
    CHECK(report["failed"].empty());

    IpTable table = IpTable::load(F.table);
    CHECK(table.size() == 5);
    CHECK(ports_in(table) == std::set<std::uint16_t>{A.port, B.port, C.port, D.port, E.port});
    for (const auto& p : table.peers()) {
        CAPTURE(p.label());
        CHECK(p.latency_ms.has_value());
        CHECK(p.server_port != F.port);  // never itself
    }
    // The names of the servers F talked to came with their own entries.
    for (const auto* n : {&A, &B, &C, &D}) {
        REQUIRE(table.find(n->endpoint().to_string()));
        CHECK(table.find(n->endpoint().to_string())->name == n->name);
    }
    // A learned F from F's own entry (F serves, so it passed the liveness check).
    CHECK(ports_in(IpTable::load(A.table)).count(F.port) == 1);

    // C dies: the next update on F prunes it, keeps the others, and says so on disk.
    C.process->signal(SIGKILL);
    C.process->wait(5s);
    auto u = run_command(cli(F, {"--json", "update"}), dir.path().string(), 60s);
    INFO("update stdout: " << u.out << "\nstderr: " << u.err);
    REQUIRE(u.code == 0);
    auto ureport = nlohmann::json::parse(u.out);
    REQUIRE(ureport["pruned"].size() == 1);
    CHECK(ureport["pruned"][0]["endpoint"] == C.endpoint().to_string());
    CHECK(ureport["kept"].size() == 4);
    CHECK(ports_in(IpTable::load(F.table)) == std::set<std::uint16_t>{A.port, B.port, D.port, E.port});
}

TEST_CASE("the CLI: every subcommand against live nodes") {
    p2prc_test::TempDir dir;
    auto A = start_node(dir, "A");
    auto B = start_node(dir, "B");
    const std::string scratch = dir.path().string();

    // add, and add again (an update), then table.
    auto r = run_command(cli(B, {"add", A.endpoint().to_string(), "alpha"}), scratch);
    CHECK(r.code == 0);
    CHECK(r.out == "added " + A.endpoint().to_string() + "\n");
    r = run_command(cli(B, {"--json", "add", A.endpoint().to_string()}), scratch);
    CHECK(r.code == 0);
    CHECK(nlohmann::json::parse(r.out)["added"] == false);
    r = run_command(cli(B, {"table"}), scratch);
    CHECK(r.code == 0);
    CHECK(r.out.find("NAME") == 0);
    CHECK(r.out.find("alpha") != std::string::npos);
    CHECK(r.out.find(A.endpoint().to_string()) != std::string::npos);
    CHECK(r.out.find("\033[") == std::string::npos);  // no colours when not a terminal
    r = run_command(cli(B, {"--json", "table"}), scratch);
    CHECK(IpTable::parse(r.out).size() == 1);

    // update measures A.
    r = run_command(cli(B, {"update"}), scratch);
    CHECK(r.code == 0);
    CHECK(r.out.find("1 kept, 0 pruned") != std::string::npos);
    CHECK(IpTable::load(B.table).peers().at(0).latency_ms.has_value());

    // info: A's /server_info.
    r = run_command(cli(B, {"--json", "info", A.endpoint().to_string()}), scratch);
    CHECK(r.code == 0);
    auto info = nlohmann::json::parse(r.out);
    for (const char* key : {"Hostname", "Platform", "CPU", "RAM", "Disk", "GPU"}) CHECK(info.contains(key));

    // speedtest against A, with short figures.
    r = run_command(cli(B, {"--json", "speedtest", A.endpoint().to_string()}), scratch);
    INFO("speedtest: " << r.out << r.err);
    CHECK(r.code == 0);
    auto st = nlohmann::json::parse(r.out);
    CHECK(st[0]["ok"] == true);
    CHECK(st[0]["download_mbps"].get<double>() > 0);
    CHECK(st[0]["upload_mbps"].get<double>() > 0);

    // remove by name; removing again is an error with one clear line.
    r = run_command(cli(B, {"remove", "alpha"}), scratch);
    CHECK(r.code == 0);
    CHECK(r.out == "removed 1 server\n");
    r = run_command(cli(B, {"remove", "alpha"}), scratch);
    CHECK(r.code == 1);
    CHECK(r.err == "p2prc: error: no server named or at \"alpha\"\n");

    // discover through A from B.
    r = run_command(cli(B, {"discover", A.endpoint().to_string()}), scratch);
    CHECK(r.code == 0);
    CHECK(r.out.find("contacted 1 servers") != std::string::npos);

    // Errors: one line on stderr, non-zero exit.
    r = run_command({P2PRC_CLI, "frobnicate"}, scratch);
    CHECK(r.code == 2);
    CHECK(r.err == "p2prc: unknown command \"frobnicate\" (see p2prc --help)\n");
    r = run_command({P2PRC_CLI, "--port", "80a", "table"}, scratch);
    CHECK(r.code == 1);
    CHECK(r.err.find("80a") != std::string::npos);
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
    r = run_command({P2PRC_CLI, "--table", dir.file("t.json"), "info", "127.0.0.1:1"}, scratch);
    CHECK(r.code == 1);
    CHECK(r.err.find("no answer from 127.0.0.1:1") != std::string::npos);
    r = run_command({P2PRC_CLI, "add", "nonsense"}, scratch);
    CHECK(r.code == 2);
    r = run_command({P2PRC_CLI, "--help"}, scratch);
    CHECK(r.code == 0);
    for (const char* word : {"serve", "table", "add", "remove", "discover", "update", "speedtest", "info", "--table"})
        CHECK(r.out.find(word) != std::string::npos);
    r = run_command({P2PRC_CLI, "discover", "--help"}, scratch);
    CHECK(r.code == 0);
    CHECK(r.out.find("usage: p2prc [options] discover HOST:PORT...") == 0);

    // serve stops on SIGTERM.
    A.process->signal(SIGTERM);
    CHECK(A.process->wait(10s) == 0);
}

TEST_CASE("the CLI relay: p2prc relay, p2prc expose --via, and a node reached through it") {
    p2prc_test::TempDir dir;
    auto A = start_node(dir, "A");
    const std::string scratch = dir.path().string();
    ChildProcess relay({P2PRC_CLI, "--json", "--bind", "127.0.0.1", "--port", "0", "--token", "s3cret", "relay"},
                       dir.file("relay.out"), dir.file("relay.err"));
    auto relay_port = nlohmann::json::parse(relay.first_line(10s)).at("port").get<int>();
    const std::string via = "127.0.0.1:" + std::to_string(relay_port);

    // A wrong token: refused with frp's text, exit 1.
    auto bad = run_command({P2PRC_CLI, "--token", "wrong", "expose", std::to_string(A.port), "--via", via}, scratch, 40s);
    CHECK(bad.code == 1);
    CHECK(bad.err.find("token in login doesn't match token from configuration") != std::string::npos);

    for (bool mux : {true, false}) {
        CAPTURE(mux);
        std::vector<std::string> argv = {P2PRC_CLI, "--json", "--token", "s3cret", "expose", std::to_string(A.port), "--via", via};
        if (!mux) argv.push_back("--no-mux");
        ChildProcess expose(argv, dir.file(mux ? "e1.out" : "e2.out"), dir.file(mux ? "e1.err" : "e2.err"));
        auto line = nlohmann::json::parse(expose.first_line(30s));
        auto pub = p2prc::Endpoint::from_string(line.at("public_endpoint").get<std::string>());
        CHECK(pub.port != A.port);
        // A's /server_info through the relay's public port.
        auto r = run_command({P2PRC_CLI, "--json", "info", pub.to_string()}, scratch, 30s);
        INFO("info: " << r.out << r.err);
        CHECK(r.code == 0);
        CHECK(nlohmann::json::parse(r.out)["Name"] == "A");
        expose.signal(SIGTERM);
        CHECK(expose.wait(15s) == 0);
    }
    // Without --via the relay comes from the table: none there yet, then A (measured).
    const std::string table = dir.file("exposer.json");
    auto none = run_command({P2PRC_CLI, "--table", table, "expose", std::to_string(A.port)}, scratch);
    CHECK(none.code == 1);
    CHECK(none.err.find("no relay candidate") != std::string::npos);
    CHECK(run_command({P2PRC_CLI, "--table", table, "add", A.endpoint().to_string(), "A"}, scratch).code == 0);
    CHECK(run_command({P2PRC_CLI, "--table", table, "update"}, scratch).code == 0);
    {
        ChildProcess expose({P2PRC_CLI, "--json", "--table", table, "expose", std::to_string(A.port)},
                            dir.file("e3.out"), dir.file("e3.err"));
        auto line = nlohmann::json::parse(expose.first_line(30s));
        CHECK(line.at("relay") == A.endpoint().to_string());
        CHECK(line.at("relay_name") == "A");
        auto pub = p2prc::Endpoint::from_string(line.at("public_endpoint").get<std::string>());
        auto r = run_command({P2PRC_CLI, "--json", "info", pub.to_string()}, scratch, 30s);
        CHECK(r.code == 0);
        CHECK(nlohmann::json::parse(r.out)["Name"] == "A");
        expose.signal(SIGTERM);
        CHECK(expose.wait(15s) == 0);
    }
    relay.signal(SIGTERM);
    CHECK(relay.wait(15s) == 0);
}
