// p2prc: the command-line program. Every subcommand is a thin layer over the library;
// read it as an example of the API.
//
//   p2prc [--config F] [config flags] COMMAND [ARGS] [--json]
#include <p2prc.hpp>

#include <netdb.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <ctime>
#include <cstdio>
#include <iostream>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

// How the table file is laid out (the table_pretty key).
p2prc::TableStyle table_style(const p2prc::Config& c) {
    return c.table_pretty ? p2prc::TableStyle::pretty : p2prc::TableStyle::lines;
}

struct UsageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct Command {
    const char* name;
    const char* args;
    const char* summary;
};

const Command commands[] = {
    {"serve", "", "run this node's server until interrupted"},
    {"table", "", "print the IP table, fastest first"},
    {"id", "", "print this node's identity (makes its key file at first use)"},
    {"add", "HOST:PORT [NAME]", "add a server to the table"},
    {"remove", "NAME|HOST:PORT", "remove servers from the table"},
    {"discover", "HOST:PORT...", "join the network through known servers, then probe and save"},
    {"update", "[--throughput]", "probe every server, prune the dead ones, save"},
    {"speedtest", "[HOST:PORT]", "measure throughput to one server, or to every server of the table"},
    {"info", "HOST:PORT", "print a server's /server_info"},
    {"status", "[HOST:PORT]",
     "print a node's status: identity, reachability, table, relays served, exposures (default: this node)"},
    {"relay", "[--port N] [--token T]", "run a standalone frps-compatible relay (port 7000 unless --port)"},
    {"expose", "PORT [--wire v1|v2] [--via HOST:PORT [--no-mux] [--tls] [--remote-port N]]",
     "expose 127.0.0.1:PORT through the nearest relay of the table (or the frps-compatible relay at HOST:PORT, stock frps too)"},
};

struct Cli {
    std::string command;
    std::vector<std::string> args;
    std::optional<std::string> config_path;
    std::vector<std::pair<std::string, std::string>> flags;  // config flags
    bool json = false;
    bool throughput = false;
    bool help = false;
    // expose
    std::optional<std::string> via;
    bool no_mux = false;
    bool tls = false;
    std::optional<std::string> remote_port;
    std::optional<std::string> wire;
};

void print_help(std::ostream& out, const std::string& command = "") {
    if (!command.empty()) {
        for (const auto& c : commands)
            if (command == c.name) {
                out << "usage: p2prc [options] " << c.name << " " << c.args << "\n\n" << c.summary << "\n";
                out << "\nOptions: see `p2prc --help`.\n";
                return;
            }
    }
    out << "usage: p2prc [options] COMMAND [ARGS]\n\ncommands:\n";
    for (const auto& c : commands) {
        std::string left = std::string(c.name) + " " + c.args;
        out << "  " << left << std::string(left.size() < 30 ? 30 - left.size() : 1, ' ') << c.summary << "\n";
    }
    out << "\noptions:\n"
           "  --config FILE                 configuration file (else $P2PRC_CONFIG, else defaults)\n"
           "  --json                        machine-readable output\n"
           "  --via HOST:PORT               expose: this frps-compatible relay, not one chosen from the table\n"
           "  --no-mux --tls                expose: tcp_mux off; TLS to the relay (with the 0x17 byte)\n"
           "  --remote-port N               expose: the public port to ask for (default: relay chooses)\n"
           "  --wire v1|v2                  expose: frp wire protocol towards the relay (default v1; v2 needs\n"
           "                                a p2prc relay or frps 0.69+)\n"
           "  --help                        this text; `p2prc COMMAND --help` for one command\n";
    for (const auto& f : p2prc::Config::flags()) {
        std::string left = f.flag + (f.metavar.empty() ? "" : " " + f.metavar);
        out << "  " << left << std::string(left.size() < 30 ? 30 - left.size() : 1, ' ') << f.help;
        if (!f.default_value.empty()) out << " (default: " << f.default_value << ")";
        out << "\n";
    }
}

Cli parse_args(int argc, char** argv) {
    Cli cli;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a.rfind("--", 0) != 0 || a == "--") {
            if (cli.command.empty()) cli.command = a;
            else cli.args.push_back(a);
            continue;
        }
        std::string name = a, value;
        bool has_value = false;
        if (auto eq = a.find('='); eq != std::string::npos) {
            name = a.substr(0, eq);
            value = a.substr(eq + 1);
            has_value = true;
        }
        auto take_value = [&]() -> std::string {
            if (has_value) return value;
            if (i + 1 >= argc) throw UsageError(name + " needs a value");
            return argv[++i];
        };
        if (name == "--help") {
            cli.help = true;
        } else if (name == "--json") {
            cli.json = true;
        } else if (name == "--throughput") {
            cli.throughput = true;
        } else if (name == "--via") {
            cli.via = take_value();
        } else if (name == "--no-mux") {
            cli.no_mux = true;
        } else if (name == "--tls") {
            cli.tls = true;
        } else if (name == "--remote-port") {
            cli.remote_port = take_value();
        } else if (name == "--wire") {
            cli.wire = take_value();
        } else if (name == "--config") {
            cli.config_path = take_value();
        } else if (const auto* f = p2prc::Config::find_flag(name)) {
            cli.flags.emplace_back(f->flag, f->boolean() ? (has_value ? value : "") : take_value());
        } else {
            throw UsageError("unknown option " + name + " (see p2prc --help)");
        }
    }
    return cli;
}

