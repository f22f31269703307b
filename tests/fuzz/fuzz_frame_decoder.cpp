// libFuzzer: the frp frame decoder (framing + Go-style JSON bodies).
//
// Any input may be rejected with p2prc::error; nothing else may happen (no crash, no
// other exception, no unbounded buffering), and every message that decodes must survive
// encode -> decode unchanged.
#include "p2prc/frp/wire.hpp"

#include <cstdint>
#include <cstdlib>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    // The first byte picks where the input is split, to exercise partial frames.
    std::size_t cut = data[0] % size;
    const std::uint8_t* p = data + 1;
    std::size_t n = size - 1;
    cut = cut > n ? n : cut;
    p2prc::frp::FrameDecoder d;
    try {
        d.feed(p, cut);
        d.feed(p + cut, n - cut);
    } catch (const p2prc::error&) {
    }
    if (d.pending() > p2prc::frp::kFrameHeaderSize + p2prc::frp::kMaxBodyLength) std::abort();
    while (auto m = d.take()) {
        std::string frame;
        try {
            frame = p2prc::frp::encode_frame(*m);
        } catch (const p2prc::error&) {
            continue;  // escaping can grow a body past the limit: refused, fine
        }
        auto back = p2prc::frp::decode_body(frame[0], std::string_view(frame).substr(9));
        if (!(back == *m)) std::abort();
    }
    return 0;
}
