// Skips that ctest reports as skips. A test case that cannot run here (no network
// namespaces, no IPv6 loopback...) calls skip_test_case(why) and returns. When every test
// case a suite ran was skipped, the suite exits 77, which ctest shows as "Skipped" (see
// SKIP_RETURN_CODE in tests/CMakeLists.txt); when only some were, the suite passes for the
// others and lists the skipped ones, with their reasons, at the end of its output.
#pragma once

#include <doctest/doctest.h>

#include <iostream>
#include <mutex>
#include <set>
#include <string>
#include <vector>

namespace p2prc_test {

inline constexpr int kSkipExitCode = 77;

struct SkipLog {
    std::mutex mu;
    std::set<std::string> cases;  // names of the test cases that skipped
    std::vector<std::string> lines;
};

inline SkipLog& skip_log() {
    static SkipLog log;
    return log;
}

// Records that the current test case is skipped, and why (on stderr and in doctest's log).
inline void skip_test_case(const std::string& why) {
    const auto* opts = doctest::getContextOptions();
    const std::string name = opts && opts->currentTest ? opts->currentTest->m_name : "?";
    std::cerr << "SKIPPED: " << name << ": " << why << "\n";
    MESSAGE("skipped: " << why);
    auto& log = skip_log();
    std::lock_guard<std::mutex> lk(log.mu);
    log.cases.insert(name);
    log.lines.push_back(name + ": " + why);
}

}  // namespace p2prc_test
