// Facts about this machine, as GET /server_info reports them.
//
// Read straight from /proc, /etc/os-release, uname and statvfs; no shell. GPUs come from
// `nvidia-smi` when it is on PATH: it is run directly (posix_spawn, no shell) with its
// output and its run time bounded, so a hung driver cannot hang the node.
#pragma once

#include "error.hpp"

#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace p2prc {

struct GpuInfo {
    std::string name;
    std::uint64_t memory_mib = 0;
    std::string driver;
};

struct SystemInfo {
    std::string hostname;
    std::string platform;        // e.g. "Debian GNU/Linux 12 (bookworm)"
    std::string cpu;             // model name of the first CPU
    unsigned cores = 0;          // logical cores
    std::uint64_t ram_mib = 0;   // total memory
    std::uint64_t disk_mib = 0;  // total size of the filesystem holding the given folder
    std::uint64_t disk_free_mib = 0;
    std::optional<std::vector<GpuInfo>> gpus;  // nullopt: no nvidia-smi (GPU is null)

    // P2PRC's keys (Hostname, Platform, CPU, RAM and Disk in MiB, GPU object or null) plus
    // Cores and DiskFree.
    nlohmann::json to_json() const {
        nlohmann::json j;
        j["Hostname"] = hostname;
        j["Platform"] = platform;
        j["CPU"] = cpu;
        j["Cores"] = cores;
        j["RAM"] = ram_mib;
        j["Disk"] = disk_mib;
        j["DiskFree"] = disk_free_mib;
        if (gpus) {
            nlohmann::json list = nlohmann::json::array();
            for (const auto& g : *gpus)
                list.push_back(
                    {{"Name", g.name}, {"MemoryMiB", g.memory_mib}, {"Driver", g.driver}});
            j["GPU"] = {{"Count", gpus->size()}, {"Devices", std::move(list)}};
        } else {
            j["GPU"] = nullptr;
        }
        return j;
    }
};

namespace detail {

// Reads at most `limit` bytes of a small text file (the /proc files are tiny).
inline std::optional<std::string> read_small_file(const std::string& path,
                                                  std::size_t limit = 1 << 20) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return std::nullopt;
    std::string out(limit, '\0');
    in.read(&out[0], static_cast<std::streamsize>(limit));
    out.resize(static_cast<std::size_t>(in.gcount()));
    return out;
}

inline std::string trim(std::string s) {
    auto b = s.find_first_not_of(" \t\r\n");
    if (b == std::string::npos) return {};
    auto e = s.find_last_not_of(" \t\r\n");
    return s.substr(b, e - b + 1);
}

// The value of `key` in a "key: value" (cpuinfo, meminfo) or KEY=value (os-release) file.
inline std::optional<std::string> text_field(const std::string& text, const std::string& key,
                                             char sep) {
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line)) {
        auto pos = line.find(sep);
        if (pos == std::string::npos) continue;
        if (trim(line.substr(0, pos)) != key) continue;
        return trim(line.substr(pos + 1));
    }
    return std::nullopt;
}

inline std::string os_release_name() {
    for (const char* path : {"/etc/os-release", "/usr/lib/os-release"}) {
        auto text = read_small_file(path, 64 * 1024);
        if (!text) continue;
        if (auto v = text_field(*text, "PRETTY_NAME", '=')) {
            std::string s = *v;
            if (s.size() >= 2 && (s.front() == '"' || s.front() == '\'') && s.back() == s.front())
                s = s.substr(1, s.size() - 2);
            if (!s.empty()) return s;
        }
    }
    struct utsname u {};
    if (uname(&u) == 0) return std::string(u.sysname) + " " + u.release;
    return "unknown";
}

inline std::string cpu_model() {
    auto text = read_small_file("/proc/cpuinfo", 1 << 20);
    if (text) {
        // x86 says "model name"; some ARM kernels only "Hardware" or "Processor".
        for (const char* key : {"model name", "Hardware", "Processor", "cpu model"})
            if (auto v = text_field(*text, key, ':'); v && !v->empty()) return *v;
    }
    struct utsname u {};
    if (uname(&u) == 0) return u.machine;
    return "unknown";
}

inline std::uint64_t meminfo_mib(const std::string& key) {
    auto text = read_small_file("/proc/meminfo", 256 * 1024);
    if (!text) return 0;
    auto v = text_field(*text, key, ':');  // "16314672 kB"
    if (!v) return 0;
    return std::strtoull(v->c_str(), nullptr, 10) / 1024;
}

