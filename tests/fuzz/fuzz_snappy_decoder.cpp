// libFuzzer: the snappy framing decoder (use_compression) and the block decompressor.
//
// Any input may be rejected with p2prc::error; nothing else may happen, and whatever the
// encoder writes must decode back to the same bytes.
#include "p2prc/frp/snappy.hpp"

#include <cstdint>
#include <cstdlib>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace p2prc::frp::snappy;
    if (size == 0) return 0;
    std::size_t step = 1 + data[0] % 61;
    FrameDecoder d;
    std::string out;
    try {
        for (std::size_t at = 1; at < size; at += step) {
            d.feed(data + at, std::min(step, size - at));
            char buf[4096];
            while (std::size_t k = d.read(buf, sizeof buf)) out.append(buf, k);
            if (out.size() > (1u << 24)) std::abort();  // a 64 KiB input cannot yield this
        }
    } catch (const p2prc::error&) {
    }
    try {
        std::string b = decompress_block(data + 1, size - 1);
        std::string again = compress_block(b.data(), b.size());
        if (decompress_block(again.data(), again.size()) != b) std::abort();
    } catch (const p2prc::error&) {
    }
    // Encoder -> decoder round trip on the raw input.
    FrameEncoder e;
    std::string framed = e.encode(data, size);
    FrameDecoder d2;
    d2.feed(framed.data(), framed.size());
    std::string back(d2.available(), '\0');
    back.resize(d2.read(back.data(), back.size()));
    if (back != std::string(reinterpret_cast<const char*>(data), size)) std::abort();
    return 0;
}
