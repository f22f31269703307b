// Small real networks for end-to-end tests, built from Linux network namespaces.
//
// A NetnsLab creates namespaces named "p2prce2e-<pid>-<lab>-<role>" (the pid keeps parallel
// runs apart; leftovers of runs whose pid is gone are removed when a lab starts), links
// them with veth pairs and bridges that live inside those namespaces, and removes every
// namespace (and so every link, address, route, qdisc and nft table in it) when destroyed,
// also when a test fails or throws. It never touches the namespace the tests run in: every
// command runs as `ip -n NS ...` or `ip netns exec NS ...`, and in-process sockets are
// created by a thread that entered the namespace with setns(CLONE_NEWNET).
//
// Internet builds the topology of the end-to-end tests on top of a lab:
//
//   public A 10.199.0.11 -+
//   public B 10.199.0.12 -+- bridge br0 -- 10.199.0.1 [NAT gateway] 10.199.1.1 -- 10.199.1.2
//   client   10.199.0.21 -+   (own ns)      masquerade out, new inbound dropped     NAT'd host
//
// All addresses are private (10.199.0.0/16) and exist only inside the lab's namespaces.
#pragma once

#include "support/skip.hpp"

#include "support/process.hpp"

#include <doctest/doctest.h>
#include <httplib.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace p2prc_test {

// The full path of an executable found in PATH or in the sbin folders (which a non-root
// PATH often lacks); "" when there is none.
inline std::string find_executable(const std::string& name) {
    std::string path = std::getenv("PATH") ? std::getenv("PATH") : "";
    path += ":/usr/sbin:/sbin:/usr/bin:/bin";
    std::stringstream ss(path);
    std::string dir;
    while (std::getline(ss, dir, ':')) {
        if (dir.empty()) continue;
        std::string full = dir + "/" + name;
        if (::access(full.c_str(), X_OK) == 0) return full;
    }
    return "";
}

// What a TCP connection attempt came to.
enum class ConnectOutcome { connected, refused, timed_out, unreachable, failed };

inline const char* to_string(ConnectOutcome o) {
    switch (o) {
        case ConnectOutcome::connected:
            return "connected";
        case ConnectOutcome::refused:
            return "refused";
        case ConnectOutcome::timed_out:
            return "timed out";
        case ConnectOutcome::unreachable:
            return "unreachable";
        case ConnectOutcome::failed:
            return "failed";
    }
    return "?";
}

// One IPv4 TCP connect with a deadline, in the namespace of the calling thread.
inline ConnectOutcome tcp_connect_outcome(const std::string& ipv4, std::uint16_t port,
                                          std::chrono::milliseconds timeout) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    if (inet_pton(AF_INET, ipv4.c_str(), &a.sin_addr) != 1)
        throw std::invalid_argument("tcp_connect_outcome: not an IPv4 address: " + ipv4);
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return ConnectOutcome::failed;
    auto classify = [](int err) {
        switch (err) {
            case 0:
                return ConnectOutcome::connected;
            case ECONNREFUSED:
                return ConnectOutcome::refused;
            case ETIMEDOUT:
                return ConnectOutcome::timed_out;
            case ENETUNREACH:
            case EHOSTUNREACH:
                return ConnectOutcome::unreachable;
            default:
                return ConnectOutcome::failed;
        }
    };
    ConnectOutcome out;
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
        out = ConnectOutcome::connected;
    } else if (errno != EINPROGRESS) {
        out = classify(errno);
    } else {
        pollfd p{fd, POLLOUT, 0};
        int r = ::poll(&p, 1, static_cast<int>(timeout.count()));
        if (r == 0) {
            out = ConnectOutcome::timed_out;
        } else if (r < 0) {
            out = ConnectOutcome::failed;
        } else {
            int err = 0;
            socklen_t len = sizeof err;
            ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
            out = classify(err);
        }
    }
    ::close(fd);
    return out;
}

class NetnsLab {
  public:
    static constexpr const char* prefix = "p2prce2e-";