// HOST:PORT, where HOST is a numeric address or a name (resolved once, here).
p2prc::Endpoint endpoint_arg(const std::string& text) {
    if (auto e = p2prc::Endpoint::parse(text)) return *e;
    auto colon = text.rfind(':');
    if (colon == std::string::npos || colon == 0) throw UsageError("expected HOST:PORT, got \"" + text + "\"");
    std::string host = text.substr(0, colon);
    auto port = p2prc::parse_port(text.substr(colon + 1));
    if (!port) throw UsageError("invalid port in \"" + text + "\": expected HOST:PORT with a port 1-65535");
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    if (getaddrinfo(host.c_str(), nullptr, &hints, &res) != 0 || !res)
        throw UsageError("cannot resolve \"" + host + "\"");
    char buf[INET6_ADDRSTRLEN] = {};
    const void* addr = res->ai_family == AF_INET ? static_cast<const void*>(&reinterpret_cast<sockaddr_in*>(res->ai_addr)->sin_addr)
                                                  : static_cast<const void*>(&reinterpret_cast<sockaddr_in6*>(res->ai_addr)->sin6_addr);
    inet_ntop(res->ai_family, addr, buf, sizeof buf);
    freeaddrinfo(res);
    return {p2prc::IpAddress::from_string(buf), *port};
}

bool tty(FILE* f) { return isatty(fileno(f)) == 1; }

// Text from the network, made safe for a terminal: control bytes (escape sequences, line
// breaks that would fake table rows) become '?'.
std::string printable(const std::string& s) {
    std::string out = s;
    for (auto& c : out)
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
    return out;
}

std::string fixed(double v, int decimals) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
    return buf;
}

void print_table(const p2prc::IpTable& table, bool colour) {
    struct Row {
        std::string name, id, address, latency, down, up, nat;
        const char* colour;
    };
    std::vector<Row> rows;
    for (const auto& p : table.peers()) {
        Row r;
        r.name = p.name.empty() ? "-" : printable(p.name);
        r.id = p.identity.empty() ? "-" : p2prc::short_identity(p.identity);
        auto eps = p.endpoints();
        for (std::size_t i = 0; i < eps.size(); ++i) r.address += (i ? " " : "") + eps[i].to_string();
        r.latency = p.latency_ms ? fixed(*p.latency_ms, 2) + " ms" : "-";
        r.down = p.download_mbps ? fixed(*p.download_mbps, 1) : "-";
        r.up = p.upload_mbps ? fixed(*p.upload_mbps, 1) : "-";
        r.nat = p.nat ? (p.escape_implementation.empty() ? "yes" : "yes (" + printable(p.escape_implementation) + ")") : "no";
        r.colour = !p.latency_ms ? "\033[2m" : *p.latency_ms < 50 ? "\033[32m" : *p.latency_ms < 150 ? "\033[33m" : "\033[31m";
        rows.push_back(r);
    }
    Row head{"NAME", "IDENTITY", "ADDRESS", "LATENCY", "DOWN Mbit/s", "UP Mbit/s", "NAT", ""};
    std::size_t w[6] = {head.name.size(), head.address.size(), head.latency.size(),
                        head.down.size(), head.up.size(),      head.id.size()};
    for (const auto& r : rows) {
        w[5] = std::max(w[5], r.id.size());
        w[0] = std::max(w[0], r.name.size());
        w[1] = std::max(w[1], r.address.size());
        w[2] = std::max(w[2], r.latency.size());
        w[3] = std::max(w[3], r.down.size());
        w[4] = std::max(w[4], r.up.size());
    }
    auto line = [&](const Row& r, const char* c) {
        std::ostringstream o;
        auto pad = [](const std::string& s, std::size_t n, bool right) {
            std::string fill(n > s.size() ? n - s.size() : 0, ' ');
            return right ? fill + s : s + fill;
        };
        o << pad(r.name, w[0], false) << "  " << pad(r.id, w[5], false) << "  "
          << pad(r.address, w[1], false) << "  ";
        o << (c ? c : "") << pad(r.latency, w[2], true) << (c ? "\033[0m" : "") << "  ";
        o << pad(r.down, w[3], true) << "  " << pad(r.up, w[4], true) << "  " << r.nat;
        std::cout << o.str() << "\n";
    };
    line(head, nullptr);
    for (const auto& r : rows) line(r, colour ? r.colour : nullptr);
    if (rows.empty()) std::cout << "(no servers)\n";
}

