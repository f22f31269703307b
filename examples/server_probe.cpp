// Serve this machine's facts and measure a peer.
//
//   server_probe                 start a server on a free loopback port and probe it
//   server_probe ADDRESS:PORT    probe another node (its GET /server_info)
//
// Prints the latency probe's figures as JSON; with no argument, also the throughput.
#include <p2prc.hpp>

#include <iostream>

int main(int argc, char** argv) {
    try {
        p2prc::ServerOptions options;
        options.bind_address = "127.0.0.1";
        options.name = "example";
        p2prc::Server server(options);
        p2prc::Endpoint target;
        if (argc > 1) {
            target = p2prc::Endpoint::from_string(argv[1]);
        } else {
            server.get("/hello", [](const p2prc::HttpRequest& req, p2prc::HttpResponse& res) {
                res.json({{"hello", req.remote ? req.remote->to_string() : "?"}});
            });
            server.start();
            target = p2prc::Endpoint{p2prc::IpAddress::from_string("127.0.0.1"), server.port()};
        }
        auto r = p2prc::probe_latency(target);
        nlohmann::json out = {{"endpoint", target.to_string()}, {"reachable", r.reachable}};
        if (r.reachable) {
            out["min_ms"] = r.min_ms;
            out["median_ms"] = r.median_ms;
            out["max_ms"] = r.max_ms;
        } else {
            out["failure"] = p2prc::to_string(r.failure);
            out["reason"] = r.reason;
        }
        if (argc == 1) {
            p2prc::ThroughputOptions t;
            t.duration = std::chrono::milliseconds(500);
            auto tr = p2prc::probe_throughput(target, t);
            if (tr.ok) {
                out["download_mbps"] = *tr.download_mbps;
                out["upload_mbps"] = *tr.upload_mbps;
            }
        }
        std::cout << out.dump(2) << "\n";
        return r.reachable ? 0 : 1;
    } catch (const p2prc::error& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 2;
    }
}