    // Why namespaces cannot be used here, or "" when they can: needs root, `ip netns`,
    // veth, a bridge, nftables with NAT, and tc's tbf. Tries each once in a scratch
    // namespace of its own (removed again).
    static std::string unavailable_reason(const std::string& scratch_dir) {
        if (::geteuid() != 0) return "not running as root (network namespaces need CAP_SYS_ADMIN)";
        for (const char* tool : {"ip", "nft", "tc"})
            if (find_executable(tool).empty())
                return std::string("`") + tool + "` is not installed";
        std::string why;
        try {
            NetnsLab lab(scratch_dir);
            auto ns = lab.add_namespace("probe");
            lab.ip(ns, {"link", "add", "v0", "type", "veth", "peer", "name", "v1"});
            lab.ip(ns, {"link", "add", "b0", "type", "bridge"});
            lab.exec(ns, {lab.tc_, "qdisc", "add", "dev", "v0", "root", "tbf", "rate", "50mbit",
                          "burst", "64kb", "limit", "256kb"});
            lab.nft(ns,
                    "table ip p2prc_probe {\n"
                    "  chain postrouting_chain {\n"
                    "    type nat hook postrouting priority srcnat; policy accept;\n"
                    "    oifname \"v0\" masquerade\n"
                    "  }\n"
                    "}\n");
        } catch (const std::exception& e) {
            why = e.what();
        }
        return why;
    }

    explicit NetnsLab(std::string scratch_dir)
        : scratch_(std::move(scratch_dir)),
          ip_(find_executable("ip")),
          nft_(find_executable("nft")),
          tc_(find_executable("tc")) {
        if (ip_.empty()) throw std::runtime_error("`ip` (iproute2) is not installed");
        // Unique within the process too: the scratch folder's random suffix (mkdtemp).
        std::string tail = scratch_.substr(scratch_.find_last_of('/') + 1);
        if (tail.size() > 6) tail = tail.substr(tail.size() - 6);
        name_base_ = std::string(prefix) + std::to_string(::getpid()) + "-" + tail + "-";
        remove_leftovers();
    }

    ~NetnsLab() {
        // Processes first (a live process keeps its namespace alive), then namespaces in
        // reverse order of creation; each step is best effort so one failure cannot leave
        // the rest behind.
        procs_.clear();
        for (auto it = namespaces_.rbegin(); it != namespaces_.rend(); ++it) {
            try {
                remove_namespace(*it);
            } catch (const std::exception& e) {
                std::fprintf(stderr, "e2e: could not remove namespace %s: %s\n", it->c_str(),
                             e.what());
            }
        }
    }
    NetnsLab(const NetnsLab&) = delete;
    NetnsLab& operator=(const NetnsLab&) = delete;

    const std::string& scratch() const { return scratch_; }
    const std::string& tc() const { return tc_; }

    // A new namespace with its loopback up; answers its full name.
    std::string add_namespace(const std::string& role) {
        std::string ns = name_base_ + role;
        run({ip_, "netns", "add", ns});
        namespaces_.push_back(ns);
        ip(ns, {"link", "set", "lo", "up"});
        return ns;
    }

    // `ip -n NS args...`; throws with ip's message when it fails.
    void ip(const std::string& ns, std::vector<std::string> args) {
        args.insert(args.begin(), {ip_, "-n", ns});
        run(args);
    }

    // `ip netns exec NS argv...` to completion; throws when it fails.
    CommandResult exec(const std::string& ns, std::vector<std::string> argv,
                       std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
        argv.insert(argv.begin(), {ip_, "netns", "exec", ns});
        return run(argv, timeout);
    }

    // Same, but the result is returned whatever the exit code.
    CommandResult try_exec(const std::string& ns, std::vector<std::string> argv,
                           std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
        argv.insert(argv.begin(), {ip_, "netns", "exec", ns});
        return run_command(argv, scratch_, timeout);
    }

    // Loads an nft ruleset into the namespace.
    void nft(const std::string& ns, const std::string& ruleset) {
        std::string file = scratch_ + "/nft-" + std::to_string(++files_) + ".nft";
        std::ofstream(file) << ruleset;
        exec(ns, {nft_, "-f", file});
    }

