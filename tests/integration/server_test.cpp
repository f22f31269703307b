#include "support/multipart.hpp"

#include <doctest/doctest.h>

#include "p2prc/server.hpp"
#include "support/raw_http.hpp"

#include <httplib.h>

#include <chrono>
#include <string>

using namespace std::chrono_literals;

namespace {

p2prc::ServerOptions loopback_options() {
    p2prc::ServerOptions o;
    o.bind_address = "127.0.0.1";
    o.name = "test-node";
    o.advertised_addresses = {"127.0.0.1"};
    o.worker_threads = 4;
    return o;
}

httplib::Client client_for(const p2prc::Server& s) {
    httplib::Client c("127.0.0.1", s.port());
    c.set_connection_timeout(2, 0);
    c.set_read_timeout(5, 0);
    c.set_write_timeout(5, 0);
    c.set_keep_alive(true);
    return c;
}

nlohmann::json json_of(const httplib::Result& r) {
    REQUIRE(r);
    return nlohmann::json::parse(r->body);
}

}  // namespace

TEST_CASE("server: port 0 picks a free port; /server_info has P2PRC's keys and ours") {
    p2prc::Server s(loopback_options());
    CHECK(s.port() == 0);
    s.start();
    REQUIRE(s.port() > 0);
    CHECK(s.running());
    auto c = client_for(s);
    auto r = c.Get("/server_info");
    REQUIRE(r);
    CHECK(r->status == 200);
    CHECK(r->get_header_value("Content-Type") == "application/json");
    auto j = json_of(r);
    for (const char* key : {"Hostname", "Platform", "CPU", "RAM", "Disk", "GPU", "Cores", "Name",
                            "Version", "ServerPort", "Addresses"})
        CHECK_MESSAGE(j.contains(key), key);
    CHECK(j["Name"] == "test-node");
    CHECK(j["Version"] == P2PRC_VERSION_STRING);
    CHECK(j["ServerPort"] == std::to_string(s.port()));
    CHECK(j["Addresses"] == nlohmann::json::array({"127.0.0.1"}));
    CHECK(j == s.info());
}

TEST_CASE("server: starting twice is misuse; a taken port is an io_error") {
    p2prc::Server s(loopback_options());
    s.start();
    CHECK_THROWS_AS(s.start(), p2prc::error);
    auto o = loopback_options();
    o.port = s.port();
    p2prc::Server other(o);
    try {
        other.start();
        FAIL("bound a port that is taken");
    } catch (const p2prc::error& e) {
        CHECK(e.code() == p2prc::errc::io_error);
        CHECK(std::string(e.what()).find(std::to_string(s.port())) != std::string::npos);
    }
    auto zero = loopback_options();
    zero.worker_threads = 0;
    CHECK_THROWS_AS(p2prc::Server{zero}, p2prc::error);
}

TEST_CASE("server: unknown routes and wrong methods answer JSON errors") {
    p2prc::Server s(loopback_options());
    s.start();
    auto c = client_for(s);
    auto r = c.Get("/no/such/route");
    REQUIRE(r);
    CHECK(r->status == 404);
    CHECK(r->get_header_value("Content-Type") == "application/json");
    CHECK(json_of(r)["error"].get<std::string>().find("/no/such/route") != std::string::npos);
    auto p = c.Post("/server_info", "x", "text/plain");
    REQUIRE(p);
    CHECK(p->status == 405);
    CHECK(json_of(p).contains("error"));
    auto bad = c.Get("/speedtest/download?bytes=12abc");
    REQUIRE(bad);
    CHECK(bad->status == 400);
    CHECK(json_of(bad).contains("error"));
    auto missing = c.Get("/speedtest/download");
    REQUIRE(missing);
    CHECK(missing->status == 400);
    // The connection survives a POST answered without reading its body... or is closed
    // cleanly; either way the next request on a fresh client works.
    auto c2 = client_for(s);
    auto again = c2.Get("/server_info");
    REQUIRE(again);
    CHECK(again->status == 200);
}

