// Hex helpers, an in-memory stream and the capture-file reader for the frp tests.
#pragma once

#include <p2prc.hpp>

#include <cstdint>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace p2prc_test {

inline std::string unhex(const std::string& h) {
    std::string out;
    std::string digits;
    for (char c : h)
        if (std::isxdigit(static_cast<unsigned char>(c))) digits += c;
    if (digits.size() % 2) throw std::runtime_error("odd hex length");
    for (std::size_t i = 0; i < digits.size(); i += 2)
        out += char(std::stoi(digits.substr(i, 2), nullptr, 16));
    return out;
}

inline std::string hex(const void* p, std::size_t n) {
    static const char* d = "0123456789abcdef";
    std::string out;
    const auto* b = static_cast<const unsigned char*>(p);
    for (std::size_t i = 0; i < n; ++i) {
        out += d[b[i] >> 4];
        out += d[b[i] & 15];
    }
    return out;
}
inline std::string hex(const std::string& s) {
    return hex(s.data(), s.size());
}

// A one-way in-memory stream: reads come from `input` (then end of stream), writes are
// appended to `output`. `max_read` limits each read, to exercise partial reads.
class MemStream : public p2prc::detail::Stream {
  public:
    explicit MemStream(std::string in = {}, std::size_t max_read = 1 << 20)
        : input(std::move(in)), max_read_(max_read) {}
    std::size_t read_some(void* buf, std::size_t n, p2prc::detail::Millis) override {
        std::size_t k = std::min({n, input.size() - pos, max_read_});
        std::memcpy(buf, input.data() + pos, k);
        pos += k;
        return k;
    }
    void write_all(const void* buf, std::size_t n, p2prc::detail::Millis) override {
        output.append(static_cast<const char*>(buf), n);
    }
    void shutdown_write() override {}
    void close() noexcept override {}
    std::string describe() const override { return "memory stream"; }

    std::string input, output;
    std::size_t pos = 0;

  private:
    std::size_t max_read_;
};

// One line of a capture file: "<t> <conn> <dir> <count> <hex>".
struct CaptureRead {
    double t = 0;
    std::string conn, dir;
    std::string bytes;
};

inline std::vector<CaptureRead> load_capture(const std::string& path) {
    std::ifstream f(path);
    if (!f) throw std::runtime_error("cannot open " + path);
    std::vector<CaptureRead> out;
    std::string line;
    while (std::getline(f, line)) {
        std::istringstream ls(line);
        CaptureRead r;
        std::size_t count = 0;
        std::string h;
        if (!(ls >> r.t >> r.conn >> r.dir >> count >> h)) continue;
        r.bytes = unhex(h);
        if (r.bytes.size() != count) throw std::runtime_error("capture count mismatch: " + line);
        out.push_back(std::move(r));
    }
    return out;
}

// Concatenates the bytes per (connection, direction), in file order.
inline std::map<std::string, std::string> reassemble(const std::vector<CaptureRead>& reads) {
    std::map<std::string, std::string> out;
    for (const auto& r : reads) out[r.conn + " " + r.dir] += r.bytes;
    return out;
}

}  // namespace p2prc_test