    // Writes a sysctl of the namespace ("net/ipv4/ip_forward"), from a process inside it.
    void sysctl(const std::string& ns, const std::string& key, const std::string& value) {
        exec(ns, {"/bin/sh", "-c", "echo " + value + " > /proc/sys/" + key});
    }

    // A veth pair from `if_a` in ns_a to `if_b` in ns_b, both up; each end gets its
    // address ("10.199.0.1/24") unless empty.
    void veth(const std::string& ns_a, const std::string& if_a, const std::string& cidr_a,
              const std::string& ns_b, const std::string& if_b, const std::string& cidr_b) {
        ip(ns_a, {"link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", ns_b});
        if (!cidr_a.empty()) ip(ns_a, {"addr", "add", cidr_a, "dev", if_a});
        if (!cidr_b.empty()) ip(ns_b, {"addr", "add", cidr_b, "dev", if_b});
        ip(ns_a, {"link", "set", if_a, "up"});
        ip(ns_b, {"link", "set", if_b, "up"});
    }

    void bridge(const std::string& ns, const std::string& name) {
        ip(ns, {"link", "add", name, "type", "bridge"});
        ip(ns, {"link", "set", name, "up"});
    }

    // Puts host_ns on the bridge: a veth whose bridge end is `port` (a bridge port in
    // bridge_ns) and whose host end is `host_if` with address `cidr`.
    void attach(const std::string& bridge_ns, const std::string& bridge_name,
                const std::string& port, const std::string& host_ns, const std::string& host_if,
                const std::string& cidr) {
        veth(bridge_ns, port, "", host_ns, host_if, cidr);
        ip(bridge_ns, {"link", "set", port, "master", bridge_name});
    }

    // Shapes what leaves `dev` to `mbit` Mbit/s with tbf (the queue holds ~40 ms).
    void shape(const std::string& ns, const std::string& dev, int mbit) {
        exec(ns, {tc_, "qdisc", "replace", "dev", dev, "root", "tbf", "rate",
                  std::to_string(mbit) + "mbit", "burst", "64kb", "latency", "40ms"});
    }

    // Makes `ns` a NAT gateway from `lan_if` to `wan_if`: forwarding on, what leaves by
    // wan_if is masqueraded, and nothing that arrives on wan_if is forwarded unless it
    // belongs to a connection opened from inside.
    void nat_gateway(const std::string& ns, const std::string& wan_if, const std::string& lan_if) {
        sysctl(ns, "net/ipv4/ip_forward", "1");
        nft(ns,
            "table ip p2prc_nat {\n"
            "  chain postrouting_chain {\n"
            "    type nat hook postrouting priority srcnat; policy accept;\n"
            "    oifname \"" +
                wan_if +
                "\" masquerade\n"
                "  }\n"
                "}\n"
                "table inet p2prc_filter {\n"
                "  chain forward_chain {\n"
                "    type filter hook forward priority filter; policy drop;\n"
                "    ct state established,related accept\n"
                "    iifname \"" +
                lan_if + "\" oifname \"" + wan_if +
                "\" accept\n"
                "  }\n"
                "}\n");
    }

    // A long-running `argv` inside ns (stdout/stderr to scratch files named after `tag`),
    // owned by the lab: killed before the namespaces go. The reference stays valid for
    // the lab's lifetime.
    ChildProcess& spawn(const std::string& ns, const std::string& tag,
                        std::vector<std::string> argv) {
        argv.insert(argv.begin(), {ip_, "netns", "exec", ns});
        std::string base = scratch_ + "/" + tag + "-" + std::to_string(++files_);
        procs_.push_back(std::make_unique<ChildProcess>(argv, base + ".out", base + ".err"));
        return *procs_.back();
    }

