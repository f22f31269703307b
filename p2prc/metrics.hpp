// What a node counts about itself, and the Prometheus text exposition format it is served in
// (GET /metrics).
//
// Most figures are read when /metrics is scraped (the table, the relays served, the tunnels);
// only events that leave no state behind are counted here: probe rounds, prunes, learned
// entries, relay changes of exposures and dialbacks. The text format is written by hand:
// it is a few lines of escaping and number formatting, and the C++ client library
// (prometheus-cpp) is a compiled library with its own HTTP server, which a header-only
// library that already serves HTTP does not want.
// Format: https://prometheus.io/docs/instrumenting/exposition_formats/ (text format 0.0.4).
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace p2prc {

using MetricLabels = std::vector<std::pair<std::string, std::string>>;

namespace detail {

// Label values: backslash, double quote and line feed are escaped.
inline std::string prometheus_label_value(const std::string& v) {
    std::string out;
    out.reserve(v.size());
    for (char c : v) {
        if (c == '\\')
            out += "\\\\";
        else if (c == '"')
            out += "\\\"";
        else if (c == '\n')
            out += "\\n";
        else
            out += c;
    }
    return out;
}

// HELP text: backslash and line feed are escaped (quotes are not).
inline std::string prometheus_help(const std::string& v) {
    std::string out;
    for (char c : v) {
        if (c == '\\')
            out += "\\\\";
        else if (c == '\n')
            out += "\\n";
        else
            out += c;
    }
    return out;
}

// Go's ParseFloat spelling, which Prometheus reads: +Inf, -Inf, NaN; integers in full.
inline std::string prometheus_number(double v) {
    if (std::isnan(v)) return "NaN";
    if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
    char buf[64];
    if (v == std::floor(v) && std::fabs(v) < 9.0e15) {
        std::snprintf(buf, sizeof buf, "%.0f", v);
        return buf;
    }
    // The shortest of 15-17 digits that reads back as the same double (0.1, not 0.1000...01).
    for (int digits = 15; digits <= 17; ++digits) {
        std::snprintf(buf, sizeof buf, "%.*g", digits, v);
        if (std::strtod(buf, nullptr) == v) break;
    }
    return buf;
}

inline bool prometheus_name_ok(const std::string& n) {
    if (n.empty()) return false;
    for (std::size_t i = 0; i < n.size(); ++i) {
        const char c = n[i];
        const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
        if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return false;
    }
    return true;
}

}  // namespace detail

// Writes metric families in the text format: each family's HELP and TYPE, then its samples.
class PrometheusWriter {
  public:
    // Starts a family; type is counter, gauge, histogram or untyped.
    void family(const std::string& name, const std::string& type, const std::string& help) {
        out_ += "# HELP " + name + " " + detail::prometheus_help(help) + "\n";
        out_ += "# TYPE " + name + " " + type + "\n";
    }

    void sample(const std::string& name, const MetricLabels& labels, double value) {
        out_ += name;
        if (!labels.empty()) {
            out_ += '{';
            for (std::size_t i = 0; i < labels.size(); ++i) {
                if (i) out_ += ',';
                out_ += labels[i].first + "=\"" + detail::prometheus_label_value(labels[i].second) +
                        "\"";
            }
            out_ += '}';
        }
        out_ += ' ' + detail::prometheus_number(value) + '\n';
    }

    // A family with one unlabelled sample.
    void single(const std::string& name, const std::string& type, const std::string& help,
                double value) {
        family(name, type, help);
        sample(name, {}, value);
    }

    const std::string& text() const noexcept { return out_; }

  private:
    std::string out_;
};

// A counter with labels (one value per label combination). Thread-safe.
class LabeledCounter {
  public:
    explicit LabeledCounter(std::vector<std::string> label_names)
        : names_(std::move(label_names)) {}

    // Adds n to the series with these label values (as many as there are label names).
    void add(const std::vector<std::string>& values, std::uint64_t n = 1) {
        if (values.size() != names_.size()) return;  // a programming error; never a crash
        std::lock_guard<std::mutex> lock(mu_);
        counts_[values] += n;
    }

    std::uint64_t value(const std::vector<std::string>& values) const {
        std::lock_guard<std::mutex> lock(mu_);
        auto it = counts_.find(values);
        return it == counts_.end() ? 0 : it->second;
    }

    // Every series, plus a zero for each of `always` not seen yet (so a dashboard sees the
    // series before its first event).
    void write(PrometheusWriter& w, const std::string& name,
               const std::vector<std::vector<std::string>>& always = {}) const {
        std::map<std::vector<std::string>, std::uint64_t> copy;
        {
            std::lock_guard<std::mutex> lock(mu_);
            copy = counts_;
        }
        for (const auto& a : always)
            if (a.size() == names_.size()) copy.emplace(a, 0);
        for (const auto& [values, n] : copy) {
            MetricLabels labels;
            for (std::size_t i = 0; i < names_.size(); ++i)
                labels.emplace_back(names_[i], values[i]);
            w.sample(name, labels, double(n));
        }
    }

  private:
    std::vector<std::string> names_;
    mutable std::mutex mu_;
    std::map<std::vector<std::string>, std::uint64_t> counts_;
};

// A histogram with fixed upper bounds (cumulative buckets, as Prometheus wants). Thread-safe.
class Histogram {
  public:
    explicit Histogram(std::vector<double> bounds)
        : bounds_(std::move(bounds)), counts_(bounds_.size(), 0) {
        std::sort(bounds_.begin(), bounds_.end());
    }

    void observe(double v) {
        std::lock_guard<std::mutex> lock(mu_);
        for (std::size_t i = 0; i < bounds_.size(); ++i)
            if (v <= bounds_[i]) ++counts_[i];
        ++count_;
        sum_ += v;
    }

    std::uint64_t count() const {
        std::lock_guard<std::mutex> lock(mu_);
        return count_;
    }

    // name_bucket{le=...}, name_sum and name_count (the family is written by the caller).
    void write(PrometheusWriter& w, const std::string& name) const {
        std::lock_guard<std::mutex> lock(mu_);
        for (std::size_t i = 0; i < bounds_.size(); ++i)
            w.sample(name + "_bucket", {{"le", detail::prometheus_number(bounds_[i])}},
                     double(counts_[i]));
        w.sample(name + "_bucket", {{"le", "+Inf"}}, double(count_));
        w.sample(name + "_sum", {}, sum_);
        w.sample(name + "_count", {}, double(count_));
    }

  private:
    std::vector<double> bounds_;
    mutable std::mutex mu_;
    std::vector<std::uint64_t> counts_;
    std::uint64_t count_ = 0;
    double sum_ = 0;
};

// The event counters of one node (p2prc::Node keeps one; Node::metrics()).
struct Metrics {
    Histogram probe_round_seconds{{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}};
    LabeledCounter prunes{{"reason"}};             // ProbeFailure names
    LabeledCounter learned{{"result", "reason"}};  // accepted/refused/deferred
    LabeledCounter exposure_changes{{"reason"}};   // failover, move, reconnect
    LabeledCounter dialbacks{{"role", "result"}};  // asked (by us) / served (for others)
};

}  // namespace p2prc