// Progress of a probe round, on stderr. On a terminal: a bar redrawn in place from the
// start, its elapsed time kept moving by a ticker thread (throughput probes run for
// seconds between two completions). Otherwise: a plain line per tenth of the work at
// most, so a log of a round over thousands of servers stays short. With --json: nothing.
class Progress {
  public:
    enum class Style { none, plain, bar };

    // `expected`: how many servers the round will probe, when known before it starts
    // (update); discovery learns it on the way, showing `before` until then.
    Progress(Style style, std::string label, std::optional<std::size_t> expected = std::nullopt,
             std::string before = "")
        : style_(style),
          label_(std::move(label)),
          before_(std::move(before)),
          start_(std::chrono::steady_clock::now()) {
        if (expected) total_ = *expected;
        if (style_ == Style::bar && (!expected || *expected > 0)) {
            drawing_ = true;
            known_ = expected.has_value();
            ticker_ = std::thread([this] { tick(); });
        }
    }
    ~Progress() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stopping_ = true;
            // An interrupted or empty round still ends its line.
            if (drawing_ && !finished_) std::fputc('\n', stderr);
        }
        wake_.notify_all();
        if (ticker_.joinable()) ticker_.join();
    }
    Progress(const Progress&) = delete;
    Progress& operator=(const Progress&) = delete;

    // The callback for update and discover (called after each server); empty when disabled.
    std::function<void(std::size_t, std::size_t)> callback() {
        if (style_ == Style::none) return {};
        return [this](std::size_t done, std::size_t total) { report(done, total); };
    }

  private:
    void report(std::size_t done, std::size_t total) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (finished_) return;
        done_ = done;
        total_ = total;
        known_ = true;
        if (style_ == Style::bar) {
            draw();
        } else {
            const std::size_t tenth = total ? done * 10 / total : 10;
            if (tenth == last_tenth_ && done < total) return;
            last_tenth_ = tenth;
            std::fprintf(stderr, "  %s %zu/%zu (%.1f s)\n", label_.c_str(), done, total, elapsed());
        }
        if (done >= total) finished_ = true;
    }

    void tick() {
        std::unique_lock<std::mutex> lock(mutex_);
        while (!stopping_ && !finished_) {
            draw();
            wake_.wait_for(lock, std::chrono::milliseconds(100));
        }
    }

    // With mutex_ held.
    void draw() {
        const std::size_t width = 30;
        if (!known_) {
            std::fprintf(stderr, "\r  %s  %.1f s ", (before_.empty() ? label_ : before_).c_str(),
                         elapsed());
        } else {
            const std::size_t filled = total_ ? width * std::min(done_, total_) / total_ : width;
            std::fprintf(stderr, "\r  %s [%s%s] %zu/%zu  %.1f s ", label_.c_str(),
                         std::string(filled, '#').c_str(), std::string(width - filled, '.').c_str(),
                         done_, total_, elapsed());
            if (done_ >= total_) std::fputc('\n', stderr);
        }
        std::fflush(stderr);
    }

    double elapsed() const {
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    }

    const Style style_;
    const std::string label_, before_;
    const std::chrono::steady_clock::time_point start_;
    std::mutex mutex_;
    std::condition_variable wake_;
    std::thread ticker_;
    std::size_t done_ = 0, total_ = 0, last_tenth_ = ~std::size_t(0);
    bool known_ = false, drawing_ = false, finished_ = false, stopping_ = false;
};

Progress::Style progress_style(const Cli& cli) {
    if (cli.json) return Progress::Style::none;
    return tty(stderr) ? Progress::Style::bar : Progress::Style::plain;
}

nlohmann::json refresh_json(const p2prc::RefreshReport& r) {
    nlohmann::json kept = nlohmann::json::array(), pruned = nlohmann::json::array();
    for (const auto& e : r.kept)
        kept.push_back({{"endpoint", e.latency.endpoint.to_string()}, {"name", e.peer.name},
                        {"latency_ms", e.latency.reachable ? nlohmann::json(e.latency.min_ms) : nlohmann::json()}});
    for (const auto& e : r.pruned)
        pruned.push_back({{"endpoint", e.latency.endpoint.to_string()}, {"name", e.peer.name}, {"reason", e.latency.reason}});
    return {{"kept", kept}, {"pruned", pruned}, {"seconds", r.seconds}};
}