    // Runs fn() on a thread that entered ns; sockets it creates (and threads it starts)
    // live in that namespace. Answers fn's result; rethrows what it throws.
    template <class Fn>
    auto in_namespace(const std::string& ns, Fn&& fn) -> decltype(fn()) {
        using R = decltype(fn());
        std::string path = "/run/netns/" + ns;
        int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) throw std::runtime_error("cannot open " + path + ": " + std::strerror(errno));
        std::exception_ptr failure;
        std::optional<std::conditional_t<std::is_void_v<R>, int, R>> result;
        std::thread t([&] {
            try {
                if (::setns(fd, CLONE_NEWNET) != 0)
                    throw std::runtime_error("setns into " + ns + ": " + std::strerror(errno));
                if constexpr (std::is_void_v<R>) {
                    fn();
                    result.emplace(0);
                } else {
                    result.emplace(fn());
                }
            } catch (...) {
                failure = std::current_exception();
            }
        });
        t.join();
        ::close(fd);
        if (failure) std::rethrow_exception(failure);
        if constexpr (!std::is_void_v<R>) return std::move(*result);
    }

  private:
    CommandResult run(const std::vector<std::string>& argv,
                      std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
        auto r = run_command(argv, scratch_, timeout);
        if (r.code != 0) {
            std::string cmd;
            for (const auto& a : argv) cmd += (cmd.empty() ? "" : " ") + a;
            std::string err = r.err.substr(0, 400);
            while (!err.empty() && (err.back() == '\n' || err.back() == ' ')) err.pop_back();
            throw std::runtime_error(
                "`" + cmd + "` failed (" +
                (r.code == -999 ? "timed out" : "exit " + std::to_string(r.code)) + "): " + err);
        }
        return r;
    }

    // Kills what still runs in the namespace (processes this lab or a dead run of the
    // tests started there) and deletes it.
    void remove_namespace(const std::string& ns) {
        auto pids = run_command({ip_, "netns", "pids", ns}, scratch_, std::chrono::seconds(5));
        std::stringstream ss(pids.out);
        long pid = 0;
        int killed = 0;
        while (ss >> pid && killed < 64) {
            if (pid > 1 && pid != ::getpid()) ::kill(static_cast<pid_t>(pid), SIGKILL);
            ++killed;
        }
        if (killed) std::this_thread::sleep_for(std::chrono::milliseconds(50));
        run_command({ip_, "netns", "del", ns}, scratch_, std::chrono::seconds(5));
    }

    // Namespaces of earlier runs whose process is gone (crashed or killed before its
    // destructors ran).
    void remove_leftovers() {
        auto list = run_command({ip_, "netns", "list"}, scratch_, std::chrono::seconds(5));
        std::stringstream ss(list.out);
        std::string line;
        int seen = 0;
        while (std::getline(ss, line) && seen++ < 1024) {
            std::string name = line.substr(0, line.find(' '));
            if (name.rfind(prefix, 0) != 0) continue;
            std::string rest = name.substr(std::strlen(prefix));
            char* end = nullptr;
            long pid = std::strtol(rest.c_str(), &end, 10);
            if (end == rest.c_str() || *end != '-' || pid <= 0) continue;
            if (pid == ::getpid()) continue;
            if (::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) continue;  // alive
            remove_namespace(name);
        }
    }

    std::string scratch_, ip_, nft_, tc_;
    std::string name_base_;
    int files_ = 0;
    std::vector<std::string> namespaces_;
    std::vector<std::unique_ptr<ChildProcess>> procs_;
};

// The n-th line (from 1) of a child's standard output once it is complete; nothing after
// `timeout`, or as soon as the child has ended without writing it.
inline std::optional<std::string> nth_line(ChildProcess& p, std::size_t n,
                                           std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
        bool ended = p.wait(std::chrono::milliseconds(0)).has_value();
        std::string out = p.out();
        std::size_t start = 0;
        for (std::size_t i = 1;; ++i) {
            auto nl = out.find('\n', start);
            if (nl == std::string::npos) break;
            if (i == n) return out.substr(start, nl - start);
            start = nl + 1;
        }
        if (ended || std::chrono::steady_clock::now() >= deadline) return std::nullopt;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
}

