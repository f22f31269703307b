// libFuzzer: the configuration file (Config::parse). Any input may be refused with
// p2prc::error naming what was wrong; nothing else may happen.
#include "p2prc/config.hpp"

#include <cstdint>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    try {
        (void)p2prc::Config::parse(text, "fuzz config");
    } catch (const p2prc::error&) {
    }
    return 0;
}
