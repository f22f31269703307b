// relay: the two frp roles in a few lines.
//
//   relay serve PORT [TOKEN]                 an frps-compatible relay on PORT
//   relay expose LOCALPORT HOST:PORT [TOKEN] expose 127.0.0.1:LOCALPORT through the relay
//                                            at HOST:PORT (stock frps works too) and print
//                                            the public endpoint
//
// Both run until interrupted (Ctrl-C).
#include <p2prc.hpp>

#include <csignal>
#include <iostream>
#include <pthread.h>
#include <string>

namespace {

int usage() {
    std::cerr << "usage: relay serve PORT [TOKEN]\n"
                 "       relay expose LOCALPORT HOST:PORT [TOKEN]\n";
    return 2;
}

std::uint16_t parse_port(const std::string& s) {
    auto e = p2prc::Endpoint::parse("127.0.0.1:" + s);
    if (!e && s != "0")
        throw p2prc::error(p2prc::errc::invalid_argument,
                           "invalid port \"" + s + "\": expected 1-65535");
    return e ? e->port : 0;
}

// Blocks SIGINT/SIGTERM in every thread started after this call, so that the main thread
// can wait for them with sigwait().
sigset_t block_signals() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
    return set;
}

void wait_for_signal(const sigset_t& set) {
    int sig = 0;
    sigwait(&set, &sig);
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) return usage();
    std::string cmd = argv[1];
    try {
        sigset_t signals = block_signals();
        if (cmd == "serve" && (argc == 3 || argc == 4)) {
            p2prc::frp::ServerOptions opt;
            opt.bind = p2prc::Endpoint{p2prc::IpAddress::from_string("0.0.0.0"),
                                       parse_port(argv[2])};
            if (argc == 4) opt.token = argv[3];
            p2prc::frp::Server server(opt);
            std::cout << "relay listening on port " << server.port() << std::endl;
            wait_for_signal(signals);
            return 0;
        }
        if (cmd == "expose" && (argc == 4 || argc == 5)) {
            p2prc::frp::ClientOptions opt;
            opt.server = p2prc::Endpoint::from_string(argv[3]);
            if (argc == 5) opt.token = argv[4];
            p2prc::frp::ProxySpec proxy;
            proxy.name = "relay-example-" + std::string(argv[2]);
            proxy.local = p2prc::Endpoint{p2prc::IpAddress::from_string("127.0.0.1"),
                                          parse_port(argv[2])};
            opt.proxies.push_back(proxy);
            // Status lines are few (one per change), but bounded all the same.
            auto printed = std::make_shared<int>(0);
            opt.on_status = [printed](const p2prc::frp::ProxyStatus& s) {
                if (++*printed > 1000) return;
                if (s.state == p2prc::frp::ProxyState::running)
                    std::cout << "public endpoint: " << s.public_endpoint.to_string()
                              << std::endl;
                else
                    std::cout << "proxy " << p2prc::frp::to_string(s.state)
                              << (s.error.empty() ? "" : ": " + s.error) << std::endl;
            };
            p2prc::frp::Client client(opt);
            auto st = client.wait_running(proxy.name, p2prc::detail::Millis(30000));
            if (st.state != p2prc::frp::ProxyState::running) {
                std::cerr << "relay: not exposed: "
                          << (st.error.empty() ? client.last_error() : st.error) << "\n";
                return 1;
            }
            wait_for_signal(signals);
            return 0;
        }
        return usage();
    } catch (const p2prc::error& e) {
        std::cerr << "relay: " << e.what() << "\n";
        return 1;
    }
}