// An HTTP service of a host: GET /blob answers `blob`, GET / a short text. Listens on
// address:port inside the lab's namespace ns; stopped and joined when destroyed.
class HttpService {
  public:
    HttpService(NetnsLab& lab, const std::string& ns, const std::string& address,
                std::uint16_t port, std::string blob)
        : blob_(std::move(blob)) {
        server_.Get("/blob", [this](const httplib::Request&, httplib::Response& r) {
            r.set_content(blob_, "application/octet-stream");
        });
        server_.Get("/", [](const httplib::Request&, httplib::Response& r) {
            r.set_content("a service behind NAT\n", "text/plain");
        });
        // The listening socket is made in the namespace; accepted ones inherit it, so the
        // accept loop itself can run on any thread.
        bool bound = lab.in_namespace(ns, [&] { return server_.bind_to_port(address, port); });
        if (!bound)
            throw std::runtime_error("service: cannot bind " + address + ":" +
                                     std::to_string(port) + " in " + ns);
        thread_ = std::thread([this] { server_.listen_after_bind(); });
        // stop() before the loop runs would be lost; wait (bounded) until it does.
        for (int i = 0; i < 500 && !server_.is_running(); ++i)
            std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    ~HttpService() {
        server_.stop();
        thread_.join();
    }
    HttpService(const HttpService&) = delete;
    HttpService& operator=(const HttpService&) = delete;

  private:
    std::string blob_;
    httplib::Server server_;
    std::thread thread_;
};

// GET http://host:port/path from inside ns, bounded in time and size; nothing when no
// answer with status 200 came.
inline std::optional<std::string> http_get_in(NetnsLab& lab, const std::string& ns,
                                              const std::string& host, std::uint16_t port,
                                              const std::string& path) {
    return lab.in_namespace(ns, [&]() -> std::optional<std::string> {
        httplib::Client c(host, port);
        c.set_connection_timeout(3, 0);
        c.set_read_timeout(5, 0);
        c.set_write_timeout(5, 0);
        std::string body;
        httplib::ContentReceiver keep = [&](const char* data, std::size_t n) {
            if (body.size() + n > (64u << 20)) return false;
            body.append(data, n);
            return true;
        };
        auto res = c.Get(path, keep);
        if (!res || res->status != 200) return std::nullopt;
        return body;
    });
}

// The topology of the end-to-end tests (see the top of this file).
struct Internet {
    static constexpr const char* public_a = "10.199.0.11";
    static constexpr const char* public_b = "10.199.0.12";
    static constexpr const char* client_ip = "10.199.0.21";
    static constexpr const char* gateway_wan = "10.199.0.1";
    static constexpr const char* gateway_lan = "10.199.1.1";
    static constexpr const char* natted_ip = "10.199.1.2";

    std::string bridge_ns, a, b, client, gateway, natted;

    explicit Internet(NetnsLab& lab) {
        bridge_ns = lab.add_namespace("br");
        a = lab.add_namespace("pubA");
        b = lab.add_namespace("pubB");
        client = lab.add_namespace("client");
        gateway = lab.add_namespace("gw");
        natted = lab.add_namespace("nat");
        lab.bridge(bridge_ns, "br0");
        lab.attach(bridge_ns, "br0", "p-a", a, "eth0", std::string(public_a) + "/24");
        lab.attach(bridge_ns, "br0", "p-b", b, "eth0", std::string(public_b) + "/24");
        lab.attach(bridge_ns, "br0", "p-client", client, "eth0", std::string(client_ip) + "/24");
        lab.attach(bridge_ns, "br0", "p-gw", gateway, "wan", std::string(gateway_wan) + "/24");
        lab.veth(gateway, "lan", std::string(gateway_lan) + "/24", natted, "eth0",
                 std::string(natted_ip) + "/24");
        lab.ip(natted, {"route", "add", "default", "via", gateway_lan});
        // The client knows the way to the private network behind the gateway, as an
        // attacker on the gateway's link would: only the gateway's filter stops it.
        lab.ip(client, {"route", "add", "10.199.1.0/24", "via", gateway_wan});
        lab.nat_gateway(gateway, "wan", "lan");
    }
};

// True (after recording the skip and why, support/skip.hpp) when this machine cannot run
// the network-namespace tests; the caller then returns. A suite whose every test case
// skipped exits 77, which ctest reports as "Skipped".
inline bool skip_without_netns(const std::string& scratch_dir) {
    const std::string why = NetnsLab::unavailable_reason(scratch_dir);
    if (why.empty()) return false;
    skip_test_case("e2e needs network namespaces: " + why);
    return true;
}

}  // namespace p2prc_test
