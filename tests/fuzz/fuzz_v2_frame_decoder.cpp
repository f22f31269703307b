// libFuzzer: the frp wire v2 frame decoder and the v2 message decoding on top of it.
//
// Any input may be rejected with p2prc::error; nothing else may happen (no crash, no
// other exception, no buffering beyond one frame), and every message that decodes must
// survive encode -> decode unchanged.
#include "p2prc/frp/wire_v2.hpp"

#include <cstdint>
#include <cstdlib>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace p2prc::frp;
    if (size == 0) return 0;
    // The first byte picks where the input is split, to exercise partial frames.
    std::size_t n = size - 1;
    std::size_t cut = n ? data[0] % (n + 1) : 0;
    const std::uint8_t* p = data + 1;
    V2FrameDecoder d;
    try {
        d.feed(p, cut);
        d.feed(p + cut, n - cut);
    } catch (const p2prc::error&) {
    }
    if (d.pending() > kV2FrameHeaderSize + kV2MaxPayload) std::abort();
    while (auto f = d.take()) {
        if (f->payload.size() > kV2MaxPayload) std::abort();
        Message m;
        try {
            m = decode_v2_message_frame(*f);
        } catch (const p2prc::error&) {
            continue;
        }
        std::string again;
        try {
            again = encode_v2_message(m);
        } catch (const p2prc::error&) {
            continue;  // escaping can grow a body past the limit: refused, fine
        }
        V2FrameDecoder d2;
        d2.feed(again.data(), again.size());
        auto f2 = d2.take();
        if (!f2 || !(decode_v2_message_frame(*f2) == m)) std::abort();
    }
    // The same bytes through the incremental message decoder of a v2 connection.
    MessageDecoder md(Codec{WireProtocol::v2});
    try {
        md.feed(p, n);
    } catch (const p2prc::error&) {
    }
    while (md.take()) {
    }
    return 0;
}
