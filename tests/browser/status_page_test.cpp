// The status page in a real browser: Debian's chromium, headless, loads GET /status of a
// node with a small live network behind it (peers in its table, a node exposing a service
// through it, bytes relayed), runs the page's script, and the rows it renders must be the
// node's table and relays. Screenshots (wide and phone width) are saved in the build
// folder. Skipped, with the reason, when chromium is not installed or cannot run.
#include <p2prc.hpp>

#include "support/node_config.hpp"
#include "support/process.hpp"
#include "support/relay.hpp"
#include "support/skip.hpp"
#include "support/tempdir.hpp"

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <set>

using namespace std::chrono_literals;
using p2prc::Endpoint;
using p2prc::IpTable;
using p2prc::Node;
using p2prc_test::loopback;

namespace {

// $P2PRC_CHROMIUM when set (a browser elsewhere; a wrong path shows the skip), else the
// usual places.
std::optional<std::string> find_chromium() {
    if (const char* env = std::getenv("P2PRC_CHROMIUM"))
        return ::access(env, X_OK) == 0 ? std::optional<std::string>(env) : std::nullopt;
    for (const char* dir : {"/usr/bin", "/usr/local/bin", "/snap/bin"})
        for (const char* name : {"chromium", "chromium-browser", "google-chrome"}) {
            std::string p = std::string(dir) + "/" + name;
            if (::access(p.c_str(), X_OK) == 0) return p;
        }
    return std::nullopt;
}

struct Browser {
    std::string exe;
    const p2prc_test::TempDir& scratch;
    int runs = 0;

