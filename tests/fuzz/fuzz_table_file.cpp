// libFuzzer: the node's own table file (IpTable::parse with the default limits, as
// IpTable::load reads it). Any input may be refused with p2prc::error; nothing else.
#include "p2prc/iptable.hpp"

#include <cstdint>
#include <cstdlib>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    try {
        auto t = p2prc::IpTable::parse(text, "fuzz table file");
        auto again = p2prc::IpTable::parse(t.dump(), "fuzz again");
        if (again.size() > t.size()) std::abort();
    } catch (const p2prc::error&) {
    }
    return 0;
}
