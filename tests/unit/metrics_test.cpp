// The Prometheus text writer (metrics.hpp): escaping, numbers, counters with labels and
// histograms, read back with the strict reader of the tests.
#include <p2prc.hpp>

#include "support/prometheus.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <thread>
#include <vector>

TEST_CASE("label values and HELP text are escaped so that a strict reader gets them back") {
    p2prc::PrometheusWriter w;
    const std::string hostile = "a \"quoted\" back\\slash\nnew line } , =";
    w.family("p2prc_test_info", "gauge", "Help with a back\\slash and a\nline feed.");
    w.sample("p2prc_test_info", {{"name", hostile}, {"empty", ""}}, 1);
    const std::string text = w.text();
    CHECK(text.find("\\\"quoted\\\"") != std::string::npos);
    CHECK(text.find("back\\\\slash") != std::string::npos);
    CHECK(text.find("new line") != std::string::npos);
    CHECK(std::count(text.begin(), text.end(), '\n') == 3);  // HELP, TYPE, one sample
    auto parsed = p2prc_test::parse_prometheus(text);
    CHECK(parsed.value("p2prc_test_info", {{"name", hostile}, {"empty", ""}}) == 1);
    CHECK(parsed.families.at("p2prc_test_info").help ==
          "Help with a back\\\\slash and a\\nline feed.");
}

TEST_CASE("numbers are written as Prometheus reads them") {
    using p2prc::detail::prometheus_number;
    CHECK(prometheus_number(0) == "0");
    CHECK(prometheus_number(123456789012.0) == "123456789012");
    CHECK(prometheus_number(-3) == "-3");
    CHECK(prometheus_number(0.25) == "0.25");
    CHECK(prometheus_number(0.1) == "0.1");
    CHECK(prometheus_number(HUGE_VAL) == "+Inf");
    CHECK(prometheus_number(-HUGE_VAL) == "-Inf");
    CHECK(prometheus_number(NAN) == "NaN");
    CHECK(std::stod(prometheus_number(0.1)) == 0.1);  // no precision lost
}

TEST_CASE(
    "a labelled counter counts per label set, from many threads, and lists its always-shown "
    "series") {
    p2prc::LabeledCounter c({"role", "result"});
    std::vector<std::thread> ts;
    for (int t = 0; t < 4; ++t)
        ts.emplace_back([&] {
            for (int i = 0; i < 1000; ++i) c.add({"asked", i % 2 ? "reachable" : "unreachable"});
        });
    for (auto& t : ts) t.join();
    c.add({"wrong arity"});  // ignored, never a crash
    CHECK(c.value({"asked", "reachable"}) == 2000);
    CHECK(c.value({"asked", "unreachable"}) == 2000);
    p2prc::PrometheusWriter w;
    w.family("p2prc_dialbacks_total", "counter", "Dialbacks.");
    c.write(w, "p2prc_dialbacks_total", {{"served", "reachable"}, {"asked", "reachable"}});
    auto parsed = p2prc_test::parse_prometheus(w.text());
    CHECK(parsed.value("p2prc_dialbacks_total", {{"role", "asked"}, {"result", "reachable"}}) ==
          2000);
    CHECK(parsed.value("p2prc_dialbacks_total", {{"role", "served"}, {"result", "reachable"}}) ==
          0);
    CHECK(parsed.families.at("p2prc_dialbacks_total").samples.size() == 3);
}

TEST_CASE("a histogram's buckets are cumulative and its +Inf bucket is its count") {
    p2prc::Histogram h({1, 0.1, 10});  // unsorted on purpose
    for (double v : {0.05, 0.1, 0.5, 2.0, 20.0}) h.observe(v);
    p2prc::PrometheusWriter w;
    w.family("p2prc_round_duration_seconds", "histogram", "Rounds.");
    h.write(w, "p2prc_round_duration_seconds");
    auto p = p2prc_test::parse_prometheus(w.text());
    CHECK(p.value("p2prc_round_duration_seconds_bucket", {{"le", "0.1"}}) == 2);
    CHECK(p.value("p2prc_round_duration_seconds_bucket", {{"le", "1"}}) == 3);
    CHECK(p.value("p2prc_round_duration_seconds_bucket", {{"le", "10"}}) == 4);
    CHECK(p.value("p2prc_round_duration_seconds_bucket", {{"le", "+Inf"}}) == 5);
    CHECK(p.value("p2prc_round_duration_seconds_count") == 5);
    CHECK(p.value("p2prc_round_duration_seconds_sum") == doctest::Approx(22.65));
}

TEST_CASE("the strict reader refuses what Prometheus would refuse") {
    using p2prc_test::parse_prometheus;
    CHECK_THROWS(parse_prometheus("p2prc_x 1\n"));  // no TYPE
    CHECK_THROWS(parse_prometheus("# HELP a_total A.\n# TYPE a_total counter\na_total{l=\"x} 1\n"));
    CHECK_THROWS(
        parse_prometheus("# HELP a_total A.\n# TYPE a_total counter\na_total{l=\"\\x\"} 1\n"));
    CHECK_THROWS(
        parse_prometheus("# HELP a A.\n# TYPE a counter\na 1\n"));  // counter without _total
    CHECK_THROWS(parse_prometheus("# HELP a A.\n# TYPE a gauge\na 1\na 2\n"));  // series twice
    CHECK_THROWS(parse_prometheus("# HELP a A.\n# TYPE a gauge\na one\n"));
    CHECK_THROWS(parse_prometheus("# HELP a A.\n# TYPE a gauge\na 1"));  // no final line feed
    CHECK_THROWS(
        parse_prometheus("# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} "
                         "2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n"));
    CHECK_NOTHROW(parse_prometheus("# HELP a A.\n# TYPE a gauge\na{x=\"1\",} 1 1700000000000\n"));
}