    std::vector<std::string> base_args() {
        // A fresh profile each run; nothing but the page's own requests leaves the browser.
        const std::string profile = scratch.file("chromium-profile-" + std::to_string(++runs));
        std::filesystem::create_directories(profile);
        return {exe,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--user-data-dir=" + profile};
    }

    p2prc_test::CommandResult dump_dom(const std::string& url) {
        auto args = base_args();
        args.push_back("--virtual-time-budget=4000");
        args.push_back("--dump-dom");
        args.push_back(url);
        return p2prc_test::run_command(args, scratch.path().string(), 90s);
    }

    p2prc_test::CommandResult screenshot(const std::string& url, const std::string& png, int w,
                                         int h) {
        auto args = base_args();
        args.push_back("--virtual-time-budget=4000");
        args.push_back("--screenshot=" + png);
        args.push_back("--window-size=" + std::to_string(w) + "," + std::to_string(h));
        args.push_back(url);
        return p2prc_test::run_command(args, scratch.path().string(), 90s);
    }
};

std::set<std::string> all_matches(const std::string& text, const std::string& pattern) {
    std::set<std::string> out;
    std::regex re(pattern);
    for (auto it = std::sregex_iterator(text.begin(), text.end(), re); it != std::sregex_iterator();
         ++it)
        out.insert((*it)[1].str());
    return out;
}

// The <tr ...>...</tr> whose opening tag carries `attr`.
std::string row_with(const std::string& dom, const std::string& attr) {
    auto at = dom.find(attr);
    if (at == std::string::npos) return {};
    auto start = dom.rfind("<tr", at);
    auto end = dom.find("</tr>", at);
    return start == std::string::npos || end == std::string::npos ? std::string()
                                                                  : dom.substr(start, end - start);
}

std::string cell(const std::string& row, const std::string& label) {
    std::smatch m;
    if (std::regex_search(row, m, std::regex("data-label=\"" + label + "\"[^>]*>([^<]*)<")))
        return m[1].str();
    return {};
}

bool is_png(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    char magic[8] = {};
    in.read(magic, 8);
    return in.gcount() == 8 && std::string(magic + 1, 3) == "PNG" &&
           std::filesystem::file_size(path) > 2000;
}

void list_peer(const std::string& path, const std::string& name, const Endpoint& who,
               bool nat = false) {
    IpTable::update(path, [&](IpTable& t) {
        p2prc::Peer p;
        p.name = name;
        p.ipv4 = who.address;
        p.server_port = who.port;
        p.nat = nat;
        if (nat) p.escape_implementation = "FRP";
        t.add(p);
    });
}

}  // namespace

TEST_CASE(
    "the status page, rendered by chromium, shows the node's table and relays; without the token "
    "only the table") {
    auto exe = find_chromium();
    if (!exe) {
        p2prc_test::skip_test_case(
            "chromium is not installed (tools/install-deps.sh installs it as an optional package, "
            "apt-get install chromium; or set P2PRC_CHROMIUM to a chromium binary)");
        return;
    }
    p2prc_test::TempDir dir;
    const std::string token = "page-token";
    auto config = [&](const std::string& name) {
        auto c = p2prc_test::loopback_node_config(dir, name);
        c.token = token;
        c.limits.probe_timeout_ms = 1000;
        return c;
    };
    // The node under view (A) relays for X; B and C are servers it knows; A's table also
    // lists X as a node behind NAT reached through a relay.
    auto ac = config("alpha-relay");
    Node A(ac);
    A.start();
    Node B(config("bravo"));
    B.start();
    Node C(config("charlie"));
    C.start();
    auto xc = config("x-ray-behind-nat");
    xc.behind_nat = p2prc::BehindNat::yes;
    Node X(xc);
    X.start();
    list_peer(ac.iptable, "bravo", loopback(B.port()));
    list_peer(ac.iptable, "charlie", loopback(C.port()));
    list_peer(xc.iptable, "alpha-relay", loopback(A.port()));
    // Measured with throughput too (a few seconds on loopback), so the page has bars to draw.
    REQUIRE(A.update({}, true).pruned.empty());
    REQUIRE(X.update().pruned.empty());
    // X's server is reached through A (its own entry says so), and X exposes a service.
    auto reach = X.check_reachability();
    REQUIRE_MESSAGE(reach.exposure, reach.reason);
    const auto x_entry = X.self_entry();
    REQUIRE(x_entry.nat);
    list_peer(ac.iptable, "x-ray-behind-nat", *x_entry.endpoint(), true);
    p2prc_test::EchoServer service;
    auto ex = X.expose(service.endpoint().port);
    REQUIRE(ex.relay == loopback(A.port()));
    REQUIRE(p2prc_test::echo_roundtrip(ex.public_endpoint, 2, 250000).matched == 250000);

    Browser browser{*exe, dir};
    const std::string base = "http://127.0.0.1:" + std::to_string(A.port()) + "/status";
    auto full = browser.dump_dom(base + "#token=" + token);
    if (full.code != 0 && full.out.find("<html") == std::string::npos) {
        p2prc_test::skip_test_case("chromium is installed but could not run (exit " +
                                   std::to_string(full.code) + "): " + full.err.substr(0, 400));
        return;
    }
    const std::string& dom = full.out;
    REQUIRE_MESSAGE(dom.find("data-loaded=\"1\"") != std::string::npos,
                    "the page's script did not render: " << dom.substr(0, 2000));

    // Every row of the table is an entry of A's table, and every entry has its row.
    std::set<std::string> expected;
    for (const auto& p : A.table().peers())
        if (auto e = p.endpoint()) expected.insert(e->to_string());
    CHECK(expected.size() == 3);
    CHECK(all_matches(dom, "data-peer=\"([^\"]+)\"") == expected);
    auto bravo = row_with(dom, "data-peer=\"" + loopback(B.port()).to_string() + "\"");
    CHECK(bravo.find("bravo") != std::string::npos);
    CHECK(bravo.find(" ms<") != std::string::npos);  // measured: a latency bar with its figure
    CHECK(std::regex_search(bravo, std::regex(" [MG]bit/s<")));  // and throughput bars
    CHECK(
        row_with(dom, "data-peer=\"" + x_entry.endpoint()->to_string() + "\"").find("via relay") !=
        std::string::npos);

    // The relays A serves: two (X's server, X's service), each with X logged in, its public
    // port and the bytes relayed.
    auto pool = A.served_relays();
    REQUIRE(pool);
    std::set<std::string> relay_ports;
    for (const auto& r : pool->relays()) relay_ports.insert(std::to_string(r.port));
    CHECK(relay_ports.size() == 2);
    CHECK(all_matches(dom, "data-relay-port=\"([0-9]+)\"") == relay_ports);
    auto relay_row = row_with(dom, "data-relay-port=\"" + std::to_string(ex.relay_port) + "\"");
    CHECK(cell(relay_row, "Clients") == "1");
    CHECK(cell(relay_row, "Public ports") == std::to_string(ex.public_endpoint.port));
    CHECK(cell(relay_row, "To service") == "244.1 KiB");  // 250000 bytes
    CHECK(dom.find("id=\"relays-section\" hidden") == std::string::npos);

    // Without the token: the same table, no relays or exposures.
    auto pub = browser.dump_dom(base);
    REQUIRE(pub.out.find("data-loaded=\"1\"") != std::string::npos);
    CHECK(all_matches(pub.out, "data-peer=\"([^\"]+)\"") == expected);
    CHECK(all_matches(pub.out, "data-relay-port=\"([0-9]+)\"").empty());
    CHECK(pub.out.find("id=\"relays-section\" hidden") != std::string::npos);
    CHECK(pub.out.find("network token") != std::string::npos);

    // Pictures, for people: wide and phone-sized.
    const std::string out_dir = P2PRC_TEST_BINARY_DIR;
    for (auto [name, w, h] : {std::tuple<const char*, int, int>{"status.png", 1280, 900},
                              std::tuple<const char*, int, int>{"status-phone.png", 390, 1400}}) {
        const std::string png = out_dir + "/" + name;
        std::filesystem::remove(png);
        auto shot = browser.screenshot(base + "#token=" + token, png, w, h);
        CHECK_MESSAGE(is_png(png), "no screenshot at " << png << ": " << shot.err.substr(0, 400));
        MESSAGE("screenshot: " << png);
    }
    // X's own page: reached through A, with its exposures.
    auto xdom =
        browser.dump_dom("http://127.0.0.1:" + std::to_string(X.port()) + "/status#token=" + token);
    REQUIRE(xdom.out.find("data-loaded=\"1\"") != std::string::npos);
    CHECK(xdom.out.find(">through a relay<") != std::string::npos);
    CHECK(all_matches(xdom.out, "data-exposure=\"([0-9]+)\"") ==
          std::set<std::string>{std::to_string(X.port()), std::to_string(service.endpoint().port)});
    auto exposure_row =
        row_with(xdom.out, "data-exposure=\"" + std::to_string(service.endpoint().port) + "\"");
    CHECK(cell(exposure_row, "Public") == ex.public_endpoint.to_string());
    const std::string xpng = out_dir + "/status-exposing.png";
    std::filesystem::remove(xpng);
    browser.screenshot("http://127.0.0.1:" + std::to_string(X.port()) + "/status#token=" + token,
                       xpng, 1280, 700);
    CHECK(is_png(xpng));
    CHECK(X.unexpose(service.endpoint().port));
}
