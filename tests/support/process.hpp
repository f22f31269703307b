// Child processes for tests: a long-running one (a node) and a command run to completion,
// both bounded in time and killed with the test.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace p2prc_test {

inline std::string slurp(const std::string& path) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

// Runs argv with stdout and stderr sent to files; killed (SIGKILL) when destroyed.
class ChildProcess {
public:
    ChildProcess(const std::vector<std::string>& argv, const std::string& out_path, const std::string& err_path)
        : out_(out_path), err_(err_path) {
        pid_ = fork();
        if (pid_ < 0) throw std::runtime_error("fork failed");
        if (pid_ == 0) {
            int o = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
            int e = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
            int in = ::open("/dev/null", O_RDONLY);
            if (o < 0 || e < 0 || in < 0) _exit(127);
            dup2(in, 0);
            dup2(o, 1);
            dup2(e, 2);
            std::vector<char*> args;
            for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
            args.push_back(nullptr);
            execv(args[0], args.data());
            _exit(127);
        }
    }
    ~ChildProcess() {
        if (pid_ > 0 && !exited_) {
            ::kill(pid_, SIGKILL);
            int st = 0;
            waitpid(pid_, &st, 0);
        }
    }
    ChildProcess(const ChildProcess&) = delete;
    ChildProcess& operator=(const ChildProcess&) = delete;

    void signal(int sig) { ::kill(pid_, sig); }

    // Waits up to `timeout` for the process to end; its exit code, or -signal, or
    // nothing when it still runs.
    std::optional<int> wait(std::chrono::milliseconds timeout) {
        if (exited_) return status_;  // reaped already: the pid is no longer ours to wait for
        auto deadline = std::chrono::steady_clock::now() + timeout;
        for (;;) {
            int st = 0;
            pid_t r = waitpid(pid_, &st, WNOHANG);
            if (r == pid_) {
                exited_ = true;
                status_ = WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st);
                return status_;
            }
            if (std::chrono::steady_clock::now() >= deadline) return std::nullopt;
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
    }

    // Waits until stdout holds a full line, and returns the first line.
    std::string first_line(std::chrono::milliseconds timeout) {
        auto deadline = std::chrono::steady_clock::now() + timeout;
        for (;;) {
            auto s = slurp(out_);
            if (auto nl = s.find('\n'); nl != std::string::npos) return s.substr(0, nl);
            if (std::chrono::steady_clock::now() >= deadline)
                throw std::runtime_error("no output from the child; stderr: " + slurp(err_));
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
    }

    std::string out() const { return slurp(out_); }
    std::string err() const { return slurp(err_); }
    pid_t pid() const { return pid_; }

private:
    pid_t pid_ = -1;
    bool exited_ = false;
    int status_ = 0;
    std::string out_, err_;
};

struct CommandResult {
    int code = -1;
    std::string out, err;
};

// Runs a command to completion (killed after `timeout`).
inline CommandResult run_command(const std::vector<std::string>& argv, const std::string& scratch_dir,
                                 std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
    static int counter = 0;
    std::string base = scratch_dir + "/cmd" + std::to_string(++counter);
    ChildProcess p(argv, base + ".out", base + ".err");
    auto code = p.wait(timeout);
    CommandResult r;
    r.code = code ? *code : -999;
    r.out = p.out();
    r.err = p.err();
    return r;
}

}  // namespace p2prc_test
