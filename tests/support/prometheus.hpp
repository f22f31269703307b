// A strict reader of the Prometheus text exposition format (0.0.4), for tests: it throws on
// anything a Prometheus server would reject or that breaks the conventions we promise
// (HELP and TYPE before a family's samples, a family's samples together, no series twice,
// counters named *_total and never negative, histograms cumulative with a +Inf bucket that
// equals _count).
#pragma once

#include <cmath>
#include <cstdlib>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace p2prc_test {

struct PromSample {
    std::string name;
    std::map<std::string, std::string> labels;
    double value = 0;
};

struct PromFamily {
    std::string type;
    std::string help;
    std::vector<PromSample> samples;
};

struct PromText {
    std::map<std::string, PromFamily> families;

    // The value of the series `name` with exactly these labels; throws when absent.
    double value(const std::string& name,
                 const std::map<std::string, std::string>& labels = {}) const {
        for (const auto& [fname, f] : families)
            for (const auto& s : f.samples)
                if (s.name == name && s.labels == labels) return s.value;
        std::string l;
        for (const auto& [k, v] : labels) l += k + "=" + v + " ";
        throw std::runtime_error("no series " + name + " {" + l + "}");
    }
};

namespace prom_detail {

inline bool name_ok(const std::string& n, bool label) {
    if (n.empty()) return false;
    for (std::size_t i = 0; i < n.size(); ++i) {
        const char c = n[i];
        const bool alpha =
            (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (!label && c == ':');
        if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return false;
    }
    return !(label && n.rfind("__", 0) == 0);
}

inline double number(const std::string& s, const std::string& where) {
    if (s == "+Inf" || s == "Inf") return HUGE_VAL;
    if (s == "-Inf") return -HUGE_VAL;
    if (s == "NaN") return NAN;
    if (s.empty()) throw std::runtime_error(where + ": empty value");
    char* end = nullptr;
    double v = std::strtod(s.c_str(), &end);
    if (*end != '\0' || s.find_first_of("xXnNiI") != std::string::npos)
        throw std::runtime_error(where + ": not a number: \"" + s + "\"");
    return v;
}

}  // namespace prom_detail

inline PromText parse_prometheus(const std::string& text) {
    using prom_detail::name_ok;
    PromText out;
    if (!text.empty() && text.back() != '\n')
        throw std::runtime_error("the text does not end with a line feed");
    std::string current;             // the family whose samples are being read
    std::set<std::string> finished;  // families whose samples ended
    std::set<std::string> series;
    std::size_t pos = 0, line_no = 0;
    auto family_of = [&](const std::string& sample) -> std::string {
        if (out.families.count(sample) && out.families[sample].type != "histogram") return sample;
        for (const char* suffix : {"_bucket", "_sum", "_count"}) {
            const std::string s(suffix);
            if (sample.size() > s.size() &&
                sample.compare(sample.size() - s.size(), s.size(), s) == 0) {
                std::string base = sample.substr(0, sample.size() - s.size());
                if (out.families.count(base) && out.families[base].type == "histogram") return base;
            }
        }
        return {};
    };
    while (pos < text.size()) {
        const std::size_t nl = text.find('\n', pos);
        const std::string line = text.substr(pos, nl - pos);
        pos = nl + 1;
        const std::string where = "line " + std::to_string(++line_no);
        if (line.empty()) continue;
        if (line[0] == '#') {
            std::string rest = line.substr(1);
            if (rest.rfind(" HELP ", 0) == 0 || rest.rfind(" TYPE ", 0) == 0) {
                const bool help = rest[1] == 'H';
                rest = rest.substr(6);
                const auto sp = rest.find(' ');
                const std::string name = rest.substr(0, sp);
                const std::string arg = sp == std::string::npos ? "" : rest.substr(sp + 1);
                if (!name_ok(name, false))
                    throw std::runtime_error(where + ": bad metric name \"" + name + "\"");
                if (finished.count(name) ||
                    (current == name && !out.families[name].samples.empty()))
                    throw std::runtime_error(where + ": HELP/TYPE of " + name +
                                             " after its samples");
                auto& f = out.families[name];
                if (help) {
                    if (!f.help.empty())
                        throw std::runtime_error(where + ": second HELP for " + name);
                    for (std::size_t i = 0; i < arg.size(); ++i)
                        if (arg[i] == '\\' &&
                            (i + 1 >= arg.size() || (arg[i + 1] != '\\' && arg[i + 1] != 'n')))
                            throw std::runtime_error(where + ": bad escape in HELP");
                        else if (arg[i] == '\\')
                            ++i;
                    f.help = arg.empty() ? " " : arg;
                } else {
                    if (!f.type.empty())
                        throw std::runtime_error(where + ": second TYPE for " + name);
                    if (arg != "counter" && arg != "gauge" && arg != "histogram" &&
                        arg != "summary" && arg != "untyped")
                        throw std::runtime_error(where + ": unknown type \"" + arg + "\"");
                    f.type = arg;
                }
                if (current != name) {
                    if (!current.empty()) finished.insert(current);
                    current = name;
                }
            }
            continue;  // other comments are allowed
        }
        // name{labels} value [timestamp]
        std::size_t i = 0;
        while (i < line.size() && line[i] != '{' && line[i] != ' ') ++i;
        PromSample s;
        s.name = line.substr(0, i);
        if (!name_ok(s.name, false))
            throw std::runtime_error(where + ": bad metric name \"" + s.name + "\"");
        if (i < line.size() && line[i] == '{') {
            ++i;
            for (;;) {
                if (i < line.size() && line[i] == '}') {
                    ++i;
                    break;
                }
                std::size_t eq = line.find('=', i);
                if (eq == std::string::npos) throw std::runtime_error(where + ": label without =");
                std::string lname = line.substr(i, eq - i);
                if (!name_ok(lname, true))
                    throw std::runtime_error(where + ": bad label name \"" + lname + "\"");
                i = eq + 1;
                if (i >= line.size() || line[i] != '"')
                    throw std::runtime_error(where + ": label value not quoted");
                ++i;
                std::string v;
                for (;;) {
                    if (i >= line.size())
                        throw std::runtime_error(where + ": unterminated label value");
                    char c = line[i++];
                    if (c == '"') break;
                    if (c == '\\') {
                        if (i >= line.size())
                            throw std::runtime_error(where + ": dangling backslash");
                        char e = line[i++];
                        if (e == '\\')
                            v += '\\';
                        else if (e == '"')
                            v += '"';
                        else if (e == 'n')
                            v += '\n';
                        else
                            throw std::runtime_error(where + ": bad escape \\" + std::string(1, e));
                    } else {
                        v += c;
                    }
                }
                if (!s.labels.emplace(lname, v).second)
                    throw std::runtime_error(where + ": label " + lname + " twice");
                if (i < line.size() && line[i] == ',')
                    ++i;
                else if (i >= line.size() || line[i] != '}')
                    throw std::runtime_error(where + ": expected , or }");
            }
        }
        if (i >= line.size() || line[i] != ' ')
            throw std::runtime_error(where + ": expected a space before the value");
        std::string rest = line.substr(i + 1);
        const auto sp = rest.find(' ');
        s.value = prom_detail::number(rest.substr(0, sp), where);
        if (sp != std::string::npos)
            prom_detail::number(rest.substr(sp + 1), where + " (timestamp)");
        const std::string fam = family_of(s.name);
        if (fam.empty())
            throw std::runtime_error(where + ": sample " + s.name + " has no TYPE before it");
        if (fam != current || finished.count(fam))
            throw std::runtime_error(where + ": sample of " + fam +
                                     " apart from the rest of its family");
        std::string key = s.name + "{";
        for (const auto& [k, v] : s.labels) key += k + "=\"" + v + "\",";
        if (!series.insert(key + "}").second)
            throw std::runtime_error(where + ": series " + key + "} twice");
        out.families[fam].samples.push_back(std::move(s));
    }
    for (const auto& [name, f] : out.families) {
        if (f.type.empty()) throw std::runtime_error(name + ": no TYPE");
        if (f.help.empty()) throw std::runtime_error(name + ": no HELP");
        if (f.type == "counter") {
            if (name.size() < 6 || name.compare(name.size() - 6, 6, "_total") != 0)
                throw std::runtime_error(name + ": a counter's name should end in _total");
            for (const auto& s : f.samples)
                if (!(s.value >= 0)) throw std::runtime_error(name + ": negative or NaN counter");
        }
        if (f.type == "histogram") {
            // Per label set (without le): buckets cumulative, +Inf == _count.
            std::map<std::map<std::string, std::string>, std::vector<std::pair<double, double>>>
                buckets;
            std::map<std::map<std::string, std::string>, double> counts;
            for (const auto& s : f.samples) {
                auto labels = s.labels;
                if (s.name == name + "_bucket") {
                    auto le = labels.find("le");
                    if (le == labels.end()) throw std::runtime_error(name + ": bucket without le");
                    const double bound = prom_detail::number(le->second, name + " le");
                    labels.erase(le);
                    buckets[labels].emplace_back(bound, s.value);
                } else if (s.name == name + "_count") {
                    counts[labels] = s.value;
                }
            }
            if (buckets.empty()) throw std::runtime_error(name + ": histogram without buckets");
            for (const auto& [labels, b] : buckets) {
                for (std::size_t k = 1; k < b.size(); ++k)
                    if (!(b[k].first > b[k - 1].first) || b[k].second < b[k - 1].second)
                        throw std::runtime_error(name +
                                                 ": buckets not increasing or not cumulative");
                if (!std::isinf(b.back().first))
                    throw std::runtime_error(name + ": no +Inf bucket");
                if (!counts.count(labels) || counts[labels] != b.back().second)
                    throw std::runtime_error(name + ": +Inf bucket differs from _count");
            }
        }
    }
    return out;
}

}  // namespace p2prc_test