TEST_CASE("server: download?bytes=N sends exactly N bytes, capped by the option") {
    auto o = loopback_options();
    o.max_download_bytes = 3u << 20;
    p2prc::Server s(o);
    s.start();
    auto c = client_for(s);
    for (std::uint64_t n : {0ull, 1ull, 65535ull, 65536ull, 65537ull, (1ull << 20) + 3}) {
        std::uint64_t got = 0;
        auto r = c.Get(("/speedtest/download?bytes=" + std::to_string(n)).c_str(),
                       [&](const char*, size_t len) {
                           got += len;
                           return true;
                       });
        REQUIRE(r);
        CHECK(r->status == 200);
        CHECK(got == n);
    }
    std::uint64_t got = 0;
    auto r = c.Get("/speedtest/download?bytes=999999999999", [&](const char*, size_t len) {
        got += len;
        return true;
    });
    REQUIRE(r);
    CHECK(got == o.max_download_bytes);
    got = 0;
    auto fifty = c.Get("/50", [&](const char*, size_t len) {
        got += len;
        return true;
    });
    REQUIRE(fifty);
    CHECK(fifty->status == 200);
    CHECK(got == o.max_download_bytes);  // 50 MB, capped
}

TEST_CASE("server: upload counts exactly, with a length, chunked and multipart") {
    p2prc::Server s(loopback_options());
    s.start();
    auto c = client_for(s);
    std::string body(123457, 'x');
    auto r = c.Post("/speedtest/upload", body, "application/octet-stream");
    REQUIRE(r);
    CHECK(r->status == 200);
    auto j = json_of(r);
    CHECK(j["bytes"] == body.size());
    CHECK(j["seconds"].get<double>() >= 0.0);

    // Chunked: no length known in advance.
    std::size_t sent = 0;
    auto chunked = c.Post(
        "/speedtest/upload",
        [&](size_t, httplib::DataSink& sink) {
            if (sent >= 300000) {
                sink.done();
                return true;
            }
            std::string piece(10000, 'y');
            sent += piece.size();
            return sink.write(piece.data(), piece.size());
        },
        "application/octet-stream");
    REQUIRE(chunked);
    CHECK(chunked->status == 200);
    CHECK(json_of(chunked)["bytes"] == 300000);

    auto multi = p2prc_test::post_file(c, "/upload", "file", "50.txt", "text/plain", std::string(5000, 'z'));
    REQUIRE(multi);
    CHECK(multi->status == 200);
    CHECK(json_of(multi)["bytes"] == 5000);
}

TEST_CASE("server: routes of higher layers see the peer and a bounded body") {
    auto o = loopback_options();
    o.max_body_bytes = 1000;
    p2prc::Server s(o);
    std::string seen_peer;
    s.get("/hello", [&](const p2prc::HttpRequest& req, p2prc::HttpResponse& res) {
        seen_peer = req.remote ? req.remote->to_string() : "";
        res.json({{"hello", req.param("who").value_or("nobody")}});
    });
    s.post("/echo", [](const p2prc::HttpRequest& req, p2prc::HttpResponse& res) {
        if (!req.files.empty()) {
            res.json({{"file", req.files[0].name}, {"content", req.files[0].content}});
            return;
        }
        if (req.body == "boom") throw p2prc::error(p2prc::errc::parse_error, "bad echo");
        res.body = req.body;
        res.content_type = "text/plain";
    });
    CHECK_THROWS_AS(s.get("/server_info", [](const p2prc::HttpRequest&, p2prc::HttpResponse&) {}),
                    p2prc::error);
    s.start();
    CHECK_THROWS_AS(s.get("/late", [](const p2prc::HttpRequest&, p2prc::HttpResponse&) {}),
                    p2prc::error);
    auto c = client_for(s);
    auto r = c.Get("/hello?who=you");
    REQUIRE(r);
    CHECK(r->status == 200);
    CHECK(json_of(r)["hello"] == "you");
    CHECK(seen_peer.rfind("127.0.0.1:", 0) == 0);

    auto e = c.Post("/echo", "abc", "text/plain");
    REQUIRE(e);
    CHECK(e->status == 200);
    CHECK(e->body == "abc");
    auto boom = c.Post("/echo", "boom", "text/plain");
    REQUIRE(boom);
    CHECK(boom->status == 400);
    CHECK(json_of(boom)["error"] == "bad echo");
    auto m = p2prc_test::post_file(c, "/echo", "json", "table.json", "application/json", "{\"ip_address\":[]}");
    REQUIRE(m);
    CHECK(m->status == 200);
    CHECK(json_of(m)["file"] == "json");
    CHECK(json_of(m)["content"] == "{\"ip_address\":[]}");
}