void print_refresh(const p2prc::RefreshReport& r) {
    std::cout << "probed " << r.kept.size() + r.pruned.size() << " servers in " << fixed(r.seconds, 2) << " s: "
              << r.kept.size() << " kept, " << r.pruned.size() << " pruned\n";
    for (const auto& e : r.pruned)
        std::cout << "  pruned " << printable(e.peer.label()) << " (" << e.latency.endpoint.to_string()
                  << "): " << printable(e.latency.reason) << "\n";
}

// Blocks SIGINT and SIGTERM before any thread starts, so only wait_for_signal sees them.
void block_signals() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

int wait_for_signal() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    int sig = 0;
    sigwait(&set, &sig);
    return sig;
}

nlohmann::json exposure_json(const p2prc::Exposure& e) {
    return {{"public_endpoint", e.public_endpoint.to_string()}, {"relay", e.relay.to_string()},
            {"relay_name", e.relay_name}, {"relay_latency_ms", e.relay_latency_ms}, {"local", e.local.to_string()}};
}

std::string human_bytes(double n) {
    const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int i = 0;
    while (n >= 1024 && i < 4) {
        n /= 1024;
        ++i;
    }
    char buf[32];
    std::snprintf(buf, sizeof buf, i ? "%.1f %s" : "%.0f %s", n, units[i]);
    return buf;
}

std::string opt_figure(const nlohmann::json& v, const char* unit) {
    if (!v.is_number()) return "-";
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f %s", v.get<double>(), unit);
    return buf;
}

// p2prc status [HOST:PORT]: GET /status.json of a node (this one by default) and print it.
int status_command(const Cli& cli, const p2prc::Config& config) {
    p2prc::Endpoint at =
        cli.args.empty() ? p2prc::Endpoint{p2prc::IpAddress::from_string("127.0.0.1"), config.port}
                         : endpoint_arg(cli.args[0]);
    if (cli.args.empty()) {
        auto bind = p2prc::IpAddress::parse(config.bind);
        if (bind && bind->scope() != p2prc::Scope::unspecified)
            at.address = *bind;
        else if (bind && bind->is_v6())
            at.address = p2prc::IpAddress::from_string("::1");
    }
    httplib::Headers h;
    if (!config.token.empty()) h.emplace(p2prc::token_header, config.token);
    auto call = p2prc::detail::http_call(at, "GET", "/status.json", h, "", std::chrono::seconds(10),
                                         8u << 20);
    if (!call.answered) {
        std::cerr << "p2prc: error: no answer from " << at.to_string() << ": " << call.reason
                  << "\n";
        return 1;
    }
    if (call.status != 200) {
        std::cerr << "p2prc: error: " << at.to_string() << " answered HTTP " << call.status << ": "
                  << p2prc::detail::answer_error(call)
                  << (call.status == 401 ? " (check --token)" : "") << "\n";
        return 1;
    }
    auto s = nlohmann::json::parse(call.body, nullptr, false);
    if (!s.is_object() || !s.contains("node") || !s.contains("table") || !s["table"].is_array()) {
        std::cerr << "p2prc: error: " << at.to_string()
                  << " answered /status.json with something else than a node's status\n";
        return 1;
    }
    if (cli.json) {
        std::cout << s.dump() << "\n";
        return 0;
    }
    try {
        const auto& n = s["node"];
        const auto& r = s["reachability"];
        std::cout << "node        " << n.value("name", "") << " (instance "
                  << n.value("instance", "") << ", p2prc " << n.value("version", "") << ", up "
                  << n.value("uptime_s", 0) << " s)\n";
        std::string via = r.value("via", "");
        std::cout << "reachable   "
                  << (via == "relay" ? "through relay " + r.value("relay_name", "") + " " +
                                           r.value("relay", "")
                      : via == "direct" ? std::string("directly")
                                        : std::string("not reachable"));
        if (r.contains("endpoint")) std::cout << " at " << r["endpoint"].get<std::string>();
        std::cout << (r.value("behind_nat", false) ? " (behind NAT)" : "") << "\n";
        std::cout << "table       " << s["table"].size() << " server"
                  << (s["table"].size() == 1 ? "" : "s") << "\n";
        for (const auto& p : s["table"]) {
            std::string nat = p.value("nat", false)
                                  ? (p.value("escape", "") == "FRP" ? "via relay" : "behind NAT")
                                  : "open";
            std::printf("  %-20s %-28s %-10s %12s %14s %14s\n", p.value("name", "").c_str(),
                        p.value("endpoint", "").c_str(), nat.c_str(),
                        opt_figure(p["latency_ms"], "ms").c_str(),
                        opt_figure(p["download_mbps"], "Mbit/s").c_str(),
                        opt_figure(p["upload_mbps"], "Mbit/s").c_str());
        }
        std::fflush(stdout);
        if (!s["access"].value("full", false)) {
            std::cout << "relays and exposures: not shown without the network token (--token)\n";
            return 0;
        }
        const auto& rl = s["relays"];
        std::cout << "relays      " << rl.value("live", 0) << " of " << rl.value("cap", 0)
                  << " served";
        if (rl.contains("connections_total"))
            std::cout << ", " << rl.value("connections_total", 0) << " connections, "
                      << human_bytes(rl.value("bytes_in", 0.0)) << " to services, "
                      << human_bytes(rl.value("bytes_out", 0.0)) << " to users";
        std::cout << "\n";
        for (const auto& x : rl["list"]) {
            std::string ports;
            for (const auto& p : x["public_ports"])
                ports += (ports.empty() ? "" : ",") + std::to_string(p.get<int>());
            std::cout << "  port " << x.value("port", 0) << ": " << x.value("clients", 0)
                      << " client(s), public " << (ports.empty() ? "-" : ports) << ", "
                      << x.value("connections", 0) << " connection(s) now, "
                      << x.value("connections_total", 0) << " in all, "
                      << human_bytes(x.value("bytes_in", 0.0)) << " in, "
                      << human_bytes(x.value("bytes_out", 0.0)) << " out\n";
        }
        std::cout << "exposures   " << s["exposures"].size() << "\n";
        for (const auto& x : s["exposures"]) {
            if (!x.value("up", false)) {
                std::cout << "  port " << x.value("local_port", 0) << ": coming up\n";
                continue;
            }
            std::cout << "  " << x.value("local", "") << " -> " << x.value("public", "") << " via "
                      << x.value("relay_name", "") << " " << x.value("relay", "") << " ("
                      << opt_figure(x["relay_latency_ms"], "ms") << ", " << x.value("changes", 0)
                      << " change(s))\n";
        }
    } catch (const nlohmann::json::exception& e) {
        std::cerr << "p2prc: error: " << at.to_string()
                  << " answered a status this program cannot read: " << e.what() << "\n";
        return 1;
    }
    return 0;
}