// Finds an executable on PATH without a shell; empty when it is not there.
inline std::string find_on_path(const std::string& name) {
    const char* path = std::getenv("PATH");
    if (!path) return {};
    std::istringstream in(path);
    std::string dir;
    while (std::getline(in, dir, ':')) {
        if (dir.empty()) continue;
        std::string full = dir + "/" + name;
        struct stat st {};
        if (stat(full.c_str(), &st) == 0 && S_ISREG(st.st_mode) && access(full.c_str(), X_OK) == 0)
            return full;
    }
    return {};
}

// Runs `argv` (argv[0] a full path) with stdout captured, at most `max_output` bytes and
// `timeout`; the child is killed when it runs over. Returns nullopt when it could not be
// run, ran over its time, or exited non-zero.
inline std::optional<std::string> run_bounded(const std::vector<std::string>& argv,
                                              std::chrono::milliseconds timeout,
                                              std::size_t max_output) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) return std::nullopt;
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, fds[1], 1);
    posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    pid_t pid = -1;
    int rc = posix_spawn(&pid, argv[0].c_str(), &actions, nullptr, args.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    close(fds[1]);
    if (rc != 0) {
        close(fds[0]);
        return std::nullopt;
    }
    std::string out;
    bool overrun = false;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
            deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) {
            overrun = true;
            break;
        }
        pollfd p{fds[0], POLLIN, 0};
        int n = poll(&p, 1, static_cast<int>(left.count()));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            overrun = n == 0;
            if (n < 0) overrun = true;
            break;
        }
        char buf[4096];
        ssize_t r = read(fds[0], buf, sizeof buf);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;  // EOF: the child closed stdout
        out.append(buf, static_cast<std::size_t>(r));
        if (out.size() > max_output) {
            overrun = true;
            break;
        }
    }
    close(fds[0]);
    if (overrun) kill(pid, SIGKILL);
    // The child has closed stdout or been killed: it exits soon. Bound the wait anyway.
    int status = 0;
    for (int i = 0; i < 200; ++i) {
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid) {
            if (overrun || !WIFEXITED(status) || WEXITSTATUS(status) != 0) return std::nullopt;
            return out;
        }
        if (w < 0 && errno != EINTR) return std::nullopt;
        if (i == 100) kill(pid, SIGKILL);
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return std::nullopt;
}

inline std::optional<std::vector<GpuInfo>> nvidia_gpus() {
    auto exe = find_on_path("nvidia-smi");
    if (exe.empty()) return std::nullopt;
    auto out = run_bounded(
        {exe, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"},
        std::chrono::seconds(3), 64 * 1024);
    if (!out) return std::nullopt;
    std::vector<GpuInfo> gpus;
    std::istringstream in(*out);
    std::string line;
    while (std::getline(in, line) && gpus.size() < 64) {
        std::vector<std::string> cols;
        std::istringstream fields(line);
        std::string f;
        while (std::getline(fields, f, ',')) cols.push_back(trim(f));
        if (cols.size() < 3 || cols[0].empty()) continue;
        GpuInfo g;
        g.name = cols[0].substr(0, 256);
        g.memory_mib = std::strtoull(cols[1].c_str(), nullptr, 10);
        g.driver = cols[2].substr(0, 64);
        gpus.push_back(std::move(g));
    }
    return gpus;
}

}  // namespace detail

// Collects the facts. `path_for_disk` names a folder on the filesystem to report (the one
// holding the table); a path that does not exist reports a disk of 0.
inline SystemInfo system_info(const std::string& path_for_disk = ".") {
    SystemInfo s;
    char host[256] = {};
    if (gethostname(host, sizeof host - 1) == 0) s.hostname = host;
    s.platform = detail::os_release_name();
    s.cpu = detail::cpu_model();
    unsigned n = std::thread::hardware_concurrency();
    if (n == 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        n = c > 0 ? static_cast<unsigned>(c) : 1;
    }
    s.cores = n;
    s.ram_mib = detail::meminfo_mib("MemTotal");
    struct statvfs v {};
    if (statvfs(path_for_disk.c_str(), &v) == 0) {
        s.disk_mib = static_cast<std::uint64_t>(v.f_blocks) * v.f_frsize / (1024 * 1024);
        s.disk_free_mib = static_cast<std::uint64_t>(v.f_bavail) * v.f_frsize / (1024 * 1024);
    }
    s.gpus = detail::nvidia_gpus();
    return s;
}

}  // namespace p2prc
