// libFuzzer: a table as a peer sends it on POST /IpTable (parsed with the limits a node
// applies to peers), and the POST /dialback body.
//
// Any input may be refused with p2prc::error; nothing else may happen, and a table that
// parses must survive dump -> parse with the same number of entries.
#include "p2prc/node.hpp"

#include <cstdint>
#include <cstdlib>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    if (auto port = p2prc::detail::dialback_port(text); port && *port == 0) std::abort();
    p2prc::Config config;
    try {
        auto t = p2prc::IpTable::parse(text, "fuzz", config.peer_table_limits());
        for (auto f : {p2prc::TableFormat::seed, p2prc::TableFormat::p2prc}) {
            auto again = p2prc::IpTable::parse(t.dump(f), "fuzz again");
            if (again.size() > t.size()) std::abort();
        }
    } catch (const p2prc::error&) {
    }
    return 0;
}
