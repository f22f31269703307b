// libFuzzer: the yamux frame parser and the session state machine behind it, without
// threads: frames are handed to MuxCore::handle() directly, and the session's writes go
// to a sink.
//
// Any input may end the session with a p2prc::error; nothing else may happen.
#include "p2prc/frp/mux.hpp"

#include <cstdint>
#include <cstdlib>

namespace {

class Sink final : public p2prc::detail::Stream {
  public:
    std::size_t read_some(void*, std::size_t, p2prc::detail::Millis) override { return 0; }
    void write_all(const void*, std::size_t n, p2prc::detail::Millis) override { written += n; }
    void shutdown_write() override {}
    void close() noexcept override {}
    std::string describe() const override { return "sink"; }
    std::size_t written = 0;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace p2prc::frp;
    if (size == 0) return 0;
    std::size_t step = 1 + data[0] % 29;  // feed in small slices of varying size
    MuxConfig cfg;
    cfg.accept_backlog = 4;
    cfg.max_queued_control = 64;
    auto core = std::make_shared<detail::MuxCore>(std::make_shared<Sink>(), MuxRole::server, cfg);
    yamux::FrameParser parser(yamux::kInitialWindow);
    std::vector<std::shared_ptr<detail::MuxStreamState>> accepted;
    try {
        for (std::size_t at = 1; at < size; at += step) {
            std::size_t k = std::min(step, size - at);
            parser.feed(data + at, k);
            while (auto f = parser.next()) {
                // Round trip of the header.
                auto bytes = yamux::encode_header(f->header);
                if (!(yamux::parse_header(bytes.data()) == f->header)) std::abort();
                if (f->header.type == yamux::FrameType::data &&
                    f->payload.size() != f->header.length)
                    std::abort();
                core->handle(*f);
                // Let the "application" accept, read, write and close a little.
                if (auto st = core->accept(p2prc::detail::Millis(0))) accepted.push_back(st);
                for (auto& st : accepted) {
                    char buf[512];
                    try {
                        core->read(*st, buf, sizeof buf, p2prc::detail::Millis(0));
                        if (f->header.length & 1)
                            core->write(*st, "x", 1, p2prc::detail::Millis(0));
                        if (f->header.length % 7 == 3) core->shutdown_write(*st);
                        if (f->header.length % 11 == 5) core->close(*st);
                    } catch (const p2prc::error&) {
                    }
                }
            }
        }
    } catch (const p2prc::error&) {
    }
    core->kill("end of input");
    return 0;
}