TEST_CASE("server: a body over the limit is refused with 413 on every route") {
    auto o = loopback_options();
    o.max_body_bytes = 1000;
    p2prc::Server s(o);
    s.post("/echo",
           [](const p2prc::HttpRequest& req, p2prc::HttpResponse& res) { res.body = req.body; });
    s.start();
    for (const char* path : {"/echo", "/speedtest/upload", "/upload"}) {
        CAPTURE(path);
        // Declared length over the limit: refused before the body is read.
        p2prc_test::RawConn raw(s.port());
        REQUIRE(raw.ok());
        raw.send(std::string("POST ") + path +
                 " HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n");
        auto resp = raw.read_until("}", 3s);
        CHECK(p2prc_test::status_of(resp) == 413);
        CHECK(p2prc_test::body_of(resp).find("\"error\"") != std::string::npos);

        // Chunked, no length declared: cut when the count passes the limit.
        auto c = client_for(s);
        std::size_t sent = 0;
        auto r = c.Post(
            path,
            [&](size_t, httplib::DataSink& sink) {
                if (sent >= 20000) {
                    sink.done();
                    return true;
                }
                std::string piece(500, 'q');
                sent += piece.size();
                return sink.write(piece.data(), piece.size());
            },
            "application/octet-stream");
        if (r) {
            CHECK(r->status == 413);
        } else {
            // The server may close before the client finished writing; it must not
            // have accepted the body.
            CHECK(r.error() != httplib::Error::Success);
        }
    }
    // Exactly at the limit is fine.
    auto c = client_for(s);
    auto ok = c.Post("/echo", std::string(1000, 'a'), "text/plain");
    REQUIRE(ok);
    CHECK(ok->status == 200);
    CHECK(ok->body.size() == 1000);
}

TEST_CASE("server: stop() is prompt with idle keep-alive clients; the destructor stops") {
    auto o = loopback_options();
    o.keep_alive_timeout = 30s;
    o.read_timeout = 30s;
    auto s = std::make_unique<p2prc::Server>(o);
    s->start();
    auto c = client_for(*s);
    auto r = c.Get("/server_info");
    REQUIRE(r);
    p2prc_test::RawConn idle(s->port());  // connected, sends nothing
    REQUIRE(idle.ok());
    std::this_thread::sleep_for(100ms);
    auto t0 = std::chrono::steady_clock::now();
    s->stop();
    auto took = std::chrono::steady_clock::now() - t0;
    CHECK(took < 2s);
    CHECK_FALSE(s->running());
    s->stop();  // idempotent
    // Restartable.
    s->start();
    auto c2 = client_for(*s);
    CHECK(c2.Get("/server_info"));
    p2prc_test::RawConn idle2(s->port());
    std::this_thread::sleep_for(50ms);
    t0 = std::chrono::steady_clock::now();
    s.reset();
    CHECK(std::chrono::steady_clock::now() - t0 < 2s);
}
