// Node::expose: a local service reached through the nearest relay of the node's table.
//
//   example_expose                 the whole loop on 127.0.0.1: a relay node, a local web
//                                  service, a node that exposes it, a fetch through the relay
//   example_expose TABLE PORT      expose 127.0.0.1:PORT through the nearest relay listed in
//                                  the IP table file TABLE, until Ctrl-C
#include <p2prc.hpp>

#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <string>

namespace {

void print(const p2prc::Exposure& e) {
    char latency[32];
    std::snprintf(latency, sizeof latency, "%.2f ms", e.relay_latency_ms);
    std::cout << e.local.to_string() << " is reachable at " << e.public_endpoint.to_string()
              << " via relay " << e.relay_name << " (" << e.relay.to_string() << ", " << latency
              << ")" << std::endl;
}

int expose_until_interrupted(const std::string& table, std::uint16_t port) {
    // Blocked before the node starts threads, so only sigwait below receives them.
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);

    p2prc::Config config;
    config.iptable = table;
    p2prc::Node node(config);
    p2prc::ExposeOptions options;
    options.on_change = print;  // failover to the next relay, or a move to a nearer one
    print(node.expose(port, options));
    int sig = 0;
    sigwait(&signals, &sig);
    node.unexpose(port);
    return 0;
}

int whole_loop() {
    char folder_template[] = "/tmp/p2prc-expose-XXXXXX";
    const char* folder = mkdtemp(folder_template);
    if (!folder)
        throw p2prc::error(p2prc::errc::io_error, "cannot make a temporary folder in /tmp");
    const std::string dir = folder;

    // A node that relays: its server answers GET /FRPPort with a fresh relay port.
    p2prc::Config relay_config;
    relay_config.name = "relay-1";
    relay_config.bind = "127.0.0.1";
    relay_config.port = 0;  // any free port
    relay_config.iptable = dir + "/relay.json";
    p2prc::Node relay(relay_config);
    relay.start();

    // The service to expose: any TCP server on this machine; here a tiny web server.
    p2prc::ServerOptions web_options;
    web_options.bind_address = "127.0.0.1";
    p2prc::Server web(web_options);
    web.get("/hello", [](const p2prc::HttpRequest&, p2prc::HttpResponse& res) {
        res.status = 200;
        res.content_type = "text/plain";
        res.body = "hello through the relay\n";
    });
    web.start();

    // The node that exposes it knows the relay node and has measured it: only measured
    // servers that are not behind NAT themselves are relay candidates.
    p2prc::Config config;
    config.name = "home";
    config.bind = "127.0.0.1";
    config.iptable = dir + "/home.json";
    p2prc::Node node(config);
    p2prc::Peer peer;
    peer.name = "relay-1";
    peer.ipv4 = p2prc::IpAddress::from_string("127.0.0.1");
    peer.server_port = relay.port();
    p2prc::IpTable::update(config.iptable, [&](p2prc::IpTable& t) { t.add(peer); });
    node.update();

    auto exposure = node.expose(web.port());
    print(exposure);

    // Anyone who can reach the relay can now reach the service.
    const auto& pub = exposure.public_endpoint;
    httplib::Client client(pub.host_string(), pub.port);
    client.set_connection_timeout(5, 0);
    client.set_read_timeout(5, 0);
    auto res = client.Get("/hello");
    int rc = 1;
    if (res && res->status == 200) {
        std::cout << "GET http://" << pub.to_string() << "/hello -> " << res->body;
        rc = res->body == "hello through the relay\n" ? 0 : 1;
    } else {
        std::cerr << "fetch through the relay failed\n";
    }
    node.unexpose(web.port());
    web.stop();
    relay.stop();
    std::remove((dir + "/relay.json").c_str());
    std::remove((dir + "/home.json").c_str());
    std::remove((dir + "/home.json.lock").c_str());
    std::remove((dir + "/relay.json.lock").c_str());
    rmdir(dir.c_str());
    return rc;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        if (argc == 1) return whole_loop();
        if (argc == 3) {
            auto port = p2prc::parse_port(argv[2]);
            if (!port)
                throw p2prc::error(p2prc::errc::invalid_argument,
                                   "expected a port 1-65535, got " + std::string(argv[2]));
            return expose_until_interrupted(argv[1], *port);
        }
        std::cerr << "usage: " << argv[0] << " [TABLE PORT]\n";
        return 2;
    } catch (const p2prc::error& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    }
}
