// The doctest main of every suite. It runs the suite, then turns skips into what ctest
// understands (support/skip.hpp): exit 77 when every test case that ran was skipped, and
// a list of the skipped ones, with reasons, when only some were.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include "support/skip.hpp"

#include <iostream>

namespace {

// Counts the test cases that ran (passed the filters).
struct RunCounter : doctest::IReporter {
    static inline unsigned ran = 0;
    explicit RunCounter(const doctest::ContextOptions&) {}
    void report_query(const doctest::QueryData&) override {}
    void test_run_start() override {}
    void test_run_end(const doctest::TestRunStats& s) override {
        ran = s.numTestCasesPassingFilters;
    }
    void test_case_start(const doctest::TestCaseData&) override {}
    void test_case_reenter(const doctest::TestCaseData&) override {}
    void test_case_end(const doctest::CurrentTestCaseStats&) override {}
    void test_case_exception(const doctest::TestCaseException&) override {}
    void subcase_start(const doctest::SubcaseSignature&) override {}
    void subcase_end() override {}
    void log_assert(const doctest::AssertData&) override {}
    void log_message(const doctest::MessageData&) override {}
    void test_case_skipped(const doctest::TestCaseData&) override {}
};
REGISTER_LISTENER("p2prc-run-counter", 1, RunCounter);

}  // namespace

int main(int argc, char** argv) {
    doctest::Context context(argc, argv);
    const int rc = context.run();
    if (context.shouldExit()) return rc;
    auto& log = p2prc_test::skip_log();
    if (log.cases.empty()) return rc;
    std::cout << "[skips] " << log.cases.size() << " of " << RunCounter::ran
              << " test cases skipped:\n";
    for (const auto& l : log.lines) std::cout << "[skips]   " << l << "\n";
    if (rc == 0 && log.cases.size() >= RunCounter::ran) {
        std::cout << "[skips] every test case was skipped: exit " << p2prc_test::kSkipExitCode
                  << " (ctest: Skipped)\n";
        return p2prc_test::kSkipExitCode;
    }
    return rc;
}