int run(const Cli& cli) {
    if (cli.command.empty() && !cli.help) {
        print_help(std::cerr);  // asked for nothing: the usage, as an error
        return 2;
    }
    if (cli.help || cli.command == "help") {
        print_help(std::cout, cli.command == "help" ? "" : cli.command);
        return 0;
    }
    p2prc::Config config = p2prc::Config::from_sources(cli.config_path, p2prc::process_environment);
    config.apply_flags(cli.flags);
    for (const auto& w : config.warnings) std::cerr << "p2prc: warning: " << w << "\n";
    const auto& cmd = cli.command;
    auto want_args = [&](std::size_t lo, std::size_t hi) {
        if (cli.args.size() < lo || cli.args.size() > hi) {
            std::ostringstream o;
            for (const auto& c : commands)
                if (cmd == c.name) o << "usage: p2prc " << c.name << " " << c.args;
            throw UsageError(o.str());
        }
    };

    if (cmd == "serve") {
        want_args(0, 0);
        block_signals();
        p2prc::Node node(config);
        node.start();
        auto self = node.self_entry();
        if (cli.json) {
            std::cout << nlohmann::json{{"name", config.name}, {"port", node.port()}, {"self", p2prc::peer_to_json(self)}}.dump()
                      << std::endl;
        } else {
            std::cout << "p2prc " << p2prc::version << ": node \"" << config.name << "\" serving on " << config.bind << ":"
                      << node.port() << " (table " << config.iptable << ")" << std::endl;
        }
        // Reachability: with behind_nat auto, a peer is asked to dial back; a node it cannot
        // reach is exposed through the nearest relay (and advertises the relay's endpoint).
        // Undecided (no peer answered yet): asked again every 30 s. This runs on its own
        // thread: a signal then stops the node at once, which ends a check or an exposure
        // waiting on a slow peer, instead of waiting for it.
        std::mutex quit_mu;
        std::condition_variable quit_cv;
        bool quit = false;
        std::thread checker([&] {
            bool settled = config.behind_nat == p2prc::BehindNat::no;
            std::optional<p2prc::Endpoint> announced;
            for (;;) {
                try {
                    if (!settled) {
                        auto r = node.check_reachability();
                        settled = r.decided && (r.reachable || r.exposure);
                        auto now = node.self_exposure();
                        if (now && (!announced || *announced != now->public_endpoint)) {
                            announced = now->public_endpoint;
                            if (cli.json) std::cout << nlohmann::json{{"relayed", exposure_json(*now)}}.dump() << std::endl;
                            else std::cout << "not reachable directly: advertised through relay " << now->relay.to_string()
                                           << " at " << now->public_endpoint.to_string() << std::endl;
                        } else if (r.decided && r.reachable && !cli.json) {
                            std::cout << "reachable directly (checked by " << r.asked.back().peer.to_string() << ")"
                                      << std::endl;
                        } else if (!node.running()) {
                            break;
                        } else if (!r.decided) {
                            std::cerr << "p2prc: reachability undecided: " << printable(r.reason)
                                      << " (trying again in 30 s)" << std::endl;
                        } else if (!r.reachable && !r.exposure) {
                            std::cerr << "p2prc: not reachable directly, and no relay could carry this node: "
                                      << printable(r.reason) << " (trying again in 30 s)" << std::endl;
                        }
                    } else if (auto now = node.self_exposure(); now && announced && *announced != now->public_endpoint) {
                        announced = now->public_endpoint;  // failover or move: tell the user
                        if (cli.json) std::cout << nlohmann::json{{"relayed", exposure_json(*now)}}.dump() << std::endl;
                        else std::cout << "now advertised through relay " << now->relay.to_string() << " at "
                                       << now->public_endpoint.to_string() << std::endl;
                    }
                } catch (const std::exception& e) {
                    if (!node.running()) break;
                    std::cerr << "p2prc: reachability check failed: " << printable(e.what()) << " (trying again in 30 s)"
                              << std::endl;
                    settled = false;
                }
                std::unique_lock<std::mutex> lock(quit_mu);
                if (quit_cv.wait_for(lock, settled ? std::chrono::seconds(1) : std::chrono::seconds(30),
                                     [&] { return quit; }))
                    break;
            }
        });
        wait_for_signal();
        {
            std::lock_guard<std::mutex> lock(quit_mu);
            quit = true;
        }
        quit_cv.notify_all();
        node.stop();
        checker.join();
        return 0;
    }
    if (cmd == "table") {
        want_args(0, 0);
        auto t = p2prc::IpTable::load(config.iptable, config.peer_table_limits());
        t.dedupe();
        t.sort_by_latency();
        if (cli.json) std::cout << t.dump(config.table_format, -1);
        else print_table(t, tty(stdout));
        return 0;
    }
    if (cmd == "id") {
        want_args(0, 0);
        const std::string path = config.identity_key_path();
        auto id = p2prc::Identity::load_or_create(path);
        if (cli.json)
            std::cout << nlohmann::json{{"identity", id.id()},
                                        {"short", id.short_id()},
                                        {"key_file", path}}
                             .dump()
                      << "\n";
        else
            std::cout << id.id() << "\n";
        return 0;
    }
    if (cmd == "add") {
        want_args(1, 2);
        auto e = endpoint_arg(cli.args[0]);
        p2prc::Peer p;
        (e.address.is_v4() ? p.ipv4 : p.ipv6) = e.address;
        p.server_port = e.port;
        if (cli.args.size() > 1) p.name = cli.args[1];
        bool added = false;
        p2prc::IpTable::update(
            config.iptable, [&](p2prc::IpTable& t) { added = t.add(p); }, config.table_format,
            std::chrono::seconds(30), {}, table_style(config));
        if (cli.json) std::cout << nlohmann::json{{"endpoint", e.to_string()}, {"added", added}}.dump() << "\n";
        else std::cout << (added ? "added " : "updated ") << e.to_string() << "\n";
        return 0;
    }
    if (cmd == "remove") {
        want_args(1, 1);
        std::size_t n = 0;
        p2prc::IpTable::update(
            config.iptable, [&](p2prc::IpTable& t) { n = t.remove(cli.args[0]); },
            config.table_format, std::chrono::seconds(30), {}, table_style(config));
        if (cli.json) std::cout << nlohmann::json{{"removed", n}}.dump() << "\n";
        else std::cout << "removed " << n << " server" << (n == 1 ? "" : "s") << "\n";
        if (n == 0) {
            std::cerr << "p2prc: error: no server named or at \"" << cli.args[0] << "\"\n";
            return 1;
        }
        return 0;
    }
    if (cmd == "discover") {
        if (cli.args.empty()) want_args(1, 1000);
        std::vector<p2prc::Endpoint> boot;
        for (const auto& a : cli.args) boot.push_back(endpoint_arg(a));
        p2prc::Node node(config);
        Progress progress(progress_style(cli), "probing", std::nullopt, "discovering");
        auto report = node.discover(boot, progress.callback());
        if (cli.json) {
            nlohmann::json failed = nlohmann::json::array();
            for (const auto& [e, why] : report.failed) failed.push_back({{"endpoint", e.to_string()}, {"reason", why}});
            nlohmann::json contacted = nlohmann::json::array();
            for (const auto& e : report.contacted) contacted.push_back(e.to_string());
            std::cout << nlohmann::json{{"contacted", contacted}, {"failed", failed}, {"hops", report.hops},
                                        {"budget_exhausted", report.budget_exhausted},
                                        {"refresh", refresh_json(report.refresh)}}
                             .dump()
                      << "\n";
        } else {
            std::cout << "contacted " << report.contacted.size() << " servers in " << report.hops << " rounds\n";
            for (const auto& [e, why] : report.failed)
                std::cout << "  no answer from " << e.to_string() << ": " << printable(why) << "\n";
            print_refresh(report.refresh);
            auto t = node.table();
            t.sort_by_latency();
            print_table(t, tty(stdout));
        }
        return report.contacted.empty() ? 1 : 0;
    }
    if (cmd == "update") {
        want_args(0, 0);
        p2prc::Node node(config);
        auto expected = node.table();
        expected.remove_self(node.own_endpoints());
        Progress progress(progress_style(cli), cli.throughput ? "measuring" : "probing", expected.size());
        auto report = node.update(progress.callback(), cli.throughput);
        if (cli.json) std::cout << refresh_json(report).dump() << "\n";
        else print_refresh(report);
        return 0;
    }
    if (cmd == "speedtest") {
        want_args(0, 1);
        std::vector<p2prc::Endpoint> targets;
        if (!cli.args.empty()) {
            targets.push_back(endpoint_arg(cli.args[0]));
        } else {
            for (const auto& p : p2prc::IpTable::load(config.iptable, config.peer_table_limits()).peers())
                if (auto e = p.endpoint()) targets.push_back(*e);
        }
        nlohmann::json out = nlohmann::json::array();
        int failures = 0;
        // One at a time: parallel speed tests would share (and so misjudge) the link.
        for (const auto& e : targets) {
            auto r = p2prc::probe_throughput(e);
            if (!r.ok) ++failures;
            if (r.ok && cli.args.empty()) {
                p2prc::IpTable::update(
                    config.iptable,
                    [&](p2prc::IpTable& t) {
                        if (auto* p = t.find(e.to_string())) {
                            p->download_mbps = r.download_mbps;
                            p->upload_mbps = r.upload_mbps;
                        }
                    },
                    config.table_format, std::chrono::seconds(30), {}, table_style(config));
            }
            if (cli.json) {
                out.push_back({{"endpoint", e.to_string()}, {"ok", r.ok}, {"download_mbps", r.download_mbps ? nlohmann::json(*r.download_mbps) : nlohmann::json()},
                               {"upload_mbps", r.upload_mbps ? nlohmann::json(*r.upload_mbps) : nlohmann::json()}, {"reason", r.reason}});
            } else if (r.ok) {
                std::cout << e.to_string() << ": download " << fixed(r.download_mbps.value_or(0), 1) << " Mbit/s, upload "
                          << fixed(r.upload_mbps.value_or(0), 1) << " Mbit/s\n";
            } else {
                std::cout << e.to_string() << ": failed: " << r.reason << "\n";
            }
        }
        if (cli.json) std::cout << out.dump() << "\n";
        return failures ? 1 : 0;
    }
    if (cmd == "info") {
        want_args(1, 1);
        auto e = endpoint_arg(cli.args[0]);
        httplib::Client c(e.host_string(), e.port);
        p2prc::detail::set_client_timeouts(c, std::chrono::seconds(3), std::chrono::seconds(5));
        // Bounded in size and time: the other side may be anybody.
        std::string body;
        bool too_large = false;
        auto res = p2prc::detail::with_deadline(c, std::chrono::steady_clock::now() + std::chrono::seconds(15), [&] {
            return c.Get(
                "/server_info", {{"Host", e.to_string()}},
                [&](const httplib::Response&) { return true; },
                [&](const char* data, std::size_t n) {
                    too_large = body.size() + n > (1u << 20);
                    if (!too_large) body.append(data, n);
                    return !too_large;
                });
        });
        if (too_large) {
            std::cerr << "p2prc: error: " << e.to_string() << " answered more than 1 MiB\n";
            return 1;
        }
        if (!res) {
            std::cerr << "p2prc: error: no answer from " << e.to_string() << ": " << httplib::to_string(res.error()) << "\n";
            return 1;
        }
        if (res->status != 200) {
            std::cerr << "p2prc: error: " << e.to_string() << " answered HTTP " << res->status << "\n";
            return 1;
        }
        auto j = p2prc::detail::parse_json_small(body, 1u << 20, 16);
        if (j.is_discarded()) {
            std::cerr << "p2prc: error: " << e.to_string() << " answered something that is not JSON\n";
            return 1;
        }
        // The identity first: the name to copy when this server is to be trusted as a relay.
        if (!cli.json && j.is_object() && j.contains("Identity") && j["Identity"].is_string())
            std::cout << "identity: " << printable(j["Identity"].get<std::string>()) << "\n";
        std::cout << (cli.json ? j.dump() : j.dump(2)) << "\n";
        return 0;
    }
    if (cmd == "status") {
        want_args(0, 1);
        return status_command(cli, config);
    }
    if (cmd == "relay") {
        want_args(0, 0);
        block_signals();
        p2prc::frp::ServerOptions opt;
        bool port_given = false;
        for (const auto& f : cli.flags) port_given = port_given || f.first == "--port";
        opt.bind = {p2prc::IpAddress::from_string(config.bind), port_given ? config.port : std::uint16_t(7000)};
        opt.token = config.token;
        // Clients open public ports only where relay.allow_ports says (unprivileged ones
        // by default), as on the relays a node hands out.
        opt.allow_ports = p2prc::parse_port_ranges(config.relay.allow_ports);
        p2prc::frp::Server relay(opt);
        if (cli.json) std::cout << nlohmann::json{{"port", relay.port()}}.dump() << std::endl;
        else std::cout << "p2prc relay listening on " << config.bind << ":" << relay.port() << std::endl;
        wait_for_signal();
        return 0;
    }
    if (cmd == "expose") {
        want_args(1, 1);
        auto local_port = p2prc::parse_port(cli.args[0]);
        if (!local_port) throw UsageError("invalid port \"" + cli.args[0] + "\": expected 1-65535");
        auto wire = p2prc::frp::WireProtocol::v1;
        if (cli.wire) {
            if (*cli.wire != "v1" && *cli.wire != "v2")
                throw UsageError("invalid --wire \"" + *cli.wire + "\": expected v1 or v2");
            wire = p2prc::frp::parse_wire_protocol(*cli.wire);
        }
        if (!cli.via) {
            if (cli.tls || cli.no_mux || cli.remote_port)
                throw UsageError("--tls, --no-mux and --remote-port go with --via (a p2prc relay gives its own port)");
            block_signals();
            p2prc::Node node(config);
            std::mutex out_mu;
            auto print = [&](const p2prc::Exposure& e) {
                std::lock_guard<std::mutex> lock(out_mu);
                if (cli.json) std::cout << exposure_json(e).dump() << std::endl;
                else std::cout << e.local.to_string() << " is reachable at " << e.public_endpoint.to_string()
                               << " via relay " << e.relay.to_string() << " (" << fixed(e.relay_latency_ms, 1) << " ms)"
                               << std::endl;
            };
            p2prc::ExposeOptions eo;
            eo.reevaluate_interval = std::chrono::seconds(60);
            eo.wire_protocol = wire;
            eo.on_change = print;  // failovers and moves, on the tunnel's thread
            // Signals are awaited on their own thread from the start: one that comes while
            // the relays are still tried stops the node, which ends the attempt at once.
            std::atomic<bool> done{false}, by_signal{false};
            std::thread waiter([&] {
                wait_for_signal();
                if (done) return;  // woken below: expose failed
                by_signal = true;
                node.stop();
            });
            try {
                print(node.expose(*local_port, eo));
            } catch (...) {
                done = true;
                pthread_kill(waiter.native_handle(), SIGTERM);
                waiter.join();
                if (by_signal) return 0;
                throw;
            }
            waiter.join();  // until a signal; node.stop() closes the tunnel
            return 0;
        }
        block_signals();
        p2prc::frp::ClientOptions opt;
        opt.server = endpoint_arg(*cli.via);
        opt.token = config.token;
        opt.tcp_mux = !cli.no_mux;
        opt.tls = cli.tls;
        opt.wire_protocol = wire;
        p2prc::frp::ProxySpec proxy;
        proxy.name = config.name + "-" + cli.args[0];
        proxy.local = {p2prc::IpAddress::from_string("127.0.0.1"), *local_port};
        if (cli.remote_port) {
            auto rp = p2prc::parse_port(*cli.remote_port);
            if (!rp) throw UsageError("invalid --remote-port \"" + *cli.remote_port + "\": expected 1-65535");
            proxy.remote_port = *rp;
        }
        opt.proxies.push_back(proxy);
        p2prc::frp::Client client(opt);
        auto st = client.wait_running(proxy.name, std::chrono::seconds(30));
        if (st.state != p2prc::frp::ProxyState::running) {
            std::string why = !st.error.empty() ? st.error : !client.last_error().empty() ? client.last_error()
                                                                                         : "no answer from the relay within 30 s";
            std::cerr << "p2prc: error: not exposed: " << printable(why) << "\n";
            return 1;
        }
        if (cli.json) std::cout << nlohmann::json{{"public_endpoint", st.public_endpoint.to_string()}}.dump() << std::endl;
        else std::cout << "127.0.0.1:" << *local_port << " is reachable at " << st.public_endpoint.to_string() << std::endl;
        // The client reconnects and re-registers by itself; hold until interrupted.
        wait_for_signal();
        client.stop();
        return 0;
    }
    throw UsageError("unknown command \"" + cmd + "\" (see p2prc --help)");
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return run(parse_args(argc, argv));
    } catch (const UsageError& e) {
        std::cerr << "p2prc: " << e.what() << "\n";
        return 2;
    } catch (const std::exception& e) {
        std::cerr << "p2prc: error: " << e.what() << "\n";
        return 1;
    }
}
